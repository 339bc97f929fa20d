//! Recovery policies working together: a simulated call loop with a fake
//! clock that applies breaker, retry schedule, retry budget, attempt budget,
//! session budget and fallback chain the way an actor will.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hale_actors::recovery::{
    Admission, AtomicIterationBudget, AttemptBudget, BreakerState, CallState, ChunkPolicy,
    CircuitBreaker, FallbackChain, IterationBudget, Next, Phase, RetryBudget, RetryConfig,
    RetryPolicy, Transition, UnlimitedIterations, classify_phase, next_step, rejected_outcome,
    should_chunk,
};
use hale_actors::{ErrorCode, Status, ToolOutcome};
use serde_json::json;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// One endpoint's shared state, as its actor would own it.
struct Endpoint {
    breaker: CircuitBreaker,
    budget: RetryBudget,
}

/// The call loop an actor will run, reduced to its decisions. The tool is a
/// closure of (target, now); time only moves when the loop waits.
struct Harness {
    now: Instant,
    policy: RetryPolicy,
    chain: FallbackChain,
    endpoints: HashMap<String, Endpoint>,
    transitions: Vec<(String, Transition)>,
    calls: Vec<String>,
}

struct Report {
    outcome: ToolOutcome,
    attempts: AttemptBudget,
}

impl Harness {
    fn new(targets: &[&str], max_attempts: u32) -> Self {
        let policy = RetryPolicy::new(RetryConfig {
            max_attempts,
            base: ms(100),
            max_delay: secs(2),
            jitter: 0.0,
            max_retry_after: secs(5),
        })
        .unwrap();
        let endpoints = targets
            .iter()
            .map(|t| {
                let endpoint = Endpoint {
                    breaker: CircuitBreaker::new(3, secs(30)).unwrap(),
                    budget: RetryBudget::new(secs(10), 1, 0.2).unwrap(),
                };
                (t.to_string(), endpoint)
            })
            .collect();
        Self {
            now: Instant::now(),
            policy,
            chain: FallbackChain::new(targets.iter().copied()).unwrap(),
            endpoints,
            transitions: Vec::new(),
            calls: Vec::new(),
        }
    }

    fn run(
        &mut self,
        idempotent: bool,
        attempt_limit: u32,
        session: &dyn IterationBudget,
        mut tool: impl FnMut(&str, Instant) -> ToolOutcome,
    ) -> Report {
        let mut attempts = AttemptBudget::new(attempt_limit);
        let mut target = self.chain.primary().to_owned();
        let mut on_target = 0;
        let mut wait = Duration::ZERO;
        loop {
            let granted = if attempts.used() == 0 {
                attempts.try_consume()
            } else {
                attempts.try_consume_with(session)
            };
            if !granted {
                return Report {
                    outcome: attempts.exhausted_outcome(),
                    attempts,
                };
            }
            self.now += wait;
            let now = self.now;
            let endpoint = self.endpoints.get_mut(&target).unwrap();
            if on_target == 0 {
                endpoint.budget.deposit(now);
            }
            let (admission, transition) = endpoint.breaker.allow(now);
            self.transitions
                .extend(transition.map(|t| (target.clone(), t)));
            let (outcome, phase) = match admission {
                Admission::Rejected { retry_in } => {
                    (rejected_outcome(&target, retry_in), Phase::BeforeEffect)
                }
                Admission::Allowed | Admission::Probe => {
                    self.calls.push(target.clone());
                    let outcome = tool(&target, now);
                    let transition = if outcome.is_success() {
                        endpoint.breaker.on_success(now)
                    } else {
                        endpoint.breaker.on_failure(now)
                    };
                    self.transitions
                        .extend(transition.map(|t| (target.clone(), t)));
                    let phase = classify_phase(&outcome);
                    (outcome, phase)
                }
            };
            on_target += 1;
            attempts.record(target.as_str(), &outcome, wait);
            let call = CallState {
                attempts: on_target,
                idempotent,
                phase,
                fallback_available: self.chain.after(&target).is_some(),
            };
            match next_step(&outcome, &call, &self.policy, 0.0) {
                Next::Retry { delay } if endpoint.budget.withdraw(now) => wait = delay,
                Next::Fallback => {
                    target = self.chain.after(&target).unwrap().to_owned();
                    on_target = 0;
                    wait = Duration::ZERO;
                }
                // No retry budget left: fail fast with the (retryable)
                // outcome rather than wait for a retry that would add load.
                Next::Retry { .. } | Next::Done | Next::Escalate | Next::GiveUp => {
                    return Report { outcome, attempts };
                }
            }
        }
    }
}

