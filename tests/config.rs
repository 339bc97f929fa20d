//! `hale.toml`: every default, each error class with its line, a full
//! example mapped to the actor configs, and the `hale init` template.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hale::config::{
    AgentConfig, BUILTIN_TOOLS, BreakerSettings, Config, ConfigError, InitError, Location,
    SessionSettings, TEMPLATE, write_template,
};
use hale_actors::audit::Retention;
use hale_actors::builtin::BlockRule;
use hale_actors::mcp::McpTransport;
use hale_actors::model::{ModelConfig, Provider};

fn no_env(_: &str) -> bool {
    false
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_str_with_env(text, Some(Path::new("hale.toml")), no_env)
}

fn error(text: &str) -> ConfigError {
    match parse(text) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => e,
    }
}

/// The error's line, asserting the message contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let e = error(text);
    let shown = e.to_string();
    assert!(
        shown.contains(needle),
        "`{shown}` does not contain `{needle}`"
    );
    assert!(shown.starts_with("hale.toml:"), "{shown}");
    e.location()
        .unwrap_or_else(|| panic!("no location: {shown}"))
        .line
}

fn all_builtins() -> Vec<String> {
    BUILTIN_TOOLS.iter().map(|t| (*t).to_owned()).collect()
}

#[test]
fn no_file_means_every_default() {
    let config = Config::from_str_with_env("", None, no_env).unwrap();
    assert_eq!(config.path(), None);
    assert_eq!(config.data_dir(), Path::new("./.hale"));
    assert_eq!(config.workspace_root(), Path::new("./.hale/workspace"));
    assert_eq!(
        config.memory_config().path,
        PathBuf::from("./.hale/memory/MEMORY.md")
    );
    assert_eq!(config.store_config().path, PathBuf::from("./.hale/hale.db"));
    assert_eq!(config.session(), &SessionSettings::default());
    assert_eq!(config.session().iteration_budget, 50);
    assert_eq!(config.session().memory_prompt_bytes, 16 * 1024);
    assert_eq!(
        config.session().journal_retention,
        Duration::from_secs(7 * 86_400)
    );
    assert!(config.session().learn_from_incidents);
    assert_eq!(config.audit_config().retention, Retention::default());
    assert!(config.mcp_configs().is_empty());
    assert!(config.mcp_breakers().is_empty());
    assert_eq!(
        config.model_configs(),
        vec![ModelConfig::scripted("scripted")]
    );
    assert_eq!(
        config.agents(),
        vec![AgentConfig {
            name: "default".into(),
            models: vec!["scripted".into()],
            tools: all_builtins(),
            mcp: vec![],
            budget: 50,
            system_prompt: None,
            token_budget: None,
        }]
    );
    let builtin = config.builtin_config();
    let defaults = hale_actors::builtin::BuiltinConfig::new("./.hale/workspace");
    assert_eq!(builtin.exec, defaults.exec);
    assert_eq!(builtin.read_file, defaults.read_file);
    assert_eq!(builtin.write_file, defaults.write_file);
    assert_eq!(builtin.web_fetch, defaults.web_fetch);
    assert!(builtin.exec.blocked.is_empty());
    assert!(config.warnings().is_empty());
    // Empty tables are the same as none.
    let empty_tables = parse("[tools]\n[session]\n[audit]\n").unwrap();
    assert_eq!(empty_tables.session(), config.session());
    assert_eq!(empty_tables.agents(), config.agents());
}

#[test]
fn load_without_a_path_and_without_hale_toml_gives_the_defaults() {
    // cargo runs tests in the package root, which has no hale.toml.
    if Path::new("hale.toml").exists() {
        return;
    }
    let config = Config::load(None).unwrap();
    assert_eq!(config.path(), None);
    assert_eq!(config.data_dir(), Path::new("./.hale"));
}

#[test]
fn default_models_follow_the_environment() {
    let openai = Config::from_str_with_env("", None, |v| v == "OPENAI_API_KEY").unwrap();
    assert_eq!(
        openai.model_configs(),
        vec![
            ModelConfig::remote(
                "openai",
                Provider::Openai,
                "https://api.openai.com/v1",
                "gpt-4o-mini",
                Some("OPENAI_API_KEY".into())
            ),
            ModelConfig::scripted("scripted"),
        ]
    );
    let both = Config::from_str_with_env("", None, |_| true).unwrap();
    let names: Vec<_> = both.model_configs().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["openai", "anthropic", "scripted"]);
    let anthropic = &both.model_configs()[1];
    assert_eq!(anthropic.provider, Provider::Anthropic);
    assert_eq!(
        anthropic.base_url.as_deref(),
        Some("https://api.anthropic.com")
    );
    assert_eq!(anthropic.api_key_env.as_deref(), Some("ANTHROPIC_API_KEY"));
    assert_eq!(both.agents()[0].models, ["openai", "anthropic", "scripted"]);
    // Configured models replace the environment's defaults.
    let configured = Config::from_str_with_env(
        "[[models]]\nname = \"local\"\nprovider = \"openai\"\nbase_url = \"http://localhost:11434/v1\"\nmodel = \"llama3\"\n",
        None,
        |_| true,
    )
    .unwrap();
    let local = &configured.model_configs()[0];
    // A custom endpoint is sent no key unless one is named.
    assert_eq!(local.api_key_env, None);
    let names: Vec<_> = configured
        .model_configs()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["local", "scripted"]);
}

