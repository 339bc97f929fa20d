//! The [`Tool`] trait and the [`ToolRegistry`] that finds tools by name.
//!
//! A tool is anything an agent can call: a shell command, an HTTP API, an
//! MCP server's tool. Recovery only works if every one of them reports
//! failure the same way, so the trait has no error type at all: a call
//! always yields a [`ToolOutcome`]. The registry enforces the same rule for
//! the cases a tool cannot report itself: an unknown name becomes a
//! `NOT_FOUND` outcome with suggestions, and a tool that panics becomes an
//! `INTERNAL` outcome instead of taking its caller down.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::catalog::ErrorCode;
use crate::outcome::{Hint, HintKind, ToolOutcome};
use crate::recovery::{IterationBudget, UnlimitedIterations};

/// A boxed, sendable future; the return type of [`Tool::call`], so the
/// trait stays object-safe without an async-trait dependency.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a tool is, as shown to the model and to recovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Unique name: non-empty, only `A-Z a-z 0-9 _ -`.
    pub name: String,
    /// What the tool does, for the model.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub schema: Value,
    /// Calling it twice with the same arguments has the same effect as
    /// calling it once, so an interrupted call may be repeated.
    #[serde(default)]
    pub idempotent: bool,
    /// What the tool talks to, for the recovery state shared by every
    /// caller (circuit breaker, retry budget, concurrency cap): an MCP
    /// server's name for its tools, or `None` when the tool is its own
    /// endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl ToolSpec {
    /// A spec for a non-idempotent tool.
    pub fn new(name: impl Into<String>, description: impl Into<String>, schema: Value) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            schema,
            idempotent: false,
            endpoint: None,
        }
    }

    /// Names the endpoint the tool talks to (see [`ToolSpec::endpoint`]).
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// The endpoint whose breaker, budget and cap this tool's calls share:
    /// the declared one, or the tool's own name.
    pub fn endpoint_name(&self) -> &str {
        self.endpoint.as_deref().unwrap_or(&self.name)
    }

    /// Whether the arguments schema declares a property `name`.
    pub fn accepts(&self, name: &str) -> bool {
        self.schema
            .get("properties")
            .and_then(|p| p.get(name))
            .is_some()
    }

    /// Declares whether the tool is idempotent.
    pub fn with_idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }
}

/// Who is calling a tool, for which message and step, and until when.
///
/// The runtime builds it; nothing in it comes from the agent's arguments.
/// That is the point: a tool that needs to know the caller (the approval
/// gates, `ask_approval`, grants) reads it here, so an agent cannot claim
/// to be another session or another step by writing a field. The
/// dispatcher narrows the deadline and gives every attempt its own cancel
/// signal, which fires when the dispatcher abandons the attempt.
#[derive(Clone)]
pub struct ToolContext {
    /// The session the call serves; `None` for calls outside any session
    /// (benchmarks, the operator's own tools).
    pub session: Option<String>,
    /// The sequence number of the inbound message the call serves.
    pub message: Option<u64>,
    /// The id of the call in its session's journal (the step), recorded in
    /// every event of the call (`data.call`) so the audit trail and the
    /// journal can be joined.
    pub call: Option<String>,
    /// When the caller stops waiting; a tool should not run past it.
    pub deadline: Option<Instant>,
    /// Fires when the caller gives up on the call (the attempt was
    /// abandoned or the caller went away): a tool stops its work.
    pub cancel: CancellationToken,
    /// The session's iteration budget; retries and fallbacks charge it.
    pub iterations: Arc<dyn IterationBudget>,
}

impl Default for ToolContext {
    fn default() -> Self {
        Self {
            session: None,
            message: None,
            call: None,
            deadline: None,
            cancel: CancellationToken::new(),
            iterations: Arc::new(UnlimitedIterations),
        }
    }
}

