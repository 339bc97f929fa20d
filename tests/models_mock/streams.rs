//! Streamed replies against aimock (issue 13, acceptance 1, items 2-4),
//! each over the OpenAI-compatible and the Anthropic wire format: a
//! truncated stream, a stalled stream, a malformed answer, and a
//! connection dropped before or during the answer. The first attempt of
//! each is broken (aimock's `sequenceIndex` 0), the retry gets the whole
//! fixture (index 1), so the test sees that the broken attempt failed
//! with a typed outcome and never became the reply.
//!
//! Every case collects what went wrong and the test reports all of it at
//! once, so one run shows each case's state.

use serde_json::{Value, json};

use crate::harness::{Aimock, Hale, MockModel};
use crate::vocabulary;

/// The reply every case must end with.
const FULL: &str = "The quick brown fox jumps over the lazy dog, and back again.";

/// The models every test here asks, one at a time (agents `only-oa`,
/// `only-an`): `extra` lines added to each.
fn models(extra: &[String]) -> Vec<MockModel> {
    let mut oa = MockModel::openai("oa", "oa-model");
    let mut an = MockModel::anthropic("an", "an-model");
    for line in extra {
        oa = oa.with(line.clone());
        an = an.with(line.clone());
    }
    vec![oa, an]
}

/// Two fixtures for `user`: the first request gets `broken` (fixture
/// options merged in), the second the whole reply.
fn broken_then_whole(user: &str, broken: Value) -> [Value; 2] {
    let mut first = json!({
        "match": { "userMessage": user, "sequenceIndex": 0 },
        "response": { "content": FULL },
        "chunkSize": 6,
    });
    for (k, v) in broken.as_object().unwrap() {
        first[k] = v.clone();
    }
    [
        first,
        json!({
            "match": { "userMessage": user, "sequenceIndex": 1 },
            "response": { "content": FULL },
            "chunkSize": 6,
        }),
    ]
}

/// Whether a broken first attempt must be retried (a transport failure
/// must; a malformed answer may instead fail the message, typed).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Retry {
    Must,
    May,
}

/// Asks model `name` (agent `only-<name>`) `user` and checks the case:
/// aimock saw streamed requests; hale's events show the broken first
/// attempt failing with a typed code (`want_code` when given); the reply
/// is [`FULL`] after a second request, or (with [`Retry::May`]) the
/// message failed, but no other reply. Problems are pushed onto
/// `problems`.
async fn check_case(
    hale: &Hale,
    mock: &Aimock,
    name: &str,
    user: &str,
    (want_code, retry): (Option<&str>, Retry),
    problems: &mut Vec<String>,
) {
    let session = hale.session_of(&format!("only-{name}")).await;
    let asked_at = crate::harness::now_us();
    let done = hale.ask(&session, user).await;
    let case = format!("[{name} / {user}]");
    let failed_typed = retry == Retry::May && done["status"] == "failed";
    if done["reply"] != FULL && !failed_typed {
        problems.push(format!(
            "{case} the reply is not the whole fixture: status {} reply {} error {}",
            done["status"], done["reply"], done["error"]
        ));
    }
    let journal: Vec<_> = mock
        .journal()
        .await
        .into_iter()
        .filter(|e| e.user == user)
        .collect();
    let seen: Vec<String> = journal
        .iter()
        .map(|e| {
            format!(
                "{}{} status {} interrupted {} chaos {:?}",
                e.path,
                if e.stream { " stream" } else { " plain" },
                e.status,
                e.interrupted,
                e.chaos
            )
        })
        .collect();
    if journal.len() != 2 && !(failed_typed && journal.len() == 1) {
        problems.push(format!(
            "{case} aimock saw {} requests, not 2 (broken, then retried): {seen:?}",
            journal.len()
        ));
    }
    if !journal.iter().all(|e| e.stream) {
        problems.push(format!("{case} hale did not ask for a stream: {seen:?}"));
    }
    if name == "oa" && !journal.iter().all(|e| e.include_usage) {
        problems.push(format!(
            "{case} the OpenAI request lacks stream_options.include_usage: {seen:?}"
        ));
    }
    let failed: Vec<(Option<String>, Value)> = hale
        .events(vocabulary::OUTCOME)
        .await
        .into_iter()
        .filter(|e| e.source == format!("model/{name}"))
        .filter(|e| e.at_us >= asked_at)
        .filter(|e| e.session.as_deref().is_none_or(|s| s == session))
        .filter(|e| e.data["status"] != "success")
        .map(|e| (e.code, e.data))
        .collect();
    match failed.as_slice() {
        [] => problems.push(format!(
            "{case} hale recorded no failed attempt for the broken answer"
        )),
        [(code, outcome), ..] => {
            let code = code.clone().unwrap_or_default();
            let message = &outcome["message"];
            if !vocabulary::is_typed(&code, outcome) {
                problems.push(format!(
                    "{case} the broken answer's outcome is not typed: code {code:?} ({message})"
                ));
            }
            if let Some(want) = want_code
                && code != want
            {
                problems.push(format!(
                    "{case} the broken answer's code is {code:?} ({message}), not {want}"
                ));
            }
        }
    }
}

