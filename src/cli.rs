use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use stagehand_engine::executor::RunError;
use stagehand_engine::{dryrun, graph, params, schema, Checker, Diagnostic, Loaded, RunOptions};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `println!` for the command's output: when stdout is a closed pipe (`stagehand steps
/// | head -1`) the command ends quietly with status 0, as `rg` and `git` do, instead of
/// panicking; any other write error is reported and exits 1.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::cli::stdout_failed(e)
        }
    }};
}

/// `print!` with the same handling as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            $crate::cli::stdout_failed(e)
        }
    }};
}

mod backups;
mod binlogs;
mod runs;

/// Ends the process after a failed write of its output (see [`outln!`]).
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(EXIT_OK)
    }
    eprintln!("error: cannot write the output: {e}");
    std::process::exit(EXIT_FAILED)
}

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

#[derive(Parser)]
#[command(
    name = "stagehand",
    version,
    about = "Declarative hot physical backups for MariaDB"
)]
struct Cli {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only warnings and errors in the log.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Progress bars for copy, compress, upload and fetch: on a terminal (auto), always,
    /// or never (then a progress line in the log every --progress-every).
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto, env = "STAGEHAND_PROGRESS", global = true)]
    progress: ProgressMode,
    /// How often a long step logs how far it is when no bar is shown.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, env = "STAGEHAND_PROGRESS_EVERY", global = true)]
    progress_every: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProgressMode {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
}

#[derive(Subcommand)]
enum Command {
    /// Run a plan (or show what it would do with --dry-run).
    Run {
        plan: PathBuf,
        /// Set a param: --set name=value (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        sets: Vec<String>,
        /// Show what would run, with rendered configs; connects nowhere, writes nothing.
        #[arg(long)]
        dry_run: bool,
        /// Preflight: connect read-only and check what the steps need (privileges, paths,
        /// free space, redo log headroom); runs no step.
        #[arg(long, conflicts_with = "dry_run")]
        check: bool,
        /// Print the report (or the dry-run) as JSON.
        #[arg(long)]
        json: bool,
        /// Where run journals and reports go [default: $STAGEHAND_STATE_DIR or ~/.local/state/stagehand].
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// How long a cancelled or timed-out step gets to clean up.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Write the run's metrics here at the end (Prometheus text format, atomically:
        /// point node_exporter's textfile collector at its directory).
        #[arg(long, env = "STAGEHAND_METRICS_FILE", value_name = "PATH")]
        metrics_file: Option<PathBuf>,
        /// Also push the metrics to this Prometheus Pushgateway (job `stagehand`,
        /// grouped by plan).
        #[arg(long, env = "STAGEHAND_PUSHGATEWAY", value_name = "URL")]
        pushgateway: Option<String>,
    },
    /// Past runs recorded in the state directory: list, show, and the dead-man check.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Backups in a repository (local directory or S3): list, show.
    Backups {
        #[command(subcommand)]
        command: backups::BackupsCommand,
    },
    /// The binlog archive of a repository (point-in-time restores): list.
    Binlogs {
        #[command(subcommand)]
        command: binlogs::BinlogsCommand,
    },
    /// Print a shell completion script: `stagehand completions bash > /etc/bash_completion.d/stagehand`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Check plan files; every problem is reported with file:line:column.
    Validate {
        #[arg(required = true)]
        plans: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Print a plan's step graph.
    Graph {
        plan: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Print the JSON Schema of the plan format.
    Schema,
    /// List step kinds with their fields and outputs.
    Steps {
        /// Show one kind in full.
        kind: Option<String>,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// List recorded runs, newest first.
    List {
        /// Only the runs of this plan.
        #[arg(long)]
        plan: Option<String>,
        /// Show at most this many.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
        /// [default: $STAGEHAND_STATE_DIR or ~/.local/state/stagehand]
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Show one run: status, params, steps with their times, errors and hints.
    Show {
        /// A run id, or a prefix or suffix of one that names a single run.
        id: String,
        /// The run's report.json as recorded.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Dead-man check: exit 0 when a successful run of the plan finished within
    /// --max-age, else exit 1 saying when the last success was.
    Check {
        #[arg(long)]
        plan: String,
        /// e.g. 26h for a nightly plan.
        #[arg(long, value_parser = humantime::parse_duration)]
        max_age: Duration,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    init_logging(&cli);
    configure_progress(&cli);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_FAILED
        }
    }
}

fn configure_progress(cli: &Cli) {
    use stagehand_host::progress::{configure, Bars};
    let bars = match (cli.progress, cli.log_format) {
        (ProgressMode::Never, _) => Bars::Never,
        (ProgressMode::Always, _) => Bars::Always,
        // JSON logs are for machines: no bars among them.
        (ProgressMode::Auto, LogFormat::Json) => Bars::Never,
        (ProgressMode::Auto, LogFormat::Text) => Bars::Auto,
    };
    configure(bars, cli.progress_every);
}

fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    // The AWS SDK logs each credential provider it tries (kilobytes of debug structs
    // at WARN); the failure that matters reaches our own error. Shown with -vv.
    let sdk = if cli.verbose >= 2 { "trace" } else { "error" };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("STAGEHAND_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!(
                "{level},aws_config={sdk},aws_smithy_runtime={sdk},aws_sdk_s3={sdk}"
            ))
        });
    // Colour only for a person at a terminal: logs piped to a file or journald stay
    // plain text (https://no-color.org turns it off everywhere).
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}

