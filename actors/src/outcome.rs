//! The typed result of every tool call.
//!
//! hale's promise is that a tool call never just "throws": it always comes
//! back as a [`ToolOutcome`] that says whether it worked and, if not, whether
//! repeating it could help, whether the agent can route around it, and how
//! serious it is. Recovery policies, the audit trail and the model itself all
//! read this one shape, so it has to be both strict and forgiving: hale
//! always writes every field (readers never guess), and hale reads whatever
//! a tool or foreign server sends as long as it has a `status`, filling gaps
//! from the error catalog and keeping unknown fields instead of dropping
//! them.

use std::time::Duration;

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

// Status and Severity are the catalog's vocabulary (a code's class names
// a severity, a code implies a status); they are re-exported here because
// every reader of an outcome needs them.
use crate::catalog::{Classification, ErrorCode};
pub use crate::catalog::{Severity, Status};
use crate::open_enum::open_enum;

open_enum! {
    /// What kind of self-repair suggestion a [`Hint`] carries, spelled
    /// `snake_case` on the wire.
    pub enum HintKind {
        other
        /// A kind outside this vocabulary, kept as received.
        Other;
        /// A near miss: the suggestions are the names that were probably meant.
        DidYouMean => "did_you_mean",
        /// Another tool or approach that can achieve the same goal.
        TryInstead => "try_instead",
        /// A program the tool needs is not installed or not on `PATH`.
        MissingExecutable => "missing_executable",
        /// The peer said when to try again.
        RetryAfter => "retry_after",
    }
}

/// A structured suggestion for how the agent might repair a failed call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hint {
    /// What sort of suggestion this is.
    pub kind: HintKind,
    /// Human- and model-readable explanation.
    #[serde(default)]
    pub message: String,
    /// Concrete candidates (names, commands, arguments), best first.
    #[serde(default)]
    pub suggestions: Vec<String>,
}

impl Hint {
    /// A hint with no suggestions yet.
    pub fn new(kind: HintKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            suggestions: Vec::new(),
        }
    }

    /// Replaces the suggestions, keeping the given order (best first).
    pub fn with_suggestions<I, S>(mut self, suggestions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.suggestions = suggestions.into_iter().map(Into::into).collect();
        self
    }
}

/// The outcome of one tool call. See the module docs for the reading and
/// writing rules.
///
/// On the wire it is a JSON object with, always, `status`, `code` (`null`
/// when there is none), `message`, `retryable`, `recoverable`, `severity`,
/// `data` and `hints`; `retry_after_ms` when known; and any unknown fields
/// that were read, written back at the top level.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutcome {
    /// Coarse result.
    pub status: Status,
    /// Machine-readable failure code; `None` for success.
    pub code: Option<ErrorCode>,
    /// Explanation for the model and for humans; empty when there is nothing
    /// to say.
    pub message: String,
    /// Repeating the same call unchanged may succeed.
    pub retryable: bool,
    /// The agent can make progress without a human.
    pub recoverable: bool,
    /// How serious the failure is (meaningless for success; see [`Severity`]).
    pub severity: Severity,
    /// The tool's payload (`Null` when there is none).
    pub data: Value,
    /// Self-repair suggestions.
    pub hints: Vec<Hint>,
    /// When the peer said to try again; written as whole milliseconds.
    pub retry_after: Option<Duration>,
    /// Fields hale does not know, kept so they survive a round trip.
    pub extra: Map<String, Value>,
}

/// Field names hale owns; `extra` must never shadow them on the wire.
const OWN_FIELDS: [&str; 9] = [
    "status",
    "code",
    "message",
    "retryable",
    "recoverable",
    "severity",
    "data",
    "hints",
    "retry_after_ms",
];

/// The top-level field that marks an outcome hale made before delivering
/// the call (see [`ToolOutcome::undelivered`]).
const DELIVERED_FIELD: &str = "delivered";

/// The classification of an outcome that carries no failure.
const NO_FAILURE: Classification = Classification::new(false, false, Severity::Warning);

impl ToolOutcome {
    fn with_status(status: Status, class: Classification) -> Self {
        Self {
            status,
            code: None,
            message: String::new(),
            retryable: class.retryable,
            recoverable: class.recoverable,
            severity: class.severity,
            data: Value::Null,
            hints: Vec::new(),
            retry_after: None,
            extra: Map::new(),
        }
    }

    /// A successful call carrying `data` (`Value::Null` for none).
    pub fn success(data: Value) -> Self {
        Self::with_status(Status::Success, NO_FAILURE).with_data(data)
    }

