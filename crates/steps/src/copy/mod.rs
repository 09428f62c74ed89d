//! `copy`: the native physical copier. Copies one class of a datadir's files (InnoDB
//! tablespaces, non-InnoDB table files, or Aria logs) into the backup directory, in
//! parallel with bounded memory, and records each file (size, BLAKE3 hash, pages) in a part
//! of the manifest that `seal` assembles.

use crate::outputs::CopyOutput;
use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use stagehand_backup::codec::ZstdSettings;
use stagehand_backup::dir::{BackupDir, CopyPart};
use stagehand_backup::entry::CopiedFile;
use stagehand_backup::pagecopy::{copy_file, CopyError, CopyOptions, RateLimiter};
use stagehand_backup::spool::SpoolRequest;
use stagehand_engine::step::Finding;
use stagehand_engine::{ConfigError, DirectoryUse, StepContext, StepError, TypedStep};
use stagehand_mariadb::datadir::{
    discover, FileClass, FileSet, ServerSettings, SourceFile, SETTINGS_QUERY,
};
use stagehand_mariadb::session::{name_values, Session};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyConfig {
    /// The plan connection to the server being copied: its settings (undo and system
    /// tablespace locations, page size) are read from it, and the copy stops at once if
    /// that session's backup locks are lost.
    pub connection: String,
    /// The server's datadir (as this machine sees it).
    pub from: String,
    /// The backup directory.
    pub to: String,
    /// Which files: innodb (default), non_innodb, aria, or all.
    #[serde(default = "default_files")]
    pub files: FileSet,
    /// Files copied at once.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Read rate limit for all threads together, e.g. `200MiB` (per second); empty or
    /// absent: no limit (so a plan can pass an unset param through).
    pub max_rate: Option<String>,
    /// Read size per request.
    #[serde(default = "default_chunk")]
    pub chunk: String,
    /// Re-reads of a page that fails its checksum, 100 ms apart, before giving up.
    #[serde(default = "default_rereads")]
    pub rereads: u32,
    /// When the backup streams out (an `upload` with `follow: true`): wait before
    /// starting a file while more than this much of what the step copied is still on
    /// local disk (`4GiB`; InnoDB files count as written, compressed when the upload
    /// compresses and removes what it ships). Bounds scratch space; do not set it on a
    /// copy that runs under BLOCK_COMMIT.
    pub max_spool: Option<String>,
}

fn default_files() -> FileSet {
    FileSet::Innodb
}
fn default_parallel() -> usize {
    2
}
fn default_chunk() -> String {
    "1MiB".into()
}
fn default_rereads() -> u32 {
    10
}

fn parse_size(text: &str, field: &str) -> Result<u64, ConfigError> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| ConfigError {
            path: field.into(),
            message: format!("`{text}` is not a size"),
            hint: Some("write e.g. 512KiB, 1MiB, 200MiB".into()),
        })
}

impl CopyConfig {
    fn max_rate(&self) -> Result<Option<u64>, ConfigError> {
        self.rate_text()
            .map(|r| parse_size(r, "max_rate"))
            .transpose()
    }

    fn rate_text(&self) -> Option<&str> {
        self.max_rate.as_deref().filter(|r| !r.trim().is_empty())
    }
}

pub struct Copy;

#[async_trait]
impl TypedStep for Copy {
    type Config = CopyConfig;
    const NAME: &'static str = "copy";
    type Output = CopyOutput;
    const SUMMARY: &'static str = "Copies a live datadir's files into the backup directory (InnoDB page by page with checksums)";

    fn check(cfg: &CopyConfig) -> Result<(), ConfigError> {
        if cfg.parallel == 0 || cfg.parallel > 64 {
            return Err(ConfigError {
                path: "parallel".into(),
                message: "`parallel` must be between 1 and 64".into(),
                hint: None,
            });
        }
        let chunk = parse_size(&cfg.chunk, "chunk")?;
        if !(65536..=64 << 20).contains(&chunk) {
            return Err(ConfigError {
                path: "chunk".into(),
                message: "`chunk` must be between 64KiB and 64MiB".into(),
                hint: None,
            });
        }
        cfg.max_rate()?;
        if let Some(spool) = &cfg.max_spool {
            parse_size(spool, "max_spool")?;
        }
        Ok(())
    }

