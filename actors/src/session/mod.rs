//! Agent sessions: one supervised actor per conversation with an agent.
//!
//! A session turns an inbound message into a reply by looping model turn
//! -> tool calls (through the dispatcher's recovery policy) -> outcomes
//! back to the model, within an iteration budget, and escalates to a human
//! what the model should not decide alone. Operators and chaos tests kill
//! session actors at any moment, so nothing a session knows lives only in
//! its memory: the inbox and a journal of every step are in the store
//! (`store::SessionStore`), a restarted actor replays them and continues,
//! and whoever waits for a reply waits here, in [`Sessions`], not inside
//! the actor that may die. Each request to the model is bounded: the
//! conversation by a byte budget ([`context_budget`]), the turns of one
//! message by a cap that escalates, and a store that refuses writes
//! stalls the session instead of restarting it (`stall`).

pub mod context_budget;
pub mod deltas;
mod journal;
mod learning;
mod run;
mod stall;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use hale_supervision::{
    Address, Backoff, ChildId, ChildSpec, Restart, SupervisorRef, SupervisorSpec,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinSet;

use crate::dispatch::{Dispatcher, ToolContext};
use crate::escalation::{ApprovalGrants, Escalation, EscalationError};
use crate::event::{Event, EventKind, EventSink, Level};
use crate::mcp::TOOL_SEPARATOR;
use crate::memory::MemoryHandle;
use crate::model::{ChatMessage, ModelReply, ModelRequest, Models};
use crate::outcome::ToolOutcome;
use crate::store::{MessageRecord, SessionRecord, SessionStore, StoreError};
use crate::tool::BoxFuture;

pub use deltas::{DeltaEvent, DeltaTag, Deltas, MessageDeltas};
pub use journal::{Decided, Entry, Progress};
pub use learning::{IncidentLearning, LearningConfig};
pub use run::{ABORT_OPTION, APPROVE, CONTINUE, DENY, InFlight, PROCEED, RETRY, STOP};
pub use stall::{HeldTurn, Stall, StallBackoff, Stalls};

/// The default cap on model turns per message.
pub const DEFAULT_MAX_TURNS_PER_MESSAGE: u32 = 50;

/// What an agent is: the definition every session of it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    /// Its name (`default`).
    pub name: String,
    /// The system prompt; MEMORY.md is appended to it per message.
    pub system_prompt: String,
    /// The model chain, in fallback order.
    pub models: Vec<String>,
    /// The tools it may call by name (`exec`, `read_logs`, ...; `*` for
    /// every tool).
    pub tools: Vec<String>,
    /// The MCP servers whose tools (`<server>__<tool>`) it may call (`*`
    /// for every server).
    pub mcp: Vec<String>,
    /// Tool calls per inbound message, retries and fallbacks included.
    pub budget: u32,
    /// Tokens (prompt and completion, as the models report them) one
    /// inbound message may use before a human is asked; `None`: no cap.
    pub token_budget: Option<u64>,
}

impl AgentSpec {
    /// Facio's default iteration budget.
    pub const DEFAULT_BUDGET: u32 = 50;

    /// Whether a session of this agent may call `tool`.
    pub fn allows(&self, tool: &str) -> bool {
        if self.tools.iter().any(|t| t == tool || t == "*") {
            return true;
        }
        match tool.split_once(TOOL_SEPARATOR) {
            Some((server, _)) => self.mcp.iter().any(|s| s == server || s == "*"),
            None => false,
        }
    }
}

/// Session settings that are not per agent.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// The actor path prefix of sessions (`hale/sessions`).
    pub source: String,
    /// At most this much of MEMORY.md goes into a system prompt (the
    /// newest lessons are kept).
    pub memory_prompt_bytes: usize,
    /// How long an approval a session opens stays open before its default
    /// option applies.
    pub approval_timeout: Duration,
    /// How long a session keeps retrying while the escalation actor is
    /// down before its message fails.
    pub escalation_unavailable: Duration,
    /// Messages queued per session before `send` refuses with `Busy`.
    pub max_queued_per_session: usize,
    /// Messages queued over all sessions before `send` refuses.
    pub max_queued_total: usize,
    /// Questions (`ask_approval`) one session may have open at once.
    pub max_open_questions: usize,
    /// Bytes of conversation sent with a model turn: beyond it the oldest
    /// tool outputs are elided (see [`context_budget`]).
    pub context_budget_bytes: usize,
    /// Model turns one message may take before the session escalates
    /// (like a spent iteration budget).
    pub max_turns_per_message: u32,
    /// How a session that cannot write its journal paces its retries.
    pub stall_backoff: StallBackoff,
    /// How the sessions supervisor spaces the restarts of a session that
    /// keeps crashing (a poison journal, a bug hit on every resume): the
    /// delay doubles from `min` to `max` and resets once the session has
    /// stayed up for `max`. `None` restarts at once, as OTP does, and lets
    /// a crash loop spend the branch's restart intensity in milliseconds.
    pub restart_backoff: Option<Backoff>,
}

/// The first delay before restarting a crashed session.
pub const DEFAULT_RESTART_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest delay before restarting a crashed session.
pub const DEFAULT_RESTART_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// The random share added to each restart delay, so that sessions that
/// crashed together do not restart in lock step.
pub const RESTART_BACKOFF_JITTER: f64 = 0.2;

