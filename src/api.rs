//! The control-plane HTTP API: what `hale serve` puts in front of a
//! [`Runtime`].
//!
//! Operators and programs drive many concurrent agents through it, so it
//! must say clearly what went wrong and never fall over on bad input:
//! every error is `{"error":{"code","message"}}` with the status that fits
//! (bad JSON, unknown fields, oversized bodies and unknown ids are 4xx,
//! never a 500), every route but `/metrics` and `/healthz` needs the
//! bearer token (compared in constant time), and the OpenAPI document is
//! generated from the same handler annotations the router is built from
//! (`utoipa-axum`), so the two cannot drift.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use futures_util::Stream;
use hale_actors::escalation::{Answer, ApprovalNotice, EscalationError};
use hale_actors::event::{Event, Level};
use hale_actors::session::{DeltaEvent, MessageId, Progress, SessionError};
use hale_actors::store::{
    EventFilter, EventQuery, Grep, MessageRecord, MessageState, SessionStore,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::metrics::Cached;
use crate::runtime::{Runtime, RuntimeError};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// The longest `?wait=` accepted, in seconds.
pub const MAX_WAIT_SECS: u64 = 300;
/// Events queued between a `/v1/events` stream and its connection. A
/// client that reads slower than events come fills it; then that
/// stream's events are dropped (not queued) until it catches up, and it
/// gets a `lagged` event saying how many it missed.
pub const EVENT_STREAM_BUFFER: usize = 64;
/// `Retry-After` (seconds) when every `/v1/events` slot is taken.
pub const EVENT_STREAM_RETRY_AFTER: u64 = 5;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The runtime served.
    pub runtime: Runtime,
    /// The bearer token.
    pub token: Arc<str>,
    /// Whether `/v1/chaos/kill` is enabled.
    pub allow_chaos: bool,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("allow_chaos", &self.allow_chaos)
            .finish_non_exhaustive()
    }
}

/// What the requests of one router share beyond [`ApiState`]: the
/// `/v1/events` slots and what `/metrics` last read from the store.
#[derive(Debug)]
struct Limits {
    streams: Arc<tokio::sync::Semaphore>,
    max_streams: usize,
    snapshot: Cached<Snapshot>,
    /// Events dropped for streams that read too slowly.
    missed: AtomicU64,
}

impl Limits {
    fn new(settings: &crate::config::ServeSettings) -> Self {
        let max_streams = settings.max_event_streams.max(1);
        Self {
            streams: Arc::new(tokio::sync::Semaphore::new(max_streams)),
            max_streams,
            snapshot: Cached::new(settings.metrics_refresh),
            missed: AtomicU64::new(0),
        }
    }

    fn open_streams(&self) -> usize {
        self.max_streams - self.streams.available_permits()
    }

    fn lagged(&self, missed: u64) -> SseEvent {
        self.missed.fetch_add(missed, Ordering::Relaxed);
        sse("lagged", &json!({"missed": missed}))
    }
}

/// What `/metrics` reads at most once per `metrics_refresh`: one
/// counting query and the MCP servers' breakers.
#[derive(Debug, Default)]
struct Snapshot {
    counts: hale_actors::store::GaugeCounts,
    started: usize,
    breakers: Vec<(String, &'static str)>,
}

// ----------------------------------------------------------------- errors

/// An API error: a status and `{"error":{"code","message"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

/// The error body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable (`not_found`, `bad_request`, ...).
    pub code: String,
    /// For humans.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        });
        let mut response = (self.status, body).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        let message = e.to_string();
        match e {
            SessionError::UnknownSession(_) | SessionError::UnknownMessage(_) => {
                Self::not_found(message)
            }
            SessionError::Pruned(_) => Self::new(StatusCode::GONE, "gone", message),
            SessionError::UnknownAgent { .. }
            | SessionError::BadSessionId(_)
            | SessionError::BadMessageId(_)
            | SessionError::UnknownModel(_) => Self::bad_request(message),
            SessionError::Exists(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            SessionError::Busy { retry_after, .. } => {
                let mut error = Self::new(StatusCode::TOO_MANY_REQUESTS, "busy", message);
                error.retry_after = Some(retry_after.as_secs().max(1));
                error
            }
            SessionError::Escalation(e) => e.into(),
            SessionError::Store(_) | SessionError::Supervisor(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
        }
    }
}

impl From<EscalationError> for ApiError {
    fn from(e: EscalationError) -> Self {
        let message = e.to_string();
        match e {
            EscalationError::UnknownApproval(_) => Self::not_found(message),
            EscalationError::UnknownOption { .. }
            | EscalationError::InstructionsNotAllowed(_)
            | EscalationError::InvalidRequest(_) => Self::bad_request(message),
            EscalationError::AlreadyResolved { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", message)
            }
            EscalationError::TooManyOpen { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
            }
            EscalationError::Store(_) | EscalationError::Unavailable => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Session(e) => e.into(),
            RuntimeError::Escalation(e) => e.into(),
            RuntimeError::UnknownActor(_) => Self::not_found(e.to_string()),
            other => Self::internal(other.to_string()),
        }
    }
}

/// `Json` whose rejections are API errors, and whose body must be a JSON
/// object: serde reads a struct from an array too (`[null, null]` as
/// `{"agent": null, "id": null}`), which the document does not allow.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as `content-type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                let status = rejection.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(status, "too_large", rejection.body_text())
                } else {
                    ApiError::bad_request(rejection.body_text())
                }
            })?;
        let object = bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{');
        if !object && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_request",
                "the body must be a JSON object",
            ));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => {
                let status = rejection.status();
                let status = if status.is_client_error() {
                    status
                } else {
                    StatusCode::BAD_REQUEST
                };
                Err(ApiError::new(status, "bad_request", rejection.body_text()))
            }
        }
    }
}

/// Whether the request says its body is JSON (`application/json`, or an
/// `application/*+json` type), as axum's `Json` requires.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence
        .strip_prefix("application/")
        .is_some_and(|subtype| subtype == "json" || subtype.ends_with("+json"))
}

