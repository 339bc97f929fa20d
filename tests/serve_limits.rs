//! The HTTP server's limits over real sockets: a header that never
//! completes and an idle connection are closed, connections beyond the
//! cap wait until one closes, event streams beyond theirs are refused
//! with 503 and `Retry-After`, and a burst of `/metrics` scrapes reads
//! the store once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use hale::api::{ApiState, router};
use hale::conn_limits::{ConnLimits, ConnStats, LimitedListener, serve};
use hale::runtime::{Runtime, RuntimeConfig};
use reqwest::{Client, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// The most any awaited condition may take before the test fails.
const WAIT: Duration = Duration::from_secs(20);

struct Server {
    addr: std::net::SocketAddr,
    base: String,
    stats: Arc<ConnStats>,
    runtime: Runtime,
    _dir: tempfile::TempDir,
}

async fn start(tweak: impl FnOnce(&mut RuntimeConfig)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RuntimeConfig::new(dir.path().join("data"));
    config.builtin.exec.sandbox.helper = Some(env!("CARGO_BIN_EXE_hale").into());
    tweak(&mut config);
    let limits = ConnLimits::from(&config.serve);
    let runtime = Runtime::start(config).await.unwrap();
    let (app, _doc) = router(ApiState {
        runtime: runtime.clone(),
        token: TOKEN.into(),
        allow_chaos: false,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = LimitedListener::new(listener, limits);
    let stats = listener.stats();
    tokio::spawn(async move { serve(listener, app).await });
    Server {
        addr,
        base: format!("http://{addr}"),
        stats,
        runtime,
        _dir: dir,
    }
}

/// Reads one HTTP/1.1 response with a `content-length` body; its status.
async fn read_response(stream: &mut TcpStream) -> u16 {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if bytes.len() >= end + 4 + length {
                return head[9..12].parse().unwrap();
            }
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("no response in time")
            .unwrap();
        assert!(n > 0, "closed before a whole response");
        bytes.extend_from_slice(&chunk[..n]);
    }
}

async fn healthz(stream: &mut TcpStream) -> u16 {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: hale\r\n\r\n")
        .await
        .unwrap();
    read_response(stream).await
}

/// Waits for the server to close `stream` (EOF or a reset).
async fn closed_by_server(stream: &mut TcpStream) {
    let mut chunk = [0u8; 256];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("the server kept the connection open")
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_header_is_disconnected_after_the_header_timeout() {
    let server = start(|c| {
        c.serve.header_read_timeout = Duration::from_millis(300);
        c.serve.idle_timeout = Duration::from_secs(600);
    })
    .await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: ha")
        .await
        .unwrap();
    // Trickling more of it does not extend the deadline.
    slow.write_all(b"le\r\n").await.unwrap();
    closed_by_server(&mut slow).await;
    assert_eq!(server.stats.header_timeouts(), 1);
    assert_eq!(server.stats.idle_timeouts(), 0);
    // Others are served as before.
    let mut fine = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(healthz(&mut fine).await, 200);
    assert_eq!(healthz(&mut fine).await, 200, "keep-alive still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_but_a_quiet_stream_is_not() {
    let server = start(|c| {
        c.serve.header_read_timeout = Duration::from_secs(600);
        c.serve.idle_timeout = Duration::from_millis(300);
    })
    .await;
    // A stream in flight writes nothing for longer than idle_timeout.
    let client = Client::new();
    let mut stream = client
        .get(format!("{}/v1/events", server.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(healthz(&mut idle).await, 200);
    closed_by_server(&mut idle).await;
    assert_eq!(server.stats.idle_timeouts(), 1);
    // The idle connection's close proves idle_timeout passed: the stream,
    // opened before it, still delivers.
    server.runtime.create_session("default").await.unwrap();
    let chunk = tokio::time::timeout(WAIT, stream.chunk())
        .await
        .expect("the stream was cut")
        .unwrap();
    assert!(chunk.is_some(), "the stream ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_coming_is_abandoned_after_the_idle_timeout() {
    let server = start(|c| {
        c.serve.header_read_timeout = Duration::from_secs(600);
        c.serve.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(
            format!(
                "POST /v1/sessions HTTP/1.1\r\nhost: hale\r\nauthorization: Bearer {TOKEN}\r\n\
                 content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"agent\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(read_response(&mut stalled).await, 400);
    closed_by_server(&mut stalled).await;
    assert!(
        server.runtime.sessions().list().await.unwrap().is_empty(),
        "a session was made of half a body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let server = start(|c| c.serve.max_connections = 2).await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(healthz(&mut first).await, 200);
    assert_eq!(healthz(&mut second).await, 200);
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: hale\r\n\r\n")
        .await
        .unwrap();
    // A round trip on each served connection after the third connected:
    // had it been accepted, its answer would have been written by now.
    assert_eq!(healthz(&mut first).await, 200);
    assert_eq!(healthz(&mut second).await, 200);
    assert_eq!((server.stats.open(), server.stats.accepted()), (2, 2));
    let mut peek = [0u8; 1];
    assert!(
        matches!(third.try_read(&mut peek), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the connection beyond the cap was answered"
    );
    drop(first);
    assert_eq!(read_response(&mut third).await, 200);
    assert_eq!(server.stats.accepted(), 3);
    assert_eq!(healthz(&mut second).await, 200);
    assert!(server.stats.open() <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_beyond_the_cap_get_503_with_retry_after() {
    let server = start(|c| c.serve.max_event_streams = 2).await;
    let client = Client::new();
    let open = || {
        client
            .get(format!("{}/v1/events", server.base))
            .bearer_auth(TOKEN)
            .send()
    };
    let first = open().await.unwrap();
    let second = open().await.unwrap();
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let refused = open().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "5");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("hale_event_streams 2"), "{metrics}");
    // A client that goes frees its slot, with no event needed to notice.
    drop(first);
    let again = eventually("a slot freed by a closed stream", || async {
        let response = open().await.unwrap();
        (response.status() == StatusCode::OK).then_some(response)
    })
    .await;
    drop((second, again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_scrapes_reads_the_store_once() {
    let server = start(|c| c.serve.metrics_refresh = Duration::from_secs(3600)).await;
    for _ in 0..3 {
        server.runtime.create_session("default").await.unwrap();
    }
    let client = Client::new();
    let scrape = || {
        let client = client.clone();
        let url = format!("{}/metrics", server.base);
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..100 {
        burst.spawn(scrape());
    }
    while let Some(text) = burst.join_next().await {
        let text = text.unwrap();
        assert!(text.contains("\nhale_sessions 3\n"), "{text}");
    }
    let text = scrape().await;
    assert!(
        text.contains("\nhale_metrics_store_reads_total 1\n"),
        "101 scrapes, one store read expected: {text}"
    );
    // Sessions created since are shown after the refresh, not before.
    server.runtime.create_session("default").await.unwrap();
    assert!(scrape().await.contains("\nhale_sessions 3\n"));
}
