//! `fetch`: downloads a backup from a repository into a local directory, files in
//! parallel, each checked against the manifest's size and hash. Resumable: a new run
//! into the same directory keeps the files already fetched and intact, and continues a
//! partly fetched file from where it stopped. The manifest is written last, so the
//! directory is a complete backup only when every file is there and checked.
//!
//! An encrypted backup is fetched only with its key, checked before anything is
//! written: its manifest is taken from its sealed copy, and each object is downloaded
//! into the work folder, checked (hash of the encrypted bytes), decrypted (every
//! chunk authenticated) into the file's stored form and checked again; the local copy
//! is an unencrypted backup like any other.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use stagehand_backup::codec::HashingWriter;
use stagehand_backup::dir::BackupDir;
use stagehand_backup::entry::CopiedFile;
use stagehand_backup::manifest::Encryption;
use stagehand_backup::manifest::{CheckReceipt, Manifest, MANIFEST_FILE, MOVED_MANIFEST_FILE};
use stagehand_engine::step::Finding;
use stagehand_engine::{ConfigError, StepContext, StepError, TypedStep};
use stagehand_host::digest::{algorithm_of, hash_file_like, ContentHasher};
use stagehand_host::progress::Progress;
use stagehand_repo::checks::{check_repo, probe_repository, resolve_id, stored_files};
use stagehand_repo::crypt::{self, Key};
use stagehand_repo::{ByteCounter, RepoConfig, Repository, Store, StoreError, StoreErrorKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use unpack::Unpack;

mod unpack;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchConfig {
    /// Where the backup comes from.
    pub repository: RepoConfig,
    /// The backup's id, or `latest` (the newest complete backup).
    pub id: String,
    /// The local directory (created; must be empty, or hold an interrupted fetch of the
    /// same backup, which is resumed).
    pub to: String,
    /// Files downloaded at once.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Decrypt and decompress each file while it downloads, so the directory holds the
    /// data itself (a backup as `decompress` leaves it) and no compressed copy is ever
    /// written. A file cut short is fetched again from its start.
    #[serde(default)]
    pub decompress: bool,
}

fn default_parallel() -> usize {
    4
}

/// What `fetch` publishes.
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct FetchOutput {
    /// the backup fetched
    pub id: String,
    /// where it is
    pub dir: String,
    /// files in the backup
    pub files: u64,
    /// bytes downloaded by this run
    pub bytes: u64,
    /// files already fetched by an earlier run
    pub reused_files: u64,
    /// wall time
    pub seconds: f64,
    /// the GTID position the backup holds
    pub gtid_binlog_pos: String,
    /// the LSN the backup is consistent at
    pub commit_lsn: u64,
    /// id of the key the backup was encrypted with (empty: not encrypted)
    pub key_id: String,
}

pub struct Fetch;

#[async_trait]
impl TypedStep for Fetch {
    type Config = FetchConfig;
    type Output = FetchOutput;
    const NAME: &'static str = "fetch";
    const SUMMARY: &'static str =
        "Downloads a backup from a repository (parallel, resumable, every file's hash checked)";

    fn check(cfg: &FetchConfig) -> Result<(), ConfigError> {
        check_repo(&cfg.repository)?;
        // An id from an earlier step's outputs (a point-in-time restore's choice) is
        // only known at run time: validation sees a sample or a placeholder.
        let known = !cfg.id.is_empty() && !cfg.id.contains('<');
        if known && cfg.id != "latest" {
            stagehand_repo::check_backup_id(&cfg.id).map_err(|e| ConfigError {
                path: "id".into(),
                message: e.message,
                hint: Some("a backup id as `stagehand backups list` shows it, or `latest`".into()),
            })?;
        }
        Ok(())
    }

    fn describe(cfg: &FetchConfig) -> String {
        let which = if cfg.id == "latest" {
            "the newest complete backup".to_string()
        } else {
            format!("backup {}", cfg.id)
        };
        let form = if cfg.decompress {
            "decrypting and decompressing each file as it arrives (no compressed copy is written) and checking the object's and the data's size and hash against its manifest"
        } else {
            "checking every file's size and hash against its manifest"
        };
        format!(
            "downloads {which} from {} into {} ({} files at once), {form}; writes the manifest last; an encrypted backup needs its key (repository.encryption), whose id is checked before anything is written",
            cfg.repository.describe(),
            cfg.to,
            cfg.parallel
        )
    }

    async fn preflight(cfg: &FetchConfig, _ctx: &StepContext) -> Vec<Finding> {
        let mut findings = vec![probe_repository(&cfg.repository).await];
        findings.extend(stagehand_repo::checks::probe_key(&cfg.repository, false));
        findings
    }

    async fn run(cfg: &FetchConfig, ctx: &StepContext) -> Result<FetchOutput, StepError> {
        let repo = Repository::open(&cfg.repository)
            .await
            .map_err(StoreError::into_step_error)?;
        let id = resolve_id(&repo, &cfg.id)
            .await
            .map_err(StoreError::into_step_error)?;
        let manifest = repo
            .manifest(&id)
            .await
            .map_err(StoreError::into_step_error)?;
        // Before anything is written: the right key, and the sealed manifest.
        let key = backup_key(&cfg.repository, &id, &manifest)?;
        let manifest = match &key {
            Some(k) => repo
                .sealed_manifest(&id, &manifest, k)
                .await
                .map_err(StoreError::into_step_error)?,
            None => manifest,
        };
        let dir = PathBuf::from(&cfg.to);
        let t0 = Instant::now();
        let files = objects(&manifest);
        let owner = FetchOwner {
            url: repo.url(),
            id: &id,
            decompress: cfg.decompress,
        };
        if claim_fetch_dir(&dir, &owner, &manifest)? == Claim::AlreadyFetched {
            tracing::info!(dir = %dir.display(), %id, "already fetched: nothing to download");
            return Ok(fetch_outputs(
                cfg,
                &id,
                &manifest,
                files.len(),
                0,
                files.len() as u64,
                t0,
            ));
        }
        let total: u64 = files.iter().map(|f| f.object.1).sum();
        let progress = Progress::start(&ctx.step_id, "fetched", total);
        let store = repo.store().clone();
        let counter = progress.counter();
        // Not raced against the cancel in a select: fetch_all stops its tasks and
        // waits for them, so nothing writes into the directory after the step.
        let stop = ctx.cancel.child_token();
        let result = fetch_all(
            &store,
            key.map(Arc::new),
            &dir,
            &id,
            &files,
            cfg,
            &counter,
            &stop,
        )
        .await;
        if ctx.cancel.is_cancelled() {
            return Err(StepError::cancelled());
        }
        let reused = result.map_err(|e| {
            e.into_step_error().with_hint(format!(
                "{} is not a complete backup (no manifest); run the fetch again to resume it",
                dir.display()
            ))
        })?;
        let bytes = progress.done();
        drop(progress);
        // The local copy is decrypted: its manifest lists no encrypted objects (the
        // backup's `encryption` stays, a record of the key it came from). Decompressed
        // as it came, it lists no stored forms either.
        let mut local = manifest.clone();
        for f in &mut local.files {
            f.encrypted = None;
            if cfg.decompress {
                f.stored = None;
            }
        }
        // What prepare, later in this run, need not read again: each file's data was
        // checked against its hash as it was written (only when decompressed).
        local.checked = cfg
            .decompress
            .then(|| CheckReceipt::take(&dir, &local, &ctx.run_id, "fetch"));
        local
            .write(&dir)
            .map_err(|e| StepError::fatal(e.to_string()))?;
        let _ = std::fs::remove_dir_all(scratch_dir(&dir));
        let _ = std::fs::remove_file(BackupDir::new(&dir).fetch_marker());
        let _ = std::fs::remove_dir(BackupDir::new(&dir).work());
        Ok(fetch_outputs(
            cfg,
            &id,
            &manifest,
            files.len(),
            bytes,
            reused,
            t0,
        ))
    }
}

fn fetch_outputs(
    cfg: &FetchConfig,
    id: &str,
    manifest: &Manifest,
    files: usize,
    bytes: u64,
    reused: u64,
    t0: Instant,
) -> FetchOutput {
    FetchOutput {
        id: id.into(),
        dir: cfg.to.clone(),
        files: files as u64,
        bytes,
        reused_files: reused,
        seconds: t0.elapsed().as_secs_f64(),
        gtid_binlog_pos: manifest.binlog.gtid_binlog_pos.clone(),
        commit_lsn: manifest.lsn.commit,
        key_id: manifest
            .encryption
            .as_ref()
            .map(|e| e.key_id.clone())
            .unwrap_or_default(),
    }
}

/// The key an encrypted backup needs, checked by id against the one given; `None` for
/// a backup in clear. One line naming both ids when they differ.
fn backup_key(repo: &RepoConfig, id: &str, manifest: &Manifest) -> Result<Option<Key>, StepError> {
    let Some(Encryption { scheme, key_id }) = &manifest.encryption else {
        return Ok(None);
    };
    if scheme != crypt::SCHEME {
        return Err(StepError::fatal(format!(
            "backup {id} is encrypted with `{scheme}`, which this stagehand does not know (it knows {})",
            crypt::SCHEME
        )));
    }
    let given = repo.fetch_key().map_err(|e| StepError::fatal(e.message))?;
    match given {
        None => Err(StepError::fatal(format!(
            "backup {id} is encrypted with key {key_id}, and no key was given"
        ))
        .with_hint("give its key (repository.encryption.key or key_file; the restore plan's encryption_key secret or encryption_key_file param)")),
        Some(k) if k.id() != *key_id => Err(StepError::fatal(format!(
            "backup {id} is encrypted with key {key_id}, the key given is {}",
            k.id()
        ))
        .with_hint("nothing was fetched; give the key whose id the backup names")),
        Some(k) => {
            tracing::info!(%id, key_id = %k.id(), "backup {id} is encrypted; decrypting with key {key_id}");
            Ok(Some(k))
        }
    }
}

/// One file to fetch: the object the repository holds (path, size, hash), for an
/// encrypted one what it decrypts into (the stored form, or the file), and the file.
#[derive(Debug, Clone)]
struct Object {
    object: (String, u64, String),
    decrypted: Option<(String, u64, String)>,
    file: CopiedFile,
}

fn objects(manifest: &Manifest) -> Vec<Object> {
    manifest
        .files
        .iter()
        .zip(stored_files(manifest))
        .map(|(f, object)| Object {
            object,
            file: f.clone(),
            decrypted: f.encrypted.as_ref().map(|_| match &f.stored {
                Some(s) => (s.path.clone(), s.size, s.hash.clone()),
                None => (f.path.clone(), f.size, f.hash.clone()),
            }),
        })
        .collect()
}

/// Where encrypted objects are downloaded before they are decrypted.
fn scratch_dir(dir: &Path) -> PathBuf {
    BackupDir::new(dir).work().join("encrypted")
}

/// Which fetch fills a directory: the backup, and whether it is decompressed on the
/// way (a resume in the other form would mix the two).
struct FetchOwner<'a> {
    url: &'a str,
    id: &'a str,
    decompress: bool,
}

