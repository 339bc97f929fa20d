//! Splitting an oversized read into pieces instead of failing it.
//!
//! `FILE_TOO_LARGE` and `OUTPUT_TOO_LARGE` are the failures where neither
//! retrying nor a fallback helps, but adjusting the call does: the same
//! read, in ranges the tool and the model's context can take. The plan is a
//! pure function of the size so it can be tested without a file, and it is
//! bounded by `max_total_bytes`, because "read it in chunks" must not turn
//! a 40 GB log into a million tool calls; past the bound the caller reads
//! what the plan covers and reports the rest as missing (a `partial`
//! outcome).

use crate::catalog::ErrorCode;
use crate::outcome::ToolOutcome;

/// Settings that cannot make a chunk policy; each variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// `chunk_bytes` is zero, so no plan would ever make progress.
    #[error("chunk_bytes must be non-zero")]
    ChunkBytes,
    /// `max_total_bytes` is below `chunk_bytes`.
    #[error("max_total_bytes {max_total_bytes} is below chunk_bytes {chunk_bytes}")]
    MaxTotalBytes {
        /// The chunk size given.
        chunk_bytes: u64,
        /// The total given.
        max_total_bytes: u64,
    },
}

impl ChunkError {
    /// The name of the offending setting.
    pub fn field(&self) -> &'static str {
        match self {
            Self::ChunkBytes => "chunk_bytes",
            Self::MaxTotalBytes { .. } => "max_total_bytes",
        }
    }
}

/// How to read a large input in pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPolicy {
    chunk_bytes: u64,
    max_total_bytes: u64,
}

impl ChunkPolicy {
    /// Pieces of `chunk_bytes`, at most `max_total_bytes` in all.
    ///
    /// # Errors
    /// [`ChunkError`] when `chunk_bytes` is zero or above `max_total_bytes`.
    pub fn new(chunk_bytes: u64, max_total_bytes: u64) -> Result<Self, ChunkError> {
        if chunk_bytes == 0 {
            return Err(ChunkError::ChunkBytes);
        }
        if max_total_bytes < chunk_bytes {
            return Err(ChunkError::MaxTotalBytes {
                chunk_bytes,
                max_total_bytes,
            });
        }
        Ok(Self {
            chunk_bytes,
            max_total_bytes,
        })
    }

    /// The size of each piece (the last may be shorter).
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }

    /// The most bytes a plan covers.
    pub fn max_total_bytes(&self) -> u64 {
        self.max_total_bytes
    }

    /// `(offset, len)` ranges covering the first
    /// `min(total_len, max_total_bytes)` bytes in order, without gaps or
    /// overlaps; empty for an empty input.
    pub fn plan(&self, total_len: u64) -> Vec<(u64, u64)> {
        let covered = total_len.min(self.max_total_bytes);
        let mut ranges =
            Vec::with_capacity(usize::try_from(covered.div_ceil(self.chunk_bytes)).unwrap_or(0));
        let mut offset = 0;
        while offset < covered {
            let len = self.chunk_bytes.min(covered - offset);
            ranges.push((offset, len));
            offset += len;
        }
        ranges
    }

    /// Whether the plan for `total_len` reads all of it; when not, the
    /// caller's outcome is `partial`.
    pub fn covers(&self, total_len: u64) -> bool {
        total_len <= self.max_total_bytes
    }
}

/// Whether `outcome` is a size failure that reading in chunks can fix.
pub fn should_chunk(outcome: &ToolOutcome) -> bool {
    matches!(
        outcome.code,
        Some(ErrorCode::FileTooLarge | ErrorCode::OutputTooLarge)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn plan_tiles_the_input_with_a_short_last_piece() {
        let p = ChunkPolicy::new(100, 1000).unwrap();
        assert_eq!(p.plan(250), vec![(0, 100), (100, 100), (200, 50)]);
        assert_eq!(p.plan(200), vec![(0, 100), (100, 100)]);
        assert_eq!(p.plan(1), vec![(0, 1)]);
        assert!(p.plan(0).is_empty());
        assert!(p.covers(1000));
    }

    #[test]
    fn plan_stops_at_max_total_bytes() {
        let p = ChunkPolicy::new(100, 250).unwrap();
        let plan = p.plan(u64::MAX);
        assert_eq!(plan, vec![(0, 100), (100, 100), (200, 50)]);
        assert!(!p.covers(251));
        let total: u64 = plan.iter().map(|(_, len)| len).sum();
        assert_eq!(total, 250);
    }

    #[test]
    fn only_size_failures_are_chunked() {
        for code in ErrorCode::all() {
            let expected = matches!(code, ErrorCode::FileTooLarge | ErrorCode::OutputTooLarge);
            let outcome = ToolOutcome::from_code(code.clone(), "x");
            assert_eq!(should_chunk(&outcome), expected, "{code}");
        }
        assert!(!should_chunk(&ToolOutcome::success(
            serde_json::Value::Null
        )));
    }

    #[test]
    fn rejects_bad_settings_by_name() {
        assert_eq!(ChunkPolicy::new(0, 10).unwrap_err().field(), "chunk_bytes");
        assert_eq!(
            ChunkPolicy::new(10, 9).unwrap_err().field(),
            "max_total_bytes"
        );
        assert!(ChunkPolicy::new(10, 10).is_ok());
    }
}
