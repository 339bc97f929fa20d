//! The runtime's own response to an incident: look at the failing
//! server's recent errors, take it out of rotation, and write the lesson.
//!
//! The model may write lessons itself (`remember`, `edit_file` on
//! MEMORY.md), but an incident the runtime recovered from silently, a
//! fallback to a backup server, leaves no trace in the model's view. `hale
//! demo`'s dead MCP server is exactly that: the MCP server is down, the audit
//! trail shows it has been failing, it is disabled, the backup serves, and
//! the incident is noted for the next session. [`IncidentLearning`] does
//! those steps once per endpoint per cool-down, so a storm of calls
//! failing over does not write a storm of identical lessons.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use jiff::{Timestamp, ToSpan};
use serde_json::json;

use super::Learning;
use super::run::incident_lesson;
use crate::event::{Event, EventKind, EventSink, Level};
use crate::mcp::McpServers;
use crate::memory::MemoryHandle;
use crate::store::{EventFilter, EventQuery, Grep, Store};
use crate::tool::BoxFuture;

/// What the runtime does after an incident.
#[derive(Debug, Clone)]
pub struct LearningConfig {
    /// Write incident lines to MEMORY.md.
    pub lessons: bool,
    /// Disable an MCP server whose calls had to fall back to a backup.
    pub disable_failed_mcp: bool,
    /// One response per endpoint per this long.
    pub cooldown: Duration,
    /// How far back the audit trail is read for the failing endpoint's
    /// errors.
    pub logs_window: Duration,
}

impl Default for LearningConfig {
    fn default() -> Self {
        Self {
            lessons: true,
            disable_failed_mcp: true,
            cooldown: Duration::from_secs(600),
            logs_window: Duration::from_secs(3600),
        }
    }
}

/// The default [`Learning`]: audit trail, MCP servers and memory.
pub struct IncidentLearning {
    config: LearningConfig,
    store: Option<Arc<dyn Store>>,
    mcp: Option<Arc<McpServers>>,
    memory: Option<MemoryHandle>,
    sink: Arc<dyn EventSink>,
    recent: DashMap<String, Instant>,
}

impl std::fmt::Debug for IncidentLearning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncidentLearning")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl IncidentLearning {
    /// Learning with whichever of the audit trail, MCP servers and memory
    /// the runtime has.
    pub fn new(
        config: LearningConfig,
        store: Option<Arc<dyn Store>>,
        mcp: Option<Arc<McpServers>>,
        memory: Option<MemoryHandle>,
        sink: Arc<dyn EventSink>,
    ) -> Self {
        Self {
            config,
            store,
            mcp,
            memory,
            sink,
            recent: DashMap::new(),
        }
    }

    /// Whether `endpoint` was handled within the cool-down; marks it now if
    /// not.
    fn first_in_cooldown(&self, endpoint: &str) -> bool {
        let now = Instant::now();
        let mut fresh = false;
        self.recent
            .entry(endpoint.to_owned())
            .and_modify(|at| {
                if now.duration_since(*at) >= self.config.cooldown {
                    *at = now;
                    fresh = true;
                }
            })
            .or_insert_with(|| {
                fresh = true;
                now
            });
        fresh
    }

    async fn recent_errors(&self, endpoint: &str) -> (usize, Option<String>) {
        let Some(store) = &self.store else {
            return (0, None);
        };
        let Ok(grep) = Grep::text(endpoint) else {
            return (0, None);
        };
        let window = i64::try_from(self.config.logs_window.as_secs()).unwrap_or(3600);
        let since = Timestamp::now()
            .checked_sub(window.seconds())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let query = EventQuery::newest(
            EventFilter {
                min_level: Some(Level::Warning),
                since: Some(since),
                grep: Some(grep),
                ..EventFilter::default()
            },
            50,
        );
        match store.query(query).await {
            Ok(events) => {
                let last = events.first().map(|e| e.message.clone());
                (events.len(), last)
            }
            Err(_) => (0, None),
        }
    }

    async fn respond(&self, session: &str, tool: &str, endpoint: &str, to: &str) {
        if !self.first_in_cooldown(endpoint) {
            return;
        }
        let (errors, last) = self.recent_errors(endpoint).await;
        let mut disabled = false;
        if self.config.disable_failed_mcp
            && let Some(mcp) = &self.mcp
            && mcp.names().iter().any(|n| n == endpoint)
        {
            disabled = mcp.disable(endpoint).await.is_ok();
        }
        let date = Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date();
        let mut text = format!("{endpoint} unreachable {date}; fell back to {to}");
        if disabled {
            text.push_str(&format!("; {endpoint} disabled"));
        }
        // The lesson says how bad it was; the latest error itself (often a
        // path or an address that means nothing next session) stays in
        // the incident event.
        if errors > 0 {
            text.push_str(&format!(
                " ({errors} warnings/errors about it in the audit trail in the last {})",
                window_text(self.config.logs_window)
            ));
        }
        self.sink.emit(
            Event::new(
                Level::Warning,
                format!("hale/sessions/{session}"),
                EventKind::Incident,
                text.clone(),
            )
            .with_session(session.to_owned())
            .with_data(json!({
                "endpoint": endpoint,
                "tool": tool,
                "fell_back_to": to,
                "recent_errors": errors,
                "latest_error": last.as_deref().map(|l| clip(l, 500)),
                "disabled": disabled,
            })),
        );
        if self.config.lessons
            && let Some(memory) = &self.memory
        {
            let _ = memory.remember(incident_lesson(text)).await;
        }
    }
}

fn window_text(window: std::time::Duration) -> String {
    let secs = window.as_secs();
    if secs.is_multiple_of(3600) && secs > 0 {
        format!("{} h", secs / 3600)
    } else if secs.is_multiple_of(60) && secs > 0 {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].replace('\n', " ")
}

impl Learning for IncidentLearning {
    fn fell_back<'a>(
        &'a self,
        session: &'a str,
        tool: &'a str,
        from: &'a [String],
        to: &'a str,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for endpoint in from {
                self.respond(session, tool, endpoint, to).await;
            }
        })
    }

    fn decided<'a>(&'a self, session: &'a str, summary: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if !self.config.lessons {
                return;
            }
            self.sink.emit(
                Event::new(
                    Level::Info,
                    format!("hale/sessions/{session}"),
                    EventKind::Incident,
                    summary.to_owned(),
                )
                .with_session(session.to_owned()),
            );
            if let Some(memory) = &self.memory {
                let _ = memory.remember(incident_lesson(summary.to_owned())).await;
            }
        })
    }
}
