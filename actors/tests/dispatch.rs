//! The dispatcher carrying the recovery policy out against real tools and
//! real loopback peers: Retry-After honoured, non-idempotent effects never
//! repeated, retry storms bounded by the shared budget, oversized reads
//! chunked, fallbacks taken.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router as HttpRouter;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use hale_actors::builtin::{
    AllowList, Exec, ExecConfig, ReadFile, ReadFileConfig, WebFetch, WebFetchConfig, Workspace,
};
use hale_actors::dispatch::{DispatchConfig, Dispatcher, Endpoints, RegistryRouter, Router};
use hale_actors::recovery::{FallbackChain, RetryConfig};
use hale_actors::{
    BoxFuture, ErrorCode, EventKind, MemorySink, Tool, ToolContext, ToolOutcome, ToolRegistry,
    ToolSpec,
};
use serde_json::{Value, json};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `web_fetch` settings that may reach the loopback servers of these
/// tests (the address policy refuses loopback by default).
fn loopback_fetch() -> WebFetchConfig {
    WebFetchConfig {
        allow: AllowList::parse(["127.0.0.1"]).unwrap(),
        ..WebFetchConfig::default()
    }
}

/// Serves `app` on a free loopback port; returns the base URL.
async fn serve(app: HttpRouter) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn dispatcher(
    tools: Vec<Arc<dyn Tool>>,
    config: DispatchConfig,
    fallbacks: Vec<FallbackChain>,
) -> (Dispatcher, Arc<MemorySink>) {
    let registry = Arc::new(ToolRegistry::new());
    for tool in tools {
        registry.register(tool).unwrap();
    }
    let mut router = RegistryRouter::new(registry);
    for chain in fallbacks {
        router = router.with_fallback(chain);
    }
    let sink = Arc::new(MemorySink::new());
    let routers: Vec<Arc<dyn Router>> = vec![Arc::new(router)];
    let dispatcher = Dispatcher::new(
        routers,
        Arc::new(Endpoints::new(config).unwrap()),
        sink.clone(),
    );
    (dispatcher, sink)
}

fn kinds(sink: &MemorySink, kind: EventKind) -> usize {
    sink.events().iter().filter(|e| e.kind == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_fetch_waits_out_retry_after_then_succeeds() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let url = serve(HttpRouter::new().route(
        "/",
        get(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    let mut headers = HeaderMap::new();
                    headers.insert("retry-after", "1".parse().unwrap());
                    (StatusCode::TOO_MANY_REQUESTS, headers, "slow down")
                } else {
                    (StatusCode::OK, HeaderMap::new(), "hello")
                }
            }
        }),
    ))
    .await;
    let fetch: Arc<dyn Tool> = Arc::new(WebFetch::new(loopback_fetch()).unwrap());
    let config = DispatchConfig {
        retry: RetryConfig {
            // The computed backoff would be 10 ms: only Retry-After explains
            // a wait of a second.
            base: ms(10),
            ..RetryConfig::default()
        },
        ..DispatchConfig::default()
    };
    let (dispatcher, sink) = dispatcher(vec![fetch], config, vec![]);

    let started = Instant::now();
    let outcome = dispatcher
        .call("web_fetch", json!({ "url": url }), &ToolContext::default())
        .await;
    let took = started.elapsed();

    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(outcome.data["body"], "hello");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // Retry-After: 1 s, stretched by at most the 20 % jitter, plus the
    // time the two requests take.
    assert!(
        took >= ms(1000),
        "retried after {took:?}, before Retry-After"
    );
    assert!(took < ms(2500), "retried after {took:?}");
    let retries: Vec<_> = sink
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::Retry)
        .collect();
    assert_eq!(retries.len(), 1, "{retries:?}");
    let delay = retries[0].data["delay_ms"].as_u64().unwrap();
    assert!((1000..=1200).contains(&delay), "delay {delay} ms");
    assert_eq!(retries[0].data["after"], "RATE_LIMITED");
    println!(
        "429 + Retry-After: 1 -> retried once after {delay} ms, success in {} ms",
        took.as_millis()
    );
}

