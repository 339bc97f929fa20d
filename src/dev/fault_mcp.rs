//! `hale fault-mcp`: an MCP server that fails on purpose.
//!
//! hale's job is to keep agents working while their MCP servers misbehave, so
//! its tests and demos need a server that misbehaves on demand and the same
//! way every time: an error result, a JSON-RPC error, a crash before the
//! reply, a request that never answers, a line of garbage on the protocol
//! stream, a slow call with progress, a side effect that can be counted. No
//! real server does these reliably, so this one ships inside the `hale` binary
//! (hidden from `--help`) and every test spawns it from the binary it already
//! built.
//!
//! Faults come from three places, in this order of precedence for each
//! `tools/call` (counted from 1 per process): `--crash-on N` crashes the N-th
//! call; `--fail-first N` makes calls 1..=N behave as `--fail-mode`; otherwise
//! the call's own `behaviour` argument, otherwise the tool's own semantics.
//! The tool list and dispatch are written by hand rather than with rmcp's
//! `#[tool_router]` because every tool shares the same fault wrapper and the
//! same optional `behaviour` argument, and the schemas are part of what tests
//! assert.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode,
    Implementation, JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

/// The line `garbage` writes to stdout in stdio mode (followed by `\n`), and
/// the `data:` of the SSE event that replaces the reply in HTTP mode. Not
/// JSON: a JSON parser fails on its first byte.
pub const GARBAGE_LINE: &str = "garbage from hale fault-mcp }{ this is not JSON";

/// Put into a reply in HTTP mode so the response layer can find the event to
/// replace with garbage. Plain ASCII so JSON encoding leaves it intact.
const GARBAGE_SENTINEL: &str = "hale-fault-mcp-garbage-sentinel-5f0c2a";

/// Exit code of `crash` when the call does not give one.
const DEFAULT_CRASH_EXIT_CODE: i32 = 1;

/// What one `tools/call` does instead of (or before) the tool's own work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// The tool's own semantics (for `fail`, `crash`, ... that is their fault).
    Ok,
    /// A `CallToolResult` with `is_error: true`.
    Fail,
    /// A JSON-RPC error (code from the `code` argument, default -32603).
    RpcError,
    /// The process exits before replying.
    Crash,
    /// No reply, ever; only this request is stuck.
    Hang,
    /// Garbage on the protocol stream, then no reply (see [`GARBAGE_LINE`]).
    Garbage,
    /// Wait this long, then the tool's own semantics.
    Sleep(Duration),
}

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::Fail => f.write_str("fail"),
            Self::RpcError => f.write_str("rpc_error"),
            Self::Crash => f.write_str("crash"),
            Self::Hang => f.write_str("hang"),
            Self::Garbage => f.write_str("garbage"),
            Self::Sleep(delay) => write!(f, "sleep:{}", delay.as_millis()),
        }
    }
}

/// A behaviour name that is not one of
/// `ok|fail|rpc_error|crash|hang|garbage|sleep:<ms>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown behaviour {0:?}: expected ok|fail|rpc_error|crash|hang|garbage|sleep:<ms>")]
pub struct InvalidBehaviour(pub String);

impl FromStr for Behaviour {
    type Err = InvalidBehaviour;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "ok" => Ok(Self::Ok),
            "fail" => Ok(Self::Fail),
            "rpc_error" => Ok(Self::RpcError),
            "crash" => Ok(Self::Crash),
            "hang" => Ok(Self::Hang),
            "garbage" => Ok(Self::Garbage),
            _ => text
                .strip_prefix("sleep:")
                .and_then(|ms| ms.parse::<u64>().ok())
                .map(|ms| Self::Sleep(Duration::from_millis(ms)))
                .ok_or_else(|| InvalidBehaviour(text.to_owned())),
        }
    }
}

/// The behaviours that replace the tool's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Fail,
    RpcError,
    Crash,
    Hang,
    Garbage,
}

/// Where the server speaks MCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// Newline-delimited JSON-RPC on stdin/stdout; nothing else on stdout.
    Stdio,
    /// Streamable HTTP at `/mcp` on this address (port 0 picks a free one).
    Http(SocketAddr),
}

