//! The escalation actor and its handle.
//!
//! The actor keeps every approval in memory and in the store. Nothing is
//! acknowledged before the store has it: an opened approval is inserted in
//! memory only once saved, a resolution is announced (to the resolver, the
//! waiters and the subscribers) only once saved. Store writes run as tasks
//! and report back as messages, so the mailbox keeps moving while the disk
//! works; deadlines are `send_after` timers re-armed from the store after
//! every (re)start.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use hale_supervision::{Address, CallError, CallPolicy, ChildSpec, SupervisedCall, Taken};
use jiff::Timestamp;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::json;
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use crate::escalation::{
    Answer, Approval, ApprovalRequest, ApprovalStore, ApprovalStoreError, EscalationError, Gate,
    Origin, Resolution, ResolveEffect, decide_resolution, timeout_resolution, validate_request,
};
use crate::event::{Event, EventKind, EventSink, Level};

/// How long a handle waits for a restarting escalation actor.
const READY_WAIT: Duration = Duration::from_secs(5);
/// How soon a deadline whose timeout could not be stored is tried again.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Notices a subscriber may fall behind by. A subscriber that does not
/// read (a stalled `/v1/events` client) costs at most this many; beyond
/// it, it is told how many it missed instead of holding them.
pub const NOTICE_BUFFER: usize = 256;

/// What subscribers (the control plane) are told.
#[derive(Debug, Clone, PartialEq)]
pub enum ApprovalNotice {
    /// A new approval is waiting for a human.
    Opened(Approval),
    /// An approval was decided (by a human or its deadline).
    Resolved(Approval),
}

type Reply<T> = RpcReplyPort<Result<T, EscalationError>>;

/// The escalation actor's messages.
pub enum EscalationMsg {
    /// Open an approval; answered once it is stored.
    Open {
        /// What to ask.
        request: Box<ApprovalRequest>,
        /// Who opens it; set by the [`Escalation`] method, not the caller.
        origin: Origin,
        /// The call a runtime approval is bound to.
        gate: Option<Box<Gate>>,
        /// For an agent's question: how many open questions its session
        /// may have, this one included.
        limit: Option<usize>,
        /// Raised when the actor takes the message.
        taken: Taken,
        /// The stored approval.
        reply: Reply<Approval>,
    },
    /// Resolve an approval; answered once the resolution is stored.
    Resolve {
        /// The approval.
        id: String,
        /// The answer.
        answer: Answer,
        /// Who answers.
        by: String,
        /// The resolution.
        reply: Reply<Resolution>,
    },
    /// Answered when the approval is resolved (at once if it is).
    Wait {
        /// The approval.
        id: String,
        /// Its resolution.
        reply: Reply<Resolution>,
    },
    /// One approval.
    Get {
        /// The approval.
        id: String,
        /// It, or `UnknownApproval`.
        reply: Reply<Approval>,
    },
    /// Every approval (or only the open ones), oldest first.
    List {
        /// Only the open ones.
        open_only: bool,
        /// The list.
        reply: RpcReplyPort<Vec<Approval>>,
    },
    /// Retention: forget the approvals decided before `before`, here and
    /// in the store; answered with how many the actor dropped once the
    /// store's deletion is done.
    Prune {
        /// The oldest decision kept.
        before: Timestamp,
        /// How many were dropped, or why the store failed.
        reply: RpcReplyPort<Result<usize, ApprovalStoreError>>,
    },
    /// The store's contents at start (internal).
    Loaded(Result<Vec<Approval>, ApprovalStoreError>),
    /// A save finished (internal).
    Saved {
        /// What was saved.
        approval: Box<Approval>,
        /// How it went.
        result: Result<(), ApprovalStoreError>,
    },
    /// An approval's deadline may have passed (internal).
    Deadline {
        /// The approval.
        id: String,
    },
}