impl FetchOwner<'_> {
    /// The text of the fetch marker.
    fn marker(&self) -> String {
        let form = if self.decompress {
            " (decompressed)"
        } else {
            ""
        };
        format!("{}/{}{form}", self.url, self.id)
    }
}

/// What a fetch directory holds when the step starts.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    /// Empty, new, or an interrupted fetch of this backup: fetch (resume) into it.
    Fetch,
    /// This very backup, fetched by an earlier run (perhaps since verified, decompressed
    /// or being prepared): nothing to do, so a rerun of a restore plan carries on.
    AlreadyFetched,
}

/// The same backup: the run that made it, when and where.
fn same_backup(local: &Manifest, wanted: &Manifest) -> bool {
    local.run_id == wanted.run_id
        && local.started_at == wanted.started_at
        && local.host == wanted.host
        && local.plan == wanted.plan
}

/// Accepts an empty (or missing) directory, or one an earlier fetch of the same backup
/// was filling or has filled; anything else is refused, so that no stray file ends up
/// in a restore.
fn claim_fetch_dir(
    dir: &Path,
    owner: &FetchOwner,
    manifest: &Manifest,
) -> Result<Claim, StepError> {
    let marker = BackupDir::new(dir).fetch_marker();
    let wanted = owner.marker();
    let id = owner.id;
    if let Ok(owner) = std::fs::read_to_string(&marker) {
        if owner.trim() == wanted {
            tracing::info!("resuming the fetch into {}", dir.display());
            return Ok(Claim::Fetch);
        }
        return Err(StepError::fatal(format!(
            "{} is being filled with {} by another fetch, not with {wanted}",
            dir.display(),
            owner.trim()
        ))
        .with_hint("fetch into a new directory"));
    }
    if dir.join(MANIFEST_FILE).exists() {
        // A complete manifest, or one a prepare left `preparing` (the next prepare
        // finishes it).
        return match Manifest::read_for_prepare(dir) {
            Ok(local) if same_backup(&local, manifest) => Ok(Claim::AlreadyFetched),
            Ok(local) => Err(StepError::fatal(format!(
                "{} already holds another backup (made by run {} at {}), not {id}",
                dir.display(),
                local.run_id,
                local.started_at
            ))
            .with_hint("fetch into a new directory")),
            Err(e) => Err(StepError::fatal(format!(
                "{} holds a backup manifest this fetch cannot resume from ({e})",
                dir.display()
            ))
            .with_hint("fetch into a new directory")),
        };
    }
    if dir.join(MOVED_MANIFEST_FILE).exists() {
        return Err(StepError::fatal(format!(
            "{} held a backup that copy_back has since moved into a datadir",
            dir.display()
        ))
        .with_hint(format!(
            "to fetch again, remove it first (rm -r {}) or fetch into a new directory",
            dir.display()
        )));
    }
    let empty = std::fs::read_dir(dir)
        .map(|mut e| e.next().is_none())
        .unwrap_or(true);
    if !empty {
        return Err(StepError::fatal(format!("{} is not empty", dir.display()))
            .with_hint("fetch into a new or empty directory"));
    }
    stagehand_host::private_fs::make_private_dir(dir)
        .and_then(|_| {
            stagehand_host::private_fs::create_private_dir_all(&BackupDir::new(dir).work())
        })
        .and_then(|_| stagehand_host::private_fs::write_private(&marker, wanted))
        .map_err(|e| StepError::fatal(format!("{}: {e}", dir.display())))
        .map(|_| Claim::Fetch)
}

