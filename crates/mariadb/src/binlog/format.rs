//! The MariaDB binary log's on-disk format, as far as archiving needs it: the event
//! header, CRC32 footers, GTID and GTID_LIST bodies, which event ends a transaction
//! (an "event group"), and writing events back out. Facts from the server source
//! (`sql/log_event.h`, `sql/sql_repl.cc`) and the KB pages on GTID_EVENT and
//! GTID_LIST_EVENT. Pure over bytes.

use crate::gtid::{Gtid, GtidPos};

/// The four bytes every binlog file starts with.
pub const MAGIC: [u8; 4] = [0xfe, b'b', b'i', b'n'];
/// Bytes of the common event header (v4).
pub const HEADER_LEN: usize = 19;
const CRC_LEN: usize = 4;

pub const QUERY: u8 = 2;
pub const STOP: u8 = 3;
pub const ROTATE: u8 = 4;
pub const INTVAR: u8 = 5;
pub const RAND: u8 = 13;
pub const USER_VAR: u8 = 14;
pub const FORMAT_DESCRIPTION: u8 = 15;
pub const XID: u8 = 16;
pub const TABLE_MAP: u8 = 19;
pub const INCIDENT: u8 = 26;
pub const HEARTBEAT: u8 = 27;
pub const XA_PREPARE: u8 = 38;
pub const ANNOTATE_ROWS: u8 = 160;
pub const BINLOG_CHECKPOINT: u8 = 161;
pub const GTID: u8 = 162;
pub const GTID_LIST: u8 = 163;
pub const START_ENCRYPTION: u8 = 164;

/// Header flag of events the server makes up for a replica (the first ROTATE, the
/// GTID_LIST after a GTID connect); they are not in the binlog.
pub const ARTIFICIAL_FLAG: u16 = 0x20;
/// GTID_EVENT flags2: the group is one statement without BEGIN/COMMIT (DDL).
const FL_STANDALONE: u8 = 1;
/// Offset of the `created` timestamp in a FORMAT_DESCRIPTION body (after the binlog
/// version u16 and the 50-byte server version).
const FDE_CREATED_AT: usize = 52;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FormatError {
    #[error("not a binlog file (no magic number at its start)")]
    NoMagic,
    #[error("the event at byte {at} runs past the end of the file ({len} bytes)")]
    Truncated { at: usize, len: usize },
    #[error("a {what} event of {len} bytes is too short")]
    Short { what: &'static str, len: usize },
    #[error("a GTID event arrived inside the transaction of {open}: the stream is torn")]
    GtidInsideGroup { open: Gtid },
}

/// One event, as written to a file: header fields, the body (for a
/// FORMAT_DESCRIPTION event including its trailing checksum-algorithm byte), and
/// whether a CRC32 follows.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    pub type_code: u8,
    pub timestamp: u32,
    pub server_id: u32,
    /// End offset of the event in the server's binlog file (0 in made-up events).
    pub log_pos: u32,
    pub flags: u16,
    pub body: Vec<u8>,
    pub crc: bool,
}

