//! MariaDB sessions: the connection provider behind a plan's `connections:`. Every step
//! that names the same connection shares one server session, because BACKUP STAGE locks
//! belong to the session that took them.

use crate::version::ServerVersion;
use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use schemars::JsonSchema;
use serde::Deserialize;
use stagehand_engine::resources::{ConnectionProvider, Handle};
use stagehand_engine::step::deserialize_config;
use stagehand_engine::{ConfigError, StepError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// A connection in a plan: `{socket: ..., user: ..., password: ...}` or host/port.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Unix socket of the server (use this or `host`).
    pub socket: Option<String>,
    /// Host name or address (use this or `socket`).
    pub host: Option<String>,
    #[serde(default = "default_port")]
    pub port: u16,
    pub user: String,
    /// Usually `{{secrets.NAME}}`; never printed.
    pub password: Option<String>,
    pub database: Option<String>,
    /// How long to wait for the server to accept the connection.
    #[serde(
        default = "default_connect_timeout",
        with = "stagehand_engine::model::duration_text"
    )]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Statements run once after connecting (e.g. `SET SESSION lock_wait_timeout=10`).
    #[serde(default)]
    pub init: Vec<String>,
}

fn default_port() -> u16 {
    3306
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl ConnectionConfig {
    fn check(&self) -> Result<(), ConfigError> {
        match (&self.socket, &self.host) {
            (Some(_), Some(_)) | (None, None) => Err(ConfigError {
                path: String::new(),
                message: "give exactly one of `socket` and `host`".into(),
                hint: Some("socket: /run/mysqld/mysqld.sock, or host: 127.0.0.1 with port".into()),
            }),
            _ => Ok(()),
        }
    }

    /// Where it connects, without credentials.
    pub fn endpoint(&self) -> String {
        match (&self.socket, &self.host) {
            (Some(s), _) => format!("socket {s}"),
            (None, Some(h)) => format!("{h}:{}", self.port),
            (None, None) => "nowhere".into(),
        }
    }

    fn opts(&self) -> mysql_async::Opts {
        let mut b = mysql_async::OptsBuilder::default()
            .user(Some(self.user.clone()))
            .pass(self.password.clone())
            .db_name(self.database.clone())
            .prefer_socket(false)
            .init(self.init.clone());
        b = match (&self.socket, &self.host) {
            (Some(s), _) => b.socket(Some(s.clone())),
            (None, Some(h)) => b.ip_or_hostname(h.clone()).tcp_port(self.port),
            (None, None) => b,
        };
        b.into()
    }
}

/// One open server session, shared by the steps that name its connection.
pub struct Session {
    pub name: String,
    pub endpoint: String,
    /// `None` once closed, or after a cancelled statement left it in an unknown state.
    pub conn: Mutex<Option<mysql_async::Conn>>,
    pub server_version: String,
    /// Backup locks this session holds (see `stage_locks`).
    pub locks: std::sync::Mutex<crate::locks::LockState>,
    /// Cancelled when a lock's time budget ran out and the locks were released: the
    /// backup steps working under those locks stop at once.
    pub locks_lost: tokio_util::sync::CancellationToken,
    /// The Unix socket it connected to (`None` over TCP): the server's process is
    /// asked for through it (SO_PEERCRED) to see which files it has open.
    pub socket: Option<std::path::PathBuf>,
    /// The datadir already checked to belong to this session's server, and how, so
    /// later steps (one under BLOCK_COMMIT) do not check it again.
    pub verified_datadir: std::sync::Mutex<Option<crate::proof::VerifiedSource>>,
    /// How the session connected, for a client program that must reach the same server
    /// as the same user (see [`Session::client_options_file`]).
    client: ConnectionConfig,
}

impl Session {
    /// Why this session's backup locks were lost (budget ran out, server went away).
    pub fn locks_lost_reason(&self) -> String {
        self.locks
            .lock()
            .map(|st| st.lost.clone())
            .unwrap_or_default()
            .unwrap_or_else(|| "the backup locks were lost".into())
    }

    /// The parsed server version.
    pub fn version(&self) -> Option<ServerVersion> {
        ServerVersion::parse(&self.server_version)
    }

    /// Writes an options file (readable by this user only) that makes the `mariadb`
    /// client connect as this session did: `mariadb --defaults-file=PATH`. The
    /// password goes there, never onto a command line every local user can read.
    pub fn client_options_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        let c = &self.client;
        let mut text = format!("[client]\nuser={}\n", option_value(&c.user));
        if let Some(p) = &c.password {
            text.push_str(&format!("password={}\n", option_value(p)));
        }
        match (&c.socket, &c.host) {
            (Some(s), _) => text.push_str(&format!("socket={}\n", option_value(s))),
            (None, Some(h)) => text.push_str(&format!(
                "host={}\nport={}\nprotocol=TCP\n",
                option_value(h),
                c.port
            )),
            (None, None) => {}
        }
        stagehand_host::private_fs::write_private(path, text)
    }
}

