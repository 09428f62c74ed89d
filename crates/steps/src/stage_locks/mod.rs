//! `stage_locks`: BACKUP STAGE START | FLUSH | BLOCK_DDL | BLOCK_COMMIT | END on one held
//! server session, with the hold time of each stage measured, a per-stage time budget
//! (`max_hold`), a check for long-running blockers, and FLUSH TABLES WITH READ LOCK as
//! the fallback where BACKUP STAGE is missing (before 10.4) or not permitted.

use crate::outputs::StageLocksOutput;
use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stagehand_engine::step::Finding;
use stagehand_engine::{ConfigError, StepContext, StepError, TypedStep};
use stagehand_mariadb::locks::{LockMethod, LockState, Stage};
use stagehand_mariadb::session::{classify, query_rows, Session};
use stagehand_mariadb::version::ServerVersion;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnBlocker {
    /// Wait for long-running statements (up to `lock_wait_timeout`).
    #[default]
    Wait,
    /// Fail before locking when a statement has run longer than `blocker_threshold`.
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// FLUSH TABLES WITH READ LOCK when BACKUP STAGE is missing or not permitted.
    #[default]
    Ftwrl,
    /// Fail instead.
    None,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageLocksConfig {
    /// The plan connection whose session holds the locks (all stages must use the same).
    pub connection: String,
    /// The stage to reach; earlier stages not yet taken are taken on the way.
    pub stage: Stage,
    /// Session `lock_wait_timeout` while taking the stage.
    #[serde(default, with = "stagehand_engine::model::opt_duration_text")]
    #[schemars(with = "Option<String>")]
    pub lock_wait_timeout: Option<Duration>,
    #[serde(default)]
    pub on_blocker: OnBlocker,
    /// With `on_blocker: fail`: how long a running statement may have run.
    #[serde(
        default = "default_blocker_threshold",
        with = "stagehand_engine::model::duration_text"
    )]
    #[schemars(with = "String")]
    pub blocker_threshold: Duration,
    /// Time budget of the stage this step reaches, e.g. `{block_commit: 2s}` or
    /// `{block_ddl: 30m}` (from its grant to the next stage): a stage held longer is
    /// released (BACKUP STAGE END) and the backup fails instead of stalling production.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub max_hold: BTreeMap<Stage, String>,
    #[serde(default)]
    pub fallback: Fallback,
}

fn default_blocker_threshold() -> Duration {
    Duration::from_secs(10)
}

impl StageLocksConfig {
    fn budget(&self, stage: Stage) -> Result<Option<Duration>, ConfigError> {
        self.max_hold
            .get(&stage)
            .map(|t| {
                humantime::parse_duration(t).map_err(|e| ConfigError {
                    path: format!("max_hold.{}", stage.name()),
                    message: format!("`{t}` is not a duration: {e}"),
                    hint: Some("write e.g. 500ms, 2s".into()),
                })
            })
            .transpose()
    }
}

pub struct StageLocks;

#[async_trait]
impl TypedStep for StageLocks {
    type Config = StageLocksConfig;
    const NAME: &'static str = "stage_locks";
    type Output = StageLocksOutput;
    const SUMMARY: &'static str =
        "Takes or releases MariaDB BACKUP STAGE locks on a held session, measuring each hold";

