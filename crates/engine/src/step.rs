//! The contract between the engine and step kinds. The engine knows step kinds only
//! through this trait: a typed config (JSON Schema), declared outputs, a dry-run sentence
//! and an async run.

use crate::resources::Connections;
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{oneshot, Mutex};
use tokio_util::sync::CancellationToken;

pub use crate::report::Outputs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputType {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    List,
}

impl OutputType {
    /// A value of this type used to type-check configs before the real one exists.
    pub fn sample(self) -> serde_json::Value {
        match self {
            OutputType::String => serde_json::Value::String(String::new()),
            OutputType::Integer | OutputType::Number => serde_json::Value::from(0),
            OutputType::Boolean => serde_json::Value::Bool(false),
            OutputType::Object => serde_json::Value::Object(Default::default()),
            OutputType::List => serde_json::Value::Array(Vec::new()),
        }
    }

    /// The type a JSON Schema gives a property (`null` aside: an `Option` is its inner
    /// type); a reference or an untyped value counts as an object.
    fn of_schema(property: &serde_json::Value) -> OutputType {
        let named = |t: &str| match t {
            "string" => Some(OutputType::String),
            "integer" => Some(OutputType::Integer),
            "number" => Some(OutputType::Number),
            "boolean" => Some(OutputType::Boolean),
            "array" => Some(OutputType::List),
            "object" => Some(OutputType::Object),
            _ => None,
        };
        match property.get("type") {
            Some(serde_json::Value::String(t)) => named(t),
            Some(serde_json::Value::Array(ts)) => {
                ts.iter().filter_map(|t| t.as_str()).find_map(named)
            }
            _ => None,
        }
        .or_else(|| {
            // `Option<Struct>` is `anyOf: [{$ref}, {type: null}]`.
            property
                .get("anyOf")
                .and_then(|v| v.as_array())
                .and_then(|alts| {
                    alts.iter()
                        .map(OutputType::of_schema)
                        .find(|t| *t != OutputType::Object)
                })
        })
        .unwrap_or(OutputType::Object)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: OutputType,
    pub description: String,
}

/// The outputs a step kind declares, read off the JSON Schema of its output struct: a
/// field's name, its type, and its doc comment as the description. Deriving them keeps
/// the declaration and what the step really returns from drifting apart.
pub fn output_specs<O: schemars::JsonSchema>() -> Vec<OutputSpec> {
    let schema = schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<O>();
    let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, property)| OutputSpec {
            name: name.clone(),
            ty: OutputType::of_schema(property),
            description: property
                .get("description")
                .and_then(|d| d.as_str())
                .unwrap_or_default()
                .replace('\n', " "),
        })
        .collect()
}

/// An output struct other step kinds read (`ctx.upstream_outputs::<O>()`): names the
/// kind that publishes it, so a reader finds it among the upstream steps by type.
pub trait StepOutput: Serialize + DeserializeOwned + schemars::JsonSchema {
    /// The `uses:` name of the step kind that returns this struct.
    const KIND: &'static str;
}

/// Turns a step's typed output into the map templates and reports read.
pub fn to_outputs<O: Serialize>(output: &O) -> Result<Outputs, StepError> {
    match serde_json::to_value(output) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(StepError::fatal(format!(
            "a step's outputs must be a mapping, not {other}"
        ))),
        Err(e) => Err(StepError::fatal(format!(
            "cannot record the step's outputs: {e}"
        ))),
    }
}

pub use crate::failure::{ConfigError, StepError};

/// How a background step learns that its `until` step finished.
pub type UntilResult = Result<Outputs, String>;

/// A finished step upstream of the running one, as the running step sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Upstream {
    pub uses: String,
    pub outputs: Outputs,
}

/// One step of the run as it stood when the current step started: the same record as
/// in the final report.
pub type StepSnapshot = crate::report::StepReport;

