//! Reading and writing `ToolOutcome`: the seed's six examples, hale's own
//! form, round trips and lenient defaults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hale_actors::{ErrorCode, Hint, HintKind, Severity, Status, ToolOutcome};
use serde_json::{Value, json};

fn parse(text: &str) -> ToolOutcome {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text} did not parse: {e}"))
}

#[test]
fn seed_1_connection_refused() {
    let o = parse(
        r#"{"status": "error", "code": "CONNECTION_REFUSED", "message": "API server unreachable", "retryable": true}"#,
    );
    assert_eq!(o.status, Status::Error);
    assert_eq!(o.code, Some(ErrorCode::ConnectionRefused));
    assert_eq!(o.message, "API server unreachable");
    assert!(o.retryable);
    assert!(o.recoverable, "recoverable comes from the catalog");
    assert_eq!(o.severity, Severity::Warning);
    assert!(o.is_failure() && !o.is_timeout());
}

#[test]
fn seed_2_etimedout_with_error_status() {
    let o = parse(
        r#"{"status": "error", "code": "ETIMEDOUT", "retryable": true, "severity": "warning"}"#,
    );
    assert_eq!(o.status, Status::Error);
    assert_eq!(o.code, Some(ErrorCode::Etimedout));
    assert!(o.retryable && o.recoverable);
    assert_eq!(o.severity, Severity::Warning);
    assert_eq!(o.message, "");
    assert!(o.is_timeout());
}

