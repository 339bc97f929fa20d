//! Erlang/OTP supervisors on ractor.
//!
//! ractor gives actors, links and supervision events, but no restart
//! strategies. This crate adds OTP's supervisor behaviour on top of those
//! primitives, faithfully where OTP is clear and with two additions hale needs
//! (backoff between restarts, and parking a crash-looping child instead of
//! escalating). It knows nothing of agents, tools or models: anything that is
//! a ractor actor can be supervised.
//!
//! # Using it
//!
//! ```no_run
//! # use std::time::Duration;
//! # use hale_supervision::*;
//! # async fn run(worker: ChildSpec) -> Result<(), SupervisorError> {
//! let spec = SupervisorSpec::new("hale/tools")
//!     .strategy(Strategy::OneForOne)
//!     .intensity(10, Duration::from_secs(5))
//!     .child(worker);
//! let (tools, _task) = SupervisorRef::start(spec).await?;
//! let current = tools.resolve(&ChildId::from("exec")).await?;
//! # Ok(()) }
//! ```
//!
//! # Runtime semantics
//!
//! - **Start order.** Children start in the order of the spec, each after the
//!   previous one's `pre_start` returned. If one fails to start, those already
//!   started are shut down in reverse order and the supervisor fails to start.
//!   A child's `pre_start` runs inside the supervisor's handler: keep it short
//!   and do slow work (a process, a handshake) after start.
//! - **Exit reasons.** A kill, a panic and an `Err` from a handler are
//!   abnormal; `stop(None)`, `stop("normal")`, `stop("shutdown")` and any other
//!   graceful stop are normal ([`ExitReason`]). A graceful stop with the
//!   reason `killed` cannot be told from a kill (ractor reports both alike).
//! - **Restart decision.** Permanent children are always restarted, transient
//!   ones after an abnormal exit, temporary ones never (and are forgotten)
//!   ([`decide`]).
//! - **Strategies.** one_for_one restarts the child; one_for_all shuts the
//!   others down in reverse start order and starts all again in start order;
//!   rest_for_one does the same for the child and those started after it.
//!   Children the supervisor shuts down itself are not restarts and are never
//!   counted as exits. Children that were stopped on purpose stay stopped.
//! - **Intensity.** More than `max_restarts` restarts within `period` (a
//!   failed start counts as one) make the supervisor shut all its children
//!   down in reverse start order and exit with reason
//!   `shutdown:reached_max_restart_intensity` (OTP's `shutdown`), so its
//!   parent decides: a permanent supervisor child is restarted, a transient
//!   one is not, exactly as in OTP.
//! - **Backoff** (opt-in per child): a restart waits `min * 2^attempt`, capped
//!   at `max`, stretched by up to `jitter`; the attempt count resets when the
//!   child had run for the stable period. The delay is a timer message to the
//!   supervisor, which keeps answering while it waits.
//! - **Parking** (opt-in per child): a child that exceeds its own limit stays
//!   down in state `Parked` with its last reason, is not charged to the
//!   supervisor's intensity, and is probed again after a cool-down.
//! - **Shutdown.** A supervisor that stops (or gives up) shuts its children
//!   down in reverse start order, each per its [`Shutdown`]: a brutal kill, or
//!   a graceful stop followed by a kill after the timeout. A supervisor that
//!   is *killed* does not run that code: ractor kills its children at once.
//! - **What is lost.** A kill drops the child's queued messages and cuts its
//!   running handler; a pending `call` to it fails. A graceful stop also
//!   drops queued messages (ractor's stop jumps the queue). Callers that need
//!   delivery must keep the message until it is acknowledged.
//! - **Addressing.** A restarted child is a new actor with a new ref. Keep the
//!   [`ChildId`] and resolve through [`SupervisorRef::resolve`], or publish
//!   each incarnation in an [`Address`] and call it with a
//!   [`SupervisedCall`], which re-sends a message the dead incarnation never
//!   took ([`Taken`]) under an explicit [`CallPolicy`].

mod address;
mod backoff;
mod call;
mod client;
mod error;
mod event;
mod intensity;
mod reason;
mod spec;
mod supervisor;
mod task;

pub use address::Address;
pub use backoff::{Backoff, BackoffError};
pub use call::{AfterLost, CallError, CallPolicy, SupervisedCall, Taken};
pub use client::{DEFAULT_CALL_TIMEOUT, SupervisorRef};
pub use error::SupervisorError;
pub use event::{SupervisorEvent, SupervisorEventKind, SupervisorObserver};
pub use intensity::{RestartWindow, Verdict};
pub use reason::{Decision, ExitReason, GAVE_UP_REASON, SHUTDOWN_REASON, decide};
pub use spec::{
    ChildId, ChildKind, ChildSpec, DEFAULT_SUPERVISOR_SHUTDOWN, DEFAULT_WORKER_SHUTDOWN, Intensity,
    Park, Restart, Shutdown, SpecError, StartFn, StartFuture, Strategy, SupervisorSpec,
};
pub use supervisor::{
    ChildInfo, ChildState, Supervisor, SupervisorMsg, SupervisorState, SupervisorStats, Timer,
};
pub use task::{Task, TaskActor, TaskArgs, TaskState, Work};
