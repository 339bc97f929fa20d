//! The data directory: hale's state on disk, owned by one hale process at
//! a time.
//!
//! ```text
//! <data_dir>/
//!   lock                 exclusive lock, held while hale runs; holds its pid
//!   hale.db              the store (events, approvals, sessions)
//!   token                the HTTP API token
//!   pgroups/<pgid>       one record per live child process group
//!   memory/MEMORY.md     the lessons (only the memory actor writes it)
//!   workspace/           where the file tools and exec work
//! ```
//!
//! MEMORY.md is outside the workspace on purpose: its text goes into
//! every session's system prompt, so the agent (whose `exec` and file
//! tools reach the whole workspace) must not be able to rewrite it. An
//! older data directory kept it at `workspace/memory/MEMORY.md`;
//! [`migrate_memory`] moves it once at start.
//!
//! Two hale processes on one directory would corrupt nothing in SQLite,
//! but they would each reap the other's children and fight over
//! MEMORY.md, so [`DataDir::open`] takes an exclusive lock and refuses a
//! second opener, naming the holder's pid.
//!
//! # The process-group ledger
//!
//! `exec` commands and stdio MCP servers run as leaders of their own
//! process groups and are killed as a group when hale is done with them.
//! A `kill -9` of hale skips all of that and leaves the groups running,
//! holding ports and files. So each live group is recorded in
//! `pgroups/<pgid>` (pid, pgid, the leader's start time from
//! `/proc/<pid>/stat` and the command) while it lives, and the record is
//! removed when the group is reaped. Records still there at the next
//! [`DataDir::open`] belong to a crashed predecessor: each group whose
//! leader still runs **with the recorded start time** is killed with
//! `SIGKILL`. The start time is what makes this safe: a pid reused by an
//! unrelated process has a different start time and is never touched.
//!
//! Known limit: a group whose leader has exited but whose other members
//! still run is not reaped (with the leader gone nothing proves the group
//! id was not reused).
//!
//! # Permissions
//!
//! The directory holds the API token, the audit trail and every session's
//! journal, so it is the operator's alone: created with
//! [`data_dir_mode`] (0700) whatever the umask, and a directory found more
//! open (an older hale made it 0755) is tightened at open with a warning
//! ([`DataDir::tightened`] says from what). The lock file is 0600, as are
//! the token ([`restrict_file`]) and `hale.db` with its WAL files (the
//! store sets those).

use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hale_actors::process::{ProcessHook, ProcessRecord, ProcessRecorder};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The lock file.
pub const LOCK_FILE: &str = "lock";
/// The store's database.
pub const DB_FILE: &str = "hale.db";
/// The HTTP API token.
pub const TOKEN_FILE: &str = "token";
/// The workspace directory.
pub const WORKSPACE_DIR: &str = "workspace";
/// The process-group ledger's directory.
pub const PGROUPS_DIR: &str = "pgroups";

/// The mode of the data directory: 0700, owner only. The one place the
/// mode is decided (a sandboxed `exec` running as another user would need
/// 0711 to reach the workspace without listing anything).
pub fn data_dir_mode() -> u32 {
    0o700
}

/// The mode of the private files in the data directory (the lock, the
/// token; the store applies the same to `hale.db` and its WAL files).
pub const PRIVATE_FILE_MODE: u32 = hale_actors::store::PRIVATE_FILE_MODE;

/// Sets `path` to [`PRIVATE_FILE_MODE`] if it has another mode.
///
/// # Errors
/// The mode cannot be read or set.
pub fn restrict_file(path: &Path) -> io::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode != PRIVATE_FILE_MODE {
        fs::set_permissions(path, fs::Permissions::from_mode(PRIVATE_FILE_MODE))?;
    }
    Ok(())
}

/// The data directory's mode when a sandbox user must reach the workspace
/// through it: traversable, not listable.
const SANDBOX_SHARED_MODE: u32 = 0o711;

