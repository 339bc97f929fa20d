//! `hale serve`: the runtime as a daemon with its HTTP API.
//!
//! The listener is bound before the runtime starts, so a supervisor of the
//! daemon (systemd, Kubernetes) can probe `/healthz` from the first moment:
//! it answers 503 `starting` while the store opens, the tree comes up and
//! the journals are replayed, then 200. Every other route answers 503
//! until then. On SIGINT or SIGTERM the server stops accepting, gives open
//! requests a bounded time to finish, and the runtime stops its tree in
//! reverse start order; unfinished messages stay in their journals and
//! resume at the next start. Connections are capped and their headers and
//! idle time bounded (`[serve]`, see [`crate::conn_limits`]).

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use tower::ServiceExt as _;

use crate::api::{self, ApiState};
use crate::cli::ConfigArgs;

/// How `hale serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where the configuration and data directory come from.
    pub config: ConfigArgs,
    /// The address to listen on (loopback by default).
    pub listen: SocketAddr,
    /// Whether `/v1/chaos/kill` is enabled.
    pub allow_chaos: bool,
    /// How long open requests may take to finish at shutdown.
    pub drain: Duration,
    /// Secret values masked everywhere, shared with whatever else masks
    /// (the log writer): the runtime adds the token and the keys it finds
    /// at start.
    pub secrets: hale_actors::secrets::KnownSecrets,
}

/// Reads the token in `path`, creating it (mode 0600, 32 random bytes as
/// 64 hex characters) if there is none. Readers trim whitespace.
///
/// # Errors
/// The file cannot be read or created, or the OS has no randomness.
pub fn ensure_token(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => {
            // A token file made by an older hale or by hand may be open.
            crate::data_dir::restrict_file(path)
                .with_context(|| format!("setting the mode of {}", path.display()))?;
            return Ok(text.trim().to_owned());
        }
        Ok(_) => anyhow::bail!("{} is empty; delete it to get a new token", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(token.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

fn starting(path: &str) -> Response {
    let body = if path == "/healthz" {
        serde_json::json!({"status": "starting"})
    } else {
        serde_json::json!({"error": {"code": "starting", "message": "hale is starting; retry shortly"}})
    };
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(body),
    )
        .into_response()
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Refuses a sandbox network policy that lets commands connect to hale's
/// own API: `[tools.sandbox] network = { tcp = [...] }` must not list the
/// port `hale serve` listens on (only `hale serve` knows that port, so
/// this is checked when it starts, as a configuration error).
///
/// # Errors
/// The port is listed.
pub fn check_sandbox_ports(
    network: &hale_actors::builtin::NetworkPolicy,
    listen_port: u16,
) -> Result<()> {
    if let hale_actors::builtin::NetworkPolicy::Tcp(ports) = network
        && ports.contains(&listen_port)
    {
        anyhow::bail!(
            "tools.sandbox.network: tcp port {listen_port} is hale's own listen port; \
             exec must not reach hale's API (remove it from the list)"
        );
    }
    Ok(())
}

/// Runs `hale serve` until SIGINT or SIGTERM.
///
/// # Errors
/// A bad configuration, a data directory in use, an address that cannot
/// be bound, or a runtime that fails to start or stop.
pub async fn run(options: ServeOptions) -> Result<()> {
    let mut config = options
        .config
        .runtime_config()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    config.secrets = options.secrets.clone();
    let data_dir = config.data_dir.clone();
    // Made with its final mode, so a fresh directory is never open to
    // others; an existing one is tightened (with a warning) by the runtime.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(crate::data_dir::data_dir_mode())
        .create(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let token = ensure_token(&data_dir.join("token"))?;
    // An agent that learned the token must not use it through web_fetch.
    config
        .builtin
        .web_fetch
        .forbidden_values
        .push(token.clone());
    // Masked from the first log line on (the runtime would add it at start).
    let _ = config.secrets.add(&token);
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding {}", options.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    check_sandbox_ports(&config.builtin.exec.sandbox.network, local.port())?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{local}");
        let _ = out.flush();
    }

    let slot: Arc<OnceLock<Router>> = Arc::new(OnceLock::new());
    let routes = Arc::clone(&slot);
    let app = Router::new().fallback_service(tower::service_fn(move |request: Request| {
        let routes = Arc::clone(&routes);
        async move {
            match routes.get() {
                Some(router) => router.clone().oneshot(request).await,
                None => Ok(starting(request.uri().path())),
            }
        }
    }));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stopped = stop_rx.clone();
    // Bounded before the runtime starts: the listener is open from the
    // first moment, so its limits must be too.
    let listener = crate::conn_limits::LimitedListener::new(
        listener,
        crate::conn_limits::ConnLimits::from(&config.serve),
    );
    let server = tokio::spawn(async move {
        crate::conn_limits::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    });

    let runtime = tokio::select! {
        started = crate::runtime::Runtime::start(config) => started.context("starting the runtime")?,
        () = shutdown_signal() => {
            let _ = stop_tx.send(true);
            let _ = server.await;
            return Ok(());
        }
    };
    let (router, _doc) = api::router(ApiState {
        runtime: runtime.clone(),
        token: Arc::from(token.as_str()),
        allow_chaos: options.allow_chaos,
    });
    let _ = slot.set(router);
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "exec sandbox: {}", runtime.sandbox());
        let _ = out.flush();
    }
    tracing::info!(%local, sandbox = %runtime.sandbox(), "serving");

    shutdown_signal().await;
    tracing::info!("shutting down: no new requests; draining");
    let _ = stop_tx.send(true);
    // Live event streams never end on their own: bound the drain.
    let _ = tokio::time::timeout(options.drain, server).await;
    runtime.shutdown().await.context("stopping the runtime")?;
    drop(stop_rx);
    Ok(())
}
