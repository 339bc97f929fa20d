//! The Anthropic Messages client.
//!
//! One request is `POST {base_url}/v1/messages` with `x-api-key` and
//! `anthropic-version: 2023-06-01`. [`request_body`] and [`parse_reply`]
//! are the translation, pure functions; failures are classified by
//! [`from_anthropic_http_error`]. Streamed (the default, `[[models]]
//! stream`), the request sets `stream: true` and [`AnthropicStream`]
//! reads the events under the rules of [`stream`](super::stream).
//!
//! Usage: Anthropic's `input_tokens` leaves out the prompt-cache tokens;
//! hale's [`Usage::prompt_tokens`] counts them in (`input_tokens +
//! cache_read_input_tokens + cache_creation_input_tokens`), so prompts
//! add up alike across providers, and `cached_tokens` is
//! `cache_read_input_tokens`.
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

use std::collections::BTreeMap;
use std::time::SystemTime;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, InvalidHeaderValue};
use serde_json::{Value, json};

use super::remote::{RemoteClient, Wire};
use super::sse::SseEvent;
use super::stream::{Flow, StreamFault, StreamState};
use super::{
    ChatMessage, DeltaSink, ModelReply, ModelRequest, ToolCallRequest, Usage, render_decision,
    system_prompt,
};
use crate::classify::{from_anthropic_http_error, from_model_stream_error};
use crate::outcome::ToolOutcome;

/// The API version hale speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The Anthropic Messages wire format.
#[derive(Debug, Clone, Copy)]
pub struct Anthropic;

/// A client for one Anthropic Messages endpoint.
pub type AnthropicClient = RemoteClient<Anthropic>;

impl Wire for Anthropic {
    const CLIENT: &'static str = "AnthropicClient";
    type Stream = AnthropicStream;

    fn url(base: &str) -> String {
        format!("{base}/v1/messages")
    }

    /// `anthropic-version`, and the key as `x-api-key`.
    fn headers(api_key: Option<&str>) -> Result<HeaderMap, InvalidHeaderValue> {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
        if let Some(key) = api_key {
            let mut value = HeaderValue::from_str(key)?;
            value.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-api-key"), value);
        }
        Ok(headers)
    }

    fn request_body(model: &str, max_tokens: u32, request: &ModelRequest, stream: bool) -> Value {
        let mut body = request_body(model, max_tokens, request);
        if stream && let Some(map) = body.as_object_mut() {
            map.insert("stream".into(), json!(true));
        }
        body
    }

    fn parse_reply(body: &Value) -> Result<ModelReply, String> {
        parse_reply(body)
    }

    fn classify(
        status: u16,
        retry_after: Option<&str>,
        body: &str,
        now: SystemTime,
    ) -> ToolOutcome {
        from_anthropic_http_error(status, retry_after, body, now)
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
        usage: body
            .get("usage")
            .and_then(|u| RawUsage::default().merged(u).usage()),
    })
}

/// Anthropic's usage counts as sent. `input_tokens` does NOT include the
/// tokens read from or written to the prompt cache, so the prompt of
/// [`Usage`] (which counts cached tokens in, as OpenAI does) is
/// `input_tokens + cache_read_input_tokens + cache_creation_input_tokens`,
/// and `cached_tokens` is `cache_read_input_tokens`.
#[derive(Debug, Default, Clone, Copy)]
struct RawUsage {
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
}

impl RawUsage {
    /// These counts, overridden by those `usage` carries (a stream's
    /// `message_delta` repeats some with their final values).
    fn merged(self, usage: &Value) -> Self {
        let count = |name: &str| usage.get(name).and_then(Value::as_u64);
        Self {
            input: count("input_tokens").or(self.input),
            output: count("output_tokens").or(self.output),
            cache_read: count("cache_read_input_tokens").or(self.cache_read),
            cache_creation: count("cache_creation_input_tokens").or(self.cache_creation),
        }
    }

    fn usage(self) -> Option<Usage> {
        if self.input.is_none() && self.output.is_none() {
            return None;
        }
        let cached = self.cache_read.unwrap_or(0);
        Some(Usage {
            prompt_tokens: self
                .input
                .unwrap_or(0)
                .saturating_add(cached)
                .saturating_add(self.cache_creation.unwrap_or(0)),
            completion_tokens: self.output.unwrap_or(0),
            cached_tokens: cached,
        })
    }
}

/// A content block being assembled from a stream.
#[derive(Debug)]
enum Block {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        /// The `input` of `content_block_start` (normally `{}`), used
        /// when no `input_json_delta` follows.
        start: Value,
        json: String,
    },
    /// Thinking and other blocks: the model's own business.
    Other,
}

/// A streamed Messages answer being read: `message_start` (the input
/// usage), per content block `content_block_start`, `content_block_delta`s
/// (`text_delta` pieces; `input_json_delta` pieces of a tool call's
/// input) and `content_block_stop`, then `message_delta` (`stop_reason`,
/// the output usage) and `message_stop`, the end marker. `ping` and
/// unknown events are skipped; an `error` event is the endpoint's error.
#[derive(Debug, Default)]
pub struct AnthropicStream {
    blocks: BTreeMap<u64, Block>,
    usage: RawUsage,
    stopped: bool,
}

