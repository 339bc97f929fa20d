//! Classifiers from raw failures (I/O errors, HTTP statuses, JSON-RPC
//! errors, process exits) to [`ToolOutcome`]s.
//!
//! Foreign systems describe failure in their own terms: error kinds, status
//! numbers, free text on stderr. Matching that text is fragile, so it is
//! done here and nowhere else: this module is the only place in hale where
//! foreign text is inspected. Everything downstream (recovery policies, the
//! audit trail, the model) sees only catalog codes, and every classification
//! is taken from [`ErrorCode::class`], so changing how a code is treated
//! never requires touching a classifier.

use std::io;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::catalog::ErrorCode;
use crate::outcome::{Hint, HintKind, ToolOutcome};

/// How much foreign text (stderr, response bodies) an outcome keeps: enough
/// for the model to read the error, not enough to flood its context.
pub const MAX_EXCERPT_BYTES: usize = 2048;

/// Classifies an I/O error by its [`io::ErrorKind`].
///
/// Unreachable addresses, hosts and networks map to `CONNECTION_REFUSED`
/// rather than `SERVICE_UNAVAILABLE`: nothing answered, exactly as with a
/// refused connection, and `SERVICE_UNAVAILABLE` is kept for a peer that
/// answered and said it was busy. Kinds without a catalog counterpart are
/// `INTERNAL`. The data carries the kind as `{"io_kind": "..."}`.
pub fn from_io_error(err: &io::Error) -> ToolOutcome {
    use io::ErrorKind as K;
    let code = match err.kind() {
        K::ConnectionRefused | K::AddrNotAvailable | K::HostUnreachable | K::NetworkUnreachable => {
            ErrorCode::ConnectionRefused
        }
        K::TimedOut | K::WouldBlock => ErrorCode::Etimedout,
        K::NotFound => ErrorCode::NotFound,
        K::PermissionDenied => ErrorCode::PermissionDenied,
        K::AlreadyExists => ErrorCode::AlreadyExists,
        K::InvalidInput | K::InvalidData => ErrorCode::InvalidInput,
        K::ConnectionReset
        | K::ConnectionAborted
        | K::BrokenPipe
        | K::NotConnected
        | K::UnexpectedEof => ErrorCode::TransportClosed,
        K::Interrupted => ErrorCode::Interrupted,
        K::FileTooLarge => ErrorCode::FileTooLarge,
        _ => ErrorCode::Internal,
    };
    ToolOutcome::from_code(code, err.to_string())
        .with_data(json!({ "io_kind": format!("{:?}", err.kind()) }))
}

/// Classifies an HTTP response status.
///
/// A 2xx status is a success with `Null` data (the caller attaches the
/// parsed body). Failures carry `{"http_status": n}` as data and the start
/// of the body (at most [`MAX_EXCERPT_BYTES`]) in the message.
///
/// | status | code |
/// |---|---|
/// | 429 | `RATE_LIMITED` |
/// | 401 | `UNAUTHENTICATED` |
/// | 403 | `PERMISSION_DENIED` |
/// | 404, 410 | `NOT_FOUND` |
/// | 408, 504 | `ETIMEDOUT` (status `timeout`) |
/// | 409 | `ALREADY_EXISTS` |
/// | 413 | `FILE_TOO_LARGE` |
/// | other 4xx | `INVALID_INPUT` |
/// | 503, other 5xx | `SERVICE_UNAVAILABLE` |
/// | 1xx, 3xx, out of range | `INTERNAL` (a client that surfaces these was not set up to follow them) |
///
/// `retry_after` is the raw `Retry-After` header value; when it parses (see
/// [`parse_retry_after`]) and the outcome is retryable, the outcome carries
/// it in `retry_after` and in a `retry_after` hint.
pub fn from_http_status(
    status: u16,
    retry_after: Option<&str>,
    body_excerpt: &str,
    now: SystemTime,
) -> ToolOutcome {
    if (200..300).contains(&status) {
        return ToolOutcome::success(Value::Null);
    }
    let code = match status {
        429 => ErrorCode::RateLimited,
        401 => ErrorCode::Unauthenticated,
        403 => ErrorCode::PermissionDenied,
        404 | 410 => ErrorCode::NotFound,
        408 | 504 => ErrorCode::Etimedout,
        409 => ErrorCode::AlreadyExists,
        413 => ErrorCode::FileTooLarge,
        400..=499 => ErrorCode::InvalidInput,
        500..=599 => ErrorCode::ServiceUnavailable,
        _ => ErrorCode::Internal,
    };
    let body = head(body_excerpt.trim(), MAX_EXCERPT_BYTES);
    let message = if body.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {body}")
    };
    let mut outcome =
        ToolOutcome::from_code(code, message).with_data(json!({ "http_status": status }));
    if outcome.retryable
        && let Some(after) = retry_after.and_then(|value| parse_retry_after(value, now))
    {
        let hint = Hint::new(
            HintKind::RetryAfter,
            format!(
                "the server asked to wait {} ms before retrying",
                after.as_millis()
            ),
        );
        outcome = outcome.with_retry_after(after).with_hint(hint);
    }
    outcome
}

