//! Whether a failed call may be issued again, and what to do next.
//!
//! "Retryable" says that repeating a call *could* help; it does not say that
//! repeating it is *safe*. A `write_file` that timed out may have written; a
//! payment call whose connection dropped may have paid. Issuing either again
//! risks doing the effect twice, which for an agent acting on someone's
//! behalf is worse than reporting the failure. So before anything is
//! re-issued, to the same target or to a fallback, two facts are combined:
//!
//! - **the phase**: did the failure happen before the effect could start
//!   ([`Phase::BeforeEffect`]: the connection was refused, the peer said
//!   "too many requests", hale's own breaker refused the call) or might the
//!   call have begun ([`Phase::MayHaveStarted`]: everything else)?
//! - **idempotency**: does running the tool twice have the same effect as
//!   running it once?
//!
//! A call may be re-issued when either is on its side; a non-idempotent call
//! that may have started never is. The decision is a pure table,
//! [`next_step`], that the actors only carry out, so every row is a unit
//! test rather than a branch buried in an I/O loop.

use std::time::Duration;

use crate::catalog::ErrorCode;
use crate::outcome::{Severity, Status, ToolOutcome};
use crate::recovery::retry::RetryPolicy;

/// How far a failed call got before it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The failure happened before the tool's effect could start, so
    /// nothing was done and re-issuing cannot do anything twice.
    BeforeEffect,
    /// The call may have started its effect (or finished it) before the
    /// failure; only an idempotent tool may be re-issued.
    MayHaveStarted,
}

/// The phase the outcome alone proves.
///
/// Only `CONNECTION_REFUSED` and `RATE_LIMITED` prove that nothing ran: the
/// peer refused before accepting the request. Everything else, including
/// timeouts, `TRANSPORT_CLOSED` and `INTERRUPTED`, may have started, unless
/// hale marked the outcome [`undelivered`](ToolOutcome::undelivered): an
/// `MCP_SERVER_UNREACHABLE` from hale's own open breaker, or from a server
/// that was not running, never reached the server. An outcome marked
/// [`delivered`](ToolOutcome::delivered) may have started whatever its
/// code says.
pub fn classify_phase(outcome: &ToolOutcome) -> Phase {
    if outcome.is_undelivered() {
        return Phase::BeforeEffect;
    }
    if outcome.is_delivered() {
        return Phase::MayHaveStarted;
    }
    match outcome.code {
        Some(ErrorCode::ConnectionRefused | ErrorCode::RateLimited) => Phase::BeforeEffect,
        _ => Phase::MayHaveStarted,
    }
}

/// Whether the call that produced `outcome` may be issued again, to the
/// same target or another.
///
/// Only failures are re-issued: a success has nothing to repeat, and a
/// partial outcome proves the effect started, whatever `phase` says, so it
/// may be re-issued only when the tool is idempotent.
pub fn may_reissue(outcome: &ToolOutcome, idempotent: bool, phase: Phase) -> bool {
    match outcome.status {
        Status::Success => false,
        Status::Partial => idempotent,
        Status::Error | Status::Timeout | Status::Blocked => {
            idempotent || phase == Phase::BeforeEffect
        }
    }
}

/// What recovery does after an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The outcome is not a failure (success or partial): hand it back.
    Done,
    /// Re-issue the same call to the same target after `delay`.
    Retry {
        /// How long to wait first.
        delay: Duration,
    },
    /// Issue the call to the next target of the fallback chain.
    Fallback,
    /// Stop and ask a human.
    Escalate,
    /// Stop and hand the failure back to the agent as it is.
    GiveUp,
}

/// What [`next_step`] needs to know about the call besides its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallState {
    /// Attempts made against the current target so far, the failed one
    /// included (so at least 1).
    pub attempts: u32,
    /// The tool is idempotent.
    pub idempotent: bool,
    /// How far the failed attempt got; usually [`classify_phase`] of the
    /// outcome, or [`Phase::BeforeEffect`] when the caller knows the call
    /// never left hale.
    pub phase: Phase,
    /// The fallback chain has a target after the current one.
    pub fallback_available: bool,
}

