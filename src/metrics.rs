//! Counters for operators, fed by the same event stream as the audit
//! trail.
//!
//! A dashboard that disagrees with the audit trail is worse than none, so
//! the counters are not kept by the components: every event on its way to
//! the audit trail passes through [`EventTap`], which counts it and hands
//! it to live subscribers (`/v1/events`). What is counted is exactly what
//! was recorded, and nothing on the hot path does more than an atomic add
//! and a channel send that never blocks.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use hale_actors::audit::Redactor;
use hale_actors::event::{Event, EventKind, EventSink, Level};
use tokio::sync::broadcast;

/// A gauge to render: name, help, and (labels, value) samples.
pub type Gauge<'a> = (&'a str, &'a str, Vec<(String, f64)>);

/// Counters derived from events.
#[derive(Debug, Default)]
pub struct Metrics {
    tool_calls: DashMap<String, AtomicU64>,
    model_calls: DashMap<String, AtomicU64>,
    retries: AtomicU64,
    fallbacks: AtomicU64,
    restarts: AtomicU64,
    escalations: AtomicU64,
    messages: DashMap<String, AtomicU64>,
    messages_received: AtomicU64,
    events: AtomicU64,
    /// Sessions stalled on their journal: `session_stalled` minus
    /// `session_resumed` events (each stall has one of each).
    stalled: AtomicU64,
}

impl Metrics {
    fn bump(map: &DashMap<String, AtomicU64>, key: &str) {
        if let Some(counter) = map.get(key) {
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        }
        map.entry(key.to_owned())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one event.
    pub fn count(&self, event: &Event) {
        self.events.fetch_add(1, Ordering::Relaxed);
        match &event.kind {
            EventKind::ToolOutcome => {
                let code = match &event.code {
                    Some(code) => code.as_str().to_owned(),
                    None => event.data["status"]
                        .as_str()
                        .unwrap_or("success")
                        .to_owned(),
                };
                // Model endpoints report their turns with the same kind,
                // under `model/<name>`.
                if event.source.starts_with("model/") {
                    Self::bump(&self.model_calls, &code);
                } else {
                    Self::bump(&self.tool_calls, &code);
                }
            }
            EventKind::Retry => {
                self.retries.fetch_add(1, Ordering::Relaxed);
            }
            EventKind::Fallback => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
            }
            EventKind::ChildRestarted => {
                self.restarts.fetch_add(1, Ordering::Relaxed);
            }
            EventKind::EscalationOpened => {
                self.escalations.fetch_add(1, Ordering::Relaxed);
            }
            EventKind::MessageReceived => {
                self.messages_received.fetch_add(1, Ordering::Relaxed);
            }
            EventKind::MessageDone => {
                let state = event.data["state"].as_str().unwrap_or("done");
                Self::bump(&self.messages, state);
            }
            EventKind::SessionStalled => {
                self.stalled.fetch_add(1, Ordering::Relaxed);
            }
            EventKind::SessionResumed => {
                let _ = self
                    .stalled
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
            _ => {}
        }
    }

    /// Tool outcomes by code (`success` for successes).
    pub fn tool_calls(&self) -> BTreeMap<String, u64> {
        self.tool_calls
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect()
    }

    /// Retries made.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Fallbacks taken.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Restarts by supervisors.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Messages finished, by final state.
    pub fn messages_finished(&self) -> BTreeMap<String, u64> {
        self.messages
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect()
    }

    /// Messages received.
    pub fn messages_received(&self) -> u64 {
        self.messages_received.load(Ordering::Relaxed)
    }

    /// Sessions stalled now (their journal cannot be written).
    pub fn sessions_stalled(&self) -> u64 {
        self.stalled.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of these counters plus the gauges
    /// given (name, help, value).
    pub fn render(&self, gauges: &[Gauge<'_>]) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        counter(
            "hale_tool_calls_total",
            "Tool call outcomes (each attempt), by outcome code.",
            self.tool_calls()
                .into_iter()
                .map(|(code, n)| (format!("{{code=\"{}\"}}", escape(&code)), n))
                .collect(),
        );
        counter(
            "hale_model_calls_total",
            "Model turns (each attempt), by outcome code.",
            self.model_calls
                .iter()
                .map(|e| {
                    (
                        format!("{{code=\"{}\"}}", escape(e.key())),
                        e.value().load(Ordering::Relaxed),
                    )
                })
                .collect(),
        );
        counter(
            "hale_retries_total",
            "Retries made by the recovery policy.",
            vec![(String::new(), self.retries())],
        );
        counter(
            "hale_fallbacks_total",
            "Calls routed to a fallback.",
            vec![(String::new(), self.fallbacks())],
        );
        counter(
            "hale_restarts_total",
            "Actor restarts by their supervisors.",
            vec![(String::new(), self.restarts())],
        );
        counter(
            "hale_escalations_total",
            "Approvals opened.",
            vec![(String::new(), self.escalations.load(Ordering::Relaxed))],
        );
        counter(
            "hale_messages_received_total",
            "Messages stored in session inboxes.",
            vec![(String::new(), self.messages_received())],
        );
        counter(
            "hale_messages_finished_total",
            "Messages finished, by final state.",
            self.messages_finished()
                .into_iter()
                .map(|(state, n)| (format!("{{state=\"{}\"}}", escape(&state)), n))
                .collect(),
        );
        counter(
            "hale_events_total",
            "Events emitted to the audit trail.",
            vec![(String::new(), self.events.load(Ordering::Relaxed))],
        );
        let _ = writeln!(
            out,
            "# HELP hale_sessions_stalled Sessions whose journal cannot be written (disk full), \
             waiting to retry.\n# TYPE hale_sessions_stalled gauge\nhale_sessions_stalled {}",
            self.sessions_stalled()
        );
        for (name, help, samples) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        }
        out
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The sink in front of the audit trail: counts, publishes, forwards.
pub struct EventTap {
    inner: Arc<dyn EventSink>,
    metrics: Arc<Metrics>,
    live: broadcast::Sender<Event>,
    redactor: Option<Arc<Redactor>>,
}

impl std::fmt::Debug for EventTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventTap").finish_non_exhaustive()
    }
}

impl EventTap {
    /// A tap in front of `inner`.
    pub fn new(inner: Arc<dyn EventSink>) -> Self {
        let (live, _) = broadcast::channel(4096);
        Self {
            inner,
            metrics: Arc::new(Metrics::default()),
            live,
            redactor: None,
        }
    }