    fn describe(cfg: &CopyConfig) -> String {
        let rate = cfg
            .rate_text()
            .map(|r| format!(", at most {r}/s"))
            .unwrap_or_default();
        format!(
            "copies {} from {} to {} with {} thread(s){rate}",
            cfg.files.describe(),
            cfg.from,
            cfg.to,
            cfg.parallel
        )
    }

    fn connections(cfg: &CopyConfig) -> Vec<String> {
        vec![cfg.connection.clone()]
    }

    fn directories(cfg: &CopyConfig) -> Vec<DirectoryUse> {
        vec![DirectoryUse::Announces(cfg.to.clone())]
    }

    async fn preflight(cfg: &CopyConfig, ctx: &StepContext) -> Vec<Finding> {
        let session =
            match stagehand_mariadb::session::preflight_session(ctx, &cfg.connection).await {
                Ok(s) => s,
                Err(f) => return vec![f],
            };
        let settings = match read_settings(&session).await {
            Ok(s) => s,
            Err(e) => return vec![Finding::error(e.message)],
        };
        let (from, to) = (PathBuf::from(&cfg.from), PathBuf::from(&cfg.to));
        let mut out = Vec::new();
        match stagehand_mariadb::datadir::check_backup_source(&session, &settings, &from, &to).await
        {
            Ok(proof) => out.push(stagehand_mariadb::datadir::same_server_finding(
                &cfg.from, &session, &proof,
            )),
            Err(e) => return vec![Finding::error(e.to_string())],
        }
        let files = match discover(&from, &settings) {
            Ok(f) => f
                .into_iter()
                .filter(|f| cfg.files.includes(f.class))
                .collect::<Vec<_>>(),
            Err(e) => return vec![Finding::error(e.to_string())],
        };
        let unreadable: Vec<&str> = files
            .iter()
            .filter(|f| std::fs::File::open(&f.abs).is_err())
            .map(|f| f.rel.as_str())
            .take(5)
            .collect();
        if !unreadable.is_empty() {
            out.push(Finding::error(format!(
                "cannot read {} under {} (run as the mysql user or root)",
                unreadable.join(", "),
                from.display()
            )));
        }
        if cfg.files == FileSet::Innodb
            && !files.iter().any(|f| f.class == FileClass::SystemTablespace)
        {
            out.push(Finding::error(format!("{} holds no InnoDB system tablespace: is it the server's datadir (the server says {})?", from.display(), settings.datadir)));
        }
        if to.join(stagehand_backup::manifest::MANIFEST_FILE).exists() {
            out.push(Finding::error(format!(
                "{} already holds a complete backup",
                to.display()
            )));
        }
        let need: u64 = files
            .iter()
            .filter_map(|f| std::fs::metadata(&f.abs).ok())
            .map(|m| m.len())
            .sum();
        let probe = to
            .ancestors()
            .find(|p| p.exists())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        match fs4::available_space(&probe) {
            Ok(free) if free < need => out.push(Finding::error(format!(
                "{}: {:.2} GB free, the copy of {} needs {:.2} GB",
                probe.display(),
                free as f64 / 1e9,
                cfg.files.describe(),
                need as f64 / 1e9
            ))),
            Ok(free) => out.push(Finding::ok(format!(
                "{}: {:.2} GB free for {:.2} GB of {}",
                probe.display(),
                free as f64 / 1e9,
                need as f64 / 1e9,
                cfg.files.describe()
            ))),
            Err(e) => out.push(Finding::warn(format!(
                "cannot tell the free space of {}: {e}",
                probe.display()
            ))),
        }
        out
    }

