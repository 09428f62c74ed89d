//! A concurrent "bank" workload whose every commit is recorded with its GTID, and the
//! oracle that checks a restored server against it.
//!
//! The workload (schema `bank`):
//! - `accounts(id, balance)` (InnoDB): `clients` tasks each loop over one transaction
//!   that moves a random amount between two random accounts and inserts
//!   `(client, seq)` into `ledger` (InnoDB), then commits. `SUM(balance)` never
//!   changes, each client's seqs have no gap, and because every transfer is kept in
//!   memory with the GTID it committed as (`@@last_gtid` right after `COMMIT`), the
//!   exact balance of every account at any GTID is known.
//! - `myisam_log(client, seq)` (MyISAM) and `aria_log(client, seq)` (Aria,
//!   `TRANSACTIONAL=1`): `clients` more tasks per engine append their own seq counter in
//!   autocommit statements, each recorded with its GTID too.
//!
//! Every task has its own connection, retries lock waits (1205) and deadlocks (1213),
//! and uses `lock_wait_timeout = 120` so that the MyISAM appends simply wait while a
//! backup holds `BACKUP STAGE FLUSH`…`END`.
//!
//! Usage:
//! ```ignore
//! let opts = WorkloadOptions::default();
//! create_schema(&mut conn, &opts).await;
//! let workload = Workload::start(server.opts(), &opts);
//! workload.wait_for_commits(200, Duration::from_secs(30)).await;
//! // … take a backup …
//! let log = workload.stop().await;
//! let report = verify(&mut restored_conn, &log, &opts, upto_seq_no).await;
//! assert!(report.violations.is_empty(), "{report:#?}");
//! ```
//!
//! The server must write a binlog (`log-bin`) with one `server-id`, so that GTIDs are
//! `0-<server_id>-N` with N increasing in commit order.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Shape of the workload.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Tasks doing InnoDB transfers; as many again append to each of MyISAM and Aria
    /// (when enabled).
    pub clients: u32,
    /// Number of accounts (ids 1..=accounts).
    pub accounts: u32,
    /// Initial balance of every account.
    pub initial_balance: i64,
    /// Table options appended to `CREATE TABLE bank.accounts (…) ENGINE=InnoDB`, e.g.
    /// `PARTITION BY HASH(id) PARTITIONS 4` or `PAGE_COMPRESSED=1`.
    pub accounts_options: String,
    /// Table options appended to `CREATE TABLE bank.ledger (…) ENGINE=InnoDB`.
    pub ledger_options: String,
    /// Also append to `bank.myisam_log`.
    pub myisam: bool,
    /// Also append to `bank.aria_log`.
    pub aria: bool,
    /// Pause after each operation (leaves CPU to the backup on small machines).
    pub pause: Duration,
    /// Seed of the per-client random generators.
    pub seed: u64,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            clients: 3,
            accounts: 100,
            initial_balance: 1000,
            accounts_options: String::new(),
            ledger_options: String::new(),
            myisam: true,
            aria: true,
            pause: Duration::ZERO,
            seed: 0x5eed_cafe,
        }
    }
}

impl WorkloadOptions {
    /// `SUM(balance)` at every moment.
    pub fn total(&self) -> i64 {
        i64::from(self.accounts) * self.initial_balance
    }
}

/// A GTID `domain-server_id-seq_no`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gtid {
    pub domain: u32,
    pub server_id: u32,
    pub seq_no: u64,
}

impl Gtid {
    /// Parses `0-1-123`.
    pub fn parse(text: &str) -> Option<Gtid> {
        let mut parts = text.trim().splitn(3, '-');
        Some(Gtid {
            domain: parts.next()?.parse().ok()?,
            server_id: parts.next()?.parse().ok()?,
            seq_no: parts.next()?.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Gtid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server_id, self.seq_no)
    }
}

/// Parses a GTID position (`0-1-10,1-2-5`, possibly empty) into its GTIDs.
pub fn parse_gtid_pos(text: &str) -> Vec<Gtid> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| Gtid::parse(p).unwrap_or_else(|| panic!("bad GTID {p:?} in {text:?}")))
        .collect()
}

