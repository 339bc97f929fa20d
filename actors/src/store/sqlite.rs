//! [`SqliteStore`]: the default [`Store`], one SQLite file in WAL mode.
//!
//! # One writer, group commit
//! SQLite allows one writer at a time, and a commit costs a sync to disk
//! whatever it holds. So a dedicated thread owns the only write
//! connection; writes arrive over a channel, and the thread takes
//! everything queued (up to a cap) into ONE transaction, commits it, and
//! only then answers each request. Under load many requests share one
//! sync; alone, a request pays exactly one. Each request runs inside its
//! own savepoint, so one that fails is rolled back without failing the
//! others in its group.
//!
//! Reads use a small pool of read-only connections on
//! `spawn_blocking` threads: in WAL mode they see the last committed state
//! and never wait for the writer, nor make it wait.
//!
//! # Durability: why `synchronous = FULL` is the default
//! In WAL mode a commit appends to the `-wal` file. With
//! `synchronous = NORMAL` the WAL is synced only at checkpoints, so a
//! committed transaction survives the death of the process (the OS still
//! has the pages) but not a power loss or kernel crash: "acknowledged"
//! would not mean "durable". With `FULL` the WAL is synced at every commit
//! before the commit returns, and this store acknowledges only after the
//! commit returned, so an acknowledged write survives power loss too (on
//! a disk that honours syncs). Group commit is what makes FULL affordable:
//! the sync is paid once per group, not once per write. [`Durability::Normal`]
//! is there for callers that accept the weaker guarantee.
//!
//! # Bounds
//! Every wait is bounded: lock waits by SQLite's `busy_timeout`, queueing
//! and acknowledgement by [`StoreConfig::write_timeout`], reads by
//! [`StoreConfig::read_timeout`] (a read past it is interrupted).

use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, InterruptHandle, OpenFlags, OptionalExtension, params};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::schema::{AUDIT_ROW_BYTES, AUDIT_ROW_OVERHEAD, MIGRATIONS, latest_version};
use super::sessions::{
    self, AgentTokens, Finish, JournalRecord, MessageRecord, MessageState, ModelTokens,
    SessionRecord, SessionStore, SessionWrite, TurnUsage,
};
use super::{
    AppendError, ApprovalRecord, ApprovalTransition, EventQuery, NewApproval, Order, Prune, Store,
    StoreError,
};
use crate::audit::Redactor;
use crate::catalog::ErrorCode;
use crate::event::{Event, EventKind, Level};
use crate::tool::BoxFuture;

/// Where the database lives unless configured otherwise.
pub const DEFAULT_PATH: &str = "./.hale/hale.db";

/// What an acknowledged write survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous = FULL`: the WAL is synced before every commit
    /// returns; an acknowledged write survives the process's death and a
    /// power loss.
    #[default]
    Full,
    /// `synchronous = NORMAL`: an acknowledged write survives the
    /// process's death (`kill -9`), but the last commits before a power
    /// loss or kernel crash may be lost.
    Normal,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

/// How a [`SqliteStore`] is opened.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// The database file; its directory is created if missing.
    pub path: PathBuf,
    /// What an acknowledged write survives.
    pub durability: Durability,
    /// How long SQLite waits for a lock held by another connection
    /// (another process with the file open, a checkpoint).
    pub busy_timeout: Duration,
    /// How long a write may wait to be queued and committed.
    pub write_timeout: Duration,
    /// How long a read may take before it is interrupted.
    pub read_timeout: Duration,
    /// Read-only connections in the pool (reads in parallel).
    pub readers: usize,
    /// Requests queued for the writer before writers wait.
    pub queue: usize,
    /// The most requests one transaction holds; 1 turns group commit off
    /// (one transaction per request, for comparison).
    pub max_ops_per_transaction: usize,
    /// The most events one transaction appends (a group is closed once it
    /// holds this many), so a flood cannot delay every acknowledgement
    /// behind one huge commit.
    pub max_rows_per_transaction: usize,
}

impl StoreConfig {
    /// The defaults for a database at `path`: FULL durability, 5 s busy
    /// timeout, 30 s write timeout, 10 s read timeout, 4 readers, a queue
    /// of 1024 requests, groups of up to 4096 requests or 50,000 events.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::Full,
            busy_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(10),
            readers: 4,
            queue: 1024,
            max_ops_per_transaction: 4096,
            max_rows_per_transaction: 50_000,
        }
    }
}

impl Default for StoreConfig {
    /// [`StoreConfig::new`] at [`DEFAULT_PATH`].
    fn default() -> Self {
        Self::new(DEFAULT_PATH)
    }
}

/// What the writer has done since the store was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Requests acknowledged as committed.
    pub ops: u64,
    /// Events appended.
    pub rows: u64,
}

#[derive(Debug, Default)]
struct Counters {
    transactions: AtomicU64,
    ops: AtomicU64,
    rows: AtomicU64,
}

/// The mode of the database and of its `-wal` and `-shm` files: the
/// audit trail, approvals and journals are the operator's alone.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// The database file and the files SQLite keeps beside it in WAL mode.
pub fn database_files(path: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [path.to_owned(), with("-wal"), with("-shm")]
}

/// Creates the database file with [`PRIVATE_FILE_MODE`] if it is missing,
/// whatever the umask, before SQLite opens it (SQLite would create it with
/// 0644 less the umask, and give its `-wal` and `-shm` the same mode).
fn create_private(path: &Path) -> Result<(), StoreError> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::Io {
            op: "create the database file",
            source,
        }),
    }
}