    async fn run(cfg: &CopyConfig, ctx: &StepContext) -> Result<CopyOutput, StepError> {
        let session = ctx.connections.get_as::<Session>(&cfg.connection).await?;
        let settings = read_settings(&session).await?;
        let from = PathBuf::from(&cfg.from);
        let to = PathBuf::from(&cfg.to);
        stagehand_mariadb::datadir::check_backup_source(&session, &settings, &from, &to)
            .await
            .map_err(|e| e.into_step_error())?;
        stagehand_backup::manifest::claim_target(&to, &ctx.run_id)
            .map_err(|e| e.into_step_error())?;
        if to.join(stagehand_backup::manifest::MANIFEST_FILE).exists() {
            return Err(StepError::fatal(format!(
                "{} already holds a complete backup; refusing to overwrite it",
                to.display()
            ))
            .with_hint("give each backup its own target directory"));
        }
        let files = files_to_copy(cfg.files, &from, &to, &settings)?;
        if cfg.files == FileSet::Innodb
            && !files.iter().any(|f| f.class == FileClass::SystemTablespace)
        {
            return Err(StepError::fatal(format!(
                "no InnoDB system tablespace ({}) under {}",
                settings.system_files().join(", "),
                from.display()
            ))
            .with_hint("`from` must be the server's datadir as this machine sees it"));
        }
        std::fs::create_dir_all(BackupDir::new(&to).parts())
            .map_err(|e| StepError::fatal(format!("cannot create {}: {e}", to.display())))?;
        let started_at = chrono_now();
        let t0 = Instant::now();
        let (files, mut kept) = if cfg.files == FileSet::Aria {
            split_unchanged(files, &to)?
        } else {
            (files, Vec::new())
        };
        // The LSN range tells `reconcile` whose file a tablespace copied before its page
        // 0 was written is. Not read for Aria: that copy runs while commits wait.
        let innodb = matches!(cfg.files, FileSet::Innodb | FileSet::All);
        let lsn_start = innodb_lsn_if(innodb, &session).await?;
        let mut copied = copy_all(cfg, files, &to, &settings, ctx, &session).await?;
        let lsn_end = innodb_lsn_if(innodb, &session).await?;
        let reused = kept.len();
        copied.append(&mut kept);
        copied.sort_by(|a, b| a.path.cmp(&b.path));
        let seconds = t0.elapsed().as_secs_f64();
        tracing::info!(step = %ctx.step_id, copied = copied.len() - reused, unchanged = reused, seconds, "copy finished");
        let part = CopyPart {
            step: ctx.step_id.clone(),
            files_set: cfg.files,
            settings,
            started_at,
            seconds,
            finished_ns: stagehand_backup::entry::now_ns(),
            files: copied,
            lsn_range: lsn_start.zip(lsn_end),
            ddl: None,
            removed: Vec::new(),
        };
        let part_path = BackupDir::new(&to).write_part(&part)?;
        Ok(summary(&part, &part_path))
    }
}

/// Aria data files an earlier copy step of this backup took and that have not changed
/// since: kept as they are, so the copy under BLOCK_COMMIT is short.
/// The files of a set. The Aria pass runs under BLOCK_COMMIT, where every millisecond
/// blocks commits: no DDL can have happened since BLOCK_DDL, so it reuses the first
/// pass's list of Aria tables and lists only the Aria log directory.
fn files_to_copy(
    set: FileSet,
    from: &Path,
    to: &Path,
    settings: &ServerSettings,
) -> Result<Vec<SourceFile>, StepError> {
    if set == FileSet::Aria {
        let earlier: Vec<SourceFile> = earlier_files(to)?
            .into_values()
            .filter(|f| f.class == FileClass::AriaData)
            .map(|f| SourceFile {
                abs: from.join(&f.path),
                rel: f.path,
                class: FileClass::AriaData,
                remote: None,
            })
            .collect();
        if !earlier.is_empty() {
            let mut files = stagehand_mariadb::datadir::aria_logs(from, settings)
                .map_err(|e| StepError::fatal(e.to_string()))?;
            files.extend(earlier);
            return Ok(files);
        }
    }
    Ok(discover(from, settings)
        .map_err(|e| StepError::fatal(e.to_string()))?
        .into_iter()
        .filter(|f| set.includes(f.class))
        .collect())
}

/// What earlier copy steps of this backup recorded, by path (without the files a
/// reconcile removed).
fn earlier_files(to: &Path) -> Result<std::collections::BTreeMap<String, CopiedFile>, StepError> {
    Ok(stagehand_backup::dir::merged_files(
        &BackupDir::new(to).read_parts()?,
    ))
}

