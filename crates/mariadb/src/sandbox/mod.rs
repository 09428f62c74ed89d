//! A private, throwaway `mariadbd` running on a given datadir.
//!
//! Used by the `prepare` step (start the server binary on a backup copy so that
//! InnoDB crash recovery runs, then a slow shutdown so that the copy is clean),
//! by `verify` (test restore) and by the test harness (`testkit`).
//!
//! The server never reads any option file (`--no-defaults` is always the first
//! argument), listens on a Unix socket in a private run directory, has
//! networking disabled unless a loopback TCP port is asked for, uses a private
//! tmpdir (`<run_dir>/tmp`: mariadbd deletes all `#sql*` files of its tmpdir
//! at start, which would hurt any other server sharing it) and does not start
//! replication (`--skip-slave-start`). Only the user running stagehand can connect:
//! the run directory is created 0700 and the socket made 0600. The server is SIGKILLed
//! when stagehand dies, kill -9 included ([`spawn_tied_to_process`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), stagehand_mariadb::sandbox::SandboxError> {
//! use stagehand_mariadb::sandbox::{SandboxOptions, SandboxServer, ShutdownMode};
//! let opts = SandboxOptions::new("/backups/copy", "/backups/run").skip_grant_tables(true);
//! let server = SandboxServer::start(opts).await?;
//! let status = server.shutdown(ShutdownMode::Slow).await?;
//! assert!(status.success());
//! # Ok(()) }
//! ```

pub mod accounts;
pub mod binaries;

use accounts::{chown_path, is_root, lookup_user};
use binaries::{find_binary, resolve_explicit_binary, FALLBACK_BIN_DIRS};
use stagehand_host::process::spawn_tied_to_process;

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::process::{Child, Command};

/// Longest Unix socket path the kernel accepts: `sun_path` is 108 bytes on Linux,
/// including the terminating NUL.
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// How many lines of the error log an error carries.
pub const LOG_TAIL_LINES: usize = 30;

/// What a user name or password may keep as is in a `mysql://` URL: the unreserved
/// characters of RFC 3986.
const URL_PART: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// The same for the socket path, which keeps its slashes.
const URL_PATH: &AsciiSet = &URL_PART.remove(b'/');
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Upper bound of a single readiness probe (connect + `SELECT 1`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `Drop` waits for a killed server to go away.
const DROP_KILL_WAIT: Duration = Duration::from_secs(5);
/// Upper bound of the SQL part of a shutdown (connect, SET GLOBAL, SHUTDOWN).
const SQL_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a start is retried when an auto-picked TCP port was taken in between.
const PORT_RETRIES: usize = 3;

/// Server options that the sandbox sets itself and that cannot be overridden.
const RESERVED_OPTIONS: &[&str] = &[
    "no-defaults",
    "defaults-file",
    "defaults-extra-file",
    "defaults-group-suffix",
    "print-defaults",
    "datadir",
    "socket",
    "pid-file",
    "log-error",
    "user",
    "port",
    "bind-address",
    "skip-networking",
    "networking",
];

/// Errors of the sandbox server.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The server binary could not be found.
    #[error("{name} not found (searched $STAGEHAND_MARIADB_BIN, PATH and {dirs})", dirs = FALLBACK_BIN_DIRS.join(", "))]
    BinaryNotFound { name: String },

    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// The options are not usable.
    #[error("invalid sandbox options: {0}")]
    InvalidOptions(String),

    /// mariadbd exited before it answered.
    #[error("mariadbd exited during start-up ({status}); last lines of {}:\n{tail}", log.display())]
    StartExited {
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },

    /// mariadbd did not answer `SELECT 1` in time (it was killed).
    #[error("mariadbd did not answer within {timeout:?} (killed); last lines of {}:\n{tail}", log.display())]
    StartTimeout {
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },

    /// An SQL statement needed by the sandbox failed.
    #[error("{context}: {source}")]
    Sql {
        context: String,
        #[source]
        source: mysql_async::Error,
    },

    /// mariadbd did not exit in time after it was asked to shut down (it was killed).
    #[error("mariadbd did not exit within {timeout:?} after shutdown (killed); last lines of {}:\n{tail}", log.display())]
    ShutdownTimeout {
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },

    /// An operation did not finish in time.
    #[error("{context}: timed out after {timeout:?}")]
    Timeout { context: String, timeout: Duration },

    /// The server is not running any more (already waited for).
    #[error("mariadbd is not running")]
    NotRunning,

    /// `mariadbd --version` printed something unexpected.
    #[error("cannot parse a version from {binary} output {output:?}", binary = binary.display())]
    Version { binary: PathBuf, output: String },
}

