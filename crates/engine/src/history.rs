//! Run history: the runs recorded under a state directory (`runs/<id>/report.json` and
//! `runs/<id>/journal.jsonl`), for `stagehand runs list|show|check` and the metrics'
//! last-success time. A run without a report (still running, or killed) is listed from
//! its journal as `incomplete`.

use crate::report::{RunStatus, StepStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The directory of run `run_id` under `state_dir`; None unless the id is one plain
/// path component (no `/`, `.`, `..` or root), so nothing leads out of `runs/`.
pub fn run_dir(state_dir: &Path, run_id: &str) -> Option<PathBuf> {
    let mut parts = Path::new(run_id).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(one)), None) if one == run_id && !run_id.contains('\0') => {
            Some(state_dir.join("runs").join(run_id))
        }
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a run report: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("no run `{id}` in {dir}")]
    NotFound { id: String, dir: PathBuf },
    #[error("`{id}` matches several runs: {}", .matches.join(", "))]
    Ambiguous { id: String, matches: Vec<String> },
}

/// How a recorded run ended; `incomplete` when it has a journal but no report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordedStatus {
    Succeeded,
    Failed,
    Interrupted,
    Incomplete,
}

impl From<RunStatus> for RecordedStatus {
    fn from(s: RunStatus) -> Self {
        match s {
            RunStatus::Succeeded => RecordedStatus::Succeeded,
            RunStatus::Failed => RecordedStatus::Failed,
            RunStatus::Interrupted => RecordedStatus::Interrupted,
        }
    }
}

impl RecordedStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordedStatus::Succeeded => "succeeded",
            RecordedStatus::Failed => "failed",
            RecordedStatus::Interrupted => "interrupted",
            RecordedStatus::Incomplete => "incomplete",
        }
    }
}

/// A step's status as recorded: the executor's, or `interrupted` for a step of a run
/// without a report whose journal shows it started and never ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordedStepStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    Interrupted,
}

impl RecordedStepStatus {
    fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Cancelled)
    }
}

impl From<StepStatus> for RecordedStepStatus {
    fn from(s: StepStatus) -> Self {
        match s {
            StepStatus::Pending => Self::Pending,
            StepStatus::Running => Self::Running,
            StepStatus::Succeeded => Self::Succeeded,
            StepStatus::Failed => Self::Failed,
            StepStatus::Skipped => Self::Skipped,
            StepStatus::Cancelled => Self::Cancelled,
        }
    }
}

/// One step as `report.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedStep {
    pub id: String,
    pub uses: String,
    pub status: RecordedStepStatus,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub outputs: serde_json::Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// `report.json` as written by the executor (the fields history reads).
#[derive(Debug, Clone, Deserialize)]
struct StoredReport {
    run_id: String,
    plan: String,
    #[serde(default)]
    plan_file: String,
    status: RunStatus,
    started_at: String,
    finished_at: String,
    duration_ms: u64,
    #[serde(default)]
    params: BTreeMap<String, Value>,
    #[serde(default)]
    steps: Vec<RecordedStep>,
}

/// One line of `runs list`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub plan: String,
    pub status: RecordedStatus,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The first failed step, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    pub dir: PathBuf,
}

/// A run in full, for `runs show`.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub plan_file: String,
    pub params: BTreeMap<String, Value>,
    pub steps: Vec<RecordedStep>,
    pub journal: PathBuf,
    pub journal_events: usize,
}

/// Every run recorded under `state_dir`, oldest first (by start time, then id).
pub fn list(state_dir: &Path) -> Result<Vec<RunSummary>, HistoryError> {
    let runs_dir = state_dir.join("runs");
    let entries = match std::fs::read_dir(&runs_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(HistoryError::Io {
                path: runs_dir,
                source,
            })
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        match read_run(&dir) {
            Ok(Some(d)) => out.push(d.summary),
            Ok(None) => {}
            // One unreadable run does not hide the others.
            Err(e) => tracing::warn!(error = %e, "skipping a run"),
        }
    }
    out.sort_by(|a, b| (&a.started_at, &a.run_id).cmp(&(&b.started_at, &b.run_id)));
    Ok(out)
}

/// One run by id, or by a prefix or suffix that names only one run.
pub fn show(state_dir: &Path, id: &str) -> Result<RunDetail, HistoryError> {
    let runs_dir = state_dir.join("runs");
    if let Some(exact) = run_dir(state_dir, id).filter(|d| d.is_dir()) {
        if let Some(d) = read_run(&exact)? {
            return Ok(d);
        }
    }
    let matches: Vec<RunSummary> = list(state_dir)?
        .into_iter()
        .filter(|r| !id.is_empty() && (r.run_id.starts_with(id) || r.run_id.ends_with(id)))
        .collect();
    match matches.as_slice() {
        [one] => read_run(&one.dir)?.ok_or_else(|| HistoryError::NotFound {
            id: id.into(),
            dir: runs_dir.clone(),
        }),
        [] => Err(HistoryError::NotFound {
            id: id.into(),
            dir: runs_dir,
        }),
        many => Err(HistoryError::Ambiguous {
            id: id.into(),
            matches: many.iter().map(|r| r.run_id.clone()).collect(),
        }),
    }
}

