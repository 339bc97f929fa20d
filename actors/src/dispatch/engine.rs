//! The attempt engine: the one place where a call to a tool, an MCP
//! server or a model is admitted, made, classified, reported and retried.
//!
//! Recovery rules only protect an endpoint when every caller follows them
//! the same way; two copies of the loop drift (a model crash once counted
//! as N breaker failures, a re-asked turn deposited into the retry budget
//! each time). So the loop exists once, generic over what is called
//! ([`Callee`]): the dispatcher's tool targets and the model chain's
//! models are both a route with fallbacks walked by [`Engine::run`], and
//! every attempt of either goes through [`Engine::attempt`].
//!
//! # Per attempt
//! Admit through the endpoint's not-before, breaker and in-flight cap
//! ([`EndpointHealth::admit`]); deposit into the endpoint's retry budget
//! on the first attempt of an original call at that endpoint only; call
//! under a timeout; report to the breaker with the call-start rule; set
//! the endpoint's not-before from a `429`/`503` carrying `retry_after`;
//! emit the attempt, outcome, breaker and not-before events.
//!
//! # Per call
//! The callee decides what follows a failure ([`Callee::decide`]); the
//! engine carries it out: a retry withdraws from the endpoint's retry
//! budget and waits (never past the call's deadline), a fallback moves to
//! the next target. While an endpoint's not-before is in the future no
//! attempt to it starts: the call takes the fallback when there is one,
//! else waits for the instant, and a wait that would pass the deadline
//! ends the call with a retryable, undelivered outcome instead. A route
//! may be walked again in rounds ([`Rules::rounds`]), each round's attempts
//! being retries under the same budget rules.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::catalog::ErrorCode;
use crate::event::{Event, EventKind, EventSink, Level};
use crate::outcome::{Severity, ToolOutcome};
use crate::recovery::{
    AttemptBudget, BreakerState, EndpointHealth, Endpoints, Gate, RetryPolicy, Transition,
    asked_pause, counts_against_endpoint,
};
use crate::tool::ToolContext;

use super::watchdog::Watchdog;
use std::sync::Arc;

/// Something the engine can call: one target of a route.
pub(crate) trait Callee: Send + Sync {
    /// What a successful attempt yields.
    type Reply: Send;

    /// The endpoint whose shared state the attempt uses.
    fn endpoint(&self) -> &str;

    /// The name events carry (the tool's or the model's).
    fn name(&self) -> &str;

    /// The data key of the name in events: `"tool"` or `"model"`.
    fn kind(&self) -> &'static str;

    /// The data of the `tool_attempt` event of attempt `attempt` of the
    /// call.
    fn attempt_data(&self, attempt: u32) -> Value;

    /// The backstop for one attempt.
    fn timeout(&self) -> Duration;

    /// Attempt `attempt` of the call (1 for the first, counting retries
    /// and fallbacks) is about to start.
    fn before_attempt(&self, _attempt: u32) {}

    /// Makes one attempt.
    fn call(
        &self,
        ctx: &ToolContext,
    ) -> impl Future<Output = Result<Self::Reply, ToolOutcome>> + Send;

    /// The outcome a successful reply is reported as, if it is one (a
    /// tool's partial outcome is a reply, and what it says about the
    /// endpoint still counts).
    fn reply_outcome(reply: &Self::Reply) -> Option<&ToolOutcome>;

    /// What follows the failure `outcome` after `attempts` attempts at
    /// this target (the failed one included).
    fn decide(
        &self,
        outcome: &ToolOutcome,
        attempts: u32,
        fallback_available: bool,
        policy: &RetryPolicy,
        unit: f64,
    ) -> Step;

    /// Whether the call may go to another target after `outcome`, instead
    /// of waiting out this endpoint's not-before.
    fn may_fall_back(&self, outcome: &ToolOutcome) -> bool;

    /// The answer when this endpoint's breaker refuses the attempt.
    fn refused(&self, retry_in: Duration) -> ToolOutcome;

    /// Whether a breaker refusal with no fallback left is decided like
    /// any failure (retried after the cool-down when [`decide`] says so)
    /// rather than ending the walk of the route at once.
    ///
    /// [`decide`]: Callee::decide
    fn waits_for_breaker(&self) -> bool {
        true
    }
}

