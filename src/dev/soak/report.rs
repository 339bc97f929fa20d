//! The figures of one soak, as `hale bench soak --json` prints them.
//!
//! A file of its own with no dependency beyond serde, so the suite's soak
//! test (tests/soak.rs) reads the report with the very types that wrote it,
//! by including this file, while the soak itself stays in the binary.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One sample of the server process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// Entries of `/proc/<pid>/fd`: the fewest counted (every 100 ms)
    /// since the sample before.
    pub fds: u64,
    /// Of those, sockets.
    #[serde(default)]
    pub sockets: u64,
    /// Of those, pipes.
    #[serde(default)]
    pub pipes: u64,
    /// Of those, files (a path).
    #[serde(default)]
    pub files: u64,
    /// The files' paths (kept in the checkpoint, end and drained samples
    /// only), to name what a changed count is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// Latency figures, milliseconds (nearest rank).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// What happened to the messages.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MessageFigures {
    /// Sends the pacer scheduled.
    pub scheduled: u64,
    /// Sends answered 202 (stored).
    pub accepted: u64,
    /// Sends refused, by HTTP status.
    pub refused: BTreeMap<u16, u64>,
    /// Sends that failed without an HTTP answer.
    pub send_errors: u64,
    /// Accepted messages seen finished (`done` or `failed`).
    pub answered: u64,
    /// Of those, `failed`.
    pub failed: u64,
    /// Accepted messages never seen finished.
    pub missing: u64,
    /// Answers whose reply is not their own message's.
    pub wrong_reply: u64,
    /// Answers whose tool step did not end `success`.
    pub tool_not_ok: u64,
    /// Messages with more than one `message.done` on the watching stream.
    pub duplicate_done_events: u64,
    /// Answers found by `GET /v1/messages/{id}` instead of the stream.
    pub answered_by_poll: u64,
    /// Answers never announced on the watching stream (found by lookup
    /// only): lost notifications, unless the stream lagged.
    pub unannounced: u64,
    /// Messages with more than one `message_done` in the audit trail.
    pub audit_duplicates: u64,
    /// Messages with no `message_done` in the audit trail.
    pub audit_missing: u64,
    /// Sessions whose message count differs from the sends it accepted.
    pub session_count_mismatches: u64,
    /// Every scheduled message accepted, answered with its own reply,
    /// announced once and recorded once.
    pub exactly_once: bool,
    /// Accepted sends per second of load.
    pub sent_per_s: f64,
    /// Answers per second, from the first send to the last answer.
    pub answered_per_s: f64,
    /// From the send to the answer seen on the watching stream (answers
    /// found by lookup are not timed).
    pub latency: Latency,
    /// A few ids of each kind of problem, to look up.
    pub examples: BTreeMap<String, Vec<String>>,
}

/// The chaos client's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChaosFigures {
    /// Kills answered 200.
    pub kills: u64,
    /// Kills answered otherwise (no running actor of the kind drawn...).
    pub refused: u64,
    /// Kills with no HTTP answer.
    pub errors: u64,
}

/// The `/metrics` scraper's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScrapeFigures {
    /// Scrapes answered 200.
    pub ok: u64,
    /// Scrapes answered otherwise or not at all.
    pub failed: u64,
    /// One scrape's time.
    pub latency: Latency,
}

/// The event streams' figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamFigures {
    /// Streams opened (200).
    pub opened: u64,
    /// Streams refused, by HTTP status.
    pub refused: BTreeMap<u16, u64>,
    /// Streams that failed to open or ended before the soak did.
    pub broken: u64,
    /// Events read, all streams.
    pub events: u64,
    /// `lagged` events read, all streams.
    pub lagged: u64,
    /// Bytes read, all streams.
    pub bytes: u64,
    /// Streams opened and never read (their request written, nothing read).
    pub idle_held: u64,
}

/// The server's counters read from `/metrics` after the drain.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerCounters {
    /// `hale_messages_received_total`.
    pub received: f64,
    /// `hale_messages_finished_total`.
    pub finished: f64,
    /// `hale_restarts_total`.
    pub restarts: f64,
}

