//! Local-file plumbing both stores share: blocking file work off the async threads,
//! and the file a download resumes into.

use crate::StoreError;
use std::io::{Seek, SeekFrom};
use std::path::Path;

/// Runs blocking file work on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::permanent(format!("a repository task crashed: {e}")))?
}

/// Opens (or creates) the file a download writes, keeps its first `offset` bytes (what
/// an earlier attempt fetched), drops the rest and positions at `offset`.
pub(crate) fn open_for_resume(path: &Path, offset: u64) -> Result<std::fs::File, StoreError> {
    let shown = path.display().to_string();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::io(&shown, e))?;
    file.set_len(offset)
        .map_err(|e| StoreError::io(&shown, e))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| StoreError::io(&shown, e))?;
    Ok(file)
}
