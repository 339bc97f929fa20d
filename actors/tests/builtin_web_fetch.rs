//! The `web_fetch` tool against loopback servers: bodies, HTTP failures,
//! network failures, size limits and argument checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hale_actors::builtin::{AllowList, WebFetch, WebFetchConfig, WebFetchError};
use hale_actors::{ErrorCode, HintKind, Severity, Status, Tool, ToolOutcome};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A loopback HTTP/1.1 server that answers every request with the same
/// bytes and reports each request head it read. Aborted on drop.
struct Server {
    url: String,
    requests: mpsc::UnboundedReceiver<String>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the server does once it has read a request head.
#[derive(Clone)]
enum Reply {
    /// Write these bytes, then close.
    Bytes(Vec<u8>),
    /// Write nothing and keep the connection open.
    Silence,
}

async fn serve(reply: Reply) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, requests) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let reply = reply.clone();
            let tx = tx.clone();
            tokio::spawn(async move { answer(stream, reply, tx).await });
        }
    });
    Server {
        url,
        requests,
        task,
    }
}

async fn answer(mut stream: TcpStream, reply: Reply, tx: mpsc::UnboundedSender<String>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
    match reply {
        Reply::Bytes(bytes) => {
            // The client may hang up first (for example, once it has read
            // as much as it wants).
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        }
        Reply::Silence => {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }
}

fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut bytes = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        bytes.push_str(&format!("{name}: {value}\r\n"));
    }
    bytes.push_str("\r\n");
    let mut bytes = bytes.into_bytes();
    bytes.extend_from_slice(body);
    Reply::Bytes(bytes)
}

/// A fetcher that may reach the loopback servers of these tests (any port
/// of 127.0.0.1: the address policy refuses loopback by default).
fn fetcher(config: WebFetchConfig) -> WebFetch {
    WebFetch::new(WebFetchConfig {
        allow: AllowList::parse(["127.0.0.1"]).unwrap(),
        ..config
    })
    .unwrap()
}

fn default_fetcher() -> WebFetch {
    fetcher(WebFetchConfig {
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        ..WebFetchConfig::default()
    })
}

async fn fetch(tool: &WebFetch, url: &str) -> ToolOutcome {
    tool.call(json!({ "url": url }), &hale_actors::ToolContext::default())
        .await
}

#[tokio::test]
async fn ok_returns_the_body_and_metadata() {
    let server = serve(response(
        "200 OK",
        &[("Content-Type", "text/plain; charset=utf-8")],
        "héllo".as_bytes(),
    ))
    .await;
    let url = format!("{}/page", server.url);
    let outcome = fetch(&default_fetcher(), &url).await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!(
        outcome.data,
        json!({
            "url": url,
            "status": 200,
            "content_type": "text/plain; charset=utf-8",
            "body": "héllo",
            "bytes": 6,
            "truncated": false,
        })
    );
}

