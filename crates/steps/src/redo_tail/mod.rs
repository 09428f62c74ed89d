//! `redo_tail`: a background step that copies the InnoDB redo log from the checkpoint at
//! its start until the LSN that `stage_locks` records at BLOCK_COMMIT, writing the
//! backup's linear `ib_logfile0` as it goes. It keeps current (polling every few ms) so
//! only the last few KB remain when commits are blocked, and it fails loudly when the
//! server overwrote log it had not copied yet. It also keeps the ledger of tablespace
//! file operations found in the copied log (`innodb::file_ops`), kept current in
//! `.stagehand/file_ops.json` in the backup directory while it runs (its `to_lsn` says
//! how far it is).

use crate::outputs::{RedoTailOutput, StageLocksOutput};
use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use stagehand_engine::step::Finding;
use stagehand_engine::{ConfigError, Outputs, StepContext, StepError, TypedStep};
use stagehand_innodb::file_ops::FileOps;
use stagehand_innodb::redo::{
    backup_creator, parse_mtrs, tablespace_ops, BackupLogWriter, LogFileHeader, LogGeometry,
    MtrFraming, MtrInfo, START_OFFSET,
};
use stagehand_mariadb::datadir::{ServerSettings, SETTINGS_QUERY};
use stagehand_mariadb::session::{name_values, Session};
use std::fs::File;
use std::io::BufWriter;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedoTailConfig {
    /// The plan connection to the server (its settings and version are read once).
    pub connection: String,
    /// The server's datadir as this machine sees it (the log directory is resolved
    /// against it).
    pub datadir: String,
    /// The backup directory; the copied log becomes its `ib_logfile0`.
    pub to: String,
    /// Pause between reads when the log has nothing new.
    #[serde(
        default = "default_poll",
        with = "stagehand_engine::model::duration_text"
    )]
    #[schemars(with = "String")]
    pub poll: Duration,
    /// Largest read, in bytes (at least 2 MiB: one mini-transaction can be 1 MiB).
    #[serde(default = "default_read_size")]
    pub read_size: u64,
}

/// What a poll reads when the copy is caught up: the server's last few writes.
const SMALL_READ: usize = 64 << 10;

fn default_poll() -> Duration {
    Duration::from_millis(2)
}
fn default_read_size() -> u64 {
    8 << 20
}

pub struct RedoTail;

#[async_trait]
impl TypedStep for RedoTail {
    type Config = RedoTailConfig;
    const NAME: &'static str = "redo_tail";
    type Output = RedoTailOutput;
    const SUMMARY: &'static str = "Copies the InnoDB redo log continuously (background) up to the LSN recorded at BLOCK_COMMIT";
    const BACKGROUND: bool = true;

    fn check(cfg: &RedoTailConfig) -> Result<(), ConfigError> {
        if cfg.read_size < 2 << 20 {
            return Err(ConfigError {
                path: "read_size".into(),
                message: "`read_size` must be at least 2097152 (2 MiB)".into(),
                hint: None,
            });
        }
        Ok(())
    }

    fn describe(cfg: &RedoTailConfig) -> String {
        format!(
            "copies the redo log of the server at connection `{}` (datadir {}) into {}/ib_logfile0 from its current checkpoint until the LSN recorded at BLOCK_COMMIT, polling every {}",
            cfg.connection,
            cfg.datadir,
            cfg.to,
            humantime::format_duration(cfg.poll)
        )
    }

    fn connections(cfg: &RedoTailConfig) -> Vec<String> {
        vec![cfg.connection.clone()]
    }

    async fn preflight(cfg: &RedoTailConfig, ctx: &StepContext) -> Vec<Finding> {
        let session =
            match stagehand_mariadb::session::preflight_session(ctx, &cfg.connection).await {
                Ok(s) => s,
                Err(f) => return vec![f],
            };
        match redo_headroom(cfg, &session).await {
            Ok(f) => f,
            Err(e) => vec![Finding::error(e.message)],
        }
    }