/// Fetches every object, `cfg.parallel` at once, largest first; how many were there
/// already. The first failure (or `stop`) stops the others, and every task, with the
/// thread writing its file, has ended when this returns.
#[allow(clippy::too_many_arguments)]
async fn fetch_all(
    store: &Arc<dyn Store>,
    key: Option<Arc<Key>>,
    dir: &Path,
    id: &str,
    files: &[Object],
    cfg: &FetchConfig,
    counter: &ByteCounter,
    stop: &CancellationToken,
) -> Result<u64, StoreError> {
    let limit = Arc::new(tokio::sync::Semaphore::new(cfg.parallel.max(1)));
    let decompress = cfg.decompress;
    let mut tasks = tokio::task::JoinSet::new();
    let mut tally = Tally::default();
    let mut order: Vec<&Object> = files.iter().collect();
    order.sort_by_key(|f| std::cmp::Reverse(f.object.1));
    for file in order.into_iter().cloned() {
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            p = limit.clone().acquire_owned() => p.map_err(|_| StoreError::permanent("fetch queue closed"))?,
        };
        let (store, counter, key) = (store.clone(), counter.clone(), key.clone());
        let (dir, id, task_stop) = (dir.to_path_buf(), id.to_string(), stop.clone());
        tasks.spawn(async move {
            let _permit = permit;
            if decompress {
                let job = Unpack::new(file.object.clone(), file.file.clone());
                return fetch_unpacked(&store, key, &dir, &id, job, &counter, &task_stop).await;
            }
            tokio::select! {
                biased;
                _ = task_stop.cancelled() => Err(stopped()),
                r = fetch_stored(&store, key, &dir, &id, &file, &counter) => r,
            }
        });
        while let Some(done) = tasks.try_join_next() {
            tally.add(done, stop);
        }
    }
    while let Some(done) = tasks.join_next().await {
        tally.add(done, stop);
    }
    tally.end(stop)
}

