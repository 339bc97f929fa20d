//! What the tool-layer tests need from the machine: the `hale` binary (for
//! `hale fault-mcp`), and the real MCP servers from npm and PyPI,
//! installed on first use.
//!
//! The real servers are pinned and installed into `.test-deps/` at the
//! workspace root under the file lock of `tests/support/deps.rs`, so the
//! test binaries that cargo runs in parallel do not race, and later runs
//! reuse them without a network. When they cannot be installed the tests
//! that need them fail with the reason under `CI=true`, and are reported
//! as skipped otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hale::actors::mcp::McpServerConfig;

#[path = "../support/deps.rs"]
mod deps;

/// The npm servers, pinned.
const NPM_PACKAGES: &[&str] = &[
    "@modelcontextprotocol/server-everything@2026.8.31",
    "@modelcontextprotocol/server-filesystem@2026.8.31",
];
/// The PyPI server, pinned.
const PYPI_PACKAGES: &[&str] = &["mcp-server-time==2026.10.19"];

/// The `hale` binary cargo built for these tests.
pub fn hale_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hale"))
}

/// A stdio config running `hale fault-mcp` with `args`, with timeouts
/// short enough for tests.
pub fn fault_server(name: &str, args: &[&str]) -> McpServerConfig {
    let mut all = vec!["fault-mcp".to_owned(), "--name".to_owned(), name.to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    quick(McpServerConfig::stdio(name, hale_bin(), all))
}

/// Test-sized timeouts and restart delays.
pub fn quick(mut config: McpServerConfig) -> McpServerConfig {
    config.request_timeout = Duration::from_secs(10);
    config.connect_timeout = Duration::from_secs(15);
    config.restart_min = Duration::from_millis(50);
    config.restart_max = Duration::from_millis(400);
    config.probe_after = Duration::from_millis(300);
    config
}

/// Where the real servers live once installed.
#[derive(Debug)]
pub struct RealServers {
    npm: PathBuf,
    venv: PathBuf,
}

impl RealServers {
    /// `server-everything`'s entry point.
    pub fn everything(&self) -> PathBuf {
        self.npm
            .join("node_modules/@modelcontextprotocol/server-everything/dist/index.js")
    }

    /// `server-filesystem`'s entry point.
    pub fn filesystem(&self) -> PathBuf {
        self.npm
            .join("node_modules/@modelcontextprotocol/server-filesystem/dist/index.js")
    }

    /// `mcp-server-time`'s executable.
    pub fn time(&self) -> PathBuf {
        self.venv.join("bin/mcp-server-time")
    }
}

/// The real servers, installing them on first use; `None` (after saying
/// why) when they cannot be installed outside CI. Under `CI=true` a
/// failed install fails the test.
pub fn real_servers() -> Option<&'static RealServers> {
    static SERVERS: OnceLock<Result<RealServers, String>> = OnceLock::new();
    deps::required(SERVERS.get_or_init(install), "the real MCP servers")
}

fn install() -> Result<RealServers, String> {
    deps::locked(|dir| {
        let servers = RealServers {
            npm: dir.join("npm"),
            venv: dir.join("venv"),
        };
        let wanted = format!(
            "{}\n{}\n",
            NPM_PACKAGES.join("\n"),
            PYPI_PACKAGES.join("\n")
        );
        let marker = dir.join("installed.txt");
        let present = || {
            servers.everything().exists()
                && servers.filesystem().exists()
                && servers.time().exists()
        };
        if present() && deps::installed(&marker, &wanted) {
            return Ok(servers);
        }
        eprintln!(
            "installing the test MCP servers into {} (first run only; needs npm and python3)",
            dir.display()
        );
        let started = Instant::now();
        let mut npm = Command::new("npm");
        npm.arg("install")
            .arg("--prefix")
            .arg(&servers.npm)
            .args(["--no-audit", "--no-fund", "--no-save", "--loglevel=error"])
            .args(NPM_PACKAGES);
        deps::run(npm, "npm install")?;
        deps::pip_install(&servers.venv, PYPI_PACKAGES)?;
        if !present() {
            return Err(format!(
                "the installs finished but the servers are missing under {}",
                dir.display()
            ));
        }
        deps::mark_installed(&marker, &wanted)?;
        eprintln!(
            "installed the test MCP servers in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(servers)
    })
}

/// Sends SIGKILL to the whole process group `pgid`.
pub fn kill_group(pgid: u32) {
    let status = Command::new("kill")
        .args(["-9", "--", &format!("-{pgid}")])
        .status();
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "kill -9 -{pgid}: {status:?}"
    );
}

/// Whether a process with this pid still exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            // The state is the field after the parenthesised command name.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Lines in a `--calls-file`.
pub fn calls_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}
