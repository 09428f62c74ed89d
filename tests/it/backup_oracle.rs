//! The consistency oracle for hot backups: a backup taken while clients write must
//! restore to exactly the transactions up to the GTID it recorded at BLOCK_COMMIT —
//! nothing later, nothing missing — on every engine, through both ways of preparing it
//! (crash recovery by `mariadbd`, and `mariadb-backup --prepare`).
//!
//! Each scenario: a TestServer with binlog and GTIDs, the `bank` workload
//! (tests/it/workload.rs) running from before the backup until after it, then
//! `plans/full-backup.yaml` through the CLI, then two restores on copies of the backup,
//! each checked by `workload::verify` against the commit log of the workload and by
//! `CHECK TABLE`. Also checked exactly: the binlog position and GTID the backup
//! recorded (manifest, `xtrabackup_binlog_info`, the source's binlog events), InnoDB's
//! own last binlog position after `mariadb-backup --prepare`, the restored LSN, and the
//! copied redo log, byte for byte against the server's.
//!
//! DDL (issue 14, design §6.1): `oracle-ddl` also runs the DDL workload of
//! tests/it/ddl_workload.rs from before the backup until after it, with at least one
//! whole cycle of statements between START and BLOCK_DDL (a gate step holds BLOCK_DDL
//! back until the test saw them) and the rest waiting on BLOCK_DDL during a slowed copy;
//! each restore's schema `ddl` must equal the model at the backup's GTID exactly.
//! `ddl_after_a_copy_under_start_without_reconcile_does_not_restore` documents what a
//! copy under START without reconcile gives TODAY (a wrong table set); issue 14's
//! reconcile flips it to exactness.
//!
//! A failed scenario leaves the backup directory and a copy of the server's datadir
//! under `target/test-logs/<scenario>-<pid>/`.

use crate::cli::repo_root;
use crate::ddl_workload::{
    check_ddl, create, create_ddl_schema, cycle, insert, leftover_files, DdlDriver, DdlLog,
    DdlSession, Op, SchemaModel,
};
use crate::support::{
    add_need, backup_plan, copy_tree, id_of, insert_gate, set_needs, spawn_backup, step,
    unprepared_backup_args, wait_for_start, with_of, yaml,
};
use crate::workload::{
    check_tables, create_schema, domain0_seq_no, tables, verify, Workload, WorkloadLog,
    WorkloadOptions,
};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde_json::Value;
use stagehand_mariadb::sandbox::{SandboxOptions, SandboxServer};
use stagehand_testkit::TestServer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One oracle scenario.
struct Scenario {
    name: &'static str,
    /// Server options on top of binlog + server-id (also given to install-db).
    server_options: Vec<(&'static str, Option<&'static str>)>,
    workload: WorkloadOptions,
    /// Commits the workload makes before the backup starts.
    warmup_commits: u64,
    /// How long the workload keeps writing after the backup finished.
    after_backup: Duration,
    /// Also run the DDL workload (tests/it/ddl_workload.rs) from before the backup
    /// until after it, with statements between START and BLOCK_DDL.
    ddl: bool,
    /// Take the backup with docs/examples/full-backup-hold-ddl.yaml (`support::hold_ddl`:
    /// BLOCK_DDL held through the copy, DDL waits) instead of plans/full-backup.yaml
    /// (copy under START, reconcile under BLOCK_DDL: DDL runs during the copy).
    hold_ddl: bool,
}

/// What the backup run produced.
struct Backup {
    dir: PathBuf,
    manifest: Value,
    /// `binlog.gtid_binlog_pos` of the manifest, and its domain-0 seq_no.
    gtid: String,
    upto: u64,
    seconds: f64,
}

/// How a copy of the backup is made startable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restore {
    /// InnoDB crash recovery by mariadbd itself.
    Mariadbd,
    /// `mariadb-backup --prepare`, then a normal start.
    MariadbBackup,
}

impl Restore {
    fn engine(self) -> &'static str {
        match self {
            Restore::Mariadbd => "mariadbd",
            Restore::MariadbBackup => "mariadb-backup",
        }
    }
}

/// Runs the stagehand binary (blocking) and returns (exit code, stdout, stderr).
fn stagehand(args: &[String]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("STAGEHAND_LOG")
        .output()
        .expect("the stagehand binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn gtid_now(conn: &mut Conn) -> String {
    let pos: Option<String> = conn
        .query_first("SELECT @@gtid_binlog_pos")
        .await
        .expect("SELECT @@gtid_binlog_pos");
    pos.unwrap_or_default()
}

/// Runs plans/full-backup.yaml against `server` into `<work>/backup` (blocking, in a
/// thread of its own so that the workload keeps running).
/// A failed run is an `Err` with the failed steps' errors and a comparison of the redo
/// copied so far with the server's log.
async fn take_backup(server: &TestServer, work: &Path) -> Result<Backup, String> {
    let (dir, args) = unprepared_backup_args(server, work);
    let t0 = Instant::now();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || stagehand(&args))
        .await
        .expect("backup thread");
    backup_outcome(
        server,
        dir,
        code,
        &stdout,
        &stderr,
        t0.elapsed().as_secs_f64(),
    )
}

/// A backup of `server` with an edited plan (`plan`, run with `prepare=false` into
/// `<work>/backup`, its state in `<work>/state`) running in the background: the test
/// follows its steps in the journal while it runs.
struct RunningBackup {
    child: tokio::process::Child,
    dir: PathBuf,
    state: PathBuf,
    stderr: PathBuf,
    t0: Instant,
}

