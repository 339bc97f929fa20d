//! `read_logs`: the agent's (and operator's) window on the audit trail.
//!
//! Self-repair starts with "what has this server been doing": a typical
//! agent calls `read_logs(level="ERROR", since="1h", grep="weather-mcp")`
//! before it disables a failing MCP server. The tool lives with the audit
//! module that owns the data and registers itself like any tool, so the
//! tool registry never imports audit.
//!
//! Arguments are read leniently where the meaning is unambiguous (level
//! in any case, `warn` for `warning`, a `limit` sent as a string, a
//! `grep` that is not a valid regex is searched as plain text and says
//! so), and strictly otherwise: an unknown argument or a bad value is
//! `INVALID_INPUT` naming the field.

use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::time::parse_time;
use crate::catalog::ErrorCode;
use crate::event::{EventKind, Level};
use crate::outcome::{Hint, HintKind, ToolOutcome};
use crate::store::{EventFilter, EventQuery, Grep, Store, StoreError};
use crate::tool::{BoxFuture, Tool, ToolContext, ToolSpec, closest_first};

/// Events returned when the call gives no `limit`.
pub const DEFAULT_LIMIT: usize = 50;
/// The most events one call returns.
pub const MAX_LIMIT: usize = 500;

const ARGUMENTS: [&str; 9] = [
    "level", "since", "until", "grep", "session", "source", "code", "kind", "limit",
];

/// An argument the query cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct InvalidArgument {
    /// The argument's name.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl InvalidArgument {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// A parsed `read_logs` call.
#[derive(Debug, Clone)]
pub struct LogQuery {
    /// The query to run (its limit is one more than asked, to tell whether
    /// the answer was cut).
    pub query: EventQuery,
    /// The limit asked for.
    pub limit: usize,
    /// The filter as understood, for the answer (times resolved to RFC 3339).
    pub echo: Value,
    /// Remarks on lenient readings (a grep searched as text).
    pub notes: Vec<String>,
}

/// Reads `read_logs` arguments; relative times count back from `now`.
///
/// # Errors
/// [`InvalidArgument`] naming the first unknown argument or bad value.
pub fn parse_args(args: &Value, now: Timestamp) -> Result<LogQuery, InvalidArgument> {
    let empty = Map::new();
    let object = match args {
        Value::Object(map) => map,
        Value::Null => &empty,
        _ => {
            return Err(InvalidArgument::new(
                "arguments",
                "expected an object such as {\"level\": \"error\", \"since\": \"1h\"}",
            ));
        }
    };
    if let Some(unknown) = object.keys().find(|k| !ARGUMENTS.contains(&k.as_str())) {
        let closest = closest_first(unknown, ARGUMENTS.iter().map(|s| (*s).to_owned()));
        return Err(InvalidArgument::new(
            unknown,
            format!(
                "unknown argument; accepted: {} (closest: {})",
                ARGUMENTS.join(", "),
                closest.first().map_or("none", String::as_str)
            ),
        ));
    }
    let text = |field: &str| -> Result<Option<String>, InvalidArgument> {
        match object.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(other) => Err(InvalidArgument::new(
                field,
                format!("expected a string, got {other}"),
            )),
        }
    };

    let mut filter = EventFilter::default();
    let mut echo = Map::new();
    let mut notes = Vec::new();

    if let Some(level) = text("level")? {
        let level: Level = level.parse().map_err(|e: crate::event::UnknownLevel| {
            InvalidArgument::new("level", e.to_string())
        })?;
        echo.insert("level".into(), json!(level));
        filter.min_level = Some(level);
    }
    for field in ["since", "until"] {
        if let Some(raw) = text(field)? {
            let at =
                parse_time(&raw, now).map_err(|e| InvalidArgument::new(field, e.to_string()))?;
            echo.insert(field.into(), json!(at));
            if field == "since" {
                filter.since = Some(at);
            } else {
                filter.until = Some(at);
            }
        }
    }
    if let (Some(since), Some(until)) = (filter.since, filter.until)
        && since >= until
    {
        return Err(InvalidArgument::new(
            "until",
            format!("{until} is not after since ({since})"),
        ));
    }
    if let Some(pattern) = text("grep")? {
        let grep = match Grep::regex(&pattern) {
            Ok(grep) => grep,
            Err(_) => {
                notes.push(format!(
                    "grep `{pattern}` is not a valid regular expression; searched as plain text"
                ));
                Grep::text(&pattern).map_err(|e| InvalidArgument::new("grep", e.to_string()))?
            }
        };
        echo.insert("grep".into(), json!(pattern));
        filter.grep = Some(grep);
    }
    if let Some(session) = text("session")? {
        echo.insert("session".into(), json!(session));
        filter.session = Some(session);
    }
    if let Some(source) = text("source")? {
        echo.insert("source".into(), json!(source));
        filter.source = Some(source);
    }
    if let Some(code) = text("code")? {
        let code = ErrorCode::parse(&code.to_ascii_uppercase());
        echo.insert("code".into(), json!(code.as_str()));
        filter.code = Some(code);
    }
    if let Some(kind) = text("kind")? {
        let kind = EventKind::parse(&kind);
        echo.insert("kind".into(), json!(kind.as_str()));
        filter.kind = Some(kind);
    }
    let limit = match object.get("limit") {
        None | Some(Value::Null) => DEFAULT_LIMIT,
        Some(value) => {
            let n = match value {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            match n {
                Some(n) if (1..=MAX_LIMIT as u64).contains(&n) => n as usize,
                _ => {
                    return Err(InvalidArgument::new(
                        "limit",
                        format!("expected a whole number from 1 to {MAX_LIMIT}, got {value}"),
                    ));
                }
            }
        }
    };
    echo.insert("limit".into(), json!(limit));
    Ok(LogQuery {
        query: EventQuery::newest(filter, limit + 1),
        limit,
        echo: Value::Object(echo),
        notes,
    })
}

