//! `remember`: the tool an agent records a lesson with.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;
use serde_json::{Value, json};

use super::document::Lesson;
use super::handle::MemoryHandle;
use crate::builtin::workspace::parse_args;
use crate::outcome::ToolOutcome;
use crate::tool::{BoxFuture, Tool, ToolContext, ToolSpec};

/// The `remember` tool: appends a lesson to the memory file through its
/// actor.
///
/// Arguments `{section, lesson, incident?}`; the lesson is dated today
/// (UTC). Idempotent: a lesson already under its section is not added
/// again (`added: false`). Data `{path, section, lesson, added}`.
#[derive(Debug)]
pub struct Remember {
    memory: MemoryHandle,
    spec: ToolSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RememberArgs {
    section: String,
    lesson: String,
    #[serde(default)]
    incident: Option<u64>,
}

impl Remember {
    /// A `remember` tool writing through `memory`.
    pub fn new(memory: MemoryHandle) -> Self {
        let spec = ToolSpec::new(
            "remember",
            "Record a lesson in long-term memory (MEMORY.md) so later sessions avoid the same \
             mistake. The lesson is added as a bullet under the `## section` heading (created if \
             missing), dated today, with the incident id when given. Recording the same lesson \
             twice in a section adds it once. Returns {path, section, lesson, added}.",
            json!({
                "type": "object",
                "properties": {
                    "section": {
                        "type": "string",
                        "minLength": 1,
                        "description": "The heading the lesson goes under, e.g. \"Tools\" (without `##`)."
                    },
                    "lesson": {
                        "type": "string",
                        "minLength": 1,
                        "description": "The lesson, one line."
                    },
                    "incident": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "The audit event id of the incident that taught it."
                    }
                },
                "required": ["section", "lesson"],
                "additionalProperties": false
            }),
        )
        .with_idempotent(true);
        Self { memory, spec }
    }
}

impl Tool for Remember {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, args: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, ToolOutcome> {
        Box::pin(async move {
            let args: RememberArgs = match parse_args("remember", args) {
                Ok(args) => args,
                Err(failure) => return failure,
            };
            let today = Timestamp::now().to_zoned(TimeZone::UTC).date();
            let mut lesson = Lesson::new(args.section, args.lesson).with_date(today);
            lesson.incident = args.incident;
            self.memory.remember(lesson).await
        })
    }
}