    /// A partly successful call: `data` is what was produced, `message` what
    /// is missing.
    pub fn partial(data: Value, message: impl Into<String>) -> Self {
        let mut outcome = Self::with_status(Status::Partial, NO_FAILURE).with_data(data);
        outcome.message = message.into();
        outcome
    }

    /// A failure with the status and classification the catalog gives `code`.
    pub fn from_code(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut outcome = Self::with_status(code.status(), code.class());
        outcome.code = Some(code);
        outcome.message = message.into();
        outcome
    }

    /// A timeout (`ETIMEDOUT`, status `timeout`).
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::from_code(ErrorCode::Etimedout, message)
    }

    /// A policy block (`POLICY_BLOCKED`, status `blocked`).
    pub fn blocked(message: impl Into<String>) -> Self {
        Self::from_code(ErrorCode::PolicyBlocked, message)
    }

    /// Adds a self-repair hint.
    pub fn with_hint(mut self, hint: Hint) -> Self {
        self.hints.push(hint);
        self
    }

    /// Records when the peer said to try again.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Replaces the payload.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    /// Overrides the catalog's severity.
    pub fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// Overrides the catalog's classification wholesale.
    pub fn with_classification(mut self, class: Classification) -> Self {
        self.retryable = class.retryable;
        self.recoverable = class.recoverable;
        self.severity = class.severity;
        self
    }

    /// Re-reads an `INTERRUPTED` outcome in the light of the tool's
    /// idempotency (see [`ErrorCode::class_for`]); other outcomes are
    /// returned unchanged, so an explicit classification is never undone.
    pub fn for_idempotency(mut self, idempotent: bool) -> Self {
        if self.code == Some(ErrorCode::Interrupted) {
            self.retryable = ErrorCode::Interrupted.class_for(idempotent).retryable;
        }
        self
    }

    /// Marks a failure that hale produced before the call left it (the
    /// target was not running, a breaker or cap refused it), so recovery
    /// knows nothing can have happened and re-issuing is safe even for a
    /// non-idempotent tool. On the wire it is the top-level field
    /// `"delivered": false`, which also tells a model the call never ran.
    pub fn undelivered(mut self) -> Self {
        self.extra
            .insert(DELIVERED_FIELD.to_owned(), Value::Bool(false));
        self
    }

    /// Whether [`undelivered`](Self::undelivered) marked this outcome.
    pub fn is_undelivered(&self) -> bool {
        self.extra.get(DELIVERED_FIELD) == Some(&Value::Bool(false))
    }

    /// Marks a failure that happened after the call's effect started (a
    /// command that ran and then exited non-zero), whatever its code
    /// suggests: `CONNECTION_REFUSED` in a `curl` command's stderr says
    /// the *command's* peer refused, not that the command never ran. On
    /// the wire it is `"delivered": true`; recovery then never re-issues
    /// a non-idempotent call, and the failure does not count against the
    /// endpoint's breaker (the tool itself worked).
    pub fn delivered(mut self) -> Self {
        self.extra
            .insert(DELIVERED_FIELD.to_owned(), Value::Bool(true));
        self
    }

    /// Whether [`delivered`](Self::delivered) marked this outcome.
    pub fn is_delivered(&self) -> bool {
        self.extra.get(DELIVERED_FIELD) == Some(&Value::Bool(true))
    }

    /// The three recovery facts of this outcome.
    pub fn classification(&self) -> Classification {
        Classification::new(self.retryable, self.recoverable, self.severity)
    }

    /// The call fully succeeded.
    pub fn is_success(&self) -> bool {
        self.status == Status::Success
    }

    /// The call failed outright (error, timeout or blocked). A partial
    /// outcome is neither a success nor a failure.
    pub fn is_failure(&self) -> bool {
        matches!(
            self.status,
            Status::Error | Status::Timeout | Status::Blocked
        )
    }

    /// The call timed out, whether said hale's way (status `timeout`) or
    /// as many tools say it (status `error`, code `ETIMEDOUT`).
    pub fn is_timeout(&self) -> bool {
        self.status == Status::Timeout || self.code == Some(ErrorCode::Etimedout)
    }
}

