//! Helpers of the `web_fetch` hostile tests: a runtime in a temporary
//! directory with the scripted model, `hale serve` as a child process, and
//! loopback HTTP servers that record every request they get.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hale::actors::event::{Event, EventKind};
use hale::actors::store::{EventFilter, EventQuery, MessageRecord, MessageState, Order};
use hale::runtime::{Runtime, RuntimeConfig};
use serde_json::{Value, json};

pub use crate::support::{hale_bin, start};

/// How long one message may take.
pub const WAIT: Duration = Duration::from_secs(60);

/// A runtime configuration in `dir` with quick retries.
pub fn config(dir: &Path) -> RuntimeConfig {
    let mut config = RuntimeConfig::new(dir.join("data"));
    config.dispatch.retry.base = Duration::from_millis(20);
    config.dispatch.retry.max_delay = Duration::from_millis(200);
    config.sessions.approval_timeout = Duration::from_secs(60);
    config.builtin.web_fetch.timeout = Duration::from_secs(10);
    config
}

/// A scripted plan of `web_fetch` calls, one per argument object.
pub fn fetches(args: &[Value]) -> String {
    let steps: Vec<Value> = args
        .iter()
        .map(|a| json!({ "tool": "web_fetch", "args": a }))
        .collect();
    json!({ "steps": steps, "reply": "done" }).to_string()
}

/// Sends and waits (bounded), returning the finished message.
pub async fn ask(runtime: &Runtime, session: &str, text: &str) -> MessageRecord {
    let (id, record) = runtime
        .send_and_wait(session, text, WAIT)
        .await
        .expect("send failed");
    record.unwrap_or_else(|| panic!("message {id} did not finish within {WAIT:?}"))
}

/// The step outcomes of a scripted reply (the message must be done).
pub fn steps_of(record: &MessageRecord) -> Vec<Value> {
    assert_eq!(
        record.state,
        MessageState::Done,
        "message not done: {record:?}"
    );
    steps_of_reply(record.reply.as_deref().unwrap_or("null"))
}

/// The step outcomes in a scripted reply's text.
pub fn steps_of_reply(reply: &str) -> Vec<Value> {
    let reply: Value = serde_json::from_str(reply)
        .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {reply:?}"));
    reply["steps"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("reply has no steps: {reply}"))
}

/// Every event of a session, oldest first.
pub async fn events(runtime: &Runtime, session: &str) -> Vec<Event> {
    runtime
        .logs(EventQuery {
            filter: EventFilter {
                session: Some(session.to_owned()),
                ..EventFilter::default()
            },
            order: Order::InsertedAfter(0),
            limit: 1_000_000,
        })
        .await
        .expect("logs query failed")
}

/// The documented refusal: `PERMISSION_DENIED` at severity `error` (a
/// typed outcome, not an escalation), not retryable, with a hint naming
/// `[tools] web_fetch_allow`, and nothing fetched.
pub fn assert_refused(step: &Value) {
    assert_eq!(step["status"], "error", "{step}");
    assert_eq!(step["code"], "PERMISSION_DENIED", "{step}");
    assert_eq!(step["severity"], "error", "{step}");
    assert_eq!(step["retryable"], false, "{step}");
    assert_eq!(step["recoverable"], false, "{step}");
    assert!(
        step["hints"].to_string().contains("web_fetch_allow"),
        "no hint naming web_fetch_allow: {step}"
    );
    assert!(step["data"].get("body").is_none(), "{step}");
}

/// hale still serves the session: nothing was escalated, and a following
/// plain message is answered.
pub async fn still_serves(runtime: &Runtime, session: &str) {
    let open = runtime.approvals(true).await.unwrap();
    assert!(open.is_empty(), "escalated: {open:?}");
    let events = events(runtime, session).await;
    assert!(
        !events.iter().any(|e| e.kind == EventKind::EscalationOpened),
        "an escalation was opened"
    );
    let record = ask(runtime, session, "are you still there?").await;
    assert_eq!(record.state, MessageState::Done, "{record:?}");
    assert!(!record.reply.unwrap_or_default().is_empty());
}

/// What a [`Recorder`] answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `200 OK` with this body.
    Body(&'static str),
    /// `302 Found` to this location.
    Redirect(String),
    /// `302 Found` to this location for the first request, then `200 OK`.
    RedirectFirst(String),
}

/// A loopback HTTP/1.1 server (its own thread) that records the head of
/// every request it gets and answers each with the same reply.
pub struct Recorder {
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    /// Starts a recorder.
    pub fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let first = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(String::from_utf8_lossy(&head).to_lowercase());
                    seen.len() == 1
                };
                let redirect = match &reply {
                    Reply::Redirect(to) => Some(to),
                    Reply::RedirectFirst(to) if first => Some(to),
                    _ => None,
                };
                let answer = match (redirect, &reply) {
                    (Some(to), _) => format!(
                        "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    ),
                    (None, Reply::Body(body)) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    (None, _) => {
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                            .to_owned()
                    }
                };
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        Self { addr, heads }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The request heads received so far, lowercased.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// How many requests it got.
    pub fn hits(&self) -> usize {
        self.heads.lock().unwrap().len()
    }
}

/// `hale serve` as a child process on a free loopback port, with the
/// given `hale.toml` and extra environment; stopped on drop.
pub struct Serve {
    child: Child,
    /// The API's base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The data directory.
    pub data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Serve {
    /// Starts it and waits until it answers.
    pub fn start(config: &str, env: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let file = dir.path().join("hale.toml");
        std::fs::write(&file, config).unwrap();
        let mut command = Command::new(hale_bin());
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&file)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("HALE_TOKEN")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        let serve = Self {
            child,
            url,
            data,
            _dir: dir,
        };
        for _ in 0..500 {
            if serve.cli(&["tree", "--json"]).is_ok() {
                return serve;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("hale serve did not become ready");
    }

    /// Runs a CLI command against it; its JSON output, or its stderr.
    pub fn cli(&self, args: &[&str]) -> Result<Value, String> {
        let out = Command::new(hale_bin())
            .args(args)
            .args(["--url", &self.url, "--data-dir"])
            .arg(&self.data)
            .env_remove("HALE_TOKEN")
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The control-plane token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A new session's id.
    pub fn new_session(&self) -> String {
        let created = self.cli(&["new", "--json"]).unwrap();
        created["id"].as_str().unwrap().to_owned()
    }

    /// Sends `text` and waits for the answer: `{"status", "reply", ...}`.
    pub fn send(&self, session: &str, text: &str) -> Value {
        self.cli(&["send", session, text, "--wait", "60", "--json"])
            .unwrap()
    }

    /// hale still serves: no open approval, and a plain message is
    /// answered.
    pub fn still_serves(&self, session: &str) {
        let open = self.cli(&["approvals", "--json"]).unwrap();
        assert_eq!(open, json!([]), "escalated: {open}");
        let sent = self.send(session, "are you still there?");
        assert_eq!(sent["status"], "done", "{sent}");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
