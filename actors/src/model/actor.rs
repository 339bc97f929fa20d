//! One model endpoint as a supervised actor.
//!
//! The actor owns the endpoint's client; each request runs as a task in a
//! `JoinSet` in the actor's state, so the handler never waits on the
//! network (a slow completion does not hold up the next one) and a killed
//! actor (`kill` skips `post_stop`) aborts its requests in flight by
//! dropping the set. Callers reach the current incarnation through an
//! [`Address`]; [`Models`](super::Models) does that for them.

use std::sync::Arc;

use hale_supervision::Address;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinSet;

use super::{ModelClient, ModelReply, ModelRequest};
use crate::outcome::ToolOutcome;
use crate::tool_actor::Taken;

/// The model actor's messages.
#[derive(Debug)]
pub enum ModelMsg {
    /// Ask the model for one turn and reply with its answer.
    Complete {
        /// The request, shared with the caller's retries.
        request: Arc<ModelRequest>,
        /// Raised when the actor starts the request.
        taken: Taken,
        /// Where the answer goes.
        reply: RpcReplyPort<Result<ModelReply, ToolOutcome>>,
    },
}

/// The actor behaviour; its state is the client and the requests in
/// flight.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelActor;

/// What each incarnation starts from.
pub struct ModelActorArgs {
    /// The endpoint's client.
    pub client: Arc<dyn ModelClient>,
    /// Where it publishes itself.
    pub address: Address<ModelMsg>,
}

/// The running actor's state.
pub struct ModelActorState {
    client: Arc<dyn ModelClient>,
    /// Dropping the set aborts every request still running.
    calls: JoinSet<()>,
}

impl Actor for ModelActor {
    type Msg = ModelMsg;
    type State = ModelActorState;
    type Arguments = ModelActorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.address.publish(myself);
        Ok(ModelActorState {
            client: args.client,
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
            ModelMsg::Complete {
                request,
                taken,
                reply,
            } => {
                taken.mark();
                while state.calls.try_join_next().is_some() {}
                let client = Arc::clone(&state.client);
                state.calls.spawn(async move {
                    let answer = client.complete(&request).await;
                    // The caller may have given up; that is its business.
                    let _ = reply.send(answer);
                });
            }
        }
        Ok(())
    }
}
