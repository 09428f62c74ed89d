//! Choosing archived segments: which ones take a server from one GTID position to
//! another without a hole, and where a point in time falls among transactions. Pure;
//! the segments are any items with a start and end position (the repository's
//! metadata), read through accessors.

use super::format::{read_events, FormatError};
use crate::gtid::{GtidParseError, GtidPos};
use std::ops::Range;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChainError {
    #[error("segment {index}'s position: {source}")]
    BadPosition {
        index: usize,
        source: GtidParseError,
    },
    #[error("the archive holds nothing after {from}: it ends at {archived_to}")]
    NothingAfter { from: String, archived_to: String },
    #[error("the archive starts after {from} (its first segment needed starts at {starts}): the transactions in between were never archived")]
    StartsLater { from: String, starts: String },
    #[error("the archive has a gap: a segment ends at {ended} and the next starts at {starts}; transactions in between are missing")]
    Gap { ended: String, starts: String },
    #[error("the archive reaches only {archived_to}, not {to}")]
    NotArchivedYet { to: String, archived_to: String },
    #[error("the target {to} is before the start {from}")]
    TargetBeforeStart { from: String, to: String },
}

/// The segments (a range of `segments`, which are in archive order) that hold every
/// transaction after `from` up to and including `to`. Empty when `to` is `from`.
pub fn select<T>(
    segments: &[T],
    start_of: impl Fn(&T) -> &str,
    end_of: impl Fn(&T) -> &str,
    from: &GtidPos,
    to: &GtidPos,
) -> Result<Range<usize>, ChainError> {
    let behind = |g: &crate::gtid::Gtid| from.get(g.domain).is_some_and(|f| f.seq > g.seq);
    if to.gtids().any(behind) {
        return Err(ChainError::TargetBeforeStart {
            from: from.to_string(),
            to: to.to_string(),
        });
    }
    if to.is_at_or_before(from) {
        return Ok(0..0);
    }
    let pos = |i: usize, text: &str| {
        text.parse::<GtidPos>()
            .map_err(|source| ChainError::BadPosition { index: i, source })
    };
    let archived_to = segments
        .last()
        .map(|s| end_of(s).to_string())
        .unwrap_or_default();
    let mut first = None;
    for (i, s) in segments.iter().enumerate() {
        if !pos(i, end_of(s))?.is_at_or_before(from) {
            first = Some(i);
            break;
        }
    }
    let first = first.ok_or_else(|| ChainError::NothingAfter {
        from: from.to_string(),
        archived_to: archived_to.clone(),
    })?;
    let starts = pos(first, start_of(&segments[first]))?;
    if !starts.is_at_or_before(from) {
        return Err(ChainError::StartsLater {
            from: from.to_string(),
            starts: starts.to_string(),
        });
    }
    let mut ended = starts;
    for (i, s) in segments.iter().enumerate().skip(first) {
        let start = pos(i, start_of(s))?;
        if start != ended {
            return Err(ChainError::Gap {
                ended: ended.to_string(),
                starts: start.to_string(),
            });
        }
        ended = pos(i, end_of(s))?;
        if to.is_at_or_before(&ended) {
            return Ok(first..i + 1);
        }
    }
    Err(ChainError::NotArchivedYet {
        to: to.to_string(),
        archived_to,
    })
}

/// `base` with the GTIDs of `later` applied on top (what a server at `base` reaches
/// after replaying up to `later`).
pub fn merged(base: &GtidPos, later: &GtidPos) -> GtidPos {
    let mut out = base.clone();
    for g in later.gtids() {
        if !out.contains(g) {
            out.advance(*g);
        }
    }
    out
}

