//! The runtime: the root supervision tree and the public API over it.
//!
//! Everything hale is, wired once: the store opened first and closed last;
//! under the root supervisor (one_for_one, so a failure in one branch never
//! takes another down) the audit trail, memory, escalation, the model, MCP
//! and tool supervisors and the session supervisor, started in that order
//! and stopped in reverse. Handles that reach a branch through its
//! supervisor are re-attached whenever the branch restarts, and sessions
//! with unfinished messages are resumed from their journals both at start
//! and after their supervisor restarts. Programs embed hale through
//! [`Runtime`]; `hale serve` puts an HTTP API in front of the same calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hale_actors::audit::{AuditConfig, AuditHandle, Redactor, audit_child};
use hale_actors::builtin::{BuiltinConfig, SandboxMode, builtin_tools, tools_supervisor};
use hale_actors::dispatch::{DispatchConfig, Dispatcher, Endpoints, RegistryRouter, Router};
use hale_actors::escalation::{
    Answer, Approval, ApprovalNotice, AskApproval, Escalation, EscalationError, Resolution,
    StoreApprovals, escalation_child,
};
use hale_actors::event::{Event, EventSink, Level};
use hale_actors::mcp::{ManageMcp, McpRouter, McpServerConfig, McpServers, McpTransport};
use hale_actors::memory::{MemoryConfig, MemoryHandle, Remember, memory_supervisor};
use hale_actors::model::{ModelConfig, Models};
use hale_actors::secrets::{KnownSecrets, MIN_KNOWN_SECRET_LEN, NotAdded};
use hale_actors::session::{
    AgentSpec, IncidentLearning, LearningConfig, MessageId, SessionEnv, SessionError,
    SessionSettings, Sessions,
};
use hale_actors::store::{
    EventQuery, MessageRecord, SessionStore, SqliteStore, Store, StoreConfig,
};
use hale_actors::tool::{Tool, ToolRegistry};
use hale_supervision::{
    ChildId, ChildInfo, ChildKind, ChildSpec, Strategy, SupervisorEvent, SupervisorEventKind,
    SupervisorObserver, SupervisorRef, SupervisorSpec,
};
use ractor::ActorCell;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{BreakerSettings, Config, ConfigError};
use crate::data_dir::DataDir;
use crate::metrics::{EventTap, Metrics};

mod from_config;

pub use from_config::agent_spec;

/// Everything the runtime is started from (the resolved `hale.toml`).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The data directory (`hale.db`, `workspace/`, the lock).
    pub data_dir: PathBuf,
    /// Built-in tools, their workspace and policies.
    pub builtin: BuiltinConfig,
    /// MCP servers.
    pub mcp: Vec<McpServerConfig>,
    /// Servers with their own circuit breaker (`[mcp.breaker]`), by
    /// server name; every other endpoint uses `dispatch`'s breaker.
    pub mcp_breakers: BTreeMap<String, BreakerSettings>,
    /// Model endpoints.
    pub models: Vec<ModelConfig>,
    /// Agents.
    pub agents: Vec<AgentSpec>,
    /// Retry, breaker and budget settings of the tool layer.
    pub dispatch: DispatchConfig,
    /// Session settings.
    pub sessions: SessionSettings,
    /// What the runtime learns from incidents.
    pub learning: LearningConfig,
    /// The audit trail.
    pub audit: AuditConfig,
    /// Journals of messages finished longer ago than this are compacted.
    pub journal_retention: Duration,
    /// How often compaction runs.
    pub compaction_interval: Duration,
    /// Retention of finished messages, decided approvals and deleted
    /// sessions (applied with compaction, every `compaction_interval`).
    pub retention: StateRetention,
    /// Restart intensity of the session supervisor.
    pub session_intensity: (u32, Duration),
    /// The MEMORY.md file (default `<workspace>/memory/MEMORY.md`).
    pub memory_path: Option<PathBuf>,
    /// The HTTP server's limits (`[serve]`), for `hale serve` and the API.
    pub serve: crate::config::ServeSettings,
    /// Secret values to mask everywhere besides those the runtime finds
    /// itself at start (the token file, `HALE_TOKEN`, each model's
    /// `api_key_env` value, each stdio MCP server's `env` values; see
    /// [`Runtime::start`]). Shared: a value added later is masked too.
    pub secrets: KnownSecrets,
    /// Wraps the store the sessions use (`None`: the store itself). For
    /// fault injection: a test makes journal writes fail like a full disk.
    pub session_store_layer: Option<SessionStoreLayer>,
}

/// Given the store, the store sessions get.
pub type WrapSessionStore = dyn Fn(Arc<dyn SessionStore>) -> Arc<dyn SessionStore> + Send + Sync;

/// A wrapper around the sessions' store (see
/// [`RuntimeConfig::session_store_layer`]).
#[derive(Clone)]
pub struct SessionStoreLayer(
    /// The wrapper.
    pub Arc<WrapSessionStore>,
);

