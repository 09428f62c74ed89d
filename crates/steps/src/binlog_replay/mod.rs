//! `binlog_replay`: rolls a restored server forward with archived binlog segments,
//! from the backup's GTID position (exclusive) to a target position (inclusive), then
//! proves it got exactly there. The segments are read back from the repository
//! (decrypted, decompressed, checked against their hashes) into `workdir`, and
//! applied with `mariadb-binlog --start-position=FROM --stop-position=TO … | mariadb`.
//!
//! Before the replay the server's binlog state is set to the backup's position and
//! GTID strict mode is turned on, so the replayed transactions keep their GTIDs and a
//! duplicate or out-of-order one fails instead of being applied twice. The server must
//! therefore run with `log-bin` and must not have logged a transaction yet (a freshly
//! restored server). Afterwards `@@gtid_binlog_pos` must equal the backup's position
//! moved on by the target, and `gtid_slave_pos` is set to it, so the server can be made
//! a replica that continues from the target.

mod pipe;
mod sql_thread;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stagehand_engine::step::Finding;
use stagehand_engine::{ConfigError, StepContext, StepError, TypedStep};
use stagehand_mariadb::binlog::chain;
use stagehand_mariadb::gtid::GtidPos;
use stagehand_mariadb::session::{classify, Session};
use stagehand_repo::binlogs::{BinlogArchive, SegmentMeta};
use stagehand_repo::checks::{check_repo, probe_repository};
use stagehand_repo::{RepoConfig, StoreError};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BinlogReplayConfig {
    /// The plan connection to the restored server (its user needs SUPER or BINLOG
    /// REPLAY, and the privileges of what is replayed).
    pub connection: String,
    /// The repository holding the binlog archive.
    pub repository: RepoConfig,
    /// Replay the transactions after this GTID position (the backup's).
    pub from_gtid: String,
    /// …up to and including this one.
    pub to_gtid: String,
    /// Where the segments are written before they are applied (created private; the
    /// segment files are deleted afterwards). Not used by `sql_thread`, which writes
    /// relay logs beside the server's.
    pub workdir: String,
    /// `sql_thread` (default): the server's replication SQL thread applies the segments
    /// as relay logs, with `workers` parallel workers (the server's id must not be the
    /// source's). `pipe`: `mariadb-binlog | mariadb`, one session.
    #[serde(default)]
    pub method: Method,
    /// Parallel workers of the SQL thread (0: the thread applies alone).
    #[serde(default = "default_workers")]
    pub workers: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    #[default]
    SqlThread,
    Pipe,
}

fn default_workers() -> u32 {
    4
}

/// What `binlog_replay` publishes.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct BinlogReplayOutput {
    /// segments applied
    pub segments: u64,
    /// bytes of binlog read (the segments' sizes)
    pub bytes: u64,
    /// transactions replayed
    pub transactions: u64,
    /// the server's GTID position after the replay (checked equal to the expected one)
    pub reached_gtid: String,
    /// seconds the replay itself took (mariadb-binlog | mariadb)
    pub replay_seconds: f64,
}

pub struct BinlogReplay;

#[async_trait]
impl TypedStep for BinlogReplay {
    type Config = BinlogReplayConfig;
    type Output = BinlogReplayOutput;
    const NAME: &'static str = "binlog_replay";
    const SUMMARY: &'static str = "Replays archived binlog segments into a restored server up to a GTID, and checks it got exactly there";

    fn check(cfg: &BinlogReplayConfig) -> Result<(), ConfigError> {
        if settled(&cfg.repository.url) {
            check_repo(&cfg.repository)?;
        }
        if cfg.workers > 256 {
            return Err(ConfigError {
                path: "workers".into(),
                message: "at most 256 (slave_parallel_threads' limit is 16383; more than the cores buys nothing)".into(),
                hint: None,
            });
        }
        for (field, text) in [("from_gtid", &cfg.from_gtid), ("to_gtid", &cfg.to_gtid)] {
            if settled(text) {
                text.parse::<GtidPos>().map_err(|e| ConfigError {
                    path: field.into(),
                    message: e.to_string(),
                    hint: None,
                })?;
            }
        }
        Ok(())
    }

