//! Is this the right server, the right target, the right privileges (issue 11, items 2,
//! 5 and 6): `plans/full-backup.yaml` through the CLI against throwaway servers, with
//! `run --check` and with real runs. Each mistake is refused before anything is copied,
//! naming what is wrong.

use crate::cli::{repo_root, stagehand, stagehand_env, Run};
use crate::support::{copy_tree, report_of, step, step_error};
use serde_json::Value;
use stagehand_backup::manifest::MANIFEST_FILE;
use stagehand_testkit::TestServer;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn full_backup() -> String {
    repo_root()
        .join("plans/full-backup.yaml")
        .display()
        .to_string()
}

/// `--set` arguments of a backup of the server on `socket` with `datadir` into `target`.
fn backup_sets(socket: &Path, user: &str, datadir: &Path, target: &Path) -> Vec<String> {
    [
        format!("socket={}", socket.display()),
        format!("user={user}"),
        format!("datadir={}", datadir.display()),
        format!("target={}", target.display()),
        "prepare=false".into(),
        "verify=false".into(),
    ]
    .into_iter()
    .flat_map(|s| ["--set".to_string(), s])
    .collect()
}

/// `stagehand run PLAN --check` with the sets, run blocking: off the runtime's threads,
/// so the test servers' pools and any statement a test keeps running stay served.
async fn check(plan: &str, sets: &[String], env: &'static [(&'static str, &'static str)]) -> Run {
    let (plan, sets) = (plan.to_string(), sets.to_vec());
    blocking(move || {
        let mut args = vec!["run", plan.as_str(), "--check"];
        args.extend(sets.iter().map(String::as_str));
        stagehand_env(&args, env)
    })
    .await
}

/// `stagehand run PLAN --json` with the sets and a state directory, run blocking as
/// [`check`] is; the report is `Null` when it printed none.
async fn run(
    plan: &str,
    sets: &[String],
    state: &Path,
    env: &'static [(&'static str, &'static str)],
) -> (Run, Value) {
    let (plan, sets) = (plan.to_string(), sets.to_vec());
    let state = state.display().to_string();
    blocking(move || {
        let mut args = vec!["run", plan.as_str(), "--state-dir", &state, "--json"];
        args.extend(sets.iter().map(String::as_str));
        let r = stagehand_env(&args, env);
        let report = report_of(&r.stdout);
        (r, report)
    })
    .await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("stagehand call")
}

/// [`check`] of `plans/full-backup.yaml`.
async fn check_backup(sets: &[String], env: &'static [(&'static str, &'static str)]) -> Run {
    check(&full_backup(), sets, env).await
}

/// [`run`] of `plans/full-backup.yaml`.
async fn run_backup(
    sets: &[String],
    state: &Path,
    env: &'static [(&'static str, &'static str)],
) -> (Run, Value) {
    run(&full_backup(), sets, state, env).await
}

/// `--check` of the backup with `sets` fails saying `expected`, and so does a run (its
/// state in `state`), at its `redo` step: what `--check` printed, and the run's report.
async fn assert_backup_refused(sets: &[String], state: &Path, expected: &str) -> (Run, Value) {
    let c = check_backup(sets, &[]).await;
    assert_check_fails_saying(&c, expected);
    let refused = run_backup(sets, state, &[]).await;
    assert_run_fails_at(&refused, "redo", expected);
    (c, refused.1)
}

/// No complete backup in `target`, and nothing copied to it.
fn assert_nothing_copied(target: &Path) {
    assert!(!target.join(MANIFEST_FILE).exists(), "no complete backup");
    assert!(!target.join("ibdata1").exists(), "nothing was copied");
}

/// `--check` exited 1 and said `expected`.
fn assert_check_fails_saying(c: &Run, expected: &str) {
    assert_eq!(c.code, 1, "--check must fail\n{}\n{}", c.stdout, c.stderr);
    assert!(c.stdout.contains(expected), "{}", c.stdout);
}

