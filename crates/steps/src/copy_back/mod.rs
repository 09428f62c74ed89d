//! `copy_back`: restores a prepared backup directory into a server's directories, as
//! `mariadb-backup --copy-back`/`--move-back` do: undo tablespaces to the undo
//! directory, the redo log to the log directory, the system tablespace to the data home
//! directory, everything else under the datadir with its relative path. The backup's
//! own files (the manifest, `.stagehand/`, `backup-my.cnf`, the `xtrabackup_*` or
//! `mariadb_backup_*` metadata, as mariadb-backup skips them) are not restored; the
//! binlog position and GTID of the backup become outputs instead.
//!
//! Every file is checked against the manifest (size and SHA-256) as it is copied, and
//! fsynced, as are the directories. Files are written in place, in an order that never
//! leaves a startable half-restore: the system tablespace first, the redo log last
//! (under a temporary name, renamed once everything else is durable) — InnoDB 10.8+
//! refuses to start on a system tablespace without `ib_logfile0`. On a failure or a
//! cancel, what this step wrote is removed again (files moved by `mode: move` are moved
//! back) and the error says so; anything it could not remove is listed.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use stagehand_backup::entry::CopiedFile;
use stagehand_backup::manifest::{Manifest, ManifestError, MANIFEST_FILE};
use stagehand_engine::step::Finding;
use stagehand_engine::{
    output, ConfigError, OutputSpec, OutputType, Outputs, StepContext, StepError, TypedStep,
};
use stagehand_host::progress::Progress;
use stagehand_mariadb::sandbox::accounts::{chown_path, is_root, lookup_group, lookup_user};
use stagehand_mariadb::sandbox::binaries::find_binary;
use stagehand_repo::ByteCounter;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Read and write size of a copy.
const CHUNK: usize = 1 << 20;
/// How many files of a non-empty directory an error names.
const SHOWN_FILES: usize = 5;
/// Where the redo log is written before it gets its name (the last rename).
const LOG_TMP_SUFFIX: &str = ".stagehand-partial";
/// What a moved-out backup's manifest is renamed to: the directory is no longer a
/// complete backup and must not be taken for one.
pub const MOVED_MANIFEST: &str = "stagehand.moved.json";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Copy the files; the backup stays as it was.
    #[default]
    Copy,
    /// Move the files: a rename on the same filesystem, else a copy and, once every
    /// file is restored, the removal of the backup's file. The backup directory is
    /// then no longer a backup (its manifest is renamed to `stagehand.moved.json`).
    Move,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyBackConfig {
    /// The backup directory: complete, prepared (by a `prepare` step) and uncompressed.
    pub from: String,
    /// The server's datadir (created when missing). Required unless `defaults_file`
    /// sets one.
    pub datadir: Option<String>,
    /// innodb_undo_directory: where undo001… go (default: the datadir). Relative paths
    /// are relative to the datadir, as the server reads them.
    pub undo_dir: Option<String>,
    /// innodb_log_group_home_dir: where ib_logfile0 goes (default: the datadir).
    pub log_dir: Option<String>,
    /// innodb_data_home_dir: where the system tablespace (ibdata1…) goes (default: the
    /// datadir).
    pub data_home_dir: Option<String>,
    /// A my.cnf to read datadir and the three InnoDB directories from
    /// (`my_print_defaults --defaults-file=FILE --mysqld`); the fields above win.
    pub defaults_file: Option<String>,
    /// Restore into directories that hold files. Without it a non-empty target is
    /// refused and nothing is written. With it, everything in the datadir is removed
    /// first; in a separate undo, log or data home directory only InnoDB's own files
    /// (undoNNN, ib_logfileN, the system tablespace, ibtmp1) are removed. Nothing
    /// outside the target directories is touched, and symlinks are removed, never
    /// followed.
    #[serde(default)]
    pub force: bool,
    /// `copy` (default) or `move`.
    #[serde(default)]
    pub mode: Mode,
    /// `user` or `user:group` that every restored file and directory (the target
    /// directories included) is given to, e.g. `mysql`. Needs root unless it is the
    /// current user.
    pub owner: Option<String>,
    /// Files restored at once.
    #[serde(default = "default_parallel")]
    pub parallel: u32,
}

fn default_parallel() -> u32 {
    2
}

/// Why a restore did not happen (or was undone).
#[derive(Debug, thiserror::Error)]
pub enum CopyBackError {
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("{dir} is not prepared: run the `prepare` step on it first")]
    NotPrepared { dir: String },
    #[error("{dir} holds {count} compressed files (e.g. {example}): decompress the backup first")]
    Compressed {
        dir: String,
        count: usize,
        example: String,
    },
    #[error("no datadir: give `datadir`, or a `defaults_file` whose server groups set one")]
    NoDatadir,
    #[error("{file}: {message}")]
    Defaults { file: String, message: String },
    #[error("{dir} is not empty ({found}): nothing was written")]
    NotEmpty { dir: String, found: String },
    #[error("{target} and the backup {from} overlap: restore into a directory outside the backup")]
    Overlap { target: String, from: String },
    #[error("owner {owner}: {message}")]
    Owner { owner: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} in the backup does not match the manifest: {what}")]
    Damaged { path: String, what: String },
    #[error("the manifest names {path}, a path outside the backup")]
    BadPath { path: String },
    #[error("{dir} has {available} bytes free, the restore needs {needed}")]
    NoSpace {
        dir: String,
        available: u64,
        needed: u64,
    },
    #[error("a server (pid {pid}) is running on {dir}: it holds a lock on {file}; stop it first")]
    InUse { dir: String, file: String, pid: i32 },
    #[error("cancelled")]
    Cancelled,
}