impl RawEvent {
    pub fn len(&self) -> usize {
        HEADER_LEN + self.body.len() + if self.crc { CRC_LEN } else { 0 }
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn is_artificial(&self) -> bool {
        self.flags & ARTIFICIAL_FLAG != 0
    }

    /// Appends the event's bytes (header, body, CRC32 of both) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        out.push(self.type_code);
        out.extend_from_slice(&self.server_id.to_le_bytes());
        out.extend_from_slice(&(self.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.log_pos.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.body);
        if self.crc {
            let crc = crc32fast::hash(&out[start..]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
    }

    /// The GTID of a GTID event.
    pub fn gtid(&self) -> Result<Option<GtidEvent>, FormatError> {
        if self.type_code != GTID {
            return Ok(None);
        }
        let b = &self.body;
        if b.len() < 13 {
            return Err(FormatError::Short {
                what: "GTID",
                len: b.len(),
            });
        }
        Ok(Some(GtidEvent {
            gtid: Gtid {
                domain: u32_at(b, 8),
                server: self.server_id,
                seq: u64_at(b, 0),
            },
            standalone: b[12] & FL_STANDALONE != 0,
        }))
    }

    /// The statement text of a QUERY event (after its status variables and database).
    pub fn query_text(&self) -> Option<&[u8]> {
        if self.type_code != QUERY || self.body.len() < 13 {
            return None;
        }
        let db_len = self.body[8] as usize;
        let status_len = u16::from_le_bytes([self.body[11], self.body[12]]) as usize;
        self.body.get(13 + status_len + db_len + 1..)
    }

    /// The `created` time of a FORMAT_DESCRIPTION event (non-zero: the server started
    /// this file, so an applier drops its temporary tables).
    pub fn fde_created(&self) -> Option<u32> {
        (self.type_code == FORMAT_DESCRIPTION && self.body.len() >= FDE_CREATED_AT + 4)
            .then(|| u32_at(&self.body, FDE_CREATED_AT))
    }

    /// Whether the events after this FORMAT_DESCRIPTION event end with a CRC32 (its
    /// body's last byte names the checksum algorithm: 1 is CRC32, 0 none).
    pub fn fde_says_crc32(&self) -> bool {
        self.type_code == FORMAT_DESCRIPTION && self.body.last() == Some(&1)
    }

    /// This FORMAT_DESCRIPTION event with `created` cleared: for a file that continues
    /// one the server started earlier (the server does the same for a replica that
    /// connects in the middle of a file).
    pub fn fde_without_created(&self) -> RawEvent {
        let mut copy = self.clone();
        if copy.fde_created().is_some() {
            copy.body[FDE_CREATED_AT..FDE_CREATED_AT + 4].fill(0);
        }
        copy
    }

    /// The name in a ROTATE event, without the CRC bytes the server appends to the
    /// name of its first, made-up ROTATE (sent before the replica knows the
    /// checksum algorithm).
    pub fn rotate_name(&self) -> Option<String> {
        if self.type_code != ROTATE || self.body.len() < 8 {
            return None;
        }
        let name = &self.body[8..];
        let without_crc = &name[..name.len().saturating_sub(CRC_LEN)];
        let name = if !has_binlog_number(name) && has_binlog_number(without_crc) {
            without_crc
        } else {
            name
        };
        Some(String::from_utf8_lossy(name).into_owned())
    }
}

/// Whether a file name ends like a binlog's (`.` and six digits).
fn has_binlog_number(name: &[u8]) -> bool {
    name.len() > 7
        && name[name.len() - 7] == b'.'
        && name[name.len() - 6..].iter().all(u8::is_ascii_digit)
}

/// The events of a binlog file (a segment), in order. CRCs are not checked here: a
/// segment's hash is, before it is read.
pub fn read_events(file: &[u8]) -> Result<Vec<RawEvent>, FormatError> {
    if !file.starts_with(&MAGIC) {
        return Err(FormatError::NoMagic);
    }
    let mut events = Vec::new();
    let mut at = MAGIC.len();
    let mut crc_after_fde = false;
    while at < file.len() {
        let truncated = FormatError::Truncated {
            at,
            len: file.len(),
        };
        let header = file.get(at..at + HEADER_LEN).ok_or(truncated)?;
        let size = u32_at(header, 9) as usize;
        let type_code = header[4];
        let crc = type_code == FORMAT_DESCRIPTION || crc_after_fde;
        let body_end = at + size - if crc { CRC_LEN } else { 0 };
        if size < HEADER_LEN + if crc { CRC_LEN } else { 0 } || at + size > file.len() {
            return Err(FormatError::Truncated {
                at,
                len: file.len(),
            });
        }
        let ev = RawEvent {
            type_code,
            timestamp: u32_at(header, 0),
            server_id: u32_at(header, 5),
            log_pos: u32_at(header, 13),
            flags: u16::from_le_bytes([header[17], header[18]]),
            body: file[at + HEADER_LEN..body_end].to_vec(),
            crc,
        };
        if type_code == FORMAT_DESCRIPTION {
            crc_after_fde = ev.fde_says_crc32();
        }
        events.push(ev);
        at += size;
    }
    Ok(events)
}

/// What a GTID event says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GtidEvent {
    pub gtid: Gtid,
    pub standalone: bool,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// A GTID_LIST event stating `pos` (the state before the events that follow): what
/// the server writes at the start of each binlog file, and what `mariadb-binlog`
/// checks a `--start-position` against.
pub fn gtid_list_event(pos: &GtidPos, timestamp: u32, server_id: u32, crc: bool) -> RawEvent {
    let gtids: Vec<&Gtid> = pos.gtids().collect();
    let mut body = Vec::with_capacity(4 + 16 * gtids.len());
    body.extend_from_slice(&(gtids.len() as u32).to_le_bytes());
    for g in gtids {
        body.extend_from_slice(&g.domain.to_le_bytes());
        body.extend_from_slice(&g.server.to_le_bytes());
        body.extend_from_slice(&g.seq.to_le_bytes());
    }
    RawEvent {
        type_code: GTID_LIST,
        timestamp,
        server_id,
        log_pos: 0,
        flags: 0,
        body,
        crc,
    }
}

/// A made-up ROTATE naming `file` (position 4), as a server writes at the start of a
/// relay log: the replication SQL thread of 10.11 needs one after the format
/// description of each relay file it applies in parallel (without it, it crashed in
/// our trials; docs/design/pitr.md §2.6).
pub fn rotate_event(file: &str, server_id: u32, crc: bool) -> RawEvent {
    let mut body = 4u64.to_le_bytes().to_vec();
    body.extend_from_slice(file.as_bytes());
    RawEvent {
        type_code: ROTATE,
        timestamp: 0,
        server_id,
        log_pos: 0,
        flags: ARTIFICIAL_FLAG,
        body,
        crc,
    }
}

/// The GTIDs a GTID_LIST event lists.
pub fn parse_gtid_list(body: &[u8]) -> Result<GtidPos, FormatError> {
    let short = || FormatError::Short {
        what: "GTID_LIST",
        len: body.len(),
    };
    if body.len() < 4 {
        return Err(short());
    }
    let count = (u32_at(body, 0) & 0x0fff_ffff) as usize;
    let mut pos = GtidPos::default();
    for i in 0..count {
        let at = 4 + 16 * i;
        if body.len() < at + 16 {
            return Err(short());
        }
        pos.advance(Gtid {
            domain: u32_at(body, at),
            server: u32_at(body, at + 4),
            seq: u64_at(body, at + 8),
        });
    }
    Ok(pos)
}

/// Where an event stands in the stream of transactions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Place {
    /// A GTID event: a transaction starts.
    Begins(GtidEvent),
    /// Inside the open transaction.
    Inside,
    /// The open transaction's last event (XID, XA PREPARE, COMMIT/ROLLBACK, or a
    /// standalone statement).
    Ends,
    /// Not part of any transaction (file headers, checkpoints, heartbeats).
    Between,
}

/// Follows transactions through a stream of events, by the rule the server itself
/// uses to skip a transaction for a replica (`sql_repl.cc`, GTID_SKIP_*).
#[derive(Debug, Default)]
pub struct GroupTracker {
    open: Option<GtidEvent>,
}

impl GroupTracker {
    pub fn place(&mut self, ev: &RawEvent) -> Result<Place, FormatError> {
        if let Some(g) = ev.gtid()? {
            if let Some(open) = self.open {
                return Err(FormatError::GtidInsideGroup { open: open.gtid });
            }
            self.open = Some(g);
            return Ok(Place::Begins(g));
        }
        let Some(open) = self.open else {
            return Ok(Place::Between);
        };
        let ends = if open.standalone {
            !matches!(
                ev.type_code,
                INTVAR | RAND | USER_VAR | TABLE_MAP | ANNOTATE_ROWS
            )
        } else {
            matches!(ev.type_code, XID | XA_PREPARE) || ev.query_text().is_some_and(ends_group)
        };
        if ends {
            self.open = None;
            Ok(Place::Ends)
        } else {
            Ok(Place::Inside)
        }
    }

    /// Forgets a transaction cut off by a lost connection.
    pub fn reset(&mut self) {
        self.open = None;
    }
}

/// Whether a statement ends its transaction.
fn ends_group(text: &[u8]) -> bool {
    let text = String::from_utf8_lossy(text);
    let upper = text
        .trim()
        .trim_end_matches(';')
        .trim()
        .to_ascii_uppercase();
    upper == "COMMIT"
        || upper == "ROLLBACK"
        || upper.starts_with("XA COMMIT")
        || upper.starts_with("XA ROLLBACK")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(type_code: u8, body: Vec<u8>) -> RawEvent {
        RawEvent {
            type_code,
            timestamp: 1_700_000_000,
            server_id: 1,
            log_pos: 0,
            flags: 0,
            body,
            crc: true,
        }
    }

    fn gtid_body(seq: u64, domain: u32, flags: u8) -> Vec<u8> {
        let mut b = seq.to_le_bytes().to_vec();
        b.extend_from_slice(&domain.to_le_bytes());
        b.push(flags);
        b.extend_from_slice(&[0; 6]);
        b
    }

    fn query(text: &str) -> RawEvent {
        let db = b"t";
        let mut b = vec![0u8; 13];
        b[8] = db.len() as u8;
        b[11] = 2; // two bytes of status variables
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(db);
        b.push(0);
        b.extend_from_slice(text.as_bytes());
        event(QUERY, b)
    }

    #[test]
    fn transactions_end_at_xid_commit_or_after_a_standalone_statement() {
        let mut t = GroupTracker::default();
        let begin = event(GTID, gtid_body(5, 0, 0));
        assert!(
            matches!(t.place(&begin), Ok(Place::Begins(g)) if g.gtid.seq == 5 && !g.standalone)
        );
        assert_eq!(t.place(&query("BEGIN")), Ok(Place::Inside));
        assert_eq!(t.place(&event(TABLE_MAP, vec![0; 8])), Ok(Place::Inside));
        assert_eq!(t.place(&event(XID, vec![0; 8])), Ok(Place::Ends));
        assert_eq!(
            t.place(&event(BINLOG_CHECKPOINT, vec![0; 8])),
            Ok(Place::Between)
        );

        t.place(&event(GTID, gtid_body(6, 0, 0))).expect("begins");
        assert_eq!(
            t.place(&query("COMMIT")),
            Ok(Place::Ends),
            "MyISAM ends with COMMIT"
        );

        t.place(&event(GTID, gtid_body(7, 0, FL_STANDALONE)))
            .expect("begins");
        assert_eq!(t.place(&event(INTVAR, vec![0; 9])), Ok(Place::Inside));
        assert_eq!(t.place(&query("CREATE TABLE x (a int)")), Ok(Place::Ends));
    }

    #[test]
    fn a_gtid_inside_an_open_transaction_is_a_torn_stream() {
        let mut t = GroupTracker::default();
        t.place(&event(GTID, gtid_body(5, 0, 0))).expect("begins");
        let e = t.place(&event(GTID, gtid_body(6, 0, 0))).expect_err("torn");
        assert!(e.to_string().contains("0-1-5"), "{e}");
    }

    #[test]
    fn gtid_lists_and_events_round_trip_with_a_valid_crc() {
        let pos: GtidPos = "0-1-250,7-3-9".parse().expect("pos");
        let ev = gtid_list_event(&pos, 5, 1, true);
        assert_eq!(parse_gtid_list(&ev.body), Ok(pos));
        let mut out = Vec::new();
        ev.write_to(&mut out);
        assert_eq!(out.len(), ev.len());
        assert_eq!(
            u32_at(&out, 9) as usize,
            out.len(),
            "event_size in the header"
        );
        let (data, crc) = out.split_at(out.len() - 4);
        assert_eq!(crc, crc32fast::hash(data).to_le_bytes());
    }

    #[test]
    fn a_written_file_reads_back_event_by_event() {
        let mut fde_body = vec![0u8; 60];
        fde_body.push(1); // CRC32
        let fde = event(FORMAT_DESCRIPTION, fde_body);
        let list = gtid_list_event(&"0-1-4".parse().expect("pos"), 9, 1, true);
        let gtid = event(GTID, gtid_body(5, 0, 0));
        let mut file = MAGIC.to_vec();
        for e in [&fde, &list, &gtid] {
            e.write_to(&mut file);
        }
        let back = read_events(&file).expect("reads");
        assert_eq!(back, vec![fde, list, gtid]);
        assert!(matches!(
            read_events(&file[..file.len() - 3]),
            Err(FormatError::Truncated { .. })
        ));
        assert_eq!(read_events(b"nope"), Err(FormatError::NoMagic));
    }

    #[test]
    fn rotate_names_lose_the_crc_bytes_of_the_first_made_up_rotate() {
        let mut body = 4u64.to_le_bytes().to_vec();
        body.extend_from_slice(b"binlog.000001");
        let clean = event(ROTATE, body.clone());
        assert_eq!(clean.rotate_name().as_deref(), Some("binlog.000001"));
        body.extend_from_slice(&[0x1c, 0xdf, 0x44, 0x21]);
        assert_eq!(
            event(ROTATE, body).rotate_name().as_deref(),
            Some("binlog.000001")
        );
    }

    #[test]
    fn created_is_cleared_in_a_copy_of_the_format_description() {
        let mut body = vec![0u8; 60];
        body[FDE_CREATED_AT..FDE_CREATED_AT + 4].copy_from_slice(&77u32.to_le_bytes());
        let fde = event(FORMAT_DESCRIPTION, body);
        assert_eq!(fde.fde_created(), Some(77));
        assert_eq!(fde.fde_without_created().fde_created(), Some(0));
    }
}
