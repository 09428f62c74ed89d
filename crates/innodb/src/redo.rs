//! The MariaDB 10.8+ redo log (`ib_logfile0`) as used by 10.11: file header,
//! checkpoint blocks, mini-transaction (mtr) framing, and the linear log file
//! that a backup directory carries.
//!
//! Sources (MariaDB 10.11.18): storage/innobase/include/log0log.h (offsets,
//! formats, `get_sequence_bit`, `calc_lsn_offset`), log/log0recv.cc
//! (`recv_sys_t::find_checkpoint`, `log_parse_start`, `parse_tail`,
//! `log_parse_file`, `mlog_decode_varint`), include/mtr0log.h (varint
//! encoding), mtr/mtr0mtr.cc (`finish_writer`: sequence byte + CRC),
//! buf/buf0flu.cc (`log_t::write_checkpoint`, `log_checkpoint_low`),
//! log/log0crypt.cc (encryption header), extra/mariabackup/xtrabackup.cc
//! (`log_hdr_init`, `xtrabackup_copy_logfile`).

use std::io::Write;

use super::bytes::{be32, be64, byte, is_zero, slice, OutOfBounds};

/// Log data starts here; also the smallest valid LSN (log0log.h).
pub const START_OFFSET: u64 = 12288;
pub const FIRST_LSN: u64 = START_OFFSET;
pub const CHECKPOINT_1: usize = 4096;
pub const CHECKPOINT_2: usize = 8192;
/// "Phys": the plain 10.8+ format.
pub const FORMAT_10_8: u32 = 0x5068_7973;
/// Encrypted log as written by 10.11 (`innodb_encrypt_log=ON`).
pub const FORMAT_ENC_11: u32 = 0xf09f_979d;
pub const LOG_HEADER_START_LSN: usize = 8;
pub const LOG_HEADER_CREATOR: usize = 16;
pub const LOG_HEADER_CREATOR_END: usize = 48;
/// Encryption header: key id, key version, 16-byte message, 4-byte nonce.
const CRYPT_HEADER_LEN: usize = 28;
const HEADER_CRC: usize = 508;
const CHECKPOINT_CRC: usize = 60;
/// Size of a FILE_CHECKPOINT mtr: `FA 00 00` + 8-byte LSN + sequence byte +
/// CRC (mtr0types.h SIZE_OF_FILE_CHECKPOINT).
pub const SIZE_OF_FILE_CHECKPOINT: u64 = 16;
/// Mtrs this long are treated as corruption (log0recv.h MTR_SIZE_MAX).
pub const MTR_SIZE_MAX: usize = 1 << 20;

// Record type bits (mtr0types.h). Page records: bits 6..4 of the first byte;
// file records: the whole high nibble with bit 7 set.
pub const FILE_CREATE: u8 = 0x80;
pub const FILE_DELETE: u8 = 0x90;
pub const FILE_RENAME: u8 = 0xA0;
pub const FILE_MODIFY: u8 = 0xB0;
pub const FILE_CHECKPOINT: u8 = 0xF0;
/// Page record types (bits 6..4 of the first byte, mtr0types.h `mrec_type_t`).
pub const INIT_PAGE: u8 = 0x10;
pub const EXTENDED: u8 = 0x20;
/// Subtype byte of an EXTENDED record that truncates a data file to the page
/// number of its page id (mtr0types.h `mrec_ext_t`; written by
/// mtr0mtr.cc `mtr_t::trim_pages` when purge shrinks an undo tablespace).
pub const TRIM_PAGES: u8 = 10;