    fn check(cfg: &StageLocksConfig) -> Result<(), ConfigError> {
        for stage in cfg.max_hold.keys() {
            if *stage == Stage::End {
                return Err(ConfigError { path: "max_hold.end".into(), message: "END holds nothing; give budgets for start, flush, block_ddl or block_commit".into(), hint: None });
            }
            if cfg.budget(*stage)?.is_some_and(|b| b.is_zero()) {
                return Err(ConfigError {
                    path: format!("max_hold.{}", stage.name()),
                    message: "a budget of 0s would release the locks at once and fail every backup"
                        .into(),
                    hint: Some("give the longest time the stage may be held, e.g. 5s".into()),
                });
            }
        }
        if cfg.lock_wait_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError {
                path: "lock_wait_timeout".into(),
                message: "`lock_wait_timeout` must be at least 1s".into(),
                hint: Some("omit it to keep the server's setting, or write e.g. 60s".into()),
            });
        }
        if cfg.on_blocker == OnBlocker::Fail && cfg.blocker_threshold.is_zero() {
            return Err(ConfigError {
                path: "blocker_threshold".into(),
                message: "a `blocker_threshold` of 0s counts every running statement as a blocker"
                    .into(),
                hint: Some("write e.g. 10s".into()),
            });
        }
        Ok(())
    }

    fn describe(cfg: &StageLocksConfig) -> String {
        let budget = cfg
            .max_hold
            .get(&cfg.stage)
            .map(|b| {
                format!(
                    "; if {} is held longer than {b}, the locks are released and the backup fails",
                    cfg.stage.name().to_uppercase()
                )
            })
            .unwrap_or_default();
        match cfg.stage {
            Stage::End => format!("releases the backup locks of connection `{}` (BACKUP STAGE END) and reports how long each stage was held, and how long commits and DDL were blocked", cfg.connection),
            Stage::BlockDdl => format!(
                "takes BACKUP STAGE BLOCK_DDL on connection `{}` (blocks {} until END), then records the InnoDB LSN at which DDL stopped{budget}",
                cfg.connection,
                Stage::BlockDdl.blocks()
            ),
            Stage::BlockCommit => format!(
                "takes BACKUP STAGE BLOCK_COMMIT on connection `{}` (blocks {} until END), then records the InnoDB LSN, binlog position and GTID of the backup{budget}",
                cfg.connection,
                Stage::BlockCommit.blocks()
            ),
            s => format!("takes BACKUP STAGE {} on connection `{}` (blocks {}){budget}", s.name().to_uppercase(), cfg.connection, s.blocks()),
        }
    }

    fn connections(cfg: &StageLocksConfig) -> Vec<String> {
        vec![cfg.connection.clone()]
    }

    async fn preflight(cfg: &StageLocksConfig, ctx: &StepContext) -> Vec<Finding> {
        if cfg.stage == Stage::End {
            return Vec::new();
        }
        let session =
            match stagehand_mariadb::session::preflight_session(ctx, &cfg.connection).await {
                Ok(s) => s,
                Err(f) => return vec![f],
            };
        let mut out = Vec::new();
        match session.version() {
            Some(v) if v.mariadb && v.at_least(10, 4, 1) => out.push(Finding::ok(format!("MariaDB {v}: BACKUP STAGE available"))),
            Some(v) if v.mariadb => out.push(Finding::warn(format!("MariaDB {v} has no BACKUP STAGE: FLUSH TABLES WITH READ LOCK will block all writes during the copy"))),
            Some(v) => out.push(Finding::error(format!("server {v} is not MariaDB"))),
            None => out.push(Finding::error("cannot read the server version")),
        }
        if cfg.stage == Stage::Start {
            out.push(
                stagehand_mariadb::backup_server::can_prepare_here(&session.server_version).await,
            );
        }
        out.push(privileges_finding(cfg, &session).await);
        out
    }

    async fn run(cfg: &StageLocksConfig, ctx: &StepContext) -> Result<StageLocksOutput, StepError> {
        let session = ctx.connections.get_as::<Session>(&cfg.connection).await?;
        let work = async {
            if cfg.stage == Stage::End {
                release(&session).await
            } else {
                take(cfg, &session).await
            }
        };
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => {
                // Dropping the session is what releases its locks for sure.
                ctx.connections.discard(&cfg.connection).await;
                Err(StepError::cancelled().with_hint("the session was closed, which released its backup locks"))
            }
            r = work => r,
        }
    }
}

