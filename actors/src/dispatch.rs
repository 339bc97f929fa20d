//! The [`Dispatcher`]: where the recovery policy meets real tool calls.
//!
//! `recovery` decides (retry, fall back, give up, how long to wait, whether
//! re-issuing is safe) as pure values; something has to carry those
//! decisions out against live tools, and it has to be one place, or every
//! caller grows its own retry loop with its own bugs. For one logical
//! call the dispatcher finds the route (the tool, then its fallbacks) and
//! hands it to the attempt engine (`engine`, shared with the model chain),
//! which admits every attempt through the endpoint's not-before, breaker
//! and concurrency cap, calls the tool under a timeout, charges the
//! per-call attempt budget and the endpoint's shared retry budget, and
//! emits an event for every attempt, retry, fallback, refusal and breaker
//! transition. What is the dispatcher's own: routing, re-reading oversized
//! results in chunks, and handing back the outcome with its typed
//! [`Route`] ([`Dispatcher::call_routed`]).
//!
//! # Invariants
//! - The per-endpoint state ([`Endpoints`], in `recovery::endpoint`) lives
//!   outside every actor: a restarted MCP server or tool actor keeps its
//!   breaker, budget and not-before, so a crash loop cannot reset the
//!   protection against it.
//! - A non-idempotent call that may have started is never re-issued,
//!   neither retried nor sent to a fallback ([`next_step`] guarantees it;
//!   the engine adds no path around it).
//! - Waiting between retries is a `tokio::time::sleep` in the caller's own
//!   future; the dispatcher is not an actor and blocks nobody's mailbox.

mod engine;
mod watchdog;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::audit::Redactor;
use crate::event::{Event, EventKind, EventSink};
use crate::outcome::ToolOutcome;
use crate::recovery::endpoint::settings;
use crate::recovery::{
    AttemptBudget, CallState, FallbackChain, RetryPolicy, classify_phase, may_reissue, next_step,
    rejected_outcome, should_chunk,
};
pub use crate::recovery::{
    DispatchConfig, DispatchConfigError, ENDPOINTS_SWEEP_AT, EndpointHealth, Endpoints,
};
pub use crate::tool::ToolContext;
use crate::tool::{OWN_TIMEOUT_GRACE, Tool, ToolRegistry, ToolSpec, call_guarded, unknown_tool};
pub use engine::{ApprovalReason, Dispatched, Escalation, Route, escalation, state_name};
pub(crate) use engine::{AttemptOf, Callee, Engine, Rules, Step};

/// One place a call can go: a tool and the endpoint whose shared recovery
/// state it uses.
#[derive(Clone)]
pub struct Target {
    /// The endpoint (MCP server, HTTP host, or the tool itself).
    pub endpoint: String,
    /// What to call.
    pub tool: Arc<dyn Tool>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("endpoint", &self.endpoint)
            .field("tool", &self.tool.spec().name)
            .finish()
    }
}

/// Finds the targets of a tool name: the primary first, then its
/// fallbacks in order.
pub trait Router: Send + Sync {
    /// The route for `name`, or `None` when this router does not know it.
    fn route(&self, name: &str) -> Option<Vec<Target>>;

    /// Every name this router knows, for "did you mean" hints.
    fn names(&self) -> Vec<String>;
}

/// Carries the recovery policy out for every tool call. Cheap to share
/// behind an `Arc`; every method takes `&self`.
pub struct Dispatcher {
    engine: Engine,
    routers: Vec<Arc<dyn Router>>,
    /// Masks secrets in every outcome handed back (see [`with_redactor`](Dispatcher::with_redactor)).
    redactor: Option<Arc<Redactor>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("routers", &self.routers.len())
            .field("endpoints", self.engine.endpoints())
            .finish_non_exhaustive()
    }
}

/// One tool target with the arguments of one call: what the engine calls.
struct ToolCall<'a> {
    target: &'a Target,
    args: &'a Value,
    attempt_timeout: Duration,
}

