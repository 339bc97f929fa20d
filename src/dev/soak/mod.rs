//! `hale bench soak`: a real `hale serve` held under steady load, chaos
//! kills, metric scrapes and event streams, and watched from outside.
//!
//! The other benches time a fresh runtime. This one exists to answer the
//! questions a server that has run for a while raises: is every message
//! still answered exactly once while actors are killed under it, and do its
//! memory and file descriptors stay flat, with a `/metrics` scraper, many
//! event streams and one client that opens a stream and never reads? So it
//! drives the built binary as a child process over HTTP on 127.0.0.1 (a
//! temporary data directory, the scripted model, no network) and samples
//! the child's `VmRSS` and `/proc/<pid>/fd` from outside.
//!
//! Every client holds a fixed number of connections (one per message
//! sender, per stream, the scraper, the chaos client, the idle reader), so
//! the server's descriptor count under load is the same at any two moments
//! unless the server leaks. The suite runs a short version (tests/soak.rs)
//! through `hale bench soak --json`, the same code the release figures in
//! BENCHMARKS.md come from.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

mod report;

pub use report::{
    ChaosFigures, Latency, MessageFigures, Sample, ScrapeFigures, ServerCounters, SoakReport,
    StreamFigures, render,
};

/// The file every message's tool step reads (in the workspace).
const FILE: &str = "soak.txt";
/// One request's limit (streams excepted).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to bind and to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the server may take to stop on SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// A message not seen on the watching stream this long after its send is
/// looked up with `GET /v1/messages/{id}` during the drain.
const POLL_AFTER: Duration = Duration::from_secs(5);
/// How often the descriptors are counted; each kept sample is the fewest
/// of its period.
const FD_EVERY: Duration = Duration::from_millis(100);
/// How far around the checkpoint and the end the fewest descriptors are
/// taken, seconds.
const AROUND: f64 = 1.1;
/// Concurrent reads per warm-up burst.
const WARM_UP_READS: usize = 96;
/// Warm-up bursts at most.
const WARM_UP_BURSTS: u32 = 20;
/// Bursts in a row that leave the server's open files unchanged: warm.
const WARM_UP_STEADY: u32 = 3;
/// How long answers found by lookup may take to show on the stream.
const ANNOUNCE_GRACE: Duration = Duration::from_secs(10);
/// Lookups per drain round, so a stream that saw nothing does not turn the
/// drain into a flood.
const POLLS_PER_ROUND: usize = 200;

/// Options of `hale bench soak`.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// The hale binary to run `serve` from.
    pub hale: PathBuf,
    /// How long the load lasts.
    pub duration: Duration,
    /// Messages per second.
    pub rate: f64,
    /// Chaos kills per second (0: none).
    pub chaos_rate: f64,
    /// How often `/metrics` is scraped.
    pub scrape_every: Duration,
    /// `/v1/events` streams open and read.
    pub streams: usize,
    /// `/v1/events` streams opened and never read.
    pub idle_streams: usize,
    /// Sessions the messages go to, round robin.
    pub sessions: usize,
    /// Connections sending messages (each sends one at a time).
    pub senders: usize,
    /// How often the server's RSS and descriptors are sampled.
    pub sample_every: Duration,
    /// The reference moment the end is compared with.
    pub checkpoint: Duration,
    /// How long to wait for the last answers after the load.
    pub drain: Duration,
    /// Parent of the temporary directory (default: the system temp dir).
    pub dir: Option<PathBuf>,
}

impl SoakOptions {
    /// The issue's soak (two minutes, 200 messages/s, 20 kills/s, scrapes
    /// every 100 ms, 50 streams and one that never reads), serving with
    /// `hale`.
    pub fn new(hale: PathBuf) -> Self {
        Self {
            hale,
            duration: Duration::from_secs(120),
            rate: 200.0,
            chaos_rate: 20.0,
            scrape_every: Duration::from_millis(100),
            streams: 50,
            idle_streams: 1,
            sessions: 100,
            senders: 16,
            sample_every: Duration::from_secs(1),
            checkpoint: Duration::from_secs(10),
            drain: Duration::from_secs(120),
            dir: None,
        }
    }
}

