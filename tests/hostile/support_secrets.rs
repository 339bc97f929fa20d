//! Helpers of the secrets tests: a runtime in a temporary data directory
//! with the scripted model, plans, and readers of everything hale keeps.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use hale::actors::event::Event;
use hale::actors::store::{
    EventFilter, EventQuery, MessageRecord, MessageState, Order, SessionStore, Store,
};
use hale::runtime::{Runtime, RuntimeConfig};
use serde_json::{Value, json};

/// How long a message may take.
pub const WAIT: Duration = Duration::from_secs(60);

/// A configuration for tests: data in `<dir>/data`, quick retries,
/// approvals that stay open long enough to be answered.
pub fn config(dir: &Path) -> RuntimeConfig {
    let mut config = RuntimeConfig::new(dir.join("data"));
    // The sandbox on, as in production: the built binary is its wrapper.
    config.builtin.exec.sandbox.helper = Some(PathBuf::from(env!("CARGO_BIN_EXE_hale")));
    config.dispatch.retry.base = Duration::from_millis(20);
    config.dispatch.retry.max_delay = Duration::from_millis(200);
    config.sessions.approval_timeout = Duration::from_secs(60);
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
pub async fn ask(runtime: &Runtime, session: &str, text: &str) -> MessageRecord {
    crate::support::ask(runtime, session, text, WAIT).await
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

/// Every audit event, oldest first (what `/v1/logs` serves).
pub async fn logs(runtime: &Runtime) -> Vec<Event> {
    runtime
        .logs(EventQuery {
            filter: EventFilter::default(),
            order: Order::InsertedAfter(0),
            limit: 1_000_000,
        })
        .await
        .expect("logs query failed")
}

/// The stored approvals table, as JSON text.
pub async fn approvals_table(runtime: &Runtime) -> String {
    let rows = runtime.store().approvals(None).await.expect("approvals");
    serde_json::to_string(&rows).unwrap()
}

/// A session's journal, every entry.
pub async fn journal(runtime: &Runtime, session: &str) -> String {
    runtime
        .store()
        .journal_entries(session.to_owned())
        .await
        .expect("journal")
        .into_iter()
        .map(|r| r.entry)
        .collect::<Vec<_>>()
        .join("\n")
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

/// The permission bits of `path`.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The bytes of `hale.db` and the WAL files beside it that exist.
pub fn database_bytes(db: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    hale::actors::store::database_files(db)
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|bytes| (p, bytes)))
        .collect()
}

/// Whether `haystack` holds `needle`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The mode the data directory should have: 0700, or 0711 when `exec`
/// runs as another user (hale as root) who must reach the workspace.
pub fn data_dir_mode(runtime: &Runtime) -> u32 {
    if runtime.config().builtin.exec.sandbox.user.is_some() {
        0o711
    } else {
        0o700
    }
}