fn dispatch(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Run {
            plan,
            sets,
            dry_run,
            check,
            json,
            state_dir,
            grace,
            metrics_file,
            pushgateway,
        } => {
            if check {
                preflight(&plan, &sets, json)
            } else {
                let outputs = RunOutputs {
                    json,
                    metrics_file,
                    pushgateway,
                };
                run(&plan, &sets, dry_run, state_dir, grace, outputs)
            }
        }
        Command::Runs { command } => Ok(runs::dispatch(command_args(command))),
        Command::Backups { command } => backups::dispatch(command),
        Command::Binlogs { command } => binlogs::dispatch(command),
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a failed write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "stagehand", &mut script);
            out!("{}", String::from_utf8_lossy(&script));
            Ok(EXIT_OK)
        }
        Command::Validate { plans, json } => Ok(validate(&plans, json)),
        Command::Graph { plan, format } => {
            let Some((loaded, _)) = load_or_report(&plan, &[], true) else {
                return Ok(EXIT_USAGE);
            };
            let text = match format {
                GraphFormat::Mermaid => graph::mermaid(&loaded.plan),
                GraphFormat::Dot => graph::dot(&loaded.plan),
            };
            out!("{text}");
            Ok(EXIT_OK)
        }
        Command::Schema => {
            outln!("{}", schema_text());
            Ok(EXIT_OK)
        }
        Command::Steps { kind } => Ok(list_steps(kind.as_deref())),
    }
}