/// Parses a `Retry-After` header value relative to `now`.
///
/// Accepts delta-seconds (`"120"`) and an HTTP-date in any of the three
/// forms HTTP allows (IMF-fixdate, RFC 850, asctime). A date already in the
/// past means "now" ([`Duration::ZERO`]); anything else (negative numbers,
/// fractions, garbage) is `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses a `retry-after-ms` header value (OpenAI's and Azure's
/// finer-grained `Retry-After`): a non-negative number of milliseconds,
/// fractions allowed (`"1500"`, `"20.5"`). Anything else is `None`.
pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    let ms: f64 = value.trim().parse().ok()?;
    if !ms.is_finite() || ms < 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(ms / 1000.0).ok()
}

/// `outcome` with the pause a `retry-after-ms` header asked for, which
/// takes precedence over `Retry-After` (it is the more precise of the
/// two): the `retry_after` field and the `retry_after` hint are replaced.
/// A failure that is not retryable, or a value that does not parse, is
/// left as it was.
pub fn with_retry_after_ms(mut outcome: ToolOutcome, value: Option<&str>) -> ToolOutcome {
    let Some(after) = value.and_then(parse_retry_after_ms) else {
        return outcome;
    };
    if !outcome.retryable {
        return outcome;
    }
    outcome.hints.retain(|h| h.kind != HintKind::RetryAfter);
    let hint = Hint::new(
        HintKind::RetryAfter,
        format!(
            "the server asked to wait {} ms before retrying",
            after.as_millis()
        ),
    );
    outcome.with_retry_after(after).with_hint(hint)
}

/// Classifies a JSON-RPC error object (as MCP servers send them).
///
/// | code | catalog code | why |
/// |---|---|---|
/// | -32700 parse error | `INTERNAL` | the peer could not parse what *we* sent: a bug on our side, not the agent's input |
/// | -32600 invalid request | `INVALID_INPUT` | |
/// | -32601 method not found | `NOT_FOUND` | |
/// | -32602 invalid params | `INVALID_INPUT` | |
/// | -32603 internal error | `INTERNAL` | |
/// | -32001 (MCP SDK request timeout) | `ETIMEDOUT` | |
/// | -32002 (MCP resource not found) | `NOT_FOUND` | |
/// | -32042 (MCP URL elicitation required) | `POLICY_BLOCKED` | a human must visit a URL (sign-in, consent) before the call can go on; hale cannot do that itself, so the call is blocked and escalated |
/// | other -32000..=-32099 | `SERVICE_UNAVAILABLE` | the implementation-defined server-error range; -32000 in particular is used for anything from "connection closed" to application errors, so it is treated as transient |
/// | anything else | `INTERNAL` | application-defined codes carry no meaning hale can rely on |
///
/// The data carries `{"jsonrpc_code": n}`; the message is the peer's.
pub fn from_jsonrpc_error(code: i64, message: &str) -> ToolOutcome {
    let catalog_code = match code {
        -32700 => ErrorCode::Internal,
        -32600 => ErrorCode::InvalidInput,
        -32601 => ErrorCode::NotFound,
        -32602 => ErrorCode::InvalidInput,
        -32603 => ErrorCode::Internal,
        -32001 => ErrorCode::Etimedout,
        -32002 => ErrorCode::NotFound,
        -32042 => ErrorCode::PolicyBlocked,
        -32099..=-32000 => ErrorCode::ServiceUnavailable,
        _ => ErrorCode::Internal,
    };
    let message = if message.trim().is_empty() {
        format!("JSON-RPC error {code}")
    } else {
        message.to_owned()
    };
    ToolOutcome::from_code(catalog_code, message).with_data(json!({ "jsonrpc_code": code }))
}

