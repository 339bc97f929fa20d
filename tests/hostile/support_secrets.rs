//! Helpers of the secrets tests: a runtime in a temporary data directory
//! with the scripted model, plans, and readers of everything hale keeps.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use hale::actors::event::Event;
use hale::actors::store::{EventFilter, EventQuery, MessageRecord, Order, SessionStore, Store};
use hale::runtime::{Runtime, RuntimeConfig};

pub use crate::support::{eventually, plan, plan_with_approval, script, start, step, steps_of};

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

/// Sends and waits (bounded), returning the finished message.
pub async fn ask(runtime: &Runtime, session: &str, text: &str) -> MessageRecord {
    crate::support::ask(runtime, session, text, WAIT).await
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
