//! A DDL workload whose every statement is recorded with its GTID, a pure model of the
//! schema it leaves at any GTID, and the checker that compares a (restored) server with
//! that model (issue 14, design §6.1).
//!
//! Everything lives in schema `ddl`. A [`DdlSession`] runs [`Op`]s on its own
//! connection: after each statement it reads `SELECT @@last_gtid` (DDL is written to
//! the binlog as its own event group, so every statement gets a GTID of its own; the
//! server must run with `log-bin`), and keeps `(seq_no, op)`. [`DdlDriver`] loops a
//! session over [`cycle`] until stopped: CREATE (InnoDB, Aria, MyISAM) + INSERT, RENAME
//! (and the swap a→x, b→a, x→b), DROP, ADD COLUMN (INSTANT, and COPY), ADD INDEX
//! (INPLACE), ALTER … FORCE, OPTIMIZE, ALTER … ENGINE=Aria, TRUNCATE (InnoDB, MyISAM),
//! partitioned ADD/DROP/TRUNCATE/REORGANIZE PARTITION, and DML in between. Each
//! cycle works on its own table family `c<n>_*`, so statements of different families
//! are independent; cycle n also drops what is left of cycle n-2, so the number of
//! tables stays bounded however long it runs.
//!
//! [`DdlLog::schema_at`] folds the ops with a GTID seq_no ≤ N (domain 0) into the tables
//! that must exist at that GTID, each with its engine, columns, partitions and rows;
//! [`check_ddl`] reads a server's `ddl` schema (information_schema, `SELECT … ORDER BY
//! id`, `CHECK TABLE`) and lists every difference.

use crate::workload::Gtid;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The schema every op works in.
pub const SCHEMA: &str = "ddl";

/// One statement of the DDL workload and what it does to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `CREATE TABLE t (id INT PRIMARY KEY, v INT) ENGINE=…`, RANGE-partitioned on
    /// `id` when `partitions` (name, VALUES LESS THAN) is not empty.
    Create {
        table: String,
        engine: &'static str,
        partitions: Vec<(String, i64)>,
    },
    /// `INSERT INTO t (id, v) VALUES (id, v), …` (added columns take their default).
    Insert {
        table: String,
        ids: Vec<i64>,
        v: i64,
    },
    /// `UPDATE t SET v = … WHERE id = …`.
    Update { table: String, id: i64, v: i64 },
    /// `DELETE FROM t WHERE id = …`.
    Delete { table: String, id: i64 },
    /// `RENAME TABLE a TO b, …` (one statement, applied pair by pair).
    Rename(Vec<(String, String)>),
    /// `DROP TABLE t`.
    Drop(String),
    /// `ALTER TABLE t ADD COLUMN c INT NOT NULL DEFAULT d, ALGORITHM=INSTANT` (or
    /// `ALGORITHM=COPY`: a copy into a new `#sql-…` table, renamed over the old one).
    AddColumn {
        table: String,
        column: String,
        default: i64,
        instant: bool,
    },
    /// `ALTER TABLE t ADD INDEX i_<column> (<column>), ALGORITHM=INPLACE` (no rebuild).
    AddIndex { table: String, column: String },
    /// `ALTER TABLE t ENGINE=…` (a copy into another engine).
    Engine { table: String, engine: &'static str },
    /// `ALTER TABLE t FORCE` (rebuild: a new tablespace for InnoDB).
    Force(String),
    /// `OPTIMIZE TABLE t` (InnoDB: recreate + analyze).
    Optimize(String),
    /// `TRUNCATE TABLE t`.
    Truncate(String),
    /// `ALTER TABLE t ADD PARTITION (PARTITION p VALUES LESS THAN (n))`.
    AddPartition {
        table: String,
        name: String,
        less_than: i64,
    },
    /// `ALTER TABLE t DROP PARTITION p` (its rows go with it).
    DropPartition { table: String, name: String },
    /// `ALTER TABLE t TRUNCATE PARTITION p`.
    TruncatePartition { table: String, name: String },
    /// `ALTER TABLE t REORGANIZE PARTITION p INTO (…)` (rows stay).
    ReorganizePartition {
        table: String,
        name: String,
        into: Vec<(String, i64)>,
    },
}

fn q(table: &str) -> String {
    format!("{SCHEMA}.`{table}`")
}

