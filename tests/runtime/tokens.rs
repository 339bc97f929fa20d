//! Tokens and context overflow, end to end: usage counted once per turn
//! into the session resource, `/metrics` and the audit trail (and across a
//! restart); the per-agent token budget; a `CONTEXT_TOO_LONG` healed by
//! compaction. The scripted model reports a usage derived from sizes and
//! overflows above a plan's `context_window` (see `model::scripted`).

use std::time::Duration;

use hale::actors::escalation::Answer;
use hale::actors::event::EventKind;
use hale::actors::model::Usage;
use hale::actors::session::{CONTINUE, Entry, STOP};
use hale::actors::store::{MessageState, SessionStore};
use hale::runtime::Runtime;
use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

/// The HTTP API of `runtime` on a free loopback port; GETs a path.
struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn serve(runtime: &Runtime) -> Self {
        let (base, client) = serve_api(runtime).await;
        Self { base, client }
    }

    async fn get(&self, path: &str) -> String {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{path}: {response:?}");
        response.text().await.unwrap()
    }

    async fn session_usage(&self, session: &str) -> Value {
        let body: Value =
            serde_json::from_str(&self.get(&format!("/v1/sessions/{session}")).await).unwrap();
        body["usage"].clone()
    }

    /// `hale_model_tokens_total{model,kind}` samples of `model`.
    async fn metric_tokens(&self, model: &str) -> Value {
        let text = self.get("/metrics").await;
        let mut usage = json!({"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0});
        for kind in ["prompt", "completion", "cached"] {
            let prefix = format!("hale_model_tokens_total{{model=\"{model}\",kind=\"{kind}\"}} ");
            if let Some(line) = text.lines().find(|l| l.starts_with(&prefix)) {
                usage[format!("{kind}_tokens")] =
                    json!(line[prefix.len()..].parse::<u64>().unwrap());
            }
        }
        usage
    }
}

fn as_json(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
    })
}

/// The usage the model reported, summed over every reply the session
/// journaled (the journal keeps each reply as the model gave it), and
/// the number of those replies.
async fn reported(runtime: &Runtime, session: &str) -> (Usage, usize) {
    let journal = runtime
        .store()
        .journal_entries(session.to_owned())
        .await
        .unwrap();
    let mut sum = Usage::default();
    let mut turns = 0;
    for record in journal {
        if let Ok(Entry::Turn { reply, .. }) = serde_json::from_str::<Entry>(&record.entry) {
            let usage = reply.usage.expect("the scripted model reports usage");
            assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
            sum = sum.plus(usage);
            turns += 1;
        }
    }
    (sum, turns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_totals_in_the_session_resource_and_metrics_equal_the_usage_reported() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let runtime = start(config.clone()).await;
    let api = Api::serve(&runtime).await;
    let session = runtime.create_session("default").await.unwrap();
    let other = runtime.create_session("default").await.unwrap();
    let steps = json!([
        step("switch_model", json!({"model": "scripted"})),
        step("switch_model", json!({"model": "scripted"})),
    ]);
    for text in [plan(steps.clone()), "hello".to_owned()] {
        let record = ask(&runtime, &session, &text, WAIT).await;
        assert_eq!(record.state, MessageState::Done, "{record:?}");
    }
    let record = ask(&runtime, &other, &plan(steps), WAIT).await;
    assert_eq!(record.state, MessageState::Done, "{record:?}");

    let (mine, turns) = reported(&runtime, &session).await;
    let (theirs, their_turns) = reported(&runtime, &other).await;
    // Three turns for the plan, one for "hello".
    assert_eq!(turns, 4);
    assert_eq!(their_turns, 3);
    assert_eq!(api.session_usage(&session).await, as_json(mine));
    assert_eq!(api.session_usage(&other).await, as_json(theirs));
    // /metrics counts every session's turns, per model.
    assert_eq!(
        api.metric_tokens("scripted").await,
        as_json(mine.plus(theirs))
    );
    // The audit trail has one model_usage event per turn, with the same sums.
    let all = events(&runtime, Some(&session)).await;
    let usage_events = of_kind(&all, &EventKind::ModelUsage);
    assert_eq!(usage_events.len(), turns);
    let from_events = usage_events.iter().fold(Usage::default(), |sum, e| {
        sum.plus(serde_json::from_value(e.data.clone()).unwrap())
    });
    assert_eq!(from_events, mine);
    assert_eq!(usage_events[0].data["model"], "scripted");
    assert_eq!(usage_events[0].data["message"], format!("{session}:1"));
    // Per agent: both sessions run `default`.
    let agents = runtime.store().agent_tokens().await.unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].agent, "default");
    assert_eq!(agents[0].usage, mine.plus(theirs));
    runtime.shutdown().await.unwrap();

    // The totals outlive a restart.
    let runtime = start(config).await;
    let api = Api::serve(&runtime).await;
    assert_eq!(api.session_usage(&session).await, as_json(mine));
    runtime.shutdown().await.unwrap();
}

