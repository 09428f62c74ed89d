//! The storage pipeline end to end, with real parts: a hot backup under a concurrent
//! workload streamed by plans/backup-to-s3.yaml (copy → zstd → multipart upload) to a
//! real S3 server (moto) through a proxy that injects 503s and connection resets; the
//! repository listed; plans/restore.yaml (fetch, decompressing → prepare →
//! copy_back → server → check); and the restored data checked by the workload oracle
//! at the backup's GTID. Plus: a corrupted object is caught by fetch.

use crate::cli::{stagehand_env, Run};
use crate::support::{
    assert_no_multipart_uploads, files_in, keys_under, report_of, set_args, step,
};
use crate::workload::{create_schema, domain0_seq_no, verify, Workload, WorkloadOptions};
use mysql_async::prelude::Queryable;
use serde_json::Value;
use stagehand_mariadb::sandbox::{SandboxOptions, SandboxServer};
use stagehand_testkit::s3::{unique_bucket, FaultProxy, MotoServer, Rule};
use stagehand_testkit::TestServer;
use std::path::Path;
use std::time::{Duration, Instant};

pub(crate) const KEYS: &[(&str, &str)] = &[
    ("STAGEHAND_S3_ACCESS_KEY_ID", "testing-key"),
    (
        "STAGEHAND_S3_SECRET_ACCESS_KEY",
        "testing-secret-do-not-print",
    ),
    // Short backoff so injected faults cost milliseconds.
    ("STAGEHAND_S3_RETRY_BASE_MS", "20"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// The same for Garage's default key.
const GARAGE_KEYS: &[(&str, &str)] = &[
    (
        "STAGEHAND_S3_ACCESS_KEY_ID",
        stagehand_testkit::garage::GARAGE_ACCESS_KEY,
    ),
    (
        "STAGEHAND_S3_SECRET_ACCESS_KEY",
        stagehand_testkit::garage::GARAGE_SECRET_KEY,
    ),
    ("STAGEHAND_S3_RETRY_BASE_MS", "20"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

pub(crate) fn run(args: &[String]) -> Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    stagehand_env(&args, KEYS)
}

pub(crate) fn light() -> WorkloadOptions {
    WorkloadOptions {
        clients: 2,
        accounts: 5_000,
        ..WorkloadOptions::default()
    }
}

/// moto with a new bucket (named after `tag`), and a fault proxy in front of it.
async fn moto_behind_proxy(tag: &str) -> (&'static MotoServer, String, FaultProxy) {
    let moto = MotoServer::shared();
    let bucket = unique_bucket(tag);
    moto.create_bucket(&bucket).await.expect("create bucket");
    let proxy = FaultProxy::start(moto.addr()).await.expect("fault proxy");
    (moto, bucket, proxy)
}

/// A server with the binary log on, the workload's schema, and the workload running
/// (200 commits in).
pub(crate) async fn busy_server(name: &str) -> (TestServer, Workload) {
    let server = TestServer::builder()
        .name(name)
        .option("log-bin", Some("binlog"))
        .option("server-id", Some("1"))
        .start()
        .await;
    let mut conn = server.conn().await;
    create_schema(&mut conn, &light()).await;
    let workload = Workload::start(server.opts(), &light());
    workload
        .wait_for_commits(200, Duration::from_secs(30))
        .await;
    (server, workload)
}

/// Streams a backup of `server` with plans/backup-to-s3.yaml.
fn backup_to(repository: &str, endpoint: &str, server: &TestServer, work: &Path) -> Run {
    run(&backup_args(repository, endpoint, server, work))
}

/// `stagehand run plans/backup-to-s3.yaml …` of `server`, spool and state under `work`.
pub(crate) fn backup_args(
    repository: &str,
    endpoint: &str,
    server: &TestServer,
    work: &Path,
) -> Vec<String> {
    let mut args = vec!["run".to_string(), "plans/backup-to-s3.yaml".to_string()];
    args.extend(set_args(&[
        ("socket", server.socket().display().to_string()),
        ("datadir", server.datadir().display().to_string()),
        ("repository", repository.to_string()),
        ("endpoint", endpoint.to_string()),
        ("path_style", "true".into()),
        ("spool", work.join("spool").display().to_string()),
        // Small, so the copy really waits for the upload.
        ("max_spool", "4MiB".into()),
    ]));
    args.extend([
        "--state-dir".into(),
        work.join("state").display().to_string(),
        "--json".into(),
    ]);
    args
}

fn restore_from(repository: &str, endpoint: &str, work: &Path, tag: &str) -> Run {
    run(&restore_args(repository, endpoint, work, tag))
}

/// `stagehand run plans/restore.yaml …` into `<work>/datadir-<tag>`.
pub(crate) fn restore_args(
    repository: &str,
    endpoint: &str,
    work: &Path,
    tag: &str,
) -> Vec<String> {
    let mut args = vec!["run".to_string(), "plans/restore.yaml".to_string()];
    // Unix socket paths are limited to 107 bytes: keep it short (the tempdir is). The
    // server step creates its directory, private.
    let socket = work.join(format!("s-{tag}/c.sock")).display().to_string();
    args.extend(set_args(&[
        ("repository", repository.to_string()),
        ("endpoint", endpoint.to_string()),
        ("path_style", "true".into()),
        (
            "workdir",
            work.join(format!("fetched-{tag}")).display().to_string(),
        ),
        (
            "datadir",
            work.join(format!("datadir-{tag}")).display().to_string(),
        ),
        ("check_socket", socket),
    ]));
    args.extend([
        "--state-dir".into(),
        work.join("state").display().to_string(),
        "--json".into(),
    ]);
    args
}

/// The run exited 1 (`why`), its step `id` failed: that step.
pub(crate) fn failed_step(r: &Run, id: &str, why: &str) -> Value {
    assert_eq!(r.code, 1, "{why}: {}", r.stdout);
    let report = report_of(&r.stdout);
    let failed = step(&report, id).clone();
    assert_eq!(failed["status"], "failed");
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_backup_to_s3_restores_exactly_up_to_its_gtid() {
    let (moto, bucket, proxy) = moto_behind_proxy("roundtrip").await;
    // Transient faults on the way up: the upload must ride through them.
    // (The files of this small server are all below the part size, so they go as
    // single PutObjects; multipart faults are tested in steps/tests/s3_store.rs.)
    proxy.add(Rule::op("PutObject").reset().times(2));
    proxy.add(Rule::op("PutObject").status(503, "SlowDown").times(2));
    let repository = format!("s3://{bucket}/db1");

    let (server, workload) = busy_server("s3-roundtrip").await;
    let opts = light();
    let work = tempfile::tempdir().expect("tempdir");

    let t0 = Instant::now();
    let work_path = work.path().to_path_buf();
    let (repo2, endpoint) = (repository.clone(), proxy.endpoint());
    let backup = {
        let server_socket = server.socket().to_path_buf();
        let datadir = server.datadir().to_path_buf();
        let _ = (&server_socket, &datadir);
        let s = &server;
        // The CLI blocks: run it off the runtime's workers so the workload goes on.
        tokio::task::block_in_place(|| backup_to(&repo2, &endpoint, s, &work_path))
    };
    let backup_secs = t0.elapsed().as_secs_f64();
    let log = workload.stop().await;
    assert_eq!(
        backup.code, 0,
        "backup-to-s3 failed\nstdout: {}\nstderr: {}",
        backup.stdout, backup.stderr
    );
    let report = report_of(&backup.stdout);
    let ship = &step(&report, "ship")["outputs"];
    let id = ship["id"]
        .as_str()
        .expect("the upload names the backup")
        .to_string();
    assert!(
        !work.path().join("spool").exists(),
        "the spool directory is removed once the backup is in the repository"
    );
    let faults = proxy.seen().iter().filter(|s| s.fault.is_some()).count();
    assert!(faults >= 4, "the proxy injected its faults (saw {faults})");
    let secret = "testing-secret-do-not-print";
    assert!(
        !backup.stdout.contains(secret) && !backup.stderr.contains(secret),
        "a secret leaked into the backup's output"
    );

    // The repository lists it, complete, with the GTID of its commit point.
    let listed = run(&[
        "backups".into(),
        "list".into(),
        repository.clone(),
        "--endpoint".into(),
        moto.endpoint(),
        "--path-style".into(),
        "--json".into(),
    ]);
    assert_eq!(listed.code, 0, "backups list: {}", listed.stderr);
    let rows: Value = serde_json::from_str(&listed.stdout).expect("backups list --json");
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|b| b["id"] == id.as_str()))
        .unwrap_or_else(|| panic!("backup {id} not listed: {rows}"));
    assert_eq!(row["complete"], true);
    let gtid = row["gtid_binlog_pos"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let upto = domain0_seq_no(&gtid);
    assert!(upto > 0, "the listed backup has a GTID: {row}");
    assert!(
        row["stored_bytes"].as_u64() < row["data_bytes"].as_u64(),
        "objects are compressed: {row}"
    );
    // No multipart upload was left behind.
    assert_no_multipart_uploads(moto, &bucket).await;

    // Restore through the same faulty proxy, then check the data at the GTID.
    proxy.add(Rule::op("GetObject").reset().times(2));
    let restored = tokio::task::block_in_place(|| {
        restore_from(&repository, &proxy.endpoint(), work.path(), "a")
    });
    assert_eq!(
        restored.code, 0,
        "restore failed\nstdout: {}\nstderr: {}",
        restored.stdout, restored.stderr
    );
    let rreport = report_of(&restored.stdout);
    assert_eq!(step(&rreport, "fetch")["outputs"]["id"], id.as_str());
    assert_eq!(
        step(&rreport, "prepare")["outputs"]["checked_bytes"],
        0,
        "prepare does not read again what the fetch checked as it wrote it"
    );
    assert_eq!(step(&rreport, "check")["status"], "succeeded");
    eprintln!(
        "[s3-roundtrip] backup {backup_secs:.1}s (id {id}, GTID {gtid}, {faults} faults injected)"
    );
    assert_restored_exactly(
        &work.path().join("datadir-a"),
        work.path(),
        &log,
        &opts,
        &gtid,
    )
    .await;
}

/// Starts a server on a restored datadir and checks its data against the workload's
/// commits up to `gtid` (domain 0).
pub(crate) async fn assert_restored_exactly(
    datadir: &Path,
    work: &Path,
    log: &crate::workload::WorkloadLog,
    opts: &WorkloadOptions,
    gtid: &str,
) {
    let sandbox = SandboxServer::start(
        SandboxOptions::new(datadir, work.join("run-check")).option("skip-log-bin", None),
    )
    .await
    .expect("a server starts on the restored datadir");
    let mut rconn = mysql_async::Conn::new(sandbox.admin_opts())
        .await
        .expect("connect to the restored server");
    let oracle = verify(&mut rconn, log, opts, domain0_seq_no(gtid)).await;
    eprintln!(
        "[s3-roundtrip] restored at GTID {gtid}: {} transfers, {} ledger rows, sum {}",
        oracle.expected_transfers, oracle.ledger_rows, oracle.sum_balance
    );
    assert!(
        oracle.violations.is_empty(),
        "the restored data is not the data at GTID {gtid}:\n{}",
        oracle.violations.join("\n")
    );
    drop(rconn);
    let _ = sandbox
        .shutdown(stagehand_mariadb::sandbox::ShutdownMode::Fast)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupted_object_in_a_local_repository_is_caught_by_fetch() {
    let server = TestServer::builder().name("corrupt-object").start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let repo_dir = work.path().join("repo");
    let repository = repo_dir.display().to_string();
    let backup = tokio::task::block_in_place(|| backup_to(&repository, "", &server, work.path()));
    assert_eq!(
        backup.code, 0,
        "backup failed: {}\n{}",
        backup.stdout, backup.stderr
    );
    let id = step(&report_of(&backup.stdout), "ship")["outputs"]["id"]
        .as_str()
        .expect("backup id")
        .to_string();
    // Flip one byte in the middle of the largest object.
    let victim = crate::support::largest_object(&repo_dir.join(&id), "zst");
    crate::support::flip_a_middle_byte(&victim);

    let restored = tokio::task::block_in_place(|| restore_from(&repository, "", work.path(), "b"));
    let fetch = failed_step(&restored, "fetch", "a corrupt object must fail the restore");
    crate::support::assert_names_corrupt_object(
        fetch["error"].as_str().unwrap_or_default(),
        &victim,
    );
    assert!(
        !work
            .path()
            .join("fetched-b")
            .join("stagehand.json")
            .exists(),
        "a failed fetch leaves no manifest"
    );
    assert!(
        !work.path().join("datadir-b").exists()
            || std::fs::read_dir(work.path().join("datadir-b"))
                .map(|mut d| d.next().is_none())
                .unwrap_or(true),
        "nothing was copied back"
    );
}

/// A restore killed after its fetch had finished (here: a plan that only fetches, as
/// the restore plan does)
/// leaves a complete fetched backup in the workdir; running the restore plan again
/// must carry on from there, not refuse the workdir.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_rerun_after_its_fetch_finished_carries_on() {
    let (_server, work, repository) = backed_up_into_a_local_repository("refetch").await;
    fetch_only(&repository, work.path(), "c");

    let rerun = tokio::task::block_in_place(|| restore_from(&repository, "", work.path(), "c"));
    assert_eq!(
        rerun.code, 0,
        "the rerun carries on\nstdout: {}\nstderr: {}",
        rerun.stdout, rerun.stderr
    );
    let report = report_of(&rerun.stdout);
    assert_eq!(
        step(&report, "fetch")["outputs"]["bytes"],
        0,
        "nothing downloaded again"
    );
    assert!(
        step(&report, "prepare")["outputs"]["checked_bytes"]
            .as_u64()
            .is_some_and(|b| b > 0),
        "a check of an earlier run is not trusted: prepare reads the files again"
    );
    assert_eq!(step(&report, "check")["status"], "succeeded");
}

/// Runs a plan with only a decompressing fetch of the latest backup of a local
/// `repository` into `<work>/fetched-<tag>`.
fn fetch_only(repository: &str, work: &Path, tag: &str) {
    let fetched = work.join(format!("fetched-{tag}"));
    let plan = work.join(format!("fetch-only-{tag}.yaml"));
    std::fs::write(
        &plan,
        format!(
            "version: 1\nname: fetch-only\nsteps:\n  - id: fetch\n    uses: fetch\n    with: {{id: latest, to: \"{}\", decompress: true, repository: {{url: \"{repository}\"}}}}\n",
            fetched.display()
        ),
    )
    .expect("write plan");
    let r = run_plan_file(work, &plan);
    assert_eq!(r.code, 0, "the fetch: {}\n{}", r.stdout, r.stderr);
    assert!(
        fetched.join("stagehand.json").exists(),
        "the fetch finished"
    );
}

/// `stagehand run <plan> --json` with the state under `work`.
fn run_plan_file(work: &Path, plan: &Path) -> Run {
    tokio::task::block_in_place(|| {
        run(&[
            "run".into(),
            plan.display().to_string(),
            "--json".into(),
            "--state-dir".into(),
            work.join("state").display().to_string(),
        ])
    })
}

/// A fresh server named `name` backed up into a local repository under a new work
/// directory; the server (kept running), the work directory and the repository.
async fn backed_up_into_a_local_repository(name: &str) -> (TestServer, tempfile::TempDir, String) {
    let server = TestServer::builder().name(name).start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let repository = work.path().join("repo").display().to_string();
    let backup = tokio::task::block_in_place(|| backup_to(&repository, "", &server, work.path()));
    assert_eq!(
        backup.code, 0,
        "backup: {}\n{}",
        backup.stdout, backup.stderr
    );
    (server, work, repository)
}

/// In one run, fetch → a change to one file → prepare: prepare does not read again the
/// files the fetch checked, but a file changed since (one byte, with its modification
/// time put back) is read again and refused before anything is prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prepare_reads_again_a_file_changed_after_the_fetch_of_its_run() {
    let (_server, work, repository) = backed_up_into_a_local_repository("tampered").await;

    // Flips one byte of page 3 of ibdata1 ($1) and puts its modification time back.
    let flip = work.path().join("flip.sh");
    std::fs::write(
        &flip,
        "f=\"$1/ibdata1\"\nt=$(stat -c %y \"$f\")\nprintf '\\377' | dd of=\"$f\" bs=1 seek=49252 conv=notrunc status=none\ntouch -d \"$t\" \"$f\"\n",
    )
    .expect("write script");
    let run_plan = |tag: &str, between: &str| {
        let dir = work.path().join(format!("fetched-{tag}"));
        let plan = work.path().join(format!("{tag}.yaml"));
        let between = between.replace("DIR", &dir.display().to_string());
        std::fs::write(
            &plan,
            format!(
                "version: 1\nname: {tag}\nsteps:\n  - id: fetch\n    uses: fetch\n    with: {{id: latest, to: \"{d}\", decompress: true, repository: {{url: \"{repository}\"}}}}\n  - id: between\n    uses: exec\n    needs: [fetch]\n    with: {{command: {between}}}\n  - id: prepare\n    uses: prepare\n    needs: [between]\n    with: {{target: \"{d}\"}}\n",
                d = dir.display()
            ),
        )
        .expect("write plan");
        (dir, run_plan_file(work.path(), &plan))
    };

    // Untouched: nothing read again.
    let (dir, clean) = run_plan("clean", "[\"true\"]");
    assert_eq!(clean.code, 0, "{}\n{}", clean.stdout, clean.stderr);
    let prepared = step(&report_of(&clean.stdout), "prepare")["outputs"].clone();
    assert_eq!(prepared["checked_bytes"], 0, "{prepared}");
    assert!(dir.join("stagehand.json").exists());

    let (dir, tampered) = run_plan(
        "tampered",
        &format!("[sh, \"{}\", \"DIR\"]", flip.display()),
    );
    let failed = failed_step(&tampered, "prepare", "a changed file must stop the prepare");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refusing to prepare") && error.contains("ibdata1"),
        "names the changed file: {error}"
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("stagehand.json")).expect("manifest"),
    )
    .expect("json");
    assert!(manifest.get("prepared").is_none(), "nothing was prepared");
}

