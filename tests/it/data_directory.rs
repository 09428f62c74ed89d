//! Tables with DATA DIRECTORY (issue 14, M7): their tablespaces live outside the
//! datadir, named by `.isl` files. A backup under START with DDL and writes on them
//! (a rename, a rebuild, a new table, a partitioned table) must restore exactly through
//! both prepare engines, and neither prepare (nor verify's test restore) may open the
//! source's live files: the redo log names them by absolute path. copy_back puts them
//! back where a map says, or into the datadir, and never over an existing file.

use crate::support::{
    copy_tree, gated_after_copies_plan, rows_by_table, run_plan, spawn_backup, wait_for_start,
    write_plan, PlanRun,
};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde_json::Value;
use stagehand_mariadb::sandbox::{SandboxOptions, SandboxServer};
use stagehand_testkit::TestServer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// InnoDB tables in `fast` (one partitioned, one to rename, one to rebuild) and one in
/// the datadir.
async fn create_tables(server: &TestServer, fast: &Path) {
    let dd = format!("DATA DIRECTORY = '{}'", fast.display());
    server.exec("CREATE DATABASE d").await;
    for t in ["r1", "r2", "r3"] {
        server
            .exec(&format!(
                "CREATE TABLE d.{t} (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB {dd}"
            ))
            .await;
    }
    server
        .exec(&format!(
            "CREATE TABLE d.rp (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB \
             PARTITION BY RANGE (id) (PARTITION p0 VALUES LESS THAN (1500) {dd}, \
             PARTITION p1 VALUES LESS THAN MAXVALUE {dd})"
        ))
        .await;
    server
        .exec("CREATE TABLE d.loc (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB")
        .await;
    for t in ["r1", "r2", "r3", "rp", "loc"] {
        server
            .exec(&format!(
                "INSERT INTO d.{t} SELECT seq, CONCAT('{t}-', seq) FROM d.seq_1_to_3000"
            ))
            .await;
    }
}

/// After the copy, under START: DDL on the remote tables and writes to all of them.
async fn change_tables(server: &TestServer, fast: &Path) {
    let dd = format!("DATA DIRECTORY = '{}'", fast.display());
    for sql in [
        "RENAME TABLE d.r2 TO d.r2b".to_string(),
        "ALTER TABLE d.r3 FORCE".into(),
        format!("CREATE TABLE d.rnew (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB {dd}"),
        "INSERT INTO d.rnew SELECT seq, 'new' FROM d.seq_1_to_700".into(),
        "UPDATE d.r1 SET v = CONCAT(v, '+') WHERE id % 3 = 0".into(),
        "DELETE FROM d.r1 WHERE id > 2900".into(),
        "UPDATE d.rp SET v = 'moved' WHERE id % 5 = 0".into(),
        "INSERT INTO d.rp SELECT seq, 'late' FROM d.seq_3001_to_3400".into(),
        "UPDATE d.r2b SET v = 'renamed' WHERE id < 100".into(),
        "UPDATE d.r3 SET v = 'rebuilt' WHERE id < 100".into(),
        "UPDATE d.loc SET v = 'local' WHERE id < 100".into(),
    ] {
        server.exec(&sql).await;
    }
}

/// Writes to two remote tables (r2, rp) while the copy runs, until stopped.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Writer {
    async fn start(server: &TestServer) -> Writer {
        use std::sync::atomic::Ordering;
        let mut conn = server.conn().await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                let (id, row) = (10_000 + n, 1 + n % 3000);
                for sql in [
                    format!("INSERT INTO d.r2 VALUES ({id}, 'during')"),
                    format!("UPDATE d.rp SET v = 'w{n}' WHERE id = {row}"),
                ] {
                    conn.query_drop(sql).await.expect("write during the copy");
                }
                n += 1;
            }
            let _ = conn.disconnect().await;
            n
        });
        Writer { stop, task }
    }

    /// Stops it; how many rounds it wrote.
    async fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("writer")
    }
}

/// Hash and mtime of every tablespace file below `dir`.
fn fingerprints(dir: &Path) -> BTreeMap<PathBuf, (String, std::time::SystemTime)> {
    crate::support::files_in(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "ibd"))
        .map(|p| {
            let (_, hash) = stagehand_host::digest::hash_file(&p).expect("hash a remote file");
            let mtime = std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .expect("mtime");
            (p, (hash, mtime))
        })
        .collect()
}

fn run_in(work: &Path, name: &str, plan: &str, sets: &[String]) -> PlanRun {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let plan = write_plan(&dir, name, plan);
    tokio::task::block_in_place(|| run_plan(&dir, &plan, sets, &[]))
}

