//! Audit ingest figures: events/s through the sink, the audit actor and
//! SQLite (8 producers), the durable `record` path, and the store's group
//! commit against one transaction per event. Prints figures directly
//! (`cargo bench -p hale-actors --bench audit_ingest`); sizes can be
//! scaled with `HALE_BENCH_EVENTS` (default 400000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hale_actors::audit::{AuditConfig, RedactionConfig, Retention, audit_child};
use hale_actors::store::{SqliteStore, Store, StoreConfig};
use hale_actors::{Event, EventKind, EventSink, Level};
use hale_supervision::{SupervisorRef, SupervisorSpec};
use serde_json::json;

const PRODUCERS: usize = 8;

fn event(p: usize, i: usize) -> Event {
    Event::new(
        if i.is_multiple_of(50) {
            Level::Error
        } else {
            Level::Info
        },
        format!("hale/mcp/server-{p}"),
        EventKind::ToolOutcome,
        format!("call {i} to tool get_forecast finished in 12 ms"),
    )
    .with_session(format!("session-{}", i % 16))
    .with_data(json!({ "producer": p, "seq": i, "tool": "get_forecast", "ms": 12 }))
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

async fn open(dir: &std::path::Path, max_ops: usize) -> SqliteStore {
    let mut config = StoreConfig::new(dir.join("bench.db"));
    config.max_ops_per_transaction = max_ops;
    SqliteStore::open(config).await.unwrap()
}

/// 8 producer threads emit into the sink; the clock stops when the last
/// event is committed.
async fn through_the_actor(total: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 4096).await;
    let (spec, audit) = audit_child(
        "audit",
        Arc::new(store.clone()),
        AuditConfig {
            queue_capacity: total + 1,
            retention: Retention::keep_all(),
            redaction: RedactionConfig::default(),
            ..AuditConfig::default()
        },
    )
    .unwrap();
    let (supervisor, _) = SupervisorRef::start(SupervisorSpec::new("bench").child(spec))
        .await
        .unwrap();
    let per = total / PRODUCERS;
    let started = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let sink = audit.sink();
            std::thread::spawn(move || {
                let t = Instant::now();
                for i in 0..per {
                    sink.emit(event(p, i));
                }
                t.elapsed()
            })
        })
        .collect();
    let emit_times: Vec<Duration> = producers.into_iter().map(|p| p.join().unwrap()).collect();
    let emitted = started.elapsed();
    audit.flush(Duration::from_secs(600)).await.unwrap();
    let elapsed = started.elapsed();
    let stats = audit.stats();
    let writer = store.writer_stats();
    assert_eq!(stats.committed as usize, per * PRODUCERS);
    assert_eq!(stats.dropped, 0);
    let slowest_emit = emit_times.iter().max().copied().unwrap_or_default();
    println!(
        "audit actor ingest, {PRODUCERS} producers: {} events committed in {:.2} s = {:.0} events/s \
         (emit: {:.0} ns/event per producer, all emitted after {:.2} s; {} batches, {} transactions, \
         {:.0} events/transaction)",
        stats.committed,
        elapsed.as_secs_f64(),
        rate(stats.committed as usize, elapsed),
        slowest_emit.as_nanos() as f64 / per as f64,
        emitted.as_secs_f64(),
        stats.batches,
        writer.transactions,
        writer.rows as f64 / writer.transactions.max(1) as f64,
    );
    supervisor.shutdown(Duration::from_secs(30)).await.unwrap();
}

/// 8 tasks, each awaiting the commit of one `record` before the next.
async fn durable_records(per: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 4096).await;
    let (spec, audit) = audit_child(
        "audit",
        Arc::new(store.clone()),
        AuditConfig {
            retention: Retention::keep_all(),
            ..AuditConfig::default()
        },
    )
    .unwrap();
    let (supervisor, _) = SupervisorRef::start(SupervisorSpec::new("bench").child(spec))
        .await
        .unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let audit = audit.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per);
                for i in 0..per {
                    let t = Instant::now();
                    audit.record(event(p, i)).await.unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    let writer = store.writer_stats();
    println!(
        "durable record, {PRODUCERS} tasks awaiting each commit: {} records in {:.2} s = {:.0} records/s, \
         latency p50 {:.2} ms p99 {:.2} ms ({:.1} records/transaction)",
        latencies.len(),
        elapsed.as_secs_f64(),
        rate(latencies.len(), elapsed),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        writer.rows as f64 / writer.transactions.max(1) as f64,
    );
    supervisor.shutdown(Duration::from_secs(30)).await.unwrap();
}

/// 8 tasks each appending single events, awaiting each; with group
/// commit on (`max_ops`) or off (1).
async fn single_event_appends(per: usize, max_ops: usize) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), max_ops).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    store.append(vec![event(p, i)]).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    (
        rate(per * PRODUCERS, elapsed),
        store.writer_stats().transactions,
    )
}

/// One task appending batches of `batch` events, as the audit actor does.
async fn batched_appends(total: usize, batch: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 4096).await;
    let events: Vec<Vec<Event>> = (0..total / batch)
        .map(|b| (0..batch).map(|i| event(b % PRODUCERS, i)).collect())
        .collect();
    let started = Instant::now();
    for chunk in events {
        store.append(chunk).await.unwrap();
    }
    rate(total, started.elapsed())
}

/// The producer's cost: `emit` of prebuilt events into a sink nothing
/// drains (so only the hand-off is timed), one thread.
async fn emit_cost(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 4096).await;
    let (_spec, audit) = audit_child(
        "audit",
        Arc::new(store),
        AuditConfig {
            queue_capacity: n + 1,
            retention: Retention::keep_all(),
            ..AuditConfig::default()
        },
    )
    .unwrap();
    let sink = audit.sink();
    let events: Vec<Event> = (0..n).map(|i| event(0, i + 1)).collect();
    let started = Instant::now();
    for e in events {
        sink.emit(e);
    }
    let elapsed = started.elapsed();
    println!(
        "emit (never blocks), one producer, events prebuilt: {:.0} ns/event",
        elapsed.as_nanos() as f64 / n as f64
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn main() {
    let total: usize = std::env::var("HALE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!(
            "audit_ingest (SQLite WAL, synchronous=FULL, tokio 2 workers; load average before: {})",
            load_average()
        );
        emit_cost(200_000).await;
        through_the_actor(total).await;
        durable_records(500).await;

        let batched = batched_appends(total / 2, 4096).await;
        println!("store, batches of 4096 from one task: {batched:.0} events/s");

        let (grouped, grouped_tx) = single_event_appends(1_000, 4096).await;
        let (single, single_tx) = single_event_appends(100, 1).await;
        println!(
            "store, {PRODUCERS} tasks appending one event at a time: group commit {grouped:.0} events/s \
             ({:.1} events/transaction) vs one transaction per event {single:.0} events/s \
             ({} transactions for {} events); ratio {:.1}x",
            (1_000 * PRODUCERS) as f64 / grouped_tx.max(1) as f64,
            single_tx,
            100 * PRODUCERS,
            grouped / single,
        );
    });
}