    async fn run(cfg: &RedoTailConfig, ctx: &StepContext) -> Result<RedoTailOutput, StepError> {
        let session = ctx.connections.get_as::<Session>(&cfg.connection).await?;
        let settings = {
            let mut guard = session.conn.lock().await;
            let conn = guard
                .as_mut()
                .ok_or_else(|| StepError::fatal("connection closed"))?;
            ServerSettings::from_variables(&name_values(conn, SETTINGS_QUERY).await?)
                .map_err(|e| StepError::fatal(e.to_string()))?
        };
        let log_path = settings
            .resolve_dir(Path::new(&cfg.datadir), &settings.innodb_log_group_home_dir)
            .join("ib_logfile0");
        stagehand_mariadb::datadir::check_backup_source(
            &session,
            &settings,
            Path::new(&cfg.datadir),
            Path::new(&cfg.to),
        )
        .await
        .map_err(|e| e.into_step_error())?;
        stagehand_backup::manifest::claim_target(Path::new(&cfg.to), &ctx.run_id)
            .map_err(|e| e.into_step_error())?;
        let tail = Tail::open(&log_path, Path::new(&cfg.to), &settings, cfg)?;
        let shared = Arc::new(Shared::default());
        // A session of its own: the shared one holds (or waits for) the backup locks.
        let private = ctx.connections.open_private(&cfg.connection).await?;
        let watch = private
            .clone()
            .downcast::<Session>()
            .map_err(|_| StepError::fatal("connection of an unexpected kind"))?;
        poll_lsns(&watch, &shared).await?;
        let poller = tokio::spawn(lsn_poller(watch, shared.clone(), cfg.poll));
        ctx.signal_ready().await;
        let worker = {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || {
                let r = tail.run(&shared);
                shared.done.store(true, Ordering::Release);
                r
            })
        };
        tokio::pin!(worker);
        let until = ctx.wait_until();
        tokio::pin!(until);
        let mut told = false;
        loop {
            tokio::select! {
                r = &mut worker => {
                    shared.done.store(true, Ordering::Release);
                    let _ = poller.await;
                    ctx.connections.close_private(private).await;
                    return r.map_err(|e| StepError::fatal(format!("redo copier crashed: {e}")))?;
                }
                r = &mut until, if !told => {
                    told = true;
                    match r.ok().and_then(commit_lsn_of).filter(|l| *l > 0) {
                        Some(lsn) => shared.set_target(lsn),
                        None => shared.stop("the step that records the commit point did not give an LSN (it failed or was skipped)"),
                    }
                }
                _ = session.locks_lost.cancelled(), if !shared.stopping() => shared.stop(&session.locks_lost_reason()),
            }
        }
    }
}

/// Reads the server's current and durable LSNs into `shared`.
async fn poll_lsns(session: &Session, shared: &Shared) -> Result<(), StepError> {
    let v = stagehand_mariadb::session::session_values(
        session,
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('Innodb_lsn_current', 'Innodb_lsn_flushed')",
    )
    .await?;
    let get = |k: &str| v.get(k).and_then(|x| x.parse::<u64>().ok());
    match (get("innodb_lsn_flushed"), get("innodb_lsn_current")) {
        (Some(f), Some(c)) => {
            shared.current.store(c, Ordering::Release);
            shared.flushed.store(f, Ordering::Release);
            Ok(())
        }
        _ => Err(StepError::fatal(
            "the server did not report Innodb_lsn_flushed and Innodb_lsn_current",
        )),
    }
}

/// Keeps the LSNs current while the copier runs; a failure stops the copy (without the
/// durable end it cannot tell log from leftovers).
async fn lsn_poller(session: Arc<Session>, shared: Arc<Shared>, every: Duration) {
    while !shared.done.load(Ordering::Acquire) {
        tokio::time::sleep(every).await;
        if let Err(e) = poll_lsns(&session, &shared).await {
            let why = if e.retryable {
                "the server closed the connection (stopped, restarted or killed?) while the redo copy read its log position".to_string()
            } else {
                format!("cannot read the server's log position: {}", e.message)
            };
            shared.stop(&why);
            return;
        }
    }
}

