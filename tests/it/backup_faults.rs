//! Fault and stress tests of the hot backup: `plans/full-backup.yaml` (or a copy of it
//! with a slowed copy step) run through the CLI binary against a throwaway server, with
//! `--set prepare=false`. Each test breaks something while the backup runs (the backup
//! process killed, the server stopped, DDL, a tiny redo log under heavy writes, a lock
//! budget running out, a table growing by hundreds of MB) and checks exactly what is
//! left: the server's locks, the backup directory, the exit code and the report, and,
//! when the backup succeeds, its consistency (a server started on a copy of it).

use crate::cli::repo_root;
use crate::support::{
    add_need, backup_plan, copy_tree, hold_ddl, insert_gate, journal_in, spawn_backup, with_of,
    yaml,
};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde_json::Value;
use stagehand_backup::manifest::{Manifest, ManifestError, MANIFEST_FILE};
use stagehand_mariadb::sandbox::{SandboxOptions, SandboxServer, ShutdownMode};
use stagehand_testkit::TestServer;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

// ---------------------------------------------------------------------------------------
// Plans

/// The backup plan with the InnoDB copy limited to `rate` per second.
fn slow_copy_plan(dir: &Path, rate: &str) -> PathBuf {
    backup_plan(dir, |steps| {
        with_of(steps, "copy_innodb").insert(yaml("max_rate"), yaml(rate));
    })
}

/// docs/examples/full-backup-hold-ddl.yaml (BLOCK_DDL held through the copy) with the
/// InnoDB copy limited to `rate` per second.
fn slow_hold_ddl_plan(dir: &Path, rate: &str) -> PathBuf {
    backup_plan(dir, |steps| {
        hold_ddl(steps);
        with_of(steps, "copy_innodb").insert(yaml("max_rate"), yaml(rate));
    })
}

// ---------------------------------------------------------------------------------------
// Servers and data

/// A server with the binary log on (the backup records a GTID position).
async fn server_with_binlog(name: &str, extra: &[(&str, &str)]) -> TestServer {
    let mut b = TestServer::builder()
        .name(name)
        .runtime_option("log-bin", Some("binlog"))
        .runtime_option("server-id", Some("1"));
    for (k, v) in extra {
        b = b.option(k, Some(v));
    }
    b.start().await
}

/// `app.<table>` with `rows` rows of ~4 KB (three to a 16 KiB page: ~5.3 MB per 1000
/// rows on disk).
async fn big_table(server: &TestServer, table: &str, rows: u64) {
    server.exec("CREATE DATABASE IF NOT EXISTS app").await;
    server
        .exec(&format!(
            "CREATE TABLE app.{table} (id INT PRIMARY KEY, pad VARCHAR(4000) NOT NULL, \
             v INT NOT NULL DEFAULT 0) ENGINE=InnoDB"
        ))
        .await;
    if rows > 0 {
        server
            .exec(&format!(
                "INSERT INTO app.{table} (id, pad) SELECT seq, REPEAT(CHAR(65 + seq % 26), 4000) \
                 FROM app.seq_1_to_{rows}"
            ))
            .await;
    }
}

/// The sequence number of the last GTID of a position like `0-1-42` (single domain).
fn gtid_seq(pos: &str) -> u64 {
    let last = pos.split(',').next_back().unwrap_or("").trim();
    last.rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a GTID position: {pos:?}"))
}

// ---------------------------------------------------------------------------------------
// Running stagehand

