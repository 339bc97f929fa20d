//! `Retry-After` is endpoint state (issue 13, acceptance 1, first item):
//! 100 sessions against an endpoint that answers 429 with `Retry-After:
//! 2` (every fourth request it gets, so its breaker stays closed, as
//! with a real rate limit), with a fallback model that works. After a 429
//! sets the endpoint's not-before instant, no request to that endpoint
//! starts until the instant has passed, except those already in flight;
//! the fallback serves meanwhile; aimock's journal agrees with hale's
//! events.

use std::time::Duration;

use serde_json::json;

use crate::aimock::{rate_limited, text};
use crate::harness::{Aimock, AuditEvent, Hale, JournalEntry, MockModel, micros};
use crate::vocabulary;

const SESSIONS: usize = 100;
/// Messages start in bursts of this many at once (so some requests are
/// in flight together when a 429 comes back)...
const BURST: usize = 5;
/// ...this far apart, so the run (~4 s) spans several `Retry-After`
/// windows and the endpoint is asked again after each.
const STAGGER: Duration = Duration::from_millis(200);
const RETRY_AFTER_SECS: u64 = 2;
const FALLBACK_TEXT: &str = "Served by the fallback model.";
const PRIMARY_TEXT: &str = "Served by the rate-limited model.";
/// The limited endpoint answers 429 to every this-many-th request.
const LIMIT_EVERY: usize = 4;
/// More than the requests the run can make to the limited endpoint.
const SCRIPTED_REQUESTS: usize = 600;
const PRIMARY: &str = "model/primary";
const BACKUP: &str = "model/backup";
/// A request aimock logged this long after a 429 cannot have been in
/// flight when hale read that 429 (loopback; aimock logs a request when
/// it handles it): the journal-side check ignores requests closer than
/// this to the 429, which hale's own events account for exactly.
const IN_FLIGHT_SLACK_MS: i64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_starts_inside_a_retry_after_window_and_the_fallback_serves() {
    // aimock counts matches per fixture group: request k to the limited
    // model gets fixture k.
    let mut fixtures: Vec<serde_json::Value> = (0..SCRIPTED_REQUESTS)
        .map(|k| {
            let mut f = if k % LIMIT_EVERY == 0 {
                rate_limited("ratelimited", RETRY_AFTER_SECS)
            } else {
                text(json!({ "model": "ratelimited" }), PRIMARY_TEXT)
            };
            f["match"]["sequenceIndex"] = json!(k);
            f
        })
        .collect();
    fixtures.push(rate_limited("ratelimited", RETRY_AFTER_SECS));
    fixtures.push(text(json!({ "model": "fallback" }), FALLBACK_TEXT));
    let Some(mock) = Aimock::start(json!(fixtures), &[]) else {
        return;
    };
    let hale = std::sync::Arc::new(
        Hale::start(
            &mock,
            &[
                MockModel::openai("primary", "ratelimited"),
                MockModel::anthropic("backup", "fallback"),
            ],
            "",
        )
        .await,
    );
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(hale.session().await);
    }
    let mut tasks = Vec::new();
    for (i, session) in sessions.into_iter().enumerate() {
        let hale = std::sync::Arc::clone(&hale);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(STAGGER * u32::try_from(i / BURST).unwrap()).await;
            hale.ask(&session, &format!("question {i}")).await
        }));
    }
    let mut unanswered = Vec::new();
    let mut by_fallback = 0;
    for task in tasks {
        let done = task.await.unwrap();
        if done["status"] != "done"
            || (done["reply"] != FALLBACK_TEXT && done["reply"] != PRIMARY_TEXT)
        {
            unanswered.push(done);
        } else if done["reply"] == FALLBACK_TEXT {
            by_fallback += 1;
        }
    }

    let journal = mock.journal().await;
    let to_primary: Vec<&JournalEntry> = journal
        .iter()
        .filter(|e| e.model == "ratelimited")
        .collect();
    let to_backup: Vec<&JournalEntry> = journal.iter().filter(|e| e.model == "fallback").collect();
    let journal_429s: Vec<i64> = to_primary
        .iter()
        .filter(|e| e.status == 429)
        .map(|e| e.at_ms)
        .collect();
    // Journal side: requests to the limited endpoint that arrived inside a
    // window a 429 opened, past the in-flight slack.
    let journal_inside: Vec<(i64, i64)> = to_primary
        .iter()
        .filter_map(|e| {
            journal_429s
                .iter()
                .find(|&&t| {
                    e.at_ms >= t + IN_FLIGHT_SLACK_MS
                        && e.at_ms < t + i64::try_from(RETRY_AFTER_SECS).unwrap() * 1000
                })
                .map(|&t| (t, e.at_ms - t))
        })
        .collect();
    // The same message asked again of the limited endpoint after its 429:
    // how long after (the "0.79-0.89 s after it asked for 1 s").
    let resent_after: Vec<i64> = to_primary
        .iter()
        .enumerate()
        .filter(|(_, e)| e.status == 429)
        .filter_map(|(i, e)| {
            to_primary[i + 1..]
                .iter()
                .find(|later| later.user == e.user)
                .map(|later| later.at_ms - e.at_ms)
        })
        .collect();
    eprintln!(
        "journal: the same message re-sent to the limited endpoint {} times after its 429, after (ms): min {:?} max {:?}",
        resent_after.len(),
        resent_after.iter().min(),
        resent_after.iter().max()
    );
    // The fallback served while the endpoint was paused.
    let backup_inside = to_backup
        .iter()
        .filter(|e| {
            journal_429s.iter().any(|&t| {
                e.at_ms > t && e.at_ms < t + i64::try_from(RETRY_AFTER_SECS).unwrap() * 1000
            })
        })
        .count();
    eprintln!(
        "journal: {} requests to the limited endpoint ({} answered 429), {} to the fallback ({} inside a window); \
         {} requests to the limited endpoint inside a window (429 at, ms after it): {:?}",
        to_primary.len(),
        journal_429s.len(),
        to_backup.len(),
        backup_inside,
        journal_inside.len(),
        journal_inside.iter().take(20).collect::<Vec<_>>()
    );

    // hale side: its own events.
    let not_before: Vec<AuditEvent> = hale.events(vocabulary::NOT_BEFORE).await;
    let attempts: Vec<AuditEvent> = hale.events(vocabulary::ATTEMPT).await;
    let primary_attempts: Vec<&AuditEvent> =
        attempts.iter().filter(|a| a.source == PRIMARY).collect();
    let backup_attempts = attempts.iter().filter(|a| a.source == BACKUP).count();
    let primary_not_before: Vec<&AuditEvent> =
        not_before.iter().filter(|e| e.source == PRIMARY).collect();
    for nb in &primary_not_before {
        assert_eq!(
            nb.data["retry_after_ms"],
            RETRY_AFTER_SECS * 1000,
            "{:?}",
            nb.data
        );
    }
    let inside = attempts_inside_windows(&primary_not_before, &primary_attempts);
    let in_flight = primary_attempts
        .iter()
        .filter(|a| {
            primary_not_before
                .iter()
                .any(|nb| a.id < nb.id && nb.at_us - a.at_us < 100_000)
        })
        .count();
    eprintln!(
        "hale events: {in_flight} attempts to {PRIMARY} started less than 100 ms before a not_before \
         was set (in flight with the 429: exempt)"
    );
    eprintln!(
        "hale events: {} not_before on {PRIMARY}, {} attempts to it, {} to {BACKUP}; \
         {} attempts inside a window (not_before id, attempt id, ms before until): {:?}",
        not_before.iter().filter(|e| e.source == PRIMARY).count(),
        primary_attempts.len(),
        backup_attempts,
        inside.len(),
        inside.iter().take(20).collect::<Vec<_>>()
    );

    eprintln!("{by_fallback} of {SESSIONS} messages answered by the fallback");
    assert!(
        unanswered.is_empty(),
        "{} of {SESSIONS} messages were not answered: {:?}",
        unanswered.len(),
        unanswered.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        journal_inside.is_empty(),
        "aimock's journal: {} requests to the limited endpoint arrived inside a Retry-After window \
         (more than {IN_FLIGHT_SLACK_MS} ms after a 429, less than {RETRY_AFTER_SECS} s)",
        journal_inside.len()
    );
    assert!(
        backup_inside > 0,
        "the fallback never served while the endpoint was paused"
    );
    assert!(
        !not_before.is_empty() && !primary_attempts.is_empty(),
        "hale emitted {} `{}` and {} `{}` events for {PRIMARY}: the engine does not record them",
        not_before.len(),
        vocabulary::NOT_BEFORE,
        primary_attempts.len(),
        vocabulary::ATTEMPT
    );
    assert!(inside.is_empty(), "attempts inside a window: {inside:?}");
    // hale and aimock agree on how often each endpoint was asked.
    assert_eq!(
        primary_attempts.len(),
        to_primary.len(),
        "attempts to {PRIMARY} vs aimock's journal"
    );
    assert_eq!(
        backup_attempts,
        to_backup.len(),
        "attempts to {BACKUP} vs aimock's journal"
    );
}

