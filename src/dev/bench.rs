//! `hale bench`: end-to-end figures of a running runtime (hidden commands).
//!
//! Criterion is awkward for runs of several seconds through the whole tree,
//! so these are plain timed runs that print their figures. Every run starts
//! a [`Runtime`] with the scripted model in a fresh data directory under the
//! system temp directory and removes it afterwards.
//!
//! - [`sessions`]: messages per second through sessions, the scripted model
//!   asking for one in-process tool call (`read_file` on a small file), with
//!   the same tool call made straight through the dispatcher as the baseline
//!   and a plain-text message (model turn only) in between; sequential
//!   latency (p50/p99) and many sessions at once (messages/s).
//! - [`idle`]: process RSS per idle session (`VmRSS` before and after
//!   creating N sessions), or per bare ractor actor for comparison.
//! - [`exec`]: the sandbox's cost per command: `exec` running `true`
//!   through the `exec` tool with the sandbox off and on, interleaved in
//!   the same run (p50/p90).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hale_actors::dispatch::ToolContext;
use hale_actors::outcome::Status;
use hale_actors::store::{MessageRecord, MessageState};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use hale::runtime::{Runtime, RuntimeConfig};

/// The file the tool messages read (in the workspace).
const FILE: &str = "bench.txt";
/// How long one message may take before the bench gives up on it.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of `hale bench sessions`.
#[derive(Debug, Clone)]
pub struct SessionsOptions {
    /// Sequential rounds; each round runs every variant once, in rotating
    /// order, on a fresh session.
    pub rounds: usize,
    /// Messages (or direct calls) per variant per round.
    pub messages: usize,
    /// Sessions working at once in the concurrent phase.
    pub sessions: usize,
    /// Messages each of those sessions sends (one after the other).
    pub per_session: usize,
    /// Messages sent to one session to show how latency grows with the
    /// session's length (0: skip).
    pub long: usize,
    /// Where to put the data directory (default: the system temp directory).
    pub dir: Option<PathBuf>,
}

impl Default for SessionsOptions {
    fn default() -> Self {
        Self {
            rounds: 5,
            messages: 200,
            sessions: 100,
            per_session: 20,
            long: 500,
            dir: None,
        }
    }
}

/// Options of `hale bench idle`.
#[derive(Debug, Clone)]
pub struct IdleOptions {
    /// How many to create.
    pub count: usize,
    /// Creations in flight at once.
    pub concurrency: usize,
    /// Send each session one plain-text message (and wait for it) before
    /// measuring, so every session has worked once and gone idle.
    pub message: bool,
    /// What to create.
    pub kind: IdleKind,
    /// Where to put the data directory (default: the system temp directory).
    pub dir: Option<PathBuf>,
}

/// What `hale bench idle` creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleKind {
    /// Sessions through the runtime (store row, supervised actor).
    Sessions,
    /// Bare ractor actors linked to one parent actor: the floor any
    /// actor-per-session design on ractor pays.
    Actors,
}

impl std::str::FromStr for IdleKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sessions" => Ok(Self::Sessions),
            "actors" => Ok(Self::Actors),
            other => Err(format!("`{other}`: expected `sessions` or `actors`")),
        }
    }
}

/// A data directory that removes itself.
struct TempData {
    path: PathBuf,
}

