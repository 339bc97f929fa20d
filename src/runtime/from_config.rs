//! `hale.toml` -> [`RuntimeConfig`]: every setting of the file mapped onto
//! the part of the runtime that uses it.
//!
//! | `hale.toml` | runtime |
//! |---|---|
//! | `data_dir` | [`RuntimeConfig::data_dir`] (lock, store, ledger) |
//! | `[tools]` (workspace, exec timeouts, caps, `exec_approval`) | [`RuntimeConfig::builtin`] |
//! | `[[mcp]]` | [`RuntimeConfig::mcp`] |
//! | `[mcp.breaker]` | [`RuntimeConfig::mcp_breakers`] (the server's own breaker in `Endpoints`) |
//! | `[[models]]` | [`RuntimeConfig::models`] |
//! | `[[agents]]` (or the `default` agent) | [`RuntimeConfig::agents`] |
//! | `session.iteration_budget` | each agent's `budget` (resolved by the config) |
//! | `session.memory_prompt_bytes` | [`RuntimeConfig::sessions`] |
//! | `session.journal_retention` | [`RuntimeConfig::journal_retention`] |
//! | `session.learn_from_incidents` | [`RuntimeConfig::learning`] (`lessons`) |
//! | `[audit]` | [`RuntimeConfig::audit`] (`retention`) |
//! | the workspace's `memory/MEMORY.md` | [`RuntimeConfig::memory_path`] |
//!
//! What the file does not set keeps [`RuntimeConfig::new`]'s default: the
//! dispatcher's retry/breaker/cap settings, the session supervisor's
//! restart intensity, approval timeouts and queue limits.

use std::path::PathBuf;

use hale_actors::model::Provider;
use hale_actors::session::AgentSpec;

use super::{DEFAULT_SYSTEM_PROMPT, RuntimeConfig};
use crate::config::{AgentConfig, Config, ConfigError, DEFAULT_FILE};

impl RuntimeConfig {
    /// The runtime a loaded `hale.toml` describes (see the module docs for
    /// where each setting goes). The process environment is read for the
    /// models' API keys.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] at the model's line when a model's
    /// `api_key_env` names a variable that is not set (the one check the
    /// file alone cannot make).
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        Self::from_config_with_env(config, |var| {
            std::env::var_os(var).is_some_and(|v| !v.is_empty())
        })
    }

    /// As [`from_config`](Self::from_config), with `has_env(name)` telling
    /// whether an environment variable is set (non-empty).
    ///
    /// # Errors
    /// As [`from_config`](Self::from_config).
    pub fn from_config_with_env(
        config: &Config,
        has_env: impl Fn(&str) -> bool,
    ) -> Result<Self, ConfigError> {
        let models = config.model_configs();
        for model in &models {
            if let (Some(var), Provider::Openai | Provider::Anthropic) =
                (&model.api_key_env, model.provider)
                && !has_env(var)
            {
                return Err(ConfigError::Invalid {
                    path: config
                        .path()
                        .map_or_else(|| PathBuf::from(DEFAULT_FILE), ToOwned::to_owned),
                    location: config.model_location(&model.name),
                    message: format!(
                        "model \"{}\": the API key variable {var} (api_key_env) is not set",
                        model.name
                    ),
                });
            }
        }
        let settings = config.session();
        let mut runtime = Self::new(config.data_dir());
        runtime.builtin = config.builtin_config();
        runtime.mcp = config.mcp_configs();
        runtime.mcp_breakers = config.mcp_breakers().clone();
        runtime.models = models;
        runtime.agents = config.agents().into_iter().map(agent_spec).collect();
        runtime.sessions.memory_prompt_bytes = settings.memory_prompt_bytes;
        runtime.journal_retention = settings.journal_retention;
        runtime.learning.lessons = settings.learn_from_incidents;
        runtime.audit = config.audit_config();
        runtime.memory_path = Some(config.memory_config().path);
        Ok(runtime)
    }
}

/// An `[[agents]]` entry as sessions run it; hale's default prompt when
/// the agent sets none.
pub fn agent_spec(agent: AgentConfig) -> AgentSpec {
    AgentSpec {
        name: agent.name,
        system_prompt: agent
            .system_prompt
            .unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.to_owned()),
        models: agent.models,
        tools: agent.tools,
        mcp: agent.mcp,
        budget: agent.budget,
    }
}
