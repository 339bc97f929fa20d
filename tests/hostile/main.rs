//! The agent is untrusted: each test is a hostile agent attempting one
//! attack of issue 11 against the real runtime, and asserts that the guard
//! held (nothing ran or leaked, hale still serves) and that the message
//! ended in the documented state. One test binary, so the suite links it
//! once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod approvals;
mod exec;
mod rules;
mod secrets;
#[path = "../runtime/support.rs"]
mod support;
mod support_exec;
mod support_secrets;
mod support_web;
mod web;
