//! Privileges the run needs but `--check` alone used to catch (review of issue 11): a
//! server with its binary log on and a backup user without BINLOG MONITOR must not get
//! a backup that looks complete but lacks its binlog position.

use crate::cli::stagehand_env;
use crate::support::{exec_all, full_backup_args};
use serde_json::Value;
use stagehand_backup::manifest::MANIFEST_FILE;
use stagehand_testkit::TestServer;

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_without_binlog_monitor_fails_before_copying() {
    let server = TestServer::builder()
        .name("no-binlog-monitor")
        .runtime_option("log-bin", Some("binlog"))
        .start()
        .await;
    exec_all(
        &server,
        &[
            "CREATE USER nobinlog@localhost IDENTIFIED BY 'pw'",
            "GRANT RELOAD, PROCESS, SLAVE MONITOR ON *.* TO nobinlog@localhost",
        ],
    )
    .await;
    let work = tempfile::tempdir().expect("tempdir");
    let target = work.path().join("backup");
    let state = work.path().join("state");
    let args = full_backup_args(&server, &target, &state, &["user=nobinlog"], &["--json"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r =
        tokio::task::block_in_place(|| stagehand_env(&args, &[("STAGEHAND_DB_PASSWORD", "pw")]));
    assert_eq!(r.code, 1, "the backup must fail: {}", r.stdout);
    let report: Value = serde_json::from_str(&r.stdout).expect("report");
    let first_failed = report["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["status"] == "failed"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        first_failed["id"], "lock_start",
        "it fails before copying: {report}"
    );
    let said = format!("{} {}", first_failed["error"], first_failed["hint"]);
    assert!(
        said.contains("binary log is on") && said.contains("BINLOG MONITOR"),
        "the failure names the missing privilege: {said}"
    );
    assert!(
        !target.join(MANIFEST_FILE).exists(),
        "nothing looks complete"
    );
}
