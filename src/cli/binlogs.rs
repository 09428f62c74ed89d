//! `stagehand binlogs list REPO`: the binlog archive of a repository — its segments,
//! the GTID and time range each covers, and where the chain of positions breaks.

use super::backups::{fail, RepoArgs};
use super::{EXIT_FAILED, EXIT_OK};
use clap::Subcommand;
use serde_json::json;
use stagehand_engine::metrics::{label, write_atomic};
use stagehand_mariadb::binlog::chain;
use stagehand_mariadb::gtid::GtidPos;
use stagehand_repo::binlogs::{BinlogArchive, Heartbeat, Listing, SegmentMeta};
use stagehand_repo::{RepoConfig, Repository};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Subcommand, Debug)]
pub enum BinlogsCommand {
    /// List the archived binlog segments, oldest first, and any gap between them (exit
    /// 1 when there is one).
    List {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        json: bool,
    },
    /// The dead-man check of the archiver: exit 1 when the archive is known complete
    /// only up to longer ago than --max-lag (the archiver stopped or fell behind), has a
    /// gap, or is empty. Run it every minute from cron or a timer, with --metrics-file
    /// for Prometheus' textfile collector.
    Check {
        #[command(flatten)]
        repo: RepoArgs,
        /// The lag that is still fine, e.g. 5m (a follow archiver closes a segment
        /// every 30 s and reports an idle server every 10 s).
        #[arg(long, value_parser = humantime::parse_duration)]
        max_lag: Duration,
        #[arg(long)]
        json: bool,
        /// Write the archive's gauges here (Prometheus text format, atomically).
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
    },
}

pub fn dispatch(command: BinlogsCommand) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        match command {
            BinlogsCommand::List { repo, json } => list(&repo.config(), json).await,
            BinlogsCommand::Check {
                repo,
                max_lag,
                json,
                metrics_file,
            } => check(&repo.config(), max_lag, json, metrics_file).await,
        }
    })
}

/// What an archive holds, as read once.
pub(super) struct Archive {
    url: String,
    listing: Listing,
    heartbeat: Option<Heartbeat>,
}

impl Archive {
    async fn read(cfg: &RepoConfig) -> Result<Archive, String> {
        let repo = Repository::open(cfg).await.map_err(|e| e.message)?;
        Self::read_from(&repo).await
    }

    pub(super) async fn read_from(repo: &Repository) -> Result<Archive, String> {
        let archive = BinlogArchive::new(repo.store().clone());
        let listing = archive.list().await.map_err(|e| e.message)?;
        let heartbeat = archive.heartbeat().await.map_err(|e| e.message)?;
        Ok(Archive {
            url: repo.url().to_string(),
            listing,
            heartbeat,
        })
    }

    fn complete_until(&self) -> Option<u64> {
        BinlogArchive::complete_until(&self.listing, self.heartbeat.as_ref())
    }

    /// How far the archive rolls a backup at GTID position `from` forward.
    pub(super) fn reach(&self, from: &str) -> Reach {
        let Some(last) = self.listing.last() else {
            return Reach::NotArchived("no binlog archive".into());
        };
        let Ok(from) = from.parse::<GtidPos>() else {
            return Reach::NotArchived("no GTID position".into());
        };
        if from.is_empty() {
            return Reach::NotArchived("no GTID position".into());
        }
        let Ok(end) = last.end_state.parse::<GtidPos>() else {
            return Reach::NotArchived("unreadable archive".into());
        };
        let until = self.complete_until().map(time).unwrap_or_default();
        match chain::select(
            &self.listing.segments,
            |s| &s.start_state,
            |s| &s.end_state,
            &from,
            &end,
        ) {
            Ok(_) => Reach::Until {
                time: until,
                gtid: chain::merged(&from, &end).to_string(),
            },
            Err(e) => Reach::NotArchived(e.to_string()),
        }
    }
}

/// How far a backup can be rolled forward.
pub(super) enum Reach {
    /// Up to this time and GTID position (the archive's end).
    Until { time: String, gtid: String },
    /// Not at all, and why.
    NotArchived(String),
}

impl Reach {
    pub(super) fn to_json(&self) -> serde_json::Value {
        match self {
            Reach::Until { time, gtid } => json!({"until": time, "gtid": gtid}),
            Reach::NotArchived(why) => json!({"until": null, "why_not": why}),
        }
    }

    pub(super) fn shown(&self) -> String {
        match self {
            Reach::Until { time, .. } => time.clone(),
            Reach::NotArchived(_) => "-".into(),
        }
    }
}

