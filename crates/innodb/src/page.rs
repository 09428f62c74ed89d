//! Tablespace pages: FSP flags of page 0, page header fields and checksum
//! validation as MariaDB 10.11 does it.
//!
//! Sources (MariaDB 10.11.18): storage/innobase/include/fil0fil.h (page
//! header, `fil_space_t::logical_size/physical_size/zip_size`),
//! include/fsp0types.h (flag bits), include/fsp0fsp.h (FSP header, XDES),
//! buf/buf0buf.cc `buf_page_is_corrupted`, buf/buf0checksum.cc,
//! page/page0zip.cc `page_zip_verify_checksum`, fil/fil0crypt.cc
//! (`fil_space_read_crypt_data`, `fil_space_verify_crypt_checksum`) and
//! extra/mariabackup/fil_cur.cc `page_is_corrupted` (what the backup tool
//! accepts while copying).

use super::bytes::{be16, be32, be64, byte, is_zero, slice, OutOfBounds};

// Page header and trailer (fil0fil.h).
pub const FIL_PAGE_SPACE_OR_CHKSUM: usize = 0;
pub const FIL_PAGE_OFFSET: usize = 4;
pub const FIL_PAGE_LSN: usize = 16;
pub const FIL_PAGE_TYPE: usize = 24;
pub const FIL_PAGE_FILE_FLUSH_LSN_OR_KEY_VERSION: usize = 26;
pub const FIL_PAGE_SPACE_ID: usize = 34;
pub const FIL_PAGE_DATA: usize = 38;
/// Legacy trailer: old checksum (4) + low 32 bits of the LSN (4).
pub const FIL_PAGE_END_LSN_OLD_CHKSUM: usize = 8;
/// full_crc32 trailer: low 32 bits of the LSN at -8, CRC-32C at -4.
pub const FIL_PAGE_FCRC32_END_LSN: usize = 8;
pub const FIL_PAGE_FCRC32_CHECKSUM: usize = 4;

// FSP header on page 0 (fsp0fsp.h), FSP_HEADER_OFFSET = FIL_PAGE_DATA.
pub const FSP_HEADER_OFFSET: usize = FIL_PAGE_DATA;
pub const FSP_SPACE_ID: usize = FSP_HEADER_OFFSET;
pub const FSP_SIZE: usize = FSP_HEADER_OFFSET + 8;
pub const FSP_FREE_LIMIT: usize = FSP_HEADER_OFFSET + 12;
pub const FSP_SPACE_FLAGS: usize = FSP_HEADER_OFFSET + 16;

// Page types (fil0fil.h) that change how a page is checksummed.
pub const FIL_PAGE_PAGE_COMPRESSED: u16 = 34354;
pub const FIL_PAGE_PAGE_COMPRESSED_ENCRYPTED: u16 = 37401;
/// full_crc32 page_compressed pages set bit 15 of FIL_PAGE_TYPE and keep
/// the payload length in 256-byte units in the low bits
/// (`FIL_PAGE_COMPRESS_FCRC32_MARKER`, buf0buf.h `buf_page_full_crc32_size`).
const FCRC32_COMPRESSED_MARKER: u16 = 1 << 15;

/// `innodb_checksum_algorithm=none` writes this in both checksum fields
/// (buf0buf.h BUF_NO_CHECKSUM_MAGIC).
pub const NO_CHECKSUM_MAGIC: u32 = 0xDEAD_BEEF;

/// Smallest page a parser will look at: header plus trailer.
const MIN_PAGE: usize = FIL_PAGE_DATA + FIL_PAGE_END_LSN_OLD_CHKSUM;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error(transparent)]
    OutOfBounds(#[from] OutOfBounds),
    #[error("page is {got} bytes, the tablespace format says {expected}")]
    WrongLength { expected: usize, got: usize },
    #[error("invalid FSP_SPACE_FLAGS {0:#x}")]
    InvalidFlags(u32),
    /// Page 0 not written yet (a table created after the last checkpoint;
    /// its pages come back from redo).
    #[error("page 0 is all zero: tablespace not flushed yet")]
    AllZeroPage0,
}

