//! `prepare`: turns a backup directory into a consistent datadir, in place.
//! `engine: mariadbd` starts the server binary on it in a sandbox: crash recovery
//! applies the copied redo log and rolls back unfinished transactions, then a slow
//! shutdown leaves clean files. `engine: mariadb-backup` runs `mariadb-backup
//! --prepare` (redo only; the first start rolls back). Either way the manifest is
//! rewritten with the new files and hashes and says how it was prepared.
//!
//! While the files change the manifest says `preparing` (and not `complete`), so an
//! interrupted prepare (kill -9, SIGINT, a failure) is never taken for a complete
//! backup; running prepare again finishes the job (recovery is idempotent). The
//! servers it starts die with stagehand, and one left by an older run is killed first.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use stagehand_backup::entry::{hash_file, plain_entry, CopiedFile, SourceStamp};
use stagehand_backup::manifest::{CheckReceipt, Manifest, Prepared};
use stagehand_engine::step::Finding;
use stagehand_engine::{ConfigError, StepContext, StepError, TypedStep};
use stagehand_innodb::backup_files as bf;
use stagehand_mariadb::backup_server;
use stagehand_mariadb::sandbox::ShutdownMode;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum Engine {
    #[serde(rename = "mariadbd")]
    Mariadbd,
    #[serde(rename = "mariadb-backup")]
    MariadbBackup,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Mariadbd => "mariadbd",
            Engine::MariadbBackup => "mariadb-backup",
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrepareConfig {
    /// The backup directory (prepared in place).
    pub target: String,
    /// `mariadbd` (crash recovery by the server itself) or `mariadb-backup`.
    #[serde(default = "default_engine")]
    pub engine: Engine,
    /// Memory for recovery (the buffer pool, or mariadb-backup's --use-memory).
    #[serde(default = "default_memory")]
    pub memory: String,
    /// Path of the binary (default: found on PATH, /usr/sbin, /usr/bin).
    pub binary: Option<String>,
}

fn default_engine() -> Engine {
    Engine::Mariadbd
}
fn default_memory() -> String {
    "256MiB".into()
}

fn memory_bytes(cfg: &PrepareConfig) -> Result<u64, ConfigError> {
    cfg.memory
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| ConfigError {
            path: "memory".into(),
            message: format!("`{}` is not a size", cfg.memory),
            hint: Some("write e.g. 256MiB, 2GiB".into()),
        })
}

/// What `prepare` publishes.
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct PrepareOutput {
    /// how it was prepared
    pub engine: String,
    /// wall time
    pub seconds: f64,
    /// true when the directory was prepared before (nothing done)
    pub already_prepared: bool,
    /// files in the prepared directory
    pub files: u64,
    /// bytes its check read before it prepared (files a `fetch` or `verify` of the same
    /// run checked, unchanged since, are not read again)
    pub checked_bytes: u64,
}

pub struct Prepare;

#[async_trait]
impl TypedStep for Prepare {
    type Config = PrepareConfig;
    type Output = PrepareOutput;
    const NAME: &'static str = "prepare";
    const SUMMARY: &'static str = "Makes a backup directory consistent in place (mariadbd crash recovery, or mariadb-backup --prepare)";

    fn check(cfg: &PrepareConfig) -> Result<(), ConfigError> {
        memory_bytes(cfg).map(|_| ())
    }

    async fn preflight(cfg: &PrepareConfig, _ctx: &StepContext) -> Vec<Finding> {
        let explicit = cfg.binary.as_ref().map(PathBuf::from);
        let dir = PathBuf::from(&cfg.target);
        match Manifest::read_for_prepare(&dir) {
            // A backup to prepare: is this host's binary of its series?
            Ok(m) => {
                let mut out = vec![binary_finding(cfg, explicit, &dir, &m).await];
                out.extend(remote_finding(cfg.engine, &m));
                out
            }
            // Not taken yet (a backup plan): say what this host prepares.
            Err(_) => vec![this_host_prepares(cfg.engine.name(), explicit).await],
        }
    }

    fn describe(cfg: &PrepareConfig) -> String {
        let how = match cfg.engine {
            Engine::Mariadbd => "starts mariadbd on it (no network, no grants) so crash recovery applies the redo log and rolls back, then shuts it down slowly",
            Engine::MariadbBackup => "runs `mariadb-backup --prepare` (redo applied; the first start rolls back)",
        };
        format!(
            "checks every file of {} against its manifest (size, hash), every InnoDB page checksum and the LSNs (not again the files a fetch or verify of this run checked, if unchanged since), then prepares it in place: {how}",
            cfg.target
        )
    }