/// Reads one run directory; None when it holds neither a report nor a journal.
fn read_run(dir: &Path) -> Result<Option<RunDetail>, HistoryError> {
    let report_path = dir.join("report.json");
    let journal = dir.join("journal.jsonl");
    let journal_text = std::fs::read_to_string(&journal).unwrap_or_default();
    let journal_events = journal_text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    match std::fs::read_to_string(&report_path) {
        Ok(text) => {
            let r: StoredReport = serde_json::from_str(&text).map_err(|e| HistoryError::Parse {
                path: report_path.clone(),
                message: e.to_string(),
            })?;
            let failed_step = first_failure(&r.steps);
            Ok(Some(RunDetail {
                summary: RunSummary {
                    run_id: r.run_id,
                    plan: r.plan,
                    status: r.status.into(),
                    started_at: r.started_at,
                    finished_at: Some(r.finished_at),
                    duration_ms: Some(r.duration_ms),
                    failed_step,
                    dir: dir.to_path_buf(),
                },
                plan_file: r.plan_file,
                params: r.params,
                steps: r.steps,
                journal,
                journal_events,
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(incomplete_from_journal(
            dir,
            &journal,
            &journal_text,
            journal_events,
        )),
        Err(source) => Err(HistoryError::Io {
            path: report_path,
            source,
        }),
    }
}

fn first_failure(steps: &[RecordedStep]) -> Option<String> {
    steps
        .iter()
        .find(|s| s.status.is_failure())
        .map(|s| s.id.clone())
}

/// A run with a journal but no report: what its events say, steps included.
fn incomplete_from_journal(
    dir: &Path,
    journal: &Path,
    text: &str,
    events: usize,
) -> Option<RunDetail> {
    let first: Value = serde_json::from_str(text.lines().next()?).ok()?;
    if first["event"] != "run_started" {
        return None;
    }
    // A killed run may end with half a line: what parses is kept.
    let later = text
        .lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<Value>(l).ok());
    let steps = steps_from_journal(&first, later);
    let run_id = first["run"]
        .as_str()
        .map(String::from)
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))?;
    let params = first["params"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Some(RunDetail {
        summary: RunSummary {
            run_id,
            plan: first["plan"].as_str().unwrap_or_default().to_string(),
            status: RecordedStatus::Incomplete,
            started_at: first["ts"].as_str().unwrap_or_default().to_string(),
            finished_at: None,
            duration_ms: None,
            failed_step: first_failure(&steps),
            dir: dir.to_path_buf(),
        },
        plan_file: first["file"].as_str().unwrap_or_default().to_string(),
        params,
        steps,
        journal: journal.to_path_buf(),
        journal_events: events,
    })
}

/// The steps of a run rebuilt from its journal events, in plan order: how each ended,
/// `interrupted` when it started and has no end, `pending` when it never started.
fn steps_from_journal(started: &Value, events: impl Iterator<Item = Value>) -> Vec<RecordedStep> {
    let mut steps: Vec<RecordedStep> = started["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|id| RecordedStep {
            id: id.to_string(),
            uses: started["uses"][id].as_str().unwrap_or_default().to_string(),
            status: RecordedStepStatus::Pending,
            attempts: 0,
            duration_ms: None,
            outputs: serde_json::Map::new(),
            error: None,
            hint: None,
        })
        .collect();
    for event in events {
        let Some(step) = event["step"]
            .as_str()
            .and_then(|id| steps.iter_mut().find(|s| s.id == id))
        else {
            continue;
        };
        apply_step_event(step, &event);
    }
    for step in &mut steps {
        if step.status == RecordedStepStatus::Running {
            step.status = RecordedStepStatus::Interrupted;
            step.error = Some(
                "started, and no end is recorded: the run was killed (or is still running)".into(),
            );
        }
    }
    steps
}

fn apply_step_event(step: &mut RecordedStep, event: &Value) {
    let text = |key: &str| event[key].as_str().map(String::from);
    match event["event"].as_str().unwrap_or_default() {
        "step_started" => {
            step.status = RecordedStepStatus::Running;
            step.attempts = step.attempts.max(1);
            if let Some(uses) = text("uses") {
                step.uses = uses;
            }
        }
        "step_retry" => {
            let failed_attempt = event["attempt"].as_u64().unwrap_or(0) as u32;
            step.attempts = step.attempts.max(failed_attempt + 1);
        }
        "step_skipped" => {
            step.status = RecordedStepStatus::Skipped;
            step.error = text("reason").map(|r| format!("skipped: {r}"));
        }
        "step_finished" => {
            if let Ok(status) = serde_json::from_value::<StepStatus>(event["status"].clone()) {
                step.status = status.into();
            }
            if let Some(n) = event["attempts"].as_u64() {
                step.attempts = n as u32;
            }
            step.duration_ms = event["duration_ms"].as_u64();
            step.outputs = event["outputs"].as_object().cloned().unwrap_or_default();
            step.error = text("error");
            step.hint = text("hint");
        }
        _ => {}
    }
}

/// Seconds since the Unix epoch of an RFC 3339 time.
pub fn unix_seconds(rfc3339: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|t| t.timestamp_millis() as f64 / 1000.0)
}

