//! The loop of one message: model turn, tool calls through the recovery
//! policy, outcomes back to the model, until a reply or a decision ends
//! it. Every step is journaled before it takes effect (see `journal`), so
//! this code can be killed anywhere and run again from the top: a step
//! already recorded is read back, never redone.

mod heal;
mod tokens;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::context_budget;
use super::journal::{Entry, Progress};
use super::stall::{HeldTurn, Stalls};
use super::{AgentSpec, SessionEnv, SessionError};
use crate::catalog::ErrorCode;
use crate::dispatch::{ApprovalReason, Dispatched, Route, ToolContext, escalation};
use crate::escalation::{
    ApprovalOption, ApprovalRequest, Diagnosis, EscalationError, Gate, Origin, Resolution,
};
use crate::event::{Event, EventKind, Level};
use crate::memory::Lesson;
use crate::model::{ChatMessage, ModelReply, ModelRequest, ToolCallRequest};
use crate::outcome::{Severity, Status, ToolOutcome};
use crate::recovery::IterationBudget;
use crate::store::{Finish, JournalRecord, MessageRecord, MessageState};
use crate::tool::{ToolSpec, unknown_tool};

use crate::model::SWITCH_MODEL;

/// The iteration budget of one message, shared with the dispatcher (which
/// charges retries and fallbacks to it).
#[derive(Debug)]
pub(super) struct MessageBudget(AtomicU32);

impl MessageBudget {
    fn new(left: u32) -> Self {
        Self(AtomicU32::new(left))
    }

    fn set(&self, left: u32) {
        self.0.store(left, Ordering::SeqCst);
    }
}

