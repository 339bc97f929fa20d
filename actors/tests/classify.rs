//! Every classifier branch, including the seed's stderr examples and both
//! forms of `Retry-After`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Error, ErrorKind};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hale_actors::classify::{
    from_http_status, from_io_error, from_jsonrpc_error, from_process_exit, parse_retry_after,
};
use hale_actors::{ErrorCode, HintKind, Severity, Status};
use serde_json::json;

/// 2015-10-21T07:28:00Z, the instant the HTTP-date examples below name.
fn at_0728() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_445_412_480)
}

#[test]
fn io_errors_map_by_kind() {
    use ErrorCode as C;
    let cases = [
        (ErrorKind::ConnectionRefused, C::ConnectionRefused),
        (ErrorKind::AddrNotAvailable, C::ConnectionRefused),
        (ErrorKind::HostUnreachable, C::ConnectionRefused),
        (ErrorKind::NetworkUnreachable, C::ConnectionRefused),
        (ErrorKind::TimedOut, C::Etimedout),
        (ErrorKind::WouldBlock, C::Etimedout),
        (ErrorKind::NotFound, C::NotFound),
        (ErrorKind::PermissionDenied, C::PermissionDenied),
        (ErrorKind::AlreadyExists, C::AlreadyExists),
        (ErrorKind::InvalidInput, C::InvalidInput),
        (ErrorKind::InvalidData, C::InvalidInput),
        (ErrorKind::ConnectionReset, C::TransportClosed),
        (ErrorKind::ConnectionAborted, C::TransportClosed),
        (ErrorKind::BrokenPipe, C::TransportClosed),
        (ErrorKind::NotConnected, C::TransportClosed),
        (ErrorKind::UnexpectedEof, C::TransportClosed),
        (ErrorKind::Interrupted, C::Interrupted),
        (ErrorKind::FileTooLarge, C::FileTooLarge),
        (ErrorKind::OutOfMemory, C::Internal),
        (ErrorKind::Other, C::Internal),
    ];
    for (kind, code) in cases {
        let o = from_io_error(&Error::new(kind, "boom"));
        assert_eq!(o.code.as_ref(), Some(&code), "{kind:?}");
        assert_eq!(o.classification(), code.class(), "{kind:?}");
        assert_eq!(o.message, "boom");
        assert_eq!(o.data["io_kind"], json!(format!("{kind:?}")));
    }
    let o = from_io_error(&Error::from(ErrorKind::TimedOut));
    assert_eq!(o.status, Status::Timeout);
}

#[test]
fn http_2xx_is_success() {
    for status in [200, 201, 204, 299] {
        let o = from_http_status(status, Some("10"), "ok", at_0728());
        assert!(o.is_success(), "{status}");
        assert_eq!(o.retry_after, None);
    }
}

#[test]
fn http_statuses_map_to_codes() {
    use ErrorCode as C;
    let cases = [
        (429, C::RateLimited),
        (401, C::Unauthenticated),
        (403, C::PermissionDenied),
        (404, C::NotFound),
        (410, C::NotFound),
        (408, C::Etimedout),
        (504, C::Etimedout),
        (409, C::AlreadyExists),
        (413, C::FileTooLarge),
        (400, C::InvalidInput),
        (422, C::InvalidInput),
        (503, C::ServiceUnavailable),
        (500, C::ServiceUnavailable),
        (502, C::ServiceUnavailable),
        (101, C::Internal),
        (302, C::Internal),
        (700, C::Internal),
    ];
    for (status, code) in cases {
        let o = from_http_status(status, None, "", at_0728());
        assert_eq!(o.code.as_ref(), Some(&code), "{status}");
        assert_eq!(o.status, code.status(), "{status}");
        assert_eq!(o.classification(), code.class(), "{status}");
        assert_eq!(o.data, json!({"http_status": status}));
        assert_eq!(o.message, format!("HTTP {status}"));
    }
    assert!(!from_http_status(401, None, "", at_0728()).retryable);
    assert!(!from_http_status(403, None, "", at_0728()).retryable);
    assert_eq!(
        from_http_status(504, None, "", at_0728()).status,
        Status::Timeout
    );
}

#[test]
fn http_message_carries_the_body() {
    let o = from_http_status(404, None, "  {\"error\":\"no such city\"}\n", at_0728());
    assert_eq!(o.message, "HTTP 404: {\"error\":\"no such city\"}");
}