/// Runs the soak and returns its figures.
///
/// # Errors
/// The server cannot be started or does not become ready, or the setup
/// (token, sessions) fails. Failures during the load are counted in the
/// report, not returned.
pub async fn run(options: SoakOptions) -> anyhow::Result<SoakReport> {
    if !(options.rate > 0.0 && options.rate.is_finite()) {
        bail!("--rate must be a positive number of messages per second");
    }
    if !(options.chaos_rate >= 0.0 && options.chaos_rate.is_finite()) {
        bail!("--chaos-rate must be zero or a positive number of kills per second");
    }
    if options.sessions == 0 || options.senders == 0 {
        bail!("--sessions and --senders must be at least 1");
    }
    let base = options.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("hale-soak-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a directory in {}", base.display()))?;
    let mut server = Server::start(&options.hale, dir.path()).await?;
    let result = soak(&options, &server).await;
    let died = server.exited();
    server.stop().await;
    let mut report = result?;
    if report.server_died.is_none() {
        report.server_died = died;
    }
    Ok(report)
}

/// The `hale serve` child.
struct Server {
    child: tokio::process::Child,
    pid: u32,
    url: String,
    token: String,
    stderr: PathBuf,
}

impl Server {
    async fn start(hale: &Path, dir: &Path) -> anyhow::Result<Self> {
        let data = dir.join("data");
        let config = dir.join("hale.toml");
        // The scripted model only: no network, no key read from the
        // environment.
        std::fs::write(
            &config,
            "[[models]]\nname = \"scripted\"\nprovider = \"scripted\"\n\n\
             [[agents]]\nname = \"default\"\nmodels = [\"scripted\"]\n",
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let stderr = dir.join("serve.log");
        let log = std::fs::File::create(&stderr)
            .with_context(|| format!("creating {}", stderr.display()))?;
        let mut child = tokio::process::Command::new(hale)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--allow-chaos",
                "--config",
            ])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "hale=warn,rmcp=error")
            .env_remove("HALE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} serve", hale.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .context("hale serve printed no address in time")?
            .context("reading hale serve's stdout")?
            .unwrap_or_default();
        let url = first
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| {
                format!(
                    "hale serve's first line is {first:?}; its log: {}",
                    tail(&stderr)
                )
            })?
            .to_owned();
        // The rest of stdout is read so the server never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let token = std::fs::read_to_string(data.join("token"))
            .context("reading the server's token")?
            .trim()
            .to_owned();
        let server = Self {
            child,
            pid,
            url,
            token,
            stderr,
        };
        server.ready().await?;
        let file = data.join("workspace").join(FILE);
        std::fs::write(&file, "soak\n").with_context(|| format!("writing {}", file.display()))?;
        Ok(server)
    }

    async fn ready(&self) -> anyhow::Result<()> {
        let client = client(REQUEST_TIMEOUT)?;
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Ok(response) = client.get(format!("{}/healthz", self.url)).send().await
                && response.status() == StatusCode::OK
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "hale serve did not become ready in {START_TIMEOUT:?}; its log: {}",
            tail(&self.stderr)
        )
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{status}; its log: {}", tail(&self.stderr))),
            _ => None,
        }
    }

    async fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The last lines of the server's log.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn client(timeout: Duration) -> anyhow::Result<Client> {
    Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        // One connection per client used one request at a time: the
        // descriptor count stays fixed.
        .pool_max_idle_per_host(1)
        .build()
        .context("building an HTTP client")
}

