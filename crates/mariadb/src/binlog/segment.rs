//! A segment of the binlog archive: a standalone, valid binlog file holding whole
//! transactions of one server binlog file. It starts with the magic, the server's
//! FORMAT_DESCRIPTION event and a GTID_LIST stating the position before its first
//! transaction, so `mariadb-binlog --start-position=<GTID>` can read it alone and
//! refuses a chain of segments with a hole at its start.

use super::format::{gtid_list_event, RawEvent, MAGIC};
use crate::gtid::{Gtid, GtidPos};
use std::time::Instant;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("transaction {gtid} arrived after {last} in the same domain: the binlog stream went backwards (strict GTID order broken)")]
pub struct OutOfOrder {
    pub gtid: Gtid,
    pub last: Gtid,
}

/// A segment being filled.
#[derive(Debug)]
pub struct Segment {
    bytes: Vec<u8>,
    pub start: GtidPos,
    pub end: GtidPos,
    pub groups: u64,
    pub first_gtid: Option<Gtid>,
    pub last_gtid: Option<Gtid>,
    /// Event timestamps (seconds since the epoch) of the first and last GTID events.
    pub first_time: u32,
    pub last_time: u32,
    /// The latest timestamp of all (timestamps are not in commit order).
    pub max_time: u32,
    /// The server's binlog file the transactions came from.
    pub source_file: String,
    /// Times a domain's sequence number went up by more than one (a hole the server's
    /// own binlog has, e.g. after `SET gtid_seq_no`).
    pub seq_jumps: u64,
    opened: Instant,
}

impl Segment {
    /// An empty segment after `start`, in the format `fde` describes. `keep_created`:
    /// keep the FORMAT_DESCRIPTION's "server started" mark (only for the segment that
    /// begins a file the server started).
    pub fn new(fde: &RawEvent, start: GtidPos, source_file: &str, keep_created: bool) -> Self {
        let fde = if keep_created {
            fde.clone()
        } else {
            fde.fde_without_created()
        };
        let mut bytes = MAGIC.to_vec();
        fde.write_to(&mut bytes);
        gtid_list_event(&start, fde.timestamp, fde.server_id, fde.fde_says_crc32())
            .write_to(&mut bytes);
        Segment {
            bytes,
            end: start.clone(),
            start,
            groups: 0,
            first_gtid: None,
            last_gtid: None,
            first_time: 0,
            last_time: 0,
            max_time: 0,
            source_file: source_file.to_string(),
            seq_jumps: 0,
            opened: Instant::now(),
        }
    }

    /// Appends one whole transaction (its GTID event first).
    pub fn push_group(
        &mut self,
        gtid: Gtid,
        time: u32,
        events: &[RawEvent],
    ) -> Result<(), OutOfOrder> {
        if let Some(last) = self.end.get(gtid.domain).copied() {
            if gtid.seq <= last.seq {
                return Err(OutOfOrder { gtid, last });
            }
            if gtid.seq != last.seq + 1 {
                self.seq_jumps += 1;
            }
        }
        for ev in events {
            ev.write_to(&mut self.bytes);
        }
        self.end.advance(gtid);
        if self.groups == 0 {
            self.first_gtid = Some(gtid);
            self.first_time = time;
        }
        self.groups += 1;
        self.last_gtid = Some(gtid);
        self.last_time = time;
        self.max_time = self.max_time.max(time);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups == 0
    }

    /// How long since the segment was opened.
    pub fn age(&self) -> std::time::Duration {
        self.opened.elapsed()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binlog::format::{FORMAT_DESCRIPTION, GTID, XID};

    fn ev(type_code: u8, body: Vec<u8>) -> RawEvent {
        RawEvent {
            type_code,
            timestamp: 10,
            server_id: 1,
            log_pos: 0,
            flags: 0,
            body,
            crc: true,
        }
    }

    #[test]
    fn segments_track_their_range_and_refuse_a_stream_that_goes_backwards() {
        let fde = ev(FORMAT_DESCRIPTION, vec![0; 60]);
        let mut s = Segment::new(&fde, "0-1-4".parse().expect("pos"), "binlog.000001", false);
        let header = s.len();
        let g = |seq| Gtid {
            domain: 0,
            server: 1,
            seq,
        };
        s.push_group(g(5), 11, &[ev(GTID, vec![0; 19]), ev(XID, vec![0; 8])])
            .expect("in order");
        s.push_group(g(7), 12, &[ev(GTID, vec![0; 19])])
            .expect("a jump is kept");
        assert_eq!(s.end.to_string(), "0-1-7");
        assert_eq!(
            (s.groups, s.seq_jumps, s.first_time, s.last_time),
            (2, 1, 11, 12)
        );
        assert!(s.len() > header);
        let e = s.push_group(g(6), 13, &[]).expect_err("backwards");
        assert!(e.to_string().contains("0-1-6 arrived after 0-1-7"), "{e}");
        assert!(s.into_bytes().starts_with(&MAGIC));
    }
}