/// FSP_SPACE_FLAGS of page 0 (fsp0types.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FspFlags(pub u32);

impl FspFlags {
    // full_crc32 layout: bits 0..3 PAGE_SSIZE, bit 4 marker, bits 5..7 algo.
    const FCRC32_MARKER: u32 = 1 << 4;
    // Legacy layout: bit 0 POST_ANTELOPE, 1..4 ZIP_SSIZE, 5 ATOMIC_BLOBS,
    // 6..9 PAGE_SSIZE, 10..15 reserved, 16 PAGE_COMPRESSION.
    const POST_ANTELOPE: u32 = 1;
    const ATOMIC_BLOBS: u32 = 1 << 5;
    const PAGE_COMPRESSION: u32 = 1 << 16;
    const LEGACY_WIDTH: u32 = 17;

    /// Bit 4: every page carries a CRC-32C of itself in its last 4 bytes.
    pub fn is_full_crc32(self) -> bool {
        self.0 & Self::FCRC32_MARKER != 0
    }

    fn page_ssize(self) -> u32 {
        if self.is_full_crc32() {
            self.0 & 0xF
        } else {
            (self.0 >> 6) & 0xF
        }
    }

    fn zip_ssize(self) -> u32 {
        if self.is_full_crc32() {
            0
        } else {
            (self.0 >> 1) & 0xF
        }
    }

    /// `innodb_page_size` the file was made for. `fil_space_t::logical_size`:
    /// full_crc32 encodes 16 KiB as 5 and has no meaning for 0; the legacy
    /// format encodes 16 KiB as 0 and rejects 5.
    pub fn logical_size(self) -> Option<usize> {
        match (self.page_ssize(), self.is_full_crc32()) {
            (3, _) => Some(4096),
            (4, _) => Some(8192),
            (5, true) | (0, false) => Some(16384),
            (6, _) => Some(32768),
            (7, _) => Some(65536),
            _ => None,
        }
    }

    /// ROW_FORMAT=COMPRESSED page size (`512 << ZIP_SSIZE`), never with
    /// full_crc32.
    pub fn zip_size(self) -> Option<usize> {
        match self.zip_ssize() {
            0 => None,
            z => Some(512usize << z),
        }
    }

    /// Bytes per page in the file: the zip size for ROW_FORMAT=COMPRESSED,
    /// else the logical size (`fil_space_t::physical_size`).
    pub fn physical_size(self) -> Option<usize> {
        self.zip_size().or_else(|| self.logical_size())
    }

    /// full_crc32 page_compressed algorithm (bits 5..7; fsp0types.h
    /// PAGE_ZLIB_ALGORITHM=1 .. PAGE_SNAPPY_ALGORITHM=6), 0 = none. The legacy
    /// format keeps the algorithm per page, not in the flags.
    pub fn fcrc32_compression_algo(self) -> u32 {
        if self.is_full_crc32() {
            (self.0 >> 5) & 0x7
        } else {
            0
        }
    }

    /// PAGE_COMPRESSED=1 (`fil_space_t::is_compressed`).
    pub fn is_page_compressed(self) -> bool {
        if self.is_full_crc32() {
            self.fcrc32_compression_algo() != 0
        } else {
            self.0 & Self::PAGE_COMPRESSION != 0
        }
    }

    /// A close reading of `fil_space_t::is_valid_flags`, without the special
    /// case for buggy MariaDB 10.1.0-10.1.20 flags (those are converted by
    /// the server on first open and do not appear in 10.11 files).
    pub fn is_valid(self) -> bool {
        if self.is_full_crc32() {
            // Bits above the algorithm field must be 0, algorithm <= 6.
            return self.logical_size().is_some() && (self.0 >> 5) <= 6;
        }
        if self.0 == 0 {
            return true;
        }
        if self.0 >> Self::LEGACY_WIDTH != 0 {
            return false;
        }
        let blobs_without_antelope = self.0 & (Self::POST_ANTELOPE | Self::ATOMIC_BLOBS);
        if blobs_without_antelope == Self::ATOMIC_BLOBS {
            return false;
        }
        // Reserved bits 10..15: only bit 10 (old DATA_DIR) may be set.
        if (self.0 >> 10) & 0x3F & !1 != 0 {
            return false;
        }
        let Some(logical) = self.logical_size() else {
            return false;
        };
        match self.zip_size() {
            None => true,
            Some(z) => {
                let both = Self::POST_ANTELOPE | Self::ATOMIC_BLOBS;
                z <= logical && self.0 & both == both
            }
        }
    }
}