/// Process-wide settings of one fault server.
#[derive(Debug, Clone)]
pub struct FaultMcpOptions {
    /// Transport.
    pub listen: Listen,
    /// `serverInfo.name` in the initialize result.
    pub name: String,
    /// Calls 1..=`fail_first` of this process behave as `fail_mode`.
    pub fail_first: u64,
    /// What the first `fail_first` calls do.
    pub fail_mode: Behaviour,
    /// The N-th call of this process crashes it.
    pub crash_on: Option<u64>,
    /// Append `<tool name>\n` here for every call, flushed before acting.
    pub calls_file: Option<PathBuf>,
    /// Sleep this long before serving (a slow start).
    pub startup_delay: Duration,
    /// Exit (code 0) this long after start, whatever is in flight.
    pub exit_after: Option<Duration>,
}

impl Default for FaultMcpOptions {
    fn default() -> Self {
        Self {
            listen: Listen::Stdio,
            name: "fault-mcp".to_owned(),
            fail_first: 0,
            fail_mode: Behaviour::Fail,
            crash_on: None,
            calls_file: None,
            startup_delay: Duration::ZERO,
            exit_after: None,
        }
    }
}

/// Why the fault server could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum FaultMcpError {
    /// The `--calls-file` could not be opened for appending.
    #[error("cannot open the calls file {path}: {source}")]
    CallsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Writing the `listening on` line or serving HTTP failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The stdio client never completed the MCP handshake.
    #[error("MCP handshake failed: {0}")]
    Handshake(Box<rmcp::service::ServerInitializeError>),
    /// The stdio serve loop ended abnormally.
    #[error("MCP service task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Serves MCP with the given faults until stdin closes (stdio) or forever
/// (HTTP); `crash` and `--exit-after-ms` end the process directly.
pub async fn run(options: FaultMcpOptions) -> Result<(), FaultMcpError> {
    if let Some(after) = options.exit_after {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            tracing::info!(after_ms = after.as_millis() as u64, "exit-after reached");
            std::process::exit(0);
        });
    }
    if !options.startup_delay.is_zero() {
        tokio::time::sleep(options.startup_delay).await;
    }
    let calls_file = match &options.calls_file {
        Some(path) => Some(Mutex::new(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
                .map_err(|source| FaultMcpError::CallsFile {
                    path: path.clone(),
                    source,
                })?,
        )),
        None => None,
    };
    match options.listen {
        Listen::Stdio => serve_stdio(options, calls_file).await,
        Listen::Http(addr) => serve_http(options, calls_file, addr).await,
    }
}

/// A garbage line for the stdout pump, acknowledged once written so a reply
/// sent afterwards cannot overtake it.
struct GarbageLine {
    written: oneshot::Sender<()>,
}

/// How `garbage` reaches the client.
enum GarbageSink {
    /// A line on stdout, between two protocol messages.
    Stdout(mpsc::Sender<GarbageLine>),
    /// The reply's SSE event is rewritten by [`garble_sse`].
    Http,
}

/// State shared by every session of this process (HTTP makes one handler per
/// session), so call counting is per process as the flags promise.
struct Shared {
    options: FaultMcpOptions,
    calls: AtomicU64,
    calls_file: Option<Mutex<tokio::fs::File>>,
    garbage: GarbageSink,
    stdin_closed: watch::Receiver<bool>,
    tools: Vec<Tool>,
}

/// The MCP handler: one per session, all sharing [`Shared`].
#[derive(Clone)]
struct FaultServer {
    shared: Arc<Shared>,
}