/// What follows a failed attempt ([`Callee::decide`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The outcome is the answer.
    Done,
    /// Call the same target again after `delay`.
    Retry {
        /// The wait first.
        delay: Duration,
    },
    /// Move to the next target (or end the round when there is none).
    Fallback,
    /// Hand the outcome back now.
    Return,
}

/// The rules of one call ([`Engine::run`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// Backoff and attempts per target.
    pub retry: RetryPolicy,
    /// Attempts the call may make in all.
    pub attempts_per_call: u32,
    /// Whether attempts after the first are charged to the caller's
    /// iteration budget ([`ToolContext::iterations`]).
    pub charge_iterations: bool,
    /// How many times the whole route may be walked when every target
    /// failed retryably (1: once).
    pub rounds: u32,
    /// When the call must have ended (the earlier of this and the
    /// context's deadline applies).
    pub deadline: Option<Instant>,
}

/// How one call went through its route, besides its outcome: the typed
/// result the session's escalation decisions read. Journaled with the
/// outcome, so it is serde, and every field has a default so an entry
/// written before it existed still reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The endpoint that produced the outcome; `None` when nothing was
    /// attempted (an unknown tool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// The endpoints the call left for a fallback, in order, before the
    /// one that served it; empty when the first target served it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_from: Vec<String>,
    /// The breaker state of the serving endpoint when the call ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerState>,
    /// The outcome is the refusal of an open breaker (no target was
    /// called, none was left to fall back to).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub breaker_refused: bool,
}

impl Route {
    /// Whether the call fell back from another endpoint.
    pub fn fell_back(&self) -> bool {
        !self.fallback_from.is_empty()
    }

    /// The route as recorded on an outcome by a hale older than this
    /// type: `extra.fallback_from` / `extra.served_by` and an open
    /// breaker's `data.breaker`. Reads journals written before the route
    /// was journaled beside the outcome.
    pub fn legacy(outcome: &ToolOutcome) -> Self {
        let fallback_from = outcome
            .extra
            .get("fallback_from")
            .and_then(Value::as_array)
            .map(|from| {
                from.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let served_by = outcome
            .extra
            .get("served_by")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let breaker_refused = outcome.is_failure()
            && outcome.data.get("breaker").and_then(Value::as_str) == Some("open");
        Self {
            served_by,
            fallback_from,
            breaker: breaker_refused.then_some(BreakerState::Open),
            breaker_refused,
        }
    }
}

/// The outcome of a call and how it was served: what the dispatcher hands
/// a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dispatched {
    /// The final outcome.
    pub outcome: ToolOutcome,
    /// Who served it, after which fallbacks.
    #[serde(default)]
    pub route: Route,
}

/// What a session does after a tool call's outcome
/// ([`escalation`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Escalation {
    /// The call succeeded on a fallback: record the incident lesson
    /// (`from` the endpoints left, `to` the one that served).
    pub lesson: Option<(Vec<String>, String)>,
    /// Ask a human before going on, and why.
    pub approval: Option<ApprovalReason>,
}

/// Why a failed call needs a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalReason {
    /// The endpoint's breaker refused the call and no fallback served it.
    BreakerOpen,
    /// The failure is classified critical.
    Critical,
}

/// The escalation decisions for a call that ended in `outcome` by `route`:
/// a success served by a fallback teaches a lesson; a failure refused by
/// an open breaker, or a critical one, asks for approval (the breaker
/// first: waiting for the endpoint is the decision to make).
pub fn escalation(outcome: &ToolOutcome, route: &Route) -> Escalation {
    let lesson = (outcome.is_success() && route.fell_back()).then(|| {
        (
            route.fallback_from.clone(),
            route.served_by.clone().unwrap_or_default(),
        )
    });
    let approval = if outcome.is_failure() && route.breaker_refused {
        Some(ApprovalReason::BreakerOpen)
    } else if outcome.is_failure() && outcome.severity == Severity::Critical {
        Some(ApprovalReason::Critical)
    } else {
        None
    };
    Escalation { lesson, approval }
}

/// Why an attempt was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The breaker is open.
    Breaker,
    /// The peer's not-before has not passed, and a fallback may take it.
    NotBefore,
    /// Waiting for the not-before would pass the call's deadline.
    Deadline,
    /// The in-flight cap is reached.
    Full,
}