fn prepare(work: &Path, backup: &Path, engine: &str) -> (PathBuf, PlanRun) {
    let copy = work.join(format!("prepared-{engine}"));
    copy_tree(backup, &copy);
    let plan = format!(
        "version: 1\nname: prep\nsteps:\n  - id: prepare\n    uses: prepare\n    with: {{target: \"{}\", engine: {engine}}}\n",
        copy.display()
    );
    let r = run_in(work, &format!("prepare-{engine}"), &plan, &[]);
    (copy, r)
}

fn copy_back(work: &Path, name: &str, from: &Path, datadir: &Path, extra: &str) -> PlanRun {
    let plan = format!(
        "version: 1\nname: cb\nsteps:\n  - id: copy_back\n    uses: copy_back\n    with: {{from: \"{}\", datadir: \"{}\"{extra}}}\n",
        from.display(),
        datadir.display()
    );
    run_in(work, name, &plan, &[])
}

async fn restored_tables(datadir: &Path, run: &Path) -> BTreeMap<String, (u64, u64)> {
    let server = SandboxServer::start(SandboxOptions::new(datadir, run))
        .await
        .unwrap_or_else(|e| panic!("no server starts on {}: {e}", datadir.display()));
    let mut conn = Conn::new(server.opts("root", "")).await.expect("connect");
    let tables = rows_by_table(&mut conn).await;
    let _ = conn.disconnect().await;
    let _ = server.kill().await;
    tables
}

/// A backup target inside a DATA DIRECTORY is refused before anything is copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_target_inside_a_data_directory_is_refused() {
    let work = tempfile::tempdir().expect("tempdir");
    let fast = work.path().join("fast");
    std::fs::create_dir_all(&fast).expect("mkdir fast");
    let server = TestServer::builder().name("datadir-inside").start().await;
    create_tables(&server, &fast).await;
    let flag = work.path().join("gate");
    std::fs::write(&flag, b"").expect("open the gate");
    let plan = gated_after_copies_plan(work.path(), &flag, false);
    let inside = fast.join("backup");
    let stderr = work.path().join("refused.stderr");
    let refused = spawn_backup(
        &plan,
        &server,
        &inside,
        &work.path().join("state"),
        &["prepare=false"],
        &stderr,
    );
    let out = refused.wait_with_output().await.expect("wait");
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert_ne!(
        out.status.code(),
        Some(0),
        "a target inside a DATA DIRECTORY"
    );
    assert!(err.contains("inside the server's DATA DIRECTORY"), "{err}");
    assert!(!inside.join("d").exists(), "nothing was copied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_directory_tables_back_up_and_restore_without_touching_the_live_files() {
    restores_exactly_and_leaves_the_live_files_alone(false).await;
}

/// The same, with the catch-up pass copying the rebuilt and new remote tablespaces
/// early (as `d/#sh-<id>.ibd`, from their DATA DIRECTORY).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_directory_tables_seen_first_by_the_catch_up_pass() {
    restores_exactly_and_leaves_the_live_files_alone(true).await;
}

