//! The memory actor: every acknowledged lesson survives kills of the actor
//! and of the whole process, exactly once, in a file that still parses as
//! Markdown; edits keep `edit_file`'s rules; a stale flush never renames;
//! and the file tools hand the memory file to the actor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hale_actors::builtin::{EditFile, EditFileConfig, Workspace, WriteFile, WriteFileConfig};
use hale_actors::memory::durable::{self, Fence, PersistError};
use hale_actors::memory::{Lesson, MemoryConfig, MemoryHandle, Remember, memory_child};
use hale_actors::{ErrorCode, EventKind, MemorySink, Tool};
use hale_supervision::{SupervisorRef, SupervisorSpec};
use jiff::civil::Date;
use pulldown_cmark::{Event as Md, HeadingLevel, Parser, Tag, TagEnd};
use serde_json::json;

const SECTIONS: [&str; 5] = ["Tools", "Models", "Files", "Network", "Processes"];

async fn start(root: &Path, max_restarts: u32) -> (SupervisorRef, MemoryHandle, Arc<MemorySink>) {
    let sink = Arc::new(MemorySink::new());
    let (child, handle) =
        memory_child("memory", &MemoryConfig::in_workspace(root), sink.clone()).unwrap();
    let spec = SupervisorSpec::new("hale/memory")
        .intensity(max_restarts, Duration::from_secs(1))
        .child(child);
    let (supervisor, _) = SupervisorRef::start(spec).await.unwrap();
    (supervisor, handle, sink)
}

/// The file as CommonMark sees it: each `##` section's list items, in
/// order, plus every heading seen (to catch a section written twice).
struct Parsed {
    sections: BTreeMap<String, Vec<String>>,
    headings: Vec<String>,
}

fn parse(text: &str) -> Parsed {
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut headings = Vec::new();
    let mut current: Option<String> = None;
    let mut heading: Option<String> = None;
    let mut item: Option<String> = None;
    for event in Parser::new(text) {
        match event {
            Md::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Md::End(TagEnd::Heading(level)) => {
                let title = heading.take().unwrap();
                headings.push(title.clone());
                current = (level == HeadingLevel::H2).then(|| {
                    sections.entry(title.clone()).or_default();
                    title
                });
            }
            Md::Start(Tag::Item) => item = Some(String::new()),
            Md::End(TagEnd::Item) => {
                let text = item.take().unwrap();
                let section = current.clone().expect("a list item outside any ## section");
                sections.get_mut(&section).unwrap().push(text);
            }
            Md::Text(t) | Md::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                } else if let Some(i) = item.as_mut() {
                    i.push_str(&t);
                }
            }
            Md::SoftBreak | Md::HardBreak => {
                if let Some(i) = item.as_mut() {
                    i.push('\n');
                }
            }
            _ => {}
        }
    }
    Parsed { sections, headings }
}

/// Checks that `text` parses into exactly `sections`, no heading twice,
/// no item twice in a section, and every `acked` (section, item) present.
/// Returns the number of items.
fn check_file(text: &str, sections: &[&str], acked: &[(String, String)]) -> usize {
    let parsed = parse(text);
    let unique: BTreeSet<&String> = parsed.headings.iter().collect();
    assert_eq!(
        unique.len(),
        parsed.headings.len(),
        "a heading twice: {:?}",
        parsed.headings
    );
    let expected: BTreeSet<String> = sections.iter().map(|s| (*s).to_owned()).collect();
    let found: BTreeSet<String> = parsed.sections.keys().cloned().collect();
    assert_eq!(found, expected);
    let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
    for (section, items) in &parsed.sections {
        for item in items {
            *counts.entry((section, item)).or_default() += 1;
        }
    }
    if let Some(((section, item), n)) = counts.iter().find(|(_, n)| **n > 1) {
        panic!("`{item}` is {n} times under `{section}`");
    }
    for (section, item) in acked {
        assert_eq!(
            counts.get(&(section.as_str(), item.as_str())),
            Some(&1),
            "acknowledged `{item}` is not under `{section}` exactly once"
        );
    }
    counts.len()
}

fn lesson_for(writer: usize, i: usize) -> Lesson {
    let mut lesson = Lesson::new(
        SECTIONS[(writer + i) % SECTIONS.len()],
        format!("writer {writer} lesson {i}: check the exit status before reading stdout"),
    );
    if i.is_multiple_of(2) {
        lesson = lesson.with_date(Date::new(2026, 11, 27).unwrap());
    }
    if i.is_multiple_of(3) {
        lesson = lesson.with_incident((writer * 1000 + i) as u64);
    }
    lesson
}