#[derive(Debug, thiserror::Error)]
pub enum RedoError {
    #[error(transparent)]
    OutOfBounds(#[from] OutOfBounds),
    #[error("unsupported redo log format {0:#010x} (need the 10.8+ format)")]
    UnsupportedFormat(u32),
    #[error("redo log header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("invalid redo log header: {0}")]
    BadHeader(&'static str),
    #[error("no valid checkpoint block in the redo log header")]
    NoCheckpoint,
    #[error("LSN {lsn} is below the log's first LSN {first_lsn}")]
    LsnBeforeStart { lsn: u64, first_lsn: u64 },
    #[error("log file size {0} leaves no room for log data")]
    FileTooSmall(u64),
    #[error("creator string is {0} bytes, the header has room for 32")]
    CreatorTooLong(usize),
    #[error("log bytes for the backup are not whole mtrs starting at LSN {expected}: {detail}")]
    NotMtrAligned { expected: u64, detail: &'static str },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The first 512 bytes of `ib_logfile0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHeader {
    pub format: u32,
    /// LSN of the byte at file offset 12288.
    pub first_lsn: u64,
    /// e.g. "MariaDB 10.11.19" or "Backup 10.11.19".
    pub creator: String,
    /// Raw encryption header (bytes 48..76); all zero when not encrypted.
    pub crypt_header: [u8; CRYPT_HEADER_LEN],
}

impl LogHeader {
    /// Parse and verify the header block (find_checkpoint in log0recv.cc).
    pub fn parse(buf: &[u8]) -> Result<Self, RedoError> {
        let block = slice(buf, 0, HEADER_CRC + 4)?;
        let format = be32(block, 0)?;
        if format != FORMAT_10_8 && format != FORMAT_ENC_11 {
            return Err(RedoError::UnsupportedFormat(format));
        }
        let stored = be32(block, HEADER_CRC)?;
        let computed = crc32c::crc32c(slice(block, 0, HEADER_CRC)?);
        if stored != computed {
            return Err(RedoError::HeaderChecksum { stored, computed });
        }
        if be32(block, 4)? != 0 {
            return Err(RedoError::BadHeader("bytes 4..7 are not zero"));
        }
        let first_lsn = be64(block, LOG_HEADER_START_LSN)?;
        if first_lsn < FIRST_LSN {
            return Err(RedoError::BadHeader("first LSN below 12288"));
        }
        let raw = slice(
            block,
            LOG_HEADER_CREATOR,
            LOG_HEADER_CREATOR_END - LOG_HEADER_CREATOR,
        )?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let creator = String::from_utf8_lossy(raw.get(..end).unwrap_or(raw)).into_owned();
        let mut crypt_header = [0u8; CRYPT_HEADER_LEN];
        crypt_header.copy_from_slice(slice(block, LOG_HEADER_CREATOR_END, CRYPT_HEADER_LEN)?);
        Ok(Self {
            format,
            first_lsn,
            creator,
            crypt_header,
        })
    }

    /// A plain-format log with a nonzero key id is the older encrypted
    /// 10.8 format (FORMAT_ENC_10_8 exists in memory only).
    pub fn is_encrypted(&self) -> bool {
        self.format == FORMAT_ENC_11 || !is_zero(self.crypt_header.get(..4).unwrap_or(&[]))
    }

    /// Framing of this log's mtrs.
    pub fn framing(&self) -> MtrFraming {
        if self.is_encrypted() {
            MtrFraming::Encrypted
        } else {
            MtrFraming::Plain
        }
    }

    pub fn is_backup(&self) -> bool {
        self.creator.starts_with("Backup ")
    }
}

/// One checkpoint block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub checkpoint_lsn: u64,
    /// LSN where the mtr carrying this checkpoint's FILE_CHECKPOINT record
    /// starts (log_checkpoint_low passes log_sys.get_lsn() taken before
    /// fil_names_clear writes FILE_MODIFY.. FILE_CHECKPOINT). Recovery
    /// starts parsing here. Equal to checkpoint_lsn when nothing was
    /// logged between the two.
    pub end_lsn: u64,
    /// 4096 or 8192.
    pub offset: usize,
}

/// Parse the checkpoint block at `offset`; `None` if the server would
/// ignore it (bad CRC, nonzero padding, LSNs out of order).
pub fn parse_checkpoint(
    file_head: &[u8],
    offset: usize,
    first_lsn: u64,
) -> Result<Option<Checkpoint>, RedoError> {
    let block = slice(file_head, offset, CHECKPOINT_CRC + 4)?;
    let checkpoint_lsn = be64(block, 0)?;
    let end_lsn = be64(block, 8)?;
    let crc_ok = crc32c::crc32c(slice(block, 0, CHECKPOINT_CRC)?) == be32(block, CHECKPOINT_CRC)?;
    let valid = crc_ok
        && checkpoint_lsn >= first_lsn
        && end_lsn >= checkpoint_lsn
        && is_zero(slice(block, 16, CHECKPOINT_CRC - 16)?);
    Ok(valid.then_some(Checkpoint {
        checkpoint_lsn,
        end_lsn,
        offset,
    }))
}

/// Header plus both checkpoint slots of a log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFileHeader {
    pub header: LogHeader,
    pub checkpoint_1: Option<Checkpoint>,
    pub checkpoint_2: Option<Checkpoint>,
}

impl LogFileHeader {
    /// Parse the first 12288 bytes of `ib_logfile0`.
    pub fn parse(buf: &[u8]) -> Result<Self, RedoError> {
        let header = LogHeader::parse(buf)?;
        let checkpoint_1 = parse_checkpoint(buf, CHECKPOINT_1, header.first_lsn)?;
        let checkpoint_2 = parse_checkpoint(buf, CHECKPOINT_2, header.first_lsn)?;
        Ok(Self {
            header,
            checkpoint_1,
            checkpoint_2,
        })
    }

    /// The checkpoint recovery would use: the larger checkpoint LSN; on a
    /// tie the later slot (find_checkpoint compares with >=).
    pub fn latest_checkpoint(&self) -> Result<Checkpoint, RedoError> {
        match (self.checkpoint_1, self.checkpoint_2) {
            (Some(a), Some(b)) if a.checkpoint_lsn > b.checkpoint_lsn => Ok(a),
            (_, Some(b)) => Ok(b),
            (Some(a), None) => Ok(a),
            (None, None) => Err(RedoError::NoCheckpoint),
        }
    }
}

fn capacity(file_size: u64) -> Result<u64, RedoError> {
    match file_size.checked_sub(START_OFFSET) {
        Some(c) if c > 0 => Ok(c),
        _ => Err(RedoError::FileTooSmall(file_size)),
    }
}

fn lsn_distance(lsn: u64, first_lsn: u64) -> Result<u64, RedoError> {
    lsn.checked_sub(first_lsn)
        .ok_or(RedoError::LsnBeforeStart { lsn, first_lsn })
}

/// File offset of `lsn` in the circular server log
/// (log0log.h `calc_lsn_offset`).
pub fn lsn_to_offset(lsn: u64, first_lsn: u64, file_size: u64) -> Result<u64, RedoError> {
    Ok(START_OFFSET + lsn_distance(lsn, first_lsn)? % capacity(file_size)?)
}

/// Sequence bit expected at `lsn`: 1 on the first pass through the file,
/// 0 on the second, and so on (log0log.h `get_sequence_bit`).
pub fn sequence_bit(lsn: u64, first_lsn: u64, file_size: u64) -> Result<u8, RedoError> {
    let lap = lsn_distance(lsn, first_lsn)? / capacity(file_size)?;
    Ok(u8::from(lap & 1 == 0))
}

/// First LSN of the lap after the one holding `lsn`: where the file wraps
/// and the sequence bit flips.
pub fn next_wrap_lsn(lsn: u64, first_lsn: u64, file_size: u64) -> Result<u64, RedoError> {
    let cap = capacity(file_size)?;
    let lap = lsn_distance(lsn, first_lsn)? / cap;
    Ok(first_lsn + (lap + 1) * cap)
}

/// The file ranges (offset, length) holding `len` log bytes from `lsn`,
/// split at the wrap point. `len` must not exceed the capacity.
pub fn circular_ranges(
    lsn: u64,
    len: u64,
    first_lsn: u64,
    file_size: u64,
) -> Result<Vec<(u64, u64)>, RedoError> {
    let cap = capacity(file_size)?;
    if len > cap {
        return Err(RedoError::BadHeader("range longer than the log capacity"));
    }
    let offset = lsn_to_offset(lsn, first_lsn, file_size)?;
    let first = len.min(file_size - offset);
    let mut out = vec![(offset, first)];
    if first < len {
        out.push((START_OFFSET, len - first));
    }
    Ok(out)
}

/// Shape of a server's circular log: where LSNs live and which sequence
/// bit they carry. Built from the header's first LSN and the file size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogGeometry {
    pub first_lsn: u64,
    pub file_size: u64,
}

