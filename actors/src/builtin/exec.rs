//! The `exec` tool: runs a shell command in the workspace, bounded in time
//! and output.
//!
//! A shell command is the most powerful and the most dangerous thing an
//! agent can do, and also the easiest to get stuck on: a command that never
//! ends, one that prints gigabytes, one that forks a server into the
//! background and keeps the pipes open. This module exists so that every
//! one of those ends in a classified outcome instead of a hung agent. The
//! command runs as the leader of its own process group, so a timeout (or a
//! caller that gives up on the call) kills everything it started, not just
//! the shell; each output stream is read concurrently and kept up to a cap
//! while the rest is drained, so the child never blocks on a full pipe; and
//! approval rules, matched against the parsed simple commands rather than
//! the raw text (see [`BlockRule`]), stop known-dangerous commands before
//! they start.
//!
//! Every command runs in the sandbox ([`super::sandbox`]) unless the
//! operator turned it off: through the `hale sandbox-exec` wrapper, with a
//! private `TMPDIR` made for the call, and always with an environment built
//! from a short list instead of hale's own.

use std::future::Future;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::sandbox::{
    EXIT_LANDLOCK_UNAVAILABLE, EXIT_SETUP_FAILED, SandboxConfig, SandboxMode, WRAPPER_PREFIX,
};
use crate::escalation::ApprovalGrants;
use process_wrap::tokio::{ChildWrapper, CommandWrap, KillOnDrop, ProcessGroup};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::command_line;
use crate::catalog::ErrorCode;
use crate::classify;
use crate::outcome::{Hint, HintKind, ToolOutcome};
use crate::process::{ProcessHook, ProcessRecord};
use crate::tool::{BoxFuture, Tool, ToolContext, ToolSpec};

/// The timeout of a call that does not ask for one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest timeout a call may ask for; longer requests are clamped.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// How much of each output stream (stdout, stderr) a call keeps.
pub const DEFAULT_OUTPUT_CAP_BYTES: usize = 64 * 1024;

/// How long the output pipes may stay open after the shell has exited. A
/// command that left a background process holding them (`server &`) would
/// otherwise keep the call open until its timeout.
const EXIT_GRACE: Duration = Duration::from_millis(200);
/// How long to keep reading after the group was killed: the pipes close as
/// soon as the last writer dies, unless a process escaped the group.
const DRAIN_AFTER_KILL: Duration = Duration::from_millis(500);
/// How long to wait for a killed shell to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer size per stream.
const READ_CHUNK: usize = 16 * 1024;

/// A command pattern that `exec` refuses to run without a human's approval.
///
/// The pattern is not searched in the raw command line: the line is first
/// reduced to its simple commands ([`command_line`]), and the pattern is
/// searched in each one's words joined by single spaces (quotes, escapes and
/// the program's directory removed, redirections last), and in the command a
/// wrapper such as `sudo` or `nohup` runs. So `^dropdb` matches
/// `/usr/bin/dropdb x` and `true && sudo dropdb x`, `touch\s+pwned` matches
/// `t''ouch pwned`, and a pattern never spans `;`, `&&` or `|`. When any
/// rule exists, a command that cannot be reduced to plain words (command
/// substitution, `eval`, `sh -c`, a pipe into a shell, ...) is refused as if
/// a rule matched.
///
/// Rules are a tripwire for an agent's mistakes, not a security boundary:
/// unanchored patterns also see arguments (`touch\s+pwned` matches
/// `echo "touch pwned"`; anchor with `^` to match the program), and what
/// a program does with its arguments (`python -c`, `find -exec`) is
/// invisible to them. The sandbox `exec` runs in is the boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRule {
    /// A regular expression (Rust `regex` syntax) searched for in each
    /// simple command's words joined by single spaces; anchor it (`^`) to
    /// match the program.
    pub pattern: String,
    /// Why such commands are refused; shown to the agent.
    pub reason: String,
}

impl BlockRule {
    /// A rule from a pattern and the reason shown when it matches.
    pub fn new(pattern: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            pattern: pattern.into(),
            reason: reason.into(),
        }
    }
}

