//! `read_file`, `write_file` and `edit_file`: the tools an agent changes a
//! project with.
//!
//! They are built for the ways agents misuse files. Agents read files far
//! larger than their context, so reads are bounded and resumable by byte
//! range, and a range never splits a UTF-8 character (a loop of reads
//! reassembles the file exactly). Agents edit from a stale or misremembered
//! view of a file, so an edit must name text that occurs exactly once, and
//! says how many times it occurred when it does not. And an agent (or the
//! runtime) can be interrupted mid-write, so every write goes to a
//! temporary file that is renamed over the target: the file is either the
//! old one or the new one, never half of each. All paths are confined by
//! [`Workspace`].
//!
//! MEMORY.md lives outside the workspace, and only its memory actor writes
//! it: the agent must not be able to rewrite the text that goes into every
//! session's system prompt. Built `with_memory`, the file tools give its
//! old workspace path, `memory/MEMORY.md`, one meaning: `read_file` reads
//! the lessons from the actor, and `write_file` and `edit_file` are refused
//! with a hint to use `remember`.
//!
//! What an agent reads has its secrets masked (the dispatcher replaces
//! them with `[REDACTED]`), so a file read, changed and written back whole
//! would lose its secrets: `write_file` refuses content holding the
//! marker, and `edit_file` a `new_text` adding one (`INVALID_INPUT`, not
//! retryable, with a hint).

// Failures here are the tool's answer, a `ToolOutcome` handed to the agent
// as is; boxing it on the error path would only be unboxed again, and that
// path is cold next to the file-system call that produced it.
#![allow(clippy::result_large_err)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use super::workspace::{Workspace, invalid_input, io_failure, parse_args};
use crate::catalog::ErrorCode;
use crate::memory::{DEFAULT_MEMORY_PATH, MemoryHandle};
use crate::outcome::{Hint, HintKind, ToolOutcome};
use crate::secrets::REDACTED;
use crate::tool::{BoxFuture, Tool, ToolContext, ToolSpec};

/// A UTF-8 character is at most this long, so reading this many bytes past
/// a range is enough to finish a character it splits.
const MAX_CHAR_BYTES: u64 = 4;

/// Limits of [`ReadFile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadFileConfig {
    /// The most bytes one call returns (default 256 KiB). Larger files
    /// must be read in parts with `offset` and `limit`.
    pub max_bytes: u64,
}

impl Default for ReadFileConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024,
        }
    }
}

/// Limits of [`WriteFile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteFileConfig {
    /// The largest `content` accepted, in bytes (default 16 MiB).
    pub max_bytes: u64,
    /// Who owns what the tool writes, as `(uid, gid)`: set when `exec`
    /// runs as another user than hale (hale as root), so that user can
    /// work on the files; `None` (default) keeps hale's ownership.
    pub owner: Option<(u32, u32)>,
}

impl Default for WriteFileConfig {
    fn default() -> Self {
        Self {
            max_bytes: 16 * 1024 * 1024,
            owner: None,
        }
    }
}

/// Limits of [`EditFile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EditFileConfig {
    /// The largest file that may be edited, in bytes (default 16 MiB); the
    /// whole file is held in memory during an edit.
    pub max_bytes: u64,
    /// Who owns an edited file, as `(uid, gid)` (see
    /// [`WriteFileConfig::owner`]).
    pub owner: Option<(u32, u32)>,
}

impl Default for EditFileConfig {
    fn default() -> Self {
        Self {
            max_bytes: 16 * 1024 * 1024,
            owner: None,
        }
    }
}

/// The `read_file` tool: a byte range of a text file in the workspace.
///
/// Arguments `{path, offset?, limit?}` (bytes). Data `{path, content,
/// offset, bytes, total_bytes, eof, lossy}`; `path` is workspace-relative
/// with symlinks resolved. A range that would end inside a UTF-8 character
/// is shortened to the character's start (or, when that would return
/// nothing, extended to its end), so `offset + bytes` is always the right
/// next offset. A range over `max_bytes` is `FILE_TOO_LARGE` with data
/// `{path, total_bytes, max_bytes}`; a directory is `INVALID_INPUT`;
/// invalid UTF-8 is replaced and flagged `lossy: true`.
#[derive(Debug)]
pub struct ReadFile {
    workspace: Workspace,
    config: ReadFileConfig,
    spec: ToolSpec,
    memory: Vec<MemoryHandle>,
}

