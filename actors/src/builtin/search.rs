//! `glob` and `grep`: how an agent finds its way around a workspace.
//!
//! An agent that cannot search reads whole directories file by file and
//! runs out of context; one that searches without bounds floods its context
//! with `target/` and `node_modules/`. So both tools walk the way a
//! developer's own tools do (ignore files honoured, hidden entries skipped,
//! symlinked directories not entered, symlinked files only when they stay
//! inside the workspace), cap what they return, and say so with a `partial`
//! outcome when they stop early, so the agent knows to narrow its search
//! rather than conclude that nothing else exists.

// Failures here are the tool's answer, a `ToolOutcome` handed to the agent
// as is; boxing it on the error path would only be unboxed again, and that
// path is cold next to the file-system call that produced it.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use grep_regex::RegexMatcherBuilder;
use grep_searcher::sinks::Lossy;
use grep_searcher::{BinaryDetection, SearcherBuilder};
use serde::Deserialize;
use serde_json::{Value, json};

use super::workspace::{Workspace, invalid_input, parse_args, readable_file, run_blocking, walker};
use crate::outcome::ToolOutcome;
use crate::tool::{BoxFuture, Tool, ToolContext, ToolSpec};

/// Limits of [`Glob`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobConfig {
    /// The most paths one call returns (default 1000); more is `partial`.
    pub max_results: usize,
    /// The most walk entries one call looks at (default 100 000); a walk
    /// cut short is `partial`.
    pub max_walk_entries: usize,
}

impl Default for GlobConfig {
    fn default() -> Self {
        Self {
            max_results: 1000,
            max_walk_entries: 100_000,
        }
    }
}

/// Limits of [`Grep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrepConfig {
    /// The most matching lines one call returns (default 1000), and the
    /// ceiling of the `max_matches` argument; more is `partial`.
    pub max_matches: usize,
    /// The most walk entries one call looks at (default 100 000); a walk
    /// cut short is `partial`.
    pub max_walk_entries: usize,
    /// Matching lines longer than this many characters are clipped (default
    /// 500), so one minified file cannot fill the context.
    pub max_line_chars: usize,
}

impl Default for GrepConfig {
    fn default() -> Self {
        Self {
            max_matches: 1000,
            max_walk_entries: 100_000,
            max_line_chars: 500,
        }
    }
}

/// The `glob` tool: files whose path matches a glob pattern.
///
/// Arguments `{pattern, path?}`: the pattern is matched against each file's
/// path relative to `path` (a directory, default the workspace root), with
/// `*` not crossing `/` and `**` matching any number of directories. Data
/// `{matches, truncated}`: workspace-relative paths, sorted. Over
/// `max_results` matches the outcome is `partial` with the first ones.
#[derive(Debug)]
pub struct Glob {
    workspace: Workspace,
    config: GlobConfig,
    spec: ToolSpec,
}

impl Glob {
    /// A `glob` tool confined to `workspace`.
    pub fn new(workspace: Workspace, config: GlobConfig) -> Self {
        let spec = ToolSpec::new(
            "glob",
            format!(
                "Find files in the workspace by path pattern. The pattern is matched against \
                 paths relative to `path` (default: the workspace root): `*` matches within one \
                 directory, `**` across directories, `?` one character, `{{a,b}}` alternatives, \
                 `[ab]` a class. Examples: `**/*.rs`, `src/*.{{ts,tsx}}`, `**/test_*.py`. \
                 Files listed in .gitignore/.ignore and hidden files are skipped. Returns \
                 {{matches, truncated}} with sorted workspace-relative file paths, at most {}.",
                config.max_results
            ),
            json!({
                "type": "object",
                "properties": {
                    "pattern": {
                        "type": "string",
                        "description": "Glob pattern, relative to `path`, e.g. `**/*.rs`."
                    },
                    "path": {
                        "type": "string",
                        "description": "Directory to search in, relative to the workspace root. Default: the root."
                    }
                },
                "required": ["pattern"],
                "additionalProperties": false
            }),
        )
        .with_idempotent(true);
        Self {
            workspace,
            config,
            spec,
        }
    }
}

impl Tool for Glob {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        let workspace = self.workspace.clone();
        let config = self.config;
        Box::pin(run_blocking(move || {
            glob(&workspace, config, args).unwrap_or_else(|failure| failure)
        }))
    }
}