/// Whether the backup user holds what this stage needs: RELOAD for the locks, PROCESS
/// for `on_blocker: fail` (tried, not read: without it the blocker check sees nothing),
/// BINLOG MONITOR (or SUPER) for the binlog position when the binary log is on.
async fn privileges_finding(cfg: &StageLocksConfig, session: &Session) -> Finding {
    let privileges = match stagehand_mariadb::session::session_privileges(session).await {
        Ok(p) => p,
        Err(e) => {
            return Finding::error(format!(
                "cannot read the backup user's grants (SHOW GRANTS): {}",
                e.message
            ))
        }
    };
    let log_bin = stagehand_mariadb::session::session_column(session, "SELECT @@log_bin")
        .await
        .unwrap_or_default()
        .first()
        .is_some_and(|v| v == "1");
    let mut needed = vec![("RELOAD", privileges.has("RELOAD"))];
    if cfg.on_blocker == OnBlocker::Fail {
        let process = match session.conn.lock().await.as_mut() {
            Some(conn) => stagehand_mariadb::session::can_see_other_sessions(conn).await,
            None => Ok(false),
        };
        match process {
            Ok(has) => needed.push(("PROCESS", has)),
            Err(e) => {
                return Finding::error(format!(
                "cannot tell whether the backup user has PROCESS (on_blocker: fail needs it): {}",
                e.message
            ))
            }
        }
    }
    if log_bin {
        let monitor = privileges.has("BINLOG MONITOR") || privileges.has("SUPER");
        needed.push(("BINLOG MONITOR", monitor));
    }
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(_, has)| !has)
        .map(|(p, _)| *p)
        .collect();
    let all: Vec<&str> = needed.iter().map(|(p, _)| *p).collect();
    if missing.is_empty() {
        Finding::ok(format!(
            "the backup user has the privileges this step needs ({})",
            all.join(", ")
        ))
    } else {
        Finding::error(format!(
            "the backup user lacks {}: GRANT {} ON *.* TO <backup user>",
            missing.join(", "),
            missing.join(", ")
        ))
    }
}

/// `on_blocker: fail` without PROCESS would see only its own session in PROCESSLIST and
/// let every blocker through: refuse instead.
async fn require_process(conn: &mut mysql_async::Conn) -> Result<(), StepError> {
    if stagehand_mariadb::session::can_see_other_sessions(conn).await? {
        return Ok(());
    }
    Err(StepError::fatal(
        "on_blocker: fail needs the PROCESS privilege: without it the backup user sees only its own statements, so no blocker would ever be found",
    )
    .with_hint("GRANT PROCESS ON *.* TO <backup user>, or use on_blocker: wait"))
}

fn lock_state(session: &Session) -> std::sync::MutexGuard<'_, LockState> {
    // A panic while holding this lock cannot leave it inconsistent in a way that matters
    // more than reporting: take the data either way.
    session.locks.lock().unwrap_or_else(|p| p.into_inner())
}

