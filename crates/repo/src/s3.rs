//! A repository in an S3-compatible bucket (AWS, MinIO, Ceph RGW, Garage…).
//!
//! Every request goes through [`Retry`] (the SDK's own retries are off, see
//! `retry.rs`). Puts are checked end to end: Content-MD5 on every request body, the
//! ETag S3 computes (single or multipart) against ours, the file's SHA-256 stored as
//! metadata `sha256`, and a HEAD afterwards that must show the size and that hash. A
//! multipart upload that fails for good (or whose future is dropped) is aborted, so no
//! orphan parts stay billed and no partial object appears under the key.

use super::retry::{classify, Failure, Retry};
use super::{ByteCounter, ObjectInfo, RepoConfig, Store, StoreError, StoreErrorKind};
use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, ServerSideEncryption,
    StorageClass,
};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;
use md5::Md5;
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const MIB: u64 = 1 << 20;
/// S3's limits: parts per upload, bytes per part, bytes per object.
pub const MAX_PARTS: u64 = 10_000;
pub const MAX_PART_SIZE: u64 = 5 << 30;
pub const MAX_OBJECT_SIZE: u64 = 5 << 40;
/// Keys per DeleteObjects request (S3's limit).
const DELETE_BATCH: usize = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The slowest upload we accept before calling a request stalled: the response
/// timeout of a request with a body grows by its size at this rate.
const MIN_UPLOAD_RATE: u64 = 256 * 1024;

/// The part size for a file of `size` bytes: at least `min_part`, and large enough
/// (rounded up to whole MiB) that the upload needs no more than 10,000 parts.
pub fn part_size_for(size: u64, min_part: u64) -> u64 {
    let needed = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    min_part.max(needed)
}

/// The ETag S3 gives a multipart object: the MD5 of the parts' binary MD5s, `-N`.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut h = Md5::new();
    for m in part_md5s {
        h.update(m);
    }
    format!("{}-{}", hex(&h.finalize()), part_md5s.len())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn md5_of(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

fn unquote(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    bucket: String,
    prefix: String,
    retry: Retry,
    part_size: u64,
    part_parallel: usize,
    read_timeout: Duration,
    storage_class: Option<StorageClass>,
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
    location: String,
}

impl S3Store {
    /// Builds the client; sends nothing (a wrong bucket or key shows on first use).
    pub async fn connect(cfg: &RepoConfig, bucket: &str, prefix: &str) -> Result<Self, StoreError> {
        let read_timeout = cfg.read_timeout_duration()?;
        let part_size = cfg.part_size_bytes()?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            // Our own loop retries (retry.rs says why).
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts(read_timeout, 0));
        // Without a region here the loader's chain (environment, profile, IMDS) asks,
        // with our HTTP client; us-east-1 when nothing says.
        if let Some(r) = &cfg.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(ep) = &cfg.endpoint {
            loader = loader.endpoint_url(ep);
        }
        let mut secrets = Vec::new();
        if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            secrets.push(id.clone());
            secrets.push(secret.clone());
            secrets.extend(cfg.session_token.clone());
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                cfg.session_token.clone(),
                None,
                "stagehand-repository",
            ));
        }
        let sdk = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk);
        if sdk.region().is_none() {
            conf = conf.region(Region::from_static("us-east-1"));
        }
        let conf = conf
            .force_path_style(cfg.path_style)
            // Third-party servers (older MinIO, Ceph, Garage) reject or ignore the
            // newer flexible checksums; Content-MD5 covers our bodies.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::disabled())
            .build();
        let location = match &cfg.endpoint {
            Some(ep) => format!("s3://{bucket}/{prefix} (endpoint {ep})"),
            None => format!("s3://{bucket}/{prefix}"),
        };
        Ok(S3Store {
            inner: Arc::new(Inner {
                client: Client::from_conf(conf),
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
                retry: Retry::from_env(cfg.max_attempts).with_secrets(secrets),
                part_size,
                part_parallel: cfg.part_parallel.max(1),
                read_timeout,
                storage_class: cfg.storage_class.as_deref().map(StorageClass::from),
                sse: cfg.sse.as_deref().map(ServerSideEncryption::from),
                sse_kms_key_id: cfg.sse_kms_key_id.clone(),
                location,
            }),
        })
    }

    /// Replaces the backoff's base and cap (tests use a few milliseconds).
    pub fn with_backoff(mut self, base: Duration, cap: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.retry.base = base;
            inner.retry.cap = cap.max(base);
        }
        self
    }

    /// The underlying client (tests inspect the bucket with it).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The full object key of a repository key.
    pub fn object_key(&self, key: &str) -> String {
        self.inner.full(key)
    }
}

