//! Repositories: where finished backups live. A local (or NFS) directory, or an
//! S3-compatible bucket and prefix. Each backup is a folder `<id>/` of per-file objects
//! plus its manifest `<id>/stagehand.json`, written last: a reader never takes half a
//! backup for a complete one.
//!
//! [`Store`] is the object layer (put, get, list, delete) with one implementation per
//! kind of storage; [`Repository`] is the backup layer on top of it.

pub mod binlogs;
pub mod checks;
pub mod crypt;
mod files;
pub mod local;
pub mod retention;
pub mod retry;
pub mod s3;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stagehand_backup::manifest::{Manifest, MANIFEST_FILE, SEALED_MANIFEST_FILE};
use std::path::Path;
use std::sync::Arc;

/// A repository as plans write it (`repository:` of upload, fetch and rotate).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// `/path/to/dir`, `file:///path/to/dir` or `s3://bucket/prefix`.
    pub url: String,
    /// S3: the endpoint of an S3-compatible service (MinIO, Ceph RGW, Garage…); AWS
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3: the region (`us-east-1` when neither this nor the AWS configuration says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// S3: path-style addressing (`endpoint/bucket/key`), which most self-hosted
    /// services need.
    #[serde(default)]
    pub path_style: bool,
    /// S3: access key id; with `secret_access_key`. Absent: the usual AWS chain
    /// (environment, profile, web identity, container and instance roles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// S3: storage class of new objects (`STANDARD_IA`, `GLACIER_IR`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// S3: server-side encryption of new objects: `AES256` or `aws:kms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<String>,
    /// S3: the KMS key for `sse: aws:kms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse_kms_key_id: Option<String>,
    /// S3: how long a request keeps being retried after transient errors (an endpoint
    /// down, restarting or failing over; 5xx, throttling, timeouts), with backoff, before
    /// the step fails.
    #[serde(default = "default_retry_for")]
    pub retry_for: String,
    /// S3: attempts per request before giving up, whatever `retry_for` allows; 0 (the
    /// default): no limit but `retry_for`.
    #[serde(default)]
    pub max_attempts: u32,
    /// S3: smallest multipart part (grows with the file so no upload needs more than
    /// 10,000 parts).
    #[serde(default = "default_part_size")]
    pub part_size: String,
    /// S3: requests in flight at once per file (parts of one upload or download).
    #[serde(default = "default_part_parallel")]
    pub part_parallel: usize,
    /// S3: memory for the parts being uploaded, shared by every file a step uploads at
    /// once, so memory stays bounded whatever the parallelism (a part larger than this
    /// is still sent, alone). Empty: 128MiB.
    #[serde(default = "default_buffer_memory")]
    pub buffer_memory: String,
    /// S3: how long to wait for a response (and between bytes of a download) before
    /// the attempt counts as failed and is retried.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: String,
    /// Client-side encryption: `upload` encrypts every object of a backup (AES-256-GCM,
    /// streamed); `fetch` decrypts with the key given here. Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
}

/// A repository's encryption key and whether uploads use it.
#[derive(Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Encrypt what `upload` writes (default true). `fetch` decrypts an encrypted
    /// backup with the key whatever this says.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The key: 64 hex digits (32 random bytes, `openssl rand -hex 32`). Pass it as a
    /// secret (`{{secrets.NAME}}`) so that it is redacted everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A file holding the key (64 hex digits), readable by this user only; used rather
    /// than `key` when both are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

fn yes() -> bool {
    true
}

// By hand: the derived one would print the key.
impl std::fmt::Debug for EncryptionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionConfig")
            .field("enabled", &self.enabled)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .field("key_file", &self.key_file)
            .finish()
    }
}

impl EncryptionConfig {
    /// Empty strings (unset params and optional secrets) as absent.
    fn normalized(&self) -> EncryptionConfig {
        let none_if_empty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        EncryptionConfig {
            enabled: self.enabled,
            key: none_if_empty(&self.key),
            key_file: none_if_empty(&self.key_file),
        }
    }

    /// The key, read now (a key file is read here); `None` when none is given.
    pub fn load(&self) -> Result<Option<crypt::Key>, StoreError> {
        let cfg = self.normalized();
        // The file first: plans pass both, a file param and an optional secret.
        let key = match (&cfg.key_file, &cfg.key) {
            (Some(f), _) => crypt::Key::from_file(Path::new(f)),
            (None, Some(k)) => crypt::Key::from_hex(k, "encryption.key"),
            (None, None) => return Ok(None),
        };
        key.map(Some).map_err(|e| StoreError::config(e.to_string()))
    }
}