#[tokio::test]
async fn request_carries_the_user_agent_and_extra_headers() {
    let mut server = serve(response("204 No Content", &[], b"")).await;
    let tool = fetcher(WebFetchConfig {
        user_agent: "hale-test/1".into(),
        ..WebFetchConfig::default()
    });
    let outcome = tool
        .call(
            json!({ "url": server.url, "headers": { "X-Probe": "42" } }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(outcome.data["body"], "");
    let head = server.requests.recv().await.unwrap().to_lowercase();
    assert!(head.starts_with("get / http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nuser-agent: hale-test/1\r\n"), "{head}");
    assert!(head.contains("\r\nx-probe: 42\r\n"), "{head}");
}

#[tokio::test]
async fn spec_is_web_fetch_and_idempotent() {
    let tool = default_fetcher();
    assert_eq!(tool.spec().name, "web_fetch");
    assert!(tool.spec().idempotent);
    assert_eq!(tool.spec().schema["required"], json!(["url"]));
}

#[tokio::test]
async fn not_found_is_not_found() {
    let server = serve(response("404 Not Found", &[], b"no such page")).await;
    let outcome = fetch(&default_fetcher(), &server.url).await;
    assert_eq!(outcome.code, Some(ErrorCode::NotFound));
    assert!(!outcome.retryable);
    assert_eq!(outcome.message, "HTTP 404: no such page");
    assert_eq!(outcome.data["http_status"], 404);
    assert_eq!(outcome.data["url"], format!("{}/", server.url));
}

#[tokio::test]
async fn too_many_requests_carries_retry_after() {
    let server = serve(response(
        "429 Too Many Requests",
        &[("Retry-After", "1")],
        b"slow down",
    ))
    .await;
    let outcome = fetch(&default_fetcher(), &server.url).await;
    assert_eq!(outcome.code, Some(ErrorCode::RateLimited));
    assert!(outcome.retryable);
    assert_eq!(outcome.retry_after, Some(Duration::from_secs(1)));
    assert!(outcome.hints.iter().any(|h| h.kind == HintKind::RetryAfter));
}

#[tokio::test]
async fn unavailable_is_service_unavailable() {
    let server = serve(response("503 Service Unavailable", &[], b"")).await;
    let outcome = fetch(&default_fetcher(), &server.url).await;
    assert_eq!(outcome.code, Some(ErrorCode::ServiceUnavailable));
    assert!(outcome.retryable);
    assert_eq!(outcome.message, "HTTP 503");
}

#[tokio::test]
async fn closed_port_is_connection_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}/");
    let outcome = fetch(&default_fetcher(), &url).await;
    assert_eq!(outcome.code, Some(ErrorCode::ConnectionRefused));
    assert!(outcome.retryable);
    assert_eq!(outcome.data["url"], url);
}

#[tokio::test]
async fn silent_server_times_out() {
    let server = serve(Reply::Silence).await;
    let tool = fetcher(WebFetchConfig {
        timeout: Duration::from_millis(300),
        ..WebFetchConfig::default()
    });
    let started = Instant::now();
    let outcome = fetch(&tool, &server.url).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    assert_eq!(outcome.status, Status::Timeout);
    assert_eq!(outcome.code, Some(ErrorCode::Etimedout));
    assert!(outcome.retryable);
}

#[tokio::test]
async fn body_over_the_limit_is_partial() {
    let body = "x".repeat(50_000);
    let server = serve(response("200 OK", &[], body.as_bytes())).await;
    let tool = fetcher(WebFetchConfig {
        max_bytes: 1000,
        ..WebFetchConfig::default()
    });
    let outcome = fetch(&tool, &server.url).await;
    assert_eq!(outcome.status, Status::Partial, "{outcome:?}");
    assert!(!outcome.is_failure());
    assert!(outcome.message.contains("1000"), "{}", outcome.message);
    assert_eq!(outcome.data["truncated"], true);
    assert_eq!(outcome.data["bytes"], 1000);
    assert_eq!(outcome.data["body"], "x".repeat(1000));
}

#[tokio::test]
async fn body_at_the_limit_is_complete() {
    let server = serve(response("200 OK", &[], b"abcdef")).await;
    let tool = fetcher(WebFetchConfig {
        max_bytes: 6,
        ..WebFetchConfig::default()
    });
    let outcome = fetch(&tool, &server.url).await;
    assert_eq!(outcome.status, Status::Success);
    assert_eq!(outcome.data["body"], "abcdef");
    assert_eq!(outcome.data["truncated"], false);
}

#[tokio::test]
async fn body_cut_by_the_server_is_transport_closed() {
    let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
    reply.extend_from_slice(&[b'y'; 100]);
    let server = serve(Reply::Bytes(reply)).await;
    let outcome = fetch(&default_fetcher(), &server.url).await;
    assert_eq!(
        outcome.code,
        Some(ErrorCode::TransportClosed),
        "{outcome:?}"
    );
    assert!(outcome.retryable);
    assert_eq!(outcome.data["bytes_received"], 100);
}

