//! Getting the memory file onto disk, durably and atomically, and only by
//! the incarnation that owns it.
//!
//! A write is acknowledged only after [`persist`] returned: the new text
//! is in a temporary file in the same directory, that file is fsynced,
//! renamed over the memory file, and the directory is fsynced (the rename
//! itself is a directory change; without that sync a power cut can bring
//! the old file back after the write was acknowledged).
//!
//! The [`Fence`] is what keeps a killed actor's write from landing after
//! its replacement's: `kill` ends the actor's task, but a `persist` it
//! handed to a blocking thread runs on. The module docs of
//! [`memory`](super) give the argument.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::builtin::files::create_temp;

/// The generation that may write a memory file. Clones share it.
///
/// Every incarnation of the file's actor takes a number from
/// [`issue`](Self::issue) when it starts, and [`claim`](Self::claim)s it
/// before it reads the file. A [`persist`] renames only while holding the
/// fence's lock and only if its generation is still the claimed one.
#[derive(Debug, Clone, Default)]
pub struct Fence(Arc<FenceInner>);

#[derive(Debug, Default)]
struct FenceInner {
    /// The last generation handed out.
    issued: AtomicU64,
    /// The newest generation claimed; held across every rename.
    current: Mutex<u64>,
    /// Writes refused for a stale generation.
    refused: AtomicU64,
}

impl Fence {
    /// A fence nobody has claimed (generation 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// A new generation number, higher than every one issued before. It
    /// does not block, so an actor can take it in `pre_start`; it has no
    /// effect until it is claimed.
    pub fn issue(&self) -> u64 {
        self.0.issued.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Makes `generation` the one that may write, unless a newer one
    /// already did. It waits for a rename in progress, so once it
    /// returns, no older generation's write can land any more and the file
    /// holds every write that did. It blocks: call it off the executor.
    pub fn claim(&self, generation: u64) {
        let mut current = self.lock();
        *current = (*current).max(generation);
    }

    /// The generation that may write now.
    pub fn current(&self) -> u64 {
        *self.lock()
    }

    /// How many writes were refused for a stale generation: the number of
    /// times the fence stopped a dead incarnation's flush.
    pub fn refused(&self) -> u64 {
        self.0.refused.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        // Only plain integer stores happen under the lock; a panic while
        // holding it (in a rename) leaves the number intact.
        self.0
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a [`persist`] did not replace the file.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A newer incarnation has claimed the file; this write was dropped
    /// before its rename, and its temporary file removed.
    #[error("generation {generation} is stale: generation {current} owns the memory file now")]
    Stale {
        /// The writer's generation.
        generation: u64,
        /// The generation that owns the file.
        current: u64,
    },
    /// A file-system step failed.
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        /// The step: `create a temporary file for`, `write`, `rename over`, ...
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl PersistError {
    fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The underlying I/O error, if this is one.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Stale { .. } => None,
        }
    }
}

/// Replaces `path` with `content` durably and atomically, if `generation`
/// still owns it (see [`Fence`]). Blocking: call it off the executor.
///
/// An existing file keeps its permissions. On any failure the temporary
/// file is removed and `path` is untouched, except that a failure of the
/// final directory sync leaves the new content in place, not yet durable.
///
/// # Errors
/// [`PersistError::Stale`] when a newer generation has claimed the file;
/// [`PersistError::Io`] naming the step that failed.
pub fn persist(
    path: &Path,
    content: &str,
    fence: &Fence,
    generation: u64,
) -> Result<(), PersistError> {
    persist_with(path, content, fence, generation, || {})
}

/// [`persist`] with a hook run while the fence is held, just before the
/// rename, so tests can hold a write at its most delicate point.
pub(crate) fn persist_with(
    path: &Path,
    content: &str,
    fence: &Fence,
    generation: u64,
    before_rename: impl FnOnce(),
) -> Result<(), PersistError> {
    let dir = parent(path)?;
    let permissions = fs::metadata(path).ok().map(|m| m.permissions());
    let (temp_path, mut temp) =
        create_temp(dir, path).map_err(PersistError::io("create a temporary file for", path))?;
    let result = (|| {
        temp.write_all(content.as_bytes())
            .map_err(PersistError::io("write", &temp_path))?;
        if let Some(permissions) = permissions {
            temp.set_permissions(permissions)
                .map_err(PersistError::io("set the permissions of", &temp_path))?;
        }
        temp.sync_all()
            .map_err(PersistError::io("sync", &temp_path))?;
        drop(temp);
        // From here to the directory sync the fence is held: a claim by a
        // newer generation waits, so it either sees this rename complete
        // and durable, or makes this check fail.
        let current = fence.lock();
        if *current != generation {
            fence.0.refused.fetch_add(1, Ordering::Relaxed);
            return Err(PersistError::Stale {
                generation,
                current: *current,
            });
        }
        before_rename();
        fs::rename(&temp_path, path).map_err(PersistError::io("rename over", path))?;
        sync_dir(dir)?;
        drop(current);
        Ok(())
    })();
    if result.is_err() {
        // Best effort (after a failed directory sync it is gone already):
        // the failure being reported is the write, not this.
        let _ = fs::remove_file(&temp_path);
    }
    result
}

/// What a new incarnation found on disk.
#[derive(Debug)]
pub struct Loaded {
    /// The file's text (empty when it does not exist yet).
    pub text: String,
    /// How many leftover temporary files of earlier writers were removed.
    pub removed_temps: usize,
    /// Where an unreadable file (not UTF-8) was moved aside, if one was:
    /// `text` is then empty and a fresh, empty file stands in its place.
    pub quarantined: Option<PathBuf>,
}

/// Claims `generation`, then reads the memory file (creating its
/// directory if needed), removes temporary files left by writers that
/// died, and syncs what it read, so that nothing is acknowledged on top
/// of a rename that is not yet durable. Blocking: call it off the
/// executor.
///
/// A file that is not UTF-8 cannot be loaded however often the actor
/// restarts, so it is quarantined instead of failing the load: renamed to
/// [`quarantine_path`] (kept for a human to recover by hand), replaced by
/// an empty file, and reported in [`Loaded::quarantined`].
///
/// # Errors
/// [`PersistError::Io`] when the directory or the file cannot be read, or
/// an unreadable file cannot be moved aside.
pub fn load(path: &Path, fence: &Fence, generation: u64) -> Result<Loaded, PersistError> {
    let dir = parent(path)?;
    fs::create_dir_all(dir).map_err(PersistError::io("create the directory", dir))?;
    fence.claim(generation);
    let removed_temps = remove_temps(dir, path);
    let mut quarantined = None;
    let text = match fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => {
                File::open(path)
                    .and_then(|f| f.sync_all())
                    .map_err(PersistError::io("sync", path))?;
                text
            }
            Err(_) => {
                let aside = quarantine_path(path, jiff::Timestamp::now());
                fs::rename(path, &aside).map_err(PersistError::io("quarantine", path))?;
                sync_dir(dir)?;
                persist(path, "", fence, generation)?;
                quarantined = Some(aside);
                String::new()
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(PersistError::io("read", path)(e)),
    };
    sync_dir(dir)?;
    Ok(Loaded {
        text,
        removed_temps,
        quarantined,
    })
}

/// Where an unreadable memory file goes: beside it, named
/// `<name>.corrupt-<UTC time to the nanosecond>`, so successive
/// quarantines never overwrite each other.
pub fn quarantine_path(path: &Path, now: jiff::Timestamp) -> PathBuf {
    let stamp = now.strftime("%Y%m%dT%H%M%S%.9fZ").to_string();
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".corrupt-{stamp}"));
    path.with_file_name(name)
}

