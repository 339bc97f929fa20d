//! What a session does when it cannot write to its store.
//!
//! A session journals every step before it takes effect. When the store
//! refuses writes (the disk is full, the database is read-only), failing
//! the actor so its supervisor restarts it only replays the journal and
//! asks the model again for the turn that could not be written: every
//! restart a paid request, for nothing. So a session whose store fails
//! *stalls* instead: it keeps the model's unwritten reply in memory
//! ([`HeldTurn`]), asks nothing more of the model, tries again on a timer
//! paced by [`StallBackoff`] (a plain value, unit-tested), shows itself
//! stalled ([`Stalls`], read by `/v1/sessions`), and emits
//! `session_stalled` / `session_resumed` events (counted by `/metrics`).
//! The first write that succeeds ends the stall.

use std::time::Duration;

use dashmap::DashMap;
use jiff::Timestamp;
use serde_json::json;

use crate::event::{Event, EventKind, EventSink, Level};
use crate::model::ModelReply;

/// How long a stalled session waits before it tries its store again:
/// doubling from `min` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallBackoff {
    /// The first wait.
    pub min: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for StallBackoff {
    /// 1 s, doubling up to 1 min.
    fn default() -> Self {
        Self {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl StallBackoff {
    /// The wait before try number `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max.max(self.min))
    }
}

/// A stalled session, as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    /// When the stall began.
    pub since: Timestamp,
    /// Tries that failed since.
    pub attempts: u32,
    /// The store's last error.
    pub error: String,
}

/// The stalled sessions, shared by the session actors and the handle.
#[derive(Debug, Default)]
pub struct Stalls {
    map: DashMap<String, Stall>,
}

impl Stalls {
    /// Records a failed try of `session` and returns how many tries failed
    /// before it (0 for the failure that begins the stall, which is
    /// announced with a `session_stalled` event).
    pub(super) fn failed(
        &self,
        session: &str,
        source: &str,
        error: &str,
        sink: &dyn EventSink,
    ) -> u32 {
        let mut began = false;
        let attempts = {
            let mut entry = self.map.entry(session.to_owned()).or_insert_with(|| {
                began = true;
                Stall {
                    since: Timestamp::now(),
                    attempts: 0,
                    error: error.to_owned(),
                }
            });
            let before = entry.attempts;
            entry.attempts = entry.attempts.saturating_add(1);
            error.clone_into(&mut entry.error);
            before
        };
        if began {
            sink.emit(
                Event::new(
                    Level::Error,
                    source,
                    EventKind::SessionStalled,
                    format!(
                        "session {session} stalled: its journal cannot be written ({error}); \
                         it stops asking the model and retries with backoff"
                    ),
                )
                .with_session(session.to_owned())
                .with_data(json!({ "error": error })),
            );
        }
        attempts
    }

    /// Ends the stall of `session` (a write succeeded), with a
    /// `session_resumed` event; nothing if it was not stalled.
    pub(super) fn resumed(&self, session: &str, source: &str, sink: &dyn EventSink) {
        if let Some((_, stall)) = self.map.remove(session) {
            sink.emit(
                Event::new(
                    Level::Info,
                    source,
                    EventKind::SessionResumed,
                    format!(
                        "session {session} resumed: its journal can be written again (after {} \
                         failed tries)",
                        stall.attempts
                    ),
                )
                .with_session(session.to_owned())
                .with_data(json!({ "attempts": stall.attempts, "since": stall.since })),
            );
        }
    }

    /// Whether `session` is stalled.
    pub fn is_stalled(&self, session: &str) -> bool {
        self.map.contains_key(session)
    }

    /// The stall of `session`, if it is stalled.
    pub fn get(&self, session: &str) -> Option<Stall> {
        self.map.get(session).map(|s| s.clone())
    }

    /// How many sessions are stalled.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Forgets a deleted session's stall, with the `session_resumed`
    /// event that balances its `session_stalled` (so a gauge counting them
    /// drops it).
    pub(super) fn forget(&self, session: &str, source: &str, sink: &dyn EventSink) {
        if self.map.remove(session).is_some() {
            sink.emit(
                Event::new(
                    Level::Info,
                    source,
                    EventKind::SessionResumed,
                    format!("session {session} was deleted while stalled"),
                )
                .with_session(session.to_owned())
                .with_data(json!({ "deleted": true })),
            );
        }
    }
}

/// A model reply that could not be journaled: the next try journals it
/// instead of asking the model again.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldTurn {
    /// The message.
    pub seq: u64,
    /// The turn.
    pub turn: u32,
    /// What the model said.
    pub reply: ModelReply,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::event::MemorySink;

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let b = StallBackoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(1), Duration::from_millis(200));
        assert_eq!(b.delay(3), Duration::from_millis(800));
        assert_eq!(b.delay(4), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
        let odd = StallBackoff {
            min: Duration::from_secs(5),
            max: Duration::from_secs(1),
        };
        assert_eq!(odd.delay(7), Duration::from_secs(5));
    }

    #[test]
    fn a_stall_is_announced_once_and_its_end_once() {
        let sink = MemorySink::new();
        let stalls = Stalls::default();
        assert_eq!(stalls.failed("s", "src", "disk full", &sink), 0);
        assert_eq!(stalls.failed("s", "src", "disk full", &sink), 1);
        assert!(stalls.is_stalled("s"));
        assert_eq!(stalls.get("s").unwrap().attempts, 2);
        stalls.resumed("s", "src", &sink);
        stalls.resumed("s", "src", &sink);
        assert!(!stalls.is_stalled("s"));
        let kinds: Vec<EventKind> = sink.events().into_iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![EventKind::SessionStalled, EventKind::SessionResumed]
        );
    }
}