#[tokio::test]
async fn bad_urls_and_arguments_are_invalid_input() {
    let tool = default_fetcher();
    let cases: [(Value, &str); 7] = [
        (json!({ "url": "ftp://example.com/file" }), "http or https"),
        (json!({ "url": "not a url" }), "`url`"),
        (json!({ "url": "http://" }), "`url`"),
        (json!({ "url": 7 }), "`url`"),
        (json!({}), "`url`"),
        (
            json!({ "url": "http://127.0.0.1/", "headers": { "X": 1 } }),
            "`headers.X`",
        ),
        (
            json!({ "url": "http://127.0.0.1/", "method": "POST" }),
            "`method`",
        ),
    ];
    for (args, expected) in cases {
        let outcome = tool
            .call(args.clone(), &hale_actors::ToolContext::default())
            .await;
        assert_eq!(outcome.code, Some(ErrorCode::InvalidInput), "{args}");
        assert!(!outcome.retryable);
        assert!(
            outcome.message.contains(expected),
            "{args}: {}",
            outcome.message
        );
    }
}

#[test]
fn zero_limits_are_rejected() {
    let err = WebFetch::new(WebFetchConfig {
        max_bytes: 0,
        ..WebFetchConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, WebFetchError::ZeroLimit("max_bytes")));
}

/// A chain of loopback servers, each redirecting to the next; the last
/// answers 200. Returns the servers, first first.
async fn redirect_chain(redirects: usize) -> Vec<Server> {
    let mut chain = vec![serve(response("200 OK", &[], b"end of the chain")).await];
    for _ in 0..redirects {
        let next = format!("{}/", chain.last().unwrap().url);
        chain.push(serve(response("302 Found", &[("Location", &next)], b"")).await);
    }
    chain.reverse();
    chain
}

#[tokio::test]
async fn five_redirects_are_followed_and_a_sixth_is_refused() {
    let tool = default_fetcher();
    let five = redirect_chain(5).await;
    let outcome = fetch(&tool, &five[0].url).await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!(outcome.data["body"], "end of the chain");

    let mut six = redirect_chain(6).await;
    let outcome = fetch(&tool, &six[0].url).await;
    assert_eq!(outcome.code, Some(ErrorCode::InvalidInput), "{outcome:?}");
    assert!(!outcome.retryable);
    assert!(
        outcome.message.contains("more than 5 times"),
        "{}",
        outcome.message
    );
    // The last server was never asked.
    assert!(six.last_mut().unwrap().requests.try_recv().is_err());
}

#[tokio::test]
async fn loopback_is_refused_by_default_with_a_typed_outcome_and_a_hint() {
    let mut server = serve(response("200 OK", &[], b"secret")).await;
    let tool = WebFetch::new(WebFetchConfig::default()).unwrap();
    let url = format!("{}/metrics", server.url);
    let outcome = fetch(&tool, &url).await;
    assert_eq!(
        outcome.code,
        Some(ErrorCode::PermissionDenied),
        "{outcome:?}"
    );
    // Severity error, not the catalog's critical: a typed outcome for the
    // model, not an escalation.
    assert_eq!(outcome.severity, Severity::Error);
    assert!(!outcome.retryable && !outcome.recoverable);
    assert_eq!(outcome.data["range"], "loopback");
    assert_eq!(outcome.data["url"], url);
    let entry = server.url.trim_start_matches("http://").to_owned();
    assert_eq!(outcome.hints[0].suggestions, [entry]);
    assert!(outcome.hints[0].message.contains("[tools] web_fetch_allow"));
    assert!(
        server.requests.try_recv().is_err(),
        "the server was reached"
    );
}

