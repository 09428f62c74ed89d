//! What `compress`, `decompress`, `verify` and the uploader share about a file's stored
//! form: the zstd codec, readers and writers that hash as the bytes pass, the stored-object
//! reader, the per-file job plan, the worker pool that converts files in parallel and
//! records each result in the manifest, and the storage errors.

use crate::entry::CopiedFile;
use crate::entry::StoredForm;
use crate::manifest::Manifest;
use stagehand_engine::{ConfigError, StepContext, StepError};
use stagehand_host::digest::{algorithm_of, ContentHasher};
use stagehand_host::progress::ByteCounter;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The codec name recorded in the manifest.
pub const CODEC: &str = "zstd";
/// Bytes read and written at a time.
pub const CHUNK: usize = 1 << 20;

/// zstd worker threads per file unless a plan says otherwise: one. The file is then
/// read while it is compressed, and zstd's multithreaded mode matches within one
/// contiguous buffer; with 0 (compression on the reading thread) its streaming buffer
/// wraps and most blocks take a slower path. Measured on sysbench tablespaces at level 3:
/// 8 % less user CPU with 1 (and 2 MiB jobs) than with 0, for 8 MiB more memory per file.
pub const DEFAULT_ZSTD_THREADS: u32 = 1;
/// Input per zstd job when compressing with workers. zstd's own default (4 windows,
/// 8 MiB at level 3) costs 40 MiB per file for no measurable gain.
const ZSTD_JOB_SIZE: u32 = 2 << 20;

/// zstd's level and workers per file, as a plan sets them for the `compress` step or
/// the uploader (and the uploader passes on to the copies that feed it, `spool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ZstdSettings {
    pub level: i32,
    pub threads: u32,
}

/// The zstd encoder both the `compress` step and the uploader use: `level`, and `threads`
/// workers per file (0: compress on the calling thread).
pub fn zstd_encoder<W: Write>(
    out: W,
    level: i32,
    threads: u32,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut enc = zstd::stream::write::Encoder::new(out, level)?;
    if threads > 0 {
        enc.multithread(threads)?;
        enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
    }
    Ok(enc)
}

/// Runs a compress or decompress over `jobs` on `parallel` threads with a progress
/// report, records each finished file's stored form and writes the manifest — even when
/// a file failed, so the files done so far are recorded as they now are.
pub async fn convert_all(
    dir: &Path,
    manifest: &mut Manifest,
    jobs: Vec<Job>,
    parallel: usize,
    ctx: &StepContext,
    verb: &'static str,
    job_fn: impl Fn(&Work, &Job) -> Result<Outcome, StorageError> + Send + Sync + 'static,
) -> Result<Tally, StepError> {
    let total = jobs.iter().map(|j| manifest.files[j.index].size).sum();
    let progress = stagehand_host::progress::Progress::start(&ctx.step_id, verb, total);
    let work = Work {
        dir: dir.to_path_buf(),
        files: manifest.files.clone(),
        counter: progress.counter(),
        cancel: ctx.cancel.child_token(),
    };
    let results = tokio::task::spawn_blocking(move || {
        run_pool(&jobs, parallel, &work.cancel, |job| job_fn(&work, job))
    })
    .await
    .map_err(|e| StepError::fatal(format!("{verb} pool crashed: {e}")))?;
    let mut tally = apply(manifest, results);
    manifest
        .write(dir)
        .map_err(|e| StepError::fatal(e.to_string()))?;
    match tally.error.take() {
        Some(e) => Err(e.into_step_error()),
        None => Ok(tally),
    }
}

/// Files converted at once unless a step says otherwise.
pub fn default_parallel() -> usize {
    2
}

pub fn check_parallel(parallel: usize) -> Result<(), ConfigError> {
    if parallel == 0 {
        return Err(ConfigError {
            path: "parallel".into(),
            message: "parallel must be at least 1".into(),
            hint: None,
        });
    }
    Ok(())
}

pub fn read_manifest(dir: &Path, step: &str) -> Result<Manifest, StepError> {
    Manifest::read(dir).map_err(|e| {
        StepError::fatal(e.to_string()).with_hint(format!(
            "{step} works on a complete backup made by stagehand"
        ))
    })
}

/// How a compress or decompress pass went, rounded for outputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Data bytes per stored byte (1 when nothing is stored).
    pub ratio: f64,
    pub seconds: f64,
    /// Data MB per second.
    pub mb_per_s: f64,
}

/// The rates of a pass that moved `data_bytes` of data to or from `stored_bytes`.
pub fn rates(data_bytes: u64, stored_bytes: u64, seconds: f64) -> Rates {
    let ratio = if stored_bytes == 0 {
        1.0
    } else {
        data_bytes as f64 / stored_bytes as f64
    };
    Rates {
        ratio: round3(ratio),
        seconds: round3(seconds),
        mb_per_s: round3(data_bytes as f64 / 1e6 / seconds.max(1e-3)),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------------------
// What to do with each file

/// What a run does with one file of the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// compress: the plain file is there; decompress: the stored object is there.
    Convert,
    /// The other form alone is there, left by an interrupted run: check that it holds
    /// the manifest's data and take it over.
    Adopt,
}

#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub index: usize,
    pub action: Action,
}

