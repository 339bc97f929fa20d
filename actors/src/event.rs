//! The event vocabulary the audit trail stores, and the sink events go to.
//!
//! Everything worth explaining later (a tool attempt, a retry, a restart, an
//! escalation) is recorded as an [`Event`]. The tool layer produces events
//! and the durable core stores them, but neither should depend on the other:
//! the tool layer only knows the [`EventSink`] trait defined here, and the
//! core only knows the [`Event`] shape. Tests and embedders pick
//! [`MemorySink`] or [`NullSink`] without pulling in storage at all.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::ErrorCode;
use crate::open_enum::open_enum;
use crate::outcome::{Severity, Status, ToolOutcome};

/// How important an event is, ordered `Debug < Info < Warning < Error <
/// Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Detail for whoever is debugging hale itself.
    Debug,
    /// Normal operation worth a record.
    Info,
    /// Something went wrong and was (or may be) handled.
    #[serde(alias = "warn")]
    Warning,
    /// Something went wrong and needs handling.
    Error,
    /// Something went wrong and needs a human.
    Critical,
}

impl Level {
    /// The canonical lower-case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
            Level::Critical => "critical",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A level name that is not one of hale's levels or their usual aliases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown level `{0}`: expected one of debug, info, warning (or warn), error, critical \
     (trace is read as debug)"
)]
pub struct UnknownLevel(pub String);

impl FromStr for Level {
    type Err = UnknownLevel;

    /// Reads a level case-insensitively, so `"ERROR"` (as an agent's
    /// `read_logs(level="ERROR")` often sends it), `"warn"` and `"Warning"` all
    /// work. `trace` is read as `debug`, hale's lowest level, because
    /// `tracing` has one more level than hale.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "trace" | "debug" => Ok(Level::Debug),
            "info" => Ok(Level::Info),
            "warn" | "warning" => Ok(Level::Warning),
            "error" => Ok(Level::Error),
            "critical" => Ok(Level::Critical),
            _ => Err(UnknownLevel(s.to_owned())),
        }
    }
}

impl From<Severity> for Level {
    fn from(severity: Severity) -> Self {
        match severity {
            Severity::Warning => Level::Warning,
            Severity::Error => Level::Error,
            Severity::Critical => Level::Critical,
        }
    }
}

open_enum! {
    /// What an event records, spelled `snake_case` on the wire.
    pub enum EventKind {
        other
        /// A kind outside this vocabulary, kept as received.
        Other;
        /// A tool call was requested.
        ToolCall => "tool_call",
        /// One attempt at a tool call started.
        ToolAttempt => "tool_attempt",
        /// A tool call (or attempt) produced an outcome.
        ToolOutcome => "tool_outcome",
        /// A failed call is being retried.
        Retry => "retry",
        /// A failed call is being routed to a fallback.
        Fallback => "fallback",
        /// A failed call was re-issued with adjusted parameters (a read
        /// split into chunks).
        Adjust => "adjust",
        /// A call was refused before it was made (retry budget spent,
        /// concurrency cap reached).
        Shed => "shed",
        /// A connection to a peer (an MCP server) was established.
        Connected => "connected",
        /// A connection to a peer failed or ended.
        Disconnected => "disconnected",
        /// A circuit breaker changed state.
        Breaker => "breaker",
        /// A supervised child started.
        ChildStarted => "child_started",
        /// A supervised child exited.
        ChildExited => "child_exited",
        /// A supervised child was restarted.
        ChildRestarted => "child_restarted",
        /// A supervised child failed to start.
        ChildStartFailed => "child_start_failed",
        /// A supervised child was parked (no longer restarted for now).
        ChildParked => "child_parked",
        /// A supervisor exceeded its restart intensity and gave up.
        SupervisorGaveUp => "supervisor_gave_up",
        /// A failure was escalated to a human.
        EscalationOpened => "escalation_opened",
        /// A human resolved an escalation.
        EscalationResolved => "escalation_resolved",
        /// Something was written to agent memory.
        MemoryWrite => "memory_write",
        /// A session received a message.
        MessageReceived => "message_received",
        /// A session finished handling a message.
        MessageDone => "message_done",
        /// A log record bridged from `tracing`.
        Log => "log",
        /// The runtime responded to an incident (a fallback, a decided
        /// escalation): what it found, did, and learned.
        Incident => "incident",
        /// A session cannot write to its journal (disk full): it stopped
        /// asking the model and retries with backoff.
        SessionStalled => "session_stalled",
        /// A stalled session could write again and goes on.
        SessionResumed => "session_resumed",
        /// An endpoint asked for a pause (`Retry-After` on a 429/503): no
        /// request to it starts before the instant in `data.until`.
        NotBefore => "not_before",
        /// A model turn's token usage (prompt, completion, cached).
        ModelUsage => "model_usage",
        /// The runtime healed a failure by changing the request itself (a
        /// conversation compacted after `CONTEXT_TOO_LONG`).
        Fix => "fix",
    }
}

