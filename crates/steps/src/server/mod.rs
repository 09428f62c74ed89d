//! `server` (background): starts `mariadbd` on a datadir (a restored one, typically) so
//! the steps after it can check it with `sql` steps, and shuts it down cleanly once its
//! `until` step has finished, or when the run is cancelled.
//!
//! ```yaml
//! - id: restored
//!   uses: server
//!   needs: [restore]
//!   background: true
//!   until: check
//!   with: {datadir: /srv/restore/data, socket: /tmp/restore/server.sock}
//! - id: check
//!   uses: sql
//!   needs: [restored]
//!   with: {connection: restored, sql: "SELECT COUNT(*) FROM app.orders"}
//! ```
//!
//! The server reads no option file (`--no-defaults`: only `options` apply), listens on
//! `socket` (and on 127.0.0.1:`port` when given, else `--skip-networking`), uses a
//! private tmpdir, keeps its error log in the run's state directory (a server run as
//! another `user` writes it in a scratch directory of its own, copied there at the end: the
//! state directory is private to stagehand's user) and does not start
//! replication (`--skip-slave-start`). Grants are on: a restored server keeps its
//! accounts, so the plan's connection uses real credentials. Connecting as `root`
//! without a password over the socket works when stagehand runs as the OS user `root`
//! and `root@localhost` has MariaDB's default `unix_socket` authentication.
//!
//! The socket lives only in a directory private to the server's user: a missing one is
//! created 0700 (and handed to `user`); an existing one that others can enter, or that
//! belongs to someone but us, root or `user`, is refused, and so is a file already at
//! the socket's path (another user's fake server would get the plan's credentials), in
//! `--check` and at run time. mariadbd creates its socket 0777 (made 0600 as soon as
//! it appears): the directory is what keeps other users out. The server is SIGKILLed
//! if stagehand dies (PR_SET_PDEATHSIG).
//!
//! The readiness probe and `SHUTDOWN` use `root` over the socket; when that account is
//! refused, the server still counts as up (it answered) and is stopped with SIGTERM,
//! the same clean shutdown.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use stagehand_engine::step::Finding;
use stagehand_engine::{ConfigError, StepContext, StepError, TypedStep};
use stagehand_mariadb::sandbox::accounts::{chown_path, is_root, lookup_user};
use stagehand_mariadb::sandbox::binaries::{find_binary, server_version};
use stagehand_mariadb::sandbox::{
    log_tail_since, SandboxError, SandboxOptions, SandboxServer, ShutdownMode, LOG_TAIL_LINES,
};
use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a running server is checked for an unexpected exit.
const LIVENESS_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The datadir to start on.
    pub datadir: String,
    /// The Unix socket to listen on (what the plan's connection uses); at most 107
    /// bytes, its directory is created when missing.
    pub socket: String,
    /// Also listen on 127.0.0.1 at this port (default: no TCP at all).
    pub port: Option<u16>,
    /// The system user mariadbd runs as (needs root; default: the current user, `root`
    /// included).
    pub user: Option<String>,
    /// Extra server options: `name: value`, or `name: null` for a flag
    /// (`skip-log-bin: null`). E.g. innodb_undo_directory, innodb_log_group_home_dir,
    /// innodb_buffer_pool_size.
    #[serde(default)]
    pub options: BTreeMap<String, Value>,
    /// Path of mariadbd (default: found on PATH, /usr/sbin, /usr/bin).
    pub binary: Option<String>,
    /// How long the server may take to accept connections (crash recovery included).
    #[serde(
        default = "default_start_timeout",
        with = "stagehand_engine::model::duration_text"
    )]
    #[schemars(with = "String")]
    pub start_timeout: Duration,
    /// How long a shutdown may take before the server is killed.
    #[serde(
        default = "default_stop_timeout",
        with = "stagehand_engine::model::duration_text"
    )]
    #[schemars(with = "String")]
    pub stop_timeout: Duration,
}

fn default_start_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(600)
}

/// Why the server step failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("mariadbd did not start on {datadir}: {source}")]
    Start {
        datadir: String,
        source: SandboxError,
    },
    #[error("mariadbd on {datadir} exited unexpectedly; last lines of {log}:\n{tail}")]
    Died {
        datadir: String,
        log: String,
        tail: String,
    },
    #[error("mariadbd on {datadir} did not shut down cleanly: {message}")]
    Stop { datadir: String, message: String },
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    UnsafeSocket(String),
}

