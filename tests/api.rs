//! The HTTP API over real HTTP on a free loopback port: auth, every
//! endpoint, validation errors as 4xx JSON, backpressure, server-sent
//! events, and the OpenAPI document against the routes actually served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hale::actors::builtin::BlockRule;
use hale::api::{ApiState, router};
use hale::runtime::{Runtime, RuntimeConfig};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Api {
    base: String,
    client: Client,
    runtime: Runtime,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start(allow_chaos: bool, tweak: impl FnOnce(&mut RuntimeConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = RuntimeConfig::new(dir.path().join("data"));
        // `exec` runs through the sandbox wrapper in the hale binary.
        config.builtin.exec.sandbox.helper = Some(env!("CARGO_BIN_EXE_hale").into());
        tweak(&mut config);
        let runtime = Runtime::start(config).await.unwrap();
        let (app, _doc) = router(ApiState {
            runtime: runtime.clone(),
            token: TOKEN.into(),
            allow_chaos,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base,
            client: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            runtime,
            _dir: dir,
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "{body}");
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "errors are {{\"error\":{{\"code\",\"message\"}}}}: {body}"
    );
}

fn plan(command: &str) -> String {
    json!({"steps": [{"tool": "exec", "args": {"command": command}}], "reply": "ok"}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_right_token_are_refused_but_health_and_metrics_are_open() {
    let api = Api::start(false, |_| {}).await;
    let url = format!("{}/v1/sessions", api.base);
    let none = api.client.get(&url).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    let body: Value = none.json_body().await;
    assert_eq!(body["error"]["code"], "unauthorized");
    let wrong = api
        .client
        .get(&url)
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let almost = api
        .client
        .get(&url)
        .bearer_auth(&TOKEN[..63])
        .send()
        .await
        .unwrap();
    assert_eq!(almost.status(), StatusCode::UNAUTHORIZED);
    for open in ["/healthz", "/metrics"] {
        let response = api
            .client
            .get(format!("{}{open}", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{open}");
    }
    api.runtime.shutdown().await.unwrap();
}

trait JsonBody {
    async fn json_body(self) -> Value;
}

impl JsonBody for reqwest::Response {
    async fn json_body(self) -> Value {
        serde_json::from_str(&self.text().await.unwrap()).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_messages_round_trip_and_bad_input_is_a_4xx_json_error() {
    let api = Api::start(false, |_| {}).await;
    let (status, created) = api
        .call(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent": "default"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, list) = api.call(Method::GET, "/v1/sessions", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id.as_str())
    );

    // Waited: 200 with the message resource.
    let (status, message) = api
        .call(
            Method::POST,
            &format!("/v1/sessions/{id}/messages?wait=20"),
            Some(json!({"text": plan("echo hi")})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{message}");
    assert_eq!(message["status"], "done");
    for field in [
        "id",
        "session",
        "text",
        "reply",
        "error",
        "created_at",
        "finished_at",
    ] {
        assert!(message.get(field).is_some(), "{field} missing: {message}");
    }
    // Not waited: 202, then the resource by id.
    let (status, accepted) = api
        .call(
            Method::POST,
            &format!("/v1/sessions/{id}/messages"),
            Some(json!({"text": "hello"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let message_id = accepted["message_id"].as_str().unwrap().to_owned();
    let mut done = false;
    for _ in 0..200 {
        let (status, m) = api
            .call(Method::GET, &format!("/v1/messages/{message_id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        if m["status"] == "done" {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(done);
    let (status, detail) = api
        .call(Method::GET, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["state"], "idle");
    assert_eq!(detail["messages"], 2);
    assert_eq!(detail["budget"], 50);
    // The scripted model reports usage: two replies' tokens, all by it.
    let usage = &detail["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{detail}");
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{detail}");
    assert!(usage["cached_tokens"].is_u64(), "{detail}");
    assert_eq!(&detail["usage_by_model"]["scripted"], usage);

    // Validation: each a 4xx JSON error, never a 500.
    let raw = api
        .request(Method::POST, "/v1/sessions")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let status = raw.status();
    assert_error(status, &raw.json_body().await, StatusCode::BAD_REQUEST);
    let (status, body) = api
        .call(Method::POST, "/v1/sessions", Some(json!({"agnt": "x"})))
        .await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"]["message"].as_str().unwrap().contains("agnt"));
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent": "nobody"})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    let big = "x".repeat(hale::api::MAX_BODY_BYTES + 1);
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/v1/sessions/{id}/messages"),
            Some(json!({"text": big})),
        )
        .await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/v1/sessions/{id}/messages?wait=301"),
            Some(json!({"text": "x"})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/sessions/nope/messages",
            Some(json!({"text": "x"})),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (status, body) = api.call(Method::GET, "/v1/messages/garbage", None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    let (status, body) = api.call(Method::GET, "/v1/messages/nope:9", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (status, body) = api.call(Method::GET, "/v1/logs?level=loud", None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    let (status, body) = api
        .call(Method::GET, "/v1/logs?since=yesterdayish", None)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    let (status, body) = api.call(Method::GET, "/v1/logs?colour=red", None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);

    // Logs, tree, MCP, models, chaos (disabled here).
    let (status, logs) = api
        .call(
            Method::GET,
            &format!("/v1/logs?session={id}&limit=5&level=info"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let logs = logs.as_array().unwrap();
    assert!(!logs.is_empty() && logs.len() <= 5);
    assert!(logs.iter().all(|e| e["session"] == id.as_str()));
    let (status, tree) = api.call(Method::GET, "/v1/tree", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        tree.as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == format!("hale/sessions/{id}"))
    );
    let (status, mcp) = api.call(Method::GET, "/v1/mcp", None).await;
    assert_eq!((status, mcp), (StatusCode::OK, json!([])));
    let (status, body) = api.call(Method::POST, "/v1/mcp/ghost/restart", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/models/switch",
            Some(json!({"session": id, "model": "scriptd"})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scripted"),
        "{body}"
    );
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/models/switch",
            Some(json!({"session": id, "model": "scripted"})),
        )
        .await;
    assert_eq!(
        (status, body["model"].clone()),
        (StatusCode::OK, json!("scripted"))
    );
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/models/switch",
            Some(json!({"agent": "default", "model": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/chaos/kill",
            Some(json!({"target": "random"})),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN);

    let (status, _) = api
        .call(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api
        .call(Method::GET, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND);

    let metrics = api
        .client
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hale_messages_finished_total{state=\"done\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hale_tool_calls_total{code=\"success\"} 1"),
        "{metrics}"
    );
    api.runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_are_listed_and_decided_and_backpressure_answers_429() {
    let api = Api::start(true, |config| {
        config
            .builtin
            .exec
            .blocked
            .push(BlockRule::new("^deploy", "deploys need a human"));
        config.sessions.max_queued_per_session = 1;
    })
    .await;
    let (_, created) = api
        .call(Method::POST, "/v1/sessions", Some(json!({})))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/v1/sessions/{id}/messages"),
            Some(json!({"text": plan("deploy now")})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // The first message waits for a human, so the inbox is full.
    let response = api
        .request(Method::POST, &format!("/v1/sessions/{id}/messages"))
        .header("content-type", "application/json")
        .body(json!({"text": "more"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));

    let mut open = Value::Null;
    for _ in 0..500 {
        let (status, list) = api
            .call(Method::GET, "/v1/approvals?state=open", None)
            .await;
        assert_eq!(status, StatusCode::OK);
        if let Some(first) = list.as_array().and_then(|l| l.first()) {
            open = first.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let approval = open["id"].as_str().expect("an open approval").to_owned();
    let (status, detail) = api
        .call(Method::GET, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["pending_approval"], approval.as_str(), "{detail}");
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/v1/approvals/{approval}"),
            Some(json!({"option": "maybe"})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/v1/approvals/{approval}"),
            Some(json!({})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/v1/approvals/{approval}"),
            Some(json!({"option": "deny"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The same decision again is idempotent; a different one conflicts.
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/v1/approvals/{approval}"),
            Some(json!({"option": "deny"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/v1/approvals/{approval}"),
            Some(json!({"option": "approve"})),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT);
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/approvals/999999",
            Some(json!({"option": "deny"})),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (status, all) = api.call(Method::GET, "/v1/approvals", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all.as_array().unwrap().len(), 1);

    // Chaos is enabled on this server.
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/chaos/kill",
            Some(json!({"target": "random", "kind": "tool"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["killed"].as_str().unwrap().starts_with("hale/tools/"));
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/chaos/kill",
            Some(json!({"target": "random", "kind": "planet"})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/chaos/kill",
            Some(json!({"target": "hale/nothing"})),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    api.runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_audit_and_message_done_live() {
    let api = Api::start(false, |_| {}).await;
    let (_, created) = api
        .call(Method::POST, "/v1/sessions", Some(json!({})))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut stream = api
        .request(Method::GET, &format!("/v1/events?session={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/v1/sessions/{id}/messages"),
            Some(json!({"text": plan("echo live")})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains("event: message.done") {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("no message.done event in time")
            .unwrap()
            .expect("stream ended");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: audit"), "{seen}");
    assert!(!seen.contains("\"session\":\"other\""));
    api.runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_the_routes_served() {
    let api = Api::start(true, |_| {}).await;
    let (status, doc) = api.call(Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string());
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in ["get", "post", "delete", "put", "patch"] {
            if let Some(operation) = item.get(method) {
                assert!(
                    operation["responses"].is_object(),
                    "{method} {path} has responses"
                );
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    let expected = [
        ("POST", "/v1/sessions"),
        ("GET", "/v1/sessions"),
        ("GET", "/v1/sessions/{id}"),
        ("DELETE", "/v1/sessions/{id}"),
        ("POST", "/v1/sessions/{id}/messages"),
        ("GET", "/v1/messages/{message_id}"),
        ("GET", "/v1/approvals"),
        ("POST", "/v1/approvals/{id}"),
        ("GET", "/v1/logs"),
        ("GET", "/v1/tree"),
        ("GET", "/v1/mcp"),
        ("POST", "/v1/mcp/{name}/{action}"),
        ("POST", "/v1/models/switch"),
        ("POST", "/v1/chaos/kill"),
        ("GET", "/v1/events"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/metrics"),
        ("GET", "/healthz"),
    ];
    let mut want: Vec<(String, String)> = expected
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    want.sort();
    documented.sort();
    assert_eq!(documented, want);
    // Every documented operation is served (answers something other than
    // the router's fallback), and paths that are not documented are not.
    for (method, path) in &documented {
        if path == "/v1/events" {
            continue; // a stream: checked in its own test
        }
        let concrete = path
            .replace("{id}", "x")
            .replace("{message_id}", "x:1")
            .replace("{name}", "x")
            .replace("{action}", "restart");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body) = api.call(method.clone(), &concrete, Some(json!({}))).await;
        let fallback = body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no such route"));
        assert!(
            !fallback && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {concrete}: {status} {body}"
        );
    }
    for path in ["/v1/nothing", "/v1/sessions/x/y/z", "/v2/sessions"] {
        let (status, body) = api.call(Method::GET, path, None).await;
        assert_error(status, &body, StatusCode::NOT_FOUND);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no such route")
        );
    }
    api.runtime.shutdown().await.unwrap();
}

/// The operation `method path` of the served document.
fn operation<'a>(doc: &'a Value, path: &str, method: &str) -> &'a Value {
    let operation = &doc["paths"][path][method];
    assert!(operation.is_object(), "{method} {path} is documented");
    operation
}

/// The parameter `name` of an operation.
fn parameter<'a>(operation: &'a Value, name: &str) -> &'a Value {
    operation["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no parameter {name}: {operation}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_status_the_routes_answer_with_the_error_body() {
    let api = Api::start(true, |_| {}).await;
    let (status, doc) = api.call(Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let error_body = json!("#/components/schemas/ErrorBody");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            let documented = |status: &str| {
                responses.get(status).is_some_and(|r| {
                    r["content"]["application/json"]["schema"]["$ref"] == error_body
                })
            };
            let mut expected = Vec::new();
            if path.starts_with("/v1/") {
                expected.push("401");
                assert_eq!(op["security"], json!([{"bearer": []}]), "{method} {path}");
            }
            if op.get("requestBody").is_some() {
                expected.extend(["400", "413", "415", "422"]);
            }
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            if !params.is_empty() {
                expected.push("400");
            }
            for status in expected {
                assert!(
                    documented(status),
                    "{method} {path} documents {status} with the error body"
                );
            }
            // Every error the document lists carries the error body
            // (`/healthz` answers 503 with its own).
            for (status, _) in responses {
                if status.starts_with(['4', '5']) && path != "/healthz" {
                    assert!(documented(status), "{method} {path} {status}");
                }
            }
        }
    }
    // The statuses the handlers give, each listed where it is given.
    for (path, method, statuses) in [
        ("/v1/sessions", "post", &["201", "400", "409", "503"][..]),
        (
            "/v1/sessions/{id}/messages",
            "post",
            &["200", "202", "404", "429"][..],
        ),
        ("/v1/messages/{message_id}", "get", &["400", "404"][..]),
        ("/v1/approvals/{id}", "post", &["400", "404", "409"][..]),
        (
            "/v1/mcp/{name}/{action}",
            "post",
            &["400", "404", "503"][..],
        ),
        ("/v1/models/switch", "post", &["400", "404"][..]),
        ("/v1/chaos/kill", "post", &["400", "403", "404"][..]),
    ] {
        let responses = &operation(&doc, path, method)["responses"];
        for status in statuses {
            assert!(responses.get(status).is_some(), "{method} {path} {status}");
        }
    }
    // And the extractors' answers are those error bodies, never axum's
    // plain text: a wrong content type, a path that is not UTF-8, an
    // action that is not one.
    let response = api
        .request(Method::POST, "/v1/sessions")
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_error(
        status,
        &response.json_body().await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    );
    let (status, body) = api.call(Method::GET, "/v1/sessions/%FF", None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    let (status, body) = api.call(Method::POST, "/v1/mcp/x/explode", None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    api.runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameters_are_documented_in_the_query_with_the_bounds_the_handlers_apply() {
    let api = Api::start(false, |_| {}).await;
    let (_, doc) = api.call(Method::GET, "/v1/openapi.json", None).await;
    for (path, method) in [
        ("/v1/logs", "get"),
        ("/v1/approvals", "get"),
        ("/v1/events", "get"),
    ] {
        for p in operation(&doc, path, method)["parameters"]
            .as_array()
            .unwrap()
        {
            assert_eq!(p["in"], "query", "{path}: {p}");
            assert_ne!(p["required"], true, "{path}: {p}");
        }
    }
    let send = operation(&doc, "/v1/sessions/{id}/messages", "post");
    let wait = parameter(send, "wait");
    assert_eq!(wait["in"], "query");
    assert_eq!(
        (&wait["schema"]["minimum"], &wait["schema"]["maximum"]),
        (&json!(0), &json!(300))
    );
    let logs = operation(&doc, "/v1/logs", "get");
    let limit = &parameter(logs, "limit")["schema"];
    assert_eq!(
        (&limit["minimum"], &limit["maximum"]),
        (&json!(1), &json!(10000))
    );
    for (limit, expected) in [
        ("0", StatusCode::BAD_REQUEST),
        ("1", StatusCode::OK),
        ("10000", StatusCode::OK),
        ("10001", StatusCode::BAD_REQUEST),
        ("-1", StatusCode::BAD_REQUEST),
    ] {
        let (status, body) = api
            .call(Method::GET, &format!("/v1/logs?limit={limit}"), None)
            .await;
        assert_eq!(status, expected, "limit={limit}: {body}");
    }
    // Levels are exactly the five the document names.
    let level = &parameter(logs, "level")["schema"];
    assert_eq!(
        level["enum"],
        json!(["debug", "info", "warning", "error", "critical"])
    );
    for level in ["WARNING", "warn", "trace"] {
        let (status, body) = api
            .call(Method::GET, &format!("/v1/logs?level={level}"), None)
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }
    let (status, _) = api.call(Method::GET, "/v1/logs?level=warning", None).await;
    assert_eq!(status, StatusCode::OK);
    let state = &parameter(operation(&doc, "/v1/approvals", "get"), "state")["schema"];
    assert_eq!(state["enum"], json!(["open", "all"]));
    api.runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_must_be_an_object() {
    let api = Api::start(false, |_| {}).await;
    // serde reads a struct from an array by position: `[null, null]`
    // created a session.
    for (body, expected) in [
        ("[null, null]", StatusCode::UNPROCESSABLE_ENTITY),
        ("[]", StatusCode::UNPROCESSABLE_ENTITY),
        ("\"x\"", StatusCode::UNPROCESSABLE_ENTITY),
        ("null", StatusCode::UNPROCESSABLE_ENTITY),
        ("[", StatusCode::BAD_REQUEST),
        ("", StatusCode::BAD_REQUEST),
    ] {
        let response = api
            .request(Method::POST, "/v1/sessions")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert_error(status, &response.json_body().await, expected);
    }
    let (_, sessions) = api.call(Method::GET, "/v1/sessions", None).await;
    assert_eq!(sessions, json!([]));
    let (status, _) = api
        .call(Method::POST, "/v1/sessions", Some(json!({"id": "ok"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    api.runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_offers_only_what_the_handlers_accept() {
    let api = Api::start(false, |_| {}).await;
    let (_, doc) = api.call(Method::GET, "/v1/openapi.json", None).await;
    let schemas = &doc["components"]["schemas"];
    // The session's token usage is documented with its three counts.
    let usage = &schemas["SessionDetail"]["properties"]["usage"]["$ref"];
    assert_eq!(usage, "#/components/schemas/TokenUsage");
    let counts = schemas["TokenUsage"]["required"].as_array().unwrap();
    assert_eq!(counts.len(), 3, "{counts:?}");
    // Only the configured agents and models: any other name is a 400.
    let agent = &schemas["CreateSession"]["properties"]["agent"]["oneOf"][0];
    assert_eq!(agent["enum"], json!(["default"]));
    let switch = &schemas["SwitchModel"]["oneOf"];
    assert_eq!(switch[1]["properties"]["agent"]["enum"], json!(["default"]));
    let models = switch[0]["properties"]["model"]["oneOf"][0]["enum"]
        .as_array()
        .unwrap();
    assert!(models.contains(&json!("scripted")), "{models:?}");
    // Exactly one of two fields: `{}` is not offered (the handler says 400).
    for name in ["SwitchModel", "Decide"] {
        let choices = schemas[name]["oneOf"].as_array().unwrap();
        assert_eq!(choices.len(), 2, "{name}");
        assert!(
            choices
                .iter()
                .all(|c| c["required"].as_array().unwrap().len() == 1)
        );
    }
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/models/switch",
            Some(json!({"model": null})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST);
    // What the document allows is not refused as malformed: a `null`
    // other field, an unknown session (404).
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/models/switch",
            Some(json!({"session": "ghost", "agent": null})),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/approvals/ghost",
            Some(json!({"option": "deny", "instructions": null})),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    // The operator header is documented with the rule the handler applies.
    let decide = operation(&doc, "/v1/approvals/{id}", "post");
    let operator = parameter(decide, "x-hale-operator");
    assert_eq!(operator["in"], "header");
    assert!(operator["schema"]["pattern"].is_string(), "{operator}");
    for (name, expected) in [
        ("alice.ops@example.com", StatusCode::NOT_FOUND),
        ("a;b", StatusCode::BAD_REQUEST),
    ] {
        let response = api
            .request(Method::POST, "/v1/approvals/ghost")
            .header("x-hale-operator", name)
            .header("content-type", "application/json")
            .body(json!({"option": "deny"}).to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert_error(status, &response.json_body().await, expected);
    }
    let message_id = &parameter(
        operation(&doc, "/v1/messages/{message_id}", "get"),
        "message_id",
    );
    assert_eq!(
        message_id["schema"]["pattern"],
        "^[A-Za-z0-9_-]{1,64}:[1-9][0-9]{0,18}$"
    );
    let (status, body) = api
        .call(Method::GET, "/v1/messages/s:9999999999999999999", None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    api.runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_deleted_by_retention_answers_410_gone() {
    let api = Api::start(false, |config| {
        config.compaction_interval = Duration::from_secs(3600);
        config.retention.messages = Some(Duration::ZERO);
    })
    .await;
    let (_, created) = api
        .call(Method::POST, "/v1/sessions", Some(json!({})))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, message) = api
        .call(
            Method::POST,
            &format!("/v1/sessions/{id}/messages?wait=20"),
            Some(json!({"text": "hello"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{message}");
    let path = format!("/v1/messages/{}", message["id"].as_str().unwrap());
    let (status, _) = api.call(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    api.runtime.apply_retention().await;
    let (status, body) = api.call(Method::GET, &path, None).await;
    assert_error(status, &body, StatusCode::GONE);
    // One that never existed is still 404.
    let (status, body) = api
        .call(Method::GET, &format!("/v1/messages/{id}:99"), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND);
    api.runtime.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Streamed replies: message.delta on /v1/events.

/// A loopback OpenAI-compatible endpoint over a raw socket: request `i`
/// (from 0) is answered with the SSE chunks `replies[i]` (the last for
/// every later one), written one by one with a pause between them; the
/// connection is closed after the last. The handle counts requests.
async fn streaming_model(
    replies: Vec<Vec<String>>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let i = counter.fetch_add(1, Ordering::SeqCst);
            let chunks = replies[i.min(replies.len() - 1)].clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                let _ = socket.write_all(head.as_bytes()).await;
                for chunk in chunks {
                    let _ = socket.write_all(chunk.as_bytes()).await;
                    let _ = socket.flush().await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
    });
    (base, count)
}

fn content_chunk(piece: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {"content": piece}}]})
    )
}

fn end_chunks() -> Vec<String> {
    vec![
        format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        ),
        format!(
            "data: {}\n\n",
            json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}})
        ),
        "data: [DONE]\n\n".to_owned(),
    ]
}

/// The SSE events of `/v1/events` read until `message.done`: (name, data).
async fn events_until_done(stream: &mut reqwest::Response) -> Vec<(String, Value)> {
    let mut raw = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !raw.contains("event: message.done") || !raw.ends_with("\n\n") {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("no message.done event in time")
            .unwrap()
            .expect("stream ended");
        raw.push_str(&String::from_utf8_lossy(&chunk));
    }
    raw.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str::<Value>(v).ok();
                }
            }
            Some((name?, data?))
        })
        .collect()
}

/// One message sent to a session whose model streams `replies` (see
/// [`streaming_model`]), read from `/v1/events` until `message.done`: the
/// API, the session id, the events and the model's request count.
async fn stream_one_message(
    replies: Vec<Vec<String>>,
) -> (
    Api,
    String,
    Vec<(String, Value)>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let (base, requests) = streaming_model(replies).await;
    let api = streaming_api(&base).await;
    let (_, created) = api
        .call(Method::POST, "/v1/sessions", Some(json!({})))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut stream = api
        .request(Method::GET, &format!("/v1/events?session={id}"))
        .send()
        .await
        .unwrap();
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/v1/sessions/{id}/messages"),
            Some(json!({"text": "talk to me"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let events = events_until_done(&mut stream).await;
    (api, id, events, requests)
}

async fn streaming_api(base: &str) -> Api {
    let base = base.to_owned();
    Api::start(false, move |config| {
        let model = hale::actors::model::ModelConfig::remote(
            "loop",
            hale::actors::model::Provider::Openai,
            base,
            "m",
            None,
        );
        config.models = vec![model];
        config.agents = vec![hale::runtime::default_agent(&["loop".to_owned()])];
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_text_reaches_events_as_message_deltas_that_make_up_the_reply() {
    // ~600 bytes in 80 pieces, a key split across two of them.
    let mut pieces: Vec<String> = (0..80).map(|i| format!("word{i} ")).collect();
    pieces[40] = "key sk-proj1234567".to_owned();
    pieces[41] = "890abcdefXYZ ".to_owned();
    let mut chunks: Vec<String> = pieces.iter().map(|p| content_chunk(p)).collect();
    chunks.extend(end_chunks());
    let (api, id, events, _) = stream_one_message(vec![chunks]).await;
    let done = &events.iter().find(|(n, _)| n == "message.done").unwrap().1;
    assert_eq!(done["status"], "done", "{done}");
    let reply = done["reply"].as_str().unwrap();
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "message.delta")
        .map(|(_, d)| d)
        .collect();
    // Merged (fewer deltas than pieces), tagged, and in order: they make
    // up the reply, the key masked in both.
    assert!(
        deltas.len() > 1 && deltas.len() < pieces.len(),
        "{}",
        deltas.len()
    );
    for delta in &deltas {
        assert_eq!(delta["session"], id.as_str());
        assert_eq!(delta["message"], 1);
        assert_eq!(delta["turn"], 0);
        assert_eq!(delta["attempt"], 1);
    }
    let text: String = deltas.iter().map(|d| d["text"].as_str().unwrap()).collect();
    assert_eq!(text, reply);
    assert!(
        !text.contains("sk-proj") && !text.contains("890abcdef"),
        "{text}"
    );
    assert!(text.contains("[REDACTED]"), "{text}");
    let last_delta = events
        .iter()
        .rposition(|(n, _)| n == "message.delta")
        .unwrap();
    let done_at = events
        .iter()
        .position(|(n, _)| n == "message.done")
        .unwrap();
    assert!(
        last_delta < done_at,
        "every delta comes before message.done"
    );
    assert!(!events.iter().any(|(n, _)| n == "message.delta.reset"));
    api.runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_turn_shows_its_reset_and_the_retry_makes_up_the_reply() {
    // The first answer is cut after 200 bytes of text (past the masking
    // window, so some of it went out); the second is whole.
    let cut: Vec<String> = (0..20)
        .map(|i| content_chunk(&format!("doomed{i:03} ")))
        .collect();
    let mut whole: Vec<String> = (0..30)
        .map(|i| content_chunk(&format!("fine{i} ")))
        .collect();
    whole.extend(end_chunks());
    let (api, _, events, requests) = stream_one_message(vec![cut, whole]).await;
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    let done = &events.iter().find(|(n, _)| n == "message.done").unwrap().1;
    let reply = done["reply"].as_str().unwrap();
    assert!(
        reply.starts_with("fine0 ") && !reply.contains("doomed"),
        "{reply}"
    );
    let reset = events
        .iter()
        .rposition(|(n, _)| n == "message.delta.reset")
        .expect("a reset before the retry's text");
    assert_eq!(events[reset].1["attempt"], 2);
    assert!(
        events[..reset]
            .iter()
            .any(|(n, d)| n == "message.delta" && d["text"].as_str().unwrap().contains("doomed")),
        "the cut attempt's text went out before its reset"
    );
    let after: String = events[reset..]
        .iter()
        .filter(|(n, _)| n == "message.delta")
        .map(|(_, d)| d["text"].as_str().unwrap())
        .collect();
    assert_eq!(after, reply);
    api.runtime.shutdown().await.unwrap();
}