/// Connect, response and attempt timeouts; `body` bytes extend the response timeout
/// at [`MIN_UPLOAD_RATE`] because the response only starts once the body is sent.
fn timeouts(read: Duration, body: u64) -> TimeoutConfig {
    let read = read + Duration::from_secs(body / MIN_UPLOAD_RATE);
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(read)
        .operation_attempt_timeout(CONNECT_TIMEOUT + read * 2)
        .build()
}

/// Adds a Content-MD5 header to a request with an in-memory body (DeleteObjects:
/// some S3-compatible servers insist on it).
fn add_content_md5(req: &mut aws_sdk_s3::config::http::HttpRequest) {
    if let Some(body) = req.body().bytes() {
        let md5 = aws_smithy_types::base64::encode(md5_of(body));
        req.headers_mut().insert("content-md5", md5);
    }
}

/// Applies the repository's storage class, encryption and the `sha256` metadata to a
/// PutObject or CreateMultipartUpload request.
macro_rules! new_object_settings {
    ($req:expr, $inner:expr, $sha256:expr) => {{
        let mut r = $req.metadata("sha256", $sha256);
        if let Some(c) = &$inner.storage_class {
            r = r.storage_class(c.clone());
        }
        if let Some(s) = &$inner.sse {
            r = r.server_side_encryption(s.clone());
        }
        if let Some(k) = &$inner.sse_kms_key_id {
            r = r.ssekms_key_id(k);
        }
        r
    }};
}

/// A part the server has.
struct SentPart {
    number: i32,
    etag: String,
    md5: [u8; 16],
    len: u64,
}

/// One part read from the file.
struct PartData {
    bytes: Bytes,
    md5: [u8; 16],
}

/// Reads `len` bytes at `offset` (off the async threads) and feeds them to the
/// running SHA-256 of the file.
async fn read_part(
    file: Arc<std::fs::File>,
    shown: String,
    offset: u64,
    len: u64,
    mut sha: Sha256,
) -> Result<(PartData, Sha256), StoreError> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                StoreError::mismatch(format!(
                    "{shown}: shorter than expected at byte {offset} (did the file change?)"
                ))
            } else {
                StoreError::io(&shown, e)
            }
        })?;
        sha.update(&buf);
        let md5 = md5_of(&buf);
        Ok((
            PartData {
                bytes: Bytes::from(buf),
                md5,
            },
            sha,
        ))
    })
    .await
    .map_err(|e| StoreError::permanent(format!("a repository task crashed: {e}")))?
}

/// Aborts a multipart upload unless disarmed: on error paths explicitly, and from
/// `Drop` when the upload's future is dropped (cancellation).
struct UploadGuard {
    inner: Arc<Inner>,
    key: String,
    upload_id: String,
    armed: bool,
}

impl UploadGuard {
    async fn abort(mut self) {
        self.armed = false;
        if let Err(e) = self.inner.abort_upload(&self.key, &self.upload_id).await {
            tracing::warn!(
                "could not abort the multipart upload of {}: {e}; `abort_incomplete_uploads` removes it later",
                self.inner.target(&self.key)
            );
        }
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let inner = self.inner.clone();
        let key = std::mem::take(&mut self.key);
        let upload_id = std::mem::take(&mut self.upload_id);
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    if let Err(e) = inner.abort_upload(&key, &upload_id).await {
                        tracing::warn!("could not abort a cancelled multipart upload: {e}");
                    }
                });
            }
            Err(_) => tracing::warn!(
                "a cancelled multipart upload of {} is left for `abort_incomplete_uploads`",
                inner.target(&key)
            ),
        }
    }
}

