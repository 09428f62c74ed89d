//! `rotate`: retention on a repository. Lists the backups, decides with
//! [`retention::decide`] which to keep (its module doc has the exact semantics), and
//! deletes the others oldest first, each manifest first: a deletion cut short leaves an
//! incomplete folder, never something that looks like a complete backup.
//! `dry_run: true` lists the decisions and deletes nothing; `stagehand run --check`
//! shows the same list as a diff.

mod segments;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Deserialize;
use stagehand_engine::step::Finding;
use stagehand_engine::{ConfigError, StepContext, StepError, TypedStep};
use stagehand_repo::binlogs::BinlogArchive;
use stagehand_repo::retention::{self, Age, Plan, Policy, PolicyError};
use stagehand_repo::{BackupEntry, RepoConfig, Repository, StoreError, StoreErrorKind};
use std::collections::HashMap;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateConfig {
    /// The repository whose backups are rotated.
    pub repository: RepoConfig,
    /// Keep the N newest complete backups.
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the N most recent days (UTC) that have one.
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the N most recent ISO weeks that have one.
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the N most recent months that have one.
    pub keep_monthly: Option<u32>,
    /// Keep every backup younger than this (`30d`); older ones are deleted unless a
    /// count rule keeps them.
    pub max_age: Option<String>,
    /// Delete incomplete backups (no manifest: interrupted uploads) whose id names a
    /// time older than this (`26h`). Absent: incomplete backups are left alone.
    pub delete_incomplete_older_than: Option<String>,
    /// List what would be deleted and delete nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What `rotate` publishes.
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct RotateOutput {
    /// backups kept
    pub kept: u64,
    /// backups deleted (with dry_run: that would be deleted)
    pub deleted: u64,
    /// ids of the deleted backups, oldest first
    pub deleted_ids: Vec<String>,
    /// bytes the deleted backups (and binlog segments) took in the repository
    pub freed_bytes: u64,
    /// binlog archive segments deleted (with dry_run: that would be deleted): those
    /// that end before the oldest kept backup
    pub deleted_segments: u64,
    /// the decision on every backup and on the binlog archive, as a diff (`- delete` lines)
    pub plan: String,
    /// true when nothing was deleted on purpose
    pub dry_run: bool,
}

pub struct Rotate;

#[async_trait]
impl TypedStep for Rotate {
    type Config = RotateConfig;
    type Output = RotateOutput;
    const NAME: &'static str = "rotate";
    const SUMMARY: &'static str = "Applies a retention policy to a repository: keeps the last N, daily, weekly, monthly and recent backups, deletes the others";

    fn check(cfg: &RotateConfig) -> Result<(), ConfigError> {
        if settled(&cfg.repository.url) {
            cfg.repository.check().map_err(|e| ConfigError {
                path: "repository".into(),
                message: e.message,
                hint: None,
            })?;
        }
        policy_of(cfg, true).map(|_| ()).map_err(config_error)
    }

    fn describe(cfg: &RotateConfig) -> String {
        let repo = cfg.repository.describe();
        let policy = match policy_of(cfg, true) {
            Ok(p) => p,
            Err(e) => return format!("rotates the backups in {repo}: {e}"),
        };
        let mode = if cfg.dry_run {
            " (dry run: lists what it would delete, deletes nothing)"
        } else {
            ""
        };
        format!(
            "rotates the backups in {repo}{mode}: keeps {}; deletes every other complete backup, oldest first, each manifest first; never deletes the newest verified backup (the newest complete one when none is verified) nor a backup a kept one depends on; {}; deletes the binlog archive's segments that end before the oldest kept backup",
            policy.describe_rules(),
            policy.describe_incomplete()
        )
    }

    async fn run(cfg: &RotateConfig, ctx: &StepContext) -> Result<RotateOutput, StepError> {
        let policy = policy_of(cfg, false).map_err(|e| StepError::fatal(e.to_string()))?;
        let repo = cancellable(&ctx.cancel, Repository::open(&cfg.repository)).await?;
        let done = execute(&repo, &policy, cfg.dry_run, Utc::now(), &ctx.cancel).await?;
        Ok(done.outputs(cfg.dry_run))
    }

    async fn preflight(cfg: &RotateConfig, ctx: &StepContext) -> Vec<Finding> {
        let policy = match policy_of(cfg, false) {
            Ok(p) => p,
            Err(e) => return vec![Finding::error(e.to_string())],
        };
        let listed = async {
            let repo = Repository::open(&cfg.repository).await?;
            let entries = repo.backups().await?;
            let archive = BinlogArchive::new(repo.store().clone()).list().await?;
            Ok::<_, StoreError>((repo, entries, archive))
        };
        let (repo, entries, archive) = match cancellable(&ctx.cancel, listed).await {
            Ok(r) => r,
            Err(e) => {
                return vec![Finding::error(format!(
                    "{}: {}",
                    cfg.repository.describe(),
                    e.message
                ))]
            }
        };
        match retention::decide(&candidates(&entries), &policy, Utc::now()) {
            Ok(plan) => {
                let segs = segments::decide(&archive, &entries, &plan);
                let mut out = findings(repo.url(), &plan, &sizes(&entries), cfg.dry_run);
                out.extend(segs.diff_lines().into_iter().map(Finding::ok));
                out
            }
            Err(e) => vec![Finding::error(e.to_string())],
        }
    }
}

/// Whether a templated value is real: validation renders samples (``) and the dry-run
/// placeholders (`<steps.x.outputs.y>`) for values only known at run time.
fn settled(text: &str) -> bool {
    !text.trim().is_empty() && !text.contains('<')
}

/// The policy a config names. `lenient`: durations that are not known yet (see
/// [`settled`]) count as rules without being parsed.
fn policy_of(cfg: &RotateConfig, lenient: bool) -> Result<Policy, PolicyError> {
    let age = |field: &'static str, text: &Option<String>| match text {
        None => Ok(None),
        Some(t) if lenient && !settled(t) => Ok(Some(Age {
            text: t.clone(),
            span: chrono::TimeDelta::zero(),
        })),
        Some(t) => Age::parse(field, t).map(Some),
    };
    let policy = Policy {
        keep_last: cfg.keep_last,
        keep_daily: cfg.keep_daily,
        keep_weekly: cfg.keep_weekly,
        keep_monthly: cfg.keep_monthly,
        max_age: age("max_age", &cfg.max_age)?,
        delete_incomplete_older_than: age(
            "delete_incomplete_older_than",
            &cfg.delete_incomplete_older_than,
        )?,
    };
    policy.check()?;
    Ok(policy)
}

