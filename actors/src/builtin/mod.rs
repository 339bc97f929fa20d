//! The OS-facing tools every agent gets: `exec`, `read_file`, `write_file`,
//! `edit_file`, `glob`, `grep` and `web_fetch`.
//!
//! They are the part of hale that touches the machine, so they are where a
//! careless agent does damage: each one is confined to a workspace root (the
//! file tools), bounded in time and output (exec, web_fetch), and reports
//! every failure as a classified [`ToolOutcome`](crate::ToolOutcome) with
//! the hints an agent needs to repair its call.

pub mod command_line;
pub mod exec;
pub mod fetch_guard;
pub mod files;
pub mod net_policy;
pub mod sandbox;
pub mod search;
pub mod web_fetch;
pub mod workspace;

pub use exec::{BlockRule, Exec, ExecConfig, ExecConfigError};
pub use files::{EditFile, EditFileConfig, ReadFile, ReadFileConfig, WriteFile, WriteFileConfig};
pub use net_policy::{AllowEntry, AllowEntryError, AllowList};
pub use sandbox::{NetworkPolicy, SandboxConfig, SandboxLimits, SandboxMode, SandboxUser};
pub use search::{Glob, GlobConfig, Grep, GrepConfig};
pub use web_fetch::{
    ForbiddenValues, WebFetch, WebFetchConfig, WebFetchError, classify_reqwest_error, site_endpoint,
};
pub use workspace::{Workspace, WorkspaceError};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hale_supervision::{Strategy, SupervisorSpec};

use crate::escalation::ApprovalGrants;
use crate::event::EventSink;
use crate::memory::MemoryHandle;
use crate::tool::Tool;
use crate::tool_actor::{ToolHandle, tool_child};

/// Settings of every built-in tool.
#[derive(Debug, Clone)]
pub struct BuiltinConfig {
    /// The directory every file tool and `exec` is confined to.
    pub workspace_root: PathBuf,
    /// `read_file`.
    pub read_file: ReadFileConfig,
    /// `write_file`.
    pub write_file: WriteFileConfig,
    /// `edit_file`.
    pub edit_file: EditFileConfig,
    /// `glob`.
    pub glob: GlobConfig,
    /// `grep`.
    pub grep: GrepConfig,
    /// `exec` (its `workspace_root` is replaced by the one above).
    pub exec: ExecConfig,
    /// `web_fetch`.
    pub web_fetch: WebFetchConfig,
    /// One-shot permissions for calls a human approved (shared with the
    /// sessions that ask).
    pub grants: ApprovalGrants,
    /// MEMORY.md's actor: `read_file` serves `memory/MEMORY.md` from it,
    /// and `write_file`/`edit_file` refuse that path (none: no alias).
    pub memory: Option<MemoryHandle>,
}

impl BuiltinConfig {
    /// Every tool with its defaults, confined to `workspace_root`.
    pub fn new(workspace_root: impl Into<PathBuf>) -> Self {
        let workspace_root = workspace_root.into();
        Self {
            exec: ExecConfig::new(workspace_root.clone()),
            workspace_root,
            read_file: ReadFileConfig::default(),
            write_file: WriteFileConfig::default(),
            edit_file: EditFileConfig::default(),
            glob: GlobConfig::default(),
            grep: GrepConfig::default(),
            web_fetch: WebFetchConfig::default(),
            grants: ApprovalGrants::new(),
            memory: None,
        }
    }
}

/// Why the built-in tools could not be built; each names the tool.
#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    /// The workspace root is unusable.
    #[error("workspace: {0}")]
    Workspace(#[from] WorkspaceError),
    /// `exec`'s settings are invalid.
    #[error("exec: {0}")]
    Exec(#[from] ExecConfigError),
    /// `web_fetch`'s settings are invalid.
    #[error("web_fetch: {0}")]
    WebFetch(#[from] WebFetchError),
}

/// The seven built-in tools, built and validated.
///
/// # Errors
/// [`BuiltinError`] naming the tool whose settings are invalid.
pub fn builtin_tools(config: &BuiltinConfig) -> Result<Vec<Arc<dyn Tool>>, BuiltinError> {
    let workspace = Workspace::new(&config.workspace_root)?;
    let mut exec = config.exec.clone();
    exec.workspace_root = workspace.root().to_path_buf();
    // Files the file tools write belong to the user `exec` runs as, so
    // its commands can work on them.
    let owner = exec.sandbox.user.as_ref().map(|u| (u.uid, u.gid));
    let mut write_config = config.write_file;
    let mut edit_config = config.edit_file;
    if owner.is_some() && exec.sandbox.mode == SandboxMode::Landlock {
        write_config.owner = owner;
        edit_config.owner = owner;
    }
    let mut read_file = ReadFile::new(workspace.clone(), config.read_file);
    let mut write_file = WriteFile::new(workspace.clone(), write_config);
    let mut edit_file = EditFile::new(workspace.clone(), edit_config);
    if let Some(memory) = &config.memory {
        read_file = read_file.with_memory(memory.clone());
        write_file = write_file.with_memory(memory.clone());
        edit_file = edit_file.with_memory(memory.clone());
    }
    Ok(vec![
        Arc::new(Exec::new(exec)?.with_grants(config.grants.clone())),
        Arc::new(read_file),
        Arc::new(write_file),
        Arc::new(edit_file),
        Arc::new(Glob::new(workspace.clone(), config.glob)),
        Arc::new(Grep::new(workspace, config.grep)),
        Arc::new(WebFetch::new(config.web_fetch.clone())?),
    ])
}

/// The `tools` subtree: one_for_one, one permanent actor per tool, and
/// the handles to register (they reach whichever incarnation is current).
/// Every supervisor event goes to `sink`.
pub fn tools_supervisor(
    name: &str,
    tools: Vec<Arc<dyn Tool>>,
    sink: Arc<dyn EventSink>,
) -> (SupervisorSpec, Vec<ToolHandle>) {
    let mut spec = SupervisorSpec::new(name)
        .strategy(Strategy::OneForOne)
        // Tool actors hold no state worth protecting from a crash loop;
        // a tool that keeps dying is a bug the audit trail shows.
        .intensity(100, Duration::from_secs(10))
        .observer(crate::supervision_events::observer(sink));
    let mut handles = Vec::with_capacity(tools.len());
    for tool in tools {
        let id = tool.spec().name.clone();
        let (child, handle) = tool_child(&id, tool);
        spec = spec.child(child);
        handles.push(handle);
    }
    (spec, handles)
}
