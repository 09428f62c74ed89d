//! What a run produced: each step's status, attempts, outputs and error, and the run's
//! outcome (`report.json`). The executor fills it in; history, metrics and the
//! notifications read it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// What a step publishes for later steps: `{{steps.ID.outputs.KEY}}`.
pub type Outputs = serde_json::Map<String, Value>;

/// How a step ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepStatus {
    pub(crate) fn is_terminal(self) -> bool {
        !matches!(self, StepStatus::Pending | StepStatus::Running)
    }

    /// The lowercase word used in reports, metrics and notifications.
    pub fn name(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    #[default]
    Succeeded,
    Failed,
    Interrupted,
}

impl RunStatus {
    /// The lowercase word used in reports.
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }

    /// The CLI's exit code for this outcome.
    pub fn exit_code(self) -> i32 {
        match self {
            RunStatus::Succeeded => 0,
            RunStatus::Failed => 1,
            RunStatus::Interrupted => 130,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub id: String,
    pub uses: String,
    pub status: StepStatus,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub outputs: Outputs,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The final report of a run (`report.json`).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub plan: String,
    pub plan_file: String,
    pub status: RunStatus,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    pub params: BTreeMap<String, Value>,
    pub steps: Vec<StepReport>,
    pub journal: String,
}

impl RunReport {
    pub fn step(&self, id: &str) -> Option<&StepReport> {
        self.steps.iter().find(|s| s.id == id)
    }
}
