//! The SQLite store: migrations, exact queries, group commit, durability
//! of acknowledged writes across `kill -9`, retention, approvals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hale_actors::store::{
    ApprovalTransition, EventFilter, EventQuery, Grep, MIGRATIONS, NewApproval, Order, Prune,
    SqliteStore, Store, StoreConfig, StoreError,
};
use hale_actors::{ErrorCode, Event, EventKind, Level};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

fn base() -> Timestamp {
    "2026-06-17T12:00:00Z".parse().unwrap()
}

fn minutes_before(m: i64) -> Timestamp {
    base().checked_sub(SignedDuration::from_mins(m)).unwrap()
}

fn event(level: Level, source: &str, message: &str, minutes_ago: i64) -> Event {
    Event::new(level, source, EventKind::ToolOutcome, message)
        .with_timestamp(minutes_before(minutes_ago))
}

async fn open(dir: &std::path::Path) -> SqliteStore {
    SqliteStore::open(StoreConfig::new(dir.join("hale.db")))
        .await
        .unwrap()
}

/// The seven events the query tests select from; messages are unique.
fn fixture() -> Vec<Event> {
    vec![
        event(Level::Info, "hale/tools/exec", "e0 started", 170).with_session("s1"),
        event(
            Level::Error,
            "hale/mcp/weather-mcp",
            "e1 connect failed",
            120,
        )
        .with_session("s1")
        .with_code(ErrorCode::McpServerUnreachable)
        .with_data(json!({ "url": "http://127.0.0.1:9/mcp", "attempt": 3 })),
        event(Level::Warning, "hale/mcp/weather-mcp", "e2 retrying", 50).with_session("s2"),
        event(Level::Error, "hale/mcp/search", "e3 timed out", 40)
            .with_session("s2")
            .with_code(ErrorCode::Etimedout)
            .with_data(json!({ "fallback_for": "weather-mcp" })),
        event(Level::Critical, "hale/mcp/weather-mcp", "e4 denied", 30)
            .with_code(ErrorCode::PermissionDenied),
        event(Level::Debug, "hale/mcp/weather-mcpx", "e5 noise", 10),
        event(
            Level::Error,
            "hale/tools/read_file",
            "e6 Weather data missing",
            5,
        )
        .with_session("s1"),
    ]
}