/// The copy speed assumed to estimate a backup's duration in the preflight.
const ASSUMED_COPY_BYTES_PER_SEC: f64 = 300e6;
/// How long the sampling of the redo write rate lasts.
const RATE_SAMPLE: Duration = Duration::from_secs(3);

/// Preflight: is the log readable, and does its capacity leave room for this backup at
/// the server's current write rate?
async fn redo_headroom(cfg: &RedoTailConfig, session: &Session) -> Result<Vec<Finding>, StepError> {
    let settings = ServerSettings::from_variables(
        &stagehand_mariadb::session::session_values(session, SETTINGS_QUERY).await?,
    )
    .map_err(|e| StepError::fatal(e.to_string()))?;
    let log_path = settings
        .resolve_dir(Path::new(&cfg.datadir), &settings.innodb_log_group_home_dir)
        .join("ib_logfile0");
    let mut out = Vec::new();
    match stagehand_mariadb::datadir::check_backup_source(
        session,
        &settings,
        Path::new(&cfg.datadir),
        Path::new(&cfg.to),
    )
    .await
    {
        Ok(proof) => out.push(stagehand_mariadb::datadir::same_server_finding(
            &cfg.datadir,
            session,
            &proof,
        )),
        Err(e) => return Ok(vec![Finding::error(e.to_string())]),
    }
    let file = File::open(&log_path).map_err(|e| {
        StepError::fatal(format!(
            "cannot open the redo log {}: {e}",
            log_path.display()
        ))
    })?;
    read_header(&file, &log_path)?;
    let capacity = file
        .metadata()
        .map(|m| m.len())
        .unwrap_or(0)
        .saturating_sub(START_OFFSET) as f64;
    out.push(Finding::ok(format!(
        "redo log {} is readable ({:.0} MiB of circular capacity)",
        log_path.display(),
        capacity / MIB
    )));
    let lsn = |m: &std::collections::BTreeMap<String, String>, k: &str| {
        m.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
    };
    let q =
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('Innodb_lsn_current', 'Innodb_checkpoint_age')";
    let a = stagehand_mariadb::session::session_values(session, q).await?;
    tokio::time::sleep(RATE_SAMPLE).await;
    let b = stagehand_mariadb::session::session_values(session, q).await?;
    let rate =
        (lsn(&b, "innodb_lsn_current") - lsn(&a, "innodb_lsn_current")) / RATE_SAMPLE.as_secs_f64();
    let age = lsn(&b, "innodb_checkpoint_age");
    let data: f64 = stagehand_mariadb::session::session_column(session, "SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES WHERE ENGINE = 'InnoDB'")
        .await?
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let copy_secs = data / ASSUMED_COPY_BYTES_PER_SEC;
    let facts = format!(
        "the server writes {:.2} MB/s of redo; the log holds {:.0} MiB, {} of writes; the copy starts {:.1} MiB behind (checkpoint age); about {:.1} GB of InnoDB data, ~{:.0} s to copy at {:.0} MB/s",
        rate / 1e6,
        capacity / MIB,
        if rate > 0.0 { format!("{:.0} s", capacity / rate) } else { "unlimited time".into() },
        age / MIB,
        data / 1e9,
        copy_secs,
        ASSUMED_COPY_BYTES_PER_SEC / 1e6
    );
    let headroom_secs = if rate > 0.0 {
        (capacity - age).max(0.0) / rate
    } else {
        f64::INFINITY
    };
    // The tail keeps up while it runs; what can lose log is a stall of the backup host
    // (or a slow target) longer than the headroom, most likely at the start.
    out.push(if headroom_secs < 2.0 {
        Finding::error(format!("{facts}: only {headroom_secs:.1} s of headroom — a backup now would likely lose log; raise innodb_log_file_size"))
    } else if headroom_secs < 30.0 || (rate > 0.0 && copy_secs * rate > 4.0 * capacity) {
        Finding::warn(format!("{facts}: {headroom_secs:.0} s of headroom; a stall of the backup longer than that loses log — consider a larger innodb_log_file_size"))
    } else {
        Finding::ok(format!("{facts}: {} of headroom", if headroom_secs.is_finite() { format!("{headroom_secs:.0} s") } else { "unlimited".into() }))
    });
    Ok(out)
}