impl Callee for ToolCall<'_> {
    type Reply = ToolOutcome;

    fn endpoint(&self) -> &str {
        &self.target.endpoint
    }

    fn name(&self) -> &str {
        &self.target.tool.spec().name
    }

    fn kind(&self) -> &'static str {
        "tool"
    }

    fn attempt_data(&self, _attempt: u32) -> Value {
        json!({ "tool": self.name() })
    }

    fn timeout(&self) -> Duration {
        // A tool with a timeout of its own (exec's `timeout_ms`) is given
        // that plus a grace: its timeout kills and reports cleanly, so it
        // must come first; the fixed backstop is for tools without one.
        self.target
            .tool
            .own_timeout(self.args)
            .map_or(self.attempt_timeout, |own| {
                own.saturating_add(OWN_TIMEOUT_GRACE)
            })
    }

    async fn call(&self, ctx: &ToolContext) -> Result<ToolOutcome, ToolOutcome> {
        let outcome = call_guarded(&*self.target.tool, self.args.clone(), ctx).await;
        if outcome.is_failure() {
            Err(outcome)
        } else {
            Ok(outcome)
        }
    }

    fn reply_outcome(reply: &ToolOutcome) -> Option<&ToolOutcome> {
        Some(reply)
    }

    fn decide(
        &self,
        outcome: &ToolOutcome,
        attempts: u32,
        fallback_available: bool,
        policy: &RetryPolicy,
        unit: f64,
    ) -> Step {
        let spec = self.target.tool.spec();
        if should_chunk(outcome) && spec.accepts("offset") {
            // The dispatcher re-reads it in chunks.
            return Step::Return;
        }
        let call = CallState {
            attempts,
            idempotent: spec.idempotent,
            phase: classify_phase(outcome),
            fallback_available,
        };
        match next_step(outcome, &call, policy, unit) {
            crate::recovery::Next::Done => Step::Done,
            crate::recovery::Next::Retry { delay } => Step::Retry { delay },
            crate::recovery::Next::Fallback => Step::Fallback,
            crate::recovery::Next::Escalate | crate::recovery::Next::GiveUp => Step::Return,
        }
    }

    fn may_fall_back(&self, outcome: &ToolOutcome) -> bool {
        outcome.recoverable
            && may_reissue(
                outcome,
                self.target.tool.spec().idempotent,
                classify_phase(outcome),
            )
    }

    fn refused(&self, retry_in: Duration) -> ToolOutcome {
        rejected_outcome(&self.target.endpoint, retry_in)
    }
}

impl Dispatcher {
    /// A dispatcher over `routers` (asked in order), sharing `endpoints`
    /// with whoever reports on them, and emitting to `sink`.
    pub fn new(
        routers: Vec<Arc<dyn Router>>,
        endpoints: Arc<Endpoints>,
        sink: Arc<dyn EventSink>,
    ) -> Self {
        let tick = settings(&endpoints).attempt_timeout;
        Self {
            engine: Engine::new(endpoints, sink, tick),
            routers,
            redactor: None,
        }
    }

    /// Masks secrets (known values and patterns) in every outcome this
    /// dispatcher hands back, before the caller sees it: the model's view,
    /// the session journal and the events built from the outcome then all
    /// hold the same masked text, so a resumed session reads exactly what
    /// the live one did.
    #[must_use]
    pub fn with_redactor(mut self, redactor: Arc<Redactor>) -> Self {
        self.redactor = Some(redactor);
        self
    }

    /// The shared per-endpoint state.
    pub fn endpoints(&self) -> &Arc<Endpoints> {
        self.engine.endpoints()
    }

