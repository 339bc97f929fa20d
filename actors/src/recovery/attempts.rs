//! Bounds on the work one request may cause, and the record of what it
//! tried.
//!
//! Retries and fallbacks each have their own limit, but they multiply: three
//! attempts on each of four fallback targets is twelve calls for what the
//! agent sees as one. An [`AttemptBudget`] bounds the whole logical call,
//! across every target, and keeps the history of its attempts, so that when
//! it runs out the agent (and the human reading the audit trail) gets one
//! `BUDGET_EXHAUSTED` outcome listing what was tried, where, with what
//! result, and how long each wait was; not just the last failure.
//!
//! Above the call sits the session: one inbound message may lead to many
//! tool calls, each with its own recovery. The [`IterationBudget`] trait is
//! the hook through which every retry and fallback also charges the
//! session's per-message budget, so recovery can never loop a session past
//! what it was given. The session implements it later; this module only
//! needs the two methods, and provides [`UnlimitedIterations`] and
//! [`AtomicIterationBudget`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::catalog::ErrorCode;
use crate::outcome::{Status, ToolOutcome};

/// One attempt of a logical call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// Its number, from 1.
    pub attempt: u32,
    /// The tool, server or model it was sent to.
    pub target: String,
    /// The outcome's code (`None` for success).
    pub outcome_code: Option<ErrorCode>,
    /// The outcome's status.
    pub status: Status,
    /// How long recovery waited before making it.
    pub delay_before: Duration,
}

impl AttemptRecord {
    /// The record as it appears in an outcome's `data`, spelled like the
    /// outcome itself (`code`, `status`, durations in `_ms`).
    pub fn to_json(&self) -> Value {
        let delay_ms = u64::try_from(self.delay_before.as_millis()).unwrap_or(u64::MAX);
        json!({
            "attempt": self.attempt,
            "target": self.target,
            "code": self.outcome_code.as_ref().map(ErrorCode::as_str),
            "status": serde_json::to_value(self.status).unwrap_or(Value::Null),
            "delay_before_ms": delay_ms,
        })
    }
}

/// The attempts one logical call may make, across retries and fallbacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptBudget {
    limit: u32,
    used: u32,
    session_refused: bool,
    history: Vec<AttemptRecord>,
}

impl AttemptBudget {
    /// A budget of `limit` attempts, the first included. A limit of 0
    /// refuses even the first attempt.
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            used: 0,
            session_refused: false,
            history: Vec::new(),
        }
    }

    /// Attempts allowed.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Attempts consumed so far.
    pub fn used(&self) -> u32 {
        self.used
    }

    /// Attempts still allowed.
    pub fn remaining(&self) -> u32 {
        self.limit.saturating_sub(self.used)
    }

    /// The attempts recorded so far, oldest first.
    pub fn history(&self) -> &[AttemptRecord] {
        &self.history
    }

    /// Takes one attempt; `false` when the budget is spent.
    pub fn try_consume(&mut self) -> bool {
        if self.used >= self.limit {
            return false;
        }
        self.used += 1;
        true
    }

    /// Takes one attempt from this budget and one iteration from the
    /// session's; `false` when either is spent, and then neither is charged.
    ///
    /// Use it for retries and fallbacks. The first attempt is the session's
    /// own tool call, already charged by its loop, so it takes
    /// [`try_consume`](Self::try_consume) alone.
    pub fn try_consume_with(&mut self, iterations: &dyn IterationBudget) -> bool {
        if self.used >= self.limit {
            return false;
        }
        if !iterations.try_consume() {
            self.session_refused = true;
            return false;
        }
        self.used += 1;
        true
    }

    /// Records the result of an attempt made against `target` after waiting
    /// `delay_before`.
    pub fn record(
        &mut self,
        target: impl Into<String>,
        outcome: &ToolOutcome,
        delay_before: Duration,
    ) {
        let attempt = u32::try_from(self.history.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        self.history.push(AttemptRecord {
            attempt,
            target: target.into(),
            outcome_code: outcome.code.clone(),
            status: outcome.status,
            delay_before,
        });
    }

    /// The `BUDGET_EXHAUSTED` outcome to hand back once the budget refuses,
    /// with `data: {"attempts": [...]}` listing the history.
    pub fn exhausted_outcome(&self) -> ToolOutcome {
        let which = if self.session_refused {
            "the session's iteration budget ran out".to_owned()
        } else {
            format!("all {} attempts were used", self.limit)
        };
        let last = self
            .history
            .last()
            .map(|r| match &r.outcome_code {
                Some(code) => format!("; last attempt on `{}` failed with {code}", r.target),
                None => format!("; last attempt on `{}` ended {:?}", r.target, r.status),
            })
            .unwrap_or_default();
        let attempts: Vec<Value> = self.history.iter().map(AttemptRecord::to_json).collect();
        ToolOutcome::from_code(
            ErrorCode::BudgetExhausted,
            format!("gave up: {which}{last}"),
        )
        .with_data(json!({ "attempts": attempts }))
    }
}

