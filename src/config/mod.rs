//! `hale.toml`: hale's one configuration file, parsed, checked and turned
//! into the settings of each actor.
//!
//! Reading happens in two steps. `raw.rs` mirrors the file with serde
//! (every table `deny_unknown_fields`, so a misspelt key is an error, not
//! a silently ignored setting); then [`Config`] resolves it: defaults
//! filled in, names cross-checked (backups, agents' models, tools and
//! servers), and the actor configs built and validated by their own
//! `validate`/`new`. Every error names the file, the line and column, and
//! what is wrong, so a bad config fails at start instead of as a crash
//! loop an hour later.
//!
//! Every setting has a working default: no file at all is a valid
//! configuration (data in `./.hale`, one agent `default` with every
//! built-in tool, the models whose API key is in the environment, then
//! the scripted model). `hale init` writes [`TEMPLATE`], which shows every
//! key with its default.
//!
//! Relative paths (`data_dir`, `tools.workspace`, `mcp.cwd`) are relative
//! to the directory of the config file.

pub mod duration;
mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hale_actors::audit::{AuditConfig, Retention};
use hale_actors::builtin::{
    AllowEntry, AllowList, BlockRule, BuiltinConfig, Exec, ExecConfigError, NetworkPolicy,
    SandboxConfig, SandboxMode,
};
use hale_actors::dispatch::{DispatchConfig, DispatchConfigError, Endpoints};
use hale_actors::mcp::{McpServerConfig, McpTransport};
use hale_actors::memory::MemoryConfig;
use hale_actors::model::{ModelConfig, Provider};
use hale_actors::store::StoreConfig;
use toml::Spanned;

pub use duration::{format_duration, parse_duration};
use raw::{Dur, RawAgent, RawConfig, RawMcp, RawModel, RawNetwork, RawSandbox};

/// The file `Config::load(None)` looks for in the current directory.
pub const DEFAULT_FILE: &str = "hale.toml";
/// The data directory when `data_dir` is not set.
pub const DEFAULT_DATA_DIR: &str = "./.hale";
/// The name of the scripted model, which always exists.
pub const SCRIPTED_MODEL: &str = "scripted";
/// The name of the agent made when no `[[agents]]` is configured.
pub const DEFAULT_AGENT: &str = "default";
/// The commented template `hale init` writes.
pub const TEMPLATE: &str = include_str!("template.toml");

/// The tools an agent may list in `tools` by name, and what an agent
/// that omits `tools` gets: the built-in tools, the runtime's own
/// (`read_logs`, `manage_mcp`, `ask_approval`, `remember`) and the
/// session's `switch_model`. The one list: the runtime's `DEFAULT_TOOLS`
/// is this list. It is defined here, not in the runtime, because the
/// runtime is built from a configuration and never the other way round.
pub const BUILTIN_TOOLS: &[&str] = &[
    "exec",
    "read_file",
    "write_file",
    "edit_file",
    "glob",
    "grep",
    "web_fetch",
    "read_logs",
    "manage_mcp",
    "ask_approval",
    "remember",
    "switch_model",
];

/// Where in the file something is: 1-based line and column (in
/// characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1, in characters.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` of `text`.
    pub fn of_offset(text: &str, offset: usize) -> Self {
        let offset = floor_char_boundary(text, offset.min(text.len()));
        let before = text.get(..offset).unwrap_or(text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Self {
            line: before.matches('\n').count() + 1,
            column: before.get(line_start..).map_or(0, |l| l.chars().count()) + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Why a configuration cannot be used. Its `Display` reads
/// `hale.toml:12:3: what is wrong`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type, an
    /// unknown key, or a malformed duration.
    #[error("{}", located(path, *location, message))]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where, when known.
        location: Option<Location>,
        /// What is wrong.
        message: String,
    },
    /// The file parses but a setting cannot work (an unknown backup, a
    /// duplicate name, both `command` and `url`, ...).
    #[error("{}", located(path, *location, message))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where, when known.
        location: Option<Location>,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// Where in the file the problem is, when known.
    pub fn location(&self) -> Option<Location> {
        match self {
            Self::Read { .. } => None,
            Self::Syntax { location, .. } | Self::Invalid { location, .. } => *location,
        }
    }

    /// What is wrong, without the file and location.
    pub fn message(&self) -> String {
        match self {
            Self::Read { source, .. } => format!("cannot read: {source}"),
            Self::Syntax { message, .. } | Self::Invalid { message, .. } => message.clone(),
        }
    }
}

fn located(path: &Path, location: Option<Location>, message: &str) -> String {
    match location {
        Some(at) => format!("{}:{at}: {message}", path.display()),
        None => format!("{}: {message}", path.display()),
    }
}

/// Something in the file that works but is probably not what was meant
/// (an Anthropic `base_url` ending in `/v1`). Shown at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Where.
    pub location: Option<Location>,
    /// What looks wrong.
    pub message: String,
}

