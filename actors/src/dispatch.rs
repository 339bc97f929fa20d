//! The [`Dispatcher`]: where the recovery policy meets real calls.
//!
//! `recovery` decides (retry, fall back, give up, how long to wait, whether
//! re-issuing is safe) as pure values; something has to carry those
//! decisions out against live tools, and it has to be one place, or every
//! caller grows its own retry loop with its own bugs. The dispatcher is
//! that place. For one logical call it walks the route (the tool, then its
//! fallbacks), and for every attempt it asks the endpoint's circuit breaker
//! and concurrency cap, calls the tool under a timeout, charges the
//! per-call attempt budget and the endpoint's shared retry budget, re-reads
//! oversized results in chunks, and emits an event for every attempt,
//! retry, fallback, refusal and breaker transition.
//!
//! # Invariants
//! - The per-endpoint state ([`Endpoints`]) lives outside every actor: a
//!   restarted MCP server or tool actor keeps its breaker and budget, so a
//!   crash loop cannot reset the protection against it.
//! - A non-idempotent call that may have started is never re-issued,
//!   neither retried nor sent to a fallback ([`next_step`] guarantees it;
//!   the dispatcher adds no path around it).
//! - Waiting between retries is a `tokio::time::sleep` in the caller's own
//!   future; the dispatcher is not an actor and blocks nobody's mailbox.

mod watchdog;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::audit::Redactor;
use crate::catalog::ErrorCode;
use crate::event::{Event, EventKind, EventSink, Level};
use crate::outcome::ToolOutcome;
use crate::recovery::FallbackChain;
use crate::recovery::{
    Admission, AttemptBudget, BreakerError, BreakerState, BudgetError, CallState, ChunkError,
    ChunkPolicy, CircuitBreaker, ConcurrencyCap, Next, RetryBudget, RetryConfig, RetryPolicy,
    RetryPolicyError, Transition, classify_phase, counts_against_endpoint, may_reissue, next_step,
    rejected_outcome, should_chunk,
};
pub use crate::tool::ToolContext;
use crate::tool::{OWN_TIMEOUT_GRACE, Tool, ToolRegistry, ToolSpec, call_guarded, unknown_tool};

/// One place a call can go: a tool and the endpoint whose shared recovery
/// state it uses.
#[derive(Clone)]
pub struct Target {
    /// The endpoint (MCP server, HTTP host, or the tool itself).
    pub endpoint: String,
    /// What to call.
    pub tool: Arc<dyn Tool>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("endpoint", &self.endpoint)
            .field("tool", &self.tool.spec().name)
            .finish()
    }
}

/// Finds the targets of a tool name: the primary first, then its
/// fallbacks in order.
pub trait Router: Send + Sync {
    /// The route for `name`, or `None` when this router does not know it.
    fn route(&self, name: &str) -> Option<Vec<Target>>;

    /// Every name this router knows, for "did you mean" hints.
    fn names(&self) -> Vec<String>;
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
    /// tool whose calls choose their own timeout ([`Tool::own_timeout`],
    /// `exec`) gets that plus [`OWN_TIMEOUT_GRACE`] instead.
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
struct Settings {
    retry: RetryPolicy,
    attempts_per_call: u32,
    attempt_timeout: Duration,
    chunk: ChunkPolicy,
    breaker: CircuitBreaker,
    budget: RetryBudget,
    cap: ConcurrencyCap,
}

/// The recovery state one endpoint shares across every caller and every
/// restart of the actors behind it.
#[derive(Debug)]
pub struct EndpointHealth {
    breaker: Mutex<CircuitBreaker>,
    /// Shared with the model chain (`model::Models`), which applies the
    /// same breaker and budget to model endpoints.
    pub(crate) budget: RetryBudget,
    cap: ConcurrencyCap,
}

impl EndpointHealth {
    /// The breaker's current state.
    pub fn breaker_state(&self) -> BreakerState {
        self.lock_breaker().state()
    }

    /// The breaker's settings: the consecutive failures that open it and
    /// how long it stays open.
    pub fn breaker_settings(&self) -> (u32, Duration) {
        let breaker = self.lock_breaker();
        (breaker.failures(), breaker.cool_down())
    }

