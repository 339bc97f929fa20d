//! What hale adds to a tool call: an echo tool called directly, through its
//! supervised tool actor, and through the dispatcher (breaker, cap, retry
//! budget, attempt budget, events, timeout) in front of the actor.
//!
//! Criterion measures the three; afterwards a direct run interleaves them
//! in blocks (so a CPU speed switch hits all alike) and prints p50/p99 of
//! each and the per-call overhead. `cargo bench -p hale-actors --bench
//! tool_call` (`HALE_BENCH_BLOCKS` sets the number of blocks, default 50).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use hale_actors::dispatch::{DispatchConfig, Dispatcher, Endpoints, RegistryRouter, Router};
use hale_actors::tool_actor::{ToolHandle, tool_child};
use hale_actors::{BoxFuture, NullSink, Tool, ToolContext, ToolOutcome, ToolRegistry, ToolSpec};
use hale_supervision::{SupervisorRef, SupervisorSpec};
use serde_json::{Value, json};

struct Echo {
    spec: ToolSpec,
}

impl Tool for Echo {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }
    fn call<'a>(&'a self, args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        Box::pin(async move { ToolOutcome::success(args) })
    }
}

/// The least a ractor user would write: an actor that answers inline.
struct RawEcho;

impl ractor::Actor for RawEcho {
    type Msg = ractor::RpcReplyPort<ToolOutcome>;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ractor::ActorRef<Self::Msg>,
        _: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ractor::ActorRef<Self::Msg>,
        reply: Self::Msg,
        _: &mut (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        let _ = reply.send(ToolOutcome::success(json!({ "text": "hi" })));
        Ok(())
    }
}

struct Setup {
    raw: ractor::ActorRef<ractor::RpcReplyPort<ToolOutcome>>,
    direct: Arc<dyn Tool>,
    actor: ToolHandle,
    dispatcher: Dispatcher,
    /// The dispatcher over the plain function: the policy's own cost.
    policy_only: Dispatcher,
    _supervisor: SupervisorRef,
}

impl Setup {
    async fn start() -> Self {
        let direct: Arc<dyn Tool> = Arc::new(Echo {
            spec: ToolSpec::new("echo", "echo", json!({ "type": "object" })).with_idempotent(true),
        });
        let (child, actor) = tool_child("echo", direct.clone());
        let (supervisor, _) = SupervisorRef::start(SupervisorSpec::new("bench/tools").child(child))
            .await
            .unwrap();
        let registry = Arc::new(ToolRegistry::new());
        registry.register(Arc::new(actor.clone())).unwrap();
        let routers: Vec<Arc<dyn Router>> = vec![Arc::new(RegistryRouter::new(registry))];
        let dispatcher = Dispatcher::new(
            routers,
            Arc::new(Endpoints::new(DispatchConfig::default()).unwrap()),
            Arc::new(NullSink),
        );
        let plain = Arc::new(ToolRegistry::new());
        plain.register(direct.clone()).unwrap();
        let routers: Vec<Arc<dyn Router>> = vec![Arc::new(RegistryRouter::new(plain))];
        let policy_only = Dispatcher::new(
            routers,
            Arc::new(Endpoints::new(DispatchConfig::default()).unwrap()),
            Arc::new(NullSink),
        );
        let (raw, _) = ractor::Actor::spawn(None, RawEcho, ()).await.unwrap();
        Self {
            raw,
            direct,
            actor,
            dispatcher,
            policy_only,
            _supervisor: supervisor,
        }
    }

    async fn direct(&self) -> Duration {
        let started = Instant::now();
        let outcome = self
            .direct
            .call(
                json!({ "text": "hi" }),
                &hale_actors::ToolContext::default(),
            )
            .await;
        let took = started.elapsed();
        assert!(outcome.is_success());
        took
    }

    async fn raw_ractor(&self) -> Duration {
        let started = Instant::now();
        let outcome = self.raw.call(|reply| reply, None).await.unwrap();
        let took = started.elapsed();
        assert!(matches!(outcome, ractor::rpc::CallResult::Success(ref o) if o.is_success()));
        took
    }

    async fn actor(&self) -> Duration {
        let started = Instant::now();
        let outcome = self
            .actor
            .call(
                json!({ "text": "hi" }),
                &hale_actors::ToolContext::default(),
            )
            .await;
        let took = started.elapsed();
        assert!(outcome.is_success());
        took
    }

