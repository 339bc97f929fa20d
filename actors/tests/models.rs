//! Model endpoints against real loopback HTTP servers speaking the OpenAI
//! and Anthropic wire formats: request shapes, tool-call round trips,
//! every failure class, retries, fallbacks, breakers, a killed model
//! actor; and the scripted model as a pure function.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router as HttpRouter;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::routing::post;
use hale_actors::classify::{from_anthropic_http_error, from_openai_http_error};
use hale_actors::dispatch::{DispatchConfig, Endpoints, ToolContext};
use hale_actors::model::{
    ChatMessage, DeltaSink, ModelConfig, ModelError, ModelReply, ModelRequest, Models,
    ModelsOptions, Provider, SWITCH_MODEL, endpoint_name, render_decision, scripted_reply,
    switch_model_spec,
};
use hale_actors::recovery::{BreakerState, RetryConfig};
use hale_actors::{
    ErrorCode, Event, EventKind, HintKind, MemorySink, Status, ToolOutcome, ToolSpec,
};
use hale_supervision::{ChildId, SupervisorRef};
use serde_json::{Value, json};

/// Every test is bounded: a hang is a failure, not a stuck CI job.
const BOUND: Duration = Duration::from_secs(20);

const KEY_VAR: &str = "HALE_TEST_MODEL_KEY";
const KEY: &str = "sk-test-123";

// ---------------------------------------------------------------------------
// A fake provider: answers from a queue (then a default), records requests.

