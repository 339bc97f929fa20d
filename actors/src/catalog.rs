//! The one catalog of error codes and how each is classified.
//!
//! Recovery decisions (retry, fall back, escalate to a human) are only as
//! consistent as the classification they start from. If the outcome reader,
//! the HTTP classifier and the process classifier each carried their own idea
//! of whether `ETIMEDOUT` is retryable, the same failure would be retried on
//! one path and escalated on another. So the table lives here, once:
//! [`ErrorCode::class`] is the single source every default and every
//! classifier goes through, and the table in this module's tests is the
//! contract.
//!
//! The catalog sits below [`crate::outcome`]: the coarse [`Status`] and
//! the [`Severity`] a classification names are defined here, and the
//! outcome builds on them, never the other way round.

use serde::{Deserialize, Serialize};

use crate::open_enum::open_enum;

/// What happened to the call, at the coarsest level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The call did what was asked.
    Success,
    /// The call failed.
    Error,
    /// The call did not finish in time.
    Timeout,
    /// A policy stopped the call before it ran.
    Blocked,
    /// Some of the work was done; `data` holds what was produced and
    /// `message` says what is missing.
    Partial,
}

/// How serious a failure is, ordered `Warning < Error < Critical`.
///
/// Success and partial outcomes carry [`Severity::Warning`], the lowest
/// level, only because the field is always written; for them it has no
/// meaning and nothing should act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Expected turbulence; usually handled by a retry.
    #[serde(alias = "warn")]
    Warning,
    /// A real failure the agent has to deal with.
    Error,
    /// A failure that needs a human (security, data loss, policy).
    Critical,
}

