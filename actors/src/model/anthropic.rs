//! The Anthropic Messages client.
//!
//! One request is `POST {base_url}/v1/messages` with `x-api-key` and
//! `anthropic-version: 2023-06-01`. [`request_body`] and [`parse_reply`]
//! are the translation, pure functions; failures are classified by
//! [`from_anthropic_http_error`].
//!
//! Translation:
//! - the system prompt (with the tool budget line, see [`system_prompt`])
//!   is the top-level `system` field;
//! - an assistant turn is a `text` block and one `tool_use` block per call;
//! - a tool result is a `user` message with a `tool_result` block
//!   (`tool_use_id`, the outcome serialized as JSON, `is_error` for a
//!   failed call);
//! - a decision is a `user` text block (see [`render_decision`]);
//! - consecutive messages of the same role are merged into one message
//!   whose content is their blocks in order, because the API requires the
//!   roles to alternate (several tool results, or results followed by a
//!   decision, are one user message). An assistant turn with neither text
//!   nor calls has no blocks and is left out.
//!
//! An answer's text blocks are joined in order; its `tool_use` blocks are
//! the calls (`input` must be an object; anything else is kept as
//! `{"_raw": ...}`, as for OpenAI).

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::http;
use super::{
    ChatMessage, ModelClient, ModelConfig, ModelError, ModelReply, ModelRequest, ToolCallRequest,
    render_decision, system_prompt,
};
use crate::classify::from_anthropic_http_error;
use crate::outcome::ToolOutcome;
use crate::tool::BoxFuture;

/// The API version hale speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// A client for one Anthropic Messages endpoint.
pub struct AnthropicClient {
    name: String,
    model: String,
    url: String,
    headers: HeaderMap,
    max_tokens: u32,
    max_reply_bytes: usize,
    client: reqwest::Client,
}

impl std::fmt::Debug for AnthropicClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the headers: they hold the key.
        f.debug_struct("AnthropicClient")
            .field("name", &self.name)
            .field("model", &self.model)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl AnthropicClient {
    /// A client for `config`, sending `api_key` (already read from the
    /// environment) as `x-api-key` when there is one.
    ///
    /// # Errors
    /// As [`OpenAiClient::new`](super::openai::OpenAiClient::new).
    pub fn new(config: &ModelConfig, api_key: Option<&str>) -> Result<Self, ModelError> {
        let (base, model) = super::remote_parts(config)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
        if let Some(key) = api_key {
            let mut value = HeaderValue::from_str(key)
                .map_err(|_| ModelError::BadApiKey(config.name.clone()))?;
            value.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-api-key"), value);
        }
        Ok(Self {
            name: config.name.clone(),
            model: model.to_owned(),
            url: format!("{}/v1/messages", base.trim_end_matches('/')),
            headers,
            max_tokens: config.max_tokens,
            max_reply_bytes: config.max_reply_bytes,
            client: http::client(config.timeout).map_err(|e| ModelError::Client {
                name: config.name.clone(),
                source: e,
            })?,
        })
    }

    async fn run(&self, request: &ModelRequest) -> Result<ModelReply, ToolOutcome> {
        let body = request_body(&self.model, self.max_tokens, request);
        let answer = http::post_json(
            &self.client,
            &self.url,
            self.headers.clone(),
            &body,
            from_anthropic_http_error,
            self.max_reply_bytes,
        )
        .await?;
        let mut reply = parse_reply(&answer).map_err(|why| http::malformed(&self.url, &why))?;
        reply.model = self.name.clone();
        Ok(reply)
    }
}

impl ModelClient for AnthropicClient {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
    ) -> BoxFuture<'a, Result<ModelReply, ToolOutcome>> {
        Box::pin(self.run(request))
    }
}

