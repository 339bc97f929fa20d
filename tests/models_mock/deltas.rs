//! `message.delta` events (issue 13, acceptance 3): for a streamed reply
//! they arrive on `/v1/events` in order and concatenate to the final
//! reply; a retried attempt (the first stream is cut off) is preceded by
//! `message.delta.reset`. Over both wire formats.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Aimock, Hale, MockModel};
use crate::vocabulary;

const FULL: &str = "Streaming a reply in many small pieces, so that deltas show.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_arrive_in_order_concatenate_to_the_reply_and_a_retry_resets() {
    let mut fixtures = Vec::new();
    for m in ["oa", "an"] {
        let user = format!("deltas-{m}");
        fixtures.push(json!({
            "match": { "userMessage": user, "sequenceIndex": 0 },
            "response": { "content": FULL },
            "chunkSize": 4, "latency": 15, "truncateAfterChunks": 6,
        }));
        fixtures.push(json!({
            "match": { "userMessage": user, "sequenceIndex": 1 },
            "response": { "content": FULL },
            "chunkSize": 4, "latency": 15,
        }));
    }
    let Some(mock) = Aimock::start(json!(fixtures), &[]) else {
        return;
    };
    let hale = Hale::start(
        &mock,
        &[
            MockModel::openai("oa", "oa-model"),
            MockModel::anthropic("an", "an-model"),
        ],
        "",
    )
    .await;
    let mut problems = Vec::new();
    for name in ["oa", "an"] {
        let session = hale.session_of(&format!("only-{name}")).await;
        let mut live = hale.live(Some(&session)).await;
        let message = hale.send(&session, &format!("deltas-{name}")).await;
        // Everything for this message until it is done.
        let mut seen: Vec<(String, Value)> = Vec::new();
        let mut reply = None;
        while let Some(event) = live.next(Duration::from_secs(30)).await {
            match event.name.as_str() {
                "message.done" if event.data["id"] == message.as_str() => {
                    reply = event.data["reply"].as_str().map(str::to_owned);
                    break;
                }
                n if n == vocabulary::DELTA || n == vocabulary::DELTA_RESET => {
                    seen.push((event.name, event.data));
                }
                _ => {}
            }
        }
        let case = format!("[{name}]");
        let Some(reply) = reply else {
            problems.push(format!("{case} no message.done within 30 s"));
            continue;
        };
        if reply != FULL {
            problems.push(format!("{case} reply {reply:?} is not the whole fixture"));
        }
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        let resets = names
            .iter()
            .filter(|n| **n == vocabulary::DELTA_RESET)
            .count();
        if seen.is_empty() {
            problems.push(format!("{case} no {} events at all", vocabulary::DELTA));
            continue;
        }
        if resets == 0 {
            problems.push(format!(
                "{case} the first attempt was cut off and retried, but no {} came: {names:?}",
                vocabulary::DELTA_RESET
            ));
        }
        // The deltas after the last reset are the final attempt's.
        let last_reset = names.iter().rposition(|n| *n == vocabulary::DELTA_RESET);
        let after = last_reset.map_or(0, |i| i + 1);
        let joined: String = seen[after..]
            .iter()
            .filter_map(|(_, d)| d["text"].as_str())
            .collect();
        if joined != reply {
            problems.push(format!(
                "{case} the final attempt's deltas give {joined:?}, the reply is {reply:?}"
            ));
        }
        // Tags: this message, and attempts never going back.
        let mut last_attempt = 0;
        for (n, d) in &seen {
            if n != vocabulary::DELTA {
                continue;
            }
            if !vocabulary::delta_is_of(d, &session, &message) {
                problems.push(format!("{case} a delta of another message: {d}"));
                break;
            }
            let attempt = d["attempt"].as_u64().unwrap_or(0);
            if attempt < last_attempt || d["turn"].as_u64().is_none() {
                problems.push(format!("{case} a delta out of order or untagged: {d}"));
                break;
            }
            last_attempt = attempt;
        }
        // What the cut-off attempt streamed was a prefix of the reply.
        let before: String = seen[..last_reset.unwrap_or(0)]
            .iter()
            .filter_map(|(_, d)| d["text"].as_str())
            .collect();
        if !FULL.starts_with(&before) {
            problems.push(format!(
                "{case} the first attempt's deltas {before:?} are not a prefix"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