/// The plan JSON Schema as checked in at schemas/plan.schema.json.
pub fn schema_text() -> String {
    let provider = stagehand_steps::connection_provider();
    let value = schema::plan_schema(&stagehand_steps::registry(), Some(provider.as_ref()));
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// Loads a plan; on failure prints every problem and returns None (exit 2).
fn load_or_report(
    path: &Path,
    sets: &[(String, String)],
    allow_missing: bool,
) -> Option<(Loaded, BTreeMap<String, serde_json::Value>)> {
    match load(path, sets, allow_missing) {
        Ok(l) => Some(l),
        Err(text) => {
            eprintln!("{text}");
            None
        }
    }
}

fn load(
    path: &Path,
    sets: &[(String, String)],
    allow_missing: bool,
) -> Result<(Loaded, BTreeMap<String, serde_json::Value>), String> {
    let file = path.display().to_string();
    let text = read_plan(path)?;
    let registry = stagehand_steps::registry();
    let provider = stagehand_steps::connection_provider();
    let checker = Checker {
        registry: &registry,
        provider: Some(provider.as_ref()),
    };
    let loaded = checker
        .load_text(&file, &text, sets, allow_missing)
        .map_err(|diags| {
            let mut out: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            out.push(format!(
                "{file}: {} problem(s); nothing was run",
                error_count(&diags)
            ));
            out.join("\n")
        })?;
    for w in &loaded.0.warnings {
        eprintln!("{w}");
    }
    Ok(loaded)
}

fn error_count(diags: &[Diagnostic]) -> usize {
    diags.iter().filter(|d| d.is_error()).count()
}

/// A plan file's text, read no further than the plan size bound (a plan path pointing
/// at a device or a huge file is refused, not loaded).
fn read_plan(path: &Path) -> Result<String, String> {
    use stagehand_engine::parse::{too_large, MAX_PLAN_BYTES};
    let file = path.display().to_string();
    let cannot_read = |e: std::io::Error| format!("{file}: error: cannot read the plan: {e}");
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PLAN_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(cannot_read)?;
    if bytes.len() > MAX_PLAN_BYTES {
        let size = std::fs::metadata(path).map_or(bytes.len(), |m| m.len() as usize);
        let (message, hint) = too_large(size.max(bytes.len()));
        let d = Diagnostic {
            severity: stagehand_engine::diag::Severity::Error,
            file: file.clone(),
            line: 1,
            column: 1,
            path: String::new(),
            message,
            hint: Some(hint),
        };
        return Err(d.to_string());
    }
    String::from_utf8(bytes).map_err(|_| {
        cannot_read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

fn validate(plans: &[PathBuf], json: bool) -> i32 {
    let mut all_ok = true;
    let mut results = Vec::new();
    let registry = stagehand_steps::registry();
    let provider = stagehand_steps::connection_provider();
    let checker = Checker {
        registry: &registry,
        provider: Some(provider.as_ref()),
    };
    for path in plans {
        let file = path.display().to_string();
        // Every problem in file order, warnings among them.
        let diags: Vec<Diagnostic> = match read_plan(path) {
            Err(e) => {
                all_ok = false;
                report_unreadable(&mut results, &file, e, json);
                continue;
            }
            Ok(text) => match checker.load_text(&file, &text, &[], true) {
                Ok((loaded, _)) => loaded.warnings,
                Err(d) => d,
            },
        };
        let errors = error_count(&diags);
        all_ok &= errors == 0;
        if json {
            let (errors, warnings): (Vec<&Diagnostic>, Vec<&Diagnostic>) =
                diags.iter().partition(|d| d.is_error());
            let text = |ds: Vec<&Diagnostic>| ds.iter().map(|d| d.to_string()).collect::<Vec<_>>();
            results.push(serde_json::json!({"file": file, "ok": errors.is_empty(),
                "errors": text(errors), "warnings": text(warnings)}));
            continue;
        }
        for d in &diags {
            eprintln!("{d}");
        }
        if errors == 0 {
            outln!("{file}: ok");
        } else {
            eprintln!("{file}: {errors} problem(s)");
        }
    }
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&results).unwrap_or_default()
        );
    }
    if all_ok {
        EXIT_OK
    } else {
        EXIT_USAGE
    }
}

/// A plan file that cannot be read (or is too large): one error.
fn report_unreadable(results: &mut Vec<serde_json::Value>, file: &str, error: String, json: bool) {
    if json {
        results.push(
            serde_json::json!({"file": file, "ok": false, "errors": [error], "warnings": []}),
        );
    } else {
        eprintln!("{error}");
        eprintln!("{file}: 1 problem(s)");
    }
}

fn parse_sets(sets: &[String]) -> Result<Vec<(String, String)>, String> {
    sets.iter()
        .map(|s| params::parse_set(s).map_err(|e| e.to_string()))
        .collect()
}

fn command_args(c: RunsCommand) -> runs::Args {
    use runs::Args;
    match c {
        RunsCommand::List {
            plan,
            limit,
            json,
            state_dir,
        } => Args::List {
            plan,
            limit,
            json,
            state_dir: state_dir.unwrap_or_else(default_state_dir),
        },
        RunsCommand::Show {
            id,
            json,
            state_dir,
        } => Args::Show {
            id,
            json,
            state_dir: state_dir.unwrap_or_else(default_state_dir),
        },
        RunsCommand::Check {
            plan,
            max_age,
            json,
            state_dir,
        } => Args::Check {
            plan,
            max_age,
            json,
            state_dir: state_dir.unwrap_or_else(default_state_dir),
        },
    }
}

/// Where a run's results go besides the state directory.
struct RunOutputs {
    json: bool,
    metrics_file: Option<PathBuf>,
    pushgateway: Option<String>,
}

fn run(
    plan: &Path,
    sets: &[String],
    dry_run: bool,
    state_dir: Option<PathBuf>,
    grace: Duration,
    outputs: RunOutputs,
) -> anyhow::Result<i32> {
    let json = outputs.json;
    let Some((loaded, params)) = load_for_run(plan, sets) else {
        return Ok(EXIT_USAGE);
    };
    let registry = stagehand_steps::registry();
    let provider = stagehand_steps::connection_provider();
    if dry_run {
        let d = dryrun::dry_run(&loaded, &registry, Some(provider.as_ref()), &params);
        if json {
            outln!("{}", serde_json::to_string_pretty(&d)?);
        } else {
            out!("{}", d.to_text());
        }
        return Ok(EXIT_OK);
    }
    let state_dir = state_dir.unwrap_or_else(default_state_dir);
    let history_dir = state_dir.clone();
    let interrupt = CancellationToken::new();
    let abort = CancellationToken::new();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        spawn_signal_watch(interrupt.clone(), abort.clone());
        let opts = RunOptions {
            state_dir,
            params,
            interrupt,
            abort,
            grace,
        };
        stagehand_engine::execute(&loaded, &registry, Some(provider), opts).await
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            let message = e.to_string();
            // The run went to its end: its outcome is shown, and it fails.
            if let RunError::NotRecorded { report, .. } = e {
                print_report(&report, json)?;
                eprintln!("error: {message}");
                eprintln!("  hint: {}", state_dir_hint(&history_dir));
                runs::publish_metrics(
                    &report,
                    &history_dir,
                    outputs.metrics_file.as_deref(),
                    outputs.pushgateway.as_deref(),
                );
                return Ok(report.status.exit_code());
            }
            eprintln!("error: {message}");
            if matches!(e, RunError::StateDir { .. } | RunError::Journal(_)) {
                eprintln!("  hint: {}", state_dir_hint(&history_dir));
            }
            // The run could not start, and the metrics must say so: a schedule whose
            // secret went missing is as broken as one whose backup failed.
            let not_started = not_started_report(&loaded, plan);
            runs::publish_metrics(
                &not_started,
                &history_dir,
                outputs.metrics_file.as_deref(),
                outputs.pushgateway.as_deref(),
            );
            return Ok(match e {
                RunError::Secret { .. } | RunError::Connection { .. } => EXIT_USAGE,
                _ => EXIT_FAILED,
            });
        }
    };
    print_report(&report, json)?;
    // Metrics are a side channel: failing to write them is reported, and the exit code
    // stays the run's.
    runs::publish_metrics(
        &report,
        &history_dir,
        outputs.metrics_file.as_deref(),
        outputs.pushgateway.as_deref(),
    );
    Ok(report.status.exit_code())
}

