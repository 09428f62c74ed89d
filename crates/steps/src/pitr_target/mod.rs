//! `pitr_target`: the first step of a point-in-time restore. From a repository's
//! backups and binlog archive it picks the newest complete backup a target can be
//! reached from, and the exact GTID position to replay up to; it refuses (before
//! anything is fetched or written) a target the archive cannot reach: not archived
//! yet, before every backup, or behind a gap.
//!
//! A time target T means: every transaction in binlog order before the first one whose
//! time (the GTID event's timestamp, whole seconds, UTC) is later than T. Transaction
//! times are not in commit order, so this is a prefix of the binlog, not a filter.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stagehand_engine::step::Finding;
use stagehand_engine::{ConfigError, StepContext, StepError, TypedStep};
use stagehand_mariadb::binlog::chain::{self, ChainError};
use stagehand_mariadb::gtid::GtidPos;
use stagehand_repo::binlogs::{BinlogArchive, Listing, SegmentMeta};
use stagehand_repo::checks::check_repo;
use stagehand_repo::{RepoConfig, StoreError};
use std::time::{Duration, UNIX_EPOCH};

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PitrTargetConfig {
    /// The repository holding the backups and the binlog archive.
    pub repository: RepoConfig,
    /// How far to restore: a UTC time (`2026-12-07T10:15:00Z`: every transaction
    /// before the first later one), a GTID (`0-1-2500`, one per domain: up to and
    /// including it), or `latest` (the newest archived transaction).
    pub target: String,
}

/// What `pitr_target` publishes.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct PitrTargetOutput {
    /// the backup to restore
    pub backup_id: String,
    /// the backup's GTID position (replay starts after it)
    pub backup_gtid: String,
    /// the GTID position to replay up to, inclusive
    pub target_gtid: String,
    /// the server's GTID position once the replay is done (the backup's, moved on by the target)
    pub expected_gtid: String,
    /// archived segments the replay reads
    pub segments: u64,
    /// time (UTC) of the first transaction left out (time targets), empty otherwise
    pub next_transaction_time: String,
    /// the choice in one sentence
    pub summary: String,
}

pub struct PitrTarget;

/// A target as asked for.
enum Target {
    Time(u64),
    Gtid(GtidPos),
    Latest,
}

#[async_trait]
impl TypedStep for PitrTarget {
    type Config = PitrTargetConfig;
    type Output = PitrTargetOutput;
    const NAME: &'static str = "pitr_target";
    const SUMMARY: &'static str = "Picks the backup and the binlog position a point-in-time restore needs, and refuses a target the archive cannot reach";

    fn check(cfg: &PitrTargetConfig) -> Result<(), ConfigError> {
        if settled(&cfg.repository.url) {
            check_repo(&cfg.repository)?;
        }
        if settled(&cfg.target) {
            target_of(cfg)?;
        }
        Ok(())
    }

    fn describe(cfg: &PitrTargetConfig) -> String {
        let target = match target_of(cfg) {
            Ok(Target::Time(_)) => format!(
                "time {} (every transaction before the first later one)",
                cfg.target.trim()
            ),
            Ok(Target::Latest) => "the newest archived transaction".to_string(),
            _ => format!("GTID {} (inclusive)", cfg.target.trim()),
        };
        format!(
            "picks, in {}, the newest complete backup that the binlog archive can roll forward to {target}, and the segments to replay; refuses before anything is written when the target is not archived yet, is before every backup or lies behind a gap (`stagehand run --check` shows the choice)",
            cfg.repository.describe()
        )
    }

    async fn preflight(cfg: &PitrTargetConfig, _ctx: &StepContext) -> Vec<Finding> {
        match resolve(cfg).await {
            Ok(out) => vec![Finding::ok(out.summary)],
            Err(e) => vec![Finding::error(e.message)],
        }
    }

    async fn run(cfg: &PitrTargetConfig, ctx: &StepContext) -> Result<PitrTargetOutput, StepError> {
        let out = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return Err(StepError::fatal("cancelled")),
            r = resolve(cfg) => r?,
        };
        tracing::info!(step = %ctx.step_id, "{}", out.summary);
        Ok(out)
    }
}

