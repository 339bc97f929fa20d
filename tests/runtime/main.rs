//! The runtime end to end: sessions, the seed's scenarios, chaos, and
//! crash recovery. One test binary, so the suite links it once.

mod chaos;
mod scenarios;
mod sessions;
mod support;
