//! hale's shared vocabulary: typed tool outcomes, the error catalog, the
//! classifiers that produce outcomes from raw failures, the audit-trail
//! events, and the [`Tool`] trait.
//!
//! This crate exists so that the parts of hale that must agree on what a
//! failure *is* (the tool layer that produces outcomes, the durable core
//! that records events, the sessions that act on them) never have to depend
//! on each other to agree. Each depends only on this crate; none of them
//! owns the definitions. It deliberately holds no actors and no I/O.

pub mod audit;
pub mod builtin;
pub mod catalog;
pub mod classify;
pub mod dispatch;
pub mod escalation;
pub mod event;
pub mod mcp;
pub mod memory;
pub mod model;
mod open_enum;
pub mod outcome;
pub mod process;
pub mod recovery;
pub mod secrets;
pub mod session;
pub mod store;
pub mod supervision_events;
pub mod tool;
pub mod tool_actor;

pub use catalog::{Classification, ErrorCode};
pub use event::{Event, EventKind, EventSink, Level, MemorySink, NullSink, UnknownLevel};
pub use outcome::{Hint, HintKind, Severity, Status, ToolOutcome};
pub use tool::{
    BoxFuture, RegistryError, Tool, ToolContext, ToolRegistry, ToolSpec, call_guarded,
    closest_first, unknown_tool,
};
