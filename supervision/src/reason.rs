//! Typed exit reasons and the restart decision.
//!
//! ractor reports an exit as a boxed error or an optional string. Those are
//! converted here, once, into an [`ExitReason`]; everything after this edge
//! matches on types. The restart decision is then OTP's table over restart
//! type x exit reason (`do_restart/3`), a pure function the supervisor only
//! carries out.

use std::fmt;

use ractor::ActorCell;
use ractor::SupervisionEvent;

use crate::spec::Restart;

/// The stop reason a supervisor gives a child it shuts down.
pub const SHUTDOWN_REASON: &str = "shutdown";
/// The stop reason of a supervisor that gave up (OTP's `{shutdown, reached_max_restart_intensity}`).
pub const GAVE_UP_REASON: &str = "shutdown:reached_max_restart_intensity";
const KILLED: &str = "killed";
const TASK_CANCELLED: &str = "actor_task_cancelled";

/// Why a child exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// A graceful stop without a reason (`stop(None)`), or with reason `normal`.
    Normal,
    /// A graceful stop with some other reason; normal for restart purposes.
    Stopped(String),
    /// Shut down by its supervisor (`shutdown`, or `shutdown:<detail>`), which
    /// includes a supervisor giving up after too many restarts.
    Shutdown(Option<String>),
    /// Killed (`kill()`), or its task was cancelled: abnormal.
    Killed,
    /// Its handler returned an error or panicked: abnormal.
    Failed(String),
}

impl ExitReason {
    /// Killed and failed exits are abnormal; the others are normal (OTP's
    /// `normal`, `shutdown` and `{shutdown, _}`).
    pub fn is_abnormal(&self) -> bool {
        matches!(self, Self::Killed | Self::Failed(_))
    }

    /// Converts ractor's optional stop reason.
    pub fn from_stop_reason(reason: Option<&str>) -> Self {
        match reason {
            None | Some("normal") => Self::Normal,
            Some(KILLED) | Some(TASK_CANCELLED) => Self::Killed,
            Some(SHUTDOWN_REASON) => Self::Shutdown(None),
            Some(other) => match other.strip_prefix("shutdown:") {
                Some(detail) => Self::Shutdown(Some(detail.to_owned())),
                None => Self::Stopped(other.to_owned()),
            },
        }
    }

    /// The child and its exit reason, if the event is an exit.
    pub fn from_event(event: &SupervisionEvent) -> Option<(&ActorCell, Self)> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                Some((cell, Self::from_stop_reason(reason.as_deref())))
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                Some((cell, Self::Failed(error.to_string())))
            }
            _ => None,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Normal => f.write_str("normal"),
            Self::Stopped(reason) => write!(f, "stopped: {reason}"),
            Self::Shutdown(None) => f.write_str("shutdown"),
            Self::Shutdown(Some(detail)) => write!(f, "shutdown: {detail}"),
            Self::Killed => f.write_str("killed"),
            Self::Failed(error) => write!(f, "failed: {error}"),
        }
    }
}

/// What the supervisor does with a child that exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again (subject to intensity, strategy and backoff).
    Restart,
    /// Keep its spec, leave it stopped.
    LeaveStopped,
    /// Forget it (temporary children).
    Remove,
}

/// OTP's restart table: permanent always, transient after an abnormal exit,
/// temporary never (and removed).
pub fn decide(restart: Restart, reason: &ExitReason) -> Decision {
    match restart {
        Restart::Permanent => Decision::Restart,
        Restart::Transient if reason.is_abnormal() => Decision::Restart,
        Restart::Transient => Decision::LeaveStopped,
        Restart::Temporary => Decision::Remove,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_map_to_types() {
        assert_eq!(ExitReason::from_stop_reason(None), ExitReason::Normal);
        assert_eq!(
            ExitReason::from_stop_reason(Some("killed")),
            ExitReason::Killed
        );
        assert_eq!(
            ExitReason::from_stop_reason(Some("actor_task_cancelled")),
            ExitReason::Killed
        );
        assert_eq!(
            ExitReason::from_stop_reason(Some("shutdown")),
            ExitReason::Shutdown(None)
        );
        assert_eq!(
            ExitReason::from_stop_reason(Some(GAVE_UP_REASON)),
            ExitReason::Shutdown(Some("reached_max_restart_intensity".into()))
        );
        assert_eq!(
            ExitReason::from_stop_reason(Some("done")),
            ExitReason::Stopped("done".into())
        );
    }

    #[test]
    fn restart_table() {
        let abnormal = [ExitReason::Killed, ExitReason::Failed("x".into())];
        let normal = [
            ExitReason::Normal,
            ExitReason::Stopped("x".into()),
            ExitReason::Shutdown(None),
        ];
        for r in &abnormal {
            assert_eq!(decide(Restart::Permanent, r), Decision::Restart);
            assert_eq!(decide(Restart::Transient, r), Decision::Restart);
            assert_eq!(decide(Restart::Temporary, r), Decision::Remove);
        }
        for r in &normal {
            assert_eq!(decide(Restart::Permanent, r), Decision::Restart);
            assert_eq!(decide(Restart::Transient, r), Decision::LeaveStopped);
            assert_eq!(decide(Restart::Temporary, r), Decision::Remove);
        }
    }
}