impl std::fmt::Debug for SessionStoreLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionStoreLayer")
    }
}

impl RuntimeConfig {
    /// Defaults for a data directory: built-in tools confined to
    /// `<data_dir>/workspace`, the scripted model, one `default` agent.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        let workspace = data_dir.join("workspace");
        let mut builtin = BuiltinConfig::new(workspace);
        builtin.exec.sandbox.helper = crate::sandbox::default_helper();
        Self {
            builtin,
            mcp: Vec::new(),
            mcp_breakers: BTreeMap::new(),
            models: vec![ModelConfig::scripted(crate::config::SCRIPTED_MODEL)],
            agents: vec![default_agent(&[crate::config::SCRIPTED_MODEL.to_owned()])],
            dispatch: DispatchConfig::default(),
            sessions: SessionSettings::default(),
            learning: LearningConfig::default(),
            audit: AuditConfig::default(),
            journal_retention: Duration::from_secs(7 * 24 * 3600),
            compaction_interval: Duration::from_secs(60),
            retention: StateRetention::default(),
            session_intensity: (1000, Duration::from_secs(10)),
            memory_path: None,
            serve: crate::config::ServeSettings::default(),
            secrets: KnownSecrets::new(),
            session_store_layer: None,
            data_dir,
        }
    }
}

/// How long the inbox, approvals and deleted sessions keep their rows.
/// `None` keeps them for ever. A pruned message answers `410 Gone` and is
/// no longer part of its session's conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateRetention {
    /// Finished (done or failed) messages older than this are deleted,
    /// with their journals (default 30 days).
    pub messages: Option<Duration>,
    /// Approvals decided longer ago than this are deleted (default 30
    /// days).
    pub approvals: Option<Duration>,
    /// Sessions deleted longer ago than this go with their inboxes and
    /// journals (default 7 days).
    pub deleted_sessions: Option<Duration>,
    /// Rows deleted per store write, so a large deletion never holds the
    /// writer for long (default 1000).
    pub chunk: usize,
}

impl Default for StateRetention {
    fn default() -> Self {
        Self {
            messages: Some(Duration::from_secs(30 * 86_400)),
            approvals: Some(Duration::from_secs(30 * 86_400)),
            deleted_sessions: Some(Duration::from_secs(7 * 86_400)),
            chunk: 1000,
        }
    }
}

impl StateRetention {
    /// The cutoff of a retention of `keep` at `now`: rows older go.
    /// `None` when nothing goes (no retention, or one reaching before
    /// the earliest representable time).
    pub fn cutoff(keep: Option<Duration>, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
        let keep = jiff::SignedDuration::try_from(keep?).ok()?;
        now.checked_sub(keep).ok()
    }
}