    /// Opens the breaker now for a full cool-down (see
    /// [`CircuitBreaker::trip`]); calls fail fast or go to a fallback.
    pub fn force_open(&self) {
        self.lock_breaker().trip(now().into_std());
    }

    /// Retries the shared budget would grant now.
    pub fn retries_available(&self) -> u64 {
        self.budget.remaining(now().into_std())
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.cap.in_flight()
    }

    pub(crate) fn lock_breaker(&self) -> std::sync::MutexGuard<'_, CircuitBreaker> {
        // The breaker is a few plain fields updated in one step; a panic
        // elsewhere cannot leave it half-written.
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
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
        let breaker = self.lock_breaker();
        breaker.state() == BreakerState::Closed && breaker.consecutive_failures() == 0
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
                    breaker: Mutex::new(breaker),
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

/// Carries the recovery policy out for every tool call. Cheap to share
/// behind an `Arc`; every method takes `&self`.
pub struct Dispatcher {
    watchdog: Arc<watchdog::Watchdog>,
    routers: Vec<Arc<dyn Router>>,
    endpoints: Arc<Endpoints>,
    sink: Arc<dyn EventSink>,
    /// Masks secrets in every outcome handed back (see [`with_redactor`](Dispatcher::with_redactor)).
    redactor: Option<Arc<Redactor>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("routers", &self.routers.len())
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// How one attempt ended, besides its outcome.
struct Attempted {
    outcome: ToolOutcome,
    /// The breaker refused it: the endpoint is known to be down, so a
    /// fallback beats waiting.
    refused_by_breaker: bool,
}

impl Dispatcher {
    /// A dispatcher over `routers` (asked in order), sharing `endpoints`
    /// with whoever reports on them, and emitting to `sink`.
    pub fn new(
        routers: Vec<Arc<dyn Router>>,
        endpoints: Arc<Endpoints>,
        sink: Arc<dyn EventSink>,
    ) -> Self {
        Self {
            watchdog: watchdog::Watchdog::new(endpoints.settings.attempt_timeout),
            routers,
            endpoints,
            sink,
            redactor: None,
        }
    }

    /// Masks secrets (known values and patterns) in every outcome this
    /// dispatcher hands back, before the caller sees it: the model's view,
    /// the session journal and the events built from the outcome then all
    /// hold the same masked text, so a resumed session reads exactly what
    /// the live one did.
    #[must_use]
    pub fn with_redactor(mut self, redactor: Arc<Redactor>) -> Self {
        self.redactor = Some(redactor);
        self
    }

    /// The shared per-endpoint state.
    pub fn endpoints(&self) -> &Arc<Endpoints> {
        &self.endpoints
    }

    fn settings(&self) -> &Settings {
        &self.endpoints.settings
    }

    /// Every tool name the routers know, sorted and deduplicated.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.routers.iter().flat_map(|r| r.names()).collect();
        names.sort();
        names.dedup();
        names
    }

    fn route(&self, name: &str) -> Option<Vec<Target>> {
        self.routers
            .iter()
            .find_map(|r| r.route(name))
            .filter(|targets| !targets.is_empty())
    }

    /// The route of one call: each target on the endpoint its tool names
    /// for these arguments ([`Tool::endpoint_for`]), so `web_fetch` keeps a
    /// breaker per site rather than one for the whole web.
    fn route_call(&self, name: &str, args: &Value) -> Option<Vec<Target>> {
        let mut targets = self.route(name)?;
        for target in &mut targets {
            if let Some(endpoint) = target.tool.endpoint_for(args) {
                target.endpoint = endpoint;
            }
        }
        Some(targets)
    }

    /// Calls `name` with `args`, applying the whole recovery policy, and
    /// returns the final outcome. Never panics and never fails outside the
    /// outcome.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the call: the attempt in flight has
    /// its [`ToolContext::cancel`] fired (so a tool running elsewhere, in
    /// its actor, stops too; `exec` kills its process group), and nothing
    /// is retried afterwards.
    pub async fn call(&self, name: &str, args: Value, ctx: &ToolContext) -> ToolOutcome {
        let mut outcome = self.call_unmasked(name, args, ctx).await;
        if let Some(redactor) = &self.redactor {
            redactor.redact_outcome(&mut outcome);
        }
        outcome
    }

