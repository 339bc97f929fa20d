//! The recovery state of every endpoint, shared by every caller in the
//! process: breaker, in-flight cap, retry budget and the not-before
//! instant a peer asked for.
//!
//! Protection against an endpoint only works if every caller sees the same
//! picture of it: a breaker one session opened must refuse the next
//! session's call, and a `Retry-After` one session was told must hold off
//! every other session's request too, or the endpoint is asked again
//! inside the window it asked for. So this state lives here, keyed by
//! endpoint name, outside every actor and every session, and tools, MCP
//! servers and models all admit their attempts through it.
//!
//! Admission is a pure decision ([`admit`]) over the breaker, the
//! not-before instant and the in-flight count at a given `now`, so tests
//! drive it with a fake clock; [`EndpointHealth::admit`] applies it to the
//! shared state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant as StdInstant};

use dashmap::DashMap;
use tokio::time::Instant;

use crate::catalog::ErrorCode;
use crate::outcome::ToolOutcome;
use crate::recovery::{
    Admission, BreakerError, BreakerState, BudgetError, ChunkError, ChunkPolicy, CircuitBreaker,
    ConcurrencyCap, Permit, RetryBudget, RetryConfig, RetryPolicy, RetryPolicyError, Transition,
};

/// The earliest instant a peer allows the next request to start, from its
/// `Retry-After` (or `retry-after-ms`). A plain value: the caller passes
/// the clock in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotBefore {
    until: Option<StdInstant>,
}

impl NotBefore {
    /// The instant, if one was ever asked for (it may have passed).
    pub fn until(&self) -> Option<StdInstant> {
        self.until
    }

    /// A peer answering at `now` asked for `retry_after`, honoured up to
    /// `cap`. Returns the new instant when it moved later; a shorter,
    /// later request never moves it earlier (the peer's first word still
    /// holds, and a window must never shrink under a caller that waits
    /// for it).
    pub fn ask(
        &mut self,
        now: StdInstant,
        retry_after: Duration,
        cap: Duration,
    ) -> Option<StdInstant> {
        let wanted = now + retry_after.min(cap);
        if self.until.is_some_and(|until| until >= wanted) {
            return None;
        }
        self.until = Some(wanted);
        Some(wanted)
    }

    /// How long is left at `now`, or `None` when starting is allowed.
    pub fn wait(&self, now: StdInstant) -> Option<Duration> {
        let left = self.until?.saturating_duration_since(now);
        (!left.is_zero()).then_some(left)
    }
}

/// The pause a peer asked for with `outcome`, if it sets a not-before: a
/// `429` or `503` that came back from the endpoint (not one hale made up
/// without calling it) carrying `retry_after`.
pub fn asked_pause(outcome: &ToolOutcome) -> Option<Duration> {
    if outcome.is_undelivered() {
        return None;
    }
    match outcome.code {
        Some(ErrorCode::RateLimited | ErrorCode::ServiceUnavailable) => outcome.retry_after,
        _ => None,
    }
}

/// What [`admit`] decides for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Start the attempt (`probe`: it is the breaker's half-open probe).
    Go {
        /// The breaker admitted it as its probe.
        probe: bool,
    },
    /// The peer's not-before has not passed: no attempt may start for
    /// `left`.
    NotBefore {
        /// Time left until the instant.
        left: Duration,
    },
    /// The breaker is open: refused, next probe in `retry_in`.
    Breaker {
        /// Time left of the cool-down.
        retry_in: Duration,
    },
    /// `max` calls are already in flight.
    Full {
        /// The cap.
        max: usize,
    },
}

/// The admission rule, first matching row wins: a not-before in the
/// future refuses (before the breaker is asked, so a waiting caller never
/// uses up the half-open probe); then the breaker; then the in-flight cap.
/// The breaker is mutated (an open breaker past its cool-down admits one
/// probe and turns half-open, reported as the transition).
pub fn admit(
    breaker: &mut CircuitBreaker,
    not_before: &NotBefore,
    in_flight: usize,
    max_in_flight: usize,
    now: StdInstant,
) -> (Gate, Option<Transition>) {
    if let Some(left) = not_before.wait(now) {
        return (Gate::NotBefore { left }, None);
    }
    let (admission, transition) = breaker.allow(now);
    let probe = match admission {
        Admission::Rejected { retry_in } => return (Gate::Breaker { retry_in }, transition),
        Admission::Allowed => false,
        Admission::Probe => true,
    };
    if in_flight >= max_in_flight {
        return (Gate::Full { max: max_in_flight }, transition);
    }
    (Gate::Go { probe }, transition)
}