async fn serve_stdio(
    options: FaultMcpOptions,
    calls_file: Option<Mutex<tokio::fs::File>>,
) -> Result<(), FaultMcpError> {
    // All of stdout goes through one pump so a garbage line lands between
    // two whole protocol messages, never inside one.
    let (stdin, stdout) = rmcp::transport::io::stdio_pipes();
    // A duplex, not a simplex: its reader sees EOF when rmcp drops the writer.
    let (to_pump, from_rmcp) = tokio::io::duplex(64 * 1024);
    let (garbage_tx, garbage_rx) = mpsc::channel(8);
    let pump = tokio::spawn(pump_stdout(from_rmcp, garbage_rx, stdout));
    let (closed_tx, closed_rx) = watch::channel(false);
    let stdin = EofSignal {
        inner: stdin,
        closed: closed_tx,
    };
    let server = FaultServer::new(
        options,
        calls_file,
        GarbageSink::Stdout(garbage_tx),
        closed_rx,
    );
    tracing::info!("fault-mcp serving on stdio");
    let running = server
        .serve((stdin, to_pump))
        .await
        .map_err(|error| FaultMcpError::Handshake(Box::new(error)))?;
    let reason = running.waiting().await?;
    tracing::info!(?reason, "stdio session ended");
    // The transport's writer is gone, so the pump drains and stops.
    let _ = tokio::time::timeout(Duration::from_secs(1), pump).await;
    Ok(())
}

/// Stdin that says when it reaches its end.
struct EofSignal<R> {
    inner: R,
    closed: watch::Sender<bool>,
}

impl<R: AsyncRead + Unpin> AsyncRead for EofSignal<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let wants = buf.remaining() > 0;
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && wants && buf.filled().len() == before {
            self.closed.send_replace(true);
        }
        polled
    }
}

/// Copies the protocol lines rmcp writes, and garbage lines, to stdout.
async fn pump_stdout(
    from_rmcp: tokio::io::DuplexStream,
    mut garbage: mpsc::Receiver<GarbageLine>,
    mut stdout: impl AsyncWrite + Unpin,
) {
    let mut lines = BufReader::new(from_rmcp).lines();
    loop {
        // Both branches are cancel-safe: `next_line` keeps a partial line.
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if write_line(&mut stdout, &line).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(error) => {
                    tracing::error!(%error, "reading rmcp's output failed");
                    return;
                }
            },
            Some(request) = garbage.recv() => {
                if write_line(&mut stdout, GARBAGE_LINE).await.is_err() {
                    return;
                }
                let _ = request.written.send(());
            }
        }
    }
}

async fn write_line(out: &mut (impl AsyncWrite + Unpin), line: &str) -> std::io::Result<()> {
    out.write_all(line.as_bytes()).await?;
    out.write_all(b"\n").await?;
    out.flush().await
}

async fn serve_http(
    options: FaultMcpOptions,
    calls_file: Option<Mutex<tokio::fs::File>>,
    addr: SocketAddr,
) -> Result<(), FaultMcpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| FaultMcpError::Bind { addr, source })?;
    let local = listener.local_addr()?;
    // Never fires: an HTTP client leaving is seen per request (cancellation).
    let (_never, stdin_closed) = watch::channel(false);
    let server = FaultServer::new(options, calls_file, GarbageSink::Http, stdin_closed);
    let mut allowed_hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    allowed_hosts.push(local.ip().to_string());
    let config = StreamableHttpServerConfig::default().with_allowed_hosts(allowed_hosts);
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let app = axum::Router::new()
        .route_service("/mcp", service)
        .layer(axum::middleware::from_fn(garble_sse));
    // Tests wait for this line: write it only once the socket accepts.
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("listening on http://{local}/mcp\n").as_bytes())
        .await?;
    stdout.flush().await?;
    tracing::info!(%local, "fault-mcp serving streamable HTTP at /mcp");
    axum::serve(listener, app).await?;
    Ok(())
}