impl TempData {
    fn new(base: Option<&Path>) -> anyhow::Result<Self> {
        let base = base.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = base.join(format!("hale-bench-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempData {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn config(dir: &Path) -> RuntimeConfig {
    let mut config = RuntimeConfig::new(dir.join("data"));
    // Generous limits: the bench queues many messages at once.
    config.sessions.max_queued_total = 1 << 30;
    config
}

async fn start(dir: &Path) -> anyhow::Result<Runtime> {
    let config = config(dir);
    let runtime = Runtime::start(config).await?;
    let workspace = runtime.config().builtin.workspace_root.clone();
    tokio::fs::create_dir_all(&workspace).await?;
    tokio::fs::write(workspace.join(FILE), "hale bench: a small file to read.\n").await?;
    Ok(runtime)
}

fn tool_message() -> String {
    json!({
        "steps": [{ "tool": "read_file", "args": { "path": FILE } }],
        "reply": "x",
    })
    .to_string()
}

const PLAIN_MESSAGE: &str = "hello, just acknowledge this";

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[allow(clippy::cast_precision_loss)]
fn per_second(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// Checks that a finished message is what the variant expects.
fn check(record: Option<MessageRecord>, with_tool: bool) -> anyhow::Result<()> {
    let Some(record) = record else {
        bail!("a message did not finish within {MESSAGE_TIMEOUT:?}");
    };
    if record.state != MessageState::Done {
        bail!(
            "message {} ended {:?}: {:?}",
            record.seq,
            record.state,
            record.error
        );
    }
    if with_tool {
        let reply: Value = serde_json::from_str(record.reply.as_deref().unwrap_or("null"))?;
        let status = &reply["steps"][0]["status"];
        if status != "success" {
            bail!("the read_file step did not succeed: {reply}");
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// `dispatcher().call("read_file")`, no session.
    Direct,
    /// A plain-text message: one model turn, no tool.
    Plain,
    /// A plan with one `read_file` step: two model turns and a tool call.
    Tool,
}

impl Variant {
    const ALL: [Self; 3] = [Self::Direct, Self::Plain, Self::Tool];

    fn name(self) -> &'static str {
        match self {
            Self::Direct => "dispatcher read_file (no session)",
            Self::Plain => "session, plain message (1 model turn)",
            Self::Tool => "session, read_file step (2 turns + call)",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Direct => 0,
            Self::Plain => 1,
            Self::Tool => 2,
        }
    }
}

async fn direct_call(runtime: &Runtime) -> anyhow::Result<()> {
    let outcome = runtime
        .dispatcher()
        .call(
            "read_file",
            json!({ "path": FILE }),
            &ToolContext::default(),
        )
        .await;
    if outcome.status != Status::Success {
        bail!("direct read_file failed: {}", outcome.message);
    }
    Ok(())
}

/// Runs `n` of `variant` one after the other (a fresh session for the
/// session variants) and returns each latency.
async fn sequential(
    runtime: &Runtime,
    variant: Variant,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    let text = match variant {
        Variant::Direct => {
            for _ in 0..n {
                let t = Instant::now();
                direct_call(runtime).await?;
                out.push(t.elapsed());
            }
            return Ok(out);
        }
        Variant::Plain => PLAIN_MESSAGE.to_owned(),
        Variant::Tool => tool_message(),
    };
    let session = runtime.create_session("default").await?;
    for _ in 0..n {
        let t = Instant::now();
        let (_, record) = runtime
            .send_and_wait(&session, &text, MESSAGE_TIMEOUT)
            .await?;
        out.push(t.elapsed());
        check(record, variant == Variant::Tool)?;
    }
    Ok(out)
}

/// `workers` tasks each doing `each` of `variant` one after the other
/// (each with its own session); returns the wall time and every latency.
async fn concurrent(
    runtime: &Runtime,
    variant: Variant,
    workers: usize,
    each: usize,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let mut sessions = Vec::with_capacity(workers);
    if variant != Variant::Direct {
        for _ in 0..workers {
            sessions.push(Some(runtime.create_session("default").await?));
        }
    } else {
        sessions.resize(workers, None);
    }
    let text = Arc::new(match variant {
        Variant::Tool => tool_message(),
        _ => PLAIN_MESSAGE.to_owned(),
    });
    let start = Instant::now();
    let mut set = JoinSet::new();
    for session in sessions {
        let runtime = runtime.clone();
        let text = Arc::clone(&text);
        set.spawn(async move {
            let mut lat = Vec::with_capacity(each);
            for _ in 0..each {
                let t = Instant::now();
                match &session {
                    None => direct_call(&runtime).await?,
                    Some(session) => {
                        let (_, record) = runtime
                            .send_and_wait(session, &text, MESSAGE_TIMEOUT)
                            .await?;
                        check(record, variant == Variant::Tool)?;
                    }
                }
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        });
    }
    let mut all = Vec::with_capacity(workers * each);
    while let Some(done) = set.join_next().await {
        all.extend(done??);
    }
    Ok((start.elapsed(), all))
}

fn print_latency(name: &str, samples: &mut [Duration]) {
    samples.sort_unstable();
    let total: Duration = samples.iter().sum();
    println!(
        "  {name:<44} n={:>6}  p50 {:>9.1} us  p99 {:>9.1} us  ({:>8.0} /s one at a time)",
        samples.len(),
        us(percentile(samples, 50.0)),
        us(percentile(samples, 99.0)),
        per_second(samples.len(), total),
    );
}

/// `hale bench sessions`: prints sequential latencies and concurrent
/// throughput of the three variants, measured in one run.
///
/// # Errors
/// The runtime did not start, or a message failed or timed out.
pub async fn sessions(options: SessionsOptions) -> anyhow::Result<()> {
    let data = TempData::new(options.dir.as_deref())?;
    let runtime = start(&data.path).await?;
    let result = run_sessions(&runtime, &options).await;
    let stopped = runtime.shutdown().await;
    result?;
    stopped?;
    Ok(())
}

async fn run_sessions(runtime: &Runtime, options: &SessionsOptions) -> anyhow::Result<()> {
    println!(
        "hale bench sessions: {} rounds x {} per variant sequentially, then {} sessions x {} \
         messages at once; scripted model, read_file on a {}-byte file",
        options.rounds,
        options.messages,
        options.sessions,
        options.per_session,
        "hale bench: a small file to read.\n".len(),
    );
    // Warm-up: every variant once through, untimed.
    for variant in Variant::ALL {
        sequential(runtime, variant, 20).await?;
    }

    let mut samples: [Vec<Duration>; 3] = Default::default();
    for round in 0..options.rounds {
        for k in 0..Variant::ALL.len() {
            let variant = Variant::ALL[(round + k) % Variant::ALL.len()];
            samples[variant.index()].extend(sequential(runtime, variant, options.messages).await?);
        }
    }
    println!("sequential (one caller, send_and_wait; each round a fresh session):");
    let mut p50 = [Duration::ZERO; 3];
    for variant in Variant::ALL {
        let s = &mut samples[variant.index()];
        print_latency(variant.name(), s);
        p50[variant.index()] = percentile(s, 50.0);
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(f64::MIN_POSITIVE);
    println!(
        "  p50 ratios: tool message / direct call {:.1}x; plain message / direct call {:.1}x; \
         tool message - plain message {:.1} us",
        ratio(p50[2], p50[0]),
        ratio(p50[1], p50[0]),
        us(p50[2].saturating_sub(p50[1])),
    );

    println!(
        "concurrent ({} callers, each {} one after the other; each session its own caller):",
        options.sessions, options.per_session
    );
    let mut rate = [0.0_f64; 3];
    // The dispatcher refuses calls beyond an endpoint's in-flight cap, so
    // the direct baseline runs at most that many callers.
    let cap = runtime.config().dispatch.max_in_flight;
    for variant in Variant::ALL {
        let (callers, each) = if variant == Variant::Direct {
            (options.sessions.min(cap), options.per_session * 10)
        } else {
            (options.sessions, options.per_session)
        };
        let (wall, mut lat) = concurrent(runtime, variant, callers, each).await?;
        lat.sort_unstable();
        rate[variant.index()] = per_second(lat.len(), wall);
        println!(
            "  {:<44} {callers:>3} callers n={:>6}  {:>9.0} /s  in {:>6.2} s  (p50 {:.0} us, \
             p99 {:.0} us)",
            variant.name(),
            lat.len(),
            rate[variant.index()],
            wall.as_secs_f64(),
            us(percentile(&lat, 50.0)),
            us(percentile(&lat, 99.0)),
        );
    }
    println!(
        "  throughput ratios: direct calls / tool messages {:.1}x; plain / tool messages {:.2}x",
        rate[0] / rate[2].max(f64::MIN_POSITIVE),
        rate[1] / rate[2].max(f64::MIN_POSITIVE),
    );

    if options.long > 0 {
        let lat = sequential(runtime, Variant::Tool, options.long).await?;
        let tenth = (options.long / 10).max(1);
        let mut first: Vec<Duration> = lat[..tenth].to_vec();
        let mut last: Vec<Duration> = lat[lat.len() - tenth..].to_vec();
        first.sort_unstable();
        last.sort_unstable();
        println!(
            "one long session ({} read_file messages): p50 of messages 1-{tenth} {:.0} us, of the \
             last {tenth} {:.0} us (each message rereads the session's inbox and journal)",
            options.long,
            us(percentile(&first, 50.0)),
            us(percentile(&last, 50.0)),
        );
    }
    Ok(())
}

/// The process's resident set size in bytes (`VmRSS`), or 0 where
/// `/proc/self/status` is missing.
pub fn rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

#[allow(clippy::cast_precision_loss)]
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs `make(i)` for `i` in `0..count`, `concurrency` at a time, printing
/// progress every 10 %.
async fn fan_out<F, Fut>(
    count: usize,
    concurrency: usize,
    what: &str,
    make: F,
) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let make = Arc::new(make);
    let start = Instant::now();
    let step = (count / 10).max(1);
    let mut set = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let next = Arc::clone(&next);
        let done = Arc::clone(&done);
        let make = Arc::clone(&make);
        let what = what.to_owned();
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                make(i).await?;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(step) || n == count {
                    let elapsed = start.elapsed();
                    println!(
                        "  {what}: {n:>7} ({:>3}%) in {:>6.1} s, {:>7.0} /s, RSS {:>7.1} MiB",
                        n * 100 / count.max(1),
                        elapsed.as_secs_f64(),
                        per_second(n, elapsed),
                        mib(rss_bytes()),
                    );
                }
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    Ok(())
}

/// `hale bench idle`: RSS before and after creating `count` sessions (or
/// bare actors), per idle session and sessions per GiB.
///
/// # Errors
/// The runtime did not start, or a creation or message failed.
pub async fn idle(options: IdleOptions) -> anyhow::Result<()> {
    match options.kind {
        IdleKind::Sessions => idle_sessions(&options).await,
        IdleKind::Actors => idle_actors(&options).await,
    }
}

fn report(count: usize, before: u64, after: u64, what: &str) {
    let grown = after.saturating_sub(before);
    #[allow(clippy::cast_precision_loss)]
    let per = grown as f64 / count.max(1) as f64;
    println!(
        "{what}: RSS {:.1} MiB -> {:.1} MiB: +{:.1} MiB for {count}, {:.0} bytes ({:.1} KiB) \
         each, {:.0} per GiB",
        mib(before),
        mib(after),
        mib(grown),
        per,
        per / 1024.0,
        (1024.0 * 1024.0 * 1024.0) / per.max(1.0),
    );
}

async fn settle() -> u64 {
    // Let the audit trail drain and finished tasks go.
    tokio::time::sleep(Duration::from_secs(2)).await;
    rss_bytes()
}

async fn idle_sessions(options: &IdleOptions) -> anyhow::Result<()> {
    let data = TempData::new(options.dir.as_deref())?;
    let runtime = start(&data.path).await?;
    let result = run_idle_sessions(&runtime, options, &data.path).await;
    let stopped = runtime.shutdown().await;
    result?;
    stopped?;
    Ok(())
}

async fn run_idle_sessions(
    runtime: &Runtime,
    options: &IdleOptions,
    dir: &Path,
) -> anyhow::Result<()> {
    println!(
        "hale bench idle: {} sessions, {} creations in flight{}",
        options.count,
        options.concurrency,
        if options.message {
            ", then one plain message each"
        } else {
            ""
        }
    );
    // Warm-up: the first session and message touch everything lazy.
    let warm = runtime.create_session("default").await?;
    let (_, record) = runtime
        .send_and_wait(&warm, PLAIN_MESSAGE, MESSAGE_TIMEOUT)
        .await?;
    check(record, false)?;
    let before = settle().await;

    let ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(options.count)));
    let r = runtime.clone();
    let sink = Arc::clone(&ids);
    let start = Instant::now();
    fan_out(options.count, options.concurrency, "created", move |_| {
        let runtime = r.clone();
        let sink = Arc::clone(&sink);
        async move {
            let id = runtime.create_session("default").await?;
            sink.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(id);
            Ok(())
        }
    })
    .await?;
    let created_in = start.elapsed();
    let created = settle().await;
    println!(
        "created {} sessions in {:.1} s ({:.0} /s); {} session actors started",
        options.count,
        created_in.as_secs_f64(),
        per_second(options.count, created_in),
        runtime.sessions().started().len(),
    );
    report(options.count, before, created, "after creating");

    if options.message {
        let ids: Arc<Vec<String>> = Arc::new(std::mem::take(
            &mut *ids
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ));
        let r = runtime.clone();
        let start = Instant::now();
        fan_out(options.count, options.concurrency, "answered", move |i| {
            let runtime = r.clone();
            let ids = Arc::clone(&ids);
            async move {
                let (_, record) = runtime
                    .send_and_wait(&ids[i], PLAIN_MESSAGE, MESSAGE_TIMEOUT)
                    .await?;
                check(record, false)
            }
        })
        .await?;
        let sent_in = start.elapsed();
        let after = settle().await;
        println!(
            "one message to each in {:.1} s ({:.0} /s)",
            sent_in.as_secs_f64(),
            per_second(options.count, sent_in)
        );
        report(options.count, before, after, "after one message each");
    }
    let db: u64 = ["hale.db", "hale.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join("data").join(f)).ok())
        .map(|m| m.len())
        .sum();
    println!("store on disk: {:.1} MiB (hale.db + WAL)", mib(db));
    Ok(())
}

/// A bare actor that does nothing.
struct Bare;

impl ractor::Actor for Bare {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ractor::ActorRef<()>,
        (): (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }
}

async fn idle_actors(options: &IdleOptions) -> anyhow::Result<()> {
    println!(
        "hale bench idle --kind actors: {} bare ractor actors linked to one parent",
        options.count
    );
    let (parent, parent_task) = ractor::Actor::spawn(None, Bare, ()).await?;
    let before = settle().await;
    let refs = Arc::new(std::sync::Mutex::new(Vec::with_capacity(options.count)));
    let sink = Arc::clone(&refs);
    let cell = parent.get_cell();
    fan_out(options.count, options.concurrency, "spawned", move |_| {
        let sink = Arc::clone(&sink);
        let cell = cell.clone();
        async move {
            let (actor, _task) = ractor::Actor::spawn_linked(None, Bare, (), cell).await?;
            sink.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(actor);
            Ok(())
        }
    })
    .await?;
    let after = settle().await;
    report(options.count, before, after, "after spawning");
    parent.stop(None);
    let _ = parent_task.await;
    Ok(())
}

/// Options of `hale bench exec`.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Calls per variant.
    pub calls: usize,
    /// Parent of the temporary workspace (default: the temp dir).
    pub dir: Option<PathBuf>,
}

/// `hale bench exec`: p50/p90 of `exec` running `true`, sandbox off and
/// on (this binary as the wrapper), alternating call by call so both see
/// the same machine.
///
/// # Errors
/// The workspace cannot be made, the sandbox cannot be prepared, or a
/// call fails.
pub async fn exec(options: ExecOptions) -> anyhow::Result<()> {
    use hale_actors::builtin::{Exec, ExecConfig, SandboxConfig};
    let dir = match &options.dir {
        Some(parent) => tempfile::tempdir_in(parent),
        None => tempfile::tempdir(),
    }
    .context("creating the temporary workspace")?;
    let mut sandbox = SandboxConfig {
        helper: hale::sandbox::default_helper(),
        ..SandboxConfig::default()
    };
    hale::sandbox::prepare(&mut sandbox).context("preparing the sandbox")?;
    if let Some(why) = &sandbox.unavailable {
        bail!("the sandbox cannot run here: {why}");
    }
    if sandbox.helper.is_none() {
        bail!("run this as the hale binary (it is the sandbox's wrapper)");
    }
    if let Some(user) = &sandbox.user {
        std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid))
            .context("handing the workspace to the sandbox user")?;
    }
    println!("exec sandbox: {}", sandbox.describe());
    let tool = |sandbox: SandboxConfig| {
        let mut config = ExecConfig::new(dir.path());
        config.sandbox = sandbox;
        Exec::new(config)
    };
    let off = tool(SandboxConfig::off())?;
    let on = tool(sandbox)?;
    for _ in 0..20 {
        time_true(&off).await?;
        time_true(&on).await?;
    }
    let mut off_samples = Vec::with_capacity(options.calls);
    let mut on_samples = Vec::with_capacity(options.calls);
    for _ in 0..options.calls {
        off_samples.push(time_true(&off).await?);
        on_samples.push(time_true(&on).await?);
    }
    off_samples.sort();
    on_samples.sort();
    let (off50, on50) = (
        percentile(&off_samples, 50.0),
        percentile(&on_samples, 50.0),
    );
    println!(
        "exec `true`, {} calls each: off p50 {:.0} us p90 {:.0} us; landlock p50 {:.0} us p90 {:.0} us; added p50 {:.0} us",
        options.calls,
        us(off50),
        us(percentile(&off_samples, 90.0)),
        us(on50),
        us(percentile(&on_samples, 90.0)),
        us(on50.saturating_sub(off50)),
    );
    Ok(())
}

/// One `exec` call running `true`, timed.
async fn time_true(exec: &hale_actors::builtin::Exec) -> anyhow::Result<Duration> {
    use hale_actors::tool::Tool;
    let started = Instant::now();
    let outcome = exec
        .call(
            json!({ "command": "true" }),
            &hale_actors::ToolContext::default(),
        )
        .await;
    if outcome.status != Status::Success {
        bail!("`true` failed: {}", serde_json::to_string(&outcome)?);
    }
    Ok(started.elapsed())
}