impl SandboxError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        SandboxError::Io {
            context: context.into(),
            source,
        }
    }

    fn sql(context: impl Into<String>, source: mysql_async::Error) -> Self {
        SandboxError::Sql {
            context: context.into(),
            source,
        }
    }

    /// The error-log tail carried by start/shutdown failures.
    pub fn log_tail(&self) -> Option<&str> {
        match self {
            SandboxError::StartExited { tail, .. }
            | SandboxError::StartTimeout { tail, .. }
            | SandboxError::ShutdownTimeout { tail, .. } => Some(tail),
            _ => None,
        }
    }
}

/// Networking of the sandbox server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// `--skip-networking`: Unix socket only.
    #[default]
    Disabled,
    /// `--bind-address=127.0.0.1 --port=N`; `None` picks a free port.
    Loopback { port: Option<u16> },
}

/// How to shut the server down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Plain `SHUTDOWN` (InnoDB's default fast shutdown).
    Fast,
    /// `SET GLOBAL innodb_fast_shutdown=0` first: purge and change-buffer merge
    /// complete before exit, so that the datadir is clean (what `prepare` needs).
    Slow,
}

/// How to start a sandbox server. Build with [`SandboxOptions::new`] and the
/// chainable setters, or fill the public fields.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// The datadir the server runs on.
    pub datadir: PathBuf,
    /// Directory of the socket, pid file and error log (created if missing).
    pub run_dir: PathBuf,
    /// Networking (off by default).
    pub network: Network,
    /// Extra server options, passed as `--name=value` (or `--name` when `None`),
    /// after the sandbox's own options.
    pub server_options: Vec<(String, Option<String>)>,
    /// The `mariadbd` binary; `None` searches with [`find_binary`].
    pub binary: Option<PathBuf>,
    /// How long to wait for the server to answer `SELECT 1`.
    pub start_timeout: Duration,
    /// How long [`SandboxServer::shutdown`] waits for the process to exit.
    pub shutdown_timeout: Duration,
    /// Start with `--skip-grant-tables`.
    pub skip_grant_tables: bool,
    /// Start with `--skip-slave-start` (default): a copy of a replica's
    /// datadir must not start replicating from the real primary.
    pub skip_slave_start: bool,
    /// Account used for the readiness probe and for `SHUTDOWN`.
    pub admin_user: String,
    /// Password of [`SandboxOptions::admin_user`].
    pub admin_password: String,
    /// Socket path to listen on instead of `<run_dir>/mariadbd.sock` (its parent is
    /// created if missing; at most [`MAX_SOCKET_PATH_LEN`] bytes).
    pub socket: Option<PathBuf>,
    /// System user mariadbd runs as (`--user`, needs root); the run directory, the
    /// tmpdir and the error log are handed to it. `None`: the current user.
    pub run_as: Option<String>,
    /// Run in a private mount namespace with these binds (a backup's DATA DIRECTORY
    /// tables: the live paths show the backup's copies). Needs root.
    pub mounts: Option<stagehand_host::process::PrivateMounts>,
}

impl SandboxOptions {
    /// Options with defaults: no networking, 60 s start timeout, 300 s shutdown
    /// timeout (a slow shutdown purges), grants on, `--skip-slave-start`,
    /// private tmpdir `<run_dir>/tmp`, admin `root` without password.
    pub fn new(datadir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        SandboxOptions {
            datadir: datadir.into(),
            run_dir: run_dir.into(),
            network: Network::Disabled,
            server_options: Vec::new(),
            binary: None,
            start_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(300),
            skip_grant_tables: false,
            skip_slave_start: true,
            admin_user: "root".to_owned(),
            admin_password: String::new(),
            socket: None,
            run_as: None,
            mounts: None,
        }
    }

    /// Listens on this socket path instead of one in the run directory.
    pub fn socket_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// Runs mariadbd as this system user (`--user`; needs root).
    pub fn run_as(mut self, user: &str) -> Self {
        self.run_as = Some(user.to_owned());
        self
    }

    /// Loopback TCP on a free port (`true`) or no networking (`false`).
    pub fn tcp(mut self, enabled: bool) -> Self {
        self.network = if enabled {
            Network::Loopback { port: None }
        } else {
            Network::Disabled
        };
        self
    }

    /// Loopback TCP on the given port.
    pub fn tcp_port(mut self, port: u16) -> Self {
        self.network = Network::Loopback { port: Some(port) };
        self
    }

