//! The supervisor actor: carries out the restart decisions.
//!
//! The decisions themselves are values computed elsewhere ([`decide`], the
//! [`RestartWindow`], [`Backoff::delay`]); this module applies them to live
//! actors. It never sleeps in a handler: backoff delays, retries of failed
//! starts and probes of parked children are messages it sends itself with
//! timers, each fenced by the child's generation so a stale timer is ignored,
//! and the mailbox keeps serving stop requests and queries in between.
//!
//! **Invariant**: `by_actor` maps exactly the actor ids of children in
//! [`Status::Running`]. An exit event whose actor id is not in it (a child the
//! supervisor itself shut down, or a stale incarnation) is ignored, which is
//! how deliberate terminations are told apart from crashes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RactorErr, RpcReplyPort,
    SupervisionEvent,
};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::SupervisorError;
use crate::event::{SupervisorEvent, SupervisorEventKind, SupervisorObserver};
use crate::intensity::{RestartWindow, Verdict};
use crate::reason::{Decision, ExitReason, GAVE_UP_REASON, SHUTDOWN_REASON, decide};
use crate::spec::{ChildId, ChildKind, ChildSpec, Restart, Shutdown, Strategy, SupervisorSpec};

/// How long a supervisor waits for a killed child to be gone before moving on.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The supervisor actor. Spawn it with a [`SupervisorSpec`] as its arguments,
/// or use [`crate::SupervisorRef::start`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Supervisor;

/// Messages a supervisor handles. Use [`crate::SupervisorRef`] rather than
/// sending these by hand.
pub enum SupervisorMsg {
    /// Every child in start order.
    WhichChildren(RpcReplyPort<Vec<ChildInfo>>),
    /// The current actor of a running child.
    Resolve(ChildId, RpcReplyPort<Option<ActorCell>>),
    /// Adds and starts a child.
    StartChild(
        Box<ChildSpec>,
        RpcReplyPort<Result<ActorCell, SupervisorError>>,
    ),
    /// Shuts a child down and keeps its spec.
    TerminateChild(ChildId, RpcReplyPort<Result<(), SupervisorError>>),
    /// Starts a child again (shutting it down first if it runs).
    RestartChild(ChildId, RpcReplyPort<Result<ActorCell, SupervisorError>>),
    /// Shuts a child down and forgets its spec.
    DeleteChild(ChildId, RpcReplyPort<Result<(), SupervisorError>>),
    /// Counters since the supervisor started.
    Stats(RpcReplyPort<SupervisorStats>),
    /// A timer the supervisor set for itself; cannot be built outside this crate.
    Timer(Timer),
}

/// A delayed message a supervisor sends itself.
pub struct Timer(TimerKind);

enum TimerKind {
    /// Start these children (in order) if they are still pending at these generations.
    Restart(Vec<(ChildId, u64)>),
    /// Try a parked child again.
    Probe(ChildId, u64),
}

/// The state of one child as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildState {
    /// Running.
    Running,
    /// Down, waiting for a (backoff-delayed or retried) restart.
    RestartPending,
    /// Down and not scheduled to restart (terminated, or a transient child that exited normally).
    Stopped,
    /// Down after exceeding its own restart limit; a probe will try it again.
    Parked,
}

/// One child, as reported by `which_children`.
#[derive(Debug, Clone)]
pub struct ChildInfo {
    /// Its stable id.
    pub id: ChildId,
    /// Its current actor, when running.
    pub actor: Option<ActorCell>,
    /// Its state.
    pub state: ChildState,
    /// How many times it has been restarted.
    pub restarts: u64,
    /// Why it last exited, if it has.
    pub last_exit: Option<ExitReason>,
    /// Its restart type.
    pub restart: Restart,
    /// Worker or supervisor.
    pub kind: ChildKind,
}

