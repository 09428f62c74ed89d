//! Progress of a long copy: bars on a terminal (a real pty from `script`), a log line
//! every `--progress-every` without one.

use crate::cli::stagehand_env;
use stagehand_testkit::TestServer;
use std::path::Path;

const PLAN: &str = r#"
version: 1
name: progress-test
params:
  socket: {type: path, required: true}
  datadir: {type: path, required: true}
  target: {type: path, required: true}
connections:
  source: {socket: "{{params.socket}}", user: root}
steps:
  - id: copy
    uses: copy
    with:
      connection: source
      from: "{{params.datadir}}"
      to: "{{params.target}}"
      files: innodb
      # Slow enough to be seen: the system tablespace alone is 12 MiB.
      max_rate: 6MiB
"#;

fn args(plan: &Path, server: &TestServer, target: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "run".to_string(),
        plan.display().to_string(),
        "--set".into(),
        format!("socket={}", server.socket().display()),
        "--set".into(),
        format!("datadir={}", server.datadir().display()),
        "--set".into(),
        format!("target={}", target.display()),
        "--state-dir".into(),
        target.with_extension("state").display().to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_a_progress_line_every_n_seconds() {
    let server = TestServer::builder().name("progress-log").start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let plan = work.path().join("plan.yaml");
    std::fs::write(&plan, PLAN).expect("plan");
    let a = args(
        &plan,
        &server,
        &work.path().join("copy"),
        &["--progress-every", "1s"],
    );
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let run = tokio::task::block_in_place(|| stagehand_env(&a, &[("CI", "true")]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("copied") && l.contains("GB (") && l.contains("MB/s"))
        .collect();
    assert!(
        lines.len() >= 2,
        "a progress line each second of a copy of several seconds:\n{}",
        run.stderr
    );
    assert!(
        lines.iter().all(|l| l.contains("left")),
        "each line has an ETA: {lines:?}"
    );
    assert!(
        !run.stderr.contains('\r'),
        "no bar drawn without a terminal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_a_progress_bar_with_bytes_rate_and_eta() {
    let server = TestServer::builder().name("progress-bar").start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let plan = work.path().join("plan.yaml");
    std::fs::write(&plan, PLAN).expect("plan");
    let a = args(&plan, &server, &work.path().join("copy"), &[]);
    let command = std::iter::once(env!("CARGO_BIN_EXE_stagehand").to_string())
        .chain(a)
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let typescript = work.path().join("typescript");
    // `script` runs the command on a real pseudo-terminal and records what it drew.
    let status = tokio::task::block_in_place(|| {
        std::process::Command::new("script")
            .args(["-q", "-e", "-c", &command])
            .arg(&typescript)
            .env_remove("CI")
            .env_remove("STAGEHAND_PROGRESS")
            .stdin(std::process::Stdio::null())
            .status()
            .expect("`script` (bsdutils) runs: apt-get install bsdutils")
    });
    assert!(status.success(), "the copy under a terminal failed");
    let drawn =
        String::from_utf8_lossy(&std::fs::read(&typescript).expect("typescript")).into_owned();
    assert!(
        drawn.contains("copy copied") && drawn.contains("MiB/s") && drawn.contains("ETA"),
        "a bar with the step, bytes, rate and ETA was drawn:\n{drawn}"
    );
}