/// The `grep` tool: lines matching a regular expression.
///
/// Arguments `{pattern, path?, glob?, case_insensitive?, max_matches?}`.
/// `path` is a file or a directory (default the workspace root); `glob`
/// filters files, by file name when it has no `/` (`*.rs`), else by path
/// relative to `path`. Binary files are skipped. Data `{matches: [{path,
/// line, text}], truncated}` in walk order (paths sorted, lines
/// ascending). Over the match cap the outcome is `partial`.
#[derive(Debug)]
pub struct Grep {
    workspace: Workspace,
    config: GrepConfig,
    spec: ToolSpec,
}

impl Grep {
    /// A `grep` tool confined to `workspace`.
    pub fn new(workspace: Workspace, config: GrepConfig) -> Self {
        let max = config.max_matches;
        let spec = ToolSpec::new(
            "grep",
            format!(
                "Search file contents in the workspace with a regular expression (Rust regex \
                 syntax, matched line by line). Searches `path` (a file or directory, default: \
                 the workspace root); `glob` keeps only matching files (`*.rs` matches file \
                 names anywhere, `src/**/*.rs` paths relative to `path`). Files listed in \
                 .gitignore/.ignore, hidden files and binary files are skipped. Returns \
                 {{matches: [{{path, line, text}}], truncated}} with 1-based line numbers, at most \
                 {max} matches."
            ),
            json!({
                "type": "object",
                "properties": {
                    "pattern": {
                        "type": "string",
                        "description": "Regular expression to search for, e.g. `fn\\s+main` or `TODO|FIXME`."
                    },
                    "path": {
                        "type": "string",
                        "description": "File or directory to search, relative to the workspace root. Default: the root."
                    },
                    "glob": {
                        "type": "string",
                        "description": "Only search files matching this glob, e.g. `*.rs`."
                    },
                    "case_insensitive": {
                        "type": "boolean",
                        "default": false,
                        "description": "Match regardless of case. Default false."
                    },
                    "max_matches": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": max,
                        "description": format!("Most matching lines to return. Default and maximum {max}.")
                    }
                },
                "required": ["pattern"],
                "additionalProperties": false
            }),
        )
        .with_idempotent(true);
        Self {
            workspace,
            config,
            spec,
        }
    }
}