/// How an [`Exec`] tool runs commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    /// The working directory of every command.
    pub workspace_root: PathBuf,
    /// The timeout of a call that does not ask for one.
    pub default_timeout: Duration,
    /// The longest timeout a call may ask for; longer requests are clamped.
    pub max_timeout: Duration,
    /// How many bytes of stdout, and separately of stderr, are kept.
    pub output_cap_bytes: usize,
    /// Commands refused before they start; the first match wins.
    pub blocked: Vec<BlockRule>,
    /// Told of every command's process group while it lives (none by
    /// default), so a crash of hale cannot leave it running unrecorded.
    pub recorder: ProcessHook,
    /// The sandbox every command runs in (Landlock by default, which needs
    /// [`SandboxConfig::helper`] set to run anything).
    pub sandbox: SandboxConfig,
}

impl ExecConfig {
    /// The default limits ([`DEFAULT_TIMEOUT`], [`MAX_TIMEOUT`],
    /// [`DEFAULT_OUTPUT_CAP_BYTES`]) and no block rules.
    pub fn new(workspace_root: impl Into<PathBuf>) -> Self {
        Self {
            workspace_root: workspace_root.into(),
            default_timeout: DEFAULT_TIMEOUT,
            max_timeout: MAX_TIMEOUT,
            output_cap_bytes: DEFAULT_OUTPUT_CAP_BYTES,
            blocked: Vec::new(),
            recorder: ProcessHook::default(),
            sandbox: SandboxConfig::default(),
        }
    }
}

/// Why an [`ExecConfig`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecConfigError {
    /// A block rule's pattern is not a valid regular expression.
    #[error("block rule {index} (`{pattern}`) is not a valid regular expression: {error}")]
    InvalidBlockRule {
        /// The rule's position in [`ExecConfig::blocked`].
        index: usize,
        /// The rule's pattern.
        pattern: String,
        /// What the regex compiler said.
        error: String,
    },
    /// A timeout is zero, or the default exceeds the maximum.
    #[error(
        "invalid timeouts: default {default:?} and maximum {max:?} must be non-zero, with default <= maximum"
    )]
    InvalidTimeouts {
        /// The configured default timeout.
        default: Duration,
        /// The configured maximum timeout.
        max: Duration,
    },
}

/// A block rule with its pattern compiled.
#[derive(Debug)]
struct CompiledRule {
    rule: BlockRule,
    matcher: Regex,
}

impl CompiledRule {
    /// Whether the pattern occurs in one simple command's match text. A
    /// word may hold a newline (`echo "a\nb"`); `^` still means the start
    /// of the command, not of a line inside a word.
    fn matches(&self, text: &str) -> bool {
        self.matcher.is_match(text)
    }
}

/// The `exec` tool. See the module docs.
#[derive(Debug)]
pub struct Exec {
    spec: ToolSpec,
    config: ExecConfig,
    rules: Vec<CompiledRule>,
    grants: ApprovalGrants,
}

impl Exec {
    /// Validates the configuration and compiles its block rules.
    pub fn new(config: ExecConfig) -> Result<Self, ExecConfigError> {
        if config.default_timeout.is_zero()
            || config.max_timeout.is_zero()
            || config.default_timeout > config.max_timeout
        {
            return Err(ExecConfigError::InvalidTimeouts {
                default: config.default_timeout,
                max: config.max_timeout,
            });
        }
        let rules = config
            .blocked
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                Regex::new(&rule.pattern)
                    .map(|matcher| CompiledRule {
                        rule: rule.clone(),
                        matcher,
                    })
                    .map_err(|err| ExecConfigError::InvalidBlockRule {
                        index,
                        pattern: rule.pattern.clone(),
                        error: err.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            spec: spec(&config),
            config,
            rules,
            grants: ApprovalGrants::new(),
        })
    }

    /// Lets calls a human approved through the block rules, once each: a
    /// command matching a rule runs if `grants` holds a grant for exactly
    /// these arguments, and the grant is used up.
    pub fn with_grants(mut self, grants: ApprovalGrants) -> Self {
        self.grants = grants;
        self
    }

