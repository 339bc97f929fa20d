//! Recovery policy: when to retry, how long to wait, when to stop calling
//! an endpoint, where to fall back, and how much all of it may cost.
//!
//! A retry loop that classifies, sleeps, jitters and counts in one function
//! can only be tested by running it, with real time and real failures. So
//! the policy here is a set of plain values and pure functions, and the
//! actors that make calls only carry out what they decide. None of them
//! reads a clock or a random number generator: the current time comes in
//! as a `now: Instant` and randomness as a `unit: f64` in `0.0..1.0`, so
//! tests drive them with a fake clock and exact jitter.
//!
//! Recovery is bounded at four levels, because each level sees a different
//! way of doing too much:
//!
//! | limit                | scope                    | stops                                  |
//! |----------------------|--------------------------|----------------------------------------|
//! | [`RetryPolicy`]      | one call, one target     | hammering one target from one call     |
//! | [`AttemptBudget`]    | one call, all targets    | retries times fallbacks multiplying    |
//! | [`IterationBudget`]  | one inbound message      | a session looping on recovery          |
//! | [`RetryBudget`], [`ConcurrencyCap`], [`CircuitBreaker`], [`NotBefore`] | one endpoint, all sessions | retry storms, calls to a dead endpoint, calls inside a peer's `Retry-After` |
//!
//! The per-endpoint values live together in [`Endpoints`] (see [`endpoint`]),
//! shared by every session in the process.
//!
//! [`next_step`] combines an outcome with the call's state into one
//! decision (retry, fall back, escalate, give up), and [`may_reissue`]
//! keeps that decision from ever repeating a non-idempotent effect.

pub mod attempts;
pub mod breaker;
pub mod budget;
pub mod chunking;
pub mod endpoint;
pub mod fallback;
pub mod retry;
pub mod safety;

pub use attempts::{
    AtomicIterationBudget, AttemptBudget, AttemptRecord, IterationBudget, UnlimitedIterations,
};
pub use breaker::{
    Admission, BreakerError, BreakerState, CircuitBreaker, Transition, counts_against_endpoint,
    rejected_outcome,
};
pub use budget::{BudgetError, ConcurrencyCap, Permit, RetryBudget};
pub use chunking::{ChunkError, ChunkPolicy, should_chunk};
pub use endpoint::{
    Admitted, DispatchConfig, DispatchConfigError, ENDPOINTS_SWEEP_AT, EndpointHealth, Endpoints,
    Gate, NotBefore, admit, asked_pause,
};
pub use fallback::{FallbackChain, FallbackError};
pub use retry::{RetryConfig, RetryPolicy, RetryPolicyError};
pub use safety::{CallState, Next, Phase, classify_phase, may_reissue, next_step};