/// Encryption metadata stored on page 0 (fil0crypt.cc
/// `fil_space_read_crypt_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptData {
    /// 0 = CRYPT_SCHEME_UNENCRYPTED, 1 = CRYPT_SCHEME_1.
    pub scheme: u8,
    pub min_key_version: u32,
    pub key_id: u32,
    /// fil_encryption_t: 0 DEFAULT, 1 ON, 2 OFF.
    pub encryption: u8,
}

impl CryptData {
    /// What mariadb-backup checks before treating a legacy page with a
    /// nonzero key version as encrypted (fil_cur.cc).
    pub fn is_encrypted(&self) -> bool {
        self.scheme != 0
    }
}

const CRYPT_MAGIC: [u8; 6] = [b's', 0x0E, 0x0C, b'R', b'E', b't'];
const CRYPT_IV_LEN: usize = 16;

/// Everything about a tablespace that page validation needs, from page 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceFormat {
    pub space_id: u32,
    pub flags: FspFlags,
    pub logical_size: usize,
    pub physical_size: usize,
    /// `Some` for ROW_FORMAT=COMPRESSED tablespaces.
    pub zip_size: Option<usize>,
    /// FSP_SIZE: pages in the tablespace when page 0 was last written.
    pub size_in_pages: u32,
    pub crypt: Option<CryptData>,
}

/// Read FSP_SPACE_FLAGS and the space id; needs only the first 58 bytes of
/// page 0, so a caller can learn the page size before reading a whole page.
pub fn read_fsp_flags(page0: &[u8]) -> Result<(u32, FspFlags), PageError> {
    let space_id = be32(page0, FSP_SPACE_ID)?;
    let flags = FspFlags(be32(page0, FSP_SPACE_FLAGS)?);
    Ok((space_id, flags))
}

impl SpaceFormat {
    /// Decode page 0 of a tablespace (`page0` must hold at least one
    /// physical page; extra bytes are ignored).
    pub fn from_page0(page0: &[u8]) -> Result<Self, PageError> {
        let head = slice(page0, 0, MIN_PAGE)?;
        // A written page 0 of any page size has its type (FSP_HDR) and flags in its
        // first bytes: a zero head means page 0 is not on disk yet, even when later
        // pages are (pages reach the file in any order). Reading flags 0 from it would
        // mistake a full_crc32 file for an old-format one.
        if is_zero(head) {
            return Err(PageError::AllZeroPage0);
        }
        let (space_id, flags) = read_fsp_flags(page0)?;
        let mut fmt = Self::from_flags(space_id, flags)?;
        fmt.size_in_pages = be32(page0, FSP_SIZE)?;
        let page = slice(page0, 0, fmt.physical_size)?;
        fmt.crypt = read_crypt_data(page, &fmt)?;
        Ok(fmt)
    }

    /// Format from known flags (no encryption metadata, size unknown).
    pub fn from_flags(space_id: u32, flags: FspFlags) -> Result<Self, PageError> {
        if !flags.is_valid() {
            return Err(PageError::InvalidFlags(flags.0));
        }
        let logical_size = flags
            .logical_size()
            .ok_or(PageError::InvalidFlags(flags.0))?;
        let physical_size = flags
            .physical_size()
            .ok_or(PageError::InvalidFlags(flags.0))?;
        Ok(Self {
            space_id,
            flags,
            logical_size,
            physical_size,
            zip_size: flags.zip_size(),
            size_in_pages: 0,
            crypt: None,
        })
    }

    pub fn is_full_crc32(&self) -> bool {
        self.flags.is_full_crc32()
    }

    pub fn is_page_compressed(&self) -> bool {
        self.flags.is_page_compressed()
    }

