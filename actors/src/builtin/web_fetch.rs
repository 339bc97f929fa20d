//! The `web_fetch` tool: one HTTP(S) GET, bounded in time and size, with
//! every failure classified.
//!
//! Fetching a page is where an agent meets the network's failure modes
//! (refused connections, servers that never answer, rate limits, bodies
//! that never end) and each needs a different reaction: wait the time a
//! 429 asked for, retry a refused connection, give up on a 404. This module
//! exists to turn each of them into the right catalog code, so recovery can
//! react without reading error text. It only reports: retrying is the
//! recovery layer's job, so a call never repeats a request itself.
//!
//! # Where it may connect
//! The URL is the agent's, so it is hostile input: it may name hale's own
//! control plane on loopback, a cloud metadata service, or a private
//! network. Every address a call connects to passes the address policy
//! ([`net_policy`](super::net_policy), with the operator's
//! `[tools] web_fetch_allow`): the URL's host before sending, each address
//! a name resolves to (inside the client, so the checked address is the
//! one connected to), and every redirect hop, at most
//! [`MAX_REDIRECTS`](super::fetch_guard::MAX_REDIRECTS) of them
//! ([`fetch_guard`](super::fetch_guard)). A cross-origin hop loses
//! `Authorization` and `Cookie` (reqwest's own rule, held by tests).
//! Proxy settings in the environment (`HTTP_PROXY`, ...) are ignored: a
//! proxy would connect on hale's behalf to addresses no check saw. A
//! request carrying one of [`WebFetchConfig::forbidden_values`] (hale's
//! own API token) in its URL or headers is refused.
//!
//! A refusal is `PERMISSION_DENIED`, not retryable and not recoverable
//! (so no fallback tool is tried in its place), with a hint naming
//! `[tools] web_fetch_allow`. Its severity is lowered from the catalog's
//! `critical` to `error`: a refused address is the guard working, not an
//! incident for a human, so the session hands the typed outcome back to
//! the model instead of opening an escalation (critical outcomes
//! escalate). An operator who wants the address allow-lists it.

use std::error::Error as _;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::{Map, Value, json};

use super::exec::{decode_lossy, kind_of};
use super::fetch_guard::{
    self, CheckedResolver, Found, MAX_REDIRECTS, UrlRefusal, check_url, entry_for,
};
use super::net_policy::{AllowList, Refusal};
use crate::catalog::ErrorCode;
use crate::classify::{self, MAX_EXCERPT_BYTES};
use crate::outcome::{Hint, HintKind, Severity, ToolOutcome};
use crate::tool::{BoxFuture, Tool, ToolContext, ToolSpec};

/// The default limit on a whole request, from connecting to the last body
/// byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default limit on establishing the connection (including TLS).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default number of body bytes a call keeps.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;

/// How a [`WebFetch`] tool makes its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebFetchConfig {
    /// Limit on a whole request, from connecting to the last body byte.
    pub timeout: Duration,
    /// Limit on establishing the connection.
    pub connect_timeout: Duration,
    /// Body bytes kept; a longer body is cut here and the call is partial.
    pub max_bytes: usize,
    /// The `User-Agent` header sent with every request.
    pub user_agent: String,
    /// `[tools] web_fetch_allow`: loopback, link-local, private and other
    /// special-purpose addresses (and names) the operator lets calls
    /// reach. Empty by default: none.
    pub allow: AllowList,
    /// Values no request may carry in its URL or headers: hale's own API
    /// token, filled in by `hale serve`. Empty by default.
    pub forbidden_values: ForbiddenValues,
}

/// Secret values a request must never carry (hale's control-plane
/// token): an agent that learned one must not be able to use it through
/// `web_fetch`. Its `Debug` shows only how many there are.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ForbiddenValues(Vec<String>);

impl ForbiddenValues {
    /// Values shorter than this are ignored: they would match ordinary
    /// text. hale's token is 64 characters.
    pub const MIN_LEN: usize = 8;

    /// Adds a value (ignored if shorter than [`Self::MIN_LEN`]).
    pub fn push(&mut self, value: impl Into<String>) {
        let value = value.into();
        if value.len() >= Self::MIN_LEN && !self.0.contains(&value) {
            self.0.push(value);
        }
    }