/// `[session]`: how agent sessions run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    /// Tool calls one inbound message may cause (default 50); an agent's
    /// `budget` overrides it.
    pub iteration_budget: u32,
    /// The most bytes of MEMORY.md put into a system prompt (default
    /// 16 KiB); the rest is cut with a note.
    pub memory_prompt_bytes: usize,
    /// How long finished sessions' journals are kept (default 7 days).
    pub journal_retention: Duration,
    /// Whether incidents (escalations, give-ups) are written to MEMORY.md
    /// as lessons (default on).
    pub learn_from_incidents: bool,
    /// Questions (`ask_approval`) one session may have open at once
    /// (default 3).
    pub max_open_questions: usize,
    /// Bytes of conversation sent with one model turn (default 256 KiB);
    /// beyond it the oldest tool outputs are elided, with a note.
    pub context_budget_bytes: usize,
    /// Model turns one message may take before the session escalates
    /// (default 50).
    pub max_turns_per_message: u32,
    /// How a session whose journal cannot be written paces its retries:
    /// the first wait (default 1 s), doubling up to the last (default
    /// 1 min).
    pub stall_backoff: hale_actors::session::StallBackoff,
    /// How long finished messages are kept (default 30 days; `None`, "0s"
    /// in the file: for ever). A pruned message answers 410 and leaves
    /// its session's conversation.
    pub message_retention: Option<Duration>,
    /// How long decided approvals are kept (default 30 days; `None`: for
    /// ever).
    pub approval_retention: Option<Duration>,
    /// How long deleted sessions' rows are kept (default 7 days; `None`:
    /// for ever).
    pub deleted_session_retention: Option<Duration>,
    /// The first delay before a crashed session is restarted (default
    /// 5 ms); it doubles on each crash up to `restart_max_backoff`.
    pub restart_backoff: Duration,
    /// The longest delay before a crashed session is restarted (default
    /// 500 ms); a session that stays up this long starts from
    /// `restart_backoff` again.
    pub restart_max_backoff: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            iteration_budget: 50,
            memory_prompt_bytes: 16 * 1024,
            journal_retention: Duration::from_secs(7 * 86_400),
            learn_from_incidents: true,
            max_open_questions: hale_actors::escalation::DEFAULT_MAX_OPEN_QUESTIONS,
            context_budget_bytes:
                hale_actors::session::context_budget::DEFAULT_CONTEXT_BUDGET_BYTES,
            max_turns_per_message: hale_actors::session::DEFAULT_MAX_TURNS_PER_MESSAGE,
            stall_backoff: hale_actors::session::StallBackoff::default(),
            message_retention: Some(Duration::from_secs(30 * 86_400)),
            approval_retention: Some(Duration::from_secs(30 * 86_400)),
            deleted_session_retention: Some(Duration::from_secs(7 * 86_400)),
            restart_backoff: hale_actors::session::DEFAULT_RESTART_BACKOFF_MIN,
            restart_max_backoff: hale_actors::session::DEFAULT_RESTART_BACKOFF_MAX,
        }
    }
}

/// `[mcp.breaker]`: a server's own circuit breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker (default 5).
    pub failures: u32,
    /// How long it stays open before a probe (default 10 s).
    pub cool_down: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 5,
            cool_down: Duration::from_secs(10),
        }
    }
}

/// One agent (`[[agents]]`), resolved: every name in it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Its name.
    pub name: String,
    /// Model names, in fallback order.
    pub models: Vec<String>,
    /// Built-in tool names and single MCP tools (`server__tool`).
    pub tools: Vec<String>,
    /// MCP servers all of whose tools the agent gets.
    pub mcp: Vec<String>,
    /// Tool calls one inbound message may cause.
    pub budget: u32,
    /// The agent's own system prompt, before MEMORY.md; hale's default
    /// when `None`.
    pub system_prompt: Option<String>,
    /// Tokens (prompt and completion) one inbound message may use before
    /// a human is asked; `None` (the default): no cap.
    pub token_budget: Option<u64>,
}

/// `[serve]`: the limits of `hale serve`'s HTTP server. Each one bounds
/// what a client (or many) can hold of the daemon: sockets, tasks,
/// buffers and store reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeSettings {
    /// How long a client may take to send a request's header, from its
    /// first byte (default 10 s); the connection is closed after that.
    pub header_read_timeout: Duration,
    /// How long a connection may sit with no request in flight and no
    /// byte moving (default 60 s) before it is closed.
    pub idle_timeout: Duration,
    /// Connections served at once (default 512); further ones wait in
    /// the listen backlog until one closes.
    pub max_connections: usize,
    /// `/v1/events` streams open at once (default 64); beyond it the
    /// route answers 503 with `Retry-After`.
    pub max_event_streams: usize,
    /// The longest `/metrics` reuses what it read from the store
    /// (default 1 s): scrapes read the store at most once per this.
    pub metrics_refresh: Duration,
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            max_event_streams: 64,
            metrics_refresh: Duration::from_secs(1),
        }
    }
}

/// A loaded, checked `hale.toml`. See the module docs.
#[derive(Debug, Clone)]
pub struct Config {
    path: Option<PathBuf>,
    data_dir: PathBuf,
    builtin: BuiltinConfig,
    session: SessionSettings,
    serve: ServeSettings,
    retention: Retention,
    dispatch: DispatchConfig,
    mcp: Vec<McpServerConfig>,
    breakers: BTreeMap<String, BreakerSettings>,
    models: Vec<ModelConfig>,
    agents: Vec<AgentConfig>,
    warnings: Vec<ConfigWarning>,
    /// Whether `tools.workspace` was set (else it follows the data dir).
    workspace_set: bool,
    /// Where each `[[models]]` entry's `name` is.
    model_locations: BTreeMap<String, Location>,
}

impl Config {
    /// Loads `path`, or `./hale.toml` when `path` is `None` and that file
    /// exists, or else the defaults. The environment is read for the
    /// default models (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`).
    ///
    /// # Errors
    /// [`ConfigError`] with the file, line and column.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match path {
            Some(path) => path.to_path_buf(),
            None => {
                let default = PathBuf::from(DEFAULT_FILE);
                if !default.exists() {
                    return Self::from_str_with_env("", None, env_is_set);
                }
                default
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::from_str_with_env(&text, Some(&path), env_is_set)
    }

    /// Parses `text` as if read from `path` (for error messages and
    /// relative paths), reading the environment for the default models.
    ///
    /// # Errors
    /// [`ConfigError`] with the file, line and column.
    pub fn from_str_at(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::from_str_with_env(text, Some(path), env_is_set)
    }

