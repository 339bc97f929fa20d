//! Where approvals are kept so that they outlive the actor and the
//! process.
//!
//! The escalation actor acknowledges nothing before the store says it is
//! durable, so the trait is the whole durability contract: `save` returns
//! only once the approval would survive a kill -9. [`FileApprovalStore`]
//! keeps one JSON file per approval, written atomically (temp file, fsync,
//! rename, fsync of the directory); the SQLite store implements the same
//! trait. [`MemoryApprovalStore`] is for tests that do not restart.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::escalation::Approval;
use crate::tool::BoxFuture;

/// A store failure; nothing was acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ApprovalStoreError(pub String);

/// Durable approvals.
pub trait ApprovalStore: Send + Sync + 'static {
    /// Inserts or replaces `approval`; resolves once it is durable.
    fn save(&self, approval: Approval) -> BoxFuture<'_, Result<(), ApprovalStoreError>>;

    /// Every stored approval, open and resolved, oldest first.
    fn load_all(&self) -> BoxFuture<'_, Result<Vec<Approval>, ApprovalStoreError>>;

    /// Retention: deletes the approvals `ids` (decided before
    /// `decided_before`, already dropped by the actor) and any other
    /// approval decided before then; returns how many rows went. A store
    /// that keeps everything (the default) deletes nothing.
    fn forget(
        &self,
        ids: Vec<String>,
        decided_before: jiff::Timestamp,
    ) -> BoxFuture<'_, Result<u64, ApprovalStoreError>> {
        let _ = (ids, decided_before);
        Box::pin(async { Ok(0) })
    }
}

/// Rows deleted per store write by approval retention.
const FORGET_CHUNK: usize = 1000;

/// Approvals in memory: lost with the process.
#[derive(Debug, Default, Clone)]
pub struct MemoryApprovalStore {
    approvals: Arc<Mutex<BTreeMap<String, Approval>>>,
}

impl MemoryApprovalStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl ApprovalStore for MemoryApprovalStore {
    fn forget(
        &self,
        ids: Vec<String>,
        _decided_before: jiff::Timestamp,
    ) -> BoxFuture<'_, Result<u64, ApprovalStoreError>> {
        let mut approvals = self
            .approvals
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = ids
            .iter()
            .filter(|id| approvals.remove(id.as_str()).is_some())
            .count();
        Box::pin(async move { Ok(n as u64) })
    }

    fn save(&self, approval: Approval) -> BoxFuture<'_, Result<(), ApprovalStoreError>> {
        self.approvals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(approval.id.clone(), approval);
        Box::pin(async { Ok(()) })
    }

    fn load_all(&self) -> BoxFuture<'_, Result<Vec<Approval>, ApprovalStoreError>> {
        let mut all: Vec<Approval> = self
            .approvals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|a| a.opened_at);
        Box::pin(async move { Ok(all) })
    }
}

/// One JSON file per approval in a directory, each written atomically and
/// durably.
#[derive(Debug, Clone)]
pub struct FileApprovalStore {
    dir: PathBuf,
}

impl FileApprovalStore {
    /// A store in `dir`, created if missing.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, ApprovalStoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApprovalStoreError(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Self { dir })
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }
}

fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("json.{}.tmp", fastrand::u64(..)));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl ApprovalStore for FileApprovalStore {
    fn save(&self, approval: Approval) -> BoxFuture<'_, Result<(), ApprovalStoreError>> {
        let dir = self.dir.clone();
        let path = self.path_of(&approval.id);
        Box::pin(async move {
            let bytes = serde_json::to_vec_pretty(&approval)
                .map_err(|e| ApprovalStoreError(format!("cannot encode approval: {e}")))?;
            tokio::task::spawn_blocking(move || write_durably(&dir, &path, &bytes))
                .await
                .map_err(|e| ApprovalStoreError(format!("write task failed: {e}")))?
                .map_err(|e| ApprovalStoreError(format!("cannot write approval: {e}")))
        })
    }

    fn load_all(&self) -> BoxFuture<'_, Result<Vec<Approval>, ApprovalStoreError>> {
        let dir = self.dir.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut all = Vec::new();
                let entries = std::fs::read_dir(&dir).map_err(|e| {
                    ApprovalStoreError(format!("cannot list {}: {e}", dir.display()))
                })?;
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.extension().and_then(|e| e.to_str()) != Some("json") {
                        continue;
                    }
                    let bytes = std::fs::read(&path).map_err(|e| {
                        ApprovalStoreError(format!("cannot read {}: {e}", path.display()))
                    })?;
                    let approval: Approval = serde_json::from_slice(&bytes).map_err(|e| {
                        ApprovalStoreError(format!("{} is not an approval: {e}", path.display()))
                    })?;
                    all.push(approval);
                }
                all.sort_by_key(|a| a.opened_at);
                Ok(all)
            })
            .await
            .map_err(|e| ApprovalStoreError(format!("read task failed: {e}")))?
        })
    }
}