    /// How many values are held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `text` contains any of the values.
    fn found_in(&self, text: &[u8]) -> bool {
        self.0
            .iter()
            .any(|v| text.windows(v.len()).any(|window| window == v.as_bytes()))
    }
}

impl<S: Into<String>> FromIterator<S> for ForbiddenValues {
    fn from_iter<I: IntoIterator<Item = S>>(values: I) -> Self {
        let mut all = Self::default();
        for value in values {
            all.push(value);
        }
        all
    }
}

impl fmt::Debug for ForbiddenValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ForbiddenValues({} redacted)", self.0.len())
    }
}

impl Default for WebFetchConfig {
    /// [`DEFAULT_TIMEOUT`], [`DEFAULT_CONNECT_TIMEOUT`],
    /// [`DEFAULT_MAX_BYTES`], a `hale/<version>` user agent, an empty
    /// allow-list and no forbidden values.
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_bytes: DEFAULT_MAX_BYTES,
            user_agent: concat!("hale/", env!("CARGO_PKG_VERSION")).to_owned(),
            allow: AllowList::default(),
            forbidden_values: ForbiddenValues::default(),
        }
    }
}

/// Why a [`WebFetch`] tool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WebFetchError {
    /// A limit in the configuration is zero, which would fail every call.
    #[error("web_fetch config: `{0}` must be greater than zero")]
    ZeroLimit(&'static str),
    /// The HTTP client could not be built (for example, an invalid user
    /// agent or no TLS backend).
    #[error("could not build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The `web_fetch` tool. See the module docs.
#[derive(Debug)]
pub struct WebFetch {
    spec: ToolSpec,
    config: WebFetchConfig,
    allow: Arc<AllowList>,
    client: reqwest::Client,
}

impl WebFetch {
    /// Validates the configuration and builds the one HTTP client every
    /// call shares (so connections are pooled across calls): no proxy,
    /// the checking resolver (bounded by `connect_timeout`), and the
    /// checking redirect policy.
    ///
    /// # Errors
    /// A zero limit, or a client reqwest cannot build.
    pub fn new(config: WebFetchConfig) -> Result<Self, WebFetchError> {
        if config.timeout.is_zero() {
            return Err(WebFetchError::ZeroLimit("timeout"));
        }
        if config.connect_timeout.is_zero() {
            return Err(WebFetchError::ZeroLimit("connect_timeout"));
        }
        if config.max_bytes == 0 {
            return Err(WebFetchError::ZeroLimit("max_bytes"));
        }
        let allow = Arc::new(config.allow.clone());
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(config.user_agent.clone())
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver::new(
                Arc::clone(&allow),
                config.connect_timeout,
            )))
            .redirect(fetch_guard::redirect_policy(Arc::clone(&allow)))
            .build()
            .map_err(WebFetchError::Client)?;
        Ok(Self {
            spec: spec(&config),
            config,
            allow,
            client,
        })
    }

    /// The configuration this tool runs with.
    pub fn config(&self) -> &WebFetchConfig {
        &self.config
    }

    async fn run(&self, args: Value) -> ToolOutcome {
        let args = match FetchArgs::parse(args) {
            Ok(args) => args,
            Err(message) => return ToolOutcome::from_code(ErrorCode::InvalidInput, message),
        };
        if let Some(place) = self.forbidden_in(&args) {
            return token_refused(&place);
        }
        if let Err(reason) = check_url(&self.allow, &args.url) {
            return url_refused(&args.url, At::Request, &reason);
        }
        let requested = args.url.to_string();
        let sent = self
            .client
            .get(args.url.clone())
            .headers(args.headers)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(err) => {
                return match fetch_guard::refusal_in(&err) {
                    Some(Found::Hop(hop)) => {
                        url_refused(&args.url, At::Hop(hop.hop, &hop.url), &hop.reason)
                    }
                    Some(Found::Resolved(refusal)) => resolved_refused(&args.url, refusal),
                    Some(Found::TooManyRedirects) => ToolOutcome::from_code(
                        ErrorCode::InvalidInput,
                        format!(
                            "`{requested}` redirects more than {MAX_REDIRECTS} times; web_fetch \
                             follows at most {MAX_REDIRECTS}"
                        ),
                    )
                    .with_data(json!({ "url": requested, "error_kind": "redirects" })),
                    None => with_fields(classify_reqwest_error(&err), [("url", json!(requested))]),
                };
            }
        };
        let status = response.status().as_u16();
        let url = response.url().to_string();
        let content_type = header_text(response.headers(), &CONTENT_TYPE);

        if !(200..300).contains(&status) {
            let retry_after = header_text(response.headers(), &RETRY_AFTER);
            // The excerpt is only for the message; if the body fails
            // midway, the status alone still classifies the failure.
            let (excerpt, _) = read_capped(&mut response, MAX_EXCERPT_BYTES).await;
            let outcome = classify::from_http_status(
                status,
                retry_after.as_deref(),
                &decode_lossy(&excerpt, true),
                SystemTime::now(),
            );
            return with_fields(
                outcome,
                [("url", json!(url)), ("content_type", json!(content_type))],
            );
        }

        let (body, read) = read_capped(&mut response, self.config.max_bytes).await;
        let truncated = match read {
            Ok(truncated) => truncated,
            Err(err) => {
                return with_fields(
                    classify_reqwest_error(&err),
                    [("url", json!(url)), ("bytes_received", json!(body.len()))],
                );
            }
        };
        let data = json!({
            "url": url,
            "status": status,
            "content_type": content_type,
            "body": decode_lossy(&body, truncated),
            "bytes": body.len(),
            "truncated": truncated,
        });
        if truncated {
            ToolOutcome::partial(
                data,
                format!(
                    "the body is longer than the {} byte limit; only its first {} bytes are returned",
                    self.config.max_bytes,
                    body.len()
                ),
            )
        } else {
            ToolOutcome::success(data)
        }
    }
}