/// The restart backoff of a session from its two bounds; `None` when they
/// make no backoff (`min` zero or above `max`: the configuration refuses
/// those before they get here).
pub fn restart_backoff(min: Duration, max: Duration) -> Option<Backoff> {
    Backoff::new(min, max, RESTART_BACKOFF_JITTER).ok()
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            source: "hale/sessions".to_owned(),
            memory_prompt_bytes: 16 * 1024,
            approval_timeout: Duration::from_secs(3600),
            escalation_unavailable: Duration::from_secs(30),
            max_queued_per_session: 1000,
            max_queued_total: 100_000,
            max_open_questions: crate::escalation::DEFAULT_MAX_OPEN_QUESTIONS,
            context_budget_bytes: context_budget::DEFAULT_CONTEXT_BUDGET_BYTES,
            max_turns_per_message: DEFAULT_MAX_TURNS_PER_MESSAGE,
            stall_backoff: StallBackoff::default(),
            restart_backoff: restart_backoff(
                DEFAULT_RESTART_BACKOFF_MIN,
                DEFAULT_RESTART_BACKOFF_MAX,
            ),
        }
    }
}

/// The model endpoints as a session uses them.
pub trait ModelTurns: Send + Sync + 'static {
    /// One turn through `chain`, with its retries and fallbacks.
    fn complete<'a>(
        &'a self,
        chain: &'a [String],
        request: &'a ModelRequest,
        ctx: &'a ToolContext,
    ) -> BoxFuture<'a, Result<ModelReply, ToolOutcome>>;

    /// The configured model `name` refers to, or an outcome whose hints
    /// list the configured models.
    ///
    /// # Errors
    /// An unknown name.
    #[allow(clippy::result_large_err)] // the outcome is what the model is shown
    fn resolve(&self, name: &str) -> Result<String, ToolOutcome>;
}

impl ModelTurns for Models {
    fn complete<'a>(
        &'a self,
        chain: &'a [String],
        request: &'a ModelRequest,
        ctx: &'a ToolContext,
    ) -> BoxFuture<'a, Result<ModelReply, ToolOutcome>> {
        Box::pin(Models::complete(self, chain, request, ctx))
    }

    fn resolve(&self, name: &str) -> Result<String, ToolOutcome> {
        Models::resolve(self, name)
    }
}

/// What the runtime learns from incidents (MEMORY.md lines, disabling a
/// failed server). Optional: without it sessions only report.
pub trait Learning: Send + Sync + 'static {
    /// A call failed on `from` and was served by the fallback `to`.
    fn fell_back<'a>(
        &'a self,
        session: &'a str,
        tool: &'a str,
        from: &'a [String],
        to: &'a str,
    ) -> BoxFuture<'a, ()>;

    /// An escalation was decided; `summary` says what and by whom.
    fn decided<'a>(&'a self, session: &'a str, summary: &'a str) -> BoxFuture<'a, ()>;
}

/// Everything sessions share.
pub struct SessionEnv {
    /// Inboxes and journals.
    pub store: Arc<dyn SessionStore>,
    /// Tool calls, with the recovery policy.
    pub dispatcher: Arc<Dispatcher>,
    /// Model turns.
    pub models: Arc<dyn ModelTurns>,
    /// Approvals.
    pub escalation: Escalation,
    /// One-shot permissions for approved blocked calls (shared with the
    /// tools whose policies block).
    pub grants: ApprovalGrants,
    /// MEMORY.md, for system prompts.
    pub memory: Option<MemoryHandle>,
    /// Incident learning.
    pub learning: Option<Arc<dyn Learning>>,
    /// The audit trail.
    pub sink: Arc<dyn EventSink>,
    /// Streamed reply text, for `/v1/events` (not audited, not stored).
    pub deltas: Deltas,
    /// Settings.
    pub settings: SessionSettings,
}

impl fmt::Debug for SessionEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionEnv")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A message's id: its session and its position in the session's inbox,
/// written `<session>:<seq>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageId {
    /// The session.
    pub session: String,
    /// The position, from 1.
    pub seq: u64,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.session, self.seq)
    }
}

impl FromStr for MessageId {
    type Err = SessionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SessionError::BadMessageId(s.to_owned());
        let (session, seq) = s.rsplit_once(':').ok_or_else(bad)?;
        // One spelling per message: plain digits without a leading zero,
        // so the text read is the text hale writes (`s:01` and `s:+1`
        // are not other names of `s:1`).
        if !seq.bytes().all(|b| b.is_ascii_digit()) || seq.starts_with('0') {
            return Err(bad());
        }
        let seq: u64 = seq.parse().map_err(|_| bad())?;
        if seq == 0 || !valid_session_id(session) {
            return Err(bad());
        }
        Ok(Self {
            session: session.to_owned(),
            seq,
        })
    }
}

