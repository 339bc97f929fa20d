//! Bounded state through the whole runtime: the queue limits (released
//! by a delete, checked atomically with the enqueue), retention of
//! finished messages, decided approvals and deleted sessions, and the
//! agent-wide model switch kept across a restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::routing::post;
use hale::actors::builtin::BlockRule;
use hale::actors::escalation::Answer;
use hale::actors::model::{ModelConfig, Provider};
use hale::actors::session::{DENY, SessionError};
use hale::actors::store::{MessageState, SessionStore, Store};
use hale::runtime::{RuntimeConfig, RuntimeError};
use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

/// A plan whose one call needs a human: it keeps its message open.
fn held() -> String {
    plan(json!([step("exec", json!({"command": "echo deploy"}))]))
}

fn with_deploy_rule(config: &mut RuntimeConfig) {
    config
        .builtin
        .exec
        .blocked
        .push(BlockRule::new("^echo deploy", "deploys need a human"));
}

fn is_busy(result: &Result<impl std::fmt::Debug, RuntimeError>) -> bool {
    matches!(
        result,
        Err(RuntimeError::Session(SessionError::Busy { .. }))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_full_sessions_releases_their_queue_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    with_deploy_rule(&mut config);
    config.sessions.max_queued_per_session = 2;
    config.sessions.max_queued_total = 4;
    let runtime = start(config).await;
    // Six full sessions deleted: three times the total limit.
    for _ in 0..6 {
        let session = runtime.create_session("default").await.unwrap();
        runtime.send(&session, &held()).await.unwrap();
        runtime.send(&session, &held()).await.unwrap();
        assert!(is_busy(&runtime.send(&session, &held()).await));
        runtime.sessions().delete(&session).await.unwrap();
    }
    assert_eq!(runtime.sessions().queued(), 0);
    let session = runtime.create_session("default").await.unwrap();
    let record = ask(&runtime, &session, &plan(json!([])), WAIT).await;
    assert_eq!(record.state, MessageState::Done);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_enqueue_exactly_the_free_slots() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    with_deploy_rule(&mut config);
    config.sessions.max_queued_per_session = 5;
    config.sessions.max_queued_total = 8;
    let runtime = start(config).await;
    let session = runtime.create_session("default").await.unwrap();
    // One message waits for a human: four slots left in the session.
    runtime.send(&session, &held()).await.unwrap();
    let text = held();
    let sends = (0..40).map(|_| runtime.send(&session, &text));
    let results = futures_util::future::join_all(sends).await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(accepted, 4, "{results:?}");
    assert!(results.iter().filter(|r| r.is_err()).all(is_busy));
    assert_eq!(
        runtime.sessions().messages(&session).await.unwrap().len(),
        5
    );

    // The total limit the same way: three slots left over all sessions.
    let others: Vec<String> =
        futures_util::future::join_all((0..20).map(|_| runtime.create_session("default")))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let sends = others.iter().map(|s| runtime.send(s, &text));
    let results = futures_util::future::join_all(sends).await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(accepted, 3, "{results:?}");
    assert!(results.iter().filter(|r| r.is_err()).all(is_busy));
    assert_eq!(runtime.sessions().queued(), 8);
    runtime.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// A fake OpenAI endpoint that records what it is sent.

async fn recording_model(seen: Arc<Mutex<Vec<Value>>>) -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |body: String| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap_or(Value::Null));
                let reply = json!({ "id": "c", "object": "chat.completion",
                    "choices": [{ "index": 0,
                        "message": { "role": "assistant", "content": "noted" },
                        "finish_reason": "stop" }] });
                (
                    StatusCode::OK,
                    [("content-type", HeaderValue::from_static("application/json"))],
                    reply.to_string(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/v1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruned_messages_answer_gone_and_leave_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let base = recording_model(Arc::clone(&seen)).await;
    let mut config = config(dir.path());
    config.models = vec![ModelConfig::remote(
        "local",
        Provider::Openai,
        base,
        "test-model",
        None,
    )];
    config.agents[0].models = vec!["local".to_owned()];
    // Applied by hand below, not by the timer.
    config.compaction_interval = Duration::from_secs(3600);
    config.retention.messages = Some(Duration::ZERO);
    let runtime = start(config).await;
    let session = runtime.create_session("default").await.unwrap();
    let first = ask(&runtime, &session, "first-alpha", WAIT).await;
    ask(&runtime, &session, "second-beta", WAIT).await;
    let sent = |i: usize| seen.lock().unwrap()[i]["messages"].to_string();
    assert!(sent(1).contains("first-alpha"), "{}", sent(1));

    runtime.apply_retention().await;
    let id = hale::actors::session::MessageId {
        session: session.clone(),
        seq: first.seq,
    };
    let gone = runtime.sessions().message(&id).await;
    assert!(matches!(gone, Err(SessionError::Pruned(_))), "{gone:?}");
    let never = hale::actors::session::MessageId {
        session: session.clone(),
        seq: 99,
    };
    let unknown = runtime.sessions().message(&never).await;
    assert!(
        matches!(unknown, Err(SessionError::UnknownMessage(_))),
        "{unknown:?}"
    );
    assert!(
        runtime
            .sessions()
            .messages(&session)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        runtime
            .store()
            .journal_entries(session.clone())
            .await
            .unwrap()
            .is_empty()
    );

    let after = ask(&runtime, &session, "third-gamma", WAIT).await;
    assert_eq!(after.seq, 3, "a pruned message's id is never reused");
    let third = sent(2);
    assert!(third.contains("third-gamma"), "{third}");
    assert!(
        !third.contains("first-alpha") && !third.contains("second-beta"),
        "pruned messages were sent to the model again: {third}"
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decided_approvals_and_deleted_sessions_are_pruned_by_the_timer() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    with_deploy_rule(&mut config);
    config.compaction_interval = Duration::from_millis(50);
    config.retention.messages = None;
    config.retention.approvals = Some(Duration::ZERO);
    config.retention.deleted_sessions = Some(Duration::ZERO);
    config.retention.chunk = 2;
    let runtime = start(config).await;

    // A decided approval goes; an open one stays.
    let session = runtime.create_session("default").await.unwrap();
    let id = runtime.send(&session, &held()).await.unwrap();
    let approval = eventually(WAIT, "an open approval", || async {
        runtime.approvals(true).await.unwrap().into_iter().next()
    })
    .await;
    runtime
        .resolve_approval(&approval.id, Answer::Option(DENY.into()), "test")
        .await
        .unwrap();
    runtime.sessions().wait(&id, WAIT).await.unwrap().unwrap();
    let open = runtime.create_session("default").await.unwrap();
    runtime.send(&open, &held()).await.unwrap();
    let still_open = eventually(WAIT, "the second approval", || async {
        runtime.approvals(true).await.unwrap().into_iter().next()
    })
    .await;
    eventually(WAIT, "the decided approval to be pruned", || async {
        let listed = runtime.approvals(false).await.unwrap();
        let stored = runtime.store().approvals(None).await.unwrap();
        (listed.len() == 1 && stored.len() == 1).then_some(())
    })
    .await;
    assert_eq!(runtime.approvals(false).await.unwrap()[0].id, still_open.id);

    // A deleted session goes with its inbox and journal (more rows than
    // one chunk); a live one stays.
    for _ in 0..3 {
        ask(&runtime, &session, &plan(json!([])), WAIT).await;
    }
    runtime.sessions().delete(&session).await.unwrap();
    eventually(WAIT, "the deleted session to be pruned", || async {
        let store = runtime.store();
        let gone = store.session(session.clone()).await.unwrap().is_none()
            && store.messages(session.clone()).await.unwrap().is_empty()
            && store
                .journal_entries(session.clone())
                .await
                .unwrap()
                .is_empty();
        gone.then_some(())
    })
    .await;
    assert!(runtime.sessions().get(&open).await.is_ok());
    assert_eq!(
        runtime.store().messages(open.clone()).await.unwrap().len(),
        1
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_wide_model_switch_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let make = || {
        let mut config = config(dir.path());
        config.models.push(ModelConfig::scripted("backup"));
        config
    };
    let runtime = start(make()).await;
    let switched = runtime
        .sessions()
        .switch_agent_model("default", Some("backup"))
        .await
        .unwrap();
    assert_eq!(switched.as_deref(), Some("backup"));
    runtime.shutdown().await.unwrap();
    drop(runtime);

    let runtime = start(make()).await;
    assert_eq!(
        runtime.sessions().agent_model("default").as_deref(),
        Some("backup")
    );
    // Restoring the chain is kept too.
    runtime
        .sessions()
        .switch_agent_model("default", None)
        .await
        .unwrap();
    runtime.shutdown().await.unwrap();
    drop(runtime);
    let runtime = start(make()).await;
    assert_eq!(runtime.sessions().agent_model("default"), None);
    runtime.shutdown().await.unwrap();
}
