//! The workspace-confined file tools: confinement for every tool, near-miss
//! suggestions, byte-range reads, exact edits, atomic writes, glob and grep.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hale_actors::builtin::{
    EditFile, EditFileConfig, Glob, GlobConfig, Grep, GrepConfig, ReadFile, ReadFileConfig,
    Workspace, WorkspaceError, WriteFile, WriteFileConfig,
};
use hale_actors::{ErrorCode, HintKind, Status, Tool, ToolOutcome, ToolRegistry};
use serde_json::{Value, json};
use tempfile::TempDir;

/// A workspace with a small Rust project in it, and a sibling directory
/// outside it holding a secret, reachable from inside through symlinks.
struct Fixture {
    dir: TempDir,
    outside: TempDir,
    ws: Workspace,
}

const SECRET: &str = "top secret\n";

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (path, content) in [
            ("Cargo.toml", "[package]\nname = \"demo\"\n"),
            ("README.md", "# Demo\nA demo project.\n"),
            ("src/main.rs", "fn main() {\n    demo::run();\n}\n"),
            (
                "src/lib.rs",
                "pub fn run() {\n    println!(\"Hello\");\n}\n",
            ),
            ("src/util.rs", "pub fn helper() {}\n"),
            (
                "tests/it.rs",
                "#[test]\nfn it_runs() {\n    demo::run();\n}\n",
            ),
            ("docs/guide.md", "Say hello to the demo.\n"),
        ] {
            write(root, path, content);
        }
        write(outside.path(), "secret.txt", SECRET);
        symlink(outside.path().join("secret.txt"), root.join("escape.txt")).unwrap();
        symlink(outside.path(), root.join("escape_dir")).unwrap();
        let ws = Workspace::new(root).unwrap();
        Self { dir, outside, ws }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap()
    }

    fn read_file(&self) -> ReadFile {
        ReadFile::new(self.ws.clone(), ReadFileConfig::default())
    }

    fn write_file(&self) -> WriteFile {
        WriteFile::new(self.ws.clone(), WriteFileConfig::default())
    }

    fn edit_file(&self) -> EditFile {
        EditFile::new(self.ws.clone(), EditFileConfig::default())
    }

    fn glob(&self) -> Glob {
        Glob::new(self.ws.clone(), GlobConfig::default())
    }

    fn grep(&self) -> Grep {
        Grep::new(self.ws.clone(), GrepConfig::default())
    }

    /// The outside directory's contents, to prove nothing was written there.
    fn outside_listing(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.outside.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn write(root: &Path, rel: &str, content: impl AsRef<[u8]>) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn assert_code(outcome: &ToolOutcome, code: ErrorCode) {
    assert_eq!(outcome.code, Some(code), "unexpected outcome: {outcome:?}");
}

fn first_suggestion(outcome: &ToolOutcome) -> &str {
    let hint = outcome
        .hints
        .iter()
        .find(|h| h.kind == HintKind::DidYouMean)
        .unwrap_or_else(|| panic!("no did_you_mean hint in {outcome:?}"));
    &hint.suggestions[0]
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------- confinement

/// Every way out of the root that must be refused: `..` onto a real file,
/// an absolute path in a sibling directory, a symlinked file and a
/// symlinked directory pointing outside.
fn escapes(f: &Fixture) -> Vec<String> {
    let outside_name = f.outside.path().file_name().unwrap().to_str().unwrap();
    let secret = f.outside.path().join("secret.txt");
    vec![
        "../outside".to_owned(),
        format!("../{outside_name}/secret.txt"),
        secret.to_str().unwrap().to_owned(),
        "escape.txt".to_owned(),
        "escape_dir/secret.txt".to_owned(),
    ]
}

fn assert_refused(outcome: &ToolOutcome, path: &str) {
    assert_code(outcome, ErrorCode::PermissionDenied);
    assert_eq!(outcome.status, Status::Error);
    assert!(
        outcome.message.contains(path) && outcome.message.contains("outside the workspace root"),
        "message should name `{path}` and the root: {}",
        outcome.message
    );
}

#[tokio::test]
async fn read_file_refuses_paths_outside_the_root() {
    let f = Fixture::new();
    let tool = f.read_file();
    for path in escapes(&f) {
        let outcome = tool
            .call(
                json!({ "path": path }),
                &hale_actors::ToolContext::default(),
            )
            .await;
        assert_refused(&outcome, &path);
        assert!(!outcome.data.to_string().contains("top secret"));
    }
    let dir = tool
        .call(
            json!({ "path": "escape_dir" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_refused(&dir, "escape_dir");
}

#[tokio::test]
async fn write_file_refuses_paths_outside_the_root() {
    let f = Fixture::new();
    let tool = f.write_file();
    let mut paths = escapes(&f);
    // Through the symlinked directory, to a file that does not exist yet.
    paths.push("escape_dir/new.txt".to_owned());
    paths.push("escape_dir/deeper/new.txt".to_owned());
    for path in paths {
        let outcome = tool
            .call(
                json!({ "path": path, "content": "overwritten" }),
                &hale_actors::ToolContext::default(),
            )
            .await;
        assert_refused(&outcome, &path);
    }
    assert_eq!(f.outside_listing(), ["secret.txt"]);
    assert_eq!(
        fs::read_to_string(f.outside.path().join("secret.txt")).unwrap(),
        SECRET
    );
    // The symlinks themselves were not replaced either.
    assert!(
        fs::symlink_metadata(f.path("escape.txt"))
            .unwrap()
            .is_symlink()
    );
}

#[tokio::test]
async fn write_file_refuses_dotdot_after_a_missing_directory() {
    let f = Fixture::new();
    let outcome = f
        .write_file()
        .call(
            json!({ "path": "new/../../x.txt", "content": "x" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&outcome, ErrorCode::PermissionDenied);
    assert!(!f.path("new").exists());
    assert!(!f.root().parent().unwrap().join("x.txt").exists());
}

#[tokio::test]
async fn write_file_refuses_a_dangling_symlink_pointing_outside() {
    let f = Fixture::new();
    let target = f.outside.path().join("planted.txt");
    symlink(&target, f.path("dangling.txt")).unwrap();
    let outcome = f
        .write_file()
        .call(
            json!({ "path": "dangling.txt", "content": "x" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_refused(&outcome, "dangling.txt");
    assert!(!target.exists());
}

#[tokio::test]
async fn edit_file_refuses_paths_outside_the_root() {
    let f = Fixture::new();
    let tool = f.edit_file();
    for path in escapes(&f) {
        let outcome = tool
            .call(
                json!({ "path": path, "old_text": "top", "new_text": "no" }),
                &hale_actors::ToolContext::default(),
            )
            .await;
        assert_refused(&outcome, &path);
    }
    assert_eq!(
        fs::read_to_string(f.outside.path().join("secret.txt")).unwrap(),
        SECRET
    );
}

#[tokio::test]
async fn glob_refuses_paths_outside_the_root() {
    let f = Fixture::new();
    let tool = f.glob();
    let mut paths = escapes(&f);
    paths.push("escape_dir".to_owned());
    paths.push(f.outside.path().to_str().unwrap().to_owned());
    for path in paths {
        let outcome = tool
            .call(
                json!({ "pattern": "**/*", "path": path }),
                &hale_actors::ToolContext::default(),
            )
            .await;
        assert_refused(&outcome, &path);
    }
    // A walk of the root does not list what the symlinks lead to.
    let all = tool
        .call(
            json!({ "pattern": "**/*" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(all.is_success(), "{all:?}");
    let listed = strings(&all.data["matches"]);
    assert!(
        listed.iter().all(|p| !p.starts_with("escape")),
        "{listed:?}"
    );
}

#[tokio::test]
async fn grep_refuses_paths_outside_the_root() {
    let f = Fixture::new();
    let tool = f.grep();
    let mut paths = escapes(&f);
    paths.push("escape_dir".to_owned());
    for path in paths {
        let outcome = tool
            .call(
                json!({ "pattern": "secret", "path": path }),
                &hale_actors::ToolContext::default(),
            )
            .await;
        assert_refused(&outcome, &path);
    }
    // Searching the whole root does not read through the symlinks.
    let all = tool
        .call(
            json!({ "pattern": "top secret" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(all.is_success(), "{all:?}");
    assert_eq!(all.data["matches"], json!([]));
}

#[tokio::test]
async fn symlinks_inside_the_root_are_followed() {
    let f = Fixture::new();
    symlink(f.path("src/lib.rs"), f.path("lib_link.rs")).unwrap();
    let read = f
        .read_file()
        .call(
            json!({ "path": "lib_link.rs" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(read.is_success(), "{read:?}");
    assert_eq!(read.data["path"], "src/lib.rs");

    // Writing through the link writes its target and keeps the link.
    let written = f
        .write_file()
        .call(
            json!({ "path": "lib_link.rs", "content": "pub fn run() {}\n" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(written.is_success(), "{written:?}");
    assert_eq!(written.data["path"], "src/lib.rs");
    assert!(
        fs::symlink_metadata(f.path("lib_link.rs"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(f.read("src/lib.rs"), "pub fn run() {}\n");

    // An absolute path inside the root is accepted.
    let absolute = f.path("src/main.rs");
    let read = f
        .read_file()
        .call(
            json!({ "path": absolute.to_str().unwrap() }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(read.is_success(), "{read:?}");
    assert_eq!(read.data["path"], "src/main.rs");
}

// ------------------------------------------------------------- did you mean

#[tokio::test]
async fn misspelt_paths_suggest_the_right_one() {
    let f = Fixture::new();
    let read = f
        .read_file()
        .call(
            json!({ "path": "src/mian.rs" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&read, ErrorCode::NotFound);
    assert_eq!(first_suggestion(&read), "src/main.rs");

    let edit = f
        .edit_file()
        .call(
            json!({ "path": "src/mian.rs", "old_text": "a", "new_text": "b" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&edit, ErrorCode::NotFound);
    assert_eq!(first_suggestion(&edit), "src/main.rs");

    let grep = f
        .grep()
        .call(
            json!({ "pattern": "fn", "path": "src/mian.rs" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&grep, ErrorCode::NotFound);
    assert_eq!(first_suggestion(&grep), "src/main.rs");

    let glob = f
        .glob()
        .call(
            json!({ "pattern": "*.rs", "path": "scr" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&glob, ErrorCode::NotFound);
    assert_eq!(first_suggestion(&glob), "src");
}

#[test]
fn nearest_paths_ranks_the_right_name_in_another_directory_first() {
    let f = Fixture::new();
    assert_eq!(f.ws.nearest_paths("lib.rs", 5)[0], "src/lib.rs");
    assert_eq!(f.ws.nearest_paths("src/mian.rs", 5)[0], "src/main.rs");
    assert_eq!(f.ws.nearest_paths("./README.MD", 5)[0], "README.md");
    assert_eq!(f.ws.nearest_paths("guide.md", 1), ["docs/guide.md"]);
    assert!(f.ws.nearest_paths("lib.rs", 0).is_empty());
}

#[test]
fn workspace_root_must_be_an_existing_directory() {
    let f = Fixture::new();
    assert!(matches!(
        Workspace::new(f.path("missing")),
        Err(WorkspaceError::Unavailable { .. })
    ));
    assert!(matches!(
        Workspace::new(f.path("README.md")),
        Err(WorkspaceError::NotADirectory(_))
    ));
    assert_eq!(f.ws.root(), fs::canonicalize(f.root()).unwrap());
}

// ---------------------------------------------------------------- read_file

#[tokio::test]
async fn read_file_reads_byte_ranges() {
    let f = Fixture::new();
    write(f.root(), "abc.txt", "abcdefghij");
    let tool = f.read_file();

    let whole = tool
        .call(
            json!({ "path": "abc.txt" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(whole.is_success(), "{whole:?}");
    assert_eq!(
        whole.data,
        json!({
            "path": "abc.txt", "content": "abcdefghij", "offset": 0, "bytes": 10,
            "total_bytes": 10, "eof": true, "lossy": false
        })
    );

    let middle = tool
        .call(
            json!({ "path": "abc.txt", "offset": 2, "limit": 3 }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_eq!(middle.data["content"], "cde");
    assert_eq!(middle.data["offset"], 2);
    assert_eq!(middle.data["bytes"], 3);
    assert_eq!(middle.data["eof"], false);

    let tail = tool
        .call(
            json!({ "path": "abc.txt", "offset": 7, "limit": 100 }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_eq!(tail.data["content"], "hij");
    assert_eq!(tail.data["eof"], true);

    let past = tool
        .call(
            json!({ "path": "abc.txt", "offset": 50 }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(past.is_success());
    assert_eq!(past.data["content"], "");
    assert_eq!(past.data["bytes"], 0);
    assert_eq!(past.data["eof"], true);
}

#[tokio::test]
async fn read_file_over_the_limit_is_file_too_large() {
    let f = Fixture::new();
    write(f.root(), "big.txt", "x".repeat(1000));
    let tool = ReadFile::new(f.ws.clone(), ReadFileConfig { max_bytes: 100 });

    let whole = tool
        .call(
            json!({ "path": "big.txt" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&whole, ErrorCode::FileTooLarge);
    assert_eq!(
        whole.data,
        json!({ "path": "big.txt", "total_bytes": 1000, "max_bytes": 100 })
    );
    assert!(whole.message.contains("offset") && whole.message.contains("limit"));
    assert!(whole.recoverable);

    let big_limit = tool
        .call(
            json!({ "path": "big.txt", "limit": 500 }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&big_limit, ErrorCode::FileTooLarge);
    assert_eq!(big_limit.data["total_bytes"], 1000);

    let part = tool
        .call(
            json!({ "path": "big.txt", "limit": 100 }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(part.is_success(), "{part:?}");
    assert_eq!(part.data["bytes"], 100);
    assert_eq!(part.data["eof"], false);

    // The last 100 bytes fit without a limit.
    let rest = tool
        .call(
            json!({ "path": "big.txt", "offset": 900 }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(rest.is_success(), "{rest:?}");
    assert_eq!(rest.data["eof"], true);
}

/// Reads `path` to the end in `limit`-byte steps, as an agent would.
async fn read_in_parts(tool: &ReadFile, path: &str, limit: u64) -> (String, usize, bool) {
    let mut content = String::new();
    let mut offset = 0u64;
    let mut shortened = false;
    for calls in 1.. {
        assert!(calls < 1_000_000, "read loop does not progress");
        let outcome = tool
            .call(
                json!({ "path": path, "offset": offset, "limit": limit }),
                &hale_actors::ToolContext::default(),
            )
            .await;
        assert!(outcome.is_success(), "{outcome:?}");
        assert_eq!(outcome.data["lossy"], false, "a read split a character");
        let bytes = outcome.data["bytes"].as_u64().unwrap();
        content.push_str(outcome.data["content"].as_str().unwrap());
        offset += bytes;
        if outcome.data["eof"] == true {
            return (content, calls, shortened);
        }
        assert!(bytes > 0, "no progress at offset {offset}");
        shortened |= bytes < limit;
    }
    unreachable!()
}

#[tokio::test]
async fn multibyte_file_read_in_parts_reassembles_exactly() {
    let f = Fixture::new();
    // 1-, 2-, 3- and 4-byte characters, 11 bytes a round.
    let text = "aé€😀\n".repeat(3000) + "end";
    write(f.root(), "utf8.txt", &text);
    let tool = f.read_file();

    // 1000 is prime to 11, so the cuts land at every point of a round,
    // inside characters too.
    let (content, calls, shortened) = read_in_parts(&tool, "utf8.txt", 1000).await;
    assert_eq!(content, text);
    assert!(calls > 30);
    assert!(shortened, "no range was shortened, so nothing was tested");

    // Limits smaller than a character still make progress.
    let small = "😀é€x😀";
    write(f.root(), "small.txt", small);
    for limit in 1..=5 {
        let (content, _, _) = read_in_parts(&tool, "small.txt", limit).await;
        assert_eq!(content, small, "limit {limit}");
    }
}

#[tokio::test]
async fn read_file_flags_invalid_utf8_as_lossy() {
    let f = Fixture::new();
    write(f.root(), "bin.dat", [b'f', 0xff, b'g']);
    let outcome = f
        .read_file()
        .call(
            json!({ "path": "bin.dat" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(outcome.data["content"], "f\u{fffd}g");
    assert_eq!(outcome.data["lossy"], true);
    assert_eq!(outcome.data["bytes"], 3);
}

#[tokio::test]
async fn read_file_rejects_directories_and_bad_arguments() {
    let f = Fixture::new();
    let tool = f.read_file();
    let dir = tool
        .call(
            json!({ "path": "src" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&dir, ErrorCode::InvalidInput);
    assert!(dir.message.contains("directory"));

    let missing = tool
        .call(json!({}), &hale_actors::ToolContext::default())
        .await;
    assert_code(&missing, ErrorCode::InvalidInput);
    assert!(missing.message.contains("path"), "{}", missing.message);

    let typo = tool
        .call(
            json!({ "path": "README.md", "offest": 1 }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&typo, ErrorCode::InvalidInput);
    assert!(typo.message.contains("offest"), "{}", typo.message);

    let negative = tool
        .call(
            json!({ "path": "README.md", "limit": -1 }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&negative, ErrorCode::InvalidInput);

    let empty = tool
        .call(json!({ "path": "" }), &hale_actors::ToolContext::default())
        .await;
    assert_code(&empty, ErrorCode::InvalidInput);
}

// ---------------------------------------------------------------- edit_file

#[tokio::test]
async fn edit_file_replaces_exactly_one_occurrence() {
    let f = Fixture::new();
    let original = "one two two three\n";
    write(f.root(), "edit.txt", original);
    let tool = f.edit_file();

    let missing = tool
        .call(
            json!({ "path": "edit.txt", "old_text": "four", "new_text": "4" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&missing, ErrorCode::NotFound);
    assert!(
        missing.message.contains("old_text was not found"),
        "{}",
        missing.message
    );
    assert_eq!(f.read("edit.txt"), original);

    let ambiguous = tool
        .call(
            json!({ "path": "edit.txt", "old_text": "two", "new_text": "2" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&ambiguous, ErrorCode::Ambiguous);
    assert_eq!(ambiguous.data["matches"], 2);
    assert_eq!(f.read("edit.txt"), original);

    let done = tool
        .call(
            json!({ "path": "edit.txt", "old_text": "two three", "new_text": "2 three" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(done.is_success(), "{done:?}");
    assert_eq!(done.data, json!({ "path": "edit.txt", "replaced": 1 }));
    assert_eq!(f.read("edit.txt"), "one two 2 three\n");

    let empty = tool
        .call(
            json!({ "path": "edit.txt", "old_text": "", "new_text": "x" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&empty, ErrorCode::InvalidInput);
    assert!(!tool.spec().idempotent);
}

#[tokio::test]
async fn edit_file_counts_overlapping_matches() {
    let f = Fixture::new();
    write(f.root(), "a.txt", "aaa");
    let outcome = f
        .edit_file()
        .call(
            json!({ "path": "a.txt", "old_text": "aa", "new_text": "b" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&outcome, ErrorCode::Ambiguous);
    assert_eq!(outcome.data["matches"], 2);
    assert_eq!(f.read("a.txt"), "aaa");
}

// --------------------------------------------------------------- write_file

#[tokio::test]
async fn write_file_creates_directories_and_leaves_no_temporary_files() {
    let f = Fixture::new();
    let tool = f.write_file();
    let outcome = tool
        .call(
            json!({ "path": "new/deep/file.txt", "content": "héllo\n" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(
        outcome.data,
        json!({ "path": "new/deep/file.txt", "bytes": 7 })
    );
    assert_eq!(f.read("new/deep/file.txt"), "héllo\n");
    let names: Vec<_> = fs::read_dir(f.path("new/deep"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["file.txt"]);

    let refused = tool
        .call(
            json!({ "path": "other/file.txt", "content": "x", "create_dirs": false }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&refused, ErrorCode::NotFound);
    assert!(!f.path("other").exists());

    let dir = tool
        .call(
            json!({ "path": "src", "content": "x" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&dir, ErrorCode::InvalidInput);
    let slash = tool
        .call(
            json!({ "path": "newdir/", "content": "x" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&slash, ErrorCode::InvalidInput);
    assert!(!f.path("newdir").exists());
}

#[tokio::test]
async fn write_file_replaces_content_and_keeps_permissions() {
    let f = Fixture::new();
    fs::set_permissions(f.path("README.md"), fs::Permissions::from_mode(0o640)).unwrap();
    let outcome = f
        .write_file()
        .call(
            json!({ "path": "README.md", "content": "short" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(f.read("README.md"), "short");
    let mode = fs::metadata(f.path("README.md"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
}

/// A reader racing the writer only ever sees a whole old or a whole new
/// file; an in-place truncate-and-write would show it empty or half-done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_file_is_atomic_for_concurrent_readers() {
    let f = Fixture::new();
    let a = "a".repeat(512 * 1024);
    let b = "b".repeat(512 * 1024);
    write(f.root(), "race.txt", &a);
    let done = Arc::new(AtomicBool::new(false));
    let path = f.path("race.txt");
    let reader = {
        let done = Arc::clone(&done);
        let (a, b) = (a.clone(), b.clone());
        tokio::task::spawn_blocking(move || {
            let mut reads = 0;
            while !done.load(Ordering::Relaxed) || reads == 0 {
                let seen = fs::read_to_string(&path).unwrap();
                assert!(seen == a || seen == b, "torn read of {} bytes", seen.len());
                reads += 1;
            }
            reads
        })
    };
    let tool = f.write_file();
    for i in 0..40 {
        let content = if i % 2 == 0 { &b } else { &a };
        let outcome = tool
            .call(
                json!({ "path": "race.txt", "content": content }),
                &hale_actors::ToolContext::default(),
            )
            .await;
        assert!(outcome.is_success(), "{outcome:?}");
    }
    done.store(true, Ordering::Relaxed);
    assert!(reader.await.unwrap() > 0);
    assert_eq!(f.read("race.txt"), a);
}

// --------------------------------------------------------------------- glob

/// The fixture plus ignored, hidden and binary files.
fn search_fixture() -> Fixture {
    let f = Fixture::new();
    write(f.root(), ".gitignore", "target/\n*.log\n");
    write(
        f.root(),
        "target/debug/gen.rs",
        "fn main() { /* generated */ }\n",
    );
    write(f.root(), "run.log", "fn main() in a log\n");
    write(f.root(), ".hidden/secret.rs", "fn main() {}\n");
    write(f.root(), "data.bin", b"fn main\0\x01\x02binary");
    f
}

#[tokio::test]
async fn glob_lists_matching_files_sorted() {
    let f = search_fixture();
    let tool = f.glob();
    let all_rs = tool
        .call(
            json!({ "pattern": "**/*.rs" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(all_rs.is_success(), "{all_rs:?}");
    assert_eq!(
        all_rs.data,
        json!({
            "matches": ["src/lib.rs", "src/main.rs", "src/util.rs", "tests/it.rs"],
            "truncated": false
        })
    );

    // `*` stays within one directory; `path` scopes the search.
    let top = tool
        .call(
            json!({ "pattern": "*.md" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_eq!(strings(&top.data["matches"]), ["README.md"]);
    let in_src = tool
        .call(
            json!({ "pattern": "*.rs", "path": "src" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_eq!(
        strings(&in_src.data["matches"]),
        ["src/lib.rs", "src/main.rs", "src/util.rs"]
    );

    // Ignored and hidden files are not listed.
    let everything = strings(
        &tool
            .call(
                json!({ "pattern": "**" }),
                &hale_actors::ToolContext::default(),
            )
            .await
            .data["matches"],
    );
    assert!(everything.contains(&"Cargo.toml".to_owned()));
    for hidden in [
        "target/debug/gen.rs",
        "run.log",
        ".hidden/secret.rs",
        ".gitignore",
    ] {
        assert!(!everything.contains(&hidden.to_owned()), "{hidden} listed");
    }

    let none = tool
        .call(
            json!({ "pattern": "**/*.py" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(none.is_success());
    assert_eq!(none.data["matches"], json!([]));
    assert!(tool.spec().idempotent);
}

#[tokio::test]
async fn glob_rejects_invalid_patterns_and_file_paths() {
    let f = Fixture::new();
    let tool = f.glob();
    let bad = tool
        .call(
            json!({ "pattern": "src/[" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&bad, ErrorCode::InvalidInput);
    assert!(bad.message.contains("src/["));

    let file = tool
        .call(
            json!({ "pattern": "*", "path": "README.md" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&file, ErrorCode::InvalidInput);

    let absolute = tool
        .call(
            json!({ "pattern": "/etc/*" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&absolute, ErrorCode::InvalidInput);
}

#[tokio::test]
async fn glob_over_the_cap_is_partial() {
    let f = Fixture::new();
    let tool = Glob::new(
        f.ws.clone(),
        GlobConfig {
            max_results: 2,
            ..GlobConfig::default()
        },
    );
    let outcome = tool
        .call(
            json!({ "pattern": "**/*.rs" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_eq!(outcome.status, Status::Partial, "{outcome:?}");
    assert_eq!(outcome.data["truncated"], true);
    assert_eq!(outcome.data["matches"].as_array().unwrap().len(), 2);
    assert!(!outcome.message.is_empty());

    let exact = tool
        .call(
            json!({ "pattern": "src/{lib,main}.rs" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(exact.is_success(), "{exact:?}");
    assert_eq!(exact.data["truncated"], false);
}

// --------------------------------------------------------------------- grep

#[tokio::test]
async fn grep_finds_matching_lines() {
    let f = search_fixture();
    let tool = f.grep();
    let outcome = tool
        .call(
            json!({ "pattern": "fn main" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(outcome.is_success(), "{outcome:?}");
    // Not the ignored, hidden or binary files.
    assert_eq!(
        outcome.data,
        json!({
            "matches": [{ "path": "src/main.rs", "line": 1, "text": "fn main() {" }],
            "truncated": false
        })
    );

    let runs = tool
        .call(
            json!({ "pattern": r"demo::run\(\)" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    let found: Vec<(String, u64)> = runs.data["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["path"].as_str().unwrap().to_owned(),
                m["line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [("src/main.rs".to_owned(), 2), ("tests/it.rs".to_owned(), 3)]
    );

    let sensitive = tool
        .call(
            json!({ "pattern": "hello" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_eq!(sensitive.data["matches"].as_array().unwrap().len(), 1);
    let insensitive = tool
        .call(
            json!({ "pattern": "hello", "case_insensitive": true }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_eq!(insensitive.data["matches"].as_array().unwrap().len(), 2);

    let only_md = tool
        .call(
            json!({ "pattern": "hello", "case_insensitive": true, "glob": "*.md" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_eq!(
        only_md.data["matches"],
        json!([{ "path": "docs/guide.md", "line": 1, "text": "Say hello to the demo." }])
    );

    let one_file = tool
        .call(
            json!({ "pattern": "fn", "path": "src/util.rs" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_eq!(
        one_file.data["matches"],
        json!([{ "path": "src/util.rs", "line": 1, "text": "pub fn helper() {}" }])
    );
}

#[tokio::test]
async fn grep_rejects_invalid_patterns() {
    let f = Fixture::new();
    let tool = f.grep();
    let regex = tool
        .call(
            json!({ "pattern": "(unclosed" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&regex, ErrorCode::InvalidInput);
    assert!(regex.message.contains("pattern"));

    let glob = tool
        .call(
            json!({ "pattern": "fn", "glob": "*.[" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&glob, ErrorCode::InvalidInput);
    assert!(glob.message.contains("glob"));

    let zero = tool
        .call(
            json!({ "pattern": "fn", "max_matches": 0 }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_code(&zero, ErrorCode::InvalidInput);
}

#[tokio::test]
async fn grep_over_the_cap_is_partial() {
    let f = Fixture::new();
    write(f.root(), "many.txt", "hit\n".repeat(5));
    let tool = f.grep();
    let capped = tool
        .call(
            json!({ "pattern": "hit", "max_matches": 2 }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_eq!(capped.status, Status::Partial, "{capped:?}");
    assert_eq!(capped.data["truncated"], true);
    let lines: Vec<u64> = capped.data["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [1, 2]);

    let exact = tool
        .call(
            json!({ "pattern": "hit", "max_matches": 5 }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(exact.is_success(), "{exact:?}");
    assert_eq!(exact.data["matches"].as_array().unwrap().len(), 5);

    // The configured cap bounds the argument.
    let small = Grep::new(
        f.ws.clone(),
        GrepConfig {
            max_matches: 3,
            ..GrepConfig::default()
        },
    );
    let bounded = small
        .call(
            json!({ "pattern": "hit", "max_matches": 100 }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_eq!(bounded.status, Status::Partial);
    assert_eq!(bounded.data["matches"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn grep_clips_long_lines() {
    let f = Fixture::new();
    write(
        f.root(),
        "long.js",
        format!("{}needle{}\n", "x".repeat(300), "y".repeat(900)),
    );
    let outcome = f
        .grep()
        .call(
            json!({ "pattern": "needle" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    let text = outcome.data["matches"][0]["text"].as_str().unwrap();
    assert_eq!(text.chars().count(), 501);
    assert!(text.ends_with('…'));
}

// -------------------------------------------------------------------- specs

#[test]
fn specs_name_the_tools_and_register() {
    let f = Fixture::new();
    let registry = ToolRegistry::new();
    let tools: Vec<Arc<dyn Tool>> = vec![
        Arc::new(f.read_file()),
        Arc::new(f.write_file()),
        Arc::new(f.edit_file()),
        Arc::new(f.glob()),
        Arc::new(f.grep()),
    ];
    let expected = [
        ("read_file", true, vec!["path"]),
        ("write_file", false, vec!["path", "content"]),
        ("edit_file", false, vec!["path", "old_text", "new_text"]),
        ("glob", true, vec!["pattern"]),
        ("grep", true, vec!["pattern"]),
    ];
    for (tool, (name, idempotent, required)) in tools.into_iter().zip(expected) {
        let spec = tool.spec();
        assert_eq!(spec.name, name);
        assert_eq!(spec.idempotent, idempotent, "{name}");
        assert_eq!(spec.schema["type"], "object");
        assert_eq!(spec.schema["required"], json!(required), "{name}");
        assert!(spec.description.len() > 80, "{name}");
        registry.register(tool).unwrap();
    }
    assert_eq!(registry.len(), 5);
}