fn print_report(report: &stagehand_engine::RunReport, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print_summary(report);
    }
    Ok(())
}

/// What to do when the run cannot be recorded under the state directory.
fn state_dir_hint(state_dir: &Path) -> String {
    format!(
        "the state directory {} is full or not writable: free space there, or choose another with --state-dir or STAGEHAND_STATE_DIR",
        state_dir.display()
    )
}

/// The report of a run that failed before its first step (for the metrics only).
fn not_started_report(loaded: &Loaded, plan: &Path) -> stagehand_engine::RunReport {
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    stagehand_engine::RunReport {
        run_id: String::new(),
        plan: loaded.plan.name.clone(),
        plan_file: plan.display().to_string(),
        status: stagehand_engine::RunStatus::Failed,
        started_at: now.clone(),
        finished_at: now,
        duration_ms: 0,
        params: BTreeMap::new(),
        steps: Vec::new(),
        journal: String::new(),
    }
}

/// Parses `--set` values and loads the plan with them; problems are printed (exit 2).
fn load_for_run(
    plan: &Path,
    sets: &[String],
) -> Option<(Loaded, BTreeMap<String, serde_json::Value>)> {
    match parse_sets(sets) {
        Ok(sets) => load_or_report(plan, &sets, false),
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    }
}

fn preflight(plan: &Path, sets: &[String], json: bool) -> anyhow::Result<i32> {
    let Some((loaded, params)) = load_for_run(plan, sets) else {
        return Ok(EXIT_USAGE);
    };
    let registry = stagehand_steps::registry();
    let provider = stagehand_steps::connection_provider();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = match runtime.block_on(stagehand_engine::executor::check(
        &loaded,
        &registry,
        Some(provider),
        &params,
    )) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!("preflight of plan {}:", report.plan);
        for s in &report.steps {
            for f in &s.findings {
                let tag = match f.level {
                    stagehand_engine::step::Level::Ok => "ok   ",
                    stagehand_engine::step::Level::Warn => "WARN ",
                    stagehand_engine::step::Level::Error => "ERROR",
                };
                outln!("  {tag} {:<14} {}", s.id, f.message);
            }
        }
    }
    Ok(if report.has_errors() {
        EXIT_FAILED
    } else {
        EXIT_OK
    })
}

