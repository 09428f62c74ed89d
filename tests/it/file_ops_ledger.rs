//! The redo tail's ledger of tablespace file operations (issue 14 groundwork): DDL runs
//! while the backup holds only START (a gate step keeps BLOCK_DDL back until the test
//! has run it), and `.stagehand/file_ops.json` must name exactly those operations,
//! with the server's own space ids and file names. Runs on whatever `mariadbd` is
//! first in PATH (10.11 here; 11.8 with its bin directory put first).

use crate::support::{backup_plan, id_of, insert_gate, spawn_backup, wait_for_start};
use serde_json::Value;
use stagehand_innodb::file_ops::{FileOps, SpaceOps};
use stagehand_testkit::TestServer;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// plans/full-backup.yaml with a gate between START and BLOCK_DDL (an `exec` step that
/// waits for `flag`), and without the steps after END: `seal` removes `.stagehand/`,
/// where the ledger is read.
fn gated_plan(dir: &Path, flag: &Path) -> PathBuf {
    backup_plan(dir, |steps| {
        steps.retain(|s| !matches!(id_of(s), Some("seal" | "discard" | "verify" | "prepare")));
        insert_gate(steps, "lock_ddl", "redo", flag, 2400);
    })
}

/// A backup run of [`gated_plan`], stopped at the gate between START and BLOCK_DDL.
struct GatedBackup {
    child: tokio::process::Child,
    flag: PathBuf,
    target: PathBuf,
    stderr: PathBuf,
    /// The server's LSN once the gate was reached: what the test does next is logged
    /// after it.
    ddl_lsn: u64,
}

impl GatedBackup {
    async fn start(server: &TestServer, dir: &Path) -> GatedBackup {
        let flag = dir.join("ddl-done");
        let plan = gated_plan(dir, &flag);
        let state = dir.join("state");
        let target = dir.join("backup");
        let stderr = dir.join("stagehand.stderr");
        let mut child = spawn_backup(&plan, server, &target, &state, &[], &stderr);
        wait_for_start(&mut child, &state, "gate").await;
        // The log copied starts at the last checkpoint, which on a fresh server comes
        // before the test's setup: the operations under test are those after this LSN.
        let ddl_lsn = current_lsn(server).await;
        GatedBackup {
            child,
            flag,
            target,
            stderr,
            ddl_lsn,
        }
    }