fn codes(report: &Report) -> Vec<(String, Option<ErrorCode>, Duration)> {
    report
        .attempts
        .history()
        .iter()
        .map(|r| (r.target.clone(), r.outcome_code.clone(), r.delay_before))
        .collect()
}

fn refused() -> ToolOutcome {
    ToolOutcome::from_code(ErrorCode::ConnectionRefused, "refused")
}

fn transition(from: BreakerState, to: BreakerState) -> Transition {
    Transition { from, to }
}

#[test]
fn breaker_opens_after_three_failures_then_traffic_falls_back_and_recovers() {
    use BreakerState::{Closed, HalfOpen, Open};
    let mut h = Harness::new(&["primary", "backup"], 3);
    let primary_up = std::cell::Cell::new(false);
    let mut tool = |target: &str, _now: Instant| {
        if target == "backup" || primary_up.get() {
            ToolOutcome::success(json!(target))
        } else {
            refused()
        }
    };

    // Call 1: three refusals, spaced by the schedule, open the breaker;
    // next_step then routes to the backup.
    let r = h.run(false, 10, &UnlimitedIterations, &mut tool);
    assert!(r.outcome.is_success());
    assert_eq!(h.calls, ["primary", "primary", "primary", "backup"]);
    assert_eq!(
        codes(&r),
        [
            ("primary".into(), Some(ErrorCode::ConnectionRefused), ms(0)),
            (
                "primary".into(),
                Some(ErrorCode::ConnectionRefused),
                ms(100)
            ),
            (
                "primary".into(),
                Some(ErrorCode::ConnectionRefused),
                ms(200)
            ),
            ("backup".into(), None, ms(0)),
        ]
    );
    assert_eq!(
        h.transitions,
        [("primary".into(), transition(Closed, Open))]
    );

    // Call 2: the open breaker refuses without calling the primary. Its
    // Retry-After (the cool-down left) is capped at 5 s; when attempts run
    // out the call falls back.
    h.calls.clear();
    let r = h.run(false, 10, &UnlimitedIterations, &mut tool);
    assert!(r.outcome.is_success());
    assert_eq!(h.calls, ["backup"], "the open breaker spared the primary");
    let unreachable = Some(ErrorCode::McpServerUnreachable);
    assert_eq!(
        codes(&r),
        [
            ("primary".into(), unreachable.clone(), ms(0)),
            ("primary".into(), unreachable.clone(), secs(5)),
            ("primary".into(), unreachable, secs(5)),
            ("backup".into(), None, ms(0)),
        ]
    );

    // Call 3, after the cool-down, with the primary healthy again: one
    // probe closes the breaker.
    primary_up.set(true);
    h.now += secs(30);
    h.calls.clear();
    h.transitions.clear();
    let r = h.run(false, 10, &UnlimitedIterations, &mut tool);
    assert_eq!(r.outcome.data, json!("primary"));
    assert_eq!(h.calls, ["primary"]);
    assert_eq!(
        h.transitions,
        [
            ("primary".into(), transition(Open, HalfOpen)),
            ("primary".into(), transition(HalfOpen, Closed)),
        ]
    );
}