impl std::fmt::Debug for ToolContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolContext")
            .field("session", &self.session)
            .field("message", &self.message)
            .field("call", &self.call)
            .field("deadline", &self.deadline)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl ToolContext {
    /// A context for a call of `session`'s message `message`, step `call`.
    pub fn for_step(session: impl Into<String>, message: u64, call: impl Into<String>) -> Self {
        Self {
            session: Some(session.into()),
            message: Some(message),
            call: Some(call.into()),
            ..Self::default()
        }
    }

    /// The same caller, for one attempt that must end by `deadline`: the
    /// earlier of the two deadlines, and a cancel signal of its own that
    /// also fires when the caller's does.
    pub fn for_attempt(&self, deadline: Instant) -> Self {
        Self {
            deadline: Some(self.deadline.map_or(deadline, |d| d.min(deadline))),
            cancel: self.cancel.child_token(),
            ..self.clone()
        }
    }

    /// How long is left before the deadline (`None`: no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// Something an agent can call.
///
/// Contract: `call` never panics at its caller and never fails outside the
/// outcome; every failure, including bad arguments, is a [`ToolOutcome`].
/// (The registry still guards against panics, but a panic is a bug in the
/// tool, reported as `INTERNAL`.)
pub trait Tool: Send + Sync + 'static {
    /// The tool's description.
    fn spec(&self) -> &ToolSpec;

    /// Runs the tool with a JSON arguments object, for the caller `ctx`
    /// describes. Who is calling comes from `ctx`, never from `args`.
    ///
    /// When `ctx.cancel` fires, the caller has given up on the call: the
    /// tool stops its work (kills what it started) and answers soon; a
    /// tool that does not is dropped after [`CANCEL_GRACE`].
    fn call<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome>;

    /// The endpoint this call talks to, when it depends on the arguments
    /// (`web_fetch`: the URL's `scheme://host:port`); `None` (the default)
    /// keeps the spec's [`ToolSpec::endpoint_name`]. The dispatcher keys
    /// the breaker, retry budget and concurrency cap by it, so one dead
    /// site does not close the tool for every other one.
    fn endpoint_for(&self, _args: &Value) -> Option<String> {
        None
    }

    /// The time limit this call runs under when the tool enforces one the
    /// caller may choose (`exec`'s `timeout_ms`); `None` (the default) for
    /// tools without. The dispatcher then abandons the attempt only after
    /// this plus [`OWN_TIMEOUT_GRACE`], instead of its fixed attempt
    /// timeout: a long command the agent asked for is not cut off early,
    /// and the tool's own timeout (which kills and reports cleanly) always
    /// comes first.
    fn own_timeout(&self, _args: &Value) -> Option<Duration> {
        None
    }
}

/// How long past a tool's [`own_timeout`](Tool::own_timeout) the
/// dispatcher waits before abandoning the attempt: time for the tool to
/// kill what it started, reap it and report.
pub const OWN_TIMEOUT_GRACE: Duration = Duration::from_secs(5);

/// How long a tool whose call was cancelled (see [`ToolContext::cancel`])
/// gets to stop on its own before its future is dropped.
pub const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Why a tool could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Another tool already has this name.
    #[error("a tool named `{0}` is already registered")]
    Duplicate(String),
    /// The name is empty or contains characters outside `A-Z a-z 0-9 _ -`.
    #[error("invalid tool name `{0}`: use only A-Z, a-z, 0-9, `_` and `-`, at least one character")]
    InvalidName(String),
}

