//! One call to a supervised actor, across its restarts.
//!
//! A message sent to an actor that is killed before it reads it is dropped
//! unread, and its caller sees the same closed reply port as for a call
//! that died half-way. Only the first is safe to send again; telling them
//! apart needs a flag the actor raises when it takes the message
//! ([`Taken`]). Every handle of a supervised actor needs the same loop
//! around that flag: find the current incarnation ([`Address`]), send, wait
//! for the reply (bounded or not), re-send to the next incarnation when the
//! message was not taken. [`SupervisedCall`] is that loop, once, with its
//! bounds in an explicit [`CallPolicy`]; each caller maps the typed
//! [`CallError`] to its own outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ractor::{Message, RpcReplyPort};

use crate::Address;

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

/// The bounds of one supervised call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallPolicy {
    /// How many incarnations the message is offered to, at least one: each
    /// send after the first waits for a new incarnation.
    pub max_sends: usize,
    /// Whether a message the actor took, and died before answering, is
    /// sent again (only for requests that are safe to repeat).
    pub resend_taken: bool,
    /// How long each send waits for an incarnation that can take messages.
    pub ready_wait: Duration,
    /// How long each send waits for the reply once delivered; `None`: as
    /// long as the actor lives (the work bounds itself).
    pub reply_deadline: Option<Duration>,
}

/// What a call does after a send came back unanswered because the
/// incarnation it went to stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterLost {
    /// Send it to the next incarnation.
    Resend,
    /// Give up: the actor took it and may have acted on it.
    Interrupted,
    /// Give up: no incarnation ever took it.
    NotRunning,
}

impl CallPolicy {
    /// Three sends, no re-send of a taken message, no reply deadline.
    pub const fn new(ready_wait: Duration) -> Self {
        Self {
            max_sends: 3,
            resend_taken: false,
            ready_wait,
            reply_deadline: None,
        }
    }

    /// With `max_sends` sends at most.
    #[must_use]
    pub const fn max_sends(mut self, max_sends: usize) -> Self {
        self.max_sends = max_sends;
        self
    }

    /// With taken messages re-sent too (or not).
    #[must_use]
    pub const fn resend_taken(mut self, resend_taken: bool) -> Self {
        self.resend_taken = resend_taken;
        self
    }

    /// With this reply deadline per send.
    #[must_use]
    pub const fn reply_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.reply_deadline = deadline;
        self
    }

    /// The decision after send number `sends` (1-based) was lost:
    /// `taken_now` whether that send was taken, `taken_ever` whether any
    /// send so far was.
    pub fn after_lost(&self, sends: usize, taken_ever: bool, taken_now: bool) -> AfterLost {
        if taken_now && !self.resend_taken {
            AfterLost::Interrupted
        } else if sends < self.max_sends {
            AfterLost::Resend
        } else {
            self.gave_up(taken_ever)
        }
    }

    /// How a call ends that runs out of incarnations.
    fn gave_up(&self, taken_ever: bool) -> AfterLost {
        if taken_ever {
            AfterLost::Interrupted
        } else {
            AfterLost::NotRunning
        }
    }
}

/// Why a supervised call got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No incarnation took the message: none could take messages within
    /// the ready wait, or each one it was sent to stopped first. Nothing
    /// ran.
    #[error("the actor is not running (waited {} ms for an incarnation, sent {sends} times)", waited.as_millis())]
    NotRunning {
        /// The ready wait of each try.
        waited: Duration,
        /// How many incarnations the message was sent to (0: none
        /// appeared).
        sends: usize,
    },
    /// An incarnation took the message and stopped before answering (and
    /// the policy did not re-send it, or re-sent it as often as allowed):
    /// the work may have run.
    #[error("the actor stopped after taking the message (sent {sends} times)")]
    Interrupted {
        /// How many incarnations the message was sent to.
        sends: usize,
    },
    /// No reply within the deadline; the actor may still be working on it.
    #[error("no reply within {} ms", after.as_millis())]
    Timeout {
        /// The deadline that passed.
        after: Duration,
    },
}

/// One call through an [`Address`] under a [`CallPolicy`]. Built per call
/// (it borrows the address), so it costs nothing to make.
#[derive(Debug)]
pub struct SupervisedCall<'a, M: Message> {
    address: &'a Address<M>,
    policy: CallPolicy,
}

impl<'a, M: Message> SupervisedCall<'a, M> {
    /// A call to whichever incarnation of `address` is current.
    pub fn new(address: &'a Address<M>, policy: CallPolicy) -> Self {
        Self { address, policy }
    }