/// A tmpfs of `size` mounted on `dir` for the test's lifetime.
pub(crate) struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    pub(crate) fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill a disk and needs root (CI runs as root; run `sudo -E cargo test --test it disk_full`): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_full_in_the_repository_fails_clearly_and_leaves_nothing_complete() {
    let server = TestServer::builder().name("disk-full").start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let repo_dir = work.path().join("small-repo");
    let _disk = SmallDisk::mount(&repo_dir, "256k");
    let repository = repo_dir.display().to_string();
    let backup = tokio::task::block_in_place(|| backup_to(&repository, "", &server, work.path()));
    let ship = failed_step(&backup, "ship", "a full repository must fail the backup");
    let error = ship["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("No space left on device"),
        "the error says the disk is full: {error}"
    );
    assert!(
        ship["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("run the plan again")
            || error.contains("no manifest")
            || backup.stderr.contains("no manifest"),
        "the failure says what to do next: {ship}"
    );
    let left = files_in(&repo_dir);
    assert!(
        left.iter().all(|p| !p.ends_with("stagehand.json")),
        "nothing in the repository looks complete: {left:?}"
    );
    assert!(
        left.iter()
            .all(|p| !p.to_string_lossy().ends_with(".stagehand-partial")),
        "no partial object is left: {left:?}"
    );
    assert_eq!(
        step(&report_of(&backup.stdout), "lock_end")["status"],
        "succeeded",
        "locks were released"
    );
}

/// kill -9 of a streamed backup after its seal, while the upload still sends (the
/// manifest's PUT is held back): the spool holds a sealed manifest and what was not
/// shipped yet. The next scheduled run reclaims that spool by itself (its run is gone)
/// and makes a complete backup; the repository never listed the killed one as complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_backup_killed_after_its_seal_does_not_block_the_next_run() {
    let (moto, bucket, proxy) = moto_behind_proxy("killed-spool").await;
    proxy.add(
        Rule::op("PutObject")
            .target_contains("stagehand.json")
            .stall(Duration::from_secs(120)),
    );
    let repository = format!("s3://{bucket}/db1");
    let server = TestServer::builder()
        .name("s3-killed-spool")
        .option("log-bin", Some("binlog"))
        .option("server-id", Some("1"))
        .start()
        .await;
    let work = tempfile::tempdir().expect("tempdir");
    let spool = work.path().join("spool");
    let state = work.path().join("state");
    let args = backup_args(&repository, &proxy.endpoint(), &server, work.path());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(&args)
        .current_dir(crate::cli::repo_root())
        .env_remove("STAGEHAND_LOG")
        .envs(KEYS.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start stagehand");
    let t0 = Instant::now();
    while !crate::support::journal_in(&state)
        .iter()
        .any(|e| e["event"] == "step_finished" && e["step"] == "seal")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "seal never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The upload is now stuck on the manifest: kill -9.
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.start_kill().expect("kill");
    let _ = child.wait().await;
    assert!(
        spool.join("stagehand.json").exists(),
        "the killed run left its sealed spool"
    );
    proxy.clear_rules();
    let again = tokio::task::block_in_place(|| {
        backup_to(&repository, &proxy.endpoint(), &server, work.path())
    });
    assert_eq!(
        again.code, 0,
        "the next run reclaims the spool and backs up\nstdout: {}\nstderr: {}",
        again.stdout, again.stderr
    );
    assert!(
        again.stderr.contains("was interrupted"),
        "the reclaim is logged: {}",
        again.stderr
    );
    assert_eq!(
        complete_backups(&repository, moto),
        1,
        "only the second run's backup is complete"
    );
}

/// Starts plans/backup-to-s3.yaml of `server` in the background (spool and state under
/// `work`); killed if the test ends first.
fn spawn_backup_to(
    repository: &str,
    endpoint: &str,
    server: &TestServer,
    work: &Path,
) -> tokio::process::Child {
    spawn_stagehand(backup_args(repository, endpoint, server, work), KEYS)
}

/// Starts stagehand with `args` and `env` in the background; killed if the test ends
/// first.
fn spawn_stagehand(args: Vec<String>, env: &[(&str, &str)]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(args)
        .current_dir(crate::cli::repo_root())
        .env_remove("STAGEHAND_LOG")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start stagehand")
}

/// Waits up to `limit` for `done`, polling every 50 ms; panics with `what` when it
/// never holds.
async fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits up to 5 minutes for a background run: (exit code, stdout, stderr).
async fn finish(child: tokio::process::Child) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("the run ends within 5 minutes")
        .expect("wait for stagehand");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// How many backups `repository` lists as complete (read straight from moto).
fn complete_backups(repository: &str, moto: &MotoServer) -> usize {
    let listed = run(&[
        "backups".into(),
        "list".into(),
        repository.to_string(),
        "--endpoint".into(),
        moto.endpoint(),
        "--path-style".into(),
        "--json".into(),
    ]);
    let rows: Value = serde_json::from_str(&listed.stdout).expect("backups list --json");
    rows.as_array()
        .map(|r| r.iter().filter(|b| b["complete"] == true).count())
        .unwrap_or(0)
}

/// Requests the proxy answered with a fault, whatever their operation.
fn faults(proxy: &FaultProxy) -> usize {
    proxy.seen().iter().filter(|s| s.fault.is_some()).count()
}

/// The S3 endpoint goes down (every connection reset) for 1 s, 10 s and then 60 s
/// while a streamed backup uploads, as when it restarts or fails over. Each backup rides
/// the outage out within its retry budget (`retry_for`, 2 minutes in the shipped plan)
/// and completes; the repository lists all three complete and the last one restores
/// and starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_backups_ride_out_endpoint_outages_of_1_10_and_60_seconds() {
    let (moto, bucket, proxy) = moto_behind_proxy("outage").await;
    let repository = format!("s3://{bucket}/db1");
    let (server, workload) = busy_server("s3-outage").await;
    let work = tempfile::tempdir().expect("tempdir");
    let args = |dir: &Path| backup_args(&repository, &proxy.endpoint(), &server, dir);
    ride_out_outages(&proxy, work.path(), &[1, 10, 60], args, KEYS).await;
    let _ = workload.stop().await;
    assert_eq!(complete_backups(&repository, moto), 3);
    let restored = tokio::task::block_in_place(|| {
        restore_from(&repository, &moto.endpoint(), work.path(), "o")
    });
    assert_eq!(
        restored.code, 0,
        "the last backup restores\nstdout: {}\nstderr: {}",
        restored.stdout, restored.stderr
    );
}

