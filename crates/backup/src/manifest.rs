//! The backup manifest, `stagehand.json`: written last, so a backup directory without it
//! (or with `complete: false`) is never taken for a finished backup.

use crate::entry::CopiedFile;
use serde::{Deserialize, Serialize};
use stagehand_mariadb::datadir::ServerSettings;
use std::path::Path;

pub const MANIFEST_FILE: &str = "stagehand.json";
/// What a moved-out backup's manifest is renamed to (`copy_back` with `mode: move`):
/// the directory is no longer a complete backup and must not be taken for one.
pub const MOVED_MANIFEST_FILE: &str = "stagehand.moved.json";
pub const MANIFEST_FORMAT: u32 = 1;
/// The sealed (encrypted) copy of an encrypted backup's manifest in its repository.
pub const SEALED_MANIFEST_FILE: &str = "stagehand.json.enc";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub tool: String,
    pub complete: bool,
    pub run_id: String,
    pub started_at: String,
    pub finished_at: String,
    pub server: ServerSettings,
    pub lsn: Lsns,
    pub binlog: Binlog,
    pub locks: Locks,
    pub redo: RedoFacts,
    pub copies: Vec<CopyFacts>,
    /// Every file of the backup but this manifest, sorted by path.
    pub files: Vec<CopiedFile>,
    /// DDL that ran while the files were copied under BACKUP STAGE START: the file
    /// changes prepare applies before recovery (`backup::ddl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ddl: Option<crate::ddl::DdlRecord>,
    /// Set (with `complete: false`) while `prepare` changes the files in place: after an
    /// interruption the hashes no longer match and only a rerun of prepare finishes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preparing: bool,
    /// Whether the directory has been prepared (made consistent) in place, and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<Prepared>,
    /// The metadata files named as the server's version expects (xtrabackup_* or
    /// mariadb_backup_*).
    pub metadata_files: Vec<String>,
    /// `full` (the only kind today; incremental backups will name their base).
    #[serde(default = "full")]
    pub backup_type: String,
    /// The backup this one needs to be restored (an incremental's base); rotation never
    /// deletes a backup another one depends on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The plan (name) that made the backup.
    #[serde(default)]
    pub plan: String,
    /// The host the backup was taken on.
    #[serde(default)]
    pub host: String,
    /// When a `verify` step last checked the backup, and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
    /// How the backup's objects are encrypted in its repository, and with which key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// Set by a step that checked every file's data against its hash (`fetch` as it
    /// wrote them, `verify`): how each file looked on disk then, and in which run.
    /// `prepare` in the same run reads again only the files that look otherwise now,
    /// and drops the receipt before it changes anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked: Option<CheckReceipt>,
}

/// What a step checked: each file of the manifest as it was on disk when its bytes
/// were found to match the manifest's hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckReceipt {
    /// The run of the step that checked (`prepare` trusts only its own run's checks:
    /// the longer the wait, the likelier a disk fault no file time shows).
    pub run_id: String,
    /// The step kind that checked: `fetch` or `verify`.
    pub by: String,
    pub at: String,
    pub files: std::collections::BTreeMap<String, FileIdentity>,
}

impl CheckReceipt {
    /// How the files of `m` in `dir` look now (one that cannot be looked at is left
    /// out, so it is read again), for a check `by` in run `run_id`.
    pub fn take(dir: &Path, m: &Manifest, run_id: &str, by: &str) -> Self {
        let files = m
            .files
            .iter()
            .filter_map(|f| {
                let meta = std::fs::symlink_metadata(dir.join(&f.path)).ok()?;
                Some((f.path.clone(), FileIdentity::of(&meta)))
            })
            .collect();
        Self {
            run_id: run_id.into(),
            by: by.into(),
            at: now_rfc3339(),
            files,
        }
    }

