//! The executor with an in-process step kind: concurrency limits and `if:` conditions.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stagehand_engine::{
    Checker, Registry, RunOptions, StepContext, StepError, StepStatus, Typed, TypedStep,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NapConfig {
    ms: u64,
}

#[derive(Serialize, JsonSchema)]
struct NapOutput {
    /// how long
    slept_ms: u64,
}

struct Nap;

#[async_trait]
impl TypedStep for Nap {
    type Config = NapConfig;
    const NAME: &'static str = "nap";
    type Output = NapOutput;
    const SUMMARY: &'static str = "sleeps";
    fn describe(cfg: &NapConfig) -> String {
        format!("sleeps {} ms", cfg.ms)
    }
    async fn run(cfg: &NapConfig, _ctx: &StepContext) -> Result<NapOutput, StepError> {
        let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        PEAK.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(cfg.ms)).await;
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        Ok(NapOutput { slept_ms: cfg.ms })
    }
}

fn registry() -> Registry {
    let mut r = Registry::default();
    r.register(Typed::<Nap>::default());
    r
}

async fn run(text: &str, sets: &[(&str, &str)]) -> stagehand_engine::RunReport {
    let registry = registry();
    let checker = Checker {
        registry: &registry,
        provider: None,
    };
    let sets: Vec<(String, String)> = sets
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (loaded, params) = checker
        .load_text("t.yaml", text, &sets, false)
        .unwrap_or_else(|d| panic!("plan invalid: {d:?}"));
    let state = tempfile::tempdir().expect("tempdir");
    let opts = RunOptions {
        state_dir: state.path().to_path_buf(),
        params,
        interrupt: Default::default(),
        abort: Default::default(),
        grace: Duration::from_secs(5),
    };
    stagehand_engine::execute(&loaded, &registry, None, opts)
        .await
        .expect("run")
}

#[tokio::test]
async fn max_parallel_bounds_concurrency_and_if_false_is_transparent() {
    let plan = r#"
version: 1
name: t
max_parallel: 2
params:
  flag: {type: boolean, default: false}
steps:
  - {id: a, uses: nap, with: {ms: 150}}
  - {id: b, uses: nap, with: {ms: 150}}
  - {id: c, uses: nap, with: {ms: 150}}
  - {id: d, uses: nap, with: {ms: 150}}
  - {id: off, uses: nap, needs: [a, b, c, d], if: "{{params.flag}}", with: {ms: 1}}
  - {id: after_off, uses: nap, needs: [off], with: {ms: 1}}
"#;
    let t0 = std::time::Instant::now();
    let report = run(plan, &[]).await;
    assert_eq!(report.status, stagehand_engine::RunStatus::Succeeded);
    assert_eq!(
        PEAK.load(Ordering::SeqCst),
        2,
        "never more than max_parallel steps at once"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "4 steps of 150 ms, 2 at a time"
    );
    let status = |id: &str| report.step(id).map(|s| s.status);
    assert_eq!(status("off"), Some(StepStatus::Skipped));
    assert!(report
        .step("off")
        .and_then(|s| s.error.clone())
        .unwrap_or_default()
        .contains("`if` condition is false"));
    // A step disabled by its condition does not make its dependents fail or skip.
    assert_eq!(
        status("after_off"),
        Some(StepStatus::Succeeded),
        "{:?}",
        report.step("after_off")
    );

    let report = run(plan, &[("flag", "true")]).await;
    assert_eq!(
        report.step("off").map(|s| s.status),
        Some(StepStatus::Succeeded)
    );
}

#[tokio::test]
async fn a_run_id_that_is_not_one_path_component_is_refused() {
    let registry = registry();
    let checker = Checker {
        registry: &registry,
        provider: None,
    };
    let (mut loaded, params) = checker
        .load_text(
            "t.yaml",
            "version: 1\nname: t\nsteps:\n  - {id: a, uses: nap, with: {ms: 1}}\n",
            &[],
            false,
        )
        .unwrap_or_else(|d| panic!("plan invalid: {d:?}"));
    // Validation refuses such names; a caller that builds plans itself is stopped here.
    loaded.plan.name = "../../escaped".into();
    let root = tempfile::tempdir().expect("tempdir");
    let state = root.path().join("a/b/state");
    let opts = RunOptions {
        state_dir: state.clone(),
        params,
        interrupt: Default::default(),
        abort: Default::default(),
        grace: Duration::from_secs(5),
    };
    let err = stagehand_engine::execute(&loaded, &registry, None, opts)
        .await
        .expect_err("the run is refused");
    assert!(
        matches!(err, stagehand_engine::executor::RunError::RunId { .. }),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("run id `../../escaped-"),
        "{err}"
    );
    assert!(!root.path().join("a/escaped").exists());
    assert!(!state.exists(), "nothing was written");
}

/// A step that panics (as `copy` does when its size-ordered sort meets a file that grew
/// mid-sort: "user-provided comparison function does not correctly implement a total
/// order").
struct Boom;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct BoomConfig {}

#[async_trait]
impl TypedStep for Boom {
    type Config = BoomConfig;
    const NAME: &'static str = "boom";
    type Output = NapOutput;
    const SUMMARY: &'static str = "panics";
    fn describe(_cfg: &BoomConfig) -> String {
        "panics".into()
    }
    async fn run(_cfg: &BoomConfig, _ctx: &StepContext) -> Result<NapOutput, StepError> {
        tokio::task::yield_now().await;
        panic!("user-provided comparison function does not correctly implement a total order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_panics_ends_the_run_even_when_interrupted() {
    let plan = r#"
version: 1
name: t
steps:
  - {id: b, uses: boom, with: {}}
  - {id: c, uses: nap, needs: [b], with: {ms: 1}}
"#;
    let mut registry = Registry::default();
    registry.register(Typed::<Nap>::default());
    registry.register(Typed::<Boom>::default());
    let checker = Checker {
        registry: &registry,
        provider: None,
    };
    let (loaded, params) = checker
        .load_text("t.yaml", plan, &[], false)
        .unwrap_or_else(|d| panic!("plan invalid: {d:?}"));
    let state = tempfile::tempdir().expect("tempdir");
    let interrupt = tokio_util::sync::CancellationToken::new();
    let opts = RunOptions {
        state_dir: state.path().to_path_buf(),
        params,
        interrupt: interrupt.clone(),
        abort: Default::default(),
        grace: Duration::from_secs(1),
    };
    // As CI did: an interrupt after a while.
    let int = interrupt.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        int.cancel();
    });
    let ended = tokio::time::timeout(
        Duration::from_secs(8),
        stagehand_engine::execute(&loaded, &registry, None, opts),
    )
    .await;
    let journal = std::fs::read_dir(state.path().join("runs"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| std::fs::read_to_string(e.path().join("journal.jsonl")).unwrap_or_default())
        .unwrap_or_default();
    eprintln!("journal:\n{journal}");
    assert!(
        ended.is_ok(),
        "the run never ended: step b panicked, its Done message was never sent, and the interrupt did not help"
    );
}
