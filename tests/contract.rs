//! The API contract, checked from outside: schemathesis (pinned, from
//! PyPI) reads `/v1/openapi.json` from a live `hale serve` and runs every
//! check it has against every route but `/v1/events` (a stream), with
//! examples, coverage cases, fuzzing and stateful sequences. Any status
//! the document omits, any request it allows that the server refuses (or
//! the reverse), any body off its schema and any 5xx fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/deps.rs"]
mod deps;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// schemathesis, pinned.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
/// Test cases per operation and phase: about 45 s on a 2-core machine.
const MAX_EXAMPLES: &str = "40";
/// The run is killed past this (it takes about 45 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// The seed, fixed so a failure reproduces; `HALE_CONTRACT_SEED` picks
/// another one to explore.
const DEFAULT_SEED: &str = "20261203";

fn hale() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hale"))
}

/// The `schemathesis` executable, installed on first use.
fn schemathesis() -> Option<&'static PathBuf> {
    static INSTALL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let install = INSTALL.get_or_init(|| {
        deps::locked(|dir| {
            let venv = dir.join("schemathesis");
            let bin = venv.join("bin/schemathesis");
            let marker = venv.join("installed.txt");
            let wanted = format!("{SCHEMATHESIS}\n");
            if bin.exists() && deps::installed(&marker, &wanted) {
                return Ok(bin);
            }
            eprintln!(
                "installing {SCHEMATHESIS} into {} (first run only; needs python3)",
                venv.display()
            );
            deps::pip_install(&venv, &[SCHEMATHESIS])?;
            if !bin.exists() {
                return Err(format!("pip finished but {} is missing", bin.display()));
            }
            deps::mark_installed(&marker, &wanted)?;
            Ok(bin)
        })
    });
    deps::required(install, "schemathesis")
}

/// `hale serve` with chaos enabled and one MCP server (the binary's own
/// fault-mcp), on a free loopback port; stopped on drop.
struct Server {
    child: Child,
    url: String,
    data: PathBuf,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = dir.path().join("hale.toml");
        std::fs::write(
            &config,
            format!(
                "[[mcp]]\nname = \"echo\"\ncommand = {:?}\nargs = [\"fault-mcp\", \"--name\", \"echo\"]\n",
                hale().display().to_string()
            ),
        )
        .unwrap();
        let stderr = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let mut child = Command::new(hale())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--allow-chaos",
                "--config",
            ])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        let server = Self {
            child,
            url,
            data,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.health() != Some(200) {
            assert!(Instant::now() < deadline, "hale serve did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// `GET /healthz`'s status, over a plain socket.
    fn health(&self) -> Option<u16> {
        let address = self.url.strip_prefix("http://")?;
        let mut stream = TcpStream::connect(address).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        answer.split_whitespace().nth(1)?.parse().ok()
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` until it exits or `timeout` passes (then kills it);
/// its exit code (`None` when killed) and what it printed.
fn run_bounded(mut command: Command, workdir: &Path, timeout: Duration) -> (Option<i32>, String) {
    let output = workdir.join("schemathesis.out");
    let file = std::fs::File::create(&output).unwrap();
    let mut child = command
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (code, std::fs::read_to_string(&output).unwrap_or_default())
}

#[test]
fn schemathesis_finds_nothing_against_a_live_server() {
    let Some(schemathesis) = schemathesis() else {
        return;
    };
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    // A send may wait for its reply: one second, not the 300 allowed.
    std::fs::write(
        work.path().join("schemathesis.toml"),
        "[parameters]\n\"query.wait\" = 1\n",
    )
    .unwrap();
    let seed = std::env::var("HALE_CONTRACT_SEED").unwrap_or_else(|_| DEFAULT_SEED.to_owned());
    let mut command = Command::new(schemathesis);
    command
        .arg("--config-file")
        .arg(work.path().join("schemathesis.toml"))
        .args(["run", "--checks", "all", "--exclude-path", "/v1/events"])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", server.token()),
        ])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", &seed])
        .args(["--request-timeout", "20", "--generation-database", "none"])
        // One worker: hypothesis describes its strategies with
        // `ast.parse`, which CPython 3.11 can fail from two threads at once
        // ("AST constructor recursion depth mismatch").
        .args(["--workers", "1", "--no-color"])
        .arg(format!("{}/v1/openapi.json", server.url))
        .env_remove("SCHEMATHESIS_HOOKS");
    let started = Instant::now();
    let (code, output) = run_bounded(command, work.path(), RUN_TIMEOUT);
    let took = started.elapsed();
    eprintln!("schemathesis took {:.1} s", took.as_secs_f64());
    assert_eq!(
        code,
        Some(0),
        "schemathesis failed (exit {code:?}, {:.1} s):\n{output}\n--- hale serve, last lines:\n{}",
        took.as_secs_f64(),
        server.log()
    );
    // Chaos kills, MCP restarts and model switches left it serving.
    assert_eq!(server.health(), Some(200), "{}", server.log());
}
