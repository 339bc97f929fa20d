//! Reading a streamed model answer: the rules both wire formats share.
//!
//! A streamed answer can go wrong in ways a plain one cannot: it can stop
//! half-way (the connection drops, a proxy cuts it) and look like a short
//! reply; it can stall between two chunks; one chunk can be garbage while
//! the others are fine; a tool call's arguments arrive in pieces that
//! must add up to JSON. This module holds the rules, so that both
//! providers apply them alike; a provider only says what one event means
//! (a [`StreamState`]).
//!
//! - An answer whose end marker (`[DONE]` or a `finish_reason` for
//!   OpenAI, `message_stop` for Anthropic) has not arrived when the body
//!   ends is `TRANSPORT_CLOSED` (retryable), never a reply.
//! - A gap between two chunks longer than `stream_idle_timeout` (or past
//!   the request's overall deadline) is `ETIMEDOUT` (retryable).
//! - A chunk that is not UTF-8, not JSON, or not the shape the format
//!   promises is a malformed answer (`INTERNAL`, not retryable, the
//!   chain moves on), its data naming the problem and the chunk.
//! - A tool call whose assembled arguments are not a JSON object is
//!   refused the same way: never half-used.
//! - The bytes read count against `max_reply_bytes` (`OUTPUT_TOO_LARGE`).
//! - An error the endpoint sends inside the stream is classified like
//!   the HTTP error body (see
//!   [`from_model_stream_error`](crate::classify::from_model_stream_error)).

use std::future::Future;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::http::{self, excerpt, with_url};
use super::sse::{SseEvent, SseParser};
use super::{DeltaSink, ModelReply};
use crate::builtin::classify_reqwest_error;
use crate::catalog::ErrorCode;
use crate::outcome::ToolOutcome;

/// What a [`StreamState`] wants after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read on.
    More,
    /// The answer's end marker arrived: stop reading.
    End,
}

/// Why a stream's content cannot be a reply.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamFault {
    /// A chunk is not what the format promises.
    Malformed {
        /// What is wrong with it.
        why: String,
        /// The chunk (its start).
        chunk: String,
    },
    /// A tool call's assembled arguments are not a JSON object.
    ToolCall {
        /// The call's id.
        id: String,
        /// The tool's name.
        name: String,
        /// Why the arguments were refused.
        why: String,
    },
    /// The endpoint reported an error in the stream, classified.
    Endpoint(ToolOutcome),
}

impl StreamFault {
    /// A malformed-chunk fault for `chunk`.
    pub fn malformed(why: impl Into<String>, chunk: &str) -> Self {
        StreamFault::Malformed {
            why: why.into(),
            chunk: excerpt(chunk).to_owned(),
        }
    }
}

/// One wire format's reading of a stream: the reply it assembles from the
/// events, in order.
pub trait StreamState: Default + Send {
    /// One event; text pieces go to `deltas` as they arrive.
    ///
    /// # Errors
    /// The event is malformed, or is the endpoint's error.
    fn on_event(
        &mut self,
        event: &SseEvent,
        deltas: Option<&dyn DeltaSink>,
    ) -> Result<Flow, StreamFault>;

    /// Whether the answer's end marker has arrived.
    fn complete(&self) -> bool;

    /// The reply (`model` left empty).
    ///
    /// # Errors
    /// A tool call whose arguments do not parse.
    fn into_reply(self) -> Result<ModelReply, StreamFault>;
}

/// Where a stream's bytes come from: the response body, or a test's
/// script.
pub trait Chunks: Send {
    /// One chunk.
    type Chunk: AsRef<[u8]> + Send;

    /// The next chunk; `None` at the end of the body.
    fn next_chunk(
        &mut self,
    ) -> impl Future<Output = Result<Option<Self::Chunk>, ToolOutcome>> + Send;
}

impl Chunks for reqwest::Response {
    type Chunk = bytes::Bytes;

    async fn next_chunk(&mut self) -> Result<Option<Self::Chunk>, ToolOutcome> {
        self.chunk().await.map_err(|e| classify_reqwest_error(&e))
    }
}

/// The limits one streamed answer is read under.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// The most bytes read.
    pub max_bytes: usize,
    /// The longest gap between two chunks.
    pub idle: Duration,
    /// When the whole request must be over.
    pub deadline: Instant,
}