impl RunningBackup {
    fn start(server: &TestServer, work: &Path, plan: &Path) -> RunningBackup {
        let dir = work.join("backup");
        let state = work.join("state");
        let stderr = work.join("stagehand.stderr");
        let child = spawn_backup(plan, server, &dir, &state, &["prepare=false"], &stderr);
        RunningBackup {
            child,
            dir,
            state,
            stderr,
            t0: Instant::now(),
        }
    }

    /// Waits until the journal says step `step` started.
    async fn wait_for_step(&mut self, step: &str) {
        wait_for_start(&mut self.child, &self.state, step).await;
    }

    async fn finish(self, server: &TestServer) -> Result<Backup, String> {
        let out = tokio::time::timeout(Duration::from_secs(300), self.child.wait_with_output())
            .await
            .expect("the backup finishes within 5 minutes")
            .expect("wait for stagehand");
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        backup_outcome(
            server,
            self.dir,
            out.status.code().unwrap_or(-1),
            &String::from_utf8_lossy(&out.stdout),
            &stderr,
            self.t0.elapsed().as_secs_f64(),
        )
    }
}

/// The [`Backup`] a finished backup run made, or an `Err` with the failed steps' errors
/// and a comparison of the redo copied so far with the server's log.
fn backup_outcome(
    server: &TestServer,
    dir: PathBuf,
    code: i32,
    stdout: &str,
    stderr: &str,
    seconds: f64,
) -> Result<Backup, String> {
    let report: Value = serde_json::from_str(stdout).unwrap_or(Value::Null);
    if code != 0 {
        let failed: Vec<String> = report["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["status"] == "failed")
            .map(|s| format!("step {}: {}", s["id"], s["error"]))
            .collect();
        // What the redo copy wrote so far, against the server's log.
        let redo = partial_redo_check(server, &dir.join("ib_logfile0")).unwrap_or_default();
        return Err(format!(
            "the backup failed (exit {code}) after {seconds:.1}s:\n{}\n{redo}\nreport: {stdout}\nstderr: {stderr}",
            failed.join("\n")
        ));
    }
    let manifest_path = dir.join("stagehand.json");
    let text = std::fs::read_to_string(&manifest_path)
        .unwrap_or_else(|e| panic!("{}: {e}", manifest_path.display()));
    let manifest: Value = serde_json::from_str(&text).expect("stagehand.json is JSON");
    assert_eq!(manifest["complete"], true, "the manifest says complete");
    let gtid = manifest["binlog"]["gtid_binlog_pos"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let upto = domain0_seq_no(&gtid);
    assert!(
        upto > 0,
        "the manifest records a GTID: {:?}",
        manifest["binlog"]
    );
    assert_eq!(
        step(&report, "seal")["outputs"]["gtid_binlog_pos"],
        gtid.as_str(),
        "the report and the manifest agree on the GTID"
    );
    let lsn = &manifest["lsn"];
    assert!(
        lsn["commit"].as_u64().unwrap_or(0) > 0
            && lsn["last"].as_u64() >= lsn["commit"].as_u64()
            && lsn["checkpoint"].as_u64() <= lsn["commit"].as_u64(),
        "LSNs in order: {lsn}"
    );
    Ok(Backup {
        dir,
        manifest,
        gtid,
        upto,
        seconds,
    })
}

/// Compares the `ib_logfile0` a failed backup left with the server's log.
fn partial_redo_check(server: &TestServer, partial: &Path) -> Option<String> {
    use stagehand_innodb::redo::START_OFFSET;
    let bytes = std::fs::read(partial).ok()?;
    if bytes.len() as u64 <= START_OFFSET {
        return None;
    }
    // The backup log header: its first LSN (the checkpoint) at offset 8.
    let from = u64::from_be_bytes(bytes[8..16].try_into().ok()?);
    let to = from + (bytes.len() as u64 - START_OFFSET);
    let server_log = server.datadir().join("ib_logfile0");
    Some(
        redo_divergence(&server_log, partial, from, to).unwrap_or_else(|| {
            format!("the redo copied so far (LSN {from} to {to}) is the server's, byte for byte")
        }),
    )
}

/// `name=value` lines of backup-my.cnf.
fn backup_my_cnf(dir: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(dir.join("backup-my.cnf")).expect("backup-my.cnf");
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Lines of an error log worth showing: errors, warnings, recovery and binlog facts.
fn interesting_log_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            l.contains("[ERROR]")
                || l.contains("[Warning]")
                || l.contains("recovery")
                || l.contains("Recovery")
                || l.contains("binlog")
                || l.contains("rolled back")
                || l.contains("Rolled back")
                || l.contains("crashed")
                || l.contains("repair")
                || l.contains("aria")
                || l.contains("Aria")
                || l.contains("LSN")
        })
        .map(str::to_owned)
        .collect()
}

/// "Last binlog file './binlog.000001', position 1234": what InnoDB itself recovered as
/// its last committed binlog position.
fn last_binlog_position(text: &str) -> Option<(String, u64)> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("Last binlog file"))?;
    let rest = &line[line.find("Last binlog file")? + "Last binlog file".len()..];
    let file = rest
        .trim()
        .trim_start_matches('\'')
        .split(['\'', ','])
        .next()?
        .trim()
        .to_owned();
    let pos = rest.rsplit("position").next()?.trim();
    let pos: String = pos.chars().take_while(char::is_ascii_digit).collect();
    Some((file, pos.parse().ok()?))
}

/// The end position of every transaction in the source's binlog, by GTID seq_no.
async fn binlog_ends(conn: &mut Conn, file: &str) -> BTreeMap<u64, u64> {
    let rows: Vec<mysql_async::Row> = conn
        .query(format!("SHOW BINLOG EVENTS IN '{file}'"))
        .await
        .expect("SHOW BINLOG EVENTS");
    let mut ends = BTreeMap::new();
    let mut current: Option<u64> = None;
    for row in rows {
        let kind: String = row.get("Event_type").unwrap_or_default();
        let info: String = row.get("Info").unwrap_or_default();
        let end: u64 = row.get("End_log_pos").unwrap_or_default();
        if kind == "Gtid" {
            current = info
                .split_whitespace()
                .find_map(|w| crate::workload::Gtid::parse(w).map(|g| g.seq_no));
        } else if let Some(seq) = current {
            ends.insert(seq, end);
        }
    }
    ends
}