impl ServerError {
    fn into_step_error(self) -> StepError {
        let hint = match &self {
            ServerError::Start { .. } => Some("the lines above end the server's error log: a restored datadir needs the source's innodb_page_size and undo/log directories in `options`, and a server run as `user` needs write access to its datadir and socket directory"),
            ServerError::UnsafeSocket(_) => Some("put `socket` in a directory of its own that stagehand creates (e.g. /tmp/stagehand-restore/check.sock: made 0700), or fix that directory's owner and mode (0700); remove a socket file a killed run left behind"),
            _ => None,
        };
        let e = StepError::fatal(self.to_string());
        match hint {
            Some(h) => e.with_hint(h),
            None => e,
        }
    }
}

/// What `server` publishes.
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct ServerOutput {
    /// the server's Unix socket
    pub socket: String,
    /// its TCP port on 127.0.0.1 (0: none)
    pub port: u64,
    /// mariadbd's version
    pub version: String,
    /// time until it accepted connections
    pub started_ms: u64,
    /// the server's error log (kept in the run's state directory)
    pub error_log: String,
}

pub struct Server;

#[async_trait]
impl TypedStep for Server {
    type Config = ServerConfig;
    type Output = ServerOutput;
    const NAME: &'static str = "server";
    const SUMMARY: &'static str = "Runs mariadbd on a datadir in the background until a later step has finished (checks of a restore)";
    const BACKGROUND: bool = true;

    fn check(cfg: &ServerConfig) -> Result<(), ConfigError> {
        server_options(cfg).map(|_| ())?;
        if cfg.socket.len() > stagehand_mariadb::sandbox::MAX_SOCKET_PATH_LEN {
            return Err(ConfigError {
                path: "socket".into(),
                message: format!(
                    "the socket path is longer than {} bytes",
                    stagehand_mariadb::sandbox::MAX_SOCKET_PATH_LEN
                ),
                hint: Some("use a short path such as /tmp/restore/server.sock".into()),
            });
        }
        Ok(())
    }

    fn describe(cfg: &ServerConfig) -> String {
        let net = match cfg.port {
            Some(p) => format!(" and 127.0.0.1:{p}"),
            None => String::new(),
        };
        let user = cfg
            .user
            .as_ref()
            .map(|u| format!(" as user {u}"))
            .unwrap_or_default();
        let opts = if cfg.options.is_empty() {
            String::new()
        } else {
            format!(
                " with {}",
                cfg.options.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        format!(
            "starts mariadbd on {}{user}{opts}, listening on {}{net}; shuts it down when its `until` step has finished",
            cfg.datadir, cfg.socket
        )
    }

    async fn preflight(cfg: &ServerConfig, _ctx: &StepContext) -> Vec<Finding> {
        let mut out = Vec::new();
        let binary = match &cfg.binary {
            Some(b) => find_binary(b),
            None => find_binary("mariadbd"),
        };
        match binary {
            Some(b) => match server_version(&b).await {
                Ok(v) => out.push(Finding::ok(format!("{} is MariaDB {v}", b.display()))),
                Err(e) => out.push(Finding::error(e.to_string())),
            },
            None => out.push(Finding::error(
                "mariadbd not found (apt-get install mariadb-server)",
            )),
        }
        if !Path::new(&cfg.datadir).is_dir() {
            out.push(Finding::warn(format!(
                "{} does not exist yet (fine when an earlier step restores it)",
                cfg.datadir
            )));
        }
        match check_socket_place(cfg) {
            Ok(()) => out.push(Finding::ok(format!(
                "{}: a private place for the socket",
                cfg.socket
            ))),
            Err(e) => out.push(Finding::error(e.to_string())),
        }
        out
    }

    async fn run(cfg: &ServerConfig, ctx: &StepContext) -> Result<ServerOutput, StepError> {
        let kept = ctx.run_dir.join(&ctx.step_id);
        let scratch = match cfg.user {
            Some(_) => Some(stagehand_mariadb::backup_server::run_dir()?),
            None => None,
        };
        // Copies the error log into the state directory when the step ends, however.
        let keep_log = scratch.as_ref().map(|s| KeepLog {
            from: s.path().join("mariadbd.err"),
            to: kept.join("mariadbd.err"),
        });
        let run_dir = scratch
            .as_ref()
            .map_or(kept.clone(), |s| s.path().to_path_buf());
        prepare_socket_dir(cfg).map_err(ServerError::into_step_error)?;
        let opts = sandbox_options(cfg, &run_dir).map_err(ServerError::into_step_error)?;
        let datadir = cfg.datadir.clone();
        let start = SandboxServer::start(opts);
        let mut server = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
            r = start => r.map_err(|source| ServerError::Start { datadir: datadir.clone(), source }.into_step_error())?,
        };
        let version = server_version(server.binary()).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the server's version");
            String::new()
        });
        let mut outputs = outputs_of(&server, &version);
        if let Some(keep) = &keep_log {
            outputs.error_log = keep.to.display().to_string();
        }
        tracing::info!(socket = %server.socket().display(), %version, "server is up");
        ctx.signal_ready().await;
        if ctx.is_background() {
            watch(ctx, &mut server, &datadir).await?;
        }
        let cancelled = ctx.cancel.is_cancelled();
        stop(server, &datadir).await?;
        if cancelled {
            return Err(StepError::cancelled()
                .with_hint("the server was shut down cleanly before the step ended"));
        }
        Ok(outputs)
    }
}