/// Fetches an object as the repository stores it (decrypted when encrypted).
async fn fetch_stored(
    store: &Arc<dyn Store>,
    key: Option<Arc<Key>>,
    dir: &Path,
    id: &str,
    file: &Object,
    counter: &ByteCounter,
) -> Result<bool, StoreError> {
    match (&file.decrypted, key) {
        (Some(_), Some(key)) => fetch_encrypted(store, &key, dir, id, file, counter).await,
        (Some(_), None) => Err(StoreError::config(format!(
            "{}: encrypted, and no key",
            file.object.0
        ))),
        (None, _) => {
            let (path, size, sha) = &file.object;
            let object = Repository::object_key(id, path);
            fetch_one(store, &object, &dir.join(path), *size, sha, counter).await
        }
    }
}

fn stopped() -> StoreError {
    StoreError::new(StoreErrorKind::Cancelled, "the fetch was stopped")
}

/// What the fetch tasks gave: files found already fetched, and the first failure.
#[derive(Default)]
struct Tally {
    reused: u64,
    failure: Option<StoreError>,
}

impl Tally {
    /// Counts a finished task; a failure stops the others.
    fn add(
        &mut self,
        r: Result<Result<bool, StoreError>, tokio::task::JoinError>,
        stop: &CancellationToken,
    ) {
        let r = r.map_err(|e| StoreError::permanent(format!("a fetch task crashed: {e}")));
        match r.and_then(|r| r) {
            Ok(reused) => self.reused += u64::from(reused),
            Err(e) => {
                stop.cancel();
                // The others' "stopped" is a consequence, not the cause.
                if self.failure.is_none() && e.kind != StoreErrorKind::Cancelled {
                    self.failure = Some(e);
                }
            }
        }
    }

