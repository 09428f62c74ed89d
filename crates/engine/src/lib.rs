//! stagehand's plan engine: the plan language (YAML), validation with positions,
//! templates, the step DAG, the executor with retries/timeouts/cancellation, the journal
//! and the dry-run. It knows nothing about databases: step kinds and connections come
//! from outside through [`step::StepKind`] and [`resources::ConnectionProvider`].

pub mod diag;
pub mod dryrun;
pub mod executor;
pub mod failure;
pub mod graph;
pub mod history;
pub mod journal;
pub mod metrics;
pub mod model;
pub mod params;
pub mod parse;
pub mod redact;
pub mod report;
pub mod resources;
pub mod schema;
pub mod source;
pub mod step;
pub mod template;
pub mod validate;

pub use diag::Diagnostic;
pub use executor::{execute, RunOptions};
pub use report::{RunReport, RunStatus, StepStatus};
pub use step::{
    output_specs, to_outputs, ConfigError, DirectoryUse, OutputSpec, OutputType, Outputs, Registry,
    StepAction, StepContext, StepError, StepKind, StepOutput, Typed, TypedStep,
};
pub use validate::{Checker, Loaded};