/// Sets [`PRIVATE_FILE_MODE`] on the database and its WAL files that
/// exist (a file made by an older hale, or under another umask).
fn restrict_files(path: &Path) -> Result<(), StoreError> {
    for file in database_files(path) {
        match std::fs::metadata(&file) {
            Ok(meta) if meta.permissions().mode() & 0o777 != PRIVATE_FILE_MODE => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))
                    .map_err(|source| StoreError::Io {
                        op: "restrict the database files to their owner",
                        source,
                    })?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::Io {
                    op: "read the database files' mode",
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The SQLite [`Store`]. Clones share the writer and the read pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    writer: mpsc::Sender<Op>,
    readers: Arc<ReadPool>,
    counters: Arc<Counters>,
    write_timeout: Duration,
    read_timeout: Duration,
    path: PathBuf,
    /// Masks secrets in what is written (see [`SqliteStore::set_redactor`]).
    redactor: OnceLock<Arc<Redactor>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database, applies pending migrations
    /// and starts the writer thread. Runs the blocking part on a blocking
    /// thread.
    ///
    /// # Errors
    /// The directory or file cannot be created or opened, WAL mode cannot
    /// be enabled, a migration failed, or the file's schema is newer than
    /// this build's ([`StoreError::SchemaTooNew`]).
    pub async fn open(config: StoreConfig) -> Result<Self, StoreError> {
        tokio::task::spawn_blocking(move || Self::open_blocking(config))
            .await
            .map_err(|e| StoreError::database("open", e))?
    }

    /// [`open`](Self::open) on the calling thread, for use outside an async
    /// runtime (or inside `spawn_blocking`).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_blocking(config: StoreConfig) -> Result<Self, StoreError> {
        if let Some(dir) = config.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                op: "create the database directory",
                source,
            })?;
        }
        create_private(&config.path)?;
        let mut conn =
            Connection::open(&config.path).map_err(|e| StoreError::database("open", e))?;
        configure_writer(&conn, &config)?;
        migrate(&mut conn)?;
        // WAL mode made the `-wal` and `-shm` files; SQLite gives them the
        // database's mode, but an existing file may predate that mode.
        restrict_files(&config.path)?;

        let counters = Arc::new(Counters::default());
        let (writer, queue) = mpsc::channel(config.queue.max(1));
        let limits = Limits {
            max_ops: config.max_ops_per_transaction.max(1),
            max_rows: config.max_rows_per_transaction.max(1),
        };
        let thread_counters = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("hale-store-writer".to_owned())
            .spawn(move || run_writer(conn, queue, limits, &thread_counters))
            .map_err(|source| StoreError::Io {
                op: "start the writer thread",
                source,
            })?;
        let readers = Arc::new(ReadPool {
            path: config.path.clone(),
            busy_timeout: config.busy_timeout,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(config.readers.max(1))),
        });
        // Open every reader now: a pool that grows on demand changes the
        // process's open files long after start (the soak's descriptor
        // check saw it as a leak), and a reader that cannot be opened is
        // better reported at start than on the first busy minute.
        for _ in 0..config.readers.max(1) {
            let conn = readers.open()?;
            readers.give_back(conn);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                writer,
                readers,
                counters,
                write_timeout: config.write_timeout,
                read_timeout: config.read_timeout,
                path: config.path,
                redactor: OnceLock::new(),
            }),
        })
    }

    /// Masks secrets in everything written from now on, the last line
    /// before the disk: approvals (request and decision) get every pattern
    /// and the known values, since people read them; inbox texts, replies
    /// and journal entries get the known values (their patterns, where
    /// wanted, were applied upstream, where the live session sees the same
    /// text); a failure's error text gets every pattern. Audit events are
    /// redacted by the audit trail before they arrive. Set once, at start,
    /// for every clone; a second call is ignored.
    pub fn set_redactor(&self, redactor: Arc<Redactor>) {
        let _ = self.inner.redactor.set(redactor);
    }

    fn redactor(&self) -> Option<&Arc<Redactor>> {
        self.inner.redactor.get()
    }

    /// `text` without the known secret values.
    fn mask_known(&self, mut text: String) -> String {
        if let Some(redactor) = self.redactor() {
            redactor.known().mask_string(&mut text);
        }
        text
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What the writer has committed so far.
    pub fn writer_stats(&self) -> WriterStats {
        let c = &self.inner.counters;
        WriterStats {
            transactions: c.transactions.load(Ordering::Relaxed),
            ops: c.ops.load(Ordering::Relaxed),
            rows: c.rows.load(Ordering::Relaxed),
        }
    }

    /// The schema versions recorded in the file, oldest first.
    ///
    /// # Errors
    /// The read failed or timed out.
    pub async fn schema_versions(&self) -> Result<Vec<i64>, StoreError> {
        self.read("read schema versions", |conn| {
            let mut stmt = conn
                .prepare("SELECT version FROM schema_version ORDER BY version")
                .map_err(|e| StoreError::database("read schema versions", e))?;
            let rows = stmt
                .query_map([], |row| row.get::<_, i64>(0))
                .map_err(|e| StoreError::database("read schema versions", e))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::database("read schema versions", e))
        })
        .await
    }

    /// Live sessions and open approvals, counted in one read: what
    /// `/metrics` shows, without reading the rows.
    ///
    /// # Errors
    /// The read failed or timed out.
    pub async fn gauge_counts(&self) -> Result<GaugeCounts, StoreError> {
        self.read("count sessions and approvals", |conn| {
            // `open` is the state `StoreApprovals` gives an undecided
            // approval; `live` a session not deleted.
            conn.query_row(
                "SELECT (SELECT COUNT(*) FROM sessions WHERE state = 'live'), \
                        (SELECT COUNT(*) FROM approvals WHERE state = 'open')",
                [],
                |row| {
                    Ok(GaugeCounts {
                        live_sessions: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                        open_approvals: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                    })
                },
            )
            .map_err(|e| StoreError::database("count sessions and approvals", e))
        })
        .await
    }

    /// Commits what was queued before it, checkpoints the WAL into the
    /// main file and stops the writer. Later writes through any clone fail with
    /// [`StoreError::Closed`]; reads keep working.
    ///
    /// # Errors
    /// [`StoreError::Closed`] if it was already closed;
    /// [`StoreError::Timeout`] if the writer did not finish in the write
    /// timeout.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.write("close", |reply| Op::Close { reply }).await
    }

    async fn write<T>(
        &self,
        op: &'static str,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op,
    ) -> Result<T, StoreError> {
        let after = self.inner.write_timeout;
        let deadline = tokio::time::Instant::now() + after;
        let permit = match tokio::time::timeout_at(deadline, self.inner.writer.reserve()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(StoreError::Closed),
            Err(_) => return Err(StoreError::Timeout { op, after }),
        };
        let (reply, answer) = oneshot::channel();
        permit.send(make(reply));
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::Timeout { op, after }),
        }
    }

    async fn read<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.readers.run(op, self.inner.read_timeout, f).await
    }

    async fn append_events(&self, events: Vec<Event>) -> Result<Vec<u64>, AppendError> {
        let after = self.inner.write_timeout;
        let deadline = tokio::time::Instant::now() + after;
        let op = "append events";
        let batch = Encoded::off_the_writer(events).await?;
        // Reserve before handing the events over, so that a full or closed
        // queue gives them back instead of losing them.
        let permit = match tokio::time::timeout_at(deadline, self.inner.writer.reserve()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => {
                return Err(AppendError::NotCommitted {
                    error: StoreError::Closed,
                    events: batch.events,
                });
            }
            Err(_) => {
                return Err(AppendError::NotCommitted {
                    error: StoreError::Timeout { op, after },
                    events: batch.events,
                });
            }
        };
        let (reply, answer) = oneshot::channel();
        permit.send(Op::Write(Write::Append { batch, reply }));
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(AppendError::InDoubt {
                error: StoreError::Closed,
            }),
            Err(_) => Err(AppendError::InDoubt {
                error: StoreError::Timeout { op, after },
            }),
        }
    }
}

