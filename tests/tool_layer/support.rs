//! What the tool-layer tests need from the machine: the `hale` binary (for
//! `hale fault-mcp`), and the real MCP servers from npm and PyPI,
//! installed on first use.
//!
//! The real servers are pinned and installed into `.test-deps/` at the
//! workspace root under a file lock, so the test binaries that cargo runs
//! in parallel do not race, and later runs reuse them without a network.
//! When they cannot be installed the tests that need them fail with the
//! reason under `CI=true`, and are reported as skipped otherwise.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hale::actors::mcp::McpServerConfig;

/// The npm servers, pinned.
const NPM_PACKAGES: &[&str] = &[
    "@modelcontextprotocol/server-everything@2026.8.31",
    "@modelcontextprotocol/server-filesystem@2026.8.31",
];
/// The PyPI server, pinned.
const PYPI_PACKAGES: &[&str] = &["mcp-server-time==2026.10.19"];
/// How long one install command may take before it is killed.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

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
    match SERVERS.get_or_init(install) {
        Ok(servers) => Some(servers),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("the real MCP servers could not be installed (CI=true, so this fails): {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: the real MCP servers could not be installed: {why}");
            None
        }
    }
}

fn install() -> Result<RealServers, String> {
    let dir = std::env::var_os("HALE_TEST_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".test-deps"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(|e| format!("cannot open the install lock: {e}"))?;
    // Held until this function returns: other test binaries wait here
    // while one installs.
    lock.lock()
        .map_err(|e| format!("cannot take the install lock: {e}"))?;
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
    let present =
        servers.everything().exists() && servers.filesystem().exists() && servers.time().exists();
    if present && std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
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
    run(npm, "npm install")?;
    if !servers.venv.join("bin/python").exists() {
        let mut venv = Command::new("python3");
        venv.args(["-m", "venv"]).arg(&servers.venv);
        run(venv, "python3 -m venv")?;
    }
    let mut pip = Command::new(servers.venv.join("bin/pip"));
    pip.args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PYPI_PACKAGES);
    run(pip, "pip install")?;
    if !(servers.everything().exists() && servers.filesystem().exists() && servers.time().exists())
    {
        return Err(format!(
            "the installs finished but the servers are missing under {}",
            dir.display()
        ));
    }
    File::create(&marker)
        .and_then(|mut f| f.write_all(wanted.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    eprintln!(
        "installed the test MCP servers in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(servers)
}

/// Runs `command` to completion within [`INSTALL_TIMEOUT`], with its
/// output passed through so a slow install shows progress.
fn run(mut command: Command, what: &str) -> Result<(), String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{what} failed: {status}")),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what} took longer than {} s",
                    INSTALL_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
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