fn report(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Fixtures for `kind` (one pair per wire format, `<kind>-oa`/`<kind>-an`).
fn fixtures(kind: &str, broken: &Value) -> Vec<Value> {
    ["oa", "an"]
        .iter()
        .flat_map(|m| broken_then_whole(&format!("{kind}-{m}"), broken.clone()))
        .collect()
}

/// A stream cut off after a few chunks (no `[DONE]`/`message_stop`) is
/// a retryable transport failure, never an accepted (short) reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_stream_is_retried_and_never_becomes_the_reply() {
    let Some(mock) = Aimock::start(
        json!(fixtures(
            "truncated",
            &json!({ "truncateAfterChunks": 4, "latency": 10 })
        )),
        &[],
    ) else {
        return;
    };
    let hale = Hale::start(&mock, &models(&[]), "").await;
    let mut problems = Vec::new();
    for name in ["oa", "an"] {
        let user = format!("truncated-{name}");
        check_case(
            &hale,
            &mock,
            name,
            &user,
            (None, Retry::Must),
            &mut problems,
        )
        .await;
        if let Some(first) = mock.journal().await.into_iter().find(|e| e.user == user)
            && !first.interrupted
        {
            problems.push(format!(
                "[{name}] aimock did not cut the first answer off (a plain request is not truncated): {first:?}"
            ));
        }
    }
    report(&problems);
}

/// A gap between chunks longer than the model's `stream_idle_timeout` is
/// a timeout (`ETIMEDOUT`), and the turn is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_times_out_and_is_retried() {
    let Some(mock) = Aimock::start(
        // The headers and first chunk at once (`ttft` 0: a flat `latency`
        // would hold the headers back too), then 800 ms between chunks
        // (1.25 chunks a second), against a 500 ms idle timeout.
        json!(fixtures(
            "stalled",
            &json!({ "streamingProfile": { "ttft": 0, "tps": 1.25 } })
        )),
        &[],
    ) else {
        return;
    };
    let hale = Hale::start(
        &mock,
        &models(&[vocabulary::stream_idle_timeout("500ms")]),
        "",
    )
    .await;
    let mut problems = Vec::new();
    for name in ["oa", "an"] {
        check_case(
            &hale,
            &mock,
            name,
            &format!("stalled-{name}"),
            (Some("ETIMEDOUT"), Retry::Must),
            &mut problems,
        )
        .await;
    }
    report(&problems);
}

/// A malformed answer (a 200 whose body is not the stream: aimock's
/// chaos `malformed`) and a connection dropped before the answer (chaos
/// `disconnect`) or during it (`disconnectAfterMs`) end as typed
/// outcomes; a dropped connection is retried, a malformed answer may be
/// (or fail the message, typed), and neither ever becomes a reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_and_dropped_connections_are_typed_and_retried() {
    let mut all = Vec::new();
    all.extend(fixtures(
        "malformed",
        &json!({ "chaos": { "malformedRate": 1 } }),
    ));
    all.extend(fixtures(
        "dropped",
        &json!({ "chaos": { "disconnectRate": 1 } }),
    ));
    all.extend(fixtures(
        "cut",
        &json!({ "latency": 40, "disconnectAfterMs": 150 }),
    ));
    let Some(mock) = Aimock::start(json!(all), &[]) else {
        return;
    };
    let hale = Hale::start(&mock, &models(&[]), "").await;
    let mut problems = Vec::new();
    for (kind, retry) in [
        ("malformed", Retry::May),
        ("dropped", Retry::Must),
        ("cut", Retry::Must),
    ] {
        for name in ["oa", "an"] {
            check_case(
                &hale,
                &mock,
                name,
                &format!("{kind}-{name}"),
                (None, retry),
                &mut problems,
            )
            .await;
        }
    }
    let codes: Vec<(String, Option<String>)> = hale
        .events(vocabulary::OUTCOME)
        .await
        .into_iter()
        .filter(|e| e.code.is_some())
        .map(|e| (e.source, e.code))
        .collect();
    eprintln!("failed model outcomes (source, code): {codes:?}");
    report(&problems);
}