fn default_retry_for() -> String {
    "2m".into()
}
fn default_part_size() -> String {
    "16MiB".into()
}
fn default_part_parallel() -> usize {
    4
}
fn default_buffer_memory() -> String {
    "128MiB".into()
}
fn default_read_timeout() -> String {
    "30s".into()
}

impl RepoConfig {
    /// A repository at `url` with defaults for everything else.
    pub fn at(url: &str) -> Self {
        RepoConfig {
            url: url.into(),
            retry_for: default_retry_for(),
            part_size: default_part_size(),
            part_parallel: default_part_parallel(),
            buffer_memory: default_buffer_memory(),
            read_timeout: default_read_timeout(),
            ..Default::default()
        }
    }

    /// Empty optional fields as absent: plans pass optional params and secrets (which
    /// render as empty strings when not given).
    pub fn normalized(&self) -> RepoConfig {
        let none_if_empty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        RepoConfig {
            endpoint: none_if_empty(&self.endpoint),
            region: none_if_empty(&self.region),
            access_key_id: none_if_empty(&self.access_key_id),
            secret_access_key: none_if_empty(&self.secret_access_key),
            session_token: none_if_empty(&self.session_token),
            storage_class: none_if_empty(&self.storage_class),
            sse: none_if_empty(&self.sse),
            sse_kms_key_id: none_if_empty(&self.sse_kms_key_id),
            encryption: self.encryption.as_ref().map(EncryptionConfig::normalized),
            ..self.clone()
        }
    }

    pub fn kind(&self) -> Result<RepoKind, StoreError> {
        RepoKind::parse(&self.url)
    }

    /// Checks the configuration without touching the repository (for validation and
    /// dry-run).
    pub fn check(&self) -> Result<(), StoreError> {
        self.normalized().check_normalized()
    }

    fn check_normalized(&self) -> Result<(), StoreError> {
        if self.url.is_empty() {
            // A plan checked with sample values; the run names the repository.
            return Ok(());
        }
        // S3 settings are ignored for a directory: a plan may pass them from params
        // that serve both kinds.
        self.kind()?;
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(StoreError::config(
                "access_key_id and secret_access_key go together",
            ));
        }
        if let Some(sse) = &self.sse {
            if sse != "AES256" && sse != "aws:kms" {
                return Err(StoreError::config(format!(
                    "sse `{sse}`: expected AES256 or aws:kms"
                )));
            }
        }
        self.part_size_bytes()?;
        self.buffer_memory_bytes()?;
        self.read_timeout_duration()?;
        Ok(())
    }

    /// The key `upload` encrypts with: `None` when encryption is off; an error when it
    /// is on and no key is given (a backup is never stored in clear by mistake).
    pub fn upload_key(&self) -> Result<Option<crypt::Key>, StoreError> {
        match &self.encryption {
            Some(e) if e.enabled => e.load()?.map(Some).ok_or_else(|| {
                StoreError::config(
                    "encryption is enabled but no key is given (encryption.key or encryption.key_file)",
                )
            }),
            _ => Ok(None),
        }
    }

    /// The key `fetch` decrypts with, if one is given (enabled or not).
    pub fn fetch_key(&self) -> Result<Option<crypt::Key>, StoreError> {
        match &self.encryption {
            Some(e) => e.load(),
            None => Ok(None),
        }
    }

    /// Whether `upload` encrypts (for dry-run sentences; reads no key).
    pub fn encrypts(&self) -> bool {
        self.encryption.as_ref().is_some_and(|e| e.enabled)
    }

    /// `read_timeout` parsed (30 s when empty).
    pub fn retry_for_duration(&self) -> Result<std::time::Duration, StoreError> {
        if self.retry_for.trim().is_empty() {
            return Ok(crate::retry::DEFAULT_RETRY_FOR);
        }
        humantime::parse_duration(self.retry_for.trim()).map_err(|_| {
            StoreError::config(format!(
                "retry_for `{}` is not a duration (e.g. 2m)",
                self.retry_for
            ))
        })
    }

    pub fn read_timeout_duration(&self) -> Result<std::time::Duration, StoreError> {
        if self.read_timeout.trim().is_empty() {
            return Ok(std::time::Duration::from_secs(30));
        }
        match humantime::parse_duration(self.read_timeout.trim()) {
            Ok(d) if !d.is_zero() => Ok(d),
            _ => Err(StoreError::config(format!(
                "read_timeout `{}` is not a duration (e.g. 30s)",
                self.read_timeout
            ))),
        }
    }

    pub fn part_size_bytes(&self) -> Result<u64, StoreError> {
        let n = self
            .part_size
            .parse::<bytesize::ByteSize>()
            .map_err(|_| {
                StoreError::config(format!("part_size `{}` is not a size", self.part_size))
            })?
            .as_u64();
        if n < 5 * 1024 * 1024 {
            return Err(StoreError::config(
                "part_size must be at least 5MiB (S3's smallest part)",
            ));
        }
        Ok(n)
    }

    /// `buffer_memory` in bytes (empty: the default).
    pub fn buffer_memory_bytes(&self) -> Result<u64, StoreError> {
        let text = match self.buffer_memory.trim() {
            "" => default_buffer_memory(),
            t => t.to_string(),
        };
        let n = text
            .parse::<bytesize::ByteSize>()
            .map_err(|_| StoreError::config(format!("buffer_memory `{text}` is not a size")))?
            .as_u64();
        if n < 5 * 1024 * 1024 {
            return Err(StoreError::config(
                "buffer_memory must be at least 5MiB (one of S3's smallest parts)",
            ));
        }
        Ok(n)
    }

    /// The repository for people: the URL (never keys), and the endpoint if any.
    pub fn describe(&self) -> String {
        match &self.normalized().endpoint {
            Some(e) => format!("{} (endpoint {e})", self.url),
            None => self.url.clone(),
        }
    }
}

