//! The ingest loop: lanes -> batches -> redaction -> the store.
//!
//! # Invariants
//! - One pump drains the lanes at a time (it holds their lock); a
//!   replacement actor's pump waits for the dead one's lock to drop.
//! - A batch leaves the lanes and becomes a task of its own in one step,
//!   with no await in between, so killing the actor (which aborts the
//!   pump) can never strand a batch: the task commits it, retries it on a
//!   definite failure, and answers its `record` callers, actor or no actor.
//! - At most [`PIPELINE`] batches are in flight: while one commits, the
//!   next is redacted and queued, so the writer does not wait for
//!   redaction. Ids therefore follow commit order, which can differ from
//!   emission order between neighbouring batches; timestamps carry the
//!   order of events (and queries sort by them).
//! - A batch is retried only when the store says nothing was written
//!   ([`AppendError::NotCommitted`]); after an in-doubt failure it is
//!   counted, never re-sent, so the trail does not grow duplicates.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{Mutex, oneshot, watch};

use super::redact::Redactor;
use super::sink::{Counters, Durable, Lanes};
use super::{AuditError, Retention};
use crate::event::Event;
use crate::store::{AppendError, Prune, Store, StoreError};

/// Batches in flight at once: while one commits, the next is redacted
/// and queued behind it, so the writer never waits for redaction.
const PIPELINE: usize = 2;

/// Redaction runs on a blocking thread for batches larger than this; a
/// few events are cheaper to redact in place than to hand over.
const REDACT_INLINE_MAX: usize = 64;

/// The first and the longest wait before re-sending a batch the store
/// refused.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Everything the audit actor's incarnations share.
pub(crate) struct Ingest {
    pub(crate) lanes: Mutex<Lanes>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) redactor: Arc<Redactor>,
    pub(crate) max_batch: usize,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

/// Events taken from the lanes; the first `replies.len()` came from the
/// durable lane, in order.
#[derive(Default)]
struct Batch {
    events: Vec<Event>,
    replies: Vec<oneshot::Sender<Result<u64, AuditError>>>,
}

impl Batch {
    fn len(&self) -> usize {
        self.events.len()
    }

    fn push_durable(&mut self, durable: Durable) {
        // Durable events go first so that their ids line up with replies.
        self.events.insert(self.replies.len(), durable.event);
        self.replies.push(durable.reply);
    }
}

/// Which lanes have closed (every sender dropped).
#[derive(Default)]
struct Closed {
    durable: bool,
    failures: bool,
    events: bool,
}

impl Closed {
    fn all(&self) -> bool {
        self.durable && self.failures && self.events
    }
}

/// Takes whatever is queued, durable first, then failures, then the rest,
/// up to `max` events, without waiting.
fn fill(lanes: &mut Lanes, batch: &mut Batch, max: usize) {
    while batch.len() < max {
        match lanes.durable.try_recv() {
            Ok(d) => batch.push_durable(d),
            Err(_) => break,
        }
    }
    while batch.len() < max {
        match lanes.failures.try_recv() {
            Ok(e) => batch.events.push(e),
            Err(_) => break,
        }
    }
    while batch.len() < max {
        match lanes.events.try_recv() {
            Ok(e) => batch.events.push(e),
            Err(_) => break,
        }
    }
}

/// Drains the lanes into the store until `stop` turns true (then drains
/// what is queued and returns) or every lane has closed.
pub(crate) async fn pump(ingest: Arc<Ingest>, mut stop: watch::Receiver<bool>) {
    let mut guard = ingest.lanes.lock().await;
    // A plain `&mut` so the select below can borrow the lanes one by one.
    let lanes: &mut Lanes = &mut guard;
    let max = ingest.max_batch.max(1);
    let mut closed = Closed::default();
    let mut stopping = *stop.borrow();
    let mut in_flight = std::collections::VecDeque::with_capacity(PIPELINE);
    loop {
        let mut batch = Batch::default();
        if !stopping {
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    // A dropped sender is a stop too.
                    stopping = changed.is_err() || *stop.borrow();
                }
                d = lanes.durable.recv(), if !closed.durable => match d {
                    Some(d) => batch.push_durable(d),
                    None => closed.durable = true,
                },
                e = lanes.failures.recv(), if !closed.failures => match e {
                    Some(e) => batch.events.push(e),
                    None => closed.failures = true,
                },
                e = lanes.events.recv(), if !closed.events => match e {
                    Some(e) => batch.events.push(e),
                    None => closed.events = true,
                },
            }
        }
        fill(lanes, &mut batch, max);
        if batch.len() == 0 {
            if stopping || closed.all() {
                // Return only once what was sent has settled, so a
                // graceful stop that waits for the pump waits for them.
                for task in in_flight {
                    let _ = task.await;
                }
                return;
            }
            continue;
        }
        // The hand-off: from here the batch belongs to a task the actor's
        // death does not abort.
        in_flight.push_back(tokio::spawn(commit_batch(Arc::clone(&ingest), batch)));
        if in_flight.len() >= PIPELINE
            && let Some(oldest) = in_flight.pop_front()
        {
            let _ = oldest.await;
        }
    }
}

