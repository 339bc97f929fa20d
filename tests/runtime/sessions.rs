//! Sessions through the whole runtime: plans, order, kills mid-call,
//! approvals for blocked and critical calls, the budget, switch_model.

use std::time::Duration;

use hale::actors::builtin::BlockRule;
use hale::actors::escalation::Answer;
use hale::actors::event::EventKind;
use hale::actors::session::{APPROVE, DENY, Entry, STOP};
use hale::actors::store::{MessageState, SessionStore};
use serde_json::json;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_runs_every_step_through_the_tool_layer_and_replies_with_the_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = start(config(dir.path())).await;
    let session = runtime.create_session("default").await.unwrap();
    let text = plan(json!([
        step(
            "write_file",
            json!({"path": "notes/a.txt", "content": "hello"})
        ),
        step("read_file", json!({"path": "notes/a.txt"})),
        step("exec", json!({"command": "cat notes/a.txt; exit 3"})),
        step("no_such_tool", json!({})),
    ]));
    let record = ask(&runtime, &session, &text, WAIT).await;
    let steps = steps_of(&record);
    assert_eq!(steps.len(), 4, "{steps:?}");
    assert_eq!(steps[0]["status"], "success");
    assert_eq!(steps[1]["status"], "success");
    assert!(steps[1].to_string().contains("hello"), "{}", steps[1]);
    // A failed step does not stop the plan; its outcome is classified.
    assert_eq!(steps[2]["status"], "error");
    assert_eq!(steps[3]["status"], "error");
    assert!(
        steps[3].to_string().contains("read_file") || steps[3]["hints"].is_array(),
        "unknown tools come back with hints: {}",
        steps[3]
    );
    // Anything else gets a plain acknowledgement.
    let plain = ask(&runtime, &session, "hello there", WAIT).await;
    assert_eq!(plain.state, MessageState::Done);
    assert!(!plain.reply.unwrap_or_default().is_empty());
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_run_in_order_and_waiters_survive_kills_of_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = start(config(dir.path())).await;
    let session = runtime.create_session("default").await.unwrap();
    let mut ids = Vec::new();
    for n in 0..6 {
        let text = plan(json!([step(
            "exec",
            json!({"command": format!("sleep 0.05; echo {n} >> order.txt")})
        )]));
        ids.push(runtime.send(&session, &text).await.unwrap());
    }
    let path = format!("hale/sessions/{session}");
    let killer = {
        let runtime = runtime.clone();
        tokio::spawn(async move {
            for _ in 0..15 {
                let _ = runtime.kill(&path).await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    for id in &ids {
        let record = runtime
            .sessions()
            .wait(id, WAIT)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{id} not answered"));
        assert_eq!(record.state, MessageState::Done, "{record:?}");
    }
    killer.await.unwrap();
    let workspace = runtime.config().builtin.workspace_root.clone();
    // Each command ran exactly once, in order: a kill of the session does
    // not cancel a call in flight, and nothing is run twice.
    assert_eq!(
        lines(&workspace.join("order.txt")),
        (0..6).map(|n| n.to_string()).collect::<Vec<_>>()
    );
    let tree = runtime.tree().await.unwrap();
    let node = tree
        .iter()
        .find(|n| n.id == format!("hale/sessions/{session}"))
        .unwrap();
    assert!(node.restarts >= 1, "the session was restarted: {node:?}");
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_killed_mid_call_resumes_from_its_journal_without_rerunning_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = start(config(dir.path())).await;
    let session = runtime.create_session("default").await.unwrap();
    let text = plan(json!([
        step(
            "exec",
            json!({"command": "sleep 0.4; echo ran >> once.txt"})
        ),
        step("exec", json!({"command": "echo after >> once.txt"})),
    ]));
    let id = runtime.send(&session, &text).await.unwrap();
    let workspace = runtime.config().builtin.workspace_root.clone();
    // Kill while the first command sleeps.
    tokio::time::sleep(Duration::from_millis(150)).await;
    runtime
        .kill(&format!("hale/sessions/{session}"))
        .await
        .unwrap();
    let record = runtime.sessions().wait(&id, WAIT).await.unwrap().unwrap();
    let steps = steps_of(&record);
    assert_eq!(steps[0]["status"], "success", "{steps:?}");
    assert_eq!(lines(&workspace.join("once.txt")), vec!["ran", "after"]);
    // The journal holds one intent and one outcome per call.
    let journal = runtime
        .store()
        .journal_entries(session.clone())
        .await
        .unwrap();
    let entries: Vec<Entry> = journal
        .iter()
        .map(|r| serde_json::from_str(&r.entry).unwrap())
        .collect();
    let intents = entries
        .iter()
        .filter(|e| matches!(e, Entry::Intent { .. }))
        .count();
    let outcomes = entries
        .iter()
        .filter(|e| matches!(e, Entry::Outcome { .. }))
        .count();
    assert_eq!((intents, outcomes), (2, 2), "{entries:?}");
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_call_runs_exactly_once_when_approved_and_never_when_denied() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config
        .builtin
        .exec
        .blocked
        .push(BlockRule::new("^echo deploy", "deploys need a human"));
    let runtime = start(config).await;
    let workspace = runtime.config().builtin.workspace_root.clone();
    let session = runtime.create_session("default").await.unwrap();
    let mut notices = runtime.subscribe_approvals();

    let text = plan(json!([step(
        "exec",
        json!({"command": "echo deploy >> deploys.txt"})
    )]));
    let id = runtime.send(&session, &text).await.unwrap();
    let approval = eventually(WAIT, "an open approval", || async {
        runtime.approvals(true).await.unwrap().into_iter().next()
    })
    .await;
    assert!(approval.request.options.iter().any(|o| o.id == APPROVE));
    assert!(!approval.request.diagnosis.what.is_empty());
    assert!(
        lines(&workspace.join("deploys.txt")).is_empty(),
        "ran before approval"
    );
    eventually(WAIT, "the message to wait for the approval", || async {
        let state = runtime.sessions().message(&id).await.unwrap().state;
        (state == MessageState::WaitingApproval).then_some(())
    })
    .await;
    runtime
        .resolve_approval(&approval.id, Answer::Option(APPROVE.into()), "test")
        .await
        .unwrap();
    let record = runtime.sessions().wait(&id, WAIT).await.unwrap().unwrap();
    assert_eq!(steps_of(&record)[0]["status"], "success");
    assert_eq!(lines(&workspace.join("deploys.txt")), vec!["deploy"]);
    assert!(notices.try_recv().is_ok(), "approval notices are published");

    // The same command again needs a new approval; denied, it never runs.
    let id = runtime.send(&session, &text).await.unwrap();
    let approval = eventually(WAIT, "a second approval", || async {
        runtime.approvals(true).await.unwrap().into_iter().next()
    })
    .await;
    runtime
        .resolve_approval(&approval.id, Answer::Option(DENY.into()), "test")
        .await
        .unwrap();
    let record = runtime.sessions().wait(&id, WAIT).await.unwrap().unwrap();
    assert_eq!(steps_of(&record)[0]["status"], "blocked");
    assert_eq!(lines(&workspace.join("deploys.txt")), vec!["deploy"]);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_escalates_and_stop_fails_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.agents[0].budget = 2;
    let runtime = start(config).await;
    let session = runtime.create_session("default").await.unwrap();
    let text = plan(json!([
        step("exec", json!({"command": "true"})),
        step("exec", json!({"command": "true"})),
        step("exec", json!({"command": "echo third >> third.txt"})),
    ]));
    let id = runtime.send(&session, &text).await.unwrap();
    let approval = eventually(WAIT, "the budget approval", || async {
        runtime.approvals(true).await.unwrap().into_iter().next()
    })
    .await;
    assert!(
        approval.request.title.contains("budget"),
        "{:?}",
        approval.request
    );
    runtime
        .resolve_approval(&approval.id, Answer::Option(STOP.into()), "test")
        .await
        .unwrap();
    let record = runtime.sessions().wait(&id, WAIT).await.unwrap().unwrap();
    assert_eq!(record.state, MessageState::Failed, "{record:?}");
    assert!(record.error.unwrap_or_default().contains("budget"));
    let workspace = runtime.config().builtin.workspace_root.clone();
    assert!(lines(&workspace.join("third.txt")).is_empty());
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_model_to_a_misspelt_name_lists_the_configured_models() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = start(config(dir.path())).await;
    let session = runtime.create_session("default").await.unwrap();
    let text = plan(json!([
        step("switch_model", json!({"model": "scriptd"})),
        step("switch_model", json!({"model": "scripted"})),
    ]));
    let record = ask(&runtime, &session, &text, WAIT).await;
    let steps = steps_of(&record);
    assert_eq!(steps[0]["status"], "error");
    assert!(
        steps[0]["hints"].to_string().contains("scripted"),
        "{}",
        steps[0]
    );
    assert_eq!(steps[1]["status"], "success");
    let record = runtime.sessions().get(&session).await.unwrap();
    assert_eq!(record.model.as_deref(), Some("scripted"));
    let events = events(&runtime, Some(&session)).await;
    assert!(!of_kind(&events, &EventKind::MessageDone).is_empty());
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journals_of_finished_messages_are_compacted_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.journal_retention = Duration::ZERO;
    config.compaction_interval = Duration::from_millis(50);
    let runtime = start(config).await;
    let session = runtime.create_session("default").await.unwrap();
    let text = plan(json!([step("exec", json!({"command": "echo one"}))]));
    let first = ask(&runtime, &session, &text, WAIT).await;
    assert_eq!(first.state, MessageState::Done);
    eventually(WAIT, "the journal of message 1 to be compacted", || async {
        let journal = runtime
            .store()
            .journal_entries(session.clone())
            .await
            .unwrap();
        journal.iter().all(|r| r.message != first.seq).then_some(())
    })
    .await;
    // The inbox keeps the text and the reply; the next message runs.
    let kept = runtime.sessions().messages(&session).await.unwrap();
    assert_eq!(kept[0].reply, first.reply);
    let second = ask(&runtime, &session, &text, WAIT).await;
    assert_eq!(steps_of(&second)[0]["status"], "success");
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_that_stays_open_with_no_fallback_is_escalated() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // An MCP server nobody answers for, no backup.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", dead.local_addr().unwrap());
    drop(dead);
    let mut mcp = hale::actors::mcp::McpServerConfig::http("ghost", url);
    mcp.connect_timeout = Duration::from_millis(200);
    config.mcp = vec![mcp];
    config.dispatch.breaker_failures = 2;
    config.dispatch.breaker_cool_down = Duration::from_secs(60);
    config.dispatch.retry.max_retry_after = Duration::from_millis(100);
    let runtime = start(config).await;
    let session = runtime.create_session("default").await.unwrap();
    let text = plan(json!([step("ghost__echo", json!({"text": "hi"}))]));
    let id = runtime.send(&session, &text).await.unwrap();
    let approval = eventually(WAIT, "the breaker approval", || async {
        let message = runtime.sessions().message(&id).await.unwrap();
        assert!(
            !message.state.is_final(),
            "finished without escalating: {message:?}"
        );
        runtime.approvals(true).await.unwrap().into_iter().next()
    })
    .await;
    assert!(
        approval.request.diagnosis.why.contains("breaker"),
        "{:?}",
        approval.request.diagnosis
    );
    runtime
        .resolve_approval(&approval.id, Answer::Option("retry".into()), "test")
        .await
        .unwrap();
    let record = runtime.sessions().wait(&id, WAIT).await.unwrap().unwrap();
    let steps = steps_of(&record);
    assert_eq!(steps[0]["code"], "MCP_SERVER_UNREACHABLE", "{}", steps[0]);
    runtime.shutdown().await.unwrap();
}