impl std::fmt::Debug for EscalationMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            EscalationMsg::Open { .. } => "Open",
            EscalationMsg::Resolve { .. } => "Resolve",
            EscalationMsg::Wait { .. } => "Wait",
            EscalationMsg::Get { .. } => "Get",
            EscalationMsg::List { .. } => "List",
            EscalationMsg::Prune { .. } => "Prune",
            EscalationMsg::Loaded(_) => "Loaded",
            EscalationMsg::Saved { .. } => "Saved",
            EscalationMsg::Deadline { .. } => "Deadline",
        };
        f.write_str(name)
    }
}

/// Shared by every incarnation and every handle.
pub struct EscalationArgs {
    /// Where approvals are kept.
    pub store: Arc<dyn ApprovalStore>,
    /// Where the actor publishes itself.
    pub address: Address<EscalationMsg>,
    /// The audit trail.
    pub sink: Arc<dyn EventSink>,
    /// Subscribers to opened and resolved approvals: a bounded ring
    /// ([`NOTICE_BUFFER`]); a subscriber that falls behind is told how
    /// many it missed.
    pub subscribers: broadcast::Sender<ApprovalNotice>,
}

impl Clone for EscalationArgs {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            address: self.address.clone(),
            sink: Arc::clone(&self.sink),
            subscribers: self.subscribers.clone(),
        }
    }
}

/// What a pending save will answer when it lands.
enum OnSaved {
    /// An agent's question carries its session, so that questions still
    /// being saved count against the session's limit.
    Opened(Reply<Approval>, Option<String>),
    Resolved(Vec<Reply<Resolution>>),
    TimedOut,
}

/// The running actor's state.
pub struct EscalationState {
    args: EscalationArgs,
    /// `None` until the store has been read; messages wait in `early`.
    approvals: Option<BTreeMap<String, Approval>>,
    early: Vec<EscalationMsg>,
    waiters: HashMap<String, Vec<Reply<Resolution>>>,
    /// Saves in flight, by approval id, with whom to answer.
    saving: HashMap<String, OnSaved>,
    tasks: JoinSet<()>,
}

/// The actor behaviour.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscalationActor;

