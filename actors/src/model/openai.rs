//! The OpenAI-compatible chat-completions client (OpenAI, vLLM, Ollama,
//! llama.cpp's server, OpenRouter, ...).
//!
//! One request is `POST {base_url}/chat/completions`; [`request_body`]
//! and [`parse_reply`] are the whole translation between hale's
//! provider-neutral conversation and the wire format, pure functions so
//! they can be tested without a server. Failures are classified by
//! [`from_openai_http_error`].
//!
//! Translation:
//! - the system prompt (with the tool budget line, see
//!   [`system_prompt`]) is the first message, role `system`;
//! - an assistant turn's calls are `tool_calls: [{id, type: "function",
//!   function: {name, arguments}}]`, `arguments` a JSON *string*;
//! - a tool result is a `tool` message with `tool_call_id`, its content the
//!   whole outcome serialized as JSON (status, code, hints: what the model
//!   needs to repair a failure);
//! - a decision is a user message (see [`render_decision`]).
//!
//! A tool call whose `arguments` string is not a JSON object is kept, not
//! dropped: its arguments become `{"_raw": "<the string>"}`, so the tool's
//! argument check refuses it with an outcome the model sees, next to the
//! text it wrote, and can correct. An empty string is `{}`.

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::{Map, Value, json};

use super::http;
use super::{
    ChatMessage, ModelClient, ModelConfig, ModelError, ModelReply, ModelRequest, ToolCallRequest,
    render_decision, system_prompt,
};
use crate::classify::from_openai_http_error;
use crate::outcome::ToolOutcome;
use crate::tool::BoxFuture;

/// A client for one OpenAI-compatible endpoint.
pub struct OpenAiClient {
    name: String,
    model: String,
    url: String,
    headers: HeaderMap,
    max_tokens: u32,
    max_reply_bytes: usize,
    client: reqwest::Client,
}

impl std::fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the headers: they hold the key.
        f.debug_struct("OpenAiClient")
            .field("name", &self.name)
            .field("model", &self.model)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl OpenAiClient {
    /// A client for `config`, sending `api_key` (already read from the
    /// environment) as a bearer token when there is one.
    ///
    /// # Errors
    /// [`ModelError`] when the config lacks a base URL or model id, the
    /// key cannot be a header value, or the HTTP client cannot be built.
    pub fn new(config: &ModelConfig, api_key: Option<&str>) -> Result<Self, ModelError> {
        let (base, model) = super::remote_parts(config)?;
        let mut headers = HeaderMap::new();
        if let Some(key) = api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| ModelError::BadApiKey(config.name.clone()))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        Ok(Self {
            name: config.name.clone(),
            model: model.to_owned(),
            url: format!("{}/chat/completions", base.trim_end_matches('/')),
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
            from_openai_http_error,
            self.max_reply_bytes,
        )
        .await?;
        let mut reply = parse_reply(&answer).map_err(|why| http::malformed(&self.url, &why))?;
        reply.model = self.name.clone();
        Ok(reply)
    }
}

impl ModelClient for OpenAiClient {
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

/// The chat-completions request body for `request`.
pub fn request_body(model: &str, max_tokens: u32, request: &ModelRequest) -> Value {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    let system = system_prompt(request);
    if !system.is_empty() {
        messages.push(json!({ "role": "system", "content": system }));
    }
    for message in &request.messages {
        messages.push(match message {
            ChatMessage::User { text } => json!({ "role": "user", "content": text }),
            ChatMessage::Assistant { text, tool_calls } => {
                let mut m = Map::new();
                m.insert("role".into(), json!("assistant"));
                m.insert("content".into(), json!(text));
                if !tool_calls.is_empty() {
                    let calls: Vec<Value> = tool_calls
                        .iter()
                        .map(|c| {
                            json!({
                                "id": c.id,
                                "type": "function",
                                "function": {
                                    "name": c.name,
                                    "arguments": c.arguments.to_string(),
                                },
                            })
                        })
                        .collect();
                    m.insert("tool_calls".into(), Value::Array(calls));
                }
                Value::Object(m)
            }
            ChatMessage::ToolResult {
                call_id, outcome, ..
            } => json!({
                "role": "tool",
                "tool_call_id": call_id,
                "content": serde_json::to_string(outcome).unwrap_or_default(),
            }),
            ChatMessage::Decision {
                approval,
                option,
                instructions,
            } => json!({
                "role": "user",
                "content": render_decision(approval, option.as_deref(), instructions.as_deref()),
            }),
        });
    }
    let mut body = json!({
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
    });
    if !request.tools.is_empty()
        && let Some(map) = body.as_object_mut()
    {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.schema,
                    },
                })
            })
            .collect();
        map.insert("tools".into(), Value::Array(tools));
    }
    body
}

/// Reads `choices[0].message` of a chat-completions answer: its `content`
/// (a string or null) and its `tool_calls`. `model` is left empty.
///
/// # Errors
/// What is missing or of the wrong type, for a malformed-answer outcome.
pub fn parse_reply(body: &Value) -> Result<ModelReply, String> {
    let message = body
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("message"))
        .ok_or("no `choices[0].message` in the answer")?;
    let text = match message.get("content") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("`content` is neither a string nor null".to_owned()),
    };
    let mut tool_calls = Vec::new();
    match message.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) => {
            for (i, call) in calls.iter().enumerate() {
                let function = call
                    .get("function")
                    .ok_or(format!("tool_calls[{i}] has no `function`"))?;
                let name = function
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or(format!("tool_calls[{i}] has no function name"))?;
                let id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("call_{i}"), str::to_owned);
                tool_calls.push(ToolCallRequest {
                    id,
                    name: name.to_owned(),
                    arguments: arguments(function.get("arguments")),
                });
            }
        }
        Some(_) => return Err("`tool_calls` is not an array".to_owned()),
    }
    Ok(ModelReply {
        text,
        tool_calls,
        model: String::new(),
        usage: None,
    })
}

/// The arguments of a call: the JSON object the string holds; `{}` for an
/// empty or missing one; an object given as is (some servers send one);
/// anything else as `{"_raw": ...}` (see the module docs).
fn arguments(raw: Option<&Value>) -> Value {
    match raw {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(map)) => Value::Object(map.clone()),
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(map)) => Value::Object(map),
            _ => json!({ "_raw": s }),
        },
        Some(other) => json!({ "_raw": other.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn unparseable_arguments_are_kept_raw() {
        let body = json!({ "choices": [{ "message": { "content": null, "tool_calls": [
            { "id": "a", "type": "function", "function": { "name": "exec", "arguments": "{\"cmd\": " } },
            { "id": "b", "type": "function", "function": { "name": "glob", "arguments": "" } },
            { "id": "c", "type": "function", "function": { "name": "grep", "arguments": "{\"p\":1}" } },
        ] } }] });
        let reply = parse_reply(&body).unwrap();
        assert_eq!(reply.text, None);
        assert_eq!(
            reply.tool_calls[0].arguments,
            json!({ "_raw": "{\"cmd\": " })
        );
        assert_eq!(reply.tool_calls[1].arguments, json!({}));
        assert_eq!(reply.tool_calls[2].arguments, json!({ "p": 1 }));
    }

    #[test]
    fn an_answer_without_choices_is_malformed() {
        assert!(parse_reply(&json!({ "id": "x" })).is_err());
        assert!(parse_reply(&json!({ "choices": [] })).is_err());
        assert!(parse_reply(&json!({ "choices": [{ "message": { "content": 3 } }] })).is_err());
    }
}
