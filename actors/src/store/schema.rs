//! The database schema, as an ordered list of migrations kept in code.
//!
//! A database file outlives the binary that created it, so the schema has
//! to be upgraded in place: at open, every migration newer than the file's
//! recorded version is applied, in order, in one transaction together with
//! the `schema_version` rows that record them. A crash half-way leaves the
//! file at its old version, and opening it again is a no-op once it is
//! current. Migrations are append-only: a released one is never edited,
//! a change is a new one.
//!
//! # Tables
//! - `audit_events`: the audit trail. `ts` is nanoseconds since the Unix
//!   epoch (UTC); `level` is 0 debug, 1 info, 2 warning, 3 error,
//!   4 critical, so "at or above" is a range; `data` is JSON text or
//!   NULL. Ids come from AUTOINCREMENT, so they are never reused even
//!   after retention deleted the newest rows, and paging by id never
//!   skips or repeats.
//! - `approvals`: owned by the escalation actor. `state` is its vocabulary
//!   (the store only compares it); `request` and `resolution` are JSON.
//! - `sessions` (migration 2): one row per agent session; `state` is
//!   `live` or `deleted` (rows are kept for the audit trail).
//! - `session_inbox`: one
//!   row per message sent to a session. Acknowledging a message to its
//!   sender means its row has committed; `seq` orders a session's messages;
//!   `state` goes `queued` -> `running` (the session started on it) ->
//!   (`waiting_approval` ->) `done` or `failed`; migration 2 added `reply`,
//!   `error` and `finished_at`. A restarted session resumes from its first message not `done`.
//! - `session_journal`: an append-only log per session of what it did: turn started, tool
//!   call intended (with its idempotency key), tool outcome, turn done. A
//!   restarted session replays it; an intent without an outcome for a
//!   non-idempotent tool is reported, never silently repeated. `message`
//!   (migration 2) is the inbox `seq` an entry belongs to, so journals of
//!   finished messages can be compacted.
//! - Migration 3: `agent_models` holds an agent-wide `switch_model`, so
//!   it outlives a restart; `sessions.pruned_through` is the highest
//!   message `seq` retention deleted, so a pruned message is told apart
//!   from one that never existed; `audit_size` (one row) keeps the audit
//!   trail's size in bytes as rows come and go (see [`AUDIT_ROW_BYTES`]),
//!   so retention by bytes never has to sum the table; and indexes for the
//!   retention sweeps.
//! - Migration 4: `session_usage` holds the tokens each session used,
//!   per model (`turns` counts the replies summed). A model turn's row is
//!   updated in the transaction that journals the turn, so a journal
//!   replayed after a restart never counts a turn again, and the totals
//!   outlive the compaction of journals. Per agent is a join on
//!   `sessions`.

/// One step of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its version; versions increase by one from 1.
    pub version: i64,
    /// What it does, recorded in `schema_version`.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "audit events, approvals, session inboxes and journals",
        sql: r#"
CREATE TABLE audit_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      INTEGER NOT NULL,
    level   INTEGER NOT NULL CHECK (level BETWEEN 0 AND 4),
    source  TEXT NOT NULL,
    session TEXT,
    kind    TEXT NOT NULL,
    code    TEXT,
    message TEXT NOT NULL,
    data    TEXT
) STRICT;
CREATE INDEX audit_events_ts ON audit_events (ts);
CREATE INDEX audit_events_session ON audit_events (session, ts) WHERE session IS NOT NULL;

CREATE TABLE approvals (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    state      TEXT NOT NULL,
    request    TEXT NOT NULL,
    resolution TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER
) STRICT;
CREATE INDEX approvals_state ON approvals (state, id);

CREATE TABLE session_inbox (
    session     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending',
    message     TEXT NOT NULL,
    PRIMARY KEY (session, seq)
) STRICT;

CREATE TABLE session_journal (
    session TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    entry   TEXT NOT NULL,
    PRIMARY KEY (session, seq)
) STRICT;
"#,
    },
    Migration {
        version: 2,
        name: "sessions; message replies and states; journal entries by message",
        sql: r#"
CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    agent      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    state      TEXT NOT NULL,
    model      TEXT,
    deleted_at INTEGER
) STRICT;
ALTER TABLE session_inbox ADD COLUMN reply TEXT;
ALTER TABLE session_inbox ADD COLUMN error TEXT;
ALTER TABLE session_inbox ADD COLUMN finished_at INTEGER;
CREATE INDEX session_inbox_open ON session_inbox (session) WHERE state NOT IN ('done', 'failed');
ALTER TABLE session_journal ADD COLUMN message INTEGER;
"#,
    },
    Migration {
        version: 3,
        name: "agent model switches; retention of messages, approvals, sessions; audit size",
        sql: r#"
CREATE TABLE agent_models (
    agent      TEXT PRIMARY KEY,
    model      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
ALTER TABLE sessions ADD COLUMN pruned_through INTEGER NOT NULL DEFAULT 0;
CREATE INDEX session_inbox_finished ON session_inbox (finished_at)
    WHERE state IN ('done', 'failed');
CREATE INDEX sessions_deleted ON sessions (deleted_at) WHERE state = 'deleted';
CREATE INDEX approvals_updated ON approvals (updated_at);
CREATE TABLE audit_size (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    bytes INTEGER NOT NULL
) STRICT;
INSERT INTO audit_size (id, bytes)
    SELECT 1, coalesce(sum(
        64 + length(CAST(source AS BLOB)) + coalesce(length(CAST(session AS BLOB)), 0)
        + length(CAST(kind AS BLOB)) + coalesce(length(CAST(code AS BLOB)), 0)
        + length(CAST(message AS BLOB)) + coalesce(length(CAST(data AS BLOB)), 0)), 0)
    FROM audit_events;
"#,
    },
    Migration {
        version: 4,
        name: "token usage per session and model",
        sql: r#"
CREATE TABLE session_usage (
    session           TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    turns             INTEGER NOT NULL,
    PRIMARY KEY (session, model)
) STRICT;
"#,
    },
];

/// What one audit row counts for in the trail's size: its text fields'
/// bytes plus [`AUDIT_ROW_OVERHEAD`] for the integers and the indexes. An
/// estimate of the disk it takes, cheap to keep exactly in step with the
/// rows (the writer adds and subtracts the same expression).
pub(crate) const AUDIT_ROW_BYTES: &str = "(64 + length(CAST(source AS BLOB)) \
     + coalesce(length(CAST(session AS BLOB)), 0) + length(CAST(kind AS BLOB)) \
     + coalesce(length(CAST(code AS BLOB)), 0) + length(CAST(message AS BLOB)) \
     + coalesce(length(CAST(data AS BLOB)), 0))";

/// The fixed part of [`AUDIT_ROW_BYTES`].
pub(crate) const AUDIT_ROW_OVERHEAD: u64 = 64;

/// The newest schema version this build knows.
pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}