impl LogGeometry {
    pub fn new(first_lsn: u64, file_size: u64) -> Result<Self, RedoError> {
        capacity(file_size)?;
        if first_lsn < FIRST_LSN {
            return Err(RedoError::BadHeader("first LSN below 12288"));
        }
        Ok(Self {
            first_lsn,
            file_size,
        })
    }

    /// Log bytes the file holds before it wraps.
    pub fn capacity(&self) -> u64 {
        self.file_size - START_OFFSET
    }

    pub fn offset(&self, lsn: u64) -> Result<u64, RedoError> {
        lsn_to_offset(lsn, self.first_lsn, self.file_size)
    }

    /// Sequence bit an mtr terminating at `lsn` must carry; 2 (matches no
    /// byte, so parsing stops) for an LSN before the file's first LSN.
    pub fn expected_bit(&self, lsn: u64) -> u8 {
        sequence_bit(lsn, self.first_lsn, self.file_size).unwrap_or(2)
    }

    pub fn next_wrap(&self, lsn: u64) -> Result<u64, RedoError> {
        next_wrap_lsn(lsn, self.first_lsn, self.file_size)
    }

    pub fn ranges(&self, lsn: u64, len: u64) -> Result<Vec<(u64, u64)>, RedoError> {
        circular_ranges(lsn, len, self.first_lsn, self.file_size)
    }
}

/// How an mtr ends: records, sequence byte, [8-byte nonce], CRC-32C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtrFraming {
    Plain,
    Encrypted,
}

impl MtrFraming {
    /// Bytes after the records: sequence byte + nonce + CRC.
    pub fn tail_len(self) -> usize {
        match self {
            MtrFraming::Plain => 5,
            MtrFraming::Encrypted => 13,
        }
    }

    fn nonce_len(self) -> usize {
        self.tail_len() - 5
    }
}

/// One parsed mini-transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtrInfo {
    pub start_lsn: u64,
    /// LSN of the sequence (termination) byte.
    pub seq_lsn: u64,
    /// LSN just past the CRC: where the next mtr starts.
    pub end_lsn: u64,
    /// Payload of a FILE_CHECKPOINT record in this mtr, if any (plain
    /// framing only; encrypted logs keep record bodies encrypted).
    pub file_checkpoint: Option<u64>,
    /// The mtr holds a record that [`tablespace_ops`] reports (plain framing
    /// only): readers re-walk just these mtrs.
    pub has_tablespace_ops: bool,
}

/// Why parsing stopped. `NeedMoreData` means the buffer ended inside an
/// mtr (PREMATURE_EOF: read more and parse again from `end_lsn`); every
/// other reason is the end of the valid log (GOT_EOF) at `end_lsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    NeedMoreData,
    /// A byte 0x00/0x01 where an mtr should start: no mtr written here yet.
    EmptyMtr,
    /// The termination byte is not the bit expected at its LSN: old data
    /// from another lap (or this mtr was overwritten).
    SequenceBit,
    Checksum,
    /// Length field invalid or the mtr reaches MTR_SIZE_MAX.
    BadLength,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedLog {
    pub start_lsn: u64,
    /// End of the last complete, valid mtr.
    pub end_lsn: u64,
    pub mtrs: Vec<MtrInfo>,
    pub stop: StopReason,
}

impl ParsedLog {
    /// Bytes of the input that hold whole valid mtrs.
    pub fn valid_len(&self) -> usize {
        usize::try_from(self.end_lsn - self.start_lsn).unwrap_or(usize::MAX)
    }

    /// The last FILE_CHECKPOINT payload seen, if any.
    pub fn last_file_checkpoint(&self) -> Option<u64> {
        self.mtrs.iter().rev().find_map(|m| m.file_checkpoint)
    }
}

/// Number of bytes of a varint from its first byte (log0recv.cc
/// `mlog_decode_varint_length`): 1 + leading one bits.
fn varint_len(first: u8) -> usize {
    1 + first.leading_ones() as usize
}

/// Decode a redo varint (mtr0log.h `mlog_encode_varint`); `None` if
/// malformed, `Err` if the buffer ends inside it.
fn decode_varint(buf: &[u8], at: usize) -> Result<Option<(u32, usize)>, OutOfBounds> {
    const MIN_2BYTE: u32 = 1 << 7;
    const MIN_3BYTE: u32 = MIN_2BYTE + (1 << 14);
    const MIN_4BYTE: u32 = MIN_3BYTE + (1 << 21);
    const MIN_5BYTE: u32 = MIN_4BYTE + (1 << 28);
    let first = byte(buf, at)?;
    let len = varint_len(first);
    if len > 5 || (len == 5 && first != 0xF0) {
        return Ok(None);
    }
    let rest = slice(buf, at + 1, len - 1)?;
    let tail = rest.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    let value = match len {
        1 => Some(u32::from(first)),
        2 => Some(MIN_2BYTE + ((u32::from(first) & 0x3F) << 8 | tail)),
        3 => Some(MIN_3BYTE + ((u32::from(first) & 0x1F) << 16 | tail)),
        4 => Some(MIN_4BYTE + ((u32::from(first) & 0x0F) << 24 | tail)),
        _ => tail.checked_add(MIN_5BYTE).filter(|_| tail <= !MIN_5BYTE),
    };
    Ok(value.map(|v| (v, len)))
}

