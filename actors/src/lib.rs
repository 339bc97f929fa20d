//! hale's domain: the shared vocabulary (typed tool outcomes, the error
//! catalog, the classifiers that produce outcomes from raw failures, the
//! audit-trail events, the [`Tool`] trait), the recovery policy, and the
//! actors that carry it out (tools, MCP servers, models, memory,
//! escalation, audit, sessions) with the store behind them.
//!
//! This crate exists so that the parts of hale that must agree on what a
//! failure *is* (the tool layer that produces outcomes, the durable core
//! that records events, the sessions that act on them) share one set of
//! definitions, and so that the product crate (`hale`: configuration,
//! wiring, HTTP API, CLI) only assembles them. The vocabulary modules
//! (`outcome`, `catalog`, `classify`, `event`, `tool`) and the policy
//! (`recovery`) hold no actors and no I/O; everything with a process, a
//! socket or a file sits in the modules around them.

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
