//! The executor: runs a validated plan's steps as their needs allow, with `when`,
//! background steps, retries, timeouts, cancellation, a journal and a final report.

use crate::journal::{write_json_atomic, Journal, JournalError};
use crate::model::{SecretSource, When};
use crate::redact::Redactor;
use crate::report::{RunReport, RunStatus, StepReport, StepStatus};
use crate::resources::{ConnectionProvider, Connections};
use crate::step::{Outputs, Registry, StepContext, StepError, UntilResult};
use crate::template::{Mode, Renderer};
use crate::validate::{env_map, Loaded};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("secret `{name}`: {reason}")]
    Secret { name: String, reason: String },
    #[error("cannot create the run directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run id `{id}` is not a single file name; nothing is written outside {}", .state_dir.display())]
    RunId { id: String, state_dir: PathBuf },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("connection `{name}`: {reason}")]
    Connection { name: String, reason: String },
    /// The run went to its end but its journal or report could not be written: a run
    /// nobody can look up later is a failed run.
    #[error("the run is not recorded: {reason}")]
    NotRecorded {
        report: Box<RunReport>,
        reason: String,
    },
}

pub struct RunOptions {
    pub state_dir: PathBuf,
    pub params: BTreeMap<String, Value>,
    /// Cancelled by SIGINT/SIGTERM: running steps stop, failure/always steps still run.
    pub interrupt: CancellationToken,
    /// Cancelled by a second signal: stops the cleanup steps too.
    pub abort: CancellationToken,
    /// How long a cancelled or timed-out step gets to clean up.
    pub grace: Duration,
}

/// Reads every secret's value (env or file); missing ones stop the run before any step.
pub fn read_secrets(loaded: &Loaded) -> Result<BTreeMap<String, String>, RunError> {
    let mut out = BTreeMap::new();
    for s in &loaded.plan.secrets {
        let value = match &s.source {
            SecretSource::Env(var) => {
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
            }
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("cannot read {path}: {e}")),
        };
        match value {
            Ok(v) => {
                out.insert(s.name.clone(), v);
            }
            Err(_) if s.optional => {
                out.insert(s.name.clone(), String::new());
            }
            Err(reason) => {
                return Err(RunError::Secret {
                    name: s.name.clone(),
                    reason,
                })
            }
        }
    }
    Ok(out)
}

pub fn new_run_id(plan: &str) -> String {
    let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    format!("{plan}-{now}-{:04x}", fastrand::u16(..))
}

enum Msg {
    Ready(usize),
    Done(usize, Outcome),
}

struct Outcome {
    status: StepStatus,
    outputs: Outputs,
    attempts: u32,
    error: Option<StepError>,
}

struct Slot {
    status: StepStatus,
    /// A background step that signalled ready (or any finished step).
    ready: bool,
    cancel: CancellationToken,
    until_tx: Option<oneshot::Sender<UntilResult>>,
    started: Option<(Instant, String)>,
    duration: Option<Duration>,
    outputs: Outputs,
    attempts: u32,
    error: Option<StepError>,
    skip_reason: Option<String>,
    /// Skipped because its `if` was false: dependents treat it as done, not failed.
    disabled: bool,
}

impl Slot {
    fn new() -> Self {
        Self {
            status: StepStatus::Pending,
            ready: false,
            cancel: CancellationToken::new(),
            until_tx: None,
            started: None,
            duration: None,
            outputs: Outputs::new(),
            attempts: 0,
            error: None,
            skip_reason: None,
            disabled: false,
        }
    }
}

/// What the scheduler decides for a pending step now.
enum Decision {
    Wait,
    Start,
    Skip(String),
}

struct Run<'a> {
    loaded: &'a Loaded,
    registry: &'a Registry,
    renderer: Arc<Renderer>,
    journal: Journal,
    redactor: Arc<Redactor>,
    connections: Connections,
    base_ctx: Value,
    slots: Vec<Slot>,
    failed: bool,
    interrupted: bool,
    tx: mpsc::UnboundedSender<Msg>,
    run_id: String,
    run_dir: PathBuf,
    opts: &'a RunOptions,
    started_at: String,
    t0: Instant,
    host: String,
}

