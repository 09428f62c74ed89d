//! Every path under a backup directory, in one place. A backup directory holds the
//! copied files, the metadata files mariadb-backup also writes, the manifest
//! (`stagehand.json`, written last) and a work folder `.stagehand/` that lives only
//! until the backup is sealed: the run marker, the copy steps' parts, the streaming
//! ledgers, the redo file-operation ledger and fetch's marker.

use crate::entry::CopiedFile;
use serde::{Deserialize, Serialize};
use stagehand_engine::StepError;
use stagehand_mariadb::datadir::{FileSet, ServerSettings};
use std::path::{Path, PathBuf};

/// The work folder's name; nothing in it is part of the backup.
pub const WORK_DIR: &str = ".stagehand";

/// A backup directory and the paths under it.
#[derive(Debug, Clone)]
pub struct BackupDir {
    root: PathBuf,
}

impl BackupDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `.stagehand/`: removed when the backup is sealed.
    pub fn work(&self) -> PathBuf {
        self.root.join(WORK_DIR)
    }
    /// Which run owns the unsealed directory (see `manifest::claim_target`).
    pub fn run_marker(&self) -> PathBuf {
        self.work().join("run")
    }
    /// Where copy steps leave their parts of the manifest.
    pub fn parts(&self) -> PathBuf {
        self.work().join("parts")
    }
    pub fn part(&self, step: &str) -> PathBuf {
        self.parts().join(format!("{step}.json"))
    }
    /// The ledgers of files announced to a streaming upload.
    pub fn ready(&self) -> PathBuf {
        self.work().join("ready")
    }
    /// Present while the files leave as they are finished (a streamed backup).
    pub fn streaming_marker(&self) -> PathBuf {
        self.work().join("streaming")
    }
    /// The tablespace file operations the redo tail saw.
    pub fn file_ops(&self) -> PathBuf {
        self.work().join("file_ops.json")
    }
    /// The ledger as the redo tail last published it; `None` when there is none yet (or
    /// it cannot be read: the tail replaces it whole, so that is not a torn write).
    pub fn read_file_ops(&self) -> Option<stagehand_innodb::file_ops::FileOps> {
        let bytes = std::fs::read(self.file_ops()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
    /// Present while `fetch` fills the directory; names the backup it holds.
    pub fn fetch_marker(&self) -> PathBuf {
        self.work().join("fetching")
    }

    /// Every part the copy steps wrote, oldest first (a later part wins for the same
    /// file). None when no copy step ran yet; an unreadable part is an error, never
    /// skipped: a backup must not silently lose the files a part lists.
    pub fn read_parts(&self) -> Result<Vec<CopyPart>, StepError> {
        let dir = self.parts();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StepError::fatal(format!("{}: {e}", dir.display()))),
        };
        let mut parts = Vec::new();
        for e in entries {
            let p = e
                .map_err(|e| StepError::fatal(format!("{}: {e}", dir.display())))?
                .path();
            if p.extension().is_some_and(|x| x == "json") {
                parts.push(read_part(&p)?);
            }
        }
        parts.sort_by_key(|p: &CopyPart| p.finished_ns);
        Ok(parts)
    }

    /// Writes one copy step's part. Not synced: parts only live until `seal`, which
    /// syncs what it keeps, and an fsync here would lengthen a copy made under
    /// BLOCK_COMMIT.
    pub fn write_part(&self, part: &CopyPart) -> Result<PathBuf, StepError> {
        let path = self.part(&part.step);
        let failed = |e: &dyn std::fmt::Display| {
            StepError::fatal(format!("cannot write {}: {e}", path.display()))
        };
        let text = serde_json::to_vec_pretty(part).map_err(|e| failed(&e))?;
        let opts = stagehand_host::atomic::AtomicOptions::unsynced();
        stagehand_host::atomic::write_atomic(&path, &text, opts).map_err(|e| failed(&e))?;
        Ok(path)
    }
}

fn read_part(p: &Path) -> Result<CopyPart, StepError> {
    let text = std::fs::read(p).map_err(|e| StepError::fatal(format!("{}: {e}", p.display())))?;
    serde_json::from_slice(&text).map_err(|e| StepError::fatal(format!("{}: {e}", p.display())))
}

/// The part of the manifest one copy step writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyPart {
    pub step: String,
    pub files_set: FileSet,
    pub settings: ServerSettings,
    pub started_at: String,
    pub seconds: f64,
    /// When the step finished (ns since the epoch): later parts win for the same file.
    pub finished_ns: i128,
    pub files: Vec<CopiedFile>,
    /// The server's InnoDB LSN when the step began and when it ended: a file copied
    /// between them had the name it was copied under somewhere in that range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn_range: Option<(u64, u64)>,
    /// From the reconcile under BLOCK_DDL: the file changes prepare applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ddl: Option<crate::ddl::DdlRecord>,
    /// Files an earlier part listed that left the backup: the reconcile found their
    /// table dropped or renamed by DDL run during the copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

/// The server's settings as the InnoDB copy recorded them (the first part of a copy of
/// InnoDB files), or an error naming the directory when no such copy wrote into it.
pub fn innodb_settings(parts: &[CopyPart], dir: &Path) -> Result<ServerSettings, StepError> {
    parts
        .iter()
        .find(|p| matches!(p.files_set, FileSet::Innodb | FileSet::All))
        .map(|p| p.settings.clone())
        .ok_or_else(|| {
            StepError::fatal(format!("no InnoDB copy found in {}", dir.display()))
                .with_hint("a `copy` step with `files: innodb` must write into the same directory")
        })
}

/// The backup's files as the parts left them, by path: parts in the order they
/// finished, each one's removals first, then its files (a later copy of a path wins).
pub fn merged_files(parts: &[CopyPart]) -> std::collections::BTreeMap<String, CopiedFile> {
    let mut by_path = std::collections::BTreeMap::new();
    for part in parts {
        for gone in &part.removed {
            by_path.remove(gone);
        }
        for f in &part.files {
            by_path.insert(f.path.clone(), f.clone());
        }
    }
    by_path
}