#[test]
fn open_breaker_outcome_leads_to_fallback_once_attempts_are_spent() {
    let t0 = Instant::now();
    let mut breaker = CircuitBreaker::new(3, secs(30)).unwrap();
    for i in 0..3 {
        let _ = breaker.on_failure(t0 + ms(i));
    }
    let (admission, _) = breaker.allow(t0 + secs(1));
    let Admission::Rejected { retry_in } = admission else {
        panic!("open breaker admitted a call: {admission:?}");
    };
    let outcome = rejected_outcome("github", retry_in);
    let policy = RetryPolicy::new(RetryConfig {
        max_attempts: 3,
        ..RetryConfig::default()
    })
    .unwrap();
    let mut call = CallState {
        attempts: 3,
        idempotent: false,
        phase: Phase::BeforeEffect,
        fallback_available: true,
    };
    assert_eq!(next_step(&outcome, &call, &policy, 0.0), Next::Fallback);
    // With attempts left, the retry waits exactly for the breaker.
    call.attempts = 1;
    assert_eq!(
        next_step(&outcome, &call, &policy, 0.0),
        Next::Retry { delay: retry_in }
    );
    assert_eq!(retry_in, secs(30) - ms(998));
    // The refusal carries its own proof that nothing ran (`delivered:
    // false`), so even a non-idempotent call may go to the fallback...
    assert!(outcome.is_undelivered());
    call.phase = classify_phase(&outcome);
    call.attempts = 3;
    assert_eq!(call.phase, Phase::BeforeEffect);
    assert_eq!(next_step(&outcome, &call, &policy, 0.0), Next::Fallback);
    // ...while the same code without that proof might have started
    // something, and a non-idempotent call is then handed back.
    let mut unproven = outcome.clone();
    unproven.extra.clear();
    call.phase = classify_phase(&unproven);
    assert_eq!(next_step(&unproven, &call, &policy, 0.0), Next::GiveUp);
}

#[test]
fn retry_budget_caps_a_storm_of_sessions() {
    const SESSIONS: u32 = 50;
    const MAX_ATTEMPTS: u32 = 4;
    // One endpoint, shared by every session: no floor, retries at most
    // 20 % of original calls.
    let budget = Arc::new(RetryBudget::new(secs(10), 0, 0.2).unwrap());
    let hits = Arc::new(AtomicU32::new(0));
    let retries = Arc::new(AtomicU32::new(0));
    let start = Arc::new(Barrier::new(SESSIONS as usize));
    let t0 = Instant::now();
    let policy = RetryPolicy::new(RetryConfig {
        max_attempts: MAX_ATTEMPTS,
        jitter: 0.0,
        ..RetryConfig::default()
    })
    .unwrap();

    let sessions: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let (budget, hits, retries, start) = (
                Arc::clone(&budget),
                Arc::clone(&hits),
                Arc::clone(&retries),
                Arc::clone(&start),
            );
            std::thread::spawn(move || {
                start.wait();
                let mut now = t0 + ms(u64::from(i));
                budget.deposit(now);
                let mut attempts = 0;
                loop {
                    hits.fetch_add(1, Ordering::Relaxed);
                    attempts += 1;
                    let outcome =
                        ToolOutcome::from_code(ErrorCode::ServiceUnavailable, "overloaded");
                    let call = CallState {
                        attempts,
                        idempotent: true,
                        phase: classify_phase(&outcome),
                        fallback_available: false,
                    };
                    match next_step(&outcome, &call, &policy, 0.5) {
                        Next::Retry { delay } if budget.withdraw(now) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            now += delay;
                        }
                        _ => return outcome,
                    }
                }
            })
        })
        .collect();
    let outcomes: Vec<ToolOutcome> = sessions.into_iter().map(|s| s.join().unwrap()).collect();

    let retries = retries.load(Ordering::Relaxed);
    let hits = hits.load(Ordering::Relaxed);
    // Without the budget: 50 * 4 = 200 calls. With it, at most 20 % more
    // than the 50 originals, and the sessions did try to retry.
    assert!(retries <= SESSIONS / 5, "{retries} retries");
    assert!(retries >= 1);
    assert_eq!(hits, SESSIONS + retries);
    // Every session failed fast with an outcome the agent may retry later.
    assert!(
        outcomes.iter().all(|o| o.is_failure()
            && o.retryable
            && o.code == Some(ErrorCode::ServiceUnavailable))
    );
    // Nothing was overdrawn or lost: what was not retried is still there.
    assert_eq!(
        retries + budget.remaining(t0 + secs(5)) as u32,
        SESSIONS / 5
    );
}