/// Where a record's header says its body is: (body start, body length).
/// Short form: low nibble 1..15 = bytes after the type byte. Long form:
/// nibble 0, then a varint V and V + 15 more bytes counted from the varint
/// (so the body is V + 15 - varint length).
fn record_extent(buf: &[u8], at: usize) -> Result<Option<(usize, usize)>, OutOfBounds> {
    let b = byte(buf, at)?;
    let short = usize::from(b & 0x0F);
    if short != 0 {
        return Ok(Some((at + 1, short)));
    }
    let Some((add, vlen)) = decode_varint(buf, at + 1)? else {
        return Ok(None);
    };
    let add = add as usize;
    if add >= MTR_SIZE_MAX {
        return Ok(None);
    }
    Ok(Some((at + 1 + vlen, add + 15 - vlen)))
}

enum MtrOutcome {
    Ok(MtrInfo),
    Stop(StopReason),
}

/// Parse mtrs from `buf`, which holds log bytes starting at `start_lsn` (an
/// mtr boundary). `seq_bit(lsn)` gives the sequence bit expected at an LSN
/// (use [`sequence_bit`] for a server log, `|_| 1` for a backup log).
/// Mirrors log0recv.cc `log_parse_start`.
pub fn parse_mtrs(
    buf: &[u8],
    start_lsn: u64,
    framing: MtrFraming,
    seq_bit: impl Fn(u64) -> u8,
) -> ParsedLog {
    let mut pos = 0usize;
    let mut mtrs = Vec::new();
    let stop = loop {
        let lsn = start_lsn + pos as u64;
        match parse_one(buf, pos, lsn, framing, &seq_bit) {
            MtrOutcome::Ok(m) => {
                pos += (m.end_lsn - m.start_lsn) as usize;
                mtrs.push(m);
            }
            MtrOutcome::Stop(reason) => break reason,
        }
    };
    ParsedLog {
        start_lsn,
        end_lsn: start_lsn + pos as u64,
        mtrs,
        stop,
    }
}

fn parse_one(
    buf: &[u8],
    pos: usize,
    lsn: u64,
    framing: MtrFraming,
    seq_bit: &impl Fn(u64) -> u8,
) -> MtrOutcome {
    let Some(&first) = buf.get(pos) else {
        return MtrOutcome::Stop(StopReason::NeedMoreData);
    };
    if first <= 1 {
        return MtrOutcome::Stop(StopReason::EmptyMtr);
    }
    let seq_pos = match find_termination(buf, pos) {
        Ok(p) => p,
        Err(reason) => return MtrOutcome::Stop(reason),
    };
    let seq_lsn = lsn + (seq_pos - pos) as u64;
    let Some(&seq) = buf.get(seq_pos) else {
        return MtrOutcome::Stop(StopReason::NeedMoreData);
    };
    if seq != seq_bit(seq_lsn) {
        return MtrOutcome::Stop(StopReason::SequenceBit);
    }
    let end = seq_pos + framing.tail_len();
    if end > buf.len() {
        return MtrOutcome::Stop(StopReason::NeedMoreData);
    }
    if !mtr_crc_ok(buf, pos, seq_pos, framing) {
        return MtrOutcome::Stop(StopReason::Checksum);
    }
    let records = buf.get(pos..seq_pos).unwrap_or(&[]);
    let scan = match framing {
        MtrFraming::Plain => scan_records(records),
        MtrFraming::Encrypted => RecordScan::default(),
    };
    MtrOutcome::Ok(MtrInfo {
        start_lsn: lsn,
        seq_lsn,
        end_lsn: lsn + (end - pos) as u64,
        file_checkpoint: scan.file_checkpoint,
        has_tablespace_ops: scan.has_tablespace_ops,
    })
}

/// Walk the record headers to the termination byte (a byte <= 1 where a
/// record would start).
fn find_termination(buf: &[u8], start: usize) -> Result<usize, StopReason> {
    let mut p = start;
    loop {
        if p - start >= MTR_SIZE_MAX {
            return Err(StopReason::BadLength);
        }
        let b = *buf.get(p).ok_or(StopReason::NeedMoreData)?;
        if b <= 1 {
            return Ok(p);
        }
        match record_extent(buf, p) {
            Ok(Some((body, len))) => p = body + len,
            Ok(None) => return Err(StopReason::BadLength),
            Err(_) => return Err(StopReason::NeedMoreData),
        }
    }
}

/// CRC-32C over the records (and the nonce when encrypted), never over the
/// sequence byte; stored big-endian after them (log_parse_start).
fn mtr_crc_ok(buf: &[u8], start: usize, seq_pos: usize, framing: MtrFraming) -> bool {
    let nonce = framing.nonce_len();
    let (Some(records), Some(nonce_bytes)) = (
        buf.get(start..seq_pos),
        buf.get(seq_pos + 1..seq_pos + 1 + nonce),
    ) else {
        return false;
    };
    let crc = crc32c::crc32c_append(crc32c::crc32c(records), nonce_bytes);
    be32(buf, seq_pos + 1 + nonce).is_ok_and(|stored| stored == crc)
}

/// One log record inside an mtr (plain framing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedoRecord<'a> {
    /// First byte: same_page/file flag (bit 7), type, length nibble.
    pub type_byte: u8,
    /// Page records: same page as the previous record (no ids encoded).
    pub same_page: bool,
    pub space_id: u32,
    pub page_no: u32,
    /// Bytes after the type, length and (if present) the page id.
    pub body: &'a [u8],
}

impl RedoRecord<'_> {
    /// File-level record (FILE_CREATE .. FILE_CHECKPOINT): bit 7 set on a
    /// record that does not follow a page record.
    pub fn is_file_op(&self) -> bool {
        self.type_byte & 0x80 != 0 && !self.same_page
    }

    /// Page record type (bits 6..4), e.g. 0x10 INIT_PAGE, 0x30 WRITE.
    pub fn page_op(&self) -> u8 {
        self.type_byte & 0x70
    }
}

