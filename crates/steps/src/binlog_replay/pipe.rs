//! `mariadb-binlog --start-position=FROM --stop-position=TO FILES | mariadb`: two
//! children tied to stagehand (they die with it), both exit codes checked, and what
//! both said on stderr kept for the error.

use super::missing_tool;
use stagehand_engine::StepError;
use stagehand_mariadb::gtid::GtidPos;
use stagehand_mariadb::sandbox::binaries::find_binary;
use stagehand_mariadb::session::Session;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

pub async fn replay(
    session: &Session,
    workdir: &Path,
    files: &[PathBuf],
    from: &GtidPos,
    to: &GtidPos,
    cancel: &CancellationToken,
) -> Result<(), StepError> {
    if files.is_empty() {
        return Ok(());
    }
    let reader_bin = find_binary("mariadb-binlog")
        .ok_or_else(|| StepError::fatal(missing_tool("mariadb-binlog")))?;
    let client_bin =
        find_binary("mariadb").ok_or_else(|| StepError::fatal(missing_tool("mariadb")))?;
    let options = workdir.join("client.cnf");
    session
        .client_options_file(&options)
        .map_err(|e| StepError::fatal(format!("{}: {e}", options.display())))?;
    let result = run_pipe(&reader_bin, &client_bin, &options, files, from, to, cancel).await;
    let _ = std::fs::remove_file(&options);
    result
}

async fn run_pipe(
    reader_bin: &Path,
    client_bin: &Path,
    options: &Path,
    files: &[PathBuf],
    from: &GtidPos,
    to: &GtidPos,
    cancel: &CancellationToken,
) -> Result<(), StepError> {
    let mut reader = Command::new(reader_bin);
    reader
        .arg("--no-defaults")
        .arg(format!("--start-position={from}"))
        .arg(format!("--stop-position={to}"))
        .args(files)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut reader = spawn(reader, "mariadb-binlog").await?;
    let sql: Stdio = reader
        .stdout
        .take()
        .ok_or_else(|| StepError::fatal("mariadb-binlog has no stdout"))?
        .try_into()
        .map_err(|e| StepError::fatal(format!("piping mariadb-binlog: {e}")))?;
    let mut client = Command::new(client_bin);
    client
        .arg(format!("--defaults-file={}", options.display()))
        .arg("--binary-mode")
        .stdin(sql)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut client = spawn(client, "mariadb").await?;
    let both = async {
        let (r, c) = tokio::join!(finish(&mut reader), finish(&mut client));
        (r, c)
    };
    let ((reader_ok, reader_err), (client_ok, client_err)) = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(StepError::fatal("cancelled during the replay: the restored server is part-way; restore it again")),
        r = both => r,
    };
    if reader_ok && client_ok && !reader_err.contains("Did not reach stop position") {
        return Ok(());
    }
    Err(StepError::fatal(format!(
        "the replay failed: mariadb-binlog {}{}; mariadb {}{}",
        if reader_ok { "succeeded" } else { "failed" },
        said(&reader_err),
        if client_ok { "succeeded" } else { "failed" },
        said(&client_err)
    ))
    .with_hint("the restored server is part-way to the target: restore it again before using it"))
}

async fn spawn(command: Command, name: &str) -> Result<Child, StepError> {
    stagehand_host::process::spawn_tied_to_process(command)
        .await
        .map_err(|e| StepError::fatal(format!("cannot start {name}: {e}")))
}

/// Waits for a child; whether it exited 0, and its stderr.
async fn finish(child: &mut Child) -> (bool, String) {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err).await;
    }
    let ok = child.wait().await.map(|s| s.success()).unwrap_or(false);
    (ok, err)
}

fn said(stderr: &str) -> String {
    let text = stderr.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(
            " ({})",
            text.lines().take(5).collect::<Vec<_>>().join(" / ")
        )
    }
}