    /// Tablespace-level encryption indication: crypt data on page 0 with
    /// CRYPT_SCHEME_1. (full_crc32 pages also carry a per-page key version
    /// in bytes 0..3, see [`fcrc32_key_version`].)
    pub fn is_encrypted(&self) -> bool {
        self.crypt.is_some_and(|c| c.is_encrypted())
    }
}

/// Pages per extent: 1 MiB for pages below 16 KiB, else 64 pages
/// (fsp0types.h FSP_EXTENT_SIZE).
fn extent_pages(logical_size: usize) -> usize {
    if logical_size < 16384 {
        (1 << 20) / logical_size
    } else {
        64
    }
}

/// Where the crypt data sits on page 0: after the FSP header and the XDES
/// array (fsp0fsp.h `fsp_header_get_encryption_offset`; fil0crypt.cc adds
/// FSP_HEADER_OFFSET once more).
fn crypt_data_offset(fmt: &SpaceFormat) -> usize {
    const FSP_HEADER_SIZE: usize = 32 + 5 * 16; // 5 list base nodes of 16 bytes
    const XDES_ARR_OFFSET: usize = FSP_HEADER_OFFSET + FSP_HEADER_SIZE;
    const XDES_BITMAP: usize = 24;
    let extent = extent_pages(fmt.logical_size);
    let xdes_size = XDES_BITMAP + (extent * 2).div_ceil(8);
    let descr_page = fmt.zip_size.unwrap_or(fmt.logical_size);
    FSP_HEADER_OFFSET + XDES_ARR_OFFSET + xdes_size * descr_page / extent
}

fn read_crypt_data(page0: &[u8], fmt: &SpaceFormat) -> Result<Option<CryptData>, PageError> {
    let at = crypt_data_offset(fmt);
    let Ok(magic) = slice(page0, at, CRYPT_MAGIC.len()) else {
        return Ok(None);
    };
    if magic != CRYPT_MAGIC {
        return Ok(None);
    }
    let p = at + CRYPT_MAGIC.len();
    let scheme = byte(page0, p)?;
    let iv_len = usize::from(byte(page0, p + 1)?);
    // The server ignores crypt data with an unknown scheme or IV length.
    if scheme > 1 || iv_len != CRYPT_IV_LEN {
        return Ok(None);
    }
    let q = p + 2 + iv_len;
    Ok(Some(CryptData {
        scheme,
        min_key_version: be32(page0, q)?,
        key_id: be32(page0, q + 4)?,
        encryption: byte(page0, q + 8)?,
    }))
}

/// FIL_PAGE_LSN: LSN of the newest change written to this page.
pub fn page_lsn(page: &[u8]) -> Result<u64, PageError> {
    Ok(be64(page, FIL_PAGE_LSN)?)
}

/// FIL_PAGE_OFFSET: the page number stored in the page.
pub fn page_number(page: &[u8]) -> Result<u32, PageError> {
    Ok(be32(page, FIL_PAGE_OFFSET)?)
}

/// FIL_PAGE_TYPE.
pub fn page_type(page: &[u8]) -> Result<u16, PageError> {
    Ok(be16(page, FIL_PAGE_TYPE)?)
}

/// FIL_PAGE_SPACE_ID as stored in the page header.
pub fn page_space_id(page: &[u8]) -> Result<u32, PageError> {
    Ok(be32(page, FIL_PAGE_SPACE_ID)?)
}

/// full_crc32 encryption key version (bytes 0..3, 0 = not encrypted).
pub fn fcrc32_key_version(page: &[u8]) -> Result<u32, PageError> {
    Ok(be32(page, FIL_PAGE_SPACE_OR_CHKSUM)?)
}

pub fn is_all_zero(page: &[u8]) -> bool {
    is_zero(page)
}

/// Why a page failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// Stored checksum does not match any accepted algorithm.
    Checksum,
    /// Low 32 bits of FIL_PAGE_LSN differ from the copy in the trailer
    /// (a torn write, usually).
    LsnMismatch,
    /// full_crc32 compressed length not below the page size.
    CompressedLength,
    /// Post-encryption checksum of a legacy encrypted page is wrong.
    EncryptedChecksum,
    /// FIL_PAGE_OFFSET is not the page's position in the file.
    PageNumber { expected: u32, found: u32 },
}

