//! Limits shared by every caller of one endpoint: a retry budget and a cap
//! on calls in flight.
//!
//! # Why budgets and not max retries?
//!
//! A per-call limit ("retry up to 3 times") looks harmless from one call's
//! point of view. But hale runs many sessions against the same model
//! endpoints and MCP servers, and when an endpoint starts failing, every one
//! of them starts retrying at once: with three retries each, a struggling
//! endpoint suddenly receives up to four times its normal load, exactly when
//! it is least able to serve it. The retries keep it down, which causes more
//! retries. A limit per call cannot see this, because the storm is made of
//! calls that each stayed within their limit.
//!
//! A [`RetryBudget`] is shared by all callers of one endpoint and bounds
//! retries *in proportion to normal traffic*: each original call deposits,
//! each retry withdraws, and a retry costs `1 / retry_ratio` deposits, so
//! with a ratio of 0.2 retries add at most 20 % to the load the endpoint was
//! asked to carry anyway. A small floor (`min_per_sec`) lets a quiet
//! endpoint still retry now and then. Both decay over a sliding `ttl`, so
//! the budget tracks recent traffic, not all of history. When the budget is
//! empty the caller does not wait: it fails fast with a retryable outcome
//! and lets the agent (or a fallback) decide. This is the design of
//! Finagle's and tower's retry budgets.
//!
//! Deposit once per original call, never for a retry: a retry that earned a
//! deposit would fund the next retry, and the storm would pay for itself.
//! Depositing only on success is a stricter variant the caller may choose;
//! the budget counts whatever it is given.
//!
//! A [`ConcurrencyCap`] is the other half: however the calls are spread in
//! time, no more than `max` are in flight against the endpoint at once.
//!
//! Both are `Send + Sync` and cheap: the budget is ten counters behind one
//! short lock, the cap a single atomic.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The window is split into this many slots. Expiry is per slot, so a
/// deposit counts for between `ttl * (SLOTS - 1) / SLOTS` and `ttl`; ten
/// keeps that error at a tenth of the window for a fixed, small cost.
const SLOTS: usize = 10;

/// The shortest window: one millisecond per slot. Anything shorter would
/// expire deposits before a retry's backoff could even elapse.
const MIN_TTL: Duration = Duration::from_millis(SLOTS as u64);

/// What one deposit is worth. Scaling by 1000 lets a ratio such as 0.3 cost
/// a whole number of units per withdrawal with negligible rounding.
const DEPOSIT_UNITS: i64 = 1000;

/// The largest ratio: above it a withdrawal would cost less than one unit.
const MAX_RATIO: f64 = 1000.0;

/// A budget or cap that cannot be built; each variant names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    /// `ttl` is too short to be split into slots.
    #[error("ttl {0:?} is shorter than the minimum of 10ms")]
    Ttl(Duration),
    /// `retry_ratio` is negative, not finite, or above 1000.
    #[error("retry_ratio {0} must be within 0.0..=1000.0")]
    RetryRatio(f64),
    /// `max_in_flight` is zero, so no call could ever be made.
    #[error("max_in_flight must be at least 1")]
    MaxInFlight,
}

impl BudgetError {
    /// The name of the offending setting.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Ttl(_) => "ttl",
            Self::RetryRatio(_) => "retry_ratio",
            Self::MaxInFlight => "max_in_flight",
        }
    }
}

/// A fleet-wide retry budget for one endpoint; share it with `Arc`. See the
/// module docs for why it exists and how to feed it.
pub struct RetryBudget {
    ttl: Duration,
    min_per_sec: u32,
    retry_ratio: f64,
    deposit: i64,
    withdraw: i64,
    reserve: i64,
    slot_nanos: u128,
    window: Mutex<Window>,
}

/// The deposits minus withdrawals of each recent slot.
///
/// Invariant: `slots[i % SLOTS]` holds the net of absolute slot `i` for
/// every `i` in `current - SLOTS + 1 ..= current`; older slots are zeroed
/// before their storage is reused.
struct Window {
    /// The first instant the budget saw; slots are numbered from it, so the
    /// budget never needs a clock of its own.
    origin: Option<Instant>,
    current: u64,
    slots: [i64; SLOTS],
}