/// Batches larger than this have their data encoded on a blocking thread
/// instead of the writer's, so the one writer spends its time in SQLite.
const ENCODE_INLINE_MAX: usize = 64;

/// Events with their data already encoded as JSON text.
#[derive(Debug)]
struct Encoded {
    events: Vec<Event>,
    data: Vec<Option<String>>,
}

impl Encoded {
    fn new(events: Vec<Event>) -> Self {
        let data = events
            .iter()
            .map(|e| {
                // Encoding a `Value` cannot fail (its keys are strings).
                (!e.data.is_null())
                    .then(|| serde_json::to_string(&e.data).ok())
                    .flatten()
            })
            .collect();
        Self { events, data }
    }

    async fn off_the_writer(events: Vec<Event>) -> Result<Self, AppendError> {
        if events.len() <= ENCODE_INLINE_MAX {
            return Ok(Self::new(events));
        }
        tokio::task::spawn_blocking(move || Self::new(events))
            .await
            .map_err(|e| AppendError::InDoubt {
                // Only a runtime shutting down cancels it; the events never
                // reached the writer but cannot be handed back.
                error: StoreError::database("encode events", e),
            })
    }
}

impl Store for SqliteStore {
    fn append(&self, events: Vec<Event>) -> BoxFuture<'_, Result<Vec<u64>, AppendError>> {
        Box::pin(self.append_events(events))
    }

    fn query(&self, query: EventQuery) -> BoxFuture<'_, Result<Vec<Event>, StoreError>> {
        Box::pin(self.read("query events", move |conn| query_events(conn, &query)))
    }

    fn count(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.read("count events", |conn| {
            conn.query_row("SELECT count(*) FROM audit_events", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| StoreError::database("count events", e))
        }))
    }

    fn prune(&self, prune: Prune) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.write("prune events", move |reply| {
            Op::Write(Write::Prune { prune, reply })
        }))
    }

    fn audit_bytes(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.read("read the audit size", audit_bytes))
    }

    fn prune_approvals(
        &self,
        keep: String,
        before: Timestamp,
        chunk: usize,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.write("prune approvals", move |reply| {
            Op::Write(Write::PruneApprovals {
                keep,
                before,
                chunk,
                reply,
            })
        }))
    }

    fn insert_approval(&self, mut approval: NewApproval) -> BoxFuture<'_, Result<u64, StoreError>> {
        if let Some(redactor) = self.redactor() {
            redactor.redact_value(&mut approval.request);
        }
        Box::pin(self.write("insert approval", move |reply| {
            Op::Write(Write::InsertApproval { approval, reply })
        }))
    }

    fn transition_approval(
        &self,
        mut transition: ApprovalTransition,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        if let (Some(redactor), Some(resolution)) = (self.redactor(), &mut transition.resolution) {
            redactor.redact_value(resolution);
        }
        Box::pin(self.write("transition approval", move |reply| {
            Op::Write(Write::TransitionApproval { transition, reply })
        }))
    }

    fn approval(&self, id: u64) -> BoxFuture<'_, Result<Option<ApprovalRecord>, StoreError>> {
        Box::pin(self.read("read approval", move |conn| {
            let sql = format!("{APPROVAL_COLUMNS} WHERE id = ?1");
            conn.query_row(&sql, [to_i64(id)], approval_row)
                .optional()
                .map_err(|e| StoreError::database("read approval", e))?
                .transpose()
        }))
    }

    fn approvals(
        &self,
        state: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<ApprovalRecord>, StoreError>> {
        Box::pin(self.read("list approvals", move |conn| {
            let map = |e| StoreError::database("list approvals", e);
            let (sql, args): (String, Vec<SqlValue>) = match state {
                Some(state) => (
                    format!("{APPROVAL_COLUMNS} WHERE state = ?1 ORDER BY id"),
                    vec![SqlValue::Text(state)],
                ),
                None => (format!("{APPROVAL_COLUMNS} ORDER BY id"), Vec::new()),
            };
            let mut stmt = conn.prepare(&sql).map_err(map)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args), approval_row)
                .map_err(map)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(map)??);
            }
            Ok(out)
        }))
    }
}

// ---------------------------------------------------------------- opening