impl WebFetch {
    /// Where the call carries a forbidden value (`url` or
    /// `headers.<name>`), if it does.
    fn forbidden_in(&self, args: &FetchArgs) -> Option<String> {
        let values = &self.config.forbidden_values;
        if values.is_empty() {
            return None;
        }
        if values.found_in(args.url.as_str().as_bytes()) {
            return Some("`url`".to_owned());
        }
        args.headers
            .iter()
            .find(|(_, value)| values.found_in(value.as_bytes()))
            .map(|(name, _)| format!("header `{name}`"))
    }
}

/// The outcome of a refused call: `PERMISSION_DENIED` at severity
/// `error` (a typed outcome for the model, not an escalation; see the
/// module docs).
fn refused(message: String, hint: Hint, data: Value) -> ToolOutcome {
    ToolOutcome::from_code(ErrorCode::PermissionDenied, message)
        .with_severity(Severity::Error)
        .with_hint(hint)
        .with_data(data)
}

/// A request carrying hale's own token. Neither the message nor the data
/// repeats the URL, which may hold the token.
fn token_refused(place: &str) -> ToolOutcome {
    refused(
        format!(
            "web_fetch refused the request: its {place} carries hale's own API token, which is \
             the operator's key to hale's control plane and never leaves in a tool call"
        ),
        Hint::new(
            HintKind::TryInstead,
            "Send the request without hale's token; tools cannot act on hale's control plane. \
             Ask the operator if the task needs it.",
        ),
        json!({ "error_kind": "forbidden_value", "field": place }),
    )
}