fn config_error(e: PolicyError) -> ConfigError {
    let (path, hint) = match &e {
        PolicyError::NoRule => ("", Some("e.g. keep_daily: 7, keep_weekly: 4, max_age: 90d")),
        PolicyError::ZeroCount { field }
        | PolicyError::BadDuration { field, .. }
        | PolicyError::ZeroDuration { field }
        | PolicyError::TooLong { field, .. } => (*field, None),
    };
    ConfigError {
        path: path.into(),
        message: e.to_string(),
        hint: hint.map(String::from),
    }
}

/// Runs `work` unless the step is cancelled first.
async fn cancellable<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StepError> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(StepError::cancelled()),
        r = work => r.map_err(StoreError::into_step_error),
    }
}

/// The backups as retention sees them.
fn candidates(entries: &[BackupEntry]) -> Vec<retention::Backup> {
    entries
        .iter()
        .map(|e| match &e.manifest {
            Some(m) => retention::Backup {
                id: e.id.clone(),
                started_at: DateTime::parse_from_rfc3339(&m.started_at)
                    .ok()
                    .map(|t| t.with_timezone(&Utc)),
                complete: true,
                verified: m.verified.is_some(),
                base: m.base.clone(),
            },
            None => retention::Backup {
                id: e.id.clone(),
                started_at: None,
                complete: false,
                verified: false,
                base: None,
            },
        })
        .collect()
}

