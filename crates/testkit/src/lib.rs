//! Throwaway MariaDB servers for tests (cargo feature `testkit`).
//!
//! ```no_run
//! # async fn demo() {
//! use stagehand_testkit::TestServer;
//! let server = TestServer::builder()
//!     .name("binlog-test")
//!     .option("log-bin", Some("binlog"))
//!     .option("innodb_log_file_size", Some("8M"))
//!     .tcp(true)
//!     .start()
//!     .await;
//! server.exec("CREATE DATABASE d").await;
//! let on: Option<i64> = server.query_first("SELECT @@log_bin").await;
//! # }
//! ```
//!
//! Each server gets its own temporary directory (datadir, socket, error log)
//! and, with `tcp(true)`, its own loopback port, so tests run in parallel.
//! Dropping a [`TestServer`] stops the server (SIGTERM, up to 30 s, then
//! SIGKILL) and removes the directory; when the test is failing (the thread
//! is panicking) the error log is first copied to
//! `$CARGO_TARGET_DIR/test-logs/<name>-<pid>.err` (`./target/...` when the
//! variable is not set) and its path printed.
//!
//! There is no silent skip: if `mariadbd` or `mariadb-install-db` is missing,
//! [`TestServerBuilder::start`] panics with [`MARIADB_NOT_FOUND`].

pub mod garage;
pub mod s3;
pub mod watchdog;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mysql_async::prelude::{FromRow, Queryable};
use mysql_async::{Conn, Opts, Pool};
use tempfile::TempDir;
use tokio::process::Command;

use stagehand_mariadb::sandbox::accounts::is_root;
use stagehand_mariadb::sandbox::binaries::find_binary;
use stagehand_mariadb::sandbox::{
    log_tail_since, SandboxError, SandboxOptions, SandboxServer, LOG_TAIL_LINES,
};
use stagehand_mariadb::version::parse_server_version;

/// The message of a start without a MariaDB installation.
pub const MARIADB_NOT_FOUND: &str =
    "mariadbd not found: install MariaDB with 'apt-get install mariadb-server' (Debian 12 ships 10.11)";

/// How long `Drop` waits for the server after SIGTERM.
pub const DROP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

const INSTALL_DB_TIMEOUT: Duration = Duration::from_secs(120);
const INSTALL_DB_NAMES: &[&str] = &["mariadb-install-db", "mysql_install_db"];

/// Errors of [`TestServerBuilder::try_start`] and [`install_datadir`].
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// `mariadbd` or `mariadb-install-db` is missing.
    #[error("{MARIADB_NOT_FOUND} (missing: {missing})")]
    NotFound { missing: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// `mariadb-install-db` failed or timed out.
    #[error("mariadb-install-db failed ({status}); last lines of {}:\n{tail}", log.display())]
    InstallDb {
        status: String,
        log: PathBuf,
        tail: String,
    },

    #[error(transparent)]
    Sandbox(#[from] SandboxError),

    #[error("cannot query the test server: {0}")]
    Sql(#[from] mysql_async::Error),
}

/// How long the start-up took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupTimings {
    /// `mariadb-install-db`.
    pub install: Duration,
    /// Spawn to first answer of `SELECT 1`.
    pub start: Duration,
    /// Everything, including the `SELECT VERSION()` over the pool.
    pub total: Duration,
}

/// Builder of a [`TestServer`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct TestServerBuilder {
    name: Option<String>,
    options: Vec<(String, Option<String>)>,
    runtime_options: Vec<(String, Option<String>)>,
    tcp: bool,
    start_timeout: Option<Duration>,
    mariadbd: Option<PathBuf>,
    install_db: Option<PathBuf>,
}

impl TestServerBuilder {
    /// A server option (`--name=value`, `--name` for `None`), passed to
    /// `mariadb-install-db` as well as to the server: some (e.g.
    /// `innodb_page_size`, `innodb_undo_tablespaces`) must be the same at
    /// install time.
    pub fn option(mut self, name: &str, value: Option<&str>) -> Self {
        self.options
            .push((name.to_owned(), value.map(str::to_owned)));
        self
    }

    /// A server option passed to the server only, not to `mariadb-install-db`.
    pub fn runtime_option(mut self, name: &str, value: Option<&str>) -> Self {
        self.runtime_options
            .push((name.to_owned(), value.map(str::to_owned)));
        self
    }

    /// Also listen on a free loopback TCP port.
    pub fn tcp(mut self, enabled: bool) -> Self {
        self.tcp = enabled;
        self
    }