/// Where in a call the policy refused.
#[derive(Debug, Clone, Copy)]
enum At<'a> {
    /// The request's own URL.
    Request,
    /// Redirect hop `n` (1 for the first), to this URL.
    Hop(usize, &'a Url),
    /// A redirect hop to this name, whose addresses the resolver refused
    /// (reqwest's error does not say which hop).
    RedirectedName(&'a str),
}

/// A URL the policy refused, with a message naming where and why, and a
/// hint naming the allow-list entry that would let it through.
fn url_refused(requested: &Url, at: At<'_>, reason: &UrlRefusal) -> ToolOutcome {
    let mut data = Map::new();
    data.insert("url".into(), json!(requested.as_str()));
    data.insert("error_kind".into(), json!("policy"));
    let (place, entry) = match at {
        At::Request => {
            data.insert("refused_url".into(), json!(requested.as_str()));
            (format!("`{requested}`"), entry_for(requested))
        }
        At::Hop(n, url) => {
            data.insert("refused_url".into(), json!(url.as_str()));
            data.insert("hop".into(), json!(n));
            (
                format!("redirect {n} of `{requested}` to `{url}`"),
                entry_for(url),
            )
        }
        At::RedirectedName(name) => {
            data.insert("refused_host".into(), json!(name));
            (
                format!("a redirect of `{requested}` to `{name}`"),
                Some(name.to_owned()),
            )
        }
    };
    let (message, hint) = match reason {
        UrlRefusal::Policy(refusal) => {
            if let Refusal::Address { ip, special, .. } = refusal {
                data.insert("address".into(), json!(ip.to_string()));
                data.insert("range".into(), json!(special.range.name()));
            }
            let entry = entry.unwrap_or_else(|| requested.to_string());
            (
                format!(
                    "web_fetch refused {place}: {refusal}. hale does not connect to loopback, \
                     link-local, private or other special-purpose addresses unless the \
                     operator allow-lists them"
                ),
                Hint::new(
                    HintKind::TryInstead,
                    format!(
                        "Only the operator can allow this, by adding \"{entry}\" to \
                         `[tools] web_fetch_allow` in hale's config; the agent cannot. Fetch a \
                         public URL instead, or ask the operator."
                    ),
                )
                .with_suggestions([entry]),
            )
        }
        UrlRefusal::Scheme(_) | UrlRefusal::NoHost => (
            format!("web_fetch refused {place}: {reason}"),
            Hint::new(
                HintKind::TryInstead,
                "web_fetch follows only http and https URLs with a host (see `[tools] \
                 web_fetch_allow` for which addresses it may reach); fetch such a URL directly.",
            ),
        ),
    };
    refused(message, hint, Value::Object(data))
}

/// A refusal by the resolver: of the request's own host, or (when the
/// refused name is another) of a redirect hop's.
fn resolved_refused(requested: &Url, refusal: &Refusal) -> ToolOutcome {
    let same = |a: &str, b: &str| {
        a.trim_end_matches('.')
            .eq_ignore_ascii_case(b.trim_end_matches('.'))
    };
    let at = match requested.host_str() {
        Some(host) if same(host, refusal.host()) => At::Request,
        _ => At::RedirectedName(refusal.host()),
    };
    url_refused(requested, at, &UrlRefusal::Policy(refusal.clone()))
}

impl Tool for WebFetch {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        Box::pin(self.run(args))
    }

    /// The site the call goes to (see [`site_endpoint`]): each site gets its
    /// own breaker, retry budget and concurrency cap, so refused
    /// connections to one dead host do not close `web_fetch` for every
    /// other host and every session.
    fn endpoint_for(&self, args: &Value) -> Option<String> {
        let url = parse_url(args.get("url")?.as_str()?).ok()?;
        site_endpoint(&self.spec.name, &url)
    }
}

/// The endpoint of a fetch from `tool` to `url`:
/// `<tool>/<scheme>://<host>:<port>`, with the scheme's default port
/// spelled out, so `https://a.example/x` and `https://a.example:443/y`
/// share one. `None` for a URL without a host.
pub fn site_endpoint(tool: &str, url: &Url) -> Option<String> {
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    Some(format!("{tool}/{}://{host}:{port}", url.scheme()))
}