/// The seq_no of domain 0 in a GTID position (0 when the position is empty); panics if
/// the position has another domain (the workload's servers only use domain 0).
pub fn domain0_seq_no(text: &str) -> u64 {
    let gtids = parse_gtid_pos(text);
    assert!(
        gtids.iter().all(|g| g.domain == 0),
        "GTID position {text:?} has a domain other than 0"
    );
    gtids.first().map_or(0, |g| g.seq_no)
}

/// One committed InnoDB transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub client: u32,
    pub seq: u32,
    pub from: u32,
    pub to: u32,
    pub amount: i64,
    pub gtid: Gtid,
}

/// One committed autocommit append (MyISAM or Aria).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Append {
    pub client: u32,
    pub seq: u32,
    pub gtid: Gtid,
}

/// Everything the workload committed, in commit order per client.
#[derive(Debug, Clone, Default)]
pub struct WorkloadLog {
    pub transfers: Vec<Transfer>,
    pub myisam: Vec<Append>,
    pub aria: Vec<Append>,
    /// Lock waits (1205) and deadlocks (1213) that were retried.
    pub retries: u64,
    /// The longest a single operation took (e.g. a MyISAM insert waiting for a backup).
    pub longest_op: Duration,
}

impl WorkloadLog {
    /// Commits (of every engine) with a GTID seq_no in `(after, upto]`.
    pub fn commits_between(&self, after: u64, upto: u64) -> usize {
        let within = |g: &Gtid| g.seq_no > after && g.seq_no <= upto;
        self.transfers.iter().filter(|t| within(&t.gtid)).count()
            + self.myisam.iter().filter(|a| within(&a.gtid)).count()
            + self.aria.iter().filter(|a| within(&a.gtid)).count()
    }

    /// Transfers with a GTID seq_no in `(after, upto]`.
    pub fn transfers_between(&self, after: u64, upto: u64) -> usize {
        self.transfers
            .iter()
            .filter(|t| t.gtid.seq_no > after && t.gtid.seq_no <= upto)
            .count()
    }

    /// The exact balance of every account once every transfer up to GTID seq_no `upto`
    /// (domain 0) is applied.
    pub fn balances_at(&self, opts: &WorkloadOptions, upto: u64) -> BTreeMap<u32, i64> {
        let mut b: BTreeMap<u32, i64> = (1..=opts.accounts)
            .map(|id| (id, opts.initial_balance))
            .collect();
        for t in self.transfers.iter().filter(|t| t.gtid.seq_no <= upto) {
            *b.entry(t.from).or_default() -= t.amount;
            *b.entry(t.to).or_default() += t.amount;
        }
        b
    }
}

/// Creates schema `bank` with its tables and the initial balances.
pub async fn create_schema(conn: &mut Conn, opts: &WorkloadOptions) {
    let values: Vec<String> = (1..=opts.accounts)
        .map(|id| format!("({id}, {})", opts.initial_balance))
        .collect();
    let mut statements = vec![
        "CREATE DATABASE bank".to_owned(),
        format!(
            "CREATE TABLE bank.accounts (id INT NOT NULL PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB {}",
            opts.accounts_options
        ),
        format!(
            "CREATE TABLE bank.ledger (client INT NOT NULL, seq INT NOT NULL, PRIMARY KEY (client, seq)) ENGINE=InnoDB {}",
            opts.ledger_options
        ),
        format!("INSERT INTO bank.accounts VALUES {}", values.join(", ")),
    ];
    if opts.myisam {
        statements.push(
            "CREATE TABLE bank.myisam_log (client INT NOT NULL, seq INT NOT NULL) ENGINE=MyISAM"
                .to_owned(),
        );
    }
    if opts.aria {
        statements.push(
            "CREATE TABLE bank.aria_log (client INT NOT NULL, seq INT NOT NULL) ENGINE=Aria TRANSACTIONAL=1"
                .to_owned(),
        );
    }
    for sql in statements {
        if let Err(e) = conn.query_drop(&sql).await {
            panic!("workload schema: {sql:?} failed: {e}");
        }
    }
}

/// The tables [`create_schema`] creates with these options, as `bank.<name>`.
pub fn tables(opts: &WorkloadOptions) -> Vec<String> {
    let mut t = vec!["bank.accounts".to_owned(), "bank.ledger".to_owned()];
    if opts.myisam {
        t.push("bank.myisam_log".to_owned());
    }
    if opts.aria {
        t.push("bank.aria_log".to_owned());
    }
    t
}

