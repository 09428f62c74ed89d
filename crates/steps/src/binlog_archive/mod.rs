//! `binlog_archive`: copies the server's binary log into a repository, as a replica
//! reads it, so a restore can roll a backup forward to any later transaction. Each
//! segment (`stagehand_mariadb::binlog::segment`) holds whole transactions and is
//! uploaded, compressed (and encrypted when the repository encrypts), with metadata
//! that chains it to the one before (`stagehand_repo::binlogs`). A run resumes after
//! the last segment in the repository, so a crash or restart leaves no gap and no
//! duplicate; the server refuses (error 1236) when it no longer has what comes next,
//! and the step fails saying so.
//!
//! `mode: catch_up` archives up to the binlog's current end and stops (the end of a
//! nightly backup plan); `mode: follow` keeps archiving until the run is stopped (a
//! service plan, or `background: true`), reconnecting after connection loss and server
//! restarts.

mod archiver;

use archiver::{Archiver, Limits};
use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stagehand_engine::step::Finding;
use stagehand_engine::{ConfigError, StepContext, StepError, TypedStep};
use stagehand_mariadb::gtid::GtidPos;
use stagehand_repo::binlogs::BinlogArchive;
use stagehand_repo::checks::{check_repo, probe_key, probe_repository_for_writing};
use stagehand_repo::{RepoConfig, Repository, StoreError};
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Archive up to the binlog's end as it is when the step starts, then stop.
    #[default]
    CatchUp,
    /// Keep archiving new transactions until the run is stopped.
    Follow,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BinlogArchiveConfig {
    /// The plan connection to the server whose binlog is archived. The step opens a
    /// session of its own (the account needs REPLICATION SLAVE).
    pub connection: String,
    /// Where the segments go (under `binlogs/`, beside the backups).
    pub repository: RepoConfig,
    /// The replica id the archiver presents to the server: unique among the server's
    /// replicas and other archivers (a second dump with the same id ends the first).
    pub server_id: u32,
    /// `catch_up` (default) or `follow`.
    #[serde(default)]
    pub mode: Mode,
    /// Where an empty archive starts: `backup` (default: the GTID position of the
    /// newest complete backup in the repository), `oldest` (the oldest binlog the server
    /// still has) or a GTID position (`0-1-250`). Ignored once the archive has segments:
    /// it then continues after the last one.
    #[serde(default = "default_start")]
    pub start: String,
    /// A segment is closed and uploaded when it holds this many bytes…
    #[serde(default = "default_max_bytes")]
    pub segment_max_bytes: String,
    /// …or when it has been open this long: the repository trails the server by at
    /// most this (plus an upload) while transactions come in.
    #[serde(
        default = "default_max_age",
        with = "stagehand_engine::model::duration_text"
    )]
    #[schemars(with = "String")]
    pub segment_max_age: Duration,
    /// Accept transactions whose sequence number skips ahead in their domain (the
    /// server's binlog itself has the hole, e.g. after `SET gtid_seq_no`). Off: such a
    /// hole fails the step, since a restore could not tell it from lost transactions.
    #[serde(default)]
    pub allow_seq_jumps: bool,
}

fn default_start() -> String {
    "backup".into()
}

fn default_max_bytes() -> String {
    "64MiB".into()
}

fn default_max_age() -> Duration {
    Duration::from_secs(30)
}

/// What `binlog_archive` publishes.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct BinlogArchiveOutput {
    /// segments this run uploaded
    pub segments: u64,
    /// transactions this run archived
    pub transactions: u64,
    /// bytes of binlog this run archived (before compression)
    pub bytes: u64,
    /// bytes this run stored in the repository
    pub stored_bytes: u64,
    /// the archive's GTID position when the run started
    pub start_state: String,
    /// the archive's GTID position now (the last uploaded segment's end)
    pub end_state: String,
    /// event time (UTC) of the last archived transaction; empty when none
    pub last_event_time: String,
    /// transactions whose sequence number skipped ahead (holes the server's binlog has)
    pub seq_jumps: u64,
}

pub struct BinlogArchiveKind;