    fn end(self, stop: &CancellationToken) -> Result<u64, StoreError> {
        match self.failure {
            Some(e) => Err(e),
            None if stop.is_cancelled() => Err(stopped()),
            None => Ok(self.reused),
        }
    }
}

/// Fetches one object into `local`; `true` when it was already there and intact.
async fn fetch_one(
    store: &Arc<dyn Store>,
    key: &str,
    local: &Path,
    size: u64,
    recorded: &str,
    counter: &ByteCounter,
) -> Result<bool, StoreError> {
    if let Some(parent) = local.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::io(&parent.display().to_string(), e))?;
    }
    let have = std::fs::metadata(local).ok().map(|m| m.len());
    if have == Some(size) && hash_of(local, recorded).await? == recorded {
        return Ok(true);
    }
    let have = have.unwrap_or(0);
    // Resume a shorter file; start over when it is longer (not ours) or the whole
    // file was there but wrong.
    let offset = if have < size { have } else { 0 };
    let got = store.get_to_file(key, local, offset, counter).await?;
    let hash = hash_of(local, recorded).await?;
    if got == size && hash == recorded {
        return Ok(false);
    }
    if offset > 0 {
        // The kept part may have been bad: fetch the whole object once more.
        let got = store.get_to_file(key, local, 0, counter).await?;
        let hash = hash_of(local, recorded).await?;
        if got == size && hash == recorded {
            return Ok(false);
        }
        return Err(corrupt(key, got, &hash, size, recorded));
    }
    Err(corrupt(key, got, &hash, size, recorded))
}

