//! Approvals: the one place a human decides.
//!
//! When recovery runs out (a critical failure, a policy block, a budget
//! spent) or an agent asks, the question goes to a human as an
//! *approval*: a structured diagnosis (what happened, why, what was
//! already tried), options, a recommendation, and a deadline with a
//! default. The [`EscalationActor`] owns every approval. It stores an
//! approval before acknowledging it, so an open approval survives the
//! actor's kill and a restart of the whole process, and a requester that
//! was itself restarted can find its approval again and wait for it.
//!
//! The rules are plain functions ([`decide_resolution`], [`timeout_resolution`])
//! that the actor only carries out:
//! - resolving is idempotent: the same answer again is a no-op, a
//!   different answer to a resolved approval is refused;
//! - an unknown id or option is a clear error;
//! - a deadline that passes resolves to the default option if there is
//!   one, else to `abort`: hale fails closed.
//!
//! # Who may open what
//! The agent is untrusted: whatever it reads can steer what it asks. So
//! an approval's [`Origin`] is not a field of the request; it is set by
//! the [`Escalation`] method that opened it. [`Escalation::open_gate`] is
//! the runtime's (a blocked call, a critical outcome, an open breaker, a
//! spent budget) and binds the approval to exactly one call, its
//! [`Gate`]; only such an approval can let a gated call through, through
//! a grant keyed by the same gate. [`Escalation::ask`] is the agent's
//! (`ask_approval`): a question, never a key. It is bound to no call, its
//! deadline ignores any default (a timeout answers with no option), and a
//! session may only have a few open at once.

mod actor;
mod grants;
mod store;
mod tool;

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use actor::{
    ApprovalNotice, Escalation, EscalationActor, EscalationArgs, EscalationMsg, NOTICE_BUFFER,
    escalation_child,
};
pub use grants::{ApprovalGrants, GrantKey};
pub use store::{
    ApprovalStore, ApprovalStoreError, FileApprovalStore, MemoryApprovalStore, StoreApprovals,
};
pub use tool::{AskApproval, DEFAULT_APPROVAL_TIMEOUT, DEFAULT_MAX_OPEN_QUESTIONS};

use crate::outcome::Severity;

/// The option every approval implicitly has, chosen when a deadline
/// passes without a default: stop, do nothing.
pub const ABORT: &str = "abort";

/// One choice offered to the human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalOption {
    /// Stable id, such as `retry_with_backup`.
    pub id: String,
    /// What the human reads.
    pub label: String,
}

/// Why the human is asked: what happened, why hale could not handle it,
/// and what it recommends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// What happened: the failure and its context (the outcome, the tool,
    /// the session's goal).
    pub what: String,
    /// Why it could not be handled: its classification and the attempts
    /// made.
    pub why: String,
    /// What hale recommends, in words.
    pub recommendation: String,
    /// The other ways out, in words.
    #[serde(default)]
    pub alternatives: Vec<String>,
    /// Structured detail (the outcome, the attempt history).
    #[serde(default)]
    pub context: Value,
}

/// What a requester asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// One line.
    pub title: String,
    /// The situation, for the human.
    pub description: String,
    /// The structured diagnosis.
    #[serde(default)]
    pub diagnosis: Diagnosis,
    /// The choices; `abort` is always accepted besides them.
    pub options: Vec<ApprovalOption>,
    /// The option hale recommends, if any (must be one of `options`).
    #[serde(default)]
    pub recommended: Option<String>,
    /// How serious the situation is.
    pub severity: Severity,
    /// How long the human has.
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// The option taken when the deadline passes; `abort` when `None`.
    #[serde(default)]
    pub default_on_timeout: Option<String>,
    /// Whether the human may answer with free-text instructions instead
    /// of an option.
    #[serde(default)]
    pub allow_instructions: bool,
    /// Who asks (a session id), so a restarted requester can find it.
    #[serde(default)]
    pub requester: Option<String>,
}

/// How an approval ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The chosen option (`abort` included); `None` when the human gave
    /// instructions instead.
    pub option: Option<String>,
    /// Free-text instructions, when allowed and given.
    pub instructions: Option<String>,
    /// Who decided: a person's name, or `timeout`.
    pub by: String,
    /// When.
    pub at: Timestamp,
    /// Whether the deadline decided.
    pub timed_out: bool,
}

