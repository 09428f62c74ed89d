//! The engine against a real MariaDB server: outputs between sql steps, shared sessions,
//! failure steps, retries in the journal, timeouts, SIGINT, background + until, and
//! secrets kept out of everything written.

use crate::cli::stagehand_env;
use crate::support::{
    files_in, hello_then_broken, journal_in, run_plan, server_with, step, write_plan, PlanRun,
};
use serde_json::Value;
use stagehand_testkit::TestServer;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A test server with some statements run on it, and a temporary directory for the
/// plans and the state of the runs against it.
struct Case {
    server: TestServer,
    dir: tempfile::TempDir,
}

impl Case {
    async fn start(name: &str, statements: &[&str]) -> Case {
        Case {
            server: server_with(name, statements).await,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn plan(&self, name: &str, text: &str) -> PathBuf {
        write_plan(self.dir.path(), name, text)
    }

    /// Runs a plan with `--json` against the server (param `socket`).
    fn run(&self, plan: &Path, env: &[(&str, &str)]) -> PlanRun {
        let socket = format!("socket={}", self.server.socket().display());
        run_plan(self.dir.path(), plan, &[socket], env)
    }
}

const HEADER: &str = r#"version: 1
name: test
params:
  socket: {type: path, required: true}
connections:
  db: {socket: "{{params.socket}}", user: root}
  other: {socket: "{{params.socket}}", user: root}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn outputs_flow_between_sql_steps_on_one_shared_session() {
    let case = Case::start("outputs-flow", &[]).await;
    let plan = case.plan(
        "flow",
        &format!(
            "{HEADER}steps:
  - id: setup
    uses: sql
    with:
      connection: db
      statements:
        - CREATE DATABASE app
        - CREATE TABLE app.t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB
        - INSERT INTO app.t VALUES (1, 10), (2, 20), (3, 30)
        - SET @marker = 'same-session'
  - id: total
    uses: sql
    needs: [setup]
    with: {{connection: db, sql: \"SELECT SUM(v) AS total, COUNT(*) AS n, @marker AS marker FROM app.t\"}}
  - id: doubled
    uses: sql
    needs: [total]
    with: {{connection: other, sql: \"SELECT {{{{steps.total.outputs.first.total}}}} * 2 AS doubled, {{{{steps.total.outputs.row_count}}}} AS rows_seen\"}}
"
        ),
    );
    let r = case.run(&plan, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let total = step(&r.report, "total");
    assert_eq!(total["outputs"]["first"]["total"], "60");
    assert_eq!(total["outputs"]["first"]["n"], 3);
    // Steps naming the same connection share one session: the user variable survives.
    assert_eq!(total["outputs"]["first"]["marker"], "same-session");
    let doubled = step(&r.report, "doubled");
    assert_eq!(doubled["outputs"]["first"]["doubled"], 120);
    assert_eq!(doubled["outputs"]["first"]["rows_seen"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_step_triggers_the_failure_step_and_skips_the_rest() {
    let case = Case::start(
        "failure-step",
        &[
            "CREATE DATABASE app",
            "CREATE TABLE app.events (what VARCHAR(64)) ENGINE=InnoDB",
        ],
    )
    .await;
    let plan = case.plan(
        "fail",
        &format!(
            "{HEADER}steps:
  - id: broken
    uses: sql
    with: {{connection: db, sql: \"SELECT * FROM app.no_such_table\"}}
  - id: after
    uses: sql
    needs: [broken]
    with: {{connection: db, sql: \"INSERT INTO app.events VALUES ('after')\"}}
  - id: on_failure
    uses: sql
    needs: [after]
    when: failure
    with: {{connection: other, sql: \"INSERT INTO app.events VALUES ('on_failure')\"}}
  - id: always
    uses: sql
    needs: [after]
    when: always
    with: {{connection: other, sql: \"INSERT INTO app.events VALUES ('always')\"}}
"
        ),
    );
    let r = case.run(&plan, &[]);
    assert_eq!(r.code, 1, "a failed step exits 1");
    assert_eq!(r.report["status"], "failed");
    assert_eq!(step(&r.report, "broken")["status"], "failed");
    assert!(
        step(&r.report, "broken")["error"]
            .as_str()
            .unwrap_or("")
            .contains("1146"),
        "error names the server error"
    );
    assert_eq!(step(&r.report, "after")["status"], "skipped");
    assert_eq!(step(&r.report, "on_failure")["status"], "succeeded");
    let mut events: Vec<String> = case.server.query("SELECT what FROM app.events").await;
    events.sort();
    assert_eq!(events, vec!["always", "on_failure"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_steps_are_skipped_when_nothing_fails() {
    let case = Case::start("no-failure", &[]).await;
    let plan = case.plan(
        "ok",
        &format!(
            "{HEADER}steps:
  - id: fine
    uses: sql
    with: {{connection: db, sql: \"SELECT 1\"}}
  - id: on_failure
    uses: sql
    needs: [fine]
    when: failure
    with: {{connection: db, sql: \"SELECT 2\"}}
"
        ),
    );
    let r = case.run(&plan, &[]);
    assert_eq!(r.code, 0);
    assert_eq!(step(&r.report, "on_failure")["status"], "skipped");
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_wait_timeouts_are_retried_with_backoff_shown_in_the_journal() {
    let case = Case::start(
        "retries",
        &[
            "CREATE DATABASE app",
            "CREATE TABLE app.t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB",
            "INSERT INTO app.t VALUES (1, 0)",
        ],
    )
    .await;
    // `holder` keeps a row lock in its open transaction until `release` commits it 2.5 s
    // later; meanwhile `update` fails with ER_LOCK_WAIT_TIMEOUT (1205) and is retried.
    let plan = case.plan(
        "retry",
        &format!(
            "{HEADER}steps:
  - id: hold
    uses: sql
    with: {{connection: db, statements: [\"BEGIN\", \"SELECT v FROM app.t WHERE id = 1 FOR UPDATE\"]}}
  - id: update
    uses: sql
    needs: [hold]
    retry: {{attempts: 6, backoff: 300ms, max_backoff: 2s, jitter: false}}
    with: {{connection: other, statements: [\"SET SESSION innodb_lock_wait_timeout = 1\", \"UPDATE app.t SET v = v + 1 WHERE id = 1\"]}}
  - id: wait
    uses: exec
    needs: [hold]
    with: {{command: [sleep, \"2.5\"]}}
  - id: release
    uses: sql
    needs: [wait]
    with: {{connection: db, sql: COMMIT}}
"
        ),
    );
    let r = case.run(&plan, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let update = step(&r.report, "update");
    let attempts = update["attempts"].as_u64().unwrap_or(0);
    assert!(attempts >= 2, "update was retried ({attempts} attempts)");
    let journal = r.journal();
    let retries: Vec<&Value> = journal
        .iter()
        .filter(|e| e["event"] == "step_retry" && e["step"] == "update")
        .collect();
    assert_eq!(
        retries.len() as u64,
        attempts - 1,
        "one step_retry event per retry"
    );
    for (i, e) in retries.iter().enumerate() {
        assert!(
            e["error"].as_str().unwrap_or("").contains("1205"),
            "retry {i} was a lock wait timeout: {e}"
        );
        let expected = 300u64 << i;
        assert_eq!(
            e["delay_ms"].as_u64(),
            Some(expected.min(2000)),
            "exponential backoff without jitter"
        );
        assert!(
            e["attempt_ms"].as_u64().unwrap_or(0) >= 900,
            "each failed attempt waited for the lock (~1 s)"
        );
    }
    let v: Option<i64> = case
        .server
        .query_first("SELECT v FROM app.t WHERE id = 1")
        .await;
    assert_eq!(v, Some(1), "the update ran exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_step_is_cancelled_with_a_clear_error() {
    let case = Case::start("timeout", &[]).await;
    let plan = case.plan(
        "timeout",
        &format!(
            "{HEADER}steps:
  - id: slow
    uses: sql
    timeout: 1s
    with: {{connection: db, sql: \"SELECT SLEEP(30)\"}}
  - id: cleanup
    uses: sql
    needs: [slow]
    when: always
    with: {{connection: db, sql: \"SELECT 'cleanup ran' AS msg\"}}
"
        ),
    );
    let t0 = Instant::now();
    let r = case.run(&plan, &[]);
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "the run did not wait for SLEEP(30)"
    );
    assert_eq!(r.code, 1);
    let slow = step(&r.report, "slow");
    assert_eq!(slow["status"], "failed");
    let err = slow["error"].as_str().unwrap_or("");
    assert!(err.contains("timed out after 1s"), "{err}");
    // The session was discarded after the cancelled statement; the cleanup step got a new one.
    assert_eq!(
        step(&r.report, "cleanup")["outputs"]["value"],
        "cleanup ran"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_runs_the_always_steps_and_exits_130() {
    let case = Case::start(
        "sigint",
        &[
            "CREATE DATABASE app",
            "CREATE TABLE app.events (what VARCHAR(64)) ENGINE=InnoDB",
        ],
    )
    .await;
    let plan = case.plan(
        "sigint",
        &format!(
            "{HEADER}steps:
  - id: long
    uses: exec
    with: {{command: [sleep, \"60\"]}}
  - id: never
    uses: sql
    needs: [long]
    with: {{connection: db, sql: \"INSERT INTO app.events VALUES ('never')\"}}
  - id: release
    uses: sql
    needs: [long]
    when: always
    with: {{connection: db, sql: \"INSERT INTO app.events VALUES ('always')\"}}
"
        ),
    );
    let state = case.dir.path().join("state");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args([
            "run",
            plan.to_str().expect("utf-8"),
            "--set",
            &format!("socket={}", case.server.socket().display()),
            "--state-dir",
            state.to_str().expect("utf-8"),
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start stagehand");
    // Wait until the long step runs, then interrupt.
    let t0 = Instant::now();
    while !journal_in(&state)
        .iter()
        .any(|e| e["event"] == "step_started" && e["step"] == "long")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the long step never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "interrupted runs exit 130");
    let report: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    assert_eq!(report["status"], "interrupted");
    assert_eq!(step(&report, "long")["status"], "cancelled");
    assert_eq!(step(&report, "never")["status"], "skipped");
    let events: Vec<String> = case.server.query("SELECT what FROM app.events").await;
    assert_eq!(events, vec!["always"]);
    assert!(journal_in(&state)
        .iter()
        .any(|e| e["event"] == "run_interrupted"));
}

#[tokio::test(flavor = "multi_thread")]
async fn background_step_runs_until_its_until_step_and_gets_its_outputs() {
    let case = Case::start("background", &[]).await;
    let plan = case.plan(
        "bg",
        &format!(
            "{HEADER}steps:
  - id: begin
    uses: sql
    with: {{connection: db, sql: \"SELECT 1\"}}
  - id: watcher
    uses: exec
    needs: [begin]
    background: true
    until: point
    with: {{shell: 'echo watching; read -r final; echo \"final $final\"'}}
  - id: work
    uses: sql
    needs: [watcher]
    with: {{connection: db, sql: \"SELECT SLEEP(0.5) AS slept\"}}
  - id: point
    uses: sql
    needs: [work]
    with: {{connection: db, sql: \"SELECT 4242 AS lsn\"}}
  - id: end
    uses: exec
    needs: [point, watcher]
    when: always
    with: {{command: [echo, \"{{{{steps.watcher.outputs.stdout}}}}\"]}}
"
        ),
    );
    let r = case.run(&plan, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let journal = &r.journal();
    let pos = |event: &str, id: &str| {
        journal
            .iter()
            .position(|e| e["event"] == event && e["step"] == id)
            .unwrap_or_else(|| panic!("{event} {id} in journal"))
    };
    // Dependents start at the ready signal, while the background step still runs.
    assert!(pos("step_ready", "watcher") < pos("step_started", "work"));
    assert!(pos("step_started", "work") < pos("step_finished", "watcher"));
    // It runs until `point` finishes, and receives its outputs.
    assert!(pos("step_finished", "point") < pos("step_finished", "watcher"));
    assert!(
        pos("step_finished", "watcher") < pos("step_started", "end"),
        "steps after `until` wait for the background step"
    );
    let stdout = step(&r.report, "watcher")["outputs"]["stdout"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(stdout.starts_with("watching\nfinal {"), "{stdout}");
    assert!(
        stdout.contains("\"lsn\":4242"),
        "the until step's outputs reached it: {stdout}"
    );
    assert_eq!(step(&r.report, "end")["outputs"]["stdout"], stdout.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_the_journal_report_or_logs() {
    let secret = "Very-Secret-Pa55word";
    let case = Case::start(
        "secrets",
        &[
            &format!("CREATE USER 'app'@'localhost' IDENTIFIED BY '{secret}'"),
            "GRANT SELECT ON *.* TO 'app'@'localhost'",
        ],
    )
    .await;
    let plan = case.plan(
        "secret",
        "version: 1
name: secrets
params:
  socket: {type: path, required: true}
secrets:
  pw: {env: TEST_APP_PASSWORD}
connections:
  app: {socket: \"{{params.socket}}\", user: app, password: \"{{secrets.pw}}\"}
steps:
  - id: whoami
    uses: sql
    with: {connection: app, sql: \"SELECT CURRENT_USER() AS u\"}
  - id: leak
    uses: exec
    needs: [whoami]
    with: {command: [sh, -c, 'echo \"pw is $PW\"; exit 3'], env: {PW: \"{{secrets.pw}}\"}}
",
    );
    let r = case.run(&plan, &[("TEST_APP_PASSWORD", secret)]);
    assert_eq!(r.code, 1, "the leak step fails on purpose");
    assert_eq!(
        step(&r.report, "whoami")["outputs"]["value"],
        "app@localhost",
        "the secret password connected"
    );
    let report_text =
        std::fs::read_to_string(r.run_dir().join("report.json")).expect("report.json");
    for (what, text) in [
        ("journal", &r.journal_text),
        ("report.json", &report_text),
        ("stdout", &r.stdout),
        ("stderr", &r.stderr),
    ] {
        assert!(!text.contains(secret), "the secret leaked into {what}");
    }
    assert!(
        r.journal_text.contains("***"),
        "the journal shows where the secret was masked"
    );
}

// ---- runs that cannot be recorded, secrets on command lines, plain logs (issue 11) ----

fn run_in(plan: &Path, state: &Path, env: &[(&str, &str)]) -> crate::cli::Run {
    stagehand_env(
        &[
            "run",
            plan.to_str().expect("utf-8"),
            "--state-dir",
            state.to_str().expect("utf-8"),
        ],
        env,
    )
}

/// Fills the file system of `dir` to the last byte.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).expect("filler");
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_run_that_cannot_be_recorded_fails_and_says_where() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let _disk = crate::storage_roundtrip::SmallDisk::mount(&state, "64k");
    let marker = dir.path().join("ran");
    let plan = write_plan(
        dir.path(),
        "record",
        &format!(
            "version: 1
name: record
steps:
  - id: work
    uses: exec
    with: {{shell: \"touch {marker}; head -c 1048576 /dev/zero > {state}/more 2>/dev/null || true\"}}
",
            marker = marker.display(),
            state = state.display()
        ),
    );
    let hint = format!(
        "  hint: the state directory {} is full or not writable: ",
        state.display()
    );

    // Full before the run starts: nothing runs.
    fill(&state);
    let r = run_in(&plan, &state, &[]);
    assert_eq!(r.code, 1, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "error: cannot write the run journal {}/runs/record-",
            state.display()
        )) && r.stderr.contains("No space left on device"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(&hint), "{}", r.stderr);
    assert!(!marker.exists(), "no step ran");

    // Full during the run (the step fills it): the run is not recorded, so it fails.
    std::fs::remove_file(state.join("filler")).expect("free the disk");
    let r = run_in(&plan, &state, &[]);
    assert!(marker.exists(), "the step ran");
    assert_eq!(r.code, 1, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("error: the run is not recorded: cannot write ")
            && r.stderr.contains("/report.json: No space left on device"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(&hint), "{}", r.stderr);
    assert!(r.stdout.contains(": Failed in "), "{}", r.stdout);
    assert!(
        !files_in(&state).iter().any(|p| p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("report.json"))),
        "no report, not even half of one"
    );
}

#[test]
fn a_secret_on_an_exec_command_line_is_warned_about_but_never_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = write_plan(
        dir.path(),
        "argv",
        "version: 1
name: argv
secrets:
  pw: {env: TEST_ARGV_SECRET}
steps:
  - id: dump
    uses: exec
    with: {command: [sh, -c, 'test -n \"$1\"', sh, \"{{secrets.pw}}\"]}
  - id: safe
    uses: exec
    needs: [dump]
    with: {command: [sh, -c, 'test -n \"$PW\"'], env: {PW: \"{{secrets.pw}}\"}}
",
    );
    let file = plan.to_str().expect("utf-8");
    let warning = format!("{file}:8:50: warning: step `dump` passes secret `pw` on the command line (command[4]): every local user can read it with `ps`\n  hint: pass it in `env:`");
    for args in [vec!["validate", file], vec!["run", file, "--dry-run"]] {
        let r = stagehand_env(&args, &[]);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(&warning), "{args:?}: {}", r.stderr);
        assert_eq!(
            r.stderr.matches("warning:").count(),
            1,
            "only `dump`: {}",
            r.stderr
        );
    }

    let secret = "Argv-Secret-771";
    let state = dir.path().join("state");
    let r = run_in(&plan, &state, &[("TEST_ARGV_SECRET", secret)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let runtime: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("a secret is passed on the command line"))
        .collect();
    assert_eq!(runtime.len(), 1, "{}", r.stderr);
    assert!(
        runtime[0].contains("(command[4])") && runtime[0].contains("step=dump"),
        "{}",
        runtime[0]
    );
    assert!(!r.stderr.contains(secret) && !r.stdout.contains(secret));
}

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = write_plan(
        dir.path(),
        "plain",
        &hello_then_broken("plain", "{command: [sh, -c, 'exit 3']}"),
    );
    // The test harness reads stderr through a pipe, as journald or a log file would.
    let r = run_in(&plan, &dir.path().join("state"), &[]);
    assert_eq!(r.code, 1);
    for level in ["INFO", "ERROR"] {
        assert!(r.stderr.contains(level), "{}", r.stderr);
    }
    assert!(!r.stderr.contains('\u{1b}'), "escape codes: {:?}", r.stderr);
}

#[test]
fn logs_on_a_terminal_are_coloured_unless_no_color_is_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = write_plan(
        dir.path(),
        "tty",
        "version: 1\nname: tty\nsteps:\n  - {id: hello, uses: exec, with: {command: [echo, hello]}}\n",
    );
    let command = format!(
        "'{}' run '{}' --state-dir '{}'",
        env!("CARGO_BIN_EXE_stagehand"),
        plan.display(),
        dir.path().join("state").display()
    );
    let drawn = |no_color: Option<&str>, name: &str| -> String {
        let typescript = dir.path().join(name);
        let mut script = std::process::Command::new("script");
        // `script` runs the command on a real pseudo-terminal and records its output.
        script
            .args(["-q", "-e", "-c", &command])
            .arg(&typescript)
            .env_remove("NO_COLOR")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        if let Some(v) = no_color {
            script.env("NO_COLOR", v);
        }
        let status = script
            .status()
            .expect("`script` (bsdutils) runs: apt-get install bsdutils");
        assert!(status.success(), "the run under a terminal failed");
        String::from_utf8_lossy(&std::fs::read(&typescript).expect("typescript")).into_owned()
    };
    let coloured = drawn(None, "coloured");
    assert!(
        coloured.contains("run started") && coloured.contains("\u{1b}["),
        "{coloured:?}"
    );
    let plain = drawn(Some("1"), "plain");
    assert!(plain.contains("run started"), "{plain:?}");
    assert!(!plain.contains('\u{1b}'), "{plain:?}");
}
