//! Relay logs made from archived segments, for replay through the server's own
//! replication SQL thread (parallel apply). A relay file is the segment's format
//! description, a made-up ROTATE naming the source's binlog file, and exactly the
//! transactions after one GTID position up to and including another: the thread then
//! applies everything it is given, so it stops at the target with no UNTIL clause, and
//! nothing at or before the start is applied twice.

use super::format::{
    read_events, rotate_event, FormatError, GroupTracker, Place, FORMAT_DESCRIPTION, MAGIC,
};
use crate::gtid::GtidPos;

/// A relay file's bytes and the number of transactions in it.
#[derive(Debug)]
pub struct RelayFile {
    pub bytes: Vec<u8>,
    pub transactions: u64,
}

/// The relay file for `segment` holding the transactions after `from` up to `to`
/// (per domain; a domain `to` does not name is taken whole). `source_file` names the
/// server binlog the segment came from.
pub fn relay_file(
    segment: &[u8],
    source_file: &str,
    from: &GtidPos,
    to: &GtidPos,
) -> Result<RelayFile, FormatError> {
    let mut bytes = MAGIC.to_vec();
    let mut tracker = GroupTracker::default();
    let mut keep = false;
    let mut transactions = 0;
    for ev in read_events(segment)? {
        if ev.type_code == FORMAT_DESCRIPTION {
            ev.write_to(&mut bytes);
            rotate_event(source_file, ev.server_id, ev.fde_says_crc32()).write_to(&mut bytes);
            continue;
        }
        match tracker.place(&ev)? {
            Place::Begins(g) => {
                let wanted = to.get(g.gtid.domain).is_none_or(|t| g.gtid.seq <= t.seq);
                keep = wanted && !from.contains(&g.gtid);
                if keep {
                    transactions += 1;
                }
            }
            Place::Inside | Place::Ends => {}
            // The segment's GTID list: the relay file's start is the thread's business.
            Place::Between => continue,
        }
        if keep {
            ev.write_to(&mut bytes);
        }
    }
    Ok(RelayFile {
        bytes,
        transactions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binlog::format::{RawEvent, GTID, ROTATE, XID};
    use crate::binlog::segment::Segment;
    use crate::gtid::Gtid;

    fn ev(type_code: u8, body: Vec<u8>) -> RawEvent {
        RawEvent {
            type_code,
            timestamp: 7,
            server_id: 1,
            log_pos: 0,
            flags: 0,
            body,
            crc: true,
        }
    }

    #[test]
    fn a_relay_file_holds_exactly_the_transactions_between_the_two_positions() {
        let mut fde_body = vec![0u8; 60];
        fde_body.push(1);
        let mut seg = Segment::new(
            &ev(FORMAT_DESCRIPTION, fde_body),
            "0-1-4".parse().expect("pos"),
            "binlog.000003",
            false,
        );
        for seq in 5..=9u64 {
            let mut body = seq.to_le_bytes().to_vec();
            body.extend_from_slice(&[0; 5]);
            let group = [ev(GTID, body), ev(XID, vec![0; 8])];
            seg.push_group(
                Gtid {
                    domain: 0,
                    server: 1,
                    seq,
                },
                7,
                &group,
            )
            .expect("in order");
        }
        let relay = relay_file(
            &seg.into_bytes(),
            "binlog.000003",
            &"0-1-5".parse().expect("from"),
            &"0-1-8".parse().expect("to"),
        )
        .expect("relay file");
        assert_eq!(relay.transactions, 3);
        let events = read_events(&relay.bytes).expect("reads back");
        let types: Vec<u8> = events.iter().map(|e| e.type_code).collect();
        assert_eq!(
            types,
            [FORMAT_DESCRIPTION, ROTATE, GTID, XID, GTID, XID, GTID, XID]
        );
        assert_eq!(events[1].rotate_name().as_deref(), Some("binlog.000003"));
        let seqs: Vec<u64> = events
            .iter()
            .filter_map(|e| e.gtid().ok().flatten().map(|g| g.gtid.seq))
            .collect();
        assert_eq!(seqs, [6, 7, 8]);
    }
}
