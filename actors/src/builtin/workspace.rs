//! The workspace root that confines every file tool.
//!
//! An agent names files with strings it made up, and the file tools act on
//! them with the runtime's own permissions. Without a boundary, a careless
//! `../` or a symlink planted in the project reaches the user's home
//! directory. [`Workspace`] is that boundary: every path an agent passes is
//! resolved here, symlinks followed, and refused unless it stays under one
//! root. It also turns a missing path into a `NOT_FOUND` outcome naming the
//! paths the agent probably meant, because a misspelt path is the commonest
//! file-tool failure and the cheapest one to repair.
//!
//! The check guards against mistakes, not against a concurrent attacker: a
//! directory swapped for a symlink between the check and the use is not
//! caught.

// Failures here are the tool's answer, a `ToolOutcome` handed to the agent
// as is; boxing it on the error path would only be unboxed again, and that
// path is cold next to the file-system call that produced it.
#![allow(clippy::result_large_err)]

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::catalog::ErrorCode;
use crate::classify::from_io_error;
use crate::outcome::{Hint, HintKind, ToolOutcome};
use crate::tool::levenshtein;

/// The same bound the kernel puts on symlink chains (`ELOOP`); a dangling
/// chain longer than this is refused rather than followed forever.
const MAX_SYMLINK_HOPS: usize = 40;

/// How many walk entries `nearest_paths` looks at: suggestions must stay
/// cheap even in a huge checkout, and the nearest path is almost always
/// found long before this.
const MAX_SUGGESTION_ENTRIES: usize = 20_000;

/// How many `did_you_mean` suggestions a `NOT_FOUND` outcome carries.
const MAX_SUGGESTIONS: usize = 5;

/// Why a [`Workspace`] could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// The root does not exist or cannot be resolved.
    #[error("workspace root `{path}` cannot be opened: {source}")]
    Unavailable {
        /// The root as given.
        path: PathBuf,
        /// Why resolving it failed.
        #[source]
        source: io::Error,
    },
    /// The root exists but is not a directory.
    #[error("workspace root `{0}` is not a directory")]
    NotADirectory(PathBuf),
}

/// A directory the file tools are confined to. Cloning is cheap (the root
/// is shared).
///
/// [`resolve`](Self::resolve), [`resolve_for_write`](Self::resolve_for_write)
/// and [`nearest_paths`](Self::nearest_paths) touch the file system
/// synchronously; call them from `spawn_blocking` in async code.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// Canonical (absolute, symlink-free), so a prefix test is a real
    /// containment test.
    root: Arc<Path>,
}

/// Where a confined path lands.
enum Located {
    /// It exists; the canonical path.
    Existing(PathBuf),
    /// It does not exist yet: `base` is its nearest existing ancestor
    /// (canonical, inside the root) and `rest` the missing components,
    /// none of them `..`, the first of them not a symlink.
    Missing { base: PathBuf, rest: Vec<OsString> },
}

