//! Token totals (issue 13, acceptance 4): the session resource and
//! `/metrics` equal the sum of the usage aimock reported, over both wire
//! formats, with a truncated attempt (which reported nothing) retried.

use std::collections::BTreeMap;

use serde_json::json;

use crate::aimock::text_with_usage;
use crate::harness::{Aimock, Hale, MockModel, token_samples};
use crate::vocabulary;

const OA_USAGE: (u64, u64) = (11, 7);
const AN_USAGE: (u64, u64) = (13, 5);
const SESSIONS_PER_MODEL: usize = 3;
const MESSAGES_PER_SESSION: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_totals_equal_the_usage_aimock_reported() {
    let Some(mock) = Aimock::start(
        json!([
            {
                "match": { "userMessage": "tokens-oa-0-0", "sequenceIndex": 0 },
                "response": { "content": "Counted.", "usage": { "prompt_tokens": OA_USAGE.0, "completion_tokens": OA_USAGE.1 } },
                "truncateAfterChunks": 2, "latency": 10,
            },
            text_with_usage(json!({ "model": "oa-model" }), "Counted.", OA_USAGE),
            text_with_usage(json!({ "model": "an-model" }), "Counted.", AN_USAGE),
        ]),
        &[],
    ) else {
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
    let mut sessions = Vec::new();
    for name in ["oa", "an"] {
        for i in 0..SESSIONS_PER_MODEL {
            let session = hale.session_of(&format!("only-{name}")).await;
            for j in 0..MESSAGES_PER_SESSION {
                let done = hale.ask(&session, &format!("tokens-{name}-{i}-{j}")).await;
                assert_eq!(done["status"], "done", "{done}");
            }
            sessions.push((name, i, session));
        }
    }

    // What aimock reported: the fixture's usage on every answer it
    // finished (a cut-off stream never sent its usage).
    let journal = mock.journal().await;
    let mut problems = Vec::new();
    if !journal.iter().any(|e| e.interrupted) {
        problems.push(format!(
            "no attempt was cut off: hale did not stream ({} requests, {} streamed)",
            journal.len(),
            journal.iter().filter(|e| e.stream).count()
        ));
    }
    let reported = |prefix: &str| -> (u64, u64) {
        journal
            .iter()
            .filter(|e| e.user.starts_with(prefix) && e.status == 200 && !e.interrupted)
            .filter_map(|e| e.fixture_usage)
            .fold((0, 0), |a, u| (a.0 + u.0, a.1 + u.1))
    };
    for (name, i, session) in &sessions {
        let want = reported(&format!("tokens-{name}-{i}-"));
        let resource = hale.get(&format!("/v1/sessions/{session}")).await;
        let got = vocabulary::session_usage(&resource);
        if got != Some(want) {
            problems.push(format!(
                "session {session} ({name}): usage {got:?}, aimock reported {want:?}: {resource}"
            ));
        }
    }
    let samples: BTreeMap<(String, String), u64> = token_samples(&hale.metrics().await)
        .into_iter()
        .map(|(model, kind, value)| ((model, kind), value))
        .collect();
    for name in ["oa", "an"] {
        let want = reported(&format!("tokens-{name}-"));
        let got = (
            samples.get(&(name.to_owned(), vocabulary::PROMPT_KIND.to_owned())),
            samples.get(&(name.to_owned(), vocabulary::COMPLETION_KIND.to_owned())),
        );
        if got != (Some(&want.0), Some(&want.1)) {
            problems.push(format!(
                "/metrics hale_model_tokens_total for {name}: {got:?}, aimock reported {want:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}\nall token samples: {samples:?}",
        problems.len(),
        problems.join("\n")
    );
}
