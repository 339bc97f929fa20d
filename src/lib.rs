//! hale: a self-healing runtime for AI agents.
//!
//! This crate is the product layer: the `hale` binary's commands and, as the
//! runtime grows, its configuration, wiring of the root supervision tree and
//! control plane. The supervision semantics live in `hale-supervision`, the
//! domain vocabulary in `hale-actors`.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod conn_limits;
pub mod data_dir;
pub mod demo;
pub mod masked_log;
pub mod metrics;
pub mod runtime;
pub mod sandbox;
pub mod serve;

pub use hale_actors as actors;
pub use hale_supervision as supervision;
