//! Running the `stagehand` binary from tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs stagehand in the repository root, with no inherited log level.
pub fn stagehand(args: &[&str]) -> Run {
    stagehand_env(args, &[])
}

pub fn stagehand_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("STAGEHAND_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("the stagehand binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Plan files in a directory of the repository, sorted.
pub fn plans_in(dir: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .expect("plan directory exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    out.sort();
    out
}

pub fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every command that prints ends quietly (status 0, no panic) when its output pipe is
/// closed before it writes, as in `stagehand steps | head -1`.
#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    let commands: &[&[&str]] = &[
        &["steps"],
        &["schema"],
        &["graph", "plans/full-backup.yaml"],
        &["validate", "plans/full-backup.yaml"],
        &[
            "run",
            "plans/full-backup.yaml",
            "--dry-run",
            "--set",
            "target=/tmp/x",
        ],
        &["completions", "bash"],
    ];
    for args in commands {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stagehand"))
            .args(*args)
            .current_dir(repo_root())
            .env_remove("STAGEHAND_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start stagehand");
        // The reader goes away before the command writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait for stagehand");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("panicked"),
            "stagehand {args:?} into a closed pipe: {:?}\n{stderr}",
            out.status
        );
    }
}