/// Approvals in hale's [`Store`](crate::store::Store) (the SQLite
/// database by default), in its `approvals` table.
///
/// The table numbers its rows and only compares states; escalation names
/// approvals itself. So the whole [`Approval`] is the row's `request`
/// JSON, its resolution the row's `resolution`, and the state moves `open`
/// -> `resolved` by compare-and-set: a second process that resolved the
/// same approval first makes this save fail instead of overwriting it.
/// The row number of each approval is remembered from `load_all` and
/// from the inserts.
pub struct StoreApprovals {
    store: Arc<dyn crate::store::Store>,
    rows: Mutex<BTreeMap<String, u64>>,
}

impl std::fmt::Debug for StoreApprovals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreApprovals").finish_non_exhaustive()
    }
}

const OPEN: &str = "open";
const RESOLVED: &str = "resolved";

impl StoreApprovals {
    /// Approvals kept in `store`.
    pub fn new(store: Arc<dyn crate::store::Store>) -> Self {
        Self {
            store,
            rows: Mutex::new(BTreeMap::new()),
        }
    }

    fn row_of(&self, id: &str) -> Option<u64> {
        self.rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
    }

    fn remember(&self, id: &str, row: u64) {
        self.rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), row);
    }
}

fn store_error(e: impl std::fmt::Display) -> ApprovalStoreError {
    ApprovalStoreError(e.to_string())
}

impl ApprovalStore for StoreApprovals {
    fn save(&self, approval: Approval) -> BoxFuture<'_, Result<(), ApprovalStoreError>> {
        Box::pin(async move {
            let resolution = match &approval.resolution {
                Some(r) => Some(serde_json::to_value(r).map_err(store_error)?),
                None => None,
            };
            match self.row_of(&approval.id) {
                None => {
                    let mut unresolved = approval.clone();
                    unresolved.resolution = None;
                    let request = serde_json::to_value(&unresolved).map_err(store_error)?;
                    let row = self
                        .store
                        .insert_approval(crate::store::NewApproval {
                            state: OPEN.to_owned(),
                            request,
                            expires_at: Some(approval.deadline),
                        })
                        .await
                        .map_err(store_error)?;
                    self.remember(&approval.id, row);
                    if resolution.is_some() {
                        // Opened and decided in one go (not something the
                        // actor does, but the trait allows it).
                        self.transition(row, &approval.id, resolution).await?;
                    }
                    Ok(())
                }
                Some(row) if resolution.is_some() => {
                    self.transition(row, &approval.id, resolution).await
                }
                // Nothing about an open approval changes after it is
                // opened.
                Some(_) => Ok(()),
            }
        })
    }

    fn forget(
        &self,
        ids: Vec<String>,
        decided_before: jiff::Timestamp,
    ) -> BoxFuture<'_, Result<u64, ApprovalStoreError>> {
        Box::pin(async move {
            {
                let mut rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
                for id in &ids {
                    rows.remove(id);
                }
            }
            // The rows' `updated_at` is when they were decided.
            let mut deleted = 0;
            loop {
                let n = self
                    .store
                    .prune_approvals(OPEN.to_owned(), decided_before, FORGET_CHUNK)
                    .await
                    .map_err(store_error)?;
                deleted += n;
                if n < FORGET_CHUNK as u64 {
                    return Ok(deleted);
                }
            }
        })
    }

    fn load_all(&self) -> BoxFuture<'_, Result<Vec<Approval>, ApprovalStoreError>> {
        Box::pin(async move {
            let records = self.store.approvals(None).await.map_err(store_error)?;
            let mut all = Vec::with_capacity(records.len());
            for record in records {
                let mut approval: Approval = serde_json::from_value(record.request.clone())
                    .map_err(|e| store_error(format!("approval row {}: {e}", record.id)))?;
                approval.resolution = match record.resolution {
                    Some(value) => Some(serde_json::from_value(value).map_err(|e| {
                        store_error(format!("resolution of approval row {}: {e}", record.id))
                    })?),
                    None => None,
                };
                self.remember(&approval.id, record.id);
                all.push(approval);
            }
            all.sort_by_key(|a| a.opened_at);
            Ok(all)
        })
    }
}

impl StoreApprovals {
    async fn transition(
        &self,
        row: u64,
        id: &str,
        resolution: Option<serde_json::Value>,
    ) -> Result<(), ApprovalStoreError> {
        let moved = self
            .store
            .transition_approval(crate::store::ApprovalTransition {
                id: row,
                from: OPEN.to_owned(),
                to: RESOLVED.to_owned(),
                resolution,
            })
            .await
            .map_err(store_error)?;
        if moved {
            Ok(())
        } else {
            Err(ApprovalStoreError(format!(
                "approval `{id}` is no longer open in the store (resolved elsewhere)"
            )))
        }
    }
}
