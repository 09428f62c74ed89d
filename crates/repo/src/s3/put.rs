//! Writing objects. A file up to the part size, or a small object, goes in one
//! PutObject (larger files go to `multipart`). Every body, here or a part, is sent by
//! [`Inner::send_checked`]: Content-MD5 on the request, the returned ETag checked
//! against our MD5. The payload is not signed (SigV4's SHA-256 of every body): the
//! signed Content-MD5 already ties the body to the request, and the ETag check proves
//! what was stored, so a second hash of every byte would buy nothing.
//! A HEAD afterwards must show the size and the `hash` metadata where the ETag proved
//! nothing: after a multipart upload, under SSE-KMS, or when the server gave no ETag.

use super::{hex, md5_of, unquote, Inner};
use crate::files::blocking;
use crate::retry::{classify, Failure};
use crate::{ByteCounter, StoreError};
use aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder;
use aws_sdk_s3::operation::upload_part::builders::UploadPartFluentBuilder;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use stagehand_host::digest::{algorithm_of, hash_bytes, ContentHasher};
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// S3's limit on bytes per object.
pub const MAX_OBJECT_SIZE: u64 = 5 << 40;

/// A local file to upload, with the size and hash the caller knows it by.
pub(super) struct Source<'a> {
    pub path: &'a Path,
    pub size: u64,
    pub hash: &'a str,
}

impl Source<'_> {
    pub(super) fn shown(&self) -> String {
        self.path.display().to_string()
    }

    /// The file, shared by the tasks that read its parts.
    pub(super) fn open(&self) -> Result<Arc<std::fs::File>, StoreError> {
        let file = std::fs::File::open(self.path).map_err(|e| StoreError::io(&self.shown(), e))?;
        Ok(Arc::new(file))
    }

    /// What was read must hash to what the caller said: a file that changed during
    /// the upload is not stored under a hash it does not have.
    pub(super) fn check_read(&self, read: ContentHasher) -> Result<(), StoreError> {
        let read_hash = read.finish();
        if read_hash == self.hash {
            return Ok(());
        }
        Err(StoreError::mismatch(format!(
            "{}: read {} bytes with hash {read_hash}, expected {} (did the file change?)",
            self.shown(),
            self.size,
            self.hash
        )))
    }
}

/// One body read from the file, with its MD5.
pub(super) struct PartData {
    pub bytes: Bytes,
    pub md5: [u8; 16],
}

impl PartData {
    pub(super) fn new(bytes: Bytes) -> Self {
        let md5 = md5_of(&bytes);
        PartData { bytes, md5 }
    }
}

/// Reads `len` bytes at `offset` (off the async threads) and feeds them to the
/// running hash of the file.
pub(super) async fn read_part(
    file: Arc<std::fs::File>,
    shown: String,
    offset: u64,
    len: u64,
    mut sha: ContentHasher,
) -> Result<(PartData, ContentHasher), StoreError> {
    blocking(move || {
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
        Ok((PartData::new(Bytes::from(buf)), sha))
    })
    .await
}

/// The server stored other bytes than we sent: its ETag is not our MD5.
#[derive(Debug, thiserror::Error)]
#[error("{op} {target}: ETag {got}, expected the MD5 {want}")]
pub(super) struct EtagMismatch {
    op: &'static str,
    target: String,
    got: String,
    want: String,
}

/// Why a body was not stored.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Etag(#[from] EtagMismatch),
}

impl From<SendError> for StoreError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Store(e) => e,
            SendError::Etag(e) => StoreError::mismatch(e.to_string()),
        }
    }
}

/// A request that carries a body and answers with an ETag: PutObject and UploadPart.
pub(super) trait BodyRequest: Send {
    fn with_body(self, len: u64, md5_b64: &str, body: ByteStream) -> Self;
    /// Sends with the per-request configuration `over`; the ETag of the answer.
    fn send_for_etag(
        self,
        over: aws_sdk_s3::config::Builder,
    ) -> impl Future<Output = Result<Option<String>, Failure>> + Send;
}

/// The same calls on each builder type: the SDK gives them no common trait.
macro_rules! body_request {
    ($($builder:ty),*) => {$(
        impl BodyRequest for $builder {
            fn with_body(self, len: u64, md5_b64: &str, body: ByteStream) -> Self {
                self.content_length(len as i64).content_md5(md5_b64).body(body)
            }

            async fn send_for_etag(
                self,
                over: aws_sdk_s3::config::Builder,
            ) -> Result<Option<String>, Failure> {
                let out = self
                    .customize()
                    .config_override(over)
                    .disable_payload_signing()
                    .send()
                    .await
                    .map_err(|e| classify(&e))?;
                Ok(out.e_tag().map(str::to_string))
            }
        }
    )*};
}

body_request!(PutObjectFluentBuilder, UploadPartFluentBuilder);

