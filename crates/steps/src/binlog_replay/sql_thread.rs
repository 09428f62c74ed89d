//! Replay through the server's own replication SQL thread: the segments become relay
//! logs beside the server's (holding exactly the transactions after `from` up to `to`,
//! `stagehand_mariadb::binlog::relay`), and the thread applies them with `workers`
//! parallel workers; no primary is ever contacted (only the SQL thread runs). Done when
//! `gtid_slave_pos` reaches the expected position; a stopped thread is an error with
//! its own message. Afterwards the replica configuration and the relay logs are
//! removed.

use stagehand_engine::StepError;
use stagehand_mariadb::binlog::relay::relay_file;
use stagehand_mariadb::gtid::GtidPos;
use stagehand_mariadb::session::{classify, query_rows, Session};
use stagehand_repo::binlogs::{BinlogArchive, SegmentMeta};
use stagehand_repo::crypt::Key;
use stagehand_repo::StoreError;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the thread's progress is read.
const POLL: Duration = Duration::from_millis(100);

/// What the replay needs to know.
pub struct Replay<'a> {
    pub archive: &'a BinlogArchive,
    pub segments: &'a [SegmentMeta],
    pub key: Option<&'a Key>,
    pub from: &'a GtidPos,
    pub to: &'a GtidPos,
    pub expected: &'a GtidPos,
    pub workers: u32,
}

/// Applies the transactions; returns how many there were and how long the thread took.
pub async fn replay(
    session: &Session,
    r: &Replay<'_>,
    cancel: &CancellationToken,
) -> Result<(u64, Duration), StepError> {
    let (names, server_id) = relay_settings(session).await?;
    refuse_same_server_id(r.segments, server_id)?;
    exec(session, &["STOP SLAVE", "RESET SLAVE ALL"]).await?;
    let (first, transactions) = install_relay_logs(r, &names).await?;
    if transactions == 0 {
        return Ok((0, Duration::ZERO));
    }
    let t0 = std::time::Instant::now();
    exec(
        session,
        &[
            &format!("SET GLOBAL gtid_slave_pos = '{}'", r.from),
            &format!("SET GLOBAL slave_parallel_threads = {}", r.workers),
            "SET GLOBAL slave_parallel_mode = 'optimistic'",
            // Only the SQL thread runs: the primary named here is never contacted.
            &format!(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=1, MASTER_USE_GTID=no, RELAY_LOG_FILE='{first}', RELAY_LOG_POS=4"
            ),
            "START SLAVE SQL_THREAD",
        ],
    )
    .await?;
    let waited = wait_until(session, r.expected, cancel).await;
    // The replica set-up is ours: removed whatever happened (RESET SLAVE ALL deletes
    // the relay logs too).
    let cleaned = exec(session, &["STOP SLAVE", "RESET SLAVE ALL"]).await;
    waited?;
    cleaned?;
    Ok((transactions, t0.elapsed()))
}

/// Where the relay logs go: their path without the number, and how the server names
/// them in its index (`./name` for relay logs in the datadir, as the server itself
/// writes them; else the full path).
struct RelayNames {
    basename: PathBuf,
    in_datadir: bool,
}

impl RelayNames {
    fn indexed(&self, file: &str) -> String {
        match (self.in_datadir, self.basename.parent()) {
            (false, Some(dir)) => dir.join(file).display().to_string(),
            _ => format!("./{file}"),
        }
    }
}

/// The relay logs' names, and the server's id.
async fn relay_settings(session: &Session) -> Result<(RelayNames, u32), StepError> {
    let rows = rows(
        session,
        "SELECT @@relay_log_basename, @@server_id, @@datadir",
    )
    .await?;
    let row = rows
        .first()
        .ok_or_else(|| StepError::fatal("no answer for @@relay_log_basename"))?;
    let text = |i: usize| {
        row.get::<Option<String>, _>(i)
            .flatten()
            .unwrap_or_default()
    };
    let server_id = text(1)
        .parse()
        .map_err(|_| StepError::fatal(format!("@@server_id `{}` is not a number", text(1))))?;
    if text(0).is_empty() {
        return Err(StepError::fatal(
            "the restored server has no relay log name (@@relay_log_basename is empty)",
        )
        .with_hint("start it with `relay-log: NAME` among the server step's options, as plans/restore-pitr.yaml does, or use `method: pipe`"));
    }
    let basename = PathBuf::from(text(0));
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let in_datadir = basename
        .parent()
        .is_some_and(|dir| same(dir, Path::new(&text(2))));
    Ok((
        RelayNames {
            basename,
            in_datadir,
        },
        server_id,
    ))
}

