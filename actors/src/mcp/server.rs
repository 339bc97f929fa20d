//! One actor per MCP server: it owns the connection (and, for stdio, the
//! child process) and fails when the connection dies, so that its
//! supervisor restarts it with backoff: a new process, a new handshake,
//! the tool list fetched again.
//!
//! Nothing slow runs in a handler. `pre_start` only publishes the actor's
//! address and spawns the connect task; the connect result, a dead
//! transport and every call arrive as messages; calls run as tasks in a
//! `JoinSet` the state owns. Dropping the state (a kill skips `post_stop`,
//! but not that) aborts those tasks, which drops the rmcp service, which
//! kills the child's whole process group.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use hale_supervision::{Address, Taken};
use process_wrap::tokio::{CommandWrap, KillOnDrop, ProcessGroup};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, JsonObject,
    ProtocolVersion,
};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{Peer, RoleClient, ServiceExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::ChildStderr;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::catalog::ErrorCode;
use crate::event::{Event, EventKind, EventSink, Level};
use crate::mcp::config::{McpServerConfig, McpTransport};
use crate::mcp::convert::{self, RemoteTool};
use crate::outcome::{Hint, HintKind, ToolOutcome};
use crate::process::ProcessRecord;
use crate::tool::closest_first;

/// The protocol version hale asks for. rmcp's default is newer than many
/// deployed servers accept; 2025-06-18 is the newest the TypeScript and
/// Python SDK servers of late 2026 all speak.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion::V_2025_06_18;

/// stderr lines kept per server for diagnosis.
const STDERR_TAIL_LINES: usize = 20;

/// How many times the streamable HTTP transport re-opens its event
/// stream before giving up. rmcp retries forever by default, which turns a
/// dead server into a hang.
const HTTP_SSE_RETRIES: usize = 3;

/// Where a server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpState {
    /// Spawning, handshaking, listing tools.
    Connecting,
    /// Serving calls.
    Ready,
    /// Not running: its last connection failed or died, and its supervisor
    /// will restart it (or has parked it).
    Down,
    /// Stopped by an operator; calls fail fast until it is enabled.
    Disabled,
}

impl McpState {
    /// The state as spelled in status output.
    pub fn as_str(self) -> &'static str {
        match self {
            McpState::Connecting => "connecting",
            McpState::Ready => "ready",
            McpState::Down => "down",
            McpState::Disabled => "disabled",
        }
    }
}

/// What is known about a server now, across its restarts.
#[derive(Debug, Clone)]
pub struct ServerStatus {
    /// Its state.
    pub state: McpState,
    /// The tools it listed at its last handshake.
    pub tools: Vec<RemoteTool>,
    /// Why it last failed, if it has.
    pub last_error: Option<String>,
    /// The process id of its stdio child (also its process group id).
    pub pid: Option<u32>,
    /// Successful connections so far.
    pub connects: u64,
    /// When the current connection was made.
    pub connected_at: Option<SystemTime>,
    /// The last lines it wrote to stderr.
    pub stderr_tail: VecDeque<String>,
}

/// A server's state shared by its actor incarnations, its tools and the
/// management operations.
pub struct ServerShared {
    pub(crate) config: McpServerConfig,
    pub(crate) address: Address<McpMsg>,
    pub(crate) enabled: AtomicBool,
    status: Mutex<ServerStatus>,
    sink: Arc<dyn EventSink>,
}

impl std::fmt::Debug for ServerShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerShared")
            .field("name", &self.config.name)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl ServerShared {
    pub(crate) fn new(config: McpServerConfig, sink: Arc<dyn EventSink>) -> Self {
        let enabled = !config.disabled;
        Self {
            config,
            address: Address::new(),
            enabled: AtomicBool::new(enabled),
            status: Mutex::new(ServerStatus {
                state: if enabled {
                    McpState::Connecting
                } else {
                    McpState::Disabled
                },
                tools: Vec::new(),
                last_error: None,
                pid: None,
                connects: 0,
                connected_at: None,
                stderr_tail: VecDeque::new(),
            }),
            sink,
        }
    }

    /// A snapshot of the status.
    pub fn status(&self) -> ServerStatus {
        self.lock().clone()
    }

    /// One listed tool, without copying the whole list.
    pub(crate) fn remote_tool(&self, name: &str) -> Option<RemoteTool> {
        self.lock().tools.iter().find(|t| t.name == name).cloned()
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub(crate) fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Release);
        self.update(|s| {
            s.state = if enabled {
                McpState::Connecting
            } else {
                McpState::Disabled
            };
        });
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut ServerStatus)) {
        f(&mut self.lock());
    }

    fn lock(&self) -> MutexGuard<'_, ServerStatus> {
        // Plain fields, each update a single step: a poisoned lock still
        // holds a consistent status.
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, level: Level, kind: EventKind, message: String) {
        self.sink.emit(Event::new(
            level,
            format!("hale/mcp/{}", self.config.name),
            kind,
            message,
        ));
    }
}