/// A value for an options file: quoted, with `\` and `"` escaped (the client reads
/// escapes in quoted values).
fn option_value(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Turns a driver or server error into a step error, retryable when trying again may work
/// (connection trouble, lock wait timeout, deadlock, too many connections).
pub fn classify(e: &mysql_async::Error) -> StepError {
    use mysql_async::Error as E;
    match e {
        E::Server(s) => {
            let msg = format!("server error {} ({}): {}", s.code, s.state, s.message);
            match s.code {
                1205 | 1213 | 1040 | 1203 | 2006 | 2013 => StepError::retryable(msg),
                1045 => StepError::fatal(msg).with_hint(
                    "wrong user or password (or the account does not exist for this host): check the connection's `user` and the password secret",
                ),
                1044 | 1227 | 1142 => StepError::fatal(msg).with_hint(
                    "the user lacks a privilege: see the privileges section of the README",
                ),
                _ => StepError::fatal(msg),
            }
        }
        E::Io(_) | E::Driver(_) => StepError::retryable(format!("connection problem: {e}")),
        other => StepError::fatal(other.to_string()),
    }
}

pub struct MariaDbProvider;

#[async_trait]
impl ConnectionProvider for MariaDbProvider {
    fn schema(&self) -> serde_json::Value {
        let schema = schemars::generate::SchemaSettings::draft07()
            .into_generator()
            .into_root_schema_for::<ConnectionConfig>();
        let mut v = serde_json::to_value(schema).unwrap_or_default();
        if let serde_json::Value::Object(m) = &mut v {
            m.remove("$schema");
        }
        v
    }

    fn check(&self, config: &serde_json::Value) -> Result<(), ConfigError> {
        deserialize_config::<ConnectionConfig>(config)?.check()
    }

    fn describe(&self, config: &serde_json::Value) -> String {
        match deserialize_config::<ConnectionConfig>(config) {
            Ok(c) => format!("MariaDB session as `{}` via {}", c.user, c.endpoint()),
            Err(e) => format!("invalid connection: {}", e.message),
        }
    }

    async fn open(&self, name: &str, config: &serde_json::Value) -> Result<Handle, StepError> {
        let cfg: ConnectionConfig =
            deserialize_config(config).map_err(|e| StepError::fatal(e.message))?;
        let endpoint = cfg.endpoint();
        let connect = mysql_async::Conn::new(cfg.opts());
        let mut conn = match tokio::time::timeout(cfg.connect_timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let err = classify(&e);
                return Err(StepError {
                    message: format!("cannot connect `{name}` to {endpoint}: {}", err.message),
                    ..err
                });
            }
            Err(_) => {
                return Err(StepError::retryable(format!(
                    "cannot connect `{name}` to {endpoint}: no answer within {}",
                    humantime_secs(cfg.connect_timeout)
                )))
            }
        };
        let version: Option<String> = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(|e| classify(&e))?;
        tracing::info!(connection = name, %endpoint, "connected");
        Ok(Arc::new(Session {
            name: name.to_string(),
            endpoint,
            conn: Mutex::new(Some(conn)),
            server_version: version.unwrap_or_default(),
            locks: Default::default(),
            locks_lost: Default::default(),
            socket: cfg.socket.as_ref().map(std::path::PathBuf::from),
            verified_datadir: Default::default(),
            client: cfg,
        }))
    }

    async fn close(&self, handle: Handle) {
        let Ok(session) = handle.downcast::<Session>() else {
            return;
        };
        let conn = session.conn.lock().await.take();
        if let Some(conn) = conn {
            if let Err(e) = conn.disconnect().await {
                tracing::warn!(connection = %session.name, error = %e, "disconnect failed");
            }
        }
    }
}

