//! Property tests of the parsers of outside input in the hale crate (issue
//! 12): `hale.toml`, its durations, message ids and the HTTP API's query
//! strings.
//!
//! An operator's file and an API client's URL are text hale does not
//! choose, so reading them must never panic, every failure must say where
//! (a config error's location lies inside the file), and the round trips
//! that exist must hold (a duration or a message id written by hale reads
//! back as itself). The same functions are fuzzed by the targets in
//! `fuzz/`; case counts stay modest so the suite stays fast.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use axum::extract::Query;
use axum::http::Uri;
use hale::api::{ApprovalParams, EventParams, LogLevel, LogParams, WaitParams};
use hale::config::{Config, ConfigError, TEMPLATE, format_duration, parse_duration};
use hale_actors::audit::parse_time;
use hale_actors::event::{EventKind, Level};
use hale_actors::session::MessageId;
use hale_actors::store::Grep;
use proptest::prelude::*;
use serde_json::Value;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

fn parse_config(text: &str) -> Result<Config, ConfigError> {
    Config::from_str_with_env(text, Some(Path::new("hale.toml")), |_| false)
}

/// A config error's location, when it has one, is inside the text.
fn assert_located_inside(text: &str, result: &Result<Config, ConfigError>) {
    if let Err(e) = result
        && let Some(at) = e.location()
    {
        let lines = text.split('\n').count();
        assert!(
            at.line >= 1 && at.line <= lines,
            "{at} outside {lines} lines: {e}"
        );
        assert!(at.column >= 1, "{e}");
    }
}

/// A TOML value of a shape a `hale.toml` key may hold, or may wrongly
/// hold.
fn toml_value() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u32>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "true",
            "false",
            "nan",
            "inf",
            "-inf",
            "0.5",
            "1e400",
            "-0.0",
            "\"30s\"",
            "\"0s\"",
            "\"500ms\"",
            "\"7d\"",
            "\"99999999999999999999d\"",
            "\"18446744073709551615ms\"",
            "\"1.5s\"",
            "\"landlock\"",
            "\"off\"",
            "\"none\"",
            "\"all\"",
            "{ tcp = [443] }",
            "{ tcp = [] }",
            "\"openai\"",
            "\"anthropic\"",
            "\"scripted\"",
            "\"http://127.0.0.1:1\"",
            "\"a(\"",
            "'\\b(rm'",
            "\"[\"",
            "\"default\"",
            "\"x\"",
            "\"\"",
            "\"nobody\"",
            "\"10.0.0.0/8\"",
            "\"::1\"",
            "\"host:99999\"",
            "\"exec\"",
            "\"weather\"",
        ])
        .prop_map(str::to_owned),
        "[a-z0-9 ./:_-]{0,12}".prop_map(|s| format!("{s:?}")),
    ];
    prop_oneof![
        4 => scalar.clone(),
        1 => prop::collection::vec(scalar.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
        1 => prop::collection::vec(("[a-z_]{1,6}", scalar), 0..3).prop_map(|kv| {
            let inner: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{{ {} }}", inner.join(", "))
        }),
    ]
}