    async fn run(cfg: &PrepareConfig, ctx: &StepContext) -> Result<PrepareOutput, StepError> {
        let dir = PathBuf::from(&cfg.target);
        let mut manifest = Manifest::read_for_prepare(&dir).map_err(|e| {
            StepError::fatal(e.to_string())
                .with_hint("prepare works on a complete backup made by stagehand")
        })?;
        if let Some(f) = manifest.files.iter().find(|f| f.stored.is_some()) {
            return Err(StepError::fatal(format!(
                "{} is compressed ({} is stored as {}): a server cannot start on it",
                dir.display(),
                f.path,
                f.stored
                    .as_ref()
                    .map(|s| s.path.as_str())
                    .unwrap_or_default()
            ))
            .with_hint("run a `decompress` step on the directory first"));
        }
        if let Some(p) = &manifest.prepared {
            tracing::info!(engine = %p.engine, "already prepared");
            return Ok(outputs(p.engine.as_str(), 0.0, true, manifest.files.len()));
        }
        let t0 = Instant::now();
        let memory = memory_bytes(cfg).map_err(|e| StepError::fatal(e.message))?;
        // Refused before anything changes: a binary of another series must not touch it.
        let binary = Some(
            backup_server::binary_for_backup(
                cfg.engine.name(),
                cfg.binary.as_ref().map(PathBuf::from),
                &manifest.server.version,
            )
            .await?,
        );
        // Refused before anything changes too: mariadbd must not reach the live files of
        // DATA DIRECTORY tables.
        if cfg.engine == Engine::Mariadbd {
            backup_server::check_remote_protection(&dir, binary.as_deref())?;
        }
        if manifest.preparing {
            tracing::warn!(dir = %dir.display(), "an earlier prepare was interrupted: finishing it");
        }
        // A server an interrupted run left behind has run recovery on the files too.
        let reclaimed = backup_server::reclaim_left_servers(&dir).await?;
        let interrupted = manifest.preparing || reclaimed;
        // Taken before the check, so a file that keeps these after recovery holds exactly
        // what the check hashed. After an interrupted prepare the check skips the files
        // recovery may have rewritten, so nothing is taken over then.
        let stamps = if interrupted {
            HashMap::new()
        } else {
            stamps_of(&dir, &manifest)
        };
        // Spent here (recovery changes the files it describes); trusted from this run only.
        let checked = manifest
            .checked
            .take()
            .filter(|r| r.run_id == ctx.run_id && !interrupted);
        let checked_bytes = check_unchanged(&dir, &manifest, interrupted, checked, ctx).await?;
        mark_preparing(&dir, &manifest)?;
        apply_ddl(&dir, &manifest).await?;
        let work = async {
            match cfg.engine {
                Engine::Mariadbd => prepare_with_server(&dir, memory, binary).await,
                Engine::MariadbBackup => prepare_with_mariadb_backup(&dir, memory, binary).await,
            }
        };
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return Err(StepError::cancelled().with_hint(RERUN_HINT)),
            r = work => r.map_err(with_rerun_hint)?,
        }
        mark_prepared(&dir, &manifest, cfg.engine)?;
        stagehand_backup::ddl::forget(&dir).map_err(|e| StepError::fatal(e.to_string()))?;
        let seconds = t0.elapsed().as_secs_f64();
        manifest.prepared = Some(Prepared {
            engine: cfg.engine.name().into(),
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            seconds,
        });
        let (dir2, checked) = (dir.clone(), manifest.files.clone());
        manifest.files = tokio::task::spawn_blocking(move || rehash_dir(&dir2, &stamps, &checked))
            .await
            .map_err(|e| StepError::fatal(e.to_string()))??;
        mark_remote(&dir, &mut manifest.files)?;
        manifest.complete = true;
        manifest.preparing = false;
        manifest
            .write(&dir)
            .map_err(|e| StepError::fatal(e.to_string()))?;
        let mut out = outputs(cfg.engine.name(), seconds, false, manifest.files.len());
        out.checked_bytes = checked_bytes;
        Ok(out)
    }
}

