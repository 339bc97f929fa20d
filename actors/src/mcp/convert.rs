//! The one edge between rmcp's types and hale's: tool listings become
//! [`RemoteTool`]s, results and errors become [`ToolOutcome`]s.
//!
//! Everything past this file speaks outcomes only, so a change in the SDK
//! (it has renamed and split types between minor versions) is contained
//! here, and the mapping is a table that tests can read.

use rmcp::ServiceError;
use rmcp::model::{CallToolResult, Tool as McpToolInfo};
use serde_json::{Value, json};

use crate::catalog::ErrorCode;
use crate::classify;
use crate::outcome::{Hint, HintKind, ToolOutcome};

/// A tool as the server listed it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteTool {
    /// The server's name for it.
    pub name: String,
    /// Its description, empty when the server gave none.
    pub description: String,
    /// Its arguments schema.
    pub schema: Value,
    /// The server says it only reads (`readOnlyHint`).
    pub read_only: bool,
    /// The server says repeating it is harmless (`idempotentHint`).
    pub idempotent_hint: bool,
}

impl RemoteTool {
    /// Whether hale may repeat a call that may have started: read-only or
    /// idempotent by the server's own annotations.
    pub fn idempotent(&self) -> bool {
        self.read_only || self.idempotent_hint
    }
}

impl From<&McpToolInfo> for RemoteTool {
    fn from(tool: &McpToolInfo) -> Self {
        let annotations = tool.annotations.as_ref();
        Self {
            name: tool.name.to_string(),
            description: tool
                .description
                .as_deref()
                .map(str::to_owned)
                .unwrap_or_default(),
            schema: Value::Object((*tool.input_schema).clone()),
            read_only: annotations.and_then(|a| a.read_only_hint) == Some(true),
            idempotent_hint: annotations.and_then(|a| a.idempotent_hint) == Some(true),
        }
    }
}

/// The text blocks of a result, joined by newlines.
fn text_of(content: &Value) -> String {
    content
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The outcome of a completed `tools/call`.
///
/// - `isError: true`: the tool ran and failed. TypeScript servers report
///   protocol errors this way too, as text starting `MCP error <code>:`;
///   those are classified like the JSON-RPC error they are. Anything else
///   is `TOOL_ERROR` with the server's text.
/// - otherwise success, with `data` = `{"text", "content",
///   "structured"}` (`structured` only when the server sent it).
pub fn call_result(server: &str, tool: &str, result: &CallToolResult) -> ToolOutcome {
    let content = serde_json::to_value(&result.content).unwrap_or(Value::Null);
    let text = text_of(&content);
    let mut data = json!({ "text": text, "content": content });
    if let (Some(map), Some(structured)) = (data.as_object_mut(), &result.structured_content) {
        map.insert("structured".to_owned(), structured.clone());
    }
    if result.is_error != Some(true) {
        return ToolOutcome::success(data);
    }
    let outcome = match embedded_jsonrpc_error(&text) {
        Some((code, message)) => classify::from_jsonrpc_error(code, message),
        None => ToolOutcome::from_code(
            ErrorCode::ToolError,
            if text.trim().is_empty() {
                format!("`{tool}` on `{server}` reported an error without a message")
            } else {
                text.clone()
            },
        ),
    };
    outcome.with_data(json!({ "server": server, "tool": tool, "text": text }))
}

/// Arguments that usually ask a tool for less: offered in the hint of a
/// result that was too large, when the tool's schema has them.
const PAGING_ARGUMENTS: &[&str] = &[
    "cursor",
    "page",
    "page_size",
    "per_page",
    "offset",
    "limit",
    "max_results",
    "max_items",
    "count",
    "start",
    "end",
    "range",
    "fields",
    "filter",
    "query",
];

/// The outcome for a result larger than `max_bytes` (its JSON encoding,
/// content and structured content together), or `None` when it fits.
///
/// A result past the cap is dropped rather than cut: half a JSON
/// document or half a listing reads as whole to a model. The outcome is
/// `OUTPUT_TOO_LARGE` (recoverable, not retryable: the same call would be
/// as large), delivered (the tool ran), with a hint to ask for less that
/// names the tool's own paging arguments when its schema has any.
pub fn oversized_result(
    server: &str,
    tool: &RemoteTool,
    result: &CallToolResult,
    max_bytes: u64,
) -> Option<ToolOutcome> {
    let size = json_size(&result.content)
        .saturating_add(result.structured_content.as_ref().map_or(0, json_size));
    if size <= max_bytes {
        return None;
    }
    let paging: Vec<String> = tool
        .schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| {
            PAGING_ARGUMENTS
                .iter()
                .filter(|name| properties.contains_key(**name))
                .map(|name| (*name).to_owned())
                .collect()
        })
        .unwrap_or_default();
    let advice = if paging.is_empty() {
        "ask for less: narrow the request (a smaller range, a filter, fewer fields) or          use the tool's pagination if it has any"
            .to_owned()
    } else {
        format!(
            "ask for less: use the tool's paging or filtering arguments ({}) to fetch the              result in parts",
            paging.join(", ")
        )
    };
    let name = &tool.name;
    Some(
        ToolOutcome::from_code(
            ErrorCode::OutputTooLarge,
            format!(
                "`{name}` on MCP server `{server}` returned a {size}-byte result, more than the                  {max_bytes} bytes hale accepts from one MCP call; the result was dropped"
            ),
        )
        .with_hint(Hint::new(HintKind::TryInstead, advice).with_suggestions(paging))
        .with_data(json!({
            "server": server,
            "tool": name,
            "result_bytes": size,
            "max_result_bytes": max_bytes,
        }))
        .delivered(),
    )
}

