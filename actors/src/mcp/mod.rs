//! MCP servers as supervised actors, their tools as hale tools, and the
//! `manage_mcp` operations.
//!
//! This module owns one client per configured server (in [`server`]) and
//! is the only part of hale that imports rmcp ([`convert`] is the edge
//! where rmcp's types become outcomes). [`McpServers`] builds the
//! supervisor spec (one child per server, restarted with backoff and
//! parked when it keeps failing), hands out [`McpTool`]s that find the
//! current incarnation of their server through its address, routes
//! `server__tool` names with the configured fallback servers
//! ([`McpRouter`]), and answers the operator's list, enable, disable and
//! restart.
//!
//! # Invariants
//! - Only the server actor touches the connection; tools and operators go
//!   through its mailbox or its shared status.
//! - A call to a disabled server, or to one that is not running, is
//!   answered without reaching any server and marked `undelivered`, so
//!   recovery may route it elsewhere even for a non-idempotent tool.

pub mod config;
pub mod convert;
pub mod manage;
pub mod server;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hale_supervision::{
    Backoff, CallError, CallPolicy, ChildId, ChildSpec, Intensity, Park, Strategy, SupervisedCall,
    SupervisorError, SupervisorRef, SupervisorSpec, Taken,
};
use serde_json::{Value, json};

pub use config::{
    DEFAULT_MAX_RESULT_BYTES, MCP_BASE_ENV, McpConfigError, McpServerConfig, McpTransport,
};
pub use convert::RemoteTool;
pub use manage::ManageMcp;
pub use server::{
    McpMsg, McpServerActor, McpState, PROTOCOL_VERSION, STDERR_LINE_MAX_BYTES, ServerStatus,
};

use crate::catalog::ErrorCode;
use crate::dispatch::{Endpoints, Router, Target, state_name};
use crate::event::EventSink;
use crate::outcome::ToolOutcome;
use crate::tool::{BoxFuture, Tool, ToolContext, ToolSpec};
use server::ServerShared;

/// The separator between server and tool in the names hale gives MCP
/// tools: `weather__forecast`.
pub const TOOL_SEPARATOR: &str = "__";

/// The longest a call waits for a restarting server to come back before
/// it is answered `MCP_SERVER_UNREACHABLE`.
pub const DEFAULT_READY_WAIT: Duration = Duration::from_secs(2);

/// Why a management operation failed.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// No server has this name.
    #[error("no MCP server named `{name}` (configured: {known})")]
    UnknownServer {
        /// The name asked for.
        name: String,
        /// The configured names, comma-separated.
        known: String,
    },
    /// The MCP layer's supervisor is not running (or not attached).
    #[error("the MCP supervisor is not running")]
    NotStarted,
    /// The supervisor refused or failed.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// Two servers share a name.
    #[error("two MCP servers are named `{0}`")]
    Duplicate(String),
    /// A fallback names a server that is not configured.
    #[error("MCP server `{server}`: fallback `{fallback}` is not a configured server")]
    UnknownFallback {
        /// The server whose config is wrong.
        server: String,
        /// The missing fallback.
        fallback: String,
    },
    /// A config is invalid.
    #[error(transparent)]
    Config(#[from] McpConfigError),
}

/// One row of `manage_mcp list`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct McpServerReport {
    /// The server's name.
    pub name: String,
    /// `connecting`, `ready`, `down` or `disabled`.
    pub state: &'static str,
    /// Its breaker: `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    /// Restarts by its supervisor.
    pub restarts: u64,
    /// Why it last failed.
    pub last_error: Option<String>,
    /// Its tool names.
    pub tools: Vec<String>,
    /// Its process id (stdio servers).
    pub pid: Option<u32>,
}

/// Every configured MCP server.
pub struct McpServers {
    servers: BTreeMap<String, Arc<ServerShared>>,
    sink: Arc<dyn EventSink>,
    supervisor: RwLock<Option<SupervisorRef>>,
    ready_wait: Duration,
}

