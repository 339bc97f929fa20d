//! The conversation budget: what keeps a model request bounded.
//!
//! A session re-sends its whole conversation on every model turn, every
//! earlier tool output included, so a long message (or a long session)
//! grows each request without bound until the provider refuses it or
//! bills for it. [`fit`] is the one place that decides what to leave out:
//! given the messages and a budget in bytes, it replaces the oldest tool
//! outputs with a short marker saying how much was left out, never touches
//! what the user or the model wrote, and reports what it elided so the
//! caller can tell the model ([`Elided::note`]). It is a pure function, so
//! later work on context overflow (a `CONTEXT_TOO_LONG` answer asking for a
//! smaller budget) reuses it as is.

use serde_json::{Value, json};

use crate::model::ChatMessage;
use crate::outcome::ToolOutcome;

/// The key a marker carries in its data (`{"elided_bytes": n}`): how a
/// marker is told from a real outcome, so fitting twice changes nothing.
pub const ELIDED_KEY: &str = "elided_bytes";

/// The default budget: 256 KiB of serialized conversation, about 64k
/// tokens at four bytes a token, under the window of current models.
pub const DEFAULT_CONTEXT_BUDGET_BYTES: usize = 256 * 1024;

/// What [`fit`] left out (markers found in its input included, so the
/// summary of a conversation fitted twice is the same).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Elided {
    /// Tool outputs replaced by a marker.
    pub outputs: usize,
    /// Their serialized size before they were replaced.
    pub bytes: usize,
}

impl Elided {
    /// Whether anything was left out.
    pub fn is_empty(&self) -> bool {
        self.outputs == 0
    }

    /// The note the model is shown when something was left out (`None`
    /// when nothing was).
    pub fn note(&self, budget: usize) -> Option<String> {
        (!self.is_empty()).then(|| {
            format!(
                "Note: to keep this conversation within its budget of {budget} bytes, the \
                 {} oldest tool output(s) ({} bytes) were replaced by a marker \
                 (`{ELIDED_KEY}`). Call the tool again if you need one of them.",
                self.outputs, self.bytes
            )
        })
    }
}

/// A conversation fitted to a budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    /// The messages, in order, with the elided tool outputs replaced.
    pub messages: Vec<ChatMessage>,
    /// What was left out.
    pub elided: Elided,
}

/// The size a message counts for: its serialized JSON, which is close to
/// what every provider sends for it.
pub fn size_of(message: &ChatMessage) -> usize {
    serde_json::to_string(message).map_or(0, |s| s.len())
}

/// The size of a whole conversation, as [`fit`] counts it.
pub fn total_size(messages: &[ChatMessage]) -> usize {
    messages.iter().map(size_of).sum()
}

/// Whether `outcome` is a marker left by [`fit`].
pub fn is_marker(outcome: &ToolOutcome) -> bool {
    outcome.data.get(ELIDED_KEY).is_some_and(Value::is_u64)
}

/// The marker that stands for an outcome of `bytes` bytes: its status,
/// code and classification stay (the model still knows whether the call
/// worked), its payload, message and hints go.
pub fn marker(outcome: &ToolOutcome, bytes: usize) -> ToolOutcome {
    ToolOutcome {
        message: format!("[{bytes} bytes of this tool output elided to fit the context budget]"),
        data: json!({ ELIDED_KEY: bytes }),
        hints: Vec::new(),
        extra: serde_json::Map::new(),
        ..outcome.clone()
    }
}