    async fn policy_only(&self, ctx: &ToolContext) -> Duration {
        let started = Instant::now();
        let outcome = self
            .policy_only
            .call("echo", json!({ "text": "hi" }), ctx)
            .await;
        let took = started.elapsed();
        assert!(outcome.is_success());
        took
    }

    async fn dispatched(&self, ctx: &ToolContext) -> Duration {
        let started = Instant::now();
        let outcome = self
            .dispatcher
            .call("echo", json!({ "text": "hi" }), ctx)
            .await;
        let took = started.elapsed();
        assert!(outcome.is_success());
        took
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn criterion_tool_call(c: &mut Criterion) {
    let rt = runtime();
    let setup = rt.block_on(Setup::start());
    let ctx = ToolContext::default();
    let mut group = c.benchmark_group("echo_tool_call");
    group.bench_function("direct", |b| {
        b.to_async(&rt)
            .iter(|| setup.direct.call(json!({ "text": "hi" }), &ctx))
    });
    group.bench_function("tool_actor", |b| {
        b.to_async(&rt)
            .iter(|| setup.actor.call(json!({ "text": "hi" }), &ctx))
    });
    group.bench_function("raw_ractor_call", |b| {
        b.to_async(&rt).iter(|| setup.raw.call(|reply| reply, None))
    });
    group.bench_function("dispatcher_only", |b| {
        b.to_async(&rt).iter(|| {
            setup
                .policy_only
                .call("echo", json!({ "text": "hi" }), &ctx)
        })
    });
    group.bench_function("dispatcher_and_actor", |b| {
        b.to_async(&rt)
            .iter(|| setup.dispatcher.call("echo", json!({ "text": "hi" }), &ctx))
    });
    group.finish();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// The rotated-block run, with the caller where `from` says: on the
/// `block_on` thread (outside the runtime's workers), or in a task on a
/// worker, where hale's sessions (actors) make their calls.
async fn rotated_blocks(from: &str) {
    let setup = Setup::start().await;
    let ctx = ToolContext::default();
    for _ in 0..2000 {
        setup.direct().await;
        setup.actor().await;
        setup.dispatched(&ctx).await;
        setup.policy_only(&ctx).await;
        setup.raw_ractor().await;
    }
    let (mut d, mut a, mut p, mut o, mut r) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let blocks = std::env::var("HALE_BENCH_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    for _ in 0..blocks {
        for _ in 0..200 {
            d.push(setup.direct().await);
        }
        for _ in 0..200 {
            a.push(setup.actor().await);
        }
        for _ in 0..200 {
            p.push(setup.dispatched(&ctx).await);
        }
        for _ in 0..200 {
            o.push(setup.policy_only(&ctx).await);
        }
        for _ in 0..200 {
            r.push(setup.raw_ractor().await);
        }
    }
    for v in [&mut d, &mut a, &mut p, &mut o, &mut r] {
        v.sort();
    }
    let us = |x: Duration| x.as_secs_f64() * 1e6;
    println!(
        "\ndirect interleaved run, caller {from}: {} calls each (blocks of 200, rotating)",
        d.len()
    );
    for (name, v) in [
        ("direct", &d),
        ("tool_actor", &a),
        ("dispatcher_and_actor", &p),
        ("dispatcher_only", &o),
        ("raw_ractor_call", &r),
    ] {
        println!(
            "echo_{name}_us_p50: {:.2} us  p99: {:.2} us",
            us(percentile(v, 50.0)),
            us(percentile(v, 99.0))
        );
    }
    println!(
        "overhead_p50_us (dispatcher+actor - direct): {:.2} us",
        us(percentile(&p, 50.0)) - us(percentile(&d, 50.0))
    );
    println!(
        "overhead_p50_us (actor - direct): {:.2} us",
        us(percentile(&a, 50.0)) - us(percentile(&d, 50.0))
    );
    println!(
        "ratio_p50 dispatcher+actor / raw ractor call: {:.2}",
        us(percentile(&p, 50.0)) / us(percentile(&r, 50.0))
    );
    println!(
        "overhead_p50_us (policy alone: dispatcher over the plain function - direct): {:.2} us",
        us(percentile(&o, 50.0)) - us(percentile(&d, 50.0))
    );
}

fn direct_percentiles() {
    let rt = runtime();
    rt.block_on(rotated_blocks("on the block_on thread"));
    rt.block_on(async {
        tokio::spawn(rotated_blocks("in a task on a runtime worker"))
            .await
            .unwrap();
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(4)).without_plots();
    targets = criterion_tool_call
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    direct_percentiles();
}
