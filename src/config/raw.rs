//! `hale.toml` as written: serde structs that mirror the file, every table
//! `deny_unknown_fields`, with [`Spanned`] on the values whose meaning is
//! checked after parsing (names, cross-references), so those errors can
//! name a line too. Values that can be checked alone (durations, names)
//! are checked while deserializing, where toml attaches the span itself.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use super::duration::parse_duration;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub data_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub tools: RawTools,
    #[serde(default)]
    pub session: RawSession,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub dispatch: RawDispatch,
    #[serde(default)]
    pub mcp: Vec<RawMcp>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    #[serde(default)]
    pub agents: Vec<RawAgent>,
    #[serde(default)]
    pub serve: RawServe,
}

/// `[tools]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTools {
    pub workspace: Option<String>,
    pub exec_timeout: Option<Dur>,
    pub exec_max_timeout: Option<Dur>,
    pub exec_max_output_bytes: Option<usize>,
    #[serde(default)]
    pub exec_approval: Vec<RawApproval>,
    pub max_read_bytes: Option<u64>,
    pub max_write_bytes: Option<u64>,
    pub max_edit_bytes: Option<u64>,
    pub glob_max_results: Option<usize>,
    pub grep_max_matches: Option<usize>,
    pub web_fetch_timeout: Option<Dur>,
    pub web_fetch_max_bytes: Option<usize>,
    #[serde(default)]
    pub web_fetch_allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub sandbox: RawSandbox,
}

/// `[tools.sandbox]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSandbox {
    pub mode: Option<Spanned<String>>,
    pub helper: Option<String>,
    pub user: Option<Spanned<String>>,
    pub network: Option<Spanned<RawNetwork>>,
    pub max_processes: Option<u64>,
    pub max_file_size: Option<u64>,
    pub cpu_time: Option<Dur>,
    pub address_space: Option<u64>,
    #[serde(default)]
    pub env: Vec<String>,
}

/// `network = "none" | "all" | { tcp = [ports] }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawNetwork {
    Mode(String),
    Tcp { tcp: Vec<u16> },
}

/// `[[tools.exec_approval]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApproval {
    pub pattern: Spanned<String>,
    pub reason: String,
}

/// `[session]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSession {
    pub iteration_budget: Option<Spanned<u32>>,
    pub memory_prompt_bytes: Option<usize>,
    pub journal_retention: Option<Dur>,
    pub learn_from_incidents: Option<bool>,
    pub max_open_questions: Option<Spanned<usize>>,
    // issue 12 (session): the conversation budget, the turn cap, the
    // journal stall's backoff.
    pub context_budget_bytes: Option<Spanned<usize>>,
    pub max_turns_per_message: Option<Spanned<u32>>,
    pub stall_backoff: Option<Spanned<Dur>>,
    pub stall_max_backoff: Option<Spanned<Dur>>,
    pub message_retention: Option<Dur>,
    pub approval_retention: Option<Dur>,
    pub deleted_session_retention: Option<Dur>,
    // issue 13 (house): the backoff between restarts of a crashing session.
    pub restart_backoff: Option<Spanned<Dur>>,
    pub restart_max_backoff: Option<Spanned<Dur>>,
}

/// `[audit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    pub retention: Option<Dur>,
    pub max_events: Option<u64>,
    pub max_bytes: Option<u64>,
}

/// `[dispatch]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDispatch {
    pub attempt_timeout: Option<Spanned<Dur>>,
}

/// `[serve]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServe {
    pub header_read_timeout: Option<Spanned<Dur>>,
    pub idle_timeout: Option<Spanned<Dur>>,
    pub max_connections: Option<Spanned<usize>>,
    pub max_event_streams: Option<Spanned<usize>>,
    pub metrics_refresh: Option<Dur>,
}

/// `[[mcp]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMcp {
    pub name: Spanned<String>,
    pub command: Option<Spanned<String>>,
    pub args: Option<Spanned<Vec<String>>>,
    pub env: Option<Spanned<BTreeMap<String, String>>>,
    pub inherit_env: Option<Spanned<Vec<String>>>,
    pub cwd: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub timeout: Option<Dur>,
    pub connect_timeout: Option<Dur>,
    #[serde(default)]
    pub tool_timeouts: BTreeMap<String, Dur>,
    #[serde(default)]
    pub idempotent: BTreeMap<String, bool>,
    #[serde(default)]
    pub backups: Vec<Spanned<String>>,
    pub enabled: Option<bool>,
    pub restart: Option<RawRestart>,
    pub breaker: Option<RawBreaker>,
    pub max_result_bytes: Option<Spanned<u64>>,
}

/// `[mcp.restart]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRestart {
    pub min_backoff: Option<Dur>,
    pub max_backoff: Option<Dur>,
    pub jitter: Option<Spanned<f64>>,
    pub max_restarts: Option<Spanned<u32>>,
    pub period: Option<Dur>,
    pub probe_after: Option<Dur>,
}

/// `[mcp.breaker]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreaker {
    pub failures: Option<Spanned<u32>>,
    pub cool_down: Option<Spanned<Dur>>,
}

/// `[[models]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    pub name: Spanned<String>,
    pub provider: Spanned<hale_actors::model::Provider>,
    pub base_url: Option<Spanned<String>>,
    pub model: Option<String>,
    pub api_key_env: Option<String>,
    pub timeout: Option<Spanned<Dur>>,
    pub max_tokens: Option<Spanned<u32>>,
    pub max_reply_bytes: Option<Spanned<usize>>,
    pub stream: Option<bool>,
    pub stream_idle_timeout: Option<Spanned<Dur>>,
}

/// `[[agents]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgent {
    pub name: Spanned<String>,
    pub models: Option<Vec<Spanned<String>>>,
    pub tools: Option<Vec<Spanned<String>>>,
    pub mcp: Option<Vec<Spanned<String>>>,
    pub budget: Option<Spanned<u32>>,
    pub system_prompt: Option<String>,
    // issue 13 (tokens): the per-message token budget.
    pub token_budget: Option<Spanned<u64>>,
}

/// A duration string, parsed (and so checked, with the value's span) while
/// deserializing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dur {
    pub value: Duration,
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurVisitor;
        impl Visitor<'_> for DurVisitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration string such as \"500ms\", \"30s\", \"5m\", \"1h\" or \"7d\"",
                )
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Dur, E> {
                parse_duration(text)
                    .map(|value| Dur { value })
                    .map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DurVisitor)
    }
}
