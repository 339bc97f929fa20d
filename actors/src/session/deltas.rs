//! A model reply's text while it streams in, for whoever watches
//! `/v1/events`.
//!
//! A long reply should not be one long silence; but the pieces a model
//! streams are not audit events: there are hundreds per reply, they are
//! void when the attempt fails half-way, and the final reply is journaled
//! anyway. So they take a road of their own: [`Deltas`] is a broadcast,
//! never stored, that a slow reader simply falls behind on (the broadcast
//! drops what it has not read). One request's [`MessageDeltas`] (the
//! [`DeltaSink`] a session puts on its model request) tags the pieces
//! with session, message, turn and attempt, and applies two policies,
//! both plain values driven by pure functions here:
//!
//! - [`HeldBack`]: secrets are masked by the runtime's [`Redactor`] over a
//!   window that holds back the tail of the text seen so far (the longest
//!   known secret less one byte, at least [`PATTERN_WINDOW`]), so a
//!   secret split across two pieces is whole when it is masked. A
//!   secret found by pattern (an `sk-...` key, `password=...`) longer
//!   than the window may leak its end; exact known values never do.
//! - [`Merge`]: at most [`MAX_DELTAS_PER_SECOND`] deltas per message are
//!   sent, pieces that arrive in between are merged into the next.
//!
//! Attempt `n > 1` of a turn first publishes a [`DeltaEvent::Reset`]:
//! the text of the earlier attempt is void.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::audit::Redactor;
use crate::model::DeltaSink;

/// The most deltas sent per second for one message.
pub const MAX_DELTAS_PER_SECOND: usize = 20;

/// The least a redaction window holds back, for secrets found by pattern
/// (an API key, a `password=` value) rather than by exact value.
pub const PATTERN_WINDOW: usize = 128;

/// How many deltas the broadcast keeps for a reader that is behind;
/// beyond that the reader misses the oldest.
pub const DELTA_CHANNEL_CAPACITY: usize = 1024;

/// Where a delta belongs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeltaTag {
    /// The session.
    pub session: String,
    /// The message's position in the session's inbox.
    pub message: u64,
    /// The model turn of the message (from 0).
    pub turn: u32,
    /// The attempt of the turn (from 1).
    pub attempt: u32,
}

/// What `/v1/events` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaEvent {
    /// A piece of the reply's text (`message.delta`).
    Text {
        /// Where it belongs.
        tag: DeltaTag,
        /// The text, secrets masked.
        text: String,
    },
    /// The text of the turn's earlier attempts is void
    /// (`message.delta.reset`); `tag.attempt` is the new attempt.
    Reset(DeltaTag),
}

impl DeltaEvent {
    /// The session it belongs to.
    pub fn session(&self) -> &str {
        match self {
            DeltaEvent::Text { tag, .. } | DeltaEvent::Reset(tag) => &tag.session,
        }
    }
}

/// The text seen but not yet released, masked as a whole each time, so a
/// secret split across pieces is masked once it is complete.
#[derive(Debug, Default, Clone)]
pub struct HeldBack {
    pending: String,
}

impl HeldBack {
    /// Adds `piece` and returns what may be released: all of the masked
    /// text but its last `hold` bytes (cut back to a character boundary).
    pub fn push(
        &mut self,
        piece: &str,
        hold: usize,
        redact: impl Fn(&str) -> Cow<'_, str>,
    ) -> String {
        self.pending.push_str(piece);
        let masked = redact(&self.pending).into_owned();
        let mut cut = masked.len().saturating_sub(hold);
        while !masked.is_char_boundary(cut) {
            cut -= 1;
        }
        let (released, kept) = masked.split_at(cut);
        let released = released.to_owned();
        self.pending = kept.to_owned();
        released
    }

    /// Everything still held, masked: the text has ended.
    pub fn finish(&mut self, redact: impl Fn(&str) -> Cow<'_, str>) -> String {
        let masked = redact(&self.pending).into_owned();
        self.pending.clear();
        masked
    }

    /// Forgets what is held (the attempt it belonged to failed).
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

/// Merges released text into at most [`MAX_DELTAS_PER_SECOND`] sends a
/// second: one send at least every `1 s / MAX` while text streams, and
/// never more than MAX in any second (the final send, made as soon as
/// that allows, included).
#[derive(Debug, Default, Clone)]
pub struct Merge {
    pending: String,
    /// When the last sends were made, oldest first (at most MAX).
    sent: VecDeque<Instant>,
}

/// The spacing of sends while text streams.
const SPACING: Duration = Duration::from_millis(1000 / MAX_DELTAS_PER_SECOND as u64);
const SECOND: Duration = Duration::from_secs(1);

impl Merge {
    /// Adds `text` to what is pending.
    pub fn push(&mut self, text: &str) {
        self.pending.push_str(text);
    }

