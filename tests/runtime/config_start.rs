//! A runtime started from `hale.toml` text: MCP servers, models on
//! loopback OpenAI / Anthropic servers, agents, memory in the system
//! prompt, model fallback inside a session, config errors with their
//! line, and a data directory already in use.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::routing::post;
use hale::actors::event::EventKind;
use hale::actors::memory::Lesson;
use hale::actors::outcome::Status;
use hale::actors::store::MessageState;
use hale::cli::ConfigArgs;
use hale::config::Config;
use hale::runtime::{DEFAULT_TOOLS, Runtime, RuntimeConfig, RuntimeError};
use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// A fake provider: answers from a queue (then a default), records bodies.

struct Fake {
    queue: Mutex<VecDeque<(u16, Value)>>,
    default: (u16, Value),
    seen: Mutex<Vec<Value>>,
}

impl Fake {
    fn new(queue: Vec<(u16, Value)>, default: (u16, Value)) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(queue.into()),
            default,
            seen: Mutex::new(Vec::new()),
        })
    }

    fn bodies(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves `fake` at `path` on a free loopback port; returns
/// `http://127.0.0.1:<port>`.
async fn serve(path: &str, fake: Arc<Fake>) -> String {
    let app = axum::Router::new().route(
        path,
        post(move |body: String| {
            let fake = Arc::clone(&fake);
            async move {
                fake.seen
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap_or(Value::Null));
                let (status, body) = fake
                    .queue
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or_else(|| fake.default.clone());
                (
                    StatusCode::from_u16(status).unwrap(),
                    [("content-type", HeaderValue::from_static("application/json"))],
                    body.to_string(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn openai_text(text: &str) -> (u16, Value) {
    (
        200,
        json!({ "id": "c", "object": "chat.completion", "choices": [{ "index": 0,
                "message": { "role": "assistant", "content": text },
                "finish_reason": "stop" }] }),
    )
}

fn openai_calls(calls: &[(&str, &str, Value)]) -> (u16, Value) {
    let calls: Vec<Value> = calls
        .iter()
        .map(|(id, name, args)| {
            json!({ "id": id, "type": "function",
                    "function": { "name": name, "arguments": args.to_string() } })
        })
        .collect();
    (
        200,
        json!({ "id": "c", "object": "chat.completion", "choices": [{ "index": 0,
                "message": { "role": "assistant", "content": null, "tool_calls": calls },
                "finish_reason": "tool_calls" }] }),
    )
}

fn unavailable() -> (u16, Value) {
    (
        503,
        json!({ "error": { "message": "overloaded", "type": "server_error" } }),
    )
}

/// Writes `text` as `<dir>/hale.toml`.
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("hale.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts from the file, bounded in time.
async fn start_file(path: &Path) -> Result<Runtime, RuntimeError> {
    tokio::time::timeout(WAIT, Runtime::start_from_file(Some(path)))
        .await
        .expect("runtime start timed out")
}

/// Puts `text` in `<workspace>/notes.txt` before the runtime starts.
fn notes(dir: &Path, text: &str) {
    let workspace = dir.join("data").join("workspace");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::write(workspace.join("notes.txt"), text).unwrap();
}

async fn learn(runtime: &Runtime, text: &str) {
    let outcome = runtime
        .memory()
        .remember(Lesson {
            section: "Incidents".into(),
            text: text.into(),
            date: None,
            incident: None,
        })
        .await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
}

fn tool_names(body: &Value) -> Vec<String> {
    body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["function"]["name"]
                .as_str()
                .or_else(|| t["name"].as_str())
                .unwrap()
                .to_owned()
        })
        .collect()
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_agent_from_hale_toml_calls_a_builtin_and_an_mcp_tool_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    notes(dir.path(), "the answer is 42\n");
    let fake = Fake::new(
        vec![openai_calls(&[
            ("call_1", "read_file", json!({ "path": "notes.txt" })),
            ("call_2", "x__echo", json!({ "text": "ping" })),
        ])],
        openai_text("the notes say 42"),
    );
    let base = serve("/v1/chat/completions", Arc::clone(&fake)).await;
    let path = write_config(
        dir.path(),
        &format!(
            r#"
data_dir = "data"

[session]
memory_prompt_bytes = 4096

[[mcp]]
name = "x"
command = "{bin}"
args = ["fault-mcp", "--name", "x"]

[mcp.breaker]
failures = 2
cool_down = "45s"

[[models]]
name = "local"
provider = "openai"
base_url = "{base}/v1"
model = "test-model"
timeout = "10s"

[[agents]]
name = "ops"
models = ["local"]
tools = ["read_file"]
mcp = ["x"]
budget = 7
system_prompt = "You keep the build green."
"#,
            bin = hale_bin().display()
        ),
    );
    let runtime = start_file(&path).await.unwrap();
    // The per-server breaker from [mcp.breaker] is the one applied.
    assert_eq!(
        runtime.endpoints().get("x").breaker_settings(),
        (2, Duration::from_secs(45))
    );
    assert_eq!(
        runtime.config().builtin.workspace_root,
        dir.path().join("data").join("workspace")
    );
    learn(&runtime, "server x answers slowly after a deploy").await;
    assert!(runtime.mcp().wait_ready("x", WAIT).await.unwrap());

    let session = runtime.create_session("ops").await.unwrap();
    let record = ask(&runtime, &session, "what do the notes say?", WAIT).await;
    assert_eq!(record.state, MessageState::Done, "{record:?}");
    assert_eq!(record.reply.as_deref(), Some("the notes say 42"));

    let bodies = fake.bodies();
    assert_eq!(bodies.len(), 2, "{bodies:#?}");
    let first = &bodies[0];
    assert_eq!(first["model"], "test-model");
    let system = first["messages"][0]["content"].as_str().unwrap();
    assert!(system.starts_with("You keep the build green."), "{system}");
    assert!(
        system.contains("server x answers slowly after a deploy"),
        "MEMORY.md is in the system prompt: {system}"
    );
    assert!(
        system.ends_with("Tool calls left for this message: 7"),
        "{system}"
    );
    let mut offered = tool_names(first);
    offered.sort();
    assert!(offered.contains(&"read_file".to_owned()), "{offered:?}");
    assert!(offered.contains(&"x__echo".to_owned()), "{offered:?}");
    assert!(!offered.contains(&"exec".to_owned()), "{offered:?}");

    // The second request carries both results, after the assistant turn.
    let second = &bodies[1];
    let messages = second["messages"].as_array().unwrap();
    let result_of = |id: &str| -> Value {
        let m = messages
            .iter()
            .find(|m| m["role"] == "tool" && m["tool_call_id"] == id)
            .unwrap_or_else(|| panic!("no result for {id}: {messages:#?}"));
        serde_json::from_str(m["content"].as_str().unwrap()).unwrap()
    };
    let read = result_of("call_1");
    assert_eq!(read["status"], "success", "{read}");
    assert!(read.to_string().contains("the answer is 42"), "{read}");
    let echo = result_of("call_2");
    assert_eq!(echo["status"], "success", "{echo}");
    assert!(echo.to_string().contains("ping"), "{echo}");
    let system = messages[0]["content"].as_str().unwrap();
    assert!(
        system.ends_with("Tool calls left for this message: 5"),
        "{system}"
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_falls_back_to_the_next_model_when_the_first_keeps_failing() {
    let dir = tempfile::tempdir().unwrap();
    let down = Fake::new(Vec::new(), unavailable());
    let up = Fake::new(Vec::new(), openai_text("answered by the backup"));
    let down_base = serve("/v1/chat/completions", Arc::clone(&down)).await;
    let up_base = serve("/v1/chat/completions", Arc::clone(&up)).await;
    let path = write_config(
        dir.path(),
        &format!(
            r#"
data_dir = "data"

[[models]]
name = "flaky"
provider = "openai"
base_url = "{down_base}/v1"
model = "m1"

[[models]]
name = "backup"
provider = "openai"
base_url = "{up_base}/v1"
model = "m2"

[[agents]]
name = "ops"
models = ["flaky", "backup"]
"#
        ),
    );
    let runtime = start_file(&path).await.unwrap();
    let session = runtime.create_session("ops").await.unwrap();
    let record = ask(&runtime, &session, "hello", WAIT).await;
    assert_eq!(record.state, MessageState::Done, "{record:?}");
    assert_eq!(record.reply.as_deref(), Some("answered by the backup"));
    assert!(!down.bodies().is_empty(), "the first model was asked");
    assert_eq!(up.bodies().len(), 1);
    assert_eq!(up.bodies()[0]["model"], "m2");

    let events = events(&runtime, None).await;
    let fallbacks = of_kind(&events, &EventKind::Fallback);
    assert!(
        fallbacks
            .iter()
            .any(|e| e.data.to_string().contains("backup") || e.message.contains("backup")),
        "a fallback event names the backup: {fallbacks:#?}"
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_agent_on_an_anthropic_model_runs_a_tool_use_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    notes(dir.path(), "deploys happen on Tuesdays\n");
    let fake = Fake::new(
        vec![(
            200,
            json!({ "id": "msg_1", "type": "message", "role": "assistant", "content": [
                { "type": "text", "text": "Let me look." },
                { "type": "tool_use", "id": "toolu_1", "name": "read_file",
                  "input": { "path": "notes.txt" } }],
                "stop_reason": "tool_use" }),
        )],
        (
            200,
            json!({ "id": "msg_2", "type": "message", "role": "assistant",
                    "content": [{ "type": "text", "text": "Deploys are on Tuesdays." }],
                    "stop_reason": "end_turn" }),
        ),
    );
    let base = serve("/v1/messages", Arc::clone(&fake)).await;
    // No [[agents]]: the `default` agent, every model, every tool.
    let path = write_config(
        dir.path(),
        &format!(
            r#"
data_dir = "data"

[session]
iteration_budget = 9

[[models]]
name = "claude"
provider = "anthropic"
base_url = "{base}"
model = "claude-test"
"#
        ),
    );
    let runtime = start_file(&path).await.unwrap();
    let agent = &runtime.config().agents[0];
    assert_eq!(agent.name, "default");
    assert_eq!(agent.models, ["claude", "scripted"]);
    assert_eq!(agent.budget, 9);
    learn(&runtime, "read notes.txt before asking").await;

    let session = runtime.create_session("default").await.unwrap();
    let record = ask(&runtime, &session, "when are deploys?", WAIT).await;
    assert_eq!(record.state, MessageState::Done, "{record:?}");
    assert_eq!(record.reply.as_deref(), Some("Deploys are on Tuesdays."));

    let bodies = fake.bodies();
    assert_eq!(bodies.len(), 2, "{bodies:#?}");
    let first = &bodies[0];
    assert_eq!(first["model"], "claude-test");
    let system = first["system"].as_str().unwrap();
    assert!(system.contains("read notes.txt before asking"), "{system}");
    assert!(
        system.ends_with("Tool calls left for this message: 9"),
        "{system}"
    );
    // The default agent offers exactly the runtime's default tools.
    let mut offered = tool_names(first);
    offered.sort();
    let mut expected: Vec<String> = DEFAULT_TOOLS.iter().map(|t| (*t).to_owned()).collect();
    expected.sort();
    assert_eq!(offered, expected);

    let messages = bodies[1]["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_eq!(messages[1]["content"][1]["type"], "tool_use");
    assert_eq!(messages[1]["content"][1]["id"], "toolu_1");
    let result = &messages[2]["content"][0];
    assert_eq!(result["type"], "tool_result");
    assert_eq!(result["tool_use_id"], "toolu_1");
    let outcome: Value = serde_json::from_str(result["content"].as_str().unwrap()).unwrap();
    assert_eq!(outcome["status"], "success", "{outcome}");
    assert!(
        outcome.to_string().contains("deploys happen on Tuesdays"),
        "{outcome}"
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_fails_the_start_with_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    // An agent naming a model that does not exist (line 7).
    let path = write_config(
        dir.path(),
        "data_dir = \"data\"\n\n[[models]]\nname = \"local\"\nprovider = \"scripted\"\n\n\
         [[agents]]\nname = \"ops\"\nmodels = [\"nope\"]\n",
    );
    let error = start_file(&path).await.unwrap_err();
    let shown = error.to_string();
    assert!(
        shown.starts_with(&format!("{}:9:", path.display())),
        "{shown}"
    );
    assert!(shown.contains("nope"), "{shown}");
    assert!(matches!(error, RuntimeError::ConfigFile(_)), "{error:?}");

    // An API key variable that is not set: found before anything starts,
    // at the model's line.
    let path = write_config(
        dir.path(),
        "data_dir = \"data\"\n\n[[models]]\nname = \"gpt\"\nprovider = \"openai\"\n\
         model = \"gpt-4o\"\napi_key_env = \"HALE_TEST_KEY_THAT_IS_NEVER_SET\"\n",
    );
    let shown = start_file(&path).await.unwrap_err().to_string();
    assert!(
        shown.starts_with(&format!("{}:4:", path.display())),
        "{shown}"
    );
    assert!(shown.contains("HALE_TEST_KEY_THAT_IS_NEVER_SET"), "{shown}");
    // A base_url the HTTP client cannot parse, likewise.
    let path = write_config(
        dir.path(),
        "data_dir = \"data\"\n\n\n[[models]]\nname = \"local\"\nprovider = \"openai\"\n\
         model = \"m\"\nbase_url = \"http://exa mple.com/v1\"\n",
    );
    let shown = start_file(&path).await.unwrap_err().to_string();
    assert!(
        shown.starts_with(&format!("{}:5:", path.display())),
        "{shown}"
    );
    assert!(shown.contains("local"), "{shown}");
    // A model name the model layer would refuse is refused at load.
    let path = write_config(
        dir.path(),
        "[[models]]\nname = \"GPT\"\nprovider = \"scripted\"\n",
    );
    let shown = start_file(&path).await.unwrap_err().to_string();
    assert!(
        shown.starts_with(&format!("{}:2:", path.display())),
        "{shown}"
    );
    // Neither start left the data directory locked.
    let runtime = start_file(&write_config(dir.path(), "data_dir = \"data\"\n"))
        .await
        .unwrap();
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_runtime_on_the_same_data_dir_is_refused_as_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "data_dir = \"data\"\n");
    let first = start_file(&path).await.unwrap();
    let error = start_file(&path).await.unwrap_err();
    let shown = error.to_string();
    assert!(matches!(error, RuntimeError::DataDir(_)), "{error:?}");
    assert!(shown.contains("in use"), "{shown}");
    assert!(
        shown.contains(&dir.path().join("data").display().to_string()),
        "{shown}"
    );
    assert!(first.is_ready());
    first.shutdown().await.unwrap();
    // Shut down, the directory is free again, even while a clone of the
    // old handle is still around.
    let kept = first.clone();
    let second = start_file(&path).await.unwrap();
    assert!(second.is_ready() && !kept.is_ready());
    second.shutdown().await.unwrap();
}

#[test]
fn every_setting_of_the_file_reaches_the_runtime_config() {
    let text = r#"
data_dir = "state"

[tools]
workspace = "work"
exec_timeout = "45s"
[[tools.exec_approval]]
pattern = '^rm '
reason = "deletes"

[session]
iteration_budget = 12
memory_prompt_bytes = 1000
journal_retention = "2d"
learn_from_incidents = false

[audit]
retention = "3d"
max_events = 500

[[mcp]]
name = "w"
url = "http://127.0.0.1:1/mcp"
[mcp.breaker]
failures = 3

[[models]]
name = "local"
provider = "scripted"

[[agents]]
name = "ops"
tools = ["read_file", "switch_model"]
mcp = []
"#;
    let config =
        Config::from_str_with_env(text, Some(Path::new("/srv/hale/hale.toml")), |_| false).unwrap();
    let runtime = RuntimeConfig::from_config_with_env(&config, |_| None).unwrap();
    assert_eq!(runtime.data_dir, Path::new("/srv/hale/state"));
    assert_eq!(runtime.builtin.workspace_root, Path::new("/srv/hale/work"));
    assert_eq!(
        runtime.builtin.exec.default_timeout,
        Duration::from_secs(45)
    );
    assert_eq!(runtime.builtin.exec.blocked.len(), 1);
    assert_eq!(runtime.mcp.len(), 1);
    assert_eq!(runtime.mcp_breakers["w"].failures, 3);
    assert_eq!(
        runtime
            .models
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["local", "scripted"]
    );
    let ops = &runtime.agents[0];
    assert_eq!(ops.name, "ops");
    assert_eq!(ops.tools, ["read_file", "switch_model"]);
    assert_eq!(ops.budget, 12);
    assert!(ops.mcp.is_empty());
    assert_eq!(ops.system_prompt, hale::runtime::DEFAULT_SYSTEM_PROMPT);
    assert_eq!(runtime.sessions.memory_prompt_bytes, 1000);
    assert_eq!(runtime.journal_retention, Duration::from_secs(2 * 86_400));
    assert!(!runtime.learning.lessons);
    assert_eq!(
        runtime.audit.retention.max_age,
        Some(Duration::from_secs(3 * 86_400))
    );
    assert_eq!(runtime.audit.retention.max_rows, Some(500));
    assert_eq!(
        runtime.memory_path.as_deref(),
        Some(Path::new("/srv/hale/state/memory/MEMORY.md"))
    );

    // With no file, the default agent has the runtime's default tools.
    let defaults = RuntimeConfig::from_config_with_env(
        &Config::from_str_with_env("", None, |_| false).unwrap(),
        |_| None,
    )
    .unwrap();
    assert_eq!(defaults.agents.len(), 1);
    let built = hale::runtime::default_agent(&["scripted".to_owned()]);
    let loaded = &defaults.agents[0];
    assert_eq!(loaded.name, built.name);
    assert_eq!(loaded.tools, built.tools);
    assert_eq!(loaded.models, built.models);
    assert_eq!(loaded.system_prompt, built.system_prompt);
    assert_eq!(loaded.budget, built.budget);
}

#[test]
fn config_args_override_the_data_dir_and_move_the_default_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "data_dir = \"data\"\n");
    let args = ConfigArgs {
        config: Some(path.clone()),
        data_dir: Some(dir.path().join("elsewhere")),
    };
    let runtime = args.runtime_config().unwrap();
    assert_eq!(runtime.data_dir, dir.path().join("elsewhere"));
    assert_eq!(
        runtime.builtin.workspace_root,
        dir.path().join("elsewhere").join("workspace")
    );
    assert_eq!(
        runtime.memory_path.as_deref(),
        Some(dir.path().join("elsewhere/memory/MEMORY.md").as_path())
    );
    // An explicit workspace stays where the file puts it.
    let path = write_config(
        dir.path(),
        "data_dir = \"data\"\n[tools]\nworkspace = \"ws\"\n",
    );
    let args = ConfigArgs {
        config: Some(path),
        data_dir: Some(dir.path().join("elsewhere")),
    };
    let runtime = args.runtime_config().unwrap();
    assert_eq!(runtime.builtin.workspace_root, dir.path().join("ws"));

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConfigArgs,
    }
    use clap::Parser as _;
    let parsed = Cli::try_parse_from(["hale", "--config", "a.toml", "--data-dir", "d"]).unwrap();
    assert_eq!(parsed.args.config.as_deref(), Some(Path::new("a.toml")));
    assert_eq!(parsed.args.data_dir.as_deref(), Some(Path::new("d")));
}