/// Runs a validated plan to its end and returns the report (also written as
/// `report.json` beside the journal).
pub async fn execute(
    loaded: &Loaded,
    registry: &Registry,
    provider: Option<Arc<dyn ConnectionProvider>>,
    opts: RunOptions,
) -> Result<RunReport, RunError> {
    let plan = &loaded.plan;
    let secrets = read_secrets(loaded)?;
    let redactor = Arc::new(Redactor::new(secrets.values().cloned()));
    let run_id = new_run_id(&plan.name);
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // Validation checks plan names; this keeps any other caller inside the state dir.
    let run_dir =
        crate::history::run_dir(&opts.state_dir, &run_id).ok_or_else(|| RunError::RunId {
            id: run_id.clone(),
            state_dir: opts.state_dir.clone(),
        })?;
    std::fs::create_dir_all(&run_dir).map_err(|source| RunError::StateDir {
        path: run_dir.clone(),
        source,
    })?;
    let journal = Journal::create(&run_dir.join("journal.jsonl"), &run_id, redactor.clone())?;

    let base_ctx = json!({
        "params": opts.params,
        "secrets": secrets,
        "env": env_map(),
        "run": {"id": run_id, "started_at": started_at, "plan": plan.name},
        "steps": {},
    });
    let renderer = Arc::new(Renderer::new());
    let connections = render_connections(loaded, &renderer, &base_ctx, provider)?;
    // A run that cannot be recorded does not start: nothing has been touched yet.
    journal.try_event(
        "run_started",
        json!({"plan": plan.name, "file": plan.file, "params": opts.params,
               "steps": plan.steps.iter().map(|s| &s.id).collect::<Vec<_>>(),
               "uses": plan.steps.iter().map(|s| (s.id.clone(), json!(s.uses))).collect::<serde_json::Map<_, _>>()}),
    )?;
    tracing::info!(run = %run_id, plan = %plan.name, "run started");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut run = Run {
        loaded,
        registry,
        renderer,
        journal: journal.clone(),
        redactor: redactor.clone(),
        connections: connections.clone(),
        base_ctx,
        slots: (0..plan.steps.len()).map(|_| Slot::new()).collect(),
        failed: false,
        interrupted: false,
        tx,
        run_id: run_id.clone(),
        run_dir: run_dir.clone(),
        opts: &opts,
        started_at: started_at.clone(),
        t0: Instant::now(),
        host: stagehand_host::machine::host_name(),
    };
    let t0 = run.t0;
    loop {
        run.schedule();
        let running = run.slots.iter().any(|s| s.status == StepStatus::Running);
        if !running {
            run.skip_remaining();
            break;
        }
        // An interrupt is handled before any further message starts another step.
        tokio::select! {
            biased;
            _ = opts.interrupt.cancelled(), if !run.interrupted => run.on_interrupt(),
            msg = rx.recv() => match msg {
                Some(Msg::Ready(i)) => run.on_ready(i),
                Some(Msg::Done(i, outcome)) => run.on_done(i, outcome),
                None => break,
            },
        }
    }
    connections.close_all().await;
    let status = if run.interrupted {
        RunStatus::Interrupted
    } else if run.failed {
        RunStatus::Failed
    } else {
        RunStatus::Succeeded
    };
    let report = run.report(status, started_at, t0.elapsed());
    journal.event(
        "run_finished",
        json!({"status": status, "duration_ms": report.duration_ms}),
    );
    let report_path = run_dir.join("report.json");
    let written = write_json_atomic(&report_path, &report, &redactor);
    tracing::info!(run = %run_id, status = ?status, "run finished");
    recorded(report, written, &journal, &report_path)
}

/// The report, or [`RunError::NotRecorded`] (the run counted as failed) when its report
/// or part of its journal could not be written.
fn recorded(
    mut report: RunReport,
    written: std::io::Result<()>,
    journal: &Journal,
    report_path: &std::path::Path,
) -> Result<RunReport, RunError> {
    let reason = match (written, journal.lost()) {
        (Err(e), _) => format!("cannot write {}: {e}", report_path.display()),
        (Ok(()), Some(lost)) => format!("{lost}; the journal is incomplete"),
        (Ok(()), None) => return Ok(report),
    };
    tracing::error!(%reason, "the run is not recorded");
    if report.status == RunStatus::Succeeded {
        report.status = RunStatus::Failed;
    }
    Err(RunError::NotRecorded {
        report: Box::new(report),
        reason,
    })
}

