//! A circuit breaker per endpoint: stop calling what keeps failing.
//!
//! Retries and budgets decide how hard to push on an endpoint that fails
//! now and then. An endpoint that is plainly down (a crashed MCP server, a
//! model provider in an outage) needs the opposite: no calls at all for a
//! while, so sessions fail in microseconds instead of each waiting out its
//! own timeout, fallbacks take over at once, and the endpoint gets room to
//! recover. After `failures` consecutive failures the breaker opens and
//! refuses calls; after `cool_down` it lets exactly one probe through
//! (half-open). The probe's result decides: success closes the breaker,
//! failure opens it for another `cool_down`.
//!
//! Only one probe at a time, because the point of half-open is to test the
//! endpoint with one call, not to release the whole queue onto it. A probe
//! whose result never arrives (its caller was cancelled) would keep the
//! breaker half-open forever, so a probe outstanding for a full `cool_down`
//! is presumed lost and the next caller becomes the probe.
//!
//! The breaker is a plain value with no clock: the endpoint's actor owns
//! it, hands it `now`, and emits an event for each [`Transition`] it
//! returns.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::catalog::ErrorCode;
use crate::outcome::ToolOutcome;

/// The breaker's state, as reported in events and status pages (and
/// journaled in a call's route: `closed`, `open`, `half_open`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow; consecutive failures are counted.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// One probe call is (or may be) in flight; others are refused.
    HalfOpen,
}

/// A change of [`BreakerState`], for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; report the result with `on_success` or `on_failure`.
    Allowed,
    /// Go ahead as the one probe of a half-open breaker; its result decides
    /// whether the breaker closes.
    Probe,
    /// Do not call; the breaker may admit a call again in `retry_in`.
    Rejected {
        /// When to ask again (never zero).
        retry_in: Duration,
    },
}

/// Settings that cannot make a breaker; each variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerError {
    /// `failures` is zero: the breaker would open before any call failed.
    #[error("failures must be at least 1")]
    Failures,
    /// `cool_down` is zero: an open breaker would not refuse anything.
    #[error("cool_down must be non-zero")]
    CoolDown,
}

impl BreakerError {
    /// The name of the offending setting.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Failures => "failures",
            Self::CoolDown => "cool_down",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    /// `counted_at` is when the last counted failure was reported.
    Closed {
        consecutive: u32,
        counted_at: Option<Instant>,
    },
    Open {
        since: Instant,
    },
    HalfOpen {
        probe_since: Instant,
    },
}

