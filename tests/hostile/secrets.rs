//! Secrets stay secret (issue 11, part 4): a hostile agent prints a
//! password and the control-plane token through every tool it has, tries
//! to write a masked read back over the real secret, and finds the data
//! directory open to other users. Each test asserts that nothing leaked,
//! that the message ended in its documented state, and that hale still
//! serves.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use hale::actors::builtin::BlockRule;
use hale::actors::escalation::Answer;
use hale::actors::event::{Event, EventKind};
use hale::actors::mcp::{McpServerConfig, McpTransport};
use hale::actors::session::{ABORT_OPTION, DENY};
use hale::actors::store::MessageState;
use serde_json::{Value, json};

use crate::support_secrets::*;

/// A password only a pattern can recognise (`\b` never fires after `_`).
const PASSWORD: &str = "hunter2hunter2";
/// The control-plane token: a value the runtime knows.
const TOKEN: &str = "4f0c9e1b7a6d5c3b2a19087f6e5d4c3b2a1908f7e6d5c4b3a29187f6e5d4c3b2";

fn env_file(workspace: &Path) {
    std::fs::write(
        workspace.join(".env"),
        format!("MY_DB_PASSWORD={PASSWORD}\nAPP_NAME=shop\n"),
    )
    .unwrap();
}

fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{what} holds the secret `{secret}`:\n{text}"
        );
    }
}