/// An attempt [`EndpointHealth::admit`] let through: holds its in-flight
/// slot until dropped.
#[derive(Debug)]
pub struct Admitted {
    /// The slot in the endpoint's in-flight cap.
    pub permit: Permit,
}

/// The breaker and the not-before, under one lock so one admission reads
/// both at the same instant.
#[derive(Debug)]
struct GateState {
    breaker: CircuitBreaker,
    not_before: NotBefore,
}

/// The dispatcher's settings, as plain numbers; [`Endpoints::new`]
/// validates them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DispatchConfig {
    /// Backoff and attempts per target.
    pub retry: RetryConfig,
    /// Attempts one logical call may make in all, across retries and
    /// fallbacks.
    pub attempts_per_call: u32,
    /// The longest one attempt may take before it is abandoned as a
    /// timeout (`[dispatch] attempt_timeout`). Tools have their own
    /// (tighter) timeouts; this is the backstop for a tool that forgot. A
    /// tool whose calls choose their own timeout ([`Tool::own_timeout`](crate::tool::Tool::own_timeout),
    /// `exec`) gets that plus [`OWN_TIMEOUT_GRACE`](crate::tool::OWN_TIMEOUT_GRACE) instead.
    pub attempt_timeout: Duration,
    /// Consecutive endpoint failures that open its breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before a probe.
    pub breaker_cool_down: Duration,
    /// The window of the shared retry budget.
    pub budget_ttl: Duration,
    /// Retries a second an endpoint allows with no traffic at all.
    pub budget_min_per_sec: u32,
    /// Retries allowed per original call in the window.
    pub budget_retry_ratio: f64,
    /// Calls in flight per endpoint.
    pub max_in_flight: usize,
    /// The size of each piece of a chunked read.
    pub chunk_bytes: u64,
    /// The most a chunked read assembles; beyond it the result is partial.
    pub chunk_max_total_bytes: u64,
}

