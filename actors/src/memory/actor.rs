//! The actor that owns one memory file: it applies every change to its
//! in-memory copy in mailbox order and group-commits them to disk.

use std::mem;
use std::path::PathBuf;
use std::sync::Arc;

use hale_supervision::{Address, Taken};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{Value, json};

use super::document::{Document, EditResult, Lesson};
use super::durable::{self, Fence, Loaded, PersistError};
use crate::catalog::ErrorCode;
use crate::classify::from_io_error;
use crate::event::{Event, EventKind, EventSink, Level};
use crate::outcome::ToolOutcome;

/// How many extra trips round the mailbox a flush waits for a burst of
/// writes to finish arriving; bounds the latency it adds to microseconds.
const MAX_FLUSH_DEFERRALS: u8 = 8;

/// A message to a memory actor. Built only by
/// [`MemoryHandle`](super::MemoryHandle); opaque elsewhere.
#[derive(Debug)]
pub struct MemoryMsg(pub(super) Msg);

#[derive(Debug)]
pub(super) enum Msg {
    /// The durable text.
    Read {
        taken: Taken,
        reply: RpcReplyPort<String>,
    },
    /// A change, answered once it is durable.
    Write {
        change: Change,
        taken: Taken,
        reply: RpcReplyPort<ToolOutcome>,
    },
    /// The incarnation's load finished.
    Loaded(Result<Loaded, PersistError>),
    /// Time to start a flush: sent to itself, so that it queues behind
    /// the requests already in the mailbox, which then join it. `seen` is
    /// how many writes were waiting when it was sent, `passes` how many
    /// times it has been sent again.
    Flush { seen: usize, passes: u8 },
    /// A flush finished; `Ok` holds the text it made durable.
    Flushed(Result<String, PersistError>),
}

/// A change to the memory file.
#[derive(Debug, Clone)]
pub(super) enum Change {
    Remember(Lesson),
    Edit { old_text: String, new_text: String },
    Replace(String),
}

/// What every incarnation of one memory file's actor shares.
pub(super) struct Settings {
    /// The file, with a canonical directory.
    pub(super) path: PathBuf,
    /// The file as shown in outcomes and events.
    pub(super) display: String,
    /// The actor path in events.
    pub(super) source: String,
    pub(super) fence: Fence,
    pub(super) sink: Arc<dyn EventSink>,
    pub(super) address: Address<MemoryMsg>,
}

/// The actor behaviour.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryActor;

/// What each incarnation starts from (built by
/// [`memory_child`](super::memory_child)).
pub struct MemoryArgs(pub(super) Arc<Settings>);

/// A write applied to the in-memory text, waiting for the flush that makes
/// it durable.
struct Ack {
    reply: RpcReplyPort<ToolOutcome>,
    outcome: ToolOutcome,
    /// The `memory_write` event's message and data.
    message: String,
    data: Value,
}

/// The running actor's state.
pub struct MemoryState {
    settings: Arc<Settings>,
    /// This incarnation's generation (see [`Fence`]).
    generation: u64,
    /// `false` until the file has been read; requests wait in `early`.
    loaded: bool,
    early: Vec<Msg>,
    /// The working copy: every applied change, durable or not.
    doc: Document,
    /// The text last made durable; what reads return.
    durable: String,
    /// The working copy has changes no flush has taken yet.
    dirty: bool,
    /// Writes applied since the running flush took its copy.
    next: Vec<Ack>,
    /// The writes the running flush will make durable; `None` when no
    /// flush is running.
    in_flight: Option<Vec<Ack>>,
    /// A `Flush` message is on its way.
    flush_queued: bool,
}

