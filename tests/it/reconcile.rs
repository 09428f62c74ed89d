//! Copy under BACKUP STAGE START, reconcile under BLOCK_DDL (issue 14): InnoDB is copied
//! while DDL may still run; a gate holds BLOCK_DDL back until the test has run DDL on
//! tables already copied (rename, drop, rebuild by FORCE, TRUNCATE and OPTIMIZE, a swap
//! by renames, a new table). `reconcile` copies again what was rebuilt or created and
//! records the drops and renames; prepare applies them. Restored through both prepare
//! engines, the tables must be exactly the source's after the DDL. Runs on whatever
//! `mariadbd` is first in PATH (or STAGEHAND_MARIADB_BIN).

use crate::cli::repo_root;
use crate::support::{
    copy_tree, gated_after_copies_plan, hold_ddl, insert_gate, rows_by_table, spawn_backup,
    wait_for_start,
};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde_json::Value;
use stagehand_mariadb::sandbox::{SandboxOptions, SandboxServer};
use stagehand_testkit::TestServer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shipped example of the other mode is plans/full-backup.yaml with BLOCK_DDL moved
/// before the copies and nothing else ([`hold_ddl`]).
#[test]
fn the_hold_ddl_example_is_the_full_backup_plan_with_that_change_only() {
    let read = |rel: &str| -> serde_yaml::Value {
        let text = std::fs::read_to_string(repo_root().join(rel)).expect(rel);
        serde_yaml::from_str(&text).expect("YAML")
    };
    let example = read("docs/examples/full-backup-hold-ddl.yaml");
    let mut full = read("plans/full-backup.yaml");
    let steps = full
        .get_mut("steps")
        .and_then(serde_yaml::Value::as_sequence_mut)
        .expect("steps");
    hold_ddl(steps);
    assert_eq!(example.get("steps"), full.get("steps"));
    assert_eq!(
        example
            .get("params")
            .and_then(|p| p.as_mapping())
            .map(|p| p.len()),
        full.get("params")
            .and_then(|p| p.as_mapping())
            .map(|p| p.len()),
        "the same params"
    );
}

/// Prepares a copy of the backup with plans/prepare.yaml and `engine`, starts a server on
/// it, and returns its tables.
async fn restored_tables(backup: &Path, work: &Path, engine: &str) -> BTreeMap<String, (u64, u64)> {
    let copy = work.join(format!("restore-{engine}"));
    copy_tree(backup, &copy);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .arg("run")
        .arg(repo_root().join("plans/prepare.yaml"))
        .args(["--set", &format!("target={}", copy.display())])
        .args(["--set", &format!("engine={engine}")])
        .arg("--state-dir")
        .arg(work.join(format!("state-{engine}")))
        .arg("--json")
        .current_dir(repo_root())
        .env_remove("STAGEHAND_LOG")
        .output()
        .await
        .expect("run prepare");
    assert_eq!(
        out.status.code(),
        Some(0),
        "prepare with {engine} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for side in ["new", "ren", "del"] {
        let left: Vec<_> = crate::support::files_in(&copy)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == side))
            .collect();
        assert!(
            left.is_empty(),
            "{engine}: side files left after prepare: {left:?}"
        );
    }
    let server = SandboxServer::start(SandboxOptions::new(
        &copy,
        work.join(format!("run-{engine}")),
    ))
    .await
    .unwrap_or_else(|e| panic!("no server starts on the backup prepared by {engine}: {e}"));
    let mut conn = Conn::new(server.opts("root", "")).await.expect("connect");
    let tables = rows_by_table(&mut conn).await;
    let orphans: Vec<String> = conn
        .query("SELECT name FROM information_schema.innodb_sys_tables WHERE name LIKE 'd/%#sql%'")
        .await
        .unwrap_or_default();
    assert!(
        orphans.is_empty(),
        "{engine}: temporary tables left: {orphans:?}"
    );
    let _ = conn.disconnect().await;
    let _ = server.kill().await;
    tables
}