/// How one attempt ended.
pub(crate) struct Attempted<R> {
    /// The reply, or the failure.
    pub result: Result<R, ToolOutcome>,
    /// Set when the attempt was not made.
    pub refused: Option<Refusal>,
}

/// How a call ended ([`Engine::run`]).
pub(crate) struct Ended<R> {
    /// The reply, or the last failure.
    pub result: Result<R, ToolOutcome>,
    /// The target that produced it.
    pub index: usize,
    /// How many targets were tried: the first `tried` of the route.
    pub tried: usize,
    /// Attempts made, with their history.
    pub budget: AttemptBudget,
    /// The route, typed.
    pub route: Route,
}

/// Per-attempt facts [`Engine::attempt`] needs from the call.
pub(crate) struct AttemptOf<'a> {
    /// First attempt of the original call at this endpoint: deposits.
    pub first_on_target: bool,
    /// A fallback exists: a not-before refuses instead of waiting.
    pub may_divert: bool,
    /// When the call must have ended.
    pub deadline: Option<Instant>,
    /// Attempts started in the call so far (advanced here).
    pub started: &'a mut u32,
    /// Caps the not-before a peer may ask for.
    pub max_retry_after: Duration,
}

/// Carries recovery out for calls of any [`Callee`]. Cheap to share.
pub(crate) struct Engine {
    endpoints: Arc<Endpoints>,
    sink: Arc<dyn EventSink>,
    watchdog: Arc<Watchdog>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("endpoints", &self.endpoints.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `endpoints`, emitting to `sink`; `tick_base` sizes
    /// the backstop watchdog's tick (the usual attempt timeout).
    pub(crate) fn new(
        endpoints: Arc<Endpoints>,
        sink: Arc<dyn EventSink>,
        tick_base: Duration,
    ) -> Self {
        Self {
            endpoints,
            sink,
            watchdog: Watchdog::new(tick_base),
        }
    }

    /// The shared endpoint state.
    pub(crate) fn endpoints(&self) -> &Arc<Endpoints> {
        &self.endpoints
    }

    /// Walks `targets` (the primary, then its fallbacks) under `rules`.
    /// `targets` must not be empty.
    pub(crate) async fn run<C: Callee>(
        &self,
        targets: &[C],
        rules: &Rules,
        ctx: &ToolContext,
    ) -> Ended<C::Reply> {
        let deadline = match (rules.deadline, ctx.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut budget = AttemptBudget::new(rules.attempts_per_call);
        // Targets are walked in order, so those tried are `0..=reached`.
        let mut reached = 0usize;
        let mut started = 0u32;
        let mut round = 0u32;
        let max_retry_after = rules.retry.config().max_retry_after;
        let mut last: Option<(ToolOutcome, usize)> = None;
        'rounds: loop {
            'targets: for (index, target) in targets.iter().enumerate() {
                let fallback_available = index + 1 < targets.len();
                let health = self.endpoints.get(target.endpoint());
                reached = reached.max(index);
                let mut attempts = 0u32;
                let mut delay_before = Duration::ZERO;
                loop {
                    // The first attempt is the caller's own call, already
                    // charged to its session; everything after is recovery.
                    let admitted = if budget.used() == 0 || !rules.charge_iterations {
                        budget.try_consume()
                    } else {
                        budget.try_consume_with(&*ctx.iterations)
                    };
                    if !admitted {
                        let outcome = budget.exhausted_outcome();
                        return self.ended(targets, Err(outcome), index, reached, budget, None);
                    }
                    attempts += 1;
                    if attempts == 1 && round > 0 {
                        // A later round re-asks: a retry, never a deposit.
                        if !health.budget.withdraw(Instant::now().into_std()) {
                            let outcome = last.as_ref().map_or_else(
                                || ToolOutcome::from_code(ErrorCode::Internal, "no attempt"),
                                |(o, _)| o.clone(),
                            );
                            self.emit_shed(target, &outcome, ctx);
                            let outcome = budget_spent(outcome, target.endpoint());
                            return self.ended(targets, Err(outcome), index, reached, budget, None);
                        }
                    }
                    let attempted = self
                        .attempt(
                            target,
                            &health,
                            AttemptOf {
                                first_on_target: attempts == 1 && round == 0,
                                may_divert: fallback_available,
                                deadline,
                                started: &mut started,
                                max_retry_after,
                            },
                            ctx,
                        )
                        .await;
                    let outcome = match attempted.result {
                        Ok(reply) => {
                            if let Some(outcome) = C::reply_outcome(&reply) {
                                budget.record(target.name().to_owned(), outcome, delay_before);
                            }
                            return self.ended_at(
                                targets,
                                Ok(reply),
                                index,
                                reached,
                                budget,
                                None,
                                Some(&health),
                            );
                        }
                        Err(outcome) => outcome,
                    };
                    budget.record(target.name().to_owned(), &outcome, delay_before);
                    let step = match attempted.refused {
                        Some(Refusal::Breaker | Refusal::NotBefore) if fallback_available => {
                            Step::Fallback
                        }
                        Some(Refusal::Breaker) if !target.waits_for_breaker() => Step::Fallback,
                        Some(Refusal::Deadline) => Step::Return,
                        _ => {
                            let step = target.decide(
                                &outcome,
                                attempts,
                                fallback_available,
                                &rules.retry,
                                fastrand::f64(),
                            );
                            // The peer asked for a pause: rather than wait
                            // it out, the call goes where it can be served.
                            let held = matches!(step, Step::Retry { .. })
                                && fallback_available
                                && target.may_fall_back(&outcome)
                                && health.not_before_wait(Instant::now()).is_some();
                            if held { Step::Fallback } else { step }
                        }
                    };
                    match step {
                        Step::Done | Step::Return => {
                            let refused = attempted.refused;
                            return self.ended(
                                targets,
                                Err(outcome),
                                index,
                                reached,
                                budget,
                                refused,
                            );
                        }
                        Step::Fallback => {
                            if let Some(next) = targets.get(index + 1) {
                                self.emit_fallback(target, next, &outcome, ctx);
                            }
                            last = Some((outcome, index));
                            continue 'targets;
                        }
                        Step::Retry { delay } => {
                            if !health.budget.withdraw(Instant::now().into_std()) {
                                self.emit_shed(target, &outcome, ctx);
                                if fallback_available && target.may_fall_back(&outcome) {
                                    if let Some(next) = targets.get(index + 1) {
                                        self.emit_fallback(target, next, &outcome, ctx);
                                    }
                                    last = Some((outcome, index));
                                    continue 'targets;
                                }
                                let outcome = budget_spent(outcome, target.endpoint());
                                return self.ended(
                                    targets,
                                    Err(outcome),
                                    index,
                                    reached,
                                    budget,
                                    None,
                                );
                            }
                            if deadline.is_some_and(|d| Instant::now() + delay > d) {
                                return self.ended(
                                    targets,
                                    Err(outcome),
                                    index,
                                    reached,
                                    budget,
                                    None,
                                );
                            }
                            self.emit_retry(target, attempts + 1, delay, &outcome, ctx);
                            tokio::time::sleep(delay).await;
                            delay_before = delay;
                        }
                    }
                }
            }
            // Every target failed and moved on: another round, if the last
            // failure is worth it and the rules allow.
            let Some((outcome, index)) = last.take() else {
                let outcome = ToolOutcome::from_code(ErrorCode::Internal, "the route is empty");
                return self.ended(targets, Err(outcome), 0, reached, budget, None);
            };
            round += 1;
            if !outcome.retryable || round >= rules.rounds {
                let refused = breaker_refusal(&outcome);
                return self.ended(targets, Err(outcome), index, reached, budget, refused);
            }
            let backoff = rules
                .retry
                .delay(round.saturating_sub(1), &outcome, fastrand::f64());
            let now = Instant::now();
            // The soonest any target may be asked again (zero when one is
            // free now).
            let earliest_open = targets
                .iter()
                .map(|t| {
                    self.endpoints
                        .get(t.endpoint())
                        .not_before_wait(now)
                        .unwrap_or(Duration::ZERO)
                })
                .min()
                .unwrap_or(Duration::ZERO);
            let wait = backoff.max(earliest_open);
            if deadline.is_some_and(|d| now + wait > d) {
                return self.ended(targets, Err(outcome), index, reached, budget, None);
            }
            if let Some(first) = targets.first() {
                self.emit_retry(first, round + 1, wait, &outcome, ctx);
            }
            tokio::time::sleep(wait).await;
            last = Some((outcome, index));
            continue 'rounds;
        }
    }