/// `Query` whose rejections are API errors.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => {
                let rejection: QueryRejection = rejection;
                Err(ApiError::bad_request(rejection.body_text()))
            }
        }
    }
}

/// `Path` whose rejections are API errors: a path segment that is not
/// valid percent-encoded UTF-8, or not of the declared type (an unknown
/// MCP action), is a 400 with the error body like every other refusal.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => {
                let rejection: PathRejection = rejection;
                Err(ApiError::bad_request(rejection.body_text()))
            }
        }
    }
}

// -------------------------------------------------------------- resources

/// `POST /v1/sessions` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// The agent (default `default`).
    #[serde(default)]
    pub agent: Option<String>,
    /// An id of your own (1-64 of `[A-Za-z0-9_-]`); generated if absent.
    #[serde(default)]
    pub id: Option<String>,
}

/// A created session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Created {
    /// Its id.
    pub id: String,
}

/// A session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionResource {
    /// Its id.
    pub id: String,
    /// Its agent.
    pub agent: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// The model it was switched to, if any.
    pub model: Option<String>,
    /// `stalled` while its journal cannot be written (disk full: it asks
    /// the model nothing and retries with backoff), else `active`.
    pub status: String,
}

/// A session in detail.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionDetail {
    /// Its id.
    pub id: String,
    /// Its agent.
    pub agent: String,
    /// When it was created.
    pub created_at: String,
    /// The model it was switched to, if any.
    pub model: Option<String>,
    /// `idle`, `queued`, `running`, `waiting_approval`, or `stalled` (its
    /// journal cannot be written).
    pub state: String,
    /// Messages in all.
    pub messages: usize,
    /// Messages not finished.
    pub unfinished: usize,
    /// Tool calls left in the current message's budget.
    pub budget_left: Option<u32>,
    /// The agent's budget per message.
    pub budget: u32,
    /// The open approval it waits on, if any.
    pub pending_approval: Option<String>,
    /// The error of its last failed message, if any.
    pub last_error: Option<String>,
    /// The tokens its model turns used, as the models reported them.
    pub usage: TokenUsage,
    /// The same, per model (by the model's configured name).
    pub usage_by_model: BTreeMap<String, TokenUsage>,
}

/// Tokens used, as the models reported them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenUsage {
    /// Prompt tokens (cached ones included).
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Prompt tokens served from the provider's cache.
    pub cached_tokens: u64,
}

impl From<hale_actors::model::Usage> for TokenUsage {
    fn from(u: hale_actors::model::Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.cached_tokens,
        }
    }
}

/// `POST /v1/sessions/{id}/messages` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// The message.
    pub text: String,
}

/// `?wait=` on a send.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// Seconds to wait for the reply (at most 300).
    #[param(minimum = 0, maximum = 300)]
    pub wait: Option<u64>,
}

/// An accepted message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// Its id (`<session>:<n>`).
    pub message_id: String,
}

/// A message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageResource {
    /// `<session>:<n>`.
    pub id: String,
    /// The session.
    pub session: String,
    /// The text sent.
    pub text: String,
    /// `queued`, `running`, `waiting_approval`, `done` or `failed`.
    pub status: String,
    /// The reply, once done.
    pub reply: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was accepted.
    pub created_at: String,
    /// When it finished.
    pub finished_at: Option<String>,
}

impl From<MessageRecord> for MessageResource {
    fn from(r: MessageRecord) -> Self {
        Self {
            id: format!("{}:{}", r.session, r.seq),
            session: r.session,
            text: r.text,
            status: r.state.as_str().to_owned(),
            reply: r.reply,
            error: r.error,
            created_at: r.created_at.to_string(),
            finished_at: r.finished_at.map(|t| t.to_string()),
        }
    }
}

/// `?state=` on the approvals list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ApprovalParams {
    /// `open` for open approvals only (`all`, the default, for every one).
    #[param(inline)]
    pub state: Option<ApprovalState>,
}

/// Which approvals to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    /// Open approvals only.
    Open,
    /// Every approval.
    All,
}

/// An approval: request (title, description, diagnosis, options,
/// recommendation), times, and resolution once decided.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(value_type = Object)]
pub struct ApprovalResource(pub Value);

/// `POST /v1/approvals/{id}` body: an option or instructions.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decide {
    /// An option id (or `abort`).
    #[serde(default)]
    pub option: Option<String>,
    /// Free-text instructions.
    #[serde(default)]
    pub instructions: Option<String>,
}

/// `GET /v1/logs` filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// That level and above.
    #[param(inline)]
    pub level: Option<LogLevel>,
    /// RFC 3339, or relative (`1h`, `30m`).
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<String>,
    /// RFC 3339, or relative.
    #[param(value_type = Option<String>, format = DateTime)]
    pub until: Option<String>,
    /// Text to find (smart case).
    pub grep: Option<String>,
    /// One session's events.
    pub session: Option<String>,
    /// At most this many (default 100, at most 10000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<usize>,
    /// One kind of event (`tool_outcome`, `retry`, `message_done`, ...).
    pub kind: Option<String>,
}

/// A level on `GET /v1/logs`: exactly hale's level names (the CLI reads
/// the aliases, such as `warn` or `ERROR`, and sends these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything.
    Debug,
    /// Info and above.
    Info,
    /// Warnings and above.
    Warning,
    /// Errors and above.
    Error,
    /// Critical only.
    Critical,
}

impl From<LogLevel> for Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Debug => Level::Debug,
            LogLevel::Info => Level::Info,
            LogLevel::Warning => Level::Warning,
            LogLevel::Error => Level::Error,
            LogLevel::Critical => Level::Critical,
        }
    }
}

/// An audit event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(value_type = Object)]
pub struct EventResource(pub Value);