fn rendered(lesson: &Lesson) -> (String, String) {
    let line = lesson.line();
    (
        lesson.section.clone(),
        line.strip_prefix("- ").unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_under_fire_keeps_every_acknowledged_lesson_exactly_once() {
    const WRITERS: usize = 50;
    const LESSONS: usize = 200;
    const KILLS: usize = 200;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (supervisor, handle, sink) = start(dir.path(), 100_000).await;

    let writing = Arc::new(AtomicBool::new(true));
    let kills_during_writing = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (handle, writing, during) = (
            handle.clone(),
            writing.clone(),
            kills_during_writing.clone(),
        );
        tokio::spawn(async move {
            let mut aimed = 0;
            for _ in 0..KILLS {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=50))).await;
                if let Some(actor) = handle.address().current() {
                    actor.kill();
                    aimed += 1;
                    if writing.load(Ordering::Acquire) {
                        during.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            aimed
        })
    };

    let retries = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (handle, retries) = (handle.clone(), retries.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::with_capacity(LESSONS);
            for i in 0..LESSONS {
                let lesson = lesson_for(w, i);
                let mut tries = 0;
                loop {
                    let outcome = handle.remember(lesson.clone()).await;
                    if outcome.is_success() {
                        break;
                    }
                    assert!(
                        outcome.retryable,
                        "a failure the writer cannot retry: {outcome:?}"
                    );
                    tries += 1;
                    assert!(tries < 1000, "lesson never acknowledged: {outcome:?}");
                    retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                acked.push(rendered(&lesson));
            }
            acked
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(50), async {
        let mut all = Vec::new();
        for writer in writers {
            all.extend(writer.await.unwrap());
        }
        all
    })
    .await
    .expect("writers did not finish in 50 s");
    let writing_took = started.elapsed();
    writing.store(false, Ordering::Release);
    let aimed = tokio::time::timeout(Duration::from_secs(20), killer)
        .await
        .unwrap()
        .unwrap();
    let restarts = supervisor.stats().await.unwrap().restarts;

    let on_disk = std::fs::read_to_string(dir.path().join("memory/MEMORY.md")).unwrap();
    assert_eq!(handle.read().await.unwrap(), on_disk);
    let items = check_file(&on_disk, &SECTIONS, &all);
    assert_eq!(all.len(), WRITERS * LESSONS);
    assert_eq!(items, WRITERS * LESSONS);
    // Every acknowledged write was audited.
    let audited: BTreeSet<String> = sink
        .events()
        .iter()
        .filter(|e| e.kind == EventKind::MemoryWrite)
        .filter_map(|e| e.data["lesson"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(audited.len(), WRITERS * LESSONS);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("memory"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "MEMORY.md")
        .collect();
    println!(
        "memory under fire: {} lessons from {WRITERS} writers written in {:.2} s \
         ({:.2} s in all); {aimed} kills aimed at a live actor ({} while writing), {restarts} \
         restarts; {} dead incarnations' flushes fenced off; {} writer retries; {} bytes; \
         stray files now: {leftovers:?}",
        all.len(),
        writing_took.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        kills_during_writing.load(Ordering::Relaxed),
        handle.fence().refused(),
        retries.load(Ordering::Relaxed),
        on_disk.len(),
    );
    assert!(restarts >= 100, "too few kills landed: {restarts}");
    assert!(started.elapsed() < Duration::from_secs(55));
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// In writer mode (the env var names a directory) the test appends lessons
/// until it is killed, printing each as soon as it is acknowledged.
const WRITER_ENV: &str = "HALE_MEMORY_TEST_WRITER_DIR";
const KILL9_TEST: &str = "kill_9_of_the_whole_process_loses_no_acknowledged_lesson";

#[test]
fn kill_9_of_the_whole_process_loses_no_acknowledged_lesson() {
    if let Some(dir) = std::env::var_os(WRITER_ENV) {
        run_writer(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", KILL9_TEST, "--nocapture"])
        .env(WRITER_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acked: Vec<(String, String)> = Vec::new();
    let record = |acked: &mut Vec<(String, String)>, line: String| {
        if let Some(rest) = line.strip_prefix("ACK\t") {
            let (section, item) = rest.split_once('\t').unwrap();
            acked.push((section.to_owned(), item.to_owned()));
        }
    };
    // Wait for the first acknowledgement, then let it write for ~300 ms.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => record(&mut acked, line),
            Err(e) => {
                let _ = child.kill();
                panic!("the writer acknowledged nothing: {e}");
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    for line in lines.try_iter() {
        record(&mut acked, line);
    }

    let path = dir.path().join("memory/MEMORY.md");
    let on_disk = std::fs::read_to_string(&path).unwrap();
    let items = check_file(&on_disk, &SECTIONS, &acked);
    println!(
        "kill -9 mid-stream: {} lessons acknowledged before the kill, {items} in the file",
        acked.len()
    );
    assert!(acked.len() >= 10, "too few writes to prove anything");

    // A new process's actor starts from the file as it is, and clears the
    // temporary files of writes the kill cut short.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (supervisor, handle, _) = start(dir.path(), 1).await;
        assert_eq!(handle.read().await.unwrap(), on_disk);
        let stray: Vec<_> = std::fs::read_dir(dir.path().join("memory"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|n| n != "MEMORY.md")
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
        supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
    });
}

fn run_writer(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_supervisor, handle, _) = start(dir, 1).await;
        let mut writers = Vec::new();
        for w in 0..8 {
            let handle = handle.clone();
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let lesson = lesson_for(w, i);
                    if handle.remember(lesson.clone()).await.is_success() {
                        let (section, item) = rendered(&lesson);
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ACK\t{section}\t{item}").unwrap();
                        out.flush().unwrap();
                    }
                }
            }));
        }
        // The parent kills this process; should it die first, stop anyway.
        tokio::time::sleep(Duration::from_secs(30)).await;
        std::process::exit(3);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_lessons_sections_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (supervisor, handle, sink) = start(dir.path(), 1).await;
    let path = dir.path().join("memory/MEMORY.md");
    assert_eq!(handle.read().await.unwrap(), "");
    assert!(!path.exists(), "a read writes nothing");

    let first = handle
        .remember(Lesson::new("Tools", "grep before sed"))
        .await;
    assert!(first.is_success(), "{first:?}");
    assert_eq!(first.data["added"], true);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "## Tools\n\n- grep before sed\n"
    );

    // The same lesson again (even with a date now) is not added twice.
    let again = handle
        .remember(
            Lesson::new("Tools", " grep before sed ").with_date(Date::new(2026, 11, 27).unwrap()),
        )
        .await;
    assert!(again.is_success());
    assert_eq!(again.data["added"], false);
    let dated = handle
        .remember(
            Lesson::new("Models", "retry a 529 after its Retry-After")
                .with_date(Date::new(2026, 11, 27).unwrap())
                .with_incident(42),
        )
        .await;
    assert_eq!(
        dated.data["lesson"],
        "retry a 529 after its Retry-After (2026-11-27, incident 42)"
    );
    // The same text under another section is another lesson.
    let other = handle
        .remember(Lesson::new("Models", "grep before sed"))
        .await;
    assert_eq!(other.data["added"], true);
    handle.remember(Lesson::new("Tools", "quote paths")).await;
    let expected = "## Tools\n\n- grep before sed\n- quote paths\n\n## Models\n\n\
                    - retry a 529 after its Retry-After (2026-11-27, incident 42)\n\
                    - grep before sed\n";
    assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    assert_eq!(handle.read().await.unwrap(), expected);

    let missing = handle.edit("grep after sed", "x").await;
    assert_eq!(missing.code, Some(ErrorCode::NotFound), "{missing:?}");
    assert_eq!(missing.data["matches"], 0);
    let ambiguous = handle.edit("grep before sed", "x").await;
    assert_eq!(ambiguous.code, Some(ErrorCode::Ambiguous), "{ambiguous:?}");
    assert_eq!(ambiguous.data["matches"], 2);
    assert_eq!(
        handle.edit("", "x").await.code,
        Some(ErrorCode::InvalidInput)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    let edited = handle.edit("- quote paths\n", "- quote every path\n").await;
    assert!(edited.is_success(), "{edited:?}");
    assert_eq!(edited.data["replaced"], 1);
    let now = std::fs::read_to_string(&path).unwrap();
    assert_eq!(now, expected.replace("quote paths", "quote every path"));
    // After an edit the section index is rebuilt from the text.
    let after = handle
        .remember(Lesson::new("Tools", "quote every path"))
        .await;
    assert_eq!(after.data["added"], false);

    let invalid = handle.remember(Lesson::new("", "x")).await;
    assert_eq!(invalid.code, Some(ErrorCode::InvalidInput));
    assert!(invalid.message.contains("section"));

    // The tool: dated today, with the incident id; bad arguments name the field.
    let tool = Remember::new(handle.clone());
    assert!(tool.spec().idempotent);
    let outcome = tool
        .call(
            json!({ "section": "Network", "lesson": "set a timeout", "incident": 7 }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(outcome.is_success(), "{outcome:?}");
    let line = outcome.data["lesson"].as_str().unwrap();
    assert!(
        line.starts_with("set a timeout (") && line.ends_with(", incident 7)"),
        "{line}"
    );
    let bad = tool
        .call(
            json!({ "section": "Network", "lesson": "x", "when": 1 }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_eq!(bad.code, Some(ErrorCode::InvalidInput));
    assert!(bad.message.contains("when"), "{}", bad.message);
    check_file(
        &std::fs::read_to_string(&path).unwrap(),
        &["Tools", "Models", "Network"],
        &[],
    );

    // One event per acknowledged write, failures and invalid ones not.
    let events: Vec<_> = sink
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::MemoryWrite)
        .collect();
    let ops: Vec<&str> = events
        .iter()
        .map(|e| e.data["op"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        [
            "remember", "remember", "remember", "remember", "remember", "edit", "remember",
            "remember"
        ]
    );
    assert!(events.iter().all(|e| e.source == "hale/memory/MEMORY.md"));
    assert_eq!(events[3].data["added"], true);
    assert_eq!(events[1].data["added"], false);
    assert_eq!(events[2].data["incident"], 42);
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_actor_is_replaced_and_reloads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (supervisor, handle, _) = start(dir.path(), 10).await;
    handle.remember(Lesson::new("Tools", "one")).await;
    // Changed behind the actor's back (a human with an editor): the
    // replacement starts from the file, not from its predecessor.
    std::fs::write(
        dir.path().join("memory/MEMORY.md"),
        "## Tools\n\n- one\n- by hand\n",
    )
    .unwrap();
    handle.address().current().unwrap().kill();
    let outcome = handle.remember(Lesson::new("Tools", "two")).await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(
        handle.read().await.unwrap(),
        "## Tools\n\n- one\n- by hand\n- two\n"
    );
    assert_eq!(supervisor.stats().await.unwrap().restarts, 1);
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A MEMORY.md that is not UTF-8 used to fail every load, so the actor
/// restarted until its supervisor gave up. Now it is moved aside with a
/// timestamp, a fresh file starts, and the operator gets an error-level
/// incident naming where the old file went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_memory_file_is_quarantined_and_a_fresh_one_started() {
    let dir = tempfile::tempdir().unwrap();
    let memory_dir = dir.path().join("memory");
    std::fs::create_dir_all(&memory_dir).unwrap();
    let corrupt = b"## Tools\n\n- caf\xe9 \xff\xfe broken\n".to_vec();
    std::fs::write(memory_dir.join("MEMORY.md"), &corrupt).unwrap();
    let (supervisor, handle, sink) = start(dir.path(), 3).await;

    let outcome = handle.remember(Lesson::new("Tools", "fresh")).await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(handle.read().await.unwrap(), "## Tools\n\n- fresh\n");
    assert_eq!(supervisor.stats().await.unwrap().restarts, 0);

    let aside: Vec<_> = std::fs::read_dir(&memory_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("MEMORY.md.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), corrupt);
    let incident = sink
        .events()
        .into_iter()
        .find(|e| e.kind == EventKind::Incident)
        .expect("an incident event");
    assert_eq!(incident.level, hale_actors::Level::Error);
    assert_eq!(
        incident.data["quarantined"].as_str().unwrap(),
        aside[0].display().to_string()
    );
    assert!(incident.message.contains("not valid UTF-8"));
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[test]
fn a_stale_generation_never_renames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("MEMORY.md");
    let fence = Fence::new();
    let old = fence.issue();
    // Issued is not enough: only a claimed generation writes.
    assert!(matches!(
        durable::persist(&path, "unclaimed", &fence, old),
        Err(PersistError::Stale { .. })
    ));
    assert!(!path.exists());
    fence.claim(old);
    durable::persist(&path, "first", &fence, old).unwrap();

    // The replacement claims a newer generation: the dead actor's flush,
    // still running on its thread, must not land.
    let new = fence.issue();
    fence.claim(new);
    let stale = durable::persist(&path, "stale", &fence, old).unwrap_err();
    assert!(
        matches!(stale, PersistError::Stale { generation, current } if generation == old && current == new),
        "{stale:?}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "first");
    assert_eq!(fence.refused(), 2);
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "the stale write left its temporary file");
    // A late claim by the dead incarnation changes nothing.
    fence.claim(old);
    assert_eq!(fence.current(), new);
    durable::persist(&path, "second", &fence, new).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_tools_read_memory_through_its_actor_and_refuse_to_write_it() {
    use hale_actors::builtin::{ReadFile, ReadFileConfig};
    use hale_actors::{HintKind, ToolContext};
    // The memory file lives beside the workspace, not in it.
    let dir = tempfile::tempdir().unwrap();
    let (supervisor, handle, sink) = start(dir.path(), 1).await;
    std::fs::create_dir(dir.path().join("workspace")).unwrap();
    let ws = Workspace::new(dir.path().join("workspace")).unwrap();
    let read = ReadFile::new(ws.clone(), ReadFileConfig::default()).with_memory(handle.clone());
    let write = WriteFile::new(ws.clone(), WriteFileConfig::default()).with_memory(handle.clone());
    let edit = EditFile::new(ws.clone(), EditFileConfig::default()).with_memory(handle.clone());
    let ctx = ToolContext::default();
    let remembered = handle
        .remember(Lesson::new("Lessons", "use IF NOT EXISTS"))
        .await;
    assert!(remembered.is_success(), "{remembered:?}");
    let before = handle.read().await.unwrap();

    // Read: the actor's text, under the workspace path the agent knows.
    let got = read.call(json!({ "path": "memory/MEMORY.md" }), &ctx).await;
    assert!(got.is_success(), "{got:?}");
    assert_eq!(got.data["content"], before.as_str());
    assert_eq!(got.data["eof"], true);
    let part = read
        .call(
            json!({ "path": "./memory/MEMORY.md", "offset": 2, "limit": 5 }),
            &ctx,
        )
        .await;
    assert_eq!(part.data["content"], &before[2..7], "{part:?}");

    // Write and edit, however the path is spelt: refused with a typed
    // outcome (not escalated) and a hint to use `remember`.
    let absolute = dir.path().join("workspace/memory/MEMORY.md");
    for path in [
        "memory/MEMORY.md",
        "./memory//MEMORY.md",
        absolute.to_str().unwrap(),
    ] {
        let written = write
            .call(
                json!({ "path": path, "content": "# Memory\n\n- obey the agent\n" }),
                &ctx,
            )
            .await;
        assert_eq!(written.code, Some(ErrorCode::InvalidInput), "{written:?}");
        assert!(!written.retryable);
        assert_ne!(written.severity, hale_actors::Severity::Critical);
        assert!(
            written
                .hints
                .iter()
                .any(|h| h.kind == HintKind::TryInstead
                    && h.suggestions == vec!["remember".to_owned()]),
            "{written:?}"
        );
        let edited = edit
            .call(
                json!({ "path": path, "old_text": "IF NOT EXISTS", "new_text": "DROP" }),
                &ctx,
            )
            .await;
        assert_eq!(edited.code, Some(ErrorCode::InvalidInput), "{edited:?}");
    }
    // The memory file's own path is outside the workspace: refused too.
    let outside = write
        .call(
            json!({ "path": handle.path().to_str().unwrap(), "content": "x" }),
            &ctx,
        )
        .await;
    assert!(outside.is_failure(), "{outside:?}");
    assert_eq!(handle.read().await.unwrap(), before);
    assert_eq!(std::fs::read_to_string(handle.path()).unwrap(), before);
    assert!(
        !absolute.exists(),
        "a refused write left a file in the workspace"
    );

    // Other files in the workspace's memory folder are ordinary files.
    let other = write
        .call(
            json!({ "path": "memory/notes.md", "content": "notes\n" }),
            &ctx,
        )
        .await;
    assert!(other.is_success(), "{other:?}");
    let ops: Vec<String> = sink
        .events()
        .iter()
        .filter(|e| e.kind == EventKind::MemoryWrite)
        .map(|e| e.data["op"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        !ops.iter().any(|op| op == "replace" || op == "edit"),
        "{ops:?}"
    );
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}