/// The stored object's path of a file: recorded, or `<path>.zst`.
pub fn stored_path(f: &CopiedFile) -> String {
    f.stored
        .as_ref()
        .map_or_else(|| format!("{}.zst", f.path), |s| s.path.clone())
}

/// Removes the temporary files a killed run may have left for `f` (either direction):
/// they are never renamed into place once their run is gone.
pub fn remove_stale_tmps(dir: &Path, f: &CopiedFile) -> Result<(), StepError> {
    for rel in [f.path.clone(), stored_path(f)] {
        remove_if_there(&tmp_path(dir, &rel)).map_err(|e| io_at(&rel)(e).into_step_error())?;
    }
    Ok(())
}

/// A stored form this build can read (zstd).
pub fn check_codec(f: &CopiedFile) -> Result<(), StorageError> {
    if let Some(e) = &f.encrypted {
        return Err(StorageError::Encrypted {
            path: f.path.clone(),
            object: e.path.clone(),
        });
    }
    match &f.stored {
        Some(s) if s.codec != CODEC => Err(StorageError::Codec {
            path: f.path.clone(),
            codec: s.codec.clone(),
        }),
        _ => Ok(()),
    }
}

pub fn lost(f: &CopiedFile) -> StorageError {
    StorageError::Lost {
        path: f.path.clone(),
        stored: stored_path(f),
    }
}

// ---------------------------------------------------------------------------------------
// Errors

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path}: {what} differs from the manifest: the backup changed since it was sealed")]
    Changed { path: String, what: String },
    #[error("{path}: {what}: the backup is corrupt")]
    Corrupt { path: String, what: String },
    #[error("{path}: neither the file nor its stored object {stored} is in the backup: the backup is incomplete")]
    Lost { path: String, stored: String },
    #[error("{path}: stored with codec `{codec}`, which this build does not read (only `zstd`)")]
    Codec { path: String, codec: String },
    #[error("{path}: stored encrypted (as {object}): a backup is decrypted by `fetch` with its key; this directory holds its encrypted objects")]
    Encrypted { path: String, object: String },
    #[error("cancelled")]
    Cancelled,
}

impl StorageError {
    pub fn into_step_error(self) -> StepError {
        let hint = match &self {
            StorageError::Io { .. } => return StepError::fatal(self.to_string()),
            StorageError::Codec { .. } => "use a stagehand version that knows the codec",
            StorageError::Encrypted { .. } => "restore from the repository with the key (plans/restore.yaml); `verify` checks the encrypted objects' hashes without it",
            StorageError::Cancelled => {
                return StepError::cancelled()
                    .with_hint("run the step again: it carries on where it stopped")
            }
            StorageError::Changed { .. } => "the files no longer match the manifest: do not restore this backup; take a new one",
            StorageError::Corrupt { .. } | StorageError::Lost { .. } => {
                "the backup is damaged: do not restore it; take a new one (or fetch it again from its repository)"
            }
        };
        StepError::fatal(self.to_string()).with_hint(hint)
    }
}

/// Maps an I/O error to one naming `rel`.
pub fn io_at(rel: &str) -> impl Fn(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: rel.to_string(),
        source,
    }
}

// ---------------------------------------------------------------------------------------
// Hashing streams

/// Hashes and counts what passes through a reader.
pub struct HashingReader<R> {
    inner: R,
    hasher: ContentHasher,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// `hasher`: `ContentHasher::new()` to record, `ContentHasher::like(recorded)` to check.
    pub fn new(inner: R, hasher: ContentHasher) -> Self {
        Self {
            inner,
            hasher,
            count: 0,
        }
    }

    /// Bytes read and their hash.
    pub fn digest(self) -> (u64, String) {
        (self.count, self.hasher.finish())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Hashes and counts what passes through a writer.
pub struct HashingWriter<W> {
    inner: W,
    hasher: ContentHasher,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    /// `hasher`: `ContentHasher::new()` to record, `ContentHasher::like(recorded)` to check.
    pub fn new(inner: W, hasher: ContentHasher) -> Self {
        Self {
            inner,
            hasher,
            count: 0,
        }
    }

    /// The writer, bytes written and their hash.
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.count, self.hasher.finish())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The data of a stored object, decompressed while the object itself is hashed.
pub struct StoredReader {
    decoder: zstd::stream::read::Decoder<'static, BufReader<HashingReader<File>>>,
}

impl StoredReader {
    /// Opens the object at `path`, hashed by `hasher` (`ContentHasher::like` its record
    /// to check it).
    pub fn open(path: &Path, hasher: ContentHasher) -> io::Result<Self> {
        let hashed = HashingReader::new(File::open(path)?, hasher);
        let decoder = zstd::stream::read::Decoder::new(hashed)?;
        Ok(Self { decoder })
    }

    /// Reads what the decoder left of the object (so every byte is hashed); the
    /// object's size and hash.
    pub fn finish(self) -> io::Result<(u64, String)> {
        let mut rest = self.decoder.finish();
        io::copy(&mut rest, &mut io::sink())?;
        Ok(rest.into_inner().digest())
    }
}

impl Read for StoredReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.decoder.read(buf)
    }
}