const MIB: f64 = 1048576.0;

/// What the async side tells the copier thread.
#[derive(Default)]
struct Shared {
    /// The server's durable log end (`Innodb_lsn_flushed`): only log below it is copied.
    /// The rest of the last log block holds stale leftovers of the server's log buffer —
    /// whole older mini-transactions with valid checksums — until it is written again.
    flushed: AtomicU64,
    /// The server's current LSN (`Innodb_lsn_current`), for the overrun arithmetic.
    current: AtomicU64,
    /// Set once the copier thread has ended, so the LSN poller stops.
    done: AtomicBool,
    /// 0 until the target LSN is known.
    target: AtomicU64,
    target_at: std::sync::Mutex<Option<Instant>>,
    stop: AtomicBool,
    stop_reason: std::sync::Mutex<String>,
}

impl Shared {
    fn set_target(&self, lsn: u64) {
        *self.target_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.target.store(lsn, Ordering::Release);
    }
    fn stop(&self, reason: &str) {
        *self.stop_reason.lock().unwrap_or_else(|p| p.into_inner()) = reason.to_string();
        self.stop.store(true, Ordering::Release);
    }
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

struct Tail {
    source: File,
    source_path: PathBuf,
    inode: u64,
    geometry: LogGeometry,
    framing: MtrFraming,
    from_lsn: u64,
    checkpoint_end_lsn: u64,
    writer: BackupLogWriter<BufWriter<File>>,
    dest_path: PathBuf,
    poll: Duration,
    read_size: u64,
    log_file_size_setting: u64,
    /// Tablespace file operations seen in the copied log.
    file_ops: FileOps,
    file_ops_path: PathBuf,
    /// The ledger as last written to `file_ops_path`.
    published: Published,
}

/// How far the ledger file is behind the copy.
struct Published {
    at: Instant,
    to_lsn: Option<u64>,
    events: usize,
}

/// While the log moves with no file change, the ledger file is rewritten this often:
/// a reader waiting for it to reach an LSN waits at most about this long.
const PUBLISH_EVERY: Duration = Duration::from_millis(20);

fn read_header(file: &File, path: &Path) -> Result<LogFileHeader, StepError> {
    let mut head = vec![0u8; START_OFFSET as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| StepError::fatal(format!("cannot read {}: {e}", path.display())))?;
    LogFileHeader::parse(&head).map_err(|e| {
        StepError::fatal(format!(
            "{}: not a MariaDB 10.8+ redo log: {e}",
            path.display()
        ))
    })
}

impl Tail {
    fn open(
        log_path: &Path,
        to: &Path,
        settings: &ServerSettings,
        cfg: &RedoTailConfig,
    ) -> Result<Self, StepError> {
        let source = File::open(log_path).map_err(|e| {
            StepError::fatal(format!("cannot open the redo log {}: {e}", log_path.display())).with_hint("`datadir` must be the server's datadir as this machine sees it, readable by this user")
        })?;
        let meta = source
            .metadata()
            .map_err(|e| StepError::fatal(e.to_string()))?;
        let header = read_header(&source, log_path)?;
        let checkpoint = header
            .latest_checkpoint()
            .map_err(|e| StepError::fatal(format!("{}: {e}", log_path.display())))?;
        let geometry = LogGeometry::new(header.header.first_lsn, meta.len())
            .map_err(|e| StepError::fatal(e.to_string()))?;
        let version = stagehand_mariadb::version::ServerVersion::parse(&settings.version)
            .ok_or_else(|| StepError::fatal("cannot read the server version"))?;
        std::fs::create_dir_all(to)
            .map_err(|e| StepError::fatal(format!("cannot create {}: {e}", to.display())))?;
        let dest_path = to.join("ib_logfile0");
        let dest = File::create(&dest_path)
            .map_err(|e| StepError::fatal(format!("cannot create {}: {e}", dest_path.display())))?;
        let server_header = header.header.is_encrypted().then_some(&header.header);
        let writer = BackupLogWriter::with_server_header(
            BufWriter::with_capacity(1 << 20, dest),
            server_header,
            checkpoint.checkpoint_lsn,
            checkpoint.end_lsn,
            &backup_creator(version.major, version.minor, version.patch),
        )
        .map_err(|e| StepError::fatal(format!("cannot write {}: {e}", dest_path.display())))?;
        tracing::info!(
            from_lsn = checkpoint.checkpoint_lsn,
            capacity = geometry.capacity(),
            "redo tail started"
        );
        Ok(Self {
            source,
            source_path: log_path.to_path_buf(),
            inode: meta.ino(),
            geometry,
            framing: header.header.framing(),
            from_lsn: checkpoint.checkpoint_lsn,
            checkpoint_end_lsn: checkpoint.end_lsn,
            writer,
            dest_path,
            poll: cfg.poll,
            read_size: cfg.read_size.min(geometry.capacity()),
            log_file_size_setting: settings.innodb_log_file_size,
            file_ops: FileOps::new(
                checkpoint.checkpoint_lsn,
                header.header.framing() == MtrFraming::Plain,
            ),
            file_ops_path: stagehand_backup::dir::BackupDir::new(to).file_ops(),
            published: Published {
                at: Instant::now(),
                to_lsn: None,
                events: 0,
            },
        })
    }