impl StreamState for AnthropicStream {
    fn on_event(
        &mut self,
        event: &SseEvent,
        deltas: Option<&dyn DeltaSink>,
    ) -> Result<Flow, StreamFault> {
        let data = event.data.trim();
        let value: Value = serde_json::from_str(data)
            .map_err(|e| StreamFault::malformed(format!("not JSON ({e})"), data))?;
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or_default();
        let index = || {
            value
                .get("index")
                .and_then(Value::as_u64)
                .ok_or_else(|| StreamFault::malformed(format!("`{kind}` without an index"), data))
        };
        match kind {
            "message_start" => {
                if let Some(usage) = value.get("message").and_then(|m| m.get("usage")) {
                    self.usage = self.usage.merged(usage);
                }
            }
            "content_block_start" => {
                let block = value
                    .get("content_block")
                    .ok_or_else(|| StreamFault::malformed("no `content_block`", data))?;
                let block = match block.get("type").and_then(Value::as_str) {
                    Some("text") => Block::Text(
                        block
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    ),
                    Some("tool_use") => {
                        let field = |name: &str| {
                            block
                                .get(name)
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                                .ok_or_else(|| {
                                    StreamFault::malformed(
                                        format!("a tool_use block without `{name}`"),
                                        data,
                                    )
                                })
                        };
                        Block::ToolUse {
                            id: field("id")?,
                            name: field("name")?,
                            start: block.get("input").cloned().unwrap_or(Value::Null),
                            json: String::new(),
                        }
                    }
                    _ => Block::Other,
                };
                self.blocks.insert(index()?, block);
            }
            "content_block_delta" => {
                let at = index()?;
                let delta = value
                    .get("delta")
                    .ok_or_else(|| StreamFault::malformed("no `delta`", data))?;
                let block = self.blocks.get_mut(&at).ok_or_else(|| {
                    StreamFault::malformed(format!("a delta for block {at}, never started"), data)
                })?;
                match (delta.get("type").and_then(Value::as_str), block) {
                    (Some("text_delta"), Block::Text(text)) => {
                        let piece = delta.get("text").and_then(Value::as_str).ok_or_else(|| {
                            StreamFault::malformed("a text_delta without text", data)
                        })?;
                        text.push_str(piece);
                        if let Some(sink) = deltas
                            && !piece.is_empty()
                        {
                            sink.text(piece);
                        }
                    }
                    (Some("input_json_delta"), Block::ToolUse { json, .. }) => {
                        let piece = delta
                            .get("partial_json")
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                StreamFault::malformed(
                                    "an input_json_delta without partial_json",
                                    data,
                                )
                            })?;
                        json.push_str(piece);
                    }
                    (Some("text_delta" | "input_json_delta"), _) => {
                        return Err(StreamFault::malformed(
                            format!("a delta of another type than block {at}"),
                            data,
                        ));
                    }
                    // thinking_delta, signature_delta, ...
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(usage) = value.get("usage") {
                    self.usage = self.usage.merged(usage);
                }
            }
            "message_stop" => {
                self.stopped = true;
                return Ok(Flow::End);
            }
            "error" => {
                return Err(StreamFault::Endpoint(from_model_stream_error(
                    "anthropic",
                    data,
                )));
            }
            // content_block_stop, ping, and events added after this was
            // written.
            _ => {}
        }
        Ok(Flow::More)
    }

    fn complete(&self) -> bool {
        self.stopped
    }

    fn into_reply(self) -> Result<ModelReply, StreamFault> {
        let mut text: Option<String> = None;
        let mut tool_calls = Vec::new();
        for block in self.blocks.into_values() {
            match block {
                Block::Text(piece) => text.get_or_insert_with(String::new).push_str(&piece),
                Block::ToolUse {
                    id,
                    name,
                    start,
                    json,
                } => {
                    let arguments = if json.trim().is_empty() {
                        match start {
                            Value::Object(map) => Value::Object(map),
                            Value::Null => json!({}),
                            _ => {
                                return Err(StreamFault::ToolCall {
                                    id,
                                    name,
                                    why: "the input is not an object".to_owned(),
                                });
                            }
                        }
                    } else {
                        match serde_json::from_str::<Value>(&json) {
                            Ok(Value::Object(map)) => Value::Object(map),
                            Ok(_) => {
                                return Err(StreamFault::ToolCall {
                                    id,
                                    name,
                                    why: "the input is JSON but not an object".to_owned(),
                                });
                            }
                            Err(e) => {
                                return Err(StreamFault::ToolCall {
                                    id,
                                    name,
                                    why: format!("the input is not complete JSON ({e})"),
                                });
                            }
                        }
                    };
                    tool_calls.push(ToolCallRequest {
                        id,
                        name,
                        arguments,
                    });
                }
                Block::Other => {}
            }
        }
        Ok(ModelReply {
            text,
            tool_calls,
            model: String::new(),
            usage: self.usage.usage(),
        })
    }
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

    use crate::catalog::ErrorCode;
    use crate::model::Usage;
    use crate::model::stream::testing::{self, Recorder};

    fn event(name: &str, data: serde_json::Value) -> String {
        format!("event: {name}\ndata: {data}\n\n")
    }

    fn stream(stop: bool) -> String {
        let mut s = String::new();
        s += &event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "m",
            "usage": {"input_tokens": 20, "output_tokens": 1, "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 5}}}),
        );
        s += &event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        );
        s += &event("ping", json!({"type": "ping"}));
        for piece in ["Look", "ing é", "."] {
            s += &event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": piece}}),
            );
        }
        s += &event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        );
        s += &event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "exec", "input": {}}}),
        );
        for piece in ["{\"cm", "d\": \"l", "s\"}"] {
            s += &event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": piece}}),
            );
        }
        s += &event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        );
        s += &event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_2", "name": "glob", "input": {}}}),
        );
        s += &event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 2}),
        );
        s += &event(
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 42}}),
        );
        if stop {
            s += &event("message_stop", json!({"type": "message_stop"}));
        }
        s
    }

    fn expected() -> ModelReply {
        ModelReply {
            text: Some("Looking é.".into()),
            tool_calls: vec![
                ToolCallRequest {
                    id: "toolu_1".into(),
                    name: "exec".into(),
                    arguments: json!({"cmd": "ls"}),
                },
                ToolCallRequest {
                    id: "toolu_2".into(),
                    name: "glob".into(),
                    arguments: json!({}),
                },
            ],
            model: String::new(),
            usage: Some(Usage {
                prompt_tokens: 125,
                completion_tokens: 42,
                cached_tokens: 100,
            }),
        }
    }

    #[test]
    fn a_stream_split_at_every_byte_gives_the_same_reply_and_deltas() {
        let full = stream(true);
        let bytes = full.as_bytes();
        for cut in 0..=bytes.len() {
            let recorder = Recorder::default();
            let (a, b) = bytes.split_at(cut);
            let reply = testing::read::<AnthropicStream>(&[a, b], Some(&recorder)).unwrap();
            assert_eq!(reply, expected(), "cut at {cut}");
            assert_eq!(recorder.joined(), "Looking é.");
        }
    }

    #[test]
    fn a_stream_without_message_stop_is_never_a_reply() {
        let cut = stream(false);
        let bytes = cut.as_bytes();
        for end in 0..=bytes.len() {
            let outcome = testing::read::<AnthropicStream>(&[&bytes[..end]], None)
                .expect_err("a cut stream taken as a reply");
            assert_eq!(outcome.code, Some(ErrorCode::TransportClosed));
            assert!(outcome.retryable);
        }
    }

    #[test]
    fn partial_input_json_is_refused() {
        let mut s = String::new();
        s += &event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "t", "name": "exec", "input": {}}}),
        );
        s += &event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": "{\"cmd\": \"r"}}),
        );
        s += &event("message_stop", json!({"type": "message_stop"}));
        let outcome = testing::read::<AnthropicStream>(&[s.as_bytes()], None).unwrap_err();
        assert_eq!(outcome.data["stream"], "tool_call_arguments");
        assert_eq!(outcome.data["tool_call"], "t");
    }

    #[test]
    fn malformed_events_are_classified() {
        for (data, why) in [
            ("{\"type\": \"content_block_delta\"", "not JSON"),
            (
                "{\"type\": \"content_block_delta\", \"index\": 4, \"delta\": {\"type\": \"text_delta\", \"text\": \"x\"}}",
                "never started",
            ),
            (
                "{\"type\": \"content_block_start\", \"content_block\": {\"type\": \"text\"}}",
                "without an index",
            ),
        ] {
            let s = format!("data: {data}\n\n");
            let outcome = testing::read::<AnthropicStream>(&[s.as_bytes()], None).unwrap_err();
            assert_eq!(outcome.data["stream"], "malformed_chunk", "{data}");
            assert!(
                outcome.data["why"].as_str().unwrap().contains(why),
                "{}",
                outcome.data
            );
        }
    }

    #[test]
    fn an_error_event_is_classified_like_the_http_error_body() {
        let s = event(
            "error",
            json!({"type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        );
        let outcome = testing::read::<AnthropicStream>(&[s.as_bytes()], None).unwrap_err();
        assert_eq!(outcome.code, Some(ErrorCode::ServiceUnavailable));
        assert!(outcome.retryable);
        assert_eq!(outcome.data["provider"], "anthropic");
        assert_eq!(outcome.data["in_stream"], true);
    }

    #[test]
    fn a_plain_answer_counts_cache_tokens_in_the_prompt() {
        let body = json!({"content": [{"type": "text", "text": "hi"}],
            "usage": {"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 50}});
        assert_eq!(
            parse_reply(&body).unwrap().usage,
            Some(Usage {
                prompt_tokens: 60,
                completion_tokens: 3,
                cached_tokens: 50
            })
        );
    }

    #[test]
    fn stream_requests_say_so() {
        let body = <Anthropic as Wire>::request_body("m", 10, &ModelRequest::default(), true);
        assert_eq!(body["stream"], true);
    }
}
