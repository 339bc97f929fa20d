//! What a session writes down before it acts, and how it reads it back.
//!
//! A session actor may be killed between any two instructions. Everything
//! it needs to continue, and everything it must never do twice, is
//! therefore an [`Entry`] in the store before the step it records takes
//! effect: the model's turn before its tool calls run, the intent of a
//! call before the call, the outcome before the next turn sees it, the
//! approval before the wait. [`Progress`] is the journal of one message
//! read back; where two incarnations both wrote a step (the old one's
//! write was still queued when the new one replayed), the first record of
//! the step wins, so replay is a pure function of the journal.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dispatch::Route;
use crate::model::{ChatMessage, ModelReply, Usage};
use crate::outcome::ToolOutcome;

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// The model's answer for turn `turn` of the message.
    Turn {
        /// Turn number, from 0.
        turn: u32,
        /// What the model said.
        reply: ModelReply,
    },
    /// A tool call is about to be made.
    Intent {
        /// The call's id (unique within the session's journal).
        call: String,
        /// The tool.
        tool: String,
        /// Its arguments.
        args: Value,
    },
    /// A tool call's outcome (possibly `INTERRUPTED`, written by a later
    /// incarnation for a call whose outcome was never recorded).
    Outcome {
        /// The call's id.
        call: String,
        /// The tool.
        tool: String,
        /// What happened.
        outcome: ToolOutcome,
        /// Iterations left in the message's budget after the call.
        budget_left: u32,
        /// How the dispatcher served the call (absent from entries
        /// written before routes were journaled, and for outcomes that
        /// did not come from the dispatcher).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        route: Option<Route>,
    },
    /// The session opened an approval (`key` names the step that needed it).
    Escalated {
        /// The step: a call id, or `budget-<n>` for a spent budget.
        key: String,
        /// The approval's id.
        approval: String,
        /// Why (blocked, critical, budget, breaker).
        reason: String,
    },
    /// The approval for `key` was decided.
    Decided {
        /// The step.
        key: String,
        /// The approval's id.
        approval: String,
        /// The option chosen.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        option: Option<String>,
        /// Instructions given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instructions: Option<String>,
    },
    /// The iteration budget was renewed by a human.
    BudgetGranted {
        /// Iterations available from here.
        budget: u32,
    },
    /// A human let the message take more model turns.
    TurnsGranted {
        /// The turn number the message may now reach.
        limit: u32,
    },
    /// A human let the message spend more tokens (`[[agents]]
    /// token_budget`).
    TokensGranted {
        /// The tokens (prompt and completion) the message may now reach.
        limit: u64,
    },
    /// The session switched model (`switch_model`).
    Switched {
        /// The model now first in the chain.
        model: String,
    },
}

impl Entry {
    /// The entry as stored.
    pub fn to_json(&self) -> String {
        // An Entry holds only strings, numbers and JSON values, which
        // always serialise; the fallback keeps the signature infallible.
        serde_json::to_string(self).unwrap_or_else(|e| {
            serde_json::json!({"kind": "unreadable", "error": e.to_string()}).to_string()
        })
    }
}

/// A decision read back from the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// The approval.
    pub approval: String,
    /// The option chosen.
    pub option: Option<String>,
    /// Instructions given.
    pub instructions: Option<String>,
}

