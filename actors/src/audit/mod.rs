//! The audit trail: every failure, attempt, restart, escalation and
//! decision, stored, redacted, queryable, and pruned.
//!
//! Operators find systemic problems in it and the agent reads it to repair
//! itself (`read_logs`). Producers are everywhere and on hot paths, so
//! writing to it must cost them nothing: they emit into an [`AuditSink`]
//! that never blocks. A supervised [`AuditActor`] drains the sink in
//! batches, redacts secrets, and appends each batch to the [`Store`] in
//! one transaction; the store's group commit folds concurrent batches into
//! one sync.
//!
//! # Which path guarantees what
//! - [`EventSink::emit`](crate::event::EventSink::emit) (via [`AuditSink`]): never blocks, best effort.
//!   An event below `error` is dropped (and counted) when the bounded lane
//!   is full; an event at `error` or above is never dropped for lack of
//!   room. Either is lost if the process dies before its batch commits
//!   (typically milliseconds). Use it for the running commentary.
//! - [`AuditHandle::record`]: resolves `Ok(id)` only after the transaction
//!   holding the event has committed with the store's durability (SQLite
//!   `synchronous = FULL` by default: synced to disk). An event whose
//!   `record` returned `Ok` survives `kill -9` of the process (and, with
//!   FULL, a power loss). This is the path for "an audit event of a
//!   failure" that must never be lost: await it before acknowledging
//!   whatever the failure concerns.
//!
//! # Restarts
//! The lanes and counters live outside the actor, so killing the audit
//! actor loses nothing that was queued: its replacement drains the same
//! lanes, and a batch already taken is committed by its own task (see
//! `ingest`). Queries go straight to the store's read pool, so they keep
//! working while the actor restarts.

mod actor;
mod export;
mod ingest;
mod layer;
mod read_logs;
mod redact;
mod sink;
mod time;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hale_supervision::{Address, ChildSpec, Shutdown};
use serde::Serialize;
use tokio::io::AsyncWrite;
use tokio::sync::{Mutex, mpsc, oneshot};

pub use actor::{AuditActor, AuditActorArgs, AuditActorState, AuditMsg};
pub use export::{ExportError, export_jsonl};
pub use layer::AuditLayer;
pub use read_logs::{DEFAULT_LIMIT, InvalidArgument, LogQuery, MAX_LIMIT, ReadLogs, parse_args};
pub use redact::{DEFAULT_SECRET_ENV_VARS, MIN_SECRET_LEN, REDACTED, RedactionConfig, Redactor};
pub use sink::AuditSink;
pub use time::{TimeError, parse_relative, parse_time};

use crate::event::{Event, Level};
use crate::store::{EventQuery, Store, StoreError};
use ingest::Ingest;
use sink::{Counters, Durable};

/// How old and how many events the trail keeps, and how often that is
/// enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Events older than this are deleted.
    pub max_age: Option<Duration>,
    /// Only the newest this many events are kept.
    pub max_rows: Option<u64>,
    /// The oldest events are deleted while the trail holds more than this
    /// many bytes ([`Store::audit_bytes`](crate::store::Store::audit_bytes)).
    pub max_bytes: Option<u64>,
    /// How often the rules are applied.
    pub interval: Duration,
    /// Rows deleted per write, so ingest interleaves with a big deletion.
    pub chunk: usize,
}

/// The audit trail's default size cap: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

impl Retention {
    /// No retention: keep everything.
    pub fn keep_all() -> Self {
        Self {
            max_age: None,
            max_rows: None,
            max_bytes: None,
            ..Self::default()
        }
    }

    /// Whether any rule is set.
    pub fn is_active(&self) -> bool {
        self.max_age.is_some() || self.max_rows.is_some() || self.max_bytes.is_some()
    }
}

impl Default for Retention {
    /// 30 days, 1,000,000 events, 1 GiB, applied every minute, 5,000
    /// rows per write.
    fn default() -> Self {
        Self {
            max_age: Some(Duration::from_secs(30 * 86_400)),
            max_rows: Some(1_000_000),
            max_bytes: Some(DEFAULT_MAX_BYTES),
            interval: Duration::from_secs(60),
            chunk: 5_000,
        }
    }
}

/// The audit trail's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    /// Room in the bounded lane (events below `error`).
    pub queue_capacity: usize,
    /// The most events appended in one batch.
    pub max_batch: usize,
    /// Events below this level are not recorded.
    pub min_level: Level,
    /// Secrets to redact besides the built-in patterns.
    pub redaction: RedactionConfig,
    /// What is kept.
    pub retention: Retention,
    /// How long [`AuditHandle::record`] waits for the commit.
    pub record_timeout: Duration,
    /// How long a graceful stop spends committing what is queued. Keep it
    /// under the child's shutdown timeout (5 s).
    pub drain_timeout: Duration,
    /// How long a call to the actor waits for a restarting one.
    pub ready_wait: Duration,
    /// The source of the trail's own events (retention).
    pub source: String,
}