impl std::fmt::Debug for McpServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServers")
            .field("servers", &self.servers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl McpServers {
    /// Validates `configs` (each one, unique names, fallbacks that exist).
    ///
    /// # Errors
    /// [`McpError::Config`], [`McpError::Duplicate`] or
    /// [`McpError::UnknownFallback`].
    pub fn new(
        configs: Vec<McpServerConfig>,
        sink: Arc<dyn EventSink>,
    ) -> Result<Arc<Self>, McpError> {
        let mut servers = BTreeMap::new();
        for config in &configs {
            config.validate()?;
            if servers.contains_key(&config.name) {
                return Err(McpError::Duplicate(config.name.clone()));
            }
            servers.insert(
                config.name.clone(),
                Arc::new(ServerShared::new(config.clone(), Arc::clone(&sink))),
            );
        }
        for config in &configs {
            if let Some(missing) = config.fallbacks.iter().find(|f| !servers.contains_key(*f)) {
                return Err(McpError::UnknownFallback {
                    server: config.name.clone(),
                    fallback: missing.clone(),
                });
            }
        }
        Ok(Arc::new(Self {
            servers,
            sink,
            supervisor: RwLock::new(None),
            ready_wait: DEFAULT_READY_WAIT,
        }))
    }

    /// The supervisor spec: one_for_one, one child per enabled server,
    /// each restarted with its backoff and parked when it keeps failing;
    /// every supervisor event goes to the event sink.
    /// The supervisor's own intensity is generous, because a crash-looping
    /// server is parked by its own limit long before it could take its
    /// siblings down.
    pub fn supervisor_spec(&self, name: &str) -> SupervisorSpec {
        let mut spec = SupervisorSpec::new(name)
            .strategy(Strategy::OneForOne)
            .intensity(1000, Duration::from_secs(60))
            .observer(crate::supervision_events::observer(Arc::clone(&self.sink)));
        for shared in self.servers.values() {
            if shared.is_enabled() {
                spec = spec.child(child_spec(shared));
            }
        }
        spec
    }

    /// Starts the supervisor as a top-level tree and attaches it.
    ///
    /// # Errors
    /// When the supervisor cannot start.
    pub async fn start(&self, name: &str) -> Result<SupervisorRef, McpError> {
        let (supervisor, _task) = SupervisorRef::start(self.supervisor_spec(name)).await?;
        self.attach(supervisor.clone());
        Ok(supervisor)
    }

    /// Tells the manager which supervisor runs the servers (when the spec
    /// was started as part of a bigger tree).
    pub fn attach(&self, supervisor: SupervisorRef) {
        if let Ok(mut slot) = self.supervisor.write() {
            *slot = Some(supervisor);
        }
    }

    fn supervisor(&self) -> Result<SupervisorRef, McpError> {
        self.supervisor
            .read()
            .ok()
            .and_then(|s| s.clone())
            .ok_or(McpError::NotStarted)
    }

    fn shared(&self, name: &str) -> Result<&Arc<ServerShared>, McpError> {
        self.servers
            .get(name)
            .ok_or_else(|| McpError::UnknownServer {
                name: name.to_owned(),
                known: self.servers.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// The configured server names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.servers.keys().cloned().collect()
    }

    /// The status of `name`.
    ///
    /// # Errors
    /// [`McpError::UnknownServer`].
    pub fn status(&self, name: &str) -> Result<ServerStatus, McpError> {
        Ok(self.shared(name)?.status())
    }

    /// Waits until `name` is ready (connected, tools listed), up to `wait`;
    /// returns whether it is.
    ///
    /// # Errors
    /// [`McpError::UnknownServer`].
    pub async fn wait_ready(&self, name: &str, wait: Duration) -> Result<bool, McpError> {
        let shared = self.shared(name)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if shared.status().state == McpState::Ready {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A tool of `server` as a hale tool named `server__tool`, with the
    /// idempotency the config or the server's annotations give it (false
    /// when neither knows).
    ///
    /// # Errors
    /// [`McpError::UnknownServer`].
    pub fn tool(&self, server: &str, tool: &str) -> Result<McpTool, McpError> {
        Ok(self.tool_for(self.shared(server)?, tool, None))
    }

    fn tool_for(&self, shared: &Arc<ServerShared>, tool: &str, like: Option<&str>) -> McpTool {
        let remote = shared.remote_tool(tool);
        let remote = remote.as_ref();
        // A fallback server may not have listed its tools yet; then the
        // primary's description stands in for it.
        let idempotent = shared
            .config
            .idempotent
            .get(tool)
            .copied()
            .or_else(|| remote.map(RemoteTool::idempotent))
            .unwrap_or(false);
        let description = remote.map(|t| t.description.clone()).unwrap_or_default();
        let schema = remote
            .map(|t| t.schema.clone())
            .unwrap_or_else(|| json!({ "type": "object" }));
        let name = format!(
            "{}{TOOL_SEPARATOR}{tool}",
            like.unwrap_or(&shared.config.name)
        );
        McpTool {
            spec: ToolSpec::new(name, description, schema)
                .with_idempotent(idempotent)
                .with_endpoint(shared.config.name.clone()),
            shared: Arc::clone(shared),
            remote: tool.to_owned(),
            ready_wait: self.ready_wait,
        }
    }

    /// Every tool of every server as `server__tool` names, sorted.
    pub fn tool_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .servers
            .iter()
            .flat_map(|(server, shared)| {
                shared
                    .status()
                    .tools
                    .into_iter()
                    .map(move |t| format!("{server}{TOOL_SEPARATOR}{}", t.name))
            })
            .collect();
        names.sort();
        names
    }

    /// `manage_mcp list`: every server with its state, breaker, restarts,
    /// last error and tools.
    pub async fn list(&self, endpoints: &Endpoints) -> Vec<McpServerReport> {
        let restarts: BTreeMap<String, u64> = match self.supervisor() {
            Ok(sup) => sup
                .which_children()
                .await
                .map(|children| {
                    children
                        .into_iter()
                        .map(|c| (c.id.as_str().to_owned(), c.restarts))
                        .collect()
                })
                .unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        self.servers
            .iter()
            .map(|(name, shared)| {
                let status = shared.status();
                McpServerReport {
                    name: name.clone(),
                    state: status.state.as_str(),
                    breaker: endpoints
                        .find(name)
                        .map(|h| state_name(h.breaker_state()))
                        .unwrap_or("closed"),
                    restarts: restarts.get(name).copied().unwrap_or(0),
                    last_error: status.last_error.clone(),
                    tools: status.tools.iter().map(|t| t.name.clone()).collect(),
                    pid: status.pid,
                }
            })
            .collect()
    }

    /// `manage_mcp disable`: stops the server and makes its calls fail fast
    /// until it is enabled again.
    ///
    /// # Errors
    /// [`McpError::UnknownServer`], [`McpError::NotStarted`] or a
    /// supervisor error.
    pub async fn disable(&self, name: &str) -> Result<(), McpError> {
        let shared = self.shared(name)?;
        let supervisor = self.supervisor()?;
        shared.set_enabled(false);
        match supervisor.terminate_child(&ChildId::new(name)).await {
            Ok(()) | Err(SupervisorError::UnknownChild(_)) => {}
            Err(e) => return Err(e.into()),
        }
        shared.update(|s| s.state = McpState::Disabled);
        Ok(())
    }

    /// `manage_mcp enable`: starts a disabled server again.
    ///
    /// # Errors
    /// As [`McpServers::disable`].
    pub async fn enable(&self, name: &str) -> Result<(), McpError> {
        let shared = self.shared(name)?;
        let supervisor = self.supervisor()?;
        if shared.is_enabled() {
            return Ok(());
        }
        shared.set_enabled(true);
        let id = ChildId::new(name);
        let started = match supervisor.restart_child(&id).await {
            Ok(_) => Ok(()),
            // Configured as disabled, so never added: add it now.
            Err(SupervisorError::UnknownChild(_)) => {
                supervisor.start_child(child_spec(shared)).await.map(|_| ())
            }
            Err(e) => Err(e),
        };
        if started.is_err() {
            shared.set_enabled(false);
        }
        Ok(started?)
    }

    /// `manage_mcp restart`: a fresh process and handshake now.
    ///
    /// # Errors
    /// As [`McpServers::disable`].
    pub async fn restart(&self, name: &str) -> Result<(), McpError> {
        let shared = self.shared(name)?;
        if !shared.is_enabled() {
            return self.enable(name).await;
        }
        // Stop-then-start, with the backoff and park history cleared.
        self.supervisor()?
            .restart_child(&ChildId::new(name))
            .await?;
        Ok(())
    }
}

fn child_spec(shared: &Arc<ServerShared>) -> ChildSpec {
    let config = &shared.config;
    let factory_shared = Arc::clone(shared);
    let spec = ChildSpec::worker(config.name.as_str(), move || {
        (McpServerActor, Arc::clone(&factory_shared))
    })
    .park(Park {
        limit: Intensity::new(config.park_after, config.park_window),
        probe_after: config.probe_after,
    });
    // `validate` proved min > 0, max >= min and jitter in 0..=1, so this
    // always builds.
    match Backoff::new(
        config.restart_min,
        config.restart_max,
        config.restart_jitter,
    ) {
        Ok(backoff) => spec.backoff(backoff),
        Err(_) => spec,
    }
}

/// A tool of an MCP server, callable like any hale tool. Holds no actor
/// ref: each call finds the server's current incarnation.
#[derive(Clone)]
pub struct McpTool {
    spec: ToolSpec,
    shared: Arc<ServerShared>,
    remote: String,
    ready_wait: Duration,
}

impl std::fmt::Debug for McpTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpTool")
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

impl McpTool {
    async fn forward(&self, args: Value, ctx: &ToolContext) -> ToolOutcome {
        let shared = &self.shared;
        let server = &shared.config.name;
        if !shared.is_enabled() {
            let mut outcome = server::unreachable(shared, "it is disabled by an operator");
            // Retrying cannot help until someone enables it; a fallback can.
            outcome.retryable = false;
            return outcome.with_data(json!({ "server": server, "disabled": true }));
        }
        let args = match args {
            Value::Object(map) => Some(map),
            Value::Null => None,
            other => {
                return ToolOutcome::from_code(
                    ErrorCode::InvalidInput,
                    format!("arguments must be a JSON object, not {other}"),
                );
            }
        };
        let timeout = shared.config.timeout_for(&self.remote);
        // A call the actor never took from its mailbox (it died first)
        // reached nothing and is sent again to the replacement. The actor
        // may queue the call while it connects: allow that on top of the
        // call's own timeout.
        let policy = CallPolicy::new(self.ready_wait)
            .reply_deadline(Some(timeout + shared.config.connect_timeout));
        // The flag of the last send: whether the request left the actor.
        let mut sent: Option<Taken> = None;
        let answer = SupervisedCall::new(&shared.address, policy)
            .send(|taken, reply| McpMsg::Call {
                tool: self.remote.clone(),
                args: args.clone(),
                timeout,
                taken,
                sent: sent.insert(Taken::new()).clone(),
                cancel: ctx.cancel.clone(),
                reply,
            })
            .await;
        match answer {
            Ok(outcome) => outcome,
            Err(CallError::NotRunning { sends, .. }) if sends >= policy.max_sends => {
                server::unreachable(shared, "it is restarting")
            }
            Err(CallError::NotRunning { .. }) => {
                let why = match shared.status().last_error {
                    Some(e) => format!("not running (last error: {e})"),
                    None => "not running".to_owned(),
                };
                server::unreachable(shared, &why)
            }
            Err(CallError::Interrupted { .. }) if !sent.as_ref().is_some_and(Taken::is_taken) => {
                server::unreachable(
                    shared,
                    "it went down while connecting, before the call was sent",
                )
            }
            Err(CallError::Interrupted { .. }) => ToolOutcome::from_code(
                ErrorCode::TransportClosed,
                format!(
                    "MCP server `{server}` went down while `{}` was in flight",
                    self.remote
                ),
            )
            .with_data(json!({ "server": server, "tool": self.remote })),
            Err(CallError::Timeout { after }) => ToolOutcome::timeout(format!(
                "`{}` on MCP server `{server}` got no answer within {} ms",
                self.remote,
                after.as_millis()
            ))
            .with_data(json!({ "server": server, "tool": self.remote })),
        }
    }
}

impl Tool for McpTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        Box::pin(self.forward(args, ctx))
    }
}

/// Routes `server__tool` names to the server and then to its configured
/// fallback servers, same tool name.
#[derive(Debug, Clone)]
pub struct McpRouter {
    servers: Arc<McpServers>,
}

impl McpRouter {
    /// A router over `servers`.
    pub fn new(servers: Arc<McpServers>) -> Self {
        Self { servers }
    }
}

impl Router for McpRouter {
    fn route(&self, name: &str) -> Option<Vec<Target>> {
        let (server, tool) = name.split_once(TOOL_SEPARATOR)?;
        let primary = self.servers.servers.get(server)?;
        let mut targets = vec![Target {
            endpoint: server.to_owned(),
            tool: Arc::new(self.servers.tool_for(primary, tool, None)),
        }];
        for fallback in &primary.config.fallbacks {
            if let Some(shared) = self.servers.servers.get(fallback) {
                targets.push(Target {
                    endpoint: fallback.clone(),
                    tool: Arc::new(self.servers.tool_for(shared, tool, None)),
                });
            }
        }
        Some(targets)
    }

    fn names(&self) -> Vec<String> {
        self.servers.tool_names()
    }
}
