//! hale's durable state: the audit trail, approvals, and (schema only for
//! now) session inboxes and journals.
//!
//! Some data must outlive any actor and even a `kill -9` of the whole
//! process: an audit event of a failure, an open approval, an acknowledged
//! message to a session. The actors that own that data (audit, escalation,
//! sessions) talk to it only through the [`Store`] trait, so a server
//! database can replace SQLite later without touching them. [`SqliteStore`]
//! is the default: one file, one writer thread with group commit, and a
//! small pool of read-only connections.
//!
//! # The acknowledgement rule
//! Every write method resolves `Ok` only after the transaction that holds
//! the write has committed with the store's [`Durability`]. Callers that
//! acknowledge something to a third party (a session message, an approval)
//! must wait for that `Ok` first; that is the whole durability contract.

mod schema;
mod sessions;
mod sqlite;

use std::time::Duration;

use jiff::Timestamp;
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::ErrorCode;
use crate::event::{Event, EventKind, Level};
use crate::tool::BoxFuture;

pub use schema::{MIGRATIONS, Migration};
pub use sessions::{
    AgentTokens, Finish, JournalRecord, MessageRecord, MessageState, ModelTokens, SessionRecord,
    SessionStore, TurnUsage,
};
pub use sqlite::{
    DEFAULT_PATH, Durability, GaugeCounts, PRIVATE_FILE_MODE, SqliteStore, StoreConfig,
    WriterStats, database_files,
};

/// The durable store, as the actors see it.
///
/// Every method is bounded in time (implementations apply their own
/// timeouts) and never blocks the async executor.
pub trait Store: Send + Sync + 'static {
    /// Appends `events` in one transaction and returns their ids, in
    /// order, once that transaction has committed. The events' own `id`
    /// fields are ignored.
    ///
    /// # Errors
    /// [`AppendError::NotCommitted`] hands the events back (nothing was
    /// written, so appending them again cannot duplicate them);
    /// [`AppendError::InDoubt`] means they may or may not have been written.
    fn append(&self, events: Vec<Event>) -> BoxFuture<'_, Result<Vec<u64>, AppendError>>;

    /// The events matching `query`, in its order, at most `query.limit`.
    fn query(&self, query: EventQuery) -> BoxFuture<'_, Result<Vec<Event>, StoreError>>;

    /// How many events the store holds.
    fn count(&self) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Deletes one chunk of events under a retention rule and returns how
    /// many were deleted; call again until it returns less than the chunk.
    fn prune(&self, prune: Prune) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// The audit trail's size in bytes: each event's text fields plus a
    /// fixed overhead per row, kept in step with every append and prune.
    fn audit_bytes(&self) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Deletes up to `chunk` approvals, oldest first, that are not in
    /// state `keep` and last changed before `before` (decided approvals
    /// past their retention); returns how many.
    fn prune_approvals(
        &self,
        keep: String,
        before: Timestamp,
        chunk: usize,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Stores a new approval and returns its id once committed.
    fn insert_approval(&self, approval: NewApproval) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Moves approval `id` from state `from` to state `to` (recording
    /// `resolution`) if it is still in `from`; returns whether it moved.
    /// The compare-and-set makes a resolution happen once even when a
    /// human and a timeout race.
    fn transition_approval(
        &self,
        transition: ApprovalTransition,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// The approval with this id, if any.
    fn approval(&self, id: u64) -> BoxFuture<'_, Result<Option<ApprovalRecord>, StoreError>>;

    /// Every approval, or those in `state`, oldest first.
    fn approvals(
        &self,
        state: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<ApprovalRecord>, StoreError>>;
}

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("{op}: {source}")]
    Database {
        /// What the store was doing.
        op: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file-system operation failed (creating the database's directory).
    #[error("{op}: {source}")]
    Io {
        /// What the store was doing.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The operation did not finish in time. For a write this says nothing
    /// about whether it committed.
    #[error("{op} did not finish within {} ms", after.as_millis())]
    Timeout {
        /// What the store was doing.
        op: &'static str,
        /// How long it waited.
        after: Duration,
    },
    /// The store was closed (or its writer thread died).
    #[error("the store is closed")]
    Closed,
    /// The database was written by a newer hale whose schema this build
    /// does not know.
    #[error(
        "the database has schema version {found}, newer than this build's {known}; \
         upgrade hale or point it at another file"
    )]
    SchemaTooNew {
        /// The version found in the file.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// A stored row could not be read back (a value outside its domain).
    #[error("corrupt row in {table}: {detail}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl StoreError {
    pub(crate) fn database(
        op: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Database {
            op,
            source: Box::new(source),
        }
    }
}

/// Why an append failed, and whether the events were written.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Nothing was committed. The events are handed back so the caller can
    /// retry without cloning them and without risking duplicates.
    #[error("not committed: {error}")]
    NotCommitted {
        /// What went wrong.
        error: StoreError,
        /// The events, unchanged.
        events: Vec<Event>,
    },
    /// The events may or may not have been committed (the wait for the
    /// acknowledgement timed out, the writer vanished mid-transaction, or
    /// the commit's sync to disk failed).
    #[error("commit in doubt: {error}")]
    InDoubt {
        /// What went wrong.
        error: StoreError,
    },
}

impl AppendError {
    /// The underlying store error.
    pub fn error(&self) -> &StoreError {
        match self {
            Self::NotCommitted { error, .. } | Self::InDoubt { error } => error,
        }
    }
}

/// A text filter over an event's message, source, code and data (as JSON
/// text).
///
/// Smart case, as in ripgrep: a pattern with no upper-case letter matches
/// case-insensitively, one with an upper-case letter matches exactly.
#[derive(Debug, Clone)]
pub struct Grep {
    pattern: String,
    fixed: bool,
    regex: Regex,
}

impl Grep {
    /// A regular expression (Rust `regex` syntax).
    ///
    /// # Errors
    /// The pattern is not a valid regular expression.
    pub fn regex(pattern: &str) -> Result<Self, regex::Error> {
        Self::build(pattern, pattern, false)
    }

    /// A plain substring.
    ///
    /// # Errors
    /// Only a pattern too large to compile (over a mebibyte).
    pub fn text(text: &str) -> Result<Self, regex::Error> {
        Self::build(text, &regex::escape(text), true)
    }

    fn build(pattern: &str, source: &str, fixed: bool) -> Result<Self, regex::Error> {
        let smart_case = !pattern.chars().any(char::is_uppercase);
        let regex = RegexBuilder::new(source)
            .case_insensitive(smart_case)
            .size_limit(1 << 20)
            .build()?;
        Ok(Self {
            pattern: pattern.to_owned(),
            fixed,
            regex,
        })
    }

    /// The pattern as given.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern is a plain substring rather than a regex.
    pub fn is_fixed(&self) -> bool {
        self.fixed
    }

    /// Whether `text` matches.
    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }

    /// Whether an event with these fields matches: the message, the
    /// source, the code and the data's JSON text are searched, each on its
    /// own (a match never spans two fields).
    pub fn matches_fields(
        &self,
        message: &str,
        source: &str,
        code: Option<&str>,
        data_json: Option<&str>,
    ) -> bool {
        self.is_match(message)
            || self.is_match(source)
            || code.is_some_and(|c| self.is_match(c))
            || data_json.is_some_and(|d| self.is_match(d))
    }
}

/// Which events a query or export selects. Every field left `None`
/// selects everything.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Events at this level or above.
    pub min_level: Option<Level>,
    /// Events at or after this time.
    pub since: Option<Timestamp>,
    /// Events strictly before this time.
    pub until: Option<Timestamp>,
    /// Events whose message, source, code or data match.
    pub grep: Option<Grep>,
    /// Events of this session.
    pub session: Option<String>,
    /// Events from this source or below it: `hale/mcp` selects
    /// `hale/mcp` and `hale/mcp/weather`, not `hale/mcpx`.
    pub source: Option<String>,
    /// Events with this failure code.
    pub code: Option<ErrorCode>,
    /// Events of this kind.
    pub kind: Option<EventKind>,
}