fn parent(path: &Path) -> Result<&Path, PersistError> {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| PersistError::Io {
            action: "find the directory of",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"),
        })
}

fn sync_dir(dir: &Path) -> Result<(), PersistError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(PersistError::io("sync the directory", dir))
}

/// Removes `.<name>.<hex>.hale-tmp` files next to `path`: writes that died
/// before their rename. Only called after a claim, when no older writer
/// can rename any more (one that is still writing a removed file fails
/// its rename, which is the outcome it was getting anyway).
fn remove_temps(dir: &Path, path: &Path) -> usize {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return 0;
    };
    let stem: String = name.chars().take(64).collect();
    let prefix = format!(".{stem}.");
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".hale-tmp")
        })
        .filter(|entry| fs::remove_file(entry.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// A rename in progress holds the fence: a newer generation's claim
    /// waits for it, and then reads the file with that write in it. This
    /// is the ordering the fencing argument rests on.
    #[test]
    fn a_claim_waits_for_a_rename_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("MEMORY.md");
        let fence = Fence::new();
        let old = fence.issue();
        fence.claim(old);
        let (at_rename, wait_at_rename) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let writer = {
            let (path, fence) = (path.clone(), fence.clone());
            std::thread::spawn(move || {
                persist_with(&path, "old writer", &fence, old, move || {
                    at_rename.send(()).unwrap();
                    released.recv().unwrap();
                })
            })
        };
        wait_at_rename.recv().unwrap();
        let new = fence.issue();
        let (loaded_tx, loaded_rx) = mpsc::channel();
        let loader = {
            let (path, fence) = (path.clone(), fence.clone());
            std::thread::spawn(move || loaded_tx.send(load(&path, &fence, new).unwrap()).unwrap())
        };
        assert!(
            loaded_rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "the claim went past a rename in progress"
        );
        release.send(()).unwrap();
        writer.join().unwrap().unwrap();
        let loaded = loaded_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        loader.join().unwrap();
        assert_eq!(loaded.text, "old writer");
        // And from now on the old generation cannot write.
        let stale = persist(&path, "late", &fence, old).unwrap_err();
        assert!(
            matches!(stale, PersistError::Stale { generation, current } if generation == old && current == new)
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "old writer");
    }

    #[test]
    fn load_removes_leftover_temporary_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("MEMORY.md");
        fs::write(
            dir.path().join(".MEMORY.md.0123456789abcdef.hale-tmp"),
            "half",
        )
        .unwrap();
        fs::write(dir.path().join(".other.md.0123456789abcdef.hale-tmp"), "x").unwrap();
        fs::write(&path, "kept").unwrap();
        let fence = Fence::new();
        let loaded = load(&path, &fence, fence.issue()).unwrap();
        assert_eq!(loaded.text, "kept");
        assert_eq!(loaded.removed_temps, 1);
        assert!(
            dir.path()
                .join(".other.md.0123456789abcdef.hale-tmp")
                .exists()
        );
    }
}
