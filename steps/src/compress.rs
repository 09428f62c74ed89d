//! `compress`: replaces each file of a sealed backup by a zstd object `<path>.zst` and
//! records it in the manifest as the file's stored form. The data's size and SHA-256
//! stay in the manifest, so `verify` and `decompress` check both the object and the data
//! it decompresses to.
//!
//! Also the pieces `decompress` and `verify` share: hashing readers and writers, the
//! stored-object reader, the worker pool and the errors.
//!
//! Interruption: each file goes `<dir>/.<name>.zst.tmp` → fsync → rename to `<path>.zst`
//! → fsync of the directory → removal of the original. The manifest is written once at
//! the end (also when a file fails, with the files done so far), not after each file: a
//! backup of thousands of tables would otherwise rewrite a large manifest thousands of
//! times. A run killed in between leaves files whose original is gone while the manifest
//! still lists them as plain; the next run finds each such `.zst`, decompresses it while
//! hashing and takes it over only when it holds exactly the manifest's data. An original
//! that is still there is always whole (only ever removed, never written), so it is
//! compressed again from scratch.

use crate::manifest::{Manifest, StoredForm};
use crate::pagecopy::CopiedFile;
use crate::repo::ByteCounter;
use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use stagehand_engine::{
    output, ConfigError, OutputSpec, OutputType, Outputs, StepContext, StepError, TypedStep,
};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// The codec name recorded in the manifest.
pub const CODEC: &str = "zstd";
/// Bytes read and written at a time.
const CHUNK: usize = 1 << 20;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompressConfig {
    /// A complete backup directory (sealed by its `stagehand.json`); compressed in place.
    pub dir: String,
    /// zstd level, 1 (fastest) to 19 (smallest).
    #[serde(default = "default_level")]
    pub level: i32,
    /// zstd worker threads per file; 0 compresses each file on its worker's own thread.
    #[serde(default)]
    pub threads: u32,
    /// Files compressed at once.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
}

fn default_level() -> i32 {
    3
}

pub(crate) fn default_parallel() -> usize {
    2
}

pub struct Compress;

#[async_trait]
impl TypedStep for Compress {
    type Config = CompressConfig;
    const NAME: &'static str = "compress";
    const SUMMARY: &'static str =
        "Compresses every file of a sealed backup with zstd, in place, and records the stored forms in its manifest";

    fn outputs() -> Vec<OutputSpec> {
        vec![
            output(
                "files",
                OutputType::Integer,
                "files stored compressed by this run",
            ),
            output(
                "kept",
                OutputType::Integer,
                "files left as they are because compressing them did not make them smaller",
            ),
            output(
                "bytes_in",
                OutputType::Integer,
                "bytes of data read by this run",
            ),
            output(
                "bytes_out",
                OutputType::Integer,
                "compressed bytes written by this run",
            ),
            output(
                "ratio",
                OutputType::Number,
                "bytes_in / bytes_out (1 when nothing was compressed)",
            ),
            output(
                "stored_bytes",
                OutputType::Integer,
                "bytes the whole backup takes now, as stored",
            ),
            output("seconds", OutputType::Number, "wall time"),
            output(
                "mb_per_s",
                OutputType::Number,
                "data MB compressed per second",
            ),
        ]
    }

    fn check(cfg: &CompressConfig) -> Result<(), ConfigError> {
        if !(1..=19).contains(&cfg.level) {
            return Err(ConfigError {
                path: "level".into(),
                message: format!("zstd level {} is out of range", cfg.level),
                hint: Some("use 1 (fastest) to 19 (smallest); 3 is the default".into()),
            });
        }
        check_parallel(cfg.parallel)
    }

    fn describe(cfg: &CompressConfig) -> String {
        let threads = match cfg.threads {
            0 => String::new(),
            n => format!(", {n} zstd threads per file"),
        };
        format!(
            "compresses every file of the backup in {} with zstd level {} ({} at once{threads}), replacing each by <file>.zst, and records the stored forms in its manifest",
            cfg.dir, cfg.level, cfg.parallel
        )
    }