/// What a repository URL points at.
#[derive(Debug, Clone, PartialEq)]
pub enum RepoKind {
    Local(std::path::PathBuf),
    S3 { bucket: String, prefix: String },
}

impl RepoKind {
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StoreError::config(format!("{url}: no bucket in the URL")));
            }
            return Ok(RepoKind::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        if path.is_empty() || !path.starts_with('/') {
            return Err(StoreError::config(format!(
                "{url}: a repository is an absolute path, file:///path or s3://bucket/prefix"
            )));
        }
        Ok(RepoKind::Local(path.into()))
    }
}

/// One object in a store.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    /// The key relative to the repository root (`20261121T101500Z/ibdata1.zst`).
    pub key: String,
    pub size: u64,
}

pub use stagehand_host::progress::ByteCounter;

/// The object layer of a repository. Keys are relative to the repository root and use
/// `/`. Every method returns only when its postcondition holds: a put returns once the
/// object exists with the expected size (and hash where the store can tell), never
/// leaving a partial object under the key.
#[async_trait]
pub trait Store: Send + Sync {
    /// Where the store is, for people (no secrets).
    fn location(&self) -> String;

    /// Uploads the local file `path` (of `size` bytes and hash `hash`, in the form of
    /// `stagehand_host::digest`) as `key`.
    async fn put_file(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        hash: &str,
        progress: &ByteCounter,
    ) -> Result<(), StoreError>;

    /// Writes a small object (a manifest) in one request.
    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError>;

    /// Downloads `key` into `path` from byte `offset` on (resume): the file is
    /// truncated to `offset` and the rest appended. Returns the file's final size.
    async fn get_to_file(
        &self,
        key: &str,
        path: &Path,
        offset: u64,
        progress: &ByteCounter,
    ) -> Result<u64, StoreError>;

    /// Streams `key` into `sink`. A failed attempt resumes where the sink stopped, so
    /// the sink sees every byte once and in order; a write error of the sink ends the
    /// download at once (no retry). Returns the object's size.
    async fn get_to_writer(
        &self,
        key: &str,
        sink: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
        progress: &ByteCounter,
    ) -> Result<u64, StoreError>;

    /// Reads a small object; `None` when it does not exist.
    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every object whose key starts with `prefix`, with sizes, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;

    /// The names of the "folders" right under `prefix` (`a/b/c` under `a/` gives `b`).
    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// Deletes the objects (a missing one is not an error).
    async fn delete(&self, keys: &[String]) -> Result<(), StoreError>;

