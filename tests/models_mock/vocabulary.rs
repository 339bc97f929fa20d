//! Every name issue 13 introduced that these tests rely on (config keys,
//! event kinds, resource fields, metric labels), in one place, so a
//! rename shows up here and nowhere else in this binary.

use serde_json::Value;

/// `[[models]]` key (stream branch): the longest gap between two chunks of
/// a streamed reply before the attempt is a timeout.
pub fn stream_idle_timeout(value: &str) -> String {
    format!("stream_idle_timeout = {value:?}")
}

/// `[[models]]` key (stream branch): `false` keeps the plain request.
#[allow(dead_code)] // kept for the lead: the default (streaming) is what is tested
pub fn stream(on: bool) -> String {
    format!("stream = {on}")
}

/// The audit event kind (engine branch, shared contract of 183198a) of a
/// not-before instant set on an endpoint; data `{endpoint, until,
/// retry_after_ms}`.
pub const NOT_BEFORE: &str = "not_before";

/// The audit event kind emitted before every model request (engine
/// branch); data `{model, attempt}`, source `model/<name>`.
pub const ATTEMPT: &str = "tool_attempt";

/// The audit event kind of one answered or failed attempt (exists).
pub const OUTCOME: &str = "tool_outcome";

/// `until` of a not-before event's data.
pub fn not_before_until(data: &Value) -> Option<&str> {
    data["until"].as_str()
}

/// SSE event name of one text delta (stream branch); data `{session,
/// message, turn, attempt, text}`.
pub const DELTA: &str = "message.delta";

/// Whether a delta's data names message `message_id` (`<session>:<n>`,
/// as `POST /v1/sessions/{id}/messages` answers it) of `session`: its
/// `message` is that id or the number `n` (the stream branch sends the
/// number; either is accepted until the lead settles it).
pub fn delta_is_of(data: &Value, session: &str, message_id: &str) -> bool {
    let seq = message_id
        .rsplit_once(':')
        .and_then(|(_, n)| n.parse::<u64>().ok());
    data["session"] == session
        && (data["message"] == message_id || (seq.is_some() && data["message"].as_u64() == seq))
}

/// SSE event name sent before a retried attempt's deltas.
pub const DELTA_RESET: &str = "message.delta.reset";

/// (prompt, completion) tokens of a `GET /v1/sessions/{id}` answer (tokens
/// branch): `usage: {prompt_tokens, completion_tokens, cached_tokens}`,
/// the field names of `model::Usage`.
pub fn session_usage(session: &Value) -> Option<(u64, u64)> {
    let usage = &session["usage"];
    Some((
        usage["prompt_tokens"].as_u64()?,
        usage["completion_tokens"].as_u64()?,
    ))
}

/// The `kind` label values of `hale_model_tokens_total{model,kind}` for
/// prompt and completion tokens (tokens branch).
pub const PROMPT_KIND: &str = "prompt";
/// See [`PROMPT_KIND`].
pub const COMPLETION_KIND: &str = "completion";

/// Whether a failed model outcome (the `tool_outcome` event's `code` and
/// `data`, the serialized `ToolOutcome`) is typed: a catalog code other
/// than the catch-all `INTERNAL`, or `INTERNAL` marked `malformed: true`
/// in its data (how `model/http.rs` has classified a body that is not the
/// wire format since before issue 13). Tighten this at merge if a
/// malformed answer should get a code of its own.
pub fn is_typed(code: &str, outcome: &Value) -> bool {
    !code.is_empty() && (code != "INTERNAL" || outcome["data"]["malformed"] == true)
}