async fn messages(store: &SqliteStore, filter: EventFilter, limit: usize) -> Vec<String> {
    store
        .query(EventQuery::newest(filter, limit))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message.split(' ').next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_applied_once_and_reopening_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let known: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(store.schema_versions().await.unwrap(), known);
    let ids = store.append(fixture()).await.unwrap();
    assert_eq!(ids.len(), 7);
    store.close().await.unwrap();
    // A closed store refuses writes but keeps reading.
    assert!(matches!(
        store.append(fixture()).await,
        Err(hale_actors::store::AppendError::NotCommitted {
            error: StoreError::Closed,
            ..
        })
    ));
    drop(store);

    for _ in 0..2 {
        let store = open(dir.path()).await;
        assert_eq!(store.schema_versions().await.unwrap(), known);
        assert_eq!(store.count().await.unwrap(), 7);
        store.close().await.unwrap();
    }
    let raw = rusqlite::Connection::open(dir.path().join("hale.db")).unwrap();
    let mode: String = raw
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let rows: i64 = raw
        .query_row("SELECT count(*) FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, MIGRATIONS.len() as i64);
}

/// Migration 3 on a file written at version 2: the trail's size starts
/// as the sum of the rows already there, and follows appends and prunes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_3_sizes_an_existing_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hale.db");
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, \
             applied_at INTEGER NOT NULL) STRICT;",
        )
        .unwrap();
        for m in &MIGRATIONS[..2] {
            raw.execute_batch(m.sql).unwrap();
            raw.execute(
                "INSERT INTO schema_version VALUES (?1, ?2, 0)",
                rusqlite::params![m.version, m.name],
            )
            .unwrap();
        }
        // 64 + source (2) + session (1) + kind (3) + code (4) + message (5)
        // + data (2) = 81; and 64 + 2 + 3 + 5 = 74 without the optional ones.
        raw.execute_batch(
            "INSERT INTO audit_events (ts, level, source, session, kind, code, message, data) \
             VALUES (1, 1, 'ab', 's', 'log', 'CODE', 'hello', '{}'), \
                    (2, 1, 'ab', NULL, 'log', NULL, 'héllo', NULL);",
        )
        .unwrap();
    }
    let store = SqliteStore::open(StoreConfig::new(&path)).await.unwrap();
    // `héllo` is six bytes.
    assert_eq!(store.audit_bytes().await.unwrap(), 81 + 75);
    store
        .append(vec![Event::new(Level::Info, "ab", EventKind::Log, "hello")])
        .await
        .unwrap();
    assert_eq!(store.audit_bytes().await.unwrap(), 81 + 75 + 74);
    let n = store
        .prune(Prune::MaxBytes {
            max_bytes: 160,
            chunk: 10,
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(store.audit_bytes().await.unwrap(), 75 + 74);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_hale_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).await.close().await.unwrap();
    let raw = rusqlite::Connection::open(dir.path().join("hale.db")).unwrap();
    raw.execute(
        "INSERT INTO schema_version (version, name, applied_at) VALUES (99, 'future', 0)",
        [],
    )
    .unwrap();
    drop(raw);
    let refused = SqliteStore::open(StoreConfig::new(dir.path().join("hale.db"))).await;
    assert!(
        matches!(refused, Err(StoreError::SchemaTooNew { found: 99, .. })),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_select_exactly_the_matching_rows_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let ids = store.append(fixture()).await.unwrap();
    let all = EventFilter::default;

    assert_eq!(
        messages(&store, all(), 100).await,
        ["e6", "e5", "e4", "e3", "e2", "e1", "e0"]
    );
    let errors = EventFilter {
        min_level: Some(Level::Error),
        ..all()
    };
    assert_eq!(
        messages(&store, errors.clone(), 100).await,
        ["e6", "e4", "e3", "e1"]
    );
    assert_eq!(messages(&store, errors, 2).await, ["e6", "e4"]);
    let last_hour = EventFilter {
        since: Some(minutes_before(60)),
        ..all()
    };
    assert_eq!(
        messages(&store, last_hour, 100).await,
        ["e6", "e5", "e4", "e3", "e2"]
    );
    // `until` is exclusive: e4 at exactly t-30m is out.
    let window = EventFilter {
        since: Some(minutes_before(60)),
        until: Some(minutes_before(30)),
        ..all()
    };
    assert_eq!(messages(&store, window, 100).await, ["e3", "e2"]);
    // grep searches message, source, code and data; lower case is
    // case-insensitive.
    let weather = EventFilter {
        grep: Some(Grep::regex("weather-mcp").unwrap()),
        ..all()
    };
    assert_eq!(
        messages(&store, weather, 100).await,
        ["e5", "e4", "e3", "e2", "e1"]
    );
    let capital = EventFilter {
        grep: Some(Grep::regex("Weather").unwrap()),
        ..all()
    };
    assert_eq!(messages(&store, capital, 100).await, ["e6"]);
    let anchored = EventFilter {
        grep: Some(Grep::regex(r"^e1 connect").unwrap()),
        ..all()
    };
    assert_eq!(messages(&store, anchored, 100).await, ["e1"]);
    let by_code_text = EventFilter {
        grep: Some(Grep::text("etimedout").unwrap()),
        ..all()
    };
    assert_eq!(messages(&store, by_code_text, 100).await, ["e3"]);
    let grep_limited = EventFilter {
        grep: Some(Grep::regex("weather").unwrap()),
        ..all()
    };
    assert_eq!(messages(&store, grep_limited, 2).await, ["e6", "e5"]);
    let session = EventFilter {
        session: Some("s1".into()),
        ..all()
    };
    assert_eq!(messages(&store, session, 100).await, ["e6", "e1", "e0"]);
    // A source selects itself and what is below it, not a longer name.
    let source = EventFilter {
        source: Some("hale/mcp/weather-mcp".into()),
        ..all()
    };
    assert_eq!(messages(&store, source, 100).await, ["e4", "e2", "e1"]);
    let subtree = EventFilter {
        source: Some("hale/mcp".into()),
        ..all()
    };
    assert_eq!(
        messages(&store, subtree, 100).await,
        ["e5", "e4", "e3", "e2", "e1"]
    );
    let code = EventFilter {
        code: Some(ErrorCode::McpServerUnreachable),
        ..all()
    };
    assert_eq!(messages(&store, code, 100).await, ["e1"]);
    let combined = EventFilter {
        min_level: Some(Level::Error),
        since: Some(minutes_before(60)),
        grep: Some(Grep::regex("weather-mcp").unwrap()),
        ..all()
    };
    assert_eq!(messages(&store, combined, 100).await, ["e4", "e3"]);

    // Stored events read back whole.
    let e1 = store
        .query(EventQuery::newest(
            EventFilter {
                code: Some(ErrorCode::McpServerUnreachable),
                ..all()
            },
            1,
        ))
        .await
        .unwrap()
        .remove(0);
    let mut want = fixture().remove(1);
    want.id = Some(ids[1]);
    assert_eq!(e1, want);

    // Paging in insertion order.
    let after: Vec<u64> = store
        .query(EventQuery {
            filter: all(),
            order: Order::InsertedAfter(ids[2]),
            limit: 100,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(after, ids[3..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits_and_grouping_can_be_turned_off() {
    async fn run(store: SqliteStore) -> (u64, u64) {
        let mut tasks = Vec::new();
        for p in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    let e = event(Level::Info, "bench", &format!("p{p} i{i}"), 1);
                    store.append(vec![e]).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(store.count().await.unwrap(), 400);
        let stats = store.writer_stats();
        assert_eq!(stats.ops, 400);
        assert_eq!(stats.rows, 400);
        (stats.transactions, stats.ops)
    }
    let dir = tempfile::tempdir().unwrap();
    let grouped = run(open(dir.path()).await).await;
    assert!(
        grouped.0 < grouped.1 / 2,
        "8 concurrent writers should share commits: {grouped:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path().join("hale.db"));
    config.max_ops_per_transaction = 1;
    let single = run(SqliteStore::open(config).await.unwrap()).await;
    assert_eq!(single.0, single.1, "one transaction per write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_exactly_the_oldest_rows_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    // Ten events a minute apart, oldest first, plus two sharing a timestamp.
    let mut events: Vec<Event> = (0..10)
        .map(|i| event(Level::Info, "r", &format!("m{i}"), 100 - i))
        .collect();
    events.push(event(Level::Info, "r", "tie-a", 50));
    events.push(event(Level::Info, "r", "tie-b", 50));
    store.append(events).await.unwrap();

    // Older than t-95m: m0..m4 (t-100..t-96) go, two per call.
    let cutoff = minutes_before(95);
    let mut calls = Vec::new();
    loop {
        let n = store
            .prune(Prune::OlderThan { cutoff, chunk: 2 })
            .await
            .unwrap();
        calls.push(n);
        if n < 2 {
            break;
        }
    }
    assert_eq!(calls, [2, 2, 1]);
    let mut left = messages(&store, EventFilter::default(), 100).await;
    left.sort();
    assert_eq!(left, ["m5", "m6", "m7", "m8", "m9", "tie-a", "tie-b"]);

    // Keep the newest 3 by (timestamp, id): the ties at t-50 (tie-b has
    // the higher id) and m9 at t-91; m5..m8 go.
    let mut deleted = 0;
    loop {
        let n = store
            .prune(Prune::KeepNewest { keep: 3, chunk: 2 })
            .await
            .unwrap();
        deleted += n;
        if n < 2 {
            break;
        }
    }
    assert_eq!(deleted, 4);
    assert_eq!(
        messages(&store, EventFilter::default(), 100).await,
        ["tie-b", "tie-a", "m9"]
    );
    assert_eq!(
        store
            .prune(Prune::KeepNewest { keep: 3, chunk: 2 })
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_newest_breaks_timestamp_ties_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let same: Vec<Event> = (0..5)
        .map(|i| event(Level::Info, "r", &format!("t{i}"), 10))
        .collect();
    store.append(same).await.unwrap();
    store
        .prune(Prune::KeepNewest {
            keep: 2,
            chunk: 100,
        })
        .await
        .unwrap();
    assert_eq!(
        messages(&store, EventFilter::default(), 100).await,
        ["t4", "t3"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_move_once_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let request =
        json!({ "title": "drop production_customers?", "options": ["approve", "reject"] });
    let id = store
        .insert_approval(NewApproval {
            state: "open".into(),
            request: request.clone(),
            expires_at: Some(base()),
        })
        .await
        .unwrap();
    let approve = ApprovalTransition {
        id,
        from: "open".into(),
        to: "approved".into(),
        resolution: Some(json!({ "by": "ops", "choice": "approve" })),
    };
    let expire = ApprovalTransition {
        id,
        from: "open".into(),
        to: "expired".into(),
        resolution: None,
    };
    assert!(store.transition_approval(approve.clone()).await.unwrap());
    // The race's loser finds it already resolved.
    assert!(!store.transition_approval(expire).await.unwrap());
    assert!(!store.transition_approval(approve).await.unwrap());
    store.close().await.unwrap();
    drop(store);

    let store = open(dir.path()).await;
    let found = store.approval(id).await.unwrap().unwrap();
    assert_eq!(found.state, "approved");
    assert_eq!(found.request, request);
    assert_eq!(
        found.resolution,
        Some(json!({ "by": "ops", "choice": "approve" }))
    );
    assert_eq!(found.expires_at, Some(base()));
    assert!(store.approval(id + 1).await.unwrap().is_none());
    assert_eq!(store.approvals(Some("open".into())).await.unwrap().len(), 0);
    assert_eq!(store.approvals(None).await.unwrap().len(), 1);
}

const CHILD_ENV: &str = "HALE_STORE_KILL9_DB";

/// The child half of the kill -9 test: appends forever from 8 tasks and
/// prints each id once its append is acknowledged. Does nothing unless
/// the parent set the environment variable.
#[test]
#[ignore = "run by acknowledged_appends_survive_kill_9 as a child process"]
fn kill9_child_appends_and_prints_acks() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = SqliteStore::open(StoreConfig::new(path)).await.unwrap();
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for p in 0..8 {
            let store = store.clone();
            let out = Arc::clone(&out);
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let e = Event::new(Level::Error, "child", EventKind::Log, format!("p{p} i{i}"));
                    let id = store.append(vec![e]).await.unwrap()[0];
                    let mut out = out.lock().unwrap();
                    writeln!(out, "ACK {id} p{p} i{i}").unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// Runs this test binary's child test in a process, reads the ids it was
/// acknowledged, kills it with SIGKILL once `want` are in, and returns
/// them with their messages.
fn run_and_kill(
    child_test: &str,
    env: &str,
    db: &std::path::Path,
    want: usize,
) -> Vec<(u64, String)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            child_test,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env, db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("ACK ") {
                let (id, message) = rest.split_once(' ').unwrap();
                if tx
                    .send((id.parse::<u64>().unwrap(), message.to_owned()))
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked = Vec::new();
    while acked.len() < want && Instant::now() < deadline {
        if let Ok(ack) = rx.recv_timeout(Duration::from_millis(100)) {
            acked.push(ack);
        }
    }
    // SIGKILL: no destructor, no flush, no checkpoint.
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    // Acks printed before the kill but not read yet are still in the pipe.
    acked.extend(rx.try_iter());
    assert!(
        acked.len() >= want,
        "the child acknowledged only {} writes",
        acked.len()
    );
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hale.db");
    let acked = tokio::task::spawn_blocking({
        let db = db.clone();
        move || run_and_kill("kill9_child_appends_and_prints_acks", CHILD_ENV, &db, 400)
    })
    .await
    .unwrap();

    let store = SqliteStore::open(StoreConfig::new(&db)).await.unwrap();
    let stored = store
        .query(EventQuery {
            filter: EventFilter::default(),
            order: Order::InsertedAfter(0),
            limit: usize::MAX,
        })
        .await
        .unwrap();
    let by_id: std::collections::HashMap<u64, String> = stored
        .into_iter()
        .map(|e| (e.id.unwrap(), e.message))
        .collect();
    for (id, message) in &acked {
        assert_eq!(
            by_id.get(id),
            Some(message),
            "acknowledged id {id} ({message}) is missing after kill -9"
        );
    }
}

/// Token usage: summed per session and model with the journal write of
/// each turn, per agent by its sessions, kept across a reopen, and gone
/// with a session retention deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_usage_is_summed_per_session_model_and_agent() {
    use hale_actors::model::Usage;
    use hale_actors::store::{SessionStore, TurnUsage};
    let dir = tempfile::tempdir().unwrap();
    let usage = |p, c, k| Usage {
        prompt_tokens: p,
        completion_tokens: c,
        cached_tokens: k,
    };
    let turn = |model: &str, u: Usage| TurnUsage {
        model: model.into(),
        usage: u,
    };
    {
        let store = open(dir.path()).await;
        for (id, agent) in [("a", "ops"), ("b", "ops"), ("c", "reader")] {
            assert!(store.create_session(id.into(), agent.into()).await.unwrap());
        }
        let writes = [
            ("a", turn("gpt", usage(100, 10, 50))),
            ("a", turn("gpt", usage(200, 20, 0))),
            ("a", turn("claude", usage(7, 3, 1))),
            ("b", turn("gpt", usage(1, 1, 1))),
            ("c", turn("gpt", usage(5, 5, 5))),
        ];
        for (session, usage) in writes {
            store
                .journal_turn(session.into(), 1, "{}".into(), usage)
                .await
                .unwrap();
        }
        // A plain journal write counts nothing.
        store.journal("a".into(), 1, "{}".into()).await.unwrap();
        store.close().await.unwrap();
    }
    let store = open(dir.path()).await;
    let a = store.session_tokens("a".into()).await.unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(
        (a[0].model.as_str(), a[0].usage, a[0].turns),
        ("claude", usage(7, 3, 1), 1)
    );
    assert_eq!(
        (a[1].model.as_str(), a[1].usage, a[1].turns),
        ("gpt", usage(300, 30, 50), 2)
    );
    assert_eq!(store.journal_entries("a".into()).await.unwrap().len(), 4);
    assert!(
        store
            .session_tokens("nobody".into())
            .await
            .unwrap()
            .is_empty()
    );
    let agents = store.agent_tokens().await.unwrap();
    let of = |agent: &str, model: &str| {
        agents
            .iter()
            .find(|t| t.agent == agent && t.model == model)
            .map(|t| (t.usage, t.turns))
    };
    assert_eq!(agents.len(), 3);
    assert_eq!(of("ops", "gpt"), Some((usage(301, 31, 51), 3)));
    assert_eq!(of("ops", "claude"), Some((usage(7, 3, 1), 1)));
    assert_eq!(of("reader", "gpt"), Some((usage(5, 5, 5), 1)));
    // A deleted session's rows go with it when retention deletes it.
    assert!(store.delete_session("c".into()).await.unwrap());
    let later = Timestamp::now()
        .checked_add(SignedDuration::from_hours(1))
        .unwrap();
    store.prune_deleted_sessions(later, 1000).await.unwrap();
    assert!(store.session_tokens("c".into()).await.unwrap().is_empty());
    assert_eq!(store.agent_tokens().await.unwrap().len(), 2);
    store.close().await.unwrap();
}