    /// Every tool name the routers know, sorted and deduplicated.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.routers.iter().flat_map(|r| r.names()).collect();
        names.sort();
        names.dedup();
        names
    }

    fn route(&self, name: &str) -> Option<Vec<Target>> {
        self.routers
            .iter()
            .find_map(|r| r.route(name))
            .filter(|targets| !targets.is_empty())
    }

    /// The route of one call: each target on the endpoint its tool names
    /// for these arguments ([`Tool::endpoint_for`]), so `web_fetch` keeps a
    /// breaker per site rather than one for the whole web.
    fn route_call(&self, name: &str, args: &Value) -> Option<Vec<Target>> {
        let mut targets = self.route(name)?;
        for target in &mut targets {
            if let Some(endpoint) = target.tool.endpoint_for(args) {
                target.endpoint = endpoint;
            }
        }
        Some(targets)
    }

    /// Calls `name` with `args`, applying the whole recovery policy, and
    /// returns the final outcome. Never panics and never fails outside the
    /// outcome. [`call_routed`](Self::call_routed) also says who served it.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the call: the attempt in flight has
    /// its [`ToolContext::cancel`] fired (so a tool running elsewhere, in
    /// its actor, stops too; `exec` kills its process group), and nothing
    /// is retried afterwards.
    pub async fn call(&self, name: &str, args: Value, ctx: &ToolContext) -> ToolOutcome {
        self.call_routed(name, args, ctx).await.outcome
    }

    /// As [`call`](Self::call), with the route the call took: which
    /// endpoint served it, after which fallbacks, and its breaker.
    pub async fn call_routed(&self, name: &str, args: Value, ctx: &ToolContext) -> Dispatched {
        let mut dispatched = self.call_unmasked(name, args, ctx).await;
        if let Some(redactor) = &self.redactor {
            redactor.redact_outcome(&mut dispatched.outcome);
        }
        dispatched
    }

    /// [`call_routed`](Self::call_routed) before the outcome is masked.
    async fn call_unmasked(&self, name: &str, args: Value, ctx: &ToolContext) -> Dispatched {
        let Some(targets) = self.route_call(name, &args) else {
            return Dispatched {
                outcome: unknown_tool(name, self.names()),
                route: Route::default(),
            };
        };
        let settings = settings(self.engine.endpoints());
        let call_of = |target| ToolCall {
            target,
            args: &args,
            attempt_timeout: settings.attempt_timeout,
        };
        // Most names route to one target: that call needs no list.
        let (one, many): (Option<ToolCall<'_>>, Vec<ToolCall<'_>>) = match targets.as_slice() {
            [only] => (Some(call_of(only)), Vec::new()),
            all => (None, all.iter().map(call_of).collect()),
        };
        let calls = match &one {
            Some(one) => std::slice::from_ref(one),
            None => many.as_slice(),
        };
        let rules = Rules {
            retry: settings.retry,
            attempts_per_call: settings.attempts_per_call,
            charge_iterations: true,
            rounds: 1,
            deadline: None,
        };
        let ended = self.engine.run(calls, &rules, ctx).await;
        let outcome = match ended.result {
            Ok(outcome) | Err(outcome) => outcome,
        };
        let target = &targets[ended.index.min(targets.len() - 1)];
        if should_chunk(&outcome) && target.tool.spec().accepts("offset") {
            let outcome = self.read_in_chunks(target, &args, outcome, ctx).await;
            return Dispatched {
                outcome,
                route: ended.route,
            };
        }
        let outcome = with_route(with_history(outcome, &ended.budget), &ended.route);
        Dispatched {
            outcome,
            route: ended.route,
        }
    }

    /// Re-reads an oversized result in the chunk policy's ranges and
    /// assembles it. The tool must take `offset` and `limit` and answer
    /// with `content`, `bytes` and `total_bytes` (as `read_file` does).
    async fn read_in_chunks(
        &self,
        target: &Target,
        args: &Value,
        too_large: ToolOutcome,
        ctx: &ToolContext,
    ) -> ToolOutcome {
        let Some(total) = too_large.data.get("total_bytes").and_then(Value::as_u64) else {
            return too_large;
        };
        let health = self.engine.endpoints().get(&target.endpoint);
        let policy = settings(self.engine.endpoints()).chunk;
        let max_retry_after = settings(self.engine.endpoints())
            .retry
            .config()
            .max_retry_after;
        let mut started = 0u32;
        let covered = total.min(policy.max_total_bytes());
        self.engine.emit(
            Event::from_outcome(&target.endpoint, EventKind::Adjust, &too_large).with_data(json!({
                "tool": target.tool.spec().name,
                "total_bytes": total,
                "chunk_bytes": policy.chunk_bytes(),
                "reading_bytes": covered,
            })),
            ctx,
        );
        let mut content = String::new();
        let mut offset = 0u64;
        let mut chunks = 0u32;
        while offset < covered {
            let mut chunk_args = args.clone();
            if let Some(map) = chunk_args.as_object_mut() {
                map.insert("offset".into(), json!(offset));
                map.insert(
                    "limit".into(),
                    json!(policy.chunk_bytes().min(covered - offset)),
                );
            }
            let call = ToolCall {
                target,
                args: &chunk_args,
                attempt_timeout: settings(self.engine.endpoints()).attempt_timeout,
            };
            let attempt = AttemptOf {
                first_on_target: false,
                may_divert: false,
                deadline: ctx.deadline,
                started: &mut started,
                max_retry_after,
            };
            let outcome = match self
                .engine
                .attempt(&call, &health, attempt, ctx)
                .await
                .result
            {
                Ok(outcome) | Err(outcome) => outcome,
            };
            let bytes = outcome.data.get("bytes").and_then(Value::as_u64);
            let text = outcome.data.get("content").and_then(Value::as_str);
            match (outcome.is_success(), bytes, text) {
                (true, Some(bytes), Some(text)) if bytes > 0 => {
                    content.push_str(text);
                    offset += bytes;
                    chunks += 1;
                }
                _ => {
                    let reason = if outcome.is_success() {
                        "the tool returned no progress".to_owned()
                    } else {
                        describe(&outcome)
                    };
                    return ToolOutcome::partial(
                        json!({ "content": content, "bytes": offset, "total_bytes": total,
                                "chunks": chunks, "complete": false }),
                        format!("chunked read stopped at byte {offset} of {total}: {reason}"),
                    );
                }
            }
        }
        let data = json!({
            "content": content,
            "offset": 0,
            "bytes": offset,
            "total_bytes": total,
            "chunks": chunks,
            "eof": offset >= total,
            "complete": offset >= total,
        });
        if offset >= total {
            ToolOutcome::success(data)
        } else {
            ToolOutcome::partial(
                data,
                format!(
                    "read the first {offset} of {total} bytes in {chunks} chunks; \
                     the rest is beyond the chunked-read limit"
                ),
            )
        }
    }

    /// The spec of the tool `name` resolves to (its primary target).
    pub fn spec(&self, name: &str) -> Option<ToolSpec> {
        let targets = self.route(name)?;
        targets.first().map(|t| t.tool.spec().clone())
    }
}