    /// The configuration this tool runs with.
    pub fn config(&self) -> &ExecConfig {
        &self.config
    }

    async fn run(&self, raw: Value, ctx: &ToolContext) -> ToolOutcome {
        let granted_args = raw.clone();
        let args = match ExecArgs::parse(raw) {
            Ok(args) => args,
            Err(message) => return ToolOutcome::from_code(ErrorCode::InvalidInput, message),
        };
        if let Some(refusal) = self.check_rules(&args.command)
            && !self.grants.take("exec", &granted_args, ctx)
        {
            return refusal;
        }
        let timeout = self.timeout_of(args.timeout_ms);
        self.execute(&args.command, timeout, ctx).await
    }

    /// The timeout of a call that asked for `timeout_ms`: the default when
    /// it asked for none, clamped to the maximum.
    fn timeout_of(&self, timeout_ms: Option<u64>) -> Duration {
        timeout_ms
            .map_or(self.config.default_timeout, Duration::from_millis)
            .min(self.config.max_timeout)
    }

    /// The blocked outcome for a command the approval rules stop: one of
    /// its simple commands (see [`command_line`]) matches a rule, or, when
    /// any rule exists, it cannot be reduced to simple commands at all.
    fn check_rules(&self, command: &str) -> Option<ToolOutcome> {
        if self.rules.is_empty() {
            return None;
        }
        let commands = match command_line::simple_commands(command) {
            Ok(commands) => commands,
            Err(why) => {
                let reason = format!("the approval rules cannot see what this command runs: {why}");
                return Some(
                    ToolOutcome::blocked(format!("command refused by policy: {reason}")).with_data(
                        json!({
                            "pattern": null,
                            "reason": reason,
                            "construct": why.to_string(),
                            "command": command,
                        }),
                    ),
                );
            }
        };
        let texts: Vec<String> = commands
            .iter()
            .flat_map(command_line::SimpleCommand::match_texts)
            .collect();
        let rule = self
            .rules
            .iter()
            .find(|rule| texts.iter().any(|text| rule.matches(text)))?;
        Some(
            ToolOutcome::blocked(format!("command refused by policy: {}", rule.rule.reason))
                .with_data(json!({
                    "pattern": rule.rule.pattern,
                    "reason": rule.rule.reason,
                    "command": command,
                })),
        )
    }

    /// The command to spawn for `command`: `sh -c` directly when the
    /// sandbox is off, else the wrapper around `/bin/sh -c` with a private
    /// TMPDIR (returned, so it lives as long as the call). A sandbox that
    /// cannot be used is a refusal, never an unconfined run.
    // The refusal is the tool's answer, returned as is; boxing it would
    // only be unboxed again by the one caller.
    #[allow(clippy::result_large_err)]
    fn command(
        &self,
        command: &str,
    ) -> Result<(tokio::process::Command, Option<PrivateTmp>), ToolOutcome> {
        let sandbox = &self.config.sandbox;
        let workspace = &self.config.workspace_root;
        let (mut cmd, tmp) = match sandbox.mode {
            SandboxMode::Off => {
                let mut cmd = tokio::process::Command::new("sh");
                cmd.arg("-c").arg(command);
                (cmd, None)
            }
            SandboxMode::Landlock => {
                if let Some(why) = &sandbox.unavailable {
                    return Err(sandbox_refusal(format!(
                        "exec is disabled: the sandbox cannot run here ({why})"
                    )));
                }
                let Some(helper) = &sandbox.helper else {
                    return Err(sandbox_refusal(
                        "exec is disabled: no sandbox helper is configured \
                         ([tools.sandbox] helper must name the hale binary)"
                            .to_owned(),
                    ));
                };
                let tmp = PrivateTmp::create(sandbox).map_err(|e| {
                    sandbox_refusal(format!(
                        "exec could not prepare the sandbox's private TMPDIR: {e}"
                    ))
                })?;
                let mut cmd = tokio::process::Command::new(helper);
                cmd.args(sandbox.wrapper_args(workspace, &tmp.path))
                    .arg("/bin/sh")
                    .arg("-c")
                    .arg(command);
                (cmd, Some(tmp))
            }
        };
        cmd.env_clear()
            .envs(sandbox.command_env(workspace, tmp.as_ref().map(|t| t.path.as_path())))
            .current_dir(workspace)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok((cmd, tmp))
    }

