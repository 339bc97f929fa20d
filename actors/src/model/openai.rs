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
//! Streamed (the default, `[[models]] stream`), the request asks for
//! `stream: true` with `stream_options.include_usage`, and
//! [`OpenAiStream`] reads the chunks; the rules every stream is read
//! under are in [`stream`](super::stream). Usage (`prompt_tokens`,
//! which includes cached tokens, `completion_tokens`,
//! `prompt_tokens_details.cached_tokens`) is read from either form.
//!
//! In a plain answer, a tool call whose `arguments` string is not a JSON
//! object is kept, not dropped: its arguments become
//! `{"_raw": "<the string>"}`, so the tool's argument check refuses it
//! with an outcome the model sees, next to the text it wrote, and can
//! correct. An empty string is `{}`. In a streamed
//! answer the pieces are assembled first, and arguments that do not parse
//! are refused (the stream was most likely cut): never half-used.

use std::collections::BTreeMap;
use std::time::SystemTime;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, InvalidHeaderValue};
use serde_json::{Map, Value, json};

use super::remote::{RemoteClient, Wire};
use super::sse::SseEvent;
use super::stream::{Flow, StreamFault, StreamState};
use super::{
    ChatMessage, DeltaSink, ModelReply, ModelRequest, ToolCallRequest, Usage, render_decision,
    system_prompt,
};
use crate::classify::{from_model_stream_error, from_openai_http_error};
use crate::outcome::ToolOutcome;

/// The OpenAI-compatible chat-completions wire format.
#[derive(Debug, Clone, Copy)]
pub struct OpenAi;

/// A client for one OpenAI-compatible endpoint.
pub type OpenAiClient = RemoteClient<OpenAi>;

impl Wire for OpenAi {
    const CLIENT: &'static str = "OpenAiClient";
    type Stream = OpenAiStream;

    fn url(base: &str) -> String {
        format!("{base}/chat/completions")
    }

    /// The key as a bearer token.
    fn headers(api_key: Option<&str>) -> Result<HeaderMap, InvalidHeaderValue> {
        let mut headers = HeaderMap::new();
        if let Some(key) = api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        Ok(headers)
    }

    fn request_body(model: &str, max_tokens: u32, request: &ModelRequest, stream: bool) -> Value {
        let mut body = request_body(model, max_tokens, request);
        if stream && let Some(map) = body.as_object_mut() {
            map.insert("stream".into(), json!(true));
            map.insert("stream_options".into(), json!({ "include_usage": true }));
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
        from_openai_http_error(status, retry_after, body, now)
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
        usage: body.get("usage").and_then(parse_usage),
    })
}

/// Reads a `usage` object: `prompt_tokens` (which OpenAI counts cached
/// tokens in, as [`Usage::prompt_tokens`] does), `completion_tokens` and
/// `prompt_tokens_details.cached_tokens`. `None` when it has neither
/// count (a `null`, or a server that sends an empty object).
pub fn parse_usage(usage: &Value) -> Option<Usage> {
    let count = |v: Option<&Value>| v.and_then(Value::as_u64);
    let prompt = count(usage.get("prompt_tokens"));
    let completion = count(usage.get("completion_tokens"));
    if prompt.is_none() && completion.is_none() {
        return None;
    }
    Some(Usage {
        prompt_tokens: prompt.unwrap_or(0),
        completion_tokens: completion.unwrap_or(0),
        cached_tokens: count(
            usage
                .get("prompt_tokens_details")
                .and_then(|d| d.get("cached_tokens")),
        )
        .unwrap_or(0),
    })
}

/// A tool call being assembled from a stream's deltas.
#[derive(Debug, Default)]
struct PartialCall {
    id: Option<String>,
    name: Option<String>,
    arguments: String,
}

/// A streamed chat completion being read: `data:` chunks carry
/// `choices[0].delta` (`content` pieces; `tool_calls[]` by `index`, their
/// `function.arguments` in string pieces), then a `finish_reason`, then
/// (with `stream_options.include_usage`) a chunk with `usage` and no
/// choices, then `data: [DONE]`. A chunk `{"error": ...}` is the
/// endpoint's error. The answer is complete once `[DONE]` or a
/// `finish_reason` arrived.
#[derive(Debug, Default)]
pub struct OpenAiStream {
    text: Option<String>,
    calls: BTreeMap<u64, PartialCall>,
    finished: bool,
    done: bool,
    usage: Option<Usage>,
}