impl ReadFile {
    /// A `read_file` tool confined to `workspace`.
    pub fn new(workspace: Workspace, config: ReadFileConfig) -> Self {
        let max = config.max_bytes;
        let spec = ToolSpec::new(
            "read_file",
            format!(
                "Read a text file in the workspace. Returns {{path, content, offset, bytes, \
                 total_bytes, eof, lossy}}. At most {max} bytes are returned per call: for a \
                 larger file pass `offset` and `limit` (in bytes) and continue at offset + bytes \
                 until eof is true. A range never ends inside a UTF-8 character, so `bytes` may \
                 differ slightly from `limit`. Invalid UTF-8 is replaced with U+FFFD and flagged \
                 lossy: true. Use grep to find lines in big files and glob to list directories."
            ),
            json!({
                "type": "object",
                "properties": {
                    "path": {
                        "type": "string",
                        "description": "The file to read, relative to the workspace root (or absolute inside it)."
                    },
                    "offset": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Byte offset to start reading at. Default 0."
                    },
                    "limit": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": max,
                        "description": format!("Most bytes to return. Default: the rest of the file, which must then be at most {max} bytes.")
                    }
                },
                "required": ["path"],
                "additionalProperties": false
            }),
        )
        .with_idempotent(true);
        Self {
            workspace,
            config,
            spec,
            memory: Vec::new(),
        }
    }

    /// Serves `memory/MEMORY.md` from `memory`'s actor (the file lives
    /// outside the workspace).
    pub fn with_memory(mut self, memory: MemoryHandle) -> Self {
        self.memory.push(memory);
        self
    }

    async fn run(&self, args: Value) -> ToolOutcome {
        let workspace = self.workspace.clone();
        let config = self.config;
        let memory = self.memory.clone();
        let step = tokio::task::spawn_blocking(move || {
            if let Some(path) = args.get("path").and_then(Value::as_str)
                && let Some(handle) = memory_of(&workspace, &memory, path)
            {
                return Ok((handle, args));
            }
            Err(read(&workspace, config, args).unwrap_or_else(|failure| failure))
        })
        .await;
        match step {
            Ok(Ok((handle, args))) => read_memory(&handle, config, args).await,
            Ok(Err(outcome)) => outcome,
            Err(e) => {
                ToolOutcome::from_code(ErrorCode::Internal, format!("file tool worker failed: {e}"))
            }
        }
    }
}

impl Tool for ReadFile {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        Box::pin(self.run(args))
    }
}

/// The `write_file` tool: creates or replaces a file in the workspace.
///
/// Arguments `{path, content, create_dirs?}` (`create_dirs` defaults to
/// true). The content goes to a temporary file in the target's directory
/// that is then renamed over the target, so readers see the old or the new
/// file, never a mix; an existing file keeps its permissions. Writing
/// through a symlink writes its target (which must be inside the
/// workspace). Data `{path, bytes}`. Built [`with_memory`](Self::with_memory),
/// a write to `memory/MEMORY.md` is refused: lessons go through `remember`.
#[derive(Debug)]
pub struct WriteFile {
    workspace: Workspace,
    config: WriteFileConfig,
    spec: ToolSpec,
    memory: Vec<MemoryHandle>,
}

impl WriteFile {
    /// A `write_file` tool confined to `workspace`.
    pub fn new(workspace: Workspace, config: WriteFileConfig) -> Self {
        let spec = ToolSpec::new(
            "write_file",
            format!(
                "Create a file in the workspace, or replace its whole content. Missing parent \
                 directories are created unless create_dirs is false. The write is atomic: the \
                 file is either the old or the new version, never a mix. Returns {{path, bytes}}. \
                 Content is limited to {} bytes. To change part of an existing file, use \
                 edit_file instead.",
                config.max_bytes
            ),
            json!({
                "type": "object",
                "properties": {
                    "path": {
                        "type": "string",
                        "description": "The file to write, relative to the workspace root (or absolute inside it)."
                    },
                    "content": {
                        "type": "string",
                        "description": "The complete new content of the file."
                    },
                    "create_dirs": {
                        "type": "boolean",
                        "default": true,
                        "description": "Create missing parent directories. Default true."
                    }
                },
                "required": ["path", "content"],
                "additionalProperties": false
            }),
        );
        Self {
            workspace,
            config,
            spec,
            memory: Vec::new(),
        }
    }

