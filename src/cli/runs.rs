//! `stagehand runs list|show|check` over the state directory, and the metrics a run
//! publishes at its end (textfile, Pushgateway).

use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use stagehand_engine::history::{self, HistoryError, RunDetail, RunSummary};
use stagehand_engine::{metrics, RunReport};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub enum Args {
    List {
        plan: Option<String>,
        limit: Option<usize>,
        json: bool,
        state_dir: PathBuf,
    },
    Show {
        id: String,
        json: bool,
        state_dir: PathBuf,
    },
    Check {
        plan: String,
        max_age: Duration,
        json: bool,
        state_dir: PathBuf,
    },
}

pub fn dispatch(args: Args) -> i32 {
    let result = match args {
        Args::List {
            plan,
            limit,
            json,
            state_dir,
        } => list(&state_dir, plan.as_deref(), limit, json),
        Args::Show {
            id,
            json,
            state_dir,
        } => show(&state_dir, &id, json),
        Args::Check {
            plan,
            max_age,
            json,
            state_dir,
        } => check(&state_dir, &plan, max_age, json),
    };
    match result {
        Ok(code) => code,
        Err(e @ (HistoryError::NotFound { .. } | HistoryError::Ambiguous { .. })) => {
            eprintln!("error: {e}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILED
        }
    }
}

fn list(
    state_dir: &Path,
    plan: Option<&str>,
    limit: Option<usize>,
    json: bool,
) -> Result<i32, HistoryError> {
    let mut runs = history::list(state_dir)?;
    runs.reverse();
    let runs: Vec<RunSummary> = runs
        .into_iter()
        .filter(|r| plan.is_none_or(|p| r.plan == p))
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&runs).unwrap_or_default()
        );
        return Ok(EXIT_OK);
    }
    if runs.is_empty() {
        outln!("no runs recorded in {}", state_dir.join("runs").display());
        return Ok(EXIT_OK);
    }
    let id_width = runs
        .iter()
        .map(|r| r.run_id.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let plan_width = runs.iter().map(|r| r.plan.len()).max().unwrap_or(4).max(4);
    outln!(
        "{:<id_width$}  {:<plan_width$}  {:<11}  {:<24}  {:>9}  FAILED STEP",
        "RUN",
        "PLAN",
        "STATUS",
        "STARTED",
        "DURATION"
    );
    for r in &runs {
        outln!(
            "{:<id_width$}  {:<plan_width$}  {:<11}  {:<24}  {:>9}  {}",
            r.run_id,
            r.plan,
            r.status.as_str(),
            r.started_at,
            r.duration_ms.map(took).unwrap_or_else(|| "-".into()),
            r.failed_step.as_deref().unwrap_or("")
        );
    }
    Ok(EXIT_OK)
}

/// `0.35s` under a minute, `1m 12s` above.
fn took(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.2}s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
    }
}

fn show(state_dir: &Path, id: &str, json: bool) -> Result<i32, HistoryError> {
    let run = history::show(state_dir, id)?;
    if json {
        let report = run.summary.dir.join("report.json");
        match std::fs::read_to_string(&report) {
            // The report as recorded (it is already redacted).
            Ok(text) => out!("{text}"),
            // An incomplete run has no report: what is known of it.
            Err(_) => outln!("{}", serde_json::to_string_pretty(&run).unwrap_or_default()),
        }
        return Ok(EXIT_OK);
    }
    out!("{}", show_text(&run));
    Ok(EXIT_OK)
}