    fn ended<C: Callee>(
        &self,
        targets: &[C],
        result: Result<C::Reply, ToolOutcome>,
        index: usize,
        reached: usize,
        budget: AttemptBudget,
        refused: Option<Refusal>,
    ) -> Ended<C::Reply> {
        self.ended_at(targets, result, index, reached, budget, refused, None)
    }

    /// [`ended`](Self::ended) with the serving endpoint's state at hand
    /// (the common, successful case), which spares a lookup in the book.
    #[allow(clippy::too_many_arguments)]
    fn ended_at<C: Callee>(
        &self,
        targets: &[C],
        result: Result<C::Reply, ToolOutcome>,
        index: usize,
        reached: usize,
        budget: AttemptBudget,
        refused: Option<Refusal>,
        health: Option<&EndpointHealth>,
    ) -> Ended<C::Reply> {
        let served = targets.get(index);
        let route = Route {
            served_by: served.map(|t| t.endpoint().to_owned()),
            fallback_from: targets[..index.min(targets.len())]
                .iter()
                .map(|t| t.endpoint().to_owned())
                .collect(),
            breaker: match health {
                Some(health) => Some(health.breaker_state()),
                None => served
                    .and_then(|t| self.endpoints.find(t.endpoint()))
                    .map(|h| h.breaker_state()),
            },
            breaker_refused: refused == Some(Refusal::Breaker),
        };
        Ended {
            result,
            index,
            tried: reached + 1,
            budget,
            route,
        }
    }

