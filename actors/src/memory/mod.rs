//! The memory actor: one actor per memory file (`memory/MEMORY.md`), the
//! only writer of that file.
//!
//! Lessons are what hale learns from incidents, written by many sessions
//! at once and read by every later one. Left to the file tools, two
//! concurrent read-modify-write cycles lose one of the writes, and a crash
//! between them leaves whatever the last writer had. So every change goes
//! through one actor per file, in mailbox order, against its in-memory
//! copy; and a change is acknowledged only once it is durable on disk.
//!
//! # Operations
//!
//! [`MemoryHandle`] reads the durable text, `edit`s one exact occurrence
//! (`NOT_FOUND` / `AMBIGUOUS` as for `edit_file`), `replace`s the whole
//! file, and `remember`s a [`Lesson`] under a `## Section` heading (created
//! at the end when missing). `remember` is idempotent: a lesson whose text
//! is already under its section is not added again, so a writer that
//! retries after a crash never duplicates one. The [`Remember`] tool is
//! `remember` for agents, and [`WriteFile`](crate::builtin::WriteFile) /
//! [`EditFile`](crate::builtin::EditFile) built `with_memory` hand a write
//! to the memory file to its actor instead of writing it themselves.
//!
//! # Durability and group commit
//!
//! A flush writes the whole text to a temporary file in the same
//! directory, fsyncs it, renames it over the memory file and fsyncs the
//! directory ([`durable::persist`]); only then are its writes answered.
//! The I/O runs on a blocking thread, never in the handler, and comes back
//! as a message. Writes that arrive while a flush runs are applied to the
//! in-memory copy and wait; when the flush ends, all of them go to disk
//! together in the next one: one temp-write + fsync + rename + dir-fsync
//! for the whole group, then all are answered. A flush is started by a
//! message the actor sends itself, so requests already in its mailbox
//! join it too. Under load a flush carries as many writes as arrived
//! during the previous one, which is what makes fifty concurrent writers
//! cost about as many fsyncs as one.
//!
//! # Restarts and fencing
//!
//! A replacement incarnation publishes itself at once (requests queue),
//! reads the file from disk after start, on a blocking thread, and serves
//! the queued requests once loaded. Its state is the file: a write that
//! was never acknowledged may or may not be in it, and its writer retries.
//!
//! `kill` ends an actor's task but not the blocking thread running its
//! flush. That flush must not rename over a file the replacement has
//! already written and acknowledged, or acknowledged lessons would vanish.
//! A [`Fence`] shared by every incarnation of one file prevents it:
//!
//! 1. Each incarnation takes a generation number in `pre_start`
//!    ([`Fence::issue`], a counter: no blocking). Incarnations start one
//!    after another, so the live one holds the highest number issued.
//! 2. Before reading the file, the load [`claim`](Fence::claim)s that
//!    generation under the fence's lock (`current = max(current, gen)`).
//! 3. A flush renames only while holding the same lock, and only if
//!    `current` still equals its generation; the lock is held from that
//!    check through the rename and the directory fsync.
//!
//! Take a flush F of a dead incarnation (generation g) and its replacement
//! R (generation r > g). Either F takes the lock before R's claim: then F
//! renames and syncs while holding it, R's claim waits for it, and R reads
//! a file that already holds F's text (durable), so nothing R
//! acknowledges is built on a file F later replaces. Or R's claim takes
//! the lock first: then `current >= r > g` forever after, and F's check
//! fails, so F removes its temporary file without renaming. A late load
//! of the dead incarnation claims g < r, which changes nothing. R writes
//! nothing before it has loaded, so in both cases every rename after R's
//! claim is R's (or a later incarnation's, which fences R the same way).
//! [`durable::persist`] takes the generation as a parameter so this is
//! testable without actors.
//!
//! A flush that fails (an I/O error, or a stale generation, which only
//! two live incarnations of one file could cause) answers its writes with
//! the failure and fails the actor, so the replacement starts again from
//! the file.
//!
//! Every acknowledged write emits an [`EventKind::MemoryWrite`]
//! event.
//!
//! [`EventKind::MemoryWrite`]: crate::event::EventKind::MemoryWrite

