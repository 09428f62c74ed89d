//! Integration tests of the sandbox server and the test harness.
//! They need MariaDB installed (`apt-get install mariadb-server`): without it
//! they fail, they never pass silently.
//!
//! Run with `cargo test -p stagehand-steps --features testkit --test sandbox`.

use std::path::Path;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use stagehand_mariadb::sandbox::binaries::{find_binary, server_version};
use stagehand_mariadb::sandbox::{SandboxError, SandboxOptions, SandboxServer, ShutdownMode};
use stagehand_testkit::{install_datadir, test_logs_dir, TestServer, MARIADB_NOT_FOUND};

fn process_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_parallel() {
    let began = Instant::now();
    let (a, b) = tokio::join!(
        TestServer::builder().name("parallel-a").start(),
        TestServer::builder().name("parallel-b").start(),
    );
    eprintln!(
        "two servers in parallel: {:?} (a: {:?}, b: {:?})",
        began.elapsed(),
        a.timings(),
        b.timings()
    );
    assert_ne!(a.socket(), b.socket());
    assert_ne!(a.datadir(), b.datadir());
    assert_ne!(a.pid(), b.pid());
    for server in [&a, &b] {
        let version: Option<String> = server.query_first("SELECT VERSION()").await;
        let version = version.unwrap_or_default();
        assert!(version.starts_with("10.11."), "{version}");
        assert_eq!(server.version(), version);
        assert!(server
            .version_number()
            .is_some_and(|v| v.starts_with("10.11.")));
    }
    // Each is its own server: a table made on one does not show on the other.
    a.exec("CREATE DATABASE only_on_a").await;
    let on_b: Option<i64> = b
        .query_first(
            "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = 'only_on_a'",
        )
        .await;
    assert_eq!(on_b, Some(0));
}

#[tokio::test]
async fn start_default_answers_over_socket_and_url() {
    let server = TestServer::start_default().await;
    eprintln!("start_default timings: {:?}", server.timings());
    assert_eq!(server.port(), None);
    let skip: Option<i64> = server.query_first("SELECT @@skip_networking").await;
    assert_eq!(skip, Some(1));
    let url = server.conn_url();
    assert!(url.starts_with("mysql://root@localhost/?socket="), "{url}");
    let mut conn = mysql_async::Conn::from_url(url)
        .await
        .expect("connect by URL");
    let user: Option<String> = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .expect("query");
    assert_eq!(user.as_deref(), Some("root@localhost"));
    conn.disconnect().await.expect("disconnect");
    let rows: Vec<(String,)> = server.query("SHOW DATABASES").await;
    assert!(
        !rows.iter().any(|(d,)| d == "test"),
        "--skip-test-db: {rows:?}"
    );
}

#[tokio::test]
async fn options_reach_the_server() {
    let server = TestServer::builder()
        .name("options")
        .option("log-bin", Some("binlog"))
        .option("server-id", Some("7"))
        .option("innodb_log_file_size", Some("8M"))
        .tcp(true)
        .start()
        .await;
    let log_bin: Option<i64> = server.query_first("SELECT @@log_bin").await;
    assert_eq!(log_bin, Some(1));
    let size: Option<u64> = server.query_first("SELECT @@innodb_log_file_size").await;
    assert_eq!(size, Some(8_388_608));
    let id: Option<u64> = server.query_first("SELECT @@server_id").await;
    assert_eq!(id, Some(7));
    let basename: Option<String> = server.query_first("SELECT @@log_bin_basename").await;
    let expected = server.datadir().join("binlog");
    assert_eq!(basename.as_deref().map(Path::new), Some(expected.as_path()));

    // Sandbox defaults: private tmpdir, no replication start.
    let tmpdir: Option<String> = server.query_first("SELECT @@tmpdir").await;
    let expected_tmp = server.sandbox().tmpdir().expect("private tmpdir");
    assert_eq!(tmpdir.as_deref().map(Path::new), Some(expected_tmp));
    assert!(expected_tmp.starts_with(server.base_dir()));
    // (--skip-slave-start is not a readable system variable in 10.11; that
    // the server started with it is the check.)

    // Loopback TCP works and really is TCP.
    let port = server.port().expect("tcp(true) gives a port");
    let mut conn = mysql_async::Conn::new(server.tcp_opts().expect("tcp opts"))
        .await
        .expect("connect over TCP");
    let (server_port, host): (u16, String) = conn
        .query_first("SELECT @@port, (SELECT host FROM information_schema.processlist WHERE id = CONNECTION_ID())")
        .await
        .expect("query")
        .expect("a row");
    assert_eq!(server_port, port);
    // "host:port" for TCP clients ("localhost" alone for the socket); 127.0.0.1
    // shows as "localhost:N" since name resolution is on.
    assert!(host.contains(':'), "{host}");
    let bind: Option<String> = conn
        .query_first("SELECT @@bind_address")
        .await
        .expect("query");
    assert_eq!(bind.as_deref(), Some("127.0.0.1"));
    conn.disconnect().await.expect("disconnect");
}

