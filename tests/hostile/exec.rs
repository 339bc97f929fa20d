//! Attacks through `exec`: a scripted agent tries to read hale's secrets,
//! reach its API, signal it, send packets, write outside the workspace
//! and fork-bomb the machine, all against a runtime with the sandbox on.
//! Each test asserts the guard held, the message ended in the documented
//! state, and hale still serves.
//!
//! The sandboxed commands of these tests share one user (`nobody` when
//! the tests run as root), whose process count the fork bomb exhausts on
//! purpose, so they take turns ([`serial`]).

use std::time::Duration;

use hale::actors::builtin::{NetworkPolicy, SandboxConfig, SandboxMode};
use serde_json::{Value, json};

use crate::support_exec::{
    Served, ask, config, exec_plan, output, reply_steps, start, steps_of, still_serves,
};

/// One sandboxed test at a time (see the module docs).
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

const FAKE_KEY: &str = "sk-hostile-fake-model-key-4f1c2a9b7e";
const FAKE_HALE_TOKEN: &str = "hale-hostile-fake-env-token-9d8c7b";
const FAKE_SECRET: &str = "HOSTILE_DB_PASSWORD_hunter2hunter2";

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// `hale serve` with model keys and a token in its environment: nothing of
/// them, of its token file, its database, its processes or its API reaches
/// a command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_exec_reaches_no_secret_and_not_the_api() {
    let _turn = serial().await;
    let helper = crate::support_exec::hale_bin();
    let toml = format!(
        "[tools.sandbox]\nhelper = {:?}\nenv = [\"HOSTILE_PASSED_ON_PURPOSE\"]\n",
        helper.display().to_string()
    );
    let served = Served::start(
        &[
            ("OPENAI_API_KEY", FAKE_KEY),
            ("HALE_TOKEN", FAKE_HALE_TOKEN),
            ("HOSTILE_SECRET", FAKE_SECRET),
            ("HOSTILE_PASSED_ON_PURPOSE", "visible-on-purpose"),
        ],
        &toml,
    );
    served.ready().await;
    assert!(
        served.start_lines[1].starts_with("exec sandbox: landlock"),
        "{:?}",
        served.start_lines
    );
    let tree = served.get("/v1/tree").await;
    let exec_node = tree
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "hale/tools/exec")
        .cloned()
        .unwrap();
    assert!(
        exec_node["sandbox"]
            .as_str()
            .unwrap()
            .starts_with("landlock"),
        "{exec_node}"
    );
    let token = served.token();
    let port = served.port;
    let curl = format!(
        "curl -sS -m 3 -H 'Authorization: Bearer {token}' http://127.0.0.1:{port}/v1/approvals 2>&1; echo curl=$?"
    );
    let dev_tcp = format!(
        "bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port} && printf \"GET /healthz HTTP/1.0\\r\\n\\r\\n\" >&3 && cat <&3' 2>&1; echo tcp=$?"
    );
    let plan = exec_plan(&[
        "cat ../token 2>&1; echo rc=$?",
        "head -c 4096 ../hale.db 2>&1; echo rc=$?; ls -la .. 2>&1",
        "cat /proc/$PPID/environ 2>&1; echo rc=$?",
        "cat /proc/*/cmdline 2>&1; echo rc=$?",
        "env",
        &curl,
        &dev_tcp,
    ]);
    let message = served.ask(&plan).await;
    let steps = reply_steps(&message);
    assert_eq!(steps.len(), 7, "{message}");
    for (i, step) in steps.iter().enumerate() {
        let text = step.to_string();
        for secret in [token.as_str(), FAKE_KEY, FAKE_HALE_TOKEN, FAKE_SECRET] {
            assert!(!text.contains(secret), "step {i} leaked a secret: {step}");
        }
    }
    // Each attempt is shown its failure (the command swallowed it, as a
    // prober would, so the message finishes instead of escalating).
    for i in [0, 1, 2, 3] {
        let out = output(&steps[i]);
        assert!(
            out.contains("rc=") && !out.contains("rc=0"),
            "step {i}: {out}"
        );
    }
    assert!(!output(&steps[1]).contains("SQLite format"), "{}", steps[1]);
    // The environment is built: these names and the one passed on purpose.
    let env = output(&steps[4]);
    let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    for name in &names {
        assert!(
            [
                "PATH",
                "LANG",
                "TERM",
                "HOME",
                "TMPDIR",
                "HOSTILE_PASSED_ON_PURPOSE",
                "PWD",
                "SHLVL",
                "_",
                "OLDPWD"
            ]
            .contains(name),
            "unexpected variable {name} in {env}"
        );
    }
    assert!(
        env.contains("HOSTILE_PASSED_ON_PURPOSE=visible-on-purpose"),
        "{env}"
    );
    // hale's API is out of reach (no route out of the namespace).
    let curl_out = output(&steps[5]);
    assert!(!curl_out.contains("curl=0"), "{curl_out}");
    assert!(!curl_out.contains('['), "{curl_out}");
    let tcp_out = output(&steps[6]);
    assert!(!tcp_out.contains("tcp=0"), "{tcp_out}");
    assert!(!tcp_out.contains("HTTP/1"), "{tcp_out}");
    // Still serving.
    let plain = served.ask("hello").await;
    assert_eq!(plain["status"], "done", "{plain}");
}