/// The recovery decision for `outcome`, first matching row wins:
///
/// | row | condition                                               | result     |
/// |-----|---------------------------------------------------------|------------|
/// | 1   | success or partial                                      | `Done`     |
/// | 2   | severity critical, or status blocked                    | `Escalate` |
/// | 3   | retryable, may re-issue, attempts left                  | `Retry`    |
/// | 4   | recoverable, may re-issue, fallback available           | `Fallback` |
/// | 5   | anything else                                           | `GiveUp`   |
///
/// Escalation comes before retry: a critical failure (security, data loss,
/// policy) or a policy block must reach a human even when a lenient peer
/// marked it retryable, because retrying it automatically is exactly what
/// a human would need to approve.
///
/// `outcome.retryable` is read as given; the tool registry has already
/// re-read an `INTERRUPTED` outcome for the tool's idempotency
/// ([`ToolOutcome::for_idempotency`]). The retry delay is
/// [`RetryPolicy::delay`] for retry number `attempts - 1`, with the random
/// `unit`. The shared [`RetryBudget`](super::RetryBudget) and the
/// [`AttemptBudget`](super::AttemptBudget) are charged by the caller after
/// this decision, since only the caller knows which endpoint and call they
/// belong to.
pub fn next_step(outcome: &ToolOutcome, call: &CallState, policy: &RetryPolicy, unit: f64) -> Next {
    if !outcome.is_failure() {
        return Next::Done;
    }
    if outcome.severity == Severity::Critical || outcome.status == Status::Blocked {
        return Next::Escalate;
    }
    let reissue = may_reissue(outcome, call.idempotent, call.phase);
    if outcome.retryable && reissue && policy.attempts_left(call.attempts) {
        let retry = call.attempts.saturating_sub(1);
        return Next::Retry {
            delay: policy.delay(retry, outcome, unit),
        };
    }
    if outcome.recoverable && reissue && call.fallback_available {
        return Next::Fallback;
    }
    Next::GiveUp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::catalog::Classification;
    use crate::recovery::retry::RetryConfig;
    use serde_json::json;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::new(RetryConfig {
            max_attempts: 3,
            base: ms(100),
            max_delay: ms(1000),
            jitter: 0.0,
            max_retry_after: ms(5000),
        })
        .unwrap()
    }

    fn call(attempts: u32, idempotent: bool, phase: Phase, fallback: bool) -> CallState {
        CallState {
            attempts,
            idempotent,
            phase,
            fallback_available: fallback,
        }
    }

    fn code(code: ErrorCode) -> ToolOutcome {
        ToolOutcome::from_code(code, "x")
    }

    #[test]
    fn only_refused_and_rate_limited_prove_nothing_ran() {
        use ErrorCode as C;
        for c in ErrorCode::all() {
            let expected = if matches!(c, C::ConnectionRefused | C::RateLimited) {
                Phase::BeforeEffect
            } else {
                Phase::MayHaveStarted
            };
            assert_eq!(classify_phase(&code(c.clone())), expected, "{c}");
        }
        assert_eq!(
            classify_phase(&code(C::Other("X".into()))),
            Phase::MayHaveStarted
        );
        assert_eq!(
            classify_phase(&ToolOutcome::success(json!(1))),
            Phase::MayHaveStarted
        );
    }

    #[test]
    fn may_reissue_table() {
        use Phase::{BeforeEffect as B, MayHaveStarted as M};
        let timeout = ToolOutcome::timeout("slow");
        let partial = ToolOutcome::partial(json!(1), "half");
        let success = ToolOutcome::success(json!(1));
        // (outcome, idempotent, phase, expected)
        let rows = [
            (&timeout, false, B, true),
            (&timeout, false, M, false),
            (&timeout, true, B, true),
            (&timeout, true, M, true),
            (&partial, false, B, false),
            (&partial, true, M, true),
            (&success, true, B, false),
        ];
        for (outcome, idempotent, phase, expected) in rows {
            assert_eq!(
                may_reissue(outcome, idempotent, phase),
                expected,
                "{:?} idempotent={idempotent} {phase:?}",
                outcome.status
            );
        }
    }

    #[test]
    fn row_1_success_and_partial_are_done() {
        let c = call(1, true, Phase::BeforeEffect, true);
        let ok = ToolOutcome::success(json!(1));
        assert_eq!(next_step(&ok, &c, &policy(), 0.0), Next::Done);
        // Even a partial outcome marked retryable is handed back, not re-run.
        let mut partial = ToolOutcome::partial(json!(1), "half");
        partial.retryable = true;
        assert_eq!(next_step(&partial, &c, &policy(), 0.0), Next::Done);
    }

    #[test]
    fn row_2_critical_or_blocked_escalates_even_if_marked_retryable() {
        let c = call(1, true, Phase::BeforeEffect, true);
        let denied = code(ErrorCode::PermissionDenied);
        assert_eq!(next_step(&denied, &c, &policy(), 0.0), Next::Escalate);
        let lenient_critical = code(ErrorCode::ConnectionRefused).with_severity(Severity::Critical);
        assert!(lenient_critical.retryable);
        assert_eq!(
            next_step(&lenient_critical, &c, &policy(), 0.0),
            Next::Escalate
        );
        // A block a peer mislabelled as a mere warning is still a block.
        let block = ToolOutcome::blocked("no").with_classification(Classification::new(
            true,
            true,
            Severity::Warning,
        ));
        assert_eq!(next_step(&block, &c, &policy(), 0.0), Next::Escalate);
    }

    #[test]
    fn row_3_retry_when_retryable_safe_and_attempts_left() {
        let refused = code(ErrorCode::ConnectionRefused);
        let c = call(2, false, classify_phase(&refused), true);
        // Second retry: base * 2^1.
        assert_eq!(
            next_step(&refused, &c, &policy(), 0.0),
            Next::Retry { delay: ms(200) }
        );
        // The peer's Retry-After sets the delay.
        let limited = code(ErrorCode::RateLimited).with_retry_after(ms(1500));
        let c = call(1, false, classify_phase(&limited), false);
        assert_eq!(
            next_step(&limited, &c, &policy(), 0.0),
            Next::Retry { delay: ms(1500) }
        );
        // Idempotency makes a may-have-started timeout safe to retry.
        let timeout = ToolOutcome::timeout("slow");
        let c = call(1, true, Phase::MayHaveStarted, false);
        assert_eq!(
            next_step(&timeout, &c, &policy(), 0.0),
            Next::Retry { delay: ms(100) }
        );
    }

    #[test]
    fn row_4_fallback_when_retry_is_not_possible_but_recovery_is() {
        let refused = code(ErrorCode::ConnectionRefused);
        // Attempts spent on this target: move on.
        let spent = call(3, false, Phase::BeforeEffect, true);
        assert_eq!(next_step(&refused, &spent, &policy(), 0.0), Next::Fallback);
        // Not retryable but recoverable, and safe because idempotent.
        let missing = code(ErrorCode::NotFound);
        let c = call(1, true, Phase::MayHaveStarted, true);
        assert_eq!(next_step(&missing, &c, &policy(), 0.0), Next::Fallback);
        // The caller knows its own breaker refused: safe even if not idempotent.
        let unreachable = code(ErrorCode::McpServerUnreachable);
        let c = call(3, false, Phase::BeforeEffect, true);
        assert_eq!(next_step(&unreachable, &c, &policy(), 0.0), Next::Fallback);
    }

    #[test]
    fn row_5_give_up_otherwise() {
        // A non-idempotent call that may have started is never re-run,
        // neither retried nor sent to a fallback.
        let timeout = ToolOutcome::timeout("slow");
        let c = call(1, false, Phase::MayHaveStarted, true);
        assert_eq!(next_step(&timeout, &c, &policy(), 0.0), Next::GiveUp);
        let closed = code(ErrorCode::TransportClosed);
        assert_eq!(next_step(&closed, &c, &policy(), 0.0), Next::GiveUp);
        // Attempts spent and no fallback.
        let refused = code(ErrorCode::ConnectionRefused);
        let c = call(3, false, Phase::BeforeEffect, false);
        assert_eq!(next_step(&refused, &c, &policy(), 0.0), Next::GiveUp);
        // Neither retryable nor recoverable.
        let internal = code(ErrorCode::Internal);
        let c = call(1, true, Phase::BeforeEffect, true);
        assert_eq!(next_step(&internal, &c, &policy(), 0.0), Next::GiveUp);
        // Recoverable, safe, but no fallback to go to.
        let missing = code(ErrorCode::NotFound);
        let c = call(1, true, Phase::BeforeEffect, false);
        assert_eq!(next_step(&missing, &c, &policy(), 0.0), Next::GiveUp);
    }

    #[test]
    fn interrupted_follows_the_registry_reading_of_idempotency() {
        let c = call(1, true, Phase::MayHaveStarted, false);
        let idem = code(ErrorCode::Interrupted).for_idempotency(true);
        assert_eq!(
            next_step(&idem, &c, &policy(), 0.0),
            Next::Retry { delay: ms(100) }
        );
        let c = call(1, false, Phase::MayHaveStarted, true);
        let not_idem = code(ErrorCode::Interrupted).for_idempotency(false);
        assert_eq!(next_step(&not_idem, &c, &policy(), 0.0), Next::GiveUp);
    }
}
