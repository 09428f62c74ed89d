//! `seal`: the last step of a backup. Checks that the pieces fit (the redo copy reached
//! the commit LSN, the InnoDB copy is there), writes the metadata files mariadb-backup
//! expects (so `mariadb-backup --prepare` works on the directory too), and then the
//! manifest, which is what marks the backup complete.

use crate::outputs::{RedoTailOutput, SealOutput, StageLocksOutput};
use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use stagehand_backup::dir::{BackupDir, CopyPart};
use stagehand_backup::entry::hash_file;
use stagehand_backup::entry::CopiedFile;
use stagehand_backup::manifest::*;
use stagehand_engine::{StepContext, StepError, TypedStep};
use stagehand_innodb::backup_files as bf;
use stagehand_innodb::file_ops::Change;
use stagehand_mariadb::locks::Stage;
use std::path::Path;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SealConfig {
    /// The backup directory the upstream copy and redo_tail steps wrote.
    pub to: String,
}

pub struct Seal;

#[async_trait]
impl TypedStep for Seal {
    type Config = SealConfig;
    const NAME: &'static str = "seal";
    type Output = SealOutput;
    const SUMMARY: &'static str = "Checks a backup's pieces, writes its metadata files and its manifest (what marks it complete)";

    fn describe(cfg: &SealConfig) -> String {
        format!(
            "checks that the redo copy reached the commit LSN and writes the metadata files and the manifest {}/stagehand.json, marking the backup complete",
            cfg.to
        )
    }

    async fn run(cfg: &SealConfig, ctx: &StepContext) -> Result<SealOutput, StepError> {
        let dir = Path::new(&cfg.to).to_path_buf();
        stagehand_backup::manifest::claim_target(&dir, &ctx.run_id)
            .map_err(|e| e.into_step_error())?;
        let made_by = MadeBy {
            run_id: ctx.run_id.clone(),
            plan: ctx.run.plan.clone(),
            host: ctx.run.host.clone(),
        };
        let upstream = Upstreams {
            locks: owned(ctx.upstream_outputs::<StageLocksOutput>()?),
            redo: owned(ctx.upstream_outputs::<RedoTailOutput>()?),
        };
        tokio::task::spawn_blocking(move || seal(&dir, &made_by, &upstream))
            .await
            .map_err(|e| StepError::fatal(format!("seal crashed: {e}")))?
    }
}

/// What seal reads from the steps upstream of it.
struct Upstreams {
    locks: Vec<StageLocksOutput>,
    redo: Vec<RedoTailOutput>,
}

fn owned<O>(outputs: Vec<(&str, O)>) -> Vec<O> {
    outputs.into_iter().map(|(_, o)| o).collect()
}

impl Upstreams {
    fn stage(&self, stage: Stage) -> Option<&StageLocksOutput> {
        self.locks.iter().find(|o| o.stage == stage.name())
    }
}

/// A reconciled backup holds the tablespaces as the log left them at the BLOCK_DDL LSN:
/// a file operation logged later on a table (not a server temporary `#sql` file) means
/// DDL ran after that point, which the reconcile did not see.
fn check_no_ddl_after(dir: &Path, lsn: u64) -> Result<(), StepError> {
    let backup = BackupDir::new(dir);
    let ledger = backup.read_file_ops().ok_or_else(|| {
        StepError::fatal(format!(
            "{} is missing or unreadable: the reconciled copy cannot be checked",
            backup.file_ops().display()
        ))
    })?;
    let late = ledger.events.iter().find(|e| {
        e.lsn > lsn
            && match &e.change {
                Change::Create { name } | Change::Delete { name } => !name.contains("#sql"),
                Change::Rename { from, to } => !(from.contains("#sql") && to.contains("#sql")),
                Change::Page0Init | Change::Trim { .. } => false,
            }
    });
    match late {
        None => Ok(()),
        Some(e) => Err(StepError::fatal(format!(
            "tablespace {} changed as a file at LSN {} ({:?}), after DDL was blocked at LSN {lsn}: the backup cannot be reconciled",
            e.space_id, e.lsn, e.change
        ))
        .with_hint("run the backup again; if it repeats, hold BLOCK_DDL through the copy (docs/examples/full-backup-hold-ddl.yaml)")),
    }
}

