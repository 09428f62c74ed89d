//! `stagehand binlogs list REPO`: the binlog archive of a repository — its segments,
//! the GTID and time range each covers, and where the chain of positions breaks.

use super::backups::{fail, RepoArgs};
use super::{EXIT_FAILED, EXIT_OK};
use clap::Subcommand;
use serde_json::json;
use stagehand_repo::binlogs::{BinlogArchive, Listing, SegmentMeta};
use stagehand_repo::{RepoConfig, Repository};

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
}

pub fn dispatch(command: BinlogsCommand) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        match command {
            BinlogsCommand::List { repo, json } => list(&repo.config(), json).await,
        }
    })
}

async fn list(cfg: &RepoConfig, as_json: bool) -> anyhow::Result<i32> {
    let repo = match Repository::open(cfg).await {
        Ok(r) => r,
        Err(e) => return Ok(fail(&e.message)),
    };
    let listing = match BinlogArchive::new(repo.store().clone()).list().await {
        Ok(l) => l,
        Err(e) => return Ok(fail(&e.message)),
    };
    let gaps = listing.gaps();
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&listing_json(&listing))?);
    } else {
        print_table(repo.url(), &listing);
    }
    Ok(if gaps.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

fn listing_json(listing: &Listing) -> serde_json::Value {
    let first = listing.segments.first();
    let last = listing.last();
    json!({
        "segments": listing.segments,
        "gaps": listing.gaps(),
        "interrupted_uploads": listing.orphans,
        "start_state": first.map(|m| m.start_state.clone()),
        "end_state": last.map(|m| m.end_state.clone()),
        "last_time": last.map(|m| time(m.last_time)),
    })
}

fn print_table(url: &str, listing: &Listing) {
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
        "{} segments; transactions after {} up to {} ({}), {}",
        listing.segments.len(),
        shown(&first.start_state),
        shown(&last.end_state),
        time(last.last_time),
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