/// A per-message budget that every retry and fallback also charges.
///
/// Implementations are shared between the session and the calls it makes,
/// so the methods take `&self` and must be thread-safe.
pub trait IterationBudget: Send + Sync {
    /// Takes one iteration; `false` when none is left.
    fn try_consume(&self) -> bool;

    /// Iterations left.
    fn remaining(&self) -> u32;
}

/// A budget that never runs out, for callers outside any session (tests,
/// one-off tool calls from the CLI).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnlimitedIterations;

impl IterationBudget for UnlimitedIterations {
    fn try_consume(&self) -> bool {
        true
    }

    fn remaining(&self) -> u32 {
        u32::MAX
    }
}

/// A lock-free countdown of iterations.
#[derive(Debug, Default)]
pub struct AtomicIterationBudget {
    left: AtomicU32,
}

impl AtomicIterationBudget {
    /// A budget of `limit` iterations.
    pub fn new(limit: u32) -> Self {
        Self {
            left: AtomicU32::new(limit),
        }
    }
}

impl IterationBudget for AtomicIterationBudget {
    fn try_consume(&self) -> bool {
        // A plain fetch_sub would wrap below zero under contention; the
        // update only succeeds while something is left.
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    fn remaining(&self) -> u32 {
        self.left.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::sync::Arc;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn consumes_up_to_the_limit() {
        let mut b = AttemptBudget::new(2);
        assert!(b.try_consume());
        assert!(b.try_consume());
        assert!(!b.try_consume());
        assert_eq!((b.used(), b.remaining()), (2, 0));
        assert!(!AttemptBudget::new(0).try_consume());
    }

    #[test]
    fn exhausted_outcome_lists_every_attempt() {
        let mut b = AttemptBudget::new(2);
        assert!(b.try_consume());
        b.record("primary", &ToolOutcome::timeout("slow"), Duration::ZERO);
        assert!(b.try_consume());
        let refused = ToolOutcome::from_code(ErrorCode::ConnectionRefused, "no");
        b.record("backup", &refused, ms(250));
        assert!(!b.try_consume());

        let o = b.exhausted_outcome();
        assert_eq!(o.code, Some(ErrorCode::BudgetExhausted));
        assert!(!o.retryable, "retrying would only spend more");
        assert!(o.message.contains("all 2 attempts"), "{}", o.message);
        assert!(o.message.contains("backup") && o.message.contains("CONNECTION_REFUSED"));
        assert_eq!(
            o.data,
            json!({"attempts": [
                {"attempt": 1, "target": "primary", "code": "ETIMEDOUT",
                 "status": "timeout", "delay_before_ms": 0},
                {"attempt": 2, "target": "backup", "code": "CONNECTION_REFUSED",
                 "status": "error", "delay_before_ms": 250},
            ]})
        );
        // The list survives the outcome's own wire form.
        let wire: ToolOutcome = serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
        assert_eq!(wire.data["attempts"][1]["target"], "backup");
    }

    #[test]
    fn session_budget_is_charged_and_refusal_charges_neither() {
        let session = AtomicIterationBudget::new(1);
        let mut b = AttemptBudget::new(5);
        assert!(b.try_consume_with(&session));
        assert_eq!((b.used(), session.remaining()), (1, 0));
        assert!(!b.try_consume_with(&session));
        assert_eq!(b.used(), 1, "a refused session must not spend the call");
        assert!(b.exhausted_outcome().message.contains("session"));

        // A spent call must not spend the session.
        let session = AtomicIterationBudget::new(3);
        let mut spent = AttemptBudget::new(0);
        assert!(!spent.try_consume_with(&session));
        assert_eq!(session.remaining(), 3);
        assert!(spent.exhausted_outcome().message.contains("all 0 attempts"));
    }

    #[test]
    fn unlimited_never_refuses() {
        let mut b = AttemptBudget::new(3);
        for _ in 0..3 {
            assert!(b.try_consume_with(&UnlimitedIterations));
        }
        assert!(!b.try_consume_with(&UnlimitedIterations));
        assert_eq!(UnlimitedIterations.remaining(), u32::MAX);
    }

    #[test]
    fn atomic_budget_never_goes_below_zero_under_contention() {
        let budget = Arc::new(AtomicIterationBudget::new(100));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let budget = Arc::clone(&budget);
                std::thread::spawn(move || (0..50).filter(|_| budget.try_consume()).count())
            })
            .collect();
        let granted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(granted, 100);
        assert_eq!(budget.remaining(), 0);
        let shared: Arc<dyn IterationBudget> = budget;
        assert!(!shared.try_consume());
    }
}
