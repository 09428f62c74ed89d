//! `rotate` on a local repository of synthetic backups (manifests and a data object,
//! no server): `dry_run: true` lists the ids and deletes nothing, `run --check` shows
//! the diff, a real run deletes exactly those folders and leaves incomplete ones alone,
//! and a policy without a rule is refused before anything runs.

use crate::cli::stagehand;
use crate::support::{run_plan, write_plan, PlanRun};
use serde_json::{json, Value};
use stagehand_backup::manifest::{Binlog, Locks, Lsns, Manifest, RedoFacts, MANIFEST_FILE};
use stagehand_mariadb::datadir::ServerSettings;
use stagehand_repo::binlogs::{SegmentMeta, SegmentSource};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// A backup id and start time `ago` before now: (`20261121T101500Z`, RFC 3339).
fn started(ago: u64) -> (String, String) {
    let t = SystemTime::now() - Duration::from_secs(ago);
    let rfc = humantime::format_rfc3339_seconds(t).to_string();
    let id = rfc.replace(['-', ':'], "");
    (id, rfc)
}

/// One synthetic backup: a data object, and (when complete) its manifest.
struct Synthetic {
    ago: u64,
    complete: bool,
    verified: bool,
    base: Option<String>,
}

impl Synthetic {
    fn complete(ago: u64) -> Self {
        Synthetic {
            ago,
            complete: true,
            verified: false,
            base: None,
        }
    }
    fn incomplete(ago: u64) -> Self {
        Synthetic {
            complete: false,
            ..Self::complete(ago)
        }
    }
    fn verified(self) -> Self {
        Synthetic {
            verified: true,
            ..self
        }
    }
    fn based_on(self, base: &str) -> Self {
        Synthetic {
            base: Some(base.into()),
            ..self
        }
    }

    /// Writes it under `repo` and returns its id.
    fn write(&self, repo: &Path) -> String {
        let (id, at) = started(self.ago);
        let dir = repo.join(&id);
        std::fs::create_dir_all(&dir).expect("backup folder");
        std::fs::write(dir.join("ibdata1"), vec![1u8; 4096]).expect("data object");
        if self.complete {
            let manifest = manifest(&id, &at, self.verified, self.base.as_deref());
            std::fs::write(dir.join(MANIFEST_FILE), manifest.to_vec()).expect("manifest");
        }
        id
    }
}

fn manifest(id: &str, at: &str, verified: bool, base: Option<&str>) -> Manifest {
    let value = json!({
        "format": 1, "tool": "stagehand (test)", "complete": true, "run_id": id,
        "started_at": at, "finished_at": at,
        "server": ServerSettings::default(), "lsn": Lsns::default(), "binlog": Binlog::default(),
        "locks": Locks::default(), "redo": RedoFacts::default(), "copies": [],
        "files": [{"path": "ibdata1", "class": "system_tablespace", "size": 4096, "sha256": "00"}],
        "metadata_files": [],
        "base": base,
        "verified": if verified { json!({"at": at, "depth": "hashes"}) } else { Value::Null },
    });
    serde_json::from_value(value).expect("a manifest")
}

/// The repository of the main scenario and what a `keep_last: 1, max_age: 10d` policy
/// makes of it.
struct Scenario {
    repo: PathBuf,
    kept: Vec<String>,
    incomplete: Vec<String>,
    /// Oldest first.
    deleted: Vec<String>,
    base: String,
    based: String,
}

fn scenario(dir: &Path) -> Scenario {
    let repo = dir.join("repo");
    let w = |s: Synthetic| s.write(&repo);
    let base = w(Synthetic::complete(30 * DAY)); // kept: the base of a recent backup
    let based = w(Synthetic::complete(5 * DAY).based_on(&base));
    let kept = vec![
        w(Synthetic::complete(HOUR)),
        w(Synthetic::complete(2 * DAY).verified()),
        based.clone(),
        base.clone(),
    ];
    let old_base = w(Synthetic::complete(40 * DAY));
    let deleted = vec![
        w(Synthetic::complete(50 * DAY).based_on(&old_base)),
        old_base,
        w(Synthetic::complete(20 * DAY)),
    ];
    let incomplete = vec![
        w(Synthetic::incomplete(3 * DAY)),
        w(Synthetic::incomplete(60 * DAY)),
    ];
    Scenario {
        repo,
        kept,
        incomplete,
        deleted,
        base,
        based,
    }
}

