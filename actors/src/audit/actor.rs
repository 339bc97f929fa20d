//! The audit actor: owns the ingest pump and the retention timer.
//!
//! The actor holds no events itself. The lanes and the counters live in
//! the shared [`Ingest`], so a restart costs nothing but the pump's
//! restart; the pump is a task in a `JoinSet` in the actor's state, so
//! even a `kill` (which skips `post_stop`) stops it, and the replacement's
//! pump carries on from the same lanes.

use std::sync::Arc;
use std::time::Duration;

use hale_supervision::Address;
use jiff::Timestamp;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::Retention;
use super::ingest::{Ingest, pump, sweep};
use super::sink::AuditSink;
use crate::event::{Event, EventKind, EventSink, Level};
use crate::store::StoreError;

/// The audit actor's messages.
#[derive(Debug)]
pub enum AuditMsg {
    /// Apply the retention rules now. The timer sends it without a reply
    /// (and it is skipped while a sweep runs); a caller that wants the
    /// count of deleted events passes a reply port.
    Sweep {
        /// Where the number of deleted events goes.
        reply: Option<RpcReplyPort<Result<u64, StoreError>>>,
    },
}

/// The actor behaviour.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditActor;

/// What each incarnation starts from.
pub struct AuditActorArgs {
    pub(crate) ingest: Arc<Ingest>,
    pub(crate) address: Address<AuditMsg>,
    pub(crate) retention: Retention,
    pub(crate) drain_timeout: Duration,
    pub(crate) sink: AuditSink,
    pub(crate) source: String,
}

/// The running actor's state.
pub struct AuditActorState {
    ingest: Arc<Ingest>,
    retention: Retention,
    drain_timeout: Duration,
    sink: AuditSink,
    source: String,
    /// The pump; dropping the set aborts it.
    pump: JoinSet<()>,
    /// Raised to make the pump drain and return.
    stop: watch::Sender<bool>,
    /// Sweeps in progress; dropping the set aborts them.
    sweeps: JoinSet<()>,
    timer: Option<JoinHandle<()>>,
    address: Address<AuditMsg>,
}

impl Actor for AuditActor {
    type Msg = AuditMsg;
    type State = AuditActorState;
    type Arguments = AuditActorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (stop, stop_rx) = watch::channel(false);
        let mut pump_set = JoinSet::new();
        pump_set.spawn(pump(Arc::clone(&args.ingest), stop_rx));
        let timer = args.retention.is_active().then(|| {
            myself.send_interval(args.retention.interval, || AuditMsg::Sweep { reply: None })
        });
        args.address.publish(myself);
        Ok(AuditActorState {
            ingest: args.ingest,
            retention: args.retention,
            drain_timeout: args.drain_timeout,
            sink: args.sink,
            source: args.source,
            pump: pump_set,
            stop,
            sweeps: JoinSet::new(),
            timer,
            address: args.address,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AuditMsg::Sweep { reply } => {
                while state.sweeps.try_join_next().is_some() {}
                if reply.is_none() && !state.sweeps.is_empty() {
                    // The previous periodic sweep is still deleting.
                    return Ok(());
                }
                let store = Arc::clone(&state.ingest.store);
                let retention = state.retention.clone();
                let sink = state.sink.clone();
                let source = state.source.clone();
                state.sweeps.spawn(async move {
                    let result = sweep(&*store, &retention, Timestamp::now()).await;
                    match &result {
                        Ok(0) => {}
                        Ok(n) => sink.emit(
                            Event::new(
                                Level::Info,
                                source,
                                EventKind::Log,
                                format!("retention deleted {n} audit events"),
                            )
                            .with_data(json!({ "deleted": n })),
                        ),
                        Err(error) => {
                            tracing::warn!(%error, "audit retention sweep failed");
                        }
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.address.withdraw(&myself);
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        // A graceful stop commits what is queued, within the drain timeout.
        let _ = state.stop.send(true);
        let _ = tokio::time::timeout(state.drain_timeout, state.pump.join_next()).await;
        Ok(())
    }
}