    /// Sends the message `make` builds (it is called once per send, with
    /// that send's flag and reply port) and waits for the reply.
    ///
    /// # Errors
    /// [`CallError`]: not running, interrupted, or timed out.
    ///
    /// # Cancel safety
    /// Dropping the future stops waiting; a message already sent stays with
    /// the actor, whose reply then goes nowhere.
    pub async fn send<R, F>(self, mut make: F) -> Result<R, CallError>
    where
        R: Send + 'static,
        F: FnMut(Taken, RpcReplyPort<R>) -> M,
    {
        let policy = self.policy;
        let not_running = |sends| CallError::NotRunning {
            waited: policy.ready_wait,
            sends,
        };
        let Some(mut current) = self.address.live(policy.ready_wait).await else {
            return Err(not_running(0));
        };
        let mut sends = 0;
        let mut taken_ever = false;
        loop {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let taken = Taken::new();
            sends += 1;
            if current.send_message(make(taken.clone(), tx.into())).is_ok() {
                let answer = match policy.reply_deadline {
                    None => rx.await,
                    Some(limit) => tokio::time::timeout(limit, rx)
                        .await
                        .map_err(|_| CallError::Timeout { after: limit })?,
                };
                if let Ok(answer) = answer {
                    return Ok(answer);
                }
            }
            let taken_now = taken.is_taken();
            taken_ever |= taken_now;
            let next = match policy.after_lost(sends, taken_ever, taken_now) {
                AfterLost::Resend => {
                    self.address
                        .live_other_than(&current, policy.ready_wait)
                        .await
                }
                AfterLost::Interrupted => return Err(CallError::Interrupted { sends }),
                AfterLost::NotRunning => return Err(not_running(sends)),
            };
            current = match next {
                Some(actor) => actor,
                None => {
                    return Err(match policy.gave_up(taken_ever) {
                        AfterLost::Interrupted => CallError::Interrupted { sends },
                        _ => not_running(sends),
                    });
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus};
    use tokio::sync::{mpsc, oneshot};

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn policy_resends_only_what_it_may() {
        let policy = CallPolicy::new(WAIT);
        assert_eq!(policy.after_lost(1, false, false), AfterLost::Resend);
        assert_eq!(policy.after_lost(2, false, false), AfterLost::Resend);
        assert_eq!(policy.after_lost(3, false, false), AfterLost::NotRunning);
        assert_eq!(policy.after_lost(1, true, true), AfterLost::Interrupted);
        let repeatable = policy.resend_taken(true).max_sends(2);
        assert_eq!(repeatable.after_lost(1, true, true), AfterLost::Resend);
        assert_eq!(
            repeatable.after_lost(2, true, false),
            AfterLost::Interrupted
        );
        assert_eq!(
            repeatable.after_lost(2, false, false),
            AfterLost::NotRunning
        );
        assert_eq!(
            policy.max_sends(0).after_lost(1, false, false),
            AfterLost::NotRunning
        );
    }

    /// What the test actor does with a message it takes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Mode {
        /// Answers with the incarnation's number.
        Answer,
        /// Keeps the reply port, never answering.
        Hold,
        /// Stops, dropping the port.
        TakeAndDie,
        /// Blocks its handler until killed, so later messages stay in
        /// the mailbox unread.
        Block,
    }

    struct Ask {
        taken: Taken,
        reply: RpcReplyPort<u32>,
    }

    /// Marks each message taken, reports its number on `seen`, and then
    /// does what its mode says.
    struct Probe;

    struct ProbeState {
        number: u32,
        mode: Mode,
        seen: mpsc::UnboundedSender<u32>,
        held: Vec<RpcReplyPort<u32>>,
    }

    impl Actor for Probe {
        type Msg = Ask;
        type State = ProbeState;
        type Arguments = (Address<Ask>, ProbeState);

        async fn pre_start(
            &self,
            myself: ActorRef<Ask>,
            (address, state): Self::Arguments,
        ) -> Result<ProbeState, ActorProcessingErr> {
            address.publish(myself);
            Ok(state)
        }

        async fn handle(
            &self,
            myself: ActorRef<Ask>,
            message: Ask,
            state: &mut ProbeState,
        ) -> Result<(), ActorProcessingErr> {
            message.taken.mark();
            let _ = state.seen.send(state.number);
            match state.mode {
                Mode::Answer => {
                    let _ = message.reply.send(state.number);
                }
                Mode::Hold => state.held.push(message.reply),
                Mode::TakeAndDie => myself.stop(None),
                // Blocking is the point: it keeps the mailbox unread.
                Mode::Block => std::future::pending::<()>().await,
            }
            Ok(())
        }
    }

    struct Rig {
        address: Address<Ask>,
        seen_tx: mpsc::UnboundedSender<u32>,
        seen: mpsc::UnboundedReceiver<u32>,
    }

    impl Rig {
        fn new() -> Self {
            let (seen_tx, seen) = mpsc::unbounded_channel();
            Self {
                address: Address::new(),
                seen_tx,
                seen,
            }
        }

        async fn start(&self, number: u32, mode: Mode) -> ActorRef<Ask> {
            let state = ProbeState {
                number,
                mode,
                seen: self.seen_tx.clone(),
                held: Vec::new(),
            };
            Actor::spawn(None, Probe, (self.address.clone(), state))
                .await
                .unwrap()
                .0
        }

        /// Starts a call; `made` hears of each message it builds (the
        /// send follows before the call task next yields).
        fn call(
            &self,
            policy: CallPolicy,
        ) -> (
            tokio::task::JoinHandle<Result<u32, CallError>>,
            mpsc::UnboundedReceiver<()>,
        ) {
            let address = self.address.clone();
            let (made_tx, made) = mpsc::unbounded_channel();
            let call = tokio::spawn(async move {
                SupervisedCall::new(&address, policy)
                    .send(|taken, reply| {
                        let _ = made_tx.send(());
                        Ask { taken, reply }
                    })
                    .await
            });
            (call, made)
        }

        /// No incarnation handles anything more.
        fn nothing_more_seen(mut self) {
            assert_eq!(self.seen.try_recv().ok(), None);
        }
    }

    async fn dead(actor: &ActorRef<Ask>) {
        while !matches!(
            actor.get_status(),
            ActorStatus::Stopping | ActorStatus::Stopped
        ) {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_message_dropped_unread_goes_to_the_replacement() {
        let mut rig = Rig::new();
        let first = rig.start(1, Mode::Block).await;
        let (tx, _blocked) = oneshot::channel();
        first
            .send_message(Ask {
                taken: Taken::new(),
                reply: tx.into(),
            })
            .unwrap();
        assert_eq!(rig.seen.recv().await, Some(1));
        let (call, mut made) = rig.call(CallPolicy::new(WAIT));
        made.recv().await.unwrap();
        // The call's message is in the blocked actor's mailbox, unread.
        first.kill();
        dead(&first).await;
        rig.start(2, Mode::Answer).await;
        assert_eq!(call.await.unwrap(), Ok(2));
        assert_eq!(rig.seen.recv().await, Some(2));
        rig.nothing_more_seen();
    }

    #[tokio::test]
    async fn a_taken_message_whose_actor_died_is_interrupted_not_resent() {
        let mut rig = Rig::new();
        rig.start(1, Mode::TakeAndDie).await;
        let (call, _made) = rig.call(CallPolicy::new(WAIT));
        assert_eq!(rig.seen.recv().await, Some(1));
        // A replacement is there, yet the call must not go to it.
        rig.start(2, Mode::Answer).await;
        assert_eq!(
            call.await.unwrap(),
            Err(CallError::Interrupted { sends: 1 })
        );
        rig.nothing_more_seen();
    }

    #[tokio::test]
    async fn a_repeatable_taken_message_is_resent() {
        let mut rig = Rig::new();
        rig.start(1, Mode::TakeAndDie).await;
        let (call, _made) = rig.call(CallPolicy::new(WAIT).resend_taken(true));
        assert_eq!(rig.seen.recv().await, Some(1));
        rig.start(2, Mode::Answer).await;
        assert_eq!(call.await.unwrap(), Ok(2));
    }

    #[tokio::test(start_paused = true)]
    async fn no_reply_within_the_deadline_is_a_timeout() {
        let rig = Rig::new();
        rig.start(1, Mode::Hold).await;
        let deadline = Duration::from_secs(30);
        let (call, _made) = rig.call(CallPolicy::new(WAIT).reply_deadline(Some(deadline)));
        // The clock is paused: an hour passes at once once all is idle, and
        // bounds a call that would wait for ever.
        let ended = tokio::time::timeout(Duration::from_secs(3600), call).await;
        assert_eq!(
            ended.map(Result::unwrap),
            Ok(Err(CallError::Timeout { after: deadline }))
        );
    }

    #[tokio::test]
    async fn sends_stop_at_the_maximum() {
        let mut rig = Rig::new();
        // Every incarnation takes the message and dies; the call may
        // repeat it, but only twice, so the third never sees it.
        rig.start(1, Mode::TakeAndDie).await;
        let policy = CallPolicy::new(WAIT).resend_taken(true).max_sends(2);
        let (call, _made) = rig.call(policy);
        assert_eq!(rig.seen.recv().await, Some(1));
        rig.start(2, Mode::TakeAndDie).await;
        assert_eq!(rig.seen.recv().await, Some(2));
        rig.start(3, Mode::Answer).await;
        assert_eq!(
            call.await.unwrap(),
            Err(CallError::Interrupted { sends: 2 })
        );
        rig.nothing_more_seen();
    }

    #[tokio::test]
    async fn a_call_waits_for_an_incarnation() {
        let rig = Rig::new();
        let (call, _made) = rig.call(CallPolicy::new(WAIT));
        tokio::task::yield_now().await;
        assert!(!call.is_finished());
        rig.start(7, Mode::Answer).await;
        assert_eq!(call.await.unwrap(), Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_with_no_incarnation_is_not_running() {
        let rig = Rig::new();
        let (call, _made) = rig.call(CallPolicy::new(WAIT));
        assert_eq!(
            call.await.unwrap(),
            Err(CallError::NotRunning {
                waited: WAIT,
                sends: 0
            })
        );
    }
}
