//! `hale drive`: a runtime in a process of its own, for crash tests.
//!
//! A test that kills hale with `kill -9` needs hale to be a process it can
//! kill: this hidden subcommand starts a runtime on a data directory,
//! optionally creates sessions and sends each the same scripted plan, and
//! waits for every unfinished message of every session to finish, printing
//! one line per event so the test can follow along. Run again with
//! `--resume` after a kill, it proves what the restart recovered.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use hale::runtime::{Runtime, RuntimeConfig};

/// What to drive.
#[derive(Debug, Clone)]
pub struct DriveOptions {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Sessions to create (0 with `resume`).
    pub sessions: usize,
    /// Messages per session.
    pub messages: usize,
    /// The command each message runs through `exec`; `{s}` and `{m}` are
    /// replaced by the session and message numbers.
    pub command: String,
    /// How long to wait for each message.
    pub wait: Duration,
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the driver; see the module docs.
///
/// # Errors
/// The runtime could not start, or a send or wait failed.
pub async fn run(options: DriveOptions) -> Result<()> {
    let config = RuntimeConfig::new(&options.data_dir);
    let runtime = Runtime::start(config)
        .await
        .context("starting the runtime")?;
    say(&format!("started pid {}", std::process::id()));
    for s in 0..options.sessions {
        let session = runtime
            .create_session("default")
            .await
            .context("creating a session")?;
        for m in 0..options.messages {
            let command = options
                .command
                .replace("{s}", &s.to_string())
                .replace("{m}", &m.to_string());
            let plan = json!({
                "steps": [{"tool": "exec", "args": {"command": command}}],
                "reply": format!("{s}-{m}"),
            });
            let id = runtime
                .send(&session, &plan.to_string())
                .await
                .context("sending")?;
            say(&format!("sent {id}"));
        }
    }
    let (mut total, mut done, mut failed) = (0usize, 0usize, 0usize);
    for session in runtime
        .sessions()
        .list()
        .await
        .context("listing sessions")?
    {
        let messages = runtime
            .sessions()
            .messages(&session.id)
            .await
            .context("reading messages")?;
        for message in messages {
            total += 1;
            let id = hale::actors::session::MessageId {
                session: session.id.clone(),
                seq: message.seq,
            };
            let record = runtime
                .sessions()
                .wait(&id, options.wait)
                .await
                .context("waiting")?;
            match record {
                Some(record) => {
                    if record.state == hale::actors::store::MessageState::Done {
                        done += 1;
                    } else {
                        failed += 1;
                    }
                    say(&format!(
                        "done {id} {} {}",
                        record.state.as_str(),
                        record.reply.unwrap_or_default()
                    ));
                }
                None => say(&format!("unfinished {id}")),
            }
        }
    }
    say(&format!(
        "summary {}",
        json!({"messages": total, "done": done, "failed": failed})
    ));
    runtime.shutdown().await.context("shutting down")?;
    Ok(())
}