impl CopyBackError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        CopyBackError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            CopyBackError::Manifest(_) => "copy_back restores a complete backup made by stagehand".into(),
            CopyBackError::NotPrepared { dir } => format!("add a step `uses: prepare` with `target: {dir}` before copy_back (or take the backup with prepare=true)"),
            CopyBackError::Compressed { .. } => "restore from an uncompressed copy of the backup".into(),
            CopyBackError::NotEmpty { .. } => "restore into a new or empty directory, or set `force: true` to remove what is there first".into(),
            CopyBackError::Damaged { .. } => "the backup is damaged: restore another backup (and run `verify` on this one)".into(),
            CopyBackError::Owner { .. } => "run stagehand as root, or leave `owner` out".into(),
            CopyBackError::InUse { .. } => "stop that server (systemctl stop mariadb) before restoring into its datadir; nothing was removed".into(),
            _ => return None,
        })
    }

    pub fn into_step_error(self) -> StepError {
        let hint = self.hint();
        let e = StepError::fatal(self.to_string());
        match hint {
            Some(h) => e.with_hint(h),
            None => e,
        }
    }
}

/// Where the files go.
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    pub datadir: PathBuf,
    pub undo: PathBuf,
    pub log: PathBuf,
    pub home: PathBuf,
}

impl Targets {
    /// The distinct target directories, the datadir first.
    fn dirs(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = vec![&self.datadir];
        for d in [&self.undo, &self.log, &self.home] {
            if !out.contains(&d.as_path()) {
                out.push(d);
            }
        }
        out
    }
}

/// Which target directory a backup file belongs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Skip,
    Datadir,
    Undo,
    Log,
    Home,
}

/// One file to restore.
#[derive(Debug, Clone)]
struct Item {
    src: PathBuf,
    dest: PathBuf,
    rel: String,
    size: u64,
    sha256: String,
    /// The redo log (restored last).
    log: bool,
    /// The system tablespace (restored first).
    system: bool,
}

/// What this step wrote, to undo on failure.
#[derive(Debug, Clone)]
enum Written {
    Copied(PathBuf),
    Renamed { from: PathBuf, to: PathBuf },
}

#[derive(Debug, Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

/// Everything a restore needs, decided before anything is written.
struct Job {
    from: PathBuf,
    targets: Targets,
    items: Vec<Item>,
    skipped: Vec<String>,
    owner: Option<Owner>,
    mode: Mode,
    force: bool,
    parallel: usize,
}

pub struct CopyBack;

#[async_trait]
impl TypedStep for CopyBack {
    type Config = CopyBackConfig;
    const NAME: &'static str = "copy_back";
    const SUMMARY: &'static str = "Restores a prepared backup into a server's datadir (and undo/log/data home directories), verifying every file";

    fn outputs() -> Vec<OutputSpec> {
        vec![
            output("files", OutputType::Integer, "files restored"),
            output("bytes", OutputType::Integer, "bytes restored"),
            output("seconds", OutputType::Number, "wall time"),
            output(
                "datadir",
                OutputType::String,
                "the datadir restored into (as resolved)",
            ),
            output(
                "gtid_binlog_pos",
                OutputType::String,
                "the backup's GTID position: SET GLOBAL gtid_slave_pos to it on a new replica",
            ),
            output(
                "binlog_file",
                OutputType::String,
                "the source's binlog file at the backup's commit point",
            ),
            output(
                "binlog_position",
                OutputType::Integer,
                "the position in that file",
            ),
        ]
    }

    fn check(cfg: &CopyBackConfig) -> Result<(), ConfigError> {
        if cfg.datadir.is_none() && cfg.defaults_file.is_none() {
            return Err(ConfigError {
                path: String::new(),
                message: "give `datadir` or `defaults_file`".into(),
                hint: Some("datadir: /var/lib/mysql".into()),
            });
        }
        if cfg.parallel == 0 || cfg.parallel > 64 {
            return Err(ConfigError {
                path: "parallel".into(),
                message: format!("parallel must be 1 to 64, not {}", cfg.parallel),
                hint: None,
            });
        }
        let (user, group) = split_owner(cfg.owner.as_deref().unwrap_or("-"));
        if user.is_empty() || group.is_some_and(str::is_empty) {
            return Err(ConfigError {
                path: "owner".into(),
                message: "owner is `user` or `user:group`".into(),
                hint: Some("owner: mysql".into()),
            });
        }
        Ok(())
    }