/// An actor of the supervision tree.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ActorResource {
    /// Its stable path (`hale/mcp/weather`).
    pub id: String,
    /// supervisor, session, tool, mcp, model, memory, escalation, audit.
    pub kind: String,
    /// running, restart_pending, stopped, parked.
    pub state: String,
    /// Restarts so far.
    pub restarts: u64,
    /// Why it last exited.
    pub last_exit: Option<String>,
    /// On the `exec` tool only: the sandbox in force (`off`,
    /// `landlock (network none, as nobody)`, or why exec is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An MCP server's report.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(value_type = Object)]
pub struct McpResource(pub Value);

/// What `POST /v1/mcp/{name}/{action}` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum McpAction {
    /// Starts a disabled server.
    Enable,
    /// Stops a server and keeps it stopped.
    Disable,
    /// Restarts a server.
    Restart,
}

/// `POST /v1/models/switch` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchModel {
    /// A session to switch.
    #[serde(default)]
    pub session: Option<String>,
    /// An agent to switch (every session of it without a model of its own).
    #[serde(default)]
    pub agent: Option<String>,
    /// The model (`null` restores the configured chain).
    pub model: Option<String>,
}

/// The model now in force.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Switched {
    /// The model first in the chain from now on (`null`: the configured chain).
    pub model: Option<String>,
}

/// `POST /v1/chaos/kill` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Kill {
    /// An actor id from `/v1/tree`, or `random`.
    #[schema(example = "random")]
    pub target: String,
    /// With `random`: session, tool, mcp, model, memory, escalation or audit.
    #[serde(default)]
    pub kind: Option<String>,
}

/// What was killed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Killed {
    /// The actor id.
    pub killed: String,
}

/// `GET /v1/events` filter.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// One session's events.
    pub session: Option<String>,
}

/// Liveness.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `starting` or `ok`.
    pub status: String,
}

// ---------------------------------------------------------------- handlers

fn parse_message_id(id: &str) -> Result<MessageId, ApiError> {
    id.parse::<MessageId>().map_err(ApiError::from)
}

/// Creates a session.
#[utoipa::path(post, path = "/v1/sessions", request_body = CreateSession,
    responses((status = 201, body = Created),
        (status = 400, body = ErrorBody, description = "an unknown agent or a malformed id"),
        (status = 409, body = ErrorBody, description = "a session with this id exists"),
        (status = 503, body = ErrorBody, description = "the store failed")))]
async fn create_session(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateSession>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let agent = body.agent.unwrap_or_else(|| "default".to_owned());
    let id = state.runtime.sessions().create(&agent, body.id).await?;
    Ok((StatusCode::CREATED, Json(Created { id })))
}

/// Lists the sessions.
#[utoipa::path(get, path = "/v1/sessions", responses((status = 200, body = Vec<SessionResource>),
    (status = 503, body = ErrorBody, description = "the store failed")))]
async fn list_sessions(
    State(state): State<ApiState>,
) -> Result<Json<Vec<SessionResource>>, ApiError> {
    let sessions = state.runtime.sessions().list().await?;
    Ok(Json(
        sessions
            .into_iter()
            .map(|s| SessionResource {
                status: if state.runtime.sessions().stalls().is_stalled(&s.id) {
                    "stalled"
                } else {
                    "active"
                }
                .to_owned(),
                id: s.id,
                agent: s.agent,
                created_at: s.created_at.to_string(),
                model: s.model,
            })
            .collect(),
    ))
}

/// One session: state, budget, pending approval, last error, tokens used.
#[utoipa::path(get, path = "/v1/sessions/{id}", params(("id" = String, Path, description = "session id")),
    responses((status = 200, body = SessionDetail), (status = 404, body = ErrorBody),
        (status = 500, body = ErrorBody, description = "its journal could not be read"),
        (status = 503, body = ErrorBody, description = "the store failed")))]
async fn get_session(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionDetail>, ApiError> {
    let sessions = state.runtime.sessions();
    let record = sessions.get(&id).await?;
    let messages = sessions.messages(&id).await?;
    let current = messages.iter().find(|m| !m.state.is_final());
    let session_state = match current {
        _ if sessions.stalls().is_stalled(&id) => "stalled",
        None => "idle",
        Some(m) => m.state.as_str(),
    };
    let budget_left = match current {
        Some(m) => {
            let journal = state
                .runtime
                .store()
                .journal_entries(id.clone())
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Progress::replay(
                journal
                    .iter()
                    .filter(|r| r.message == m.seq)
                    .map(|r| r.entry.as_str()),
            )
            .budget_left
        }
        None => None,
    };
    let pending_approval = state
        .runtime
        .approvals(true)
        .await?
        .into_iter()
        .find(|a| a.request.requester.as_deref() == Some(id.as_str()))
        .map(|a| a.id);
    let last_error = messages
        .iter()
        .rev()
        .find(|m| m.state == MessageState::Failed)
        .and_then(|m| m.error.clone());
    let budget = state
        .runtime
        .config()
        .agents
        .iter()
        .find(|a| a.name == record.agent)
        .map_or(0, |a| a.budget);
    let tokens = state
        .runtime
        .store()
        .session_tokens(id.clone())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let usage = tokens
        .iter()
        .fold(hale_actors::model::Usage::default(), |sum, t| {
            sum.plus(t.usage)
        });
    Ok(Json(SessionDetail {
        id: record.id,
        agent: record.agent,
        created_at: record.created_at.to_string(),
        model: record.model,
        state: session_state.to_owned(),
        messages: messages.len(),
        unfinished: messages.iter().filter(|m| !m.state.is_final()).count(),
        budget_left,
        budget,
        pending_approval,
        last_error,
        usage: usage.into(),
        usage_by_model: tokens
            .into_iter()
            .map(|t| (t.model, t.usage.into()))
            .collect(),
    }))
}

/// Deletes a session (its rows stay for the audit trail).
#[utoipa::path(delete, path = "/v1/sessions/{id}", params(("id" = String, Path, description = "session id")),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "the store failed")))]
async fn delete_session(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.runtime.sessions().delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends a message; with `?wait=S`, waits up to S seconds for the reply.
#[utoipa::path(post, path = "/v1/sessions/{id}/messages", request_body = SendMessage,
    params(("id" = String, Path, description = "session id"), WaitParams),
    responses((status = 200, body = MessageResource, description = "done within the wait"),
        (status = 202, body = Accepted, description = "stored; not done (yet)"),
        (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "the session's queue is full (see Retry-After)",
            headers(("retry-after" = u64, description = "seconds to wait"))),
        (status = 503, body = ErrorBody, description = "the store failed")))]
