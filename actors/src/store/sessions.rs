//! The durable half of agent sessions: their records, inboxes and journals.
//!
//! A message acknowledged to its sender must survive the kill of its
//! session actor and the `kill -9` of the whole process, and a session that
//! restarts must know exactly which steps of its current message already
//! happened. Both facts live here, behind [`SessionStore`], so the session
//! actor keeps nothing in memory that it cannot rebuild: an inbox row is
//! committed before [`SessionStore::enqueue`] returns, and every journal
//! entry is committed before the step it records is acted upon.
//!
//! Sequence numbers (a message's `seq` within its session, a journal
//! entry's `seq`) are assigned inside the writer's transaction, so two
//! incarnations of a session racing around a restart can never collide on
//! a key; the journal's readers resolve duplicates instead (the first
//! record of a step wins).

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::model::Usage;
use crate::tool::BoxFuture;

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    /// Stored, not started.
    Queued,
    /// The session is working on it.
    Running,
    /// The session waits for a human's decision on an approval.
    WaitingApproval,
    /// Answered.
    Done,
    /// Finished without an answer (budget refused, aborted by a decision).
    Failed,
}

impl MessageState {
    /// The spelling stored in the database and used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::WaitingApproval => "waiting_approval",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// Whether the message is finished (done or failed).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" | "pending" => Self::Queued,
            "running" | "taken" => Self::Running,
            "waiting_approval" => Self::WaitingApproval,
            "done" => Self::Done,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Its id.
    pub id: String,
    /// The agent definition it runs.
    pub agent: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// The model an agent or operator switched it to, if any.
    pub model: Option<String>,
    /// Whether it was deleted (its rows are kept for the audit trail).
    pub deleted: bool,
}

/// One message of a session's inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The session.
    pub session: String,
    /// Its position in the session's inbox, from 1.
    pub seq: u64,
    /// The text sent.
    pub text: String,
    /// Where it is.
    pub state: MessageState,
    /// The reply, once done.
    pub reply: Option<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// When it was stored.
    pub created_at: Timestamp,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
}

/// One journal entry as stored: the entry itself is the session's JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalRecord {
    /// Position in the session's journal.
    pub seq: u64,
    /// The message it belongs to.
    pub message: u64,
    /// When it was written.
    pub at: Timestamp,
    /// The entry, JSON.
    pub entry: String,
}

/// What a message's finish records.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// The session.
    pub session: String,
    /// The message.
    pub seq: u64,
    /// `Done` or `Failed`.
    pub state: MessageState,
    /// The reply.
    pub reply: Option<String>,
    /// The error, for a failed message.
    pub error: Option<String>,
}

/// The tokens a session used with one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelTokens {
    /// The model's configured name.
    pub model: String,
    /// The tokens, summed over its replies.
    pub usage: Usage,
    /// The replies summed.
    pub turns: u64,
}

/// The tokens an agent's sessions used with one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentTokens {
    /// The agent.
    pub agent: String,
    /// The model's configured name.
    pub model: String,
    /// The tokens, summed over its sessions' replies.
    pub usage: Usage,
    /// The replies summed.
    pub turns: u64,
}

/// A model turn's usage, counted with its journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnUsage {
    /// The model that answered.
    pub model: String,
    /// What it reported.
    pub usage: Usage,
}