const FULL: &str = r#"data_dir = "state"

[tools]
workspace = "/srv/agent-work"
exec_timeout = "45s"
exec_max_timeout = "20m"
exec_max_output_bytes = 1000
max_read_bytes = 4096
max_write_bytes = 8192
max_edit_bytes = 16384
glob_max_results = 10
grep_max_matches = 20
web_fetch_timeout = "5s"
web_fetch_max_bytes = 2048
web_fetch_allow = ["127.0.0.1:8080", "internal.example.com"]

[[tools.exec_approval]]
pattern = '^sudo\b'
reason = "root access"

[[tools.exec_approval]]
pattern = 'rm\s+-rf'
reason = "recursive delete"

[session]
iteration_budget = 25
memory_prompt_bytes = 8192
journal_retention = "36h"
learn_from_incidents = false
context_budget_bytes = 100000
max_turns_per_message = 12
stall_backoff = "2s"
stall_max_backoff = "30s"
message_retention = "12h"
approval_retention = "0s"

[audit]
retention = "14d"
max_events = 5000
max_bytes = 4096

[[mcp]]
name = "weather"
command = "node"
args = ["weather.js", "--port", "0"]
env = { UNITS = "metric", LANG = "en" }
cwd = "servers"
timeout = "15s"
connect_timeout = "40s"
tool_timeouts = { forecast = "90s" }
idempotent = { forecast = true, alert = false }
backups = ["weather-backup"]

[mcp.restart]
min_backoff = "250ms"
max_backoff = "30s"
jitter = 0.5
max_restarts = 3
period = "2m"
probe_after = "1m"

[mcp.breaker]
failures = 2
cool_down = "45s"

[[mcp]]
name = "weather-backup"
url = "http://127.0.0.1:8931/mcp"
enabled = false

[[models]]
name = "gpt"
provider = "openai"
model = "gpt-4o"
timeout = "60s"
max_tokens = 1024
max_reply_bytes = 65536

[[models]]
name = "claude"
provider = "anthropic"
base_url = "https://anthropic.example.com/"
model = "claude-sonnet-4-5"
api_key_env = "MY_ANTHROPIC_KEY"

[[agents]]
name = "ops"
models = ["claude", "gpt", "scripted"]
tools = ["exec", "read_file", "weather-backup__forecast", "weather"]
mcp = []
budget = 10
token_budget = 120000
system_prompt = "Keep it running."

[[agents]]
name = "reader"
tools = ["read_file", "grep"]
"#;