/// Whether this host's binary of the backup's series can prepare it.
async fn binary_finding(
    cfg: &PrepareConfig,
    explicit: Option<PathBuf>,
    dir: &Path,
    m: &Manifest,
) -> Finding {
    match backup_server::binary_for_backup(cfg.engine.name(), explicit, &m.server.version).await {
        Ok(b) => Finding::ok(format!(
            "{} is a backup of MariaDB {}; {} can prepare it",
            dir.display(),
            m.server.version,
            b.display()
        )),
        Err(e) => Finding::error(match e.hint {
            Some(h) => format!("{} ({h})", e.message),
            None => e.message,
        }),
    }
}

/// DATA DIRECTORY tables: `mariadbd` needs the private mount namespace (root).
fn remote_finding(engine: Engine, m: &Manifest) -> Option<Finding> {
    let remote: Vec<&str> = m.files.iter().filter_map(|f| f.remote.as_deref()).collect();
    if remote.is_empty() || engine != Engine::Mariadbd {
        return None;
    }
    Some(if stagehand_mariadb::sandbox::accounts::is_root() {
        Finding::ok(format!(
            "{} DATA DIRECTORY tablespaces (e.g. {}): mariadbd runs in a private mount namespace that shows the backup's copies at their paths",
            remote.len(),
            remote[0]
        ))
    } else {
        Finding::error(format!(
            "the backup has DATA DIRECTORY tables (e.g. {}): mariadbd would open the live files; prepare with engine: mariadb-backup, or run as root",
            remote[0]
        ))
    })
}

/// Which series the binary that would prepare here belongs to.
async fn this_host_prepares(name: &str, explicit: Option<PathBuf>) -> Finding {
    let shown = explicit
        .as_ref()
        .map_or(name.to_string(), |p| p.display().to_string());
    let Some(binary) = stagehand_mariadb::sandbox::binaries::find_binary(&shown) else {
        return Finding::warn(format!("{shown} not found: this host cannot prepare the backup (install the server of the source's series, or set prepare=false and prepare elsewhere)"));
    };
    match stagehand_mariadb::sandbox::binaries::server_version(&binary).await {
        Ok(v) => Finding::ok(format!(
            "this host prepares with {} (MariaDB {v}): backups of MariaDB {} servers",
            binary.display(),
            stagehand_mariadb::version::ServerVersion::parse(&v)
                .map_or(v.clone(), |s| format!("{}.{}", s.major, s.minor))
        )),
        Err(e) => Finding::error(e.to_string()),
    }
}

const RERUN_HINT: &str = "the manifest says `preparing` until a prepare finishes: run prepare again on the directory to finish it";

/// Keeps a failure's own hint (e.g. "install mariadb-backup"), adding the rerun advice.
fn with_rerun_hint(mut e: StepError) -> StepError {
    e.hint = Some(match e.hint.take() {
        Some(h) => format!("{h}; {RERUN_HINT}"),
        None => RERUN_HINT.to_string(),
    });
    e
}

/// Refuses a damaged or tampered backup before anything changes (prepare re-hashes the
/// files, so it would otherwise bless them): verify's own check of every file against
/// the manifest. Only a rerun after an interrupted prepare (`interrupted`) skips the files crash
/// recovery rewrites; table definitions and non-InnoDB tables are checked even then.
/// Files a `fetch` or `verify` of this run has checked (`checked`), unchanged since, are
/// not read again. Returns the bytes read.
async fn check_unchanged(
    dir: &Path,
    manifest: &Manifest,
    interrupted: bool,
    checked: Option<CheckReceipt>,
    ctx: &StepContext,
) -> Result<u64, StepError> {
    let (d, m, cancel) = (dir.to_path_buf(), manifest.clone(), ctx.cancel.clone());
    tokio::task::spawn_blocking(move || {
        let ddl_paths = m.ddl.as_ref().map(|d| d.paths()).unwrap_or_default();
        let rewritten = |p: &str| {
            interrupted && (rewritten_by_recovery(p, &m.metadata_files) || ddl_paths.contains(p))
        };
        let checked_in_this_run = |p: &str| checked.as_ref().is_some_and(|r| r.unchanged(&d, p));
        let skip = |p: &str| rewritten(p) || checked_in_this_run(p);
        let (bytes, _pages) = stagehand_backup::check::check_files(&d, &m, &cancel, &skip)?;
        // An interrupted recovery may have rewritten the redo log already.
        if !interrupted {
            stagehand_backup::check::check_lsns(&d, &m)?;
        }
        Ok(bytes)
    })
    .await
    .map_err(|e| StepError::fatal(format!("the check before prepare crashed: {e}")))?
    .map_err(|mut e: StepError| {
        e.message = format!("refusing to prepare (nothing was changed): {}", e.message);
        e
    })
}