/// Why a page could not be validated without more than this library has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unverifiable {
    /// Legacy (non-full_crc32) PAGE_COMPRESSED page: no checksum over the
    /// compressed image; the server and mariadb-backup validate after
    /// decompressing, which needs the compression library.
    LegacyPageCompressed,
    /// Legacy PAGE_COMPRESSED + encrypted page: no checksum before
    /// decryption and decompression (fil0crypt.cc says so explicitly).
    LegacyPageCompressedEncrypted,
    /// Doublewrite buffer of the system tablespace (copies of other pages,
    /// possibly of other formats); mariadb-backup skips these.
    DoublewriteArea,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageStatus {
    Valid,
    AllZero,
    Corrupt(Corruption),
    Unverifiable(Unverifiable),
}

impl PageStatus {
    /// Whether a copier may keep the page as read (anything but Corrupt).
    pub fn is_acceptable(self) -> bool {
        !matches!(self, PageStatus::Corrupt(_))
    }
}

/// Validate one physical page against its tablespace format, accepting what
/// `buf_page_is_corrupted` accepts with the default (non-strict)
/// innodb_checksum_algorithm and without the "LSN in the future" check,
/// which is what mariadb-backup does (fil_cur.cc passes check_lsn=false).
pub fn check_page(page: &[u8], fmt: &SpaceFormat) -> Result<PageStatus, PageError> {
    if page.len() != fmt.physical_size || page.len() < MIN_PAGE {
        return Err(PageError::WrongLength {
            expected: fmt.physical_size,
            got: page.len(),
        });
    }
    if fmt.is_full_crc32() {
        return check_full_crc32(page);
    }
    check_legacy(page, fmt)
}

/// [`check_page`] plus the checks mariadb-backup adds for a page read at a
/// known position (fil_cur.cc `page_is_corrupted`): the page number must
/// match (not checked for the system tablespace, which may span files), and
/// the doublewrite area of the system tablespace is not held against it.
pub fn check_page_at(
    page: &[u8],
    page_no: u32,
    fmt: &SpaceFormat,
) -> Result<PageStatus, PageError> {
    let status = check_page(page, fmt)?;
    if fmt.space_id == 0 {
        let extent = extent_pages(fmt.logical_size) as u64;
        let in_doublewrite = (extent..extent * 3).contains(&u64::from(page_no));
        if in_doublewrite && !matches!(status, PageStatus::Valid | PageStatus::AllZero) {
            return Ok(PageStatus::Unverifiable(Unverifiable::DoublewriteArea));
        }
        return Ok(status);
    }
    let found = page_number(page)?;
    if found != page_no && !is_zero(page) {
        return Ok(PageStatus::Corrupt(Corruption::PageNumber {
            expected: page_no,
            found,
        }));
    }
    Ok(status)
}

/// Length covered by the full_crc32 checksum (buf0buf.h
/// `buf_page_full_crc32_size`): the whole page, or the compressed payload
/// length for page_compressed pages.
fn full_crc32_len(page: &[u8]) -> Result<(usize, bool), PageStatus> {
    let t = be16(page, FIL_PAGE_TYPE).map_err(|_| PageStatus::Corrupt(Corruption::Checksum))?;
    if t & FCRC32_COMPRESSED_MARKER == 0 {
        return Ok((page.len(), false));
    }
    let len = usize::from(t & !FCRC32_COMPRESSED_MARKER) << 8;
    if len < page.len() && len >= MIN_PAGE {
        Ok((len, true))
    } else {
        Err(PageStatus::Corrupt(Corruption::CompressedLength))
    }
}

