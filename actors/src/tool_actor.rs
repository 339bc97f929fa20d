//! Every tool as a supervised actor.
//!
//! A tool is just an object with a `call` method; running it inside an
//! actor is what gives it a place in the supervision tree: a tool whose
//! state went bad (a wedged client, a leaked handle) is restarted by its
//! supervisor like any other child, and its calls in flight end with it
//! instead of lingering. The actor is the supervision crate's
//! [`TaskActor`] running [`ToolWork`]: each call is a task the actor owns,
//! so a slow `exec` does not hold up a quick one, and a killed actor aborts
//! its calls in flight.
//!
//! Callers hold a [`ToolHandle`], which implements [`Tool`] itself and
//! reaches the current incarnation with a [`SupervisedCall`], waiting
//! (bounded) while a restart is in progress.

use std::sync::Arc;
use std::time::Duration;

use hale_supervision::{
    Address, CallError, CallPolicy, ChildSpec, SupervisedCall, Task, TaskActor, TaskArgs, Work,
};
use serde_json::{Value, json};

use crate::catalog::ErrorCode;
use crate::outcome::ToolOutcome;
use crate::tool::{BoxFuture, CANCEL_GRACE, Tool, ToolContext, ToolSpec, call_guarded};

/// How long a call waits for a restarting tool actor before it is
/// answered `SERVICE_UNAVAILABLE` (undelivered, so recovery may retry).
pub const DEFAULT_READY_WAIT: Duration = Duration::from_secs(5);

/// What a tool actor runs: the tool, one call per task.
#[derive(Clone)]
pub struct ToolWork(pub Arc<dyn Tool>);

/// One call of a tool: the JSON arguments object, and who calls, for
/// which step, until when.
pub type ToolCall = (Value, Box<ToolContext>);

impl Work for ToolWork {
    type Request = ToolCall;
    type Reply = ToolOutcome;

    async fn run(self, (args, ctx): ToolCall) -> Option<ToolOutcome> {
        // The caller's future ends at the reply port; this task does not.
        // Without the cancel signal an abandoned call (an `exec` the
        // dispatcher gave up on) would run on here, unseen, to its own
        // timeout.
        run_until_cancelled(&*self.0, args, &ctx).await
    }
}

/// The tool actor's messages: one call each.
pub type ToolMsg = Task<ToolWork>;

/// The actor behaviour; its state is the tool and the calls in flight.
pub type ToolActor = TaskActor<ToolWork>;

/// What each incarnation starts from.
pub type ToolActorArgs = TaskArgs<ToolWork>;

/// Runs one call until it answers or its caller cancels it (see
/// [`ToolContext::cancel`]). A cancelled call gets [`CANCEL_GRACE`] to stop
/// on its own (an `exec` kills its process group and reaps it); after that
/// its future is dropped, which ends whatever it still holds. `None`: the
/// call was dropped unanswered.
async fn run_until_cancelled(
    tool: &dyn Tool,
    args: Value,
    ctx: &ToolContext,
) -> Option<ToolOutcome> {
    let call = call_guarded(tool, args, ctx);
    tokio::pin!(call);
    tokio::select! {
        biased;
        outcome = &mut call => Some(outcome),
        () = ctx.cancel.cancelled() => tokio::time::timeout(CANCEL_GRACE, call).await.ok(),
    }
}

/// A [`Tool`] that forwards calls to the current incarnation of a tool
/// actor.
///
/// It sets no deadline of its own: the tool's own timeouts (every
/// built-in tool that touches a process or the network has one) and the
/// dispatcher's per-attempt deadline bound a call.
#[derive(Clone)]
pub struct ToolHandle {
    spec: ToolSpec,
    /// Answers the questions that need only the arguments
    /// ([`Tool::endpoint_for`], [`Tool::own_timeout`]) without a trip
    /// through the actor; calls always go through it.
    tool: Arc<dyn Tool>,
    address: Address<ToolMsg>,
    ready_wait: Duration,
}

impl std::fmt::Debug for ToolHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolHandle")
            .field("tool", &self.spec.name)
            .finish_non_exhaustive()
    }
}

impl ToolHandle {
    /// The address callers reach the actor through.
    pub fn address(&self) -> &Address<ToolMsg> {
        &self.address
    }

    /// Sets how long a call waits for a restarting actor.
    pub fn with_ready_wait(mut self, wait: Duration) -> Self {
        self.ready_wait = wait;
        self
    }

    async fn forward(&self, args: Value, ctx: &ToolContext) -> ToolOutcome {
        // A message the actor never took (it died first, dropping its
        // mailbox) ran nothing, so it is sent again to the replacement; a
        // few times at most, since each try waits for a new incarnation.
        let policy = CallPolicy::new(self.ready_wait);
        let sent = SupervisedCall::new(&self.address, policy)
            .send(|taken, reply| Task {
                request: (args.clone(), Box::new(ctx.clone())),
                taken,
                reply,
            })
            .await;
        let name = &self.spec.name;
        match sent {
            Ok(outcome) => outcome,
            // The actor took the call and died before answering: the tool
            // may have run.
            Err(CallError::Interrupted { .. }) => ToolOutcome::from_code(
                ErrorCode::Interrupted,
                format!("the `{name}` tool actor stopped while the call was running"),
            )
            .for_idempotency(self.spec.idempotent)
            .with_data(json!({ "tool": name })),
            Err(CallError::NotRunning { waited, .. }) => not_running(name, waited),
            // The policy sets no reply deadline; the tool bounds itself.
            Err(CallError::Timeout { after }) => ToolOutcome::timeout(format!(
                "the `{name}` tool actor gave no answer within {} ms",
                after.as_millis()
            )),
        }
    }
}

fn not_running(name: &str, waited: Duration) -> ToolOutcome {
    ToolOutcome::from_code(
        ErrorCode::ServiceUnavailable,
        format!(
            "the `{name}` tool actor is not running (waited {} ms for a restart); the call was not made",
            waited.as_millis()
        ),
    )
    .with_data(json!({ "tool": name }))
    .undelivered()
}

impl Tool for ToolHandle {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        Box::pin(self.forward(args, ctx))
    }

    fn endpoint_for(&self, args: &Value) -> Option<String> {
        self.tool.endpoint_for(args)
    }

    fn own_timeout(&self, args: &Value) -> Option<Duration> {
        self.tool.own_timeout(args)
    }
}

/// The child spec that runs `tool` as a permanent worker under id `id`,
/// and the handle that reaches whichever incarnation is current.
pub fn tool_child(id: &str, tool: Arc<dyn Tool>) -> (ChildSpec, ToolHandle) {
    let address = Address::new();
    let handle = ToolHandle {
        spec: tool.spec().clone(),
        tool: Arc::clone(&tool),
        address: address.clone(),
        ready_wait: DEFAULT_READY_WAIT,
    };
    let spec = ChildSpec::worker(id, move || {
        (
            ToolActor::new(),
            ToolActorArgs {
                work: ToolWork(Arc::clone(&tool)),
                address: address.clone(),
            },
        )
    });
    (spec, handle)
}