/// A human's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// One of the options (or `abort`).
    Option(String),
    /// Free-text instructions (only when the approval allows them).
    Instructions(String),
}

/// Who opened an approval: set by the [`Escalation`] method used, never
/// by a field anyone can fill in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A gate of the runtime: a blocked call, a critical outcome, an open
    /// breaker with no fallback, a spent budget. Bound to one call.
    Runtime,
    /// The agent asked (`ask_approval`): a question, never a key. Stored
    /// approvals from before origins existed read as this (fail closed).
    #[default]
    Agent,
}

impl Origin {
    /// The wire name: `runtime` or `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Runtime => "runtime",
            Origin::Agent => "agent",
        }
    }
}

/// The one call a runtime approval was opened for. A decision on it can
/// let through exactly this call: this session's message, this step, this
/// tool, these arguments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Gate {
    /// The session.
    pub session: String,
    /// The message's sequence number in the session.
    pub message: u64,
    /// The step: the call's id in the session's journal.
    pub step: String,
    /// The tool.
    pub tool: String,
    /// SHA-256 of the arguments' canonical JSON ([`args_digest`]).
    pub args_digest: String,
}

impl Gate {
    /// The gate of `tool` called with `args` at `step` of `session`'s
    /// message `message`.
    pub fn new(
        session: impl Into<String>,
        message: u64,
        step: impl Into<String>,
        tool: impl Into<String>,
        args: &Value,
    ) -> Self {
        Self {
            session: session.into(),
            message,
            step: step.into(),
            tool: tool.into(),
            args_digest: args_digest(args),
        }
    }
}

/// The hex SHA-256 of `args`' JSON text. `serde_json`'s maps are ordered
/// by key, so the text, and the digest, are canonical: the same arguments
/// always give the same digest.
pub fn args_digest(args: &Value) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write;
    let digest = Sha256::digest(args.to_string().as_bytes());
    digest.iter().fold(String::with_capacity(64), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// An approval as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// Unique id.
    pub id: String,
    /// What was asked.
    pub request: ApprovalRequest,
    /// When it was opened.
    pub opened_at: Timestamp,
    /// When the default applies.
    pub deadline: Timestamp,
    /// `None` while open.
    pub resolution: Option<Resolution>,
    /// Who opened it.
    #[serde(default)]
    pub origin: Origin,
    /// The call it was opened for (runtime approvals only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
}

impl Approval {
    /// Whether it still waits for a human.
    pub fn is_open(&self) -> bool {
        self.resolution.is_none()
    }
}

/// Why an escalation operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EscalationError {
    /// No approval has this id.
    #[error("no approval with id `{0}`")]
    UnknownApproval(String),
    /// The option is not one the approval offers.
    #[error("approval `{id}` has no option `{option}` (options: {known})")]
    UnknownOption {
        /// The approval.
        id: String,
        /// The option given.
        option: String,
        /// The valid ids, comma-separated.
        known: String,
    },
    /// Instructions were given where only options are allowed.
    #[error("approval `{0}` does not accept free-text instructions; choose an option")]
    InstructionsNotAllowed(String),
    /// The approval was already resolved differently.
    #[error("approval `{id}` was already resolved with {existing}; refusing {attempted}")]
    AlreadyResolved {
        /// The approval.
        id: String,
        /// What it was resolved with.
        existing: String,
        /// What was attempted now.
        attempted: String,
    },
    /// The request itself is unusable.
    #[error("invalid approval request: {0}")]
    InvalidRequest(String),
    /// The store failed; nothing was acknowledged.
    #[error("approval store: {0}")]
    Store(String),
    /// The session already has as many open questions as it may.
    #[error(
        "session `{session}` already has {open} open questions (at most {limit}); wait for an answer before asking again"
    )]
    TooManyOpen {
        /// The asking session.
        session: String,
        /// How many are open.
        open: usize,
        /// The most it may have.
        limit: usize,
    },
    /// The escalation actor is not running (restarting) and did not come
    /// back in time.
    #[error("the escalation actor is not available")]
    Unavailable,
}

