//! The HTTP exchange both remote providers share: one POST of a JSON body
//! under the endpoint's deadline, the answer read with a size cap, and
//! every way it can fail turned into an outcome by the provider's own
//! classifier.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::{Value, json};

use crate::builtin::classify_reqwest_error;
use crate::catalog::ErrorCode;
use crate::classify::{MAX_EXCERPT_BYTES, with_retry_after_ms};
use crate::outcome::{Hint, HintKind, ToolOutcome};

/// The default of `[[models]] max_reply_bytes`: the most bytes of a
/// successful answer that are read. A chat completion is a few kilobytes;
/// a body beyond this is not what the wire format promises, and reading
/// it whole would let one endpoint fill hale's memory.
pub const MAX_REPLY_BYTES: usize = 8 * 1024 * 1024;

/// The longest a connection may take to be established, whatever the
/// endpoint's (longer) request deadline.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Classifies a non-2xx answer: status, raw `Retry-After`, body text, now.
pub(crate) type ErrorClassifier = fn(u16, Option<&str>, &str, SystemTime) -> ToolOutcome;

/// Builds the client one endpoint uses for all its requests: `timeout`
/// bounds a whole request (connect, send, the last body byte).
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .user_agent(concat!("hale/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// POSTs `body` to `url` and returns the response once its status says
/// success, or the classified failure (with `url` in its data). A failed
/// answer's pause is read from `retry-after-ms` when it has one, else
/// from `Retry-After`.
pub(crate) async fn send(
    client: &reqwest::Client,
    url: &str,
    headers: HeaderMap,
    body: &Value,
    classify: ErrorClassifier,
) -> Result<reqwest::Response, ToolOutcome> {
    let sent = client.post(url).headers(headers).json(body).send().await;
    let mut response = sent.map_err(|e| with_url(classify_reqwest_error(&e), url))?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(response);
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header(RETRY_AFTER.as_str());
    let retry_after_ms = header(RETRY_AFTER_MS);
    // The status alone classifies the failure; the body only refines
    // it, so a body that fails half-way still leaves a classification.
    let (excerpt, _) = read_capped(&mut response, 16 * MAX_EXCERPT_BYTES).await;
    let text = String::from_utf8_lossy(&excerpt);
    let outcome = classify(status, retry_after.as_deref(), &text, SystemTime::now());
    let outcome = with_retry_after_ms(outcome, retry_after_ms.as_deref());
    Err(with_url(outcome, url))
}

/// The header OpenAI-compatible servers send a pause in milliseconds in.
const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Reads a successful answer as JSON, up to `max_reply_bytes` (never
/// whole), or the classified failure.
pub(crate) async fn read_json(
    mut response: reqwest::Response,
    url: &str,
    max_reply_bytes: usize,
) -> Result<Value, ToolOutcome> {
    // A declared length over the cap is refused before any byte is read.
    let declared = response
        .content_length()
        .and_then(|n| usize::try_from(n).ok());
    if declared.is_some_and(|n| n > max_reply_bytes) {
        return Err(too_large(url, max_reply_bytes));
    }
    let (bytes, read) = read_capped(&mut response, max_reply_bytes).await;
    match read {
        Err(e) => Err(with_url(classify_reqwest_error(&e), url)),
        Ok(true) => Err(too_large(url, max_reply_bytes)),
        Ok(false) => serde_json::from_slice(&bytes).map_err(|e| {
            let text = String::from_utf8_lossy(&bytes);
            malformed(
                url,
                &format!("the answer is not JSON ({e}): {}", excerpt(&text)),
            )
        }),
    }
}

/// The outcome for an answer that is not what the wire format promises
/// (not JSON, or JSON without the fields every answer has): `INTERNAL`,
/// not retryable (the same endpoint would most likely answer the same
/// way), with `malformed: true` in its data. It counts against the
/// endpoint's breaker, and the model chain moves on to the next model.
pub(crate) fn malformed(url: &str, why: &str) -> ToolOutcome {
    ToolOutcome::from_code(
        ErrorCode::Internal,
        format!("the model endpoint answered with a malformed body: {why}"),
    )
    .with_data(json!({ "url": url, "malformed": true }))
}

/// The outcome for an answer longer than the endpoint's cap:
/// `OUTPUT_TOO_LARGE` (not retryable: the same request would most likely
/// get as long an answer; the chain moves on to the next model), with the
/// cap in its data and a hint naming the settings that change it.
pub(crate) fn too_large(url: &str, cap: usize) -> ToolOutcome {
    ToolOutcome::from_code(
        ErrorCode::OutputTooLarge,
        format!(
            "the model endpoint's answer is longer than its cap of {cap} bytes; it was not \
             read further"
        ),
    )
    .with_hint(
        Hint::new(
            HintKind::TryInstead,
            "raise this model's `max_reply_bytes` in hale.toml if its answers are \
             legitimately this long, or lower its `max_tokens`",
        )
        .with_suggestions(["max_reply_bytes", "max_tokens"]),
    )
    .with_data(json!({ "url": url, "max_reply_bytes": cap }))
}

pub(crate) fn excerpt(text: &str) -> &str {
    let text = text.trim();
    let mut end = text.len().min(MAX_EXCERPT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

pub(crate) fn with_url(mut outcome: ToolOutcome, url: &str) -> ToolOutcome {
    match &mut outcome.data {
        Value::Object(map) => {
            map.insert("url".to_owned(), json!(url));
        }
        other => *other = json!({ "url": url }),
    }
    outcome
}

/// Reads the body up to `cap` bytes: the bytes, and whether it was cut
/// (or the error that ended it early).
async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
) -> (Vec<u8>, Result<bool, reqwest::Error>) {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap.saturating_sub(body.len());
                if chunk.len() > room {
                    body.extend_from_slice(chunk.get(..room).unwrap_or_default());
                    return (body, Ok(true));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return (body, Ok(false)),
            Err(e) => return (body, Err(e)),
        }
    }
}