fn configure_writer(conn: &Connection, config: &StoreConfig) -> Result<(), StoreError> {
    conn.busy_timeout(config.busy_timeout)
        .map_err(|e| StoreError::database("set busy_timeout", e))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| StoreError::database("enable WAL", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::database(
            "enable WAL",
            std::io::Error::other(format!(
                "journal_mode stayed `{mode}` (an in-memory or read-only database?)"
            )),
        ));
    }
    conn.pragma_update(None, "synchronous", config.durability.pragma())
        .map_err(|e| StoreError::database("set synchronous", e))?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let map = |e| StoreError::database("migrate", e);
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(map)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at INTEGER NOT NULL
         ) STRICT;",
    )
    .map_err(map)?;
    let current: i64 = tx
        .query_row(
            "SELECT coalesce(max(version), 0) FROM schema_version",
            [],
            |row| row.get(0),
        )
        .map_err(map)?;
    let known = latest_version();
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    let now = ts_to_ns(Timestamp::now());
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.execute_batch(migration.sql).map_err(map)?;
        tx.execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![migration.version, migration.name, now],
        )
        .map_err(map)?;
    }
    tx.commit().map_err(map)
}

// ---------------------------------------------------------------- the writer

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_ops: usize,
    max_rows: usize,
}

/// A message to the writer.
#[derive(Debug)]
enum Op {
    Write(Write),
    Close {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl Op {
    /// Answers a message that was never applied.
    fn refuse(self, error: impl Fn() -> StoreError) {
        match self {
            Op::Write(write) => write.refuse(error),
            Op::Close { reply } => {
                let _ = reply.send(Err(error()));
            }
        }
    }
}

/// A write request: applied in the writer's current group.
#[derive(Debug)]
enum Write {
    Append {
        batch: Encoded,
        reply: oneshot::Sender<Result<Vec<u64>, AppendError>>,
    },
    Prune {
        prune: Prune,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    InsertApproval {
        approval: NewApproval,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    PruneApprovals {
        keep: String,
        before: Timestamp,
        chunk: usize,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    TransitionApproval {
        transition: ApprovalTransition,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    Session {
        write: SessionWrite,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

impl Write {
    fn rows(&self) -> usize {
        match self {
            Write::Append { batch, .. } => batch.events.len(),
            _ => 1,
        }
    }

    /// Answers a request that was never applied.
    fn refuse(self, error: impl Fn() -> StoreError) {
        match self {
            Write::Append { batch, reply } => {
                let _ = reply.send(Err(AppendError::NotCommitted {
                    error: error(),
                    events: batch.events,
                }));
            }
            Write::Prune { reply, .. }
            | Write::InsertApproval { reply, .. }
            | Write::PruneApprovals { reply, .. }
            | Write::Session { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            Write::TransitionApproval { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
        }
    }
}

/// A request applied inside the open transaction, with its result held
/// until the transaction's fate is known.
enum Applied {
    Append {
        events: Vec<Event>,
        reply: oneshot::Sender<Result<Vec<u64>, AppendError>>,
        result: Result<Vec<u64>, StoreError>,
    },
    Count {
        reply: oneshot::Sender<Result<u64, StoreError>>,
        result: Result<u64, StoreError>,
    },
    Moved {
        reply: oneshot::Sender<Result<bool, StoreError>>,
        result: Result<bool, StoreError>,
    },
}

impl Applied {
    fn ok(&self) -> bool {
        match self {
            Applied::Append { result, .. } => result.is_ok(),
            Applied::Count { result, .. } => result.is_ok(),
            Applied::Moved { result, .. } => result.is_ok(),
        }
    }

    /// The transaction committed: each request gets its own result.
    fn committed(self, counters: &Counters) {
        if self.ok() {
            counters.ops.fetch_add(1, Ordering::Relaxed);
        }
        match self {
            Applied::Append {
                events,
                reply,
                result,
            } => {
                let answer = match result {
                    Ok(ids) => {
                        counters.rows.fetch_add(ids.len() as u64, Ordering::Relaxed);
                        Ok(ids)
                    }
                    Err(error) => Err(AppendError::NotCommitted { error, events }),
                };
                let _ = reply.send(answer);
            }
            Applied::Count { reply, result } => {
                let _ = reply.send(result);
            }
            Applied::Moved { reply, result } => {
                let _ = reply.send(result);
            }
        }
    }

    /// The transaction did not commit (or may not have).
    fn failed(self, error: &Arc<rusqlite::Error>, in_doubt: bool) {
        let make = || StoreError::Database {
            op: "commit",
            source: Box::new(Arc::clone(error)),
        };
        match self {
            Applied::Append { events, reply, .. } => {
                let answer = if in_doubt {
                    AppendError::InDoubt { error: make() }
                } else {
                    AppendError::NotCommitted {
                        error: make(),
                        events,
                    }
                };
                let _ = reply.send(Err(answer));
            }
            Applied::Count { reply, .. } => {
                let _ = reply.send(Err(make()));
            }
            Applied::Moved { reply, .. } => {
                let _ = reply.send(Err(make()));
            }
        }
    }
}

fn run_writer(
    conn: Connection,
    mut queue: mpsc::Receiver<Op>,
    limits: Limits,
    counters: &Counters,
) {
    let mut close = None;
    while let Some(first) = queue.blocking_recv() {
        let mut group = Vec::new();
        let mut rows = 0;
        let mut next = Some(first);
        while let Some(op) = next.take() {
            let write = match op {
                Op::Write(write) => write,
                Op::Close { reply } => {
                    close = Some(reply);
                    break;
                }
            };
            rows += write.rows();
            group.push(write);
            if group.len() >= limits.max_ops || rows >= limits.max_rows {
                break;
            }
            next = queue.try_recv().ok();
        }
        if !group.is_empty() {
            commit_group(&conn, group, counters);
        }
        if close.is_some() {
            break;
        }
    }
    // Whatever is still queued after a close was never applied.
    queue.close();
    while let Ok(op) = queue.try_recv() {
        op.refuse(|| StoreError::Closed);
    }
    let checkpoint = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| StoreError::database("checkpoint", e));
    let closed = conn
        .close()
        .map_err(|(_, e)| StoreError::database("close", e));
    if let Some(reply) = close {
        let _ = reply.send(checkpoint.and(closed));
    }
}

fn commit_group(conn: &Connection, group: Vec<Write>, counters: &Counters) {
    let now = Timestamp::now();
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let e = Arc::new(e);
        for op in group {
            op.refuse(|| StoreError::Database {
                op: "begin",
                source: Box::new(Arc::clone(&e)),
            });
        }
        return;
    }
    let mut applied = Vec::with_capacity(group.len());
    let mut ops = group.into_iter();
    for op in ops.by_ref() {
        applied.push(apply_in_savepoint(conn, op, now));
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back by itself (disk
            // full, I/O error): nothing in this group is written, and the
            // rest must not run outside a transaction.
            break;
        }
    }
    let commit = if conn.is_autocommit() {
        Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
            Some("the transaction was rolled back by SQLite".to_owned()),
        ))
    } else {
        conn.execute_batch("COMMIT")
    };
    match commit {
        Ok(()) => {
            counters.transactions.fetch_add(1, Ordering::Relaxed);
            for done in applied {
                done.committed(counters);
            }
        }
        Err(e) => {
            // An I/O error during COMMIT may come after the WAL frames were
            // written: they could become durable on recovery, so the
            // outcome is unknown. Anything else rolled back.
            let in_doubt = matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::SystemIoFailure)
            );
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            let e = Arc::new(e);
            for done in applied {
                done.failed(&e, in_doubt);
            }
            for op in ops {
                op.refuse(|| StoreError::Database {
                    op: "commit",
                    source: Box::new(Arc::clone(&e)),
                });
            }
        }
    }
}

fn apply_in_savepoint(conn: &Connection, op: Write, now: Timestamp) -> Applied {
    let savepoint = conn.execute_batch("SAVEPOINT op");
    let applied = match op {
        Write::Append { batch, reply } => {
            let result = savepoint
                .map_err(|e| StoreError::database("savepoint", e))
                .and_then(|()| insert_events(conn, &batch));
            Applied::Append {
                events: batch.events,
                reply,
                result,
            }
        }
        Write::Prune { prune, reply } => Applied::Count {
            reply,
            result: savepoint
                .map_err(|e| StoreError::database("savepoint", e))
                .and_then(|()| prune_events(conn, prune)),
        },
        Write::InsertApproval { approval, reply } => Applied::Count {
            reply,
            result: savepoint
                .map_err(|e| StoreError::database("savepoint", e))
                .and_then(|()| insert_approval(conn, &approval, now)),
        },
        Write::PruneApprovals {
            keep,
            before,
            chunk,
            reply,
        } => Applied::Count {
            reply,
            result: savepoint
                .map_err(|e| StoreError::database("savepoint", e))
                .and_then(|()| prune_approvals(conn, &keep, before, chunk)),
        },
        Write::Session { write, reply } => Applied::Count {
            reply,
            result: savepoint
                .map_err(|e| StoreError::database("savepoint", e))
                .and_then(|()| sessions::apply(conn, &write, now)),
        },
        Write::TransitionApproval { transition, reply } => Applied::Moved {
            reply,
            result: savepoint
                .map_err(|e| StoreError::database("savepoint", e))
                .and_then(|()| transition_approval(conn, &transition, now)),
        },
    };
    if !conn.is_autocommit() {
        let end = if applied.ok() {
            "RELEASE op"
        } else {
            "ROLLBACK TO op; RELEASE op"
        };
        let _ = conn.execute_batch(end);
    }
    applied
}

const INSERT_EVENT: &str = "INSERT INTO audit_events \
     (ts, level, source, session, kind, code, message, data) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

fn insert_events(conn: &Connection, batch: &Encoded) -> Result<Vec<u64>, StoreError> {
    let map = |e| StoreError::database("append events", e);
    let mut stmt = conn.prepare(INSERT_EVENT).map_err(map)?;
    let mut ids = Vec::with_capacity(batch.events.len());
    let mut bytes: u64 = 0;
    for (event, data) in batch.events.iter().zip(&batch.data) {
        bytes += event_bytes(event, data.as_deref());
        stmt.execute(params![
            ts_to_ns(event.timestamp),
            level_rank(event.level),
            event.source,
            event.session,
            event.kind.as_str(),
            event.code.as_ref().map(ErrorCode::as_str),
            event.message,
            data,
        ])
        .map_err(map)?;
        ids.push(u64::try_from(conn.last_insert_rowid()).unwrap_or(0));
    }
    conn.execute(
        "UPDATE audit_size SET bytes = bytes + ?1 WHERE id = 1",
        [to_i64(bytes)],
    )
    .map_err(map)?;
    Ok(ids)
}

/// What an event counts for in the trail's size: the same sum as
/// [`AUDIT_ROW_BYTES`], computed before the row exists.
fn event_bytes(event: &Event, data: Option<&str>) -> u64 {
    let text = event.source.len()
        + event.session.as_ref().map_or(0, String::len)
        + event.kind.as_str().len()
        + event.code.as_ref().map_or(0, |c| c.as_str().len())
        + event.message.len()
        + data.map_or(0, str::len);
    AUDIT_ROW_OVERHEAD + text as u64
}

/// Deletes the events whose ids `select` (a `SELECT id ...` taking
/// `args`) returns, and takes their bytes off the trail's size.
fn delete_events(conn: &Connection, select: &str, args: &[SqlValue]) -> Result<usize, StoreError> {
    let map = |e| StoreError::database("prune events", e);
    let bytes: i64 = conn
        .query_row(
            &format!(
                "SELECT coalesce(sum({AUDIT_ROW_BYTES}), 0) FROM audit_events WHERE id IN ({select})"
            ),
            rusqlite::params_from_iter(args),
            |row| row.get(0),
        )
        .map_err(map)?;
    let n = conn
        .execute(
            &format!("DELETE FROM audit_events WHERE id IN ({select})"),
            rusqlite::params_from_iter(args),
        )
        .map_err(map)?;
    conn.execute(
        "UPDATE audit_size SET bytes = max(0, bytes - ?1) WHERE id = 1",
        [bytes],
    )
    .map_err(map)?;
    Ok(n)
}

/// The audit trail's size in bytes, as [`AUDIT_ROW_BYTES`] counts it.
fn audit_bytes(conn: &Connection) -> Result<u64, StoreError> {
    conn.query_row("SELECT bytes FROM audit_size WHERE id = 1", [], |row| {
        row.get::<_, i64>(0)
    })
    .optional()
    .map(|n| n.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    .map_err(|e| StoreError::database("read the audit size", e))
}

fn prune_events(conn: &Connection, prune: Prune) -> Result<u64, StoreError> {
    let map = |e| StoreError::database("prune events", e);
    let deleted = match prune {
        Prune::OlderThan { cutoff, chunk } => delete_events(
            conn,
            "SELECT id FROM audit_events WHERE ts < ? ORDER BY ts, id LIMIT ?",
            &[
                SqlValue::Integer(ts_to_ns(cutoff)),
                SqlValue::Integer(to_i64(chunk as u64)),
            ],
        )?,
        Prune::KeepNewest { keep, chunk } => {
            // The newest row beyond the kept ones; it and everything older go.
            let boundary: Option<(i64, i64)> = conn
                .query_row(
                    "SELECT ts, id FROM audit_events ORDER BY ts DESC, id DESC LIMIT 1 OFFSET ?1",
                    [to_i64(keep)],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(map)?;
            match boundary {
                None => 0,
                Some((ts, id)) => delete_up_to(conn, ts, id, chunk)?,
            }
        }
        Prune::MaxBytes { max_bytes, chunk } => {
            let total = audit_bytes(conn)?;
            if total <= max_bytes {
                return Ok(0);
            }
            // The oldest rows whose bytes cover the excess, at most a
            // chunk of them: the last one is the boundary.
            let excess = total - max_bytes;
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT ts, id, {AUDIT_ROW_BYTES} FROM audit_events ORDER BY ts, id LIMIT ?1"
                ))
                .map_err(map)?;
            let mut rows = stmt.query([to_i64(chunk as u64)]).map_err(map)?;
            let mut covered: u64 = 0;
            let mut boundary = None;
            while let Some(row) = rows.next().map_err(map)? {
                boundary = Some((row.get::<_, i64>(0).map_err(map)?, row.get(1).map_err(map)?));
                covered += u64::try_from(row.get::<_, i64>(2).map_err(map)?).unwrap_or(0);
                if covered >= excess {
                    break;
                }
            }
            drop(rows);
            match boundary {
                None => 0,
                Some((ts, id)) => delete_up_to(conn, ts, id, chunk)?,
            }
        }
    };
    Ok(deleted as u64)
}

/// Deletes up to `chunk` of the oldest events, none newer than `(ts, id)`.
fn delete_up_to(conn: &Connection, ts: i64, id: i64, chunk: usize) -> Result<usize, StoreError> {
    delete_events(
        conn,
        "SELECT id FROM audit_events WHERE (ts, id) <= (?, ?) ORDER BY ts, id LIMIT ?",
        &[
            SqlValue::Integer(ts),
            SqlValue::Integer(id),
            SqlValue::Integer(to_i64(chunk as u64)),
        ],
    )
}

fn prune_approvals(
    conn: &Connection,
    keep: &str,
    before: Timestamp,
    chunk: usize,
) -> Result<u64, StoreError> {
    let n = conn
        .execute(
            "DELETE FROM approvals WHERE id IN (SELECT id FROM approvals \
             WHERE updated_at < ?1 AND state <> ?2 ORDER BY updated_at, id LIMIT ?3)",
            params![ts_to_ns(before), keep, to_i64(chunk as u64)],
        )
        .map_err(|e| StoreError::database("prune approvals", e))?;
    Ok(n as u64)
}

fn insert_approval(
    conn: &Connection,
    approval: &NewApproval,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let request = serde_json::to_string(&approval.request)
        .map_err(|e| StoreError::database("encode approval", e))?;
    conn.execute(
        "INSERT INTO approvals (state, request, created_at, updated_at, expires_at) \
         VALUES (?1, ?2, ?3, ?3, ?4)",
        params![
            approval.state,
            request,
            ts_to_ns(now),
            approval.expires_at.map(ts_to_ns)
        ],
    )
    .map_err(|e| StoreError::database("insert approval", e))?;
    Ok(u64::try_from(conn.last_insert_rowid()).unwrap_or(0))
}

fn transition_approval(
    conn: &Connection,
    transition: &ApprovalTransition,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let resolution = transition
        .resolution
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::database("encode resolution", e))?;
    let changed = conn
        .execute(
            "UPDATE approvals SET state = ?1, resolution = coalesce(?2, resolution), \
             updated_at = ?3 WHERE id = ?4 AND state = ?5",
            params![
                transition.to,
                resolution,
                ts_to_ns(now),
                to_i64(transition.id),
                transition.from
            ],
        )
        .map_err(|e| StoreError::database("transition approval", e))?;
    Ok(changed == 1)
}

impl SqliteStore {
    async fn session_write(
        &self,
        op: &'static str,
        write: SessionWrite,
    ) -> Result<u64, StoreError> {
        self.write(op, |reply| Op::Write(Write::Session { write, reply }))
            .await
    }
}

/// What [`SqliteStore::gauge_counts`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GaugeCounts {
    /// Sessions not deleted.
    pub live_sessions: u64,
    /// Approvals not decided.
    pub open_approvals: u64,
}

impl SessionStore for SqliteStore {
    fn create_session(&self, id: String, agent: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let n = self
                .session_write("create session", SessionWrite::Create { id, agent })
                .await?;
            Ok(n == 1)
        })
    }

