//! `hale demo`: four self-healing scenarios against real faults (a
//! timed-out API retried, a dead MCP server replaced by its backup, an
//! "already exists" checked instead of retried, a denied destructive
//! command escalated to a human), in one process, with the scripted model.
//!
//! The demo starts a runtime on a temporary data directory with an
//! embedded configuration (the defaults, plus two MCP servers and quicker
//! timeouts), then runs, one after the other:
//!
//! 1. a `web_fetch` to a loopback HTTP server whose first answer never
//!    comes in time (the runtime retries it);
//! 2. a call to the `weather` MCP server after its process was killed and
//!    cannot come back (the runtime reads the audit trail, disables it,
//!    falls back to `weather-backup` and writes the lesson);
//! 3. a `kubectl apply` that reports "already exists", which the agent
//!    checks with `kubectl get` and carries on;
//! 4. a `dropdb production_customers` denied for lack of permission, which
//!    the runtime escalates; the demo answers the approval itself (abort,
//!    as a careful operator would) unless `--interactive`.
//!
//! The scripted plans hold only the agent's own steps: every retry,
//! fallback, disable, escalation and lesson shown is the runtime's, read
//! back from the audit trail. Each scenario prints a timeline (DETECT,
//! CLASSIFY, FIX, ESCALATE, DECIDE, LEARN, with milliseconds since the
//! scenario started) and an outcome line; the demo ends with MEMORY.md's
//! lessons and an audit summary. Every wait is bounded: a scenario that
//! does not finish in time fails the demo with a message saying which.
//! The MCP servers are this executable's hidden `fault-mcp` subcommand.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use axum::Router;
use axum::routing::get;
use hale_actors::builtin::AllowList;
use hale_actors::catalog::ErrorCode;
use hale_actors::escalation::{Answer, Approval};
use hale_actors::event::{Event, EventKind, Level};
use hale_actors::mcp::{McpServerConfig, McpState};
use hale_actors::session::{ABORT_OPTION, PROCEED};
use hale_actors::store::{EventFilter, EventQuery, MessageRecord, MessageState, Order};
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::runtime::{Runtime, RuntimeConfig};

/// How the demo runs.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Ask the operator (on stdin) to answer scenario 4's approval instead
    /// of answering it.
    pub interactive: bool,
    /// Keep the temporary data directory and print its path.
    pub keep: bool,
    /// Print every audit event of each scenario, not only the labelled ones.
    pub verbose: bool,
}

/// How long each scenario may take before the demo gives up on it.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the runtime may take to start (MCP servers ready included).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `--interactive` waits for the operator before taking the
/// recommended option.
const OPERATOR_TIMEOUT: Duration = Duration::from_secs(300);
/// How long scenario 1's API takes to answer its first request (far
/// beyond the demo's `web_fetch` timeout).
const SLOW_ANSWER: Duration = Duration::from_secs(5);

/// Where MEMORY.md's writes come from in the audit trail (the scenarios
/// run one at a time, so a write during one is that scenario's).
const MEMORY_SOURCE: &str = "hale/memory/MEMORY.md";

/// Scenario 3's commands.
const APPLY: &str = "./kubectl apply -f deployment.yaml";
const GET: &str = "./kubectl get deployment api-server -o yaml";
/// Scenario 4's command.
const DROPDB: &str = "./dropdb production_customers";

/// Scenario 4's step after the decision `option`.
fn after_decision(option: &str) -> &'static str {
    if option == PROCEED {
        "echo proceeding with the cleanup >> cleanup.log"
    } else {
        "echo cleanup aborted, production_customers kept >> cleanup.log"
    }
}

/// Terminal styling, off for a non-tty or when `NO_COLOR` is set.
#[derive(Debug, Clone, Copy)]
struct Style {
    color: bool,
}

impl Style {
    fn detect() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            color: !no_color && std::io::stdout().is_terminal(),
        }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }

    fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }

    fn label(self, label: Label) -> String {
        let text = format!("{:<8}", label.as_str());
        let code = match label {
            Label::Detect => "31",
            Label::Classify => "33",
            Label::Fix => "32",
            Label::Escalate => "35;1",
            Label::Decide => "36;1",
            Label::Learn => "34;1",
            Label::Call | Label::Ok => "2",
        };
        self.paint(code, &text)
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// What a timeline line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    /// A tool attempt started.
    Call,
    /// A tool attempt answered.
    Ok,
    /// A failure was seen.
    Detect,
    /// The failure's classification and what follows from it.
    Classify,
    /// The runtime's fix: a retry, a fallback, a disable.
    Fix,
    /// A human was asked.
    Escalate,
    /// The human's (or the demo's) answer.
    Decide,
    /// What was written down for next time.
    Learn,
}