/// A readable file outside the workspace (in the data directory, in /tmp)
/// is invisible, and nothing can be written outside the workspace and the
/// private TMPDIR; inside, work goes on (and belongs to the sandbox user).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_outside_the_workspace_are_unreachable() {
    let _turn = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let runtime = start(config(dir.path())).await;
    let data = dir.path().join("data");
    // World-readable on purpose: only Landlock stands in the way.
    use std::os::unix::fs::PermissionsExt;
    let leak = data.join("leak.txt");
    std::fs::write(&leak, FAKE_SECRET).unwrap();
    std::fs::set_permissions(&leak, std::fs::Permissions::from_mode(0o644)).unwrap();
    let outside = std::env::temp_dir().join(format!("hale-hostile-{:x}", fastrand::u64(..)));
    std::fs::create_dir(&outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o777)).unwrap();
    let visible = outside.join("visible.txt");
    std::fs::write(&visible, FAKE_SECRET).unwrap();
    std::fs::set_permissions(&visible, std::fs::Permissions::from_mode(0o644)).unwrap();
    let read_tmp = format!("cat {} 2>&1; echo rc=$?", visible.display());
    let write_tmp = format!(
        "(echo pwned > {}/pwned) 2>&1; echo rc=$?",
        outside.display()
    );
    let session = runtime.sessions().create("default", None).await.unwrap();
    let record = ask(
        &runtime,
        &session,
        &exec_plan(&[
            "cat ../leak.txt 2>&1; echo rc=$?",
            &read_tmp,
            &write_tmp,
            "(echo pwned > ../pwned) 2>&1; echo rc=$?",
            // MEMORY.md goes into every session's prompt: out of reach.
            "(echo pwned >> ../memory/MEMORY.md) 2>&1; echo rc=$?",
            "echo ok > inside.txt && cat inside.txt && echo tmp > $TMPDIR/t && cat $TMPDIR/t",
        ]),
    )
    .await;
    let steps = steps_of(&record);
    for step in &steps {
        assert!(!step.to_string().contains(FAKE_SECRET), "leaked: {step}");
    }
    for (i, step) in steps.iter().take(5).enumerate() {
        let out = output(step);
        assert!(
            out.contains("rc=") && !out.contains("rc=0"),
            "step {i}: {out}"
        );
    }
    assert!(!outside.join("pwned").exists());
    assert!(!data.join("pwned").exists());
    let memory = runtime.memory().read().await.unwrap();
    assert!(!memory.contains("pwned"), "{memory}");
    assert_eq!(steps[5]["status"], "success", "{}", steps[5]);
    assert_eq!(output(&steps[5]), "ok\ntmp\n");
    let inside = data.join("workspace/inside.txt");
    assert!(inside.exists());
    if running_as_root() {
        use std::os::unix::fs::MetadataExt;
        assert_ne!(std::fs::metadata(&inside).unwrap().uid(), 0);
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o711, "data directory mode {mode:o}");
    }
    still_serves(&runtime).await;
    let _ = std::fs::remove_dir_all(&outside);
    runtime.shutdown().await.unwrap();
}