/// The order of a query's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Newest first by timestamp, then by id (what a reader of logs wants).
    #[default]
    NewestFirst,
    /// Ascending ids strictly greater than the given one: insertion order,
    /// for paging through everything (export) without skipping or repeating.
    InsertedAfter(u64),
}

/// A query over the audit events.
#[derive(Debug, Clone)]
pub struct EventQuery {
    /// Which events.
    pub filter: EventFilter,
    /// In which order.
    pub order: Order,
    /// At most this many.
    pub limit: usize,
}

impl EventQuery {
    /// The newest `limit` events matching `filter`.
    pub fn newest(filter: EventFilter, limit: usize) -> Self {
        Self {
            filter,
            order: Order::NewestFirst,
            limit,
        }
    }
}

/// One retention rule, applied a chunk at a time so a large deletion never
/// holds the writer for long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prune {
    /// Delete up to `chunk` events with a timestamp before `cutoff`,
    /// oldest first.
    OlderThan {
        /// The oldest timestamp kept.
        cutoff: Timestamp,
        /// The most rows deleted by this call.
        chunk: usize,
    },
    /// Delete up to `chunk` of the events beyond the newest `keep` (newest
    /// by timestamp, then id), oldest first.
    KeepNewest {
        /// How many of the newest events are kept.
        keep: u64,
        /// The most rows deleted by this call.
        chunk: usize,
    },
    /// Delete up to `chunk` of the oldest events, as many as it takes to
    /// bring the trail's size ([`Store::audit_bytes`]) to `max_bytes` or
    /// under.
    MaxBytes {
        /// The most bytes kept.
        max_bytes: u64,
        /// The most rows deleted by this call.
        chunk: usize,
    },
}

/// An approval to store. The state vocabulary belongs to the escalation
/// actor; the store only compares states.
#[derive(Debug, Clone, PartialEq)]
pub struct NewApproval {
    /// The initial state, such as `open`.
    pub state: String,
    /// What is being asked (title, diagnosis, options, recommendation).
    pub request: Value,
    /// When it times out, if it does.
    pub expires_at: Option<Timestamp>,
}

/// A compare-and-set of an approval's state.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalTransition {
    /// The approval.
    pub id: u64,
    /// The state it must be in now.
    pub from: String,
    /// The state it moves to.
    pub to: String,
    /// The decision, recorded with the move (replaces any earlier one when
    /// `Some`).
    pub resolution: Option<Value>,
}

/// A stored approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// Its id.
    pub id: u64,
    /// Its current state.
    pub state: String,
    /// What was asked.
    pub request: Value,
    /// The decision, once there is one.
    pub resolution: Option<Value>,
    /// When it was opened.
    pub created_at: Timestamp,
    /// When its state last changed.
    pub updated_at: Timestamp,
    /// When it times out, if it does.
    pub expires_at: Option<Timestamp>,
}
