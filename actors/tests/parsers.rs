//! Property tests of every parser of outside input in hale-actors (issue
//! 12): the scripted plan, the tool-outcome reader, the classifiers,
//! `Retry-After`, model reply bodies, MCP results and the exec approval
//! rules' command-line reader.
//!
//! Each of these reads text a peer chose (a model, a tool, an MCP server, a
//! user's command), so none may panic, every classifier must give every
//! input an outcome, and where a value is written and read back the round
//! trip must hold. The same functions are fuzzed by the targets in
//! `fuzz/`; these properties keep the guarantees in the normal suite.
//! Case counts stay modest so the suite stays fast.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hale_actors::builtin::command_line::{self, SimpleCommand};
use hale_actors::catalog::ErrorCode;
use hale_actors::classify::{
    self, MAX_EXCERPT_BYTES, from_anthropic_http_error, from_http_status, from_jsonrpc_error,
    from_openai_http_error, from_process_exit, parse_retry_after,
};
use hale_actors::mcp::convert;
use hale_actors::model::{ChatMessage, ModelRequest, anthropic, openai, scripted_reply};
use hale_actors::outcome::{Status, ToolOutcome};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, nested a few levels, with keys drawn partly from the
/// vocabularies the readers look for so that the interesting branches are
/// reached.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        3 => prop::sample::select(vec![
            "status", "code", "message", "retryable", "recoverable", "severity", "data",
            "hints", "retry_after_ms", "kind", "suggestions", "delivered", "steps", "reply",
            "on_approval", "tool", "args", "choices", "content", "tool_calls", "function",
            "name", "arguments", "id", "type", "text", "input", "isError",
            "structuredContent", "error",
        ])
        .prop_map(str::to_owned),
        1 => ".{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(vec![
            "success",
            "error",
            "timeout",
            "blocked",
            "partial",
            "warning",
            "warn",
            "critical",
            "ETIMEDOUT",
            "etimedout",
            " RATE_LIMITED ",
            "text",
            "tool_use",
            "retry_after",
            "did_you_mean",
            "MCP error -32602: bad",
            "exec",
            "{}",
            "{\"cmd\": 1}",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An object that has a `status` (so the lenient reader accepts it more
/// often than not) plus arbitrary other fields.
fn outcome_like() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["success", "error", "timeout", "blocked", "partial"]),
        json_value(),
    )
        .prop_map(|(status, extra)| {
            let mut map = match extra {
                Value::Object(map) => map,
                other => Map::from_iter([("data".to_owned(), other)]),
            };
            map.insert("status".to_owned(), json!(status));
            Value::Object(map)
        })
}