async fn send_message(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<WaitParams>,
    ApiJson(body): ApiJson<SendMessage>,
) -> Result<Response, ApiError> {
    if let Some(wait) = params.wait
        && wait > MAX_WAIT_SECS
    {
        return Err(ApiError::bad_request(format!(
            "wait={wait}: at most {MAX_WAIT_SECS} seconds"
        )));
    }
    let message_id = state.runtime.send(&id, &body.text).await?;
    if let Some(wait) = params.wait.filter(|w| *w > 0) {
        let done = state
            .runtime
            .sessions()
            .wait(&message_id, Duration::from_secs(wait))
            .await?;
        if let Some(record) = done {
            return Ok((StatusCode::OK, Json(MessageResource::from(record))).into_response());
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            message_id: message_id.to_string(),
        }),
    )
        .into_response())
}

/// One message.
#[utoipa::path(get, path = "/v1/messages/{message_id}",
    params(("message_id" = String, Path, description = "<session>:<n>")),
    responses((status = 200, body = MessageResource),
        (status = 400, body = ErrorBody, description = "not a message id"),
        (status = 404, body = ErrorBody),
        (status = 410, body = ErrorBody, description = "deleted by retention"),
        (status = 503, body = ErrorBody, description = "the store failed")))]
async fn get_message(
    State(state): State<ApiState>,
    ApiPath(message_id): ApiPath<String>,
) -> Result<Json<MessageResource>, ApiError> {
    let id = parse_message_id(&message_id)?;
    let record = state.runtime.sessions().message(&id).await?;
    Ok(Json(record.into()))
}

/// Approvals (`?state=open` for open ones).
#[utoipa::path(get, path = "/v1/approvals", params(ApprovalParams),
    responses((status = 200, body = Vec<ApprovalResource>),
        (status = 503, body = ErrorBody, description = "the store failed")))]
async fn list_approvals(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<ApprovalParams>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let open_only = params.state == Some(ApprovalState::Open);
    let approvals = state.runtime.approvals(open_only).await?;
    Ok(Json(approvals.iter().map(|a| shown(&state, a)).collect()))
}

/// Decides an approval with an option (or `abort`) or instructions.
#[utoipa::path(post, path = "/v1/approvals/{id}", request_body = Decide,
    params(("id" = String, Path, description = "approval id"),
        ("x-hale-operator" = Option<String>, Header,
            description = "who decides, recorded with the decision (`api` without it)",
            pattern = r"^[A-Za-z0-9._@+-]([A-Za-z0-9 ._@+-]{0,62}[A-Za-z0-9._@+-])?$")),
    responses((status = 200, body = ApprovalResource),
        (status = 400, body = ErrorBody, description = "an unknown option, instructions where none are allowed, or a bad x-hale-operator"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "decided otherwise already"),
        (status = 503, body = ErrorBody, description = "the store failed")))]
async fn decide_approval(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Decide>,
) -> Result<Json<Value>, ApiError> {
    let answer = match (body.option, body.instructions) {
        (Some(option), None) => Answer::Option(option),
        (None, Some(text)) => Answer::Instructions(text),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `option` and `instructions`",
            ));
        }
    };
    let by = operator_claim(headers.get(OPERATOR_HEADER))?;
    let resolution = state.runtime.resolve_approval(&id, answer, &by).await?;
    Ok(Json(shown(&state, &resolution)))
}

/// The header naming who decides an approval. The token authenticates;
/// the name is only the operator's claim, recorded with the decision.
const OPERATOR_HEADER: &str = "x-hale-operator";
/// The longest operator name accepted.
const MAX_OPERATOR_LEN: usize = 64;

/// Who decides, as recorded: the operator's claim from `x-hale-operator`
/// (at most 64 characters of letters, digits, space and `._@+-`), or
/// `api` without one. Anything else is refused rather than cleaned, so
/// the audit trail never records a name the operator did not send.
///
/// # Errors
/// 400 naming the rule the header broke.
fn operator_claim(header: Option<&axum::http::HeaderValue>) -> Result<String, ApiError> {
    let Some(header) = header else {
        return Ok("api".to_owned());
    };
    let bad = |why: &str| ApiError::bad_request(format!("header `{OPERATOR_HEADER}`: {why}"));
    let name = header
        .to_str()
        .map_err(|_| bad("not visible ASCII text"))?
        .trim();
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_OPERATOR_LEN {
        return Err(bad(&format!("longer than {MAX_OPERATOR_LEN} characters")));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " ._@+-".contains(c))
    {
        return Err(bad(
            "use only letters, digits, spaces and `._@+-` in an operator name",
        ));
    }
    Ok(name.to_owned())
}

/// The audit trail, newest first.
#[utoipa::path(get, path = "/v1/logs", params(LogParams),
    responses((status = 200, body = Vec<EventResource>),
        (status = 400, body = ErrorBody, description = "a filter that does not parse"),
        (status = 500, body = ErrorBody, description = "the audit store failed")))]