/// `mariadb-backup --prepare` run directly on a copy of the backup, then a server on it.
async fn raw_mariadb_backup_tables(backup: &Path, work: &Path) -> BTreeMap<String, (u64, u64)> {
    let copy = work.join("restore-raw");
    copy_tree(backup, &copy);
    let bin = stagehand_mariadb::sandbox::binaries::find_binary("mariadb-backup")
        .expect("mariadb-backup is installed (apt-get install mariadb-backup)");
    let out = tokio::process::Command::new(&bin)
        .arg("--prepare")
        .arg(format!("--target-dir={}", copy.display()))
        .output()
        .await
        .expect("run mariadb-backup");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("completed OK!"),
        "mariadb-backup --prepare:\n{text}"
    );
    let server = SandboxServer::start(SandboxOptions::new(&copy, work.join("run-raw")))
        .await
        .unwrap_or_else(|e| {
            panic!("no server starts after a raw mariadb-backup --prepare: {e}\n{text}")
        });
    let mut conn = Conn::new(server.opts("root", "")).await.expect("connect");
    let tables = rows_by_table(&mut conn).await;
    let _ = conn.disconnect().await;
    let _ = server.kill().await;
    tables
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ddl_during_a_copy_under_start_is_reconciled_exactly() {
    ddl_after_the_innodb_copy_restores_exactly(false).await;
}

/// The same DDL, seen first by the catch-up pass under START: it copies the rebuilt and
/// created tablespaces early, and the pass under BLOCK_DDL only renames and drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_catch_up_pass_leaves_nothing_to_copy_under_block_ddl() {
    ddl_after_the_innodb_copy_restores_exactly(true).await;
}

/// A server with the binary log on (a backup records its GTID) and an empty schema `d`.
async fn binlog_server(name: &str) -> TestServer {
    let server = TestServer::builder()
        .name(name)
        .runtime_option("log-bin", Some("binlog"))
        .runtime_option("server-id", Some("1"))
        .start()
        .await;
    server.exec("CREATE DATABASE d").await;
    server
}

/// A [`binlog_server`] with the tables of [`create_tables`].
async fn server_with_tables(name: &str) -> TestServer {
    let server = binlog_server(name).await;
    create_tables(&server).await;
    server
}

/// InnoDB tables, and MyISAM and Aria ones, in schema `d`, with rows.
async fn create_tables(server: &TestServer) {
    let tables = [
        ("keep", "InnoDB"),
        ("gone", "InnoDB"),
        ("rebuilt", "InnoDB"),
        ("trunc", "InnoDB"),
        ("opt", "InnoDB"),
        ("s1", "InnoDB"),
        ("s2", "InnoDB"),
        ("m_ren", "MyISAM"),
        ("m_gone", "MyISAM"),
        ("m_trunc", "MyISAM"),
        ("m_written", "MyISAM"),
        ("a_ren", "Aria"),
    ];
    for (t, engine) in tables {
        server
            .exec(&format!(
                "CREATE TABLE d.{t} (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE={engine}"
            ))
            .await;
        server
            .exec(&format!(
                "INSERT INTO d.{t} SELECT seq, CONCAT('{t}-', seq) FROM d.seq_1_to_3000"
            ))
            .await;
    }
}

