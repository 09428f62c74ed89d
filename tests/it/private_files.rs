//! What a backup leaves on disk (issue 11, items 4 and "a full disk"): every file and
//! directory written for a backup is private to the user running stagehand, whatever
//! umask it was started with; a backup that fails on a full disk frees the space and
//! leaves its target reusable.

use crate::cli::repo_root;
use crate::storage_roundtrip::SmallDisk;
use crate::support::{full_backup_args, report_of, set_args, step};
use serde_json::Value;
use stagehand_testkit::TestServer;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// The result of one `stagehand run … --json`.
struct Run {
    code: i32,
    report: Value,
    stderr: String,
}

/// Runs stagehand under umask 022 (the usual default: files 0644), so that only
/// stagehand itself can make what it writes private.
fn run_with_open_umask(args: &[String]) -> Run {
    let out = Command::new("sh")
        .args(["-c", "umask 022 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_stagehand"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("STAGEHAND_LOG")
        .output()
        .expect("run stagehand");
    Run {
        code: out.status.code().unwrap_or(-1),
        report: report_of(&String::from_utf8_lossy(&out.stdout)),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn backup_args(server: &TestServer, target: &Path, state: &Path, extra: &[&str]) -> Vec<String> {
    let mut extra = extra.to_vec();
    extra.push("--json");
    full_backup_args(server, target, state, &["user=root"], &extra)
}

/// Every path under `root` (itself included) whose mode lets group or others in.
fn open_to_others(root: &Path) -> Vec<String> {
    let mut open = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.mode() & 0o077 != 0 {
            open.push(format!("{:o} {}", meta.mode() & 0o7777, p.display()));
        }
        if meta.is_dir() {
            stack.extend(
                std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
    open
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_and_its_run_history_are_readable_by_their_owner_only() {
    let server = TestServer::builder().name("private-files").start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let target = work.path().join("backup");
    let state = work.path().join("state");
    let args = backup_args(&server, &target, &state, &["--set", "test_restore=true"]);
    let run = tokio::task::block_in_place(|| run_with_open_umask(&args));
    assert_eq!(run.code, 0, "backup failed: {}\n{}", run.report, run.stderr);
    assert!(
        target.join("mysql/global_priv.MAD").exists(),
        "the backup holds the password hashes, so it must be private"
    );
    let open = open_to_others(&target);
    assert!(
        open.is_empty(),
        "prepared backup entries readable by others:\n{}",
        open.join("\n")
    );
    let open = open_to_others(&state);
    assert!(
        open.is_empty(),
        "run history entries readable by others:\n{}",
        open.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_that_fills_the_disk_frees_it_and_leaves_the_target_reusable() {
    let server = TestServer::builder().name("full-disk").start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let target = work.path().join("small");
    // Smaller than the system tablespace alone (12 MiB by default).
    let _disk = SmallDisk::mount(&target, "4m");
    let state = work.path().join("state");
    let args = backup_args(&server, &target, &state, &[]);
    let run = tokio::task::block_in_place(|| run_with_open_umask(&args));
    assert_eq!(run.code, 1, "a full disk fails the backup: {}", run.report);
    let errors: Vec<String> = run.report["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["status"] == "failed")
        .map(|s| s["error"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("No space left on device")),
        "the error says the disk is full: {errors:?}"
    );
    assert_eq!(
        step(&run.report, "lock_end")["status"],
        "succeeded",
        "the locks were released"
    );
    let discard = step(&run.report, "discard");
    assert_eq!(discard["status"], "succeeded", "{discard}");
    assert_eq!(discard["outputs"]["removed"], true, "{discard}");
    let left: Vec<_> = std::fs::read_dir(&target)
        .expect("target")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        left.is_empty(),
        "nothing is left on the full disk: {left:?}"
    );

    // The next run into the same directory is not refused (it fails again only
    // because the disk is still too small, not because of left-overs).
    let again = tokio::task::block_in_place(|| run_with_open_umask(&args));
    let copy_errors = again.report.to_string();
    assert!(
        !copy_errors.contains("is not empty") && !copy_errors.contains("holds the files of run"),
        "the target is reusable: {copy_errors}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_backup_its_repository_and_a_restore_are_readable_by_their_owner_only() {
    let server = TestServer::builder().name("private-restore").start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let (repo, spool, state) = (
        work.path().join("repo"),
        work.path().join("spool"),
        work.path().join("state"),
    );
    let (fetched, datadir) = (work.path().join("fetched"), work.path().join("datadir"));
    let mut backup = vec!["run".to_string(), "plans/backup-to-s3.yaml".to_string()];
    backup.extend(set_args(&[
        ("socket", server.socket().display().to_string()),
        ("datadir", server.datadir().display().to_string()),
        ("repository", repo.display().to_string()),
        ("spool", spool.display().to_string()),
    ]));
    backup.extend([
        "--state-dir".into(),
        state.display().to_string(),
        "--json".into(),
    ]);
    let run = tokio::task::block_in_place(|| run_with_open_umask(&backup));
    assert_eq!(run.code, 0, "backup: {}\n{}", run.report, run.stderr);

    let mut restore = vec!["run".to_string(), "plans/restore.yaml".to_string()];
    // The server step wants a private directory for its socket (it creates it 0700).
    let socket = work.path().join("sock/c.sock").display().to_string();
    restore.extend(set_args(&[
        ("repository", repo.display().to_string()),
        ("workdir", fetched.display().to_string()),
        ("datadir", datadir.display().to_string()),
        ("check_socket", socket),
    ]));
    restore.extend([
        "--state-dir".into(),
        state.display().to_string(),
        "--json".into(),
    ]);
    let run = tokio::task::block_in_place(|| run_with_open_umask(&restore));
    assert_eq!(run.code, 0, "restore: {}\n{}", run.report, run.stderr);
    assert!(datadir.join("mysql/global_priv.MAD").exists(), "restored");

    for (what, dir) in [
        ("repository", &repo),
        ("spool", &spool),
        ("fetched backup", &fetched),
        ("restored datadir", &datadir),
        ("run history", &state),
    ] {
        let open = open_to_others(dir);
        assert!(
            open.is_empty(),
            "{what} entries readable by others:\n{}",
            open.join("\n")
        );
    }
}
