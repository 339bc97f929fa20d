//! What an operator says about one MCP server, validated before anything
//! is spawned.
//!
//! A typo in a server's config should fail at load with the field named,
//! not surface an hour later as a crash loop of a command that never
//! existed; so every config is checked by [`McpServerConfig::validate`]
//! when the MCP layer is built.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::process::ProcessHook;

/// How hale reaches the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpTransport {
    /// A child process speaking MCP on stdin/stdout, spawned as the leader
    /// of its own process group so that the whole group (wrappers such as
    /// `npx` and the real server behind them) is killed together.
    Stdio {
        /// The program.
        command: PathBuf,
        /// Its arguments.
        args: Vec<String>,
        /// Extra environment variables.
        env: BTreeMap<String, String>,
        /// Working directory; hale's own when `None`.
        cwd: Option<PathBuf>,
    },
    /// A streamable HTTP endpoint, such as `http://127.0.0.1:8080/mcp`.
    Http {
        /// The endpoint URL.
        url: String,
    },
}

/// One MCP server.
#[derive(Debug, Clone, PartialEq)]
pub struct McpServerConfig {
    /// Unique name: `A-Z a-z 0-9 -`, no `__` (the separator in tool names
    /// such as `weather__forecast`).
    pub name: String,
    /// How to reach it.
    pub transport: McpTransport,
    /// The longest a `tools/call` may take, unless `tool_timeouts` says
    /// otherwise for that tool.
    pub request_timeout: Duration,
    /// Per-tool overrides of `request_timeout`.
    pub tool_timeouts: BTreeMap<String, Duration>,
    /// The longest the spawn, handshake and tool listing may take together.
    pub connect_timeout: Duration,
    /// Per-tool idempotency, overriding the server's own annotations
    /// (`idempotentHint`, `readOnlyHint`).
    pub idempotent: BTreeMap<String, bool>,
    /// Servers to route a call to, in order, when this one cannot serve it.
    pub fallbacks: Vec<String>,
    /// Restart backoff: the first delay.
    pub restart_min: Duration,
    /// Restart backoff: the longest delay.
    pub restart_max: Duration,
    /// Restart backoff: the random share of each delay, 0 to 1.
    pub restart_jitter: f64,
    /// Restarts within `park_window` after which the server is parked
    /// (left down, probed every `probe_after`) instead of restarted.
    pub park_after: u32,
    /// The window `park_after` counts in.
    pub park_window: Duration,
    /// How long a parked server waits before a probe restart.
    pub probe_after: Duration,
    /// Starts disabled (calls fail fast until enabled).
    pub disabled: bool,
    /// Told of every stdio server's process group while it lives (none by
    /// default).
    pub recorder: ProcessHook,
    /// Names of hale's environment variables a stdio server gets on
    /// purpose (`[[mcp]] inherit_env`). Beyond them it gets only its
    /// configured `env`, `PATH`, `LANG`, `TERM` and `HOME`: hale's own
    /// environment (model keys, `HALE_TOKEN`) is not inherited.
    pub inherit_env: Vec<String>,
    /// The largest result (its JSON encoding) hale accepts from one
    /// `tools/call`; a larger one becomes `OUTPUT_TOO_LARGE` with a hint to
    /// ask for less (`[[mcp]] max_result_bytes`, default
    /// [`DEFAULT_MAX_RESULT_BYTES`]).
    pub max_result_bytes: u64,
}

/// The default of [`McpServerConfig::max_result_bytes`]: 1 MiB, ample for
/// what a model can read, small enough that one result cannot swamp the
/// conversation, the journal and the store.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 1024 * 1024;

/// The variables of hale's environment every stdio server gets: enough to
/// find programs and keep per-user caches (`HOME`) working offline.
pub const MCP_BASE_ENV: &[&str] = &["PATH", "LANG", "TERM", "HOME"];

impl McpServerConfig {
    /// A server with hale's defaults: 30 s per call, 20 s to connect,
    /// restarts backing off from 100 ms to 5 s (jitter 0.2), parked after 10 restarts in
    /// a minute and probed every 5 s.
    pub fn new(name: impl Into<String>, transport: McpTransport) -> Self {
        Self {
            name: name.into(),
            transport,
            request_timeout: Duration::from_secs(30),
            tool_timeouts: BTreeMap::new(),
            connect_timeout: Duration::from_secs(20),
            idempotent: BTreeMap::new(),
            fallbacks: Vec::new(),
            restart_min: Duration::from_millis(100),
            restart_max: Duration::from_secs(5),
            restart_jitter: 0.2,
            park_after: 10,
            park_window: Duration::from_secs(60),
            probe_after: Duration::from_secs(5),
            disabled: false,
            recorder: ProcessHook::default(),
            inherit_env: Vec::new(),
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }

    /// The whole environment of this server's process: [`MCP_BASE_ENV`]
    /// and [`inherit_env`](Self::inherit_env) from hale's own, then the
    /// configured `env` (which wins).
    pub fn process_env(&self) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        let mut env: BTreeMap<std::ffi::OsString, std::ffi::OsString> = BTreeMap::new();
        for name in MCP_BASE_ENV
            .iter()
            .copied()
            .chain(self.inherit_env.iter().map(String::as_str))
        {
            if let Some(value) = std::env::var_os(name) {
                env.insert(name.into(), value);
            }
        }
        if let McpTransport::Stdio {
            env: configured, ..
        } = &self.transport
        {
            for (name, value) in configured {
                env.insert(name.into(), value.into());
            }
        }
        env.into_iter().collect()
    }