/// The length of `value`'s JSON encoding, counted without building it.
fn json_size(value: &impl serde::Serialize) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len() as u64);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing into a counter cannot fail; a value that cannot be encoded
    // counts as empty and is left to `call_result`.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// `MCP error -32602: bad input` -> `(-32602, "bad input")`.
fn embedded_jsonrpc_error(text: &str) -> Option<(i64, &str)> {
    let rest = text.trim_start().strip_prefix("MCP error ")?;
    let (code, message) = rest.split_once(':')?;
    Some((code.trim().parse().ok()?, message.trim()))
}

/// The outcome of a `tools/call` that did not complete.
///
/// | error | code | why |
/// |-------|------|-----|
/// | JSON-RPC error | per [`classify::from_jsonrpc_error`] | the server answered |
/// | transport closed or send failed | `TRANSPORT_CLOSED` | the process died or the connection dropped; a restart follows |
/// | timeout | status `timeout` (`ETIMEDOUT`) | |
/// | cancelled | `INTERRUPTED` | |
/// | anything else | `INTERNAL` | an answer hale cannot read |
pub fn service_error(server: &str, tool: &str, error: &ServiceError) -> ToolOutcome {
    let data = json!({ "server": server, "tool": tool });
    match error {
        ServiceError::McpError(e) => {
            let outcome = classify::from_jsonrpc_error(i64::from(e.code.0), &e.message);
            let mut merged = outcome.data.clone();
            if let (Some(map), Some(extra)) = (merged.as_object_mut(), data.as_object()) {
                map.extend(extra.clone());
            }
            outcome.with_data(merged)
        }
        ServiceError::TransportClosed | ServiceError::TransportSend(_) => ToolOutcome::from_code(
            ErrorCode::TransportClosed,
            format!("the connection to MCP server `{server}` closed during `{tool}`: {error}"),
        )
        .with_data(data),
        ServiceError::Timeout { timeout } => ToolOutcome::timeout(format!(
            "`{tool}` on `{server}` did not answer within {} ms",
            timeout.as_millis()
        ))
        .with_data(data),
        ServiceError::Cancelled { reason } => ToolOutcome::from_code(
            ErrorCode::Interrupted,
            format!(
                "`{tool}` on `{server}` was cancelled: {}",
                reason.as_deref().unwrap_or("no reason given")
            ),
        )
        .with_data(data),
        other => ToolOutcome::from_code(
            ErrorCode::Internal,
            format!("`{tool}` on `{server}` failed: {other}"),
        )
        .with_data(data),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn typescript_protocol_errors_inside_is_error_are_recognised() {
        assert_eq!(
            embedded_jsonrpc_error("MCP error -32602: Tool nope not found"),
            Some((-32602, "Tool nope not found"))
        );
        assert_eq!(embedded_jsonrpc_error("something else: 1"), None);
        assert_eq!(embedded_jsonrpc_error("MCP error x: y"), None);
    }

    #[test]
    fn is_error_maps_to_tool_error_or_the_embedded_code() {
        let plain: CallToolResult = serde_json::from_value(json!({
            "content": [{"type": "text", "text": "disk full"}], "isError": true
        }))
        .unwrap();
        let outcome = call_result("s", "t", &plain);
        assert_eq!(outcome.code, Some(ErrorCode::ToolError));
        assert_eq!(outcome.message, "disk full");
        assert!(outcome.recoverable && !outcome.retryable);

        let embedded: CallToolResult = serde_json::from_value(json!({
            "content": [{"type": "text", "text": "MCP error -32602: bad args"}], "isError": true
        }))
        .unwrap();
        assert_eq!(
            call_result("s", "t", &embedded).code,
            Some(ErrorCode::InvalidInput)
        );

        let ok: CallToolResult = serde_json::from_value(json!({
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
        }))
        .unwrap();
        let outcome = call_result("s", "t", &ok);
        assert!(outcome.is_success());
        assert_eq!(outcome.data["text"], "a\nb");
    }

    #[test]
    fn a_result_over_the_cap_is_output_too_large_with_the_paging_arguments() {
        let tool = RemoteTool {
            name: "list".into(),
            description: String::new(),
            schema: json!({ "type": "object", "properties": {
                "cursor": { "type": "string" }, "limit": { "type": "integer" }, "x": {}
            }}),
            read_only: true,
            idempotent_hint: true,
        };
        let result: CallToolResult = serde_json::from_value(json!({
            "content": [{"type": "text", "text": "x".repeat(1000)}]
        }))
        .unwrap();
        assert!(oversized_result("s", &tool, &result, 2000).is_none());
        let outcome = oversized_result("s", &tool, &result, 500).unwrap();
        assert_eq!(outcome.code, Some(ErrorCode::OutputTooLarge));
        assert!(outcome.recoverable && !outcome.retryable);
        assert!(outcome.is_delivered());
        assert_eq!(outcome.hints[0].suggestions, ["cursor", "limit"]);
        assert!(outcome.hints[0].message.starts_with("ask for less"));
        let encoded = serde_json::to_vec(&result.content).unwrap().len() as u64;
        assert_eq!(outcome.data["result_bytes"], encoded);
        assert_eq!(outcome.data["max_result_bytes"], 500);
        // No total_bytes: the dispatcher must not try a chunked re-read.
        assert!(outcome.data.get("total_bytes").is_none());
    }

    #[test]
    fn service_errors_are_classified() {
        let closed = service_error("s", "t", &ServiceError::TransportClosed);
        assert_eq!(closed.code, Some(ErrorCode::TransportClosed));
        assert!(closed.retryable && closed.recoverable);
        let timeout = service_error(
            "s",
            "t",
            &ServiceError::Timeout {
                timeout: std::time::Duration::from_millis(5),
            },
        );
        assert!(timeout.is_timeout());
        let rpc = service_error(
            "s",
            "t",
            &ServiceError::McpError(rmcp::model::ErrorData::new(
                rmcp::model::ErrorCode(-32601),
                "no such method",
                None,
            )),
        );
        assert_eq!(rpc.code, Some(ErrorCode::NotFound));
        assert_eq!(rpc.data["jsonrpc_code"], -32601);
        assert_eq!(rpc.data["server"], "s");
    }
}