fn events_text(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_printed_password_and_the_known_token_leak_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // Masking is the second line: with the sandbox turned off (an
    // operator's explicit choice), `cat ../token` reads the token, and
    // it must still leak nowhere. (With the sandbox on, the read itself
    // is refused: tests/hostile/exec.rs.)
    config.builtin.exec.sandbox.mode = hale::actors::builtin::SandboxMode::Off;
    let data = config.data_dir.clone();
    std::fs::create_dir_all(&data).unwrap();
    // The token file `hale serve` made: the runtime reads it at start.
    std::fs::write(data.join("token"), TOKEN).unwrap();
    let runtime = start(config).await;
    let workspace = runtime.config().builtin.workspace_root.clone();
    env_file(&workspace);
    // A copy of the token the agent found somewhere: a second route.
    std::fs::write(workspace.join("notes.txt"), format!("token: {TOKEN}\n")).unwrap();
    // A deploy script that dumps its secrets on failure and is refused:
    // a critical PERMISSION_DENIED, so an approval quotes its output.
    script(
        &workspace.join("deploy"),
        "cat .env\ncat notes.txt >&2\necho \"deploy: permission denied for MY_DB_PASSWORD=$(sed -n 's/^MY_DB_PASSWORD=//p' .env)\" >&2\nexit 1",
    );
    let mut live = runtime.subscribe_events();
    let session = runtime.create_session("default").await.unwrap();

    let text = plan_with_approval(
        json!([
            step("exec", json!({"command": "cat .env"})),
            step("read_file", json!({"path": ".env"})),
            step("read_file", json!({"path": "notes.txt"})),
            step("exec", json!({"command": "cat ../token"})),
            step("exec", json!({"command": "./deploy"})),
        ]),
        json!({ ABORT_OPTION: [step("exec", json!({"command": "echo aborted"}))] }),
    );
    let id = runtime.send(&session, &text).await.unwrap();
    let approval = eventually(WAIT, "the approval", || async {
        runtime.approvals(true).await.unwrap().into_iter().next()
    })
    .await;
    // What an operator is shown has the output, masked.
    let shown = serde_json::to_string(&approval).unwrap();
    assert_clean("the approval shown", &shown, &[PASSWORD, TOKEN]);
    assert!(shown.contains("[REDACTED]"), "{shown}");
    eventually(WAIT, "the message to wait for the approval", || async {
        let state = runtime.sessions().message(&id).await.unwrap().state;
        (state == MessageState::WaitingApproval).then_some(())
    })
    .await;
    runtime
        .resolve_approval(&approval.id, Answer::Option(ABORT_OPTION.into()), "test")
        .await
        .unwrap();
    let Some(record) = runtime.sessions().wait(&id, WAIT).await.unwrap() else {
        let journal = journal(&runtime, &session).await;
        let open = runtime.approvals(true).await.unwrap();
        panic!("the message did not finish:\n{journal}\nopen approvals: {open:#?}");
    };
    let steps = steps_of(&record);

    // The model's view: masked, the rest of the text kept.
    let stdout = steps[0]["data"]["stdout"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", steps[0]));
    assert!(stdout.contains("MY_DB_PASSWORD=[REDACTED]"), "{stdout}");
    assert!(stdout.contains("APP_NAME=shop"), "{stdout}");
    let content = steps[1]["data"]["content"].as_str().unwrap();
    assert!(content.contains("MY_DB_PASSWORD=[REDACTED]"), "{content}");
    assert_eq!(steps[2]["data"]["content"], "token: [REDACTED]\n");
    assert_eq!(steps[3]["data"]["stdout"], "[REDACTED]");
    // The documented end: the refused deploy escalated, the human's
    // decision ran.
    assert_eq!(steps[4]["code"], "PERMISSION_DENIED", "{steps:?}");
    assert_eq!(steps.len(), 6, "{steps:?}");
    let reply = record.reply.clone().unwrap();
    assert_clean("the reply", &reply, &[PASSWORD, TOKEN]);

    // MEMORY.md: a lesson the agent writes with a password in it.
    let other = runtime.create_session("default").await.unwrap();
    let lesson = format!("deploys need MY_DB_PASSWORD={PASSWORD} set");
    let record = ask(
        &runtime,
        &other,
        &plan(json!([step(
            "remember",
            json!({"section": "Deploys", "lesson": lesson})
        )])),
    )
    .await;
    assert_eq!(steps_of(&record)[0]["status"], "success", "{record:?}");

    // An operator pastes the token into a message: stored masked.
    let record = ask(
        &runtime,
        &session,
        &plan(json!([step(
            "exec",
            json!({"command": format!("echo {TOKEN} >/dev/null")})
        )])),
    )
    .await;
    assert_eq!(steps_of(&record)[0]["status"], "success", "{record:?}");

    // Still serving: a plain message is answered.
    let record = ask(&runtime, &session, &plan(json!([]))).await;
    assert_eq!(record.state, MessageState::Done);

    // Nowhere a person or the model reads.
    let mut streamed = Vec::new();
    while let Ok(event) = live.try_recv() {
        streamed.push(event);
    }
    assert!(!streamed.is_empty());
    assert_clean(
        "the live events",
        &events_text(&streamed),
        &[PASSWORD, TOKEN],
    );
    let trail = logs(&runtime).await;
    assert!(
        trail.iter().any(|e| e.kind == EventKind::ToolOutcome),
        "the trail has the calls"
    );
    assert_clean("the audit trail", &events_text(&trail), &[PASSWORD, TOKEN]);
    assert_clean(
        "the approvals table",
        &approvals_table(&runtime).await,
        &[PASSWORD, TOKEN],
    );
    assert_clean(
        "the journal",
        &journal(&runtime, &session).await,
        &[PASSWORD, TOKEN],
    );
    let memory = runtime.memory().read().await.unwrap();
    assert!(memory.contains("MY_DB_PASSWORD=[REDACTED]"), "{memory}");
    assert_clean("MEMORY.md", &memory, &[PASSWORD, TOKEN]);

    // The known value nowhere in hale.db, its WAL included.
    let db = data.join("hale.db");
    runtime.shutdown().await.unwrap();
    let files = database_bytes(&db);
    assert!(!files.is_empty());
    for (path, bytes) in files {
        assert!(
            !contains(&bytes, TOKEN),
            "{} holds the token",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_a_blocked_command_is_masked_in_the_approval() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config
        .builtin
        .exec
        .blocked
        .push(BlockRule::new("^echo deploy", "deploys need a human"));
    let runtime = start(config).await;
    let session = runtime.create_session("default").await.unwrap();
    let command = format!("echo deploy MY_DB_PASSWORD={PASSWORD} >> deploys.txt");
    let id = runtime
        .send(
            &session,
            &plan(json!([step("exec", json!({"command": command}))])),
        )
        .await
        .unwrap();
    let approval = eventually(WAIT, "the approval", || async {
        runtime.approvals(true).await.unwrap().into_iter().next()
    })
    .await;
    let shown = serde_json::to_string(&approval).unwrap();
    assert_clean("the approval shown", &shown, &[PASSWORD]);
    assert!(shown.contains("MY_DB_PASSWORD=[REDACTED]"), "{shown}");
    assert_clean(
        "the approvals table",
        &approvals_table(&runtime).await,
        &[PASSWORD],
    );
    eventually(WAIT, "the message to wait for the approval", || async {
        let state = runtime.sessions().message(&id).await.unwrap().state;
        (state == MessageState::WaitingApproval).then_some(())
    })
    .await;
    runtime
        .resolve_approval(&approval.id, Answer::Option(DENY.into()), "test")
        .await
        .unwrap();
    let record = runtime.sessions().wait(&id, WAIT).await.unwrap().unwrap();
    assert_eq!(steps_of(&record)[0]["status"], "blocked", "{record:?}");
    let workspace = runtime.config().builtin.workspace_root.clone();
    assert!(!workspace.join("deploys.txt").exists(), "a denied call ran");
    assert_clean(
        "the approvals table",
        &approvals_table(&runtime).await,
        &[PASSWORD],
    );
    let record = ask(&runtime, &session, &plan(json!([]))).await;
    assert_eq!(record.state, MessageState::Done);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_read_written_back_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = start(config(dir.path())).await;
    let workspace = runtime.config().builtin.workspace_root.clone();
    env_file(&workspace);
    let session = runtime.create_session("default").await.unwrap();
    // The agent reads the file, changes one line and writes back what it
    // read: the real password would become the marker.
    let record = ask(
        &runtime,
        &session,
        &plan(json!([
            step("read_file", json!({"path": ".env"})),
            step(
                "write_file",
                json!({"path": ".env", "content": "MY_DB_PASSWORD=[REDACTED]\nAPP_NAME=shop2\n"})
            ),
            step(
                "edit_file",
                json!({"path": ".env", "old_text": "APP_NAME=shop", "new_text": "MY_DB_PASSWORD=[REDACTED]\nAPP_NAME=shop2"})
            ),
            step(
                "edit_file",
                json!({"path": ".env", "old_text": "APP_NAME=shop", "new_text": "APP_NAME=shop2"})
            ),
        ])),
    )
    .await;
    let steps = steps_of(&record);
    assert!(
        steps[0]["data"]["content"]
            .as_str()
            .unwrap()
            .contains("[REDACTED]"),
        "{steps:?}"
    );
    for refused in &steps[1..3] {
        assert_eq!(refused["code"], "INVALID_INPUT", "{refused}");
        assert_eq!(refused["retryable"], false, "{refused}");
        let hints: &Vec<Value> = refused["hints"].as_array().unwrap();
        assert!(
            hints
                .iter()
                .any(|h| h["message"].as_str().unwrap().contains("masked")),
            "{refused}"
        );
    }
    assert_eq!(steps[3]["status"], "success", "{:?}", steps[3]);
    assert_eq!(
        std::fs::read_to_string(workspace.join(".env")).unwrap(),
        format!("MY_DB_PASSWORD={PASSWORD}\nAPP_NAME=shop2\n"),
        "the real secret survived"
    );
    let record = ask(&runtime, &session, &plan(json!([]))).await;
    assert_eq!(record.state, MessageState::Done);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private_and_its_files_are_0600() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let data = config.data_dir.clone();
    let runtime = start(config).await;
    assert_eq!(mode(&data), data_dir_mode(&runtime), "data directory");
    let db = data.join("hale.db");
    for file in hale::actors::store::database_files(&db) {
        // WAL mode keeps -wal and -shm while the store is open.
        assert!(file.exists(), "{} missing", file.display());
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    assert_eq!(mode(&data.join("lock")), 0o600, "lock");
    // `hale serve`'s token.
    let token = hale::serve::ensure_token(&data.join("token")).unwrap();
    assert_eq!(token.len(), 64);
    assert_eq!(mode(&data.join("token")), 0o600, "token");
    let session = runtime.create_session("default").await.unwrap();
    let record = ask(&runtime, &session, &plan(json!([]))).await;
    assert_eq!(record.state, MessageState::Done);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_data_directory_is_tightened_at_start_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let data = config.data_dir.clone();
    // A directory an older hale (or a careless umask) left open.
    let runtime = start(config.clone()).await;
    runtime.shutdown().await.unwrap();
    drop(runtime);
    let db = data.join("hale.db");
    for path in [&data, &data.join("workspace")] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for path in [db.clone(), data.join("lock")] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::write(data.join("token"), TOKEN).unwrap();
    std::fs::set_permissions(data.join("token"), std::fs::Permissions::from_mode(0o644)).unwrap();

    let runtime = start(config).await;
    assert_eq!(
        mode(&data),
        data_dir_mode(&runtime),
        "data directory tightened"
    );
    assert_eq!(mode(&db), 0o600, "hale.db tightened");
    assert_eq!(mode(&data.join("lock")), 0o600, "lock tightened");
    assert_eq!(mode(&data.join("token")), 0o600, "token tightened");
    let warned = eventually(WAIT, "the warning event", || async {
        logs(&runtime)
            .await
            .into_iter()
            .find(|e| e.source == "hale/data_dir" && e.message.contains("tightened"))
    })
    .await;
    assert!(warned.message.contains("755"), "{warned:?}");
    let session = runtime.create_session("default").await.unwrap();
    let record = ask(&runtime, &session, &plan(json!([]))).await;
    assert_eq!(record.state, MessageState::Done);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_servers_env_value_is_masked_by_value() {
    const VAULT: &str = "s.Vq7xK2mN9pL4";
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // The server's key: hale passes it on, so hale knows it is secret.
    // (The server itself need not run for that.)
    let mut server = McpServerConfig::stdio("vault", "/bin/false", Vec::<String>::new());
    if let McpTransport::Stdio { env, .. } = &mut server.transport {
        env.insert("VAULT_TOKEN".into(), VAULT.into());
    }
    server.disabled = true;
    config.mcp.push(server);
    let runtime = start(config).await;
    let workspace = runtime.config().builtin.workspace_root.clone();
    // No pattern knows this shape; only the value can be matched.
    std::fs::write(workspace.join("cache.txt"), format!("vault {VAULT} ok\n")).unwrap();
    let session = runtime.create_session("default").await.unwrap();
    let record = ask(
        &runtime,
        &session,
        &plan(json!([
            step("read_file", json!({"path": "cache.txt"})),
            step("exec", json!({"command": "cat cache.txt"})),
        ])),
    )
    .await;
    let steps = steps_of(&record);
    assert_eq!(steps[0]["data"]["content"], "vault [REDACTED] ok\n");
    assert_eq!(steps[1]["data"]["stdout"], "vault [REDACTED] ok\n");
    assert_clean("the journal", &journal(&runtime, &session).await, &[VAULT]);
    assert_clean(
        "the audit trail",
        &events_text(&logs(&runtime).await),
        &[VAULT],
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_masked() {
    use tower::ServiceExt as _;

    let dir = tempfile::tempdir().unwrap();
    let runtime = start(config(dir.path())).await;
    let (app, _doc) = hale::api::router(hale::api::ApiState {
        runtime: runtime.clone(),
        token: TOKEN.into(),
        allow_chaos: false,
    });
    // A caller's input echoed in an error message (`state=...`).
    let request = axum::http::Request::builder()
        .uri("/v1/approvals?state=MY_DB_PASSWORD%3Dhunter2hunter2")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), axum::http::StatusCode::BAD_REQUEST);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("MY_DB_PASSWORD=[REDACTED]"), "{body}");
    assert_clean("the API error", &body.to_string(), &[PASSWORD]);
    // Still serving.
    let request = axum::http::Request::builder()
        .uri("/v1/approvals")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), axum::http::StatusCode::OK);
    runtime.shutdown().await.unwrap();
}