    /// One attempt at `target`, through its endpoint's not-before, breaker
    /// and cap. See the module docs.
    pub(crate) async fn attempt<C: Callee>(
        &self,
        target: &C,
        health: &EndpointHealth,
        of: AttemptOf<'_>,
        ctx: &ToolContext,
    ) -> Attempted<C::Reply> {
        let endpoint = target.endpoint();
        // One reading of the clock before and one after the call serve
        // every decision of the attempt.
        let mut started = Instant::now();
        let mut announced;
        let permit = loop {
            // The attempt's event is stamped before it is admitted: an
            // attempt admitted before a not-before was set then reads as
            // started before it, and one after it is never admitted.
            announced = self.sink.enabled(Level::Info).then(|| {
                Event::new(
                    Level::Info,
                    endpoint,
                    EventKind::ToolAttempt,
                    format!("calling `{}`", target.name()),
                )
                .with_data(target.attempt_data(*of.started + 1))
            });
            let (admitted, transition) = health.admit(started);
            self.emit_transition(endpoint, transition, ctx);
            match admitted {
                Ok(admitted) => break admitted.permit,
                Err(Gate::NotBefore { left }) => {
                    let past_deadline = of.deadline.is_some_and(|d| started + left > d);
                    if of.may_divert || past_deadline {
                        let outcome = held_off(endpoint, left, past_deadline);
                        self.emit_outcome(target, &outcome, Duration::ZERO, ctx);
                        let refused = if past_deadline {
                            Refusal::Deadline
                        } else {
                            Refusal::NotBefore
                        };
                        return Attempted {
                            result: Err(outcome),
                            refused: Some(refused),
                        };
                    }
                    // No other target: the call waits for the instant.
                    tokio::time::sleep(left).await;
                    started = Instant::now();
                }
                Err(Gate::Breaker { retry_in }) => {
                    // Not attempted, but answered: the refusal is the
                    // attempt's outcome in the audit trail.
                    let outcome = target.refused(retry_in);
                    self.emit_outcome(target, &outcome, Duration::ZERO, ctx);
                    return Attempted {
                        result: Err(outcome),
                        refused: Some(Refusal::Breaker),
                    };
                }
                Err(Gate::Full { .. } | Gate::Go { .. }) => {
                    let max = health.max_in_flight();
                    let outcome = ToolOutcome::from_code(
                        ErrorCode::ServiceUnavailable,
                        format!(
                            "`{endpoint}` already has {max} calls in flight; the call was not made"
                        ),
                    )
                    .with_data(json!({ "endpoint": endpoint, "in_flight_cap": max }))
                    .undelivered();
                    self.emit(
                        Event::from_outcome(endpoint, EventKind::Shed, &outcome),
                        ctx,
                    );
                    self.emit_outcome(target, &outcome, Duration::ZERO, ctx);
                    return Attempted {
                        result: Err(outcome),
                        refused: Some(Refusal::Full),
                    };
                }
            }
        };
        if of.first_on_target {
            // One deposit per original call, never for a retry: see
            // `RetryBudget`.
            health.budget.deposit(started.into_std());
        }
        *of.started += 1;
        target.before_attempt(*of.started);
        // Every attempt is recorded at info: the audit trail must show
        // each call a session journaled being attempted.
        if let Some(event) = announced {
            self.emit(event, ctx);
        }
        let timeout = target.timeout();
        let attempt_ctx = ctx.for_attempt(started + timeout);
        // Whatever ends the attempt (an answer, the deadline, the caller
        // dropping this future), the callee is told to stop.
        let _cancel_on_exit = attempt_ctx.cancel.clone().drop_guard();
        let (watch, overdue) = self.watchdog.watch(started + timeout);
        let overdue = async {
            if overdue.await.is_err() {
                // The watchdog went away without firing: no deadline.
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            biased;
            result = target.call(&attempt_ctx) => result,
            () = overdue => Err(ToolOutcome::timeout(format!(
                "`{}` did not finish within {} ms; the attempt was abandoned",
                target.name(),
                timeout.as_millis()
            ))),
        };
        drop(watch);
        drop(permit);
        let ended = Instant::now();
        let view = match &result {
            Ok(reply) => C::reply_outcome(reply),
            Err(outcome) => Some(outcome),
        };
        // The peer's pause first, so no other caller starts inside it.
        if let Some(pause) = view.and_then(asked_pause)
            && let Some(until) = health.hold_off(ended, pause, of.max_retry_after)
        {
            self.emit_not_before(endpoint, until - ended, ctx);
        }
        let failed = view.is_some_and(counts_against_endpoint);
        let transition = health.report(started, ended, failed);
        match view {
            Some(outcome) => self.emit_outcome(target, outcome, ended - started, ctx),
            None => self.emit_answered(target, ended - started, ctx),
        }
        self.emit_transition(endpoint, transition, ctx);
        Attempted {
            result,
            refused: None,
        }
    }

    fn emit_not_before(&self, endpoint: &str, wait: Duration, ctx: &ToolContext) {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let until = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_millis(
                i64::try_from(wait_ms).unwrap_or(i64::MAX),
            ))
            .unwrap_or(jiff::Timestamp::MAX);
        self.emit(
            Event::new(
                Level::Warning,
                endpoint,
                EventKind::NotBefore,
                format!("`{endpoint}` asked for no request in the next {wait_ms} ms"),
            )
            .with_data(json!({
                "endpoint": endpoint,
                "until": rfc3339_millis(until),
                "retry_after_ms": wait_ms,
            })),
            ctx,
        );
    }