/// The journal of one message, read back.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Model turns by number.
    pub turns: BTreeMap<u32, ModelReply>,
    /// Calls intended, by id: tool and arguments.
    pub intents: HashMap<String, (String, Value)>,
    /// Outcomes recorded, by call id.
    pub outcomes: HashMap<String, ToolOutcome>,
    /// How each recorded outcome was served, by call id (read from an
    /// older entry's outcome when it has no route of its own).
    pub routes: HashMap<String, Route>,
    /// Approvals opened, by step key.
    pub escalations: HashMap<String, String>,
    /// Decisions taken, by step key.
    pub decisions: HashMap<String, Decided>,
    /// The budget left after the last recorded call.
    pub budget_left: Option<u32>,
    /// The model-turn cap a human granted, if one did.
    pub turn_limit: Option<u32>,
    /// The tokens the message's recorded turns used (each turn once).
    pub usage: Usage,
    /// The token cap a human granted, if one did.
    pub token_limit: Option<u64>,
    /// The conversation of this message after its user text, in journal
    /// order (assistant turns, tool results, decisions).
    pub transcript: Vec<ChatMessage>,
    /// Entries that could not be read (kept for the audit, not replayed).
    pub unreadable: usize,
    /// Decisions not yet placed in the transcript: a decision is shown to
    /// the model after every tool result of its turn, because providers
    /// require a turn's tool results to follow its tool calls directly.
    held: Vec<ChatMessage>,
}