async fn logs(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<LogParams>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let now = jiff::Timestamp::now();
    let time = |value: &Option<String>, name: &str| -> Result<Option<jiff::Timestamp>, ApiError> {
        value
            .as_deref()
            .map(|v| {
                hale_actors::audit::parse_time(v, now)
                    .map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
            })
            .transpose()
    };
    let min_level = params.level.map(Level::from);
    let grep = params
        .grep
        .as_deref()
        .map(|g| Grep::text(g).map_err(|e| ApiError::bad_request(format!("grep: {e}"))))
        .transpose()?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::bad_request("limit: between 1 and 10000"));
    }
    let query = EventQuery::newest(
        EventFilter {
            min_level,
            since: time(&params.since, "since")?,
            until: time(&params.until, "until")?,
            grep,
            session: params.session,
            kind: params
                .kind
                .map(|k| serde_json::from_value(Value::String(k)))
                .transpose()
                .map_err(|e| ApiError::bad_request(format!("kind: {e}")))?,
            ..EventFilter::default()
        },
        limit,
    );
    Ok(Json(state.runtime.logs(query).await?))
}

/// The supervision tree, depth first.
#[utoipa::path(get, path = "/v1/tree", responses((status = 200, body = Vec<ActorResource>),
    (status = 500, body = ErrorBody, description = "the tree could not be walked")))]
async fn tree(State(state): State<ApiState>) -> Result<Json<Vec<ActorResource>>, ApiError> {
    let nodes = state.runtime.tree().await?;
    Ok(Json(
        nodes
            .into_iter()
            .map(|n| ActorResource {
                sandbox: (n.id == "hale/tools/exec").then(|| state.runtime.sandbox()),
                id: n.id,
                kind: n.kind,
                state: n.state,
                restarts: n.restarts,
                last_exit: n.last_exit,
            })
            .collect(),
    ))
}

/// The MCP servers.
#[utoipa::path(get, path = "/v1/mcp", responses((status = 200, body = Vec<McpResource>)))]
async fn list_mcp(State(state): State<ApiState>) -> Json<Vec<Value>> {
    let reports = state.runtime.mcp().list(state.runtime.endpoints()).await;
    Json(
        reports
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .collect(),
    )
}

/// Enables, disables or restarts an MCP server.
#[utoipa::path(post, path = "/v1/mcp/{name}/{action}",
    params(("name" = String, Path, description = "server"),
        ("action" = McpAction, Path, description = "enable, disable or restart")),
    responses((status = 200, body = McpResource),
        (status = 400, body = ErrorBody, description = "an unknown action"),
        (status = 404, body = ErrorBody, description = "no such server"),
        (status = 503, body = ErrorBody, description = "the server's actor did not answer")))]
async fn manage_mcp(
    State(state): State<ApiState>,
    ApiPath((name, action)): ApiPath<(String, McpAction)>,
) -> Result<Json<Value>, ApiError> {
    let mcp = state.runtime.mcp();
    if !mcp.names().contains(&name) {
        return Err(ApiError::not_found(format!(
            "no MCP server `{name}` (configured: {})",
            mcp.names().join(", ")
        )));
    }
    let result = match action {
        McpAction::Enable => mcp.enable(&name).await,
        McpAction::Disable => mcp.disable(&name).await,
        McpAction::Restart => mcp.restart(&name).await,
    };
    result.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    let report = mcp
        .list(state.runtime.endpoints())
        .await
        .into_iter()
        .find(|r| r.name == name);
    Ok(Json(serde_json::to_value(report).unwrap_or(Value::Null)))
}

/// Switches the model of a session or of an agent.
#[utoipa::path(post, path = "/v1/models/switch", request_body = SwitchModel,
    responses((status = 200, body = Switched),
        (status = 400, body = ErrorBody, description = "an unknown agent or model, or not exactly one of session and agent"),
        (status = 404, body = ErrorBody, description = "no such session"),
        (status = 503, body = ErrorBody, description = "the store failed")))]
async fn switch_model(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<SwitchModel>,
) -> Result<Json<Switched>, ApiError> {
    let sessions = state.runtime.sessions();
    let model = match (body.session, body.agent) {
        (Some(session), None) => {
            sessions
                .switch_model(&session, body.model.as_deref())
                .await?
        }
        (None, Some(agent)) => {
            sessions
                .switch_agent_model(&agent, body.model.as_deref())
                .await?
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `session` and `agent`",
            ));
        }
    };
    Ok(Json(Switched { model }))
}

const KINDS: &[&str] = &[
    "session",
    "tool",
    "mcp",
    "model",
    "memory",
    "escalation",
    "audit",
];

/// Kills an actor (enabled with `hale serve --allow-chaos`).
#[utoipa::path(post, path = "/v1/chaos/kill", request_body = Kill,
    responses((status = 200, body = Killed),
        (status = 400, body = ErrorBody, description = "an unknown kind"),
        (status = 403, body = ErrorBody, description = "chaos is disabled"),
        (status = 404, body = ErrorBody, description = "no such actor, or none running of that kind"),
        (status = 500, body = ErrorBody, description = "the tree could not be walked")))]
async fn chaos_kill(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<Kill>,
) -> Result<Json<Killed>, ApiError> {
    if !state.allow_chaos {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "chaos is disabled; start `hale serve --allow-chaos` to enable it",
        ));
    }
    if let Some(kind) = &body.kind
        && !KINDS.contains(&kind.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "unknown kind `{kind}`: use one of {}",
            KINDS.join(", ")
        )));
    }
    let target = if body.target == "random" {
        let nodes = state.runtime.tree().await?;
        let candidates: Vec<_> = nodes
            .into_iter()
            .filter(|n| n.state == "running")
            .filter(|n| match &body.kind {
                Some(kind) => &n.kind == kind,
                None => KINDS.contains(&n.kind.as_str()),
            })
            .collect();
        if candidates.is_empty() {
            return Err(ApiError::not_found("no running actor of that kind"));
        }
        candidates[fastrand::usize(..candidates.len())].id.clone()
    } else {
        body.target
    };
    state.runtime.kill(&target).await?;
    Ok(Json(Killed { killed: target }))
}