/// The server actor's messages.
pub enum McpMsg {
    /// Call a tool of this server.
    Call {
        /// The server's name for the tool.
        tool: String,
        /// The arguments object.
        args: Option<JsonObject>,
        /// How long the server may take once the request is sent.
        timeout: Duration,
        /// Raised when the actor takes the call from its mailbox.
        taken: Taken,
        /// Raised when the request is handed to the server.
        sent: Taken,
        /// Fires when the caller gives up ([`ToolContext::cancel`](crate::tool::ToolContext::cancel)):
        /// the request is dropped, which sends `notifications/cancelled`.
        cancel: CancellationToken,
        /// Where the outcome goes.
        reply: RpcReplyPort<ToolOutcome>,
    },
    /// The connect task finished (internal).
    Connected(Box<Result<Connection, String>>),
    /// The connection ended (internal).
    TransportClosed {
        /// What the service loop reported.
        reason: String,
    },
}

impl std::fmt::Debug for McpMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            McpMsg::Call { tool, .. } => f.debug_struct("Call").field("tool", tool).finish(),
            McpMsg::Connected(result) => f
                .debug_tuple("Connected")
                .field(&result.as_ref().as_ref().map(|_| "connection"))
                .finish(),
            McpMsg::TransportClosed { reason } => f
                .debug_struct("TransportClosed")
                .field("reason", reason)
                .finish(),
        }
    }
}

/// A live connection, as the connect task hands it over.
pub struct Connection {
    service: RunningService<RoleClient, ClientConfig>,
    tools: Vec<RemoteTool>,
    pid: Option<u32>,
    record: Option<ProcessRecord>,
}

/// A call that arrived before the connection was ready.
struct PendingCall {
    tool: String,
    args: Option<JsonObject>,
    timeout: Duration,
    sent: Taken,
    cancel: CancellationToken,
    reply: RpcReplyPort<ToolOutcome>,
}

enum Phase {
    Connecting {
        pending: Vec<PendingCall>,
    },
    Ready {
        peer: Peer<RoleClient>,
        tools: Arc<Vec<RemoteTool>>,
    },
}

/// The actor behaviour.
#[derive(Debug, Clone, Copy, Default)]
pub struct McpServerActor;

/// The running actor's state.
pub struct McpServerState {
    shared: Arc<ServerShared>,
    phase: Phase,
    /// The connect task, the connection watcher and the calls in flight.
    /// Dropping it aborts them all and so closes the connection.
    tasks: JoinSet<()>,
}

impl Actor for McpServerActor {
    type Msg = McpMsg;
    type State = McpServerState;
    type Arguments = Arc<ServerShared>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        shared.address.publish(myself.clone());
        shared.update(|s| s.state = McpState::Connecting);
        let mut tasks = JoinSet::new();
        let connecting = Arc::clone(&shared);
        tasks.spawn(async move {
            let limit = connecting.config.connect_timeout;
            let result = match tokio::time::timeout(limit, connect(&connecting)).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "connecting took longer than {} ms (spawn, handshake and tool listing)",
                    limit.as_millis()
                )),
            };
            // A dead actor has no mailbox; its replacement connects itself.
            let _ = myself.send_message(McpMsg::Connected(Box::new(result)));
        });
        Ok(McpServerState {
            shared,
            phase: Phase::Connecting {
                pending: Vec::new(),
            },
            tasks,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        while state.tasks.try_join_next().is_some() {}
        match message {
            McpMsg::Call {
                tool,
                args,
                timeout,
                taken,
                sent,
                cancel,
                reply,
            } => {
                taken.mark();
                let call = PendingCall {
                    tool,
                    args,
                    timeout,
                    sent,
                    cancel,
                    reply,
                };
                match &mut state.phase {
                    Phase::Connecting { pending } => pending.push(call),
                    Phase::Ready { peer, tools } => {
                        start_call(&state.shared, peer, tools, &mut state.tasks, call);
                    }
                }
                Ok(())
            }
            McpMsg::Connected(result) => match *result {
                Ok(connection) => {
                    on_connected(myself, state, connection);
                    Ok(())
                }
                Err(error) => {
                    let shared = &state.shared;
                    let message = with_stderr(shared, &error);
                    shared.update(|s| {
                        s.state = McpState::Down;
                        s.last_error = Some(message.clone());
                    });
                    shared.emit(
                        Level::Error,
                        EventKind::Disconnected,
                        format!("cannot connect: {message}"),
                    );
                    if let Phase::Connecting { pending } = &mut state.phase {
                        for call in pending.drain(..) {
                            let _ = call.reply.send(unreachable(shared, &message));
                        }
                    }
                    Err(message.into())
                }
            },
            McpMsg::TransportClosed { reason } => {
                let shared = &state.shared;
                let message = with_stderr(shared, &format!("connection closed ({reason})"));
                shared.update(|s| {
                    s.state = McpState::Down;
                    s.last_error = Some(message.clone());
                    s.connected_at = None;
                });
                shared.emit(Level::Error, EventKind::Disconnected, message.clone());
                Err(message.into())
            }
        }
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.shared.address.withdraw(&myself);
        if state.shared.is_enabled() {
            state.shared.update(|s| s.state = McpState::Down);
        }
        Ok(())
    }
}

