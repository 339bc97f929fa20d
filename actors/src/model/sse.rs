//! A server-sent-events line parser, fed the bytes of a streamed model
//! answer as they arrive, however the network cut them.
//!
//! Both providers stream their replies as `text/event-stream`; what they
//! send is a small subset of the format (`event:` and `data:` fields, a
//! blank line ending each event, `:` comments as keep-alives). A crate
//! would do this as a `Stream` adapter over a body type, which hides the
//! byte count the reply cap needs and the per-chunk idle timeout, and
//! takes a chunk source that unit tests cannot stall; this parser is a
//! plain value fed slices, so a test can cut the input at every byte.
//!
//! Lines end with `\n`, `\r\n` or `\r` (a `\r\n` split across two chunks
//! is one line end). Several `data:` lines of one event are joined with
//! `\n`; an event without data is not dispatched; `id:` and `retry:` are
//! ignored (a model answer is never resumed). Text must be UTF-8: a line
//! that is not is an error, which the client classifies as a malformed
//! chunk.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, if the event had one.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// A line that is not UTF-8; it carries the line's start, for the
/// outcome's data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event-stream line is not UTF-8: {excerpt:?}")]
pub struct NotUtf8 {
    /// The line's first bytes, lossily decoded.
    pub excerpt: String,
}

/// The parser's state between two chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    /// The bytes of the line being read.
    line: Vec<u8>,
    /// The last byte fed was a `\r`: a `\n` first in the next chunk ends
    /// nothing more.
    after_cr: bool,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `bytes`, appending every event they complete to `out`.
    ///
    /// # Errors
    /// A completed line is not UTF-8 (the parser should not be fed more).
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), NotUtf8> {
        for &byte in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            match byte {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line(&line, out)?;
                }
                _ => self.line.push(byte),
            }
        }
        Ok(())
    }

    /// Whether bytes of an unfinished event are held (a stream that ends
    /// here ended mid-event).
    pub fn mid_event(&self) -> bool {
        !self.line.is_empty() || self.data.is_some() || self.event.is_some()
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), NotUtf8> {
        if line.is_empty() {
            let event = self.event.take();
            if let Some(data) = self.data.take() {
                out.push(SseEvent { event, data });
            }
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|_| NotUtf8 {
            excerpt: String::from_utf8_lossy(line.get(..64).unwrap_or(line)).into_owned(),
        })?;
        // A byte-order mark may start the stream.
        let line = line.strip_prefix('\u{feff}').unwrap_or(line);
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out).unwrap();
        }
        out
    }

    const STREAM: &str = ": keep-alive\r\n\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\ndata: one\ndata:two\n\nid: 7\nretry: 10\ndata: é\r\rdata: [DONE]\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            SseEvent {
                event: Some("message_start".into()),
                data: "{\"a\":1}".into(),
            },
            SseEvent {
                event: None,
                data: "one\ntwo".into(),
            },
            SseEvent {
                event: None,
                data: "é".into(),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
        ]
    }

    #[test]
    fn fields_comments_and_line_ends() {
        assert_eq!(parse_all(&[STREAM.as_bytes()]), expected());
    }

    #[test]
    fn a_split_at_every_byte_gives_the_same_events() {
        let bytes = STREAM.as_bytes();
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(parse_all(&[a, b]), expected(), "cut at {cut}");
        }
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse_all(&single), expected());
    }

    #[test]
    fn a_line_that_is_not_utf8_is_an_error() {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        assert!(parser.feed(b"data: \xff\xfe\n", &mut out).is_err());
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        parser.feed(b"data: {\"half\":", &mut out).unwrap();
        assert!(out.is_empty());
        assert!(parser.mid_event());
        parser.feed(b"1}\n", &mut out).unwrap();
        assert!(out.is_empty() && parser.mid_event());
        parser.feed(b"\n", &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert!(!parser.mid_event());
    }
}