/// A started restored copy.
struct Restored {
    server: SandboxServer,
    /// The restored datadir.
    dir: PathBuf,
    /// The prepare plan's JSON report.
    prepare_report: String,
    /// What InnoDB recovered as its last binlog file and position, when the prepare
    /// wrote it down (mariadb-backup's `xtrabackup_binlog_pos_innodb`).
    innodb_binlog: Option<(String, u64)>,
    prepare_seconds: f64,
    start_seconds: f64,
}

/// Prepares a copy of the backup with plans/prepare.yaml (`engine` = `how`) and starts
/// a server on it with the backup's settings (and binlog on, as the source had).
async fn restore(backup: &Backup, work: &Path, how: Restore) -> Restored {
    try_restore(backup, work, how)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`restore`], with a failed prepare or start as an `Err` saying what failed.
async fn try_restore(backup: &Backup, work: &Path, how: Restore) -> Result<Restored, String> {
    let copy = work.join(format!("restore-{}", how.engine()));
    copy_tree(&backup.dir, &copy);
    let plan = repo_root().join("plans/prepare.yaml");
    let args: Vec<String> = vec![
        "run".into(),
        plan.display().to_string(),
        "--set".into(),
        format!("target={}", copy.display()),
        "--set".into(),
        format!("engine={}", how.engine()),
        "--state-dir".into(),
        work.join(format!("state-{}", how.engine()))
            .display()
            .to_string(),
        "--json".into(),
    ];
    let t0 = Instant::now();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || stagehand(&args))
        .await
        .expect("prepare thread");
    let prepare_seconds = t0.elapsed().as_secs_f64();
    if code != 0 {
        return Err(format!(
            "plans/prepare.yaml with engine={} failed\nreport: {stdout}\nstderr: {stderr}",
            how.engine()
        ));
    }
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(copy.join("stagehand.json")).expect("manifest after prepare"),
    )
    .expect("manifest JSON");
    assert_eq!(
        manifest["prepared"]["engine"],
        how.engine(),
        "the manifest says how the copy was prepared"
    );
    // mariadb-backup --prepare writes what InnoDB recovered as its last binlog position.
    let innodb_binlog = [
        "xtrabackup_binlog_pos_innodb",
        "mariadb_backup_binlog_pos_innodb",
    ]
    .iter()
    .find_map(|f| std::fs::read_to_string(copy.join(f)).ok())
    .and_then(|text| {
        let (file, pos) = text.trim().split_once('\t')?;
        Some((file.to_owned(), pos.trim().parse().ok()?))
    });
    let cnf = backup_my_cnf(&copy);
    let mut opts = SandboxOptions::new(&copy, work.join(format!("run-{}", how.engine())))
        .option("log-bin", Some("binlog"))
        .option("server-id", Some("1"));
    for key in [
        "innodb_page_size",
        "innodb_undo_tablespaces",
        "innodb_data_file_path",
    ] {
        if let Some(v) = cnf.get(key).filter(|v| !v.is_empty()) {
            opts = opts.option(key, Some(v));
        }
    }
    let t1 = Instant::now();
    let server = match SandboxServer::start(opts).await {
        Ok(s) => s,
        Err(e) => {
            return Err(format!(
                "the server does not start on the {} restore: {e}\nprepare report:\n{stdout}",
                how.engine()
            ))
        }
    };
    Ok(Restored {
        server,
        dir: copy,
        prepare_report: stdout,
        innodb_binlog,
        prepare_seconds,
        start_seconds: t1.elapsed().as_secs_f64(),
    })
}

/// What the workloads of a scenario committed.
#[derive(Clone, Copy)]
struct Logs<'a> {
    bank: &'a WorkloadLog,
    /// The DDL workload's, when it ran.
    ddl: Option<&'a DdlLog>,
}