/// Calls `step` (one bounded store write deleting up to `chunk` rows)
/// until a call deletes less than a chunk; returns the total.
async fn in_chunks<F, Fut, E>(chunk: usize, mut step: F) -> Result<u64, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, E>>,
{
    let mut total = 0;
    loop {
        let n = step().await?;
        total += n;
        if n < chunk as u64 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// One pass of [`StateRetention`]: finished messages, decided approvals,
/// deleted sessions, each in chunks (its own store write each), so
/// handlers and the session actors interleave with a large deletion.
async fn apply_retention(inner: &Inner) {
    let retention = inner.config.retention;
    let chunk = retention.chunk.max(1);
    let now = jiff::Timestamp::now();
    let store = &inner.store;
    if let Some(before) = StateRetention::cutoff(retention.messages, now) {
        match in_chunks(chunk, || store.prune_messages(before, chunk)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention deleted finished messages"),
            Err(e) => tracing::warn!(error = %e, "message retention failed"),
        }
    }
    if let Some(before) = StateRetention::cutoff(retention.approvals, now) {
        match inner.escalation.prune_decided(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention deleted decided approvals"),
            Err(e) => tracing::warn!(error = %e, "approval retention failed"),
        }
    }
    if let Some(before) = StateRetention::cutoff(retention.deleted_sessions, now) {
        match in_chunks(chunk, || store.prune_deleted_sessions(before, chunk)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "retention deleted rows of deleted sessions"),
            Err(e) => tracing::warn!(error = %e, "deleted-session retention failed"),
        }
    }
}

/// The tools every agent has unless it says otherwise: the names
/// `hale.toml` accepts in an agent's `tools`, [`crate::config::BUILTIN_TOOLS`].
pub const DEFAULT_TOOLS: &[&str] = crate::config::BUILTIN_TOOLS;

/// The system prompt of an agent that sets none (MEMORY.md and the budget
/// line follow it).
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a careful agent running under hale. Tool results \
     are structured outcomes: read `status`, `code`, `retryable`, `recoverable` and `hints` before \
     deciding what to do next.";

/// The `default` agent: every built-in tool, every MCP server, `models`.
pub fn default_agent(models: &[String]) -> AgentSpec {
    AgentSpec {
        name: crate::config::DEFAULT_AGENT.to_owned(),
        system_prompt: DEFAULT_SYSTEM_PROMPT.to_owned(),
        models: models.to_vec(),
        tools: DEFAULT_TOOLS.iter().map(|t| (*t).to_owned()).collect(),
        mcp: vec!["*".to_owned()],
        budget: AgentSpec::DEFAULT_BUDGET,
        token_budget: None,
    }
}

/// Why the runtime failed to start or to do something.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The data directory could not be opened (or is in use).
    #[error(transparent)]
    DataDir(#[from] crate::data_dir::DataDirError),
    /// `hale.toml` cannot be used; the message reads
    /// `hale.toml:12:3: what is wrong`.
    #[error(transparent)]
    ConfigFile(#[from] ConfigError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] hale_actors::store::StoreError),
    /// A part of the tree is misconfigured.
    #[error("{part}: {message}")]
    Config {
        /// Which part.
        part: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The supervision tree failed.
    #[error("supervision tree: {0}")]
    Tree(String),
    /// A session operation failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// An approval operation failed.
    #[error(transparent)]
    Escalation(#[from] EscalationError),
    /// No actor has this id.
    #[error("no actor `{0}` in the tree")]
    UnknownActor(String),
}

/// Adds to `config.secrets` the values the runtime knows are secret: the
/// API token (the token file, `HALE_TOKEN`), each model's `api_key_env`
/// value and each stdio MCP server's `env` values. A value too short to
/// mask without mangling ordinary text is reported, not masked.
fn collect_known_secrets(config: &RuntimeConfig, data_dir: &DataDir) {
    let mut found: Vec<(String, String)> = Vec::new();
    if let Ok(token) = std::fs::read_to_string(data_dir.token_path()) {
        found.push(("the token file".to_owned(), token));
    }
    if let Ok(token) = std::env::var("HALE_TOKEN") {
        found.push(("HALE_TOKEN".to_owned(), token));
    }
    for model in &config.models {
        if let Some(var) = &model.api_key_env
            && let Ok(key) = std::env::var(var)
        {
            found.push((format!("model `{}` api_key_env", model.name), key));
        }
    }
    for server in &config.mcp {
        if let McpTransport::Stdio { env, .. } = &server.transport {
            for (name, value) in env {
                found.push((format!("mcp `{}` env {name}", server.name), value.clone()));
            }
        }
    }
    for (what, value) in found {
        if let Err(NotAdded::TooShort) = config.secrets.add(&value) {
            tracing::warn!(
                what,
                "a secret value is shorter than {MIN_KNOWN_SECRET_LEN} characters: not masked by value"
            );
        }
    }
}

fn config_error(part: &'static str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Config {
        part,
        message: e.to_string(),
    }
}

/// One actor of the tree, as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct ActorNode {
    /// Its stable path (`hale/mcp/weather`), the same the audit trail and
    /// `kill` use.
    pub id: String,
    /// What it is: `supervisor`, `session`, `tool`, `mcp`, `model`,
    /// `memory`, `escalation`, `audit`.
    pub kind: String,
    /// `running`, `restart_pending`, `stopped`, `parked`.
    pub state: String,
    /// Restarts so far.
    pub restarts: u64,
    /// Why it last exited.
    pub last_exit: Option<String>,
}

/// The running runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    root: SupervisorRef,
    store: SqliteStore,
    audit: AuditHandle,
    memory: MemoryHandle,
    escalation: Escalation,
    models: Arc<Models>,
    mcp: Arc<McpServers>,
    endpoints: Arc<Endpoints>,
    dispatcher: Arc<Dispatcher>,
    sessions: Arc<Sessions>,
    tap: Arc<EventTap>,
    redactor: Arc<Redactor>,
    ready: AtomicBool,
    stopped: AtomicBool,
    config: RuntimeConfig,
    /// Held (and with it the directory's lock) until shutdown.
    data_dir: std::sync::Mutex<Option<DataDir>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("data_dir", &self.inner.config.data_dir)
            .finish_non_exhaustive()
    }
}

/// Re-attaches handles when a branch of the root restarts, and forwards
/// every event to the audit trail.
struct RootObserver {
    audit: Arc<dyn SupervisorObserver>,
    attach: mpsc::UnboundedSender<String>,
}

impl SupervisorObserver for RootObserver {
    fn observe(&self, event: &SupervisorEvent) {
        self.audit.observe(event);
        // Only a restart needs re-attaching: `start` attaches the first
        // incarnations itself. A first start handled here, late on a busy
        // machine, would forget sessions that had already started and
        // strand their new messages.
        if let (SupervisorEventKind::ChildStarted { restarts, .. }, Some(child)) =
            (&event.kind, &event.child)
            && *restarts > 0
        {
            let _ = self.attach.send(child.as_str().to_owned());
        }
    }
}

