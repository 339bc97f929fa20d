//! How long to wait before re-issuing a failed call to the same target.
//!
//! Retrying at once against an endpoint that just failed mostly hits it
//! while it is still failing, and many sessions that fail together would
//! retry together. So the wait doubles from `base` with each retry, up to
//! `max_delay`, and is stretched by a random factor so callers spread out.
//!
//! The peer sometimes knows better than any formula: a `429` or `503` with
//! `Retry-After` says when it expects to serve again, and retrying earlier
//! only earns another refusal. An outcome's `retry_after` therefore
//! *replaces* the computed delay. It is still bounded by `max_retry_after`,
//! because a peer that says "come back in an hour" would otherwise park a
//! session for an hour on its word alone.
//!
//! Both bounds apply before jitter, as in the supervisors' restart backoff,
//! so jitter keeps spreading callers even when every one of them was told
//! the same `Retry-After` or has reached the cap; a wait can therefore
//! exceed a bound by at most the jitter factor.
//!
//! `max_attempts` bounds re-issues of one call to one target. It is the
//! cheap, local limit; the shared [`RetryBudget`](super::RetryBudget) is the
//! one that protects an endpoint from many sessions at once.

use std::time::Duration;

use crate::outcome::ToolOutcome;

/// The settings a [`RetryPolicy`] is built from, named so that two
/// durations cannot be swapped by position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    /// Attempts in all, the first included; 1 means never retry.
    pub max_attempts: u32,
    /// The delay before the first retry, before jitter.
    pub base: Duration,
    /// The longest computed delay, before jitter.
    pub max_delay: Duration,
    /// How much longer than computed a delay may be: 0.2 is up to 20 %.
    pub jitter: f64,
    /// The longest a peer's `retry_after` is honoured, before jitter.
    pub max_retry_after: Duration,
}

impl Default for RetryConfig {
    /// Three attempts, 200 ms doubling to 10 s, 20 % jitter, and a peer's
    /// `Retry-After` honoured up to one minute.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            jitter: 0.2,
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// A [`RetryConfig`] that cannot be used; each variant names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetryPolicyError {
    /// `max_attempts` is zero, so not even the first call could be made.
    #[error("max_attempts must be at least 1")]
    MaxAttempts,
    /// `base` is zero, so retries would not be spaced out at all.
    #[error("base must be non-zero")]
    Base,
    /// `max_delay` is below `base`.
    #[error("max_delay {max_delay:?} is below base {base:?}")]
    MaxDelay {
        /// The base given.
        base: Duration,
        /// The maximum given.
        max_delay: Duration,
    },
    /// `jitter` is negative, not finite, or above 1.
    #[error("jitter {0} must be within 0.0..=1.0")]
    Jitter(f64),
}

impl RetryPolicyError {
    /// The name of the offending [`RetryConfig`] field, for config errors
    /// that point at the line to fix.
    pub fn field(&self) -> &'static str {
        match self {
            Self::MaxAttempts => "max_attempts",
            Self::Base => "base",
            Self::MaxDelay { .. } => "max_delay",
            Self::Jitter(_) => "jitter",
        }
    }
}

/// A validated retry schedule. See the module docs for the rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    config: RetryConfig,
}

impl RetryPolicy {
    /// Validates `config`.
    ///
    /// # Errors
    /// [`RetryPolicyError`] naming the first bad field.
    pub fn new(config: RetryConfig) -> Result<Self, RetryPolicyError> {
        if config.max_attempts == 0 {
            return Err(RetryPolicyError::MaxAttempts);
        }
        if config.base.is_zero() {
            return Err(RetryPolicyError::Base);
        }
        if config.max_delay < config.base {
            return Err(RetryPolicyError::MaxDelay {
                base: config.base,
                max_delay: config.max_delay,
            });
        }
        if !config.jitter.is_finite() || !(0.0..=1.0).contains(&config.jitter) {
            return Err(RetryPolicyError::Jitter(config.jitter));
        }
        Ok(Self { config })
    }