impl Serialize for ToolOutcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("status", &self.status)?;
        map.serialize_entry("code", &self.code)?;
        map.serialize_entry("message", &self.message)?;
        map.serialize_entry("retryable", &self.retryable)?;
        map.serialize_entry("recoverable", &self.recoverable)?;
        map.serialize_entry("severity", &self.severity)?;
        map.serialize_entry("data", &self.data)?;
        map.serialize_entry("hints", &self.hints)?;
        if let Some(after) = self.retry_after {
            let millis = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            map.serialize_entry("retry_after_ms", &millis)?;
        }
        for (key, value) in &self.extra {
            // A duplicate key would make the reader's result depend on which
            // occurrence it keeps; hale's own field wins.
            if !OWN_FIELDS.contains(&key.as_str()) {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

/// The wire shape as read: everything but `status` may be missing or null.
#[derive(Deserialize)]
struct RawOutcome {
    status: Status,
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    retryable: Option<bool>,
    #[serde(default)]
    recoverable: Option<bool>,
    #[serde(default)]
    severity: Option<Severity>,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    hints: Option<Vec<Hint>>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl RawOutcome {
    fn into_outcome(self) -> ToolOutcome {
        let code = match self.code {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(ErrorCode::parse(&s)),
            // Foreign servers sometimes send numeric codes; keep them
            // rather than reject the whole outcome.
            Some(other) => Some(ErrorCode::Other(other.to_string())),
        };
        // A timeout or block without a code still means what the status says,
        // so its defaults come from the code the status implies.
        let implied = code.clone().or(match self.status {
            Status::Timeout => Some(ErrorCode::Etimedout),
            Status::Blocked => Some(ErrorCode::PolicyBlocked),
            Status::Success | Status::Partial | Status::Error => None,
        });
        let defaults = match (&implied, self.status) {
            (Some(code), _) => code.class(),
            (None, Status::Success | Status::Partial) => NO_FAILURE,
            (None, _) => Classification::new(false, false, Severity::Error),
        };
        ToolOutcome {
            status: self.status,
            code,
            message: self.message.unwrap_or_default(),
            retryable: self.retryable.unwrap_or(defaults.retryable),
            recoverable: self.recoverable.unwrap_or(defaults.recoverable),
            severity: self.severity.unwrap_or(defaults.severity),
            data: self.data,
            hints: self.hints.unwrap_or_default(),
            retry_after: self.retry_after_ms.map(Duration::from_millis),
            extra: self.extra,
        }
    }
}

impl<'de> Deserialize<'de> for ToolOutcome {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RawOutcome::deserialize(deserializer).map(RawOutcome::into_outcome)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn extra_never_shadows_own_fields_on_the_wire() {
        let mut outcome = ToolOutcome::success(json!(1));
        outcome.extra.insert("status".into(), json!("error"));
        outcome.extra.insert("trace_id".into(), json!("abc"));
        let text = serde_json::to_string(&outcome).unwrap();
        assert_eq!(text.matches("\"status\"").count(), 1);
        let back: ToolOutcome = serde_json::from_str(&text).unwrap();
        assert!(back.is_success());
        assert_eq!(back.extra.get("trace_id"), Some(&json!("abc")));
    }

    #[test]
    fn numeric_code_is_kept_not_rejected() {
        let outcome: ToolOutcome =
            serde_json::from_str(r#"{"status":"error","code":-32601}"#).unwrap();
        assert_eq!(outcome.code, Some(ErrorCode::Other("-32601".into())));
        assert!(!outcome.retryable);
    }

    /// Found by the outcome-reader property (issue 12): without serde_json's
    /// `float_roundtrip` a float in `data` read back one ulp off after a
    /// write, so an outcome changed on every journal round trip.
    #[test]
    fn floats_survive_a_write_and_a_read() {
        let value = json!({"status": "success", "data": [-2.212_281_258_570_282_3e41, 0.1]});
        let outcome: ToolOutcome = serde_json::from_value(value).unwrap();
        let text = serde_json::to_string(&outcome).unwrap();
        let back: ToolOutcome = serde_json::from_str(&text).unwrap();
        assert_eq!(back, outcome);
    }

    #[test]
    fn codeless_timeout_and_block_take_implied_defaults() {
        let t: ToolOutcome = serde_json::from_str(r#"{"status":"timeout"}"#).unwrap();
        assert!(t.retryable && t.recoverable && t.is_timeout());
        assert_eq!(t.code, None);
        let b: ToolOutcome = serde_json::from_str(r#"{"status":"blocked"}"#).unwrap();
        assert_eq!(b.severity, Severity::Critical);
        let e: ToolOutcome = serde_json::from_str(r#"{"status":"error"}"#).unwrap();
        assert_eq!(
            e.classification(),
            Classification::new(false, false, Severity::Error)
        );
    }
}