    /// The copy loop: read what is new, keep the valid mini-transactions, repeat.
    fn run(mut self, shared: &Shared) -> Result<RedoTailOutput, StepError> {
        let t0 = Instant::now();
        let mut pos = self.from_lsn;
        let mut buf = vec![0u8; self.read_size as usize];
        let mut max_lag = 0u64;
        let mut lag = 0u64;
        let mut want = SMALL_READ.min(buf.len());
        loop {
            if shared.stopping() {
                let reason = shared
                    .stop_reason
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                return Err(StepError::fatal(format!(
                    "redo copy stopped at LSN {pos}: {reason}"
                )));
            }
            let target = shared.target.load(Ordering::Acquire);
            if target > 0 && pos >= target {
                return self.finish(pos, target, max_lag, t0, shared);
            }
            let flushed = shared.flushed.load(Ordering::Acquire);
            let durable = flushed.saturating_sub(pos);
            let len = durable.min(want as u64) as usize;
            let got = if len > 0 {
                self.read_once(pos, &mut buf[..len])?
            } else {
                0
            };
            // Read bytes are valid only if the server had not lapped them meanwhile.
            self.check_not_lapped(pos, shared.current.load(Ordering::Acquire))?;
            if got == 0 && len > 0 {
                if (len as u64) < durable && len < buf.len() {
                    // One mini-transaction longer than this read: read more at once.
                    want = (want * 4).min(buf.len());
                    continue;
                }
                // Flushed log is whole mini-transactions: if it does not parse, it was
                // overwritten (give the LSN poller time to show it) or it is not the log
                // this copy expects. Never skip it silently.
                std::thread::sleep(self.poll * 3);
                self.check_not_lapped(pos, shared.current.load(Ordering::Acquire))?;
                return Err(StepError::fatal(format!(
                    "the redo log at LSN {pos} does not parse although the server has flushed it up to LSN {flushed}; the copy cannot continue"
                ))
                .with_hint("check the server's error log and the file system; run the backup again"));
            }
            pos += got;
            self.publish_file_ops()?;
            // Caught up, a poll reads a little; behind, reads grow to the buffer's size.
            want = if got as usize * 2 > want {
                (want * 4).min(buf.len())
            } else {
                SMALL_READ.min(buf.len())
            };
            if got > 0 {
                // Behind by at least what this read found; reads go on at once.
                lag += got;
                max_lag = max_lag.max(lag);
            } else {
                lag = 0;
                self.check_same_file()?;
                std::thread::sleep(self.poll);
            }
        }
    }