async fn take(
    cfg: &StageLocksConfig,
    session: &Arc<Session>,
) -> Result<StageLocksOutput, StepError> {
    if let Some(lost) = lock_state(session).lost.clone() {
        return Err(StepError::fatal(lost));
    }
    let version = session.version();
    let method = choose_method(cfg, version, lock_state(session).method)?;
    let current = lock_state(session).current.map(|(s, _)| s);
    let todo: Vec<Stage> = Stage::ORDER
        .iter()
        .copied()
        .filter(|s| Some(*s) > current && *s <= cfg.stage)
        .collect();
    if todo.is_empty() {
        return Err(StepError::fatal(format!(
            "the session already holds stage {}; stages only move forward",
            current.map(Stage::name).unwrap_or("none")
        ))
        .with_hint("each stage_locks step must name a later stage than the one before it"));
    }
    let mut guard = session.conn.lock().await;
    let conn = guard
        .as_mut()
        .ok_or_else(|| StepError::fatal(format!("connection `{}` is closed", session.name)))?;
    if let Some(t) = cfg.lock_wait_timeout {
        let secs = t.as_secs().max(1);
        conn.query_drop(format!("SET SESSION lock_wait_timeout = {secs}"))
            .await
            .map_err(|e| session_error(&e, "setting lock_wait_timeout"))?;
    }
    if cfg.on_blocker == OnBlocker::Fail && todo.iter().any(|s| *s != Stage::Start) {
        require_process(conn).await?;
    }
    if todo.contains(&Stage::Start) {
        // Before any lock and any copy: a backup that cannot record its binlog
        // position would be found out only under BLOCK_COMMIT.
        binlog_position(conn).await?;
    }
    let t0 = Instant::now();
    // Time spent recording LSNs between stages is not time spent waiting for a lock.
    let mut recording = Duration::ZERO;
    let mut ddl_lsn = 0;
    for stage in &todo {
        if cfg.on_blocker == OnBlocker::Fail && *stage != Stage::Start {
            check_blockers(conn, *stage, cfg.blocker_threshold).await?;
        }
        take_one(conn, *stage, method).await?;
        {
            let mut st = lock_state(session);
            st.method = Some(method);
            let now = Instant::now();
            st.close_current(now);
            st.current = Some((*stage, now));
            st.generation += 1;
        }
        if *stage == Stage::BlockDdl {
            // No DDL can run from here: the LSN where the file operations stop.
            let t = Instant::now();
            ddl_lsn = durable_lsn(conn).await?;
            recording += t.elapsed();
        }
    }
    let acquire_ms = t0.elapsed().saturating_sub(recording).as_secs_f64() * 1000.0;
    let watch = !std::mem::replace(&mut lock_state(session).watched, true);
    if watch {
        spawn_liveness_watch(session.clone());
    }
    let mut out = base_outputs(session, cfg.stage, method, acquire_ms);
    out.ddl_lsn = ddl_lsn;
    if cfg.stage == Stage::BlockCommit {
        commit_point(conn, &mut out).await?;
    }
    drop(guard);
    if let Some(budget) = cfg
        .budget(cfg.stage)
        .map_err(|e| StepError::fatal(e.message))?
    {
        spawn_budget_watchdog(session.clone(), cfg.stage, budget, method);
    }
    tracing::info!(stage = cfg.stage.name(), acquire_ms, "backup lock taken");
    Ok(out)
}

fn choose_method(
    cfg: &StageLocksConfig,
    version: Option<ServerVersion>,
    current: Option<LockMethod>,
) -> Result<LockMethod, StepError> {
    if let Some(m) = current {
        return Ok(m);
    }
    let v = version.ok_or_else(|| StepError::fatal("cannot read the server version"))?;
    if !v.mariadb {
        return Err(StepError::fatal(format!(
            "server {v} is not MariaDB; stagehand backs up MariaDB servers only"
        )));
    }
    // BACKUP STAGE exists from MariaDB 10.4.1 on.
    if v.at_least(10, 4, 1) {
        return Ok(LockMethod::BackupStage);
    }
    match cfg.fallback {
        Fallback::Ftwrl => {
            tracing::warn!(version = %v, "BACKUP STAGE needs MariaDB 10.4.1 or later: falling back to FLUSH TABLES WITH READ LOCK");
            Ok(LockMethod::Ftwrl)
        }
        Fallback::None => Err(StepError::fatal(format!(
            "MariaDB {v} has no BACKUP STAGE (10.4.1 and later) and `fallback: none` forbids FTWRL"
        ))),
    }
}

/// Takes one stage. With FTWRL, BLOCK_DDL takes the global read lock (the whole copy is
/// A statement on the locking session failed: if the connection itself is gone, say
/// so plainly — the server released the session's locks with it.
fn session_error(e: &mysql_async::Error, doing: &str) -> StepError {
    match e {
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => StepError::fatal(format!(
            "the server closed the backup session while {doing} (stopped, restarted or killed?): its backup locks are gone and this backup is abandoned"
        ))
        .with_hint("check the server's error log, then run the backup again"),
        _ => {
            let err = classify(e);
            StepError { message: format!("{doing} failed: {}", err.message), ..err }
        }
    }
}