/// One table of a `hale.toml` with a few of its keys (or a stray one).
fn toml_table() -> impl Strategy<Value = String> {
    let tables: Vec<(&'static str, Vec<&'static str>)> = vec![
        ("", vec!["data_dir"]),
        (
            "[tools]",
            vec![
                "workspace",
                "exec_timeout",
                "exec_max_timeout",
                "exec_max_output_bytes",
                "max_read_bytes",
                "max_write_bytes",
                "max_edit_bytes",
                "glob_max_results",
                "grep_max_matches",
                "web_fetch_timeout",
                "web_fetch_max_bytes",
                "web_fetch_allow",
            ],
        ),
        (
            "[tools.sandbox]",
            vec![
                "mode",
                "helper",
                "user",
                "network",
                "max_processes",
                "max_file_size",
                "cpu_time",
                "address_space",
                "env",
            ],
        ),
        ("[[tools.exec_approval]]", vec!["pattern", "reason"]),
        (
            "[session]",
            vec![
                "iteration_budget",
                "memory_prompt_bytes",
                "journal_retention",
                "learn_from_incidents",
                "max_open_questions",
            ],
        ),
        ("[audit]", vec!["retention", "max_events"]),
        (
            "[[mcp]]",
            vec![
                "name",
                "command",
                "args",
                "env",
                "inherit_env",
                "cwd",
                "url",
                "timeout",
                "connect_timeout",
                "tool_timeouts",
                "idempotent",
                "backups",
                "enabled",
                "restart",
                "breaker",
            ],
        ),
        (
            "[[models]]",
            vec![
                "name",
                "provider",
                "base_url",
                "model",
                "api_key_env",
                "timeout",
                "max_tokens",
            ],
        ),
        (
            "[[agents]]",
            vec!["name", "models", "tools", "mcp", "budget", "system_prompt"],
        ),
    ];
    prop::sample::select(tables).prop_flat_map(|(header, keys)| {
        let key = prop_oneof![
            8 => prop::sample::select(keys),
            1 => Just("no_such_key"),
        ];
        prop::collection::vec((key, toml_value()), 0..5).prop_map(move |pairs| {
            let mut seen = std::collections::BTreeSet::new();
            let mut text = format!("{header}\n");
            for (key, value) in pairs {
                if seen.insert(key) {
                    text.push_str(&format!("{key} = {value}\n"));
                }
            }
            text
        })
    })
}

