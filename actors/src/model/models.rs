//! [`Models`]: every configured model endpoint, as supervised actors, and
//! the model chain a session asks.
//!
//! # The chain
//! [`Models::complete`] walks a chain as a route with fallbacks, through
//! the same attempt engine as tool and MCP calls (`dispatch::Engine`): the
//! admission (the not-before a `Retry-After` set, the breaker and cap of
//! the [`EndpointHealth`] of `model/<name>`, see [`endpoint_name`], shared
//! with every session), the one deposit per original request, the
//! breaker report with its call-start rule (N requests failed by one
//! actor crash count once), the retry budget and the events are the
//! engine's. What is the chain's own is the decision after a failure,
//! [`step_after_failure`]:
//! - a retryable failure (rate limit, 5xx, timeout, refused connection,
//!   an actor killed mid-request) is retried after the [`RetryPolicy`]'s
//!   delay, a `Retry-After` replacing it up to `max_retry_after`; while
//!   the model's not-before holds, the next model is asked instead;
//! - once the attempts (or the budget) are spent, and at once for bad
//!   credentials (401/403), a malformed answer, an unknown model (404) or
//!   a context-length overflow (another model may have a larger window),
//!   the next model is asked;
//! - an `INVALID_INPUT` failure (a 400 about the request itself) is
//!   handed back at once: every model would refuse it.
//!
//! When every model failed retryably the engine waits (the backoff, or
//! until the earliest not-before) and walks the chain again, up to
//! [`ModelsOptions::turn_rounds`] times and never past
//! [`ModelsOptions::turn_deadline`]; those re-asks are retries, charged to
//! the endpoints' retry budgets and never deposited. When the chain runs
//! out, the last failure is handed back, with the models tried in
//! `models_tried`. Model retries are not charged to the session's
//! iteration budget: that budget counts tool calls, and a model retry is
//! bounded by the retry policy and the endpoint's budget instead.
//!
//! # Actors
//! A call reaches the current incarnation of the model's actor through its
//! [`Address`], waiting up to `ready_wait` while it restarts. A request
//! the actor never took is re-sent to the replacement; one in flight when
//! the actor died comes back as `INTERRUPTED`, retryable (a completion has
//! no side effects), and is retried like any other failure. The wait for
//! an answer is bounded by the endpoint's timeout plus [`REPLY_SLACK`], so
//! a wedged actor ends in `ETIMEDOUT`, never a hang.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use hale_supervision::{
    Address, CallError, CallPolicy, ChildSpec, Strategy, SupervisedCall, SupervisorError,
    SupervisorRef, SupervisorSpec, Task,
};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::actor::{ModelActor, ModelActorArgs, ModelWork};
use super::{
    AnthropicClient, ModelClient, ModelConfig, ModelMsg, ModelReply, ModelRequest, OpenAiClient,
    Provider, ScriptedModel,
};
use crate::audit::Redactor;
use crate::catalog::ErrorCode;
#[cfg(doc)]
use crate::dispatch::EndpointHealth;
use crate::dispatch::{Callee, Endpoints, Engine, Rules, Step, ToolContext};
use crate::event::EventSink;
use crate::outcome::{Hint, HintKind, ToolOutcome};
use crate::recovery::{RetryConfig, RetryPolicy, RetryPolicyError};
use crate::tool::closest_first;

/// The prefix of a model's endpoint name in [`Endpoints`]: the breaker
/// and retry budget of model `gpt` are those of `model/gpt`, so a model
/// and an MCP server or tool of the same name never share them.
pub const MODEL_ENDPOINT_PREFIX: &str = "model/";

/// How long a call waits for a restarting model actor.
pub const DEFAULT_READY_WAIT: Duration = Duration::from_secs(5);

/// How much longer than the endpoint's own timeout a caller waits for the
/// actor's answer before giving up with `ETIMEDOUT`.
pub const REPLY_SLACK: Duration = Duration::from_secs(1);

/// How many times a turn walks its chain when every model failed
/// retryably (the first walk included).
pub const DEFAULT_TURN_ROUNDS: u32 = 5;

/// How long one turn may take in all, its retries, waits for a
/// not-before and re-walks of the chain included.
pub const DEFAULT_TURN_DEADLINE: Duration = Duration::from_secs(600);