    async fn execute(&self, command: &str, timeout: Duration, ctx: &ToolContext) -> ToolOutcome {
        let started = Instant::now();
        let (cmd, tmp) = match self.command(command) {
            Ok(built) => built,
            Err(refused) => return refused,
        };
        let mut wrap = CommandWrap::from(cmd);
        wrap.wrap(ProcessGroup::leader()).wrap(KillOnDrop);
        let child = match wrap.spawn() {
            Ok(child) => child,
            Err(err) => return self.spawn_failure(&err),
        };
        let record = self
            .config
            .recorder
            .started(child.id(), &format!("sh -c {command}"));
        let mut group = Group {
            child,
            settled: false,
            _record: record,
            _tmp: tmp,
        };
        let stdout = group.child.stdout().take();
        let stderr = group.child.stderr().take();
        let mut out = Capture::new(self.config.output_cap_bytes);
        let mut err = Capture::new(self.config.output_cap_bytes);

        let end = {
            let readers = async {
                tokio::join!(drain(stdout, &mut out), drain(stderr, &mut err));
            };
            let mut readers = std::pin::pin!(readers);
            let mut drained = false;
            let waited = tokio::time::timeout(
                timeout,
                wait_for_exit(group.child.as_mut(), readers.as_mut(), &mut drained),
            );
            // The caller gave up (the dispatcher abandoned the attempt, the
            // session went away): the command is killed now, not at its
            // own timeout.
            let end = tokio::select! {
                biased;
                waited = waited => match waited {
                    Ok(Ok(status)) => End::Exited(status),
                    Ok(Err(wait_err)) => End::WaitFailed(wait_err),
                    Err(_elapsed) => End::TimedOut,
                },
                () = ctx.cancel.cancelled() => End::Cancelled,
            };
            if !matches!(end, End::Exited(_)) || !drained {
                // Timed out, or the shell is gone but something it started
                // still holds the pipes: end the whole group. ESRCH (the
                // group emptied meanwhile) is not a failure.
                let _ = group.child.start_kill();
                if !matches!(end, End::Exited(_)) {
                    let _ = tokio::time::timeout(REAP_TIMEOUT, group.child.wait()).await;
                }
                if !drained {
                    let _ = tokio::time::timeout(DRAIN_AFTER_KILL, readers.as_mut()).await;
                }
            }
            end
        };
        group.settled = true;

        let output = Output {
            out,
            err,
            duration_ms: millis(started.elapsed()),
        };
        // The command ran: whatever its failure says (a `curl` that was
        // refused), its effects may have happened.
        let outcome = match end {
            End::Exited(status) => match wrapper_failure(status, &output) {
                Some(refused) => return refused,
                None => exit_outcome(status, &output, &self.config),
            },
            End::TimedOut => ToolOutcome::timeout(format!(
                "command timed out after {} ms; its process group was killed",
                millis(timeout)
            ))
            .with_data(output.data([
                ("timed_out", json!(true)),
                ("timeout_ms", json!(millis(timeout))),
            ])),
            End::Cancelled => ToolOutcome::from_code(
                ErrorCode::Interrupted,
                "the call was abandoned by its caller; the command's process group was killed",
            )
            .with_data(output.data([("cancelled", json!(true))])),
            End::WaitFailed(wait_err) => {
                let outcome = classify::from_io_error(&wait_err);
                let message = format!("could not wait for the command: {}", outcome.message);
                ToolOutcome { message, ..outcome }.with_data(output.data([]))
            }
        };
        if outcome.is_failure() {
            outcome.delivered()
        } else {
            outcome
        }
    }