fn render_connections(
    loaded: &Loaded,
    renderer: &Renderer,
    ctx: &Value,
    provider: Option<Arc<dyn ConnectionProvider>>,
) -> Result<Connections, RunError> {
    let mut configs = BTreeMap::new();
    for c in &loaded.plan.connections {
        let rendered = renderer
            .render_value(&c.config, ctx, Mode::Run)
            .map_err(|e| RunError::Connection {
                name: c.name.clone(),
                reason: e.0,
            })?;
        configs.insert(c.name.clone(), rendered);
    }
    Ok(Connections::new(provider, configs))
}

impl Run<'_> {
    fn steps(&self) -> &[crate::model::StepSpec] {
        &self.loaded.plan.steps
    }

    fn schedule(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].status != StepStatus::Pending {
                continue;
            }
            match self.decide(i) {
                Decision::Wait => {}
                Decision::Skip(reason) => self.skip(i, reason),
                Decision::Start => {
                    if self.steps()[i].background || self.has_capacity() {
                        self.start(i);
                    }
                }
            }
        }
    }

    fn has_capacity(&self) -> bool {
        let busy = self
            .slots
            .iter()
            .zip(self.steps())
            .filter(|(s, spec)| s.status == StepStatus::Running && !spec.background)
            .count();
        busy < self.loaded.plan.max_parallel
    }

    fn decide(&self, i: usize) -> Decision {
        let spec = &self.steps()[i];
        let mut all_ok = true;
        for need in &spec.needs {
            let Some(n) = self.loaded.step_index(need) else {
                continue;
            };
            let slot = &self.slots[n];
            let done = if self.loaded.waits_for_completion(i, n) {
                slot.status.is_terminal()
            } else {
                slot.ready || slot.status.is_terminal()
            };
            if !done {
                return Decision::Wait;
            }
            // A step skipped by its own `if` counts as done for the steps after it.
            let ok = slot.status == StepStatus::Succeeded
                || slot.disabled
                || (slot.ready && slot.status == StepStatus::Running);
            all_ok &= ok;
        }
        match spec.when {
            When::Always => Decision::Start,
            When::Failure if self.failed => Decision::Start,
            When::Failure => Decision::Wait,
            When::Success if self.failed => Decision::Skip("the run has failed".into()),
            When::Success if !all_ok => Decision::Skip("a step it needs did not succeed".into()),
            When::Success => Decision::Start,
        }
    }

    /// Nothing runs and nothing can start: what is left is skipped.
    fn skip_remaining(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].status == StepStatus::Pending {
                let reason = match self.steps()[i].when {
                    When::Failure => "no step failed",
                    _ => "its needs never completed",
                };
                self.skip(i, reason.into());
            }
        }
    }

    fn skip(&mut self, i: usize, reason: String) {
        let id = self.steps()[i].id.clone();
        tracing::info!(step = %id, %reason, "step skipped");
        self.journal
            .event("step_skipped", json!({"step": id, "reason": reason}));
        self.slots[i].status = StepStatus::Skipped;
        self.slots[i].skip_reason = Some(reason);
        self.notify_until(i);
    }

    /// Renders a step's `if:`; None when it has none.
    fn condition_holds(&self, i: usize) -> Result<bool, String> {
        let Some(cond) = &self.steps()[i].condition else {
            return Ok(true);
        };
        self.renderer
            .render_value(cond, &self.context_with_outputs(), Mode::Run)
            .map(|v| crate::template::is_truthy(&v))
            .map_err(|e| e.0)
    }

    fn start(&mut self, i: usize) {
        let spec = self.steps()[i].clone();
        match self.condition_holds(i) {
            Ok(true) => {}
            Ok(false) => {
                self.slots[i].disabled = true;
                return self.skip(i, "its `if` condition is false".into());
            }
            Err(e) => {
                self.journal.event("step_finished", json!({"step": spec.id, "status": StepStatus::Failed, "error": format!("cannot evaluate `if`: {e}")}));
                self.slots[i].status = StepStatus::Failed;
                self.slots[i].error = Some(StepError::fatal(format!("cannot evaluate `if`: {e}")));
                self.fail_run();
                self.notify_until(i);
                return;
            }
        }
        let Some(kind) = self.registry.get(&spec.uses).cloned() else {
            self.skip(i, format!("unknown step kind {}", spec.uses));
            return;
        };
        // Work steps are cancelled one by one on failure or interrupt; cleanup steps
        // (failure/always) only by a second interrupt, which cancels everything.
        let token = self.opts.abort.child_token();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (until_tx, until_rx) = oneshot::channel();
        let slot = &mut self.slots[i];
        slot.status = StepStatus::Running;
        slot.cancel = token.clone();
        slot.started = Some((Instant::now(), now_text()));
        if spec.until.is_some() {
            slot.until_tx = Some(until_tx);
        }
        let ctx = StepContext {
            run_id: self.run_id.clone(),
            step_id: spec.id.clone(),
            attempt: 1,
            cancel: token,
            connections: self.connections.clone(),
            run_dir: self.run_dir.clone(),
            ready: Mutex::new(Some(ready_tx)),
            until: Mutex::new(Some(until_rx)),
            redactor: self.redactor.clone(),
            background: spec.background,
            upstream: self.upstream_of(i),
            run: self.snapshot(),
        };
        let tx = self.tx.clone();
        tokio::spawn(async move {
            if ready_rx.await.is_ok() {
                let _ = tx.send(Msg::Ready(i));
            }
        });
        let task = StepTask {
            index: i,
            spec,
            kind,
            ctx_value: self.context_with_outputs(),
            renderer: self.renderer.clone(),
            journal: self.journal.clone(),
            grace: self.opts.grace,
        };
        let tx = self.tx.clone();
        // A step that panics must still end: its task dies with the panic, so the outcome
        // is sent from a task that watches it (else the run waits for it forever).
        let step_task = tokio::spawn(async move { task.run(ctx).await });
        tokio::spawn(async move {
            let outcome = match step_task.await {
                Ok(outcome) => outcome,
                Err(e) => {
                    let why = if e.is_panic() {
                        let p = e.into_panic();
                        p.downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic".into())
                    } else {
                        e.to_string()
                    };
                    failed(1, StepError::fatal(format!("the step crashed: {why}")))
                }
            };
            let _ = tx.send(Msg::Done(i, outcome));
        });
    }

    fn upstream_of(&self, i: usize) -> BTreeMap<String, crate::step::Upstream> {
        self.loaded.ancestors[i]
            .iter()
            .filter(|a| self.slots[**a].status == StepStatus::Succeeded)
            .map(|a| {
                let spec = &self.steps()[*a];
                (
                    spec.id.clone(),
                    crate::step::Upstream {
                        uses: spec.uses.clone(),
                        outputs: self.slots[*a].outputs.clone(),
                    },
                )
            })
            .collect()
    }

    fn context_with_outputs(&self) -> Value {
        let mut ctx = self.base_ctx.clone();
        let steps: serde_json::Map<String, Value> = self
            .slots
            .iter()
            .zip(self.steps())
            .filter(|(s, _)| s.status.is_terminal())
            .map(|(s, spec)| {
                (
                    spec.id.clone(),
                    json!({"outputs": s.outputs, "status": s.status}),
                )
            })
            .collect();
        ctx["steps"] = Value::Object(steps);
        ctx["report"] = serde_json::to_value(self.snapshot()).unwrap_or_default();
        ctx
    }

    /// The run so far, for the step about to start (`StepContext::run`, `{{report.*}}`).
    fn snapshot(&self) -> crate::step::RunSnapshot {
        let all = self.step_reports();
        let failed_steps: Vec<_> = all
            .iter()
            .filter(|s| matches!(s.status, StepStatus::Failed | StepStatus::Cancelled))
            .cloned()
            .collect();
        let elapsed = self.t0.elapsed();
        crate::step::RunSnapshot {
            id: self.run_id.clone(),
            plan: self.loaded.plan.name.clone(),
            plan_file: self.loaded.plan.file.clone(),
            host: self.host.clone(),
            started_at: self.started_at.clone(),
            duration_ms: elapsed.as_millis() as u64,
            // Whole seconds, or milliseconds under a second.
            duration: humantime::format_duration(if elapsed.as_secs() == 0 {
                Duration::from_millis(elapsed.as_millis() as u64)
            } else {
                Duration::from_secs(elapsed.as_secs())
            })
            .to_string(),
            status: if self.interrupted {
                RunStatus::Interrupted
            } else if self.failed {
                RunStatus::Failed
            } else {
                RunStatus::Succeeded
            },
            failed_step: failed_steps.first().cloned(),
            failed_steps,
            steps: all
                .into_iter()
                .map(|s| (s.id.clone(), serde_json::to_value(s).unwrap_or_default()))
                .collect(),
        }
    }

    fn on_ready(&mut self, i: usize) {
        self.slots[i].ready = true;
        self.journal
            .event("step_ready", json!({"step": self.steps()[i].id}));
    }

    fn on_done(&mut self, i: usize, o: Outcome) {
        let spec = self.steps()[i].clone();
        let slot = &mut self.slots[i];
        slot.status = o.status;
        slot.ready = true;
        slot.outputs = o.outputs;
        slot.attempts = o.attempts;
        slot.duration = slot.started.as_ref().map(|(t, _)| t.elapsed());
        slot.error = o.error;
        let duration_ms = slot.duration.map(|d| d.as_millis() as u64);
        let error = slot
            .error
            .as_ref()
            .map(|e| self.redactor.redact(&e.message));
        let hint = slot.error.as_ref().and_then(|e| e.hint.clone());
        let advisory =
            o.status == StepStatus::Failed && slot.error.as_ref().is_some_and(|e| e.advisory);
        self.journal.event(
            "step_finished",
            json!({"step": spec.id, "status": o.status, "attempts": o.attempts, "duration_ms": duration_ms,
                   "outputs": self.redactor.redact_json(&Value::Object(self.slots[i].outputs.clone())), "error": error, "hint": hint}),
        );
        match o.status {
            StepStatus::Failed | StepStatus::Cancelled if !spec.continue_on_error && !advisory => {
                tracing::error!(step = %spec.id, error = error.as_deref().unwrap_or(""), "step failed");
                self.fail_run();
            }
            StepStatus::Failed if advisory => {
                tracing::warn!(step = %spec.id, error = error.as_deref().unwrap_or(""), "step failed (it does not fail the run)")
            }
            StepStatus::Failed => {
                tracing::warn!(step = %spec.id, "step failed (continue_on_error)")
            }
            _ => tracing::info!(step = %spec.id, status = ?o.status, "step finished"),
        }
        self.notify_until(i);
    }

    /// The first failure fails the run; with fail_fast the running work steps stop.
    fn fail_run(&mut self) {
        self.failed = true;
        if !self.loaded.plan.fail_fast {
            return;
        }
        for (slot, spec) in self.slots.iter().zip(&self.loaded.plan.steps) {
            if slot.status == StepStatus::Running && spec.when == When::Success {
                slot.cancel.cancel();
            }
        }
    }

    /// Tells background steps whose `until` is step `i` that it ended.
    fn notify_until(&mut self, i: usize) {
        let id = self.steps()[i].id.clone();
        let status = self.slots[i].status;
        let outputs = self.slots[i].outputs.clone();
        for (j, spec) in self.loaded.plan.steps.iter().enumerate() {
            if spec.until.as_deref() != Some(id.as_str()) {
                continue;
            }
            if let Some(tx) = self.slots[j].until_tx.take() {
                let msg = if status == StepStatus::Succeeded {
                    Ok(outputs.clone())
                } else {
                    Err(format!("`{id}` ended as {status:?}").to_lowercase())
                };
                let _ = tx.send(msg);
            }
        }
    }

    fn on_interrupt(&mut self) {
        tracing::warn!("interrupted: stopping running steps, then running failure/always steps");
        self.journal.event("run_interrupted", json!({}));
        self.interrupted = true;
        self.failed = true;
        for (slot, spec) in self.slots.iter().zip(&self.loaded.plan.steps) {
            if slot.status == StepStatus::Running && spec.when == When::Success {
                slot.cancel.cancel();
            }
        }
    }

    /// Every step as the report shows it (outputs and errors redacted).
    fn step_reports(&self) -> Vec<StepReport> {
        self.slots
            .iter()
            .zip(self.steps())
            .map(|(s, spec)| StepReport {
                id: spec.id.clone(),
                uses: spec.uses.clone(),
                status: s.status,
                attempts: s.attempts,
                started_at: s.started.as_ref().map(|(_, t)| t.clone()),
                duration_ms: s.duration.map(|d| d.as_millis() as u64),
                outputs: match self.redactor.redact_json(&Value::Object(s.outputs.clone())) {
                    Value::Object(m) => m,
                    _ => Outputs::new(),
                },
                error: s
                    .error
                    .as_ref()
                    .map(|e| self.redactor.redact(&e.message))
                    .or_else(|| s.skip_reason.as_ref().map(|r| format!("skipped: {r}"))),
                hint: s.error.as_ref().and_then(|e| e.hint.clone()),
            })
            .collect()
    }

    fn report(&self, status: RunStatus, started_at: String, elapsed: Duration) -> RunReport {
        let steps = self.step_reports();
        RunReport {
            run_id: self.run_id.clone(),
            plan: self.loaded.plan.name.clone(),
            plan_file: self.loaded.plan.file.clone(),
            status,
            started_at,
            finished_at: now_text(),
            duration_ms: elapsed.as_millis() as u64,
            params: self.opts.params.clone(),
            steps,
            journal: self.journal.path().display().to_string(),
        }
    }
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One step's run: render, build, attempts with retries, timeout, cancellation.
struct StepTask {
    index: usize,
    spec: crate::model::StepSpec,
    kind: Arc<dyn crate::step::StepKind>,
    ctx_value: Value,
    renderer: Arc<Renderer>,
    journal: Journal,
    grace: Duration,
}