    /// The settings this policy was built from.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.config.max_attempts
    }

    /// Whether another attempt is allowed after `attempts_made` (the first
    /// included).
    pub fn attempts_left(&self, attempts_made: u32) -> bool {
        attempts_made < self.config.max_attempts
    }

    /// The wait before retry number `attempt` (0 for the first retry) after
    /// `outcome`.
    ///
    /// `unit` is a random value in `0.0..1.0` (out-of-range values are
    /// clamped, NaN counts as 0). Without a `retry_after` the result lies in
    /// `[d, d * (1 + jitter)]` where `d = min(max_delay, base * 2^attempt)`;
    /// with one, `d = min(retry_after, max_retry_after)`.
    pub fn delay(&self, attempt: u32, outcome: &ToolOutcome, unit: f64) -> Duration {
        let bounded = match outcome.retry_after {
            Some(after) => after.min(self.config.max_retry_after),
            None => self.exponential(attempt),
        };
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        bounded.mul_f64(1.0 + self.config.jitter * unit)
    }

    fn exponential(&self, attempt: u32) -> Duration {
        // Past 2^31 every realistic base is far above any cap, so clamping
        // the shift keeps the arithmetic finite without changing results.
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.config
            .base
            .checked_mul(factor)
            .map_or(self.config.max_delay, |d| d.min(self.config.max_delay))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::catalog::ErrorCode;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy::new(RetryConfig {
            max_attempts: 4,
            base: ms(100),
            max_delay: ms(1000),
            jitter,
            max_retry_after: ms(5000),
        })
        .unwrap()
    }

    fn refused() -> ToolOutcome {
        ToolOutcome::from_code(ErrorCode::ConnectionRefused, "refused")
    }

    #[test]
    fn doubles_from_base_and_caps_at_max_delay() {
        let p = policy(0.0);
        let delays: Vec<_> = (0..6).map(|a| p.delay(a, &refused(), 0.7)).collect();
        assert_eq!(
            delays,
            vec![ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(p.delay(u32::MAX, &refused(), 0.0), ms(1000));
    }

    #[test]
    fn jitter_only_stretches_and_stays_within_its_factor() {
        let p = policy(0.5);
        assert_eq!(p.delay(0, &refused(), 0.0), ms(100));
        assert_eq!(p.delay(0, &refused(), 1.0), ms(150));
        assert_eq!(p.delay(0, &refused(), 7.0), ms(150), "unit is clamped");
        assert_eq!(p.delay(0, &refused(), -1.0), ms(100), "unit is clamped");
        assert_eq!(p.delay(0, &refused(), f64::NAN), ms(100));
        assert_eq!(
            p.delay(9, &refused(), 1.0),
            ms(1500),
            "cap is before jitter"
        );
    }

    #[test]
    fn retry_after_overrides_the_schedule_in_both_directions() {
        let p = policy(0.0);
        // Shorter than the schedule would give at attempt 3 (800 ms)...
        let soon = refused().with_retry_after(ms(50));
        assert_eq!(p.delay(3, &soon, 0.0), ms(50));
        // ...and longer than max_delay: the peer's word wins over the cap.
        let later = refused().with_retry_after(ms(3000));
        assert_eq!(p.delay(0, &later, 0.0), ms(3000));
    }

    #[test]
    fn retry_after_is_capped_by_max_retry_after_then_jittered() {
        let p = policy(0.2);
        let hour = refused().with_retry_after(Duration::from_secs(3600));
        assert_eq!(p.delay(0, &hour, 0.0), ms(5000));
        assert_eq!(p.delay(0, &hour, 1.0), ms(6000));
    }

    #[test]
    fn attempts_left_counts_the_first_attempt() {
        let p = policy(0.0);
        assert!(p.attempts_left(1));
        assert!(p.attempts_left(3));
        assert!(!p.attempts_left(4));
        let once = RetryPolicy::new(RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        })
        .unwrap();
        assert!(!once.attempts_left(1), "1 means never retry");
    }

    #[test]
    fn rejects_each_bad_field_by_name() {
        let ok = RetryConfig::default();
        assert!(RetryPolicy::new(ok).is_ok());
        let cases = [
            (
                RetryConfig {
                    max_attempts: 0,
                    ..ok
                },
                "max_attempts",
            ),
            (
                RetryConfig {
                    base: Duration::ZERO,
                    ..ok
                },
                "base",
            ),
            (
                RetryConfig {
                    max_delay: ok.base / 2,
                    ..ok
                },
                "max_delay",
            ),
            (RetryConfig { jitter: 1.5, ..ok }, "jitter"),
            (RetryConfig { jitter: -0.1, ..ok }, "jitter"),
            (
                RetryConfig {
                    jitter: f64::INFINITY,
                    ..ok
                },
                "jitter",
            ),
        ];
        for (config, field) in cases {
            let err = RetryPolicy::new(config).unwrap_err();
            assert_eq!(err.field(), field);
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