mod actor;
pub mod document;
pub mod durable;
mod handle;
mod remember;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hale_supervision::{Address, ChildSpec, Strategy, SupervisorSpec};

pub use actor::{MemoryActor, MemoryArgs, MemoryMsg, MemoryState};
pub use document::{Document, EditResult, Lesson, LessonError};
pub use durable::{Fence, PersistError};
pub use handle::{DEFAULT_CALL_TIMEOUT, MemoryHandle};
pub use remember::Remember;

use crate::event::EventSink;
use actor::Settings;

/// Where the memory file lives under a workspace root.
pub const DEFAULT_MEMORY_PATH: &str = "memory/MEMORY.md";

/// Where one memory file lives and how its actor names itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// The memory file.
    pub path: PathBuf,
    /// The actor path in events; default `hale/memory/<file name>`.
    pub source: Option<String>,
}

impl MemoryConfig {
    /// A memory file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            source: None,
        }
    }

    /// The default memory file of a workspace: `<root>/memory/MEMORY.md`.
    pub fn in_workspace(root: impl AsRef<Path>) -> Self {
        Self::new(root.as_ref().join(DEFAULT_MEMORY_PATH))
    }

    /// Sets the actor path in events.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
}

/// Why a memory file's actor cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The path names no file.
    #[error("memory file path `{0}` has no file name")]
    NoFileName(PathBuf),
    /// The file's directory cannot be created or resolved.
    #[error("memory directory `{path}` cannot be used: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The child spec that runs the actor for `config`'s file as a permanent
/// worker under id `id`, and the handle that reaches whichever
/// incarnation is current. Every acknowledged write goes to `sink`.
///
/// It creates the file's directory and resolves it (so the handle's
/// [`path`](MemoryHandle::path) is what the file tools resolve the file
/// to): blocking, meant for start-up.
///
/// # Errors
/// [`MemoryError`] when the path has no file name or its directory is
/// unusable.
pub fn memory_child(
    id: &str,
    config: &MemoryConfig,
    sink: Arc<dyn EventSink>,
) -> Result<(ChildSpec, MemoryHandle), MemoryError> {
    let name = config
        .path
        .file_name()
        .ok_or_else(|| MemoryError::NoFileName(config.path.clone()))?
        .to_owned();
    let dir = match config.path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let canonical = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::canonicalize(&dir))
        .map_err(|source| MemoryError::Directory {
            path: dir.clone(),
            source,
        })?;
    let path = canonical.join(&name);
    let display = config.path.display().to_string();
    let address = Address::new();
    let fence = Fence::new();
    let settings = Arc::new(Settings {
        path: path.clone(),
        display: display.clone(),
        source: config
            .source
            .clone()
            .unwrap_or_else(|| format!("hale/memory/{}", name.to_string_lossy())),
        fence: fence.clone(),
        sink,
        address: address.clone(),
    });
    let handle = MemoryHandle::new(address, path.into(), display.into(), fence);
    let spec = ChildSpec::worker(id, move || (MemoryActor, MemoryArgs(Arc::clone(&settings))));
    Ok((spec, handle))
}

/// The `memory` subtree: one_for_one, one permanent actor per file (ids
/// as given), and their handles in the same order.
///
/// # Errors
/// The first file whose actor cannot be set up.
pub fn memory_supervisor(
    name: &str,
    files: &[(String, MemoryConfig)],
    sink: Arc<dyn EventSink>,
) -> Result<(SupervisorSpec, Vec<MemoryHandle>), MemoryError> {
    let mut spec = SupervisorSpec::new(name)
        .strategy(Strategy::OneForOne)
        // A restart costs one read of the file; what must not happen is
        // a file that cannot be loaded looping for ever, and that fails
        // in well under this.
        .intensity(20, Duration::from_secs(10))
        .observer(crate::supervision_events::observer(Arc::clone(&sink)));
    let mut handles = Vec::with_capacity(files.len());
    for (id, config) in files {
        let (child, handle) = memory_child(id, config, Arc::clone(&sink))?;
        spec = spec.child(child);
        handles.push(handle);
    }
    Ok((spec, handles))
}