    /// Whether `rel` in `dir` is still the file that was checked.
    pub fn unchanged(&self, dir: &Path, rel: &str) -> bool {
        let now = std::fs::symlink_metadata(dir.join(rel)).map(|m| FileIdentity::of(&m));
        matches!((self.files.get(rel), now), (Some(then), Ok(now)) if *then == now)
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A file's inode, size, and modification and change times: a write changes the size
/// or the modification time, and a `touch` that puts an old modification time back
/// changes the change time, which no one can set.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileIdentity {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Self {
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// A backup encrypted client-side: its scheme and the id of its key (never the key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Encryption {
    pub scheme: String,
    pub key_id: String,
}

fn full() -> String {
    "full".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verified {
    pub at: String,
    /// `hashes`, `pages` or `restore` (a server was started on a copy).
    pub depth: String,
}

impl Manifest {
    /// Bytes the backup takes where it is stored (compressed sizes where compressed),
    /// the manifest aside.
    pub fn stored_bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|f| match (&f.encrypted, &f.stored) {
                (Some(e), _) => e.size,
                (None, Some(s)) => s.size,
                (None, None) => f.size,
            })
            .sum()
    }

    /// Bytes of the data the backup holds (uncompressed).
    pub fn data_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Parses a manifest read from anywhere; `shown` names it in errors.
    pub fn from_slice(text: &[u8], shown: &str) -> Result<Self, ManifestError> {
        let m: Manifest = serde_json::from_slice(text).map_err(|source| ManifestError::Parse {
            path: shown.to_string(),
            source,
        })?;
        if m.preparing {
            return Err(ManifestError::Preparing {
                path: shown.to_string(),
            });
        }
        if !m.complete {
            return Err(ManifestError::Incomplete {
                path: shown.to_string(),
            });
        }
        Ok(m)
    }

    /// Parses a manifest that may be in the middle of a prepare (what a rerun of
    /// prepare accepts); anything else incomplete is an error.
    pub fn from_slice_for_prepare(text: &[u8], shown: &str) -> Result<Self, ManifestError> {
        match Self::from_slice(text, shown) {
            Err(ManifestError::Preparing { .. }) => {
                serde_json::from_slice(text).map_err(|source| ManifestError::Parse {
                    path: shown.to_string(),
                    source,
                })
            }
            other => other,
        }
    }