/// The run so far, as the current step sees it when it starts (templates read it as
/// `{{report.status}}`, `{{report.failed_step.error}}`, `{{report.steps.ID.outputs.KEY}}`):
/// what a notification or a report step says about the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSnapshot {
    pub id: String,
    pub plan: String,
    pub plan_file: String,
    /// This machine's host name.
    pub host: String,
    pub started_at: String,
    /// Time since the run started.
    pub duration_ms: u64,
    /// The same, for people: `1m 12s`.
    pub duration: String,
    /// What the run's status would be if it ended now: `succeeded` until a step fails
    /// the run (failures under `continue_on_error` do not), then `failed`, or
    /// `interrupted` after SIGINT/SIGTERM.
    pub status: crate::report::RunStatus,
    /// The first step that failed, if any (also those under `continue_on_error`).
    pub failed_step: Option<StepSnapshot>,
    pub failed_steps: Vec<StepSnapshot>,
    /// Every step of the plan by id, in plan order (the current one is `running`).
    pub steps: serde_json::Map<String, serde_json::Value>,
}

/// Everything a running step may use from the engine.
pub struct StepContext {
    pub run_id: String,
    pub step_id: String,
    pub attempt: u32,
    /// Cancelled on timeout, on interrupt, or when the run fails fast. Steps that hold
    /// resources watch it and clean up before returning.
    pub cancel: CancellationToken,
    pub connections: Connections,
    /// The run's state directory (`<state>/runs/<run id>`), for step scratch files.
    pub run_dir: std::path::PathBuf,
    pub(crate) ready: Mutex<Option<oneshot::Sender<()>>>,
    pub(crate) until: Mutex<Option<oneshot::Receiver<UntilResult>>>,
    pub(crate) redactor: Arc<crate::redact::Redactor>,
    pub(crate) background: bool,
    /// Finished steps this one depends on (directly or not), by id: lets a step such as
    /// a manifest writer gather what earlier steps recorded without long templates.
    pub upstream: BTreeMap<String, Upstream>,
    /// The run so far (status, failed steps, every step's outputs) when this step started.
    /// Outputs are as the steps returned them: pass what leaves the run through
    /// [`StepContext::redact`].
    pub run: RunSnapshot,
}

impl StepContext {
    /// A background step calls this once its dependents may start.
    pub async fn signal_ready(&self) {
        if let Some(tx) = self.ready.lock().await.take() {
            let _ = tx.send(());
        }
    }

    /// Waits until the step named by `until` finishes and returns its outputs; an error
    /// when it failed or was skipped, or when the run was cancelled.
    pub async fn wait_until(&self) -> UntilResult {
        let rx = self.until.lock().await.take();
        let Some(rx) = rx else {
            return Err("this step has no `until` (or already waited for it)".into());
        };
        // Cancellation wins over an `until` that finished at the same moment: a
        // cancelled run never goes on as if nothing happened.
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err("cancelled".into()),
            r = rx => r.unwrap_or_else(|_| Err("the run ended before the `until` step finished".into())),
        }
    }

    /// Whether this step runs in the background (it has an `until` to wait for).
    pub fn is_background(&self) -> bool {
        self.background
    }

    /// Upstream steps of a given kind, in plan order of their ids.
    pub fn upstream_of_kind<'a>(
        &'a self,
        kind: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Upstream)> + 'a {
        self.upstream.iter().filter(move |(_, u)| u.uses == kind)
    }

    /// The outputs of every upstream step of `O`'s kind, by step id in plan order; an
    /// error names the step whose outputs do not have `O`'s shape.
    pub fn upstream_outputs<O: StepOutput>(&self) -> Result<Vec<(&str, O)>, StepError> {
        self.upstream_of_kind(O::KIND)
            .map(|(id, u)| {
                serde_json::from_value(serde_json::Value::Object(u.outputs.clone()))
                    .map(|o| (id.as_str(), o))
                    .map_err(|e| {
                        StepError::fatal(format!(
                            "the outputs of step `{id}` ({}) cannot be read: {e}",
                            O::KIND
                        ))
                    })
            })
            .collect()
    }

    /// Removes secret values from text a step wants to log or return.
    pub fn redact(&self, text: &str) -> String {
        self.redactor.redact(text)
    }

    /// A context for unit-testing a step kind outside a plan run.
    pub fn detached(step_id: &str, connections: Connections) -> Self {
        Self {
            run_id: "detached".into(),
            step_id: step_id.into(),
            attempt: 1,
            cancel: CancellationToken::new(),
            connections,
            run_dir: std::env::temp_dir(),
            ready: Mutex::new(None),
            until: Mutex::new(None),
            redactor: Arc::new(crate::redact::Redactor::default()),
            background: false,
            upstream: BTreeMap::new(),
            run: RunSnapshot::default(),
        }
    }
}

