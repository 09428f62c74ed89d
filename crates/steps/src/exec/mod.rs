//! `exec`: runs a program with arguments and environment; no shell unless asked.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use stagehand_engine::{ConfigError, StepContext, StepError, TypedStep};
use std::collections::BTreeMap;
use std::process::Stdio;
use tokio::io::AsyncReadExt;

/// Output kept per stream; a step's stdout is for small values, not data.
const MAX_CAPTURE: usize = 1 << 20;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Program and arguments, run directly (use this or `shell`).
    pub command: Option<Vec<String>>,
    /// A script for `sh -c` (use this or `command`): only when you need pipes or globs.
    pub shell: Option<String>,
    /// Extra environment variables (values may be secrets: they are never printed).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Exit codes that mean "try again" (e.g. 75, EX_TEMPFAIL); others fail at once.
    #[serde(default)]
    pub retryable_exit_codes: Vec<i32>,
    /// With `background: true`: once the `until` step finishes, its outputs are written
    /// to the program's stdin as one JSON line and stdin is closed; a program still
    /// running after this long is killed.
    #[serde(
        default = "default_stop_timeout",
        with = "stagehand_engine::model::duration_text"
    )]
    #[schemars(with = "String")]
    pub stop_timeout: std::time::Duration,
}

fn default_stop_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

/// What `exec` publishes.
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct ExecOutput {
    /// standard output, without the final newline
    pub stdout: String,
    /// the exit code (0 when the step succeeds)
    pub exit_code: i32,
}

pub struct Exec;

#[async_trait]
impl TypedStep for Exec {
    type Config = ExecConfig;
    type Output = ExecOutput;
    const NAME: &'static str = "exec";
    const SUMMARY: &'static str =
        "Runs a program (no shell unless asked); stdout becomes an output";
    const BACKGROUND: bool = true;
    const COMMAND_LINE_FIELDS: &'static [&'static str] = &["command", "shell"];

    fn check(cfg: &ExecConfig) -> Result<(), ConfigError> {
        match (&cfg.command, &cfg.shell) {
            (Some(c), None) if c.is_empty() => Err(ConfigError {
                path: "command".into(),
                message: "`command` is empty".into(),
                hint: Some("write the program first: [\"mariadb-admin\", \"ping\"]".into()),
            }),
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err(ConfigError {
                path: String::new(),
                message: "give exactly one of `command` and `shell`".into(),
                hint: None,
            }),
        }
    }

    fn describe(cfg: &ExecConfig) -> String {
        let what = match (&cfg.command, &cfg.shell) {
            (Some(argv), _) => format!(
                "runs `{}`",
                argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
            ),
            (None, Some(script)) => format!("runs the shell script `{}`", script.trim()),
            _ => "runs nothing".into(),
        };
        let env = if cfg.env.is_empty() {
            String::new()
        } else {
            format!(
                " with {} set",
                cfg.env.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        let cwd = cfg
            .cwd
            .as_ref()
            .map(|d| format!(" in {d}"))
            .unwrap_or_default();
        format!("{what}{env}{cwd}")
    }

    async fn run(cfg: &ExecConfig, ctx: &StepContext) -> Result<ExecOutput, StepError> {
        let background = ctx.is_background();
        warn_of_secrets_on_the_command_line(cfg, ctx);
        let mut cmd = build_command(cfg, background)?;
        let mut child = cmd.spawn().map_err(|e| {
            StepError::fatal(format!("cannot start `{}`: {e}", program_name(cfg)))
                .with_hint("check that the program is installed and on PATH")
        })?;
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        if background {
            ctx.signal_ready().await;
        }
        let read_out = async { read_capped(stdout.as_mut()).await };
        let read_err = async { read_capped(stderr.as_mut()).await };
        let stop = async {
            if background {
                stop_when_until_finishes(ctx, stdin, cfg.stop_timeout).await
            } else {
                drop(stdin);
                std::future::pending().await
            }
        };
        let waited = async {
            tokio::select! {
                r = child.wait() => r,
                () = stop => { let _ = child.start_kill(); child.wait().await }
            }
        };
        let waited = async { tokio::join!(waited, read_out, read_err) };
        let (status, out, err) = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => {
                // kill_on_drop ends the child when this future is dropped.
                return Err(StepError::cancelled());
            }
            r = waited => r,
        };
        let status = status
            .map_err(|e| StepError::fatal(format!("waiting for `{}`: {e}", program_name(cfg))))?;
        let code = status.code().unwrap_or(-1);
        if !status.success() {
            let tail = ctx.redact(&tail_lines(&err, 20));
            let msg = format!(
                "`{}` exited with {}{}",
                program_name(cfg),
                describe_status(&status),
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {tail}")
                }
            );
            return Err(if cfg.retryable_exit_codes.contains(&code) {
                StepError::retryable(msg)
            } else {
                StepError::fatal(msg)
            });
        }
        Ok(ExecOutput {
            stdout: out.trim_end_matches(['\n', '\r']).to_string(),
            exit_code: code,
        })
    }
}

