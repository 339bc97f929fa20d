//! Exponential backoff between restarts of one child.
//!
//! OTP restarts a child at once. For a child whose failures come from outside
//! (a server process that will not start, an endpoint that is down), restarting
//! at once only burns the restart intensity in microseconds. Backoff spaces the
//! attempts out, with Akka's `BackoffSupervisor` semantics: the delay doubles
//! from `min` up to `max`, is stretched by a random factor so that many
//! children do not restart in lock step, and the attempt count resets once the
//! child has stayed up for `reset_after`. The computation is a pure function of
//! the attempt number and a random unit value, so tests drive it exactly.

use std::time::Duration;

/// A backoff policy that cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackoffError {
    /// `min` is zero: the first restart would not be delayed at all.
    #[error("min backoff must be non-zero")]
    ZeroMin,
    /// `min` is greater than `max`.
    #[error("min backoff {min:?} exceeds max backoff {max:?}")]
    MinAboveMax {
        /// The minimum given.
        min: Duration,
        /// The maximum given.
        max: Duration,
    },
    /// The jitter factor is negative, not finite, or above 1.
    #[error("jitter factor {0} must be within 0.0..=1.0")]
    Jitter(f64),
}

/// Exponential backoff with jitter and a reset after a stable period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: f64,
    reset_after: Duration,
}

impl Backoff {
    /// A backoff from `min` doubling to `max`, each delay stretched by up to
    /// `jitter` (0.2 = up to 20 % longer). The attempt count resets after the
    /// child has run for `max` (change it with [`Backoff::reset_after`]).
    ///
    /// # Errors
    /// [`BackoffError`] when `min` is zero or above `max`, or `jitter` is
    /// outside `0.0..=1.0`.
    pub fn new(min: Duration, max: Duration, jitter: f64) -> Result<Self, BackoffError> {
        if min.is_zero() {
            return Err(BackoffError::ZeroMin);
        }
        if min > max {
            return Err(BackoffError::MinAboveMax { min, max });
        }
        if !jitter.is_finite() || !(0.0..=1.0).contains(&jitter) {
            return Err(BackoffError::Jitter(jitter));
        }
        Ok(Self {
            min,
            max,
            jitter,
            reset_after: max,
        })
    }

    /// After running this long, a child's next failure starts from `min` again.
    pub fn reset_after(mut self, stable: Duration) -> Self {
        self.reset_after = stable;
        self
    }

    /// The shortest delay.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The longest delay before jitter.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The jitter factor.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// How long a child must stay up for its attempt count to reset.
    pub fn stable_after(&self) -> Duration {
        self.reset_after
    }

    /// The delay before restart number `attempt` (0 for the first).
    ///
    /// `unit` is a random value in `0.0..1.0`; the result lies within
    /// `[base, base * (1 + jitter)]` where `base = min(max, min * 2^attempt)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let base = self
            .min
            .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .map_or(self.max, |d| d.min(self.max));
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        base.mul_f64(1.0 + self.jitter * unit)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_from_min_and_caps_at_max() {
        let b = Backoff::new(ms(10), ms(100), 0.0).unwrap();
        let delays: Vec<_> = (0..6).map(|a| b.delay(a, 0.5)).collect();
        assert_eq!(
            delays,
            vec![ms(10), ms(20), ms(40), ms(80), ms(100), ms(100)]
        );
        assert_eq!(b.delay(u32::MAX, 0.0), ms(100));
    }

    #[test]
    fn jitter_stretches_within_bounds() {
        let b = Backoff::new(ms(100), ms(1000), 0.5).unwrap();
        assert_eq!(b.delay(0, 0.0), ms(100));
        assert_eq!(b.delay(0, 1.0), ms(150));
        assert_eq!(b.delay(4, 1.0), ms(1500));
        assert_eq!(b.delay(0, f64::NAN), ms(100));
    }

    #[test]
    fn rejects_bad_bounds() {
        assert_eq!(
            Backoff::new(Duration::ZERO, ms(1), 0.0),
            Err(BackoffError::ZeroMin)
        );
        assert!(matches!(
            Backoff::new(ms(2), ms(1), 0.0),
            Err(BackoffError::MinAboveMax { .. })
        ));
        assert_eq!(
            Backoff::new(ms(1), ms(2), 1.5),
            Err(BackoffError::Jitter(1.5))
        );
        assert!(Backoff::new(ms(1), ms(2), f64::NAN).is_err());
    }
}