/// `messages` within `budget` bytes (as [`total_size`] counts them): the
/// oldest tool outputs are replaced by markers, one at a time, until the
/// rest fits. User text, model text and tool calls, and decisions, are
/// never touched, so when they alone exceed the budget the result is over
/// it, with every tool output it could elide elided. An output whose
/// marker would be no smaller is kept. Idempotent: fitting the result
/// again returns it unchanged, with the same summary.
pub fn fit(messages: &[ChatMessage], budget: usize) -> Fitted {
    let mut out = messages.to_vec();
    let mut total = total_size(&out);
    let mut index = 0;
    while total > budget && index < out.len() {
        if let ChatMessage::ToolResult { outcome, .. } = &mut out[index]
            && !is_marker(outcome)
        {
            let bytes = serde_json::to_string(&*outcome).map_or(0, |s| s.len());
            let replacement = marker(outcome, bytes);
            let smaller = serde_json::to_string(&replacement).map_or(usize::MAX, |s| s.len());
            if smaller < bytes {
                total -= bytes - smaller;
                *outcome = replacement;
            }
        }
        index += 1;
    }
    let elided = out
        .iter()
        .filter_map(|m| match m {
            ChatMessage::ToolResult { outcome, .. } if is_marker(outcome) => {
                outcome.data.get(ELIDED_KEY).and_then(Value::as_u64)
            }
            _ => None,
        })
        .fold(Elided::default(), |acc, bytes| Elided {
            outputs: acc.outputs + 1,
            bytes: acc
                .bytes
                .saturating_add(usize::try_from(bytes).unwrap_or(usize::MAX)),
        });
    Fitted {
        messages: out,
        elided,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;
    use crate::catalog::ErrorCode;
    use crate::model::ToolCallRequest;

    fn user(text: &str) -> ChatMessage {
        ChatMessage::User { text: text.into() }
    }

    fn call(id: &str) -> ChatMessage {
        ChatMessage::Assistant {
            text: Some(format!("calling {id}")),
            tool_calls: vec![ToolCallRequest {
                id: id.into(),
                name: "exec".into(),
                arguments: json!({"command": "cat big"}),
            }],
        }
    }

    fn result(id: &str, bytes: usize) -> ChatMessage {
        ChatMessage::ToolResult {
            call_id: id.into(),
            name: "exec".into(),
            outcome: ToolOutcome::success(json!({"stdout": "x".repeat(bytes)})),
        }
    }

    fn is_elided(m: &ChatMessage) -> bool {
        matches!(m, ChatMessage::ToolResult { outcome, .. } if is_marker(outcome))
    }

    #[test]
    fn a_conversation_within_budget_is_unchanged() {
        let messages = vec![user("hi"), call("a"), result("a", 100)];
        let fitted = fit(&messages, 10_000);
        assert_eq!(fitted.messages, messages);
        assert!(fitted.elided.is_empty());
        assert_eq!(fitted.elided.note(10_000), None);
    }

    #[test]
    fn the_oldest_outputs_go_first_and_the_model_is_told() {
        let messages = vec![
            user("go"),
            call("a"),
            result("a", 5000),
            call("b"),
            result("b", 5000),
            call("c"),
            result("c", 5000),
        ];
        let budget = total_size(&messages) - 4000;
        let fitted = fit(&messages, budget);
        assert!(total_size(&fitted.messages) <= budget);
        assert!(is_elided(&fitted.messages[2]));
        assert!(!is_elided(&fitted.messages[4]));
        assert!(!is_elided(&fitted.messages[6]));
        assert_eq!(fitted.elided.outputs, 1);
        assert!(fitted.elided.bytes > 5000);
        let note = fitted.elided.note(budget).unwrap();
        assert!(note.contains("1 oldest tool output"), "{note}");
    }

    #[test]
    fn a_marker_keeps_the_status_and_code() {
        let failed = ToolOutcome::from_code(ErrorCode::NotFound, "x".repeat(3000));
        let m = marker(&failed, 3000);
        assert_eq!(m.status, failed.status);
        assert_eq!(m.code, failed.code);
        assert!(is_marker(&m));
        assert!(!is_marker(&failed));
    }

    fn arb_message() -> impl Strategy<Value = ChatMessage> {
        prop_oneof![
            "[a-z ]{0,300}".prop_map(|t| user(&t)),
            "[a-z]{1,8}".prop_map(|id| call(&id)),
            ("[a-z]{1,8}", 0usize..4000).prop_map(|(id, n)| result(&id, n)),
            ("[a-z]{1,8}", "[a-z ]{0,2000}").prop_map(|(id, msg)| ChatMessage::ToolResult {
                call_id: id,
                name: "grep".into(),
                outcome: ToolOutcome::from_code(ErrorCode::InvalidInput, msg),
            }),
        ]
    }

    /// What must never be elided: every message but the tool outputs.
    fn kept_text(messages: &[ChatMessage]) -> Vec<ChatMessage> {
        messages
            .iter()
            .filter(|m| !matches!(m, ChatMessage::ToolResult { .. }))
            .cloned()
            .collect()
    }

    proptest! {
        // Each case serializes a conversation of up to 30 messages several
        // times; 64 cases keep the suite quick in debug builds.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn fit_meets_the_budget_whenever_it_can(
            messages in prop::collection::vec(arb_message(), 0..30),
            budget in 0usize..60_000,
        ) {
            let fitted = fit(&messages, budget);
            // The best that can be done: every output a marker would shrink.
            let floor = fit(&messages, 0);
            let size = total_size(&fitted.messages);
            prop_assert!(size <= budget.max(total_size(&floor.messages)));
            prop_assert!(size <= total_size(&messages));
            // Same shape: one message for one, tool results in place.
            prop_assert_eq!(fitted.messages.len(), messages.len());
            prop_assert_eq!(kept_text(&fitted.messages), kept_text(&messages));
        }

        #[test]
        fn fit_elides_the_oldest_outputs_first(
            messages in prop::collection::vec(arb_message(), 0..30),
            budget in 0usize..60_000,
        ) {
            let fitted = fit(&messages, budget);
            // Once an output is kept for being within budget, every later
            // one is kept too: the elided ones are a prefix of the outputs
            // (outputs too small to shrink are skipped).
            let results: Vec<(bool, bool)> = fitted
                .messages
                .iter()
                .zip(&messages)
                .filter_map(|(after, before)| match (after, before) {
                    (ChatMessage::ToolResult { outcome: a, .. }, ChatMessage::ToolResult { outcome: b, .. }) => {
                        let shrinkable = serde_json::to_string(&marker(b, 1_000_000)).unwrap().len()
                            < serde_json::to_string(b).unwrap().len();
                        Some((is_marker(a), shrinkable))
                    }
                    _ => None,
                })
                .collect();
            let mut kept_one = false;
            for (elided, shrinkable) in results {
                if elided {
                    prop_assert!(!kept_one, "a newer output was elided before an older one");
                } else if shrinkable {
                    kept_one = true;
                }
            }
        }

        #[test]
        fn fit_is_idempotent(
            messages in prop::collection::vec(arb_message(), 0..30),
            budget in 0usize..60_000,
        ) {
            let once = fit(&messages, budget);
            let twice = fit(&once.messages, budget);
            prop_assert_eq!(&twice, &once);
        }
    }
}