    fn delete_session(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let n = self
                .session_write("delete session", SessionWrite::Delete { id })
                .await?;
            Ok(n == 1)
        })
    }

    fn set_session_model(
        &self,
        id: String,
        model: Option<String>,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let n = self
                .session_write("set session model", SessionWrite::SetModel { id, model })
                .await?;
            Ok(n == 1)
        })
    }

    fn session(&self, id: String) -> BoxFuture<'_, Result<Option<SessionRecord>, StoreError>> {
        Box::pin(self.read("read session", move |conn| {
            sessions::read_session(conn, &id)
        }))
    }

    fn sessions(&self) -> BoxFuture<'_, Result<Vec<SessionRecord>, StoreError>> {
        Box::pin(self.read("list sessions", sessions::read_sessions))
    }

    fn enqueue(
        &self,
        session: String,
        text: String,
    ) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        let text = self.mask_known(text);
        Box::pin(async move {
            let seq = self
                .session_write("enqueue", SessionWrite::Enqueue { session, text })
                .await?;
            Ok((seq > 0).then_some(seq))
        })
    }

    fn set_message_state(
        &self,
        session: String,
        seq: u64,
        state: MessageState,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let n = self
                .session_write(
                    "set message state",
                    SessionWrite::SetState {
                        session,
                        seq,
                        state,
                    },
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn finish(&self, mut finish: Finish) -> BoxFuture<'_, Result<bool, StoreError>> {
        finish.reply = finish.reply.map(|r| self.mask_known(r));
        if let (Some(redactor), Some(error)) = (self.redactor(), &mut finish.error) {
            redactor.redact_string(error);
        }
        Box::pin(async move {
            let n = self
                .session_write("finish message", SessionWrite::Finish(finish))
                .await?;
            Ok(n == 1)
        })
    }

    fn journal(
        &self,
        session: String,
        message: u64,
        entry: String,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        let entry = self.mask_known(entry);
        Box::pin(self.session_write(
            "journal",
            SessionWrite::Journal {
                session,
                message,
                entry,
                usage: None,
            },
        ))
    }

    fn message(
        &self,
        session: String,
        seq: u64,
    ) -> BoxFuture<'_, Result<Option<MessageRecord>, StoreError>> {
        Box::pin(self.read("read message", move |conn| {
            sessions::read_message(conn, &session, seq)
        }))
    }

    fn messages(&self, session: String) -> BoxFuture<'_, Result<Vec<MessageRecord>, StoreError>> {
        Box::pin(self.read("read messages", move |conn| {
            sessions::read_messages(conn, &session)
        }))
    }

    fn journal_entries(
        &self,
        session: String,
    ) -> BoxFuture<'_, Result<Vec<JournalRecord>, StoreError>> {
        Box::pin(self.read("read journal", move |conn| {
            sessions::read_journal(conn, &session)
        }))
    }

    fn unfinished_sessions(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(self.read("unfinished sessions", sessions::read_unfinished))
    }

    fn compact_journals(
        &self,
        before: Timestamp,
        chunk: usize,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.session_write("compact journals", SessionWrite::Compact { before, chunk }))
    }

    fn prune_messages(
        &self,
        before: Timestamp,
        chunk: usize,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.session_write(
            "prune messages",
            SessionWrite::PruneMessages { before, chunk },
        ))
    }

    fn message_pruned(&self, session: String, seq: u64) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.read("read message", move |conn| {
            sessions::read_message_pruned(conn, &session, seq)
        }))
    }

    fn prune_deleted_sessions(
        &self,
        before: Timestamp,
        chunk: usize,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.session_write(
            "prune deleted sessions",
            SessionWrite::PruneDeleted { before, chunk },
        ))
    }

    fn set_agent_model(
        &self,
        agent: String,
        model: Option<String>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.session_write(
                "set agent model",
                SessionWrite::SetAgentModel { agent, model },
            )
            .await
            .map(|_| ())
        })
    }

    fn agent_models(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, StoreError>> {
        Box::pin(self.read("read agent models", sessions::read_agent_models))
    }

    fn journal_turn(
        &self,
        session: String,
        message: u64,
        entry: String,
        usage: TurnUsage,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        let entry = self.mask_known(entry);
        Box::pin(self.session_write(
            "journal",
            SessionWrite::Journal {
                session,
                message,
                entry,
                usage: Some(usage),
            },
        ))
    }

    fn session_tokens(
        &self,
        session: String,
    ) -> BoxFuture<'_, Result<Vec<ModelTokens>, StoreError>> {
        Box::pin(self.read("read session tokens", move |conn| {
            sessions::read_session_tokens(conn, &session)
        }))
    }

    fn agent_tokens(&self) -> BoxFuture<'_, Result<Vec<AgentTokens>, StoreError>> {
        Box::pin(self.read("read agent tokens", sessions::read_agent_tokens))
    }
}

