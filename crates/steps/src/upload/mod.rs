//! `upload`: puts a complete backup directory into a repository as `<id>/…`, files in
//! parallel, and writes the manifest last, after checking that every object is there
//! with the expected size. A backup in a repository without its manifest is never
//! taken for a complete one, so an interrupted upload is harmless (and a new run of
//! the same upload replaces what it left).

mod follow;
mod ship;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
pub(crate) use ship::Shipper;
use stagehand_backup::entry::CopiedFile;
use stagehand_backup::manifest::Manifest;
use stagehand_engine::step::Finding;
use stagehand_engine::{ConfigError, DirectoryUse, StepContext, StepError, TypedStep};
use stagehand_host::progress::Progress;
use stagehand_repo as repo;
use stagehand_repo::checks::{check_repo, probe_repository_for_writing, stored_files};
use stagehand_repo::crypt::Key;
use stagehand_repo::{RepoConfig, Repository, Store, StoreError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// A complete backup directory (sealed; compressed or not).
    pub dir: String,
    /// Where it goes.
    pub repository: RepoConfig,
    /// The backup's id in the repository (a folder name). Default: the backup's start
    /// time in UTC, `20261121T101500Z`.
    #[serde(default)]
    pub id: Option<String>,
    /// Files compressed or encrypted at once; twice as many are uploaded at once (each
    /// may also send several parts at once), within the repository's `buffer_memory`.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Delete the local directory once the backup is complete in the repository (with
    /// `follow`: each file as soon as it is uploaded).
    #[serde(default)]
    pub remove_local: bool,
    /// Stream the backup out while it is taken: run as a background step (`background:
    /// true`, `until:` the seal step), ship each file as soon as a copy step announces
    /// it, and finish once the backup is sealed (then the redo log, the metadata files
    /// and the manifest go last).
    #[serde(default)]
    pub follow: bool,
    /// Compress each file with zstd on its way out (a file already compressed by a
    /// `compress` step goes as it is).
    #[serde(default)]
    pub compress: Option<CompressOnUpload>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompressOnUpload {
    /// zstd level, 1 (fast) to 19.
    #[serde(default = "default_level")]
    pub level: i32,
    /// zstd worker threads per file (default 1: the file is read while it is compressed;
    /// 0: compress on the uploading thread, which takes more CPU).
    #[serde(default = "default_threads")]
    pub threads: u32,
}

fn default_level() -> i32 {
    3
}

fn default_threads() -> u32 {
    stagehand_backup::codec::DEFAULT_ZSTD_THREADS
}

fn default_parallel() -> usize {
    4
}

/// What `upload` publishes.
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct UploadOutput {
    /// the backup's id in the repository
    pub id: String,
    /// repository URL of the backup
    pub url: String,
    /// objects uploaded
    pub files: u64,
    /// bytes uploaded
    pub bytes: u64,
    /// wall time
    pub seconds: f64,
    /// upload rate
    pub mb_per_s: f64,
    /// id of the key the objects are encrypted with (empty: not encrypted)
    pub key_id: String,
}

impl UploadOutput {
    /// The outputs of backup `id` uploaded in `seconds` (streamed or not).
    fn of(manifest: &Manifest, cfg: &UploadConfig, id: &str, bytes: u64, seconds: f64) -> Self {
        let files = manifest.files.len();
        UploadOutput {
            key_id: manifest
                .encryption
                .as_ref()
                .map(|e| e.key_id.clone())
                .unwrap_or_default(),
            id: id.into(),
            url: format!("{}/{id}", cfg.repository.url.trim_end_matches('/')),
            files: files as u64,
            bytes,
            seconds,
            mb_per_s: bytes as f64 / 1e6 / seconds.max(0.001),
        }
    }
}

pub struct Upload;

#[async_trait]
impl TypedStep for Upload {
    type Config = UploadConfig;
    type Output = UploadOutput;
    const NAME: &'static str = "upload";
    const SUMMARY: &'static str =
        "Uploads a backup to a repository (local directory or S3), manifest last; can stream it out while it is taken";
    const BACKGROUND: bool = true;

    fn check(cfg: &UploadConfig) -> Result<(), ConfigError> {
        check_repo(&cfg.repository)?;
        if cfg.parallel == 0 {
            return Err(ConfigError {
                path: "parallel".into(),
                message: "parallel must be at least 1".into(),
                hint: None,
            });
        }
        if let Some(id) = &cfg.id {
            repo::check_backup_id(id).map_err(|e| ConfigError {
                path: "id".into(),
                message: e.message,
                hint: None,
            })?;
        }
        Ok(())
    }

    fn directories(cfg: &UploadConfig) -> Vec<DirectoryUse> {
        if cfg.follow {
            vec![DirectoryUse::Follows(cfg.dir.clone())]
        } else {
            Vec::new()
        }
    }

    fn describe(cfg: &UploadConfig) -> String {
        let id = cfg
            .id
            .clone()
            .unwrap_or_else(|| "<its start time, UTC>".into());
        let mut s = format!(
            "uploads the backup in {} to {} as {id}/ ({} files at once), checks every object's size and hash, then writes its manifest last",
            cfg.dir,
            cfg.repository.describe(),
            cfg.parallel
        );
        if let Some(c) = &cfg.compress {
            s.push_str(&format!(
                "; files are compressed with zstd level {} on the way",
                c.level
            ));
        }
        if cfg.repository.encrypts() {
            s.push_str(&format!(
                "; every object (and a sealed copy of the manifest) is encrypted with AES-256-GCM, key from {}",
                key_source(&cfg.repository)
            ));
        }
        if cfg.follow {
            s = format!("streams the backup out while it is taken: {s}; each file leaves as soon as a copy step finishes it");
        }
        if cfg.remove_local {
            s.push_str(&format!(
                "; local files are deleted once uploaded ({} keeps no copy)",
                cfg.dir
            ));
        }
        if cfg.follow && follow::spool_request(cfg).compress.is_some() {
            s.push_str(
                "; the copy steps write InnoDB files compressed, and they leave as they are",
            );
        }
        s
    }

    async fn preflight(cfg: &UploadConfig, _ctx: &StepContext) -> Vec<Finding> {
        let mut findings = vec![probe_repository_for_writing(&cfg.repository).await];
        findings.extend(stagehand_repo::checks::probe_key(&cfg.repository, true));
        findings
    }

    async fn run(cfg: &UploadConfig, ctx: &StepContext) -> Result<UploadOutput, StepError> {
        if cfg.follow {
            return follow::run(cfg, ctx).await;
        }
        if ctx.is_background() {
            return Err(StepError::fatal(
                "upload runs in the background only with `follow: true`",
            ));
        }
        let dir = PathBuf::from(&cfg.dir);
        let manifest = Manifest::read(&dir).map_err(|e| {
            StepError::fatal(e.to_string()).with_hint("upload takes a complete (sealed) backup")
        })?;
        let id = match &cfg.id {
            Some(id) => id.clone(),
            None => repo::backup_id_from(&manifest.started_at).ok_or_else(|| {
                StepError::fatal(format!(
                    "the manifest's start time `{}` is not a timestamp; give the upload an `id`",
                    manifest.started_at
                ))
            })?,
        };
        let key = upload_key(cfg)?;
        let repo = Repository::open(&cfg.repository)
            .await
            .map_err(StoreError::into_step_error)?;
        let t0 = Instant::now();
        let outcome = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => Err(StoreError::new(repo::StoreErrorKind::Cancelled, "cancelled")),
            r = upload_backup(&repo, &dir, &manifest, &id, cfg, key, &ctx.step_id) => r,
        };
        let manifest = match outcome {
            Ok(m) => m,
            Err(e) => {
                // Parts of an upload cut short must not stay behind (they cost money and
                // never expire on their own).
                let _ = repo
                    .store()
                    .abort_incomplete_uploads(&format!("{id}/"))
                    .await;
                return Err(e.into_step_error().with_hint(format!(
                "nothing in {} looks complete: backup {id} has no manifest there; run the plan again to upload it",
                repo.url()
            )));
            }
        };
        let bytes = manifest.stored_bytes();
        let secs = t0.elapsed().as_secs_f64();
        if cfg.remove_local {
            std::fs::remove_dir_all(&dir).map_err(|e| {
                StepError::fatal(format!(
                    "backup {id} is complete in the repository, but {} could not be removed: {e}",
                    dir.display()
                ))
            })?;
        }
        tracing::info!(%id, bytes, seconds = secs, "backup uploaded to {}", repo.url());
        Ok(UploadOutput::of(&manifest, cfg, &id, bytes, secs))
    }
}