#[test]
fn a_full_example_maps_to_the_actor_configs() {
    let config =
        Config::from_str_with_env(FULL, Some(Path::new("/etc/hale/hale.toml")), no_env).unwrap();
    assert_eq!(config.path(), Some(Path::new("/etc/hale/hale.toml")));
    assert_eq!(config.data_dir(), Path::new("/etc/hale/state"));
    assert_eq!(config.workspace_root(), Path::new("/srv/agent-work"));
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());

    let b = config.builtin_config();
    assert_eq!(b.workspace_root, Path::new("/srv/agent-work"));
    assert_eq!(b.exec.default_timeout, Duration::from_secs(45));
    assert_eq!(b.exec.max_timeout, Duration::from_secs(20 * 60));
    assert_eq!(b.exec.output_cap_bytes, 1000);
    assert_eq!(
        b.exec.blocked,
        vec![
            BlockRule::new(r"^sudo\b", "root access"),
            BlockRule::new(r"rm\s+-rf", "recursive delete"),
        ]
    );
    assert_eq!(b.read_file.max_bytes, 4096);
    assert_eq!(b.write_file.max_bytes, 8192);
    assert_eq!(b.edit_file.max_bytes, 16384);
    assert_eq!(b.glob.max_results, 10);
    assert_eq!(b.grep.max_matches, 20);
    assert_eq!(b.web_fetch.timeout, Duration::from_secs(5));
    assert_eq!(b.web_fetch.max_bytes, 2048);
    let allowed: Vec<_> = b
        .web_fetch
        .allow
        .entries()
        .iter()
        .map(|e| e.as_str())
        .collect();
    assert_eq!(allowed, ["127.0.0.1:8080", "internal.example.com"]);
    // The built-in tools accept these settings.
    assert!(hale_actors::builtin::Exec::new(b.exec.clone()).is_ok());

    assert_eq!(
        config.session(),
        &SessionSettings {
            iteration_budget: 25,
            memory_prompt_bytes: 8192,
            journal_retention: Duration::from_secs(36 * 3600),
            learn_from_incidents: false,
            max_open_questions: 3,
            context_budget_bytes: 100_000,
            max_turns_per_message: 12,
            stall_backoff: hale_actors::session::StallBackoff {
                min: Duration::from_secs(2),
                max: Duration::from_secs(30),
            },
            message_retention: Some(Duration::from_secs(12 * 3600)),
            approval_retention: None,
            deleted_session_retention: Some(Duration::from_secs(7 * 86_400)),
            restart_backoff: Duration::from_millis(5),
            restart_max_backoff: Duration::from_millis(500),
        }
    );
    let retention = config.audit_config().retention;
    assert_eq!(retention.max_age, Some(Duration::from_secs(14 * 86_400)));
    assert_eq!(retention.max_rows, Some(5000));
    assert_eq!(retention.max_bytes, Some(4096));

    let mcp = config.mcp_configs();
    assert_eq!(mcp.len(), 2);
    let weather = &mcp[0];
    assert_eq!(weather.name, "weather");
    assert_eq!(
        weather.transport,
        McpTransport::Stdio {
            command: "node".into(),
            args: vec!["weather.js".into(), "--port".into(), "0".into()],
            env: BTreeMap::from([
                ("LANG".into(), "en".into()),
                ("UNITS".into(), "metric".into())
            ]),
            cwd: Some("/etc/hale/servers".into()),
        }
    );
    assert_eq!(weather.request_timeout, Duration::from_secs(15));
    assert_eq!(weather.connect_timeout, Duration::from_secs(40));
    assert_eq!(weather.timeout_for("forecast"), Duration::from_secs(90));
    assert_eq!(weather.timeout_for("other"), Duration::from_secs(15));
    assert_eq!(weather.idempotent.get("alert"), Some(&false));
    assert_eq!(weather.fallbacks, ["weather-backup"]);
    assert_eq!(weather.restart_min, Duration::from_millis(250));
    assert_eq!(weather.restart_max, Duration::from_secs(30));
    assert!((weather.restart_jitter - 0.5).abs() < f64::EPSILON);
    assert_eq!(weather.park_after, 3);
    assert_eq!(weather.park_window, Duration::from_secs(120));
    assert_eq!(weather.probe_after, Duration::from_secs(60));
    assert!(!weather.disabled);
    let backup = &mcp[1];
    assert_eq!(
        backup.transport,
        McpTransport::Http {
            url: "http://127.0.0.1:8931/mcp".into()
        }
    );
    assert!(backup.disabled);
    assert_eq!(backup.restart_min, Duration::from_millis(100));
    assert_eq!(
        config.mcp_breakers(),
        &BTreeMap::from([(
            "weather".to_owned(),
            BreakerSettings {
                failures: 2,
                cool_down: Duration::from_secs(45)
            }
        )])
    );
    let endpoints = config
        .endpoints(hale_actors::dispatch::DispatchConfig::default())
        .unwrap();
    assert_eq!(
        hale_actors::dispatch::state_name(endpoints.get("weather").breaker_state()),
        "closed"
    );
    // The MCP layer accepts them as they are.
    for server in &mcp {
        server.validate().unwrap();
    }

    let models = config.model_configs();
    let gpt = &models[0];
    assert_eq!(gpt.provider, Provider::Openai);
    assert_eq!(gpt.base_url.as_deref(), Some("https://api.openai.com/v1"));
    assert_eq!(gpt.model.as_deref(), Some("gpt-4o"));
    assert_eq!(gpt.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
    assert_eq!(gpt.timeout, Duration::from_secs(60));
    assert_eq!(gpt.max_tokens, 1024);
    assert_eq!(gpt.max_reply_bytes, 65536);
    let claude = &models[1];
    assert_eq!(claude.provider, Provider::Anthropic);
    assert_eq!(
        claude.base_url.as_deref(),
        Some("https://anthropic.example.com")
    );
    assert_eq!(claude.api_key_env.as_deref(), Some("MY_ANTHROPIC_KEY"));
    assert_eq!(claude.timeout, Duration::from_secs(120));
    assert_eq!(models[2], ModelConfig::scripted("scripted"));
    assert_eq!(models.len(), 3);

    assert_eq!(
        config.agents(),
        vec![
            AgentConfig {
                name: "ops".into(),
                models: vec!["claude".into(), "gpt".into(), "scripted".into()],
                tools: vec![
                    "exec".into(),
                    "read_file".into(),
                    "weather-backup__forecast".into()
                ],
                // A bare server name in `tools` means all its tools.
                mcp: vec!["weather".into()],
                budget: 10,
                system_prompt: Some("Keep it running.".into()),
                token_budget: Some(120_000),
            },
            AgentConfig {
                name: "reader".into(),
                models: vec!["gpt".into(), "claude".into(), "scripted".into()],
                tools: vec!["read_file".into(), "grep".into()],
                mcp: vec!["weather".into(), "weather-backup".into()],
                budget: 25,
                system_prompt: None,
                token_budget: None,
            },
        ]
    );
}

