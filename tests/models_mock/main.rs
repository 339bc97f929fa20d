//! hale's model layer against a third-party mock LLM server, npm
//! `@copilotkit/aimock` (pinned in tests/support/deps.rs, installed on
//! first use), configured as an OpenAI-compatible and as an Anthropic
//! model of a real `hale serve`: issue 13's acceptance tests for
//! `Retry-After` as endpoint state, streamed replies (truncation, stalls,
//! malformed answers, dropped connections), token totals and
//! `message.delta` events. One binary, so the crate graph links once.
//!
//! Names that issue 13 introduces (config keys, fields, metric labels,
//! event names) are all in `pending.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod aimock;
mod deltas;
mod harness;
mod retry_after;
mod streams;
mod tokens;
mod vocabulary;
