//! Hostile agents: scripted plans that attack hale's trust boundary, each
//! followed by assertions that the guard held and hale still serves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod exec;
mod support_exec;