/// The durable operations of sessions. Writes resolve once committed.
pub trait SessionStore: Send + Sync + 'static {
    /// Creates a session; `Ok(false)` if the id is taken.
    fn create_session(&self, id: String, agent: String) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Marks a session deleted; `Ok(false)` if there was no live one.
    fn delete_session(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Records the model a session was switched to (`None` restores the
    /// agent's chain); `Ok(false)` if there is no live session.
    fn set_session_model(
        &self,
        id: String,
        model: Option<String>,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// The session, if it exists (deleted ones included).
    fn session(&self, id: String) -> BoxFuture<'_, Result<Option<SessionRecord>, StoreError>>;

    /// Every live session, oldest first.
    fn sessions(&self) -> BoxFuture<'_, Result<Vec<SessionRecord>, StoreError>>;

    /// Stores a message for a live session and returns its `seq`, once
    /// committed; `Ok(None)` if the session does not exist or was deleted.
    fn enqueue(
        &self,
        session: String,
        text: String,
    ) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;

    /// Moves a message to `state` unless it is already final; returns
    /// whether it moved.
    fn set_message_state(
        &self,
        session: String,
        seq: u64,
        state: MessageState,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Finishes a message unless it already is; returns whether this call
    /// finished it.
    fn finish(&self, finish: Finish) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Appends a journal entry (JSON) for `message`; returns its `seq`.
    fn journal(
        &self,
        session: String,
        message: u64,
        entry: String,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// One message.
    fn message(
        &self,
        session: String,
        seq: u64,
    ) -> BoxFuture<'_, Result<Option<MessageRecord>, StoreError>>;

    /// A session's messages, in order.
    fn messages(&self, session: String) -> BoxFuture<'_, Result<Vec<MessageRecord>, StoreError>>;

    /// A session's journal, in order.
    fn journal_entries(
        &self,
        session: String,
    ) -> BoxFuture<'_, Result<Vec<JournalRecord>, StoreError>>;

    /// The live sessions with a message not finished.
    fn unfinished_sessions(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;

    /// Deletes up to `chunk` journal rows of messages finished before
    /// `before`; returns how many. Their inbox rows (text and reply) stay.
    fn compact_journals(
        &self,
        before: Timestamp,
        chunk: usize,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Deletes up to `chunk` messages finished before `before`, oldest
    /// first, with their journals; returns how many. Each session
    /// remembers the highest `seq` pruned ([`message_pruned`](Self::message_pruned)).
    fn prune_messages(
        &self,
        before: Timestamp,
        chunk: usize,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Whether message `seq` of `session` was deleted by retention (as
    /// opposed to never existing).
    fn message_pruned(&self, session: String, seq: u64) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Deletes sessions deleted before `before`, oldest first, with their
    /// inboxes and journals, up to `chunk` rows in all; returns how many
    /// rows.
    fn prune_deleted_sessions(
        &self,
        before: Timestamp,
        chunk: usize,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Records an agent-wide model switch (`None` restores the agent's
    /// chain), so it outlives a restart.
    fn set_agent_model(
        &self,
        agent: String,
        model: Option<String>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Every recorded agent-wide switch: `(agent, model)`.
    fn agent_models(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, StoreError>>;

    /// Appends a model turn's journal entry (as [`journal`](Self::journal))
    /// and adds `usage` to the session's totals, in one transaction: a
    /// turn is counted exactly when its entry is written, so replaying
    /// the journal never counts it again, and a write that fails counts
    /// nothing.
    fn journal_turn(
        &self,
        session: String,
        message: u64,
        entry: String,
        usage: TurnUsage,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// The tokens `session` used, per model, by model name (empty for a
    /// session that never got a reply with usage, or does not exist).
    fn session_tokens(
        &self,
        session: String,
    ) -> BoxFuture<'_, Result<Vec<ModelTokens>, StoreError>>;

    /// The tokens every agent's sessions used, per agent and model
    /// (sessions deleted by retention no longer count).
    fn agent_tokens(&self) -> BoxFuture<'_, Result<Vec<AgentTokens>, StoreError>>;
}

/// A write of the session tables, applied by the store's writer.
#[derive(Debug)]
pub(crate) enum SessionWrite {
    Create {
        id: String,
        agent: String,
    },
    Delete {
        id: String,
    },
    SetModel {
        id: String,
        model: Option<String>,
    },
    Enqueue {
        session: String,
        text: String,
    },
    SetState {
        session: String,
        seq: u64,
        state: MessageState,
    },
    Finish(Finish),
    Journal {
        session: String,
        message: u64,
        entry: String,
        usage: Option<TurnUsage>,
    },
    Compact {
        before: Timestamp,
        chunk: usize,
    },
    PruneMessages {
        before: Timestamp,
        chunk: usize,
    },
    PruneDeleted {
        before: Timestamp,
        chunk: usize,
    },
    SetAgentModel {
        agent: String,
        model: Option<String>,
    },
}

fn db(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::database(op, e)
}

fn ns(ts: Timestamp) -> i64 {
    i64::try_from(ts.as_nanosecond()).unwrap_or(i64::MAX)
}

fn ts(ns: i64) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn seq_u64(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

/// Applies one write inside the writer's open transaction. The result is a
/// count or a sequence number, depending on the write (0 meaning "nothing
/// to do" where a `bool` or `Option` is returned to the caller).
pub(crate) fn apply(
    conn: &Connection,
    write: &SessionWrite,
    now: Timestamp,
) -> Result<u64, StoreError> {
    match write {
        SessionWrite::Create { id, agent } => {
            let n = conn
                .execute(
                    "INSERT OR IGNORE INTO sessions (id, agent, created_at, state) \
                     VALUES (?1, ?2, ?3, 'live')",
                    params![id, agent, ns(now)],
                )
                .map_err(db("create session"))?;
            Ok(n as u64)
        }
        SessionWrite::Delete { id } => {
            let n = conn
                .execute(
                    "UPDATE sessions SET state = 'deleted', deleted_at = ?2 \
                     WHERE id = ?1 AND state = 'live'",
                    params![id, ns(now)],
                )
                .map_err(db("delete session"))?;
            Ok(n as u64)
        }
        SessionWrite::SetModel { id, model } => {
            let n = conn
                .execute(
                    "UPDATE sessions SET model = ?2 WHERE id = ?1 AND state = 'live'",
                    params![id, model],
                )
                .map_err(db("set session model"))?;
            Ok(n as u64)
        }
        SessionWrite::Enqueue { session, text } => {
            let live: Option<i64> = conn
                .query_row(
                    "SELECT 1 FROM sessions WHERE id = ?1 AND state = 'live'",
                    params![session],
                    |row| row.get(0),
                )
                .optional()
                .map_err(db("enqueue"))?;
            if live.is_none() {
                return Ok(0);
            }
            // Past every seq retention deleted too: a message id is never
            // reused, even once the whole inbox was pruned.
            let seq: i64 = conn
                .query_row(
                    "SELECT max(coalesce((SELECT max(seq) FROM session_inbox WHERE session = ?1), 0), \
                     coalesce((SELECT pruned_through FROM sessions WHERE id = ?1), 0)) + 1",
                    params![session],
                    |row| row.get(0),
                )
                .map_err(db("enqueue"))?;
            conn.execute(
                "INSERT INTO session_inbox (session, seq, received_at, state, message) \
                 VALUES (?1, ?2, ?3, 'queued', ?4)",
                params![session, seq, ns(now), text],
            )
            .map_err(db("enqueue"))?;
            Ok(seq_u64(seq))
        }
        SessionWrite::SetState {
            session,
            seq,
            state,
        } => {
            let n = conn
                .execute(
                    "UPDATE session_inbox SET state = ?3 WHERE session = ?1 AND seq = ?2 \
                     AND state NOT IN ('done', 'failed')",
                    params![session, seq_i64(*seq), state.as_str()],
                )
                .map_err(db("set message state"))?;
            Ok(n as u64)
        }
        SessionWrite::Finish(finish) => {
            let n = conn
                .execute(
                    "UPDATE session_inbox SET state = ?3, reply = ?4, error = ?5, finished_at = ?6 \
                     WHERE session = ?1 AND seq = ?2 AND state NOT IN ('done', 'failed')",
                    params![
                        finish.session,
                        seq_i64(finish.seq),
                        finish.state.as_str(),
                        finish.reply,
                        finish.error,
                        ns(now)
                    ],
                )
                .map_err(db("finish message"))?;
            Ok(n as u64)
        }
        SessionWrite::Journal {
            session,
            message,
            entry,
            usage,
        } => {
            let seq: i64 = conn
                .query_row(
                    "SELECT coalesce(max(seq), 0) + 1 FROM session_journal WHERE session = ?1",
                    params![session],
                    |row| row.get(0),
                )
                .map_err(db("journal"))?;
            conn.execute(
                "INSERT INTO session_journal (session, seq, at, entry, message) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![session, seq, ns(now), entry, seq_i64(*message)],
            )
            .map_err(db("journal"))?;
            if let Some(usage) = usage {
                add_usage(conn, session, usage)?;
            }
            Ok(seq_u64(seq))
        }
        SessionWrite::Compact { before, chunk } => {
            let n = conn
                .execute(
                    "DELETE FROM session_journal WHERE rowid IN ( \
                       SELECT j.rowid FROM session_journal j JOIN session_inbox i \
                         ON i.session = j.session AND i.seq = j.message \
                       WHERE i.state IN ('done', 'failed') AND i.finished_at < ?1 \
                       LIMIT ?2)",
                    params![ns(*before), i64::try_from(*chunk).unwrap_or(i64::MAX)],
                )
                .map_err(db("compact journals"))?;
            Ok(n as u64)
        }
        SessionWrite::PruneMessages { before, chunk } => prune_messages(conn, *before, *chunk),
        SessionWrite::PruneDeleted { before, chunk } => prune_deleted(conn, *before, *chunk),
        SessionWrite::SetAgentModel { agent, model } => {
            match model {
                Some(model) => conn.execute(
                    "INSERT INTO agent_models (agent, model, updated_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (agent) DO UPDATE SET model = ?2, updated_at = ?3",
                    params![agent, model, ns(now)],
                ),
                None => conn.execute("DELETE FROM agent_models WHERE agent = ?1", params![agent]),
            }
            .map_err(db("set agent model"))?;
            Ok(1)
        }
    }
}

fn chunk_i64(chunk: usize) -> i64 {
    i64::try_from(chunk).unwrap_or(i64::MAX)
}

/// Retention of finished messages: the oldest `chunk` finished before
/// `before` go, with their journals; each session's `pruned_through`
/// rises to the highest `seq` it lost.
fn prune_messages(conn: &Connection, before: Timestamp, chunk: usize) -> Result<u64, StoreError> {
    let op = "prune messages";
    let victims: Vec<(String, i64)> = {
        let mut stmt = conn
            .prepare(
                "SELECT session, seq FROM session_inbox \
                 WHERE state IN ('done', 'failed') AND finished_at < ?1 \
                 ORDER BY finished_at LIMIT ?2",
            )
            .map_err(db(op))?;
        let rows = stmt
            .query_map(params![ns(before), chunk_i64(chunk)], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(db(op))?;
        rows.collect::<Result<_, _>>().map_err(db(op))?
    };
    let mut journal = conn
        .prepare("DELETE FROM session_journal WHERE session = ?1 AND message = ?2")
        .map_err(db(op))?;
    let mut inbox = conn
        .prepare("DELETE FROM session_inbox WHERE session = ?1 AND seq = ?2")
        .map_err(db(op))?;
    let mut mark = conn
        .prepare("UPDATE sessions SET pruned_through = max(pruned_through, ?2) WHERE id = ?1")
        .map_err(db(op))?;
    for (session, seq) in &victims {
        journal.execute(params![session, seq]).map_err(db(op))?;
        inbox.execute(params![session, seq]).map_err(db(op))?;
        mark.execute(params![session, seq]).map_err(db(op))?;
    }
    Ok(victims.len() as u64)
}

/// Retention of deleted sessions: journals, then inboxes, then the
/// session row, oldest deletion first, `chunk` rows in all, so a session
/// with a long history is removed over several calls.
fn prune_deleted(conn: &Connection, before: Timestamp, chunk: usize) -> Result<u64, StoreError> {
    let op = "prune deleted sessions";
    let mut budget = chunk;
    let mut deleted = 0;
    while budget > 0 {
        let oldest: Option<String> = conn
            .query_row(
                "SELECT id FROM sessions WHERE state = 'deleted' AND deleted_at < ?1 \
                 ORDER BY deleted_at, id LIMIT 1",
                params![ns(before)],
                |row| row.get(0),
            )
            .optional()
            .map_err(db(op))?;
        let Some(id) = oldest else { break };
        for table in ["session_journal", "session_inbox", "session_usage"] {
            let n = conn
                .execute(
                    &format!(
                        "DELETE FROM {table} WHERE rowid IN \
                         (SELECT rowid FROM {table} WHERE session = ?1 LIMIT ?2)"
                    ),
                    params![id, chunk_i64(budget)],
                )
                .map_err(db(op))?;
            budget -= n.min(budget);
            deleted += n as u64;
            if budget == 0 {
                return Ok(deleted);
            }
        }
        conn.execute("DELETE FROM sessions WHERE id = ?1", params![id])
            .map_err(db(op))?;
        budget -= 1;
        deleted += 1;
    }
    Ok(deleted)
}

fn tokens_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn add_usage(conn: &Connection, session: &str, turn: &TurnUsage) -> Result<(), StoreError> {
    let u = turn.usage;
    conn.execute(
        "INSERT INTO session_usage \
           (session, model, prompt_tokens, completion_tokens, cached_tokens, turns) \
         VALUES (?1, ?2, ?3, ?4, ?5, 1) \
         ON CONFLICT (session, model) DO UPDATE SET \
           prompt_tokens = prompt_tokens + ?3, completion_tokens = completion_tokens + ?4, \
           cached_tokens = cached_tokens + ?5, turns = turns + 1",
        params![
            session,
            turn.model,
            tokens_i64(u.prompt_tokens),
            tokens_i64(u.completion_tokens),
            tokens_i64(u.cached_tokens)
        ],
    )
    .map_err(db("count tokens"))?;
    Ok(())
}

fn usage_row(row: &rusqlite::Row<'_>, from: usize) -> rusqlite::Result<(Usage, u64)> {
    let n = |i: usize| -> rusqlite::Result<u64> { Ok(seq_u64(row.get(from + i)?)) };
    Ok((
        Usage {
            prompt_tokens: n(0)?,
            completion_tokens: n(1)?,
            cached_tokens: n(2)?,
        },
        n(3)?,
    ))
}

pub(crate) fn read_session_tokens(
    conn: &Connection,
    session: &str,
) -> Result<Vec<ModelTokens>, StoreError> {
    let op = "read session tokens";
    let mut stmt = conn
        .prepare(
            "SELECT model, prompt_tokens, completion_tokens, cached_tokens, turns \
             FROM session_usage WHERE session = ?1 ORDER BY model",
        )
        .map_err(db(op))?;
    let rows = stmt
        .query_map(params![session], |row| {
            let (usage, turns) = usage_row(row, 1)?;
            Ok(ModelTokens {
                model: row.get(0)?,
                usage,
                turns,
            })
        })
        .map_err(db(op))?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db(op))
}

pub(crate) fn read_agent_tokens(conn: &Connection) -> Result<Vec<AgentTokens>, StoreError> {
    let op = "read agent tokens";
    let mut stmt = conn
        .prepare(
            "SELECT s.agent, u.model, sum(u.prompt_tokens), sum(u.completion_tokens), \
                    sum(u.cached_tokens), sum(u.turns) \
             FROM session_usage u JOIN sessions s ON s.id = u.session \
             GROUP BY s.agent, u.model ORDER BY s.agent, u.model",
        )
        .map_err(db(op))?;
    let rows = stmt
        .query_map([], |row| {
            let (usage, turns) = usage_row(row, 2)?;
            Ok(AgentTokens {
                agent: row.get(0)?,
                model: row.get(1)?,
                usage,
                turns,
            })
        })
        .map_err(db(op))?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db(op))
}

pub(crate) fn read_message_pruned(
    conn: &Connection,
    session: &str,
    seq: u64,
) -> Result<bool, StoreError> {
    let pruned: Option<i64> = conn
        .query_row(
            "SELECT pruned_through FROM sessions WHERE id = ?1",
            params![session],
            |row| row.get(0),
        )
        .optional()
        .map_err(db("read message"))?;
    Ok(pruned.is_some_and(|p| seq_i64(seq) <= p))
}

pub(crate) fn read_agent_models(conn: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn
        .prepare("SELECT agent, model FROM agent_models ORDER BY agent")
        .map_err(db("read agent models"))?;
    let rows = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(db("read agent models"))?;
    rows.collect::<Result<_, _>>()
        .map_err(db("read agent models"))
}

fn session_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    let state: String = row.get(4)?;
    Ok(SessionRecord {
        id: row.get(0)?,
        agent: row.get(1)?,
        created_at: ts(row.get(2)?),
        model: row.get(3)?,
        deleted: state != "live",
    })
}

const SESSION_COLUMNS: &str = "SELECT id, agent, created_at, model, state FROM sessions";

pub(crate) fn read_session(
    conn: &Connection,
    id: &str,
) -> Result<Option<SessionRecord>, StoreError> {
    conn.query_row(
        &format!("{SESSION_COLUMNS} WHERE id = ?1"),
        params![id],
        session_row,
    )
    .optional()
    .map_err(db("read session"))
}

pub(crate) fn read_sessions(conn: &Connection) -> Result<Vec<SessionRecord>, StoreError> {
    let mut stmt = conn
        .prepare(&format!(
            "{SESSION_COLUMNS} WHERE state = 'live' ORDER BY created_at, id"
        ))
        .map_err(db("list sessions"))?;
    let rows = stmt
        .query_map([], session_row)
        .map_err(db("list sessions"))?;
    rows.collect::<Result<_, _>>().map_err(db("list sessions"))
}

const MESSAGE_COLUMNS: &str = "SELECT session, seq, message, state, reply, error, received_at, \
                               finished_at FROM session_inbox";

fn message_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<MessageRecord, StoreError>> {
    let state: String = row.get(3)?;
    let Some(state) = MessageState::parse(&state) else {
        return Ok(Err(StoreError::Corrupt {
            table: "session_inbox",
            detail: format!("unknown state {state:?}"),
        }));
    };
    Ok(Ok(MessageRecord {
        session: row.get(0)?,
        seq: seq_u64(row.get(1)?),
        text: row.get(2)?,
        state,
        reply: row.get(4)?,
        error: row.get(5)?,
        created_at: ts(row.get(6)?),
        finished_at: row.get::<_, Option<i64>>(7)?.map(ts),
    }))
}

pub(crate) fn read_message(
    conn: &Connection,
    session: &str,
    seq: u64,
) -> Result<Option<MessageRecord>, StoreError> {
    conn.query_row(
        &format!("{MESSAGE_COLUMNS} WHERE session = ?1 AND seq = ?2"),
        params![session, seq_i64(seq)],
        message_row,
    )
    .optional()
    .map_err(db("read message"))?
    .transpose()
}

pub(crate) fn read_messages(
    conn: &Connection,
    session: &str,
) -> Result<Vec<MessageRecord>, StoreError> {
    let mut stmt = conn
        .prepare(&format!(
            "{MESSAGE_COLUMNS} WHERE session = ?1 ORDER BY seq"
        ))
        .map_err(db("read messages"))?;
    let rows = stmt
        .query_map(params![session], message_row)
        .map_err(db("read messages"))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(db("read messages"))??);
    }
    Ok(out)
}

pub(crate) fn read_journal(
    conn: &Connection,
    session: &str,
) -> Result<Vec<JournalRecord>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT seq, message, at, entry FROM session_journal WHERE session = ?1 ORDER BY seq",
        )
        .map_err(db("read journal"))?;
    let rows = stmt
        .query_map(params![session], |row| {
            Ok(JournalRecord {
                seq: seq_u64(row.get(0)?),
                message: seq_u64(row.get::<_, Option<i64>>(1)?.unwrap_or(0)),
                at: ts(row.get(2)?),
                entry: row.get(3)?,
            })
        })
        .map_err(db("read journal"))?;
    rows.collect::<Result<_, _>>().map_err(db("read journal"))
}

pub(crate) fn read_unfinished(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT DISTINCT i.session FROM session_inbox i JOIN sessions s ON s.id = i.session \
             WHERE i.state NOT IN ('done', 'failed') AND s.state = 'live' ORDER BY i.session",
        )
        .map_err(db("unfinished sessions"))?;
    let rows = stmt
        .query_map([], |row| row.get(0))
        .map_err(db("unfinished sessions"))?;
    rows.collect::<Result<_, _>>()
        .map_err(db("unfinished sessions"))
}