    /// Adds a server option (`--name=value`, or `--name` when `value` is `None`).
    pub fn option(mut self, name: &str, value: Option<&str>) -> Self {
        self.server_options
            .push((name.to_owned(), value.map(str::to_owned)));
        self
    }

    /// Adds several server options.
    pub fn options<I>(mut self, options: I) -> Self
    where
        I: IntoIterator<Item = (String, Option<String>)>,
    {
        self.server_options.extend(options);
        self
    }

    /// The `mariadbd` binary to run.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    pub fn skip_grant_tables(mut self, skip: bool) -> Self {
        self.skip_grant_tables = skip;
        self
    }

    pub fn skip_slave_start(mut self, skip: bool) -> Self {
        self.skip_slave_start = skip;
        self
    }

    /// Account used for the readiness probe and for `SHUTDOWN`.
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.admin_user = user.to_owned();
        self.admin_password = password.to_owned();
        self
    }
}

/// A running private `mariadbd`. Killed (SIGKILL) if dropped while running:
/// call [`SandboxServer::shutdown`] for a clean stop.
#[derive(Debug)]
pub struct SandboxServer {
    child: Option<Child>,
    pid: u32,
    binary: PathBuf,
    datadir: PathBuf,
    run_dir: PathBuf,
    socket: PathBuf,
    /// A short directory under /tmp that holds the socket, removed on drop.
    short_socket_dir: Option<PathBuf>,
    port: Option<u16>,
    error_log: PathBuf,
    pid_file: PathBuf,
    /// The private tmpdir (`None` when the caller set `tmpdir` itself).
    tmpdir: Option<PathBuf>,
    admin_user: String,
    admin_password: String,
    shutdown_timeout: Duration,
    started_in: Duration,
}

impl SandboxServer {
    /// Starts `mariadbd` and waits until it answers `SELECT 1` over its socket.
    ///
    /// On failure the process is killed and the error carries the last lines
    /// of the error log.
    pub async fn start(opts: SandboxOptions) -> Result<SandboxServer, SandboxError> {
        let began = Instant::now();
        let binary = match &opts.binary {
            Some(path) => resolve_explicit_binary(path)?,
            None => find_binary("mariadbd").ok_or_else(|| SandboxError::BinaryNotFound {
                name: "mariadbd".to_owned(),
            })?,
        };
        let extra_args = validate_server_options(&opts.server_options)?;

        // 0700 from the start (no chmod window): the socket, error log and tmpdir
        // of a server that may run with --skip-grant-tables live here.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&opts.run_dir)
            .map_err(|e| {
                SandboxError::io(
                    format!("cannot create run dir {}", opts.run_dir.display()),
                    e,
                )
            })?;
        let run_dir = absolute(&opts.run_dir)?;
        let datadir = absolute(&opts.datadir)?;
        if !datadir.is_dir() {
            return Err(SandboxError::InvalidOptions(format!(
                "datadir {} is not a directory",
                datadir.display()
            )));
        }

        let error_log = run_dir.join("mariadbd.err");
        let pid_file = run_dir.join("mariadbd.pid");
        // A private tmpdir unless the caller sets one: at start-up mariadbd
        // deletes every `#sql*` file in its tmpdir (mysql_rm_tmp_tables), so a
        // sandbox sharing /tmp with another server (the production server on
        // the same host, or a parallel test) would delete that server's
        // temporary tables under its feet. Seen in practice with parallel
        // `mariadb-install-db` runs ("Unknown table 'mysql.tmp_user_sys'").
        let user_tmpdir = opts
            .server_options
            .iter()
            .any(|(name, _)| normalize_option_name(name) == "tmpdir");
        let tmpdir = if user_tmpdir {
            None
        } else {
            let dir = run_dir.join("tmp");
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| {
                    SandboxError::io(format!("cannot create tmpdir {}", dir.display()), e)
                })?;
            Some(dir)
        };
        let mut short_socket_dir = None;
        let mut socket = run_dir.join("mariadbd.sock");
        let mut created_socket_dir = None;
        if let Some(wanted) = &opts.socket {
            socket = absolute(wanted)?;
            created_socket_dir = prepare_socket_path(&socket)?;
        } else if socket.as_os_str().len() > MAX_SOCKET_PATH_LEN {
            // sun_path holds at most 107 bytes + NUL: mariadbd would refuse to
            // start ("The socket file path is too long"). Put the socket in a
            // short private directory under /tmp instead; it is removed on drop.
            let dir = create_short_socket_dir()?;
            socket = dir.join("mariadbd.sock");
            short_socket_dir = Some(dir);
        }

