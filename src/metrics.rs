//! Counters for operators, fed by the same event stream as the audit
//! trail.
//!
//! A dashboard that disagrees with the audit trail is worse than none, so
//! the counters are not kept by the components: every event on its way to
//! the audit trail passes through [`EventTap`], which counts it and hands
//! it to live subscribers (`/v1/events`). What is counted is exactly what
//! was recorded, and nothing on the hot path does more than an atomic add
//! and a channel send that never blocks.
//!
//! A scrape must cost the same with ten sessions or a million (`/metrics`
//! needs no token), so it never walks rows: counters and the gauges kept
//! from events ([`KeyedGauges`]) are read as they are, and what only the
//! store knows (live sessions, open approvals) is read in one counting
//! query at most once per `[serve] metrics_refresh` and reused
//! ([`Cached`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use hale_actors::audit::Redactor;
use hale_actors::event::{Event, EventKind, EventSink, Level};
use tokio::sync::broadcast;

/// The kinds of `hale_model_tokens_total`, as `model_usage` events name
/// them (`<kind>_tokens`).
const TOKEN_KINDS: [&str; 3] = ["prompt", "completion", "cached"];

/// A gauge to render: name, help, and (labels, value) samples.
pub type Gauge<'a> = (&'a str, &'a str, Vec<(String, f64)>);

