//! 200 sessions x 10 messages under a kill every 20 ms. Its own binary, so
//! it runs alone (cargo runs test binaries one after another) and its
//! load does not starve the timing of the other runtime tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chaos;
#[path = "../runtime/support.rs"]
mod support;
