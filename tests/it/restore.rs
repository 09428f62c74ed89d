//! Restores (`copy_back` + `server`) of a real backup: one throwaway server with binlog
//! and two undo tablespaces gets known rows, `plans/full-backup.yaml` backs it up and
//! prepares it (once, shared by the tests), then each test restores it with a small
//! plan run by the `stagehand` binary: copy_back → server (background, until check) →
//! sql check of the rows written before the backup.

use crate::cli::stagehand;
use crate::support::{
    copy_tree, files_in, full_backup_args, run_plan, step, step_error, write_plan, PlanRun,
};
use serde_json::Value;
use stagehand_testkit::TestServer;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Rows of app.t (id, v = id * 7) and app.a (Aria) written before the backup.
const ROWS: i64 = 1000;
const ARIA_ROWS: i64 = 100;

struct Fixture {
    root: PathBuf,
    backup: PathBuf,
    gtid: String,
}

/// The shared prepared backup, made by the first test that needs it.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(make_fixture())
    })
}

async fn make_fixture() -> Fixture {
    remove_stale_roots();
    // Short (sockets live here) and traversable by the mysql user (a test runs the
    // server as mysql).
    let root = std::env::temp_dir().join(format!("sh-restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("fixture root");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let server = TestServer::builder()
        .name("restore-src")
        .option("log-bin", Some("binlog"))
        .option("server-id", Some("1"))
        .option("innodb_undo_tablespaces", Some("2"))
        .start()
        .await;
    server.exec("CREATE DATABASE app").await;
    server
        .exec("CREATE TABLE app.t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        .await;
    server
        .exec(&format!(
            "INSERT INTO app.t SELECT seq, seq * 7 FROM app.seq_1_to_{ROWS}"
        ))
        .await;
    server
        .exec("CREATE TABLE app.a (id INT PRIMARY KEY) ENGINE=Aria")
        .await;
    server
        .exec(&format!(
            "INSERT INTO app.a SELECT seq FROM app.seq_1_to_{ARIA_ROWS}"
        ))
        .await;
    let backup = root.join("backup");
    let args = full_backup_args(&server, &backup, &root.join("backup-state"), &[], &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Nothing else runs on this runtime: blocking here is fine.
    let r = stagehand(&args);
    assert_eq!(r.code, 0, "the backup runs: {}\n{}", r.stdout, r.stderr);
    // Rows after the backup must not be in a restore.
    server.exec("INSERT INTO app.t VALUES (100000, 1)").await;
    let manifest = read_json(&backup.join("stagehand.json"));
    assert!(
        manifest["prepared"].is_object(),
        "the backup is prepared: {manifest}"
    );
    let gtid = manifest["binlog"]["gtid_binlog_pos"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!gtid.is_empty(), "the manifest has a GTID");
    Fixture { root, backup, gtid }
}

/// Fixture roots of test processes that are gone.
fn remove_stale_roots() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("sh-restore-") {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("JSON")
}

/// A fresh directory for one test under the fixture root.
fn case_dir(name: &str) -> PathBuf {
    let d = fixture().root.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("case dir");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

/// The plan: copy_back with `copy_back` (YAML flow-mapping body), then, unless
/// `server` is None, a server with that `with` body until a check of the rows.
fn plan_text(socket: &Path, copy_back: &str, server: Option<&str>) -> String {
    let mut s = format!(
        "version: 1
name: restore-test
connections:
  restored: {{socket: \"{}\", user: root}}
steps:
  - id: restore
    uses: copy_back
    with: {{{copy_back}}}
",
        socket.display()
    );
    if let Some(server) = server {
        s.push_str(&format!(
            "  - id: restored
    uses: server
    needs: [restore]
    background: true
    until: check
    with: {{{server}}}
  - id: check
    uses: sql
    needs: [restored]
    with:
      connection: restored
      sql: SELECT (SELECT COUNT(*) FROM app.t) AS n, (SELECT SUM(v) FROM app.t) AS s, (SELECT COUNT(*) FROM app.a) AS a
"
        ));
    }
    s
}

fn run(dir: &Path, plan: &str) -> PlanRun {
    run_plan(dir, &write_plan(dir, "plan", plan), &[], &[])
}

fn num(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(-1),
        Value::String(s) => s.parse().unwrap_or(-1),
        _ => -1,
    }
}

/// The check step saw exactly the rows written before the backup.
fn assert_rows(r: &PlanRun) {
    assert_eq!(r.code, 0, "the restore plan succeeds: {}", r.output());
    let first = &step(&r.report, "check")["outputs"]["first"];
    assert_eq!(num(&first["n"]), ROWS, "rows of app.t: {first}");
    assert_eq!(
        num(&first["s"]),
        7 * ROWS * (ROWS + 1) / 2,
        "SUM(v): {first}"
    );
    assert_eq!(num(&first["a"]), ARIA_ROWS, "rows of app.a: {first}");
}

/// The `with` body of a copy_back of `backup` into `datadir`, then `extra`.
fn copy_back_with(backup: &Path, datadir: &Path, extra: &str) -> String {
    format!(
        "from: \"{}\", datadir: \"{}\"{extra}",
        backup.display(),
        datadir.display()
    )
}

fn server_with(datadir: &Path, socket: &Path, extra: &str) -> String {
    format!(
        "datadir: \"{}\", socket: \"{}\", start_timeout: 60s, options: {{innodb_undo_tablespaces: 2{extra}}}",
        datadir.display(),
        socket.display()
    )
}

/// Files (relative paths) under a directory.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = files_in(dir)
        .iter()
        .filter_map(|p| p.strip_prefix(dir).ok())
        .map(|rel| rel.display().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn restores_a_prepared_backup_and_the_server_starts_on_it() {
    let f = fixture();
    let dir = case_dir("basic");
    let data = dir.join("data");
    let socket = dir.join("sock/s.sock");
    let cb = copy_back_with(&f.backup, &data, "");
    let r = run(
        &dir,
        &plan_text(&socket, &cb, Some(&server_with(&data, &socket, ""))),
    );
    assert_rows(&r);
    let out = &step(&r.report, "restore")["outputs"];
    assert_eq!(
        out["gtid_binlog_pos"],
        f.gtid.as_str(),
        "GTID output: {out}"
    );
    assert!(
        out["binlog_file"]
            .as_str()
            .is_some_and(|s| s.starts_with("binlog.")),
        "{out}"
    );
    assert!(
        num(&out["binlog_position"]) > 0 && num(&out["files"]) > 5 && num(&out["bytes"]) > 0,
        "{out}"
    );
    let srv = &step(&r.report, "restored")["outputs"];
    assert!(
        srv["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("10.") || v.starts_with("11.")),
        "{srv}"
    );
    assert_eq!(srv["socket"], socket.display().to_string().as_str());
    // The backup's own files stay behind; the backup is untouched.
    let restored = files_under(&data);
    for f in [
        "stagehand.json",
        "backup-my.cnf",
        "xtrabackup_checkpoints",
        "xtrabackup_binlog_info",
        "xtrabackup_info",
    ] {
        assert!(
            !restored.iter().any(|r| r == f),
            "{f} is not restored: {restored:?}"
        );
    }
    assert!(
        !restored.iter().any(|r| r.starts_with(".stagehand")),
        "{restored:?}"
    );
    for f in [
        "ibdata1",
        "ib_logfile0",
        "undo001",
        "undo002",
        "app/t.ibd",
        "app/a.MAD",
    ] {
        assert!(
            restored.iter().any(|r| r == f),
            "{f} is restored: {restored:?}"
        );
    }
    assert!(f.backup.join("ibdata1").exists() && f.backup.join("stagehand.json").exists());
}

#[test]
fn a_non_empty_datadir_is_refused_untouched_and_force_replaces_its_contents() {
    let f = fixture();
    let dir = case_dir("force");
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("olddb")).expect("mkdir");
    std::fs::write(data.join("leftover.txt"), "old").expect("write");
    std::fs::write(data.join("olddb/x.frm"), "old").expect("write");
    let outside = dir.join("outside.txt");
    std::fs::write(&outside, "keep").expect("write");
    let before = files_under(&dir);
    let socket = dir.join("sock/s.sock");
    let cb = copy_back_with(&f.backup, &data, "");
    let r = run(&dir, &plan_text(&socket, &cb, None));
    assert_eq!(r.code, 1, "refused: {}", r.output());
    let err = step_error(&r.report, "restore");
    assert!(
        err.contains(&data.display().to_string())
            && err.contains("not empty")
            && err.contains("leftover.txt"),
        "the error names the directory and what is in it: {err}"
    );
    let after: Vec<String> = files_under(&dir)
        .into_iter()
        .filter(|p| !p.starts_with("state") && p != "plan.yaml")
        .collect();
    let before: Vec<String> = before
        .into_iter()
        .filter(|p| !p.starts_with("state") && p != "plan.yaml")
        .collect();
    assert_eq!(after, before, "nothing was written");

    let cb = format!("{cb}, force: true, parallel: 3");
    let r = run(
        &dir,
        &plan_text(&socket, &cb, Some(&server_with(&data, &socket, ""))),
    );
    assert_rows(&r);
    assert!(
        !data.join("leftover.txt").exists() && !data.join("olddb").exists(),
        "force removed the old contents"
    );
    assert_eq!(
        std::fs::read_to_string(&outside).ok().as_deref(),
        Some("keep"),
        "nothing outside the datadir is touched"
    );
}

#[test]
fn an_unprepared_backup_is_refused() {
    let f = fixture();
    let dir = case_dir("unprepared");
    let backup = dir.join("backup");
    std::fs::create_dir_all(&backup).expect("mkdir");
    let mut manifest = read_json(&f.backup.join("stagehand.json"));
    manifest.as_object_mut().expect("object").remove("prepared");
    std::fs::write(backup.join("stagehand.json"), manifest.to_string()).expect("write");
    let data = dir.join("data");
    let cb = copy_back_with(&backup, &data, "");
    let r = run(&dir, &plan_text(&dir.join("sock/s.sock"), &cb, None));
    assert_eq!(r.code, 1, "refused: {}", r.output());
    let s = step(&r.report, "restore");
    let err = s["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("not prepared") && err.contains("prepare"),
        "{s}"
    );
    assert!(!data.exists(), "nothing was created");
}

#[test]
fn move_mode_empties_the_backup_of_its_data_files() {
    let f = fixture();
    let dir = case_dir("move");
    let backup = dir.join("backup");
    copy_tree(&f.backup, &backup);
    let data = dir.join("data");
    let socket = dir.join("sock/s.sock");
    let cb = copy_back_with(&backup, &data, ", mode: move");
    let r = run(
        &dir,
        &plan_text(&socket, &cb, Some(&server_with(&data, &socket, ""))),
    );
    assert_rows(&r);
    let left = files_under(&backup);
    for gone in [
        "ibdata1",
        "ib_logfile0",
        "undo001",
        "app/t.ibd",
        "app/t.frm",
        "stagehand.json",
    ] {
        assert!(
            !left.iter().any(|l| l == gone),
            "{gone} left the backup: {left:?}"
        );
    }
    assert!(left.iter().any(|l| l == "stagehand.moved.json"), "{left:?}");
    assert!(
        left.iter().any(|l| l == "backup-my.cnf"),
        "metadata files stay: {left:?}"
    );
}

#[test]
fn undo_and_log_directories_from_a_defaults_file() {
    let f = fixture();
    let dir = case_dir("dirs");
    let (data, undo, redo) = (dir.join("data"), dir.join("undo"), dir.join("redo"));
    let cnf = dir.join("my.cnf");
    std::fs::write(
        &cnf,
        format!(
            "[mysqld]\ndatadir={}\ninnodb_undo_directory={}\ninnodb_log_group_home_dir={}\n",
            data.display(),
            undo.display(),
            redo.display()
        ),
    )
    .expect("write my.cnf");
    // A directory the step creates, so that it is handed to the mysql user.
    let socket = dir.join("sock/s.sock");
    let cb = format!(
        "from: \"{}\", defaults_file: \"{}\", owner: mysql",
        f.backup.display(),
        cnf.display()
    );
    let extra = format!(
        ", innodb_undo_directory: \"{}\", innodb_log_group_home_dir: \"{}\"",
        undo.display(),
        redo.display()
    );
    let server = format!("{}, user: mysql", server_with(&data, &socket, &extra));
    let r = run(&dir, &plan_text(&socket, &cb, Some(&server)));
    assert_rows(&r);
    assert_eq!(files_under(&redo), vec!["ib_logfile0".to_string()]);
    let undo_files = files_under(&undo);
    assert!(
        undo_files.starts_with(&["undo001".to_string(), "undo002".to_string()]),
        "{undo_files:?}"
    );
    let in_data = files_under(&data);
    assert!(
        !in_data
            .iter()
            .any(|f| f.starts_with("undo00") || f == "ib_logfile0"),
        "{in_data:?}"
    );
    let (mysql_uid, _) =
        stagehand_mariadb::sandbox::accounts::lookup_user("mysql").expect("mysql user");
    for p in [
        data.join("ibdata1"),
        data.join("app"),
        data.join("app/t.ibd"),
        undo.join("undo001"),
        redo.clone(),
    ] {
        let uid = std::fs::metadata(&p).map(|m| m.uid()).unwrap_or(u32::MAX);
        assert_eq!(uid, mysql_uid, "{} belongs to mysql", p.display());
    }
}

#[test]
fn a_damaged_backup_file_fails_the_restore_and_it_is_undone() {
    let f = fixture();
    let dir = case_dir("damaged");
    let backup = dir.join("backup");
    copy_tree(&f.backup, &backup);
    // One flipped byte in the middle of a tablespace.
    let victim = backup.join("app/t.ibd");
    let mut bytes = std::fs::read(&victim).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, bytes).expect("write");
    let data = dir.join("data");
    let cb = copy_back_with(&backup, &data, ", parallel: 1");
    let r = run(&dir, &plan_text(&dir.join("sock/s.sock"), &cb, None));
    assert_eq!(r.code, 1, "refused: {}", r.output());
    let err = step_error(&r.report, "restore");
    assert!(
        err.contains("app/t.ibd")
            && err.contains("does not match the manifest")
            && err.contains("undone"),
        "{err}"
    );
    assert!(
        !data.exists(),
        "what was written is removed again, the datadir too"
    );
}

#[test]
fn force_into_the_datadir_of_a_running_server_is_refused_and_nothing_is_removed() {
    let f = fixture();
    let dir = case_dir("live");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let live = rt.block_on(TestServer::builder().name("restore-live").start());
    rt.block_on(live.exec("CREATE DATABASE keepme"));
    let before = files_under(live.datadir());
    let cb = copy_back_with(&f.backup, live.datadir(), ", force: true");
    let plan = plan_text(&dir.join("sock/s.sock"), &cb, None);
    let check = check_run(&dir, &plan);
    let pid = format!("pid {}", live.pid());
    assert_ne!(check.code, 0, "--check refuses: {}", check.stdout);
    assert!(
        format!("{}{}", check.stdout, check.stderr).contains(&pid),
        "--check names the running server: {}\n{}",
        check.stdout,
        check.stderr
    );
    let r = run(&dir, &plan);
    assert_eq!(r.code, 1, "the run refuses: {}", r.output());
    let err = step_error(&r.report, "restore");
    assert!(
        err.contains(&pid) && err.contains("stop it first"),
        "the error names the server: {err}"
    );
    assert_eq!(files_under(live.datadir()), before, "nothing was removed");
    let n: Option<i64> = rt.block_on(live.query_first(
        "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = 'keepme'",
    ));
    assert_eq!(n, Some(1), "the live server still has its data");
}

/// A plan that starts only a server step on `socket` (the datadir need not exist: the
/// step is refused before it starts) and then checks it over that socket.
fn server_only_plan(dir: &Path, socket: &Path) -> String {
    format!(
        "version: 1
name: socket-test
connections:
  restored: {{socket: \"{s}\", user: root, password: not-for-a-stranger}}
steps:
  - id: restored
    uses: server
    background: true
    until: check
    with: {{datadir: \"{d}\", socket: \"{s}\", start_timeout: 60s}}
  - id: check
    uses: sql
    needs: [restored]
    with: {{connection: restored, sql: SELECT 1 AS one}}
",
        s = socket.display(),
        d = dir.join("data").display()
    )
}

/// Runs `stagehand run PLAN --check` on a plan written to `dir`.
fn check_run(dir: &Path, plan: &str) -> crate::cli::Run {
    let path = write_plan(dir, "plan", plan);
    let state = dir.join("state");
    stagehand(&[
        "run",
        path.to_str().expect("utf-8"),
        "--state-dir",
        state.to_str().expect("utf-8"),
        "--check",
    ])
}

/// A fake server bound by `nobody`: records in `marker` any connection it accepts.
struct NobodysSocket(std::process::Child);

impl NobodysSocket {
    fn bind(socket: &Path, marker: &Path) -> NobodysSocket {
        let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(5)\nwhile True:\n  c,_=s.accept()\n  open(sys.argv[2],'w').write('connected')\n";
        let child = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .args(["/usr/bin/python3", "-c", script])
            .arg(socket)
            .arg(marker)
            .spawn()
            .expect("setpriv python3");
        let mut me = NobodysSocket(child);
        // Wait for the bind (bounded): not a timing assertion, a precondition.
        for _ in 0..200 {
            if socket.exists() {
                return me;
            }
            if let Ok(Some(status)) = me.0.try_wait() {
                panic!("the fake server exited: {status}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("nobody's socket {} did not appear", socket.display());
    }
}

impl Drop for NobodysSocket {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_socket_planted_by_another_user_is_refused_and_never_connected_to() {
    let dir = case_dir("planted");
    let theirs = dir.join("theirs");
    std::fs::create_dir(&theirs).expect("mkdir");
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown to nobody");
    let socket = theirs.join("s.sock");
    let marker = theirs.join("connected");
    let _fake = NobodysSocket::bind(&socket, &marker);
    let plan = server_only_plan(&dir, &socket);

    let check = check_run(&dir, &plan);
    let said = format!("{}{}", check.stdout, check.stderr);
    assert_ne!(check.code, 0, "--check refuses: {said}");
    assert!(
        said.contains("uid 65534"),
        "--check names the owner: {said}"
    );

    let r = run(&dir, &plan);
    assert_eq!(r.code, 1, "the run refuses: {}", r.output());
    let err = step_error(&r.report, "restored");
    assert!(
        err.contains("uid 65534") && err.contains(&theirs.display().to_string()),
        "the error names the directory and its owner: {err}"
    );
    assert_ne!(step(&r.report, "check")["status"], "succeeded");
    assert!(
        !marker.exists(),
        "nothing connected to the planted socket (no credentials sent)"
    );
}

#[test]
fn a_file_already_at_the_socket_path_is_refused() {
    let dir = case_dir("stale-socket");
    let mine = dir.join("mine");
    std::fs::create_dir(&mine).expect("mkdir");
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let socket = mine.join("s.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let plan = server_only_plan(&dir, &socket);
    let check = check_run(&dir, &plan);
    assert_ne!(check.code, 0, "--check refuses: {}", check.stdout);
    let r = run(&dir, &plan);
    assert_eq!(r.code, 1, "the run refuses: {}", r.output());
    let err = step_error(&r.report, "restored");
    assert!(
        err.contains("exists there already"),
        "the error says why: {err}"
    );
}

#[test]
fn the_server_steps_socket_is_in_a_private_directory_other_users_cannot_connect() {
    let f = fixture();
    let dir = case_dir("private-socket");
    let data = dir.join("data");
    let sock_dir = dir.join("sock");
    let socket = sock_dir.join("s.sock");
    let probe = dir.join("probe.txt");
    let cb = copy_back_with(&f.backup, &data, "");
    // While the server runs: its directory's mode, and whether nobody can connect.
    let shell = format!(
        "stat -c %a {d} > {p}; if setpriv --reuid=nobody --regid=nogroup --clear-groups /usr/bin/python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' {s}; then echo connected >> {p}; else echo refused >> {p}; fi",
        d = sock_dir.display(),
        p = probe.display(),
        s = socket.display()
    );
    let plan = format!(
        "version: 1
name: private-socket
connections:
  restored: {{socket: \"{s}\", user: root}}
steps:
  - id: restore
    uses: copy_back
    with: {{{cb}}}
  - id: restored
    uses: server
    needs: [restore]
    background: true
    until: check
    with: {{{server}}}
  - id: probe
    uses: exec
    needs: [restored]
    with: {{shell: \"{shell}\"}}
  - id: check
    uses: sql
    needs: [probe]
    with: {{connection: restored, sql: SELECT 1 AS one}}
",
        s = socket.display(),
        server = server_with(&data, &socket, ""),
    );
    // A socket straight in a directory others can enter is refused before the start.
    let shared = dir.join("s.sock");
    let shared_plan = plan
        .replace(&socket.display().to_string(), &shared.display().to_string())
        .replace(&probe.display().to_string(), "/dev/null");
    let r = run(&dir, &shared_plan);
    assert_eq!(
        r.code,
        1,
        "a shared socket directory is refused: {}",
        r.output()
    );
    let err = step_error(&r.report, "restored");
    assert!(err.contains("mode 755"), "the error says why: {err}");
    // Its copy_back had run: start over on an empty datadir.
    std::fs::remove_dir_all(&data).expect("remove the restored datadir");

    let r = run(&dir, &plan);
    assert_eq!(r.code, 0, "the plan runs: {}", r.output());
    let seen = std::fs::read_to_string(&probe).unwrap_or_default();
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["700", "refused"],
        "the socket's directory is 0700 and nobody cannot connect: {seen}"
    );
}