    fn spawn_failure(&self, err: &io::Error) -> ToolOutcome {
        let root = self.config.workspace_root.display();
        let outcome = classify::from_io_error(err);
        let message = match (&self.config.sandbox.mode, &self.config.sandbox.helper) {
            (SandboxMode::Landlock, Some(helper)) => {
                return sandbox_refusal(format!(
                    "exec is disabled: the sandbox helper `{}` could not be started: {err}",
                    helper.display()
                ));
            }
            _ => format!("could not start `sh -c` in `{root}`: {err}"),
        };
        let mut data = object(outcome.data.clone());
        data.insert("workspace_root".into(), json!(root.to_string()));
        ToolOutcome { message, ..outcome }.with_data(Value::Object(data))
    }
}

impl Tool for Exec {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        Box::pin(self.run(args, ctx))
    }

    /// The call's own timeout (`timeout_ms`, else the default, clamped):
    /// the dispatcher waits for it, plus a grace, rather than cutting a
    /// long command off at its fixed attempt timeout. Arguments `run` will
    /// refuse get the default; they end at once anyway.
    fn own_timeout(&self, args: &Value) -> Option<Duration> {
        let asked = args
            .get("timeout_ms")
            .and_then(Value::as_u64)
            .filter(|ms| *ms > 0);
        Some(self.timeout_of(asked))
    }
}

fn spec(config: &ExecConfig) -> ToolSpec {
    let description = format!(
        "Run a shell command with `sh -c` in the workspace directory and return its exit code, \
         stdout and stderr. stdin is empty. Each of stdout and stderr keeps at most {cap} bytes \
         (`truncated` says whether anything was cut). The command is killed, together with \
         everything it started, after `timeout_ms` (default {default} ms, at most {max} ms). \
         Background processes that still hold the output open when the shell exits are killed \
         too; detach them with `nohup cmd >file 2>&1 &` if they must keep running. Some \
         commands are refused by policy; the outcome then says why.{sandbox}",
        sandbox = match config.sandbox.mode {
            SandboxMode::Landlock => format!(
                " Commands run in a sandbox: only the workspace and a private $TMPDIR are \
                 writable, system directories are read-only, nothing else is visible, and the \
                 network policy is `{}`.",
                config.sandbox.network
            ),
            SandboxMode::Off => String::new(),
        },
        cap = config.output_cap_bytes,
        default = millis(config.default_timeout),
        max = millis(config.max_timeout),
    );
    let schema = json!({
        "type": "object",
        "properties": {
            "command": {
                "type": "string",
                "minLength": 1,
                "description": "The shell command line, run with `sh -c` in the workspace directory."
            },
            "timeout_ms": {
                "type": "integer",
                "minimum": 1,
                "description": format!(
                    "Kill the command after this many milliseconds (default {}; larger values are clamped to {}).",
                    millis(config.default_timeout),
                    millis(config.max_timeout)
                )
            }
        },
        "required": ["command"],
        "additionalProperties": false
    });
    ToolSpec::new("exec", description, schema).with_idempotent(false)
}

/// The validated arguments of one call.
struct ExecArgs {
    command: String,
    timeout_ms: Option<u64>,
}

impl ExecArgs {
    /// Reads the arguments by hand so every complaint names its field.
    fn parse(args: Value) -> Result<Self, String> {
        let Value::Object(mut args) = args else {
            return Err(format!(
                "arguments must be an object with a `command` string, got {}",
                kind_of(&args)
            ));
        };
        let command = match args.remove("command") {
            Some(Value::String(s)) if !s.trim().is_empty() => s,
            Some(Value::String(_)) => return Err("`command` must not be empty".into()),
            Some(other) => {
                return Err(format!(
                    "`command` must be a string, got {}",
                    kind_of(&other)
                ));
            }
            None => return Err("missing required field `command` (a shell command line)".into()),
        };
        let timeout_ms = match args.remove("timeout_ms") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(ms) if ms > 0 => Some(ms),
                _ => {
                    return Err(format!(
                        "`timeout_ms` must be a positive integer number of milliseconds, got {n}"
                    ));
                }
            },
            Some(other) => {
                return Err(format!(
                    "`timeout_ms` must be a positive integer, got {}",
                    kind_of(&other)
                ));
            }
        };
        if let Some(unknown) = args.keys().next() {
            return Err(format!(
                "unknown field `{unknown}`; `exec` takes `command` and optionally `timeout_ms`"
            ));
        }
        Ok(Self {
            command,
            timeout_ms,
        })
    }
}

