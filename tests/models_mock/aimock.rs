//! aimock itself, as the other tests rely on it (so a new aimock that
//! behaves differently fails here, with a clear message, rather than as a
//! puzzling hale failure), and hale served by it on today's code path.

use serde_json::{Value, json};

use crate::harness::{Aimock, Hale, MockModel};

/// A fixture answering `content`, matched by `matcher`.
pub fn text(matcher: Value, content: &str) -> Value {
    json!({ "match": matcher, "response": { "content": content } })
}

/// A fixture answering `content` with the usage `(prompt, completion)`
/// (aimock maps the names onto Anthropic's `input_tokens`/`output_tokens`).
pub fn text_with_usage(matcher: Value, content: &str, usage: (u64, u64)) -> Value {
    json!({
        "match": matcher,
        "response": {
            "content": content,
            "usage": { "prompt_tokens": usage.0, "completion_tokens": usage.1 },
        },
    })
}

/// A fixture answering 429 with `Retry-After: secs` to `model`.
pub fn rate_limited(model: &str, secs: u64) -> Value {
    json!({
        "match": { "model": model },
        "response": {
            "error": { "message": "slow down", "type": "rate_limit_error", "code": "rate_limit_exceeded" },
            "status": 429,
            "retryAfter": secs,
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aimock_answers_as_these_tests_expect() {
    let Some(mock) = Aimock::start(
        json!([
            rate_limited("ratelimited", 2),
            {
                "match": { "userMessage": "trunc", "sequenceIndex": 0 },
                "response": { "content": "The quick brown fox." },
                "truncateAfterChunks": 3, "chunkSize": 5, "latency": 5,
            },
            {
                "match": { "userMessage": "trunc", "sequenceIndex": 1 },
                "response": { "content": "The quick brown fox." }, "chunkSize": 5,
            },
            { "match": { "userMessage": "bad" }, "response": { "content": "x" }, "chaos": { "malformedRate": 1 } },
            text_with_usage(json!({}), "All good.", (11, 7)),
        ]),
        &[],
    ) else {
        return;
    };
    let chat = |model: &str, user: &str, stream: bool| {
        json!({
            "model": model, "stream": stream,
            "stream_options": { "include_usage": true },
            "messages": [{ "role": "user", "content": user }],
        })
    };
    // 429 with Retry-After: 2 on both wire formats.
    for path in ["/v1/chat/completions", "/v1/messages"] {
        let answer = mock
            .post(path, json!({ "model": "ratelimited", "max_tokens": 5, "messages": [{ "role": "user", "content": "hi" }] }))
            .await;
        assert_eq!(answer.status().as_u16(), 429, "{path}");
        assert_eq!(answer.headers()["retry-after"], "2", "{path}");
    }
    // A plain answer carries the fixture's usage.
    let plain: Value = mock
        .post("/v1/chat/completions", chat("m", "hi", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(plain["choices"][0]["message"]["content"], "All good.");
    assert_eq!(plain["usage"]["prompt_tokens"], 11);
    assert_eq!(plain["usage"]["completion_tokens"], 7);
    // A stream ends with a usage chunk and [DONE].
    let stream = mock
        .post("/v1/chat/completions", chat("m", "hi", true))
        .await
        .text()
        .await
        .unwrap();
    assert!(stream.contains("\"finish_reason\":\"stop\""), "{stream}");
    assert!(stream.contains("\"completion_tokens\":7"), "{stream}");
    assert!(stream.trim_end().ends_with("data: [DONE]"), "{stream}");
    // Anthropic: the same fixture, streamed as Messages events.
    let anthropic = mock
        .post(
            "/v1/messages",
            json!({ "model": "c", "max_tokens": 5, "stream": true, "messages": [{ "role": "user", "content": "hi" }] }),
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(anthropic.contains("event: message_stop"), "{anthropic}");
    assert!(anthropic.contains("\"input_tokens\":11"), "{anthropic}");
    // A truncated stream: cut off (no [DONE]), then the full one.
    let cut = match mock
        .try_post("/v1/chat/completions", chat("m", "trunc", true))
        .await
    {
        Ok(answer) => answer.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    assert!(!cut.contains("[DONE]"), "{cut}");
    let whole = mock
        .post("/v1/chat/completions", chat("m", "trunc", true))
        .await
        .text()
        .await
        .unwrap();
    assert!(whole.contains("[DONE]"), "{whole}");
    // A malformed answer: a 200 whose body is not JSON.
    let bad = mock
        .post("/v1/chat/completions", chat("m", "bad", true))
        .await;
    assert_eq!(bad.status().as_u16(), 200);
    assert!(serde_json::from_str::<Value>(&bad.text().await.unwrap()).is_err());
    // A one-shot error from the control API.
    mock.queue_error(503).await;
    let once = mock
        .post("/v1/chat/completions", chat("m", "hi", false))
        .await;
    assert_eq!(once.status().as_u16(), 503);
    // The journal has every request, in order, with what happened.
    let journal = mock.journal().await;
    let summary: Vec<(u64, bool, Option<String>)> = journal
        .iter()
        .map(|e| (e.status, e.interrupted, e.chaos.clone()))
        .collect();
    assert_eq!(journal.len(), 9, "{summary:?}");
    assert_eq!(journal[0].status, 429);
    assert!(
        journal[5].interrupted && journal[5].stream,
        "{:?}",
        journal[5]
    );
    assert!(!journal[6].interrupted);
    assert_eq!(journal[7].chaos.as_deref(), Some("malformed"));
    assert_eq!(journal[2].fixture_usage, Some((11, 7)));
    assert!(journal.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    mock.reset_journal().await;
    assert!(mock.journal().await.is_empty());
}

/// hale as it is today answers through aimock, as an OpenAI-compatible
/// and as an Anthropic model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hale_is_served_by_aimock_as_openai_and_as_anthropic() {
    let Some(mock) = Aimock::start(
        json!([
            text(
                json!({ "model": "oa-model" }),
                "Answered over the OpenAI format."
            ),
            text(
                json!({ "model": "an-model" }),
                "Answered over the Anthropic format."
            ),
        ]),
        &[],
    ) else {
        return;
    };
    for (model, want, path) in [
        (
            MockModel::openai("oa", "oa-model"),
            "Answered over the OpenAI format.",
            "/v1/chat/completions",
        ),
        (
            MockModel::anthropic("an", "an-model"),
            "Answered over the Anthropic format.",
            "/v1/messages",
        ),
    ] {
        mock.reset_journal().await;
        let hale = Hale::start(&mock, &[model], "").await;
        let session = hale.session().await;
        let done = hale.ask(&session, "hello").await;
        assert_eq!(done["status"], "done", "{done}");
        assert_eq!(done["reply"], want, "{done}");
        let journal = mock.journal().await;
        assert_eq!(journal.len(), 1, "{journal:?}");
        assert_eq!(journal[0].path, path);
        assert_eq!(journal[0].user, "hello");
    }
}