fn on_connected(myself: ActorRef<McpMsg>, state: &mut McpServerState, connection: Connection) {
    let shared = &state.shared;
    let Connection {
        service,
        tools,
        pid,
        record,
    } = connection;
    let peer = service.peer().clone();
    let tools = Arc::new(tools);
    shared.update(|s| {
        s.state = McpState::Ready;
        s.tools = tools.as_ref().clone();
        s.pid = pid;
        s.connects += 1;
        s.connected_at = Some(SystemTime::now());
    });
    shared.emit(
        Level::Info,
        EventKind::Connected,
        format!(
            "connected{}; {} tools",
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
            tools.len()
        ),
    );
    // The watcher owns the service: when the connection ends it tells the
    // actor; when the actor dies first, aborting the watcher drops the
    // service, which cancels it and kills the child.
    // The ledger record goes with the service: it is forgotten when the
    // child is killed, not before.
    state.tasks.spawn(async move {
        let _record = record;
        let reason = match service.waiting().await {
            Ok(quit) => format!("{quit:?}"),
            Err(join) => format!("service task failed: {join}"),
        };
        let _ = myself.send_message(McpMsg::TransportClosed { reason });
    });
    let pending = match std::mem::replace(
        &mut state.phase,
        Phase::Ready {
            peer: peer.clone(),
            tools: Arc::clone(&tools),
        },
    ) {
        Phase::Connecting { pending } => pending,
        Phase::Ready { .. } => Vec::new(),
    };
    for call in pending {
        if !call.reply.is_closed() {
            start_call(&state.shared, &peer, &tools, &mut state.tasks, call);
        }
    }
}

fn start_call(
    shared: &Arc<ServerShared>,
    peer: &Peer<RoleClient>,
    tools: &Arc<Vec<RemoteTool>>,
    tasks: &mut JoinSet<()>,
    call: PendingCall,
) {
    let server = shared.config.name.clone();
    if !tools.iter().any(|t| t.name == call.tool) {
        let _ = call
            .reply
            .send(unknown_remote_tool(&server, &call.tool, tools));
        return;
    }
    let remote = tools.iter().find(|t| t.name == call.tool).cloned();
    let max_result_bytes = shared.config.max_result_bytes;
    let peer = peer.clone();
    call.sent.mark();
    tasks.spawn(async move {
        let mut params = CallToolRequestParams::new(call.tool.clone());
        if let Some(args) = call.args {
            params = params.with_arguments(args);
        }
        // Dropping `call_tool` at the timeout, or when the caller gave up,
        // sends `notifications/cancelled` and leaves the session usable.
        let answered = tokio::select! {
            biased;
            answered = tokio::time::timeout(call.timeout, peer.call_tool(params)) => answered,
            () = call.cancel.cancelled() => return,
        };
        let outcome = match answered {
            Ok(Ok(result)) => remote
                .as_ref()
                .and_then(|tool| {
                    convert::oversized_result(&server, tool, &result, max_result_bytes)
                })
                .unwrap_or_else(|| convert::call_result(&server, &call.tool, &result)),
            Ok(Err(error)) => convert::service_error(&server, &call.tool, &error),
            Err(_) => ToolOutcome::timeout(format!(
                "`{}` on MCP server `{server}` did not answer within {} ms; the request was cancelled",
                call.tool,
                call.timeout.as_millis()
            ))
            .with_data(json!({ "server": server, "tool": call.tool })),
        };
        let _ = call.reply.send(outcome);
    });
}