#[test]
fn the_unknown_backup_error_names_file_line_column_and_the_choices() {
    let text = "[[mcp]]\nname = \"weather\"\ncommand = \"node\"\nbackups = [\"weather-bak\"]\n\n[[mcp]]\nname = \"weather-backup\"\nurl = \"http://x/mcp\"\n";
    let e = error(text);
    assert!(matches!(e, ConfigError::Invalid { .. }));
    assert_eq!(
        e.to_string(),
        "hale.toml:4:12: mcp \"weather\": backup \"weather-bak\" is not a configured [[mcp]] server (configured: weather, weather-backup)"
    );
    assert_eq!(
        e.location(),
        Some(Location {
            line: 4,
            column: 12
        })
    );
}

#[test]
fn syntax_and_type_errors_have_lines() {
    let e = error("data_dir = \"x\"\n\n[session\n");
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    assert_eq!(e.location().unwrap().line, 3);

    assert_eq!(
        line_of("[session]\niteration_budget = \"many\"\n", "hale.toml:2:"),
        2
    );
    assert_eq!(
        line_of(
            "[session]\nlearn_from_incidents = true\nlearn = 1\n",
            "unknown field `learn`"
        ),
        3
    );
    assert_eq!(line_of("colour = \"blue\"\n", "unknown field `colour`"), 1);
    assert_eq!(
        line_of(
            "[[mcp]]\nname = \"a\"\ncommand = \"x\"\nrestrat = {}\n",
            "unknown field `restrat`"
        ),
        4
    );
    assert_eq!(
        line_of(
            "[[models]]\nname = \"m\"\nprovider = \"gemini\"\n",
            "unknown variant `gemini`"
        ),
        3
    );
    assert_eq!(
        line_of("[[mcp]]\ncommand = \"x\"\n", "missing field `name`"),
        1
    );
}

#[test]
fn bad_durations_say_what_is_accepted_and_where() {
    let text = "[session]\n\njournal_retention = \"1 week\"\n";
    let e = error(text);
    assert_eq!(
        e.location(),
        Some(Location {
            line: 3,
            column: 21
        })
    );
    assert!(e.to_string().contains("ms, s, m, h or d"), "{e}");
    assert_eq!(
        line_of(
            "[[mcp]]\nname = \"a\"\ncommand = \"x\"\n[mcp.restart]\nperiod = 60\n",
            "duration"
        ),
        5
    );
    assert_eq!(
        line_of("[tools]\nexec_timeout = \"30\"\n", "has no unit"),
        2
    );
}

#[test]
fn mcp_errors_point_at_the_entry() {
    let both = "[[mcp]]\nname = \"a\"\ncommand = \"x\"\nurl = \"http://h/mcp\"\n";
    assert_eq!(line_of(both, "not both"), 4);
    let neither = "[[mcp]]\nname = \"a\"\ntimeout = \"1s\"\n";
    assert_eq!(line_of(neither, "set `command`"), 2);
    assert_eq!(
        line_of(
            "[[mcp]]\nname = \"Weather_1\"\ncommand = \"x\"\n",
            "[a-z0-9-]+"
        ),
        2
    );
    let twice =
        "[[mcp]]\nname = \"a\"\ncommand = \"x\"\n[[mcp]]\nname = \"a\"\nurl = \"http://h/mcp\"\n";
    assert_eq!(line_of(twice, "configured twice (first at line 2)"), 5);
    let own = "[[mcp]]\nname = \"a\"\ncommand = \"x\"\nbackups = [\"a\"]\n";
    assert_eq!(line_of(own, "its own backup"), 4);
    let args_on_url = "[[mcp]]\nname = \"a\"\nurl = \"http://h/mcp\"\nargs = [\"x\"]\n";
    assert_eq!(line_of(args_on_url, "`args` applies to stdio servers"), 4);
    let bad_url = "[[mcp]]\nname = \"a\"\nurl = \"ftp://h\"\n";
    assert_eq!(line_of(bad_url, "not an http:// or https:// URL"), 3);
    let backwards = "[[mcp]]\nname = \"a\"\ncommand = \"x\"\n[mcp.restart]\nmin_backoff = \"10s\"\nmax_backoff = \"1s\"\n";
    assert_eq!(line_of(backwards, "restart.max_backoff"), 2);
    let jitter = "[[mcp]]\nname = \"a\"\ncommand = \"x\"\n[mcp.restart]\njitter = 1.5\n";
    assert_eq!(line_of(jitter, "not between 0 and 1"), 5);
    let cool = "[[mcp]]\nname = \"a\"\ncommand = \"x\"\n[mcp.breaker]\ncool_down = \"0s\"\n";
    assert_eq!(line_of(cool, "cool_down must be greater than zero"), 5);
    let zero = "[[mcp]]\nname = \"a\"\ncommand = \"x\"\n[mcp.breaker]\nfailures = 0\n";
    assert_eq!(line_of(zero, "breaker.failures must be at least 1"), 5);
    let zero_timeout = "[[mcp]]\nname = \"a\"\ncommand = \"x\"\ntimeout = \"0s\"\n";
    assert_eq!(
        line_of(zero_timeout, "timeout: must be greater than zero"),
        2
    );
}

