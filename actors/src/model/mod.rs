//! Model endpoints: the language models an agent session thinks with.
//!
//! A session does not care whether its next turn comes from OpenAI, an
//! Anthropic model, a local vLLM or the deterministic scripted model the
//! tests and the demo use; it hands a [`ModelRequest`] (system prompt,
//! conversation, tool specs, budget left) to the model chain of its agent
//! and gets a [`ModelReply`] back: text, tool calls, or both. A failure of
//! the endpoint (rate limit, 5xx, timeout, bad credentials, a body that is
//! not what the wire format promises, a context-length overflow) is a
//! [`ToolOutcome`] classified by the same catalog as every tool failure, so
//! the same retry, breaker and fallback policy applies to models as to tools.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::outcome::ToolOutcome;
use crate::tool::{BoxFuture, ToolSpec};

/// One tool call a model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRequest {
    /// The call's id, unique within the conversation. Providers' ids are
    /// kept as given; the scripted model makes its own.
    pub id: String,
    /// The tool's name as the registry knows it (`exec`, `weather__forecast`).
    pub name: String,
    /// The arguments, a JSON object.
    pub arguments: Value,
}

/// One entry of a conversation, in the provider-neutral form the session
/// journals and every provider translates to its wire format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum ChatMessage {
    /// A message from the user (an inbound message to the session).
    User {
        /// Its text.
        text: String,
    },
    /// A model turn.
    Assistant {
        /// The text the model wrote, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// The tool calls the model asked for, in order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCallRequest>,
    },
    /// The outcome of one tool call, answering the call with `call_id`.
    ToolResult {
        /// The [`ToolCallRequest::id`] it answers.
        call_id: String,
        /// The tool's name.
        name: String,
        /// What happened: the structured outcome is what the model sees.
        outcome: ToolOutcome,
    },
    /// A human's decision on an approval the session opened. Providers
    /// render it as a user message; the scripted model runs the steps of
    /// the chosen option.
    Decision {
        /// The approval's id.
        approval: String,
        /// The option chosen, if one was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        option: Option<String>,
        /// Free-text instructions, if given instead of (or with) an option.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instructions: Option<String>,
    },
}

/// Everything a model needs for one turn.
#[derive(Debug, Clone, Default)]
pub struct ModelRequest {
    /// The system prompt (agent prompt plus MEMORY.md).
    pub system: String,
    /// The conversation so far, oldest first.
    pub messages: Vec<ChatMessage>,
    /// The tools the model may call.
    pub tools: Vec<ToolSpec>,
    /// Tool calls left in this message's iteration budget; providers show
    /// it to the model each turn.
    pub budget_left: Option<u32>,
}

/// A model's answer for one turn.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ModelReply {
    /// The text, if any. A reply with no tool calls ends the turn loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The tool calls asked for, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallRequest>,
    /// The configured name of the model that answered (after fallbacks).
    #[serde(default)]
    pub model: String,
}

/// A model endpoint's client: one provider's wire format.
pub trait ModelClient: Send + Sync + 'static {
    /// The configured model name (`[[models]] name`).
    fn name(&self) -> &str;

    /// One turn. A failure is a classified outcome, never a panic.
    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
    ) -> BoxFuture<'a, Result<ModelReply, ToolOutcome>>;
}

/// Which wire format an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// OpenAI-compatible chat completions (OpenAI, vLLM, Ollama, llama.cpp
    /// server, OpenRouter, ...).
    Openai,
    /// Anthropic Messages.
    Anthropic,
    /// The deterministic scripted model (no network).
    Scripted,
}

/// One configured model endpoint (`[[models]]` in `hale.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The name agents and `switch_model` use.
    pub name: String,
    /// The wire format.
    pub provider: Provider,
    /// The API's base URL: an OpenAI one includes `/v1`
    /// (`https://api.openai.com/v1`), an Anthropic one does not
    /// (`https://api.anthropic.com`). `None` for scripted.
    pub base_url: Option<String>,
    /// The provider's model id (`gpt-4o-mini`, `claude-sonnet-4-5`).
    pub model: Option<String>,
    /// The environment variable holding the API key, if the endpoint needs
    /// one.
    pub api_key_env: Option<String>,
    /// The deadline of one request, connection included.
    pub timeout: Duration,
    /// The most tokens one reply may use.
    pub max_tokens: u32,
}

impl ModelConfig {
    /// The scripted model under `name`.
    pub fn scripted(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            provider: Provider::Scripted,
            base_url: None,
            model: None,
            api_key_env: None,
            timeout: Duration::from_secs(5),
            max_tokens: 4096,
        }
    }

    /// An endpoint of `provider` at `base_url` serving `model`.
    pub fn remote(
        name: impl Into<String>,
        provider: Provider,
        base_url: impl Into<String>,
        model: impl Into<String>,
        api_key_env: Option<String>,
    ) -> Self {
        Self {
            name: name.into(),
            provider,
            base_url: Some(base_url.into()),
            model: Some(model.into()),
            api_key_env,
            timeout: Duration::from_secs(120),
            max_tokens: 4096,
        }
    }
}