impl StreamState for OpenAiStream {
    fn on_event(
        &mut self,
        event: &SseEvent,
        deltas: Option<&dyn DeltaSink>,
    ) -> Result<Flow, StreamFault> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(Flow::End);
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| StreamFault::malformed(format!("not JSON ({e})"), data))?;
        if chunk.get("error").is_some_and(|e| !e.is_null()) {
            return Err(StreamFault::Endpoint(from_model_stream_error(
                "openai", data,
            )));
        }
        if let Some(usage) = chunk.get("usage").and_then(parse_usage) {
            self.usage = Some(usage);
        }
        let choices = match chunk.get("choices") {
            None | Some(Value::Null) => return Ok(Flow::More),
            Some(Value::Array(choices)) => choices,
            Some(_) => return Err(StreamFault::malformed("`choices` is not an array", data)),
        };
        // One completion is asked for (n = 1): index 0.
        for choice in choices
            .iter()
            .filter(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        {
            match choice.get("delta") {
                None | Some(Value::Null) => {}
                Some(delta @ Value::Object(_)) => self.delta(delta, deltas, data)?,
                Some(_) => return Err(StreamFault::malformed("`delta` is not an object", data)),
            }
            match choice.get("finish_reason") {
                None | Some(Value::Null) => {}
                Some(Value::String(_)) => self.finished = true,
                Some(_) => {
                    return Err(StreamFault::malformed(
                        "`finish_reason` is not a string",
                        data,
                    ));
                }
            }
        }
        Ok(Flow::More)
    }

    fn complete(&self) -> bool {
        self.finished || self.done
    }

    fn into_reply(self) -> Result<ModelReply, StreamFault> {
        let mut tool_calls = Vec::with_capacity(self.calls.len());
        for (i, (index, call)) in self.calls.into_iter().enumerate() {
            let id = call.id.unwrap_or_else(|| format!("call_{i}"));
            let Some(name) = call.name else {
                return Err(StreamFault::ToolCall {
                    id,
                    name: String::new(),
                    why: format!("tool_calls[{index}] never named its function"),
                });
            };
            let arguments =
                assembled_arguments(&call.arguments).map_err(|why| StreamFault::ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    why,
                })?;
            tool_calls.push(ToolCallRequest {
                id,
                name,
                arguments,
            });
        }
        Ok(ModelReply {
            text: self.text,
            tool_calls,
            model: String::new(),
            usage: self.usage,
        })
    }
}

