//! [`Models`]: every configured model endpoint, as supervised actors, and
//! the model chain a session asks.
//!
//! # The chain
//! [`Models::complete`] asks the models of a chain in order. For each:
//! 1. its breaker (the [`EndpointHealth`]
//!    of `model/<name>`, see [`endpoint_name`], shared with every session)
//!    is asked first; an open breaker skips the model at once, without
//!    waiting out the cool-down;
//! 2. the request goes to the model's actor; the answer is reported to the
//!    breaker ([`counts_against_endpoint`] decides whether a failure is
//!    the endpoint's);
//! 3. a failure goes through [`step_after_failure`]: a retryable one
//!    (rate limit, 5xx, timeout, refused connection, an actor killed
//!    mid-request) is retried after the [`RetryPolicy`]'s delay, a 429's
//!    `Retry-After` replacing it up to `max_retry_after`, each retry
//!    charged to the endpoint's shared retry budget; once the attempts (or
//!    the budget) are spent, and at once for bad credentials (401/403), a
//!    malformed answer, an unknown model (404) or a context-length
//!    overflow (another model may have a larger window), the next model
//!    is asked;
//! 4. an `INVALID_INPUT` failure (a 400 about the request itself) is
//!    handed back at once: every model would refuse it, and the session
//!    must see it.
//!
//! When the chain runs out, the last failure is handed back, with the
//! models tried in `data.models_tried`. Every step emits an event (retry,
//! fallback, shed, breaker transition, each failed attempt) carrying the
//! call's session. Model retries are not charged to the session's
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
use serde_json::json;
use tokio::time::Instant;

use super::actor::{ModelActor, ModelActorArgs, ModelWork};
use super::{
    AnthropicClient, ModelClient, ModelConfig, ModelMsg, ModelReply, ModelRequest, OpenAiClient,
    Provider, ScriptedModel,
};
use crate::audit::Redactor;
use crate::catalog::ErrorCode;
use crate::dispatch::{EndpointHealth, Endpoints, ToolContext, state_name};
use crate::event::{Event, EventKind, EventSink, Level};
use crate::outcome::{Hint, HintKind, ToolOutcome};
use crate::recovery::{
    Admission, BreakerState, RetryConfig, RetryPolicy, RetryPolicyError, Transition,
    counts_against_endpoint,
};
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
}

impl Default for ModelsOptions {
    /// [`RetryConfig::default`] (three attempts, a `Retry-After` honoured
    /// up to a minute), [`DEFAULT_READY_WAIT`], the process environment.
    fn default() -> Self {
        Self {
            retry: RetryConfig::default(),
            ready_wait: DEFAULT_READY_WAIT,
            env: Arc::new(|var| std::env::var(var).ok()),
        }
    }
}