impl Inner {
    /// Every page of ListObjectsV2 under `full_prefix` (with `delimiter`, the "folders"
    /// come as common prefixes), each request retried on its own.
    async fn list_pages(
        &self,
        full_prefix: &str,
        delimiter: Option<&str>,
        mut each: impl FnMut(&aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output),
    ) -> Result<(), StoreError> {
        let target = self.target(full_prefix);
        let mut token: Option<String> = None;
        loop {
            let page = self
                .retry
                .run("ListObjectsV2", &target, |_| {
                    let req = self
                        .client
                        .list_objects_v2()
                        .bucket(&self.bucket)
                        .prefix(full_prefix)
                        .set_delimiter(delimiter.map(str::to_string))
                        .set_continuation_token(token.clone());
                    async move { req.send().await.map_err(|e| classify(&e)) }
                })
                .await?;
            each(&page);
            token = page.next_continuation_token().map(str::to_string);
            if page.is_truncated() != Some(true) || token.is_none() {
                return Ok(());
            }
        }
    }

    fn full(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{}", self.prefix, key)
        }
    }

    /// A full key back to a repository key.
    fn relative<'a>(&self, full: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            Some(full)
        } else {
            full.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }

    fn target(&self, full: &str) -> String {
        format!("s3://{}/{}", self.bucket, full)
    }

    fn is_kms(&self) -> bool {
        matches!(self.sse, Some(ServerSideEncryption::AwsKms))
    }

    fn upload_override(&self, body: u64) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::default().timeout_config(timeouts(self.read_timeout, body))
    }

    /// One PutObject of an in-memory body, ETag checked, then the HEAD check.
    async fn put_small(&self, full: &str, body: Bytes, sha256: &str) -> Result<(), StoreError> {
        let target = self.target(full);
        let md5 = md5_of(&body);
        let md5_b64 = aws_smithy_types::base64::encode(md5);
        let len = body.len() as u64;
        let out = self
            .retry
            .run("PutObject", &target, |_| {
                let req = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(full)
                    .content_length(len as i64)
                    .content_md5(&md5_b64)
                    .body(ByteStream::from(body.clone()));
                let req = new_object_settings!(req, self, sha256);
                let over = self.upload_override(len);
                async move {
                    req.customize()
                        .config_override(over)
                        .send()
                        .await
                        .map_err(|e| classify(&e))
                }
            })
            .await?;
        if !self.is_kms() {
            let want = hex(&md5);
            if let Some(got) = out.e_tag().map(unquote).filter(|e| *e != want) {
                let _ = self.delete_one(full).await;
                return Err(StoreError::mismatch(format!(
                    "PutObject {target}: ETag {got}, expected the MD5 {want}; the object was removed"
                )));
            }
        }
        self.verify_head(full, len, sha256).await.map(|_| ())
    }

    /// HEAD: the object must have `size` bytes and metadata `sha256`; otherwise it is
    /// removed (no wrong object stays under the key). Returns its ETag.
    async fn verify_head(
        &self,
        full: &str,
        size: u64,
        sha256: &str,
    ) -> Result<Option<String>, StoreError> {
        let target = self.target(full);
        let head = self
            .retry
            .run("HeadObject", &target, |_| {
                let req = self.client.head_object().bucket(&self.bucket).key(full);
                async move { req.send().await.map_err(|e| classify(&e)) }
            })
            .await?;
        let got_size = head.content_length().unwrap_or(-1);
        let got_sha = head
            .metadata()
            .and_then(|m| m.get("sha256"))
            .map(String::as_str);
        if got_size != size as i64 || got_sha != Some(sha256) {
            let _ = self.delete_one(full).await;
            return Err(StoreError::mismatch(format!(
                "{target}: after the upload the object has {got_size} bytes and sha256 {}, expected {size} bytes and {sha256}; the object was removed",
                got_sha.unwrap_or("(none)")
            )));
        }
        Ok(head.e_tag().map(|e| unquote(e).to_string()))
    }

    async fn delete_one(&self, full: &str) -> Result<(), StoreError> {
        let target = self.target(full);
        self.retry
            .run("DeleteObject", &target, |_| {
                let req = self.client.delete_object().bucket(&self.bucket).key(full);
                async move { req.send().await.map(|_| ()).map_err(|e| classify(&e)) }
            })
            .await
    }

    async fn abort_upload(&self, full: &str, upload_id: &str) -> Result<(), StoreError> {
        let target = self.target(full);
        let r = self
            .retry
            .run("AbortMultipartUpload", &target, |_| {
                let req = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(upload_id);
                async move { req.send().await.map(|_| ()).map_err(|e| classify(&e)) }
            })
            .await;
        match r {
            Err(e) if e.kind == StoreErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    async fn upload_part(
        self: Arc<Self>,
        full: String,
        upload_id: String,
        number: i32,
        part: PartData,
    ) -> Result<SentPart, StoreError> {
        let target = format!("{} part {number}", self.target(&full));
        let md5_b64 = aws_smithy_types::base64::encode(part.md5);
        let len = part.bytes.len() as u64;
        let out = self
            .retry
            .run("UploadPart", &target, |_| {
                let req = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(&full)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .content_length(len as i64)
                    .content_md5(&md5_b64)
                    .body(ByteStream::from(part.bytes.clone()));
                let over = self.upload_override(len);
                async move {
                    req.customize()
                        .config_override(over)
                        .send()
                        .await
                        .map_err(|e| classify(&e))
                }
            })
            .await?;
        let etag = out
            .e_tag()
            .map(|e| unquote(e).to_string())
            .unwrap_or_default();
        if !self.is_kms() && !etag.is_empty() && etag != hex(&part.md5) {
            return Err(StoreError::mismatch(format!(
                "UploadPart {target}: ETag {etag}, expected the MD5 {}",
                hex(&part.md5)
            )));
        }
        Ok(SentPart {
            number,
            etag,
            md5: part.md5,
            len,
        })
    }

    async fn put_multipart(
        self: &Arc<Self>,
        full: &str,
        path: &Path,
        size: u64,
        sha256: &str,
        progress: &ByteCounter,
    ) -> Result<(), StoreError> {
        let target = self.target(full);
        let part_size = part_size_for(size, self.part_size);
        if part_size > MAX_PART_SIZE {
            return Err(StoreError::config(format!(
                "{target}: {size} bytes need parts of {part_size} bytes, more than S3's 5 GiB"
            )));
        }
        let shown = path.display().to_string();
        let file = Arc::new(std::fs::File::open(path).map_err(|e| StoreError::io(&shown, e))?);
        let created = self
            .retry
            .run("CreateMultipartUpload", &target, |_| {
                let req = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full);
                let req = new_object_settings!(req, self, sha256);
                async move { req.send().await.map_err(|e| classify(&e)) }
            })
            .await?;
        let upload_id = created
            .upload_id()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                StoreError::permanent(format!(
                    "CreateMultipartUpload {target}: no upload id in the answer"
                ))
            })?
            .to_string();
        let guard = UploadGuard {
            inner: self.clone(),
            key: full.to_string(),
            upload_id: upload_id.clone(),
            armed: true,
        };
        match self
            .send_parts_and_complete(
                full, &upload_id, file, shown, size, part_size, sha256, progress,
            )
            .await
        {
            Ok(()) => {
                let mut guard = guard;
                guard.armed = false;
                Ok(())
            }
            Err(e) => {
                guard.abort().await;
                Err(e)
            }
        }
    }

    /// Sends the parts (at most `part_parallel` in memory and in flight), checks the
    /// SHA-256 of what was read, completes the upload, checks the object with a HEAD
    /// and its ETag against the parts' MD5s.
    #[allow(clippy::too_many_arguments)]
    async fn send_parts_and_complete(
        self: &Arc<Self>,
        full: &str,
        upload_id: &str,
        file: Arc<std::fs::File>,
        shown: String,
        size: u64,
        part_size: u64,
        sha256: &str,
        progress: &ByteCounter,
    ) -> Result<(), StoreError> {
        let target = self.target(full);
        let n_parts = size.div_ceil(part_size);
        let mut set = tokio::task::JoinSet::new();
        let mut done: Vec<SentPart> = Vec::with_capacity(n_parts as usize);
        let collect = |r: Result<Result<SentPart, StoreError>, tokio::task::JoinError>,
                       done: &mut Vec<SentPart>|
         -> Result<(), StoreError> {
            let part = r.map_err(|e| {
                StoreError::permanent(format!("UploadPart {target}: task failed: {e}"))
            })??;
            progress.fetch_add(part.len, Ordering::Relaxed);
            done.push(part);
            Ok(())
        };
        let result: Result<Sha256, StoreError> = async {
            let mut sha = Sha256::new();
            for i in 0..n_parts {
                // Wait for a free slot before reading: bounded memory.
                while set.len() >= self.part_parallel {
                    if let Some(r) = set.join_next().await {
                        collect(r, &mut done)?;
                    }
                }
                let offset = i * part_size;
                let len = part_size.min(size - offset);
                let (part, next) = read_part(file.clone(), shown.clone(), offset, len, sha).await?;
                sha = next;
                let number = i32::try_from(i + 1)
                    .map_err(|_| StoreError::config(format!("{target}: too many parts")))?;
                set.spawn(self.clone().upload_part(
                    full.to_string(),
                    upload_id.to_string(),
                    number,
                    part,
                ));
            }
            while let Some(r) = set.join_next().await {
                collect(r, &mut done)?;
            }
            Ok(sha)
        }
        .await;
        let sha = match result {
            Ok(sha) => sha,
            Err(e) => {
                // Stop the parts still in flight before the upload is aborted.
                set.shutdown().await;
                return Err(e);
            }
        };
        let read_sha = hex(&sha.finalize());
        if read_sha != sha256 {
            return Err(StoreError::mismatch(format!(
                "{shown}: read {size} bytes with SHA-256 {read_sha}, expected {sha256} (did the file change?)"
            )));
        }
        done.sort_by_key(|p| p.number);
        let expected_etag = multipart_etag(&done.iter().map(|p| p.md5).collect::<Vec<_>>());
        let parts: Vec<CompletedPart> = done
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.number)
                    .e_tag(&p.etag)
                    .build()
            })
            .collect();
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        let answered = self
            .retry
            .run("CompleteMultipartUpload", &target, |attempt| {
                let req = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(upload_id)
                    .multipart_upload(completed.clone());
                let target = &target;
                async move {
                    match req.send().await {
                        Ok(o) => Ok(Some(o.e_tag().map(|e| unquote(e).to_string()))),
                        Err(e) => {
                            let f = classify(&e);
                            // The answer was lost (an earlier attempt completed it), or
                            // it is a success we cannot read (some servers' XML): the
                            // HEAD check below decides.
                            let lost = attempt > 1 && f.is_code("NoSuchUpload");
                            let unreadable = f.status.is_some_and(|s| (200..300).contains(&s));
                            if lost || unreadable {
                                tracing::debug!(
                                    "CompleteMultipartUpload {target}: {}; checking with HEAD",
                                    f.cause
                                );
                                Ok(None)
                            } else {
                                Err(f)
                            }
                        }
                    }
                }
            })
            .await?;
        let head_etag = self.verify_head(full, size, sha256).await?;
        if !self.is_kms() {
            if let Some(etag) = answered.flatten().or(head_etag) {
                if etag != expected_etag {
                    let _ = self.delete_one(full).await;
                    return Err(StoreError::mismatch(format!(
                        "CompleteMultipartUpload {target}: ETag {etag}, expected {expected_etag}; the object was removed"
                    )));
                }
            }
        }
        Ok(())
    }

    /// One GET attempt from `*pos` on, appending to `file`. Moves `*pos` as bytes land.
    async fn get_attempt(
        &self,
        full: &str,
        file: &mut tokio::fs::File,
        pos: &mut u64,
        etag: &mut Option<String>,
        progress: &ByteCounter,
    ) -> Result<(), Failure> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(full);
        let ranged = *pos > 0;
        if ranged {
            req = req.range(format!("bytes={}-", *pos));
        }
        if let Some(t) = etag.as_deref() {
            // The object must not change between resumed attempts.
            req = req.if_match(t);
        }
        let out = match req.send().await {
            Ok(o) => o,
            Err(e) => {
                let f = classify(&e);
                if f.status == Some(416) {
                    // Nothing after `pos`: done if the object is exactly that long.
                    let head = self
                        .client
                        .head_object()
                        .bucket(&self.bucket)
                        .key(full)
                        .send()
                        .await
                        .map_err(|e| classify(&e))?;
                    let len = head.content_length().unwrap_or(-1);
                    if len == *pos as i64 {
                        return Ok(());
                    }
                    return Err(Failure::new(
                        StoreErrorKind::Mismatch,
                        format!("the object has {len} bytes, the file already {}", *pos),
                    ));
                }
                if f.status == Some(412) {
                    return Err(Failure::new(
                        StoreErrorKind::Mismatch,
                        "the object changed while it was being downloaded",
                    ));
                }
                return Err(f);
            }
        };
        if ranged && out.content_range().is_none() {
            return Err(Failure::permanent(
                "the server ignored the Range header (cannot resume)",
            ));
        }
        if etag.is_none() {
            *etag = out.e_tag().map(str::to_string);
        }
        // The object's full length: `bytes a-b/total`, or the body's length.
        let total = match out.content_range() {
            Some(r) => r.rsplit('/').next().and_then(|t| t.parse::<u64>().ok()),
            None => out.content_length().map(|l| l as u64),
        };
        let mut body = out.body;
        loop {
            let chunk = match tokio::time::timeout(self.read_timeout, body.next()).await {
                Err(_) => {
                    return Err(Failure::transient(format!(
                        "no data for {:?} at byte {}",
                        self.read_timeout, *pos
                    )))
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(Failure::transient(format!(
                        "reading the body at byte {}: {e}",
                        *pos
                    )))
                }
                Ok(Some(Ok(c))) => c,
            };
            file.write_all(&chunk)
                .await
                .map_err(|e| Failure::permanent(format!("writing the file: {e}")))?;
            *pos += chunk.len() as u64;
            progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        match total {
            Some(t) if t != *pos => Err(Failure::transient(format!(
                "the body ended at byte {} of {t}",
                *pos
            ))),
            _ => Ok(()),
        }
    }
}