    /// Whether text is pending.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// When the pending text may go: now or later; `None` when nothing
    /// is pending. `last` says the text has ended (no spacing is kept
    /// for more to come, only the per-second bound).
    pub fn due_at(&self, now: Instant, last: bool) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        let mut at = now;
        if !last && let Some(previous) = self.sent.back() {
            at = at.max(*previous + SPACING);
        }
        if self.sent.len() >= MAX_DELTAS_PER_SECOND
            && let Some(oldest) = self.sent.front()
        {
            at = at.max(*oldest + SECOND);
        }
        Some(at)
    }

    /// The pending text, if it may go at `now` (the send is counted).
    pub fn take(&mut self, now: Instant, last: bool) -> Option<String> {
        let due = self.due_at(now, last)?;
        if due > now {
            return None;
        }
        self.sent.push_back(now);
        while self.sent.len() > MAX_DELTAS_PER_SECOND {
            self.sent.pop_front();
        }
        Some(std::mem::take(&mut self.pending))
    }

    /// Forgets what is pending (its attempt failed).
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

/// The broadcast of every session's deltas. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Deltas {
    tx: broadcast::Sender<DeltaEvent>,
    redactor: Arc<Redactor>,
    /// Per session, the turn last asked for and how many requests were
    /// made for it: a turn asked again (the session's own retry, or a
    /// restarted session) continues the attempt count, so its reset is
    /// shown. One entry per session.
    asks: Arc<dashmap::DashMap<String, (u64, u32, u32)>>,
}

impl Deltas {
    /// A broadcast whose text is masked by `redactor`.
    pub fn new(redactor: Arc<Redactor>) -> Self {
        let (tx, _) = broadcast::channel(DELTA_CHANNEL_CAPACITY);
        Self {
            tx,
            redactor,
            asks: Arc::default(),
        }
    }

    /// The deltas from now on; a reader that falls more than
    /// [`DELTA_CHANNEL_CAPACITY`] behind misses the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<DeltaEvent> {
        self.tx.subscribe()
    }

    /// Forgets what `session` asked for (its attempt count), when the
    /// session is deleted: the entry would otherwise outlive it.
    pub fn forget(&self, session: &str) {
        self.asks.remove(session);
    }

    /// The sink of one model turn's request.
    /// A turn asked for again (the same session, message and turn as the
    /// last sink made) continues the attempt count: its attempt `n` is
    /// the `n`-th of this request after the earlier requests' attempts
    /// (one each, or as many as [`DeltaSink::attempt`] said).
    pub fn sink(&self, session: &str, message: u64, turn: u32) -> Arc<MessageDeltas> {
        let base = {
            let mut asks = self
                .asks
                .entry(session.to_owned())
                .or_insert((message, turn, 0));
            if (asks.0, asks.1) != (message, turn) {
                *asks = (message, turn, 0);
            }
            let base = asks.2;
            asks.2 = asks.2.saturating_add(1);
            base
        };
        Arc::new(MessageDeltas {
            inner: Arc::new(Inner {
                asks: Arc::clone(&self.asks),
                tx: self.tx.clone(),
                redactor: Arc::clone(&self.redactor),
                state: Mutex::new(State {
                    tag: DeltaTag {
                        session: session.to_owned(),
                        message,
                        turn,
                        attempt: base.saturating_add(1),
                    },
                    base,
                    announced: 1,
                    held: HeldBack::default(),
                    merge: Merge::default(),
                    ended: false,
                    timer: false,
                }),
            }),
        })
    }
}

#[derive(Debug)]
struct State {
    tag: DeltaTag,
    /// Attempts made for this turn before this request.
    base: u32,
    /// The attempt whose reset has been published (1: none is needed).
    announced: u32,
    held: HeldBack,
    merge: Merge,
    /// The text has ended: what is held is released.
    ended: bool,
    /// A task is armed to send what is pending when it is due.
    timer: bool,
}

#[derive(Debug)]
struct Inner {
    asks: Arc<dashmap::DashMap<String, (u64, u32, u32)>>,
    tx: broadcast::Sender<DeltaEvent>,
    redactor: Arc<Redactor>,
    state: Mutex<State>,
}

impl Inner {
    fn hold(&self) -> usize {
        self.redactor
            .longest_known()
            .saturating_sub(1)
            .max(PATTERN_WINDOW)
    }

    /// Publishes the reset of the current attempt, once, if it is not
    /// the first.
    fn announce(&self, state: &mut State) {
        if state.tag.attempt > state.announced {
            state.announced = state.tag.attempt;
            let _ = self.tx.send(DeltaEvent::Reset(state.tag.clone()));
        }
    }