/// First SIGINT/SIGTERM: stop work, run cleanup steps. Second: stop those too.
fn spawn_signal_watch(interrupt: CancellationToken, abort: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        for token in [interrupt, abort] {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            token.cancel();
        }
    });
}

fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STAGEHAND_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("stagehand");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/stagehand"),
        None => PathBuf::from(".stagehand"),
    }
}

fn print_summary(r: &stagehand_engine::RunReport) {
    outln!(
        "run {} of plan {}: {:?} in {:.1}s",
        r.run_id,
        r.plan,
        r.status,
        r.duration_ms as f64 / 1000.0
    );
    for s in &r.steps {
        let took = s
            .duration_ms
            .map(|d| format!("{:.2}s", d as f64 / 1000.0))
            .unwrap_or_default();
        let retries = if s.attempts > 1 {
            format!(" ({} attempts)", s.attempts)
        } else {
            String::new()
        };
        outln!(
            "  {:<24} {:<10} {:>8}{retries}",
            s.id,
            format!("{:?}", s.status).to_lowercase(),
            took
        );
        if let Some(e) = &s.error {
            outln!("      {e}");
        }
        if let Some(h) = &s.hint {
            outln!("      hint: {h}");
        }
    }
    outln!("journal: {}", r.journal);
}

fn list_steps(kind: Option<&str>) -> i32 {
    let registry = stagehand_steps::registry();
    let kinds: Vec<_> = registry
        .kinds()
        .filter(|k| kind.is_none_or(|n| k.name() == n))
        .collect();
    if kinds.is_empty() {
        eprintln!(
            "error: unknown step kind `{}`; known: {}",
            kind.unwrap_or(""),
            registry.names().collect::<Vec<_>>().join(", ")
        );
        return EXIT_USAGE;
    }
    for k in kinds {
        outln!("{}: {}", k.name(), k.summary());
        let schema = k.config_schema();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if let Some(props) = schema["properties"].as_object() {
            outln!("  with:");
            for (name, p) in props {
                let req = if required.contains(&name.as_str()) {
                    " (required)"
                } else {
                    ""
                };
                let desc = p["description"].as_str().unwrap_or("").replace('\n', " ");
                outln!("    {name}{req}: {desc}");
            }
        }
        outln!("  outputs:");
        for o in k.outputs() {
            outln!("    {} ({:?}): {}", o.name, o.ty, o.description);
        }
        if k.supports_background() {
            outln!("  can run with background: true");
        }
        outln!();
    }
    EXIT_OK
}