    /// Refuses writes to `memory`'s file and to its workspace path
    /// `memory/MEMORY.md`: only the memory actor writes it.
    pub fn with_memory(mut self, memory: MemoryHandle) -> Self {
        self.memory.push(memory);
        self
    }
}

impl Tool for WriteFile {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        let workspace = self.workspace.clone();
        let config = self.config;
        let memory = self.memory.clone();
        Box::pin(run_step(move || write(&workspace, config, args, &memory)))
    }
}

/// The `edit_file` tool: replaces one exact occurrence of a text in a file.
///
/// Arguments `{path, old_text, new_text}`. `old_text` must occur exactly
/// once (occurrences may overlap): none is `NOT_FOUND`, several are
/// `AMBIGUOUS` with data `{path, matches}`, and in both cases the file is
/// left untouched. The new content is written atomically, as by
/// [`WriteFile`]. Data `{path, replaced: 1}`. Built
/// [`with_memory`](Self::with_memory), an edit of `memory/MEMORY.md` is
/// refused: lessons go through `remember`.
#[derive(Debug)]
pub struct EditFile {
    workspace: Workspace,
    config: EditFileConfig,
    spec: ToolSpec,
    memory: Vec<MemoryHandle>,
}

impl EditFile {
    /// An `edit_file` tool confined to `workspace`.
    pub fn new(workspace: Workspace, config: EditFileConfig) -> Self {
        let spec = ToolSpec::new(
            "edit_file",
            "Replace one exact occurrence of old_text with new_text in a UTF-8 text file in the \
             workspace. old_text must match the file exactly (whitespace, indentation and line \
             endings included) and occur exactly once: if it occurs several times, include more \
             surrounding lines to make it unique; if it is not found, read the file again and \
             copy the text. The file is unchanged when the edit fails and written atomically \
             when it succeeds. Returns {path, replaced}.",
            json!({
                "type": "object",
                "properties": {
                    "path": {
                        "type": "string",
                        "description": "The file to edit, relative to the workspace root (or absolute inside it)."
                    },
                    "old_text": {
                        "type": "string",
                        "minLength": 1,
                        "description": "The exact text to replace; must occur exactly once in the file."
                    },
                    "new_text": {
                        "type": "string",
                        "description": "The text to put in its place (may be empty to delete)."
                    }
                },
                "required": ["path", "old_text", "new_text"],
                "additionalProperties": false
            }),
        );
        Self {
            workspace,
            config,
            spec,
            memory: Vec::new(),
        }
    }

    /// Refuses edits of `memory`'s file (see [`WriteFile::with_memory`]).
    pub fn with_memory(mut self, memory: MemoryHandle) -> Self {
        self.memory.push(memory);
        self
    }
}

