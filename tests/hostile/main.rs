//! Hostile-agent tests: scripted agents attempt the attacks of issue 11
//! against the runtime, and each test asserts that the guard held.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support_web;
mod web;