/// A plan that copies InnoDB before BLOCK_DDL but has no reconcile step: if DDL changed
/// tablespace files while the copy ran, the copy disagrees with the log and would not
/// restore. Refused here rather than found on the day of the restore.
fn check_no_unreconciled_ddl(
    dir: &Path,
    parts: &[CopyPart],
    ddl_lsn: u64,
) -> Result<(), StepError> {
    let copy_began = parts
        .iter()
        .filter_map(|p| p.lsn_range.map(|(start, _)| start))
        .min();
    let Some(copy_began) = copy_began.filter(|&lsn| ddl_lsn > 0 && lsn < ddl_lsn) else {
        return Ok(());
    };
    let Some(ledger) = BackupDir::new(dir).read_file_ops() else {
        return Ok(());
    };
    let during_copy = ledger.events.iter().find(|e| {
        e.lsn > copy_began
            && e.lsn <= ddl_lsn
            && matches!(
                e.change,
                Change::Create { .. } | Change::Delete { .. } | Change::Rename { .. }
            )
    });
    match during_copy {
        None => Ok(()),
        Some(e) => Err(StepError::fatal(format!(
            "tablespace {} changed as a file at LSN {} ({:?}) while InnoDB was copied before BLOCK_DDL, and no reconcile step recorded it: the backup would not restore",
            e.space_id, e.lsn, e.change
        ))
        .with_hint("add the catch_up and reconcile steps of plans/full-backup.yaml, or take BLOCK_DDL before the copy (docs/examples/full-backup-hold-ddl.yaml)")),
    }
}

/// Removes the work folder. A streamed backup's spool keeps its claim and its streaming
/// mark: it is never a backup by itself (its files leave), and if this run dies before
/// the upload ends, the next run must see whose it was to reclaim it.
fn clear_work_dir(dir: &Path) -> Result<(), StepError> {
    let backup = BackupDir::new(dir);
    let keep = stagehand_backup::spool::streaming_request(dir)
        .and_then(|request| Some((request, std::fs::read(backup.run_marker()).ok()?)));
    let _ = std::fs::remove_dir_all(backup.work());
    if let Some((request, claim)) = keep {
        let failed = |e: std::io::Error| {
            StepError::fatal(format!("cannot keep the claim of {}: {e}", dir.display()))
        };
        stagehand_backup::spool::mark_streaming(dir, &request).map_err(failed)?;
        stagehand_host::private_fs::write_private(&backup.run_marker(), claim).map_err(failed)?;
    }
    Ok(())
}

/// Which run, plan and host made the backup.
struct MadeBy {
    run_id: String,
    plan: String,
    host: String,
}

