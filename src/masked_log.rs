//! Logs with their secrets masked.
//!
//! hale's own log lines rarely carry a secret, but what it relays does: a
//! stdio MCP server's stderr (drained into tracing) can print the key hale
//! passed it, an HTTP error can quote a header. The audit trail redacts
//! the WARN and ERROR records it keeps; this writer does the same for the
//! log stream itself, so `hale serve`'s stderr (journald, a container's
//! log) holds no more than the trail does. It masks the known values
//! (shared with the runtime, so the token and keys it finds at start are
//! masked from then on) and the patterns.

use std::io::{self, Write};
use std::sync::Arc;

use hale_actors::audit::Redactor;
use tracing_subscriber::fmt::MakeWriter;

/// A [`MakeWriter`] for `tracing_subscriber::fmt` writing each record to
/// stderr, masked. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MaskedStderr {
    redactor: Arc<Redactor>,
}

impl MaskedStderr {
    /// Writes through `redactor`.
    pub fn new(redactor: Arc<Redactor>) -> Self {
        Self { redactor }
    }
}

impl<'a> MakeWriter<'a> for MaskedStderr {
    type Writer = MaskedRecord<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        MaskedRecord::new(Arc::clone(&self.redactor), io::stderr())
    }
}

/// One log record: collected whole, masked, and written when dropped
/// (`fmt` makes one writer per record), so a secret split across two
/// `write` calls is still seen whole.
#[derive(Debug)]
pub struct MaskedRecord<W: Write> {
    redactor: Arc<Redactor>,
    buf: Vec<u8>,
    out: W,
}

impl<W: Write> MaskedRecord<W> {
    /// A record written to `out` once dropped.
    pub fn new(redactor: Arc<Redactor>, out: W) -> Self {
        Self {
            redactor,
            buf: Vec::new(),
            out,
        }
    }
}

impl<W: Write> Write for MaskedRecord<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for MaskedRecord<W> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buf);
        let masked = self.redactor.redact_str(&text);
        // A log line that cannot be written has nowhere else to go.
        let _ = self.out.write_all(masked.as_bytes());
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use hale_actors::secrets::KnownSecrets;

    use super::*;

    #[test]
    fn a_record_is_masked_whole_with_values_added_later() {
        let known = KnownSecrets::new();
        let redactor = Arc::new(Redactor::with_known(known.clone()).unwrap());
        known.add("vault-key-0123456789").unwrap();
        let mut out = Vec::new();
        {
            let mut record = MaskedRecord::new(Arc::clone(&redactor), &mut out);
            record.write_all(b"mcp stderr: key vault-key-01").unwrap();
            record
                .write_all(b"23456789 and MY_DB_PASSWORD=hunter2hunter2\n")
                .unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "mcp stderr: key [REDACTED] and MY_DB_PASSWORD=[REDACTED]\n"
        );
    }
}