impl Op {
    pub fn sql(&self) -> String {
        match self {
            Op::Create {
                table,
                engine,
                partitions,
            } => {
                let mut sql = format!(
                    "CREATE TABLE {} (id INT NOT NULL PRIMARY KEY, v INT NOT NULL) ENGINE={engine}",
                    q(table)
                );
                if !partitions.is_empty() {
                    let parts: Vec<String> = partitions
                        .iter()
                        .map(|(p, lt)| format!("PARTITION {p} VALUES LESS THAN ({lt})"))
                        .collect();
                    sql.push_str(&format!(" PARTITION BY RANGE (id) ({})", parts.join(", ")));
                }
                sql
            }
            Op::Insert { table, ids, v } => {
                let values: Vec<String> = ids.iter().map(|id| format!("({id}, {v})")).collect();
                format!(
                    "INSERT INTO {} (id, v) VALUES {}",
                    q(table),
                    values.join(", ")
                )
            }
            Op::Update { table, id, v } => {
                format!("UPDATE {} SET v = {v} WHERE id = {id}", q(table))
            }
            Op::Delete { table, id } => format!("DELETE FROM {} WHERE id = {id}", q(table)),
            Op::Rename(pairs) => {
                let p: Vec<String> = pairs
                    .iter()
                    .map(|(a, b)| format!("{} TO {}", q(a), q(b)))
                    .collect();
                format!("RENAME TABLE {}", p.join(", "))
            }
            Op::Drop(t) => format!("DROP TABLE {}", q(t)),
            Op::AddColumn {
                table,
                column,
                default,
                instant,
            } => format!(
                "ALTER TABLE {} ADD COLUMN {column} INT NOT NULL DEFAULT {default}, ALGORITHM={}",
                q(table),
                if *instant { "INSTANT" } else { "COPY" }
            ),
            Op::AddIndex { table, column } => format!(
                "ALTER TABLE {} ADD INDEX i_{column} ({column}), ALGORITHM=INPLACE",
                q(table)
            ),
            Op::Engine { table, engine } => format!("ALTER TABLE {} ENGINE={engine}", q(table)),
            Op::Force(t) => format!("ALTER TABLE {} FORCE", q(t)),
            Op::Optimize(t) => format!("OPTIMIZE TABLE {}", q(t)),
            Op::Truncate(t) => format!("TRUNCATE TABLE {}", q(t)),
            Op::AddPartition {
                table,
                name,
                less_than,
            } => format!(
                "ALTER TABLE {} ADD PARTITION (PARTITION {name} VALUES LESS THAN ({less_than}))",
                q(table)
            ),
            Op::DropPartition { table, name } => {
                format!("ALTER TABLE {} DROP PARTITION {name}", q(table))
            }
            Op::TruncatePartition { table, name } => {
                format!("ALTER TABLE {} TRUNCATE PARTITION {name}", q(table))
            }
            Op::ReorganizePartition { table, name, into } => {
                let parts: Vec<String> = into
                    .iter()
                    .map(|(p, lt)| format!("PARTITION {p} VALUES LESS THAN ({lt})"))
                    .collect();
                format!(
                    "ALTER TABLE {} REORGANIZE PARTITION {name} INTO ({})",
                    q(table),
                    parts.join(", ")
                )
            }
        }
    }

    /// The tables this op touches (for a table's history in messages).
    fn tables(&self) -> Vec<&str> {
        match self {
            Op::Create { table, .. }
            | Op::Insert { table, .. }
            | Op::Update { table, .. }
            | Op::Delete { table, .. }
            | Op::AddColumn { table, .. }
            | Op::AddIndex { table, .. }
            | Op::Engine { table, .. }
            | Op::AddPartition { table, .. }
            | Op::DropPartition { table, .. }
            | Op::TruncatePartition { table, .. }
            | Op::ReorganizePartition { table, .. } => vec![table],
            Op::Drop(t) | Op::Force(t) | Op::Optimize(t) | Op::Truncate(t) => vec![t],
            Op::Rename(pairs) => pairs
                .iter()
                .flat_map(|(a, b)| [a, b])
                .map(|s| s.as_str())
                .collect(),
        }
    }

