//! Removing things: objects in batches of DeleteObjects (a missing key is fine), one
//! object, and multipart uploads that were started and never completed.

use super::client::add_content_md5;
use super::Inner;
use crate::retry::{classify, classify_status, Failure};
use crate::{StoreError, StoreErrorKind};
use aws_sdk_s3::operation::delete_objects::DeleteObjectsOutput;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

/// Keys per DeleteObjects request (S3's limit).
const DELETE_BATCH: usize = 1000;

impl Inner {
    /// Deletes the objects of these repository keys, a batch a request.
    pub(super) async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        for batch in keys.chunks(DELETE_BATCH) {
            self.delete_batch(batch).await?;
        }
        Ok(())
    }

    async fn delete_batch(&self, batch: &[String]) -> Result<(), StoreError> {
        let ids = batch
            .iter()
            .map(|k| {
                ObjectIdentifier::builder()
                    .key(self.full(k))
                    .build()
                    .map_err(|e| StoreError::config(format!("DeleteObjects: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let delete = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(|e| StoreError::config(format!("DeleteObjects: {e}")))?;
        let first = batch.first().map(String::as_str).unwrap_or_default();
        let target = format!(
            "{} ({} keys from {first})",
            self.target(&self.prefix),
            batch.len(),
        );
        self.retry
            .run("DeleteObjects", &target, |_| {
                let req = self
                    .client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete.clone());
                async move {
                    let out = req
                        .customize()
                        .mutate_request(add_content_md5)
                        .send()
                        .await
                        .map_err(|e| classify(&e))?;
                    batch_errors(&out)
                }
            })
            .await
    }

    /// Deletes one object (by its full key).
    pub(super) async fn delete_one(&self, full: &str) -> Result<(), StoreError> {
        let target = self.target(full);
        retried!(self, "DeleteObject", &target, |c| c
            .delete_object()
            .bucket(&self.bucket)
            .key(full))
        .await
        .map(|_| ())
    }

    /// Aborts one multipart upload; one already gone is fine.
    pub(super) async fn abort_upload(&self, full: &str, upload_id: &str) -> Result<(), StoreError> {
        let target = self.target(full);
        let r = retried!(self, "AbortMultipartUpload", &target, |c| c
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id))
        .await;
        match r {
            Err(e) if e.kind == StoreErrorKind::NotFound => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Aborts every multipart upload under the repository `prefix`; how many.
    pub(super) async fn abort_incomplete_uploads(&self, prefix: &str) -> Result<u64, StoreError> {
        let full_prefix = self.full(prefix);
        let target = self.target(&full_prefix);
        let mut n = 0u64;
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let page = retried!(self, "ListMultipartUploads", &target, |c| c
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone()))
            .await?;
            for u in page.uploads() {
                if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                    self.abort_upload(key, id).await?;
                    tracing::info!("aborted an incomplete upload of {}", self.target(key));
                    n += 1;
                }
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if page.is_truncated() != Some(true) || key_marker.is_none() {
                return Ok(n);
            }
        }
    }
}

/// The keys a DeleteObjects answer says were not deleted, as a failure. A missing key
/// is what we wanted; anything else is reported, and the batch retried when the
/// server says try again.
fn batch_errors(out: &DeleteObjectsOutput) -> Result<(), Failure> {
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
    let kind = match classify_status(400, Some(code)) {
        StoreErrorKind::Transient => StoreErrorKind::Transient,
        _ => StoreErrorKind::Permanent,
    };
    Err(Failure {
        kind,
        cause,
        status: None,
        code: Some(code.to_string()),
    })
}
