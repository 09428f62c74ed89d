//! Benchmark helper (issue 14): how long a backup stalls DDL, MyISAM writes and InnoDB
//! commits. Four classes, each in its own task on its own connection so that one
//! stalled class never delays another; every `--interval-ms` (after the previous
//! statement returned) each runs:
//!
//! - `ddl`: `CREATE TABLE probe.ddl_<pid>_<n> (a INT) ENGINE=InnoDB` then `DROP TABLE`
//!   of it (one sample: both statements);
//! - `myisam`: a one-row `INSERT` into `probe.myisam` (ENGINE=MyISAM);
//! - `aria`: a one-row `INSERT` into `probe.aria` (ENGINE=Aria with the default table
//!   options: ROW_FORMAT=PAGE, TRANSACTIONAL=1, i.e. crash-safe);
//! - `innodb`: a one-row `INSERT` into `probe.innodb` and `COMMIT`.
//!
//! Once stopped (SIGTERM, SIGINT or `--stop-file` appearing) each task finishes the
//! statement it is in, and the probe prints one JSON object: per class the number of
//! samples, the worst and the p99/p50 latency in ms, when the worst one ended, and errors.
//!
//!   cargo run --release --example ddl_probe -- --socket /tmp/s.sock [--interval-ms 50] [--stop-file F]

use mysql_async::prelude::Queryable;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

#[derive(Clone, Copy)]
enum Class {
    Ddl,
    Myisam,
    Aria,
    Innodb,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Ddl => "ddl",
            Class::Myisam => "myisam",
            Class::Aria => "aria",
            Class::Innodb => "innodb",
        }
    }
}

#[derive(Default)]
struct Samples {
    ms: Vec<f64>,
    worst_at: String,
    errors: u64,
    first_error: Option<String>,
}

impl Samples {
    fn record(&mut self, ms: f64) {
        if self.ms.iter().all(|&m| ms > m) {
            self.worst_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        }
        self.ms.push(ms);
    }

    fn json(mut self, name: &str) -> serde_json::Value {
        self.ms.sort_by(f64::total_cmp);
        let pct = |p: f64| -> f64 {
            if self.ms.is_empty() {
                return 0.0;
            }
            let rank = ((p * self.ms.len() as f64).ceil() as usize).clamp(1, self.ms.len());
            self.ms[rank - 1]
        };
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        serde_json::json!({
            "class": name,
            "count": self.ms.len(),
            "worst_ms": round(self.ms.last().copied().unwrap_or(0.0)),
            "p99_ms": round(pct(0.99)),
            "p50_ms": round(pct(0.50)),
            "worst_at": self.worst_at,
            "errors": self.errors,
            "first_error": self.first_error,
        })
    }
}

async fn one(conn: &mut mysql_async::Conn, class: Class, n: u64) -> Result<(), mysql_async::Error> {
    match class {
        Class::Ddl => {
            let table = format!("probe.ddl_{}_{n}", std::process::id());
            conn.query_drop(format!("CREATE TABLE {table} (a INT) ENGINE=InnoDB"))
                .await?;
            conn.query_drop(format!("DROP TABLE {table}")).await
        }
        Class::Myisam => {
            conn.query_drop("INSERT INTO probe.myisam (at) VALUES (NOW(6))")
                .await
        }
        Class::Aria => {
            conn.query_drop("INSERT INTO probe.aria (at) VALUES (NOW(6))")
                .await
        }
        Class::Innodb => {
            conn.query_drop("BEGIN").await?;
            conn.query_drop("INSERT INTO probe.innodb (at) VALUES (NOW(6))")
                .await?;
            conn.query_drop("COMMIT").await
        }
    }
}

async fn run_class(
    opts: mysql_async::Opts,
    class: Class,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<Samples, mysql_async::Error> {
    let mut conn = mysql_async::Conn::new(opts).await?;
    conn.query_drop("SET SESSION lock_wait_timeout = 3600, innodb_lock_wait_timeout = 3600")
        .await?;
    let mut s = Samples::default();
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let t = Instant::now();
        match one(&mut conn, class, n).await {
            Ok(()) => s.record(t.elapsed().as_secs_f64() * 1000.0),
            Err(e) => {
                s.errors += 1;
                s.first_error.get_or_insert_with(|| e.to_string());
            }
        }
        // Stop first when both are ready: a sample after the stop is outside the window.
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    conn.disconnect().await?;
    Ok(s)
}

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
            .unwrap_or(50),
    );
    let stop_file = arg("--stop-file").map(std::path::PathBuf::from);
    let opts: mysql_async::Opts = mysql_async::OptsBuilder::default()
        .socket(Some(socket))
        .user(Some("root"))
        .into();

    let mut setup = mysql_async::Conn::new(opts.clone()).await?;
    setup
        .query_drop("CREATE DATABASE IF NOT EXISTS probe")
        .await?;
    setup.query_drop("CREATE TABLE IF NOT EXISTS probe.myisam (id BIGINT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP(6)) ENGINE=MyISAM").await?;
    setup.query_drop("CREATE TABLE IF NOT EXISTS probe.aria (id BIGINT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP(6)) ENGINE=Aria").await?;
    setup.query_drop("CREATE TABLE IF NOT EXISTS probe.innodb (id BIGINT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP(6)) ENGINE=InnoDB").await?;
    setup.disconnect().await?;

    let (tx, rx) = watch::channel(false);
    let tasks: Vec<_> = [Class::Ddl, Class::Myisam, Class::Aria, Class::Innodb]
        .into_iter()
        .map(|c| {
            (
                c,
                tokio::spawn(run_class(opts.clone(), c, interval, rx.clone())),
            )
        })
        .collect();

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        if stop_file.as_ref().is_some_and(|f| f.exists()) {
            break;
        }
        tokio::select! {
            biased;
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    let stopped_at = Instant::now();
    tx.send(true)?;

    let mut out = serde_json::Map::new();
    out.insert("interval_ms".into(), (interval.as_millis() as u64).into());
    for (class, task) in tasks {
        let v = match task.await {
            Ok(Ok(s)) => s.json(class.name()),
            Ok(Err(e)) => serde_json::json!({"class": class.name(), "failed": e.to_string()}),
            Err(e) => serde_json::json!({"class": class.name(), "failed": e.to_string()}),
        };
        out.insert(class.name().into(), v);
    }
    // A statement still waiting when the probe was stopped is counted once it returns;
    // how long the probe waited for that is here.
    out.insert(
        "drain_ms".into(),
        ((stopped_at.elapsed().as_secs_f64() * 1000.0).round() as u64).into(),
    );
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