    fn emit_shed<C: Callee>(&self, target: &C, outcome: &ToolOutcome, ctx: &ToolContext) {
        let mut event = Event::from_outcome(target.endpoint(), EventKind::Shed, outcome);
        event.data = json!({ target.kind(): target.name(), "reason": "retry budget spent" });
        self.emit(event, ctx);
    }

    fn emit_retry<C: Callee>(
        &self,
        target: &C,
        attempt: u32,
        delay: Duration,
        outcome: &ToolOutcome,
        ctx: &ToolContext,
    ) {
        self.emit(
            Event::new(
                Level::Warning,
                target.endpoint(),
                EventKind::Retry,
                format!(
                    "retrying `{}` in {} ms after {}",
                    target.name(),
                    delay.as_millis(),
                    describe(outcome)
                ),
            )
            .with_data(json!({
                target.kind(): target.name(),
                "attempt": attempt,
                "delay_ms": u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "after": outcome.code.as_ref().map(ErrorCode::as_str),
            })),
            ctx,
        );
    }

    fn emit_fallback<C: Callee>(&self, from: &C, to: &C, outcome: &ToolOutcome, ctx: &ToolContext) {
        self.emit(
            Event::new(
                Level::Warning,
                from.endpoint(),
                EventKind::Fallback,
                format!(
                    "`{}` failed ({}); routing the call to `{}`",
                    from.name(),
                    describe(outcome),
                    to.name()
                ),
            )
            .with_data(json!({
                "from": from.name(),
                "from_endpoint": from.endpoint(),
                "to": to.name(),
                "to_endpoint": to.endpoint(),
                "after": outcome.code.as_ref().map(ErrorCode::as_str),
            })),
            ctx,
        );
    }