/// The checks on one restored server; panics with every broken invariant.
async fn check_restored(
    label: &str,
    how: Restore,
    restored: Restored,
    backup: &Backup,
    logs: Logs<'_>,
    opts: &WorkloadOptions,
    binlog_end_of: &BTreeMap<u64, u64>,
) -> Vec<String> {
    let (log, ddl) = (logs.bank, logs.ddl);
    let server = restored.server;
    let mut conn = Conn::new(server.opts("root", ""))
        .await
        .expect("connect to the restored server");
    let mut problems = Vec::new();
    if let Some(ddl) = ddl {
        problems
            .extend(check_ddl_restored(label, how, &mut conn, ddl, backup, &restored.dir).await);
    }
    let checked = check_tables(&mut conn, &tables(opts)).await;
    let report = verify(&mut conn, log, opts, backup.upto).await;
    // The oracle is sharp to one transaction: the data must not also match the GTID
    // just before or just after the backup's (both are workload commits).
    for other in [backup.upto - 1, backup.upto + 1] {
        let r = verify(&mut conn, log, opts, other).await;
        if r.violations.is_empty()
            && log.commits_between(other.min(backup.upto), other.max(backup.upto)) > 0
        {
            problems.push(format!(
                "the oracle cannot tell GTID seq_no {other} from the backup's {}",
                backup.upto
            ));
        }
    }
    let lsn: Option<(String, u64)> = conn
        .query_first("SHOW GLOBAL STATUS LIKE 'Innodb_lsn_current'")
        .await
        .expect("Innodb_lsn_current");
    let restored_gtid = gtid_now(&mut conn).await;
    let _ = conn.disconnect().await;
    let err_log = std::fs::read_to_string(server.error_log()).unwrap_or_default();
    let _ = server.kill().await;

    problems.extend(report.violations.iter().cloned());
    for t in &checked {
        if !t.ok {
            problems.push(format!(
                "{}: CHECK TABLE not OK even after REPAIR: {:?} then {:?}",
                t.table, t.check, t.repair
            ));
        }
        if t.repair.is_some() && !(t.table.ends_with("myisam_log")) {
            problems.push(format!(
                "{}: only MyISAM may need a repair, but CHECK TABLE said {:?}",
                t.table, t.check
            ));
        }
    }
    let commit_lsn = backup.manifest["lsn"]["commit"].as_u64().unwrap_or(0);
    let lsn_now = lsn.map_or(0, |(_, v)| v);
    if lsn_now < commit_lsn {
        problems.push(format!(
            "the restored server's LSN {lsn_now} is before the backup's commit LSN {commit_lsn}"
        ));
    }
    // InnoDB's own record of its last commit's binlog position (when it prints it):
    // the end of the last InnoDB transaction at or before the backup's GTID.
    let innodb_binlog = restored
        .innodb_binlog
        .clone()
        .or_else(|| last_binlog_position(&err_log));
    if how == Restore::MariadbBackup && innodb_binlog.is_none() {
        problems.push(
            "mariadb-backup --prepare wrote no xtrabackup_binlog_pos_innodb (InnoDB recovered no binlog position)"
                .to_owned(),
        );
    }
    let expected_end = binlog_end_of.get(&report.last_transfer_seq_no).copied();
    if let Some((_, pos)) = &innodb_binlog {
        if Some(*pos) != expected_end {
            problems.push(format!(
                "InnoDB recovered binlog position {pos}, but the last transfer up to the backup's GTID (seq_no {}) ends at {expected_end:?}",
                report.last_transfer_seq_no
            ));
        }
    }
    eprintln!(
        "[{label} {}] checked at seq_no {}: prepare {:.1}s, start {:.1}s; rows: ledger {}, myisam {}, aria {}; SUM {}; expected transfers {} (last at seq_no {}); InnoDB binlog pos {:?} (expected {:?}); restored LSN {lsn_now} (commit LSN {commit_lsn}); restored @@gtid_binlog_pos {restored_gtid:?}",
        how.engine(),
        report.upto,
        restored.prepare_seconds,
        restored.start_seconds,
        report.ledger_rows,
        report.myisam_rows,
        report.aria_rows,
        report.sum_balance,
        report.expected_transfers,
        report.last_transfer_seq_no,
        innodb_binlog,
        expected_end,
    );
    for t in &checked {
        if t.repair.is_some() || t.check.len() > 1 {
            eprintln!(
                "[{label} {}] {}: CHECK {:?}; REPAIR+CHECK {:?}",
                how.engine(),
                t.table,
                t.check,
                t.repair
            );
        }
    }
    let lines = interesting_log_lines(&err_log);
    eprintln!(
        "[{label} {}] error log (selected lines):\n  {}",
        how.engine(),
        lines.join("\n  ")
    );
    if problems.is_empty() {
        return problems;
    }
    vec![format!(
        "the {} restore of the backup at GTID {} is inconsistent:\n  - {}\n  error log of the restored server:\n    {}\n  prepare report: {}",
        how.engine(),
        backup.gtid,
        problems.join("\n  - "),
        lines.join("\n    "),
        restored.prepare_report
    )]
}

/// Compares the backup's `ib_logfile0` (a linear copy from the checkpoint LSN) with the
/// server's circular log over `[from, to)`: a hot copy must hold the server's log bytes
/// exactly. Returns the first LSN where they differ, with a sentence on where the
/// differing bytes come from. Only meaningful while the server's log has not wrapped
/// (the sequence bytes of the first lap are 1 in both).
fn redo_divergence(source_log: &Path, backup_log: &Path, from: u64, to: u64) -> Option<String> {
    use stagehand_innodb::redo::{LogFileHeader, LogGeometry, START_OFFSET};
    use std::os::unix::fs::FileExt;
    let src = std::fs::File::open(source_log).expect("the server's ib_logfile0");
    let mut head = vec![0u8; START_OFFSET as usize];
    src.read_exact_at(&mut head, 0).expect("log header");
    let header = LogFileHeader::parse(&head).expect("a 10.8+ log header");
    let size = src.metadata().expect("log size").len();
    let geometry = LogGeometry::new(header.header.first_lsn, size).expect("log geometry");
    if to - header.header.first_lsn >= geometry.capacity() {
        return None; // wrapped: the sequence bytes differ by design
    }
    let mut server_bytes = vec![0u8; (to - from) as usize];
    let mut filled = 0;
    for (offset, n) in geometry.ranges(from, to - from).expect("ranges") {
        src.read_exact_at(&mut server_bytes[filled..filled + n as usize], offset)
            .expect("read the server's log");
        filled += n as usize;
    }
    let bak = std::fs::File::open(backup_log).expect("the backup's ib_logfile0");
    let mut backup_bytes = vec![0u8; (to - from) as usize];
    bak.read_exact_at(&mut backup_bytes, START_OFFSET)
        .expect("read the backup's log");
    let d = server_bytes
        .iter()
        .zip(&backup_bytes)
        .position(|(a, b)| a != b)?;
    let at = from + d as u64;
    let n = 48.min(backup_bytes.len() - d);
    let pattern = &backup_bytes[d..d + n];
    let origin: Vec<String> = server_bytes[..d]
        .windows(n)
        .enumerate()
        .filter(|(_, w)| *w == pattern)
        .map(|(i, _)| {
            let lsn = from + i as u64;
            format!("LSN {lsn} ({} bytes earlier)", at - lsn)
        })
        .collect();
    let differing = server_bytes[d..]
        .iter()
        .zip(&backup_bytes[d..])
        .filter(|(a, b)| a != b)
        .count();
    Some(format!(
        "the backup's redo log differs from the server's from LSN {at} on ({differing} of the {} bytes up to LSN {to} differ; LSN {at} is at offset {} of its 4 KiB log block); the backup's bytes there are {}",
        to - at,
        (at - header.header.first_lsn) % 4096,
        if origin.is_empty() {
            "found nowhere earlier in the server's log".to_owned()
        } else {
            format!("a copy of the server's log at {}", origin.join(", "))
        }
    ))
}