impl Default for DispatchConfig {
    /// The recovery defaults: three attempts per target with the retry
    /// policy's default backoff, eight in all; a 2-minute backstop per
    /// attempt; breakers open after 5 consecutive failures for 10 s;
    /// retries limited to 20 % of the last 10 s of calls plus 5 a second;
    /// 64 calls in flight per endpoint; reads chunked at 64 KiB up to 16 MiB.
    fn default() -> Self {
        Self {
            retry: RetryConfig::default(),
            attempts_per_call: 8,
            attempt_timeout: Duration::from_secs(120),
            breaker_failures: 5,
            breaker_cool_down: Duration::from_secs(10),
            budget_ttl: Duration::from_secs(10),
            budget_min_per_sec: 5,
            budget_retry_ratio: 0.2,
            max_in_flight: 64,
            chunk_bytes: 64 * 1024,
            chunk_max_total_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A [`DispatchConfig`] that cannot be used; each variant names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DispatchConfigError {
    /// `attempts_per_call` is 0, so no call could ever be made.
    #[error("attempts_per_call must be at least 1")]
    AttemptsPerCall,
    /// `attempt_timeout` is zero.
    #[error("attempt_timeout must be greater than zero")]
    AttemptTimeout,
    /// The retry settings are invalid.
    #[error("retry: {0}")]
    Retry(#[from] RetryPolicyError),
    /// The breaker settings are invalid.
    #[error("breaker: {0}")]
    Breaker(#[from] BreakerError),
    /// The budget or cap settings are invalid.
    #[error("budget: {0}")]
    Budget(#[from] BudgetError),
    /// The chunking settings are invalid.
    #[error("chunk: {0}")]
    Chunk(#[from] ChunkError),
}

/// The validated settings, with fresh per-endpoint state cloned from
/// prototypes so that making one can never fail.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) retry: RetryPolicy,
    pub(crate) attempts_per_call: u32,
    pub(crate) attempt_timeout: Duration,
    pub(crate) chunk: ChunkPolicy,
    breaker: CircuitBreaker,
    budget: RetryBudget,
    cap: ConcurrencyCap,
}

/// The recovery state one endpoint shares across every caller and every
/// restart of the actors behind it.
#[derive(Debug)]
pub struct EndpointHealth {
    gate: Mutex<GateState>,
    pub(crate) budget: RetryBudget,
    cap: ConcurrencyCap,
}

impl EndpointHealth {
    /// The breaker's current state.
    pub fn breaker_state(&self) -> BreakerState {
        self.lock_gate().breaker.state()
    }

    /// The breaker's settings: the consecutive failures that open it and
    /// how long it stays open.
    pub fn breaker_settings(&self) -> (u32, Duration) {
        let state = self.lock_gate();
        (state.breaker.failures(), state.breaker.cool_down())
    }

    /// Opens the breaker now for a full cool-down (see
    /// [`CircuitBreaker::trip`]); calls fail fast or go to a fallback.
    pub fn force_open(&self) {
        self.lock_gate().breaker.trip(now().into_std());
    }

    /// Retries the shared budget would grant now.
    pub fn retries_available(&self) -> u64 {
        self.budget.remaining(now().into_std())
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.cap.in_flight()
    }

    /// The time left at `now` before the peer's not-before instant, if
    /// it has not passed.
    pub fn not_before_wait(&self, now: Instant) -> Option<Duration> {
        self.lock_gate().not_before.wait(now.into_std())
    }

    /// The peer's not-before instant, if one was ever set.
    pub fn not_before(&self) -> Option<Instant> {
        self.lock_gate().not_before.until().map(Instant::from_std)
    }

    /// Records that the peer, answering at `now`, asked for `retry_after`
    /// (honoured up to `cap`); the new instant when it moved later.
    pub fn hold_off(&self, now: Instant, retry_after: Duration, cap: Duration) -> Option<Instant> {
        self.lock_gate()
            .not_before
            .ask(now.into_std(), retry_after, cap)
            .map(Instant::from_std)
    }

    /// Asks to start one attempt at `now` (see [`admit`]); the in-flight
    /// slot is taken when it is let through.
    pub fn admit(&self, now: Instant) -> (Result<Admitted, Gate>, Option<Transition>) {
        let (gate, transition) = {
            let mut state = self.lock_gate();
            let GateState {
                breaker,
                not_before,
            } = &mut *state;
            admit(
                breaker,
                not_before,
                self.cap.in_flight(),
                self.cap.max(),
                now.into_std(),
            )
        };
        let admitted = match gate {
            Gate::Go { .. } => match self.cap.try_acquire() {
                Some(permit) => Ok(Admitted { permit }),
                // Another caller took the last slot since the count was read.
                None => Err(Gate::Full {
                    max: self.cap.max(),
                }),
            },
            refused => Err(refused),
        };
        (admitted, transition)
    }

    /// Reports how an admitted attempt that started at `started` ended at
    /// `ended`: `failed` when the outcome counts against the endpoint. A
    /// failure counts only for a call started after the last counted one
    /// (see [`CircuitBreaker::on_failure_of_call`]), so N calls failed by
    /// one crash count once.
    pub fn report(&self, started: Instant, ended: Instant, failed: bool) -> Option<Transition> {
        let mut state = self.lock_gate();
        if failed {
            state
                .breaker
                .on_failure_of_call(started.into_std(), ended.into_std())
        } else {
            state.breaker.on_success(ended.into_std())
        }
    }

    /// The cap on calls in flight.
    pub fn max_in_flight(&self) -> usize {
        self.cap.max()
    }

    fn lock_gate(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The state is a few plain fields updated in one step; a panic
        // elsewhere cannot leave it half-written.
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EndpointHealth {
    /// Whether forgetting this endpoint loses nothing that protects
    /// anyone: nobody holds it, nothing is in flight, and its breaker is
    /// closed with no failure counted. (Its retry budget's history goes;
    /// a fresh one starts from the same reserve as any new endpoint.)
    fn forgettable(self: &Arc<Self>) -> bool {
        if Arc::strong_count(self) > 1 || self.cap.in_flight() > 0 {
            return false;
        }
        let state = self.lock_gate();
        state.breaker.state() == BreakerState::Closed
            && state.breaker.consecutive_failures() == 0
            && state.not_before.wait(now().into_std()).is_none()
    }
}

/// How many endpoints the book holds before it forgets idle, healthy ones
/// (see [`EndpointHealth::forgettable`]). Endpoints are per site for
/// `web_fetch`, so an agent that visits many sites would otherwise grow
/// the book without end.
pub const ENDPOINTS_SWEEP_AT: usize = 1024;

/// Every endpoint's [`EndpointHealth`], created on first use.
#[derive(Debug)]
pub struct Endpoints {
    map: DashMap<String, Arc<EndpointHealth>>,
    settings: Settings,
    /// Breakers of endpoints configured apart from the shared settings.
    breakers: HashMap<String, CircuitBreaker>,
    /// The size at which the next sweep runs: [`ENDPOINTS_SWEEP_AT`], or
    /// twice what the last sweep kept, so sweeping stays amortised O(1)
    /// even when nothing can be forgotten.
    sweep_at: AtomicUsize,
}

impl Endpoints {
    /// An empty book whose endpoints use `config`.
    ///
    /// # Errors
    /// [`DispatchConfigError`] naming the first invalid setting.
    pub fn new(config: DispatchConfig) -> Result<Self, DispatchConfigError> {
        if config.attempts_per_call == 0 {
            return Err(DispatchConfigError::AttemptsPerCall);
        }
        if config.attempt_timeout.is_zero() {
            return Err(DispatchConfigError::AttemptTimeout);
        }
        let settings = Settings {
            retry: RetryPolicy::new(config.retry)?,
            attempts_per_call: config.attempts_per_call,
            attempt_timeout: config.attempt_timeout,
            chunk: ChunkPolicy::new(config.chunk_bytes, config.chunk_max_total_bytes)?,
            breaker: CircuitBreaker::new(config.breaker_failures, config.breaker_cool_down)?,
            budget: RetryBudget::new(
                config.budget_ttl,
                config.budget_min_per_sec,
                config.budget_retry_ratio,
            )?,
            cap: ConcurrencyCap::new(config.max_in_flight)?,
        };
        Ok(Self {
            map: DashMap::new(),
            settings,
            breakers: HashMap::new(),
            sweep_at: AtomicUsize::new(ENDPOINTS_SWEEP_AT),
        })
    }

    /// Gives `endpoint` its own breaker (`failures` in a row open it for
    /// `cool_down`) instead of the shared settings; `hale.toml`'s
    /// `[mcp.breaker]`.
    ///
    /// # Errors
    /// [`DispatchConfigError::Breaker`] when the settings are invalid.
    pub fn with_breaker(
        mut self,
        endpoint: impl Into<String>,
        failures: u32,
        cool_down: Duration,
    ) -> Result<Self, DispatchConfigError> {
        let endpoint = endpoint.into();
        let breaker = CircuitBreaker::new(failures, cool_down)?;
        // Not shared yet (`self` is owned), so an endpoint made already
        // can simply be made again.
        self.map.remove(&endpoint);
        self.breakers.insert(endpoint, breaker);
        Ok(self)
    }

    /// The state of `endpoint`, created if it is new.
    pub fn get(&self, endpoint: &str) -> Arc<EndpointHealth> {
        if let Some(health) = self.map.get(endpoint) {
            return health.clone();
        }
        if self.map.len() >= self.sweep_at.load(Ordering::Relaxed) {
            self.sweep();
        }
        self.map
            .entry(endpoint.to_owned())
            .or_insert_with(|| {
                let breaker = self
                    .breakers
                    .get(endpoint)
                    .unwrap_or(&self.settings.breaker)
                    .clone();
                Arc::new(EndpointHealth {
                    gate: Mutex::new(GateState {
                        breaker,
                        not_before: NotBefore::default(),
                    }),
                    budget: self.settings.budget.fresh(),
                    cap: self.settings.cap.fresh(),
                })
            })
            .clone()
    }

    /// Forgets the endpoints that hold nothing worth keeping (see
    /// [`EndpointHealth::forgettable`]); configured ones stay.
    fn sweep(&self) {
        self.map
            .retain(|name, health| self.breakers.contains_key(name) || !health.forgettable());
        let next = self.map.len().saturating_mul(2).max(ENDPOINTS_SWEEP_AT);
        self.sweep_at.store(next, Ordering::Relaxed);
    }

    /// How many endpoints the book holds now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the book holds no endpoint.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The state of `endpoint` if anything has called it.
    pub fn find(&self, endpoint: &str) -> Option<Arc<EndpointHealth>> {
        self.map.get(endpoint).map(|h| h.clone())
    }
}

/// The settings every endpoint of `endpoints` shares (the engine reads
/// them).
pub(crate) fn settings(endpoints: &Endpoints) -> &Settings {
    &endpoints.settings
}

fn now() -> Instant {
    // tokio's clock, so tests with paused time drive the breakers and
    // budgets too.
    Instant::now()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn not_before_holds_until_the_instant_and_never_moves_earlier() {
        let t0 = StdInstant::now();
        let mut nb = NotBefore::default();
        assert_eq!(nb.wait(t0), None);
        assert_eq!(nb.ask(t0, ms(2000), ms(60_000)), Some(t0 + ms(2000)));
        assert_eq!(nb.wait(t0 + ms(500)), Some(ms(1500)));
        // A later, shorter request does not shorten the window.
        assert_eq!(nb.ask(t0 + ms(100), ms(100), ms(60_000)), None);
        assert_eq!(nb.until(), Some(t0 + ms(2000)));
        assert_eq!(nb.wait(t0 + ms(1999)), Some(ms(1)));
        assert_eq!(nb.wait(t0 + ms(2000)), None);
        // A longer one extends it; the cap bounds it.
        assert_eq!(
            nb.ask(t0 + ms(1000), ms(9000), ms(3000)),
            Some(t0 + ms(4000))
        );
    }

    #[test]
    fn admission_checks_not_before_then_breaker_then_cap() {
        let t0 = StdInstant::now();
        let mut breaker = CircuitBreaker::new(1, ms(1000)).unwrap();
        let mut nb = NotBefore::default();
        assert_eq!(
            admit(&mut breaker, &nb, 0, 2, t0).0,
            Gate::Go { probe: false }
        );
        assert_eq!(admit(&mut breaker, &nb, 2, 2, t0).0, Gate::Full { max: 2 });
        nb.ask(t0, ms(500), ms(60_000));
        assert_eq!(
            admit(&mut breaker, &nb, 0, 2, t0 + ms(100)).0,
            Gate::NotBefore { left: ms(400) }
        );
        assert_eq!(
            admit(&mut breaker, &nb, 0, 2, t0 + ms(500)).0,
            Gate::Go { probe: false }
        );
        breaker.on_failure(t0 + ms(500));
        assert_eq!(
            admit(&mut breaker, &nb, 0, 2, t0 + ms(600)).0,
            Gate::Breaker { retry_in: ms(900) }
        );
        // A caller held by the not-before does not use up the probe.
        nb.ask(t0 + ms(600), ms(2000), ms(60_000));
        assert_eq!(
            admit(&mut breaker, &nb, 0, 2, t0 + ms(1600)).0,
            Gate::NotBefore { left: ms(1000) }
        );
        assert_eq!(breaker.state(), BreakerState::Open);
        let (gate, transition) = admit(&mut breaker, &nb, 0, 2, t0 + ms(2600));
        assert_eq!(gate, Gate::Go { probe: true });
        assert!(transition.is_some());
    }

    #[test]
    fn only_a_delivered_429_or_503_with_retry_after_sets_a_not_before() {
        let limited =
            ToolOutcome::from_code(ErrorCode::RateLimited, "429").with_retry_after(ms(1000));
        assert_eq!(asked_pause(&limited), Some(ms(1000)));
        let busy =
            ToolOutcome::from_code(ErrorCode::ServiceUnavailable, "503").with_retry_after(ms(2000));
        assert_eq!(asked_pause(&busy), Some(ms(2000)));
        assert_eq!(asked_pause(&busy.clone().undelivered()), None);
        assert_eq!(
            asked_pause(&ToolOutcome::from_code(ErrorCode::RateLimited, "429")),
            None
        );
        let refused = crate::recovery::rejected_outcome("x", ms(500));
        assert_eq!(asked_pause(&refused), None);
    }
}