    fn describe(cfg: &CopyBackConfig) -> String {
        let verb = match cfg.mode {
            Mode::Copy => "copies",
            Mode::Move => "moves",
        };
        let datadir = cfg.datadir.as_deref().unwrap_or("the datadir of");
        let mut s = format!("{verb} the prepared backup {} into {datadir}", cfg.from);
        if let Some(f) = &cfg.defaults_file {
            s.push_str(&format!(
                " (directories not given read from {f} at run time)"
            ));
        }
        for (what, dir) in [
            ("undo tablespaces", &cfg.undo_dir),
            ("redo log", &cfg.log_dir),
            ("system tablespace", &cfg.data_home_dir),
        ] {
            if let Some(d) = dir {
                s.push_str(&format!(", {what} into {d}"));
            }
        }
        s.push_str(&format!(
            ", {} at once, checking sizes and SHA-256 against the manifest; ",
            cfg.parallel
        ));
        s.push_str(if cfg.force {
            "existing contents of the datadir are removed first"
        } else {
            "refuses non-empty target directories"
        });
        if let Some(o) = &cfg.owner {
            s.push_str(&format!("; files owned by {o}"));
        }
        s
    }

    async fn preflight(cfg: &CopyBackConfig, _ctx: &StepContext) -> Vec<Finding> {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || preflight_findings(&cfg))
            .await
            .unwrap_or_else(|e| vec![Finding::error(e.to_string())])
    }

    async fn run(cfg: &CopyBackConfig, ctx: &StepContext) -> Result<Outputs, StepError> {
        let t0 = Instant::now();
        let cfg2 = cfg.clone();
        let (job, manifest) = tokio::task::spawn_blocking(move || plan(&cfg2))
            .await
            .map_err(|e| StepError::fatal(e.to_string()))?
            .map_err(CopyBackError::into_step_error)?;
        let total: u64 = job.items.iter().map(|i| i.size).sum();
        tracing::info!(
            from = %job.from.display(),
            datadir = %job.targets.datadir.display(),
            files = job.items.len(),
            bytes = total,
            skipped = ?job.skipped,
            "restoring"
        );
        let progress = Progress::start(&ctx.step_id, "restored", total);
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, counter) = (stop.clone(), progress.counter());
        let datadir = job.targets.datadir.display().to_string();
        let files = job.items.len();
        let mut work = tokio::task::spawn_blocking(move || restore(&job, &stop2, &counter));
        let result = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => {
                // The workers notice within one chunk and undo what they wrote.
                stop.store(true, Ordering::Relaxed);
                work.await
            }
            r = &mut work => r,
        };
        result.map_err(|e| StepError::fatal(e.to_string()))??;
        let seconds = t0.elapsed().as_secs_f64();
        let mut o = Outputs::new();
        o.insert("files".into(), json!(files));
        o.insert("bytes".into(), json!(total));
        o.insert("seconds".into(), json!((seconds * 1000.0).round() / 1000.0));
        o.insert("datadir".into(), json!(datadir));
        o.insert(
            "gtid_binlog_pos".into(),
            json!(manifest.binlog.gtid_binlog_pos),
        );
        o.insert("binlog_file".into(), json!(manifest.binlog.file));
        o.insert("binlog_position".into(), json!(manifest.binlog.position));
        Ok(o)
    }
}

fn split_owner(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once(':') {
        Some((u, g)) => (u.trim(), Some(g.trim())),
        None => (spec.trim(), None),
    }
}

/// Reads and checks the backup: complete, prepared, uncompressed.
pub fn load_backup(from: &Path) -> Result<Manifest, CopyBackError> {
    let manifest = Manifest::read(from)?;
    let dir = from.display().to_string();
    if manifest.prepared.is_none() {
        return Err(CopyBackError::NotPrepared { dir });
    }
    let stored: Vec<&CopiedFile> = manifest
        .files
        .iter()
        .filter(|f| f.stored.is_some())
        .collect();
    if let Some(first) = stored.first() {
        return Err(CopyBackError::Compressed {
            dir,
            count: stored.len(),
            example: first.path.clone(),
        });
    }
    Ok(manifest)
}

/// Everything decided before a byte is written: backup, targets, owner, file list,
/// emptiness (or clearing with `force`) and free space.
fn plan(cfg: &CopyBackConfig) -> Result<(Job, Manifest), CopyBackError> {
    let from = absolute(Path::new(&cfg.from))?;
    let manifest = load_backup(&from)?;
    let targets = resolve_targets(cfg)?;
    check_overlap(&from, &targets)?;
    let owner = cfg.owner.as_deref().map(resolve_owner).transpose()?;
    let (items, skipped) = plan_files(&from, &manifest, &targets)?;
    check_not_in_use(&targets)?;
    check_targets(&targets, cfg.force)?;
    if cfg.mode == Mode::Copy {
        check_space(&targets, &items)?;
    }
    if cfg.force {
        clear_targets(&targets, &manifest)?;
    }
    let job = Job {
        from,
        targets,
        items,
        skipped,
        owner,
        mode: cfg.mode,
        force: cfg.force,
        parallel: cfg.parallel as usize,
    };
    Ok((job, manifest))
}

