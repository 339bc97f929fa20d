//! Kill -> replacement answering a call: hale's supervisor against a minimal
//! hand-written ractor respawn, measured in one run.
//!
//! Each iteration kills the current child, asks the supervisor for the
//! current child until it names a new actor, then makes one call to it: the
//! same steps as the Erlang/OTP anchor (`exit(Child, kill)`, then
//! `which_children` until a new pid answers `gen_server:call`).
//!
//! Criterion measures both; afterwards a direct run interleaves the two in
//! blocks (so a CPU speed switch hits both alike) and prints p50/p99 of each
//! and their ratio. `cargo bench -p hale-supervision --bench restart`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use hale_supervision::{ChildId, ChildSpec, Strategy, SupervisorRef, SupervisorSpec};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

struct Echo;

enum EchoMsg {
    Ping(RpcReplyPort<()>),
}

impl Actor for Echo {
    type Msg = EchoMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let EchoMsg::Ping(reply) = msg;
        let _ = reply.send(());
        Ok(())
    }
}

/// The least a ractor user would write: respawn the child on any exit.
struct RawRespawn;

enum RawMsg {
    Current(RpcReplyPort<ActorCell>),
}

impl Actor for RawRespawn {
    type Msg = RawMsg;
    type State = ActorCell;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<ActorCell, ActorProcessingErr> {
        let (child, _) = Echo::spawn_linked(None, Echo, (), myself.get_cell()).await?;
        Ok(child.get_cell())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        child: &mut ActorCell,
    ) -> Result<(), ActorProcessingErr> {
        let RawMsg::Current(reply) = msg;
        let _ = reply.send(child.clone());
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        child: &mut ActorCell,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorTerminated(cell, ..) | SupervisionEvent::ActorFailed(cell, _) =
            &event
            && cell.get_id() == child.get_id()
        {
            let (new, _) = Echo::spawn_linked(None, Echo, (), myself.get_cell()).await?;
            *child = new.get_cell();
        }
        Ok(())
    }
}

async fn ping(cell: ActorCell) {
    let actor: ActorRef<EchoMsg> = cell.into();
    actor.call(EchoMsg::Ping, None).await.unwrap();
}

struct Hale {
    sup: SupervisorRef,
    id: ChildId,
}

impl Hale {
    async fn start() -> Self {
        let spec = SupervisorSpec::new("bench")
            .strategy(Strategy::OneForOne)
            // Far above what the bench can reach within the period.
            .intensity(u32::MAX, Duration::from_millis(1))
            .child(ChildSpec::worker("echo", || (Echo, ())));
        let (sup, _) = SupervisorRef::start(spec).await.unwrap();
        Self {
            sup,
            id: ChildId::from("echo"),
        }
    }

    async fn current(&self) -> ActorCell {
        loop {
            if let Some(cell) = self.sup.resolve(&self.id).await.unwrap() {
                return cell;
            }
        }
    }

    async fn kill_and_recover(&self) -> Duration {
        let old = self.current().await;
        let started = Instant::now();
        old.kill();
        loop {
            if let Some(cell) = self.sup.resolve(&self.id).await.unwrap()
                && cell.get_id() != old.get_id()
            {
                ping(cell).await;
                return started.elapsed();
            }
        }
    }
}

struct Raw {
    sup: ActorRef<RawMsg>,
}

impl Raw {
    async fn start() -> Self {
        let (sup, _) = RawRespawn::spawn(None, RawRespawn, ()).await.unwrap();
        Self { sup }
    }

    async fn current(&self) -> ActorCell {
        self.sup.call(RawMsg::Current, None).await.unwrap().unwrap()
    }

    async fn kill_and_recover(&self) -> Duration {
        let old = self.current().await;
        let started = Instant::now();
        old.kill();
        loop {
            let cell = self.current().await;
            if cell.get_id() != old.get_id() {
                ping(cell).await;
                return started.elapsed();
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn criterion_restart(c: &mut Criterion) {
    let rt = runtime();
    let hale = rt.block_on(Hale::start());
    let raw = rt.block_on(Raw::start());
    let mut group = c.benchmark_group("kill_to_answering_replacement");
    group.bench_function("hale_supervisor", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let hale = &hale;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += hale.kill_and_recover().await;
                }
                total
            }
        })
    });
    group.bench_function("raw_ractor_respawn", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let raw = &raw;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += raw.kill_and_recover().await;
                }
                total
            }
        })
    });
    group.finish();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Interleaved blocks of both, each latency kept, p50/p99 and the ratio printed.
fn direct_percentiles() {
    let rt = runtime();
    rt.block_on(async {
        let hale = Hale::start().await;
        let raw = Raw::start().await;
        for _ in 0..500 {
            hale.kill_and_recover().await;
            raw.kill_and_recover().await;
        }
        let (mut h, mut r) = (Vec::new(), Vec::new());
        let blocks = std::env::var("HALE_BENCH_BLOCKS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50);
        for _ in 0..blocks {
            for _ in 0..100 {
                h.push(hale.kill_and_recover().await);
            }
            for _ in 0..100 {
                r.push(raw.kill_and_recover().await);
            }
        }
        h.sort();
        r.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let (h50, h99, r50, r99) = (
            percentile(&h, 50.0),
            percentile(&h, 99.0),
            percentile(&r, 50.0),
            percentile(&r, 99.0),
        );
        println!(
            "\ndirect interleaved run: {} kills each (blocks of 100, alternating)",
            h.len()
        );
        println!("restart_hale_us_p50: {:.2} us", us(h50));
        println!("restart_hale_us_p99: {:.2} us", us(h99));
        println!("restart_raw_ractor_us_p50: {:.2} us", us(r50));
        println!("restart_raw_ractor_us_p99: {:.2} us", us(r99));
        println!("ratio_hale_to_raw_p50: {:.3}", us(h50) / us(r50));
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5)).without_plots();
    targets = criterion_restart
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    direct_percentiles();
}
