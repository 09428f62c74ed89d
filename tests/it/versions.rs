//! Server series (issue 13): a backup of MariaDB 11.8 taken and prepared with 11.8's
//! binaries, refused clearly by 10.11's, and `--check` saying whether this host can
//! prepare a backup of the source. Needs both builds: Debian 12's 10.11
//! (`apt-get install mariadb-server`) and 11.8 from `scripts/ensure-deps.sh`.

use crate::cli::repo_root;
use crate::support::{full_backup_args, report_of};
use serde_json::Value;
use stagehand_backup::manifest::{Manifest, MANIFEST_FILE};
use stagehand_testkit::TestServer;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The bin directory of MariaDB 11.8: `$STAGEHAND_MARIADB_11_8_BIN`, else where
/// scripts/ensure-deps.sh puts it.
pub fn mariadb_11_8_bin() -> PathBuf {
    let dir = std::env::var_os("STAGEHAND_MARIADB_11_8_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/stagehand/mariadb-11.8/bin")
        });
    assert!(
        dir.join("mariadbd").exists() && dir.join("mariadb-install-db").exists(),
        "MariaDB 11.8 is not in {}: run scripts/ensure-deps.sh (it downloads Debian 13's MariaDB 11.8 there), or set STAGEHAND_MARIADB_11_8_BIN",
        dir.display()
    );
    dir
}

/// The directory of Debian 12's MariaDB 10.11 `mariadbd`.
fn mariadb_10_11_bin() -> PathBuf {
    let dir = PathBuf::from("/usr/sbin");
    let out = Command::new(dir.join("mariadbd"))
        .args(["--no-defaults", "--version"])
        .output()
        .expect("/usr/sbin/mariadbd runs: apt-get install mariadb-server");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 10.11."),
        "/usr/sbin/mariadbd is not MariaDB 10.11: {text}"
    );
    dir
}

struct Run {
    code: i32,
    report: Value,
    stdout: String,
}

/// `stagehand ARGS` with the server binaries of `bin` chosen.
fn stagehand_with(bin: &Path, args: &[String]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("STAGEHAND_LOG")
        .env("STAGEHAND_MARIADB_BIN", bin)
        .output()
        .expect("run stagehand");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Run {
        code: out.status.code().unwrap_or(-1),
        report: report_of(&stdout),
        stdout,
    }
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn backup_args(server: &TestServer, target: &Path, state: &Path, mode: &str) -> Vec<String> {
    full_backup_args(
        server,
        target,
        state,
        &["prepare=false", "user=root"],
        &[mode],
    )
}

fn prepare_args(target: &Path, state: &Path) -> Vec<String> {
    let mut a = args(&["run", "plans/prepare.yaml", "--json", "--set"]);
    a.push(format!("target={}", target.display()));
    a.extend(["--state-dir".to_string(), state.display().to_string()]);
    a
}

fn prepare_error(report: &Value) -> String {
    report["steps"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
        + " "
        + report["steps"][0]["hint"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_11_8_backup_is_prepared_by_11_8_and_refused_by_10_11() {
    let (new, old) = (mariadb_11_8_bin(), mariadb_10_11_bin());
    let server = TestServer::builder()
        .name("series-11-8")
        .mariadbd(new.join("mariadbd"))
        .install_db(new.join("mariadb-install-db"))
        .start()
        .await;
    assert!(
        server.version().starts_with("11.8."),
        "{}",
        server.version()
    );
    let work = tempfile::tempdir().expect("tempdir");
    let (target, state) = (work.path().join("backup"), work.path().join("state"));

    // --check says whether this host can prepare a backup of the source.
    let check = backup_args(&server, &target, &state, "--check");
    let with_old = tokio::task::block_in_place(|| stagehand_with(&old, &check));
    assert!(
        with_old.stdout.contains("cannot prepare a backup of it")
            && with_old.stdout.contains("MariaDB 11.8"),
        "--check warns that 10.11 cannot prepare an 11.8 backup:\n{}",
        with_old.stdout
    );
    let with_new = tokio::task::block_in_place(|| stagehand_with(&new, &check));
    assert!(
        with_new.stdout.contains("can prepare a backup of it"),
        "--check with 11.8's binaries:\n{}",
        with_new.stdout
    );

    let backup = backup_args(&server, &target, &state, "--json");
    let taken = tokio::task::block_in_place(|| stagehand_with(&new, &backup));
    assert_eq!(taken.code, 0, "backup of 11.8: {}", taken.stdout);

    // 10.11's mariadbd is refused before it touches anything.
    let manifest_before = std::fs::read(target.join(MANIFEST_FILE)).expect("manifest");
    let refused =
        tokio::task::block_in_place(|| stagehand_with(&old, &prepare_args(&target, &state)));
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    let error = prepare_error(&refused.report);
    assert!(
        error.contains("made by MariaDB 11.8")
            && error.contains("MariaDB 10.11")
            && error.contains("own series (11.8)")
            && error.contains("STAGEHAND_MARIADB_BIN"),
        "the refusal says which server made it, which binary was found and what to do: {error}"
    );
    // So is 10.11's mariadb-backup.
    let mut with_tool = prepare_args(&target, &state);
    with_tool.extend(["--set".to_string(), "engine=mariadb-backup".to_string()]);
    let refused = tokio::task::block_in_place(|| stagehand_with(&old, &with_tool));
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    let error = prepare_error(&refused.report);
    assert!(
        error.contains("mariadb-backup") && error.contains("own series (11.8)"),
        "{error}"
    );
    assert_eq!(
        std::fs::read(target.join(MANIFEST_FILE)).expect("manifest"),
        manifest_before,
        "the backup is untouched (still complete, not `preparing`)"
    );

    // 11.8's own binaries prepare it.
    let prepared =
        tokio::task::block_in_place(|| stagehand_with(&new, &prepare_args(&target, &state)));
    assert_eq!(prepared.code, 0, "prepare with 11.8: {}", prepared.stdout);
    let m = Manifest::read(&target).expect("a complete manifest");
    assert!(m.prepared.is_some(), "the manifest says it was prepared");
    assert!(
        m.server.version.starts_with("11.8."),
        "{}",
        m.server.version
    );
}
