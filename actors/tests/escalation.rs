//! Approvals: opened, listed, resolved, timed out, resolved twice, unknown
//! ids; surviving the escalation actor's kill and the whole process's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hale_actors::escalation::{
    ABORT, Answer, ApprovalNotice, ApprovalOption, ApprovalRequest, Diagnosis, Escalation,
    EscalationError, FileApprovalStore, Gate, MemoryApprovalStore, Origin, escalation_child,
};
use hale_actors::{EventKind, MemorySink, Severity};
use hale_supervision::{ChildId, SupervisorRef, SupervisorSpec};
use serde_json::{Value, json};

/// The call a test approval is opened for, as the runtime's gates do.
fn gate() -> Gate {
    Gate::new(
        "session-1",
        1,
        "1:call-1",
        "exec",
        &json!({"command": "migrate"}),
    )
}

fn request(timeout: Duration, default: Option<&str>) -> ApprovalRequest {
    ApprovalRequest {
        title: "Schema migration blocked".into(),
        description: "The migration needs a column rename on a live table.".into(),
        diagnosis: Diagnosis {
            what: "exec `migrate` failed: PERMISSION_DENIED".into(),
            why: "critical severity: hale does not retry permission failures".into(),
            recommendation: "run the migration in a maintenance window".into(),
            alternatives: vec!["skip the rename".into()],
            context: json!({ "code": "PERMISSION_DENIED" }),
        },
        options: vec![
            ApprovalOption {
                id: "window".into(),
                label: "Run it tonight".into(),
            },
            ApprovalOption {
                id: "skip".into(),
                label: "Skip the rename".into(),
            },
        ],
        recommended: Some("window".into()),
        severity: Severity::Critical,
        timeout,
        default_on_timeout: default.map(str::to_owned),
        allow_instructions: false,
        requester: Some("session-7".into()),
    }
}

