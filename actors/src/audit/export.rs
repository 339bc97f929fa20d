//! Export of the audit trail as JSON lines.
//!
//! One event per line, exactly as [`Event`](crate::event::Event)
//! serializes (ids included), oldest first by id, so an export can be
//! read back with `serde_json` line by line, diffed, or fed to `jq`. The
//! store is paged by id, so events committed during the export are either
//! in it or after it, never half.

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::store::{EventFilter, EventQuery, Order, Store, StoreError};

/// Events read from the store per page.
const PAGE: usize = 1000;

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the store failed.
    #[error("reading the audit trail: {0}")]
    Store(#[from] StoreError),
    /// Writing the output failed.
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    /// An event could not be encoded.
    #[error("encoding an event: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Writes every event matching `filter` to `writer` as JSON lines, oldest
/// first, and returns how many were written. The writer is flushed at
/// the end.
///
/// # Errors
/// [`ExportError`] on the first read, encode or write failure; the lines
/// written before it are complete.
///
/// # Cancel safety
/// Not cancel safe: a cancelled export leaves a partial file.
pub async fn export_jsonl<W>(
    store: &dyn Store,
    filter: &EventFilter,
    writer: &mut W,
) -> Result<u64, ExportError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut after = 0;
    let mut written = 0;
    let mut line = Vec::new();
    loop {
        let page = store
            .query(EventQuery {
                filter: filter.clone(),
                order: Order::InsertedAfter(after),
                limit: PAGE,
            })
            .await?;
        for event in &page {
            line.clear();
            serde_json::to_writer(&mut line, event)?;
            line.push(b'\n');
            writer.write_all(&line).await?;
            written += 1;
        }
        match page.last().and_then(|e| e.id) {
            Some(last) if page.len() == PAGE => after = last,
            _ => break,
        }
    }
    writer.flush().await?;
    Ok(written)
}