    /// Reads from `pos`, appends the whole mini-transactions found; returns their bytes.
    fn read_once(&mut self, pos: u64, buf: &mut [u8]) -> Result<u64, StepError> {
        let len = buf.len() as u64;
        let ranges = self
            .geometry
            .ranges(pos, len)
            .map_err(|e| StepError::fatal(e.to_string()))?;
        let mut filled = 0usize;
        for (offset, n) in ranges {
            let part = &mut buf[filled..filled + n as usize];
            let got = read_full_at(&self.source, part, offset).map_err(|e| {
                StepError::fatal(format!("reading {}: {e}", self.source_path.display()))
            })?;
            filled += got;
            if got < n as usize {
                break;
            }
        }
        let geometry = self.geometry;
        let parsed = parse_mtrs(&buf[..filled], pos, self.framing, |lsn| {
            geometry.expected_bit(lsn)
        });
        let valid = parsed.end_lsn - pos;
        if valid > 0 {
            self.writer
                .append_parsed(&buf[..filled], &parsed)
                .map_err(|e| {
                    StepError::fatal(format!("writing {}: {e}", self.dest_path.display()))
                        .with_hint("check free space in the backup directory")
                })?;
            self.note_file_ops(&buf[..filled], pos, &parsed.mtrs);
            self.file_ops.advance(parsed.end_lsn);
        }
        Ok(valid)
    }

    /// Adds the tablespace events of the mtrs the parser flagged (most mtrs carry
    /// none, so this walks only a few). `buf` holds the log from LSN `pos`.
    fn note_file_ops(&mut self, buf: &[u8], pos: u64, mtrs: &[MtrInfo]) {
        for m in mtrs.iter().filter(|m| m.has_tablespace_ops) {
            let from = (m.start_lsn - pos) as usize;
            let to = (m.seq_lsn - pos) as usize;
            for op in tablespace_ops(buf.get(from..to).unwrap_or(&[])) {
                tracing::debug!(
                    lsn = m.end_lsn,
                    ?op,
                    "tablespace file operation in the redo log"
                );
                self.file_ops.record(&op, m.end_lsn);
            }
        }
    }

    /// Keeps the ledger file current while the copy runs, so a step working under
    /// BLOCK_DDL can read the file changes up to the LSN it needs: rewritten at once after
    /// a file change, else at most every [`PUBLISH_EVERY`] while the log moves.
    fn publish_file_ops(&mut self) -> Result<(), StepError> {
        let changed = self.file_ops.events.len() != self.published.events;
        let moved = self.published.to_lsn != Some(self.file_ops.to_lsn);
        if changed || (moved && self.published.at.elapsed() >= PUBLISH_EVERY) {
            self.write_file_ops()?;
            self.published = Published {
                at: Instant::now(),
                to_lsn: Some(self.file_ops.to_lsn),
                events: self.file_ops.events.len(),
            };
        }
        Ok(())
    }

    /// Writes the ledger (tmp + rename: a reader sees no file or the whole one). Compact
    /// and not synced: this runs while commits are blocked.
    fn write_file_ops(&self) -> Result<(), StepError> {
        let path = &self.file_ops_path;
        let failed = |e: &dyn std::fmt::Display| {
            StepError::fatal(format!("cannot write {}: {e}", path.display()))
                .with_hint("check free space in the backup directory")
        };
        if let Some(dir) = path.parent() {
            stagehand_host::private_fs::create_private_dir_all(dir).map_err(|e| failed(&e))?;
        }
        let text = serde_json::to_vec(&self.file_ops.changed_only()).map_err(|e| failed(&e))?;
        let opts = stagehand_host::atomic::AtomicOptions::unsynced();
        stagehand_host::atomic::write_atomic(path, &text, opts).map_err(|e| failed(&e))
    }

    /// Nothing new parsed at `pos`: fine if the server has not written past it; an
    /// overrun if its checkpoint is already beyond (log it wrote there is gone).
    /// The server writes LSN `pos + capacity` over LSN `pos`: once its current LSN is
    /// that far ahead, what the copy has not read yet at `pos` is gone.
    fn check_not_lapped(&self, pos: u64, current: u64) -> Result<(), StepError> {
        if current > pos && current - pos >= self.geometry.capacity() {
            return Err(self.overrun_error(pos, current));
        }
        Ok(())
    }