impl StepTask {
    async fn run(self, mut ctx: StepContext) -> Outcome {
        let _ = self.index;
        let built = crate::step::render_and_build(
            self.kind.as_ref(),
            &self.renderer,
            &self.spec.with,
            &self.ctx_value,
            Mode::Run,
        );
        let (rendered, action) = match built {
            Ok(b) => b,
            Err(crate::step::BuildError::Template(e)) => {
                return failed(
                    0,
                    StepError::fatal(format!("cannot render `with`: {}", e.0)),
                )
            }
            Err(crate::step::BuildError::Config(e)) => {
                return failed(
                    0,
                    StepError::fatal(format!("bad config at with.{}: {}", e.path, e.message)),
                )
            }
        };
        let description = action.describe();
        self.journal.event(
            "step_started",
            json!({"step": self.spec.id, "uses": self.spec.uses, "with": rendered, "description": description}),
        );
        // The sentence holds rendered values: secrets are masked as in the journal.
        tracing::info!(step = %self.spec.id, "{}", ctx.redact(&description));
        let cancel = ctx.cancel.clone();
        let limit = self.spec.timeout;
        let attempts_loop = self.attempts(action.as_ref(), &mut ctx);
        tokio::pin!(attempts_loop);
        let deadline = async {
            match limit {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        // A step that finished as its time ran out counts as finished.
        tokio::select! {
            biased;
            outcome = &mut attempts_loop => outcome,
            _ = deadline => {
                cancel.cancel();
                let limit = limit.unwrap_or_default();
                let waited = tokio::time::timeout(self.grace, &mut attempts_loop).await;
                let cleanup = if waited.is_ok() { "it stopped and cleaned up" } else { "it did not stop within the grace period and was abandoned" };
                let attempts = waited.map(|o| o.attempts).unwrap_or(1);
                failed(attempts, StepError::fatal(format!(
                    "timed out after {} ({cleanup})", humantime::format_duration(limit)))
                    .with_hint("raise the step's `timeout`, or find out why it is slow"))
            }
            _ = cancel.cancelled() => {
                match tokio::time::timeout(self.grace, &mut attempts_loop).await {
                    Ok(o) if o.status == StepStatus::Succeeded => o,
                    Ok(o) => Outcome { status: StepStatus::Cancelled, error: Some(StepError::cancelled()), ..o },
                    Err(_) => Outcome { status: StepStatus::Cancelled, outputs: Outputs::new(), attempts: 1,
                        error: Some(StepError::fatal("cancelled; it did not stop within the grace period")) },
                }
            }
        }
    }

    async fn attempts(
        &self,
        action: &dyn crate::step::StepAction,
        ctx: &mut StepContext,
    ) -> Outcome {
        let policy = &self.spec.retry;
        let mut delays = backoff_delays(policy);
        let mut attempt = 1;
        loop {
            ctx.attempt = attempt;
            let t = Instant::now();
            let result = action.run(ctx).await;
            match result {
                Ok(outputs) => {
                    return Outcome {
                        status: StepStatus::Succeeded,
                        outputs,
                        attempts: attempt,
                        error: None,
                    }
                }
                Err(e) if ctx.cancel.is_cancelled() => {
                    return Outcome {
                        status: StepStatus::Cancelled,
                        outputs: Outputs::new(),
                        attempts: attempt,
                        error: Some(e),
                    }
                }
                Err(e) => {
                    let delay = if e.retryable { delays.next() } else { None };
                    let Some(delay) = delay else {
                        return failed(attempt, e);
                    };
                    self.journal.event(
                        "step_retry",
                        json!({"step": self.spec.id, "attempt": attempt, "error": e.message,
                               "attempt_ms": t.elapsed().as_millis() as u64, "delay_ms": delay.as_millis() as u64}),
                    );
                    tracing::warn!(step = %self.spec.id, attempt, error = %ctx.redact(&e.message), delay = ?delay, "retrying");
                    tokio::select! {
                        biased;
                        _ = ctx.cancel.cancelled() => return Outcome { status: StepStatus::Cancelled, outputs: Outputs::new(), attempts: attempt, error: Some(e) },
                        _ = tokio::time::sleep(delay) => {}
                    }
                    attempt += 1;
                }
            }
        }
    }
}

/// Delays between attempts: exponential from `backoff`, capped at `max_backoff`, with
/// jitter when asked (backon's builder, so the policy matches the usual definition).
fn backoff_delays(policy: &crate::model::RetryPolicy) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    let mut b = backon::ExponentialBuilder::default()
        .with_min_delay(policy.backoff)
        .with_max_delay(policy.max_backoff)
        .with_factor(2.0)
        .with_max_times(policy.attempts.saturating_sub(1) as usize);
    if policy.jitter {
        b = b.with_jitter();
    }
    b.build()
}

fn failed(attempts: u32, e: StepError) -> Outcome {
    Outcome {
        status: StepStatus::Failed,
        outputs: Outputs::new(),
        attempts,
        error: Some(e),
    }
}

/// `stagehand run --check`: each step's preflight against the live system, read-only.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub plan: String,
    pub steps: Vec<CheckedStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckedStep {
    pub id: String,
    pub uses: String,
    pub findings: Vec<crate::step::Finding>,
}

impl CheckReport {
    pub fn has_errors(&self) -> bool {
        self.steps
            .iter()
            .flat_map(|s| &s.findings)
            .any(|f| f.level == crate::step::Level::Error)
    }
}

/// Runs every step's preflight (outputs of earlier steps are samples: nothing runs).
pub async fn check(
    loaded: &Loaded,
    registry: &Registry,
    provider: Option<Arc<dyn ConnectionProvider>>,
    params: &BTreeMap<String, Value>,
) -> Result<CheckReport, RunError> {
    let secrets = read_secrets(loaded)?;
    let redactor = Arc::new(Redactor::new(secrets.values().cloned()));
    let renderer = Renderer::new();
    let mut ctx_value = crate::validate::sample_context(&loaded.plan, params, registry);
    ctx_value["secrets"] = json!(secrets);
    let connections = render_connections(loaded, &renderer, &ctx_value, provider)?;
    let mut seen = std::collections::HashSet::new();
    let mut steps = Vec::new();
    for spec in &loaded.plan.steps {
        let Some(kind) = registry.get(&spec.uses) else {
            continue;
        };
        let findings = match crate::step::render_and_build(
            kind.as_ref(),
            &renderer,
            &spec.with,
            &ctx_value,
            Mode::Check,
        ) {
            Err(e) => vec![crate::step::Finding::error(format!(
                "cannot build the step: {e}"
            ))],
            Ok((_, action)) => {
                let mut ctx = StepContext::detached(&spec.id, connections.clone());
                ctx.redactor = redactor.clone();
                action.preflight(&ctx).await
            }
        };
        // The same finding from several steps (one server, one user) is shown once.
        let findings: Vec<_> = findings
            .into_iter()
            .filter(|f| seen.insert(f.message.clone()))
            .collect();
        let findings = findings
            .into_iter()
            .map(|mut f| {
                f.message = redactor.redact(&f.message);
                f
            })
            .collect();
        steps.push(CheckedStep {
            id: spec.id.clone(),
            uses: spec.uses.clone(),
            findings,
        });
    }
    connections.close_all().await;
    Ok(CheckReport {
        plan: loaded.plan.name.clone(),
        steps,
    })
}