impl FaultServer {
    fn new(
        options: FaultMcpOptions,
        calls_file: Option<Mutex<tokio::fs::File>>,
        garbage: GarbageSink,
        stdin_closed: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                options,
                calls: AtomicU64::new(0),
                calls_file,
                garbage,
                stdin_closed,
                tools: tool_list(),
            }),
        }
    }

    /// Counts the call and appends it to the calls file before anything else
    /// happens, so a crash on this very call is still counted.
    async fn record_call(&self, name: &str) -> u64 {
        let number = self.shared.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(file) = &self.shared.calls_file {
            let mut file = file.lock().await;
            let written = async {
                file.write_all(format!("{name}\n").as_bytes()).await?;
                file.flush().await
            }
            .await;
            if let Err(error) = written {
                tracing::error!(%error, "cannot append to the calls file");
            }
        }
        number
    }

    /// Resolves when nobody waits for this call any more: the client
    /// cancelled it, or (stdio) stdin closed. Without the second, a hung call
    /// would hold rmcp's shutdown drain for its full 5 s.
    async fn abandoned(&self, context: &RequestContext<RoleServer>) {
        let mut closed = self.shared.stdin_closed.clone();
        tokio::select! {
            () = context.ct.cancelled() => {}
            // A dropped sender (HTTP has none that ever fires) disables this branch.
            Ok(_) = closed.wait_for(|closed| *closed) => {}
        }
    }

    fn behaviour_for(&self, number: u64, args: &JsonObject) -> Result<Behaviour, ErrorData> {
        let options = &self.shared.options;
        if options.crash_on == Some(number) {
            return Ok(Behaviour::Crash);
        }
        if number <= options.fail_first {
            return Ok(options.fail_mode);
        }
        match args.get("behaviour") {
            None | Some(Value::Null) => Ok(Behaviour::Ok),
            Some(Value::String(text)) => text.parse().map_err(|error: InvalidBehaviour| {
                ErrorData::invalid_params(error.to_string(), None)
            }),
            Some(other) => Err(ErrorData::invalid_params(
                format!("behaviour must be a string, got {other}"),
                None,
            )),
        }
    }

    async fn perform(
        &self,
        tool: ToolKind,
        behaviour: Behaviour,
        args: &JsonObject,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let fault = match behaviour {
            Behaviour::Ok => return self.run_tool(tool, args, context).await,
            Behaviour::Sleep(delay) => {
                return tokio::select! {
                    () = tokio::time::sleep(delay) => self.run_tool(tool, args, context).await,
                    () = self.abandoned(context) => Err(cancelled()),
                };
            }
            Behaviour::Fail => Fault::Fail,
            Behaviour::RpcError => Fault::RpcError,
            Behaviour::Crash => Fault::Crash,
            Behaviour::Hang => Fault::Hang,
            Behaviour::Garbage => Fault::Garbage,
        };
        self.inject(fault, tool, args, context).await
    }

    async fn inject(
        &self,
        fault: Fault,
        tool: ToolKind,
        args: &JsonObject,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        match fault {
            Fault::Fail => {
                let message = optional_str(args, "message")?.map_or_else(
                    || format!("injected failure ({})", tool.name()),
                    str::to_owned,
                );
                Ok(CallToolResult::error(vec![ContentBlock::text(message)]))
            }
            Fault::RpcError => {
                let code = match optional_i64(args, "code")? {
                    None => ErrorCode::INTERNAL_ERROR,
                    Some(code) => ErrorCode(i32::try_from(code).map_err(|_| {
                        ErrorData::invalid_params(format!("code {code} is not an i32"), None)
                    })?),
                };
                let message = optional_str(args, "message")?.map_or_else(
                    || format!("injected JSON-RPC error ({})", tool.name()),
                    str::to_owned,
                );
                Err(ErrorData::new(code, message, None))
            }
            Fault::Crash => {
                let exit_code = match optional_i64(args, "exit_code")? {
                    None => DEFAULT_CRASH_EXIT_CODE,
                    Some(code) => i32::try_from(code).map_err(|_| {
                        ErrorData::invalid_params(format!("exit_code {code} is not an i32"), None)
                    })?,
                };
                tracing::warn!(tool = tool.name(), exit_code, "injected crash: exiting now");
                std::process::exit(exit_code)
            }
            Fault::Hang => {
                tracing::info!(tool = tool.name(), "injected hang");
                self.abandoned(context).await;
                Err(cancelled())
            }
            Fault::Garbage => self.garbage(tool, args, context).await,
        }
    }

    async fn garbage(
        &self,
        tool: ToolKind,
        args: &JsonObject,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let then_reply = optional_bool(args, "then_reply")?.unwrap_or(false);
        match &self.shared.garbage {
            GarbageSink::Stdout(pump) => {
                tracing::info!(tool = tool.name(), then_reply, "injected garbage on stdout");
                let (written, done) = oneshot::channel();
                if pump.send(GarbageLine { written }).await.is_ok() {
                    let _ = done.await;
                }
                if then_reply {
                    return Ok(text_result("garbage sent"));
                }
                self.abandoned(context).await;
                Err(cancelled())
            }
            GarbageSink::Http => {
                // The reply itself becomes the garbage event; `then_reply`
                // cannot add a second reply to the same request.
                tracing::info!(tool = tool.name(), "injected garbage in the SSE reply");
                Ok(text_result(GARBAGE_SENTINEL))
            }
        }
    }

    async fn sleep_with_progress(
        &self,
        args: &JsonObject,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let ms = optional_u64(args, "ms")?
            .ok_or_else(|| ErrorData::invalid_params("missing required argument ms", None))?;
        let steps = optional_u64(args, "steps")?.unwrap_or(0);
        let token = context.meta.get_progress_token();
        let total = Duration::from_millis(ms);
        let work = async {
            if steps == 0 {
                tokio::time::sleep(total).await;
                return;
            }
            let step = total / u32::try_from(steps).unwrap_or(u32::MAX);
            for done in 1..=steps {
                tokio::time::sleep(step).await;
                if let Some(token) = &token {
                    let param = ProgressNotificationParam::new(token.clone(), done as f64)
                        .with_total(steps as f64)
                        .with_message(format!("step {done} of {steps}"));
                    if let Err(error) = context.peer.notify_progress(param).await {
                        tracing::debug!(%error, "progress notification not sent");
                    }
                }
            }
        };
        tokio::select! {
            () = work => Ok(text_result(format!("slept {ms} ms"))),
            () = self.abandoned(context) => Err(cancelled()),
        }
    }

    async fn run_tool(
        &self,
        tool: ToolKind,
        args: &JsonObject,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        match tool {
            ToolKind::Echo => {
                let text = required_str(args, "text")?;
                if optional_bool(args, "stderr_noise")? == Some(true) {
                    stderr_noise();
                }
                let repeat = optional_u64(args, "repeat")?.unwrap_or(1);
                let size = usize::try_from(repeat)
                    .ok()
                    .and_then(|n| n.checked_mul(text.len()))
                    .filter(|size| *size <= MAX_ECHO_BYTES)
                    .ok_or_else(|| {
                        ErrorData::invalid_params(
                            format!("`repeat` makes more than {MAX_ECHO_BYTES} bytes"),
                            None,
                        )
                    })?;
                let mut out = String::with_capacity(size);
                for _ in 0..repeat {
                    out.push_str(text);
                }
                Ok(text_result(out))
            }
            ToolKind::Sleep => self.sleep_with_progress(args, context).await,
            ToolKind::WriteOnce => {
                let path = required_str(args, "path")?;
                let line = required_str(args, "line")?;
                let written = async {
                    let mut file = tokio::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .await?;
                    file.write_all(format!("{line}\n").as_bytes()).await?;
                    file.flush().await
                }
                .await;
                Ok(match written {
                    Ok(()) => text_result("ok"),
                    Err(error) => CallToolResult::error(vec![ContentBlock::text(format!(
                        "cannot append to {path}: {error}"
                    ))]),
                })
            }
            // The fault tools are their fault: `ok` on them means "do it".
            ToolKind::Fail => self.inject(Fault::Fail, tool, args, context).await,
            ToolKind::RpcError => self.inject(Fault::RpcError, tool, args, context).await,
            ToolKind::Crash => self.inject(Fault::Crash, tool, args, context).await,
            ToolKind::Hang => self.inject(Fault::Hang, tool, args, context).await,
            ToolKind::Garbage => self.inject(Fault::Garbage, tool, args, context).await,
        }
    }
}