/// A tablespace-level event decoded from one record: the file-level records
/// (log0recv.cc `log_parse_file`) and the two page records that mariadb-backup
/// watches while it copies (log0recv.cc `recv_sys_t::parse`, `storing ==
/// BACKUP`: the `first_page_init` and `undo_space_trunc` callbacks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOp<'a> {
    Create {
        space_id: u32,
        name: &'a [u8],
    },
    Delete {
        space_id: u32,
        name: &'a [u8],
    },
    Rename {
        space_id: u32,
        from: &'a [u8],
        to: &'a [u8],
    },
    /// The first change to a tablespace after a checkpoint (and every
    /// checkpoint names the tablespaces changed since the one before).
    Modify {
        space_id: u32,
        name: &'a [u8],
    },
    Checkpoint {
        lsn: u64,
    },
    /// FILE_CHECKPOINT with a zero payload: padding.
    Padding,
    /// INIT_PAGE of page 0: the tablespace was (re)initialised from nothing
    /// (created, or an undo tablespace truncated); every later page of it is
    /// in the log, what the file held before is not.
    FirstPageInit {
        space_id: u32,
    },
    /// EXTENDED/TRIM_PAGES: the file was truncated to `size` pages (undo
    /// tablespace truncation by purge).
    TrimPages {
        space_id: u32,
        size: u32,
    },
}

impl FileOp<'_> {
    /// The tablespace this event is about (`None` for checkpoints, padding).
    pub fn space_id(&self) -> Option<u32> {
        match *self {
            FileOp::Create { space_id, .. }
            | FileOp::Delete { space_id, .. }
            | FileOp::Rename { space_id, .. }
            | FileOp::Modify { space_id, .. }
            | FileOp::FirstPageInit { space_id }
            | FileOp::TrimPages { space_id, .. } => Some(space_id),
            FileOp::Checkpoint { .. } | FileOp::Padding => None,
        }
    }
}

/// Decode a tablespace-level record, `None` if it is not one or is malformed.
pub fn file_op<'a>(rec: &RedoRecord<'a>) -> Option<FileOp<'a>> {
    if rec.same_page {
        return None;
    }
    if !rec.is_file_op() {
        return page_file_op(rec);
    }
    let space_id = rec.space_id;
    let name = rec.body;
    match rec.type_byte & 0xF0 {
        FILE_CHECKPOINT if rec.body.len() == 8 => match be64(rec.body, 0).ok()? {
            0 => Some(FileOp::Padding),
            lsn => Some(FileOp::Checkpoint { lsn }),
        },
        FILE_CHECKPOINT if is_zero(rec.body) => Some(FileOp::Padding),
        FILE_CREATE => Some(FileOp::Create { space_id, name }),
        FILE_DELETE => Some(FileOp::Delete { space_id, name }),
        FILE_MODIFY => Some(FileOp::Modify { space_id, name }),
        FILE_RENAME => {
            let nul = name.iter().position(|&b| b == 0)?;
            Some(FileOp::Rename {
                space_id,
                from: name.get(..nul)?,
                to: name.get(nul + 1..)?,
            })
        }
        _ => None,
    }
}

/// The page records that change what a tablespace's file is, not just a page.
fn page_file_op<'a>(rec: &RedoRecord<'a>) -> Option<FileOp<'a>> {
    match rec.page_op() {
        INIT_PAGE if rec.page_no == 0 => Some(FileOp::FirstPageInit {
            space_id: rec.space_id,
        }),
        EXTENDED if rec.body == [TRIM_PAGES] => Some(FileOp::TrimPages {
            space_id: rec.space_id,
            size: rec.page_no,
        }),
        _ => None,
    }
}

/// The tablespace events of one plain mtr's record bytes (from its start to
/// its sequence byte), in log order; checkpoints and padding left out.
pub fn tablespace_ops(mtr_records: &[u8]) -> impl Iterator<Item = FileOp<'_>> {
    records(mtr_records)
        .filter_map(|r| file_op(&r))
        .filter(|op| op.space_id().is_some())
}

/// Iterator over the records of one plain mtr's record bytes (up to, not
/// including, the sequence byte).
pub struct Records<'a> {
    buf: &'a [u8],
    pos: usize,
    got_page_op: bool,
    space_id: u32,
    page_no: u32,
}

/// Iterate the records of `mtr_records` (bytes from the mtr start to its
/// sequence byte). Stops quietly at the first malformed record.
pub fn records(mtr_records: &[u8]) -> Records<'_> {
    Records {
        buf: mtr_records,
        pos: 0,
        got_page_op: false,
        space_id: 0,
        page_no: 0,
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = RedoRecord<'a>;

    fn next(&mut self) -> Option<RedoRecord<'a>> {
        let at = self.pos;
        let b = byte(self.buf, at).ok().filter(|&b| b > 1)?;
        let (body_at, len) = record_extent(self.buf, at).ok()??;
        let body = self.buf.get(body_at..body_at + len)?;
        self.pos = body_at + len;
        // Bit 7 after a page record means "same page as before".
        if b & 0x80 != 0 && self.got_page_op {
            return Some(RedoRecord {
                type_byte: b,
                same_page: true,
                space_id: self.space_id,
                page_no: self.page_no,
                body,
            });
        }
        // 0xF1 0x00: one-byte FILE_CHECKPOINT padding without ids.
        if b == FILE_CHECKPOINT + 1 && body == [0] {
            return Some(RedoRecord {
                type_byte: b,
                same_page: false,
                space_id: 0,
                page_no: 0,
                body: &[],
            });
        }
        let (space_id, n1) = decode_varint(body, 0).ok()??;
        let (page_no, n2) = decode_varint(body, n1).ok()??;
        self.got_page_op = b & 0x80 == 0;
        self.space_id = space_id;
        self.page_no = page_no;
        Some(RedoRecord {
            type_byte: b,
            same_page: false,
            space_id,
            page_no,
            body: body.get(n1 + n2..)?,
        })
    }
}

#[derive(Default)]
struct RecordScan {
    file_checkpoint: Option<u64>,
    has_tablespace_ops: bool,
}

/// One pass over an mtr's records for what [`MtrInfo`] reports.
fn scan_records(mtr_records: &[u8]) -> RecordScan {
    let mut scan = RecordScan::default();
    for op in records(mtr_records).filter_map(|r| file_op(&r)) {
        match op {
            FileOp::Checkpoint { lsn } => {
                scan.file_checkpoint.get_or_insert(lsn);
            }
            FileOp::Padding => {}
            _ => scan.has_tablespace_ops = true,
        }
    }
    scan
}