/// The text of `runs show`.
pub fn show_text(run: &RunDetail) -> String {
    let s = &run.summary;
    let mut out = format!("Run {}\n", s.run_id);
    out.push_str(&format!("  plan      {} ({})\n", s.plan, run.plan_file));
    let failed = s
        .failed_step
        .as_ref()
        .map(|f| format!(" (first failure: {f})"))
        .unwrap_or_default();
    out.push_str(&format!("  status    {}{failed}\n", s.status.as_str()));
    out.push_str(&format!("  started   {}\n", s.started_at));
    match (&s.finished_at, s.duration_ms) {
        (Some(f), Some(ms)) => out.push_str(&format!("  finished  {f}, after {}\n", took(ms))),
        _ => out.push_str("  finished  - (no report: still running, or the process was killed)\n"),
    }
    if !run.params.is_empty() {
        let params: Vec<String> = run
            .params
            .iter()
            .map(|(k, v)| format!("{k}={}", compact(v, 60)))
            .collect();
        out.push_str(&format!("  params    {}\n", params.join(", ")));
    }
    out.push_str(&format!(
        "  journal   {} ({} events)\n",
        run.journal.display(),
        run.journal_events
    ));
    if run.steps.is_empty() {
        return out;
    }
    out.push_str("\nSteps:\n");
    let w = run.steps.iter().map(|s| s.id.len()).max().unwrap_or(4);
    let kw = run.steps.iter().map(|s| s.uses.len()).max().unwrap_or(4);
    for step in &run.steps {
        let status = serde_json::to_value(step.status)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let time = step.duration_ms.map(took).unwrap_or_default();
        let attempts = if step.attempts > 1 {
            format!("  ({} attempts)", step.attempts)
        } else {
            String::new()
        };
        out.push_str(
            format!(
                "  {:<w$}  {:<kw$}  {status:<10} {time:>8}{attempts}",
                step.id, step.uses
            )
            .trim_end(),
        );
        out.push('\n');
        if let Some(e) = &step.error {
            out.push_str(&format!("      error: {e}\n"));
        }
        if let Some(h) = &step.hint {
            out.push_str(&format!("      hint: {h}\n"));
        }
        if !step.outputs.is_empty() {
            let shown: Vec<String> = step
                .outputs
                .iter()
                .take(8)
                .map(|(k, v)| format!("{k}={}", compact(v, 60)))
                .collect();
            let more = step.outputs.len().saturating_sub(8);
            let more = if more > 0 {
                format!(" (+{more} more: runs show --json)")
            } else {
                String::new()
            };
            out.push_str(&format!("      outputs: {}{more}\n", shown.join(", ")));
        }
    }
    out
}

/// A value on one line, cut at `max` characters.
fn compact(v: &serde_json::Value, max: usize) -> String {
    let text = match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

fn check(state_dir: &Path, plan: &str, max_age: Duration, json: bool) -> Result<i32, HistoryError> {
    let runs = history::list(state_dir)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let verdict = history::check_freshness(&runs, plan, max_age, now);
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&verdict).unwrap_or_default()
        );
    } else if verdict.ok {
        outln!("{}", verdict.message);
    } else {
        eprintln!(
            "{} (state directory {})",
            verdict.message,
            state_dir.display()
        );
    }
    Ok(if verdict.ok { EXIT_OK } else { EXIT_FAILED })
}

/// Writes the run's metrics file and pushes to the Pushgateway, as asked. Failures are
/// reported on stderr and do not change the run's exit code.
pub fn publish_metrics(
    report: &RunReport,
    state_dir: &Path,
    file: Option<&Path>,
    pushgateway: Option<&str>,
) {
    if file.is_none() && pushgateway.is_none() {
        return;
    }
    // This run's report is already written: the history includes it.
    let last_success = history::list(state_dir).ok().and_then(|runs| {
        history::last_success(&runs, &report.plan)
            .and_then(|r| history::unix_seconds(r.finished_at.as_deref()?))
    });
    let text = metrics::render(report, last_success);
    if let Some(path) = file {
        match metrics::write_atomic(path, &text) {
            Ok(()) => tracing::info!(path = %path.display(), "metrics written"),
            Err(e) => eprintln!(
                "warning: cannot write the metrics file {}: {e}",
                path.display()
            ),
        }
    }
    if let Some(base) = pushgateway {
        let url = format!(
            "{}/metrics/job/stagehand/plan/{}",
            base.trim_end_matches('/'),
            path_segment(&report.plan)
        );
        let sent = stagehand_host::http::send(
            stagehand_host::http::Method::Put,
            &url,
            "text/plain; version=0.0.4",
            &[],
            text.as_bytes(),
            Duration::from_secs(10),
        );
        match sent {
            Ok(r) if r.is_success() => {
                tracing::info!(url = %stagehand_host::http::origin(&url), "metrics pushed")
            }
            Ok(r) => eprintln!(
                "warning: the Pushgateway {} answered HTTP {}: {}",
                stagehand_host::http::origin(&url),
                r.status,
                r.body.trim()
            ),
            Err(e) => eprintln!("warning: cannot push the metrics: {e}"),
        }
    }
}

/// A grouping-key value in a Pushgateway URL path.
fn path_segment(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