fn humantime_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// A server value as JSON: numbers stay numbers, text and dates become strings.
pub fn value_to_json(v: &mysql_async::Value) -> serde_json::Value {
    use mysql_async::Value as V;
    match v {
        V::NULL => serde_json::Value::Null,
        V::Bytes(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
        V::Int(i) => serde_json::Value::from(*i),
        V::UInt(u) => serde_json::Value::from(*u),
        V::Float(f) => serde_json::Value::from(*f as f64),
        V::Double(d) => serde_json::Value::from(*d),
        V::Date(y, mo, d, h, mi, s, us) => serde_json::Value::String(format!(
            "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}{}",
            if *us > 0 {
                format!(".{us:06}")
            } else {
                String::new()
            }
        )),
        V::Time(neg, d, h, m, s, us) => {
            let hours = u64::from(*d) * 24 + u64::from(*h);
            let sign = if *neg { "-" } else { "" };
            let frac = if *us > 0 {
                format!(".{us:06}")
            } else {
                String::new()
            };
            serde_json::Value::String(format!("{sign}{hours:02}:{m:02}:{s:02}{frac}"))
        }
    }
}

/// A row as a JSON object keyed by column name. The text protocol sends every value as
/// text: integer and floating-point columns are turned back into numbers (DECIMAL stays
/// text, so no precision is lost).
pub fn row_to_json(row: &mysql_async::Row) -> serde_json::Map<String, serde_json::Value> {
    let columns = row.columns_ref();
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let v = row
                .as_ref(i)
                .map(|v| typed_json(v, c.column_type()))
                .unwrap_or(serde_json::Value::Null);
            (c.name_str().into_owned(), v)
        })
        .collect()
}

fn typed_json(v: &mysql_async::Value, ty: mysql_async::consts::ColumnType) -> serde_json::Value {
    use mysql_async::consts::ColumnType as T;
    let json = value_to_json(v);
    let serde_json::Value::String(text) = &json else {
        return json;
    };
    match ty {
        T::MYSQL_TYPE_TINY
        | T::MYSQL_TYPE_SHORT
        | T::MYSQL_TYPE_LONG
        | T::MYSQL_TYPE_INT24
        | T::MYSQL_TYPE_LONGLONG
        | T::MYSQL_TYPE_YEAR => text
            .parse::<i64>()
            .map(serde_json::Value::from)
            .or_else(|_| text.parse::<u64>().map(serde_json::Value::from))
            .unwrap_or(json),
        T::MYSQL_TYPE_FLOAT | T::MYSQL_TYPE_DOUBLE => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(serde_json::Value::Number)
            .unwrap_or(json),
        _ => json,
    }
}

/// Runs one statement and returns its rows (a helper for steps that read server state).
pub async fn query_rows(
    conn: &mut mysql_async::Conn,
    sql: &str,
) -> Result<Vec<mysql_async::Row>, StepError> {
    conn.query(sql).await.map_err(|e| {
        let err = classify(&e);
        StepError {
            message: format!("{} (in: {sql})", err.message),
            ..err
        }
    })
}

/// `SHOW GLOBAL STATUS/VARIABLES LIKE ...` as name → value.
pub async fn name_values(
    conn: &mut mysql_async::Conn,
    sql: &str,
) -> Result<std::collections::BTreeMap<String, String>, StepError> {
    let rows = query_rows(conn, sql).await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let name: Option<String> = r.get(0);
            let value: Option<String> = r.get(1);
            Some((name?.to_ascii_lowercase(), value.unwrap_or_default()))
        })
        .collect())
}

/// The server's current InnoDB LSN (`Innodb_lsn_current`).
pub async fn innodb_lsn(conn: &mut mysql_async::Conn) -> Result<u64, StepError> {
    name_values(conn, "SHOW GLOBAL STATUS LIKE 'Innodb_lsn_current'")
        .await?
        .get("innodb_lsn_current")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| StepError::fatal("the server did not report Innodb_lsn_current"))
}

/// The same, on a plan session.
pub async fn session_innodb_lsn(session: &Session) -> Result<u64, StepError> {
    let mut guard = session.conn.lock().await;
    let conn = guard
        .as_mut()
        .ok_or_else(|| StepError::fatal(format!("connection `{}` is closed", session.name)))?;
    innodb_lsn(conn).await
}

/// A preflight's session: the error becomes a finding.
pub async fn preflight_session(
    ctx: &stagehand_engine::StepContext,
    name: &str,
) -> Result<Arc<Session>, stagehand_engine::step::Finding> {
    ctx.connections.get_as::<Session>(name).await.map_err(|e| {
        let hint = e.hint.map(|h| format!(" ({h})")).unwrap_or_default();
        stagehand_engine::step::Finding::error(format!("connection `{name}`: {}{hint}", e.message))
    })
}

/// Runs one query on a session (for preflights and settings).
pub async fn session_values(
    session: &Session,
    sql: &str,
) -> Result<std::collections::BTreeMap<String, String>, StepError> {
    let mut guard = session.conn.lock().await;
    let conn = guard
        .as_mut()
        .ok_or_else(|| StepError::fatal(format!("connection `{}` is closed", session.name)))?;
    name_values(conn, sql).await
}

/// All rows of a query as text, first column only.
pub async fn session_column(session: &Session, sql: &str) -> Result<Vec<String>, StepError> {
    let mut guard = session.conn.lock().await;
    let conn = guard
        .as_mut()
        .ok_or_else(|| StepError::fatal(format!("connection `{}` is closed", session.name)))?;
    let rows = query_rows(conn, sql).await?;
    Ok(rows
        .iter()
        .map(|r| r.get::<Option<String>, _>(0).flatten().unwrap_or_default())
        .collect())
}