/// Files crash recovery (or `mariadb-backup --prepare`) writes: InnoDB's tablespaces
/// and redo log, the Aria log, the server's scratch files, and the mariadb-backup
/// checkpoints file prepare rewrites (not its other metadata).
fn rewritten_by_recovery(rel: &str, metadata_files: &[String]) -> bool {
    // The server's own files sit at the top: `db1/undo1.frm` is a table's.
    let top_level = !rel.contains('/');
    const PREFIXES: &[&str] = &["ibdata", "ib_logfile", "aria_log", "ibtmp"];
    const NAMES: &[&str] = &["ib_buffer_pool", "ddl_recovery.log", "multi-master.info"];
    let undo = rel
        .strip_prefix("undo")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    (top_level && (PREFIXES.iter().any(|p| rel.starts_with(p)) || NAMES.contains(&rel) || undo))
        || rel.ends_with(".ibd")
        || (rel.ends_with("_checkpoints") && metadata_files.iter().any(|m| m == rel))
}

/// Replays the file changes of DDL that ran during the copy (dropped, renamed and
/// rebuilt tablespaces) before either engine starts: recovery cannot rename over a file
/// that exists, nor remove a stale copy. Resumes an interrupted apply.
async fn apply_ddl(dir: &Path, manifest: &Manifest) -> Result<(), StepError> {
    let Some(ddl) = manifest.ddl.clone().filter(|d| !d.changes.is_empty()) else {
        return Ok(());
    };
    let d = dir.to_path_buf();
    let applied =
        tokio::task::spawn_blocking(move || stagehand_backup::ddl::apply(&d, &ddl.changes))
            .await
            .map_err(|e| StepError::fatal(format!("applying the DDL file changes crashed: {e}")))?
            .map_err(|e| {
                StepError::fatal(format!(
                    "cannot apply the file changes of DDL run during the backup: {e}"
                ))
                .with_hint(RERUN_HINT)
            })?;
    tracing::info!(applied, "file changes of DDL run during the copy applied");
    Ok(())
}

/// Writes (fsynced) the manifest as `preparing`, not complete, before any file changes.
fn mark_preparing(dir: &Path, manifest: &Manifest) -> Result<(), StepError> {
    let mut preparing = manifest.clone();
    preparing.complete = false;
    preparing.preparing = true;
    preparing
        .write(dir)
        .map_err(|e| StepError::fatal(format!("cannot mark the backup as being prepared: {e}")))
}

fn outputs(engine: &str, seconds: f64, already: bool, files: usize) -> PrepareOutput {
    PrepareOutput {
        engine: engine.into(),
        seconds: (seconds * 1000.0).round() / 1000.0,
        already_prepared: already,
        files: files as u64,
        checked_bytes: 0,
    }
}

async fn prepare_with_server(
    dir: &Path,
    memory: u64,
    binary: Option<PathBuf>,
) -> Result<(), StepError> {
    let run = backup_server::run_dir()?;
    let server = backup_server::start_on(dir, run.path(), memory, binary).await?;
    let log = server.error_log().to_path_buf();
    server
        .shutdown(ShutdownMode::Slow)
        .await
        .map_err(|e| StepError::fatal(format!("the slow shutdown after recovery failed: {e}")))?;
    backup_server::forget_remote_links(dir)?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if text.contains("[ERROR]") {
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("[ERROR]"))
            .take(10)
            .collect();
        return Err(StepError::fatal(format!(
            "crash recovery reported errors:\n{}",
            errors.join("\n")
        )));
    }
    Ok(())
}