    /// A data definition statement (not DML).
    pub fn is_ddl(&self) -> bool {
        !matches!(
            self,
            Op::Insert { .. } | Op::Update { .. } | Op::Delete { .. }
        )
    }
}

/// What the model says a table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableModel {
    pub engine: &'static str,
    /// Column names in order, with the default of columns added later (None for the
    /// two original ones).
    pub columns: Vec<(String, Option<i64>)>,
    /// (name, VALUES LESS THAN), in order; empty when not partitioned.
    pub partitions: Vec<(String, i64)>,
    /// Secondary index names, sorted.
    pub indexes: Vec<String>,
    /// Rows by id: every column's value, in column order.
    pub rows: BTreeMap<i64, Vec<i64>>,
}

impl TableModel {
    /// The rows as `SELECT CONCAT_WS(',', <columns>) … ORDER BY id` shows them.
    pub fn row_strings(&self) -> Vec<String> {
        self.rows
            .values()
            .map(|r| r.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
            .collect()
    }
}

/// The tables of schema `ddl` by name.
pub type SchemaModel = BTreeMap<String, TableModel>;

/// Applies one op to the model; panics when the op makes no sense there (a bug of the
/// driver, not of the server).
pub fn apply(model: &mut SchemaModel, op: &Op) {
    fn table<'a>(model: &'a mut SchemaModel, t: &str, op: &Op) -> &'a mut TableModel {
        model
            .get_mut(t)
            .unwrap_or_else(|| panic!("model: {op:?} on a table that does not exist"))
    }
    match op {
        Op::Create {
            table: t,
            engine,
            partitions,
        } => {
            let old = model.insert(
                t.clone(),
                TableModel {
                    engine,
                    columns: vec![("id".into(), None), ("v".into(), None)],
                    partitions: partitions.clone(),
                    indexes: Vec::new(),
                    rows: BTreeMap::new(),
                },
            );
            assert!(old.is_none(), "model: {op:?} on an existing table");
        }
        Op::Insert { table: t, ids, v } => {
            let tm = table(model, t, op);
            let defaults: Vec<i64> = tm
                .columns
                .iter()
                .skip(2)
                .map(|c| c.1.unwrap_or(0))
                .collect();
            for id in ids {
                let mut row = vec![*id, *v];
                row.extend(&defaults);
                assert!(
                    tm.rows.insert(*id, row).is_none(),
                    "model: duplicate {op:?}"
                );
            }
        }
        Op::Update { table: t, id, v } => {
            let tm = table(model, t, op);
            if let Some(r) = tm.rows.get_mut(id) {
                r[1] = *v;
            }
        }
        Op::Delete { table: t, id } => {
            let tm = table(model, t, op);
            tm.rows.remove(id);
        }
        Op::Rename(pairs) => {
            for (a, b) in pairs {
                let tm = model
                    .remove(a)
                    .unwrap_or_else(|| panic!("model: {op:?}: no table {a}"));
                assert!(
                    model.insert(b.clone(), tm).is_none(),
                    "model: {op:?}: {b} exists"
                );
            }
        }
        Op::Drop(t) => {
            model
                .remove(t)
                .unwrap_or_else(|| panic!("model: {op:?} on a table that does not exist"));
        }
        Op::AddColumn {
            table: t,
            column,
            default,
            ..
        } => {
            let tm = table(model, t, op);
            tm.columns.push((column.clone(), Some(*default)));
            for r in tm.rows.values_mut() {
                r.push(*default);
            }
        }
        Op::Force(t) | Op::Optimize(t) => {
            table(model, t, op);
        }
        Op::AddIndex { table: t, column } => {
            let tm = table(model, t, op);
            tm.indexes.push(format!("i_{column}"));
            tm.indexes.sort();
        }
        Op::Engine { table: t, engine } => table(model, t, op).engine = engine,
        Op::Truncate(t) => {
            let tm = table(model, t, op);
            tm.rows.clear();
        }
        Op::AddPartition {
            table: t,
            name,
            less_than,
        } => {
            let tm = table(model, t, op);
            tm.partitions.push((name.clone(), *less_than));
        }
        Op::DropPartition { table: t, name } => {
            let tm = table(model, t, op);
            let i = tm
                .partitions
                .iter()
                .position(|(p, _)| p == name)
                .unwrap_or_else(|| panic!("model: {op:?}: no partition {name}"));
            let low = if i == 0 {
                i64::MIN
            } else {
                tm.partitions[i - 1].1
            };
            let high = tm.partitions[i].1;
            tm.rows.retain(|id, _| !(low <= *id && *id < high));
            tm.partitions.remove(i);
        }
        Op::TruncatePartition { table: t, name } => {
            let tm = table(model, t, op);
            let i = tm
                .partitions
                .iter()
                .position(|(p, _)| p == name)
                .unwrap_or_else(|| panic!("model: {op:?}: no partition {name}"));
            let low = if i == 0 {
                i64::MIN
            } else {
                tm.partitions[i - 1].1
            };
            let high = tm.partitions[i].1;
            tm.rows.retain(|id, _| !(low <= *id && *id < high));
        }
        Op::ReorganizePartition {
            table: t,
            name,
            into,
        } => {
            let tm = table(model, t, op);
            let i = tm
                .partitions
                .iter()
                .position(|(p, _)| p == name)
                .unwrap_or_else(|| panic!("model: {op:?}: no partition {name}"));
            tm.partitions.splice(i..=i, into.iter().cloned());
        }
    }
}