/// Live events (server-sent): `audit`, `approval.opened`,
/// `approval.resolved`, `message.done`, and `lagged` (`{"missed": n}`)
/// when the client read too slowly and `n` events were dropped for it.
/// While a model reply streams: `message.delta` (`{"session", "message",
/// "turn", "attempt", "text"}`), pieces of the reply's text in order,
/// secrets masked, at most 20 a second per message (pieces merged); they
/// concatenate to the turn's text. `message.delta.reset` (`{"session",
/// "message", "turn", "attempt"}`) says the turn is tried again as
/// `attempt`: the text of its earlier attempts is void. Deltas are not
/// audit events: not stored, and dropped unannounced for a slow reader
/// (the whole reply comes with `message.done`). `?session=` filters them
/// too.
/// At most `[serve] max_event_streams` streams are open at once; beyond
/// that the answer is 503 with `Retry-After`.
#[utoipa::path(get, path = "/v1/events", params(EventParams),
    responses((status = 200, content_type = "text/event-stream", description = "server-sent events"),
        (status = 503, body = ErrorBody, description = "every event stream slot is taken (`[serve] max_event_streams`)",
            headers(("Retry-After" = u64, description = "seconds to wait before trying again")))))]
async fn events(
    State(state): State<ApiState>,
    Extension(limits): Extension<Arc<Limits>>,
    ApiQuery(params): ApiQuery<EventParams>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Ok(slot) = Arc::clone(&limits.streams).try_acquire_owned() else {
        let mut error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!(
                "{} event streams are open, the most `[serve] max_event_streams` allows; retry later",
                limits.max_streams
            ),
        );
        error.retry_after = Some(EVENT_STREAM_RETRY_AFTER);
        return Err(error);
    };
    let mut audit = state.runtime.subscribe_events();
    let mut approvals = state.runtime.subscribe_approvals();
    let mut done = state.runtime.sessions().subscribe_done();
    let mut deltas = state.runtime.sessions().subscribe_deltas();
    let session = params.session;
    let stream = async_stream(move |tx| async move {
        // The slot is free again when this task ends: when the client
        // goes, even if no event comes to notice it by.
        let _slot = slot;
        loop {
            let next = tokio::select! {
                () = tx.closed() => return,
                event = audit.recv() => match event {
                    Ok(event) => {
                        if session.is_some() && event.session != session {
                            continue;
                        }
                        sse("audit", &event)
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => limits.lagged(n),
                    Err(_) => return,
                },
                notice = approvals.recv() => match notice {
                    Ok(ApprovalNotice::Opened(a)) => {
                        if session.is_some() && a.request.requester != session {
                            continue;
                        }
                        sse("approval.opened", &shown(&state, &a))
                    }
                    Ok(ApprovalNotice::Resolved(a)) => {
                        if session.is_some() && a.request.requester != session {
                            continue;
                        }
                        sse("approval.resolved", &shown(&state, &a))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => limits.lagged(n),
                    Err(_) => return,
                },
                delta = deltas.recv() => match delta {
                    Ok(delta) => {
                        if session.as_ref().is_some_and(|s| s != delta.session()) {
                            continue;
                        }
                        delta_sse(&delta)
                    }
                    // Deltas are dropped for a slow reader, unannounced:
                    // the final reply comes with `message.done`.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                },
                record = done.recv() => match record {
                    Ok(record) => {
                        if session.as_ref().is_some_and(|s| s != &record.session) {
                            continue;
                        }
                        sse("message.done", &shown(&state, &MessageResource::from(record)))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => limits.lagged(n),
                    Err(_) => return,
                },
            };
            if tx.send(Ok(next)).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `value` as JSON with its secrets masked (known values and patterns):
/// approvals and messages hold what tools printed and agents wrote.
fn shown(state: &ApiState, value: &impl Serialize) -> Value {
    let mut value = serde_json::to_value(value).unwrap_or(Value::Null);
    state.runtime.redactor().redact_value(&mut value);
    value
}

/// The most of an error body read back to mask it (errors are a line).
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Masks secrets in every error answer: an error message can quote what
/// failed (a request's text, a store error, a path), and it is shown to
/// whoever called.
async fn redact_errors(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_ERROR_BODY_BYTES)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let masked = state.runtime.redactor().redact_str(&text).into_owned();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(masked))
}

/// A streamed-text event: `message.delta` (`{session, message, turn,
/// attempt, text}`, the text already masked) or `message.delta.reset`
/// (`{session, message, turn, attempt}`, the new attempt).
fn delta_sse(delta: &DeltaEvent) -> SseEvent {
    match delta {
        DeltaEvent::Text { tag, text } => sse(
            "message.delta",
            &json!({
                "session": tag.session,
                "message": tag.message,
                "turn": tag.turn,
                "attempt": tag.attempt,
                "text": text,
            }),
        ),
        DeltaEvent::Reset(tag) => sse("message.delta.reset", tag),
    }
}

fn sse(name: &str, value: &impl Serialize) -> SseEvent {
    SseEvent::default()
        .event(name)
        .data(serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned()))
}

/// A stream fed by a task: the task ends when the client goes away.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<SseEvent, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<SseEvent, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(EVENT_STREAM_BUFFER);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// Prometheus metrics (no token needed: counts only). A scrape costs the
/// same however many sessions and approvals there are: counters and
/// event-kept gauges are read as they are, and the store is read (one
/// counting query) at most once per `[serve] metrics_refresh`.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain", description = "Prometheus text")))]
async fn metrics(
    State(state): State<ApiState>,
    Extension(limits): Extension<Arc<Limits>>,
) -> Response {
    use std::fmt::Write as _;

    let runtime = &state.runtime;
    let snapshot = limits
        .snapshot
        .get(|| async {
            let counts = runtime.store().gauge_counts().await?;
            let breakers = runtime
                .mcp()
                .list(runtime.endpoints())
                .await
                .into_iter()
                .map(|report| (report.name, report.breaker))
                .collect();
            Ok::<_, hale_actors::store::StoreError>(Snapshot {
                counts,
                started: runtime.sessions().started().len(),
                breakers,
            })
        })
        .await;
    let mut breakers = Vec::new();
    for (name, breaker) in &snapshot.breakers {
        for state_name in ["closed", "open", "half_open"] {
            breakers.push((
                format!("{{endpoint=\"{name}\",state=\"{state_name}\"}}"),
                if *breaker == state_name { 1.0 } else { 0.0 },
            ));
        }
    }
    let mut text = runtime.metrics().render(&[
        (
            "hale_sessions",
            "Live sessions.",
            vec![(String::new(), snapshot.counts.live_sessions as f64)],
        ),
        (
            "hale_sessions_started",
            "Session actors started.",
            vec![(String::new(), snapshot.started as f64)],
        ),
        (
            "hale_messages_queued",
            "Messages accepted and not finished (since start).",
            vec![(String::new(), runtime.sessions().queued() as f64)],
        ),
        (
            "hale_approvals_open",
            "Open approvals.",
            vec![(String::new(), snapshot.counts.open_approvals as f64)],
        ),
        (
            "hale_breaker_state",
            "MCP endpoint breakers (1 = in that state).",
            breakers,
        ),
        (
            "hale_event_streams",
            "Open /v1/events streams.",
            vec![(String::new(), limits.open_streams() as f64)],
        ),
    ]);
    for (name, help, value) in [
        (
            "hale_metrics_store_reads_total",
            "Store reads made for /metrics (at most one per metrics_refresh).",
            limits.snapshot.loads(),
        ),
        (
            "hale_event_stream_missed_total",
            "Events dropped for /v1/events clients that read too slowly.",
            limits.missed.load(Ordering::Relaxed),
        ),
    ] {
        let _ = write!(
            text,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// 200 once the tree is up and the journals replayed, 503 before.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn healthz(State(state): State<ApiState>) -> (StatusCode, Json<Health>) {
    if state.runtime.is_ready() {
        (
            StatusCode::OK,
            Json(Health {
                status: "ok".into(),
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "starting".into(),
            }),
        )
    }
}

// ------------------------------------------------------------------ router

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hale control plane",
        version = "1",
        description = "Sessions, messages, approvals, logs, the supervision tree, MCP servers, models and chaos for a running hale. Every /v1 route needs `Authorization: Bearer <token>` (the token is in the data directory)."
    ),
    components(schemas(ErrorBody, ErrorDetail, McpAction))
)]
struct ApiDoc;

async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(state.token.as_bytes())) && !presented.is_empty() {
        next.run(request).await
    } else {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (see <data dir>/token)",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

/// The API's router and its OpenAPI document, built from the same
/// handler annotations (and made exact by [`exact_document`]).
pub fn router(state: ApiState) -> (Router, Value) {
    let (v1, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_session, list_sessions))
        .routes(routes!(get_session, delete_session))
        .routes(routes!(send_message))
        .routes(routes!(get_message))
        .routes(routes!(list_approvals))
        .routes(routes!(decide_approval))
        .routes(routes!(logs))
        .routes(routes!(tree))
        .routes(routes!(list_mcp))
        .routes(routes!(manage_mcp))
        .routes(routes!(switch_model))
        .routes(routes!(chaos_kill))
        .routes(routes!(events))
        .split_for_parts();
    let (open, open_doc) = OpenApiRouter::new()
        .routes(routes!(metrics))
        .routes(routes!(healthz))
        .split_for_parts();
    doc.merge(open_doc);
    doc.paths.paths.insert(
        "/v1/openapi.json".to_owned(),
        utoipa::openapi::path::PathItem::new(
            utoipa::openapi::HttpMethod::Get,
            utoipa::openapi::path::OperationBuilder::new()
                .summary(Some("This document."))
                .response(
                    "200",
                    utoipa::openapi::ResponseBuilder::new()
                        .description("The OpenAPI 3.1 document")
                        .content(
                            "application/json",
                            utoipa::openapi::ContentBuilder::new()
                                .schema(Some(utoipa::openapi::ObjectBuilder::new()))
                                .build(),
                        ),
                ),
        ),
    );
    let doc = exact_document(
        serde_json::to_value(&doc).unwrap_or(Value::Null),
        &state.runtime,
    );
    let served_doc = doc.clone();
    let v1 = v1
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = served_doc.clone();
                async move { Json(doc) }
            }),
        )
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    let limits = Arc::new(Limits::new(&state.runtime.config().serve));
    let app = v1
        .merge(open)
        .fallback(|| async { ApiError::not_found("no such route; see /v1/openapi.json") })
        .layer(Extension(limits))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), redact_errors))
        .with_state(state);
    (app, doc)
}