/// A step configured and ready to run (or to be described by the dry-run).
#[async_trait]
pub trait StepAction: Send + Sync {
    /// One sentence: what this step would do with this config.
    fn describe(&self) -> String;
    /// Names of the plan connections this step uses (checked by validation).
    fn connections(&self) -> Vec<String> {
        Vec::new()
    }
    /// Directories this step streams from or announces files into: validation checks
    /// that a follower is running before any step that announces files to it starts.
    fn directories(&self) -> Vec<DirectoryUse> {
        Vec::new()
    }
    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError>;
    /// `stagehand run --check`: inspect the live system, read-only, and say what would
    /// go wrong. Nothing may be changed.
    async fn preflight(&self, _ctx: &StepContext) -> Vec<Finding> {
        Vec::new()
    }
}

/// How a step uses a directory that another step streams from while it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryUse {
    /// Writes files there and announces each one to a follower, if one is running when
    /// the step starts (a follower started later never hears of them).
    Announces(String),
    /// Ships the files announced there while they are written, until its `until` step.
    Follows(String),
}

/// One result of a preflight check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub level: Level,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Error,
}

impl Finding {
    pub fn ok(m: impl Into<String>) -> Self {
        Self {
            level: Level::Ok,
            message: m.into(),
        }
    }
    pub fn warn(m: impl Into<String>) -> Self {
        Self {
            level: Level::Warn,
            message: m.into(),
        }
    }
    pub fn error(m: impl Into<String>) -> Self {
        Self {
            level: Level::Error,
            message: m.into(),
        }
    }
}

/// A step kind: `uses: NAME` in a plan.
pub trait StepKind: Send + Sync {
    fn name(&self) -> &'static str;
    fn summary(&self) -> &'static str;
    /// JSON Schema of the `with` mapping.
    fn config_schema(&self) -> serde_json::Value;
    fn outputs(&self) -> Vec<OutputSpec>;
    /// Whether the kind can run as `background: true` (and uses `wait_until`).
    fn supports_background(&self) -> bool {
        false
    }
    /// Fields of `with` whose text becomes a process's command line, which every local
    /// user can read: validation warns when a secret is templated into them.
    fn command_line_fields(&self) -> &'static [&'static str] {
        &[]
    }
    /// Builds the action from a rendered `with`.
    fn build(&self, with: &serde_json::Value) -> Result<Box<dyn StepAction>, ConfigError>;
}

/// The typed way to write a step kind: a serde config with a derived JSON Schema.
#[async_trait]
pub trait TypedStep: Send + Sync + 'static {
    type Config: DeserializeOwned + schemars::JsonSchema + Send + Sync + 'static;
    /// What the step publishes (`{{steps.ID.outputs.KEY}}`): its fields, with their doc
    /// comments, are the kind's declared outputs.
    type Output: Serialize + schemars::JsonSchema + Send + 'static;
    const NAME: &'static str;
    const SUMMARY: &'static str;
    const BACKGROUND: bool = false;
    /// See [`StepKind::command_line_fields`].
    const COMMAND_LINE_FIELDS: &'static [&'static str] = &[];
    /// Checks beyond what serde checks (ranges, exclusive fields).
    fn check(_cfg: &Self::Config) -> Result<(), ConfigError> {
        Ok(())
    }
    fn describe(cfg: &Self::Config) -> String;
    fn connections(_cfg: &Self::Config) -> Vec<String> {
        Vec::new()
    }
    /// See [`StepAction::directories`].
    fn directories(_cfg: &Self::Config) -> Vec<DirectoryUse> {
        Vec::new()
    }
    async fn run(cfg: &Self::Config, ctx: &StepContext) -> Result<Self::Output, StepError>;
    async fn preflight(_cfg: &Self::Config, _ctx: &StepContext) -> Vec<Finding> {
        Vec::new()
    }
}