/// Where the key comes from, for people (never the key).
fn key_source(repo: &RepoConfig) -> String {
    match repo.normalized().encryption {
        Some(e) if e.key_file.is_some() => {
            format!("the file {}", e.key_file.unwrap_or_default())
        }
        Some(e) if e.key.is_some() => "the plan (encryption.key)".into(),
        _ => "nowhere: none is given, so the run will fail".into(),
    }
}

/// The key uploads encrypt with, if any; its id is logged (never the key).
pub(crate) fn upload_key(cfg: &UploadConfig) -> Result<Option<Arc<Key>>, StepError> {
    let key = cfg
        .repository
        .upload_key()
        .map_err(|e| StepError::fatal(e.message))?;
    if let Some(k) = &key {
        tracing::info!(key_id = %k.id(), "objects are encrypted with key {}", k.id());
    }
    Ok(key.map(Arc::new))
}

async fn upload_backup(
    repo: &Repository,
    dir: &Path,
    manifest: &Manifest,
    id: &str,
    cfg: &UploadConfig,
    key: Option<Arc<Key>>,
    step: &str,
) -> Result<Manifest, StoreError> {
    claim_destination(repo, id).await?;
    let store = repo.store().clone();
    let total: u64 = manifest.stored_bytes();
    let progress = Progress::start(step, "uploaded", total);
    let shipper = Shipper::new(
        store.clone(),
        dir,
        id,
        cfg.compress.clone(),
        key.clone(),
        progress.counter(),
        // The whole directory goes at the end (`remove_local`), once the backup is complete.
        false,
        cfg.parallel,
    )?;
    let manifest = ship_all(&shipper, manifest, cfg.parallel).await?;
    drop(progress);
    finish_upload(repo, id, &manifest, key.as_deref()).await?;
    Ok(manifest)
}

