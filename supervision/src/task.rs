//! An actor that runs each request as a task it owns.
//!
//! An actor that awaits a slow request inside its handler holds up every
//! request behind it, and a request started with a bare `tokio::spawn`
//! outlives the actor that a supervisor just killed for being wedged.
//! [`TaskActor`] is the skeleton between the two: its handler only marks
//! the request [`Taken`] and spawns the work into a `JoinSet` kept in the
//! actor's state, so requests run side by side, and when the actor dies
//! (even by `kill`, which skips `post_stop`) dropping the state aborts
//! every request it started. Each incarnation publishes itself in its
//! [`Address`]; callers reach it through a
//! [`SupervisedCall`](crate::SupervisedCall). What differs between such
//! actors is only the [`Work`]: what one request is, and how it is run.

use std::future::Future;
use std::marker::PhantomData;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinSet;

use crate::{Address, Taken};

/// What a [`TaskActor`] does with one request. Cloned for each request
/// (keep it a handle, such as an `Arc`).
pub trait Work: Clone + Send + Sync + 'static {
    /// One request.
    type Request: Send + 'static;
    /// Its answer.
    type Reply: Send + 'static;

    /// Runs `request` as a task of the actor; `None` drops it unanswered
    /// (the caller sees a closed reply port).
    fn run(self, request: Self::Request) -> impl Future<Output = Option<Self::Reply>> + Send;
}

/// A task actor's message: one request.
pub struct Task<W: Work> {
    /// The request.
    pub request: W::Request,
    /// Raised when the actor starts the request.
    pub taken: Taken,
    /// Where the answer goes.
    pub reply: RpcReplyPort<W::Reply>,
}

impl<W: Work> std::fmt::Debug for Task<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("taken", &self.taken)
            .finish_non_exhaustive()
    }
}

/// The actor behaviour, for work of type `W`.
pub struct TaskActor<W>(PhantomData<fn() -> W>);

impl<W> TaskActor<W> {
    /// The behaviour (it holds nothing).
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<W> Default for TaskActor<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> std::fmt::Debug for TaskActor<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskActor")
    }
}

/// What each incarnation starts from.
pub struct TaskArgs<W: Work> {
    /// The work it runs.
    pub work: W,
    /// Where it publishes itself.
    pub address: Address<Task<W>>,
}

/// The running actor's state: the work and the requests in flight.
pub struct TaskState<W> {
    work: W,
    /// Dropping the set aborts every request still running, which is what
    /// a kill should do to them.
    running: JoinSet<()>,
}

impl<W: Work> Actor for TaskActor<W> {
    type Msg = Task<W>;
    type State = TaskState<W>;
    type Arguments = TaskArgs<W>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.address.publish(myself);
        Ok(TaskState {
            work: args.work,
            running: JoinSet::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Task {
            request,
            taken,
            reply,
        } = message;
        taken.mark();
        // Reap finished requests so the set does not grow with history.
        while state.running.try_join_next().is_some() {}
        let work = state.work.clone();
        state.running.spawn(async move {
            if let Some(answer) = work.run(request).await {
                // The caller may have timed out and gone; that is its
                // business.
                let _ = reply.send(answer);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    use std::time::Duration;

    use crate::{CallPolicy, SupervisedCall};

    /// Answers `n * 2`, or for `n == 0` reports its start and runs until
    /// aborted (reporting its end on drop).
    #[derive(Clone)]
    struct Double {
        started: tokio::sync::mpsc::UnboundedSender<()>,
        ended: tokio::sync::mpsc::UnboundedSender<()>,
    }

    struct OnDrop(tokio::sync::mpsc::UnboundedSender<()>);

    impl Drop for OnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }

    impl Work for Double {
        type Request = u32;
        type Reply = u32;

        async fn run(self, request: u32) -> Option<u32> {
            if request == 0 {
                let _guard = OnDrop(self.ended);
                let _ = self.started.send(());
                std::future::pending::<()>().await;
            }
            Some(request * 2)
        }
    }

    #[tokio::test]
    async fn requests_run_side_by_side_and_a_kill_aborts_them() {
        let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let address = Address::new();
        let args = TaskArgs {
            work: Double {
                started: started_tx,
                ended: ended_tx,
            },
            address: address.clone(),
        };
        let (actor, handle) = Actor::spawn(None, TaskActor::new(), args).await.unwrap();
        let policy = CallPolicy::new(Duration::from_secs(5));
        let stuck = {
            let address = address.clone();
            tokio::spawn(async move {
                SupervisedCall::new(&address, policy)
                    .send(|taken, reply| Task {
                        request: 0,
                        taken,
                        reply,
                    })
                    .await
            })
        };
        started.recv().await.unwrap();
        // A request behind the stuck one is answered all the same.
        let answer = SupervisedCall::new(&address, policy)
            .send(|taken, reply| Task {
                request: 21,
                taken,
                reply,
            })
            .await;
        assert_eq!(answer, Ok(42));
        actor.kill();
        handle.await.unwrap();
        // Bounded, so that a request left running fails the test instead
        // of hanging it.
        let aborted = tokio::time::timeout(Duration::from_secs(10), ended.recv()).await;
        assert_eq!(aborted, Ok(Some(())));
        assert_eq!(
            stuck.await.unwrap(),
            Err(crate::CallError::Interrupted { sends: 1 })
        );
    }
}