/// Streams one backup per outage (`args` for its work directory) through `proxy`, which
/// resets every connection for that many seconds once the upload has started; each
/// backup must complete.
async fn ride_out_outages(
    proxy: &FaultProxy,
    work: &Path,
    outages: &[u64],
    args: impl Fn(&Path) -> Vec<String>,
    env: &[(&str, &str)],
) {
    for &outage in outages {
        proxy.reset_counts();
        let child = spawn_stagehand(args(&work.join(format!("outage-{outage}"))), env);
        wait_until("the upload starts", Duration::from_secs(120), || {
            proxy.count("PutObject") + proxy.count("UploadPart") > 0
        })
        .await;
        proxy.add(Rule::any().reset());
        tokio::time::sleep(Duration::from_secs(outage)).await;
        proxy.clear_rules();
        let faulted = faults(proxy);
        let (code, stdout, stderr) = finish(child).await;
        assert_eq!(
            code, 0,
            "the backup rides out a {outage} s outage ({faulted} requests reset)\nstdout: {stdout}\nstderr: {stderr}"
        );
        assert!(faulted > 0, "the {outage} s outage reset no request");
        eprintln!("[s3-outage] {outage} s outage: {faulted} requests reset, backup complete");
    }
}

/// The same outages of 1 and 10 s with Garage, a production S3 server, behind the
/// proxy: both backups complete and Garage holds their manifests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_backups_to_garage_ride_out_endpoint_outages() {
    use stagehand_testkit::garage::{GarageServer, GARAGE_REGION};
    let garage = GarageServer::shared();
    let bucket = unique_bucket("garage-outage");
    garage.create_bucket(&bucket).await.expect("create bucket");
    let proxy = FaultProxy::start(garage.addr()).await.expect("fault proxy");
    let repository = format!("s3://{bucket}/db1");
    let (server, workload) = busy_server("garage-outage").await;
    let work = tempfile::tempdir().expect("tempdir");
    let args = |dir: &Path| {
        let mut a = backup_args(&repository, &proxy.endpoint(), &server, dir);
        a.extend(set_args(&[("region", GARAGE_REGION.to_string())]));
        a
    };
    ride_out_outages(&proxy, work.path(), &[1, 10], args, GARAGE_KEYS).await;
    let _ = workload.stop().await;
    let client = garage.client();
    let listed = client
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("db1/")
        .send()
        .await
        .expect("ListObjectsV2");
    let manifests = listed
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .filter(|k| k.ends_with("/stagehand.json"))
        .count();
    assert_eq!(manifests, 2, "both backups completed on Garage");
}