fn check_full_crc32(page: &[u8]) -> Result<PageStatus, PageError> {
    let (len, compressed) = match full_crc32_len(page) {
        Ok(v) => v,
        Err(status) => return Ok(status),
    };
    let stored = be32(page, len - FIL_PAGE_FCRC32_CHECKSUM)?;
    if stored == 0 && !compressed && is_zero(page) {
        return Ok(PageStatus::AllZero);
    }
    let body = slice(page, 0, len - FIL_PAGE_FCRC32_CHECKSUM)?;
    if crc32c::crc32c(body) != stored {
        return Ok(PageStatus::Corrupt(Corruption::Checksum));
    }
    // The LSN copy in the trailer is only meaningful for plain pages: an
    // encrypted page (key version in bytes 0..3) or a compressed one has
    // other bytes there.
    let plain = !compressed && fcrc32_key_version(page)? == 0;
    if plain && be32(page, FIL_PAGE_LSN + 4)? != be32(page, len - FIL_PAGE_FCRC32_END_LSN)? {
        return Ok(PageStatus::Corrupt(Corruption::LsnMismatch));
    }
    Ok(PageStatus::Valid)
}

fn check_legacy(page: &[u8], fmt: &SpaceFormat) -> Result<PageStatus, PageError> {
    let ptype = page_type(page)?;
    let page_no = page_number(page)?;
    let key_version = be32(page, FIL_PAGE_FILE_FLUSH_LSN_OR_KEY_VERSION)?;
    // Encrypted pages are recognised like mariadb-backup does: never page 0
    // (whose bytes 26.. hold the flush LSN in ibdata1), nonzero key version,
    // encrypted tablespace.
    if page_no != 0 && key_version != 0 && fmt.is_encrypted() {
        if ptype == FIL_PAGE_PAGE_COMPRESSED_ENCRYPTED {
            return Ok(PageStatus::Unverifiable(
                Unverifiable::LegacyPageCompressedEncrypted,
            ));
        }
        return Ok(if crypt_checksum_ok(page, fmt)? {
            PageStatus::Valid
        } else {
            PageStatus::Corrupt(Corruption::EncryptedChecksum)
        });
    }
    let pc_type = ptype == FIL_PAGE_PAGE_COMPRESSED || ptype == FIL_PAGE_PAGE_COMPRESSED_ENCRYPTED;
    if pc_type && fmt.is_page_compressed() {
        return Ok(PageStatus::Unverifiable(
            if ptype == FIL_PAGE_PAGE_COMPRESSED {
                Unverifiable::LegacyPageCompressed
            } else {
                Unverifiable::LegacyPageCompressedEncrypted
            },
        ));
    }
    if fmt.zip_size.is_some() {
        return Ok(check_zip(page));
    }
    check_crc32_or_innodb(page)
}

/// Legacy uncompressed page: `crc32` (CRC-32C over two ranges, in both
/// fields), the old `innodb` fold checksums, or `none`.
fn check_crc32_or_innodb(page: &[u8]) -> Result<PageStatus, PageError> {
    let size = page.len();
    let trailer = size - FIL_PAGE_END_LSN_OLD_CHKSUM;
    if be32(page, FIL_PAGE_LSN + 4)? != be32(page, trailer + 4)? {
        return Ok(PageStatus::Corrupt(Corruption::LsnMismatch));
    }
    let field1 = be32(page, FIL_PAGE_SPACE_OR_CHKSUM)?;
    let field2 = be32(page, trailer)?;
    if field1 == 0 && field2 == 0 {
        if is_zero(page) {
            return Ok(PageStatus::AllZero);
        }
        // Old servers wrote FIL_PAGE_FILE_FLUSH_LSN (26..33) on otherwise
        // empty pages of the system tablespace: still an empty page.
        let flush_lsn = FIL_PAGE_FILE_FLUSH_LSN_OR_KEY_VERSION;
        if is_zero(slice(page, 0, flush_lsn)?)
            && is_zero(slice(page, flush_lsn + 8, size - flush_lsn - 8)?)
        {
            return Ok(PageStatus::Valid);
        }
    }
    if field1 == NO_CHECKSUM_MAGIC && field2 == NO_CHECKSUM_MAGIC {
        return Ok(PageStatus::Valid);
    }
    let crc = legacy_crc32(page)?;
    let crc_both = field1 == crc && field2 == crc;
    // Very old InnoDB stored the LSN high word as field2; none skips it.
    let field2_is_checksum = field2 != be32(page, FIL_PAGE_LSN)? && field2 != NO_CHECKSUM_MAGIC;
    if field2_is_checksum && !crc_both && field2 != innodb_old_checksum(page)? {
        return Ok(PageStatus::Corrupt(Corruption::Checksum));
    }
    let field1_is_checksum = field1 != 0 && field1 != NO_CHECKSUM_MAGIC;
    if field1_is_checksum && !crc_both && field1 != innodb_new_checksum(page)? {
        return Ok(PageStatus::Corrupt(Corruption::Checksum));
    }
    Ok(PageStatus::Valid)
}