impl Actor for EscalationActor {
    type Msg = EscalationMsg;
    type State = EscalationState;
    type Arguments = EscalationArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.address.publish(myself.clone());
        let mut tasks = JoinSet::new();
        let store = Arc::clone(&args.store);
        tasks.spawn(async move {
            let loaded = store.load_all().await;
            let _ = myself.send_message(EscalationMsg::Loaded(loaded));
        });
        Ok(EscalationState {
            args,
            approvals: None,
            early: Vec::new(),
            waiters: HashMap::new(),
            saving: HashMap::new(),
            tasks,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        while state.tasks.try_join_next().is_some() {}
        match message {
            EscalationMsg::Loaded(Ok(all)) => {
                let now = Timestamp::now();
                let mut approvals = BTreeMap::new();
                for approval in all {
                    if approval.is_open() {
                        arm_deadline(&myself, &approval, now);
                    }
                    approvals.insert(approval.id.clone(), approval);
                }
                state.approvals = Some(approvals);
                for early in std::mem::take(&mut state.early) {
                    handle_loaded(&myself, early, state);
                }
                Ok(())
            }
            // Without its approvals the actor cannot answer truthfully:
            // fail, and let the supervisor try again.
            EscalationMsg::Loaded(Err(error)) => {
                Err(format!("cannot load approvals: {error}").into())
            }
            message if state.approvals.is_none() => {
                state.early.push(message);
                Ok(())
            }
            message => {
                handle_loaded(&myself, message, state);
                Ok(())
            }
        }
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.args.address.withdraw(&myself);
        Ok(())
    }
}

/// How many questions `session` has open, counting those still being
/// saved, so that a burst of asks cannot slip past the limit.
fn open_questions(
    approvals: &BTreeMap<String, Approval>,
    saving: &HashMap<String, OnSaved>,
    session: &str,
) -> usize {
    let stored = approvals
        .values()
        .filter(|a| {
            a.is_open()
                && a.origin == Origin::Agent
                && a.request.requester.as_deref() == Some(session)
        })
        .count();
    let pending = saving
        .values()
        .filter(|s| matches!(s, OnSaved::Opened(_, Some(asker)) if asker == session))
        .count();
    stored + pending
}

fn arm_deadline(myself: &ActorRef<EscalationMsg>, approval: &Approval, now: Timestamp) {
    let left = approval
        .deadline
        .duration_since(now)
        .unsigned_abs()
        .min(Duration::from_secs(365 * 24 * 3600));
    let left = if approval.deadline <= now {
        Duration::ZERO
    } else {
        left
    };
    let id = approval.id.clone();
    myself.send_after(left, move || EscalationMsg::Deadline { id });
}

fn handle_loaded(
    myself: &ActorRef<EscalationMsg>,
    message: EscalationMsg,
    state: &mut EscalationState,
) {
    let Some(approvals) = state.approvals.as_mut() else {
        return;
    };
    match message {
        EscalationMsg::Open {
            request,
            origin,
            gate,
            limit,
            taken,
            reply,
        } => {
            taken.mark();
            if let Err(error) = validate_request(&request) {
                let _ = reply.send(Err(error));
                return;
            }
            let asker = match origin {
                Origin::Agent => request.requester.clone(),
                Origin::Runtime => None,
            };
            if let (Some(session), Some(limit)) = (&asker, limit) {
                let open = open_questions(approvals, &state.saving, session);
                if open >= limit {
                    let _ = reply.send(Err(EscalationError::TooManyOpen {
                        session: session.clone(),
                        open,
                        limit,
                    }));
                    return;
                }
            }
            let now = Timestamp::now();
            let timeout = jiff::SignedDuration::try_from(request.timeout)
                .unwrap_or(jiff::SignedDuration::MAX);
            let deadline = now.checked_add(timeout).unwrap_or(Timestamp::MAX);
            let approval = Approval {
                id: new_id(now),
                request: *request,
                opened_at: now,
                deadline,
                resolution: None,
                origin,
                gate: gate.map(|g| *g),
            };
            state
                .saving
                .insert(approval.id.clone(), OnSaved::Opened(reply, asker));
            save(myself, state, approval);
        }
        EscalationMsg::Resolve {
            id,
            answer,
            by,
            reply,
        } => {
            let Some(approval) = approvals.get(&id) else {
                let _ = reply.send(Err(EscalationError::UnknownApproval(id)));
                return;
            };
            match decide_resolution(approval, &answer, &by, Timestamp::now()) {
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
                Ok(ResolveEffect::Unchanged(resolution)) => match state.saving.get_mut(&id) {
                    // Not durable yet: answer when it is.
                    Some(OnSaved::Resolved(replies)) => replies.push(reply),
                    _ => {
                        let _ = reply.send(Ok(resolution));
                    }
                },
                Ok(ResolveEffect::Apply(resolution)) => {
                    let mut resolved = approval.clone();
                    resolved.resolution = Some(resolution);
                    // The in-memory copy changes now, so a racing answer
                    // is judged against it; the announcement waits for
                    // the store.
                    approvals.insert(id.clone(), resolved.clone());
                    state.saving.insert(id, OnSaved::Resolved(vec![reply]));
                    save(myself, state, resolved);
                }
            }
        }
        EscalationMsg::Wait { id, reply } => match approvals.get(&id) {
            None => {
                let _ = reply.send(Err(EscalationError::UnknownApproval(id)));
            }
            Some(approval) => match (&approval.resolution, state.saving.contains_key(&id)) {
                (Some(resolution), false) => {
                    let _ = reply.send(Ok(resolution.clone()));
                }
                _ => state.waiters.entry(id).or_default().push(reply),
            },
        },
        EscalationMsg::Prune { before, reply } => {
            // Not one being saved or waited on: those are fresh anyway.
            let old: Vec<String> = approvals
                .values()
                .filter(|a| {
                    a.resolution.as_ref().is_some_and(|r| r.at < before)
                        && !state.saving.contains_key(&a.id)
                        && !state.waiters.contains_key(&a.id)
                })
                .map(|a| a.id.clone())
                .collect();
            for id in &old {
                approvals.remove(id);
            }
            let store = Arc::clone(&state.args.store);
            state.tasks.spawn(async move {
                let n = old.len();
                let result = store.forget(old, before).await.map(|_| n);
                let _ = reply.send(result);
            });
        }
        EscalationMsg::Get { id, reply } => {
            let _ = reply.send(
                approvals
                    .get(&id)
                    .cloned()
                    .ok_or(EscalationError::UnknownApproval(id)),
            );
        }
        EscalationMsg::List { open_only, reply } => {
            let mut list: Vec<Approval> = approvals
                .values()
                .filter(|a| !open_only || a.is_open())
                .cloned()
                .collect();
            list.sort_by_key(|a| a.opened_at);
            let _ = reply.send(list);
        }
        EscalationMsg::Deadline { id } => {
            let Some(approval) = approvals.get(&id) else {
                return;
            };
            if !approval.is_open() || state.saving.contains_key(&id) {
                return;
            }
            let now = Timestamp::now();
            if approval.deadline > now {
                arm_deadline(myself, approval, now);
                return;
            }
            let mut resolved = approval.clone();
            resolved.resolution = Some(timeout_resolution(approval, now));
            approvals.insert(id.clone(), resolved.clone());
            state.saving.insert(id, OnSaved::TimedOut);
            save(myself, state, resolved);
        }
        EscalationMsg::Saved { approval, result } => saved(myself, state, *approval, result),
        EscalationMsg::Loaded(_) => {}
    }
}

fn save(myself: &ActorRef<EscalationMsg>, state: &mut EscalationState, approval: Approval) {
    let store = Arc::clone(&state.args.store);
    let myself = myself.clone();
    state.tasks.spawn(async move {
        let result = store.save(approval.clone()).await;
        let _ = myself.send_message(EscalationMsg::Saved {
            approval: Box::new(approval),
            result,
        });
    });
}

fn saved(
    myself: &ActorRef<EscalationMsg>,
    state: &mut EscalationState,
    approval: Approval,
    result: Result<(), ApprovalStoreError>,
) {
    let Some(on_saved) = state.saving.remove(&approval.id) else {
        return;
    };
    let Some(approvals) = state.approvals.as_mut() else {
        return;
    };
    match (on_saved, result) {
        (OnSaved::Opened(reply, _), Ok(())) => {
            approvals.insert(approval.id.clone(), approval.clone());
            arm_deadline(myself, &approval, Timestamp::now());
            emit(&state.args, &approval, EventKind::EscalationOpened);
            notify(&state.args, ApprovalNotice::Opened(approval.clone()));
            let _ = reply.send(Ok(approval));
        }
        (OnSaved::Opened(reply, _), Err(error)) => {
            let _ = reply.send(Err(EscalationError::Store(error.0)));
        }
        (on_saved, Ok(())) => {
            let Some(resolution) = approval.resolution.clone() else {
                return;
            };
            emit(&state.args, &approval, EventKind::EscalationResolved);
            notify(&state.args, ApprovalNotice::Resolved(approval.clone()));
            if let OnSaved::Resolved(replies) = on_saved {
                for reply in replies {
                    let _ = reply.send(Ok(resolution.clone()));
                }
            }
            for waiter in state.waiters.remove(&approval.id).unwrap_or_default() {
                let _ = waiter.send(Ok(resolution.clone()));
            }
        }
        (on_saved, Err(error)) => {
            // Not durable: undo, so the approval stays open and nobody acts
            // on an answer a crash could lose.
            let mut reopened = approval.clone();
            reopened.resolution = None;
            approvals.insert(approval.id.clone(), reopened.clone());
            match on_saved {
                OnSaved::Resolved(replies) => {
                    for reply in replies {
                        let _ = reply.send(Err(EscalationError::Store(error.0.clone())));
                    }
                }
                OnSaved::TimedOut => {
                    let id = approval.id.clone();
                    myself.send_after(STORE_RETRY, move || EscalationMsg::Deadline { id });
                }
                OnSaved::Opened(..) => {}
            }
        }
    }
}

fn emit(args: &EscalationArgs, approval: &Approval, kind: EventKind) {
    let (level, message) = match &approval.resolution {
        None => (
            Level::Warning,
            format!(
                "approval `{}` opened: {}",
                approval.id, approval.request.title
            ),
        ),
        Some(r) => (
            Level::Info,
            format!(
                "approval `{}` resolved by {}: {}",
                approval.id,
                r.by,
                r.option.as_deref().unwrap_or("instructions")
            ),
        ),
    };
    let mut event = Event::new(level, "hale/escalation", kind, message).with_data(json!({
        "approval": approval.id,
        "title": approval.request.title,
        "resolution": approval.resolution,
    }));
    if let Some(session) = &approval.request.requester {
        event = event.with_session(session.clone());
    }
    args.sink.emit(event);
}

fn notify(args: &EscalationArgs, notice: ApprovalNotice) {
    // No subscriber is not an error; a slow one lags, never blocks this.
    let _ = args.subscribers.send(notice);
}

fn new_id(now: Timestamp) -> String {
    format!(
        "apr-{}-{:06x}",
        now.as_millisecond(),
        fastrand::u32(..0x0100_0000)
    )
}

/// The handle requesters, operators and tools use. Cheap to clone; holds
/// no actor ref, so it survives the actor's restarts.
#[derive(Clone)]
pub struct Escalation {
    args: EscalationArgs,
}

impl std::fmt::Debug for Escalation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Escalation").finish_non_exhaustive()
    }
}