fn split_unchanged(
    files: Vec<SourceFile>,
    to: &Path,
) -> Result<(Vec<SourceFile>, Vec<CopiedFile>), StepError> {
    let earlier = earlier_files(to)?;
    let mut todo = Vec::new();
    let mut kept = Vec::new();
    for f in files {
        let prior = earlier
            .get(&f.rel)
            .filter(|_| f.class == FileClass::AriaData);
        let unchanged = match (prior.and_then(|p| p.source), std::fs::metadata(&f.abs)) {
            (Some(stamp), Ok(meta)) => stamp.still_matches(&meta),
            _ => false,
        };
        match (unchanged, prior) {
            (true, Some(p)) => kept.push(p.clone()),
            _ => todo.push(f),
        }
    }
    Ok((todo, kept))
}

fn chrono_now() -> String {
    // RFC 3339 without pulling chrono into this crate: the engine formats run times.
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

async fn innodb_lsn_if(wanted: bool, session: &Session) -> Result<Option<u64>, StepError> {
    if !wanted {
        return Ok(None);
    }
    stagehand_mariadb::session::session_innodb_lsn(session)
        .await
        .map(Some)
}

async fn read_settings(session: &Session) -> Result<ServerSettings, StepError> {
    let mut guard = session.conn.lock().await;
    let conn = guard
        .as_mut()
        .ok_or_else(|| StepError::fatal(format!("connection `{}` is closed", session.name)))?;
    let vars = name_values(conn, SETTINGS_QUERY).await?;
    ServerSettings::from_variables(&vars).map_err(|e| StepError::fatal(e.to_string()))
}

/// Runs `parallel` blocking workers over the files, largest first.
async fn copy_all(
    cfg: &CopyConfig,
    mut files: Vec<SourceFile>,
    to: &Path,
    settings: &ServerSettings,
    ctx: &StepContext,
    session: &Session,
) -> Result<Vec<CopiedFile>, StepError> {
    let system_format = system_format(&files);
    // One size per file, read once: files grow while they are listed (the server keeps
    // writing MyISAM and Aria tables), and a sort whose keys change under it may panic
    // ("comparison function does not correctly implement a total order").
    files.sort_by_cached_key(|f| {
        std::cmp::Reverse(std::fs::metadata(&f.abs).map(|m| m.len()).unwrap_or(0))
    });
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(&f.abs).ok())
        .map(|m| m.len())
        .sum();
    let progress = stagehand_host::progress::Progress::start(&ctx.step_id, "copied", total);
    let cancel = Arc::new(AtomicBool::new(false));
    let hand_off = Arc::new(HandOff::new(cfg, to, &ctx.step_id)?);
    let opts = Arc::new(CopyOptions {
        chunk_bytes: parse_size(&cfg.chunk, "chunk").map_err(|e| StepError::fatal(e.message))?
            as usize,
        rereads: cfg.rereads,
        reread_delay: Duration::from_millis(100),
        cancel: cancel.clone(),
        limiter: cfg
            .max_rate()
            .map_err(|e| StepError::fatal(e.message))?
            .map(|r| Arc::new(RateLimiter::new(r))),
        system_format,
        progress: progress.counter(),
        compress: hand_off.compress(),
    });
    let _ = settings;
    let queue = Arc::new(Mutex::new(VecDeque::from(files)));
    let mut workers = Vec::new();
    for _ in 0..files_at_once(cfg.parallel, opts.compress.is_some()) {
        let (queue, opts, to, hand_off) = (
            queue.clone(),
            opts.clone(),
            to.to_path_buf(),
            hand_off.clone(),
        );
        workers.push(tokio::task::spawn_blocking(move || {
            worker(&queue, &to, &opts, &hand_off)
        }));
    }
    let all = async {
        let r = futures_join(workers).await;
        drop(progress);
        r
    };
    tokio::pin!(all);
    let result = tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => { cancel.store(true, Ordering::Relaxed); let _ = all.await; return Err(StepError::cancelled()); }
        _ = session.locks_lost.cancelled() => {
            cancel.store(true, Ordering::Relaxed);
            let _ = all.await;
            return Err(StepError::fatal(format!("copy stopped: {}", session.locks_lost_reason())));
        }
        r = &mut all => r,
    };
    let mut copied = Vec::new();
    let mut errors = Vec::new();
    for r in result {
        match r {
            Ok(files) => copied.extend(files),
            Err(e) => errors.push(e),
        }
    }
    // A worker stopped because another one failed reports "cancelled": the real cause
    // is the other error.
    errors.sort_by_key(|e| e.message == "cancelled");
    if let Some(first) = errors.into_iter().next() {
        return Err(first);
    }
    copied.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(copied)
}

