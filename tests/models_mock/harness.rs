//! The two processes every test here runs: aimock (the third-party mock
//! LLM server, npm `@copilotkit/aimock`) with the test's fixtures, and
//! `hale serve` configured with aimock as its model endpoints; plus the
//! readers of what both recorded (aimock's journal, hale's audit trail,
//! session resource, metrics and live events).
//!
//! Both are started on 127.0.0.1 with port 0 (each prints the port it
//! took), waited for within a bound, and killed on drop: aimock as a
//! process group, so no node process outlives a test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "../support/deps.rs"]
mod deps;

/// How long a process may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The aimock CLI, installed on first use; `None` (after saying why) when
/// it cannot be installed outside CI. Under `CI=true` it fails the test.
pub fn aimock_cli() -> Option<PathBuf> {
    static CLI: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    deps::required(CLI.get_or_init(deps::aimock_cli), "aimock (npm)").cloned()
}

/// Reads `child`'s stdout on a thread until a line starting with `prefix`
/// appears (returning the rest of that line), within [`START_TIMEOUT`];
/// later lines are drained so the child never blocks on a full pipe.
fn wait_for_line(
    child: &mut Child,
    what: &str,
    find: impl Fn(&str) -> Option<String> + Send + 'static,
) -> String {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if !sent && let Some(found) = find(&line) {
                let _ = tx.send(found);
                sent = true;
            }
        }
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(found) => found,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not start within {START_TIMEOUT:?}")
        }
    }
}

/// One aimock process serving the fixtures in `fixtures`; killed (its
/// whole process group) on drop.
pub struct Aimock {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Aimock {
    /// Starts aimock with `fixtures` (the value of a fixture file's
    /// `"fixtures"` array) and extra CLI `flags`; `None` when aimock is not
    /// installed and cannot be (outside CI). Its log level stays `info`:
    /// the line naming the port it took is logged at that level.
    pub fn start(fixtures: Value, flags: &[&str]) -> Option<Self> {
        let cli = aimock_cli()?;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fixtures.json");
        std::fs::write(&file, json!({ "fixtures": fixtures }).to_string()).unwrap();
        let mut command = Command::new("node");
        command
            .arg(&cli)
            // An unbounded journal: the tests read every request.
            .args(["-h", "127.0.0.1", "-p", "0", "--log-level", "info"])
            .args(["--journal-max", "0", "-f"])
            .arg(&file)
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().expect("node runs (Node >= 20.15 on PATH)");
        let url = wait_for_line(&mut child, "aimock", |line| {
            line.split_once("listening on ")
                .map(|(_, url)| url.trim().to_owned())
        });
        Some(Self {
            child,
            url,
            http: reqwest::Client::new(),
            _dir: dir,
        })
    }

    /// The base URL an OpenAI-compatible client is given (with `/v1`).
    pub fn openai_url(&self) -> String {
        format!("{}/v1", self.url)
    }

    /// Every request aimock recorded, oldest first.
    pub async fn journal(&self) -> Vec<JournalEntry> {
        let entries: Value = self
            .http
            .get(format!("{}/__aimock/journal", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        entries
            .as_array()
            .expect("the journal is an array")
            .iter()
            .map(JournalEntry::from)
            .collect()
    }

    /// Forgets the journal (`/__aimock/reset/journal`; a full
    /// `/__aimock/reset` would drop the fixtures loaded from the file too).
    pub async fn reset_journal(&self) {
        let status = self
            .http
            .post(format!("{}/__aimock/reset/journal", self.url))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "reset: {status}");
    }

    /// Queues a one-shot error answer for the next request.
    pub async fn queue_error(&self, status: u16) {
        let answer = self
            .http
            .post(format!("{}/__aimock/error", self.url))
            .json(&json!({ "status": status, "body": { "message": "one-shot", "type": "server_error" } }))
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().is_success(),
            "{}",
            answer.text().await.unwrap()
        );
    }

    /// A raw request to aimock (the tests that check aimock itself).
    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.try_post(path, body).await.unwrap()
    }

    /// [`Aimock::post`] for answers that may break off.
    pub async fn try_post(&self, path: &str, body: Value) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
    }
}