/// One statement that ran, with the GTID seq_no (domain 0) it committed as.
#[derive(Debug, Clone)]
pub struct Applied {
    pub seq_no: u64,
    pub op: Op,
    /// How long the statement took (a DDL waiting for BLOCK_DDL shows here).
    pub took: Duration,
}

/// Every statement that committed, from any number of sessions.
#[derive(Debug, Clone, Default)]
pub struct DdlLog {
    pub applied: Vec<Applied>,
    /// Lock waits (1205) and deadlocks (1213) that were retried.
    pub retries: u64,
}

impl DdlLog {
    /// The schema `ddl` once every op with a GTID seq_no ≤ `upto` is applied.
    pub fn schema_at(&self, upto: u64) -> SchemaModel {
        let mut ops: Vec<&Applied> = self.applied.iter().filter(|a| a.seq_no <= upto).collect();
        ops.sort_by_key(|a| a.seq_no);
        let mut model = SchemaModel::new();
        for a in ops {
            apply(&mut model, &a.op);
        }
        model
    }

    /// Statements with a GTID seq_no in `(after, upto]`, and how many of them are DDL.
    pub fn between(&self, after: u64, upto: u64) -> (usize, usize) {
        let within: Vec<&Applied> = self
            .applied
            .iter()
            .filter(|a| a.seq_no > after && a.seq_no <= upto)
            .collect();
        let ddl = within.iter().filter(|a| a.op.is_ddl()).count();
        (within.len(), ddl)
    }

    /// The statements that touched `table` (for messages), `seq_no: sql`.
    pub fn history(&self, table: &str) -> Vec<String> {
        self.applied
            .iter()
            .filter(|a| a.op.tables().contains(&table))
            .map(|a| {
                let sql = a.op.sql();
                match sql.char_indices().nth(120) {
                    Some((i, _)) => format!("{}: {}…", a.seq_no, &sql[..i]),
                    None => format!("{}: {sql}", a.seq_no),
                }
            })
            .collect()
    }

    /// The longest statement.
    pub fn longest(&self) -> Option<&Applied> {
        self.applied.iter().max_by_key(|a| a.took)
    }
}

fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// One connection that runs ops and records their GTIDs.
pub struct DdlSession {
    conn: Conn,
    pub log: DdlLog,
    last: u64,
}

impl DdlSession {
    pub async fn connect(opts: Opts) -> DdlSession {
        let mut conn = Conn::new(opts).await.expect("DDL session: connect");
        // Statements simply wait while a backup holds BLOCK_DDL (or FLUSH, for MyISAM).
        conn.query_drop("SET SESSION lock_wait_timeout = 300, innodb_lock_wait_timeout = 300")
            .await
            .expect("DDL session setup");
        DdlSession {
            conn,
            log: DdlLog::default(),
            last: 0,
        }
    }