#[tokio::test]
async fn drop_removes_tempdir_and_process() {
    let server = TestServer::builder().name("drop").start().await;
    // Open connections must not hold the shutdown up.
    server
        .exec("CREATE TABLE mysql.t_drop (id INT PRIMARY KEY) ENGINE=InnoDB")
        .await;
    let pool_conn = server.pool().get_conn().await.expect("conn");
    let base = server.base_dir().to_path_buf();
    let pid = server.pid();
    assert!(base.join("data").is_dir());
    assert!(!process_gone(pid));
    let began = Instant::now();
    drop(server);
    eprintln!("drop (SIGTERM + wait + rm) took {:?}", began.elapsed());
    drop(pool_conn);
    assert!(!base.exists(), "{} still exists", base.display());
    assert!(process_gone(pid), "pid {pid} still there");
}

#[test]
fn drop_while_panicking_saves_the_error_log() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime.block_on(TestServer::builder().name("panicking").start());
    let pid = server.pid();
    let base = server.base_dir().to_path_buf();
    let dest = test_logs_dir().join(format!("panicking-{pid}.err"));
    // Dropped by the unwinding of another thread, outside any runtime.
    let joined = std::thread::spawn(move || {
        let _server = server;
        panic!("deliberate failure to test the error-log copy");
    })
    .join();
    assert!(joined.is_err());
    let saved = std::fs::read_to_string(&dest).expect("saved error log");
    assert!(saved.contains("ready for connections"), "{saved}");
    assert!(!base.exists());
    assert!(process_gone(pid));
    let _ = std::fs::remove_file(&dest);
}

#[tokio::test]
async fn slow_shutdown_then_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let datadir = dir.path().join("data");
    let options = vec![("innodb_log_file_size".to_owned(), Some("8M".to_owned()))];
    let began = Instant::now();
    install_datadir(&datadir, &options).await.expect("install");
    eprintln!("install-db: {:?}", began.elapsed());

    let opts = SandboxOptions::new(&datadir, dir.path().join("run")).options(options.clone());
    let server = SandboxServer::start(opts.clone()).await.expect("start");
    eprintln!("sandbox start: {:?}", server.started_in());
    let pid = server.pid();
    {
        let mut conn = mysql_async::Conn::new(server.opts("root", ""))
            .await
            .expect("conn");
        conn.query_drop("CREATE DATABASE d")
            .await
            .expect("create db");
        conn.query_drop("CREATE TABLE d.t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
            .await
            .expect("create table");
        conn.query_drop("INSERT INTO d.t SELECT seq, 'x' FROM d.seq_1_to_1000")
            .await
            .expect("insert");
        conn.query_drop("DELETE FROM d.t WHERE id > 500")
            .await
            .expect("delete");
        conn.disconnect().await.expect("disconnect");
    }
    let error_log = server.error_log().to_path_buf();
    let began = Instant::now();
    let status = server
        .shutdown(ShutdownMode::Slow)
        .await
        .expect("slow shutdown");
    eprintln!("slow shutdown: {:?}", began.elapsed());
    assert!(status.success(), "{status}");
    assert!(process_gone(pid));
    let log = std::fs::read_to_string(&error_log).expect("error log");
    assert!(log.contains("Shutdown complete"), "{log}");

    // Restart on the same datadir, skipping grants this time (as prepare does).
    let server = SandboxServer::start(opts.skip_grant_tables(true))
        .await
        .expect("restart");
    eprintln!("sandbox restart: {:?}", server.started_in());
    let mut conn = mysql_async::Conn::new(server.opts("nobody", ""))
        .await
        .expect("conn");
    let count: Option<i64> = conn
        .query_first("SELECT COUNT(*) FROM d.t")
        .await
        .expect("count");
    assert_eq!(count, Some(500));
    conn.disconnect().await.expect("disconnect");
    let began = Instant::now();
    let status = server
        .shutdown(ShutdownMode::Fast)
        .await
        .expect("fast shutdown");
    eprintln!("fast shutdown: {:?}", began.elapsed());
    assert!(status.success());
}