fn spec(config: &WebFetchConfig) -> ToolSpec {
    let description = format!(
        "Fetch a URL with an HTTP GET and return the response body as text, with the final URL \
         (after redirects, at most {redirects}), status and content type. Only http and https \
         URLs are accepted. Loopback, link-local and private addresses (and names resolving to \
         them) are refused with PERMISSION_DENIED unless the operator allow-listed them. \
         Bodies longer than {max} bytes are cut (`truncated: true`, status `partial`). The whole \
         request is limited to {timeout} ms. HTTP errors come back classified (404 NOT_FOUND, \
         429 RATE_LIMITED with the server's Retry-After, 5xx SERVICE_UNAVAILABLE, ...); the call \
         itself never retries.",
        max = config.max_bytes,
        timeout = config.timeout.as_millis(),
        redirects = MAX_REDIRECTS,
    );
    let schema = json!({
        "type": "object",
        "properties": {
            "url": {
                "type": "string",
                "format": "uri",
                "description": "The http:// or https:// URL to fetch."
            },
            "headers": {
                "type": "object",
                "additionalProperties": { "type": "string" },
                "description": "Extra request headers, name to value (for example {\"Accept\": \"application/json\"})."
            }
        },
        "required": ["url"],
        "additionalProperties": false
    });
    ToolSpec::new("web_fetch", description, schema).with_idempotent(true)
}

/// The validated arguments of one call.
struct FetchArgs {
    url: Url,
    headers: HeaderMap,
}

impl FetchArgs {
    /// Reads the arguments by hand so every complaint names its field.
    fn parse(args: Value) -> Result<Self, String> {
        let Value::Object(mut args) = args else {
            return Err(format!(
                "arguments must be an object with a `url` string, got {}",
                kind_of(&args)
            ));
        };
        let url = match args.remove("url") {
            Some(Value::String(s)) => parse_url(&s)?,
            Some(other) => return Err(format!("`url` must be a string, got {}", kind_of(&other))),
            None => return Err("missing required field `url`".into()),
        };
        let headers = match args.remove("headers") {
            None | Some(Value::Null) => HeaderMap::new(),
            Some(Value::Object(headers)) => parse_headers(headers)?,
            Some(other) => {
                return Err(format!(
                    "`headers` must be an object of header name to string value, got {}",
                    kind_of(&other)
                ));
            }
        };
        if let Some(unknown) = args.keys().next() {
            return Err(format!(
                "unknown field `{unknown}`; `web_fetch` takes `url` and optionally `headers`"
            ));
        }
        Ok(Self { url, headers })
    }
}

fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("`url` is not a valid URL: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!(
            "`url` must use http or https, not `{other}:` (got `{text}`)"
        )),
    }
}

fn parse_headers(headers: Map<String, Value>) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`headers`: `{name}` is not a valid header name"))?;
        let Value::String(value) = value else {
            return Err(format!(
                "`headers.{name}` must be a string, got {}",
                kind_of(&value)
            ));
        };
        let value = HeaderValue::from_str(&value).map_err(|_| {
            format!("`headers.{name}` is not a valid header value (control characters?)")
        })?;
        map.append(header, value);
    }
    Ok(map)
}

/// Reads the body chunk by chunk, keeping at most `cap` bytes. Returns the
/// bytes read and whether the body was cut at `cap`, or the error that
/// ended it early (with the bytes read up to then).
async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
) -> (Vec<u8>, Result<bool, reqwest::Error>) {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap.saturating_sub(body.len());
                if chunk.len() > room {
                    body.extend_from_slice(chunk.get(..room).unwrap_or_default());
                    return (body, Ok(true));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return (body, Ok(false)),
            Err(err) => return (body, Err(err)),
        }
    }
}

/// Classifies a failed request by reqwest's typed error kinds, never by
/// its text. Checked in this order, first match wins:
///
/// | error | code |
/// |---|---|
/// | a timeout anywhere (connect, headers, body) | `ETIMEDOUT` (status `timeout`) |
/// | building the request (bad URL, bad header) | `INVALID_INPUT` |
/// | connecting (refused, unreachable, DNS, TLS handshake) | `CONNECTION_REFUSED` |
/// | reading or decoding the body midway | `TRANSPORT_CLOSED` |
/// | the connection failing after it was made, before a response (closed, reset, protocol error) | `TRANSPORT_CLOSED` |
/// | anything else (redirect loops, ...) | `INTERNAL` |
///
/// The message is the error with its chain of causes; the data is
/// `{"error_kind": "timeout" | "builder" | "connect" | "body" | "request" | "other"}`.
pub fn classify_reqwest_error(err: &reqwest::Error) -> ToolOutcome {
    let (code, kind) = if err.is_timeout() {
        (ErrorCode::Etimedout, "timeout")
    } else if err.is_builder() {
        (ErrorCode::InvalidInput, "builder")
    } else if err.is_connect() {
        (ErrorCode::ConnectionRefused, "connect")
    } else if err.is_body() || err.is_decode() {
        (ErrorCode::TransportClosed, "body")
    } else if err.is_request() {
        (ErrorCode::TransportClosed, "request")
    } else {
        (ErrorCode::Internal, "other")
    };
    ToolOutcome::from_code(code, error_chain(err)).with_data(json!({ "error_kind": kind }))
}

