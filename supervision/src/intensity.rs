//! Restart intensity as a pure sliding window.
//!
//! OTP's `add_restart/3` is handed the clock and answers one question: does
//! this restart push the count within the period above the limit? Keeping it a
//! value with no clock of its own lets the supervisor and the per-child park
//! limit share it, and lets tests drive it with any instants they like.
//!
//! Unlike OTP 25, which rebuilds its list of restart times on every restart
//! (cost growing with recent restarts), the window keeps a deque and only pops
//! expired entries from the front.

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::spec::Intensity;

/// Whether a restart is within the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: go ahead.
    Within,
    /// The limit is exceeded: give up (or park).
    Exceeded,
}

/// The restarts recorded within the last `period`.
#[derive(Debug, Clone)]
pub struct RestartWindow {
    limit: Intensity,
    restarts: VecDeque<Instant>,
}

impl RestartWindow {
    /// An empty window for the given limit.
    pub fn new(limit: Intensity) -> Self {
        Self {
            limit,
            restarts: VecDeque::new(),
        }
    }

    /// Records a restart at `now` and says whether the limit still holds.
    ///
    /// More than `max_restarts` restarts within `period` (a restart exactly
    /// `period` old no longer counts) is [`Verdict::Exceeded`].
    pub fn add_restart(&mut self, now: Instant) -> Verdict {
        self.expire(now);
        self.restarts.push_back(now);
        if self.restarts.len() > self.limit.max_restarts as usize {
            Verdict::Exceeded
        } else {
            Verdict::Within
        }
    }

    /// Restarts still counted at `now`.
    pub fn count(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.restarts.len()
    }

    /// Forgets every recorded restart (after a successful probe, say).
    pub fn clear(&mut self) {
        self.restarts.clear();
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&oldest) = self.restarts.front() {
            if now.saturating_duration_since(oldest) >= self.limit.period {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn window(max: u32, secs: u64) -> RestartWindow {
        RestartWindow::new(Intensity::new(max, Duration::from_secs(secs)))
    }

    #[test]
    fn more_than_max_within_period_exceeds() {
        let t0 = Instant::now();
        let mut w = window(3, 5);
        for i in 0..3 {
            assert_eq!(w.add_restart(t0 + Duration::from_secs(i)), Verdict::Within);
        }
        assert_eq!(
            w.add_restart(t0 + Duration::from_secs(3)),
            Verdict::Exceeded
        );
    }

    #[test]
    fn old_restarts_expire() {
        let t0 = Instant::now();
        let mut w = window(2, 5);
        assert_eq!(w.add_restart(t0), Verdict::Within);
        assert_eq!(w.add_restart(t0 + Duration::from_secs(1)), Verdict::Within);
        // t0 is exactly one period old at t0+5s and no longer counts.
        assert_eq!(w.add_restart(t0 + Duration::from_secs(5)), Verdict::Within);
        assert_eq!(w.count(t0 + Duration::from_secs(5)), 2);
        assert_eq!(w.count(t0 + Duration::from_secs(100)), 0);
    }

    #[test]
    fn zero_max_gives_up_on_first_restart() {
        let mut w = window(0, 5);
        assert_eq!(w.add_restart(Instant::now()), Verdict::Exceeded);
    }

    #[test]
    fn clear_forgets() {
        let t0 = Instant::now();
        let mut w = window(1, 5);
        w.add_restart(t0);
        w.clear();
        assert_eq!(w.add_restart(t0), Verdict::Within);
    }
}