/// DDL on tables already copied: renames (and a swap), drops, rebuilds, TRUNCATE, a new
/// table, on InnoDB, MyISAM and Aria tables, with DML after them.
async fn run_ddl(server: &TestServer) {
    for sql in [
        "RENAME TABLE d.keep TO d.kept",
        "DROP TABLE d.gone",
        "ALTER TABLE d.rebuilt FORCE",
        "UPDATE d.rebuilt SET v = CONCAT(v, '+') WHERE id % 7 = 0",
        "TRUNCATE TABLE d.trunc",
        "INSERT INTO d.trunc SELECT seq, 'after' FROM d.seq_1_to_50",
        "OPTIMIZE TABLE d.opt",
        "RENAME TABLE d.s1 TO d.tmp, d.s2 TO d.s1, d.tmp TO d.s2",
        "CREATE TABLE d.fresh (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB",
        "INSERT INTO d.fresh SELECT seq, 'fresh' FROM d.seq_1_to_500",
        "RENAME TABLE d.m_ren TO d.m_ren2",
        "INSERT INTO d.m_ren2 VALUES (5000, 'after rename')",
        "DROP TABLE d.m_gone",
        "TRUNCATE TABLE d.m_trunc",
        "INSERT INTO d.m_trunc SELECT seq, 'after' FROM d.seq_1_to_20",
        "INSERT INTO d.m_written SELECT seq, 'more' FROM d.seq_3001_to_3500",
        "RENAME TABLE d.a_ren TO d.a_ren2",
        "UPDATE d.a_ren2 SET v = 'updated' WHERE id < 100",
        "CREATE TABLE d.m_fresh (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=MyISAM",
        "INSERT INTO d.m_fresh SELECT seq, 'fresh' FROM d.seq_1_to_10",
    ] {
        server.exec(sql).await;
    }
}

/// A run of [`gated_after_copies_plan`] (plans/full-backup.yaml, gated after the copies),
/// started and waiting at its gate: the test runs its DDL, then [`Gated::finish`].
struct Gated {
    dir: tempfile::TempDir,
    flag: PathBuf,
    target: PathBuf,
    stderr: PathBuf,
    child: tokio::process::Child,
}

/// How a gated run ended: its exit code, its JSON report, its log.
struct Ended {
    code: Option<i32>,
    stdout: Vec<u8>,
    log: String,
}

impl Gated {
    async fn start(server: &TestServer, catch_up: bool, params: &[&str]) -> Gated {
        let dir = tempfile::tempdir().expect("tempdir");
        let flag = dir.path().join("gate-open");
        let plan = gated_after_copies_plan(dir.path(), &flag, catch_up);
        let (target, state) = (dir.path().join("backup"), dir.path().join("state"));
        let stderr = dir.path().join("stagehand.stderr");
        let mut child = spawn_backup(&plan, server, &target, &state, params, &stderr);
        wait_for_start(&mut child, &state, "gate").await;
        Gated {
            dir,
            flag,
            target,
            stderr,
            child,
        }
    }

    /// Opens the gate and waits for the run to end; keeps the directory.
    async fn finish(self) -> (Ended, tempfile::TempDir, PathBuf) {
        std::fs::write(&self.flag, b"").expect("open the gate");
        let out = tokio::time::timeout(Duration::from_secs(300), self.child.wait_with_output())
            .await
            .expect("the backup finishes")
            .expect("wait for stagehand");
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let ended = Ended {
            code: out.status.code(),
            stdout: out.stdout,
            log,
        };
        (ended, self.dir, self.target)
    }
}