#[derive(Clone)]
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Answer {
    fn json(status: u16, body: Value) -> Self {
        Self::raw(status, body.to_string())
    }

    fn raw(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

struct Seen {
    headers: HeaderMap,
    body: Value,
    at: Instant,
}

struct Fake {
    queue: Mutex<VecDeque<Answer>>,
    default: Answer,
    seen: Mutex<Vec<Seen>>,
}

impl Fake {
    fn new(queue: Vec<Answer>, default: Answer) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(queue.into()),
            default,
            seen: Mutex::new(Vec::new()),
        })
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn arrivals(&self) -> Vec<Instant> {
        self.seen.lock().unwrap().iter().map(|s| s.at).collect()
    }

    fn body(&self, i: usize) -> Value {
        self.seen.lock().unwrap()[i].body.clone()
    }

    fn header(&self, i: usize, name: &str) -> Option<String> {
        self.seen.lock().unwrap()[i]
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Wire {
    Openai,
    Anthropic,
}

const WIRES: [Wire; 2] = [Wire::Openai, Wire::Anthropic];

impl Wire {
    fn path(self) -> &'static str {
        match self {
            Wire::Openai => "/v1/chat/completions",
            Wire::Anthropic => "/v1/messages",
        }
    }

    fn provider(self) -> Provider {
        match self {
            Wire::Openai => Provider::Openai,
            Wire::Anthropic => Provider::Anthropic,
        }
    }

    /// A config for the fake at `base` (`http://127.0.0.1:port`).
    fn config(self, name: &str, base: &str) -> ModelConfig {
        let url = match self {
            Wire::Openai => format!("{base}/v1"),
            Wire::Anthropic => base.to_owned(),
        };
        let mut config = ModelConfig::remote(
            name,
            self.provider(),
            url,
            "test-model",
            Some(KEY_VAR.to_owned()),
        );
        config.timeout = Duration::from_secs(5);
        config.max_tokens = 256;
        config
    }

    /// A plain text answer in this wire format.
    fn text(self, text: &str) -> Answer {
        match self {
            Wire::Openai => Answer::json(
                200,
                json!({ "id": "c", "object": "chat.completion", "choices": [{ "index": 0,
                        "message": { "role": "assistant", "content": text },
                        "finish_reason": "stop" }] }),
            ),
            Wire::Anthropic => Answer::json(
                200,
                json!({ "id": "m", "type": "message", "role": "assistant",
                        "content": [{ "type": "text", "text": text }],
                        "stop_reason": "end_turn" }),
            ),
        }
    }

    /// The provider's "context window exceeded" 400.
    fn context_too_long(self) -> Answer {
        match self {
            Wire::Openai => Answer::json(
                400,
                json!({ "error": {
                    "message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
                    "type": "invalid_request_error", "param": "messages",
                    "code": "context_length_exceeded" } }),
            ),
            Wire::Anthropic => Answer::json(
                400,
                json!({ "type": "error", "error": { "type": "invalid_request_error",
                        "message": "prompt is too long: 210000 tokens > 200000 maximum" } }),
            ),
        }
    }
}

/// Serves `fake` at `wire`'s path on a free loopback port; the base URL.
async fn serve(wire: Wire, fake: Arc<Fake>) -> String {
    let app = HttpRouter::new().route(
        wire.path(),
        post(move |headers: HeaderMap, body: String| {
            let fake = Arc::clone(&fake);
            async move {
                fake.seen.lock().unwrap().push(Seen {
                    headers,
                    body: serde_json::from_str(&body).unwrap_or(Value::Null),
                    at: Instant::now(),
                });
                let answer = fake
                    .queue
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or_else(|| fake.default.clone());
                tokio::time::sleep(answer.delay).await;
                let mut headers = HeaderMap::new();
                headers.insert("content-type", HeaderValue::from_static("application/json"));
                for (name, value) in answer.headers {
                    headers.insert(
                        HeaderName::from_static(name),
                        HeaderValue::from_str(&value).unwrap(),
                    );
                }
                (
                    StatusCode::from_u16(answer.status).unwrap(),
                    headers,
                    answer.body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn fast_retry(max_attempts: u32) -> RetryConfig {
    RetryConfig {
        max_attempts,
        base: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        jitter: 0.0,
        max_retry_after: Duration::from_secs(5),
    }
}

fn options(retry: RetryConfig) -> ModelsOptions {
    ModelsOptions {
        retry,
        ready_wait: Duration::from_secs(2),
        env: Arc::new(|var| (var == KEY_VAR).then(|| KEY.to_owned())),
        // One walk of the chain: these tests look at how one walk
        // classifies and retries; the turn's later walks have their own.
        turn_rounds: 1,
        ..ModelsOptions::default()
    }
}

struct Harness {
    models: Arc<Models>,
    sink: Arc<MemorySink>,
    endpoints: Arc<Endpoints>,
    supervisor: SupervisorRef,
}

async fn start(configs: Vec<ModelConfig>, retry: RetryConfig) -> Harness {
    start_with(configs, DispatchConfig::default(), options(retry)).await
}

async fn start_with(
    configs: Vec<ModelConfig>,
    dispatch: DispatchConfig,
    options: ModelsOptions,
) -> Harness {
    let sink = Arc::new(MemorySink::new());
    let endpoints = Arc::new(Endpoints::new(dispatch).unwrap());
    let models = Models::with_options(configs, endpoints.clone(), sink.clone(), options).unwrap();
    let supervisor = models.start("hale/models").await.unwrap();
    Harness {
        models,
        sink,
        endpoints,
        supervisor,
    }
}

fn ctx() -> ToolContext {
    ToolContext {
        session: Some("sess-1".to_owned()),
        ..ToolContext::default()
    }
}

fn chain(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn hello() -> ModelRequest {
    ModelRequest {
        system: "You are a test.".into(),
        messages: vec![ChatMessage::User {
            text: "hello".into(),
        }],
        tools: Vec::new(),
        budget_left: None,
        deltas: None,
    }
}

fn events(sink: &MemorySink, kind: EventKind) -> Vec<Event> {
    sink.events()
        .into_iter()
        .filter(|e| e.kind == kind)
        .collect()
}

async fn complete(
    h: &Harness,
    names: &[&str],
    request: &ModelRequest,
) -> Result<ModelReply, ToolOutcome> {
    tokio::time::timeout(BOUND, h.models.complete(&chain(names), request, &ctx()))
        .await
        .expect("the model chain did not answer in time")
}

fn exec_spec() -> ToolSpec {
    ToolSpec::new(
        "exec",
        "Run a shell command.",
        json!({ "type": "object", "properties": { "cmd": { "type": "string" } },
                "required": ["cmd"] }),
    )
}

// ---------------------------------------------------------------------------
// Tool-call round trips: the request body each provider receives.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_tool_call_round_trip_sends_the_wire_format() {
    let fake = Fake::new(
        vec![Answer::json(
            200,
            json!({ "id": "c1", "object": "chat.completion", "choices": [{ "index": 0,
                "message": { "role": "assistant", "content": null, "tool_calls": [
                    { "id": "call_1", "type": "function",
                      "function": { "name": "exec", "arguments": "{\"cmd\":\"ls\"}" } }] },
                "finish_reason": "tool_calls" }] }),
        )],
        Wire::Openai.text("two files"),
    );
    let base = serve(Wire::Openai, fake.clone()).await;
    let h = start(vec![Wire::Openai.config("gpt", &base)], fast_retry(1)).await;

    let mut request = ModelRequest {
        system: "You are a test.".into(),
        messages: vec![ChatMessage::User {
            text: "list files".into(),
        }],
        tools: vec![exec_spec()],
        budget_left: Some(7),
        deltas: None,
    };
    let reply = complete(&h, &["gpt"], &request).await.unwrap();
    assert_eq!(reply.model, "gpt");
    assert_eq!(reply.text, None);
    assert_eq!(reply.tool_calls.len(), 1);
    let call = &reply.tool_calls[0];
    assert_eq!((call.id.as_str(), call.name.as_str()), ("call_1", "exec"));
    assert_eq!(call.arguments, json!({ "cmd": "ls" }));

    let first = fake.body(0);
    assert_eq!(
        fake.header(0, "authorization").as_deref(),
        Some("Bearer sk-test-123")
    );
    assert_eq!(first["model"], "test-model");
    assert_eq!(first["max_tokens"], 256);
    assert_eq!(first["messages"][0]["role"], "system");
    let system = first["messages"][0]["content"].as_str().unwrap();
    assert!(system.starts_with("You are a test."), "{system}");
    assert!(
        system.ends_with("Tool calls left for this message: 7"),
        "{system}"
    );
    assert_eq!(
        first["messages"][1],
        json!({ "role": "user", "content": "list files" })
    );
    assert_eq!(
        first["tools"],
        json!([{ "type": "function", "function": { "name": "exec",
            "description": "Run a shell command.", "parameters": exec_spec().schema } }])
    );

    // Second turn: the assistant's call and the tool's result go back.
    request.messages.push(ChatMessage::Assistant {
        text: None,
        tool_calls: reply.tool_calls.clone(),
    });
    request.messages.push(ChatMessage::ToolResult {
        call_id: "call_1".into(),
        name: "exec".into(),
        outcome: ToolOutcome::success(json!({ "stdout": "a\nb\n" })),
    });
    request.budget_left = Some(6);
    let reply = complete(&h, &["gpt"], &request).await.unwrap();
    assert_eq!(reply.text.as_deref(), Some("two files"));
    assert!(reply.tool_calls.is_empty());

    let second = fake.body(1);
    let messages = second["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4);
    let assistant = &messages[2];
    assert_eq!(assistant["role"], "assistant");
    assert_eq!(assistant["content"], Value::Null);
    let sent_call = &assistant["tool_calls"][0];
    assert_eq!(sent_call["id"], "call_1");
    assert_eq!(sent_call["type"], "function");
    assert_eq!(sent_call["function"]["name"], "exec");
    // `arguments` is a JSON string holding the object.
    let args: Value =
        serde_json::from_str(sent_call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({ "cmd": "ls" }));
    let tool = &messages[3];
    assert_eq!(tool["role"], "tool");
    assert_eq!(tool["tool_call_id"], "call_1");
    let outcome: Value = serde_json::from_str(tool["content"].as_str().unwrap()).unwrap();
    assert_eq!(outcome["status"], "success");
    assert_eq!(outcome["data"]["stdout"], "a\nb\n");
    assert!(
        messages[0]["content"]
            .as_str()
            .unwrap()
            .ends_with("Tool calls left for this message: 6")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_tool_call_round_trip_sends_the_wire_format() {
    let fake = Fake::new(
        vec![Answer::json(
            200,
            json!({ "id": "msg_1", "type": "message", "role": "assistant", "content": [
                { "type": "text", "text": "Let me look." },
                { "type": "tool_use", "id": "toolu_1", "name": "exec", "input": { "cmd": "ls" } }],
                "stop_reason": "tool_use" }),
        )],
        Wire::Anthropic.text("two files"),
    );
    let base = serve(Wire::Anthropic, fake.clone()).await;
    let h = start(vec![Wire::Anthropic.config("claude", &base)], fast_retry(1)).await;

    let mut request = ModelRequest {
        system: "You are a test.".into(),
        messages: vec![ChatMessage::User {
            text: "list files".into(),
        }],
        tools: vec![exec_spec()],
        budget_left: Some(3),
        deltas: None,
    };
    let reply = complete(&h, &["claude"], &request).await.unwrap();
    assert_eq!(reply.model, "claude");
    assert_eq!(reply.text.as_deref(), Some("Let me look."));
    assert_eq!(reply.tool_calls.len(), 1);
    assert_eq!(reply.tool_calls[0].id, "toolu_1");
    assert_eq!(reply.tool_calls[0].arguments, json!({ "cmd": "ls" }));

    assert_eq!(fake.header(0, "x-api-key").as_deref(), Some(KEY));
    assert_eq!(
        fake.header(0, "anthropic-version").as_deref(),
        Some("2023-06-01")
    );
    let first = fake.body(0);
    assert_eq!(first["model"], "test-model");
    assert_eq!(first["max_tokens"], 256);
    let system = first["system"].as_str().unwrap();
    assert!(system.starts_with("You are a test."));
    assert!(system.ends_with("Tool calls left for this message: 3"));
    assert_eq!(
        first["tools"],
        json!([{ "name": "exec", "description": "Run a shell command.",
                 "input_schema": exec_spec().schema }])
    );
    assert_eq!(
        first["messages"],
        json!([{ "role": "user", "content": [{ "type": "text", "text": "list files" }] }])
    );

    request.messages.push(ChatMessage::Assistant {
        text: reply.text.clone(),
        tool_calls: reply.tool_calls.clone(),
    });
    request.messages.push(ChatMessage::ToolResult {
        call_id: "toolu_1".into(),
        name: "exec".into(),
        outcome: ToolOutcome::from_code(ErrorCode::Etimedout, "too slow"),
    });
    request.messages.push(ChatMessage::Decision {
        approval: "ap-9".into(),
        option: Some("retry".into()),
        instructions: Some("use -la".into()),
    });
    let reply = complete(&h, &["claude"], &request).await.unwrap();
    assert_eq!(reply.text.as_deref(), Some("two files"));

    let second = fake.body(1);
    let messages = second["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    // The tool result and the decision are merged into one user message.
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_eq!(
        messages[1]["content"],
        json!([{ "type": "text", "text": "Let me look." },
               { "type": "tool_use", "id": "toolu_1", "name": "exec", "input": { "cmd": "ls" } }])
    );
    let last = messages[2]["content"].as_array().unwrap();
    assert_eq!(last[0]["type"], "tool_result");
    assert_eq!(last[0]["tool_use_id"], "toolu_1");
    assert_eq!(last[0]["is_error"], true);
    let outcome: Value = serde_json::from_str(last[0]["content"].as_str().unwrap()).unwrap();
    assert_eq!(outcome["code"], "ETIMEDOUT");
    assert_eq!(
        last[1],
        json!({ "type": "text",
                "text": "Approval ap-9 decided: option `retry`; instructions: use -la" })
    );
}

// ---------------------------------------------------------------------------
// Failures, each provider.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_waits_for_retry_after_then_succeeds() {
    for wire in WIRES {
        let fake = Fake::new(
            vec![
                Answer::json(429, json!({ "error": { "message": "slow down" } }))
                    .header("retry-after", "1"),
            ],
            wire.text("ok"),
        );
        let base = serve(wire, fake.clone()).await;
        let h = start(vec![wire.config("m", &base)], fast_retry(3)).await;
        let started = Instant::now();
        let reply = complete(&h, &["m"], &hello()).await.unwrap();
        let took = started.elapsed();
        assert_eq!(reply.text.as_deref(), Some("ok"), "{wire:?}");
        assert!(
            took >= Duration::from_millis(950),
            "{wire:?}: retried after {took:?}, before the 1 s Retry-After"
        );
        assert_eq!(fake.requests(), 2, "{wire:?}");
        let retries = events(&h.sink, EventKind::Retry);
        assert_eq!(retries.len(), 1, "{wire:?}");
        assert_eq!(retries[0].data["after"], "RATE_LIMITED");
        assert!(retries[0].data["delay_ms"].as_u64().unwrap() >= 1000);
        assert_eq!(retries[0].session.as_deref(), Some("sess-1"));
        assert_eq!(retries[0].source, "model/m");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_is_retried_then_succeeds() {
    for wire in WIRES {
        let fake = Fake::new(
            vec![Answer::raw(500, "internal error")],
            wire.text("recovered"),
        );
        let base = serve(wire, fake.clone()).await;
        let h = start(vec![wire.config("m", &base)], fast_retry(3)).await;
        let reply = complete(&h, &["m"], &hello()).await.unwrap();
        assert_eq!(reply.text.as_deref(), Some("recovered"), "{wire:?}");
        assert_eq!(fake.requests(), 2, "{wire:?}");
        let retries = events(&h.sink, EventKind::Retry);
        assert_eq!(retries.len(), 1, "{wire:?}");
        assert_eq!(retries[0].data["after"], "SERVICE_UNAVAILABLE");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_body_is_a_classified_malformed_answer() {
    for wire in WIRES {
        for garbage in [
            Answer::raw(200, "<html>gateway says hi</html>"),
            Answer::json(200, json!({ "unexpected": true })),
        ] {
            let fake = Fake::new(vec![], garbage);
            let base = serve(wire, fake.clone()).await;
            let h = start(vec![wire.config("m", &base)], fast_retry(3)).await;
            let outcome = complete(&h, &["m"], &hello()).await.unwrap_err();
            assert_eq!(outcome.code, Some(ErrorCode::Internal), "{wire:?}");
            assert!(!outcome.retryable);
            assert_eq!(outcome.data["malformed"], true, "{outcome:?}");
            assert!(outcome.message.contains("malformed"), "{}", outcome.message);
            // Not retried: the same endpoint would answer the same way.
            assert_eq!(fake.requests(), 1, "{wire:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_beyond_the_timeout_is_etimedout() {
    for wire in WIRES {
        let fake = Fake::new(vec![], wire.text("late").delay(Duration::from_secs(5)));
        let base = serve(wire, fake.clone()).await;
        let mut config = wire.config("m", &base);
        config.timeout = Duration::from_millis(300);
        let h = start(vec![config], fast_retry(2)).await;
        let started = Instant::now();
        let outcome = complete(&h, &["m"], &hello()).await.unwrap_err();
        assert_eq!(outcome.code, Some(ErrorCode::Etimedout), "{outcome:?}");
        assert_eq!(outcome.status, Status::Timeout);
        assert!(outcome.retryable);
        // Two attempts of 300 ms and one 50 ms pause; far below the 5 s.
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(fake.requests(), 2, "{wire:?}");
        assert_eq!(events(&h.sink, EventKind::Retry).len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_not_retried() {
    for wire in WIRES {
        for (status, code) in [
            (401, ErrorCode::Unauthenticated),
            (403, ErrorCode::PermissionDenied),
        ] {
            let fake = Fake::new(
                vec![],
                Answer::json(
                    status,
                    json!({ "error": { "message": "invalid x-api-key" } }),
                ),
            );
            let base = serve(wire, fake.clone()).await;
            let h = start(vec![wire.config("m", &base)], fast_retry(3)).await;
            let outcome = complete(&h, &["m"], &hello()).await.unwrap_err();
            assert_eq!(outcome.code, Some(code), "{wire:?} {status}");
            assert!(!outcome.retryable);
            assert_eq!(fake.requests(), 1, "{wire:?} {status}");
            assert!(events(&h.sink, EventKind::Retry).is_empty());
            assert_eq!(outcome.message, format!("HTTP {status}: invalid x-api-key"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_length_overflow_is_context_too_long() {
    for wire in WIRES {
        let fake = Fake::new(vec![], wire.context_too_long());
        let base = serve(wire, fake.clone()).await;
        let h = start(vec![wire.config("m", &base)], fast_retry(3)).await;
        let outcome = complete(&h, &["m"], &hello()).await.unwrap_err();
        assert_eq!(outcome.code, Some(ErrorCode::ContextTooLong), "{outcome:?}");
        assert!(!outcome.retryable);
        assert!(outcome.recoverable);
        assert!(
            outcome.hints.iter().any(|h| h.kind == HintKind::TryInstead),
            "{outcome:?}"
        );
        assert_eq!(outcome.data["http_status"], 400);
        assert_eq!(fake.requests(), 1, "{wire:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_bad_request_is_handed_back_without_trying_other_models() {
    let bad = Fake::new(
        vec![],
        Answer::json(
            400,
            json!({ "error": { "message": "messages[1].role is invalid", "type": "invalid_request_error" } }),
        ),
    );
    let good = Fake::new(vec![], Wire::Openai.text("never asked"));
    let (bad_base, good_base) = (
        serve(Wire::Openai, bad.clone()).await,
        serve(Wire::Openai, good.clone()).await,
    );
    let h = start(
        vec![
            Wire::Openai.config("first", &bad_base),
            Wire::Openai.config("second", &good_base),
        ],
        fast_retry(3),
    )
    .await;
    let outcome = complete(&h, &["first", "second"], &hello())
        .await
        .unwrap_err();
    assert_eq!(outcome.code, Some(ErrorCode::InvalidInput));
    assert_eq!(outcome.data["error_type"], "invalid_request_error");
    assert_eq!((bad.requests(), good.requests()), (1, 0));
    assert!(events(&h.sink, EventKind::Fallback).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_connection_refused() {
    // A port that was just free: nothing listens on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let h = start(vec![Wire::Openai.config("m", &base)], fast_retry(2)).await;
    let outcome = complete(&h, &["m"], &hello()).await.unwrap_err();
    assert_eq!(
        outcome.code,
        Some(ErrorCode::ConnectionRefused),
        "{outcome:?}"
    );
    assert!(outcome.retryable);
    assert_eq!(events(&h.sink, EventKind::Retry).len(), 1);
}

// ---------------------------------------------------------------------------
// The chain: fallbacks and breakers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_503s_fall_back_to_the_next_model() {
    let first = Fake::new(vec![], Answer::raw(503, "overloaded"));
    let second = Fake::new(vec![], Wire::Anthropic.text("from the backup"));
    let h = start(
        vec![
            Wire::Openai.config("first", &serve(Wire::Openai, first.clone()).await),
            Wire::Anthropic.config("second", &serve(Wire::Anthropic, second.clone()).await),
        ],
        fast_retry(3),
    )
    .await;
    let reply = complete(&h, &["first", "second"], &hello()).await.unwrap();
    assert_eq!(reply.model, "second");
    assert_eq!(reply.text.as_deref(), Some("from the backup"));
    assert_eq!((first.requests(), second.requests()), (3, 1));
    let fallbacks = events(&h.sink, EventKind::Fallback);
    assert_eq!(fallbacks.len(), 1);
    assert_eq!(fallbacks[0].data["from"], "first");
    assert_eq!(fallbacks[0].data["to"], "second");
    assert_eq!(fallbacks[0].data["after"], "SERVICE_UNAVAILABLE");
    assert_eq!(events(&h.sink, EventKind::Retry).len(), 2);
    // Every event of the chain belongs to the session.
    for event in h.sink.events() {
        if event.source.starts_with("model/") {
            assert_eq!(event.session.as_deref(), Some("sess-1"), "{event:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_skips_straight_to_the_next_model() {
    let first = Fake::new(vec![], Wire::Openai.text("should not be asked"));
    let second = Fake::new(vec![], Wire::Openai.text("second"));
    let h = start(
        vec![
            Wire::Openai.config("first", &serve(Wire::Openai, first.clone()).await),
            Wire::Openai.config("second", &serve(Wire::Openai, second.clone()).await),
        ],
        fast_retry(3),
    )
    .await;
    h.endpoints.get(&endpoint_name("first")).force_open();
    let started = Instant::now();
    let reply = complete(&h, &["first", "second"], &hello()).await.unwrap();
    assert_eq!(reply.model, "second");
    assert_eq!((first.requests(), second.requests()), (0, 1));
    assert!(events(&h.sink, EventKind::Retry).is_empty());
    assert!(started.elapsed() < Duration::from_secs(1));
    let fallbacks = events(&h.sink, EventKind::Fallback);
    assert_eq!(fallbacks.len(), 1);
    assert!(
        fallbacks[0].message.contains("breaker"),
        "{}",
        fallbacks[0].message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_open_the_breaker_for_every_later_call() {
    let first = Fake::new(vec![], Answer::raw(502, "bad gateway"));
    let second = Fake::new(vec![], Wire::Openai.text("second"));
    let h = start(
        vec![
            Wire::Openai.config("first", &serve(Wire::Openai, first.clone()).await),
            Wire::Openai.config("second", &serve(Wire::Openai, second.clone()).await),
        ],
        fast_retry(3),
    )
    .await;
    // Default breaker: 5 consecutive failures. Two turns make 6 attempts.
    for _ in 0..2 {
        let reply = complete(&h, &["first", "second"], &hello()).await.unwrap();
        assert_eq!(reply.model, "second");
    }
    let asked = first.requests();
    assert_eq!(asked, 5, "the breaker opened at the fifth failure");
    let reply = complete(&h, &["first", "second"], &hello()).await.unwrap();
    assert_eq!(reply.model, "second");
    assert_eq!(
        first.requests(),
        asked,
        "an open breaker lets nothing through"
    );
    assert!(
        events(&h.sink, EventKind::Breaker)
            .iter()
            .any(|e| e.data["to"] == "open" && e.source == "model/first")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_failure_is_handed_back_with_the_models_tried() {
    let first = Fake::new(vec![], Answer::raw(503, "busy"));
    let second = Fake::new(
        vec![],
        Answer::json(401, json!({ "error": { "message": "no" } })),
    );
    let h = start(
        vec![
            Wire::Openai.config("first", &serve(Wire::Openai, first.clone()).await),
            Wire::Anthropic.config("second", &serve(Wire::Anthropic, second.clone()).await),
        ],
        fast_retry(2),
    )
    .await;
    let outcome = complete(&h, &["first", "second"], &hello())
        .await
        .unwrap_err();
    assert_eq!(outcome.code, Some(ErrorCode::Unauthenticated));
    assert_eq!(outcome.extra["models_tried"], json!(["first", "second"]));
    assert_eq!((first.requests(), second.requests()), (2, 1));
}

// ---------------------------------------------------------------------------
// Actors.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_actor_killed_mid_request_is_retried_on_its_replacement() {
    let fake = Fake::new(
        vec![
            Wire::Openai
                .text("never delivered")
                .delay(Duration::from_secs(10)),
        ],
        Wire::Openai.text("from the new actor"),
    );
    let base = serve(Wire::Openai, fake.clone()).await;
    let h = start(vec![Wire::Openai.config("m", &base)], fast_retry(3)).await;
    let supervisor = h.supervisor.clone();
    let killer = async {
        // Until the request is at the server, so the kill lands mid-request.
        while fake.requests() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        supervisor
            .resolve(&ChildId::new("m"))
            .await
            .unwrap()
            .unwrap()
            .kill();
    };
    let started = Instant::now();
    let request = hello();
    let (reply, ()) = tokio::join!(complete(&h, &["m"], &request), killer);
    let reply = reply.unwrap();
    assert_eq!(reply.text.as_deref(), Some("from the new actor"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the killed request was waited out instead of retried"
    );
    let retries = events(&h.sink, EventKind::Retry);
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0].data["after"], "INTERRUPTED");
    assert!(
        h.sink
            .events()
            .iter()
            .any(|e| e.kind == EventKind::ChildRestarted || e.kind == EventKind::ChildExited),
        "the supervisor saw the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_made_while_the_actor_restarts_waits_for_the_replacement() {
    let h = start(vec![ModelConfig::scripted("m")], fast_retry(1)).await;
    let id = ChildId::new("m");
    let old = h.supervisor.resolve(&id).await.unwrap().unwrap();
    old.kill();
    // Asked at once, before the supervisor has necessarily restarted it:
    // the call waits for the new incarnation instead of failing.
    let reply = complete(&h, &["m"], &hello()).await.unwrap();
    assert_eq!(reply.text.as_deref(), Some("ok: received 5 characters"));
    let new = h.supervisor.resolve(&id).await.unwrap().unwrap();
    assert_ne!(old.get_id(), new.get_id());
    assert!(events(&h.sink, EventKind::Retry).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_model_actor_is_not_asked_and_the_chain_moves_on() {
    let h = start(
        vec![
            ModelConfig::scripted("first"),
            ModelConfig::scripted("second"),
        ],
        fast_retry(1),
    )
    .await;
    h.supervisor
        .terminate_child(&ChildId::new("first"))
        .await
        .unwrap();
    let started = Instant::now();
    let reply = complete(&h, &["first", "second"], &hello()).await.unwrap();
    assert_eq!(reply.model, "second");
    // One bounded wait (ready_wait, 2 s) for `first`, then the fallback.
    assert!(started.elapsed() < Duration::from_secs(4));
    let fallbacks = events(&h.sink, EventKind::Fallback);
    assert_eq!(fallbacks.len(), 1);
    assert_eq!(fallbacks[0].data["after"], "SERVICE_UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_has_one_child_per_model() {
    let h = start(
        vec![ModelConfig::scripted("b"), ModelConfig::scripted("a")],
        fast_retry(1),
    )
    .await;
    let mut ids: Vec<String> = h
        .supervisor
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id.as_str().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(h.models.names(), ["a", "b"]);
    let reply = complete(&h, &["b"], &hello()).await.unwrap();
    assert_eq!(reply.model, "b");
    assert_eq!(reply.text.as_deref(), Some("ok: received 5 characters"));
}

// ---------------------------------------------------------------------------
// Configuration and switch_model.

#[test]
fn resolve_lists_the_configured_models_closest_first() {
    let sink = Arc::new(MemorySink::new());
    let endpoints = Arc::new(Endpoints::new(DispatchConfig::default()).unwrap());
    let configs = ["local", "claude-sonnet", "gpt-4o", "gpt-4o-mini"]
        .into_iter()
        .map(ModelConfig::scripted)
        .collect();
    let models = Models::new(configs, endpoints, sink).unwrap();
    assert_eq!(models.resolve("gpt-4o").unwrap(), "gpt-4o");
    let outcome = models.resolve("gpt-4o-mni").unwrap_err();
    assert_eq!(outcome.code, Some(ErrorCode::NotFound));
    assert!(outcome.message.contains("gpt-4o-mni"));
    let hint = outcome
        .hints
        .iter()
        .find(|h| h.kind == HintKind::DidYouMean)
        .unwrap();
    assert_eq!(
        hint.suggestions,
        ["gpt-4o-mini", "gpt-4o", "local", "claude-sonnet"]
    );

    let spec = switch_model_spec();
    assert_eq!(spec.name, SWITCH_MODEL);
    assert_eq!(spec.schema["properties"]["model"]["type"], "string");
    assert_eq!(spec.schema["required"], json!(["model"]));
}

#[test]
fn configuration_errors_name_what_is_wrong() {
    let build = |configs: Vec<ModelConfig>| {
        let endpoints = Arc::new(Endpoints::new(DispatchConfig::default()).unwrap());
        let options = ModelsOptions {
            env: Arc::new(|_| None),
            ..ModelsOptions::default()
        };
        Models::with_options(configs, endpoints, Arc::new(MemorySink::new()), options)
            .map(|_| ())
            .unwrap_err()
    };
    let keyed = ModelConfig::remote(
        "gpt",
        Provider::Openai,
        "https://api.openai.com/v1",
        "gpt-4o",
        Some("HALE_SURELY_UNSET_KEY".to_owned()),
    );
    let err = build(vec![keyed.clone()]);
    assert!(matches!(err, ModelError::MissingApiKey { .. }), "{err}");
    assert!(err.to_string().contains("HALE_SURELY_UNSET_KEY"), "{err}");
    assert!(err.to_string().contains("`gpt`"), "{err}");

    let err = build(vec![ModelConfig::scripted("Big Model")]);
    assert!(matches!(err, ModelError::InvalidName(_)), "{err}");
    let err = build(vec![ModelConfig::scripted("a"), ModelConfig::scripted("a")]);
    assert!(matches!(err, ModelError::Duplicate(_)), "{err}");
    let mut bad_url = keyed.clone();
    bad_url.api_key_env = None;
    bad_url.base_url = Some("not a url".into());
    let err = build(vec![bad_url.clone()]);
    assert!(matches!(err, ModelError::InvalidBaseUrl { .. }), "{err}");
    bad_url.base_url = Some("ftp://example.com".into());
    assert!(matches!(
        build(vec![bad_url.clone()]),
        ModelError::InvalidBaseUrl { .. }
    ));
    bad_url.base_url = None;
    assert!(matches!(
        build(vec![bad_url.clone()]),
        ModelError::MissingBaseUrl(_)
    ));
    let mut no_model = keyed;
    no_model.api_key_env = None;
    no_model.model = None;
    assert!(matches!(
        build(vec![no_model]),
        ModelError::MissingModelId(_)
    ));
    let mut zero = ModelConfig::scripted("z");
    zero.timeout = Duration::ZERO;
    assert!(matches!(build(vec![zero]), ModelError::ZeroTimeout(_)));
}

#[tokio::test]
async fn an_unknown_or_empty_chain_is_refused_without_asking() {
    let sink = Arc::new(MemorySink::new());
    let endpoints = Arc::new(Endpoints::new(DispatchConfig::default()).unwrap());
    let models = Models::new(vec![ModelConfig::scripted("script")], endpoints, sink).unwrap();
    let outcome = models
        .complete(&chain(&["scrpt"]), &hello(), &ctx())
        .await
        .unwrap_err();
    assert_eq!(outcome.code, Some(ErrorCode::NotFound));
    assert_eq!(outcome.hints[0].suggestions, ["script"]);
    let outcome = models.complete(&[], &hello(), &ctx()).await.unwrap_err();
    assert_eq!(outcome.code, Some(ErrorCode::InvalidInput));
}

// ---------------------------------------------------------------------------
// Classifiers (the one boundary per provider).

#[test]
fn provider_classifiers_map_statuses_and_bodies() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for classify in [from_openai_http_error, from_anthropic_http_error] {
        let limited = classify(429, Some("3"), "{}", now);
        assert_eq!(limited.code, Some(ErrorCode::RateLimited));
        assert!(limited.retryable);
        assert_eq!(limited.retry_after, Some(Duration::from_secs(3)));
        // Retry-After as an HTTP date, 7 s after `now`.
        let date = httpdate_of(now + Duration::from_secs(7));
        let limited = classify(429, Some(&date), "", now);
        assert_eq!(limited.retry_after, Some(Duration::from_secs(7)));
        for status in [500, 502, 503, 504, 529] {
            let busy = classify(status, None, "", now);
            assert!(busy.retryable, "{status}");
        }
        assert_eq!(
            classify(529, None, "", now).code,
            Some(ErrorCode::ServiceUnavailable)
        );
        let denied = classify(403, None, "", now);
        assert_eq!(denied.code, Some(ErrorCode::PermissionDenied));
        assert!(!denied.retryable);
        assert_eq!(
            classify(413, None, "", now).code,
            Some(ErrorCode::ContextTooLong)
        );
        // A 400 about something else stays INVALID_INPUT.
        let bad = classify(400, None, r#"{"error":{"message":"bad role"}}"#, now);
        assert_eq!(bad.code, Some(ErrorCode::InvalidInput));
        assert_eq!(bad.message, "HTTP 400: bad role");
    }
    // vLLM says it only in the message.
    let vllm = from_openai_http_error(
        400,
        None,
        r#"{"object":"error","message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","code":400}"#,
        now,
    );
    assert_eq!(vllm.code, Some(ErrorCode::ContextTooLong));
    assert_eq!(vllm.data["provider"], "openai");
    assert_eq!(vllm.data["error_code"], "400");
    let anthropic = from_anthropic_http_error(
        529,
        None,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        now,
    );
    assert_eq!(anthropic.data["error_type"], "overloaded_error");
    assert_eq!(anthropic.message, "HTTP 529: Overloaded");
}

fn httpdate_of(at: SystemTime) -> String {
    // IMF-fixdate, as `Retry-After` carries it.
    httpdate::fmt_http_date(at)
}

// ---------------------------------------------------------------------------
// The scripted model.

fn user(text: &str) -> ChatMessage {
    ChatMessage::User { text: text.into() }
}

fn result(call_id: &str, outcome: ToolOutcome) -> ChatMessage {
    ChatMessage::ToolResult {
        call_id: call_id.into(),
        name: "exec".into(),
        outcome,
    }
}

fn ask(messages: &[ChatMessage]) -> ModelReply {
    scripted_reply(&ModelRequest {
        messages: messages.to_vec(),
        ..ModelRequest::default()
    })
}

/// Plays the conversation the way a session would: each requested call
/// is answered with `answer(step)`, until the model replies with text.
fn play(
    mut messages: Vec<ChatMessage>,
    answer: impl Fn(&str) -> ToolOutcome,
) -> (Vec<ChatMessage>, String) {
    for _ in 0..20 {
        let reply = ask(&messages);
        if reply.tool_calls.is_empty() {
            return (messages, reply.text.unwrap());
        }
        assert!(reply.text.is_none());
        assert_eq!(reply.tool_calls.len(), 1);
        let call = reply.tool_calls[0].clone();
        messages.push(ChatMessage::Assistant {
            text: None,
            tool_calls: vec![call.clone()],
        });
        let cmd = call.arguments["cmd"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        messages.push(result(&call.id, answer(&cmd)));
    }
    panic!("the plan did not end");
}

#[test]
fn scripted_plan_runs_its_steps_one_call_at_a_time() {
    let plan = json!({
        "steps": [
            { "tool": "exec", "args": { "cmd": "echo one" } },
            { "tool": "exec", "args": { "cmd": "echo two" } },
        ],
        "reply": "all done",
    });
    let first = ask(&[user(&plan.to_string())]);
    assert_eq!(first.text, None);
    assert_eq!(first.tool_calls.len(), 1);
    assert_eq!(first.tool_calls[0].id, "s0");
    assert_eq!(first.tool_calls[0].name, "exec");
    assert_eq!(first.tool_calls[0].arguments, json!({ "cmd": "echo one" }));

    let (messages, text) = play(vec![user(&plan.to_string())], |cmd| {
        ToolOutcome::success(json!({ "stdout": cmd }))
    });
    // Two calls (s0, s1) and two results.
    assert_eq!(messages.len(), 5);
    let ids: Vec<String> = messages
        .iter()
        .filter_map(|m| match m {
            ChatMessage::Assistant { tool_calls, .. } => Some(tool_calls[0].id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ids, ["s0", "s1"]);
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply["reply"], "all done");
    let steps = reply["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["status"], "success");
    assert_eq!(steps[1]["data"]["stdout"], "echo two");
}

#[test]
fn scripted_model_acknowledges_what_is_not_a_plan() {
    assert_eq!(
        ask(&[user("hello there")]).text.as_deref(),
        Some("ok: received 11 characters")
    );
    // JSON, but neither steps nor reply: not a plan.
    assert_eq!(
        ask(&[user(r#"{"a":1}"#)]).text.as_deref(),
        Some("ok: received 7 characters")
    );
    // Characters, not bytes.
    assert_eq!(
        ask(&[user("héllo")]).text.as_deref(),
        Some("ok: received 5 characters")
    );
    assert_eq!(ask(&[]).text.as_deref(), Some("ok: received 0 characters"));
    // Only the last user message counts.
    let reply = ask(&[
        user(r#"{"steps":[{"tool":"exec"}]}"#),
        ChatMessage::Assistant {
            text: Some("ok".into()),
            tool_calls: vec![],
        },
        user("thanks"),
    ]);
    assert_eq!(reply.text.as_deref(), Some("ok: received 6 characters"));
    assert!(reply.tool_calls.is_empty());
    // A reply-only plan answers at once, with no steps; args default to {}.
    let reply = ask(&[user(r#"{"reply":"hi"}"#)]);
    assert_eq!(reply.text.as_deref(), Some(r#"{"reply":"hi","steps":[]}"#));
    let reply = ask(&[user(r#"{"steps":[{"tool":"glob"}]}"#)]);
    assert_eq!(reply.tool_calls[0].arguments, json!({}));
    // A malformed plan says why.
    let reply = ask(&[user(r#"{"steps":[{"args":{}}]}"#)]);
    assert!(
        reply
            .text
            .as_deref()
            .unwrap()
            .starts_with("scripted: invalid plan:"),
        "{reply:?}"
    );
}

#[test]
fn scripted_model_runs_the_steps_of_the_chosen_option() {
    let plan = json!({
        "steps": [{ "tool": "exec", "args": { "cmd": "deploy" } }],
        "on_approval": {
            "retry": [{ "tool": "exec", "args": { "cmd": "deploy --force" } }],
            "abort": [],
        },
        "reply": "finished",
    })
    .to_string();
    // The first step runs and fails; the session asks a human.
    let mut messages = vec![
        user(&plan),
        ChatMessage::Assistant {
            text: None,
            tool_calls: ask(&[user(&plan)]).tool_calls,
        },
        result(
            "s0",
            ToolOutcome::from_code(ErrorCode::PermissionDenied, "no"),
        ),
    ];
    // Without a decision the plan is over.
    let reply = ask(&messages);
    assert!(reply.tool_calls.is_empty());
    // The human chooses `retry`: its steps follow.
    messages.push(ChatMessage::Decision {
        approval: "ap1".into(),
        option: Some("retry".into()),
        instructions: None,
    });
    let reply = ask(&messages);
    assert_eq!(reply.tool_calls.len(), 1);
    assert_eq!(reply.tool_calls[0].id, "s1");
    assert_eq!(
        reply.tool_calls[0].arguments,
        json!({ "cmd": "deploy --force" })
    );
    let (_, text) = play(messages.clone(), |_| ToolOutcome::success(json!("ok")));
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply["reply"], "finished");
    assert_eq!(reply["steps"][0]["code"], "PERMISSION_DENIED");
    assert_eq!(reply["steps"][1]["status"], "success");

    // An option with no entry, or none chosen, adds no steps.
    for option in [Some("later".to_owned()), None] {
        let mut other = messages.clone();
        other.pop();
        other.push(ChatMessage::Decision {
            approval: "ap1".into(),
            option,
            instructions: Some("stop".into()),
        });
        assert!(ask(&other).tool_calls.is_empty());
    }
}

#[test]
fn scripted_model_is_a_pure_function_of_the_conversation() {
    let plan = json!({ "steps": [
        { "tool": "exec", "args": { "cmd": "a" } },
        { "tool": "read_file", "args": { "path": "x" } },
    ], "reply": "r" })
    .to_string();
    let (messages, text) = play(vec![user(&plan)], |cmd| {
        ToolOutcome::success(json!({ "ran": cmd }))
    });
    // Replaying any prefix (a session restarted from its journal) asks the
    // same next step, every time.
    for cut in 1..=messages.len() {
        let prefix = &messages[..cut];
        let once = ask(prefix);
        assert_eq!(once, ask(prefix), "prefix of {cut}");
        if let Some(ChatMessage::Assistant { tool_calls, .. }) = messages.get(cut) {
            assert_eq!(&once.tool_calls, tool_calls, "prefix of {cut}");
        }
    }
    assert_eq!(ask(&messages).text.as_deref(), Some(text.as_str()));
    // Nothing in the reply depends on the system prompt, tools or budget.
    let dressed = scripted_reply(&ModelRequest {
        system: "anything".into(),
        messages: messages.clone(),
        tools: vec![exec_spec()],
        budget_left: Some(1),
        deltas: None,
    });
    assert_eq!(dressed, ask(&messages));
}

#[test]
fn decisions_render_as_user_text() {
    assert_eq!(
        render_decision("ap1", Some("retry"), Some("carefully")),
        "Approval ap1 decided: option `retry`; instructions: carefully"
    );
    assert_eq!(
        render_decision("ap2", None, Some("do X")),
        "Approval ap2 decided: no option chosen; instructions: do X"
    );
    assert_eq!(
        render_decision("ap3", Some("ok"), None),
        "Approval ap3 decided: option `ok`"
    );
}

/// Serves one endless `200` answer per connection at any path: a declared
/// (or chunked, when `declare` is false) body of a gigabyte, written until
/// the client hangs up. Returns the base URL and the bytes written so far.
async fn serve_huge(declare: bool) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let w = Arc::clone(&written);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let w = Arc::clone(&w);
            tokio::spawn(async move {
                // The request: read until the headers and a bit of body
                // are in (the body is small); its content does not matter.
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                let head = if declare {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n"
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                };
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let block = vec![b' '; 64 * 1024];
                let chunk = if declare {
                    block
                } else {
                    let mut c = format!("{:x}\r\n", block.len()).into_bytes();
                    c.extend_from_slice(&block);
                    c.extend_from_slice(b"\r\n");
                    c
                };
                for _ in 0..(1 << 14) {
                    if socket.write_all(&chunk).await.is_err() {
                        return;
                    }
                    w.fetch_add(chunk.len(), Ordering::Relaxed);
                }
            });
        }
    });
    (format!("http://{addr}"), written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_answer_is_cut_at_the_cap_and_is_output_too_large_with_a_hint() {
    use std::sync::atomic::Ordering;
    for wire in WIRES {
        for declare in [true, false] {
            let (base, written) = serve_huge(declare).await;
            let mut config = wire.config("m", &base);
            config.max_reply_bytes = 256 * 1024;
            let h = start(vec![config], fast_retry(3)).await;
            let outcome = complete(&h, &["m"], &hello()).await.unwrap_err();
            assert_eq!(
                outcome.code,
                Some(ErrorCode::OutputTooLarge),
                "{wire:?} declare={declare}: {outcome:?}"
            );
            assert_eq!(outcome.data["max_reply_bytes"], 256 * 1024);
            assert!(!outcome.retryable);
            let hint = outcome
                .hints
                .iter()
                .find(|h| h.kind == HintKind::TryInstead)
                .expect("a hint");
            assert!(
                hint.suggestions.contains(&"max_reply_bytes".to_owned()),
                "{hint:?}"
            );
            // Read up to the cap, not whole: the server got far less than
            // its gigabyte out before the client hung up (socket buffers
            // hold a few megabytes at most).
            assert!(
                written.load(Ordering::Relaxed) < 64 * 1024 * 1024,
                "{} bytes were written",
                written.load(Ordering::Relaxed)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The shared engine's rules, for models.

/// Records the attempt numbers the engine announces.
#[derive(Debug, Default)]
struct Attempts(Mutex<Vec<u32>>);

impl DeltaSink for Attempts {
    fn attempt(&self, attempt: u32) {
        self.0.lock().unwrap().push(attempt);
    }
    fn text(&self, _delta: &str) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_crash_with_requests_in_flight_counts_as_one_breaker_failure() {
    const IN_FLIGHT: usize = 3;
    let slow = Wire::Openai
        .text("never delivered")
        .delay(Duration::from_secs(10));
    let fake = Fake::new(vec![slow; IN_FLIGHT], Wire::Openai.text("after the crash"));
    let base = serve(Wire::Openai, fake.clone()).await;
    // Two failures in a row would open the breaker: the crash must count
    // once, however many requests it failed.
    let dispatch = DispatchConfig {
        breaker_failures: 2,
        breaker_cool_down: Duration::from_secs(30),
        ..DispatchConfig::default()
    };
    let h = start_with(
        vec![Wire::Openai.config("m", &base)],
        dispatch,
        options(fast_retry(3)),
    )
    .await;
    let supervisor = h.supervisor.clone();
    let killer = async {
        while fake.requests() < IN_FLIGHT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        supervisor
            .resolve(&ChildId::new("m"))
            .await
            .unwrap()
            .unwrap()
            .kill();
    };
    let request = hello();
    let (one, two, three, ()) = tokio::join!(
        complete(&h, &["m"], &request),
        complete(&h, &["m"], &request),
        complete(&h, &["m"], &request),
        killer
    );
    for reply in [one, two, three] {
        assert_eq!(reply.unwrap().text.as_deref(), Some("after the crash"));
    }
    let interrupted = h
        .sink
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::Retry && e.data["after"] == "INTERRUPTED")
        .count();
    assert_eq!(interrupted, IN_FLIGHT, "every request was retried");
    assert!(
        events(&h.sink, EventKind::Breaker).is_empty(),
        "the crash moved the breaker: {:?}",
        events(&h.sink, EventKind::Breaker)
    );
    let health = h.endpoints.get(&endpoint_name("m"));
    assert_eq!(health.breaker_state(), BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_a_failed_turn_again_does_not_deposit_into_the_retry_budget() {
    let fake = Fake::new(vec![Answer::raw(503, "busy")], Wire::Openai.text("ok"));
    let base = serve(Wire::Openai, fake.clone()).await;
    // One retry bought per original request, ten in reserve: the budget's
    // figure moves by exactly one per deposit and one per withdrawal.
    let dispatch = DispatchConfig {
        budget_ttl: Duration::from_secs(10),
        budget_min_per_sec: 1,
        budget_retry_ratio: 1.0,
        ..DispatchConfig::default()
    };
    let mut opts = options(fast_retry(1));
    opts.turn_rounds = 3;
    let h = start_with(vec![Wire::Openai.config("m", &base)], dispatch, opts).await;
    let health = h.endpoints.get(&endpoint_name("m"));
    let before = health.retries_available();
    let reply = complete(&h, &["m"], &hello()).await.unwrap();
    assert_eq!(reply.text.as_deref(), Some("ok"));
    assert_eq!(fake.requests(), 2, "the turn was asked again");
    // One deposit for the turn, one withdrawal for asking it again; a
    // re-ask that deposited would leave one more.
    assert_eq!(health.retries_available(), before);
    assert_eq!(events(&h.sink, EventKind::Retry).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_holds_every_session_off_the_model_until_its_instant() {
    let limited = Fake::new(
        vec![
            Answer::json(429, json!({ "error": { "message": "slow down" } }))
                .header("retry-after", "1"),
        ],
        Wire::Openai.text("from a"),
    );
    let spare = Fake::new(vec![], Wire::Openai.text("from b"));
    let base_a = serve(Wire::Openai, limited.clone()).await;
    let base_b = serve(Wire::Openai, spare.clone()).await;
    let h = start(
        vec![
            Wire::Openai.config("a", &base_a),
            Wire::Openai.config("b", &base_b),
        ],
        fast_retry(3),
    )
    .await;
    let attempts = Arc::new(Attempts::default());
    let mut first = hello();
    first.deltas = Some(attempts.clone());
    // The 429 sets the not-before; the fallback serves this turn at once.
    let started = Instant::now();
    let reply = complete(&h, &["a", "b"], &first).await.unwrap();
    assert_eq!(reply.model, "b");
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(*attempts.0.lock().unwrap(), vec![1, 2]);
    let set = events(&h.sink, EventKind::NotBefore);
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].source, "model/a");
    assert_eq!(set[0].data["endpoint"], "model/a");
    assert_eq!(set[0].data["retry_after_ms"], 1000);
    let until = set[0].data["until"].as_str().unwrap();
    assert!(until.ends_with('Z') && until.len() == "2026-12-03T17:00:01.000Z".len());
    let tried: Vec<Value> = events(&h.sink, EventKind::ToolAttempt)
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(
        tried,
        vec![
            json!({ "model": "a", "attempt": 1, }),
            json!({ "model": "b", "attempt": 2 }),
        ]
    );
    // Meanwhile: a session with a fallback is served by it at once; one
    // with no other model waits for the instant.
    let (second, third) = (hello(), hello());
    let (with_fallback, alone) = tokio::join!(
        complete(&h, &["a", "b"], &second),
        complete(&h, &["a"], &third)
    );
    assert_eq!(with_fallback.unwrap().model, "b");
    assert_eq!(alone.unwrap().model, "a");
    let arrivals = limited.arrivals();
    assert_eq!(
        arrivals.len(),
        2,
        "a was asked once more, by the session without a fallback"
    );
    assert!(
        arrivals[1] - arrivals[0] >= Duration::from_secs(1),
        "a request went out {:?} after the 429 asked for 1 s",
        arrivals[1] - arrivals[0]
    );
    assert_eq!(spare.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_the_not_before_never_passes_the_turn_deadline() {
    let fake = Fake::new(
        vec![],
        Answer::json(429, json!({ "error": { "message": "slow down" } }))
            .header("retry-after", "2"),
    );
    let base = serve(Wire::Openai, fake.clone()).await;
    let mut opts = options(fast_retry(3));
    opts.turn_rounds = 3;
    opts.turn_deadline = Duration::from_millis(500);
    let h = start_with(
        vec![Wire::Openai.config("m", &base)],
        DispatchConfig::default(),
        opts,
    )
    .await;
    let started = Instant::now();
    let outcome = complete(&h, &["m"], &hello()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "waited {:?} past a 500 ms turn deadline",
        started.elapsed()
    );
    assert_eq!(outcome.code, Some(ErrorCode::RateLimited), "{outcome:?}");
    assert!(outcome.retryable);
    assert_eq!(fake.requests(), 1);
}

// ---------------------------------------------------------------------------
// Streamed replies over real HTTP (the fake above, and a raw socket for
// bodies cut or stalled mid-way).

/// A streamed text answer in `wire`'s format: `pieces`, then the end
/// marker when `end`, usage included.
fn sse_text(wire: Wire, pieces: &[&str], end: bool) -> String {
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut body = String::new();
    match wire {
        Wire::Openai => {
            for piece in pieces {
                body += &format!(
                    "data: {}\n\n",
                    json!({"choices": [{"index": 0, "delta": {"content": piece}}]})
                );
            }
            if end {
                body += &format!(
                    "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
                    json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
                    json!({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7,
                        "prompt_tokens_details": {"cached_tokens": 3}}})
                );
            }
        }
        Wire::Anthropic => {
            body += &event(
                "message_start",
                json!({"type": "message_start", "message": {"usage": {"input_tokens": 8,
                    "output_tokens": 1, "cache_read_input_tokens": 3}}}),
            );
            body += &event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
            );
            for piece in pieces {
                body += &event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": piece}}),
                );
            }
            if end {
                body += &event(
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                        "usage": {"output_tokens": 7}}),
                );
                body += &event("message_stop", json!({"type": "message_stop"}));
            }
        }
    }
    body
}

#[derive(Debug, Default)]
struct Pieces(Mutex<Vec<String>>);

impl hale_actors::model::DeltaSink for Pieces {
    fn attempt(&self, _attempt: u32) {}
    fn text(&self, delta: &str) {
        self.0.lock().unwrap().push(delta.to_owned());
    }
}

fn client(config: &ModelConfig) -> Box<dyn hale_actors::model::ModelClient> {
    match config.provider {
        Provider::Openai => Box::new(hale_actors::model::OpenAiClient::new(config, None).unwrap()),
        _ => Box::new(hale_actors::model::AnthropicClient::new(config, None).unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_reply_is_assembled_with_its_usage_and_text_pieces() {
    for wire in WIRES {
        let pieces = ["The ", "answer ", "is 42."];
        let answer = Answer::raw(200, sse_text(wire, &pieces, true))
            .header("content-type", "text/event-stream");
        let fake = Fake::new(vec![], answer);
        let base = serve(wire, fake.clone()).await;
        let config = wire.config("m", &base);
        let sink = Arc::new(Pieces::default());
        let mut request = hello();
        request.deltas = Some(sink.clone());
        let reply = tokio::time::timeout(BOUND, client(&config).complete(&request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.text.as_deref(), Some("The answer is 42."), "{wire:?}");
        assert_eq!(sink.0.lock().unwrap().concat(), "The answer is 42.");
        let usage = reply.usage.unwrap();
        assert_eq!(
            (usage.completion_tokens, usage.cached_tokens),
            (7, 3),
            "{wire:?}"
        );
        assert_eq!(usage.prompt_tokens, 11, "{wire:?}");
        assert_eq!(fake.body(0)["stream"], true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_false_sends_the_plain_request() {
    for wire in WIRES {
        let fake = Fake::new(vec![], wire.text("plain"));
        let base = serve(wire, fake.clone()).await;
        let mut config = wire.config("m", &base);
        config.stream = false;
        let reply = client(&config).complete(&hello()).await.unwrap();
        assert_eq!(reply.text.as_deref(), Some("plain"));
        assert!(fake.body(0).get("stream").is_none(), "{wire:?}");
    }
}

/// A raw HTTP/1.1 server that answers every request with a 200
/// event-stream whose body is `body`, then keeps the connection open for
/// `hold` (a stall) or closes it (a cut).
async fn raw_stream(body: String, hold: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                // Read the request head and its body (small).
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen);
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if seen.len() >= head_end + 4 + length {
                            break;
                        }
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body.as_bytes()).await;
                let _ = socket.flush().await;
                tokio::time::sleep(hold).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_before_its_end_marker_is_a_retryable_transport_failure() {
    for wire in WIRES {
        let base = raw_stream(
            sse_text(wire, &["half an ", "answer"], false),
            Duration::ZERO,
        )
        .await;
        let config = wire.config("m", &base);
        let outcome = tokio::time::timeout(BOUND, client(&config).complete(&hello()))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            outcome.code,
            Some(ErrorCode::TransportClosed),
            "{wire:?} {outcome:?}"
        );
        assert!(outcome.retryable);
        assert_eq!(outcome.data["stream"], "truncated");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_times_out_after_the_idle_timeout() {
    for wire in WIRES {
        let base = raw_stream(sse_text(wire, &["start"], false), Duration::from_secs(30)).await;
        let mut config = wire.config("m", &base);
        config.timeout = Duration::from_secs(20);
        config.stream_idle_timeout = Duration::from_millis(300);
        let outcome = tokio::time::timeout(BOUND, client(&config).complete(&hello()))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            outcome.code,
            Some(ErrorCode::Etimedout),
            "{wire:?} {outcome:?}"
        );
        assert!(outcome.retryable);
        assert_eq!(outcome.data["stream"], "idle");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_ms_is_preferred_over_retry_after() {
    for wire in WIRES {
        let answer = Answer::json(429, json!({"error": {"message": "slow down"}}))
            .header("retry-after", "1")
            .header("retry-after-ms", "1500");
        let fake = Fake::new(vec![], answer);
        let base = serve(wire, fake.clone()).await;
        let config = wire.config("m", &base);
        let outcome = client(&config).complete(&hello()).await.unwrap_err();
        assert_eq!(outcome.code, Some(ErrorCode::RateLimited));
        assert_eq!(
            outcome.retry_after,
            Some(Duration::from_millis(1500)),
            "{wire:?}"
        );
    }
}
