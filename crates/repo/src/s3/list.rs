//! Listing: the objects under a prefix, and the "folders" right under one, page by
//! page (each ListObjectsV2 request retried on its own).

use super::Inner;
use crate::{ObjectInfo, StoreError};
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;

impl Inner {
    /// Every page of ListObjectsV2 under `full_prefix` (with `delimiter`, the "folders"
    /// come as common prefixes), each request retried on its own.
    async fn list_pages(
        &self,
        full_prefix: &str,
        delimiter: Option<&str>,
        mut each: impl FnMut(&ListObjectsV2Output),
    ) -> Result<(), StoreError> {
        let target = self.target(full_prefix);
        let mut token: Option<String> = None;
        loop {
            let page = retried!(self, "ListObjectsV2", &target, |c| c
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(full_prefix)
                .set_delimiter(delimiter.map(str::to_string))
                .set_continuation_token(token.clone()))
            .await?;
            each(&page);
            token = page.next_continuation_token().map(str::to_string);
            if page.is_truncated() != Some(true) || token.is_none() {
                return Ok(());
            }
        }
    }

    /// Every object whose repository key starts with `prefix`, sorted by key.
    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut out = Vec::new();
        self.list_pages(&self.full(prefix), None, |page| {
            for o in page.contents() {
                if let Some(key) = o.key().and_then(|k| self.relative(k)) {
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

    /// The names of the "folders" right under `prefix`, sorted.
    pub(super) async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let p = prefix.trim_end_matches('/');
        let full_prefix = if p.is_empty() {
            self.full("")
        } else {
            self.full(&format!("{p}/"))
        };
        let mut out = Vec::new();
        self.list_pages(&full_prefix, Some("/"), |page| {
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
}