fn sizes(entries: &[BackupEntry]) -> HashMap<String, u64> {
    entries
        .iter()
        .map(|e| (e.id.clone(), e.stored_bytes))
        .collect()
}

/// What a rotation did (or, with dry_run, would do).
#[derive(Debug, Default)]
pub struct Rotation {
    pub plan: Plan,
    pub segments: segments::SegmentPlan,
    pub deleted_ids: Vec<String>,
    pub freed_bytes: u64,
}

impl Rotation {
    fn outputs(&self, dry_run: bool) -> RotateOutput {
        RotateOutput {
            kept: self.plan.kept().count() as u64,
            deleted: self.deleted_ids.len() as u64,
            deleted_ids: self.deleted_ids.clone(),
            freed_bytes: self.freed_bytes + self.segments.freed_bytes(),
            deleted_segments: self.segments.delete.len() as u64,
            plan: self
                .plan
                .diff_lines()
                .into_iter()
                .chain(self.segments.diff_lines())
                .collect::<Vec<_>>()
                .join("\n"),
            dry_run,
        }
    }
}

/// Lists the repository, decides, and deletes (unless `dry_run`) oldest first.
pub async fn execute(
    repo: &Repository,
    policy: &Policy,
    dry_run: bool,
    now: DateTime<Utc>,
    cancel: &CancellationToken,
) -> Result<Rotation, StepError> {
    let entries = cancellable(cancel, repo.backups()).await?;
    let plan = retention::decide(&candidates(&entries), policy, now)
        .map_err(|e| StepError::fatal(e.to_string()))?;
    log_plan(repo.url(), &plan);
    let sizes = sizes(&entries);
    let mut done = Rotation::default();
    let planned: Vec<&retention::Decision> = plan.deletions().collect();
    for d in &planned {
        let bytes = sizes.get(&d.id).copied().unwrap_or(0);
        if dry_run {
            tracing::info!(id = %d.id, reason = %d.reasons_text(), bytes, "would delete backup (dry run)");
        } else {
            if !d.complete && completed_since(repo, &d.id, cancel).await? {
                continue;
            }
            cancellable(cancel, repo.delete_backup(&d.id))
                .await
                .map_err(|e| cut_short(e, &d.id, done.deleted_ids.len(), planned.len()))?;
            tracing::info!(id = %d.id, reason = %d.reasons_text(), bytes, "deleted backup");
        }
        done.deleted_ids.push(d.id.clone());
        done.freed_bytes += bytes;
    }
    done.segments = rotate_segments(repo, &entries, &plan, dry_run, cancel).await?;
    done.plan = plan;
    Ok(done)
}

/// Deletes the binlog segments no kept backup needs (unless `dry_run`), oldest first.
async fn rotate_segments(
    repo: &Repository,
    entries: &[BackupEntry],
    plan: &Plan,
    dry_run: bool,
    cancel: &CancellationToken,
) -> Result<segments::SegmentPlan, StepError> {
    let archive = BinlogArchive::new(repo.store().clone());
    let listing = cancellable(cancel, archive.list()).await?;
    let decided = segments::decide(&listing, entries, plan);
    for s in &decided.delete {
        if dry_run {
            tracing::info!(segment = s.seq, end = %s.end_state, "would delete binlog segment (dry run)");
            continue;
        }
        cancellable(cancel, archive.delete(s)).await.map_err(|e| {
            e.with_hint(
                "run rotate again: deleted segments stay deleted, the rest are decided anew",
            )
        })?;
        tracing::info!(segment = s.seq, end = %s.end_state, "deleted binlog segment");
    }
    Ok(decided)
}

fn log_plan(url: &str, plan: &Plan) {
    let deletions = plan.deletions().count();
    tracing::info!(
        repository = %url,
        backups = plan.decisions.len(),
        keep = plan.decisions.len() - deletions,
        delete = deletions,
        "retention decided"
    );
    for line in plan.diff_lines() {
        tracing::debug!("{line}");
    }
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
}

