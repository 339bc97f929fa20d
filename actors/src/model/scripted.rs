//! The deterministic scripted model: a [`ModelClient`] with no network,
//! for tests, the demo and reproducible runs.
//!
//! Its answer is a pure function of the conversation ([`scripted_reply`]),
//! which is what makes it useful under supervision: a session restarted
//! from its journal asks again and gets the same next step.
//!
//! # The plan format
//! The model reads the **last** user message. If its text is a JSON object
//! with `steps` and/or `reply`:
//!
//! ```json
//! {"steps": [{"tool": "exec", "args": {"cmd": "ls"}}],
//!  "reply": "done",
//!  "on_approval": {"retry": [{"tool": "exec", "args": {"cmd": "ls -a"}}]}}
//! ```
//!
//! the plan's step list is `steps`, followed, for each decision after that
//! user message (in order), by the steps of `on_approval[<chosen option>]`
//! (none when the option has no entry or none was chosen). With `k` tool
//! results after the user message:
//! - `k` < number of steps: the reply is exactly one tool call, step `k`,
//!   with id `s<k>` and no text;
//! - otherwise: no tool calls, and the text is the JSON
//!   `{"reply": <reply or "">, "steps": [<each tool result's outcome, in order>]}`.
//!
//! A JSON object with `steps`/`reply` that does not have the plan's shape
//! (a step without `tool`, `steps` not an array, ...) gets the text
//! `scripted: invalid plan: <why>`. Anything else (not JSON, not an object,
//! an object with neither key) gets `ok: received <n> characters`, `n`
//! counting the message's characters. No user message at all gets
//! `ok: received 0 characters`.
//!
//! # Context window and usage
//! A plan may set `"context_window": <bytes>`: while the conversation
//! (its messages serialized, as `context_budget::total_size` counts them)
//! is larger, the model answers `CONTEXT_TOO_LONG` with the message
//! `prompt is too long: <size> bytes > <window> maximum`, as Anthropic
//! words it. Every reply of [`ScriptedModel`] reports a usage that is a
//! pure function of the request and the reply ([`scripted_usage`]): four
//! bytes a token, rounded up; the system prompt counts as the cached
//! prefix.

use serde_json::{Map, Value, json};

use super::{ChatMessage, ModelClient, ModelReply, ModelRequest, ToolCallRequest, Usage};
use crate::catalog::ErrorCode;
use crate::outcome::ToolOutcome;
use crate::session::context_budget::total_size;
use crate::tool::BoxFuture;

/// The scripted model under a configured name.
#[derive(Debug, Clone)]
pub struct ScriptedModel {
    name: String,
}

impl ScriptedModel {
    /// The scripted model named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

impl ModelClient for ScriptedModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
    ) -> BoxFuture<'a, Result<ModelReply, ToolOutcome>> {
        if let Some(overflow) = scripted_overflow(request) {
            return Box::pin(async move { Err(overflow) });
        }
        let mut reply = scripted_reply(request);
        reply.model = self.name.clone();
        reply.usage = Some(scripted_usage(request, &reply));
        Box::pin(async move { Ok(reply) })
    }
}

/// The usage [`ScriptedModel`] reports for `reply` to `request`: prompt
/// tokens are the system prompt's and the conversation's bytes (as
/// `context_budget::total_size` counts them), completion tokens the
/// reply's text and tool calls' bytes, cached tokens the system prompt's,
/// each at four bytes a token (prompt and completion rounded up, cached
/// down, so cached never exceeds prompt).
pub fn scripted_usage(request: &ModelRequest, reply: &ModelReply) -> Usage {
    let prompt = request.system.len() + total_size(&request.messages);
    let calls = if reply.tool_calls.is_empty() {
        0
    } else {
        serde_json::to_string(&reply.tool_calls).map_or(0, |s| s.len())
    };
    let completion = reply.text.as_ref().map_or(0, String::len) + calls;
    let tokens = |bytes: usize| u64::try_from(bytes.div_ceil(4)).unwrap_or(u64::MAX);
    Usage {
        prompt_tokens: tokens(prompt),
        completion_tokens: tokens(completion),
        cached_tokens: u64::try_from(request.system.len() / 4).unwrap_or(u64::MAX),
    }
}