#[test]
fn retry_after_delta_seconds() {
    assert_eq!(
        parse_retry_after("120", at_0728()),
        Some(Duration::from_secs(120))
    );
    assert_eq!(parse_retry_after(" 0 ", at_0728()), Some(Duration::ZERO));
}

#[test]
fn retry_after_http_date_in_all_three_forms() {
    let now = at_0728();
    let expected = Some(Duration::from_secs(60));
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now),
        expected
    );
    assert_eq!(
        parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now),
        expected
    );
    assert_eq!(parse_retry_after("Wed Oct 21 07:29:00 2015", now), expected);
}

#[test]
fn retry_after_in_the_past_is_zero() {
    let past = "Wed, 21 Oct 2015 07:27:00 GMT";
    assert_eq!(parse_retry_after(past, at_0728()), Some(Duration::ZERO));
}

#[test]
fn retry_after_garbage_is_none() {
    for garbage in [
        "",
        "soon",
        "-5",
        "1.5",
        "99999999999999999999999",
        "Wed, 99 Oct 2015",
    ] {
        assert_eq!(parse_retry_after(garbage, at_0728()), None, "{garbage:?}");
    }
}

#[test]
fn rate_limit_carries_retry_after_and_writes_it() {
    let o = from_http_status(429, Some("120"), "", at_0728());
    assert_eq!(o.code, Some(ErrorCode::RateLimited));
    assert!(o.retryable);
    assert_eq!(o.retry_after, Some(Duration::from_secs(120)));
    assert_eq!(o.hints[0].kind, HintKind::RetryAfter);
    let v = serde_json::to_value(&o).unwrap();
    assert_eq!(v["retry_after_ms"], json!(120_000));

    let o = from_http_status(503, Some("Wed, 21 Oct 2015 07:28:30 GMT"), "", at_0728());
    assert_eq!(o.code, Some(ErrorCode::ServiceUnavailable));
    assert_eq!(o.retry_after, Some(Duration::from_secs(30)));
}

#[test]
fn retry_after_is_ignored_when_not_retryable_or_unparseable() {
    let o = from_http_status(403, Some("120"), "", at_0728());
    assert_eq!(o.retry_after, None);
    assert!(o.hints.is_empty());
    let o = from_http_status(429, Some("later"), "", at_0728());
    assert_eq!(o.retry_after, None);
    assert!(o.retryable);
}

#[test]
fn jsonrpc_codes_map() {
    use ErrorCode as C;
    let cases = [
        (-32700, C::Internal),
        (-32600, C::InvalidInput),
        (-32601, C::NotFound),
        (-32602, C::InvalidInput),
        (-32603, C::Internal),
        (-32001, C::Etimedout),
        (-32002, C::NotFound),
        (-32042, C::PolicyBlocked),
        (-32000, C::ServiceUnavailable),
        (-32050, C::ServiceUnavailable),
        (-32099, C::ServiceUnavailable),
        (-32100, C::Internal),
        (-31999, C::Internal),
        (42, C::Internal),
    ];
    for (code, expected) in cases {
        let o = from_jsonrpc_error(code, "peer says no");
        assert_eq!(o.code.as_ref(), Some(&expected), "{code}");
        assert_eq!(o.status, expected.status(), "{code}");
        assert_eq!(o.message, "peer says no");
        assert_eq!(o.data, json!({"jsonrpc_code": code}));
    }
    assert_eq!(from_jsonrpc_error(-32042, "").status, Status::Blocked);
    assert_eq!(from_jsonrpc_error(-32001, "").status, Status::Timeout);
    assert_eq!(
        from_jsonrpc_error(-32601, " ").message,
        "JSON-RPC error -32601"
    );
    assert!(from_jsonrpc_error(-32000, "busy").retryable);
}

#[test]
fn exit_zero_is_success_with_exit_data() {
    let o = from_process_exit(Some(0), None, "warning: noise");
    assert!(o.is_success());
    assert_eq!(o.data, json!({"exit_code": 0, "signal": null}));
}

#[test]
fn seed_kubectl_already_exists() {
    let stderr =
        r#"Error from server (AlreadyExists): deployments.apps "api-server" already exists"#;
    let o = from_process_exit(Some(1), None, stderr);
    assert_eq!(o.code, Some(ErrorCode::AlreadyExists));
    assert!(o.recoverable && !o.retryable);
    assert_eq!(o.message, stderr);
    assert_eq!(o.data, json!({"exit_code": 1, "signal": null}));
}

