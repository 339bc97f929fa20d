//! The runtime end to end: sessions, the demo's scenarios, chaos, and
//! crash recovery. One test binary, so the suite links it once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod config_start;
mod crash;
mod limits;
mod retention;
mod scenarios;
mod sessions;
mod support;
mod tokens;