/// The `read_logs` tool over a store.
pub struct ReadLogs {
    spec: ToolSpec,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for ReadLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadLogs").finish_non_exhaustive()
    }
}

impl ReadLogs {
    /// The tool reading `store`'s audit events.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let spec = ToolSpec::new(
            "read_logs",
            "Read hale's audit trail: tool failures, retries, fallbacks, restarts, escalations, \
             memory writes. Newest first. Every argument is optional and they combine: \
             `level` (debug, info, warning, error, critical; returns that level and above), \
             `since` / `until` (a duration back from now such as 30m, 1h, 2d, or an RFC 3339 \
             time), `grep` (a regex, case-insensitive unless it has capitals, over the \
             message, source, code and data), `session`, `source` (an actor path such as \
             hale/mcp/weather; includes everything below it), `code` (such as \
             MCP_SERVER_UNREACHABLE), `kind` (such as tool_outcome, child_restarted), \
             `limit` (default 50, at most 500).",
            json!({
                "type": "object",
                "properties": {
                    "level": { "type": "string", "description": "Minimum level: debug, info, warning, error or critical (any case)." },
                    "since": { "type": "string", "description": "Start: 30m, 1h, 2d, or RFC 3339." },
                    "until": { "type": "string", "description": "End (exclusive): 30m, 1h, 2d, or RFC 3339." },
                    "grep": { "type": "string", "description": "Regex over message, source, code and data; smart case." },
                    "session": { "type": "string" },
                    "source": { "type": "string", "description": "Actor path prefix, e.g. hale/mcp/weather-mcp." },
                    "code": { "type": "string", "description": "Error code, e.g. MCP_SERVER_UNREACHABLE." },
                    "kind": { "type": "string", "description": "Event kind, e.g. tool_outcome." },
                    "limit": { "type": "integer", "minimum": 1, "maximum": MAX_LIMIT }
                },
                "additionalProperties": false
            }),
        )
        .with_idempotent(true);
        Self { spec, store }
    }

    async fn run(&self, args: Value) -> ToolOutcome {
        let parsed = match parse_args(&args, Timestamp::now()) {
            Ok(parsed) => parsed,
            Err(invalid) => {
                let mut outcome =
                    ToolOutcome::from_code(ErrorCode::InvalidInput, invalid.to_string())
                        .with_data(json!({ "field": invalid.field }));
                if !ARGUMENTS.contains(&invalid.field.as_str()) && invalid.field != "arguments" {
                    outcome = outcome.with_hint(
                        Hint::new(HintKind::DidYouMean, "accepted arguments, closest first")
                            .with_suggestions(closest_first(
                                &invalid.field,
                                ARGUMENTS.iter().map(|s| (*s).to_owned()),
                            )),
                    );
                }
                return outcome;
            }
        };
        match self.store.query(parsed.query).await {
            Ok(mut events) => {
                let truncated = events.len() > parsed.limit;
                events.truncate(parsed.limit);
                let mut data = json!({
                    "count": events.len(),
                    "truncated": truncated,
                    "filter": parsed.echo,
                    "events": events,
                });
                if !parsed.notes.is_empty() {
                    data["notes"] = json!(parsed.notes);
                }
                ToolOutcome::success(data)
            }
            Err(error @ StoreError::Timeout { .. }) => ToolOutcome::timeout(format!(
                "reading the audit trail: {error}; narrow the query (since, level, source)"
            )),
            Err(error @ StoreError::Corrupt { .. }) => ToolOutcome::from_code(
                ErrorCode::Internal,
                format!("reading the audit trail: {error}"),
            ),
            Err(error) => ToolOutcome::from_code(
                ErrorCode::ServiceUnavailable,
                format!("reading the audit trail: {error}"),
            ),
        }
    }
}

impl Tool for ReadLogs {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        Box::pin(self.run(args))
    }
}