impl Window {
    /// Moves the window forward to `now` and returns the balance in it.
    fn advance(&mut self, now: Instant, slot_nanos: u128) -> i64 {
        let origin = *self.origin.get_or_insert(now);
        let index = u64::try_from(now.saturating_duration_since(origin).as_nanos() / slot_nanos)
            .unwrap_or(u64::MAX);
        // Callers on other threads may pass a slightly older `now` than the
        // last one seen; the window never moves back, they share the
        // current slot.
        if index > self.current {
            let steps = (index - self.current).min(SLOTS as u64);
            for step in 1..=steps {
                self.slots[slot_of(self.current + step)] = 0;
            }
            self.current = index;
        }
        self.slots.iter().sum()
    }
}

fn slot_of(index: u64) -> usize {
    // The remainder is below SLOTS, so it always fits.
    usize::try_from(index % SLOTS as u64).unwrap_or(0)
}

impl RetryBudget {
    /// A budget allowing retries of `retry_ratio` times the calls deposited
    /// in the last `ttl`, plus `min_per_sec` retries a second regardless.
    ///
    /// A ratio of 0 allows only the floor.
    ///
    /// # Errors
    /// [`BudgetError::Ttl`] when `ttl` is under 10 ms,
    /// [`BudgetError::RetryRatio`] when the ratio is negative, not finite or
    /// above 1000.
    pub fn new(ttl: Duration, min_per_sec: u32, retry_ratio: f64) -> Result<Self, BudgetError> {
        if ttl < MIN_TTL {
            return Err(BudgetError::Ttl(ttl));
        }
        if !retry_ratio.is_finite() || !(0.0..=MAX_RATIO).contains(&retry_ratio) {
            return Err(BudgetError::RetryRatio(retry_ratio));
        }
        let (deposit, withdraw) = if retry_ratio == 0.0 {
            // Deposits buy nothing; withdrawals draw on the floor alone.
            (0, 1)
        } else {
            // The ratio is within (0, 1000], so the cost is within
            // [1, +inf) and rounding to the nearest unit keeps 0.2 at
            // exactly five deposits.
            // `as` saturates, and the cost is finite because the ratio is
            // not zero.
            let cost = (DEPOSIT_UNITS as f64 / retry_ratio).round() as i64;
            (DEPOSIT_UNITS, cost.max(1))
        };
        let reserve = u128::from(min_per_sec)
            .saturating_mul(ttl.as_millis())
            .saturating_mul(withdraw.unsigned_abs().into())
            / 1000;
        Ok(Self {
            ttl,
            min_per_sec,
            retry_ratio,
            deposit,
            withdraw,
            reserve: i64::try_from(reserve).unwrap_or(i64::MAX),
            slot_nanos: (ttl.as_nanos() / SLOTS as u128).max(1),
            window: Mutex::new(Window {
                origin: None,
                current: 0,
                slots: [0; SLOTS],
            }),
        })
    }

    /// An empty budget with the same settings, for another endpoint.
    pub fn fresh(&self) -> Self {
        Self {
            ttl: self.ttl,
            min_per_sec: self.min_per_sec,
            retry_ratio: self.retry_ratio,
            deposit: self.deposit,
            withdraw: self.withdraw,
            reserve: self.reserve,
            slot_nanos: self.slot_nanos,
            window: Mutex::new(Window {
                origin: None,
                current: 0,
                slots: [0; SLOTS],
            }),
        }
    }

    /// The sliding window deposits and withdrawals count in.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Retries a second allowed with no deposits at all.
    pub fn min_per_sec(&self) -> u32 {
        self.min_per_sec
    }

    /// Retries allowed per deposited call.
    pub fn retry_ratio(&self) -> f64 {
        self.retry_ratio
    }

    /// Records one original call (not a retry) at `now`.
    pub fn deposit(&self, now: Instant) {
        let mut window = self.lock();
        window.advance(now, self.slot_nanos);
        let slot = slot_of(window.current);
        window.slots[slot] = window.slots[slot].saturating_add(self.deposit);
    }

    /// Takes one retry from the budget at `now`; `false` means the budget
    /// is spent and the retry must not be made.
    pub fn withdraw(&self, now: Instant) -> bool {
        let mut window = self.lock();
        let balance = window.advance(now, self.slot_nanos);
        if balance.saturating_add(self.reserve) < self.withdraw {
            return false;
        }
        let slot = slot_of(window.current);
        window.slots[slot] = window.slots[slot].saturating_sub(self.withdraw);
        true
    }