/// The error and its causes, `outer: inner: innermost`; reqwest's own
/// message omits the causes, which are where "connection refused" is.
fn error_chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Wrappers often repeat their inner error's text.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn header_text(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Adds fields to an outcome's data object (creating it if the data was
/// not an object), keeping what the classifier already put there.
fn with_fields<const N: usize>(outcome: ToolOutcome, fields: [(&str, Value); N]) -> ToolOutcome {
    let mut data = match outcome.data.clone() {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    for (key, value) in fields {
        data.insert(key.into(), value);
    }
    outcome.with_data(Value::Object(data))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::outcome::Status;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn client(timeout: Duration) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    }

    /// Accepts one connection, reads the request head, then runs `then`.
    async fn one_shot<F, Fut>(then: F) -> String
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                head.extend_from_slice(&buf[..n]);
            }
            then(stream).await;
        });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn refused_connection_is_connection_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = client(Duration::from_secs(5))
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap_err();
        let outcome = classify_reqwest_error(&err);
        assert_eq!(outcome.code, Some(ErrorCode::ConnectionRefused));
        assert!(outcome.retryable);
        assert_eq!(outcome.data["error_kind"], "connect");
        assert!(
            outcome.message.to_lowercase().contains("refused"),
            "{}",
            outcome.message
        );
    }

    #[tokio::test]
    async fn silent_server_is_a_timeout() {
        let url = one_shot(|stream| async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(stream);
        })
        .await;
        let started = std::time::Instant::now();
        let err = client(Duration::from_millis(300))
            .get(url)
            .send()
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        let outcome = classify_reqwest_error(&err);
        assert_eq!(outcome.status, Status::Timeout);
        assert_eq!(outcome.code, Some(ErrorCode::Etimedout));
    }

    #[tokio::test]
    async fn close_mid_body_is_transport_closed() {
        let url = one_shot(|mut stream| async move {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b")
                .await
                .unwrap();
            stream.shutdown().await.unwrap();
        })
        .await;
        let mut response = client(Duration::from_secs(5))
            .get(url)
            .send()
            .await
            .unwrap();
        let (body, read) = read_capped(&mut response, 1 << 20).await;
        assert_eq!(body, b"only ten b");
        let outcome = classify_reqwest_error(&read.unwrap_err());
        assert_eq!(outcome.code, Some(ErrorCode::TransportClosed));
        assert_eq!(outcome.data["error_kind"], "body");
    }

    #[tokio::test]
    async fn close_before_response_is_transport_closed() {
        let url = one_shot(|stream| async move { drop(stream) }).await;
        let err = client(Duration::from_secs(5))
            .get(url)
            .send()
            .await
            .unwrap_err();
        let outcome = classify_reqwest_error(&err);
        assert_eq!(outcome.code, Some(ErrorCode::TransportClosed));
        assert_eq!(outcome.data["error_kind"], "request");
    }

    #[tokio::test]
    async fn unbuildable_request_is_invalid_input() {
        let err = client(Duration::from_secs(5))
            .get("http://exa mple.com/")
            .send()
            .await
            .unwrap_err();
        let outcome = classify_reqwest_error(&err);
        assert_eq!(outcome.code, Some(ErrorCode::InvalidInput));
        assert!(!outcome.retryable);
    }

    #[test]
    fn urls_must_be_http_or_https() {
        assert!(parse_url("https://example.com/x").is_ok());
        assert!(
            parse_url("ftp://example.com/")
                .unwrap_err()
                .contains("http or https")
        );
        assert!(
            parse_url("not a url")
                .unwrap_err()
                .contains("not a valid URL")
        );
        assert!(parse_url("file:///etc/passwd").is_err());
    }
}
