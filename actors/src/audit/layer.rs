//! A `tracing` layer that puts the runtime's warnings and errors in the
//! audit trail.
//!
//! Not everything that goes wrong is a tool outcome: an MCP server's
//! stderr, a failed reconnect, a supervisor oddity are logged through
//! `tracing`. Those records belong next to the events they explain, so
//! this layer turns every WARN and ERROR record into an [`Event`] of kind
//! `log` (source: the record's target; message: its message; data: its
//! other fields, file and line) and emits it into a sink without blocking.
//! A field named `session` or `code` fills the event's session or code.
//!
//! Records from the audit and store modules themselves are skipped: a
//! failing store that logs its failure must not feed the failure back
//! into the store.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Level as TraceLevel, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::catalog::ErrorCode;
use crate::event::{Event, EventKind, EventSink, Level};

/// Targets whose records are never bridged (see the module docs).
const SKIPPED_TARGETS: [&str; 2] = ["hale_actors::audit", "hale_actors::store"];

/// The layer; add it to a `tracing_subscriber::registry()`.
#[derive(Clone)]
pub struct AuditLayer {
    sink: Arc<dyn EventSink>,
}

impl fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayer").finish_non_exhaustive()
    }
}

impl AuditLayer {
    /// A layer emitting into `sink`.
    pub fn new(sink: Arc<dyn EventSink>) -> Self {
        Self { sink }
    }
}

impl<S: Subscriber> Layer<S> for AuditLayer {
    fn on_event(&self, record: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = record.metadata();
        let level = match *meta.level() {
            TraceLevel::ERROR => Level::Error,
            TraceLevel::WARN => Level::Warning,
            _ => return,
        };
        let target = meta.target();
        if SKIPPED_TARGETS.iter().any(|t| target.starts_with(t)) || !self.sink.enabled(level) {
            return;
        }
        let mut fields = Fields::default();
        record.record(&mut fields);
        let mut data = fields.data;
        if let Some(file) = meta.file() {
            data.insert("file".into(), Value::String(file.to_owned()));
        }
        if let Some(line) = meta.line() {
            data.insert("line".into(), Value::from(line));
        }
        let mut event = Event::new(level, target, EventKind::Log, fields.message)
            .with_data(Value::Object(data));
        event.session = fields.session;
        event.code = fields.code.map(|c| ErrorCode::parse(&c));
        self.sink.emit(event);
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    session: Option<String>,
    code: Option<String>,
    data: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        match (field.name(), value) {
            ("message", Value::String(s)) => self.message = s,
            ("session", Value::String(s)) => self.session = Some(s),
            ("code", Value::String(s)) => self.code = Some(s),
            (name, value) => {
                self.data.insert(name.to_owned(), value);
            }
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}
