//! The soak in the suite: `hale bench soak` for 30 s at 50 messages/s (20
//! chaos kills/s, `/metrics` every 100 ms, 50 event streams and one that
//! is never read) against the built binary's `hale serve`. Every message
//! must be answered exactly once, and the server must hold its descriptors
//! and memory: the count at the end equals the count at 10 s, and RSS at
//! the end is at most RSS at 10 s plus 64 MiB.
//!
//! The test runs the bench command itself rather than the library
//! function, so the figures it checks and the ones in BENCHMARKS.md come
//! from the same code path, and the load generator does not share a
//! process (or its scheduler) with the test harness.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// The report's types, from the file that defines them: the soak itself is
// part of the binary (a dev command), not of the library.
#[path = "../src/dev/soak/report.rs"]
#[allow(dead_code)]
mod report;

use report::SoakReport;

/// The whole run's bound: 30 s of load, a server start in a debug build,
/// the drain and the audit reads, with room for a busy machine.
const BOUND: Duration = Duration::from_secs(600);

#[test]
fn thirty_seconds_at_50_messages_per_second_answer_each_once_and_hold_fds_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hale"))
        .args([
            "bench",
            "soak",
            "--duration",
            "30s",
            "--rate",
            "50",
            "--json",
            "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hale bench soak did not finish in {BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = reader.join().unwrap();
    assert!(status.success(), "hale bench soak failed: {status}\n{text}");
    let report: SoakReport = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("hale bench soak printed no report ({e}): {text}"));
    eprintln!("{}", report::render(&report));

    assert_eq!(report.server_died, None);
    let m = &report.messages;
    // The rate reached depends on the machine (a debug build on two shared
    // cores reaches about 15 of the 50 messages/s offered, with 50 streams
    // open): the run is judged on what happened to what was sent.
    assert!(m.scheduled > 0, "the load ran: {m:?}");
    assert!(
        m.exactly_once,
        "every message answered exactly once: {}",
        serde_json::to_string_pretty(m).unwrap()
    );
    assert!(report.chaos.kills > 0, "chaos ran: {:?}", report.chaos);
    assert!(
        report.scrapes.ok > 0,
        "/metrics was scraped: {:?}",
        report.scrapes
    );
    assert_eq!(report.streams.opened, 50, "{:?}", report.streams);
    assert_eq!(report.streams.broken, 0, "{:?}", report.streams);

    let checkpoint = report.at_checkpoint.clone().expect("a sample at 10 s");
    let end = report.at_end.clone().expect("a sample at the end");
    assert!(
        (checkpoint.t_s - 10.0).abs() < 2.0 && end.t_s > 25.0,
        "{checkpoint:?} {end:?}"
    );
    assert_eq!(
        end.fds, checkpoint.fds,
        "open descriptors at the end and at 10 s (files then: {:?}, at the end: {:?}): {:?}",
        checkpoint.paths, end.paths, report.samples
    );
    assert!(
        end.rss_kib <= checkpoint.rss_kib + 64 * 1024,
        "RSS at the end ({} KiB) within 64 MiB of RSS at 10 s ({} KiB): {:?}",
        end.rss_kib,
        checkpoint.rss_kib,
        report.samples
    );
}