    /// `SET GLOBAL innodb_log_file_size` replaces the file: the copy cannot follow.
    fn check_same_file(&self) -> Result<(), StepError> {
        let meta = std::fs::metadata(&self.source_path)
            .map_err(|e| StepError::fatal(format!("{}: {e}", self.source_path.display())))?;
        if meta.ino() != self.inode {
            return Err(StepError::fatal(format!(
                "{} was replaced while the backup copied it (innodb_log_file_size changed online?); the copy cannot continue",
                self.source_path.display()
            ))
            .with_hint("run the backup again once the log resize has finished"));
        }
        Ok(())
    }

    fn overrun_error(&self, pos: u64, current: u64) -> StepError {
        let cap_mib = self.geometry.capacity() as f64 / (1 << 20) as f64;
        StepError::fatal(format!(
            "the server overwrote redo log that was not copied yet: the copy reached LSN {pos}, but the server is already at LSN {current} \
             ({} bytes ahead) and its circular log holds only {:.0} MiB; this backup cannot be consistent",
            current - pos,
            cap_mib
        ))
        .with_hint(format!(
            "raise innodb_log_file_size (now {} MiB) so the log holds the writes of a whole backup, or run the backup when writes are lighter; `stagehand run --check` estimates the headroom",
            self.log_file_size_setting >> 20
        ))
    }

    fn finish(
        self,
        pos: u64,
        target: u64,
        max_lag: u64,
        t0: Instant,
        shared: &Shared,
    ) -> Result<RedoTailOutput, StepError> {
        let catch_up = shared
            .target_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed().as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        // Small and not synced (like the copy parts): `seal` syncs what it keeps.
        self.write_file_ops()?;
        let counts = self.file_ops.counts();
        let last_checkpoint = read_header(&self.source, &self.source_path)?
            .latest_checkpoint()
            .map(|c| c.checkpoint_lsn)
            .unwrap_or(self.from_lsn);
        let out = self
            .writer
            .finish()
            .map_err(|e| StepError::fatal(format!("writing {}: {e}", self.dest_path.display())))?;
        // Flushed to the OS here; `seal` syncs it with every other file, after the locks
        // are released (an fsync now would keep commits blocked longer).
        out.into_inner().map_err(|e| {
            StepError::fatal(format!(
                "writing {}: {}",
                self.dest_path.display(),
                e.error()
            ))
        })?;
        tracing::info!(
            from_lsn = self.from_lsn,
            to_lsn = pos,
            catch_up_ms = catch_up,
            spaces_changed = counts.changed_spaces,
            "redo tail finished"
        );
        let round3 = |v: f64| (v * 1000.0).round() / 1000.0;
        Ok(RedoTailOutput {
            from_lsn: self.from_lsn,
            checkpoint_end_lsn: self.checkpoint_end_lsn,
            to_lsn: pos,
            target_lsn: target,
            last_checkpoint_lsn: last_checkpoint.min(pos),
            bytes: pos - self.from_lsn,
            capacity: self.geometry.capacity(),
            max_lag_bytes: max_lag,
            final_catch_up_ms: round3(catch_up),
            seconds: round3(t0.elapsed().as_secs_f64()),
            file_ops_ledger: self.file_ops_path.display().to_string(),
            file_ops_tracked: self.file_ops.tracked,
            files_created: counts.created,
            files_deleted: counts.deleted,
            files_renamed: counts.renamed,
            page0_inits: counts.page0_inits,
            undo_trims: counts.trims,
            spaces_changed: counts.changed_spaces,
        })
    }
}

/// The commit LSN in the outputs of the step that took BLOCK_COMMIT (`stage_locks`).
fn commit_lsn_of(outputs: Outputs) -> Option<u64> {
    serde_json::from_value::<StageLocksOutput>(serde_json::Value::Object(outputs))
        .ok()
        .map(|o| o.lsn)
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
