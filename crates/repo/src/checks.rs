//! What steps that use a repository share: the config check, the `--check` probe, the
//! list of a backup's objects as stored and the resolution of `latest`.

use crate::{RepoConfig, Repository, StoreError};
use stagehand_backup::manifest::Manifest;
use stagehand_engine::step::{Finding, Level};
use stagehand_engine::ConfigError;

pub fn check_repo(cfg: &RepoConfig) -> Result<(), ConfigError> {
    cfg.check().map_err(|e| ConfigError {
        path: "repository".into(),
        message: e.message,
        hint: Some("a repository is a url (/path, file:///path or s3://bucket/prefix) and, for S3, endpoint/region/keys".into()),
    })
}

/// `--check`: can the repository be listed?
pub async fn probe_repository(cfg: &RepoConfig) -> Finding {
    let result = async {
        let repo = Repository::open(cfg).await?;
        repo.store().list_dirs("").await
    }
    .await;
    match result {
        Ok(ids) => Finding {
            level: Level::Ok,
            message: format!(
                "repository {} is reachable ({} backup folders)",
                cfg.describe(),
                ids.len()
            ),
        },
        Err(e) => Finding {
            level: Level::Error,
            message: format!("repository {}: {}", cfg.describe(), e.message),
        },
    }
}

/// The object key and local path of every file of a backup, as stored.
pub fn stored_files(manifest: &Manifest) -> Vec<(String, u64, String)> {
    manifest
        .files
        .iter()
        .map(|f| match &f.stored {
            Some(s) => (s.path.clone(), s.size, s.sha256.clone()),
            None => (f.path.clone(), f.size, f.sha256.clone()),
        })
        .collect()
}

/// `latest` → the newest complete backup's id.
pub async fn resolve_id(repo: &Repository, id: &str) -> Result<String, StoreError> {
    if id != "latest" {
        return Ok(id.to_string());
    }
    repo.backups()
        .await?
        .into_iter()
        .rev()
        .find(|b| b.is_complete())
        .map(|b| b.id)
        .ok_or_else(|| StoreError::not_found(format!("{}: no complete backup", repo.url())))
}