/// Lays the data directory out for `exec` running as another user than
/// hale (hale as root, `[tools.sandbox] user`): the directory becomes
/// 0711, so that user can reach the workspace through it but list nothing;
/// every file directly in it (`hale.db` and its WAL and shared memory, the
/// token, the lock) becomes 0600 and `pgroups/` 0700; and the workspace,
/// with everything in it, belongs to that user (symbolic links are not
/// followed). Ancestors of the data directory are left alone: they must be
/// searchable by that user already.
///
/// # Errors
/// The first change that failed, naming its path.
pub fn share_with_sandbox_user(
    root: &Path,
    workspace: &Path,
    uid: u32,
    gid: u32,
) -> Result<(), DataDirError> {
    use std::os::unix::fs::PermissionsExt;
    let io_err = |what: String| {
        let dir = root.to_path_buf();
        move |source| DataDirError::Io { dir, what, source }
    };
    let chmod = |path: &Path, mode: u32| {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(format!(
            "cannot chmod {:o} {}",
            mode,
            path.display()
        )))
    };
    chmod(root, SANDBOX_SHARED_MODE)?;
    for entry in fs::read_dir(root).map_err(io_err("cannot list it".into()))? {
        let entry = entry.map_err(io_err("cannot list it".into()))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(io_err(format!("cannot stat {}", path.display())))?;
        if kind.is_file() {
            chmod(&path, 0o600)?;
        } else if kind.is_dir() && path != workspace {
            chmod(&path, 0o700)?;
        }
    }
    chown_tree(workspace, uid, gid).map_err(io_err(format!("cannot chown {}", workspace.display())))
}

/// `lchown`s `path` and, when it is a directory, everything below it.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Creates `root` with [`data_dir_mode`] if missing, else brings its mode
/// to [`data_dir_mode`]; returns the mode it had when that was more open.
fn secure_root(root: &Path) -> io::Result<Option<u32>> {
    let wanted = data_dir_mode();
    if !root.exists() {
        if let Some(parent) = root.parent()
            && !parent.as_os_str().is_empty()
        {
            fs::create_dir_all(parent)?;
        }
        match DirBuilder::new().mode(wanted).create(root) {
            Ok(()) => {}
            // Made by someone else in between: checked below like any other.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let mode = fs::metadata(root)?.permissions().mode() & 0o777;
    if mode == wanted {
        return Ok(None);
    }
    // The umask can only have narrowed a fresh directory; set it exactly.
    fs::set_permissions(root, fs::Permissions::from_mode(wanted))?;
    // 0711 is the layout hale itself gives a sandbox user
    // (`share_with_sandbox_user`, applied again after this): not a finding.
    Ok((mode & !wanted != 0 && mode != SANDBOX_SHARED_MODE).then_some(mode))
}

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another hale process (or another `DataDir` in this one) holds it.
    #[error("data directory {} is in use by another hale process{}", dir.display(), holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// The holder's pid, if it recorded one.
        holder: Option<u32>,
    },
    /// A file system operation failed.
    #[error("data directory {}: {what}: {source}", dir.display())]
    Io {
        /// The directory.
        dir: PathBuf,
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

/// An open data directory; holds the lock until dropped.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    workspace: PathBuf,
    ledger: ProcessLedger,
    reaped: Vec<LedgerRecord>,
    tightened: Option<u32>,
    _lock: File,
}

impl DataDir {
    /// Opens `path` with its default workspace (`<path>/workspace`).
    ///
    /// # Errors
    /// See [`open_with_workspace`](Self::open_with_workspace).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DataDirError> {
        let root = path.as_ref().to_path_buf();
        let workspace = root.join(WORKSPACE_DIR);
        Self::open_with_workspace(root, workspace)
    }

    /// Creates `path` (and `workspace`, `memory/`) if missing,
    /// takes the exclusive lock, then reaps the process groups a crashed
    /// predecessor left (see the module docs); [`reaped`](Self::reaped)
    /// lists them.
    ///
    /// # Errors
    /// [`DataDirError::Locked`] when another holder has the lock;
    /// [`DataDirError::Io`] when a directory or the lock file cannot be
    /// made.
    pub fn open_with_workspace(
        path: impl AsRef<Path>,
        workspace: impl AsRef<Path>,
    ) -> Result<Self, DataDirError> {
        let root = path.as_ref().to_path_buf();
        let workspace = workspace.as_ref().to_path_buf();
        let io_err = |what: String| {
            let dir = root.clone();
            move |source| DataDirError::Io { dir, what, source }
        };
        let tightened =
            secure_root(&root).map_err(io_err("cannot create it or set its mode".into()))?;
        if let Some(mode) = tightened {
            tracing::warn!(
                target: "hale::data_dir",
                "data directory {} was mode {mode:o}, readable by others; tightened to {:o}",
                root.display(),
                data_dir_mode()
            );
        }
        let lock_path = root.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE_MODE)
            .open(&lock_path)
            .map_err(io_err(format!("cannot open {}", lock_path.display())))?;
        restrict_file(&lock_path).map_err(io_err(format!(
            "cannot set the mode of {}",
            lock_path.display()
        )))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = lock.read_to_string(&mut text);
                return Err(DataDirError::Locked {
                    dir: root,
                    holder: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(io_err(format!("cannot lock {}", lock_path.display()))(
                    source,
                ));
            }
        }
        let record_pid = (|| {
            lock.set_len(0)?;
            lock.seek(SeekFrom::Start(0))?;
            writeln!(lock, "{}", std::process::id())?;
            lock.sync_all()
        })();
        record_pid.map_err(io_err(format!("cannot write {}", lock_path.display())))?;
        for dir in [
            workspace.clone(),
            root.join("memory"),
            root.join(PGROUPS_DIR),
        ] {
            fs::create_dir_all(&dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
        }
        let token = root.join(TOKEN_FILE);
        if token.exists() {
            restrict_file(&token).map_err(io_err(format!(
                "cannot set the mode of {}",
                token.display()
            )))?;
        }
        let ledger = ProcessLedger {
            dir: Arc::new(root.join(PGROUPS_DIR)),
        };
        let reaped = ledger.reap_leftovers();
        if !reaped.is_empty() {
            tracing::warn!(
                target: "hale::data_dir",
                "killed {} process group(s) left by a crashed hale: {}",
                reaped.len(),
                reaped
                    .iter()
                    .map(|r| format!("{} (pgid {})", r.command, r.pgid))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(Self {
            root,
            workspace,
            ledger,
            reaped,
            tightened,
            _lock: lock,
        })
    }

    /// The mode the directory had when it was found more open than
    /// [`data_dir_mode`] and tightened at open.
    pub fn tightened(&self) -> Option<u32> {
        self.tightened
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store's database file.
    pub fn db_path(&self) -> PathBuf {
        self.root.join(DB_FILE)
    }

    /// The HTTP API token file.
    pub fn token_path(&self) -> PathBuf {
        self.root.join(TOKEN_FILE)
    }

    /// The workspace directory.
    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// The memory file, `<data_dir>/memory/MEMORY.md`, outside the
    /// workspace.
    pub fn memory_path(&self) -> PathBuf {
        self.root.join(hale_actors::memory::DEFAULT_MEMORY_PATH)
    }

    /// The process-group ledger, to hand to the spawn sites.
    pub fn ledger(&self) -> &ProcessLedger {
        &self.ledger
    }

    /// The groups killed at open, left by a crashed predecessor.
    pub fn reaped(&self) -> &[LedgerRecord] {
        &self.reaped
    }
}

/// One recorded process group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRecord {
    /// The leader's pid.
    pub pid: u32,
    /// The group id (the leader's pid for a group leader).
    pub pgid: u32,
    /// The leader's start time, in clock ticks after boot (field 22 of
    /// `/proc/<pid>/stat`).
    pub start_time: u64,
    /// The command line, for the operator.
    pub command: String,
}

impl LedgerRecord {
    fn to_text(&self) -> String {
        // The command goes last: it may contain anything but a newline.
        format!(
            "pid {}\npgid {}\nstart_time {}\ncommand {}\n",
            self.pid,
            self.pgid,
            self.start_time,
            self.command.replace('\n', " ")
        )
    }

    fn parse(text: &str) -> Option<Self> {
        let mut pid = None;
        let mut pgid = None;
        let mut start_time = None;
        let mut command = String::new();
        for line in text.lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "pid" => pid = value.parse().ok(),
                "pgid" => pgid = value.parse().ok(),
                "start_time" => start_time = value.parse().ok(),
                "command" => value.clone_into(&mut command),
                _ => {}
            }
        }
        Some(Self {
            pid: pid?,
            pgid: pgid?,
            start_time: start_time?,
            command,
        })
    }
}

