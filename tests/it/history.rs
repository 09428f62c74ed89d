//! `stagehand runs list|show|check` over a state directory: real runs of the executor,
//! synthetic reports for stable times, an incomplete run (journal, no report), and the
//! dead-man check's exit codes and messages.

use crate::cli::stagehand;
use crate::support::{hello_then_broken, run_plan, write_plan};
use serde_json::{json, Value};
use std::path::Path;

/// Writes a run as the executor does: `runs/<id>/report.json` and its journal.
fn synthetic_run(state: &Path, id: &str, plan: &str, status: &str, started: &str, finished: &str) {
    let dir = state.join("runs").join(id);
    std::fs::create_dir_all(&dir).expect("run dir");
    let failed = status == "failed";
    let report = json!({
        "run_id": id,
        "plan": plan,
        "plan_file": format!("plans/{plan}.yaml"),
        "status": status,
        "started_at": started,
        "finished_at": finished,
        "duration_ms": 72_345,
        "params": {"target": "/backups/b1", "prepare": false},
        "steps": [
            {"id": "lock_start", "uses": "stage_locks", "status": "succeeded", "attempts": 1,
             "started_at": started, "duration_ms": 12,
             "outputs": {"stage": "start", "holds_ms": {"start": 0.5}}},
            {"id": "copy_innodb", "uses": "copy", "status": if failed { "failed" } else { "succeeded" },
             "attempts": if failed { 3 } else { 1 }, "started_at": started, "duration_ms": 70_100,
             "outputs": if failed { json!({}) } else { json!({"bytes": 1_048_576, "files": 12}) },
             "error": if failed { json!("cannot read ./app/t.ibd: Permission denied (os error 13)") } else { Value::Null },
             "hint": if failed { json!("run as a user that can read the datadir (mysql or root)") } else { Value::Null }},
            {"id": "seal", "uses": "seal", "status": if failed { "skipped" } else { "succeeded" }, "attempts": if failed { 0 } else { 1 },
             "outputs": {}, "error": if failed { json!("skipped: a step it needs did not succeed") } else { Value::Null }}
        ],
        "journal": dir.join("journal.jsonl").display().to_string(),
    });
    let mut report = report;
    // The executor leaves out absent errors and hints.
    for s in report["steps"].as_array_mut().into_iter().flatten() {
        if let Some(o) = s.as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
    }
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report).expect("json"),
    )
    .expect("write report");
    let journal = [
        json!({"ts": started, "run": id, "event": "run_started", "plan": plan, "file": format!("plans/{plan}.yaml"), "params": {}}),
        json!({"ts": finished, "run": id, "event": "run_finished", "status": status}),
    ];
    let text: Vec<String> = journal.iter().map(|e| e.to_string()).collect();
    std::fs::write(dir.join("journal.jsonl"), text.join("\n") + "\n").expect("journal");
}