impl ServerHandler for FaultServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                self.shared.options.name.clone(),
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Fault-injecting test server: every tool takes an optional `behaviour` \
                 (ok|fail|rpc_error|crash|hang|garbage|sleep:<ms>).",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.shared.tools.clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.shared
            .tools
            .iter()
            .find(|tool| tool.name == name)
            .cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let number = self.record_call(&request.name).await;
        let args = request.arguments.unwrap_or_default();
        let behaviour = self.behaviour_for(number, &args)?;
        let tool = ToolKind::from_name(&request.name).ok_or_else(|| {
            ErrorData::invalid_params(format!("tool not found: {}", request.name), None)
        })?;
        tracing::debug!(number, tool = tool.name(), %behaviour, "tools/call");
        self.perform(tool, behaviour, &args, &context)
            .await
            .map(CallToolResponse::from)
    }
}

/// The tools, as dispatch keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ToolKind {
    Echo,
    Sleep,
    Fail,
    RpcError,
    Crash,
    Hang,
    Garbage,
    WriteOnce,
}

impl ToolKind {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "echo" => Self::Echo,
            "sleep" => Self::Sleep,
            "fail" => Self::Fail,
            "rpc_error" => Self::RpcError,
            "crash" => Self::Crash,
            "hang" => Self::Hang,
            "garbage" => Self::Garbage,
            "write_once" => Self::WriteOnce,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Sleep => "sleep",
            Self::Fail => "fail",
            Self::RpcError => "rpc_error",
            Self::Crash => "crash",
            Self::Hang => "hang",
            Self::Garbage => "garbage",
            Self::WriteOnce => "write_once",
        }
    }
}