impl TryFrom<String> for MessageId {
    type Error = SessionError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> Self {
        id.to_string()
    }
}

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No live session has this id.
    #[error("no session `{0}`")]
    UnknownSession(String),
    /// No agent has this name.
    #[error("no agent `{name}` (configured: {known})")]
    UnknownAgent {
        /// The name asked for.
        name: String,
        /// The configured agents.
        known: String,
    },
    /// A session id is taken.
    #[error("a session `{0}` already exists")]
    Exists(String),
    /// A session id is malformed.
    #[error("bad session id `{0}`: use 1 to 64 characters from a-z, A-Z, 0-9, `-` and `_`")]
    BadSessionId(String),
    /// A message id is malformed.
    #[error("bad message id `{0}`: expected `<session>:<number>`")]
    BadMessageId(String),
    /// No such message.
    #[error("no message `{0}`")]
    UnknownMessage(String),
    /// The message existed but retention deleted it.
    #[error("message `{0}` was deleted by retention")]
    Pruned(String),
    /// No configured model has this name.
    #[error("{0}")]
    UnknownModel(String),
    /// Too many messages are queued; try again later.
    #[error("too many queued messages ({queued} queued, limit {limit}); retry in {} s", retry_after.as_secs())]
    Busy {
        /// Messages queued where the limit applies.
        queued: usize,
        /// The limit.
        limit: usize,
        /// When to try again.
        retry_after: Duration,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The escalation actor failed.
    #[error("escalation: {0}")]
    Escalation(#[from] EscalationError),
    /// The session supervisor is not running (or refused).
    #[error("session supervisor: {0}")]
    Supervisor(String),
}

impl SessionError {
    /// Whether trying again later may succeed (the store or the
    /// escalation actor was unavailable).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Store(_) | Self::Escalation(EscalationError::Unavailable) | Self::Supervisor(_)
        )
    }
}

/// Whether `id` is a usable session id.
pub fn valid_session_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Replies waited on, outside any actor: a waiter survives the restart of
/// the session it waits on.
#[derive(Debug, Default)]
struct Waiters {
    map: DashMap<MessageId, Vec<oneshot::Sender<MessageRecord>>>,
}

impl Waiters {
    fn register(&self, id: MessageId) -> oneshot::Receiver<MessageRecord> {
        let (tx, rx) = oneshot::channel();
        self.map.entry(id).or_default().push(tx);
        rx
    }

    fn complete(&self, record: &MessageRecord) {
        let id = MessageId {
            session: record.session.clone(),
            seq: record.seq,
        };
        if let Some((_, waiters)) = self.map.remove(&id) {
            for waiter in waiters {
                let _ = waiter.send(record.clone());
            }
        }
    }

    fn forget_closed(&self, id: &MessageId) {
        self.map.remove_if_mut(id, |_, waiters| {
            waiters.retain(|w| !w.is_closed());
            waiters.is_empty()
        });
    }
}

/// The sessions: create, send, wait, list; and their supervisor.
pub struct Sessions {
    env: Arc<SessionEnv>,
    agents: HashMap<String, Arc<AgentSpec>>,
    addresses: DashMap<String, Address<SessionMsg>>,
    supervisor: std::sync::RwLock<Option<SupervisorRef>>,
    completion: Arc<Completion>,
    in_flight: Arc<InFlight>,
    agent_models: Arc<DashMap<String, String>>,
    stalls: Arc<Stalls>,
}

/// What happens when a message finishes, shared by the handle and the
/// actors: waiters are answered, subscribers told, queue counts released.
#[derive(Debug)]
struct Completion {
    waiters: Waiters,
    done: broadcast::Sender<MessageRecord>,
    /// Messages sent through this handle and not finished, per session.
    queued: DashMap<String, Queue>,
    /// Every message counted in `queued`, pending or reserved.
    queued_total: AtomicUsize,
}

/// One session's count against the queue limits.
#[derive(Debug, Default)]
struct Queue {
    /// Stored and not finished.
    pending: std::collections::HashSet<u64>,
    /// Sends past the limit check whose enqueue has not answered yet: they
    /// count, so concurrent sends cannot all pass one free slot.
    reserved: usize,
    /// The session was deleted while sends were reserved; they release
    /// their slot whatever the store answers.
    deleted: bool,
    /// Messages that finished before their sender recorded them as
    /// pending (the session can pick a message up as soon as the enqueue
    /// commits). Their late `commit` must not count them, or a later pass
    /// over the inbox would find them "pending" and announce them again.
    /// Only kept while sends are reserved.
    finished_early: std::collections::HashSet<u64>,
}

impl Queue {
    fn len(&self) -> usize {
        self.pending.len() + self.reserved
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.reserved == 0
    }
}

/// A slot reserved under the queue limits for one send. Dropped without
/// [`commit`](Self::commit) (the enqueue failed, or the sender went away
/// mid-send), it gives the slot back.
#[derive(Debug)]
struct Slot<'a> {
    completion: &'a Completion,
    session: String,
    armed: bool,
}

impl Slot<'_> {
    /// The message was stored as `seq`: the slot becomes its count.
    fn commit(mut self, seq: u64) {
        self.armed = false;
        let c = self.completion;
        let counted = c.queued.get_mut(&self.session).is_some_and(|mut q| {
            q.reserved = q.reserved.saturating_sub(1);
            let early = q.finished_early.remove(&seq);
            if q.reserved == 0 {
                q.finished_early.clear();
            }
            !q.deleted && !early && q.pending.insert(seq)
        });
        if !counted {
            c.queued_total.fetch_sub(1, Ordering::SeqCst);
        }
        c.queued.remove_if(&self.session, |_, q| q.is_empty());
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let c = self.completion;
        if let Some(mut q) = c.queued.get_mut(&self.session) {
            q.reserved = q.reserved.saturating_sub(1);
            if q.reserved == 0 {
                q.finished_early.clear();
            }
        }
        c.queued_total.fetch_sub(1, Ordering::SeqCst);
        c.queued.remove_if(&self.session, |_, q| q.is_empty());
    }
}

impl Completion {
    fn new(done: broadcast::Sender<MessageRecord>) -> Self {
        Self {
            waiters: Waiters::default(),
            done,
            queued: DashMap::new(),
            queued_total: AtomicUsize::new(0),
        }
    }