fn seal(dir: &Path, made_by: &MadeBy, upstream: &Upstreams) -> Result<SealOutput, StepError> {
    let commit = upstream.stage(Stage::BlockCommit).ok_or_else(|| {
        StepError::fatal("no stage_locks step with `stage: block_commit` upstream of seal")
            .with_hint("seal must come after the step that takes BLOCK_COMMIT")
    })?;
    let end = upstream.stage(Stage::End);
    let redo = upstream
        .redo
        .first()
        .ok_or_else(|| StepError::fatal("no redo_tail step upstream of seal"))?;
    let commit_lsn = commit.lsn;
    let last_lsn = redo.to_lsn;
    // mariadb-backup --prepare only checks that the log reaches to_lsn, so this check
    // is ours: a log that stops short of the commit point is not a consistent backup.
    if last_lsn < commit_lsn || commit_lsn == 0 {
        return Err(StepError::fatal(format!("the redo copy reached LSN {last_lsn} but the backup must reach the commit LSN {commit_lsn}")));
    }
    let parts = read_parts(dir)?;
    let settings = stagehand_backup::dir::innodb_settings(&parts, dir)?;
    let version = stagehand_mariadb::version::ServerVersion::parse(&settings.version)
        .ok_or_else(|| StepError::fatal("cannot read the server version"))?;
    let naming = bf::naming(bf::Version(version.major, version.minor, version.patch));

    // A file copied twice (Aria data recopied under BLOCK_COMMIT, a table reconciled
    // after DDL) counts as its last copy; a file a reconcile removed is not listed.
    let mut files: Vec<CopiedFile> = stagehand_backup::dir::merged_files(&parts)
        .into_values()
        .collect();
    files.push(hash_file(dir, "ib_logfile0")?);
    // The file changes the last reconcile found (under BLOCK_DDL), for prepare.
    let ddl = parts.iter().rev().find_map(|p| p.ddl.clone());
    match (&ddl, upstream.stage(Stage::BlockDdl)) {
        (Some(record), _) => check_no_ddl_after(dir, record.lsn)?,
        (None, Some(block_ddl)) => check_no_unreconciled_ddl(dir, &parts, block_ddl.ddl_lsn)?,
        (None, None) => {}
    }
    let binlog = Binlog {
        file: commit.binlog_file.clone(),
        position: commit.binlog_pos,
        gtid_binlog_pos: commit.gtid_binlog_pos.clone(),
        gtid_current_pos: commit.gtid_current_pos.clone(),
        gtid_slave_pos: commit.gtid_slave_pos.clone(),
        replica: Value::Array(commit.replica.clone()),
    };
    let lsn = Lsns {
        checkpoint: redo.from_lsn,
        checkpoint_end: redo.checkpoint_end_lsn,
        commit: commit_lsn,
        last: last_lsn,
        last_checkpoint: redo.last_checkpoint_lsn.max(redo.from_lsn),
    };
    let locks_from = end.unwrap_or(commit);
    let locks = Locks {
        method: locks_from.method.clone(),
        holds_ms: locks_from.holds_ms.clone(),
        commit_blocked_ms: locks_from.commit_blocked_ms,
        ddl_blocked_ms: locks_from.ddl_blocked_ms,
    };
    let started_at = parts
        .iter()
        .map(|p| p.started_at.clone())
        .min()
        .unwrap_or_default();
    let finished_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let metadata = write_metadata(
        dir,
        naming,
        &settings,
        &lsn,
        &binlog,
        &locks,
        &started_at,
        &finished_at,
    )?;
    for name in &metadata {
        files.push(hash_file(dir, name)?);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let extra = unlisted_files(dir, &as_written(&files));
    if !extra.is_empty() {
        return Err(StepError::fatal(format!(
            "{} file(s) in {} were not written by this backup: {}",
            extra.len(),
            dir.display(),
            extra.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
        ))
        .with_hint("a backup directory must hold only what the backup wrote; remove it and run the backup again"));
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        tool: format!("stagehand {}", env!("CARGO_PKG_VERSION")),
        complete: true,
        run_id: made_by.run_id.clone(),
        started_at,
        finished_at,
        server: settings,
        lsn,
        binlog,
        locks,
        redo: RedoFacts {
            bytes: redo.bytes,
            capacity: redo.capacity,
            max_lag_bytes: redo.max_lag_bytes,
            final_catch_up_ms: redo.final_catch_up_ms,
            seconds: redo.seconds,
        },
        copies: parts
            .iter()
            .map(|p| CopyFacts {
                step: p.step.clone(),
                files: serde_json::to_value(p.files_set)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                started_at: p.started_at.clone(),
                seconds: p.seconds,
                bytes: p.files.iter().map(|f| f.size).sum(),
            })
            .collect(),
        files,
        ddl,
        preparing: false,
        prepared: None,
        metadata_files: metadata,
        backup_type: "full".into(),
        base: None,
        plan: made_by.plan.clone(),
        host: made_by.host.clone(),
        verified: None,
        checked: None,
        encryption: None,
    };
    sync_all(dir, &manifest.files)?;
    // The staging area must not reach a datadir on copy-back.
    clear_work_dir(dir)?;
    manifest
        .write(dir)
        .map_err(|e| StepError::fatal(e.to_string()))?;
    let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
    tracing::info!(dir = %dir.display(), files = manifest.files.len(), bytes, "backup sealed");
    Ok(SealOutput {
        manifest: dir.join(MANIFEST_FILE).display().to_string(),
        files: manifest.files.len() as u64,
        bytes,
        commit_lsn,
        gtid_binlog_pos: manifest.binlog.gtid_binlog_pos,
        commit_blocked_ms: manifest.locks.commit_blocked_ms,
        ddl_blocked_ms: manifest.locks.ddl_blocked_ms,
    })
}

/// The files as the copies left them: a file a streamed copy wrote compressed is on
/// disk as its stored form.
fn as_written(files: &[CopiedFile]) -> Vec<CopiedFile> {
    files
        .iter()
        .map(|f| CopiedFile {
            path: f.local_path().to_string(),
            ..f.clone()
        })
        .collect()
}

/// Makes every file and directory of the backup durable before the manifest says it
/// is complete.
fn sync_all(dir: &Path, files: &[CopiedFile]) -> Result<(), StepError> {
    // A streamed backup's files leave as they are finished; the follower checks them.
    let streaming = stagehand_backup::spool::is_streaming(dir);
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let path = dir.join(f.local_path());
        if streaming && !path.exists() {
            continue;
        }
        std::fs::File::open(&path)
            .and_then(|h| h.sync_all())
            .map_err(|e| StepError::fatal(format!("cannot sync {}: {e}", path.display())))?;
        if let Some(parent) = path.parent() {
            dirs.insert(parent.to_path_buf());
        }
    }
    for d in dirs {
        std::fs::File::open(&d)
            .and_then(|h| h.sync_all())
            .map_err(|e| StepError::fatal(format!("cannot sync {}: {e}", d.display())))?;
    }
    Ok(())
}