    /// How many retries [`withdraw`](Self::withdraw) would grant at `now`,
    /// for metrics and status pages.
    pub fn remaining(&self, now: Instant) -> u64 {
        let balance = self.lock().advance(now, self.slot_nanos);
        let available = balance.saturating_add(self.reserve).max(0);
        available.unsigned_abs() / self.withdraw.unsigned_abs()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // Every update leaves the counters consistent before anything can
        // panic, so a poisoned lock still guards valid state; refusing to
        // serve would turn one panic into an outage of every caller.
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ttl", &self.ttl)
            .field("min_per_sec", &self.min_per_sec)
            .field("retry_ratio", &self.retry_ratio)
            .finish_non_exhaustive()
    }
}

/// A cap on calls in flight against one endpoint. Clones share the count.
#[derive(Debug, Clone)]
pub struct ConcurrencyCap {
    inner: Arc<CapInner>,
}

#[derive(Debug)]
struct CapInner {
    max: usize,
    in_flight: AtomicUsize,
}

impl ConcurrencyCap {
    /// A cap of `max_in_flight` concurrent calls.
    ///
    /// # Errors
    /// [`BudgetError::MaxInFlight`] when `max_in_flight` is zero.
    pub fn new(max_in_flight: usize) -> Result<Self, BudgetError> {
        if max_in_flight == 0 {
            return Err(BudgetError::MaxInFlight);
        }
        Ok(Self {
            inner: Arc::new(CapInner {
                max: max_in_flight,
                in_flight: AtomicUsize::new(0),
            }),
        })
    }

    /// A permit for one call, or `None` when `max` calls are already in
    /// flight. The slot is freed when the permit is dropped, so a call that
    /// panics or is cancelled cannot leak it.
    pub fn try_acquire(&self) -> Option<Permit> {
        let max = self.inner.max;
        self.inner
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                inner: Arc::clone(&self.inner),
            })
    }

    /// A cap with the same limit and its own count (a clone shares the
    /// count), for another endpoint.
    pub fn fresh(&self) -> Self {
        Self {
            inner: Arc::new(CapInner {
                max: self.inner.max,
                in_flight: AtomicUsize::new(0),
            }),
        }
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.inner.max
    }
}