impl Inner {
    fn state(self) -> BreakerState {
        match self {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// A consecutive-failure circuit breaker. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreaker {
    failures: u32,
    cool_down: Duration,
    inner: Inner,
}

impl CircuitBreaker {
    /// A closed breaker that opens after `failures` consecutive failures and
    /// stays open for `cool_down` before probing.
    ///
    /// # Errors
    /// [`BreakerError`] when either setting is zero.
    pub fn new(failures: u32, cool_down: Duration) -> Result<Self, BreakerError> {
        if failures == 0 {
            return Err(BreakerError::Failures);
        }
        if cool_down.is_zero() {
            return Err(BreakerError::CoolDown);
        }
        Ok(Self {
            failures,
            cool_down,
            inner: Inner::Closed {
                consecutive: 0,
                counted_at: None,
            },
        })
    }

    /// Consecutive failures that open the breaker.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How long the breaker stays open before probing.
    pub fn cool_down(&self) -> Duration {
        self.cool_down
    }

    /// The current state. An open breaker whose cool-down has ended still
    /// reads `Open` until a call asks to be admitted.
    pub fn state(&self) -> BreakerState {
        self.inner.state()
    }

    /// Consecutive failures counted while closed (0 in other states).
    pub fn consecutive_failures(&self) -> u32 {
        match self.inner {
            Inner::Closed { consecutive, .. } => consecutive,
            Inner::Open { .. } | Inner::HalfOpen { .. } => 0,
        }
    }

    /// Asks to make one call at `now`. A `Probe` admission also moves the
    /// breaker from open to half-open, reported as the transition.
    #[must_use = "a rejected call must not be made"]
    pub fn allow(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        match self.inner {
            Inner::Closed { .. } => (Admission::Allowed, None),
            Inner::Open { since } => match self.wait_from(since, now) {
                Some(retry_in) => (Admission::Rejected { retry_in }, None),
                None => {
                    let transition = self.go(Inner::HalfOpen { probe_since: now });
                    (Admission::Probe, transition)
                }
            },
            Inner::HalfOpen { probe_since } => match self.wait_from(probe_since, now) {
                Some(retry_in) => (Admission::Rejected { retry_in }, None),
                None => {
                    // The probe is presumed lost: this caller replaces it.
                    self.inner = Inner::HalfOpen { probe_since: now };
                    (Admission::Probe, None)
                }
            },
        }
    }

    /// Reports that an admitted call succeeded.
    ///
    /// Closes a half-open breaker. A success reported while open came from
    /// a call admitted before the breaker opened; it says nothing about the
    /// endpoint now, so the breaker stays open.
    pub fn on_success(&mut self, _now: Instant) -> Option<Transition> {
        match self.inner {
            Inner::Closed { .. } | Inner::HalfOpen { .. } => self.go(Inner::Closed {
                consecutive: 0,
                counted_at: None,
            }),
            Inner::Open { .. } => None,
        }
    }

    /// Reports that an admitted call failed in a way that counts against
    /// the endpoint (the caller decides which outcomes do; a tool's own
    /// `INVALID_INPUT` should not open the breaker of a healthy server).
    ///
    /// Opens a closed breaker at the `failures`-th consecutive failure, and
    /// re-opens a half-open one for a fresh cool-down. A failure reported
    /// while already open is a straggler and does not extend the cool-down,
    /// or late reports could keep an endpoint locked out indefinitely.
    pub fn on_failure(&mut self, now: Instant) -> Option<Transition> {
        self.on_failure_of_call(now, now)
    }

    /// Reports that an admitted call that started at `started` failed.
    ///
    /// A call that started before the last counted failure was in flight
    /// when the endpoint failed: it is part of the same outage, not more
    /// evidence of it. So a server crash that fails twenty calls at once
    /// counts once, and a restart that takes a moment does not open the
    /// breaker; a server that keeps failing new calls still opens it
    /// after `failures` of them.
    pub fn on_failure_of_call(&mut self, started: Instant, now: Instant) -> Option<Transition> {
        match self.inner {
            Inner::Closed {
                counted_at: Some(last),
                ..
            } if started < last => None,
            Inner::Closed { consecutive, .. } => {
                let consecutive = consecutive.saturating_add(1);
                if consecutive >= self.failures {
                    self.go(Inner::Open { since: now })
                } else {
                    self.inner = Inner::Closed {
                        consecutive,
                        counted_at: Some(now),
                    };
                    None
                }
            }
            Inner::HalfOpen { .. } => self.go(Inner::Open { since: now }),
            Inner::Open { .. } => None,
        }
    }

    /// Opens the breaker now, whatever its state, for a full cool-down: an
    /// operator taking an endpoint out of rotation, or a caller that knows
    /// it is down (its process is gone) before enough calls have failed.
    pub fn trip(&mut self, now: Instant) -> Option<Transition> {
        self.go(Inner::Open { since: now })
    }

    /// The time left of a cool-down that started at `since`, or `None` once
    /// it is over.
    fn wait_from(&self, since: Instant, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(since);
        let left = self.cool_down.saturating_sub(elapsed);
        (!left.is_zero()).then_some(left)
    }

    fn go(&mut self, to: Inner) -> Option<Transition> {
        let from = self.inner.state();
        self.inner = to;
        (from != to.state()).then_some(Transition {
            from,
            to: to.state(),
        })
    }
}

/// Whether an outcome says the endpoint itself is unhealthy, and so counts
/// towards opening its breaker.
///
/// Only failures of the endpoint count: it could not be reached, did not
/// answer in time, closed the transport, said it is overloaded or broke
/// internally. A failure that is the caller's own (bad arguments, a
/// missing file, a permission refused, a policy block) proves the endpoint
/// answered, so it counts as a success: a model that keeps sending bad
/// arguments must not lock every other session out of a healthy server.
pub fn counts_against_endpoint(outcome: &ToolOutcome) -> bool {
    if outcome.is_delivered() {
        // The tool ran and its own work failed (a command's exit code):
        // the endpoint did its job.
        return false;
    }
    if outcome.status == crate::outcome::Status::Timeout {
        return true;
    }
    matches!(
        outcome.code,
        Some(
            ErrorCode::ConnectionRefused
                | ErrorCode::Etimedout
                | ErrorCode::ServiceUnavailable
                | ErrorCode::RateLimited
                | ErrorCode::McpServerUnreachable
                | ErrorCode::TransportClosed
                | ErrorCode::Interrupted
                | ErrorCode::Internal
        )
    )
}

/// The outcome a caller returns instead of calling `endpoint` while its
/// breaker refuses: `MCP_SERVER_UNREACHABLE`, retryable and recoverable,
/// with `retry_after` set to `retry_in`.
///
/// The call never left hale, so the outcome is marked
/// [`undelivered`](ToolOutcome::undelivered) and recovery treats it as
/// [`Phase::BeforeEffect`](super::Phase::BeforeEffect).
pub fn rejected_outcome(endpoint: &str, retry_in: Duration) -> ToolOutcome {
    let millis = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX);
    let mut outcome = ToolOutcome::from_code(
        ErrorCode::McpServerUnreachable,
        format!(
            "circuit breaker for `{endpoint}` is open after repeated failures; \
             the call was not made; try again in {millis} ms or use a fallback"
        ),
    )
    .with_retry_after(retry_in)
    .with_data(json!({ "endpoint": endpoint, "breaker": "open" }))
    .undelivered();
    // Stated, not inherited from the catalog: whatever the catalog says
    // about unreachable servers in general, a refusal by our own breaker is
    // always worth retrying later and always routable around.
    outcome.retryable = true;
    outcome.recoverable = true;
    outcome
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const COOL: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn open_breaker(t0: Instant) -> CircuitBreaker {
        let mut b = CircuitBreaker::new(3, COOL).unwrap();
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(
            b.on_failure(t0),
            Some(Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open
            })
        );
        b
    }