#[async_trait]
impl TypedStep for BinlogArchiveKind {
    type Config = BinlogArchiveConfig;
    type Output = BinlogArchiveOutput;
    const NAME: &'static str = "binlog_archive";
    const SUMMARY: &'static str = "Archives the server's binary log into a repository (as a replica reads it), for point-in-time restores";
    const BACKGROUND: bool = true;

    fn check(cfg: &BinlogArchiveConfig) -> Result<(), ConfigError> {
        if settled(&cfg.repository.url) {
            check_repo(&cfg.repository)?;
        }
        if cfg.server_id == 0 {
            return Err(config_error(
                "server_id",
                "must not be 0 (the server does not serve replicas with id 0)",
            ));
        }
        max_bytes(cfg)?;
        if cfg.segment_max_age.is_zero() {
            return Err(config_error("segment_max_age", "must be more than 0s"));
        }
        if settled(&cfg.start) {
            start_of(&cfg.start)?;
        }
        Ok(())
    }

    fn describe(cfg: &BinlogArchiveConfig) -> String {
        let until = match cfg.mode {
            Mode::CatchUp => "up to its current end, then stops",
            Mode::Follow => "and keeps following it until the run is stopped",
        };
        let start = match cfg.start.as_str() {
            "backup" => "the newest backup's GTID position".to_string(),
            "oldest" => "the oldest binlog the server has".to_string(),
            other => format!("GTID position {other}"),
        };
        format!(
            "archives the binlog of connection `{}` (as replica id {}) into {}/binlogs, {until}; continues after the last archived segment (an empty archive starts at {start}); segments of whole transactions, closed at {} or {}, zstd-compressed{}",
            cfg.connection,
            cfg.server_id,
            cfg.repository.describe(),
            cfg.segment_max_bytes,
            humantime::format_duration(cfg.segment_max_age),
            if cfg.repository.encrypts() { " and encrypted" } else { "" }
        )
    }

    fn connections(cfg: &BinlogArchiveConfig) -> Vec<String> {
        vec![cfg.connection.clone()]
    }

    async fn preflight(cfg: &BinlogArchiveConfig, ctx: &StepContext) -> Vec<Finding> {
        let mut findings = vec![probe_repository_for_writing(&cfg.repository).await];
        findings.extend(probe_key(&cfg.repository, true));
        match stagehand_mariadb::session::preflight_session(ctx, &cfg.connection).await {
            Ok(session) => findings.push(server_finding(cfg, &session).await),
            Err(f) => findings.push(f),
        }
        findings
    }

    async fn run(
        cfg: &BinlogArchiveConfig,
        ctx: &StepContext,
    ) -> Result<BinlogArchiveOutput, StepError> {
        let key = cfg
            .repository
            .upload_key()
            .map_err(StoreError::into_step_error)?;
        let (repo, archive, listing) = BinlogArchive::open_listed(&cfg.repository)
            .await
            .map_err(StoreError::into_step_error)?;
        archive
            .delete_orphans(&listing)
            .await
            .map_err(StoreError::into_step_error)?;
        let start = match listing.last() {
            Some(last) => last.end_state.parse().map_err(|e| {
                StepError::fatal(format!(
                    "{}: segment {}'s end position: {e}",
                    repo.url(),
                    last.seq
                ))
            })?,
            None => empty_archive_start(cfg, &repo).await?,
        };
        let next_seq = listing.last().map_or(1, |m| m.seq + 1);
        let limits = Limits {
            max_bytes: max_bytes(cfg).map_err(|e| StepError::fatal(e.message))?,
            max_age: cfg.segment_max_age,
            allow_seq_jumps: cfg.allow_seq_jumps,
        };
        tracing::info!(step = %ctx.step_id, from = %start, next_segment = next_seq, "archiving the binlog");
        Archiver::new(
            &archive,
            key.map(std::sync::Arc::new),
            limits,
            start,
            next_seq,
        )
        .run(cfg, ctx)
        .await
    }
}

