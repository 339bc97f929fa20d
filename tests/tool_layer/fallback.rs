//! A primary server that dies and cannot be restarted: its breaker opens,
//! calls go to the backup within the same call, and once the primary can
//! start again the half-open probe brings calls back to it.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use hale::actors::dispatch::DispatchConfig;
use hale::actors::mcp::McpServerConfig;
use hale::actors::recovery::RetryConfig;
use hale::actors::{EventKind, Status};
use serde_json::json;

use crate::harness::Harness;
use crate::support::{calls_in, fault_server, hale_bin, kill_group, quick};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_sends_calls_to_the_backup_and_the_probe_restores_the_primary() {
    let dir = tempfile::tempdir().unwrap();
    let a_calls = dir.path().join("a.calls");
    let b_calls = dir.path().join("b.calls");
    // The primary runs through a wrapper script, so that removing the
    // script makes its restarts fail the way a broken install would.
    let script = dir.path().join("primary.sh");
    let parked = dir.path().join("primary.sh.off");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec '{}' fault-mcp --name primary --calls-file '{}'\n",
            hale_bin().display(),
            a_calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut primary = quick(McpServerConfig::stdio(
        "primary",
        &script,
        Vec::<String>::new(),
    ));
    primary.fallbacks = vec!["backup".into()];
    let b_calls_arg = b_calls.display().to_string();
    let backup = fault_server("backup", &["--calls-file", &b_calls_arg]);
    let cool_down = Duration::from_millis(800);
    let dispatch = DispatchConfig {
        breaker_failures: 2,
        breaker_cool_down: cool_down,
        retry: RetryConfig {
            max_attempts: 3,
            base: Duration::from_millis(20),
            ..RetryConfig::default()
        },
        ..DispatchConfig::default()
    };
    let h = Harness::start(vec![primary, backup], dispatch).await;
    h.ready("primary").await;
    h.ready("backup").await;

    let first = h.call("primary__echo", json!({ "text": "1" })).await;
    assert!(first.is_success(), "{first:?}");
    assert_eq!((calls_in(&a_calls), calls_in(&b_calls)), (1, 0));

    // Break the primary for good: its command disappears, then its
    // process group is killed.
    std::fs::rename(&script, &parked).unwrap();
    kill_group(h.pid("primary"));

    let started = Instant::now();
    let second = h.call("primary__echo", json!({ "text": "2" })).await;
    assert!(second.is_success(), "{second:?}");
    assert_eq!(second.data["text"], "2");
    assert_eq!(calls_in(&b_calls), 1, "the backup served the same call");
    println!(
        "primary down: the same call was served by the backup in {} ms",
        started.elapsed().as_millis()
    );
    let reports = h.servers.list(h.dispatcher.endpoints()).await;
    let report = reports.iter().find(|r| r.name == "primary").unwrap();
    assert_eq!(report.breaker, "open", "{report:?}");
    assert!(report.last_error.is_some(), "{report:?}");
    assert!(h.count(EventKind::Fallback) >= 1);

    // While the breaker is open, calls go straight to the backup.
    let third = h.call("primary__echo", json!({ "text": "3" })).await;
    assert!(third.is_success());
    assert_eq!(calls_in(&b_calls), 2);

    // The primary can start again: its supervisor (restart or park probe)
    // brings it back, and after the cool-down the half-open probe sends a
    // call to it and closes the breaker.
    std::fs::rename(&parked, &script).unwrap();
    h.ready("primary").await;
    tokio::time::sleep(cool_down).await;
    let before = calls_in(&a_calls);
    let fourth = h.call("primary__echo", json!({ "text": "4" })).await;
    assert_eq!(fourth.status, Status::Success, "{fourth:?}");
    assert_eq!(
        calls_in(&a_calls),
        before + 1,
        "the probe went to the primary"
    );
    let reports = h.servers.list(h.dispatcher.endpoints()).await;
    let report = reports.iter().find(|r| r.name == "primary").unwrap();
    assert_eq!(report.breaker, "closed", "{report:?}");
    let transitions: Vec<String> = h
        .sink
        .events()
        .iter()
        .filter(|e| e.kind == EventKind::Breaker && e.source == "primary")
        .map(|e| format!("{}->{}", e.data["from"], e.data["to"]).replace('"', ""))
        .collect();
    assert_eq!(
        transitions.first().map(String::as_str),
        Some("closed->open")
    );
    assert_eq!(
        transitions.last().map(String::as_str),
        Some("half_open->closed")
    );
    h.remember("primary");
    assert_eq!(h.shutdown().await, 0);
}