impl Actor for MemoryActor {
    type Msg = MemoryMsg;
    type State = MemoryState;
    type Arguments = MemoryArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        MemoryArgs(settings): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Nothing here blocks: the generation is a counter, and the file
        // is read after start (this runs inside the supervisor's await).
        let generation = settings.fence.issue();
        settings.address.publish(myself);
        Ok(MemoryState {
            settings,
            generation,
            loaded: false,
            early: Vec::new(),
            doc: Document::default(),
            durable: String::new(),
            dirty: false,
            next: Vec::new(),
            in_flight: None,
            flush_queued: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let settings = Arc::clone(&state.settings);
        let generation = state.generation;
        tokio::task::spawn_blocking(move || {
            let loaded = durable::load(&settings.path, &settings.fence, generation);
            // A dead incarnation's load goes nowhere; its claim is
            // harmless, being older than its replacement's.
            let _ = myself.send_message(MemoryMsg(Msg::Loaded(loaded)));
        });
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        MemoryMsg(message): Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            Msg::Loaded(Ok(loaded)) => {
                if loaded.removed_temps > 0 {
                    tracing::info!(
                        path = %state.settings.display,
                        removed = loaded.removed_temps,
                        "removed temporary files of memory writes that died before their rename"
                    );
                }
                if let Some(aside) = &loaded.quarantined {
                    state.report_quarantine(aside);
                }
                state.doc = Document::new(loaded.text.clone());
                state.durable = loaded.text;
                state.loaded = true;
                for early in mem::take(&mut state.early) {
                    state.apply(early);
                }
            }
            Msg::Loaded(Err(e)) => {
                tracing::warn!(path = %state.settings.display, error = %e, "cannot load the memory file");
                // Requests still waiting were never taken: their callers
                // re-send them to the replacement.
                return Err(Box::new(e));
            }
            Msg::Flushed(Ok(content)) => {
                state.durable = content;
                for ack in state.in_flight.take().unwrap_or_default() {
                    state.complete(ack);
                }
            }
            Msg::Flushed(Err(e)) => {
                tracing::warn!(path = %state.settings.display, error = %e, "memory flush failed");
                // The working copy holds changes the file does not; the
                // replacement starts again from the file.
                let failed = state.in_flight.take().into_iter().flatten();
                for ack in failed.chain(mem::take(&mut state.next)) {
                    let _ = ack.reply.send(not_written(&state.settings.display, &e));
                }
                return Err(Box::new(e));
            }
            Msg::Flush { seen, passes } => {
                // Writes that arrived behind the Flush mean a burst is
                // still coming in: one more trip round the mailbox lets
                // it join, at the cost of a few microseconds. A lone
                // writer's flush starts on the first pass.
                if state.next.len() > seen
                    && passes < MAX_FLUSH_DEFERRALS
                    && myself
                        .send_message(MemoryMsg(Msg::Flush {
                            seen: state.next.len(),
                            passes: passes + 1,
                        }))
                        .is_ok()
                {
                    return Ok(());
                }
                state.flush_queued = false;
                state.flush(&myself);
            }
            request @ (Msg::Read { .. } | Msg::Write { .. }) => {
                if state.loaded {
                    state.apply(request);
                } else {
                    state.early.push(request);
                }
            }
        }
        state.queue_flush(&myself);
        Ok(())
    }
}

impl MemoryState {
    fn apply(&mut self, request: Msg) {
        match request {
            Msg::Read { taken, reply } => {
                taken.mark();
                let _ = reply.send(self.durable.clone());
            }
            Msg::Write {
                change,
                taken,
                reply,
            } => {
                taken.mark();
                self.write(change, reply);
            }
            Msg::Loaded(_) | Msg::Flush { .. } | Msg::Flushed(_) => {}
        }
    }

    fn write(&mut self, change: Change, reply: RpcReplyPort<ToolOutcome>) {
        let path = self.settings.display.clone();
        match change {
            Change::Remember(lesson) => match self.doc.append(&lesson) {
                Ok(added) => {
                    let line = lesson.line();
                    let shown = line.strip_prefix("- ").unwrap_or(&line).to_owned();
                    let message = if added {
                        format!("remembered under `{}`: {shown}", lesson.section)
                    } else {
                        format!(
                            "already remembered under `{}`: {}",
                            lesson.section, lesson.text
                        )
                    };
                    let ack = Ack {
                        reply,
                        outcome: ToolOutcome::success(json!({
                            "path": path,
                            "section": lesson.section,
                            "lesson": shown,
                            "added": added,
                        })),
                        message,
                        data: json!({
                            "op": "remember",
                            "path": path,
                            "section": lesson.section,
                            "lesson": lesson.text,
                            "date": lesson.date.map(|d| d.to_string()),
                            "incident": lesson.incident,
                            "added": added,
                        }),
                    };
                    self.after_durable(ack, added);
                }
                Err(e) => {
                    let _ = reply.send(
                        ToolOutcome::from_code(ErrorCode::InvalidInput, e.to_string())
                            .with_data(json!({ "path": path })),
                    );
                }
            },
            Change::Edit { old_text, new_text } => {
                if old_text.is_empty() {
                    let _ = reply.send(ToolOutcome::from_code(
                        ErrorCode::InvalidInput,
                        "`old_text` is empty; give the exact text to replace",
                    ));
                    return;
                }
                let outcome = match self.doc.edit(&old_text, &new_text) {
                    EditResult::Replaced => {
                        let ack = Ack {
                            reply,
                            outcome: ToolOutcome::success(json!({ "path": path, "replaced": 1 })),
                            message: format!("edited `{path}`"),
                            data: json!({
                                "op": "edit",
                                "path": path,
                                "old_text": old_text,
                                "new_text": new_text,
                            }),
                        };
                        self.after_durable(ack, true);
                        return;
                    }
                    EditResult::NotFound => ToolOutcome::from_code(
                        ErrorCode::NotFound,
                        format!(
                            "old_text was not found in `{path}`; it must match the file exactly, \
                             whitespace, indentation and line endings included: read the file \
                             again and copy the text"
                        ),
                    )
                    .with_data(json!({ "path": path, "matches": 0 })),
                    EditResult::Ambiguous(n) => ToolOutcome::from_code(
                        ErrorCode::Ambiguous,
                        format!(
                            "old_text occurs {n} times in `{path}`; include more surrounding \
                             lines so that it occurs exactly once"
                        ),
                    )
                    .with_data(json!({ "path": path, "matches": n })),
                };
                let _ = reply.send(outcome);
            }
            Change::Replace(content) => {
                let bytes = content.len();
                self.doc.replace(content);
                let ack = Ack {
                    reply,
                    outcome: ToolOutcome::success(json!({ "path": path, "bytes": bytes })),
                    message: format!("replaced `{path}` ({bytes} bytes)"),
                    data: json!({ "op": "replace", "path": path, "bytes": bytes }),
                };
                self.after_durable(ack, true);
            }
        }
    }