/// Counters a supervisor keeps about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SupervisorStats {
    /// Child exits it noticed (not counting children it shut down itself).
    pub exits: u64,
    /// Restarts it decided on: one per exit that led to a restart, however
    /// many siblings the strategy restarted with it.
    pub restarts: u64,
    /// Starts that failed (each also charged to the intensity).
    pub start_failures: u64,
    /// Times a child was parked.
    pub parks: u64,
}

enum Status {
    Running(ActorCell),
    RestartPending,
    Stopped,
    Parked,
}

struct Child {
    spec: ChildSpec,
    seq: u64,
    /// Bumped on every status change; timers carry it to detect staleness.
    generation: u64,
    status: Status,
    restarts: u64,
    backoff_attempt: u32,
    own_window: Option<RestartWindow>,
    last_exit: Option<ExitReason>,
    started_at: Instant,
}

impl Child {
    fn new(spec: ChildSpec, seq: u64) -> Self {
        let own_window = spec.park.map(|park| RestartWindow::new(park.limit));
        Self {
            spec,
            seq,
            generation: 0,
            status: Status::Stopped,
            restarts: 0,
            backoff_attempt: 0,
            own_window,
            last_exit: None,
            started_at: Instant::now(),
        }
    }

    fn set_status(&mut self, status: Status) {
        self.status = status;
        self.generation += 1;
    }

    fn is_up_or_pending(&self) -> bool {
        matches!(self.status, Status::Running(_) | Status::RestartPending)
    }

    /// The next backoff delay, if the child has a backoff; advances the attempt.
    /// `unit` is the jitter draw in `0.0..1.0`.
    fn next_delay(&mut self, unit: f64) -> Option<(u32, Duration)> {
        let backoff: Backoff = self.spec.backoff?;
        let attempt = self.backoff_attempt;
        self.backoff_attempt = self.backoff_attempt.saturating_add(1);
        Some((attempt, backoff.delay(attempt, unit)))
    }

    fn info(&self, id: &ChildId) -> ChildInfo {
        let (actor, state) = match &self.status {
            Status::Running(cell) => (Some(cell.clone()), ChildState::Running),
            Status::RestartPending => (None, ChildState::RestartPending),
            Status::Stopped => (None, ChildState::Stopped),
            Status::Parked => (None, ChildState::Parked),
        };
        ChildInfo {
            id: id.clone(),
            actor,
            state,
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            restart: self.spec.restart,
            kind: self.spec.kind,
        }
    }
}