#[tokio::test]
async fn failing_start_reports_the_error_log_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let datadir = dir.path().join("data");
    install_datadir(&datadir, &[]).await.expect("install");
    let opts = SandboxOptions::new(&datadir, dir.path().join("run"))
        .option("no-such-option", None)
        .start_timeout(Duration::from_secs(30));
    let began = Instant::now();
    let err = SandboxServer::start(opts).await.expect_err("must fail");
    eprintln!("failing start took {:?}", began.elapsed());
    assert!(matches!(err, SandboxError::StartExited { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("unknown option '--no-such-option'"), "{text}");
    assert!(
        err.log_tail().is_some_and(|t| t.contains("Aborting")),
        "{text}"
    );

    // Same through the harness.
    let err = TestServer::builder()
        .runtime_option("no-such-option", None)
        .try_start()
        .await
        .expect_err("must fail");
    assert!(
        err.to_string()
            .contains("unknown option '--no-such-option'"),
        "{err}"
    );

    // An option given with `option` also goes to mariadb-install-db, which
    // fails on it; the excerpt shows the bootstrap server's error.
    let err = TestServer::builder()
        .option("no-such-option", None)
        .try_start()
        .await
        .expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains("mariadb-install-db failed"), "{text}");
    assert!(text.contains("unknown option '--no-such-option'"), "{text}");
}

/// Parallel installs used to break each other when they shared /tmp as
/// tmpdir: each bootstrap server deletes `#sql*` files there on start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_installs_do_not_collide() {
    let dir = tempfile::tempdir().expect("tempdir");
    let began = Instant::now();
    let installs = (0..6).map(|i| {
        let datadir = dir.path().join(format!("data{i}"));
        async move { install_datadir(&datadir, &[]).await }
    });
    let results = futures_join_all(installs).await;
    eprintln!("6 parallel installs: {:?}", began.elapsed());
    for result in results {
        result.expect("install");
    }
}

async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn start_timeout_kills_the_server() {
    // A datadir already in use by a running server: InnoDB waits for the lock
    // and never answers within the timeout.
    let server = TestServer::builder().name("locked").start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let opts =
        SandboxOptions::new(server.datadir(), dir.path()).start_timeout(Duration::from_secs(2));
    let err = SandboxServer::start(opts).await.expect_err("must time out");
    assert!(matches!(err, SandboxError::StartTimeout { .. }), "{err:?}");
    // 10.11 trips on the Aria control file first ("Can't lock aria control file").
    assert!(err.to_string().contains("lock"), "{err}");
    // The first server is unharmed.
    let one: Option<i64> = server.query_first("SELECT 1").await;
    assert_eq!(one, Some(1));
}

#[tokio::test]
async fn long_run_dir_puts_the_socket_in_a_short_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let datadir = dir.path().join("data");
    install_datadir(&datadir, &[]).await.expect("install");
    let run_dir = dir.path().join("r".repeat(110));
    let server = SandboxServer::start(SandboxOptions::new(&datadir, &run_dir))
        .await
        .expect("start");
    let socket = server.socket().to_path_buf();
    assert!(socket.starts_with("/tmp"), "{}", socket.display());
    assert!(socket.as_os_str().len() <= 107);
    assert!(server.error_log().starts_with(&run_dir));
    let status = server.shutdown(ShutdownMode::Fast).await.expect("shutdown");
    assert!(status.success());
    assert!(!socket.parent().expect("parent").exists());
}

#[tokio::test]
async fn reserved_options_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = SandboxServer::start(
        SandboxOptions::new(dir.path(), dir.path()).option("socket", Some("/tmp/x.sock")),
    )
    .await
    .expect_err("must fail");
    assert!(matches!(err, SandboxError::InvalidOptions(_)), "{err:?}");
}

#[tokio::test]
async fn missing_binary_fails_loudly() {
    let err = TestServer::builder()
        .mariadbd("/nonexistent/mariadbd")
        .try_start()
        .await
        .expect_err("must fail");
    assert!(err.to_string().contains(MARIADB_NOT_FOUND), "{err}");
    let err = TestServer::builder()
        .install_db("/nonexistent/mariadb-install-db")
        .try_start()
        .await
        .expect_err("must fail");
    assert!(err.to_string().contains(MARIADB_NOT_FOUND), "{err}");
}

#[tokio::test]
#[should_panic(
    expected = "mariadbd not found: install MariaDB with 'apt-get install mariadb-server' (Debian 12 ships 10.11)"
)]
async fn missing_binary_panics_on_start() {
    TestServer::builder()
        .mariadbd("/nonexistent/mariadbd")
        .start()
        .await;
}

#[tokio::test]
async fn version_of_the_binary() {
    let binary = find_binary("mariadbd").unwrap_or_else(|| panic!("{MARIADB_NOT_FOUND}"));
    let version = server_version(&binary).await.expect("version");
    assert!(version.starts_with("10.11."), "{version}");
}