#[test]
fn model_errors_and_warnings() {
    let no_model = "[[models]]\nname = \"m\"\nprovider = \"openai\"\n";
    assert_eq!(line_of(no_model, "`model`"), 2);
    let reserved = "[[models]]\nname = \"scripted\"\nprovider = \"openai\"\nmodel = \"x\"\n";
    assert_eq!(line_of(reserved, "reserved"), 3);
    let twice = "[[models]]\nname = \"m\"\nprovider = \"scripted\"\n[[models]]\nname = \"m\"\nprovider = \"scripted\"\n";
    assert_eq!(line_of(twice, "configured twice"), 5);
    let zero_timeout = "[[models]]\nname = \"s\"\nprovider = \"scripted\"\ntimeout = \"0ms\"\n";
    assert_eq!(
        line_of(zero_timeout, "timeout must be greater than zero"),
        4
    );
    let scripted_url =
        "[[models]]\nname = \"s\"\nprovider = \"scripted\"\nbase_url = \"http://x\"\n";
    assert_eq!(line_of(scripted_url, "no base_url"), 4);

    let v1 = "[[models]]\nname = \"c\"\nprovider = \"anthropic\"\nmodel = \"claude-sonnet-4-5\"\nbase_url = \"https://api.anthropic.com/v1\"\n";
    let config = parse(v1).unwrap();
    let warnings = config.warnings();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].location.unwrap().line, 5);
    assert!(warnings[0].message.contains("does not include /v1"));
    // A named scripted model takes the place of the implicit one.
    let placed = parse("[[models]]\nname = \"scripted\"\nprovider = \"scripted\"\n[[models]]\nname = \"gpt\"\nprovider = \"openai\"\nmodel = \"x\"\n").unwrap();
    let names: Vec<_> = placed.model_configs().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["scripted", "gpt"]);
}

#[test]
fn agent_errors_name_the_choices() {
    let models = "[[models]]\nname = \"gpt\"\nprovider = \"openai\"\nmodel = \"x\"\n\n[[agents]]\nname = \"a\"\nmodels = [\"gpt\", \"claude\"]\n";
    let e = error(models);
    assert_eq!(e.location().unwrap().line, 8);
    assert!(
        e.to_string().contains(
            "agent \"a\": model \"claude\" is not a configured model (configured: gpt, scripted)"
        ),
        "{e}"
    );
    let tool = "[[agents]]\nname = \"a\"\ntools = [\"exec\",\n  \"rm_rf\"]\n";
    let e = error(tool);
    assert_eq!(e.location(), Some(Location { line: 4, column: 3 }));
    assert!(e.to_string().contains("exec, read_file"), "{e}");
    let server_tool = "[[agents]]\nname = \"a\"\ntools = [\"weather__forecast\"]\n";
    assert_eq!(
        line_of(
            server_tool,
            "\"weather\" is not a configured [[mcp]] server"
        ),
        3
    );
    let server =
        "[[mcp]]\nname = \"w\"\ncommand = \"x\"\n[[agents]]\nname = \"a\"\nmcp = [\"w\", \"v\"]\n";
    assert_eq!(
        line_of(
            server,
            "mcp \"v\" is not a configured [[mcp]] server (configured: w)"
        ),
        6
    );
    let twice = "[[agents]]\nname = \"a\"\n[[agents]]\nname = \"a\"\n";
    assert_eq!(line_of(twice, "configured twice (first at line 2)"), 4);
    let budget = "[[agents]]\nname = \"a\"\nbudget = 0\n";
    assert_eq!(line_of(budget, "budget must be at least 1"), 3);
    let tokens = "[[agents]]\nname = \"a\"\ntoken_budget = 0\n";
    assert_eq!(line_of(tokens, "token_budget must be at least 1"), 3);
    let empty = "[[agents]]\nname = \"a\"\nmodels = []\n";
    assert_eq!(line_of(empty, "at least one model"), 2);
}

#[test]
fn tool_policy_errors() {
    let regex = "[tools]\n[[tools.exec_approval]]\npattern = '(unclosed'\nreason = \"x\"\n";
    assert_eq!(line_of(regex, "not a valid regular expression"), 3);
    let timeouts = "[tools]\nexec_timeout = \"20m\"\nexec_max_timeout = \"1m\"\n";
    assert!(error(timeouts).to_string().contains("exec_timeout (20m)"));
    assert_eq!(
        line_of("[session]\niteration_budget = 0\n", "at least 1"),
        2
    );
    assert_eq!(line_of("data_dir = \"\"\n", "must not be empty"), 1);
    let allow = "[tools]\nweb_fetch_allow = [\n  \"127.0.0.1:8080\",\n  \"http://10.0.0.1/\",\n]\n";
    assert_eq!(
        line_of(
            allow,
            "tools.web_fetch_allow: `http://10.0.0.1/`: not an address"
        ),
        4
    );
    assert_eq!(
        line_of(
            "[tools]\nweb_fetch_allow = [\"10.0.0.1/8\"]\n",
            "did you mean 10.0.0.0/8"
        ),
        2
    );
}

