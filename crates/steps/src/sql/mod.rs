//! `sql`: statements on a named connection; the last result set becomes outputs.

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use stagehand_engine::{ConfigError, StepContext, StepError, TypedStep};
use stagehand_mariadb::session::{classify, row_to_json, Session};

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// The plan connection to run on (its session is shared with other steps).
    pub connection: String,
    /// One statement (use this or `statements`).
    pub sql: Option<String>,
    /// Several statements, run in order on the same session.
    pub statements: Option<Vec<String>>,
    /// Fail unless the last statement returns at least this many rows.
    pub expect_min_rows: Option<u64>,
}

impl SqlConfig {
    fn statements(&self) -> Vec<&str> {
        match (&self.sql, &self.statements) {
            (Some(s), _) => vec![s.as_str()],
            (None, Some(list)) => list.iter().map(String::as_str).collect(),
            (None, None) => Vec::new(),
        }
    }
}

/// What `sql` publishes.
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct SqlOutput {
    /// rows of the last statement, as objects keyed by column
    pub rows: Vec<serde_json::Value>,
    /// the first of those rows ({} when none)
    pub first: serde_json::Map<String, serde_json::Value>,
    /// first column of the first row, as text (empty when none)
    pub value: String,
    /// number of rows of the last statement
    pub row_count: u64,
    /// rows changed by the last statement
    pub affected_rows: u64,
}

pub struct Sql;

#[async_trait]
impl TypedStep for Sql {
    type Config = SqlConfig;
    type Output = SqlOutput;
    const NAME: &'static str = "sql";
    const SUMMARY: &'static str =
        "Runs SQL statements on a plan connection; the last result set becomes outputs";

    fn check(cfg: &SqlConfig) -> Result<(), ConfigError> {
        match (&cfg.sql, &cfg.statements) {
            (Some(_), Some(_)) | (None, None) => Err(ConfigError {
                path: String::new(),
                message: "give exactly one of `sql` and `statements`".into(),
                hint: None,
            }),
            (None, Some(list)) if list.is_empty() => Err(ConfigError {
                path: "statements".into(),
                message: "`statements` is empty".into(),
                hint: None,
            }),
            _ => Ok(()),
        }
    }

    fn describe(cfg: &SqlConfig) -> String {
        let stmts = cfg.statements();
        let shown: Vec<String> = stmts.iter().map(|s| one_line(s)).collect();
        format!(
            "runs {} on connection `{}`: {}",
            plural(stmts.len(), "statement"),
            cfg.connection,
            shown.join("; ")
        )
    }

    fn connections(cfg: &SqlConfig) -> Vec<String> {
        vec![cfg.connection.clone()]
    }

    async fn run(cfg: &SqlConfig, ctx: &StepContext) -> Result<SqlOutput, StepError> {
        let session = ctx.connections.get_as::<Session>(&cfg.connection).await?;
        let work = run_statements(&session, cfg.statements());
        let result = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => {
                // The statement was abandoned mid-flight: the session's state is unknown.
                ctx.connections.discard(&cfg.connection).await;
                return Err(StepError::cancelled());
            }
            r = work => r,
        };
        let (rows, affected) = result?;
        if let Some(min) = cfg.expect_min_rows {
            if (rows.len() as u64) < min {
                return Err(StepError::fatal(format!(
                    "expected at least {min} row(s), got {}",
                    rows.len()
                )));
            }
        }
        Ok(outputs(rows, affected))
    }
}

async fn run_statements(
    session: &Session,
    stmts: Vec<&str>,
) -> Result<(Vec<Value>, u64), StepError> {
    let mut guard = session.conn.lock().await;
    let conn = guard
        .as_mut()
        .ok_or_else(|| StepError::fatal(format!("connection `{}` is closed", session.name)))?;
    let mut rows = Vec::new();
    let mut affected = 0;
    for stmt in stmts {
        let result: Vec<mysql_async::Row> = conn.query(stmt).await.map_err(|e| {
            let err = classify(&e);
            StepError {
                message: format!("{} (in: {})", err.message, one_line(stmt)),
                ..err
            }
        })?;
        affected = conn.affected_rows();
        rows = result
            .iter()
            .map(|r| Value::Object(row_to_json(r)))
            .collect();
    }
    Ok((rows, affected))
}

fn outputs(rows: Vec<Value>, affected: u64) -> SqlOutput {
    let first = rows
        .first()
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let value = first
        .values()
        .next()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        })
        .unwrap_or_default();
    SqlOutput {
        row_count: rows.len() as u64,
        rows,
        first,
        value,
        affected_rows: affected,
    }
}

fn one_line(s: &str) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 120 {
        format!("{}…", flat.chars().take(120).collect::<String>())
    } else {
        flat
    }
}

pub(crate) fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}