fn now_whole_seconds(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A failure outcome made by a classifier: failed, with a code and a
/// status other than success or partial.
fn assert_classified_failure(outcome: &ToolOutcome) {
    assert!(outcome.is_failure(), "{outcome:?}");
    assert!(outcome.code.is_some(), "{outcome:?}");
}

/// The scripted model's reply is either exactly one tool call and no
/// text, or text and no tool calls.
fn assert_scripted_shape(request: &ModelRequest) {
    let reply = scripted_reply(request);
    match (&reply.text, reply.tool_calls.len()) {
        (None, 1) => assert!(reply.tool_calls[0].arguments.is_object()),
        (Some(_), 0) => {}
        other => panic!("scripted reply of an unexpected shape: {other:?}"),
    }
}

fn user(text: String) -> ChatMessage {
    ChatMessage::User { text }
}

fn tool_result(i: usize, outcome: ToolOutcome) -> ChatMessage {
    ChatMessage::ToolResult {
        call_id: format!("s{i}"),
        name: "exec".to_owned(),
        outcome,
    }
}

proptest! {
    #![proptest_config(config(512))]

    // ------------------------------------------------------------ scripted

    /// Any text as the last user message, followed by tool results and
    /// decisions, gets a reply of the documented shape.
    #[test]
    fn scripted_plan_never_panics(
        text in prop_oneof![".*", json_value().prop_map(|v| v.to_string())],
        results in 0usize..4,
        option in prop::option::of("[a-z]{1,6}"),
    ) {
        let mut messages = vec![user(text)];
        messages.push(ChatMessage::Decision { approval: "a1".into(), option, instructions: None });
        for i in 0..results {
            messages.push(tool_result(i, ToolOutcome::success(json!(i))));
        }
        assert_scripted_shape(&ModelRequest { messages, ..ModelRequest::default() });
    }

    /// A well-formed plan runs its steps in order, one per tool result,
    /// then replies with the outcomes.
    #[test]
    fn scripted_plan_runs_its_steps(
        tools in prop::collection::vec("[a-z_]{1,8}", 0..5),
        reply in ".{0,16}",
        done in 0usize..6,
    ) {
        let steps: Vec<Value> = tools.iter().map(|t| json!({"tool": t, "args": {"n": 1}})).collect();
        let plan = json!({"steps": steps, "reply": reply}).to_string();
        let done = done.min(tools.len());
        let mut messages = vec![user(plan)];
        for i in 0..done {
            messages.push(tool_result(i, ToolOutcome::success(json!(i))));
        }
        let answer = scripted_reply(&ModelRequest { messages, ..ModelRequest::default() });
        if done < tools.len() {
            prop_assert_eq!(answer.tool_calls.len(), 1);
            prop_assert_eq!(&answer.tool_calls[0].name, &tools[done]);
            prop_assert_eq!(&answer.tool_calls[0].id, &format!("s{done}"));
        } else {
            let text: Value = serde_json::from_str(answer.text.as_deref().unwrap()).unwrap();
            prop_assert_eq!(&text["reply"], &json!(reply));
            prop_assert_eq!(text["steps"].as_array().unwrap().len(), done);
        }
    }

    // ------------------------------------------------------------- outcome

    /// The lenient reader never panics on any JSON, and what it reads
    /// survives a write and a second read unchanged.
    #[test]
    fn outcome_reader_round_trips(value in prop_oneof![json_value(), outcome_like()]) {
        if let Ok(outcome) = serde_json::from_value::<ToolOutcome>(value) {
            let text = serde_json::to_string(&outcome).unwrap();
            let back: ToolOutcome = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(back, outcome);
        }
    }

    /// The reader never panics on arbitrary text.
    #[test]
    fn outcome_reader_takes_any_text(text in ".*") {
        let _ = serde_json::from_str::<ToolOutcome>(&text);
    }

    // ---------------------------------------------------------- classifiers

    /// Every HTTP status gets an outcome: 2xx a success, everything else a
    /// classified failure whose message keeps at most an excerpt of the
    /// body, and a `retry_after` only on a retryable failure.
    #[test]
    fn http_status_is_total(
        status in any::<u16>(),
        retry_after in prop::option::of(".{0,40}"),
        body in ".{0,64}",
        repeat in 1usize..200,
        now in 0u64..8_000_000_000,
    ) {
        let body = body.repeat(repeat);
        let outcome = from_http_status(status, retry_after.as_deref(), &body, now_whole_seconds(now));
        if (200..300).contains(&status) {
            prop_assert!(outcome.is_success());
        } else {
            assert_classified_failure(&outcome);
            prop_assert!(outcome.message.len() <= MAX_EXCERPT_BYTES + "HTTP 65535: ".len());
            prop_assert!(outcome.retry_after.is_none() || outcome.retryable);
        }
    }

    /// The model providers' error classifiers are total as well, on any
    /// body (JSON or not).
    #[test]
    fn model_http_errors_are_total(
        status in any::<u16>(),
        retry_after in prop::option::of("[0-9]{0,25}|.{0,30}"),
        body in prop_oneof![".{0,200}", json_value().prop_map(|v| v.to_string()),
            json_value().prop_map(|v| json!({"error": v}).to_string())],
    ) {
        let now = SystemTime::now();
        for outcome in [
            from_openai_http_error(status, retry_after.as_deref(), &body, now),
            from_anthropic_http_error(status, retry_after.as_deref(), &body, now),
        ] {
            if (200..300).contains(&status) {
                prop_assert!(outcome.is_success());
            } else {
                assert_classified_failure(&outcome);
            }
        }
    }

    /// Every JSON-RPC error gets a classified failure carrying its code.
    #[test]
    fn jsonrpc_error_is_total(code in any::<i64>(), message in ".{0,64}") {
        let outcome = from_jsonrpc_error(code, &message);
        assert_classified_failure(&outcome);
        prop_assert_eq!(&outcome.data["jsonrpc_code"], &json!(code));
        prop_assert!(!outcome.message.is_empty());
    }

    /// Every process end gets an outcome: exit 0 without a signal is a
    /// success, anything else a classified failure with an excerpt of at
    /// most MAX_EXCERPT_BYTES of stderr.
    #[test]
    fn process_exit_is_total(
        exit_code in prop::option::of(any::<i32>()),
        signal in prop::option::of(any::<i32>()),
        stderr in ".{0,64}",
        repeat in 1usize..200,
    ) {
        let stderr = stderr.repeat(repeat);
        let outcome = from_process_exit(exit_code, signal, &stderr);
        if exit_code == Some(0) && signal.is_none() {
            prop_assert!(outcome.is_success());
        } else {
            assert_classified_failure(&outcome);
            prop_assert!(outcome.message.len() <= MAX_EXCERPT_BYTES.max(64));
            if signal.is_some() {
                prop_assert_eq!(outcome.code, Some(ErrorCode::Interrupted));
            }
        }
    }

    // ---------------------------------------------------------- Retry-After

    /// Any header value parses or not without panicking, whatever `now`.
    #[test]
    fn retry_after_never_panics(value in ".{0,40}", now in any::<u32>()) {
        let _ = parse_retry_after(&value, now_whole_seconds(u64::from(now)));
    }

    /// Delta-seconds round-trip for every u64, and an HTTP-date `n`
    /// seconds ahead of a whole-second `now` reads back as `n` seconds.
    #[test]
    fn retry_after_round_trips(
        secs in any::<u64>(),
        ahead in 0u64..100_000_000,
        now in 0u64..100_000_000_000,
    ) {
        let now = now_whole_seconds(now);
        prop_assert_eq!(parse_retry_after(&secs.to_string(), now), Some(Duration::from_secs(secs)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(ahead));
        prop_assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(ahead)));
    }

    // --------------------------------------------------------- model replies

    /// Any body gets a reply or a reason, never a panic; every tool call
    /// read has object arguments.
    #[test]
    fn model_replies_never_panic(body in json_value()) {
        for reply in [openai::parse_reply(&body), anthropic::parse_reply(&body)].into_iter().flatten() {
            for call in &reply.tool_calls {
                prop_assert!(call.arguments.is_object());
            }
        }
    }

    /// Well-formed replies read back as what was sent.
    #[test]
    fn model_replies_read_what_was_sent(
        text in prop::option::of(".{0,32}"),
        calls in prop::collection::vec(("[a-z0-9_]{1,8}", "[a-z_]{1,8}", any::<i64>()), 0..4),
    ) {
        let openai_body = json!({"choices": [{"message": {
            "content": text,
            "tool_calls": calls.iter().map(|(id, name, n)| json!({
                "id": id, "type": "function",
                "function": {"name": name, "arguments": json!({"n": n}).to_string()},
            })).collect::<Vec<_>>(),
        }}]});
        let reply = openai::parse_reply(&openai_body).unwrap();
        prop_assert_eq!(&reply.text, &text);
        prop_assert_eq!(reply.tool_calls.len(), calls.len());
        let mut blocks: Vec<Value> = text.iter().map(|t| json!({"type": "text", "text": t})).collect();
        blocks.extend(calls.iter().map(|(id, name, n)| json!({
            "type": "tool_use", "id": id, "name": name, "input": {"n": n},
        })));
        let reply = anthropic::parse_reply(&json!({"content": blocks})).unwrap();
        prop_assert_eq!(&reply.text, &text);
        for (call, (id, name, n)) in reply.tool_calls.iter().zip(&calls) {
            prop_assert_eq!(&call.id, id);
            prop_assert_eq!(&call.name, name);
            prop_assert_eq!(&call.arguments, &json!({"n": n}));
        }
    }

    // ----------------------------------------------------------------- MCP

    /// Any `tools/call` result an MCP server can send (that rmcp reads)
    /// becomes an outcome: `isError` a classified failure, anything else a
    /// success with the text.
    #[test]
    fn mcp_result_conversion_is_total(
        content in prop::collection::vec(prop_oneof![
            ".{0,24}".prop_map(|t| json!({"type": "text", "text": t})),
            (-40000i64..40000, ".{0,16}").prop_map(|(c, m)| json!({"type": "text", "text": format!("MCP error {c}: {m}")})),
            json_value().prop_map(|v| json!({"type": "text", "text": v.to_string()})),
            json_value(),
        ], 0..4),
        is_error in prop::option::of(any::<bool>()),
        structured in prop::option::of(json_value()),
    ) {
        let mut raw = json!({"content": content});
        if let Some(is_error) = is_error {
            raw["isError"] = json!(is_error);
        }
        if let Some(structured) = structured {
            raw["structuredContent"] = structured;
        }
        if let Ok(result) = serde_json::from_value::<rmcp::model::CallToolResult>(raw) {
            let outcome = convert::call_result("srv", "tool", &result);
            if result.is_error == Some(true) {
                assert_classified_failure(&outcome);
            } else {
                prop_assert!(outcome.is_success());
            }
        }
    }

    /// Every JSON-RPC error an MCP call can end with is classified.
    #[test]
    fn mcp_service_error_is_total(code in any::<i32>(), message in ".{0,32}") {
        let error = rmcp::ServiceError::McpError(rmcp::model::ErrorData::new(
            rmcp::model::ErrorCode(code), message, None));
        assert_classified_failure(&convert::service_error("srv", "tool", &error));
    }

    // ----------------------------------------------------- exec approval rules

    /// Any command line is reduced or refused, never a panic; every match
    /// text of a reduced line is derived from its words.
    #[test]
    fn command_lines_never_panic(
        line in prop_oneof![
            ".{0,64}",
            prop::collection::vec(prop::sample::select(vec![
                "sudo", "env", "-u", "x", "sh", "-c", "'a b'", "\"c;d\"", "$(x)", "`y`",
                "$((1))", "<(z)", "$'\\x74'", "<<", "<<<", "eval", "|", "||", "&&", ";",
                "&", "(", ")", "{", "}", "\n", "#", ">", "2>&1", "<", "\\", "'", "\"",
                "$V", "${V}", "*", "?", "[a]", "/usr/bin/touch", "nohup", "timeout", "5",
                "xargs", "-S", "FOO=bar", "if", "then", "fi", "!", "time", "busybox",
                "--", "=", "~", "\t", " ",
            ]), 0..16).prop_map(|words| words.join(" ")),
        ],
    ) {
        if let Ok(commands) = command_line::simple_commands(&line) {
            for command in &commands {
                let texts = command.match_texts();
                prop_assert_eq!(texts.len(), 1 + command.wrapped.len());
            }
        }
    }

    /// Plain words, however quoted, read back as themselves, one simple
    /// command per `;`/`&&`/`||`/`|` separated part.
    #[test]
    fn command_lines_read_plain_words(
        commands in prop::collection::vec(
            prop::collection::vec("[a-z][a-z0-9._-]{0,6}", 1..4), 1..4),
        separator in prop::sample::select(vec![" ; ", " && ", " || ", "\n"]),
        quote in prop::sample::select(vec!["", "'", "\""]),
    ) {
        // Reserved words and wrappers are read specially; plain words only.
        let special = ["if", "then", "else", "elif", "fi", "do", "done", "case", "esac",
            "while", "until", "for", "in", "function", "select", "time", "sudo", "env",
            "nohup", "timeout", "nice", "exec", "command", "builtin", "setsid", "stdbuf",
            "doas", "busybox", "eval", "trap", "alias", "xargs", "sh", "bash", "dash",
            "zsh", "ksh", "su", "fish", "csh", "tcsh", "ash", "mksh", "coproc"];
        prop_assume!(commands.iter().flatten().all(|w| !special.contains(&w.as_str())));
        let line = commands
            .iter()
            .map(|words| words.iter().map(|w| format!("{quote}{w}{quote}")).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(separator);
        let read = command_line::simple_commands(&line).unwrap();
        let words: Vec<Vec<String>> = read.iter().map(|c: &SimpleCommand| c.words.clone()).collect();
        prop_assert_eq!(words, commands);
    }
}

/// The classifiers' excerpt limit is what the properties above assume.
#[test]
fn excerpt_limit_is_the_documented_one() {
    assert_eq!(classify::MAX_EXCERPT_BYTES, 2048);
    assert_eq!(
        from_process_exit(Some(3), None, "").status,
        Status::Error,
        "a plain non-zero exit is an error"
    );
}
