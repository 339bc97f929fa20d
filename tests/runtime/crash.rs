//! `kill -9` of the whole process, then a restart: every unfinished
//! message is resumed from the store and answered, no command runs twice,
//! and the process groups the dead runtime left behind are reaped.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const SESSIONS: usize = 4;
const MESSAGES: usize = 5;

#[test]
fn a_kill_9_of_the_process_then_a_restart_resumes_every_unfinished_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let effects = data.join("workspace").join("effects.txt");
    let mut child = Command::new(hale_bin())
        .args(["drive", "--data-dir"])
        .arg(&data)
        .args([
            "--sessions",
            &SESSIONS.to_string(),
            "--messages",
            &MESSAGES.to_string(),
            "--command",
            "sleep 0.2; echo {s}-{m} >> effects.txt",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Wait until everything is acknowledged and some work is done (but
    // not all of it), then kill the whole process without warning.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    while sent < SESSIONS * MESSAGES {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the driver stopped acknowledging");
        if line.starts_with("sent ") {
            sent += 1;
        }
    }
    while lines(&effects).len() < 3 {
        assert!(Instant::now() < deadline, "no work got done");
        std::thread::sleep(Duration::from_millis(10));
    }
    Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    let done_before = lines(&effects).len();
    assert!(
        done_before < SESSIONS * MESSAGES,
        "the kill came too late to test anything ({done_before} done)"
    );

    // The restart: same data directory, nothing new sent.
    let output = Command::new(hale_bin())
        .args(["drive", "--data-dir"])
        .arg(&data)
        .args(["--wait-secs", "60"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "restart failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout
        .lines()
        .find_map(|l| l.strip_prefix("summary "))
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    let summary: serde_json::Value = serde_json::from_str(summary).unwrap();
    assert_eq!(summary["messages"], SESSIONS * MESSAGES, "{stdout}");
    assert_eq!(
        summary["done"],
        SESSIONS * MESSAGES,
        "every message answered: {stdout}"
    );
    assert!(!stdout.contains("unfinished"), "{stdout}");

    // No command ran twice; a command cut by the kill either ran or not,
    // and its message says which (success or INTERRUPTED, never a re-run).
    let effects = lines(&effects);
    let unique: HashSet<_> = effects.iter().collect();
    assert_eq!(
        unique.len(),
        effects.len(),
        "a command ran twice: {effects:?}"
    );
    let interrupted = stdout.matches("INTERRUPTED").count();
    eprintln!(
        "crash: {done_before} effects before the kill, {} after the restart, {interrupted} \
         interrupted, summary {summary}",
        effects.len()
    );
    assert!(
        effects.len() + interrupted >= SESSIONS * MESSAGES,
        "{} effects, {interrupted} interrupted: {stdout}",
        effects.len()
    );
    // The restarted runtime reaped what the dead one left and left
    // nothing behind itself.
    let pgroups = data.join("pgroups");
    let left: Vec<_> = std::fs::read_dir(&pgroups)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "process groups still recorded: {left:?}");
}

/// A session that keeps crashing is not restarted at once: the sessions
/// supervisor waits a backoff that doubles from the configured minimum up
/// to the maximum, and says so (a `retry` event, "restart in N ms") before
/// each restart. The kills stand in for a session that crashes on every
/// resume; the stable period is long so a slow machine's polling does not
/// reset the count between kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_session_waits_a_doubling_backoff_before_each_restart() {
    use hale::actors::event::EventKind;
    use hale::supervision::Backoff;

    const KILLS: u64 = 4;
    let min = Duration::from_millis(100);
    let max = Duration::from_millis(400);
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.sessions.restart_backoff = Some(
        Backoff::new(min, max, 0.2)
            .unwrap()
            .reset_after(Duration::from_secs(120)),
    );
    let runtime = start(config).await;
    let session = runtime.create_session("default").await.unwrap();
    ask(&runtime, &session, "hello", Duration::from_secs(60)).await;
    let path = format!("hale/sessions/{session}");
    let running_with = |restarts: u64| {
        let runtime = runtime.clone();
        let path = path.clone();
        async move {
            let tree = runtime.tree().await.ok()?;
            tree.into_iter()
                .find(|n| n.id == path && n.state == "running" && n.restarts == restarts)
        }
    };
    for kill in 0..KILLS {
        eventually(
            Duration::from_secs(30),
            &format!("{path} running after {kill} restarts"),
            || running_with(kill),
        )
        .await;
        runtime.kill(&path).await.unwrap();
    }
    eventually(
        Duration::from_secs(30),
        &format!("{path} running after {KILLS} restarts"),
        || running_with(KILLS),
    )
    .await;
    // The audit trail is written in batches: wait for the last restart.
    let events = eventually(Duration::from_secs(30), "the restart events", || {
        let runtime = runtime.clone();
        let path = path.clone();
        async move {
            let all = events(&runtime, None).await;
            let mine: Vec<_> = all.into_iter().filter(|e| e.source == path).collect();
            let restarted = of_kind(&mine, &EventKind::ChildRestarted).len();
            (restarted as u64 >= KILLS).then_some(mine)
        }
    })
    .await;
    let exits = of_kind(&events, &EventKind::ChildExited);
    let scheduled = of_kind(&events, &EventKind::Retry);
    let restarts = of_kind(&events, &EventKind::ChildRestarted);
    let described: Vec<String> = events
        .iter()
        .map(|e| format!("{} {} {} {}", e.timestamp, e.kind, e.message, e.data))
        .collect();
    assert_eq!(
        scheduled.len() as u64,
        KILLS,
        "one scheduled restart per crash:\n{}",
        described.join("\n")
    );
    for (attempt, ((exit, wait), restart)) in
        exits.iter().zip(&scheduled).zip(&restarts).enumerate()
    {
        let base = min.saturating_mul(1 << attempt).min(max).as_millis() as u64;
        let delay = wait.data["delay_ms"].as_u64().unwrap();
        assert_eq!(
            wait.data["attempt"],
            attempt as u64,
            "{}",
            described.join("\n")
        );
        assert!(
            (base..=base + base / 5 + 1).contains(&delay),
            "restart {attempt} waits {delay} ms, between {base} ms and 20 % more:\n{}",
            described.join("\n")
        );
        // Only a lower bound: the restart comes no sooner than its delay.
        let waited = restart.timestamp.duration_since(exit.timestamp);
        assert!(
            waited.as_millis() >= i128::from(delay),
            "restart {attempt} came {waited:?} after the crash, before its {delay} ms:\n{}",
            described.join("\n")
        );
    }
    runtime.shutdown().await.unwrap();
}