impl OpenAiStream {
    fn delta(
        &mut self,
        delta: &Value,
        deltas: Option<&dyn DeltaSink>,
        data: &str,
    ) -> Result<(), StreamFault> {
        match delta.get("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(piece)) => {
                if !piece.is_empty() {
                    self.text.get_or_insert_with(String::new).push_str(piece);
                    if let Some(sink) = deltas {
                        sink.text(piece);
                    }
                }
            }
            Some(_) => return Err(StreamFault::malformed("`content` is not a string", data)),
        }
        let calls = match delta.get("tool_calls") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Array(calls)) => calls,
            Some(_) => return Err(StreamFault::malformed("`tool_calls` is not an array", data)),
        };
        for (position, call) in calls.iter().enumerate() {
            let index = match call.get("index") {
                Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
                    StreamFault::malformed("a tool call's `index` is not a count", data)
                })?,
                // A server that sends each call whole may leave it out.
                None => u64::try_from(position).unwrap_or(u64::MAX),
                Some(_) => {
                    return Err(StreamFault::malformed(
                        "a tool call's `index` is not a number",
                        data,
                    ));
                }
            };
            let slot = self.calls.entry(index).or_default();
            if let Some(id) = call
                .get("id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                slot.id.get_or_insert_with(|| id.to_owned());
            }
            let Some(function) = call.get("function") else {
                continue;
            };
            if let Some(name) = function
                .get("name")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                slot.name.get_or_insert_with(|| name.to_owned());
            }
            match function.get("arguments") {
                None | Some(Value::Null) => {}
                Some(Value::String(piece)) => slot.arguments.push_str(piece),
                // Some servers send the object whole.
                Some(object @ Value::Object(_)) => slot.arguments.push_str(&object.to_string()),
                Some(_) => {
                    return Err(StreamFault::malformed(
                        "a tool call's `arguments` is neither a string nor an object",
                        data,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A streamed call's arguments, assembled: `{}` when empty, the object
/// they parse to, or why they are refused (not JSON: most likely cut off;
/// JSON but not an object). Never a half: see the module docs.
fn assembled_arguments(raw: &str) -> Result<Value, String> {
    if raw.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => Ok(Value::Object(map)),
        Ok(_) => Err("the arguments are JSON but not an object".to_owned()),
        Err(e) => Err(format!("the arguments are not complete JSON ({e})")),
    }
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

    use crate::catalog::ErrorCode;
    use crate::model::stream::testing::{self, Recorder};
    use proptest::prelude::*;

    /// Text in three pieces, two tool calls whose arguments arrive in
    /// pieces (interleaved), a finish_reason, the usage chunk, [DONE].
    const STREAM: &str = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Let me \"}}]}\n\n",
        ": keep-alive\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"check é\"}}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\".\",\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"exec\",\"arguments\":\"\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"cmd\\\": \"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"function\":{\"name\":\"glob\",\"arguments\":\"{}\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"ls\\\"}\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":120,\"completion_tokens\":30,\"prompt_tokens_details\":{\"cached_tokens\":100}}}\n\n",
        "data: [DONE]\n\n",
    );

    fn expected() -> ModelReply {
        ModelReply {
            text: Some("Let me check é.".into()),
            tool_calls: vec![
                ToolCallRequest {
                    id: "call_a".into(),
                    name: "exec".into(),
                    arguments: json!({ "cmd": "ls" }),
                },
                ToolCallRequest {
                    id: "call_b".into(),
                    name: "glob".into(),
                    arguments: json!({}),
                },
            ],
            model: String::new(),
            usage: Some(Usage {
                prompt_tokens: 120,
                completion_tokens: 30,
                cached_tokens: 100,
            }),
        }
    }

    #[test]
    fn a_stream_split_at_every_byte_gives_the_same_reply_and_deltas() {
        let bytes = STREAM.as_bytes();
        for cut in 0..=bytes.len() {
            let recorder = Recorder::default();
            let (a, b) = bytes.split_at(cut);
            let reply = testing::read::<OpenAiStream>(&[a, b], Some(&recorder)).unwrap();
            assert_eq!(reply, expected(), "cut at {cut}");
            assert_eq!(recorder.joined(), "Let me check é.");
        }
    }

    proptest! {
        #[test]
        fn a_stream_cut_anywhere_gives_the_same_reply(cuts in proptest::collection::vec(0..STREAM.len(), 0..12)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let bytes = STREAM.as_bytes();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut from = 0;
            for cut in cuts {
                pieces.push(&bytes[from..cut]);
                from = cut;
            }
            pieces.push(&bytes[from..]);
            let reply = testing::read::<OpenAiStream>(&pieces, None).unwrap();
            prop_assert_eq!(reply, expected());
        }
    }

    #[test]
    fn stream_requests_ask_for_usage() {
        let body = <OpenAi as Wire>::request_body("m", 10, &ModelRequest::default(), true);
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        let plain = <OpenAi as Wire>::request_body("m", 10, &ModelRequest::default(), false);
        assert!(plain.get("stream").is_none());
    }

    #[test]
    fn partial_tool_call_json_is_refused_never_half_used() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"function\":{\"name\":\"exec\",\"arguments\":\"{\\\"cmd\\\": \\\"rm\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
            "data: [DONE]\n\n",
        );
        let outcome = testing::read::<OpenAiStream>(&[stream.as_bytes()], None).unwrap_err();
        assert_eq!(outcome.code, Some(ErrorCode::Internal));
        assert_eq!(outcome.data["stream"], "tool_call_arguments");
        assert_eq!(outcome.data["tool_call"], "c");
        assert!(!outcome.retryable);
    }

    #[test]
    fn malformed_chunks_are_classified_with_the_problem_named() {
        for (chunk, why) in [
            ("data: {\"choices\": [\n\n", "not JSON"),
            ("data: {\"choices\": 3}\n\n", "`choices` is not an array"),
            (
                "data: {\"choices\": [{\"delta\": {\"content\": 7}}]}\n\n",
                "`content` is not a string",
            ),
            (
                "data: {\"choices\": [{\"delta\": {\"tool_calls\": [{\"index\": \"x\"}]}}]}\n\n",
                "`index` is not a number",
            ),
        ] {
            let outcome = testing::read::<OpenAiStream>(&[chunk.as_bytes()], None).unwrap_err();
            assert_eq!(outcome.code, Some(ErrorCode::Internal), "{chunk}");
            assert_eq!(outcome.data["stream"], "malformed_chunk");
            assert!(
                outcome.data["why"].as_str().unwrap().contains(why),
                "{}",
                outcome.data
            );
            assert!(!outcome.data["chunk"].as_str().unwrap().is_empty());
        }
    }

    #[test]
    fn an_error_chunk_is_classified_like_the_http_error_body() {
        let chunk = "data: {\"error\":{\"message\":\"slow down\",\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}\n\n";
        let outcome = testing::read::<OpenAiStream>(&[chunk.as_bytes()], None).unwrap_err();
        assert_eq!(outcome.code, Some(ErrorCode::RateLimited));
        assert!(outcome.retryable);
        assert_eq!(outcome.data["in_stream"], true);
        assert_eq!(outcome.data["provider"], "openai");
        let chunk = "data: {\"error\":{\"message\":\"This model's maximum context length is 10\",\"type\":\"invalid_request_error\",\"code\":\"context_length_exceeded\"}}\n\n";
        let outcome = testing::read::<OpenAiStream>(&[chunk.as_bytes()], None).unwrap_err();
        assert_eq!(outcome.code, Some(ErrorCode::ContextTooLong));
    }

    #[test]
    fn a_plain_answer_carries_its_usage() {
        let body = json!({ "choices": [{ "message": { "content": "hi" } }],
            "usage": { "prompt_tokens": 9, "completion_tokens": 2,
                "prompt_tokens_details": { "cached_tokens": 4 } } });
        assert_eq!(
            parse_reply(&body).unwrap().usage,
            Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 2,
                cached_tokens: 4
            })
        );
        let body = json!({ "choices": [{ "message": { "content": "hi" } }], "usage": null });
        assert_eq!(parse_reply(&body).unwrap().usage, None);
    }
}