enum TaskLog {
    Transfers(Vec<Transfer>, u64, Duration),
    Appends(&'static str, Vec<Append>, u64, Duration),
}

/// A running workload: its tasks write until [`Workload::stop`].
pub struct Workload {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<TaskLog>>,
}

impl Workload {
    /// Starts the tasks, each with its own connection (`opts`). The schema must exist
    /// ([`create_schema`]). A task panics (and [`Workload::stop`] with it) on any error
    /// but a retried lock wait or deadlock.
    pub fn start(conn_opts: Opts, opts: &WorkloadOptions) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for client in 1..=opts.clients {
            let ctx = TaskCtx {
                conn_opts: conn_opts.clone(),
                opts: opts.clone(),
                client,
                stop: stop.clone(),
                commits: commits.clone(),
            };
            tasks.push(tokio::spawn(transfer_task(ctx)));
            for (enabled, table) in [(opts.myisam, "myisam_log"), (opts.aria, "aria_log")] {
                if enabled {
                    let ctx = TaskCtx {
                        conn_opts: conn_opts.clone(),
                        opts: opts.clone(),
                        client,
                        stop: stop.clone(),
                        commits: commits.clone(),
                    };
                    tasks.push(tokio::spawn(append_task(ctx, table)));
                }
            }
        }
        Workload {
            stop,
            commits,
            tasks,
        }
    }