impl Tool for EditFile {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        let workspace = self.workspace.clone();
        let config = self.config;
        let memory = self.memory.clone();
        Box::pin(run_step(move || edit(&workspace, config, args, &memory)))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadArgs {
    path: String,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    limit: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteArgs {
    path: String,
    content: String,
    #[serde(default)]
    create_dirs: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditArgs {
    path: String,
    old_text: String,
    new_text: String,
}

fn read(
    workspace: &Workspace,
    config: ReadFileConfig,
    args: Value,
) -> Result<ToolOutcome, ToolOutcome> {
    let args: ReadArgs = parse_args("read_file", args)?;
    let path = workspace.resolve(&args.path)?;
    let shown = workspace.display(&path);
    // Checked before opening: opening a FIFO would block.
    let meta = regular_file(&path, &shown)?;
    let total = meta.len();
    let offset = args.offset.unwrap_or(0);
    let remaining = total.saturating_sub(offset);
    let want = args.limit.unwrap_or(remaining).min(remaining);
    if want > config.max_bytes {
        return Err(ToolOutcome::from_code(
            ErrorCode::FileTooLarge,
            format!(
                "`{shown}` is {total} bytes and this read would return {want} of them, more than \
                 read_file's limit of {max} bytes per call; read it in parts with `offset` and \
                 `limit` (limit at most {max}), continuing at offset + bytes until eof",
                max = config.max_bytes
            ),
        )
        .with_data(json!({
            "path": shown,
            "total_bytes": total,
            "max_bytes": config.max_bytes,
        })));
    }

    let mut file = File::open(&path).map_err(|e| io_failure("cannot open", &shown, &e))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| io_failure("cannot seek in", &shown, &e))?;
    let lookahead = want.saturating_add(MAX_CHAR_BYTES - 1);
    let mut buf = Vec::with_capacity(usize::try_from(lookahead).unwrap_or(0));
    file.take(lookahead)
        .read_to_end(&mut buf)
        .map_err(|e| io_failure("cannot read", &shown, &e))?;
    let got = buf.len();
    let cut = char_cut(&buf, usize::try_from(want).unwrap_or(usize::MAX));
    let end = offset.saturating_add(cut as u64);
    let hit_end = (got as u64) < lookahead;
    let eof = (hit_end && cut == got) || end >= total;
    buf.truncate(cut);
    let (content, lossy) = match String::from_utf8(buf) {
        Ok(text) => (text, false),
        Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
    };
    Ok(ToolOutcome::success(json!({
        "path": shown,
        "content": content,
        "offset": offset,
        "bytes": cut,
        "total_bytes": total,
        "eof": eof,
        "lossy": lossy,
    })))
}

/// Where to end a range of `want` bytes of `buf` (which holds up to three
/// bytes more) so that it does not split a UTF-8 character: at the start
/// of the character `want` falls in, or at its end when it is the range's
/// first character (so a caller looping on `offset + bytes` always moves
/// on). Invalid sequences are cut where asked; they come out lossy anyway.
fn char_cut(buf: &[u8], want: usize) -> usize {
    if want == 0 {
        return 0;
    }
    if want >= buf.len() || !is_continuation(buf[want]) {
        return want.min(buf.len());
    }
    let floor = want.saturating_sub(MAX_CHAR_BYTES as usize - 1);
    let mut start = want - 1;
    while start > floor && is_continuation(buf[start]) {
        start -= 1;
    }
    match sequence_len(buf[start]) {
        Some(len) if start + len > want => {
            if start > 0 {
                start
            } else {
                len.min(buf.len())
            }
        }
        _ => want,
    }
}

fn is_continuation(byte: u8) -> bool {
    byte & 0b1100_0000 == 0b1000_0000
}

/// The length of the UTF-8 sequence a lead byte starts; `None` for a byte
/// that cannot start one.
fn sequence_len(byte: u8) -> Option<usize> {
    match byte {
        0x00..=0x7f => Some(1),
        0xc0..=0xdf => Some(2),
        0xe0..=0xef => Some(3),
        0xf0..=0xf7 => Some(4),
        _ => None,
    }
}

fn write(
    workspace: &Workspace,
    config: WriteFileConfig,
    args: Value,
    memory: &[MemoryHandle],
) -> Result<ToolOutcome, ToolOutcome> {
    let args: WriteArgs = parse_args("write_file", args)?;
    if args.content.contains(REDACTED) {
        return Err(masked_text_refused("write_file", "content", &args.path));
    }
    let bytes = args.content.len() as u64;
    if bytes > config.max_bytes {
        return Err(ToolOutcome::from_code(
            ErrorCode::FileTooLarge,
            format!(
                "`content` is {bytes} bytes, more than write_file's limit of {} bytes",
                config.max_bytes
            ),
        )
        .with_data(json!({
            "path": args.path,
            "bytes": bytes,
            "max_bytes": config.max_bytes,
        })));
    }
    if args.path.ends_with('/') {
        return Err(invalid_input(format!(
            "`path` `{}` ends with `/`; give the path of a file",
            args.path
        )));
    }
    if memory_of(workspace, memory, &args.path).is_some() {
        return Err(memory_refused("write_file", &args.path));
    }
    let target = workspace.resolve_for_write(&args.path)?;
    let shown = workspace.display(&target);
    if let Ok(meta) = fs::metadata(&target) {
        if meta.is_dir() {
            return Err(is_a_directory(&shown));
        }
        if !meta.is_file() {
            return Err(not_regular(&shown));
        }
    }
    let Some(parent) = target.parent() else {
        return Err(is_a_directory(&shown));
    };
    if !parent.is_dir() {
        if args.create_dirs.unwrap_or(true) {
            create_dirs(parent, config.owner)
                .map_err(|e| io_failure("cannot create the directories for", &shown, &e))?;
        } else {
            return Err(ToolOutcome::from_code(
                ErrorCode::NotFound,
                format!(
                    "the directory of `{shown}` does not exist; pass create_dirs: true to create it"
                ),
            )
            .with_data(json!({ "path": shown })));
        }
    }
    atomic_write(&target, args.content.as_bytes(), config.owner)
        .map_err(|e| io_failure("cannot write", &shown, &e))?;
    Ok(ToolOutcome::success(
        json!({ "path": shown, "bytes": bytes }),
    ))
}

fn edit(
    workspace: &Workspace,
    config: EditFileConfig,
    args: Value,
    memory: &[MemoryHandle],
) -> Result<ToolOutcome, ToolOutcome> {
    let args: EditArgs = parse_args("edit_file", args)?;
    // A marker already in the file (so in `old_text`) may stay; a new one
    // is a masked read being written back.
    if count_matches(&args.new_text, REDACTED) > count_matches(&args.old_text, REDACTED) {
        return Err(masked_text_refused("edit_file", "new_text", &args.path));
    }
    if args.old_text.is_empty() {
        return Err(invalid_input(
            "`old_text` is empty; give the exact text to replace (use write_file to write a whole file)",
        ));
    }
    if memory_of(workspace, memory, &args.path).is_some() {
        return Err(memory_refused("edit_file", &args.path));
    }
    let path = workspace.resolve(&args.path)?;
    let shown = workspace.display(&path);
    let meta = regular_file(&path, &shown)?;
    if meta.len() > config.max_bytes {
        return Err(ToolOutcome::from_code(
            ErrorCode::FileTooLarge,
            format!(
                "`{shown}` is {} bytes, more than edit_file's limit of {} bytes",
                meta.len(),
                config.max_bytes
            ),
        )
        .with_data(json!({
            "path": shown,
            "total_bytes": meta.len(),
            "max_bytes": config.max_bytes,
        })));
    }
    let bytes = fs::read(&path).map_err(|e| io_failure("cannot read", &shown, &e))?;
    let Ok(text) = String::from_utf8(bytes) else {
        return Err(invalid_input(format!(
            "`{shown}` is not UTF-8 text; edit_file only edits text files"
        ))
        .with_data(json!({ "path": shown })));
    };
    match count_matches(&text, &args.old_text) {
        0 => Err(ToolOutcome::from_code(
            ErrorCode::NotFound,
            format!(
                "old_text was not found in `{shown}`; it must match the file exactly, whitespace, \
                 indentation and line endings included: read the file again and copy the text"
            ),
        )
        .with_data(json!({ "path": shown, "matches": 0 }))),
        1 => {
            let edited = text.replacen(&args.old_text, &args.new_text, 1);
            atomic_write(&path, edited.as_bytes(), config.owner)
                .map_err(|e| io_failure("cannot write", &shown, &e))?;
            Ok(ToolOutcome::success(
                json!({ "path": shown, "replaced": 1 }),
            ))
        }
        n => Err(ToolOutcome::from_code(
            ErrorCode::Ambiguous,
            format!(
                "old_text occurs {n} times in `{shown}`; include more surrounding lines so that \
                 it occurs exactly once"
            ),
        )
        .with_data(json!({ "path": shown, "matches": n }))),
    }
}

/// The memory file `path` names, if any: the workspace path
/// `memory/MEMORY.md` (however spelt: `./memory/MEMORY.md`, an absolute
/// path inside the workspace, a symlink to it) or the memory file's own
/// path. Blocking (it resolves the path on disk).
fn memory_of(workspace: &Workspace, memory: &[MemoryHandle], path: &str) -> Option<MemoryHandle> {
    let first = memory.first()?;
    let Ok(target) = workspace.resolve_for_write(path) else {
        // Outside the workspace: the file's own path is outside too, and
        // is refused like any other path out there.
        return None;
    };
    let alias = workspace.root().join(DEFAULT_MEMORY_PATH);
    if target == alias {
        return Some(first.clone());
    }
    memory.iter().find(|m| m.path() == target).cloned()
}

/// The answer to a write or an edit of MEMORY.md: refused, not escalated
/// (nothing a human should approve), with the tool that does add lessons.
fn memory_refused(tool: &str, path: &str) -> ToolOutcome {
    invalid_input(format!(
        "`{path}` is hale's memory: only the runtime writes it, so {tool} cannot change it. \
         Add a lesson with the `remember` tool; read the lessons with read_file."
    ))
    .with_hint(
        Hint::new(
            HintKind::TryInstead,
            "record a lesson with `remember` instead of writing MEMORY.md",
        )
        .with_suggestions(vec!["remember".to_owned()]),
    )
    .with_data(json!({ "path": path, "memory": true }))
}

/// `read_file` of MEMORY.md: the memory actor's text, in the same ranges
/// and shape as a file read.
async fn read_memory(handle: &MemoryHandle, config: ReadFileConfig, args: Value) -> ToolOutcome {
    let args: ReadArgs = match parse_args("read_file", args) {
        Ok(args) => args,
        Err(failure) => return failure,
    };
    let text = match handle.read().await {
        Ok(text) => text,
        Err(failure) => return failure,
    };
    let bytes = text.as_bytes();
    let total = bytes.len() as u64;
    let offset = args.offset.unwrap_or(0).min(total);
    let remaining = total - offset;
    let want = args.limit.unwrap_or(remaining).min(remaining);
    if want > config.max_bytes {
        return ToolOutcome::from_code(
            ErrorCode::FileTooLarge,
            format!(
                "`{}` is {total} bytes and this read would return {want} of them, more than \
                 read_file's limit of {max} bytes per call; read it in parts with `offset` and \
                 `limit` (limit at most {max}), continuing at offset + bytes until eof",
                args.path,
                max = config.max_bytes
            ),
        )
        .with_data(json!({
            "path": args.path,
            "total_bytes": total,
            "max_bytes": config.max_bytes,
        }));
    }
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let rest = bytes.get(start..).unwrap_or_default();
    let cut = char_cut(rest, usize::try_from(want).unwrap_or(usize::MAX));
    let slice = rest.get(..cut).unwrap_or_default();
    let content = String::from_utf8_lossy(slice).into_owned();
    ToolOutcome::success(json!({
        "path": args.path,
        "content": content,
        "offset": offset,
        "bytes": cut,
        "total_bytes": total,
        "eof": offset + cut as u64 >= total,
        "lossy": false,
        "memory": true,
    }))
}

/// Runs a write or an edit off the executor.
async fn run_step<F>(work: F) -> ToolOutcome
where
    F: FnOnce() -> Result<ToolOutcome, ToolOutcome> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(outcome) | Err(outcome)) => outcome,
        Err(e) => {
            ToolOutcome::from_code(ErrorCode::Internal, format!("file tool worker failed: {e}"))
        }
    }
}