/// How the wait for the command ended.
enum End {
    Exited(ExitStatus),
    TimedOut,
    /// The caller cancelled the call ([`ToolContext::cancel`]).
    Cancelled,
    WaitFailed(io::Error),
}

/// Owns the spawned group until the call has settled it. If the call's
/// future is dropped mid-run (the caller gave up), the whole group is
/// killed here; `KillOnDrop` alone would reach only the shell.
///
/// The ledger record (if any) is a field, so it is dropped only after
/// `drop` has killed the group.
struct Group {
    child: Box<dyn ChildWrapper>,
    settled: bool,
    _record: Option<ProcessRecord>,
    _tmp: Option<PrivateTmp>,
}

/// The private TMPDIR of one sandboxed call: a fresh 0700 directory in the
/// system's temporary directory, owned by the sandbox user when there is
/// one, removed (with what the command left in it) when the call ends.
#[derive(Debug)]
struct PrivateTmp {
    path: PathBuf,
}

impl PrivateTmp {
    fn create(sandbox: &SandboxConfig) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let mut last = None;
        for _ in 0..16 {
            let path = base.join(format!("hale-exec-{:016x}", fastrand::u64(..)));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let tmp = Self { path };
                    if let Some(user) = &sandbox.user {
                        std::os::unix::fs::chown(&tmp.path, Some(user.uid), Some(user.gid))?;
                    }
                    return Ok(tmp);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
    }
}

impl Drop for PrivateTmp {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.path);
        let remove = move || {
            let _ = std::fs::remove_dir_all(&path);
        };
        // Off the async workers when there is a runtime: what the command
        // left there may be large.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(remove);
            }
            Err(_) => remove(),
        }
    }
}

/// A refusal to run because the sandbox cannot be used: not retryable (the
/// machine will not change between two calls), not escalated, with a hint.
fn sandbox_refusal(message: String) -> ToolOutcome {
    ToolOutcome::from_code(ErrorCode::Other("SANDBOX_UNAVAILABLE".into()), message).with_hint(
        Hint::new(
            HintKind::TryInstead,
            "exec cannot run commands until the operator fixes the sandbox (or sets \
             [tools.sandbox] mode = \"off\"); use read_file, write_file, edit_file, glob and \
             grep meanwhile",
        ),
    )
}

/// The outcome of a wrapper that refused to set the sandbox up (its own
/// exit code and stderr prefix): the command never ran.
fn wrapper_failure(status: ExitStatus, output: &Output) -> Option<ToolOutcome> {
    let code = status.code()?;
    if code != EXIT_LANDLOCK_UNAVAILABLE && code != EXIT_SETUP_FAILED {
        return None;
    }
    let stderr = output.err.text();
    let line = stderr.lines().find(|l| l.starts_with(WRAPPER_PREFIX))?;
    Some(
        sandbox_refusal(format!(
            "exec is disabled: the sandbox could not be set up: {line}"
        ))
        .with_data(output.data([("exit_code", json!(code))])),
    )
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.settled {
            let _ = self.child.start_kill();
        }
    }
}

/// Waits for the shell to exit while the readers drain its pipes, then
/// gives the pipes [`EXIT_GRACE`] to close. `drained` is set once the
/// readers have finished, so the caller never polls them again after that
/// (even if this future is dropped by a timeout).
async fn wait_for_exit(
    child: &mut dyn ChildWrapper,
    mut readers: Pin<&mut impl Future<Output = ()>>,
    drained: &mut bool,
) -> io::Result<ExitStatus> {
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            () = readers.as_mut(), if !*drained => *drained = true,
        }
    };
    if !*drained
        && tokio::time::timeout(EXIT_GRACE, readers.as_mut())
            .await
            .is_ok()
    {
        *drained = true;
    }
    Ok(status)
}

