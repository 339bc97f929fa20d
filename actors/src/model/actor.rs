//! One model endpoint as a supervised actor.
//!
//! The actor owns the endpoint's client and is the supervision crate's
//! [`TaskActor`] running [`ModelWork`]: each request is a task the actor
//! owns, so a slow completion does not hold up the next one and a killed
//! actor (`kill` skips `post_stop`) aborts its requests in flight. Callers
//! reach the current incarnation through an
//! [`Address`](hale_supervision::Address); [`Models`](super::Models) does
//! that for them.

use std::sync::Arc;

use hale_supervision::{Task, TaskActor, TaskArgs, Work};

use super::{ModelClient, ModelReply, ModelRequest};
use crate::outcome::ToolOutcome;

/// What a model actor runs: the endpoint's client, one request per task.
#[derive(Clone)]
pub struct ModelWork(pub Arc<dyn ModelClient>);

impl Work for ModelWork {
    /// The request, shared with the caller's retries.
    type Request = Arc<ModelRequest>;
    type Reply = Result<ModelReply, ToolOutcome>;

    async fn run(self, request: Arc<ModelRequest>) -> Option<Self::Reply> {
        Some(self.0.complete(&request).await)
    }
}

/// The model actor's messages: one request for one turn each.
pub type ModelMsg = Task<ModelWork>;

/// The actor behaviour; its state is the client and the requests in
/// flight.
pub type ModelActor = TaskActor<ModelWork>;

/// What each incarnation starts from.
pub type ModelActorArgs = TaskArgs<ModelWork>;
