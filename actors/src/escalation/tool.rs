//! `ask_approval`: how an agent asks a human, as a tool.
//!
//! The call opens an approval and returns when a human (or the deadline)
//! decides, so the session that made it waits without blocking anything:
//! its tool call is simply in flight.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::catalog::ErrorCode;
use crate::escalation::{ApprovalOption, ApprovalRequest, Diagnosis, Escalation, EscalationError};
use crate::outcome::{Severity, ToolOutcome};
use crate::tool::{BoxFuture, Tool, ToolSpec};

/// The deadline when the agent gives none.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The `ask_approval` tool.
#[derive(Debug)]
pub struct AskApproval {
    spec: ToolSpec,
    escalation: Escalation,
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
    #[serde(default)]
    session: Option<String>,
}

impl AskApproval {
    /// The tool over `escalation`.
    pub fn new(escalation: Escalation) -> Self {
        let spec = ToolSpec::new(
            "ask_approval",
            "Ask a human to decide. Give a title, a description, options ({id, label}), \
             the option you recommend, and optionally a diagnosis ({what, why, recommendation, \
             alternatives}). The call returns the human's choice, or the default option (else \
             `abort`) when the deadline passes. Use it before anything destructive or when \
             recovery has run out.",
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
                    "diagnosis": { "type": "object" },
                    "session": { "type": "string" }
                },
                "required": ["title", "description"],
                "additionalProperties": false
            }),
        );
        Self { spec, escalation }
    }

    async fn run(&self, args: Value) -> ToolOutcome {
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
            default_on_timeout: args.default_on_timeout,
            allow_instructions: args.allow_instructions,
            requester: args.session,
        };
        let approval = match self.escalation.open(request).await {
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
    };
    ToolOutcome::from_code(code, error.to_string())
}

impl Tool for AskApproval {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call(&self, args: Value) -> BoxFuture<'_, ToolOutcome> {
        Box::pin(self.run(args))
    }
}