/// The stderr phrases recognised by [`from_process_exit`], in the order they
/// are checked (lower-case; matching is case-insensitive).
///
/// Order matters because one line often contains several phrases. Specific
/// phrases come before generic ones: "permission denied" must beat
/// "not found" (`rm: cannot remove 'x': Permission denied` is not a missing
/// file), a refused connection to a host that was "not found" is still a
/// connection problem, and "not found" is the most generic phrase, so it is
/// checked last.
const STDERR_PHRASES: &[(&[&str], ErrorCode)] = &[
    (
        &["already exists", "alreadyexists"],
        ErrorCode::AlreadyExists,
    ),
    (
        &[
            "permission denied",
            "operation not permitted",
            "forbidden",
            "access denied",
            "access is denied",
        ],
        ErrorCode::PermissionDenied,
    ),
    (
        &[
            "connection refused",
            "was refused",
            "unable to connect",
            "could not connect",
            "failed to connect",
        ],
        ErrorCode::ConnectionRefused,
    ),
    (&["timed out", "timeout"], ErrorCode::Etimedout),
    (
        &["no such file", "not found", "notfound"],
        ErrorCode::NotFound,
    ),
];

/// Classifies how a child process ended.
///
/// Checked in this order, first match wins:
/// 1. exit code 0 (and no signal): success;
/// 2. killed by a signal: `INTERRUPTED` (whatever stderr says, the process
///    did not get to finish);
/// 3. exit 127 (the shell's "command not found"): `NOT_FOUND` with a
///    `missing_executable` hint;
/// 4. exit 126 (the shell's "not executable"): `PERMISSION_DENIED`;
/// 5. stderr phrases, case-insensitive, in this order: "already exists"
///    → `ALREADY_EXISTS`; "permission denied", "operation not permitted",
///    "forbidden", "access denied" → `PERMISSION_DENIED`; "connection
///    refused", "was refused", "unable to connect", "could not connect",
///    "failed to connect" → `CONNECTION_REFUSED`; "timed out", "timeout" →
///    `ETIMEDOUT`; "no such file", "not found" → `NOT_FOUND`. Specific
///    phrases come first, so "permission denied" beats "not found";
/// 6. anything else: `INTERNAL`.
///
/// The data is always `{"exit_code": .., "signal": ..}`. The message is the
/// end of stderr (at most [`MAX_EXCERPT_BYTES`], where error summaries
/// usually are), or a description of the exit when stderr is empty.
pub fn from_process_exit(exit_code: Option<i32>, signal: Option<i32>, stderr: &str) -> ToolOutcome {
    let data = json!({ "exit_code": exit_code, "signal": signal });
    if exit_code == Some(0) && signal.is_none() {
        return ToolOutcome::success(data);
    }
    let stderr = stderr.trim();
    let described = match (exit_code, signal) {
        (_, Some(sig)) => format!("process killed by signal {sig}"),
        (Some(code), None) => format!("process exited with code {code}"),
        (None, None) => "process ended without an exit code or signal".to_owned(),
    };
    let message = if stderr.is_empty() {
        described
    } else {
        tail(stderr, MAX_EXCERPT_BYTES).to_owned()
    };

    if signal.is_some() {
        return ToolOutcome::from_code(ErrorCode::Interrupted, message).with_data(data);
    }
    match exit_code {
        Some(127) => {
            let hint = Hint::new(
                HintKind::MissingExecutable,
                "the command was not found; check that the program is installed and on PATH",
            );
            return ToolOutcome::from_code(ErrorCode::NotFound, message)
                .with_hint(hint)
                .with_data(data);
        }
        Some(126) => {
            return ToolOutcome::from_code(ErrorCode::PermissionDenied, message).with_data(data);
        }
        _ => {}
    }
    let lowered = stderr.to_lowercase();
    let code = STDERR_PHRASES
        .iter()
        .find(|(phrases, _)| phrases.iter().any(|p| lowered.contains(p)))
        .map_or(ErrorCode::Internal, |(_, code)| code.clone());
    ToolOutcome::from_code(code, message).with_data(data)
}

/// Phrases in a model provider's 400 error that say the request does not
/// fit the model's context window (lower-case; matched case-insensitively
/// against the error's `code`, `type` and `message`).
///
/// OpenAI says it with the code `context_length_exceeded`; compatible
/// servers often only in the message (vLLM: "This model's maximum context
/// length is ..."; llama.cpp: "exceeds the available context size", type
/// `exceed_context_size_error`); Anthropic: "prompt is too long".
pub const CONTEXT_TOO_LONG_PHRASES: &[&str] = &[
    "context_length_exceeded",
    "maximum context length",
    "exceeds the available context size",
    "exceed_context_size",
    "prompt is too long",
];

