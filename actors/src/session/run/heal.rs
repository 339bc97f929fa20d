//! Context overflow heals: a `CONTEXT_TOO_LONG` answer is met by
//! compacting the conversation and asking once more.
//!
//! A model that refuses a request for its size refuses it again unchanged,
//! so failing the message is the wrong end for a long conversation whose
//! old tool outputs the model no longer needs. The session lowers the
//! conversation budget (to what the provider's message says fits, or to
//! half the conversation's size when it says nothing usable), fits the
//! conversation to it with `context_budget::fit` (the oldest tool outputs
//! become markers; user and model text are never touched), asks once more
//! and records a `fix` event. The lowered budget holds for the rest of the
//! message. When compaction cannot shrink the conversation, or the retried
//! turn overflows too, the message fails as before.

use std::sync::LazyLock;
use std::sync::atomic::Ordering;

use regex::Regex;
use serde_json::json;

use super::MessageRun;
use crate::catalog::ErrorCode;
use crate::event::{Event, EventKind, Level};
use crate::model::ModelReply;
use crate::outcome::ToolOutcome;
use crate::session::context_budget::{self, Elided};

/// `(requested, limit)` patterns of providers' overflow messages, with the
/// group order of each: Anthropic (`prompt is too long: 208310 tokens >
/// 200000 maximum`, and the scripted model's `... bytes > ... maximum`),
/// OpenAI-compatible (`maximum context length is 8192 tokens ... resulted
/// in / requested 9000 tokens`) and llama.cpp (`request (9000 tokens)
/// exceeds the available context size (8192 tokens)`).
static LIMIT_PATTERNS: LazyLock<Vec<(Regex, bool)>> = LazyLock::new(|| {
    [
        (r"(\d[\d,]*) (?:tokens|bytes) > (\d[\d,]*)", false),
        (
            r"maximum context length is (\d[\d,]*) tokens.*?(?:resulted in|requested) (\d[\d,]*) tokens",
            true,
        ),
        (
            r"\((\d[\d,]*) tokens\) exceeds the available context size \((\d[\d,]*) tokens\)",
            false,
        ),
    ]
    .into_iter()
    .filter_map(|(pattern, limit_first)| {
        Regex::new(&format!("(?is){pattern}"))
            .ok()
            .map(|re| (re, limit_first))
    })
    .collect()
});

fn number(text: &str) -> Option<u128> {
    text.replace(',', "").parse().ok()
}

/// `(requested, limit)` as the provider's message states them, if it does
/// (and the request is the larger).
pub(in crate::session) fn stated_limit(message: &str) -> Option<(u128, u128)> {
    LIMIT_PATTERNS.iter().find_map(|(re, limit_first)| {
        let caps = re.captures(message)?;
        let (a, b) = (
            number(caps.get(1)?.as_str())?,
            number(caps.get(2)?.as_str())?,
        );
        let (requested, limit) = if *limit_first { (b, a) } else { (a, b) };
        (requested > limit && limit > 0).then_some((requested, limit))
    })
}

/// The conversation budget to retry with after an overflow of a
/// conversation of `current` bytes: the share of it the provider says
/// fits (`limit / requested`), less a tenth for what the budget does not
/// count (system prompt, tool specs, the reply), or half of it when the
/// message states no limit. Always below `current` (for `current` > 0).
pub fn compacted_budget(current: usize, message: &str) -> usize {
    let current_wide = current as u128;
    let budget = match stated_limit(message) {
        Some((requested, limit)) => current_wide * limit * 9 / (requested * 10),
        None => current_wide / 2,
    };
    usize::try_from(budget)
        .unwrap_or(usize::MAX)
        .min(current.saturating_sub(1))
}

/// The `fix` event of a healed (or not) overflow.
#[allow(clippy::too_many_arguments)]
pub(in crate::session) fn fix_event(
    source: String,
    session: &str,
    seq: u64,
    turn: u32,
    budget: usize,
    (before_bytes, after_bytes): (usize, usize),
    elided: Elided,
    healed: bool,
) -> Event {
    let level = if healed { Level::Info } else { Level::Warning };
    Event::new(
        level,
        source,
        EventKind::Fix,
        format!(
            "CONTEXT_TOO_LONG: the conversation was compacted from {before_bytes} to \
             {after_bytes} bytes and the turn asked again ({})",
            if healed {
                "healed"
            } else {
                "it overflowed again"
            }
        ),
    )
    .with_session(session.to_owned())
    .with_code(ErrorCode::ContextTooLong)
    .with_data(json!({
        "code": ErrorCode::ContextTooLong.as_str(),
        "action": "compacted",
        "before_bytes": before_bytes,
        "after_bytes": after_bytes,
        "budget": budget,
        "elided": elided.outputs,
        "elided_bytes": elided.bytes,
        "healed": healed,
        "turn": turn,
        "message": format!("{session}:{seq}"),
    }))
}

