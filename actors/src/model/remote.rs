//! The client of a remote model endpoint, whatever its wire format.
//!
//! OpenAI-compatible and Anthropic endpoints differ only in translation:
//! where the request goes, which headers carry the key, how the
//! conversation is written, how an answer (plain or streamed) is read
//! and how an error body is classified. That is a [`Wire`]; everything
//! else (the HTTP client and its deadline, the key's header kept out of
//! `Debug`, plain versus streamed, the reply cap) is [`RemoteClient`],
//! written once.

use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, InvalidHeaderValue};
use serde_json::Value;
use tokio::time::Instant;

use super::http;
use super::stream::{self, StreamLimits, StreamState};
use super::{ModelClient, ModelConfig, ModelError, ModelReply, ModelRequest};
use crate::outcome::ToolOutcome;
use crate::tool::BoxFuture;

/// One wire format: the translation between hale's provider-neutral
/// request and reply and a provider's HTTP API. Pure functions.
pub trait Wire: Send + Sync + 'static {
    /// The client's name in `Debug` output (`OpenAiClient`).
    const CLIENT: &'static str;
    /// How the format reads a streamed answer.
    type Stream: StreamState;

    /// The request URL for a base URL (without a trailing `/`).
    fn url(base: &str) -> String;

    /// The headers every request carries, the key (if any) among them.
    ///
    /// # Errors
    /// The key cannot be a header value.
    fn headers(api_key: Option<&str>) -> Result<HeaderMap, InvalidHeaderValue>;

    /// The request body; `stream` asks for a streamed answer.
    fn request_body(model: &str, max_tokens: u32, request: &ModelRequest, stream: bool) -> Value;

    /// Reads a plain answer (`model` left empty).
    ///
    /// # Errors
    /// What is missing or of the wrong type.
    fn parse_reply(body: &Value) -> Result<ModelReply, String>;

    /// Classifies a failed answer: status, raw `Retry-After`, body, now.
    fn classify(status: u16, retry_after: Option<&str>, body: &str, now: SystemTime)
    -> ToolOutcome;
}

/// A client for one remote endpoint speaking `W`.
pub struct RemoteClient<W: Wire> {
    name: String,
    model: String,
    url: String,
    headers: HeaderMap,
    max_tokens: u32,
    max_reply_bytes: usize,
    stream: bool,
    stream_idle_timeout: Duration,
    timeout: Duration,
    client: reqwest::Client,
    wire: PhantomData<W>,
}

impl<W: Wire> std::fmt::Debug for RemoteClient<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the headers: they hold the key.
        f.debug_struct(W::CLIENT)
            .field("name", &self.name)
            .field("model", &self.model)
            .field("url", &self.url)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl<W: Wire> RemoteClient<W> {
    /// A client for `config`, sending `api_key` (already read from the
    /// environment) in the format's key header when there is one.
    ///
    /// # Errors
    /// [`ModelError`] when the config lacks a base URL or model id, the
    /// key cannot be a header value, or the HTTP client cannot be built.
    pub fn new(config: &ModelConfig, api_key: Option<&str>) -> Result<Self, ModelError> {
        let (base, model) = super::remote_parts(config)?;
        let headers =
            W::headers(api_key).map_err(|_| ModelError::BadApiKey(config.name.clone()))?;
        Ok(Self {
            name: config.name.clone(),
            model: model.to_owned(),
            url: W::url(base.trim_end_matches('/')),
            headers,
            max_tokens: config.max_tokens,
            max_reply_bytes: config.max_reply_bytes,
            stream: config.stream,
            stream_idle_timeout: config.stream_idle_timeout,
            timeout: config.timeout,
            client: http::client(config.timeout).map_err(|e| ModelError::Client {
                name: config.name.clone(),
                source: e,
            })?,
            wire: PhantomData,
        })
    }

    async fn run(&self, request: &ModelRequest) -> Result<ModelReply, ToolOutcome> {
        let started = Instant::now();
        let body = W::request_body(&self.model, self.max_tokens, request, self.stream);
        let mut response = http::send(
            &self.client,
            &self.url,
            self.headers.clone(),
            &body,
            W::classify,
        )
        .await?;
        let mut reply = if self.stream && !is_json(&response) {
            let limits = StreamLimits {
                max_bytes: self.max_reply_bytes,
                idle: self.stream_idle_timeout,
                deadline: started + self.timeout,
            };
            stream::read_stream::<W::Stream, _>(
                &mut response,
                &self.url,
                limits,
                request.deltas.as_deref(),
            )
            .await?
        } else {
            let answer = http::read_json(response, &self.url, self.max_reply_bytes).await?;
            W::parse_reply(&answer).map_err(|why| http::malformed(&self.url, &why))?
        };
        reply.model = self.name.clone();
        Ok(reply)
    }
}

/// Whether an answer is a JSON body: a server that ignores `stream: true`
/// (some proxies and older compatible servers do) answers with one, and
/// it is read as a plain answer rather than refused.
fn is_json(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

impl<W: Wire> ModelClient for RemoteClient<W> {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
    ) -> BoxFuture<'a, Result<ModelReply, ToolOutcome>> {
        Box::pin(self.run(request))
    }
}