        // From here on the short socket dir belongs to `server`, whose Drop
        // removes it on every error path.
        let mut server = SandboxServer {
            child: None,
            pid: 0,
            binary,
            datadir,
            run_dir,
            socket,
            short_socket_dir,
            port: None,
            error_log,
            pid_file,
            tmpdir,
            admin_user: opts.admin_user.clone(),
            admin_password: opts.admin_password.clone(),
            shutdown_timeout: opts.shutdown_timeout,
            started_in: Duration::ZERO,
        };
        let root = is_root();
        if let (Some(user), true) = (&opts.run_as, root) {
            // mariadbd drops to `user` early: it must be able to write its own files.
            let (uid, gid) = lookup_user(user)?;
            touch(&server.error_log)?;
            let mut owned = vec![server.run_dir.clone(), server.error_log.clone()];
            owned.extend(server.tmpdir.clone());
            owned.extend(created_socket_dir);
            for path in &owned {
                chown_path(path, uid, gid)?;
            }
        }

        let mut attempt = 0;
        loop {
            attempt += 1;
            let (port, auto_port) = match opts.network {
                Network::Disabled => (None, false),
                Network::Loopback { port: Some(p) } => (Some(p), false),
                Network::Loopback { port: None } => (Some(free_loopback_port()?), true),
            };
            server.port = port;
            match server
                .spawn_and_wait(&opts, &extra_args, root, opts.start_timeout)
                .await
            {
                Ok(()) => break,
                Err(SandboxError::StartExited { status, log, tail })
                    if auto_port
                        && attempt < PORT_RETRIES
                        && tail.contains("Address already in use") =>
                {
                    // The port picked by binding 127.0.0.1:0 was taken by
                    // someone else between our release and mariadbd's bind.
                    tracing::warn!(%status, log = %log.display(), "sandbox port was taken, retrying with another one");
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        server.started_in = began.elapsed();
        tracing::info!(
            pid = server.pid,
            socket = %server.socket.display(),
            port = ?server.port,
            elapsed_ms = server.started_in.as_millis() as u64,
            "sandbox mariadbd is up"
        );
        Ok(server)
    }

    fn build_args(
        &self,
        opts: &SandboxOptions,
        extra_args: &[OsString],
        root: bool,
    ) -> Vec<OsString> {
        fn arg(name: &str, value: &Path) -> OsString {
            let mut s = OsString::from(name);
            s.push(value);
            s
        }
        let mut args: Vec<OsString> = vec![
            // Must be the very first argument.
            "--no-defaults".into(),
            arg("--datadir=", &self.datadir),
            arg("--socket=", &self.socket),
            arg("--pid-file=", &self.pid_file),
            arg("--log-error=", &self.error_log),
        ];
        if let Some(tmpdir) = &self.tmpdir {
            args.push(arg("--tmpdir=", tmpdir));
        }
        if let Some(user) = &opts.run_as {
            args.push(format!("--user={user}").into());
        } else if root {
            // mariadbd refuses to run as root unless told so.
            args.push("--user=root".into());
        }
        match self.port {
            None => args.push("--skip-networking".into()),
            Some(port) => {
                args.push("--bind-address=127.0.0.1".into());
                args.push(format!("--port={port}").into());
            }
        }
        if opts.skip_grant_tables {
            args.push("--skip-grant-tables".into());
        }
        if opts.skip_slave_start {
            args.push("--skip-slave-start".into());
        }
        args.extend(extra_args.iter().cloned());
        args
    }

    async fn spawn_and_wait(
        &mut self,
        opts: &SandboxOptions,
        extra_args: &[OsString],
        root: bool,
        timeout: Duration,
    ) -> Result<(), SandboxError> {
        let args = self.build_args(opts, extra_args, root);
        // Whatever mariadbd prints before it has opened --log-error (bad
        // options, early warnings) goes to stdout/stderr: send both to the
        // error log too, so the tail explains every failure.
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.error_log)
            .map_err(|e| {
                SandboxError::io(
                    format!("cannot open error log {}", self.error_log.display()),
                    e,
                )
            })?;
        let log_offset = log_file.metadata().map(|m| m.len()).unwrap_or(0);
        let log_file2 = log_file
            .try_clone()
            .map_err(|e| SandboxError::io("cannot duplicate error log handle", e))?;

        tracing::debug!(binary = %self.binary.display(), ?args, "starting sandbox mariadbd");
        let mut command = Command::new(&self.binary);
        command
            .args(&args)
            // mariadbd sets its own umask from these (default 0660 files, 0700 dirs):
            // what it writes into a backup or a restored datadir stays owner-only.
            .env("UMASK", "0600")
            .env("UMASK_DIR", "0700")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_file2))
            .kill_on_drop(true);
        if let Some(mounts) = &opts.mounts {
            stagehand_host::process::with_private_mounts(&mut command, mounts).map_err(|e| {
                SandboxError::io("cannot set up the private mount namespace".to_string(), e)
            })?;
        }
        let child = spawn_tied_to_process(command)
            .await
            .map_err(|e| SandboxError::io(format!("cannot spawn {}", self.binary.display()), e))?;
        // No pid means it already exited and was reaped: nothing to signal later.
        self.pid = child.id().ok_or_else(|| {
            SandboxError::io(
                format!("{} exited as it started", self.binary.display()),
                io::Error::other("no pid"),
            )
        })?;
        self.child = Some(child);