    /// Name used in the temp dir and in the saved error log; defaults to the
    /// test's name (libtest names the thread after the test).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// How long to wait for the server to answer (default 60 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = Some(timeout);
        self
    }

    /// The `mariadbd` binary (default: searched in PATH, /usr/sbin, ...).
    pub fn mariadbd(mut self, path: impl Into<PathBuf>) -> Self {
        self.mariadbd = Some(path.into());
        self
    }

    /// The `mariadb-install-db` binary (default: searched like `mariadbd`).
    pub fn install_db(mut self, path: impl Into<PathBuf>) -> Self {
        self.install_db = Some(path.into());
        self
    }

    /// Starts the server; panics if it cannot (with [`MARIADB_NOT_FOUND`] when
    /// MariaDB is not installed).
    pub async fn start(self) -> TestServer {
        let name = self.effective_name();
        match self.try_start().await {
            Ok(server) => server,
            Err(e @ TestkitError::NotFound { .. }) => panic!("{e}"),
            Err(e) => panic!("cannot start test server '{name}': {e}"),
        }
    }

    /// Starts the server, returning errors instead of panicking.
    pub async fn try_start(self) -> Result<TestServer, TestkitError> {
        watchdog::ensure_started();
        let began = Instant::now();
        let name = self.effective_name();
        let (mariadbd, install_db) = self.binaries()?;

        let tempdir = tempfile::Builder::new()
            .prefix(&format!("stagehand-{name}-"))
            .tempdir()
            .map_err(|e| TestkitError::Io {
                context: "cannot create the test server's temp dir".into(),
                source: e,
            })?;
        let datadir = tempdir.path().join("data");
        let run_dir = tempdir.path().join("run");
        let install_log = tempdir.path().join("install-db.log");
        let install_tmp = tempdir.path().join("install-tmp");

        let install_began = Instant::now();
        run_install_db(
            &install_db,
            &datadir,
            &install_tmp,
            &self.options,
            &install_log,
        )
        .await?;
        let install = install_began.elapsed();

        let mut opts = SandboxOptions::new(&datadir, &run_dir)
            .binary(&mariadbd)
            .tcp(self.tcp)
            .options(self.options.iter().cloned())
            .options(self.runtime_options.iter().cloned())
            // Drop stops the server itself, with its own timeout.
            .shutdown_timeout(DROP_SHUTDOWN_TIMEOUT);
        if let Some(timeout) = self.start_timeout {
            opts = opts.start_timeout(timeout);
        }
        let server = SandboxServer::start(opts).await?;
        let start = server.started_in();

        let pool = Pool::new(server.opts("root", ""));
        let version = {
            let mut conn = pool.get_conn().await?;
            let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
            version.unwrap_or_default()
        };
        let timings = StartupTimings {
            install,
            start,
            total: began.elapsed(),
        };
        tracing::info!(
            name = %name,
            version = %version,
            install_ms = install.as_millis() as u64,
            start_ms = start.as_millis() as u64,
            "test server up"
        );
        // Shown with a failing test's output: which server build it ran on.
        eprintln!(
            "test server '{name}': MariaDB {version} ({})",
            mariadbd.display()
        );
        Ok(TestServer {
            pool,
            server,
            name,
            version,
            timings,
            tempdir,
        })
    }

    fn effective_name(&self) -> String {
        let raw = match &self.name {
            Some(name) => name.clone(),
            None => std::thread::current()
                .name()
                .filter(|n| *n != "main")
                // `module::test_name` -> `test_name`
                .map(|n| n.rsplit("::").next().unwrap_or(n).to_owned())
                .unwrap_or_else(|| "test".to_owned()),
        };
        sanitize_name(&raw)
    }

    fn binaries(&self) -> Result<(PathBuf, PathBuf), TestkitError> {
        let mariadbd = match &self.mariadbd {
            Some(path) => find_binary(&path.to_string_lossy()),
            None => find_binary("mariadbd"),
        }
        .ok_or_else(|| TestkitError::NotFound {
            missing: self
                .mariadbd
                .as_ref()
                .map_or_else(|| "mariadbd".to_owned(), |p| p.display().to_string()),
        })?;
        let install_db = match &self.install_db {
            Some(path) => find_binary(&path.to_string_lossy()),
            None => INSTALL_DB_NAMES.iter().find_map(|n| find_binary(n)),
        }
        .ok_or_else(|| TestkitError::NotFound {
            missing: self.install_db.as_ref().map_or_else(
                || "mariadb-install-db".to_owned(),
                |p| p.display().to_string(),
            ),
        })?;
        Ok((mariadbd, install_db))
    }
}

