//! The command-line client: `hale sessions`, `hale send`, `hale approve`...
//! talk to a running `hale serve` over its HTTP API.
//!
//! Humans get aligned tables; programs pass `--json` and get the API's
//! JSON unchanged. Errors come back as the API's `{"error":...}` message
//! with exit code 1; usage errors exit 2 (clap's convention).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Where the API is and how to authenticate.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    json: bool,
}

/// Finds the token: `HALE_TOKEN`, else `<data_dir>/token`.
///
/// # Errors
/// Neither is available.
pub fn find_token(data_dir: &Path) -> Result<String> {
    if let Ok(token) = std::env::var("HALE_TOKEN")
        && !token.trim().is_empty()
    {
        return Ok(token.trim().to_owned());
    }
    let path = data_dir.join("token");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no token: set HALE_TOKEN or point --data-dir at the server's data directory ({} not readable)",
            path.display()
        )
    })?;
    Ok(text.trim().to_owned())
}

impl Client {
    /// A client of the API at `url`.
    ///
    /// # Errors
    /// No token, or the HTTP client cannot be built.
    pub fn new(url: &str, data_dir: &Path, json: bool) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            token: find_token(data_dir)?,
            http,
            json,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, Value)> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(timeout);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {}{path}: is `hale serve` running?", self.base))?;
        let status = response.status();
        let text = response.text().await.context("reading the answer")?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_client_error() || status.is_server_error() {
            let message = value["error"]["message"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            bail!("{status}: {message}");
        }
        Ok((status, value))
    }

    async fn get(&self, path: &str) -> Result<Value> {
        Ok(self
            .call(Method::GET, path, None, Duration::from_secs(30))
            .await?
            .1)
    }

    async fn post(&self, path: &str, body: Value) -> Result<(StatusCode, Value)> {
        self.call(Method::POST, path, Some(body), Duration::from_secs(30))
            .await
    }

    fn print_json(value: &Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    }

    /// `hale sessions`.
    ///
    /// # Errors
    /// The API refused or is unreachable.
    pub async fn sessions(&self) -> Result<()> {
        let list = self.get("/v1/sessions").await?;
        if self.json {
            Self::print_json(&list);
            return Ok(());
        }
        let rows = rows(&list, &["id", "agent", "created_at", "model"]);
        print_table(&["ID", "AGENT", "CREATED", "MODEL"], &rows);
        Ok(())
    }

    /// `hale new`.
    ///
    /// # Errors
    /// The API refused or is unreachable.
    pub async fn new_session(&self, agent: &str) -> Result<()> {
        let (_, created) = self.post("/v1/sessions", json!({"agent": agent})).await?;
        if self.json {
            Self::print_json(&created);
        } else {
            println!("{}", created["id"].as_str().unwrap_or_default());
        }
        Ok(())
    }

    /// `hale send`.
    ///
    /// # Errors
    /// The API refused or is unreachable.
    pub async fn send(&self, session: &str, text: &str, wait: Option<u64>) -> Result<()> {
        let path = match wait {
            Some(secs) => format!("/v1/sessions/{session}/messages?wait={secs}"),
            None => format!("/v1/sessions/{session}/messages"),
        };
        let timeout = Duration::from_secs(wait.unwrap_or(0) + 30);
        let (status, body) = self
            .call(Method::POST, &path, Some(json!({"text": text})), timeout)
            .await?;
        if self.json {
            Self::print_json(&body);
            return Ok(());
        }
        if status == StatusCode::OK {
            match body["status"].as_str() {
                Some("done") => println!("{}", body["reply"].as_str().unwrap_or_default()),
                _ => println!(
                    "{} {}: {}",
                    body["id"].as_str().unwrap_or_default(),
                    body["status"].as_str().unwrap_or_default(),
                    body["error"].as_str().unwrap_or_default()
                ),
            }
        } else {
            println!("{}", body["message_id"].as_str().unwrap_or_default());
        }
        Ok(())
    }

    /// `hale approvals`.
    ///
    /// # Errors
    /// The API refused or is unreachable.
    pub async fn approvals(&self, all: bool) -> Result<()> {
        let path = if all {
            "/v1/approvals"
        } else {
            "/v1/approvals?state=open"
        };
        let list = self.get(path).await?;
        if self.json {
            Self::print_json(&list);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = list
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|a| {
                        let options: Vec<String> = a["request"]["options"]
                            .as_array()
                            .map(|o| {
                                o.iter()
                                    .filter_map(|o| o["id"].as_str().map(str::to_owned))
                                    .chain(std::iter::once("abort".to_owned()))
                                    .collect()
                            })
                            .unwrap_or_default();
                        vec![
                            text(&a["id"]),
                            text(&a["request"]["requester"]),
                            text(&a["request"]["title"]),
                            options.join("|"),
                            text(&a["request"]["recommended"]),
                            if a["resolution"].is_null() {
                                "open".to_owned()
                            } else {
                                format!("decided: {}", text(&a["resolution"]["option"]))
                            },
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        print_table(
            &["ID", "SESSION", "TITLE", "OPTIONS", "RECOMMENDED", "STATE"],
            &rows,
        );
        Ok(())
    }

    /// `hale approve`.
    ///
    /// # Errors
    /// The API refused (unknown id or option, already decided) or is
    /// unreachable.
    pub async fn approve(
        &self,
        id: &str,
        option: Option<&str>,
        instructions: Option<&str>,
    ) -> Result<()> {
        let body = match (option, instructions) {
            (Some(option), None) => json!({"option": option}),
            (None, Some(text)) => json!({"instructions": text}),
            _ => bail!("give an option or --instructions, not both"),
        };
        let (_, resolution) = self.post(&format!("/v1/approvals/{id}"), body).await?;
        if self.json {
            Self::print_json(&resolution);
        } else {
            println!(
                "approval {id}: {} by {}",
                resolution["option"]
                    .as_str()
                    .or(resolution["instructions"].as_str())
                    .unwrap_or_default(),
                text(&resolution["by"])
            );
        }
        Ok(())
    }

    /// `hale logs`.
    ///
    /// # Errors
    /// The API refused or is unreachable.
    pub async fn logs(&self, filter: &LogFilter) -> Result<()> {
        let mut query = Vec::new();
        // The API takes hale's level names only; the CLI also reads the
        // usual aliases (`warn`, `ERROR`, `trace`).
        let level = filter.level.as_deref().map(|l| {
            l.parse::<hale_actors::event::Level>()
                .map_or_else(|_| l.to_owned(), |l| l.as_str().to_owned())
        });
        for (name, value) in [
            ("level", &level),
            ("since", &filter.since),
            ("grep", &filter.grep),
            ("session", &filter.session),
        ] {
            if let Some(value) = value {
                query.push(format!("{name}={}", urlencode(value)));
            }
        }
        query.push(format!("limit={}", filter.limit));
        let events = self.get(&format!("/v1/logs?{}", query.join("&"))).await?;
        let mut events = events.as_array().cloned().unwrap_or_default();
        events.reverse();
        for event in &events {
            self.print_event(event);
        }
        if filter.follow {
            self.follow(filter).await?;
        }
        Ok(())
    }

    fn print_event(&self, event: &Value) {
        if self.json {
            println!("{event}");
        } else {
            println!(
                "{} {:<8} {:<28} {:<16} {}",
                text(&event["timestamp"]),
                text(&event["level"]),
                text(&event["source"]),
                text(&event["kind"]),
                text(&event["message"])
            );
        }
    }

    async fn follow(&self, filter: &LogFilter) -> Result<()> {
        let path = match &filter.session {
            Some(session) => format!("/v1/events?session={}", urlencode(session)),
            None => "/v1/events".to_owned(),
        };
        let mut response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .context("opening the event stream")?;
        if !response.status().is_success() {
            bail!("{}: the event stream was refused", response.status());
        }
        let min_level = filter.level.as_deref().and_then(level_rank);
        let grep = filter.grep.as_deref().map(str::to_lowercase);
        let mut buffer = String::new();
        while let Some(chunk) = response.chunk().await.context("reading the event stream")? {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                let mut name = "";
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = n;
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                if name != "audit" {
                    continue;
                }
                let Ok(event) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                if let Some(min) = min_level
                    && level_rank(event["level"].as_str().unwrap_or("info")).unwrap_or(1) < min
                {
                    continue;
                }
                if let Some(grep) = &grep
                    && !event.to_string().to_lowercase().contains(grep)
                {
                    continue;
                }
                self.print_event(&event);
                let _ = std::io::stdout().flush();
            }
        }
        Ok(())
    }

    /// `hale tree`.
    ///
    /// # Errors
    /// The API refused or is unreachable.
    pub async fn tree(&self) -> Result<()> {
        let nodes = self.get("/v1/tree").await?;
        if self.json {
            Self::print_json(&nodes);
            return Ok(());
        }
        let rows = rows(&nodes, &["id", "kind", "state", "restarts", "last_exit"]);
        print_table(&["ID", "KIND", "STATE", "RESTARTS", "LAST EXIT"], &rows);
        if let Some(sandbox) = nodes
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|n| n["sandbox"].as_str())
        {
            println!("exec sandbox: {sandbox}");
        }
        Ok(())
    }

    /// `hale mcp [enable|disable|restart NAME]`.
    ///
    /// # Errors
    /// The API refused or is unreachable.
    pub async fn mcp(&self, action: Option<(&str, &str)>) -> Result<()> {
        if let Some((action, name)) = action {
            let (_, report) = self
                .post(&format!("/v1/mcp/{}/{action}", urlencode(name)), json!({}))
                .await?;
            if self.json {
                Self::print_json(&report);
            } else {
                println!("{name}: {action} done ({})", text(&report["state"]));
            }
            return Ok(());
        }
        let list = self.get("/v1/mcp").await?;
        if self.json {
            Self::print_json(&list);
            return Ok(());
        }
        let rows = rows(
            &list,
            &["name", "state", "breaker", "restarts", "pid", "last_error"],
        );
        print_table(
            &["NAME", "STATE", "BREAKER", "RESTARTS", "PID", "LAST ERROR"],
            &rows,
        );
        Ok(())
    }

    async fn metric(&self, name: &str) -> Result<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .context("reading /metrics")?
            .text()
            .await
            .context("reading /metrics")?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum())
    }

    async fn restarts(&self) -> Result<u64> {
        let nodes = self.get("/v1/tree").await?;
        Ok(nodes
            .as_array()
            .map(|n| n.iter().filter_map(|n| n["restarts"].as_u64()).sum())
            .unwrap_or(0))
    }

    /// `hale chaos`: kills random actors at `rate` per second for
    /// `duration`, with a progress line, then a summary.
    ///
    /// # Errors
    /// The API refused (chaos disabled) or is unreachable.
    pub async fn chaos(&self, rate: f64, duration: Duration, kind: Option<&str>) -> Result<()> {
        if !(rate > 0.0 && rate.is_finite()) {
            bail!("--rate must be a positive number of kills per second");
        }
        let received_before = self.metric("hale_messages_received_total").await?;
        let finished_before = self.metric("hale_messages_finished_total").await?;
        let restarts_before = self.restarts().await?;
        let started = Instant::now();
        let every = Duration::from_secs_f64(1.0 / rate);
        let mut tick = tokio::time::interval(every);
        let (mut kills, mut refused) = (0u64, 0u64);
        let mut last_draw = Instant::now() - Duration::from_secs(1);
        while started.elapsed() < duration {
            tick.tick().await;
            let mut body = json!({"target": "random"});
            if let Some(kind) = kind {
                body["kind"] = json!(kind);
            }
            match self.post("/v1/chaos/kill", body).await {
                Ok(_) => kills += 1,
                Err(e) if e.to_string().starts_with("403") => return Err(e),
                Err(_) => refused += 1,
            }
            if last_draw.elapsed() > Duration::from_millis(200) {
                draw_progress(started.elapsed(), duration, kills);
                last_draw = Instant::now();
            }
        }
        draw_progress(duration, duration, kills);
        eprintln!();
        // Let what was killed come back before counting.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let restarts = self.restarts().await?.saturating_sub(restarts_before);
        let received = self.metric("hale_messages_received_total").await? - received_before;
        let finished = self.metric("hale_messages_finished_total").await? - finished_before;
        let queued = self.metric("hale_messages_queued").await?;
        let lost = (received - finished - queued).max(0.0);
        let summary = json!({
            "kills": kills,
            "kills_refused": refused,
            "restarts_observed": restarts,
            "messages_received": received,
            "messages_answered": finished,
            "messages_still_queued": queued,
            "lost": lost,
            "seconds": started.elapsed().as_secs_f64(),
        });
        if self.json {
            Self::print_json(&summary);
        } else {
            println!(
                "chaos: {kills} kills ({refused} refused), {restarts} restarts observed; \
                 messages: {received} received, {finished} answered, {queued} still queued, {lost} lost"
            );
        }
        Ok(())
    }
}

