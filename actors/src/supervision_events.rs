//! Supervisor events as audit-trail events.
//!
//! The supervision crate knows nothing of hale's event vocabulary (it is
//! reusable without agents), yet every restart, crash and give-up belongs
//! in the audit trail next to the tool failures that caused it. This
//! module is the bridge: [`observer`] turns a sink into a
//! `SupervisorObserver` that every supervisor of hale's tree is built with.

use std::sync::Arc;

use hale_supervision::{Decision, SupervisorEvent, SupervisorEventKind, SupervisorObserver};
use jiff::Timestamp;
use serde_json::json;

use crate::event::{Event, EventKind, EventSink, Level};

/// The audit event for one supervisor event. The source is the child's
/// path (`hale/mcp/weather`), or the supervisor's for its own events.
pub fn to_event(event: &SupervisorEvent) -> Event {
    let source = match &event.child {
        Some(child) => format!("{}/{}", event.supervisor, child.as_str()),
        None => event.supervisor.to_string(),
    };
    let (level, kind, message, data) = match &event.kind {
        SupervisorEventKind::ChildStarted { restarts, .. } => (
            Level::Info,
            if *restarts == 0 {
                EventKind::ChildStarted
            } else {
                EventKind::ChildRestarted
            },
            if *restarts == 0 {
                "started".to_owned()
            } else {
                format!("restarted (restart {restarts})")
            },
            json!({ "restarts": restarts }),
        ),
        SupervisorEventKind::ChildExited { reason, decision } => (
            if reason.is_abnormal() {
                Level::Error
            } else {
                Level::Info
            },
            EventKind::ChildExited,
            format!("exited ({reason}); {}", decision_name(*decision)),
            json!({ "reason": reason.to_string(), "decision": decision_name(*decision) }),
        ),
        SupervisorEventKind::RestartScheduled { attempt, delay } => (
            Level::Warning,
            EventKind::Retry,
            format!(
                "restart in {} ms (backoff attempt {attempt})",
                delay.as_millis()
            ),
            json!({
                "attempt": attempt,
                "delay_ms": u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            }),
        ),
        SupervisorEventKind::ChildStartFailed { error } => (
            Level::Error,
            EventKind::ChildStartFailed,
            format!("failed to start: {error}"),
            json!({ "error": error }),
        ),
        SupervisorEventKind::ChildTerminated {
            killed_after_timeout,
        } => (
            if *killed_after_timeout {
                Level::Warning
            } else {
                Level::Info
            },
            EventKind::ChildExited,
            if *killed_after_timeout {
                "shut down (killed after its graceful timeout)".to_owned()
            } else {
                "shut down".to_owned()
            },
            json!({ "reason": "shutdown", "killed_after_timeout": killed_after_timeout }),
        ),
        SupervisorEventKind::ChildParked {
            reason,
            probe_after,
        } => (
            Level::Error,
            EventKind::ChildParked,
            format!(
                "parked after repeated failures (last: {reason}); probe in {} ms",
                probe_after.as_millis()
            ),
            json!({
                "reason": reason.to_string(),
                "probe_after_ms": u64::try_from(probe_after.as_millis()).unwrap_or(u64::MAX),
            }),
        ),
        SupervisorEventKind::ChildProbed => (
            Level::Info,
            EventKind::ChildRestarted,
            "probing a parked child".to_owned(),
            json!({ "probe": true }),
        ),
        SupervisorEventKind::GaveUp {
            max_restarts,
            period,
        } => (
            Level::Critical,
            EventKind::SupervisorGaveUp,
            format!(
                "more than {max_restarts} restarts in {} ms: gave up, its parent decides",
                period.as_millis()
            ),
            json!({
                "max_restarts": max_restarts,
                "period_ms": u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            }),
        ),
    };
    let mut out = Event::new(level, source, kind, message).with_data(data);
    if let Ok(at) = Timestamp::try_from(event.at) {
        out = out.with_timestamp(at);
    }
    out
}

fn decision_name(decision: Decision) -> &'static str {
    match decision {
        Decision::Restart => "restart",
        Decision::LeaveStopped => "left stopped",
        Decision::Remove => "removed",
    }
}

/// A supervisor observer that records every supervisor event in `sink`.
pub fn observer(sink: Arc<dyn EventSink>) -> Arc<dyn SupervisorObserver> {
    Arc::new(move |event: &SupervisorEvent| sink.emit(to_event(event)))
}