/// Waits for the next open approval, or `None` once the message ended.
async fn next_approval(
    runtime: &Runtime,
    id: &hale::actors::session::MessageId,
) -> Option<hale::actors::escalation::Approval> {
    eventually(WAIT, "an approval or the message's end", || async {
        if let Some(a) = runtime.approvals(true).await.unwrap().into_iter().next() {
            return Some(Some(a));
        }
        let m = runtime.sessions().message(id).await.unwrap();
        m.state.is_final().then_some(None)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_token_budget_escalates_and_a_replay_counts_no_turn_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // One token: every turn after the first finds the budget spent.
    config.agents[0].token_budget = Some(1);
    let runtime = start(config.clone()).await;
    let session = runtime.create_session("default").await.unwrap();
    let steps = json!([
        step("switch_model", json!({"model": "scripted"})),
        step("switch_model", json!({"model": "scripted"})),
    ]);

    // Stop: the message fails at the budget, before its second turn.
    let id = runtime.send(&session, &plan(steps.clone())).await.unwrap();
    let approval = next_approval(&runtime, &id)
        .await
        .expect("the message ended without spending its token budget");
    assert!(
        approval.request.title.contains("Token budget of 1 tokens"),
        "{:?}",
        approval.request
    );
    assert_eq!(approval.request.recommended.as_deref(), Some(STOP));
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
            .contains("token budget"),
        "{record:?}"
    );

    // Continue, with a restart while the session waits: the replayed
    // turns are not counted again.
    let id = runtime.send(&session, &plan(steps)).await.unwrap();
    let approval = next_approval(&runtime, &id).await.expect("no approval");
    runtime.shutdown().await.unwrap();
    let runtime = start(config).await;
    runtime
        .resolve_approval(&approval.id, Answer::Option(CONTINUE.into()), "test")
        .await
        .unwrap();
    let mut granted = 1;
    while let Some(approval) = next_approval(&runtime, &id).await {
        runtime
            .resolve_approval(&approval.id, Answer::Option(CONTINUE.into()), "test")
            .await
            .unwrap();
        granted += 1;
        assert!(granted < 10, "the grants do not end");
    }
    let record = runtime.sessions().wait(&id, WAIT).await.unwrap().unwrap();
    assert_eq!(steps_of(&record).len(), 2);
    // Before the second turn and before the third.
    assert_eq!(granted, 2);
    let (sum, turns) = reported(&runtime, &session).await;
    // One turn of the stopped message, three of the granted one.
    assert_eq!(turns, 4);
    let tokens = runtime
        .store()
        .session_tokens(session.clone())
        .await
        .unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].usage, sum);
    assert_eq!(tokens[0].turns, 4);
    let all = events(&runtime, Some(&session)).await;
    assert_eq!(of_kind(&all, &EventKind::ModelUsage).len(), 4);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_overflow_is_healed_by_compaction_and_recorded_as_a_fix() {
    const WINDOW: usize = 15_000;
    let dir = tempfile::tempdir().unwrap();
    let runtime = start(config(dir.path())).await;
    // 22 KB of output: the second turn's conversation is over the window.
    let workspace = runtime.config().builtin.workspace_root.clone();
    std::fs::write(workspace.join("big.txt"), "0123456789\n".repeat(2000)).unwrap();
    let session = runtime.create_session("default").await.unwrap();
    let text = json!({
        "steps": [step("read_file", json!({"path": "big.txt"}))],
        "reply": "done",
        "context_window": WINDOW,
    })
    .to_string();
    let record = ask(&runtime, &session, &text, WAIT).await;
    let steps = steps_of(&record);
    // The turn that answered saw the compacted conversation: the output
    // it was shown is a marker.
    assert!(
        steps[0]["data"]["elided_bytes"].as_u64().unwrap() > 20_000,
        "{steps:?}"
    );
    let all = events(&runtime, Some(&session)).await;
    let fixes = of_kind(&all, &EventKind::Fix);
    assert_eq!(fixes.len(), 1, "{fixes:?}");
    let fix = &fixes[0].data;
    assert_eq!(fix["code"], "CONTEXT_TOO_LONG");
    assert_eq!(fix["action"], "compacted");
    assert_eq!(fix["healed"], true);
    assert_eq!(fix["elided"], 1);
    let before = fix["before_bytes"].as_u64().unwrap() as usize;
    let after = fix["after_bytes"].as_u64().unwrap() as usize;
    assert!(before > WINDOW && after <= WINDOW, "{fix}");
    // The stated limit (window / size, less a tenth) was the new budget.
    assert_eq!(fix["budget"].as_u64().unwrap() as usize, WINDOW * 9 / 10);

    // A conversation compaction cannot bring under the window: the retry
    // overflows again and the message fails, the fix recorded as such.
    let text = json!({
        "steps": [step("read_file", json!({"path": "big.txt"}))],
        "reply": "done",
        "context_window": 300,
    })
    .to_string();
    let record = ask(&runtime, &session, &text, WAIT).await;
    assert_eq!(record.state, MessageState::Failed, "{record:?}");
    assert!(
        record
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("prompt is too long"),
        "{record:?}"
    );
    let all = events(&runtime, Some(&session)).await;
    let fixes = of_kind(&all, &EventKind::Fix);
    assert_eq!(fixes.len(), 2, "{fixes:?}");
    assert_eq!(fixes[1].data["healed"], false);

    // Nothing to compact (no tool output at all): no retry, no fix.
    let fresh = runtime.create_session("default").await.unwrap();
    let text = json!({"reply": "done", "context_window": 10}).to_string();
    let record = ask(&runtime, &fresh, &text, WAIT).await;
    assert_eq!(record.state, MessageState::Failed, "{record:?}");
    let all = events(&runtime, Some(&fresh)).await;
    assert!(of_kind(&all, &EventKind::Fix).is_empty());
    let attempts = of_kind(&all, &EventKind::ToolAttempt)
        .into_iter()
        .filter(|e| e.source.starts_with("model/"))
        .count();
    assert!(attempts <= 1, "the model was asked {attempts} times");
    runtime.shutdown().await.unwrap();
}