impl MessageRun<'_> {
    /// The conversation budget model turns are fitted to now.
    pub(super) fn context_budget(&self) -> usize {
        match self.context_budget.load(Ordering::SeqCst) {
            0 => self.env.settings.context_budget_bytes,
            healed => healed,
        }
    }

    /// Asks the model for a turn; a `CONTEXT_TOO_LONG` answer is healed
    /// once (see the module docs).
    pub(super) async fn ask_model_healing(
        &self,
        system: &str,
        turn: u32,
    ) -> Result<ModelReply, ToolOutcome> {
        match self.ask_model(system).await {
            Err(overflow) if overflow.code == Some(ErrorCode::ContextTooLong) => {
                self.heal_overflow(system, turn, overflow).await
            }
            other => other,
        }
    }

    async fn heal_overflow(
        &self,
        system: &str,
        turn: u32,
        overflow: ToolOutcome,
    ) -> Result<ModelReply, ToolOutcome> {
        let messages = self.conversation();
        let sent = context_budget::fit(&messages, self.context_budget());
        let before = context_budget::total_size(&sent.messages);
        let budget = compacted_budget(before, &overflow.message);
        let compacted = context_budget::fit(&messages, budget);
        let after = context_budget::total_size(&compacted.messages);
        if after >= before {
            // Nothing left to elide: the same request would overflow again.
            return Err(overflow);
        }
        self.context_budget.store(budget.max(1), Ordering::SeqCst);
        let retried = self.ask_model(system).await;
        let healed = !matches!(&retried, Err(o) if o.code == Some(ErrorCode::ContextTooLong));
        self.env.sink.emit(fix_event(
            self.source(),
            self.session,
            self.message.seq,
            turn,
            budget,
            (before, after),
            compacted.elided,
            healed,
        ));
        retried
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_stated_limits_are_read() {
        let anthropic = "the request does not fit the model's context window (HTTP 400: \
                         prompt is too long: 208,310 tokens > 200000 maximum)";
        assert_eq!(stated_limit(anthropic), Some((208_310, 200_000)));
        let openai = "the request does not fit (HTTP 400: This model's maximum context length \
                      is 8192 tokens. However, your messages resulted in 10000 tokens.)";
        assert_eq!(stated_limit(openai), Some((10_000, 8192)));
        let vllm = "This model's maximum context length is 4096 tokens, however you requested \
                    5000 tokens (4000 in your prompt; 1000 for the completion)";
        assert_eq!(stated_limit(vllm), Some((5000, 4096)));
        let llama = "request (9000 tokens) exceeds the available context size (8192 tokens)";
        assert_eq!(stated_limit(llama), Some((9000, 8192)));
        assert_eq!(stated_limit("HTTP 413: request too large"), None);
        // A "limit" above the request is no limit to go by.
        assert_eq!(
            stated_limit("prompt is too long: 10 tokens > 20 maximum"),
            None
        );
    }

    #[test]
    fn the_budget_follows_the_stated_share_or_halves() {
        // 10000 requested for 8000 allowed: 80 %, less a tenth.
        let stated = "prompt is too long: 10000 tokens > 8000 maximum";
        assert_eq!(compacted_budget(100_000, stated), 72_000);
        assert_eq!(compacted_budget(100_000, "HTTP 413"), 50_000);
        // Always smaller than what overflowed, even for a tiny overshoot.
        assert!(compacted_budget(100, "prompt is too long: 1001 tokens > 1000 maximum") < 100);
        assert_eq!(compacted_budget(0, "HTTP 413"), 0);
        assert_eq!(compacted_budget(1, "HTTP 413"), 0);
    }

    #[test]
    fn the_fix_event_carries_the_contract_fields() {
        let elided = Elided {
            outputs: 2,
            bytes: 9000,
        };
        let event = fix_event("s/x".into(), "x", 3, 1, 4000, (10_000, 2_000), elided, true);
        assert_eq!(event.kind, EventKind::Fix);
        assert_eq!(event.data["code"], "CONTEXT_TOO_LONG");
        assert_eq!(event.data["action"], "compacted");
        assert_eq!(event.data["before_bytes"], 10_000);
        assert_eq!(event.data["after_bytes"], 2_000);
        assert_eq!(event.data["elided"], 2);
        assert_eq!(event.data["message"], "x:3");
        assert_eq!(event.level, Level::Info);
    }
}
