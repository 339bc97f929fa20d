//! Integration tests of hale's tool layer against real MCP servers
//! (`server-everything`, `server-filesystem`, `mcp-server-time`) and
//! hale's own fault-injecting server (`hale fault-mcp`), all started by
//! the tests themselves. One binary, so the crate graph links once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fallback;
mod faults;
mod harness;
mod kill;
mod real;
mod support;