struct Backup {
    child: tokio::process::Child,
    state: PathBuf,
    target: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

struct Finished {
    code: Option<i32>,
    signal: Option<i32>,
    report: Value,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Finished {
    fn step(&self, id: &str) -> &Value {
        self.report["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["id"] == id))
            .unwrap_or_else(|| panic!("step {id} in the report: {}", self.report))
    }

    fn error(&self, id: &str) -> String {
        self.step(id)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Each step: id, status, error (for messages).
    fn summary(&self) -> String {
        self.report["steps"]
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .map(|s| {
                        format!(
                            "  {} {} {}",
                            s["id"].as_str().unwrap_or("?"),
                            s["status"].as_str().unwrap_or("?"),
                            s["error"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_else(|| format!("no report; stdout: {}", self.stdout))
    }
}

/// Starts `stagehand run PLAN` for a backup of `server` into `dir/backup`.
fn start_backup(server: &TestServer, dir: &Path, plan: &Path) -> Backup {
    let state = dir.join("state");
    let target = dir.join("backup");
    let stderr = dir.join("stagehand.stderr");
    let child = spawn_backup(plan, server, &target, &state, &["prepare=false"], &stderr);
    Backup {
        child,
        state,
        target,
        stderr,
        started: Instant::now(),
    }
}

impl Backup {
    fn pid(&self) -> u32 {
        self.child.id().expect("stagehand is running")
    }

    fn journal(&self) -> Vec<Value> {
        journal_in(&self.state)
    }

    /// Waits for a journal event of a step; panics after `timeout`, or when stagehand
    /// exits first.
    async fn wait_for(&mut self, event: &str, step: &str, timeout: Duration) -> Value {
        let t0 = Instant::now();
        loop {
            if let Some(e) = find_event(&self.journal(), event, step) {
                return e;
            }
            let exited = self.child.try_wait().expect("try_wait");
            assert!(
                t0.elapsed() < timeout && exited.is_none(),
                "no {event} of {step} after {:?} (stagehand exited: {exited:?}); journal so far:\n{}\nstderr:\n{}",
                t0.elapsed(),
                self.journal()
                    .iter()
                    .map(|e| format!("  {} {} {} {}", e["ts"], e["event"], e["step"], e["error"]))
                    .collect::<Vec<_>>()
                    .join("\n"),
                tail(&std::fs::read_to_string(&self.stderr).unwrap_or_default(), 30)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for stagehand to exit (killed after `timeout`: the test fails).
    async fn finish(self, timeout: Duration) -> Finished {
        let Backup {
            child,
            stderr,
            started,
            ..
        } = self;
        let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(r) => r.expect("wait for stagehand"),
            // Dropping the future drops the child: kill_on_drop.
            Err(_) => panic!(
                "stagehand did not finish within {timeout:?}; stderr:\n{}",
                tail(&std::fs::read_to_string(&stderr).unwrap_or_default(), 40)
            ),
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        use std::os::unix::process::ExitStatusExt;
        Finished {
            code: out.status.code(),
            signal: out.status.signal(),
            report: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr: std::fs::read_to_string(&stderr).unwrap_or_default(),
            elapsed: started.elapsed(),
        }
    }
}

fn find_event(journal: &[Value], event: &str, step: &str) -> Option<Value> {
    journal
        .iter()
        .find(|e| e["event"] == event && e["step"] == step)
        .cloned()
}

/// The time of a journal event (`ts`, RFC 3339 with milliseconds).
fn event_time(journal: &[Value], event: &str, step: &str) -> SystemTime {
    let e = find_event(journal, event, step).unwrap_or_else(|| panic!("{event} {step} in journal"));
    let ts = e["ts"].as_str().expect("ts");
    humantime::parse_rfc3339_weak(ts).unwrap_or_else(|err| panic!("ts {ts}: {err}"))
}

/// `a - b` in seconds (negative when `a` is earlier).
fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Asserts the directory is not a complete backup: no manifest, and reading it as a
/// backup fails with "no stagehand.json"; prepare.yaml (when it exists) refuses it too.
fn assert_not_a_backup(target: &Path) {
    assert!(
        !target.join(MANIFEST_FILE).exists(),
        "{} exists after a failed backup",
        target.join(MANIFEST_FILE).display()
    );
    match Manifest::read(target) {
        Err(ManifestError::Missing { .. }) => {}
        other => panic!("reading the failed backup as a backup: {other:?}"),
    }
    let prepare = repo_root().join("plans/prepare.yaml");
    if prepare.exists() {
        let state = target.with_extension("prepare-state");
        let r = crate::cli::stagehand(&[
            "run",
            prepare.to_str().expect("utf-8"),
            "--set",
            &format!("target={}", target.display()),
            "--state-dir",
            state.to_str().expect("utf-8"),
            "--json",
        ]);
        assert_eq!(
            r.code, 1,
            "prepare.yaml on an incomplete backup must fail\n{}\n{}",
            r.stdout, r.stderr
        );
        assert!(
            r.stdout.contains("no stagehand.json"),
            "prepare says why it refuses: {}",
            r.stdout
        );
        assert!(!target.join(MANIFEST_FILE).exists());
    }
}

/// Processes whose command line mentions `needle` (the test's unique temp dir).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if pid == std::process::id().to_string() {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && !is_zombie(pid) {
            out.push(format!("{pid}: {cmd}"));
        }
    }
    out
}

fn is_zombie(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        // Gone is as good as a zombie.
        .unwrap_or(true)
}

/// Runs a DDL with `lock_wait_timeout = 2` on a new session; returns how long it took.
async fn quick_ddl(server: &TestServer, sql: &str) -> Duration {
    let mut c = server.conn().await;
    c.query_drop("SET SESSION lock_wait_timeout = 2")
        .await
        .expect("set lock_wait_timeout");
    let t0 = Instant::now();
    c.query_drop(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql} failed (a lock left held?): {e}"));
    let took = t0.elapsed();
    let _ = c.disconnect().await;
    took
}

// ---------------------------------------------------------------------------------------
// Checking a backup: a server started on a copy of it (crash recovery applies the redo)

struct Restored {
    server: Option<SandboxServer>,
    _dir: tempfile::TempDir,
}

impl Restored {
    /// Copies the backup, prepares the copy with plans/prepare.yaml (engine: mariadbd:
    /// the server's own crash recovery, after the side files a reconcile leaves for DDL
    /// run during the copy are applied) and starts mariadbd on it.
    async fn start(backup: &Path) -> Restored {
        let dir = tempfile::Builder::new()
            .prefix("stagehand-restored-")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        copy_tree(backup, &data);
        let target = format!("target={}", data.display());
        let state = dir.path().join("state").display().to_string();
        let prepared = tokio::task::block_in_place(|| {
            crate::cli::stagehand(&[
                "run",
                "plans/prepare.yaml",
                "--set",
                &target,
                "--set",
                "engine=mariadbd",
                "--state-dir",
                &state,
            ])
        });
        assert_eq!(
            prepared.code, 0,
            "the backup does not prepare:\n{}",
            prepared.stderr
        );
        let opts = SandboxOptions::new(&data, dir.path().join("run"))
            .option("innodb_buffer_pool_size", Some("256M"))
            .start_timeout(Duration::from_secs(120));
        let server = SandboxServer::start(opts)
            .await
            .unwrap_or_else(|e| panic!("mariadbd does not start on a copy of the backup: {e}"));
        Restored {
            server: Some(server),
            _dir: dir,
        }
    }

    fn server(&self) -> &SandboxServer {
        self.server.as_ref().expect("running")
    }

    async fn conn(&self) -> Conn {
        Conn::new(self.server().opts("root", ""))
            .await
            .expect("connect to the restored server")
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.server().error_log()).unwrap_or_default()
    }

    /// `[ERROR]` lines of its error log.
    fn errors(&self) -> Vec<String> {
        self.error_log()
            .lines()
            .filter(|l| l.contains("[ERROR]"))
            .map(String::from)
            .collect()
    }

    async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            let status = s.shutdown(ShutdownMode::Fast).await.expect("shutdown");
            assert!(status.success(), "the restored server stopped cleanly");
        }
    }
}

/// The binlog position InnoDB recovered from the backup ("Last binlog file './binlog.000001',
/// position 847" in the error log of the restored server).
fn recovered_binlog_position(log: &str) -> Option<(String, u64)> {
    let line = log.lines().find(|l| l.contains("Last binlog file"))?;
    let file = line
        .split('\'')
        .nth(1)?
        .trim_start_matches("./")
        .to_string();
    let pos = line.rsplit("position ").next()?.trim().parse().ok()?;
    Some((file, pos))
}

// ---------------------------------------------------------------------------------------
// Writers: sessions that commit in a loop and record (GTID seq, state) after each commit

/// After each commit of one writer: the GTID sequence number and the table's row count.
#[derive(Debug, Clone, Copy)]
struct Commit {
    seq: u64,
    rows: u64,
}

/// The row count a backup at GTID `seq` must hold, from a writer's commits (`initial`
/// before its first one).
fn rows_at(commits: &[Commit], initial: u64, seq: u64) -> u64 {
    commits
        .iter()
        .filter(|c| c.seq <= seq)
        .max_by_key(|c| c.seq)
        .map_or(initial, |c| c.rows)
}

/// One heavy writer on `app.<table>` (which holds a counter row id 0 and nothing else at
/// the start): each transaction inserts `batch` rows of 4000 bytes, rewrites `batch`
/// older rows and bumps the counter, so `COUNT(*) = 1 + batch * v` always.
async fn heavy_writer(
    server_opts: mysql_async::Opts,
    table: String,
    batch: u64,
    stop: Arc<AtomicBool>,
) -> Vec<Commit> {
    let mut c = Conn::new(server_opts).await.expect("writer connects");
    let mut commits = Vec::new();
    let mut next = 1u64;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let ch = 65 + round % 26;
        let last = next + batch - 1;
        let old_from = if next > batch {
            1 + (round * 7919) % (next - batch)
        } else {
            1
        };
        let txn = [
            "BEGIN".to_string(),
            format!(
                "INSERT INTO app.{table} (id, pad) SELECT seq, REPEAT(CHAR({ch}), 4000) \
                 FROM app.seq_{next}_to_{last}"
            ),
            format!(
                "UPDATE app.{table} SET pad = REPEAT(CHAR({ch}), 4000) \
                 WHERE id BETWEEN {old_from} AND {}",
                old_from + batch - 1
            ),
            format!("UPDATE app.{table} SET v = v + 1 WHERE id = 0"),
            "COMMIT".to_string(),
        ];
        for sql in &txn {
            c.query_drop(sql)
                .await
                .unwrap_or_else(|e| panic!("writer {table}: {sql}: {e}"));
        }
        let gtid: Option<String> = c.query_first("SELECT @@last_gtid").await.expect("gtid");
        next = last + 1;
        commits.push(Commit {
            seq: gtid_seq(&gtid.unwrap_or_default()),
            rows: last + 1,
        });
    }
    let _ = c.disconnect().await;
    commits
}

// ---------------------------------------------------------------------------------------
// 1. SIGKILL mid-copy

/// What a backup killed mid-copy left.
struct Killed {
    target: PathBuf,
    state: PathBuf,
}

/// Starts a backup of `server` (InnoDB copy at `rate`), checks that DDL goes on while it
/// copies (only BACKUP STAGE START is held), and kills it with SIGKILL well before the
/// copy ends.
async fn kill_mid_copy(server: &TestServer, dir: &Path, rate: &str) -> Killed {
    let plan = slow_copy_plan(dir, rate);
    let mut backup = start_backup(server, dir, &plan);
    backup
        .wait_for("step_started", "copy_innodb", Duration::from_secs(30))
        .await;
    // Well into the copy: the session holds START, files are half copied.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // START blocks no DDL: this one does not wait for the backup lock.
    let created = {
        let mut c = server.conn().await;
        c.query_drop("SET SESSION lock_wait_timeout = 1")
            .await
            .expect("set");
        let r = c
            .query_drop("CREATE TABLE app.before_kill (id INT PRIMARY KEY)")
            .await;
        let _ = c.disconnect().await;
        r
    };
    assert!(
        created.is_ok(),
        "a DDL during the copy goes through: {created:?}"
    );
    assert!(
        find_event(&backup.journal(), "step_finished", "copy_innodb").is_none(),
        "the copy is still running when stagehand is killed"
    );
    let pid = backup.pid();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let target = backup.target.clone();
    let state = backup.state.clone();
    let fin = backup.finish(Duration::from_secs(10)).await;
    assert_eq!((fin.code, fin.signal), (None, Some(9)), "killed by SIGKILL");
    Killed { target, state }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_copy_releases_the_locks_and_leaves_no_backup() {
    let server = server_with_binlog("fault-sigkill", &[]).await;
    big_table(&server, "big", 20_000).await; // ~107 MB: ~6 s at 20 MiB/s
    let dir = tempfile::tempdir().expect("tempdir");
    let Killed { target, state } = kill_mid_copy(&server, dir.path(), "20MiB").await;

    // The server notices the closed socket at once: the backup lock is free (another
    // backup can start), and DDL is not blocked.
    {
        let mut c = server.conn().await;
        c.query_drop("SET SESSION lock_wait_timeout = 5")
            .await
            .expect("set");
        for stage in ["BACKUP STAGE START", "BACKUP STAGE END"] {
            c.query_drop(stage)
                .await
                .unwrap_or_else(|e| panic!("{stage} after the kill: {e}"));
        }
        let _ = c.disconnect().await;
    }
    let t_create = quick_ddl(&server, "CREATE TABLE app.after_kill (id INT PRIMARY KEY)").await;
    let t_alter = quick_ddl(&server, "ALTER TABLE app.big ADD COLUMN c INT").await;
    let t_drop = quick_ddl(&server, "DROP TABLE app.after_kill").await;
    eprintln!("after SIGKILL: CREATE {t_create:?}, ALTER {t_alter:?}, DROP {t_drop:?}");
    for (what, t) in [("CREATE", t_create), ("ALTER", t_alter), ("DROP", t_drop)] {
        assert!(t < Duration::from_secs(1), "{what} took {t:?}");
    }
    // Nor are commits or MyISAM writes (BACKUP STAGE END was never sent: the session's
    // death released everything).
    server
        .exec("INSERT INTO app.big (id, pad) VALUES (900001, 'after')")
        .await;
    let waiting: Vec<(u64, String)> = server
        .query(
            "SELECT ID, COALESCE(STATE, '') FROM information_schema.PROCESSLIST \
             WHERE ID <> CONNECTION_ID() AND STATE LIKE '%backup%'",
        )
        .await;
    assert!(waiting.is_empty(), "{waiting:?}");

    // What the killed run left: a half-made directory that nothing takes for a backup.
    let copied = std::fs::metadata(target.join("app/big.ibd"))
        .map(|m| m.len())
        .unwrap_or(0);
    let source = std::fs::metadata(server.datadir().join("app/big.ibd"))
        .map(|m| m.len())
        .unwrap_or(0);
    eprintln!("big.ibd copied {copied} of {source} bytes before the kill");
    assert!(copied < source, "the copy was interrupted mid-way");
    let journal = journal_in(&state);
    assert!(
        !journal.iter().any(|e| e["event"] == "run_finished"),
        "a killed run writes no run_finished"
    );
    assert_not_a_backup(&target);
    assert!(
        processes_mentioning(&dir.path().display().to_string()).is_empty(),
        "nothing of the killed run keeps running"
    );
}

/// `stagehand run plans/full-backup.yaml` of `server` into `target`, unprepared.
fn unprepared_backup_into(
    server: &TestServer,
    target: &Path,
    state: &Path,
    json: bool,
) -> crate::cli::Run {
    let plan = repo_root().join("plans/full-backup.yaml");
    let sets = [
        format!("socket={}", server.socket().display()),
        format!("datadir={}", server.datadir().display()),
        format!("target={}", target.display()),
        "prepare=false".to_string(),
    ];
    let mut args = vec!["run", plan.to_str().expect("utf-8")];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    args.extend(["--state-dir", state.to_str().expect("utf-8")]);
    if json {
        args.push("--json");
    }
    crate::cli::stagehand(&args)
}

/// Whether a new session can take and release BACKUP STAGE START (only one backup at a
/// time: a lock left by a killed backup would block it).
async fn backup_lock_is_free(server: &TestServer) -> Result<(), String> {
    let mut c = server.conn().await;
    c.query_drop("SET SESSION lock_wait_timeout = 5")
        .await
        .expect("set");
    let mut result = Ok(());
    for stage in ["BACKUP STAGE START", "BACKUP STAGE END"] {
        if let Err(e) = c.query_drop(stage).await {
            result = Err(format!("{stage}: {e}"));
            break;
        }
    }
    let _ = c.disconnect().await;
    result
}

/// kill -9 in each phase of plans/full-backup.yaml past the copy: under START after the
/// catch-up pass, under BLOCK_DDL before and after `reconcile`, under BLOCK_COMMIT
/// before the Aria pass (a gate holds the run there). Each time no backup lock is left
/// (another backup can start; DDL and commits go through at once), nothing in the target
/// looks like a backup, and the next run into the same target succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_in_every_lock_phase_leaves_no_lock_and_no_backup() {
    let server = server_with_binlog("fault-phases", &[]).await;
    big_table(&server, "big", 2_000).await;
    let phases = [
        ("catch_up", "lock_ddl"),
        ("lock_ddl", "reconcile"),
        ("reconcile", "lock_commit"),
        ("lock_commit", "copy_aria"),
    ];
    for (n, (after, before)) in phases.into_iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let never = dir.path().join("never");
        let plan = backup_plan(dir.path(), |steps| {
            insert_gate(steps, before, after, &never, 2400);
        });
        let mut backup = start_backup(&server, dir.path(), &plan);
        backup
            .wait_for("step_started", "gate", Duration::from_secs(60))
            .await;
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &backup.pid().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let target = backup.target.clone();
        let fin = backup.finish(Duration::from_secs(10)).await;
        assert_eq!(fin.signal, Some(9), "killed after {after}");
        backup_lock_is_free(&server)
            .await
            .unwrap_or_else(|e| panic!("killed after {after}: a backup lock is left: {e}"));
        quick_ddl(
            &server,
            &format!("CREATE TABLE app.after_kill_{n} (id INT PRIMARY KEY)"),
        )
        .await;
        quick_ddl(&server, &format!("DROP TABLE app.after_kill_{n}")).await;
        server
            .exec(&format!(
                "INSERT INTO app.big (id, pad) VALUES ({}, 'after kill')",
                900_000 + n
            ))
            .await;
        assert_not_a_backup(&target);
        // The next run reclaims the killed run's directory and makes a backup.
        let again =
            unprepared_backup_into(&server, &target, &dir.path().join("state-again"), false);
        assert_eq!(
            again.code,
            0,
            "the run after a kill after {after}: {}",
            tail(&again.stderr, 20)
        );
        assert!(Manifest::read(&target).is_ok_and(|m| m.complete));
    }
}

/// The operator runs the backup again into the directory a killed run left, after a
/// table that run had copied was dropped. Either the half-made directory is refused, or
/// the new backup holds nothing of the old run: every file in it is in its manifest.
#[tokio::test(flavor = "multi_thread")]
async fn backup_run_again_into_a_killed_runs_directory_holds_nothing_of_it() {
    let server = server_with_binlog("fault-rerun", &[]).await;
    big_table(&server, "big", 12_000).await; // ~64 MB: ~6 s at 10 MiB/s
    big_table(&server, "doomed", 10).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let Killed { target, .. } = kill_mid_copy(&server, dir.path(), "10MiB").await;
    let leftovers: Vec<&str> = ["app/doomed.frm", "app/doomed.ibd"]
        .into_iter()
        .filter(|f| target.join(f).exists())
        .collect();
    eprintln!("files of app.doomed left by the killed run: {leftovers:?}");
    assert!(
        !leftovers.is_empty(),
        "the killed run had copied app.doomed (copy_other takes the .frm files first)"
    );
    server.exec("DROP TABLE app.doomed").await;
    let rerun_state = dir.path().join("state-rerun");
    let r = unprepared_backup_into(&server, &target, &rerun_state, true);
    eprintln!("backup run again into the same directory: exit {}", r.code);
    // The killed run's process is gone: its unsealed directory is reclaimed, so a
    // nightly job does not stall until someone removes it.
    assert_eq!(
        r.code, 0,
        "the rerun reclaims the killed run's directory: {}\n{}",
        r.stdout, r.stderr
    );
    assert!(
        r.stderr.contains("was interrupted") && r.stderr.contains("reused"),
        "the reclaim is logged: {}",
        r.stderr
    );
    {
        let manifest = Manifest::read(&target).expect("a complete backup");
        let stray = files_not_in_manifest(&target, &manifest);
        if !stray.is_empty() {
            // What a restore of this "complete" backup shows.
            let restored = Restored::start(&target).await;
            let mut c = restored.conn().await;
            let tables: Vec<String> = c.query("SHOW TABLES FROM app").await.expect("tables");
            let select = c
                .query_drop("SELECT * FROM app.doomed")
                .await
                .map_err(|e| e.to_string());
            drop(c);
            restored.stop().await;
            panic!(
                "the new backup, marked complete (and verified), holds files of the killed run \
                 that its manifest does not list: {stray:?}; restored, it shows tables {tables:?} \
                 and SELECT * FROM app.doomed gives {select:?}"
            );
        }
    }
}

/// Files under a complete backup that its manifest does not list (but the manifest).
fn files_not_in_manifest(target: &Path, manifest: &Manifest) -> Vec<String> {
    let listed: std::collections::BTreeSet<&str> =
        manifest.files.iter().map(|f| f.path.as_str()).collect();
    let mut stray = Vec::new();
    let mut todo = vec![target.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read backup dir").flatten() {
            let path = e.path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(target)
                .expect("under target")
                .display()
                .to_string();
            if rel != MANIFEST_FILE && !listed.contains(rel.as_str()) {
                stray.push(rel);
            }
        }
    }
    stray.sort();
    stray
}

// ---------------------------------------------------------------------------------------
// 2. The server stopped mid-backup

#[tokio::test(flavor = "multi_thread")]
async fn server_stopped_mid_copy_fails_the_backup_clearly() {
    let server = server_with_binlog("fault-shutdown", &[]).await;
    big_table(&server, "big", 20_000).await; // ~107 MB: ~11 s at 10 MiB/s
    let server_pid = server.pid();
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = slow_copy_plan(dir.path(), "10MiB");
    let mut backup = start_backup(&server, dir.path(), &plan);
    backup
        .wait_for("step_started", "copy_innodb", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let copied_before = std::fs::metadata(backup.target.join("app/big.ibd")).map_or(0, |m| m.len());
    let source_size =
        std::fs::metadata(server.datadir().join("app/big.ibd")).map_or(0, |m| m.len());
    let t_stop = Instant::now();
    {
        let mut c = server.conn().await;
        // The server may close the connection while it goes down.
        let r = c.query_drop("SHUTDOWN").await;
        eprintln!("SHUTDOWN: {r:?}");
    }
    // The server goes away even though a session holds BLOCK_DDL.
    let mut gone = false;
    while t_stop.elapsed() < Duration::from_secs(30) {
        if is_zombie(&server_pid.to_string()) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server_down = t_stop.elapsed();
    assert!(gone, "mariadbd did not exit within 30 s of SHUTDOWN");
    let target = backup.target.clone();
    let state = backup.state.clone();
    let fin = backup.finish(Duration::from_secs(60)).await;
    let after_stop = t_stop.elapsed();
    let after_down = after_stop.saturating_sub(server_down);
    eprintln!(
        "big.ibd: {copied_before} of {source_size} bytes copied at SHUTDOWN; server down {server_down:?} after SHUTDOWN; \
         stagehand exited {after_down:?} after the server was down ({:?} in all)\n{}",
        fin.elapsed,
        fin.summary()
    );
    assert_eq!(
        fin.code,
        Some(1),
        "a backup whose server went away fails with exit 1\n{}",
        tail(&fin.stderr, 30)
    );
    assert_eq!(fin.report["status"], "failed");
    assert_eq!(fin.step("seal")["status"], "skipped");
    // The liveness watch of the locking session notices the server is gone within about
    // a second; the steps working under the locks stop and say why, plainly.
    let journal = journal_in(&state);
    let failed: Vec<String> = journal
        .iter()
        .filter(|e| e["event"] == "step_finished" && e["status"] == "failed")
        .map(|e| format!("{}: {}", e["step"], e["error"]))
        .collect();
    eprintln!("failed steps in order:\n  {}", failed.join("\n  "));
    let first = failed.first().cloned().unwrap_or_default();
    assert!(
        first.contains("the server closed") && first.contains("(stopped, restarted or killed?)"),
        "the first failure says the server went away: {first}"
    );
    assert_ne!(
        fin.step("lock_commit")["status"],
        "succeeded",
        "no commit point is taken without the server"
    );
    // The redo copy does not pretend to have finished.
    assert_ne!(
        fin.step("redo")["status"],
        "succeeded",
        "{}",
        fin.error("redo")
    );
    assert_not_a_backup(&target);
    assert!(
        processes_mentioning(&dir.path().display().to_string()).is_empty(),
        "no process of the run is left"
    );
    assert!(
        processes_mentioning(&server.datadir().display().to_string()).is_empty(),
        "the server is gone"
    );
    // The copy step "stops at once if that session's backup locks are lost": the server
    // going away loses them, so the run must not go on copying for the rest of the copy
    // (here ~10 s at 10 MiB/s; hours on a real datadir).
    assert!(
        after_down < Duration::from_secs(3),
        "stagehand went on for {after_down:?} after the server (and the backup locks) were gone"
    );
}

// ---------------------------------------------------------------------------------------
// 3. DDL issued during the backup: with BLOCK_DDL held through the copy
// (docs/examples/full-backup-hold-ddl.yaml) it waits for END and is not in the backup;
// with plans/full-backup.yaml it goes through during the copy and is in the backup.

#[tokio::test(flavor = "multi_thread")]
async fn ddl_during_the_copy_waits_for_end_and_stays_out_of_the_backup() {
    let server = server_with_binlog("fault-ddl", &[]).await;
    big_table(&server, "big", 12_000).await; // ~64 MB: ~3.5 s at 20 MiB/s
    let rows_before: Option<u64> = server.query_first("SELECT COUNT(*) FROM app.big").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = slow_hold_ddl_plan(dir.path(), "20MiB");
    let mut backup = start_backup(&server, dir.path(), &plan);
    backup
        .wait_for("step_started", "copy_innodb", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ddl = Vec::new();
    for sql in [
        "ALTER TABLE app.big ADD COLUMN c INT",
        "CREATE TABLE app.new_t (id INT PRIMARY KEY) ENGINE=InnoDB",
    ] {
        let opts = server.opts();
        ddl.push(tokio::spawn(async move {
            let mut c = Conn::new(opts).await.expect("connect");
            c.query_drop("SET SESSION lock_wait_timeout = 120")
                .await
                .expect("set");
            let start = SystemTime::now();
            let r = c.query_drop(sql).await;
            let done = SystemTime::now();
            (sql, start, done, r.map_err(|e| e.to_string()))
        }));
    }
    // Both wait on the backup lock while the copy runs.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let waiting: Vec<(String, String)> = server
        .query(
            "SELECT COALESCE(STATE, ''), COALESCE(INFO, '') FROM information_schema.PROCESSLIST \
             WHERE INFO LIKE 'ALTER TABLE app.big%' OR INFO LIKE 'CREATE TABLE app.new_t%'",
        )
        .await;
    eprintln!("DDL during the copy: {waiting:?}");
    assert!(
        find_event(&backup.journal(), "step_finished", "copy_innodb").is_none(),
        "the copy was still running when the DDL was checked (make the table bigger)"
    );
    assert_eq!(waiting.len(), 2, "{waiting:?}");
    for (state, info) in &waiting {
        assert_eq!(state, "Waiting for backup lock", "{info}");
    }
    let fin = backup.finish(Duration::from_secs(60)).await;
    assert_eq!(
        fin.code,
        Some(0),
        "{}\n{}",
        fin.summary(),
        tail(&fin.stderr, 30)
    );
    let journal = journal_in(&dir.path().join("state"));
    let end_started = event_time(&journal, "step_started", "lock_end");
    let end_finished = event_time(&journal, "step_finished", "lock_end");
    let copy_finished = event_time(&journal, "step_finished", "copy_innodb");
    for h in ddl {
        let (sql, start, done, r) = h.await.expect("ddl task");
        assert!(r.is_ok(), "{sql}: {r:?}");
        let waited = secs_between(done, start);
        let after_end = secs_between(done, end_finished);
        eprintln!(
            "{sql}: waited {waited:.3} s; done {:.3} s after the copy finished, {after_end:+.3} s from lock_end's finish (END took {:.3} s)",
            secs_between(done, copy_finished),
            secs_between(end_finished, end_started)
        );
        // Journal times have millisecond resolution.
        assert!(
            secs_between(done, end_started) >= -0.002,
            "{sql} finished before BACKUP STAGE END was sent"
        );
        assert!(
            after_end < 1.0,
            "{sql} finished {after_end:.3} s after END: it should be right after"
        );
        assert!(
            waited > 1.0,
            "{sql} waited {waited:.3} s: it was not blocked"
        );
    }
    let manifest = Manifest::read(&fin_target(dir.path())).expect("the backup is complete");
    assert!(manifest.complete);
    assert_eq!(
        files_not_in_manifest(&fin_target(dir.path()), &manifest),
        Vec::<String>::new()
    );
    // BLOCK_DDL records where DDL stopped, at or before the commit point; `lsn` stays
    // the commit LSN. DDL was blocked from BLOCK_DDL to END, commits only from
    // BLOCK_COMMIT: the manifest keeps both.
    let out = |id: &str, key: &str| fin.step(id)["outputs"][key].clone();
    let ddl_lsn = out("lock_ddl", "ddl_lsn").as_u64().unwrap_or(0);
    let commit_lsn = out("lock_commit", "lsn").as_u64().unwrap_or(0);
    assert!(
        ddl_lsn > 0 && ddl_lsn <= commit_lsn,
        "ddl_lsn {ddl_lsn}, commit lsn {commit_lsn}"
    );
    assert_eq!(out("lock_ddl", "lsn").as_u64(), Some(0));
    assert_eq!(commit_lsn, manifest.lsn.commit);
    let ddl_blocked = out("lock_end", "ddl_blocked_ms").as_f64().unwrap_or(0.0);
    let commit_blocked = out("lock_end", "commit_blocked_ms").as_f64().unwrap_or(0.0);
    assert!(
        ddl_blocked >= commit_blocked && commit_blocked > 0.0,
        "DDL blocked {ddl_blocked} ms, commits {commit_blocked} ms"
    );
    assert_eq!(manifest.locks.ddl_blocked_ms, ddl_blocked);
    assert_eq!(manifest.locks.commit_blocked_ms, commit_blocked);
    assert!(
        !dir.path().join("backup/app/new_t.frm").exists()
            && !dir.path().join("backup/app/new_t.ibd").exists(),
        "no file of new_t in the backup"
    );
    // The live server has both changes; the backup has neither.
    let live_cols: Vec<String> = server
        .query("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA='app' AND TABLE_NAME='big' ORDER BY ORDINAL_POSITION")
        .await;
    assert_eq!(live_cols, ["id", "pad", "v", "c"]);
    let restored = Restored::start(&fin_target(dir.path())).await;
    let mut c = restored.conn().await;
    let cols: Vec<String> = c
        .query("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA='app' AND TABLE_NAME='big' ORDER BY ORDINAL_POSITION")
        .await
        .expect("columns");
    assert_eq!(cols, ["id", "pad", "v"], "the backup's big has no column c");
    let tables: Vec<String> = c.query("SHOW TABLES FROM app").await.expect("tables");
    assert_eq!(tables, ["big"], "no new_t in the backup");
    let rows: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM app.big")
        .await
        .expect("count");
    assert_eq!(rows, rows_before);
    let check: Vec<(String, String, String, String)> =
        c.query("CHECK TABLE app.big").await.expect("check");
    assert_eq!(check.last().map(|r| r.3.as_str()), Some("OK"), "{check:?}");
    drop(c);
    assert!(restored.errors().is_empty(), "{:?}", restored.errors());
    restored.stop().await;
}

/// plans/full-backup.yaml copies under START: the same DDL, issued during the copy,
/// does not wait for the backup lock and finishes while the copy still runs; the backup
/// holds the tables as the DDL left them (a rebuilt table, a new MyISAM table with rows,
/// a dropped one), checked on a server started on it.
#[tokio::test(flavor = "multi_thread")]
async fn ddl_during_the_copy_goes_through_and_is_in_the_backup() {
    let server = server_with_binlog("fault-ddl-start", &[]).await;
    big_table(&server, "big", 12_000).await; // ~64 MB: ~3.5 s at 20 MiB/s
    big_table(&server, "doomed", 10).await;
    let rows_before: Option<u64> = server.query_first("SELECT COUNT(*) FROM app.big").await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The catch-up pass (and BLOCK_DDL after it) waits until the DDL is done, whatever
    // the machine's load: otherwise BLOCK_DDL could come between two statements.
    let flag = dir.path().join("ddl-done");
    let plan = backup_plan(dir.path(), |steps| {
        with_of(steps, "copy_innodb").insert(yaml("max_rate"), yaml("20MiB"));
        insert_gate(steps, "catch_up", "copy_innodb", &flag, 2400);
    });
    let mut backup = start_backup(&server, dir.path(), &plan);
    backup
        .wait_for("step_started", "copy_innodb", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        find_event(&backup.journal(), "step_finished", "copy_innodb").is_none(),
        "the DDL starts while the copy runs (64 MB at 20 MiB/s)"
    );
    {
        let mut c = server.conn().await;
        c.query_drop("SET SESSION lock_wait_timeout = 1")
            .await
            .expect("set");
        for sql in [
            "ALTER TABLE app.big ADD COLUMN c INT NOT NULL DEFAULT 7, FORCE",
            "CREATE TABLE app.new_m (id INT PRIMARY KEY) ENGINE=MyISAM",
            "INSERT INTO app.new_m VALUES (1), (2), (3)",
            "DROP TABLE app.doomed",
        ] {
            c.query_drop(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql} during the copy: {e}"));
        }
        let _ = c.disconnect().await;
    }
    std::fs::write(&flag, b"").expect("flag");
    let fin = backup.finish(Duration::from_secs(120)).await;
    assert_eq!(
        fin.code,
        Some(0),
        "{}\n{}",
        fin.summary(),
        tail(&fin.stderr, 30)
    );
    let target = fin_target(dir.path());
    let manifest = Manifest::read(&target).expect("the backup is complete");
    assert_eq!(
        files_not_in_manifest(&target, &manifest),
        Vec::<String>::new()
    );
    let restored = Restored::start(&target).await;
    let mut c = restored.conn().await;
    let cols: Vec<String> = c
        .query("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA='app' AND TABLE_NAME='big' ORDER BY ORDINAL_POSITION")
        .await
        .expect("columns");
    assert_eq!(
        cols,
        ["id", "pad", "v", "c"],
        "the backup's big was rebuilt with c"
    );
    let tables: Vec<String> = c.query("SHOW TABLES FROM app").await.expect("tables");
    assert_eq!(tables, ["big", "new_m"], "new_m in the backup, doomed not");
    let rows: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM app.big WHERE c = 7")
        .await
        .expect("count");
    assert_eq!(rows, rows_before);
    let m: Vec<u32> = c
        .query("SELECT id FROM app.new_m ORDER BY id")
        .await
        .expect("new_m");
    assert_eq!(m, [1, 2, 3]);
    for t in ["app.big", "app.new_m"] {
        let check: Vec<(String, String, String, String)> =
            c.query(format!("CHECK TABLE {t}")).await.expect("check");
        assert_eq!(check.last().map(|r| r.3.as_str()), Some("OK"), "{check:?}");
    }
    drop(c);
    assert!(restored.errors().is_empty(), "{:?}", restored.errors());
    restored.stop().await;
}

fn fin_target(dir: &Path) -> PathBuf {
    dir.join("backup")
}

// ---------------------------------------------------------------------------------------
// 4. A tiny redo log under heavy writes

const WRITERS: usize = 4;
const BATCH: u64 = 8;

struct HeavyRun {
    server: TestServer,
    dir: tempfile::TempDir,
    fin: Finished,
    /// Each writer's commits.
    commits: Vec<Vec<Commit>>,
    /// Redo bytes the server wrote from just before the backup to its end.
    written: u64,
}

/// A server with an 8 MiB redo log, four heavy writers, and a backup (copy at 20 MiB/s)
/// taken while they write; `redo_poll` slows the redo copy's polling.
async fn heavy_writes_backup(name: &str, redo_poll: Option<&str>) -> HeavyRun {
    // Given to mariadb-install-db too: 10.11 would otherwise resize the log at start.
    let server = server_with_binlog(name, &[("innodb_log_file_size", "8M")]).await;
    let size: Option<u64> = server.query_first("SELECT @@innodb_log_file_size").await;
    assert_eq!(
        size,
        Some(8 << 20),
        "the server runs with an 8 MiB redo log"
    );
    big_table(&server, "big", 6_000).await; // ~32 MB
    for w in 0..WRITERS {
        big_table(&server, &format!("w{w}"), 0).await;
        server
            .exec(&format!(
                "INSERT INTO app.w{w} (id, pad) VALUES (0, 'counter')"
            ))
            .await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = backup_plan(dir.path(), |steps| {
        with_of(steps, "copy_innodb").insert(yaml("max_rate"), yaml("20MiB"));
        if let Some(poll) = redo_poll {
            with_of(steps, "redo").insert(yaml("poll"), yaml(poll));
        }
    });
    let lsn = "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
               WHERE VARIABLE_NAME = 'INNODB_LSN_CURRENT'";
    let lsn0: Option<u64> = server.query_first(lsn).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(heavy_writer(
                server.opts(),
                format!("w{w}"),
                BATCH,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let backup = start_backup(&server, dir.path(), &plan);
    let fin = backup.finish(Duration::from_secs(120)).await;
    stop.store(true, Ordering::Relaxed);
    let mut commits = Vec::new();
    for w in writers {
        commits.push(w.await.expect("writer"));
    }
    let lsn1: Option<u64> = server.query_first(lsn).await;
    let written = lsn1.unwrap_or(0) - lsn0.unwrap_or(0);
    let secs = fin.elapsed.as_secs_f64() + 0.5;
    eprintln!(
        "heavy writes: {} commits, {:.1} MB of redo in {secs:.1} s ({:.1} MB/s) through an 8 MiB log; stagehand exit {:?} after {:?}\n{}",
        commits.iter().map(Vec::len).sum::<usize>(),
        written as f64 / 1e6,
        written as f64 / 1e6 / secs,
        fin.code,
        fin.elapsed,
        fin.summary()
    );
    HeavyRun {
        server,
        dir,
        fin,
        commits,
        written,
    }
}

/// A complete backup taken under the heavy writers: each writer's table holds exactly
/// the rows committed at the backup's GTID, and CHECK TABLE passes.
async fn assert_heavy_backup_consistent(run: &HeavyRun) {
    let target = fin_target(run.dir.path());
    let manifest = Manifest::read(&target).expect("complete backup");
    assert_eq!(
        files_not_in_manifest(&target, &manifest),
        Vec::<String>::new()
    );
    let seq = gtid_seq(&manifest.binlog.gtid_binlog_pos);
    let restored = Restored::start(&target).await;
    let mut c = restored.conn().await;
    for (w, list) in run.commits.iter().enumerate() {
        let expected = rows_at(list, 1, seq);
        let (rows, v): (u64, u64) = c
            .query_first(format!(
                "SELECT COUNT(*), (SELECT v FROM app.w{w} WHERE id = 0) FROM app.w{w}"
            ))
            .await
            .expect("count")
            .expect("row");
        eprintln!("w{w}: {rows} rows in the backup at GTID seq {seq}, expected {expected}");
        assert_eq!(rows, expected, "w{w} at GTID {seq}");
        assert_eq!(rows, 1 + BATCH * v, "w{w}: rows and counter agree");
        let check: Vec<(String, String, String, String)> = c
            .query(format!("CHECK TABLE app.w{w}"))
            .await
            .expect("check");
        assert_eq!(check.last().map(|r| r.3.as_str()), Some("OK"), "{check:?}");
    }
    drop(c);
    assert!(restored.errors().is_empty(), "{:?}", restored.errors());
    restored.stop().await;
}

/// A run that failed because the redo copy was overwritten: the error, its figures and
/// hint, nothing sealed, no lock left.
async fn assert_overwrite_failure(run: &HeavyRun) {
    let fin = &run.fin;
    assert_eq!(fin.code, Some(1));
    let err = fin.error("redo");
    assert!(
        err.contains("the server overwrote redo log that was not copied yet"),
        "the redo copy names the overwrite: {err}"
    );
    // "the copy reached LSN X, but the server is already at LSN Y (Z bytes ahead) and
    // its circular log holds only 8 MiB"
    let num_after = |key: &str| -> u64 {
        err.split(key)
            .nth(1)
            .and_then(|r| {
                r.trim_start()
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or_else(|| panic!("`{key}` and a number in: {err}"))
    };
    let reached = num_after("the copy reached LSN");
    let server_at = num_after("the server is already at LSN");
    let ahead = num_after("(");
    assert!(server_at > reached, "{err}");
    assert_eq!(server_at - reached, ahead, "{err}");
    // Overwritten means lapped: at least one capacity (8 MiB log minus its header) ahead.
    assert!(ahead >= 8 * 1024 * 1024 - 12288, "{err}");
    assert!(err.contains("holds only 8 MiB"), "{err}");
    let hint = fin.step("redo")["hint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let all = format!("{err} {hint} {}", fin.stderr);
    assert!(
        all.contains("raise innodb_log_file_size (now 8 MiB)"),
        "the hint names the setting: {hint}"
    );
    // Every `stagehand run --option` the hint sends the reader to must exist.
    let help = crate::cli::stagehand(&["run", "--help"]).stdout;
    for part in hint.split("stagehand run ").skip(1) {
        let option: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if option.starts_with("--") {
            // The option as a whole word (help puts a space or a line break after it).
            let listed = help.match_indices(option.as_str()).any(|(at, _)| {
                !help[at + option.len()..]
                    .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
            });
            assert!(
                listed,
                "the hint names `stagehand run {option}`, which does not exist: {hint}"
            );
        }
    }
    assert_eq!(fin.step("seal")["status"], "skipped");
    assert_eq!(fin.step("lock_end")["status"], "succeeded");
    assert_not_a_backup(&fin_target(run.dir.path()));
    let t = quick_ddl(&run.server, "ALTER TABLE app.big ADD COLUMN c INT").await;
    assert!(
        t < Duration::from_secs(1),
        "DDL after the failed run took {t:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tiny_redo_log_under_heavy_writes_gives_a_good_backup_or_a_clear_failure() {
    let run = heavy_writes_backup("fault-tiny-redo", None).await;
    let redo_error = run.fin.error("redo");
    match run.fin.code {
        Some(0) => {
            eprintln!(
                "case: SUCCESS; redo outputs {}",
                run.fin.step("redo")["outputs"]
            );
            assert!(
                run.written > 3 * (8 << 20),
                "the writers wrote {} bytes of redo during the backup: not enough to wrap the 8 MiB log several times",
                run.written
            );
            assert_heavy_backup_consistent(&run).await;
        }
        Some(1) if redo_error.contains("overwrote redo log") => {
            eprintln!("case: OVERWRITE; redo error: {redo_error}");
            assert_overwrite_failure(&run).await;
        }
        other => panic!(
            "exit {other:?}: neither a consistent backup nor the redo overwrite error\n{}\n{}",
            run.fin.summary(),
            tail(&run.fin.stderr, 30)
        ),
    }
}

/// The same with the redo copy polling every 3 s once it has caught up: the server
/// writes more than its whole 8 MiB log meanwhile, and the copy must notice.
#[tokio::test(flavor = "multi_thread")]
async fn tiny_redo_log_overwritten_before_it_was_copied_fails_the_backup() {
    let run = heavy_writes_backup("fault-redo-overwrite", Some("3s")).await;
    eprintln!("redo error: {}", run.fin.error("redo"));
    assert_eq!(
        run.fin.code,
        Some(1),
        "the log wrapped while the copy slept: the backup must fail\n{}",
        run.fin.summary()
    );
    assert_overwrite_failure(&run).await;
}

// ---------------------------------------------------------------------------------------
// 5. A max_hold budget running out

#[tokio::test(flavor = "multi_thread")]
async fn block_commit_budget_releases_commits_and_fails_the_backup() {
    let server = server_with_binlog("fault-budget", &[]).await;
    big_table(&server, "big", 1_000).await;
    let dir = tempfile::tempdir().expect("tempdir");
    const HOLD_SECS: u64 = 8;
    let plan = backup_plan(dir.path(), |steps| {
        with_of(steps, "lock_commit").insert(yaml("max_hold"), yaml("{block_commit: 200ms}"));
        let pos = steps
            .iter()
            .position(|s| s.get("id").and_then(serde_yaml::Value::as_str) == Some("lock_end"))
            .expect("lock_end");
        // `when: always`: END waits for it even when the budget's release fails the
        // Aria copy under BLOCK_COMMIT (on a loaded machine) and the run with it.
        steps.insert(
            pos,
            yaml(&format!(
                "{{id: hold, uses: exec, needs: [lock_commit], when: always, with: {{command: [sleep, \"{HOLD_SECS}\"]}}}}"
            )),
        );
        add_need(steps, "lock_end", "hold");
    });
    let mut backup = start_backup(&server, dir.path(), &plan);
    backup
        .wait_for("step_finished", "lock_commit", Duration::from_secs(30))
        .await;
    // Commits are blocked now, for at most the budget.
    let t0 = Instant::now();
    let mut c = server.conn().await;
    c.query_drop("INSERT INTO app.big (id, pad) VALUES (900001, 'during the budget')")
        .await
        .expect("insert");
    let commit_took = t0.elapsed();
    let committed_at = SystemTime::now();
    let _ = c.disconnect().await;
    let fin = backup.finish(Duration::from_secs(60)).await;
    eprintln!(
        "an INSERT started when lock_commit finished committed after {commit_took:?} (budget 200 ms, hold {HOLD_SECS} s)\n{}",
        fin.summary()
    );
    // The commit went through before END: the budget, not END, released it.
    let journal = journal_in(&dir.path().join("state"));
    let before_end = secs_between(
        event_time(&journal, "step_started", "lock_end"),
        committed_at,
    );
    eprintln!("the INSERT committed {before_end:.3} s before lock_end (END) started");
    assert!(
        before_end > 0.0,
        "commits resumed only with END ({before_end:.3} s): the budget did not release them"
    );
    assert_eq!(fin.code, Some(1), "{}", tail(&fin.stderr, 30));
    assert_eq!(fin.report["status"], "failed");
    let err = fin.error("lock_end");
    assert!(
        err.contains("BACKUP STAGE BLOCK_COMMIT was held longer than its budget of 200ms"),
        "lock_end reports the budget: {err}"
    );
    assert_eq!(fin.step("hold")["status"], "succeeded");
    assert_eq!(fin.step("seal")["status"], "skipped");
    assert!(
        fin.stderr.contains("held longer than its budget"),
        "the log says so when it happens"
    );
    assert_not_a_backup(&fin_target(dir.path()));
    let t = quick_ddl(&server, "ALTER TABLE app.big ADD COLUMN c INT").await;
    assert!(t < Duration::from_secs(1));
}

/// `max_hold: {block_ddl: …}` on `lock_ddl` of the hold-DDL plan, with a copy slow
/// enough to outlast it: the
/// locks are released (DDL waiting on them goes through), the copy stops, the backup
/// fails saying which budget ran out, and nothing looks like a backup.
#[tokio::test(flavor = "multi_thread")]
async fn block_ddl_budget_releases_ddl_and_fails_the_backup() {
    let server = server_with_binlog("fault-ddl-budget", &[]).await;
    big_table(&server, "big", 2_000).await; // ~11 MB, plus the system tablespace
    let dir = tempfile::tempdir().expect("tempdir");
    // At 1 MiB/s the InnoDB copy needs well over the 1 s budget.
    let plan = backup_plan(dir.path(), |steps| {
        hold_ddl(steps);
        with_of(steps, "lock_ddl").insert(yaml("max_hold"), yaml("{block_ddl: 1s}"));
        with_of(steps, "copy_innodb").insert(yaml("max_rate"), yaml("1MiB"));
    });
    let mut backup = start_backup(&server, dir.path(), &plan);
    backup
        .wait_for("step_finished", "lock_ddl", Duration::from_secs(30))
        .await;
    // A DDL issued under BLOCK_DDL waits for the lock, which the budget releases.
    let opts = server.opts();
    let ddl = tokio::spawn(async move {
        let mut c = Conn::new(opts).await.expect("connect");
        c.query_drop("SET SESSION lock_wait_timeout = 120")
            .await
            .expect("set lock_wait_timeout");
        let r = c
            .query_drop("CREATE TABLE app.during_hold (id INT PRIMARY KEY) ENGINE=InnoDB")
            .await;
        let _ = c.disconnect().await;
        r.map_err(|e| e.to_string())
    });
    let fin = backup.finish(Duration::from_secs(120)).await;
    eprintln!("{}", fin.summary());
    let created = ddl.await.expect("ddl task");
    assert!(
        created.is_ok(),
        "the DDL waiting on BLOCK_DDL went through: {created:?}"
    );
    assert_eq!(fin.code, Some(1), "{}", tail(&fin.stderr, 30));
    assert_eq!(fin.report["status"], "failed");
    let budget =
        "BACKUP STAGE BLOCK_DDL was held longer than its budget of 1s (max_hold.block_ddl)";
    // The copy was cut short: it stops on the lost locks, or is cancelled when the redo
    // copy (which stops on them too) fails first; whichever fails says why.
    let copy = fin.step("copy_innodb")["status"].clone();
    assert!(
        copy == "failed" || copy == "cancelled",
        "copy_innodb {copy}"
    );
    let first = ["redo", "copy_innodb"]
        .iter()
        .map(|id| fin.error(id))
        .find(|e| e.contains(budget));
    assert!(
        first.is_some(),
        "the failing step says why: {}",
        fin.summary()
    );
    let err = fin.error("lock_end");
    assert!(err.contains(budget), "lock_end reports the budget: {err}");
    for id in ["lock_commit", "copy_aria", "seal"] {
        assert_eq!(fin.step(id)["status"], "skipped", "{id}");
    }
    assert!(
        fin.stderr.contains("held longer than its budget"),
        "the log says so when it happens"
    );
    assert_not_a_backup(&fin_target(dir.path()));
    // No lock is left: a DDL on the server goes through at once.
    quick_ddl(&server, "ALTER TABLE app.big ADD COLUMN c INT").await;
    quick_ddl(&server, "DROP TABLE app.during_hold").await;
}

// ---------------------------------------------------------------------------------------
// 6. A table that grows by hundreds of MB during the copy

#[tokio::test(flavor = "multi_thread")]
async fn table_growing_by_hundreds_of_mb_during_the_copy_is_backed_up_consistently() {
    let server = server_with_binlog("fault-growth", &[]).await;
    big_table(&server, "g", 10_000).await; // ~53 MB
    let initial: Option<u64> = server.query_first("SELECT COUNT(*) FROM app.g").await;
    let initial = initial.unwrap_or(0);
    let size0 = std::fs::metadata(server.datadir().join("app/g.ibd"))
        .map(|m| m.len())
        .unwrap_or(0);
    let dir = tempfile::tempdir().expect("tempdir");
    // The copy is slowed, and a gate keeps BLOCK_COMMIT back until the table has grown,
    // so that the whole growth falls between the copy's start and the commit point.
    let flag = dir.path().join("grown");
    let plan = backup_plan(dir.path(), |steps| {
        with_of(steps, "copy_innodb").insert(yaml("max_rate"), yaml("12MiB"));
        insert_gate(steps, "lock_commit", "lock_ddl", &flag, 1200);
    });
    let mut backup = start_backup(&server, dir.path(), &plan);
    backup
        .wait_for("step_started", "copy_innodb", Duration::from_secs(30))
        .await;
    // Grow g from 10k to 60k rows (+~270 MB): two doublings, then half again, each one
    // transaction; record the GTID and row count after each commit.
    let mut c = server.conn().await;
    let mut commits = Vec::new();
    let mut rows = initial;
    let grow_t0 = Instant::now();
    for add in [rows, 2 * rows, 2 * rows] {
        c.query_drop(format!(
            "INSERT INTO app.g (id, pad) SELECT id + {rows}, pad FROM app.g WHERE id <= {add}"
        ))
        .await
        .expect("grow");
        let gtid: Option<String> = c.query_first("SELECT @@last_gtid").await.expect("gtid");
        rows += add;
        commits.push(Commit {
            seq: gtid_seq(&gtid.unwrap_or_default()),
            rows,
        });
        let copy_done = find_event(&backup.journal(), "step_finished", "copy_innodb").is_some();
        eprintln!(
            "g: {rows} rows at {:?} (GTID seq {}), copy finished: {copy_done}",
            grow_t0.elapsed(),
            commits.last().map_or(0, |c| c.seq)
        );
    }
    let _ = c.disconnect().await;
    std::fs::write(&flag, b"").expect("open the gate");
    let size1 = std::fs::metadata(server.datadir().join("app/g.ibd"))
        .map(|m| m.len())
        .unwrap_or(0);
    let fin = backup.finish(Duration::from_secs(120)).await;
    eprintln!(
        "g.ibd grew from {:.1} MB to {:.1} MB; backup exit {:?} after {:?}\n{}",
        size0 as f64 / 1e6,
        size1 as f64 / 1e6,
        fin.code,
        fin.elapsed,
        fin.summary()
    );
    assert!(size1 - size0 > 200_000_000, "the table grew by 200+ MB");
    assert_eq!(fin.code, Some(0), "{}", tail(&fin.stderr, 30));
    let journal = journal_in(&dir.path().join("state"));
    let copy_started = event_time(&journal, "step_started", "copy_innodb");
    let copy_finished = event_time(&journal, "step_finished", "copy_innodb");
    eprintln!(
        "copy_innodb ran {:.2} s; redo: {}",
        secs_between(copy_finished, copy_started),
        fin.step("redo")["outputs"]
    );
    let manifest = Manifest::read(&fin_target(dir.path())).expect("complete backup");
    let seq = gtid_seq(&manifest.binlog.gtid_binlog_pos);
    let expected = rows_at(&commits, initial, seq);
    assert_eq!(
        expected, rows,
        "the commit point comes after the whole growth (the gate held it back)"
    );
    let copied_g = manifest
        .files
        .iter()
        .find(|f| f.path == "app/g.ibd")
        .map_or(0, |f| f.size);
    eprintln!(
        "backup at GTID {} (LSN {}..{}): g.ibd copied {:.1} MB; expected {expected} rows",
        manifest.binlog.gtid_binlog_pos,
        manifest.lsn.checkpoint,
        manifest.lsn.last,
        copied_g as f64 / 1e6
    );
    // Keep the test's footprint down: the source server's data is no longer needed.
    drop(server);
    let restored = Restored::start(&fin_target(dir.path())).await;
    let mut c = restored.conn().await;
    let got: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM app.g")
        .await
        .expect("count");
    let max_id: Option<u64> = c
        .query_first("SELECT MAX(id) FROM app.g")
        .await
        .expect("max");
    eprintln!("restored: {got:?} rows, max id {max_id:?}");
    assert_eq!(got, Some(expected), "rows of g at GTID seq {seq}");
    assert_eq!(max_id, Some(expected), "ids 1..n without holes");
    let check: Vec<(String, String, String, String)> =
        c.query("CHECK TABLE app.g").await.expect("check");
    assert_eq!(check.last().map(|r| r.3.as_str()), Some("OK"), "{check:?}");
    drop(c);
    let log = restored.error_log();
    if let Some((file, pos)) = recovered_binlog_position(&log) {
        eprintln!("InnoDB recovered binlog position {file}:{pos}");
        assert_eq!(
            (file.as_str(), pos),
            (manifest.binlog.file.as_str(), manifest.binlog.position),
            "the binlog position InnoDB recovered is the manifest's"
        );
    }
    assert!(restored.errors().is_empty(), "{:?}", restored.errors());
    restored.stop().await;
}

// ---------------------------------------------------------------------------------------
// 7. A corrupt page in the source: the report must name it

/// A page of a table is corrupt on disk (the server still has a good copy cached, so it
/// goes on running). The copy must fail naming the file and the page, whichever of its
/// parallel workers found it: the other worker, stopped because of it, must not hide the
/// cause behind its own "cancelled".
#[tokio::test(flavor = "multi_thread")]
async fn corrupt_source_page_fails_the_copy_naming_the_file_and_page() {
    let server = server_with_binlog("fault-corrupt-page", &[]).await;
    // Largest first: worker 0 takes big.ibd (~64 MB, ~3 s at 20 MiB/s), worker 1 takes
    // corrupt.ibd (~21 MB) and meets the bad page at once.
    big_table(&server, "big", 12_000).await;
    big_table(&server, "corrupt", 4_000).await;
    {
        let mut c = server.conn().await;
        // Every dirty page of the table is on disk, and stays as it is (no more writes).
        c.query_drop("FLUSH TABLES app.corrupt FOR EXPORT")
            .await
            .expect("flush for export");
        c.query_drop("UNLOCK TABLES").await.expect("unlock");
    }
    const PAGE: u64 = 100;
    {
        use std::io::{Seek, SeekFrom, Write};
        let path = server.datadir().join("app/corrupt.ibd");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open corrupt.ibd");
        f.seek(SeekFrom::Start(PAGE * 16384 + 4000)).expect("seek");
        f.write_all(&[0x5a; 64]).expect("corrupt");
        f.sync_all().expect("sync");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = slow_copy_plan(dir.path(), "20MiB");
    let backup = start_backup(&server, dir.path(), &plan);
    let fin = backup.finish(Duration::from_secs(60)).await;
    eprintln!(
        "exit {:?} after {:?}\n{}\ncopy_innodb: {}",
        fin.code,
        fin.elapsed,
        fin.summary(),
        fin.step("copy_innodb")
    );
    assert_eq!(fin.code, Some(1), "{}", tail(&fin.stderr, 30));
    assert_eq!(fin.step("copy_innodb")["status"], "failed");
    let err = fin.error("copy_innodb");
    assert!(
        err.contains("app/corrupt.ibd")
            && err.contains(&format!("page {PAGE}"))
            && err.contains("fails its checksum"),
        "copy_innodb names the corrupt file and page, not just the stopped worker: {err:?}"
    );
    let hint = fin.step("copy_innodb")["hint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(hint.contains("CHECK TABLE"), "{hint:?}");
    assert_eq!(fin.step("seal")["status"], "skipped");
    assert_not_a_backup(&fin_target(dir.path()));
}