/// Streams an object into its file, decrypted and decompressed on the way (see
/// `unpack`); `true` when the file was there already.
async fn fetch_unpacked(
    store: &Arc<dyn Store>,
    key: Option<Arc<Key>>,
    dir: &Path,
    id: &str,
    job: Unpack,
    counter: &ByteCounter,
    stop: &CancellationToken,
) -> Result<bool, StoreError> {
    let dest = job.dest(dir);
    let have = std::fs::metadata(&dest).ok().map(|m| m.len());
    if have == Some(job.file.size) && hash_of(&dest, &job.file.hash).await? == job.file.hash {
        return Ok(true);
    }
    let (mut download, received) = tokio::io::duplex(1 << 20);
    let input = tokio_util::io::SyncIoBridge::new(received);
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumer = {
        let (dir, failed, job) = (dir.to_path_buf(), failed.clone(), job.clone());
        tokio::task::spawn_blocking(move || {
            unpack::unpack(input, key.as_deref(), &dir, &job, &failed)
        })
    };
    let object = Repository::object_key(id, &job.object.0);
    let got = tokio::select! {
        biased;
        _ = stop.cancelled() => Err(stopped()),
        r = store.get_to_writer(&object, &mut download, counter) => r,
    };
    // Read before the stream ends: after that the consumer fails because it ended.
    let consumer_gave_up = failed.load(std::sync::atomic::Ordering::SeqCst);
    // The end of the stream, for the consumer, which is always waited for: no thread
    // writes into the directory once the fetch has returned.
    drop(download);
    let unpacked = consumer
        .await
        .map_err(|e| StoreError::permanent(format!("a fetch task crashed: {e}")))?;
    match got {
        // The download stopped because the consumer gave up: its error says why.
        Err(_) if consumer_gave_up => unpacked.map(|()| false),
        // The consumer saw the stream end early because the download failed.
        Err(e) => Err(e),
        Ok(_) => unpacked.map(|()| false),
    }
}

/// Fetches an encrypted object into the work folder, then decrypts it into the file's
/// stored form (or the file) and checks that; `true` when it was there already.
async fn fetch_encrypted(
    store: &Arc<dyn Store>,
    key: &Arc<Key>,
    dir: &Path,
    id: &str,
    file: &Object,
    counter: &ByteCounter,
) -> Result<bool, StoreError> {
    let (path, size, sha) = &file.object;
    let Some((rel, plain_size, plain_sha)) = &file.decrypted else {
        return Err(StoreError::permanent(format!("{path}: not encrypted")));
    };
    let local = dir.join(rel);
    let have = std::fs::metadata(&local).ok().map(|m| m.len());
    if have == Some(*plain_size) && hash_of(&local, plain_sha).await? == *plain_sha {
        return Ok(true);
    }
    let tmp = scratch_dir(dir).join(path.replace('/', "%2F"));
    std::fs::create_dir_all(scratch_dir(dir))
        .map_err(|e| StoreError::io(&scratch_dir(dir).display().to_string(), e))?;
    let object = Repository::object_key(id, path);
    fetch_one(store, &object, &tmp, *size, sha, counter).await?;
    let (k, p, t, l) = (key.clone(), path.clone(), tmp.clone(), local.clone());
    let recorded = plain_sha.clone();
    let out = tokio::task::spawn_blocking(move || decrypt_file(&k, &p, &t, &recorded, &l))
        .await
        .map_err(|e| StoreError::permanent(format!("a decryption task crashed: {e}")))?;
    let checked = match out {
        Ok((n, h)) if n == *plain_size && h == *plain_sha => Ok(false),
        Ok((n, h)) => Err(corrupt(&object, n, &h, *plain_size, plain_sha)),
        Err(e) => Err(StoreError::mismatch(format!("{id}/{e}"))),
    };
    if checked.is_err() {
        let _ = std::fs::remove_file(&local);
    }
    let _ = std::fs::remove_file(&tmp);
    checked
}