/// `buf_calc_page_crc32`: CRC-32C of bytes 4..25 XOR CRC-32C of bytes
/// 38..size-8 (the checksum fields and the flush LSN are excluded).
pub fn legacy_crc32(page: &[u8]) -> Result<u32, PageError> {
    let (a, b) = legacy_ranges(page)?;
    Ok(crc32c::crc32c(a) ^ crc32c::crc32c(b))
}

fn legacy_ranges(page: &[u8]) -> Result<(&[u8], &[u8]), PageError> {
    let a = slice(
        page,
        FIL_PAGE_OFFSET,
        FIL_PAGE_FILE_FLUSH_LSN_OR_KEY_VERSION - FIL_PAGE_OFFSET,
    )?;
    let b_len = page
        .len()
        .checked_sub(FIL_PAGE_DATA + FIL_PAGE_END_LSN_OLD_CHKSUM)
        .ok_or(OutOfBounds {
            offset: FIL_PAGE_DATA,
            need: FIL_PAGE_END_LSN_OLD_CHKSUM,
            len: page.len(),
        })?;
    let b = slice(page, FIL_PAGE_DATA, b_len)?;
    Ok((a, b))
}

/// `ut_fold_ulint_pair` (ut0rnd.inl). The server computes in 64-bit `ulint`
/// and keeps the low 32 bits; +, ^ and << never carry downwards, so 32-bit
/// wrapping arithmetic gives the same low half.
fn fold_pair(n1: u32, n2: u32) -> u32 {
    const MASK: u32 = 1_463_735_687;
    const MASK2: u32 = 1_653_893_711;
    ((((n1 ^ n2 ^ MASK2) << 8).wrapping_add(n1)) ^ MASK).wrapping_add(n2)
}

/// `ut_fold_binary`: fold every byte in order.
fn fold_binary(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0, |acc, &b| fold_pair(acc, u32::from(b)))
}

/// `buf_calc_page_new_checksum` (innodb algorithm, field 1).
pub fn innodb_new_checksum(page: &[u8]) -> Result<u32, PageError> {
    let (a, b) = legacy_ranges(page)?;
    Ok(fold_binary(a).wrapping_add(fold_binary(b)))
}

/// `buf_calc_page_old_checksum` (innodb algorithm, field 2): bytes 0..25,
/// including field 1, so field 1 must be stored first.
pub fn innodb_old_checksum(page: &[u8]) -> Result<u32, PageError> {
    Ok(fold_binary(slice(
        page,
        0,
        FIL_PAGE_FILE_FLUSH_LSN_OR_KEY_VERSION,
    )?))
}