fn read_parts(dir: &Path) -> Result<Vec<CopyPart>, StepError> {
    let backup = BackupDir::new(dir);
    let parts = backup.read_parts()?;
    if parts.is_empty() {
        return Err(StepError::fatal(format!(
            "no copy results in {}",
            backup.parts().display()
        )));
    }
    Ok(parts)
}

#[allow(clippy::too_many_arguments)]
fn write_metadata(
    dir: &Path,
    naming: bf::Naming,
    s: &stagehand_mariadb::datadir::ServerSettings,
    lsn: &Lsns,
    binlog: &Binlog,
    locks: &Locks,
    started_at: &str,
    finished_at: &str,
) -> Result<Vec<String>, StepError> {
    let write = |name: &str, text: String| -> Result<String, StepError> {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .and_then(|_| std::fs::File::open(&path).and_then(|f| f.sync_all()))
            .map_err(|e| StepError::fatal(format!("cannot write {}: {e}", path.display())))?;
        Ok(name.to_string())
    };
    let mut names = Vec::new();
    names.push(write(
        "backup-my.cnf",
        bf::render_backup_my_cnf(&bf::BackupMyCnf {
            checksum_algorithm: "crc32".into(),
            data_file_path: s.innodb_data_file_path.clone(),
            log_file_size: s.innodb_log_file_size,
            page_size: s.innodb_page_size,
            undo_directory: "./".into(),
            undo_tablespaces: s.innodb_undo_tablespaces,
            compression_level: s.innodb_compression_level,
            buffer_pool_filename: None,
            encryption_config: String::new(),
        }),
    )?);
    let binlog_info = (!binlog.file.is_empty()).then(|| bf::BinlogInfo {
        file: binlog.file.clone(),
        position: binlog.position,
        gtid: Some(binlog.gtid_current_pos.clone()),
    });
    if let Some(b) = &binlog_info {
        names.push(write(naming.binlog_info(), bf::render_binlog_info(b))?);
    }
    let lock_secs = locks
        .holds_ms
        .values()
        .filter_map(Value::as_f64)
        .sum::<f64>()
        / 1000.0;
    names.push(write(
        naming.info(),
        bf::render_xtrabackup_info(&bf::XtrabackupInfo {
            uuid: String::new(),
            name: String::new(),
            tool_name: "stagehand".into(),
            tool_command: "stagehand run".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            server_version: s.version.clone(),
            start_time: started_at
                .replace('T', " ")
                .trim_end_matches('Z')
                .to_string(),
            end_time: finished_at
                .replace('T', " ")
                .trim_end_matches('Z')
                .to_string(),
            lock_time: lock_secs.round() as i64,
            binlog: binlog_info.clone(),
            innodb_from_lsn: 0,
            innodb_to_lsn: lsn.last_checkpoint,
            partial: false,
            incremental: false,
            format: "file".into(),
            compressed: false,
        }),
    )?);
    // Written last of the metadata: mariadb-backup --prepare refuses a directory without it.
    names.push(write(
        naming.checkpoints(),
        bf::render_checkpoints(&bf::Checkpoints {
            backup_type: bf::BackupType::FullBackuped,
            from_lsn: 0,
            to_lsn: lsn.last_checkpoint,
            last_lsn: lsn.last,
            recover_binlog_info: false,
        }),
    )?);
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagehand_innodb::file_ops::FileOps;
    use stagehand_innodb::redo::FileOp;

    fn ledger_in(dir: &Path, events: &[(u64, FileOp<'static>)]) {
        let l = FileOps::of_events(100, events);
        let path = BackupDir::new(dir).file_ops();
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, serde_json::to_vec(&l).expect("json")).expect("write");
    }

    #[test]
    fn a_table_changed_after_ddl_was_blocked_is_refused_a_temporary_file_is_not() {
        let d = tempfile::tempdir().expect("tempdir");
        let temp = FileOp::Create {
            space_id: 8,
            name: b"./d/#sql-alter-1.ibd",
        };
        ledger_in(d.path(), &[(150, temp)]);
        assert!(check_no_ddl_after(d.path(), 120).is_ok());
        let table = FileOp::Rename {
            space_id: 5,
            from: b"./d/a.ibd",
            to: b"./d/b.ibd",
        };
        ledger_in(d.path(), &[(110, table.clone()), (150, table)]);
        assert!(check_no_ddl_after(d.path(), 120).is_err());
        assert!(check_no_ddl_after(d.path(), 150).is_ok());
    }
}
