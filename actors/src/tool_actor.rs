//! Every tool as a supervised actor.
//!
//! A tool is just an object with a `call` method; running it inside an
//! actor is what gives it a place in the supervision tree: a tool whose
//! state went bad (a wedged client, a leaked handle) is restarted by its
//! supervisor like any other child, and its calls in flight end with it
//! instead of lingering. The actor never runs a call inside its handler:
//! each call is a task in a `JoinSet` the actor owns, so a slow `exec`
//! does not hold up a quick one, and when the actor dies (even by `kill`,
//! which skips `post_stop`) dropping its state aborts every task it
//! started.
//!
//! Callers hold a [`ToolHandle`], which implements [`Tool`] itself and
//! finds the current incarnation through an [`Address`], waiting (bounded)
//! while a restart is in progress.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hale_supervision::{Address, ChildSpec};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::catalog::ErrorCode;
use crate::outcome::ToolOutcome;
use crate::tool::{BoxFuture, CANCEL_GRACE, Tool, ToolContext, ToolSpec, call_guarded};

/// How long a call waits for a restarting tool actor before it is
/// answered `SERVICE_UNAVAILABLE` (undelivered, so recovery may retry).
pub const DEFAULT_READY_WAIT: Duration = Duration::from_secs(5);

/// Whether an actor has taken a message out of its mailbox.
///
/// A killed actor drops its queued messages unread, and its caller then
/// sees the same closed reply port as for a call that died half-way. The
/// difference decides whether re-sending is safe, so the caller hands a
/// flag along with the message and the actor raises it when it starts the
/// work: down means the message never left the mailbox.
#[derive(Debug, Clone, Default)]
pub struct Taken(Arc<AtomicBool>);

impl Taken {
    /// A flag that is down.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raised by the actor when it starts on the message.
    pub fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the actor started on the message.
    pub fn is_taken(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The tool actor's messages.
#[derive(Debug)]
pub enum ToolMsg {
    /// Run the tool with these arguments and reply with the outcome.
    Call {
        /// The JSON arguments object.
        args: Value,
        /// Who calls, for which step, until when.
        ctx: Box<ToolContext>,
        /// Raised when the actor starts the call.
        taken: Taken,
        /// Where the outcome goes.
        reply: RpcReplyPort<ToolOutcome>,
    },
}

/// The actor behaviour; its state is the tool and the calls in flight.
#[derive(Debug, Clone, Copy, Default)]
pub struct ToolActor;

/// What each incarnation starts from.
pub struct ToolActorArgs {
    /// The tool it runs.
    pub tool: Arc<dyn Tool>,
    /// Where it publishes itself.
    pub address: Address<ToolMsg>,
}

/// The running actor's state.
pub struct ToolActorState {
    tool: Arc<dyn Tool>,
    /// Dropping the set aborts every call still running, which is what a
    /// kill should do to them.
    calls: JoinSet<()>,
}

impl Actor for ToolActor {
    type Msg = ToolMsg;
    type State = ToolActorState;
    type Arguments = ToolActorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.address.publish(myself);
        Ok(ToolActorState {
            tool: args.tool,
            calls: JoinSet::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ToolMsg::Call {
                args,
                ctx,
                taken,
                reply,
            } => {
                taken.mark();
                // Reap finished calls so the set does not grow with history.
                while state.calls.try_join_next().is_some() {}
                let tool = Arc::clone(&state.tool);
                state.calls.spawn(async move {
                    // The caller's future ends at the reply port; this task
                    // does not. Without the cancel signal an abandoned call
                    // (an `exec` the dispatcher gave up on) would run on
                    // here, unseen, to its own timeout.
                    if let Some(outcome) = run_until_cancelled(&*tool, args, &ctx).await {
                        // The caller may have timed out and gone; that is
                        // its business.
                        let _ = reply.send(outcome);
                    }
                });
            }
        }
        Ok(())
    }
}

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
        let name = &self.spec.name;
        let mut actor = self.address.live(self.ready_wait).await;
        // A message the actor never took (it died first, dropping its
        // mailbox) ran nothing, so it is sent again to the replacement; a
        // few times at most, since each try waits for a new incarnation.
        for _ in 0..3 {
            let Some(current) = actor.take() else {
                return not_running(name, self.ready_wait);
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let taken = Taken::new();
            let message = ToolMsg::Call {
                args: args.clone(),
                ctx: Box::new(ctx.clone()),
                taken: taken.clone(),
                reply: tx.into(),
            };
            if current.send_message(message).is_ok()
                && let Ok(outcome) = rx.await
            {
                return outcome;
            }
            if taken.is_taken() {
                // The actor took the call and died before answering: the
                // tool may have run.
                return ToolOutcome::from_code(
                    ErrorCode::Interrupted,
                    format!("the `{name}` tool actor stopped while the call was running"),
                )
                .for_idempotency(self.spec.idempotent)
                .with_data(json!({ "tool": name }));
            }
            actor = self
                .address
                .live_other_than(&current, self.ready_wait)
                .await;
        }
        not_running(name, self.ready_wait)
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
            ToolActor,
            ToolActorArgs {
                tool: Arc::clone(&tool),
                address: address.clone(),
            },
        )
    });
    (spec, handle)
}