/// Refuses an id that is complete already (a backup is never overwritten) and clears
/// what an interrupted attempt at the same id left (objects, multipart uploads).
pub(crate) async fn claim_destination(repo: &Repository, id: &str) -> Result<(), StoreError> {
    repo::check_backup_id(id)?;
    if repo.manifest(id).await.is_ok() {
        return Err(StoreError::permanent(format!(
            "{}: backup {id} is already there (complete); a backup is never overwritten",
            repo.url()
        )));
    }
    repo.delete_backup(id).await.map(|_| ())
}

/// Checks the objects, writes the manifest last and reads it back. An encrypted
/// backup's manifest goes twice: sealed (`stagehand.json.enc`, what a fetch trusts) and
/// then in clear (what `backups list/show` and `rotate` read without the key).
pub(crate) async fn finish_upload(
    repo: &Repository,
    id: &str,
    manifest: &Manifest,
    key: Option<&Key>,
) -> Result<(), StoreError> {
    let store = repo.store();
    check_objects(store, id, &stored_files(manifest)).await?;
    if let Some(key) = key {
        repo.put_sealed_manifest(id, manifest, key).await?;
    }
    store
        .put_bytes(&Repository::manifest_key(id), manifest.to_vec())
        .await?;
    // The postcondition: the repository now says the backup is complete.
    let back = repo.manifest(id).await?;
    if back.files.len() != manifest.files.len() || back.run_id != manifest.run_id {
        return Err(StoreError::mismatch(format!(
            "{}: the manifest read back differs from the one written",
            repo.url()
        )));
    }
    Ok(())
}