impl Runtime {
    /// Starts everything: data directory (lock, reaping what a crashed
    /// predecessor left), store, the tree, and the sessions with
    /// unfinished messages.
    ///
    /// # Errors
    /// A data directory in use, a store that cannot open, a misconfigured
    /// part, a tree that cannot start.
    pub async fn start(mut config: RuntimeConfig) -> Result<Self, RuntimeError> {
        crate::sandbox::prepare(&mut config.builtin.exec.sandbox)
            .map_err(|e| config_error("tools.sandbox", e))?;
        let data_dir =
            DataDir::open_with_workspace(&config.data_dir, &config.builtin.workspace_root)?;
        collect_known_secrets(&config, &data_dir);
        config.audit.redaction.known = config.secrets.clone();
        let redactor = Arc::new(
            Redactor::new(&config.audit.redaction).map_err(|e| config_error("redaction", e))?,
        );
        let store = SqliteStore::open(StoreConfig::new(data_dir.db_path())).await?;
        store.set_redactor(Arc::clone(&redactor));
        if let Some(user) = &config.builtin.exec.sandbox.user
            && config.builtin.exec.sandbox.mode == SandboxMode::Landlock
            && let Err(e) = crate::data_dir::share_with_sandbox_user(
                data_dir.root(),
                data_dir.workspace(),
                user.uid,
                user.gid,
            )
        {
            let _ = store.close().await;
            return Err(e.into());
        }
        tracing::info!(
            target: "hale::runtime",
            "exec sandbox: {}",
            config.builtin.exec.sandbox.describe()
        );
        match Self::start_tree(config, data_dir, store.clone(), redactor).await {
            Ok(runtime) => Ok(runtime),
            Err(e) => {
                let _ = store.close().await;
                Err(e)
            }
        }
    }

    /// Loads `hale.toml` (`path`, or `./hale.toml` when `None` and it
    /// exists, else the defaults; see [`Config::load`]) and starts a
    /// runtime from it.
    ///
    /// # Errors
    /// [`RuntimeError::ConfigFile`] (file, line and column) for a config
    /// that cannot be used; then as [`start`](Self::start).
    pub async fn start_from_file(path: Option<&Path>) -> Result<Self, RuntimeError> {
        let config = Config::load(path)?;
        Self::start_from_config(&config).await
    }

    /// Starts a runtime from a loaded `hale.toml`
    /// ([`RuntimeConfig::from_config`]).
    ///
    /// # Errors
    /// As [`RuntimeConfig::from_config`], then as [`start`](Self::start).
    pub async fn start_from_config(config: &Config) -> Result<Self, RuntimeError> {
        Self::start(RuntimeConfig::from_config(config)?).await
    }

