//! A repository in an S3-compatible bucket. (Being written.)

use super::{ByteCounter, ObjectInfo, RepoConfig, Store, StoreError};
use async_trait::async_trait;
use std::path::Path;

pub struct S3Store {
    location: String,
}

impl S3Store {
    pub async fn connect(cfg: &RepoConfig, bucket: &str, prefix: &str) -> Result<Self, StoreError> {
        let _ = cfg;
        Err(StoreError::config(format!(
            "s3://{bucket}/{prefix}: S3 repositories are not implemented yet"
        )))
    }
}

#[async_trait]
impl Store for S3Store {
    fn location(&self) -> String {
        self.location.clone()
    }
    async fn put_file(&self, _: &str, _: &Path, _: u64, _: &str, _: &ByteCounter) -> Result<(), StoreError> {
        Err(StoreError::config("not implemented"))
    }
    async fn put_bytes(&self, _: &str, _: Vec<u8>) -> Result<(), StoreError> {
        Err(StoreError::config("not implemented"))
    }
    async fn get_to_file(&self, _: &str, _: &Path, _: u64, _: &ByteCounter) -> Result<u64, StoreError> {
        Err(StoreError::config("not implemented"))
    }
    async fn get_bytes(&self, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Err(StoreError::config("not implemented"))
    }
    async fn list(&self, _: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        Err(StoreError::config("not implemented"))
    }
    async fn list_dirs(&self, _: &str) -> Result<Vec<String>, StoreError> {
        Err(StoreError::config("not implemented"))
    }
    async fn delete(&self, _: &[String]) -> Result<(), StoreError> {
        Err(StoreError::config("not implemented"))
    }
    async fn abort_incomplete_uploads(&self, _: &str) -> Result<u64, StoreError> {
        Err(StoreError::config("not implemented"))
    }
}