    /// Sends what is due now; arms a timer for what is due later.
    fn flush(self: &Arc<Self>, state: &mut State) {
        let now = Instant::now();
        if let Some(text) = state.merge.take(now, state.ended) {
            let _ = self.tx.send(DeltaEvent::Text {
                tag: state.tag.clone(),
                text,
            });
        }
        let Some(at) = state.merge.due_at(now, state.ended) else {
            return;
        };
        if state.timer {
            return;
        }
        // Not inside a runtime (a test calling the sink by hand): the
        // text waits for the next piece or the end.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        state.timer = true;
        let inner = Arc::clone(self);
        runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut state = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.timer = false;
            inner.flush(&mut state);
        });
    }
}

/// One model turn's [`DeltaSink`]: tags, masks, merges and publishes.
#[derive(Debug, Clone)]
pub struct MessageDeltas {
    inner: Arc<Inner>,
}

impl MessageDeltas {
    /// The text has ended (the request returned): what is held back is
    /// masked and sent, as soon as the rate allows.
    pub fn end(&self) {
        let mut state = self.lock();
        if state.ended {
            return;
        }
        state.ended = true;
        let inner = &self.inner;
        let rest = state.held.finish(|t| inner.redactor.redact_str(t));
        state.merge.push(&rest);
        inner.flush(&mut state);
    }