/// One call's slot in a [`ConcurrencyCap`], released on drop.
#[derive(Debug)]
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct Permit {
    inner: Arc<CapInner>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::sync::Barrier;
    use std::sync::atomic::AtomicU32;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain(budget: &RetryBudget, now: Instant) -> u32 {
        let mut granted = 0;
        while budget.withdraw(now) {
            granted += 1;
            assert!(granted <= 1_000_000, "budget never ran out");
        }
        granted
    }

    #[test]
    fn ratio_of_deposits_is_granted_then_refused() {
        let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.2).unwrap();
        let t0 = Instant::now();
        for i in 0..100 {
            budget.deposit(t0 + ms(i));
        }
        assert_eq!(budget.remaining(t0 + ms(100)), 20);
        assert_eq!(drain(&budget, t0 + ms(100)), 20);
        assert!(!budget.withdraw(t0 + ms(200)));
        // A new deposit buys a fifth of a retry, so five buy one.
        for _ in 0..4 {
            budget.deposit(t0 + ms(300));
        }
        assert!(!budget.withdraw(t0 + ms(300)));
        budget.deposit(t0 + ms(300));
        assert!(budget.withdraw(t0 + ms(300)));
    }

    #[test]
    fn uneven_ratio_rounds_to_the_nearest_unit() {
        let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.3).unwrap();
        let t0 = Instant::now();
        for _ in 0..100 {
            budget.deposit(t0);
        }
        assert_eq!(drain(&budget, t0), 30);
    }

    #[test]
    fn floor_allows_min_per_sec_times_ttl_with_no_deposits() {
        let budget = RetryBudget::new(Duration::from_secs(10), 3, 0.2).unwrap();
        let t0 = Instant::now();
        assert_eq!(drain(&budget, t0), 30);
        // Zero ratio: the floor is all there is, deposits add nothing.
        let floor_only = RetryBudget::new(Duration::from_secs(2), 5, 0.0).unwrap();
        for _ in 0..1000 {
            floor_only.deposit(t0);
        }
        assert_eq!(drain(&floor_only, t0), 10);
        // No floor, no deposits: nothing.
        let none = RetryBudget::new(Duration::from_secs(10), 0, 0.2).unwrap();
        assert!(!none.withdraw(t0));
    }

    #[test]
    fn deposits_expire_after_ttl() {
        let ttl = Duration::from_secs(10);
        let slot = ttl / SLOTS as u32;
        let budget = RetryBudget::new(ttl, 0, 0.5).unwrap();
        let t0 = Instant::now();
        for _ in 0..10 {
            budget.deposit(t0);
        }
        // Still counted just before the last slot boundary...
        assert_eq!(budget.remaining(t0 + ttl - slot - ms(1)), 5);
        assert_eq!(budget.remaining(t0 + ttl - ms(1)), 5);
        // ...and gone once a full ttl has passed.
        assert_eq!(budget.remaining(t0 + ttl), 0);
        assert!(!budget.withdraw(t0 + ttl));
        // Long gaps (many windows) clear everything too.
        budget.deposit(t0 + ttl * 50);
        budget.deposit(t0 + ttl * 50);
        assert_eq!(budget.remaining(t0 + ttl * 50), 1);
    }

    #[test]
    fn spent_floor_refills_once_withdrawals_age_out() {
        let ttl = Duration::from_secs(1);
        let budget = RetryBudget::new(ttl, 4, 0.2).unwrap();
        let t0 = Instant::now();
        assert_eq!(drain(&budget, t0), 4);
        assert!(!budget.withdraw(t0 + ms(500)));
        assert_eq!(drain(&budget, t0 + ttl), 4);
    }

    #[test]
    fn a_late_instant_from_another_thread_does_not_rewind_the_window() {
        let ttl = Duration::from_secs(10);
        let slot = ttl / SLOTS as u32;
        let budget = RetryBudget::new(ttl, 0, 1.0).unwrap();
        let t0 = Instant::now();
        budget.deposit(t0);
        budget.deposit(t0 + ttl * 2);
        // An older instant joins the current slot. Moving the window back
        // to it would make the next call clear the live slot it skips over.
        budget.deposit(t0 + ttl * 2 - slot * 3);
        assert_eq!(budget.remaining(t0 + ttl * 2), 2);
    }

    #[test]
    fn two_hundred_threads_never_overdraw() {
        let budget = Arc::new(RetryBudget::new(Duration::from_secs(10), 1, 0.2).unwrap());
        let t0 = Instant::now();
        for _ in 0..100 {
            budget.deposit(t0);
        }
        // 100 deposits * 0.2 + 1/s * 10 s floor.
        let capacity = 30;
        let granted = Arc::new(AtomicU32::new(0));
        let start = Arc::new(Barrier::new(200));
        let handles: Vec<_> = (0..200)
            .map(|i| {
                let (budget, granted, start) = (
                    Arc::clone(&budget),
                    Arc::clone(&granted),
                    Arc::clone(&start),
                );
                std::thread::spawn(move || {
                    start.wait();
                    for j in 0..5 {
                        if budget.withdraw(t0 + ms(i % 7 + j)) {
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(granted.load(Ordering::Relaxed), capacity);
        assert_eq!(budget.remaining(t0 + ms(20)), 0);
    }

    #[test]
    fn rejects_bad_settings_by_name() {
        let err = RetryBudget::new(ms(5), 1, 0.2).unwrap_err();
        assert_eq!(err.field(), "ttl");
        assert!(RetryBudget::new(ms(10), 1, 0.2).is_ok());
        for ratio in [-0.1, f64::NAN, f64::INFINITY, 1000.5] {
            let err = RetryBudget::new(Duration::from_secs(1), 1, ratio).unwrap_err();
            assert_eq!(err.field(), "retry_ratio", "{ratio}");
        }
        assert!(RetryBudget::new(Duration::from_secs(1), 1, 1000.0).is_ok());
        assert_eq!(ConcurrencyCap::new(0).unwrap_err().field(), "max_in_flight");
    }

    #[test]
    fn budget_and_cap_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RetryBudget>();
        assert_send_sync::<ConcurrencyCap>();
        assert_send_sync::<Permit>();
    }

    #[test]
    fn cap_refuses_beyond_max_and_frees_on_drop() {
        let cap = ConcurrencyCap::new(2).unwrap();
        let a = cap.try_acquire().unwrap();
        let shared = cap.clone();
        let b = shared.try_acquire().unwrap();
        assert!(cap.try_acquire().is_none(), "clones share the count");
        assert_eq!(cap.in_flight(), 2);
        drop(a);
        assert_eq!(cap.in_flight(), 1);
        let c = cap.try_acquire().unwrap();
        drop((b, c));
        assert_eq!(cap.in_flight(), 0);
    }

    #[test]
    fn cap_holds_under_contention() {
        let cap = ConcurrencyCap::new(3).unwrap();
        let peak = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let (cap, peak) = (cap.clone(), Arc::clone(&peak));
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        if let Some(_permit) = cap.try_acquire() {
                            peak.fetch_max(cap.in_flight(), Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 3);
        assert_eq!(cap.in_flight(), 0);
    }
}