/// The endpoint name of model `name` (see [`MODEL_ENDPOINT_PREFIX`]).
pub fn endpoint_name(name: &str) -> String {
    format!("{MODEL_ENDPOINT_PREFIX}{name}")
}

/// Reads an environment variable; replaceable so tests and embedders need
/// not touch the process environment.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A model configuration that cannot be used; each variant names the
/// model and the field.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The name is not `[a-z0-9][a-z0-9._-]*`.
    #[error(
        "model name `{0}` is invalid: use lower-case letters, digits, `.`, `_` and `-`, starting with a letter or digit"
    )]
    InvalidName(String),
    /// Two models share a name.
    #[error("two models are named `{0}`")]
    Duplicate(String),
    /// A remote model has no `base_url`.
    #[error("model `{0}`: `base_url` is required for a remote provider")]
    MissingBaseUrl(String),
    /// The `base_url` does not parse as an http(s) URL.
    #[error("model `{name}`: `base_url` `{url}` is invalid: {reason}")]
    InvalidBaseUrl {
        /// The model.
        name: String,
        /// The URL given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// A remote model has no provider model id.
    #[error("model `{0}`: `model` (the provider's model id) is required for a remote provider")]
    MissingModelId(String),
    /// The API key's environment variable is not set.
    #[error(
        "model `{name}`: the environment variable `{var}` (api_key_env) is not set or is empty"
    )]
    MissingApiKey {
        /// The model.
        name: String,
        /// The variable named by `api_key_env`.
        var: String,
    },
    /// The API key cannot be sent in an HTTP header.
    #[error("model `{0}`: the API key contains characters an HTTP header cannot carry")]
    BadApiKey(String),
    /// `timeout` is zero.
    #[error("model `{0}`: `timeout` must be greater than zero")]
    ZeroTimeout(String),
    /// `max_tokens` is zero.
    #[error("model `{0}`: `max_tokens` must be greater than zero")]
    ZeroMaxTokens(String),
    /// The retry settings are invalid.
    #[error("models retry.{field}: {source}", field = .source.field())]
    Retry {
        /// What is wrong.
        #[from]
        source: RetryPolicyError,
    },
    /// The HTTP client could not be built.
    #[error("model `{name}`: could not build the HTTP client")]
    Client {
        /// The model.
        name: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
}

/// Settings of [`Models::with_options`]; [`Default`] is what
/// [`Models::new`] uses.
#[derive(Clone)]
pub struct ModelsOptions {
    /// Backoff and attempts per model.
    pub retry: RetryConfig,
    /// How long a call waits for a restarting model actor.
    pub ready_wait: Duration,
    /// Where API keys are read from.
    pub env: EnvLookup,
    /// How many times a turn walks its chain when every model failed
    /// retryably (1: once).
    pub turn_rounds: u32,
    /// How long one turn may take in all.
    pub turn_deadline: Duration,
}

impl Default for ModelsOptions {
    /// [`RetryConfig::default`] (three attempts, a `Retry-After` honoured
    /// up to a minute), [`DEFAULT_READY_WAIT`], the process environment,
    /// [`DEFAULT_TURN_ROUNDS`] and [`DEFAULT_TURN_DEADLINE`].
    fn default() -> Self {
        Self {
            retry: RetryConfig::default(),
            ready_wait: DEFAULT_READY_WAIT,
            env: Arc::new(|var| std::env::var(var).ok()),
            turn_rounds: DEFAULT_TURN_ROUNDS,
            turn_deadline: DEFAULT_TURN_DEADLINE,
        }
    }
}

impl std::fmt::Debug for ModelsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelsOptions")
            .field("retry", &self.retry)
            .field("ready_wait", &self.ready_wait)
            .field("turn_rounds", &self.turn_rounds)
            .field("turn_deadline", &self.turn_deadline)
            .finish_non_exhaustive()
    }
}

/// One configured model.
struct Entry {
    config: ModelConfig,
    endpoint: String,
    client: Arc<dyn ModelClient>,
    address: Address<ModelMsg>,
}

