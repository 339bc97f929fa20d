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
use std::time::Duration;

use hale_supervision::{Address, ChildSpec};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::catalog::ErrorCode;
use crate::outcome::ToolOutcome;
use crate::tool::{BoxFuture, Tool, ToolSpec, call_guarded};

/// How long a call waits for a restarting tool actor before it is
/// answered `SERVICE_UNAVAILABLE` (undelivered, so recovery may retry).
pub const DEFAULT_READY_WAIT: Duration = Duration::from_secs(5);

/// The tool actor's messages.
#[derive(Debug)]
pub enum ToolMsg {
    /// Run the tool with these arguments and reply with the outcome.
    Call {
        /// The JSON arguments object.
        args: Value,
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
            ToolMsg::Call { args, reply } => {
                // Reap finished calls so the set does not grow with history.
                while state.calls.try_join_next().is_some() {}
                let tool = Arc::clone(&state.tool);
                state.calls.spawn(async move {
                    let outcome = call_guarded(&*tool, args).await;
                    // The caller may have timed out and gone; that is its
                    // business.
                    let _ = reply.send(outcome);
                });
            }
        }
        Ok(())
    }
}

/// A [`Tool`] that forwards calls to the current incarnation of a tool
/// actor.
#[derive(Clone)]
pub struct ToolHandle {
    spec: ToolSpec,
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

    async fn forward(&self, args: Value) -> ToolOutcome {
        let name = &self.spec.name;
        let mut actor = self.address.live(self.ready_wait).await;
        // One more try when the first actor died before taking the message:
        // nothing ran, so sending it to the replacement is safe.
        for _ in 0..2 {
            let Some(current) = actor.take() else {
                return not_running(name, self.ready_wait);
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let message = ToolMsg::Call {
                args: args.clone(),
                reply: tx.into(),
            };
            if current.send_message(message).is_err() {
                actor = self
                    .address
                    .live_other_than(&current, self.ready_wait)
                    .await;
                continue;
            }
            return match rx.await {
                Ok(outcome) => outcome,
                // The actor took the call and died before answering: the
                // tool may have run, so this is not "undelivered".
                Err(_) => ToolOutcome::from_code(
                    ErrorCode::Interrupted,
                    format!("the `{name}` tool actor stopped while the call was running"),
                )
                .for_idempotency(self.spec.idempotent)
                .with_data(json!({ "tool": name })),
            };
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

    fn call(&self, args: Value) -> BoxFuture<'_, ToolOutcome> {
        Box::pin(self.forward(args))
    }
}

/// The child spec that runs `tool` as a permanent worker under id `id`,
/// and the handle that reaches whichever incarnation is current.
pub fn tool_child(id: &str, tool: Arc<dyn Tool>) -> (ChildSpec, ToolHandle) {
    let address = Address::new();
    let handle = ToolHandle {
        spec: tool.spec().clone(),
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
