//! `reconcile`: run under BLOCK_DDL after the datadir was copied under BACKUP STAGE
//! START. DDL could run during that copy: it dropped, renamed, created and rebuilt
//! tablespaces whose files were (or were not yet) copied. From the copy parts and the
//! ledger of file operations the redo tail publishes (`innodb::file_ops`), replayed up
//! to the LSN taken under BLOCK_DDL, it copies again the tablespaces created or rebuilt
//! meanwhile (as mariadb-backup's `.new` side files) and records the file changes
//! `prepare` applies before recovery (`backup::ddl`). Non-InnoDB tables whose files
//! changed since their copy (DDL, or MyISAM writes before FLUSH) are copied again
//! whole, and those dropped or renamed away leave the backup (`tables`).

mod tables;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stagehand_backup::ddl::{self, CopiedSpace, DdlPlan, DdlRecord, FileChange, Recopy};
use stagehand_backup::dir::{BackupDir, CopyPart};
use stagehand_backup::entry::CopiedFile;
use stagehand_backup::pagecopy::{copy_file, CopyError, CopyOptions};
use stagehand_engine::{ConfigError, DirectoryUse, StepContext, StepError, TypedStep};
use stagehand_innodb::file_ops::FileOps;
use stagehand_mariadb::datadir::{FileClass, FileSet, SourceFile};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// The server's datadir as this machine sees it: tablespaces created or rebuilt
    /// during the copy are copied again from it.
    pub from: String,
    /// The backup directory the copy and redo_tail steps write.
    pub to: String,
    /// The InnoDB LSN at which DDL stopped: `{{steps.lock_ddl.outputs.ddl_lsn}}` of the
    /// stage_locks step that took BLOCK_DDL. Not with `catch_up`.
    #[serde(default)]
    pub ddl_lsn: Option<u64>,
    /// A pass under START, before BLOCK_DDL: copies now what DDL created or rebuilt so
    /// far, so that the pass under BLOCK_DDL (which decides the changes) has less to
    /// copy while DDL waits. Records no change itself.
    #[serde(default)]
    pub catch_up: bool,
    /// How long to wait for the redo copy to reach `ddl_lsn` (it is normally there
    /// within milliseconds).
    #[serde(
        default = "default_wait",
        with = "stagehand_engine::model::duration_text"
    )]
    #[schemars(with = "String")]
    pub wait: Duration,
}

fn default_wait() -> Duration {
    Duration::from_secs(60)
}

/// What `reconcile` publishes.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct ReconcileOutput {
    /// tablespaces copied again (created or rebuilt during the copy)
    pub files: u64,
    /// bytes copied again
    pub bytes: u64,
    /// copied tablespaces prepare removes (dropped during the copy)
    pub deleted: u64,
    /// copied tablespaces prepare renames
    pub renamed: u64,
    /// non-InnoDB tables copied again (changed since their copy) or removed
    pub tables: u64,
    /// their files copied again
    pub table_files: u64,
    /// non-InnoDB files that left the backup (their table was dropped or renamed)
    pub removed: u64,
    /// the LSN up to which the log's file operations were replayed (with `catch_up`:
    /// as far as the redo copy had read)
    pub ddl_lsn: u64,
    /// wall time
    pub seconds: f64,
}

pub struct Reconcile;

#[async_trait]
impl TypedStep for Reconcile {
    type Config = ReconcileConfig;
    type Output = ReconcileOutput;
    const NAME: &'static str = "reconcile";
    const SUMMARY: &'static str = "Under BLOCK_DDL, after a copy taken under BACKUP STAGE START: copies again the tablespaces and tables DDL created, rebuilt or changed meanwhile and records the drops and renames prepare applies";