    /// A stdio server running `command` with `args`.
    pub fn stdio<I, S>(name: impl Into<String>, command: impl Into<PathBuf>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(
            name,
            McpTransport::Stdio {
                command: command.into(),
                args: args.into_iter().map(Into::into).collect(),
                env: BTreeMap::new(),
                cwd: None,
            },
        )
    }

    /// A streamable HTTP server at `url`.
    pub fn http(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self::new(name, McpTransport::Http { url: url.into() })
    }

    /// The call timeout for `tool`.
    pub fn timeout_for(&self, tool: &str) -> Duration {
        self.tool_timeouts
            .get(tool)
            .copied()
            .unwrap_or(self.request_timeout)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`McpConfigError`] naming the server and the field.
    pub fn validate(&self) -> Result<(), McpConfigError> {
        let err = |field: &'static str, problem: String| McpConfigError {
            server: self.name.clone(),
            field,
            problem,
        };
        let valid_name = !self.name.is_empty()
            && !self.name.contains("__")
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(err(
                "name",
                "use A-Z, a-z, 0-9, `-` and `_`, at least one character, and no `__`".into(),
            ));
        }
        match &self.transport {
            McpTransport::Stdio { command, .. } if command.as_os_str().is_empty() => {
                return Err(err("command", "must not be empty".into()));
            }
            McpTransport::Http { url }
                if !(url.starts_with("http://") || url.starts_with("https://")) =>
            {
                return Err(err(
                    "url",
                    format!("`{url}` is not an http:// or https:// URL"),
                ));
            }
            _ => {}
        }
        for (field, value) in [
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
            ("restart_min", self.restart_min),
            ("park_window", self.park_window),
            ("probe_after", self.probe_after),
        ] {
            if value.is_zero() {
                return Err(err(field, "must be greater than zero".into()));
            }
        }
        if self.max_result_bytes == 0 {
            return Err(err("max_result_bytes", "must be at least 1".into()));
        }
        if let Some((tool, _)) = self.tool_timeouts.iter().find(|(_, t)| t.is_zero()) {
            return Err(err(
                "tool_timeouts",
                format!("the timeout of `{tool}` must be greater than zero"),
            ));
        }
        if self.restart_max < self.restart_min {
            return Err(err(
                "restart_max",
                "must be at least restart_min".to_owned(),
            ));
        }
        if !self.restart_jitter.is_finite() || !(0.0..=1.0).contains(&self.restart_jitter) {
            return Err(err(
                "restart_jitter",
                format!("{} is not between 0 and 1", self.restart_jitter),
            ));
        }
        if self.park_after == 0 {
            return Err(err("park_after", "must be at least 1".into()));
        }
        if self.fallbacks.iter().any(|f| f == &self.name) {
            return Err(err(
                "fallbacks",
                "a server cannot be its own fallback".into(),
            ));
        }
        Ok(())
    }
}

/// A config field that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MCP server `{server}`: {field}: {problem}")]
pub struct McpConfigError {
    /// The server's name as configured.
    pub server: String,
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A stdio server's environment is built: the base names, the names it
    /// inherits on purpose and its configured `env`, nothing else of
    /// hale's (this test process has `CARGO_*` variables; none may pass).
    #[test]
    fn stdio_environment_is_built_not_inherited() {
        let mut config = McpServerConfig::new(
            "s",
            McpTransport::Stdio {
                command: "server".into(),
                args: vec![],
                env: BTreeMap::from([("CONFIGURED".to_owned(), "yes".to_owned())]),
                cwd: None,
            },
        );
        config.inherit_env = vec!["CARGO_PKG_NAME".into()];
        let env = config.process_env();
        let names: Vec<String> = env
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        for name in &names {
            assert!(
                MCP_BASE_ENV.contains(&name.as_str())
                    || name == "CONFIGURED"
                    || name == "CARGO_PKG_NAME",
                "{name} leaked into {names:?}"
            );
        }
        assert!(names.contains(&"CONFIGURED".to_owned()));
        assert!(names.contains(&"CARGO_PKG_NAME".to_owned()));
        assert!(names.contains(&"PATH".to_owned()));
    }
}