/// Where time `t` (seconds since the epoch) falls in a segment that starts at
/// `start`: the position after its transactions up to the first one whose time is
/// later than `t`, and that transaction's time. `None` when every transaction in it is
/// at or before `t`.
pub fn position_at_time(
    segment: &[u8],
    start: &GtidPos,
    t: u64,
) -> Result<Option<(GtidPos, u64)>, FormatError> {
    let mut reached = start.clone();
    for ev in read_events(segment)? {
        if let Some(g) = ev.gtid()? {
            if u64::from(ev.timestamp) > t {
                return Ok(Some((reached, u64::from(ev.timestamp))));
            }
            reached.advance(g.gtid);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binlog::format::{RawEvent, FORMAT_DESCRIPTION, GTID};
    use crate::binlog::segment::Segment;
    use crate::gtid::Gtid;

    fn p(text: &str) -> GtidPos {
        text.parse().expect("position")
    }

    fn pick(segs: &[(&str, &str)], from: &str, to: &str) -> Result<Range<usize>, ChainError> {
        select(segs, |s| s.0, |s| s.1, &p(from), &p(to))
    }

    #[test]
    fn the_segments_between_two_positions_are_chosen_and_holes_refused() {
        let segs = [("", "0-1-5"), ("0-1-5", "0-1-9"), ("0-1-9", "0-1-20")];
        assert_eq!(pick(&segs, "0-1-3", "0-1-7"), Ok(0..2));
        assert_eq!(pick(&segs, "0-1-5", "0-1-9"), Ok(1..2));
        assert_eq!(pick(&segs, "0-1-6", "0-1-20"), Ok(1..3));
        assert_eq!(pick(&segs, "0-1-9", "0-1-9"), Ok(0..0));
        assert!(matches!(
            pick(&segs, "0-1-6", "0-1-21"),
            Err(ChainError::NotArchivedYet { .. })
        ));
        assert!(matches!(
            pick(&segs, "0-1-20", "0-1-21"),
            Err(ChainError::NothingAfter { .. })
        ));
        assert!(matches!(
            pick(&segs, "0-1-9", "0-1-8"),
            Err(ChainError::TargetBeforeStart { .. })
        ));
        let holed = [("0-1-5", "0-1-9"), ("0-1-12", "0-1-20")];
        assert!(matches!(
            pick(&holed, "0-1-6", "0-1-15"),
            Err(ChainError::Gap { .. })
        ));
        assert!(matches!(
            pick(&holed, "0-1-2", "0-1-7"),
            Err(ChainError::StartsLater { .. })
        ));
    }

    #[test]
    fn a_point_in_time_ends_before_the_first_later_transaction() {
        let mut fde_body = vec![0u8; 60];
        fde_body.push(1);
        let fde = RawEvent {
            type_code: FORMAT_DESCRIPTION,
            timestamp: 100,
            server_id: 1,
            log_pos: 0,
            flags: 0,
            body: fde_body,
            crc: true,
        };
        let mut seg = Segment::new(&fde, p("0-1-4"), "binlog.000001", false);
        // Times are not monotonic in commit order: 0-1-7 (time 103) is after the
        // first later one (0-1-6 at 105) and so is not in the prefix.
        for (seq, time) in [(5u64, 101), (6, 105), (7, 103)] {
            let mut body = seq.to_le_bytes().to_vec();
            body.extend_from_slice(&[0; 5]);
            let ev = RawEvent {
                type_code: GTID,
                timestamp: time,
                body,
                ..fde.clone()
            };
            seg.push_group(
                Gtid {
                    domain: 0,
                    server: 1,
                    seq,
                },
                time,
                &[ev],
            )
            .expect("in order");
        }
        let bytes = seg.into_bytes();
        assert_eq!(
            position_at_time(&bytes, &p("0-1-4"), 100),
            Ok(Some((p("0-1-4"), 101)))
        );
        assert_eq!(
            position_at_time(&bytes, &p("0-1-4"), 104),
            Ok(Some((p("0-1-5"), 105)))
        );
        assert_eq!(position_at_time(&bytes, &p("0-1-4"), 105), Ok(None));
    }
}
