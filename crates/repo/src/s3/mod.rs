//! A repository in an S3-compatible bucket (AWS, MinIO, Ceph RGW, Garage…).
//!
//! Every request goes through [`Retry`] (the SDK's own retries are off, see
//! `retry.rs`). Puts are checked end to end: Content-MD5 on every request body, the
//! ETag S3 computes (single or multipart) against ours, the file's hash stored as
//! metadata `hash`, and a HEAD afterwards that must show the size and that hash. A
//! multipart upload that fails for good (or whose future is dropped) is aborted, so no
//! orphan parts stay billed and no partial object appears under the key.
//!
//! This file holds the store, its key mapping and the [`Store`] impl; the work is done
//! by `client` (building the SDK client), `put` (one-request uploads and the shared
//! body send), `multipart` (uploads in parts), `get` (downloads with resume), `list`
//! and `delete` (objects and unfinished uploads).

/// Runs one SDK request under the retry loop: `$build` builds it afresh each attempt
/// from the client `$c`. A macro because the SDK's request builders share no trait
/// with `send`.
macro_rules! retried {
    ($inner:expr, $op:expr, $target:expr, |$c:ident| $build:expr) => {
        $inner.retry.run($op, $target, |_| {
            let $c = &$inner.client;
            let req = $build;
            async move { req.send().await.map_err(|e| $crate::retry::classify(&e)) }
        })
    };
}

mod client;
mod delete;
mod get;
mod list;
mod multipart;
mod put;

pub use multipart::{multipart_etag, part_size_for, MAX_PARTS, MAX_PART_SIZE};
pub use put::MAX_OBJECT_SIZE;

use super::retry::Retry;
use super::{ByteCounter, ObjectInfo, Store, StoreError};
use async_trait::async_trait;
use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
use aws_sdk_s3::Client;
use md5::Md5;
use sha2::Digest;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub struct S3Store {
    inner: Arc<Inner>,
}

/// The client and the repository's settings; shared with part uploads and the abort
/// of a dropped upload, which outlive a borrow of the store.
struct Inner {
    client: Client,
    bucket: String,
    prefix: String,
    retry: Retry,
    part_size: u64,
    part_parallel: usize,
    /// The memory all parts being uploaded share (`buffer_memory`).
    part_memory: PartMemory,
    read_timeout: Duration,
    storage_class: Option<StorageClass>,
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
    location: String,
}

/// A budget of upload buffer memory, in MiB, shared by every upload of a store: a part
/// is read only once its size is reserved, and the reservation ends with its upload.
struct PartMemory {
    mib: Arc<tokio::sync::Semaphore>,
    total_mib: u32,
}

impl PartMemory {
    const MIB: u64 = 1 << 20;

    fn new(bytes: u64) -> Self {
        let total_mib = u32::try_from(bytes / Self::MIB).unwrap_or(u32::MAX).max(1);
        PartMemory {
            mib: Arc::new(tokio::sync::Semaphore::new(total_mib as usize)),
            total_mib,
        }
    }

    /// Waits until `len` bytes fit (a part larger than the whole budget waits for all
    /// of it, and is then sent alone).
    async fn reserve(&self, len: u64) -> Result<tokio::sync::OwnedSemaphorePermit, StoreError> {
        let want = u32::try_from(len.div_ceil(Self::MIB))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_mib);
        self.mib
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| StoreError::permanent("the upload buffer budget was closed"))
    }
}

impl S3Store {
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

impl Inner {
    /// A repository key to the full object key (under the prefix).
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

    /// A full key for messages.
    fn target(&self, full: &str) -> String {
        format!("s3://{}/{}", self.bucket, full)
    }

    /// Under SSE-KMS an ETag is not the MD5 of the body, so ETags are not checked.
    fn is_kms(&self) -> bool {
        matches!(self.sse, Some(ServerSideEncryption::AwsKms))
    }
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
        hash: &str,
        progress: &ByteCounter,
    ) -> Result<(), StoreError> {
        let src = put::Source { path, size, hash };
        self.inner
            .put_file(&self.inner.full(key), &src, progress)
            .await
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.inner.put_bytes(&self.inner.full(key), bytes).await
    }

    async fn get_to_file(
        &self,
        key: &str,
        path: &Path,
        offset: u64,
        progress: &ByteCounter,
    ) -> Result<u64, StoreError> {
        let full = self.inner.full(key);
        self.inner.get_to_file(&full, path, offset, progress).await
    }

    async fn get_to_writer(
        &self,
        key: &str,
        sink: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
        progress: &ByteCounter,
    ) -> Result<u64, StoreError> {
        let full = self.inner.full(key);
        self.inner.get_to_writer(&full, sink, progress).await
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get_bytes(&self.inner.full(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list_dirs(prefix).await
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        self.inner.delete(keys).await
    }

    async fn abort_incomplete_uploads(&self, prefix: &str) -> Result<u64, StoreError> {
        self.inner.abort_incomplete_uploads(prefix).await
    }
}

#[cfg(test)]
mod tests {
    use super::PartMemory;
    use std::time::Duration;

    const MIB: u64 = 1 << 20;

    async fn waits(f: impl std::future::Future) -> bool {
        tokio::time::timeout(Duration::from_millis(50), f)
            .await
            .is_err()
    }

    /// Parts are read only while they fit in the budget; a part larger than the whole
    /// budget gets all of it, alone.
    #[tokio::test]
    async fn parts_wait_for_room_in_the_shared_budget() {
        let memory = PartMemory::new(32 * MIB);
        let a = memory.reserve(16 * MIB).await.expect("a");
        let b = memory.reserve(15 * MIB + 1).await.expect("b");
        assert!(waits(memory.reserve(MIB)).await, "the budget is full");
        drop(a);
        let c = memory.reserve(16 * MIB).await.expect("room again");
        drop((b, c));
        let huge = memory.reserve(100 * MIB).await.expect("alone");
        assert!(waits(memory.reserve(1)).await, "the huge part holds it all");
        drop(huge);
        assert!(!waits(memory.reserve(1)).await);
    }
}