    /// Reserves one slot for a send to `session`, or says why not. The
    /// check and the count are one step under the session's entry lock
    /// (the total with a compare-and-swap inside it), so N concurrent
    /// sends against L free slots get exactly L.
    fn reserve(
        &self,
        session: &str,
        per_session: usize,
        total: usize,
    ) -> Result<Slot<'_>, SessionError> {
        let busy = |queued, limit| SessionError::Busy {
            queued,
            limit,
            retry_after: Duration::from_secs(1),
        };
        let result = {
            let mut q = self.queued.entry(session.to_owned()).or_default();
            let queued = q.len();
            if queued >= per_session {
                Err(busy(queued, per_session))
            } else {
                match self
                    .queued_total
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                        (n < total).then_some(n + 1)
                    }) {
                    Ok(_) => {
                        q.reserved += 1;
                        Ok(())
                    }
                    Err(n) => Err(busy(n, total)),
                }
            }
        };
        match result {
            Ok(()) => Ok(Slot {
                completion: self,
                session: session.to_owned(),
                armed: true,
            }),
            Err(e) => {
                self.queued.remove_if(session, |_, q| q.is_empty());
                Err(e)
            }
        }
    }

    /// A deleted session's messages no longer count against the limits
    /// (its actor is gone; they will never finish here).
    fn release_session(&self, session: &str) {
        if let Some(mut q) = self.queued.get_mut(session) {
            let n = q.pending.len();
            q.pending.clear();
            q.deleted = true;
            self.queued_total.fetch_sub(n, Ordering::SeqCst);
        }
        self.queued.remove_if(session, |_, q| q.is_empty());
    }

    fn is_pending(&self, session: &str, seq: u64) -> bool {
        self.queued
            .get(session)
            .is_some_and(|q| q.pending.contains(&seq))
    }

    /// `seq` of `session` finished: gives its count back, and says whether
    /// it was still counted. One that finished before its sender counted
    /// it is remembered, so the sender's late `commit` does not count it.
    fn finished(&self, session: &str, seq: u64) -> bool {
        let mut released = false;
        if let Some(mut q) = self.queued.get_mut(session) {
            if q.pending.remove(&seq) {
                released = true;
            } else if q.reserved > 0 {
                q.finished_early.insert(seq);
            }
        }
        if released {
            self.queued_total.fetch_sub(1, Ordering::SeqCst);
        }
        self.queued.remove_if(session, |_, q| q.is_empty());
        released
    }

    fn done(&self, env: &SessionEnv, session: &str, record: &MessageRecord, finished_here: bool) {
        let released = self.finished(session, record.seq);
        // The event goes first, so whoever was waiting finds it in the
        // audit trail.
        if finished_here || released {
            let source = format!("{}/{session}", env.settings.source);
            env.sink.emit(run::message_event(session, &source, record));
            let _ = self.done.send(record.clone());
        }
        self.waiters.complete(record);
    }
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("agents", &self.agents.keys().collect::<Vec<_>>())
            .field("started", &self.addresses.len())
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions over `env`, for these agents.
    pub fn new(env: SessionEnv, agents: Vec<AgentSpec>) -> Arc<Self> {
        let (done, _) = broadcast::channel(1024);
        Arc::new(Self {
            env: Arc::new(env),
            agents: agents
                .into_iter()
                .map(|a| (a.name.clone(), Arc::new(a)))
                .collect(),
            addresses: DashMap::new(),
            supervisor: std::sync::RwLock::new(None),
            completion: Arc::new(Completion::new(done)),
            in_flight: Arc::new(InFlight::default()),
            agent_models: Arc::new(DashMap::new()),
            stalls: Arc::new(Stalls::default()),
        })
    }

    /// The session supervisor: one_for_one over dynamic children, with an
    /// intensity sized for many sessions (one crashing session must not
    /// take the others down), observed into the audit trail.
    pub fn supervisor_spec(
        &self,
        name: &str,
        max_restarts: u32,
        period: Duration,
    ) -> SupervisorSpec {
        SupervisorSpec::new(name)
            .intensity(max_restarts, period)
            .observer(crate::supervision_events::observer(Arc::clone(
                &self.env.sink,
            )))
    }

    /// Gives the handle the running supervisor.
    pub fn attach(&self, supervisor: SupervisorRef) {
        *self
            .supervisor
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(supervisor);
    }

    fn supervisor(&self) -> Result<SupervisorRef, SessionError> {
        self.supervisor
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| SessionError::Supervisor("not started".to_owned()))
    }

    /// The agents' names.
    pub fn agent_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.agents.keys().cloned().collect();
        names.sort();
        names
    }

    /// Creates a session of `agent` (with `id`, or a fresh one) and starts
    /// its actor.
    ///
    /// # Errors
    /// Unknown agent, bad or taken id, store or supervisor failure.
    pub async fn create(&self, agent: &str, id: Option<String>) -> Result<String, SessionError> {
        if !self.agents.contains_key(agent) {
            return Err(SessionError::UnknownAgent {
                name: agent.to_owned(),
                known: self.agent_names().join(", "),
            });
        }
        let id = match id {
            Some(id) if valid_session_id(&id) => id,
            Some(id) => return Err(SessionError::BadSessionId(id)),
            None => format!("s{:016x}", fastrand::u64(..)),
        };
        if !self
            .env
            .store
            .create_session(id.clone(), agent.to_owned())
            .await?
        {
            return Err(SessionError::Exists(id));
        }
        self.ensure_started(&id, agent).await?;
        Ok(id)
    }

    /// Deletes a session: its actor stops; its rows stay for the audit.
    ///
    /// # Errors
    /// Unknown session, store or supervisor failure.
    pub async fn delete(&self, id: &str) -> Result<(), SessionError> {
        if !self.env.store.delete_session(id.to_owned()).await? {
            return Err(SessionError::UnknownSession(id.to_owned()));
        }
        self.completion.release_session(id);
        self.env.deltas.forget(id);
        if self.addresses.remove(id).is_some() {
            let supervisor = self.supervisor()?;
            let child = ChildId::new(id);
            let _ = supervisor.terminate_child(&child).await;
            let _ = supervisor.delete_child(&child).await;
        }
        self.stalls.forget(
            id,
            &format!("{}/{id}", self.env.settings.source),
            self.env.sink.as_ref(),
        );
        Ok(())
    }

    /// Every live session.
    ///
    /// # Errors
    /// A store failure.
    pub async fn list(&self) -> Result<Vec<SessionRecord>, SessionError> {
        Ok(self.env.store.sessions().await?)
    }

    /// One live session.
    ///
    /// # Errors
    /// Unknown session or a store failure.
    pub async fn get(&self, id: &str) -> Result<SessionRecord, SessionError> {
        match self.env.store.session(id.to_owned()).await? {
            Some(record) if !record.deleted => Ok(record),
            _ => Err(SessionError::UnknownSession(id.to_owned())),
        }
    }

    /// A session's messages, oldest first.
    ///
    /// # Errors
    /// Unknown session or a store failure.
    pub async fn messages(&self, id: &str) -> Result<Vec<MessageRecord>, SessionError> {
        self.get(id).await?;
        Ok(self.env.store.messages(id.to_owned()).await?)
    }

    /// Stores `text` in the session's inbox and returns its id once the
    /// store has committed it; the session processes it in order.
    ///
    /// # Errors
    /// Unknown session, `Busy` over the queue limits, or a store failure.
    pub async fn send(&self, session: &str, text: &str) -> Result<MessageId, SessionError> {
        let slot = self.completion.reserve(
            session,
            self.env.settings.max_queued_per_session,
            self.env.settings.max_queued_total,
        )?;
        let record = match self.env.store.session(session.to_owned()).await? {
            Some(record) if !record.deleted => record,
            _ => return Err(SessionError::UnknownSession(session.to_owned())),
        };
        let Some(seq) = self
            .env
            .store
            .enqueue(session.to_owned(), text.to_owned())
            .await?
        else {
            return Err(SessionError::UnknownSession(session.to_owned()));
        };
        let id = MessageId {
            session: session.to_owned(),
            seq,
        };
        slot.commit(seq);
        self.env.sink.emit(
            Event::new(
                Level::Info,
                format!("{}/{session}", self.env.settings.source),
                EventKind::MessageReceived,
                format!("message {id} queued ({} bytes)", text.len()),
            )
            .with_session(session.to_owned())
            .with_data(json!({ "message": id.to_string() })),
        );
        // The message is safe in the store; waking the actor is only a
        // hint (a restarting actor reads its inbox anyway).
        if let Err(e) = self.ensure_started(session, &record.agent).await {
            tracing::warn!(session, error = %e, "session actor not started; the message waits in its inbox");
        }
        if let Some(address) = self.addresses.get(session)
            && let Some(actor) = address.current()
        {
            let _ = actor.send_message(SessionMsg::Wake);
        }
        Ok(id)
    }

    /// Waits up to `timeout` for message `id` to finish; `Ok(None)` if it
    /// has not.
    ///
    /// # Errors
    /// Unknown message or a store failure.
    pub async fn wait(
        &self,
        id: &MessageId,
        timeout: Duration,
    ) -> Result<Option<MessageRecord>, SessionError> {
        let rx = self.completion.waiters.register(id.clone());
        let record = self.message(id).await?;
        if record.state.is_final() {
            self.completion.waiters.forget_closed(id);
            return Ok(Some(record));
        }
        let answer = tokio::time::timeout(timeout, rx).await;
        match answer {
            Ok(Ok(record)) => Ok(Some(record)),
            _ => {
                self.completion.waiters.forget_closed(id);
                // Finished between the check and the registration, or the
                // notification raced the timeout: the store has the truth.
                let record = self.message(id).await?;
                Ok(record.state.is_final().then_some(record))
            }
        }
    }

    /// [`send`](Self::send), then [`wait`](Self::wait).
    ///
    /// # Errors
    /// As both.
    pub async fn send_and_wait(
        &self,
        session: &str,
        text: &str,
        timeout: Duration,
    ) -> Result<(MessageId, Option<MessageRecord>), SessionError> {
        let id = self.send(session, text).await?;
        let record = self.wait(&id, timeout).await?;
        Ok((id, record))
    }

    /// One message.
    ///
    /// # Errors
    /// Unknown message or a store failure.
    pub async fn message(&self, id: &MessageId) -> Result<MessageRecord, SessionError> {
        let store = &self.env.store;
        if let Some(record) = store.message(id.session.clone(), id.seq).await? {
            return Ok(record);
        }
        if store.message_pruned(id.session.clone(), id.seq).await? {
            return Err(SessionError::Pruned(id.to_string()));
        }
        Err(SessionError::UnknownMessage(id.to_string()))
    }

    /// Finished messages, live.
    pub fn subscribe_done(&self) -> broadcast::Receiver<MessageRecord> {
        self.completion.done.subscribe()
    }

    /// Streamed reply text, live (see [`deltas`]): a reader that falls
    /// behind misses the oldest.
    pub fn subscribe_deltas(&self) -> broadcast::Receiver<DeltaEvent> {
        self.env.deltas.subscribe()
    }

    /// Switches a session's model (`None` restores its agent's chain).
    ///
    /// # Errors
    /// Unknown session or model, or a store failure.
    pub async fn switch_model(
        &self,
        session: &str,
        model: Option<&str>,
    ) -> Result<Option<String>, SessionError> {
        let model = match model {
            Some(name) => Some(self.env.models.resolve(name).map_err(|o| {
                SessionError::UnknownModel(format!("{} ({})", o.message, hint_text(&o)))
            })?),
            None => None,
        };
        if !self
            .env
            .store
            .set_session_model(session.to_owned(), model.clone())
            .await?
        {
            return Err(SessionError::UnknownSession(session.to_owned()));
        }
        Ok(model)
    }

    /// Switches every session of `agent` without a model of its own to
    /// `model` (`None` restores the agent's chain), from its next message.
    /// The switch is stored before it applies, so it outlives a restart
    /// ([`restore_agent_models`](Self::restore_agent_models)).
    ///
    /// # Errors
    /// Unknown agent or model, or a store failure.
    pub async fn switch_agent_model(
        &self,
        agent: &str,
        model: Option<&str>,
    ) -> Result<Option<String>, SessionError> {
        if !self.agents.contains_key(agent) {
            return Err(SessionError::UnknownAgent {
                name: agent.to_owned(),
                known: self.agent_names().join(", "),
            });
        }
        let model = match model {
            Some(name) => Some(self.env.models.resolve(name).map_err(|o| {
                SessionError::UnknownModel(format!("{} ({})", o.message, hint_text(&o)))
            })?),
            None => None,
        };
        self.env
            .store
            .set_agent_model(agent.to_owned(), model.clone())
            .await?;
        match &model {
            Some(model) => {
                self.agent_models.insert(agent.to_owned(), model.clone());
            }
            None => {
                self.agent_models.remove(agent);
            }
        }
        Ok(model)
    }

    /// Loads the stored agent-wide switches (at start). A stored model
    /// that is no longer configured, or an agent that no longer exists, is
    /// skipped with a warning: the agent runs its configured chain.
    ///
    /// # Errors
    /// A store failure.
    pub async fn restore_agent_models(&self) -> Result<usize, SessionError> {
        let mut restored = 0;
        for (agent, model) in self.env.store.agent_models().await? {
            if !self.agents.contains_key(&agent) {
                tracing::warn!(
                    agent,
                    model,
                    "stored model switch of an agent no longer configured; ignored"
                );
                continue;
            }
            match self.env.models.resolve(&model) {
                Ok(model) => {
                    self.agent_models.insert(agent, model);
                    restored += 1;
                }
                Err(_) => {
                    tracing::warn!(
                        agent,
                        model,
                        "stored model switch to a model no longer configured; ignored"
                    );
                }
            }
        }
        Ok(restored)
    }

    /// The agent-wide switch of `agent` in force, if any.
    pub fn agent_model(&self, agent: &str) -> Option<String> {
        self.agent_models.get(agent).map(|m| m.clone())
    }

    /// Starts the actors of every session with unfinished messages (after
    /// a restart of the runtime); returns how many.
    ///
    /// # Errors
    /// A store failure.
    pub async fn resume_all(&self) -> Result<usize, SessionError> {
        let unfinished = self.env.store.unfinished_sessions().await?;
        let mut started = 0;
        for id in unfinished {
            let Some(record) = self.env.store.session(id.clone()).await? else {
                continue;
            };
            self.ensure_started(&id, &record.agent).await?;
            started += 1;
        }
        Ok(started)
    }

    /// Forgets which session actors were started: after the session
    /// supervisor restarted, none of its dynamic children survive, and
    /// [`resume_all`](Self::resume_all) (or the next `send`) starts them
    /// again.
    pub fn forget_started(&self) {
        self.addresses.clear();
    }

    /// Ids of the sessions whose actors are started.
    pub fn started(&self) -> Vec<String> {
        self.addresses.iter().map(|e| e.key().clone()).collect()
    }

    /// The sessions that cannot write their journal and wait to try
    /// again (see `stall`).
    pub fn stalls(&self) -> &Stalls {
        &self.stalls
    }

    /// Messages queued and not finished, as counted since start.
    pub fn queued(&self) -> usize {
        self.completion.queued_total.load(Ordering::Relaxed)
    }

    async fn ensure_started(&self, id: &str, agent: &str) -> Result<(), SessionError> {
        if self.addresses.contains_key(id) {
            return Ok(());
        }
        let agent = self
            .agents
            .get(agent)
            .cloned()
            .ok_or_else(|| SessionError::UnknownAgent {
                name: agent.to_owned(),
                known: self.agent_names().join(", "),
            })?;
        let address = Address::new();
        let args = SessionArgs {
            id: id.to_owned(),
            agent,
            env: Arc::clone(&self.env),
            address: address.clone(),
            completion: Arc::clone(&self.completion),
            in_flight: Arc::clone(&self.in_flight),
            agent_models: Arc::clone(&self.agent_models),
            stalls: Arc::clone(&self.stalls),
            held: Arc::new(std::sync::Mutex::new(None)),
        };
        // Insert first so a concurrent caller does not start a twin.
        match self.addresses.entry(id.to_owned()) {
            dashmap::Entry::Occupied(_) => return Ok(()),
            dashmap::Entry::Vacant(slot) => {
                slot.insert(address);
            }
        }
        let restart_backoff = self.env.settings.restart_backoff;
        let mut spec =
            ChildSpec::worker(id, move || (SessionActor, args.clone())).restart(Restart::Permanent);
        if let Some(backoff) = restart_backoff {
            spec = spec.backoff(backoff);
        }
        let supervisor = match self.supervisor() {
            Ok(s) => s,
            Err(e) => {
                self.addresses.remove(id);
                return Err(e);
            }
        };
        if let Err(e) = supervisor.start_child(spec).await {
            self.addresses.remove(id);
            return Err(SessionError::Supervisor(e.to_string()));
        }
        Ok(())
    }
}