#[test]
fn load_reads_the_file_and_resolves_paths_next_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hale.toml");
    std::fs::write(&path, "data_dir = \"data\"\n[tools]\nworkspace = \"ws\"\n").unwrap();
    let config = Config::load(Some(&path)).unwrap();
    assert_eq!(config.data_dir(), dir.path().join("data"));
    assert_eq!(config.workspace_root(), dir.path().join("ws"));
    let missing = Config::load(Some(&dir.path().join("nope.toml"))).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }));
    assert!(
        missing.to_string().contains("nope.toml: cannot read"),
        "{missing}"
    );
    // The error names the file as given.
    std::fs::write(&path, "\n\nbogus = 1\n").unwrap();
    let e = Config::load(Some(&path)).unwrap_err();
    // (The list of tables it offers grows with the file; not pinned here.)
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!(
            "{}:3:1: unknown field `bogus`, expected one of `data_dir`, `tools`",
            path.display()
        )),
        "{shown}"
    );
}

#[test]
fn init_writes_a_template_that_loads_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hale.toml");
    write_template(&path, false).unwrap();
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written, TEMPLATE);
    let config = Config::from_str_with_env(&written, Some(&path), no_env).unwrap();
    let defaults = Config::from_str_with_env("", Some(&path), no_env).unwrap();
    assert_eq!(config.session(), defaults.session());
    assert_eq!(config.agents(), defaults.agents());
    assert_eq!(config.model_configs(), defaults.model_configs());
    assert_eq!(config.data_dir(), defaults.data_dir());

    std::fs::write(&path, "keep me").unwrap();
    let refused = write_template(&path, false).unwrap_err();
    assert!(matches!(refused, InitError::Exists { .. }));
    assert!(refused.to_string().contains("--force"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    write_template(&path, true).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), TEMPLATE);
}

/// Uncommenting every example line of the template (`# key = ...`,
/// `# [table]`) gives a valid config that uses every section, so the
/// examples cannot drift from the parser.
#[test]
fn the_template_examples_are_valid_when_uncommented() {
    let uncommented: String = TEMPLATE
        .lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix("# ") else {
                return line.to_owned();
            };
            let key: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let is_setting = !key.is_empty() && rest[key.len()..].starts_with(" = ");
            if rest.starts_with('[') || is_setting {
                rest.to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let config = Config::from_str_with_env(&uncommented, Some(Path::new("/t/hale.toml")), no_env)
        .unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    assert_eq!(config.mcp_configs().len(), 2);
    assert_eq!(config.builtin_config().exec.blocked.len(), 2);
    let names: Vec<_> = config.model_configs().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["gpt", "claude", "scripted"]);
    assert_eq!(config.agents()[0].name, "ops");
    assert_eq!(config.mcp_breakers().len(), 1);
    // The values shown as defaults are the defaults.
    let defaults = Config::from_str_with_env("", Some(Path::new("/t/hale.toml")), no_env).unwrap();
    assert_eq!(config.dispatch_config(), defaults.dispatch_config());
    assert_eq!(
        config.mcp_configs()[0].max_result_bytes,
        hale_actors::mcp::DEFAULT_MAX_RESULT_BYTES
    );
    assert_eq!(config.session(), defaults.session());
    assert_eq!(
        config.audit_config().retention,
        defaults.audit_config().retention
    );
    let (b, d) = (config.builtin_config(), defaults.builtin_config());
    assert_eq!(b.exec.default_timeout, d.exec.default_timeout);
    assert_eq!(b.exec.max_timeout, d.exec.max_timeout);
    assert_eq!(b.exec.output_cap_bytes, d.exec.output_cap_bytes);
    assert_eq!(b.read_file, d.read_file);
    assert_eq!(b.write_file, d.write_file);
    assert_eq!(b.edit_file, d.edit_file);
    assert_eq!(b.glob, d.glob);
    assert_eq!(b.grep, d.grep);
    // The allow-list example is an example, not the default (none).
    let mut fetch = b.web_fetch.clone();
    assert_eq!(fetch.allow.entries().len(), 2);
    assert!(d.web_fetch.allow.is_empty());
    fetch.allow = d.web_fetch.allow.clone();
    assert_eq!(fetch, d.web_fetch);
    assert_eq!(config.workspace_root(), Path::new("/t/./.hale/workspace"));
}

#[test]
fn hale_init_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conf.toml");
    let hale = env!("CARGO_BIN_EXE_hale");
    let run = |extra: &[&str]| {
        std::process::Command::new(hale)
            .args(["init", "--path"])
            .arg(&path)
            .args(extra)
            .output()
            .unwrap()
    };
    let first = run(&[]);
    assert!(first.status.success(), "{first:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), TEMPLATE);
    let second = run(&[]);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(run(&["--force"]).status.success());
    Config::load(Some(&path)).unwrap();
}