/// A session's global privileges (`ON *.*`), from `SHOW GRANTS`: it lists the user's
/// grants and those of the roles the session has enabled (nested roles too).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalPrivileges {
    all: bool,
    names: std::collections::BTreeSet<String>,
}

impl GlobalPrivileges {
    /// Parses the lines of `SHOW GRANTS`. Only global grants count: `ALL PRIVILEGES ON
    /// app.*` gives nothing here, nor does a user or role whose name spells a privilege.
    pub fn from_grants<S: AsRef<str>>(lines: &[S]) -> Self {
        let mut out = Self::default();
        for line in lines {
            for name in global_privileges_of(line.as_ref()) {
                match name.as_str() {
                    "ALL PRIVILEGES" | "ALL" => out.all = true,
                    // The old name of BINLOG MONITOR (10.5.2+).
                    "REPLICATION CLIENT" => {
                        out.names.insert("BINLOG MONITOR".into());
                    }
                    _ => {}
                }
                out.names.insert(name);
            }
        }
        out
    }

    /// Whether the session holds `privilege` (upper case, e.g. `RELOAD`) globally.
    pub fn has(&self, privilege: &str) -> bool {
        self.all || self.names.contains(privilege)
    }
}

/// The privileges of one `GRANT <privileges> ON *.* TO ...` line; none for grants on
/// databases, tables, routines, proxies, or of roles (`GRANT \`r\` TO ...`).
fn global_privileges_of(line: &str) -> Vec<String> {
    let Some(rest) = line.trim().strip_prefix("GRANT ") else {
        return Vec::new();
    };
    let Some((privileges, object)) = rest.split_once(" ON ") else {
        return Vec::new();
    };
    // Privilege lists are bare keywords; a quote means a role name came first.
    if !object.starts_with("*.* TO ") || privileges.contains(['`', '\'', '"']) {
        return Vec::new();
    }
    privileges
        .split(',')
        .map(|p| p.trim().to_ascii_uppercase())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The global privileges of a session (see [`GlobalPrivileges`]).
pub async fn session_privileges(session: &Session) -> Result<GlobalPrivileges, StepError> {
    let lines = session_column(session, "SHOW GRANTS").await?;
    Ok(GlobalPrivileges::from_grants(&lines))
}

/// Whether the session may see other sessions' threads (the PROCESS privilege), tried
/// with a read of `information_schema.INNODB_TRX`, which needs exactly that privilege:
/// without it, `PROCESSLIST` quietly shows only the session's own threads.
pub async fn can_see_other_sessions(conn: &mut mysql_async::Conn) -> Result<bool, StepError> {
    match conn
        .query_drop("SELECT COUNT(*) FROM information_schema.INNODB_TRX")
        .await
    {
        Ok(()) => Ok(true),
        Err(mysql_async::Error::Server(s)) if s.code == 1227 => Ok(false),
        Err(e) => Err(classify(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_privileges_come_only_from_global_grants() {
        let p = GlobalPrivileges::from_grants(&[
            "GRANT `r1` TO `u1`@`localhost`",
            "GRANT RELOAD, BINLOG MONITOR ON *.* TO `u1`@`localhost` IDENTIFIED BY PASSWORD '*D8'",
            "GRANT `r2` TO `r1`",
            "GRANT PROCESS ON *.* TO `r1`",
            "GRANT ALL PRIVILEGES ON `app`.* TO `u1`@`localhost`",
        ]);
        assert!(p.has("RELOAD") && p.has("BINLOG MONITOR") && p.has("PROCESS"));
        assert!(!p.has("SUPER"));
    }

    #[test]
    fn names_that_spell_a_privilege_grant_nothing() {
        let p = GlobalPrivileges::from_grants(&[
            "GRANT PROCESS ON *.* TO `noreload`@`localhost`",
            "GRANT SELECT ON `reload`.* TO `noreload`@`localhost`",
            "GRANT `all privileges on *.*` TO `noreload`@`localhost`",
        ]);
        assert!(p.has("PROCESS"));
        assert!(!p.has("RELOAD"));
        assert!(!p.has("SUPER"));
    }

    #[test]
    fn all_privileges_on_everything_has_every_privilege() {
        let p = GlobalPrivileges::from_grants(&[
            "GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION",
        ]);
        assert!(p.has("RELOAD") && p.has("PROCESS") && p.has("BINLOG MONITOR"));
        let old = GlobalPrivileges::from_grants(&["GRANT REPLICATION CLIENT ON *.* TO `u`@`%`"]);
        assert!(old.has("BINLOG MONITOR"));
    }
}