/// `hale logs` filters.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Minimum level.
    pub level: Option<String>,
    /// Since (RFC 3339 or relative).
    pub since: Option<String>,
    /// Text to find.
    pub grep: Option<String>,
    /// One session.
    pub session: Option<String>,
    /// How many past events.
    pub limit: usize,
    /// Keep streaming new events.
    pub follow: bool,
}

fn level_rank(level: &str) -> Option<u8> {
    Some(match level {
        "debug" => 0,
        "info" => 1,
        "warning" | "warn" => 2,
        "error" => 3,
        "critical" => 4,
        _ => return None,
    })
}

fn draw_progress(elapsed: Duration, total: Duration, kills: u64) {
    let fraction = (elapsed.as_secs_f64() / total.as_secs_f64().max(f64::EPSILON)).min(1.0);
    let width = 30;
    let filled = (fraction * width as f64) as usize;
    eprint!(
        "\r[{}{}] {:>3.0}%  {kills} kills",
        "#".repeat(filled),
        " ".repeat(width - filled),
        fraction * 100.0
    );
    let _ = std::io::stderr().flush();
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn rows(list: &Value, fields: &[&str]) -> Vec<Vec<String>> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| fields.iter().map(|f| text(&item[*f])).collect())
                .collect()
        })
        .unwrap_or_default()
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// Parses a rate such as `50/s` or `50`.
///
/// # Errors
/// Not a positive number (per second).
pub fn parse_rate(text: &str) -> Result<f64> {
    let number = text.strip_suffix("/s").unwrap_or(text);
    let rate: f64 = number
        .trim()
        .parse()
        .map_err(|_| anyhow!("bad rate `{text}`: use a number of kills per second, like 50/s"))?;
    if rate > 0.0 && rate.is_finite() {
        Ok(rate)
    } else {
        bail!("bad rate `{text}`: must be positive")
    }
}

/// The default data directory of the CLI.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(".hale")
}