/// Classifies a failed HTTP response of an OpenAI-compatible
/// chat-completions endpoint.
///
/// As [`from_http_status`], with two differences for what only a model
/// endpoint means:
///
/// | status | code |
/// |---|---|
/// | 400 whose error says the context window is exceeded (see [`CONTEXT_TOO_LONG_PHRASES`]) | `CONTEXT_TOO_LONG` |
/// | 413 (request too large) | `CONTEXT_TOO_LONG` |
///
/// The provider's error (`{"error": {"message", "type", "code"}}`, or
/// those fields at the top level as older vLLM sends them) is read when
/// the body has one: its message replaces the raw body in the
/// outcome's message, and its `type` and `code` go into the data as
/// `error_type` and `error_code`. Data also carries `provider: "openai"`.
pub fn from_openai_http_error(
    status: u16,
    retry_after: Option<&str>,
    body: &str,
    now: SystemTime,
) -> ToolOutcome {
    from_model_http_error("openai", status, retry_after, body, now)
}

/// Classifies a failed HTTP response of the Anthropic Messages API.
///
/// As [`from_openai_http_error`] (a 400 "prompt is too long" and a 413
/// `request_too_large` are `CONTEXT_TOO_LONG`; 529 `overloaded_error` is a
/// 5xx and so `SERVICE_UNAVAILABLE`, retryable), reading Anthropic's error
/// body (`{"type": "error", "error": {"type", "message"}}`). Data carries
/// `provider: "anthropic"`.
pub fn from_anthropic_http_error(
    status: u16,
    retry_after: Option<&str>,
    body: &str,
    now: SystemTime,
) -> ToolOutcome {
    from_model_http_error("anthropic", status, retry_after, body, now)
}

/// Classifies an error a model endpoint sent inside a streamed answer
/// (after a 200): OpenAI-compatible servers send `data: {"error": {...}}`,
/// Anthropic an `error` event (`{"type": "error", "error": {"type",
/// "message"}}`). There is no status, so one is read from the error's
/// type or code (Anthropic's `overloaded_error` is 529, `rate_limit_error`
/// 429, `api_error` 500, `invalid_request_error` 400, ...; OpenAI's
/// `server_error` 500, `rate_limit_exceeded` 429, ...; a number in `code`
/// is taken as the status) and the body is classified as the HTTP error
/// body would be, so `CONTEXT_TOO_LONG` and rate limits read the same.
/// An error whose kind says nothing is a 500 (`SERVICE_UNAVAILABLE`,
/// retryable: the endpoint failed mid-answer). Data carries
/// `in_stream: true`.
pub fn from_model_stream_error(provider: &str, body: &str) -> ToolOutcome {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed
        .as_ref()
        .and_then(|v| v.get("error").filter(|e| e.is_object()).or(Some(v)));
    let said = |name: &str| -> String {
        match error.and_then(|e| e.get(name)) {
            Some(Value::String(s)) => s.to_lowercase(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        }
    };
    let (kind, code) = (said("type"), said("code"));
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|n| (400..600).contains(n))
        .unwrap_or_else(|| {
            let words = format!("{kind} {code}");
            if words.contains("overloaded") {
                529
            } else if words.contains("rate_limit") || words.contains("insufficient_quota") {
                429
            } else if words.contains("authentication") || words.contains("invalid_api_key") {
                401
            } else if words.contains("permission") {
                403
            } else if words.contains("not_found") {
                404
            } else if words.contains("request_too_large") {
                413
            } else if words.contains("timeout") {
                504
            } else if words.contains("invalid_request") || words.contains("context_length") {
                400
            } else {
                500
            }
        });
    let mut outcome = from_model_http_error(provider, status, None, body, SystemTime::now());
    // The status was read from the error, not sent: say where it came from.
    if let Some(rest) = outcome.message.strip_prefix(&format!("HTTP {status}")) {
        outcome.message = format!("the endpoint reported an error mid-stream{rest}");
    }
    if let Value::Object(data) = &mut outcome.data {
        data.remove("http_status");
        data.insert("in_stream".to_owned(), json!(true));
    }
    outcome
}