/// The backup locks are gone: a DDL statement and a commit go through at once.
async fn assert_no_backup_lock(server: &TestServer) {
    let mut conn = server.conn().await;
    conn.query_drop("SET SESSION lock_wait_timeout = 5")
        .await
        .expect("lock_wait_timeout");
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS bank.after_interrupt (id INT PRIMARY KEY) ENGINE=InnoDB",
    )
    .await
    .expect("DDL runs: no backup lock is left");
    conn.query_drop("REPLACE INTO bank.after_interrupt VALUES (1)")
        .await
        .expect("commits run: no backup lock is left");
}

/// A streamed backup stopped in the middle of its upload — SIGINT (Ctrl-C, `systemctl
/// stop`) and then kill -9 (OOM killer, reboot) — leaves no backup that looks complete
/// and no lock on the server; after SIGINT it also removed what it had uploaded. The
/// next scheduled run, with the same spool and state directories, completes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_backup_stopped_mid_upload_does_not_block_the_next_run() {
    let (moto, bucket, proxy) = moto_behind_proxy("stopped").await;
    let repository = format!("s3://{bucket}/db1");
    let (server, workload) = busy_server("s3-stopped").await;
    let work = tempfile::tempdir().expect("tempdir");
    for signal in ["INT", "KILL"] {
        let name = format!("SIG{signal}");
        proxy.reset_counts();
        let child = spawn_backup_to(&repository, &proxy.endpoint(), &server, work.path());
        // Objects arrive, then every upload request hangs (none is forwarded, so none
        // can land after the run has cleaned up): the run is caught in the middle of its
        // upload, with objects to remove.
        wait_until("an object is uploaded", Duration::from_secs(120), || {
            proxy
                .seen()
                .iter()
                .any(|s| s.method == "PUT" && s.fault.is_none())
        })
        .await;
        proxy.add(Rule::any().method("PUT").stall(Duration::from_secs(300)));
        wait_until("an upload request hangs", Duration::from_secs(120), || {
            faults(&proxy) > 0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal}");
        let (code, stdout, stderr) = finish(child).await;
        proxy.clear_rules();
        match signal {
            "INT" => assert_eq!(code, 130, "{name}: exit 130\n{stdout}\n{stderr}"),
            _ => assert_eq!(code, -1, "{name}: killed"),
        }
        assert_eq!(
            complete_backups(&repository, moto),
            0,
            "{name}: nothing looks complete"
        );
        if signal == "INT" {
            let left = keys_under(moto, &bucket, "db1/").await;
            assert!(
                left.is_empty(),
                "{name}: the interrupted run removed what it uploaded, not {left:?}\n{stderr}"
            );
            assert_no_multipart_uploads(moto, &bucket).await;
        }
        assert_no_backup_lock(&server).await;
        let again = tokio::task::block_in_place(|| {
            backup_to(&repository, &proxy.endpoint(), &server, work.path())
        });
        assert_eq!(
            again.code, 0,
            "{name}: the next run completes\nstdout: {}\nstderr: {}",
            again.stdout, again.stderr
        );
        // Its own backup only: the next round starts from an empty bucket again.
        assert_eq!(complete_backups(&repository, moto), 1, "{name}");
        for key in keys_under(moto, &bucket, "db1/").await {
            moto.client()
                .delete_object()
                .bucket(&bucket)
                .key(key)
                .send()
                .await
                .expect("DeleteObject");
        }
    }
    let _ = workload.stop().await;
}