/// `NOT_FOUND` for a tool the server does not list, with its closest tool
/// names first so the caller can repair the name.
pub(crate) fn unknown_remote_tool(server: &str, tool: &str, tools: &[RemoteTool]) -> ToolOutcome {
    let suggestions = closest_first(tool, tools.iter().map(|t| t.name.clone()));
    let mut outcome = ToolOutcome::from_code(
        ErrorCode::NotFound,
        format!("MCP server `{server}` has no tool named `{tool}`"),
    )
    .with_data(json!({ "server": server, "tool": tool }));
    if !suggestions.is_empty() {
        outcome = outcome.with_hint(
            Hint::new(
                HintKind::DidYouMean,
                format!("tools of `{server}`, closest name first"),
            )
            .with_suggestions(suggestions),
        );
    }
    outcome
}

/// `MCP_SERVER_UNREACHABLE` for a call that never reached the server.
pub(crate) fn unreachable(shared: &ServerShared, why: &str) -> ToolOutcome {
    ToolOutcome::from_code(
        ErrorCode::McpServerUnreachable,
        format!(
            "MCP server `{}` is unreachable: {why}; the call was not made",
            shared.config.name
        ),
    )
    .with_data(json!({ "server": shared.config.name }))
    .undelivered()
}

fn with_stderr(shared: &ServerShared, error: &str) -> String {
    let status = shared.status();
    match status.stderr_tail.back() {
        Some(last) => format!("{error}; last stderr line: {last}"),
        None => error.to_owned(),
    }
}

/// Spawns (or dials) the server, shakes hands and lists its tools.
async fn connect(shared: &Arc<ServerShared>) -> Result<Connection, String> {
    let config = &shared.config;
    let client = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("hale", env!("CARGO_PKG_VERSION")),
    )
    .with_protocol_version(PROTOCOL_VERSION);
    let (service, pid, record) = match &config.transport {
        McpTransport::Stdio {
            command,
            args,
            env: _,
            cwd,
        } => {
            // Built, not inherited: see `McpServerConfig::process_env`.
            let mut cmd = tokio::process::Command::new(command);
            cmd.args(args).env_clear().envs(config.process_env());
            if let Some(cwd) = cwd {
                cmd.current_dir(cwd);
            }
            let mut wrapped = CommandWrap::from(cmd);
            wrapped.wrap(ProcessGroup::leader()).wrap(KillOnDrop);
            let (transport, stderr) = TokioChildProcess::builder(wrapped)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start `{}`: {e}", command.display()))?;
            let pid = transport.id();
            // Held until the connection ends; dropped with the transport
            // (which kills the group) if the handshake fails.
            let record = config.recorder.started(pid, &command_line(command, args));
            if let Some(stderr) = stderr {
                // Detached on purpose: it ends at EOF, when the process
                // (whichever incarnation) is gone, and an undrained pipe
                // would block the server once it fills.
                tokio::spawn(drain_stderr(Arc::clone(shared), stderr));
            }
            let service = client
                .serve(transport)
                .await
                .map_err(|e| format!("handshake with `{}` failed: {e}", command.display()))?;
            (service, pid, record)
        }
        McpTransport::Http { url } => {
            let mut http = StreamableHttpClientTransportConfig::with_uri(url.as_str());
            let mut retry = rmcp::transport::common::client_side_sse::ExponentialBackoff::default();
            retry.max_times = Some(HTTP_SSE_RETRIES);
            retry.base_duration = Duration::from_millis(200);
            retry.max_delay = Some(Duration::from_secs(2));
            http.retry_config = Arc::new(retry);
            let transport = StreamableHttpClientTransport::from_config(http);
            let service = client
                .serve(transport)
                .await
                .map_err(|e| format!("handshake with {url} failed: {e}"))?;
            (service, None, None)
        }
    };
    let tools = service
        .peer()
        .list_all_tools()
        .await
        .map_err(|e| format!("listing tools failed: {e}"))?;
    Ok(Connection {
        tools: tools.iter().map(RemoteTool::from).collect(),
        service,
        pid,
        record,
    })
}