    /// [`call`](Self::call) before the outcome is masked.
    async fn call_unmasked(&self, name: &str, args: Value, ctx: &ToolContext) -> ToolOutcome {
        let Some(targets) = self.route_call(name, &args) else {
            return unknown_tool(name, self.names());
        };
        let mut budget = AttemptBudget::new(self.settings().attempts_per_call);
        'targets: for (index, target) in targets.iter().enumerate() {
            let fallback_available = index + 1 < targets.len();
            let health = self.endpoints.get(&target.endpoint);
            let idempotent = target.tool.spec().idempotent;
            let mut attempts = 0;
            let mut delay_before = Duration::ZERO;
            loop {
                // The first attempt is the caller's own call, already
                // charged to its session; everything after is recovery.
                let admitted = if budget.used() == 0 {
                    budget.try_consume()
                } else {
                    budget.try_consume_with(&*ctx.iterations)
                };
                if !admitted {
                    return budget.exhausted_outcome();
                }
                attempts += 1;
                let attempted = self
                    .attempt(target, &health, args.clone(), attempts == 1, ctx)
                    .await;
                let outcome = attempted.outcome;
                budget.record(target.tool.spec().name.clone(), &outcome, delay_before);

                if should_chunk(&outcome) && target.tool.spec().accepts("offset") {
                    return self
                        .read_in_chunks(target, &health, &args, outcome, ctx)
                        .await;
                }
                let call = CallState {
                    attempts,
                    idempotent,
                    phase: classify_phase(&outcome),
                    fallback_available,
                };
                let next = if attempted.refused_by_breaker && fallback_available {
                    Next::Fallback
                } else {
                    next_step(&outcome, &call, &self.settings().retry, fastrand::f64())
                };
                match next {
                    Next::Done | Next::Escalate | Next::GiveUp => {
                        return with_route(with_history(outcome, &budget), &targets, index);
                    }
                    Next::Retry { delay } => {
                        if !health.budget.withdraw(now().into_std()) {
                            self.emit(
                                Event::from_outcome(&target.endpoint, EventKind::Shed, &outcome)
                                    .with_data(json!({
                                        "tool": target.tool.spec().name,
                                        "reason": "retry budget spent",
                                    })),
                                ctx,
                            );
                            let reissue =
                                may_reissue(&outcome, idempotent, classify_phase(&outcome));
                            if fallback_available && outcome.recoverable && reissue {
                                self.emit_fallback(target, &targets[index + 1], &outcome, ctx);
                                continue 'targets;
                            }
                            return with_history(budget_spent(outcome, &target.endpoint), &budget);
                        }
                        self.emit(
                            Event::new(
                                Level::Warning,
                                &target.endpoint,
                                EventKind::Retry,
                                format!(
                                    "retrying `{}` in {} ms after {}",
                                    target.tool.spec().name,
                                    delay.as_millis(),
                                    describe(&outcome)
                                ),
                            )
                            .with_data(json!({
                                "tool": target.tool.spec().name,
                                "attempt": attempts + 1,
                                "delay_ms": u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                                "after": outcome.code.as_ref().map(ErrorCode::as_str),
                            })),
                            ctx,
                        );
                        tokio::time::sleep(delay).await;
                        delay_before = delay;
                    }
                    Next::Fallback => {
                        self.emit_fallback(target, &targets[index + 1], &outcome, ctx);
                        continue 'targets;
                    }
                }
            }
        }
        // Every arm above returns, or moves on only when a next target
        // exists, so the loop cannot run out; answer rather than panic.
        ToolOutcome::from_code(
            ErrorCode::Internal,
            format!("recovery ran out of targets for `{name}`"),
        )
    }