async fn ddl_after_the_innodb_copy_restores_exactly(catch_up: bool) {
    let server = server_with_tables("reconcile").await;
    // verify's test restore starts a server on a scratch copy with the DDL applied.
    let gated = Gated::start(&server, catch_up, &["prepare=false", "test_restore=true"]).await;
    // The copies are done and only START is held: these change copied files.
    run_ddl(&server).await;
    // The server's own DDL log (the fallback when the redo log is encrypted) names them.
    let logged = stagehand_mariadb::ddl_log::read(server.datadir()).expect("ddl.log under START");
    for (kind, table) in [("RENAME", "keep"), ("DROP", "gone"), ("CREATE", "fresh")] {
        assert!(
            logged
                .iter()
                .any(|e| e.kind == kind && e.db == "d" && e.table == table && e.is_innodb()),
            "ddl.log has {kind} d.{table}: {logged:?}"
        );
    }
    let mut conn = server.conn().await;
    let expected = rows_by_table(&mut conn).await;
    let (out, dir, target) = gated.finish().await;
    assert_eq!(out.code, Some(0), "the backup failed:\n{}", out.log);
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let outputs_of = |id: &str| {
        report["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["id"] == id))
            .map(|s| s["outputs"].clone())
            .unwrap_or_else(|| panic!("{id} in the report"))
    };
    let rec = outputs_of("reconcile");
    // The non-InnoDB tables changed by the DDL are copied again by the first pass that
    // sees them; the files of m_ren, a_ren and m_gone leave the backup.
    let tables_pass = outputs_of(if catch_up { "catch_up" } else { "reconcile" });
    assert!(
        tables_pass["tables"].as_u64() >= Some(6) && tables_pass["removed"].as_u64() >= Some(7),
        "{tables_pass}"
    );
    let checked = outputs_of("verify");
    assert_eq!(
        checked["rows"]["d.kept"], 3000,
        "verify's test restore: {checked}"
    );
    assert_eq!(
        checked["rows"]["d.fresh"], 500,
        "verify's test restore: {checked}"
    );
    assert!(checked["rows"].get("d.gone").is_none(), "{checked}");
    // Rebuilt: rebuilt, trunc, opt; created: fresh. Renamed: keep, s1, s2. Dropped: gone.
    // With a catch-up pass, those four are copied early (as `d/#sh-<id>.ibd`) and renamed
    // under BLOCK_DDL over the stale copies, which go.
    let (recopied, renamed, deleted, changes) = if catch_up {
        let early = outputs_of("catch_up");
        assert_eq!(early["files"], 4, "{early}");
        (0, 7, 4, 11)
    } else {
        (4, 3, 1, 8)
    };
    assert_eq!(rec["files"], recopied, "{rec}");
    assert_eq!(
        (&rec["renamed"], &rec["deleted"]),
        (&Value::from(renamed), &Value::from(deleted)),
        "{rec}"
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(target.join("stagehand.json")).expect("manifest"),
    )
    .expect("manifest JSON");
    assert!(
        manifest["ddl"]["changes"]
            .as_array()
            .is_some_and(|c| c.len() == changes),
        "{}",
        manifest["ddl"]
    );
    for engine in ["mariadbd", "mariadb-backup"] {
        let got = restored_tables(&target, dir.path(), engine).await;
        assert_eq!(
            got, expected,
            "{engine}: the restored tables are the source's after the DDL"
        );
    }
    // Never locked into stagehand: mariadb-backup run by hand applies the same changes
    // from the marker files.
    let got = raw_mariadb_backup_tables(&target, dir.path()).await;
    assert_eq!(got, expected, "raw mariadb-backup --prepare");
}

/// S3 credentials for moto, and a short retry backoff.
const S3_ENV: &[(&str, &str)] = &[
    ("STAGEHAND_S3_ACCESS_KEY_ID", "testing-key"),
    ("STAGEHAND_S3_SECRET_ACCESS_KEY", "testing-secret"),
    ("STAGEHAND_S3_RETRY_BASE_MS", "20"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// plans/backup-to-s3.yaml with a gate between the copies and the catch-up pass.
fn streamed_plan(dir: &Path, flag: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("plans/backup-to-s3.yaml"))
        .expect("plans/backup-to-s3.yaml");
    let mut plan: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let steps = plan
        .get_mut("steps")
        .and_then(serde_yaml::Value::as_sequence_mut)
        .expect("steps");
    insert_gate(steps, "catch_up", "copy_innodb", flag, 2400);
    crate::support::add_need(steps, "gate", "copy_other");
    let path = dir.join("streamed.yaml");
    std::fs::write(&path, serde_yaml::to_string(&plan).expect("YAML")).expect("write plan");
    path
}

/// The DDL of [`run_ddl`] during a streamed backup (plans/backup-to-s3.yaml, to moto):
/// InnoDB files leave as they are copied, so the reconcile can only add files (and
/// markers) and drop non-InnoDB ones from the manifest. Restored with plans/restore.yaml
/// (fetch, verify, prepare, copy_back), the tables are exactly the source's after the DDL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ddl_during_a_streamed_copy_is_reconciled_exactly() {
    let moto = stagehand_testkit::s3::MotoServer::shared();
    let bucket = stagehand_testkit::s3::unique_bucket("reconcile");
    moto.create_bucket(&bucket).await.expect("create bucket");
    let repository = format!("s3://{bucket}/db1");
    let server = server_with_tables("reconcile-s3").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let flag = dir.path().join("ddl-done");
    let plan = streamed_plan(dir.path(), &flag);
    let state = dir.path().join("state");
    let stderr = dir.path().join("stagehand.stderr");
    let sets = [
        format!("socket={}", server.socket().display()),
        format!("datadir={}", server.datadir().display()),
        "user=root".to_string(),
        format!("repository={repository}"),
        format!("endpoint={}", moto.endpoint()),
        "path_style=true".to_string(),
        format!("spool={}", dir.path().join("spool").display()),
    ];
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_stagehand"));
    cmd.arg("run").arg(&plan);
    for s in &sets {
        cmd.args(["--set", s]);
    }
    let mut child = cmd
        .arg("--state-dir")
        .arg(&state)
        .arg("--json")
        .current_dir(repo_root())
        .env_remove("STAGEHAND_LOG")
        .envs(S3_ENV.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(
            std::fs::File::create(&stderr).expect("stderr file"),
        ))
        .kill_on_drop(true)
        .spawn()
        .expect("start stagehand");
    wait_for_start(&mut child, &state, "gate").await;
    run_ddl(&server).await;
    let mut conn = server.conn().await;
    let expected = rows_by_table(&mut conn).await;
    let _ = conn.disconnect().await;
    std::fs::write(&flag, b"").expect("open the gate");
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("the backup finishes")
        .expect("wait for stagehand");
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the streamed backup failed:\n{err}"
    );

    let datadir = dir.path().join("datadir");
    let socket = dir.path().join("s/c.sock");
    let restored = tokio::task::block_in_place(|| {
        let sets = [
            format!("repository={repository}"),
            format!("endpoint={}", moto.endpoint()),
            "path_style=true".to_string(),
            format!("workdir={}", dir.path().join("fetched").display()),
            format!("datadir={}", datadir.display()),
            format!("check_socket={}", socket.display()),
        ];
        let mut args = vec!["run", "plans/restore.yaml"];
        for s in &sets {
            args.extend(["--set", s.as_str()]);
        }
        let restore_state = dir.path().join("state-restore");
        let restore_state = restore_state.display().to_string();
        args.extend(["--state-dir", restore_state.as_str(), "--json"]);
        crate::cli::stagehand_env(&args, S3_ENV)
    });
    assert_eq!(
        restored.code, 0,
        "restore failed\n{}\n{}",
        restored.stdout, restored.stderr
    );
    let sandbox = SandboxServer::start(
        SandboxOptions::new(&datadir, dir.path().join("run-check")).option("skip-log-bin", None),
    )
    .await
    .expect("a server starts on the restored datadir");
    let mut rconn = Conn::new(sandbox.admin_opts())
        .await
        .expect("connect to the restored server");
    let got = rows_by_table(&mut rconn).await;
    let _ = rconn.disconnect().await;
    let _ = sandbox
        .shutdown(stagehand_mariadb::sandbox::ShutdownMode::Fast)
        .await;
    assert_eq!(
        got, expected,
        "the restored tables are the source's after the DDL"
    );
}