async fn resolve(cfg: &PitrTargetConfig) -> Result<PitrTargetOutput, StepError> {
    let target = target_of(cfg).map_err(|e| StepError::fatal(e.message))?;
    let (repo, archive, listing) = BinlogArchive::open_listed(&cfg.repository)
        .await
        .map_err(StoreError::into_step_error)?;
    let last = listing.last().ok_or_else(|| {
        StepError::fatal(format!("{} has no archived binlog", repo.url()))
            .with_hint("run a binlog_archive step (plans/binlog-archive.yaml) on the server; point-in-time restores need its archive")
    })?;
    let (to, next_time) = match target {
        Target::Latest => (parse(&last.end_state)?, None),
        Target::Gtid(g) => (g, None),
        Target::Time(t) => {
            let key = cfg
                .repository
                .fetch_key()
                .map_err(StoreError::into_step_error)?;
            position_at(&archive, &listing, t, key.as_ref()).await?
        }
    };
    let backups = repo.backups().await.map_err(StoreError::into_step_error)?;
    let mut refusal = None;
    for b in backups.iter().rev() {
        let Some(m) = &b.manifest else { continue };
        let Ok(from) = m.binlog.gtid_binlog_pos.parse::<GtidPos>() else {
            continue;
        };
        if from.is_empty() {
            continue;
        }
        match chain::select(
            &listing.segments,
            |s| &s.start_state,
            |s| &s.end_state,
            &from,
            &to,
        ) {
            Ok(range) => {
                let expected = chain::merged(&from, &to);
                let summary = format!(
                    "backup {} (GTID {from}), then {} archived segment(s){} up to GTID {to}{}",
                    b.id,
                    range.len(),
                    segment_span(&listing.segments[range.clone()]),
                    next_time
                        .map(|t| format!(
                            "; the next transaction, left out, is from {}",
                            rfc3339(t)
                        ))
                        .unwrap_or_default()
                );
                return Ok(PitrTargetOutput {
                    backup_id: b.id.clone(),
                    backup_gtid: from.to_string(),
                    target_gtid: to.to_string(),
                    expected_gtid: expected.to_string(),
                    segments: range.len() as u64,
                    next_transaction_time: next_time.map(rfc3339).unwrap_or_default(),
                    summary,
                });
            }
            Err(ChainError::TargetBeforeStart { .. }) => {}
            Err(e) => {
                refusal.get_or_insert((b.id.clone(), e));
            }
        }
    }
    Err(match refusal {
        Some((id, e)) => StepError::fatal(format!("cannot reach GTID {to} from backup {id}: {e}"))
            .with_hint("`stagehand binlogs list` shows what the archive holds; nothing was restored"),
        None => StepError::fatal(format!(
            "no complete backup in {} is at or before GTID {to}",
            repo.url()
        ))
        .with_hint("`stagehand backups list` shows the backups and their GTID positions; nothing was restored"),
    })
}

/// Where time `t` falls in the archive: the position before the first later
/// transaction, and that transaction's time.
async fn position_at(
    archive: &BinlogArchive,
    listing: &Listing,
    t: u64,
    key: Option<&stagehand_repo::crypt::Key>,
) -> Result<(GtidPos, Option<u64>), StepError> {
    let Some(seg) = listing.segments.iter().find(|s| s.max_time > t) else {
        // Nothing archived is later than t: the target is the archive's end, if the
        // archiver vouched (a heartbeat) that nothing was missing at or after t.
        let beat = archive
            .heartbeat()
            .await
            .map_err(StoreError::into_step_error)?;
        let complete = BinlogArchive::complete_until(listing, beat.as_ref()).unwrap_or_default();
        let end = listing
            .last()
            .map(|s| s.end_state.clone())
            .unwrap_or_default();
        if complete >= t {
            return Ok((parse(&end)?, None));
        }
        return Err(StepError::fatal(format!(
            "the archive is known complete only up to {} (GTID {end}): it cannot tell whether transactions up to {} exist that are not archived yet",
            rfc3339(complete),
            rfc3339(t)
        ))
        .with_hint("is the archiver running (`stagehand binlogs check`)? Restore to `latest` (the newest archived transaction), or wait until the archive has caught up past the target"));
    };
    let bytes = archive
        .read(seg, key)
        .await
        .map_err(StoreError::into_step_error)?;
    let start = parse(&seg.start_state)?;
    match chain::position_at_time(&bytes, &start, t) {
        Ok(Some((pos, next))) => Ok((pos, Some(next))),
        Ok(None) => Err(StepError::fatal(format!(
            "segment {} says a transaction is later than {} but none is: its metadata does not match it",
            seg.seq,
            rfc3339(t)
        ))),
        Err(e) => Err(StepError::fatal(format!("segment {}: {e}", seg.seq))),
    }
}

fn segment_span(segs: &[SegmentMeta]) -> String {
    match (segs.first(), segs.last()) {
        (Some(a), Some(b)) if a.seq == b.seq => format!(" (#{})", a.seq),
        (Some(a), Some(b)) => format!(" (#{}–#{})", a.seq, b.seq),
        _ => String::new(),
    }
}

/// The target: `latest`, a time (it has a `:`), or a GTID position.
fn target_of(cfg: &PitrTargetConfig) -> Result<Target, ConfigError> {
    let text = cfg.target.trim();
    let err = |message: String| ConfigError {
        path: "target".into(),
        message,
        hint: Some("a UTC time (2026-12-07T10:15:00Z), a GTID (0-1-2500) or latest".into()),
    };
    if text == "latest" {
        return Ok(Target::Latest);
    }
    if text.contains(':') {
        return humantime::parse_rfc3339_weak(text)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| Target::Time(d.as_secs()))
            .ok_or_else(|| {
                err(format!(
                    "`{text}` is not a UTC time like 2026-12-07T10:15:00Z"
                ))
            });
    }
    match text.parse::<GtidPos>() {
        Ok(pos) if !pos.is_empty() => Ok(Target::Gtid(pos)),
        Ok(_) => Err(err("no target given".into())),
        Err(e) => Err(err(e.to_string())),
    }
}

fn parse(text: &str) -> Result<GtidPos, StepError> {
    text.parse()
        .map_err(|e: stagehand_mariadb::gtid::GtidParseError| StepError::fatal(e.to_string()))
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Whether a templated value is real (validation renders samples and placeholders).
fn settled(text: &str) -> bool {
    !text.trim().is_empty() && !text.contains('<')
}