/// Tools by name, with calls that always yield an outcome.
#[derive(Default)]
pub struct ToolRegistry {
    tools: RwLock<BTreeMap<String, Arc<dyn Tool>>>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolRegistry")
            .field("tools", &self.names())
            .finish()
    }
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool under its spec's name.
    pub fn register(&self, tool: Arc<dyn Tool>) -> Result<(), RegistryError> {
        let name = tool.spec().name.clone();
        if !is_valid_name(&name) {
            return Err(RegistryError::InvalidName(name));
        }
        let mut tools = self.write();
        if tools.contains_key(&name) {
            return Err(RegistryError::Duplicate(name));
        }
        tools.insert(name, tool);
        Ok(())
    }

    /// The tool with this name, if any.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.read().get(name).cloned()
    }

    /// Every registered name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Every registered spec, sorted by name.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.read().values().map(|t| t.spec().clone()).collect()
    }

    /// How many tools are registered.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no tool is registered.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Calls a tool by name.
    ///
    /// An unknown name yields `NOT_FOUND` with a `did_you_mean` hint listing
    /// every registered name, closest (by edit distance) first. A panic in
    /// the tool yields `INTERNAL`. An `INTERRUPTED` outcome is re-read with
    /// the tool's idempotency (see [`ToolOutcome::for_idempotency`]).
    pub async fn call(&self, name: &str, args: Value, ctx: &ToolContext) -> ToolOutcome {
        // Clone the Arc out so the lock is not held across the await.
        let Some(tool) = self.get(name) else {
            return unknown_tool(name, self.names());
        };
        call_guarded(&*tool, args, ctx).await
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, Arc<dyn Tool>>> {
        // Inserts are single operations; a poisoned map is still consistent.
        self.tools.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Arc<dyn Tool>>> {
        self.tools.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Calls `tool` so that a panic becomes an `INTERNAL` outcome instead of
/// unwinding into the caller, and re-reads an `INTERRUPTED` outcome with
/// the tool's idempotency (see [`ToolOutcome::for_idempotency`]).
///
/// Everything that runs a tool (the registry, the tool actors) goes
/// through here, so the "a call always yields an outcome" rule holds even
/// for a buggy tool.
pub async fn call_guarded(tool: &dyn Tool, args: Value, ctx: &ToolContext) -> ToolOutcome {
    let idempotent = tool.spec().idempotent;
    let outcome = match catch_unwind(AssertUnwindSafe(|| tool.call(args, ctx))) {
        Ok(future) => CatchUnwind(future).await,
        Err(payload) => Err(payload),
    };
    match outcome {
        Ok(outcome) => outcome.for_idempotency(idempotent),
        Err(payload) => ToolOutcome::from_code(
            ErrorCode::Internal,
            format!(
                "tool `{}` panicked: {}",
                tool.spec().name,
                panic_message(&*payload)
            ),
        ),
    }
}

/// The `NOT_FOUND` outcome for a call to `name` when only `known` exist:
/// a `did_you_mean` hint lists every known name, closest (by edit
/// distance, ignoring case) first, so a model that misspelt a tool can
/// repair the call from the first suggestion.
pub fn unknown_tool<I>(name: &str, known: I) -> ToolOutcome
where
    I: IntoIterator<Item = String>,
{
    let suggestions = closest_first(name, known);
    let mut outcome =
        ToolOutcome::from_code(ErrorCode::NotFound, format!("no tool named `{name}`"));
    if !suggestions.is_empty() {
        outcome = outcome.with_hint(
            Hint::new(HintKind::DidYouMean, "available tools, closest name first")
                .with_suggestions(suggestions),
        );
    }
    outcome.with_data(json!({ "tool": name }))
}

/// `candidates` sorted by edit distance to `wanted` (ignoring case),
/// closest first; ties keep alphabetical order.
pub fn closest_first<I>(wanted: &str, candidates: I) -> Vec<String>
where
    I: IntoIterator<Item = String>,
{
    let wanted = wanted.to_lowercase();
    let mut ranked: Vec<(usize, String)> = candidates
        .into_iter()
        .map(|n| (levenshtein(&wanted, &n.to_lowercase()), n))
        .collect();
    ranked.sort();
    ranked.into_iter().map(|(_, n)| n).collect()
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Polls the inner future inside `catch_unwind`, so a panic surfaces as
/// `Err(payload)` instead of unwinding through the caller.
struct CatchUnwind<'a>(BoxFuture<'a, ToolOutcome>);

impl Future for CatchUnwind<'_> {
    type Output = Result<ToolOutcome, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The boxed future is not touched again after a panic (the outer
        // future completes with the error), so no broken state is observed.
        let inner = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(outcome)) => Poll::Ready(Ok(outcome)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

/// Edit distance between two strings, by characters. It ranks tool names
/// here and workspace paths in the file tools' `did_you_mean` hints; both
/// compare short strings, so the simple two-row version is enough.
pub(crate) fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn levenshtein_basics() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("weather", "wether"), 1);
    }

    #[test]
    fn names_are_validated() {
        assert!(is_valid_name("get_weather-2"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("get weather"));
        assert!(!is_valid_name("a.b"));
        assert!(!is_valid_name("é"));
    }
}