/// One record in the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the store; `None` until the store assigns it.
    #[serde(default)]
    pub id: Option<u64>,
    /// When the event happened.
    pub timestamp: Timestamp,
    /// How important it is.
    pub level: Level,
    /// The actor path that produced it, such as `hale/mcp/weather`.
    pub source: String,
    /// The agent session it belongs to, if any.
    #[serde(default)]
    pub session: Option<String>,
    /// What it records.
    pub kind: EventKind,
    /// The failure code involved, if any.
    #[serde(default)]
    pub code: Option<ErrorCode>,
    /// Human-readable summary.
    #[serde(default)]
    pub message: String,
    /// Structured detail (`Null` when none).
    #[serde(default)]
    pub data: Value,
}

impl Event {
    /// An event stamped with the current time.
    pub fn new(
        level: Level,
        source: impl Into<String>,
        kind: EventKind,
        message: impl Into<String>,
    ) -> Self {
        Self {
            id: None,
            timestamp: Timestamp::now(),
            level,
            source: source.into(),
            session: None,
            kind,
            code: None,
            message: message.into(),
            data: Value::Null,
        }
    }

    /// An event recording a tool outcome.
    ///
    /// The level follows the outcome: `info` for success, `warning` for a
    /// partial result (work is missing, but nothing failed outright), and
    /// the outcome's severity for failures. The data is the whole outcome as
    /// hale writes it, so the trail can later explain why a call was
    /// retried or escalated.
    pub fn from_outcome(source: impl Into<String>, kind: EventKind, outcome: &ToolOutcome) -> Self {
        let level = match outcome.status {
            Status::Success => Level::Info,
            Status::Partial => Level::Warning,
            Status::Error | Status::Timeout | Status::Blocked => outcome.severity.into(),
        };
        let mut event = Self::new(level, source, kind, outcome.message.clone());
        event.code = outcome.code.clone();
        event.data = serde_json::to_value(outcome).unwrap_or(Value::Null);
        event
    }

    /// Attaches the event to a session.
    pub fn with_session(mut self, session: impl Into<String>) -> Self {
        self.session = Some(session.into());
        self
    }

    /// Attaches a failure code.
    pub fn with_code(mut self, code: ErrorCode) -> Self {
        self.code = Some(code);
        self
    }

    /// Replaces the structured detail.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    /// Replaces the timestamp (for replayed or imported events).
    pub fn with_timestamp(mut self, timestamp: Timestamp) -> Self {
        self.timestamp = timestamp;
        self
    }
}

/// Where events go.
///
/// `emit` is called from actors and tool calls on the hot path, so an
/// implementation must never block: buffer, hand off to a channel, or drop,
/// but do not wait on I/O or on a lock held across I/O. It also cannot
/// fail: losing an audit record must not fail the call being audited.
pub trait EventSink: Send + Sync {
    /// Records one event.
    fn emit(&self, event: Event);

    /// Whether events of `level` are recorded at all. Hot paths (every
    /// tool call emits) ask first and skip building events the sink would
    /// drop. Records everything unless overridden.
    fn enabled(&self, level: Level) -> bool {
        let _ = level;
        true
    }
}

/// A sink that discards everything, for when no audit trail is wanted.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&self, _event: Event) {}

    fn enabled(&self, _level: Level) -> bool {
        false
    }
}

/// A sink that keeps every event in memory, for tests and short-lived
/// embedders.
#[derive(Debug, Default)]
pub struct MemorySink {
    events: Mutex<Vec<Event>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every event emitted so far, in emission order.
    pub fn events(&self) -> Vec<Event> {
        self.lock().clone()
    }

    /// How many events have been emitted.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing has been emitted yet.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        // A panic elsewhere while holding the lock cannot leave a Vec of
        // complete events half-written, so the data is still good.
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EventSink for MemorySink {
    fn emit(&self, event: Event) {
        self.lock().push(event);
    }
}

impl<T: EventSink + ?Sized> EventSink for Arc<T> {
    fn emit(&self, event: Event) {
        (**self).emit(event);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn memory_sink_recovers_from_a_poisoned_lock() {
        let sink = Arc::new(MemorySink::new());
        sink.emit(Event::new(Level::Info, "t", EventKind::Log, "before"));
        let poisoner = Arc::clone(&sink);
        let joined = std::thread::spawn(move || {
            let _guard = poisoner.events.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(joined.is_err());
        assert!(sink.events.is_poisoned());
        sink.emit(Event::new(Level::Info, "t", EventKind::Log, "after"));
        assert_eq!(sink.len(), 2);
        assert_eq!(sink.events()[1].message, "after");
    }
}