/// The Messages request body for `request`.
pub fn request_body(model: &str, max_tokens: u32, request: &ModelRequest) -> Value {
    // (role, blocks), merged as they are pushed.
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut push = |role: &'static str, blocks: Vec<Value>| {
        if blocks.is_empty() {
            return;
        }
        match messages.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => messages.push((role, blocks)),
        }
    };
    for message in &request.messages {
        match message {
            ChatMessage::User { text } => {
                push("user", vec![json!({ "type": "text", "text": text })]);
            }
            ChatMessage::Assistant { text, tool_calls } => {
                let mut blocks = Vec::new();
                if let Some(text) = text.as_deref().filter(|t| !t.is_empty()) {
                    blocks.push(json!({ "type": "text", "text": text }));
                }
                blocks.extend(tool_calls.iter().map(|c| {
                    json!({ "type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments })
                }));
                push("assistant", blocks);
            }
            ChatMessage::ToolResult {
                call_id, outcome, ..
            } => push(
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": call_id,
                    "content": serde_json::to_string(outcome).unwrap_or_default(),
                    "is_error": outcome.is_failure(),
                })],
            ),
            ChatMessage::Decision {
                approval,
                option,
                instructions,
            } => push(
                "user",
                vec![json!({
                    "type": "text",
                    "text": render_decision(approval, option.as_deref(), instructions.as_deref()),
                })],
            ),
        }
    }
    let messages: Vec<Value> = messages
        .into_iter()
        .map(|(role, content)| json!({ "role": role, "content": content }))
        .collect();
    let mut body = json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": messages,
    });
    if let Some(map) = body.as_object_mut() {
        let system = system_prompt(request);
        if !system.is_empty() {
            map.insert("system".into(), json!(system));
        }
        if !request.tools.is_empty() {
            let tools: Vec<Value> = request
                .tools
                .iter()
                .map(|t| {
                    json!({ "name": t.name, "description": t.description, "input_schema": t.schema })
                })
                .collect();
            map.insert("tools".into(), Value::Array(tools));
        }
    }
    body
}

/// Reads the `content` blocks of a Messages answer. `model` is left empty.
///
/// # Errors
/// What is missing or of the wrong type, for a malformed-answer outcome.
pub fn parse_reply(body: &Value) -> Result<ModelReply, String> {
    let blocks = body
        .get("content")
        .and_then(Value::as_array)
        .ok_or("no `content` array in the answer")?;
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let piece = block
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or(format!("content[{i}] is a text block without text"))?;
                text.get_or_insert_with(String::new).push_str(piece);
            }
            Some("tool_use") => {
                let field = |name: &str| {
                    block
                        .get(name)
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .ok_or(format!("content[{i}] is a tool_use block without `{name}`"))
                };
                let arguments = match block.get("input") {
                    Some(Value::Object(map)) => Value::Object(map.clone()),
                    None | Some(Value::Null) => json!({}),
                    Some(other) => json!({ "_raw": other.to_string() }),
                };
                tool_calls.push(ToolCallRequest {
                    id: field("id")?,
                    name: field("name")?,
                    arguments,
                });
            }
            // Thinking and other blocks are the model's own business.
            _ => {}
        }
    }
    Ok(ModelReply {
        text,
        tool_calls,
        model: String::new(),
        usage: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::outcome::ToolOutcome;

    #[test]
    fn same_role_messages_are_merged_and_roles_alternate() {
        let request = ModelRequest {
            system: "be brief".into(),
            messages: vec![
                ChatMessage::User { text: "hi".into() },
                ChatMessage::Assistant {
                    text: None,
                    tool_calls: vec![
                        ToolCallRequest {
                            id: "a".into(),
                            name: "exec".into(),
                            arguments: json!({ "cmd": "ls" }),
                        },
                        ToolCallRequest {
                            id: "b".into(),
                            name: "exec".into(),
                            arguments: json!({ "cmd": "pwd" }),
                        },
                    ],
                },
                ChatMessage::ToolResult {
                    call_id: "a".into(),
                    name: "exec".into(),
                    outcome: ToolOutcome::success(json!({ "stdout": "x" })),
                },
                ChatMessage::ToolResult {
                    call_id: "b".into(),
                    name: "exec".into(),
                    outcome: ToolOutcome::timeout("slow"),
                },
                ChatMessage::Decision {
                    approval: "ap1".into(),
                    option: Some("retry".into()),
                    instructions: None,
                },
            ],
            tools: vec![],
            budget_left: Some(3),
            deltas: None,
        };
        let body = request_body("claude", 100, &request);
        let messages = body["messages"].as_array().unwrap();
        let roles: Vec<&str> = messages
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        let last = messages[2]["content"].as_array().unwrap();
        assert_eq!(last.len(), 3);
        assert_eq!(last[0]["type"], "tool_result");
        assert_eq!(last[1]["is_error"], true);
        assert_eq!(last[2]["type"], "text");
        assert!(
            body["system"]
                .as_str()
                .unwrap()
                .ends_with("Tool calls left for this message: 3")
        );
        assert!(body.get("tools").is_none());
    }
}