/// `kill $PPID` (hale itself: the test process) fails, and the command
/// runs as the unprivileged user when hale is root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_to_hale_fail() {
    let _turn = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let runtime = start(config(dir.path())).await;
    let session = runtime.sessions().create("default", None).await.unwrap();
    let record = ask(
        &runtime,
        &session,
        &exec_plan(&["kill -TERM $PPID 2>&1; echo kill=$?", "id -u"]),
    )
    .await;
    let steps = steps_of(&record);
    let out = output(&steps[0]);
    assert!(!out.contains("kill=0"), "{out}");
    if running_as_root() {
        assert_ne!(output(&steps[1]).trim(), "0", "{}", steps[1]);
    }
    still_serves(&runtime).await;
    runtime.shutdown().await.unwrap();
}

/// Under `network = none` a UDP datagram to a listener on loopback never
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_under_none_goes_nowhere() {
    let _turn = serial().await;
    let listener = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let runtime = start(config(dir.path())).await;
    let session = runtime.sessions().create("default", None).await.unwrap();
    let send = format!("bash -c 'echo hostile > /dev/udp/127.0.0.1/{port}' 2>&1; echo udp=$?");
    let record = ask(&runtime, &session, &exec_plan(&[&send])).await;
    let steps = steps_of(&record);
    assert!(!output(&steps[0]).contains("udp=0"), "{}", steps[0]);
    let mut buf = [0u8; 64];
    let got = tokio::time::timeout(Duration::from_millis(500), listener.recv(&mut buf)).await;
    assert!(got.is_err(), "a datagram arrived");
    still_serves(&runtime).await;
    runtime.shutdown().await.unwrap();
}

/// `tcp = [port]`: connect to that port only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_list_allows_only_its_ports() {
    let _turn = serial().await;
    let allowed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let denied = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, d) = (
        allowed.local_addr().unwrap().port(),
        denied.local_addr().unwrap().port(),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.builtin.exec.sandbox.network = NetworkPolicy::Tcp(vec![a]);
    let runtime = start(config).await;
    let session = runtime.sessions().create("default", None).await.unwrap();
    let to = |p: u16| format!("bash -c 'echo hi > /dev/tcp/127.0.0.1/{p}' 2>&1; echo tcp=$?");
    let record = ask(&runtime, &session, &exec_plan(&[&to(a), &to(d)])).await;
    let steps = steps_of(&record);
    assert!(output(&steps[0]).contains("tcp=0"), "{}", steps[0]);
    assert!(!output(&steps[1]).contains("tcp=0"), "{}", steps[1]);
    // The port hale serves on may never be listed.
    assert!(hale::serve::check_sandbox_ports(&NetworkPolicy::Tcp(vec![a, d]), d).is_err());
    assert!(hale::serve::check_sandbox_ports(&NetworkPolicy::Tcp(vec![a]), d).is_ok());
    still_serves(&runtime).await;
    runtime.shutdown().await.unwrap();
}

/// The process limit binds the sandbox user, and a fork bomb under a
/// timeout ends with hale still serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_is_contained() {
    let _turn = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.builtin.exec.sandbox.limits.max_processes = Some(48);
    let runtime = start(config).await;
    let session = runtime.sessions().create("default", None).await.unwrap();
    let bomb = json!({ "steps": [
        { "tool": "exec", "args": { "command": "bash -c 'ulimit -u'" } },
        { "tool": "exec", "args": {
            "command": "bomb() { bomb | bomb & }; bomb; sleep 10",
            "timeout_ms": 3000 } },
    ], "reply": "done" })
    .to_string();
    let record = ask(&runtime, &session, &bomb).await;
    let steps = steps_of(&record);
    assert_eq!(output(&steps[0]).trim(), "48", "{}", steps[0]);
    assert_ne!(steps[1]["status"], "success", "{}", steps[1]);
    still_serves(&runtime).await;
    runtime.shutdown().await.unwrap();
}