    fn describe(cfg: &BinlogReplayConfig) -> String {
        let how = match cfg.method {
            Method::SqlThread => format!(
                "through the server's replication SQL thread ({} parallel workers), as relay logs holding exactly those transactions",
                cfg.workers
            ),
            Method::Pipe => format!(
                "with mariadb-binlog | mariadb in GTID strict mode, the segments written to {}",
                cfg.workdir
            ),
        };
        format!(
            "replays the binlog archived in {} into the server of connection `{}`: the transactions after GTID {} up to and including {}, {how}, every segment checked against its hash first; then checks that the server's GTID position is exactly the target and sets gtid_slave_pos to it",
            cfg.repository.describe(),
            cfg.connection,
            cfg.from_gtid,
            cfg.to_gtid,
        )
    }

    fn connections(cfg: &BinlogReplayConfig) -> Vec<String> {
        vec![cfg.connection.clone()]
    }

    async fn preflight(cfg: &BinlogReplayConfig, _ctx: &StepContext) -> Vec<Finding> {
        let mut findings = vec![probe_repository(&cfg.repository).await];
        for tool in ["mariadb-binlog", "mariadb"] {
            if stagehand_mariadb::sandbox::binaries::find_binary(tool).is_none() {
                findings.push(Finding::error(missing_tool(tool)));
            }
        }
        findings
    }

    async fn run(
        cfg: &BinlogReplayConfig,
        ctx: &StepContext,
    ) -> Result<BinlogReplayOutput, StepError> {
        let from = position(&cfg.from_gtid, "from_gtid")?;
        let to = position(&cfg.to_gtid, "to_gtid")?;
        let expected = chain::merged(&from, &to);
        let key = cfg
            .repository
            .fetch_key()
            .map_err(StoreError::into_step_error)?;
        let (repo, archive, listing) = BinlogArchive::open_listed(&cfg.repository)
            .await
            .map_err(StoreError::into_step_error)?;
        let range = chain::select(
            &listing.segments,
            |s| &s.start_state,
            |s| &s.end_state,
            &from,
            &to,
        )
        .map_err(|e| {
            StepError::fatal(format!("{}: {e}", repo.url()))
                .with_hint("`stagehand binlogs list` shows what the archive holds")
        })?;
        let segments = &listing.segments[range];
        let session = ctx.connections.get_as::<Session>(&cfg.connection).await?;
        fresh_server(&session).await?;
        let (transactions, replay_seconds) = match cfg.method {
            Method::Pipe => {
                set_binlog_state(&session, &from).await?;
                let workdir = PathBuf::from(&cfg.workdir);
                let files = write_segments(&archive, segments, key.as_ref(), &workdir).await?;
                let transactions = count_transactions(&files, &from, &to)?;
                let t0 = Instant::now();
                let replayed =
                    pipe::replay(&session, &workdir, &files, &from, &to, &ctx.cancel).await;
                for f in &files {
                    let _ = std::fs::remove_file(f);
                }
                replayed?;
                (transactions, t0.elapsed().as_secs_f64())
            }
            Method::SqlThread => {
                let replay = sql_thread::Replay {
                    archive: &archive,
                    segments,
                    key: key.as_ref(),
                    from: &from,
                    to: &to,
                    expected: &expected,
                    workers: cfg.workers,
                };
                let (n, took) = sql_thread::replay(&session, &replay, &ctx.cancel).await?;
                // The thread moved gtid_slave_pos; the binlog state follows, so both
                // methods leave the server alike.
                set_binlog_state(&session, &expected).await?;
                (n, took.as_secs_f64())
            }
        };
        let reached = finish(&session, &expected).await?;
        tracing::info!(step = %ctx.step_id, %reached, transactions, replay_seconds, "binlog replayed");
        Ok(BinlogReplayOutput {
            segments: segments.len() as u64,
            bytes: segments.iter().map(|s| s.size).sum(),
            transactions,
            reached_gtid: reached.to_string(),
            replay_seconds,
        })
    }
}

/// Checks that the server logs and has logged nothing yet (a freshly restored
/// server), then turns on GTID strict mode.
async fn fresh_server(session: &Session) -> Result<(), StepError> {
    let mut guard = session.conn.lock().await;
    let conn = guard
        .as_mut()
        .ok_or_else(|| StepError::fatal("the session is closed"))?;
    let (log_bin, binlog_pos): (u8, String) = conn
        .query_first("SELECT @@log_bin, @@gtid_binlog_pos")
        .await
        .map_err(|e| classify(&e))?
        .unwrap_or_default();
    if log_bin != 1 {
        return Err(StepError::fatal(
            "the restored server runs without log-bin: the replayed transactions would keep no GTID, so the end position could not be checked",
        )
        .with_hint("start it with `log-bin` (the server step's options, as plans/restore-pitr.yaml does)"));
    }
    if !binlog_pos.trim().is_empty() {
        return Err(StepError::fatal(format!(
            "the server has logged transactions already (gtid_binlog_pos {binlog_pos}): binlog_replay only rolls a freshly restored server forward"
        ))
        .with_hint("restore the backup again (the restore steps before this one) and replay into that server"));
    }
    conn.query_drop("SET GLOBAL gtid_strict_mode = 1")
        .await
        .map_err(|e| classify(&e))?;
    Ok(())
}

