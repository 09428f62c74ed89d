//! `copy_back`: restores a prepared backup directory into a server's directories, as
//! `mariadb-backup --copy-back`/`--move-back` do: undo tablespaces to the undo
//! directory, the redo log to the log directory, the system tablespace to the data home
//! directory, everything else under the datadir with its relative path. The backup's
//! own files (the manifest, `.stagehand/`, `backup-my.cnf`, the `xtrabackup_*` or
//! `mariadb_backup_*` metadata, as mariadb-backup skips them) are not restored; the
//! binlog position and GTID of the backup become outputs instead.
//!
//! Every file is checked against the manifest (size and hash) as it is copied, and
//! fsynced, as are the directories. Files are written in place, in an order that never
//! leaves a startable half-restore: the system tablespace first, the redo log last
//! (under a temporary name, renamed once everything else is durable) — InnoDB 10.8+
//! refuses to start on a system tablespace without `ib_logfile0`. On a failure or a
//! cancel, what this step wrote is removed again (files moved by `mode: move` are moved
//! back) and the error says so; anything it could not remove is listed.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use stagehand_backup::entry::CopiedFile;
use stagehand_backup::manifest::{Manifest, ManifestError, MANIFEST_FILE};
use stagehand_engine::step::Finding;
use stagehand_engine::{ConfigError, StepContext, StepError, TypedStep};
use stagehand_host::digest::{algorithm_of, ContentHasher};
use stagehand_host::progress::Progress;
use stagehand_mariadb::defaults::read_server_options;
use stagehand_mariadb::sandbox::accounts::{chown_path, is_root, lookup_group, lookup_user};
use stagehand_repo::ByteCounter;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

mod placement;
mod restore;
mod targets;

use placement::*;
use restore::*;
use targets::*;

/// Read and write size of a copy.
const CHUNK: usize = 1 << 20;
/// How many files of a non-empty directory an error names.
const SHOWN_FILES: usize = 5;
/// Where the redo log is written before it gets its name (the last rename).
const LOG_TMP_SUFFIX: &str = ".stagehand-partial";
pub use stagehand_backup::manifest::MOVED_MANIFEST_FILE as MOVED_MANIFEST;

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
    /// Where the tablespaces of DATA DIRECTORY tables go. Default: back where their
    /// `.isl` says (refused if a file is there: never overwritten). A map of path
    /// prefixes, `{"/srv/fast": "/mnt/new-fast"}`, moves them (the restored `.isl` says
    /// the new path); `datadir` restores them as ordinary tables (`db/t.ibd`, no `.isl`).
    pub data_directories: Option<DataDirectories>,
}

/// Where DATA DIRECTORY tables are restored (see `data_directories`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum DataDirectories {
    /// `datadir`: as ordinary tables in the datadir.
    Datadir(IntoDatadir),
    /// Old path prefix → new path prefix (the longest matching prefix wins).
    Map(BTreeMap<String, String>),
}

/// The word `datadir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IntoDatadir {
    Datadir,
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
    #[error("{path} exists: the tablespace of DATA DIRECTORY table {table} would overwrite it (copy_back never does)")]
    RemoteExists { path: String, table: String },
    #[error("DATA DIRECTORY table {table}: `{path}` is not an absolute path")]
    RemotePath { path: String, table: String },
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
            CopyBackError::RemoteExists { .. } => "restore DATA DIRECTORY tables elsewhere with `data_directories: {\"/old/dir\": \"/new/dir\"}`, or into the datadir with `data_directories: datadir`".into(),
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
    /// As the manifest records it (`stagehand_host::digest`).
    hash: String,
    /// The redo log (restored last).
    log: bool,
    /// The system tablespace (restored first).
    system: bool,
    /// Written with this content instead of the backup's (an `.isl` pointing at the
    /// new place of a DATA DIRECTORY table).
    text: Option<String>,
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

/// What `copy_back` publishes.
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct CopyBackOutput {
    /// files restored
    pub files: u64,
    /// bytes restored
    pub bytes: u64,
    /// wall time
    pub seconds: f64,
    /// the datadir restored into (as resolved)
    pub datadir: String,
    /// the backup's GTID position: SET GLOBAL gtid_slave_pos to it on a new replica
    pub gtid_binlog_pos: String,
    /// the source's binlog file at the backup's commit point
    pub binlog_file: String,
    /// the position in that file
    pub binlog_position: u64,
}

