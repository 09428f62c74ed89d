//! A run's figures in the Prometheus text format, for node_exporter's textfile collector
//! (written atomically) or a Pushgateway. Step kinds are not known here: figures come
//! from outputs by convention — an integer output `bytes` (bytes a step moved), an
//! object output `holds_ms` (milliseconds each lock stage was held).

use crate::report::{RunReport, RunStatus, StepStatus};
use std::fmt::Write as _;
use std::path::Path;

/// The output name a step uses for the bytes it moved (`stagehand_step_bytes`).
pub const BYTES_OUTPUT: &str = "bytes";
/// The output name a step uses for its lock hold times in milliseconds, by lock stage
/// (`stagehand_lock_hold_seconds`).
pub const HOLDS_OUTPUT: &str = "holds_ms";

/// Label values need `\`, `"` and newlines escaped.
/// A Prometheus label value, escaped.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Families {
    text: String,
}

impl Families {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        let _ = writeln!(
            self.text,
            "{name}{{{}}} {}",
            labels.join(","),
            number(value)
        );
    }
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The metrics of one finished run. `last_success` is the finish time (Unix seconds) of
/// the plan's latest successful run, this one included, from the run history.
pub fn render(report: &RunReport, last_success: Option<f64>) -> String {
    let plan = report.plan.as_str();
    let mut m = Families {
        text: String::new(),
    };
    if let Some(t) = last_success {
        m.family(
            "stagehand_last_success_timestamp_seconds",
            "gauge",
            "When the plan's latest successful run finished (Unix time).",
        );
        m.sample(
            "stagehand_last_success_timestamp_seconds",
            &[("plan", plan)],
            t,
        );
    }
    m.family(
        "stagehand_last_run_timestamp_seconds",
        "gauge",
        "When the plan's latest run finished (Unix time).",
    );
    let finished = crate::history::unix_seconds(&report.finished_at).unwrap_or(0.0);
    m.sample(
        "stagehand_last_run_timestamp_seconds",
        &[("plan", plan)],
        finished,
    );
    m.family(
        "stagehand_last_run_duration_seconds",
        "gauge",
        "How long the plan's latest run took.",
    );
    m.sample(
        "stagehand_last_run_duration_seconds",
        &[("plan", plan)],
        report.duration_ms as f64 / 1000.0,
    );
    m.family(
        "stagehand_last_run_success",
        "gauge",
        "1 when the plan's latest run succeeded, else 0.",
    );
    m.sample(
        "stagehand_last_run_success",
        &[("plan", plan)],
        f64::from(u8::from(report.status == RunStatus::Succeeded)),
    );
    m.family(
        "stagehand_last_run_status",
        "gauge",
        "The latest run's outcome: 1 for its status, 0 for the others.",
    );
    for (name, s) in [
        ("succeeded", RunStatus::Succeeded),
        ("failed", RunStatus::Failed),
        ("interrupted", RunStatus::Interrupted),
    ] {
        m.sample(
            "stagehand_last_run_status",
            &[("plan", plan), ("status", name)],
            f64::from(u8::from(report.status == s)),
        );
    }

    m.family(
        "stagehand_step_status",
        "gauge",
        "Each step's outcome in the latest run: 1 for its status, 0 for the others.",
    );
    for s in &report.steps {
        for status in [
            StepStatus::Succeeded,
            StepStatus::Failed,
            StepStatus::Skipped,
            StepStatus::Cancelled,
        ] {
            m.sample(
                "stagehand_step_status",
                &[
                    ("plan", plan),
                    ("step", &s.id),
                    ("uses", &s.uses),
                    ("status", status.name()),
                ],
                f64::from(u8::from(s.status == status)),
            );
        }
    }
    m.family(
        "stagehand_step_duration_seconds",
        "gauge",
        "How long each step of the latest run took (retries included).",
    );
    for s in &report.steps {
        if let Some(ms) = s.duration_ms {
            m.sample(
                "stagehand_step_duration_seconds",
                &[("plan", plan), ("step", &s.id), ("uses", &s.uses)],
                ms as f64 / 1000.0,
            );
        }
    }
    m.family(
        "stagehand_step_attempts",
        "gauge",
        "Attempts of each step of the latest run (1 without retries).",
    );
    for s in report.steps.iter().filter(|s| s.attempts > 0) {
        m.sample(
            "stagehand_step_attempts",
            &[("plan", plan), ("step", &s.id), ("uses", &s.uses)],
            f64::from(s.attempts),
        );
    }
    let bytes: Vec<_> = report
        .steps
        .iter()
        .filter_map(|s| Some((s, s.outputs.get(BYTES_OUTPUT)?.as_f64()?)))
        .collect();
    if !bytes.is_empty() {
        m.family(
            "stagehand_step_bytes",
            "gauge",
            "Bytes a step of the latest run reported (its `bytes` output).",
        );
        for (s, b) in bytes {
            m.sample(
                "stagehand_step_bytes",
                &[("plan", plan), ("step", &s.id), ("uses", &s.uses)],
                b,
            );
        }
    }
    let holds: Vec<_> = report
        .steps
        .iter()
        .filter_map(|s| Some((s, s.outputs.get(HOLDS_OUTPUT)?.as_object()?)))
        .flat_map(|(s, h)| {
            h.iter()
                .filter_map(move |(stage, ms)| Some((s, stage.as_str(), ms.as_f64()?)))
        })
        .collect();
    if !holds.is_empty() {
        m.family(
            "stagehand_lock_hold_seconds",
            "gauge",
            "How long each lock stage was held in the latest run (a step's `holds_ms` output).",
        );
        for (s, stage, ms) in holds {
            m.sample(
                "stagehand_lock_hold_seconds",
                &[("plan", plan), ("step", &s.id), ("stage", stage)],
                ms / 1000.0,
            );
        }
    }
    m.text
}

/// Writes through a temporary file in the same directory and a rename, so the textfile
/// collector never reads half a file.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    // Readable by the collector (node_exporter runs as its own user) whatever the process
    // umask: metrics hold no secret. The temporary name does not end in `.prom`, which is
    // all the collector reads.
    let opts = stagehand_host::atomic::AtomicOptions::durable().mode(0o644);
    stagehand_host::atomic::write_atomic(path, text.as_bytes(), opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
    }
}