        let deadline = Instant::now() + timeout;
        let probe_opts = self.admin_opts();
        loop {
            if let Some(status) = self.try_wait()? {
                self.child = None;
                return Err(SandboxError::StartExited {
                    status,
                    log: self.error_log.clone(),
                    tail: log_tail_since(&self.error_log, log_offset, LOG_TAIL_LINES),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let budget = (deadline - now).min(PROBE_TIMEOUT);
            if self.socket.exists() {
                self.restrict_socket();
                match tokio::time::timeout(budget, probe(probe_opts.clone())).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(ProbeError::Rejected(e))) => {
                        // The server is up and answering; only our credentials
                        // are refused. Callers connect with their own.
                        tracing::warn!(error = %e, user = %self.admin_user, "sandbox mariadbd is up but refused the probe account");
                        return Ok(());
                    }
                    Ok(Err(ProbeError::NotYet(e))) => {
                        tracing::trace!(error = %e, "sandbox mariadbd not answering yet");
                    }
                    Err(_elapsed) => {}
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }

        // Timed out: kill and reap.
        self.kill_and_reap().await;
        Err(SandboxError::StartTimeout {
            timeout,
            log: self.error_log.clone(),
            tail: log_tail_since(&self.error_log, log_offset, LOG_TAIL_LINES),
        })
    }

    /// mariadbd creates its socket with mode 0777 (it binds under umask 0): only
    /// the owner may connect. The 0700 run directory already keeps others out of the
    /// default socket; this also covers a caller-chosen path in a shared directory.
    fn restrict_socket(&self) {
        let Ok(meta) = fs::symlink_metadata(&self.socket) else {
            return;
        };
        if meta.permissions().mode() & 0o077 == 0 {
            return;
        }
        if let Err(e) = fs::set_permissions(&self.socket, fs::Permissions::from_mode(0o600)) {
            tracing::warn!(socket = %self.socket.display(), error = %e, "cannot make the sandbox socket private");
        }
    }

    /// Path of the Unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Loopback TCP port, when networking is on.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Path of the error log (stdout and stderr of the process go there too).
    pub fn error_log(&self) -> &Path {
        &self.error_log
    }

    pub fn datadir(&self) -> &Path {
        &self.datadir
    }

    /// Directory of the pid file and error log (and of the socket unless its
    /// path was too long).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The private tmpdir (`<run_dir>/tmp`), unless a `tmpdir` option was given.
    pub fn tmpdir(&self) -> Option<&Path> {
        self.tmpdir.as_deref()
    }

    pub fn pid_file(&self) -> &Path {
        &self.pid_file
    }

    /// Process id of mariadbd.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The binary that was started.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Time from [`SandboxServer::start`] to the first answer.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Connection options for `user`/`password` over the Unix socket.
    pub fn opts(&self, user: &str, password: &str) -> Opts {
        OptsBuilder::default()
            .socket(Some(self.socket.to_string_lossy().into_owned()))
            .user(Some(user))
            .pass(Some(password))
            .into()
    }

    /// Connection options for `user`/`password` over loopback TCP, when on.
    pub fn tcp_opts(&self, user: &str, password: &str) -> Option<Opts> {
        self.port.map(|port| {
            OptsBuilder::default()
                .ip_or_hostname("127.0.0.1")
                .tcp_port(port)
                // Stay on TCP: do not switch to the socket reported by the server.
                .prefer_socket(false)
                .user(Some(user))
                .pass(Some(password))
                .into()
        })
    }

    /// Connection options for the admin account (see [`SandboxOptions::credentials`]).
    pub fn admin_opts(&self) -> Opts {
        self.opts(&self.admin_user, &self.admin_password)
    }

    /// A `mysql://` URL for `user`/`password` over the Unix socket
    /// (`mysql://user:pass@localhost/?socket=/path`), parseable by
    /// [`mysql_async::Opts::from_url`].
    pub fn opts_url(&self, user: &str, password: &str) -> String {
        let socket = self.socket.to_string_lossy();
        if password.is_empty() {
            format!(
                "mysql://{}@localhost/?socket={}",
                utf8_percent_encode(user, URL_PART),
                utf8_percent_encode(&socket, URL_PATH)
            )
        } else {
            format!(
                "mysql://{}:{}@localhost/?socket={}",
                utf8_percent_encode(user, URL_PART),
                utf8_percent_encode(password, URL_PART),
                utf8_percent_encode(&socket, URL_PATH)
            )
        }
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>, SandboxError> {
        match self.child.as_mut() {
            None => Err(SandboxError::NotRunning),
            Some(child) => child
                .try_wait()
                .map_err(|e| SandboxError::io("cannot query mariadbd status", e)),
        }
    }

    /// Shuts the server down and waits for the process to exit.
    ///
    /// `Slow` runs `SET GLOBAL innodb_fast_shutdown=0` first and fails if it
    /// cannot. Then `SHUTDOWN` is sent over SQL; if the admin account cannot
    /// connect or lacks the privilege, SIGTERM is sent instead (the same
    /// normal shutdown, honouring `innodb_fast_shutdown`). After
    /// `shutdown_timeout` the process is killed and an error returned.
    ///
    /// Returns the exit status of mariadbd (check `success()`).
    pub async fn shutdown(mut self, mode: ShutdownMode) -> Result<ExitStatus, SandboxError> {
        if self.try_wait()?.is_some() {
            return Err(SandboxError::NotRunning);
        }
        let began = Instant::now();
        let opts = self.admin_opts();
        let sent = match tokio::time::timeout(SQL_TIMEOUT, sql_shutdown(opts, mode)).await {
            Ok(result) => result?,
            Err(_elapsed) if mode == ShutdownMode::Slow => {
                // Drop kills the server.
                return Err(SandboxError::Timeout {
                    context: "setting innodb_fast_shutdown=0 and sending SHUTDOWN".into(),
                    timeout: SQL_TIMEOUT,
                });
            }
            Err(_elapsed) => {
                tracing::warn!("SHUTDOWN over SQL timed out, sending SIGTERM");
                false
            }
        };
        if !sent {
            send_signal(self.pid, "TERM")?;
        }

        let timeout = self.shutdown_timeout;
        let waited = match self.child.as_mut() {
            Some(child) => tokio::time::timeout(timeout, child.wait()).await,
            None => return Err(SandboxError::NotRunning),
        };
        match waited {
            Ok(Ok(status)) => {
                self.child = None;
                tracing::info!(
                    pid = self.pid,
                    %status,
                    ?mode,
                    elapsed_ms = began.elapsed().as_millis() as u64,
                    "sandbox mariadbd stopped"
                );
                Ok(status)
            }
            Ok(Err(e)) => Err(SandboxError::io("cannot wait for mariadbd", e)),
            Err(_elapsed) => {
                self.kill_and_reap().await;
                Err(SandboxError::ShutdownTimeout {
                    timeout,
                    log: self.error_log.clone(),
                    tail: log_tail_since(&self.error_log, 0, LOG_TAIL_LINES),
                })
            }
        }
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub async fn kill(mut self) -> Result<ExitStatus, SandboxError> {
        let child = self.child.as_mut().ok_or(SandboxError::NotRunning)?;
        let _ = child.start_kill();
        let status = child
            .wait()
            .await
            .map_err(|e| SandboxError::io("cannot wait for mariadbd", e))?;
        self.child = None;
        Ok(status)
    }

    /// Blocking stop for contexts that cannot await (e.g. `Drop`): sends
    /// SIGTERM (a normal shutdown), waits up to `timeout` for the process to
    /// exit, then SIGKILLs it. Returns the exit status, or `None` if the
    /// process had to be killed. Safe to call inside a tokio runtime (it
    /// blocks the current thread, it does not `block_on`).
    pub fn terminate_blocking(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<ExitStatus>, SandboxError> {
        if let Some(status) = self.try_wait()? {
            self.child = None;
            return Ok(Some(status));
        }
        // The child is not reaped yet, so its pid cannot have been reused.
        send_signal(self.pid, "TERM")?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                self.child = None;
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_blocking(DROP_KILL_WAIT);
        Ok(None)
    }

    async fn kill_and_reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(DROP_KILL_WAIT, child.wait()).await;
        }
    }

    fn kill_blocking(&mut self, wait: Duration) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return;
            }
            let _ = child.start_kill();
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            tracing::warn!(
                pid = self.pid,
                "sandbox mariadbd still not reaped after SIGKILL"
            );
            // kill_on_drop + tokio's orphan reaper take it from here.
        }
    }
}