/// Keeps what a failed scenario leaves for a post-mortem under
/// `target/test-logs/<name>-<pid>/`: the backup directory (unprepared, or as far as a
/// failed run got) and a copy of the source server's datadir (taken while it runs).
fn save_artifacts(name: &str, backup_dir: &Path, server: &TestServer) -> PathBuf {
    let dest = stagehand_testkit::test_logs_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dest);
    // Best effort: a failing copy must not hide the failure being reported.
    let copy = |from: &Path, to: PathBuf| {
        let _ = Command::new("cp").arg("-a").arg(from).arg(to).status();
    };
    if backup_dir.exists() {
        copy(backup_dir, dest.join("backup"));
    }
    copy(server.datadir(), dest.join("server-datadir"));
    dest
}

/// plans/full-backup.yaml with a gate between START and BLOCK_DDL (an `exec` step
/// waiting for the file `flag`, see `support::insert_gate`) and a copy of InnoDB slowed
/// to `max_rate`: nothing else of today's plan changes (BLOCK_DDL is held through the
/// copies; a DDL statement waits for it).
fn ddl_gated_plan(dir: &Path, flag: &Path, max_rate: &str, hold_ddl: bool) -> PathBuf {
    backup_plan(dir, |steps| {
        if hold_ddl {
            crate::support::hold_ddl(steps);
            insert_gate(steps, "lock_ddl", "redo", flag, 2400);
        } else {
            insert_gate(steps, "lock_ddl", "copy_innodb", flag, 2400);
        }
        with_of(steps, "copy_innodb").insert(yaml("max_rate"), yaml(max_rate));
    })
}

/// Runs [`ddl_gated_plan`] while the DDL driver runs: once the backup holds START (the
/// gate step started), waits until the driver did two more cycles (so at least one
/// whole cycle ran between START and BLOCK_DDL), then lets the backup take BLOCK_DDL.
async fn take_backup_with_ddl_before_block_ddl(
    server: &TestServer,
    work: &Path,
    driver: &DdlDriver,
    hold_ddl: bool,
) -> Result<Backup, String> {
    let flag = work.join("gate-open");
    let plan = ddl_gated_plan(work, &flag, "8MiB", hold_ddl);
    let mut running = RunningBackup::start(server, work, &plan);
    running.wait_for_step("gate").await;
    let cycles = driver.cycles();
    driver
        .wait_for_cycles(cycles + 2, Duration::from_secs(120))
        .await;
    std::fs::write(&flag, b"").expect("open the gate");
    running.finish(server).await
}

/// The DDL checks on a restored server: schema `ddl` is exactly the model at the
/// backup's GTID (and not at the GTID just before or after, when those differ), with
/// no `#sql…` or side file left in its directory.
async fn check_ddl_restored(
    label: &str,
    how: Restore,
    conn: &mut Conn,
    ddl: &DdlLog,
    backup: &Backup,
    dir: &Path,
) -> Vec<String> {
    let report = check_ddl(conn, ddl, backup.upto).await;
    let mut problems: Vec<String> = report
        .problems
        .iter()
        .map(|p| format!("DDL oracle: {p}"))
        .collect();
    let at = ddl.schema_at(backup.upto);
    for other in [backup.upto - 1, backup.upto + 1] {
        if ddl.schema_at(other) != at && check_ddl(conn, ddl, other).await.problems.is_empty() {
            problems.push(format!(
                "DDL oracle: the restored schema `ddl` also matches GTID seq_no {other}, not only the backup's {}",
                backup.upto
            ));
        }
    }
    let leftovers = leftover_files(dir);
    if !leftovers.is_empty() {
        problems.push(format!(
            "DDL oracle: files left in the restored `ddl` directory: {leftovers:?}"
        ));
    }
    eprintln!(
        "[{label} {}] DDL oracle at seq_no {}: {} tables, {} rows expected; {} problems",
        how.engine(),
        backup.upto,
        report.tables,
        report.rows,
        problems.len()
    );
    problems
}

