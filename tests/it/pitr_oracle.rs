//! Point-in-time restores (issue 17), proven the way backups are. The bank workload and
//! the DDL workload commit with known GTIDs on a server with a binlog; a hot backup goes
//! into a local repository; the archiver (`plans/binlog-archive.yaml`, `mode: follow`)
//! runs throughout, is killed with SIGKILL mid-workload and started again. Then:
//! - the archive holds exactly the server's transactions after the backup, each once,
//!   in order (read with `mariadb-binlog`, the server's own reader);
//! - `plans/restore-pitr.yaml` restores to a GTID in the middle, to a time, and to the
//!   latest archived point, and each restored server holds exactly the commits up to its
//!   target (every balance, the ledger, the MyISAM and Aria appends, the DDL schema) and
//!   reports that GTID.
//!
//! The time target's expected GTID comes from the source's own binlog read by
//! `mariadb-binlog`, not from stagehand's parser.
//!
//! A second test purges binlogs the archiver has not read yet: the archiver refuses
//! with what to do, and a restore past the gap is refused before anything is written.

use crate::cli::stagehand_env;
use crate::ddl_workload::{check_ddl, create_ddl_schema, DdlDriver, DdlLog};
use crate::storage_roundtrip::KEYS;
use crate::support::{run_plan, PlanRun};
use crate::workload::{create_schema, verify, Workload, WorkloadLog, WorkloadOptions};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde_json::Value;
use stagehand_mariadb::sandbox::{SandboxOptions, SandboxServer};
use stagehand_repo::binlogs::BinlogArchive;
use stagehand_repo::crypt::Key;
use stagehand_repo::{RepoConfig, Repository};
use stagehand_testkit::s3::{unique_bucket, MotoServer};
use stagehand_testkit::TestServer;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// The archiver's replica id on the test servers.
const ARCHIVER_ID: &str = "4000000001";
/// The encryption key of the encrypted S3 archive.
const KEY: &str = "3c5e7a9b1d2f4e6a8c0b2d4f6e8a0c2b4d6f8e0a2c4b6d8f0e2a4c6b8d0f2e4a";
/// A value no encrypted segment may show.
const MARKER: &str = "PITR-PLAINTEXT-MARKER-7d3f";

/// A repository as the plans and the CLI are told about it.
struct Repo {
    url: String,
    /// Plan params besides `repository` (S3 endpoint, encryption).
    sets: Vec<String>,
    /// Flags of `stagehand binlogs|backups list`.
    flags: Vec<String>,
    env: Vec<(&'static str, String)>,
    config: RepoConfig,
    key: Option<Key>,
}

impl Repo {
    fn local(dir: &Path) -> Repo {
        let url = dir.display().to_string();
        Repo {
            config: RepoConfig::at(&url),
            url,
            sets: Vec::new(),
            flags: Vec::new(),
            env: Vec::new(),
            key: None,
        }
    }