/// Files copied at once: the step's `parallel`, but no more than the machine's cores
/// while the copy compresses. More zstd compressors than cores only contend for the
/// caches: on 2 cores, 4 at once took 34 % more CPU and 28 % more time than 2 at a time
/// for the same four tablespaces.
fn files_at_once(parallel: usize, compressing: bool) -> usize {
    if !compressing {
        return parallel;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    parallel.min(cores).max(1)
}

async fn futures_join(
    workers: Vec<tokio::task::JoinHandle<Result<Vec<CopiedFile>, StepError>>>,
) -> Vec<Result<Vec<CopiedFile>, StepError>> {
    let mut out = Vec::new();
    for w in workers {
        out.push(
            w.await
                .unwrap_or_else(|e| Err(StepError::fatal(format!("copy worker crashed: {e}")))),
        );
    }
    out
}

/// How a copy hands finished files on: announced in the directory's ledger for a
/// following upload, and held back by the spool limit if one is set.
struct HandOff {
    step: String,
    /// What the upload following this directory asks (it marks it when it starts): only
    /// then are files announced and held back by the spool limit.
    streaming: Option<SpoolRequest>,
    gate: Option<stagehand_backup::spool::SpoolGate>,
}

impl HandOff {
    fn new(cfg: &CopyConfig, to: &Path, step: &str) -> Result<Self, StepError> {
        let streaming = stagehand_backup::spool::streaming_request(to);
        let gate = match (&cfg.max_spool, streaming.is_some()) {
            (Some(limit), true) => Some(stagehand_backup::spool::SpoolGate::new(
                to,
                parse_size(limit, "max_spool").map_err(|e| StepError::fatal(e.message))?,
            )),
            // Nothing would ever drain the spool: waiting would hold the locks forever.
            (Some(_), false) => {
                tracing::warn!(
                    step,
                    "max_spool is ignored: no upload follows {}",
                    to.display()
                );
                None
            }
            (None, _) => None,
        };
        Ok(HandOff {
            step: step.to_string(),
            streaming,
            gate,
        })
    }

    fn wait_for_room(&self, file: &SourceFile, cancel: &AtomicBool) -> bool {
        let Some(gate) = &self.gate else { return true };
        let size = std::fs::metadata(&file.abs).map(|m| m.len()).unwrap_or(0);
        gate.wait_for_room(size, cancel)
    }

    /// How InnoDB files are written: compressed when the upload that follows compresses
    /// and deletes what it ships (it then sends them as they are).
    fn compress(&self) -> Option<ZstdSettings> {
        self.streaming.and_then(|r| r.compress)
    }

    fn finished(&self, to: &Path, rec: &CopiedFile) -> Result<(), StepError> {
        if self.streaming.is_none() {
            return Ok(());
        }
        stagehand_backup::spool::announce(to, &self.step, rec)
            .map_err(|e| StepError::fatal(format!("cannot record {} as copied: {e}", rec.path)))?;
        if let Some(gate) = &self.gate {
            let on_disk = rec.stored.as_ref().map_or(rec.size, |s| s.size);
            gate.add(rec.local_path(), on_disk);
        }
        Ok(())
    }
}

fn worker(
    queue: &Mutex<VecDeque<SourceFile>>,
    to: &Path,
    opts: &CopyOptions,
    hand_off: &HandOff,
) -> Result<Vec<CopiedFile>, StepError> {
    let mut done = Vec::new();
    let mut scratch = Vec::with_capacity(opts.chunk_bytes);
    loop {
        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        let Some(file) = next else { return Ok(done) };
        if !hand_off.wait_for_room(&file, &opts.cancel) {
            return Err(StepError::cancelled());
        }
        match copy_file(&file, to, opts, &mut scratch) {
            Ok(rec) => {
                hand_off.finished(to, &rec)?;
                done.push(rec)
            }
            // Dropped or renamed before we opened it: DDL under START (a reconcile
            // pass sees where it went), or a table dropped before the copy's locks (the
            // redo log records the removal of a tablespace).
            Err(CopyError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && may_vanish(file.class) =>
            {
                tracing::warn!(file = %file.rel, "vanished before it was copied");
            }
            Err(e) => {
                // Stop the other workers too: the step has failed.
                opts.cancel.store(true, Ordering::Relaxed);
                let err = match &e {
                    CopyError::CorruptPage { .. } => StepError::fatal(e.to_string()).with_hint("run CHECK TABLE on that table on the server; a backup of a corrupt page is not a backup"),
                    CopyError::Cancelled => StepError::cancelled(),
                    CopyError::Io { .. } => StepError::fatal(e.to_string()).with_hint("check free space and permissions of the backup directory"),
                };
                return Err(err);
            }
        }
    }
}

/// Table files DDL can remove; the system tablespace, undo tablespaces and Aria logs
/// are never removed while the server runs.
fn may_vanish(class: FileClass) -> bool {
    matches!(
        class,
        FileClass::Tablespace | FileClass::NonInnodb | FileClass::AriaData
    )
}

/// The system tablespace format from page 0 of ibdata1, for ibdata2….
fn system_format(files: &[SourceFile]) -> Option<stagehand_innodb::page::SpaceFormat> {
    let first = files
        .iter()
        .find(|f| f.class == FileClass::SystemTablespace)?;
    let mut head = vec![0u8; 65536];
    let file = std::fs::File::open(&first.abs).ok()?;
    let n = std::os::unix::fs::FileExt::read_at(&file, &mut head, 0).ok()?;
    stagehand_innodb::page::SpaceFormat::from_page0(&head[..n]).ok()
}

fn summary(part: &CopyPart, part_path: &Path) -> CopyOutput {
    let bytes: u64 = part.files.iter().map(|f| f.size).sum();
    let sum = |f: fn(&CopiedFile) -> u64| part.files.iter().map(f).sum::<u64>();
    let mbps = if part.seconds > 0.0 {
        bytes as f64 / 1e6 / part.seconds
    } else {
        0.0
    };
    CopyOutput {
        files: part.files.len() as u64,
        bytes,
        pages: sum(|f| f.pages),
        reread_pages: sum(|f| f.reread_pages),
        unverified_pages: sum(|f| f.unverified_pages),
        seconds: (part.seconds * 1000.0).round() / 1000.0,
        mb_per_s: (mbps * 10.0).round() / 10.0,
        part: part_path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(max_rate: &str) -> Result<CopyConfig, ConfigError> {
        let with = json!({"connection": "source", "from": "/var/lib/mysql", "to": "/backups/x", "max_rate": max_rate});
        let cfg: CopyConfig = stagehand_engine::step::deserialize_config(&with)?;
        Copy::check(&cfg)?;
        Ok(cfg)
    }

    #[test]
    fn a_compressing_copy_runs_no_more_files_at_once_than_there_are_cores() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(
            files_at_once(64, false),
            64,
            "a plain copy keeps its parallel"
        );
        assert_eq!(files_at_once(64, true), cores.min(64));
        assert_eq!(files_at_once(1, true), 1);
    }

    #[test]
    fn an_empty_max_rate_means_no_limit_and_a_bad_one_is_refused() {
        let unlimited = build("").expect("empty: no limit");
        assert_eq!(unlimited.max_rate().expect("rate"), None);
        assert!(!Copy::describe(&unlimited).contains("at most"));
        let limited = build("200MiB").expect("a rate");
        assert_eq!(limited.max_rate().expect("rate"), Some(200 << 20));
        assert!(Copy::describe(&limited).ends_with(", at most 200MiB/s"));
        let bad = build("fast").expect_err("not a size");
        assert_eq!(bad.path, "max_rate");
    }
}