impl Drop for Aimock {
    fn drop(&mut self) {
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{pgid}")])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request as aimock's journal recorded it.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    /// When aimock handled it (ms since the epoch, aimock's `Date.now()`;
    /// for a stream, when the answer began, before its first chunk).
    pub at_ms: i64,
    /// `/v1/chat/completions` or `/v1/messages`.
    pub path: String,
    /// The model id the request named.
    pub model: String,
    /// Whether the request asked for a stream.
    pub stream: bool,
    /// Whether it asked for usage in the stream (`stream_options`).
    pub include_usage: bool,
    /// The text of the last user message.
    pub user: String,
    /// The status answered (0 when the connection was destroyed first).
    pub status: u64,
    /// Whether aimock cut the answer off (truncation, disconnect).
    pub interrupted: bool,
    /// The chaos action applied, if any (`malformed`, `disconnect`, ...).
    pub chaos: Option<String>,
    /// The usage the matched fixture declares (`prompt_tokens`,
    /// `completion_tokens`), if any.
    pub fixture_usage: Option<(u64, u64)>,
}

impl From<&Value> for JournalEntry {
    fn from(e: &Value) -> Self {
        let body = &e["body"];
        let user = body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .map(|m| match &m["content"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default();
        let usage = &e["response"]["fixture"]["response"]["usage"];
        Self {
            at_ms: e["timestamp"].as_i64().unwrap_or_default(),
            path: e["path"].as_str().unwrap_or_default().to_owned(),
            model: body["model"].as_str().unwrap_or_default().to_owned(),
            stream: body["stream"].as_bool().unwrap_or(false),
            include_usage: body["stream_options"]["include_usage"]
                .as_bool()
                .unwrap_or(false),
            user,
            status: e["response"]["status"].as_u64().unwrap_or_default(),
            interrupted: e["response"]["interrupted"].as_bool().unwrap_or(false),
            chaos: e["response"]["chaosAction"].as_str().map(str::to_owned),
            fixture_usage: usage["prompt_tokens"]
                .as_u64()
                .map(|p| (p, usage["completion_tokens"].as_u64().unwrap_or(0))),
        }
    }
}

/// One `[[models]]` table pointing at aimock.
#[derive(Debug, Clone)]
pub struct MockModel {
    /// hale's name for it.
    pub name: String,
    /// `openai` or `anthropic`.
    pub provider: &'static str,
    /// The model id sent to aimock (what its fixtures match on).
    pub model: String,
    /// Extra `key = value` lines (see `pending.rs` for keys that do not
    /// exist yet).
    pub extra: Vec<String>,
}

impl MockModel {
    /// An OpenAI-compatible model `name` asking aimock for `model`.
    pub fn openai(name: &str, model: &str) -> Self {
        Self {
            name: name.to_owned(),
            provider: "openai",
            model: model.to_owned(),
            extra: Vec::new(),
        }
    }

    /// An Anthropic model `name` asking aimock for `model`.
    pub fn anthropic(name: &str, model: &str) -> Self {
        Self {
            name: name.to_owned(),
            provider: "anthropic",
            model: model.to_owned(),
            extra: Vec::new(),
        }
    }

    /// With an extra `key = value` line.
    pub fn with(mut self, line: impl Into<String>) -> Self {
        self.extra.push(line.into());
        self
    }

    fn toml(&self, mock: &Aimock) -> String {
        let base = if self.provider == "openai" {
            mock.openai_url()
        } else {
            mock.url.clone()
        };
        let mut t = format!(
            "[[models]]\nname = {:?}\nprovider = {:?}\nbase_url = {:?}\nmodel = {:?}\ntimeout = \"20s\"\nmax_tokens = 256\n",
            self.name, self.provider, base, self.model
        );
        for line in &self.extra {
            t.push_str(line);
            t.push('\n');
        }
        t
    }
}

/// `hale serve` on a free loopback port with `models` (all at `mock`)
/// and one agent `mock` using them in order; killed on drop.
pub struct Hale {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    token: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Hale {
    /// Starts hale with `models` at `mock`, the agent `mock` falling back
    /// through them in order, and `extra` TOML appended.
    pub async fn start(mock: &Aimock, models: &[MockModel], extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut config = String::new();
        for m in models {
            config.push_str(&m.toml(mock));
        }
        let names: Vec<String> = models.iter().map(|m| format!("{:?}", m.name)).collect();
        config.push_str(&format!(
            "[[agents]]\nname = \"mock\"\nmodels = [{}]\ntools = []\nmcp = []\n",
            names.join(", ")
        ));
        // One agent per model too (`only-<name>`), for tests that ask each.
        for name in &names {
            config.push_str(&format!(
                "[[agents]]\nname = \"only-{}\"\nmodels = [{name}]\ntools = []\nmcp = []\n",
                name.trim_matches('"')
            ));
        }
        config.push_str(extra);
        let file = dir.path().join("hale.toml");
        std::fs::write(&file, &config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_hale"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&file)
            .arg("--data-dir")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A config hale refuses ends the process: say why, with the config.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if all.len() < 16 * 1024 {
                    all.push_str(&line);
                    all.push('\n');
                }
            }
            let _ = tx.send(all);
        });
        let (found_tx, found_rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = found_tx.send(url.trim().to_owned());
                }
            }
        });
        let url = match found_rx.recv_timeout(START_TIMEOUT) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
                panic!("hale serve did not start.\nconfig:\n{config}\nstderr:\n{stderr}");
            }
        };
        let token = std::fs::read_to_string(data.join("token"))
            .unwrap()
            .trim()
            .to_owned();
        let hale = Self {
            child,
            url,
            token,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .unwrap(),
            _dir: dir,
        };
        // Ready once /healthz says so (it answers 503 while starting).
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let health = hale.http.get(format!("{}/healthz", hale.url)).send().await;
            if health.is_ok_and(|h| h.status().is_success()) {
                return hale;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "hale serve did not become healthy within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET path` as JSON.
    pub async fn get(&self, path: &str) -> Value {
        let answer = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap();
        assert!(status.is_success(), "GET {path}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A new session of agent `mock` (every model, in order); its id.
    pub async fn session(&self) -> String {
        self.session_of("mock").await
    }

    /// A new session of `agent` (`only-<model>` asks that model alone).
    pub async fn session_of(&self, agent: &str) -> String {
        let answer = self.post("/v1/sessions", json!({ "agent": agent })).await;
        answer["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id: {answer}"))
            .to_owned()
    }

    /// `POST path` with a JSON body; the answer as JSON, whatever its status.
    async fn post(&self, path: &str, body: Value) -> Value {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Sends `text` to `session` and waits (up to 60 s) for it to finish:
    /// the message resource.
    pub async fn ask(&self, session: &str, text: &str) -> Value {
        let answer = self
            .http
            .post(format!(
                "{}/v1/sessions/{session}/messages?wait=60",
                self.url
            ))
            .bearer_auth(&self.token)
            .json(&json!({ "text": text }))
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let body: Value = answer.json().await.unwrap();
        assert_eq!(
            status,
            reqwest::StatusCode::OK,
            "not done within 60 s: {body}"
        );
        body
    }

    /// Audit events of `kind`, oldest first.
    pub async fn events(&self, kind: &str) -> Vec<AuditEvent> {
        let events = self
            .get(&format!("/v1/logs?kind={kind}&limit=10000&level=debug"))
            .await;
        let mut events: Vec<AuditEvent> = events
            .as_array()
            .expect("an array of events")
            .iter()
            .map(AuditEvent::from)
            .collect();
        events.sort_by_key(|e| (e.at_ms, e.id));
        events
    }

    /// The live event stream (`/v1/events`), optionally for one session.
    pub async fn live(&self, session: Option<&str>) -> Live {
        let query = session.map(|s| format!("?session={s}")).unwrap_or_default();
        let response = self
            .http
            .get(format!("{}/v1/events{query}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        Live {
            response,
            buffer: String::new(),
        }
    }

    /// Sends `text` without waiting; the message id.
    pub async fn send(&self, session: &str, text: &str) -> String {
        let answer = self
            .post(
                &format!("/v1/sessions/{session}/messages"),
                json!({ "text": text }),
            )
            .await;
        answer["message_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no message id: {answer}"))
            .to_owned()
    }
}

impl Drop for Hale {
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

/// One audit event, as `/v1/logs` shows it.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// Its store id (emission order).
    pub id: u64,
    /// Its timestamp, ms since the epoch (with sub-ms kept in `at_us`).
    pub at_ms: i64,
    /// Microseconds since the epoch.
    pub at_us: i64,
    /// Who emitted it (`model/<name>` for a model endpoint).
    pub source: String,
    /// Its session, if any.
    pub session: Option<String>,
    /// Its failure code, if any.
    pub code: Option<String>,
    /// Its data.
    pub data: Value,
}

/// Microseconds since the epoch, now.
pub fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

/// Microseconds since the epoch of an RFC 3339 timestamp.
pub fn micros(rfc3339: &str) -> i64 {
    let t: jiff::Timestamp = rfc3339
        .parse()
        .unwrap_or_else(|e| panic!("not a timestamp {rfc3339:?}: {e}"));
    t.as_microsecond()
}

impl From<&Value> for AuditEvent {
    fn from(e: &Value) -> Self {
        let at_us = micros(e["timestamp"].as_str().expect("a timestamp"));
        Self {
            id: e["id"].as_u64().unwrap_or_default(),
            at_ms: at_us / 1000,
            at_us,
            source: e["source"].as_str().unwrap_or_default().to_owned(),
            session: e["session"].as_str().map(str::to_owned),
            code: e["code"].as_str().map(str::to_owned),
            data: e["data"].clone(),
        }
    }
}

/// A `/v1/events` stream being read.
pub struct Live {
    response: reqwest::Response,
    buffer: String,
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    /// Its `event:` name.
    pub name: String,
    /// Its `data:`, parsed.
    pub data: Value,
}

impl Live {
    /// The next event, or `None` when the stream ends or `within` passes.
    pub async fn next(&mut self, within: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(Sse { name, data });
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// The `hale_model_tokens_total{model,kind}` samples of a `/metrics` text.
pub fn token_samples(metrics: &str) -> Vec<(String, String, u64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with("hale_model_tokens_total{"))
        .filter_map(|l| {
            let (labels, value) = l.split_once("} ")?;
            let label = |key: &str| {
                labels
                    .split(',')
                    .find_map(|kv| {
                        kv.trim_start_matches("hale_model_tokens_total{")
                            .strip_prefix(&format!("{key}=\""))
                    })
                    .map(|v| v.trim_end_matches('"').to_owned())
            };
            Some((
                label("model")?,
                label("kind")?,
                value.trim().parse::<f64>().ok()? as u64,
            ))
        })
        .collect()
}