/// then write-blocked: the report says so) and the other stages are no-ops.
async fn take_one(
    conn: &mut mysql_async::Conn,
    stage: Stage,
    method: LockMethod,
) -> Result<(), StepError> {
    let sql = match (method, stage) {
        (LockMethod::BackupStage, s) => s.sql(),
        (LockMethod::Ftwrl, Stage::BlockDdl) => "FLUSH NO_WRITE_TO_BINLOG TABLES WITH READ LOCK",
        (LockMethod::Ftwrl, _) => return Ok(()),
    };
    conn.query_drop(sql).await.map_err(|e| {
        if matches!(e, mysql_async::Error::Io(_) | mysql_async::Error::Driver(_)) {
            return session_error(&e, &format!("taking {sql}"));
        }
        let err = classify(&e);
        let hint = match &e {
            mysql_async::Error::Server(s) if s.code == 1205 => "another session holds a conflicting lock (a long query or DDL); raise lock_wait_timeout, or use on_blocker: fail to find out sooner",
            mysql_async::Error::Server(s) if s.code == 1227 => "the backup user needs the RELOAD privilege (see the README)",
            _ => "check the server's error log",
        };
        StepError { message: format!("{sql} failed: {}", err.message), ..err }.with_hint(hint)
    })
}

async fn check_blockers(
    conn: &mut mysql_async::Conn,
    stage: Stage,
    threshold: Duration,
) -> Result<(), StepError> {
    let sql = format!(
        "SELECT ID, USER, TIME, COMMAND, LEFT(COALESCE(INFO, ''), 120) FROM information_schema.PROCESSLIST \
         WHERE ID <> CONNECTION_ID() AND COMMAND NOT IN ('Sleep', 'Daemon', 'Binlog Dump', 'Slave_IO', 'Slave_SQL', 'Slave_worker') \
         AND TIME >= {} ORDER BY TIME DESC LIMIT 5",
        threshold.as_secs()
    );
    let rows = query_rows(conn, &sql).await?;
    if rows.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = rows
        .iter()
        .map(|r| {
            let id: u64 = r.get(0).unwrap_or(0);
            let time: u64 = r.get(2).unwrap_or(0);
            let info: String = r.get(4).unwrap_or_default();
            format!("id {id} running {time}s: {info}")
        })
        .collect();
    Err(StepError::fatal(format!(
        "{} statement(s) running longer than {}s would block BACKUP STAGE {}: {}",
        rows.len(),
        threshold.as_secs(),
        stage.name().to_uppercase(),
        list.join("; ")
    ))
    .with_hint(
        "wait for them to finish, or set on_blocker: wait to let the lock queue behind them",
    ))
}

fn base_outputs(
    session: &Session,
    stage: Stage,
    method: LockMethod,
    acquire_ms: f64,
) -> StageLocksOutput {
    let st = lock_state(session);
    let mut holds: BTreeMap<&str, f64> = st.holds.clone();
    if let Some((s, since)) = st.current {
        *holds.entry(s.name()).or_insert(0.0) += since.elapsed().as_secs_f64() * 1000.0;
    }
    StageLocksOutput {
        stage: stage.name().into(),
        method: method.name().into(),
        server_version: session.server_version.clone(),
        acquire_ms: round3(acquire_ms),
        holds_ms: holds
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(round3(v))))
            .collect(),
        ..StageLocksOutput::default()
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The server's current InnoDB LSN, made durable: neither BLOCK_DDL nor BLOCK_COMMIT
/// flushes the redo log, so `FLUSH ENGINE LOGS` writes everything up to it to the file,
/// where the redo copy can read it.
async fn durable_lsn(conn: &mut mysql_async::Conn) -> Result<u64, StepError> {
    let lsn = stagehand_mariadb::session::innodb_lsn(conn).await?;
    conn.query_drop("FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS")
        .await
        .map_err(|e| session_error(&e, "FLUSH ENGINE LOGS"))?;
    Ok(lsn)
}

