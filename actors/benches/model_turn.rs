//! What hale adds to one model turn: the same OpenAI chat completion asked
//! three ways from a loopback HTTP server that answers at once.
//!
//! - **bare_client**: `OpenAiClient::complete`, the client alone (request
//!   body, the POST with its deadline and size cap, parsing the reply);
//! - **models**: `Models::complete` on a one-model chain, what a session
//!   pays: the engine (breaker, retry budget, events) and the model's
//!   supervised actor in front of the same client;
//! - **raw_reqwest**: a plain `reqwest` POST of a fixed body, reading the
//!   answer as JSON: the floor of any HTTP client.
//!
//! The server is axum on 127.0.0.1 (a free port) in the same runtime,
//! answering a fixed completion (or, when the request asks for
//! `"stream": true`, the same reply as server-sent events ending in
//! `[DONE]`), so what is measured is hale's own cost around one request,
//! not a model's. Criterion measures the three; afterwards a direct run
//! rotates them in blocks of 100 turns (so a CPU speed switch hits all
//! alike), from a task on a runtime worker (where sessions call from), and
//! prints p50/p99 of each and the overhead. `cargo bench -p hale-actors
//! --bench model_turn` (`HALE_BENCH_BLOCKS` sets the number of blocks,
//! default 30).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use criterion::{Criterion, criterion_group};
use hale_actors::dispatch::{DispatchConfig, Endpoints};
use hale_actors::model::openai::OpenAiClient;
use hale_actors::model::{ChatMessage, ModelClient, ModelConfig, ModelRequest, Models, Provider};
use hale_actors::{NullSink, ToolContext};
use hale_supervision::SupervisorRef;
use serde_json::{Value, json};

/// The model's name in hale and the provider's model id.
const MODEL: &str = "bench";
/// The reply's text.
const TEXT: &str = "The deployment is healthy; nothing to do.";

fn completion() -> Value {
    json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_764_720_000,
        "model": MODEL,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": TEXT },
            "finish_reason": "stop"
        }],
        "usage": { "prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30 }
    })
}

/// The same reply as a chat completion stream: the text in two pieces,
/// the finish, the usage, `[DONE]`.
fn stream() -> String {
    let (a, b) = TEXT.split_at(TEXT.len() / 2);
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_764_720_000,
            "model": MODEL,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }]
        })
    };
    let usage = json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1_764_720_000,
        "model": MODEL,
        "choices": [],
        "usage": { "prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30 }
    });
    let mut out = String::new();
    for event in [
        chunk(json!({ "role": "assistant", "content": a }), Value::Null),
        chunk(json!({ "content": b }), Value::Null),
        chunk(json!({}), json!("stop")),
        usage,
    ] {
        out.push_str(&format!("data: {event}\n\n"));
    }
    out.push_str("data: [DONE]\n\n");
    out
}

async fn answer(body: axum::body::Bytes) -> Response {
    let streamed = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["stream"].as_bool())
        .unwrap_or(false);
    let (kind, body) = if streamed {
        ("text/event-stream", stream())
    } else {
        ("application/json", completion().to_string())
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, kind)
        .body(Body::from(body))
        .unwrap()
}

/// Binds the loopback server on a free port; returns its `/v1` base URL.
async fn serve() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/v1/chat/completions", post(answer));
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}/v1")
}

fn request() -> ModelRequest {
    ModelRequest {
        system: "You are a careful agent running under hale.".into(),
        messages: vec![ChatMessage::User {
            text: "Is the deployment healthy?".into(),
        }],
        ..ModelRequest::default()
    }
}

struct Setup {
    bare: OpenAiClient,
    models: Arc<Models>,
    chain: Vec<String>,
    raw: reqwest::Client,
    url: String,
    raw_body: String,
    request: ModelRequest,
    ctx: ToolContext,
    _supervisor: SupervisorRef,
}