/// The `CONTEXT_TOO_LONG` answer to `request` when the last user
/// message's plan sets a `context_window` its conversation exceeds.
pub fn scripted_overflow(request: &ModelRequest) -> Option<ToolOutcome> {
    let text = request.messages.iter().rev().find_map(|m| match m {
        ChatMessage::User { text } => Some(text),
        _ => None,
    })?;
    let Ok(Value::Object(plan)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    let window = plan.get("context_window").and_then(Value::as_u64)?;
    let size = total_size(&request.messages);
    (u64::try_from(size).unwrap_or(u64::MAX) > window).then(|| {
        ToolOutcome::from_code(
            ErrorCode::ContextTooLong,
            format!("prompt is too long: {size} bytes > {window} maximum"),
        )
    })
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    tool: String,
    args: Value,
}

/// A parsed plan.
#[derive(Debug, Default)]
struct Plan {
    steps: Vec<Step>,
    reply: String,
    on_approval: Vec<(String, Vec<Step>)>,
}

/// The scripted model's answer to `request` (see the module docs); its
/// `model` is left empty.
pub fn scripted_reply(request: &ModelRequest) -> ModelReply {
    let last_user = request
        .messages
        .iter()
        .rposition(|m| matches!(m, ChatMessage::User { .. }));
    let Some(index) = last_user else {
        return text_reply("ok: received 0 characters".to_owned());
    };
    let Some(ChatMessage::User { text }) = request.messages.get(index) else {
        return text_reply("ok: received 0 characters".to_owned());
    };
    let plan = match parse_plan(text) {
        None => return text_reply(format!("ok: received {} characters", text.chars().count())),
        Some(Err(why)) => return text_reply(format!("scripted: invalid plan: {why}")),
        Some(Ok(plan)) => plan,
    };
    let after = request.messages.get(index + 1..).unwrap_or_default();
    let mut steps = plan.steps.clone();
    let mut outcomes: Vec<&ToolOutcome> = Vec::new();
    for message in after {
        match message {
            ChatMessage::Decision {
                option: Some(option),
                ..
            } => {
                if let Some((_, more)) = plan.on_approval.iter().find(|(o, _)| o == option) {
                    steps.extend(more.iter().cloned());
                }
            }
            ChatMessage::ToolResult { outcome, .. } => outcomes.push(outcome),
            _ => {}
        }
    }
    let k = outcomes.len();
    if let Some(step) = steps.get(k) {
        return ModelReply {
            text: None,
            tool_calls: vec![ToolCallRequest {
                id: format!("s{k}"),
                name: step.tool.clone(),
                arguments: step.args.clone(),
            }],
            model: String::new(),
            usage: None,
        };
    }
    let steps: Vec<Value> = outcomes
        .iter()
        .map(|o| serde_json::to_value(o).unwrap_or(Value::Null))
        .collect();
    text_reply(json!({ "reply": plan.reply, "steps": steps }).to_string())
}

fn text_reply(text: String) -> ModelReply {
    ModelReply {
        text: Some(text),
        tool_calls: Vec::new(),
        model: String::new(),
        usage: None,
    }
}

/// `None` when `text` is not a plan at all; `Some(Err)` when it means to
/// be one and is malformed.
fn parse_plan(text: &str) -> Option<Result<Plan, String>> {
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    if !object.contains_key("steps") && !object.contains_key("reply") {
        return None;
    }
    Some(plan_from(&object))
}

fn plan_from(object: &Map<String, Value>) -> Result<Plan, String> {
    let reply = match object.get("reply") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("`reply` must be a string".to_owned()),
    };
    let steps = match object.get("steps") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => steps_from(value, "steps")?,
    };
    let mut on_approval = Vec::new();
    match object.get("on_approval") {
        None | Some(Value::Null) => {}
        Some(Value::Object(options)) => {
            for (option, value) in options {
                on_approval.push((
                    option.clone(),
                    steps_from(value, &format!("on_approval.{option}"))?,
                ));
            }
        }
        Some(_) => return Err("`on_approval` must be an object".to_owned()),
    }
    Ok(Plan {
        steps,
        reply,
        on_approval,
    })
}

fn steps_from(value: &Value, at: &str) -> Result<Vec<Step>, String> {
    let Value::Array(items) = value else {
        return Err(format!("`{at}` must be an array of steps"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let tool = item
                .get("tool")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .ok_or(format!("`{at}[{i}]` has no `tool` name"))?;
            let args = match item.get("args") {
                None | Some(Value::Null) => json!({}),
                Some(Value::Object(map)) => Value::Object(map.clone()),
                Some(_) => return Err(format!("`{at}[{i}].args` must be an object")),
            };
            Ok(Step {
                tool: tool.to_owned(),
                args,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn asked(text: &str, system: &str) -> ModelRequest {
        ModelRequest {
            system: system.into(),
            messages: vec![ChatMessage::User { text: text.into() }],
            ..ModelRequest::default()
        }
    }

    #[tokio::test]
    async fn replies_report_a_usage_derived_from_sizes() {
        let request = asked("hello", "be brief");
        let reply = ScriptedModel::new("s").complete(&request).await.unwrap();
        let usage = reply.usage.unwrap();
        let prompt = 8 + total_size(&request.messages);
        assert_eq!(usage.prompt_tokens, prompt.div_ceil(4) as u64);
        let text = reply.text.as_ref().unwrap().len();
        assert_eq!(usage.completion_tokens, text.div_ceil(4) as u64);
        assert_eq!(usage.cached_tokens, 2);
        assert_eq!(scripted_usage(&request, &reply), usage);
    }

    #[tokio::test]
    async fn a_plan_over_its_context_window_overflows() {
        let small = asked(r#"{"reply": "hi", "context_window": 100000}"#, "");
        assert!(ScriptedModel::new("s").complete(&small).await.is_ok());
        let big = asked(r#"{"reply": "hi", "context_window": 10}"#, "");
        let outcome = ScriptedModel::new("s").complete(&big).await.unwrap_err();
        assert_eq!(outcome.code, Some(ErrorCode::ContextTooLong));
        assert!(
            outcome.message.ends_with("bytes > 10 maximum"),
            "{}",
            outcome.message
        );
        assert!(scripted_overflow(&asked("not a plan", "")).is_none());
    }
}
