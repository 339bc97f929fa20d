//! Child and supervisor specifications.
//!
//! A supervisor is configured by values, not by code paths: which children it
//! owns, in what order, how each is started, restarted and shut down. Keeping
//! these as plain data lets the supervisor validate them once at start (as
//! OTP's `check_childspec` does) and lets the restart decision stay a pure
//! function of the spec and the exit reason.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, SpawnErr};

use crate::backoff::Backoff;
use crate::event::SupervisorObserver;
use crate::supervisor::Supervisor;

/// The stable name of a child within its supervisor.
///
/// A restarted child gets a new `ActorRef`; its `ChildId` never changes, so it
/// is what callers keep and resolve through the supervisor.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildId(Arc<str>);

impl ChildId {
    /// Creates a child id from any string.
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ChildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ChildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ChildId {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for ChildId {
    fn from(value: String) -> Self {
        Self(Arc::from(value))
    }
}

/// Which children a supervisor restarts when one of them must be restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Only the child that exited is restarted.
    OneForOne,
    /// Every other running child is terminated (in reverse start order) and
    /// then all are started again in start order.
    OneForAll,
    /// The children started after the exited one are terminated (in reverse
    /// start order), then the exited child and those after it are started
    /// again in start order.
    RestForOne,
}

/// When a child is restarted after it exits (OTP's restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always restarted, whatever the exit reason.
    Permanent,
    /// Restarted only after an abnormal exit (a failure, a panic or a kill).
    Transient,
    /// Never restarted; removed from the supervisor when it exits.
    Temporary,
}

/// How a child is stopped when its supervisor terminates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Killed at once: the running handler is cut off and `post_stop` does not run.
    Brutal,
    /// Asked to stop (its `post_stop` runs); killed if it has not exited
    /// within the timeout, so a hung child cannot hang its supervisor.
    Graceful(Duration),
}

/// Whether a child is a worker or a supervisor (affects defaults only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildKind {
    /// A plain actor.
    Worker,
    /// A supervisor of its own children.
    Supervisor,
}

/// Restart intensity: more than `max_restarts` restarts within `period` make
/// the supervisor give up (OTP's MaxR / MaxT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts tolerated within `period`; one more makes the supervisor give up.
    pub max_restarts: u32,
    /// The sliding window the restarts are counted in.
    pub period: Duration,
}

impl Intensity {
    /// Creates an intensity limit.
    pub fn new(max_restarts: u32, period: Duration) -> Self {
        Self {
            max_restarts,
            period,
        }
    }
}

impl Default for Intensity {
    /// OTP's default: one restart in five seconds.
    fn default() -> Self {
        Self::new(1, Duration::from_secs(5))
    }
}

/// Parking: instead of escalating, a child that restarts more than its own
/// limit stays down, marked failed, and is probed again after a cool-down.
///
/// Its siblings are untouched and the supervisor's own intensity is not
/// charged, so one crash-looping MCP server cannot take its healthy
/// neighbours (and their backups) down with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Park {
    /// The child's own restart limit before it is parked.
    pub limit: Intensity,
    /// How long a parked child stays down before a probe starts it again.
    pub probe_after: Duration,
}

/// The boxed future a [`StartFn`] returns.
pub type StartFuture = Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>;

/// Starts one incarnation of a child, linked to the given supervisor cell.
///
/// Called once per start and restart. It must link the new actor to the cell
/// it is handed (`Actor::spawn_linked`), and should keep `pre_start` short:
/// the supervisor awaits it, so slow work (a child process, a handshake)
/// belongs in the actor's `post_start` or later.
pub type StartFn = Arc<dyn Fn(ActorCell) -> StartFuture + Send + Sync>;

/// Everything a supervisor needs to know about one child.
#[derive(Clone)]
pub struct ChildSpec {
    pub(crate) id: ChildId,
    pub(crate) start: StartFn,
    pub(crate) restart: Restart,
    pub(crate) shutdown: Shutdown,
    pub(crate) kind: ChildKind,
    pub(crate) backoff: Option<Backoff>,
    pub(crate) park: Option<Park>,
}

/// A worker's default shutdown timeout (OTP's 5000 ms).
pub const DEFAULT_WORKER_SHUTDOWN: Duration = Duration::from_secs(5);
/// A supervisor child's default shutdown timeout. OTP waits forever; hale
/// bounds it so a hung subtree cannot hang the whole tree's shutdown.
pub const DEFAULT_SUPERVISOR_SHUTDOWN: Duration = Duration::from_secs(30);

impl ChildSpec {
    /// A permanent worker started by `start`, with a graceful 5 s shutdown.
    pub fn new(id: impl Into<ChildId>, start: StartFn) -> Self {
        Self {
            id: id.into(),
            start,
            restart: Restart::Permanent,
            shutdown: Shutdown::Graceful(DEFAULT_WORKER_SHUTDOWN),
            kind: ChildKind::Worker,
            backoff: None,
            park: None,
        }
    }