    async fn start_tree(
        mut config: RuntimeConfig,
        data_dir: DataDir,
        store: SqliteStore,
        redactor: Arc<Redactor>,
    ) -> Result<Self, RuntimeError> {
        let events: Arc<dyn Store> = Arc::new(store.clone());
        let (audit_spec, audit) = audit_child("audit", Arc::clone(&events), config.audit.clone())
            .map_err(|e| config_error("audit", e))?;
        let tap =
            Arc::new(EventTap::new(Arc::new(audit.sink())).with_redactor(Arc::clone(&redactor)));
        let sink: Arc<dyn EventSink> = tap.clone();
        if let Some(mode) = data_dir.tightened() {
            sink.emit(Event::new(
                Level::Warning,
                "hale/data_dir",
                hale_actors::event::EventKind::Log,
                format!(
                    "the data directory was mode {mode:o}, open to other users; tightened to {:o}",
                    crate::data_dir::data_dir_mode()
                ),
            ));
        }

        let memory_path = config
            .memory_path
            .clone()
            .unwrap_or_else(|| data_dir.memory_path());
        let legacy_memory = config
            .builtin
            .workspace_root
            .join(hale_actors::memory::DEFAULT_MEMORY_PATH);
        report_memory_migration(
            &*sink,
            &legacy_memory,
            &memory_path,
            crate::data_dir::migrate_memory(&legacy_memory, &memory_path),
        );
        let memory_config = MemoryConfig::new(memory_path);
        let (memory_spec, memory_handles) = memory_supervisor(
            "hale/memory",
            &[("MEMORY.md".to_owned(), memory_config)],
            Arc::clone(&sink),
        )
        .map_err(|e| config_error("memory", e))?;
        let memory = memory_handles
            .into_iter()
            .next()
            .ok_or_else(|| config_error("memory", "no memory file"))?
            .with_redactor(Arc::clone(&redactor));

        let approvals = Arc::new(StoreApprovals::new(Arc::clone(&events)));
        let (escalation_spec, escalation) = escalation_child(approvals, Arc::clone(&sink));

        let mut endpoints =
            Endpoints::new(config.dispatch).map_err(|e| config_error("dispatch", e))?;
        for (server, breaker) in &config.mcp_breakers {
            endpoints = endpoints
                .with_breaker(server.clone(), breaker.failures, breaker.cool_down)
                .map_err(|e| config_error("mcp", format!("{server}: breaker: {e}")))?;
        }
        let endpoints = Arc::new(endpoints);
        let models = Models::new(
            config.models.clone(),
            Arc::clone(&endpoints),
            Arc::clone(&sink),
        )
        .map_err(|e| config_error("models", e))?;
        models.set_redactor(Arc::clone(&redactor));
        for mcp in &mut config.mcp {
            mcp.recorder = data_dir.ledger().hook();
        }
        let mcp = McpServers::new(config.mcp.clone(), Arc::clone(&sink))
            .map_err(|e| config_error("mcp", e))?;

        let mut builtin = config.builtin.clone();
        builtin.exec.recorder = data_dir.ledger().hook();
        builtin.memory = Some(memory.clone());
        let grants = builtin.grants.clone();
        let tools = builtin_tools(&builtin).map_err(|e| config_error("tools", e))?;
        let (tools_spec, tool_handles) = tools_supervisor("hale/tools", tools, Arc::clone(&sink));

        let registry = Arc::new(ToolRegistry::new());
        let mut owned: Vec<Arc<dyn Tool>> = Vec::new();
        for handle in tool_handles {
            owned.push(Arc::new(handle));
        }
        owned.push(Arc::new(audit.read_logs_tool()));
        owned.push(Arc::new(ManageMcp::new(
            Arc::clone(&mcp),
            Arc::clone(&endpoints),
        )));
        owned.push(Arc::new(
            AskApproval::new(escalation.clone()).with_max_open(config.sessions.max_open_questions),
        ));
        owned.push(Arc::new(Remember::new(memory.clone())));
        for tool in owned {
            registry
                .register(tool)
                .map_err(|e| config_error("tools", e))?;
        }
        let routers: Vec<Arc<dyn Router>> = vec![
            Arc::new(RegistryRouter::new(registry)),
            Arc::new(McpRouter::new(Arc::clone(&mcp))),
        ];
        let dispatcher = Arc::new(
            Dispatcher::new(routers, Arc::clone(&endpoints), Arc::clone(&sink))
                .with_redactor(Arc::clone(&redactor)),
        );

        let learning = IncidentLearning::new(
            config.learning.clone(),
            Some(Arc::clone(&events)),
            Some(Arc::clone(&mcp)),
            Some(memory.clone()),
            Arc::clone(&sink),
        );
        let mut session_store: Arc<dyn SessionStore> = Arc::new(store.clone());
        if let Some(layer) = &config.session_store_layer {
            session_store = (layer.0)(session_store);
        }
        let sessions = Sessions::new(
            SessionEnv {
                store: session_store,
                dispatcher: Arc::clone(&dispatcher),
                models: models.clone(),
                escalation: escalation.clone(),
                grants,
                memory: Some(memory.clone()),
                learning: Some(Arc::new(learning)),
                sink: Arc::clone(&sink),
                deltas: hale_actors::session::Deltas::new(Arc::clone(&redactor)),
                settings: config.sessions.clone(),
            },
            config.agents.clone(),
        );

        let (attach_tx, attach_rx) = mpsc::unbounded_channel();
        let observer = Arc::new(RootObserver {
            audit: hale_actors::supervision_events::observer(Arc::clone(&sink)),
            attach: attach_tx,
        });
        let models_for_tree = models.clone();
        let mcp_for_tree = Arc::clone(&mcp);
        let sessions_for_tree = Arc::clone(&sessions);
        let (max_restarts, period) = config.session_intensity;
        let root_spec = SupervisorSpec::new("hale")
            .strategy(Strategy::OneForOne)
            .intensity(1000, Duration::from_secs(5))
            .observer(observer)
            .child(audit_spec)
            .child(ChildSpec::supervisor("memory", move || memory_spec.clone()))
            .child(escalation_spec)
            .child(ChildSpec::supervisor("models", move || {
                models_for_tree.supervisor_spec("hale/models")
            }))
            .child(ChildSpec::supervisor("mcp", move || {
                mcp_for_tree.supervisor_spec("hale/mcp")
            }))
            .child(ChildSpec::supervisor("tools", move || tools_spec.clone()))
            .child(ChildSpec::supervisor("sessions", move || {
                sessions_for_tree.supervisor_spec("hale/sessions", max_restarts, period)
            }));
        let (root, _task) = SupervisorRef::start(root_spec)
            .await
            .map_err(|e| RuntimeError::Tree(e.to_string()))?;

        let runtime = Self {
            inner: Arc::new(Inner {
                root,
                store,
                audit,
                memory,
                escalation,
                models,
                mcp,
                endpoints,
                dispatcher,
                sessions,
                tap,
                redactor,
                ready: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                config,
                data_dir: std::sync::Mutex::new(Some(data_dir)),
            }),
        };
        for branch in ["models", "mcp", "sessions"] {
            runtime.attach(branch).await?;
        }
        runtime.spawn_reattacher(attach_rx);
        runtime.spawn_compaction();
        let switches = runtime.inner.sessions.restore_agent_models().await?;
        if switches > 0 {
            tracing::info!(switches, "restored agent-wide model switches");
        }
        let resumed = runtime.inner.sessions.resume_all().await?;
        tracing::info!(resumed, "runtime started");
        runtime.inner.ready.store(true, Ordering::SeqCst);
        Ok(runtime)
    }