/// The run exited 1, the error of its step `id` saying `expected`.
fn assert_run_fails_at(run: &(Run, Value), id: &str, expected: &str) {
    let (r, report) = run;
    assert_eq!(r.code, 1, "the run must fail\n{}\n{}", r.stdout, r.stderr);
    assert!(step_error(report, id).contains(expected), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_of_one_server_and_datadir_of_another_are_refused_before_copying() {
    let (a, b) = tokio::join!(
        TestServer::builder().name("identity-a").start(),
        TestServer::builder().name("identity-b").start()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("backup");
    let sets = backup_sets(a.socket(), "root", b.datadir(), &target);

    let expected = format!(
        "the server on socket {} has datadir {}/, but datadir is {}: they are not the same server",
        a.socket().display(),
        a.datadir().display(),
        b.datadir().display()
    );
    let (_, report) = assert_backup_refused(&sets, &dir.path().join("state"), &expected).await;
    assert_eq!(step(&report, "redo")["status"], "failed", "{report}");
    for copy in ["copy_innodb", "copy_other", "copy_aria", "seal"] {
        assert_ne!(step(&report, copy)["status"], "succeeded", "{report}");
    }
    assert_nothing_copied(&target);

    // The same server through a symlinked path is the same directory: accepted.
    let link = dir.path().join("a-data");
    std::os::unix::fs::symlink(a.datadir(), &link).expect("symlink");
    let sets = backup_sets(a.socket(), "root", &link, &dir.path().join("other"));
    let c = check_backup(&sets, &[]).await;
    assert_eq!(c.code, 0, "{}\n{}", c.stdout, c.stderr);
    assert!(
        c.stdout
            .contains(&format!("{} is the datadir of the server", link.display())),
        "{}",
        c.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn target_inside_the_datadir_or_a_file_is_refused() {
    let server = TestServer::builder().name("target-inside").start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let inside = server.datadir().join("bk");
    let sets = backup_sets(server.socket(), "root", server.datadir(), &inside);

    let expected = format!(
        "the backup target {} is inside the server's datadir",
        inside.display()
    );
    assert_check_fails_saying(&check_backup(&sets, &[]).await, &expected);

    let state = dir.path().join("state");
    let refused = run_backup(&sets, &state, &[]).await;
    assert_run_fails_at(&refused, "redo", "is inside the server's datadir");
    assert!(!inside.exists(), "nothing was created in the datadir");
    let databases: Vec<String> = server.query("SHOW DATABASES").await;
    assert!(!databases.iter().any(|d| d == "bk"), "{databases:?}");

    // A target that is a file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let sets = backup_sets(server.socket(), "root", server.datadir(), &file);
    let expected = format!("the backup target {} cannot be a directory", file.display());
    assert_check_fails_saying(&check_backup(&sets, &[]).await, &expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_named_as_such_not_as_a_missing_privilege() {
    let server = TestServer::builder().name("wrong-password").start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sets = backup_sets(
        server.socket(),
        "root",
        server.datadir(),
        &dir.path().join("b"),
    );
    let env: &[(&str, &str)] = &[("STAGEHAND_DB_PASSWORD", "not-the-password")];
    let c = check_backup(&sets, env).await;
    assert_check_fails_saying(&c, "wrong user or password");
    assert!(!c.stdout.contains("lacks a privilege"), "{}", c.stdout);
    assert!(!c.stdout.contains("not-the-password"), "{}", c.stdout);

    let state = dir.path().join("state");
    let (r, report) = run_backup(&sets, &state, env).await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let hint = step(&report, "lock_start")["hint"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(hint.contains("wrong user or password"), "{report}");
}

/// A plan with only the locks: START, then BLOCK_DDL with `on_blocker: fail` (the
/// blocker check needs PROCESS), then END.
fn blocker_plan(dir: &Path) -> PathBuf {
    let path = dir.join("blocker.yaml");
    std::fs::write(
        &path,
        r#"version: 1
name: blocker-check
params:
  socket: {type: path, required: true}
  user: {type: string, required: true}
connections:
  source: {socket: "{{params.socket}}", user: "{{params.user}}"}
steps:
  - id: lock_start
    uses: stage_locks
    with: {connection: source, stage: start}
  - id: lock_ddl
    uses: stage_locks
    needs: [lock_start]
    with: {connection: source, stage: block_ddl, on_blocker: fail, blocker_threshold: 1s}
  - id: lock_end
    uses: stage_locks
    needs: [lock_ddl]
    when: always
    with: {connection: source, stage: end}
"#,
    )
    .expect("write plan");
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn check_and_run_test_the_privileges_they_claim() {
    let server = TestServer::builder().name("privileges").start().await;
    // Names that spell the missing privilege, and SUPER, which holds neither.
    server
        .exec("CREATE USER noreload@localhost, noprocess@localhost")
        .await;
    server
        .exec("GRANT PROCESS, SUPER, BINLOG MONITOR ON *.* TO noreload@localhost")
        .await;
    server
        .exec("GRANT RELOAD, BINLOG MONITOR ON *.* TO noprocess@localhost")
        .await;
    let dir = tempfile::tempdir().expect("tempdir");

    let sets = backup_sets(
        server.socket(),
        "noreload",
        server.datadir(),
        &dir.path().join("b"),
    );
    assert_check_fails_saying(
        &check_backup(&sets, &[]).await,
        "the backup user lacks RELOAD: GRANT RELOAD ON *.*",
    );

    let plan = blocker_plan(dir.path()).display().to_string();
    let socket = format!("socket={}", server.socket().display());
    let sets: Vec<String> = ["--set", &socket, "--set", "user=noprocess"]
        .map(String::from)
        .to_vec();
    assert_check_fails_saying(
        &check(&plan, &sets, &[]).await,
        "the backup user lacks PROCESS: GRANT PROCESS ON *.*",
    );

    // A statement running for a while: root sees it as a blocker; a user without
    // PROCESS would not see it, and must refuse rather than lock anyway.
    let mut sleeper = server.conn().await;
    let sleeping = tokio::spawn(async move {
        use mysql_async::prelude::Queryable;
        let r: Result<Option<i64>, _> = sleeper.query_first("SELECT SLEEP(60)").await;
        drop(sleeper);
        r
    });
    let mut waited = Duration::ZERO;
    let sleeper_id = loop {
        let running: Vec<u64> = server
            .query("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(60)' AND TIME >= 2")
            .await;
        if let Some(id) = running.first() {
            break *id;
        }
        assert!(
            waited < Duration::from_secs(30),
            "SELECT SLEEP(60) never showed up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        waited += Duration::from_millis(200);
    };
    assert_run_fails_at(
        &run(&plan, &sets, &dir.path().join("s1"), &[]).await,
        "lock_ddl",
        "on_blocker: fail needs the PROCESS privilege",
    );

    let root = ["--set", &socket, "--set", "user=root"]
        .map(String::from)
        .to_vec();
    let (r, report) = run(&plan, &root, &dir.path().join("s2"), &[]).await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        step_error(&report, "lock_ddl").contains("SELECT SLEEP(60)"),
        "root sees the blocker: {report}"
    );
    server.exec(&format!("KILL QUERY {sleeper_id}")).await;
    let _ = sleeping.await;
}

#[test]
fn zero_commit_budget_is_refused_before_anything_runs() {
    let r = stagehand(&[
        "run",
        &full_backup(),
        "--check",
        "--set",
        "target=/nonexistent/stagehand-zero-budget",
        "--set",
        "max_commit_block=0s",
    ]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("a budget of 0s would release the locks at once"),
        "{all}"
    );
}

/// Moves a running server's datadir aside (the server keeps its open files) and puts
/// it back on drop, so the test server's own cleanup finds it.
struct MovedDatadir {
    datadir: PathBuf,
    moved: PathBuf,
}

impl MovedDatadir {
    fn new(datadir: &Path, moved: &Path) -> MovedDatadir {
        std::fs::rename(datadir, moved).expect("move the datadir aside");
        MovedDatadir {
            datadir: datadir.to_path_buf(),
            moved: moved.to_path_buf(),
        }
    }
}

impl Drop for MovedDatadir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.datadir);
        let _ = std::fs::rename(&self.moved, &self.datadir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_copy_at_the_servers_datadir_path_is_refused() {
    let server = TestServer::builder().name("stale-copy").start().await;
    server.exec("CREATE DATABASE app").await;
    server
        .exec("CREATE TABLE app.m (v INT) ENGINE=MyISAM")
        .await;
    server.exec("INSERT INTO app.m VALUES (1)").await;
    let real = server.base_dir().join("data.real");
    let _moved = MovedDatadir::new(server.datadir(), &real);
    copy_tree(&real, server.datadir());
    // Only non-InnoDB writes: the copy's redo log keeps the server's checkpoint.
    server.exec("INSERT INTO app.m VALUES (2)").await;
    server.exec("FLUSH TABLES").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("backup");
    let sets = backup_sets(server.socket(), "root", server.datadir(), &target);

    let expected = format!(
        "{} does not hold the files the server on socket {} has open",
        server.datadir().display(),
        server.socket().display()
    );
    let (c, _) = assert_backup_refused(&sets, &dir.path().join("state"), &expected).await;
    assert!(
        c.stdout
            .contains(&format!("{}/ib_logfile0 open", real.display())),
        "names the file the server has open: {}",
        c.stdout
    );
    assert_nothing_copied(&target);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_datadir_the_server_names_by_another_path_is_accepted_by_its_open_files() {
    // As in a container: the server's @@datadir path names another directory here.
    let server = TestServer::builder().name("other-path").start().await;
    let elsewhere = server.base_dir().join("host-view");
    let _moved = MovedDatadir::new(server.datadir(), &elsewhere);
    std::fs::create_dir(server.datadir()).expect("another directory at the server's path");
    let dir = tempfile::tempdir().expect("tempdir");
    let sets = backup_sets(
        server.socket(),
        "root",
        &elsewhere,
        &dir.path().join("backup"),
    );
    let c = check_backup(&sets, &[]).await;
    assert_eq!(c.code, 0, "{}\n{}", c.stdout, c.stderr);
    assert!(
        c.stdout.contains(&format!(
            "{} is the datadir of the server on socket {} (same files (the server has {}/ib_logfile0 open)",
            elsewhere.display(),
            server.socket().display(),
            elsewhere.display()
        )),
        "{}",
        c.stdout
    );
}

/// A bind mount, unmounted on drop (before the temp directory holding it is removed).
struct BindMount {
    at: PathBuf,
}

impl BindMount {
    fn new(from: &Path, at: &Path) -> BindMount {
        std::fs::create_dir_all(at).expect("mount point");
        let out = std::process::Command::new("mount")
            .arg("--bind")
            .arg(from)
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test bind-mounts a datadir and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        BindMount {
            at: at.to_path_buf(),
        }
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.at).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn target_inside_the_datadir_through_a_bind_mount_is_refused() {
    let server = TestServer::builder().name("bind-target").start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = dir.path().join("bm2");
    let _bind = BindMount::new(server.datadir(), &mount);
    let target = mount.join("evil");
    let sets = backup_sets(server.socket(), "root", server.datadir(), &target);

    let expected = format!(
        "the backup target {} is inside the server's datadir",
        target.display()
    );
    assert_backup_refused(&sets, &dir.path().join("state"), &expected).await;
    assert!(
        !server.datadir().join("evil").exists(),
        "nothing in the datadir"
    );
    let databases: Vec<String> = server.query("SHOW DATABASES").await;
    assert!(!databases.iter().any(|d| d == "evil"), "{databases:?}");

    // The directory holding the datadir, through a bind mount: contains it.
    let parent = dir.path().join("bm3");
    let _around = BindMount::new(server.base_dir(), &parent);
    let sets = backup_sets(server.socket(), "root", server.datadir(), &parent);
    let expected = format!(
        "the backup target {} contains the server's datadir",
        parent.display()
    );
    assert_check_fails_saying(&check_backup(&sets, &[]).await, &expected);
}
