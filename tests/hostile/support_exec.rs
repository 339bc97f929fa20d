//! Helpers of the `exec` sandbox attacks: a runtime in a temporary data
//! directory with the sandbox on (the built hale binary as its wrapper),
//! and `hale serve` as a child process with secrets in its environment.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hale::actors::store::{MessageRecord, MessageState};
use hale::runtime::{Runtime, RuntimeConfig};
use serde_json::{Value, json};

pub use crate::support::{hale_bin, start};

/// A runtime configuration with the sandbox on (the default mode) and the
/// built binary as its helper.
pub fn config(dir: &Path) -> RuntimeConfig {
    let mut config = RuntimeConfig::new(dir.join("data"));
    config.builtin.exec.sandbox.helper = Some(hale_bin());
    config.sessions.approval_timeout = Duration::from_secs(60);
    config
}

/// A scripted plan of `exec` commands.
pub fn exec_plan(commands: &[&str]) -> String {
    let steps: Vec<Value> = commands
        .iter()
        .map(|c| json!({ "tool": "exec", "args": { "command": c, "timeout_ms": 20_000 } }))
        .collect();
    json!({ "steps": steps, "reply": "done" }).to_string()
}

/// Sends and waits (bounded), returning the finished message.
pub async fn ask(runtime: &Runtime, session: &str, text: &str) -> MessageRecord {
    let (id, record) = runtime
        .send_and_wait(session, text, Duration::from_secs(90))
        .await
        .expect("send failed");
    record.unwrap_or_else(|| panic!("message {id} did not finish"))
}

/// The step outcomes of a scripted reply.
pub fn steps_of(record: &MessageRecord) -> Vec<Value> {
    assert_eq!(
        record.state,
        MessageState::Done,
        "message not done: {record:?}"
    );
    let reply: Value = serde_json::from_str(record.reply.as_deref().unwrap_or("null")).unwrap();
    reply["steps"].as_array().cloned().unwrap()
}

/// A step's stdout and stderr together.
pub fn output(step: &Value) -> String {
    format!(
        "{}{}",
        step["data"]["stdout"].as_str().unwrap_or_default(),
        step["data"]["stderr"].as_str().unwrap_or_default()
    )
}

/// hale still serves: a plain message in a fresh session is answered.
pub async fn still_serves(runtime: &Runtime) {
    let session = runtime.sessions().create("default", None).await.unwrap();
    let record = ask(runtime, &session, "hello").await;
    assert_eq!(record.state, MessageState::Done, "{record:?}");
    assert!(record.reply.is_some(), "{record:?}");
}

/// `hale serve` on a free loopback port with `env` added to its
/// environment; killed on drop.
pub struct Served {
    child: Child,
    pub url: String,
    pub data: PathBuf,
    pub port: u16,
    pub client: reqwest::Client,
    pub start_lines: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Served {
    pub fn start(env: &[(&str, &str)], toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = dir.path().join("hale.toml");
        std::fs::write(&config, toml).unwrap();
        let mut command = Command::new(hale_bin());
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        let mut second = String::new();
        stdout.read_line(&mut second).unwrap();
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        Self {
            child,
            url,
            data,
            port,
            client: reqwest::Client::new(),
            start_lines: vec![line.trim().to_owned(), second.trim().to_owned()],
            _dir: dir,
        }
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub async fn get(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(self.token())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .client
            .post(format!("{}{path}", self.url))
            .bearer_auth(self.token())
            .json(&body)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// Sends `text` to a new session and waits for the finished message.
    pub async fn ask(&self, text: &str) -> Value {
        let session = self.post("/v1/sessions", json!({})).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let message = self
            .post(
                &format!("/v1/sessions/{session}/messages?wait=90"),
                json!({ "text": text }),
            )
            .await;
        assert_eq!(message["status"], "done", "{message}");
        message
    }

    /// Waits (bounded) until the API answers.
    pub async fn ready(&self) {
        for _ in 0..500 {
            let ok = self
                .client
                .get(format!("{}/v1/tree", self.url))
                .bearer_auth(self.token())
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("hale serve did not become ready");
    }
}

/// The step outcomes of a finished message's reply.
pub fn reply_steps(message: &Value) -> Vec<Value> {
    let reply: Value = serde_json::from_str(message["reply"].as_str().unwrap()).unwrap();
    reply["steps"].as_array().cloned().unwrap()
}

impl Drop for Served {
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