async fn prepare_with_mariadb_backup(
    dir: &Path,
    memory: u64,
    binary: Option<PathBuf>,
) -> Result<(), StepError> {
    let bin = binary
        .or_else(|| stagehand_mariadb::sandbox::binaries::find_binary("mariadb-backup"))
        .ok_or_else(|| {
            StepError::fatal("mariadb-backup not found")
                .with_hint("install it with 'apt-get install mariadb-backup'")
        })?;
    let mut command = tokio::process::Command::new(&bin);
    command
        .arg("--prepare")
        .arg(format!("--target-dir={}", dir.display()))
        .arg(format!("--use-memory={memory}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    // RESTORE mode maps DATA DIRECTORY paths into the backup by itself; as root it also
    // gets the namespace mariadbd needs (defence in depth).
    let is_root = stagehand_mariadb::sandbox::accounts::is_root();
    if let Some(mounts) = is_root
        .then(|| backup_server::remote_mounts(dir, dir, Some(&bin)))
        .transpose()?
        .flatten()
    {
        stagehand_host::process::with_private_mounts(&mut command, &mounts).map_err(|e| {
            StepError::fatal(format!("cannot set up the private mount namespace: {e}"))
        })?;
    }
    let cannot_run = |e| StepError::fatal(format!("cannot run {}: {e}", bin.display()));
    let out = stagehand_host::process::spawn_tied_to_process(command)
        .await
        .map_err(cannot_run)?
        .wait_with_output()
        .await
        .map_err(cannot_run)?;
    backup_server::forget_remote_links(dir)?;
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !text.contains("completed OK!") {
        let tail: Vec<&str> = text
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(StepError::fatal(format!(
            "mariadb-backup --prepare failed ({}):\n{}",
            out.status,
            tail.join("\n")
        )));
    }
    Ok(())
}

/// Records in the mariadb-backup metadata that the redo has been applied, so its
/// `--copy-back` accepts the directory and `--prepare` does not apply it again.
fn mark_prepared(dir: &Path, manifest: &Manifest, engine: Engine) -> Result<(), StepError> {
    if engine == Engine::MariadbBackup {
        return Ok(()); // mariadb-backup rewrote its own file
    }
    let Some(name) = manifest
        .metadata_files
        .iter()
        .find(|n| n.ends_with("_checkpoints"))
    else {
        return Ok(());
    };
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| StepError::fatal(format!("{}: {e}", path.display())))?;
    let mut c = bf::parse_checkpoints(&text)
        .map_err(|e| StepError::fatal(format!("{}: {e}", path.display())))?;
    c.backup_type = bf::BackupType::LogApplied;
    std::fs::write(&path, bf::render_checkpoints(&c))
        .map_err(|e| StepError::fatal(format!("{}: {e}", path.display())))
}

/// The tablespaces of DATA DIRECTORY tables keep, in the rehashed list, the path their
/// `.isl` names (where copy_back puts them by default).
fn mark_remote(dir: &Path, files: &mut [CopiedFile]) -> Result<(), StepError> {
    let remote = stagehand_mariadb::datadir::remote_tablespaces(dir)
        .map_err(|e| StepError::fatal(e.to_string()))?;
    for (abs, rel) in remote {
        if let Some(f) = files.iter_mut().find(|f| f.path == rel) {
            f.remote = Some(abs.display().to_string());
        }
    }
    Ok(())
}

/// The files of the manifest as they are on disk before prepare checks them (those
/// that can be stat'ed).
fn stamps_of(dir: &Path, manifest: &Manifest) -> HashMap<String, SourceStamp> {
    let now = stagehand_backup::entry::now_ns();
    manifest
        .files
        .iter()
        .filter_map(|f| {
            let meta = std::fs::metadata(dir.join(&f.path)).ok()?;
            Some((f.path.clone(), SourceStamp::of(&meta, now)))
        })
        .collect()
}

/// Every file of a directory (but the manifest) with its hash: prepare changes many
/// files. A file that crash recovery did not touch (same inode, size and mtime as in
/// `stamps`, taken before the check that hashed it) keeps its checked hash instead of
/// being read once more.
fn rehash_dir(
    dir: &Path,
    stamps: &HashMap<String, SourceStamp>,
    checked: &[CopiedFile],
) -> Result<Vec<CopiedFile>, StepError> {
    let checked: HashMap<&str, &CopiedFile> =
        checked.iter().map(|f| (f.path.as_str(), f)).collect();
    let reuse = |rel: &str| -> Option<CopiedFile> {
        let stamp = stamps.get(rel)?;
        let meta = std::fs::metadata(dir.join(rel)).ok()?;
        let f = checked.get(rel).filter(|_| stamp.still_matches(&meta))?;
        Some(plain_entry(rel, f.size, f.hash.clone()))
    };
    let mut out = Vec::new();
    walk(dir, dir, &reuse, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(
    root: &Path,
    dir: &Path,
    reuse: &dyn Fn(&str) -> Option<CopiedFile>,
    out: &mut Vec<CopiedFile>,
) -> Result<(), StepError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| StepError::fatal(format!("{}: {e}", dir.display())))?;
    for e in entries.filter_map(|e| e.ok()) {
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if path.is_dir() {
            walk(root, &path, reuse, out)?;
        } else if rel != stagehand_backup::manifest::MANIFEST_FILE && !rel.starts_with('.') {
            let mut f = match reuse(&rel) {
                Some(unchanged) => unchanged,
                None => hash_file(root, &rel)?,
            };
            f.class = class_of(&rel);
            out.push(f);
        }
    }
    Ok(())
}

fn class_of(rel: &str) -> stagehand_mariadb::datadir::FileClass {
    use stagehand_mariadb::datadir::FileClass as C;
    let name = rel.rsplit('/').next().unwrap_or(rel);
    if name.starts_with("ibdata") {
        C::SystemTablespace
    } else if name.starts_with("undo") && name.len() == 7 {
        C::UndoTablespace
    } else if name.ends_with(".ibd") {
        C::Tablespace
    } else if name.starts_with("aria_log") {
        C::AriaLog
    } else if name.ends_with(".MAD") || name.ends_with(".MAI") {
        C::AriaData
    } else {
        C::NonInnodb
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rehash_after_recovery_reads_only_the_files_recovery_changed() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("kept.frm"), b"kept").expect("write");
        std::fs::write(d.path().join("ibdata1"), b"before").expect("write");
        // A stand-in hash: if it comes back, the file was not read again.
        let recorded = |rel: &str| plain_entry(rel, 4, "blake3:recorded".into());
        let checked = vec![recorded("ibdata1"), recorded("kept.frm")];
        let later = stagehand_backup::entry::now_ns() + 2_000_000_000;
        let stamps: HashMap<String, SourceStamp> = ["ibdata1", "kept.frm"]
            .iter()
            .map(|rel| {
                let meta = std::fs::metadata(d.path().join(rel)).expect("stat");
                (rel.to_string(), SourceStamp::of(&meta, later))
            })
            .collect();
        // Recovery rewrites ibdata1 and creates a file.
        std::fs::write(d.path().join("ibdata1"), b"after recovery").expect("write");
        std::fs::write(d.path().join("ib_logfile0"), b"log").expect("write");
        let files = rehash_dir(d.path(), &stamps, &checked).expect("rehash");
        let hash_of = |rel: &str| {
            let f = files.iter().find(|f| f.path == rel).expect("listed");
            (f.size, f.hash.clone())
        };
        assert_eq!(hash_of("kept.frm"), (4, "blake3:recorded".into()));
        let read =
            |rel: &str| stagehand_host::digest::hash_file(&d.path().join(rel)).expect("hash");
        assert_eq!(hash_of("ibdata1"), read("ibdata1"));
        assert_eq!(hash_of("ib_logfile0"), read("ib_logfile0"));
        assert_eq!(files.len(), 3);
    }

    #[test]
    fn a_rerun_skips_only_what_crash_recovery_writes() {
        let meta: Vec<String> = ["xtrabackup_checkpoints", "xtrabackup_info", "backup-my.cnf"]
            .map(String::from)
            .to_vec();
        for rewritten in [
            "ibdata1",
            "undo001",
            "ib_logfile0",
            "aria_log.00000001",
            "aria_log_control",
            "ibtmp1",
            "db1/t.ibd",
            "xtrabackup_checkpoints",
        ] {
            assert!(rewritten_by_recovery(rewritten, &meta), "{rewritten}");
        }
        for checked in [
            "db1/t.frm",
            "db1/a.MAD",
            "db1/a.MAI",
            "db1/m.MYD",
            "db1/db.opt",
            "db1/p.par",
            "db1/t.TRG",
            "db1/undo1.frm",
            "db1/ibdata1.frm",
            "undo_x",
            "backup-my.cnf",
            "xtrabackup_info",
        ] {
            assert!(!rewritten_by_recovery(checked, &meta), "{checked}");
        }
    }
}
