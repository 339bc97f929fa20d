//! Tools as supervised actors: calls reach whichever incarnation is
//! current, a kill mid-call ends the call classified (and its work with
//! it), and calls made during a restart wait for the replacement.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hale_actors::builtin::{BuiltinConfig, builtin_tools, tools_supervisor};
use hale_actors::dispatch::{DispatchConfig, Dispatcher, Endpoints, RegistryRouter, Router};
use hale_actors::recovery::RetryConfig;
use hale_actors::tool::CANCEL_GRACE;
use hale_actors::{
    BoxFuture, ErrorCode, EventKind, MemorySink, Tool, ToolContext, ToolOutcome, ToolRegistry,
    ToolSpec,
};
use hale_supervision::{ChildId, SupervisorRef};
use serde_json::{Value, json};

struct Panicky {
    spec: ToolSpec,
}

impl Tool for Panicky {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }
    fn call<'a>(&'a self, _args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        Box::pin(async { panic!("deliberate panic in a tool") })
    }
}

async fn start(dir: &std::path::Path) -> (SupervisorRef, Arc<ToolRegistry>, Arc<MemorySink>) {
    // The sandbox wrapper lives in the hale binary, out of this crate's
    // reach; these tests are about tool actors, so the sandbox is off.
    let mut config = BuiltinConfig::new(dir);
    config.exec.sandbox = hale_actors::builtin::SandboxConfig::off();
    let mut tools = builtin_tools(&config).unwrap();
    tools.push(Arc::new(Panicky {
        spec: ToolSpec::new("panicky", "panics", json!({ "type": "object" })),
    }));
    let sink = Arc::new(MemorySink::new());
    let (spec, handles) = tools_supervisor("hale/tools", tools, sink.clone());
    let (supervisor, _) = SupervisorRef::start(spec).await.unwrap();
    let registry = Arc::new(ToolRegistry::new());
    for handle in handles {
        registry.register(Arc::new(handle)).unwrap();
    }
    (supervisor, registry, sink)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_builtin_tool_runs_as_a_supervised_actor() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "alpha\n").unwrap();
    let (supervisor, registry, _) = start(dir.path()).await;
    assert_eq!(
        registry.names(),
        [
            "edit_file",
            "exec",
            "glob",
            "grep",
            "panicky",
            "read_file",
            "web_fetch",
            "write_file"
        ]
    );
    let children = supervisor.which_children().await.unwrap();
    assert_eq!(children.len(), 8);
    let read = registry
        .call(
            "read_file",
            json!({ "path": "a.txt" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(read.is_success(), "{read:?}");
    assert_eq!(read.data["content"], "alpha\n");
    // Idempotency survives the trip through the actor handle.
    assert!(registry.get("read_file").unwrap().spec().idempotent);
    assert!(!registry.get("exec").unwrap().spec().idempotent);

    // A panicking tool is an INTERNAL outcome; its actor keeps serving.
    let panicked = registry
        .call("panicky", json!({}), &hale_actors::ToolContext::default())
        .await;
    assert_eq!(panicked.code, Some(ErrorCode::Internal), "{panicked:?}");
    assert!(panicked.message.contains("deliberate panic"));
    assert_eq!(supervisor.stats().await.unwrap().restarts, 0);
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tool_actor_is_replaced_and_its_call_ends_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let (supervisor, registry, sink) = start(dir.path()).await;
    let exec_id = ChildId::new("exec");

    // A call in flight when its actor is killed: the call ends at once,
    // classified, and the command's process group dies with the actor.
    let ctx = hale_actors::ToolContext::default();
    let call = registry.call(
        "exec",
        json!({ "command": "sleep 2; echo done >> late", "timeout_ms": 10000 }),
        &ctx,
    );
    let killer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        supervisor.resolve(&exec_id).await.unwrap().unwrap().kill();
        Instant::now()
    };
    let (outcome, killed) = tokio::join!(call, killer);
    assert_eq!(outcome.code, Some(ErrorCode::Interrupted), "{outcome:?}");
    assert!(!outcome.retryable, "exec is not idempotent: {outcome:?}");
    assert!(killed.elapsed() < Duration::from_millis(500));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !dir.path().join("late").exists(),
        "the killed call's command ran on"
    );

    // The replacement serves.
    let echo = registry
        .call(
            "exec",
            json!({ "command": "echo hi" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(echo.is_success(), "{echo:?}");
    assert_eq!(echo.data["stdout"], "hi\n");
    assert!(
        sink.events()
            .iter()
            .any(|e| e.kind == EventKind::ChildRestarted && e.source == "hale/tools/exec")
    );

    // Calls made while the actor is down wait for the replacement.
    supervisor.resolve(&exec_id).await.unwrap().unwrap().kill();
    let during = registry
        .call(
            "exec",
            json!({ "command": "echo again" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(during.is_success(), "{during:?}");
    assert_eq!(supervisor.stats().await.unwrap().restarts, 2);
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A dispatcher over the tool actors, as the runtime builds it.
fn dispatcher_over(registry: Arc<ToolRegistry>, config: DispatchConfig) -> Dispatcher {
    let routers: Vec<Arc<dyn Router>> = vec![Arc::new(RegistryRouter::new(registry))];
    Dispatcher::new(
        routers,
        Arc::new(Endpoints::new(config).unwrap()),
        Arc::new(MemorySink::new()),
    )
}

/// Recovery off, and a short fixed attempt timeout.
fn short_attempts(attempt_timeout: Duration) -> DispatchConfig {
    DispatchConfig {
        retry: RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        },
        attempt_timeout,
        ..DispatchConfig::default()
    }
}

/// Whether `pid` is a live process (a zombie counts as gone: it is dead).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        state != "Z" && state != "X"
    })
}

/// Polls (bounded) until `condition` holds.
async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

fn pid_in(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A caller that gives up on an `exec` (drops the dispatcher's call) has
/// the command killed with its whole process group, although the command
/// runs in the exec actor's own task, out of the caller's future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_exec_is_killed_with_its_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let (supervisor, registry, _) = start(dir.path()).await;
    let dispatcher = Arc::new(dispatcher_over(
        registry,
        short_attempts(Duration::from_secs(1)),
    ));
    let call = {
        let dispatcher = Arc::clone(&dispatcher);
        tokio::spawn(async move {
            let command = "sleep 60 & echo $! > bg.pid; echo $$ > sh.pid; wait";
            dispatcher
                .call(
                    "exec",
                    json!({ "command": command, "timeout_ms": 60_000 }),
                    &ToolContext::default(),
                )
                .await
        })
    };
    let (bg, sh) = (dir.path().join("bg.pid"), dir.path().join("sh.pid"));
    assert!(
        eventually(Duration::from_secs(10), || pid_in(&bg).is_some()
            && pid_in(&sh).is_some())
        .await,
        "the command never started"
    );
    let (bg, sh) = (pid_in(&bg).unwrap(), pid_in(&sh).unwrap());
    assert!(alive(bg) && alive(sh));
    // Not abandoned at the 1 s attempt timeout: exec's own timeout (60 s)
    // bounds it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !call.is_finished(),
        "the exec was cut off at attempt_timeout"
    );
    call.abort();
    assert!(
        eventually(Duration::from_secs(5), || !alive(bg) && !alive(sh)).await,
        "the abandoned exec's group survived: shell {sh} alive {}, background {bg} alive {}",
        alive(sh),
        alive(bg)
    );
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// `exec`'s attempt deadline is its own timeout plus a grace: a command
/// that asked for 30 s is not abandoned at a shorter attempt timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_with_a_longer_own_timeout_outlives_the_attempt_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (supervisor, registry, _) = start(dir.path()).await;
    let dispatcher = dispatcher_over(registry, short_attempts(Duration::from_millis(300)));
    let outcome = dispatcher
        .call(
            "exec",
            json!({ "command": "sleep 1; echo done", "timeout_ms": 30_000 }),
            &ToolContext::default(),
        )
        .await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(outcome.data["stdout"], "done\n");
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A command that runs into its own timeout is the command's business:
/// exec killed it and said so, so the exec endpoint's breaker is not
/// charged, and the next command runs. (When the dispatcher's backstop
/// cut exec off instead, each such call counted as an endpoint failure
/// and a few slow commands closed `exec` for every session.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_timing_out_on_their_own_do_not_open_the_exec_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let (supervisor, registry, _) = start(dir.path()).await;
    let config = DispatchConfig {
        breaker_failures: 2,
        ..short_attempts(Duration::from_millis(200))
    };
    let dispatcher = dispatcher_over(registry, config);
    let mut slow = Vec::new();
    for _ in 0..3 {
        slow.push(
            dispatcher
                .call(
                    "exec",
                    json!({ "command": "sleep 5", "timeout_ms": 400 }),
                    &ToolContext::default(),
                )
                .await,
        );
    }
    let health = dispatcher.endpoints().find("exec").unwrap();
    assert_eq!(
        hale_actors::dispatch::state_name(health.breaker_state()),
        "closed",
        "{slow:?}"
    );
    let quick = dispatcher
        .call(
            "exec",
            json!({ "command": "echo ok" }),
            &ToolContext::default(),
        )
        .await;
    assert!(quick.is_success(), "{quick:?}");
    for outcome in &slow {
        assert!(outcome.is_timeout(), "{outcome:?}");
        assert_eq!(
            outcome.data["timed_out"], true,
            "exec's own timeout: {outcome:?}"
        );
    }
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A tool that ignores its cancel signal and never answers; the flag
/// rises when its call's future is dropped.
struct Stubborn {
    spec: ToolSpec,
    dropped: Arc<AtomicBool>,
}

struct RaiseOnDrop(Arc<AtomicBool>);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Tool for Stubborn {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }
    fn call<'a>(&'a self, _args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        let guard = RaiseOnDrop(Arc::clone(&self.dropped));
        Box::pin(async move {
            let _guard = guard;
            std::future::pending().await
        })
    }
}

/// The tool actor's backstop: a call the dispatcher abandoned is dropped
/// in the actor's task too (after the cancel grace), even when the tool
/// ignores its cancel signal, instead of running on unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_call_is_dropped_in_its_actor_after_the_cancel_grace() {
    let dropped = Arc::new(AtomicBool::new(false));
    let tool: Arc<dyn Tool> = Arc::new(Stubborn {
        spec: ToolSpec::new("stubborn", "never answers", json!({ "type": "object" })),
        dropped: Arc::clone(&dropped),
    });
    let (spec, handles) = tools_supervisor("t", vec![tool], Arc::new(MemorySink::new()));
    let (supervisor, _) = SupervisorRef::start(spec).await.unwrap();
    let registry = Arc::new(ToolRegistry::new());
    for handle in handles {
        registry.register(Arc::new(handle)).unwrap();
    }
    let dispatcher = dispatcher_over(registry, short_attempts(Duration::from_millis(300)));
    let outcome = dispatcher
        .call("stubborn", json!({}), &ToolContext::default())
        .await;
    assert!(outcome.is_timeout(), "{outcome:?}");
    assert!(
        eventually(CANCEL_GRACE + Duration::from_secs(3), || dropped
            .load(Ordering::SeqCst))
        .await,
        "the abandoned call still runs in the tool actor"
    );
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}