/// ROW_FORMAT=COMPRESSED page (page0zip.cc `page_zip_verify_checksum`):
/// no LSN copy in the trailer; checksum in field 1 only.
fn check_zip(page: &[u8]) -> PageStatus {
    if is_zero(page) {
        return PageStatus::AllZero;
    }
    let Ok(stored) = be32(page, FIL_PAGE_SPACE_OR_CHKSUM) else {
        return PageStatus::Corrupt(Corruption::Checksum);
    };
    let ok = stored == NO_CHECKSUM_MAGIC
        || zip_checksum(page, ZipChecksum::Crc32).is_ok_and(|c| c == stored)
        || zip_checksum(page, ZipChecksum::Adler32).is_ok_and(|c| c == stored);
    if ok {
        PageStatus::Valid
    } else {
        PageStatus::Corrupt(Corruption::Checksum)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZipChecksum {
    /// XOR of three CRC-32C (innodb_checksum_algorithm=crc32).
    Crc32,
    /// zlib Adler-32 started from 0 (the old innodb algorithm).
    Adler32,
}

/// `page_zip_calc_checksum`: bytes 4..15, 24..25 and 34..end; excludes the
/// checksum, FIL_PAGE_LSN and the flush LSN / key version.
pub fn zip_checksum(page: &[u8], algo: ZipChecksum) -> Result<u32, PageError> {
    let a = slice(page, FIL_PAGE_OFFSET, FIL_PAGE_LSN - FIL_PAGE_OFFSET)?;
    let b = slice(page, FIL_PAGE_TYPE, 2)?;
    let rest = page.len().saturating_sub(FIL_PAGE_SPACE_ID);
    let c = slice(page, FIL_PAGE_SPACE_ID, rest)?;
    Ok(match algo {
        ZipChecksum::Crc32 => crc32c::crc32c(a) ^ crc32c::crc32c(b) ^ crc32c::crc32c(c),
        ZipChecksum::Adler32 => adler32(adler32(adler32(0, a), b), c),
    })
}

/// zlib's Adler-32 continued from `adler` (the server seeds it with 0, not
/// the usual 1). Small enough not to justify a dependency.
fn adler32(adler: u32, data: &[u8]) -> u32 {
    const MOD: u32 = 65521;
    let (mut a, mut b) = (adler & 0xFFFF, adler >> 16);
    // 5552 is zlib's NMAX: the largest run before b can overflow u32.
    for chunk in data.chunks(5552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

/// Legacy encrypted page: post-encryption checksum at bytes 30..33
/// (fil0crypt.cc `fil_space_verify_crypt_checksum`, non-strict branch).
fn crypt_checksum_ok(page: &[u8], fmt: &SpaceFormat) -> Result<bool, PageError> {
    let stored = be32(page, FIL_PAGE_FILE_FLUSH_LSN_OR_KEY_VERSION + 4)?;
    if stored == NO_CHECKSUM_MAGIC {
        return Ok(true);
    }
    if fmt.zip_size.is_some() {
        return Ok(zip_checksum(page, ZipChecksum::Crc32)? == stored
            || zip_checksum(page, ZipChecksum::Adler32)? == stored);
    }
    Ok(legacy_crc32(page)? == stored || innodb_new_checksum(page)? == stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fcrc32_sizes_follow_logical_size() {
        assert_eq!(FspFlags(0x15).logical_size(), Some(16384));
        assert_eq!(FspFlags(0x15).physical_size(), Some(16384));
        // full_crc32 with ssize 0 is invalid, not "default 16K".
        assert_eq!(FspFlags(0x10).logical_size(), None);
        assert!(!FspFlags(0x10).is_valid());
        // Legacy 0 = 16K, legacy ssize 5 is invalid.
        assert_eq!(FspFlags(0).logical_size(), Some(16384));
        assert_eq!(FspFlags(5 << 6).logical_size(), None);
    }

    #[test]
    fn legacy_zip_flags() {
        // POST_ANTELOPE | ZIP_SSIZE=4 (8K) | ATOMIC_BLOBS
        let f = FspFlags(1 | (4 << 1) | (1 << 5));
        assert!(f.is_valid());
        assert_eq!(f.zip_size(), Some(8192));
        assert_eq!(f.physical_size(), Some(8192));
        assert_eq!(f.logical_size(), Some(16384));
    }

    #[test]
    fn fcrc32_compression_algo_bits() {
        let f = FspFlags(0x15 | (1 << 5));
        assert!(f.is_page_compressed());
        assert_eq!(f.fcrc32_compression_algo(), 1);
        assert!(f.is_valid());
        assert!(!FspFlags(0x15 | (7 << 5)).is_valid());
    }

    #[test]
    fn adler32_matches_zlib_vectors() {
        // zlib: adler32(1, "Wikipedia") = 0x11E60398.
        assert_eq!(adler32(1, b"Wikipedia"), 0x11E6_0398);
        assert_eq!(adler32(1, b""), 1);
    }

    #[test]
    fn crypt_offset_for_16k() {
        let fmt = SpaceFormat::from_flags(5, FspFlags(0x15)).expect("valid flags");
        assert_eq!(crypt_data_offset(&fmt), 10428);
    }
}