#[test]
fn hale_timeout_form_is_also_a_timeout() {
    let o = parse(r#"{"status": "timeout", "code": "ETIMEDOUT"}"#);
    assert!(o.is_timeout() && o.is_failure());
    assert_eq!(o, ToolOutcome::timeout(""));
}

#[test]
fn seed_3_success() {
    let o = parse(r#"{"status": "success"}"#);
    assert!(o.is_success() && !o.is_failure());
    assert_eq!(o.code, None);
    assert_eq!(o.data, Value::Null);
    assert!(!o.retryable && !o.recoverable);
    assert_eq!(o, ToolOutcome::success(Value::Null));

    let o = parse(r#"{"status":"success","data":{"temp":21}}"#);
    assert!(o.is_success());
    assert_eq!(o.data, json!({"temp": 21}));
}

#[test]
fn seed_4_mcp_server_unreachable() {
    let o = parse(r#"{"status": "error", "code": "MCP_SERVER_UNREACHABLE", "recoverable": true}"#);
    assert_eq!(o.code, Some(ErrorCode::McpServerUnreachable));
    assert!(o.recoverable);
    assert!(o.retryable, "retryable comes from the catalog");
    assert_eq!(o.severity, Severity::Error);
}

#[test]
fn seed_5_already_exists() {
    let o = parse(
        r#"{"status": "error", "code": "ALREADY_EXISTS", "retryable": false, "recoverable": true}"#,
    );
    assert_eq!(o.code, Some(ErrorCode::AlreadyExists));
    assert!(!o.retryable && o.recoverable);
    assert_eq!(o.severity, Severity::Warning);
}

#[test]
fn seed_6_permission_denied() {
    let o = parse(
        r#"{"status": "error", "code": "PERMISSION_DENIED", "retryable": false, "recoverable": false, "severity": "critical"}"#,
    );
    assert_eq!(o.code, Some(ErrorCode::PermissionDenied));
    assert!(!o.retryable && !o.recoverable);
    assert_eq!(o.severity, Severity::Critical);
}

#[test]
fn explicit_fields_override_the_catalog() {
    let o = parse(r#"{"status":"error","code":"INTERNAL","retryable":true,"severity":"warn"}"#);
    assert!(o.retryable);
    assert!(!o.recoverable);
    assert_eq!(o.severity, Severity::Warning);
}

#[test]
fn missing_status_is_rejected() {
    assert!(serde_json::from_str::<ToolOutcome>(r#"{"code":"INTERNAL"}"#).is_err());
    assert!(serde_json::from_str::<ToolOutcome>(r#"{"status":"exploded"}"#).is_err());
}

#[test]
fn unknown_code_and_fields_are_kept() {
    let o = parse(r#"{"status":"error","code":"QUOTA_GONE","trace_id":"t-1","nested":{"a":[1]}}"#);
    assert_eq!(o.code, Some(ErrorCode::Other("QUOTA_GONE".into())));
    assert!(!o.retryable && !o.recoverable);
    assert_eq!(o.severity, Severity::Error);
    assert_eq!(o.extra.get("trace_id"), Some(&json!("t-1")));
    assert_eq!(o.extra.get("nested"), Some(&json!({"a": [1]})));
    let back = parse(&serde_json::to_string(&o).unwrap());
    assert_eq!(back, o);
}

#[test]
fn nulls_are_read_as_missing() {
    let o = parse(r#"{"status":"error","code":null,"message":null,"hints":null,"retryable":null}"#);
    assert_eq!(o.code, None);
    assert_eq!(o.message, "");
    assert!(o.hints.is_empty());
    assert!(!o.retryable);
}

#[test]
fn hale_always_writes_every_field() {
    let v = serde_json::to_value(ToolOutcome::success(Value::Null)).unwrap();
    assert_eq!(
        v,
        json!({
            "status": "success", "code": null, "message": "", "retryable": false,
            "recoverable": false, "severity": "warning", "data": null, "hints": []
        })
    );
    let v = serde_json::to_value(ToolOutcome::from_code(ErrorCode::NotFound, "gone")).unwrap();
    assert_eq!(
        v,
        json!({
            "status": "error", "code": "NOT_FOUND", "message": "gone", "retryable": false,
            "recoverable": true, "severity": "error", "data": null, "hints": []
        })
    );
}

#[test]
fn full_outcome_round_trips() {
    let mut o = ToolOutcome::from_code(ErrorCode::RateLimited, "slow down")
        .with_data(json!({"remaining": 0, "list": [1, 2]}))
        .with_hint(Hint::new(HintKind::RetryAfter, "wait").with_suggestions(["90s"]))
        .with_hint(Hint::new(HintKind::Other("custom_kind".into()), "x"))
        .with_retry_after(Duration::from_millis(1500))
        .with_severity(Severity::Error);
    o.extra.insert("vendor".into(), json!({"id": 7}));
    let text = serde_json::to_string(&o).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["retry_after_ms"], json!(1500));
    assert_eq!(v["vendor"], json!({"id": 7}));
    assert_eq!(v["hints"][0]["kind"], json!("retry_after"));
    assert_eq!(v["hints"][1]["kind"], json!("custom_kind"));
    assert_eq!(parse(&text), o);
}

#[test]
fn retry_after_ms_is_written_only_when_known() {
    let v = serde_json::to_value(ToolOutcome::timeout("slow")).unwrap();
    assert!(v.get("retry_after_ms").is_none());
}

#[test]
fn hints_read_leniently() {
    let o = parse(
        r#"{"status":"error","hints":[{"kind":"DID_YOU_MEAN"},{"kind":"new_kind","message":"m"}]}"#,
    );
    assert_eq!(o.hints[0].kind, HintKind::DidYouMean);
    assert!(o.hints[0].suggestions.is_empty());
    assert_eq!(o.hints[1].kind, HintKind::Other("new_kind".into()));
}

#[test]
fn constructors_take_status_and_class_from_the_catalog() {
    let t = ToolOutcome::timeout("t");
    assert_eq!(
        (t.status, t.code.clone()),
        (Status::Timeout, Some(ErrorCode::Etimedout))
    );
    assert!(t.retryable);
    let b = ToolOutcome::blocked("no");
    assert_eq!(b.status, Status::Blocked);
    assert_eq!(b.code, Some(ErrorCode::PolicyBlocked));
    assert_eq!(b.severity, Severity::Critical);
    assert!(b.is_failure());
    let p = ToolOutcome::partial(json!([1]), "page 2 missing");
    assert_eq!(p.status, Status::Partial);
    assert!(!p.is_success() && !p.is_failure());
    assert_eq!(p.message, "page 2 missing");
}

#[test]
fn idempotency_only_changes_interrupted() {
    let i = ToolOutcome::from_code(ErrorCode::Interrupted, "killed");
    assert!(!i.retryable);
    assert!(i.clone().for_idempotency(true).retryable);
    assert!(!i.for_idempotency(false).retryable);
    let forced = ToolOutcome::from_code(ErrorCode::Internal, "x").with_classification(
        hale_actors::Classification::new(true, false, Severity::Error),
    );
    assert!(forced.for_idempotency(false).retryable);
}