/// The most recent successful run of `plan` (by finish time).
pub fn last_success<'a>(runs: &'a [RunSummary], plan: &str) -> Option<&'a RunSummary> {
    runs.iter()
        .filter(|r| r.plan == plan && r.status == RecordedStatus::Succeeded)
        .filter_map(|r| Some((unix_seconds(r.finished_at.as_deref()?)?, r)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, r)| r)
}

/// The dead-man check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Freshness {
    pub plan: String,
    pub ok: bool,
    pub max_age_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success: Option<RunSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<u64>,
    pub message: String,
}

/// Whether a successful run of `plan` finished within `max_age` of `now` (Unix seconds).
pub fn check_freshness(runs: &[RunSummary], plan: &str, max_age: Duration, now: f64) -> Freshness {
    let max = humantime::format_duration(max_age);
    let last = last_success(runs, plan);
    let age = last
        .and_then(|r| unix_seconds(r.finished_at.as_deref()?))
        .map(|t| (now - t).max(0.0) as u64);
    let (ok, message) = match (last, age) {
        (Some(r), Some(age)) => {
            let ago = humantime::format_duration(Duration::from_secs(age));
            let when = r.finished_at.as_deref().unwrap_or_default();
            if age <= max_age.as_secs() {
                (true, format!("ok: the last successful run of {plan} finished {ago} ago ({when}, run {}), within {max}", r.run_id))
            } else {
                (false, format!("STALE: the last successful run of {plan} finished {ago} ago ({when}, run {}), more than {max}", r.run_id))
            }
        }
        _ => {
            let latest = runs.iter().rev().find(|r| r.plan == plan);
            let tail = match latest {
                Some(r) => format!(
                    "; the latest run, {}, started {}, {}",
                    r.run_id,
                    r.started_at,
                    r.status.as_str()
                ),
                None => "; it has never run here".into(),
            };
            (
                false,
                format!("STALE: no successful run of {plan} is recorded{tail}"),
            )
        }
    };
    Freshness {
        plan: plan.into(),
        ok,
        max_age_seconds: max_age.as_secs(),
        last_success: last.cloned(),
        age_seconds: age,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: &str, plan: &str, status: RecordedStatus, finished: &str) -> RunSummary {
        RunSummary {
            run_id: id.into(),
            plan: plan.into(),
            status,
            started_at: finished.into(),
            finished_at: Some(finished.into()),
            duration_ms: Some(1),
            failed_step: None,
            dir: PathBuf::from(id),
        }
    }

    #[test]
    fn run_dirs_are_single_components_of_the_state_dir() {
        let state = Path::new("/var/lib/stagehand");
        assert_eq!(
            run_dir(state, "nightly-20261121T020000Z-ab12"),
            Some(PathBuf::from(
                "/var/lib/stagehand/runs/nightly-20261121T020000Z-ab12"
            ))
        );
        for bad in [
            "../../x-20261121T020000Z-ab12",
            "..",
            ".",
            "",
            "a/b",
            "a/",
            "/etc",
            "x\0y",
        ] {
            assert_eq!(run_dir(state, bad), None, "{bad:?} is refused");
        }
    }

    #[test]
    fn freshness_uses_the_latest_success_of_the_plan() {
        let runs = vec![
            summary(
                "a",
                "nightly",
                RecordedStatus::Succeeded,
                "2026-11-20T02:00:00Z",
            ),
            summary(
                "b",
                "other",
                RecordedStatus::Succeeded,
                "2026-11-21T02:00:00Z",
            ),
            summary(
                "c",
                "nightly",
                RecordedStatus::Failed,
                "2026-11-21T02:00:00Z",
            ),
        ];
        let now = unix_seconds("2026-11-21T03:00:00Z").unwrap_or_default();
        let day = Duration::from_secs(24 * 3600);
        let f = check_freshness(&runs, "nightly", day, now);
        assert!(!f.ok);
        assert_eq!(f.age_seconds, Some(25 * 3600));
        assert_eq!(f.message, "STALE: the last successful run of nightly finished 1day 1h ago (2026-11-20T02:00:00Z, run a), more than 1day");
        let f = check_freshness(&runs, "nightly", Duration::from_secs(26 * 3600), now);
        assert!(f.ok, "{}", f.message);
        let f = check_freshness(&runs, "weekly", day, now);
        assert_eq!(
            f.message,
            "STALE: no successful run of weekly is recorded; it has never run here"
        );
    }
}
