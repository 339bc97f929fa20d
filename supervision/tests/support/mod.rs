//! A test worker whose life is observable from outside: it records its
//! starts and graceful stops in a shared journal, counts live incarnations,
//! and can be told to panic, fail, hang or stop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hale_supervision::{ChildId, ChildSpec, SupervisorEvent, SupervisorRef};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc::UnboundedReceiver;

/// What the workers of one test share.
#[derive(Default)]
pub struct Shared {
    /// "start:<label>" and "stop:<label>" (graceful stops only), in order.
    pub journal: Mutex<Vec<String>>,
    /// Worker states alive right now (dropped states decrement).
    pub live: AtomicI64,
    /// Starts of these labels fail while the counter is above zero.
    pub fail_starts: Mutex<Vec<(String, u32)>>,
    /// Panics that reached a handler.
    pub panics: AtomicU32,
}

impl Shared {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn log(&self, entry: String) {
        self.journal.lock().unwrap().push(entry);
    }

    pub fn journal(&self) -> Vec<String> {
        self.journal.lock().unwrap().clone()
    }

    pub fn clear_journal(&self) {
        self.journal.lock().unwrap().clear();
    }

    /// Makes the next `n` starts of `label` fail in `pre_start`.
    pub fn fail_next_starts(&self, label: &str, n: u32) {
        self.fail_starts.lock().unwrap().push((label.to_owned(), n));
    }

    fn take_start_failure(&self, label: &str) -> bool {
        let mut fails = self.fail_starts.lock().unwrap();
        for (l, n) in fails.iter_mut() {
            if l == label && *n > 0 {
                *n -= 1;
                return true;
            }
        }
        false
    }
}

pub enum WorkerMsg {
    /// Answers with the worker's label.
    Ping(RpcReplyPort<String>),
    Panic,
    Fail,
    /// Answers, then never returns: the handler awaits forever (a hung child).
    Hang(RpcReplyPort<()>),
    Stop(Option<String>),
}

pub struct Worker;

pub struct WorkerState {
    label: String,
    shared: Arc<Shared>,
}

impl Drop for WorkerState {
    fn drop(&mut self) {
        self.shared.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = (String, Arc<Shared>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (label, shared): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        if shared.take_start_failure(&label) {
            return Err(format!("{label} refuses to start").into());
        }
        shared.live.fetch_add(1, Ordering::SeqCst);
        shared.log(format!("start:{label}"));
        Ok(WorkerState { label, shared })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.shared.log(format!("stop:{}", state.label));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::Ping(reply) => {
                let _ = reply.send(state.label.clone());
            }
            WorkerMsg::Panic => {
                state.shared.panics.fetch_add(1, Ordering::SeqCst);
                panic!("{} was told to panic", state.label);
            }
            WorkerMsg::Fail => return Err(format!("{} was told to fail", state.label).into()),
            WorkerMsg::Hang(reply) => {
                let _ = reply.send(());
                std::future::pending::<()>().await
            }
            WorkerMsg::Stop(reason) => myself.stop(reason),
        }
        Ok(())
    }
}

/// A permanent worker child labelled `id`.
pub fn worker(id: &str, shared: &Arc<Shared>) -> ChildSpec {
    let label = id.to_owned();
    let shared = shared.clone();
    ChildSpec::worker(id, move || (Worker, (label.clone(), shared.clone())))
}

/// Pings a worker cell; its label, or None if it does not answer in 1 s.
pub async fn ping(cell: &ActorCell) -> Option<String> {
    let actor: ActorRef<WorkerMsg> = cell.clone().into();
    match actor
        .call(WorkerMsg::Ping, Some(Duration::from_secs(1)))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(label)) => Some(label),
        _ => None,
    }
}

pub fn send(cell: &ActorCell, msg: WorkerMsg) {
    let actor: ActorRef<WorkerMsg> = cell.clone().into();
    let _ = actor.send_message(msg);
}

/// Polls `check` until it returns Some, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until child `id` of `sup` runs as an actor other than `old`, and returns it.
pub async fn replaced(sup: &SupervisorRef, id: &str, old: &ActorCell) -> ActorCell {
    let id = ChildId::from(id);
    let old = old.get_id();
    eventually(Duration::from_secs(5), || async {
        sup.resolve(&id)
            .await
            .ok()
            .flatten()
            .filter(|cell| cell.get_id() != old)
    })
    .await
    .unwrap_or_else(|| panic!("child {id} was not replaced within 5 s"))
}

/// The current cell of child `id`, which must be running.
pub async fn current(sup: &SupervisorRef, id: &str) -> ActorCell {
    sup.resolve(&ChildId::from(id))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("child {id} is not running"))
}

/// Collects events until `pred` matches one, for at most `within`.
pub async fn wait_event(
    rx: &mut UnboundedReceiver<SupervisorEvent>,
    within: Duration,
    mut pred: impl FnMut(&SupervisorEvent) -> bool,
) -> Option<SupervisorEvent> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) if pred(&event) => return Some(event),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

/// Keeps the thousands of deliberate panics of a chaos run out of the output,
/// while any other panic still prints as usual.
pub fn quiet_deliberate_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let deliberate = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m.ends_with("was told to panic"));
            if !deliberate {
                default(info);
            }
        }));
    });
}