/// Reads a streamed answer from `chunks` into a reply under `limits`
/// (see the module docs for the rules); `url` goes into failures' data.
///
/// # Errors
/// The classified outcome.
pub async fn read_stream<S: StreamState, C: Chunks>(
    chunks: &mut C,
    url: &str,
    limits: StreamLimits,
    deltas: Option<&dyn DeltaSink>,
) -> Result<ModelReply, ToolOutcome> {
    let mut parser = SseParser::new();
    let mut state = S::default();
    let mut events = Vec::new();
    let mut read = 0usize;
    loop {
        let now = Instant::now();
        let left = limits.deadline.saturating_duration_since(now);
        let wait = limits.idle.min(left);
        let chunk = match tokio::time::timeout(wait, chunks.next_chunk()).await {
            Err(_) => return Err(stalled(url, limits, wait < limits.idle, read)),
            Ok(Err(outcome)) => return Err(with_url(outcome, url)),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        let bytes = chunk.as_ref();
        read = read.saturating_add(bytes.len());
        if read > limits.max_bytes {
            return Err(http::too_large(url, limits.max_bytes));
        }
        parser
            .feed(bytes, &mut events)
            .map_err(|e| fault(url, StreamFault::malformed(e.to_string(), &e.excerpt)))?;
        for event in events.drain(..) {
            match state.on_event(&event, deltas) {
                Ok(Flow::More) => {}
                Ok(Flow::End) => return state.into_reply().map_err(|f| fault(url, f)),
                Err(f) => return Err(fault(url, f)),
            }
        }
    }
    // Past the end marker, a cut (of `[DONE]`, say) loses nothing of the
    // reply.
    if state.complete() {
        return state.into_reply().map_err(|f| fault(url, f));
    }
    Err(truncated(url, read, parser.mid_event()))
}

/// The outcome of a stream whose content cannot be a reply.
pub fn fault(url: &str, fault: StreamFault) -> ToolOutcome {
    match fault {
        StreamFault::Malformed { why, chunk } => {
            let mut outcome =
                http::malformed(url, &format!("a streamed chunk is malformed: {why}"));
            outcome.data = json!({ "url": url, "malformed": true, "stream": "malformed_chunk",
                "why": why, "chunk": chunk });
            outcome
        }
        StreamFault::ToolCall { id, name, why } => {
            let mut outcome = http::malformed(
                url,
                &format!("the streamed arguments of tool call `{id}` ({name}) are refused: {why}"),
            );
            outcome.data = json!({ "url": url, "malformed": true, "stream": "tool_call_arguments",
                "tool_call": id, "tool": name, "why": why });
            outcome
        }
        StreamFault::Endpoint(outcome) => with_url(outcome, url),
    }
}

/// A stream that ended before its end marker: retryable, never a reply.
pub fn truncated(url: &str, read: usize, mid_event: bool) -> ToolOutcome {
    ToolOutcome::from_code(
        ErrorCode::TransportClosed,
        format!(
            "the model's streamed answer ended after {read} bytes, before its end marker; \
             a cut answer is not taken as a reply"
        ),
    )
    .with_data(json!({ "url": url, "stream": "truncated", "bytes": read,
        "mid_event": mid_event }))
}

/// A stream that stalled: `ETIMEDOUT`, retryable.
fn stalled(url: &str, limits: StreamLimits, deadline: bool, read: usize) -> ToolOutcome {
    let message = if deadline {
        "the model's streamed answer did not finish within the request's timeout".to_owned()
    } else {
        format!(
            "the model's streamed answer sent nothing for {} ms (`stream_idle_timeout`)",
            limits.idle.as_millis()
        )
    };
    ToolOutcome::from_code(ErrorCode::Etimedout, message).with_data(json!({
        "url": url,
        "stream": if deadline { "deadline" } else { "idle" },
        "stream_idle_timeout_ms": u64::try_from(limits.idle.as_millis()).unwrap_or(u64::MAX),
        "bytes": read,
    }))
}

/// Helpers for the stream readers' unit tests: a scripted body and a
/// recording sink.
#[cfg(test)]
pub(crate) mod testing {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;

    /// One step of a scripted body.
    pub(crate) enum Step {
        Bytes(Vec<u8>),
        /// Nothing ever comes.
        Stall,
    }

    /// A scripted body.
    pub(crate) struct Script(pub VecDeque<Step>);

    impl Chunks for Script {
        type Chunk = Vec<u8>;

        async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ToolOutcome> {
            match self.0.pop_front() {
                None => Ok(None),
                Some(Step::Bytes(bytes)) => Ok(Some(bytes)),
                Some(Step::Stall) => std::future::pending().await,
            }
        }
    }

    /// Records the text pieces a stream reports.
    #[derive(Debug, Default)]
    pub(crate) struct Recorder(pub Mutex<Vec<String>>);

    impl DeltaSink for Recorder {
        fn attempt(&self, _attempt: u32) {}
        fn text(&self, delta: &str) {
            self.0.lock().unwrap().push(delta.to_owned());
        }
    }

    impl Recorder {
        pub(crate) fn joined(&self) -> String {
            self.0.lock().unwrap().concat()
        }
    }

    pub(crate) const LIMITS_BYTES: usize = 1 << 20;

    /// Reads `chunks` as `S` with generous limits.
    pub(crate) fn read<S: StreamState>(
        chunks: &[&[u8]],
        deltas: Option<&dyn DeltaSink>,
    ) -> Result<ModelReply, ToolOutcome> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut script = Script(chunks.iter().map(|c| Step::Bytes(c.to_vec())).collect());
            let limits = StreamLimits {
                max_bytes: LIMITS_BYTES,
                idle: Duration::from_secs(30),
                deadline: Instant::now() + Duration::from_secs(120),
            };
            read_stream::<S, _>(&mut script, "http://model.test", limits, deltas).await
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::testing::{Script, Step};
    use super::*;
    use crate::model::openai::OpenAiStream;

    const COMPLETE: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
        data: [DONE]\n\n";

    fn limits(idle: Duration, overall: Duration) -> StreamLimits {
        StreamLimits {
            max_bytes: 1 << 20,
            idle,
            deadline: Instant::now() + overall,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_longer_than_the_idle_timeout_is_a_timeout() {
        let mut script =
            Script([Step::Bytes(COMPLETE.as_bytes()[..40].to_vec()), Step::Stall].into());
        let started = Instant::now();
        let outcome = read_stream::<OpenAiStream, _>(
            &mut script,
            "u",
            limits(Duration::from_secs(30), Duration::from_secs(120)),
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(outcome.code, Some(ErrorCode::Etimedout));
        assert!(outcome.retryable);
        assert_eq!(outcome.data["stream"], "idle");
        assert_eq!(outcome.data["stream_idle_timeout_ms"], 30_000);
        // Paused time: the wait is the idle timeout, not the 120 s deadline.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_overall_timeout_bounds_the_idle_wait() {
        let mut script = Script([Step::Stall].into());
        let started = Instant::now();
        let outcome = read_stream::<OpenAiStream, _>(
            &mut script,
            "u",
            limits(Duration::from_secs(30), Duration::from_secs(5)),
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(outcome.code, Some(ErrorCode::Etimedout));
        assert_eq!(outcome.data["stream"], "deadline");
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn every_cut_short_of_the_end_marker_is_a_transport_failure_never_a_reply() {
        let bytes = COMPLETE.as_bytes();
        // The finish_reason chunk ends here; from then on the answer is
        // complete even without [DONE].
        let finished = COMPLETE.find("data: [DONE]").unwrap();
        for cut in 0..bytes.len() {
            let read = testing::read::<OpenAiStream>(&[&bytes[..cut]], None);
            if cut >= finished {
                assert_eq!(read.unwrap().text.as_deref(), Some("hi"), "cut {cut}");
            } else {
                let outcome = read.expect_err(&format!("cut {cut} taken as a reply"));
                assert_eq!(outcome.code, Some(ErrorCode::TransportClosed), "cut {cut}");
                assert!(outcome.retryable);
                assert_eq!(outcome.data["stream"], "truncated");
            }
        }
    }

    #[tokio::test]
    async fn the_bytes_read_respect_the_reply_cap() {
        let mut script = Script(
            COMPLETE
                .as_bytes()
                .chunks(10)
                .map(|c| Step::Bytes(c.to_vec()))
                .collect(),
        );
        let mut limits = limits(Duration::from_secs(30), Duration::from_secs(120));
        limits.max_bytes = 50;
        let outcome = read_stream::<OpenAiStream, _>(&mut script, "u", limits, None)
            .await
            .unwrap_err();
        assert_eq!(outcome.code, Some(ErrorCode::OutputTooLarge));
    }

    #[test]
    fn a_chunk_that_is_not_utf8_is_malformed() {
        let outcome = testing::read::<OpenAiStream>(&[b"data: \xff\n\n"], None).unwrap_err();
        assert_eq!(outcome.code, Some(ErrorCode::Internal));
        assert_eq!(outcome.data["malformed"], true);
        assert_eq!(outcome.data["stream"], "malformed_chunk");
    }
}