/// Reads a whole (small) body, each read bounded by the read timeout.
async fn read_body(mut body: ByteStream, read_timeout: Duration) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(read_timeout, body.next()).await {
            Err(_) => return Err(Failure::transient(format!("no data for {read_timeout:?}"))),
            Ok(None) => return Ok(out),
            Ok(Some(Err(e))) => return Err(Failure::transient(format!("reading the body: {e}"))),
            Ok(Some(Ok(c))) => out.extend_from_slice(&c),
        }
    }
}

#[async_trait]
impl Store for S3Store {
    fn location(&self) -> String {
        self.inner.location.clone()
    }

    async fn put_file(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        sha256: &str,
        progress: &ByteCounter,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let full = inner.full(key);
        if size > MAX_OBJECT_SIZE {
            return Err(StoreError::config(format!(
                "{}: {size} bytes is more than S3's 5 TiB per object",
                inner.target(&full)
            )));
        }
        if size > inner.part_size {
            return inner
                .put_multipart(&full, path, size, sha256, progress)
                .await;
        }
        let shown = path.display().to_string();
        let file = Arc::new(std::fs::File::open(path).map_err(|e| StoreError::io(&shown, e))?);
        let (part, sha) = read_part(file, shown.clone(), 0, size, Sha256::new()).await?;
        let read_sha = hex(&sha.finalize());
        if read_sha != sha256 {
            return Err(StoreError::mismatch(format!(
                "{shown}: read {size} bytes with SHA-256 {read_sha}, expected {sha256} (did the file change?)"
            )));
        }
        inner.put_small(&full, part.bytes, sha256).await?;
        progress.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let sha = hex(&Sha256::digest(&bytes));
        self.inner
            .put_small(&self.inner.full(key), Bytes::from(bytes), &sha)
            .await
    }

