//! Client-side encryption of a repository, end to end with real parts: a hot backup
//! under a workload streamed by plans/backup-to-s3.yaml with `encrypt=true` to a real
//! S3 server (moto), restored by plans/restore.yaml with the key and checked by the
//! workload oracle at the backup's GTID; no object in the bucket holds a known row.
//! A local repository: `backups show` and `verify` without the key, a wrong or missing
//! key refused before anything is written, a tampered object or manifest caught.

use crate::cli::{stagehand_env, Run};
use crate::storage_roundtrip::{
    assert_restored_exactly, backup_args, busy_server, failed_step, light, restore_args, KEYS,
};
use crate::support::{files_in, report_of, set_args, step, write_plan};
use crate::workload::{domain0_seq_no, WorkloadOptions};
use serde_json::Value;
use stagehand_repo::crypt::Key;
use stagehand_testkit::s3::{unique_bucket, MotoServer};
use stagehand_testkit::TestServer;
use std::path::Path;

const KEY_A: &str = "6c2b9f0e4a1d8c3b7e5f2a9d0c4b8e1f3a7d5c9b2e6f0a4d8c1b5e9f3a7d2c60";
const KEY_B: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
/// A row no encrypted object may show.
const MARKER: &str = "PLAINTEXT-MARKER-ROW-4b1d9e7c";

fn id_of(hex: &str) -> String {
    Key::from_hex(hex, "test").expect("a key").id()
}

/// Runs stagehand with the S3 keys, and the encryption key when given.
fn run_keyed(args: &[String], key: Option<&str>) -> Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env: Vec<(&str, &str)> = KEYS.to_vec();
    if let Some(k) = key {
        env.push(("STAGEHAND_ENCRYPTION_KEY", k));
    }
    stagehand_env(&args, &env)
}

fn with_sets(mut args: Vec<String>, sets: &[(&str, String)]) -> Vec<String> {
    args.extend(set_args(sets));
    args
}

async fn add_marker(server: &TestServer) {
    server.exec("CREATE DATABASE marker").await;
    server
        .exec("CREATE TABLE marker.t (s VARCHAR(100)) ENGINE=InnoDB")
        .await;
    server
        .exec(&format!("INSERT INTO marker.t VALUES ('{MARKER}')"))
        .await;
}