/// A plan named rotate: one rotate step of `repository` (a YAML mapping) keeping the
/// last backup and any younger than 10 days, then `extra` lines of its `with`.
fn rotate_plan_text(repository: &str, extra: &str) -> String {
    format!(
        r#"version: 1
name: rotate
steps:
  - id: rotate
    uses: rotate
    with:
      repository: {repository}
      keep_last: 1
      max_age: 10d
{extra}"#
    )
}

fn rotate_plan(dir: &Path, repo: &Path, extra: &str) -> PathBuf {
    let repository = format!("{{url: \"{}\"}}", repo.display());
    write_plan(dir, "rotate", &rotate_plan_text(&repository, extra))
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn folders(repo: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(repo)
        .expect("repository")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

fn succeeded(r: &PlanRun) -> &Value {
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    &r.step("rotate")["outputs"]
}

#[test]
fn a_dry_run_lists_the_ids_and_deletes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = scenario(dir.path());
    let before = folders(&s.repo);
    let plan = rotate_plan(dir.path(), &s.repo, "      dry_run: true\n");
    let r = run_plan(dir.path(), &plan, &[], &[]);
    let out = succeeded(&r);
    assert_eq!(ids(&out["deleted_ids"]), s.deleted);
    assert_eq!(out["deleted"], json!(3));
    assert_eq!(out["kept"], json!(s.kept.len() + s.incomplete.len()));
    assert_eq!(out["dry_run"], json!(true));
    assert!(out["freed_bytes"].as_u64().is_some_and(|b| b > 3 * 4096));
    assert_eq!(folders(&s.repo), before, "a dry run deletes nothing");
    for id in &s.deleted {
        assert!(
            s.repo.join(id).join(MANIFEST_FILE).exists(),
            "{id} untouched"
        );
    }
}

#[test]
fn the_check_shows_the_diff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = scenario(dir.path());
    let before = folders(&s.repo);
    let plan = rotate_plan(dir.path(), &s.repo, "");
    let plan_arg = plan.display().to_string();
    let r = stagehand(&["run", &plan_arg, "--check"]);
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "{}: 9 backups: keeps 6, deletes 3",
            s.repo.display()
        )),
        "{}",
        r.stdout
    );
    for id in &s.deleted {
        let line = format!("- delete  {id}  older than max_age 10d, kept by no rule");
        assert!(r.stdout.contains(&line), "`{line}` in:\n{}", r.stdout);
    }
    let base_line = format!("  keep    {}  base of {}", s.base, s.based);
    assert!(
        r.stdout.contains(&base_line),
        "`{base_line}` in:\n{}",
        r.stdout
    );
    for id in &s.incomplete {
        let line = format!("WARN  rotate           keep    {id}  incomplete: left alone");
        assert!(r.stdout.contains(&line), "`{line}` in:\n{}", r.stdout);
    }
    // Newest first, as a diff reads.
    let at = |id: &str| r.stdout.find(&format!("  {id}  ")).expect("listed");
    assert!(at(&s.kept[0]) < at(&s.deleted[2]) && at(&s.deleted[2]) < at(&s.deleted[0]));
    assert_eq!(folders(&s.repo), before, "the check deletes nothing");
}

#[test]
fn a_run_deletes_exactly_the_planned_backups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = scenario(dir.path());
    let plan = rotate_plan(dir.path(), &s.repo, "");
    let r = run_plan(dir.path(), &plan, &[], &[]);
    let out = succeeded(&r);
    assert_eq!(ids(&out["deleted_ids"]), s.deleted);
    assert_eq!(out["dry_run"], json!(false));
    let mut left: Vec<String> = s.kept.iter().chain(&s.incomplete).cloned().collect();
    left.sort();
    assert_eq!(folders(&s.repo), left);
    for id in &s.kept {
        let m = Manifest::read(&s.repo.join(id)).expect("kept backups stay complete");
        assert_eq!(&m.run_id, id);
        assert!(s.repo.join(id).join("ibdata1").exists());
    }
    for id in &s.incomplete {
        assert!(s.repo.join(id).join("ibdata1").exists(), "{id} left alone");
    }
    let text = out["plan"].as_str().unwrap_or_default();
    assert_eq!(text.lines().count(), 9, "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("- delete")).count(),
        3
    );

    // Rotating again finds nothing more to delete.
    let again = run_plan(dir.path(), &plan, &[], &[]);
    assert_eq!(succeeded(&again)["deleted"], json!(0));
}