impl Workspace {
    /// Opens a workspace rooted at `root`, which must be an existing
    /// directory. The root is canonicalised, so a symlinked root confines
    /// to the directory it points to.
    pub fn new(root: impl AsRef<Path>) -> Result<Self, WorkspaceError> {
        let given = root.as_ref();
        let root = std::fs::canonicalize(given).map_err(|source| WorkspaceError::Unavailable {
            path: given.to_path_buf(),
            source,
        })?;
        if !root.is_dir() {
            return Err(WorkspaceError::NotADirectory(given.to_path_buf()));
        }
        Ok(Self { root: root.into() })
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a path an agent wants to read.
    ///
    /// Relative paths are taken from the root; absolute paths are accepted
    /// only inside it. The result is canonical (symlinks followed) and
    /// inside the root. A path that leaves the root, by `..`, by being
    /// absolute elsewhere or through a symlink, is `PERMISSION_DENIED`; a
    /// missing path is `NOT_FOUND` with a `did_you_mean` hint listing the
    /// nearest existing paths (see [`nearest_paths`](Self::nearest_paths)).
    pub fn resolve(&self, path: &str) -> Result<PathBuf, ToolOutcome> {
        match self.locate(path)? {
            Located::Existing(resolved) => Ok(resolved),
            Located::Missing { .. } => Err(self.not_found(path)),
        }
    }

    /// Resolves a path an agent wants to create or overwrite, which need
    /// not exist yet.
    ///
    /// The nearest existing ancestor is canonicalised and must be inside
    /// the root; the missing components after it may not contain `..`. A
    /// symlink on the way, dangling ones included, is followed and its
    /// target must be inside too, so the returned path is where the bytes
    /// would really land: writing there never replaces a symlink.
    pub fn resolve_for_write(&self, path: &str) -> Result<PathBuf, ToolOutcome> {
        match self.locate(path)? {
            Located::Existing(resolved) => Ok(resolved),
            Located::Missing { base, rest } => {
                let mut target = base;
                target.extend(rest);
                Ok(target)
            }
        }
    }

    /// Up to `limit` existing workspace-relative paths (files and
    /// directories, `/`-separated) most similar to `wanted`, best first.
    ///
    /// Similarity is the edit distance to the whole relative path, or to
    /// its trailing components plus one when the path is deeper than
    /// `wanted`, so that a right name in the wrong directory (`lib.rs` for
    /// `src/lib.rs`) ranks as a near miss. Ties go to the closer file name.
    /// The walk honours ignore files and skips `.git`, and stops after
    /// 20 000 entries.
    pub fn nearest_paths(&self, wanted: &str, limit: usize) -> Vec<String> {
        if limit == 0 {
            return Vec::new();
        }
        let wanted = self.normalise_wanted(wanted);
        let wanted_parts = wanted.split('/').filter(|s| !s.is_empty()).count().max(1);
        let wanted_name = last_component(&wanted);
        let mut walk = walker(&self.root);
        walk.hidden(false)
            .filter_entry(|entry| entry.file_name() != OsStr::new(".git"));
        let mut ranked: Vec<((usize, usize, usize), String)> = walk
            .build()
            .take(MAX_SUGGESTION_ENTRIES)
            .filter_map(Result::ok)
            .filter(|entry| entry.depth() > 0)
            .filter_map(|entry| self.relative(entry.path()))
            .map(|candidate| {
                let lower = candidate.to_lowercase();
                let full = levenshtein(&wanted, &lower);
                let score = match trailing_components(&lower, wanted_parts) {
                    Some(tail) => full.min(levenshtein(&wanted, tail) + 1),
                    None => full,
                };
                let name = levenshtein(wanted_name, last_component(&lower));
                ((score, name, full), candidate)
            })
            .collect();
        ranked.sort();
        ranked.dedup_by(|a, b| a.1 == b.1);
        ranked.into_iter().take(limit).map(|(_, p)| p).collect()
    }

    /// The workspace-relative, `/`-separated form of an absolute path
    /// inside the root (`.` for the root itself); `None` outside it.
    pub(crate) fn relative(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&*self.root).ok()?;
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.is_empty() {
            Some(".".to_owned())
        } else {
            Some(parts.join("/"))
        }
    }

    /// [`relative`](Self::relative) for display, falling back to the path
    /// itself (only reachable if a resolved path was not inside after all).
    pub(crate) fn display(&self, path: &Path) -> String {
        self.relative(path)
            .unwrap_or_else(|| path.to_string_lossy().into_owned())
    }

    fn locate(&self, path: &str) -> Result<Located, ToolOutcome> {
        if path.is_empty() {
            return Err(invalid_input(
                "`path` is empty; use `.` for the workspace root",
            ));
        }
        if path.contains('\0') {
            return Err(invalid_input("`path` contains a NUL byte"));
        }
        let given = Path::new(path);
        let mut candidate = if given.is_absolute() {
            given.to_path_buf()
        } else {
            self.root.join(given)
        };
        for _ in 0..MAX_SYMLINK_HOPS {
            let (base, rest) =
                existing_prefix(&candidate).map_err(|e| io_failure("cannot resolve", path, &e))?;
            if !base.starts_with(&*self.root) {
                return Err(self.outside(path));
            }
            let Some(first) = rest.first() else {
                return Ok(Located::Existing(base));
            };
            // canonicalize fails on a dangling symlink, so the first missing
            // component may still be one; where it points decides where a
            // write would land.
            let link = base.join(first);
            if let Ok(meta) = std::fs::symlink_metadata(&link)
                && meta.file_type().is_symlink()
            {
                let target = std::fs::read_link(&link)
                    .map_err(|e| io_failure("cannot resolve", path, &e))?;
                // `join` keeps an absolute target as it is.
                candidate = base.join(target);
                candidate.extend(&rest[1..]);
                continue;
            }
            if rest.iter().any(|c| c == OsStr::new("..")) {
                return Err(permission_denied(
                    path,
                    format!(
                        "`{path}` is refused: it climbs with `..` out of a directory that does \
                         not exist, so it cannot be confirmed to stay inside the workspace root \
                         `{}`",
                        self.root.display()
                    ),
                ));
            }
            return Ok(Located::Missing { base, rest });
        }
        Err(invalid_input(format!(
            "`{path}` goes through more than {MAX_SYMLINK_HOPS} symlinks"
        ))
        .with_data(json!({ "path": path })))
    }

    fn outside(&self, path: &str) -> ToolOutcome {
        permission_denied(
            path,
            format!(
                "`{path}` is outside the workspace root `{}`; file tools only reach paths \
                 under it (use a path relative to the root)",
                self.root.display()
            ),
        )
    }