/// Redacts, appends (retrying while the store says nothing was written),
/// answers the durable callers and settles the counters.
async fn commit_batch(ingest: Arc<Ingest>, batch: Batch) {
    let Batch {
        mut events,
        replies,
    } = batch;
    let n = events.len() as u64;
    let counters = &ingest.counters;
    counters.batches.fetch_add(1, Ordering::Relaxed);

    if events.len() <= REDACT_INLINE_MAX {
        events
            .iter_mut()
            .for_each(|e| ingest.redactor.redact_event(e));
    } else {
        let redactor = Arc::clone(&ingest.redactor);
        let redacted = tokio::task::spawn_blocking(move || {
            events.iter_mut().for_each(|e| redactor.redact_event(e));
            events
        })
        .await;
        match redacted {
            Ok(redacted) => events = redacted,
            Err(join) => {
                tracing::error!(error = %join, events = n, "audit batch lost: redaction failed");
                counters.lost.fetch_add(n, Ordering::Relaxed);
                for reply in replies {
                    let _ = reply.send(Err(AuditError::Lost {
                        reason: "redaction failed".to_owned(),
                    }));
                }
                counters.settle(n);
                return;
            }
        }
    }

    let mut attempt: u32 = 0;
    loop {
        match ingest.store.append(events).await {
            Ok(ids) => {
                counters.committed.fetch_add(n, Ordering::Relaxed);
                for (reply, id) in replies.into_iter().zip(ids) {
                    let _ = reply.send(Ok(id));
                }
                counters.settle(n);
                return;
            }
            Err(AppendError::NotCommitted {
                error: StoreError::Closed,
                ..
            }) => {
                tracing::error!(events = n, "audit batch lost: the store is closed");
                counters.lost.fetch_add(n, Ordering::Relaxed);
                for reply in replies {
                    let _ = reply.send(Err(AuditError::Lost {
                        reason: "the store is closed".to_owned(),
                    }));
                }
                counters.settle(n);
                return;
            }
            Err(AppendError::NotCommitted {
                error,
                events: back,
            }) => {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                let delay = retry_delay(attempt);
                tracing::warn!(
                    %error,
                    events = n,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "audit batch not committed; retrying"
                );
                tokio::time::sleep(delay).await;
                attempt = attempt.saturating_add(1);
                events = back;
            }
            Err(AppendError::InDoubt { error }) => {
                tracing::error!(%error, events = n, "audit batch commit in doubt; not re-sent");
                counters.in_doubt.fetch_add(n, Ordering::Relaxed);
                for reply in replies {
                    let _ = reply.send(Err(AuditError::InDoubt {
                        reason: error.to_string(),
                    }));
                }
                counters.settle(n);
                return;
            }
        }
    }
}

/// Exponential from [`RETRY_FIRST`], capped at [`RETRY_MAX`], with up to
/// 50 % jitter so that several stranded batches do not retry in step.
fn retry_delay(attempt: u32) -> Duration {
    let base = RETRY_FIRST
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(RETRY_MAX);
    base.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// Applies `retention` once, chunk by chunk, and returns how many events
/// were deleted. Each chunk is its own write, so ingest interleaves.
pub(crate) async fn sweep(
    store: &dyn Store,
    retention: &Retention,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let chunk = retention.chunk.max(1);
    let mut deleted = 0;
    if let Some(age) = retention.max_age {
        let cutoff = now.checked_sub(age).unwrap_or(Timestamp::MIN);
        loop {
            let n = store.prune(Prune::OlderThan { cutoff, chunk }).await?;
            deleted += n;
            if n < chunk as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    if let Some(keep) = retention.max_rows {
        loop {
            let n = store.prune(Prune::KeepNewest { keep, chunk }).await?;
            deleted += n;
            if n < chunk as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    if let Some(max_bytes) = retention.max_bytes {
        // Each call deletes what covers the excess (at most a chunk), so
        // a call that deleted nothing means the trail fits.
        loop {
            let n = store.prune(Prune::MaxBytes { max_bytes, chunk }).await?;
            deleted += n;
            if n == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    Ok(deleted)
}
