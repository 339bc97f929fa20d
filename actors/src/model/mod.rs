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
//!
//! - [`openai`] and [`anthropic`]: the two wire formats, each a [`Wire`]
//!   (pure translation functions and a stream reader);
//!   [`classify`](crate::classify) holds their error classifiers
//!   (`from_openai_http_error`, `from_anthropic_http_error`,
//!   `from_model_stream_error`).
//! - [`remote`]: the one client both formats share ([`RemoteClient`]);
//!   [`stream`] the rules a streamed answer is read under; [`sse`] the
//!   event-stream line parser.
//! - [`scripted`]: the deterministic model, a pure function of the
//!   conversation.
//! - [`actor`]: one supervised actor per endpoint; requests run as tasks
//!   the actor owns.
//! - [`models`]: [`Models`], the handle a session uses: validation at
//!   load, the supervisor spec, the model chain with retries, breakers and
//!   fallbacks, and `switch_model`'s name resolution.
//!
//! **Boundary**: reqwest is used here only in `http.rs`, `remote.rs` and
//! `stream.rs` (the shared client), and wire types never leave
//! `openai.rs` / `anthropic.rs`.

// A failed turn is a `ToolOutcome` handed to the session as is (the
// `ModelClient` contract); boxing it on the error path would only be
// unboxed again, and that path is cold next to the HTTP request behind it.
#![allow(clippy::result_large_err)]

pub mod actor;
pub mod anthropic;
mod http;
pub mod models;
pub mod openai;
pub mod remote;
pub mod scripted;
pub mod sse;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::outcome::ToolOutcome;
use crate::tool::{BoxFuture, ToolSpec};

pub use actor::{ModelActor, ModelMsg};
pub use anthropic::AnthropicClient;
pub use http::{CONNECT_TIMEOUT, MAX_REPLY_BYTES};

/// The default of `[[models]] stream_idle_timeout`: the longest a
/// streamed answer may send nothing before it is abandoned as stalled.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub use models::{
    ChainStep, DEFAULT_READY_WAIT, EnvLookup, MODEL_ENDPOINT_PREFIX, ModelError, Models,
    ModelsOptions, REPLY_SLACK, endpoint_name, step_after_failure, valid_model_name,
};
pub use openai::OpenAiClient;
pub use remote::{RemoteClient, Wire};
pub use scripted::{ScriptedModel, scripted_reply};

/// The name of the tool a session offers for changing its model.
pub const SWITCH_MODEL: &str = "switch_model";

/// The spec of `switch_model` (`{"model": string}`). The session carries
/// the switch out; [`Models::resolve`] checks the name.
pub fn switch_model_spec() -> ToolSpec {
    ToolSpec::new(
        SWITCH_MODEL,
        "Switch this session to another configured model for the following turns. \
         An unknown name fails with the configured names, closest first.",
        json!({
            "type": "object",
            "properties": {
                "model": {
                    "type": "string",
                    "description": "the configured model name (as in hale.toml [[models]] name)",
                },
            },
            "required": ["model"],
            "additionalProperties": false,
        }),
    )
    .with_idempotent(true)
}

/// The system prompt a provider sends: `request.system`, followed (after a
/// blank line) by `Tool calls left for this message: N` when the request
/// has a budget.
pub fn system_prompt(request: &ModelRequest) -> String {
    match request.budget_left {
        None => request.system.clone(),
        Some(n) if request.system.is_empty() => format!("Tool calls left for this message: {n}"),
        Some(n) => format!(
            "{}\n\nTool calls left for this message: {n}",
            request.system
        ),
    }
}

/// A human's decision as the user-message text a provider sends:
/// ``Approval <id> decided: option `x`; instructions: ...``, with
/// `no option chosen` when there is no option and the instructions part
/// only when there are some.
pub fn render_decision(approval: &str, option: Option<&str>, instructions: Option<&str>) -> String {
    let mut text = match option {
        Some(option) => format!("Approval {approval} decided: option `{option}`"),
        None => format!("Approval {approval} decided: no option chosen"),
    };
    if let Some(instructions) = instructions.filter(|i| !i.trim().is_empty()) {
        text.push_str("; instructions: ");
        text.push_str(instructions);
    }
    text
}

/// A remote endpoint's base URL (parsed: http or https) and model id.
fn remote_parts(config: &ModelConfig) -> Result<(&str, &str), ModelError> {
    let name = &config.name;
    let base = config
        .base_url
        .as_deref()
        .ok_or_else(|| ModelError::MissingBaseUrl(name.clone()))?;
    match reqwest::Url::parse(base) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => {}
        Ok(url) => {
            return Err(ModelError::InvalidBaseUrl {
                name: name.clone(),
                url: base.to_owned(),
                reason: format!("scheme `{}` is not http or https", url.scheme()),
            });
        }
        Err(e) => {
            return Err(ModelError::InvalidBaseUrl {
                name: name.clone(),
                url: base.to_owned(),
                reason: e.to_string(),
            });
        }
    }
    let model = config
        .model
        .as_deref()
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| ModelError::MissingModelId(name.clone()))?;
    Ok((base, model))
}

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
    /// Where a streaming client reports the reply's text as it arrives;
    /// `None` when nobody listens.
    pub deltas: Option<Arc<dyn DeltaSink>>,
}

/// Receives a model reply's text while it streams in.
///
/// The engine calls [`attempt`](DeltaSink::attempt) before every attempt
/// of a turn (1 for the first), so a listener can void the text of an
/// attempt that failed half-way; clients call [`text`](DeltaSink::text)
/// with each piece of text, in order. Calls must be cheap and never
/// block: they run on the request's task.
pub trait DeltaSink: Send + Sync + std::fmt::Debug {
    /// Attempt `attempt` of the turn starts (1 for the first); text of
    /// earlier attempts is void.
    fn attempt(&self, attempt: u32);
    /// A piece of the reply's text, in order.
    fn text(&self, delta: &str);
}

/// The tokens one model reply used, as the provider reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the request (prompt), cached ones included.
    pub prompt_tokens: u64,
    /// Tokens of the reply.
    pub completion_tokens: u64,
    /// Prompt tokens served from the provider's cache.
    #[serde(default)]
    pub cached_tokens: u64,
}

impl Usage {
    /// The sum of two usages, field by field (saturating).
    #[must_use]
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.saturating_add(other.prompt_tokens),
            completion_tokens: self
                .completion_tokens
                .saturating_add(other.completion_tokens),
            cached_tokens: self.cached_tokens.saturating_add(other.cached_tokens),
        }
    }
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
    /// The tokens the reply used, when the provider reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
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
    /// The most bytes of one answer that are read (default
    /// [`MAX_REPLY_BYTES`]); a longer answer is `OUTPUT_TOO_LARGE`.
    pub max_reply_bytes: usize,
    /// Whether replies are streamed (default); `false` keeps the plain
    /// request, for servers that cannot stream.
    pub stream: bool,
    /// The longest gap between two chunks of a streamed answer (default
    /// [`DEFAULT_STREAM_IDLE_TIMEOUT`]); a longer one is `ETIMEDOUT`.
    pub stream_idle_timeout: Duration,
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
            max_reply_bytes: MAX_REPLY_BYTES,
            stream: true,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
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
            max_reply_bytes: MAX_REPLY_BYTES,
            stream: true,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
        }
    }
}