    /// Like [`from_str_at`](Self::from_str_at), with `has_env(name)`
    /// telling whether an environment variable is set (non-empty), so
    /// tests do not depend on the real environment. `path` `None` means
    /// no file: errors say `hale.toml`, paths are relative to the current
    /// directory.
    ///
    /// # Errors
    /// [`ConfigError`] with the file, line and column.
    pub fn from_str_with_env(
        text: &str,
        path: Option<&Path>,
        has_env: impl Fn(&str) -> bool,
    ) -> Result<Self, ConfigError> {
        let shown = path.map_or_else(|| PathBuf::from(DEFAULT_FILE), Path::to_path_buf);
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: shown.clone(),
            location: e.span().map(|s| Location::of_offset(text, s.start)),
            message: e.message().trim_end().to_owned(),
        })?;
        let base = path
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let resolver = Resolver {
            text,
            path: shown,
            base,
            warnings: Vec::new(),
        };
        let mut config = resolver.resolve(raw, &has_env)?;
        config.path = path.map(Path::to_path_buf);
        Ok(config)
    }

    /// The file this came from; `None` for the defaults.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The data directory (`data_dir`, default `./.hale`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// This configuration with its data directory replaced by `dir` (a
    /// command line's `--data-dir`; relative to the current directory,
    /// not to the file). The workspace moves with it to
    /// `<dir>/workspace` unless `tools.workspace` sets it.
    #[must_use]
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        if !self.workspace_set {
            self.builtin.workspace_root = self.data_dir.join(crate::data_dir::WORKSPACE_DIR);
        }
        self
    }

    /// Where the `[[models]]` entry `name` is in the file (`None` for the
    /// models hale adds itself).
    pub fn model_location(&self, name: &str) -> Option<Location> {
        self.model_locations.get(name).copied()
    }

    /// The directory the file tools and `exec` are confined to
    /// (`tools.workspace`, default `<data_dir>/workspace`).
    pub fn workspace_root(&self) -> &Path {
        &self.builtin.workspace_root
    }

    /// The memory file: `<data_dir>/memory/MEMORY.md`, outside the
    /// workspace (only the memory actor writes it).
    pub fn memory_config(&self) -> MemoryConfig {
        MemoryConfig::new(self.data_dir.join(hale_actors::memory::DEFAULT_MEMORY_PATH))
    }

    /// The store: `<data_dir>/hale.db` with the store's defaults.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig::new(self.data_dir.join(crate::data_dir::DB_FILE))
    }

    /// The built-in tools' settings.
    pub fn builtin_config(&self) -> BuiltinConfig {
        self.builtin.clone()
    }

    /// `[session]`.
    pub fn session(&self) -> &SessionSettings {
        &self.session
    }

    /// `[serve]`.
    pub fn serve(&self) -> &ServeSettings {
        &self.serve
    }

    /// The audit trail's settings: the defaults with `[audit]`'s retention.
    pub fn audit_config(&self) -> AuditConfig {
        AuditConfig {
            retention: self.retention.clone(),
            ..AuditConfig::default()
        }
    }

    /// Every `[[mcp]]` server, in file order, validated.
    pub fn mcp_configs(&self) -> Vec<McpServerConfig> {
        self.mcp.clone()
    }

    /// The `[mcp.breaker]` settings of the servers that set one.
    pub fn mcp_breakers(&self) -> &BTreeMap<String, BreakerSettings> {
        &self.breakers
    }

    /// The dispatcher's settings: the defaults with `[dispatch]`'s
    /// `attempt_timeout`.
    pub fn dispatch_config(&self) -> DispatchConfig {
        self.dispatch
    }

    /// The dispatcher's per-endpoint recovery state: `dispatch` for every
    /// endpoint, except that each server with a `[mcp.breaker]` gets its
    /// own breaker.
    ///
    /// # Errors
    /// [`DispatchConfigError`] when `dispatch` is invalid (the breaker
    /// settings from the file were checked at load).
    pub fn endpoints(&self, dispatch: DispatchConfig) -> Result<Endpoints, DispatchConfigError> {
        let mut endpoints = Endpoints::new(dispatch)?;
        for (server, breaker) in &self.breakers {
            endpoints =
                endpoints.with_breaker(server.clone(), breaker.failures, breaker.cool_down)?;
        }
        Ok(endpoints)
    }

    /// Every model, in file order (or the environment's defaults), the
    /// scripted model last unless the file placed it.
    pub fn model_configs(&self) -> Vec<ModelConfig> {
        self.models.clone()
    }

    /// Every agent (one `default` agent when none is configured).
    pub fn agents(&self) -> Vec<AgentConfig> {
        self.agents.clone()
    }

    /// Things that work but look unintended; print them at start.
    pub fn warnings(&self) -> &[ConfigWarning] {
        &self.warnings
    }
}

/// Why `hale init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The file exists and `force` was not given.
    #[error("{} already exists; pass --force to overwrite it", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Writing failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Writes [`TEMPLATE`] to `path` (`hale init`). An existing file is
/// replaced only with `force`.
///
/// # Errors
/// [`InitError::Exists`] without `force` when `path` exists;
/// [`InitError::Io`] when it cannot be written.
pub fn write_template(path: &Path, force: bool) -> Result<(), InitError> {
    use std::io::Write as _;
    let io_err = |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        // create_new: no window between a check and the write.
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            InitError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            io_err(source)
        }
    })?;
    file.write_all(TEMPLATE.as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

fn env_is_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Turns the raw file into a [`Config`], keeping the text to locate errors.
struct Resolver<'t> {
    text: &'t str,
    path: PathBuf,
    base: PathBuf,
    warnings: Vec<ConfigWarning>,
}