impl Tool for Grep {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        let workspace = self.workspace.clone();
        let config = self.config;
        Box::pin(run_blocking(move || {
            grep(&workspace, config, args).unwrap_or_else(|failure| failure)
        }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GlobArgs {
    pattern: String,
    #[serde(default)]
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrepArgs {
    pattern: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    glob: Option<String>,
    #[serde(default)]
    case_insensitive: Option<bool>,
    #[serde(default)]
    max_matches: Option<u64>,
}

fn glob(
    workspace: &Workspace,
    config: GlobConfig,
    args: Value,
) -> Result<ToolOutcome, ToolOutcome> {
    let args: GlobArgs = parse_args("glob", args)?;
    let dir = search_start(workspace, args.path.as_deref())?;
    if !dir.is_dir() {
        return Err(invalid_input(format!(
            "`path` `{}` is not a directory; glob searches a directory",
            workspace.display(&dir)
        )));
    }
    let pattern = relative_pattern(&args.pattern, &dir)?;
    let matcher = compile_glob("pattern", &pattern)?;

    let mut matches = Vec::new();
    let mut stop = None;
    for (seen, entry) in walker(&dir).build().enumerate() {
        if seen >= config.max_walk_entries {
            stop = Some(format!(
                "stopped after looking at {} entries; narrow `path` or the pattern",
                config.max_walk_entries
            ));
            break;
        }
        let Ok(entry) = entry else { continue };
        if entry.depth() == 0 || !readable_file(workspace, &entry) {
            continue;
        }
        let Ok(relative) = entry.path().strip_prefix(&dir) else {
            continue;
        };
        if matcher.is_match(relative) {
            if matches.len() >= config.max_results {
                stop = Some(format!(
                    "more than {} files match; showing the first {0}; narrow the pattern or `path`",
                    config.max_results
                ));
                break;
            }
            matches.push(workspace.display(entry.path()));
        }
    }
    matches.sort();
    let truncated = stop.is_some();
    let data = json!({ "matches": matches, "truncated": truncated });
    Ok(match stop {
        Some(message) => ToolOutcome::partial(data, message),
        None => ToolOutcome::success(data),
    })
}

fn grep(
    workspace: &Workspace,
    config: GrepConfig,
    args: Value,
) -> Result<ToolOutcome, ToolOutcome> {
    let args: GrepArgs = parse_args("grep", args)?;
    let max = match args.max_matches {
        Some(0) => return Err(invalid_input("`max_matches` must be at least 1")),
        Some(n) => usize::try_from(n).map_or(config.max_matches, |n| n.min(config.max_matches)),
        None => config.max_matches,
    };
    let start = search_start(workspace, args.path.as_deref())?;
    let matcher = RegexMatcherBuilder::new()
        .case_insensitive(args.case_insensitive.unwrap_or(false))
        // Searching is line by line; a pattern that could only match
        // across lines is rejected here instead of silently never matching.
        .line_terminator(Some(b'\n'))
        .build(&args.pattern)
        .map_err(|e| {
            invalid_input(format!(
                "`pattern` `{}` is not a valid regular expression: {e}",
                args.pattern
            ))
        })?;
    let filter = match args.glob.as_deref() {
        Some(glob) => Some(FileFilter {
            by_path: glob.contains('/'),
            matcher: compile_glob("glob", glob.strip_prefix("./").unwrap_or(glob))?,
        }),
        None => None,
    };
    let mut searcher = SearcherBuilder::new()
        .binary_detection(BinaryDetection::quit(0))
        .line_number(true)
        .build();

    let mut matches = Vec::new();
    let mut stop = None;
    for (seen, entry) in walker(&start).build().enumerate() {
        if seen >= config.max_walk_entries {
            stop = Some(format!(
                "stopped after looking at {} entries; narrow `path` or `glob`",
                config.max_walk_entries
            ));
            break;
        }
        let Ok(entry) = entry else { continue };
        if !readable_file(workspace, &entry) {
            continue;
        }
        if let Some(filter) = &filter
            && !filter.keeps(entry.path(), &start)
        {
            continue;
        }
        let shown = workspace.display(entry.path());
        let mut full = false;
        let sink = Lossy(|line, text: &str| {
            if matches.len() >= max {
                full = true;
                return Ok(false);
            }
            matches.push(json!({
                "path": shown,
                "line": line,
                "text": clip(text, config.max_line_chars),
            }));
            Ok(true)
        });
        // A file that cannot be read (permissions, vanished mid-walk) is
        // skipped: it must not hide the matches in every other file.
        let _ = searcher.search_path(&matcher, entry.path(), sink);
        if full {
            stop = Some(format!(
                "more than {max} lines match; showing the first {max}; narrow the pattern, \
                 `path` or `glob`"
            ));
            break;
        }
    }
    let truncated = stop.is_some();
    let data = json!({ "matches": matches, "truncated": truncated });
    Ok(match stop {
        Some(message) => ToolOutcome::partial(data, message),
        None => ToolOutcome::success(data),
    })
}

/// Which files a `grep` `glob` keeps.
struct FileFilter {
    /// A pattern with a `/` is about paths, one without about file names
    /// (as in `.gitignore`), so `*.rs` keeps Rust files at any depth.
    by_path: bool,
    matcher: GlobMatcher,
}

impl FileFilter {
    fn keeps(&self, file: &Path, start: &Path) -> bool {
        if self.by_path {
            file.strip_prefix(start)
                .is_ok_and(|relative| self.matcher.is_match(relative))
        } else {
            file.file_name()
                .is_some_and(|name| self.matcher.is_match(name))
        }
    }
}

/// Where a search starts: the confined `path`, or the workspace root.
fn search_start(workspace: &Workspace, path: Option<&str>) -> Result<PathBuf, ToolOutcome> {
    match path {
        Some(path) => workspace.resolve(path),
        None => Ok(workspace.root().to_path_buf()),
    }
}

/// The pattern relative to `dir`: a leading `./` is dropped, and an
/// absolute pattern is accepted only when it starts with `dir`.
fn relative_pattern(pattern: &str, dir: &Path) -> Result<String, ToolOutcome> {
    if pattern.is_empty() {
        return Err(invalid_input("`pattern` is empty; try `**/*`"));
    }
    if pattern.starts_with('/') {
        let prefix = format!("{}/", dir.to_string_lossy());
        return pattern
            .strip_prefix(&prefix)
            .map(str::to_owned)
            .ok_or_else(|| {
                invalid_input(format!(
                    "`pattern` `{pattern}` is absolute; give it relative to `path` (default: the \
                     workspace root), e.g. `**/*.rs`"
                ))
            });
    }
    Ok(pattern.strip_prefix("./").unwrap_or(pattern).to_owned())
}

fn compile_glob(field: &str, pattern: &str) -> Result<GlobMatcher, ToolOutcome> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|glob| glob.compile_matcher())
        .map_err(|e| {
            invalid_input(format!(
                "`{field}` `{pattern}` is not a valid glob pattern: {e}"
            ))
        })
}

/// A matching line without its line terminator, at most `max_chars`
/// characters (an ellipsis marks a clipped line).
fn clip(line: &str, max_chars: usize) -> String {
    let line = line.trim_end_matches(['\n', '\r']);
    match line.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line.to_owned(),
    }
}