// ---------------------------------------------------------------- reads

#[derive(Debug)]
struct ReadPool {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    fn take(&self) -> Option<Connection> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn give_back(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::database("open a reader", e))?;
        conn.busy_timeout(self.busy_timeout)
            .map_err(|e| StoreError::database("set busy_timeout", e))?;
        Ok(conn)
    }

    /// Runs `f` on a pooled read-only connection on a blocking thread,
    /// interrupting it if it outlives `timeout`.
    async fn run<T, F>(
        self: &Arc<Self>,
        op: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || StoreError::Timeout { op, after: timeout };
        let permit = match tokio::time::timeout_at(
            deadline,
            Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(StoreError::Closed),
            Err(_) => return Err(timed_out()),
        };
        // The running read's interrupt handle, cleared (under the lock)
        // before its connection goes back to the pool, so a late interrupt
        // can never hit the next user of that connection.
        let running: Arc<Mutex<Option<InterruptHandle>>> = Arc::default();
        let pool = Arc::clone(self);
        let slot = Arc::clone(&running);
        let std_deadline = Instant::now() + timeout;
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = match pool.take() {
                Some(conn) => conn,
                None => pool.open()?,
            };
            *slot.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(conn.get_interrupt_handle());
            let result = if Instant::now() >= std_deadline {
                Err(StoreError::Timeout { op, after: timeout })
            } else {
                f(&conn)
            };
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = None;
            pool.give_back(conn);
            result
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(StoreError::database(op, join)),
            Err(_) => {
                if let Some(handle) = running
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
                {
                    handle.interrupt();
                }
                Err(timed_out())
            }
        }
    }
}