#[test]
fn seed_dropdb_permission_denied() {
    let o = from_process_exit(
        Some(1),
        None,
        "dropdb: error: permission denied to drop database\n",
    );
    assert_eq!(o.code, Some(ErrorCode::PermissionDenied));
    assert_eq!(o.severity, Severity::Critical);
    assert!(!o.recoverable);
    assert_eq!(
        o.message,
        "dropdb: error: permission denied to drop database"
    );
}

#[test]
fn seed_kubectl_connection_was_refused() {
    let stderr = "The connection to the server localhost:8080 was refused - did you specify the right host or port?";
    let o = from_process_exit(Some(1), None, stderr);
    assert_eq!(o.code, Some(ErrorCode::ConnectionRefused));
    assert!(o.retryable);
}

#[test]
fn stderr_phrases_map_case_insensitively() {
    use ErrorCode as C;
    let cases = [
        ("File ALREADY EXISTS", C::AlreadyExists),
        ("rm: Operation not permitted", C::PermissionDenied),
        (
            "Error from server (Forbidden): pods is forbidden",
            C::PermissionDenied,
        ),
        (
            "curl: (7) Failed to connect: Connection refused",
            C::ConnectionRefused,
        ),
        (
            "psql: error: could not connect to server",
            C::ConnectionRefused,
        ),
        ("Unable to connect to the server", C::ConnectionRefused),
        ("cat: x: No such file or directory", C::NotFound),
        (
            "Error from server (NotFound): pods \"x\" not found",
            C::NotFound,
        ),
        (
            "ssh: connect to host x port 22: Operation timed out",
            C::Etimedout,
        ),
        ("error: TIMEOUT waiting for lock", C::Etimedout),
        ("segfault somewhere", C::Internal),
    ];
    for (stderr, code) in cases {
        let o = from_process_exit(Some(1), None, stderr);
        assert_eq!(o.code.as_ref(), Some(&code), "{stderr}");
        assert_eq!(o.status, code.status(), "{stderr}");
    }
}

#[test]
fn phrase_order_permission_beats_not_found() {
    let o = from_process_exit(
        Some(1),
        None,
        "ls: /root/x: Permission denied (file not found in cache)",
    );
    assert_eq!(o.code, Some(ErrorCode::PermissionDenied));
    let o = from_process_exit(Some(1), None, "mkdir: x: already exists; permission denied");
    assert_eq!(o.code, Some(ErrorCode::AlreadyExists));
    let o = from_process_exit(Some(1), None, "could not connect: host not found");
    assert_eq!(o.code, Some(ErrorCode::ConnectionRefused));
    let o = from_process_exit(Some(1), None, "timed out: not found yet");
    assert_eq!(o.code, Some(ErrorCode::Etimedout));
}

#[test]
fn exit_127_is_missing_executable() {
    let o = from_process_exit(Some(127), None, "sh: kubectl: command not found");
    assert_eq!(o.code, Some(ErrorCode::NotFound));
    assert_eq!(o.hints.len(), 1);
    assert_eq!(o.hints[0].kind, HintKind::MissingExecutable);
    assert_eq!(o.message, "sh: kubectl: command not found");
}

#[test]
fn exit_126_is_permission_denied() {
    let o = from_process_exit(Some(126), None, "");
    assert_eq!(o.code, Some(ErrorCode::PermissionDenied));
    assert_eq!(o.message, "process exited with code 126");
}

#[test]
fn signal_is_interrupted_whatever_stderr_says() {
    let o = from_process_exit(None, Some(9), "permission denied");
    assert_eq!(o.code, Some(ErrorCode::Interrupted));
    assert!(!o.retryable);
    assert_eq!(o.data, json!({"exit_code": null, "signal": 9}));
    let o = from_process_exit(None, Some(15), "");
    assert_eq!(o.message, "process killed by signal 15");
}

#[test]
fn unknown_failure_is_internal_with_exit_code() {
    let o = from_process_exit(Some(3), None, "");
    assert_eq!(o.code, Some(ErrorCode::Internal));
    assert_eq!(o.message, "process exited with code 3");
    assert_eq!(o.data["exit_code"], json!(3));
    let o = from_process_exit(None, None, "");
    assert_eq!(o.code, Some(ErrorCode::Internal));
}
