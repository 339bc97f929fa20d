//! A typed handle on a running supervisor.
//!
//! Callers keep a `SupervisorRef` and child ids, never a child's `ActorRef`:
//! a restarted child is a new actor, so its current ref is resolved through
//! the supervisor each time it is needed.

use std::time::Duration;

use ractor::concurrency::JoinHandle;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorRef, Message, RpcReplyPort};

use crate::error::SupervisorError;
use crate::spec::{ChildId, ChildSpec, SupervisorSpec};
use crate::supervisor::{ChildInfo, Supervisor, SupervisorMsg, SupervisorStats};

/// How long a query or command waits for the supervisor by default.
///
/// Commands that start or stop children wait for those children, so this is
/// generous; queries answer in microseconds unless the supervisor is busy.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A handle on a supervisor actor.
#[derive(Debug, Clone)]
pub struct SupervisorRef {
    actor: ActorRef<SupervisorMsg>,
    timeout: Duration,
}

impl SupervisorRef {
    /// Validates `spec` and spawns an unlinked (root) supervisor with its children started.
    ///
    /// # Errors
    /// [`SupervisorError::InvalidSpec`] for a bad spec, [`SupervisorError::Spawn`]
    /// when a child failed to start (those already started are stopped again).
    pub async fn start(spec: SupervisorSpec) -> Result<(Self, JoinHandle<()>), SupervisorError> {
        spec.validate()?;
        let (actor, handle) = Supervisor::spawn(None, Supervisor, spec)
            .await
            .map_err(|e| SupervisorError::Spawn(e.to_string()))?;
        Ok((Self::from(actor), handle))
    }

    /// Uses `timeout` instead of [`DEFAULT_CALL_TIMEOUT`] for this handle's calls.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The supervisor's own actor.
    pub fn actor(&self) -> &ActorRef<SupervisorMsg> {
        &self.actor
    }

    /// The supervisor's cell (to kill it, link to it, or wait for it).
    pub fn cell(&self) -> ActorCell {
        self.actor.get_cell()
    }

    /// Every child in start order, with its current actor, state and restart count.
    ///
    /// # Errors
    /// [`SupervisorError::Unavailable`] or [`SupervisorError::Timeout`].
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future abandons the answer only.
    pub async fn which_children(&self) -> Result<Vec<ChildInfo>, SupervisorError> {
        self.call(SupervisorMsg::WhichChildren).await
    }

    /// The current actor of a running child; `None` when it is down or unknown.
    ///
    /// # Errors
    /// [`SupervisorError::Unavailable`] or [`SupervisorError::Timeout`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn resolve(&self, id: &ChildId) -> Result<Option<ActorCell>, SupervisorError> {
        let id = id.clone();
        self.call(move |reply| SupervisorMsg::Resolve(id, reply))
            .await
    }

    /// The current typed ref of a running child whose messages are `M`.
    ///
    /// # Errors
    /// As [`SupervisorRef::resolve`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn resolve_ref<M: Message>(
        &self,
        id: &ChildId,
    ) -> Result<Option<ActorRef<M>>, SupervisorError> {
        Ok(self
            .resolve(id)
            .await?
            .filter(|cell| cell.is_message_type_of::<M>() != Some(false))
            .map(ActorRef::from))
    }

    /// Adds a child and starts it.
    ///
    /// # Errors
    /// [`SupervisorError::DuplicateChild`], [`SupervisorError::InvalidSpec`],
    /// [`SupervisorError::StartFailed`] (the child is then not kept), or a
    /// transport error.
    ///
    /// # Cancel safety
    /// Not cancel safe: the child may be started even if the future is dropped.
    pub async fn start_child(&self, spec: ChildSpec) -> Result<ActorCell, SupervisorError> {
        let spec = Box::new(spec);
        self.call(move |reply| SupervisorMsg::StartChild(spec, reply))
            .await?
    }

    /// Shuts a child down per its shutdown spec and keeps its spec (a
    /// temporary child is forgotten). It stays down until restarted.
    ///
    /// # Errors
    /// [`SupervisorError::UnknownChild`] or a transport error.
    ///
    /// # Cancel safety
    /// Not cancel safe: the child may be stopped even if the future is dropped.
    pub async fn terminate_child(&self, id: &ChildId) -> Result<(), SupervisorError> {
        let id = id.clone();
        self.call(move |reply| SupervisorMsg::TerminateChild(id, reply))
            .await?
    }

    /// Starts a child again, shutting it down first if it runs, and clears
    /// its backoff and park history. (OTP refuses a running child; an
    /// operator's "restart" means stop-then-start.)
    ///
    /// # Errors
    /// [`SupervisorError::UnknownChild`], [`SupervisorError::StartFailed`], or a transport error.
    ///
    /// # Cancel safety
    /// Not cancel safe.
    pub async fn restart_child(&self, id: &ChildId) -> Result<ActorCell, SupervisorError> {
        let id = id.clone();
        self.call(move |reply| SupervisorMsg::RestartChild(id, reply))
            .await?
    }

    /// Shuts a child down and forgets its spec.
    ///
    /// # Errors
    /// [`SupervisorError::UnknownChild`] or a transport error.
    ///
    /// # Cancel safety
    /// Not cancel safe.
    pub async fn delete_child(&self, id: &ChildId) -> Result<(), SupervisorError> {
        let id = id.clone();
        self.call(move |reply| SupervisorMsg::DeleteChild(id, reply))
            .await?
    }

    /// The supervisor's counters.
    ///
    /// # Errors
    /// [`SupervisorError::Unavailable`] or [`SupervisorError::Timeout`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn stats(&self) -> Result<SupervisorStats, SupervisorError> {
        self.call(SupervisorMsg::Stats).await
    }

    /// Stops the supervisor gracefully: its children stop in reverse start
    /// order first. Waits at most `timeout`.
    ///
    /// # Errors
    /// [`SupervisorError::Timeout`] when it has not stopped in time.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), SupervisorError> {
        match self
            .actor
            .stop_and_wait(
                Some(crate::reason::SHUTDOWN_REASON.to_owned()),
                Some(timeout),
            )
            .await
        {
            Err(ractor::RactorErr::Timeout) => Err(SupervisorError::Timeout(timeout)),
            _ => Ok(()),
        }
    }

    async fn call<T, F>(&self, build: F) -> Result<T, SupervisorError>
    where
        T: Send + 'static,
        F: FnOnce(RpcReplyPort<T>) -> SupervisorMsg,
    {
        match self.actor.call(build, Some(self.timeout)).await {
            Ok(CallResult::Success(value)) => Ok(value),
            Ok(CallResult::Timeout) => Err(SupervisorError::Timeout(self.timeout)),
            Ok(CallResult::SenderError) | Err(_) => Err(SupervisorError::Unavailable),
        }
    }
}

impl From<ActorRef<SupervisorMsg>> for SupervisorRef {
    fn from(actor: ActorRef<SupervisorMsg>) -> Self {
        Self {
            actor,
            timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

impl From<ActorCell> for SupervisorRef {
    /// Wraps the cell of a supervisor child (as returned by `resolve`).
    fn from(cell: ActorCell) -> Self {
        Self::from(ActorRef::<SupervisorMsg>::from(cell))
    }
}
