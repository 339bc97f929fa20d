//! The data directory: its layout, the exclusive lock (in this process
//! and across processes), and the process-group ledger reaping what a
//! crashed hale left running, without ever killing a reused pid.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hale::data_dir::{DataDir, DataDirError, PGROUPS_DIR, proc_stat};
use hale_actors::Tool;
use hale_actors::builtin::{Exec, ExecConfig};
use serde_json::json;

/// Set in the helper process: the data directory it opens.
const HELPER_DIR: &str = "HALE_TEST_DATA_DIR_HELPER";

/// Not a test on its own: the body of the helper process the tests below
/// start (this binary, re-run with `--exact helper_process`). It opens the
/// data directory, starts a process group through the ledger, prints
/// `READY <leader pid> <background pid>` and waits to be killed.
#[test]
fn helper_process() {
    let Some(dir) = std::env::var_os(HELPER_DIR) else {
        return;
    };
    let data = DataDir::open(&dir).unwrap();
    let (child, background) = spawn_group();
    let entry = data.ledger().record(child.id(), "sh -c sleep").unwrap();
    println!("READY {} {background}", child.id());
    std::thread::sleep(Duration::from_secs(60));
    drop(entry);
}

/// `sh` as the leader of a new process group, with a background `sleep`
/// in the same group; returns the shell and the background pid.
fn spawn_group() -> (Child, u32) {
    let mut child = Command::new("sh")
        .args(["-c", "sleep 60 & echo $!; wait"])
        .process_group(0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().parse().unwrap())
}

/// Kills the helper if the test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_helper(dir: &Path) -> (Child, u32, u32) {
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(helper.stdout.take().unwrap());
    for line in stdout.lines() {
        let line = line.unwrap();
        // libtest may print `test helper_process ... ` before it.
        if let Some((_, rest)) = line.split_once("READY ") {
            let mut pids = rest.split(' ').map(|p| p.parse().unwrap());
            let (leader, background) = (pids.next().unwrap(), pids.next().unwrap());
            return (helper, leader, background);
        }
    }
    panic!("the helper exited before it was ready: {:?}", helper.wait());
}