impl Drop for SandboxServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            tracing::warn!(
                pid = self.pid,
                "sandbox mariadbd dropped while running: killing it"
            );
            self.kill_blocking(DROP_KILL_WAIT);
        }
        if let Some(dir) = self.short_socket_dir.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Sends `SHUTDOWN` (after `SET GLOBAL innodb_fast_shutdown=0` for `Slow`).
/// `Ok(false)` when the caller should fall back to SIGTERM.
async fn sql_shutdown(opts: Opts, mode: ShutdownMode) -> Result<bool, SandboxError> {
    let mut conn = match Conn::new(opts).await {
        Ok(conn) => conn,
        Err(e) if mode == ShutdownMode::Slow => {
            return Err(SandboxError::sql(
                "cannot connect to set innodb_fast_shutdown=0 for a slow shutdown",
                e,
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot connect for SHUTDOWN, sending SIGTERM");
            return Ok(false);
        }
    };
    if mode == ShutdownMode::Slow {
        if let Err(e) = conn.query_drop("SET GLOBAL innodb_fast_shutdown=0").await {
            let _ = conn.disconnect().await;
            // The caller's Drop kills the server.
            return Err(SandboxError::sql(
                "cannot set innodb_fast_shutdown=0 for a slow shutdown",
                e,
            ));
        }
    }
    match conn.query_drop("SHUTDOWN").await {
        Ok(()) => {
            let _ = conn.disconnect().await;
            Ok(true)
        }
        Err(mysql_async::Error::Server(e)) => {
            // No SHUTDOWN privilege: SIGTERM is the same normal shutdown and
            // honours the innodb_fast_shutdown set above.
            tracing::warn!(error = %e, "SHUTDOWN refused, sending SIGTERM");
            let _ = conn.disconnect().await;
            Ok(false)
        }
        // The server may close the connection while it goes down.
        Err(e) => {
            tracing::debug!(error = %e, "connection lost after SHUTDOWN");
            Ok(true)
        }
    }
}

enum ProbeError {
    /// Not listening yet, or not answering yet.
    NotYet(mysql_async::Error),
    /// The server answered with an access error.
    Rejected(mysql_async::Error),
}

async fn probe(opts: Opts) -> Result<(), ProbeError> {
    let mut conn = match Conn::new(opts).await {
        Ok(conn) => conn,
        Err(mysql_async::Error::Server(e)) if is_access_error(e.code) => {
            return Err(ProbeError::Rejected(mysql_async::Error::Server(e)))
        }
        Err(e) => return Err(ProbeError::NotYet(e)),
    };
    let result = conn.query_drop("SELECT 1").await;
    let _ = conn.disconnect().await;
    result.map_err(ProbeError::NotYet)
}

fn is_access_error(code: u16) -> bool {
    // ER_DBACCESS_DENIED_ERROR, ER_ACCESS_DENIED_ERROR, ER_ACCESS_DENIED_NO_PASSWORD_ERROR
    matches!(code, 1044 | 1045 | 1698)
}

/// A free loopback port: bind 127.0.0.1:0, read the port, release it.
/// (Racy by nature: the start is retried if mariadbd finds it taken.)
pub fn free_loopback_port() -> Result<u16, SandboxError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| SandboxError::io("cannot bind 127.0.0.1:0 to find a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| SandboxError::io("cannot read the address of 127.0.0.1:0", e))?
        .port();
    Ok(port)
}

fn validate_server_options(
    options: &[(String, Option<String>)],
) -> Result<Vec<OsString>, SandboxError> {
    let mut args = Vec::with_capacity(options.len());
    for (name, value) in options {
        let bare = name.trim_start_matches('-');
        if bare.is_empty() || bare.contains('=') || bare.chars().any(char::is_whitespace) {
            return Err(SandboxError::InvalidOptions(format!(
                "bad server option name {name:?}"
            )));
        }
        let normalized = normalize_option_name(bare);
        if RESERVED_OPTIONS.contains(&normalized.as_str()) {
            return Err(SandboxError::InvalidOptions(format!(
                "server option {name:?} is set by the sandbox itself"
            )));
        }
        args.push(match value {
            Some(v) => format!("--{bare}={v}").into(),
            None => format!("--{bare}").into(),
        });
    }
    Ok(args)
}

/// `--innodb_log_file_size` -> `innodb-log-file-size`.
fn normalize_option_name(name: &str) -> String {
    name.trim_start_matches('-').replace('_', "-")
}

fn absolute(path: &Path) -> Result<PathBuf, SandboxError> {
    std::path::absolute(path)
        .map_err(|e| SandboxError::io(format!("cannot make {} absolute", path.display()), e))
}

/// Checks a caller-chosen socket path and creates its parent directory when missing;
/// returns the directory when it was created (it is then handed to `run_as`).
fn prepare_socket_path(socket: &Path) -> Result<Option<PathBuf>, SandboxError> {
    if socket.as_os_str().len() > MAX_SOCKET_PATH_LEN {
        return Err(SandboxError::InvalidOptions(format!(
            "socket path {} is longer than {MAX_SOCKET_PATH_LEN} bytes (the kernel's limit)",
            socket.display()
        )));
    }
    let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(None);
    };
    if parent.is_dir() {
        return Ok(None);
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(|e| SandboxError::io(format!("cannot create {}", parent.display()), e))?;
    Ok(Some(parent.to_path_buf()))
}

fn touch(path: &Path) -> Result<(), SandboxError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(drop)
        .map_err(|e| SandboxError::io(format!("cannot create {}", path.display()), e))
}

fn create_short_socket_dir() -> Result<PathBuf, SandboxError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut last_err = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!(
            "/tmp/stagehand-sock-{}-{n}-{nanos:x}",
            std::process::id()
        ));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => {
                return Err(SandboxError::io(
                    format!("cannot create socket dir {}", dir.display()),
                    e,
                ))
            }
        }
    }
    Err(SandboxError::io(
        "cannot create a unique socket dir under /tmp",
        last_err.unwrap_or_else(|| io::Error::other("too many attempts")),
    ))
}