fn exec_in(dir: &std::path::Path) -> Arc<dyn Tool> {
    // The sandbox wrapper lives in the hale binary, out of this crate's
    // reach; these tests are about dispatch, so the sandbox is off.
    let mut config = ExecConfig::new(dir);
    config.sandbox = hale_actors::builtin::SandboxConfig::off();
    Arc::new(Exec::new(config).unwrap())
}

fn runs(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("runs"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_that_failed_after_starting_runs_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = DispatchConfig {
        retry: RetryConfig {
            base: ms(5),
            ..RetryConfig::default()
        },
        ..DispatchConfig::default()
    };
    let (dispatcher, sink) = dispatcher(vec![exec_in(dir.path())], config, vec![]);
    let ctx = ToolContext::default();

    // A command whose stderr says "connection refused": the catalog calls
    // that retryable, and before-effect for a direct peer; but the command
    // ran and wrote its side effect.
    let refused = dispatcher
        .call(
            "exec",
            json!({ "command": "echo run >> runs; echo 'curl: (7) Failed to connect: Connection refused' >&2; exit 7" }),
            &ctx,
        )
        .await;
    assert_eq!(
        refused.code,
        Some(ErrorCode::ConnectionRefused),
        "{refused:?}"
    );
    assert!(refused.retryable, "the caller may still decide to retry");
    assert_eq!(runs(dir.path()), 1, "a started exec was re-run");

    // Killed by its timeout after starting.
    let timed_out = dispatcher
        .call(
            "exec",
            json!({ "command": "echo run >> runs; sleep 5", "timeout_ms": 300 }),
            &ctx,
        )
        .await;
    assert!(timed_out.is_timeout(), "{timed_out:?}");
    assert_eq!(runs(dir.path()), 2, "a timed-out exec was re-run");

    // A plain non-zero exit.
    let failed = dispatcher
        .call(
            "exec",
            json!({ "command": "echo run >> runs; exit 1" }),
            &ctx,
        )
        .await;
    assert!(failed.is_failure());
    assert_eq!(runs(dir.path()), 3);
    assert_eq!(kinds(&sink, EventKind::Retry), 0);

    // None of the command failures counted against the exec endpoint.
    let health = dispatcher.endpoints().find("exec").unwrap();
    assert_eq!(
        hale_actors::dispatch::state_name(health.breaker_state()),
        "closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_refused_by_an_open_breaker_is_retried_and_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = DispatchConfig {
        breaker_cool_down: ms(300),
        retry: RetryConfig {
            base: ms(5),
            ..RetryConfig::default()
        },
        ..DispatchConfig::default()
    };
    let (dispatcher, sink) = dispatcher(vec![exec_in(dir.path())], config, vec![]);
    dispatcher.endpoints().get("exec").force_open();

    let started = Instant::now();
    let outcome = dispatcher
        .call(
            "exec",
            json!({ "command": "echo run >> runs" }),
            &ToolContext::default(),
        )
        .await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(runs(dir.path()), 1);
    assert_eq!(kinds(&sink, EventKind::Retry), 1);
    // It waited for the breaker's cool-down, not the 5 ms backoff.
    assert!(started.elapsed() >= ms(250), "{:?}", started.elapsed());
    let history = outcome.extra["attempts"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["code"], "MCP_SERVER_UNREACHABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_callers_sends_no_more_retries_than_the_budget() {
    const CALLERS: usize = 200;
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let url = serve(HttpRouter::new().route(
        "/",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { (StatusCode::SERVICE_UNAVAILABLE, "down") }
        }),
    ))
    .await;
    let fetch: Arc<dyn Tool> = Arc::new(WebFetch::new(loopback_fetch()).unwrap());
    let (ttl, floor, ratio) = (Duration::from_secs(30), 1u32, 0.1);
    let config = DispatchConfig {
        retry: RetryConfig {
            max_attempts: 4,
            base: ms(5),
            max_delay: ms(20),
            ..RetryConfig::default()
        },
        attempts_per_call: 4,
        // The breaker would also protect the endpoint; keep it out of the
        // way so the budget alone is measured.
        breaker_failures: 1_000_000,
        budget_ttl: ttl,
        budget_min_per_sec: floor,
        budget_retry_ratio: ratio,
        max_in_flight: CALLERS,
        ..DispatchConfig::default()
    };
    let (dispatcher, sink) = dispatcher(vec![fetch], config, vec![]);
    let dispatcher = Arc::new(dispatcher);

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let dispatcher = dispatcher.clone();
        let url = url.clone();
        calls.spawn(async move {
            dispatcher
                .call("web_fetch", json!({ "url": url }), &ToolContext::default())
                .await
        });
    }
    let mut spent = 0;
    while let Some(outcome) = calls.join_next().await {
        let outcome = outcome.unwrap();
        assert_eq!(outcome.code, Some(ErrorCode::ServiceUnavailable));
        assert!(outcome.retryable, "a shed retry is still retryable");
        if outcome.extra.get("retry_budget") == Some(&json!("spent")) {
            spent += 1;
        }
    }
    let sent = hits.load(Ordering::SeqCst);
    let retries_sent = sent - CALLERS;
    // The floor over the window, plus the ratio of the original calls.
    let allowance = (f64::from(floor) * ttl.as_secs_f64() + ratio * CALLERS as f64).ceil() as usize;
    let unbudgeted = CALLERS * 3;
    println!(
        "storm: {CALLERS} callers, {sent} requests at the server ({retries_sent} retries; \
         allowance {allowance}; without a budget {unbudgeted}); {spent} calls handed back \
         with the budget spent"
    );
    assert!(sent >= CALLERS, "every original call reaches the server");
    assert!(
        retries_sent <= allowance,
        "{retries_sent} retries sent, budget allows {allowance}"
    );
    assert!(
        spent >= CALLERS - allowance,
        "{spent} calls saw the budget spent"
    );
    assert!(kinds(&sink, EventKind::Shed) >= CALLERS - allowance);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_file_is_read_completely_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    // Multi-byte characters, so chunk edges fall inside characters.
    let text: String = (0..6000)
        .map(|i| ['a', 'é', '€', '𝄞', '\n'][i % 5])
        .collect();
    std::fs::write(dir.path().join("big.txt"), &text).unwrap();
    let workspace = Workspace::new(dir.path()).unwrap();
    let read: Arc<dyn Tool> =
        Arc::new(ReadFile::new(workspace, ReadFileConfig { max_bytes: 4096 }));
    let config = DispatchConfig {
        chunk_bytes: 1000,
        chunk_max_total_bytes: 1 << 20,
        ..DispatchConfig::default()
    };
    let (dispatcher, sink) = dispatcher(vec![read.clone()], config, vec![]);

    // Directly, the tool refuses.
    let direct = read
        .call(
            json!({ "path": "big.txt" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert_eq!(direct.code, Some(ErrorCode::FileTooLarge));

    let outcome = dispatcher
        .call(
            "read_file",
            json!({ "path": "big.txt" }),
            &ToolContext::default(),
        )
        .await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(outcome.data["content"].as_str().unwrap(), text);
    assert_eq!(outcome.data["total_bytes"], text.len());
    let chunks = outcome.data["chunks"].as_u64().unwrap();
    assert!(
        chunks >= (text.len() as u64).div_ceil(1000),
        "{chunks} chunks"
    );
    assert_eq!(kinds(&sink, EventKind::Adjust), 1);

    // Past the chunked-read limit the result is partial, not a failure.
    let config = DispatchConfig {
        chunk_bytes: 1000,
        chunk_max_total_bytes: 5000,
        ..DispatchConfig::default()
    };
    let (limited, _) = dispatcher_for(read, config);
    let partial = limited
        .call(
            "read_file",
            json!({ "path": "big.txt" }),
            &ToolContext::default(),
        )
        .await;
    assert_eq!(partial.status, hale_actors::Status::Partial, "{partial:?}");
    let got = partial.data["content"].as_str().unwrap();
    assert!(text.starts_with(got) && got.len() >= 4997, "{}", got.len());
}

fn dispatcher_for(tool: Arc<dyn Tool>, config: DispatchConfig) -> (Dispatcher, Arc<MemorySink>) {
    dispatcher(vec![tool], config, vec![])
}

/// A tool that fails every call with `code`, counting calls.
struct Failing {
    spec: ToolSpec,
    code: ErrorCode,
    calls: AtomicUsize,
}

impl Failing {
    fn new(name: &str, code: ErrorCode, idempotent: bool) -> Arc<Self> {
        Arc::new(Self {
            spec: ToolSpec::new(name, "fails", json!({ "type": "object" }))
                .with_idempotent(idempotent),
            code,
            calls: AtomicUsize::new(0),
        })
    }
}

impl Tool for Failing {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }
    fn call<'a>(&'a self, _args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let outcome = ToolOutcome::from_code(self.code.clone(), "nope");
        Box::pin(async move { outcome })
    }
}