    /// Masks secrets in every event streamed to live subscribers
    /// (`/v1/events`). The audit trail redacts what it stores itself, in
    /// batches off the emitting path; the live copy is redacted here, and
    /// only while someone is subscribed.
    #[must_use]
    pub fn with_redactor(mut self, redactor: Arc<Redactor>) -> Self {
        self.redactor = Some(redactor);
        self
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Events as they are emitted. A subscriber that falls behind by more
    /// than the channel holds is told how many it missed.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}

impl EventSink for EventTap {
    fn emit(&self, event: Event) {
        if !self.inner.enabled(event.level) {
            return;
        }
        self.metrics.count(&event);
        if self.live.receiver_count() > 0 {
            let mut live = event.clone();
            if let Some(redactor) = &self.redactor {
                redactor.redact_event(&mut live);
            }
            let _ = self.live.send(live);
        }
        self.inner.emit(event);
    }

    fn enabled(&self, level: Level) -> bool {
        self.inner.enabled(level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hale_actors::event::MemorySink;

    #[test]
    fn counts_what_it_forwards_and_renders_prometheus_text() {
        let inner = Arc::new(MemorySink::new());
        let tap = EventTap::new(inner.clone());
        tap.emit(Event::new(Level::Info, "x", EventKind::Retry, "r"));
        tap.emit(
            Event::new(Level::Info, "x", EventKind::MessageDone, "m")
                .with_data(serde_json::json!({"state": "done"})),
        );
        assert_eq!(inner.len(), 2);
        assert_eq!(tap.metrics().retries(), 1);
        let text = tap.metrics().render(&[(
            "hale_sessions",
            "Live sessions.",
            vec![(String::new(), 3.0)],
        )]);
        assert!(text.contains("hale_retries_total 1"));
        assert!(text.contains("hale_messages_finished_total{state=\"done\"} 1"));
        assert!(text.contains("# TYPE hale_sessions gauge\nhale_sessions 3"));
    }
}
