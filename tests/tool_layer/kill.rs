//! kill -9 of a server's whole process group, idle and mid-call: the call
//! in flight ends classified within its timeout, the supervisor restarts
//! the server, the next call succeeds; detection and recovery times are
//! printed.

use std::time::{Duration, Instant};

use hale::actors::dispatch::DispatchConfig;
use hale::actors::mcp::{McpServerConfig, McpState};
use hale::actors::recovery::RetryConfig;
use hale::actors::{ErrorCode, Status};
use serde_json::json;

use crate::harness::Harness;
use crate::support::{alive, fault_server, kill_group, quick, real_servers};

fn no_retries() -> DispatchConfig {
    DispatchConfig {
        retry: RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        },
        ..DispatchConfig::default()
    }
}

/// Kills the server's group while idle; returns (detected, recovered).
async fn kill_idle_and_recover(
    h: &Harness,
    server: &str,
    tool: &str,
    args: serde_json::Value,
) -> (Duration, Duration) {
    let pid = h.pid(server);
    let connects = h.servers.status(server).unwrap().connects;
    let killed = Instant::now();
    kill_group(pid);
    // Detection: the actor notices the dead transport.
    let deadline = killed + Duration::from_secs(10);
    while h.servers.status(server).unwrap().state == McpState::Ready
        && h.servers.status(server).unwrap().connects == connects
    {
        assert!(
            Instant::now() < deadline,
            "the kill of {pid} went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let detected = killed.elapsed();
    // Recovery: a call succeeds on a new process.
    let deadline = killed + Duration::from_secs(30);
    let recovered = loop {
        let outcome = h.call(tool, args.clone()).await;
        if outcome.is_success() {
            break killed.elapsed();
        }
        assert!(Instant::now() < deadline, "no recovery: {outcome:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let status = h.servers.status(server).unwrap();
    assert_ne!(
        status.pid,
        Some(pid),
        "the same process answered after kill -9"
    );
    assert!(!alive(pid), "{pid} survived kill -9");
    h.remember(server);
    (detected, recovered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_idle_is_restarted_and_serves_again() {
    let h = Harness::start(vec![fault_server("f", &[])], no_retries()).await;
    h.ready("f").await;
    let (detected, recovered) =
        kill_idle_and_recover(&h, "f", "f__echo", json!({ "text": "back" })).await;
    println!(
        "fault-mcp kill -9 while idle: detected in {} ms, next call served after {} ms",
        detected.as_millis(),
        recovered.as_millis()
    );
    assert_eq!(
        h.servers.list(h.dispatcher.endpoints()).await[0].restarts,
        1
    );
    assert_eq!(h.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_killed_while_idle_is_restarted() {
    let Some(real) = real_servers() else { return };
    let config = quick(McpServerConfig::stdio(
        "everything",
        "node",
        [real.everything().display().to_string(), "stdio".to_owned()],
    ));
    let h = Harness::start(vec![config], no_retries()).await;
    h.ready("everything").await;
    let (detected, recovered) = kill_idle_and_recover(
        &h,
        "everything",
        "everything__echo",
        json!({ "message": "back" }),
    )
    .await;
    println!(
        "server-everything kill -9 while idle: detected in {} ms, next call served after {} ms",
        detected.as_millis(),
        recovered.as_millis()
    );
    assert_eq!(h.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_a_call_ends_the_call_classified() {
    let mut config = fault_server("f", &[]);
    config
        .tool_timeouts
        .insert("sleep".into(), Duration::from_secs(5));
    let h = Harness::start(vec![config], no_retries()).await;
    h.ready("f").await;
    let pid = h.pid("f");

    let call = {
        let dispatcher = &h.dispatcher;
        async move {
            let started = Instant::now();
            let outcome = dispatcher
                .call(
                    "f__sleep",
                    json!({ "ms": 4000 }),
                    &hale::actors::dispatch::ToolContext::default(),
                )
                .await;
            (outcome, started)
        }
    };
    let killer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        kill_group(pid);
        Instant::now()
    };
    let ((outcome, _started), killed) = tokio::join!(call, killer);
    let ended = killed.elapsed();
    assert_eq!(
        outcome.code,
        Some(ErrorCode::TransportClosed),
        "{outcome:?}"
    );
    assert_eq!(outcome.status, Status::Error);
    // `sleep` is annotated read-only, so recovery could retry it; the
    // outcome itself says so.
    assert!(outcome.retryable && outcome.recoverable);
    assert!(
        ended < Duration::from_secs(2),
        "the in-flight call took {ended:?} after the kill"
    );

    let recovered_from = Instant::now();
    // Wait for the replacement, not just any "ready": the old incarnation
    // may not have processed its dead transport yet.
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.servers.status("f").unwrap().connects < 2 {
        assert!(Instant::now() < deadline, "never restarted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.ready("f").await;
    let echo = h.call("f__echo", json!({ "text": "again" })).await;
    assert!(echo.is_success(), "{echo:?}");
    println!(
        "fault-mcp kill -9 mid-call: the call ended {} ms after the kill ({:?}); \
         next call served {} ms later",
        ended.as_millis(),
        outcome.code,
        recovered_from.elapsed().as_millis()
    );
    assert_ne!(h.pid("f"), pid);
    h.remember("f");
    assert_eq!(h.shutdown().await, 0);
}

/// A stdio server's process group is in the data directory's ledger while
/// it runs: a kill -9 and restart replaces the record with the new
/// process's, and a shutdown removes it, so a crash of hale leaves exactly
/// the live groups recorded for the next start to reap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_ledger_follows_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = hale::data_dir::DataDir::open(tmp.path()).unwrap();
    let mut config = fault_server("f", &[]);
    config.recorder = data.ledger().hook();
    let h = Harness::start(vec![config], no_retries()).await;
    h.ready("f").await;
    let recorded = || {
        let mut pids: Vec<u32> = data.ledger().records().iter().map(|r| r.pid).collect();
        pids.sort_unstable();
        pids
    };
    let first = h.pid("f");
    assert_eq!(recorded(), [first]);
    let record = &data.ledger().records()[0];
    assert!(record.command.contains("fault-mcp"), "{record:?}");

    kill_group(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = h.servers.status("f").unwrap();
        if let Some(pid) = status.pid
            && pid != first
            && status.state == McpState::Ready
            && recorded() == [pid]
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ledger {:?} after the restart, status {status:?}",
            recorded()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.remember("f");
    assert_eq!(h.shutdown().await, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !recorded().is_empty() {
        assert!(
            Instant::now() < deadline,
            "left in the ledger: {:?}",
            recorded()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