/// `[tools.sandbox]` onto the defaults, `0` meaning no limit, and the
/// errors located; `[[mcp]] inherit_env` onto the server.
#[test]
fn sandbox_settings() {
    use hale_actors::builtin::{NetworkPolicy, SandboxLimits, SandboxMode};
    let defaults = parse("").unwrap().builtin_config().exec.sandbox.clone();
    assert_eq!(defaults.mode, SandboxMode::Landlock);
    assert_eq!(defaults.network, NetworkPolicy::None);
    assert_eq!(defaults.run_as, "nobody");
    assert_eq!(defaults.limits, SandboxLimits::DEFAULT);
    let config = parse(
        "[tools.sandbox]\nmode = \"off\"\nhelper = \"/opt/hale\"\nuser = \"agent\"\n\
         network = { tcp = [443, 8080] }\nmax_processes = 64\naddress_space = 0\n\
         cpu_time = \"1m\"\nenv = [\"CI\"]\n\
         [[mcp]]\nname = \"s\"\ncommand = \"server\"\ninherit_env = [\"GITHUB_TOKEN\"]\n",
    )
    .unwrap();
    let sandbox = &config.builtin_config().exec.sandbox;
    assert_eq!(sandbox.mode, SandboxMode::Off);
    assert_eq!(
        sandbox.helper.as_deref(),
        Some(std::path::Path::new("/opt/hale"))
    );
    assert_eq!(sandbox.run_as, "agent");
    assert_eq!(sandbox.network, NetworkPolicy::Tcp(vec![443, 8080]));
    assert_eq!(sandbox.limits.max_processes, Some(64));
    assert_eq!(sandbox.limits.address_space, None);
    assert_eq!(sandbox.limits.cpu_time, Some(60));
    assert_eq!(sandbox.env, ["CI"]);
    assert_eq!(config.mcp_configs()[0].inherit_env, ["GITHUB_TOKEN"]);
    assert_eq!(
        parse("[tools.sandbox]\nnetwork = \"all\"\n")
            .unwrap()
            .builtin_config()
            .exec
            .sandbox
            .network,
        NetworkPolicy::All
    );
    for bad in [
        "[tools.sandbox]\nmode = \"chroot\"\n",
        "[tools.sandbox]\nnetwork = \"udp\"\n",
        "[tools.sandbox]\nuser = \"\"\n",
    ] {
        let message = error(bad).to_string();
        assert!(message.contains("tools.sandbox"), "{bad}: {message}");
        assert!(message.contains(":2:"), "{bad}: {message}");
    }
}

#[test]
fn session_limits_are_checked_with_their_line() {
    let turns = "[session]\nmax_turns_per_message = 0\n";
    assert_eq!(
        line_of(turns, "max_turns_per_message must be at least 1"),
        2
    );
    let budget = "[session]\ncontext_budget_bytes = 10\n";
    assert_eq!(
        line_of(budget, "context_budget_bytes must be at least 1024"),
        2
    );
    let backoff = "[session]\nstall_backoff = \"10s\"\nstall_max_backoff = \"1s\"\n";
    assert_eq!(line_of(backoff, "stall_max_backoff must not be shorter"), 3);
    let reply = "[[models]]\nname = \"m\"\nprovider = \"scripted\"\nmax_reply_bytes = 0\n";
    assert_eq!(line_of(reply, "max_reply_bytes must be at least 1"), 4);
}

/// `[dispatch] attempt_timeout` and `[[mcp]] max_result_bytes` onto the
/// defaults, zero refused at its line.
#[test]
fn dispatch_and_mcp_result_limits() {
    let defaults = parse("").unwrap();
    assert_eq!(
        defaults.dispatch_config().attempt_timeout,
        Duration::from_secs(120)
    );
    let text = r#"
[dispatch]
attempt_timeout = "1s"

[[mcp]]
name = "big"
command = "srv"
max_result_bytes = 4096
"#;
    let config = parse(text).unwrap();
    assert_eq!(
        config.dispatch_config().attempt_timeout,
        Duration::from_secs(1)
    );
    assert_eq!(config.mcp_configs()[0].max_result_bytes, 4096);
    let runtime = hale::runtime::RuntimeConfig::from_config_with_env(&config, |_| None).unwrap();
    assert_eq!(runtime.dispatch.attempt_timeout, Duration::from_secs(1));

    let zero = "[dispatch]\nattempt_timeout = \"0s\"\n";
    assert_eq!(
        line_of(zero, "attempt_timeout must be greater than zero"),
        2
    );
    let zero = "[[mcp]]\nname = \"a\"\ncommand = \"x\"\nmax_result_bytes = 0\n";
    assert_eq!(line_of(zero, "max_result_bytes must be at least 1"), 4);
    assert_eq!(line_of("[dispatch]\nretries = 1\n", "unknown field"), 2);
}

