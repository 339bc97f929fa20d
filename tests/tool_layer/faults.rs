//! The MCP actors against `hale fault-mcp`: every way a server can fail
//! becomes a classified outcome, and the server (or its replacement) keeps
//! serving.

use std::time::{Duration, Instant};

use hale::actors::dispatch::DispatchConfig;
use hale::actors::recovery::RetryConfig;
use hale::actors::{ErrorCode, EventKind, Status};
use serde_json::json;

use crate::harness::Harness;
use crate::support::fault_server;

/// Recovery off: these tests look at what one attempt reports.
fn single_attempt() -> DispatchConfig {
    DispatchConfig {
        retry: RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        },
        ..DispatchConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_times_out_and_the_server_stays_usable() {
    let mut config = fault_server("f", &[]);
    config
        .tool_timeouts
        .insert("hang".into(), Duration::from_millis(500));
    let h = Harness::start(vec![config], single_attempt()).await;
    h.ready("f").await;
    let pid = h.pid("f");

    let started = Instant::now();
    let hung = h.call("f__hang", json!({})).await;
    let took = started.elapsed();
    assert_eq!(hung.status, Status::Timeout, "{hung:?}");
    assert!(hung.retryable);
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );

    let echo = h.call("f__echo", json!({ "text": "still here" })).await;
    assert!(echo.is_success(), "{echo:?}");
    assert_eq!(echo.data["text"], "still here");
    assert_eq!(h.pid("f"), pid, "a timeout must not cost a restart");
    assert_eq!(h.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_error_and_json_rpc_errors_are_classified() {
    let h = Harness::start(vec![fault_server("f", &[])], single_attempt()).await;
    h.ready("f").await;

    let failed = h
        .call("f__fail", json!({ "message": "quota exceeded" }))
        .await;
    assert_eq!(failed.code, Some(ErrorCode::ToolError), "{failed:?}");
    assert!(failed.message.contains("quota exceeded"));
    assert!(failed.recoverable && !failed.retryable);

    let invalid = h
        .call(
            "f__rpc_error",
            json!({ "code": -32602, "message": "bad params" }),
        )
        .await;
    assert_eq!(invalid.code, Some(ErrorCode::InvalidInput), "{invalid:?}");
    assert_eq!(invalid.data["jsonrpc_code"], -32602);

    let internal = h.call("f__rpc_error", json!({})).await;
    assert_eq!(internal.code, Some(ErrorCode::Internal), "{internal:?}");

    let busy = h
        .call("f__rpc_error", json!({ "code": -32000, "message": "busy" }))
        .await;
    assert_eq!(busy.code, Some(ErrorCode::ServiceUnavailable), "{busy:?}");
    assert!(busy.retryable);
    assert_eq!(h.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_stdout_is_survived() {
    let mut config = fault_server("f", &[]);
    config
        .tool_timeouts
        .insert("garbage".into(), Duration::from_millis(800));
    let h = Harness::start(vec![config], single_attempt()).await;
    h.ready("f").await;

    let started = Instant::now();
    let garbage = h.call("f__garbage", json!({})).await;
    // Whatever the client makes of the garbage line, the call ends in a
    // classified failure within its timeout (plus the time a restart takes
    // to be noticed), never a hang or a panic.
    assert!(garbage.is_failure(), "{garbage:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    println!(
        "garbage on stdout -> {:?} {:?} in {} ms",
        garbage.status,
        garbage.code,
        started.elapsed().as_millis()
    );

    // The server (or its replacement) serves the next call.
    h.ready("f").await;
    let echo = h.call("f__echo", json!({ "text": "after garbage" })).await;
    assert!(echo.is_success(), "{echo:?}");
    assert_eq!(h.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_on_the_nth_call_is_classified_and_the_server_restarted() {
    let h = Harness::start(
        vec![fault_server("f", &["--crash-on", "3"])],
        single_attempt(),
    )
    .await;
    h.ready("f").await;
    let first_pid = h.pid("f");
    for n in 1..=2 {
        let echo = h
            .call("f__echo", json!({ "text": format!("call {n}") }))
            .await;
        assert!(echo.is_success(), "call {n}: {echo:?}");
    }
    let started = Instant::now();
    let crashed = h.call("f__echo", json!({ "text": "call 3" })).await;
    assert_eq!(
        crashed.code,
        Some(ErrorCode::TransportClosed),
        "{crashed:?}"
    );
    assert!(crashed.retryable && crashed.recoverable);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The supervisor restarted it: a new process answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = h.servers.status("f").unwrap();
        if status.connects >= 2 && status.pid != Some(first_pid) {
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.remember("f");
    let echo = h.call("f__echo", json!({ "text": "call 4" })).await;
    assert!(echo.is_success(), "{echo:?}");
    let reports = h.servers.list(h.dispatcher.endpoints()).await;
    assert_eq!(reports[0].restarts, 1, "{reports:?}");
    // The crash and the restart are in the audit stream.
    let events = h.sink.events();
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::ChildExited && e.source == "hale/mcp/f"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::ChildRestarted && e.source == "hale/mcp/f")
    );
    assert!(events.iter().any(|e| e.kind == EventKind::Disconnected));
    assert_eq!(h.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_first_n_then_recovery_retries_an_idempotent_tool() {
    let dispatch = DispatchConfig {
        retry: RetryConfig {
            max_attempts: 4,
            base: Duration::from_millis(10),
            ..RetryConfig::default()
        },
        ..DispatchConfig::default()
    };
    let h = Harness::start(
        vec![fault_server(
            "f",
            &["--fail-first", "2", "--fail-mode", "rpc_error"],
        )],
        dispatch,
    )
    .await;
    h.ready("f").await;
    // rpc_error's default is -32603 (INTERNAL, not retryable): handed back.
    let first = h.call("f__echo", json!({ "text": "x" })).await;
    assert_eq!(first.code, Some(ErrorCode::Internal), "{first:?}");
    let second = h.call("f__echo", json!({ "text": "x" })).await;
    assert_eq!(second.code, Some(ErrorCode::Internal), "{second:?}");
    let third = h.call("f__echo", json!({ "text": "x" })).await;
    assert!(third.is_success(), "{third:?}");
    assert_eq!(h.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manage_lists_disables_enables_and_restarts() {
    let h = Harness::start(vec![fault_server("f", &[])], single_attempt()).await;
    h.ready("f").await;
    let reports = h.servers.list(h.dispatcher.endpoints()).await;
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(
        (r.name.as_str(), r.state, r.breaker),
        ("f", "ready", "closed")
    );
    assert!(r.tools.contains(&"echo".to_owned()), "{r:?}");
    let pid = r.pid.unwrap();

    h.servers.disable("f").await.unwrap();
    let started = Instant::now();
    let refused = h.call("f__echo", json!({ "text": "x" })).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "disabled calls must fail fast"
    );
    assert_eq!(
        refused.code,
        Some(ErrorCode::McpServerUnreachable),
        "{refused:?}"
    );
    assert!(refused.message.contains("disabled"), "{refused:?}");
    assert!(!refused.retryable && refused.recoverable);
    assert_eq!(refused.data["disabled"], true);
    assert_eq!(
        h.servers.list(h.dispatcher.endpoints()).await[0].state,
        "disabled"
    );
    // Its process is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while crate::support::alive(pid) {
        assert!(
            Instant::now() < deadline,
            "disabled server {pid} still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    h.servers.enable("f").await.unwrap();
    h.ready("f").await;
    assert!(h.call("f__echo", json!({ "text": "x" })).await.is_success());

    let before = h.pid("f");
    h.servers.restart("f").await.unwrap();
    h.ready("f").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.servers.status("f").unwrap().pid == Some(before) {
        assert!(Instant::now() < deadline, "restart kept the old process");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.ready("f").await;
    assert!(h.call("f__echo", json!({ "text": "x" })).await.is_success());
    assert!(h.servers.disable("nope").await.is_err());
    assert_eq!(h.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manage_mcp_tool_answers_as_an_agent_would_call_it() {
    use hale::actors::Tool;
    use hale::actors::mcp::ManageMcp;

    let h = Harness::start(
        vec![fault_server("weather", &[]), fault_server("search", &[])],
        single_attempt(),
    )
    .await;
    h.ready("weather").await;
    h.ready("search").await;
    let tool = ManageMcp::new(h.servers.clone(), h.dispatcher.endpoints().clone());

    let list = tool
        .call(
            json!({ "action": "list" }),
            &hale::actors::ToolContext::default(),
        )
        .await;
    assert!(list.is_success(), "{list:?}");
    let names: Vec<&str> = list.data["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["search", "weather"]);
    assert_eq!(list.data["servers"][1]["state"], "ready");
    assert_eq!(list.data["servers"][1]["breaker"], "closed");

    let disabled = tool
        .call(
            json!({ "action": "disable", "server": "weather" }),
            &hale::actors::ToolContext::default(),
        )
        .await;
    assert!(disabled.is_success(), "{disabled:?}");
    assert_eq!(disabled.data["state"], "disabled");

    let typo = tool
        .call(
            json!({ "action": "enable", "server": "wether" }),
            &hale::actors::ToolContext::default(),
        )
        .await;
    assert_eq!(typo.code, Some(ErrorCode::NotFound));
    assert_eq!(typo.hints[0].suggestions[0], "weather");

    let missing = tool
        .call(
            json!({ "action": "restart" }),
            &hale::actors::ToolContext::default(),
        )
        .await;
    assert_eq!(missing.code, Some(ErrorCode::InvalidInput));

    let enabled = tool
        .call(
            json!({ "action": "enable", "server": "weather" }),
            &hale::actors::ToolContext::default(),
        )
        .await;
    assert!(enabled.is_success(), "{enabled:?}");
    h.ready("weather").await;
    assert!(
        h.call("weather__echo", json!({ "text": "x" }))
            .await
            .is_success()
    );
    assert_eq!(h.shutdown().await, 0);
}

/// A server that writes a line that is not UTF-8 and a 1 MiB line to
/// stderr keeps serving, with no restart: hale reads stderr lossily and
/// cuts long lines, and never stops reading (the fault server, like many
/// real ones, dies when its stderr is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_and_a_huge_line_on_stderr_are_survived() {
    use hale::actors::mcp::STDERR_LINE_MAX_BYTES;
    let h = Harness::start(vec![fault_server("f", &[])], single_attempt()).await;
    h.ready("f").await;
    let pid = h.pid("f");
    for round in 0..3 {
        let echo = h
            .call(
                "f__echo",
                json!({ "text": format!("round {round}"), "stderr_noise": true }),
            )
            .await;
        assert!(echo.is_success(), "round {round}: {echo:?}");
        assert_eq!(echo.data["text"], format!("round {round}"));
    }
    let plain = h.call("f__echo", json!({ "text": "after" })).await;
    assert!(plain.is_success(), "{plain:?}");
    assert_eq!(h.pid("f"), pid, "the noise cost a restart");
    // Everything the server wrote was read: the last line is there, and
    // the long one was cut.
    let mut tail = Vec::new();
    for _ in 0..250 {
        tail = Vec::from(h.servers.status("f").unwrap().stderr_tail);
        if tail.iter().any(|l| l == "noise: done") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(tail.iter().any(|l| l == "noise: done"), "{tail:?}");
    assert!(
        tail.iter()
            .any(|l| l.starts_with("noise: \u{fffd}\u{fffd} not UTF-8")),
        "{tail:?}"
    );
    let long = tail
        .iter()
        .find(|l| l.starts_with("noise: yyy"))
        .expect("the long line");
    assert!(long.len() < STDERR_LINE_MAX_BYTES + 100, "{}", long.len());
    assert!(long.contains("more bytes dropped]"), "{long}");
    assert_eq!(h.shutdown().await, 0);
}

/// A result over `max_result_bytes` is refused as OUTPUT_TOO_LARGE with a
/// hint to ask for less; a result under it passes, and the server is
/// not blamed (no breaker failure, no restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_cap_is_output_too_large_with_a_hint() {
    let mut config = fault_server("f", &[]);
    config.max_result_bytes = 64 * 1024;
    let h = Harness::start(vec![config], single_attempt()).await;
    h.ready("f").await;
    let pid = h.pid("f");
    let fits = h
        .call("f__echo", json!({ "text": "0123456789", "repeat": 1000 }))
        .await;
    assert!(fits.is_success(), "{}", fits.message);
    let huge = h
        .call(
            "f__echo",
            json!({ "text": "0123456789", "repeat": 200_000 }),
        )
        .await;
    // The message only: a failing run must not print the 2 MB result.
    assert_eq!(
        huge.code,
        Some(ErrorCode::OutputTooLarge),
        "{}",
        huge.message
    );
    assert!(huge.recoverable && !huge.retryable, "{}", huge.message);
    assert!(huge.data["result_bytes"].as_u64().unwrap() > 2_000_000);
    assert_eq!(huge.data["max_result_bytes"], 64 * 1024);
    assert!(
        huge.hints
            .iter()
            .any(|hint| hint.message.starts_with("ask for less")),
        "{:?}",
        huge.hints
    );
    assert!(
        !huge.data.to_string().contains("0123456789"),
        "the oversized result leaked into the outcome"
    );
    let after = h.call("f__echo", json!({ "text": "small" })).await;
    assert!(after.is_success(), "{after:?}");
    assert_eq!(h.pid("f"), pid);
    let health = h.dispatcher.endpoints().find("f").unwrap();
    assert_eq!(
        hale::actors::dispatch::state_name(health.breaker_state()),
        "closed"
    );
    assert_eq!(h.shutdown().await, 0);
}