    /// The manifest as written to disk or to a repository.
    pub fn to_vec(&self) -> Vec<u8> {
        // A Manifest holds only strings, numbers and maps: serialising cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Lsns {
    /// The checkpoint the redo copy started from (recovery starts there).
    pub checkpoint: u64,
    pub checkpoint_end: u64,
    /// The LSN read under BLOCK_COMMIT: the backup holds every commit up to here.
    pub commit: u64,
    /// The LSN the redo copy reached (≥ commit).
    pub last: u64,
    /// The server's newest checkpoint when the copy ended (`to_lsn` of mariadb-backup).
    pub last_checkpoint: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Binlog {
    pub file: String,
    pub position: u64,
    pub gtid_binlog_pos: String,
    pub gtid_current_pos: String,
    pub gtid_slave_pos: String,
    #[serde(default)]
    pub replica: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Locks {
    pub method: String,
    /// Milliseconds each stage was held.
    pub holds_ms: serde_json::Map<String, serde_json::Value>,
    /// BLOCK_COMMIT to END: how long commits waited.
    pub commit_blocked_ms: f64,
    /// BLOCK_DDL to END: how long DDL waited (0 in manifests written before it was
    /// recorded).
    #[serde(default)]
    pub ddl_blocked_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RedoFacts {
    pub bytes: u64,
    pub capacity: u64,
    pub max_lag_bytes: u64,
    pub final_catch_up_ms: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CopyFacts {
    pub step: String,
    pub files: String,
    pub started_at: String,
    pub seconds: f64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prepared {
    pub engine: String,
    pub at: String,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: no {MANIFEST_FILE}: this is not a complete stagehand backup (an interrupted backup never gets one)")]
    Missing { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: the manifest does not parse: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: the manifest says the backup is not complete")]
    Incomplete { path: String },
    #[error("{path}: an interrupted prepare: files of the backup changed after the manifest was written; run prepare again on this directory to finish it")]
    Preparing { path: String },
    #[error("{path} is the spool of a streamed backup: its files went to the repository as they were copied, so it is not a backup by itself; restore from the repository (plans/restore.yaml)")]
    Spool { path: String },
}

impl Manifest {
    /// Reads the manifest of a backup directory; an incomplete backup is an error.
    pub fn read(dir: &Path) -> Result<Self, ManifestError> {
        let (text, shown) = Self::read_text(dir)?;
        Self::from_slice(&text, &shown)
    }

    /// Reads the manifest of a complete backup, or of one whose prepare was interrupted.
    pub fn read_for_prepare(dir: &Path) -> Result<Self, ManifestError> {
        refuse_spool(dir)?;
        let (text, shown) = Self::read_text(dir)?;
        Self::from_slice_for_prepare(&text, &shown)
    }

    /// Reads the manifest of a backup to check or use it locally: a streamed backup's
    /// spool (sealed, but its files shipped and gone) is refused, not taken for a backup.
    pub fn read_local(dir: &Path) -> Result<Self, ManifestError> {
        refuse_spool(dir)?;
        Self::read(dir)
    }

    fn read_text(dir: &Path) -> Result<(Vec<u8>, String), ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let shown = path.display().to_string();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ManifestError::Missing {
                    path: dir.display().to_string(),
                })
            }
            Err(source) => {
                return Err(ManifestError::Io {
                    path: shown,
                    source,
                })
            }
        };
        Ok((text, shown))
    }

    /// Writes the manifest atomically (temporary file, fsync, rename, fsync of the
    /// directory): the last write of a backup.
    pub fn write(&self, dir: &Path) -> Result<(), ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let io = |source| ManifestError::Io {
            path: path.display().to_string(),
            source,
        };
        let text = serde_json::to_vec_pretty(self).map_err(|e| ManifestError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        let opts = stagehand_host::atomic::AtomicOptions::durable();
        stagehand_host::atomic::write_atomic(&path, &text, opts).map_err(io)
    }
}

/// Claims `dir` for run `run_id`: creates it, or accepts it when it is empty or already
/// claimed by this run. The unsealed directory of a run that is gone (killed, its host
/// rebooted) is emptied and claimed, so a nightly job never waits for someone to `rm`
/// it. A directory with anything else in it (a run still going, a sealed backup,
/// unrelated files) is refused: left-over files would end up in a backup that looks
/// complete.
pub fn claim_target(dir: &Path, run_id: &str) -> Result<(), ClaimError> {
    // Two steps of one run may claim at once: one of them reclaims, the other sees it.
    static CLAIMING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = CLAIMING.lock().unwrap_or_else(|p| p.into_inner());
    let marker = crate::dir::BackupDir::new(dir).run_marker();
    let io = |source| ClaimError::Io {
        dir: dir.display().to_string(),
        source,
    };
    if let Some(claim) = Claim::read(dir) {
        if claim.run_id == run_id {
            return Ok(());
        }
        if !claim.is_abandoned(dir) {
            return Err(ClaimError::OtherRun {
                dir: dir.display().to_string(),
                owner: claim.run_id,
            });
        }
        tracing::warn!(
            dir = %dir.display(),
            run = %claim.run_id,
            "run {} was interrupted (its process is gone) before it sealed this directory: its files are removed and the directory reused",
            claim.run_id
        );
        empty_dir(dir).map_err(io)?;
    }
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(source) => {
            return Err(ClaimError::Io {
                dir: dir.display().to_string(),
                source,
            })
        }
    };
    if !empty {
        return Err(ClaimError::NotEmpty {
            dir: dir.display().to_string(),
        });
    }
    // The backup's root is private: what is below it holds every row of the server.
    stagehand_host::private_fs::make_private_dir(dir).map_err(io)?;
    stagehand_host::private_fs::create_private_dir_all(&crate::dir::BackupDir::new(dir).work())
        .map_err(io)?;
    stagehand_host::private_fs::write_private(&marker, Claim::mine(run_id).render()).map_err(io)
}

/// The run that claimed `dir` as its backup directory, if any.
pub fn claimed_by(dir: &Path) -> Option<String> {
    Claim::read(dir).map(|c| c.run_id)
}

/// What the claim marker says: the run, and (since it names a process) the host, pid
/// and process start time that tell whether that run is still alive.
struct Claim {
    run_id: String,
    process: Option<(String, u32, u64)>,
}

impl Claim {
    fn mine(run_id: &str) -> Self {
        let pid = std::process::id();
        Claim {
            run_id: run_id.to_string(),
            process: stagehand_host::procfs::start_time(pid)
                .map(|start| (stagehand_host::machine::host_name(), pid, start)),
        }
    }

    fn render(&self) -> String {
        match &self.process {
            Some((host, pid, start)) => {
                format!("{}\nhost={host} pid={pid} start={start}\n", self.run_id)
            }
            None => format!("{}\n", self.run_id),
        }
    }

    fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(crate::dir::BackupDir::new(dir).run_marker()).ok()?;
        let mut lines = text.lines();
        let run_id = lines.next()?.trim().to_string();
        let fields: std::collections::HashMap<&str, &str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let process = (|| {
            Some((
                fields.get("host")?.to_string(),
                fields.get("pid")?.parse().ok()?,
                fields.get("start")?.parse().ok()?,
            ))
        })();
        Some(Claim { run_id, process })
    }

    /// Unsealed (or the spool of a streamed backup: sealed, but its files leave, so it
    /// is never a backup by itself), and its process provably gone: same host, and no
    /// process with that pid started at that time. A claim from another host (a shared
    /// NFS target) or without a process (older stagehand) is never taken for abandoned.
    fn is_abandoned(&self, dir: &Path) -> bool {
        let Some((host, pid, start)) = &self.process else {
            return false;
        };
        (!dir.join(MANIFEST_FILE).exists() || crate::spool::is_streaming(dir))
            && *host == stagehand_host::machine::host_name()
            && stagehand_host::procfs::start_time(*pid) != Some(*start)
    }
}

fn refuse_spool(dir: &Path) -> Result<(), ManifestError> {
    if crate::spool::is_streaming(dir) {
        return Err(ManifestError::Spool {
            path: dir.display().to_string(),
        });
    }
    Ok(())
}

/// Removes everything in `dir`, the claim marker last.
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    let mut claim_dir = None;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n == crate::dir::WORK_DIR) {
            claim_dir = Some(path);
        } else if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    claim_dir.map_or(Ok(()), std::fs::remove_dir_all)
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("{dir} is not empty: a backup goes into a new or empty directory (left-over files would end up in it)")]
    NotEmpty { dir: String },
    #[error("{dir} holds the files of run {owner} (an interrupted backup?), not of this run")]
    OtherRun { dir: String, owner: String },
    #[error("{dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}