impl std::fmt::Debug for ModelsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelsOptions")
            .field("retry", &self.retry)
            .field("ready_wait", &self.ready_wait)
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
    endpoints: Arc<Endpoints>,
    sink: Arc<dyn EventSink>,
    retry: RetryPolicy,
    ready_wait: Duration,
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
        Ok(Arc::new(Self {
            entries,
            endpoints,
            sink,
            retry,
            ready_wait: options.ready_wait,
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
        let mut tried: Vec<String> = Vec::new();
        let mut last: Option<ToolOutcome> = None;
        for (index, entry) in entries.iter().enumerate() {
            let outcome = match self.ask(entry, &request, ctx).await {
                Ok(mut reply) => {
                    reply.model = entry.config.name.clone();
                    return Ok(reply);
                }
                Err(Asked::Return(outcome)) => return Err(outcome),
                Err(Asked::Next(outcome)) => outcome,
            };
            tried.push(entry.config.name.clone());
            if let Some(next) = entries.get(index + 1) {
                self.emit(
                    Event::new(
                        Level::Warning,
                        &entry.endpoint,
                        EventKind::Fallback,
                        format!(
                            "model `{}` failed ({}); asking `{}`",
                            entry.config.name,
                            describe(&outcome),
                            next.config.name
                        ),
                    )
                    .with_data(json!({
                        "from": entry.config.name,
                        "from_endpoint": entry.endpoint,
                        "to": next.config.name,
                        "to_endpoint": next.endpoint,
                        "after": outcome.code.as_ref().map(ErrorCode::as_str),
                    })),
                    ctx,
                );
            }
            last = Some(outcome);
        }
        let mut outcome = last.unwrap_or_else(|| {
            ToolOutcome::from_code(ErrorCode::Internal, "the model chain ran out of models")
        });
        outcome
            .extra
            .insert("models_tried".to_owned(), json!(tried));
        Err(outcome)
    }

    /// Asks one model, with its retries.
    async fn ask(
        &self,
        entry: &Entry,
        request: &Arc<ModelRequest>,
        ctx: &ToolContext,
    ) -> Result<ModelReply, Asked> {
        let health = self.endpoints.get(&entry.endpoint);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let started = Instant::now();
            let (admission, transition) = health.lock_breaker().allow(started.into_std());
            self.emit_transition(&entry.endpoint, transition, ctx);
            if let Admission::Rejected { retry_in } = admission {
                return Err(Asked::Next(breaker_open(entry, retry_in)));
            }
            if attempts == 1 {
                // One deposit per original request, never for a retry.
                health.budget.deposit(started.into_std());
            }
            let answer = self.call_actor(entry, request).await;
            let ended = Instant::now();
            let outcome = match answer {
                Ok(reply) => {
                    let transition = health.lock_breaker().on_success(ended.into_std());
                    self.emit_transition(&entry.endpoint, transition, ctx);
                    self.emit_answered(entry, ended - started, ctx);
                    return Ok(reply);
                }
                Err(outcome) => outcome,
            };
            self.report_failure(entry, &health, &outcome, ended, ctx);
            match step_after_failure(&outcome, attempts, &self.retry, fastrand::f64()) {
                ChainStep::Return => return Err(Asked::Return(outcome)),
                ChainStep::NextModel => return Err(Asked::Next(outcome)),
                ChainStep::Retry { delay } => {
                    if !health.budget.withdraw(Instant::now().into_std()) {
                        self.emit(
                            Event::from_outcome(&entry.endpoint, EventKind::Shed, &outcome)
                                .with_data(json!({
                                    "model": entry.config.name,
                                    "reason": "retry budget spent",
                                })),
                            ctx,
                        );
                        return Err(Asked::Next(outcome));
                    }
                    self.emit(
                        Event::new(
                            Level::Warning,
                            &entry.endpoint,
                            EventKind::Retry,
                            format!(
                                "asking model `{}` again in {} ms after {}",
                                entry.config.name,
                                delay.as_millis(),
                                describe(&outcome)
                            ),
                        )
                        .with_data(json!({
                            "model": entry.config.name,
                            "attempt": attempts + 1,
                            "delay_ms": u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                            "after": outcome.code.as_ref().map(ErrorCode::as_str),
                        })),
                        ctx,
                    );
                    tokio::time::sleep(delay).await;
                }
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

    fn report_failure(
        &self,
        entry: &Entry,
        health: &EndpointHealth,
        outcome: &ToolOutcome,
        ended: Instant,
        ctx: &ToolContext,
    ) {
        let transition = if counts_against_endpoint(outcome) {
            health.lock_breaker().on_failure(ended.into_std())
        } else {
            health.lock_breaker().on_success(ended.into_std())
        };
        let mut event = Event::from_outcome(&entry.endpoint, EventKind::ToolOutcome, outcome);
        if let Some(map) = event.data.as_object_mut() {
            map.insert("model".to_owned(), json!(entry.config.name));
        }
        self.emit(event, ctx);
        self.emit_transition(&entry.endpoint, transition, ctx);
    }

    fn emit_answered(&self, entry: &Entry, took: Duration, ctx: &ToolContext) {
        if self.sink.enabled(Level::Info) {
            let took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
            self.emit(
                Event::new(
                    Level::Info,
                    &entry.endpoint,
                    EventKind::ToolOutcome,
                    format!("model `{}` answered in {took_ms} ms", entry.config.name),
                )
                .with_data(json!({
                    "model": entry.config.name,
                    "status": "success",
                    "duration_ms": took_ms,
                })),
                ctx,
            );
        }
    }

    fn emit_transition(&self, endpoint: &str, transition: Option<Transition>, ctx: &ToolContext) {
        if let Some(t) = transition {
            let level = if t.to == BreakerState::Open {
                Level::Error
            } else {
                Level::Info
            };
            self.emit(
                Event::new(
                    level,
                    endpoint,
                    EventKind::Breaker,
                    format!(
                        "breaker of `{endpoint}` {} -> {}",
                        state_name(t.from),
                        state_name(t.to)
                    ),
                )
                .with_data(json!({ "from": state_name(t.from), "to": state_name(t.to) })),
                ctx,
            );
        }
    }

    fn emit(&self, mut event: Event, ctx: &ToolContext) {
        if let Some(session) = &ctx.session {
            event = event.with_session(session.clone());
        }
        self.sink.emit(event);
    }
}

/// How asking one model ended, when it did not answer.
enum Asked {
    /// Try the next model with this failure.
    Next(ToolOutcome),
    /// Hand this failure back now.
    Return(ToolOutcome),
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

fn describe(outcome: &ToolOutcome) -> String {
    match &outcome.code {
        Some(code) => format!("{code}: {}", outcome.message),
        None => format!("{:?}: {}", outcome.status, outcome.message),
    }
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
