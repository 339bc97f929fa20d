//! Chaos: thousands of random kills and panics across a three-level tree.
//!
//! The tree is root -> 5 mid supervisors -> 2 leaf supervisors each (the
//! three strategies in turn) -> 6 workers each (60 workers, one transient per
//! leaf). Faults are drawn from a seeded RNG (the seed is printed; set
//! `HALE_CHAOS_SEED` to replay one) and land one at a time on a settled tree,
//! so the test can say, independently of the supervisors, which faults
//! landed: a kill of a running actor or a panic of a running worker does; a
//! kill aimed at an old, already-dead ref does not. A model of OTP's rules
//! predicts every supervisor's restart count, and the supervisors' own counts
//! must match it exactly after every fault.
//!
//! Run 1 sets intensities high enough never to trip. Run 2 sets them low, so
//! leaves give up (their mid restarts them) and mids give up (the root
//! restarts them); the model predicts those escalations too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hale_supervision::{
    ChildId, ChildSpec, Restart, Strategy, SupervisorEvent, SupervisorEventKind, SupervisorRef,
    SupervisorSpec,
};
use ractor::{ActorCell, ActorStatus};
use support::*;

const MIDS: usize = 5;
const LEAVES: usize = 2;
const WORKERS: usize = 6;
const DEFAULT_SEED: u64 = 0x4a1e_2026;

/// Per-level values: restart intensities `(max, period)`, or just the maxima.
struct Limits<T = (u32, Duration)> {
    root: T,
    mid: T,
    leaf: T,
}

fn leaf_spec(
    path: String,
    strategy: Strategy,
    limits: &Limits,
    shared: &Arc<Shared>,
    observer: &Arc<GiveUps>,
) -> SupervisorSpec {
    let mut spec = SupervisorSpec::new(path)
        .strategy(strategy)
        .intensity(limits.leaf.0, limits.leaf.1)
        .observer(observer.clone());
    for w in 0..WORKERS {
        let child = worker(&format!("w{w}"), shared);
        spec = spec.child(if w == WORKERS - 1 {
            child.restart(Restart::Transient)
        } else {
            child
        });
    }
    spec
}

/// Counts give-ups reported through the event stream.
#[derive(Default)]
struct GiveUps(AtomicU64);

