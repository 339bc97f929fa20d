//! `ask_approval`: how an agent asks a human, as a tool.
//!
//! The call opens an approval and returns when a human (or the deadline)
//! decides, so the session that made it waits without blocking anything:
//! its tool call is simply in flight.
//!
//! The agent is untrusted, so what it opens is a question, never a key
//! (see [`Escalation::ask`]): the asking session comes from the
//! [`ToolContext`] (a `session` argument is refused), a deadline answers
//! with no option whatever `default_on_timeout` says, and a session may
//! have only a few questions open at once.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::catalog::ErrorCode;
use crate::escalation::{ApprovalOption, ApprovalRequest, Diagnosis, Escalation, EscalationError};
use crate::outcome::{Severity, ToolOutcome};
use crate::tool::{BoxFuture, Tool, ToolContext, ToolSpec};

/// The deadline when the agent gives none.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How many questions a session may have open at once by default.
pub const DEFAULT_MAX_OPEN_QUESTIONS: usize = 3;

/// The `ask_approval` tool.
#[derive(Debug)]
pub struct AskApproval {
    spec: ToolSpec,
    escalation: Escalation,
    max_open: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    title: String,
    description: String,
    #[serde(default)]
    options: Vec<ApprovalOption>,
    #[serde(default)]
    recommended: Option<String>,
    #[serde(default)]
    severity: Option<Severity>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    default_on_timeout: Option<String>,
    #[serde(default)]
    allow_instructions: bool,
    #[serde(default)]
    diagnosis: Option<Diagnosis>,
}

impl AskApproval {
    /// The tool over `escalation`.
    pub fn new(escalation: Escalation) -> Self {
        let spec = ToolSpec::new(
            "ask_approval",
            "Ask a human to decide. Give a title, a description, options ({id, label}), \
             the option you recommend, and optionally a diagnosis ({what, why, recommendation, \
             alternatives}). The call returns the human's choice, or no option when the \
             deadline passes (`timed_out: true`). Use it before anything destructive or when \
             recovery has run out. It never unblocks a call the runtime refused: the runtime \
             asks the human about those itself.",
            json!({
                "type": "object",
                "properties": {
                    "title": { "type": "string" },
                    "description": { "type": "string" },
                    "options": { "type": "array", "items": {
                        "type": "object",
                        "properties": { "id": { "type": "string" }, "label": { "type": "string" } },
                        "required": ["id", "label"]
                    } },
                    "recommended": { "type": "string" },
                    "severity": { "type": "string", "enum": ["warning", "error", "critical"] },
                    "timeout_ms": { "type": "integer", "minimum": 1 },
                    "default_on_timeout": { "type": "string" },
                    "allow_instructions": { "type": "boolean" },
                    "diagnosis": { "type": "object" }
                },
                "required": ["title", "description"],
                "additionalProperties": false
            }),
        );
        Self {
            spec,
            escalation,
            max_open: DEFAULT_MAX_OPEN_QUESTIONS,
        }
    }

    /// Sets how many questions a session may have open at once.
    pub fn with_max_open(mut self, max_open: usize) -> Self {
        self.max_open = max_open;
        self
    }

    async fn run(&self, args: Value, ctx: &ToolContext) -> ToolOutcome {
        if args.get("session").is_some() {
            return ToolOutcome::from_code(
                ErrorCode::InvalidInput,
                "`session` is not an argument of ask_approval: a question is always asked for \
                 the session that calls it",
            );
        }
        let Some(session) = ctx.session.as_deref() else {
            return ToolOutcome::from_code(
                ErrorCode::InvalidInput,
                "ask_approval can only be called from a session",
            );
        };
        let args: Args = match serde_json::from_value(args) {
            Ok(args) => args,
            Err(e) => {
                return ToolOutcome::from_code(ErrorCode::InvalidInput, format!("arguments: {e}"));
            }
        };
        let request = ApprovalRequest {
            title: args.title,
            description: args.description,
            diagnosis: args.diagnosis.unwrap_or_default(),
            options: args.options,
            recommended: args.recommended,
            severity: args.severity.unwrap_or(Severity::Error),
            timeout: args
                .timeout_ms
                .map_or(DEFAULT_APPROVAL_TIMEOUT, Duration::from_millis),
            // Ignored: a deadline never answers an agent's question.
            default_on_timeout: None,
            allow_instructions: args.allow_instructions,
            requester: Some(session.to_owned()),
        };
        if args.default_on_timeout.is_some() {
            tracing::debug!(session, "ask_approval: default_on_timeout ignored");
        }
        let approval = match self.escalation.ask(request, session, self.max_open).await {
            Ok(approval) => approval,
            Err(e) => return failure(e),
        };
        match self.escalation.wait(&approval.id).await {
            Ok(resolution) => ToolOutcome::success(json!({
                "approval_id": approval.id,
                "option": resolution.option,
                "instructions": resolution.instructions,
                "by": resolution.by,
                "timed_out": resolution.timed_out,
            })),
            Err(e) => failure(e),
        }
    }
}

fn failure(error: EscalationError) -> ToolOutcome {
    let code = match &error {
        EscalationError::InvalidRequest(_)
        | EscalationError::UnknownOption { .. }
        | EscalationError::InstructionsNotAllowed(_) => ErrorCode::InvalidInput,
        EscalationError::UnknownApproval(_) => ErrorCode::NotFound,
        EscalationError::AlreadyResolved { .. } => ErrorCode::AlreadyExists,
        EscalationError::Store(_) | EscalationError::Unavailable => ErrorCode::ServiceUnavailable,
        EscalationError::TooManyOpen { .. } => ErrorCode::BudgetExhausted,
    };
    ToolOutcome::from_code(code, error.to_string())
}

impl Tool for AskApproval {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, args: Value, ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        Box::pin(self.run(args, ctx))
    }
}