    /// Runs `op` (retrying lock waits and deadlocks) and records its GTID; panics on
    /// any other error, or when the statement got no GTID of its own.
    pub async fn run(&mut self, op: Op) {
        let sql = op.sql();
        let t0 = Instant::now();
        loop {
            match self.conn.query_drop(&sql).await {
                Ok(()) => break,
                Err(e) if matches!(server_code(&e), Some(1205 | 1213)) => self.log.retries += 1,
                Err(e) => panic!("DDL workload: {sql:?} failed: {e}"),
            }
        }
        let took = t0.elapsed();
        let text: Option<String> = self
            .conn
            .query_first("SELECT @@last_gtid")
            .await
            .expect("SELECT @@last_gtid");
        let text = text.unwrap_or_default();
        let gtid = Gtid::parse(&text)
            .unwrap_or_else(|| panic!("DDL workload: @@last_gtid after {sql:?} is {text:?}"));
        assert!(
            gtid.domain == 0 && gtid.seq_no > self.last,
            "DDL workload: {sql:?} got no GTID of its own ({gtid}, the previous statement had seq_no {}); is the binlog on?",
            self.last
        );
        self.last = gtid.seq_no;
        self.log.applied.push(Applied {
            seq_no: gtid.seq_no,
            op,
            took,
        });
    }

    /// Runs every op in order.
    pub async fn run_all(&mut self, ops: Vec<Op>) {
        for op in ops {
            self.run(op).await;
        }
    }

    pub async fn finish(self) -> DdlLog {
        let _ = self.conn.disconnect().await;
        self.log
    }
}

/// `CREATE DATABASE ddl`.
pub async fn create_ddl_schema(conn: &mut Conn) {
    conn.query_drop(format!("CREATE DATABASE {SCHEMA}"))
        .await
        .expect("CREATE DATABASE ddl");
}

pub fn create(table: &str, engine: &'static str) -> Op {
    Op::Create {
        table: table.into(),
        engine,
        partitions: Vec::new(),
    }
}

pub fn insert(table: &str, ids: impl IntoIterator<Item = i64>, v: i64) -> Op {
    Op::Insert {
        table: table.into(),
        ids: ids.into_iter().collect(),
        v,
    }
}

/// Cycle `n` of the driver, given the model as it is before it (to drop what is left of
/// cycle n-2).
pub fn cycle(n: u64, model: &SchemaModel) -> Vec<Op> {
    let t = |s: &str| format!("c{n}_{s}");
    let v = n as i64;
    let mut ops = Vec::new();
    // Tables of cycle n-2 leave.
    if n >= 2 {
        let old = format!("c{}_", n - 2);
        ops.extend(
            model
                .keys()
                .filter(|k| k.starts_with(&old))
                .map(|k| Op::Drop(k.clone())),
        );
    }
    // CREATE + INSERT on every engine, then RENAME each.
    for (s, engine) in [("i", "InnoDB"), ("a", "Aria"), ("m", "MyISAM")] {
        ops.push(create(&t(s), engine));
        ops.push(insert(&t(s), 1..=5, v));
    }
    for s in ["i", "a", "m"] {
        ops.push(Op::Rename(vec![(t(s), t(&format!("{s}2")))]));
    }
    // The swap a→x, b→a, x→b (InnoDB with MyISAM).
    ops.push(create(&t("s1"), "InnoDB"));
    ops.push(insert(&t("s1"), 1..=3, 1));
    ops.push(create(&t("s2"), "MyISAM"));
    ops.push(insert(&t("s2"), 1..=2, 2));
    ops.push(Op::Rename(vec![
        (t("s1"), t("sx")),
        (t("s2"), t("s1")),
        (t("sx"), t("s2")),
    ]));
    // DROP of a fresh table.
    ops.push(create(&t("d"), "InnoDB"));
    ops.push(insert(&t("d"), 1..=3, v));
    ops.push(Op::Drop(t("d")));
    // INSTANT ADD COLUMN, FORCE, OPTIMIZE, with DML between.
    let i2 = t("i2");
    ops.push(Op::AddColumn {
        table: i2.clone(),
        column: "c".into(),
        default: 7,
        instant: true,
    });
    ops.push(insert(&i2, [6], v));
    ops.push(Op::Force(i2.clone()));
    ops.push(Op::Update {
        table: i2.clone(),
        id: 1,
        v: 100 + v,
    });
    ops.push(Op::Optimize(i2.clone()));
    ops.push(Op::Delete {
        table: i2.clone(),
        id: 2,
    });
    ops.push(Op::AddColumn {
        table: i2.clone(),
        column: "d".into(),
        default: 3,
        instant: false,
    });
    // TRUNCATE (InnoDB, MyISAM), then new rows.
    ops.push(create(&t("t"), "InnoDB"));
    ops.push(insert(&t("t"), 1..=4, v));
    ops.push(Op::Truncate(t("t")));
    ops.push(insert(&t("t"), 10..=12, v));
    // ADD INDEX in place, then a copy into Aria.
    ops.push(Op::AddIndex {
        table: t("t"),
        column: "v".into(),
    });
    ops.push(Op::Engine {
        table: t("t"),
        engine: "Aria",
    });
    ops.push(insert(&t("t"), [13], v));
    ops.push(Op::Truncate(t("m2")));
    ops.push(insert(&t("m2"), 20..=21, v));
    // Partitioned InnoDB: ADD and DROP PARTITION.
    let p = t("p");
    ops.push(Op::Create {
        table: p.clone(),
        engine: "InnoDB",
        partitions: vec![("p0".into(), 10), ("p1".into(), 20)],
    });
    ops.push(insert(&p, [1, 5, 12, 15], v));
    ops.push(Op::AddPartition {
        table: p.clone(),
        name: "p2".into(),
        less_than: 30,
    });
    ops.push(insert(&p, [25], v));
    ops.push(Op::DropPartition {
        table: p.clone(),
        name: "p0".into(),
    });
    ops.push(Op::TruncatePartition {
        table: p.clone(),
        name: "p1".into(),
    });
    ops.push(insert(&p, [16], v));
    ops.push(Op::ReorganizePartition {
        table: p.clone(),
        name: "p2".into(),
        into: vec![("p2a".into(), 26), ("p2b".into(), 30)],
    });
    // More DML on the families that live on.
    ops.push(Op::Update {
        table: t("a2"),
        id: 1,
        v: 200 + v,
    });
    ops.push(Op::Delete {
        table: t("m2"),
        id: 20,
    });
    ops.push(insert(&t("s1"), [9], v));
    ops
}

