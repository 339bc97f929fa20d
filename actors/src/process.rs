//! A hook for the child processes hale spawns, so that something outside
//! this crate can keep a durable ledger of them.
//!
//! `exec` and stdio MCP servers run as leaders of their own process groups
//! and kill the whole group when they are done with it. That covers every
//! exit of hale except its own crash: a `kill -9` of hale leaves the groups
//! running. The binary keeps a ledger of live groups in its data directory
//! and reaps what a crashed predecessor left at the next start; this crate
//! only reports spawns to it, through [`ProcessRecorder`], so it does not
//! depend on the binary.

use std::fmt;
use std::sync::Arc;

/// A record of one live process group. Dropping it says the group is gone
/// (killed or exited), so the recorder forgets it.
pub type ProcessRecord = Box<dyn Send + Sync>;

/// Told of every process group a tool spawns.
pub trait ProcessRecorder: Send + Sync + 'static {
    /// The process `pid`, leader of its own group, was started to run
    /// `command`. The returned record is held until the group has been
    /// killed or has exited; the recorder forgets the group when the
    /// record is dropped. A recorder that cannot record still returns a
    /// record (a no-op one): a failed ledger write must not stop a spawn.
    fn started(&self, pid: u32, command: &str) -> ProcessRecord;
}

/// An optional [`ProcessRecorder`], as configs carry it: none by default.
/// Two hooks are equal when both are absent or both point to the same
/// recorder.
#[derive(Clone, Default)]
pub struct ProcessHook(Option<Arc<dyn ProcessRecorder>>);

impl ProcessHook {
    /// A hook that reports to `recorder`.
    pub fn new(recorder: Arc<dyn ProcessRecorder>) -> Self {
        Self(Some(recorder))
    }

    /// Whether a recorder is set.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Reports a spawn; `None` when no recorder is set or the pid is
    /// unknown.
    pub fn started(&self, pid: Option<u32>, command: &str) -> Option<ProcessRecord> {
        let recorder = self.0.as_ref()?;
        Some(recorder.started(pid?, command))
    }
}

impl fmt::Debug for ProcessHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "ProcessHook(set)"
        } else {
            "ProcessHook(none)"
        })
    }
}

impl PartialEq for ProcessHook {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for ProcessHook {}
