//! Shared helpers of the runtime tests: a runtime in a temporary data
//! directory with the scripted model, plans, and readers of replies and
//! events.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use hale::actors::event::{Event, EventKind};
use hale::actors::store::{EventFilter, EventQuery, MessageRecord, MessageState, Order};
use hale::api::{ApiState, router};
use hale::runtime::{Runtime, RuntimeConfig};
use serde_json::{Value, json};

/// The `hale` binary cargo built for these tests.
pub fn hale_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hale"))
}

/// A configuration for tests: data in `dir`, quick retries, approvals
/// that stay open long enough for the test to answer them.
pub fn config(dir: &Path) -> RuntimeConfig {
    let mut config = RuntimeConfig::new(dir.join("data"));
    // `exec` runs through the sandbox wrapper, a subcommand of the hale
    // binary; this test binary is not it.
    config.builtin.exec.sandbox.helper = Some(hale_bin());
    config.dispatch.retry.base = Duration::from_millis(20);
    config.dispatch.retry.max_delay = Duration::from_millis(200);
    config.sessions.approval_timeout = Duration::from_secs(60);
    config.audit.queue_capacity = 1 << 20;
    config
}

/// Starts a runtime, bounded in time.
pub async fn start(config: RuntimeConfig) -> Runtime {
    tokio::time::timeout(Duration::from_secs(30), Runtime::start(config))
        .await
        .expect("runtime start timed out")
        .expect("runtime start failed")
}

/// A scripted plan.
pub fn plan(steps: Value) -> String {
    json!({ "steps": steps, "reply": "done" }).to_string()
}

/// A scripted plan with steps to run after an approval's decision.
pub fn plan_with_approval(steps: Value, on_approval: Value) -> String {
    json!({ "steps": steps, "reply": "done", "on_approval": on_approval }).to_string()
}

/// One step.
pub fn step(tool: &str, args: Value) -> Value {
    json!({ "tool": tool, "args": args })
}

/// Sends and waits (bounded), returning the finished message.
pub async fn ask(runtime: &Runtime, session: &str, text: &str, wait: Duration) -> MessageRecord {
    let (id, record) = runtime
        .send_and_wait(session, text, wait)
        .await
        .expect("send failed");
    match record {
        Some(record) => record,
        None => {
            use hale::actors::store::SessionStore;
            let message = runtime.sessions().message(&id).await;
            let journal = runtime.store().journal_entries(session.to_owned()).await;
            let tree = runtime.tree().await;
            let started = runtime.sessions().started();
            eprintln!("tree: {tree:#?}\nstarted: {started:?}");
            let events = events(runtime, None).await;
            let events: Vec<String> = events
                .iter()
                .map(|e| format!("{} {} {} {}", e.source, e.kind, e.message, e.data))
                .collect();
            panic!(
                "message {id} did not finish within {wait:?}\nmessage: {message:?}\n\
                 journal: {journal:#?}\nevents:\n{}",
                events.join("\n")
            )
        }
    }
}

/// The step outcomes of a scripted reply.
pub fn steps_of(record: &MessageRecord) -> Vec<Value> {
    assert_eq!(
        record.state,
        MessageState::Done,
        "message not done: {record:?}"
    );
    let reply: Value = serde_json::from_str(record.reply.as_deref().unwrap_or("null"))
        .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {:?}", record.reply));
    reply["steps"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("reply has no steps: {reply}"))
}

/// Every event of a session, oldest first.
pub async fn events(runtime: &Runtime, session: Option<&str>) -> Vec<Event> {
    runtime
        .logs(EventQuery {
            filter: EventFilter {
                session: session.map(str::to_owned),
                ..EventFilter::default()
            },
            order: Order::InsertedAfter(0),
            limit: 1_000_000,
        })
        .await
        .expect("logs query failed")
}

/// The events of one kind.
pub fn of_kind<'a>(events: &'a [Event], kind: &EventKind) -> Vec<&'a Event> {
    events.iter().filter(|e| &e.kind == kind).collect()
}

/// Waits until `f` returns `Some`, polling every 20 ms, up to `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes an executable shell script.
pub fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Lines of a file (empty if missing).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The bearer token of the API [`serve_api`] starts.
pub const API_TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Serves the HTTP API over `runtime` on a free loopback port (token
/// [`API_TOKEN`]): its base URL and a client with a 10 s timeout.
pub async fn serve_api(runtime: &Runtime) -> (String, reqwest::Client) {
    let (app, _doc) = router(ApiState {
        runtime: runtime.clone(),
        token: API_TOKEN.into(),
        allow_chaos: false,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    (base, client)
}