fn tool_list() -> Vec<Tool> {
    let safe = ToolAnnotations::new()
        .read_only(true)
        .idempotent(true)
        .destructive(false)
        .open_world(false);
    vec![
        tool(
            "echo",
            "Returns `text` unchanged (or `repeat` times over).",
            json!({
                "text": {"type": "string", "description": "The text to return."},
                "repeat": {"type": "integer", "minimum": 0, "description": "Return `text` this many times over (default 1; at most 64 MiB in all)."},
                "stderr_noise": {"type": "boolean", "description": "First write to stderr a line that is not UTF-8, then a 1 MiB line (default false); the server exits if stderr is gone."}
            }),
            &["text"],
        )
        .annotate(safe.clone()),
        tool(
            "sleep",
            "Sleeps `ms` milliseconds, sending `steps` progress notifications on the way \
             (when the request has a progress token), then returns \"slept <ms> ms\".",
            json!({
                "ms": {"type": "integer", "minimum": 0, "description": "How long to sleep."},
                "steps": {"type": "integer", "minimum": 0, "description": "Progress notifications to send (default 0)."}
            }),
            &["ms"],
        )
        .annotate(safe),
        tool(
            "fail",
            "Returns a tool error (`isError: true`) with `message`.",
            json!({"message": {"type": "string", "description": "The error text."}}),
            &[],
        ),
        tool(
            "rpc_error",
            "Answers with a JSON-RPC error (default code -32603).",
            json!({
                "code": {"type": "integer", "description": "JSON-RPC error code (default -32603)."},
                "message": {"type": "string", "description": "JSON-RPC error message."}
            }),
            &[],
        ),
        tool(
            "crash",
            "Exits the server process before replying.",
            json!({"exit_code": {"type": "integer", "description": "Process exit code (default 1)."}}),
            &[],
        ),
        tool("hang", "Never replies; other requests keep working.", json!({}), &[]),
        tool(
            "garbage",
            "stdio: writes a non-JSON line to stdout, then never replies (or replies \
             \"garbage sent\" when `then_reply`). HTTP: the reply's SSE event carries non-JSON data.",
            json!({"then_reply": {"type": "boolean", "description": "stdio only: reply after the garbage (default false)."}}),
            &[],
        ),
        tool(
            "write_once",
            "Appends `line` and a newline to the file at `path` (a side effect to count), returns \"ok\".",
            json!({
                "path": {"type": "string", "description": "File to append to (created if missing)."},
                "line": {"type": "string", "description": "The line to append."}
            }),
            &["path", "line"],
        )
        .annotate(
            ToolAnnotations::new()
                .read_only(false)
                .idempotent(false)
                .destructive(true)
                .open_world(false),
        ),
    ]
}

fn tool(
    name: &'static str,
    description: &'static str,
    properties: Value,
    required: &[&str],
) -> Tool {
    let mut properties = match properties {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    };
    properties.insert(
        "behaviour".to_owned(),
        json!({
            "type": "string",
            "pattern": "^(ok|fail|rpc_error|crash|hang|garbage|sleep:[0-9]+)$",
            "description": "Overrides what this call does: ok (the tool's own semantics), \
                            fail, rpc_error, crash, hang, garbage, sleep:<ms> (then ok)."
        }),
    );
    let mut schema = JsonObject::new();
    schema.insert("type".to_owned(), json!("object"));
    schema.insert("properties".to_owned(), Value::Object(properties));
    schema.insert("required".to_owned(), json!(required));
    schema.insert("additionalProperties".to_owned(), json!(false));
    Tool::new(
        Cow::Borrowed(name),
        Cow::Borrowed(description),
        Arc::new(schema),
    )
}