fn holds(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The key (and its hex) appears nowhere stagehand wrote: output, journal, report.
fn assert_key_never_shown(runs: &[&Run], state: &Path) {
    for r in runs {
        assert!(
            !r.stdout.contains(KEY_A) && !r.stderr.contains(KEY_A),
            "the key leaked into a run's output"
        );
    }
    for f in files_in(state) {
        let text = std::fs::read(&f).expect("read state file");
        assert!(!holds(&text, KEY_A), "the key leaked into {}", f.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_encrypted_streamed_backup_to_s3_restores_exactly_and_hides_its_rows() {
    let moto = MotoServer::shared();
    let bucket = unique_bucket("encrypted");
    moto.create_bucket(&bucket).await.expect("create bucket");
    let repository = format!("s3://{bucket}/db1");
    let (server, workload) = busy_server("s3-encrypted").await;
    add_marker(&server).await;
    let opts: WorkloadOptions = light();
    let work = tempfile::tempdir().expect("tempdir");

    let args = with_sets(
        backup_args(&repository, &moto.endpoint(), &server, work.path()),
        &[("encrypt", "true".into())],
    );
    let backup = tokio::task::block_in_place(|| run_keyed(&args, Some(KEY_A)));
    let log = workload.stop().await;
    assert_eq!(
        backup.code, 0,
        "encrypted backup-to-s3 failed\nstdout: {}\nstderr: {}",
        backup.stdout, backup.stderr
    );
    let report = report_of(&backup.stdout);
    let ship = &step(&report, "ship")["outputs"];
    let id = ship["id"].as_str().expect("backup id").to_string();
    assert_eq!(ship["key_id"], id_of(KEY_A).as_str(), "the key id is shown");

    // Every object in the bucket is encrypted: our header, no marker row, not zstd.
    let client = moto.client();
    let listed = client
        .list_objects_v2()
        .bucket(&bucket)
        .prefix(format!("db1/{id}/"))
        .send()
        .await
        .expect("ListObjectsV2");
    let mut sealed = 0;
    for o in listed.contents() {
        let key = o.key().unwrap_or_default().to_string();
        let body = client
            .get_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await
            .expect("GetObject")
            .body
            .collect()
            .await
            .expect("body")
            .into_bytes();
        assert!(!holds(&body, MARKER), "{key} shows the marker row");
        if key.ends_with("/stagehand.json") {
            continue;
        }
        assert!(
            body.starts_with(b"STGHENC1") && key.ends_with(".enc"),
            "{key} is not an encrypted object"
        );
        sealed += 1;
    }
    assert!(sealed > 10, "the backup's objects were listed ({sealed})");

    // Listed and shown without the key, as encrypted with key A.
    let show = run_keyed(
        &[
            "backups".into(),
            "show".into(),
            repository.clone(),
            id.clone(),
            "--endpoint".into(),
            moto.endpoint(),
            "--path-style".into(),
        ],
        None,
    );
    assert_eq!(show.code, 0, "backups show: {}", show.stderr);
    assert!(
        show.stdout.contains(&format!("with key {}", id_of(KEY_A)))
            && show.stdout.contains("gtid_binlog_pos"),
        "show says it is encrypted and still shows the metadata: {}",
        show.stdout
    );
    let gtid = show
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("gtid_binlog_pos"))
        .map(|g| g.trim().to_string())
        .unwrap_or_default();
    let upto = domain0_seq_no(&gtid);
    assert!(upto > 0, "the backup has a GTID: {}", show.stdout);

    // Restored with the key: exactly the data at its GTID, and the marker row.
    let rargs = restore_args(&repository, &moto.endpoint(), work.path(), "a");
    let restored = tokio::task::block_in_place(|| run_keyed(&rargs, Some(KEY_A)));
    assert_eq!(
        restored.code, 0,
        "restore failed\nstdout: {}\nstderr: {}",
        restored.stdout, restored.stderr
    );
    let rreport = report_of(&restored.stdout);
    let fetch = &step(&rreport, "fetch")["outputs"];
    assert_eq!(fetch["key_id"], id_of(KEY_A).as_str());
    let datadir = work.path().join("datadir-a");
    let ibd = std::fs::read(datadir.join("marker/t.ibd")).expect("t.ibd");
    assert!(
        holds(&ibd, MARKER),
        "the restored table holds the marker row"
    );
    assert_restored_exactly(&datadir, work.path(), &log, &opts, &gtid).await;
    assert_key_never_shown(&[&backup, &restored, &show], &work.path().join("state"));
}

/// A plan that verifies the backup folder of a local repository.
fn verify_plan(dir: &Path, target: &Path) -> std::path::PathBuf {
    write_plan(
        dir,
        "verify-repo",
        &format!(
            "version: 1\nname: verify-repo\nsteps:\n  - id: verify\n    uses: verify\n    with: {{target: \"{}\"}}\n",
            target.display()
        ),
    )
}

fn untouched(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_local_encrypted_repository_refuses_wrong_keys_and_catches_tampering() {
    let server = TestServer::builder().name("local-encrypted").start().await;
    add_marker(&server).await;
    let work = tempfile::tempdir().expect("tempdir");
    let repo_dir = work.path().join("repo");
    let repository = repo_dir.display().to_string();
    // The key from a file here (from the secret in the S3 test).
    let key_file = work.path().join("db1.key");
    std::fs::write(&key_file, format!("{KEY_A}\n")).expect("key file");
    let args = with_sets(
        backup_args(&repository, "", &server, work.path()),
        &[
            ("encrypt", "true".into()),
            ("encryption_key_file", key_file.display().to_string()),
        ],
    );
    let backup = tokio::task::block_in_place(|| run_keyed(&args, None));
    assert_eq!(
        backup.code, 0,
        "backup: {}\n{}",
        backup.stdout, backup.stderr
    );
    let id = step(&report_of(&backup.stdout), "ship")["outputs"]["id"]
        .as_str()
        .expect("backup id")
        .to_string();
    let folder = repo_dir.join(&id);
    for f in files_in(&folder) {
        let bytes = std::fs::read(&f).expect("read object");
        assert!(!holds(&bytes, MARKER), "{} shows the marker", f.display());
    }

    // verify without the key: the encrypted objects' hashes only, and it says so.
    let plan = verify_plan(work.path(), &folder);
    let state = work.path().join("state").display().to_string();
    let verified = run_keyed(
        &[
            "run".into(),
            plan.display().to_string(),
            "--state-dir".into(),
            state.clone(),
            "--json".into(),
        ],
        None,
    );
    assert_eq!(verified.code, 0, "verify: {}", verified.stderr);
    let vreport = report_of(&verified.stdout);
    let out = &step(&vreport, "verify")["outputs"];
    assert_eq!(out["hashes_only"], true, "{out}");
    assert!(
        verified
            .stderr
            .contains("only the sizes and hashes of its encrypted objects were checked"),
        "verify says what it checked: {}",
        verified.stderr
    );

    // A wrong key, and no key: refused in one line naming the ids, nothing written.
    let (a, b) = (id_of(KEY_A), id_of(KEY_B));
    let rargs = restore_args(&repository, "", work.path(), "w");
    let wrong = tokio::task::block_in_place(|| run_keyed(&rargs, Some(KEY_B)));
    let fetch = failed_step(&wrong, "fetch", "a wrong key must fail the restore");
    let error = fetch["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("encrypted with key {a}, the key given is {b}"))
            && !error.contains('\n'),
        "one line naming both key ids: {error}"
    );
    let none = tokio::task::block_in_place(|| run_keyed(&rargs, None));
    let fetch = failed_step(&none, "fetch", "no key must fail the restore");
    let error = fetch["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("encrypted with key {a}, and no key was given")),
        "{error}"
    );
    assert!(
        untouched(&work.path().join("fetched-w")) && untouched(&work.path().join("datadir-w")),
        "nothing was written by a refused restore"
    );

    // The manifest in clear altered: the sealed copy catches it.
    let manifest = folder.join("stagehand.json");
    let clear = std::fs::read_to_string(&manifest).expect("manifest");
    let mut altered: Value = serde_json::from_str(&clear).expect("json");
    altered["binlog"]["gtid_binlog_pos"] = Value::from("0-1-999999");
    std::fs::write(&manifest, altered.to_string()).expect("write manifest");
    let restore = tokio::task::block_in_place(|| run_keyed(&rargs, Some(KEY_A)));
    let fetch = failed_step(&restore, "fetch", "an altered manifest must fail");
    let error = fetch["error"].as_str().unwrap_or_default();
    assert!(error.contains("differs from its sealed copy"), "{error}");
    std::fs::write(&manifest, &clear).expect("restore manifest");

    // A flipped byte in an object: named.
    let victim = crate::support::largest_object(&folder, "enc");
    let original = std::fs::read(&victim).expect("read object");
    crate::support::flip_a_middle_byte(&victim);
    let rargs = restore_args(&repository, "", work.path(), "t");
    let tampered = tokio::task::block_in_place(|| run_keyed(&rargs, Some(KEY_A)));
    let fetch = failed_step(&tampered, "fetch", "a tampered object must fail");
    crate::support::assert_names_corrupt_object(
        fetch["error"].as_str().unwrap_or_default(),
        &victim,
    );
    assert!(
        untouched(&work.path().join("datadir-t")),
        "nothing copied back"
    );

    // Repaired, with the key (from the secret this time): restored and checked.
    std::fs::write(&victim, &original).expect("repair object");
    let rargs = restore_args(&repository, "", work.path(), "r");
    let restored = tokio::task::block_in_place(|| run_keyed(&rargs, Some(KEY_A)));
    assert_eq!(
        restored.code, 0,
        "restore with the key\nstdout: {}\nstderr: {}",
        restored.stdout, restored.stderr
    );
    assert_eq!(
        step(&report_of(&restored.stdout), "check")["status"],
        "succeeded"
    );
    let ibd = std::fs::read(work.path().join("datadir-r/marker/t.ibd")).expect("t.ibd");
    assert!(
        holds(&ibd, MARKER),
        "the restored table holds the marker row"
    );
    assert_key_never_shown(
        &[
            &backup, &verified, &wrong, &none, &restore, &tampered, &restored,
        ],
        &work.path().join("state"),
    );
}