fn ago(seconds: i64) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
        - seconds;
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn runs_list_and_show_read_what_the_executor_wrote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = write_plan(
        dir.path(),
        "small",
        &hello_then_broken("small", r#"{shell: "echo 'no space left' >&2; exit 28"}"#),
    );
    let r = run_plan(dir.path(), &plan, &[], &[]);
    assert_eq!(r.code, 1);
    let id = r.report["run_id"].as_str().unwrap_or_default().to_string();
    let state = dir.path().join("state");
    let state_s = state.to_str().expect("utf-8");

    let list = stagehand(&["runs", "list", "--state-dir", state_s, "--json"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let runs: Value = serde_json::from_str(&list.stdout).expect("JSON");
    assert_eq!(runs.as_array().map(Vec::len), Some(1));
    assert_eq!(runs[0]["run_id"], id.as_str());
    assert_eq!(runs[0]["plan"], "small");
    assert_eq!(runs[0]["status"], "failed");
    assert_eq!(runs[0]["failed_step"], "broken");
    assert_eq!(runs[0]["duration_ms"], r.report["duration_ms"]);

    // By the id's last characters, as people type it.
    let suffix = &id[id.len() - 4..];
    let show = stagehand(&["runs", "show", suffix, "--state-dir", state_s]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    assert!(show
        .stdout
        .starts_with(&format!("Run {id}\n  plan      small (")));
    assert!(show
        .stdout
        .contains("  status    failed (first failure: broken)\n"));
    assert!(show
        .stdout
        .contains("      error: `sh` exited with code 28: no space left\n"));
    assert!(show
        .stdout
        .contains("      outputs: stdout=hello, exit_code=0\n"));
    let show_json = stagehand(&["runs", "show", &id, "--state-dir", state_s, "--json"]);
    let recorded: Value = serde_json::from_str(&show_json.stdout).expect("JSON");
    assert_eq!(recorded, r.report, "--json gives report.json as recorded");

    let missing = stagehand(&["runs", "show", "nope", "--state-dir", state_s]);
    assert_eq!(missing.code, 2);
    assert_eq!(
        missing.stderr.trim(),
        format!("error: no run `nope` in {}", state.join("runs").display())
    );
}

#[test]
fn runs_show_snapshot_of_a_failed_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    synthetic_run(
        &state,
        "nightly-20261121T020000Z-ab12",
        "nightly",
        "failed",
        "2026-11-21T02:00:00Z",
        "2026-11-21T02:01:12.345Z",
    );
    let state_s = state.to_str().expect("utf-8");
    let r = stagehand(&[
        "runs",
        "show",
        "nightly-20261121T020000Z-ab12",
        "--state-dir",
        state_s,
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let shown = r.stdout.replace(state_s, "<state>");
    insta::assert_snapshot!("runs_show_failed_backup", shown);
}

#[test]
fn runs_list_filters_by_plan_and_shows_incomplete_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    synthetic_run(
        &state,
        "nightly-a",
        "nightly",
        "succeeded",
        "2026-11-19T02:00:00Z",
        "2026-11-19T02:01:12Z",
    );
    synthetic_run(
        &state,
        "nightly-b",
        "nightly",
        "failed",
        "2026-11-20T02:00:00Z",
        "2026-11-20T02:01:12Z",
    );
    synthetic_run(
        &state,
        "weekly-a",
        "weekly",
        "succeeded",
        "2026-11-20T03:00:00Z",
        "2026-11-20T04:00:00Z",
    );
    // Killed mid-run: a journal, no report.
    let killed = state.join("runs/nightly-c");
    std::fs::create_dir_all(&killed).expect("dir");
    std::fs::write(
        killed.join("journal.jsonl"),
        json!({"ts": "2026-11-21T02:00:00.100Z", "run": "nightly-c", "event": "run_started", "plan": "nightly", "file": "plans/nightly.yaml", "params": {}}).to_string() + "\n",
    )
    .expect("journal");
    let state_s = state.to_str().expect("utf-8");
    let r = stagehand(&["runs", "list", "--plan", "nightly", "--state-dir", state_s]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "RUN        PLAN     STATUS       STARTED                    DURATION  FAILED STEP
nightly-c  nightly  incomplete   2026-11-21T02:00:00.100Z          -  
nightly-b  nightly  failed       2026-11-20T02:00:00Z         1m 12s  copy_innodb
nightly-a  nightly  succeeded    2026-11-19T02:00:00Z         1m 12s  
"
    );
    let r = stagehand(&["runs", "show", "nightly-c", "--state-dir", state_s]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.contains("  status    incomplete\n"),
        "{}",
        r.stdout
    );
    assert!(r
        .stdout
        .contains("  finished  - (no report: still running, or the process was killed)\n"));
    let r = stagehand(&["runs", "show", "nightly-", "--state-dir", state_s]);
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim(),
        "error: `nightly-` matches several runs: nightly-a, nightly-b, nightly-c"
    );
}

#[test]
fn runs_check_is_the_dead_man_switch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let state_s = state.to_str().expect("utf-8");
    let check = |plan: &str| {
        stagehand(&[
            "runs",
            "check",
            "--plan",
            plan,
            "--max-age",
            "26h",
            "--state-dir",
            state_s,
        ])
    };

    // Nothing recorded.
    let r = check("nightly");
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr.trim(),
        format!("STALE: no successful run of nightly is recorded; it has never run here (state directory {state_s})")
    );

    // A success 30 hours ago and a failure 2 hours ago: stale.
    let old = ago(30 * 3600);
    synthetic_run(&state, "nightly-old", "nightly", "succeeded", &old, &old);
    let recent = ago(2 * 3600);
    synthetic_run(&state, "nightly-new", "nightly", "failed", &recent, &recent);
    let r = check("nightly");
    assert_eq!(r.code, 1, "{}", r.stdout);
    let msg = r.stderr.trim();
    assert!(
        msg.starts_with("STALE: the last successful run of nightly finished 1day 6h"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("ago ({old}, run nightly-old), more than 1day 2h")),
        "{msg}"
    );

    // A success 2 hours ago: fresh.
    let fresh = ago(2 * 3600 + 60);
    synthetic_run(
        &state,
        "nightly-fresh",
        "nightly",
        "succeeded",
        &fresh,
        &fresh,
    );
    let r = check("nightly");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .starts_with("ok: the last successful run of nightly finished 2h 1m"),
        "{}",
        r.stdout
    );
    let r = stagehand(&[
        "runs",
        "check",
        "--plan",
        "nightly",
        "--max-age",
        "1h",
        "--state-dir",
        state_s,
        "--json",
    ]);
    assert_eq!(r.code, 1);
    let v: Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["ok"], false);
    assert_eq!(v["max_age_seconds"], 3600);
    assert_eq!(v["last_success"]["run_id"], "nightly-fresh");

    // Another plan's success does not count.
    let r = check("weekly");
    assert_eq!(r.code, 1);
}