/// Occurrences of `needle` in `haystack`, overlapping ones included: for an
/// edit, `aa` in `aaa` is as ambiguous as two separate matches.
pub(crate) fn count_matches(haystack: &str, needle: &str) -> usize {
    // Stepping by the needle's first character keeps `from` on a character
    // boundary, since every match starts with that character.
    let step = needle.chars().next().map_or(1, char::len_utf8);
    let mut count = 0;
    let mut from = 0;
    while let Some(found) = haystack.get(from..).and_then(|rest| rest.find(needle)) {
        count += 1;
        from += found + step;
    }
    count
}

/// The metadata of `path`, which must be a regular file.
fn regular_file(path: &Path, shown: &str) -> Result<fs::Metadata, ToolOutcome> {
    let meta = fs::metadata(path).map_err(|e| io_failure("cannot open", shown, &e))?;
    if meta.is_dir() {
        Err(is_a_directory(shown))
    } else if !meta.is_file() {
        Err(not_regular(shown))
    } else {
        Ok(meta)
    }
}

fn is_a_directory(shown: &str) -> ToolOutcome {
    invalid_input(format!(
        "`{shown}` is a directory; give a file path (use glob to list a directory)"
    ))
    .with_data(json!({ "path": shown }))
}

fn not_regular(shown: &str) -> ToolOutcome {
    invalid_input(format!(
        "`{shown}` is not a regular file (a device, socket or pipe)"
    ))
    .with_data(json!({ "path": shown }))
}

