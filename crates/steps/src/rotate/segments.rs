//! Retention of the binlog archive: every segment a kept backup may need to be rolled
//! forward stays; segments that end at or before the GTID position of the oldest kept
//! complete backup can roll nothing forward and are deleted, oldest first, each one's
//! metadata before its object (so a deletion cut short leaves an object the archiver
//! cleans up, never a segment that looks complete and is not).

use stagehand_mariadb::gtid::GtidPos;
use stagehand_repo::binlogs::{Listing, SegmentMeta};
use stagehand_repo::retention::Plan;
use stagehand_repo::BackupEntry;

/// What retention decided for the archive.
#[derive(Debug, Default)]
pub struct SegmentPlan {
    pub delete: Vec<SegmentMeta>,
    pub keep: usize,
    /// The backup whose position decides, and that position.
    pub oldest_kept: Option<(String, String)>,
}

impl SegmentPlan {
    pub fn freed_bytes(&self) -> u64 {
        self.delete.iter().map(|s| s.stored_bytes).sum()
    }

    /// The decision as diff lines, like the backups'.
    pub fn diff_lines(&self) -> Vec<String> {
        let Some((id, pos)) = &self.oldest_kept else {
            return if self.keep > 0 {
                vec![format!("  keep   binlog segments: all {} (no kept backup has a GTID position to measure them against)", self.keep)]
            } else {
                Vec::new()
            };
        };
        let mut lines: Vec<String> = self
            .delete
            .iter()
            .map(|s| {
                format!(
                    "- delete binlog segment {} ({} → {}): ends before the oldest kept backup {id} (GTID {pos})",
                    s.seq,
                    shown(&s.start_state),
                    s.end_state
                )
            })
            .collect();
        if self.keep > 0 {
            lines.push(format!(
                "  keep   binlog segments: {} (they roll backup {id} and newer forward)",
                self.keep
            ));
        }
        lines
    }
}

fn shown(pos: &str) -> &str {
    if pos.is_empty() {
        "(start)"
    } else {
        pos
    }
}

/// Which segments the kept backups no longer need.
pub fn decide(listing: &Listing, entries: &[BackupEntry], plan: &Plan) -> SegmentPlan {
    // Ids are start times: the smallest is the oldest (the plan lists newest first).
    let oldest_kept = plan
        .kept()
        .filter_map(|d| {
            let manifest = entries.iter().find(|e| e.id == d.id)?.manifest.as_ref()?;
            let pos: GtidPos = manifest.binlog.gtid_binlog_pos.parse().ok()?;
            (!pos.is_empty()).then(|| (d.id.clone(), pos))
        })
        .min_by(|a, b| a.0.cmp(&b.0));
    let Some((id, pos)) = oldest_kept else {
        return SegmentPlan {
            keep: listing.segments.len(),
            ..Default::default()
        };
    };
    let (delete, keep): (Vec<&SegmentMeta>, Vec<&SegmentMeta>) =
        listing.segments.iter().partition(|s| {
            s.end_state
                .parse::<GtidPos>()
                .is_ok_and(|end| !end.is_empty() && end.is_at_or_before(&pos))
        });
    SegmentPlan {
        delete: delete.into_iter().cloned().collect(),
        keep: keep.len(),
        oldest_kept: Some((id, pos.to_string())),
    }
}