/// Without a usable sandbox `exec` refuses with a typed, hinted outcome
/// (the message is done, not escalated); only `mode = off` runs commands
/// without the wrapper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sandbox_no_exec_unless_off() {
    let _turn = serial().await;
    let refused = |steps: &[Value]| {
        let step = &steps[0];
        assert_eq!(step["code"], "SANDBOX_UNAVAILABLE", "{step}");
        assert!(!step["hints"].as_array().unwrap().is_empty(), "{step}");
        step["message"].as_str().unwrap().to_owned()
    };
    let plan = exec_plan(&["echo ran > ran"]);
    type Breakage = fn(&mut SandboxConfig);
    let cases: [(&str, Breakage); 3] = [
        ("helper", |s| s.helper = None),
        ("nonexistent", |s| {
            s.helper = Some("/nonexistent/hale".into());
        }),
        ("Landlock", |s| {
            s.unavailable = Some("test: pretend the kernel has no Landlock".into());
        }),
    ];
    for (expected, tweak) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        tweak(&mut config.builtin.exec.sandbox);
        let runtime = start(config).await;
        let session = runtime.sessions().create("default", None).await.unwrap();
        let record = ask(&runtime, &session, &plan).await;
        let message = refused(&steps_of(&record));
        assert!(message.contains(expected), "{expected}: {message}");
        assert!(!dir.path().join("data/workspace/ran").exists());
        still_serves(&runtime).await;
        runtime.shutdown().await.unwrap();
    }
    // Off: runs directly (as hale's own user), still with a built env.
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.builtin.exec.sandbox = SandboxConfig::off();
    assert_eq!(config.builtin.exec.sandbox.mode, SandboxMode::Off);
    let runtime = start(config).await;
    assert_eq!(runtime.sandbox(), "off");
    let session = runtime.sessions().create("default", None).await.unwrap();
    let record = ask(&runtime, &session, &exec_plan(&["echo ran > ran; env"])).await;
    let steps = steps_of(&record);
    assert_eq!(steps[0]["status"], "success", "{}", steps[0]);
    assert!(dir.path().join("data/workspace/ran").exists());
    assert!(!output(&steps[0]).contains("CARGO"), "{}", steps[0]);
    runtime.shutdown().await.unwrap();
}

/// Landlock's signal scope on its own: the wrapper run with no user to
/// switch to (as hale is when it does not run as root) cannot signal a
/// process outside its sandbox, even one of its own user. As root the
/// user switch hides this guard, so the wrapper is run directly here.
#[test]
fn the_signal_scope_alone_keeps_kill_inside_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let (workspace, tmp) = (dir.path().join("w"), dir.path().join("t"));
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    let mut target = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let kill = format!("kill -TERM {} 2>&1; echo kill=$?", target.id());
    let out = std::process::Command::new(crate::support_exec::hale_bin())
        .arg("sandbox-exec")
        .arg("--workspace")
        .arg(&workspace)
        .arg("--tmp")
        .arg(&tmp)
        .args(["--network", "all", "--", "/bin/sh", "-c", &kill])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let alive = target.try_wait().unwrap().is_none();
    let _ = target.kill();
    let _ = target.wait();
    assert!(out.status.success(), "the wrapper failed: {out:?}");
    assert!(text.contains("kill=") && !text.contains("kill=0"), "{text}");
    assert!(alive, "the process outside the sandbox was killed");
}

/// An `exec` the caller abandons is killed with its whole process group
/// through the sandbox wrapper too (the wrapper execs the command in the
/// group's leader, switched to the sandbox user): the shell and what it
/// put in the background are gone, not left running as `nobody`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_sandboxed_exec_is_killed_with_its_group() {
    let _turn = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let runtime = start(config(dir.path())).await;
    let workspace = runtime.config().builtin.workspace_root.clone();
    let dispatcher = std::sync::Arc::clone(runtime.dispatcher());
    let call = tokio::spawn(async move {
        dispatcher
            .call(
                "exec",
                json!({
                    "command": "sleep 60 & echo $! > bg.pid; echo $$ > sh.pid; wait",
                    "timeout_ms": 60_000,
                }),
                &hale::actors::dispatch::ToolContext::default(),
            )
            .await
    });
    let pid_in = |name: &str| -> Option<u32> {
        std::fs::read_to_string(workspace.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            let state = stat[stat.rfind(')').unwrap() + 2..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned();
            state != "Z" && state != "X"
        })
    };
    let mut pids = None;
    for _ in 0..500 {
        if let (Some(bg), Some(sh)) = (pid_in("bg.pid"), pid_in("sh.pid")) {
            pids = Some((bg, sh));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (bg, sh) = pids.expect("the command never started");
    assert!(alive(bg) && alive(sh));
    call.abort();
    let mut gone = false;
    for _ in 0..250 {
        if !alive(bg) && !alive(sh) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gone,
        "the abandoned sandboxed exec survived: shell alive {}, background alive {}",
        alive(sh),
        alive(bg)
    );
    still_serves(&runtime).await;
    runtime.shutdown().await.unwrap();
}