/// The SQL thread skips events of its own server id: the restored server must not
/// have one the archive's transactions carry.
fn refuse_same_server_id(segments: &[SegmentMeta], server_id: u32) -> Result<(), StepError> {
    let clash = segments.iter().any(|s| {
        s.source.server_id == server_id
            || [&s.first_gtid, &s.last_gtid]
                .iter()
                .any(|g| g.split('-').nth(1) == Some(server_id.to_string().as_str()))
    });
    if clash {
        return Err(StepError::fatal(format!(
            "the restored server has server_id {server_id}, the id of the archive's source: its SQL thread would skip those transactions"
        ))
        .with_hint("start it with another server-id (plans/restore-pitr.yaml uses 4000000099), or use `method: pipe`"));
    }
    Ok(())
}

/// Writes one relay file per segment that holds wanted transactions, and the index;
/// returns the first file's name (as CHANGE MASTER takes it) and the transactions.
async fn install_relay_logs(
    r: &Replay<'_>,
    relay: &RelayNames,
) -> Result<(String, u64), StepError> {
    let basename = &relay.basename;
    let dir = basename.parent().ok_or_else(|| {
        StepError::fatal(format!("relay log {} has no directory", basename.display()))
    })?;
    let stem = basename
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let owner = std::fs::metadata(dir).map_err(|e| io_error(dir, e))?;
    let mut names = Vec::new();
    let mut transactions = 0;
    for s in r.segments {
        let bytes = r
            .archive
            .read(s, r.key)
            .await
            .map_err(StoreError::into_step_error)?;
        let relay = relay_file(&bytes, &s.source.binlog_file, r.from, r.to)
            .map_err(|e| StepError::fatal(format!("segment {}: {e}", s.seq)))?;
        if relay.transactions == 0 {
            continue;
        }
        transactions += relay.transactions;
        let name = format!("{stem}.{:06}", names.len() + 1);
        write_owned(&dir.join(&name), &relay.bytes, &owner)?;
        names.push(name);
    }
    let index: String = names
        .iter()
        .map(|n| format!("{}\n", relay.indexed(n)))
        .collect();
    let index_path = dir.join(format!("{stem}.index"));
    write_owned(&index_path, index.as_bytes(), &owner)?;
    Ok((names.first().cloned().unwrap_or_default(), transactions))
}

/// Writes a file the server (the datadir's owner) can read, and no one else.
fn write_owned(path: &Path, bytes: &[u8], owner: &std::fs::Metadata) -> Result<(), StepError> {
    stagehand_host::private_fs::write_private(path, bytes).map_err(|e| io_error(path, e))?;
    std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
        .map_err(|e| io_error(path, e))
}

/// Polls until `gtid_slave_pos` is `expected`; the thread stopping first is an error.
async fn wait_until(
    session: &Session,
    expected: &GtidPos,
    cancel: &CancellationToken,
) -> Result<(), StepError> {
    loop {
        let reached: GtidPos = rows(session, "SELECT @@gtid_slave_pos")
            .await?
            .first()
            .and_then(|r| r.get::<Option<String>, _>(0).flatten())
            .unwrap_or_default()
            .parse()
            .map_err(|e: stagehand_mariadb::gtid::GtidParseError| {
                StepError::fatal(e.to_string())
            })?;
        if &reached == expected {
            return Ok(());
        }
        if let Some(stopped) = stopped_because(session).await? {
            return Err(StepError::fatal(format!(
                "the replication SQL thread stopped at {reached} (target {expected}): {stopped}"
            ))
            .with_hint(
                "the restored server is part-way to the target: restore it again before using it",
            ));
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(StepError::fatal("cancelled during the replay: the restored server is part-way; restore it again")),
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Why the SQL thread is not running, if it is not.
async fn stopped_because(session: &Session) -> Result<Option<String>, StepError> {
    let status = rows(session, "SHOW SLAVE STATUS").await?;
    let Some(row) = status.first() else {
        return Ok(Some("the replica configuration is gone".into()));
    };
    let text = |column: &str| {
        row.get::<Option<String>, _>(column)
            .flatten()
            .unwrap_or_default()
    };
    if text("Slave_SQL_Running") == "Yes" {
        return Ok(None);
    }
    Ok(Some(format!(
        "error {}: {}",
        text("Last_SQL_Errno"),
        text("Last_SQL_Error")
    )))
}

async fn rows(session: &Session, sql: &str) -> Result<Vec<mysql_async::Row>, StepError> {
    let mut guard = session.conn.lock().await;
    let conn = guard
        .as_mut()
        .ok_or_else(|| StepError::fatal("the session is closed"))?;
    query_rows(conn, sql).await
}

async fn exec(session: &Session, statements: &[&str]) -> Result<(), StepError> {
    use mysql_async::prelude::Queryable;
    let mut guard = session.conn.lock().await;
    let conn = guard
        .as_mut()
        .ok_or_else(|| StepError::fatal("the session is closed"))?;
    for sql in statements {
        conn.query_drop(*sql).await.map_err(|e| classify(&e))?;
    }
    Ok(())
}

fn io_error(path: &Path, e: std::io::Error) -> StepError {
    StepError::fatal(format!("{}: {e}", path.display()))
}