fn send_signal(pid: u32, signal: &str) -> Result<(), SandboxError> {
    // `kill 0` would signal our whole process group, stagehand included.
    if pid == 0 {
        return Err(SandboxError::io(
            format!("no process to send {signal} to (pid 0)"),
            io::Error::other("pid 0"),
        ));
    }
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| SandboxError::io(format!("cannot run kill -{signal} {pid}"), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(SandboxError::io(
            format!("kill -{signal} {pid} failed ({status})"),
            io::Error::other("kill failed"),
        ))
    }
}

/// The last `lines` lines of `path` from byte `offset` on (lossy UTF-8).
/// Never fails: a missing log gives a note instead.
pub fn log_tail_since(path: &Path, offset: u64, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        // Read at most the last 64 KiB: plenty for 30 lines.
        let start = offset.max(len.saturating_sub(64 * 1024)).min(len);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            all[from..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pid_0_is_never_signalled() {
        // `kill -TERM 0` would stop this test process's whole group.
        let err = send_signal(0, "TERM")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("pid 0"), "{err}");
    }

    use super::*;

    #[test]
    fn rejects_reserved_options() {
        assert!(validate_server_options(&[("socket".into(), Some("/x".into()))]).is_err());
        assert!(validate_server_options(&[("--pid_file".into(), Some("/x".into()))]).is_err());
        assert!(validate_server_options(&[("bad=name".into(), None)]).is_err());
        let args = validate_server_options(&[
            ("log-bin".into(), Some("binlog".into())),
            ("skip-log-bin".into(), None),
        ])
        .ok();
        assert_eq!(
            args,
            Some(vec![
                OsString::from("--log-bin=binlog"),
                OsString::from("--skip-log-bin")
            ])
        );
    }

    #[test]
    fn url_round_trips() {
        let encoded = utf8_percent_encode("/tmp/a b/+x%.sock", URL_PATH).to_string();
        assert_eq!(encoded, "/tmp/a%20b/%2Bx%25.sock");
        let url = format!("mysql://r%40t:p%3Aw@localhost/?socket={encoded}");
        let opts = Opts::from_url(&url).ok();
        assert_eq!(
            opts.as_ref().and_then(|o| o.socket()),
            Some("/tmp/a b/+x%.sock")
        );
        assert_eq!(opts.as_ref().and_then(|o| o.user()), Some("r@t"));
        assert_eq!(opts.as_ref().and_then(|o| o.pass()), Some("p:w"));
    }
}