/// Under BLOCK_COMMIT: the LSN the redo copy must reach, made durable, and the binlog
/// and GTID positions the backup corresponds to.
async fn commit_point(
    conn: &mut mysql_async::Conn,
    out: &mut StageLocksOutput,
) -> Result<(), StepError> {
    out.lsn = durable_lsn(conn).await?;
    if let Some((file, pos)) = binlog_position(conn).await? {
        out.binlog_file = file;
        out.binlog_pos = pos;
    }
    let gtid: Option<(Option<String>, Option<String>, Option<String>)> = conn
        .query_first("SELECT @@gtid_binlog_pos, @@gtid_current_pos, @@gtid_slave_pos")
        .await
        .map_err(|e| classify(&e))?;
    if let Some((b, c, s)) = gtid {
        out.gtid_binlog_pos = b.unwrap_or_default();
        out.gtid_current_pos = c.unwrap_or_default();
        out.gtid_slave_pos = s.unwrap_or_default();
    }
    out.replica = replica_positions(conn).await;
    Ok(())
}

/// The binary log's current file and position; `None` when the binary log is off. An
/// error when it is on but cannot be read (the user lacks BINLOG MONITOR): a backup
/// without its binlog position cannot seed a replica nor start a point-in-time
/// recovery, so it must not look complete.
async fn binlog_position(conn: &mut mysql_async::Conn) -> Result<Option<(String, u64)>, StepError> {
    let log_bin: Option<i64> = conn
        .query_first("SELECT @@log_bin")
        .await
        .map_err(|e| classify(&e))?;
    if log_bin != Some(1) {
        return Ok(None);
    }
    let unreadable = |why: String| {
        StepError::fatal(format!(
            "the binary log is on but its position cannot be read: {why}"
        ))
        .with_hint("GRANT BINLOG MONITOR ON *.* TO <backup user>: the backup records the binlog position it is consistent with (to seed a replica or start a point-in-time recovery)")
    };
    let rows = query_rows(conn, "SHOW MASTER STATUS")
        .await
        .map_err(|e| unreadable(e.message))?;
    let row = rows
        .first()
        .ok_or_else(|| unreadable("SHOW MASTER STATUS returned no row".into()))?;
    let file: Option<String> = row.get(0);
    let pos: Option<u64> = row.get(1);
    Ok(Some((file.unwrap_or_default(), pos.unwrap_or(0))))
}

/// Each replication source's position, when this server is a replica (empty otherwise,
/// or when the user may not see it: then said in the log, since the manifest will have
/// no replica positions).
async fn replica_positions(conn: &mut mysql_async::Conn) -> Vec<Value> {
    let rows = match query_rows(conn, "SHOW ALL SLAVES STATUS").await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e.message, "cannot read the replication positions (SLAVE MONITOR missing?): the backup records none");
            return Vec::new();
        }
    };
    rows.iter()
        .map(|r| {
            let col = |name: &str| -> Value {
                r.columns_ref()
                    .iter()
                    .position(|c| c.name_str() == name)
                    .and_then(|i| r.as_ref(i))
                    .map(stagehand_mariadb::session::value_to_json)
                    .unwrap_or(Value::Null)
            };
            json!({
                "connection_name": col("Connection_name"),
                "master_host": col("Master_Host"),
                "relay_master_log_file": col("Relay_Master_Log_File"),
                "exec_master_log_pos": col("Exec_Master_Log_Pos"),
                "gtid_io_pos": col("Gtid_IO_Pos"),
            })
        })
        .collect()
}