/// Who may own the socket's directory: us, root, and the server's `user`.
fn trusted_uids(cfg: &ServerConfig) -> Result<Vec<u32>, ServerError> {
    // SAFETY: geteuid cannot fail.
    let mut uids = vec![0, unsafe { libc::geteuid() }];
    if let Some(user) = &cfg.user {
        let (uid, _) = lookup_user(user).map_err(|e| ServerError::Setup(e.to_string()))?;
        uids.push(uid);
    }
    Ok(uids)
}

/// The socket's directory, absolute.
fn socket_dir(cfg: &ServerConfig) -> Result<PathBuf, ServerError> {
    let socket = std::path::absolute(&cfg.socket)
        .map_err(|e| ServerError::Setup(format!("{}: {e}", cfg.socket)))?;
    Ok(socket
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf))
}

/// mariadbd creates its socket 0777: only a directory no one else can enter or write
/// keeps other users from connecting (D4) or planting a socket of their own that the
/// plan's connection would trust (D5). A missing directory is fine (it is created
/// 0700); an existing one must be ours (or root's, or `user`'s), mode 0700-ish, and
/// hold no file at the socket's path.
fn check_socket_place(cfg: &ServerConfig) -> Result<(), ServerError> {
    let dir = socket_dir(cfg)?;
    let unsafe_socket =
        |why: String| ServerError::UnsafeSocket(format!("socket {}: {why}", cfg.socket));
    let link = match std::fs::symlink_metadata(&dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(unsafe_socket(format!(
                "cannot inspect {}: {e}",
                dir.display()
            )))
        }
    };
    let trusted = trusted_uids(cfg)?;
    let meta = std::fs::metadata(&dir)
        .map_err(|e| unsafe_socket(format!("cannot inspect {}: {e}", dir.display())))?;
    for m in [&link, &meta] {
        if !trusted.contains(&m.uid()) {
            return Err(unsafe_socket(format!(
                "its directory {} belongs to uid {}, not to this user, root or the server's user",
                dir.display(),
                m.uid()
            )));
        }
    }
    if !meta.is_dir() {
        return Err(unsafe_socket(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(unsafe_socket(format!(
            "its directory {} has mode {:o}: other users could connect to the server or put a socket of their own there",
            dir.display(),
            meta.mode() & 0o7777
        )));
    }
    let socket = dir.join(Path::new(&cfg.socket).file_name().unwrap_or_default());
    if std::fs::symlink_metadata(&socket).is_ok() {
        return Err(unsafe_socket(
            "a file exists there already: another server may be listening, and the plan's connection would talk to it".into(),
        ));
    }
    Ok(())
}

/// Checks the socket's place, then creates a missing directory 0700, handed to `user`
/// (who must create the socket in it).
fn prepare_socket_dir(cfg: &ServerConfig) -> Result<(), ServerError> {
    check_socket_place(cfg)?;
    let dir = socket_dir(cfg)?;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| ServerError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    if let (Some(user), true) = (&cfg.user, is_root()) {
        let (uid, gid) = lookup_user(user).map_err(|e| ServerError::Setup(e.to_string()))?;
        chown_path(&dir, uid, gid).map_err(|e| ServerError::Setup(e.to_string()))?;
    }
    Ok(())
}

/// A server run as another `user` cannot reach the state directory (private to
/// stagehand's user, often under /root): it runs in a scratch directory it owns, and its
/// error log is copied into the state directory when the step ends.
struct KeepLog {
    from: PathBuf,
    to: PathBuf,
}

impl Drop for KeepLog {
    fn drop(&mut self) {
        let copied = self
            .to
            .parent()
            .map_or(Ok(()), stagehand_host::private_fs::create_private_dir_all)
            .and_then(|_| std::fs::copy(&self.from, &self.to));
        if let Err(e) = copied {
            tracing::warn!(from = %self.from.display(), error = %e, "cannot keep the server's error log");
        }
    }
}

/// Waits for the `until` step (or a cancel); fails when the server dies meanwhile.
async fn watch(
    ctx: &StepContext,
    server: &mut SandboxServer,
    datadir: &str,
) -> Result<(), StepError> {
    let until = ctx.wait_until();
    tokio::pin!(until);
    loop {
        tokio::select! {
            r = &mut until => {
                if let Err(e) = r {
                    tracing::info!(reason = %e, "stopping the server");
                }
                return Ok(());
            }
            _ = tokio::time::sleep(LIVENESS_EVERY) => {
                if !server.is_running() {
                    let log = server.error_log().to_path_buf();
                    return Err(ServerError::Died {
                        datadir: datadir.to_string(),
                        log: log.display().to_string(),
                        tail: log_tail_since(&log, 0, LOG_TAIL_LINES),
                    }
                    .into_step_error());
                }
            }
        }
    }
}

/// A clean (fast) shutdown; a failure carries the end of the error log.
async fn stop(server: SandboxServer, datadir: &str) -> Result<(), StepError> {
    let log = server.error_log().to_path_buf();
    let err = |message: String| {
        ServerError::Stop {
            datadir: datadir.to_string(),
            message,
        }
        .into_step_error()
    };
    match server.shutdown(ShutdownMode::Fast).await {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(err(format!(
            "it exited with {status}; last lines of {}:\n{}",
            log.display(),
            log_tail_since(&log, 0, LOG_TAIL_LINES)
        ))),
        Err(e) => Err(err(e.to_string())),
    }
}

fn outputs_of(server: &SandboxServer, version: &str) -> ServerOutput {
    ServerOutput {
        socket: server.socket().display().to_string(),
        port: server.port().unwrap_or(0).into(),
        version: version.into(),
        started_ms: server.started_in().as_millis() as u64,
        error_log: server.error_log().display().to_string(),
    }
}

fn sandbox_options(cfg: &ServerConfig, run_dir: &Path) -> Result<SandboxOptions, ServerError> {
    let options = server_options(cfg).map_err(|e| ServerError::Setup(e.message))?;
    let mut opts = SandboxOptions::new(PathBuf::from(&cfg.datadir), run_dir)
        .socket_path(&cfg.socket)
        .options(options)
        .start_timeout(cfg.start_timeout)
        .shutdown_timeout(cfg.stop_timeout);
    if let Some(port) = cfg.port {
        opts = opts.tcp_port(port);
    }
    if let Some(user) = &cfg.user {
        opts = opts.run_as(user);
    }
    if let Some(b) = &cfg.binary {
        opts = opts.binary(b);
    }
    // On a backup directory itself (not a restored datadir), its `.isl` files name the
    // source's live DATA DIRECTORY files: the server sees the backup's copies there.
    let datadir = Path::new(&cfg.datadir);
    if datadir
        .join(stagehand_backup::manifest::MANIFEST_FILE)
        .exists()
    {
        let binary = cfg.binary.as_deref().map(Path::new);
        opts.mounts = stagehand_mariadb::backup_server::remote_mounts(datadir, run_dir, binary)
            .map_err(|e| ServerError::Setup(e.message))?;
    }
    Ok(opts)
}

/// `options` as `--name=value` pairs: text, numbers and booleans (ON/OFF); null is a
/// flag.
fn server_options(cfg: &ServerConfig) -> Result<Vec<(String, Option<String>)>, ConfigError> {
    cfg.options
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(if *b { "ON" } else { "OFF" }.to_string()),
                _ => {
                    return Err(ConfigError {
                        path: format!("options.{k}"),
                        message: "a server option is text, a number, a boolean or null".into(),
                        hint: None,
                    })
                }
            };
            Ok((k.clone(), value))
        })
        .collect()
}
