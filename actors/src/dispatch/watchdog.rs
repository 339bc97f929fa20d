//! A coarse deadline for every attempt, without a timer per attempt.
//!
//! Every attempt needs a backstop deadline (a tool that forgot its own
//! timeout must not hang a session), but a tokio timer per call is not
//! free: arming a timer sooner than the one the parked runtime driver is
//! waiting for wakes that driver, a cross-thread wake-up that measured
//! here at about twice the cost of the whole rest of the dispatch. A
//! backstop does not need millisecond precision, so one task per
//! dispatcher ticks at a fraction of the deadline and fires every attempt
//! that is overdue: an attempt costs a map insert and a oneshot, and ends
//! between `deadline` and `deadline + tick`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// The shortest tick, so a tiny deadline does not spin the task.
const MIN_TICK: Duration = Duration::from_millis(10);
/// The longest tick.
const MAX_TICK: Duration = Duration::from_secs(1);

/// Fires overdue attempts. Shared by one dispatcher's calls.
#[derive(Debug)]
pub(crate) struct Watchdog {
    tick: Duration,
    next_id: AtomicU64,
    entries: Mutex<HashMap<u64, (Instant, oneshot::Sender<()>)>>,
    started: OnceLock<()>,
}

/// Removes its attempt from the watchdog when dropped (the attempt ended
/// or was abandoned).
pub(crate) struct Watch {
    id: u64,
    watchdog: Arc<Watchdog>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.watchdog.lock().remove(&self.id);
    }
}

impl Watchdog {
    /// A watchdog for deadlines of about `deadline`: it ticks at a
    /// twentieth of it, between 10 ms and 1 s.
    pub(crate) fn new(deadline: Duration) -> Arc<Self> {
        Arc::new(Self {
            tick: (deadline / 20).clamp(MIN_TICK, MAX_TICK),
            next_id: AtomicU64::new(0),
            entries: Mutex::new(HashMap::new()),
            started: OnceLock::new(),
        })
    }

    /// Watches an attempt that must end by `deadline`; the receiver
    /// resolves when it is overdue.
    pub(crate) fn watch(self: &Arc<Self>, deadline: Instant) -> (Watch, oneshot::Receiver<()>) {
        self.started.get_or_init(|| {
            // Started on first use, inside the caller's runtime; it holds
            // only a weak reference and ends with the dispatcher.
            let weak = Arc::downgrade(self);
            tokio::spawn(run(weak, self.tick));
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (fire, fired) = oneshot::channel();
        self.lock().insert(id, (deadline, fire));
        (
            Watch {
                id,
                watchdog: Arc::clone(self),
            },
            fired,
        )
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, (Instant, oneshot::Sender<()>)>> {
        // Inserts and removes are single steps; a poisoned map is intact.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn run(watchdog: Weak<Watchdog>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(watchdog) = watchdog.upgrade() else {
            return;
        };
        let now = Instant::now();
        let overdue: Vec<oneshot::Sender<()>> = {
            let mut entries = watchdog.lock();
            let ids: Vec<u64> = entries
                .iter()
                .filter(|(_, (deadline, _))| *deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| entries.remove(&id).map(|(_, fire)| fire))
                .collect()
        };
        for fire in overdue {
            let _ = fire.send(());
        }
    }
}