impl hale_supervision::SupervisorObserver for GiveUps {
    fn observe(&self, event: &SupervisorEvent) {
        if matches!(event.kind, SupervisorEventKind::GaveUp { .. }) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn tree(limits: Limits, shared: &Arc<Shared>, observer: &Arc<GiveUps>) -> SupervisorSpec {
    let limits = Arc::new(limits);
    let mut root = SupervisorSpec::new("root")
        .intensity(limits.root.0, limits.root.1)
        .observer(observer.clone());
    for m in 0..MIDS {
        let (limits, shared, observer) = (limits.clone(), shared.clone(), observer.clone());
        root = root.child(ChildSpec::supervisor(format!("mid{m}"), move || {
            let mut mid = SupervisorSpec::new(format!("root/mid{m}"))
                .intensity(limits.mid.0, limits.mid.1)
                .observer(observer.clone());
            for l in 0..LEAVES {
                let strategy = [
                    Strategy::OneForOne,
                    Strategy::OneForAll,
                    Strategy::RestForOne,
                ][(m * LEAVES + l) % 3];
                let (limits, shared, observer) = (limits.clone(), shared.clone(), observer.clone());
                mid = mid.child(ChildSpec::supervisor(format!("leaf{l}"), move || {
                    leaf_spec(
                        format!("root/mid{m}/leaf{l}"),
                        strategy,
                        &limits,
                        &shared,
                        &observer,
                    )
                }));
            }
            mid
        }));
    }
    root
}

/// What the test expects each current supervisor incarnation to report.
#[derive(Default)]
struct Model {
    /// Restarts of the current incarnation, by path ("root", "mid3", "mid3/leaf1").
    restarts: HashMap<String, u64>,
    max: HashMap<&'static str, u64>,
    landed: u64,
    stale: u64,
    escalations: u64,
}

impl Model {
    fn level_max(&self, path: &str) -> u64 {
        let level = match path.matches('/').count() {
            0 if path == "root" => "root",
            0 => "mid",
            _ => "leaf",
        };
        self.max[level]
    }

    fn reset_subtree(&mut self, path: &str) {
        let prefix = format!("{path}/");
        self.restarts
            .retain(|p, _| p != path && !p.starts_with(&prefix));
    }

    /// A fault landed on a child of `sup`; returns the path of the supervisor
    /// whose restart count settles the fault.
    fn child_died(&mut self, sup: &str) -> String {
        self.landed += 1;
        let mut sup = sup.to_owned();
        loop {
            let count = self.restarts.get(&sup).copied().unwrap_or(0);
            if count < self.level_max(&sup) {
                self.restarts.insert(sup.clone(), count + 1);
                return sup;
            }
            // Over its intensity: it gives up, and its parent sees a child exit.
            self.escalations += 1;
            self.reset_subtree(&sup);
            sup = parent(&sup).expect("the root never gives up in these runs");
        }
    }
}

fn parent(path: &str) -> Option<String> {
    match path.rsplit_once('/') {
        Some((p, _)) => Some(p.to_owned()),
        None if path == "root" => None,
        None => Some("root".to_owned()),
    }
}

struct Chaos {
    root: SupervisorRef,
    model: Model,
    graveyard: Vec<ActorCell>,
}

impl Chaos {
    async fn sup(&self, path: &str) -> SupervisorRef {
        let mut sup = self.root.clone();
        if path == "root" {
            return sup;
        }
        for part in path.split('/') {
            sup = SupervisorRef::from(current(&sup, part).await);
        }
        sup
    }

    async fn settle(&self, path: &str, fault: usize) {
        let expected = self.model.restarts.get(path).copied().unwrap_or(0);
        let last = std::cell::Cell::new(None);
        let settled = eventually(Duration::from_secs(10), || async {
            let sup = self.sup_quiet(path).await?;
            let restarts = sup.stats().await.ok()?.restarts;
            last.set(Some(restarts));
            (restarts == expected).then_some(())
        })
        .await;
        let last = last.get();
        assert!(
            settled.is_some(),
            "fault {fault}: supervisor {path} reports {last:?} restarts, model expects {expected}"
        );
    }

    /// Like `sup`, but None while some part of the path is still restarting.
    async fn sup_quiet(&self, path: &str) -> Option<SupervisorRef> {
        let mut sup = self.root.clone();
        if path == "root" {
            return Some(sup);
        }
        for part in path.split('/') {
            sup = SupervisorRef::from(sup.resolve(&ChildId::from(part)).await.ok()??);
        }
        Some(sup)
    }

    async fn run(&mut self, faults: usize, rng: &mut fastrand::Rng) {
        for fault in 0..faults {
            let m = rng.usize(..MIDS);
            let l = rng.usize(..LEAVES);
            let w = rng.usize(..WORKERS);
            let roll = rng.u32(..100);
            let settles = match roll {
                // 0-59: kill a worker, 60-84: make one panic.
                0..=84 => {
                    let leaf_path = format!("mid{m}/leaf{l}");
                    let leaf = self.sup(&leaf_path).await;
                    let cell = current(&leaf, &format!("w{w}")).await;
                    // A fresh incarnation may still be in post_start; a kill
                    // or a queued panic lands all the same.
                    assert!(
                        cell.get_status() <= ActorStatus::Running,
                        "{:?}",
                        cell.get_status()
                    );
                    if roll < 60 {
                        cell.kill();
                    } else {
                        send(&cell, WorkerMsg::Panic);
                    }
                    self.graveyard.push(cell);
                    Some(self.model.child_died(&leaf_path))
                }
                85..=92 => {
                    let mid = self.sup(&format!("mid{m}")).await;
                    let leaf = current(&mid, &format!("leaf{l}")).await;
                    leaf.kill();
                    self.model.reset_subtree(&format!("mid{m}/leaf{l}"));
                    self.graveyard.push(leaf);
                    Some(self.model.child_died(&format!("mid{m}")))
                }
                93..=96 => {
                    let mid = current(&self.root, &format!("mid{m}")).await;
                    mid.kill();
                    self.model.reset_subtree(&format!("mid{m}"));
                    self.graveyard.push(mid);
                    Some(self.model.child_died("root"))
                }
                _ => {
                    // A kill aimed at an actor that is already dead must change nothing.
                    if !self.graveyard.is_empty() {
                        let stale = &self.graveyard[rng.usize(..self.graveyard.len())];
                        assert_eq!(stale.get_status(), ActorStatus::Stopped);
                        stale.kill();
                        self.model.stale += 1;
                    }
                    None
                }
            };
            if let Some(path) = settles {
                self.settle(&path, fault).await;
            }
            if self.graveyard.len() > 2_000 {
                self.graveyard.drain(..1_000);
            }
        }
    }

    /// Every supervisor's count matches the model; every worker answers.
    async fn verify(&self) {
        self.settle("root", usize::MAX).await;
        for m in 0..MIDS {
            self.settle(&format!("mid{m}"), usize::MAX).await;
            for l in 0..LEAVES {
                let path = format!("mid{m}/leaf{l}");
                self.settle(&path, usize::MAX).await;
                let leaf = self.sup(&path).await;
                for w in 0..WORKERS {
                    let id = format!("w{w}");
                    let cell = current(&leaf, &id).await;
                    assert_eq!(ping(&cell).await, Some(id), "{path}/w{w} does not answer");
                }
            }
        }
    }
}

fn seed() -> u64 {
    std::env::var("HALE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

async fn chaos_run(name: &str, limits: Limits, faults: usize, seed: u64) -> (Model, u64) {
    quiet_deliberate_panics();
    let baseline_tasks = alive_tasks();
    let shared = Shared::new();
    let give_ups = Arc::new(GiveUps::default());
    let max = Limits {
        root: limits.root.0,
        mid: limits.mid.0,
        leaf: limits.leaf.0,
    };
    let (root, root_task) = SupervisorRef::start(tree(limits, &shared, &give_ups))
        .await
        .unwrap();
    let workers = (MIDS * LEAVES * WORKERS) as i64;
    assert_eq!(shared.live.load(Ordering::SeqCst), workers);
    let tree_tasks = alive_tasks();

    let mut chaos = Chaos {
        root,
        model: Model::default(),
        graveyard: Vec::new(),
    };
    chaos.model.max.insert("root", u64::from(max.root));
    chaos.model.max.insert("mid", u64::from(max.mid));
    chaos.model.max.insert("leaf", u64::from(max.leaf));
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(seed);
    chaos.run(faults, &mut rng).await;
    chaos.verify().await;
    let took = started.elapsed();

    // No actor leaked: exactly the tree's workers live, and as many tasks as
    // right after the tree started.
    let live = eventually(Duration::from_secs(5), || async {
        let live = shared.live.load(Ordering::SeqCst);
        (live == workers).then_some(live)
    })
    .await;
    assert_eq!(
        live,
        Some(workers),
        "live workers {} != {workers}",
        shared.live.load(Ordering::SeqCst)
    );
    let tasks = eventually(Duration::from_secs(5), || async {
        (alive_tasks() == tree_tasks).then_some(())
    })
    .await;
    assert!(
        tasks.is_some(),
        "alive tasks {} != {tree_tasks} after chaos",
        alive_tasks()
    );

    chaos.root.shutdown(Duration::from_secs(30)).await.unwrap();
    root_task.await.unwrap();
    assert_eq!(
        shared.live.load(Ordering::SeqCst),
        0,
        "workers alive after shutdown"
    );
    let drained = eventually(Duration::from_secs(5), || async {
        (alive_tasks() <= baseline_tasks).then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "alive tasks {} > baseline {baseline_tasks} after shutdown",
        alive_tasks()
    );

    let give_ups = give_ups.0.load(Ordering::SeqCst);
    println!(
        "{name}: seed {seed}, {faults} faults, {} landed, {} stale, {} escalations, {give_ups} give-ups reported, {:.2?} ({:.0} faults/s), panics delivered {}",
        chaos.model.landed,
        chaos.model.stale,
        chaos.model.escalations,
        took,
        faults as f64 / took.as_secs_f64(),
        shared.panics.load(Ordering::SeqCst),
    );
    (chaos.model, give_ups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_ten_thousand_faults_never_tripping_intensity() {
    let seed = seed();
    println!("chaos seed: {seed} (replay with HALE_CHAOS_SEED={seed})");
    let period = Duration::from_secs(60);
    let limits = Limits {
        root: (100_000, period),
        mid: (100_000, period),
        leaf: (100_000, period),
    };
    let (model, give_ups) = chaos_run("never-trips", limits, 10_000, seed).await;
    assert_eq!(model.escalations, 0);
    assert_eq!(give_ups, 0);
    assert!(model.landed > 9_000, "only {} faults landed", model.landed);
    assert!(model.stale > 100, "only {} stale kills", model.stale);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_intensity_tripping_escalates_to_parents() {
    let seed = seed() ^ 0xff;
    println!("chaos seed: {seed} (derived from HALE_CHAOS_SEED)");
    // Windows far longer than the run, so the model's per-incarnation counts are exact.
    let period = Duration::from_secs(600);
    let limits = Limits {
        root: (100_000, period),
        mid: (4, period),
        leaf: (3, period),
    };
    let (model, give_ups) = chaos_run("trips", limits, 2_000, seed).await;
    assert!(
        model.escalations > 100,
        "only {} escalations",
        model.escalations
    );
    assert_eq!(
        give_ups, model.escalations,
        "give-ups reported vs predicted"
    );
}