#[test]
fn old_incomplete_backups_go_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let newest = Synthetic::complete(HOUR).write(&repo);
    let interrupted = Synthetic::incomplete(2 * DAY).write(&repo);
    let running = Synthetic::incomplete(2 * HOUR).write(&repo);
    let plan = rotate_plan(
        dir.path(),
        &repo,
        "      delete_incomplete_older_than: 26h\n",
    );
    let r = run_plan(dir.path(), &plan, &[], &[]);
    let out = succeeded(&r);
    assert_eq!(ids(&out["deleted_ids"]), [interrupted]);
    let mut left = vec![newest, running];
    left.sort();
    assert_eq!(folders(&repo), left);
}

#[test]
fn the_plan_dry_run_describes_the_policy_and_touches_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("not-there");
    let plan = rotate_plan(dir.path(), &repo, "");
    let plan_arg = plan.display().to_string();
    let r = stagehand(&["run", &plan_arg, "--dry-run"]);
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("keeps the last 1, every backup younger than 10d")
            && r.stdout
                .contains("never deletes the newest verified backup"),
        "{}",
        r.stdout
    );
    assert!(!repo.exists(), "the dry-run creates nothing");
}

#[test]
fn a_policy_without_a_rule_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = scenario(dir.path());
    let before = folders(&s.repo);
    let plan = write_plan(
        dir.path(),
        "norule",
        &format!(
            "version: 1\nname: norule\nsteps:\n  - id: rotate\n    uses: rotate\n    with: {{repository: {{url: \"{}\"}}}}\n",
            s.repo.display()
        ),
    );
    let plan_arg = plan.display().to_string();
    let state = dir.path().join("state").display().to_string();
    let r = stagehand(&["run", &plan_arg, "--state-dir", &state]);
    assert_eq!(r.code, 2, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("no rule"), "{all}");
    assert_eq!(folders(&s.repo), before);
}

/// The same scenario in a real S3 bucket (moto): listing, manifest-first deletion and
/// batched deletes go through the S3 store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_s3_deletes_exactly_the_planned_backups() {
    use stagehand_testkit::s3::{unique_bucket, MotoServer};
    let moto = MotoServer::shared();
    let bucket = unique_bucket("rotate");
    moto.create_bucket(&bucket).await.expect("bucket");
    let repository = format!(
        "{{url: \"s3://{bucket}/nightly\", endpoint: \"{}\", path_style: true, access_key_id: k, secret_access_key: s}}",
        moto.endpoint()
    );
    rotation_on_s3(&moto.client(), &bucket, &repository).await;
}

/// The same against Garage, a production S3 server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_garage_deletes_exactly_the_planned_backups() {
    use stagehand_testkit::garage::{
        GarageServer, GARAGE_ACCESS_KEY, GARAGE_REGION, GARAGE_SECRET_KEY,
    };
    use stagehand_testkit::s3::unique_bucket;
    let garage = GarageServer::shared();
    let bucket = unique_bucket("rotate-garage");
    garage.create_bucket(&bucket).await.expect("bucket");
    let repository = format!(
        "{{url: \"s3://{bucket}/nightly\", endpoint: \"{}\", region: {GARAGE_REGION}, path_style: true, access_key_id: {GARAGE_ACCESS_KEY}, secret_access_key: {GARAGE_SECRET_KEY}}}",
        garage.endpoint()
    );
    rotation_on_s3(&garage.client(), &bucket, &repository).await;
}

/// Puts the scenario's backups under `nightly/` in `bucket`, runs the rotate plan on
/// `repository` (a YAML mapping naming that bucket and prefix) and checks exactly the
/// planned backups are gone.
async fn rotation_on_s3(client: &stagehand_testkit::s3::S3Client, bucket: &str, repository: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = scenario(dir.path());
    let mut stack = vec![s.repo.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(&s.repo).expect("under repo").display();
            client
                .put_object()
                .bucket(bucket)
                .key(format!("nightly/{rel}"))
                .body(std::fs::read(&p).expect("read").into())
                .send()
                .await
                .expect("put");
        }
    }
    let plan = write_plan(dir.path(), "rotate-s3", &rotate_plan_text(repository, ""));
    let r = tokio::task::block_in_place(|| run_plan(dir.path(), &plan, &[], &[]));
    let out = succeeded(&r);
    assert_eq!(ids(&out["deleted_ids"]), s.deleted);
    let listed = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix("nightly/")
        .send()
        .await
        .expect("list");
    let mut left: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .filter_map(|k| {
            k.strip_prefix("nightly/")?
                .split('/')
                .next()
                .map(String::from)
        })
        .collect();
    left.dedup();
    let mut expected: Vec<String> = s.kept.iter().chain(&s.incomplete).cloned().collect();
    expected.sort();
    assert_eq!(left, expected, "exactly the planned backups are gone");
}