    async fn run(cfg: &CompressConfig, ctx: &StepContext) -> Result<Outputs, StepError> {
        let dir = PathBuf::from(&cfg.dir);
        let mut manifest = read_manifest(&dir, "compress")?;
        let t0 = Instant::now();
        let jobs = plan_compress(&dir, &manifest)?;
        let (level, threads) = (cfg.level, cfg.threads);
        let tally = convert_all(
            &dir,
            &mut manifest,
            jobs,
            cfg.parallel,
            ctx,
            "compressed",
            move |work, job| work.compress_job(job, level, threads),
        )
        .await?;
        let seconds = t0.elapsed().as_secs_f64();
        tracing::info!(
            files = tally.files,
            bytes_in = tally.bytes_in,
            bytes_out = tally.bytes_out,
            seconds,
            "backup compressed"
        );
        let mut out = rates(tally.bytes_in, tally.bytes_out, seconds, tally.bytes_in);
        out.insert("files".into(), json!(tally.files));
        out.insert("kept".into(), json!(tally.kept));
        out.insert("stored_bytes".into(), json!(manifest.stored_bytes()));
        Ok(out)
    }
}

/// Runs a compress or decompress over `jobs` on `parallel` threads with a progress
/// report, records each finished file's stored form and writes the manifest — even when
/// a file failed, so the files done so far are recorded as they now are.
pub(crate) async fn convert_all(
    dir: &Path,
    manifest: &mut Manifest,
    jobs: Vec<Job>,
    parallel: usize,
    ctx: &StepContext,
    verb: &'static str,
    job_fn: impl Fn(&Work, &Job) -> Result<Outcome, StorageError> + Send + Sync + 'static,
) -> Result<Tally, StepError> {
    let total = jobs.iter().map(|j| manifest.files[j.index].size).sum();
    let progress = crate::progress::Progress::start(&ctx.step_id, verb, total);
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

pub(crate) fn check_parallel(parallel: usize) -> Result<(), ConfigError> {
    if parallel == 0 {
        return Err(ConfigError {
            path: "parallel".into(),
            message: "parallel must be at least 1".into(),
            hint: None,
        });
    }
    Ok(())
}

pub(crate) fn read_manifest(dir: &Path, step: &str) -> Result<Manifest, StepError> {
    Manifest::read(dir).map_err(|e| {
        StepError::fatal(e.to_string()).with_hint(format!(
            "{step} works on a complete backup made by stagehand"
        ))
    })
}

/// bytes_in, bytes_out, ratio, seconds and the rate of `moved` bytes.
pub(crate) fn rates(bytes_in: u64, bytes_out: u64, seconds: f64, moved: u64) -> Outputs {
    let ratio = if bytes_out == 0 {
        1.0
    } else {
        bytes_in as f64 / bytes_out as f64
    };
    let mut o = Outputs::new();
    o.insert("bytes_in".into(), json!(bytes_in));
    o.insert("bytes_out".into(), json!(bytes_out));
    o.insert("ratio".into(), json!(round3(ratio)));
    o.insert("seconds".into(), json!(round3(seconds)));
    o.insert(
        "mb_per_s".into(),
        json!(round3(moved as f64 / 1e6 / seconds.max(1e-3))),
    );
    o
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------------------
// What to do with each file

/// What a run does with one file of the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// compress: the plain file is there; decompress: the stored object is there.
    Convert,
    /// The other form alone is there, left by an interrupted run: check that it holds
    /// the manifest's data and take it over.
    Adopt,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Job {
    pub index: usize,
    pub action: Action,
}

/// The stored object's path of a file: recorded, or `<path>.zst`.
pub(crate) fn stored_path(f: &CopiedFile) -> String {
    f.stored
        .as_ref()
        .map_or_else(|| format!("{}.zst", f.path), |s| s.path.clone())
}

/// Jobs for a compress run, largest file first; an error for a file that is gone in
/// both forms.
fn plan_compress(dir: &Path, m: &Manifest) -> Result<Vec<Job>, StepError> {
    let mut jobs = Vec::new();
    for (index, f) in m.files.iter().enumerate() {
        remove_stale_tmps(dir, f)?;
        let plain = dir.join(&f.path).is_file();
        let zst = dir.join(stored_path(f)).is_file();
        let action = match (plain, zst, f.stored.is_some()) {
            // Whole (only ever removed, or renamed into place once checked): compress it
            // again, which also checks it against the manifest.
            (true, _, _) => Action::Convert,
            (false, true, true) => continue,
            (false, true, false) => Action::Adopt,
            (false, false, _) => return Err(lost(f).into_step_error()),
        };
        jobs.push(Job { index, action });
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(m.files[j.index].size));
    Ok(jobs)
}

/// Removes the temporary files a killed run may have left for `f` (either direction):
/// they are never renamed into place once their run is gone.
pub(crate) fn remove_stale_tmps(dir: &Path, f: &CopiedFile) -> Result<(), StepError> {
    for rel in [f.path.clone(), stored_path(f)] {
        remove_if_there(&tmp_path(dir, &rel)).map_err(|e| io_at(&rel)(e).into_step_error())?;
    }
    Ok(())
}

/// A stored form this build can read (zstd).
pub fn check_codec(f: &CopiedFile) -> Result<(), StorageError> {
    match &f.stored {
        Some(s) if s.codec != CODEC => Err(StorageError::Codec {
            path: f.path.clone(),
            codec: s.codec.clone(),
        }),
        _ => Ok(()),
    }
}

pub(crate) fn lost(f: &CopiedFile) -> StorageError {
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
    #[error("cancelled")]
    Cancelled,
}

impl StorageError {
    pub fn into_step_error(self) -> StepError {
        let hint = match &self {
            StorageError::Io { .. } => return StepError::fatal(self.to_string()),
            StorageError::Codec { .. } => "use a stagehand version that knows the codec",
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
pub(crate) fn io_at(rel: &str) -> impl Fn(io::Error) -> StorageError + '_ {
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
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes read and their SHA-256 (hex).
    pub fn digest(self) -> (u64, String) {
        (self.count, format!("{:x}", self.hasher.finalize()))
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
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The writer, bytes written and their SHA-256 (hex).
    pub fn finish(self) -> (W, u64, String) {
        (
            self.inner,
            self.count,
            format!("{:x}", self.hasher.finalize()),
        )
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
    pub fn open(path: &Path) -> io::Result<Self> {
        let decoder = zstd::stream::read::Decoder::new(HashingReader::new(File::open(path)?))?;
        Ok(Self { decoder })
    }

    /// Reads what the decoder left of the object (so every byte is hashed); the
    /// object's size and SHA-256.
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
pub(crate) struct Pump<'a, R, W> {
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
    pub(crate) fn run(
        &self,
        from: &mut impl Read,
        to: &mut impl Write,
    ) -> Result<(), StorageError> {
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
pub(crate) fn tmp_path(dir: &Path, rel: &str) -> PathBuf {
    let path = dir.join(rel);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Makes a rename or removal in `path`'s directory durable.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(d) => File::open(d)?.sync_all(),
        None => Ok(()),
    }
}

/// Removes a file if it is there.
pub(crate) fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What one job did to one file.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The file's stored form now (None: stored as is).
    pub stored: Option<StoredForm>,
    /// Left as is because compressing it did not make it smaller.
    pub kept: bool,
    /// Bytes read and written by this job (0, 0 when an existing form was taken over).
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// What the blocking workers need.
pub(crate) struct Work {
    pub dir: PathBuf,
    pub files: Vec<CopiedFile>,
    pub counter: ByteCounter,
    pub cancel: CancellationToken,
}

impl Work {
    pub(crate) fn pump<R, W>(&self, on_read: R, on_write: W) -> Pump<'_, R, W> {
        Pump {
            counter: &self.counter,
            cancel: &self.cancel,
            on_read,
            on_write,
        }
    }

    fn compress_job(&self, job: &Job, level: i32, threads: u32) -> Result<Outcome, StorageError> {
        let f = &self.files[job.index];
        match job.action {
            Action::Convert => self.compress_file(f, level, threads),
            Action::Adopt => self.adopt_stored(f),
        }
    }

    /// Streams a file through zstd into its `.zst` (see the module comment for the order
    /// of the writes); keeps the file as is when that is not smaller.
    fn compress_file(
        &self,
        f: &CopiedFile,
        level: i32,
        threads: u32,
    ) -> Result<Outcome, StorageError> {
        let rel_zst = format!("{}.zst", f.path);
        let (src, dst) = (self.dir.join(&f.path), self.dir.join(&rel_zst));
        let tmp = tmp_path(&self.dir, &rel_zst);
        let written = self.encode(f, &src, &tmp, level, threads);
        let (size, sha256) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let at = io_at(&rel_zst);
        if size >= f.size {
            // Not smaller (tiny or incompressible): stored as is, and no object is left.
            std::fs::remove_file(&tmp).map_err(&at)?;
            remove_if_there(&dst).map_err(&at)?;
            return Ok(Outcome {
                stored: None,
                kept: true,
                bytes_in: f.size,
                bytes_out: f.size,
            });
        }
        std::fs::rename(&tmp, &dst).map_err(&at)?;
        // The rename must be durable before the original goes.
        sync_parent(&dst).map_err(&at)?;
        std::fs::remove_file(&src).map_err(io_at(&f.path))?;
        sync_parent(&src).map_err(io_at(&f.path))?;
        Ok(Outcome {
            stored: Some(StoredForm {
                path: rel_zst.clone(),
                codec: CODEC.into(),
                size,
                sha256,
            }),
            kept: false,
            bytes_in: f.size,
            bytes_out: size,
        })
    }

    /// Writes the compressed form of `src` to `tmp` (synced); checks the input against
    /// the manifest; the output's size and SHA-256.
    fn encode(
        &self,
        f: &CopiedFile,
        src: &Path,
        tmp: &Path,
        level: i32,
        threads: u32,
    ) -> Result<(u64, String), StorageError> {
        let at_src = io_at(&f.path);
        let at_tmp = |e: io::Error| StorageError::Io {
            path: tmp.display().to_string(),
            source: e,
        };
        let mut input = HashingReader::new(File::open(src).map_err(&at_src)?);
        let out = HashingWriter::new(File::create(tmp).map_err(at_tmp)?);
        let mut enc = zstd::stream::write::Encoder::new(out, level).map_err(at_tmp)?;
        enc.include_checksum(true).map_err(at_tmp)?;
        if threads > 0 {
            enc.multithread(threads).map_err(at_tmp)?;
        }
        self.pump(&at_src, at_tmp).run(&mut input, &mut enc)?;
        let (file, size, sha) = enc.finish().map_err(at_tmp)?.finish();
        check_data(f, input.digest(), |what| StorageError::Changed {
            path: f.path.clone(),
            what,
        })?;
        file.sync_all().map_err(at_tmp)?;
        Ok((size, sha))
    }

    /// A `.zst` left by an interrupted run whose original is gone: taken over when it
    /// decompresses to exactly the manifest's data.
    fn adopt_stored(&self, f: &CopiedFile) -> Result<Outcome, StorageError> {
        let rel = stored_path(f);
        let at = io_at(&rel);
        let mut r = StoredReader::open(&self.dir.join(&rel)).map_err(&at)?;
        let mut data = HashingWriter::new(io::sink());
        self.pump(|e| corrupt(&rel, e), &at)
            .run(&mut r, &mut data)?;
        let (size, sha256) = r.finish().map_err(&at)?;
        let (_, n, sha) = data.finish();
        check_data(f, (n, sha), |what| StorageError::Corrupt {
            path: rel.clone(),
            what: format!(
                "its original is gone and it does not hold it ({what} differs from the manifest)"
            ),
        })?;
        tracing::info!(file = %f.path, "took over the compressed form an interrupted run left");
        Ok(Outcome {
            stored: Some(StoredForm {
                path: rel.clone(),
                codec: CODEC.into(),
                size,
                sha256,
            }),
            kept: false,
            bytes_in: 0,
            bytes_out: 0,
        })
    }
}

/// A stored object that does not decompress.
pub(crate) fn corrupt(rel: &str, e: io::Error) -> StorageError {
    StorageError::Corrupt {
        path: rel.to_string(),
        what: format!("it does not decompress ({e})"),
    }
}

/// Checks data (size, SHA-256) against the manifest's entry.
pub(crate) fn check_data(
    f: &CopiedFile,
    (size, sha): (u64, String),
    err: impl FnOnce(String) -> StorageError,
) -> Result<(), StorageError> {
    if size != f.size {
        return Err(err(format!("its size ({size} bytes, manifest {})", f.size)));
    }
    if sha != f.sha256 {
        return Err(err("its SHA-256".into()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The pool and the manifest update

/// Runs `jobs` on `parallel` threads (in order: largest first); the first error cancels
/// the jobs still running. Every job's result, by file index.
pub(crate) fn run_pool<T: Send>(
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
pub(crate) struct Tally {
    pub files: u64,
    pub kept: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The first real error (a cancellation only when nothing else failed).
    pub error: Option<StorageError>,
}

/// Records each finished job's stored form in the manifest.
pub(crate) fn apply(
    m: &mut Manifest,
    results: Vec<(usize, Result<Outcome, StorageError>)>,
) -> Tally {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::datadir::FileClass;
    use crate::manifest::{Binlog, Locks, Lsns, RedoFacts};
    use stagehand_engine::resources::Connections;
    use std::collections::BTreeMap;

    /// A sealed backup of `files` (path, content) in `dir`.
    pub(crate) fn backup(dir: &Path, files: &[(&str, Vec<u8>)]) -> Manifest {
        let mut entries = Vec::new();
        for (path, data) in files {
            let p = dir.join(path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(&p, data).expect("write");
            let mut f = crate::seal::hash_file(dir, path).expect("hash");
            f.class = FileClass::NonInnodb;
            entries.push(f);
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let m = Manifest {
            format: crate::manifest::MANIFEST_FORMAT,
            tool: "test".into(),
            complete: true,
            run_id: "r".into(),
            started_at: String::new(),
            finished_at: String::new(),
            server: Default::default(),
            lsn: Lsns::default(),
            binlog: Binlog::default(),
            locks: Locks::default(),
            redo: RedoFacts::default(),
            copies: Vec::new(),
            files: entries,
            preparing: false,
            prepared: None,
            metadata_files: Vec::new(),
            backup_type: "full".into(),
            base: None,
            plan: String::new(),
            host: String::new(),
            verified: None,
        };
        m.write(dir).expect("manifest");
        m
    }

    /// Text that compresses, `n` bytes.
    pub(crate) fn text(n: usize) -> Vec<u8> {
        (0..n).map(|i| b"stagehand backup "[i % 17]).collect()
    }

    /// Bytes that do not compress.
    pub(crate) fn noise(n: usize) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(7);
        (0..n).map(|_| rng.u8(..)).collect()
    }

    pub(crate) fn ctx() -> StepContext {
        StepContext::detached("test", Connections::new(None, BTreeMap::new()))
    }

    pub(crate) fn cfg(dir: &Path) -> CompressConfig {
        CompressConfig {
            dir: dir.display().to_string(),
            level: 3,
            threads: 0,
            parallel: 2,
        }
    }

    fn sample(dir: &Path) -> Manifest {
        backup(
            dir,
            &[
                ("ibdata1", text(3 << 20)),
                ("db/t.frm", text(900)),
                ("db/db.opt", b"x".to_vec()),
                ("db/noise.MAD", noise(64 << 10)),
            ],
        )
    }

    #[tokio::test]
    async fn compresses_files_and_records_their_stored_forms() {
        let d = tempfile::tempdir().expect("tempdir");
        let before = sample(d.path());
        let out = Compress::run(&cfg(d.path()), &ctx())
            .await
            .expect("compress");
        let m = Manifest::read(d.path()).expect("manifest");
        for (f, b) in m.files.iter().zip(&before.files) {
            assert_eq!((&f.sha256, f.size), (&b.sha256, b.size), "data facts kept");
            match &f.stored {
                Some(s) => {
                    assert!(!d.path().join(&f.path).exists(), "{} removed", f.path);
                    let bytes = std::fs::read(d.path().join(&s.path)).expect("object");
                    assert_eq!(bytes.len() as u64, s.size);
                    assert_eq!(format!("{:x}", Sha256::digest(&bytes)), s.sha256);
                    assert_eq!(s.codec, "zstd");
                    let data = zstd::decode_all(bytes.as_slice()).expect("zstd");
                    assert_eq!(format!("{:x}", Sha256::digest(&data)), f.sha256);
                }
                None => assert!(d.path().join(&f.path).exists()),
            }
        }
        let stored: Vec<&str> = m
            .files
            .iter()
            .filter(|f| f.stored.is_some())
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(
            stored,
            ["db/t.frm", "ibdata1"],
            "tiny and random files stay"
        );
        assert!(out["ratio"].as_f64().unwrap_or(0.0) > 5.0, "{out:?}");
        assert_eq!((&out["files"], &out["kept"]), (&json!(2), &json!(2)));
        assert!(crate::manifest::unlisted_files(d.path(), &[])
            .iter()
            .all(|f| !f.ends_with(".tmp")));
        // Run again: nothing to do.
        let again = Compress::run(&cfg(d.path()), &ctx()).await.expect("again");
        assert_eq!(
            (&again["files"], &again["kept"]),
            (&json!(0), &json!(2)),
            "only the files kept as is are tried again"
        );
        assert_eq!(Manifest::read(d.path()).expect("manifest").files, m.files);
    }

    #[tokio::test]
    async fn a_file_changed_since_the_seal_is_named() {
        let d = tempfile::tempdir().expect("tempdir");
        sample(d.path());
        std::fs::write(d.path().join("db/t.frm"), text(901)).expect("write");
        // One at a time: ibdata1 (the largest) is done before t.frm fails.
        let mut c = cfg(d.path());
        c.parallel = 1;
        let e = Compress::run(&c, &ctx()).await.expect_err("changed file");
        assert!(e.message.contains("db/t.frm"), "{}", e.message);
        assert!(
            e.message.contains("changed since it was sealed"),
            "{}",
            e.message
        );
        assert!(d.path().join("db/t.frm").exists(), "the original stays");
        assert!(!d.path().join("db/t.frm.zst").exists());
        assert!(!d.path().join("db/.t.frm.zst.tmp").exists());
        // The other files were done and recorded.
        let m = Manifest::read(d.path()).expect("manifest");
        assert!(m
            .files
            .iter()
            .any(|f| f.path == "ibdata1" && f.stored.is_some()));
    }

    #[tokio::test]
    async fn an_interrupted_run_is_finished_without_losing_a_file() {
        let d = tempfile::tempdir().expect("tempdir");
        sample(d.path());
        let sealed = std::fs::read(d.path().join("stagehand.json")).expect("manifest");
        Compress::run(&cfg(d.path()), &ctx())
            .await
            .expect("compress");
        // Back to a killed run's state: the manifest of the sealed backup, ibdata1 done
        // (original gone), db/t.frm mid-way (original and a stale temporary file).
        std::fs::write(d.path().join("stagehand.json"), &sealed).expect("write");
        std::fs::remove_file(d.path().join("db/t.frm.zst")).expect("rm");
        std::fs::write(d.path().join("db/t.frm"), text(900)).expect("write");
        std::fs::write(d.path().join("db/.t.frm.zst.tmp"), b"partial").expect("write");
        let out = Compress::run(&cfg(d.path()), &ctx()).await.expect("resume");
        assert_eq!(
            (&out["files"], &out["kept"]),
            (&json!(2), &json!(2)),
            "ibdata1.zst taken over, t.frm compressed, the two kept files tried again"
        );
        let m = Manifest::read(d.path()).expect("manifest");
        assert!(m
            .files
            .iter()
            .all(|f| f.path.ends_with(".opt") || f.path.ends_with(".MAD") || f.stored.is_some()));
        assert!(!d.path().join("db/.t.frm.zst.tmp").exists());
        assert_eq!(
            crate::manifest::unlisted_files(d.path(), &listed(&m)),
            Vec::<String>::new()
        );
        // A `.zst` that does not hold the data is not taken over.
        std::fs::write(d.path().join("stagehand.json"), &sealed).expect("write");
        std::fs::write(
            d.path().join("ibdata1.zst"),
            zstd::encode_all(&b"other"[..], 3).expect("zstd"),
        )
        .expect("write");
        let e = Compress::run(&cfg(d.path()), &ctx())
            .await
            .expect_err("wrong object");
        assert!(e.message.contains("ibdata1.zst"), "{}", e.message);
    }

    /// The manifest's paths as stored.
    pub(crate) fn listed(m: &Manifest) -> Vec<CopiedFile> {
        m.files
            .iter()
            .map(|f| CopiedFile {
                path: f.stored.as_ref().map_or(f.path.clone(), |s| s.path.clone()),
                ..f.clone()
            })
            .collect()
    }

    #[test]
    fn levels_outside_1_to_19_are_refused() {
        let mut c = cfg(Path::new("/x"));
        assert!(Compress::check(&c).is_ok());
        c.level = 20;
        assert_eq!(Compress::check(&c).map_err(|e| e.path), Err("level".into()));
        c.level = 0;
        assert!(Compress::check(&c).is_err());
        c.level = 19;
        c.parallel = 0;
        assert_eq!(
            Compress::check(&c).map_err(|e| e.path),
            Err("parallel".into())
        );
    }

    #[tokio::test]
    async fn multithreaded_zstd_gives_the_same_data() {
        let d = tempfile::tempdir().expect("tempdir");
        let before = sample(d.path());
        let mut c = cfg(d.path());
        c.threads = 2;
        c.level = 1;
        Compress::run(&c, &ctx()).await.expect("compress");
        let m = Manifest::read(d.path()).expect("manifest");
        let f = &m.files[m
            .files
            .iter()
            .position(|f| f.path == "ibdata1")
            .expect("ibdata1")];
        let s = f.stored.as_ref().expect("stored");
        let data =
            zstd::decode_all(File::open(d.path().join(&s.path)).expect("open")).expect("zstd");
        assert_eq!(
            data.len() as u64,
            before
                .files
                .iter()
                .find(|f| f.path == "ibdata1")
                .map_or(0, |f| f.size)
        );
    }
}