impl Label {
    fn as_str(self) -> &'static str {
        match self {
            Label::Call => "CALL",
            Label::Ok => "OK",
            Label::Detect => "DETECT",
            Label::Classify => "CLASSIFY",
            Label::Fix => "FIX",
            Label::Escalate => "ESCALATE",
            Label::Decide => "DECIDE",
            Label::Learn => "LEARN",
        }
    }
}

/// Everything the scenarios share.
struct Demo {
    runtime: Runtime,
    options: DemoOptions,
    style: Style,
    /// Scenario 1's API.
    api_url: String,
    api_hits: Arc<AtomicUsize>,
    /// While this file exists the `weather` server cannot start.
    weather_down: PathBuf,
    /// With `--interactive`: how to reach the demo's API (`hale approve`).
    control: Option<(String, PathBuf)>,
}

/// Runs the demo; see the module docs.
///
/// # Errors
/// The runtime could not start, or a scenario did not end as it should
/// (the outcome its module docs describe) within its time.
pub async fn run(options: DemoOptions) -> Result<()> {
    let started = Instant::now();
    let style = Style::detect();
    let dir = tempfile::Builder::new()
        .prefix("hale-demo-")
        .tempdir()
        .context("creating the demo's temporary data directory")?;
    let result = run_in(dir.path(), options.clone(), style, started).await;
    if options.keep {
        let path = dir.keep();
        say(&format!("data directory kept: {}", path.display()));
    }
    result
}