/// The refusal of text holding the redaction marker: what the agent read
/// was masked, and writing it back would replace the real secret with the
/// marker (damage no retry repairs).
fn masked_text_refused(tool: &str, field: &str, path: &str) -> ToolOutcome {
    let mut outcome = ToolOutcome::from_code(
        ErrorCode::InvalidInput,
        format!(
            "`{field}` contains `{REDACTED}`: {tool} does not write the redaction marker into a file"
        ),
    )
    .with_hint(Hint::new(
        HintKind::TryInstead,
        format!(
            "`{REDACTED}` marks a secret hale masked in what you read; the file holds the real \
             value. Do not write the masked text back: leave the lines holding `{REDACTED}` out \
             of the change (edit_file with an old_text that avoids them), or ask a human to set \
             the secret."
        ),
    ))
    .with_data(json!({ "path": path, "marker": REDACTED }));
    outcome.retryable = false;
    outcome.recoverable = true;
    outcome
}

/// Replaces `target` with `content` atomically: a temporary file in the
/// same directory (so the rename stays on one file system) is written,
/// synced and renamed over it. An existing target keeps its permissions;
/// with an `owner`, the file belongs to it.
fn atomic_write(target: &Path, content: &[u8], owner: Option<(u32, u32)>) -> io::Result<()> {
    let dir = target
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
    let permissions = fs::metadata(target).ok().map(|m| m.permissions());
    let (temp_path, mut temp) = create_temp(dir, target)?;
    let result = (|| {
        temp.write_all(content)?;
        if let Some(permissions) = permissions {
            temp.set_permissions(permissions)?;
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&temp, Some(uid), Some(gid))?;
        }
        temp.sync_all()?;
        drop(temp);
        fs::rename(&temp_path, target)
    })();
    if result.is_err() {
        // Best effort: the failure being reported is the write, not this.
        let _ = fs::remove_file(&temp_path);
    }
    result
}