async fn restores_exactly_and_leaves_the_live_files_alone(catch_up: bool) {
    let work = tempfile::tempdir().expect("tempdir");
    let fast = work.path().join("fast");
    std::fs::create_dir_all(&fast).expect("mkdir fast");
    let server = TestServer::builder().name("datadir-remote").start().await;
    create_tables(&server, &fast).await;
    let flag = work.path().join("ddl-done");
    let plan = gated_after_copies_plan(work.path(), &flag, catch_up);
    let (target, state) = (work.path().join("backup"), work.path().join("state"));
    let stderr = work.path().join("stagehand.stderr");
    // verify's test restore starts mariadbd (crash recovery) on an unprepared copy.
    let writer = Writer::start(&server).await;
    let mut child = spawn_backup(
        &plan,
        &server,
        &target,
        &state,
        &["prepare=false", "test_restore=true"],
        &stderr,
    );
    wait_for_start(&mut child, &state, "gate").await;
    let written = writer.stop().await;
    assert!(written > 0, "the writer wrote during the copy");
    change_tables(&server, &fast).await;
    let mut conn = server.conn().await;
    let expected = rows_by_table(&mut conn).await;
    // No write reaches the remote files from here on: FOR EXPORT flushes them and
    // holds them still while the backups are prepared.
    std::fs::write(&flag, b"").expect("open the gate");
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("the backup finishes")
        .expect("wait for stagehand");
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "the backup failed:\n{err}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let outputs_of = |id: &str| {
        report["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["id"] == id))
            .map(|s| s["outputs"].clone())
            .unwrap_or_else(|| panic!("{id} in the report"))
    };
    // r3 (rebuilt) and rnew (created) are copied again from their DATA DIRECTORY: by
    // the catch-up pass when there is one, else under BLOCK_DDL.
    let rec = outputs_of("reconcile");
    if catch_up {
        assert_eq!(outputs_of("catch_up")["files"], 2, "{rec}");
        assert_eq!(rec["files"], 0, "{rec}");
    } else {
        assert_eq!(rec["files"], 2, "{rec}");
        assert_eq!(rec["renamed"], 1, "r2 → r2b: {rec}");
    }
    let verify = outputs_of("verify");
    assert_eq!(verify["rows"]["d.rnew"], 700, "test restore: {verify}");
    assert_eq!(
        verify["rows"]["d.r2b"], expected["r2b"].0,
        "test restore: {verify}"
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(target.join("stagehand.json")).expect("manifest"),
    )
    .expect("manifest JSON");
    let remote_of = |path: &str| {
        manifest["files"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["path"] == path))
            .map(|f| f["remote"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        remote_of("d/r1.ibd"),
        Value::from(fast.join("d/r1.ibd").display().to_string())
    );
    assert_eq!(
        remote_of("d/rp#P#p0.ibd"),
        Value::from(fast.join("d/rp#P#p0.ibd").display().to_string())
    );
    assert_eq!(remote_of("d/loc.ibd"), Value::Null);

    conn.query_drop("FLUSH TABLES d.r1, d.r2b, d.r3, d.rnew, d.rp FOR EXPORT")
        .await
        .expect("FLUSH TABLES FOR EXPORT");
    let before = fingerprints(&fast);
    assert!(before.len() >= 6, "{before:?}");

    // mariadb-backup --prepare (RESTORE mode), then restored to another directory.
    let (prepared, r) = prepare(work.path(), &target, "mariadb-backup");
    assert_eq!(r.code, 0, "prepare with mariadb-backup: {}", r.output());
    let (data1, fast2) = (work.path().join("data1"), work.path().join("fast2"));
    let map = format!(
        ", data_directories: {{\"{}\": \"{}\"}}",
        fast.display(),
        fast2.display()
    );
    let r = copy_back(work.path(), "cb-map", &prepared, &data1, &map);
    assert_eq!(r.code, 0, "copy_back with a map: {}", r.output());
    let isl = std::fs::read_to_string(data1.join("d/r1.isl")).expect("restored .isl");
    assert_eq!(isl, fast2.join("d/r1.ibd").display().to_string());
    assert!(fast2.join("d/rp#P#p1.ibd").exists());
    let got = restored_tables(&data1, &work.path().join("run1")).await;
    assert_eq!(got, expected, "mariadb-backup + map: the source's rows");

    // mariadbd crash recovery in a private mount namespace, restored into the datadir.
    let (prepared, r) = prepare(work.path(), &target, "mariadbd");
    assert_eq!(r.code, 0, "prepare with mariadbd: {}", r.output());
    assert!(!prepared.join(".stagehand-remote").exists());
    let data2 = work.path().join("data2");
    let r = copy_back(
        work.path(),
        "cb-datadir",
        &prepared,
        &data2,
        ", data_directories: datadir",
    );
    assert_eq!(r.code, 0, "copy_back into the datadir: {}", r.output());
    assert!(!data2.join("d/r1.isl").exists() && data2.join("d/r1.ibd").exists());
    let got = restored_tables(&data2, &work.path().join("run2")).await;
    assert_eq!(got, expected, "mariadbd + datadir: the source's rows");

    // By default the files go back where they were: the live ones are there.
    let data3 = work.path().join("data3");
    let r = copy_back(work.path(), "cb-default", &prepared, &data3, "");
    assert_ne!(r.code, 0, "copy_back over the live files: {}", r.output());
    assert!(r.output().contains("would overwrite it"), "{}", r.output());

    // A DATA DIRECTORY that cannot be hidden here (it does not exist): refused before
    // the backup changes at all.
    let odd = work.path().join("odd");
    copy_tree(&target, &odd);
    std::fs::write(odd.join("d/r1.isl"), "/nonexistent-stagehand/d/r1.ibd").expect("isl");
    let manifest_before = std::fs::read(odd.join("stagehand.json")).expect("manifest");
    let plan = format!(
        "version: 1\nname: prep\nsteps:\n  - id: prepare\n    uses: prepare\n    with: {{target: \"{}\", engine: mariadbd}}\n",
        odd.display()
    );
    let r = run_in(work.path(), "prepare-odd", &plan, &[]);
    assert_ne!(r.code, 0, "{}", r.output());
    assert!(
        r.output().contains("cannot be used on this host"),
        "{}",
        r.output()
    );
    assert_eq!(
        std::fs::read(odd.join("stagehand.json")).expect("manifest"),
        manifest_before,
        "nothing changed"
    );

    assert_eq!(
        fingerprints(&fast),
        before,
        "the source's DATA DIRECTORY files are untouched"
    );
    conn.query_drop("UNLOCK TABLES").await.expect("unlock");
    let _ = conn.disconnect().await;
}