/// Every configured model endpoint. See the module docs.
pub struct Models {
    entries: BTreeMap<String, Arc<Entry>>,
    engine: Engine,
    sink: Arc<dyn EventSink>,
    retry: RetryPolicy,
    ready_wait: Duration,
    turn_rounds: u32,
    turn_deadline: Duration,
    supervisor: RwLock<Option<SupervisorRef>>,
    /// Masks secrets in replies and failures (see [`Models::set_redactor`]).
    redactor: OnceLock<Arc<Redactor>>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models")
            .field("models", &self.entries.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What the chain does after a failed attempt (see [`step_after_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainStep {
    /// Ask the same model again after `delay`.
    Retry {
        /// The wait before the retry.
        delay: Duration,
    },
    /// Ask the next model of the chain (or hand the failure back when
    /// there is none).
    NextModel,
    /// Hand the failure back: it is about the request, and no model would
    /// answer it differently.
    Return,
}

/// The chain's decision after `attempts` failed attempts (the first
/// included) at one model ended in `outcome`; `unit` is a random value in
/// `0.0..1.0` for jitter. See the module docs for the rules.
pub fn step_after_failure(
    outcome: &ToolOutcome,
    attempts: u32,
    policy: &RetryPolicy,
    unit: f64,
) -> ChainStep {
    if outcome.retryable && policy.attempts_left(attempts) {
        return ChainStep::Retry {
            delay: policy.delay(attempts.saturating_sub(1), outcome, unit),
        };
    }
    if outcome.code == Some(ErrorCode::InvalidInput) {
        return ChainStep::Return;
    }
    ChainStep::NextModel
}

/// Whether `name` can name a model: lower-case letters, digits, `.`, `_`
/// and `-`, starting with a letter or digit (it becomes the endpoint
/// `model/<name>` and an actor id).
pub fn valid_model_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl Models {
    /// Validates `configs` and builds each endpoint's client, with the
    /// default options.
    ///
    /// # Errors
    /// [`ModelError`] naming the first model and field that is wrong,
    /// including an API key variable that is not set.
    pub fn new(
        configs: Vec<ModelConfig>,
        endpoints: Arc<Endpoints>,
        sink: Arc<dyn EventSink>,
    ) -> Result<Arc<Self>, ModelError> {
        Self::with_options(configs, endpoints, sink, ModelsOptions::default())
    }

    /// As [`Models::new`], with `options`.
    ///
    /// # Errors
    /// As [`Models::new`], and [`ModelError::Retry`].
    pub fn with_options(
        configs: Vec<ModelConfig>,
        endpoints: Arc<Endpoints>,
        sink: Arc<dyn EventSink>,
        options: ModelsOptions,
    ) -> Result<Arc<Self>, ModelError> {
        let retry = RetryPolicy::new(options.retry)?;
        let mut entries = BTreeMap::new();
        for config in configs {
            let name = config.name.clone();
            if !valid_model_name(&name) {
                return Err(ModelError::InvalidName(name));
            }
            if entries.contains_key(&name) {
                return Err(ModelError::Duplicate(name));
            }
            if config.timeout.is_zero() {
                return Err(ModelError::ZeroTimeout(name));
            }
            if config.max_tokens == 0 {
                return Err(ModelError::ZeroMaxTokens(name));
            }
            let key = match (&config.api_key_env, config.provider) {
                (Some(var), Provider::Openai | Provider::Anthropic) => Some(
                    (options.env)(var)
                        .filter(|k| !k.is_empty())
                        .ok_or_else(|| ModelError::MissingApiKey {
                            name: name.clone(),
                            var: var.clone(),
                        })?,
                ),
                _ => None,
            };
            let client: Arc<dyn ModelClient> = match config.provider {
                Provider::Openai => Arc::new(OpenAiClient::new(&config, key.as_deref())?),
                Provider::Anthropic => Arc::new(AnthropicClient::new(&config, key.as_deref())?),
                Provider::Scripted => Arc::new(ScriptedModel::new(name.clone())),
            };
            entries.insert(
                name.clone(),
                Arc::new(Entry {
                    endpoint: endpoint_name(&name),
                    config,
                    client,
                    address: Address::new(),
                }),
            );
        }
        let tick = entries
            .values()
            .map(|e| e.config.timeout)
            .max()
            .unwrap_or(DEFAULT_READY_WAIT);
        Ok(Arc::new(Self {
            entries,
            engine: Engine::new(endpoints, Arc::clone(&sink), tick),
            sink,
            retry,
            ready_wait: options.ready_wait,
            turn_rounds: options.turn_rounds.max(1),
            turn_deadline: options.turn_deadline,
            supervisor: RwLock::new(None),
            redactor: OnceLock::new(),
        }))
    }

    /// The configured model names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// The configuration of `name`, if it is configured.
    pub fn config(&self, name: &str) -> Option<&ModelConfig> {
        self.entries.get(name).map(|e| &e.config)
    }

    /// The supervisor spec: one_for_one, one permanent worker per model
    /// (child id = the model's name), every supervisor event to the sink.
    /// A model actor holds no state worth a backoff (its client is rebuilt
    /// from the shared one), so it is restarted at once; the intensity is
    /// generous because the breakers, not restarts, protect a failing
    /// endpoint.
    pub fn supervisor_spec(&self, name: &str) -> SupervisorSpec {
        let mut spec = SupervisorSpec::new(name)
            .strategy(Strategy::OneForOne)
            .intensity(100, Duration::from_secs(60))
            .observer(crate::supervision_events::observer(Arc::clone(&self.sink)));
        for entry in self.entries.values() {
            let entry = Arc::clone(entry);
            let id = entry.config.name.clone();
            spec = spec.child(ChildSpec::worker(id, move || {
                (
                    ModelActor::new(),
                    ModelActorArgs {
                        work: ModelWork(Arc::clone(&entry.client)),
                        address: entry.address.clone(),
                    },
                )
            }));
        }
        spec
    }

    /// Starts the supervisor as a top-level tree and attaches it.
    ///
    /// # Errors
    /// When the supervisor cannot start.
    pub async fn start(&self, name: &str) -> Result<SupervisorRef, SupervisorError> {
        let (supervisor, _task) = SupervisorRef::start(self.supervisor_spec(name)).await?;
        self.attach(supervisor.clone());
        Ok(supervisor)
    }

    /// Records which supervisor runs the model actors (when the spec was
    /// started as part of a bigger tree).
    pub fn attach(&self, supervisor: SupervisorRef) {
        if let Ok(mut slot) = self.supervisor.write() {
            *slot = Some(supervisor);
        }
    }

    /// The attached supervisor, if any.
    pub fn supervisor(&self) -> Option<SupervisorRef> {
        self.supervisor.read().ok().and_then(|s| s.clone())
    }

    /// `switch_model`'s check: `name` if it is configured, else a
    /// `NOT_FOUND` outcome whose hint lists the configured names, closest
    /// first.
    ///
    /// # Errors
    /// The `NOT_FOUND` outcome.
    pub fn resolve(&self, name: &str) -> Result<String, ToolOutcome> {
        if self.entries.contains_key(name) {
            return Ok(name.to_owned());
        }
        let suggestions = closest_first(name, self.names());
        let mut outcome =
            ToolOutcome::from_code(ErrorCode::NotFound, format!("no model named `{name}`"))
                .with_data(json!({ "model": name, "configured": self.names() }));
        if !suggestions.is_empty() {
            outcome = outcome.with_hint(
                Hint::new(
                    HintKind::DidYouMean,
                    "configured models, closest name first",
                )
                .with_suggestions(suggestions),
            );
        }
        Err(outcome)
    }

    /// One turn from the first model of `chain` that answers. See the
    /// module docs for the retries and fallbacks. The reply's `model` is
    /// the name of the model that answered.
    ///
    /// # Errors
    /// The classified failure: of the last model tried, a request failure
    /// handed back at once, `NOT_FOUND` for a name in `chain` that is not
    /// configured, `INVALID_INPUT` for an empty chain.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the turn: the request in flight is left
    /// to finish in its actor and its answer is dropped; nothing is retried.
    pub async fn complete(
        &self,
        chain: &[String],
        request: &ModelRequest,
        ctx: &ToolContext,
    ) -> Result<ModelReply, ToolOutcome> {
        let mut answer = self.complete_unmasked(chain, request, ctx).await;
        if let Some(redactor) = self.redactor.get() {
            match &mut answer {
                Ok(reply) => {
                    // The text is shown to people: every pattern. The
                    // arguments are a command the agent meant: only the
                    // known values, so a pattern cannot rewrite a call.
                    if let Some(text) = &mut reply.text {
                        redactor.redact_string(text);
                    }
                    for call in &mut reply.tool_calls {
                        redactor.known().mask_value(&mut call.arguments);
                    }
                }
                Err(outcome) => redactor.redact_outcome(outcome),
            }
        }
        answer
    }

    /// Masks secrets in every answer [`complete`](Self::complete) gives
    /// from now on: the reply's text (known values and patterns), its tool
    /// calls' arguments (known values only) and a failure's outcome (a
    /// provider's error can quote the key it refused). Set once, at start;
    /// a second call is ignored.
    pub fn set_redactor(&self, redactor: Arc<Redactor>) {
        let _ = self.redactor.set(redactor);
    }

    async fn complete_unmasked(
        &self,
        chain: &[String],
        request: &ModelRequest,
        ctx: &ToolContext,
    ) -> Result<ModelReply, ToolOutcome> {
        if chain.is_empty() {
            return Err(ToolOutcome::from_code(
                ErrorCode::InvalidInput,
                "the model chain is empty: no model to ask",
            ));
        }
        let mut entries = Vec::with_capacity(chain.len());
        for name in chain {
            let name = self.resolve(name)?;
            if let Some(entry) = self.entries.get(&name) {
                entries.push(Arc::clone(entry));
            }
        }
        let request = Arc::new(request.clone());
        let calls: Vec<ModelCall<'_>> = entries
            .iter()
            .map(|entry| ModelCall {
                models: self,
                entry,
                request: &request,
            })
            .collect();
        let rules = Rules {
            retry: self.retry,
            attempts_per_call: u32::MAX,
            // A model retry is bounded by the retry policy and the
            // endpoint's budget, not the session's tool-call budget.
            charge_iterations: false,
            rounds: self.turn_rounds,
            deadline: Some(Instant::now() + self.turn_deadline),
        };
        let ended = self.engine.run(&calls, &rules, ctx).await;
        match ended.result {
            Ok(mut reply) => {
                if let Some(entry) = entries.get(ended.index) {
                    reply.model = entry.config.name.clone();
                }
                Ok(reply)
            }
            Err(mut outcome) => {
                if outcome.code != Some(ErrorCode::InvalidInput) {
                    let tried: Vec<&str> = entries
                        .iter()
                        .take(ended.tried)
                        .map(|e| e.config.name.as_str())
                        .collect();
                    outcome
                        .extra
                        .insert("models_tried".to_owned(), json!(tried));
                }
                Err(outcome)
            }
        }
    }

    /// One request through the model's current actor.
    async fn call_actor(
        &self,
        entry: &Entry,
        request: &Arc<ModelRequest>,
    ) -> Result<ModelReply, ToolOutcome> {
        let name = &entry.config.name;
        // A request the actor never took (it died first) reached nothing
        // and goes to the replacement; a few times at most, since each try
        // waits for a new incarnation.
        let policy = CallPolicy::new(self.ready_wait)
            .reply_deadline(Some(entry.config.timeout + REPLY_SLACK));
        let sent = SupervisedCall::new(&entry.address, policy)
            .send(|taken, reply| Task {
                request: Arc::clone(request),
                taken,
                reply,
            })
            .await;
        match sent {
            Ok(answer) => answer,
            Err(CallError::Timeout { after }) => Err(ToolOutcome::timeout(format!(
                "model `{name}` gave no answer within {} ms",
                after.as_millis()
            ))
            .with_data(json!({ "model": name }))),
            Err(CallError::Interrupted { .. }) => {
                let mut outcome = ToolOutcome::from_code(
                    ErrorCode::Interrupted,
                    format!("the actor of model `{name}` stopped while the request was running"),
                )
                .with_data(json!({ "model": name }));
                // A completion changes nothing, so asking again is safe.
                outcome.retryable = true;
                Err(outcome)
            }
            Err(CallError::NotRunning { waited, .. }) => Err(not_running(name, waited)),
        }
    }
}

/// One model of a chain, asked one turn: what the engine calls.
struct ModelCall<'a> {
    models: &'a Models,
    entry: &'a Arc<Entry>,
    request: &'a Arc<ModelRequest>,
}

impl Callee for ModelCall<'_> {
    type Reply = ModelReply;

    fn endpoint(&self) -> &str {
        &self.entry.endpoint
    }

    fn name(&self) -> &str {
        &self.entry.config.name
    }

    fn kind(&self) -> &'static str {
        "model"
    }

    fn attempt_data(&self, attempt: u32) -> Value {
        json!({ "model": self.entry.config.name, "attempt": attempt })
    }

    fn timeout(&self) -> Duration {
        // A backstop only: the actor call bounds its own wait (the
        // endpoint's timeout plus slack, after waiting for a restart).
        self.entry.config.timeout + REPLY_SLACK + self.models.ready_wait * 4 + REPLY_SLACK
    }

    fn before_attempt(&self, attempt: u32) {
        if let Some(deltas) = &self.request.deltas {
            deltas.attempt(attempt);
        }
    }

    async fn call(&self, _ctx: &ToolContext) -> Result<ModelReply, ToolOutcome> {
        self.models.call_actor(self.entry, self.request).await
    }

    fn reply_outcome(_reply: &ModelReply) -> Option<&ToolOutcome> {
        None
    }

    fn decide(
        &self,
        outcome: &ToolOutcome,
        attempts: u32,
        _fallback_available: bool,
        policy: &RetryPolicy,
        unit: f64,
    ) -> Step {
        match step_after_failure(outcome, attempts, policy, unit) {
            ChainStep::Retry { delay } => Step::Retry { delay },
            ChainStep::NextModel => Step::Fallback,
            ChainStep::Return => Step::Return,
        }
    }

    fn may_fall_back(&self, _outcome: &ToolOutcome) -> bool {
        // A completion changes nothing: any model may take it.
        true
    }

    fn refused(&self, retry_in: Duration) -> ToolOutcome {
        breaker_open(self.entry, retry_in)
    }

    fn waits_for_breaker(&self) -> bool {
        // An open breaker skips the model at once; the turn's next walk of
        // the chain (after the backoff) asks it again.
        false
    }
}

fn breaker_open(entry: &Entry, retry_in: Duration) -> ToolOutcome {
    let millis = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX);
    ToolOutcome::from_code(
        ErrorCode::ServiceUnavailable,
        format!(
            "the breaker of model `{}` is open after repeated failures; it was not asked \
             (next probe in {millis} ms)",
            entry.config.name
        ),
    )
    .with_retry_after(retry_in)
    .with_data(json!({ "model": entry.config.name, "endpoint": entry.endpoint, "breaker": "open" }))
    .undelivered()
}

fn not_running(name: &str, waited: Duration) -> ToolOutcome {
    ToolOutcome::from_code(
        ErrorCode::ServiceUnavailable,
        format!(
            "the actor of model `{name}` is not running (waited {} ms for a restart); \
             the request was not sent",
            waited.as_millis()
        ),
    )
    .with_data(json!({ "model": name }))
    .undelivered()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(RetryConfig {
            max_attempts: 3,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            jitter: 0.0,
            max_retry_after: Duration::from_secs(5),
        })
        .unwrap()
    }

    #[test]
    fn the_chain_retries_then_moves_on_and_returns_request_errors() {
        let p = policy();
        let busy = ToolOutcome::from_code(ErrorCode::ServiceUnavailable, "503");
        assert_eq!(
            step_after_failure(&busy, 1, &p, 0.0),
            ChainStep::Retry {
                delay: Duration::from_millis(100)
            }
        );
        assert_eq!(step_after_failure(&busy, 3, &p, 0.0), ChainStep::NextModel);
        let limited = ToolOutcome::from_code(ErrorCode::RateLimited, "429")
            .with_retry_after(Duration::from_secs(2));
        assert_eq!(
            step_after_failure(&limited, 1, &p, 0.0),
            ChainStep::Retry {
                delay: Duration::from_secs(2)
            }
        );
        for code in [
            ErrorCode::Unauthenticated,
            ErrorCode::PermissionDenied,
            ErrorCode::Internal,
            ErrorCode::ContextTooLong,
            ErrorCode::NotFound,
        ] {
            let outcome = ToolOutcome::from_code(code.clone(), "x");
            assert_eq!(
                step_after_failure(&outcome, 1, &p, 0.0),
                ChainStep::NextModel,
                "{code}"
            );
        }
        let bad = ToolOutcome::from_code(ErrorCode::InvalidInput, "400");
        assert_eq!(step_after_failure(&bad, 1, &p, 0.0), ChainStep::Return);
    }

    #[test]
    fn names_are_checked() {
        for good in ["gpt", "gpt-4o-mini", "claude.sonnet_4", "0x"] {
            assert!(valid_model_name(good), "{good}");
        }
        for bad in ["", "-x", "GPT", "a b", "a/b", ".x"] {
            assert!(!valid_model_name(bad), "{bad}");
        }
    }
}