    /// Commits so far (all engines).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` commits happened in total; panics after `timeout`.
    pub async fn wait_for_commits(&self, n: u64, timeout: Duration) {
        let t0 = Instant::now();
        while self.commits() < n {
            assert!(
                t0.elapsed() < timeout,
                "the workload made only {} of {n} commits in {timeout:?}",
                self.commits()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every task after its current operation and returns what was committed.
    pub async fn stop(self) -> WorkloadLog {
        self.stop.store(true, Ordering::Relaxed);
        let mut log = WorkloadLog::default();
        for task in self.tasks {
            match task.await {
                Ok(TaskLog::Transfers(t, retries, longest)) => {
                    log.transfers.extend(t);
                    log.retries += retries;
                    log.longest_op = log.longest_op.max(longest);
                }
                Ok(TaskLog::Appends(table, a, retries, longest)) => {
                    if table == "myisam_log" {
                        log.myisam.extend(a);
                    } else {
                        log.aria.extend(a);
                    }
                    log.retries += retries;
                    log.longest_op = log.longest_op.max(longest);
                }
                Err(e) => panic!("a workload task failed: {e}"),
            }
        }
        log
    }
}

struct TaskCtx {
    conn_opts: Opts,
    opts: WorkloadOptions,
    client: u32,
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
}

impl TaskCtx {
    async fn connect(&self) -> Conn {
        let mut conn = Conn::new(self.conn_opts.clone())
            .await
            .unwrap_or_else(|e| panic!("workload client {}: cannot connect: {e}", self.client));
        conn.query_drop("SET SESSION lock_wait_timeout = 120, innodb_lock_wait_timeout = 120")
            .await
            .unwrap_or_else(|e| panic!("workload client {}: session setup: {e}", self.client));
        conn
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// xorshift64*: no dependency, reproducible per seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// Lock wait timeout (InnoDB row lock or metadata lock) or deadlock.
fn retryable(e: &mysql_async::Error) -> bool {
    matches!(server_code(e), Some(1205 | 1213))
}

async fn last_gtid(conn: &mut Conn, client: u32) -> Gtid {
    let text: Option<String> = conn
        .query_first("SELECT @@last_gtid")
        .await
        .unwrap_or_else(|e| panic!("workload client {client}: SELECT @@last_gtid: {e}"));
    let text = text.unwrap_or_default();
    Gtid::parse(&text)
        .unwrap_or_else(|| panic!("workload client {client}: @@last_gtid is {text:?}"))
}

async fn transfer_task(ctx: TaskCtx) -> TaskLog {
    let mut conn = ctx.connect().await;
    let mut rng = Rng::new(ctx.opts.seed ^ u64::from(ctx.client));
    let mut done = Vec::new();
    let mut retries = 0;
    let mut longest = Duration::ZERO;
    let mut seq = 0u32;
    let accounts = u64::from(ctx.opts.accounts);
    while !ctx.stopped() {
        seq += 1;
        let a = rng.below(accounts) as u32 + 1;
        let b = (a as u64 + rng.below(accounts - 1)) % accounts + 1;
        let b = b as u32;
        let amount = rng.below(50) as i64 + 1;
        // Rows are locked in id order: transfers never deadlock with each other.
        let (first, second) = (a.min(b), a.max(b));
        let delta = |id: u32| if id == a { -amount } else { amount };
        let statements = [
            "BEGIN".to_owned(),
            format!(
                "UPDATE bank.accounts SET balance = balance + ({}) WHERE id = {first}",
                delta(first)
            ),
            format!(
                "UPDATE bank.accounts SET balance = balance + ({}) WHERE id = {second}",
                delta(second)
            ),
            format!(
                "INSERT INTO bank.ledger (client, seq) VALUES ({}, {seq})",
                ctx.client
            ),
            "COMMIT".to_owned(),
        ];
        let t0 = Instant::now();
        loop {
            let mut failed = None;
            for sql in &statements {
                if let Err(e) = conn.query_drop(sql).await {
                    failed = Some((sql, e));
                    break;
                }
            }
            match failed {
                None => break,
                Some((_, e)) if retryable(&e) => {
                    retries += 1;
                    let _ = conn.query_drop("ROLLBACK").await;
                }
                Some((sql, e)) => panic!("workload client {}: {sql:?}: {e}", ctx.client),
            }
        }
        longest = longest.max(t0.elapsed());
        let gtid = last_gtid(&mut conn, ctx.client).await;
        done.push(Transfer {
            client: ctx.client,
            seq,
            from: a,
            to: b,
            amount,
            gtid,
        });
        ctx.commits.fetch_add(1, Ordering::Relaxed);
        if !ctx.opts.pause.is_zero() {
            tokio::time::sleep(ctx.opts.pause).await;
        }
    }
    let _ = conn.disconnect().await;
    TaskLog::Transfers(done, retries, longest)
}

async fn append_task(ctx: TaskCtx, table: &'static str) -> TaskLog {
    let mut conn = ctx.connect().await;
    let mut done = Vec::new();
    let mut retries = 0;
    let mut longest = Duration::ZERO;
    let mut seq = 0u32;
    while !ctx.stopped() {
        seq += 1;
        let sql = format!(
            "INSERT INTO bank.{table} (client, seq) VALUES ({}, {seq})",
            ctx.client
        );
        let t0 = Instant::now();
        loop {
            match conn.query_drop(&sql).await {
                Ok(()) => break,
                Err(e) if retryable(&e) => retries += 1,
                Err(e) => panic!("workload client {}: {sql:?}: {e}", ctx.client),
            }
        }
        longest = longest.max(t0.elapsed());
        let gtid = last_gtid(&mut conn, ctx.client).await;
        done.push(Append {
            client: ctx.client,
            seq,
            gtid,
        });
        ctx.commits.fetch_add(1, Ordering::Relaxed);
        if !ctx.opts.pause.is_zero() {
            tokio::time::sleep(ctx.opts.pause).await;
        }
    }
    let _ = conn.disconnect().await;
    TaskLog::Appends(table, done, retries, longest)
}

/// What [`verify`] found on a server.
#[derive(Debug, Clone, Default)]
pub struct OracleReport {
    /// The GTID seq_no (domain 0) the data was checked against.
    pub upto: u64,
    pub sum_balance: i64,
    pub ledger_rows: usize,
    pub myisam_rows: usize,
    pub aria_rows: usize,
    /// Transfers expected (GTID ≤ upto), and the highest such GTID seq_no.
    pub expected_transfers: usize,
    pub last_transfer_seq_no: u64,
    /// Every broken invariant, one sentence each (empty when all hold).
    pub violations: Vec<String>,
}

/// Checks a server's `bank` schema against the workload log: the data must hold exactly
/// the operations whose GTID seq_no (domain 0) is ≤ `upto`, nothing later, nothing
/// missing. Checks `SUM(balance)`, every account's exact balance, the ledger rows
/// (per client exactly 1..k, no gap), and the MyISAM and Aria appends.
pub async fn verify(
    conn: &mut Conn,
    log: &WorkloadLog,
    opts: &WorkloadOptions,
    upto: u64,
) -> OracleReport {
    let mut r = OracleReport {
        upto,
        ..OracleReport::default()
    };
    let sum: Option<i64> = conn
        .query_first("SELECT CAST(SUM(balance) AS SIGNED) FROM bank.accounts")
        .await
        .expect("SELECT SUM(balance)");
    r.sum_balance = sum.unwrap_or_default();
    if r.sum_balance != opts.total() {
        r.violations.push(format!(
            "SUM(balance) is {} but must stay {}",
            r.sum_balance,
            opts.total()
        ));
    }

    // Every account's balance.
    let expected = log.balances_at(opts, upto);
    let rows: Vec<(u32, i64)> = conn
        .query("SELECT id, balance FROM bank.accounts ORDER BY id")
        .await
        .expect("SELECT accounts");
    let got: BTreeMap<u32, i64> = rows.into_iter().collect();
    if got.len() != expected.len() {
        r.violations.push(format!(
            "accounts has {} rows, expected {}",
            got.len(),
            expected.len()
        ));
    }
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(id, b)| got.get(id) != Some(b))
        .map(|(id, b)| {
            // The transfers that touched the account, to tell which update is missing.
            let touching: Vec<String> = log
                .transfers
                .iter()
                .filter(|t| t.from == *id || t.to == *id)
                .map(|t| {
                    let delta = if t.from == *id { -t.amount } else { t.amount };
                    format!(
                        "{delta:+} by client {} seq {} at {}",
                        t.client, t.seq, t.gtid
                    )
                })
                .collect();
            format!(
                "#{id}: {:?} (expected {b}; transfers: {})",
                got.get(id),
                touching.join(", ")
            )
        })
        .collect();
    if !wrong.is_empty() {
        r.violations.push(format!(
            "{} accounts differ from the balances at GTID 0-x-{upto}: {}",
            wrong.len(),
            wrong
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    // Ledger rows: exactly the transfers up to `upto`.
    let expected_ledger: BTreeSet<(u32, u32)> = log
        .transfers
        .iter()
        .filter(|t| t.gtid.seq_no <= upto)
        .map(|t| (t.client, t.seq))
        .collect();
    r.expected_transfers = expected_ledger.len();
    r.last_transfer_seq_no = log
        .transfers
        .iter()
        .map(|t| t.gtid.seq_no)
        .filter(|&s| s <= upto)
        .max()
        .unwrap_or(0);
    let ledger = rows_of(conn, "bank.ledger").await;
    r.ledger_rows = ledger.len();
    compare_rows(
        &mut r.violations,
        "bank.ledger",
        &ledger,
        &expected_ledger,
        |c, s| {
            log.transfers
                .iter()
                .find(|t| t.client == c && t.seq == s)
                .map(|t| t.gtid)
        },
    );
    check_no_gap(&mut r.violations, "bank.ledger", &ledger);

    for (enabled, table, appends) in [
        (opts.myisam, "bank.myisam_log", &log.myisam),
        (opts.aria, "bank.aria_log", &log.aria),
    ] {
        if !enabled {
            continue;
        }
        let expected: BTreeSet<(u32, u32)> = appends
            .iter()
            .filter(|a| a.gtid.seq_no <= upto)
            .map(|a| (a.client, a.seq))
            .collect();
        let rows = rows_of(conn, table).await;
        if table == "bank.myisam_log" {
            r.myisam_rows = rows.len();
        } else {
            r.aria_rows = rows.len();
        }
        compare_rows(&mut r.violations, table, &rows, &expected, |c, s| {
            appends
                .iter()
                .find(|a| a.client == c && a.seq == s)
                .map(|a| a.gtid)
        });
        check_no_gap(&mut r.violations, table, &rows);
    }
    r
}

/// `(client, seq)` rows of a table, as a multiset check: duplicates are violations too
/// (reported by [`compare_rows`] through the count).
async fn rows_of(conn: &mut Conn, table: &str) -> Vec<(u32, u32)> {
    conn.query(format!(
        "SELECT client, seq FROM {table} ORDER BY client, seq"
    ))
    .await
    .unwrap_or_else(|e| panic!("SELECT FROM {table}: {e}"))
}

fn compare_rows(
    violations: &mut Vec<String>,
    table: &str,
    rows: &[(u32, u32)],
    expected: &BTreeSet<(u32, u32)>,
    gtid_of: impl Fn(u32, u32) -> Option<Gtid>,
) {
    let got: BTreeSet<(u32, u32)> = rows.iter().copied().collect();
    if got.len() != rows.len() {
        violations.push(format!(
            "{table}: {} rows but only {} distinct (client, seq)",
            rows.len(),
            got.len()
        ));
    }
    let show = |set: Vec<&(u32, u32)>| -> String {
        let n = set.len();
        let mut parts: Vec<String> = set
            .into_iter()
            .take(8)
            .map(|&(c, s)| match gtid_of(c, s) {
                Some(g) => format!("({c},{s}) gtid {g}"),
                None => format!("({c},{s}) never committed by the workload"),
            })
            .collect();
        if n > 8 {
            parts.push(format!("… {} more", n - 8));
        }
        parts.join(", ")
    };
    let extra: Vec<&(u32, u32)> = got.difference(expected).collect();
    if !extra.is_empty() {
        violations.push(format!(
            "{table}: {} rows committed after the backup's GTID are present: {}",
            extra.len(),
            show(extra)
        ));
    }
    let missing: Vec<&(u32, u32)> = expected.difference(&got).collect();
    if !missing.is_empty() {
        violations.push(format!(
            "{table}: {} rows committed up to the backup's GTID are missing: {}",
            missing.len(),
            show(missing)
        ));
    }
}

/// Each client's seqs must be exactly 1..=max.
fn check_no_gap(violations: &mut Vec<String>, table: &str, rows: &[(u32, u32)]) {
    let mut by_client: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &(c, s) in rows {
        by_client.entry(c).or_default().push(s);
    }
    for (c, mut seqs) in by_client {
        seqs.sort_unstable();
        seqs.dedup();
        let max = seqs.last().copied().unwrap_or(0);
        if seqs.len() as u32 != max || seqs.first() != Some(&1) {
            violations.push(format!(
                "{table}: client {c} has {} distinct seqs up to {max}: a gap",
                seqs.len()
            ));
        }
    }
}

/// The outcome of [`check_tables`] for one table.
#[derive(Debug, Clone)]
pub struct CheckedTable {
    pub table: String,
    /// Every row `CHECK TABLE` returned, as `msg_type: msg_text`.
    pub check: Vec<String>,
    /// The rows of `REPAIR TABLE` and of the second `CHECK TABLE`, when the first check
    /// was not OK.
    pub repair: Option<Vec<String>>,
    /// The last `CHECK TABLE` ended with `status: OK`.
    pub ok: bool,
}

/// `CHECK TABLE` on each table; a table that is not OK gets `REPAIR TABLE` and a second
/// `CHECK TABLE` (MyISAM copied while open reports "marked as crashed" or "not closed
/// properly" and is repaired). The caller decides what is acceptable.
pub async fn check_tables(conn: &mut Conn, tables: &[String]) -> Vec<CheckedTable> {
    async fn run(conn: &mut Conn, sql: &str) -> Vec<(String, String)> {
        let rows: Vec<(String, String, String, String)> = conn
            .query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.into_iter().map(|(_, _, t, m)| (t, m)).collect()
    }
    fn is_ok(rows: &[(String, String)]) -> bool {
        rows.last().is_some_and(|(t, m)| {
            t == "status" && (m == "OK" || m == "Table is already up to date")
        }) && !rows.iter().any(|(t, _)| t == "error")
    }
    let fmt = |rows: &[(String, String)]| rows.iter().map(|(t, m)| format!("{t}: {m}")).collect();
    let mut out = Vec::new();
    for table in tables {
        let check = run(conn, &format!("CHECK TABLE {table}")).await;
        let mut ok = is_ok(&check);
        let repair = if ok {
            None
        } else {
            let mut rows = run(conn, &format!("REPAIR TABLE {table}")).await;
            let again = run(conn, &format!("CHECK TABLE {table}")).await;
            ok = is_ok(&again);
            rows.extend(again);
            Some(fmt(&rows))
        };
        out.push(CheckedTable {
            table: table.clone(),
            check: fmt(&check),
            repair,
            ok,
        });
    }
    out
}
