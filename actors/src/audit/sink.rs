//! [`AuditSink`]: how producers hand events to the audit trail without
//! ever waiting for it.
//!
//! Events travel in three lanes that live outside the audit actor (so a
//! restarted actor picks up what its predecessor left queued):
//! - **events**, bounded: the everyday stream. When it is full (the store
//!   is slower than the producers, or the actor is down for long) an event
//!   below `error` is dropped and counted, because blocking a tool call to
//!   log it would be worse than losing a debug line.
//! - **failures**, unbounded: events at `error` or above are never dropped
//!   for lack of room. Memory is the bound; they are drained first.
//! - **durable**, unbounded: [`AuditHandle::record`](super::AuditHandle::record)'s
//!   events, each with a reply sent once it is committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot, watch};

use super::AuditError;
use crate::event::{Event, EventSink, Level};

/// Counters shared by the sink, the handle and every actor incarnation.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) committed: AtomicU64,
    pub(crate) in_doubt: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) batches: AtomicU64,
    /// committed + in doubt + lost: every accepted event ends up here once,
    /// so `flush` can wait for a count.
    pub(crate) settled: watch::Sender<u64>,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            in_doubt: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            settled: watch::Sender::new(0),
        }
    }

    pub(crate) fn settle(&self, n: u64) {
        self.settled.send_modify(|settled| *settled += n);
    }
}

/// An event sent through [`AuditHandle::record`](super::AuditHandle::record),
/// with the reply its caller waits for.
#[derive(Debug)]
pub(crate) struct Durable {
    pub(crate) event: Event,
    pub(crate) reply: oneshot::Sender<Result<u64, AuditError>>,
}

/// The receiving ends of the three lanes.
#[derive(Debug)]
pub(crate) struct Lanes {
    pub(crate) durable: mpsc::UnboundedReceiver<Durable>,
    pub(crate) failures: mpsc::UnboundedReceiver<Event>,
    pub(crate) events: mpsc::Receiver<Event>,
}

/// The [`EventSink`] that feeds the audit trail. Clones share the lanes.
///
/// `emit` never blocks and never fails: it is a `try_send` on the bounded
/// lane (or a send on the unbounded failure lane), nothing else.
#[derive(Debug, Clone)]
pub struct AuditSink {
    events: mpsc::Sender<Event>,
    failures: mpsc::UnboundedSender<Event>,
    counters: Arc<Counters>,
    min_level: Level,
}

/// The sending ends, kept by the handle for `record`.
pub(crate) struct Senders {
    pub(crate) sink: AuditSink,
    pub(crate) durable: mpsc::UnboundedSender<Durable>,
}

/// Makes the lanes: a bounded one of `capacity` events and two unbounded.
pub(crate) fn lanes(
    capacity: usize,
    min_level: Level,
    counters: Arc<Counters>,
) -> (Senders, Lanes) {
    let (events_tx, events) = mpsc::channel(capacity.max(1));
    let (failures_tx, failures) = mpsc::unbounded_channel();
    let (durable_tx, durable) = mpsc::unbounded_channel();
    (
        Senders {
            sink: AuditSink {
                events: events_tx,
                failures: failures_tx,
                counters,
                min_level,
            },
            durable: durable_tx,
        },
        Lanes {
            durable,
            failures,
            events,
        },
    )
}

impl AuditSink {
    /// The lowest level recorded.
    pub fn min_level(&self) -> Level {
        self.min_level
    }

    /// Events dropped so far (the bounded lane was full, or the audit
    /// trail was shut down).
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }
}

impl EventSink for AuditSink {
    fn emit(&self, event: Event) {
        if event.level < self.min_level {
            return;
        }
        let sent = if event.level >= Level::Error {
            self.failures.send(event).is_ok()
        } else {
            self.events.try_send(event).is_ok()
        };
        // Counted before returning, so a `flush` that follows this call
        // waits for the event (it may already be settled; `flush` waits
        // for "at least").
        if sent {
            self.counters.accepted.fetch_add(1, Ordering::AcqRel);
        } else {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn enabled(&self, level: Level) -> bool {
        level >= self.min_level
    }
}
