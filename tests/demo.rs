//! The README's main command, run as the built binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `hale <args>` with `stdin` fed in, returning (success, stdout,
/// stderr, elapsed).
fn hale(args: &[&str], stdin: &str) -> (bool, String, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hale"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hale");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    let output = child.wait_with_output().expect("wait for hale");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        started.elapsed(),
    )
}

fn assert_contains(stdout: &str, expected: &[&str]) {
    for expected in expected {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[test]
fn hale_demo_runs_the_four_scenarios_against_real_faults_and_exits_zero() {
    let (ok, stdout, stderr, took) = hale(&["demo"], "");
    assert!(ok, "hale demo failed:\n{stdout}\n{stderr}");
    assert_contains(
        &stdout,
        &[
            // The heading names what the four scenarios show.
            "hale demo: four faults healed live: a timed-out API retried, a dead MCP server \
             replaced by its backup, \"already exists\" checked instead of retried, a denied \
             destructive command escalated to a human",
            // 1: the timeout is detected, classified and retried.
            "== Scenario 1: The transient network error",
            "DETECT   web_fetch: ETIMEDOUT",
            "FIX      retry web_fetch",
            "=> recovered: the API was called 2 times",
            // 2: the dead server is routed around, disabled, and learned.
            "== Scenario 2: The MCP server is down",
            "weather__echo: MCP_SERVER_UNREACHABLE",
            "FIX      fall back: weather__echo -> weather-backup__echo",
            "FIX      manage_mcp: disable weather",
            "LEARN    incident: weather unreachable",
            "=> recovered: served by weather-backup; weather is disabled",
            // 3: already exists is checked, not retried.
            "== Scenario 3: The permanent failure",
            "CLASSIFY ALREADY_EXISTS: retryable false, recoverable true",
            "CALL     exec(\"./kubectl get deployment api-server -o yaml\")",
            "=> recovered: ALREADY_EXISTS (not retried, not escalated)",
            // 4: escalated, decided (abort), the abort step ran, learned.
            "== Scenario 4: The escalation-required failure",
            "CLASSIFY PERMISSION_DENIED: retryable false, recoverable false, severity critical",
            "ESCALATE approval",
            "DECIDE   approval",
            "resolved by operator: abort",
            "CALL     exec(\"echo cleanup aborted",
            "=> escalated and decided: `abort`; dropdb ran 1 time(s), never retried",
            // The lessons and the audit summary.
            "== What hale learned (MEMORY.md)",
            "- weather unreachable",
            "needed a human; operator chose `abort`",
            "== Audit trail summary",
            "tool retries",
            "escalations 1 (1 decided)",
            "demo finished in",
        ],
    );
    assert!(!stdout.contains('\x1b'), "NO_COLOR means no escapes");
    // A user has no "seed": the output names what it shows instead.
    assert!(!stdout.to_lowercase().contains("seed"), "{stdout}");
    // The README promises under 30 s; generous here for loaded CI machines.
    assert!(took < Duration::from_secs(60), "took {took:?}");
    eprintln!("hale demo took {took:?}");
}

#[test]
fn hale_demo_interactive_takes_the_operators_answer_from_stdin() {
    let (ok, stdout, stderr, _) = hale(&["demo", "--interactive"], "no-such-option\nproceed\n");
    assert!(ok, "hale demo --interactive failed:\n{stdout}\n{stderr}");
    assert_contains(
        &stdout,
        &[
            "[proceed] Proceed",
            "`no-such-option` is not one of proceed, abort",
            "resolved by operator: proceed",
            "CALL     exec(\"echo proceeding with the cleanup",
            "=> escalated and decided: `proceed`; dropdb ran 1 time(s), never retried",
        ],
    );
}

#[test]
fn hale_tree_demo_survives_its_faults_and_exits_zero() {
    let (ok, stdout, stderr, took) = hale(
        &[
            "tree-demo",
            "--faults",
            "60",
            "--gap-ms",
            "2",
            "--seed",
            "42",
        ],
        "",
    );
    assert!(ok, "hale tree-demo failed:\n{stdout}\n{stderr}");
    assert_contains(
        &stdout,
        &[
            "60 faults, every one recovered",
            "weather PARKED",
            "weather-backup: same actor, answering",
            "weather: back after the probe",
            "hale/tools     GAVE UP",
            "new hale/tools supervisor up, exec answering",
            "actors not answering:     0",
        ],
    );
    assert!(took < Duration::from_secs(60));
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_hale"))
        .arg("no-such-command")
        .output()
        .expect("run hale");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no-such-command"));
}

#[test]
fn hale_demo_interactive_can_be_answered_with_hale_approve_from_another_terminal() {
    use std::io::{BufRead, BufReader};
    let mut demo = Command::new(env!("CARGO_BIN_EXE_hale"))
        .args(["demo", "--interactive"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hale demo");
    // stdin stays open and silent: the answer comes over the API.
    let stdin = demo.stdin.take();
    let stdout = demo.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut output = String::new();
    let command = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no `hale approve` hint in time:\n{output}"));
        output.push_str(&line);
        output.push('\n');
        if let Some(at) = line.find("hale approve ") {
            break line[at..].replace("<option>", "proceed");
        }
    };
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    let approve = Command::new(env!("CARGO_BIN_EXE_hale"))
        .args(&args)
        .output()
        .expect("run hale approve");
    assert!(
        approve.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&approve.stderr)
    );
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        output.push_str(&line);
        output.push('\n');
    }
    drop(stdin);
    let status = demo.wait().expect("wait for the demo");
    assert!(status.success(), "{output}");
    assert_contains(
        &output,
        &[
            "decided elsewhere by api: proceed",
            "escalated and decided: `proceed`",
            "demo finished",
        ],
    );
}

/// The help a user reads names what `hale demo` shows, with no reference
/// to a "seed" the user never saw.
#[test]
fn the_demos_help_names_what_it_shows() {
    for args in [&["--help"][..], &["demo", "--help"][..]] {
        let (ok, stdout, stderr, _) = hale(args, "");
        assert!(ok, "hale {args:?} failed:\n{stdout}\n{stderr}");
        assert_contains(&stdout, &["MCP server replaced by its backup"]);
        assert!(!stdout.to_lowercase().contains("seed"), "{stdout}");
    }
}
