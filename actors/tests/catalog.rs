//! The catalog table is a contract: this file restates it literally so that
//! any change to a code's classification has to be made twice, on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hale_actors::{Classification, ErrorCode, Severity, Status};

const W: Severity = Severity::Warning;
const E: Severity = Severity::Error;
const C: Severity = Severity::Critical;

/// (wire code, retryable, recoverable, severity, status)
const TABLE: &[(&str, bool, bool, Severity, Status)] = &[
    ("CONNECTION_REFUSED", true, true, W, Status::Error),
    ("ETIMEDOUT", true, true, W, Status::Timeout),
    ("SERVICE_UNAVAILABLE", true, true, W, Status::Error),
    ("RATE_LIMITED", true, true, W, Status::Error),
    ("MCP_SERVER_UNREACHABLE", true, true, E, Status::Error),
    ("TRANSPORT_CLOSED", true, true, E, Status::Error),
    ("ALREADY_EXISTS", false, true, W, Status::Error),
    ("NOT_FOUND", false, true, E, Status::Error),
    ("INVALID_INPUT", false, true, E, Status::Error),
    ("AMBIGUOUS", false, true, E, Status::Error),
    ("FILE_TOO_LARGE", false, true, W, Status::Error),
    ("CONTEXT_TOO_LONG", false, true, W, Status::Error),
    ("OUTPUT_TOO_LARGE", false, true, W, Status::Error),
    ("INTERRUPTED", false, true, E, Status::Error),
    ("TOOL_ERROR", false, true, E, Status::Error),
    ("BUDGET_EXHAUSTED", false, false, E, Status::Error),
    ("INTERNAL", false, false, E, Status::Error),
    ("POLICY_BLOCKED", false, false, C, Status::Blocked),
    ("PERMISSION_DENIED", false, false, C, Status::Error),
    ("UNAUTHENTICATED", false, false, C, Status::Error),
];

#[test]
fn every_code_has_exactly_its_row() {
    let all = ErrorCode::all();
    assert_eq!(
        all.len(),
        TABLE.len(),
        "all() and the table disagree in size"
    );
    for code in all {
        assert!(!code.is_other(), "{code} is not a catalog code");
        let row = TABLE
            .iter()
            .find(|row| row.0 == code.as_str())
            .unwrap_or_else(|| panic!("{code} has no row in the table"));
        assert_eq!(
            code.class(),
            Classification::new(row.1, row.2, row.3),
            "classification of {code}"
        );
        assert_eq!(code.status(), row.4, "status of {code}");
    }
    for row in TABLE {
        assert!(
            all.iter().any(|c| c.as_str() == row.0),
            "{} is in the table but not in all()",
            row.0
        );
    }
}

#[test]
fn every_code_round_trips_through_json() {
    for code in ErrorCode::all() {
        let text = serde_json::to_string(code).unwrap();
        assert_eq!(text, format!("\"{}\"", code.as_str()));
        let back: ErrorCode = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, code);
    }
}

#[test]
fn unknown_codes_are_conservative() {
    let code = ErrorCode::parse("SOMETHING_NEW");
    assert_eq!(code, ErrorCode::Other("SOMETHING_NEW".into()));
    assert_eq!(code.class(), Classification::new(false, false, E));
    assert_eq!(code.class_for(true), Classification::new(false, false, E));
}

#[test]
fn interrupted_depends_on_idempotency() {
    assert!(ErrorCode::Interrupted.class_for(true).retryable);
    assert!(!ErrorCode::Interrupted.class_for(false).retryable);
    assert!(ErrorCode::Interrupted.class_for(true).recoverable);
}