/// ALTER TABLE … DISCARD TABLESPACE, then IMPORT TABLESPACE of another table's exported
/// file, during the copy: the imported pages were written without the redo log, so the
/// log cannot bring the copy to them. The backup either fails naming the table, or
/// restores exactly; it never restores wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn import_tablespace_during_the_copy_fails_or_restores_exactly() {
    let server = binlog_server("reconcile-import").await;
    for (t, rows) in [("src", 2000), ("t", 3000)] {
        server
            .exec(&format!(
                "CREATE TABLE d.{t} (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB"
            ))
            .await;
        server
            .exec(&format!(
                "INSERT INTO d.{t} SELECT seq, CONCAT('{t}-', seq) FROM d.seq_1_to_{rows}"
            ))
            .await;
    }
    let gated = Gated::start(&server, false, &["prepare=false"]).await;
    let db = server.datadir().join("d");
    let export = gated.dir.path().join("export");
    std::fs::create_dir_all(&export).expect("export dir");
    let mut c = server.conn().await;
    c.query_drop("FLUSH TABLES d.src FOR EXPORT")
        .await
        .expect("export");
    for ext in ["ibd", "cfg"] {
        std::fs::copy(
            db.join(format!("src.{ext}")),
            export.join(format!("t.{ext}")),
        )
        .expect("copy the exported file");
    }
    c.query_drop("UNLOCK TABLES").await.expect("unlock");
    c.query_drop("ALTER TABLE d.t DISCARD TABLESPACE")
        .await
        .expect("discard");
    for ext in ["ibd", "cfg"] {
        std::fs::copy(export.join(format!("t.{ext}")), db.join(format!("t.{ext}")))
            .expect("place the file to import");
    }
    c.query_drop("ALTER TABLE d.t IMPORT TABLESPACE")
        .await
        .expect("import");
    let expected = rows_by_table(&mut c).await;
    let _ = c.disconnect().await;
    let (out, dir, target) = gated.finish().await;
    let err = out.log;
    eprintln!("backup exit {:?}:\n{err}", out.code);
    if out.code == Some(0) {
        for engine in ["mariadbd", "mariadb-backup"] {
            let got = restored_tables(&target, dir.path(), engine).await;
            assert_eq!(
                got, expected,
                "{engine}: a backup that completed restores exactly"
            );
        }
    } else {
        assert!(
            err.contains("d/t.ibd") && err.contains("IMPORT TABLESPACE"),
            "the failure names the table and the statement: {err}"
        );
        assert!(!target.join("stagehand.json").exists());
    }
}

