//! The agent as an adversary: scripted plans attempting each attack on the
//! trust boundary, and assertions that the guard held.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod rules;
#[path = "../runtime/support.rs"]
mod support_rules;
