//! Installing what the tests need from package registries, once: the real
//! MCP servers (tests/tool_layer), schemathesis (tests/contract.rs) and the
//! mock LLM server aimock (tests/models_mock).
//!
//! Shared so every installer follows the same rules: pinned versions, a
//! directory under `.test-deps/` at the workspace root (or
//! `$HALE_TEST_DEPS`), one file lock over all of it so the test binaries
//! cargo runs in parallel do not race, a marker naming the pins so a later
//! run reuses the install without a network, every command bounded in
//! time, and a failed install that fails the test under `CI=true` and
//! skips it (saying why) otherwise.

#![allow(dead_code)] // each test binary uses its part

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one install command may take before it is killed.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where test dependencies are installed.
pub fn deps_dir() -> PathBuf {
    std::env::var_os("HALE_TEST_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".test-deps"))
}

/// Runs `install` with the install lock held (other test binaries wait
/// while one installs), in the dependencies directory.
///
/// # Errors
/// The directory or the lock cannot be had, or `install` failed.
pub fn locked<T>(install: impl FnOnce(&Path) -> Result<T, String>) -> Result<T, String> {
    let dir = deps_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(|e| format!("cannot open the install lock: {e}"))?;
    // Held until this function returns.
    lock.lock()
        .map_err(|e| format!("cannot take the install lock: {e}"))?;
    install(&dir)
}

/// Whether the install recorded in `marker` is the one `wanted`.
pub fn installed(marker: &Path, wanted: &str) -> bool {
    std::fs::read_to_string(marker).is_ok_and(|m| m == wanted)
}

/// Records that `wanted` is installed.
///
/// # Errors
/// The marker cannot be written.
pub fn mark_installed(marker: &Path, wanted: &str) -> Result<(), String> {
    File::create(marker)
        .and_then(|mut f| f.write_all(wanted.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))
}

/// A Python virtualenv at `venv` holding `packages` (pinned) with pip.
///
/// # Errors
/// `python3 -m venv` or `pip install` failed or took too long.
pub fn pip_install(venv: &Path, packages: &[&str]) -> Result<(), String> {
    if !venv.join("bin/python").exists() {
        let mut make = Command::new("python3");
        make.args(["-m", "venv"]).arg(venv);
        run(make, "python3 -m venv")?;
    }
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args(["install", "--quiet", "--disable-pip-version-check"])
        .args(packages);
    run(pip, "pip install")
}

/// The result of an install as the test should take it: `Some` when it
/// worked; a panic with the reason under `CI=true`; `None` after saying
/// why otherwise (the caller returns: the test is skipped).
pub fn required<'a, T>(result: &'a Result<T, String>, what: &str) -> Option<&'a T> {
    match result {
        Ok(value) => Some(value),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{what} could not be installed (CI=true, so this fails): {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: {what} could not be installed: {why}");
            None
        }
    }
}

/// Runs `command` to completion within [`INSTALL_TIMEOUT`], with its
/// output passed through so a slow install shows progress.
///
/// # Errors
/// It could not start, failed, or took too long (then it is killed).
pub fn run(mut command: Command, what: &str) -> Result<(), String> {
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

/// The mock LLM server `@copilotkit/aimock`, pinned (tests/models_mock).
pub const AIMOCK_PACKAGE: &str = "@copilotkit/aimock@1.43.0";

/// `npm install`s `packages` (pinned) into `prefix`, bounded in time.
///
/// # Errors
/// npm could not start, failed, or took too long.
pub fn npm_install(prefix: &Path, packages: &[&str]) -> Result<(), String> {
    let mut npm = Command::new("npm");
    npm.arg("install")
        .arg("--prefix")
        .arg(prefix)
        .args(["--no-audit", "--no-fund", "--no-save", "--loglevel=error"])
        .args(packages);
    run(npm, "npm install")
}

/// aimock's flag-driven CLI (`llmock`: `node <this> -p PORT -f FIXTURES`),
/// installed on first use into `<deps>/aimock` with a marker of its own,
/// so it neither waits for nor disturbs the MCP servers' install; later
/// runs reuse it without a network.
///
/// # Errors
/// npm is missing or the install failed (see [`required`]).
pub fn aimock_cli() -> Result<PathBuf, String> {
    locked(|dir| {
        let prefix = dir.join("aimock");
        let cli = prefix.join("node_modules/@copilotkit/aimock/dist/cli.js");
        let marker = dir.join("aimock-installed.txt");
        let wanted = format!("{AIMOCK_PACKAGE}\n");
        if cli.exists() && installed(&marker, &wanted) {
            return Ok(cli);
        }
        eprintln!(
            "installing {AIMOCK_PACKAGE} into {} (first run only; needs npm)",
            prefix.display()
        );
        let started = Instant::now();
        npm_install(&prefix, &[AIMOCK_PACKAGE])?;
        if !cli.exists() {
            return Err(format!(
                "npm install finished but {} is missing",
                cli.display()
            ));
        }
        mark_installed(&marker, &wanted)?;
        eprintln!(
            "installed {AIMOCK_PACKAGE} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(cli)
    })
}