    fn check(cfg: &ReconcileConfig) -> Result<(), ConfigError> {
        let lsn_error = |message: &str| {
            ConfigError {
            path: "ddl_lsn".into(),
            message: message.into(),
            hint: Some("`ddl_lsn: \"{{steps.lock_ddl.outputs.ddl_lsn}}\"` on the pass under BLOCK_DDL; `catch_up: true` (without it) on a pass before".into()),
        }
        };
        match (cfg.catch_up, cfg.ddl_lsn) {
            (true, Some(_)) => {
                return Err(lsn_error(
                    "a catch-up pass runs before BLOCK_DDL: it has no ddl_lsn",
                ))
            }
            (false, None) => return Err(lsn_error("required: the LSN at which DDL stopped")),
            _ => {}
        }
        if cfg.wait.is_zero() {
            return Err(ConfigError {
                path: "wait".into(),
                message: "must be more than 0s".into(),
                hint: None,
            });
        }
        Ok(())
    }

    fn describe(cfg: &ReconcileConfig) -> String {
        if cfg.catch_up {
            return format!(
                "before BLOCK_DDL: copies from {} into {} the tablespaces DDL created or rebuilt since the copy began (as far as the redo copy has seen) and the non-InnoDB tables changed since their copy, so that less is left for the pass under BLOCK_DDL",
                cfg.from, cfg.to
            );
        }
        // A dry-run knows the LSN only once BLOCK_DDL has recorded it.
        let at = match cfg.ddl_lsn.unwrap_or(0) {
            0 => "the LSN at which DDL stopped".to_string(),
            lsn => format!("LSN {lsn}"),
        };
        format!(
            "while DDL waits (expected: tens of milliseconds, plus the copy of what DDL created or rebuilt since the catch-up pass): replays the tablespace file operations of the redo copy up to {at} against the files copied into {}: copies again from {} what DDL created or rebuilt since, and records the drops and renames for prepare; copies again each non-InnoDB table whose files changed since their copy, and drops from the backup those DDL removed",
            cfg.to, cfg.from
        )
    }

    fn directories(cfg: &ReconcileConfig) -> Vec<DirectoryUse> {
        vec![DirectoryUse::Announces(cfg.to.clone())]
    }