/// Whether the server can be archived as configured: it writes a binlog, its own
/// server id is not the archiver's, and the user may read the binlog as a replica.
async fn server_finding(
    cfg: &BinlogArchiveConfig,
    session: &stagehand_mariadb::session::Session,
) -> Finding {
    use stagehand_mariadb::session::{session_privileges, session_values};
    let values = match session_values(
        session,
        "SELECT 'log_bin', @@log_bin UNION ALL SELECT 'server_id', @@server_id",
    )
    .await
    {
        Ok(v) => v,
        Err(e) => {
            return Finding::error(format!("cannot read the server's settings: {}", e.message))
        }
    };
    if values.get("log_bin").map(String::as_str) != Some("1") {
        return Finding::error(
            "the server writes no binlog (log_bin is OFF): there is nothing to archive; start it with log-bin",
        );
    }
    if values.get("server_id") == Some(&cfg.server_id.to_string()) {
        return Finding::error(format!(
            "server_id {} is the server's own id: give the archiver an id no server or replica uses",
            cfg.server_id
        ));
    }
    match session_privileges(session).await {
        Ok(p) if p.has("REPLICATION SLAVE") || p.has("REPLICATION REPLICA") => Finding::ok(format!(
            "the server writes a binlog and `{}` may read it as a replica (id {})",
            cfg.connection, cfg.server_id
        )),
        Ok(_) => Finding::error(format!(
            "the user of connection `{}` lacks REPLICATION SLAVE: GRANT REPLICATION SLAVE ON *.* TO …",
            cfg.connection
        )),
        Err(e) => Finding::error(format!("cannot read the user's grants (SHOW GRANTS): {}", e.message)),
    }
}

/// Where an archive with no segment starts.
async fn empty_archive_start(
    cfg: &BinlogArchiveConfig,
    repo: &Repository,
) -> Result<GtidPos, StepError> {
    if cfg.start != "backup" {
        return start_of(&cfg.start).map_err(|e| StepError::fatal(e.message));
    }
    let backups = repo.backups().await.map_err(StoreError::into_step_error)?;
    let newest = backups.iter().rev().find_map(|b| {
        b.manifest
            .as_ref()
            .map(|m| (b.id.clone(), m.binlog.gtid_binlog_pos.clone()))
    });
    let Some((id, pos)) = newest else {
        return Err(StepError::fatal(format!(
            "the archive in {} is empty and there is no complete backup to start it from",
            repo.url()
        ))
        .with_hint("take a full backup first (point-in-time restores start from one), or set `start: oldest` or a GTID position"));
    };
    if pos.trim().is_empty() {
        return Err(StepError::fatal(format!(
            "backup {id} has no GTID position (was the binlog off when it was taken?): the archive cannot start from it"
        ))
        .with_hint("turn on log_bin and take a new backup, or set `start: oldest`"));
    }
    pos.parse()
        .map_err(|e: stagehand_mariadb::gtid::GtidParseError| {
            StepError::fatal(format!("backup {id}: {e}"))
        })
}

/// `start:` as a position (`oldest` is the empty one).
fn start_of(text: &str) -> Result<GtidPos, ConfigError> {
    match text.trim() {
        "oldest" => Ok(GtidPos::default()),
        "backup" => Ok(GtidPos::default()),
        t => t
            .parse()
            .map_err(|e: stagehand_mariadb::gtid::GtidParseError| {
                config_error("start", &e.to_string())
            }),
    }
}

fn max_bytes(cfg: &BinlogArchiveConfig) -> Result<u64, ConfigError> {
    let n = cfg
        .segment_max_bytes
        .parse::<bytesize::ByteSize>()
        .map_err(|_| config_error("segment_max_bytes", "is not a size (e.g. 64MiB)"))?
        .as_u64();
    if n < 4096 {
        return Err(config_error("segment_max_bytes", "must be at least 4KiB"));
    }
    Ok(n)
}

fn config_error(path: &str, message: &str) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
        hint: None,
    }
}

/// Whether a templated value is real (validation renders samples and placeholders).
fn settled(text: &str) -> bool {
    !text.trim().is_empty() && !text.contains('<')
}