fn describe(outcome: &ToolOutcome) -> String {
    engine::describe(outcome)
}

/// Adds the attempt history to a final outcome that took more than one
/// attempt, so the agent and the audit trail see what recovery tried.
fn with_history(mut outcome: ToolOutcome, budget: &AttemptBudget) -> ToolOutcome {
    if budget.history().len() > 1 {
        let attempts: Vec<Value> = budget.history().iter().map(|r| r.to_json()).collect();
        outcome
            .extra
            .insert("attempts".to_owned(), Value::Array(attempts));
    }
    outcome
}

/// Records on an outcome served (or failed) by a fallback which endpoints
/// were tried before it: `fallback_from` lists them in order and
/// `served_by` names the endpoint that produced the outcome, so the agent
/// and the audit trail see the detour. (The session reads the typed
/// [`Route`], not these keys.)
fn with_route(mut outcome: ToolOutcome, route: &Route) -> ToolOutcome {
    if route.fell_back() {
        let from: Vec<Value> = route
            .fallback_from
            .iter()
            .map(|e| Value::String(e.clone()))
            .collect();
        outcome
            .extra
            .insert("fallback_from".to_owned(), Value::Array(from));
        if let Some(served_by) = &route.served_by {
            outcome
                .extra
                .insert("served_by".to_owned(), Value::String(served_by.clone()));
        }
    }
    outcome
}

/// Routes the tools of a [`ToolRegistry`], with fallback chains between
/// tool names (`web_fetch` -> `web_fetch_mirror`).
#[derive(Debug)]
pub struct RegistryRouter {
    registry: Arc<ToolRegistry>,
    fallbacks: HashMap<String, FallbackChain>,
}

impl RegistryRouter {
    /// A router over `registry` with no fallbacks.
    pub fn new(registry: Arc<ToolRegistry>) -> Self {
        Self {
            registry,
            fallbacks: HashMap::new(),
        }
    }

    /// Routes calls to the chain's primary through its alternatives.
    pub fn with_fallback(mut self, chain: FallbackChain) -> Self {
        self.fallbacks.insert(chain.primary().to_owned(), chain);
        self
    }
}

impl Router for RegistryRouter {
    fn route(&self, name: &str) -> Option<Vec<Target>> {
        let primary = self.registry.get(name)?;
        let mut targets = vec![Target {
            endpoint: primary.spec().endpoint_name().to_owned(),
            tool: primary,
        }];
        if let Some(chain) = self.fallbacks.get(name) {
            // An alternative that is not registered (yet) is skipped rather
            // than failing the call the primary could serve.
            targets.extend(chain.targets().iter().skip(1).filter_map(|alt| {
                let tool = self.registry.get(alt)?;
                Some(Target {
                    endpoint: tool.spec().endpoint_name().to_owned(),
                    tool,
                })
            }));
        }
        Some(targets)
    }

    fn names(&self) -> Vec<String> {
        self.registry.names()
    }
}