impl IterationBudget for MessageBudget {
    fn try_consume(&self) -> bool {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn remaining(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A finished tool call.
#[derive(Debug, Clone)]
pub(super) struct Ran {
    outcome: ToolOutcome,
    /// How the dispatcher served it.
    route: Route,
    /// Whether its runner journaled the outcome.
    journaled: bool,
    budget_left: u32,
}

impl Ran {
    fn unjournaled(outcome: ToolOutcome, budget_left: u32) -> Self {
        Self {
            outcome,
            route: Route::default(),
            journaled: false,
            budget_left,
        }
    }
}

/// Tool calls started by sessions, by (session, message, call id), kept
/// outside the session actors until their message finishes: a restarted
/// session takes the outcome of a call its predecessor started instead of
/// calling it interrupted.
#[derive(Debug, Default)]
pub struct InFlight {
    map: DashMap<(String, u64, String), watch::Receiver<Option<Ran>>>,
}

impl InFlight {
    fn insert(&self, session: &str, seq: u64, call: &str, rx: watch::Receiver<Option<Ran>>) {
        self.map
            .insert((session.to_owned(), seq, call.to_owned()), rx);
    }

    fn get(&self, session: &str, seq: u64, call: &str) -> Option<watch::Receiver<Option<Ran>>> {
        self.map
            .get(&(session.to_owned(), seq, call.to_owned()))
            .map(|rx| rx.clone())
    }

    /// Forgets the calls of a finished message.
    pub(super) fn finished(&self, session: &str, seq: u64) {
        self.map.retain(|(s, q, _), _| !(s == session && *q == seq));
    }

    /// Calls tracked (running or finished with their message still open).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none are tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The outcome of a call once its runner has it. A runner that vanished
/// without one (it panicked) is an interrupted call.
async fn wait_ran(mut rx: watch::Receiver<Option<Ran>>) -> Ran {
    loop {
        if let Some(ran) = rx.borrow_and_update().clone() {
            return ran;
        }
        if rx.changed().await.is_err() {
            if let Some(ran) = rx.borrow().clone() {
                return ran;
            }
            return Ran::unjournaled(
                ToolOutcome::from_code(
                    ErrorCode::Interrupted,
                    "the call's runner stopped without an outcome",
                )
                .delivered(),
                0,
            );
        }
    }
}

/// What a decided escalation asks the loop to do.
enum After {
    /// Go on (the decision is in the conversation).
    Continue,
    /// End the message as failed with this error.
    Stop(String),
}

/// What [`MessageRun::limit_reached`] asks a human about: one limit of a
/// message (tool calls, model turns, tokens) that was reached.
struct LimitReached {
    /// The approval's key within the message (`turns-3`).
    pub key: String,
    /// The escalation's kind (`budget`, `turns`, `tokens`).
    pub kind: &'static str,
    /// The approval's title.
    pub title: String,
    /// The approval's description.
    pub description: String,
    /// The diagnosis: what happened.
    pub what: String,
    /// The diagnosis: why it may have.
    pub why: &'static str,
    /// The label of the option that grants more.
    pub grant_label: &'static str,
    /// The alternative to stopping, in words.
    pub alternative: String,
    /// The diagnosis's context.
    pub context: Value,
    /// What is journaled when the human grants more.
    pub grant: Entry,
    /// Why the message failed when the human stops it (", stopped by X"
    /// is added).
    pub stopped: String,
}

/// One message being worked on.
pub(super) struct MessageRun<'a> {
    pub env: &'a SessionEnv,
    pub in_flight: &'a InFlight,
    pub agent: &'a AgentSpec,
    pub session: &'a str,
    pub message: MessageRecord,
    /// The conversation before this message.
    pub history: Vec<ChatMessage>,
    pub progress: Progress,
    pub model: Option<String>,
    pub budget: Arc<MessageBudget>,
    pub tools: Vec<ToolSpec>,
    /// The session's stall, ended by the first write that succeeds.
    pub stalls: Option<&'a Stalls>,
    /// A model reply the journal refused earlier, to write instead of
    /// asking the model again.
    pub held: Option<&'a std::sync::Mutex<Option<HeldTurn>>>,
    /// The conversation budget after a `CONTEXT_TOO_LONG` was healed
    /// (see `heal`); 0 while the configured one holds.
    context_budget: AtomicUsize,
}

impl<'a> MessageRun<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        env: &'a SessionEnv,
        in_flight: &'a InFlight,
        agent: &'a AgentSpec,
        session: &'a str,
        message: MessageRecord,
        history: Vec<ChatMessage>,
        journal: &[JournalRecord],
        model: Option<String>,
    ) -> Self {
        let progress = Progress::replay(
            journal
                .iter()
                .filter(|r| r.message == message.seq)
                .map(|r| r.entry.as_str()),
        );
        let budget = Arc::new(MessageBudget::new(
            progress.budget_left.unwrap_or(agent.budget),
        ));
        let mut tools: Vec<ToolSpec> = env
            .dispatcher
            .names()
            .into_iter()
            .filter(|name| agent.allows(name))
            .filter_map(|name| env.dispatcher.spec(&name))
            .collect();
        if agent.allows(SWITCH_MODEL) {
            tools.push(crate::model::switch_model_spec());
        }
        Self {
            env,
            in_flight,
            agent,
            session,
            message,
            history,
            progress,
            model,
            budget,
            tools,
            stalls: None,
            held: None,
            context_budget: AtomicUsize::new(0),
        }
    }

    /// With the session's stall registry and held reply (see `stall`).
    pub(super) fn with_stall(
        mut self,
        stalls: &'a Stalls,
        held: &'a std::sync::Mutex<Option<HeldTurn>>,
    ) -> Self {
        self.stalls = Some(stalls);
        self.held = Some(held);
        self
    }

    /// The reply held for `turn` of this message, if the journal refused it.
    fn held_reply(&self, turn: u32) -> Option<ModelReply> {
        let held = self.held?;
        let slot = held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.as_ref()
            .filter(|h| h.seq == self.message.seq && h.turn == turn)
            .map(|h| h.reply.clone())
    }

    fn hold(&self, turn: u32, reply: Option<ModelReply>) {
        if let Some(held) = self.held {
            *held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = reply.map(|reply| HeldTurn {
                seq: self.message.seq,
                turn,
                reply,
            });
        }
    }

    fn source(&self) -> String {
        format!("{}/{}", self.env.settings.source, self.session)
    }

    async fn journal(&mut self, entry: Entry) -> Result<(), SessionError> {
        self.env
            .store
            .journal(self.session.to_owned(), self.message.seq, entry.to_json())
            .await?;
        self.wrote(entry);
        Ok(())
    }

    /// An entry is committed: a stall ends, the progress takes it.
    fn wrote(&mut self, entry: Entry) {
        if let Some(stalls) = self.stalls {
            stalls.resumed(self.session, &self.source(), self.env.sink.as_ref());
        }
        self.progress.apply(entry);
    }

    /// Model turns this message may take before a human is asked.
    fn turn_limit(&self) -> u32 {
        self.progress
            .turn_limit
            .unwrap_or(self.env.settings.max_turns_per_message)
    }

    fn chain(&self) -> Vec<String> {
        let mut chain = Vec::with_capacity(self.agent.models.len() + 1);
        if let Some(model) = &self.model {
            chain.push(model.clone());
        }
        for model in &self.agent.models {
            if !chain.contains(model) {
                chain.push(model.clone());
            }
        }
        chain
    }

    /// Runs the message to its end and returns what to record.
    pub(super) async fn run(mut self) -> Result<Finish, SessionError> {
        if self.message.state == MessageState::Queued {
            self.env
                .store
                .set_message_state(
                    self.session.to_owned(),
                    self.message.seq,
                    MessageState::Running,
                )
                .await?;
        }
        let system = self.system_prompt().await;
        let mut turn: u32 = 0;
        loop {
            let reply = match self.progress.turns.get(&turn) {
                Some(reply) => reply.clone(),
                None => {
                    if turn >= self.turn_limit()
                        && let After::Stop(error) = self.turns_spent(turn).await?
                    {
                        return Ok(self.finish(MessageState::Failed, None, Some(error)));
                    }
                    if let After::Stop(error) = self.tokens_check(turn).await? {
                        return Ok(self.finish(MessageState::Failed, None, Some(error)));
                    }
                    // A reply the journal refused before is written now,
                    // not asked for again (each ask is a paid request).
                    let asked = match self.held_reply(turn) {
                        Some(reply) => Ok(reply),
                        None => self.ask_model_healing(&system, turn).await,
                    };
                    match asked {
                        Ok(reply) => {
                            if let Err(e) = self.journal_turn(turn, &reply).await {
                                self.hold(turn, Some(reply));
                                return Err(e);
                            }
                            self.hold(turn, None);
                            reply
                        }
                        Err(outcome) => {
                            return Ok(self.finish(
                                MessageState::Failed,
                                None,
                                Some(format!("no model could answer: {}", outcome.message)),
                            ));
                        }
                    }
                }
            };
            if reply.tool_calls.is_empty() {
                return Ok(self.finish(
                    MessageState::Done,
                    Some(reply.text.unwrap_or_default()),
                    None,
                ));
            }
            for call in &reply.tool_calls {
                if let After::Stop(error) = self.step(call).await? {
                    return Ok(self.finish(MessageState::Failed, None, Some(error)));
                }
            }
            turn = turn.saturating_add(1);
        }
    }

    fn finish(&self, state: MessageState, reply: Option<String>, error: Option<String>) -> Finish {
        Finish {
            session: self.session.to_owned(),
            seq: self.message.seq,
            state,
            reply,
            error,
        }
    }

    async fn system_prompt(&self) -> String {
        let mut system = self.agent.system_prompt.clone();
        let Some(memory) = &self.env.memory else {
            return system;
        };
        match memory.read().await {
            Ok(text) if !text.trim().is_empty() => {
                system.push_str("\n\n# MEMORY.md (lessons from earlier sessions)\n");
                system.push_str(&newest(&text, self.env.settings.memory_prompt_bytes));
            }
            Ok(_) => {}
            Err(outcome) => {
                system.push_str(&format!(
                    "\n\n(MEMORY.md could not be read for this message: {})",
                    outcome.message
                ));
            }
        }
        system
    }

    /// The conversation a model turn is shown, before fitting.
    fn conversation(&self) -> Vec<ChatMessage> {
        let mut messages = self.history.clone();
        messages.push(ChatMessage::User {
            text: self.message.text.clone(),
        });
        messages.extend(self.progress.conversation().cloned());
        messages
    }

    /// One model turn. Its retries (an endpoint restarting, rate limits,
    /// the whole chain failing for a moment) are the model chain's, under
    /// the engine's budget rules and the turn's deadline: a re-ask here
    /// would deposit into the retry budget as a new request each time.
    async fn ask_model(&self, system: &str) -> Result<ModelReply, ToolOutcome> {
        let messages = self.conversation();
        let budget = self.context_budget();
        let fitted = context_budget::fit(&messages, budget);
        let mut system = system.to_owned();
        if let Some(note) = fitted.elided.note(budget) {
            system.push_str("\n\n");
            system.push_str(&note);
        }
        // The turn being asked: the one after the last recorded.
        let turn = self.progress.turns.keys().next_back().map_or(0, |t| t + 1);
        let deltas = self.env.deltas.sink(self.session, self.message.seq, turn);
        let request = ModelRequest {
            system,
            messages: fitted.messages,
            tools: self.tools.clone(),
            budget_left: Some(self.budget.remaining()),
            deltas: Some(deltas.clone()),
        };
        let ctx = ToolContext {
            session: Some(self.session.to_owned()),
            message: Some(self.message.seq),
            iterations: self.budget.clone(),
            ..ToolContext::default()
        };
        let reply = self
            .env
            .models
            .complete(&self.chain(), &request, &ctx)
            .await;
        match &reply {
            Ok(_) => deltas.end(),
            Err(_) => deltas.abandon(),
        }
        reply
    }

    /// One tool call of a model turn, from intent to escalation.
    async fn step(&mut self, call: &ToolCallRequest) -> Result<After, SessionError> {
        let key = call.id.clone();
        if let Some(outcome) = self.progress.outcomes.get(&key).cloned() {
            let route = self.progress.routes.get(&key).cloned().unwrap_or_default();
            return self.after_outcome(call, &outcome, &route).await;
        }
        let interrupted = self.progress.intents.contains_key(&key);
        let approved = self
            .progress
            .decisions
            .get(&key)
            .is_some_and(|d| d.option.as_deref() == Some(APPROVE));
        // Started by an earlier incarnation in this process: still running
        // or finished, its outcome is the outcome (the restart of a
        // session does not cancel work, and its intent may not even be
        // committed yet).
        if let Some(rx) = self.in_flight.get(self.session, self.message.seq, &key) {
            let ran = wait_ran(rx).await;
            return self.settle(call, ran, approved).await;
        }
        if interrupted {
            if !approved && self.progress.escalations.contains_key(&key) {
                // Blocked and waiting for a human when the session
                // restarted: resume the wait.
                let blocked = ToolOutcome::blocked(format!(
                    "`{}` was refused by policy and needs a human's approval",
                    call.name
                ));
                return self.blocked(call, blocked).await;
            }
            if !self.idempotent(&call.name) {
                let outcome = ToolOutcome::from_code(
                    ErrorCode::Interrupted,
                    format!(
                        "hale restarted while `{}` was running; it may or may not have taken \
                         effect, and it was not run again because it is not idempotent",
                        call.name
                    ),
                )
                .delivered();
                self.emit_outcome(call, &outcome);
                self.record_outcome(call, &outcome).await?;
                return self.after_outcome(call, &outcome, &Route::default()).await;
            }
        }
        if self.budget.remaining() == 0
            && let After::Stop(error) = self.budget_spent(&key).await?
        {
            return Ok(After::Stop(error));
        }
        let _ = self.budget.try_consume();
        let ran = self.call_tool(call).await?;
        self.settle(call, ran, approved).await
    }

    /// Takes a finished call into the message: a blocked one goes to a
    /// human, any other is journaled (if its runner could not) and looked
    /// at for escalation.
    async fn settle(
        &mut self,
        call: &ToolCallRequest,
        ran: Ran,
        approved: bool,
    ) -> Result<After, SessionError> {
        if ran.outcome.status == Status::Blocked && !approved {
            return self.blocked(call, ran.outcome).await;
        }
        if ran.outcome.status == Status::Blocked && !ran.journaled {
            // Approved before a restart, but what finished is the original
            // blocked run (the successor came between the decision and the
            // approved run). A blocked call never ran, so this is its first
            // run, with the grant the human gave.
            let approved_run = self.run_approved(call).await?;
            self.keep(call, &approved_run).await?;
            return self
                .after_outcome(call, &approved_run.outcome, &approved_run.route)
                .await;
        }
        self.keep(call, &ran).await?;
        self.after_outcome(call, &ran.outcome, &ran.route).await
    }

    /// Runs a blocked call a human approved: once, through a one-shot grant
    /// its policy honours. A grant the call did not use (it failed before
    /// the policy check) is withdrawn, so a later identical call is not let
    /// through.
    async fn run_approved(&mut self, call: &ToolCallRequest) -> Result<Ran, SessionError> {
        // The grant is keyed exactly as the tool's policy check keys the
        // call from its context: this session, message, step, tool and
        // arguments. No other call can use it.
        let gate = self.gate(&self.call_key(call), &call.name, &call.arguments);
        self.env.grants.grant(&gate);
        let ran = self.call_tool(call).await;
        self.env.grants.revoke(&gate);
        ran
    }

    /// The gate of a step of this message: what a runtime approval opened
    /// for it is bound to.
    fn gate(&self, step: &str, tool: &str, args: &Value) -> Gate {
        Gate::new(self.session, self.message.seq, step, tool, args)
    }

    /// Records a finished call's outcome in the progress, journaling it
    /// unless its runner already did.
    async fn keep(&mut self, call: &ToolCallRequest, ran: &Ran) -> Result<(), SessionError> {
        if ran.journaled {
            self.progress.apply(Entry::Outcome {
                call: call.id.clone(),
                tool: call.name.clone(),
                outcome: ran.outcome.clone(),
                budget_left: ran.budget_left,
                route: Some(ran.route.clone()),
            });
            Ok(())
        } else {
            self.journal(Entry::Outcome {
                call: call.id.clone(),
                tool: call.name.clone(),
                outcome: ran.outcome.clone(),
                budget_left: self.budget.remaining(),
                route: Some(ran.route.clone()),
            })
            .await
        }
    }

    fn idempotent(&self, tool: &str) -> bool {
        tool == SWITCH_MODEL || self.env.dispatcher.spec(tool).is_some_and(|s| s.idempotent)
    }

    async fn record_outcome(
        &mut self,
        call: &ToolCallRequest,
        outcome: &ToolOutcome,
    ) -> Result<(), SessionError> {
        self.journal(Entry::Outcome {
            call: call.id.clone(),
            tool: call.name.clone(),
            outcome: outcome.clone(),
            budget_left: self.budget.remaining(),
            route: None,
        })
        .await
    }

    fn call_key(&self, call: &ToolCallRequest) -> String {
        format!("{}:{}", self.message.seq, call.id)
    }

    fn emit_outcome(&self, call: &ToolCallRequest, outcome: &ToolOutcome) {
        let mut event = Event::from_outcome(self.source(), EventKind::ToolOutcome, outcome)
            .with_session(self.session.to_owned());
        event.data = json!({
            "tool": call.name,
            "call": self.call_key(call),
            "outcome": event.data,
        });
        self.env.sink.emit(event);
    }

    /// Runs a call. Tool calls run in a task of their own that journals
    /// the outcome itself, so killing the session actor does not cancel
    /// them: the next incarnation finds the call in [`InFlight`] and
    /// takes its outcome.
    async fn call_tool(&mut self, call: &ToolCallRequest) -> Result<Ran, SessionError> {
        let intent = Entry::Intent {
            call: call.id.clone(),
            tool: call.name.clone(),
            args: call.arguments.clone(),
        };
        if call.name == SWITCH_MODEL || !self.agent.allows(&call.name) {
            self.journal(intent).await?;
            let outcome = if call.name == SWITCH_MODEL {
                self.switch_model(&call.arguments).await
            } else {
                unknown_tool(&call.name, self.tools.iter().map(|t| t.name.clone()))
            };
            return Ok(Ran::unjournaled(outcome, self.budget.remaining()));
        }
        let ctx = ToolContext {
            iterations: self.budget.clone(),
            ..ToolContext::for_step(self.session, self.message.seq, self.call_key(call))
        };
        let (tx, rx) = watch::channel(None);
        self.in_flight
            .insert(self.session, self.message.seq, &call.id, rx.clone());
        let dispatcher = Arc::clone(&self.env.dispatcher);
        let store = Arc::clone(&self.env.store);
        let budget = Arc::clone(&self.budget);
        let session = self.session.to_owned();
        let seq = self.message.seq;
        let call = call.clone();
        let intent = intent.to_json();
        tokio::spawn(async move {
            // The intent is journaled by the runner, before the call: a
            // session killed at any point after the spawn leaves a call
            // that finishes and records itself; one killed before it leaves
            // nothing started, and the step is simply taken again.
            if let Err(e) = store.journal(session.clone(), seq, intent).await {
                let _ = tx.send(Some(Ran::unjournaled(
                    ToolOutcome::from_code(
                        ErrorCode::Internal,
                        format!("the call was not made: its intent could not be journaled: {e}"),
                    )
                    .undelivered(),
                    budget.remaining(),
                )));
                return;
            }
            let Dispatched { outcome, route } = dispatcher
                .call_routed(&call.name, call.arguments.clone(), &ctx)
                .await;
            let budget_left = budget.remaining();
            // A blocked call is the session's to journal: its outcome
            // depends on a human's decision.
            let journaled = outcome.status != Status::Blocked
                && store
                    .journal(
                        session,
                        seq,
                        Entry::Outcome {
                            call: call.id.clone(),
                            tool: call.name.clone(),
                            outcome: outcome.clone(),
                            budget_left,
                            route: Some(route.clone()),
                        }
                        .to_json(),
                    )
                    .await
                    .is_ok();
            let _ = tx.send(Some(Ran {
                outcome,
                route,
                journaled,
                budget_left,
            }));
        });
        Ok(wait_ran(rx).await)
    }

    async fn switch_model(&mut self, args: &Value) -> ToolOutcome {
        let Some(wanted) = args.get("model").and_then(Value::as_str) else {
            return ToolOutcome::from_code(
                ErrorCode::InvalidInput,
                "switch_model needs {\"model\": \"<configured model name>\"}",
            );
        };
        let model = match self.env.models.resolve(wanted) {
            Ok(model) => model,
            Err(outcome) => return outcome,
        };
        if let Err(e) = self
            .env
            .store
            .set_session_model(self.session.to_owned(), Some(model.clone()))
            .await
        {
            return ToolOutcome::from_code(
                ErrorCode::Internal,
                format!("the switch to `{model}` could not be saved: {e}"),
            );
        }
        self.model = Some(model.clone());
        ToolOutcome::success(json!({ "model": model, "chain": self.chain() }))
    }

    /// A blocked call: ask whether it may run. Approved, it runs exactly
    /// once (a one-shot grant its policy honours); refused, it never runs.
    async fn blocked(
        &mut self,
        call: &ToolCallRequest,
        outcome: ToolOutcome,
    ) -> Result<After, SessionError> {
        let key = call.id.clone();
        let request = ApprovalRequest {
            title: format!("Approval needed: `{}` was blocked by policy", call.name),
            description: format!(
                "The agent asked to run `{}` with {}. {}",
                call.name, call.arguments, outcome.message
            ),
            diagnosis: Diagnosis {
                what: format!("`{}` was refused by a policy before it ran", call.name),
                why: outcome.message.clone(),
                recommendation: "Approve only if this exact call is intended; it will run \
                                 once, exactly as shown."
                    .to_owned(),
                alternatives: vec!["Deny it: the agent is told and continues without it".into()],
                context: json!({"tool": call.name, "args": call.arguments, "outcome": outcome}),
            },
            options: vec![
                option(APPROVE, "Run this call once"),
                option(DENY, "Do not run it"),
            ],
            recommended: Some(DENY.to_owned()),
            severity: Severity::Critical,
            timeout: self.env.settings.approval_timeout,
            default_on_timeout: Some(DENY.to_owned()),
            allow_instructions: true,
            requester: None,
        };
        let decision = self
            .escalate(&key, "blocked", (&call.name, &call.arguments), request)
            .await?;
        if decision.option.as_deref() == Some(APPROVE) {
            let ran = self.run_approved(call).await?;
            self.learn_decision(call, "blocked by policy", &decision)
                .await;
            self.keep(call, &ran).await?;
            return self.after_outcome(call, &ran.outcome, &ran.route).await;
        }
        let result = {
            let mut denied = outcome;
            denied.message = format!(
                "{}; denied by {} (approval {})",
                denied.message,
                decision.by,
                decision_id(&self.progress, &key)
            );
            denied
        };
        self.record_outcome(call, &result).await?;
        self.learn_decision(call, "blocked by policy", &decision)
            .await;
        Ok(After::Continue)
    }

    /// What follows an outcome: escalation for what the model should not
    /// decide alone, the incident lesson for a recovered failure. The
    /// decisions are [`escalation`] of the outcome and its typed route.
    async fn after_outcome(
        &mut self,
        call: &ToolCallRequest,
        outcome: &ToolOutcome,
        route: &Route,
    ) -> Result<After, SessionError> {
        let decided = escalation(outcome, route);
        if let Some((from, to)) = &decided.lesson
            && let Some(learning) = &self.env.learning
        {
            learning.fell_back(self.session, &call.name, from, to).await;
        }
        let Some(reason) = decided.approval else {
            return Ok(After::Continue);
        };
        let breaker_open = reason == ApprovalReason::BreakerOpen;
        let key = call.id.clone();
        if self.progress.decisions.contains_key(&key) {
            return Ok(After::Continue);
        }
        let (reason, options, recommended, why) = if breaker_open {
            (
                "breaker",
                vec![option(RETRY, "Let the agent try again later")],
                RETRY,
                "the endpoint's circuit breaker is open after repeated failures and no \
                 fallback is configured or available"
                    .to_owned(),
            )
        } else {
            (
                "critical",
                vec![option(
                    PROCEED,
                    "Proceed: let the agent continue with this decision",
                )],
                ABORT_OPTION,
                format!(
                    "{} is classified critical (retryable: {}, recoverable: {}): hale does not \
                     retry or work around it without a human",
                    outcome.code.as_ref().map_or("the failure", |c| c.as_str()),
                    outcome.retryable,
                    outcome.recoverable
                ),
            )
        };
        let request = ApprovalRequest {
            title: format!(
                "`{}` failed: {}",
                call.name,
                outcome.code.as_ref().map_or("error", |c| c.as_str())
            ),
            description: format!(
                "The agent called `{}` with {} and got: {}",
                call.name, call.arguments, outcome.message
            ),
            diagnosis: Diagnosis {
                what: outcome.message.clone(),
                why,
                recommendation: format!("Choose `{recommended}`."),
                alternatives: options
                    .iter()
                    .map(|o| o.label.clone())
                    .chain(std::iter::once(
                        "Abort (always available): the agent is told to stop".to_owned(),
                    ))
                    .collect(),
                context: json!({
                    "tool": call.name,
                    "args": call.arguments,
                    "outcome": outcome,
                    "attempts": outcome.extra.get("attempts"),
                }),
            },
            options,
            recommended: Some(recommended.to_owned()),
            severity: Severity::Critical,
            timeout: self.env.settings.approval_timeout,
            default_on_timeout: Some(recommended.to_owned()),
            allow_instructions: true,
            requester: None,
        };
        let decision = self
            .escalate(&key, reason, (&call.name, &call.arguments), request)
            .await?;
        self.learn_decision(call, reason, &decision).await;
        Ok(After::Continue)
    }

    async fn budget_spent(&mut self, key: &str) -> Result<After, SessionError> {
        let budget = self.agent.budget;
        let seq = self.message.seq;
        let limit = LimitReached {
            key: format!("budget-{key}"),
            kind: "budget",
            title: format!("Iteration budget of {budget} tool calls spent"),
            description: format!(
                "The agent used its whole budget of {budget} tool calls (retries and \
                 fallbacks included) on one message without finishing."
            ),
            what: format!("{budget} tool calls used on message {seq}"),
            why: "The task needs more steps than budgeted, or the agent is looping on a \
                  failure it cannot fix.",
            grant_label: "Grant another budget",
            alternative: format!("Grant another {budget} tool calls"),
            context: json!({"message": seq}),
            grant: Entry::BudgetGranted { budget },
            stopped: format!("the iteration budget of {budget} tool calls was spent"),
        };
        let after = self.limit_reached(limit).await?;
        if matches!(after, After::Continue) {
            self.budget.set(budget);
        }
        Ok(after)
    }

    /// A limit of this message is reached (tool calls, model turns,
    /// tokens): a human decides whether it goes on. Continue journals the
    /// grant; stop (recommended, and the default on timeout) fails the
    /// message.
    async fn limit_reached(&mut self, limit: LimitReached) -> Result<After, SessionError> {
        let request = ApprovalRequest {
            title: limit.title,
            description: limit.description,
            diagnosis: Diagnosis {
                what: limit.what,
                why: limit.why.to_owned(),
                recommendation: "Stop unless the recent audit trail shows progress.".to_owned(),
                alternatives: vec![limit.alternative],
                context: limit.context,
            },
            options: vec![
                option(CONTINUE, limit.grant_label),
                option(STOP, "Stop this message"),
            ],
            recommended: Some(STOP.to_owned()),
            severity: Severity::Error,
            timeout: self.env.settings.approval_timeout,
            default_on_timeout: Some(STOP.to_owned()),
            allow_instructions: false,
            requester: None,
        };
        let decision = self
            .escalate(&limit.key, limit.kind, (limit.kind, &Value::Null), request)
            .await?;
        if decision.option.as_deref() == Some(CONTINUE) {
            self.journal(limit.grant).await?;
            Ok(After::Continue)
        } else {
            Ok(After::Stop(format!(
                "{}; stopped by {}",
                limit.stopped, decision.by
            )))
        }
    }

    /// The cap on model turns is reached: like a spent iteration budget, a
    /// human decides whether the message goes on. It bounds a model that
    /// loops without spending its tool budget (calls answered from the
    /// journal, calls it repeats).
    async fn turns_spent(&mut self, turn: u32) -> Result<After, SessionError> {
        let max = self.env.settings.max_turns_per_message;
        let seq = self.message.seq;
        self.limit_reached(LimitReached {
            key: format!("turns-{turn}"),
            kind: "turns",
            title: format!("Turn limit of {max} model turns reached"),
            description: format!(
                "The agent took {turn} model turns on one message without finishing \
                 ([session] max_turns_per_message = {max})."
            ),
            what: format!("{turn} model turns on message {seq}"),
            why: "The task needs more turns than allowed, or the model is looping.",
            grant_label: "Grant more turns",
            alternative: format!("Grant another {max} model turns"),
            context: json!({"message": seq, "turns": turn}),
            grant: Entry::TurnsGranted {
                limit: turn.saturating_add(max),
            },
            stopped: format!("the cap of {max} model turns per message was reached"),
        })
        .await
    }

    /// Opens (or finds again) the approval for step `key`, waits for its
    /// decision without blocking the actor, and journals the decision.
    async fn escalate(
        &mut self,
        key: &str,
        reason: &str,
        gated: (&str, &Value),
        mut request: ApprovalRequest,
    ) -> Result<Resolution, SessionError> {
        // A runtime approval, bound to this step's call by its gate (the
        // session, message, step, tool and arguments), so a restarted
        // session finds an approval it opened but did not journal instead
        // of opening a second one, and nothing the agent opened can pass
        // for it. The step is also in the context, for people.
        let step = format!("{}:{key}", self.message.seq);
        let gate = self.gate(&step, gated.0, gated.1);
        request.requester = Some(self.session.to_owned());
        if let Value::Object(context) = &mut request.diagnosis.context {
            context.insert("step".to_owned(), Value::String(step.clone()));
        }
        let approval = match self.progress.escalations.get(key) {
            Some(id) => id.clone(),
            None => {
                let id = match self.find_approval(&gate).await? {
                    Some(id) => id,
                    None => self.open_approval(request, gate).await?,
                };
                self.journal(Entry::Escalated {
                    key: key.to_owned(),
                    approval: id.clone(),
                    reason: reason.to_owned(),
                })
                .await?;
                id
            }
        };
        self.env
            .store
            .set_message_state(
                self.session.to_owned(),
                self.message.seq,
                MessageState::WaitingApproval,
            )
            .await?;
        let resolution = self.wait_approval(&approval).await?;
        self.env
            .store
            .set_message_state(
                self.session.to_owned(),
                self.message.seq,
                MessageState::Running,
            )
            .await?;
        if self.progress.decisions.contains_key(key) {
            return Ok(resolution);
        }
        self.journal(Entry::Decided {
            key: key.to_owned(),
            approval,
            option: resolution.option.clone(),
            instructions: resolution.instructions.clone(),
        })
        .await?;
        Ok(resolution)
    }

    /// The runtime approval already opened for `gate`, if any. Only the
    /// runtime's own approvals are adopted: an agent's question is never
    /// taken for a gate's decision, whatever it claims in its text.
    async fn find_approval(&self, gate: &Gate) -> Result<Option<String>, SessionError> {
        let all = self
            .retry_escalation(|e| async move { e.list(false).await })
            .await?;
        Ok(all
            .into_iter()
            .find(|a| a.origin == Origin::Runtime && a.gate.as_ref() == Some(gate))
            .map(|a| a.id))
    }

    async fn open_approval(
        &self,
        request: ApprovalRequest,
        gate: Gate,
    ) -> Result<String, SessionError> {
        let escalation = self.env.escalation.clone();
        match escalation.open_gate(request.clone(), gate.clone()).await {
            Ok(approval) => Ok(approval.id),
            Err(EscalationError::Unavailable) => {
                // The actor died after taking the request: it may have been
                // stored. Look before opening a second one.
                if let Some(id) = self.find_approval(&gate).await? {
                    return Ok(id);
                }
                let approval = self
                    .retry_escalation(|e| {
                        let request = request.clone();
                        let gate = gate.clone();
                        async move { e.open_gate(request, gate).await }
                    })
                    .await?;
                Ok(approval.id)
            }
            Err(e) => Err(SessionError::Escalation(e)),
        }
    }

    async fn wait_approval(&self, id: &str) -> Result<Resolution, SessionError> {
        let id = id.to_owned();
        self.retry_escalation(|e| {
            let id = id.clone();
            async move { e.wait(&id).await }
        })
        .await
    }

    /// Escalation calls survive restarts of the escalation actor: an
    /// `Unavailable` answer is retried with a pause, up to a bound.
    async fn retry_escalation<T, F, Fut>(&self, f: F) -> Result<T, SessionError>
    where
        F: Fn(crate::escalation::Escalation) -> Fut,
        Fut: std::future::Future<Output = Result<T, EscalationError>>,
    {
        let mut pause = Duration::from_millis(20);
        let deadline = tokio::time::Instant::now() + self.env.settings.escalation_unavailable;
        loop {
            match f(self.env.escalation.clone()).await {
                Err(EscalationError::Unavailable) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                other => return other.map_err(SessionError::Escalation),
            }
        }
    }

    async fn learn_decision(&self, call: &ToolCallRequest, reason: &str, decision: &Resolution) {
        if let Some(learning) = &self.env.learning {
            let chosen = decision
                .option
                .clone()
                .or_else(|| decision.instructions.clone())
                .unwrap_or_else(|| "no option".to_owned());
            learning
                .decided(
                    self.session,
                    &format!(
                        "`{}` {} ({reason}) needed a human; {} chose `{chosen}`",
                        call.name,
                        short(&call.arguments.to_string(), 80),
                        decision.by
                    ),
                )
                .await;
        }
    }
}

fn decision_id(progress: &Progress, key: &str) -> String {
    progress.escalations.get(key).cloned().unwrap_or_default()
}

fn option(id: &str, label: &str) -> ApprovalOption {
    ApprovalOption {
        id: id.to_owned(),
        label: label.to_owned(),
    }
}

/// Approve a blocked call (it runs once).
pub const APPROVE: &str = "approve";
/// Refuse a blocked call.
pub const DENY: &str = "deny";
/// Let the agent go on after a critical failure.
pub const PROCEED: &str = "proceed";
/// Let the agent try again after an open breaker.
pub const RETRY: &str = "retry";
/// Grant another iteration budget.
pub const CONTINUE: &str = "continue";
/// Stop the message when its budget is spent.
pub const STOP: &str = "stop";
/// Abort (the agent is told and winds down).
pub const ABORT_OPTION: &str = crate::escalation::ABORT;

/// The newest part of MEMORY.md that fits in `limit` bytes: lessons are
/// appended, so the tail is the newest; the cut is said, not silent.
pub(super) fn newest(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    // Start at a line boundary so no lesson is cut in half.
    if let Some(nl) = text[start..].find('\n') {
        start += nl + 1;
    }
    format!(
        "[... {} older bytes of MEMORY.md left out; the newest lessons follow ...]\n{}",
        start,
        &text[start..]
    )
}

fn short(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A lesson line for an incident, dated today (UTC).
pub(super) fn incident_lesson(text: String) -> Lesson {
    let today = Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date();
    Lesson::new("Incidents", text).with_date(today)
}

/// The events of a message's life, for the audit trail.
pub(super) fn message_event(session: &str, source: &str, record: &MessageRecord) -> Event {
    let level = if record.state == MessageState::Failed {
        Level::Warning
    } else {
        Level::Info
    };
    Event::new(
        level,
        source,
        EventKind::MessageDone,
        format!(
            "message {}:{} {}",
            session,
            record.seq,
            record.state.as_str()
        ),
    )
    .with_session(session.to_owned())
    .with_data(json!({
        "message": format!("{}:{}", session, record.seq),
        "state": record.state.as_str(),
        "error": record.error,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_keeps_the_tail_at_a_line_boundary_and_says_so() {
        let text = "# MEMORY\n- old lesson\n- newer lesson\n- newest lesson\n";
        assert_eq!(newest(text, 1000), text);
        let cut = newest(text, 20);
        assert!(cut.starts_with("[... "));
        assert!(cut.ends_with("- newest lesson\n"));
        assert!(!cut.contains("old lesson\n- newer"));
    }

    #[test]
    fn the_budget_never_goes_below_zero() {
        let b = MessageBudget::new(1);
        assert!(b.try_consume());
        assert!(!b.try_consume());
        assert_eq!(b.remaining(), 0);
    }
}