/// `[serve]`: the HTTP server's limits, their defaults (which the
/// template shows), and zero refused at its line.
#[test]
fn serve_limits_parse_default_and_refuse_zero() {
    use hale::config::ServeSettings;

    let defaults = parse("").unwrap().serve().clone();
    assert_eq!(defaults, ServeSettings::default());
    assert_eq!(defaults.header_read_timeout, Duration::from_secs(10));
    assert_eq!(defaults.idle_timeout, Duration::from_secs(60));
    assert_eq!(defaults.max_connections, 512);
    assert_eq!(defaults.max_event_streams, 64);
    assert_eq!(defaults.metrics_refresh, Duration::from_secs(1));
    let section = TEMPLATE.lines().skip_while(|l| *l != "[serve]").skip(1);
    for line in section.take_while(|l| !l.is_empty()) {
        if let Some(setting) = line.strip_prefix("# ").filter(|l| l.contains(" = ")) {
            let text = format!("[serve]\n{setting}\n");
            assert_eq!(parse(&text).unwrap().serve(), &defaults, "{setting}");
        }
    }
    let set = parse(
        "[serve]\nheader_read_timeout = \"2s\"\nidle_timeout = \"5m\"\nmax_connections = 10\n\
         max_event_streams = 3\nmetrics_refresh = \"0s\"\n",
    )
    .unwrap();
    assert_eq!(
        set.serve(),
        &ServeSettings {
            header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(300),
            max_connections: 10,
            max_event_streams: 3,
            metrics_refresh: Duration::ZERO,
        }
    );
    for bad in [
        "[serve]\nheader_read_timeout = \"0s\"\n",
        "[serve]\nidle_timeout = \"0ms\"\n",
        "[serve]\nmax_connections = 0\n",
        "[serve]\nmax_event_streams = 0\n",
    ] {
        let message = error(bad).to_string();
        assert!(message.contains("serve."), "{bad}: {message}");
        assert!(message.contains(":2:"), "{bad}: {message}");
    }
}

/// `[session] restart_backoff` / `restart_max_backoff`: the backoff the
/// sessions supervisor waits before restarting a crashed session, read
/// into the runtime's session settings; zero and a maximum below the
/// minimum are refused at their line.
#[test]
fn session_restart_backoff_reaches_the_runtime_and_is_checked_with_its_line() {
    let defaults = parse("").unwrap();
    assert_eq!(defaults.session().restart_backoff, Duration::from_millis(5));
    assert_eq!(
        defaults.session().restart_max_backoff,
        Duration::from_millis(500)
    );
    let runtime = hale::runtime::RuntimeConfig::from_config_with_env(&defaults, |_| None).unwrap();
    let backoff = runtime.sessions.restart_backoff.unwrap();
    assert_eq!(
        (backoff.min(), backoff.max()),
        (Duration::from_millis(5), Duration::from_millis(500))
    );

    let text = "[session]\nrestart_backoff = \"50ms\"\nrestart_max_backoff = \"2s\"\n";
    let config = parse(text).unwrap();
    let runtime = hale::runtime::RuntimeConfig::from_config_with_env(&config, |_| None).unwrap();
    let backoff = runtime.sessions.restart_backoff.unwrap();
    assert_eq!(backoff.min(), Duration::from_millis(50));
    assert_eq!(backoff.max(), Duration::from_secs(2));
    assert_eq!(backoff.delay(0, 0.0), Duration::from_millis(50));
    assert_eq!(backoff.delay(3, 0.0), Duration::from_millis(400));
    assert_eq!(backoff.delay(10, 0.0), Duration::from_secs(2));

    let zero = "[session]\nrestart_backoff = \"0s\"\n";
    assert_eq!(
        line_of(zero, "restart_backoff must be greater than zero"),
        2
    );
    let inverted = "[session]\nrestart_backoff = \"1s\"\nrestart_max_backoff = \"10ms\"\n";
    assert_eq!(
        line_of(inverted, "restart_max_backoff must not be shorter"),
        3
    );
}

/// `[[models]] stream` and `stream_idle_timeout`: streamed with a 30 s
/// idle bound by default, both settable, a zero timeout refused at its
/// line.
#[test]
fn model_streaming_keys() {
    let text = "[[models]]\nname = \"a\"\nprovider = \"openai\"\nmodel = \"x\"\n\n\
                [[models]]\nname = \"b\"\nprovider = \"anthropic\"\nmodel = \"y\"\n\
                stream = false\nstream_idle_timeout = \"5s\"\n";
    let models = parse(text).unwrap().model_configs();
    assert!(models[0].stream);
    assert_eq!(models[0].stream_idle_timeout, Duration::from_secs(30));
    assert!(!models[1].stream);
    assert_eq!(models[1].stream_idle_timeout, Duration::from_secs(5));
    let zero = "[[models]]\nname = \"m\"\nprovider = \"scripted\"\nstream_idle_timeout = \"0s\"\n";
    assert_eq!(
        line_of(zero, "stream_idle_timeout must be greater than zero"),
        4
    );
}