    pub(crate) fn emit_transition(
        &self,
        endpoint: &str,
        transition: Option<Transition>,
        ctx: &ToolContext,
    ) {
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

    /// A reply that is not an outcome (a model's): recorded by its shape.
    fn emit_answered<C: Callee>(&self, target: &C, took: Duration, ctx: &ToolContext) {
        if self.sink.enabled(Level::Info) {
            let took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
            self.emit(
                Event::new(
                    Level::Info,
                    target.endpoint(),
                    EventKind::ToolOutcome,
                    format!("`{}` answered in {took_ms} ms", target.name()),
                )
                .with_data(json!({
                    target.kind(): target.name(),
                    "status": "success",
                    "duration_ms": took_ms,
                })),
                ctx,
            );
        }
    }

    /// The outcome of one attempt. A failure is recorded whole (it is what
    /// the audit trail is for); a success only by its shape, because its
    /// payload (a file's content, a page) is the caller's business and
    /// would make every call pay for a copy.
    pub(crate) fn emit_outcome<C: Callee>(
        &self,
        target: &C,
        outcome: &ToolOutcome,
        took: Duration,
        ctx: &ToolContext,
    ) {
        let took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        if outcome.is_failure() {
            let mut event = Event::from_outcome(target.endpoint(), EventKind::ToolOutcome, outcome);
            if let Some(map) = event.data.as_object_mut() {
                map.insert(target.kind().to_owned(), json!(target.name()));
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
                    target.endpoint(),
                    EventKind::ToolOutcome,
                    format!("`{}` answered in {took_ms} ms", target.name()),
                )
                .with_data(json!({
                    target.kind(): target.name(),
                    "status": if outcome.is_success() { "success" } else { "partial" },
                    "duration_ms": took_ms,
                })),
                ctx,
            );
        }
    }

    pub(crate) fn emit(&self, mut event: Event, ctx: &ToolContext) {
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
}

fn breaker_refusal(outcome: &ToolOutcome) -> Option<Refusal> {
    (outcome.is_undelivered()
        && outcome.data.get("breaker").and_then(Value::as_str) == Some("open"))
    .then_some(Refusal::Breaker)
}

/// The breaker state as spelled in events.
pub fn state_name(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    }
}

/// `timestamp` in RFC 3339, UTC, with milliseconds.
fn rfc3339_millis(timestamp: jiff::Timestamp) -> String {
    format!("{timestamp:.3}")
}

/// The answer instead of an attempt while the endpoint's not-before holds:
/// retryable, routable around, and never sent.
fn held_off(endpoint: &str, left: Duration, past_deadline: bool) -> ToolOutcome {
    let millis = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
    let why = if past_deadline {
        "; waiting for it would pass the call's deadline"
    } else {
        ""
    };
    let mut outcome = ToolOutcome::from_code(
        ErrorCode::RateLimited,
        format!(
            "`{endpoint}` asked for no request in the next {millis} ms; the call was not made{why}"
        ),
    )
    .with_retry_after(left)
    .with_data(json!({ "endpoint": endpoint, "not_before_ms": millis }))
    .undelivered();
    outcome.retryable = true;
    outcome.recoverable = true;
    outcome
}

pub(crate) fn describe(outcome: &ToolOutcome) -> String {
    match &outcome.code {
        Some(code) => format!("{code}: {}", outcome.message),
        None => format!("{:?}: {}", outcome.status, outcome.message),
    }
}