/// Every byte outside `[A-Za-z0-9]` percent-encoded, as a careful client
/// writes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Reads a query string as the API handlers do: axum's `Query` over the
/// request URI, then the same per-field parsing as `GET /v1/logs`.
fn read_queries(query: &str) {
    let Ok(uri) = Uri::try_from(format!("/v1/logs?{query}")) else {
        return;
    };
    let _ = Query::<WaitParams>::try_from_uri(&uri);
    let _ = Query::<ApprovalParams>::try_from_uri(&uri);
    let _ = Query::<EventParams>::try_from_uri(&uri);
    if let Ok(Query(params)) = Query::<LogParams>::try_from_uri(&uri) {
        let now = jiff::Timestamp::now();
        for time in [&params.since, &params.until].into_iter().flatten() {
            let _ = parse_time(time, now);
        }
        if let Some(level) = params.level {
            let _ = Level::from(level);
        }
        if let Some(grep) = &params.grep {
            let _ = Grep::text(grep);
        }
        if let Some(kind) = params.kind {
            let _ = serde_json::from_value::<EventKind>(Value::String(kind));
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    // ------------------------------------------------------------- hale.toml

    /// Any text is a config or an error located inside it.
    #[test]
    fn config_text_never_panics(text in ".{0,200}") {
        let result = parse_config(&text);
        assert_located_inside(&text, &result);
    }

    /// Documents made of hale's own tables and keys with values of any
    /// shape (the inputs that get past the TOML parser into the
    /// resolver) are a config or an error located inside the file.
    #[test]
    fn config_documents_never_panic(tables in prop::collection::vec(toml_table(), 0..6)) {
        let text = tables.concat();
        let result = parse_config(&text);
        assert_located_inside(&text, &result);
    }

    /// The template with one line changed into any text still reads or
    /// fails with a location.
    #[test]
    fn config_template_mutations_never_panic(
        line in any::<prop::sample::Index>(),
        replacement in prop_oneof![".{0,40}", toml_table()],
    ) {
        let mut lines: Vec<String> = TEMPLATE
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l).to_owned())
            .collect();
        let at = line.index(lines.len());
        lines[at] = replacement;
        let text = lines.join("\n");
        let result = parse_config(&text);
        assert_located_inside(&text, &result);
    }

    // ------------------------------------------------------------ durations

    /// Any text is a duration or an error saying what is accepted.
    #[test]
    fn durations_never_panic(text in prop_oneof![".{0,24}", "[0-9]{0,24} ?(ms|s|m|h|d|x)?"]) {
        if let Err(e) = parse_duration(&text) {
            prop_assert!(e.contains("ms, s, m, h or d") || e.contains("too large"), "{}", e);
        }
    }

    /// Every whole-millisecond duration formats to text that parses back
    /// to it, and every parsed duration survives format and parse.
    #[test]
    fn durations_round_trip(ms in any::<u64>(), text in "[0-9]{1,20}(ms|s|m|h|d)") {
        let d = Duration::from_millis(ms);
        prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        if let Ok(d) = parse_duration(&text) {
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    // ----------------------------------------------------------- message ids

    /// Any text is an id or refused; an id read from text writes back as
    /// that same text (one spelling per message), and every id reads back
    /// from its display.
    #[test]
    fn message_ids_round_trip(
        text in prop_oneof![".{0,24}", "[a-zA-Z0-9_:+-]{0,12}:[+0-9]{0,22}"],
        session in "[A-Za-z0-9_-]{1,64}",
        seq in 1u64..,
    ) {
        if let Ok(id) = text.parse::<MessageId>() {
            prop_assert_eq!(id.to_string(), text);
        }
        let id = MessageId { session, seq };
        prop_assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id.clone());
        let json = serde_json::to_value(&id).unwrap();
        prop_assert_eq!(serde_json::from_value::<MessageId>(json).unwrap(), id);
    }

    // --------------------------------------------------------- query strings

    /// Any query string is read, or refused, without a panic.
    #[test]
    fn query_strings_never_panic(
        query in prop_oneof![
            "[ -~]{0,48}",
            prop::collection::vec(
                (prop::sample::select(vec!["wait", "state", "level", "since", "until", "grep",
                    "session", "limit", "kind", "x"]), "[ -~]{0,12}"),
                0..5,
            ).prop_map(|pairs| pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")),
        ],
    ) {
        read_queries(&query);
    }

    /// Values a client encodes read back exactly as sent.
    #[test]
    fn query_values_read_back(
        level in prop::sample::select(vec!["debug", "info", "warning", "error", "critical"]), since in ".{0,12}", grep in ".{0,12}", session in ".{0,12}",
        limit in any::<usize>(), kind in ".{0,12}", wait in any::<u64>(),
    ) {
        let query = format!(
            "level={}&since={}&grep={}&session={}&limit={limit}&kind={}",
            encode(level), encode(&since), encode(&grep), encode(&session), encode(&kind),
        );
        let uri = Uri::try_from(format!("/v1/logs?{query}")).unwrap();
        let Query(params) = Query::<LogParams>::try_from_uri(&uri).unwrap();
        let expected: LogLevel = serde_json::from_value(Value::String(level.to_owned())).unwrap();
        prop_assert_eq!(params.level, Some(expected));
        prop_assert_eq!(params.since, Some(since));
        prop_assert_eq!(params.grep, Some(grep));
        prop_assert_eq!(params.session, Some(session));
        prop_assert_eq!(params.limit, Some(limit));
        prop_assert_eq!(params.kind, Some(kind));
        let uri = Uri::try_from(format!("/v1/sessions/s/messages?wait={wait}")).unwrap();
        let Query(params) = Query::<WaitParams>::try_from_uri(&uri).unwrap();
        prop_assert_eq!(params.wait, Some(wait));
        read_queries(&query);
    }
}

/// Found by `message_ids_round_trip` (issue 12): `s:01` and `s:+1` were
/// read as `s:1`, so one message had many names and an id read back
/// differently from how it was sent.
#[test]
fn message_ids_have_one_spelling() {
    for other in ["-:01", "s:+1", "s:007", "s:0", "s: 1", "s:1 "] {
        assert!(other.parse::<MessageId>().is_err(), "{other}");
    }
    let id: MessageId = "s:10".parse().unwrap();
    assert_eq!((id.session.as_str(), id.seq), ("s", 10));
}