impl Default for AuditConfig {
    /// 65,536 queued events, batches of 4,096, level `info` and up, the
    /// default redaction and retention, 30 s record timeout, 4 s drain,
    /// 5 s ready wait, source `hale/audit`.
    fn default() -> Self {
        Self {
            queue_capacity: 65_536,
            max_batch: 4_096,
            min_level: Level::Info,
            redaction: RedactionConfig::default(),
            retention: Retention::default(),
            record_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(4),
            ready_wait: Duration::from_secs(5),
            source: "hale/audit".to_owned(),
        }
    }
}

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The redaction patterns could not be built (secrets too large).
    #[error("redaction: {0}")]
    Redaction(#[from] regex::Error),
    /// The audit trail was dropped; nothing takes events any more.
    #[error("the audit trail is shut down")]
    Closed,
    /// `record` waited longer than its timeout. The event is still queued
    /// and may be committed later; it is not known to be durable.
    #[error("the event was not committed within {} ms (it stays queued)", after.as_millis())]
    Timeout {
        /// How long it waited.
        after: Duration,
    },
    /// The commit's outcome is unknown (see [`AppendError::InDoubt`](crate::store::AppendError::InDoubt)).
    #[error("commit in doubt: {reason}")]
    InDoubt {
        /// What happened.
        reason: String,
    },
    /// The event was given up (the store was closed).
    #[error("event lost: {reason}")]
    Lost {
        /// Why.
        reason: String,
    },
    /// No audit actor was running within the ready wait.
    #[error("the audit actor is not running (waited {} ms)", waited.as_millis())]
    NotRunning {
        /// How long it waited.
        waited: Duration,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the trail has done since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct AuditStats {
    /// Events taken into a lane.
    pub accepted: u64,
    /// Events dropped by the sink (full lane, or shut down).
    pub dropped: u64,
    /// Events committed.
    pub committed: u64,
    /// Events whose commit is in doubt (not re-sent).
    pub in_doubt: u64,
    /// Events given up after being accepted (store closed).
    pub lost: u64,
    /// Batches re-sent after the store refused them.
    pub retries: u64,
    /// Batches sent.
    pub batches: u64,
    /// Accepted events not yet settled (queued or in flight).
    pub pending: u64,
}

/// Reaches the audit trail: its sink, durable records, queries, export,
/// retention, and the actor's current incarnation.
#[derive(Clone)]
pub struct AuditHandle {
    address: Address<AuditMsg>,
    ingest: Arc<Ingest>,
    sink: AuditSink,
    durable: mpsc::UnboundedSender<Durable>,
    record_timeout: Duration,
    ready_wait: Duration,
}

impl std::fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditHandle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The child spec that runs the audit actor as a permanent worker under id
/// `id`, writing to `store`, and the handle that reaches it.
///
/// # Errors
/// [`AuditError::Redaction`] when the configured secrets cannot be
/// compiled into a pattern.
pub fn audit_child(
    id: &str,
    store: Arc<dyn Store>,
    config: AuditConfig,
) -> Result<(ChildSpec, AuditHandle), AuditError> {
    let redactor = Arc::new(Redactor::new(&config.redaction)?);
    let counters = Arc::new(Counters::new());
    let (senders, lanes) = sink::lanes(
        config.queue_capacity,
        config.min_level,
        Arc::clone(&counters),
    );
    let ingest = Arc::new(Ingest {
        lanes: Mutex::new(lanes),
        counters,
        store,
        redactor,
        max_batch: config.max_batch,
    });
    let address = Address::new();
    let handle = AuditHandle {
        address: address.clone(),
        ingest: Arc::clone(&ingest),
        sink: senders.sink.clone(),
        durable: senders.durable,
        record_timeout: config.record_timeout,
        ready_wait: config.ready_wait,
    };
    let sink = senders.sink;
    let shutdown = Shutdown::Graceful(config.drain_timeout + Duration::from_secs(1));
    let spec = ChildSpec::worker(id, move || {
        (
            AuditActor,
            AuditActorArgs {
                ingest: Arc::clone(&ingest),
                address: address.clone(),
                retention: config.retention.clone(),
                drain_timeout: config.drain_timeout,
                sink: sink.clone(),
                source: config.source.clone(),
            },
        )
    })
    .shutdown(shutdown);
    Ok((spec, handle))
}

impl AuditHandle {
    /// The sink producers emit into. Clones are cheap.
    pub fn sink(&self) -> AuditSink {
        self.sink.clone()
    }

    /// The address of the actor's current incarnation.
    pub fn address(&self) -> &Address<AuditMsg> {
        &self.address
    }

    /// The store the trail writes to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.ingest.store
    }

    /// Records `event` durably: resolves with its id once the transaction
    /// holding it has committed (see the module docs for the guarantee).
    /// The event is redacted first, like every other, and stored whatever
    /// its level (the sink's minimum level does not apply: asking for
    /// durability is asking for the record).
    ///
    /// # Errors
    /// [`AuditError::Timeout`] after the record timeout (the event stays
    /// queued and may still be committed); [`AuditError::InDoubt`] or
    /// [`AuditError::Lost`] from the store; [`AuditError::Closed`] when the
    /// trail is gone.
    ///
    /// # Cancel safety
    /// Cancelling the wait does not withdraw the event; it is still
    /// committed.
    pub async fn record(&self, event: Event) -> Result<u64, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.durable
            .send(Durable { event, reply })
            .map_err(|_| AuditError::Closed)?;
        self.ingest.counters.accepted.fetch_add(1, Ordering::AcqRel);
        match tokio::time::timeout(self.record_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(AuditError::InDoubt {
                reason: "the batch holding the event ended without an answer".to_owned(),
            }),
            Err(_) => Err(AuditError::Timeout {
                after: self.record_timeout,
            }),
        }
    }

    /// Waits until every event accepted before this call is settled
    /// (committed, in doubt or lost).
    ///
    /// # Errors
    /// [`AuditError::Timeout`] when that takes longer than `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<(), AuditError> {
        let target = self.ingest.counters.accepted.load(Ordering::Acquire);
        let mut settled = self.ingest.counters.settled.subscribe();
        match tokio::time::timeout(timeout, settled.wait_for(|s| *s >= target)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(AuditError::Closed),
            Err(_) => Err(AuditError::Timeout { after: timeout }),
        }
    }

    /// The newest events matching `query` (straight from the store's read
    /// pool; works while the actor restarts).
    ///
    /// # Errors
    /// The store's read failed or timed out.
    pub async fn query(&self, query: EventQuery) -> Result<Vec<Event>, AuditError> {
        Ok(self.ingest.store.query(query).await?)
    }

    /// Writes the events matching `filter` to `writer` as JSON lines (see
    /// [`export_jsonl`]).
    ///
    /// # Errors
    /// As [`export_jsonl`].
    pub async fn export_jsonl<W>(
        &self,
        filter: &crate::store::EventFilter,
        writer: &mut W,
    ) -> Result<u64, ExportError>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        export_jsonl(&*self.ingest.store, filter, writer).await
    }

    /// Applies the retention rules now, through the actor, and returns how
    /// many events were deleted.
    ///
    /// # Errors
    /// [`AuditError::NotRunning`] when no actor answered within the ready
    /// wait; the store's error otherwise.
    pub async fn sweep(&self) -> Result<u64, AuditError> {
        let not_running = || AuditError::NotRunning {
            waited: self.ready_wait,
        };
        let actor = self
            .address
            .live(self.ready_wait)
            .await
            .ok_or_else(not_running)?;
        let (reply, answer) = oneshot::channel();
        actor
            .send_message(AuditMsg::Sweep {
                reply: Some(reply.into()),
            })
            .map_err(|_| not_running())?;
        answer
            .await
            .map_err(|_| not_running())?
            .map_err(AuditError::Store)
    }

    /// What the trail has done so far.
    pub fn stats(&self) -> AuditStats {
        let c = &self.ingest.counters;
        let accepted = c.accepted.load(Ordering::Acquire);
        let settled = *c.settled.borrow();
        AuditStats {
            accepted,
            dropped: c.dropped.load(Ordering::Relaxed),
            committed: c.committed.load(Ordering::Relaxed),
            in_doubt: c.in_doubt.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            pending: accepted.saturating_sub(settled),
        }
    }

    /// The `read_logs` tool over this trail.
    pub fn read_logs_tool(&self) -> ReadLogs {
        ReadLogs::new(Arc::clone(&self.ingest.store))
    }

    /// A `tracing` layer that bridges WARN and ERROR records into this
    /// trail.
    pub fn tracing_layer(&self) -> AuditLayer {
        AuditLayer::new(Arc::new(self.sink.clone()))
    }
}
