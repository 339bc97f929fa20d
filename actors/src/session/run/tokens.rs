//! Tokens: what each model turn cost, counted once, and the per-message
//! token budget.
//!
//! Providers bill by the token, and a message that loops can spend a lot
//! of them without spending its tool-call budget (long outputs re-sent
//! every turn). So every reply's usage is counted where it cannot be
//! counted twice: in the store's transaction that journals the turn (a
//! replayed journal is read back, never re-counted), then reported to the
//! audit trail as a `model_usage` event, which `/metrics` counts. An
//! agent's optional `token_budget` bounds one message like the iteration
//! budget does: once its turns have used it, a human decides whether the
//! message goes on.

use serde_json::json;

use super::{After, LimitReached, MessageRun};
use crate::event::{Event, EventKind, Level};
use crate::model::{ModelReply, Usage};
use crate::session::SessionError;
use crate::session::journal::Entry;
use crate::store::TurnUsage;

/// The tokens a usage counts against a token budget: what the provider
/// read and wrote (cached prompt tokens are part of the prompt).
pub(in crate::session) fn budgeted(usage: Usage) -> u64 {
    usage.prompt_tokens.saturating_add(usage.completion_tokens)
}

/// Whether a message that used `used` tokens has spent a budget of
/// `limit`: no token is left for another turn.
pub(in crate::session) fn spent(used: u64, limit: u64) -> bool {
    used >= limit
}

/// The `model_usage` event of a turn.
pub(in crate::session) fn usage_event(
    source: String,
    session: &str,
    seq: u64,
    turn: u32,
    model: &str,
    usage: Usage,
) -> Event {
    Event::new(
        Level::Info,
        source,
        EventKind::ModelUsage,
        format!(
            "model `{model}` used {} prompt ({} cached) and {} completion tokens",
            usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens
        ),
    )
    .with_session(session.to_owned())
    .with_data(json!({
        "model": model,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "turn": turn,
        "message": format!("{session}:{seq}"),
    }))
}

impl MessageRun<'_> {
    /// Journals turn `turn`'s reply; a reply with usage is counted in the
    /// same store transaction and reported as a `model_usage` event.
    pub(super) async fn journal_turn(
        &mut self,
        turn: u32,
        reply: &ModelReply,
    ) -> Result<(), crate::session::SessionError> {
        let entry = Entry::Turn {
            turn,
            reply: reply.clone(),
        };
        let Some(usage) = reply.usage else {
            return self.journal(entry).await;
        };
        let counted = TurnUsage {
            model: reply.model.clone(),
            usage,
        };
        self.env
            .store
            .journal_turn(
                self.session.to_owned(),
                self.message.seq,
                entry.to_json(),
                counted,
            )
            .await?;
        self.wrote(entry);
        self.env.sink.emit(usage_event(
            self.source(),
            self.session,
            self.message.seq,
            turn,
            &reply.model,
            usage,
        ));
        Ok(())
    }

    /// Before turn `turn`: the agent's token budget, when it has one and
    /// the message has spent it, goes to a human (continue: another
    /// budget; stop, the default: the message fails).
    pub(super) async fn tokens_check(&mut self, turn: u32) -> Result<After, SessionError> {
        let Some(budget) = self.agent.token_budget else {
            return Ok(After::Continue);
        };
        let used = budgeted(self.progress.usage);
        let limit = self.progress.token_limit.unwrap_or(budget);
        if !spent(used, limit) {
            return Ok(After::Continue);
        }
        let seq = self.message.seq;
        let context = json!({
            "message": seq,
            "turns": turn,
            "tokens": used,
            "usage": self.progress.usage,
        });
        self.limit_reached(LimitReached {
            key: format!("tokens-{turn}"),
            kind: "tokens",
            title: format!("Token budget of {budget} tokens spent"),
            description: format!(
                "The agent's model turns used {used} tokens (prompt and completion) on one \
                 message without finishing ([[agents]] token_budget = {budget})."
            ),
            what: format!("{used} tokens used on message {seq}"),
            why: "The task needs more tokens than budgeted, or the agent is looping \
                  (a long conversation is re-sent every turn).",
            grant_label: "Grant another token budget",
            alternative: format!("Grant another {budget} tokens"),
            context,
            grant: Entry::TokensGranted {
                limit: used.saturating_add(budget),
            },
            stopped: format!(
                "the token budget of {budget} tokens per message was spent ({used} used)"
            ),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_counts_prompt_and_completion_and_is_spent_when_reached() {
        let usage = Usage {
            prompt_tokens: 70,
            completion_tokens: 30,
            cached_tokens: 50,
        };
        assert_eq!(budgeted(usage), 100);
        assert!(!spent(99, 100));
        assert!(spent(100, 100));
        assert!(spent(101, 100));
    }

    #[test]
    fn the_usage_event_carries_the_contract_fields() {
        let usage = Usage {
            prompt_tokens: 7,
            completion_tokens: 3,
            cached_tokens: 2,
        };
        let event = usage_event("hale/sessions/s".into(), "s", 4, 1, "gpt", usage);
        assert_eq!(event.kind, EventKind::ModelUsage);
        assert_eq!(event.session.as_deref(), Some("s"));
        assert_eq!(
            event.data,
            json!({"model": "gpt", "prompt_tokens": 7, "completion_tokens": 3,
                   "cached_tokens": 2, "turn": 1, "message": "s:4"})
        );
    }
}