/// At most `cap` bytes of one stream, and how many it produced in all.
struct Capture {
    kept: Vec<u8>,
    cap: usize,
    total: u64,
}

impl Capture {
    fn new(cap: usize) -> Self {
        Self {
            kept: Vec::new(),
            cap,
            total: 0,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        let room = self.cap.saturating_sub(self.kept.len());
        self.kept
            .extend_from_slice(chunk.get(..room).unwrap_or(chunk));
        self.total = self.total.saturating_add(chunk.len() as u64);
    }

    fn truncated(&self) -> bool {
        self.total > self.kept.len() as u64
    }

    fn text(&self) -> String {
        decode_lossy(&self.kept, self.truncated())
    }
}

/// Reads a pipe to its end, keeping what fits in `capture` and discarding
/// the rest, so the writer never blocks on a full pipe.
async fn drain<R: AsyncRead + Unpin>(pipe: Option<R>, capture: &mut Capture) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0; READ_CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => capture.push(buf.get(..n).unwrap_or(&buf)),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            // A broken pipe read ends the stream like EOF; the exit status
            // still tells what happened.
            Err(_) => break,
        }
    }
}

/// What the command produced, for the outcome's data.
struct Output {
    out: Capture,
    err: Capture,
    duration_ms: u64,
}

impl Output {
    fn data<const N: usize>(&self, extra: [(&str, Value); N]) -> Value {
        let mut data = Map::new();
        data.insert("stdout".into(), json!(self.out.text()));
        data.insert("stderr".into(), json!(self.err.text()));
        data.insert(
            "truncated".into(),
            json!(self.out.truncated() || self.err.truncated()),
        );
        data.insert("duration_ms".into(), json!(self.duration_ms));
        for (key, value) in extra {
            data.insert(key.into(), value);
        }
        Value::Object(data)
    }
}

fn exit_outcome(status: ExitStatus, output: &Output, config: &ExecConfig) -> ToolOutcome {
    let exit_code = status.code();
    let signal = status.signal();
    if exit_code == Some(0) && signal.is_none() {
        return ToolOutcome::success(output.data([("exit_code", json!(0))]));
    }
    let mut outcome = classify::from_process_exit(exit_code, signal, &output.err.text());
    let mut extra = vec![];
    if exit_code == Some(127) {
        // The shell searched the PATH of the environment we built.
        let path = config
            .sandbox
            .command_env(&config.workspace_root, None)
            .into_iter()
            .find(|(name, _)| name == "PATH")
            .map(|(_, p)| p.to_string_lossy().into_owned());
        let shown = path
            .clone()
            .unwrap_or_else(|| "(unset: sh used its built-in default)".into());
        for hint in &mut outcome.hints {
            if hint.kind == HintKind::MissingExecutable {
                hint.message = format!("{}; PATH searched: {shown}", hint.message);
            }
        }
        extra.push(("path", json!(path)));
    }
    let mut data =
        object(output.data([("exit_code", json!(exit_code)), ("signal", json!(signal))]));
    for (key, value) in extra {
        data.insert(key.into(), value);
    }
    outcome.with_data(Value::Object(data))
}