    async fn run(cfg: &ReconcileConfig, ctx: &StepContext) -> Result<ReconcileOutput, StepError> {
        let t0 = Instant::now();
        let to = PathBuf::from(&cfg.to);
        let ledger = wait_for_ledger(&to, cfg.ddl_lsn.unwrap_or(0), cfg.wait, ctx).await?;
        if !ledger.tracked && !cfg.catch_up {
            no_innodb_ddl(Path::new(&cfg.from))?;
        }
        // A catch-up pass looks as far as the redo copy has read.
        let lsn = cfg.ddl_lsn.unwrap_or(ledger.to_lsn);
        let (from, step, catch_up) = (PathBuf::from(&cfg.from), ctx.step_id.clone(), cfg.catch_up);
        let cancel = ctx.cancel.clone();
        let done = tokio::task::spawn_blocking(move || {
            let pass = Pass {
                from: &from,
                to: &to,
                step: &step,
                catch_up,
            };
            reconcile(pass, &ledger, lsn, &cancel)
        })
        .await
        .map_err(|e| StepError::fatal(format!("reconcile crashed: {e}")))??;
        let count =
            |f: fn(&FileChange) -> bool| done.plan.changes.iter().filter(|c| f(c)).count() as u64;
        let bytes = done.copied.iter().chain(&done.tables.copied);
        let out = ReconcileOutput {
            files: done.copied.len() as u64,
            bytes: bytes.map(|f| f.size).sum(),
            deleted: count(|c| matches!(c, FileChange::Delete { .. })),
            renamed: count(|c| matches!(c, FileChange::Rename { .. })),
            tables: done.tables.tables as u64,
            table_files: done.tables.copied.len() as u64,
            removed: done.tables.removed.len() as u64,
            ddl_lsn: lsn,
            seconds: (t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        };
        tracing::info!(
            files = out.files,
            deleted = out.deleted,
            renamed = out.renamed,
            tables = out.tables,
            "reconciled the copy with the DDL run during it"
        );
        Ok(out)
    }
}

/// The ledger the running redo tail publishes, once it covers `lsn`.
async fn wait_for_ledger(
    to: &Path,
    lsn: u64,
    wait: Duration,
    ctx: &StepContext,
) -> Result<FileOps, StepError> {
    let dir = BackupDir::new(to);
    let t0 = Instant::now();
    loop {
        let seen = dir.read_file_ops();
        match seen {
            Some(ledger) if ledger.to_lsn >= lsn => return Ok(ledger),
            _ => {}
        }
        if t0.elapsed() >= wait {
            let reached = seen.map_or("no ledger yet".to_string(), |l| format!("LSN {}", l.to_lsn));
            return Err(StepError::fatal(format!(
                "the redo copy did not reach LSN {lsn} within {} ({reached})",
                humantime::format_duration(wait)
            ))
            .with_hint("a redo_tail step writing into the same directory must run in the background since before the copy"));
        }
        if ctx.cancel.is_cancelled() {
            return Err(StepError::cancelled());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// With an encrypted redo log the ledger is empty (file operations cannot be read): the
/// copy is good only if no InnoDB DDL ran since START, which the server's DDL log says.
fn no_innodb_ddl(datadir: &Path) -> Result<(), StepError> {
    let fallback =
        "hold BLOCK_DDL through the copy instead (docs/examples/full-backup-hold-ddl.yaml)";
    let entries = stagehand_mariadb::ddl_log::read(datadir).map_err(|e| {
        StepError::fatal(format!(
            "the redo log is encrypted and the server's DDL log {} cannot be read ({e}): whether DDL ran during the copy cannot be told",
            datadir.join(stagehand_mariadb::ddl_log::DDL_LOG).display()
        ))
        .with_hint(fallback)
    })?;
    match entries.iter().find(|e| e.is_innodb()) {
        None => Ok(()),
        Some(e) => Err(StepError::fatal(format!(
            "the redo log is encrypted, so the file operations of DDL run during the copy cannot be read, and DDL ran on InnoDB table {}.{} ({})",
            e.db, e.table, e.kind
        ))
        .with_hint(fallback)),
    }
}

/// What one pass did.
struct Reconciled {
    plan: DdlPlan,
    /// InnoDB tablespaces copied again
    copied: Vec<CopiedFile>,
    tables: tables::TablesReconciled,
}

/// Plans against the copy parts, copies again what must be, writes this step's part.
/// The pass under BLOCK_DDL records the changes (and mariadb-backup's markers for them).
/// A catch-up pass, under START, copies only the tablespaces created or rebuilt so far,
/// each under a name of its own (`db/#sh-<space id>.ibd`) that the pass under BLOCK_DDL
/// then renames, or removes if DDL dropped it meanwhile; it records no change. Both
/// passes copy again the non-InnoDB tables changed since their copy.
fn reconcile(
    pass: Pass<'_>,
    ledger: &FileOps,
    lsn: u64,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Reconciled, StepError> {
    let (parts, plan) = plan_against_parts(pass.from, pass.to, ledger, lsn)?;
    let settings = stagehand_backup::dir::innodb_settings(&parts, pass.to)?;
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let t0 = Instant::now();
    let (plan, copied, mut files, ddl) = if pass.catch_up {
        // Undo tablespaces are copied again in place, by the pass under BLOCK_DDL only.
        let early: Vec<Recopy> = plan
            .recopy
            .iter()
            .filter(|r| r.name.ends_with(".ibd"))
            .map(|r| Recopy {
                to: catch_up_path(&r.name, r.space_id),
                ..r.clone()
            })
            .collect();
        let copied = recopy(pass.from, pass.to, &early, cancel, Missing::Skip)?;
        (DdlPlan::default(), copied.clone(), copied, None)
    } else {
        if let Some(path) = ddl::imported_during_copy(pass.from, &plan.changes) {
            return Err(StepError::fatal(format!(
                "{path}: its tablespace was replaced during the copy without the redo log (ALTER TABLE … DISCARD TABLESPACE, then IMPORT TABLESPACE): this backup cannot hold it"
            ))
            .with_hint("the redo log since the last checkpoint still holds the DISCARD: run the backup again once the import is done and InnoDB has made a checkpoint (`SET GLOBAL innodb_max_dirty_pages_pct=0` for a few seconds makes one at once)"));
        }
        let recopied = recopy(pass.from, pass.to, &plan.recopy, cancel, Missing::Fail)?;
        let mut files = recopied.clone();
        files.extend(write_markers(pass.to, &plan.changes)?);
        let ddl = DdlRecord {
            lsn,
            changes: plan.changes.clone(),
        };
        (plan, recopied, files, Some(ddl))
    };
    let tables = tables::reconcile_tables(
        pass.from,
        pass.to,
        &parts,
        &settings,
        cancel,
        !pass.catch_up,
    )?;
    files.extend(tables.copied.iter().cloned());
    announce_if_streaming(&pass, &files)?;
    let part = CopyPart {
        step: pass.step.into(),
        files_set: FileSet::All,
        settings,
        started_at,
        seconds: t0.elapsed().as_secs_f64(),
        finished_ns: stagehand_backup::entry::now_ns(),
        files,
        lsn_range: None,
        ddl,
        removed: tables.removed.clone(),
    };
    BackupDir::new(pass.to).write_part(&part)?;
    Ok(Reconciled {
        plan,
        copied,
        tables,
    })
}

/// In a streamed backup the files copied again go to the upload like the first copies.
fn announce_if_streaming(pass: &Pass<'_>, files: &[CopiedFile]) -> Result<(), StepError> {
    if !stagehand_backup::spool::is_streaming(pass.to) {
        return Ok(());
    }
    for f in files {
        stagehand_backup::spool::announce(pass.to, pass.step, f)
            .map_err(|e| StepError::fatal(format!("cannot record {} as copied: {e}", f.path)))?;
    }
    Ok(())
}

/// Which pass runs, where, as which step.
struct Pass<'a> {
    from: &'a Path,
    to: &'a Path,
    step: &'a str,
    catch_up: bool,
}

/// `db/t.ibd` of tablespace 9 → `db/#sh-9.ibd`: never a table's name, and one per id.
fn catch_up_path(name: &str, space_id: u32) -> String {
    match name.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/#sh-{space_id}.ibd"),
        None => format!("#sh-{space_id}.ibd"),
    }
}

/// The copy parts so far, and the plan against them of the ledger up to `lsn`.
fn plan_against_parts(
    from: &Path,
    to: &Path,
    ledger: &FileOps,
    lsn: u64,
) -> Result<(Vec<CopyPart>, DdlPlan), StepError> {
    let parts = BackupDir::new(to).read_parts()?;
    let copied: Vec<CopiedSpace> = parts
        .iter()
        .flat_map(|p| p.files.iter().map(move |f| (p, f)))
        .filter(|(_, f)| f.class.is_innodb())
        .map(|(p, f)| CopiedSpace {
            path: f.path.clone(),
            space_id: f.space_id,
            copied_between: p.lsn_range,
            remote: f.remote.clone(),
        })
        .collect();
    let remote = remote_names(from, &parts)?;
    let plan = ddl::plan(&copied, ledger, lsn, &remote).map_err(|e| {
        StepError::fatal(e.to_string()).with_hint(
            "hold BLOCK_DDL through the copy instead (docs/examples/full-backup-hold-ddl.yaml)",
        )
    })?;
    Ok((parts, plan))
}

/// Where the backup holds the tablespaces of DATA DIRECTORY tables: as copied, and as
/// the `.isl` files say now (a remote table created or renamed during the copy).
fn remote_names(from: &Path, parts: &[CopyPart]) -> Result<ddl::RemoteNames, StepError> {
    let mut names = ddl::RemoteNames::default();
    // Early copies (`db/#sh-9.ibd`) and side files are not where a table lives.
    let table_path =
        |p: &str| p.ends_with(".ibd") && !p.rsplit('/').next().unwrap_or(p).starts_with('#');
    for f in parts.iter().flat_map(|p| &p.files) {
        if let Some(abs) = f.remote.as_ref().filter(|_| table_path(&f.path)) {
            names.insert(abs, &f.path);
        }
    }
    let now = stagehand_mariadb::datadir::remote_tablespaces(from)
        .map_err(|e| StepError::fatal(e.to_string()))?;
    for (abs, rel) in now {
        names.insert(&abs.display().to_string(), &rel);
    }
    Ok(names)
}

/// Writes mariadb-backup's `.del`/`.ren` markers beside the copies (see
/// `backup::ddl::markers`) and returns their entries.
fn write_markers(to: &Path, changes: &[FileChange]) -> Result<Vec<CopiedFile>, StepError> {
    ddl::markers(changes)
        .into_iter()
        .map(|(rel, text)| {
            let path = to.join(&rel);
            std::fs::write(&path, text.as_bytes())
                .map_err(|e| StepError::fatal(format!("cannot write {}: {e}", path.display())))?;
            let mut entry = stagehand_backup::entry::hash_file(to, &rel)?;
            entry.class = FileClass::NonInnodb;
            Ok(entry)
        })
        .collect()
}

/// What a file that is gone when it is copied again means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// Under START, DDL goes on: the pass under BLOCK_DDL sees where it went.
    Skip,
    /// Under BLOCK_DDL nothing can have moved it: the backup cannot be reconciled.
    Fail,
}

/// How a pass copies: one file at a time, unthrottled (DDL may be waiting), checking
/// for cancellation between files.
fn copy_options() -> CopyOptions {
    CopyOptions {
        chunk_bytes: 1 << 20,
        rereads: 10,
        reread_delay: Duration::from_millis(100),
        cancel: Arc::new(AtomicBool::new(false)),
        limiter: None,
        system_format: None,
        progress: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        // Copies again under BLOCK_DDL stay plain: they must be quick.
        compress: None,
    }
}

/// Copies each tablespace to copy again, one at a time: DDL is blocked, and these are
/// the few tablespaces DDL rebuilt while the copy ran.
fn recopy(
    from: &Path,
    to: &Path,
    recopy: &[Recopy],
    cancel: &tokio_util::sync::CancellationToken,
    missing: Missing,
) -> Result<Vec<CopiedFile>, StepError> {
    let opts = copy_options();
    let mut scratch = Vec::new();
    let mut out = Vec::new();
    for r in recopy {
        if cancel.is_cancelled() {
            return Err(StepError::cancelled());
        }
        let class = if r.name.ends_with(".ibd") {
            FileClass::Tablespace
        } else {
            FileClass::UndoTablespace
        };
        let remote = r.remote.as_ref().map(PathBuf::from);
        let src = SourceFile {
            abs: remote.clone().unwrap_or_else(|| from.join(&r.name)),
            rel: r.to.clone(),
            class,
            remote,
        };
        let mut copied = match copy_file(&src, to, &opts, &mut scratch) {
            Ok(c) => c,
            Err(CopyError::Io { source, .. })
                if missing == Missing::Skip && source.kind() == std::io::ErrorKind::NotFound =>
            {
                tracing::info!(file = %r.name, "gone before it could be copied early; left to the pass under BLOCK_DDL");
                let _ = std::fs::remove_file(to.join(&r.to));
                continue;
            }
            Err(e) => {
                return Err(StepError::fatal(format!(
                    "copying {} again: {e}",
                    src.abs.display()
                )))
            }
        };
        copied.space_id = copied.space_id.or(Some(r.space_id));
        tracing::info!(file = %r.name, to = %r.to, space_id = r.space_id, "tablespace copied again");
        out.push(copied);
    }
    Ok(out)
}
