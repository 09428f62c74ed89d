//! Starting a private server on a backup directory: what `prepare` (crash recovery
//! applies the copied redo, then a slow shutdown) and `verify` (a test restore) share.
//! The server never touches the network, the grant tables or the host's /tmp.

use crate::sandbox::{SandboxOptions, SandboxServer};
use stagehand_engine::StepError;
use std::path::{Path, PathBuf};

/// The `[mysqld]` settings of a backup's `backup-my.cnf` that a server started on it
/// must share with the source (page size, system and undo tablespaces).
pub fn backup_my_cnf_options(dir: &Path) -> Result<Vec<(String, Option<String>)>, StepError> {
    let path = dir.join("backup-my.cnf");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| StepError::fatal(format!("cannot read {}: {e}", path.display())))?;
    const KEEP: &[&str] = &[
        "innodb_page_size",
        "innodb_data_file_path",
        "innodb_undo_tablespaces",
        "innodb_log_file_size",
        "innodb_compression_level",
    ];
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| KEEP.contains(&k.as_str()))
        .map(|(k, v)| (k, Some(v)))
        .collect())
}

/// A short private directory for the socket and logs (socket paths are limited to
/// 107 bytes, so not under the backup directory).
pub fn run_dir() -> Result<tempfile::TempDir, StepError> {
    tempfile::Builder::new()
        .prefix("stagehand-srv")
        .tempdir_in("/tmp")
        .map_err(|e| StepError::fatal(format!("cannot create a run directory in /tmp: {e}")))
}

/// Starts `mariadbd` on `datadir` with the backup's settings; `memory` sizes the buffer
/// pool used for recovery.
pub async fn start_on(
    datadir: &Path,
    run_dir: &Path,
    memory: u64,
    binary: Option<PathBuf>,
) -> Result<SandboxServer, StepError> {
    let mut opts = SandboxOptions::new(datadir, run_dir)
        .skip_grant_tables(true)
        .options(backup_my_cnf_options(datadir)?)
        .option(
            "innodb_undo_directory",
            Some(&datadir.display().to_string()),
        )
        .option("innodb_buffer_pool_size", Some(&memory.to_string()))
        // A copy must not write binary logs or start replication of its own.
        .option("skip-log-bin", None)
        .start_timeout(std::time::Duration::from_secs(3600));
    if let Some(b) = binary {
        opts = opts.binary(b);
    }
    SandboxServer::start(opts).await.map_err(|e| {
        let tail = e.log_tail().map(|t| format!("\n{t}")).unwrap_or_default();
        StepError::fatal(format!(
            "the server did not start on {}: {e}{tail}",
            datadir.display()
        ))
    })
}