/// The figures of one soak.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SoakReport {
    /// The load's length, seconds.
    pub duration_s: f64,
    /// Messages per second asked for.
    pub rate: f64,
    /// Kills per second asked for.
    pub chaos_rate: f64,
    /// Sessions.
    pub sessions: usize,
    /// Message-sending connections.
    pub senders: usize,
    /// The messages.
    pub messages: MessageFigures,
    /// The chaos kills.
    pub chaos: ChaosFigures,
    /// The scrapes.
    pub scrapes: ScrapeFigures,
    /// The event streams.
    pub streams: StreamFigures,
    /// The server's counters after the drain.
    pub server: ServerCounters,
    /// The server's RSS and descriptors over time (during the load).
    pub samples: Vec<Sample>,
    /// The sample nearest the checkpoint (10 s), its descriptors the
    /// fewest within a second of it.
    pub at_checkpoint: Option<Sample>,
    /// The last sample under load, every client still connected, its
    /// descriptors the fewest within a second of it.
    pub at_end: Option<Sample>,
    /// After the drain, every client still connected, nothing in flight.
    pub drained: Option<Sample>,
    /// The server's peak `VmHWM`, KiB, at the end.
    pub peak_rss_kib: u64,
    /// Whether the server died during the soak, and how.
    pub server_died: Option<String>,
    /// Bursts of concurrent reads made before the clock started, until the
    /// server's open files were steady.
    pub warm_up_bursts: u32,
}

/// The report as text: the figures BENCHMARKS.md records.
pub fn render(report: &SoakReport) -> String {
    use std::fmt::Write as _;
    let m = &report.messages;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "soak: {:.0} s at {} messages/s to {} sessions, {} kills/s",
        report.duration_s, report.rate, report.sessions, report.chaos_rate
    );
    let _ = writeln!(
        out,
        "messages: {} scheduled, {} accepted, refused {:?}, {} send errors; {} answered \
         ({} failed, {} by lookup, {} never announced), {} missing, {} wrong reply, {} announced twice, \
         audit: {} missing / {} twice; exactly once: {}",
        m.scheduled,
        m.accepted,
        m.refused,
        m.send_errors,
        m.answered,
        m.failed,
        m.answered_by_poll,
        m.unannounced,
        m.missing,
        m.wrong_reply,
        m.duplicate_done_events,
        m.audit_missing,
        m.audit_duplicates,
        m.exactly_once
    );
    let _ = writeln!(
        out,
        "throughput: {:.1} sent/s, {:.1} answered/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        m.sent_per_s, m.answered_per_s, m.latency.p50_ms, m.latency.p99_ms, m.latency.max_ms
    );
    let _ = writeln!(
        out,
        "chaos: {} kills, {} refused, {} errors; server restarts {}",
        report.chaos.kills, report.chaos.refused, report.chaos.errors, report.server.restarts
    );
    let _ = writeln!(
        out,
        "/metrics: {} scrapes ({} failed), p50 {:.1} ms, p99 {:.1} ms",
        report.scrapes.ok,
        report.scrapes.failed,
        report.scrapes.latency.p50_ms,
        report.scrapes.latency.p99_ms
    );
    let s = &report.streams;
    let _ = writeln!(
        out,
        "streams: {} open, refused {:?}, {} broken, {} events ({} lagged), {} MiB; {} never read",
        s.opened,
        s.refused,
        s.broken,
        s.events,
        s.lagged,
        s.bytes / (1 << 20),
        s.idle_held
    );
    let show = |name: &str, sample: Option<&Sample>| match sample {
        Some(s) => format!(
            "{name} ({:.0} s): RSS {:.1} MiB, {} fds",
            s.t_s,
            s.rss_kib as f64 / 1024.0,
            s.fds
        ),
        None => format!("{name}: no sample"),
    };
    let _ = writeln!(
        out,
        "{}; {}; {}; peak RSS {:.1} MiB",
        show("checkpoint", report.at_checkpoint.as_ref()),
        show("end", report.at_end.as_ref()),
        show("drained", report.drained.as_ref()),
        report.peak_rss_kib as f64 / 1024.0
    );
    let _ = writeln!(out, "RSS and fds over time:");
    let step = (report.samples.len() / 12).max(1);
    for s in report.samples.iter().step_by(step) {
        let _ = writeln!(
            out,
            "  {:>6.1} s  {:>8.1} MiB  {:>5} fds ({} sockets, {} pipes, {} files)",
            s.t_s,
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.sockets,
            s.pipes,
            s.files
        );
    }
    if let Some(died) = &report.server_died {
        let _ = writeln!(out, "the server died: {died}");
    }
    out
}
