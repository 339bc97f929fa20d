//! The errors a supervisor's clients see.

use std::time::Duration;

use crate::spec::{ChildId, SpecError};

/// Why a request to a supervisor failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisorError {
    /// The spec was rejected before anything started.
    #[error("invalid supervisor spec: {0}")]
    InvalidSpec(#[from] SpecError),
    /// No child has this id.
    #[error("no child with id {0:?}")]
    UnknownChild(ChildId),
    /// A child with this id exists already.
    #[error("a child with id {0:?} exists already")]
    DuplicateChild(ChildId),
    /// The child's start function failed (its `pre_start` returned an error or panicked).
    #[error("child {child:?} failed to start: {reason}")]
    StartFailed {
        /// The child.
        child: ChildId,
        /// The start error's text.
        reason: String,
    },
    /// The supervisor could not be spawned.
    #[error("supervisor failed to start: {0}")]
    Spawn(String),
    /// The supervisor is not running (stopped, or gave up).
    #[error("the supervisor is not running")]
    Unavailable,
    /// The supervisor did not answer in time.
    #[error("the supervisor did not answer within {0:?}")]
    Timeout(Duration),
}