    async fn branch(&self, id: &str) -> Result<SupervisorRef, RuntimeError> {
        let cell = self
            .inner
            .root
            .resolve(&ChildId::new(id))
            .await
            .map_err(|e| RuntimeError::Tree(e.to_string()))?
            .ok_or_else(|| RuntimeError::Tree(format!("branch `{id}` is not running")))?;
        Ok(SupervisorRef::from(cell))
    }

    async fn attach(&self, branch: &str) -> Result<(), RuntimeError> {
        match branch {
            "models" => self.inner.models.attach(self.branch(branch).await?),
            "mcp" => self.inner.mcp.attach(self.branch(branch).await?),
            "sessions" => {
                self.inner.sessions.attach(self.branch(branch).await?);
            }
            _ => {}
        }
        Ok(())
    }

    fn spawn_reattacher(&self, mut rx: mpsc::UnboundedReceiver<String>) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while let Some(branch) = rx.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                let runtime = Runtime { inner };
                if !runtime.inner.ready.load(Ordering::SeqCst)
                    || runtime.inner.stopped.load(Ordering::SeqCst)
                {
                    continue;
                }
                if let Err(e) = runtime.attach(&branch).await {
                    tracing::warn!(branch, error = %e, "could not re-attach a restarted branch");
                    continue;
                }
                if branch == "sessions" {
                    // Dynamic children do not survive their supervisor:
                    // start again every session with work left.
                    runtime.inner.sessions.forget_started();
                    if let Err(e) = runtime.inner.sessions.resume_all().await {
                        tracing::warn!(error = %e, "could not resume sessions after a restart");
                    }
                }
            }
        });
    }

    fn spawn_compaction(&self) {
        let weak = Arc::downgrade(&self.inner);
        let every = self
            .inner
            .config
            .compaction_interval
            .max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let retention = jiff::SignedDuration::try_from(inner.config.journal_retention)
                    .unwrap_or(jiff::SignedDuration::MAX);
                let Ok(before) = jiff::Timestamp::now().checked_sub(retention) else {
                    continue;
                };
                loop {
                    match inner.store.compact_journals(before, 1000).await {
                        Ok(n) if n >= 1000 => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "journal compaction failed");
                            break;
                        }
                    }
                }
                apply_retention(&inner).await;
            }
        });
    }

    /// Applies the state retention once, now (the timer does it every
    /// `compaction_interval`).
    pub async fn apply_retention(&self) {
        apply_retention(&self.inner).await;
    }

    /// Whether the tree is up and the journals replayed.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst) && !self.inner.stopped.load(Ordering::SeqCst)
    }

    /// Counters derived from the event stream (`/metrics`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.inner.tap.metrics()
    }

    /// Every event as it is emitted (before it reaches the store).
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.inner.tap.subscribe()
    }

    /// What masks secrets: the known values (token, model keys, MCP
    /// `env`) and the patterns. For everything shown to people (API
    /// errors, approvals, logs).
    pub fn redactor(&self) -> &Arc<Redactor> {
        &self.inner.redactor
    }

    /// The known secret values (shared with every masking point).
    pub fn known_secrets(&self) -> &KnownSecrets {
        self.inner.redactor.known()
    }

    /// The store (audit trail, approvals, inboxes and journals).
    pub fn store(&self) -> &SqliteStore {
        &self.inner.store
    }

    /// The sessions.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.inner.sessions
    }

    /// The MCP servers.
    pub fn mcp(&self) -> &Arc<McpServers> {
        &self.inner.mcp
    }

    /// The model endpoints.
    pub fn models(&self) -> &Arc<Models> {
        &self.inner.models
    }

    /// Breakers, budgets and caps of every endpoint.
    pub fn endpoints(&self) -> &Arc<Endpoints> {
        &self.inner.endpoints
    }

    /// The tool layer.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.inner.dispatcher
    }

    /// The audit trail.
    pub fn audit(&self) -> &AuditHandle {
        &self.inner.audit
    }

    /// MEMORY.md.
    pub fn memory(&self) -> &MemoryHandle {
        &self.inner.memory
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Creates a session of `agent`.
    ///
    /// # Errors
    /// Unknown agent, or a store/supervisor failure.
    pub async fn create_session(&self, agent: &str) -> Result<String, RuntimeError> {
        Ok(self.inner.sessions.create(agent, None).await?)
    }

    /// Stores a message for `session`; see [`Sessions::send`].
    ///
    /// # Errors
    /// As [`Sessions::send`].
    pub async fn send(&self, session: &str, text: &str) -> Result<MessageId, RuntimeError> {
        Ok(self.inner.sessions.send(session, text).await?)
    }

    /// Sends and waits up to `timeout` for the reply.
    ///
    /// # Errors
    /// As [`Sessions::send_and_wait`].
    pub async fn send_and_wait(
        &self,
        session: &str,
        text: &str,
        timeout: Duration,
    ) -> Result<(MessageId, Option<MessageRecord>), RuntimeError> {
        Ok(self
            .inner
            .sessions
            .send_and_wait(session, text, timeout)
            .await?)
    }

    /// Approvals, all or open only.
    ///
    /// # Errors
    /// The escalation actor is unavailable.
    pub async fn approvals(&self, open_only: bool) -> Result<Vec<Approval>, RuntimeError> {
        let approvals = self.inner.escalation.list(open_only).await?;
        Ok(approvals.into_iter().map(|a| self.masked(a)).collect())
    }

    /// `value` with its secrets masked (known values and patterns), for
    /// what is shown to people; unchanged if it does not survive the trip
    /// through JSON.
    fn masked<T: Serialize + serde::de::DeserializeOwned>(&self, value: T) -> T {
        let Ok(mut json) = serde_json::to_value(&value) else {
            return value;
        };
        self.inner.redactor.redact_value(&mut json);
        serde_json::from_value(json).unwrap_or(value)
    }

    /// Decides an approval.
    ///
    /// # Errors
    /// Unknown id, an invalid option, already decided, or unavailable.
    pub async fn resolve_approval(
        &self,
        id: &str,
        answer: Answer,
        by: &str,
    ) -> Result<Resolution, RuntimeError> {
        Ok(self.inner.escalation.resolve(id, answer, by).await?)
    }

    /// Approvals opened and resolved, live; a receiver that falls more
    /// than [`NOTICE_BUFFER`](hale_actors::escalation::NOTICE_BUFFER)
    /// behind is told how many it missed.
    pub fn subscribe_approvals(&self) -> tokio::sync::broadcast::Receiver<ApprovalNotice> {
        self.inner.escalation.subscribe()
    }

    /// Queries the audit trail (flushing what is queued first, so a query
    /// sees every event emitted before it).
    ///
    /// # Errors
    /// A store failure.
    pub async fn logs(&self, query: EventQuery) -> Result<Vec<Event>, RuntimeError> {
        let _ = self.inner.audit.flush(Duration::from_secs(10)).await;
        self.inner
            .audit
            .query(query)
            .await
            .map_err(|e| config_error("audit", e))
    }

    /// The `exec` sandbox in force, as [`SandboxConfig::describe`] says
    /// it: `off`, `landlock (network none, as nobody)`, or why exec is
    /// refused.
    ///
    /// [`SandboxConfig::describe`]: hale_actors::builtin::SandboxConfig::describe
    pub fn sandbox(&self) -> String {
        self.inner.config.builtin.exec.sandbox.describe()
    }

    /// The supervision tree, depth first.
    ///
    /// # Errors
    /// A supervisor did not answer.
    pub async fn tree(&self) -> Result<Vec<ActorNode>, RuntimeError> {
        let mut out = Vec::new();
        walk(&self.inner.root, "hale", &mut out).await?;
        Ok(out.into_iter().map(|(node, _)| node).collect())
    }

    /// Kills the actor at `id` (a path from [`tree`](Self::tree)); its
    /// supervisor decides what follows. For chaos tests.
    ///
    /// # Errors
    /// No running actor has that id.
    pub async fn kill(&self, id: &str) -> Result<(), RuntimeError> {
        let mut nodes = Vec::new();
        walk(&self.inner.root, "hale", &mut nodes).await?;
        let cell = nodes
            .into_iter()
            .find(|(node, _)| node.id == id)
            .and_then(|(_, cell)| cell)
            .ok_or_else(|| RuntimeError::UnknownActor(id.to_owned()))?;
        cell.kill();
        Ok(())
    }

    /// Stops everything in reverse start order (sessions first, the store
    /// last), flushing the audit trail before the store closes, then
    /// releases the data directory's lock (another runtime may open it).
    ///
    /// # Errors
    /// The tree or the store did not stop cleanly.
    pub async fn shutdown(&self) -> Result<(), RuntimeError> {
        if self.inner.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let _ = self.inner.audit.flush(Duration::from_secs(10)).await;
        let stopped = self
            .inner
            .root
            .shutdown(Duration::from_secs(30))
            .await
            .map_err(|e| RuntimeError::Tree(e.to_string()));
        let closed = self.inner.store.close().await;
        // Everything that used the directory has stopped: release the
        // lock now, not when the last clone of the handle is dropped.
        drop(
            self.inner
                .data_dir
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        stopped?;
        closed?;
        Ok(())
    }

    /// Audit events at or above `level` so far (for summaries).
    ///
    /// # Errors
    /// A store failure.
    pub async fn count_events(&self, level: Level) -> Result<usize, RuntimeError> {
        let query = EventQuery::newest(
            hale_actors::store::EventFilter {
                min_level: Some(level),
                ..Default::default()
            },
            usize::MAX >> 1,
        );
        Ok(self.logs(query).await?.len())
    }
}

fn kind_of(path: &str, info: &ChildInfo) -> String {
    if info.kind == ChildKind::Supervisor {
        return "supervisor".to_owned();
    }
    let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
    match parent {
        "hale/sessions" => "session",
        "hale/tools" => "tool",
        "hale/mcp" => "mcp",
        "hale/models" => "model",
        "hale/memory" => "memory",
        _ => match info.id.as_str() {
            "escalation" => "escalation",
            "audit" => "audit",
            _ => "worker",
        },
    }
    .to_owned()
}

fn state_name(info: &ChildInfo) -> &'static str {
    match info.state {
        hale_supervision::ChildState::Running => "running",
        hale_supervision::ChildState::RestartPending => "restart_pending",
        hale_supervision::ChildState::Stopped => "stopped",
        hale_supervision::ChildState::Parked => "parked",
    }
}