/// Ships every file of `manifest` not shipped yet, `parallel` at once; returns the
/// manifest with the stored forms filled in.
pub(crate) async fn ship_all(
    shipper: &Shipper,
    manifest: &Manifest,
    parallel: usize,
) -> Result<Manifest, StoreError> {
    let limit = Arc::new(tokio::sync::Semaphore::new(ship::files_in_flight(parallel)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut order: Vec<CopiedFile> = manifest
        .files
        .iter()
        .filter(|f| !shipper.has_shipped(f))
        .cloned()
        .collect();
    // Largest first, so one big file does not start last.
    order.sort_by_key(|f| std::cmp::Reverse(f.size));
    for file in order {
        let permit = limit
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::permanent("upload queue closed"))?;
        let shipper = shipper.clone();
        tasks.spawn(async move {
            let _permit = permit;
            shipper.ship(&file).await
        });
        // Stop queueing at the first failure.
        while let Some(done) = tasks.try_join_next() {
            joined(done)?;
        }
    }
    while let Some(done) = tasks.join_next().await {
        joined(done)?;
    }
    shipper.stored_manifest(manifest)
}

pub(crate) fn joined(
    r: Result<Result<(), StoreError>, tokio::task::JoinError>,
) -> Result<(), StoreError> {
    r.map_err(|e| StoreError::permanent(format!("an upload task crashed: {e}")))?
}

/// Every object of the backup is in the repository with its size, and nothing else is
/// (an earlier, interrupted upload of the same id may have left other files).
async fn check_objects(
    store: &Arc<dyn Store>,
    id: &str,
    files: &[(String, u64, String)],
) -> Result<(), StoreError> {
    let listed = store.list(&format!("{id}/")).await?;
    let found: std::collections::HashMap<&str, u64> =
        listed.iter().map(|o| (o.key.as_str(), o.size)).collect();
    let mut expected = std::collections::HashSet::new();
    for (path, size, _) in files {
        let key = Repository::object_key(id, path);
        match found.get(key.as_str()) {
            Some(s) if s == size => {}
            Some(s) => {
                return Err(StoreError::mismatch(format!(
                    "{key}: {s} bytes in the repository, {size} expected"
                )))
            }
            None => {
                return Err(StoreError::mismatch(format!(
                    "{key}: missing from the repository after its upload"
                )))
            }
        }
        expected.insert(key);
    }
    let stale: Vec<String> = listed
        .into_iter()
        .map(|o| o.key)
        .filter(|k| !expected.contains(k))
        .collect();
    if !stale.is_empty() {
        tracing::info!(
            count = stale.len(),
            "removing objects an earlier attempt left"
        );
        store.delete(&stale).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Compress;
    use crate::fetch::{Fetch, FetchConfig};
    use crate::test_support::{backup, cfg, ctx, noise, text};
    use stagehand_repo::EncryptionConfig;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const OTHER: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn repo_with_key(dir: &Path, key: &str) -> RepoConfig {
        RepoConfig {
            encryption: Some(EncryptionConfig {
                enabled: true,
                key: Some(key.into()),
                key_file: None,
            }),
            ..RepoConfig::at(&dir.display().to_string())
        }
    }

    fn fetch_cfg(repo: RepoConfig, to: &Path) -> FetchConfig {
        FetchConfig {
            repository: repo,
            id: "b1".into(),
            to: to.display().to_string(),
            parallel: 2,
            decompress: false,
        }
    }

    /// Compresses a backup of `files` in `src` and uploads it to `repo` as `b1`.
    async fn compressed_and_uploaded(src: &Path, repo: RepoConfig, files: &[(&str, Vec<u8>)]) {
        backup(src, files);
        Compress::run(&cfg(src), &ctx()).await.expect("compress");
        let upload = UploadConfig {
            dir: src.display().to_string(),
            repository: repo,
            id: Some("b1".into()),
            parallel: 2,
            remove_local: false,
            follow: false,
            compress: None,
        };
        Upload::run(&upload, &ctx()).await.expect("upload");
    }

    /// `decompress: true`: each object is decrypted and decompressed as it downloads.
    /// The directory holds the data and a manifest without stored forms, and no
    /// compressed copy; a corrupt object fails the fetch, leaving neither its file nor a
    /// manifest, and a fetch after the repair completes.
    #[tokio::test]
    async fn a_fetch_that_decompresses_writes_the_data_and_refuses_a_corrupt_object() {
        let files = [
            ("ibdata1", text(3 << 20)),
            ("db/t.frm", text(900)),
            ("db/noise.MAD", noise(200 << 10)),
            ("db/empty.MYD", Vec::new()),
        ];
        for encrypted in [false, true] {
            let d = tempfile::tempdir().expect("tempdir");
            let (src, repo_dir) = (d.path().join("b"), d.path().join("repo"));
            let repo = if encrypted {
                repo_with_key(&repo_dir, KEY)
            } else {
                RepoConfig::at(&repo_dir.display().to_string())
            };
            compressed_and_uploaded(&src, repo.clone(), &files).await;
            // The manifest the repository holds names the objects (encrypted or not).
            let stored = Manifest::read(&repo_dir.join("b1")).expect("manifest");
            assert_eq!(
                stored.files.iter().any(|f| f.encrypted.is_some()),
                encrypted
            );
            assert!(
                stored.files.iter().any(|f| f.stored.is_some()),
                "compressed"
            );

            let back = d.path().join("back");
            let fcfg = FetchConfig {
                decompress: true,
                ..fetch_cfg(repo.clone(), &back)
            };
            let out = Fetch::run(&fcfg, &ctx()).await.expect("fetch");
            assert_eq!(out.files, files.len() as u64);
            for (path, data) in &files {
                let got = std::fs::read(back.join(path)).expect("fetched");
                assert!(
                    got == *data,
                    "{path} holds its data (encrypted: {encrypted})"
                );
            }
            let local = Manifest::read(&back).expect("fetched manifest");
            assert!(local
                .files
                .iter()
                .all(|f| f.stored.is_none() && f.encrypted.is_none()));
            assert!(
                stagehand_backup::manifest::unlisted_files(&back, &local.files).is_empty(),
                "no compressed copy or temporary file left"
            );

            // One flipped byte in the largest object.
            let (object, file) = stagehand_repo::checks::stored_files(&stored)
                .into_iter()
                .zip(&stored.files)
                .max_by_key(|(o, _)| o.1)
                .expect("an object");
            let at = repo_dir.join("b1").join(&object.0);
            let good = std::fs::read(&at).expect("object");
            let mut bad = good.clone();
            bad[good.len() / 2] ^= 1;
            std::fs::write(&at, &bad).expect("corrupt it");
            let again = d.path().join("again");
            let acfg = FetchConfig {
                decompress: true,
                ..fetch_cfg(repo.clone(), &again)
            };
            let e = Fetch::run(&acfg, &ctx())
                .await
                .expect_err("a corrupt object fails the fetch");
            assert!(e.to_string().contains(&object.0), "{e}");
            assert!(!again.join("stagehand.json").exists(), "no manifest");
            assert!(
                !again.join(&file.path).exists(),
                "no file from the bad object"
            );
            std::fs::write(&at, &good).expect("repair");
            let out = Fetch::run(&acfg, &ctx()).await.expect("after the repair");
            assert!(out.reused_files > 0, "the files fetched before were kept");
            assert!(
                std::fs::read(again.join(&file.path)).expect("fixed")
                    == std::fs::read(back.join(&file.path)).expect("first")
            );
        }
    }

    #[tokio::test]
    async fn a_compressed_backup_uploaded_encrypted_fetches_back_with_its_key_only() {
        let d = tempfile::tempdir().expect("tempdir");
        let (src, repo) = (d.path().join("b"), d.path().join("repo"));
        let files = [
            ("ibdata1", text(3 << 20)),
            ("db/t.frm", text(900)),
            ("db/noise.MAD", noise(200 << 10)),
        ];
        backup(&src, &files);
        Compress::run(&cfg(&src), &ctx()).await.expect("compress");
        let upload = UploadConfig {
            dir: src.display().to_string(),
            repository: repo_with_key(&repo, KEY),
            id: Some("b1".into()),
            parallel: 2,
            remove_local: false,
            follow: false,
            compress: None,
        };
        let out = Upload::run(&upload, &ctx()).await.expect("upload");
        let key_id = stagehand_repo::crypt::Key::from_hex(KEY, "t")
            .expect("key")
            .id();
        assert_eq!(out.key_id, key_id);
        for obj in std::fs::read_dir(repo.join("b1"))
            .expect("objects")
            .flatten()
            .filter(|e| e.path().is_file() && e.file_name() != "stagehand.json")
        {
            let bytes = std::fs::read(obj.path()).expect("object");
            assert!(bytes.starts_with(b"STGHENC1"), "{:?} encrypted", obj.path());
            assert!(!bytes.windows(16).any(|w| w == b"stagehand backup"));
        }

        // A wrong key: refused before the directory is even made.
        let refused = d.path().join("refused");
        let e = Fetch::run(&fetch_cfg(repo_with_key(&repo, OTHER), &refused), &ctx())
            .await
            .expect_err("wrong key");
        assert!(e.to_string().contains(&key_id), "{e}");
        assert!(!refused.exists());

        // The right key: the same stored files as the backup had, a plain manifest.
        let back = d.path().join("back");
        let fetched = Fetch::run(&fetch_cfg(repo_with_key(&repo, KEY), &back), &ctx())
            .await
            .expect("fetch");
        assert_eq!(fetched.key_id, key_id);
        let m = Manifest::read(&src).expect("manifest");
        let local = Manifest::read(&back).expect("fetched manifest");
        assert!(local.files.iter().all(|f| f.encrypted.is_none()));
        assert!(!back.join(".stagehand").exists(), "no scratch left");
        for f in &m.files {
            let rel = f.local_path();
            assert_eq!(
                std::fs::read(back.join(rel)).expect("fetched"),
                std::fs::read(src.join(rel)).expect("original"),
                "{rel}"
            );
        }
    }
}