/// `schema` without its `null` alternative (`Option` fields are
/// documented as nullable, which a query string cannot express).
fn not_null(schema: &mut Value) {
    if let Some(types) = schema.get_mut("type").and_then(Value::as_array_mut) {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            schema["type"] = only;
        }
    }
    if let Some(choices) = schema.get_mut("oneOf").and_then(Value::as_array_mut) {
        choices.retain(|c| c["type"] != "null");
        if let [only] = choices.as_slice() {
            let only = only.clone();
            *schema = only;
        }
    }
}

/// The pattern of a session id (`valid_session_id`).
const SESSION_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";
/// The pattern of a message id: `<session>:<n>`, n from 1 and within u64.
const MESSAGE_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}:[1-9][0-9]{0,18}$";

/// Makes the generated document say exactly what the server answers and
/// accepts, where the handler annotations cannot: the answers the
/// middleware and the extractors give every route of a kind (401 without
/// the token; 400, 413, 415 and 422 for a body; 400 for a query or a
/// path), the bearer scheme, the names this runtime knows (agents,
/// models, MCP servers: anything else is refused, so the document must
/// not offer it), and the bodies that need one field of two. A client or
/// a tester that trusts the document is then neither refused a request
/// it allows nor surprised by a status it omits.
fn exact_document(mut doc: Value, runtime: &Runtime) -> Value {
    let error = json!({
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    });
    let answer = |description: &str| {
        let mut answer = error.clone();
        answer["description"] = json!(description);
        answer
    };
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for operation in item.values_mut() {
                let Some(operation) = operation.as_object_mut() else {
                    continue;
                };
                let has_body = operation.contains_key("requestBody");
                let located = |place: &str| {
                    operation
                        .get("parameters")
                        .and_then(Value::as_array)
                        .is_some_and(|ps| ps.iter().any(|p| p["in"] == place))
                };
                let (has_query, has_path) = (located("query"), located("path"));
                // A query parameter is absent or a string: never `null`.
                if let Some(parameters) = operation
                    .get_mut("parameters")
                    .and_then(Value::as_array_mut)
                {
                    for p in parameters.iter_mut().filter(|p| p["in"] == "query") {
                        not_null(&mut p["schema"]);
                    }
                }
                let mut added = Vec::new();
                if path.starts_with("/v1/") {
                    operation.insert("security".to_owned(), json!([{"bearer": []}]));
                    let mut unauthorized =
                        answer("missing or wrong bearer token (see <data dir>/token)");
                    unauthorized["headers"] =
                        json!({"www-authenticate": {"schema": {"type": "string"}}});
                    added.push(("401", unauthorized));
                }
                if has_body {
                    added.push(("400", answer("a body that is not JSON")));
                    added.push(("413", answer("a body over 1 MiB")));
                    added.push(("415", answer("a body not sent as application/json")));
                    added.push((
                        "422",
                        answer("a JSON body of the wrong shape (an unknown field, a wrong type)"),
                    ));
                }
                if has_query {
                    added.push(("400", answer("a query parameter that does not parse")));
                }
                if has_path {
                    added.push(("400", answer("a path segment that does not parse")));
                }
                let responses = operation.entry("responses").or_insert_with(|| json!({}));
                if let Some(responses) = responses.as_object_mut() {
                    for (status, response) in added {
                        responses.entry(status).or_insert(response);
                    }
                }
            }
        }
    }
    doc["components"]["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer", "description": "the token in <data dir>/token"}
    });

    let agents = runtime.sessions().agent_names();
    let models = runtime.models().names();
    let mcp = runtime.mcp().names();
    let one_of = |values: &[String]| -> Value {
        if values.is_empty() {
            json!({"type": "string"})
        } else {
            json!({"type": "string", "enum": values})
        }
    };
    let or_null = |schema: Value| json!({"oneOf": [schema, {"type": "null"}]});
    let schemas = &mut doc["components"]["schemas"];
    schemas["CreateSession"] = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "agent": or_null(one_of(&agents)),
            "id": or_null(json!({"type": "string", "pattern": SESSION_ID_PATTERN})),
        },
        "description": "`POST /v1/sessions` body: the agent (default `default`) and an id of your own (generated if absent)."
    });
    let model = or_null(one_of(&models));
    schemas["SwitchModel"] = json!({
        "description": "`POST /v1/models/switch` body: one session, or one agent (every session of it without a model of its own); `model: null` restores the configured chain.",
        "oneOf": [
            {
                "type": "object",
                "additionalProperties": false,
                "required": ["session"],
                "properties": {
                    "session": {"type": "string"},
                    "agent": {"type": "null"},
                    "model": model.clone(),
                },
            },
            {
                "type": "object",
                "additionalProperties": false,
                "required": ["agent"],
                "properties": {
                    "session": {"type": "null"},
                    "agent": one_of(&agents),
                    "model": model,
                },
            },
        ]
    });
    schemas["Decide"] = json!({
        "description": "`POST /v1/approvals/{id}` body: an option id (or `abort`), or free-text instructions.",
        "oneOf": [
            {
                "type": "object",
                "additionalProperties": false,
                "required": ["option"],
                "properties": {"option": {"type": "string"}, "instructions": {"type": "null"}},
            },
            {
                "type": "object",
                "additionalProperties": false,
                "required": ["instructions"],
                "properties": {"option": {"type": "null"}, "instructions": {"type": "string"}},
            },
        ]
    });
    schemas["Kill"]["properties"]["kind"] = or_null(json!({"type": "string", "enum": KINDS}));

    let parameter = |doc: &mut Value, path: &str, method: &str, name: &str, schema: Value| {
        if let Some(parameters) = doc["paths"][path][method]["parameters"].as_array_mut() {
            for p in parameters.iter_mut().filter(|p| p["name"] == name) {
                p["schema"] = schema.clone();
            }
        }
    };
    parameter(
        &mut doc,
        "/v1/messages/{message_id}",
        "get",
        "message_id",
        json!({"type": "string", "pattern": MESSAGE_ID_PATTERN}),
    );
    parameter(
        &mut doc,
        "/v1/mcp/{name}/{action}",
        "post",
        "name",
        one_of(&mcp),
    );
    // `since` and `until`: a timestamp, or a span back from now.
    let when = json!({"anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "string", "pattern": "^[0-9]{1,6}(s|m|h|d)$"},
    ]});
    for name in ["since", "until"] {
        parameter(&mut doc, "/v1/logs", "get", name, when.clone());
    }
    doc
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_operator_claim_is_validated_not_cleaned() {
        assert_eq!(operator_claim(None).unwrap(), "api");
        let ok = HeaderValue::from_static("alice.ops@example.com");
        assert_eq!(operator_claim(Some(&ok)).unwrap(), "alice.ops@example.com");
        for bad in [
            "",
            "   ",
            "timeout\u{7f}",
            "a;rm -rf",
            "<script>",
            "tab\there",
        ] {
            let Ok(value) = HeaderValue::from_str(bad) else {
                continue;
            };
            assert!(operator_claim(Some(&value)).is_err(), "{bad:?} accepted");
        }
        let long = HeaderValue::from_str(&"a".repeat(65)).unwrap();
        assert!(operator_claim(Some(&long)).is_err());
        let latin1 = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        assert!(operator_claim(Some(&latin1)).is_err());
    }
}