    /// An encrypted repository on the shared moto server.
    fn s3_encrypted(moto: &MotoServer, bucket: &str) -> Repo {
        let mut env: Vec<(&'static str, String)> =
            KEYS.iter().map(|(k, v)| (*k, v.to_string())).collect();
        env.push(("STAGEHAND_ENCRYPTION_KEY", KEY.to_string()));
        let mut config = moto.repo_config(bucket, "db1");
        config.encryption = serde_json::from_value(serde_json::json!({"key": KEY})).ok();
        Repo {
            url: format!("s3://{bucket}/db1"),
            sets: vec![
                format!("endpoint={}", moto.endpoint()),
                "path_style=true".into(),
                "encrypt=true".into(),
            ],
            flags: vec!["--endpoint".into(), moto.endpoint(), "--path-style".into()],
            env,
            config,
            key: Some(Key::from_hex(KEY, "test").expect("key")),
        }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    /// `stagehand binlogs list REPO --json`.
    fn binlogs(&self) -> Value {
        let listed = self.cli(&["binlogs", "list"]);
        assert_eq!(listed.code, 0, "binlogs list: {}", listed.stderr);
        serde_json::from_str(&listed.stdout).expect("binlogs list --json")
    }

    /// `stagehand COMMAND REPO [flags] --json`.
    fn cli(&self, command: &[&str]) -> crate::cli::Run {
        let mut args: Vec<&str> = command.to_vec();
        args.push(&self.url);
        args.extend(self.flags.iter().map(String::as_str));
        args.push("--json");
        stagehand_env(&args, &self.env())
    }

    fn plan_sets(&self) -> Vec<String> {
        let mut sets = vec![format!("repository={}", self.url)];
        sets.extend(self.sets.iter().cloned());
        sets
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restores_to_a_gtid_a_time_and_the_latest_point_hold_exactly_the_commits_up_to_them() {
    let work = tempfile::tempdir().expect("tempdir");
    let repo = Repo::local(&work.path().join("repo"));
    let server = source_server("pitr-oracle").await;
    let mut conn = server.conn().await;
    let opts = WorkloadOptions {
        pause: Duration::from_millis(2),
        ..WorkloadOptions::default()
    };
    create_schema(&mut conn, &opts).await;
    create_ddl_schema(&mut conn).await;
    let ddl = DdlDriver::start(server.opts()).await;
    let workload = Workload::start(server.opts(), &opts);
    workload
        .wait_for_commits(150, Duration::from_secs(60))
        .await;

    let backup_seq = take_backup(&server, &repo, work.path()).await;
    let mut archiver = spawn_archiver(&server, &repo, work.path(), "first");
    workload
        .wait_for_commits(workload.commits() + 300, Duration::from_secs(120))
        .await;
    // Killed mid-stream: whatever it had not uploaded is fetched again after the
    // restart, from the last complete segment's end.
    archiver.start_kill().expect("SIGKILL the archiver");
    let _ = archiver.wait().await;
    workload
        .wait_for_commits(workload.commits() + 200, Duration::from_secs(120))
        .await;
    let archiver = spawn_archiver(&server, &repo, work.path(), "second");
    workload
        .wait_for_commits(workload.commits() + 300, Duration::from_secs(120))
        .await;
    // Times are whole seconds: keep committing past the next second so the time
    // target below has later transactions to stop before.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = workload.stop().await;
    let ddl_log = ddl.stop().await;
    let final_pos = gtid_binlog_pos(&mut conn).await;
    wait_until_archived(&repo, &final_pos, Duration::from_secs(60)).await;
    stop_archiver(archiver).await;

    let source = source_gtid_times(server.datadir());
    let after_backup: Vec<(u64, u64)> = source
        .iter()
        .copied()
        .filter(|(seq, _)| *seq > backup_seq)
        .collect();
    assert!(
        after_backup.len() > 500,
        "the workload committed only {} transactions after the backup",
        after_backup.len()
    );
    assert_eq!(
        archived_seqs(&repo, work.path()).await,
        after_backup.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        "the archive must hold every transaction after the backup's GTID 0-1-{backup_seq}, once each, in order"
    );

    let middle = after_backup[after_backup.len() / 3].0;
    let (time, expected_at_time) = time_target(&after_backup);
    let latest = after_backup.last().map(|(seq, _)| *seq).unwrap_or_default();
    // Both replay methods: mariadb-binlog | mariadb, and the server's SQL thread with
    // four parallel workers (the plan's default).
    let cases = [
        ("gtid", format!("0-1-{middle}"), middle, "pipe"),
        ("time", rfc3339(time), expected_at_time, "sql_thread"),
        ("latest", "latest".to_string(), latest, "sql_thread"),
    ];
    let mut problems = Vec::new();
    for (label, to, expected, method) in cases {
        problems.extend(
            restore_and_check(
                (label, method),
                &to,
                expected,
                &repo,
                work.path(),
                (&log, &ddl_log),
                &opts,
            )
            .await,
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlogs_purged_before_they_were_archived_are_a_gap_the_archiver_and_the_restore_refuse() {
    let work = tempfile::tempdir().expect("tempdir");
    let repo = Repo::local(&work.path().join("repo"));
    let (server, mut conn) = backed_up_table("pitr-gap", &repo, work.path()).await;
    let first = tokio::task::block_in_place(|| catch_up(&server, &repo, work.path()));
    assert_eq!(first.code, 0, "{}", first.output());
    let archived_to = gtid_binlog_pos(&mut conn).await;

    insert_rows(&mut conn, 21..=40).await;
    conn.query_drop("FLUSH BINARY LOGS").await.expect("flush");
    insert_rows(&mut conn, 41..=60).await;
    let (last_file, _): (String, u64) = conn
        .query_first("SHOW MASTER STATUS")
        .await
        .expect("SHOW MASTER STATUS")
        .map(|row: mysql_async::Row| {
            (
                row.get::<String, _>(0).unwrap_or_default(),
                row.get::<u64, _>(1).unwrap_or_default(),
            )
        })
        .expect("a binlog");
    conn.query_drop(format!("PURGE BINARY LOGS TO '{last_file}'"))
        .await
        .expect("purge");

    let refused = tokio::task::block_in_place(|| catch_up(&server, &repo, work.path()));
    assert_ne!(
        refused.code,
        0,
        "the archiver must refuse a gap: {}",
        refused.output()
    );
    let error = refused.step("archive")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let hint = refused.step("archive")["hint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("1236") && error.contains(&archived_to),
        "{error}"
    );
    assert!(
        hint.contains("purged") && hint.contains("new full backup"),
        "the hint must say what happened and what to do: {hint}"
    );
    assert_eq!(repo.binlogs()["end_state"], archived_to.as_str());

    // A restore past what the archive holds is refused before anything is written.
    let now = gtid_binlog_pos(&mut conn).await;
    let (run, datadir, workdir) =
        tokio::task::block_in_place(|| restore(&repo, work.path(), "past-gap", &now));
    assert_ne!(run.code, 0, "{}", run.output());
    let error = run.step("pitr")["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("reaches only {archived_to}")),
        "the refusal must say how far the archive goes: {error}"
    );
    assert_eq!(run.step("fetch")["status"], "skipped", "{}", run.output());
    for dir in [datadir, workdir] {
        assert!(
            !dir.exists()
                || std::fs::read_dir(&dir)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(true),
            "{} was written by a refused restore",
            dir.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_encrypted_archive_on_s3_follows_a_server_crash_and_restores_exactly() {
    let moto = MotoServer::shared();
    let bucket = unique_bucket("pitr-crash");
    moto.create_bucket(&bucket).await.expect("create bucket");
    let repo = Repo::s3_encrypted(moto, &bucket);
    let work = tempfile::tempdir().expect("tempdir");
    let server = source_server("pitr-crash").await;
    let mut conn = server.conn().await;
    conn.query_drop(
        "CREATE DATABASE g; CREATE TABLE g.t (id INT PRIMARY KEY, s VARCHAR(64)) ENGINE=InnoDB",
    )
    .await
    .expect("schema");
    insert_rows(&mut conn, 1..=10).await;
    let backup_seq = take_backup(&server, &repo, work.path()).await;
    let archiver = spawn_archiver(&server, &repo, work.path(), "crash");
    insert_rows(&mut conn, 11..=200).await;
    let before_crash = gtid_binlog_pos(&mut conn).await;
    wait_until_archived(&repo, &before_crash, Duration::from_secs(60)).await;
    drop(conn);

    // The server dies (SIGKILL) and comes back on the same datadir and socket; the
    // archiver reconnects by itself and goes on from where it was.
    let restarted = crash_and_restart(&server, work.path()).await;
    let mut conn = Conn::new(restarted.opts("root", ""))
        .await
        .expect("connect to the restarted server");
    insert_rows(&mut conn, 201..=400).await;
    let final_pos = gtid_binlog_pos(&mut conn).await;
    wait_until_archived(&repo, &final_pos, Duration::from_secs(90)).await;
    stop_archiver(archiver).await;
    let log = std::fs::read_to_string(work.path().join("archiver-crash.log")).unwrap_or_default();
    assert!(
        log.contains("binlog stream lost; reconnecting"),
        "the archiver did not notice the crash:\n{log}"
    );

    let after_backup: Vec<u64> = source_gtid_times(server.datadir())
        .into_iter()
        .map(|(seq, _)| seq)
        .filter(|seq| *seq > backup_seq)
        .collect();
    assert_eq!(
        archived_seqs(&repo, work.path()).await,
        after_backup,
        "the archive must hold every transaction after the backup, across the crash, once each"
    );

    let (run, datadir, _) =
        tokio::task::block_in_place(|| restore(&repo, work.path(), "crash", "latest"));
    assert_eq!(run.code, 0, "{}", run.output());
    assert_eq!(
        run.step("replay")["outputs"]["reached_gtid"],
        final_pos.as_str()
    );
    let restored = SandboxServer::start(
        SandboxOptions::new(&datadir, work.path().join("check-crash"))
            .option("log-bin", Some("pitr-replay-bin"))
            .option("server-id", Some("1")),
    )
    .await
    .expect("the restored datadir starts");
    let mut check = Conn::new(restored.opts("root", "")).await.expect("connect");
    let (rows, sum): (u64, u64) = check
        .query_first("SELECT COUNT(*), CAST(SUM(id) AS UNSIGNED) FROM g.t")
        .await
        .expect("count")
        .expect("a row");
    assert_eq!(
        (rows, sum),
        (400, 400 * 401 / 2),
        "every row up to the latest point, once"
    );
    assert_eq!(gtid_binlog_pos(&mut check).await, final_pos);
    let _ = check.disconnect().await;
}

/// SIGKILLs the test server's mariadbd and starts another on its datadir and socket.
async fn crash_and_restart(server: &TestServer, work: &Path) -> SandboxServer {
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success(), "SIGKILL mariadbd");
    // Gone once its socket no longer answers.
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(server.socket()).is_ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "mariadbd outlived SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut opts = SandboxOptions::new(server.datadir(), work.join("restarted"))
        .option("log-bin", Some("binlog"))
        .option("server-id", Some("1"));
    opts.socket = Some(server.socket().to_path_buf());
    SandboxServer::start(opts)
        .await
        .expect("the server starts again after the crash")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_archive_is_complete_up_to_its_heartbeat_and_the_dead_man_check_goes_stale() {
    let work = tempfile::tempdir().expect("tempdir");
    let repo = Repo::local(&work.path().join("repo"));
    let (server, mut conn) = backed_up_table("pitr-idle", &repo, work.path()).await;
    let last_write = now_secs();
    // --check proves the server can be archived, and refuses the server's own id.
    let checked = preflight(&server, &repo, ARCHIVER_ID);
    assert_eq!(checked.code, 0, "{}", checked.stdout);
    assert!(
        checked.stdout.contains("may read it as a replica"),
        "{}",
        checked.stdout
    );
    let refused = preflight(&server, &repo, "1");
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused
            .stdout
            .contains("server_id 1 is the server's own id"),
        "{}",
        refused.stdout
    );
    let end = gtid_binlog_pos(&mut conn).await;
    // Nothing is written after this; the catch-up run then vouches for "complete up to now".
    tokio::time::sleep(Duration::from_secs(2)).await;
    let caught_up = tokio::task::block_in_place(|| catch_up(&server, &repo, work.path()));
    assert_eq!(caught_up.code, 0, "{}", caught_up.output());

    let listed = repo.cli(&["backups", "list"]);
    let backups: Value = serde_json::from_str(&listed.stdout).expect("backups list --json");
    assert_eq!(
        backups[0]["pitr"]["gtid"],
        end.as_str(),
        "the backup can be rolled forward to the archive's end: {}",
        backups[0]
    );

    let metrics = work.path().join("archive.prom");
    let fresh = repo.cli(&[
        "binlogs",
        "check",
        "--max-lag",
        "1h",
        "--metrics-file",
        &metrics.display().to_string(),
    ]);
    assert_eq!(fresh.code, 0, "{}", fresh.stderr);
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    assert!(
        text.contains("stagehand_binlog_archive_lag_seconds{repository="),
        "{text}"
    );

    // A time after the last transaction but before the heartbeat is the archive's end.
    let (run, _, _) = tokio::task::block_in_place(|| {
        restore(&repo, work.path(), "idle", &rfc3339(last_write + 1))
    });
    assert_eq!(run.code, 0, "{}", run.output());
    assert_eq!(run.step("replay")["outputs"]["reached_gtid"], end.as_str());

    // Past the heartbeat nobody vouches for the archive: refused, nothing written.
    let (run, datadir, _) = tokio::task::block_in_place(|| {
        restore(&repo, work.path(), "future", &rfc3339(now_secs() + 3600))
    });
    assert_ne!(run.code, 0, "{}", run.output());
    let error = run.step("pitr")["error"].as_str().unwrap_or_default();
    assert!(error.contains("known complete only up to"), "{error}");
    assert!(
        !datadir.exists(),
        "a refused restore wrote {}",
        datadir.display()
    );

    // The archiver "stopped": the check goes stale once the lag passes the limit.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stale = repo.cli(&["binlogs", "check", "--max-lag", "2s"]);
    assert_eq!(stale.code, 1, "{}", stale.stdout);
    let verdict: Value = serde_json::from_str(&stale.stdout).expect("json");
    assert!(
        verdict["problem"]
            .as_str()
            .is_some_and(|p| p.contains("is the archiver running?")),
        "{verdict}"
    );
    assert!(
        verdict["lag_seconds"].as_u64().is_some_and(|l| l >= 3),
        "{verdict}"
    );
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_the_archive_continues_from_the_promoted_replica_without_a_gap() {
    let work = tempfile::tempdir().expect("tempdir");
    let repo = Repo::local(&work.path().join("repo"));
    let primary = TestServer::builder()
        .name("pitr-primary")
        .option("log-bin", Some("binlog"))
        .option("server-id", Some("1"))
        .tcp(true)
        .start()
        .await;
    let replica = TestServer::builder()
        .name("pitr-replica")
        .option("log-bin", Some("binlog"))
        .option("server-id", Some("2"))
        .option("log-slave-updates", None)
        .option("gtid-strict-mode", Some("1"))
        .start()
        .await;
    let mut p = primary.conn().await;
    p.query_drop("CREATE USER repl@'127.0.0.1' IDENTIFIED BY 'repl-pw'; GRANT REPLICATION SLAVE ON *.* TO repl@'127.0.0.1'")
        .await
        .expect("replication user");
    let mut r = replica.conn().await;
    r.query_drop(format!(
        "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='repl', MASTER_PASSWORD='repl-pw', MASTER_USE_GTID=slave_pos; START SLAVE",
        primary.port().expect("the primary listens on TCP")
    ))
    .await
    .expect("start replication");
    p.query_drop("CREATE DATABASE g; CREATE TABLE g.t (id INT PRIMARY KEY) ENGINE=InnoDB")
        .await
        .expect("schema");
    insert_rows(&mut p, 1..=50).await;
    let backup_seq = take_backup(&primary, &repo, work.path()).await;
    insert_rows(&mut p, 51..=100).await;
    let archived = tokio::task::block_in_place(|| catch_up(&primary, &repo, work.path()));
    assert_eq!(archived.code, 0, "{}", archived.output());
    insert_rows(&mut p, 101..=150).await;
    let primary_end = gtid_binlog_pos(&mut p).await;
    wait_for_replica(&mut r, &primary_end).await;
    // A backup of the replica, replica settings and all: the newest, so the restore
    // starts from it and its replay must first clear what it brought. (Backup ids are
    // start times in whole seconds.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let replica_seq = take_backup(&replica, &repo, work.path()).await;
    assert_eq!(replica_seq, seq_of(&primary_end));

    // Failover: the primary is gone, the replica takes the writes.
    drop(p);
    r.query_drop("STOP SLAVE; RESET SLAVE ALL")
        .await
        .expect("promote");
    insert_rows(&mut r, 151..=200).await;
    let end = gtid_binlog_pos(&mut r).await;
    let archived = tokio::task::block_in_place(|| catch_up(&replica, &repo, work.path()));
    assert_eq!(archived.code, 0, "{}", archived.output());
    assert_eq!(repo.binlogs()["end_state"], end.as_str());
    assert_eq!(
        archived_seqs(&repo, work.path()).await,
        ((backup_seq + 1)..=backup_seq + 150).collect::<Vec<_>>(),
        "every transaction after the backup, from both servers, once each"
    );

    let (run, datadir, _) =
        tokio::task::block_in_place(|| restore(&repo, work.path(), "failover", "latest"));
    assert_eq!(run.code, 0, "{}", run.output());
    assert_eq!(run.step("replay")["outputs"]["reached_gtid"], end.as_str());
    assert_eq!(
        run.step("replay")["outputs"]["transactions"],
        50,
        "only what came after the replica's backup"
    );
    let restored = SandboxServer::start(
        SandboxOptions::new(&datadir, work.path().join("check-failover"))
            .option("log-bin", Some("pitr-replay-bin"))
            .option("server-id", Some("3")),
    )
    .await
    .expect("the restored datadir starts");
    let mut check = Conn::new(restored.opts("root", "")).await.expect("connect");
    let rows: Option<(u64, u64)> = check
        .query_first("SELECT COUNT(*), CAST(SUM(id) AS UNSIGNED) FROM g.t")
        .await
        .expect("count");
    assert_eq!(rows, Some((200, 200 * 201 / 2)));
    let _ = check.disconnect().await;

    // A point between the two backups rolls the older one forward; --check says so
    // before anything runs.
    let between = format!("0-1-{}", backup_seq + 50);
    let checked = {
        let mut args = vec![
            "run".to_string(),
            "plans/restore-pitr.yaml".into(),
            "--check".into(),
        ];
        let data = work.path().join("between-data");
        let work_dir = work.path().join("between-work");
        for s in repo.plan_sets().into_iter().chain([
            format!("to={between}"),
            format!("workdir={}", work_dir.display()),
            format!("datadir={}", data.display()),
        ]) {
            args.extend(["--set".to_string(), s]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stagehand_env(&args, &repo.env())
    };
    let first_backup =
        format!("(GTID 0-1-{backup_seq}), then 1 archived segment(s) (#1) up to GTID {between}");
    assert!(
        checked.stdout.contains(&first_backup),
        "--check names the choice:\n{}",
        checked.stdout
    );
    let (run, datadir, _) =
        tokio::task::block_in_place(|| restore(&repo, work.path(), "between", &between));
    assert_eq!(run.code, 0, "{}", run.output());
    assert_eq!(run.step("replay")["outputs"]["transactions"], 50);
    let restored = SandboxServer::start(
        SandboxOptions::new(&datadir, work.path().join("check-between"))
            .option("log-bin", Some("pitr-replay-bin"))
            .option("server-id", Some("3")),
    )
    .await
    .expect("the restored datadir starts");
    let mut check = Conn::new(restored.opts("root", "")).await.expect("connect");
    let rows: Option<(u64, u64)> = check
        .query_first("SELECT COUNT(*), CAST(SUM(id) AS UNSIGNED) FROM g.t")
        .await
        .expect("count");
    assert_eq!(
        rows,
        Some((100, 100 * 101 / 2)),
        "exactly the rows up to {between}"
    );
    let _ = check.disconnect().await;
}

/// Waits until the replica has applied `pos`.
async fn wait_for_replica(replica: &mut Conn, pos: &str) {
    let t0 = Instant::now();
    loop {
        let at: String = replica
            .query_first("SELECT @@gtid_slave_pos")
            .await
            .expect("gtid_slave_pos")
            .unwrap_or_default();
        if at == pos {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the replica is at {at}, not {pos}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_in_the_gtid_sequence_stops_the_archiver_unless_it_is_allowed() {
    let work = tempfile::tempdir().expect("tempdir");
    let repo = Repo::local(&work.path().join("repo"));
    let (server, mut conn) = backed_up_table("pitr-hole", &repo, work.path()).await;
    let first = tokio::task::block_in_place(|| catch_up(&server, &repo, work.path()));
    assert_eq!(first.code, 0, "{}", first.output());
    let before = gtid_binlog_pos(&mut conn).await;
    let skip_to = seq_of(&before) + 10;
    conn.query_drop(format!(
        "SET SESSION gtid_seq_no = {skip_to}; INSERT INTO g.t VALUES (1000)"
    ))
    .await
    .expect("a transaction after a hole");

    let refused = tokio::task::block_in_place(|| catch_up(&server, &repo, work.path()));
    assert_ne!(refused.code, 0, "{}", refused.output());
    let step = refused.step("archive");
    let error = step["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("goes from {before} to 0-1-{skip_to}")),
        "{error}"
    );
    assert!(
        step["hint"]
            .as_str()
            .is_some_and(|h| h.contains("allow_seq_jumps")),
        "{step}"
    );
    assert_eq!(
        repo.binlogs()["end_state"],
        before.as_str(),
        "nothing past the hole"
    );

    let mut sets = archive_sets(&server, &repo, "catch_up");
    sets.push("allow_seq_jumps=true".into());
    let allowed = tokio::task::block_in_place(|| {
        run_plan(
            work.path(),
            Path::new("plans/binlog-archive.yaml"),
            &sets,
            &repo.env(),
        )
    });
    assert_eq!(allowed.code, 0, "{}", allowed.output());
    assert_eq!(allowed.step("archive")["outputs"]["seq_jumps"], 1);
    assert_eq!(
        repo.binlogs()["end_state"],
        format!("0-1-{skip_to}").as_str()
    );
}

/// A server with table `g.t`, backed up into `repo`, then 20 rows written (one
/// transaction each).
async fn backed_up_table(name: &str, repo: &Repo, work: &Path) -> (TestServer, Conn) {
    let server = source_server(name).await;
    let mut conn = server.conn().await;
    conn.query_drop("CREATE DATABASE g; CREATE TABLE g.t (id INT PRIMARY KEY) ENGINE=InnoDB")
        .await
        .expect("schema");
    take_backup(&server, repo, work).await;
    insert_rows(&mut conn, 1..=20).await;
    (server, conn)
}

/// A server with a binlog (GTIDs `0-1-N`).
async fn source_server(name: &str) -> TestServer {
    TestServer::builder()
        .name(name)
        .option("log-bin", Some("binlog"))
        .option("server-id", Some("1"))
        .start()
        .await
}

async fn gtid_binlog_pos(conn: &mut Conn) -> String {
    conn.query_first("SELECT @@gtid_binlog_pos")
        .await
        .expect("SELECT @@gtid_binlog_pos")
        .unwrap_or_default()
}

/// One transaction per row; the row holds [`MARKER`] when the table has a second column.
async fn insert_rows(conn: &mut Conn, ids: std::ops::RangeInclusive<u32>) {
    let columns: u64 = conn
        .query_first("SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = 'g' AND table_name = 't'")
        .await
        .expect("columns")
        .unwrap_or(1);
    for id in ids {
        let values = if columns > 1 {
            format!("({id}, '{MARKER}')")
        } else {
            format!("({id})")
        };
        conn.query_drop(format!("INSERT INTO g.t VALUES {values}"))
            .await
            .expect("insert");
    }
}

/// A hot backup of `server` into the repository (plans/backup-to-s3.yaml); returns
/// its GTID seq_no.
async fn take_backup(server: &TestServer, repo: &Repo, work: &Path) -> u64 {
    let mut sets = vec![
        format!("socket={}", server.socket().display()),
        format!("datadir={}", server.datadir().display()),
        "user=root".to_string(),
        format!("spool={}", work.join("spool").display()),
    ];
    sets.extend(repo.plan_sets());
    let run = tokio::task::block_in_place(|| {
        run_plan(
            work,
            Path::new("plans/backup-to-s3.yaml"),
            &sets,
            &repo.env(),
        )
    });
    assert_eq!(run.code, 0, "the backup failed: {}", run.output());
    let listed = repo.cli(&["backups", "list"]);
    let backups: Value = serde_json::from_str(&listed.stdout).expect("backups list --json");
    let newest = backups
        .as_array()
        .and_then(|b| b.last())
        .cloned()
        .unwrap_or_default();
    seq_of(newest["gtid_binlog_pos"].as_str().unwrap_or_default())
}

/// `plans/binlog-archive.yaml` in follow mode, closing a segment every second.
fn spawn_archiver(
    server: &TestServer,
    repo: &Repo,
    work: &Path,
    label: &str,
) -> tokio::process::Child {
    let log = std::fs::File::create(work.join(format!("archiver-{label}.log"))).expect("log file");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_stagehand"));
    cmd.args(["run", "plans/binlog-archive.yaml", "--state-dir"])
        .arg(work.join("archiver-state"));
    for s in archive_sets(server, repo, "follow") {
        cmd.args(["--set", &s]);
    }
    cmd.current_dir(crate::cli::repo_root())
        .env_remove("STAGEHAND_LOG")
        .envs(repo.env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    cmd.spawn().expect("start the archiver")
}

fn archive_sets(server: &TestServer, repo: &Repo, mode: &str) -> Vec<String> {
    let mut sets = vec![
        format!("socket={}", server.socket().display()),
        "user=root".to_string(),
        format!("mode={mode}"),
        format!("server_id={ARCHIVER_ID}"),
        "segment_max_age=1s".to_string(),
    ];
    sets.extend(repo.plan_sets());
    sets
}

/// `stagehand run plans/binlog-archive.yaml --check` with replica id `server_id`.
fn preflight(server: &TestServer, repo: &Repo, server_id: &str) -> crate::cli::Run {
    let mut args = vec![
        "run".to_string(),
        "plans/binlog-archive.yaml".into(),
        "--check".into(),
    ];
    for s in archive_sets(server, repo, "catch_up") {
        let s = if s.starts_with("server_id=") {
            format!("server_id={server_id}")
        } else {
            s
        };
        args.extend(["--set".to_string(), s]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    stagehand_env(&args, &repo.env())
}

/// One catch-up run of the archiver.
fn catch_up(server: &TestServer, repo: &Repo, work: &Path) -> PlanRun {
    let sets = archive_sets(server, repo, "catch_up");
    run_plan(
        work,
        Path::new("plans/binlog-archive.yaml"),
        &sets,
        &repo.env(),
    )
}

/// SIGTERM, as a service manager stops it: it uploads what it holds and exits.
async fn stop_archiver(mut child: tokio::process::Child) {
    let pid = child.id().expect("the archiver runs");
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "SIGTERM to the archiver");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the archiver stops within 30 s of SIGTERM")
        .expect("wait");
    // An interrupted run exits non-zero; what matters is that it stopped and that
    // the archive is complete, checked by the caller.
    assert!(
        status.code().is_some(),
        "the archiver died of a signal: {status}"
    );
}

/// Waits until the archive's end position is `pos`.
async fn wait_until_archived(repo: &Repo, pos: &str, timeout: Duration) {
    let t0 = Instant::now();
    let mut end = String::new();
    while t0.elapsed() < timeout {
        end = repo.binlogs()["end_state"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if end == pos {
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("the archive reached {end}, not {pos}, within {timeout:?}");
}

/// `(seq_no, time)` of every GTID in the source's binlog files, read by `mariadb-binlog`.
fn source_gtid_times(datadir: &Path) -> Vec<(u64, u64)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(datadir)
        .expect("datadir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                // binlog.000001, not 11.x's GTID index binlog.000001.idx
                .and_then(|n| n.strip_prefix("binlog."))
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    files.sort();
    gtids_of(&files)
}

/// `(seq_no, time)` of the GTID events in binlog files, as `mariadb-binlog` prints them.
fn gtids_of(files: &[PathBuf]) -> Vec<(u64, u64)> {
    let out = std::process::Command::new(binary("mariadb-binlog"))
        .arg("--no-defaults")
        .args(files)
        .env("TZ", "UTC")
        .output()
        .expect("mariadb-binlog runs (apt-get install mariadb-client)");
    assert!(
        out.status.success(),
        "mariadb-binlog {files:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(gtid_line)
        .collect()
}

/// `#261207  6:11:53 server id 1  end_log_pos 367 CRC32 0x87bbc54d <TAB>GTID 0-1-1 ddl`.
fn gtid_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix('#')?;
    let (_, gtid) = rest.split_once("\tGTID ")?;
    let seq = seq_of(gtid.split_whitespace().next()?);
    let mut fields = rest.split_whitespace();
    let date = fields.next()?;
    let clock = fields.next()?;
    let (h, m, s) = {
        let mut p = clock.split(':');
        (p.next()?, p.next()?, p.next()?)
    };
    let text = format!(
        "20{}-{}-{}T{:0>2}:{m}:{s}Z",
        date.get(0..2)?,
        date.get(2..4)?,
        date.get(4..6)?,
        h
    );
    let t = humantime::parse_rfc3339(&text).ok()?;
    Some((seq, t.duration_since(UNIX_EPOCH).ok()?.as_secs()))
}

/// The seq_nos of every transaction in the archive, in order: each segment read back
/// (decrypted, decompressed, checked against its hash) and listed by `mariadb-binlog`.
async fn archived_seqs(repo: &Repo, work: &Path) -> Vec<u64> {
    assert_eq!(
        repo.binlogs()["gaps"],
        serde_json::json!([]),
        "no gap in the archive"
    );
    let store = Repository::open(&repo.config)
        .await
        .expect("open the repository");
    let archive = BinlogArchive::new(store.store().clone());
    let listing = archive.list().await.expect("list the archive");
    let dir = work.join("segments-read");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut files = Vec::new();
    for seg in &listing.segments {
        assert_eq!(
            seg.key_id.is_some(),
            repo.key.is_some(),
            "segment {} is encrypted as the repository says",
            seg.seq
        );
        let stored = archive.get(seg).await.expect("segment object");
        assert!(
            !holds(&stored, MARKER),
            "segment {} shows a row in plain text",
            seg.seq
        );
        let plain = archive
            .read(seg, repo.key.as_ref())
            .await
            .expect("read a segment back");
        let path = dir.join(format!("{}.binlog", seg.seq));
        std::fs::write(&path, plain).expect("write segment");
        files.push(path);
    }
    gtids_of(&files).into_iter().map(|(seq, _)| seq).collect()
}

fn holds(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A target time in the middle of the transactions after the backup, and the GTID
/// seq_no the restore must reach for it: the last transaction before the first one
/// whose time is later (binlog order).
fn time_target(after_backup: &[(u64, u64)]) -> (u64, u64) {
    // Two thirds into the transactions of the seconds before the last one.
    let last_second = after_backup
        .iter()
        .map(|(_, t)| *t)
        .max()
        .unwrap_or_default();
    let before_last = after_backup
        .iter()
        .position(|(_, time)| *time >= last_second)
        .unwrap_or_default();
    let t = after_backup[before_last * 2 / 3].1;
    let first_later = after_backup
        .iter()
        .position(|(_, time)| *time > t)
        .expect("a transaction later than the target time");
    assert!(
        first_later > 0,
        "the target time is before every transaction"
    );
    (t, after_backup[first_later - 1].0)
}

/// Runs plans/restore-pitr.yaml to `to`; checks the plan's outputs, then starts the
/// restored datadir and checks its data against the workloads at `expected`.
async fn restore_and_check(
    (label, method): (&str, &str),
    to: &str,
    expected: u64,
    repo: &Repo,
    work: &Path,
    (log, ddl_log): (&WorkloadLog, &DdlLog),
    opts: &WorkloadOptions,
) -> Vec<String> {
    let set = format!("replay_method={method}");
    let (run, datadir, _) =
        tokio::task::block_in_place(|| restore_with(repo, work, label, to, &[set]));
    let mut problems = Vec::new();
    if run.code != 0 {
        return vec![format!(
            "[{label}] the restore to {to} failed: {}",
            run.output()
        )];
    }
    let want = format!("0-1-{expected}");
    let pitr = &run.step("pitr")["outputs"];
    let replay = &run.step("replay")["outputs"];
    if pitr["target_gtid"] != want.as_str() {
        problems.push(format!(
            "[{label}] pitr_target chose {} for {to}, expected {want}",
            pitr["target_gtid"]
        ));
    }
    if replay["reached_gtid"] != want.as_str() {
        problems.push(format!(
            "[{label}] the replay reached {}, expected {want}",
            replay["reached_gtid"]
        ));
    }
    let server = SandboxServer::start(
        SandboxOptions::new(&datadir, work.join(format!("check-{label}")))
            .option("log-bin", Some("pitr-replay-bin"))
            .option("server-id", Some("1")),
    )
    .await
    .unwrap_or_else(|e| panic!("[{label}] the restored datadir does not start: {e}"));
    let mut conn = Conn::new(server.opts("root", ""))
        .await
        .expect("connect to the restored server");
    let reached = gtid_binlog_pos(&mut conn).await;
    if reached != want {
        problems.push(format!(
            "[{label}] the restored server is at {reached}, expected {want}"
        ));
    }
    let report = verify(&mut conn, log, opts, expected).await;
    problems.extend(report.violations.iter().map(|v| format!("[{label}] {v}")));
    let ddl = check_ddl(&mut conn, ddl_log, expected).await;
    problems.extend(ddl.problems.iter().map(|p| format!("[{label}] ddl: {p}")));
    eprintln!(
        "[{label}] restored to {want} with {method} ({} transactions replayed, {} s): {} transfers, {} DDL tables, {} problem(s)",
        replay["transactions"],
        replay["replay_seconds"],
        report.expected_transfers,
        ddl.tables,
        problems.len()
    );
    let _ = conn.disconnect().await;
    problems
}

/// `plans/restore-pitr.yaml` into `<work>/<label>-data`; the run, the datadir and the workdir.
fn restore(repo: &Repo, work: &Path, label: &str, to: &str) -> (PlanRun, PathBuf, PathBuf) {
    restore_with(repo, work, label, to, &[])
}

/// [`restore`] with more plan params.
fn restore_with(
    repo: &Repo,
    work: &Path,
    label: &str,
    to: &str,
    extra: &[String],
) -> (PlanRun, PathBuf, PathBuf) {
    let datadir = work.join(format!("{label}-data"));
    let workdir = work.join(format!("{label}-work"));
    let mut sets = repo.plan_sets();
    // The restore plan decrypts with the key it is given; it has no `encrypt` switch.
    sets.retain(|s| !s.starts_with("encrypt="));
    sets.extend([
        format!("to={to}"),
        format!("workdir={}", workdir.display()),
        format!("datadir={}", datadir.display()),
        format!(
            "check_socket={}",
            work.join(format!("{label}-chk")).join("c.sock").display()
        ),
    ]);
    sets.extend(extra.iter().cloned());
    let run = run_plan(
        work,
        Path::new("plans/restore-pitr.yaml"),
        &sets,
        &repo.env(),
    );
    (run, datadir, workdir)
}

fn seq_of(gtid: &str) -> u64 {
    gtid.rsplit('-')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn binary(name: &str) -> PathBuf {
    stagehand_mariadb::sandbox::binaries::find_binary(name)
        .unwrap_or_else(|| panic!("`{name}` not found: apt-get install mariadb-client"))
}
