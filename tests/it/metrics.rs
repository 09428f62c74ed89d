//! The metrics a run publishes: the textfile (parsed with a Prometheus text-format
//! parser) holds the figures of the run — a real hot backup with its bytes and lock hold
//! times — and the same text reaches a Pushgateway; a failed run keeps the last success.

use crate::servers::HttpReceiver;
use crate::support::{backup_params, run_plan, server_with, write_plan};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

struct Metrics(Vec<prometheus_parse::Sample>);

impl Metrics {
    fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).expect("the metrics file exists");
        let lines = text.lines().map(|l| Ok(l.to_string()));
        Self(
            prometheus_parse::Scrape::parse(lines)
                .expect("the metrics file parses")
                .samples,
        )
    }

    /// The value of the one sample of `name` with these labels (others may exist).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .0
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name} is a gauge, not {other:?}"),
            })
            .collect();
        assert_eq!(found.len(), 1, "one sample {name}{labels:?}: {found:?}");
        found[0]
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.metric == name)
    }
}

fn unix(rfc3339: &str) -> f64 {
    stagehand_engine::history::unix_seconds(rfc3339).expect("RFC 3339 time")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_of_a_real_backup_parse_and_hold_its_figures() {
    let server = server_with(
        "metrics-backup",
        &[
            "CREATE DATABASE app",
            "CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB",
            "INSERT INTO app.t WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 1000) SELECT n, REPEAT('x', 100) FROM s",
        ],
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let textfile_dir = dir.path().join("textfile");
    std::fs::create_dir_all(&textfile_dir).expect("textfile dir");
    let prom = textfile_dir.join("stagehand.prom");
    let gateway = HttpReceiver::start(&[200]);
    let plan = crate::cli::repo_root().join("plans/full-backup.yaml");
    let sets = backup_params(
        &server,
        &dir.path().join("backup"),
        &["user=root", "prepare=false"],
    );
    let gateway_url = gateway.url("/");
    let r = run_plan(
        dir.path(),
        &plan,
        &sets,
        &[
            ("STAGEHAND_METRICS_FILE", prom.to_str().expect("utf-8")),
            ("STAGEHAND_PUSHGATEWAY", gateway_url.as_str()),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    let m = Metrics::read(&prom);
    let plan_l = ("plan", "full-backup");
    assert_eq!(m.get("stagehand_last_run_success", &[plan_l]), 1.0);
    assert_eq!(
        m.get(
            "stagehand_last_run_status",
            &[plan_l, ("status", "succeeded")]
        ),
        1.0
    );
    assert_eq!(
        m.get("stagehand_last_run_status", &[plan_l, ("status", "failed")]),
        0.0
    );
    let finished = unix(r.report["finished_at"].as_str().unwrap_or_default());
    assert!(close(
        m.get("stagehand_last_success_timestamp_seconds", &[plan_l]),
        finished
    ));
    assert!(close(
        m.get("stagehand_last_run_timestamp_seconds", &[plan_l]),
        finished
    ));
    assert!(close(
        m.get("stagehand_last_run_duration_seconds", &[plan_l]),
        r.report["duration_ms"].as_f64().unwrap_or(-1.0) / 1000.0
    ));

    let steps = r.report["steps"].as_array().expect("steps");
    assert!(steps.len() >= 9, "the whole backup plan ran");
    let mut checked_bytes = 0;
    let mut holds = BTreeMap::new();
    for s in steps {
        let id = s["id"].as_str().unwrap_or_default();
        let status = s["status"].as_str().unwrap_or_default();
        assert_eq!(
            m.get(
                "stagehand_step_status",
                &[plan_l, ("step", id), ("status", status)]
            ),
            1.0,
            "{id} is {status}"
        );
        if let Some(ms) = s["duration_ms"].as_f64() {
            assert!(close(
                m.get("stagehand_step_duration_seconds", &[plan_l, ("step", id)]),
                ms / 1000.0
            ));
        }
        if let Some(b) = s["outputs"]["bytes"].as_f64() {
            assert_eq!(m.get("stagehand_step_bytes", &[plan_l, ("step", id)]), b);
            checked_bytes += 1;
        }
        if let Some(h) = s["outputs"]["holds_ms"].as_object() {
            for (stage, ms) in h {
                let v = m.get(
                    "stagehand_lock_hold_seconds",
                    &[plan_l, ("step", id), ("stage", stage)],
                );
                assert!(
                    close(v, ms.as_f64().unwrap_or(-1.0) / 1000.0),
                    "{id} {stage}"
                );
                holds.insert(format!("{id}.{stage}"), v);
            }
        }
    }
    // copy_innodb, copy_other, copy_aria, redo, seal and verify report bytes.
    assert!(
        checked_bytes >= 4,
        "bytes of several steps: {checked_bytes}"
    );
    let seal_bytes = m.get("stagehand_step_bytes", &[plan_l, ("step", "seal")]);
    assert!(
        seal_bytes > 1_000_000.0,
        "the backup holds the data: {seal_bytes}"
    );
    assert!(
        holds.contains_key("lock_end.block_commit"),
        "the END step reports every stage's hold: {holds:?}"
    );
    // Written atomically: nothing else is left in the collector's directory.
    let left: Vec<_> = std::fs::read_dir(&textfile_dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("stagehand.prom")]);

    let pushed = gateway.requests();
    assert_eq!(pushed.len(), 1);
    assert_eq!(
        pushed[0].request_line,
        "PUT /metrics/job/stagehand/plan/full-backup HTTP/1.1"
    );
    assert_eq!(
        pushed[0].header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    assert_eq!(
        pushed[0].body,
        std::fs::read_to_string(&prom).expect("metrics"),
        "the Pushgateway gets the same figures"
    );
}

/// A temporary directory with the plan `text` in `nightly.yaml`: (the directory, the
/// plan, the metrics file `nightly.prom` for its runs).
fn nightly(text: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = write_plan(dir.path(), "nightly", text);
    let prom = dir.path().join("nightly.prom");
    (dir, plan, prom)
}

#[test]
fn a_failed_run_keeps_the_last_success_and_says_it_failed() {
    let (dir, plan, prom) = nightly(
        r#"version: 1
name: nightly
params:
  code: {type: integer, default: 0}
steps:
  - id: work
    uses: exec
    with: {shell: "exit {{params.code}}"}
  - id: after
    uses: exec
    needs: [work]
    with: {command: ["true"]}
"#,
    );
    let env = [("STAGEHAND_METRICS_FILE", prom.to_str().expect("utf-8"))];
    let ok = run_plan(dir.path(), &plan, &[], &env);
    assert_eq!(ok.code, 0);
    let success_at = unix(ok.report["finished_at"].as_str().unwrap_or_default());
    let m = Metrics::read(&prom);
    assert!(close(
        m.get("stagehand_last_success_timestamp_seconds", &[]),
        success_at
    ));
    assert!(!m.has("stagehand_step_bytes"), "no step reported bytes");

    let failed = run_plan(dir.path(), &plan, &["code=3".to_string()], &env);
    assert_eq!(failed.code, 1);
    let m = Metrics::read(&prom);
    assert!(
        close(
            m.get("stagehand_last_success_timestamp_seconds", &[]),
            success_at
        ),
        "the last success is still the first run"
    );
    assert!(close(
        m.get("stagehand_last_run_timestamp_seconds", &[]),
        unix(failed.report["finished_at"].as_str().unwrap_or_default())
    ));
    assert_eq!(m.get("stagehand_last_run_success", &[]), 0.0);
    assert_eq!(
        m.get(
            "stagehand_step_status",
            &[("step", "work"), ("status", "failed")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "stagehand_step_status",
            &[("step", "after"), ("status", "skipped")]
        ),
        1.0
    );
    assert_eq!(m.get("stagehand_step_attempts", &[("step", "work")]), 1.0);
}

#[test]
fn a_run_that_cannot_start_says_so_in_the_metrics() {
    let (dir, plan, prom) = nightly(
        r#"version: 1
name: nightly
secrets:
  token: {env: STAGEHAND_TEST_TOKEN_THAT_IS_NOT_SET}
steps:
  - id: work
    uses: exec
    with: {command: [echo, "{{secrets.token}}"]}
"#,
    );
    let state = dir.path().join("state");
    let run = crate::cli::stagehand_env(
        &[
            "run",
            plan.to_str().expect("utf-8"),
            "--state-dir",
            state.to_str().expect("utf-8"),
        ],
        &[("STAGEHAND_METRICS_FILE", prom.to_str().expect("utf-8"))],
    );
    assert_eq!(
        run.code, 2,
        "a missing secret is a usage error: {}",
        run.stderr
    );
    let m = Metrics::read(&prom);
    assert_eq!(m.get("stagehand_last_run_success", &[]), 0.0);
    assert_eq!(
        m.get("stagehand_last_run_status", &[("status", "failed")]),
        1.0
    );
    assert!(
        !m.has("stagehand_last_success_timestamp_seconds"),
        "no success to report"
    );
}