async fn run_in(dir: &Path, options: DemoOptions, style: Style, started: Instant) -> Result<()> {
    say(&style.bold(
        "hale demo: four faults healed live: a timed-out API retried, a dead MCP server \
         replaced by its backup, \"already exists\" checked instead of retried, a denied \
         destructive command escalated to a human",
    ));
    say(&style.dim(
        "  scripted model (no network, no API key); every retry, fallback, escalation and \
         lesson below is the runtime's, read back from its audit trail",
    ));

    // Scenario 1's API: its first answer never comes in time.
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let app = Router::new().route(
        "/data",
        get(move || {
            let counter = Arc::clone(&counter);
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(SLOW_ANSWER).await;
                }
                "{\"status\": \"success\", \"temperature\": 21}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the loopback API of scenario 1")?;
    let api_addr = listener
        .local_addr()
        .context("the loopback API's address")?;
    let api_url = format!("http://{api_addr}/data");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut config = demo_config(dir)?;
    // web_fetch refuses loopback unless allow-listed: allow exactly the
    // demo's API.
    config.builtin.web_fetch.allow = AllowList::parse([api_addr.to_string()])
        .context("allow-listing the loopback API of scenario 1")?;
    let weather_down = dir.join("weather-is-down");
    say(&style.dim(&format!("  data directory {}", config.data_dir.display())));
    let runtime = tokio::time::timeout(START_TIMEOUT, Runtime::start(config))
        .await
        .map_err(|_| anyhow!("the runtime did not start within {START_TIMEOUT:?}"))?
        .context("starting the runtime")?;
    for name in ["weather", "weather-backup"] {
        let ready = runtime
            .mcp()
            .wait_ready(name, START_TIMEOUT)
            .await
            .with_context(|| format!("MCP server `{name}`"))?;
        if !ready {
            let _ = runtime.shutdown().await;
            bail!("MCP server `{name}` did not become ready within {START_TIMEOUT:?}");
        }
    }
    say(&style.dim(&format!(
        "  runtime up in {} ms: MCP servers weather and weather-backup ready",
        started.elapsed().as_millis()
    )));

    // With --interactive, the control-plane API runs too, so the approval
    // can be answered with `hale approve` from another terminal.
    let mut control = None;
    let mut control_server = None;
    if options.interactive {
        let data_dir = runtime.config().data_dir.clone();
        let token = crate::serve::ensure_token(&data_dir.join("token"))?;
        let (app, _doc) = crate::api::router(crate::api::ApiState {
            runtime: runtime.clone(),
            token: Arc::from(token.as_str()),
            allow_chaos: false,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the demo's control-plane API")?;
        let url = format!(
            "http://{}",
            listener.local_addr().context("the API's address")?
        );
        say(&style.dim(&format!(
            "  control-plane API on {url} (token in {})",
            data_dir.display()
        )));
        control_server = Some(tokio::spawn(
            async move { axum::serve(listener, app).await },
        ));
        control = Some((url, data_dir));
    }
    let demo = Demo {
        runtime: runtime.clone(),
        options,
        style,
        api_url,
        api_hits: hits,
        weather_down,
        control,
    };
    let result = demo.scenarios().await;
    if let Some(control_server) = control_server {
        control_server.abort();
    }
    let stopped = runtime.shutdown().await;
    server.abort();
    result?;
    stopped.context("shutting the runtime down")?;
    say(&style.bold(&format!(
        "demo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    )));
    Ok(())
}

/// The embedded configuration: the defaults with the two MCP servers of
/// scenario 2 and timeouts short enough for a demo.
fn demo_config(dir: &Path) -> Result<RuntimeConfig> {
    let exe = std::env::current_exe().context("locating the hale executable")?;
    let wrapper = dir.join("weather-mcp.sh");
    let down = dir.join("weather-is-down");
    write_script(
        &wrapper,
        &format!(
            "[ -e {down} ] && {{ echo 'weather-mcp: upstream unreachable' >&2; exit 1; }}\n\
             exec {exe} fault-mcp --name weather",
            down = shell_quote(&down.display().to_string()),
            exe = shell_quote(&exe.display().to_string()),
        ),
    )?;
    let mut weather = McpServerConfig::stdio("weather", &wrapper, Vec::<String>::new());
    weather.fallbacks = vec!["weather-backup".to_owned()];
    weather.restart_min = Duration::from_millis(100);
    weather.restart_max = Duration::from_millis(400);
    let backup = McpServerConfig::stdio(
        "weather-backup",
        exe,
        ["fault-mcp", "--name", "weather-backup"],
    );
    let mut config = RuntimeConfig::new(dir.join("data"));
    config.mcp = vec![weather, backup];
    config.builtin.web_fetch.timeout = Duration::from_millis(400);
    config.dispatch.retry.base = Duration::from_millis(250);
    config.dispatch.retry.max_delay = Duration::from_secs(1);
    config.sessions.approval_timeout = OPERATOR_TIMEOUT + Duration::from_secs(60);
    Ok(config)
}

impl Demo {
    async fn scenarios(&self) -> Result<()> {
        self.scenario(1, "The transient network error", self.scenario_1())
            .await?;
        self.scenario(2, "The MCP server is down", self.scenario_2())
            .await?;
        self.scenario(3, "The permanent failure", self.scenario_3())
            .await?;
        self.scenario(4, "The escalation-required failure", self.scenario_4())
            .await?;
        self.lessons().await?;
        self.summary().await
    }

    async fn scenario<F>(&self, n: u32, title: &str, body: F) -> Result<()>
    where
        F: std::future::Future<Output = Result<Scenario>>,
    {
        say("");
        say(&self.style.bold(&format!("== Scenario {n}: {title}")));
        let marker = self.last_event_id().await?;
        let clock = Clock::now();
        let scenario = tokio::time::timeout(SCENARIO_TIMEOUT, body)
            .await
            .map_err(|_| anyhow!("scenario {n} did not finish within {SCENARIO_TIMEOUT:?}"))?
            .with_context(|| format!("scenario {n}"))?;
        let events = self.events_after(marker).await?;
        self.timeline(&clock, &scenario, &events);
        say(&format!(
            "  {} {} ({} ms)",
            self.style.bold("=>"),
            self.style.bold(&scenario.outcome),
            clock.started.elapsed().as_millis()
        ));
        Ok(())
    }

    async fn last_event_id(&self) -> Result<u64> {
        let newest = self
            .runtime
            .logs(EventQuery::newest(EventFilter::default(), 1))
            .await
            .context("reading the audit trail")?;
        Ok(newest.first().and_then(|e| e.id).unwrap_or(0))
    }

    async fn events_after(&self, marker: u64) -> Result<Vec<Event>> {
        self.runtime
            .logs(EventQuery {
                filter: EventFilter::default(),
                order: Order::InsertedAfter(marker),
                limit: 100_000,
            })
            .await
            .context("reading the audit trail")
    }

    async fn send(&self, session: &str, plan: &Value) -> Result<MessageRecord> {
        let (id, record) = self
            .runtime
            .send_and_wait(session, &plan.to_string(), SCENARIO_TIMEOUT)
            .await
            .context("sending the plan")?;
        record.ok_or_else(|| anyhow!("message {id} did not finish"))
    }

    async fn scenario_1(&self) -> Result<Scenario> {
        let session = self.runtime.create_session("default").await?;
        let plan = plan(json!([step("web_fetch", json!({ "url": self.api_url }))]));
        say(&format!(
            "  plan: web_fetch(url=\"{}\")  {}",
            self.api_url,
            self.style
                .dim("(the API's first answer takes 5 s; web_fetch gives up after 400 ms)")
        ));
        let record = self.send(&session, &plan).await?;
        let steps = steps_of(&record)?;
        let first = steps.first().cloned().unwrap_or(Value::Null);
        if first["status"] != "success" {
            bail!("web_fetch did not recover: {first}");
        }
        let hits = self.api_hits.load(Ordering::SeqCst);
        Ok(Scenario {
            session,
            global: Vec::new(),
            calls: vec![("1:s0".to_owned(), format!("url=\"{}\"", self.api_url))],
            outcome: format!(
                "recovered: the API was called {hits} times, the agent saw only the success"
            ),
        })
    }

    async fn scenario_2(&self) -> Result<Scenario> {
        // The server goes down: its process is killed and cannot come back.
        std::fs::write(&self.weather_down, "").context("marking weather as down")?;
        let pid = self
            .runtime
            .mcp()
            .status("weather")?
            .pid
            .ok_or_else(|| anyhow!("the weather server has no process"))?;
        say(&format!(
            "  fault: kill -9 the weather MCP server (process group {pid}); its upstream is \
             gone, so it cannot restart"
        ));
        let pgid = i32::try_from(pid).context("process id out of range")?;
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .context("killing the weather server")?;
        let deadline = Instant::now() + SCENARIO_TIMEOUT;
        while self.runtime.mcp().status("weather")?.state == McpState::Ready {
            if Instant::now() > deadline {
                bail!("the weather server still looks ready after the kill");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let session = self.runtime.create_session("default").await?;
        let plan = plan(json!([step(
            "weather__echo",
            json!({ "text": "forecast Paris" })
        )]));
        say("  plan: weather__echo(text=\"forecast Paris\")");
        let record = self.send(&session, &plan).await?;
        let steps = steps_of(&record)?;
        let first = steps.first().cloned().unwrap_or(Value::Null);
        if first["status"] != "success" {
            bail!("weather__echo did not recover: {first}");
        }
        let served_by = first["served_by"].as_str().unwrap_or("?").to_owned();
        // The lesson is written right after the reply; give it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.runtime.memory().read().await.unwrap_or_default();
            if text.contains("weather unreachable") || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let state = self.runtime.mcp().status("weather")?.state;
        Ok(Scenario {
            session,
            global: vec!["hale/mcp/weather".to_owned(), "weather".to_owned()],
            calls: vec![("1:s0".to_owned(), "text=\"forecast Paris\"".to_owned())],
            outcome: format!(
                "recovered: served by {served_by}; weather is {}; the incident is in MEMORY.md",
                mcp_state(state)
            ),
        })
    }

    async fn scenario_3(&self) -> Result<Scenario> {
        let workspace = self.runtime.config().builtin.workspace_root.clone();
        write_script(
            &workspace.join("kubectl"),
            r#"case "$1" in
  apply) echo 'Error from server (AlreadyExists): error when creating "deployment.yaml": deployments.apps "api-server" already exists' >&2; exit 1;;
  get) printf 'apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api-server\nspec:\n  replicas: 3\n'; exit 0;;
esac
exit 2"#,
        )?;
        let session = self.runtime.create_session("default").await?;
        let plan = plan(json!([
            step("exec", json!({ "command": APPLY })),
            step("exec", json!({ "command": GET })),
        ]));
        say(&format!(
            "  plan: exec(\"{APPLY}\"), then exec(\"{GET}\")  {}",
            self.style.dim("(kubectl: a script in the workspace)")
        ));
        let record = self.send(&session, &plan).await?;
        let steps = steps_of(&record)?;
        let (apply, get) = match steps.as_slice() {
            [apply, get, ..] => (apply, get),
            _ => bail!("expected two steps, got {steps:?}"),
        };
        if apply["code"] != "ALREADY_EXISTS" || get["status"] != "success" {
            bail!("unexpected steps: {apply} / {get}");
        }
        let replicas = if get.to_string().contains("replicas: 3") {
            " (replicas: 3)"
        } else {
            ""
        };
        Ok(Scenario {
            session,
            global: Vec::new(),
            calls: vec![
                ("1:s0".to_owned(), format!("\"{APPLY}\"")),
                ("1:s1".to_owned(), format!("\"{GET}\"")),
            ],
            outcome: format!(
                "recovered: ALREADY_EXISTS (not retried, not escalated); the check shows \
                 api-server already deployed{replicas}, the workflow continues"
            ),
        })
    }

    async fn scenario_4(&self) -> Result<Scenario> {
        let workspace = self.runtime.config().builtin.workspace_root.clone();
        write_script(
            &workspace.join("dropdb"),
            r#"echo "$*" >> dropdb.calls
echo "dropdb: error: database removal failed: ERROR:  permission denied to drop database \"$1\"" >&2
exit 1"#,
        )?;
        let session = self.runtime.create_session("default").await?;
        let plan = json!({
            "steps": [step("exec", json!({ "command": DROPDB }))],
            "reply": "done",
            "on_approval": {
                ABORT_OPTION: [step("exec", json!({ "command": after_decision(ABORT_OPTION) }))],
                PROCEED: [step("exec", json!({ "command": after_decision(PROCEED) }))],
            },
        });
        say(&format!("  plan: exec(\"{DROPDB}\")"));
        for option in [ABORT_OPTION, PROCEED] {
            say(&format!(
                "        after a decision of `{option}`: exec(\"{}\")",
                after_decision(option)
            ));
        }
        let mut notices = self.runtime.subscribe_approvals();
        let id = self
            .runtime
            .send(&session, &plan.to_string())
            .await
            .context("sending the plan")?;
        let approval = loop {
            // Notices can be missed by a subscription made late; the list
            // is the truth, the notices only wake us.
            if let Some(approval) = self
                .runtime
                .approvals(true)
                .await?
                .into_iter()
                .find(|a| a.request.requester.as_deref().is_none_or(|r| r == session))
            {
                break approval;
            }
            let message = self.runtime.sessions().message(&id).await?;
            if message.state.is_final() {
                bail!("the message finished without an approval: {message:?}");
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notices.recv()).await;
        };
        self.show_approval(&approval);
        let mut decided_elsewhere = false;
        let choice = if self.options.interactive {
            let (choice, elsewhere) = self.ask_operator(&approval).await;
            decided_elsewhere = elsewhere;
            choice
        } else {
            let label = approval_option_label(&approval, ABORT_OPTION);
            say(&format!(
                "  {} answering as the operator: {ABORT_OPTION} ({label})  {}",
                self.style.bold(">>"),
                self.style
                    .dim("(run with --interactive to answer yourself)")
            ));
            ABORT_OPTION.to_owned()
        };
        if !decided_elsewhere {
            self.runtime
                .resolve_approval(&approval.id, Answer::Option(choice.clone()), "operator")
                .await
                .context("answering the approval")?;
        }
        let record = self
            .runtime
            .sessions()
            .wait(&id, SCENARIO_TIMEOUT)
            .await?
            .ok_or_else(|| anyhow!("message {id} did not finish after the decision"))?;
        let steps = steps_of(&record)?;
        let first = steps.first().cloned().unwrap_or(Value::Null);
        if first["code"] != "PERMISSION_DENIED" {
            bail!("dropdb did not fail as expected: {first}");
        }
        let runs = std::fs::read_to_string(workspace.join("dropdb.calls"))
            .unwrap_or_default()
            .lines()
            .count();
        let log = std::fs::read_to_string(workspace.join("cleanup.log")).unwrap_or_default();
        Ok(Scenario {
            session,
            global: vec!["hale/escalation".to_owned()],
            calls: vec![
                ("1:s0".to_owned(), format!("\"{DROPDB}\"")),
                (
                    "1:s1".to_owned(),
                    format!("\"{}\"", after_decision(&choice)),
                ),
            ],
            outcome: format!(
                "escalated and decided: `{choice}`; dropdb ran {runs} time(s), never retried; \
                 cleanup.log: {}",
                log.trim()
            ),
        })
    }

    fn show_approval(&self, approval: &Approval) {
        let request = &approval.request;
        let s = self.style;
        say(&format!(
            "  {} approval {}: {}",
            s.bold("??"),
            approval.id,
            s.bold(&request.title)
        ));
        say(&format!(
            "     what:  {}",
            clip(&request.diagnosis.what, 160)
        ));
        say(&format!(
            "     why:   {}",
            clip(&request.diagnosis.why, 160)
        ));
        say(&format!(
            "     recommendation: {}",
            request.diagnosis.recommendation
        ));
        let recommended = request.recommended.as_deref().unwrap_or(ABORT_OPTION);
        let mut options: Vec<(String, String)> = request
            .options
            .iter()
            .map(|o| (o.id.clone(), o.label.clone()))
            .collect();
        if !options.iter().any(|(id, _)| id == ABORT_OPTION) {
            options.push((
                ABORT_OPTION.to_owned(),
                "No, abort the cleanup (the agent is told to stop)".to_owned(),
            ));
        }
        for (id, label) in options {
            let mark = if id == recommended {
                " (recommended)"
            } else {
                ""
            };
            say(&format!("     [{id}] {label}{mark}"));
        }
    }

    /// The operator's choice, and whether it was made elsewhere (`hale
    /// approve` over the API) rather than on stdin.
    async fn ask_operator(&self, approval: &Approval) -> (String, bool) {
        if let Some((url, data_dir)) = &self.control {
            say(&format!(
                "  answer here, or from another terminal:\n    hale approve {} <option> --url {url} --data-dir {}",
                approval.id,
                data_dir.display()
            ));
        }
        let typed = self.ask_stdin(approval);
        tokio::pin!(typed);
        loop {
            tokio::select! {
                choice = &mut typed => return (choice, false),
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Ok(current) = self.runtime.approvals(false).await
                        && let Some(found) = current.into_iter().find(|a| a.id == approval.id)
                        && let Some(resolution) = found.resolution
                    {
                        let choice = resolution.option.unwrap_or_else(|| ABORT_OPTION.to_owned());
                        say(&format!("\n  decided elsewhere by {}: {choice}", resolution.by));
                        return (choice, true);
                    }
                }
            }
        }
    }

    async fn ask_stdin(&self, approval: &Approval) -> String {
        let recommended = approval
            .request
            .recommended
            .clone()
            .unwrap_or_else(|| ABORT_OPTION.to_owned());
        let valid: Vec<String> = approval
            .request
            .options
            .iter()
            .map(|o| o.id.clone())
            .chain(std::iter::once(ABORT_OPTION.to_owned()))
            .collect();
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            print!("  option [{}] (Enter for {recommended}): ", valid.join("/"));
            let _ = std::io::stdout().flush();
            let line = match tokio::time::timeout(OPERATOR_TIMEOUT, lines.next_line()).await {
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None) | Err(_)) => {
                    say(&format!("\n  stdin closed: taking {recommended}"));
                    return recommended;
                }
                Err(_) => {
                    say(&format!(
                        "\n  no answer in {OPERATOR_TIMEOUT:?}: taking {recommended}"
                    ));
                    return recommended;
                }
            };
            let answer = line.trim();
            if !std::io::stdin().is_terminal() {
                // Piped: nothing echoed the answer; keep the log readable.
                say(answer);
            }
            if answer.is_empty() {
                return recommended;
            }
            if valid.iter().any(|v| v == answer) {
                return answer.to_owned();
            }
            say(&format!("  `{answer}` is not one of {}", valid.join(", ")));
        }
    }

    /// Prints the labelled events of a scenario.
    fn timeline(&self, clock: &Clock, scenario: &Scenario, events: &[Event]) {
        let mut timeline = Timeline::new(scenario);
        say(&self
            .style
            .dim("  timeline (read back from the audit trail):"));
        for event in events {
            if self.options.verbose {
                say(&self.style.dim(&format!(
                    "  {:>+7} ms  [{} {} {}] {} {}",
                    clock.ms(event.timestamp),
                    event.level,
                    event.kind,
                    event.source,
                    event.message,
                    if event.data.is_null() {
                        String::new()
                    } else {
                        clip(&event.data.to_string(), 200)
                    }
                )));
            }
            for (label, text) in timeline.describe(event) {
                self.line(
                    &format!("{:>+7} ms", clock.ms(event.timestamp)),
                    label,
                    &text,
                );
            }
        }
        for (label, text) in timeline.totals() {
            self.line("", label, &text);
        }
    }

    fn line(&self, at: &str, label: Label, text: &str) {
        say(&format!("  {at:>10}  {} {text}", self.style.label(label)));
    }

    async fn lessons(&self) -> Result<()> {
        say("");
        say(&self.style.bold("== What hale learned (MEMORY.md)"));
        let text = self
            .runtime
            .memory()
            .read()
            .await
            .map_err(|e| anyhow!("reading MEMORY.md: {}", e.message))?;
        let lessons: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("- "))
            .collect();
        if lessons.is_empty() {
            bail!("MEMORY.md has no lessons:\n{text}");
        }
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            say(&format!("  {line}"));
        }
        Ok(())
    }

    async fn summary(&self) -> Result<()> {
        say("");
        say(&self.style.bold("== Audit trail summary"));
        let events = self.events_after(0).await?;
        let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
        let mut by_level: BTreeMap<Level, usize> = BTreeMap::new();
        for event in &events {
            *by_kind.entry(event.kind.to_string()).or_default() += 1;
            *by_level.entry(event.level).or_default() += 1;
        }
        let count = |f: &dyn Fn(&Event) -> bool| events.iter().filter(|e| f(e)).count();
        let retries = count(&|e| e.kind == EventKind::Retry && e.data.get("tool").is_some());
        let fallbacks = count(&|e| e.kind == EventKind::Fallback);
        let escalations = count(&|e| e.kind == EventKind::EscalationOpened);
        let decided = count(&|e| e.kind == EventKind::EscalationResolved);
        let restarts = count(&|e| e.kind == EventKind::ChildRestarted);
        let failed_starts = count(&|e| e.kind == EventKind::ChildStartFailed);
        let incidents = count(&|e| e.kind == EventKind::Incident);
        let lessons = count(&|e| e.kind == EventKind::MemoryWrite);
        say(&format!("  {} events", events.len()));
        say(&format!(
            "  by level: {}",
            by_level
                .iter()
                .map(|(l, n)| format!("{l} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        say(&format!(
            "  by kind:  {}",
            by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        say(&format!(
            "  tool retries {retries}, fallbacks {fallbacks}, escalations {escalations} \
             ({decided} decided), actor restarts {restarts} ({failed_starts} failed starts), \
             incidents {incidents}, memory writes {lessons}"
        ));
        Ok(())
    }
}

/// What a scenario leaves for its timeline and outcome line.
struct Scenario {
    session: String,
    /// Sources whose session-less events belong to the timeline.
    global: Vec<String>,
    /// The arguments of each call (`<message>:s<step>`), for the timeline.
    calls: Vec<(String, String)>,
    outcome: String,
}

/// A scenario's start, for the `+N ms` column.
struct Clock {
    started: Instant,
    at: Timestamp,
}

impl Clock {
    fn now() -> Self {
        Self {
            started: Instant::now(),
            at: Timestamp::now(),
        }
    }

    fn ms(&self, t: Timestamp) -> i64 {
        t.as_millisecond() - self.at.as_millisecond()
    }
}

/// Turns a scenario's audit events into timeline lines: the scenario's
/// own session, plus the session-less events of the sources it names;
/// repeats of a supervisor's restart cycle are counted, not printed.
struct Timeline<'a> {
    scenario: &'a Scenario,
    /// Kinds of supervisor events already shown once.
    shown: Vec<EventKind>,
    /// Supervisor events not shown, by kind.
    repeats: BTreeMap<String, usize>,
    /// Failure codes already classified.
    classified: Vec<String>,
}

impl<'a> Timeline<'a> {
    fn new(scenario: &'a Scenario) -> Self {
        Self {
            scenario,
            shown: Vec::new(),
            repeats: BTreeMap::new(),
            classified: Vec::new(),
        }
    }

    fn ours(&self, event: &Event) -> bool {
        event.session.as_deref() == Some(self.scenario.session.as_str())
            || (event.session.is_none()
                && (event.source == MEMORY_SOURCE || self.scenario.global.contains(&event.source)))
    }

    /// What a call of this scenario was: the step's own words when known.
    fn call(&self, tool: &str, call: &str) -> String {
        match self.scenario.calls.iter().find(|(key, _)| key == call) {
            Some((_, args)) => format!("{tool}({args})"),
            None => tool.to_owned(),
        }
    }

    /// The timeline lines of one event (none for the uninteresting ones).
    fn describe(&mut self, event: &Event) -> Vec<(Label, String)> {
        if !self.ours(event) || event.source.starts_with("model/") {
            return Vec::new();
        }
        let data = &event.data;
        let tool = data["tool"].as_str().unwrap_or("?");
        let call = data["call"].as_str().unwrap_or_default();
        let code = event.code.as_ref().map_or("error", ErrorCode::as_str);
        let supervisor_event = event.session.is_none()
            && matches!(
                event.kind,
                EventKind::Disconnected
                    | EventKind::ChildExited
                    | EventKind::ChildRestarted
                    | EventKind::ChildStartFailed
                    | EventKind::Retry
            );
        if supervisor_event {
            if self.shown.contains(&event.kind) {
                *self.repeats.entry(event.kind.to_string()).or_default() += 1;
                return Vec::new();
            }
            self.shown.push(event.kind.clone());
        }
        match &event.kind {
            EventKind::ToolAttempt => {
                let endpoint = if event.source == tool {
                    String::new()
                } else {
                    format!(" (on {})", event.source)
                };
                vec![(Label::Call, format!("{}{endpoint}", self.call(tool, call)))]
            }
            EventKind::ToolOutcome if event.source.starts_with("hale/sessions/") => Vec::new(),
            EventKind::ToolOutcome => {
                let ms = data["duration_ms"].as_u64().unwrap_or(0);
                if data["status"] == "success" || data["status"] == "partial" {
                    return vec![(
                        Label::Ok,
                        format!(
                            "{tool} answered in {ms} ms ({})",
                            data["status"].as_str().unwrap_or("")
                        ),
                    )];
                }
                let mut lines = vec![(
                    Label::Detect,
                    format!("{tool}: {code}: {}", clip(&tidy(&event.message), 90)),
                )];
                if !self.classified.iter().any(|c| c == code) {
                    self.classified.push(code.to_owned());
                    lines.push((
                        Label::Classify,
                        format!(
                            "{code}: retryable {}, recoverable {}, severity {} -> {}",
                            data["retryable"],
                            data["recoverable"],
                            data["severity"].as_str().unwrap_or(event.level.as_str()),
                            consequence(data)
                        ),
                    ));
                }
                lines
            }
            EventKind::Retry if data.get("tool").is_some() => vec![(
                Label::Fix,
                format!(
                    "retry {tool} in {} ms (attempt {}, after {})",
                    data["delay_ms"],
                    data["attempt"],
                    data["after"].as_str().unwrap_or("a failure")
                ),
            )],
            EventKind::Retry => vec![(
                Label::Fix,
                format!("{}: {}", event.source, clip(&event.message, 90)),
            )],
            EventKind::Fallback => vec![(
                Label::Fix,
                format!(
                    "fall back: {} -> {} (its configured backup)",
                    data["from"].as_str().unwrap_or("?"),
                    data["to"].as_str().unwrap_or("?")
                ),
            )],
            EventKind::Breaker => vec![(Label::Classify, event.message.clone())],
            EventKind::Disconnected => vec![(
                Label::Detect,
                format!("{}: {}", event.source, clip(&tidy(&event.message), 90)),
            )],
            EventKind::ChildExited => vec![(
                Label::Detect,
                format!("{} exited; its supervisor restarts it", event.source),
            )],
            EventKind::ChildRestarted => vec![(
                Label::Fix,
                format!("{}: {}", event.source, clip(&event.message, 90)),
            )],
            EventKind::ChildStartFailed | EventKind::ChildParked => vec![(
                Label::Fix,
                format!("{}: {}", event.source, clip(&event.message, 90)),
            )],
            EventKind::Incident => {
                let mut lines = Vec::new();
                if let Some(endpoint) = data["endpoint"].as_str() {
                    lines.push((
                        Label::Classify,
                        format!(
                            "read_logs: {} warnings/errors of {endpoint} in the last hour: \
                             failing, not a blip",
                            data["recent_errors"]
                        ),
                    ));
                    if data["disabled"] == true {
                        lines.push((Label::Fix, format!("manage_mcp: disable {endpoint}")));
                    }
                }
                lines.push((
                    Label::Learn,
                    format!("incident: {}", clip(&event.message, 100)),
                ));
                lines
            }
            EventKind::MemoryWrite => {
                let what = event.message.split(':').next().unwrap_or("written");
                vec![(Label::Learn, format!("MEMORY.md: {what}"))]
            }
            EventKind::EscalationOpened => vec![(Label::Escalate, event.message.clone())],
            EventKind::EscalationResolved => vec![(Label::Decide, event.message.clone())],
            EventKind::Fix => vec![(Label::Fix, clip(&event.message, 100))],
            _ => Vec::new(),
        }
    }

    /// Lines for what was counted rather than shown.
    fn totals(&self) -> Vec<(Label, String)> {
        let restarts = self.repeats.get("child_restarted").copied().unwrap_or(0);
        let failures = self.repeats.get("disconnected").copied().unwrap_or(0);
        if restarts + failures == 0 {
            return Vec::new();
        }
        vec![(
            Label::Fix,
            format!(
                "(and {restarts} more restarts by the supervisor, {failures} more failed \
                 connections, until the server was disabled)"
            ),
        )]
    }
}

/// What the classification of a failed attempt leads to.
fn consequence(outcome: &Value) -> &'static str {
    let retryable = outcome["retryable"] == true;
    let recoverable = outcome["recoverable"] == true;
    match (outcome["severity"].as_str(), retryable, recoverable) {
        (Some("critical"), _, _) => "needs a human",
        (_, true, _) => "retry with backoff (or a fallback)",
        (_, false, true) => "not retried; the agent decides",
        _ => "not retried; reported",
    }
}

fn mcp_state(state: McpState) -> String {
    format!("{state:?}").to_lowercase()
}

fn approval_option_label(approval: &Approval, id: &str) -> String {
    approval
        .request
        .options
        .iter()
        .find(|o| o.id == id)
        .map_or_else(
            || {
                if id == ABORT_OPTION {
                    "No, abort the cleanup".to_owned()
                } else {
                    id.to_owned()
                }
            },
            |o| o.label.clone(),
        )
}

fn plan(steps: Value) -> Value {
    json!({ "steps": steps, "reply": "done" })
}

fn step(tool: &str, args: Value) -> Value {
    json!({ "tool": tool, "args": args })
}

fn steps_of(record: &MessageRecord) -> Result<Vec<Value>> {
    if record.state != MessageState::Done {
        bail!(
            "the message ended {}: {}",
            record.state.as_str(),
            record.error.as_deref().unwrap_or("no error recorded")
        );
    }
    let reply: Value = serde_json::from_str(record.reply.as_deref().unwrap_or("null"))
        .context("the scripted reply is not JSON")?;
    reply["steps"]
        .as_array()
        .cloned()
        .ok_or_else(|| anyhow!("the scripted reply has no steps: {reply}"))
}

fn clip(text: &str, max: usize) -> String {
    let text = text.replace('\n', " ");
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A failure message without what only a debugger needs (the server's
/// last stderr line, the transport's detail).
fn tidy(message: &str) -> String {
    let mut text = message;
    for cut in ["; last stderr line", ": handshake with"] {
        if let Some(at) = text.find(cut) {
            text = &text[..at];
        }
    }
    text.to_owned()
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn write_script(path: &Path, body: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}
