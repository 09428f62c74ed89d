//! Copying one file of a live datadir: InnoDB tablespaces page by page with checksum
//! validation and re-reads of pages caught mid-write; other files byte for byte. Every
//! copy is hashed (BLAKE3, `stagehand_host::digest`) as it is written, while the next
//! window of the file is read (`readahead`).

use stagehand_innodb::page::{check_page_at, PageError, PageStatus, SpaceFormat};
use stagehand_mariadb::datadir::{FileClass, SourceFile};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::{zstd_encoder, HashingWriter, ZstdSettings};
use crate::entry::{now_ns, CopiedFile, SourceStamp, StoredForm};
use crate::readahead::for_each_window;
use crate::source::{aligned, Source};
use stagehand_host::digest::ContentHasher;
use stagehand_host::write_behind::WriteBehind;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: page {page} still fails its checksum after {tries} reads ({status}); the source file may be corrupt")]
    CorruptPage {
        path: PathBuf,
        page: u64,
        tries: u32,
        status: String,
    },
    #[error("copy cancelled")]
    Cancelled,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Knobs shared by every file of one copy.
pub struct CopyOptions {
    pub chunk_bytes: usize,
    pub rereads: u32,
    pub reread_delay: Duration,
    pub cancel: Arc<AtomicBool>,
    pub limiter: Option<Arc<RateLimiter>>,
    /// The system tablespace's format, from page 0 of its first file (ibdata2… have none).
    pub system_format: Option<SpaceFormat>,
    /// Bytes read so far by all threads (for progress lines).
    pub progress: Arc<std::sync::atomic::AtomicU64>,
    /// Write InnoDB files compressed (`spool::SpoolRequest`); other files stay as they are.
    pub compress: Option<ZstdSettings>,
}

/// Copies `src` to `target_root/src.rel` (or, for an InnoDB file when `opts.compress`
/// is set, to `src.rel.zst`, recorded as its stored form).
pub fn copy_file(
    src: &SourceFile,
    target_root: &Path,
    opts: &CopyOptions,
    scratch: &mut Vec<u8>,
) -> Result<CopiedFile, CopyError> {
    let compress = opts.compress.filter(|_| src.class.is_innodb());
    let stored_rel = compress.map(|_| format!("{}.zst", src.rel));
    let dest = target_root.join(stored_rel.as_deref().unwrap_or(&src.rel));
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let input = Source::open(&src.abs, src.class.is_innodb()).map_err(io(&src.abs))?;
    let meta = input.metadata().map_err(io(&src.abs))?;
    let stamp = SourceStamp::of(&meta, now_ns());
    // Growth after this point comes back from the redo log, as in mariadb-backup.
    let size = meta.len();
    if src.class.is_innodb() {
        replace_other_form(target_root, &src.rel, stored_rel.is_some())?;
    }
    let output = File::create(&dest).map_err(io(&dest))?;
    let mut sink = HashingSink::new(WriteBehind::new(&output), compress, &dest)?;
    let mut record = CopiedFile {
        path: src.rel.clone(),
        class: src.class,
        size: 0,
        hash: String::new(),
        space_id: None,
        pages: 0,
        reread_pages: 0,
        unverified_pages: 0,
        source: Some(stamp),
        stored: None,
        remote: src.remote.as_ref().map(|p| p.display().to_string()),
        encrypted: None,
    };
    if src.class.is_innodb() {
        copy_pages(&input, size, &mut sink, &mut record, opts, scratch)?;
    } else {
        copy_bytes(&input, size, &mut sink, opts, scratch)?;
    }
    // No fsync here: copies made under BLOCK_COMMIT must be quick, and durability only
    // matters before the manifest is written (seal syncs every file first; write-behind
    // has already sent nearly all of it to the disk, so that sync is short).
    let written = sink.finish()?;
    record.size = written.size;
    record.hash = written.hash;
    record.stored = stored_rel
        .zip(written.stored)
        .map(|(path, (size, hash))| StoredForm {
            path,
            codec: crate::codec::CODEC.into(),
            size,
            hash,
        });
    Ok(record)
}

/// A later copy of a file replaces an earlier one in the other form (a reconcile copies
/// again, plainly, a tablespace the streamed copy wrote compressed): the directory then
/// holds only the version its records list. An upload still reading the earlier form
/// keeps its open file, and the newer version is shipped after it.
fn replace_other_form(target_root: &Path, rel: &str, compressed: bool) -> Result<(), CopyError> {
    let other = match compressed {
        true => target_root.join(rel),
        false => target_root.join(format!("{rel}.zst")),
    };
    match std::fs::remove_file(&other) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&other)(e)),
        _ => Ok(()),
    }
}

/// Where a copy's bytes go: to the file as they are, or through zstd.
enum Output<'a> {
    Plain(WriteBehind<'a>),
    Zstd(zstd::stream::write::Encoder<'static, HashingWriter<WriteBehind<'a>>>),
}