    fn not_found(&self, path: &str) -> ToolOutcome {
        let suggestions = self.nearest_paths(path, MAX_SUGGESTIONS);
        let mut outcome = ToolOutcome::from_code(
            ErrorCode::NotFound,
            format!("`{path}` does not exist in the workspace"),
        )
        .with_data(json!({ "path": path }));
        if !suggestions.is_empty() {
            outcome = outcome.with_hint(
                Hint::new(
                    HintKind::DidYouMean,
                    "existing workspace paths closest to the one given, best first",
                )
                .with_suggestions(suggestions),
            );
        }
        outcome
    }

    /// `wanted` as a lower-case workspace-relative path, so that `./src/x`,
    /// `/root/src/x` and `src/x/` all compare as `src/x`.
    fn normalise_wanted(&self, wanted: &str) -> String {
        let path = Path::new(wanted);
        let rel = path.strip_prefix(&*self.root).unwrap_or(path);
        let parts: Vec<String> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().to_lowercase()),
                Component::ParentDir => Some("..".to_owned()),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
            })
            .collect();
        parts.join("/")
    }
}

/// The longest prefix of `candidate` (absolute) that exists, canonicalised,
/// and the components after it (`.` dropped, `..` kept).
fn existing_prefix(candidate: &Path) -> io::Result<(PathBuf, Vec<OsString>)> {
    let components: Vec<Component<'_>> = candidate.components().collect();
    for keep in (1..=components.len()).rev() {
        let prefix: PathBuf = components[..keep].iter().collect();
        match std::fs::canonicalize(&prefix) {
            Ok(base) => {
                let rest = components[keep..]
                    .iter()
                    .filter(|c| !matches!(c, Component::CurDir))
                    .map(|c| c.as_os_str().to_os_string())
                    .collect();
                return Ok((base, rest));
            }
            // A missing component, or a file used as a directory: the
            // prefix one shorter may still exist.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no part of the path exists",
    ))
}

/// The last `n` `/`-separated components of `path`, when it has more.
fn trailing_components(path: &str, n: usize) -> Option<&str> {
    let mut seen = 0;
    for (i, b) in path.bytes().enumerate().rev() {
        if b == b'/' {
            seen += 1;
            if seen == n {
                return Some(&path[i + 1..]);
            }
        }
    }
    None
}

fn last_component(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A walk of `dir` with the filters every file tool shares: ignore files
/// (`.gitignore` even outside a git repository, `.ignore`), hidden entries
/// skipped, symlinks not followed (a linked directory may lead out of the
/// workspace), entries in name order so results are stable.
pub(crate) fn walker(dir: &Path) -> ignore::WalkBuilder {
    let mut builder = ignore::WalkBuilder::new(dir);
    builder
        .require_git(false)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b));
    builder
}

/// Whether a walked entry may be read: regular files, and symlinks whose
/// target is a regular file inside the workspace.
pub(crate) fn readable_file(workspace: &Workspace, entry: &ignore::DirEntry) -> bool {
    let Some(file_type) = entry.file_type() else {
        return false;
    };
    if file_type.is_file() {
        return true;
    }
    if !file_type.is_symlink() {
        return false;
    }
    match std::fs::canonicalize(entry.path()) {
        Ok(target) => target.starts_with(workspace.root()) && target.is_file(),
        Err(_) => false,
    }
}

/// Parses a tool's arguments object; a mismatch is `INVALID_INPUT` with
/// serde's message, which names the field.
pub(crate) fn parse_args<T: DeserializeOwned>(tool: &str, args: Value) -> Result<T, ToolOutcome> {
    serde_json::from_value(args)
        .map_err(|e| invalid_input(format!("invalid arguments for `{tool}`: {e}")))
}

/// Runs blocking file-system work off the async executor.
pub(crate) async fn run_blocking<F>(work: F) -> ToolOutcome
where
    F: FnOnce() -> ToolOutcome + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(outcome) => outcome,
        Err(e) => {
            ToolOutcome::from_code(ErrorCode::Internal, format!("file tool worker failed: {e}"))
        }
    }
}

pub(crate) fn invalid_input(message: impl Into<String>) -> ToolOutcome {
    ToolOutcome::from_code(ErrorCode::InvalidInput, message)
}

fn permission_denied(path: &str, message: String) -> ToolOutcome {
    ToolOutcome::from_code(ErrorCode::PermissionDenied, message).with_data(json!({ "path": path }))
}

/// An I/O error on `path`, classified by the shared classifier, with the
/// path in the message and the data.
pub(crate) fn io_failure(action: &str, path: &str, err: &io::Error) -> ToolOutcome {
    let mut outcome = from_io_error(err);
    outcome.message = format!("{action} `{path}`: {err}");
    outcome.with_data(json!({ "path": path, "io_kind": format!("{:?}", err.kind()) }))
}
