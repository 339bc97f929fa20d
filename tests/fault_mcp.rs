//! `hale fault-mcp` driven by rmcp's own client, over stdio and streamable
//! HTTP: each fault arrives at the client the way the report says it does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
    ClientRequest, Implementation, ProgressNotificationParam, ProtocolVersion, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::common::client_side_sse::FixedInterval;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceError, ServiceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const HALE: &str = env!("CARGO_BIN_EXE_hale");
const TEST_BUDGET: Duration = Duration::from_secs(20);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const GARBAGE_LINE: &str = "garbage from hale fault-mcp }{ this is not JSON";

/// The newest version rmcp 3.11 can negotiate over `initialize`: its default
/// (2026-07-28) has no handshake and is only answered by falling back.
const PROTOCOL: ProtocolVersion = ProtocolVersion::V_2025_11_25;

/// A client that records progress notifications.
#[derive(Clone, Default)]
struct TestClient {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for TestClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("hale-fault-mcp-test", "0"),
        )
        .with_protocol_version(PROTOCOL)
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }
}

type Client = RunningService<RoleClient, TestClient>;

async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(TEST_BUDGET, body)
        .await
        .expect("test exceeded its time budget");
}

/// Spawns `hale fault-mcp <args>` on stdio and completes the handshake.
/// Dropping the returned client kills the child (kill_on_drop).
async fn stdio_client(args: &[&str]) -> Client {
    let mut command = tokio::process::Command::new(HALE);
    command.arg("fault-mcp").args(args).kill_on_drop(true);
    let (transport, _stderr) = TokioChildProcess::builder(command)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hale fault-mcp");
    tokio::time::timeout(
        Duration::from_secs(5),
        TestClient::default().serve(transport),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake failed")
}

/// A running `hale fault-mcp --http 127.0.0.1:0` and its URL.
struct HttpServer {
    child: tokio::process::Child,
    url: String,
}

async fn http_server(args: &[&str]) -> HttpServer {
    let mut child = tokio::process::Command::new(HALE)
        .args(["fault-mcp", "--http", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn hale fault-mcp --http");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .expect("no listening line in time")
    .expect("read the listening line");
    let url = line
        .trim_end()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/mcp"),
        "{url}"
    );
    HttpServer { child, url }
}

async fn http_client(url: &str) -> Client {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    // A dead server must not keep a call retrying for long.
    let mut retry = FixedInterval::default();
    retry.max_times = Some(2);
    retry.duration = Duration::from_millis(100);
    config.retry_config = Arc::new(retry);
    let transport = StreamableHttpClientTransport::from_config(config);
    tokio::time::timeout(
        Duration::from_secs(5),
        TestClient::default().serve(transport),
    )
    .await
    .expect("HTTP handshake timed out")
    .expect("HTTP handshake failed")
}

/// `tools/call` with a per-request timeout: the only way rmcp bounds a call.
async fn call_with(
    client: &Client,
    name: &str,
    args: Value,
    timeout: Duration,
) -> Result<CallToolResult, ServiceError> {
    let mut params = CallToolRequestParams::new(name.to_owned());
    if let Value::Object(args) = args {
        params = params.with_arguments(args);
    }
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
    let handle = client
        .send_request_with_option(request, PeerRequestOptions::with_timeout(timeout))
        .await?;
    match handle.await_response().await? {
        ServerResult::CallToolResult(result) => Ok(result),
        other => panic!("unexpected result {other:?}"),
    }
}

async fn call(client: &Client, name: &str, args: Value) -> Result<CallToolResult, ServiceError> {
    call_with(client, name, args, CALL_TIMEOUT).await
}

fn text(result: &CallToolResult) -> &str {
    result
        .content
        .first()
        .and_then(|content| content.as_text())
        .map(|text| text.text.as_str())
        .expect("a text content")
}

fn rpc_code(error: &ServiceError) -> i32 {
    match error {
        ServiceError::McpError(data) => data.code.0,
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

async fn assert_echo(client: &Client, value: &str) {
    let result = call(client, "echo", json!({"text": value})).await.unwrap();
    assert_eq!(result.is_error, Some(false));
    assert_eq!(text(&result), value);
}

#[tokio::test]
async fn lists_every_tool_with_schema_and_annotations() {
    bounded(async {
        let client = stdio_client(&["--name", "flaky"]).await;
        let info = client.peer_info().expect("peer info");
        assert_eq!(info.protocol_version, PROTOCOL);
        assert_eq!(info.server_info.as_ref().unwrap().name, "flaky");

        let tools = client.list_all_tools().await.unwrap();
        let names: Vec<&str> = tools.iter().map(|tool| tool.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "echo",
                "sleep",
                "fail",
                "rpc_error",
                "crash",
                "hang",
                "garbage",
                "write_once"
            ]
        );
        for tool in &tools {
            assert_eq!(tool.input_schema.get("type"), Some(&json!("object")));
            let properties = tool.input_schema["properties"].as_object().unwrap();
            assert!(properties.contains_key("behaviour"), "{}", tool.name);
        }
        let find = |name: &str| tools.iter().find(|tool| tool.name == name).unwrap();
        for name in ["echo", "sleep"] {
            let annotations = find(name).annotations.clone().unwrap();
            assert_eq!(annotations.read_only_hint, Some(true), "{name}");
            assert_eq!(annotations.idempotent_hint, Some(true), "{name}");
        }
        let write_once = find("write_once").annotations.clone().unwrap();
        assert_eq!(write_once.idempotent_hint, Some(false));
        assert_eq!(write_once.destructive_hint, Some(true));
        assert_eq!(find("echo").input_schema["required"], json!(["text"]));
        client.cancel().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn echo_fail_and_rpc_error_arrive_as_result_tool_error_and_json_rpc_error() {
    bounded(async {
        let client = stdio_client(&[]).await;
        assert_echo(&client, "hello").await;

        let failed = call(&client, "fail", json!({"message": "boom"}))
            .await
            .unwrap();
        assert_eq!(failed.is_error, Some(true));
        assert_eq!(text(&failed), "boom");

        let error = call(
            &client,
            "rpc_error",
            json!({"code": -32000, "message": "nope"}),
        )
        .await
        .unwrap_err();
        assert_eq!(rpc_code(&error), -32000);
        let ServiceError::McpError(data) = &error else {
            unreachable!()
        };
        assert_eq!(data.message, "nope");
        let default = call(&client, "rpc_error", json!({})).await.unwrap_err();
        assert_eq!(rpc_code(&default), -32603);

        // Bad arguments and unknown tools are JSON-RPC invalid params.
        let missing = call(&client, "echo", json!({})).await.unwrap_err();
        assert_eq!(rpc_code(&missing), -32602);
        let unknown = call(&client, "no_such_tool", json!({})).await.unwrap_err();
        assert_eq!(rpc_code(&unknown), -32602);
        let bad_behaviour = call(
            &client,
            "echo",
            json!({"text": "x", "behaviour": "explode"}),
        )
        .await
        .unwrap_err();
        assert_eq!(rpc_code(&bad_behaviour), -32602);

        // The session survived all of it.
        assert_echo(&client, "still here").await;
        client.cancel().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn behaviour_argument_overrides_any_tool() {
    bounded(async {
        let client = stdio_client(&[]).await;
        let failed = call(&client, "echo", json!({"text": "x", "behaviour": "fail"}))
            .await
            .unwrap();
        assert_eq!(failed.is_error, Some(true));
        assert_eq!(text(&failed), "injected failure (echo)");

        let error = call(
            &client,
            "echo",
            json!({"text": "x", "behaviour": "rpc_error"}),
        )
        .await
        .unwrap_err();
        assert_eq!(rpc_code(&error), -32603);

        let started = Instant::now();
        let slow = call(
            &client,
            "echo",
            json!({"text": "late", "behaviour": "sleep:300"}),
        )
        .await
        .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(text(&slow), "late");

        // `ok` on a fault tool means "do the fault".
        let failed = call(&client, "fail", json!({"behaviour": "ok"}))
            .await
            .unwrap();
        assert_eq!(failed.is_error, Some(true));
        client.cancel().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn hang_times_out_at_the_client_and_the_session_keeps_working() {
    bounded(async {
        let client = stdio_client(&[]).await;
        let started = Instant::now();
        let error = call_with(&client, "hang", json!({}), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            matches!(error, ServiceError::Timeout { timeout } if timeout == Duration::from_millis(300)),
            "{error:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_echo(&client, "after hang").await;

        // A hang in flight does not block a concurrent call either.
        let hung = tokio::spawn({
            let peer = client.peer().clone();
            async move {
                let request = ClientRequest::CallToolRequest(CallToolRequest::new(
                    CallToolRequestParams::new("echo")
                        .with_arguments(json!({"text": "x", "behaviour": "hang"}).as_object().unwrap().clone()),
                ));
                peer.send_request_with_option(
                    request,
                    PeerRequestOptions::with_timeout(Duration::from_secs(3)),
                )
                .await
                .unwrap()
                .await_response()
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_echo(&client, "concurrent").await;
        assert!(!hung.is_finished());
        hung.abort();
        client.cancel().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn crash_closes_the_transport_quickly() {
    bounded(async {
        let client = stdio_client(&[]).await;
        assert_echo(&client, "before").await;
        let started = Instant::now();
        let error = call(&client, "crash", json!({})).await.unwrap_err();
        assert!(matches!(error, ServiceError::TransportClosed), "{error:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // Later calls fail at once too.
        let next = call(&client, "echo", json!({"text": "x"}))
            .await
            .unwrap_err();
        assert!(
            matches!(
                next,
                ServiceError::TransportClosed | ServiceError::TransportSend(_)
            ),
            "{next:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn garbage_on_stdout_is_ignored_by_the_rmcp_client() {
    bounded(async {
        let client = stdio_client(&[]).await;
        // rmcp skips the unparsable line; the call itself never gets a reply.
        let error = call_with(&client, "garbage", json!({}), Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(error, ServiceError::Timeout { .. }), "{error:?}");
        assert_echo(&client, "after garbage").await;

        // With then_reply the reply follows the garbage and arrives intact.
        let replied = call(&client, "garbage", json!({"then_reply": true}))
            .await
            .unwrap();
        assert_eq!(text(&replied), "garbage sent");
        assert_echo(&client, "still fine").await;
        client.cancel().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn fail_first_two_then_success() {
    bounded(async {
        let client = stdio_client(&["--fail-first", "2"]).await;
        for _ in 0..2 {
            let result = call(&client, "echo", json!({"text": "x"})).await.unwrap();
            assert_eq!(result.is_error, Some(true));
        }
        assert_echo(&client, "third").await;
        client.cancel().await.unwrap();

        let client = stdio_client(&["--fail-first", "1", "--fail-mode", "rpc_error"]).await;
        let error = call(&client, "echo", json!({"text": "x"}))
            .await
            .unwrap_err();
        assert_eq!(rpc_code(&error), -32603);
        assert_echo(&client, "second").await;
        client.cancel().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn crash_on_third_call_is_counted_in_the_calls_file_across_restarts() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let calls = dir.path().join("calls");
        let calls_arg = calls.to_str().unwrap();
        let client = stdio_client(&["--crash-on", "3", "--calls-file", calls_arg]).await;
        assert_echo(&client, "1").await;
        let listed = client.list_all_tools().await.unwrap();
        assert_eq!(listed.len(), 8, "tools/list is not a tools/call");
        assert_echo(&client, "2").await;
        let error = call(&client, "echo", json!({"text": "3"}))
            .await
            .unwrap_err();
        assert!(matches!(error, ServiceError::TransportClosed), "{error:?}");
        assert_eq!(
            tokio::fs::read_to_string(&calls).await.unwrap(),
            "echo\necho\necho\n"
        );

        // A restarted server appends to the same file and counts from 1 again.
        let client = stdio_client(&["--crash-on", "3", "--calls-file", calls_arg]).await;
        assert_echo(&client, "1").await;
        let _ = call(&client, "fail", json!({})).await.unwrap();
        assert_eq!(
            tokio::fs::read_to_string(&calls).await.unwrap(),
            "echo\necho\necho\necho\nfail\n"
        );
        client.cancel().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn write_once_appends_a_line_per_call() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("side-effects");
        let client = stdio_client(&[]).await;
        for line in ["a", "b"] {
            let result = call(
                &client,
                "write_once",
                json!({"path": path.to_str().unwrap(), "line": line}),
            )
            .await
            .unwrap();
            assert_eq!(text(&result), "ok");
        }
        assert_eq!(tokio::fs::read_to_string(&path).await.unwrap(), "a\nb\n");
        client.cancel().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn sleep_sends_progress_notifications() {
    bounded(async {
        let client = stdio_client(&[]).await;
        let started = Instant::now();
        let result = call(&client, "sleep", json!({"ms": 300, "steps": 3}))
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(text(&result), "slept 300 ms");
        // Notifications are handled on their own tasks; give the last one a moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let progress = client.service().progress.lock().unwrap().clone();
        let steps: Vec<f64> = progress.iter().map(|param| param.progress).collect();
        assert_eq!(steps, [1.0, 2.0, 3.0]);
        assert!(progress.iter().all(|param| param.total == Some(3.0)));
        client.cancel().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn streamable_http_echo_and_hang_then_echo() {
    bounded(async {
        let mut server = http_server(&["--name", "http-faults"]).await;
        let client = http_client(&server.url).await;
        assert_eq!(
            client
                .peer_info()
                .unwrap()
                .server_info
                .as_ref()
                .unwrap()
                .name,
            "http-faults"
        );
        assert_echo(&client, "over http").await;
        let error = call_with(&client, "hang", json!({}), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(error, ServiceError::Timeout { .. }), "{error:?}");
        assert_echo(&client, "after hang").await;

        let failed = call(&client, "fail", json!({})).await.unwrap();
        assert_eq!(failed.is_error, Some(true));
        let error = call(&client, "rpc_error", json!({"code": -32001}))
            .await
            .unwrap_err();
        assert_eq!(rpc_code(&error), -32001);
        client.cancel().await.unwrap();
        server.child.kill().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn streamable_http_garbage_event_is_dropped_and_the_call_times_out() {
    bounded(async {
        let mut server = http_server(&[]).await;
        let client = http_client(&server.url).await;
        let error = call_with(&client, "garbage", json!({}), Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(error, ServiceError::Timeout { .. }), "{error:?}");
        assert_echo(&client, "after garbage").await;
        client.cancel().await.unwrap();
        server.child.kill().await.unwrap();
    })
    .await;
}

/// One raw HTTP/1.1 POST to the server's /mcp, read to the end.
async fn raw_post(url: &str, session: Option<&str>, body: &Value) -> String {
    let authority = url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/mcp"))
        .unwrap();
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let body = body.to_string();
    let session = session
        .map(|id| format!("mcp-session-id: {id}\r\nmcp-protocol-version: {PROTOCOL}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\
         content-type: application/json\r\naccept: application/json, text/event-stream\r\n\
         {session}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut response),
    )
    .await
    .expect("response did not end")
    .unwrap();
    String::from_utf8(response).unwrap()
}

#[tokio::test]
async fn streamable_http_garbage_is_an_sse_event_with_non_json_data() {
    bounded(async {
        let mut server = http_server(&[]).await;
        let init = raw_post(
            &server.url,
            None,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": PROTOCOL.as_str(), "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"}}}),
        )
        .await;
        let session = init
            .lines()
            .find_map(|line| line.strip_prefix("mcp-session-id: "))
            .expect("a session id")
            .trim()
            .to_owned();
        raw_post(
            &server.url,
            Some(&session),
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .await;
        let reply = raw_post(
            &server.url,
            Some(&session),
            &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                    "params": {"name": "garbage"}}),
        )
        .await;
        assert!(
            reply.contains(&format!("data: {GARBAGE_LINE}\n")),
            "{reply}"
        );
        assert!(
            !reply.contains("\"id\":2"),
            "the real reply leaked: {reply}"
        );
        server.child.kill().await.unwrap();
    })
    .await;
}

/// Raw JSON-RPC on the child's pipes: what exactly is on stdout, and the exit code.
#[tokio::test]
async fn raw_stdio_shows_the_garbage_line_and_the_crash_exit_code() {
    bounded(async {
        let mut child = tokio::process::Command::new(HALE)
            .arg("fault-mcp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // As the protocol asks, the client waits for the answer to
        // `initialize` before it sends anything else: pipelined, the
        // garbage line (written straight to stdout) can overtake it.
        let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL.as_str(), "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}});
        stdin
            .write_all(format!("{initialize}\n").as_bytes())
            .await
            .unwrap();
        let init: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(init["result"]["protocolVersion"], PROTOCOL.as_str());
        for message in [
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                   "params": {"name": "garbage", "arguments": {"then_reply": true}}}),
        ] {
            stdin
                .write_all(format!("{message}\n").as_bytes())
                .await
                .unwrap();
        }
        assert_eq!(lines.next_line().await.unwrap().unwrap(), GARBAGE_LINE);
        let reply: Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(reply["id"], 2);
        assert_eq!(reply["result"]["content"][0]["text"], "garbage sent");

        let crash = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                           "params": {"name": "crash", "arguments": {"exit_code": 7}}});
        stdin
            .write_all(format!("{crash}\n").as_bytes())
            .await
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(7));
        assert_eq!(
            lines.next_line().await.unwrap(),
            None,
            "no reply before the crash"
        );
    })
    .await;
}

#[tokio::test]
async fn stdin_eof_ends_the_server_promptly_even_with_a_hung_call() {
    bounded(async {
        let mut child = tokio::process::Command::new(HALE)
            .arg("fault-mcp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for message in [
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": PROTOCOL.as_str(), "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"}}}),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "hang"}}),
        ] {
            stdin
                .write_all(format!("{message}\n").as_bytes())
                .await
                .unwrap();
        }
        lines.next_line().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        drop(stdin);
        // rmcp alone would wait 5 s for the hung handler before exiting.
        let status = tokio::time::timeout(Duration::from_secs(2), child.wait())
            .await
            .expect("server still running 2 s after stdin closed")
            .unwrap();
        assert_eq!(status.code(), Some(0));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn exit_after_and_startup_delay() {
    bounded(async {
        let started = Instant::now();
        let mut child = tokio::process::Command::new(HALE)
            .args(["fault-mcp", "--exit-after-ms", "200"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // `Child::wait` closes stdin, which would end the server first.
        let _stdin = child.stdin.take();
        let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(0));
        assert!(started.elapsed() >= Duration::from_millis(200));

        let started = Instant::now();
        let client = stdio_client(&["--startup-delay-ms", "300"]).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_echo(&client, "late start").await;
        client.cancel().await.unwrap();
    })
    .await;
}

#[test]
fn fault_mcp_is_hidden_from_help_but_runs() {
    let help = std::process::Command::new(HALE)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("demo"), "{help}");
    assert!(!help.contains("fault-mcp"), "{help}");

    let own_help = std::process::Command::new(HALE)
        .args(["fault-mcp", "--help"])
        .output()
        .unwrap();
    assert!(own_help.status.success());
    assert!(String::from_utf8_lossy(&own_help.stdout).contains("--fail-first"));
}

#[tokio::test]
async fn streamable_http_crash_ends_the_call_after_the_sse_retry_and_later_calls_fail_fast() {
    bounded(async {
        let mut server = http_server(&[]).await;
        let client = http_client(&server.url).await;
        let started = Instant::now();
        let error = call_with(&client, "crash", json!({}), Duration::from_secs(10))
            .await
            .unwrap_err();
        // The POST's SSE stream drops; the client retries it (the server's
        // `retry: 3000` hint), fails to connect, and closes the request.
        assert!(matches!(error, ServiceError::TransportClosed), "{error:?}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        let status = tokio::time::timeout(Duration::from_secs(5), server.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(1));

        let started = Instant::now();
        let next = call(&client, "echo", json!({"text": "x"}))
            .await
            .unwrap_err();
        assert!(matches!(next, ServiceError::TransportSend(_)), "{next:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    })
    .await;
}