async fn walk(
    sup: &SupervisorRef,
    path: &str,
    out: &mut Vec<(ActorNode, Option<ActorCell>)>,
) -> Result<(), RuntimeError> {
    let children = sup
        .which_children()
        .await
        .map_err(|e| RuntimeError::Tree(e.to_string()))?;
    for info in children {
        let id = format!("{path}/{}", info.id);
        let node = ActorNode {
            kind: kind_of(&id, &info),
            state: state_name(&info).to_owned(),
            restarts: info.restarts,
            last_exit: info.last_exit.as_ref().map(ToString::to_string),
            id: id.clone(),
        };
        let sub = match (&info.actor, info.kind) {
            (Some(cell), ChildKind::Supervisor) => Some(SupervisorRef::from(cell.clone())),
            _ => None,
        };
        out.push((node, info.actor.clone()));
        if let Some(sub) = sub {
            // A branch restarting under us is not an error of the walk.
            let _ = Box::pin(walk(&sub, &id, out)).await;
        }
    }
    Ok(())
}

/// Tells the audit trail (and the log) what the move of an old
/// workspace MEMORY.md did; a failed move leaves the old file and starts
/// with the new one.
fn report_memory_migration(
    sink: &dyn EventSink,
    legacy: &std::path::Path,
    to: &std::path::Path,
    result: std::io::Result<crate::data_dir::MemoryMigration>,
) {
    use crate::data_dir::MemoryMigration;
    use hale_actors::event::{Event, EventKind, Level};
    let (level, message) = match result {
        Ok(MemoryMigration::Nothing) => return,
        Ok(MemoryMigration::Moved) => (
            Level::Warning,
            format!(
                "moved MEMORY.md out of the workspace: {} -> {} (only the memory actor writes it now)",
                legacy.display(),
                to.display()
            ),
        ),
        Ok(MemoryMigration::BothExist) => (
            Level::Warning,
            format!(
                "{} is ignored: the memory file is {} (outside the workspace); merge by hand with `remember` if it holds lessons",
                legacy.display(),
                to.display()
            ),
        ),
        Err(e) => (
            Level::Error,
            format!(
                "could not move {} to {}: {e}; starting with the memory at {}",
                legacy.display(),
                to.display(),
                to.display()
            ),
        ),
    };
    tracing::warn!("{message}");
    sink.emit(
        Event::new(
            level,
            "hale/memory/MEMORY.md",
            EventKind::MemoryWrite,
            message,
        )
        .with_data(serde_json::json!({
            "migrated_from": legacy.display().to_string(),
            "to": to.display().to_string(),
        })),
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_retention_cutoff_is_now_less_the_kept_age() {
        let now: jiff::Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
        assert_eq!(StateRetention::cutoff(None, now), None);
        assert_eq!(StateRetention::cutoff(Some(Duration::ZERO), now), Some(now));
        assert_eq!(
            StateRetention::cutoff(Some(Duration::from_secs(3600)), now),
            Some("2026-12-03T11:00:00Z".parse().unwrap())
        );
        // Further back than time goes: nothing is old enough.
        assert_eq!(StateRetention::cutoff(Some(Duration::MAX), now), None);
    }
}