/// The failure to hand back when a retry was wanted but the endpoint's
/// shared budget refused it: the same failure, still retryable, saying why
/// it was not retried.
pub(crate) fn budget_spent(mut outcome: ToolOutcome, endpoint: &str) -> ToolOutcome {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn fell_back() -> Route {
        Route {
            served_by: Some("weather-backup".into()),
            fallback_from: vec!["weather".into()],
            breaker: Some(BreakerState::Closed),
            breaker_refused: false,
        }
    }

    #[test]
    fn a_success_on_a_fallback_teaches_a_lesson_and_asks_nobody() {
        let e = escalation(&ToolOutcome::success(json!(1)), &fell_back());
        assert_eq!(
            e.lesson,
            Some((vec!["weather".to_owned()], "weather-backup".to_owned()))
        );
        assert_eq!(e.approval, None);
        let direct = escalation(&ToolOutcome::success(json!(1)), &Route::default());
        assert_eq!(direct, Escalation::default());
    }

    #[test]
    fn a_breaker_refusal_asks_for_approval_before_a_critical_failure() {
        let refused = crate::recovery::rejected_outcome("weather", Duration::from_secs(1));
        let route = Route {
            served_by: Some("weather".into()),
            breaker: Some(BreakerState::Open),
            breaker_refused: true,
            ..Route::default()
        };
        assert_eq!(
            escalation(&refused, &route).approval,
            Some(ApprovalReason::BreakerOpen)
        );
        // The same outcome without the typed refusal asks nothing: the
        // decision reads the route, not the outcome's JSON.
        assert_eq!(escalation(&refused, &Route::default()).approval, None);
        let mut critical = ToolOutcome::from_code(ErrorCode::Internal, "boom");
        critical.severity = Severity::Critical;
        assert_eq!(
            escalation(&critical, &Route::default()).approval,
            Some(ApprovalReason::Critical)
        );
        assert_eq!(
            escalation(&critical, &route).approval,
            Some(ApprovalReason::BreakerOpen)
        );
        // A failed call that fell back teaches nothing.
        assert_eq!(escalation(&critical, &fell_back()).lesson, None);
    }

    #[test]
    fn the_route_survives_the_journal_and_old_entries_still_read() {
        let dispatched = Dispatched {
            outcome: ToolOutcome::success(json!("sunny")),
            route: fell_back(),
        };
        let text = serde_json::to_string(&dispatched).unwrap();
        let back: Dispatched = serde_json::from_str(&text).unwrap();
        assert_eq!(back, dispatched);
        // An entry written before the route existed: no `route` at all.
        let old = json!({ "outcome": ToolOutcome::success(json!("sunny")) });
        let back: Dispatched = serde_json::from_value(old).unwrap();
        assert_eq!(back.route, Route::default());
        // ...and an old outcome's keys still give its route.
        let mut legacy = ToolOutcome::success(json!("sunny"));
        legacy
            .extra
            .insert("fallback_from".into(), json!(["weather"]));
        legacy
            .extra
            .insert("served_by".into(), json!("weather-backup"));
        let route = Route::legacy(&legacy);
        assert_eq!(route.fallback_from, vec!["weather".to_owned()]);
        assert_eq!(route.served_by.as_deref(), Some("weather-backup"));
        let refused = crate::recovery::rejected_outcome("weather", Duration::from_secs(1));
        assert!(Route::legacy(&refused).breaker_refused);
    }

    #[test]
    fn a_journaled_route_is_replayed_and_an_old_entry_reads_its_legacy_keys() {
        use crate::session::{Entry, Progress};
        let served = Entry::Outcome {
            call: "c1".into(),
            tool: "weather".into(),
            outcome: ToolOutcome::success(json!("sunny")),
            budget_left: 3,
            route: Some(fell_back()),
        }
        .to_json();
        // As written before routes were journaled: no `route`, the keys
        // on the outcome.
        let refused = crate::recovery::rejected_outcome("weather", Duration::from_secs(1));
        let mut old: Value = serde_json::from_str(&served).unwrap();
        let map = old.as_object_mut().unwrap();
        map.remove("route");
        map.insert("call".into(), json!("c2"));
        map.insert("outcome".into(), serde_json::to_value(&refused).unwrap());
        let old = old.to_string();
        let progress = Progress::replay([served.as_str(), old.as_str()]);
        let route = &progress.routes["c1"];
        assert_eq!(route, &fell_back());
        let decided = escalation(&progress.outcomes["c1"], route);
        assert!(decided.lesson.is_some());
        let old_route = &progress.routes["c2"];
        assert!(old_route.breaker_refused);
        assert_eq!(
            escalation(&progress.outcomes["c2"], old_route).approval,
            Some(ApprovalReason::BreakerOpen)
        );
    }

    #[test]
    fn until_is_rfc3339_utc_with_milliseconds() {
        let ts: jiff::Timestamp = "2026-12-03T17:00:01Z".parse().unwrap();
        assert_eq!(rfc3339_millis(ts), "2026-12-03T17:00:01.000Z");
    }
}