/// Creates `dir` and its missing parents; with an `owner`, each directory
/// created here belongs to it.
fn create_dirs(dir: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.exists())
        .map(Path::to_path_buf)
        .collect();
    fs::create_dir_all(dir)?;
    if let Some((uid, gid)) = owner {
        for created in missing {
            std::os::unix::fs::chown(&created, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// Creates a fresh hidden temporary file next to `target`; hidden so that
/// walks (glob, grep) do not list a write in progress.
pub(crate) fn create_temp(dir: &Path, target: &Path) -> io::Result<(PathBuf, File)> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Keep the temporary name well under NAME_MAX whatever the target's.
    let stem: String = name.chars().take(64).collect();
    let mut last_error = None;
    for _ in 0..16 {
        let candidate = dir.join(format!(".{stem}.{:016x}.hale-tmp", fastrand::u64(..)));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(file) => return Ok((candidate, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free temporary file name")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn char_cut_never_splits_a_character() {
        let text = "a€b";
        let bytes = text.as_bytes();
        // `€` is bytes 1..4.
        assert_eq!(char_cut(bytes, 1), 1);
        assert_eq!(char_cut(bytes, 2), 1);
        assert_eq!(char_cut(bytes, 3), 1);
        assert_eq!(char_cut(bytes, 4), 4);
        // A range shorter than its first character still makes progress.
        assert_eq!(char_cut(&bytes[1..], 1), 3);
        assert_eq!(char_cut(bytes, 0), 0);
    }

    #[test]
    fn overlapping_matches_count() {
        assert_eq!(count_matches("aaa", "aa"), 2);
        assert_eq!(count_matches("€€€", "€€"), 2);
        assert_eq!(count_matches("abc", "x"), 0);
        assert_eq!(count_matches("abc", "b"), 1);
    }
}
