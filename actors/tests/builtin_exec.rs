//! The `exec` tool: output, exit classification, timeouts that kill the
//! whole process group, output caps, block rules and the working directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use hale_actors::builtin::{BlockRule, Exec, ExecConfig, ExecConfigError, SandboxConfig};

/// These tests exercise exec's own machinery (timeouts, output, groups).
/// The sandbox wrapper is a subcommand of the hale binary, which this
/// crate cannot reach, so the sandbox is off here on purpose; the
/// sandboxed path is tested in the hale crate (`tests/hostile`).
fn unsandboxed(root: impl Into<std::path::PathBuf>) -> ExecConfig {
    let mut config = ExecConfig::new(root);
    config.sandbox = SandboxConfig::off();
    config
}
use hale_actors::{ErrorCode, HintKind, Status, Tool, ToolOutcome};
use serde_json::json;
use tempfile::TempDir;

fn exec_in(root: &Path) -> Exec {
    Exec::new(unsandboxed(root)).unwrap()
}

async fn run(tool: &Exec, command: &str) -> ToolOutcome {
    tool.call(
        json!({ "command": command }),
        &hale_actors::ToolContext::default(),
    )
    .await
}

/// Whether `pid` is still a running process. A killed process that was
/// reparented to an init that does not reap (as in some containers) stays
/// a zombie; it is dead, and not ours to reap, so it counts as gone.
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Fields after the parenthesised command name: state, ppid, ...
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let mut fields = after.split_whitespace();
    let state = fields.next().unwrap();
    let ppid: u32 = fields.next().unwrap().parse().unwrap();
    if state == "Z" || state == "X" {
        assert_ne!(
            ppid,
            std::process::id(),
            "pid {pid} is a zombie left for this test process to reap"
        );
        return false;
    }
    true
}