/// Decrypts `src` (the object `path`) into `dest`; size and hash (in the algorithm of
/// `recorded`) of what was written.
fn decrypt_file(
    key: &Key,
    path: &str,
    src: &Path,
    recorded: &str,
    dest: &Path,
) -> Result<(u64, String), crypt::CryptError> {
    let io = |source| crypt::CryptError::Io {
        path: path.to_string(),
        source,
    };
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(src).map_err(io)?);
    let mut out = HashingWriter::new(
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(dest).map_err(io)?),
        ContentHasher::like(recorded),
    );
    crypt::decrypt(key, path, input, &mut out)?;
    let (writer, size, sha) = out.finish();
    let file = writer.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok((size, sha))
}

fn corrupt(key: &str, got: u64, hash: &str, size: u64, recorded: &str) -> StoreError {
    StoreError::mismatch(format!(
        "{key} is corrupt in the repository: {got} bytes with {} {hash}, its manifest says {size} bytes with {recorded}",
        algorithm_of(recorded)
    ))
}

/// The hash of a local file in the algorithm of `recorded`.
async fn hash_of(path: &Path, recorded: &str) -> Result<String, StoreError> {
    let path = path.to_path_buf();
    let recorded = recorded.to_string();
    tokio::task::spawn_blocking(move || {
        hash_file_like(&path, &recorded)
            .map(|(_, hash)| hash)
            .map_err(|e| StoreError::io(&path.display().to_string(), e))
    })
    .await
    .map_err(|e| StoreError::permanent(format!("a hash task crashed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(run_id: &str, complete: bool, preparing: bool) -> Manifest {
        let value = json!({
            "format": 1, "tool": "t", "complete": complete, "preparing": preparing,
            "run_id": run_id, "started_at": "2026-01-01T00:00:00Z", "finished_at": "",
            "server": stagehand_mariadb::datadir::ServerSettings::default(),
            "lsn": stagehand_backup::manifest::Lsns::default(),
            "binlog": stagehand_backup::manifest::Binlog::default(),
            "locks": stagehand_backup::manifest::Locks::default(),
            "redo": stagehand_backup::manifest::RedoFacts::default(),
            "copies": [], "files": [], "metadata_files": [],
        });
        serde_json::from_value(value).expect("a manifest")
    }

    fn owner() -> FetchOwner<'static> {
        FetchOwner {
            url: "file:///r",
            id: "b1",
            decompress: false,
        }
    }

    fn holding(m: &Manifest) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        let text = serde_json::to_vec(m).expect("json");
        std::fs::write(d.path().join(MANIFEST_FILE), text).expect("write");
        d
    }

    #[test]
    fn the_same_backup_already_fetched_is_kept_and_another_is_refused() {
        let wanted = manifest("backup-1", true, false);
        for (local, what) in [
            (manifest("backup-1", true, false), "complete"),
            (manifest("backup-1", false, true), "being prepared"),
        ] {
            let d = holding(&local);
            let claim = claim_fetch_dir(d.path(), &owner(), &wanted).ok();
            assert_eq!(claim, Some(Claim::AlreadyFetched), "{what}");
        }
        let d = holding(&manifest("backup-2", true, false));
        let err = claim_fetch_dir(d.path(), &owner(), &wanted).err();
        assert!(
            err.is_some_and(|e| e.to_string().contains("another backup")),
            "another backup is refused"
        );
    }
}