async fn release(session: &Arc<Session>) -> Result<StageLocksOutput, StepError> {
    let (method, lost, held) = {
        let st = lock_state(session);
        (st.method, st.lost.clone(), st.current.is_some())
    };
    if held {
        let mut guard = session.conn.lock().await;
        let conn = guard
            .as_mut()
            .ok_or_else(|| StepError::fatal(format!("connection `{}` is closed", session.name)))?;
        let sql = match method {
            Some(LockMethod::Ftwrl) => "UNLOCK TABLES",
            _ => Stage::End.sql(),
        };
        match conn.query_drop(sql).await {
            Ok(()) => {}
            // The session died (server stopped?): its locks died with it.
            Err(mysql_async::Error::Io(_) | mysql_async::Error::Driver(_)) => {
                tracing::warn!(connection = %session.name, "the backup session was already closed; no locks are held")
            }
            Err(e) => return Err(session_error(&e, sql)),
        }
    }
    let (commit_blocked, ddl_blocked, method) = {
        let mut st = lock_state(session);
        st.close_current(Instant::now());
        st.generation += 1;
        let held = |s: Stage| st.holds.get(s.name()).copied().unwrap_or(0.0);
        (
            held(Stage::BlockCommit),
            // DDL waits from BLOCK_DDL to END, BLOCK_COMMIT included.
            held(Stage::BlockDdl) + held(Stage::BlockCommit),
            st.method.unwrap_or(LockMethod::BackupStage),
        )
    };
    let mut out = base_outputs(session, Stage::End, method, 0.0);
    out.commit_blocked_ms = round3(commit_blocked);
    out.ddl_blocked_ms = round3(ddl_blocked);
    tracing::info!(
        commit_blocked_ms = commit_blocked,
        ddl_blocked_ms = ddl_blocked,
        "backup locks released"
    );
    match lost {
        Some(msg) => Err(StepError::fatal(msg)),
        None => Ok(out),
    }
}

/// How often the locking session is pinged while it holds locks.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);

/// While the session holds backup locks, pings it every second; if the server closed it
/// (stopped, restarted, killed), the locks are gone: the steps working under them are
/// told at once (`locks_lost`) instead of finishing a copy that can no longer be sealed.
fn spawn_liveness_watch(session: Arc<Session>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(LIVENESS_INTERVAL).await;
            if lock_state(&session).current.is_none() || session.locks_lost.is_cancelled() {
                lock_state(&session).watched = false;
                return;
            }
            // A stage statement in progress holds the connection: skip this round.
            let Ok(mut guard) = session.conn.try_lock() else {
                continue;
            };
            let alive = match guard.as_mut() {
                Some(conn) => matches!(
                    tokio::time::timeout(Duration::from_secs(10), conn.ping()).await,
                    Ok(Ok(()))
                ),
                None => false,
            };
            if alive {
                continue;
            }
            guard.take();
            drop(guard);
            let msg = "the server closed the backup session (stopped, restarted or killed?): its backup locks are gone and this backup is abandoned".to_string();
            {
                let mut st = lock_state(&session);
                st.close_current(Instant::now());
                st.lost = Some(msg.clone());
                st.watched = false;
            }
            tracing::error!("{msg}");
            session.locks_lost.cancel();
            return;
        }
    });
}

/// Releases the locks when `stage` is still held after `budget`.
fn spawn_budget_watchdog(
    session: Arc<Session>,
    stage: Stage,
    budget: Duration,
    method: LockMethod,
) {
    let generation = lock_state(&session).generation;
    tokio::spawn(async move {
        tokio::time::sleep(budget).await;
        if lock_state(&session).generation != generation {
            return;
        }
        let mut guard = session.conn.lock().await;
        {
            let st = lock_state(&session);
            if st.generation != generation {
                return;
            }
        }
        let sql = if method == LockMethod::Ftwrl {
            "UNLOCK TABLES"
        } else {
            Stage::End.sql()
        };
        let released = match guard.as_mut() {
            Some(conn) => conn.query_drop(sql).await.is_ok(),
            None => true,
        };
        if !released {
            // The statement failed: closing the session releases the locks for sure.
            if let Some(conn) = guard.take() {
                let _ = conn.disconnect().await;
            }
        }
        let msg = format!(
            "BACKUP STAGE {} was held longer than its budget of {} (max_hold.{}): the locks were released and this backup is abandoned",
            stage.name().to_uppercase(),
            humantime::format_duration(budget),
            stage.name()
        );
        {
            let mut st = lock_state(&session);
            st.close_current(Instant::now());
            st.lost = Some(msg.clone());
            st.generation += 1;
        }
        tracing::error!("{msg}");
        session.locks_lost.cancel();
    });
}