open_enum! {
    /// A machine-readable failure code, spelled `SCREAMING_SNAKE_CASE` on the
    /// wire.
    ///
    /// Codes outside the catalog are kept verbatim in [`ErrorCode::Other`]
    /// and classified conservatively (not retryable, not recoverable,
    /// severity error).
    pub enum ErrorCode {
        other
        /// A code outside the catalog, kept exactly as it was received.
        Other;
        /// The peer actively refused the connection, or could not be reached.
        ConnectionRefused => "CONNECTION_REFUSED",
        /// The operation did not finish in time.
        Etimedout => "ETIMEDOUT",
        /// The service answered but is temporarily unable to serve.
        ServiceUnavailable => "SERVICE_UNAVAILABLE",
        /// The service asked us to slow down.
        RateLimited => "RATE_LIMITED",
        /// An MCP server could not be reached at all.
        McpServerUnreachable => "MCP_SERVER_UNREACHABLE",
        /// An established transport (socket, pipe, stdio) closed under us.
        TransportClosed => "TRANSPORT_CLOSED",
        /// The thing we tried to create is already there.
        AlreadyExists => "ALREADY_EXISTS",
        /// The thing we asked for does not exist.
        NotFound => "NOT_FOUND",
        /// The arguments were rejected as malformed or out of range.
        InvalidInput => "INVALID_INPUT",
        /// The request matched more than one target.
        Ambiguous => "AMBIGUOUS",
        /// An input file exceeded a size limit.
        FileTooLarge => "FILE_TOO_LARGE",
        /// A model request does not fit the model's context window (the
        /// prompt is too long). Repeating it unchanged cannot succeed; a
        /// shorter conversation or a model with a larger window can.
        ContextTooLong => "CONTEXT_TOO_LONG",
        /// The result exceeded a size limit.
        OutputTooLarge => "OUTPUT_TOO_LARGE",
        /// The operation was cut short (signal, cancellation, crash mid-call).
        Interrupted => "INTERRUPTED",
        /// The tool ran and reported a failure of its own (an MCP result
        /// with `isError: true`); its message says what went wrong.
        ToolError => "TOOL_ERROR",
        /// A token, cost or time budget ran out.
        BudgetExhausted => "BUDGET_EXHAUSTED",
        /// A bug or an unexpected state inside the tool or hale itself.
        Internal => "INTERNAL",
        /// A policy forbade the call; the outcome's status is `blocked`.
        PolicyBlocked => "POLICY_BLOCKED",
        /// The caller is known but not allowed to do this.
        PermissionDenied => "PERMISSION_DENIED",
        /// The caller could not be identified (missing or bad credentials).
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// How a failure should be treated by recovery: the three facts a policy
/// needs before it decides anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Classification {
    /// Repeating the same call unchanged may succeed.
    pub retryable: bool,
    /// The agent can make progress without a human (another call, other
    /// arguments, a fallback tool).
    pub recoverable: bool,
    /// How loudly the failure should be reported.
    pub severity: Severity,
}

impl Classification {
    /// A classification from its three facts.
    pub const fn new(retryable: bool, recoverable: bool, severity: Severity) -> Self {
        Self {
            retryable,
            recoverable,
            severity,
        }
    }
}

impl ErrorCode {
    /// Every code in the catalog, in table order.
    pub fn all() -> &'static [ErrorCode] {
        Self::KNOWN
    }

    /// The catalog's classification of this code.
    ///
    /// `INTERRUPTED` is classified as not retryable here, because repeating
    /// a half-done call is only safe when the tool is idempotent; callers
    /// that know the tool use [`ErrorCode::class_for`].
    pub fn class(&self) -> Classification {
        use ErrorCode as C;
        use Severity::{Critical, Error, Warning};
        match self {
            C::ConnectionRefused | C::Etimedout | C::ServiceUnavailable | C::RateLimited => {
                Classification::new(true, true, Warning)
            }
            C::McpServerUnreachable | C::TransportClosed => Classification::new(true, true, Error),
            C::AlreadyExists => Classification::new(false, true, Warning),
            C::NotFound | C::InvalidInput | C::Ambiguous => Classification::new(false, true, Error),
            C::FileTooLarge | C::OutputTooLarge | C::ContextTooLong => {
                Classification::new(false, true, Warning)
            }
            C::Interrupted | C::ToolError => Classification::new(false, true, Error),
            C::BudgetExhausted | C::Internal => Classification::new(false, false, Error),
            C::PolicyBlocked | C::PermissionDenied | C::Unauthenticated => {
                Classification::new(false, false, Critical)
            }
            C::Other(_) => Classification::new(false, false, Error),
        }
    }

    /// The classification for a call to a tool whose idempotency is known:
    /// an interrupted call to an idempotent tool is safe to repeat.
    pub fn class_for(&self, idempotent: bool) -> Classification {
        let mut class = self.class();
        if *self == ErrorCode::Interrupted {
            class.retryable = idempotent;
        }
        class
    }

    /// The outcome status a failure with this code carries: `blocked` for
    /// policy blocks, `timeout` for timeouts, `error` for everything else.
    pub fn status(&self) -> Status {
        match self {
            ErrorCode::PolicyBlocked => Status::Blocked,
            ErrorCode::Etimedout => Status::Timeout,
            _ => Status::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn interrupted_is_retryable_only_for_idempotent_tools() {
        assert!(!ErrorCode::Interrupted.class().retryable);
        assert!(!ErrorCode::Interrupted.class_for(false).retryable);
        assert!(ErrorCode::Interrupted.class_for(true).retryable);
        // Idempotency must not make non-interrupted failures retryable.
        assert!(!ErrorCode::NotFound.class_for(true).retryable);
    }

    #[test]
    fn status_follows_code() {
        assert_eq!(ErrorCode::PolicyBlocked.status(), Status::Blocked);
        assert_eq!(ErrorCode::Etimedout.status(), Status::Timeout);
        assert_eq!(ErrorCode::NotFound.status(), Status::Error);
        assert_eq!(ErrorCode::Other("X".into()).status(), Status::Error);
    }

    #[test]
    fn codes_read_case_insensitively_and_unknown_ones_round_trip() {
        assert_eq!(ErrorCode::parse("etimedout"), ErrorCode::Etimedout);
        let odd: ErrorCode = serde_json::from_str("\"QUOTA_GONE\"").unwrap();
        assert_eq!(odd, ErrorCode::Other("QUOTA_GONE".into()));
        assert_eq!(serde_json::to_string(&odd).unwrap(), "\"QUOTA_GONE\"");
        assert_eq!(
            serde_json::to_string(&ErrorCode::McpServerUnreachable).unwrap(),
            "\"MCP_SERVER_UNREACHABLE\""
        );
    }
}
