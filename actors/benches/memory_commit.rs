//! What group commit buys: 50 concurrent writers appending lessons through
//! the memory actor (writes that queue up during a flush share the next
//! one) against the same durable atomic write done once per request,
//! serialised by a lock (one temp write + fsync + rename + dir fsync each).
//!
//! Criterion measures one round of 50 concurrent writes in each mode;
//! afterwards a direct run writes `HALE_BENCH_WRITES` lessons per writer
//! (default 10) in each mode, three times alternating, and prints the
//! median writes/s of each and their ratio. `cargo bench -p hale-actors
//! --bench memory_commit`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use hale_actors::NullSink;
use hale_actors::memory::durable::{self, Fence};
use hale_actors::memory::{Document, Lesson, MemoryConfig, MemoryHandle, memory_child};
use hale_supervision::{SupervisorRef, SupervisorSpec};
use tempfile::TempDir;

const WRITERS: usize = 50;

static NEXT: AtomicU64 = AtomicU64::new(0);

fn next_lesson(writer: usize) -> Lesson {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Lesson::new(
        ["Tools", "Models", "Files"][writer % 3],
        format!("lesson {n} from writer {writer}: read the error before retrying"),
    )
}

/// The memory actor under a supervisor, in a fresh directory.
struct Grouped {
    handle: MemoryHandle,
    supervisor: SupervisorRef,
    _dir: TempDir,
}

impl Grouped {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (child, handle) = memory_child(
            "memory",
            &MemoryConfig::in_workspace(dir.path()),
            Arc::new(NullSink),
        )
        .unwrap();
        let (supervisor, _) =
            SupervisorRef::start(SupervisorSpec::new("bench/memory").child(child))
                .await
                .unwrap();
        Self {
            handle,
            supervisor,
            _dir: dir,
        }
    }

    async fn write(&self, writer: usize) {
        let outcome = self.handle.remember(next_lesson(writer)).await;
        assert!(outcome.is_success(), "{outcome:?}");
    }

    async fn stop(self) {
        self.supervisor
            .shutdown(Duration::from_secs(5))
            .await
            .unwrap();
    }
}

/// The baseline: the same document and the same durable write, one per
/// request, the lock held across it so writes cannot overtake each other.
struct Serial {
    doc: tokio::sync::Mutex<Document>,
    path: PathBuf,
    fence: Fence,
    generation: u64,
    _dir: TempDir,
}

impl Serial {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fence = Fence::new();
        let generation = fence.issue();
        fence.claim(generation);
        Self {
            doc: tokio::sync::Mutex::new(Document::default()),
            path: dir.path().join("MEMORY.md"),
            fence,
            generation,
            _dir: dir,
        }
    }

    async fn write(&self, writer: usize) {
        let mut doc = self.doc.lock().await;
        assert!(doc.append(&next_lesson(writer)).unwrap());
        let content = doc.text().to_owned();
        let (path, fence, generation) = (self.path.clone(), self.fence.clone(), self.generation);
        tokio::task::spawn_blocking(move || durable::persist(&path, &content, &fence, generation))
            .await
            .unwrap()
            .unwrap();
        drop(doc);
    }
}

/// `per_writer` writes from each of the 50 writers, all at once; the time
/// until the last is acknowledged.
async fn round<F, Fut>(per_writer: usize, write: F) -> Duration
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let writers = (0..WRITERS).map(|w| {
        let write = &write;
        async move {
            for _ in 0..per_writer {
                write(w).await;
            }
        }
    });
    futures_join_all(writers).await;
    started.elapsed()
}

/// Runs the futures concurrently on this task (no extra dependency).
async fn futures_join_all<Fut: std::future::Future<Output = ()>>(
    futures: impl Iterator<Item = Fut>,
) {
    let mut set = Vec::new();
    for future in futures {
        set.push(Box::pin(future));
    }
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn criterion_memory_commit(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("memory_commit_50_writers");
    group.throughput(Throughput::Elements(WRITERS as u64));
    group.bench_function("group_commit_actor", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let grouped = Grouped::start().await;
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                took += round(1, |w| grouped.write(w)).await;
            }
            grouped.stop().await;
            took
        })
    });
    group.bench_function("fsync_per_write", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let serial = Serial::start();
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                took += round(1, |w| serial.write(w)).await;
            }
            took
        })
    });
    group.finish();
}

fn direct_run() {
    let rt = runtime();
    let per_writer = std::env::var("HALE_BENCH_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let writes = (WRITERS * per_writer) as f64;
    let (mut grouped_rates, mut serial_rates) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..3 {
            let grouped = Grouped::start().await;
            let took = round(per_writer, |w| grouped.write(w)).await;
            grouped.stop().await;
            grouped_rates.push(writes / took.as_secs_f64());
            let serial = Serial::start();
            let took = round(per_writer, |w| serial.write(w)).await;
            serial_rates.push(writes / took.as_secs_f64());
        }
    });
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let grouped = median(&mut grouped_rates);
    let serial = median(&mut serial_rates);
    println!(
        "\ndirect run: {WRITERS} concurrent writers x {per_writer} lessons, 3 runs each (median)"
    );
    println!("group_commit_actor_writes_per_s: {grouped:.0}");
    println!("fsync_per_write_writes_per_s: {serial:.0}");
    println!(
        "ratio group commit / fsync per write: {:.1}x",
        grouped / serial
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .without_plots();
    targets = criterion_memory_commit
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    direct_run();
}
