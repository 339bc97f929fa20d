//! The MCP actors against real servers from npm and PyPI.

use std::time::{Duration, Instant};

use hale::actors::ErrorCode;
use hale::actors::dispatch::DispatchConfig;
use hale::actors::mcp::{McpServerConfig, McpTransport};
use serde_json::json;

use crate::harness::Harness;
use crate::support::{free_port, quick, real_servers};

fn node(name: &str, script: &std::path::Path, args: &[&str]) -> McpServerConfig {
    let mut all = vec![script.display().to_string()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    quick(McpServerConfig::stdio(name, "node", all))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_lists_and_calls_through_the_actors() {
    let Some(real) = real_servers() else { return };
    let started = Instant::now();
    let h = Harness::start(
        vec![node("everything", &real.everything(), &["stdio"])],
        DispatchConfig::default(),
    )
    .await;
    h.ready("everything").await;
    println!(
        "server-everything ready in {} ms",
        started.elapsed().as_millis()
    );

    let status = h.servers.status("everything").unwrap();
    let tools: Vec<&str> = status.tools.iter().map(|t| t.name.as_str()).collect();
    assert!(tools.contains(&"echo"), "{tools:?}");
    assert!(tools.contains(&"get-sum"), "{tools:?}");

    let echo = h
        .call("everything__echo", json!({ "message": "hello hale" }))
        .await;
    assert!(echo.is_success(), "{echo:?}");
    assert!(
        echo.data["text"].as_str().unwrap().contains("hello hale"),
        "{echo:?}"
    );
    let sum = h
        .call("everything__get-sum", json!({ "a": 2, "b": 40 }))
        .await;
    assert!(sum.is_success(), "{sum:?}");
    assert!(sum.data["text"].as_str().unwrap().contains("42"), "{sum:?}");

    // Bad arguments: the TypeScript server answers isError with an
    // embedded -32602, which is the caller's fault, not the server's.
    let bad = h.call("everything__get-sum", json!({ "a": "two" })).await;
    assert_eq!(bad.code, Some(ErrorCode::InvalidInput), "{bad:?}");

    // A misspelt tool comes back with the server's closest names.
    let typo = h.call("everything__ecoh", json!({ "message": "x" })).await;
    assert_eq!(typo.code, Some(ErrorCode::NotFound), "{typo:?}");
    assert_eq!(typo.hints[0].suggestions[0], "echo", "{typo:?}");
    assert_eq!(h.shutdown().await, 0, "a server process outlived the tree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_filesystem_reads_a_file_through_the_actors() {
    let Some(real) = real_servers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::write(root.join("notes.txt"), "remember the milk\n").unwrap();
    let h = Harness::start(
        vec![node("fs", &real.filesystem(), &[root.to_str().unwrap()])],
        DispatchConfig::default(),
    )
    .await;
    h.ready("fs").await;
    let status = h.servers.status("fs").unwrap();
    let tools: Vec<&str> = status.tools.iter().map(|t| t.name.as_str()).collect();
    assert!(tools.contains(&"read_text_file"), "{tools:?}");
    let read = h
        .call(
            "fs__read_text_file",
            json!({ "path": root.join("notes.txt") }),
        )
        .await;
    assert!(read.is_success(), "{read:?}");
    assert!(
        read.data["text"]
            .as_str()
            .unwrap()
            .contains("remember the milk")
    );
    // Outside its allowed directory the server refuses; hale reports the
    // refusal as the server's error, not as a server failure.
    let outside = h
        .call("fs__read_text_file", json!({ "path": "/etc/hostname" }))
        .await;
    assert!(outside.is_failure(), "{outside:?}");
    assert!(!outside.retryable, "{outside:?}");
    // The read-only tools are idempotent by the server's annotations.
    let listed = status
        .tools
        .iter()
        .find(|t| t.name == "read_text_file")
        .unwrap();
    assert!(listed.idempotent(), "{listed:?}");
    assert_eq!(h.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_server_time_from_pypi_answers() {
    let Some(real) = real_servers() else { return };
    let config = quick(McpServerConfig::stdio(
        "time",
        real.time(),
        ["--local-timezone=UTC"],
    ));
    let h = Harness::start(vec![config], DispatchConfig::default()).await;
    h.ready("time").await;
    let now = h
        .call("time__get_current_time", json!({ "timezone": "UTC" }))
        .await;
    assert!(now.is_success(), "{now:?}");
    assert!(
        now.data["text"].as_str().unwrap().contains("UTC"),
        "{now:?}"
    );
    // The Python SDK reports an unknown tool as a JSON-RPC error; hale
    // answers it before asking, with the server's own tool names.
    let typo = h
        .call("time__get_curent_time", json!({ "timezone": "UTC" }))
        .await;
    assert_eq!(typo.code, Some(ErrorCode::NotFound));
    assert_eq!(typo.hints[0].suggestions[0], "get_current_time");
    assert_eq!(h.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_over_streamable_http() {
    let Some(real) = real_servers() else { return };
    let port = free_port();
    let mut server = tokio::process::Command::new("node")
        .arg(real.everything())
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait for the port to open.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "server-everything HTTP did not open {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let config = quick(McpServerConfig::new(
        "web",
        McpTransport::Http {
            url: format!("http://127.0.0.1:{port}/mcp"),
        },
    ));
    let h = Harness::start(vec![config], DispatchConfig::default()).await;
    h.ready("web").await;
    let echo = h.call("web__echo", json!({ "message": "over http" })).await;
    assert!(echo.is_success(), "{echo:?}");
    assert!(echo.data["text"].as_str().unwrap().contains("over http"));
    h.shutdown().await;
    let _ = server.kill().await;
}

#[test]
fn configs_are_validated_with_the_field_named() {
    let mut bad = McpServerConfig::stdio("a__b", "x", Vec::<String>::new());
    assert!(bad.validate().unwrap_err().to_string().contains("name"));
    bad.name = "ok".into();
    bad.request_timeout = Duration::ZERO;
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("request_timeout")
    );
    let http = McpServerConfig::http("h", "ftp://x");
    assert!(http.validate().unwrap_err().to_string().contains("url"));
}