    /// A permanent worker: a ractor actor built afresh by `factory` for every start.
    pub fn worker<A, F>(id: impl Into<ChildId>, factory: F) -> Self
    where
        A: Actor,
        F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let start: StartFn = Arc::new(move |supervisor: ActorCell| {
            let (actor, args) = factory();
            Box::pin(async move {
                let (actor_ref, _task) = A::spawn_linked(None, actor, args, supervisor).await?;
                Ok(actor_ref.get_cell())
            })
        });
        Self::new(id, start)
    }

    /// A permanent child supervisor whose spec `factory` builds afresh for every start.
    pub fn supervisor<F>(id: impl Into<ChildId>, factory: F) -> Self
    where
        F: Fn() -> SupervisorSpec + Send + Sync + 'static,
    {
        let start: StartFn = Arc::new(move |parent: ActorCell| {
            let spec = factory();
            Box::pin(async move {
                let (sup, _task) = Supervisor::spawn_linked(None, Supervisor, spec, parent).await?;
                Ok(sup.get_cell())
            })
        });
        let mut spec = Self::new(id, start);
        spec.kind = ChildKind::Supervisor;
        spec.shutdown = Shutdown::Graceful(DEFAULT_SUPERVISOR_SHUTDOWN);
        spec
    }

    /// Sets the restart type.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Sets how the child is stopped.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Delays restarts by an exponential backoff (OTP restarts at once).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Parks the child instead of escalating when it exceeds its own limit.
    pub fn park(mut self, park: Park) -> Self {
        self.park = Some(park);
        self
    }

    /// The child's stable id.
    pub fn id(&self) -> &ChildId {
        &self.id
    }

    /// The child's restart type.
    pub fn restart_type(&self) -> Restart {
        self.restart
    }

    /// Whether the child is a worker or a supervisor.
    pub fn kind(&self) -> ChildKind {
        self.kind
    }

    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        if self.id.as_str().is_empty() {
            return Err(SpecError::EmptyChildId);
        }
        if let Shutdown::Graceful(timeout) = self.shutdown
            && timeout.is_zero()
        {
            return Err(SpecError::ZeroShutdownTimeout(self.id.clone()));
        }
        if let Some(park) = &self.park {
            if park.limit.period.is_zero() {
                return Err(SpecError::ZeroPeriod(Some(self.id.clone())));
            }
            if park.probe_after.is_zero() {
                return Err(SpecError::ZeroProbe(self.id.clone()));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("kind", &self.kind)
            .field("backoff", &self.backoff)
            .field("park", &self.park)
            .finish_non_exhaustive()
    }
}

/// A supervisor's configuration: its name, strategy, intensity and children.
#[derive(Clone)]
pub struct SupervisorSpec {
    pub(crate) name: Arc<str>,
    pub(crate) strategy: Strategy,
    pub(crate) intensity: Intensity,
    pub(crate) children: Vec<ChildSpec>,
    pub(crate) observer: Option<Arc<dyn SupervisorObserver>>,
}

impl SupervisorSpec {
    /// A one_for_one supervisor with OTP's default intensity and no children.
    ///
    /// `name` is the supervisor's path in events (`hale/mcp`); it need not be unique.
    pub fn new(name: impl AsRef<str>) -> Self {
        Self {
            name: Arc::from(name.as_ref()),
            strategy: Strategy::OneForOne,
            intensity: Intensity::default(),
            children: Vec::new(),
            observer: None,
        }
    }

    /// Sets the restart strategy.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the restart intensity.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.intensity = Intensity::new(max_restarts, period);
        self
    }

    /// Adds a child; children start in the order they are added.
    pub fn child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }

    /// Adds several children in order.
    pub fn children(mut self, children: impl IntoIterator<Item = ChildSpec>) -> Self {
        self.children.extend(children);
        self
    }

    /// Receives every lifecycle event of this supervisor's children.
    pub fn observer(mut self, observer: Arc<dyn SupervisorObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The supervisor's name (its path in events).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks the spec as a whole: ids unique and non-empty, periods non-zero.
    ///
    /// # Errors
    /// The first problem found, naming the child it concerns.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.intensity.period.is_zero() {
            return Err(SpecError::ZeroPeriod(None));
        }
        let mut seen = std::collections::HashSet::new();
        for child in &self.children {
            child.validate()?;
            if !seen.insert(child.id.clone()) {
                return Err(SpecError::DuplicateChild(child.id.clone()));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for SupervisorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorSpec")
            .field("name", &self.name)
            .field("strategy", &self.strategy)
            .field("intensity", &self.intensity)
            .field("children", &self.children)
            .finish_non_exhaustive()
    }
}

/// A spec that cannot be run, found before anything starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Two children share an id.
    #[error("duplicate child id {0:?}")]
    DuplicateChild(ChildId),
    /// A child id is the empty string.
    #[error("a child id must not be empty")]
    EmptyChildId,
    /// An intensity period of zero would make every restart exceed it.
    #[error("restart intensity period must be non-zero{}", .0.as_ref().map(|c| format!(" (child {c:?})")).unwrap_or_default())]
    ZeroPeriod(Option<ChildId>),
    /// A parked child would be probed in a busy loop.
    #[error("park probe_after of child {0:?} must be non-zero")]
    ZeroProbe(ChildId),
    /// A graceful shutdown of zero is a brutal kill; say so explicitly.
    #[error("graceful shutdown timeout of child {0:?} must be non-zero (use Shutdown::Brutal)")]
    ZeroShutdownTimeout(ChildId),
}
