//! Attacks on the trust boundary, each tried by a scripted hostile agent
//! against a real runtime; every test asserts that the guard held.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod secrets;
mod support_secrets;