async fn list(cfg: &RepoConfig, as_json: bool) -> anyhow::Result<i32> {
    let archive = match Archive::read(cfg).await {
        Ok(a) => a,
        Err(e) => return Ok(fail(&e)),
    };
    let gaps = archive.listing.gaps();
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&listing_json(&archive))?);
    } else {
        print_table(&archive);
    }
    Ok(if gaps.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

fn listing_json(archive: &Archive) -> serde_json::Value {
    let listing = &archive.listing;
    let first = listing.segments.first();
    let last = listing.last();
    json!({
        "segments": listing.segments,
        "gaps": listing.gaps(),
        "interrupted_uploads": listing.orphans,
        "start_state": first.map(|m| m.start_state.clone()),
        "end_state": last.map(|m| m.end_state.clone()),
        "last_time": last.map(|m| time(m.last_time)),
        "complete_until": archive.complete_until().map(time),
    })
}

async fn check(
    cfg: &RepoConfig,
    max_lag: Duration,
    as_json: bool,
    metrics_file: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let archive = match Archive::read(cfg).await {
        Ok(a) => a,
        Err(e) => return Ok(fail(&e)),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let complete = archive.complete_until();
    let lag = complete.map(|c| now.saturating_sub(c));
    let gaps = archive.listing.gaps().len();
    let problem = match (complete, lag) {
        (Some(c), Some(l)) if gaps == 0 && l > max_lag.as_secs() => Some(format!(
            "the archive is known complete only up to {} ({} ago, more than {}): is the archiver running?",
            time(c),
            humantime::format_duration(Duration::from_secs(l)),
            humantime::format_duration(max_lag)
        )),
        (Some(_), Some(_)) if gaps > 0 => Some(format!(
            "the archive has {gaps} gap(s): `stagehand binlogs list` shows them"
        )),
        (Some(_), Some(_)) => None,
        _ => Some("the archive is empty".to_string()),
    };
    if let Some(path) = &metrics_file {
        write_atomic(path, &gauges(&archive, lag, gaps))?;
    }
    if as_json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "ok": problem.is_none(),
                "problem": problem,
                "complete_until": complete.map(time),
                "lag_seconds": lag,
                "segments": archive.listing.segments.len(),
                "gaps": gaps,
                "end_state": archive.listing.last().map(|m| m.end_state.clone()),
            }))?
        );
    } else if let Some(p) = &problem {
        eprintln!("STALE: {}: {p}", archive.url);
    } else {
        outln!(
            "ok: {}: complete up to {} ({} ago), GTID {}",
            archive.url,
            complete.map(time).unwrap_or_default(),
            humantime::format_duration(Duration::from_secs(lag.unwrap_or_default())),
            archive
                .listing
                .last()
                .map(|m| m.end_state.as_str())
                .unwrap_or_default()
        );
    }
    Ok(if problem.is_none() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

/// The archive's gauges in the Prometheus text format.
fn gauges(archive: &Archive, lag: Option<u64>, gaps: usize) -> String {
    let repo = label(&archive.url);
    let mut text = String::new();
    let mut gauge = |name: &str, help: &str, value: Option<u64>| {
        if let Some(v) = value {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{repository=\"{repo}\"}} {v}\n"
            ));
        }
    };
    gauge(
        "stagehand_binlog_archive_lag_seconds",
        "Seconds since the time up to which the binlog archive is known to hold every transaction.",
        lag,
    );
    gauge(
        "stagehand_binlog_archive_complete_until_timestamp_seconds",
        "The time up to which the binlog archive is known to hold every transaction.",
        archive.complete_until(),
    );
    gauge(
        "stagehand_binlog_archive_segments",
        "Segments in the binlog archive.",
        Some(archive.listing.segments.len() as u64),
    );
    gauge(
        "stagehand_binlog_archive_gaps",
        "Places where the binlog archive's chain of GTID positions breaks.",
        Some(gaps as u64),
    );
    text
}

fn print_table(archive: &Archive) {
    let (url, listing) = (&archive.url, &archive.listing);
    if listing.segments.is_empty() {
        outln!("no binlog segments in {url}");
        return;
    }

    outln!(
        "{:>6} {:<20} {:<20} {:<22} {:<22} {:>8} {:>10}  SOURCE",
        "SEQ",
        "FIRST TIME",
        "LAST TIME",
        "FROM (after)",
        "TO",
        "TRX",
        "STORED"
    );
    let gaps = listing.gaps();
    for m in &listing.segments {
        if let Some(g) = gaps.iter().find(|g| g.next_seq == m.seq) {
            outln!(
                "{:>6} GAP: segment {} ended at {} but segment {} starts after {}",
                "",
                g.after_seq,
                shown(&g.ended_at),
                g.next_seq,
                shown(&g.starts_at)
            );
        }
        outln!("{}", line(m));
    }
    let (first, last) = (
        &listing.segments[0],
        &listing.segments[listing.segments.len() - 1],
    );
    outln!(
        "{} segments; transactions after {} up to {} (last at {}; complete up to {}), {}",
        listing.segments.len(),
        shown(&first.start_state),
        shown(&last.end_state),
        time(last.last_time),
        archive.complete_until().map(time).unwrap_or_default(),
        if gaps.is_empty() {
            "no gap".to_string()
        } else {
            format!("{} gap(s)", gaps.len())
        }
    );
}

fn line(m: &SegmentMeta) -> String {
    format!(
        "{:>6} {:<20} {:<20} {:<22} {:<22} {:>8} {:>10}  {} {}",
        m.seq,
        time(m.first_time),
        time(m.last_time),
        shown(&m.start_state),
        m.end_state,
        m.groups,
        bytesize::ByteSize(m.stored_bytes).to_string(),
        m.source.binlog_file,
        if m.key_id.is_some() {
            "(encrypted)"
        } else {
            ""
        }
    )
}

fn shown(pos: &str) -> &str {
    if pos.is_empty() {
        "(start)"
    } else {
        pos
    }
}

/// Seconds since the epoch as `2026-12-07T10:15:00Z`.
fn time(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}