/// A streamed backup to a bucket that does not exist fails on its first request with
/// one line that names the bucket, not that request (a manifest's DeleteObjects), before
/// anything is copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_bucket_is_named_in_one_line_before_anything_is_copied() {
    let moto = MotoServer::shared();
    let bucket = unique_bucket("never-created");
    let repository = format!("s3://{bucket}/db1");
    let server = TestServer::builder()
        .name("s3-nobucket")
        .option("log-bin", Some("binlog"))
        .option("server-id", Some("1"))
        .start()
        .await;
    let work = tempfile::tempdir().expect("tempdir");
    let r = tokio::task::block_in_place(|| {
        backup_to(&repository, &moto.endpoint(), &server, work.path())
    });
    let ship = failed_step(&r, "ship", "a missing bucket fails the backup");
    let error = ship["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(&format!("S3 bucket `{bucket}` does not exist")),
        "{error}"
    );
    for noise in ["DeleteObjects", "stagehand.json", "attempt"] {
        assert!(!error.contains(noise), "`{noise}` in: {error}");
    }
    let report = report_of(&r.stdout);
    assert_eq!(step(&report, "copy_innodb")["status"], "skipped");
    assert!(
        files_in(&work.path().join("spool")).is_empty(),
        "nothing is left in the spool"
    );
}

