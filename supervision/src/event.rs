//! The supervisor's event stream.
//!
//! Every start, exit, restart, failed start, park and give-up is reported to an
//! observer, so that the audit trail (which lives in another crate) can record
//! the whole life of the tree without this crate knowing it exists.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::ActorId;

use crate::reason::{Decision, ExitReason};
use crate::spec::ChildId;

/// One thing that happened to a supervisor or one of its children.
#[derive(Debug, Clone)]
pub struct SupervisorEvent {
    /// The supervisor's name (its path, such as `hale/mcp`).
    pub supervisor: Arc<str>,
    /// The child concerned, if any.
    pub child: Option<ChildId>,
    /// Wall-clock time of the event.
    pub at: SystemTime,
    /// What happened.
    pub kind: SupervisorEventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum SupervisorEventKind {
    /// A child (re)started; `restarts` is how many times it had been restarted
    /// before this start (0 for its first).
    ChildStarted {
        /// The new incarnation's actor id.
        actor: ActorId,
        /// Restarts before this start.
        restarts: u64,
    },
    /// A child exited on its own (or was killed by someone other than its supervisor).
    ChildExited {
        /// Why it exited.
        reason: ExitReason,
        /// What the restart table decided.
        decision: Decision,
    },
    /// A restart was scheduled after a backoff delay.
    RestartScheduled {
        /// The backoff attempt number (0 for the first).
        attempt: u32,
        /// The delay before the restart.
        delay: Duration,
    },
    /// Starting a child failed (its `pre_start` returned an error or panicked).
    ChildStartFailed {
        /// The start error.
        error: String,
    },
    /// The supervisor shut a child down (terminate_child, a group restart, or its own stop).
    ChildTerminated {
        /// Whether it had to be killed after its graceful timeout.
        killed_after_timeout: bool,
    },
    /// A child exceeded its own restart limit and is parked until the probe.
    ChildParked {
        /// The exit (or start failure) that exceeded the limit.
        reason: ExitReason,
        /// When the probe will try it again.
        probe_after: Duration,
    },
    /// A probe is trying a parked child again.
    ChildProbed,
    /// The supervisor exceeded its restart intensity: it stopped its children
    /// and exits with `shutdown`, so its parent decides.
    GaveUp {
        /// The limit that was exceeded.
        max_restarts: u32,
        /// Its period.
        period: Duration,
    },
}

/// Receives supervisor events.
///
/// Called from inside the supervisor's handler: it must not block, or it
/// stalls every restart in that supervisor. Hand the event to a channel or an
/// actor and return.
pub trait SupervisorObserver: Send + Sync + 'static {
    /// One event happened.
    fn observe(&self, event: &SupervisorEvent);
}

impl<F> SupervisorObserver for F
where
    F: Fn(&SupervisorEvent) + Send + Sync + 'static,
{
    fn observe(&self, event: &SupervisorEvent) {
        self(event)
    }
}

impl SupervisorObserver for tokio::sync::mpsc::UnboundedSender<SupervisorEvent> {
    fn observe(&self, event: &SupervisorEvent) {
        // A closed receiver means nobody listens any more; the tree goes on.
        let _ = self.send(event.clone());
    }
}
