//! Storage faults at the plan level, against a real S3 server (moto) behind a
//! fault-injecting proxy: an upload that cannot succeed fails after its retry budget and
//! leaves no object that looks complete and no multipart upload; run again once the
//! fault is gone, it completes. A fetch cut short by a fault is resumed by the next run,
//! which keeps the files already fetched.

use crate::cli::{stagehand_env, Run};
use crate::support::{
    self, assert_no_multipart_uploads, full_backup_args, keys_under, report_of, set_args,
    write_plan,
};
use serde_json::Value;
use stagehand_testkit::s3::{unique_bucket, FaultProxy, MotoServer, Rule};
use stagehand_testkit::TestServer;
use std::path::Path;

const ENV: &[(&str, &str)] = &[
    ("STAGEHAND_S3_RETRY_BASE_MS", "10"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

const SHIP_PLAN: &str = r#"
version: 1
name: ship-test
params:
  dir: {type: path, required: true}
  repository: {type: string, required: true}
  endpoint: {type: string, required: true}
steps:
  - id: compress
    uses: compress
    with: {dir: "{{params.dir}}"}
  - id: upload
    uses: upload
    needs: [compress]
    with:
      dir: "{{params.dir}}"
      id: b1
      repository: &repo
        url: "{{params.repository}}"
        endpoint: "{{params.endpoint}}"
        path_style: true
        access_key_id: testing
        secret_access_key: testing
        max_attempts: 3
        part_size: 5MiB
"#;

const FETCH_PLAN: &str = r#"
version: 1
name: fetch-test
params:
  to: {type: path, required: true}
  repository: {type: string, required: true}
  endpoint: {type: string, required: true}
steps:
  - id: fetch
    uses: fetch
    with:
      id: b1
      to: "{{params.to}}"
      parallel: 2
      repository:
        url: "{{params.repository}}"
        endpoint: "{{params.endpoint}}"
        path_style: true
        access_key_id: testing
        secret_access_key: testing
        max_attempts: 2
"#;

fn run_plan(plan: &Path, sets: &[(&str, String)], state: &Path) -> Run {
    let mut args: Vec<String> = vec!["run".into(), plan.display().to_string()];
    args.extend(set_args(sets));
    args.extend([
        "--state-dir".into(),
        state.display().to_string(),
        "--json".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    stagehand_env(&args, ENV)
}

fn step(run: &Run, id: &str) -> Value {
    support::step(&report_of(&run.stdout), id).clone()
}

/// A sealed, unprepared backup of a fresh server in `dir`.
async fn small_backup(dir: &Path, state: &Path) {
    let server = TestServer::builder().name("storage-faults").start().await;
    let args = full_backup_args(&server, dir, state, &["prepare=false", "verify=false"], &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = tokio::task::block_in_place(|| stagehand_env(&args, ENV));
    assert_eq!(r.code, 0, "backup failed: {}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_fails_after_its_retries_leaving_nothing_then_completes_when_run_again() {
    let moto = MotoServer::shared();
    let bucket = unique_bucket("upfault");
    moto.create_bucket(&bucket).await.expect("bucket");
    let proxy = FaultProxy::start(moto.addr()).await.expect("proxy");
    let work = tempfile::tempdir().expect("tempdir");
    let (dir, state) = (work.path().join("backup"), work.path().join("state"));
    small_backup(&dir, &state).await;
    let plan = write_plan(work.path(), "ship", SHIP_PLAN);
    let sets = [
        ("dir", dir.display().to_string()),
        ("repository", format!("s3://{bucket}/db")),
        ("endpoint", proxy.endpoint()),
    ];

    // Every upload request fails: the budget (3 attempts) runs out.
    proxy.add(Rule::op("PutObject").status(500, "InternalError"));
    proxy.add(Rule::op("UploadPart").status(503, "SlowDown"));
    let failed = tokio::task::block_in_place(|| run_plan(&plan, &sets, &state));
    assert_eq!(failed.code, 1, "the upload must fail: {}", failed.stdout);
    let upload = step(&failed, "upload");
    let error = upload["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("3 attempts"),
        "the error gives the attempts spent: {error}"
    );
    assert!(!error.contains("testing"), "no key in the error: {error}");
    let hint = upload["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("no manifest"),
        "the hint says nothing looks complete: {hint}"
    );
    let keys = keys_under(moto, &bucket, "db/").await;
    assert!(
        !keys.iter().any(|k| k.ends_with("stagehand.json")),
        "no manifest after a failed upload: {keys:?}"
    );
    assert_no_multipart_uploads(moto, &bucket).await;

    // The fault is gone: the same plan completes (compress has nothing left to do).
    proxy.clear_rules();
    let ok = tokio::task::block_in_place(|| run_plan(&plan, &sets, &state));
    assert_eq!(ok.code, 0, "second run: {}\n{}", ok.stdout, ok.stderr);
    let keys = keys_under(moto, &bucket, "db/b1/").await;
    assert!(
        keys.contains(&"db/b1/stagehand.json".to_string()),
        "{keys:?}"
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("stagehand.json")).expect("local manifest"))
            .expect("manifest");
    let files = manifest["files"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        keys.len(),
        files.len() + 1,
        "one object per file plus the manifest"
    );

    // A fetch cut short by a fault on one object is resumed by the next run.
    let fetch_plan = write_plan(work.path(), "fetch", FETCH_PLAN);
    let to = work.path().join("fetched");
    let fsets = [
        ("to", to.display().to_string()),
        ("repository", format!("s3://{bucket}/db")),
        ("endpoint", proxy.endpoint()),
    ];
    // The smallest non-empty object: fetched last (largest first), so the first run
    // gets everything else before it fails.
    let stored_size = |f: &Value| f["stored"]["size"].as_u64().or(f["size"].as_u64());
    let victim = files
        .iter()
        .filter(|f| stored_size(f).unwrap_or(0) > 0)
        .min_by_key(|f| stored_size(f))
        .and_then(|f| f["stored"]["path"].as_str().or(f["path"].as_str()))
        .expect("a file")
        .to_string();
    proxy.add(Rule::op("GetObject").target_contains(&victim).reset());
    let cut = tokio::task::block_in_place(|| run_plan(&fetch_plan, &fsets, &state));
    assert_eq!(
        cut.code, 1,
        "the fetch must fail while the object is unreachable"
    );
    assert!(
        !to.join("stagehand.json").exists(),
        "no manifest after a failed fetch"
    );
    proxy.clear_rules();
    let resumed = tokio::task::block_in_place(|| run_plan(&fetch_plan, &fsets, &state));
    assert_eq!(
        resumed.code, 0,
        "resumed fetch: {}\n{}",
        resumed.stdout, resumed.stderr
    );
    let out = &step(&resumed, "fetch")["outputs"];
    assert!(
        out["reused_files"].as_u64().unwrap_or(0) > 0,
        "the second run kept the files the first one fetched: {out}"
    );
    assert!(
        to.join("stagehand.json").exists(),
        "the fetched backup is complete"
    );
    // Every fetched object is the uploaded one.
    for f in &files {
        let path = f["stored"]["path"]
            .as_str()
            .or(f["path"].as_str())
            .unwrap_or_default();
        assert!(to.join(path).exists(), "{path} fetched");
    }
}

const CHECK_PLAN: &str = r#"
version: 1
name: check-test
params:
  repository: {type: string, required: true}
  endpoint: {type: string, required: true}
steps:
  - id: upload
    uses: upload
    with:
      dir: /nonexistent
      id: b1
      repository:
        url: "{{params.repository}}"
        endpoint: "{{params.endpoint}}"
        path_style: true
        access_key_id: testing
        secret_access_key: testing
        max_attempts: 2
"#;

/// `--check` of an upload writes, lists the multipart uploads under, and deletes a
/// probe object: a read-only key, a server without ListMultipartUploads (every upload
/// needs it) or a key that cannot delete fail the check, and a good repository keeps
/// no probe object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_finds_a_read_only_key_and_a_server_without_multipart() {
    let moto = MotoServer::shared();
    let bucket = unique_bucket("check");
    moto.create_bucket(&bucket).await.expect("bucket");
    let proxy = FaultProxy::start(moto.addr()).await.expect("proxy");
    let work = tempfile::tempdir().expect("tempdir");
    let plan = write_plan(work.path(), "check", CHECK_PLAN);
    let plan = plan.display().to_string();
    let sets = [
        "--set".to_string(),
        format!("repository=s3://{bucket}/db"),
        "--set".to_string(),
        format!("endpoint={}", proxy.endpoint()),
    ];
    let check = || {
        let mut args = vec!["run", plan.as_str(), "--check"];
        args.extend(sets.iter().map(String::as_str));
        stagehand_env(&args, ENV)
    };
    let good = tokio::task::block_in_place(check);
    assert_eq!(good.code, 0, "{}\n{}", good.stdout, good.stderr);
    assert!(good.stdout.contains("writable"), "{}", good.stdout);
    assert!(
        keys_under(moto, &bucket, "db/").await.is_empty(),
        "the probe object is deleted"
    );
    for (rule, says) in [
        (
            Rule::op("PutObject").status(403, "AccessDenied"),
            "cannot write (is the key read-only?)",
        ),
        (
            Rule::op("ListMultipartUploads").status(501, "NotImplemented"),
            "multipart uploads cannot be listed",
        ),
        (
            Rule::op("DeleteObjects").status(403, "AccessDenied"),
            "cannot delete",
        ),
    ] {
        proxy.clear_rules();
        proxy.add(rule);
        let bad = tokio::task::block_in_place(check);
        let out = format!("{}{}", bad.stdout, bad.stderr);
        assert_ne!(bad.code, 0, "{out}");
        assert!(out.contains(says), "`{says}` in:\n{out}");
    }
}

/// Without credentials, or with the endpoint unreachable, the error is one short line
/// saying what is wrong, not kilobytes of SDK debug structures; missing credentials are
/// not retried.
#[test]
fn no_credentials_and_a_dead_endpoint_give_one_clear_line() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let r = crate::cli::stagehand_env(
        &[
            "backups",
            "list",
            "s3://bucket/db",
            "--endpoint",
            &endpoint,
            "--path-style",
        ],
        &[
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
            ("AWS_CONFIG_FILE", "/nonexistent"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
        ],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no S3 credentials found"), "{}", r.stderr);
    assert!(r.stderr.contains("not retried"), "{}", r.stderr);
    assert!(
        r.stderr.len() < 1000,
        "{} bytes:\n{}",
        r.stderr.len(),
        r.stderr
    );

    let work = tempfile::tempdir().expect("tempdir");
    let plan = write_plan(
        work.path(),
        "dead",
        &CHECK_PLAN.replace("max_attempts: 2", "max_attempts: 2\n        retry_for: 1s"),
    );
    let plan = plan.display().to_string();
    let repository = "repository=s3://bucket/db".to_string();
    let endpoint = format!("endpoint={endpoint}");
    let r = stagehand_env(
        &[
            "run",
            &plan,
            "--check",
            "--set",
            &repository,
            "--set",
            &endpoint,
        ],
        ENV,
    );
    assert_ne!(r.code, 0);
    let out = format!("{}{}", r.stdout, r.stderr);
    assert!(out.contains("Connection refused"), "{out}");
    for noise in ["DispatchFailure(", "ConnectorError {", "SdkBody"] {
        assert!(!out.contains(noise), "`{noise}` in:\n{out}");
    }
}