/// mariadb-backup's creator string: `snprintf(.., 16, "Backup %u.%u.%u")`,
/// so at most 15 characters.
pub fn backup_creator(major: u32, minor: u32, patch: u32) -> String {
    let mut s = format!("Backup {major}.{minor}.{patch}");
    s.truncate(15);
    s
}

/// The 12288-byte header of a backup's `ib_logfile0` (xtrabackup.cc
/// `log_hdr_init`): format, first LSN = checkpoint LSN, creator, optional
/// encryption header, header CRC; checkpoint slot 1 = {checkpoint, end};
/// slot 2 zero.
pub fn backup_log_header(
    server: Option<&LogHeader>,
    checkpoint_lsn: u64,
    end_lsn: u64,
    creator: &str,
) -> Result<Vec<u8>, RedoError> {
    let creator_room = LOG_HEADER_CREATOR_END - LOG_HEADER_CREATOR;
    if creator.len() > creator_room {
        return Err(RedoError::CreatorTooLong(creator.len()));
    }
    if end_lsn < checkpoint_lsn || checkpoint_lsn < FIRST_LSN {
        return Err(RedoError::BadHeader(
            "need FIRST_LSN <= checkpoint LSN <= end LSN",
        ));
    }
    let mut h = vec![0u8; START_OFFSET as usize];
    // A 10.8 log with an encryption header stays FORMAT_10_8 on disk.
    let format = match server {
        Some(s) if s.format == FORMAT_ENC_11 => FORMAT_ENC_11,
        _ => FORMAT_10_8,
    };
    put(&mut h, 0, &format.to_be_bytes())?;
    put(&mut h, LOG_HEADER_START_LSN, &checkpoint_lsn.to_be_bytes())?;
    put(&mut h, LOG_HEADER_CREATOR, creator.as_bytes())?;
    if let Some(s) = server.filter(|s| s.is_encrypted()) {
        put(&mut h, LOG_HEADER_CREATOR_END, &s.crypt_header)?;
    }
    let crc = crc32c::crc32c(slice(&h, 0, HEADER_CRC)?);
    put(&mut h, HEADER_CRC, &crc.to_be_bytes())?;
    put(&mut h, CHECKPOINT_1, &checkpoint_lsn.to_be_bytes())?;
    put(&mut h, CHECKPOINT_1 + 8, &end_lsn.to_be_bytes())?;
    let crc = crc32c::crc32c(slice(&h, CHECKPOINT_1, CHECKPOINT_CRC)?);
    put(&mut h, CHECKPOINT_1 + CHECKPOINT_CRC, &crc.to_be_bytes())?;
    Ok(h)
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) -> Result<(), OutOfBounds> {
    let len = buf.len();
    let dst = buf.get_mut(at..at + bytes.len()).ok_or(OutOfBounds {
        offset: at,
        need: bytes.len(),
        len,
    })?;
    dst.copy_from_slice(bytes);
    Ok(())
}

/// Streams a backup's linear `ib_logfile0`: the header, then log bytes
/// from the checkpoint LSN on, with every mtr's sequence byte set to 1 so
/// that recovery reads the whole file as its first lap (the CRC does not
/// cover that byte; xtrabackup.cc `xtrabackup_copy_logfile`).
pub struct BackupLogWriter<W: Write> {
    out: W,
    next_lsn: u64,
    framing: MtrFraming,
    scratch: Vec<u8>,
}

impl<W: Write> BackupLogWriter<W> {
    /// Plain (unencrypted) log. `end_lsn` is the server checkpoint's end LSN.
    pub fn new(
        out: W,
        checkpoint_lsn: u64,
        end_lsn: u64,
        creator: &str,
    ) -> Result<Self, RedoError> {
        Self::with_server_header(out, None, checkpoint_lsn, end_lsn, creator)
    }

    /// Like [`Self::new`], keeping the server's format and encryption
    /// header so that copied encrypted mtrs still decrypt.
    pub fn with_server_header(
        mut out: W,
        server: Option<&LogHeader>,
        checkpoint_lsn: u64,
        end_lsn: u64,
        creator: &str,
    ) -> Result<Self, RedoError> {
        out.write_all(&backup_log_header(
            server,
            checkpoint_lsn,
            end_lsn,
            creator,
        )?)?;
        let framing = server.map_or(MtrFraming::Plain, LogHeader::framing);
        Ok(Self {
            out,
            next_lsn: checkpoint_lsn,
            framing,
            scratch: Vec::new(),
        })
    }

    /// LSN the next appended byte must have.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Append `bytes` (log starting at [`Self::next_lsn`]) made of exactly
    /// the mtrs in `mtrs`, as returned by [`parse_mtrs`].
    pub fn append(&mut self, bytes: &[u8], mtrs: &[MtrInfo]) -> Result<(), RedoError> {
        self.check_tiling(bytes.len() as u64, mtrs)?;
        self.scratch.clear();
        self.scratch.extend_from_slice(bytes);
        for m in mtrs {
            let at = (m.seq_lsn - self.next_lsn) as usize;
            let seq = self.scratch.get_mut(at).ok_or(RedoError::NotMtrAligned {
                expected: self.next_lsn,
                detail: "sequence byte outside the bytes",
            })?;
            *seq = 1;
        }
        self.out.write_all(&self.scratch)?;
        self.next_lsn += bytes.len() as u64;
        Ok(())
    }

    /// Append the valid part of a parse result of `buf`.
    pub fn append_parsed(&mut self, buf: &[u8], parsed: &ParsedLog) -> Result<(), RedoError> {
        if parsed.start_lsn != self.next_lsn {
            return Err(RedoError::NotMtrAligned {
                expected: self.next_lsn,
                detail: "parse result starts elsewhere",
            });
        }
        let bytes = buf
            .get(..parsed.valid_len())
            .ok_or(RedoError::NotMtrAligned {
                expected: self.next_lsn,
                detail: "buffer shorter than the parse result",
            })?;
        self.append(bytes, &parsed.mtrs)
    }