/// The driver: one session looping over [`cycle`] until stopped.
pub struct DdlDriver {
    stop: Arc<AtomicBool>,
    statements: Arc<AtomicU64>,
    cycles: Arc<AtomicU64>,
    task: JoinHandle<DdlLog>,
}

impl DdlDriver {
    pub async fn start(opts: Opts) -> DdlDriver {
        let stop = Arc::new(AtomicBool::new(false));
        let statements = Arc::new(AtomicU64::new(0));
        let cycles = Arc::new(AtomicU64::new(0));
        let mut session = DdlSession::connect(opts).await;
        let (s, st, cy) = (stop.clone(), statements.clone(), cycles.clone());
        let task = tokio::spawn(async move {
            let mut model = SchemaModel::new();
            let mut n = 0;
            'cycles: while !s.load(Ordering::Relaxed) {
                for op in cycle(n, &model) {
                    apply(&mut model, &op);
                    session.run(op).await;
                    st.fetch_add(1, Ordering::Relaxed);
                    if s.load(Ordering::Relaxed) {
                        break 'cycles;
                    }
                }
                n += 1;
                cy.store(n, Ordering::Relaxed);
            }
            session.finish().await
        });
        DdlDriver {
            stop,
            statements,
            cycles,
            task,
        }
    }

    /// Statements committed so far.
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Whole cycles done so far.
    pub fn cycles(&self) -> u64 {
        self.cycles.load(Ordering::Relaxed)
    }

    /// Waits until `what` of the driver reaches `n`; panics after `timeout`.
    async fn wait(&self, what: &str, get: impl Fn(&Self) -> u64, n: u64, timeout: Duration) {
        let t0 = Instant::now();
        while get(self) < n {
            assert!(
                !self.task.is_finished(),
                "the DDL driver stopped (panicked?) at {} {what}",
                get(self)
            );
            assert!(
                t0.elapsed() < timeout,
                "the DDL driver did only {} of {n} {what} in {timeout:?}",
                get(self)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_for_cycles(&self, n: u64, timeout: Duration) {
        self.wait("cycles", Self::cycles, n, timeout).await;
    }

    pub async fn wait_for_statements(&self, n: u64, timeout: Duration) {
        self.wait("statements", Self::statements, n, timeout).await;
    }

    /// Stops after the current statement; returns the log.
    pub async fn stop(self) -> DdlLog {
        self.stop.store(true, Ordering::Relaxed);
        match self.task.await {
            Ok(log) => log,
            Err(e) => panic!("the DDL driver failed: {e}"),
        }
    }
}

/// What [`check_ddl`] found.
#[derive(Debug, Clone, Default)]
pub struct DdlReport {
    /// Tables of the model missing on the server.
    pub missing: Vec<String>,
    /// Tables on the server that the model does not have.
    pub extra: Vec<String>,
    /// Tables on both whose engine, columns, partitions, rows or CHECK TABLE differ.
    pub differing: Vec<String>,
    pub tables: usize,
    pub rows: usize,
    /// Every difference from the model, one sentence each (empty when exact).
    pub problems: Vec<String>,
}

/// Compares schema `ddl` of the server behind `conn` with the model at GTID seq_no
/// `upto`: the set of tables, each one's engine, columns, partitions and rows, and
/// `CHECK TABLE` on every table there. Never panics on what the server says: a table
/// that cannot be read is a problem, reported with its history.
pub async fn check_ddl(conn: &mut Conn, log: &DdlLog, upto: u64) -> DdlReport {
    let model = log.schema_at(upto);
    let mut r = DdlReport {
        tables: model.len(),
        rows: model.values().map(|t| t.rows.len()).sum(),
        ..DdlReport::default()
    };
    let history = |t: &str| log.history(t).join("; ");
    let listed: Result<Vec<(String, Option<String>)>, _> = conn
        .query(format!(
            "SELECT TABLE_NAME, ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{SCHEMA}' ORDER BY TABLE_NAME"
        ))
        .await;
    let listed: BTreeMap<String, Option<String>> = match listed {
        Ok(rows) => rows.into_iter().collect(),
        Err(e) => {
            r.problems
                .push(format!("cannot list the tables of `{SCHEMA}`: {e}"));
            return r;
        }
    };
    for (name, tm) in &model {
        if !listed.contains_key(name) {
            r.missing.push(name.clone());
            r.problems.push(format!(
                "table {name} ({}, {} rows) is missing; its statements: {}",
                tm.engine,
                tm.rows.len(),
                history(name)
            ));
        }
    }
    for (name, engine) in &listed {
        let Some(tm) = model.get(name) else {
            r.extra.push(name.clone());
            r.problems.push(format!(
                "table {name} ({}) must not exist at seq_no {upto}; its statements: {}",
                engine.as_deref().unwrap_or("no engine"),
                history(name)
            ));
            continue;
        };
        let mut table_problems = Vec::new();
        if engine.as_deref() != Some(tm.engine) {
            table_problems.push(format!("engine {engine:?}, expected {}", tm.engine));
        }
        let columns: Result<Vec<String>, _> = conn
            .query(format!(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '{SCHEMA}' AND TABLE_NAME = '{name}' ORDER BY ORDINAL_POSITION"
            ))
            .await;
        let expected_columns: Vec<String> = tm.columns.iter().map(|c| c.0.clone()).collect();
        match columns {
            Ok(c) if c != expected_columns => {
                table_problems.push(format!("columns {c:?}, expected {expected_columns:?}"))
            }
            Ok(_) => {}
            Err(e) => table_problems.push(format!("columns unreadable: {e}")),
        }
        let parts: Result<Vec<(String, String)>, _> = conn
            .query(format!(
                "SELECT PARTITION_NAME, PARTITION_DESCRIPTION FROM information_schema.PARTITIONS WHERE TABLE_SCHEMA = '{SCHEMA}' AND TABLE_NAME = '{name}' AND PARTITION_NAME IS NOT NULL ORDER BY PARTITION_ORDINAL_POSITION"
            ))
            .await;
        let expected_parts: Vec<(String, String)> = tm
            .partitions
            .iter()
            .map(|(p, lt)| (p.clone(), lt.to_string()))
            .collect();
        match parts {
            Ok(p) if p != expected_parts => {
                table_problems.push(format!("partitions {p:?}, expected {expected_parts:?}"))
            }
            Ok(_) => {}
            Err(e) => table_problems.push(format!("partitions unreadable: {e}")),
        }
        let indexes: Result<Vec<String>, _> = conn
            .query(format!(
                "SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = '{SCHEMA}' AND TABLE_NAME = '{name}' AND INDEX_NAME <> 'PRIMARY' ORDER BY INDEX_NAME"
            ))
            .await;
        match indexes {
            Ok(i) if i != tm.indexes => {
                table_problems.push(format!("indexes {i:?}, expected {:?}", tm.indexes))
            }
            Ok(_) => {}
            Err(e) => table_problems.push(format!("indexes unreadable: {e}")),
        }
        let cols: Vec<String> = expected_columns.iter().map(|c| format!("`{c}`")).collect();
        let rows: Result<Vec<String>, _> = conn
            .query(format!(
                "SELECT CONCAT_WS(',', {}) FROM {} ORDER BY id",
                cols.join(", "),
                q(name)
            ))
            .await;
        let expected_rows = tm.row_strings();
        match rows {
            Ok(rows) if rows != expected_rows => {
                table_problems.push(format!("rows {rows:?}, expected {expected_rows:?}"))
            }
            Ok(_) => {}
            Err(e) => table_problems.push(format!("rows unreadable: {e}")),
        }
        let check: Result<Vec<(String, String, String, String)>, _> =
            conn.query(format!("CHECK TABLE {}", q(name))).await;
        match check {
            Ok(rows) => {
                let ok = rows
                    .last()
                    .is_some_and(|(_, _, t, m)| t == "status" && m == "OK")
                    && !rows.iter().any(|(_, _, t, _)| t == "error");
                if !ok {
                    let msgs: Vec<String> = rows
                        .iter()
                        .map(|(_, _, t, m)| format!("{t}: {m}"))
                        .collect();
                    table_problems.push(format!("CHECK TABLE: {}", msgs.join("; ")));
                }
            }
            Err(e) => table_problems.push(format!("CHECK TABLE failed: {e}")),
        }
        if !table_problems.is_empty() {
            r.differing.push(name.clone());
            r.problems.push(format!(
                "table {name} ({}): {}; its statements: {}",
                tm.engine,
                table_problems.join("; "),
                history(name)
            ));
        }
    }
    r
}

/// Files of the `ddl` schema directory under `datadir` left by an unfinished ALTER
/// (`#sql…`), or by mariadb-backup's DDL side files (`.new`, `.ren`, `.del`).
pub fn leftover_files(datadir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(datadir.join(SCHEMA))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with("#sql")
                || n.ends_with(".new")
                || n.ends_with(".ren")
                || n.ends_with(".del")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_follows_a_cycle() {
        let mut model = SchemaModel::new();
        for n in 0..3 {
            for op in cycle(n, &model) {
                apply(&mut model, &op);
            }
        }
        // Cycle 0 is gone (dropped by cycle 2); cycles 1 and 2 remain.
        assert!(model.keys().all(|k| !k.starts_with("c0_")), "{model:#?}");
        let i2 = &model["c2_i2"];
        assert_eq!(
            i2.columns.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
            ["id", "v", "c", "d"]
        );
        assert_eq!(
            i2.row_strings(),
            ["1,102,7,3", "3,2,7,3", "4,2,7,3", "5,2,7,3", "6,2,7,3"]
        );
        // The swap: s1 holds what s2 was (MyISAM, 2 rows) plus the row added later.
        assert_eq!(model["c2_s1"].engine, "MyISAM");
        assert_eq!(model["c2_s1"].row_strings(), ["1,2", "2,2", "9,2"]);
        assert_eq!(model["c2_s2"].engine, "InnoDB");
        let t = &model["c2_t"];
        assert_eq!(t.row_strings(), ["10,2", "11,2", "12,2", "13,2"]);
        assert_eq!(
            (t.engine, t.indexes.as_slice()),
            ("Aria", ["i_v".to_string()].as_slice())
        );
        assert_eq!(model["c2_m2"].row_strings(), ["21,2"]);
        assert_eq!(model["c2_a2"].row_strings()[0], "1,202");
        let p = &model["c2_p"];
        assert_eq!(
            p.partitions,
            [
                ("p1".to_string(), 20),
                ("p2a".to_string(), 26),
                ("p2b".to_string(), 30)
            ]
        );
        assert_eq!(p.row_strings(), ["16,2", "25,2"]);
        assert!(!model.contains_key("c2_d"));
    }
}