#[test]
fn completions_are_generated_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_stagehand()"),
        ("zsh", "#compdef stagehand"),
        ("fish", "complete -c stagehand"),
    ] {
        let r = stagehand(&["completions", shell]);
        assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        assert!(r.stdout.contains(marker), "{shell}");
        for sub in ["run", "runs", "validate", "completions"] {
            assert!(r.stdout.contains(sub), "{shell} completes `{sub}`");
        }
    }
    let r = stagehand(&["completions", "bash"]);
    assert!(
        r.stdout.contains("--metrics-file"),
        "run's new flags complete too"
    );
}

#[test]
fn runs_show_rebuilds_the_steps_of_a_killed_run_from_its_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("slow.pid");
    let plan = write_plan(
        dir.path(),
        "killed",
        &format!(
            r#"version: 1
name: killed
steps:
  - id: first
    uses: exec
    with: {{command: [echo, hello]}}
  - id: slow
    uses: exec
    needs: [first]
    with: {{shell: "echo $$ > {pid}.tmp && mv {pid}.tmp {pid} && exec sleep 60"}}
  - id: after
    uses: exec
    needs: [slow]
    with: {{command: [echo, never]}}
"#,
            pid = pid_file.display()
        ),
    );
    let state = dir.path().join("state");
    let state_s = state.to_str().expect("utf-8");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["run", plan.to_str().expect("utf-8"), "--state-dir", state_s])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start stagehand");
    let t0 = std::time::Instant::now();
    let sleeper = loop {
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            break pid.trim().to_string();
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "the slow step never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    child.kill().expect("SIGKILL stagehand");
    child.wait().expect("reap stagehand");
    // SIGKILL gave stagehand no chance to stop its child.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &sleeper])
        .status();

    let list = stagehand(&["runs", "list", "--state-dir", state_s, "--json"]);
    let runs: Value = serde_json::from_str(&list.stdout).expect("JSON");
    let id = runs[0]["run_id"].as_str().expect("one run").to_string();
    assert_eq!(runs[0]["status"], "incomplete");

    let show = stagehand(&["runs", "show", &id, "--state-dir", state_s]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    let step_line = |id: &str| -> Vec<String> {
        show.stdout
            .lines()
            .find(|l| l.starts_with(&format!("  {id} ")))
            .unwrap_or_else(|| panic!("no line for {id}:\n{}", show.stdout))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(step_line("first")[..3], ["first", "exec", "succeeded"]);
    assert_eq!(step_line("slow"), ["slow", "exec", "interrupted"]);
    assert_eq!(step_line("after"), ["after", "exec", "pending"]);
    assert!(
        show.stdout.contains(
            "      error: started, and no end is recorded: the run was killed (or is still running)\n"
        ),
        "{}",
        show.stdout
    );
    assert!(show
        .stdout
        .contains("      outputs: stdout=hello, exit_code=0\n"));

    let json = stagehand(&["runs", "show", &id, "--state-dir", state_s, "--json"]);
    let detail: Value = serde_json::from_str(&json.stdout).expect("JSON");
    let statuses: Vec<&str> = detail["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["status"].as_str())
        .collect();
    assert_eq!(statuses, ["succeeded", "interrupted", "pending"]);
}