/// The pid's process group and start time from `/proc/<pid>/stat`, or
/// `None` when no such process exists (or is a zombie, already dead).
pub fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (comm) is in parentheses and may contain spaces and `)`;
    // everything after the last `)` is space-separated, from field 3.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    let pgid = fields.get(5 - 3)?.parse().ok()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some((pgid, start_time))
}

/// Records live process groups in `<data_dir>/pgroups/`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProcessLedger {
    dir: Arc<PathBuf>,
}

impl ProcessLedger {
    /// The hook for `ExecConfig::recorder` and `McpServerConfig::recorder`.
    pub fn hook(&self) -> ProcessHook {
        ProcessHook::new(Arc::new(self.clone()))
    }

    /// Records the group led by `pid`; the record is removed when the
    /// returned entry is dropped.
    ///
    /// # Errors
    /// The process is gone already (nothing to record), or the record
    /// cannot be written.
    pub fn record(&self, pid: u32, command: &str) -> io::Result<LedgerEntry> {
        let (pgid, start_time) = proc_stat(pid)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no process {pid}")))?;
        let record = LedgerRecord {
            pid,
            pgid,
            start_time,
            command: command.to_owned(),
        };
        let path = self.dir.join(pgid.to_string());
        let tmp = self.dir.join(format!(".{pgid}.tmp"));
        {
            let mut file = File::create(&tmp)?;
            file.write_all(record.to_text().as_bytes())?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        Ok(LedgerEntry { path, record })
    }

    /// The records present now.
    pub fn records(&self) -> Vec<LedgerRecord> {
        self.entries().into_iter().map(|(_, r)| r).collect()
    }

    fn entries(&self) -> Vec<(PathBuf, LedgerRecord)> {
        let Ok(dir) = fs::read_dir(self.dir.as_ref()) else {
            return Vec::new();
        };
        let mut entries = Vec::new();
        for entry in dir.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                // A record being written when hale died.
                let _ = fs::remove_file(&path);
                continue;
            }
            match fs::read_to_string(&path)
                .ok()
                .and_then(|t| LedgerRecord::parse(&t))
            {
                Some(record) => entries.push((path, record)),
                None => {
                    tracing::warn!(target: "hale::data_dir", "removing unreadable ledger record {}", path.display());
                    let _ = fs::remove_file(&path);
                }
            }
        }
        entries
    }

    /// Kills every recorded group whose leader still runs with the
    /// recorded start time; removes every record. Returns the killed.
    fn reap_leftovers(&self) -> Vec<LedgerRecord> {
        let mut reaped = Vec::new();
        for (path, record) in self.entries() {
            let alive = proc_stat(record.pid)
                .is_some_and(|(_, start_time)| start_time == record.start_time);
            if alive {
                let pgid = i32::try_from(record.pgid).ok().filter(|p| *p > 1);
                match pgid.map(|p| killpg(Pid::from_raw(p), Signal::SIGKILL)) {
                    Some(Ok(())) => reaped.push(record),
                    Some(Err(error)) => tracing::warn!(
                        target: "hale::data_dir",
                        "cannot kill process group {} ({}): {error}",
                        record.pgid,
                        record.command
                    ),
                    None => {}
                }
            }
            let _ = fs::remove_file(&path);
        }
        reaped
    }
}