#[tokio::test]
async fn a_forbidden_value_in_a_header_is_refused_without_echoing_it() {
    let mut server = serve(response("200 OK", &[], b"ok")).await;
    let token = "0123456789abcdef0123456789abcdef";
    let tool = fetcher(WebFetchConfig {
        forbidden_values: [token].into_iter().collect(),
        ..WebFetchConfig::default()
    });
    assert_eq!(
        format!("{:?}", tool.config().forbidden_values),
        "ForbiddenValues(1 redacted)"
    );
    let outcome = tool
        .call(
            json!({ "url": server.url, "headers": { "X-Api": format!("Bearer {token}") } }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_eq!(
        outcome.code,
        Some(ErrorCode::PermissionDenied),
        "{outcome:?}"
    );
    assert_eq!(outcome.severity, Severity::Error);
    assert!(!serde_json::to_string(&outcome).unwrap().contains(token));
    assert!(server.requests.try_recv().is_err());
    let outcome = fetch(&tool, &server.url).await;
    assert!(outcome.is_success(), "{outcome:?}");
}

/// The breaker is per site (`scheme://host:port`): five refused
/// connections to one dead site open its breaker only, and a fetch from
/// another site (here another port of the same address) still goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_site_opens_its_own_breaker_and_not_the_others() {
    use hale_actors::dispatch::{
        DispatchConfig, Dispatcher, Endpoints, RegistryRouter, Router, state_name,
    };
    use hale_actors::recovery::RetryConfig;
    use std::sync::Arc;

    let dead_port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let live = serve(response("200 OK", &[], b"alive")).await;
    let registry = Arc::new(hale_actors::ToolRegistry::new());
    registry.register(Arc::new(default_fetcher())).unwrap();
    let routers: Vec<Arc<dyn Router>> = vec![Arc::new(RegistryRouter::new(registry))];
    let config = DispatchConfig {
        retry: RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        },
        breaker_failures: 5,
        breaker_cool_down: Duration::from_secs(60),
        ..DispatchConfig::default()
    };
    let dispatcher = Dispatcher::new(
        routers,
        Arc::new(Endpoints::new(config).unwrap()),
        Arc::new(hale_actors::MemorySink::new()),
    );
    let call = |url: String| {
        let dispatcher = &dispatcher;
        async move {
            dispatcher
                .call(
                    "web_fetch",
                    json!({ "url": url }),
                    &hale_actors::ToolContext::default(),
                )
                .await
        }
    };
    let dead = format!("http://127.0.0.1:{dead_port}/x");
    for _ in 0..5 {
        let refused = call(dead.clone()).await;
        assert_eq!(
            refused.code,
            Some(ErrorCode::ConnectionRefused),
            "{refused:?}"
        );
    }
    // The dead site's breaker is open: the sixth call is not even made.
    let short_circuited = call(dead.clone()).await;
    assert!(
        short_circuited.message.contains("circuit breaker"),
        "{short_circuited:?}"
    );
    // Another site still goes out and succeeds.
    let fetched = call(format!("{}/page", live.url)).await;
    assert!(fetched.is_success(), "{fetched:?}");
    assert_eq!(fetched.data["body"], "alive");
    let state = |endpoint: &str| {
        dispatcher
            .endpoints()
            .find(endpoint)
            .map(|h| state_name(h.breaker_state()))
    };
    assert_eq!(
        state(&format!("web_fetch/http://127.0.0.1:{dead_port}")),
        Some("open")
    );
    assert_eq!(state(&format!("web_fetch/{}", live.url)), Some("closed"));
}

#[test]
fn a_site_endpoint_spells_out_the_default_port() {
    use hale_actors::builtin::site_endpoint;
    let of = |url: &str| site_endpoint("web_fetch", &reqwest::Url::parse(url).unwrap());
    assert_eq!(
        of("https://Example.COM/a?b"),
        Some("web_fetch/https://example.com:443".into())
    );
    assert_eq!(
        of("https://example.com:443/other"),
        of("https://example.com/")
    );
    assert_eq!(
        of("http://example.com/"),
        Some("web_fetch/http://example.com:80".into())
    );
    assert_eq!(
        of("http://[::1]:8080/"),
        Some("web_fetch/http://[::1]:8080".into())
    );
    assert_ne!(of("http://a.example/"), of("http://b.example/"));
}
