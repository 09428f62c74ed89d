//! Multipart uploads of files larger than the part size: parts read and sent
//! `part_parallel` at a time, the upload aborted when it fails or its future is
//! dropped, and the completed object checked against the parts' MD5s.

use super::put::{new_object_settings, read_part, PartData, Source};
use super::{hex, unquote, Inner};
use crate::retry::classify;
use crate::{ByteCounter, StoreError};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use md5::{Digest, Md5};
use stagehand_host::digest::ContentHasher;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::task::{JoinError, JoinSet};

const MIB: u64 = 1 << 20;
/// S3's limits: parts per upload, bytes per part.
pub const MAX_PARTS: u64 = 10_000;
pub const MAX_PART_SIZE: u64 = 5 << 30;

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

/// A part the server has.
struct SentPart {
    number: i32,
    etag: String,
    md5: [u8; 16],
    len: u64,
}

/// One upload in progress: its key and id.
struct Upload<'a> {
    full: &'a str,
    id: &'a str,
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
    /// Uploads `src` in parts; on failure the upload is aborted.
    pub(super) async fn put_multipart(
        self: &Arc<Self>,
        full: &str,
        src: &Source<'_>,
        progress: &ByteCounter,
    ) -> Result<(), StoreError> {
        let part_size = part_size_for(src.size, self.part_size);
        if part_size > MAX_PART_SIZE {
            return Err(StoreError::config(format!(
                "{}: {} bytes need parts of {part_size} bytes, more than S3's 5 GiB",
                self.target(full),
                src.size
            )));
        }
        // Opened before the upload starts: a missing file leaves nothing to abort.
        let file = src.open()?;
        let upload_id = self.create_upload(full, src.hash).await?;
        let guard = UploadGuard {
            inner: self.clone(),
            key: full.to_string(),
            upload_id: upload_id.clone(),
            armed: true,
        };
        let upload = Upload {
            full,
            id: &upload_id,
        };
        let sent = self
            .send_parts(&upload, file, src, part_size, progress)
            .await;
        let done = match sent {
            Ok(parts) => self.complete(&upload, &parts, src).await,
            Err(e) => Err(e),
        };
        match done {
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

    /// CreateMultipartUpload; the upload id.
    async fn create_upload(&self, full: &str, hash: &str) -> Result<String, StoreError> {
        let target = self.target(full);
        let created = retried!(self, "CreateMultipartUpload", &target, |c| {
            let req = c.create_multipart_upload().bucket(&self.bucket).key(full);
            new_object_settings!(req, self, hash)
        })
        .await?;
        let upload_id = created
            .upload_id()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                StoreError::permanent(format!(
                    "CreateMultipartUpload {target}: no upload id in the answer"
                ))
            })?;
        Ok(upload_id.to_string())
    }

    /// Sends the parts (at most `part_parallel` in memory and in flight) and checks
    /// the hash of what was read. The parts, by number.
    async fn send_parts(
        self: &Arc<Self>,
        upload: &Upload<'_>,
        file: Arc<std::fs::File>,
        src: &Source<'_>,
        part_size: u64,
        progress: &ByteCounter,
    ) -> Result<Vec<SentPart>, StoreError> {
        let target = self.target(upload.full);
        let n_parts = src.size.div_ceil(part_size);
        let mut set = JoinSet::new();
        let mut done: Vec<SentPart> = Vec::with_capacity(n_parts as usize);
        let collect = |r: Result<Result<SentPart, StoreError>, JoinError>,
                       done: &mut Vec<SentPart>|
         -> Result<(), StoreError> {
            let part = r.map_err(|e| {
                StoreError::permanent(format!("UploadPart {target}: task failed: {e}"))
            })??;
            progress.fetch_add(part.len, Ordering::Relaxed);
            done.push(part);
            Ok(())
        };
        let result: Result<ContentHasher, StoreError> = async {
            let mut sha = ContentHasher::like(src.hash);
            for i in 0..n_parts {
                // Wait for a free slot before reading: bounded memory.
                while set.len() >= self.part_parallel {
                    if let Some(r) = set.join_next().await {
                        collect(r, &mut done)?;
                    }
                }
                let offset = i * part_size;
                let len = part_size.min(src.size - offset);
                // Shared with the other files' uploads: held until this part is sent.
                let memory = self.part_memory.reserve(len).await?;
                let (part, next) = read_part(file.clone(), src.shown(), offset, len, sha).await?;
                sha = next;
                let number = i32::try_from(i + 1)
                    .map_err(|_| StoreError::config(format!("{target}: too many parts")))?;
                let sending = self.clone().upload_part(
                    upload.full.to_string(),
                    upload.id.to_string(),
                    number,
                    part,
                );
                set.spawn(async move {
                    let sent = sending.await;
                    drop(memory);
                    sent
                });
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
        src.check_read(sha)?;
        done.sort_by_key(|p| p.number);
        Ok(done)
    }

    async fn upload_part(
        self: Arc<Self>,
        full: String,
        upload_id: String,
        number: i32,
        part: PartData,
    ) -> Result<SentPart, StoreError> {
        let target = format!("{} part {number}", self.target(&full));
        let etag = self
            .send_checked("UploadPart", &target, &part, || {
                self.client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(&full)
                    .upload_id(&upload_id)
                    .part_number(number)
            })
            .await?;
        Ok(SentPart {
            number,
            etag,
            md5: part.md5,
            len: part.bytes.len() as u64,
        })
    }

    /// Completes the upload, checks the object with a HEAD and its ETag against the
    /// parts' MD5s.
    async fn complete(
        &self,
        upload: &Upload<'_>,
        parts: &[SentPart],
        src: &Source<'_>,
    ) -> Result<(), StoreError> {
        let full = upload.full;
        let target = self.target(full);
        let expected_etag = multipart_etag(&parts.iter().map(|p| p.md5).collect::<Vec<_>>());
        let answered = self.send_complete(upload, parts).await?;
        let head_etag = self.verify_head(full, src.size, src.hash).await?;
        if self.is_kms() {
            return Ok(());
        }
        match answered.or(head_etag) {
            Some(etag) if etag != expected_etag => {
                let _ = self.delete_one(full).await;
                Err(StoreError::mismatch(format!(
                    "CompleteMultipartUpload {target}: ETag {etag}, expected {expected_etag}; the object was removed"
                )))
            }
            _ => Ok(()),
        }
    }

    /// CompleteMultipartUpload; the ETag of the answer, `None` when there is no answer
    /// to read (the HEAD check then decides).
    async fn send_complete(
        &self,
        upload: &Upload<'_>,
        parts: &[SentPart],
    ) -> Result<Option<String>, StoreError> {
        let target = self.target(upload.full);
        let parts: Vec<CompletedPart> = parts
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
                    .key(upload.full)
                    .upload_id(upload.id)
                    .multipart_upload(completed.clone());
                let target = &target;
                async move {
                    match req.send().await {
                        Ok(o) => Ok(Some(o.e_tag().map(|e| unquote(e).to_string()))),
                        Err(e) => {
                            let f = classify(&e);
                            // The answer was lost (an earlier attempt completed it), or
                            // it is a success we cannot read (some servers' XML): the
                            // HEAD check decides.
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
        Ok(answered.flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{md5_of, MAX_OBJECT_SIZE};
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