/// An ALTER TABLE … ALGORITHM=COPY running across BLOCK_DDL: its copy phase is not
/// blocked, so its temporary tablespace (`#sql-alter-…`) is alive when DDL stops, and
/// its final rename waits for END, after the backup's commit point. The backup holds the
/// table as it was before the ALTER, restores exactly with both engines, and leaves no
/// temporary table behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alter_copy_running_across_block_ddl_restores_without_it() {
    let server = binlog_server("reconcile-alter-copy").await;
    server
        .exec("CREATE TABLE d.big (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB")
        .await;
    for chunk in 0..10 {
        server
            .exec(&format!(
                "INSERT INTO d.big SELECT seq, REPEAT('x', 90) FROM d.seq_{}_to_{}",
                chunk * 30_000 + 1,
                (chunk + 1) * 30_000
            ))
            .await;
    }
    let mut conn = server.conn().await;
    let expected = rows_by_table(&mut conn).await;
    let gated = Gated::start(&server, false, &["prepare=false"]).await;
    let opts = server.opts();
    let alter = tokio::spawn(async move {
        let mut c = Conn::new(opts).await.expect("connect");
        c.query_drop("SET SESSION lock_wait_timeout = 300")
            .await
            .expect("set");
        let r = c
            .query_drop("ALTER TABLE d.big ADD COLUMN c INT NOT NULL DEFAULT 7, ALGORITHM=COPY")
            .await;
        let _ = c.disconnect().await;
        r.map_err(|e| e.to_string())
    });
    // Until the ALTER's temporary table exists: it is copying rows.
    let t0 = std::time::Instant::now();
    loop {
        let copying: Vec<String> = conn
            .query(
                "SELECT name FROM information_schema.innodb_sys_tables WHERE name LIKE 'd/#sql%'",
            )
            .await
            .unwrap_or_default();
        if !copying.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the ALTER never started copying"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (out, dir, target) = gated.finish().await;
    assert_eq!(out.code, Some(0), "the backup failed:\n{}", out.log);
    let altered = alter.await.expect("alter task");
    assert!(altered.is_ok(), "the ALTER finished after END: {altered:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    eprintln!(
        "reconcile: {}",
        report["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["id"] == "reconcile"))
            .map(|s| s["outputs"].clone())
            .unwrap_or_default()
    );
    let _ = conn.disconnect().await;
    for engine in ["mariadbd", "mariadb-backup"] {
        let got = restored_tables(&target, dir.path(), engine).await;
        assert_eq!(got, expected, "{engine}: the table as before the ALTER");
    }
}

/// A server whose redo log is encrypted: the file operations of DDL cannot be read from
/// it, so the pass under BLOCK_DDL relies on the server's DDL log. InnoDB DDL during the
/// copy fails the backup naming the table and the plan to use instead; DDL on other
/// engines only is reconciled as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encrypted_redo_log_refuses_innodb_ddl_during_the_copy_only() {
    let keys = tempfile::tempdir().expect("tempdir");
    let key_file = keys.path().join("keys.txt");
    std::fs::write(
        &key_file,
        "1;a7addd9adea9978fda19f21e6be987880e68ac92632ca052e5bb42b1a506939a\n",
    )
    .expect("key file");
    let key_file = key_file.display().to_string();
    let server = TestServer::builder()
        .name("reconcile-encrypted")
        .option("plugin-load-add", Some("file_key_management"))
        .option("file-key-management-filename", Some(key_file.as_str()))
        .option("innodb-encrypt-log", Some("ON"))
        .runtime_option("log-bin", Some("binlog"))
        .runtime_option("server-id", Some("1"))
        .start()
        .await;
    server.exec("CREATE DATABASE d").await;
    server
        .exec("CREATE TABLE d.i (id INT PRIMARY KEY) ENGINE=InnoDB")
        .await;
    server
        .exec("CREATE TABLE d.m (id INT PRIMARY KEY) ENGINE=MyISAM")
        .await;
    server.exec("INSERT INTO d.m VALUES (1), (2)").await;
    for (n, ddl, innodb) in [
        (1, "RENAME TABLE d.m TO d.m2", false),
        (
            2,
            "CREATE TABLE d.fresh (id INT PRIMARY KEY) ENGINE=InnoDB",
            true,
        ),
    ] {
        let gated = Gated::start(&server, false, &["prepare=false"]).await;
        server.exec(ddl).await;
        let (out, _dir, target) = gated.finish().await;
        // The log, and the report (which carries the step's hint).
        let err = out.log + &String::from_utf8_lossy(&out.stdout);
        if innodb {
            assert_eq!(out.code, Some(1), "run {n} ({ddl}): {err}");
            assert!(
                err.contains("the redo log is encrypted")
                    && err.contains("d.fresh")
                    && err.contains("full-backup-hold-ddl.yaml"),
                "run {n}: the failure names the table and the other plan: {err}"
            );
            assert!(!target.join("stagehand.json").exists());
        } else {
            assert_eq!(out.code, Some(0), "run {n} ({ddl}): {err}");
            let manifest: Value = serde_json::from_str(
                &std::fs::read_to_string(target.join("stagehand.json")).expect("manifest"),
            )
            .expect("manifest JSON");
            let paths: Vec<&str> = manifest["files"]
                .as_array()
                .map(|f| f.iter().filter_map(|f| f["path"].as_str()).collect())
                .unwrap_or_default();
            assert!(
                paths.contains(&"d/m2.MYD") && !paths.iter().any(|p| p.starts_with("d/m.")),
                "run {n}: the renamed MyISAM table is in the backup under its new name: {paths:?}"
            );
        }
    }
}