    #[test]
    fn opens_after_n_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(3, COOL).unwrap();
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.consecutive_failures(), 2);
        // A success in between resets the count.
        assert_eq!(b.on_success(t0), None);
        assert_eq!(b.consecutive_failures(), 0);
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.allow(t0), (Admission::Allowed, None));
        assert!(b.on_failure(t0).is_some());
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn open_rejects_with_the_time_left() {
        let t0 = Instant::now();
        let mut b = open_breaker(t0);
        assert_eq!(
            b.allow(t0 + ms(4000)),
            (Admission::Rejected { retry_in: ms(6000) }, None)
        );
        assert_eq!(
            b.allow(t0 + COOL - ms(1)),
            (Admission::Rejected { retry_in: ms(1) }, None)
        );
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn after_cool_down_exactly_one_probe_is_admitted() {
        let t0 = Instant::now();
        let mut b = open_breaker(t0);
        let (admission, transition) = b.allow(t0 + COOL);
        assert_eq!(admission, Admission::Probe);
        assert_eq!(
            transition,
            Some(Transition {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen
            })
        );
        for later in [ms(0), ms(1), ms(5000)] {
            assert!(matches!(
                b.allow(t0 + COOL + later),
                (Admission::Rejected { .. }, None)
            ));
        }
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn probe_success_closes() {
        let t0 = Instant::now();
        let mut b = open_breaker(t0);
        let _ = b.allow(t0 + COOL);
        assert_eq!(
            b.on_success(t0 + COOL + ms(20)),
            Some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Closed
            })
        );
        assert_eq!(b.allow(t0 + COOL + ms(21)), (Admission::Allowed, None));
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn probe_failure_reopens_and_restarts_the_cool_down() {
        let t0 = Instant::now();
        let mut b = open_breaker(t0);
        let _ = b.allow(t0 + COOL);
        let failed_at = t0 + COOL + ms(500);
        assert_eq!(
            b.on_failure(failed_at),
            Some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Open
            })
        );
        assert_eq!(
            b.allow(failed_at + ms(1)),
            (
                Admission::Rejected {
                    retry_in: COOL - ms(1)
                },
                None
            )
        );
        assert_eq!(b.allow(failed_at + COOL).0, Admission::Probe);
    }

    #[test]
    fn a_lost_probe_is_replaced_after_a_cool_down() {
        let t0 = Instant::now();
        let mut b = open_breaker(t0);
        let probe_at = t0 + COOL;
        let _ = b.allow(probe_at);
        assert_eq!(
            b.allow(probe_at + ms(2500)),
            (Admission::Rejected { retry_in: ms(7500) }, None)
        );
        assert_eq!(b.allow(probe_at + COOL), (Admission::Probe, None));
        assert!(matches!(
            b.allow(probe_at + COOL),
            (Admission::Rejected { .. }, None)
        ));
    }

    #[test]
    fn stragglers_while_open_change_nothing() {
        let t0 = Instant::now();
        let mut b = open_breaker(t0);
        assert_eq!(b.on_success(t0 + ms(10)), None);
        assert_eq!(b.on_failure(t0 + ms(9000)), None);
        assert_eq!(b.state(), BreakerState::Open);
        // The late failure did not push the probe out.
        assert_eq!(b.allow(t0 + COOL).0, Admission::Probe);
    }

    #[test]
    fn rejects_zero_settings_by_name() {
        assert_eq!(
            CircuitBreaker::new(0, COOL).unwrap_err().field(),
            "failures"
        );
        assert_eq!(
            CircuitBreaker::new(1, Duration::ZERO).unwrap_err().field(),
            "cool_down"
        );
        let one = CircuitBreaker::new(1, COOL).unwrap();
        assert_eq!(one.failures(), 1);
        assert_eq!(one.cool_down(), COOL);
    }

    #[test]
    fn rejected_outcome_is_retryable_unreachable_with_retry_after() {
        let o = rejected_outcome("github", ms(4200));
        assert_eq!(o.code, Some(ErrorCode::McpServerUnreachable));
        assert!(o.is_failure());
        assert!(o.retryable && o.recoverable);
        assert_eq!(o.retry_after, Some(ms(4200)));
        assert!(o.message.contains("circuit breaker"), "{}", o.message);
        assert!(o.message.contains("github"));
        assert!(o.message.contains("4200 ms"));
        assert_eq!(o.data["breaker"], "open");
    }

    #[test]
    fn calls_in_flight_when_an_endpoint_fails_count_as_one_failure() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(3, COOL).unwrap();
        // Twenty calls start, the server crashes, all twenty fail.
        for _ in 0..20 {
            assert_eq!(b.on_failure_of_call(t0, t0 + ms(10)), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 1);
        // Calls started after that failure, failing too, are new evidence.
        assert_eq!(b.on_failure_of_call(t0 + ms(11), t0 + ms(20)), None);
        assert_eq!(b.consecutive_failures(), 2);
        assert!(b.on_failure_of_call(t0 + ms(21), t0 + ms(30)).is_some());
        assert_eq!(b.state(), BreakerState::Open);
    }
}