/// A response's body as JSON (reqwest's `json` feature is off).
async fn json_of(response: reqwest::Response) -> Option<Value> {
    serde_json::from_str(&response.text().await.ok()?).ok()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The plan message `seq` sends: one `read_file`, then a reply naming it.
fn plan(seq: u64) -> String {
    json!({
        "steps": [{"tool": "read_file", "args": {"path": FILE}}],
        "reply": format!("soak-{seq}"),
    })
    .to_string()
}

/// What an answer says: the message its reply names, and whether its tool
/// step ended `success`.
fn read_answer(message: &Value) -> (Option<u64>, bool) {
    let reply: Option<Value> = message["reply"]
        .as_str()
        .and_then(|text| serde_json::from_str(text).ok());
    let Some(reply) = reply else {
        return (None, false);
    };
    let seq = reply["reply"]
        .as_str()
        .and_then(|r| r.strip_prefix("soak-"))
        .and_then(|n| n.parse().ok());
    let ok = reply["steps"]
        .as_array()
        .is_some_and(|steps| steps.len() == 1 && steps[0]["status"] == "success");
    (seq, ok)
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    at: Instant,
}

#[derive(Debug, Clone)]
struct Seen {
    first: Instant,
    /// `message.done` events on the watching stream.
    announced: u32,
    failed: bool,
    seq: Option<u64>,
    tool_ok: bool,
    by_poll: bool,
}

/// Sends and answers, joined at the end (an answer can be seen before its
/// send's response arrives).
#[derive(Default)]
struct Tracker {
    sent: Mutex<HashMap<String, Sent>>,
    seen: Mutex<HashMap<String, Seen>>,
    refused: Mutex<BTreeMap<u16, u64>>,
    send_errors: AtomicU64,
    scheduled: AtomicU64,
}

impl Tracker {
    fn answer(&self, message: &Value, by_poll: bool) {
        let Some(id) = message["id"].as_str() else {
            return;
        };
        let status = message["status"].as_str().unwrap_or_default();
        if status != "done" && status != "failed" {
            return;
        }
        let (seq, tool_ok) = read_answer(message);
        let mut seen = lock(&self.seen);
        let announced = u32::from(!by_poll);
        seen.entry(id.to_owned())
            .and_modify(|s| s.announced += announced)
            .or_insert(Seen {
                first: Instant::now(),
                announced,
                failed: status == "failed",
                seq,
                tool_ok,
                by_poll,
            });
    }
}

#[derive(Default)]
struct StreamStats {
    opened: AtomicU64,
    refused: Mutex<BTreeMap<u16, u64>>,
    broken: AtomicU64,
    events: AtomicU64,
    lagged: AtomicU64,
    bytes: AtomicU64,
}

/// One `/v1/events` stream, read until `stop`; the watching one hands every
/// `message.done` to the tracker.
async fn stream(
    client: Client,
    url: String,
    token: String,
    tracker: Option<Arc<Tracker>>,
    stats: Arc<StreamStats>,
    mut stop: watch::Receiver<bool>,
) {
    let opened = tokio::time::timeout(
        REQUEST_TIMEOUT,
        client
            .get(format!("{url}/v1/events"))
            .bearer_auth(&token)
            .send(),
    )
    .await;
    let mut response = match opened {
        Ok(Ok(response)) if response.status() == StatusCode::OK => response,
        Ok(Ok(response)) => {
            *lock(&stats.refused)
                .entry(response.status().as_u16())
                .or_default() += 1;
            return;
        }
        _ => {
            stats.broken.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    stats.opened.fetch_add(1, Ordering::Relaxed);
    let mut buffer: Vec<u8> = Vec::new();
    let mut event = String::new();
    loop {
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk,
            _ = stop.changed() => return,
        };
        let bytes = match chunk {
            Ok(Some(bytes)) => bytes,
            _ => {
                if !*stop.borrow() {
                    stats.broken.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        };
        stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        buffer.extend_from_slice(&bytes);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(name) = line.strip_prefix("event:") {
                name.trim().clone_into(&mut event);
            } else if let Some(data) = line.strip_prefix("data:") {
                stats.events.fetch_add(1, Ordering::Relaxed);
                if event == "lagged" {
                    stats.lagged.fetch_add(1, Ordering::Relaxed);
                } else if event == "message.done"
                    && let Some(tracker) = &tracker
                    && let Ok(message) = serde_json::from_str::<Value>(data.trim())
                {
                    tracker.answer(&message, false);
                }
            } else if line.is_empty() {
                event.clear();
            }
        }
    }
}

/// A `/v1/events` request written on a socket that is then never read.
async fn idle_stream(url: &str, token: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let authority = url
        .strip_prefix("http://")
        .context("the server's URL is not http://")?;
    let addr: std::net::SocketAddr = authority
        .parse()
        .with_context(|| format!("{authority} is not an address"))?;
    let socket = tokio::net::TcpSocket::new_v4().context("a socket")?;
    // A small window, so the server meets a full socket soon.
    let _ = socket.set_recv_buffer_size(4096);
    let mut stream = tokio::time::timeout(REQUEST_TIMEOUT, socket.connect(addr))
        .await
        .context("connecting timed out")?
        .context("connecting")?;
    let request = format!(
        "GET /v1/events HTTP/1.1\r\nhost: {authority}\r\nauthorization: Bearer {token}\r\n\
         accept: text/event-stream\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .context("writing the request")?;
    Ok(stream)
}

fn percentiles(mut values: Vec<Duration>) -> Latency {
    if values.is_empty() {
        return Latency::default();
    }
    values.sort_unstable();
    let rank = |p: f64| {
        // Nearest rank: the smallest value with at least p of them at or
        // below it.
        let n = values.len();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
        values[index].as_secs_f64() * 1000.0
    };
    Latency {
        p50_ms: rank(0.50),
        p99_ms: rank(0.99),
        max_ms: values[values.len() - 1].as_secs_f64() * 1000.0,
    }
}

/// The sample nearest `t`, with the fewest descriptors of the samples
/// within a second of it: a moment's files (a SQLite temporary file, a
/// tool's read on a starved thread) are not what is compared.
fn around(samples: &[Sample], t: f64) -> Option<Sample> {
    let mut nearest = samples
        .iter()
        .min_by(|a, b| (a.t_s - t).abs().total_cmp(&(b.t_s - t).abs()))?
        .clone();
    let fewest = samples
        .iter()
        .filter(|s| (s.t_s - nearest.t_s).abs() <= AROUND)
        .min_by_key(|s| s.fds)?;
    nearest.fds = fewest.fds;
    nearest.sockets = fewest.sockets;
    nearest.pipes = fewest.pipes;
    nearest.files = fewest.files;
    nearest.paths.clone_from(&fewest.paths);
    Some(nearest)
}

/// The fewest descriptors `pid` holds over [`FD_EVERY`] × 10, with its
/// last RSS: what it holds when nothing is in flight.
async fn steady_sample(pid: u32, started: Instant) -> Option<Sample> {
    let mut fewest: Option<Sample> = None;
    for _ in 0..10 {
        if let Some(s) = sample(pid, started.elapsed()) {
            let rss_kib = s.rss_kib;
            if fewest.as_ref().is_none_or(|f| s.fds < f.fds) {
                fewest = Some(s);
            }
            if let Some(f) = &mut fewest {
                f.rss_kib = rss_kib;
            }
        }
        tokio::time::sleep(FD_EVERY).await;
    }
    fewest
}

/// Brings the server's on-demand pools (the store opens read connections
/// as concurrent reads need them, up to its limit) to their size under
/// concurrency before the clock starts, so a pool growing later is not
/// read as a leak: bursts of concurrent reads until the files the server
/// holds are the same after [`WARM_UP_STEADY`] bursts in a row. Returns the bursts made.
async fn warm_up(url: &str, token: &str, pid: u32, sessions: &[String]) -> anyhow::Result<u32> {
    let client = Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("building an HTTP client")?;
    let mut last = None;
    let mut unchanged = 0;
    for round in 1..=WARM_UP_BURSTS {
        let mut burst = JoinSet::new();
        for i in 0..WARM_UP_READS {
            // Reads that take a while, so several overlap.
            let path = match i % 3 {
                0 => format!("/v1/sessions/{}", sessions[i % sessions.len()]),
                1 => "/v1/sessions".to_owned(),
                _ => "/v1/logs?limit=10000".to_owned(),
            };
            let request = client.get(format!("{url}{path}")).bearer_auth(token);
            burst.spawn(async move {
                if let Ok(response) = request.send().await {
                    let _ = response.bytes().await;
                }
            });
        }
        while burst.join_next().await.is_some() {}
        let files = sample(pid, Duration::ZERO).map(|s| s.files);
        if files.is_some() && files == last {
            unchanged += 1;
            if unchanged == WARM_UP_STEADY {
                return Ok(round);
            }
        } else {
            unchanged = 0;
            last = files;
        }
    }
    Ok(WARM_UP_BURSTS)
}

/// `VmRSS` (KiB) and the number of open descriptors of `pid`.
fn sample(pid: u32, t: Duration) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status_kib(&status, "VmRSS:")?;
    let mut sample = Sample {
        t_s: t.as_secs_f64(),
        rss_kib,
        fds: 0,
        sockets: 0,
        pipes: 0,
        files: 0,
        paths: Vec::new(),
    };
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        sample.fds += 1;
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let target = target.to_string_lossy();
        if target.starts_with("socket:") {
            sample.sockets += 1;
        } else if target.starts_with("pipe:") {
            sample.pipes += 1;
        } else if target.starts_with('/') {
            sample.files += 1;
            sample.paths.push(target.into_owned());
        }
    }
    Some(sample)
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[allow(clippy::too_many_lines)]
async fn soak(options: &SoakOptions, server: &Server) -> anyhow::Result<SoakReport> {
    let url = server.url.clone();
    let token = server.token.clone();
    // Dropped before the load: an idle connection closed halfway through
    // (by the pool's idle timeout or the server's) would change the count.
    let setup = client(REQUEST_TIMEOUT)?;
    let mut sessions = Vec::with_capacity(options.sessions);
    for _ in 0..options.sessions {
        let response = setup
            .post(format!("{url}/v1/sessions"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .context("creating a session")?;
        if response.status() != StatusCode::CREATED {
            bail!("creating a session: {}", response.status());
        }
        let body = json_of(response).await.context("reading a session")?;
        sessions.push(
            body["id"]
                .as_str()
                .context("a session without an id")?
                .to_owned(),
        );
    }
    drop(setup);
    let sessions = Arc::new(sessions);
    let tracker = Arc::new(Tracker::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    // The streams, before the load: the watching one sees every answer.
    let stream_stats = Arc::new(StreamStats::default());
    let stream_client = Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("building an HTTP client")?;
    let mut streams = JoinSet::new();
    for i in 0..options.streams {
        streams.spawn(stream(
            stream_client.clone(),
            url.clone(),
            token.clone(),
            (i == 0).then(|| Arc::clone(&tracker)),
            Arc::clone(&stream_stats),
            stop_rx.clone(),
        ));
    }
    let mut idle = Vec::new();
    for _ in 0..options.idle_streams {
        idle.push(idle_stream(&url, &token).await?);
    }
    // Every stream answered (or failed) before the clock starts.
    let wait_open = Instant::now();
    while wait_open.elapsed() < REQUEST_TIMEOUT {
        let settled = stream_stats.opened.load(Ordering::Relaxed)
            + stream_stats.broken.load(Ordering::Relaxed)
            + lock(&stream_stats.refused).values().sum::<u64>();
        if settled >= options.streams as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let warm_up_bursts = warm_up(&url, &token, server.pid, &sessions[..]).await?;
    let started = Instant::now();
    let load_end = started + options.duration;

    // Samples of the server.
    let pid = server.pid;
    let sample_every = options.sample_every;
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(FD_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The sample with the fewest descriptors since the last one kept:
        // a file a tool call holds for a moment is not a leak, one that
        // stays open is.
        let mut window: Option<Sample> = None;
        let mut next = started + sample_every;
        loop {
            tick.tick().await;
            let now = Instant::now();
            if let Some(s) = sample(pid, now - started) {
                let rss_kib = s.rss_kib;
                if window.as_ref().is_none_or(|w| s.fds < w.fds) {
                    window = Some(s);
                }
                if let Some(w) = &mut window {
                    w.rss_kib = rss_kib;
                }
            }
            if now >= next.min(load_end) {
                if let Some(mut w) = window.take() {
                    w.t_s = (now - started).as_secs_f64();
                    samples.push(w);
                }
                next += sample_every;
                if now >= load_end {
                    break;
                }
            }
        }
        samples
    });

    // The pacer hands out sends at the rate; senders take them.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let total = (options.rate * options.duration.as_secs_f64()).round() as u64;
    // A short queue: senders that fall behind slow the pacer down (the
    // rate achieved is reported) instead of piling up sends for after the
    // load.
    let (slot_tx, slot_rx) = tokio::sync::mpsc::channel::<u64>(options.senders * 2);
    let every = Duration::from_secs_f64(1.0 / options.rate);
    let pacer_tracker = Arc::clone(&tracker);
    let pacer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        for seq in 0..total {
            tick.tick().await;
            if Instant::now() >= load_end || slot_tx.send(seq).await.is_err() {
                break;
            }
            pacer_tracker.scheduled.fetch_add(1, Ordering::Relaxed);
        }
    });
    let slot_rx = Arc::new(tokio::sync::Mutex::new(slot_rx));
    let mut senders = JoinSet::new();
    // Every load client's connection stays open until the last sample is
    // taken: a client dropped as its task ends at the deadline would close
    // a connection just before the end's sample.
    let mut held = Vec::new();
    for _ in 0..options.senders {
        let client = client(REQUEST_TIMEOUT)?;
        held.push(client.clone());
        let slots = Arc::clone(&slot_rx);
        let tracker = Arc::clone(&tracker);
        let sessions = Arc::clone(&sessions);
        let (url, token) = (url.clone(), token.clone());
        senders.spawn(async move {
            loop {
                let Some(seq) = slots.lock().await.recv().await else {
                    return;
                };
                #[allow(clippy::cast_possible_truncation)]
                let session = &sessions[(seq % sessions.len() as u64) as usize];
                let at = Instant::now();
                let sent = client
                    .post(format!("{url}/v1/sessions/{session}/messages"))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(json!({"text": plan(seq)}).to_string())
                    .send()
                    .await;
                let response = match sent {
                    Ok(response) => response,
                    Err(_) => {
                        tracker.send_errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                let status = response.status();
                let body = json_of(response).await;
                match body.as_ref().and_then(|b| b["message_id"].as_str()) {
                    Some(id) if status == StatusCode::ACCEPTED => {
                        lock(&tracker.sent).insert(id.to_owned(), Sent { seq, at });
                    }
                    _ => {
                        *lock(&tracker.refused).entry(status.as_u16()).or_default() += 1;
                    }
                }
            }
        });
    }

    // Chaos kills.
    let chaos = {
        let client = client(REQUEST_TIMEOUT)?;
        held.push(client.clone());
        let (url, token) = (url.clone(), token.clone());
        let rate = options.chaos_rate;
        tokio::spawn(async move {
            let mut figures = ChaosFigures::default();
            if rate <= 0.0 {
                return figures;
            }
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            loop {
                tick.tick().await;
                if Instant::now() >= load_end {
                    return figures;
                }
                let killed = client
                    .post(format!("{url}/v1/chaos/kill"))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(r#"{"target":"random"}"#)
                    .send()
                    .await;
                match killed {
                    Ok(response) => {
                        if response.status() == StatusCode::OK {
                            figures.kills += 1;
                        } else {
                            figures.refused += 1;
                        }
                        let _ = response.bytes().await;
                    }
                    Err(_) => figures.errors += 1,
                }
            }
        })
    };

    // The scraper.
    let scraper = {
        let client = client(REQUEST_TIMEOUT)?;
        held.push(client.clone());
        let url = url.clone();
        let every = options.scrape_every;
        tokio::spawn(async move {
            let (mut ok, mut failed, mut times) = (0u64, 0u64, Vec::new());
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if Instant::now() >= load_end {
                    break;
                }
                let at = Instant::now();
                match client.get(format!("{url}/metrics")).send().await {
                    Ok(response) if response.status() == StatusCode::OK => {
                        if response.bytes().await.is_ok() {
                            ok += 1;
                            times.push(at.elapsed());
                        } else {
                            failed += 1;
                        }
                    }
                    _ => failed += 1,
                }
            }
            ScrapeFigures {
                ok,
                failed,
                latency: percentiles(times),
            }
        })
    };

    let _ = pacer.await;
    let samples = sampler.await.unwrap_or_default();
    drop(held);
    let chaos = chaos.await.unwrap_or_default();
    let scrapes = scraper.await.unwrap_or_default();
    while senders.join_next().await.is_some() {}
    let load_seconds = started.elapsed().as_secs_f64();

    // The drain: the last answers, by the stream, else by lookup.
    let after = client(REQUEST_TIMEOUT)?;
    let drain_end = Instant::now() + options.drain;
    loop {
        let missing: Vec<(String, Sent)> = {
            let sent = lock(&tracker.sent);
            let seen = lock(&tracker.seen);
            sent.iter()
                .filter(|(id, _)| !seen.contains_key(*id))
                .map(|(id, s)| (id.clone(), *s))
                .collect()
        };
        if missing.is_empty() || Instant::now() >= drain_end {
            break;
        }
        for (id, _) in missing
            .iter()
            .filter(|(_, s)| s.at.elapsed() >= POLL_AFTER)
            .take(POLLS_PER_ROUND)
        {
            if let Ok(response) = after
                .get(format!("{url}/v1/messages/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                && let Some(message) = json_of(response).await
            {
                tracker.answer(&message, true);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Answers found by lookup may still be on their way down the stream.
    let grace = Instant::now() + ANNOUNCE_GRACE;
    while Instant::now() < grace && lock(&tracker.seen).values().any(|s| s.announced == 0) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = steady_sample(pid, started).await;
    let _ = stop_tx.send(true);
    while streams.join_next().await.is_some() {}
    let idle_held = idle.len() as u64;
    drop(idle);

    // The audit trail and the sessions' own counts.
    let mut audit: HashMap<String, u32> = HashMap::new();
    let mut per_session: HashMap<&str, u64> = HashMap::new();
    for id in lock(&tracker.sent).keys() {
        if let Some((session, _)) = id.rsplit_once(':')
            && let Some(s) = sessions.iter().find(|s| s.as_str() == session)
        {
            *per_session.entry(s.as_str()).or_default() += 1;
        }
    }
    let mut session_count_mismatches = 0;
    let mut examples: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut example = |kind: &str, id: &str| {
        let list = examples.entry(kind.to_owned()).or_default();
        if list.len() < 5 {
            list.push(id.to_owned());
        }
    };
    for session in sessions.iter() {
        let events = after
            .get(format!(
                "{url}/v1/logs?kind=message_done&session={session}&limit=10000"
            ))
            .bearer_auth(&token)
            .send()
            .await
            .context("reading the audit trail")?;
        let events = json_of(events).await.context("reading the audit trail")?;
        for event in events.as_array().into_iter().flatten() {
            if let Some(message) = event["data"]["message"].as_str() {
                *audit.entry(message.to_owned()).or_default() += 1;
            }
        }
        let detail = after
            .get(format!("{url}/v1/sessions/{session}"))
            .bearer_auth(&token)
            .send()
            .await
            .context("reading a session")?;
        let detail = json_of(detail).await.context("reading a session")?;
        let expected = per_session.get(session.as_str()).copied().unwrap_or(0);
        if detail["messages"].as_u64() != Some(expected) {
            session_count_mismatches += 1;
            example("session_count_mismatch", session);
        }
    }
    let counters = match after.get(format!("{url}/metrics")).send().await {
        Ok(response) => {
            let text = response.text().await.unwrap_or_default();
            ServerCounters {
                received: metric(&text, "hale_messages_received_total"),
                finished: metric(&text, "hale_messages_finished_total"),
                restarts: metric(&text, "hale_restarts_total"),
            }
        }
        Err(_) => ServerCounters::default(),
    };
    let peak_rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| status_kib(&s, "VmHWM:"))
        .unwrap_or(0);

    // The join.
    let sent = lock(&tracker.sent).clone();
    let seen = lock(&tracker.seen).clone();
    let mut figures = MessageFigures {
        scheduled: tracker.scheduled.load(Ordering::Relaxed),
        accepted: sent.len() as u64,
        refused: lock(&tracker.refused).clone(),
        send_errors: tracker.send_errors.load(Ordering::Relaxed),
        ..MessageFigures::default()
    };
    let mut latencies = Vec::with_capacity(sent.len());
    let mut last_answer = started;
    for (id, s) in &sent {
        match seen.get(id) {
            Some(answer) => {
                figures.answered += 1;
                // A lookup finds an answer late: only the stream times it.
                if !answer.by_poll {
                    latencies.push(answer.first.saturating_duration_since(s.at));
                }
                last_answer = last_answer.max(answer.first);
                if answer.failed {
                    figures.failed += 1;
                    example("failed", id);
                }
                if answer.seq != Some(s.seq) {
                    figures.wrong_reply += 1;
                    example("wrong_reply", id);
                }
                if !answer.tool_ok {
                    figures.tool_not_ok += 1;
                    example("tool_not_ok", id);
                }
                if answer.announced > 1 {
                    figures.duplicate_done_events += 1;
                    example("duplicate_done_event", id);
                }
                if answer.by_poll {
                    figures.answered_by_poll += 1;
                }
                if answer.announced == 0 && options.streams > 0 {
                    figures.unannounced += 1;
                    example("unannounced", id);
                }
            }
            None => {
                figures.missing += 1;
                example("missing", id);
            }
        }
        match audit.get(id).copied().unwrap_or(0) {
            0 => {
                figures.audit_missing += 1;
                example("audit_missing", id);
            }
            1 => {}
            _ => {
                figures.audit_duplicates += 1;
                example("audit_duplicate", id);
            }
        }
    }
    figures.session_count_mismatches = session_count_mismatches;
    figures.examples = examples;
    figures.exactly_once = figures.scheduled == figures.accepted
        && figures.missing == 0
        && figures.failed == 0
        && figures.wrong_reply == 0
        && figures.duplicate_done_events == 0
        && figures.audit_duplicates == 0
        && figures.session_count_mismatches == 0;
    figures.sent_per_s = figures.accepted as f64 / load_seconds.max(f64::EPSILON);
    figures.answered_per_s = figures.answered as f64
        / last_answer
            .saturating_duration_since(started)
            .as_secs_f64()
            .max(f64::EPSILON);
    figures.latency = percentiles(latencies);

    let at_checkpoint = around(&samples, options.checkpoint.as_secs_f64());
    let at_end = samples.last().and_then(|last| around(&samples, last.t_s));
    let mut samples = samples;
    for s in &mut samples {
        s.paths = Vec::new();
    }
    Ok(SoakReport {
        duration_s: options.duration.as_secs_f64(),
        rate: options.rate,
        chaos_rate: options.chaos_rate,
        sessions: options.sessions,
        senders: options.senders,
        messages: figures,
        chaos,
        scrapes,
        streams: StreamFigures {
            opened: stream_stats.opened.load(Ordering::Relaxed),
            refused: lock(&stream_stats.refused).clone(),
            broken: stream_stats.broken.load(Ordering::Relaxed),
            events: stream_stats.events.load(Ordering::Relaxed),
            lagged: stream_stats.lagged.load(Ordering::Relaxed),
            bytes: stream_stats.bytes.load(Ordering::Relaxed),
            idle_held,
        },
        server: counters,
        at_end,
        at_checkpoint,
        samples,
        drained,
        peak_rss_kib,
        server_died: None,
        warm_up_bursts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_names_its_message_and_its_tool_status() {
        let message = json!({
            "id": "s:1", "status": "done",
            "reply": json!({"reply": "soak-41", "steps": [{"status": "success"}]}).to_string(),
        });
        assert_eq!(read_answer(&message), (Some(41), true));
        let failed_step = json!({
            "reply": json!({"reply": "soak-7", "steps": [{"status": "error"}]}).to_string(),
        });
        assert_eq!(read_answer(&failed_step), (Some(7), false));
        assert_eq!(
            read_answer(&json!({"reply": "ok: received 3 characters"})),
            (None, false)
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = percentiles(values);
        assert!((l.p50_ms - 50.0).abs() < 1e-9, "{l:?}");
        assert!((l.p99_ms - 99.0).abs() < 1e-9, "{l:?}");
        assert!((l.max_ms - 100.0).abs() < 1e-9, "{l:?}");
        assert!((percentiles(vec![Duration::from_millis(3)]).p99_ms - 3.0).abs() < 1e-9);
        assert_eq!(percentiles(Vec::new()).max_ms, 0.0);
    }

    #[test]
    fn status_fields_and_metrics_are_read() {
        let status = "Name:\thale\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(status, "VmHWM:"), Some(2048));
        let text = "# HELP x\nhale_restarts_total{kind=\"session\"} 3\nhale_restarts_total{kind=\"tool\"} 2\nhale_restarts_totalx 9\n";
        assert!((metric(text, "hale_restarts_total") - 5.0).abs() < 1e-9);
    }
}