/// Makes `pos` the server's binlog state (its binlog emptied first: it holds nothing
/// but what an earlier step of this restore logged).
async fn set_binlog_state(session: &Session, pos: &GtidPos) -> Result<(), StepError> {
    let mut guard = session.conn.lock().await;
    let conn = guard
        .as_mut()
        .ok_or_else(|| StepError::fatal("the session is closed"))?;
    for sql in [
        "RESET MASTER".to_string(),
        format!("SET GLOBAL gtid_binlog_state = '{pos}'"),
    ] {
        conn.query_drop(&sql).await.map_err(|e| classify(&e))?;
    }
    Ok(())
}

/// Checks the server reached `expected` exactly, and makes that its replica position.
async fn finish(session: &Session, expected: &GtidPos) -> Result<GtidPos, StepError> {
    let mut guard = session.conn.lock().await;
    let conn = guard
        .as_mut()
        .ok_or_else(|| StepError::fatal("the session is closed"))?;
    let text: String = conn
        .query_first("SELECT @@gtid_binlog_pos")
        .await
        .map_err(|e| classify(&e))?
        .unwrap_or_default();
    let reached = position(&text, "@@gtid_binlog_pos")?;
    if &reached != expected {
        return Err(StepError::fatal(format!(
            "the replay ended at GTID position {reached}, not at {expected}: the restored server is not at the target"
        ))
        .with_hint("the server's error log and the replay's messages above say why; restore again before using this server"));
    }
    conn.query_drop(format!("SET GLOBAL gtid_slave_pos = '{reached}'"))
        .await
        .map_err(|e| classify(&e))?;
    Ok(reached)
}

/// Reads the segments back from the repository, checked, into files under `workdir`.
async fn write_segments(
    archive: &BinlogArchive,
    segments: &[SegmentMeta],
    key: Option<&stagehand_repo::crypt::Key>,
    workdir: &Path,
) -> Result<Vec<PathBuf>, StepError> {
    stagehand_host::private_fs::create_private_dir_all(workdir)
        .map_err(|e| StepError::fatal(format!("{}: {e}", workdir.display())))?;
    let mut files = Vec::new();
    for s in segments {
        let bytes = archive
            .read(s, key)
            .await
            .map_err(StoreError::into_step_error)?;
        let path = workdir.join(format!("{:010}.binlog", s.seq));
        stagehand_host::private_fs::write_private(&path, &bytes)
            .map_err(|e| StepError::fatal(format!("{}: {e}", path.display())))?;
        files.push(path);
    }
    Ok(files)
}

/// Transactions in the files after `from` up to `to`.
fn count_transactions(files: &[PathBuf], from: &GtidPos, to: &GtidPos) -> Result<u64, StepError> {
    let mut n = 0;
    for f in files {
        let bytes =
            std::fs::read(f).map_err(|e| StepError::fatal(format!("{}: {e}", f.display())))?;
        let events = stagehand_mariadb::binlog::format::read_events(&bytes)
            .map_err(|e| StepError::fatal(format!("{}: {e}", f.display())))?;
        for ev in events {
            if let Ok(Some(g)) = ev.gtid() {
                let wanted = to.get(g.gtid.domain).is_some_and(|t| g.gtid.seq <= t.seq);
                if !from.contains(&g.gtid) && wanted {
                    n += 1;
                }
            }
        }
    }
    Ok(n)
}

fn position(text: &str, what: &str) -> Result<GtidPos, StepError> {
    text.parse()
        .map_err(|e: stagehand_mariadb::gtid::GtidParseError| {
            StepError::fatal(format!("{what}: {e}"))
        })
}

fn missing_tool(tool: &str) -> String {
    format!(
        "`{tool}` was not found (PATH, $STAGEHAND_MARIADB_BIN, /usr/bin): install the MariaDB client (apt-get install mariadb-client)"
    )
}

/// Whether a templated value is real (validation renders samples and placeholders).
fn settled(text: &str) -> bool {
    !text.trim().is_empty() && !text.contains('<')
}