    /// One attempt against one target, through its breaker and cap.
    async fn attempt(
        &self,
        target: &Target,
        health: &EndpointHealth,
        args: Value,
        first_on_target: bool,
        ctx: &ToolContext,
    ) -> Attempted {
        // One reading of the clock before and one after the call serve
        // every decision of the attempt.
        let started = now();
        let (admission, transition) = health.lock_breaker().allow(started.into_std());
        self.emit_transition(&target.endpoint, transition, ctx);
        if let Admission::Rejected { retry_in } = admission {
            // Not attempted, but answered: the refusal is the attempt's
            // outcome in the audit trail.
            let outcome = rejected_outcome(&target.endpoint, retry_in);
            self.emit_outcome(target, &outcome, Duration::ZERO, ctx);
            return Attempted {
                outcome,
                refused_by_breaker: true,
            };
        }
        let Some(permit) = health.cap.try_acquire() else {
            let outcome = ToolOutcome::from_code(
                ErrorCode::ServiceUnavailable,
                format!(
                    "`{}` already has {} calls in flight; the call was not made",
                    target.endpoint,
                    health.cap.max()
                ),
            )
            .with_data(json!({ "endpoint": target.endpoint, "in_flight_cap": health.cap.max() }))
            .undelivered();
            self.emit(
                Event::from_outcome(&target.endpoint, EventKind::Shed, &outcome),
                ctx,
            );
            self.emit_outcome(target, &outcome, Duration::ZERO, ctx);
            return Attempted {
                outcome,
                refused_by_breaker: false,
            };
        };
        if first_on_target {
            // One deposit per original call, never for a retry: see
            // `RetryBudget`.
            health.budget.deposit(started.into_std());
        }
        let name = &target.tool.spec().name;
        // Every attempt is recorded at info: the audit trail must show
        // each call a session journaled being attempted.
        if self.sink.enabled(Level::Info) {
            self.emit(
                Event::new(
                    Level::Info,
                    &target.endpoint,
                    EventKind::ToolAttempt,
                    format!("calling `{name}`"),
                )
                .with_data(json!({ "tool": name })),
                ctx,
            );
        }
        // A tool with a timeout of its own (exec's `timeout_ms`) is given
        // that plus a grace: its timeout kills and reports cleanly, so it
        // must come first; the fixed backstop is for tools without one.
        let timeout = target
            .tool
            .own_timeout(&args)
            .map_or(self.settings().attempt_timeout, |own| {
                own.saturating_add(OWN_TIMEOUT_GRACE)
            });
        let attempt_ctx = ctx.for_attempt(started + timeout);
        // Whatever ends the attempt (an answer, the deadline, the caller
        // dropping this future), the tool is told to stop.
        let _cancel_on_exit = attempt_ctx.cancel.clone().drop_guard();
        let (watch, overdue) = self.watchdog.watch(started + timeout);
        let overdue = async {
            if overdue.await.is_err() {
                // The watchdog went away without firing: no deadline.
                std::future::pending::<()>().await;
            }
        };
        let outcome = tokio::select! {
            biased;
            outcome = call_guarded(&*target.tool, args, &attempt_ctx) => outcome,
            () = overdue => ToolOutcome::timeout(format!(
                "`{name}` did not finish within {} ms; the attempt was abandoned",
                timeout.as_millis()
            )),
        };
        drop(watch);
        drop(permit);
        let ended = now();
        let transition = if counts_against_endpoint(&outcome) {
            health
                .lock_breaker()
                .on_failure_of_call(started.into_std(), ended.into_std())
        } else {
            health.lock_breaker().on_success(ended.into_std())
        };
        self.emit_outcome(target, &outcome, ended - started, ctx);
        self.emit_transition(&target.endpoint, transition, ctx);
        Attempted {
            outcome,
            refused_by_breaker: false,
        }
    }