impl Progress {
    /// Reads back the entries of one message, oldest first.
    pub fn replay<'a>(entries: impl IntoIterator<Item = &'a str>) -> Self {
        let mut progress = Self::default();
        for text in entries {
            match serde_json::from_str::<Entry>(text) {
                Ok(entry) => progress.apply(entry),
                Err(_) => progress.unreadable += 1,
            }
        }
        progress
    }

    /// The conversation of the message after its user text, as the model
    /// is shown it now.
    pub fn conversation(&self) -> impl Iterator<Item = &ChatMessage> {
        self.transcript.iter().chain(self.held.iter())
    }

    /// Applies one entry written just now.
    pub fn apply(&mut self, entry: Entry) {
        match entry {
            Entry::Turn { turn, reply } => {
                if let std::collections::btree_map::Entry::Vacant(slot) = self.turns.entry(turn) {
                    self.transcript.append(&mut self.held);
                    self.transcript.push(ChatMessage::Assistant {
                        text: reply.text.clone(),
                        tool_calls: reply.tool_calls.clone(),
                    });
                    if let Some(usage) = reply.usage {
                        self.usage = self.usage.plus(usage);
                    }
                    slot.insert(reply);
                }
            }
            Entry::Intent { call, tool, args } => {
                self.intents.entry(call).or_insert((tool, args));
            }
            Entry::Outcome {
                call,
                tool,
                outcome,
                budget_left,
                route,
            } => {
                if !self.outcomes.contains_key(&call) {
                    let route = route.unwrap_or_else(|| Route::legacy(&outcome));
                    self.routes.insert(call.clone(), route);
                    self.transcript.push(ChatMessage::ToolResult {
                        call_id: call.clone(),
                        name: tool,
                        outcome: outcome.clone(),
                    });
                    self.outcomes.insert(call, outcome);
                    self.budget_left = Some(budget_left);
                }
            }
            Entry::Escalated { key, approval, .. } => {
                self.escalations.entry(key).or_insert(approval);
            }
            Entry::Decided {
                key,
                approval,
                option,
                instructions,
            } => {
                if !self.decisions.contains_key(&key) {
                    self.held.push(ChatMessage::Decision {
                        approval: approval.clone(),
                        option: option.clone(),
                        instructions: instructions.clone(),
                    });
                    self.decisions.insert(
                        key,
                        Decided {
                            approval,
                            option,
                            instructions,
                        },
                    );
                }
            }
            Entry::BudgetGranted { budget } => self.budget_left = Some(budget),
            Entry::TurnsGranted { limit } => self.turn_limit = Some(limit),
            Entry::TokensGranted { limit } => self.token_limit = Some(limit),
            Entry::Switched { .. } => {}
        }
    }

    /// The model switched to most recently in these entries, if any.
    pub fn switched<'a>(entries: impl IntoIterator<Item = &'a str>) -> Option<String> {
        entries
            .into_iter()
            .filter_map(|text| match serde_json::from_str::<Entry>(text) {
                Ok(Entry::Switched { model }) => Some(model),
                _ => None,
            })
            .last()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::catalog::ErrorCode;
    use crate::model::ToolCallRequest;
    use serde_json::json;

    fn turn(n: u32, call: &str) -> String {
        Entry::Turn {
            turn: n,
            reply: ModelReply {
                text: None,
                tool_calls: vec![ToolCallRequest {
                    id: call.into(),
                    name: "exec".into(),
                    arguments: json!({"command": "true"}),
                }],
                model: "scripted".into(),
                usage: None,
            },
        }
        .to_json()
    }

    fn outcome(call: &str, outcome: ToolOutcome) -> String {
        Entry::Outcome {
            call: call.into(),
            tool: "exec".into(),
            outcome,
            budget_left: 7,
            route: None,
        }
        .to_json()
    }

    #[test]
    fn the_first_record_of_a_step_wins() {
        let entries = [
            turn(0, "c0"),
            turn(0, "other"),
            Entry::Intent {
                call: "c0".into(),
                tool: "exec".into(),
                args: json!({}),
            }
            .to_json(),
            outcome("c0", ToolOutcome::from_code(ErrorCode::Interrupted, "cut")),
            outcome("c0", ToolOutcome::success(json!("late"))),
        ];
        let p = Progress::replay(entries.iter().map(String::as_str));
        assert_eq!(p.turns.len(), 1);
        assert_eq!(p.turns[&0].tool_calls[0].id, "c0");
        assert_eq!(p.outcomes["c0"].code, Some(ErrorCode::Interrupted));
        assert_eq!(p.transcript.len(), 2);
        assert_eq!(p.conversation().count(), 2);
        assert_eq!(p.budget_left, Some(7));
    }

    #[test]
    fn a_granted_turn_limit_is_read_back() {
        let entries = [turn(0, "c0"), Entry::TurnsGranted { limit: 100 }.to_json()];
        let p = Progress::replay(entries.iter().map(String::as_str));
        assert_eq!(p.turn_limit, Some(100));
        assert_eq!(Progress::default().turn_limit, None);
    }

    fn turn_with_usage(n: u32, prompt: u64, completion: u64) -> String {
        let mut entry: Entry = serde_json::from_str(&turn(n, &format!("c{n}"))).unwrap();
        if let Entry::Turn { reply, .. } = &mut entry {
            reply.usage = Some(Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                cached_tokens: 1,
            });
        }
        entry.to_json()
    }

    #[test]
    fn usage_round_trips_and_each_turn_counts_once() {
        let first = turn_with_usage(0, 100, 10);
        let Entry::Turn { reply, .. } = serde_json::from_str::<Entry>(&first).unwrap() else {
            panic!("not a turn");
        };
        assert_eq!(
            reply.usage,
            Some(Usage {
                prompt_tokens: 100,
                completion_tokens: 10,
                cached_tokens: 1
            })
        );
        // A second incarnation's record of turn 0 is not replayed, so its
        // usage is not counted twice; a replay of the same journal gives
        // the same sum.
        let entries = [
            first,
            turn_with_usage(0, 999, 999),
            turn_with_usage(1, 200, 20),
            Entry::TokensGranted { limit: 5000 }.to_json(),
        ];
        let p = Progress::replay(entries.iter().map(String::as_str));
        let again = Progress::replay(entries.iter().map(String::as_str));
        let want = Usage {
            prompt_tokens: 300,
            completion_tokens: 30,
            cached_tokens: 2,
        };
        assert_eq!(p.usage, want);
        assert_eq!(again.usage, want);
        assert_eq!(p.token_limit, Some(5000));
        // A reply without usage (an older journal) counts nothing.
        let old = Progress::replay([turn(0, "c0")].iter().map(String::as_str));
        assert_eq!(old.usage, Usage::default());
    }

    #[test]
    fn unreadable_entries_are_counted_not_replayed() {
        let entries = ["{not json".to_owned(), turn(0, "c0")];
        let p = Progress::replay(entries.iter().map(String::as_str));
        assert_eq!(p.unreadable, 1);
        assert_eq!(p.turns.len(), 1);
    }
}
