//! Bounded sessions (issue 12): the conversation budget keeps a long
//! message's requests bounded, the cap on model turns escalates, and a
//! session whose journal cannot be written stalls instead of asking the
//! model again on every restart.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::routing::post;
use hale::actors::escalation::Answer;
use hale::actors::event::EventKind;
use hale::actors::model::{ModelConfig, Provider};
use hale::actors::session::{CONTINUE, STOP, StallBackoff};
use hale::actors::store::{
    AgentTokens, Finish, JournalRecord, MessageRecord, MessageState, ModelTokens, SessionRecord,
    SessionStore, StoreError, TurnUsage,
};
use hale::actors::tool::BoxFuture;
use hale::runtime::{Runtime, SessionStoreLayer};
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The conversation budget.

/// An OpenAI-compatible endpoint that answers from a queue (then with
/// text) and records the size of every request body.
struct Recorder {
    queue: Mutex<VecDeque<Value>>,
    bodies: Mutex<Vec<Value>>,
}

async fn serve_recorder(recorder: Arc<Recorder>) -> String {
    let app =
        axum::Router::new().route(
            "/v1/chat/completions",
            post(move |body: String| {
                let recorder = Arc::clone(&recorder);
                async move {
                    recorder
                        .bodies
                        .lock()
                        .unwrap()
                        .push(serde_json::from_str(&body).unwrap_or(Value::Null));
                    let answer = recorder.queue.lock().unwrap().pop_front().unwrap_or_else(
                    || json!({ "id": "c", "object": "chat.completion", "choices": [{ "index": 0,
                        "message": { "role": "assistant", "content": "read them all" },
                        "finish_reason": "stop" }] }),
                );
                    (
                        StatusCode::OK,
                        [("content-type", HeaderValue::from_static("application/json"))],
                        answer.to_string(),
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

fn read_call(n: usize) -> Value {
    json!({ "id": "c", "object": "chat.completion", "choices": [{ "index": 0,
        "message": { "role": "assistant", "content": null, "tool_calls": [{
            "id": format!("call_{n}"), "type": "function",
            "function": { "name": "read_file",
                          "arguments": json!({ "path": "big.txt" }).to_string() } }] },
        "finish_reason": "tool_calls" }] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_conversation_sends_bounded_requests_and_says_what_it_left_out() {
    const READS: usize = 12;
    const BUDGET: usize = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let recorder = Arc::new(Recorder {
        queue: Mutex::new((0..READS).map(read_call).collect()),
        bodies: Mutex::new(Vec::new()),
    });
    let base = serve_recorder(Arc::clone(&recorder)).await;
    let mut config = config(dir.path());
    let mut model = ModelConfig::remote("local", Provider::Openai, format!("{base}/v1"), "m", None);
    model.timeout = Duration::from_secs(10);
    config.models = vec![model];
    config.agents[0].models = vec!["local".to_owned()];
    config.agents[0].tools = vec!["read_file".to_owned()];
    config.agents[0].budget = 100;
    config.sessions.context_budget_bytes = BUDGET;
    let runtime = start(config).await;
    // 20 KB a read: twelve of them are four times the budget.
    let workspace = runtime.config().builtin.workspace_root.clone();
    std::fs::write(workspace.join("big.txt"), "0123456789\n".repeat(2000)).unwrap();
    let session = runtime.create_session("default").await.unwrap();
    let record = ask(&runtime, &session, "read big.txt twelve times", WAIT).await;
    assert_eq!(record.state, MessageState::Done, "{record:?}");

    let bodies = recorder.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), READS + 1);
    // What the conversation carries: texts, calls, outputs (a tool
    // message's content is the outcome's JSON), without the wire format's
    // own keys and escaping.
    let size = |body: &Value| -> usize {
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] != "system")
            .map(|m| {
                m["content"].as_str().map_or(0, str::len)
                    + m.get("tool_calls").map_or(0, |c| c.to_string().len())
            })
            .sum()
    };
    // The conversation of every request fits the budget, though the
    // outputs read add up to far more.
    let read: usize = READS * 22_000;
    assert!(read > 3 * BUDGET);
    for (n, body) in bodies.iter().enumerate() {
        assert!(
            size(body) <= BUDGET,
            "request {n} sends {} bytes of conversation",
            size(body)
        );
    }
    // The last request: the user's text is all there, the oldest outputs
    // are markers, the newest is whole, and the model is told.
    let last = bodies.last().unwrap();
    let messages = last["messages"].as_array().unwrap();
    assert!(
        messages
            .iter()
            .any(|m| m["role"] == "user" && m["content"] == "read big.txt twelve times")
    );
    let tools: Vec<&Value> = messages.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(tools.len(), READS);
    assert!(
        tools[0]["content"]
            .as_str()
            .unwrap()
            .contains("elided_bytes")
    );
    assert!(
        tools[READS - 1]["content"]
            .as_str()
            .unwrap()
            .contains("0123456789")
    );
    let system = messages[0]["content"].as_str().unwrap();
    assert!(system.contains("oldest tool output"), "{system}");
    runtime.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// The cap on model turns.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_its_turn_cap_escalates_and_stop_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // The tool budget is no bound here: the turn cap is.
    config.agents[0].budget = 1000;
    config.sessions.max_turns_per_message = 3;
    let runtime = start(config).await;
    let session = runtime.create_session("default").await.unwrap();
    let steps: Vec<Value> = (0..8)
        .map(|_| step("switch_model", json!({"model": "scripted"})))
        .collect();

    // Stop: the message fails at the cap.
    let id = runtime.send(&session, &plan(json!(steps))).await.unwrap();
    let approval = eventually(
        WAIT,
        "the turn-cap approval or the message's end",
        || async {
            if let Some(a) = runtime.approvals(true).await.unwrap().into_iter().next() {
                return Some(Some(a));
            }
            let m = runtime.sessions().message(&id).await.unwrap();
            m.state.is_final().then_some(None)
        },
    )
    .await
    .expect("the message ended without reaching its turn cap");
    assert!(
        approval.request.title.contains("Turn limit"),
        "{:?}",
        approval.request
    );
    runtime
        .resolve_approval(&approval.id, Answer::Option(STOP.into()), "test")
        .await
        .unwrap();
    let record = runtime.sessions().wait(&id, WAIT).await.unwrap().unwrap();
    assert_eq!(record.state, MessageState::Failed, "{record:?}");
    assert!(
        record
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("model turns"),
        "{record:?}"
    );

    // Continue: each grant allows three more turns, and the plan finishes.
    let id = runtime.send(&session, &plan(json!(steps))).await.unwrap();
    let mut granted = 0;
    loop {
        let next = eventually(WAIT, "an approval or the message's end", || async {
            if let Some(a) = runtime.approvals(true).await.unwrap().into_iter().next() {
                return Some(Some(a));
            }
            let m = runtime.sessions().message(&id).await.unwrap();
            m.state.is_final().then_some(None)
        })
        .await;
        let Some(approval) = next else { break };
        runtime
            .resolve_approval(&approval.id, Answer::Option(CONTINUE.into()), "test")
            .await
            .unwrap();
        granted += 1;
        assert!(granted < 10, "the grants do not end");
    }
    let record = runtime.sessions().wait(&id, WAIT).await.unwrap().unwrap();
    assert_eq!(steps_of(&record).len(), 8);
    // Nine turns (eight calls and the reply) at three a grant.
    assert_eq!(granted, 2);
    runtime.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// A journal that cannot be written.

/// The runtime's store, with journal writes that fail like a full disk
/// while `full` is set.
struct FullDisk {
    inner: Arc<dyn SessionStore>,
    full: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
}

impl SessionStore for FullDisk {
    fn create_session(&self, id: String, agent: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.inner.create_session(id, agent)
    }
    fn delete_session(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.inner.delete_session(id)
    }
    fn set_session_model(
        &self,
        id: String,
        model: Option<String>,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.inner.set_session_model(id, model)
    }
    fn session(&self, id: String) -> BoxFuture<'_, Result<Option<SessionRecord>, StoreError>> {
        self.inner.session(id)
    }
    fn sessions(&self) -> BoxFuture<'_, Result<Vec<SessionRecord>, StoreError>> {
        self.inner.sessions()
    }
    fn enqueue(
        &self,
        session: String,
        text: String,
    ) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        self.inner.enqueue(session, text)
    }
    fn set_message_state(
        &self,
        session: String,
        seq: u64,
        state: MessageState,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.inner.set_message_state(session, seq, state)
    }
    fn finish(&self, finish: Finish) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.inner.finish(finish)
    }
    fn journal(
        &self,
        session: String,
        message: u64,
        entry: String,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        if self.full.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Box::pin(async {
                Err(StoreError::Database {
                    op: "journal",
                    source: "database or disk is full".into(),
                })
            });
        }
        self.inner.journal(session, message, entry)
    }
    fn message(
        &self,
        session: String,
        seq: u64,
    ) -> BoxFuture<'_, Result<Option<MessageRecord>, StoreError>> {
        self.inner.message(session, seq)
    }
    fn messages(&self, session: String) -> BoxFuture<'_, Result<Vec<MessageRecord>, StoreError>> {
        self.inner.messages(session)
    }
    fn journal_entries(
        &self,
        session: String,
    ) -> BoxFuture<'_, Result<Vec<JournalRecord>, StoreError>> {
        self.inner.journal_entries(session)
    }
    fn unfinished_sessions(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        self.inner.unfinished_sessions()
    }
    fn compact_journals(
        &self,
        before: Timestamp,
        chunk: usize,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.inner.compact_journals(before, chunk)
    }
    fn prune_messages(
        &self,
        before: Timestamp,
        chunk: usize,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.inner.prune_messages(before, chunk)
    }
    fn message_pruned(&self, session: String, seq: u64) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.inner.message_pruned(session, seq)
    }
    fn prune_deleted_sessions(
        &self,
        before: Timestamp,
        chunk: usize,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.inner.prune_deleted_sessions(before, chunk)
    }
    fn set_agent_model(
        &self,
        agent: String,
        model: Option<String>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.set_agent_model(agent, model)
    }
    fn agent_models(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, StoreError>> {
        self.inner.agent_models()
    }
    fn journal_turn(
        &self,
        session: String,
        message: u64,
        entry: String,
        usage: TurnUsage,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        if self.full.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Box::pin(async {
                Err(StoreError::Database {
                    op: "journal",
                    source: "database or disk is full".into(),
                })
            });
        }
        self.inner.journal_turn(session, message, entry, usage)
    }
    fn session_tokens(
        &self,
        session: String,
    ) -> BoxFuture<'_, Result<Vec<ModelTokens>, StoreError>> {
        self.inner.session_tokens(session)
    }
    fn agent_tokens(&self) -> BoxFuture<'_, Result<Vec<AgentTokens>, StoreError>> {
        self.inner.agent_tokens()
    }
}

