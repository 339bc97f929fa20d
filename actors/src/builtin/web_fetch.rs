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

use std::error::Error as _;
use std::time::{Duration, SystemTime};

use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::{Map, Value, json};

use super::exec::{decode_lossy, kind_of};
use crate::catalog::ErrorCode;
use crate::classify::{self, MAX_EXCERPT_BYTES};
use crate::outcome::ToolOutcome;
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
}

impl Default for WebFetchConfig {
    /// [`DEFAULT_TIMEOUT`], [`DEFAULT_CONNECT_TIMEOUT`],
    /// [`DEFAULT_MAX_BYTES`] and a `hale/<version>` user agent.
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_bytes: DEFAULT_MAX_BYTES,
            user_agent: concat!("hale/", env!("CARGO_PKG_VERSION")).to_owned(),
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
    client: reqwest::Client,
}

impl WebFetch {
    /// Validates the configuration and builds the one HTTP client every
    /// call shares (so connections are pooled across calls).
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
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(config.user_agent.clone())
            .build()
            .map_err(WebFetchError::Client)?;
        Ok(Self {
            spec: spec(&config),
            config,
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
        let requested = args.url.to_string();
        let sent = self.client.get(args.url).headers(args.headers).send().await;
        let mut response = match sent {
            Ok(response) => response,
            Err(err) => {
                return with_fields(classify_reqwest_error(&err), [("url", json!(requested))]);
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

impl Tool for WebFetch {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        Box::pin(self.run(args))
    }
}

fn spec(config: &WebFetchConfig) -> ToolSpec {
    let description = format!(
        "Fetch a URL with an HTTP GET and return the response body as text, with the final URL \
         (after redirects), status and content type. Only http and https URLs are accepted. \
         Bodies longer than {max} bytes are cut (`truncated: true`, status `partial`). The whole \
         request is limited to {timeout} ms. HTTP errors come back classified (404 NOT_FOUND, \
         429 RATE_LIMITED with the server's Retry-After, 5xx SERVICE_UNAVAILABLE, ...); the call \
         itself never retries.",
        max = config.max_bytes,
        timeout = config.timeout.as_millis(),
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