/// The streamed round trip against Garage, a production S3 server (not moto): a hot
/// backup under a workload streamed by plans/backup-to-s3.yaml, listed complete with its
/// GTID, no multipart upload left, restored by plans/restore.yaml and checked by the
/// workload oracle at that GTID.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_backup_to_garage_restores_exactly_up_to_its_gtid() {
    use stagehand_testkit::garage::{GarageServer, GARAGE_REGION};
    let garage = GarageServer::shared();
    let bucket = unique_bucket("garage");
    garage.create_bucket(&bucket).await.expect("create bucket");
    let repository = format!("s3://{bucket}/db1");
    let with_keys = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stagehand_env(&args, GARAGE_KEYS)
    };
    // Plans sign for Garage's region (its `s3_region`).
    let in_region = |mut args: Vec<String>| {
        args.extend(set_args(&[("region", GARAGE_REGION.to_string())]));
        with_keys(args)
    };
    let (server, workload) = busy_server("garage-roundtrip").await;
    let opts = light();
    let work = tempfile::tempdir().expect("tempdir");
    let backup = tokio::task::block_in_place(|| {
        in_region(backup_args(
            &repository,
            &garage.endpoint(),
            &server,
            work.path(),
        ))
    });
    let log = workload.stop().await;
    assert_eq!(
        backup.code, 0,
        "backup-to-s3 on Garage failed\nstdout: {}\nstderr: {}",
        backup.stdout, backup.stderr
    );
    let id = step(&report_of(&backup.stdout), "ship")["outputs"]["id"]
        .as_str()
        .expect("the upload names the backup")
        .to_string();

    let listed = with_keys(vec![
        "backups".into(),
        "list".into(),
        repository.clone(),
        "--endpoint".into(),
        garage.endpoint(),
        "--path-style".into(),
        "--region".into(),
        GARAGE_REGION.into(),
        "--json".into(),
    ]);
    assert_eq!(listed.code, 0, "backups list: {}", listed.stderr);
    let rows: Value = serde_json::from_str(&listed.stdout).expect("backups list --json");
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|b| b["id"] == id.as_str()))
        .unwrap_or_else(|| panic!("backup {id} not listed: {rows}"));
    assert_eq!(row["complete"], true, "{row}");
    let gtid = row["gtid_binlog_pos"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        domain0_seq_no(&gtid) > 0,
        "the listed backup has a GTID: {row}"
    );
    let uploads = garage
        .client()
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .expect("ListMultipartUploads");
    assert!(uploads.uploads().is_empty(), "{uploads:?}");

    let restored = tokio::task::block_in_place(|| {
        in_region(restore_args(
            &repository,
            &garage.endpoint(),
            work.path(),
            "g",
        ))
    });
    assert_eq!(
        restored.code, 0,
        "restore from Garage failed\nstdout: {}\nstderr: {}",
        restored.stdout, restored.stderr
    );
    assert_eq!(
        step(&report_of(&restored.stdout), "check")["status"],
        "succeeded"
    );
    assert_restored_exactly(
        &work.path().join("datadir-g"),
        work.path(),
        &log,
        &opts,
        &gtid,
    )
    .await;
}
