//! The hidden commands that exist for hale's own tests, demos and
//! benchmarks: `hale fault-mcp`, `hale tree-demo`, `hale drive` and
//! `hale bench ...`.
//!
//! They live in the binary, not in the library: a program embedding hale
//! has no use for a fault-injecting MCP server or a load generator, and
//! keeping them out of `hale`'s public API means they can change with the
//! tests that drive them. Tests reach them the way a user would, by running
//! the built binary (`CARGO_BIN_EXE_hale`).

pub mod bench;
pub mod drive;
pub mod fault_mcp;
pub mod soak;
pub mod tree_demo;
