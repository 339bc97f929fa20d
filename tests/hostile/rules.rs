//! `[[tools.exec_approval]]` rules match parsed commands: quoting,
//! escaping, chaining, a path prefix, substitution, a pipe into a shell,
//! `sh -c` and `eval` cannot slip a gated command past its rule.

use std::time::Duration;

use hale::actors::builtin::BlockRule;
use hale::actors::escalation::{Answer, Approval};
use hale::actors::session::{APPROVE, DENY};
use hale::actors::store::MessageState;
use hale::runtime::Runtime;
use serde_json::json;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

/// Sends a one-step plan running `command`, expects it to open an
/// approval, denies it, and returns the approval and the step's outcome.
async fn escalates(
    runtime: &Runtime,
    session: &str,
    command: &str,
    answer: &str,
) -> (Approval, serde_json::Value) {
    let text = plan(json!([step("exec", json!({ "command": command }))]));
    let id = runtime.send(session, &text).await.unwrap();
    let approval = eventually(WAIT, &format!("an approval for {command:?}"), || async {
        if let Some(approval) = runtime.approvals(true).await.unwrap().into_iter().next() {
            return Some(approval);
        }
        // Finished without asking anyone: the guard did not hold.
        let message = runtime.sessions().message(&id).await.ok()?;
        assert!(
            !matches!(message.state, MessageState::Done | MessageState::Failed),
            "{command:?} was not escalated: {message:?}"
        );
        None
    })
    .await;
    assert_eq!(
        approval.request.requester.as_deref(),
        Some(session),
        "{command:?}: {approval:?}"
    );
    runtime
        .resolve_approval(&approval.id, Answer::Option(answer.into()), "tester")
        .await
        .unwrap();
    let record = runtime.sessions().wait(&id, WAIT).await.unwrap().unwrap();
    let outcome = steps_of(&record)[0].clone();
    (approval, outcome)
}

/// Sends a one-step plan running `command`, which must run without any
/// approval, and returns the step's outcome.
async fn runs(runtime: &Runtime, session: &str, command: &str) -> serde_json::Value {
    let text = plan(json!([step("exec", json!({ "command": command }))]));
    let record = ask(runtime, session, &text, WAIT).await;
    assert!(
        runtime.approvals(true).await.unwrap().is_empty(),
        "{command:?} opened an approval"
    );
    steps_of(&record)[0].clone()
}

fn approval_text(approval: &Approval) -> String {
    serde_json::to_string(&approval.request).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_disguise_of_a_gated_command_escalates_and_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config
        .builtin
        .exec
        .blocked
        .push(BlockRule::new(r"touch\s+pwned", "pwned files need a human"));
    let runtime = start(config).await;
    let workspace = runtime.config().builtin.workspace_root.clone();
    let pwned = workspace.join("pwned");
    let session = runtime.create_session("default").await.unwrap();

    // Each disguise, and the reason its approval must give.
    let rule = "pwned files need a human";
    let attacks = [
        ("t''ouch pwned", rule),
        (r"t\ouch pwned", rule),
        (r#""touch" pwned"#, rule),
        ("true; touch pwned", rule),
        ("true && touch pwned", rule),
        ("false || touch pwned", rule),
        ("/usr/bin/touch pwned", rule),
        ("(touch pwned)", rule),
        ("sleep 0 & touch pwned", rule),
        ("true\ntouch pwned", rule),
        ("nohup touch pwned", rule),
        ("env A=1 touch pwned", rule),
        ("$(echo touch) pwned", "command substitution"),
        ("`echo touch` pwned", "command substitution"),
        (
            "echo dG91Y2ggcHduZWQ= | base64 -d | sh",
            "pipe into a shell",
        ),
        ("sh -c 'touch pwned'", "sh -c"),
        ("eval 'touch pwned'", "eval"),
    ];
    for (command, reason) in attacks {
        let (approval, outcome) = escalates(&runtime, &session, command, DENY).await;
        assert!(
            approval_text(&approval).contains(reason),
            "{command:?}: the approval does not say {reason:?}: {}",
            approval_text(&approval)
        );
        assert_eq!(outcome["status"], "blocked", "{command:?}: {outcome}");
        assert!(!pwned.exists(), "{command:?} ran: `pwned` exists");
    }

    // hale still serves, and an ungated command still runs.
    let outcome = runs(&runtime, &session, "touch harmless").await;
    assert_eq!(outcome["status"], "success", "{outcome}");
    assert!(workspace.join("harmless").exists());
    assert!(!pwned.exists());

    // The disguises are real: approved, one runs and creates the file.
    let (_, outcome) = escalates(&runtime, &session, "t''ouch pwned", APPROVE).await;
    assert_eq!(outcome["status"], "success", "{outcome}");
    assert!(pwned.exists(), "the approved command did not run");
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchored_rules_see_the_program_and_dropdb_escalates_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.builtin.exec.blocked = vec![
        BlockRule::new(r"^touch\s+pwned", "pwned files need a human"),
        BlockRule::new(r"^dropdb\b", "dropping a database needs a human"),
    ];
    let runtime = start(config).await;
    let workspace = runtime.config().builtin.workspace_root.clone();
    let session = runtime.create_session("default").await.unwrap();
    std::fs::create_dir_all(&workspace).unwrap();
    script(&workspace.join("dropdb"), "echo \"$*\" >> dropdb.calls");

    // A rule sees the words joined: anchored, it matches the program only,
    // so quoted text that merely mentions the command passes.
    let outcome = runs(&runtime, &session, r#"echo "touch pwned""#).await;
    assert_eq!(outcome["status"], "success", "{outcome}");
    assert_eq!(outcome["data"]["stdout"], "touch pwned\n");

    // Anchored, the rule still sees every simple command's program, and
    // what it cannot read still escalates.
    for command in [
        "t''ouch pwned",
        "/usr/bin/touch pwned",
        "true; touch pwned",
        "false || touch pwned",
        "echo x | touch pwned",
        "nohup touch pwned",
        "sh -c 'touch pwned'",
        "eval 'touch pwned'",
        "$(echo touch) pwned",
    ] {
        let (_, outcome) = escalates(&runtime, &session, command, DENY).await;
        assert_eq!(outcome["status"], "blocked", "{command:?}: {outcome}");
        assert!(!workspace.join("pwned").exists(), "{command:?} ran");
    }

    let absolute = format!("{}/dropdb production", workspace.display());
    for command in [
        "dropdb production",
        "./dropdb production",
        "/usr/bin/dropdb production",
        absolute.as_str(),
        "PGHOST=db sudo -u postgres ./dropdb production",
        "true && ./dropdb production",
    ] {
        let (approval, outcome) = escalates(&runtime, &session, command, DENY).await;
        assert!(
            approval_text(&approval).contains("dropping a database needs a human"),
            "{command:?}: {}",
            approval_text(&approval)
        );
        assert_eq!(outcome["status"], "blocked", "{command:?}: {outcome}");
        assert!(
            lines(&workspace.join("dropdb.calls")).is_empty(),
            "{command:?} ran dropdb"
        );
    }
    assert!(!workspace.join("pwned").exists());
    let outcome = runs(&runtime, &session, "echo still serving").await;
    assert_eq!(outcome["status"], "success", "{outcome}");
    runtime.shutdown().await.unwrap();
}