/// Checks a request before anything is stored.
///
/// # Errors
/// [`EscalationError::InvalidRequest`] naming the problem.
pub fn validate_request(request: &ApprovalRequest) -> Result<(), EscalationError> {
    let invalid = |why: String| Err(EscalationError::InvalidRequest(why));
    if request.title.trim().is_empty() {
        return invalid("the title is empty".into());
    }
    if request.options.is_empty() && !request.allow_instructions {
        return invalid("no options and no instructions allowed: nothing to answer".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for option in &request.options {
        if option.id.trim().is_empty() {
            return invalid("an option has an empty id".into());
        }
        if option.id == ABORT {
            return invalid(format!("`{ABORT}` is implicit; do not list it"));
        }
        if !seen.insert(option.id.as_str()) {
            return invalid(format!("option `{}` is listed twice", option.id));
        }
    }
    for (field, value) in [
        ("recommended", &request.recommended),
        ("default_on_timeout", &request.default_on_timeout),
    ] {
        if let Some(id) = value
            && id != ABORT
            && !seen.contains(id.as_str())
        {
            return invalid(format!("{field} `{id}` is not one of the options"));
        }
    }
    if request.timeout.is_zero() {
        return invalid("the timeout is zero".into());
    }
    Ok(())
}

/// What resolving `approval` with `answer` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveEffect {
    /// Store this resolution and tell the waiters.
    Apply(Resolution),
    /// It was already resolved with the same answer: nothing to do.
    Unchanged(Resolution),
}

/// The resolution rule: validates `answer` against `approval` and says
/// what to do. Pure; the actor stores and notifies.
///
/// # Errors
/// Unknown option, instructions not allowed, or a different answer to a
/// resolved approval.
pub fn decide_resolution(
    approval: &Approval,
    answer: &Answer,
    by: &str,
    now: Timestamp,
) -> Result<ResolveEffect, EscalationError> {
    let (option, instructions) = match answer {
        Answer::Option(option) => {
            let known = option == ABORT || approval.request.options.iter().any(|o| &o.id == option);
            if !known {
                let mut ids: Vec<&str> = approval
                    .request
                    .options
                    .iter()
                    .map(|o| o.id.as_str())
                    .collect();
                ids.push(ABORT);
                return Err(EscalationError::UnknownOption {
                    id: approval.id.clone(),
                    option: option.clone(),
                    known: ids.join(", "),
                });
            }
            (Some(option.clone()), None)
        }
        Answer::Instructions(text) => {
            if !approval.request.allow_instructions {
                return Err(EscalationError::InstructionsNotAllowed(approval.id.clone()));
            }
            (None, Some(text.clone()))
        }
    };
    if let Some(existing) = &approval.resolution {
        if existing.option == option && existing.instructions == instructions {
            return Ok(ResolveEffect::Unchanged(existing.clone()));
        }
        return Err(EscalationError::AlreadyResolved {
            id: approval.id.clone(),
            existing: describe(existing),
            attempted: match answer {
                Answer::Option(o) => format!("option `{o}`"),
                Answer::Instructions(_) => "instructions".to_owned(),
            },
        });
    }
    Ok(ResolveEffect::Apply(Resolution {
        option,
        instructions,
        by: by.to_owned(),
        at: now,
        timed_out: false,
    }))
}

/// The resolution a passed deadline gives: for a runtime approval the
/// default option, or `abort` when there is none (fail closed); for an
/// agent's question no option at all, whatever default it asked for, so a
/// timeout can never stand in for a human's yes.
pub fn timeout_resolution(approval: &Approval, now: Timestamp) -> Resolution {
    let option = match approval.origin {
        Origin::Runtime => Some(
            approval
                .request
                .default_on_timeout
                .clone()
                .unwrap_or_else(|| ABORT.to_owned()),
        ),
        Origin::Agent => None,
    };
    Resolution {
        option,
        instructions: None,
        by: "timeout".to_owned(),
        at: now,
        timed_out: true,
    }
}

fn describe(resolution: &Resolution) -> String {
    match (&resolution.option, &resolution.instructions) {
        (Some(option), _) => format!("option `{option}`"),
        (None, Some(_)) => "instructions".to_owned(),
        (None, None) => "nothing".to_owned(),
    }
}

mod millis {
    //! Durations as whole milliseconds on the wire.
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn approval(default: Option<&str>, instructions: bool) -> Approval {
        Approval {
            id: "apr-1".into(),
            request: ApprovalRequest {
                title: "migrate?".into(),
                description: "d".into(),
                diagnosis: Diagnosis::default(),
                options: vec![
                    ApprovalOption {
                        id: "a".into(),
                        label: "A".into(),
                    },
                    ApprovalOption {
                        id: "b".into(),
                        label: "B".into(),
                    },
                ],
                recommended: Some("a".into()),
                severity: Severity::Error,
                timeout: Duration::from_secs(60),
                default_on_timeout: default.map(str::to_owned),
                allow_instructions: instructions,
                requester: None,
            },
            opened_at: Timestamp::UNIX_EPOCH,
            deadline: Timestamp::UNIX_EPOCH,
            resolution: None,
            origin: Origin::Runtime,
            gate: None,
        }
    }

    #[test]
    fn resolving_is_idempotent_and_refuses_a_different_answer() {
        let mut a = approval(None, false);
        let now = Timestamp::UNIX_EPOCH;
        let ResolveEffect::Apply(r) =
            decide_resolution(&a, &Answer::Option("a".into()), "ops", now).unwrap()
        else {
            panic!("first answer not applied");
        };
        a.resolution = Some(r.clone());
        assert_eq!(
            decide_resolution(&a, &Answer::Option("a".into()), "ops", now).unwrap(),
            ResolveEffect::Unchanged(r)
        );
        assert!(matches!(
            decide_resolution(&a, &Answer::Option("b".into()), "ops", now),
            Err(EscalationError::AlreadyResolved { .. })
        ));
    }

    #[test]
    fn unknown_options_and_unwanted_instructions_are_refused() {
        let a = approval(None, false);
        let now = Timestamp::UNIX_EPOCH;
        let err = decide_resolution(&a, &Answer::Option("c".into()), "x", now).unwrap_err();
        assert!(err.to_string().contains("a, b, abort"), "{err}");
        assert_eq!(
            decide_resolution(&a, &Answer::Instructions("do x".into()), "x", now),
            Err(EscalationError::InstructionsNotAllowed("apr-1".into()))
        );
        assert!(matches!(
            decide_resolution(&a, &Answer::Option(ABORT.into()), "x", now),
            Ok(ResolveEffect::Apply(_))
        ));
        let b = approval(None, true);
        assert!(matches!(
            decide_resolution(&b, &Answer::Instructions("do x".into()), "x", now),
            Ok(ResolveEffect::Apply(_))
        ));
    }

    #[test]
    fn a_deadline_takes_the_default_or_fails_closed() {
        let now = Timestamp::UNIX_EPOCH;
        let with_default = timeout_resolution(&approval(Some("b"), false), now);
        assert_eq!(with_default.option.as_deref(), Some("b"));
        assert!(with_default.timed_out);
        let without = timeout_resolution(&approval(None, false), now);
        assert_eq!(without.option.as_deref(), Some(ABORT));
    }

    #[test]
    fn an_agents_question_times_out_with_no_option_whatever_default_it_asked_for() {
        let now = Timestamp::UNIX_EPOCH;
        let mut asked = approval(Some("a"), false);
        asked.origin = Origin::Agent;
        let resolution = timeout_resolution(&asked, now);
        assert_eq!(resolution.option, None);
        assert!(resolution.timed_out);
    }

    #[test]
    fn the_args_digest_is_canonical_and_tells_arguments_apart() {
        let a = args_digest(&serde_json::json!({"command": "dropdb x", "timeout_ms": 5}));
        let b = args_digest(&serde_json::json!({"timeout_ms": 5, "command": "dropdb x"}));
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert_ne!(a, args_digest(&serde_json::json!({"command": "dropdb y"})));
    }

    #[test]
    fn requests_are_validated() {
        let mut r = approval(None, false).request;
        assert!(validate_request(&r).is_ok());
        r.default_on_timeout = Some("zzz".into());
        assert!(
            validate_request(&r)
                .unwrap_err()
                .to_string()
                .contains("default_on_timeout")
        );
        r.default_on_timeout = None;
        r.options.push(ApprovalOption {
            id: "a".into(),
            label: "again".into(),
        });
        assert!(
            validate_request(&r)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }
}