/// Counters derived from events.
#[derive(Debug, Default)]
pub struct Metrics {
    tool_calls: DashMap<String, AtomicU64>,
    model_calls: DashMap<String, AtomicU64>,
    /// Tokens by (model, kind), from `model_usage` events.
    model_tokens: DashMap<(String, &'static str), AtomicU64>,
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
    gauges: KeyedGauges,
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
            EventKind::ModelUsage => self.count_tokens(event),
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

    /// Adds a `model_usage` event's tokens to its model's counters.
    fn count_tokens(&self, event: &Event) {
        let Some(model) = event.data["model"].as_str() else {
            return;
        };
        for kind in TOKEN_KINDS {
            let n = event.data[format!("{kind}_tokens")].as_u64().unwrap_or(0);
            if let Some(counter) = self.model_tokens.get(&(model.to_owned(), kind)) {
                counter.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            self.model_tokens
                .entry((model.to_owned(), kind))
                .or_default()
                .fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Tokens the models reported, by (model, kind): `prompt`,
    /// `completion`, `cached` (cached tokens are part of the prompt).
    pub fn model_tokens(&self) -> BTreeMap<(String, String), u64> {
        self.model_tokens
            .iter()
            .map(|e| {
                let (model, kind) = e.key();
                (
                    (model.clone(), (*kind).to_owned()),
                    e.value().load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// The gauges kept from events.
    pub fn gauges(&self) -> &KeyedGauges {
        &self.gauges
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
            "hale_model_tokens_total",
            "Tokens the models reported, by model and kind (prompt, completion, cached; \
             cached tokens are part of the prompt).",
            self.model_tokens()
                .into_iter()
                .map(|((model, kind), n)| {
                    (
                        format!("{{model=\"{}\",kind=\"{kind}\"}}", escape(&model)),
                        n,
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
        self.gauges.render(&mut out);
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

/// The gauges kept from events. Each is a set of keys (an endpoint, a
/// session), each key in at most one state; the gauge counts the keys in
/// each state. An event moves one key ([`gauge_move`]), so a scrape reads
/// a handful of numbers however many keys there are.
#[derive(Debug, Default)]
pub struct KeyedGauges {
    inner: Mutex<HashMap<GaugeId, KeyedGauge>>,
}

/// A gauge kept from events. To add one (say, sessions whose journal
/// cannot be written): a variant here, its name, help and states in
/// [`GaugeId::spec`], and an arm in [`gauge_move`] mapping its events to
/// a key and a state (`None` when the key leaves the gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GaugeId {
    /// Endpoints (tools, MCP servers, models, web hosts) whose breaker
    /// is not closed, by state.
    Breakers,
}

/// How a gauge is rendered: name, help, label, and the states always
/// shown (at 0 too).
pub type GaugeSpec = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

impl GaugeId {
    /// Every gauge, in rendering order.
    pub const ALL: &'static [Self] = &[Self::Breakers];

    /// Its name, help, label, and the states always rendered.
    pub fn spec(self) -> GaugeSpec {
        match self {
            Self::Breakers => (
                "hale_breakers",
                "Endpoints whose circuit breaker is not closed, by state.",
                "state",
                &["open", "half_open"],
            ),
        }
    }
}

/// One key entering a state of a gauge, or leaving it (`state: None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaugeMove {
    /// The gauge.
    pub gauge: GaugeId,
    /// What moved (an endpoint, a session).
    pub key: String,
    /// Its state from now on; `None`: no longer counted.
    pub state: Option<String>,
}

/// How an event moves the gauges: the one place that maps events to
/// gauge states.
pub fn gauge_move(event: &Event) -> Option<GaugeMove> {
    match &event.kind {
        EventKind::Breaker => {
            let to = event.data["to"].as_str()?;
            Some(GaugeMove {
                gauge: GaugeId::Breakers,
                key: event.source.clone(),
                state: (to != "closed").then(|| to.to_owned()),
            })
        }
        _ => None,
    }
}

#[derive(Debug, Default)]
struct KeyedGauge {
    state_of: HashMap<String, String>,
    counts: BTreeMap<String, u64>,
}

impl KeyedGauge {
    fn apply(&mut self, key: String, state: Option<String>) {
        let old = match &state {
            Some(state) => self.state_of.insert(key, state.clone()),
            None => self.state_of.remove(&key),
        };
        if let Some(old) = old
            && let Some(n) = self.counts.get_mut(&old)
        {
            *n = n.saturating_sub(1);
        }
        if let Some(state) = state {
            *self.counts.entry(state).or_default() += 1;
        }
    }
}

impl KeyedGauges {
    /// Moves the gauges as `event` says.
    pub fn apply(&self, event: &Event) {
        if let Some(m) = gauge_move(event) {
            self.inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(m.gauge)
                .or_default()
                .apply(m.key, m.state);
        }
    }

    /// Keys of `gauge` in `state` now.
    pub fn get(&self, gauge: GaugeId, state: &str) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&gauge)
            .and_then(|g| g.counts.get(state).copied())
            .unwrap_or(0)
    }

    fn render(&self, out: &mut String) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for id in GaugeId::ALL {
            let (name, help, label, always) = id.spec();
            let mut samples: BTreeMap<&str, u64> = always.iter().map(|s| (*s, 0)).collect();
            if let Some(gauge) = inner.get(id) {
                for (state, n) in &gauge.counts {
                    samples.insert(state, *n);
                }
            }
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (state, n) in samples {
                let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {n}", escape(state));
            }
        }
    }
}

/// Whether a value read at `taken` may still be shown at `now`.
pub fn is_fresh(taken: tokio::time::Instant, now: tokio::time::Instant, refresh: Duration) -> bool {
    now.saturating_duration_since(taken) < refresh
}

/// A value read at most once per `refresh` and shared meanwhile. Readers
/// that come while it is being read wait for that read rather than start
/// their own, so a burst of scrapes costs one read.
#[derive(Debug)]
pub struct Cached<T> {
    refresh: Duration,
    slot: tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<T>)>>,
    loads: AtomicU64,
}

impl<T: Default> Cached<T> {
    /// Nothing read yet; reads at most once per `refresh`.
    pub fn new(refresh: Duration) -> Self {
        Self {
            refresh,
            slot: tokio::sync::Mutex::new(None),
            loads: AtomicU64::new(0),
        }
    }

    /// The value, read with `load` if the last read is older than
    /// `refresh`. A failed read keeps the last value (the default before
    /// any) and is not retried before `refresh` either.
    pub async fn get<F, Fut, E>(&self, load: F) -> Arc<T>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        self.get_at(tokio::time::Instant::now(), load).await
    }

    /// [`get`](Self::get) as if it were `now` (tests drive the clock).
    pub async fn get_at<F, Fut, E>(&self, now: tokio::time::Instant, load: F) -> Arc<T>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut slot = self.slot.lock().await;
        if let Some((taken, value)) = slot.as_ref()
            && is_fresh(*taken, now, self.refresh)
        {
            return Arc::clone(value);
        }
        self.loads.fetch_add(1, Ordering::Relaxed);
        let value = match load().await {
            Ok(value) => Arc::new(value),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: a store read failed; showing the last values");
                slot.as_ref()
                    .map_or_else(|| Arc::new(T::default()), |(_, v)| Arc::clone(v))
            }
        };
        *slot = Some((now, Arc::clone(&value)));
        value
    }

    /// Reads made so far.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }
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
        // A gauge is state, not a count of records: it follows every
        // event, recorded or not at the audit level in force.
        self.metrics.gauges.apply(&event);
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
    #![allow(clippy::unwrap_used)]

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

    #[test]
    fn model_usage_events_add_up_per_model_and_kind() {
        let tap = EventTap::new(Arc::new(MemorySink::new()));
        let usage = |model: &str, prompt: u64, completion: u64, cached: u64| {
            Event::new(Level::Info, "s", EventKind::ModelUsage, "u").with_data(serde_json::json!({
                "model": model, "prompt_tokens": prompt, "completion_tokens": completion,
                "cached_tokens": cached, "turn": 0, "message": "s:1",
            }))
        };
        tap.emit(usage("gpt", 100, 10, 40));
        tap.emit(usage("gpt", 50, 5, 0));
        tap.emit(usage("claude", 7, 3, 0));
        let tokens = tap.metrics().model_tokens();
        let get = |m: &str, k: &str| tokens[&(m.to_owned(), k.to_owned())];
        assert_eq!(get("gpt", "prompt"), 150);
        assert_eq!(get("gpt", "completion"), 15);
        assert_eq!(get("gpt", "cached"), 40);
        assert_eq!(get("claude", "cached"), 0);
        let text = tap.metrics().render(&[]);
        assert!(text.contains("# TYPE hale_model_tokens_total counter"));
        assert!(text.contains("hale_model_tokens_total{model=\"gpt\",kind=\"prompt\"} 150"));
        assert!(text.contains("hale_model_tokens_total{model=\"claude\",kind=\"completion\"} 3"));
    }

    fn breaker(source: &str, to: &str) -> Event {
        Event::new(Level::Info, source, EventKind::Breaker, "b")
            .with_data(serde_json::json!({"from": "x", "to": to}))
    }

    #[test]
    fn gauges_follow_each_key_to_its_latest_state() {
        let tap = EventTap::new(Arc::new(MemorySink::new()));
        let gauges = tap.metrics().gauges();
        tap.emit(breaker("web_fetch/a", "open"));
        tap.emit(breaker("web_fetch/b", "open"));
        // The same transition twice counts the key once.
        tap.emit(breaker("web_fetch/b", "open"));
        assert_eq!(gauges.get(GaugeId::Breakers, "open"), 2);
        tap.emit(breaker("web_fetch/a", "half_open"));
        assert_eq!(gauges.get(GaugeId::Breakers, "open"), 1);
        assert_eq!(gauges.get(GaugeId::Breakers, "half_open"), 1);
        tap.emit(breaker("web_fetch/a", "closed"));
        tap.emit(breaker("never-opened", "closed"));
        assert_eq!(gauges.get(GaugeId::Breakers, "half_open"), 0);
        let text = tap.metrics().render(&[]);
        assert!(text.contains("hale_breakers{state=\"open\"} 1"), "{text}");
        assert!(
            text.contains("hale_breakers{state=\"half_open\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn freshness_is_strictly_younger_than_the_refresh() {
        let t0 = tokio::time::Instant::now();
        let refresh = Duration::from_secs(1);
        assert!(is_fresh(t0, t0, refresh));
        assert!(is_fresh(t0, t0 + Duration::from_millis(999), refresh));
        assert!(!is_fresh(t0, t0 + refresh, refresh));
        // A zero refresh reads every time.
        assert!(!is_fresh(t0, t0, Duration::ZERO));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_readers_costs_one_read_per_refresh() {
        let cached: Arc<Cached<u64>> = Arc::new(Cached::new(Duration::from_secs(1)));
        let reads = Arc::new(AtomicU64::new(0));
        let t0 = tokio::time::Instant::now();
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let cached = Arc::clone(&cached);
            let reads = Arc::clone(&reads);
            burst.spawn(async move {
                *cached
                    .get_at(t0, || async move {
                        let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
                        // A slow store: others arrive while it reads.
                        tokio::task::yield_now().await;
                        Ok::<_, std::convert::Infallible>(n)
                    })
                    .await
            });
        }
        while let Some(seen) = burst.join_next().await {
            assert_eq!(seen.unwrap(), 1);
        }
        assert_eq!((reads.load(Ordering::SeqCst), cached.loads()), (1, 1));
        let later = t0 + Duration::from_secs(1);
        let again = cached
            .get_at(later, || async { Ok::<_, std::convert::Infallible>(2) })
            .await;
        assert_eq!((*again, cached.loads()), (2, 2));
        // A failed read keeps the last value, and waits its turn too.
        let failed = later + Duration::from_secs(1);
        let kept = cached
            .get_at(failed, || async { Err::<u64, _>("store down") })
            .await;
        assert_eq!((*kept, cached.loads()), (2, 3));
        let soon = cached
            .get_at(failed + Duration::from_millis(10), || async {
                Ok::<_, std::convert::Infallible>(4)
            })
            .await;
        assert_eq!((*soon, cached.loads()), (2, 3));
    }
}
