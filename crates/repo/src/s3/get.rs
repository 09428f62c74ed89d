//! Downloads. A file download resumes where an attempt stopped (a ranged GET pinned to
//! the object's ETag, so it cannot change in between); every read is bounded by the
//! read timeout, so a stalled connection counts as a failed attempt.

use super::Inner;
use crate::files::open_for_resume;
use crate::retry::{classify, Failure};
use crate::{ByteCounter, StoreError, StoreErrorKind};
use aws_sdk_s3::primitives::ByteStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncWrite, AsyncWriteExt};

impl Inner {
    /// Downloads `full` into `path` from byte `offset` on, retrying from where each
    /// attempt stopped. The file's final size.
    pub(super) async fn get_to_file(
        &self,
        full: &str,
        path: &Path,
        offset: u64,
        progress: &ByteCounter,
    ) -> Result<u64, StoreError> {
        let shown = path.display().to_string();
        let mut file = tokio::fs::File::from_std(open_for_resume(path, offset)?);
        let size = self.get_into(full, &mut file, offset, progress).await?;
        file.sync_all()
            .await
            .map_err(|e| StoreError::io(&shown, e))?;
        Ok(size)
    }

    /// Streams `full` into `sink` from its first byte; the object's size.
    pub(super) async fn get_to_writer(
        &self,
        full: &str,
        sink: &mut (dyn AsyncWrite + Unpin + Send),
        progress: &ByteCounter,
    ) -> Result<u64, StoreError> {
        self.get_into(full, sink, 0, progress).await
    }

    /// Writes `full` from byte `offset` on into `sink`, retrying from where each attempt
    /// stopped, and flushes it. The position reached (the object's size).
    async fn get_into<W: AsyncWrite + Unpin + Send + ?Sized>(
        &self,
        full: &str,
        sink: &mut W,
        offset: u64,
        progress: &ByteCounter,
    ) -> Result<u64, StoreError> {
        let target = self.target(full);
        let mut pos = offset;
        let mut etag = None;
        let mut attempt = 0u32;
        let mut started = std::time::Instant::now();
        loop {
            attempt += 1;
            let before = pos;
            match self
                .get_attempt(full, sink, &mut pos, &mut etag, progress)
                .await
            {
                Ok(()) => break,
                Err(f) => {
                    // Bytes arrived: the connection works, the budget starts over.
                    if pos > before {
                        attempt = 1;
                        started = std::time::Instant::now();
                    }
                    if let Some(e) = self
                        .retry
                        .give_up("GetObject", &target, attempt, started, &f)
                    {
                        return Err(e);
                    }
                    self.retry.pause("GetObject", &target, attempt, &f).await;
                }
            }
        }
        sink.flush().await.map_err(|e| StoreError::io(&target, e))?;
        Ok(pos)
    }

    /// One GET attempt from `*pos` on, appending to `file`. Moves `*pos` as bytes land.
    async fn get_attempt<W: AsyncWrite + Unpin + Send + ?Sized>(
        &self,
        full: &str,
        file: &mut W,
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
            Err(e) => return self.get_refused(full, *pos, classify(&e)).await,
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
        self.copy_body(out.body, file, pos, progress).await?;
        match total {
            Some(t) if t != *pos => Err(Failure::transient(format!(
                "the body ended at byte {} of {t}",
                *pos
            ))),
            _ => Ok(()),
        }
    }

    /// A GET from `pos` the server refused: done when it has nothing after `pos` and
    /// the object is exactly that long; a mismatch when the object changed.
    async fn get_refused(&self, full: &str, pos: u64, f: Failure) -> Result<(), Failure> {
        if f.status == Some(416) {
            let head = self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(full)
                .send()
                .await
                .map_err(|e| classify(&e))?;
            let len = head.content_length().unwrap_or(-1);
            if len == pos as i64 {
                return Ok(());
            }
            return Err(Failure::new(
                StoreErrorKind::Mismatch,
                format!("the object has {len} bytes, the file already {pos}"),
            ));
        }
        if f.status == Some(412) {
            return Err(Failure::new(
                StoreErrorKind::Mismatch,
                "the object changed while it was being downloaded",
            ));
        }
        Err(f)
    }

    /// Appends the body to `file`, each read bounded by the read timeout.
    async fn copy_body<W: AsyncWrite + Unpin + Send + ?Sized>(
        &self,
        mut body: ByteStream,
        file: &mut W,
        pos: &mut u64,
        progress: &ByteCounter,
    ) -> Result<(), Failure> {
        loop {
            let chunk = match tokio::time::timeout(self.read_timeout, body.next()).await {
                Err(_) => {
                    return Err(Failure::transient(format!(
                        "no data for {:?} at byte {}",
                        self.read_timeout, *pos
                    )))
                }
                Ok(None) => return Ok(()),
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
                .map_err(|e| Failure::permanent(format!("writing what was downloaded: {e}")))?;
            *pos += chunk.len() as u64;
            progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    }

    /// Reads a small object; `None` when it does not exist.
    pub(super) async fn get_bytes(&self, full: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let target = self.target(full);
        let r = self
            .retry
            .run("GetObject", &target, |_| {
                let req = self.client.get_object().bucket(&self.bucket).key(full);
                async move {
                    let out = req.send().await.map_err(|e| classify(&e))?;
                    read_body(out.body, self.read_timeout).await
                }
            })
            .await;
        match r {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind == StoreErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Reads a whole (small) body, each read bounded by the read timeout.
async fn read_body(
    mut body: ByteStream,
    read_timeout: std::time::Duration,
) -> Result<Vec<u8>, Failure> {
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
