//! Benchmark helper: commits a one-row InnoDB transaction every `--interval-ms` and
//! prints, once stopped (stdin closed or SIGTERM), the longest commit and the time spent
//! in commits slower than 5 ms — how long a backup really blocked writers, measured the
//! same way for every tool.
//!
//!   cargo run --release --example commit_probe -- --socket /tmp/s.sock [--interval-ms 2]

use mysql_async::prelude::Queryable;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let socket = arg("--socket").unwrap_or_else(|| "/run/mysqld/mysqld.sock".into());
    let interval = Duration::from_millis(
        arg("--interval-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(2),
    );
    let opts = mysql_async::OptsBuilder::default()
        .socket(Some(socket))
        .user(Some("root"));
    let mut conn = mysql_async::Conn::new(opts).await?;
    conn.query_drop("CREATE DATABASE IF NOT EXISTS probe")
        .await?;
    conn.query_drop("CREATE TABLE IF NOT EXISTS probe.t (id BIGINT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP(6)) ENGINE=InnoDB").await?;
    conn.query_drop("SET SESSION lock_wait_timeout = 600, innodb_lock_wait_timeout = 600")
        .await?;
    let mut stop = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (mut max_ms, mut slow_ms, mut commits) = (0f64, 0f64, 0u64);
    let mut max_at = String::new();
    loop {
        let t = Instant::now();
        conn.query_drop("INSERT INTO probe.t (at) VALUES (NOW(6))")
            .await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        commits += 1;
        if ms > max_ms {
            max_ms = ms;
            max_at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        }
        if ms > 5.0 {
            slow_ms += ms;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.recv() => break,
        }
    }
    println!("{{\"commits\": {commits}, \"max_commit_ms\": {max_ms:.3}, \"max_at\": \"{max_at}\", \"ms_in_slow_commits\": {slow_ms:.3}}}");
    Ok(())
}
