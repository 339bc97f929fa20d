//! Where a supervised actor can be reached *now*.
//!
//! A restarted child is a new actor with a new `ActorRef`; a ref kept from
//! before the restart points at a corpse. Resolving through the supervisor
//! on every call is correct but costs a round trip through its mailbox,
//! and it makes every caller queue behind the supervisor while it is busy
//! restarting something. An [`Address`] is the cheaper rule: it lives
//! outside the actor (whoever builds the child spec creates it once and
//! hands a clone to every incarnation), each incarnation publishes itself
//! in `pre_start`, and callers read the latest ref without a message. A
//! caller that finds a dead ref waits, bounded, for the next incarnation
//! to publish, which is exactly "calls that arrive while it restarts wait
//! up to their timeout".

use std::time::Duration;

use ractor::{ActorRef, ActorStatus, Message};
use tokio::sync::watch;

/// The current incarnation of one supervised actor. Clones share it.
#[derive(Debug)]
pub struct Address<M: Message> {
    current: watch::Sender<Option<ActorRef<M>>>,
}

impl<M: Message> Clone for Address<M> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
        }
    }
}

impl<M: Message> Default for Address<M> {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether an actor with this status can still take messages.
fn accepts_messages(status: ActorStatus) -> bool {
    matches!(
        status,
        ActorStatus::Unstarted
            | ActorStatus::Starting
            | ActorStatus::Running
            | ActorStatus::Upgrading
            | ActorStatus::Draining
    )
}

impl<M: Message> Address<M> {
    /// An address with nobody behind it yet.
    pub fn new() -> Self {
        Self {
            current: watch::Sender::new(None),
        }
    }

    /// Makes `actor` the one callers reach. Call it from the actor's
    /// `pre_start`, so that a replacement is reachable before it runs
    /// (messages queue until it does).
    pub fn publish(&self, actor: ActorRef<M>) {
        self.current.send_replace(Some(actor));
    }

    /// Forgets `actor` if it is still the published one, so callers wait
    /// for a replacement instead of trying a ref known to be stopping.
    pub fn withdraw(&self, actor: &ActorRef<M>) {
        self.current.send_if_modified(|current| match current {
            Some(published) if published.get_id() == actor.get_id() => {
                *current = None;
                true
            }
            _ => false,
        });
    }

    /// The published actor if it can still take messages.
    pub fn current(&self) -> Option<ActorRef<M>> {
        self.current
            .borrow()
            .as_ref()
            .filter(|actor| accepts_messages(actor.get_status()))
            .cloned()
    }

    /// The published actor, waiting up to `wait` for one that can take
    /// messages; `None` when none appeared in time.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn live(&self, wait: Duration) -> Option<ActorRef<M>> {
        if let Some(actor) = self.current() {
            return Some(actor);
        }
        let mut changes = self.current.subscribe();
        let found = tokio::time::timeout(wait, async {
            loop {
                if let Some(actor) = changes
                    .borrow_and_update()
                    .as_ref()
                    .filter(|actor| accepts_messages(actor.get_status()))
                {
                    return Some(actor.clone());
                }
                // The sender lives in `self`, so this only fails if every
                // handle was dropped, which `&self` rules out.
                if changes.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        found.ok().flatten()
    }

    /// Like [`live`](Self::live), but skips `dead`: the ref a caller just
    /// found unable to answer, which may still be published because its
    /// supervisor has not replaced it yet.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn live_other_than(&self, dead: &ActorRef<M>, wait: Duration) -> Option<ActorRef<M>> {
        let dead_id = dead.get_id();
        let mut changes = self.current.subscribe();
        let found = tokio::time::timeout(wait, async {
            loop {
                if let Some(actor) = changes.borrow_and_update().as_ref().filter(|actor| {
                    actor.get_id() != dead_id && accepts_messages(actor.get_status())
                }) {
                    return Some(actor.clone());
                }
                if changes.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        found.ok().flatten()
    }
}