fn from_model_http_error(
    provider: &str,
    status: u16,
    retry_after: Option<&str>,
    body: &str,
    now: SystemTime,
) -> ToolOutcome {
    // Both providers nest the details under `error`; some compatible
    // servers (older vLLM) put them at the top level. OpenAI's `code` may
    // be a string, a number or null.
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed
        .as_ref()
        .and_then(|v| v.get("error").filter(|e| e.is_object()).or(Some(v)));
    let field = |name: &str| -> Option<String> {
        match error?.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    };
    let (message, kind, code) = (field("message"), field("type"), field("code"));
    let excerpt = message.clone().unwrap_or_else(|| body.to_owned());
    let mut outcome = from_http_status(status, retry_after, &excerpt, now);
    if outcome.is_success() {
        return outcome;
    }
    let said = [&message, &kind, &code]
        .into_iter()
        .flatten()
        .map(|s| s.to_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    let too_long = status == 413
        || (status == 400 && CONTEXT_TOO_LONG_PHRASES.iter().any(|p| said.contains(p)));
    if too_long {
        let mut longer = ToolOutcome::from_code(
            ErrorCode::ContextTooLong,
            format!(
                "the request does not fit the model's context window (HTTP {status}: {})",
                head(excerpt.trim(), MAX_EXCERPT_BYTES)
            ),
        )
        .with_hint(Hint::new(
            HintKind::TryInstead,
            "shorten the conversation (summarise or drop old tool results) or use a model \
             with a larger context window",
        ));
        longer.data = outcome.data.take();
        outcome = longer;
    }
    if let Value::Object(data) = &mut outcome.data {
        data.insert("provider".to_owned(), json!(provider));
        if let Some(kind) = kind {
            data.insert("error_type".to_owned(), json!(kind));
        }
        if let Some(code) = code {
            data.insert("error_code".to_owned(), json!(code));
        }
    }
    outcome
}

/// The first `max` bytes of `s`, cut back to a character boundary.
fn head(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The last `max` bytes of `s`, moved forward to a character boundary.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn excerpts_respect_char_boundaries() {
        let s = "é".repeat(10); // 20 bytes
        assert_eq!(head(&s, 5), "éé");
        assert_eq!(tail(&s, 5), "éé");
        assert_eq!(head("abc", 10), "abc");
    }

    #[test]
    fn long_stderr_keeps_its_end() {
        let stderr = format!("{}FINAL: already exists", "x".repeat(5000));
        let outcome = from_process_exit(Some(1), None, &stderr);
        assert!(outcome.message.len() <= MAX_EXCERPT_BYTES);
        assert!(outcome.message.ends_with("FINAL: already exists"));
        assert_eq!(outcome.code, Some(ErrorCode::AlreadyExists));
    }

    #[test]
    fn long_body_keeps_its_start() {
        let body = format!("START{}", "y".repeat(5000));
        let outcome = from_http_status(400, None, &body, SystemTime::now());
        assert!(outcome.message.starts_with("HTTP 400: START"));
        assert!(outcome.message.len() <= MAX_EXCERPT_BYTES + "HTTP 400: ".len());
    }

    #[test]
    fn retry_after_ms_is_preferred_over_retry_after() {
        let now = SystemTime::now();
        let outcome = from_openai_http_error(429, Some("1"), "", now);
        assert_eq!(outcome.retry_after, Some(Duration::from_secs(1)));
        let outcome = with_retry_after_ms(outcome, Some("1500"));
        assert_eq!(outcome.retry_after, Some(Duration::from_millis(1500)));
        let hints: Vec<_> = outcome
            .hints
            .iter()
            .filter(|h| h.kind == HintKind::RetryAfter)
            .collect();
        assert_eq!(hints.len(), 1);
        assert!(hints[0].message.contains("1500 ms"));
        // Garbage, and a failure that is not retried, keep what they had.
        let kept = with_retry_after_ms(
            from_openai_http_error(429, Some("2"), "", now),
            Some("soon"),
        );
        assert_eq!(kept.retry_after, Some(Duration::from_secs(2)));
        let denied = with_retry_after_ms(from_openai_http_error(401, None, "", now), Some("100"));
        assert_eq!(denied.retry_after, None);
        assert_eq!(
            parse_retry_after_ms("20.5"),
            Some(Duration::from_micros(20_500))
        );
        assert_eq!(parse_retry_after_ms("-1"), None);
        assert_eq!(parse_retry_after_ms("NaN"), None);
    }

    #[test]
    fn stream_errors_read_a_status_from_their_kind() {
        let code = |body: &str| from_model_stream_error("anthropic", body).code;
        assert_eq!(
            code(r#"{"type":"error","error":{"type":"rate_limit_error","message":"x"}}"#),
            Some(ErrorCode::RateLimited)
        );
        assert_eq!(
            code(
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 300000 tokens"}}"#
            ),
            Some(ErrorCode::ContextTooLong)
        );
        assert_eq!(
            code(r#"{"type":"error","error":{"type":"authentication_error","message":"x"}}"#),
            Some(ErrorCode::Unauthenticated)
        );
        assert_eq!(
            code(r#"{"error":{"message":"boom"}}"#),
            Some(ErrorCode::ServiceUnavailable)
        );
        assert_eq!(code("not json"), Some(ErrorCode::ServiceUnavailable));
    }
}