/// Applies the repository's storage class, encryption and the `hash` metadata to a
/// PutObject or CreateMultipartUpload request.
macro_rules! new_object_settings {
    ($req:expr, $inner:expr, $hash:expr) => {{
        let mut r = $req.metadata("hash", $hash);
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
pub(super) use new_object_settings;

impl Inner {
    /// Uploads a file: in one request up to the part size, in parts above it.
    pub(super) async fn put_file(
        self: &Arc<Self>,
        full: &str,
        src: &Source<'_>,
        progress: &ByteCounter,
    ) -> Result<(), StoreError> {
        if src.size > MAX_OBJECT_SIZE {
            return Err(StoreError::config(format!(
                "{}: {} bytes is more than S3's 5 TiB per object",
                self.target(full),
                src.size
            )));
        }
        if src.size > self.part_size {
            return self.put_multipart(full, src, progress).await;
        }
        let _memory = self.part_memory.reserve(src.size).await?;
        let (part, sha) = read_part(
            src.open()?,
            src.shown(),
            0,
            src.size,
            ContentHasher::like(src.hash),
        )
        .await?;
        src.check_read(sha)?;
        self.put_small(full, &part, src.hash).await?;
        progress.fetch_add(src.size, Ordering::Relaxed);
        Ok(())
    }

    /// Writes a small object in one request.
    pub(super) async fn put_bytes(&self, full: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let hash = hash_bytes(&bytes);
        self.put_small(full, &PartData::new(Bytes::from(bytes)), &hash)
            .await
    }

    /// One PutObject of an in-memory body, ETag checked, then the HEAD check.
    async fn put_small(&self, full: &str, body: &PartData, hash: &str) -> Result<(), StoreError> {
        let sent = self
            .send_checked("PutObject", &self.target(full), body, || {
                let req = self.client.put_object().bucket(&self.bucket).key(full);
                new_object_settings!(req, self, hash)
            })
            .await;
        let etag = match sent {
            Ok(etag) => etag,
            Err(SendError::Store(e)) => return Err(e),
            Err(SendError::Etag(e)) => {
                // A wrong object must not stay under the key.
                let _ = self.delete_one(full).await;
                return Err(StoreError::mismatch(format!("{e}; the object was removed")));
            }
        };
        if self.etag_is_md5(&etag) {
            return Ok(());
        }
        self.verify_head(full, body.bytes.len() as u64, hash)
            .await
            .map(|_| ())
    }

    /// Whether the ETag a server answered to a single-request upload is the MD5 of the
    /// bytes it stored: not under SSE-KMS (its ETags are no MD5), nor when it answered
    /// none. When it is and it matched, a HEAD (one more request per object, which
    /// counts for a backup of many small files) has nothing left to prove.
    fn etag_is_md5(&self, etag: &str) -> bool {
        !etag.is_empty() && !self.is_kms()
    }

    /// Sends `body` with its Content-MD5 on the request `request` builds (a fresh one
    /// each attempt), then checks the ETag the server answers against the MD5: the
    /// bytes stored are the bytes read. Returns the ETag, empty when the server gives
    /// none (nothing to check then, nor under SSE-KMS, whose ETags are no MD5).
    pub(super) async fn send_checked<R: BodyRequest>(
        &self,
        op: &'static str,
        target: &str,
        body: &PartData,
        request: impl Fn() -> R,
    ) -> Result<String, SendError> {
        let md5_b64 = aws_smithy_types::base64::encode(body.md5);
        let len = body.bytes.len() as u64;
        let answered = self
            .retry
            .run(op, target, |_| {
                request()
                    .with_body(len, &md5_b64, ByteStream::from(body.bytes.clone()))
                    .send_for_etag(self.upload_override(len))
            })
            .await?;
        let etag = answered.as_deref().map(unquote).unwrap_or_default();
        let want = hex(&body.md5);
        if self.etag_is_md5(etag) && etag != want {
            return Err(EtagMismatch {
                op,
                target: target.to_string(),
                got: etag.to_string(),
                want,
            }
            .into());
        }
        Ok(etag.to_string())
    }

    /// HEAD: the object must have `size` bytes and metadata `hash`; otherwise it is
    /// removed (no wrong object stays under the key). Returns its ETag.
    pub(super) async fn verify_head(
        &self,
        full: &str,
        size: u64,
        hash: &str,
    ) -> Result<Option<String>, StoreError> {
        let target = self.target(full);
        let head = retried!(self, "HeadObject", &target, |c| c
            .head_object()
            .bucket(&self.bucket)
            .key(full))
        .await?;
        let got_size = head.content_length().unwrap_or(-1);
        let got_hash = head
            .metadata()
            .and_then(|m| m.get("hash"))
            .map(String::as_str);
        if got_size != size as i64 || got_hash != Some(hash) {
            let _ = self.delete_one(full).await;
            return Err(StoreError::mismatch(format!(
                "{target}: after the upload the object has {got_size} bytes and {} {}, expected {size} bytes and {hash}; the object was removed",
                algorithm_of(hash),
                got_hash.unwrap_or("(none)")
            )));
        }
        Ok(head.e_tag().map(|e| unquote(e).to_string()))
    }
}
