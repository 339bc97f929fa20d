//! Tools as supervised actors: calls reach whichever incarnation is
//! current, a kill mid-call ends the call classified (and its work with
//! it), and calls made during a restart wait for the replacement.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hale_actors::builtin::{BuiltinConfig, builtin_tools, tools_supervisor};
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
