//! The seed's four scenarios, against real faults, with the scripted
//! model. Each plan holds only the agent's own steps; the retry, the
//! disable, the fallback, the escalation and the lesson are the runtime's,
//! and each test proves them from the events the runtime emitted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use hale::actors::builtin::AllowList;
use hale::actors::escalation::Answer;
use hale::actors::event::EventKind;
use hale::actors::mcp::{McpServerConfig, McpState};
use hale::actors::session::{ABORT_OPTION, PROCEED};
use hale::actors::store::MessageState;
use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_1_web_fetch_times_out_once_then_succeeds_after_a_retry() {
    // A loopback API whose first answer never comes in time.
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let app = Router::new().route(
        "/data",
        get(move || {
            let counter = Arc::clone(&counter);
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                "{\"temperature\": 21}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}/data");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.builtin.web_fetch.timeout = Duration::from_millis(400);
    // web_fetch refuses loopback unless allow-listed: allow this API only.
    config.builtin.web_fetch.allow = AllowList::parse([addr.to_string()]).unwrap();
    let runtime = start(config).await;
    let session = runtime.create_session("default").await.unwrap();
    let record = ask(
        &runtime,
        &session,
        &plan(json!([step("web_fetch", json!({ "url": url }))])),
        WAIT,
    )
    .await;
    let steps = steps_of(&record);
    assert_eq!(steps[0]["status"], "success", "{steps:?}");
    assert!(steps[0].to_string().contains("temperature"));
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    let events = events(&runtime, Some(&session)).await;
    let retries = of_kind(&events, &EventKind::Retry);
    assert_eq!(retries.len(), 1, "one retry: {retries:?}");
    assert_eq!(retries[0].data["after"], "ETIMEDOUT");
    // Model requests are attempts too (`model/...`); the tool's are two.
    let attempts: Vec<_> = of_kind(&events, &EventKind::ToolAttempt)
        .into_iter()
        .filter(|e| !e.source.starts_with("model/"))
        .collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(of_kind(&events, &EventKind::EscalationOpened).is_empty());
    runtime.shutdown().await.unwrap();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_2_a_dead_mcp_server_is_disabled_and_the_backup_serves_and_a_lesson_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let down = dir.path().join("weather-is-down");
    let wrapper = dir.path().join("weather.sh");
    script(
        &wrapper,
        &format!(
            "[ -e '{}' ] && {{ echo 'weather-mcp: upstream unreachable' >&2; exit 1; }}\nexec '{}' fault-mcp --name weather",
            down.display(),
            hale_bin().display()
        ),
    );
    let mut weather = McpServerConfig::stdio("weather", &wrapper, Vec::<String>::new());
    weather.fallbacks = vec!["weather-backup".to_owned()];
    weather.restart_min = Duration::from_millis(50);
    weather.restart_max = Duration::from_millis(200);
    let backup = McpServerConfig::stdio(
        "weather-backup",
        hale_bin(),
        ["fault-mcp", "--name", "weather-backup"],
    );
    let mut config = config(dir.path());
    config.mcp = vec![weather, backup];
    let runtime = start(config).await;
    for name in ["weather", "weather-backup"] {
        assert!(
            runtime.mcp().wait_ready(name, WAIT).await.unwrap(),
            "{name} ready"
        );
    }
    // The server goes down: its process is killed and it cannot come back.
    std::fs::write(&down, "").unwrap();
    let pid = runtime.mcp().status("weather").unwrap().pid.unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", "--", &format!("-{pid}")])
        .status();
    assert!(killed.is_ok_and(|s| s.success()), "kill -9 -{pid}");
    eventually(WAIT, "weather to be down", || async {
        let status = runtime.mcp().status("weather").unwrap();
        (status.state != McpState::Ready).then_some(())
    })
    .await;

    let session = runtime.create_session("default").await.unwrap();
    let record = ask(
        &runtime,
        &session,
        &plan(json!([step(
            "weather__echo",
            json!({"text": "forecast Paris"})
        )])),
        WAIT,
    )
    .await;
    let steps = steps_of(&record);
    assert_eq!(steps[0]["status"], "success", "{steps:?}");
    assert_eq!(steps[0]["served_by"], "weather-backup", "{}", steps[0]);

    let events = events(&runtime, None).await;
    let fallbacks = of_kind(&events, &EventKind::Fallback);
    assert!(!fallbacks.is_empty(), "a fallback event");
    let incident = of_kind(&events, &EventKind::Incident)
        .into_iter()
        .find(|e| e.data["endpoint"] == "weather")
        .cloned()
        .expect("an incident event for weather");
    assert!(
        incident.data["recent_errors"].as_u64().unwrap_or(0) > 0,
        "read the audit trail for the server's recent errors: {incident:?}"
    );
    assert_eq!(incident.data["disabled"], true, "{incident:?}");
    assert_eq!(
        runtime.mcp().status("weather").unwrap().state,
        McpState::Disabled
    );
    let memory = eventually(WAIT, "the lesson in MEMORY.md", || async {
        let text = runtime.memory().read().await.ok()?;
        text.contains("weather unreachable").then_some(text)
    })
    .await;
    assert!(memory.contains("fell back to weather-backup"), "{memory}");
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_3_already_exists_is_checked_and_the_workflow_continues_as_success() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = start(config(dir.path())).await;
    let workspace = runtime.config().builtin.workspace_root.clone();
    script(
        &workspace.join("kubectl"),
        r#"echo "$*" >> kubectl.calls
case "$1" in
  apply) echo 'Error from server (AlreadyExists): error when creating "deployment.yaml": deployments.apps "api-server" already exists' >&2; exit 1;;
  get) printf 'apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api-server\nspec:\n  replicas: 3\n'; exit 0;;
esac
exit 2"#,
    );
    let session = runtime.create_session("default").await.unwrap();
    let record = ask(
        &runtime,
        &session,
        &plan(json!([
            step(
                "exec",
                json!({"command": "./kubectl apply -f deployment.yaml"})
            ),
            step(
                "exec",
                json!({"command": "./kubectl get deployment api-server -o yaml"})
            ),
        ])),
        WAIT,
    )
    .await;
    assert_eq!(record.state, MessageState::Done);
    let steps = steps_of(&record);
    assert_eq!(steps[0]["code"], "ALREADY_EXISTS", "{}", steps[0]);
    assert_eq!(steps[0]["retryable"], false);
    assert_eq!(steps[0]["recoverable"], true);
    assert_eq!(steps[1]["status"], "success");
    assert!(steps[1].to_string().contains("replicas: 3"));
    // Not retried (a command that ran is never re-run), not escalated.
    assert_eq!(
        lines(&workspace.join("kubectl.calls")),
        vec![
            "apply -f deployment.yaml",
            "get deployment api-server -o yaml"
        ]
    );
    let events = events(&runtime, Some(&session)).await;
    assert!(of_kind(&events, &EventKind::Retry).is_empty());
    assert!(of_kind(&events, &EventKind::EscalationOpened).is_empty());
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_4_permission_denied_is_escalated_with_options_and_the_decision_resumes_the_session()
 {
    let dir = tempfile::tempdir().unwrap();
    let runtime = start(config(dir.path())).await;
    let workspace = runtime.config().builtin.workspace_root.clone();
    script(
        &workspace.join("dropdb"),
        r#"echo "$*" >> dropdb.calls
echo "dropdb: error: database removal failed: ERROR:  permission denied to drop database \"$1\"" >&2
exit 1"#,
    );
    let session = runtime.create_session("default").await.unwrap();
    let text = plan_with_approval(
        json!([step(
            "exec",
            json!({"command": "./dropdb production_customers"})
        )]),
        json!({
            ABORT_OPTION: [step("exec", json!({"command": "echo cleanup aborted >> cleanup.log"}))],
            PROCEED: [step("exec", json!({"command": "echo proceeding >> cleanup.log"}))],
        }),
    );
    let id = runtime.send(&session, &text).await.unwrap();
    let approval = eventually(WAIT, "the approval", || async {
        let message = runtime.sessions().message(&id).await.unwrap();
        assert!(
            !message.state.is_final(),
            "finished without an approval: {message:?}"
        );
        runtime.approvals(true).await.unwrap().into_iter().next()
    })
    .await;
    let request = &approval.request;
    assert!(request.title.contains("PERMISSION_DENIED"), "{request:?}");
    assert!(
        request.options.iter().any(|o| o.id == PROCEED),
        "{:?}",
        request.options
    );
    assert!(request.recommended.is_some());
    assert!(
        request.diagnosis.why.contains("critical"),
        "{:?}",
        request.diagnosis
    );
    assert!(!request.diagnosis.recommendation.is_empty());
    eventually(WAIT, "the message to wait for the approval", || async {
        let state = runtime.sessions().message(&id).await.unwrap().state;
        (state == MessageState::WaitingApproval).then_some(())
    })
    .await;
    runtime
        .resolve_approval(
            &approval.id,
            Answer::Option(ABORT_OPTION.into()),
            "operator",
        )
        .await
        .unwrap();
    let record = runtime.sessions().wait(&id, WAIT).await.unwrap().unwrap();
    let steps = steps_of(&record);
    assert_eq!(steps[0]["code"], "PERMISSION_DENIED");
    assert_eq!(steps[0]["severity"], "critical");
    assert_eq!(steps.len(), 2, "the chosen option's steps ran: {steps:?}");
    assert_eq!(
        lines(&workspace.join("cleanup.log")),
        vec!["cleanup aborted"]
    );
    assert_eq!(
        lines(&workspace.join("dropdb.calls")).len(),
        1,
        "never re-run"
    );

    let events = events(&runtime, Some(&session)).await;
    assert_eq!(of_kind(&events, &EventKind::EscalationOpened).len(), 1);
    let memory = runtime.memory().read().await.unwrap();
    assert!(
        memory.contains("needed a human"),
        "the decision is a lesson: {memory}"
    );
    let _: Value = json!(null);
    runtime.shutdown().await.unwrap();
}