/// Opens `dir` again after this process dropped its `DataDir`. A child
/// that another test is spawning at that instant holds a copy of the lock
/// file's descriptor between its fork and its exec (close-on-exec closes
/// it only then), so the lock can outlive the drop by that long.
fn reopen(dir: &Path) -> DataDir {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match DataDir::open(dir) {
            Ok(data) => return data,
            Err(DataDirError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Whether `pid` is gone (no process, or a zombie nobody reaped yet).
fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if proc_stat(pid).is_none() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn record_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join(PGROUPS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn open_lays_out_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("state");
    let data = DataDir::open(&root).unwrap();
    assert_eq!(data.root(), root);
    assert_eq!(data.db_path(), root.join("hale.db"));
    assert_eq!(data.token_path(), root.join("token"));
    assert_eq!(data.workspace(), root.join("workspace"));
    assert_eq!(data.memory_path(), root.join("memory/MEMORY.md"));
    assert!(root.join("memory").is_dir());
    assert!(root.join(PGROUPS_DIR).is_dir());
    assert!(data.reaped().is_empty());
    let lock = std::fs::read_to_string(root.join("lock")).unwrap();
    assert_eq!(lock.trim(), std::process::id().to_string());

    let elsewhere = tmp.path().join("ws");
    let custom = DataDir::open_with_workspace(tmp.path().join("other"), &elsewhere).unwrap();
    assert_eq!(custom.workspace(), elsewhere);
    // MEMORY.md stays with the data, out of the agent's workspace.
    assert!(tmp.path().join("other/memory").is_dir());
    assert!(!elsewhere.join("memory").exists());
}

#[test]
fn a_second_open_in_this_process_is_refused_until_the_first_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let first = DataDir::open(tmp.path()).unwrap();
    let err = DataDir::open(tmp.path()).unwrap_err();
    match &err {
        DataDirError::Locked { dir, holder } => {
            assert_eq!(dir, tmp.path());
            assert_eq!(*holder, Some(std::process::id()));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let shown = err.to_string();
    assert!(shown.contains(&tmp.path().display().to_string()), "{shown}");
    assert!(
        shown.contains(&format!("(pid {})", std::process::id())),
        "{shown}"
    );
    drop(first);
    reopen(tmp.path());
}

#[test]
fn another_process_holding_the_directory_is_named_and_its_crash_is_cleaned_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (helper, leader, background) = start_helper(tmp.path());
    let mut helper = KillOnDrop(helper);
    match DataDir::open(tmp.path()).unwrap_err() {
        DataDirError::Locked { holder, .. } => assert_eq!(holder, Some(helper.0.id())),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert_eq!(record_files(tmp.path()), [leader.to_string()]);

    // hale crashes: its children keep running, orphaned.
    helper.0.kill().unwrap();
    let status = helper.0.wait().unwrap();
    assert_eq!(status.signal(), Some(9));
    assert!(
        proc_stat(leader).is_some(),
        "the group should outlive the crash"
    );
    assert!(proc_stat(background).is_some());

    // The lock died with the process; the next open reaps the group.
    let data = reopen(tmp.path());
    assert_eq!(data.reaped().len(), 1);
    assert_eq!(data.reaped()[0].pid, leader);
    assert_eq!(data.reaped()[0].command, "sh -c sleep");
    assert!(wait_gone(leader), "leader {leader} still runs");
    assert!(
        wait_gone(background),
        "group member {background} still runs"
    );
    assert!(record_files(tmp.path()).is_empty());
}

#[test]
fn a_leaked_record_in_this_process_is_reaped_at_the_next_open() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(tmp.path()).unwrap();
    let (mut child, background) = spawn_group();
    let entry = data
        .ledger()
        .record(child.id(), "sh -c 'sleep 300 & wait'")
        .unwrap();
    assert_eq!(entry.record().pgid, child.id());
    // As if hale died here: the guard never runs.
    std::mem::forget(entry);
    drop(data);

    let data = reopen(tmp.path());
    assert_eq!(data.reaped().len(), 1);
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    assert!(wait_gone(background));
    assert!(record_files(tmp.path()).is_empty());
}

#[test]
fn a_record_whose_pid_now_runs_something_else_is_not_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(tmp.path()).unwrap();
    let (mut child, background) = spawn_group();
    let entry = data
        .ledger()
        .record(child.id(), "an older process")
        .unwrap();
    let start_time = entry.record().start_time;
    std::mem::forget(entry);
    drop(data);
    // The record's process started at another time: the pid was reused.
    let path = tmp.path().join(PGROUPS_DIR).join(child.id().to_string());
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("start_time {start_time}\n"),
        &format!("start_time {}\n", start_time + 1),
    );
    std::fs::write(&path, text).unwrap();

    let data = reopen(tmp.path());
    assert!(data.reaped().is_empty());
    assert!(
        record_files(tmp.path()).is_empty(),
        "the stale record is dropped"
    );
    assert!(child.try_wait().unwrap().is_none(), "the process must live");
    assert!(proc_stat(background).is_some());
    // Clean up our own group.
    kill_group(child.id());
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    assert!(wait_gone(background));
}

fn kill_group(pgid: u32) {
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(pgid).unwrap());
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL).unwrap();
}

#[test]
fn a_dropped_entry_removes_its_record() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(tmp.path()).unwrap();
    let (mut child, _) = spawn_group();
    let entry = data.ledger().record(child.id(), "x").unwrap();
    assert_eq!(data.ledger().records().len(), 1);
    drop(entry);
    assert!(data.ledger().records().is_empty());
    kill_group(child.id());
    child.wait().unwrap();
    // A process that is gone cannot be recorded.
    assert!(data.ledger().record(child.id(), "x").is_err());
}

/// `exec` reports its process group to the ledger while the command runs
/// and the record is gone when the call returns.
#[tokio::test]
async fn exec_records_its_group_while_it_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(tmp.path()).unwrap();
    let mut config = ExecConfig::new(data.workspace());
    config.recorder = data.ledger().hook();
    // The command reads the ledger in the data directory, which the
    // sandbox hides on purpose; this test is about the ledger.
    config.sandbox = hale_actors::builtin::SandboxConfig::off();
    let exec = Exec::new(config).unwrap();
    let pgroups = tmp.path().join(PGROUPS_DIR);
    let outcome = exec
        .call(json!({"command": format!(
            // The record is written just after the spawn: wait for it.
            "echo $$; for i in $(seq 100); do ls {0} | grep -q . && break; sleep 0.05; done; cat {0}/*",
            pgroups.display()
        )}), &hale::actors::ToolContext::default())
        .await;
    assert!(!outcome.is_failure(), "{outcome:?}");
    let stdout = outcome.data["stdout"].as_str().unwrap().to_owned();
    let shell_pid = stdout.lines().next().unwrap();
    assert!(
        stdout.contains(&format!("pid {shell_pid}\n")) && stdout.contains("command sh -c echo"),
        "{stdout}"
    );
    assert!(data.ledger().records().is_empty());
}