/// The supervised child running the escalation actor, and its handle.
pub fn escalation_child(
    store: Arc<dyn ApprovalStore>,
    sink: Arc<dyn EventSink>,
) -> (ChildSpec, Escalation) {
    let args = EscalationArgs {
        store,
        address: Address::new(),
        sink,
        subscribers: broadcast::channel(NOTICE_BUFFER).0,
    };
    let for_child = args.clone();
    let spec = ChildSpec::worker("escalation", move || (EscalationActor, for_child.clone()));
    (spec, Escalation { args })
}

impl Escalation {
    /// A call to the current incarnation: three sends, re-sending what
    /// the actor did not take (or, with `resend_taken`, anything: only
    /// for idempotent requests), and no reply deadline.
    fn call(&self, resend_taken: bool) -> SupervisedCall<'_, EscalationMsg> {
        let policy = CallPolicy::new(READY_WAIT).resend_taken(resend_taken);
        SupervisedCall::new(&self.args.address, policy)
    }

    /// Opens the runtime's approval for the one call `gate` describes (a
    /// blocked call, a critical outcome, an open breaker, a spent budget);
    /// returns it once it is stored. Only an approval opened here can let
    /// a gated call through, and only the call of its gate.
    ///
    /// # Errors
    /// An invalid request, a store failure, or `Unavailable` when the
    /// actor died after taking the request (it may or may not have been
    /// stored: look for it with [`Escalation::list`] by its gate).
    pub async fn open_gate(
        &self,
        mut request: ApprovalRequest,
        gate: Gate,
    ) -> Result<Approval, EscalationError> {
        request.requester = Some(gate.session.clone());
        self.open(request, Origin::Runtime, Some(gate), None).await
    }

    /// Opens an agent's question for `session` (`ask_approval`); returns
    /// it once it is stored. A question is never a key: it is bound to no
    /// call, its deadline answers with no option whatever default was
    /// asked for, and `session` may have at most `limit` open at once.
    ///
    /// # Errors
    /// [`EscalationError::TooManyOpen`] beyond the limit; otherwise as
    /// [`Escalation::open_gate`].
    pub async fn ask(
        &self,
        mut request: ApprovalRequest,
        session: &str,
        limit: usize,
    ) -> Result<Approval, EscalationError> {
        request.requester = Some(session.to_owned());
        request.default_on_timeout = None;
        self.open(request, Origin::Agent, None, Some(limit)).await
    }

    async fn open(
        &self,
        request: ApprovalRequest,
        origin: Origin,
        gate: Option<Gate>,
        limit: Option<usize>,
    ) -> Result<Approval, EscalationError> {
        self.call(false)
            .send(|taken, reply| EscalationMsg::Open {
                request: Box::new(request.clone()),
                origin,
                gate: gate.clone().map(Box::new),
                limit,
                taken,
                reply,
            })
            .await
            .unwrap_or_else(|e| Err(unavailable(e)))
    }

    /// Resolves an approval. Idempotent: the same answer again returns the
    /// same resolution, so it is retried across the actor's restarts.
    ///
    /// # Errors
    /// Unknown id or option, instructions not allowed, a different earlier
    /// answer, a store failure.
    pub async fn resolve(
        &self,
        id: &str,
        answer: Answer,
        by: &str,
    ) -> Result<Resolution, EscalationError> {
        self.rpc(|reply| EscalationMsg::Resolve {
            id: id.to_owned(),
            answer: answer.clone(),
            by: by.to_owned(),
            reply,
        })
        .await?
    }

    /// Waits until the approval is resolved, across restarts of the actor
    /// (and, with a durable store, of the process). Never blocks a thread.
    ///
    /// # Errors
    /// Unknown id.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future only stops waiting.
    pub async fn wait(&self, id: &str) -> Result<Resolution, EscalationError> {
        // A wait has no deadline of its own: it is offered to every
        // incarnation, and looks again when none is running.
        let policy = CallPolicy::new(READY_WAIT)
            .resend_taken(true)
            .max_sends(usize::MAX);
        loop {
            let answer = SupervisedCall::new(&self.args.address, policy)
                .send(|_, reply| EscalationMsg::Wait {
                    id: id.to_owned(),
                    reply,
                })
                .await;
            if let Ok(answer) = answer {
                return answer;
            }
        }
    }

    /// One approval.
    ///
    /// # Errors
    /// Unknown id, or `Unavailable`.
    pub async fn get(&self, id: &str) -> Result<Approval, EscalationError> {
        self.rpc(|reply| EscalationMsg::Get {
            id: id.to_owned(),
            reply,
        })
        .await?
    }

    /// Retention: forgets every approval decided before `before`, in the
    /// actor and in its store; returns how many the actor dropped.
    ///
    /// # Errors
    /// `Unavailable`, or the store's deletion failed.
    pub async fn prune_decided(&self, before: Timestamp) -> Result<usize, EscalationError> {
        self.rpc(|reply| EscalationMsg::Prune { before, reply })
            .await?
            .map_err(|e| EscalationError::Store(e.to_string()))
    }

    /// Every approval, or only the open ones, oldest first.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn list(&self, open_only: bool) -> Result<Vec<Approval>, EscalationError> {
        self.rpc(|reply| EscalationMsg::List { open_only, reply })
            .await
    }

    /// Notices of every approval opened or resolved from now on. The
    /// receiver holds at most [`NOTICE_BUFFER`] unread notices; past
    /// that, `recv` answers `Lagged(missed)` and goes on with the newest.
    pub fn subscribe(&self) -> broadcast::Receiver<ApprovalNotice> {
        self.args.subscribers.subscribe()
    }

    /// Sends an idempotent request, again to the replacement if the actor
    /// dies before answering; `Unavailable` after three incarnations.
    async fn rpc<T, F>(&self, message: F) -> Result<T, EscalationError>
    where
        F: Fn(RpcReplyPort<T>) -> EscalationMsg,
        T: Send + 'static,
    {
        self.call(true)
            .send(|_, reply| message(reply))
            .await
            .map_err(unavailable)
    }
}

/// Every way a call to the actor can fail is `Unavailable` to its caller.
fn unavailable(_: CallError) -> EscalationError {
    EscalationError::Unavailable
}
