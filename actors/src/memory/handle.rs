//! The typed client of a memory actor.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hale_supervision::{Address, CallError, CallPolicy, SupervisedCall, Taken};
use ractor::RpcReplyPort;
use serde_json::json;

use super::actor::{Change, MemoryMsg, Msg};
use super::document::Lesson;
use super::durable::Fence;
use crate::audit::Redactor;
use crate::catalog::ErrorCode;
use crate::outcome::ToolOutcome;
use crate::tool_actor::DEFAULT_READY_WAIT;

/// How long a request waits for the actor's answer by default. A write
/// is answered after its flush (an fsync or two), so this only bounds a
/// file system that has stopped answering.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How many incarnations one request is offered to before it gives up:
/// each try after the first waits for a new one.
const MAX_SENDS: usize = 4;

/// Reaches whichever incarnation of a memory file's actor is current.
/// Cheap to clone.
///
/// A request the actor never took (it died first, dropping its mailbox) is
/// re-sent to the replacement. So is a `remember` the actor took: a lesson
/// already in its section is not added again, so repeating one is
/// harmless. An `edit` or `replace` that was taken and then lost its actor
/// ends `INTERRUPTED`, since it may have been written.
#[derive(Clone)]
pub struct MemoryHandle {
    address: Address<MemoryMsg>,
    path: Arc<Path>,
    display: Arc<str>,
    fence: Fence,
    ready_wait: Duration,
    call_timeout: Duration,
    /// Masks secrets in what is written (see [`MemoryHandle::with_redactor`]).
    redactor: Option<Arc<Redactor>>,
}

impl std::fmt::Debug for MemoryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHandle")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl MemoryHandle {
    pub(super) fn new(
        address: Address<MemoryMsg>,
        path: Arc<Path>,
        display: Arc<str>,
        fence: Fence,
    ) -> Self {
        Self {
            address,
            path,
            display,
            fence,
            ready_wait: DEFAULT_READY_WAIT,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            redactor: None,
        }
    }

    /// The memory file (its directory canonical), as the file tools
    /// resolve it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The address the actor is reached through.
    pub fn address(&self) -> &Address<MemoryMsg> {
        &self.address
    }

    /// The file's fence, shared by every incarnation (to see how often it
    /// stopped a dead one's write: [`Fence::refused`]).
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Masks secrets (known values and patterns) in every lesson, edit and
    /// replacement written through this handle and its clones: MEMORY.md
    /// goes into every session's system prompt and is read by people, so
    /// a secret an agent (or an incident) put in a lesson would be
    /// repeated forever.
    #[must_use]
    pub fn with_redactor(mut self, redactor: Arc<Redactor>) -> Self {
        self.redactor = Some(redactor);
        self
    }

    fn redact(&self, text: &mut String) {
        if let Some(redactor) = &self.redactor {
            redactor.redact_string(text);
        }
    }

    /// Sets how long a request waits for a restarting actor.
    pub fn with_ready_wait(mut self, wait: Duration) -> Self {
        self.ready_wait = wait;
        self
    }

    /// Sets how long a request waits for the actor's answer.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The file's durable content: every acknowledged write, nothing that
    /// is not yet on disk.
    ///
    /// # Errors
    /// A failure outcome when no incarnation answered.
    pub async fn read(&self) -> Result<String, ToolOutcome> {
        self.ask("read", true, |taken, reply| Msg::Read { taken, reply })
            .await
    }

    /// Records `lesson` under its `## section` (created at the end of the
    /// file when missing), unless the same lesson text is already there.
    /// Answered once the file holding it is durable; the data is
    /// `{path, section, lesson, added}`.
    pub async fn remember(&self, mut lesson: Lesson) -> ToolOutcome {
        self.redact(&mut lesson.section);
        self.redact(&mut lesson.text);
        if let Err(e) = lesson.validate() {
            return ToolOutcome::from_code(ErrorCode::InvalidInput, e.to_string())
                .with_data(json!({ "path": &*self.display }));
        }
        self.write(Change::Remember(lesson), true).await
    }

    /// Replaces the one occurrence of `old_text` with `new_text`, with
    /// `edit_file`'s rules: none is `NOT_FOUND`, several are `AMBIGUOUS`
    /// (data `{path, matches}`), and the file is unchanged either way.
    /// Data `{path, replaced: 1}`.
    pub async fn edit(
        &self,
        old_text: impl Into<String>,
        new_text: impl Into<String>,
    ) -> ToolOutcome {
        let mut new_text = new_text.into();
        self.redact(&mut new_text);
        let change = Change::Edit {
            old_text: old_text.into(),
            new_text,
        };
        self.write(change, false).await
    }

    /// Replaces the whole file. Data `{path, bytes}`.
    pub async fn replace(&self, content: impl Into<String>) -> ToolOutcome {
        let mut content = content.into();
        self.redact(&mut content);
        self.write(Change::Replace(content), false).await
    }

    async fn write(&self, change: Change, idempotent: bool) -> ToolOutcome {
        self.ask("write", idempotent, |taken, reply| Msg::Write {
            change: change.clone(),
            taken,
            reply,
        })
        .await
        .unwrap_or_else(|failure| failure)
    }

    /// Sends a request to the current incarnation and waits for the
    /// answer, re-sending it to the next incarnation when the actor died
    /// before taking it (or, with `resend_taken`, at any point).
    async fn ask<T: Send + 'static>(
        &self,
        what: &str,
        resend_taken: bool,
        make: impl Fn(Taken, RpcReplyPort<T>) -> Msg,
    ) -> Result<T, ToolOutcome> {
        let policy = CallPolicy::new(self.ready_wait)
            .max_sends(MAX_SENDS)
            .resend_taken(resend_taken)
            .reply_deadline(Some(self.call_timeout));
        let answer = SupervisedCall::new(&self.address, policy)
            .send(|taken, reply| MemoryMsg(make(taken, reply)))
            .await;
        let outcome = match answer {
            Ok(answer) => return Ok(answer),
            Err(CallError::Timeout { after }) => ToolOutcome::timeout(format!(
                "the memory actor for `{}` did not answer a {what} within {} ms; \
                 it may still complete",
                self.display,
                after.as_millis()
            )),
            Err(CallError::Interrupted { .. }) if !resend_taken => ToolOutcome::from_code(
                ErrorCode::Interrupted,
                format!(
                    "the memory actor for `{}` stopped while the {what} was being written; \
                     read the file to see whether it landed",
                    self.display
                ),
            )
            .for_idempotency(false),
            Err(CallError::Interrupted { .. }) => ToolOutcome::from_code(
                ErrorCode::Interrupted,
                format!(
                    "the memory actor for `{}` kept stopping during the {what}; it is safe to \
                     repeat",
                    self.display
                ),
            )
            .for_idempotency(true),
            Err(CallError::NotRunning { waited, .. }) => ToolOutcome::from_code(
                ErrorCode::ServiceUnavailable,
                format!(
                    "the memory actor for `{}` is not running (waited {} ms for a restart); \
                     nothing was written",
                    self.display,
                    waited.as_millis()
                ),
            )
            .undelivered(),
        };
        Err(outcome.with_data(json!({ "path": &*self.display })))
    }
}