/// The attempts that started inside a not-before window: for each
/// not-before event, the attempts emitted after it (a larger event id:
/// those emitted before it were in flight when the 429 arrived) that
/// started before its `until`. Each as (not_before id, attempt id, ms
/// before `until`).
fn attempts_inside_windows(
    not_before: &[&AuditEvent],
    attempts: &[&AuditEvent],
) -> Vec<(u64, u64, i64)> {
    let mut inside = Vec::new();
    for nb in not_before {
        let until = micros(
            vocabulary::not_before_until(&nb.data)
                .unwrap_or_else(|| panic!("not_before without data.until: {:?}", nb.data)),
        );
        for a in attempts.iter().filter(|a| a.id > nb.id) {
            if a.at_us < until {
                inside.push((nb.id, a.id, (until - a.at_us) / 1000));
            }
        }
    }
    inside
}

/// The window check itself, on made-up events: an attempt in flight when
/// the 429 came is allowed, one started after the instant was set but
/// before `until` is not, one at `until` is.
#[test]
fn the_window_check_exempts_requests_in_flight_and_flags_early_ones() {
    let event = |id: u64, at: &str, data: serde_json::Value| AuditEvent {
        id,
        at_ms: micros(at) / 1000,
        at_us: micros(at),
        source: PRIMARY.to_owned(),
        session: None,
        code: None,
        data,
    };
    let nb = event(
        10,
        "2026-12-03T10:00:00.100Z",
        json!({ "endpoint": PRIMARY, "until": "2026-12-03T10:00:02.100Z", "retry_after_ms": 2000 }),
    );
    let in_flight = event(9, "2026-12-03T10:00:00.050Z", json!({ "attempt": 1 }));
    let early = event(11, "2026-12-03T10:00:01.900Z", json!({ "attempt": 1 }));
    let on_time = event(12, "2026-12-03T10:00:02.100Z", json!({ "attempt": 1 }));
    assert_eq!(
        attempts_inside_windows(&[&nb], &[&in_flight, &early, &on_time]),
        vec![(10, 11, 200)]
    );
    assert!(attempts_inside_windows(&[&nb], &[&in_flight, &on_time]).is_empty());
}
