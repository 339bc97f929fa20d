//! The OS-facing tools every agent gets: `exec`, `read_file`, `write_file`,
//! `edit_file`, `glob`, `grep` and `web_fetch`.
//!
//! They are the part of hale that touches the machine, so they are where a
//! careless agent does damage: each one is confined to a workspace root (the
//! file tools), bounded in time and output (exec, web_fetch), and reports
//! every failure as a classified [`ToolOutcome`](crate::ToolOutcome) with
//! the hints an agent needs to repair its call.

pub mod exec;
pub mod files;
pub mod search;
pub mod web_fetch;
pub mod workspace;

pub use exec::{BlockRule, Exec, ExecConfig, ExecConfigError};
pub use files::{EditFile, EditFileConfig, ReadFile, ReadFileConfig, WriteFile, WriteFileConfig};
pub use search::{Glob, GlobConfig, Grep, GrepConfig};
pub use web_fetch::{WebFetch, WebFetchConfig, WebFetchError, classify_reqwest_error};
pub use workspace::{Workspace, WorkspaceError};