impl ProcessRecorder for ProcessLedger {
    fn started(&self, pid: u32, command: &str) -> ProcessRecord {
        match self.record(pid, command) {
            Ok(entry) => Box::new(entry),
            // Already exited (a quick command): nothing left to reap.
            Err(error) if error.kind() == io::ErrorKind::NotFound => Box::new(()),
            Err(error) => {
                tracing::warn!(target: "hale::data_dir", "cannot record process group of pid {pid} ({command}): {error}");
                Box::new(())
            }
        }
    }
}

/// A recorded group; dropping it removes the record.
#[derive(Debug)]
pub struct LedgerEntry {
    path: PathBuf,
    record: LedgerRecord,
}

impl LedgerEntry {
    /// What was recorded.
    pub fn record(&self) -> &LedgerRecord {
        &self.record
    }
}

impl Drop for LedgerEntry {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn records_round_trip() {
        let r = LedgerRecord {
            pid: 12,
            pgid: 12,
            start_time: 345,
            command: "node server.js --flag x".into(),
        };
        assert_eq!(LedgerRecord::parse(&r.to_text()), Some(r));
        assert_eq!(LedgerRecord::parse("pid 1\n"), None);
    }

    #[test]
    fn proc_stat_reads_our_own_process() {
        let (pgid, start) = proc_stat(std::process::id()).unwrap();
        assert!(pgid > 0);
        assert!(start > 0);
        assert_eq!(proc_stat(u32::MAX), None);
    }
}

/// What [`migrate_memory`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryMigration {
    /// No MEMORY.md at the old place: nothing to do.
    Nothing,
    /// The old file was moved to the new place.
    Moved,
    /// Both exist: the new one is kept and the old one left where it is
    /// (the agent can change it, so it is not merged in).
    BothExist,
}

/// Moves a MEMORY.md left in the workspace by an older hale (`legacy`) to
/// its place outside the workspace (`to`), once, so an upgrade keeps its
/// lessons. The move is a rename, or a synced copy and a removal when the
/// two are on different file systems; the new file is 0600.
///
/// # Errors
/// The I/O error of the step that failed; the old file is then untouched.
pub fn migrate_memory(legacy: &Path, to: &Path) -> io::Result<MemoryMigration> {
    if legacy == to || !legacy.is_file() {
        return Ok(MemoryMigration::Nothing);
    }
    if to.exists() {
        return Ok(MemoryMigration::BothExist);
    }
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    if fs::rename(legacy, to).is_err() {
        let text = fs::read(legacy)?;
        let mut file = OpenOptions::new().write(true).create_new(true).open(to)?;
        file.write_all(&text)?;
        file.sync_all()?;
        fs::remove_file(legacy)?;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(to, fs::Permissions::from_mode(0o600))?;
    }
    Ok(MemoryMigration::Moved)
}