/// The most bytes `echo` returns (`repeat` times `text`).
const MAX_ECHO_BYTES: usize = 64 * 1024 * 1024;

/// How long the long line of [`stderr_noise`] is.
pub const NOISE_LINE_BYTES: usize = 1024 * 1024;

/// `echo`'s `stderr_noise`: a line that is not UTF-8, a line of
/// [`NOISE_LINE_BYTES`] bytes, and `noise: done`, on stderr. Like many real
/// servers, this one dies when stderr is gone: a failed write exits with
/// 141 (128 + SIGPIPE), so a client that stops reading stderr kills it.
fn stderr_noise() {
    use std::io::Write as _;
    let mut long = b"noise: ".to_vec();
    long.resize(NOISE_LINE_BYTES, b'y');
    long.push(b'\n');
    let mut stderr = std::io::stderr().lock();
    let written = stderr
        .write_all(b"noise: \xff\xfe not UTF-8 \xc3\n")
        .and_then(|()| stderr.write_all(&long))
        .and_then(|()| stderr.write_all(b"noise: done\n"))
        .and_then(|()| stderr.flush());
    if written.is_err() {
        std::process::exit(141);
    }
}

fn text_result(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

/// The error a cancelled request "returns": rmcp drops it, as the client
/// has stopped waiting.
fn cancelled() -> ErrorData {
    ErrorData::internal_error("request cancelled", None)
}

fn optional_str<'a>(args: &'a JsonObject, field: &str) -> Result<Option<&'a str>, ErrorData> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ErrorData::invalid_params(
            format!("{field} must be a string"),
            None,
        )),
    }
}

fn required_str<'a>(args: &'a JsonObject, field: &str) -> Result<&'a str, ErrorData> {
    optional_str(args, field)?.ok_or_else(|| {
        ErrorData::invalid_params(format!("missing required argument {field}"), None)
    })
}

fn optional_i64(args: &JsonObject, field: &str) -> Result<Option<i64>, ErrorData> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_i64()
            .map(Some)
            .ok_or_else(|| ErrorData::invalid_params(format!("{field} must be an integer"), None)),
    }
}

fn optional_u64(args: &JsonObject, field: &str) -> Result<Option<u64>, ErrorData> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            ErrorData::invalid_params(format!("{field} must be a non-negative integer"), None)
        }),
    }
}

fn optional_bool(args: &JsonObject, field: &str) -> Result<Option<bool>, ErrorData> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(_) => Err(ErrorData::invalid_params(
            format!("{field} must be a boolean"),
            None,
        )),
    }
}

/// Replaces the SSE event that carries [`GARBAGE_SENTINEL`] with an event
/// whose data is not JSON: HTTP's version of garbage on the wire.
async fn garble_sse(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let is_sse = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/event-stream"));
    if is_sse {
        response.map(|inner| Body::new(GarbledBody { inner }))
    } else {
        response
    }
}

/// An SSE body that passes every frame through except the sentinel's.
/// rmcp writes one SSE event per frame, so the replacement is a whole event.
struct GarbledBody {
    inner: Body,
}

impl HttpBody for GarbledBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|frame| frame.map(|frame| frame.map_data(garble_event))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

fn garble_event(event: Bytes) -> Bytes {
    let sentinel = GARBAGE_SENTINEL.as_bytes();
    if event
        .windows(sentinel.len())
        .any(|window| window == sentinel)
    {
        Bytes::from(format!("data: {GARBAGE_LINE}\n\n"))
    } else {
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tool_list_names_every_tool_once_in_order() {
        let names: Vec<String> = tool_list().iter().map(|t| t.name.to_string()).collect();
        assert_eq!(
            names,
            [
                "echo",
                "sleep",
                "fail",
                "rpc_error",
                "crash",
                "hang",
                "garbage",
                "write_once"
            ]
        );
    }
}