    /// Answers `ack` once the text it saw is durable. A write that changed
    /// nothing (a lesson already there) saw text that may itself still be
    /// on its way to disk, so it waits for the flush that carries it.
    fn after_durable(&mut self, ack: Ack, changed: bool) {
        if changed || self.dirty {
            self.dirty = true;
            self.next.push(ack);
        } else if let Some(in_flight) = self.in_flight.as_mut() {
            in_flight.push(ack);
        } else {
            self.complete(ack);
        }
    }

    /// Asks itself for a flush when there is something to flush and no
    /// flush is running or asked for. Writes that arrive while a flush
    /// runs wait in `next`, and go together in the one after it: the
    /// group commit. Going through the mailbox (rather than flushing at
    /// once) lets the requests already queued join the flush.
    fn queue_flush(&mut self, myself: &ActorRef<MemoryMsg>) {
        if self.dirty && self.in_flight.is_none() && !self.flush_queued {
            let flush = Msg::Flush {
                seen: self.next.len(),
                passes: 0,
            };
            self.flush_queued = myself.send_message(MemoryMsg(flush)).is_ok();
        }
    }

    /// Starts a flush of everything applied so far, unless one is running.
    fn flush(&mut self, myself: &ActorRef<MemoryMsg>) {
        if self.in_flight.is_some() || !self.dirty {
            return;
        }
        self.dirty = false;
        self.in_flight = Some(mem::take(&mut self.next));
        let content = self.doc.text().to_owned();
        let settings = Arc::clone(&self.settings);
        let generation = self.generation;
        let myself = myself.clone();
        // A kill does not stop this thread; the fence stops its rename.
        tokio::task::spawn_blocking(move || {
            let result = durable::persist(&settings.path, &content, &settings.fence, generation);
            let _ = myself.send_message(MemoryMsg(Msg::Flushed(result.map(|()| content))));
        });
    }

    /// Tells the operator that the file could not be read and was moved
    /// aside: the lessons in it are out of the prompt until a human
    /// recovers them.
    fn report_quarantine(&self, aside: &std::path::Path) {
        let settings = &self.settings;
        let aside = aside.display().to_string();
        tracing::error!(
            path = %settings.display,
            quarantined = %aside,
            "the memory file is not valid UTF-8: moved aside to {aside}, started a fresh one"
        );
        settings.sink.emit(
            Event::new(
                Level::Error,
                settings.source.clone(),
                EventKind::Incident,
                format!(
                    "the memory file `{}` is not valid UTF-8: it was moved aside to `{aside}` \
                     and a fresh, empty one started; recover its lessons by hand",
                    settings.display
                ),
            )
            .with_data(json!({
                "path": settings.display,
                "quarantined": aside,
                "generation": self.generation,
            })),
        );
    }

    fn complete(&self, ack: Ack) {
        let settings = &self.settings;
        if settings.sink.enabled(Level::Info) {
            let mut data = ack.data;
            if let Value::Object(map) = &mut data {
                map.insert("generation".into(), json!(self.generation));
            }
            settings.sink.emit(
                Event::new(
                    Level::Info,
                    settings.source.clone(),
                    EventKind::MemoryWrite,
                    ack.message,
                )
                .with_data(data),
            );
        }
        // The caller may have given up waiting; the write stands.
        let _ = ack.reply.send(ack.outcome);
    }
}

/// The answer to a write whose flush failed: nothing of it is durable.
fn not_written(path: &str, error: &PersistError) -> ToolOutcome {
    let outcome = match error.io_error() {
        Some(io) => from_io_error(io),
        // Stale: dropped before its rename, so nothing of it happened.
        None => ToolOutcome::from_code(ErrorCode::ServiceUnavailable, String::new()).undelivered(),
    };
    ToolOutcome {
        message: format!("the memory file `{path}` was not written: {error}"),
        ..outcome
    }
    .with_data(json!({ "path": path }))
}