/// What a finished copy wrote: the data's size and hash, and the stored form's when the
/// file was compressed.
struct Written {
    size: u64,
    hash: String,
    stored: Option<(u64, String)>,
}

/// The copy's output: hashed as written, and written behind (see `WriteBehind`: a copy
/// must not make the server's log writes queue behind a burst of its own).
struct HashingSink<'a> {
    out: Output<'a>,
    hash: ContentHasher,
    written: u64,
    path: &'a Path,
}

impl<'a> HashingSink<'a> {
    fn new(
        file: WriteBehind<'a>,
        compress: Option<ZstdSettings>,
        path: &'a Path,
    ) -> Result<Self, CopyError> {
        let out = match compress {
            None => Output::Plain(file),
            Some(z) => Output::Zstd(
                zstd_encoder(
                    HashingWriter::new(file, ContentHasher::new()),
                    z.level,
                    z.threads,
                )
                .map_err(io(path))?,
            ),
        };
        Ok(HashingSink {
            out,
            hash: ContentHasher::new(),
            written: 0,
            path,
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<(), CopyError> {
        match &mut self.out {
            Output::Plain(w) => w.write_all(data),
            Output::Zstd(w) => w.write_all(data),
        }
        .map_err(io(self.path))?;
        self.hash.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Ends the output (the last window handed to the disk, not waited for).
    fn finish(self) -> Result<Written, CopyError> {
        let stored = match self.out {
            Output::Plain(mut w) => {
                w.finish();
                None
            }
            Output::Zstd(enc) => {
                let (mut w, size, hash) = enc.finish().map_err(io(self.path))?.finish();
                w.finish();
                Some((size, hash))
            }
        };
        Ok(Written {
            size: self.written,
            hash: self.hash.finish(),
            stored,
        })
    }
}

/// Reads `want` bytes at `offset` into `window` (see `Source::read_at`).
fn read_at(
    input: &Source,
    window: &mut [u8],
    want: usize,
    offset: u64,
) -> Result<usize, CopyError> {
    input
        .read_at(window, want, offset)
        .map_err(io(input.path()))
}

fn copy_bytes(
    input: &Source,
    size: u64,
    sink: &mut HashingSink,
    opts: &CopyOptions,
    buf: &mut Vec<u8>,
) -> Result<(), CopyError> {
    for_each_window(
        input,
        size,
        opts.chunk_bytes,
        buf,
        |window, offset, n| {
            check_cancel(opts)?;
            throttle(opts, n);
            sink.write(&window[..n])?;
            input.forget(offset, n);
            Ok(())
        },
        io(input.path()),
    )
}

/// Copies a tablespace page by page; the file's class is `record.class`.
fn copy_pages(
    input: &Source,
    size: u64,
    sink: &mut HashingSink,
    record: &mut CopiedFile,
    opts: &CopyOptions,
    buf: &mut Vec<u8>,
) -> Result<(), CopyError> {
    let format = tablespace_format(input, record.class, opts, buf)?;
    let Some(fmt) = format else {
        // Page 0 not written yet (a table created after the last checkpoint): the redo
        // log recreates its pages, so the bytes are kept as they are.
        copy_bytes(input, size, sink, opts, buf)?;
        record.unverified_pages = size / 16384;
        return Ok(());
    };
    record.space_id = Some(fmt.space_id);
    let page_size = fmt.physical_size as u64;
    // For ibdata2… the page numbers continue from the previous files; not checked there.
    let pages_per_chunk = (opts.chunk_bytes as u64 / page_size).max(1);
    for_each_window(
        input,
        size,
        (pages_per_chunk * page_size) as usize,
        buf,
        |window, offset, n| {
            check_cancel(opts)?;
            let whole = n - n % page_size as usize;
            for (i, page) in window[..whole].chunks_mut(page_size as usize).enumerate() {
                let page_no = offset / page_size + i as u64;
                validate_page(input, page, page_no, &fmt, record, opts)?;
            }
            throttle(opts, n);
            sink.write(&window[..n])?;
            input.forget(offset, n);
            record.pages += (whole as u64) / page_size;
            Ok(())
        },
        io(input.path()),
    )
}

/// The format of a tablespace file from its page 0 (or the system tablespace's).
fn tablespace_format(
    input: &Source,
    class: FileClass,
    opts: &CopyOptions,
    buf: &mut Vec<u8>,
) -> Result<Option<SpaceFormat>, CopyError> {
    let head = aligned(buf, 65536);
    let mut tries = 0;
    loop {
        let n = read_at(input, head, 65536, 0)?;
        let fmt = match SpaceFormat::from_page0(&head[..n]) {
            Ok(fmt) => fmt,
            // ibdata2… start with an ordinary page: use ibdata1's format.
            Err(_) if class == FileClass::SystemTablespace => return Ok(opts.system_format),
            // Page 0 not written yet (or not a tablespace header at all).
            Err(PageError::AllZeroPage0) => return Ok(None),
            Err(_) if tries >= opts.rereads => return Ok(None),
            Err(_) => {
                tries += 1;
                reread_pause(input, opts, 0, 65536)?;
                continue;
            }
        };
        // Its flags decide how every other page is checked: trust them only from a
        // page 0 that passes its own check (a torn page 0 is read again, like any
        // page; one that stays bad is a corrupt header).
        let page0 = head.get(..fmt.physical_size).unwrap_or(&[]);
        match check_page_at(page0, 0, &fmt) {
            Ok(PageStatus::Corrupt(c)) if tries >= opts.rereads => {
                return Err(CopyError::CorruptPage {
                    path: input.path().to_path_buf(),
                    page: 0,
                    tries: tries + 1,
                    status: format!("{c:?}; {}", page_facts(page0)),
                })
            }
            Ok(PageStatus::Corrupt(_)) | Err(_) => {
                tries += 1;
                reread_pause(input, opts, 0, 65536)?;
            }
            Ok(_) => return Ok(Some(fmt)),
        }
    }
}

/// Waits before reading a range again, and drops it from the page cache so the read
/// comes from the disk.
fn reread_pause(
    input: &Source,
    opts: &CopyOptions,
    offset: u64,
    len: usize,
) -> Result<(), CopyError> {
    check_cancel(opts)?;
    std::thread::sleep(opts.reread_delay);
    input.forget(offset, len);
    Ok(())
}

/// The header and trailer fields that decide a page's checks, for the error message
/// (what a DBA, or a bug report, needs to tell a torn write from real damage).
fn page_facts(page: &[u8]) -> String {
    let be32 = |at: usize| {
        page.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0)
    };
    let n = page.len();
    format!(
        "header: page {} type {} LSN {:#x}:{:#x}; trailer: {:#010x} {:#010x}",
        be32(4),
        page.get(24..26)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .unwrap_or(0),
        be32(16),
        be32(20),
        be32(n.saturating_sub(8)),
        be32(n.saturating_sub(4)),
    )
}

/// Checks one page; a page that fails is read again (the server may have been writing
/// it) after a pause, a bounded number of times.
fn validate_page(
    input: &Source,
    page: &mut [u8],
    page_no: u64,
    fmt: &SpaceFormat,
    record: &mut CopiedFile,
    opts: &CopyOptions,
) -> Result<(), CopyError> {
    // A page this library cannot parse at all (None) is kept as read and counted.
    let check = |p: &[u8]| check_page_at(p, page_no as u32, fmt).ok();
    let mut status = check(page);
    let mut tries = 1;
    while matches!(status, Some(PageStatus::Corrupt(_))) && tries <= opts.rereads {
        // Read it from the disk, not from a cached copy that could be stale.
        let offset = page_no * page.len() as u64;
        reread_pause(input, opts, offset, page.len())?;
        let n = read_at(input, page, page.len(), offset)?;
        // Never check (or keep) bytes of the earlier read past a short one.
        page[n..].fill(0);
        status = check(page);
        tracing::debug!(file = %input.path().display(), page = page_no, try_no = tries, ?status, facts = %page_facts(page), "re-read a page that failed its checksum");
        tries += 1;
    }
    match status {
        Some(PageStatus::Corrupt(c)) => Err(CopyError::CorruptPage {
            path: input.path().to_path_buf(),
            page: page_no,
            tries,
            status: format!("{c:?}; {}", page_facts(page)),
        }),
        None | Some(PageStatus::Unverifiable(_)) => {
            record.unverified_pages += 1;
            Ok(())
        }
        Some(PageStatus::Valid | PageStatus::AllZero) => {
            if tries > 1 {
                record.reread_pages += 1;
            }
            Ok(())
        }
    }
}

fn check_cancel(opts: &CopyOptions) -> Result<(), CopyError> {
    if opts.cancel.load(Ordering::Relaxed) {
        Err(CopyError::Cancelled)
    } else {
        Ok(())
    }
}

fn throttle(opts: &CopyOptions, bytes: usize) {
    opts.progress.fetch_add(bytes as u64, Ordering::Relaxed);
    if let Some(l) = &opts.limiter {
        l.take(bytes as u64);
    }
}

/// A token bucket shared by the copy threads, for `max_rate`. Hand-written: a dozen
/// lines of blocking code; the rate-limit crates are async or far larger.
pub struct RateLimiter {
    bytes_per_sec: f64,
    state: std::sync::Mutex<(Instant, f64)>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            state: std::sync::Mutex::new((Instant::now(), 0.0)),
        }
    }

    /// Blocks until `bytes` may pass. At most one second of burst.
    pub fn take(&self, bytes: u64) {
        let wait = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(st.0).as_secs_f64() * self.bytes_per_sec;
            st.1 = (st.1 + refill).min(self.bytes_per_sec);
            st.0 = now;
            st.1 -= bytes as f64;
            if st.1 < 0.0 {
                Duration::from_secs_f64(-st.1 / self.bytes_per_sec)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}