    /// The request failed: what is held back or pending is void, never
    /// sent (the next attempt's reset voids what was).
    pub fn abandon(&self) {
        let mut state = self.lock();
        state.ended = true;
        state.held.clear();
        state.merge.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl DeltaSink for MessageDeltas {
    fn attempt(&self, attempt: u32) {
        let mut state = self.lock();
        state.tag.attempt = state.base.saturating_add(attempt);
        // The turn's attempts so far, for a request that asks it again.
        if let Some(mut asks) = self.inner.asks.get_mut(&state.tag.session)
            && (asks.0, asks.1) == (state.tag.message, state.tag.turn)
        {
            asks.2 = asks.2.max(state.tag.attempt);
        }
        state.held.clear();
        state.merge.clear();
        state.ended = false;
        self.inner.announce(&mut state);
    }

    fn text(&self, piece: &str) {
        let mut state = self.lock();
        if state.ended {
            return;
        }
        self.inner.announce(&mut state);
        let inner = &self.inner;
        let hold = inner.hold();
        let released = state
            .held
            .push(piece, hold, |t| inner.redactor.redact_str(t));
        state.merge.push(&released);
        inner.flush(&mut state);
    }
}

#[cfg(test)]
mod tests {

    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::secrets::KnownSecrets;

    const SECRET: &str = "hunter2-very-secret-value";

    fn redactor() -> Arc<Redactor> {
        Arc::new(Redactor::with_known(KnownSecrets::from_values([SECRET])).unwrap())
    }

    /// The text released for `pieces`, held back by the redactor's window.
    fn released(r: &Redactor, pieces: &[&str], hold: usize) -> String {
        let mut held = HeldBack::default();
        let mut out = String::new();
        for piece in pieces {
            out.push_str(&held.push(piece, hold, |t| r.redact_str(t)));
        }
        out.push_str(&held.finish(|t| r.redact_str(t)));
        out
    }

    #[test]
    fn a_secret_split_across_pieces_is_masked_at_every_split() {
        let text = format!("the key is {SECRET}, keep it safe");
        let hold = SECRET.len() - 1;
        let r = redactor();
        for a in 1..text.len() {
            for b in a + 1..text.len() {
                if !(text.is_char_boundary(a) && text.is_char_boundary(b)) {
                    continue;
                }
                let out = released(&r, &[&text[..a], &text[a..b], &text[b..]], hold);
                assert!(!out.contains("hunter2"), "cut {a}/{b}: {out}");
                assert_eq!(out, "the key is [REDACTED], keep it safe");
            }
        }
    }

    #[test]
    fn without_the_window_a_split_secret_leaks() {
        // The window is what masks it: with none, the first half goes out.
        let text = format!("key {SECRET} end");
        let out = released(&redactor(), &[&text[..10], &text[10..]], 0);
        assert!(out.contains("hunter2"), "{out}");
    }

    #[test]
    fn held_back_text_is_cut_at_a_char_boundary() {
        let r = redactor();
        let mut held = HeldBack::default();
        let out = held.push("ééé", 3, |t| r.redact_str(t));
        assert_eq!(out, "é");
        assert_eq!(held.finish(|t| r.redact_str(t)), "éé");
    }

    #[test]
    fn merge_sends_at_most_twenty_a_second_and_loses_nothing() {
        let start = Instant::now();
        let mut merge = Merge::default();
        let mut sends: Vec<(Instant, String)> = Vec::new();
        let mut expected = String::new();
        // A piece every millisecond for 3 s.
        for ms in 0..3000u64 {
            let now = start + Duration::from_millis(ms);
            let piece = format!("{ms},");
            expected.push_str(&piece);
            merge.push(&piece);
            if let Some(text) = merge.take(now, false) {
                sends.push((now, text));
            }
        }
        let end = start + Duration::from_millis(3000);
        let mut now = end;
        loop {
            match merge.take(now, true) {
                Some(text) => {
                    sends.push((now, text));
                    break;
                }
                None => now = merge.due_at(now, true).unwrap(),
            }
        }
        let all: String = sends.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(all, expected);
        for (i, (at, _)) in sends.iter().enumerate() {
            let in_window = sends[i..]
                .iter()
                .take_while(|(t, _)| *t < *at + SECOND)
                .count();
            assert!(
                in_window <= MAX_DELTAS_PER_SECOND,
                "{in_window} sends within 1 s"
            );
        }
        // Merged, not dropped: far fewer sends than pieces, but steady.
        assert!(sends.len() >= 60 && sends.len() <= 61, "{}", sends.len());
    }

    #[test]
    fn the_last_send_waits_only_for_the_per_second_bound() {
        let start = Instant::now();
        let mut merge = Merge::default();
        merge.push("a");
        assert!(merge.take(start, false).is_some());
        merge.push("b");
        // Within the spacing: not while text streams, yes once it ended.
        assert!(
            merge
                .take(start + Duration::from_millis(1), false)
                .is_none()
        );
        assert_eq!(
            merge
                .take(start + Duration::from_millis(1), true)
                .as_deref(),
            Some("b")
        );
        // Twenty sends in the last second: the last one waits for the
        // oldest to leave the window.
        let mut merge = Merge::default();
        for i in 0..20u64 {
            merge.push("x");
            let at = start + Duration::from_millis(50 * i);
            assert!(merge.take(at, false).is_some(), "send {i}");
        }
        merge.push("end");
        let late = start + Duration::from_millis(960);
        assert_eq!(merge.take(late, true), None);
        assert_eq!(merge.due_at(late, true), Some(start + SECOND));
        assert_eq!(merge.take(start + SECOND, true).as_deref(), Some("end"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_asked_again_continues_the_attempt_count_and_resets() {
        let deltas = Deltas::new(redactor());
        let mut rx = deltas.subscribe();
        let first = deltas.sink("s1", 1, 0);
        first.text("cut sho");
        first.abandon();
        let again = deltas.sink("s1", 1, 0);
        again.text("whole");
        again.end();
        let tag = |attempt| DeltaTag {
            session: "s1".into(),
            message: 1,
            turn: 0,
            attempt,
        };
        let next = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await;
        assert_eq!(next.expect("a reset").unwrap(), DeltaEvent::Reset(tag(2)));
        assert_eq!(
            rx.recv().await.unwrap(),
            DeltaEvent::Text {
                tag: tag(2),
                text: "whole".into()
            }
        );
        // The next turn starts at attempt 1 again: no reset.
        let next = deltas.sink("s1", 1, 1);
        next.text("next");
        next.end();
        match rx.recv().await.unwrap() {
            DeltaEvent::Text { tag: t, text } => {
                assert_eq!((t.turn, t.attempt, text.as_str()), (1, 1, "next"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deltas_are_tagged_merged_and_a_retry_resets() {
        let deltas = Deltas::new(redactor());
        let mut rx = deltas.subscribe();
        let sink = deltas.sink("s1", 3, 2);
        sink.attempt(1);
        sink.text("half an ans");
        sink.attempt(2);
        for piece in ["the ", "whole ", "answer"] {
            sink.text(piece);
        }
        sink.end();
        let mut events = Vec::new();
        // The held text goes once the rate allows (paused time runs on).
        while events.len() < 2 || !matches!(events.last(), Some(DeltaEvent::Text { .. })) {
            let next = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await;
            events.push(next.expect("an event in time").unwrap());
        }
        let tag = |attempt| DeltaTag {
            session: "s1".into(),
            message: 3,
            turn: 2,
            attempt,
        };
        assert_eq!(events[0], DeltaEvent::Reset(tag(2)));
        let text: String = events[1..]
            .iter()
            .map(|e| match e {
                DeltaEvent::Text { tag: t, text } => {
                    assert_eq!(*t, tag(2));
                    text.clone()
                }
                DeltaEvent::Reset(_) => panic!("a second reset"),
            })
            .collect();
        assert_eq!(text, "the whole answer");
    }

    #[test]
    fn a_deleted_session_leaves_no_entry_behind() {
        let deltas = Deltas::new(redactor());
        drop(deltas.sink("s1", 1, 1));
        drop(deltas.sink("s2", 1, 1));
        assert_eq!(deltas.asks.len(), 2);
        deltas.forget("s1");
        assert_eq!(deltas.asks.len(), 1);
        assert!(deltas.asks.get("s1").is_none());
    }
}