/// Adapts a [`TypedStep`] to the object-safe [`StepKind`].
pub struct Typed<T>(std::marker::PhantomData<T>);

impl<T> Default for Typed<T> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

struct TypedAction<T: TypedStep> {
    cfg: T::Config,
}

#[async_trait]
impl<T: TypedStep> StepAction for TypedAction<T> {
    fn describe(&self) -> String {
        T::describe(&self.cfg)
    }
    fn connections(&self) -> Vec<String> {
        T::connections(&self.cfg)
    }
    fn directories(&self) -> Vec<DirectoryUse> {
        T::directories(&self.cfg)
    }
    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        to_outputs(&T::run(&self.cfg, ctx).await?)
    }
    async fn preflight(&self, ctx: &StepContext) -> Vec<Finding> {
        T::preflight(&self.cfg, ctx).await
    }
}

impl<T: TypedStep> StepKind for Typed<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn summary(&self) -> &'static str {
        T::SUMMARY
    }
    fn config_schema(&self) -> serde_json::Value {
        let schema = schemars::generate::SchemaSettings::draft07()
            .into_generator()
            .into_root_schema_for::<T::Config>();
        serde_json::to_value(schema).unwrap_or_default()
    }
    fn outputs(&self) -> Vec<OutputSpec> {
        output_specs::<T::Output>()
    }
    fn supports_background(&self) -> bool {
        T::BACKGROUND
    }
    fn command_line_fields(&self) -> &'static [&'static str] {
        T::COMMAND_LINE_FIELDS
    }
    fn build(&self, with: &serde_json::Value) -> Result<Box<dyn StepAction>, ConfigError> {
        let cfg: T::Config = deserialize_config(with)?;
        T::check(&cfg)?;
        Ok(Box::new(TypedAction::<T> { cfg }))
    }
}

/// serde with the path of the offending field, so the error points into `with`.
pub fn deserialize_config<C: DeserializeOwned>(with: &serde_json::Value) -> Result<C, ConfigError> {
    serde_path_to_error::deserialize(with).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        ConfigError {
            path: if path == "." { String::new() } else { path },
            message: inner,
            hint: None,
        }
    })
}

/// The step kinds a run can use, by name.
#[derive(Default, Clone)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn StepKind>>,
}

impl Registry {
    pub fn register(&mut self, kind: impl StepKind + 'static) {
        self.kinds.insert(kind.name(), Arc::new(kind));
    }
    pub fn get(&self, name: &str) -> Option<&Arc<dyn StepKind>> {
        self.kinds.get(name)
    }
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }
    pub fn kinds(&self) -> impl Iterator<Item = &Arc<dyn StepKind>> {
        self.kinds.values()
    }
}

/// Renders a step's `with` and builds its action. Pure `{{path}}` values keep their type
/// first (an integer param fills an integer field); when that does not fit the kind's
/// config, the same templates are tried once more as text (an integer param inside a
/// list of arguments). The first error is the one reported.
pub fn render_and_build(
    kind: &dyn StepKind,
    renderer: &crate::template::Renderer,
    with: &serde_json::Value,
    ctx: &serde_json::Value,
    mode: crate::template::Mode,
) -> Result<(serde_json::Value, Box<dyn StepAction>), BuildError> {
    let typed = renderer
        .render_value(with, ctx, mode)
        .map_err(BuildError::Template)?;
    let first = match kind.build(&typed) {
        Ok(action) => return Ok((typed, action)),
        Err(e) => e,
    };
    let text = renderer
        .render_value_as_text(with, ctx, mode)
        .map_err(BuildError::Template)?;
    match kind.build(&text) {
        Ok(action) => Ok((text, action)),
        Err(_) => Err(BuildError::Config(first)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Template(crate::template::TemplateError),
    #[error("{0}")]
    Config(ConfigError),
}