/// A secret in argv (or in `sh -c`'s script) is readable by every local user for as long
/// as the program runs. Says where, never what.
fn warn_of_secrets_on_the_command_line(cfg: &ExecConfig, ctx: &StepContext) {
    let places: Vec<(String, &str)> = match (&cfg.command, &cfg.shell) {
        (Some(argv), _) => argv
            .iter()
            .enumerate()
            .map(|(i, arg)| (format!("command[{i}]"), arg.as_str()))
            .collect(),
        (None, Some(script)) => vec![("shell".to_string(), script.as_str())],
        (None, None) => Vec::new(),
    };
    for (place, text) in places {
        if ctx.redact(text) != text {
            tracing::warn!(
                step = %ctx.step_id,
                argument = %place,
                "a secret is passed on the command line ({place}), where every local user can read it with `ps`; pass it in `env:` or on stdin instead"
            );
        }
    }
}

/// Hands the `until` step's outputs to the program, then gives it `timeout` to finish;
/// returns when it should be killed.
async fn stop_when_until_finishes(
    ctx: &StepContext,
    stdin: Option<tokio::process::ChildStdin>,
    timeout: std::time::Duration,
) {
    use tokio::io::AsyncWriteExt;
    let until = ctx.wait_until().await;
    if let (Some(mut stdin), Ok(outputs)) = (stdin, until) {
        let line = format!("{}\n", Value::Object(outputs));
        // A program that does not read stdin is fine: it is stopped by the timeout.
        let _ = stdin.write_all(line.as_bytes()).await;
        let _ = stdin.shutdown().await;
    }
    tokio::time::sleep(timeout).await;
}

fn build_command(cfg: &ExecConfig, background: bool) -> Result<tokio::process::Command, StepError> {
    let mut cmd = match (&cfg.command, &cfg.shell) {
        (Some(argv), _) => {
            let (prog, args) = argv
                .split_first()
                .ok_or_else(|| StepError::fatal("empty command"))?;
            let mut c = tokio::process::Command::new(prog);
            c.args(args);
            c
        }
        (None, Some(script)) => {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c").arg(script);
            c
        }
        (None, None) => return Err(StepError::fatal("no command")),
    };
    cmd.envs(&cfg.env)
        .stdin(if background {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = &cfg.cwd {
        cmd.current_dir(dir);
    }
    Ok(cmd)
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(r: Option<&mut R>) -> String {
    let Some(r) = r else { return String::new() };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            // Keep draining past the cap so the child never blocks on a full pipe.
            Ok(n) if buf.len() < MAX_CAPTURE => {
                buf.extend_from_slice(&chunk[..n.min(MAX_CAPTURE - buf.len())])
            }
            Ok(_) => {}
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn program_name(cfg: &ExecConfig) -> String {
    match (&cfg.command, &cfg.shell) {
        (Some(argv), _) => argv.first().cloned().unwrap_or_default(),
        _ => "sh".into(),
    }
}

fn describe_status(s: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("code {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "an unknown status".into(),
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}