    /// The ledger file as the running redo tail publishes it, once it covers `lsn`.
    async fn ledger_reaching(&self, lsn: u64) -> FileOps {
        let dir = stagehand_backup::dir::BackupDir::new(&self.target);
        let t0 = Instant::now();
        loop {
            match dir.read_file_ops() {
                Some(l) if l.to_lsn >= lsn => return l,
                seen => assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "the running redo tail did not publish its ledger up to LSN {lsn}: {:?}",
                    seen.map(|l| l.to_lsn)
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens the gate, waits for the backup; returns the redo step's outputs and the
    /// whole ledger.
    async fn finish(self, server: &TestServer) -> (Value, FileOps) {
        std::fs::write(&self.flag, b"").expect("open the gate");
        let out = tokio::time::timeout(Duration::from_secs(180), self.child.wait_with_output())
            .await
            .expect("the backup finishes")
            .expect("wait for stagehand");
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        assert_eq!(out.status.code(), Some(0), "stagehand failed:\n{stderr}");
        let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        let redo = report["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["id"] == "redo"))
            .map(|s| s["outputs"].clone())
            .expect("redo step in the report");
        let text = std::fs::read_to_string(self.target.join(".stagehand/file_ops.json"))
            .expect("the ledger is written when the redo tail ends");
        let whole: FileOps = serde_json::from_str(&text).expect("the ledger parses");
        eprintln!(
            "server {}; redo outputs: {redo}\nafter LSN {}; ledger: {text}",
            server.version(),
            self.ddl_lsn
        );
        assert!(whole.tracked);
        assert!(whole.from_lsn <= self.ddl_lsn && self.ddl_lsn < whole.to_lsn);
        (redo, whole)
    }
}

async fn current_lsn(server: &TestServer) -> u64 {
    server
        .query_first::<(String, u64)>("SHOW GLOBAL STATUS LIKE 'Innodb_lsn_current'")
        .await
        .map(|(_, lsn)| lsn)
        .expect("Innodb_lsn_current")
}

async fn space_id(server: &TestServer, name: &str) -> u32 {
    server
        .query_first::<u32>(&format!(
            "SELECT SPACE FROM information_schema.INNODB_SYS_TABLESPACES WHERE NAME = '{name}'"
        ))
        .await
        .unwrap_or_else(|| panic!("tablespace {name}"))
}

fn ibd(table: &str) -> String {
    format!("./d/{table}.ibd")
}

fn space<'a>(ledger: &'a FileOps, id: u32, what: &str) -> &'a SpaceOps {
    ledger
        .spaces
        .get(&id)
        .unwrap_or_else(|| panic!("space {id} ({what}) in the ledger: {ledger:#?}"))
}

/// A table rebuilt in place (ALTER … FORCE, TRUNCATE, OPTIMIZE): the old tablespace is
/// renamed away from the table's file and deleted; a new one is created, built from page
/// 0 up and ends under the table's file name.
fn assert_rebuilt(ledger: &FileOps, table: &str, old: u32, new: u32) {
    assert_ne!(old, new, "{table} got a new tablespace");
    let o = space(ledger, old, table);
    assert!(
        o.deleted.is_some(),
        "{table}: old space {old} deleted: {o:?}"
    );
    assert_eq!(
        o.renamed.first().map(|r| r.from.as_str()),
        Some(ibd(table).as_str()),
        "{table}: old space {old} renamed away from its file: {o:?}"
    );
    assert!(o.created.is_none() && o.page0_init.is_empty(), "{o:?}");
    let n = space(ledger, new, table);
    assert!(
        n.created.is_some(),
        "{table}: new space {new} created: {n:?}"
    );
    assert!(n.deleted.is_none(), "{n:?}");
    assert!(
        !n.page0_init.is_empty(),
        "{table}: page 0 of {new} built: {n:?}"
    );
    assert_eq!(n.name.as_deref(), Some(ibd(table).as_str()), "{n:?}");
    if let (Some(created), Some(deleted)) = (&n.created, &o.deleted) {
        assert!(
            created.lsn <= deleted.lsn,
            "created before the old one is dropped"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ledger_names_the_ddl_run_between_start_and_block_ddl() {
    let server = TestServer::builder()
        .name("file-ops-ledger")
        .runtime_option("log-bin", Some("binlog"))
        .runtime_option("server-id", Some("1"))
        .start()
        .await;
    server.exec("CREATE DATABASE d").await;
    for t in ["keep", "gone", "rebuilt", "trunc", "opt"] {
        server
            .exec(&format!(
                "CREATE TABLE d.{t} (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB"
            ))
            .await;
        server
            .exec(&format!(
                "INSERT INTO d.{t} SELECT seq, REPEAT('x', 100) FROM d.seq_1_to_2000"
            ))
            .await;
    }
    let mut before = BTreeMap::new();
    for t in ["keep", "gone", "rebuilt", "trunc", "opt"] {
        before.insert(t, space_id(&server, &format!("d/{t}")).await);
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let backup = GatedBackup::start(&server, dir.path()).await;

    // Only START is held: none of these waits for the backup.
    for sql in [
        "CREATE TABLE d.fresh (id INT PRIMARY KEY) ENGINE=InnoDB",
        "INSERT INTO d.fresh SELECT seq FROM d.seq_1_to_100",
        "RENAME TABLE d.keep TO d.kept",
        "DROP TABLE d.gone",
        "ALTER TABLE d.rebuilt FORCE",
        "TRUNCATE TABLE d.trunc",
        "OPTIMIZE TABLE d.opt",
    ] {
        server.exec(sql).await;
    }
    let fresh = space_id(&server, "d/fresh").await;
    let kept = space_id(&server, "d/kept").await;
    let rebuilt = space_id(&server, "d/rebuilt").await;
    let trunc = space_id(&server, "d/trunc").await;
    let opt = space_id(&server, "d/opt").await;
    let ddl_lsn = backup.ddl_lsn;

    // Still under START: the running tail has already published what the DDL did, and
    // replaying its events gives each name's tablespace now.
    let now = current_lsn(&server).await;
    let live = backup.ledger_reaching(now).await;
    let state = live.state_at(live.to_lsn);
    for (table, id) in [
        ("fresh", fresh),
        ("kept", kept),
        ("rebuilt", rebuilt),
        ("trunc", trunc),
        ("opt", opt),
    ] {
        assert_eq!(
            live.name_owner_at(&ibd(table), live.to_lsn),
            Some(id),
            "{table}: {state:?}"
        );
        assert!(state[&id].alive, "{table}: {state:?}");
    }
    assert_eq!(
        state[&fresh].created_lsn.map(|l| l > ddl_lsn),
        Some(true),
        "{state:?}"
    );
    for (table, old) in [
        ("gone", before["gone"]),
        ("rebuilt", before["rebuilt"]),
        ("trunc", before["trunc"]),
        ("opt", before["opt"]),
    ] {
        assert!(
            !state[&old].alive,
            "the old tablespace of {table} is deleted: {state:?}"
        );
    }
    assert!(
        live.name_owner_at(&ibd("keep"), live.to_lsn).is_none(),
        "{state:?}"
    );
    assert_eq!(
        live.name_owner_at(&ibd("keep"), ddl_lsn),
        Some(kept),
        "keep was {kept} before the RENAME"
    );

    let (redo, whole) = backup.finish(&server).await;
    let ledger = whole.since(ddl_lsn);

    assert_eq!(kept, before["keep"], "RENAME keeps the tablespace");
    let k = space(&ledger, kept, "kept");
    assert_eq!(k.renamed.len(), 1, "{k:?}");
    assert_eq!(
        (k.renamed[0].from.as_str(), k.renamed[0].to.as_str()),
        (ibd("keep").as_str(), ibd("kept").as_str())
    );
    assert!(!k.pages_not_in_copy() && k.deleted.is_none(), "{k:?}");

    let g = space(&ledger, before["gone"], "gone");
    assert_eq!(
        g.deleted.as_ref().map(|d| d.name.as_str()),
        Some(ibd("gone").as_str())
    );
    assert!(g.renamed.is_empty() && g.created.is_none(), "{g:?}");

    let f = space(&ledger, fresh, "fresh");
    assert_eq!(
        f.created.as_ref().map(|c| c.name.as_str()),
        Some(ibd("fresh").as_str())
    );
    assert!(f.renamed.is_empty() && f.deleted.is_none(), "{f:?}");
    assert!(!f.page0_init.is_empty(), "{f:?}");

    assert_rebuilt(&ledger, "rebuilt", before["rebuilt"], rebuilt);
    assert_rebuilt(&ledger, "trunc", before["trunc"], trunc);
    assert_rebuilt(&ledger, "opt", before["opt"], opt);

    // Exactly these tablespaces changed as files; nothing else did.
    let changed: BTreeSet<u32> = ledger
        .spaces
        .iter()
        .filter(|(_, s)| s.changed_file())
        .map(|(id, _)| *id)
        .collect();
    let expected: BTreeSet<u32> = [
        fresh,
        kept,
        before["gone"],
        before["rebuilt"],
        rebuilt,
        before["trunc"],
        trunc,
        before["opt"],
        opt,
    ]
    .into();
    assert_eq!(changed, expected, "ledger: {ledger:#?}");
    let counts = ledger.counts();
    assert_eq!((counts.created, counts.deleted), (4, 4), "{counts:?}");
    // The outputs count the whole copied log (the setup's tables too).
    let all = whole.counts();
    assert_eq!(redo["spaces_changed"], all.changed_spaces);
    assert_eq!(redo["files_created"], all.created);
    assert_eq!(redo["files_deleted"], all.deleted);
    assert_eq!(redo["files_renamed"], all.renamed);
    assert_eq!(redo["page0_inits"], all.page0_inits);
    assert_eq!(redo["file_ops_tracked"], true);
    assert!(redo["to_lsn"].as_u64() <= Some(whole.to_lsn));
}

/// Sizes of the server's undo tablespaces `undo001`, `undo002`.
fn undo_sizes(server: &TestServer) -> Vec<u64> {
    ["undo001", "undo002"]
        .iter()
        .map(|f| {
            std::fs::metadata(server.datadir().join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ledger_records_undo_truncation_during_the_copy() {
    const INITIAL: u64 = 10 << 20;
    let server = TestServer::builder()
        .name("file-ops-undo")
        .option("innodb_undo_tablespaces", Some("2"))
        .runtime_option("innodb_undo_log_truncate", Some("ON"))
        .runtime_option("innodb_max_undo_log_size", Some("10M"))
        // 10.11 looks for undo to truncate every Nth purge batch; gone in later versions.
        .runtime_option("loose-innodb_purge_rseg_truncate_frequency", Some("1"))
        .runtime_option("log-bin", Some("binlog"))
        .runtime_option("server-id", Some("1"))
        .start()
        .await;
    server.exec("CREATE DATABASE d").await;
    server
        .exec("CREATE TABLE d.u (id INT PRIMARY KEY, pad VARCHAR(1000)) ENGINE=InnoDB")
        .await;
    server
        .exec("INSERT INTO d.u SELECT seq, REPEAT('a', 1000) FROM d.seq_1_to_20000")
        .await;
    assert!(undo_sizes(&server).iter().all(|&s| s <= INITIAL));

    let dir = tempfile::tempdir().expect("tempdir");
    let backup = GatedBackup::start(&server, dir.path()).await;
    // One transaction writes ~20 MB of undo into one undo tablespace; once purged, the
    // tablespace is over innodb_max_undo_log_size and purge truncates it.
    server.exec("UPDATE d.u SET pad = REPEAT('b', 1000)").await;
    let grown = undo_sizes(&server);
    let grown_space = grown
        .iter()
        .position(|&s| s > INITIAL)
        .expect("an undo tablespace grew past 10 MiB");
    server
        .exec("SET GLOBAL innodb_max_purge_lag_wait = 0")
        .await;
    let t0 = Instant::now();
    while undo_sizes(&server)[grown_space] > INITIAL {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "purge did not truncate undo{:03} (sizes {:?})",
            grown_space + 1,
            undo_sizes(&server)
        );
        server
            .exec("SET GLOBAL innodb_max_purge_lag_wait = 0")
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let truncated_pages = undo_sizes(&server)[grown_space] / 16384;
    let ddl_lsn = backup.ddl_lsn;
    let (redo, whole) = backup.finish(&server).await;
    let ledger = whole.since(ddl_lsn);

    // Undo tablespace N has space id N (innodb_undo_tablespaces, fresh install).
    let undo_id = grown_space as u32 + 1;
    let u = space(&ledger, undo_id, "the truncated undo tablespace");
    assert!(
        u.trimmed
            .iter()
            .any(|t| u64::from(t.pages) == truncated_pages),
        "TRIM_PAGES to {truncated_pages} pages: {u:?}"
    );
    assert!(!u.page0_init.is_empty(), "page 0 built again: {u:?}");
    assert!(u.created.is_none() && u.deleted.is_none() && u.renamed.is_empty());
    assert!(u.pages_not_in_copy());
    let undo = whole.state_at(whole.to_lsn).get(&undo_id).cloned();
    assert!(
        undo.as_ref()
            .is_some_and(|s| s.alive && s.rebuilt_lsn > Some(ddl_lsn)),
        "rebuilt after the copy began: {undo:?}"
    );
    // Nothing else changed as a file.
    let changed: Vec<u32> = ledger
        .spaces
        .iter()
        .filter(|(_, s)| s.changed_file())
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(changed, [undo_id], "{ledger:#?}");
    assert!(redo["undo_trims"].as_u64() >= Some(1), "{redo}");
}
