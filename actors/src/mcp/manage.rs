//! `manage_mcp`: the agent-facing (and operator-facing) tool over the MCP
//! layer's management operations.
//!
//! It lives with the MCP module that owns the operations and registers
//! itself like any tool, so the tool registry never has to import MCP.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::catalog::ErrorCode;
use crate::dispatch::Endpoints;
use crate::mcp::{McpError, McpServers};
use crate::outcome::{Hint, HintKind, ToolOutcome};
use crate::tool::{BoxFuture, Tool, ToolContext, ToolSpec, closest_first};

/// The `manage_mcp` tool: `list`, `enable`, `disable`, `restart`.
pub struct ManageMcp {
    spec: ToolSpec,
    servers: Arc<McpServers>,
    endpoints: Arc<Endpoints>,
}

impl std::fmt::Debug for ManageMcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManageMcp").finish_non_exhaustive()
    }
}

impl ManageMcp {
    /// The tool over `servers`, reporting breaker states from `endpoints`.
    pub fn new(servers: Arc<McpServers>, endpoints: Arc<Endpoints>) -> Self {
        let spec = ToolSpec::new(
            "manage_mcp",
            "Inspect and manage the MCP servers. `list` shows every server with its state \
             (connecting, ready, down, disabled), circuit breaker (closed, open, half_open), \
             restarts, last error and tools. `disable` stops a server (its calls then fail \
             fast), `enable` starts it again, `restart` gives it a fresh process and handshake.",
            json!({
                "type": "object",
                "properties": {
                    "action": { "type": "string", "enum": ["list", "enable", "disable", "restart"] },
                    "server": { "type": "string", "description": "The server's name; required except for list." }
                },
                "required": ["action"],
                "additionalProperties": false
            }),
        );
        Self {
            spec,
            servers,
            endpoints,
        }
    }

    async fn run(&self, args: Value) -> ToolOutcome {
        let action = args.get("action").and_then(Value::as_str);
        let server = args.get("server").and_then(Value::as_str);
        match (action, server) {
            (Some("list"), _) => {
                let reports = self.servers.list(&self.endpoints).await;
                ToolOutcome::success(json!({ "servers": reports }))
            }
            (Some(action @ ("enable" | "disable" | "restart")), Some(server)) => {
                let result = match action {
                    "enable" => self.servers.enable(server).await,
                    "disable" => self.servers.disable(server).await,
                    _ => self.servers.restart(server).await,
                };
                match result {
                    Ok(()) => {
                        let state = self
                            .servers
                            .status(server)
                            .map(|s| s.state.as_str())
                            .unwrap_or("unknown");
                        ToolOutcome::success(
                            json!({ "server": server, "action": action, "state": state }),
                        )
                    }
                    Err(McpError::UnknownServer { .. }) => ToolOutcome::from_code(
                        ErrorCode::NotFound,
                        format!("no MCP server named `{server}`"),
                    )
                    .with_hint(
                        Hint::new(HintKind::DidYouMean, "configured servers, closest first")
                            .with_suggestions(closest_first(server, self.servers.names())),
                    ),
                    Err(error) => ToolOutcome::from_code(
                        ErrorCode::Internal,
                        format!("{action} `{server}` failed: {error}"),
                    ),
                }
            }
            (Some("enable" | "disable" | "restart"), None) => ToolOutcome::from_code(
                ErrorCode::InvalidInput,
                "`server` is required for enable, disable and restart",
            ),
            _ => ToolOutcome::from_code(
                ErrorCode::InvalidInput,
                "`action` must be one of list, enable, disable, restart",
            ),
        }
    }
}

impl Tool for ManageMcp {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        Box::pin(self.run(args))
    }
}