pub struct CopyBack;

#[async_trait]
impl TypedStep for CopyBack {
    type Config = CopyBackConfig;
    type Output = CopyBackOutput;
    const NAME: &'static str = "copy_back";
    const SUMMARY: &'static str = "Restores a prepared backup into a server's datadir (and undo/log/data home directories), verifying every file";

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
            ", {} at once, checking sizes and hashes against the manifest; ",
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
        match &cfg.data_directories {
            None => {}
            Some(DataDirectories::Datadir(_)) => s.push_str(
                "; DATA DIRECTORY tables become ordinary tables in the datadir (no .isl)",
            ),
            Some(DataDirectories::Map(map)) => {
                let pairs: Vec<String> = map.iter().map(|(a, b)| format!("{a} → {b}")).collect();
                s.push_str(&format!(
                    "; DATA DIRECTORY tables move: {} (their .isl rewritten)",
                    pairs.join(", ")
                ));
            }
        }
        s
    }

    async fn preflight(cfg: &CopyBackConfig, _ctx: &StepContext) -> Vec<Finding> {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || preflight_findings(&cfg))
            .await
            .unwrap_or_else(|e| vec![Finding::error(e.to_string())])
    }

    async fn run(cfg: &CopyBackConfig, ctx: &StepContext) -> Result<CopyBackOutput, StepError> {
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
        Ok(CopyBackOutput {
            files: files as u64,
            bytes: total,
            seconds: (seconds * 1000.0).round() / 1000.0,
            datadir,
            gtid_binlog_pos: manifest.binlog.gtid_binlog_pos,
            binlog_file: manifest.binlog.file,
            binlog_position: manifest.binlog.position,
        })
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
    let (items, skipped) = plan_files(&from, &manifest, &targets, cfg.data_directories.as_ref())?;
    check_remote_free(&items, &targets, &from)?;
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
    match plan_files(&from, &manifest, &targets, cfg.data_directories.as_ref()) {
        Ok((items, _)) => {
            if let Err(e) = check_remote_free(&items, &targets, &from) {
                out.push(Finding::error(e.to_string()));
            }
            if cfg.mode == Mode::Copy {
                if let Err(e) = check_space(&targets, &items) {
                    out.push(Finding::error(e.to_string()));
                }
            }
        }
        Err(e) => out.push(Finding::error(e.to_string())),
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
    use stagehand_mariadb::datadir::{is_redo_log_name, is_undo_name};

    #[test]
    fn names() {
        assert!(is_undo_name("undo001") && !is_undo_name("undo01") && !is_undo_name("undo00a"));
        assert!(
            is_redo_log_name("ib_logfile0")
                && !is_redo_log_name("ib_logfile")
                && !is_redo_log_name("ib_logfile0x")
        );
    }

    #[test]
    fn data_directories_map_by_the_longest_prefix_or_come_into_the_datadir() {
        let map: DataDirectories =
            serde_yaml::from_str("{/srv/fast: /mnt/new, /srv/fast/d2: /mnt/other}").expect("map");
        let DataDirectories::Map(m) = &map else {
            panic!("{map:?}")
        };
        assert_eq!(
            placement::mapped(Path::new("/srv/fast/d/t.ibd"), m).ok(),
            Some(PathBuf::from("/mnt/new/d/t.ibd"))
        );
        assert_eq!(
            placement::mapped(Path::new("/srv/fast/d2/t.ibd"), m).ok(),
            Some(PathBuf::from("/mnt/other/t.ibd"))
        );
        // Whole components only; unmapped paths stay.
        assert_eq!(
            placement::mapped(Path::new("/srv/faster/d/t.ibd"), m).ok(),
            Some(PathBuf::from("/srv/faster/d/t.ibd"))
        );
        let into: DataDirectories = serde_yaml::from_str("datadir").expect("datadir");
        assert_eq!(into, DataDirectories::Datadir(IntoDatadir::Datadir));
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
            data_directories: None,
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