/// A tool that succeeds, counting calls.
struct Working {
    spec: ToolSpec,
    calls: AtomicUsize,
}

impl Tool for Working {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }
    fn call<'a>(&'a self, args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { ToolOutcome::success(args) })
    }
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_and_the_fallback_serves_within_the_same_call() {
    let primary = Failing::new("primary", ErrorCode::TransportClosed, true);
    let backup = Arc::new(Working {
        spec: ToolSpec::new("backup", "works", json!({ "type": "object" })).with_idempotent(true),
        calls: AtomicUsize::new(0),
    });
    let config = DispatchConfig {
        breaker_failures: 2,
        breaker_cool_down: Duration::from_secs(5),
        retry: RetryConfig {
            max_attempts: 2,
            base: ms(10),
            ..RetryConfig::default()
        },
        ..DispatchConfig::default()
    };
    let (dispatcher, sink) = dispatcher(
        vec![primary.clone(), backup.clone()],
        config,
        vec![FallbackChain::new(["primary", "backup"]).unwrap()],
    );
    let ctx = ToolContext::default();

    // First call: two failures on the primary (the retry included) open
    // its breaker, and the same call is served by the backup.
    let first = dispatcher.call("primary", json!({ "n": 1 }), &ctx).await;
    assert!(first.is_success(), "{first:?}");
    assert_eq!(first.data["n"], 1);
    assert_eq!(primary.calls.load(Ordering::SeqCst), 2);
    assert_eq!(kinds(&sink, EventKind::Breaker), 1);

    // While it is open, calls go straight to the backup without touching
    // the primary.
    let second = dispatcher.call("primary", json!({ "n": 2 }), &ctx).await;
    assert!(second.is_success());
    assert_eq!(primary.calls.load(Ordering::SeqCst), 2);
    assert_eq!(backup.calls.load(Ordering::SeqCst), 2);

    // After the cool-down one probe goes to the primary; it fails again,
    // so the breaker re-opens and the backup serves.
    tokio::time::advance(Duration::from_secs(6)).await;
    let third = dispatcher.call("primary", json!({ "n": 3 }), &ctx).await;
    assert!(third.is_success());
    assert_eq!(primary.calls.load(Ordering::SeqCst), 3);
    let transitions: Vec<String> = sink
        .events()
        .iter()
        .filter(|e| e.kind == EventKind::Breaker)
        .map(|e| format!("{}->{}", e.data["from"], e.data["to"]).replace('"', ""))
        .collect();
    assert_eq!(
        transitions,
        ["closed->open", "open->half_open", "half_open->open"]
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_are_bounded_per_call_with_the_history_returned() {
    let flaky = Failing::new("flaky", ErrorCode::ServiceUnavailable, true);
    let config = DispatchConfig {
        attempts_per_call: 3,
        retry: RetryConfig {
            max_attempts: 10,
            base: ms(10),
            ..RetryConfig::default()
        },
        ..DispatchConfig::default()
    };
    let (dispatcher, _) = dispatcher(vec![flaky.clone()], config, vec![]);
    let outcome = dispatcher
        .call("flaky", json!({}), &ToolContext::default())
        .await;
    assert_eq!(
        outcome.code,
        Some(ErrorCode::BudgetExhausted),
        "{outcome:?}"
    );
    assert_eq!(outcome.data["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn unknown_tool_names_come_back_with_the_closest_first() {
    let (dispatcher, _) = dispatcher(
        vec![Failing::new("read_file", ErrorCode::Internal, true)],
        DispatchConfig::default(),
        vec![],
    );
    let outcome = dispatcher
        .call("raed_file", json!({}), &ToolContext::default())
        .await;
    assert_eq!(outcome.code, Some(ErrorCode::NotFound));
    assert_eq!(outcome.hints[0].suggestions[0], "read_file");
}

#[test]
fn invalid_dispatch_settings_are_refused_with_the_field() {
    let err = Endpoints::new(DispatchConfig {
        attempts_per_call: 0,
        ..DispatchConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("attempts_per_call"), "{err}");
    let err = Endpoints::new(DispatchConfig {
        chunk_bytes: 0,
        ..DispatchConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().starts_with("chunk"), "{err}");
}

/// A tool that never answers.
struct Hanging {
    spec: ToolSpec,
}

impl Tool for Hanging {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }
    fn call<'a>(&'a self, _args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_without_its_own_timeout_is_cut_off_by_the_backstop() {
    let hang: Arc<dyn Tool> = Arc::new(Hanging {
        spec: ToolSpec::new("hang", "never answers", json!({ "type": "object" })),
    });
    let config = DispatchConfig {
        attempt_timeout: ms(300),
        ..DispatchConfig::default()
    };
    let (dispatcher, _) = dispatcher(vec![hang], config, vec![]);
    let started = Instant::now();
    // Bounded, so a broken backstop fails the test instead of hanging it.
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        dispatcher.call("hang", json!({}), &ToolContext::default()),
    )
    .await
    .expect("the backstop never cut the hung attempt off");
    let took = started.elapsed();
    assert!(outcome.is_timeout(), "{outcome:?}");
    // The deadline, plus at most one watchdog tick (10 ms for 300 ms) and
    // scheduling slack.
    assert!(took >= ms(300) && took < ms(1000), "{took:?}");
}

/// `Endpoints::with_breaker` (hale.toml's `[mcp.breaker]`): one endpoint
/// trips after its own threshold while another keeps the shared one.
#[tokio::test(start_paused = true)]
async fn an_endpoint_with_its_own_breaker_trips_at_its_own_threshold() {
    let strict = Failing::new("strict", ErrorCode::TransportClosed, true);
    let lenient = Failing::new("lenient", ErrorCode::TransportClosed, true);
    let registry = Arc::new(ToolRegistry::new());
    registry.register(strict.clone()).unwrap();
    registry.register(lenient.clone()).unwrap();
    let config = DispatchConfig {
        retry: RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        },
        breaker_failures: 5,
        ..DispatchConfig::default()
    };
    let endpoints = Endpoints::new(config)
        .unwrap()
        .with_breaker("strict", 1, Duration::from_secs(60))
        .unwrap();
    assert!(
        Endpoints::new(config)
            .unwrap()
            .with_breaker("x", 0, Duration::from_secs(1))
            .is_err()
    );
    let routers: Vec<Arc<dyn Router>> = vec![Arc::new(RegistryRouter::new(registry))];
    let dispatcher = Dispatcher::new(routers, Arc::new(endpoints), Arc::new(MemorySink::new()));
    for name in ["strict", "lenient"] {
        let outcome = dispatcher
            .call(name, json!({}), &ToolContext::default())
            .await;
        assert!(outcome.is_failure());
    }
    let state = |name: &str| {
        hale_actors::dispatch::state_name(
            dispatcher.endpoints().find(name).unwrap().breaker_state(),
        )
    };
    assert_eq!(state("strict"), "open");
    assert_eq!(state("lenient"), "closed");
}

/// Endpoints are created per site for `web_fetch`, so the book forgets
/// the idle, healthy ones once it is large; one with a failure counted or
/// one in use is kept.
#[tokio::test]
async fn idle_healthy_endpoints_are_forgotten_when_the_book_is_large() {
    use hale_actors::dispatch::ENDPOINTS_SWEEP_AT;
    let endpoints = Endpoints::new(DispatchConfig::default()).unwrap();
    let held = endpoints.get("held");
    endpoints.get("tripped").force_open();
    for i in 0..ENDPOINTS_SWEEP_AT + 10 {
        endpoints.get(&format!("site-{i}"));
    }
    assert!(
        endpoints.len() < 100,
        "{} endpoints kept after a sweep",
        endpoints.len()
    );
    assert!(endpoints.find("tripped").is_some());
    assert!(endpoints.find("held").is_some());
    assert!(endpoints.find("site-0").is_none());
    drop(held);
}

/// Answers 429 with `Retry-After: 1 s` on its first call and succeeds
/// after; records when every call started (tokio's clock).
struct Limited {
    spec: ToolSpec,
    starts: std::sync::Mutex<Vec<tokio::time::Instant>>,
}

impl Tool for Limited {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }
    fn call<'a>(&'a self, args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        let mut starts = self.starts.lock().unwrap();
        starts.push(tokio::time::Instant::now());
        let outcome = if starts.len() == 1 {
            ToolOutcome::from_code(ErrorCode::RateLimited, "429 slow down")
                .with_retry_after(Duration::from_secs(1))
        } else {
            ToolOutcome::success(args)
        };
        Box::pin(async move { outcome })
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_holds_every_caller_off_the_endpoint_until_its_instant() {
    let primary = Arc::new(Limited {
        spec: ToolSpec::new("primary", "limited", json!({ "type": "object" }))
            .with_idempotent(true),
        starts: std::sync::Mutex::new(Vec::new()),
    });
    let backup = Arc::new(Working {
        spec: ToolSpec::new("backup", "works", json!({ "type": "object" })).with_idempotent(true),
        calls: AtomicUsize::new(0),
    });
    let registry = Arc::new(ToolRegistry::new());
    registry.register(primary.clone()).unwrap();
    registry.register(backup.clone()).unwrap();
    let config = DispatchConfig {
        retry: RetryConfig {
            base: ms(10),
            jitter: 0.0,
            ..RetryConfig::default()
        },
        ..DispatchConfig::default()
    };
    // Two callers (two sessions' dispatchers) sharing one endpoint book:
    // one may fall back to `backup`, the other has only `primary`.
    let endpoints = Arc::new(Endpoints::new(config).unwrap());
    let sink = Arc::new(MemorySink::new());
    let with_fallback = Dispatcher::new(
        vec![Arc::new(
            RegistryRouter::new(registry.clone())
                .with_fallback(FallbackChain::new(["primary", "backup"]).unwrap()),
        )],
        endpoints.clone(),
        sink.clone(),
    );
    let alone = Dispatcher::new(
        vec![Arc::new(RegistryRouter::new(registry.clone()))],
        endpoints.clone(),
        sink.clone(),
    );
    let ctx = ToolContext::default();

    // The 429 sets the not-before; this call is served by the fallback at
    // once instead of waiting it out.
    let t0 = tokio::time::Instant::now();
    let first = with_fallback.call_routed("primary", json!({}), &ctx).await;
    assert!(first.outcome.is_success(), "{:?}", first.outcome);
    assert_eq!(first.route.served_by.as_deref(), Some("backup"));
    assert_eq!(first.route.fallback_from, vec!["primary".to_owned()]);
    assert_eq!(tokio::time::Instant::now(), t0, "the fallback did not wait");
    let until = endpoints.get("primary").not_before().unwrap();
    assert_eq!(until, t0 + Duration::from_secs(1));
    assert_eq!(kinds(&sink, EventKind::NotBefore), 1);

    // A caller with no deadline to spare is answered at once, not sent.
    let hurried = ToolContext {
        deadline: Some(t0 + ms(500)),
        ..ToolContext::default()
    };
    let refused = alone.call("primary", json!({}), &hurried).await;
    assert_eq!(refused.code, Some(ErrorCode::RateLimited));
    assert!(refused.retryable && refused.is_undelivered());

    // Meanwhile, concurrently: the caller with a fallback is served by it
    // at once; the one without waits for the instant.
    let (served, waited) = tokio::join!(
        with_fallback.call_routed("primary", json!({ "n": 2 }), &ctx),
        alone.call_routed("primary", json!({ "n": 3 }), &ctx),
    );
    assert_eq!(served.route.served_by.as_deref(), Some("backup"));
    assert!(waited.outcome.is_success(), "{:?}", waited.outcome);
    assert_eq!(waited.route.served_by.as_deref(), Some("primary"));
    let starts = primary.starts.lock().unwrap().clone();
    assert_eq!(
        starts.len(),
        2,
        "primary was called only by the waiting caller"
    );
    assert_eq!(starts[0], t0);
    assert!(starts[1] >= until, "a call started inside the window");
    assert_eq!(backup.calls.load(Ordering::SeqCst), 2);
}