const EVENT_COLUMNS: &str =
    "SELECT id, ts, level, source, session, kind, code, message, data FROM audit_events";

fn query_events(conn: &Connection, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
    let map = |e| StoreError::database("query events", e);
    let filter = &query.filter;
    let mut sql = String::from(EVENT_COLUMNS);
    sql.push_str(" WHERE 1 = 1");
    let mut args: Vec<SqlValue> = Vec::new();
    if let Some(level) = filter.min_level {
        sql.push_str(" AND level >= ?");
        args.push(SqlValue::Integer(level_rank(level)));
    }
    if let Some(since) = filter.since {
        sql.push_str(" AND ts >= ?");
        args.push(SqlValue::Integer(ts_to_ns(since)));
    }
    if let Some(until) = filter.until {
        sql.push_str(" AND ts < ?");
        args.push(SqlValue::Integer(ts_to_ns(until)));
    }
    if let Some(session) = &filter.session {
        sql.push_str(" AND session = ?");
        args.push(SqlValue::Text(session.clone()));
    }
    if let Some(source) = &filter.source {
        let source = source.trim_end_matches('/');
        sql.push_str(" AND (source = ? OR substr(source, 1, ?) = ?)");
        args.push(SqlValue::Text(source.to_owned()));
        args.push(SqlValue::Integer(to_i64(source.chars().count() as u64 + 1)));
        args.push(SqlValue::Text(format!("{source}/")));
    }
    if let Some(code) = &filter.code {
        sql.push_str(" AND code = ?");
        args.push(SqlValue::Text(code.as_str().to_owned()));
    }
    if let Some(kind) = &filter.kind {
        sql.push_str(" AND kind = ?");
        args.push(SqlValue::Text(kind.as_str().to_owned()));
    }
    match query.order {
        Order::NewestFirst => sql.push_str(" ORDER BY ts DESC, id DESC"),
        Order::InsertedAfter(after) => {
            sql.push_str(" AND id > ? ORDER BY id ASC");
            args.push(SqlValue::Integer(to_i64(after)));
        }
    }
    // Without a text filter SQLite applies the limit; with one, rows are
    // filtered here as they stream and the scan stops at the limit.
    if filter.grep.is_none() {
        sql.push_str(" LIMIT ?");
        args.push(SqlValue::Integer(to_i64(query.limit as u64)));
    }
    let mut stmt = conn.prepare(&sql).map_err(map)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args)).map_err(map)?;
    let mut events = Vec::new();
    while events.len() < query.limit {
        let Some(row) = rows.next().map_err(map)? else {
            break;
        };
        let raw = RawEvent {
            id: row.get(0).map_err(map)?,
            ts: row.get(1).map_err(map)?,
            level: row.get(2).map_err(map)?,
            source: row.get(3).map_err(map)?,
            session: row.get(4).map_err(map)?,
            kind: row.get(5).map_err(map)?,
            code: row.get(6).map_err(map)?,
            message: row.get(7).map_err(map)?,
            data: row.get(8).map_err(map)?,
        };
        if let Some(grep) = &filter.grep
            && !grep.matches_fields(
                &raw.message,
                &raw.source,
                raw.code.as_deref(),
                raw.data.as_deref(),
            )
        {
            continue;
        }
        events.push(raw.into_event()?);
    }
    Ok(events)
}