fn hint_text(outcome: &ToolOutcome) -> String {
    outcome
        .hints
        .iter()
        .flat_map(|h| h.suggestions.iter().cloned())
        .collect::<Vec<_>>()
        .join(", ")
}

// ------------------------------------------------------------------ actor

/// Messages to a session actor.
#[derive(Debug)]
pub enum SessionMsg {
    /// The inbox has something new.
    Wake,
    /// The worker finished everything it found.
    Idle,
    /// The worker failed; the actor fails with it so its supervisor
    /// restarts it.
    Failed(String),
    /// The worker could not use the store: the session stalls and tries
    /// again after a backoff, without restarting (a restart would only
    /// ask the model again).
    Stalled(String),
    /// The backoff of a stall is over: try again.
    Retry,
}

/// What a session actor starts from (built by [`Sessions`]).
#[derive(Clone)]
pub struct SessionArgs {
    id: String,
    agent: Arc<AgentSpec>,
    env: Arc<SessionEnv>,
    address: Address<SessionMsg>,
    completion: Arc<Completion>,
    in_flight: Arc<InFlight>,
    agent_models: Arc<DashMap<String, String>>,
    stalls: Arc<Stalls>,
    /// A model reply the journal refused, kept across restarts of the
    /// actor so the model is not asked for it again.
    held: Arc<std::sync::Mutex<Option<HeldTurn>>>,
}