    /// Re-reads an oversized result in the chunk policy's ranges and
    /// assembles it. The tool must take `offset` and `limit` and answer
    /// with `content`, `bytes` and `total_bytes` (as `read_file` does).
    async fn read_in_chunks(
        &self,
        target: &Target,
        health: &EndpointHealth,
        args: &Value,
        too_large: ToolOutcome,
        ctx: &ToolContext,
    ) -> ToolOutcome {
        let Some(total) = too_large.data.get("total_bytes").and_then(Value::as_u64) else {
            return too_large;
        };
        let policy = self.settings().chunk;
        let covered = total.min(policy.max_total_bytes());
        self.emit(
            Event::from_outcome(&target.endpoint, EventKind::Adjust, &too_large).with_data(json!({
                "tool": target.tool.spec().name,
                "total_bytes": total,
                "chunk_bytes": policy.chunk_bytes(),
                "reading_bytes": covered,
            })),
            ctx,
        );
        let mut content = String::new();
        let mut offset = 0u64;
        let mut chunks = 0u32;
        while offset < covered {
            let mut chunk_args = args.clone();
            if let Some(map) = chunk_args.as_object_mut() {
                map.insert("offset".into(), json!(offset));
                map.insert(
                    "limit".into(),
                    json!(policy.chunk_bytes().min(covered - offset)),
                );
            }
            let outcome = self
                .attempt(target, health, chunk_args, false, ctx)
                .await
                .outcome;
            let bytes = outcome.data.get("bytes").and_then(Value::as_u64);
            let text = outcome.data.get("content").and_then(Value::as_str);
            match (outcome.is_success(), bytes, text) {
                (true, Some(bytes), Some(text)) if bytes > 0 => {
                    content.push_str(text);
                    offset += bytes;
                    chunks += 1;
                }
                _ => {
                    let reason = if outcome.is_success() {
                        "the tool returned no progress".to_owned()
                    } else {
                        describe(&outcome)
                    };
                    return ToolOutcome::partial(
                        json!({ "content": content, "bytes": offset, "total_bytes": total,
                                "chunks": chunks, "complete": false }),
                        format!("chunked read stopped at byte {offset} of {total}: {reason}"),
                    );
                }
            }
        }
        let data = json!({
            "content": content,
            "offset": 0,
            "bytes": offset,
            "total_bytes": total,
            "chunks": chunks,
            "eof": offset >= total,
            "complete": offset >= total,
        });
        if offset >= total {
            ToolOutcome::success(data)
        } else {
            ToolOutcome::partial(
                data,
                format!(
                    "read the first {offset} of {total} bytes in {chunks} chunks; \
                     the rest is beyond the chunked-read limit"
                ),
            )
        }
    }

    fn emit_fallback(&self, from: &Target, to: &Target, outcome: &ToolOutcome, ctx: &ToolContext) {
        self.emit(
            Event::new(
                Level::Warning,
                &from.endpoint,
                EventKind::Fallback,
                format!(
                    "`{}` failed ({}); routing the call to `{}`",
                    from.tool.spec().name,
                    describe(outcome),
                    to.tool.spec().name
                ),
            )
            .with_data(json!({
                "from": from.tool.spec().name,
                "from_endpoint": from.endpoint,
                "to": to.tool.spec().name,
                "to_endpoint": to.endpoint,
            })),
            ctx,
        );
    }

    fn emit_transition(&self, endpoint: &str, transition: Option<Transition>, ctx: &ToolContext) {
        if let Some(t) = transition {
            let level = if t.to == BreakerState::Open {
                Level::Error
            } else {
                Level::Info
            };
            self.emit(
                Event::new(
                    level,
                    endpoint,
                    EventKind::Breaker,
                    format!(
                        "breaker of `{endpoint}` {} -> {}",
                        state_name(t.from),
                        state_name(t.to)
                    ),
                )
                .with_data(json!({ "from": state_name(t.from), "to": state_name(t.to) })),
                ctx,
            );
        }
    }

    /// The outcome of one attempt. A failure is recorded whole (it is what
    /// the audit trail is for); a success only by its shape, because its
    /// payload (a file's content, a page) is the caller's business and
    /// would make every call pay for a copy.
    fn emit_outcome(
        &self,
        target: &Target,
        outcome: &ToolOutcome,
        took: Duration,
        ctx: &ToolContext,
    ) {
        let name = &target.tool.spec().name;
        let took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        if outcome.is_failure() {
            let mut event = Event::from_outcome(&target.endpoint, EventKind::ToolOutcome, outcome);
            if let Some(map) = event.data.as_object_mut() {
                map.insert("tool".to_owned(), json!(name));
                map.insert("duration_ms".to_owned(), json!(took_ms));
            }
            self.emit(event, ctx);
            return;
        }
        let level = if outcome.is_success() {
            Level::Info
        } else {
            Level::Warning
        };
        if self.sink.enabled(level) {
            self.emit(
                Event::new(
                    level,
                    &target.endpoint,
                    EventKind::ToolOutcome,
                    format!("`{name}` answered in {took_ms} ms"),
                )
                .with_data(json!({
                    "tool": name,
                    "status": if outcome.is_success() { "success" } else { "partial" },
                    "duration_ms": took_ms,
                })),
                ctx,
            );
        }
    }