/// Explicit fields, then the defaults file, then the datadir; relative InnoDB
/// directories are relative to the datadir, as the server reads them.
pub fn resolve_targets(cfg: &CopyBackConfig) -> Result<Targets, CopyBackError> {
    let defaults = match &cfg.defaults_file {
        Some(f) => read_defaults(Path::new(f))?,
        None => BTreeMap::new(),
    };
    let pick = |explicit: &Option<String>, key: &str| {
        explicit
            .clone()
            .or_else(|| defaults.get(key).cloned())
            .filter(|v| !v.trim().is_empty())
    };
    let datadir = pick(&cfg.datadir, "datadir").ok_or(CopyBackError::NoDatadir)?;
    let datadir = absolute(Path::new(datadir.trim()))?;
    let under = |v: Option<String>| match v {
        None => datadir.clone(),
        Some(v) => normalize(&datadir.join(v.trim())),
    };
    Ok(Targets {
        undo: under(pick(&cfg.undo_dir, "innodb_undo_directory")),
        log: under(pick(&cfg.log_dir, "innodb_log_group_home_dir")),
        home: under(pick(&cfg.data_home_dir, "innodb_data_home_dir")),
        datadir,
    })
}

/// The server's options from a my.cnf, last one wins, names with `_`.
fn read_defaults(file: &Path) -> Result<BTreeMap<String, String>, CopyBackError> {
    let err = |message: String| CopyBackError::Defaults {
        file: file.display().to_string(),
        message,
    };
    if !file.is_file() {
        return Err(err("no such file".into()));
    }
    let bin = find_binary("my_print_defaults")
        .or_else(|| find_binary("mariadb-print-defaults"))
        .ok_or_else(|| {
            err("my_print_defaults not found (apt-get install mariadb-client)".into())
        })?;
    let out = std::process::Command::new(&bin)
        .arg(format!("--defaults-file={}", file.display()))
        .arg("--mysqld")
        .output()
        .map_err(|e| err(format!("cannot run {}: {e}", bin.display())))?;
    if !out.status.success() {
        return Err(err(format!(
            "my_print_defaults failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_defaults(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_defaults(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("--"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().replace('-', "_"), v.trim().to_string()))
        .collect()
}

fn resolve_owner(spec: &str) -> Result<Owner, CopyBackError> {
    let err = |message: String| CopyBackError::Owner {
        owner: spec.to_string(),
        message,
    };
    let (user, group) = split_owner(spec);
    let (uid, primary) = lookup_user(user).map_err(|e| err(e.to_string()))?;
    let gid = match group {
        Some(g) => lookup_group(g).map_err(|e| err(e.to_string()))?,
        None => primary,
    };
    // SAFETY: geteuid/getegid cannot fail.
    let (me, my_gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if !is_root() && (uid != me || gid != my_gid) {
        return Err(err(format!(
            "only root can give files to another user (this process runs as uid {me})"
        )));
    }
    Ok(Owner { uid, gid })
}

/// Restoring into the backup (or the backup into a target) would destroy it.
fn check_overlap(from: &Path, targets: &Targets) -> Result<(), CopyBackError> {
    let from_real = fs::canonicalize(from).unwrap_or_else(|_| from.to_path_buf());
    for dir in targets.dirs() {
        let real = real_path(dir);
        if real.starts_with(&from_real) || from_real.starts_with(&real) {
            return Err(CopyBackError::Overlap {
                target: dir.display().to_string(),
                from: from.display().to_string(),
            });
        }
    }
    Ok(())
}

/// The canonical path of a directory that may not exist yet (its nearest existing
/// ancestor canonicalized).
fn real_path(dir: &Path) -> PathBuf {
    let mut tail = Vec::new();
    let mut cur = dir.to_path_buf();
    loop {
        if let Ok(real) = fs::canonicalize(&cur) {
            return tail.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (cur.file_name().map(|n| n.to_os_string()), cur.parent()) {
            (Some(name), Some(parent)) => {
                tail.push(name);
                cur = parent.to_path_buf();
            }
            _ => return dir.to_path_buf(),
        }
    }
}

/// Where each manifest file goes, and which are the backup's own.
fn plan_files(
    from: &Path,
    manifest: &Manifest,
    targets: &Targets,
) -> Result<(Vec<Item>, Vec<String>), CopyBackError> {
    let system = manifest.server.system_files();
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for f in &manifest.files {
        let bad = Path::new(&f.path)
            .components()
            .any(|c| !matches!(c, Component::Normal(_)));
        if bad || f.path.is_empty() {
            return Err(CopyBackError::BadPath {
                path: f.path.clone(),
            });
        }
        let placed = place(f, manifest, &system);
        let dir = match placed {
            Place::Skip => {
                skipped.push(f.path.clone());
                continue;
            }
            Place::Datadir => &targets.datadir,
            Place::Undo => &targets.undo,
            Place::Log => &targets.log,
            Place::Home => &targets.home,
        };
        items.push(Item {
            src: from.join(&f.path),
            dest: dir.join(&f.path),
            rel: f.path.clone(),
            size: f.size,
            sha256: f.sha256.clone(),
            log: placed == Place::Log,
            system: placed == Place::Home,
        });
    }
    Ok((items, skipped))
}

fn place(f: &CopiedFile, manifest: &Manifest, system: &[String]) -> Place {
    use stagehand_mariadb::datadir::FileClass;
    let rel = f.path.as_str();
    let top = !rel.contains('/');
    let backup_own = rel == MANIFEST_FILE
        || rel.starts_with('.')
        || rel == "backup-my.cnf"
        || manifest.metadata_files.iter().any(|m| m == rel)
        || (top && (rel.starts_with("xtrabackup_") || rel.starts_with("mariadb_backup_")))
        // The temporary tablespace is recreated at every start.
        || rel == "ibtmp1";
    if backup_own {
        Place::Skip
    } else if top && (f.class == FileClass::UndoTablespace || is_undo_name(rel)) {
        Place::Undo
    } else if top && is_log_name(rel) {
        Place::Log
    } else if top && (f.class == FileClass::SystemTablespace || system.iter().any(|s| s == rel)) {
        Place::Home
    } else {
        Place::Datadir
    }
}

fn is_undo_name(name: &str) -> bool {
    name.len() == 7 && name.starts_with("undo") && name[4..].chars().all(|c| c.is_ascii_digit())
}

fn is_log_name(name: &str) -> bool {
    name.strip_prefix("ib_logfile")
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// InnoDB's own files in an undo/log/data home directory: what `force` may remove there.
fn is_innodb_own(name: &str, system: &[String]) -> bool {
    is_undo_name(name)
        || is_log_name(name)
        || name == "ibtmp1"
        || name.starts_with("ibdata")
        || system.iter().any(|s| s == name)
}

/// Without `force`, every target directory must be missing or empty.
fn check_targets(targets: &Targets, force: bool) -> Result<(), CopyBackError> {
    if force {
        return Ok(());
    }
    for dir in targets.dirs() {
        let found = entries(dir)?;
        if !found.is_empty() {
            let mut shown: Vec<String> = found.iter().take(SHOWN_FILES).cloned().collect();
            if found.len() > SHOWN_FILES {
                shown.push(format!("and {} more", found.len() - SHOWN_FILES));
            }
            return Err(CopyBackError::NotEmpty {
                dir: dir.display().to_string(),
                found: format!("found {}", shown.join(", ")),
            });
        }
    }
    Ok(())
}

/// Files a running server keeps an fcntl write lock on: InnoDB's system tablespace and
/// Aria's control file.
fn lock_files(targets: &Targets) -> Vec<PathBuf> {
    let mut files = vec![
        targets.datadir.join("ibdata1"),
        targets.home.join("ibdata1"),
        targets.datadir.join("aria_log_control"),
    ];
    files.dedup();
    files
}

/// Refuses targets a running server uses: removing or overwriting its files under it
/// destroys the live data (binlogs included) and the restore alike.
fn check_not_in_use(targets: &Targets) -> Result<(), CopyBackError> {
    for file in lock_files(targets) {
        if let Some(pid) = lock_holder(&file)? {
            return Err(CopyBackError::InUse {
                dir: targets.datadir.display().to_string(),
                file: file.display().to_string(),
                pid,
            });
        }
    }
    Ok(())
}

/// The pid of another process holding a lock on `file` (F_GETLK); none when the file
/// is missing or unlocked. An OFD lock reports pid -1.
fn lock_holder(file: &Path) -> Result<Option<i32>, CopyBackError> {
    use std::os::fd::AsRawFd;
    let f = match File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CopyBackError::io(file, e)),
    };
    // SAFETY: a zeroed flock is a valid value; the fd is open for the call.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut lock) };
    if rc != 0 {
        return Err(CopyBackError::io(file, std::io::Error::last_os_error()));
    }
    Ok((lock.l_type != libc::F_UNLCK as libc::c_short).then_some(lock.l_pid))
}

/// Names in a directory, sorted; none when it does not exist.
fn entries(dir: &Path) -> Result<Vec<String>, CopyBackError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CopyBackError::io(dir, e)),
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// `force`: the separate InnoDB directories lose InnoDB's files, then the datadir
/// loses everything (an old datadir must not mix with the restored one).
fn clear_targets(targets: &Targets, manifest: &Manifest) -> Result<(), CopyBackError> {
    let system = manifest.server.system_files();
    for dir in targets.dirs().into_iter().skip(1) {
        for name in entries(dir)? {
            if is_innodb_own(&name, &system) {
                remove_entry(&dir.join(name))?;
            }
        }
    }
    let datadir = &targets.datadir;
    let names = entries(datadir)?;
    if !names.is_empty() {
        tracing::warn!(dir = %datadir.display(), entries = names.len(), "force: removing the datadir's contents");
    }
    for name in names {
        remove_entry(&datadir.join(name))?;
    }
    Ok(())
}

/// Removes a file, a symlink (not its target) or a directory tree.
fn remove_entry(path: &Path) -> Result<(), CopyBackError> {
    let meta = fs::symlink_metadata(path).map_err(|e| CopyBackError::io(path, e))?;
    let r = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    r.map_err(|e| CopyBackError::io(path, e))
}

/// Free space per filesystem for a copy (force clears first, so that is conservative).
fn check_space(targets: &Targets, items: &[Item]) -> Result<(), CopyBackError> {
    let mut need: BTreeMap<PathBuf, u64> = BTreeMap::new();
    for dir in targets.dirs() {
        let probe = existing_ancestor(dir);
        let bytes: u64 = items
            .iter()
            .filter(|i| i.dest.starts_with(dir) && owner_dir(targets, &i.dest) == dir)
            .map(|i| i.size)
            .sum();
        *need.entry(probe).or_default() += bytes;
    }
    for (probe, needed) in need {
        if let Ok(available) = fs4::available_space(&probe) {
            if available < needed {
                return Err(CopyBackError::NoSpace {
                    dir: probe.display().to_string(),
                    available,
                    needed,
                });
            }
        }
    }
    Ok(())
}

/// The most specific target directory holding `dest`.
fn owner_dir<'a>(targets: &'a Targets, dest: &Path) -> &'a Path {
    targets
        .dirs()
        .into_iter()
        .filter(|d| dest.starts_with(d))
        .max_by_key(|d| d.as_os_str().len())
        .unwrap_or(&targets.datadir)
}

fn existing_ancestor(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// The restore itself; on any error what it wrote is undone.
fn restore(job: &Job, stop: &AtomicBool, counter: &ByteCounter) -> Result<(), StepError> {
    let written = Mutex::new(Vec::<Written>::new());
    let mut created = Vec::new();
    let result = restore_inner(job, stop, counter, &written, &mut created);
    let Err(e) = result else {
        return Ok(());
    };
    let written = written.into_inner().unwrap_or_else(|p| p.into_inner());
    let leftovers = undo(&written, &created);
    let what = match job.mode {
        Mode::Copy => "written",
        Mode::Move => "moved",
    };
    let mut err = if matches!(e, CopyBackError::Cancelled) {
        StepError::cancelled()
    } else {
        e.into_step_error()
    };
    if leftovers.is_empty() {
        err.message.push_str(&format!(
            "; the {} files {what} so far were undone: the target directories are as before",
            written.len()
        ));
    } else {
        let shown: Vec<String> = leftovers.iter().take(20).cloned().collect();
        err.message.push_str(&format!(
            "; {} files {what} by this step could not be undone:\n{}",
            leftovers.len(),
            shown.join("\n")
        ));
        err.hint = Some(format!(
            "empty {} (and the undo/log directories) before a retry: it holds a partial restore",
            job.targets.datadir.display()
        ));
    }
    if job.force {
        err.message
            .push_str(" (force had removed their earlier contents)");
    }
    Err(err)
}

fn restore_inner(
    job: &Job,
    stop: &AtomicBool,
    counter: &ByteCounter,
    written: &Mutex<Vec<Written>>,
    created: &mut Vec<PathBuf>,
) -> Result<(), CopyBackError> {
    for dir in job.targets.dirs() {
        ensure_dir(dir, created)?;
    }
    for item in &job.items {
        if let Some(parent) = item.dest.parent() {
            ensure_dir(parent, created)?;
        }
    }
    // The system tablespace first, the redo log last (see the module comment).
    let (system, rest): (Vec<&Item>, Vec<&Item>) =
        job.items.iter().filter(|i| !i.log).partition(|i| i.system);
    let logs: Vec<&Item> = job.items.iter().filter(|i| i.log).collect();
    run_parallel(job, system, stop, counter, written)?;
    run_parallel(job, rest, stop, counter, written)?;
    sync_dirs(job, created)?;
    for item in logs {
        restore_log(job, item, stop, counter, written)?;
    }
    sync_dirs(job, created)?;
    finish_move(job, written)?;
    chown_dirs(job, created)
}

/// Creates `dir` and its missing ancestors, recording each one created.
fn ensure_dir(dir: &Path, created: &mut Vec<PathBuf>) -> Result<(), CopyBackError> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    for d in missing.into_iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => created.push(d.to_path_buf()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(CopyBackError::io(d, e)),
        }
    }
    Ok(())
}

/// `parallel` workers over the items, largest first; the first error stops the rest.
fn run_parallel(
    job: &Job,
    mut items: Vec<&Item>,
    stop: &AtomicBool,
    counter: &ByteCounter,
    written: &Mutex<Vec<Written>>,
) -> Result<(), CopyBackError> {
    items.sort_by_key(|i| std::cmp::Reverse(i.size));
    let queue = Mutex::new(items.into_iter());
    let first_error: Mutex<Option<CopyBackError>> = Mutex::new(None);
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..job.parallel.max(1) {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let next = queue.lock().ok().and_then(|mut q| q.next());
                let Some(item) = next else { return };
                if let Err(e) = restore_file(job, item, &item.dest, stop, counter, written) {
                    failed.store(true, Ordering::Relaxed);
                    if let Ok(mut slot) = first_error.lock() {
                        slot.get_or_insert(e);
                    }
                    return;
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The redo log: copied under a temporary name, then renamed (or moved directly).
fn restore_log(
    job: &Job,
    item: &Item,
    stop: &AtomicBool,
    counter: &ByteCounter,
    written: &Mutex<Vec<Written>>,
) -> Result<(), CopyBackError> {
    if job.mode == Mode::Move {
        return restore_file(job, item, &item.dest, stop, counter, written);
    }
    let mut tmp = item.dest.clone().into_os_string();
    tmp.push(LOG_TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    restore_file(job, item, &tmp, stop, counter, written)?;
    fs::rename(&tmp, &item.dest).map_err(|e| CopyBackError::io(&item.dest, e))?;
    if let Ok(mut w) = written.lock() {
        if let Some(last) = w
            .iter_mut()
            .rev()
            .find(|x| matches!(x, Written::Copied(p) if *p == tmp))
        {
            *last = Written::Copied(item.dest.clone());
        }
    }
    Ok(())
}

/// One file: moved by rename when it can be, else copied; checked either way.
fn restore_file(
    job: &Job,
    item: &Item,
    dest: &Path,
    stop: &AtomicBool,
    counter: &ByteCounter,
    written: &Mutex<Vec<Written>>,
) -> Result<(), CopyBackError> {
    if job.mode == Mode::Move {
        // Checked before it leaves the backup: a damaged file must not replace it.
        hash_check(item, stop, counter, None)?;
        match fs::rename(&item.src, dest) {
            Ok(()) => {
                record(
                    written,
                    Written::Renamed {
                        from: item.src.clone(),
                        to: dest.to_path_buf(),
                    },
                );
                sync_file(dest)?;
                return chown_file(job, dest);
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
            Err(e) => return Err(CopyBackError::io(dest, e)),
        }
    }
    let mode = fs::metadata(&item.src)
        .map_err(|e| CopyBackError::io(&item.src, e))?
        .permissions()
        .mode()
        & 0o7777;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dest)
        .map_err(|e| CopyBackError::io(dest, e))?;
    record(written, Written::Copied(dest.to_path_buf()));
    hash_check(item, stop, counter, Some(&mut out))?;
    out.sync_all().map_err(|e| CopyBackError::io(dest, e))?;
    chown_file(job, dest)
}

fn record(written: &Mutex<Vec<Written>>, w: Written) {
    if let Ok(mut list) = written.lock() {
        list.push(w);
    }
}

/// Reads the backup file (writing it to `out` when given) and compares its size and
/// SHA-256 with the manifest.
fn hash_check(
    item: &Item,
    stop: &AtomicBool,
    counter: &ByteCounter,
    mut out: Option<&mut File>,
) -> Result<(), CopyBackError> {
    let mut src = File::open(&item.src).map_err(|e| CopyBackError::io(&item.src, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(CopyBackError::Cancelled);
        }
        let n = src
            .read(&mut buf)
            .map_err(|e| CopyBackError::io(&item.src, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        if let Some(o) = out.as_deref_mut() {
            o.write_all(&buf[..n])
                .map_err(|e| CopyBackError::io(&item.dest, e))?;
        }
        size += n as u64;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
    let sha = format!("{:x}", h.finalize());
    if size != item.size {
        return Err(CopyBackError::Damaged {
            path: item.rel.clone(),
            what: format!("{size} bytes, the manifest says {}", item.size),
        });
    }
    if sha != item.sha256 {
        return Err(CopyBackError::Damaged {
            path: item.rel.clone(),
            what: format!("SHA-256 {sha}, the manifest says {}", item.sha256),
        });
    }
    Ok(())
}

fn sync_file(path: &Path) -> Result<(), CopyBackError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| CopyBackError::io(path, e))
}

fn chown_file(job: &Job, path: &Path) -> Result<(), CopyBackError> {
    let Some(o) = job.owner else { return Ok(()) };
    chown_path(path, o.uid, o.gid).map_err(|e| CopyBackError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Directories get their entries durable: every directory a file went into, the
/// created ones and their parents.
fn sync_dirs(job: &Job, created: &[PathBuf]) -> Result<(), CopyBackError> {
    let mut dirs: BTreeSet<PathBuf> = job
        .items
        .iter()
        .filter_map(|i| i.dest.parent().map(Path::to_path_buf))
        .collect();
    for c in created {
        dirs.insert(c.clone());
        dirs.extend(c.parent().map(Path::to_path_buf));
    }
    dirs.iter().try_for_each(|d| sync_file(d))
}

/// The target directories and every created one go to the owner too.
fn chown_dirs(job: &Job, created: &[PathBuf]) -> Result<(), CopyBackError> {
    let mut dirs: BTreeSet<&Path> = job.targets.dirs().into_iter().collect();
    dirs.extend(created.iter().map(PathBuf::as_path));
    // Only directories inside a target: never an ancestor created above it.
    let targets = job.targets.dirs();
    for d in dirs {
        if targets.iter().any(|t| d.starts_with(t)) {
            chown_file(job, d)?;
        }
    }
    Ok(())
}

/// After a move: the backup's copies of cross-filesystem files go, and its manifest is
/// renamed so the directory is never taken for a complete backup again.
fn finish_move(job: &Job, written: &Mutex<Vec<Written>>) -> Result<(), CopyBackError> {
    if job.mode != Mode::Move {
        return Ok(());
    }
    let renamed: BTreeSet<PathBuf> = written
        .lock()
        .map(|w| {
            w.iter()
                .filter_map(|x| match x {
                    Written::Renamed { from, .. } => Some(from.clone()),
                    Written::Copied(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let manifest = job.from.join(MANIFEST_FILE);
    fs::rename(&manifest, job.from.join(MOVED_MANIFEST))
        .map_err(|e| CopyBackError::io(&manifest, e))?;
    for item in &job.items {
        if !renamed.contains(&item.src) {
            if let Err(e) = fs::remove_file(&item.src) {
                // The restore is complete: a left-over backup file is only noise.
                tracing::warn!(file = %item.src.display(), error = %e, "cannot remove a moved file from the backup");
            }
        }
    }
    sync_file(&job.from)
}

/// Undoes a failed restore: moved files go back, copied ones and created directories
/// are removed. Returns what is left behind.
fn undo(written: &[Written], created: &[PathBuf]) -> Vec<String> {
    let mut left = Vec::new();
    for w in written.iter().rev() {
        let r = match w {
            Written::Copied(p) => fs::remove_file(p).or_else(not_found_ok).map_err(|e| (p, e)),
            Written::Renamed { from, to } => fs::rename(to, from).map_err(|e| (to, e)),
        };
        if let Err((p, e)) = r {
            left.push(format!("{} ({e})", p.display()));
        }
    }
    for d in created.iter().rev() {
        if let Err(e) = fs::remove_dir(d) {
            left.push(format!("{}/ ({e})", d.display()));
        }
    }
    left
}

fn not_found_ok(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

fn absolute(p: &Path) -> Result<PathBuf, CopyBackError> {
    std::path::absolute(p)
        .map(|a| normalize(&a))
        .map_err(|e| CopyBackError::io(p, e))
}

/// Drops `.` and resolves `..` lexically (the paths may not exist yet).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// What `stagehand run --check` says about a restore, without writing anything.
fn preflight_findings(cfg: &CopyBackConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let from = PathBuf::from(&cfg.from);
    let manifest = match load_backup(&from) {
        Ok(m) => {
            out.push(Finding::ok(format!(
                "{}: a prepared backup of {} files, {} bytes",
                cfg.from,
                m.files.len(),
                m.data_bytes()
            )));
            m
        }
        Err(e) => return vec![Finding::error(e.to_string())],
    };
    let targets = match resolve_targets(cfg) {
        Ok(t) => t,
        Err(e) => {
            out.push(Finding::error(e.to_string()));
            return out;
        }
    };
    if let Err(e) = check_overlap(&from, &targets) {
        out.push(Finding::error(e.to_string()));
    }
    if let Err(e) = check_not_in_use(&targets) {
        out.push(Finding::error(e.to_string()));
    }
    for dir in targets.dirs() {
        out.push(target_finding(dir, cfg.force));
    }
    if let Some(o) = &cfg.owner {
        if let Err(e) = resolve_owner(o) {
            out.push(Finding::error(e.to_string()));
        }
    }
    if cfg.mode == Mode::Copy {
        if let Ok((items, _)) = plan_files(&from, &manifest, &targets) {
            if let Err(e) = check_space(&targets, &items) {
                out.push(Finding::error(e.to_string()));
            }
        }
    }
    out
}

fn target_finding(dir: &Path, force: bool) -> Finding {
    match entries(dir) {
        Err(e) => Finding::error(e.to_string()),
        Ok(found) if found.is_empty() && dir.exists() => {
            Finding::ok(format!("{} is empty", dir.display()))
        }
        Ok(found) if found.is_empty() => Finding::ok(format!("{} will be created", dir.display())),
        Ok(found) if force => Finding::warn(format!(
            "{} holds {} entries: force removes them before the restore",
            dir.display(),
            found.len()
        )),
        Ok(found) => Finding::error(format!(
            "{} is not empty ({} entries): the restore would be refused",
            dir.display(),
            found.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_my_print_defaults() {
        let m = parse_defaults(
            "--datadir=/var/lib/mysql\n--innodb-undo-directory=undo\n--skip-log-bin\n--datadir=/srv/db\n",
        );
        assert_eq!(m.get("datadir").map(String::as_str), Some("/srv/db"));
        assert_eq!(
            m.get("innodb_undo_directory").map(String::as_str),
            Some("undo")
        );
    }

    #[test]
    fn names() {
        assert!(is_undo_name("undo001") && !is_undo_name("undo01") && !is_undo_name("undo00a"));
        assert!(
            is_log_name("ib_logfile0")
                && !is_log_name("ib_logfile")
                && !is_log_name("ib_logfile0x")
        );
    }

    #[test]
    fn relative_dirs_follow_the_datadir() {
        let cfg = CopyBackConfig {
            from: "/b".into(),
            datadir: Some("/srv/data".into()),
            undo_dir: Some("../undo".into()),
            log_dir: Some("/logs".into()),
            data_home_dir: None,
            defaults_file: None,
            force: false,
            mode: Mode::Copy,
            owner: None,
            parallel: 2,
        };
        let t = resolve_targets(&cfg).ok();
        assert_eq!(
            t,
            Some(Targets {
                datadir: "/srv/data".into(),
                undo: "/srv/undo".into(),
                log: "/logs".into(),
                home: "/srv/data".into(),
            })
        );
    }
}