impl ClaimError {
    pub fn into_step_error(self) -> stagehand_engine::StepError {
        stagehand_engine::StepError::fatal(self.to_string())
            .with_hint("remove the directory (or choose another target) and run the backup again")
    }
}

/// Files in `dir` that `listed` does not name (the manifest and the staging area aside).
pub fn unlisted_files(dir: &Path, listed: &[crate::entry::CopiedFile]) -> Vec<String> {
    let names: std::collections::HashSet<&str> = listed.iter().map(|f| f.path.as_str()).collect();
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            let rel = p
                .strip_prefix(dir)
                .map(|r| r.display().to_string())
                .unwrap_or_default();
            if rel == MANIFEST_FILE
                || rel == SEALED_MANIFEST_FILE
                || rel.starts_with(crate::dir::WORK_DIR)
            {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if !names.contains(rel.as_str()) {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetch_receipt_holds_only_while_the_file_is_untouched() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("t.ibd");
        std::fs::write(&path, vec![7u8; 64 << 10]).expect("write");
        let rel = "t.ibd".to_string();
        let mut files = std::collections::BTreeMap::new();
        let meta = std::fs::metadata(&path).expect("stat");
        files.insert(rel.clone(), FileIdentity::of(&meta));
        let receipt = CheckReceipt {
            run_id: "r".into(),
            by: "fetch".into(),
            at: "now".into(),
            files,
        };
        assert!(receipt.unchanged(d.path(), &rel));
        assert!(
            !receipt.unchanged(d.path(), "other.ibd"),
            "not in the receipt"
        );

        // One byte changed in place, same size, the modification time put back: the
        // change time still tells.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mtime = meta.modified().expect("mtime");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        std::os::unix::fs::FileExt::write_all_at(&f, &[8u8], 4096).expect("write");
        f.set_modified(mtime).expect("set mtime");
        drop(f);
        let now = std::fs::metadata(&path).expect("stat");
        assert_eq!((now.len(), now.modified().ok()), (meta.len(), Some(mtime)));
        assert!(!receipt.unchanged(d.path(), &rel));

        std::fs::remove_file(&path).expect("rm");
        assert!(!receipt.unchanged(d.path(), &rel), "gone");
    }

    #[test]
    fn locks_written_before_ddl_blocked_ms_was_recorded_still_read() {
        let old =
            serde_json::json!({"method": "backup_stage", "holds_ms": {}, "commit_blocked_ms": 8.5});
        let locks = serde_json::from_value::<Locks>(old).map_err(|e| e.to_string());
        assert_eq!(
            locks.map(|l| (l.commit_blocked_ms, l.ddl_blocked_ms)),
            Ok((8.5, 0.0))
        );
    }

    /// A directory claimed by `run` as process `pid` started at `start` on `host`.
    fn claimed_by_process(run: &str, host: &str, pid: u32, start: u64) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join(".stagehand")).expect("mkdir");
        let claim = Claim {
            run_id: run.into(),
            process: Some((host.into(), pid, start)),
        };
        std::fs::write(
            crate::dir::BackupDir::new(d.path()).run_marker(),
            claim.render(),
        )
        .expect("marker");
        std::fs::create_dir_all(d.path().join("db")).expect("mkdir");
        std::fs::write(d.path().join("db/t.ibd"), b"partial").expect("write");
        d
    }

    /// A streamed backup's spool keeps its claim and its streaming mark when sealed: if
    /// the run dies before the upload ends, the next run reclaims it (a nightly job
    /// never stalls on it), but never while the run that owns it goes on.
    #[test]
    fn the_sealed_spool_of_a_dead_run_is_reclaimed_but_not_one_of_a_live_run() {
        let host = stagehand_host::machine::host_name();
        let dead = claimed_by_process("old-run", &host, u32::MAX - 1, 1);
        std::fs::write(dead.path().join(MANIFEST_FILE), b"{}").expect("manifest");
        crate::spool::mark_streaming(dead.path(), &Default::default()).expect("mark");
        claim_target(dead.path(), "new-run").expect("reclaimed");
        assert!(!dead.path().join(MANIFEST_FILE).exists());
        assert!(!dead.path().join("db").exists());

        let me = std::process::id();
        let my_start = stagehand_host::procfs::start_time(me).expect("own start time");
        let live = claimed_by_process("live-run", &host, me, my_start);
        std::fs::write(live.path().join(MANIFEST_FILE), b"{}").expect("manifest");
        crate::spool::mark_streaming(live.path(), &Default::default()).expect("mark");
        assert!(matches!(
            claim_target(live.path(), "new"),
            Err(ClaimError::OtherRun { .. })
        ));
        assert!(live.path().join("db/t.ibd").exists());
    }

    #[test]
    fn a_sealed_spool_is_not_taken_for_a_backup_by_prepare_or_verify() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join(MANIFEST_FILE), b"{}").expect("manifest");
        crate::spool::mark_streaming(d.path(), &Default::default()).expect("mark");
        for read in [Manifest::read_for_prepare, Manifest::read_local] {
            assert!(matches!(read(d.path()), Err(ManifestError::Spool { .. })));
        }
    }

    #[test]
    fn the_unsealed_directory_of_a_dead_run_is_emptied_and_claimed() {
        // A pid that cannot be running (above the kernel's pid_max), or this process
        // with another start time: both are a run that is gone.
        let me = std::process::id();
        let my_start = stagehand_host::procfs::start_time(me).expect("own start time");
        for (pid, start) in [(u32::MAX - 1, 1), (me, my_start + 1)] {
            let d =
                claimed_by_process("old-run", &stagehand_host::machine::host_name(), pid, start);
            claim_target(d.path(), "new-run").expect("reclaimed");
            assert_eq!(claimed_by(d.path()).as_deref(), Some("new-run"));
            assert!(
                !d.path().join("db").exists(),
                "the dead run's files are gone"
            );
        }
    }

    #[test]
    fn a_live_run_a_sealed_backup_another_host_or_an_old_marker_is_not_reclaimed() {
        let me = std::process::id();
        let my_start = stagehand_host::procfs::start_time(me).expect("own start time");
        let live = claimed_by_process(
            "live-run",
            &stagehand_host::machine::host_name(),
            me,
            my_start,
        );
        assert!(matches!(
            claim_target(live.path(), "new"),
            Err(ClaimError::OtherRun { .. })
        ));

        let sealed = claimed_by_process(
            "old-run",
            &stagehand_host::machine::host_name(),
            u32::MAX - 1,
            1,
        );
        std::fs::write(sealed.path().join(MANIFEST_FILE), b"{}").expect("manifest");
        assert!(claim_target(sealed.path(), "new").is_err());
        assert!(sealed.path().join("db/t.ibd").exists());

        let elsewhere = claimed_by_process("old-run", "another-host", u32::MAX - 1, 1);
        assert!(
            claim_target(elsewhere.path(), "new").is_err(),
            "a shared target on NFS"
        );

        let old = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(old.path().join(".stagehand")).expect("mkdir");
        std::fs::write(
            crate::dir::BackupDir::new(old.path()).run_marker(),
            "old-run",
        )
        .expect("marker");
        assert!(
            claim_target(old.path(), "new").is_err(),
            "no process recorded"
        );
    }

    fn sample(complete: bool, preparing: bool) -> Vec<u8> {
        let value = serde_json::json!({
            "format": 1, "tool": "t", "complete": complete, "preparing": preparing,
            "run_id": "r", "started_at": "", "finished_at": "",
            "server": ServerSettings::default(), "lsn": Lsns::default(),
            "binlog": Binlog::default(), "locks": Locks::default(),
            "redo": RedoFacts::default(), "copies": [], "files": [], "metadata_files": [],
        });
        serde_json::to_vec(&value).unwrap_or_default()
    }

    #[test]
    fn a_manifest_being_prepared_is_not_complete_but_prepare_may_finish_it() {
        let text = sample(false, true);
        let err = Manifest::from_slice(&text, "b/stagehand.json").err();
        assert!(
            matches!(err, Some(ManifestError::Preparing { .. })),
            "{err:?}"
        );
        let shown = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(shown.contains("interrupted prepare") && shown.contains("run prepare again"));
        assert!(Manifest::from_slice_for_prepare(&text, "b").is_ok_and(|m| m.preparing));
        assert!(matches!(
            Manifest::from_slice_for_prepare(&sample(false, false), "b"),
            Err(ManifestError::Incomplete { .. })
        ));
        let complete = Manifest::from_slice(&sample(true, false), "b");
        assert!(complete.is_ok_and(|m| !m.to_vec().windows(9).any(|w| w == b"preparing")));
    }
}