    fn check_tiling(&self, len: u64, mtrs: &[MtrInfo]) -> Result<(), RedoError> {
        let bad = |detail| RedoError::NotMtrAligned {
            expected: self.next_lsn,
            detail,
        };
        let mut at = self.next_lsn;
        for m in mtrs {
            if m.start_lsn != at || m.end_lsn <= m.seq_lsn || m.seq_lsn < m.start_lsn {
                return Err(bad("mtrs are not contiguous"));
            }
            if m.end_lsn - m.seq_lsn != self.framing.tail_len() as u64 {
                return Err(bad("mtr tail length does not match the log format"));
            }
            at = m.end_lsn;
        }
        if at != self.next_lsn + len {
            return Err(bad("mtrs do not cover the bytes exactly"));
        }
        Ok(())
    }

    /// Flush and return the writer.
    pub fn finish(mut self) -> Result<W, RedoError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_varint(v: u32) -> Vec<u8> {
        // mtr0log.h mlog_encode_varint, for test vectors only.
        const MIN_2BYTE: u32 = 1 << 7;
        const MIN_3BYTE: u32 = MIN_2BYTE + (1 << 14);
        const MIN_4BYTE: u32 = MIN_3BYTE + (1 << 21);
        const MIN_5BYTE: u32 = MIN_4BYTE + (1 << 28);
        if v < MIN_2BYTE {
            vec![v as u8]
        } else if v < MIN_3BYTE {
            let i = v - MIN_2BYTE;
            vec![0x80 | (i >> 8) as u8, i as u8]
        } else if v < MIN_4BYTE {
            let i = v - MIN_3BYTE;
            vec![0xC0 | (i >> 16) as u8, (i >> 8) as u8, i as u8]
        } else if v < MIN_5BYTE {
            let i = v - MIN_4BYTE;
            vec![
                0xE0 | (i >> 24) as u8,
                (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            ]
        } else {
            let i = v - MIN_5BYTE;
            let mut out = vec![0xF0];
            out.extend_from_slice(&i.to_be_bytes());
            out
        }
    }

    #[test]
    fn varint_round_trip() {
        for v in [
            0u32,
            1,
            127,
            128,
            300,
            16511,
            16512,
            2_113_663,
            2_113_664,
            270_549_119,
            270_549_120,
            u32::MAX,
        ] {
            let enc = encode_varint(v);
            assert_eq!(
                decode_varint(&enc, 0).ok().flatten(),
                Some((v, enc.len())),
                "value {v}"
            );
        }
        assert_eq!(decode_varint(&[0xF8, 0, 0, 0, 0], 0).ok().flatten(), None);
    }

    fn mtr(records: &[u8], seq: u8) -> Vec<u8> {
        let mut v = records.to_vec();
        v.push(seq);
        v.extend_from_slice(&crc32c::crc32c(records).to_be_bytes());
        v
    }

    fn file_checkpoint_mtr(lsn: u64, seq: u8) -> Vec<u8> {
        let mut r = vec![0xFA, 0, 0];
        r.extend_from_slice(&lsn.to_be_bytes());
        mtr(&r, seq)
    }

    #[test]
    fn parses_file_checkpoint_and_stops_at_zero() {
        let mut log = file_checkpoint_mtr(20000, 1);
        assert_eq!(log.len() as u64, SIZE_OF_FILE_CHECKPOINT);
        log.extend_from_slice(&[0u8; 8]);
        let p = parse_mtrs(&log, 20000, MtrFraming::Plain, |_| 1);
        assert_eq!(p.stop, StopReason::EmptyMtr);
        assert_eq!(p.end_lsn, 20016);
        assert_eq!(p.mtrs.len(), 1);
        assert_eq!(p.mtrs[0].seq_lsn, 20011);
        assert_eq!(p.mtrs[0].file_checkpoint, Some(20000));
    }

    #[test]
    fn long_record_length_form() {
        // WRITE record (0x30) for page 5:7 with offset 100 and 40 data bytes:
        // body = space(1) + page(1) + offset(1) + 40 = 43 bytes > 15, so the
        // length nibble is 0 and the varint holds 43 + 1 - 15 = 29.
        let mut r = vec![0x30, 29, 5, 7, 100];
        r.extend_from_slice(&[0xAB; 40]);
        let m = mtr(&r, 1);
        let p = parse_mtrs(&m, 50000, MtrFraming::Plain, |_| 1);
        assert_eq!(p.end_lsn, 50000 + m.len() as u64, "{:?}", p.stop);
        let recs: Vec<_> = records(&r).collect();
        assert_eq!(recs.len(), 1);
        assert_eq!((recs[0].space_id, recs[0].page_no), (5, 7));
        assert_eq!(recs[0].body.len(), 41);
    }

    #[test]
    fn sequence_bit_and_crc_failures() {
        let m = file_checkpoint_mtr(20000, 0);
        let p = parse_mtrs(&m, 20000, MtrFraming::Plain, |_| 1);
        assert_eq!((p.stop, p.end_lsn), (StopReason::SequenceBit, 20000));
        let mut m = file_checkpoint_mtr(20000, 1);
        m[5] ^= 1;
        let p = parse_mtrs(&m, 20000, MtrFraming::Plain, |_| 1);
        assert_eq!(p.stop, StopReason::Checksum);
        let m = file_checkpoint_mtr(20000, 1);
        let p = parse_mtrs(m.get(..14).unwrap_or(&[]), 20000, MtrFraming::Plain, |_| 1);
        assert_eq!(p.stop, StopReason::NeedMoreData);
    }

    /// One record: type (high nibble) + length + space id, page number, tail.
    fn record(kind: u8, space: u32, page: u32, tail: &[u8]) -> Vec<u8> {
        let mut body = encode_varint(space);
        body.extend(encode_varint(page));
        body.extend_from_slice(tail);
        if (1..16).contains(&body.len()) {
            let mut r = vec![kind | body.len() as u8];
            r.extend(body);
            return r;
        }
        let v = encode_varint((body.len() - 15) as u32);
        let v = encode_varint((body.len() + v.len() - 15) as u32);
        let mut r = vec![kind];
        r.extend(v);
        r.extend(body);
        r
    }

    fn ops_of(recs: &[u8]) -> Vec<FileOp<'_>> {
        tablespace_ops(recs).collect()
    }