#[test]
fn non_idempotent_call_that_may_have_started_is_never_reissued() {
    let mut h = Harness::new(&["primary", "backup"], 3);
    let timeout = |_: &str, _: Instant| ToolOutcome::timeout("no answer in 30s");
    let r = h.run(false, 10, &UnlimitedIterations, timeout);
    assert_eq!(
        h.calls,
        ["primary"],
        "neither retried nor sent to the backup"
    );
    assert!(r.outcome.is_timeout());

    // The same failure from an idempotent tool is retried, then falls back
    // and is retried there, until the chain ends.
    let mut h = Harness::new(&["primary", "backup"], 3);
    let r = h.run(true, 10, &UnlimitedIterations, timeout);
    assert_eq!(
        h.calls,
        [
            "primary", "primary", "primary", "backup", "backup", "backup"
        ]
    );
    assert_eq!(r.attempts.history().len(), 6);
    assert!(r.outcome.is_timeout());
}

#[test]
fn attempt_budget_bounds_retries_times_fallbacks() {
    let mut h = Harness::new(&["a", "b", "c", "d"], 2);
    let r = h.run(true, 5, &UnlimitedIterations, |_, _| refused());
    assert_eq!(r.outcome.code, Some(ErrorCode::BudgetExhausted));
    assert_eq!(h.calls, ["a", "a", "b", "b", "c"]);
    let listed: Vec<_> = r.outcome.data["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["target"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ["a", "a", "b", "b", "c"]);
    assert_eq!(r.outcome.data["attempts"][4]["code"], "CONNECTION_REFUSED");
}

#[test]
fn retries_and_fallbacks_charge_the_session_budget() {
    let session: Arc<dyn IterationBudget> = Arc::new(AtomicIterationBudget::new(3));
    let mut h = Harness::new(&["primary", "backup"], 3);
    // Two retries: the session pays two of its three iterations.
    let counter = AtomicU32::new(0);
    let r = h.run(true, 10, session.as_ref(), |_, _| {
        if counter.fetch_add(1, Ordering::Relaxed) < 2 {
            refused()
        } else {
            ToolOutcome::success(json!("ok"))
        }
    });
    assert!(r.outcome.is_success());
    assert_eq!(session.remaining(), 1);

    // The next call's first attempt is the session's own; its retry takes
    // the last iteration; the one after is refused by the session, not by
    // the call's own budget.
    let counter = AtomicU32::new(0);
    let r = h.run(true, 10, session.as_ref(), |_, _| {
        counter.fetch_add(1, Ordering::Relaxed);
        refused()
    });
    assert_eq!(counter.load(Ordering::Relaxed), 2);
    assert_eq!(r.outcome.code, Some(ErrorCode::BudgetExhausted));
    assert!(
        r.outcome.message.contains("session"),
        "{}",
        r.outcome.message
    );
    assert_eq!(session.remaining(), 0);
}

#[test]
fn escalation_stops_the_loop_at_once() {
    let mut h = Harness::new(&["primary", "backup"], 3);
    let r = h.run(true, 10, &UnlimitedIterations, |_, _| {
        ToolOutcome::from_code(ErrorCode::PermissionDenied, "token revoked")
    });
    assert_eq!(h.calls, ["primary"]);
    let call = CallState {
        attempts: 1,
        idempotent: true,
        phase: Phase::BeforeEffect,
        fallback_available: true,
    };
    assert_eq!(next_step(&r.outcome, &call, &h.policy, 0.0), Next::Escalate);
}

#[test]
fn oversized_read_is_replanned_in_chunks() {
    const FILE: u64 = 2500;
    let policy = ChunkPolicy::new(1000, 10_000).unwrap();
    let read = |range: Option<(u64, u64)>| match range {
        None => ToolOutcome::from_code(ErrorCode::FileTooLarge, "2500 bytes > 1000"),
        Some((offset, len)) => ToolOutcome::success(json!({ "offset": offset, "len": len })),
    };
    let first = read(None);
    assert!(should_chunk(&first));
    assert!(policy.covers(FILE));
    let pieces: Vec<ToolOutcome> = policy
        .plan(FILE)
        .into_iter()
        .map(|r| read(Some(r)))
        .collect();
    assert!(pieces.iter().all(|p| p.status == Status::Success));
    let read_bytes: u64 = pieces.iter().map(|p| p.data["len"].as_u64().unwrap()).sum();
    assert_eq!(read_bytes, FILE);
}