/// `command` and its arguments as one line, for the process ledger.
fn command_line(command: &std::path::Path, args: &[String]) -> String {
    let mut line = command.display().to_string();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

/// Reads a server's stderr to its end, whatever it holds. The reader must
/// not stop early: once it drops the pipe, the server's next write to
/// stderr fails (EPIPE), which kills many servers, and the restart loop
/// that follows parks them. So the bytes are split into lines by hand and
/// decoded lossily (invalid UTF-8 becomes U+FFFD, never an error), and a
/// line is kept to [`STDERR_LINE_MAX_BYTES`] (see [`StderrLines`]).
async fn drain_stderr(shared: Arc<ServerShared>, stderr: ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut lines = StderrLines::new(STDERR_LINE_MAX_BYTES);
    let server = shared.config.name.clone();
    let keep = |line: String| {
        tracing::debug!(target: "hale::mcp::stderr", server = %server, "{line}");
        shared.update(|s| {
            if s.stderr_tail.len() == STDERR_TAIL_LINES {
                s.stderr_tail.pop_front();
            }
            s.stderr_tail.push_back(line);
        });
    };
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) => break,
            Ok(chunk) => chunk,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A read error on a pipe is its end: the process is gone.
            Err(_) => break,
        };
        let read = chunk.len();
        lines.push(chunk, keep);
        reader.consume(read);
    }
    if let Some(last) = lines.finish() {
        keep(last);
    }
}

/// The longest stderr line kept (in bytes, before decoding); the rest of a
/// longer line is counted and discarded as it arrives, never buffered.
/// stderr is for diagnosis (the last lines go into error messages and
/// `manage_mcp` status), so a few KiB of each line is plenty.
pub const STDERR_LINE_MAX_BYTES: usize = 4 * 1024;

/// Splits a byte stream into lines of at most `cap` bytes each, decoded
/// lossily; a longer line is cut, with a note of how much was dropped.
/// Memory is bounded by `cap` whatever the stream holds.
#[derive(Debug)]
struct StderrLines {
    cap: usize,
    current: Vec<u8>,
    /// Bytes of the current line dropped beyond `cap`.
    dropped: u64,
}

impl StderrLines {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            current: Vec::new(),
            dropped: 0,
        }
    }

    /// Feeds `bytes`, handing each completed line to `emit`.
    fn push(&mut self, bytes: &[u8], emit: impl Fn(String)) {
        for (i, piece) in bytes.split(|b| *b == b'\n').enumerate() {
            if i > 0 {
                emit(self.take());
            }
            let room = self.cap.saturating_sub(self.current.len());
            let kept = piece.len().min(room);
            self.current
                .extend_from_slice(piece.get(..kept).unwrap_or(piece));
            self.dropped = self.dropped.saturating_add((piece.len() - kept) as u64);
        }
    }

    /// The unterminated last line at the end of the stream, if any.
    fn finish(&mut self) -> Option<String> {
        (!self.current.is_empty() || self.dropped > 0).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let bytes = std::mem::take(&mut self.current);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(&bytes);
        let mut line = String::from_utf8_lossy(bytes).into_owned();
        if self.dropped > 0 {
            line.push_str(&format!(
                " [line cut at {} bytes; {} more bytes dropped]",
                self.cap, self.dropped
            ));
            self.dropped = 0;
        }
        line
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::cell::RefCell;

    use super::*;

    fn split(cap: usize, chunks: &[&[u8]]) -> Vec<String> {
        let out = RefCell::new(Vec::new());
        let mut lines = StderrLines::new(cap);
        for chunk in chunks {
            lines.push(chunk, |l| out.borrow_mut().push(l));
        }
        let mut out = out.into_inner();
        out.extend(lines.finish());
        out
    }

    #[test]
    fn stderr_lines_split_across_chunks_and_decode_lossily() {
        assert_eq!(
            split(64, &[b"one\ntw", b"o\r\n\xff\xfebad\n", b"tail"]),
            ["one", "two", "\u{fffd}\u{fffd}bad", "tail"]
        );
        assert!(split(64, &[b""]).is_empty());
        assert_eq!(split(64, &[b"a\n\n"]), ["a", ""]);
    }

    #[test]
    fn a_long_stderr_line_is_cut_and_the_rest_dropped_unbuffered() {
        let long = vec![b'x'; 10_000];
        let out = split(8, &[b"head\n", &long, &long, b"\nnext\n"]);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0], "head");
        assert_eq!(
            out[1],
            "xxxxxxxx [line cut at 8 bytes; 19992 more bytes dropped]"
        );
        assert_eq!(out[2], "next");
        let mut lines = StderrLines::new(8);
        lines.push(&long, |_| {});
        assert!(lines.current.capacity() <= 64, "the rest was buffered");
    }
}