    #[test]
    fn decodes_create_rename_delete_modify() {
        let mut recs = record(FILE_CREATE, 5, 0, b"./test/t1.ibd");
        recs.extend(record(
            FILE_RENAME,
            5,
            0,
            b"./test/t1.ibd\0./test/#sql-ib9.ibd",
        ));
        recs.extend(record(FILE_DELETE, 300, 0, b"./test/old.ibd"));
        recs.extend(record(FILE_MODIFY, 70_000, 0, b"./test/t2.ibd"));
        assert_eq!(
            ops_of(&recs),
            [
                FileOp::Create {
                    space_id: 5,
                    name: b"./test/t1.ibd"
                },
                FileOp::Rename {
                    space_id: 5,
                    from: b"./test/t1.ibd",
                    to: b"./test/#sql-ib9.ibd"
                },
                FileOp::Delete {
                    space_id: 300,
                    name: b"./test/old.ibd"
                },
                FileOp::Modify {
                    space_id: 70_000,
                    name: b"./test/t2.ibd"
                },
            ]
        );
    }

    #[test]
    fn page_zero_init_and_trim_are_tablespace_ops() {
        // INIT_PAGE of page 0 (a tablespace built from nothing), INIT_PAGE of
        // page 3 (an ordinary page), then TRIM_PAGES of undo space 2 to 640.
        let mut recs = record(INIT_PAGE, 7, 0, &[]);
        recs.extend(record(INIT_PAGE, 7, 3, &[]));
        recs.extend(record(EXTENDED, 2, 640, &[TRIM_PAGES]));
        recs.extend(record(EXTENDED, 2, 640, &[2]));
        assert_eq!(
            ops_of(&recs),
            [
                FileOp::FirstPageInit { space_id: 7 },
                FileOp::TrimPages {
                    space_id: 2,
                    size: 640
                },
            ]
        );
    }

    #[test]
    fn same_page_records_are_not_file_records() {
        // After a page record, bit 7 means "same page": 0x9n is then an
        // INIT_PAGE-typed same-page record, not FILE_DELETE, and a same-page
        // EXTENDED record with a TRIM_PAGES byte truncates nothing.
        let mut recs = record(0x30, 9, 0, &[100, 0xAB]);
        recs.extend_from_slice(&[0x90 | 1, 0]);
        recs.extend_from_slice(&[0x80 | EXTENDED | 1, TRIM_PAGES]);
        let all: Vec<_> = records(&recs).collect();
        assert_eq!(all.len(), 3);
        assert!(all[1].same_page && all[2].same_page);
        assert!(ops_of(&recs).is_empty());
    }

    #[test]
    fn parse_flags_only_mtrs_with_tablespace_ops() {
        let mut log = mtr(&record(0x30, 9, 4, &[100, 0xAB]), 1);
        let mut create = record(FILE_CREATE, 12, 0, b"./d/t.ibd");
        create.extend(record(INIT_PAGE, 12, 0, &[]));
        log.extend(mtr(&create, 1));
        log.extend(file_checkpoint_mtr(20000, 1));
        let p = parse_mtrs(&log, 20000, MtrFraming::Plain, |_| 1);
        assert_eq!(p.mtrs.len(), 3);
        let flags: Vec<_> = p.mtrs.iter().map(|m| m.has_tablespace_ops).collect();
        assert_eq!(flags, [false, true, false]);
        assert_eq!(p.last_file_checkpoint(), Some(20000));
        let second = &p.mtrs[1];
        let from = (second.start_lsn - 20000) as usize;
        let to = (second.seq_lsn - 20000) as usize;
        assert_eq!(
            ops_of(&log[from..to]),
            [
                FileOp::Create {
                    space_id: 12,
                    name: b"./d/t.ibd"
                },
                FileOp::FirstPageInit { space_id: 12 },
            ]
        );
    }

    #[test]
    fn circular_math() {
        let size = START_OFFSET + 1000;
        assert_eq!(lsn_to_offset(20000, 20000, size).ok(), Some(12288));
        assert_eq!(lsn_to_offset(21000, 20000, size).ok(), Some(12288));
        assert_eq!(sequence_bit(20999, 20000, size).ok(), Some(1));
        assert_eq!(sequence_bit(21000, 20000, size).ok(), Some(0));
        assert_eq!(next_wrap_lsn(20500, 20000, size).ok(), Some(21000));
        let r = circular_ranges(20900, 300, 20000, size).ok();
        assert_eq!(r, Some(vec![(12288 + 900, 100), (12288, 200)]));
        assert!(lsn_to_offset(100, 20000, size).is_err());
    }

    #[test]
    fn writer_rewrites_sequence_bytes() {
        let mut log = file_checkpoint_mtr(20000, 0);
        log.extend(file_checkpoint_mtr(20000, 0));
        let p = parse_mtrs(&log, 20000, MtrFraming::Plain, |_| 0);
        assert_eq!(p.mtrs.len(), 2);
        let mut w =
            BackupLogWriter::new(Vec::new(), 20000, 20000, "Backup 10.11.19").expect("header");
        w.append_parsed(&log, &p).expect("append");
        let out = w.finish().expect("finish");
        let body = out.get(12288..).unwrap_or(&[]);
        let again = parse_mtrs(body, 20000, MtrFraming::Plain, |_| 1);
        assert_eq!(again.end_lsn, 20032);
        let hdr = LogFileHeader::parse(&out).expect("parse header");
        assert_eq!(hdr.header.creator, "Backup 10.11.19");
        assert_eq!(
            hdr.latest_checkpoint().ok().map(|c| c.offset),
            Some(CHECKPOINT_1)
        );
    }

    #[test]
    fn creator_truncates_like_snprintf() {
        assert_eq!(backup_creator(10, 11, 19), "Backup 10.11.19");
        assert_eq!(backup_creator(10, 11, 100), "Backup 10.11.10");
    }
}