/// A running throwaway MariaDB server with `root@localhost` (no password).
/// Stopped and deleted on drop.
#[derive(Debug)]
pub struct TestServer {
    // Field order is drop order: pool, then server (already stopped by
    // `Drop::drop`), then the directory.
    pool: Pool,
    server: SandboxServer,
    name: String,
    version: String,
    timings: StartupTimings,
    tempdir: TempDir,
}

impl TestServer {
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::default()
    }

    /// A server with default options (socket only); panics if it cannot start.
    pub async fn start_default() -> TestServer {
        TestServer::builder().start().await
    }

    /// A pool of `root` connections over the socket.
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    /// A new `root` connection over the socket (outside the pool).
    pub async fn conn(&self) -> Conn {
        match Conn::new(self.opts()).await {
            Ok(conn) => conn,
            Err(e) => panic!("test server '{}': cannot connect: {e}", self.name),
        }
    }

    /// Connection options of `root` over the socket.
    pub fn opts(&self) -> Opts {
        self.server.opts("root", "")
    }

    /// Connection options of `root` over loopback TCP (with `tcp(true)`).
    pub fn tcp_opts(&self) -> Option<Opts> {
        self.server.tcp_opts("root", "")
    }

    /// `mysql://root@localhost/?socket=...`
    pub fn conn_url(&self) -> String {
        self.server.opts_url("root", "")
    }

    pub fn socket(&self) -> &Path {
        self.server.socket()
    }

    pub fn port(&self) -> Option<u16> {
        self.server.port()
    }

    pub fn datadir(&self) -> &Path {
        self.server.datadir()
    }

    pub fn error_log(&self) -> &Path {
        self.server.error_log()
    }

    /// The temporary directory holding `data/`, `run/` and `install-db.log`.
    pub fn base_dir(&self) -> &Path {
        self.tempdir.path()
    }

    /// `SELECT VERSION()`, e.g. `10.11.19-MariaDB-0+deb12u1-log`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The version number, e.g. `10.11.19`.
    pub fn version_number(&self) -> Option<String> {
        parse_server_version(&self.version)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    pub fn timings(&self) -> StartupTimings {
        self.timings
    }

    /// The underlying sandbox server.
    pub fn sandbox(&self) -> &SandboxServer {
        &self.server
    }

    /// Runs a statement as root; panics on error (test convenience).
    pub async fn exec(&self, sql: &str) {
        let result = async {
            let mut conn = self.pool.get_conn().await?;
            conn.query_drop(sql).await
        }
        .await;
        if let Err(e) = result {
            panic!("test server '{}': {sql:?} failed: {e}", self.name);
        }
    }

    /// First row of a query as root; panics on error (test convenience).
    pub async fn query_first<T>(&self, sql: &str) -> Option<T>
    where
        T: FromRow + Send + 'static,
    {
        let result = async {
            let mut conn = self.pool.get_conn().await?;
            conn.query_first::<T, _>(sql).await
        }
        .await;
        match result {
            Ok(row) => row,
            Err(e) => panic!("test server '{}': {sql:?} failed: {e}", self.name),
        }
    }

    /// All rows of a query as root; panics on error (test convenience).
    pub async fn query<T>(&self, sql: &str) -> Vec<T>
    where
        T: FromRow + Send + 'static,
    {
        let result = async {
            let mut conn = self.pool.get_conn().await?;
            conn.query::<T, _>(sql).await
        }
        .await;
        match result {
            Ok(rows) => rows,
            Err(e) => panic!("test server '{}': {sql:?} failed: {e}", self.name),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Blocking on purpose: Drop cannot await, and `block_on` inside a
        // runtime panics. SIGTERM is a normal shutdown.
        match self.server.terminate_blocking(DROP_SHUTDOWN_TIMEOUT) {
            Ok(Some(_)) => {}
            Ok(None) => eprintln!(
                "test server '{}' (pid {}) did not stop within {:?}: killed",
                self.name,
                self.server.pid(),
                DROP_SHUTDOWN_TIMEOUT
            ),
            Err(e) => eprintln!("test server '{}': cannot stop it: {e}", self.name),
        }
        if std::thread::panicking() {
            let dir = test_logs_dir();
            let dest = dir.join(format!("{}-{}.err", self.name, self.server.pid()));
            let copied =
                std::fs::create_dir_all(&dir).and_then(|()| std::fs::copy(self.error_log(), &dest));
            match copied {
                Ok(_) => eprintln!(
                    "test server '{}' error log saved to {}",
                    self.name,
                    dest.display()
                ),
                Err(e) => eprintln!(
                    "test server '{}': cannot save error log {} to {}: {e}",
                    self.name,
                    self.error_log().display(),
                    dest.display()
                ),
            }
        }
        // The fields drop next: the server (already reaped), then the temp dir.
    }
}

/// `$CARGO_TARGET_DIR/test-logs`, or `./target/test-logs`.
pub fn test_logs_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("test-logs")
}

