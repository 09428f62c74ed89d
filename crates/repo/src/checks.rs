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
                ids.iter()
                    .filter(|id| *id != crate::binlogs::BINLOGS_DIR)
                    .count()
            ),
        },
        Err(e) => Finding {
            level: Level::Error,
            message: format!("repository {}: {}", cfg.describe(), e.message),
        },
    }
}

/// `--check` of a step that writes backups: the repository can be listed, and written,
/// and cleared of a failed upload's parts, and deleted from (a probe object, removed
/// at once). A read-only key, or a server without the multipart calls every upload
/// needs (ListMultipartUploads, AbortMultipartUpload), is found here, not mid-backup.
pub async fn probe_repository_for_writing(cfg: &RepoConfig) -> Finding {
    let listed = probe_repository(cfg).await;
    if listed.level == Level::Error {
        return listed;
    }
    match write_probe(cfg).await {
        Ok(()) => Finding {
            level: Level::Ok,
            message: format!(
                "repository {} is reachable and writable (a probe object was written and deleted, multipart uploads can be listed)",
                cfg.describe()
            ),
        },
        Err(e) => Finding {
            level: Level::Error,
            message: format!("repository {}: {e}", cfg.describe()),
        },
    }
}

/// Writes, lists the multipart uploads under, and deletes a probe object.
async fn write_probe(cfg: &RepoConfig) -> Result<(), String> {
    let repo = Repository::open(cfg).await.map_err(|e| e.message)?;
    let store = repo.store();
    let key = format!(
        ".stagehand-probe-{}-{}",
        std::process::id(),
        stagehand_backup::entry::now_ns()
    );
    store
        .put_bytes(&key, b"stagehand --check probe".to_vec())
        .await
        .map_err(|e| format!("cannot write (is the key read-only?): {}", e.message))?;
    let multipart = store.abort_incomplete_uploads(&key).await.map_err(|e| {
        format!(
            "multipart uploads cannot be listed, which every upload needs: {}",
            e.message
        )
    });
    let deleted = store
        .delete(std::slice::from_ref(&key))
        .await
        .map_err(|e| format!("cannot delete (the probe object {key} stays; rotation and failed uploads need to delete): {}", e.message));
    multipart.and(deleted)
}

/// `--check` of the key a step would use: `upload` needs one when encryption is on,
/// `fetch` uses one if given. Names the key by its id, never the key; `None` when there
/// is nothing to say (no encryption configured).
pub fn probe_key(cfg: &RepoConfig, for_upload: bool) -> Option<Finding> {
    let loaded = if for_upload {
        cfg.normalized().upload_key()
    } else {
        cfg.normalized().fetch_key()
    };
    match loaded {
        Ok(Some(k)) => Some(Finding {
            level: Level::Ok,
            message: format!("encryption key {} can be read", k.id()),
        }),
        Ok(None) if for_upload || cfg.encryption.is_none() => None,
        Ok(None) => Some(Finding {
            level: Level::Ok,
            message: "no encryption key given (an encrypted backup would be refused)".into(),
        }),
        Err(e) => Some(Finding {
            level: Level::Error,
            message: e.message,
        }),
    }
}

/// The object of every file of a backup as its repository stores it (the encrypted
/// object, else the stored form, else the file): path, size and hash.
pub fn stored_files(manifest: &Manifest) -> Vec<(String, u64, String)> {
    manifest
        .files
        .iter()
        .map(|f| match (&f.encrypted, &f.stored) {
            (Some(e), _) => (e.path.clone(), e.size, e.hash.clone()),
            (None, Some(s)) => (s.path.clone(), s.size, s.hash.clone()),
            (None, None) => (f.path.clone(), f.size, f.hash.clone()),
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
