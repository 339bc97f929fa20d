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
//! | `session.max_open_questions` | [`RuntimeConfig::sessions`] (`ask_approval`'s limit) |
//! | `session.context_budget_bytes`, `max_turns_per_message`, `stall_backoff`, `stall_max_backoff`, `restart_backoff`, `restart_max_backoff` | [`RuntimeConfig::sessions`] |
//! | `[audit]` | [`RuntimeConfig::audit`] (`retention`) |
//! | `[dispatch]` | [`RuntimeConfig::dispatch`] (`attempt_timeout`) |
//! | the workspace's `memory/MEMORY.md` | [`RuntimeConfig::memory_path`] |
//!
//! What the file does not set keeps [`RuntimeConfig::new`]'s default: the
//! dispatcher's retry/breaker/cap settings (all but `attempt_timeout`), the session supervisor's
//! restart intensity, approval timeouts and queue limits.

use std::path::PathBuf;
use std::sync::Arc;

use hale_actors::dispatch::{DispatchConfig, Endpoints};
use hale_actors::event::NullSink;
use hale_actors::model::{EnvLookup, ModelConfig, Models, ModelsOptions};
use hale_actors::session::AgentSpec;

use super::{DEFAULT_SYSTEM_PROMPT, RuntimeConfig};
use crate::config::{AgentConfig, Config, ConfigError, DEFAULT_FILE};

impl RuntimeConfig {
    /// The runtime a loaded `hale.toml` describes (see the module docs for
    /// where each setting goes). The process environment is read for the
    /// models' API keys.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] at the model's line when the model layer
    /// refuses a model the file alone could not judge (its `api_key_env`
    /// names a variable that is not set or holds a key that cannot be
    /// sent, its `base_url` does not parse).
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        Self::from_config_with_env(config, |var| std::env::var(var).ok())
    }

    /// As [`from_config`](Self::from_config), with `env(name)` reading an
    /// environment variable, so tests do not depend on the real
    /// environment.
    ///
    /// # Errors
    /// As [`from_config`](Self::from_config).
    pub fn from_config_with_env(
        config: &Config,
        env: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Result<Self, ConfigError> {
        let models = config.model_configs();
        check_models(config, &models, Arc::new(env))?;
        let settings = config.session();
        let mut runtime = Self::new(config.data_dir());
        runtime.builtin = config.builtin_config();
        runtime.mcp = config.mcp_configs();
        runtime.mcp_breakers = config.mcp_breakers().clone();
        runtime.dispatch = config.dispatch_config();
        runtime.models = models;
        runtime.agents = config.agents().into_iter().map(agent_spec).collect();
        runtime.sessions.memory_prompt_bytes = settings.memory_prompt_bytes;
        runtime.journal_retention = settings.journal_retention;
        runtime.retention.messages = settings.message_retention;
        runtime.retention.approvals = settings.approval_retention;
        runtime.retention.deleted_sessions = settings.deleted_session_retention;
        runtime.learning.lessons = settings.learn_from_incidents;
        runtime.sessions.max_open_questions = settings.max_open_questions;
        runtime.sessions.context_budget_bytes = settings.context_budget_bytes;
        runtime.sessions.max_turns_per_message = settings.max_turns_per_message;
        runtime.sessions.stall_backoff = settings.stall_backoff;
        runtime.sessions.restart_backoff = hale_actors::session::restart_backoff(
            settings.restart_backoff,
            settings.restart_max_backoff,
        );
        runtime.audit = config.audit_config();
        runtime.memory_path = Some(config.memory_config().path);
        runtime.serve = config.serve().clone();
        Ok(runtime)
    }
}

/// Builds each model's client as [`Runtime::start`](super::Runtime::start)
/// will (nothing is started and nothing is sent), so what the model layer
/// refuses fails here, located at the model's entry.
fn check_models(
    config: &Config,
    models: &[ModelConfig],
    env: EnvLookup,
) -> Result<(), ConfigError> {
    let endpoints =
        Arc::new(
            Endpoints::new(DispatchConfig::default()).map_err(|e| ConfigError::Invalid {
                path: shown_path(config),
                location: None,
                message: e.to_string(),
            })?,
        );
    for model in models {
        let options = ModelsOptions {
            env: Arc::clone(&env),
            ..ModelsOptions::default()
        };
        if let Err(error) = Models::with_options(
            vec![model.clone()],
            Arc::clone(&endpoints),
            Arc::new(NullSink),
            options,
        ) {
            return Err(ConfigError::Invalid {
                path: shown_path(config),
                location: config.model_location(&model.name),
                message: error.to_string(),
            });
        }
    }
    Ok(())
}

fn shown_path(config: &Config) -> PathBuf {
    config
        .path()
        .map_or_else(|| PathBuf::from(DEFAULT_FILE), ToOwned::to_owned)
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
        token_budget: agent.token_budget,
    }
}