struct RawEvent {
    id: i64,
    ts: i64,
    level: i64,
    source: String,
    session: Option<String>,
    kind: String,
    code: Option<String>,
    message: String,
    data: Option<String>,
}

impl RawEvent {
    fn into_event(self) -> Result<Event, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            table: "audit_events",
            detail,
        };
        let level = level_from_rank(self.level)
            .ok_or_else(|| corrupt(format!("event {}: level {}", self.id, self.level)))?;
        let data = match self.data {
            None => Value::Null,
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| corrupt(format!("event {}: data: {e}", self.id)))?,
        };
        Ok(Event {
            id: u64::try_from(self.id).ok(),
            timestamp: ns_to_ts(self.ts),
            level,
            source: self.source,
            session: self.session,
            kind: EventKind::parse(&self.kind),
            code: self.code.as_deref().map(ErrorCode::parse),
            message: self.message,
            data,
        })
    }
}

const APPROVAL_COLUMNS: &str = "SELECT id, state, request, resolution, created_at, updated_at, \
     expires_at FROM approvals";

fn approval_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ApprovalRecord, StoreError>> {
    let id: i64 = row.get(0)?;
    let request: String = row.get(2)?;
    let resolution: Option<String> = row.get(3)?;
    let parse = |text: &str| {
        serde_json::from_str::<Value>(text).map_err(|e| StoreError::Corrupt {
            table: "approvals",
            detail: format!("approval {id}: {e}"),
        })
    };
    let request = match parse(&request) {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    let resolution = match resolution.as_deref().map(parse).transpose() {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(ApprovalRecord {
        id: u64::try_from(id).unwrap_or(0),
        state: row.get(1)?,
        request,
        resolution,
        created_at: ns_to_ts(row.get(4)?),
        updated_at: ns_to_ts(row.get(5)?),
        expires_at: row.get::<_, Option<i64>>(6)?.map(ns_to_ts),
    }))
}

// ---------------------------------------------------------------- encodings

/// Nanoseconds since the epoch; saturates outside 1677..2262, which no
/// audit timestamp reaches.
fn ts_to_ns(ts: Timestamp) -> i64 {
    let ns = ts.as_nanosecond();
    i64::try_from(ns).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX })
}

fn ns_to_ts(ns: i64) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn level_rank(level: Level) -> i64 {
    match level {
        Level::Debug => 0,
        Level::Info => 1,
        Level::Warning => 2,
        Level::Error => 3,
        Level::Critical => 4,
    }
}

fn level_from_rank(rank: i64) -> Option<Level> {
    Some(match rank {
        0 => Level::Debug,
        1 => Level::Info,
        2 => Level::Warning,
        3 => Level::Error,
        4 => Level::Critical,
        _ => return None,
    })
}