/// Waits up to `limit` for `pid` to be gone.
async fn gone_within(pid: u32, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !alive(pid)
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn success_returns_both_streams() {
    let dir = TempDir::new().unwrap();
    let outcome = run(&exec_in(dir.path()), "echo hello; echo oops >&2").await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!(outcome.data["exit_code"], 0);
    assert_eq!(outcome.data["stdout"], "hello\n");
    assert_eq!(outcome.data["stderr"], "oops\n");
    assert_eq!(outcome.data["truncated"], false);
    assert!(outcome.data["duration_ms"].is_u64());
}

#[tokio::test]
async fn spec_is_exec_and_not_idempotent() {
    let dir = TempDir::new().unwrap();
    let tool = exec_in(dir.path());
    assert_eq!(tool.spec().name, "exec");
    assert!(!tool.spec().idempotent);
    assert_eq!(tool.spec().schema["required"], json!(["command"]));
}

#[tokio::test]
async fn nonzero_exit_is_classified_with_its_output() {
    let dir = TempDir::new().unwrap();
    let outcome = run(&exec_in(dir.path()), "echo partial; echo boom >&2; exit 3").await;
    assert_eq!(outcome.status, Status::Error);
    assert_eq!(outcome.code, Some(ErrorCode::Internal));
    assert_eq!(outcome.message, "boom");
    assert_eq!(outcome.data["exit_code"], 3);
    assert_eq!(outcome.data["signal"], json!(null));
    assert_eq!(outcome.data["stdout"], "partial\n");
    assert_eq!(outcome.data["stderr"], "boom\n");
}

#[tokio::test]
async fn exit_127_is_not_found_with_the_path_searched() {
    let dir = TempDir::new().unwrap();
    let outcome = run(&exec_in(dir.path()), "hale-no-such-program-xyz --version").await;
    assert_eq!(outcome.code, Some(ErrorCode::NotFound));
    assert_eq!(outcome.data["exit_code"], 127);
    let hint = outcome
        .hints
        .iter()
        .find(|h| h.kind == HintKind::MissingExecutable)
        .expect("a missing_executable hint");
    let path = std::env::var("PATH").unwrap();
    assert!(
        hint.message.contains(&format!("PATH searched: {path}")),
        "{}",
        hint.message
    );
    assert_eq!(outcome.data["path"], path);
}

#[tokio::test]
async fn stderr_already_exists_is_already_exists() {
    let dir = TempDir::new().unwrap();
    let outcome = run(
        &exec_in(dir.path()),
        "echo 'fatal: destination path repo already exists' >&2; exit 128",
    )
    .await;
    assert_eq!(outcome.code, Some(ErrorCode::AlreadyExists));
    assert!(outcome.recoverable && !outcome.retryable);
}

#[tokio::test]
async fn death_by_signal_is_interrupted() {
    let dir = TempDir::new().unwrap();
    let outcome = run(&exec_in(dir.path()), "kill -9 $$").await;
    assert_eq!(outcome.code, Some(ErrorCode::Interrupted));
    assert_eq!(outcome.data["signal"], 9);
    assert_eq!(outcome.data["exit_code"], json!(null));
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let dir = TempDir::new().unwrap();
    let tool = exec_in(dir.path());
    let started = Instant::now();
    let outcome = tool
        .call(
            json!({
                "command": "sleep 60 & echo $! > bg.pid; echo $$ > sh.pid; echo started; sleep 60",
                "timeout_ms": 500,
            }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(500 + 2000), "{elapsed:?}");
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
    assert_eq!(outcome.status, Status::Timeout);
    assert_eq!(outcome.code, Some(ErrorCode::Etimedout));
    assert!(outcome.retryable);
    assert_eq!(outcome.data["timed_out"], true);
    assert_eq!(outcome.data["timeout_ms"], 500);
    assert_eq!(outcome.data["stdout"], "started\n");

    let background = read_pid(&dir.path().join("bg.pid"));
    let shell = read_pid(&dir.path().join("sh.pid"));
    assert!(
        gone_within(background, Duration::from_secs(1)).await,
        "background sleep {background} survived the timeout"
    );
    // The shell was our child: it must be reaped, not left a zombie.
    assert!(
        !Path::new(&format!("/proc/{shell}")).exists(),
        "shell {shell} was not reaped"
    );
}

#[tokio::test]
async fn requested_timeout_is_clamped_to_the_maximum() {
    let dir = TempDir::new().unwrap();
    let mut config = unsandboxed(dir.path());
    config.default_timeout = Duration::from_millis(200);
    config.max_timeout = Duration::from_millis(300);
    let tool = Exec::new(config).unwrap();
    let started = Instant::now();
    let outcome = tool
        .call(
            json!({ "command": "sleep 30", "timeout_ms": 60_000 }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(outcome.status, Status::Timeout);
    assert_eq!(outcome.data["timeout_ms"], 300);
}

#[tokio::test]
async fn background_process_holding_the_pipes_does_not_hold_the_call() {
    let dir = TempDir::new().unwrap();
    let started = Instant::now();
    let outcome = run(
        &exec_in(dir.path()),
        "sleep 60 & echo $! > bg.pid; echo done",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!(outcome.data["stdout"], "done\n");
    let background = read_pid(&dir.path().join("bg.pid"));
    assert!(gone_within(background, Duration::from_secs(1)).await);
}

#[tokio::test]
async fn dropping_the_call_kills_the_group() {
    let dir = TempDir::new().unwrap();
    let tool = exec_in(dir.path());
    let pid_file = dir.path().join("bg.pid");
    let ctx = hale_actors::ToolContext::default();
    let call = tool.call(
        json!({
            "command": "sleep 60 & echo $! > bg.pid; sleep 60",
            "timeout_ms": 30_000,
        }),
        &ctx,
    );
    // Give the command time to start its background child, then give up.
    let cut = tokio::time::timeout(Duration::from_secs(1), call).await;
    assert!(cut.is_err(), "the call should still be running");
    let background = read_pid(&pid_file);
    assert!(
        gone_within(background, Duration::from_secs(1)).await,
        "background sleep {background} survived the dropped call"
    );
}

#[tokio::test]
async fn output_is_capped_and_a_flood_does_not_hang() {
    let dir = TempDir::new().unwrap();
    let mut config = unsandboxed(dir.path());
    config.output_cap_bytes = 1000;
    config.default_timeout = Duration::from_secs(20);
    let tool = Exec::new(config).unwrap();
    let started = Instant::now();
    // 10 MB on stdout and 10 MB on stderr, far beyond any pipe buffer.
    let outcome = run(
        &tool,
        "head -c 10000000 /dev/zero | tr '\\0' a; head -c 10000000 /dev/zero | tr '\\0' b >&2",
    )
    .await;
    assert_eq!(outcome.status, Status::Success, "{}", outcome.message);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(outcome.data["truncated"], true);
    assert_eq!(outcome.data["stdout"], "a".repeat(1000));
    assert_eq!(outcome.data["stderr"], "b".repeat(1000));
}

#[tokio::test]
async fn output_at_the_cap_is_not_truncated() {
    let dir = TempDir::new().unwrap();
    let mut config = unsandboxed(dir.path());
    config.output_cap_bytes = 6;
    let outcome = run(&Exec::new(config).unwrap(), "printf 'abcdef'").await;
    assert_eq!(outcome.data["stdout"], "abcdef");
    assert_eq!(outcome.data["truncated"], false);
}

#[tokio::test]
async fn blocked_command_is_not_run() {
    let dir = TempDir::new().unwrap();
    let mut config = unsandboxed(dir.path());
    config.blocked = vec![
        BlockRule::new(r"^\s*sudo\b", "no privilege escalation"),
        BlockRule::new(r"rm\s+-rf\s", "no recursive deletes"),
    ];
    let tool = Exec::new(config).unwrap();
    let command = "touch ran && rm -rf build";
    let outcome = run(&tool, command).await;
    assert_eq!(outcome.status, Status::Blocked);
    assert_eq!(outcome.code, Some(ErrorCode::PolicyBlocked));
    assert!(outcome.message.contains("no recursive deletes"));
    assert_eq!(
        outcome.data,
        json!({
            "pattern": r"rm\s+-rf\s",
            "reason": "no recursive deletes",
            "command": command,
        })
    );
    assert!(!dir.path().join("ran").exists(), "a blocked command ran");

    // A command no rule matches still runs.
    let outcome = run(&tool, "touch ran").await;
    assert!(outcome.is_success());
    assert!(dir.path().join("ran").exists());
}

#[test]
fn invalid_block_rule_is_named() {
    let mut config = unsandboxed("/");
    config.blocked = vec![
        BlockRule::new("fine", "ok"),
        BlockRule::new("(unclosed", "broken"),
    ];
    match Exec::new(config) {
        Err(ExecConfigError::InvalidBlockRule { index, pattern, .. }) => {
            assert_eq!(index, 1);
            assert_eq!(pattern, "(unclosed");
        }
        other => panic!("expected InvalidBlockRule, got {other:?}"),
    }
}

#[test]
fn default_timeout_above_maximum_is_rejected() {
    let mut config = unsandboxed("/");
    config.default_timeout = Duration::from_secs(60);
    config.max_timeout = Duration::from_secs(10);
    assert!(matches!(
        Exec::new(config),
        Err(ExecConfigError::InvalidTimeouts { .. })
    ));
}

#[tokio::test]
async fn runs_in_the_workspace_root() {
    let dir = TempDir::new().unwrap();
    let tool = exec_in(dir.path());
    let outcome = run(&tool, "pwd -P; touch made-here").await;
    let expected = format!("{}\n", dir.path().canonicalize().unwrap().display());
    assert_eq!(outcome.data["stdout"], expected);
    assert!(dir.path().join("made-here").exists());
}

#[tokio::test]
async fn missing_workspace_root_is_a_spawn_failure() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("gone");
    let outcome = run(&exec_in(&missing), "true").await;
    assert_eq!(outcome.code, Some(ErrorCode::NotFound));
    assert!(
        outcome.message.contains("could not start"),
        "{}",
        outcome.message
    );
    assert_eq!(
        outcome.data["workspace_root"],
        missing.display().to_string()
    );
}

#[tokio::test]
async fn bad_arguments_name_the_field() {
    let dir = TempDir::new().unwrap();
    let tool = exec_in(dir.path());
    for (args, field) in [
        (json!({}), "command"),
        (json!({ "command": 5 }), "command"),
        (json!({ "command": "  " }), "command"),
        (
            json!({ "command": "true", "timeout_ms": "5" }),
            "timeout_ms",
        ),
        (json!({ "command": "true", "timeout_ms": 0 }), "timeout_ms"),
        (json!({ "command": "true", "timeout_ms": -1 }), "timeout_ms"),
        (json!({ "cmd": "true", "command": "true" }), "cmd"),
        (json!("true"), "command"),
    ] {
        let outcome = tool
            .call(args.clone(), &hale_actors::ToolContext::default())
            .await;
        assert_eq!(outcome.code, Some(ErrorCode::InvalidInput), "{args}");
        assert!(
            outcome.message.contains(&format!("`{field}`")),
            "{args}: {}",
            outcome.message
        );
    }
}