/// The actor of one session.
pub struct SessionActor;

/// Its state: the worker task (dropping the state aborts it).
pub struct SessionState {
    args: SessionArgs,
    worker: JoinSet<()>,
    running: bool,
    again: bool,
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.address.publish(myself.clone());
        // `Retry`, not `Wake`: a session restarted while stalled has lost
        // its predecessor's timer, and tries once now.
        let _ = myself.send_message(SessionMsg::Retry);
        Ok(SessionState {
            args,
            worker: JoinSet::new(),
            running: false,
            again: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        while state.worker.try_join_next().is_some() {}
        let stalled = state.args.stalls.is_stalled(&state.args.id);
        match message {
            SessionMsg::Wake | SessionMsg::Retry if state.running => state.again = true,
            // A stalled session asks nothing of its store or model until
            // its backoff is over; the retry reads the whole inbox.
            SessionMsg::Wake if stalled => {}
            SessionMsg::Wake | SessionMsg::Retry => start_worker(&myself, state),
            SessionMsg::Idle => {
                state.running = false;
                if std::mem::take(&mut state.again) {
                    start_worker(&myself, state);
                }
            }
            SessionMsg::Stalled(error) => {
                state.running = false;
                state.again = false;
                let args = &state.args;
                let source = format!("{}/{}", args.env.settings.source, args.id);
                let attempt = args
                    .stalls
                    .failed(&args.id, &source, &error, args.env.sink.as_ref());
                let delay = args.env.settings.stall_backoff.delay(attempt);
                tracing::warn!(session = %args.id, %error, ?delay, "session stalled: its store refuses writes");
                myself.send_after(delay, || SessionMsg::Retry);
            }
            SessionMsg::Failed(error) => {
                return Err(error.into());
            }
        }
        Ok(())
    }
}

fn start_worker(myself: &ActorRef<SessionMsg>, state: &mut SessionState) {
    state.running = true;
    let args = state.args.clone();
    let myself = myself.clone();
    state.worker.spawn(async move {
        let reply = match work_inbox(&args).await {
            Ok(()) => SessionMsg::Idle,
            // A store that fails is not cured by a restart, which would
            // only ask the model again: the session stalls and retries.
            Err(e @ SessionError::Store(_)) => SessionMsg::Stalled(e.to_string()),
            Err(e) => SessionMsg::Failed(e.to_string()),
        };
        let _ = myself.send_message(reply);
    });
}

/// Works through every unfinished message of the session, in order.
async fn work_inbox(args: &SessionArgs) -> Result<(), SessionError> {
    loop {
        let store = &args.env.store;
        let messages = store.messages(args.id.clone()).await?;
        // A predecessor killed between finishing a message and telling
        // its waiters leaves them waiting: tell them now.
        for message in &messages {
            if message.state.is_final() && args.completion.is_pending(&args.id, message.seq) {
                args.completion.done(&args.env, &args.id, message, false);
            }
        }
        let Some(current) = messages.iter().position(|m| !m.state.is_final()) else {
            return Ok(());
        };
        let journal = store.journal_entries(args.id.clone()).await?;
        let record = store.session(args.id.clone()).await?;
        let model = record
            .and_then(|r| r.model)
            .or_else(|| args.agent_models.get(&args.agent.name).map(|m| m.clone()));
        let history = history(&messages[..current], &journal);
        let message = messages[current].clone();
        let message_seq = message.seq;
        let run = run::MessageRun::new(
            &args.env,
            &args.in_flight,
            &args.agent,
            &args.id,
            message,
            history,
            &journal,
            model,
        )
        .with_stall(&args.stalls, &args.held);
        let finish = match run.run().await {
            Ok(finish) => finish,
            // A store that cannot write stalls the session (see
            // `stall`); an escalation actor that stays away is worth a
            // restart (the supervisor's backoff paces it); anything else
            // would fail again the same way, so it ends the message
            // instead of crash-looping the session.
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => crate::store::Finish {
                session: args.id.clone(),
                seq: message_seq,
                state: crate::store::MessageState::Failed,
                reply: None,
                error: Some(e.to_string()),
            },
        };
        let seq = finish.seq;
        let finished_here = store.finish(finish).await?;
        args.stalls.resumed(
            &args.id,
            &format!("{}/{}", args.env.settings.source, args.id),
            args.env.sink.as_ref(),
        );
        args.in_flight.finished(&args.id, seq);
        // Whether this incarnation or an earlier one finished it, the
        // stored record is the one reply every waiter gets.
        if let Some(record) = store.message(args.id.clone(), seq).await? {
            args.completion
                .done(&args.env, &args.id, &record, finished_here);
        }
    }
}

/// The conversation of finished messages: their full journals while they
/// are kept, their text and reply once compacted.
fn history(
    messages: &[MessageRecord],
    journal: &[crate::store::JournalRecord],
) -> Vec<ChatMessage> {
    let mut by_message: HashMap<u64, Vec<&str>> = HashMap::new();
    for record in journal {
        by_message
            .entry(record.message)
            .or_default()
            .push(record.entry.as_str());
    }
    let mut out = Vec::new();
    for message in messages {
        out.push(ChatMessage::User {
            text: message.text.clone(),
        });
        match by_message.get(&message.seq) {
            Some(entries) => {
                let progress = Progress::replay(entries.iter().copied());
                out.extend(progress.conversation().cloned());
            }
            None => out.push(ChatMessage::Assistant {
                text: Some(
                    message
                        .reply
                        .clone()
                        .or_else(|| message.error.as_ref().map(|e| format!("(failed: {e})")))
                        .unwrap_or_default(),
                ),
                tool_calls: Vec::new(),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn completion() -> Completion {
        Completion::new(broadcast::channel(4).0)
    }

    fn busy(result: Result<Slot<'_>, SessionError>) -> bool {
        matches!(result, Err(SessionError::Busy { .. }))
    }

    #[test]
    fn a_slot_counts_from_reservation_and_is_given_back_when_dropped() {
        let c = completion();
        let a = c.reserve("s", 2, 10).unwrap();
        let b = c.reserve("s", 2, 10).unwrap();
        assert!(
            busy(c.reserve("s", 2, 10)),
            "two reservations fill two slots"
        );
        drop(b);
        assert_eq!(c.queued_total.load(Ordering::SeqCst), 1);
        a.commit(1);
        let b = c.reserve("s", 2, 10).unwrap();
        b.commit(2);
        assert!(busy(c.reserve("s", 2, 10)));
        assert!(c.finished("s", 1));
        assert!(!c.finished("s", 1), "released once");
        assert_eq!(c.queued_total.load(Ordering::SeqCst), 1);
    }

    /// Found by the soak (one message announced twice under chaos): the
    /// session finished a message before its sender's `commit` ran; the
    /// commit counted it as pending, and the next pass over the inbox
    /// announced it a second time.
    #[test]
    fn a_message_finished_before_its_send_commits_is_not_counted_again() {
        let c = completion();
        let slot = c.reserve("s", 2, 10).unwrap();
        assert!(!c.finished("s", 1), "not counted yet");
        slot.commit(1);
        assert!(!c.is_pending("s", 1), "a finished message is never pending");
        assert_eq!(c.queued_total.load(Ordering::SeqCst), 0);
        assert!(c.queued.get("s").is_none(), "nothing left for the session");
    }

    #[test]
    fn the_total_limit_spans_sessions() {
        let c = completion();
        c.reserve("a", 5, 2).unwrap().commit(1);
        c.reserve("b", 5, 2).unwrap().commit(1);
        assert!(busy(c.reserve("c", 5, 2)));
        assert!(
            c.queued.get("c").is_none(),
            "a refused send leaves no entry"
        );
    }

    #[test]
    fn a_deleted_session_frees_its_slots_and_its_sends_in_flight() {
        let c = completion();
        c.reserve("s", 3, 3).unwrap().commit(1);
        c.reserve("s", 3, 3).unwrap().commit(2);
        let late = c.reserve("s", 3, 3).unwrap();
        c.release_session("s");
        assert_eq!(
            c.queued_total.load(Ordering::SeqCst),
            1,
            "only the reservation"
        );
        // Its enqueue committed before the delete did: it still must not
        // count for a session that is gone.
        late.commit(3);
        assert_eq!(c.queued_total.load(Ordering::SeqCst), 0);
        assert!(c.queued.is_empty());
        c.reserve("t", 3, 3).unwrap().commit(1);
    }

    #[test]
    fn concurrent_reservations_take_exactly_the_free_slots() {
        let c = Arc::new(completion());
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let (c, barrier) = (Arc::clone(&c), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    match c.reserve("s", 5, 100) {
                        Ok(slot) => {
                            slot.commit(i);
                            true
                        }
                        Err(_) => false,
                    }
                })
            })
            .collect();
        let taken = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(taken, 5);
        assert_eq!(c.queued_total.load(Ordering::SeqCst), 5);
    }
}