async fn start(
    store: Arc<dyn hale_actors::escalation::ApprovalStore>,
) -> (SupervisorRef, Escalation, Arc<MemorySink>) {
    let sink = Arc::new(MemorySink::new());
    let (child, escalation) = escalation_child(store, sink.clone());
    let (supervisor, _) = SupervisorRef::start(
        SupervisorSpec::new("hale")
            .intensity(10, Duration::from_secs(5))
            .child(child),
    )
    .await
    .unwrap();
    (supervisor, escalation, sink)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_list_resolve_and_wait() {
    let (supervisor, escalation, sink) = start(Arc::new(MemoryApprovalStore::new())).await;
    let mut notices = escalation.subscribe();
    let approval = escalation
        .open_gate(request(Duration::from_secs(60), None), gate())
        .await
        .unwrap();
    assert!(approval.is_open());
    assert!(matches!(notices.recv().await, Ok(ApprovalNotice::Opened(a)) if a.id == approval.id));
    let open = escalation.list(true).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(
        open[0].request.diagnosis.recommendation,
        "run the migration in a maintenance window"
    );

    let waiter = {
        let escalation = escalation.clone();
        let id = approval.id.clone();
        tokio::spawn(async move { escalation.wait(&id).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let resolution = escalation
        .resolve(&approval.id, Answer::Option("window".into()), "alice")
        .await
        .unwrap();
    assert_eq!(resolution.option.as_deref(), Some("window"));
    assert_eq!(resolution.by, "alice");
    assert_eq!(waiter.await.unwrap().unwrap(), resolution);
    assert!(matches!(notices.recv().await, Ok(ApprovalNotice::Resolved(a)) if a.id == approval.id));
    assert!(escalation.list(true).await.unwrap().is_empty());
    assert_eq!(escalation.list(false).await.unwrap().len(), 1);
    let kinds: Vec<EventKind> = sink.events().into_iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&EventKind::EscalationOpened));
    assert!(kinds.contains(&EventKind::EscalationResolved));
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolving_twice_unknown_ids_and_options() {
    let (supervisor, escalation, _) = start(Arc::new(MemoryApprovalStore::new())).await;
    let approval = escalation
        .open_gate(request(Duration::from_secs(60), None), gate())
        .await
        .unwrap();
    let first = escalation
        .resolve(&approval.id, Answer::Option("skip".into()), "bob")
        .await
        .unwrap();
    // The same answer again is a no-op that returns the same resolution.
    let again = escalation
        .resolve(&approval.id, Answer::Option("skip".into()), "bob")
        .await
        .unwrap();
    assert_eq!(first, again);
    // A different answer is refused.
    let refused = escalation
        .resolve(&approval.id, Answer::Option("window".into()), "carol")
        .await
        .unwrap_err();
    assert!(
        matches!(refused, EscalationError::AlreadyResolved { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("skip"), "{refused}");

    let unknown = escalation
        .resolve("apr-nope", Answer::Option("skip".into()), "bob")
        .await
        .unwrap_err();
    assert_eq!(unknown, EscalationError::UnknownApproval("apr-nope".into()));
    assert!(escalation.wait("apr-nope").await.is_err());

    let other = escalation
        .open_gate(request(Duration::from_secs(60), None), gate())
        .await
        .unwrap();
    let bad = escalation
        .resolve(&other.id, Answer::Option("yolo".into()), "bob")
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("window, skip, abort"), "{bad}");
    let no_text = escalation
        .resolve(
            &other.id,
            Answer::Instructions("do it my way".into()),
            "bob",
        )
        .await
        .unwrap_err();
    assert!(matches!(
        no_text,
        EscalationError::InstructionsNotAllowed(_)
    ));
    // An invalid request is refused before anything is stored.
    let mut invalid = request(Duration::from_secs(60), Some("nope"));
    invalid.title = "x".into();
    assert!(matches!(
        escalation.open_gate(invalid, gate()).await,
        Err(EscalationError::InvalidRequest(_))
    ));
    assert_eq!(escalation.list(false).await.unwrap().len(), 2);
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_take_the_default_or_fail_closed() {
    let (supervisor, escalation, _) = start(Arc::new(MemoryApprovalStore::new())).await;
    let with_default = escalation
        .open_gate(request(Duration::from_millis(200), Some("skip")), gate())
        .await
        .unwrap();
    let without = escalation
        .open_gate(request(Duration::from_millis(200), None), gate())
        .await
        .unwrap();
    let started = Instant::now();
    let a = escalation.wait(&with_default.id).await.unwrap();
    let b = escalation.wait(&without.id).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(a.option.as_deref(), Some("skip"));
    assert!(a.timed_out);
    assert_eq!(a.by, "timeout");
    assert_eq!(b.option.as_deref(), Some(ABORT));
    // A late human answer does not override the deadline's.
    assert!(matches!(
        escalation
            .resolve(&without.id, Answer::Option("window".into()), "late")
            .await,
        Err(EscalationError::AlreadyResolved { .. })
    ));
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_approval_survives_the_actors_kill() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileApprovalStore::open(dir.path()).unwrap());
    let (supervisor, escalation, _) = start(store).await;
    let approval = escalation
        .open_gate(request(Duration::from_secs(60), None), gate())
        .await
        .unwrap();
    let waiter = {
        let escalation = escalation.clone();
        let id = approval.id.clone();
        tokio::spawn(async move { escalation.wait(&id).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..3 {
        supervisor
            .resolve(&ChildId::new("escalation"))
            .await
            .unwrap()
            .unwrap()
            .kill();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let open = escalation.list(true).await.unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].id, approval.id);
    escalation
        .resolve(&approval.id, Answer::Option("window".into()), "alice")
        .await
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter was not answered after the restarts")
        .unwrap()
        .unwrap();
    assert_eq!(answered.option.as_deref(), Some("window"));
    assert_eq!(supervisor.stats().await.unwrap().restarts, 3);
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// Runs `test` of this binary as a child process with `env` set, reads
/// the approval id it prints once stored, and kills it with SIGKILL.
async fn open_in_a_child_and_kill_it(test: &str, env: (&str, &std::path::Path)) -> String {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env(env.0, env.1)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let id = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("OPENED ").map(str::to_owned))
    });
    let id = tokio::time::timeout(Duration::from_secs(30), id)
        .await
        .expect("the child never opened its approval")
        .unwrap()
        .expect("the child exited without opening");
    // kill -9: no shutdown, no flush.
    child.kill().unwrap();
    child.wait().unwrap();
    id
}

const CHILD_ENV: &str = "HALE_ESCALATION_CHILD_DIR";

/// Runs as the "first process" when the env var is set: opens an
/// approval, prints its id once stored, then waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_opens_an_approval() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Arc::new(FileApprovalStore::open(dir).unwrap());
    let (_supervisor, escalation, _) = start(store).await;
    let approval = escalation
        .open_gate(request(Duration::from_secs(600), None), gate())
        .await
        .unwrap();
    println!("OPENED {}", approval.id);
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_approval_survives_a_process_kill_and_its_waiter_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let id =
        open_in_a_child_and_kill_it("child_process_opens_an_approval", (CHILD_ENV, dir.path()))
            .await;

    // A new "process": a new tree over the same store.
    let store = Arc::new(FileApprovalStore::open(dir.path()).unwrap());
    let (supervisor, escalation, _) = start(store).await;
    let open = escalation.list(true).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].id, id);
    // The gate names the session; it, not the request, says who asks.
    assert_eq!(open[0].request.requester.as_deref(), Some("session-1"));
    // The restarted requester finds its approval and waits again.
    let waiter = {
        let escalation = escalation.clone();
        let id = id.clone();
        tokio::spawn(async move { escalation.wait(&id).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    escalation
        .resolve(&id, Answer::Option("skip".into()), "alice")
        .await
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(answered.option.as_deref(), Some("skip"));
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passed_while_down_fails_closed_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileApprovalStore::open(dir.path()).unwrap());
    let (supervisor, escalation, _) = start(store).await;
    let approval = escalation
        .open_gate(request(Duration::from_millis(300), None), gate())
        .await
        .unwrap();
    // The whole tree goes away before the deadline...
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...and the next start applies it at once.
    let store = Arc::new(FileApprovalStore::open(dir.path()).unwrap());
    let (supervisor, escalation, _) = start(store).await;
    let resolution = tokio::time::timeout(Duration::from_secs(5), escalation.wait(&approval.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resolution.option.as_deref(), Some(ABORT));
    assert!(resolution.timed_out);
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_approval_waits_for_the_human() {
    use hale_actors::escalation::AskApproval;
    use hale_actors::{Tool, ToolContext};

    let (supervisor, escalation, _) = start(Arc::new(MemoryApprovalStore::new())).await;
    let tool = AskApproval::new(escalation.clone());
    let mut notices = escalation.subscribe();
    let call = tokio::spawn(async move {
        let ctx = ToolContext::for_step("session-9", 4, "4:call-2");
        tool.call(
            json!({
                "title": "Delete the staging database?",
                "description": "The agent wants to drop `staging`.",
                "options": [{ "id": "drop", "label": "Drop it" }, { "id": "keep", "label": "Keep it" }],
                "recommended": "keep",
                "severity": "critical"
            }),
            &ctx,
        )
        .await
    });
    let Ok(ApprovalNotice::Opened(opened)) = notices.recv().await else {
        panic!("no opened notice");
    };
    // The session comes from the context; the question is the agent's and
    // bound to no call.
    assert_eq!(opened.request.requester.as_deref(), Some("session-9"));
    assert_eq!(opened.origin, Origin::Agent);
    assert_eq!(opened.gate, None);
    escalation
        .resolve(&opened.id, Answer::Option("keep".into()), "ops")
        .await
        .unwrap();
    let outcome = call.await.unwrap();
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(outcome.data["option"], "keep");
    assert_eq!(outcome.data["by"], "ops");

    let ctx = ToolContext::for_step("session-9", 5, "5:call-1");
    let bad = AskApproval::new(escalation.clone())
        .call(
            json!({ "title": "x", "description": "y", "options": [] }),
            &ctx,
        )
        .await;
    assert_eq!(
        bad.code,
        Some(hale_actors::ErrorCode::InvalidInput),
        "{bad:?}"
    );
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_question_names_no_session_and_its_timeout_picks_no_option() {
    use hale_actors::escalation::AskApproval;
    use hale_actors::{Tool, ToolContext};

    let (supervisor, escalation, _) = start(Arc::new(MemoryApprovalStore::new())).await;
    let tool = AskApproval::new(escalation.clone());
    let ctx = ToolContext::for_step("session-a", 1, "1:call-1");
    // Under another session's name: refused before anything is opened.
    let forged = tool
        .call(
            json!({"title": "t", "description": "d", "options": [{"id": "approve", "label": "yes"}],
                   "session": "session-b"}),
            &ctx,
        )
        .await;
    assert_eq!(
        forged.code,
        Some(hale_actors::ErrorCode::InvalidInput),
        "{forged:?}"
    );
    assert!(forged.message.contains("session"), "{forged:?}");
    assert!(escalation.list(false).await.unwrap().is_empty());

    // A default and a 1 ms deadline: the deadline answers with no option.
    let asked = tool
        .call(
            json!({"title": "t", "description": "d", "options": [{"id": "approve", "label": "yes"}],
                   "default_on_timeout": "approve", "timeout_ms": 1}),
            &ctx,
        )
        .await;
    assert!(asked.is_success(), "{asked:?}");
    assert_eq!(asked.data["option"], Value::Null, "{asked:?}");
    assert_eq!(asked.data["timed_out"], true);
    let stored = escalation.list(false).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].origin, Origin::Agent);
    assert_eq!(stored[0].request.default_on_timeout, None);
    assert_eq!(stored[0].resolution.as_ref().unwrap().option, None);

    // Without a session there is nobody to ask for.
    let orphan = tool
        .call(
            json!({"title": "t", "description": "d", "allow_instructions": true}),
            &ToolContext::default(),
        )
        .await;
    assert_eq!(
        orphan.code,
        Some(hale_actors::ErrorCode::InvalidInput),
        "{orphan:?}"
    );
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_may_have_only_so_many_questions_open() {
    let (supervisor, escalation, _) = start(Arc::new(MemoryApprovalStore::new())).await;
    let question = request(Duration::from_secs(600), None);
    // Opened concurrently, so questions still being saved count too.
    let mut asks = Vec::new();
    for _ in 0..5 {
        let escalation = escalation.clone();
        let question = question.clone();
        asks.push(tokio::spawn(async move {
            escalation.ask(question, "session-a", 2).await
        }));
    }
    let mut opened = 0;
    let mut refused = 0;
    for ask in asks {
        match ask.await.unwrap() {
            Ok(_) => opened += 1,
            Err(EscalationError::TooManyOpen { limit: 2, .. }) => refused += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((opened, refused), (2, 3));
    // Another session has its own allowance; runtime approvals are not
    // questions and are never limited.
    escalation
        .ask(question.clone(), "session-b", 2)
        .await
        .unwrap();
    escalation
        .open_gate(question.clone(), gate())
        .await
        .unwrap();
    // Answering one frees a place.
    let open = escalation.list(true).await.unwrap();
    let first = open
        .iter()
        .find(|a| a.request.requester.as_deref() == Some("session-a"))
        .unwrap();
    escalation
        .resolve(&first.id, Answer::Option(ABORT.into()), "ops")
        .await
        .unwrap();
    escalation.ask(question, "session-a", 2).await.unwrap();
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_approval_records_its_origin_and_gate_durably() {
    let dir = tempfile::tempdir().unwrap();
    let (supervisor, escalation, _) =
        start(Arc::new(FileApprovalStore::open(dir.path()).unwrap())).await;
    let opened = escalation
        .open_gate(request(Duration::from_secs(600), None), gate())
        .await
        .unwrap();
    assert_eq!(opened.origin, Origin::Runtime);
    assert_eq!(opened.gate, Some(gate()));
    assert_eq!(opened.request.requester.as_deref(), Some("session-1"));
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
    let (supervisor, escalation, _) =
        start(Arc::new(FileApprovalStore::open(dir.path()).unwrap())).await;
    let again = escalation.get(&opened.id).await.unwrap();
    assert_eq!(again.origin, Origin::Runtime);
    assert_eq!(again.gate, Some(gate()));
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

const SQLITE_CHILD_ENV: &str = "HALE_ESCALATION_SQLITE_CHILD";

async fn sqlite_approvals(path: &std::path::Path) -> Arc<hale_actors::escalation::StoreApprovals> {
    use hale_actors::store::{SqliteStore, StoreConfig};
    let store = SqliteStore::open(StoreConfig::new(path)).await.unwrap();
    Arc::new(hale_actors::escalation::StoreApprovals::new(Arc::new(
        store,
    )))
}

/// Runs as the "first process" when the env var is set: opens an
/// approval in the SQLite store, prints its id once stored, waits to be
/// killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_opens_an_approval_in_sqlite() {
    let Ok(path) = std::env::var(SQLITE_CHILD_ENV) else {
        return;
    };
    let (_supervisor, escalation, _) = start(sqlite_approvals(path.as_ref()).await).await;
    let approval = escalation
        .open_gate(request(Duration::from_secs(600), None), gate())
        .await
        .unwrap();
    println!("OPENED {}", approval.id);
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_in_the_sqlite_store_survive_a_process_kill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hale.db");
    let id = open_in_a_child_and_kill_it(
        "child_process_opens_an_approval_in_sqlite",
        (SQLITE_CHILD_ENV, &db),
    )
    .await;

    let (supervisor, escalation, _) = start(sqlite_approvals(&db).await).await;
    let open = escalation.list(true).await.unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].id, id);
    let waiter = {
        let escalation = escalation.clone();
        let id = id.clone();
        tokio::spawn(async move { escalation.wait(&id).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    escalation
        .resolve(&id, Answer::Option("window".into()), "alice")
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .option
            .as_deref(),
        Some("window")
    );
    // Resolved in the database too: a third "process" sees it decided.
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
    let (supervisor, escalation, _) = start(sqlite_approvals(&db).await).await;
    assert!(escalation.list(true).await.unwrap().is_empty());
    let all = escalation.list(false).await.unwrap();
    assert_eq!(all[0].resolution.as_ref().unwrap().by, "alice");
    // And the same answer is still a no-op, a different one refused.
    assert!(
        escalation
            .resolve(&id, Answer::Option("window".into()), "alice")
            .await
            .is_ok()
    );
    assert!(
        escalation
            .resolve(&id, Answer::Option("skip".into()), "bob")
            .await
            .is_err()
    );
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A subscriber that never reads (a stalled `/v1/events` client) holds
/// at most `NOTICE_BUFFER` notices, however many are published; when it
/// reads again it is told how many it missed, then gets the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_holds_a_bounded_number_of_notices() {
    use hale_actors::escalation::NOTICE_BUFFER;
    use tokio::sync::broadcast::error::RecvError;

    let (supervisor, escalation, _) = start(Arc::new(MemoryApprovalStore::new())).await;
    let mut stalled = escalation.subscribe();
    let opened = NOTICE_BUFFER + 50;
    for n in 0..opened {
        let gate = Gate::new(
            "session-1",
            n as u64,
            format!("{n}:call"),
            "exec",
            &json!({"command": "migrate", "n": n}),
        );
        escalation
            .open_gate(request(Duration::from_secs(600), None), gate)
            .await
            .unwrap();
    }
    // The oldest 50 were dropped for it, not kept: it is told so, then
    // gets exactly the newest NOTICE_BUFFER.
    assert_eq!(stalled.recv().await, Err(RecvError::Lagged(50)));
    let mut kept = 0;
    while let Ok(notice) = stalled.try_recv() {
        assert!(matches!(notice, ApprovalNotice::Opened(_)));
        kept += 1;
    }
    assert_eq!(kept, NOTICE_BUFFER);
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
}