impl Setup {
    async fn start() -> Self {
        let base = serve().await;
        let config = ModelConfig::remote(MODEL, Provider::Openai, base.clone(), MODEL, None);
        let bare = OpenAiClient::new(&config, None).unwrap();
        let models = Models::new(
            vec![config],
            Arc::new(Endpoints::new(DispatchConfig::default()).unwrap()),
            Arc::new(NullSink),
        )
        .unwrap();
        let supervisor = models.start("bench/models").await.unwrap();
        let request = request();
        let raw_body = json!({
            "model": MODEL,
            "messages": [
                { "role": "system", "content": request.system },
                { "role": "user", "content": "Is the deployment healthy?" }
            ],
            "max_tokens": 4096
        })
        .to_string();
        let setup = Self {
            bare,
            models,
            chain: vec![MODEL.to_owned()],
            raw: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            url: format!("{base}/chat/completions"),
            raw_body,
            request,
            ctx: ToolContext::default(),
            _supervisor: supervisor,
        };
        // Every way must get the reply before any is timed.
        assert_eq!(setup.bare_turn().await.1, TEXT);
        assert_eq!(setup.models_turn().await.1, TEXT);
        assert_eq!(setup.raw_turn().await.1, TEXT);
        setup
    }

    async fn bare_turn(&self) -> (Duration, String) {
        let started = Instant::now();
        let reply = self.bare.complete(&self.request).await;
        let took = started.elapsed();
        (took, reply.unwrap().text.unwrap_or_default())
    }

    async fn models_turn(&self) -> (Duration, String) {
        let started = Instant::now();
        let reply = self
            .models
            .complete(&self.chain, &self.request, &self.ctx)
            .await;
        let took = started.elapsed();
        (took, reply.unwrap().text.unwrap_or_default())
    }

    async fn raw_turn(&self) -> (Duration, String) {
        let started = Instant::now();
        let answer: Value = self
            .raw
            .post(&self.url)
            .header(header::CONTENT_TYPE.as_str(), "application/json")
            .body(self.raw_body.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let took = started.elapsed();
        let text = answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (took, text)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn criterion_model_turn(c: &mut Criterion) {
    let rt = runtime();
    let setup = rt.block_on(Setup::start());
    let mut group = c.benchmark_group("model_turn");
    group.bench_function("bare_client", |b| {
        b.to_async(&rt).iter(|| setup.bare_turn())
    });
    group.bench_function("models", |b| b.to_async(&rt).iter(|| setup.models_turn()));
    group.bench_function("raw_reqwest", |b| b.to_async(&rt).iter(|| setup.raw_turn()));
    group.finish();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// The rotated-block run, from a task on a runtime worker.
async fn rotated_blocks() {
    const BLOCK: usize = 100;
    let setup = Setup::start().await;
    for _ in 0..300 {
        setup.bare_turn().await;
        setup.models_turn().await;
        setup.raw_turn().await;
    }
    let (mut bare, mut models, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    let blocks = std::env::var("HALE_BENCH_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    for _ in 0..blocks {
        for _ in 0..BLOCK {
            bare.push(setup.bare_turn().await.0);
        }
        for _ in 0..BLOCK {
            models.push(setup.models_turn().await.0);
        }
        for _ in 0..BLOCK {
            raw.push(setup.raw_turn().await.0);
        }
    }
    for v in [&mut bare, &mut models, &mut raw] {
        v.sort();
    }
    let us = |x: Duration| x.as_secs_f64() * 1e6;
    println!(
        "\nmodel turn, rotated run in a task on a runtime worker: {} turns each (blocks of {BLOCK})",
        bare.len()
    );
    for (name, v) in [
        ("bare_client", &bare),
        ("models", &models),
        ("raw_reqwest", &raw),
    ] {
        println!(
            "model_turn_{name}_us_p50: {:.1} us  p99: {:.1} us",
            us(percentile(v, 50.0)),
            us(percentile(v, 99.0))
        );
    }
    let (b50, m50, r50) = (
        us(percentile(&bare, 50.0)),
        us(percentile(&models, 50.0)),
        us(percentile(&raw, 50.0)),
    );
    println!(
        "overhead_p50_us (models - bare_client): {:.1} us",
        m50 - b50
    );
    println!("ratio_p50 models / bare_client: {:.2}", m50 / b50);
    println!("ratio_p50 bare_client / raw_reqwest: {:.2}", b50 / r50);
    println!(
        "overhead_p99_us (models - bare_client): {:.1} us",
        us(percentile(&models, 99.0)) - us(percentile(&bare, 99.0))
    );
}

fn direct_percentiles() {
    let rt = runtime();
    rt.block_on(async { tokio::spawn(rotated_blocks()).await.unwrap() });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(4)).without_plots();
    targets = criterion_model_turn
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    direct_percentiles();
}