    /// Aborts multipart uploads under `prefix` that were started and never completed
    /// (what an interrupted upload leaves); returns how many. Stores without multipart
    /// uploads return 0.
    async fn abort_incomplete_uploads(&self, prefix: &str) -> Result<u64, StoreError>;
}

/// What went wrong in a store. `transient` errors were retried until the budget ran out.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The plan's repository settings are wrong.
    Config,
    /// Worth retrying (5xx, throttling, timeouts, reset connections).
    Transient,
    /// Retrying will not help (access denied, no such bucket, disk full…).
    Permanent,
    /// The object is not there.
    NotFound,
    /// The object is there but not what was expected (size or hash).
    Mismatch,
    Cancelled,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
        }
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Config, message)
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Permanent, message)
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Transient, message)
    }
    pub fn mismatch(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Mismatch, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::NotFound, message)
    }
    pub fn io(what: &str, e: std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => StoreErrorKind::NotFound,
            std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut => {
                StoreErrorKind::Transient
            }
            _ => StoreErrorKind::Permanent,
        };
        Self::new(kind, format!("{what}: {e}"))
    }

    pub fn into_step_error(self) -> stagehand_engine::StepError {
        use stagehand_engine::StepError;
        match self.kind {
            StoreErrorKind::Transient => StepError::retryable(self.message),
            StoreErrorKind::Cancelled => StepError::fatal(self.message),
            _ => StepError::fatal(self.message),
        }
    }
}

/// Opens the store a repository configuration names.
pub async fn open_store(cfg: &RepoConfig) -> Result<Arc<dyn Store>, StoreError> {
    let cfg = &cfg.normalized();
    if cfg.url.is_empty() {
        return Err(StoreError::config("no repository url"));
    }
    cfg.check()?;
    match cfg.kind()? {
        RepoKind::Local(path) => Ok(Arc::new(local::LocalStore::new(path))),
        RepoKind::S3 { bucket, prefix } => {
            Ok(Arc::new(s3::S3Store::connect(cfg, &bucket, &prefix).await?))
        }
    }
}

/// A backup as found in a repository.
#[derive(Debug, Clone)]
pub struct BackupEntry {
    pub id: String,
    /// `None` when the folder has no manifest (an interrupted upload) or it does not parse.
    pub manifest: Option<Manifest>,
    /// Why the backup is not complete, when it is not.
    pub problem: Option<String>,
    /// Bytes of its objects in the repository.
    pub stored_bytes: u64,
}

impl BackupEntry {
    pub fn is_complete(&self) -> bool {
        self.manifest.is_some()
    }
}

/// The backup layer over a store.
#[derive(Clone)]
pub struct Repository {
    store: Arc<dyn Store>,
    url: String,
}

impl Repository {
    pub async fn open(cfg: &RepoConfig) -> Result<Self, StoreError> {
        Ok(Repository {
            store: open_store(cfg).await?,
            url: cfg.describe(),
        })
    }