/// Serves the API over `runtime` on a free loopback port and returns a
/// reader of `GET /v1/sessions`: each session's `status`.
async fn session_statuses(
    runtime: &Runtime,
) -> impl Fn() -> BoxFuture<'static, Vec<(String, String)>> {
    let (base, client) = serve_api(runtime).await;
    let url = format!("{base}/v1/sessions");
    move || {
        let request = client.get(&url).bearer_auth(API_TOKEN);
        Box::pin(async move {
            let text = request.send().await.unwrap().text().await.unwrap();
            let body: Value = serde_json::from_str(&text).unwrap();
            body.as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["id"].as_str().unwrap().to_owned(),
                        s["status"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
    }
}

/// Counts, from the live event stream, the model's answers and the
/// messages finished.
#[derive(Default)]
struct Counts {
    model_answers: AtomicUsize,
    done: AtomicUsize,
    stalled: AtomicUsize,
    resumed: AtomicUsize,
}

fn count_events(runtime: &Runtime, session: String) -> Arc<Counts> {
    let counts = Arc::new(Counts::default());
    let mut rx = runtime.subscribe_events();
    let c = Arc::clone(&counts);
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(event) if event.session.as_deref() == Some(session.as_str()) => {
                    let counter = match &event.kind {
                        EventKind::ToolOutcome
                            if event.source.starts_with("model/")
                                && event.data["status"] == "success" =>
                        {
                            &c.model_answers
                        }
                        EventKind::MessageDone => &c.done,
                        EventKind::SessionStalled => &c.stalled,
                        EventKind::SessionResumed => &c.resumed,
                        _ => continue,
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                Err(e) => panic!("the event counter lagged: {e}"),
            }
        }
    });
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_cannot_journal_stalls_without_asking_the_model_again_then_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.sessions.stall_backoff = StallBackoff {
        min: Duration::from_millis(10),
        max: Duration::from_millis(50),
    };
    let full = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let (f, r) = (Arc::clone(&full), Arc::clone(&refused));
    config.session_store_layer = Some(SessionStoreLayer(Arc::new(move |inner| {
        Arc::new(FullDisk {
            inner,
            full: Arc::clone(&f),
            refused: Arc::clone(&r),
        })
    })));
    let runtime = start(config).await;
    let session = runtime.create_session("default").await.unwrap();
    let counts = count_events(&runtime, session.clone());
    let statuses = session_statuses(&runtime).await;
    assert_eq!(
        statuses().await,
        vec![(session.clone(), "active".to_owned())]
    );

    full.store(true, Ordering::SeqCst);
    let text = plan(json!([step("switch_model", json!({"model": "scripted"}))]));
    let id = runtime.send(&session, &text).await.unwrap();
    // Many tries against the full disk...
    eventually(WAIT, "ten refused journal writes", || async {
        (refused.load(Ordering::SeqCst) >= 10).then_some(())
    })
    .await;
    let stall = runtime.sessions().stalls().get(&session).expect("stalled");
    assert!(stall.attempts >= 5, "{stall:?}");
    assert!(stall.error.contains("disk is full"), "{stall:?}");
    // ...and the model was asked once: its reply waits to be written.
    // (The counter reads the event stream in order: once it has seen the
    // stall, it has seen the answer before it.)
    eventually(WAIT, "the stalled event", || async {
        (counts.stalled.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    assert_eq!(counts.model_answers.load(Ordering::SeqCst), 1);
    assert_eq!(counts.done.load(Ordering::SeqCst), 0);
    assert_eq!(runtime.metrics().sessions_stalled(), 1);
    assert_eq!(
        statuses().await,
        vec![(session.clone(), "stalled".to_owned())]
    );
    let message = runtime.sessions().message(&id).await.unwrap();
    assert!(!message.state.is_final(), "{message:?}");

    // Space again: the next try writes the held reply and the message ends,
    // once, with one more model turn (the plan's reply).
    full.store(false, Ordering::SeqCst);
    let record = runtime.sessions().wait(&id, WAIT).await.unwrap().unwrap();
    assert_eq!(steps_of(&record)[0]["status"], "success");
    assert!(!runtime.sessions().stalls().is_stalled(&session));
    eventually(WAIT, "the resumed and done events", || async {
        (counts.resumed.load(Ordering::SeqCst) == 1 && counts.done.load(Ordering::SeqCst) >= 1)
            .then_some(())
    })
    .await;
    assert_eq!(counts.model_answers.load(Ordering::SeqCst), 2);
    assert_eq!(counts.done.load(Ordering::SeqCst), 1);
    assert_eq!(counts.stalled.load(Ordering::SeqCst), 1);
    assert_eq!(runtime.metrics().sessions_stalled(), 0);
    assert_eq!(
        statuses().await,
        vec![(session.clone(), "active".to_owned())]
    );
    runtime.shutdown().await.unwrap();
}
