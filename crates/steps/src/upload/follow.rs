//! `upload` with `follow: true`: streams a backup out while it is being taken. Runs in
//! the background from before the copies start until the seal step has finished: each
//! file a copy step announces (see `stagehand_backup::spool`) is shipped at once and, with
//! `remove_local`, deleted locally, so the backup never needs its full size on local
//! disk. Once the backup is sealed, what is left (the redo log, metadata files, files a
//! later pass rewrote) goes, then the manifest, last.

use super::ship::files_in_flight;
use super::{finish_upload, ship_all, Shipper, UploadConfig, UploadOutput};
use stagehand_backup::codec::ZstdSettings;
use stagehand_backup::entry::CopiedFile;
use stagehand_backup::manifest::Manifest;
use stagehand_backup::spool::{LedgerReader, SpoolRequest};
use stagehand_engine::{StepContext, StepError};
use stagehand_mariadb::datadir::FileClass;
use stagehand_repo as repo;
use stagehand_repo::crypt::Key;
use stagehand_repo::{Repository, StoreError, StoreErrorKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the ledgers are read.
const POLL: Duration = Duration::from_millis(100);

pub async fn run(cfg: &UploadConfig, ctx: &StepContext) -> Result<UploadOutput, StepError> {
    if !ctx.is_background() {
        return Err(StepError::fatal(
            "`follow: true` streams a backup while it is taken: give the step `background: true` and `until:` the seal step",
        ));
    }
    // Before the spool is claimed: a missing or bad key fails a run that did nothing.
    let key = super::upload_key(cfg)?;
    let dir = PathBuf::from(&cfg.dir);
    stagehand_backup::manifest::claim_target(&dir, &ctx.run_id).map_err(|e| e.into_step_error())?;
    stagehand_backup::spool::mark_streaming(&dir, &spool_request(cfg))
        .map_err(|e| StepError::fatal(format!("{}: {e}", dir.display())))?;
    let id = match &cfg.id {
        Some(id) => id.clone(),
        None => repo::backup_id_from(&ctx.run.started_at).ok_or_else(|| {
            StepError::fatal("the run's start time is not a timestamp; give the upload an `id`")
        })?,
    };
    let repo = Repository::open(&cfg.repository)
        .await
        .map_err(StoreError::into_step_error)?;
    super::claim_destination(&repo, &id)
        .await
        .map_err(StoreError::into_step_error)?;
    let progress = stagehand_host::progress::Progress::start(&ctx.step_id, "uploaded", 0);
    let shipper = Shipper::new(
        repo.store().clone(),
        &dir,
        &id,
        cfg.compress.clone(),
        key.clone(),
        progress.counter(),
        cfg.remove_local,
        cfg.parallel,
    )
    .map_err(StoreError::into_step_error)?;
    ctx.signal_ready().await;
    let t0 = Instant::now();
    let followed = follow_until_sealed(&shipper, &dir, cfg.parallel, ctx).await;
    let manifest = match followed {
        Ok(()) => finish(&repo, &shipper, &dir, &id, cfg.parallel, key.as_deref()).await,
        Err(e) => Err(e),
    };
    let manifest = match manifest {
        Ok(m) => m,
        Err(e) => {
            // Nothing of a failed backup may stay in the repository.
            let removed = repo.delete_backup(&id).await;
            return Err(
                StepError::fatal(format!("streamed upload of backup {id} failed: {e}"))
                    .with_hint(failed_upload_hint(&id, repo.url(), removed.err())),
            );
        }
    };
    let bytes = progress.done();
    drop(progress);
    if cfg.remove_local {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(UploadOutput::of(&manifest, cfg, &id, bytes, secs))
}

/// What the copies feeding this upload are asked: when it compresses and deletes what
/// it ships, to write InnoDB files compressed, so that they reach the spool once and
/// leave as they are (a kept spool stays a plain backup).
pub(super) fn spool_request(cfg: &UploadConfig) -> SpoolRequest {
    let compress = cfg.compress.as_ref().filter(|_| cfg.remove_local);
    SpoolRequest {
        compress: compress.map(|c| ZstdSettings {
            level: c.level,
            threads: c.threads,
        }),
    }
}

/// What is true of a failed backup's objects: removed, or left (the removal failed too,
/// typically because the endpoint is still down) for a later rotation to delete.
fn failed_upload_hint(id: &str, url: &str, removal: Option<StoreError>) -> String {
    match removal {
        None => format!(
            "backup {id} has no manifest in {url}; its objects were removed. Fix the cause and run the plan again"
        ),
        Some(e) => format!(
            "backup {id} has no manifest in {url}, so nothing restores from it; removing its objects failed too ({e}): they stay until a rotate with `delete_incomplete_older_than` (set in plans/backup-to-s3.yaml) deletes them. Fix the cause and run the plan again"
        ),
    }
}

/// Ships announced files until the `until` step (seal) ends. An error when it failed.
async fn follow_until_sealed(
    shipper: &Shipper,
    dir: &Path,
    parallel: usize,
    ctx: &StepContext,
) -> Result<(), StoreError> {
    let limit = Arc::new(tokio::sync::Semaphore::new(files_in_flight(parallel)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut ledgers = LedgerReader::default();
    let until = ctx.wait_until();
    tokio::pin!(until);
    let sealed = loop {
        tokio::select! {
            biased;
            // Uploads in flight are dropped at once: one that hangs on a dead endpoint
            // must not keep the run (and its cleanup) waiting for its retries.
            _ = ctx.cancel.cancelled() => {
                tasks.abort_all();
                return Err(cancelled());
            }
            r = &mut until => break r,
            _ = tokio::time::sleep(POLL) => {}
        }
        // Aria files may be copied again under BLOCK_COMMIT, and non-InnoDB table files
        // by a reconcile under BLOCK_DDL: they go once, at the end, in their final
        // version (or not at all: a reconcile may drop them from the backup).
        let announced = ledgers.poll(dir).into_iter().filter(|f| {
            !matches!(
                f.class,
                FileClass::AriaData | FileClass::AriaLog | FileClass::NonInnodb
            )
        });
        for file in announced {
            let permit = tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => return Err(cancelled()),
                p = limit.clone().acquire_owned() => p.map_err(|_| StoreError::permanent("upload queue closed"))?,
            };
            let shipper = shipper.clone();
            tasks.spawn(async move {
                let _permit = permit;
                ship_announced(&shipper, &file).await
            });
        }
        while let Some(done) = tasks.try_join_next() {
            super::joined(done)?;
        }
    };
    loop {
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => {
                tasks.abort_all();
                return Err(cancelled());
            }
            done = tasks.join_next() => match done {
                Some(done) => super::joined(done)?,
                None => break,
            },
        }
    }
    sealed
        .map(|_| ())
        .map_err(|e| StoreError::permanent(format!("the backup was not sealed ({e})")))
}

/// Ships a file as announced; a file rewritten (or gone) since is shipped at the end in
/// the version the manifest lists, or reported missing there.
async fn ship_announced(shipper: &Shipper, file: &CopiedFile) -> Result<(), StoreError> {
    match shipper.ship(file).await {
        Err(e) if matches!(e.kind, StoreErrorKind::Mismatch | StoreErrorKind::NotFound) => {
            tracing::debug!(file = %file.path, "changed since announced; shipped at the end: {e}");
            Ok(())
        }
        other => other,
    }
}

/// Ships what is left once the backup is sealed, then checks the objects and writes
/// the manifest last.
async fn finish(
    repo: &Repository,
    shipper: &Shipper,
    dir: &Path,
    id: &str,
    parallel: usize,
    key: Option<&Key>,
) -> Result<Manifest, StoreError> {
    let sealed = Manifest::read(dir).map_err(|e| StoreError::permanent(e.to_string()))?;
    let manifest = ship_all(shipper, &sealed, parallel).await?;
    finish_upload(repo, id, &manifest, key).await?;
    Ok(manifest)
}

fn cancelled() -> StoreError {
    StoreError::new(StoreErrorKind::Cancelled, "cancelled")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_asked_to_compress_only_for_an_upload_that_compresses_and_removes_them() {
        let upload = |compress: bool, remove_local: bool| UploadConfig {
            dir: "/spool".into(),
            repository: repo::RepoConfig::at("/repo"),
            id: None,
            parallel: 2,
            remove_local,
            follow: true,
            compress: compress.then_some(super::super::CompressOnUpload {
                level: 5,
                threads: 1,
            }),
        };
        let asked = spool_request(&upload(true, true)).compress;
        assert_eq!(
            asked,
            Some(ZstdSettings {
                level: 5,
                threads: 1
            })
        );
        // A kept spool stays a plain backup; nothing to compress stays plain.
        assert_eq!(spool_request(&upload(true, false)).compress, None);
        assert_eq!(spool_request(&upload(false, true)).compress, None);
    }

    #[test]
    fn the_hint_says_the_objects_stay_when_their_removal_failed() {
        let removed = failed_upload_hint("b1", "s3://x/db", None);
        assert!(removed.contains("its objects were removed"), "{removed}");
        let left = failed_upload_hint(
            "b1",
            "s3://x/db",
            Some(StoreError::permanent("connection refused")),
        );
        assert!(
            !left.contains("were removed")
                && left.contains("removing its objects failed too (")
                && left.contains("connection refused"),
            "{left}"
        );
    }
}