/// An incomplete backup that got its manifest after the listing (an upload that was
/// still running) is left alone.
async fn completed_since(
    repo: &Repository,
    id: &str,
    cancel: &CancellationToken,
) -> Result<bool, StepError> {
    let read = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(StepError::cancelled()),
        r = repo.manifest(id) => r,
    };
    match read {
        Ok(_) => {
            tracing::warn!(id, "backup completed since the listing: not deleted");
            Ok(true)
        }
        Err(e) if e.kind == StoreErrorKind::Transient => Err(e.into_step_error()),
        Err(_) => Ok(false),
    }
}

fn cut_short(mut e: StepError, id: &str, done: usize, planned: usize) -> StepError {
    e.message = format!(
        "deleting backup {id}: {} ({done} of {planned} deletions done)",
        e.message
    );
    e.with_hint("run rotate again: deleted backups stay deleted, the rest are decided anew")
}

/// The preflight's report: a summary, then one finding per backup as a diff line.
fn findings(url: &str, plan: &Plan, sizes: &HashMap<String, u64>, dry_run: bool) -> Vec<Finding> {
    let deletions: Vec<_> = plan.deletions().collect();
    let freed: u64 = deletions
        .iter()
        .map(|d| sizes.get(&d.id).copied().unwrap_or(0))
        .sum();
    let mode = if dry_run {
        " (dry_run: deletes nothing)"
    } else {
        ""
    };
    let mut out = vec![if plan.decisions.is_empty() {
        Finding::warn(format!("{url}: no backups found: nothing to rotate"))
    } else {
        Finding::ok(format!(
            "{url}: {} backups: keeps {}, deletes {} ({}){mode}",
            plan.decisions.len(),
            plan.decisions.len() - deletions.len(),
            deletions.len(),
            bytesize::ByteSize(freed)
        ))
    }];
    for (d, line) in plan.decisions.iter().zip(plan.diff_lines()) {
        // An incomplete backup left alone is worth a look (an interrupted upload?).
        out.push(if d.keep && !d.complete {
            Finding::warn(line)
        } else {
            Finding::ok(line)
        });
    }
    out.extend(plan.warnings.iter().map(Finding::warn));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use stagehand_backup::manifest::{Binlog, Locks, Lsns, Manifest, RedoFacts, MANIFEST_FILE};
    use stagehand_engine::step::Level;
    use stagehand_repo::local::LocalStore;
    use stagehand_repo::{ByteCounter, ObjectInfo, Store};
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    /// A local store that records every delete call.
    struct Recording {
        inner: LocalStore,
        deletes: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait]
    impl Store for Recording {
        fn location(&self) -> String {
            self.inner.location()
        }
        async fn put_file(
            &self,
            key: &str,
            path: &Path,
            size: u64,
            hash: &str,
            progress: &ByteCounter,
        ) -> Result<(), StoreError> {
            self.inner.put_file(key, path, size, hash, progress).await
        }
        async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
            self.inner.put_bytes(key, bytes).await
        }
        async fn get_to_file(
            &self,
            key: &str,
            path: &Path,
            offset: u64,
            progress: &ByteCounter,
        ) -> Result<u64, StoreError> {
            self.inner.get_to_file(key, path, offset, progress).await
        }
        async fn get_to_writer(
            &self,
            key: &str,
            sink: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
            progress: &ByteCounter,
        ) -> Result<u64, StoreError> {
            self.inner.get_to_writer(key, sink, progress).await
        }
        async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get_bytes(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
            self.inner.list(prefix).await
        }
        async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
            self.inner.list_dirs(prefix).await
        }
        async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
            if let Ok(mut d) = self.deletes.lock() {
                d.push(keys.to_vec());
            }
            self.inner.delete(keys).await
        }
        async fn abort_incomplete_uploads(&self, prefix: &str) -> Result<u64, StoreError> {
            self.inner.abort_incomplete_uploads(prefix).await
        }
    }

    fn manifest(id: &str, verified: bool) -> Vec<u8> {
        let t = retention::time_of_id(id).expect("a time id");
        let started = t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let value = json!({
            "format": 1, "tool": "test", "complete": true, "run_id": id,
            "started_at": started, "finished_at": started,
            "server": stagehand_mariadb::datadir::ServerSettings::default(),
            "lsn": Lsns::default(), "binlog": Binlog::default(), "locks": Locks::default(),
            "redo": RedoFacts::default(), "copies": [], "files": [], "metadata_files": [],
            "verified": if verified { json!({"at": started, "depth": "hashes"}) } else { json!(null) },
        });
        let m: Manifest = serde_json::from_value(value).expect("a manifest");
        m.to_vec()
    }

    /// A backup folder with a data object, and its manifest unless `incomplete`.
    fn backup(root: &Path, id: &str, complete: bool, verified: bool) {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).expect("backup dir");
        std::fs::write(dir.join("ibdata1"), vec![7u8; 1000]).expect("data");
        if complete {
            std::fs::write(dir.join(MANIFEST_FILE), manifest(id, verified)).expect("manifest");
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-21T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    fn keep_last(n: u32) -> Policy {
        Policy {
            keep_last: Some(n),
            ..Default::default()
        }
    }

    fn repository(root: &Path) -> (Repository, Arc<Recording>) {
        let store = Arc::new(Recording {
            inner: LocalStore::new(root),
            deletes: Mutex::default(),
        });
        (Repository::from_store(store.clone()), store)
    }

    fn sample(root: &Path) {
        backup(root, "20261118T010000Z", true, false);
        backup(root, "20261119T010000Z", false, false);
        backup(root, "20261117T010000Z", true, false);
        backup(root, "20261120T010000Z", true, true);
        backup(root, "20261121T010000Z", true, false);
    }

    #[tokio::test]
    async fn deletes_oldest_first_and_each_manifest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        sample(dir.path());
        let (repo, store) = repository(dir.path());
        let done = execute(
            &repo,
            &keep_last(1),
            false,
            now(),
            &CancellationToken::new(),
        )
        .await
        .expect("rotation");
        assert_eq!(done.deleted_ids, ["20261117T010000Z", "20261118T010000Z"]);
        assert!(done.freed_bytes > 2000, "{}", done.freed_bytes);
        let calls = store.deletes.lock().expect("calls").clone();
        let firsts: Vec<&str> = calls
            .iter()
            .filter(|c| c.len() == 1 && c[0].ends_with(MANIFEST_FILE))
            .map(|c| c[0].as_str())
            .collect();
        assert_eq!(
            firsts,
            [
                "20261117T010000Z/stagehand.json",
                "20261118T010000Z/stagehand.json"
            ]
        );
        assert_eq!(
            calls.first().map(|c| c[0].as_str()),
            Some("20261117T010000Z/stagehand.json"),
            "the manifest goes before any object"
        );
        for id in ["20261117T010000Z", "20261118T010000Z"] {
            assert!(!dir.path().join(id).exists(), "{id} is gone");
        }
        for id in ["20261119T010000Z", "20261120T010000Z", "20261121T010000Z"] {
            assert!(dir.path().join(id).join("ibdata1").exists(), "{id} is kept");
        }
        let outputs = done.outputs(false);
        assert_eq!((outputs.kept, outputs.deleted), (3, 2));
        assert!(outputs
            .plan
            .contains("  keep    20261120T010000Z  newest verified"));
    }

    #[tokio::test]
    async fn a_dry_run_deletes_nothing_and_reports_the_same_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        sample(dir.path());
        let (repo, store) = repository(dir.path());
        let done = execute(&repo, &keep_last(1), true, now(), &CancellationToken::new())
            .await
            .expect("rotation");
        assert_eq!(done.deleted_ids, ["20261117T010000Z", "20261118T010000Z"]);
        assert!(store.deletes.lock().expect("calls").is_empty());
        assert!(dir.path().join("20261117T010000Z/stagehand.json").exists());
        assert!(done.outputs(true).dry_run);
    }

    #[tokio::test]
    async fn a_cancelled_rotation_deletes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        sample(dir.path());
        let (repo, store) = repository(dir.path());
        let cancel = CancellationToken::new();
        cancel.cancel();
        let r = execute(&repo, &keep_last(1), false, now(), &cancel).await;
        assert!(r.is_err());
        assert!(store.deletes.lock().expect("calls").is_empty());
    }

    #[test]
    fn the_preflight_findings_are_a_diff() {
        let policy = Policy {
            keep_last: Some(1),
            max_age: Some(Age::parse("max_age", "14d").expect("age")),
            ..Default::default()
        };
        let backups = [
            retention::Backup {
                id: "20261101T010000Z".into(),
                started_at: None,
                complete: true,
                verified: false,
                base: None,
            },
            retention::Backup {
                id: "20261121T010000Z".into(),
                started_at: None,
                complete: true,
                verified: true,
                base: None,
            },
            retention::Backup {
                id: "20261121T020000Z".into(),
                started_at: None,
                complete: false,
                verified: false,
                base: None,
            },
        ];
        let plan = retention::decide(&backups, &policy, now()).expect("plan");
        let sizes = HashMap::from([("20261101T010000Z".to_string(), 2_097_152u64)]);
        let f = findings("/repo", &plan, &sizes, false);
        let text: Vec<(Level, &str)> = f.iter().map(|f| (f.level, f.message.as_str())).collect();
        assert_eq!(
            text,
            [
                (Level::Ok, "/repo: 3 backups: keeps 2, deletes 1 (2.0 MiB)"),
                (
                    Level::Warn,
                    "  keep    20261121T020000Z  incomplete: left alone"
                ),
                (
                    Level::Ok,
                    "  keep    20261121T010000Z  last 1; within max_age 14d; newest verified"
                ),
                (
                    Level::Ok,
                    "- delete  20261101T010000Z  older than max_age 14d, kept by no rule"
                ),
            ]
        );
    }

    fn config(extra: serde_json::Value) -> serde_json::Value {
        let mut with = json!({"repository": {"url": "/srv/backups"}});
        if let (Some(w), Some(e)) = (with.as_object_mut(), extra.as_object()) {
            w.extend(e.clone());
        }
        with
    }

    fn build(with: serde_json::Value) -> Result<RotateConfig, ConfigError> {
        let cfg: RotateConfig = stagehand_engine::step::deserialize_config(&with)?;
        Rotate::check(&cfg)?;
        Ok(cfg)
    }

    #[test]
    fn configs_are_checked_with_the_field_at_fault() {
        let no_rule = build(config(json!({}))).expect_err("no rule");
        assert_eq!(no_rule.path, "");
        assert!(no_rule.message.contains("no rule"), "{}", no_rule.message);
        let bad = build(config(json!({"max_age": "a month"}))).expect_err("bad duration");
        assert_eq!(bad.path, "max_age");
        let zero = build(config(json!({"keep_last": 0}))).expect_err("zero");
        assert_eq!(zero.path, "keep_last");
        let relative = build(json!({"repository": {"url": "backups"}, "keep_last": 1}))
            .expect_err("relative path");
        assert_eq!(relative.path, "repository");
        // A value only known at run time (a dry-run placeholder) passes.
        build(config(json!({"max_age": "<steps.a.outputs.age>"}))).expect("placeholder");
    }

    #[test]
    fn describe_states_the_policy_and_the_guarantees() {
        let cfg = build(config(json!({
            "keep_last": 2, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12,
            "max_age": "90d", "delete_incomplete_older_than": "26h", "dry_run": true
        })))
        .expect("config");
        assert_eq!(
            Rotate::describe(&cfg),
            "rotates the backups in /srv/backups (dry run: lists what it would delete, deletes nothing): \
             keeps the last 2, the newest of each of the last 7 days, 4 ISO weeks and 12 months that have a backup (UTC), every backup younger than 90d; \
             deletes every other complete backup, oldest first, each manifest first; \
             never deletes the newest verified backup (the newest complete one when none is verified) nor a backup a kept one depends on; \
             deletes incomplete backups older than 26h; \
             deletes the binlog archive's segments that end before the oldest kept backup"
        );
    }
}