/// Where a copy stops: counts progress, stops when cancelled; read and write errors are
/// mapped by the caller (a read error of a stored object is corruption).
pub struct Pump<'a, R, W> {
    pub counter: &'a ByteCounter,
    pub cancel: &'a CancellationToken,
    pub on_read: R,
    pub on_write: W,
}

impl<R, W> Pump<'_, R, W>
where
    R: Fn(io::Error) -> StorageError,
    W: Fn(io::Error) -> StorageError,
{
    /// Copies `from` to `to` in chunks.
    pub fn run(&self, from: &mut impl Read, to: &mut impl Write) -> Result<(), StorageError> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            if self.cancel.is_cancelled() {
                return Err(StorageError::Cancelled);
            }
            let n = match from.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err((self.on_read)(e)),
            };
            if n == 0 {
                return Ok(());
            }
            to.write_all(&buf[..n]).map_err(&self.on_write)?;
            self.counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Files

/// `<dir of rel>/.<name of rel>.tmp`: where a new form is written before its rename.
pub fn tmp_path(dir: &Path, rel: &str) -> PathBuf {
    let path = dir.join(rel);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Makes a rename or removal in `path`'s directory durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(d) => File::open(d)?.sync_all(),
        None => Ok(()),
    }
}

/// Removes a file if it is there.
pub fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What one job did to one file.
#[derive(Debug)]
pub struct Outcome {
    /// The file's stored form now (None: stored as is).
    pub stored: Option<StoredForm>,
    /// Left as is because compressing it did not make it smaller.
    pub kept: bool,
    /// Bytes read and written by this job (0, 0 when an existing form was taken over).
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// What the blocking workers need.
pub struct Work {
    pub dir: PathBuf,
    pub files: Vec<CopiedFile>,
    pub counter: ByteCounter,
    pub cancel: CancellationToken,
}

impl Work {
    pub fn pump<R, W>(&self, on_read: R, on_write: W) -> Pump<'_, R, W> {
        Pump {
            counter: &self.counter,
            cancel: &self.cancel,
            on_read,
            on_write,
        }
    }
}

/// A stored object that does not decompress.
pub fn corrupt(rel: &str, e: io::Error) -> StorageError {
    StorageError::Corrupt {
        path: rel.to_string(),
        what: format!("it does not decompress ({e})"),
    }
}

/// Checks data (size, hash) against the manifest's entry; `sha` was made with
/// `ContentHasher::like(&f.hash)`.
pub fn check_data(
    f: &CopiedFile,
    (size, sha): (u64, String),
    err: impl FnOnce(String) -> StorageError,
) -> Result<(), StorageError> {
    if size != f.size {
        return Err(err(format!("its size ({size} bytes, manifest {})", f.size)));
    }
    if sha != f.hash {
        return Err(err(format!("its {}", algorithm_of(&f.hash))));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The pool and the manifest update

/// Runs `jobs` on `parallel` threads (in order: largest first); the first error cancels
/// the jobs still running. Every job's result, by file index.
pub fn run_pool<T: Send>(
    jobs: &[Job],
    parallel: usize,
    cancel: &CancellationToken,
    work: impl Fn(&Job) -> Result<T, StorageError> + Sync,
) -> Vec<(usize, Result<T, StorageError>)> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(jobs.len()));
    std::thread::scope(|s| {
        for _ in 0..parallel.clamp(1, jobs.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                if cancel.is_cancelled() {
                    break;
                }
                let r = work(job);
                if r.is_err() {
                    cancel.cancel();
                }
                if let Ok(mut v) = results.lock() {
                    v.push((job.index, r));
                }
            });
        }
    });
    results.into_inner().unwrap_or_default()
}

/// What a run did, summed.
#[derive(Debug, Default)]
pub struct Tally {
    pub files: u64,
    pub kept: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The first real error (a cancellation only when nothing else failed).
    pub error: Option<StorageError>,
}

/// Records each finished job's stored form in the manifest.
pub fn apply(m: &mut Manifest, results: Vec<(usize, Result<Outcome, StorageError>)>) -> Tally {
    let mut t = Tally::default();
    for (index, r) in results {
        match r {
            Ok(o) => {
                t.files += u64::from(!o.kept);
                t.kept += u64::from(o.kept);
                t.bytes_in += o.bytes_in;
                t.bytes_out += o.bytes_out;
                if let Some(f) = m.files.get_mut(index) {
                    f.stored = o.stored;
                }
            }
            Err(e) => {
                let cancelled = matches!(e, StorageError::Cancelled);
                if t.error.is_none() || (!cancelled && t.error_is_cancel()) {
                    t.error = Some(e);
                }
            }
        }
    }
    t
}

impl Tally {
    fn error_is_cancel(&self) -> bool {
        matches!(self.error, Some(StorageError::Cancelled))
    }
}