    async fn get_to_file(
        &self,
        key: &str,
        path: &Path,
        offset: u64,
        progress: &ByteCounter,
    ) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let full = inner.full(key);
        let target = inner.target(&full);
        let shown = path.display().to_string();
        let std_file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StoreError::io(&shown, e))?;
        std_file
            .set_len(offset)
            .map_err(|e| StoreError::io(&shown, e))?;
        let mut file = tokio::fs::File::from_std(std_file);
        tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| StoreError::io(&shown, e))?;
        let mut pos = offset;
        let mut etag = None;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let before = pos;
            match inner
                .get_attempt(&full, &mut file, &mut pos, &mut etag, progress)
                .await
            {
                Ok(()) => break,
                Err(f) => {
                    // Bytes arrived: the connection works, the budget starts over.
                    if pos > before {
                        attempt = 1;
                    }
                    if let Some(e) = inner.retry.give_up("GetObject", &target, attempt, &f) {
                        return Err(e);
                    }
                    inner.retry.pause("GetObject", &target, attempt, &f).await;
                }
            }
        }
        file.flush().await.map_err(|e| StoreError::io(&shown, e))?;
        file.sync_all()
            .await
            .map_err(|e| StoreError::io(&shown, e))?;
        Ok(pos)
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let inner = &self.inner;
        let full = inner.full(key);
        let target = inner.target(&full);
        let r = inner
            .retry
            .run("GetObject", &target, |_| {
                let req = inner.client.get_object().bucket(&inner.bucket).key(&full);
                async move {
                    let out = req.send().await.map_err(|e| classify(&e))?;
                    read_body(out.body, inner.read_timeout).await
                }
            })
            .await;
        match r {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind == StoreErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let inner = &self.inner;
        let mut out = Vec::new();
        inner
            .list_pages(&inner.full(prefix), None, |page| {
                for o in page.contents() {
                    if let Some(key) = o.key().and_then(|k| inner.relative(k)) {
                        out.push(ObjectInfo {
                            key: key.to_string(),
                            size: o.size().unwrap_or(0).max(0) as u64,
                        });
                    }
                }
            })
            .await?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let inner = &self.inner;
        let p = prefix.trim_end_matches('/');
        let full_prefix = if p.is_empty() {
            inner.full("")
        } else {
            inner.full(&format!("{p}/"))
        };
        let mut out = Vec::new();
        inner
            .list_pages(&full_prefix, Some("/"), |page| {
                for cp in page.common_prefixes() {
                    if let Some(name) = cp
                        .prefix()
                        .and_then(|c| c.strip_prefix(full_prefix.as_str()))
                        .map(|c| c.trim_end_matches('/'))
                        .filter(|c| !c.is_empty())
                    {
                        out.push(name.to_string());
                    }
                }
            })
            .await?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        let inner = &self.inner;
        for batch in keys.chunks(DELETE_BATCH) {
            let ids = batch
                .iter()
                .map(|k| {
                    ObjectIdentifier::builder()
                        .key(inner.full(k))
                        .build()
                        .map_err(|e| StoreError::config(format!("DeleteObjects: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| StoreError::config(format!("DeleteObjects: {e}")))?;
            let target = format!(
                "{} ({} keys from {})",
                inner.target(&inner.prefix),
                batch.len(),
                batch[0]
            );
            inner
                .retry
                .run("DeleteObjects", &target, |_| {
                    let req = inner
                        .client
                        .delete_objects()
                        .bucket(&inner.bucket)
                        .delete(delete.clone());
                    async move {
                        let out = req
                            .customize()
                            .mutate_request(add_content_md5)
                            .send()
                            .await
                            .map_err(|e| classify(&e))?;
                        // A missing key is what we wanted; anything else is reported,
                        // and the batch retried when the server says try again.
                        let errors: Vec<_> = out
                            .errors()
                            .iter()
                            .filter(|e| e.code() != Some("NoSuchKey"))
                            .collect();
                        let Some(first) = errors.first() else {
                            return Ok(());
                        };
                        let code = first.code().unwrap_or("unknown");
                        let cause = format!(
                            "{} key(s) not deleted; first {}: {code}: {}",
                            errors.len(),
                            first.key().unwrap_or("?"),
                            first.message().unwrap_or("")
                        );
                        let kind = super::retry::classify_status(400, Some(code));
                        Err(Failure {
                            kind: if kind == StoreErrorKind::Transient {
                                kind
                            } else {
                                StoreErrorKind::Permanent
                            },
                            cause,
                            status: None,
                            code: Some(code.to_string()),
                        })
                    }
                })
                .await?;
        }
        Ok(())
    }

    async fn abort_incomplete_uploads(&self, prefix: &str) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let full_prefix = inner.full(prefix);
        let target = inner.target(&full_prefix);
        let mut n = 0u64;
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let page = inner
                .retry
                .run("ListMultipartUploads", &target, |_| {
                    let req = inner
                        .client
                        .list_multipart_uploads()
                        .bucket(&inner.bucket)
                        .prefix(&full_prefix)
                        .set_key_marker(key_marker.clone())
                        .set_upload_id_marker(id_marker.clone());
                    async move { req.send().await.map_err(|e| classify(&e)) }
                })
                .await?;
            for u in page.uploads() {
                if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                    inner.abort_upload(key, id).await?;
                    tracing::info!("aborted an incomplete upload of {}", inner.target(key));
                    n += 1;
                }
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if page.is_truncated() != Some(true) || key_marker.is_none() {
                break;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_keep_under_ten_thousand_parts() {
        let min = 16 * MIB;
        assert_eq!(part_size_for(0, min), min);
        assert_eq!(part_size_for(100 * MIB, min), min);
        // 16 MiB × 10,000 is the largest file the minimum covers.
        assert_eq!(part_size_for(min * MAX_PARTS, min), min);
        assert_eq!(part_size_for(min * MAX_PARTS + 1, min), min + MIB);
        for size in [
            1u64 << 40,
            3 << 40,
            MAX_OBJECT_SIZE - 1,
            MAX_OBJECT_SIZE,
            1_234_567_890_123,
        ] {
            let p = part_size_for(size, 5 * MIB);
            assert_eq!(p % MIB, 0);
            assert!(size.div_ceil(p) <= MAX_PARTS, "{size}: {p}");
            assert!(p <= MAX_PART_SIZE);
        }
        // 5 TiB: 549,755,814 bytes a part at least, rounded up to 525 MiB.
        assert_eq!(part_size_for(MAX_OBJECT_SIZE, 5 * MIB), 525 * MIB);
        assert_eq!(MAX_OBJECT_SIZE.div_ceil(525 * MIB), 9987);
    }

    #[test]
    fn multipart_etag_is_md5_of_md5s() {
        let a = md5_of(b"hello");
        let b = md5_of(b"world");
        let mut cat = Vec::new();
        cat.extend_from_slice(&a);
        cat.extend_from_slice(&b);
        assert_eq!(multipart_etag(&[a, b]), format!("{}-2", hex(&md5_of(&cat))));
        assert_eq!(hex(&md5_of(b"")), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