    fn emit(&self, mut event: Event, ctx: &ToolContext) {
        if let Some(session) = &ctx.session {
            event = event.with_session(session.clone());
        }
        if let Some(call) = &ctx.call {
            match &mut event.data {
                Value::Object(map) => {
                    map.insert("call".to_owned(), Value::String(call.clone()));
                }
                Value::Null => event.data = json!({ "call": call }),
                _ => {}
            }
        }
        self.sink.emit(event);
    }

    /// The spec of the tool `name` resolves to (its primary target).
    pub fn spec(&self, name: &str) -> Option<ToolSpec> {
        let targets = self.route(name)?;
        targets.first().map(|t| t.tool.spec().clone())
    }
}

/// The breaker state as spelled in events.
pub fn state_name(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    }
}

fn now() -> Instant {
    // tokio's clock, so tests with paused time drive the breakers and
    // budgets too.
    Instant::now()
}

fn describe(outcome: &ToolOutcome) -> String {
    match &outcome.code {
        Some(code) => format!("{code}: {}", outcome.message),
        None => format!("{:?}: {}", outcome.status, outcome.message),
    }
}

/// Adds the attempt history to a final outcome that took more than one
/// attempt, so the agent and the audit trail see what recovery tried.
fn with_history(mut outcome: ToolOutcome, budget: &AttemptBudget) -> ToolOutcome {
    if budget.history().len() > 1 {
        let attempts: Vec<Value> = budget.history().iter().map(|r| r.to_json()).collect();
        outcome
            .extra
            .insert("attempts".to_owned(), Value::Array(attempts));
    }
    outcome
}

/// Records on an outcome served (or failed) by a fallback which endpoints
/// were tried before it: `fallback_from` lists them in order and
/// `served_by` names the endpoint that produced the outcome. The session
/// reads them to write the incident lesson ("weather unreachable; fell
/// back to weather-backup").
fn with_route(mut outcome: ToolOutcome, targets: &[Target], index: usize) -> ToolOutcome {
    if index > 0 {
        let from: Vec<Value> = targets[..index]
            .iter()
            .map(|t| Value::String(t.endpoint.clone()))
            .collect();
        outcome
            .extra
            .insert("fallback_from".to_owned(), Value::Array(from));
        outcome.extra.insert(
            "served_by".to_owned(),
            Value::String(targets[index].endpoint.clone()),
        );
    }
    outcome
}

/// The failure to hand back when a retry was wanted but the endpoint's
/// shared budget refused it: the same failure, still retryable, saying why
/// it was not retried.
fn budget_spent(mut outcome: ToolOutcome, endpoint: &str) -> ToolOutcome {
    outcome.message = format!(
        "{}; not retried: the retry budget of `{endpoint}` is spent (too many retries against it recently)",
        outcome.message
    );
    outcome.retryable = true;
    outcome
        .extra
        .insert("retry_budget".to_owned(), Value::String("spent".to_owned()));
    outcome
}

/// Routes the tools of a [`ToolRegistry`], with fallback chains between
/// tool names (`web_fetch` -> `web_fetch_mirror`).
#[derive(Debug)]
pub struct RegistryRouter {
    registry: Arc<ToolRegistry>,
    fallbacks: HashMap<String, FallbackChain>,
}

impl RegistryRouter {
    /// A router over `registry` with no fallbacks.
    pub fn new(registry: Arc<ToolRegistry>) -> Self {
        Self {
            registry,
            fallbacks: HashMap::new(),
        }
    }

    /// Routes calls to the chain's primary through its alternatives.
    pub fn with_fallback(mut self, chain: FallbackChain) -> Self {
        self.fallbacks.insert(chain.primary().to_owned(), chain);
        self
    }
}

impl Router for RegistryRouter {
    fn route(&self, name: &str) -> Option<Vec<Target>> {
        let primary = self.registry.get(name)?;
        let mut targets = vec![Target {
            endpoint: primary.spec().endpoint_name().to_owned(),
            tool: primary,
        }];
        if let Some(chain) = self.fallbacks.get(name) {
            // An alternative that is not registered (yet) is skipped rather
            // than failing the call the primary could serve.
            targets.extend(chain.targets().iter().skip(1).filter_map(|alt| {
                let tool = self.registry.get(alt)?;
                Some(Target {
                    endpoint: tool.spec().endpoint_name().to_owned(),
                    tool,
                })
            }));
        }
        Some(targets)
    }

    fn names(&self) -> Vec<String> {
        self.registry.names()
    }
}