/// A complete backup `ago` seconds old whose binlog position is `gtid`.
fn backup_at(repo: &Path, ago: u64, gtid: &str) -> String {
    let (id, at) = started(ago);
    let dir = repo.join(&id);
    std::fs::create_dir_all(&dir).expect("backup folder");
    std::fs::write(dir.join("ibdata1"), vec![1u8; 4096]).expect("data object");
    let mut m = manifest(&id, &at, false, None);
    m.binlog.gtid_binlog_pos = gtid.to_string();
    std::fs::write(dir.join(MANIFEST_FILE), m.to_vec()).expect("manifest");
    id
}

/// A binlog archive segment (metadata and a stand-in object) from `start` to `end`.
fn segment(repo: &Path, seq: u64, start: &str, end: &str) {
    let meta = SegmentMeta {
        format: SegmentMeta::FORMAT,
        seq,
        object: SegmentMeta::object_key(seq, false),
        stored_bytes: 100,
        size: 100,
        hash: String::new(),
        start_state: start.into(),
        end_state: end.into(),
        first_gtid: String::new(),
        last_gtid: end.into(),
        groups: 1,
        first_time: 0,
        last_time: 0,
        max_time: 0,
        seq_jumps: 0,
        source: SegmentSource {
            server_id: 1,
            version: "10.11".into(),
            binlog_file: "binlog.000001".into(),
        },
        key_id: None,
        archived_at: String::new(),
    };
    let object = repo.join(&meta.object);
    std::fs::create_dir_all(object.parent().expect("segments dir")).expect("segments dir");
    std::fs::write(&object, vec![0u8; 100]).expect("object");
    let json = serde_json::to_vec(&meta).expect("json");
    std::fs::write(object.with_file_name(format!("{seq:010}.json")), json).expect("metadata");
}

#[test]
fn binlog_segments_that_end_before_the_oldest_kept_backup_are_deleted_and_the_rest_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let old = backup_at(&repo, 40 * DAY, "0-1-10");
    // Kept (younger than max_age): the oldest kept backup decides, not the newest.
    let new = backup_at(&repo, 2 * DAY, "0-1-50");
    let newest = backup_at(&repo, HOUR, "0-1-70");
    segment(&repo, 1, "", "0-1-10");
    segment(&repo, 2, "0-1-10", "0-1-30");
    segment(&repo, 3, "0-1-30", "0-1-50");
    segment(&repo, 4, "0-1-50", "0-1-60");
    segment(&repo, 5, "0-1-60", "0-1-90");
    let plan = rotate_plan(dir.path(), &repo, "");
    let plan_arg = plan.display().to_string();

    let checked = stagehand(&["run", &plan_arg, "--check"]);
    for seq in 1..=3 {
        assert!(
            checked
                .stdout
                .contains(&format!("- delete binlog segment {seq} ")),
            "--check lists segment {seq} for deletion:\n{}",
            checked.stdout
        );
    }
    assert!(
        checked.stdout.contains("keep   binlog segments: 2"),
        "{}",
        checked.stdout
    );

    let r = run_plan(dir.path(), &plan, &[], &[]);
    let out = succeeded(&r);
    assert_eq!(ids(&out["deleted_ids"]), [old]);
    assert_eq!(out["deleted_segments"], json!(3));
    let listed = stagehand(&["binlogs", "list", &repo.display().to_string(), "--json"]);
    let listing: Value = serde_json::from_str(&listed.stdout).expect("json");
    let left: Vec<u64> = listing["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .filter_map(|s| s["seq"].as_u64())
        .collect();
    assert_eq!(left, [4, 5], "the segments that roll {new} forward stay");
    assert_eq!(
        listing["interrupted_uploads"],
        json!([]),
        "objects go with their metadata"
    );
    let backups = stagehand(&["backups", "list", &repo.display().to_string(), "--json"]);
    let backups: Value = serde_json::from_str(&backups.stdout).expect("json");
    let listed_ids: Vec<&str> = backups
        .as_array()
        .expect("backups")
        .iter()
        .filter_map(|b| b["id"].as_str())
        .collect();
    assert_eq!(
        listed_ids,
        [new.as_str(), newest.as_str()],
        "the archive's folder is not a backup"
    );
}
