//! `discard`: after a failed or interrupted backup, removes what the run wrote into its
//! backup directory, so a full disk is freed at once and the next run into the same
//! directory is not refused.
//!
//! It removes only a directory that this very run claimed (`.stagehand/run` names the
//! run) and never sealed (no `stagehand.json`): another run's files, unrelated files
//! and a sealed backup (whose prepare may have failed and can be run again) are kept.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use stagehand_backup::manifest::{claimed_by, MANIFEST_FILE};
use stagehand_engine::{StepContext, StepError, TypedStep};
use std::path::Path;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscardConfig {
    /// The backup (or spool) directory the run's copy steps wrote.
    pub dir: String,
    /// Also remove it when it was sealed: for a spool, whose backup lives in a
    /// repository (the local manifest then describes files shipped and deleted).
    #[serde(default)]
    pub even_if_sealed: bool,
}

/// What `discard` publishes.
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct DiscardOutput {
    /// whether the directory's contents were removed
    pub removed: bool,
    /// files removed
    pub files: u64,
    /// bytes freed
    pub bytes: u64,
    /// why nothing was removed (empty when removed)
    pub kept_because: String,
}

pub struct Discard;

#[async_trait]
impl TypedStep for Discard {
    type Config = DiscardConfig;
    type Output = DiscardOutput;
    const NAME: &'static str = "discard";
    const SUMMARY: &'static str = "Removes the unsealed files a failed backup run wrote into its directory (use with `when: failure`)";

    fn describe(cfg: &DiscardConfig) -> String {
        if cfg.even_if_sealed {
            return format!(
                "removes what this run wrote into {} (a directory of another run is kept)",
                cfg.dir
            );
        }
        format!(
            "removes what this run wrote into {} if it never sealed it (a directory of another run, or a sealed backup, is kept)",
            cfg.dir
        )
    }

    async fn run(cfg: &DiscardConfig, ctx: &StepContext) -> Result<DiscardOutput, StepError> {
        let dir = Path::new(&cfg.dir).to_path_buf();
        let run_id = ctx.run_id.clone();
        let even_if_sealed = cfg.even_if_sealed;
        tokio::task::spawn_blocking(move || discard(&dir, &run_id, even_if_sealed))
            .await
            .map_err(|e| StepError::fatal(format!("discard crashed: {e}")))?
    }
}

/// Why a directory is left as it is, or `None` when it is this run's unsealed work.
fn reason_to_keep(dir: &Path, run_id: &str, even_if_sealed: bool) -> Option<String> {
    match claimed_by(dir) {
        None => Some("the directory holds nothing of this run".into()),
        Some(owner) if owner != run_id => Some(format!("the directory belongs to run {owner}")),
        Some(_) if !even_if_sealed && dir.join(MANIFEST_FILE).exists() => Some(
            "the backup is sealed (its manifest exists): run the failed step again instead".into(),
        ),
        Some(_) => None,
    }
}

fn discard(dir: &Path, run_id: &str, even_if_sealed: bool) -> Result<DiscardOutput, StepError> {
    if let Some(why) = reason_to_keep(dir, run_id, even_if_sealed) {
        tracing::info!(dir = %dir.display(), "{why}: nothing removed");
        return Ok(outputs(false, Tally::default(), &why));
    }
    let mut tally = Tally::default();
    let entries = std::fs::read_dir(dir).map_err(|e| io_error(dir, e))?;
    // The claim marker goes last, so an interrupted discard can be run again.
    let mut claim = None;
    for entry in entries {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        if path
            .file_name()
            .is_some_and(|n| n == stagehand_backup::dir::WORK_DIR)
        {
            claim = Some(path);
            continue;
        }
        remove(&path, &mut tally)?;
    }
    if let Some(claim) = claim {
        remove(&claim, &mut tally)?;
    }
    tracing::info!(
        dir = %dir.display(),
        files = tally.files,
        bytes = tally.bytes,
        "removed the unsealed backup of this run"
    );
    Ok(outputs(true, tally, ""))
}

#[derive(Default)]
struct Tally {
    files: u64,
    bytes: u64,
}

/// Removes a file or a whole tree, counting what it frees.
fn remove(path: &Path, tally: &mut Tally) -> Result<(), StepError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_error(path, e))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| io_error(path, e))? {
            remove(&entry.map_err(|e| io_error(path, e))?.path(), tally)?;
        }
        std::fs::remove_dir(path).map_err(|e| io_error(path, e))
    } else {
        std::fs::remove_file(path).map_err(|e| io_error(path, e))?;
        tally.files += 1;
        tally.bytes += meta.len();
        Ok(())
    }
}

fn io_error(path: &Path, e: std::io::Error) -> StepError {
    StepError::fatal(format!("cannot remove {}: {e}", path.display()))
        .with_hint("remove the directory by hand before the next run into it")
}

fn outputs(removed: bool, tally: Tally, why: &str) -> DiscardOutput {
    DiscardOutput {
        removed,
        files: tally.files,
        bytes: tally.bytes,
        kept_because: why.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagehand_backup::manifest::claim_target;

    fn claimed_dir(run: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        claim_target(d.path(), run).expect("claim");
        std::fs::create_dir_all(d.path().join("db")).expect("mkdir");
        std::fs::write(d.path().join("db/t.ibd"), vec![1u8; 4096]).expect("write");
        std::fs::write(d.path().join("ibdata1"), vec![2u8; 100]).expect("write");
        d
    }

    #[test]
    fn an_unsealed_directory_of_this_run_is_emptied() {
        let d = claimed_dir("run-1");
        let marker = std::fs::metadata(d.path().join(".stagehand/run"))
            .expect("claim marker")
            .len();
        let out = discard(d.path(), "run-1", false).expect("discard");
        assert!(out.removed);
        // Both files and the claim marker.
        assert_eq!(out.bytes, 4096 + 100 + marker);
        assert!(
            std::fs::read_dir(d.path()).expect("dir").next().is_none(),
            "the directory is empty"
        );
        claim_target(d.path(), "run-2").expect("the next run can claim it");
    }

    #[test]
    fn another_runs_directory_a_sealed_backup_and_foreign_files_are_kept() {
        let other = claimed_dir("run-0");
        let out = discard(other.path(), "run-1", false).expect("discard");
        assert!(!out.removed);
        assert!(other.path().join("db/t.ibd").exists());

        let sealed = claimed_dir("run-1");
        std::fs::write(sealed.path().join(MANIFEST_FILE), b"{}").expect("manifest");
        let out = discard(sealed.path(), "run-1", false).expect("discard");
        assert!(!out.removed);
        assert!(sealed.path().join("db/t.ibd").exists());
        let out = discard(sealed.path(), "run-1", true).expect("discard a spool");
        assert!(out.removed, "a sealed spool is scratch");

        let foreign = tempfile::tempdir().expect("tempdir");
        std::fs::write(foreign.path().join("notes.txt"), b"mine").expect("write");
        let out = discard(foreign.path(), "run-1", false).expect("discard");
        assert!(!out.removed);
        assert!(foreign.path().join("notes.txt").exists());
    }
}