    pub fn from_store(store: Arc<dyn Store>) -> Self {
        let url = store.location();
        Repository { store, url }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Key of a backup's manifest.
    pub fn manifest_key(id: &str) -> String {
        format!("{id}/{MANIFEST_FILE}")
    }

    /// Key of a backup's object.
    pub fn object_key(id: &str, path: &str) -> String {
        format!("{id}/{path}")
    }

    /// Every backup folder, oldest id first (ids are UTC timestamps, so sorting by id
    /// sorts by time), complete or not. The binlog archive's folder is not a backup.
    pub async fn backups(&self) -> Result<Vec<BackupEntry>, StoreError> {
        let objects = self.store.list("").await?;
        let mut by_id: std::collections::BTreeMap<String, u64> = Default::default();
        for o in &objects {
            if let Some((id, _)) = o.key.split_once('/') {
                if id == binlogs::BINLOGS_DIR {
                    continue;
                }
                *by_id.entry(id.to_string()).or_default() += o.size;
            }
        }
        let mut out = Vec::new();
        for (id, stored_bytes) in by_id {
            let (manifest, problem) = match self.manifest(&id).await {
                Ok(m) => (Some(m), None),
                Err(e) if e.kind == StoreErrorKind::Transient => return Err(e),
                Err(e) => (None, Some(e.message)),
            };
            out.push(BackupEntry {
                id,
                manifest,
                problem,
                stored_bytes,
            });
        }
        Ok(out)
    }

    /// The manifest of backup `id`; an error when there is none or it is incomplete.
    pub async fn manifest(&self, id: &str) -> Result<Manifest, StoreError> {
        let key = Self::manifest_key(id);
        let shown = format!("{}/{key}", self.url);
        let bytes = self.store.get_bytes(&key).await?.ok_or_else(|| {
            StoreError::not_found(format!(
                "{shown}: no manifest: backup {id} is not in the repository or is not complete"
            ))
        })?;
        Manifest::from_slice(&bytes, &shown).map_err(|e| StoreError::mismatch(e.to_string()))
    }

    /// Key of an encrypted backup's sealed manifest.
    pub fn sealed_manifest_key(id: &str) -> String {
        format!("{id}/{SEALED_MANIFEST_FILE}")
    }

    /// Writes the sealed (encrypted, authenticated) copy of an encrypted backup's
    /// manifest, before the manifest in clear.
    pub async fn put_sealed_manifest(
        &self,
        id: &str,
        manifest: &Manifest,
        key: &crypt::Key,
    ) -> Result<(), StoreError> {
        let sealed = crypt::encrypt_bytes(key, SEALED_MANIFEST_FILE, &manifest.to_vec())
            .map_err(|e| StoreError::permanent(e.to_string()))?;
        self.store
            .put_bytes(&Self::sealed_manifest_key(id), sealed)
            .await
    }

    /// The manifest of an encrypted backup as its sealed copy says, checked against
    /// the one in clear (what `fetch` trusts): a manifest altered in the repository,
    /// or a sealed copy that does not open with `key`, is an error naming the object.
    pub async fn sealed_manifest(
        &self,
        id: &str,
        clear: &Manifest,
        key: &crypt::Key,
    ) -> Result<Manifest, StoreError> {
        let object = Self::sealed_manifest_key(id);
        let shown = format!("{}/{object}", self.url);
        let bytes = self.store.get_bytes(&object).await?.ok_or_else(|| {
            StoreError::mismatch(format!(
                "{shown} is missing: the backup's manifest says it is encrypted, but its sealed copy is gone"
            ))
        })?;
        let text = crypt::decrypt_bytes(key, SEALED_MANIFEST_FILE, &bytes)
            .map_err(|e| StoreError::mismatch(format!("{}/{id}/{e}", self.url)))?;
        let sealed =
            Manifest::from_slice(&text, &shown).map_err(|e| StoreError::mismatch(e.to_string()))?;
        // `verified` may be added in clear later (a verify of a local repository).
        let unverified = |m: &Manifest| Manifest {
            verified: None,
            checked: None,
            ..m.clone()
        };
        if unverified(&sealed) != unverified(clear) {
            return Err(StoreError::mismatch(format!(
                "{}/{}: differs from its sealed copy {object}: altered in the repository",
                self.url,
                Self::manifest_key(id)
            )));
        }
        Ok(sealed)
    }

    /// Deletes backup `id`: the manifest first, so that a deletion cut short never
    /// leaves something that looks like a complete backup; then its objects.
    pub async fn delete_backup(&self, id: &str) -> Result<u64, StoreError> {
        self.store.delete(&[Self::manifest_key(id)]).await?;
        let keys: Vec<String> = self
            .store
            .list(&format!("{id}/"))
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let n = keys.len() as u64;
        self.store.delete(&keys).await?;
        self.store
            .abort_incomplete_uploads(&format!("{id}/"))
            .await?;
        Ok(n)
    }
}

/// A backup id from a manifest's start time: `20261121T101500Z`.
pub fn backup_id_from(started_at: &str) -> Option<String> {
    let t = chrono::DateTime::parse_from_rfc3339(started_at).ok()?;
    Some(
        t.with_timezone(&chrono::Utc)
            .format("%Y%m%dT%H%M%SZ")
            .to_string(),
    )
}

/// Checks a backup id: a folder name, never a path.
pub fn check_backup_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if id == binlogs::BINLOGS_DIR {
        return Err(StoreError::config(format!(
            "backup id `{id}` is the binlog archive's folder: choose another id"
        )));
    }
    if ok {
        Ok(())
    } else {
        Err(StoreError::config(format!(
            "backup id `{id}`: use letters, digits, `-`, `_` and `.` only"
        )))
    }
}