/// Decodes bytes as UTF-8, replacing invalid sequences. When the bytes were
/// cut at a size limit, an incomplete character at the very end is a
/// product of the cut, not of the data, so it is dropped rather than shown
/// as a replacement character.
pub(super) fn decode_lossy(bytes: &[u8], cut: bool) -> String {
    let mut end = bytes.len();
    if cut {
        // Only the last (at most 3) bytes can be an incomplete character.
        let tail_start = bytes.len().saturating_sub(3);
        for start in (tail_start..bytes.len()).rev() {
            let Some(tail) = bytes.get(start..) else {
                break;
            };
            if let Err(e) = std::str::from_utf8(tail)
                && e.error_len().is_none()
                && e.valid_up_to() == 0
            {
                end = start;
                break;
            }
        }
    }
    String::from_utf8_lossy(bytes.get(..end).unwrap_or(bytes)).into_owned()
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn cut_drops_only_an_incomplete_final_character() {
        let s = "aé€😀".as_bytes(); // 1 + 2 + 3 + 4 bytes
        assert_eq!(decode_lossy(&s[..s.len() - 1], true), "aé€");
        assert_eq!(decode_lossy(&s[..s.len() - 3], true), "aé€");
        assert_eq!(decode_lossy(&s[..6], true), "aé€");
        assert_eq!(decode_lossy(&s[..5], true), "aé");
        assert_eq!(decode_lossy(s, true), "aé€😀");
        // Uncut data keeps its damage visible.
        assert_eq!(decode_lossy(&s[..5], false), "aé\u{fffd}");
        // Invalid bytes that are not an incomplete tail are still replaced.
        assert_eq!(decode_lossy(b"a\xff", true), "a\u{fffd}");
    }

    #[test]
    fn capture_keeps_the_head_and_counts_everything() {
        let mut c = Capture::new(4);
        c.push(b"abc");
        c.push(b"defg");
        c.push(b"h");
        assert_eq!(c.kept, b"abcd");
        assert_eq!(c.total, 8);
        assert!(c.truncated());
        let mut exact = Capture::new(3);
        exact.push(b"abc");
        assert!(!exact.truncated());
    }

    fn exec_with(patterns: &[&str]) -> Exec {
        let mut config = ExecConfig::new("/");
        config.blocked = patterns.iter().map(|p| BlockRule::new(*p, "r")).collect();
        Exec::new(config).unwrap()
    }

    /// The pattern that stopped `command`, `Some("")` when it was refused
    /// as unreadable, `None` when it may run.
    fn stopped_by(exec: &Exec, command: &str) -> Option<String> {
        exec.check_rules(command).map(|outcome| {
            assert_eq!(outcome.code, Some(ErrorCode::PolicyBlocked));
            outcome.data["pattern"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
    }

    #[test]
    fn rules_match_each_simple_command_of_the_parsed_line() {
        let exec = exec_with(&[r"rm\s+-rf\s+/", r"^dropdb\b", r"touch\s+pwned"]);
        let stopped = |c: &str| stopped_by(&exec, c);
        assert_eq!(
            stopped("cd x && rm  -rf /").as_deref(),
            Some(r"rm\s+-rf\s+/")
        );
        assert_eq!(stopped("dropdb x").as_deref(), Some(r"^dropdb\b"));
        assert_eq!(stopped("/usr/bin/dropdb x").as_deref(), Some(r"^dropdb\b"));
        assert_eq!(
            stopped("PGHOST=h sudo -u pg dropdb x").as_deref(),
            Some(r"^dropdb\b")
        );
        assert_eq!(stopped("t''ouch pwned").as_deref(), Some(r"touch\s+pwned"));
        assert_eq!(
            stopped("true;touch pwned").as_deref(),
            Some(r"touch\s+pwned")
        );
        assert_eq!(stopped("echo dropdb x"), None);
        assert_eq!(
            stopped("echo 'a\ndropdb x'"),
            None,
            "`^` is not a line start"
        );
        assert_eq!(stopped("ls -la"), None);
        // Not reducible: refused with the construct named.
        let outcome = exec.check_rules("echo x | sh").unwrap();
        assert_eq!(outcome.data["pattern"], Value::Null);
        assert_eq!(outcome.data["construct"], "pipe into a shell (`| sh`)");
        assert!(
            outcome.message.contains("pipe into a shell"),
            "{}",
            outcome.message
        );
        assert_eq!(stopped("$(echo touch) pwned").as_deref(), Some(""));
    }

    #[test]
    fn without_rules_nothing_is_parsed_or_refused() {
        let exec = exec_with(&[]);
        assert_eq!(stopped_by(&exec, "sh -c 'touch pwned'"), None);
        assert_eq!(stopped_by(&exec, "echo 'unclosed"), None);
    }
}