/// A supervisor's state: its children in start order and its restart history.
pub struct SupervisorState {
    name: Arc<str>,
    strategy: Strategy,
    intensity: crate::spec::Intensity,
    window: RestartWindow,
    observer: Option<Arc<dyn SupervisorObserver>>,
    order: BTreeMap<u64, ChildId>,
    children: HashMap<ChildId, Child>,
    by_actor: HashMap<ActorId, ChildId>,
    next_seq: u64,
    stats: SupervisorStats,
    stopping: bool,
    /// Jitter draws; owned by the supervisor rather than a thread-local so
    /// each supervisor's sequence is its own.
    rng: fastrand::Rng,
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorSpec;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        spec: SupervisorSpec,
    ) -> Result<Self::State, ActorProcessingErr> {
        spec.validate()?;
        let SupervisorSpec {
            name,
            strategy,
            intensity,
            children,
            observer,
        } = spec;
        let mut state = SupervisorState {
            name,
            strategy,
            intensity,
            window: RestartWindow::new(intensity),
            observer,
            order: BTreeMap::new(),
            children: HashMap::new(),
            by_actor: HashMap::new(),
            next_seq: 0,
            stats: SupervisorStats::default(),
            stopping: false,
            rng: fastrand::Rng::new(),
        };
        let myself = myself.get_cell();
        // OTP: children start in order inside init; if one fails, those
        // already started are shut down and the supervisor fails to start.
        for child in children {
            let id = child.id.clone();
            state.insert(child);
            if let Err(error) = state.start(&myself, &id, false).await {
                state.stopping = true;
                state.terminate_all().await;
                return Err(Box::new(SupervisorError::StartFailed {
                    child: id,
                    reason: error,
                }));
            }
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.stopping = true;
        state.terminate_all().await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let myself = myself.get_cell();
        match message {
            SupervisorMsg::WhichChildren(reply) => {
                let infos = state
                    .order
                    .values()
                    .filter_map(|id| state.children.get(id).map(|c| c.info(id)))
                    .collect();
                let _ = reply.send(infos);
            }
            SupervisorMsg::Resolve(id, reply) => {
                let cell = state.children.get(&id).and_then(|c| match &c.status {
                    Status::Running(cell) => Some(cell.clone()),
                    _ => None,
                });
                let _ = reply.send(cell);
            }
            SupervisorMsg::Stats(reply) => {
                let _ = reply.send(state.stats);
            }
            SupervisorMsg::StartChild(spec, reply) => {
                let _ = reply.send(state.start_dynamic(&myself, *spec).await);
            }
            SupervisorMsg::TerminateChild(id, reply) => {
                let result = match state.children.get(&id) {
                    None => Err(SupervisorError::UnknownChild(id)),
                    Some(child) => {
                        let temporary = child.spec.restart == Restart::Temporary;
                        state.terminate(&id).await;
                        if temporary {
                            state.remove(&id);
                        }
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::RestartChild(id, reply) => {
                let result = if state.children.contains_key(&id) {
                    state.terminate(&id).await;
                    if let Some(child) = state.children.get_mut(&id) {
                        child.backoff_attempt = 0;
                        if let Some(window) = child.own_window.as_mut() {
                            window.clear();
                        }
                    }
                    state.start(&myself, &id, true).await.map_err(|reason| {
                        SupervisorError::StartFailed {
                            child: id.clone(),
                            reason,
                        }
                    })
                } else {
                    Err(SupervisorError::UnknownChild(id))
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::DeleteChild(id, reply) => {
                let result = if state.children.contains_key(&id) {
                    state.terminate(&id).await;
                    state.remove(&id);
                    Ok(())
                } else {
                    Err(SupervisorError::UnknownChild(id))
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::Timer(Timer(TimerKind::Restart(due))) => {
                let ids: Vec<ChildId> = due
                    .into_iter()
                    .filter(|(id, generation)| {
                        state.children.get(id).is_some_and(|c| {
                            c.generation == *generation
                                && matches!(c.status, Status::RestartPending)
                        })
                    })
                    .map(|(id, _)| id)
                    .collect();
                if !ids.is_empty() {
                    state.start_group(&myself, ids).await;
                }
            }
            SupervisorMsg::Timer(Timer(TimerKind::Probe(id, generation))) => {
                let due = state.children.get(&id).is_some_and(|c| {
                    c.generation == generation && matches!(c.status, Status::Parked)
                });
                if due {
                    state.probe(&myself, &id).await;
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((cell, reason)) = ExitReason::from_event(&event) {
            let actor = cell.get_id();
            state.on_exit(&myself.get_cell(), actor, reason).await;
        }
        Ok(())
    }
}

impl SupervisorState {
    fn emit(&self, child: Option<&ChildId>, kind: SupervisorEventKind) {
        if let Some(observer) = &self.observer {
            observer.observe(&SupervisorEvent {
                supervisor: self.name.clone(),
                child: child.cloned(),
                at: SystemTime::now(),
                kind,
            });
        }
    }

    fn insert(&mut self, spec: ChildSpec) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, spec.id.clone());
        self.children.insert(spec.id.clone(), Child::new(spec, seq));
    }

    fn remove(&mut self, id: &ChildId) {
        if let Some(child) = self.children.remove(id) {
            self.order.remove(&child.seq);
            if let Status::Running(cell) = child.status {
                self.by_actor.remove(&cell.get_id());
            }
        }
    }

    /// Starts one child now. `restart` says whether this counts as a restart.
    async fn start(
        &mut self,
        myself: &ActorCell,
        id: &ChildId,
        restart: bool,
    ) -> Result<ActorCell, String> {
        let Some(child) = self.children.get(id) else {
            return Err(format!("unknown child {id}"));
        };
        let start = child.spec.start.clone();
        let outcome = start(myself.clone()).await;
        let Some(child) = self.children.get_mut(id) else {
            // Deleted while starting cannot happen (handlers run one at a time),
            // but a started orphan must not survive if it ever did.
            if let Ok(cell) = outcome {
                cell.kill();
            }
            return Err(format!("child {id} vanished while starting"));
        };
        match outcome {
            Ok(cell) => {
                if restart {
                    child.restarts += 1;
                }
                child.started_at = Instant::now();
                child.set_status(Status::Running(cell.clone()));
                let restarts = child.restarts;
                self.by_actor.insert(cell.get_id(), id.clone());
                self.emit(
                    Some(id),
                    SupervisorEventKind::ChildStarted {
                        actor: cell.get_id(),
                        restarts,
                    },
                );
                Ok(cell)
            }
            Err(error) => {
                let error = error.to_string();
                tracing::warn!(supervisor = %self.name, child = %id, %error, "child failed to start");
                child.set_status(Status::Stopped);
                self.stats.start_failures += 1;
                self.emit(
                    Some(id),
                    SupervisorEventKind::ChildStartFailed {
                        error: error.clone(),
                    },
                );
                Err(error)
            }
        }
    }

    async fn start_dynamic(
        &mut self,
        myself: &ActorCell,
        spec: ChildSpec,
    ) -> Result<ActorCell, SupervisorError> {
        spec.validate()?;
        if self.children.contains_key(&spec.id) {
            return Err(SupervisorError::DuplicateChild(spec.id.clone()));
        }
        let id = spec.id.clone();
        self.insert(spec);
        match self.start(myself, &id, false).await {
            Ok(cell) => Ok(cell),
            Err(reason) => {
                // OTP: a dynamic child that fails to start is not kept.
                self.remove(&id);
                Err(SupervisorError::StartFailed { child: id, reason })
            }
        }
    }

    async fn on_exit(&mut self, myself: &ActorCell, actor: ActorId, reason: ExitReason) {
        if self.stopping {
            return;
        }
        let Some(id) = self.by_actor.remove(&actor) else {
            return;
        };
        let Some(child) = self.children.get_mut(&id) else {
            return;
        };
        let decision = decide(child.spec.restart, &reason);
        tracing::debug!(supervisor = %self.name, child = %id, %reason, ?decision, "child exited");
        let ran_for = child.started_at.elapsed();
        child.last_exit = Some(reason.clone());
        self.stats.exits += 1;
        match decision {
            Decision::Remove => {
                self.emit(
                    Some(&id),
                    SupervisorEventKind::ChildExited { reason, decision },
                );
                self.remove(&id);
            }
            Decision::LeaveStopped => {
                child.set_status(Status::Stopped);
                self.emit(
                    Some(&id),
                    SupervisorEventKind::ChildExited { reason, decision },
                );
            }
            Decision::Restart => {
                if child
                    .spec
                    .backoff
                    .is_some_and(|b| ran_for >= b.stable_after())
                {
                    child.backoff_attempt = 0;
                }
                child.set_status(Status::RestartPending);
                self.emit(
                    Some(&id),
                    SupervisorEventKind::ChildExited {
                        reason: reason.clone(),
                        decision,
                    },
                );
                self.restart(myself, id, reason).await;
            }
        }
    }

    /// Charges a restart of `id` to the limits, then restarts it (and the
    /// siblings its strategy names), at once or after its backoff.
    async fn restart(&mut self, myself: &ActorCell, id: ChildId, reason: ExitReason) {
        let now = Instant::now();
        let Some(child) = self.children.get_mut(&id) else {
            return;
        };
        if let Some(window) = child.own_window.as_mut()
            && window.add_restart(now) == Verdict::Exceeded
        {
            self.park(myself, &id, reason);
            return;
        }
        if self.window.add_restart(now) == Verdict::Exceeded {
            self.give_up(myself).await;
            return;
        }
        self.stats.restarts += 1;
        let delay = child.next_delay(self.rng.f64());
        let seq = child.seq;

        let group: Vec<ChildId> = match self.strategy {
            Strategy::OneForOne => vec![id.clone()],
            Strategy::OneForAll => self.ids_from(0),
            Strategy::RestForOne => self.ids_from(seq),
        };
        // Siblings go down now, in reverse start order; they come back together.
        for sibling in group.iter().rev().filter(|s| **s != id) {
            self.terminate(sibling).await;
            if let Some(c) = self.children.get_mut(sibling) {
                if c.spec.restart == Restart::Temporary {
                    self.remove(sibling);
                } else {
                    c.set_status(Status::RestartPending);
                }
            }
        }
        let group: Vec<ChildId> = group
            .into_iter()
            .filter(|c| self.children.contains_key(c))
            .collect();
        match delay {
            Some((attempt, delay)) => {
                self.emit(
                    Some(&id),
                    SupervisorEventKind::RestartScheduled { attempt, delay },
                );
                self.schedule_restart(myself, group, delay);
            }
            None => self.start_group(myself, group).await,
        }
    }

    /// Ids of children at or after start position `seq` that are up or pending, in start order.
    fn ids_from(&self, seq: u64) -> Vec<ChildId> {
        self.order
            .range(seq..)
            .filter(|(_, id)| self.children.get(*id).is_some_and(Child::is_up_or_pending))
            .map(|(_, id)| id.clone())
            .collect()
    }

    fn schedule_restart(&mut self, myself: &ActorCell, ids: Vec<ChildId>, delay: Duration) {
        let due: Vec<(ChildId, u64)> = ids
            .into_iter()
            .filter_map(|id| {
                let child = self.children.get_mut(&id)?;
                child.set_status(Status::RestartPending);
                Some((id, child.generation))
            })
            .collect();
        let message = move || SupervisorMsg::Timer(Timer(TimerKind::Restart(due)));
        if delay.is_zero() {
            // A retry without backoff still goes through the mailbox, so a
            // stop request or a query can get in between (OTP's try_again_restart).
            let _ = myself.send_message(message());
        } else {
            ractor::time::send_after(delay, myself.clone(), message);
        }
    }

    /// Starts `ids` in order. A failed start is charged like a restart and the
    /// rest of the group is retried from the failed child.
    async fn start_group(&mut self, myself: &ActorCell, ids: Vec<ChildId>) {
        for (index, id) in ids.iter().enumerate() {
            if let Err(error) = self.start(myself, id, true).await {
                let reason = ExitReason::Failed(format!("start failed: {error}"));
                if let Some(child) = self.children.get_mut(id) {
                    child.last_exit = Some(reason.clone());
                }
                self.retry_failed_start(myself, ids[index..].to_vec(), reason)
                    .await;
                return;
            }
        }
    }

    async fn retry_failed_start(
        &mut self,
        myself: &ActorCell,
        mut ids: Vec<ChildId>,
        reason: ExitReason,
    ) {
        let now = Instant::now();
        let Some(first) = ids.first().cloned() else {
            return;
        };
        let Some(child) = self.children.get_mut(&first) else {
            return;
        };
        if let Some(window) = child.own_window.as_mut()
            && window.add_restart(now) == Verdict::Exceeded
        {
            self.park(myself, &first, reason);
            ids.remove(0);
            if !ids.is_empty() {
                self.schedule_restart(myself, ids, Duration::ZERO);
            }
            return;
        }
        if self.window.add_restart(now) == Verdict::Exceeded {
            self.give_up(myself).await;
            return;
        }
        let delay = child.next_delay(self.rng.f64());
        let delay = match delay {
            Some((attempt, delay)) => {
                self.emit(
                    Some(&first),
                    SupervisorEventKind::RestartScheduled { attempt, delay },
                );
                delay
            }
            None => Duration::ZERO,
        };
        self.schedule_restart(myself, ids, delay);
    }

    fn park(&mut self, myself: &ActorCell, id: &ChildId, reason: ExitReason) {
        let Some(child) = self.children.get_mut(id) else {
            return;
        };
        let Some(park) = child.spec.park else {
            return;
        };
        child.set_status(Status::Parked);
        tracing::warn!(supervisor = %self.name, child = %id, %reason, probe_after = ?park.probe_after, "child parked after exceeding its restart limit");
        let generation = child.generation;
        self.stats.parks += 1;
        self.emit(
            Some(id),
            SupervisorEventKind::ChildParked {
                reason,
                probe_after: park.probe_after,
            },
        );
        let id = id.clone();
        ractor::time::send_after(park.probe_after, myself.clone(), move || {
            SupervisorMsg::Timer(Timer(TimerKind::Probe(id, generation)))
        });
    }

    async fn probe(&mut self, myself: &ActorCell, id: &ChildId) {
        self.emit(Some(id), SupervisorEventKind::ChildProbed);
        match self.start(myself, id, true).await {
            Ok(_) => {
                if let Some(child) = self.children.get_mut(id) {
                    child.backoff_attempt = 0;
                    if let Some(window) = child.own_window.as_mut() {
                        window.clear();
                    }
                }
            }
            Err(error) => {
                let reason = ExitReason::Failed(format!("probe start failed: {error}"));
                if let Some(child) = self.children.get_mut(id) {
                    child.last_exit = Some(reason.clone());
                }
                self.park(myself, id, reason);
            }
        }
    }

    async fn give_up(&mut self, myself: &ActorCell) {
        tracing::warn!(
            supervisor = %self.name,
            max_restarts = self.intensity.max_restarts,
            period = ?self.intensity.period,
            "restart intensity exceeded; stopping children and exiting so the parent decides"
        );
        self.emit(
            None,
            SupervisorEventKind::GaveUp {
                max_restarts: self.intensity.max_restarts,
                period: self.intensity.period,
            },
        );
        self.stopping = true;
        self.terminate_all().await;
        myself.stop(Some(GAVE_UP_REASON.to_owned()));
    }

    /// Shuts every running child down in reverse start order.
    async fn terminate_all(&mut self) {
        let ids: Vec<ChildId> = self.order.values().rev().cloned().collect();
        for id in ids {
            self.terminate(&id).await;
        }
    }

    /// Shuts one child down per its spec and marks it stopped (cancelling any
    /// pending restart or probe).
    async fn terminate(&mut self, id: &ChildId) {
        let Some(child) = self.children.get_mut(id) else {
            return;
        };
        let previous = std::mem::replace(&mut child.status, Status::Stopped);
        child.generation += 1;
        let shutdown = child.spec.shutdown;
        if let Status::Running(cell) = previous {
            self.by_actor.remove(&cell.get_id());
            let killed_after_timeout = shut_down(&cell, shutdown).await;
            self.emit(
                Some(id),
                SupervisorEventKind::ChildTerminated {
                    killed_after_timeout,
                },
            );
        }
    }
}

/// Stops `cell` per `shutdown`; true when a graceful stop timed out and it was killed.
async fn shut_down(cell: &ActorCell, shutdown: Shutdown) -> bool {
    match shutdown {
        Shutdown::Brutal => {
            let _ = cell.kill_and_wait(Some(KILL_WAIT)).await;
            false
        }
        Shutdown::Graceful(timeout) => {
            match cell
                .stop_and_wait(Some(SHUTDOWN_REASON.to_owned()), Some(timeout))
                .await
            {
                Err(RactorErr::Timeout) => {
                    let _ = cell.kill_and_wait(Some(KILL_WAIT)).await;
                    true
                }
                // Already gone (its channel closed) or stopped in time.
                _ => false,
            }
        }
    }
}