/// Creates a fresh datadir with `mariadb-install-db`: root@localhost with an
/// empty password (`--auth-root-authentication-method=normal`), no test db.
/// `options` are passed on to the bootstrap server. The install log is
/// written next to the datadir (`<datadir>.install.log`).
pub async fn install_datadir(
    datadir: &Path,
    options: &[(String, Option<String>)],
) -> Result<(), TestkitError> {
    let install_db = INSTALL_DB_NAMES
        .iter()
        .find_map(|n| find_binary(n))
        .ok_or_else(|| TestkitError::NotFound {
            missing: "mariadb-install-db".to_owned(),
        })?;
    let mut log = datadir.as_os_str().to_owned();
    log.push(".install.log");
    let tmpdir = tempfile::Builder::new()
        .prefix("stagehand-install-")
        .tempdir()
        .map_err(|e| TestkitError::Io {
            context: "cannot create a tmpdir for mariadb-install-db".into(),
            source: e,
        })?;
    run_install_db(
        &install_db,
        datadir,
        tmpdir.path(),
        options,
        Path::new(&log),
    )
    .await
}

async fn run_install_db(
    install_db: &Path,
    datadir: &Path,
    tmpdir: &Path,
    options: &[(String, Option<String>)],
    log: &Path,
) -> Result<(), TestkitError> {
    let io_err = |context: String| move |source| TestkitError::Io { context, source };
    std::fs::create_dir_all(datadir)
        .map_err(io_err(format!("cannot create {}", datadir.display())))?;
    std::fs::create_dir_all(tmpdir)
        .map_err(io_err(format!("cannot create {}", tmpdir.display())))?;
    let log_file =
        std::fs::File::create(log).map_err(io_err(format!("cannot create {}", log.display())))?;
    let log_file2 = log_file
        .try_clone()
        .map_err(io_err("cannot duplicate a file handle".to_owned()))?;

    let mut cmd = Command::new(install_db);
    // --no-defaults must come first.
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        // A private tmpdir: the bootstrap server deletes every `#sql*` file in
        // its tmpdir when it starts, so parallel installs sharing /tmp break
        // each other ("Unknown table 'mysql.tmp_user_sys'").
        .arg(format!("--tmpdir={}", tmpdir.display()));
    if is_root() {
        cmd.arg("--user=root");
    }
    for (name, value) in options {
        let name = name.trim_start_matches('-');
        match value {
            Some(v) => cmd.arg(format!("--{name}={v}")),
            None => cmd.arg(format!("--{name}")),
        };
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(log_file2))
        .kill_on_drop(true);
    tracing::debug!(?cmd, "running mariadb-install-db");
    let mut child = cmd
        .spawn()
        .map_err(io_err(format!("cannot run {}", install_db.display())))?;
    let status = match tokio::time::timeout(INSTALL_DB_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => return Ok(()),
        Ok(Ok(status)) => status.to_string(),
        Ok(Err(e)) => format!("cannot wait for it: {e}"),
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            format!("timed out after {INSTALL_DB_TIMEOUT:?}, killed")
        }
    };
    Err(TestkitError::InstallDb {
        status,
        log: log.to_path_buf(),
        tail: install_log_excerpt(log),
    })
}

/// The lines of the install log that explain a failure: the script prints
/// ~25 lines of generic advice after "Installation of system tables failed!",
/// so the useful part (the bootstrap server's errors) comes before it.
fn install_log_excerpt(log: &Path) -> String {
    let text = log_tail_since(log, 0, usize::MAX);
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .iter()
        .position(|l| l.starts_with("Installation of system tables failed"))
        .map_or(lines.len(), |i| i + 1);
    let start = end.saturating_sub(LOG_TAIL_LINES);
    lines[start..end].join("\n")
}

fn sanitize_name(raw: &str) -> String {
    let mut out = String::new();
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '-'
        };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
        if out.len() >= 40 {
            break;
        }
    }
    let out = out.trim_matches('-');
    if out.is_empty() {
        "test".to_owned()
    } else {
        out.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_names() {
        assert_eq!(sanitize_name("tests::foo bar/baz"), "tests-foo-bar-baz");
        assert_eq!(sanitize_name("::"), "test");
        assert_eq!(sanitize_name(&"x".repeat(100)).len(), 40);
    }
}
