//! What many integration tests do: write a plan file, run it with `stagehand run --json`
//! and read its report and journal, look up a step, start a test server with some data,
//! back one up with `plans/full-backup.yaml` (as it is, or with its steps edited), copy
//! and list directory trees, and check an S3 bucket for leftover multipart uploads.

use crate::cli::stagehand_env;
use serde_json::Value;
use stagehand_testkit::s3::MotoServer;
use stagehand_testkit::TestServer;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Writes `text` to `DIR/NAME.yaml` and returns its path.
pub fn write_plan(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).expect("write plan");
    path
}

/// The step `id` of a run report; panics (showing the report) when there is none.
pub fn step<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("step {id} in the report: {report}"))
}

/// The error of the step `id` of a run report ("" when it has none).
pub fn step_error<'a>(report: &'a Value, id: &str) -> &'a str {
    step(report, id)["error"].as_str().unwrap_or_default()
}

/// The JSON report a `--json` run printed, or `Null` when it printed none.
pub fn report_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or(Value::Null)
}

/// `["--set", "k=v", ...]` of the pairs.
pub fn set_args(pairs: &[(&str, String)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")])
        .collect()
}

/// The journal events of every run in a state directory; a half-written last line (of
/// a run still going on) is left out.
pub fn journal_in(state: &Path) -> Vec<Value> {
    let Ok(runs) = std::fs::read_dir(state.join("runs")) else {
        return Vec::new();
    };
    runs.filter_map(|r| r.ok())
        .filter_map(|r| std::fs::read_to_string(r.path().join("journal.jsonl")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A finished `stagehand run --json`: its exit code, report, journal and output.
pub struct PlanRun {
    pub code: i32,
    pub report: Value,
    pub journal_text: String,
    pub stdout: String,
    pub stderr: String,
}

impl PlanRun {
    pub fn step(&self, id: &str) -> &Value {
        step(&self.report, id)
    }
    pub fn journal(&self) -> Vec<Value> {
        self.journal_text
            .lines()
            .map(|l| serde_json::from_str(l).expect("journal lines are JSON"))
            .collect()
    }
    /// What it printed, for assertion messages.
    pub fn output(&self) -> String {
        format!("stdout: {}\nstderr: {}", self.stdout, self.stderr)
    }
    pub fn run_dir(&self) -> PathBuf {
        Path::new(self.report["journal"].as_str().unwrap_or_default())
            .parent()
            .expect("run dir")
            .to_path_buf()
    }
}

/// `stagehand run PLAN --json --state-dir DIR/state [--set ...]`; panics unless it
/// printed a report.
pub fn run_plan(dir: &Path, plan: &Path, sets: &[String], env: &[(&str, &str)]) -> PlanRun {
    let state = dir.join("state");
    let mut args = vec![
        "run".to_string(),
        plan.display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--json".into(),
    ];
    for s in sets {
        args.push("--set".into());
        args.push(s.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = stagehand_env(&args, env);
    let report: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| {
        panic!(
            "report JSON ({e}); stdout: {}\nstderr: {}",
            r.stdout, r.stderr
        )
    });
    let journal_text =
        std::fs::read_to_string(report["journal"].as_str().unwrap_or_default()).expect("journal");
    PlanRun {
        code: r.code,
        report,
        journal_text,
        stdout: r.stdout,
        stderr: r.stderr,
    }
}

/// A plan named `name` of two exec steps: `hello` (echo hello), then `broken` with the
/// `with` mapping `broken_with`, which is meant to fail.
pub fn hello_then_broken(name: &str, broken_with: &str) -> String {
    format!(
        "version: 1
name: {name}
steps:
  - id: hello
    uses: exec
    with: {{command: [echo, hello]}}
  - id: broken
    uses: exec
    needs: [hello]
    with: {broken_with}
"
    )
}

/// A fresh test server named `name` on which `statements` have run, in order.
pub async fn server_with(name: &str, statements: &[&str]) -> TestServer {
    let server = TestServer::builder().name(name).start().await;
    exec_all(&server, statements).await;
    server
}

/// Runs `statements` on `server`, in order.
pub async fn exec_all(server: &TestServer, statements: &[&str]) {
    for sql in statements {
        server.exec(sql).await;
    }
}

/// Copies a directory tree with `cp -a`.
pub fn copy_tree(from: &Path, to: &Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(ok.success(), "cp -a {} {}", from.display(), to.display());
}

/// The params (`socket=…`, `datadir=…`, `target=…`, then `extra`) of a backup of
/// `server` into `target` with `plans/full-backup.yaml`.
pub fn backup_params(server: &TestServer, target: &Path, extra: &[&str]) -> Vec<String> {
    let mut params = vec![
        format!("socket={}", server.socket().display()),
        format!("datadir={}", server.datadir().display()),
        format!("target={}", target.display()),
    ];
    params.extend(extra.iter().map(|s| s.to_string()));
    params
}

/// `stagehand run PLAN --json` of a backup of `server` into `target` (params as
/// [`backup_params`] with `user=root` and `params`), started in the background with its
/// report piped and its log written to the file `stderr`.
pub fn spawn_backup(
    plan: &Path,
    server: &TestServer,
    target: &Path,
    state: &Path,
    params: &[&str],
    stderr: &Path,
) -> tokio::process::Child {
    let mut params = params.to_vec();
    params.insert(0, "user=root");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stagehand"));
    child.arg("run").arg(plan);
    for p in backup_params(server, target, &params) {
        child.args(["--set", &p]);
    }
    child
        .arg("--state-dir")
        .arg(state)
        .arg("--json")
        .current_dir(crate::cli::repo_root())
        .env_remove("STAGEHAND_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        // A file, not a pipe: nobody reads it while the run goes on.
        .stderr(std::process::Stdio::from(
            std::fs::File::create(stderr).expect("stderr file"),
        ))
        .kill_on_drop(true)
        .spawn()
        .expect("start stagehand")
}

/// `stagehand run plans/full-backup.yaml --json` arguments of an unprepared backup of
/// `server` as root into `WORK/backup`, the state in `WORK/state`: (target, arguments).
pub fn unprepared_backup_args(server: &TestServer, work: &Path) -> (PathBuf, Vec<String>) {
    let target = work.join("backup");
    let args = full_backup_args(
        server,
        &target,
        &work.join("state"),
        &["user=root", "prepare=false"],
        &["--json"],
    );
    (target, args)
}

/// `stagehand run plans/full-backup.yaml` arguments backing up `server` into `target`
/// with the state in `state`: `--set` of [`backup_params`] with `params`, then `extra`
/// arguments (`--json`, ...).
pub fn full_backup_args(
    server: &TestServer,
    target: &Path,
    state: &Path,
    params: &[&str],
    extra: &[&str],
) -> Vec<String> {
    let mut args = vec!["run".to_string(), "plans/full-backup.yaml".into()];
    for p in backup_params(server, target, params) {
        args.extend(["--set".to_string(), p]);
    }
    args.extend(["--state-dir".to_string(), state.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Every file below `dir` (not the directories), in no particular order.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Damages a stored file the way a bad disk would: one bit of its middle byte flipped.
pub fn flip_a_middle_byte(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read object");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(path, &bytes).expect("write object");
}

/// The largest file below `dir` whose name ends in `.ext`: the object a corruption test
/// damages (the most likely to hold table data).
pub fn largest_object(dir: &Path, ext: &str) -> PathBuf {
    files_in(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap_or_else(|| panic!("no .{ext} object under {}", dir.display()))
}

/// A fetch error names the damaged object and calls it corrupt.
pub fn assert_names_corrupt_object(error: &str, object: &Path) {
    let name = object
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    assert!(
        error.contains(name) && error.contains("corrupt"),
        "the error names the corrupt object {name}: {error}"
    );
}

/// The keys of the objects under `prefix` in `bucket`.
pub async fn keys_under(moto: &MotoServer, bucket: &str, prefix: &str) -> Vec<String> {
    moto.client()
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .expect("ListObjectsV2")
        .contents()
        .iter()
        .filter_map(|o| o.key().map(String::from))
        .collect()
}

/// No multipart upload is left in `bucket`.
pub async fn assert_no_multipart_uploads(moto: &MotoServer, bucket: &str) {
    let uploads = moto
        .client()
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .expect("ListMultipartUploads");
    assert!(
        uploads.uploads().is_empty(),
        "orphan multipart uploads: {uploads:?}"
    );
}

// ---- plans/full-backup.yaml, edited ----

/// The steps of a plan, as YAML values.
pub type Steps = Vec<serde_yaml::Value>;

pub fn yaml(text: &str) -> serde_yaml::Value {
    serde_yaml::from_str(text).expect("YAML")
}

/// Writes `dir/plan.yaml`: plans/full-backup.yaml with `edit` applied to its steps.
pub fn backup_plan(dir: &Path, edit: impl FnOnce(&mut Steps)) -> PathBuf {
    let text = std::fs::read_to_string(crate::cli::repo_root().join("plans/full-backup.yaml"))
        .expect("plans/full-backup.yaml");
    let mut plan: serde_yaml::Value = serde_yaml::from_str(&text).expect("the plan is YAML");
    let steps = plan
        .get_mut("steps")
        .and_then(serde_yaml::Value::as_sequence_mut)
        .expect("the plan has steps");
    edit(steps);
    let path = dir.join("plan.yaml");
    std::fs::write(&path, serde_yaml::to_string(&plan).expect("YAML")).expect("write plan");
    path
}

/// The id of a plan step.
pub fn id_of(step: &serde_yaml::Value) -> Option<&str> {
    step.get("id").and_then(serde_yaml::Value::as_str)
}

/// The plan step `id`.
pub fn step_of<'a>(steps: &'a mut Steps, id: &str) -> &'a mut serde_yaml::Mapping {
    steps
        .iter_mut()
        .filter_map(serde_yaml::Value::as_mapping_mut)
        .find(|s| s.get("id").and_then(serde_yaml::Value::as_str) == Some(id))
        .unwrap_or_else(|| panic!("plan step {id}"))
}

/// The `with` mapping of step `id`.
pub fn with_of<'a>(steps: &'a mut Steps, id: &str) -> &'a mut serde_yaml::Mapping {
    step_of(steps, id)
        .get_mut("with")
        .and_then(serde_yaml::Value::as_mapping_mut)
        .unwrap_or_else(|| panic!("step {id} has a `with` mapping"))
}

/// Makes step `id` need step `need` too.
pub fn add_need(steps: &mut Steps, id: &str, need: &str) {
    step_of(steps, id)
        .get_mut("needs")
        .and_then(serde_yaml::Value::as_sequence_mut)
        .unwrap_or_else(|| panic!("{id} needs"))
        .push(yaml(need));
}

/// Puts a step `gate` (after `after`) in front of step `before`, which then needs it:
/// an exec step that waits for the file `flag` to exist, `tries` times 50 ms at most.
pub fn insert_gate(steps: &mut Steps, before: &str, after: &str, flag: &Path, tries: u32) {
    let pos = steps
        .iter()
        .position(|s| id_of(s) == Some(before))
        .unwrap_or_else(|| panic!("plan step {before}"));
    let wait = format!(
        "for i in $(seq 1 {tries}); do [ -e '{}' ] && exit 0; sleep 0.05; done; exit 1",
        flag.display()
    );
    let mut gate = serde_yaml::Mapping::new();
    gate.insert(yaml("id"), yaml("gate"));
    gate.insert(yaml("uses"), yaml("exec"));
    gate.insert(
        yaml("needs"),
        serde_yaml::Value::Sequence(vec![yaml(after)]),
    );
    let mut with = serde_yaml::Mapping::new();
    with.insert(yaml("shell"), serde_yaml::Value::String(wait));
    gate.insert(yaml("with"), serde_yaml::Value::Mapping(with));
    steps.insert(pos, serde_yaml::Value::Mapping(gate));
    add_need(steps, before, "gate");
}

/// The other mode (docs/examples/full-backup-hold-ddl.yaml) made from
/// plans/full-backup.yaml: BLOCK_DDL taken before the copies and held through them, no
/// reconcile passes.
pub fn hold_ddl(steps: &mut Steps) {
    steps.retain(|s| !matches!(id_of(s), Some("catch_up" | "reconcile")));
    let lock_ddl = steps.remove(position_of(steps, "lock_ddl"));
    let at = position_of(steps, "copy_innodb");
    steps.insert(at, lock_ddl);
    set_needs(steps, "lock_ddl", "[redo]");
    set_needs(steps, "copy_innodb", "[lock_ddl]");
    set_needs(steps, "copy_other", "[lock_ddl]");
    set_needs(steps, "lock_commit", "[copy_innodb, copy_other]");
}

/// plans/full-backup.yaml without its catch-up pass: BLOCK_DDL right after the copies,
/// so the pass under BLOCK_DDL does all the reconciling.
pub fn without_catch_up(steps: &mut Steps) {
    steps.retain(|s| id_of(s) != Some("catch_up"));
    set_needs(steps, "lock_ddl", "[copy_innodb, copy_other]");
}

fn position_of(steps: &Steps, id: &str) -> usize {
    steps
        .iter()
        .position(|s| id_of(s) == Some(id))
        .unwrap_or_else(|| panic!("plan step {id}"))
}

/// Replaces what step `id` needs (`needs` written as YAML, `[a, b]`).
pub fn set_needs(steps: &mut Steps, id: &str, needs: &str) {
    step_of(steps, id).insert(yaml("needs"), yaml(needs));
}

/// Waits until the journal in `state` says step `step` started; panics when the run
/// `child` exited first, or after a minute.
pub async fn wait_for_start(child: &mut tokio::process::Child, state: &Path, step: &str) {
    let t0 = Instant::now();
    loop {
        if journal_in(state)
            .iter()
            .any(|e| e["event"] == "step_started" && e["step"] == step)
        {
            return;
        }
        let exited = child.try_wait().expect("try_wait");
        assert!(
            exited.is_none() && t0.elapsed() < Duration::from_secs(60),
            "step {step} did not start (stagehand exited: {exited:?}; journal: {:?})",
            journal_in(state)
                .iter()
                .map(|e| format!("{} {}", e["event"], e["step"]))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rows of every base table of schema `d`: (row count, sum of the CRC32 of `id,v`), by
/// table name. The tests that back up schema `d` compare restores with the source by it.
pub async fn rows_by_table(
    conn: &mut mysql_async::Conn,
) -> std::collections::BTreeMap<String, (u64, u64)> {
    use mysql_async::prelude::Queryable;
    let names: Vec<String> = conn
        .query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'd' AND table_type = 'BASE TABLE' ORDER BY 1",
        )
        .await
        .expect("list tables");
    let mut out = std::collections::BTreeMap::new();
    for t in names {
        let row: Option<(u64, Option<u64>)> = conn
            .query_first(format!(
                "SELECT COUNT(*), SUM(CRC32(CONCAT_WS(',', id, v))) FROM d.`{t}`"
            ))
            .await
            .unwrap_or_else(|e| panic!("read d.{t}: {e}"));
        let (n, sum) = row.unwrap_or_default();
        out.insert(t, (n, sum.unwrap_or(0)));
    }
    out
}

/// plans/full-backup.yaml (everything copied under START, `reconcile` under BLOCK_DDL)
/// with a gate after the copies. With `catch_up`, the gate is before the catch-up pass,
/// which then sees the DDL run at the gate first; without, the plan has no catch-up pass
/// and the gate is before BLOCK_DDL.
pub fn gated_after_copies_plan(dir: &Path, flag: &Path, catch_up: bool) -> PathBuf {
    backup_plan(dir, |steps| {
        let gated = if catch_up {
            "catch_up"
        } else {
            without_catch_up(steps);
            "lock_ddl"
        };
        insert_gate(steps, gated, "copy_innodb", flag, 2400);
    })
}