async fn run_scenario(s: Scenario) {
    let t_start = Instant::now();
    let mut builder = TestServer::builder()
        .name(s.name)
        .option("log-bin", Some("binlog"))
        .option("server-id", Some("1"))
        // The page cleaner flushes all the time: pages change on disk while they are
        // copied, and checkpoints move during the backup.
        .runtime_option("innodb_max_dirty_pages_pct", Some("0"))
        .runtime_option("innodb_max_dirty_pages_pct_lwm", Some("0"));
    for (k, v) in &s.server_options {
        builder = builder.option(k, *v);
    }
    let server = builder.start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let mut conn = server.conn().await;
    create_schema(&mut conn, &s.workload).await;

    let driver = if s.ddl {
        create_ddl_schema(&mut conn).await;
        let driver = DdlDriver::start(server.opts()).await;
        driver.wait_for_cycles(1, Duration::from_secs(60)).await;
        Some(driver)
    } else {
        None
    };
    let workload = Workload::start(server.opts(), &s.workload);
    workload
        .wait_for_commits(s.warmup_commits, Duration::from_secs(30))
        .await;
    let before = gtid_now(&mut conn).await;
    let taken = match &driver {
        None => take_backup(&server, work.path()).await,
        Some(driver) => {
            take_backup_with_ddl_before_block_ddl(&server, work.path(), driver, s.hold_ddl).await
        }
    };
    let backup = match taken {
        Ok(b) => b,
        Err(e) => {
            let _ = workload.stop().await;
            if let Some(d) = driver {
                let _ = d.stop().await;
            }
            let saved = save_artifacts(s.name, &work.path().join("backup"), &server);
            panic!(
                "[{}] {e}\n(the backup directory and the server's datadir are saved in {})",
                s.name,
                saved.display()
            );
        }
    };
    // The DDL workload goes on after the backup: its statement that waited for the
    // backup's locks, and more.
    let ddl_log = match driver {
        None => None,
        Some(driver) => {
            let n = driver.statements();
            driver
                .wait_for_statements(n + 5, Duration::from_secs(60))
                .await;
            Some(driver.stop().await)
        }
    };
    let commits_at_end = workload.commits();
    tokio::time::sleep(s.after_backup).await;
    let log = workload.stop().await;
    let after = gtid_now(&mut conn).await;
    let (before_n, after_n) = (domain0_seq_no(&before), domain0_seq_no(&after));
    let during = log.commits_between(before_n, backup.upto);
    let transfers_during = log.transfers_between(before_n, backup.upto);
    eprintln!(
        "[{}] backup {:.1}s at GTID {} (before {before}, after {after}); commits during the backup up to its GTID: {during} ({transfers_during} InnoDB); workload: {} transfers, {} MyISAM, {} Aria appends, {} retries, longest op {:?}; locks {}; lsn {}",
        s.name,
        backup.seconds,
        backup.gtid,
        log.transfers.len(),
        log.myisam.len(),
        log.aria.len(),
        log.retries,
        log.longest_op,
        backup.manifest["locks"],
        backup.manifest["lsn"],
    );
    let files = backup.manifest["files"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sum = |k: &str| files.iter().filter_map(|f| f[k].as_u64()).sum::<u64>();
    eprintln!(
        "[{}] backup files {}, InnoDB pages {}, re-read pages {}, unverified pages {}; copies {}",
        s.name,
        files.len(),
        sum("pages"),
        sum("reread_pages"),
        sum("unverified_pages"),
        backup.manifest["copies"]
    );
    for f in &files {
        if f["unverified_pages"].as_u64().unwrap_or(0) > 0
            || f["reread_pages"].as_u64().unwrap_or(0) > 0
        {
            eprintln!(
                "[{}]   {}: {} pages, {} re-read, {} unverified",
                s.name, f["path"], f["pages"], f["reread_pages"], f["unverified_pages"]
            );
        }
    }
    // The workload really ran across the backup: commits between its start and the
    // commit point, and after the commit point.
    assert!(
        transfers_during > 0,
        "no InnoDB commit between the backup's start (GTID {before}) and its commit point {}",
        backup.gtid
    );
    assert!(
        after_n > backup.upto && log.commits_between(backup.upto, after_n) > 0,
        "no commit after the backup's commit point ({} → {after}); commits at its end: {commits_at_end}",
        backup.gtid
    );
    // mariadb-backup's metadata says the same position as the manifest.
    let binlog_file = backup.manifest["binlog"]["file"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let info = std::fs::read_to_string(backup.dir.join("mariadb_backup_binlog_info"))
        .or_else(|_| std::fs::read_to_string(backup.dir.join("xtrabackup_binlog_info")))
        .expect("binlog info file");
    let fields: Vec<&str> = info.trim_end().split('\t').collect();
    assert_eq!(
        fields,
        vec![
            binlog_file.as_str(),
            &backup.manifest["binlog"]["position"].to_string(),
            backup.gtid.as_str()
        ],
        "binlog info file"
    );

    // The oracle's model is right: the source holds every commit.
    let source = verify(&mut conn, &log, &s.workload, after_n).await;
    assert!(
        source.violations.is_empty(),
        "the workload log does not describe the source server itself: {:#?}",
        source.violations
    );
    if let Some(ddl) = &ddl_log {
        let (during, ddl_during) = ddl.between(before_n, backup.upto);
        let (later, _) = ddl.between(backup.upto, after_n);
        let longest = ddl.longest();
        eprintln!(
            "[{}] DDL workload: {} statements ({} retries), {during} of them ({ddl_during} DDL) between the backup's start and its GTID, {later} after; longest {:?} ({})",
            s.name,
            ddl.applied.len(),
            ddl.retries,
            longest.map(|a| a.took),
            longest.map(|a| a.op.sql()).unwrap_or_default(),
        );
        // At least one whole cycle ran between START and BLOCK_DDL (the gate waited for
        // it), and the workload went on after the commit point.
        assert!(
            ddl_during >= cycle(5, &SchemaModel::new()).iter().filter(|o| o.is_ddl()).count(),
            "only {ddl_during} DDL statements between the backup's start ({before}) and its GTID {}",
            backup.gtid
        );
        assert!(
            later > 0,
            "no DDL workload statement after the backup's GTID {}",
            backup.gtid
        );
        // The model describes the source itself.
        let source = check_ddl(&mut conn, ddl, after_n).await;
        assert!(
            source.problems.is_empty(),
            "the DDL model does not describe the source server at {after}:\n- {}",
            source.problems.join("\n- ")
        );
    }
    let binlog_end_of = binlog_ends(&mut conn, &binlog_file).await;
    // The binlog position recorded at BLOCK_COMMIT is the end of the transaction with
    // the recorded GTID.
    assert_eq!(
        binlog_end_of.get(&backup.upto).copied(),
        backup.manifest["binlog"]["position"].as_u64(),
        "the recorded binlog position ends the transaction of the recorded GTID"
    );
    // The copied redo log is the server's, byte for byte, from the checkpoint to the
    // LSN the copy reached (all of it durable since BLOCK_COMMIT).
    let mut problems = Vec::new();
    let (from_lsn, last_lsn) = (
        backup.manifest["lsn"]["checkpoint"].as_u64().unwrap_or(0),
        backup.manifest["lsn"]["last"].as_u64().unwrap_or(0),
    );
    if let Some(d) = redo_divergence(
        &server.datadir().join("ib_logfile0"),
        &backup.dir.join("ib_logfile0"),
        from_lsn,
        last_lsn,
    ) {
        problems.push(d);
    }
    drop(conn);

    for how in [Restore::Mariadbd, Restore::MariadbBackup] {
        let t0 = Instant::now();
        let restored = restore(&backup, work.path(), how).await;
        problems.extend(
            check_restored(
                s.name,
                how,
                restored,
                &backup,
                Logs {
                    bank: &log,
                    ddl: ddl_log.as_ref(),
                },
                &s.workload,
                &binlog_end_of,
            )
            .await,
        );
        eprintln!(
            "[{}] {} restore checked in {:.1}s",
            s.name,
            how.engine(),
            t0.elapsed().as_secs_f64()
        );
    }
    if !problems.is_empty() {
        let saved = save_artifacts(s.name, &backup.dir, &server);
        panic!(
            "[{}] the backup at GTID {} (LSN {}) does not restore consistently:\n- {}\n(the backup and the server's datadir are saved in {})",
            s.name,
            backup.gtid,
            backup.manifest["lsn"],
            problems.join("\n- "),
            saved.display()
        );
    }
    eprintln!(
        "[{}] scenario done in {:.1}s",
        s.name,
        t_start.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_backup_restores_exactly_up_to_its_gtid() {
    run_scenario(Scenario {
        name: "oracle-basic",
        server_options: vec![],
        workload: WorkloadOptions {
            clients: 4,
            accounts: 20_000,
            ..WorkloadOptions::default()
        },
        warmup_commits: 300,
        after_backup: Duration::from_millis(500),
        ddl: false,
        hold_ddl: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_backup_of_partitioned_tables() {
    run_scenario(Scenario {
        name: "oracle-partitioned",
        server_options: vec![],
        workload: WorkloadOptions {
            accounts_options: "PARTITION BY HASH(id) PARTITIONS 4".into(),
            ledger_options: "PARTITION BY KEY(client) PARTITIONS 3".into(),
            ..light()
        },
        warmup_commits: 100,
        after_backup: Duration::from_millis(300),
        ddl: false,
        hold_ddl: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_backup_of_tables_in_the_system_tablespace() {
    run_scenario(Scenario {
        name: "oracle-system-ts",
        server_options: vec![("innodb_file_per_table", Some("0"))],
        workload: light(),
        warmup_commits: 100,
        after_backup: Duration::from_millis(300),
        ddl: false,
        hold_ddl: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_backup_with_separate_undo_tablespaces() {
    run_scenario(Scenario {
        name: "oracle-undo",
        server_options: vec![("innodb_undo_tablespaces", Some("3"))],
        workload: light(),
        warmup_commits: 100,
        after_backup: Duration::from_millis(300),
        ddl: false,
        hold_ddl: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_backup_of_page_compressed_tables() {
    run_scenario(Scenario {
        name: "oracle-page-compressed",
        server_options: vec![],
        workload: WorkloadOptions {
            accounts_options: "PAGE_COMPRESSED=1".into(),
            ledger_options: "PAGE_COMPRESSED=1".into(),
            ..light()
        },
        warmup_commits: 100,
        after_backup: Duration::from_millis(300),
        ddl: false,
        hold_ddl: false,
    })
    .await;
}

/// The lighter workload of scenarios 2–5: still concurrent on every engine.
fn light() -> WorkloadOptions {
    WorkloadOptions {
        clients: 2,
        accounts: 5_000,
        ..WorkloadOptions::default()
    }
}

/// plans/full-backup.yaml without the reconcile passes it needs: `copy_innodb` and
/// `copy_other` run under START, a gate (waiting for the file `flag`) follows both, then
/// `lock_ddl` takes FLUSH + BLOCK_DDL, and `lock_commit` follows it.
fn copy_under_start_plan(dir: &Path, flag: &Path) -> PathBuf {
    backup_plan(dir, |steps| {
        steps.retain(|s| !matches!(id_of(s), Some("catch_up" | "reconcile")));
        insert_gate(steps, "lock_ddl", "copy_innodb", flag, 2400);
        add_need(steps, "gate", "copy_other");
        set_needs(steps, "lock_ddl", "[gate]");
        set_needs(steps, "lock_commit", "[lock_ddl]");
    })
}

/// A plan that copies under START but has no reconcile step (`copy_under_start_plan`):
/// tables are copied while only START is held, then ALTER … FORCE, RENAME, DROP,
/// TRUNCATE, CREATE, ADD COLUMN (COPY), ADD INDEX (INPLACE), ENGINE=Aria and DROP/ADD
/// PARTITION run on them before BLOCK_DDL. Such a backup would hold the files as they
/// were copied and a redo log that renames, deletes and creates tablespaces under them,
/// and would not restore to its GTID (observed before seal refused it: created and
/// renamed tables missing, dropped ones listed, "Table `ddl`.`f_copy` is corrupted"
/// and "doesn't exist in engine" on both prepare engines). seal refuses it, saying why,
/// and nothing looks like a backup.
///
/// Deterministic: the gate keeps BLOCK_DDL back until the statements ran, and they run
/// only once both copies finished.
#[tokio::test(flavor = "multi_thread")]
async fn ddl_after_a_copy_under_start_without_reconcile_is_refused() {
    let server = TestServer::builder()
        .name("oracle-ddl-copy-under-start")
        .option("log-bin", Some("binlog"))
        .option("server-id", Some("1"))
        .start()
        .await;
    let work = tempfile::tempdir().expect("tempdir");
    let mut conn = server.conn().await;
    create_ddl_schema(&mut conn).await;
    let mut session = DdlSession::connect(server.opts()).await;
    // Tables that exist before the backup: their files are copied under START.
    // (No Aria table is renamed or dropped: `copy_aria` would fail the backup on its
    // old file name before anything could be restored.)
    for (t, engine) in [
        ("f_force", "InnoDB"),
        ("f_ren", "InnoDB"),
        ("f_drop", "InnoDB"),
        ("f_trunc", "InnoDB"),
        ("f_ren_m", "MyISAM"),
        ("f_aria", "Aria"),
        ("f_idx", "InnoDB"),
        ("f_copy", "InnoDB"),
        ("f_eng", "InnoDB"),
    ] {
        session.run(create(t, engine)).await;
        session.run(insert(t, 1..=50, 1)).await;
    }
    session
        .run(Op::Create {
            table: "f_part".into(),
            engine: "InnoDB",
            partitions: vec![("p0".into(), 20), ("p1".into(), 40), ("p2".into(), 60)],
        })
        .await;
    session.run(insert("f_part", 1..=50, 1)).await;
    let flag = work.path().join("gate-open");
    let plan = copy_under_start_plan(work.path(), &flag);
    let mut running = RunningBackup::start(&server, work.path(), &plan);
    // Both copies are done; only START is held: nothing below waits for the backup.
    running.wait_for_step("gate").await;
    session
        .run_all(vec![
            Op::Force("f_force".into()),
            Op::Update {
                table: "f_force".into(),
                id: 1,
                v: 2,
            },
            Op::Rename(vec![("f_ren".into(), "f_ren2".into())]),
            insert("f_ren2", [51], 2),
            Op::Drop("f_drop".into()),
            Op::Truncate("f_trunc".into()),
            insert("f_trunc", [100], 2),
            Op::Rename(vec![("f_ren_m".into(), "f_ren_m2".into())]),
            insert("f_ren_m2", [51], 2),
            create("f_new", "InnoDB"),
            insert("f_new", 1..=3, 2),
            insert("f_aria", [51], 2),
            Op::AddIndex {
                table: "f_idx".into(),
                column: "v".into(),
            },
            insert("f_idx", [51], 2),
            Op::AddColumn {
                table: "f_copy".into(),
                column: "c".into(),
                default: 7,
                instant: false,
            },
            insert("f_copy", [51], 2),
            Op::Engine {
                table: "f_eng".into(),
                engine: "Aria",
            },
            insert("f_eng", [51], 2),
            Op::DropPartition {
                table: "f_part".into(),
                name: "p0".into(),
            },
            Op::AddPartition {
                table: "f_part".into(),
                name: "p3".into(),
                less_than: 80,
            },
            insert("f_part", [70], 2),
        ])
        .await;
    let after_ddl = domain0_seq_no(&gtid_now(&mut conn).await);
    std::fs::write(&flag, b"").expect("open the gate");
    let failed = running
        .finish(&server)
        .await
        .err()
        .expect("seal refuses the unreconciled backup");
    assert!(
        failed.contains(
            "while InnoDB was copied before BLOCK_DDL, and no reconcile step recorded it"
        ),
        "{failed}"
    );
    assert!(
        !work.path().join("backup").join("stagehand.json").exists(),
        "no manifest"
    );
    let _ = (session.finish().await, after_ddl, conn.disconnect().await);
}

/// The DDL oracle on docs/examples/full-backup-hold-ddl.yaml: DDL (CREATE, RENAME and a swap, DROP, INSTANT ADD
/// COLUMN, FORCE, OPTIMIZE, TRUNCATE, partition ADD/DROP on InnoDB, Aria and MyISAM)
/// runs from before the backup, between START and BLOCK_DDL, waits on BLOCK_DDL during
/// the (slowed) copy and goes on after END; both restores hold exactly the tables,
/// columns, partitions and rows of the statements up to the backup's GTID.
#[tokio::test(flavor = "multi_thread")]
async fn hot_backup_with_ddl_restores_exactly_up_to_its_gtid() {
    run_scenario(Scenario {
        name: "oracle-ddl",
        server_options: vec![],
        workload: WorkloadOptions {
            clients: 1,
            accounts: 2_000,
            ..WorkloadOptions::default()
        },
        warmup_commits: 100,
        after_backup: Duration::from_millis(300),
        ddl: true,
        hold_ddl: true,
    })
    .await;
}

/// The DDL oracle on plans/full-backup.yaml (everything copied under START): the DDL
/// workload runs during the (slowed) copy itself and after it, until BLOCK_DDL;
/// `catch_up` and `reconcile` copy again what was rebuilt, created or changed and record
/// the drops and renames, and both restores hold exactly the statements up to the
/// backup's GTID.
#[tokio::test(flavor = "multi_thread")]
async fn ddl_during_the_copy_under_start_restores_exactly_up_to_its_gtid() {
    run_scenario(Scenario {
        name: "oracle-ddl-under-start",
        server_options: vec![],
        workload: WorkloadOptions {
            clients: 1,
            accounts: 2_000,
            ..WorkloadOptions::default()
        },
        warmup_commits: 100,
        after_backup: Duration::from_millis(300),
        ddl: true,
        hold_ddl: false,
    })
    .await;
}
