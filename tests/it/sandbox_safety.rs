//! Safety of the servers stagehand starts on backups (issue 11, items 1 and 3).
//!
//! 1. The sandbox `prepare` and `verify` start runs with `--skip-grant-tables`: only the
//!    user running stagehand may reach it. Another uid (`nobody`) is refused at the
//!    socket, which sits in a 0700 directory and is not world-accessible itself.
//! 2. Stopping stagehand during prepare (kill -9, SIGINT, SIGTERM) leaves no server on
//!    the backup, a manifest that says the backup is not complete (`preparing`), a
//!    `verify` that says so, and a rerun of prepare that finishes the job.
//! 3. Prepare checks the files against the manifest first: it never blesses (re-hashes)
//!    a damaged backup.
//! 4. Prepare kills only a sandbox server stagehand started and left behind, never
//!    someone else's server on the directory.

use crate::cli::repo_root;
use crate::support::{copy_tree, full_backup_args, server_with};
use stagehand_backup::manifest::{Manifest, ManifestError};
use stagehand_mariadb::backup_server;
use stagehand_mariadb::sandbox::{SandboxOptions, SandboxServer, ShutdownMode};
use stagehand_testkit::install_datadir;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// 1. Nobody else can connect

/// `mariadb -S socket -e 'SELECT 1'` run as `nobody:nogroup` (or as ourselves).
fn client_as(nobody: bool, socket: &Path) -> Output {
    let mut cmd = if nobody {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "mariadb",
        ]);
        c
    } else {
        Command::new("mariadb")
    };
    cmd.arg("--no-defaults")
        .arg("-S")
        .arg(socket)
        .args([
            "-u",
            "root",
            "-N",
            "-e",
            "SELECT COUNT(*) FROM mysql.global_priv",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("the mariadb client runs")
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn assert_only_owner_connects(socket: &Path) {
    let own = client_as(false, socket);
    assert!(
        own.status.success(),
        "the user running stagehand connects: {}",
        String::from_utf8_lossy(&own.stderr)
    );
    let other = client_as(true, socket);
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        !other.status.success(),
        "user nobody must not reach the sandbox, yet it read: {}",
        String::from_utf8_lossy(&other.stdout)
    );
    assert!(
        stderr.contains("(13)") || stderr.contains("ermission denied"),
        "refused at the socket (EACCES), not for another reason: {stderr}"
    );
    assert_eq!(
        mode_of(socket) & 0o077,
        0,
        "the socket itself is not accessible to group or others"
    );
}

/// A fresh datadir that looks like a backup to `backup_server::start_on`.
async fn backup_like_datadir(base: &Path) -> PathBuf {
    let datadir = base.join("data");
    install_datadir(&datadir, &[])
        .await
        .expect("mariadb-install-db");
    std::fs::write(datadir.join("backup-my.cnf"), "[mysqld]\n").expect("backup-my.cnf");
    datadir
}

#[tokio::test(flavor = "multi_thread")]
async fn prepare_sandbox_is_refused_to_other_users() {
    let base = tempfile::tempdir().expect("tempdir");
    let datadir = backup_like_datadir(base.path()).await;

    // Exactly what prepare (and verify's test restore) start.
    let run = backup_server::run_dir().expect("run dir");
    let server = backup_server::start_on(&datadir, run.path(), 64 << 20, None)
        .await
        .expect("the sandbox starts");
    assert!(server.socket().starts_with(run.path()));
    assert_only_owner_connects(server.socket());
    assert_eq!(mode_of(run.path()), 0o700, "the run directory is private");
    server.shutdown(ShutdownMode::Fast).await.expect("shutdown");
}

/// The `server` step's kind of sandbox: a socket path chosen by the plan, in a shared
/// directory (grants on, but still not world-accessible).
#[tokio::test(flavor = "multi_thread")]
async fn sandbox_socket_in_a_shared_directory_is_private() {
    let base = tempfile::tempdir().expect("tempdir");
    let datadir = backup_like_datadir(base.path()).await;
    let shared = tempfile::Builder::new()
        .prefix("stagehand-shared")
        .tempdir_in("/tmp")
        .expect("shared dir");
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod 0755");
    let socket = shared.path().join("s.sock");
    let opts = SandboxOptions::new(&datadir, base.path().join("run")).socket_path(&socket);
    let server = SandboxServer::start(opts)
        .await
        .expect("the sandbox starts");
    assert_only_owner_connects(&socket);
    assert_eq!(
        mode_of(&base.path().join("run")),
        0o700,
        "run dir is private"
    );
    server.shutdown(ShutdownMode::Fast).await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------
// 3. Stopping stagehand during prepare

/// Runs stagehand (blocking) in the repository root; (exit code, stdout + stderr).
fn stagehand(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("STAGEHAND_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("the stagehand binary runs");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A backup of a small server (not prepared) in `work/backup`.
async fn small_backup(name: &str, work: &Path) -> PathBuf {
    let server = server_with(
        name,
        &[
            "CREATE DATABASE app",
            "CREATE TABLE app.t (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(200)) ENGINE=InnoDB",
            "INSERT INTO app.t (v) SELECT REPEAT('x', 200) FROM app.seq_1_to_20000",
            "CREATE TABLE app.a (id INT PRIMARY KEY) ENGINE=Aria SELECT seq AS id FROM app.seq_1_to_100",
        ],
    )
    .await;
    let target = work.join("backup");
    let args = full_backup_args(
        &server,
        &target,
        &work.join("state"),
        &["user=root", "prepare=false"],
        &[],
    );
    let (code, out) = stagehand(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "the backup succeeds: {out}");
    target
}

/// Processes (but us) whose command line names `dir`.
fn processes_on(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            // The program, or the one a loader runs (`ld.so --library-path DIR mariadbd`).
            let server = line
                .split(' ')
                .take(4)
                .any(|w| w.ends_with("mariadbd") || w.ends_with("mariadb-backup"));
            (server && line.contains(&needle)).then_some((pid, line))
        })
        .collect()
}

/// Waits until a mariadbd runs on `dir` (the sandbox of prepare), then freezes it
/// (SIGSTOP) so that prepare cannot finish before it is interrupted; panics after 60 s.
fn wait_for_sandbox(dir: &Path, stagehand: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let servers = processes_on(dir);
        if !servers.is_empty() {
            for (pid, _) in servers {
                let _ = Command::new("kill")
                    .args(["-STOP", &pid.to_string()])
                    .status();
            }
            return;
        }
        if let Ok(Some(status)) = stagehand.try_wait() {
            panic!("prepare ended ({status}) before its server was seen");
        }
        assert!(
            Instant::now() < deadline,
            "no server started on {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_no_server_on(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_on(dir);
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            for (pid, _) in &left {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            panic!("servers left running on the backup after stagehand stopped: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn verify_plan(work: &Path) -> PathBuf {
    let path = work.join("verify.yaml");
    std::fs::write(
        &path,
        "version: 1\nname: verify\nparams:\n  target: {type: path, required: true}\nsteps:\n  - id: verify\n    uses: verify\n    with: {target: \"{{params.target}}\"}\n",
    )
    .expect("verify plan");
    path
}

/// Interrupts `stagehand run plans/prepare.yaml` with `signal` once its server is up,
/// then checks what is left and that a rerun finishes the job.
async fn interrupt_prepare(signal: &str, name: &str) {
    let work = tempfile::tempdir().expect("tempdir");
    let backup = small_backup(name, work.path()).await;
    let target = format!("target={}", backup.display());
    let state_dir = work.path().join("state");
    let state = state_dir.display().to_string();
    let verify = verify_plan(work.path());
    let verify_args = [
        "run",
        verify.to_str().unwrap_or_default(),
        "--set",
        &target,
        "--state-dir",
        &state,
    ];

    let mut prepare = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(prepare_args(&backup, &state_dir))
        .current_dir(repo_root())
        .env_remove("STAGEHAND_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prepare");
    let b = backup.clone();
    let mut prepare = tokio::task::spawn_blocking(move || {
        wait_for_sandbox(&b, &mut prepare);
        prepare
    })
    .await
    .expect("waiting thread");
    let killed = Command::new("kill")
        .args([&format!("-{signal}"), &prepare.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = prepare.wait().expect("stagehand exits");
    if signal == "KILL" {
        assert_eq!(status.signal(), Some(9), "stagehand was killed: {status}");
    } else {
        assert_eq!(status.code(), Some(130), "interrupted: exit 130 ({status})");
    }

    let b = backup.clone();
    tokio::task::spawn_blocking(move || wait_no_server_on(&b))
        .await
        .expect("waiting thread");

    match Manifest::read(&backup) {
        Err(ManifestError::Preparing { .. }) => {}
        Ok(m) => panic!(
            "the manifest must say `preparing`, not complete: complete={} preparing={} prepared={:?}",
            m.complete, m.preparing, m.prepared
        ),
        Err(e) => panic!("the manifest must say `preparing`, got: {e}"),
    }
    let (code, out) = stagehand(&verify_args);
    assert_ne!(code, 0, "verify refuses a half-prepared backup: {out}");
    assert!(
        out.contains("interrupted prepare") && out.contains("run prepare again"),
        "verify says why and what to do: {out}"
    );

    if signal == "KILL" {
        rerun_still_checks_table_files(&backup, work.path());
    }
    let (code, out) = stagehand_prepare(&backup, &state_dir);
    assert_eq!(code, 0, "a rerun of prepare finishes the job: {out}");
    let manifest = Manifest::read(&backup).expect("the manifest is complete again");
    assert!(!manifest.preparing);
    assert!(manifest.prepared.is_some(), "it says how it was prepared");
    let (code, out) = stagehand(&verify_args);
    assert_eq!(code, 0, "the prepared backup verifies: {out}");
    assert!(
        processes_on(&backup).is_empty(),
        "no server left after the rerun"
    );
}

/// Overwrites 8 bytes of the table definition `app/t.frm` in `backup`.
fn tamper_table_definition(backup: &Path) {
    let frm = backup.join("app/t.frm");
    let mut bytes = std::fs::read(&frm).expect("t.frm");
    bytes[200..208].copy_from_slice(b"TAMPERED");
    std::fs::write(&frm, bytes).expect("tamper t.frm");
}

/// The rerun of an interrupted prepare skips only the files crash recovery rewrites: a
/// tampered table definition in a copy of the half-prepared backup is still refused.
fn rerun_still_checks_table_files(backup: &Path, work: &Path) {
    let copy = work.join("half-prepared-copy");
    copy_tree(backup, &copy);
    tamper_table_definition(&copy);
    let (code, out) = stagehand_prepare(&copy, &work.join("state"));
    assert_eq!(code, 1, "the rerun refuses a tampered table file: {out}");
    assert!(
        out.contains("1 problem(s)") && out.contains("app/t.frm"),
        "naming it, and only it (the files recovery rewrote are skipped): {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prepare_killed_leaves_no_server_and_a_rerun_finishes() {
    interrupt_prepare("KILL", "prep-kill9").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prepare_interrupted_by_sigint_is_finished_by_a_rerun() {
    interrupt_prepare("INT", "prep-sigint").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prepare_terminated_by_sigterm_is_finished_by_a_rerun() {
    interrupt_prepare("TERM", "prep-sigterm").await;
}

/// A server an older stagehand left on a backup (no parent but init) is killed by the
/// next prepare instead of failing it ("Can't lock aria control file").
#[tokio::test(flavor = "multi_thread")]
async fn prepare_reclaims_a_server_left_on_the_backup() {
    let work = tempfile::tempdir().expect("tempdir");
    let backup = small_backup("prep-orphan", work.path()).await;
    // An orphan like the ones older versions left: started as the sandbox starts its
    // servers, then its parent (a shell) exits, so init adopts it.
    let run = backup_server::run_dir().expect("run dir");
    let sock = run.path().join("mariadbd.sock");
    let settings: String = backup_server::backup_my_cnf_options(&backup)
        .expect("backup-my.cnf")
        .into_iter()
        .map(|(k, v)| format!(" --{k}={}", v.unwrap_or_default()))
        .collect();
    let script = format!(
        "mariadbd --no-defaults --datadir={b} --innodb-undo-directory={b} --socket={} --skip-networking --skip-grant-tables --user=root --innodb-buffer-pool-size=64M --log-error={} --pid-file={} --tmpdir={} --skip-log-bin{settings} >/dev/null 2>&1 </dev/null &",
        sock.display(),
        run.path().join("err").display(),
        run.path().join("pid").display(),
        run.path().display(),
        b = backup.display(),
    );
    let ok = Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("sh");
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the orphan server never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        backup_server::servers_on(&backup).len(),
        1,
        "the orphan is seen"
    );

    let (code, out) = stagehand_prepare(&backup, &work.path().join("state"));
    let left = processes_on(&backup);
    for (pid, _) in &left {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    assert_eq!(code, 0, "prepare succeeds despite the orphan: {out}");
    assert!(left.is_empty(), "the orphan is gone: {left:?}");
    assert!(Manifest::read(&backup).is_ok_and(|m| m.prepared.is_some()));
}

// ---------------------------------------------------------------------------------------
// Prepare never blesses a damaged backup (re-hashing its files)

fn prepare_args(backup: &Path, state: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "plans/prepare.yaml".into(),
        "--set".into(),
        format!("target={}", backup.display()),
        "--state-dir".into(),
        state.display().to_string(),
    ]
}

fn stagehand_prepare(backup: &Path, state: &Path) -> (i32, String) {
    let args = prepare_args(backup, state);
    stagehand(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A table definition overwritten in the middle and an Aria data file with bytes
/// appended: prepare refuses, names both, changes nothing; an intact copy prepares.
#[tokio::test(flavor = "multi_thread")]
async fn prepare_refuses_a_tampered_backup_and_changes_nothing() {
    let work = tempfile::tempdir().expect("tempdir");
    let backup = small_backup("prep-tamper", work.path()).await;
    let intact = work.path().join("intact");
    copy_tree(&backup, &intact);

    tamper_table_definition(&backup);
    let mad = backup.join("app/a.MAD");
    let mut data = std::fs::read(&mad).expect("a.MAD");
    data.extend_from_slice(b"garbage\n");
    std::fs::write(&mad, data).expect("append to a.MAD");
    let manifest_path = backup.join(stagehand_backup::manifest::MANIFEST_FILE);
    let before = std::fs::read(&manifest_path).expect("manifest");

    let (code, out) = stagehand_prepare(&backup, &work.path().join("state"));
    assert_eq!(code, 1, "prepare refuses a damaged backup: {out}");
    assert!(
        out.contains("app/t.frm") && out.contains("app/a.MAD"),
        "the damaged files are named: {out}"
    );
    assert!(
        out.contains("the backup is damaged: do not restore it; take a new backup"),
        "and what to do: {out}"
    );
    let after = std::fs::read(&manifest_path).expect("manifest");
    assert!(before == after, "the manifest is byte-identical");
    assert!(processes_on(&backup).is_empty(), "no server was started");

    let (code, out) = stagehand_prepare(&intact, &work.path().join("state"));
    assert_eq!(code, 0, "an intact backup prepares: {out}");
    assert!(Manifest::read(&intact).is_ok_and(|m| m.prepared.is_some()));
}

// ---------------------------------------------------------------------------------------
// Prepare kills only the servers stagehand left behind

/// Starts `mariadbd` on `backup` as a child of the test, with `socket` and its pid file
/// and tmpdir in `run`, and waits until it serves.
async fn own_server(backup: &Path, run: &Path, socket: &Path) -> std::process::Child {
    // The build the backup came from (STAGEHAND_MARIADB_BIN in the version matrix).
    let binary = stagehand_mariadb::sandbox::binaries::find_binary("mariadbd").expect("mariadbd");
    let mut cmd = Command::new(binary);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", backup.display()))
        .arg(format!("--innodb-undo-directory={}", backup.display()))
        .arg(format!("--socket={}", socket.display()))
        .arg("--skip-networking")
        .arg("--user=root")
        .arg(format!("--tmpdir={}", run.display()))
        .arg(format!("--pid-file={}", run.join("m.pid").display()))
        .arg(format!("--log-error={}", run.join("m.err").display()))
        .arg("--innodb-buffer-pool-size=64M")
        .arg("--skip-log-bin");
    for (k, v) in backup_server::backup_my_cnf_options(backup).expect("backup-my.cnf") {
        cmd.arg(format!("--{k}={}", v.unwrap_or_default()));
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mariadbd starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("our server exited ({status}) before it served");
        }
        assert!(Instant::now() < deadline, "our server never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

/// Prepare refuses (exit 1, naming the pid) while `server` runs on `backup`, and the
/// server is still alive afterwards; then the test stops it itself.
fn assert_refused_and_alive(
    mut server: std::process::Child,
    backup: &Path,
    state: &Path,
    says: &str,
) {
    let (code, out) = stagehand_prepare(backup, state);
    let alive = server.try_wait().expect("try_wait").is_none();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        alive,
        "prepare must not kill a server it did not leave: {out}"
    );
    assert_eq!(code, 1, "prepare refuses: {out}");
    assert!(
        out.contains(&format!("pid {}", server.id())) && out.contains(says),
        "it names the server and why ({says}): {out}"
    );
    assert!(
        out.contains("nothing was killed"),
        "and says nothing was done: {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prepare_never_kills_a_server_it_did_not_leave() {
    let work = tempfile::tempdir().expect("tempdir");
    let backup = small_backup("prep-foreign", work.path()).await;
    let state = work.path().join("state");

    // A DBA's own server on the directory, started as the sandbox would be.
    let run = work.path().join("dba");
    std::fs::create_dir(&run).expect("dba dir");
    let server = own_server(&backup, &run, &run.join("s.sock")).await;
    assert_refused_and_alive(server, &backup, &state, "stagehand did not start");

    // A stagehand-style sandbox whose starter (this test) is alive: another run's.
    let run = backup_server::run_dir().expect("run dir");
    let server = own_server(&backup, run.path(), &run.path().join("s.sock")).await;
    assert_refused_and_alive(server, &backup, &state, "still running");
}