impl Resolver<'_> {
    fn at(&self, span: Range<usize>) -> Option<Location> {
        Some(Location::of_offset(self.text, span.start))
    }

    fn invalid(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            location: span.and_then(|s| self.at(s)),
            message: message.into(),
        }
    }

    fn warn(&mut self, span: Range<usize>, message: String) {
        let location = self.at(span);
        tracing::warn!(target: "hale::config", "{}", located(&self.path, location, &message));
        self.warnings.push(ConfigWarning { location, message });
    }

    fn path_of(&self, written: &str) -> PathBuf {
        let path = Path::new(written);
        if path.is_absolute() || self.base.as_os_str().is_empty() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    fn resolve(
        mut self,
        raw: RawConfig,
        has_env: &dyn Fn(&str) -> bool,
    ) -> Result<Config, ConfigError> {
        let data_dir = match &raw.data_dir {
            Some(dir) if dir.get_ref().trim().is_empty() => {
                return Err(self.invalid(Some(dir.span()), "data_dir must not be empty"));
            }
            Some(dir) => self.path_of(dir.get_ref()),
            None => self.path_of(DEFAULT_DATA_DIR),
        };
        let builtin = self.builtin(&raw, &data_dir)?;
        let session = self.session(&raw)?;
        let serve = self.serve(&raw)?;
        let retention = self.retention(&raw);
        let dispatch = self.dispatch(&raw)?;
        let (mcp, breakers) = self.mcp(&raw.mcp)?;
        let models = self.models(&raw.models, has_env)?;
        let agents = self.agents(&raw.agents, &models, &mcp, &session)?;
        let model_locations = raw
            .models
            .iter()
            .filter_map(|m| Some((m.name.get_ref().clone(), self.at(m.name.span())?)))
            .collect();
        Ok(Config {
            workspace_set: raw.tools.workspace.is_some(),
            model_locations,
            path: None,
            data_dir,
            builtin,
            session,
            serve,
            retention,
            dispatch,
            mcp,
            breakers,
            models,
            agents,
            warnings: self.warnings,
        })
    }

    fn builtin(&self, raw: &RawConfig, data_dir: &Path) -> Result<BuiltinConfig, ConfigError> {
        let tools = &raw.tools;
        let workspace = match &tools.workspace {
            Some(w) => self.path_of(w),
            None => data_dir.join(crate::data_dir::WORKSPACE_DIR),
        };
        let mut builtin = BuiltinConfig::new(workspace.clone());
        let exec = &mut builtin.exec;
        if let Some(t) = tools.exec_timeout {
            exec.default_timeout = t.value;
        }
        if let Some(t) = tools.exec_max_timeout {
            exec.max_timeout = t.value;
        }
        if let Some(cap) = tools.exec_max_output_bytes {
            exec.output_cap_bytes = cap;
        }
        exec.blocked = tools
            .exec_approval
            .iter()
            .map(|rule| BlockRule::new(rule.pattern.get_ref().clone(), rule.reason.clone()))
            .collect();
        // Exec::new is the check the tool itself makes at start: timeouts
        // and every pattern compiled. It spawns nothing.
        if let Err(error) = Exec::new(exec.clone()) {
            return Err(match error {
                ExecConfigError::InvalidBlockRule { index, error, .. } => self.invalid(
                    tools.exec_approval.get(index).map(|r| r.pattern.span()),
                    format!("tools.exec_approval: pattern is not a valid regular expression: {error}"),
                ),
                ExecConfigError::InvalidTimeouts { default, max } => self.invalid(
                    None,
                    format!(
                        "tools: exec_timeout ({}) and exec_max_timeout ({}) must be non-zero, with exec_timeout <= exec_max_timeout",
                        format_duration(default),
                        format_duration(max)
                    ),
                ),
            });
        }
        self.sandbox(&tools.sandbox, &mut builtin.exec.sandbox)?;
        if let Some(n) = tools.max_read_bytes {
            builtin.read_file.max_bytes = n;
        }
        if let Some(n) = tools.max_write_bytes {
            builtin.write_file.max_bytes = n;
        }
        if let Some(n) = tools.max_edit_bytes {
            builtin.edit_file.max_bytes = n;
        }
        if let Some(n) = tools.glob_max_results {
            builtin.glob.max_results = n;
        }
        if let Some(n) = tools.grep_max_matches {
            builtin.grep.max_matches = n;
        }
        if let Some(t) = tools.web_fetch_timeout {
            builtin.web_fetch.timeout = t.value;
        }
        if let Some(n) = tools.web_fetch_max_bytes {
            builtin.web_fetch.max_bytes = n;
        }
        let mut allow = Vec::with_capacity(tools.web_fetch_allow.len());
        for entry in &tools.web_fetch_allow {
            let parsed = entry.get_ref().parse::<AllowEntry>().map_err(|error| {
                self.invalid(
                    Some(entry.span()),
                    format!("tools.web_fetch_allow: {error}"),
                )
            })?;
            allow.push(parsed);
        }
        builtin.web_fetch.allow = AllowList::from(allow);
        Ok(builtin)
    }

    /// `[tools.sandbox]` onto the defaults. A limit of 0 means none.
    fn sandbox(&self, raw: &RawSandbox, sandbox: &mut SandboxConfig) -> Result<(), ConfigError> {
        if let Some(mode) = &raw.mode {
            sandbox.mode = match mode.get_ref().as_str() {
                "landlock" => SandboxMode::Landlock,
                "off" => SandboxMode::Off,
                other => {
                    return Err(self.invalid(
                        Some(mode.span()),
                        format!(
                            "tools.sandbox.mode must be \"landlock\" or \"off\", got \"{other}\""
                        ),
                    ));
                }
            };
        }
        sandbox.helper = match &raw.helper {
            Some(helper) => Some(self.path_of(helper)),
            None => crate::sandbox::default_helper(),
        };
        if let Some(user) = &raw.user {
            if user.get_ref().trim().is_empty() {
                return Err(self.invalid(Some(user.span()), "tools.sandbox.user must not be empty"));
            }
            sandbox.run_as = user.get_ref().clone();
        }
        if let Some(network) = &raw.network {
            sandbox.network = match network.get_ref() {
                RawNetwork::Mode(m) if m == "none" => NetworkPolicy::None,
                RawNetwork::Mode(m) if m == "all" => NetworkPolicy::All,
                RawNetwork::Mode(m) => {
                    return Err(self.invalid(
                        Some(network.span()),
                        format!(
                            "tools.sandbox.network must be \"none\", \"all\" or {{ tcp = [ports] }}, got \"{m}\""
                        ),
                    ));
                }
                RawNetwork::Tcp { tcp } => NetworkPolicy::Tcp(tcp.clone()),
            };
        }
        let limit = |value: Option<u64>, current: Option<u64>| match value {
            Some(0) => None,
            Some(n) => Some(n),
            None => current,
        };
        let limits = &mut sandbox.limits;
        limits.max_processes = limit(raw.max_processes, limits.max_processes);
        limits.max_file_size = limit(raw.max_file_size, limits.max_file_size);
        limits.cpu_time = limit(raw.cpu_time.map(|d| d.value.as_secs()), limits.cpu_time);
        limits.address_space = limit(raw.address_space, limits.address_space);
        sandbox.env = raw.env.clone();
        Ok(())
    }

    fn session(&self, raw: &RawConfig) -> Result<SessionSettings, ConfigError> {
        let mut session = SessionSettings::default();
        let s = &raw.session;
        if let Some(budget) = &s.iteration_budget {
            if *budget.get_ref() == 0 {
                return Err(self.invalid(
                    Some(budget.span()),
                    "session.iteration_budget must be at least 1",
                ));
            }
            session.iteration_budget = *budget.get_ref();
        }
        if let Some(n) = s.memory_prompt_bytes {
            session.memory_prompt_bytes = n;
        }
        if let Some(d) = s.journal_retention {
            session.journal_retention = d.value;
        }
        if let Some(on) = s.learn_from_incidents {
            session.learn_from_incidents = on;
        }
        // "0s" keeps for ever, as `[audit] retention` does.
        let keep = |d: Option<Dur>, current: Option<Duration>| match d {
            Some(d) => (!d.value.is_zero()).then_some(d.value),
            None => current,
        };
        session.message_retention = keep(s.message_retention, session.message_retention);
        session.approval_retention = keep(s.approval_retention, session.approval_retention);
        session.deleted_session_retention = keep(
            s.deleted_session_retention,
            session.deleted_session_retention,
        );
        if let Some(n) = &s.max_open_questions {
            if *n.get_ref() == 0 {
                return Err(self.invalid(
                    Some(n.span()),
                    "session.max_open_questions must be at least 1",
                ));
            }
            session.max_open_questions = *n.get_ref();
        }
        if let Some(n) = &s.context_budget_bytes {
            if *n.get_ref() < 1024 {
                return Err(self.invalid(
                    Some(n.span()),
                    "session.context_budget_bytes must be at least 1024",
                ));
            }
            session.context_budget_bytes = *n.get_ref();
        }
        if let Some(n) = &s.max_turns_per_message {
            if *n.get_ref() == 0 {
                return Err(self.invalid(
                    Some(n.span()),
                    "session.max_turns_per_message must be at least 1",
                ));
            }
            session.max_turns_per_message = *n.get_ref();
        }
        if let Some(d) = &s.stall_backoff {
            if d.get_ref().value.is_zero() {
                return Err(self.invalid(
                    Some(d.span()),
                    "session.stall_backoff must be greater than zero",
                ));
            }
            session.stall_backoff.min = d.get_ref().value;
        }
        if let Some(d) = &s.stall_max_backoff {
            session.stall_backoff.max = d.get_ref().value;
        }
        if session.stall_backoff.max < session.stall_backoff.min {
            return Err(self.invalid(
                s.stall_max_backoff.as_ref().map(Spanned::span),
                "session.stall_max_backoff must not be shorter than session.stall_backoff",
            ));
        }
        if let Some(d) = &s.restart_backoff {
            if d.get_ref().value.is_zero() {
                return Err(self.invalid(
                    Some(d.span()),
                    "session.restart_backoff must be greater than zero",
                ));
            }
            session.restart_backoff = d.get_ref().value;
        }
        if let Some(d) = &s.restart_max_backoff {
            session.restart_max_backoff = d.get_ref().value;
        }
        if session.restart_max_backoff < session.restart_backoff {
            return Err(self.invalid(
                s.restart_max_backoff
                    .as_ref()
                    .or(s.restart_backoff.as_ref())
                    .map(Spanned::span),
                "session.restart_max_backoff must not be shorter than session.restart_backoff",
            ));
        }
        Ok(session)
    }

    /// `[serve]` onto the defaults. A zero timeout or cap would refuse
    /// every client, so it is an error, not "no limit".
    fn serve(&self, raw: &RawConfig) -> Result<ServeSettings, ConfigError> {
        let mut serve = ServeSettings::default();
        let s = &raw.serve;
        for (key, value, slot) in [
            (
                "header_read_timeout",
                &s.header_read_timeout,
                &mut serve.header_read_timeout,
            ),
            ("idle_timeout", &s.idle_timeout, &mut serve.idle_timeout),
        ] {
            if let Some(d) = value {
                if d.get_ref().value.is_zero() {
                    return Err(
                        self.invalid(Some(d.span()), format!("serve.{key} must be more than 0s"))
                    );
                }
                *slot = d.get_ref().value;
            }
        }
        for (key, value, slot) in [
            (
                "max_connections",
                &s.max_connections,
                &mut serve.max_connections,
            ),
            (
                "max_event_streams",
                &s.max_event_streams,
                &mut serve.max_event_streams,
            ),
        ] {
            if let Some(n) = value {
                if *n.get_ref() == 0 {
                    return Err(
                        self.invalid(Some(n.span()), format!("serve.{key} must be at least 1"))
                    );
                }
                *slot = *n.get_ref();
            }
        }
        if let Some(d) = s.metrics_refresh {
            serve.metrics_refresh = d.value;
        }
        Ok(serve)
    }

    fn retention(&self, raw: &RawConfig) -> Retention {
        let mut retention = Retention::default();
        // "0s" keeps events of any age; max_events = 0 keeps any number.
        if let Some(d) = raw.audit.retention {
            retention.max_age = (!d.value.is_zero()).then_some(d.value);
        }
        if let Some(n) = raw.audit.max_events {
            retention.max_rows = (n != 0).then_some(n);
        }
        if let Some(n) = raw.audit.max_bytes {
            retention.max_bytes = (n != 0).then_some(n);
        }
        retention
    }

    /// `[dispatch]` onto the dispatcher's defaults.
    fn dispatch(&self, raw: &RawConfig) -> Result<DispatchConfig, ConfigError> {
        let mut dispatch = DispatchConfig::default();
        if let Some(t) = &raw.dispatch.attempt_timeout {
            if t.get_ref().value.is_zero() {
                return Err(self.invalid(
                    Some(t.span()),
                    "dispatch.attempt_timeout must be greater than zero",
                ));
            }
            dispatch.attempt_timeout = t.get_ref().value;
        }
        Ok(dispatch)
    }

    /// The servers, and the breaker settings of those that set one.
    fn mcp(&self, raw: &[RawMcp]) -> Result<McpSection, ConfigError> {
        let mut seen: BTreeMap<&str, Range<usize>> = BTreeMap::new();
        for server in raw {
            let name = server.name.get_ref();
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                return Err(self.invalid(
                    Some(server.name.span()),
                    format!("mcp name \"{name}\" must match [a-z0-9-]+ (lowercase letters, digits and `-`)"),
                ));
            }
            if let Some(first) = seen.get(name.as_str()) {
                let first = Location::of_offset(self.text, first.start);
                return Err(self.invalid(
                    Some(server.name.span()),
                    format!(
                        "mcp \"{name}\" is configured twice (first at line {})",
                        first.line
                    ),
                ));
            }
            seen.insert(name, server.name.span());
        }
        let names = || {
            raw.iter()
                .map(|s| s.name.get_ref().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut configs = Vec::with_capacity(raw.len());
        let mut breakers = BTreeMap::new();
        for server in raw {
            let name = server.name.get_ref().clone();
            let ctx = |message: String| format!("mcp \"{name}\": {message}");
            let transport = match (&server.command, &server.url) {
                (Some(_), Some(url)) => {
                    return Err(self.invalid(
                        Some(url.span()),
                        ctx("set either `command` (a stdio server) or `url` (streamable HTTP), not both".into()),
                    ));
                }
                (None, None) => {
                    return Err(self.invalid(
                        Some(server.name.span()),
                        ctx("set `command` (a stdio server) or `url` (streamable HTTP)".into()),
                    ));
                }
                (Some(command), None) => McpTransport::Stdio {
                    command: PathBuf::from(command.get_ref()),
                    args: server
                        .args
                        .as_ref()
                        .map(|a| a.get_ref().clone())
                        .unwrap_or_default(),
                    env: server
                        .env
                        .as_ref()
                        .map(|e| e.get_ref().clone())
                        .unwrap_or_default(),
                    cwd: server.cwd.as_ref().map(|c| self.path_of(c.get_ref())),
                },
                (None, Some(url)) => {
                    for (key, span) in [
                        ("args", server.args.as_ref().map(Spanned::span)),
                        ("env", server.env.as_ref().map(Spanned::span)),
                        (
                            "inherit_env",
                            server.inherit_env.as_ref().map(Spanned::span),
                        ),
                        ("cwd", server.cwd.as_ref().map(Spanned::span)),
                    ] {
                        if let Some(span) = span {
                            return Err(self.invalid(
                                Some(span),
                                ctx(format!(
                                    "`{key}` applies to stdio servers (`command`), not to `url`"
                                )),
                            ));
                        }
                    }
                    McpTransport::Http {
                        url: url.get_ref().clone(),
                    }
                }
            };
            let mut config = McpServerConfig::new(name.clone(), transport);
            config.inherit_env = server
                .inherit_env
                .as_ref()
                .map(|e| e.get_ref().clone())
                .unwrap_or_default();
            if let Some(t) = server.timeout {
                config.request_timeout = t.value;
            }
            if let Some(t) = server.connect_timeout {
                config.connect_timeout = t.value;
            }
            config.tool_timeouts = server
                .tool_timeouts
                .iter()
                .map(|(tool, d)| (tool.clone(), d.value))
                .collect();
            config.idempotent = server.idempotent.clone();
            config.disabled = !server.enabled.unwrap_or(true);
            if let Some(n) = &server.max_result_bytes {
                if *n.get_ref() == 0 {
                    return Err(self.invalid(
                        Some(n.span()),
                        ctx("max_result_bytes must be at least 1".into()),
                    ));
                }
                config.max_result_bytes = *n.get_ref();
            }
            for backup in &server.backups {
                let b = backup.get_ref();
                if b == &name {
                    return Err(self.invalid(
                        Some(backup.span()),
                        ctx("a server cannot be its own backup".into()),
                    ));
                }
                if !seen.contains_key(b.as_str()) {
                    return Err(self.invalid(
                        Some(backup.span()),
                        ctx(format!(
                            "backup \"{b}\" is not a configured [[mcp]] server (configured: {})",
                            names()
                        )),
                    ));
                }
            }
            config.fallbacks = server.backups.iter().map(|b| b.get_ref().clone()).collect();
            if let Some(restart) = &server.restart {
                if let Some(d) = restart.min_backoff {
                    config.restart_min = d.value;
                }
                if let Some(d) = restart.max_backoff {
                    config.restart_max = d.value;
                }
                if let Some(j) = &restart.jitter {
                    let jitter = *j.get_ref();
                    if !(0.0..=1.0).contains(&jitter) {
                        return Err(self.invalid(
                            Some(j.span()),
                            ctx(format!("restart.jitter {jitter} is not between 0 and 1")),
                        ));
                    }
                    config.restart_jitter = jitter;
                }
                if let Some(n) = &restart.max_restarts {
                    if *n.get_ref() == 0 {
                        return Err(self.invalid(
                            Some(n.span()),
                            ctx("restart.max_restarts must be at least 1".into()),
                        ));
                    }
                    config.park_after = *n.get_ref();
                }
                if let Some(d) = restart.period {
                    config.park_window = d.value;
                }
                if let Some(d) = restart.probe_after {
                    config.probe_after = d.value;
                }
            }
            if let Some(breaker) = &server.breaker {
                let mut settings = BreakerSettings::default();
                if let Some(n) = &breaker.failures {
                    if *n.get_ref() == 0 {
                        return Err(self.invalid(
                            Some(n.span()),
                            ctx("breaker.failures must be at least 1".into()),
                        ));
                    }
                    settings.failures = *n.get_ref();
                }
                if let Some(d) = &breaker.cool_down {
                    let d = *d.get_ref();
                    if d.value.is_zero() {
                        return Err(self.invalid(
                            breaker.cool_down.as_ref().map(Spanned::span),
                            ctx("breaker.cool_down must be greater than zero".into()),
                        ));
                    }
                    settings.cool_down = d.value;
                }
                breakers.insert(name.clone(), settings);
            }
            // The MCP layer's own check, so nothing it would refuse gets
            // past the config.
            if let Err(error) = config.validate() {
                let field = match error.field {
                    "request_timeout" => "timeout",
                    "restart_min" => "restart.min_backoff",
                    "restart_max" => "restart.max_backoff",
                    "restart_jitter" => "restart.jitter",
                    "park_after" => "restart.max_restarts",
                    "park_window" => "restart.period",
                    "probe_after" => "restart.probe_after",
                    "fallbacks" => "backups",
                    other => other,
                };
                let span = match error.field {
                    "command" => server.command.as_ref().map(Spanned::span),
                    "url" => server.url.as_ref().map(Spanned::span),
                    _ => None,
                }
                .unwrap_or_else(|| server.name.span());
                let problem = error.problem.replace("restart_min", "restart.min_backoff");
                return Err(self.invalid(Some(span), ctx(format!("{field}: {problem}"))));
            }
            configs.push(config);
        }
        Ok((configs, breakers))
    }

    fn models(
        &mut self,
        raw: &[RawModel],
        has_env: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<ModelConfig>, ConfigError> {
        let mut models: Vec<ModelConfig> = Vec::new();
        let mut seen: BTreeMap<String, Range<usize>> = BTreeMap::new();
        for entry in raw {
            let name = entry.name.get_ref().clone();
            if !hale_actors::model::valid_model_name(&name) {
                return Err(self.invalid(
                    Some(entry.name.span()),
                    format!("model name \"{name}\" must use only a-z, 0-9, `.`, `_` and `-`, starting with a letter or digit"),
                ));
            }
            if let Some(first) = seen.get(&name) {
                let first = Location::of_offset(self.text, first.start);
                return Err(self.invalid(
                    Some(entry.name.span()),
                    format!(
                        "model \"{name}\" is configured twice (first at line {})",
                        first.line
                    ),
                ));
            }
            seen.insert(name.clone(), entry.name.span());
            let provider = *entry.provider.get_ref();
            let ctx = |message: &str| format!("model \"{name}\": {message}");
            if name == SCRIPTED_MODEL && provider != Provider::Scripted {
                return Err(self.invalid(
                    Some(entry.provider.span()),
                    ctx("the name `scripted` is reserved for the scripted model (provider = \"scripted\")"),
                ));
            }
            let mut config = match provider {
                Provider::Scripted => {
                    if let Some(url) = &entry.base_url {
                        return Err(self.invalid(
                            Some(url.span()),
                            ctx("the scripted model takes no base_url"),
                        ));
                    }
                    ModelConfig::scripted(name.clone())
                }
                Provider::Openai | Provider::Anthropic => {
                    let Some(model) = entry.model.clone() else {
                        return Err(self.invalid(
                            Some(entry.name.span()),
                            ctx("`model` (the provider's model id, such as gpt-4o-mini or claude-sonnet-4-5) is required"),
                        ));
                    };
                    let (base_url, api_key_env) = match &entry.base_url {
                        Some(url) => {
                            let u = url.get_ref().trim_end_matches('/').to_owned();
                            if !(u.starts_with("http://") || u.starts_with("https://")) {
                                return Err(self.invalid(
                                    Some(url.span()),
                                    ctx(&format!(
                                        "base_url `{u}` is not an http:// or https:// URL"
                                    )),
                                ));
                            }
                            if provider == Provider::Anthropic && u.ends_with("/v1") {
                                self.warn(
                                    url.span(),
                                    ctx(&format!(
                                        "an Anthropic base_url does not include /v1 (hale adds /v1/messages); `{u}` will call {u}/v1/messages"
                                    )),
                                );
                            }
                            // A custom endpoint gets no key unless it
                            // names one: a local server must not be sent
                            // the real provider's key by default.
                            (u, entry.api_key_env.clone())
                        }
                        None => {
                            let (url, env) = provider_defaults(provider);
                            (
                                url.to_owned(),
                                Some(entry.api_key_env.clone().unwrap_or_else(|| env.to_owned())),
                            )
                        }
                    };
                    ModelConfig::remote(name.clone(), provider, base_url, model, api_key_env)
                }
            };
            if let Some(t) = &entry.timeout {
                if t.get_ref().value.is_zero() {
                    return Err(
                        self.invalid(Some(t.span()), ctx("timeout must be greater than zero"))
                    );
                }
                config.timeout = t.get_ref().value;
            }
            if let Some(n) = &entry.max_tokens {
                if *n.get_ref() == 0 {
                    return Err(self.invalid(Some(n.span()), ctx("max_tokens must be at least 1")));
                }
                config.max_tokens = *n.get_ref();
            }
            if let Some(n) = &entry.max_reply_bytes {
                if *n.get_ref() == 0 {
                    return Err(
                        self.invalid(Some(n.span()), ctx("max_reply_bytes must be at least 1"))
                    );
                }
                config.max_reply_bytes = *n.get_ref();
            }
            if let Some(stream) = entry.stream {
                config.stream = stream;
            }
            if let Some(t) = &entry.stream_idle_timeout {
                if t.get_ref().value.is_zero() {
                    return Err(self.invalid(
                        Some(t.span()),
                        ctx("stream_idle_timeout must be greater than zero"),
                    ));
                }
                config.stream_idle_timeout = t.get_ref().value;
            }
            models.push(config);
        }
        if raw.is_empty() {
            for provider in [Provider::Openai, Provider::Anthropic] {
                let (url, env) = provider_defaults(provider);
                if has_env(env) {
                    let (name, model) = match provider {
                        Provider::Openai => ("openai", "gpt-4o-mini"),
                        _ => ("anthropic", "claude-sonnet-4-5"),
                    };
                    models.push(ModelConfig::remote(
                        name,
                        provider,
                        url,
                        model,
                        Some(env.to_owned()),
                    ));
                }
            }
        }
        if !models.iter().any(|m| m.name == SCRIPTED_MODEL) {
            models.push(ModelConfig::scripted(SCRIPTED_MODEL));
        }
        Ok(models)
    }

    fn agents(
        &self,
        raw: &[RawAgent],
        models: &[ModelConfig],
        servers: &[McpServerConfig],
        session: &SessionSettings,
    ) -> Result<Vec<AgentConfig>, ConfigError> {
        let all_models: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
        let all_servers: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
        let all_tools = || {
            BUILTIN_TOOLS
                .iter()
                .map(|t| (*t).to_owned())
                .collect::<Vec<_>>()
        };
        if raw.is_empty() {
            return Ok(vec![AgentConfig {
                name: DEFAULT_AGENT.to_owned(),
                models: all_models,
                tools: all_tools(),
                mcp: all_servers,
                budget: session.iteration_budget,
                system_prompt: None,
                token_budget: None,
            }]);
        }
        let server_set: BTreeSet<&str> = all_servers.iter().map(String::as_str).collect();
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut agents = Vec::with_capacity(raw.len());
        for entry in raw {
            let name = entry.name.get_ref();
            let ctx = |message: String| format!("agent \"{name}\": {message}");
            if !valid_name(name) {
                return Err(self.invalid(
                    Some(entry.name.span()),
                    format!("agent name \"{name}\" must be non-empty and use only A-Z, a-z, 0-9, `-`, `_` and `.`"),
                ));
            }
            if let Some(line) = seen.get(name.as_str()) {
                return Err(self.invalid(
                    Some(entry.name.span()),
                    format!("agent \"{name}\" is configured twice (first at line {line})"),
                ));
            }
            seen.insert(
                name,
                Location::of_offset(self.text, entry.name.span().start).line,
            );
            let agent_models = match &entry.models {
                None => all_models.clone(),
                Some(list) if list.is_empty() => {
                    return Err(self.invalid(
                        Some(entry.name.span()),
                        ctx("`models` must name at least one model".into()),
                    ));
                }
                Some(list) => {
                    for m in list {
                        if !all_models.contains(m.get_ref()) {
                            return Err(self.invalid(
                                Some(m.span()),
                                ctx(format!(
                                    "model \"{}\" is not a configured model (configured: {})",
                                    m.get_ref(),
                                    all_models.join(", ")
                                )),
                            ));
                        }
                    }
                    dedup(list.iter().map(|m| m.get_ref().clone()))
                }
            };
            let mut mcp = match &entry.mcp {
                None => all_servers.clone(),
                Some(list) => {
                    for s in list {
                        if !server_set.contains(s.get_ref().as_str()) {
                            return Err(self.invalid(
                                Some(s.span()),
                                ctx(format!(
                                    "mcp \"{}\" is not a configured [[mcp]] server (configured: {})",
                                    s.get_ref(),
                                    none_if_empty(&all_servers)
                                )),
                            ));
                        }
                    }
                    list.iter().map(|s| s.get_ref().clone()).collect()
                }
            };
            let mut tools = Vec::new();
            match &entry.tools {
                None => tools = all_tools(),
                Some(list) => {
                    for t in list {
                        let tool = t.get_ref();
                        if BUILTIN_TOOLS.contains(&tool.as_str()) {
                            tools.push(tool.clone());
                        } else if server_set.contains(tool.as_str()) {
                            // A bare server name: all of its tools.
                            mcp.push(tool.clone());
                        } else if let Some((server, remote)) = tool.split_once("__")
                            && !remote.is_empty()
                        {
                            if !server_set.contains(server) {
                                return Err(self.invalid(
                                    Some(t.span()),
                                    ctx(format!(
                                        "tool \"{tool}\": \"{server}\" is not a configured [[mcp]] server (configured: {})",
                                        none_if_empty(&all_servers)
                                    )),
                                ));
                            }
                            tools.push(tool.clone());
                        } else {
                            return Err(self.invalid(
                                Some(t.span()),
                                ctx(format!(
                                    "tool \"{tool}\" is neither a built-in tool ({}) nor an MCP server or `server__tool` (servers: {})",
                                    BUILTIN_TOOLS.join(", "),
                                    none_if_empty(&all_servers)
                                )),
                            ));
                        }
                    }
                }
            }
            let budget = match &entry.budget {
                Some(b) if *b.get_ref() == 0 => {
                    return Err(
                        self.invalid(Some(b.span()), ctx("budget must be at least 1".into()))
                    );
                }
                Some(b) => *b.get_ref(),
                None => session.iteration_budget,
            };
            let token_budget = match &entry.token_budget {
                Some(b) if *b.get_ref() == 0 => {
                    return Err(self.invalid(
                        Some(b.span()),
                        ctx("token_budget must be at least 1 (omit it for no cap)".into()),
                    ));
                }
                Some(b) => Some(*b.get_ref()),
                None => None,
            };
            agents.push(AgentConfig {
                name: name.clone(),
                models: agent_models,
                tools: dedup(tools),
                mcp: dedup(mcp),
                budget,
                system_prompt: entry.system_prompt.clone(),
                token_budget,
            });
        }
        Ok(agents)
    }
}

/// The resolved `[[mcp]]` tables: the servers and their breakers.
type McpSection = (Vec<McpServerConfig>, BTreeMap<String, BreakerSettings>);

/// The default base URL and key variable of a remote provider.
fn provider_defaults(provider: Provider) -> (&'static str, &'static str) {
    match provider {
        Provider::Anthropic => ("https://api.anthropic.com", "ANTHROPIC_API_KEY"),
        _ => ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn none_if_empty(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// Keeps the first of each name, in order.
fn dedup(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    names
        .into_iter()
        .filter(|n| seen.insert(n.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn locations_are_one_based_lines_and_character_columns() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(
            Location::of_offset(text, 0),
            Location { line: 1, column: 1 }
        );
        assert_eq!(
            Location::of_offset(text, 6),
            Location { line: 2, column: 1 }
        );
        // After the two-byte `é`.
        assert_eq!(
            Location::of_offset(text, 9),
            Location { line: 2, column: 3 }
        );
        assert_eq!(Location::of_offset(text, 999).line, 3);
    }
}
