//! The dry-run: what a run would do, with nothing opened and nothing written. Reviewers
//! read it in CI, so it is stable (same plan and params, same text and JSON).

use crate::model::{SecretSource, When};
use crate::resources::ConnectionProvider;
use crate::step::Registry;
use crate::template::{Mode, Renderer};
use crate::validate::{sample_context, Loaded};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
pub struct DryRun {
    pub plan: String,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub params: BTreeMap<String, Value>,
    pub secrets: BTreeMap<String, String>,
    pub connections: Vec<DryConnection>,
    pub max_parallel: usize,
    pub waves: Vec<Vec<String>>,
    pub steps: Vec<DryStep>,
}

#[derive(Debug, Serialize)]
pub struct DryConnection {
    pub name: String,
    pub description: String,
    pub config: Value,
}

#[derive(Debug, Serialize)]
pub struct DryStep {
    pub id: String,
    pub uses: String,
    pub wave: usize,
    pub needs: Vec<String>,
    pub when: When,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub background: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<Value>,
    pub retry_attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    pub description: String,
    pub with: Value,
}

/// Describes the run; `params` are the resolved values (defaults and `--set`).
pub fn dry_run(
    loaded: &Loaded,
    registry: &Registry,
    provider: Option<&dyn ConnectionProvider>,
    params: &BTreeMap<String, Value>,
) -> DryRun {
    let plan = &loaded.plan;
    let renderer = Renderer::new();
    let ctx = sample_context(plan, params, registry);
    let secrets = plan
        .secrets
        .iter()
        .map(|s| {
            let from = match &s.source {
                SecretSource::Env(v) => format!("<from env {v}>"),
                SecretSource::File(f) => format!("<from file {f}>"),
            };
            (s.name.clone(), from)
        })
        .collect();
    let connections = plan
        .connections
        .iter()
        .map(|c| {
            let shown = renderer
                .render_value(&c.config, &ctx, Mode::Display)
                .unwrap_or_else(|e| Value::String(format!("<cannot render: {}>", e.0)));
            let description = provider
                .map(|p| p.describe(&shown))
                .unwrap_or_else(|| "a connection".into());
            DryConnection {
                name: c.name.clone(),
                description,
                config: shown,
            }
        })
        .collect();
    let waves = loaded.graph.waves();
    let wave_of = |i: usize| waves.iter().position(|w| w.contains(&i)).unwrap_or(0);
    let steps = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let shown = renderer
                .render_value(&s.with, &ctx, Mode::Display)
                .unwrap_or_else(|e| Value::String(format!("<cannot render: {}>", e.0)));
            DryStep {
                id: s.id.clone(),
                uses: s.uses.clone(),
                wave: wave_of(i),
                needs: s.needs.clone(),
                when: s.when,
                background: s.background,
                until: s.until.clone(),
                condition: s.condition.as_ref().map(|c| {
                    renderer
                        .render_value(c, &ctx, Mode::Display)
                        .unwrap_or_else(|e| Value::String(format!("<cannot render: {}>", e.0)))
                }),
                retry_attempts: s.retry.attempts,
                timeout: s.timeout.map(|t| humantime::format_duration(t).to_string()),
                description: describe(registry, &renderer, &ctx, s, &shown),
                with: shown,
            }
        })
        .collect();
    DryRun {
        plan: plan.name.clone(),
        file: plan.file.clone(),
        description: plan.description.clone(),
        params: params.clone(),
        secrets,
        connections,
        max_parallel: plan.max_parallel,
        waves: waves
            .iter()
            .map(|w| w.iter().map(|i| plan.steps[*i].id.clone()).collect())
            .collect(),
        steps,
    }
}

/// The step's own sentence, from the displayed config when it fits the kind's types
/// (placeholders visible), else from the type-checked one.
fn describe(
    registry: &Registry,
    renderer: &Renderer,
    ctx: &Value,
    s: &crate::model::StepSpec,
    shown: &Value,
) -> String {
    let Some(kind) = registry.get(&s.uses) else {
        return format!("unknown step kind {}", s.uses);
    };
    if let Ok(action) = kind.build(shown) {
        return action.describe();
    }
    match crate::step::render_and_build(kind.as_ref(), renderer, &s.with, ctx, Mode::Check) {
        Ok((_, action)) => action.describe(),
        Err(e) => format!("invalid config: {e}"),
    }
}

impl DryRun {
    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut out = format!("Plan {} ({})\n", self.plan, self.file);
        if let Some(d) = &self.description {
            out.push_str(&format!("  {d}\n"));
        }
        out.push_str("\nParams:\n");
        for (k, v) in &self.params {
            out.push_str(&format!("  {k} = {}\n", compact(v)));
        }
        if !self.secrets.is_empty() {
            out.push_str("\nSecrets (values never shown):\n");
            for (k, v) in &self.secrets {
                out.push_str(&format!("  {k} {v}\n"));
            }
        }
        if !self.connections.is_empty() {
            out.push_str("\nConnections (opened on first use, none opened by a dry-run):\n");
            for c in &self.connections {
                out.push_str(&format!("  {}: {}\n", c.name, c.description));
            }
        }
        out.push_str(&format!(
            "\nExecution waves (at most {} steps at once):\n",
            self.max_parallel
        ));
        for (i, w) in self.waves.iter().enumerate() {
            out.push_str(&format!("  {}: {}\n", i + 1, w.join(", ")));
        }
        out.push_str("\nSteps:\n");
        for s in &self.steps {
            let mut tags = Vec::new();
            if s.when != When::Success {
                tags.push(format!(
                    "when {}",
                    serde_json::to_value(s.when)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                ));
            }
            if s.background {
                tags.push(match &s.until {
                    Some(u) => format!("background until {u}"),
                    None => "background".into(),
                });
            }
            if !s.needs.is_empty() {
                tags.push(format!("after {}", s.needs.join(", ")));
            }
            if let Some(c) = &s.condition {
                let runs = if crate::template::is_truthy(c) {
                    "runs"
                } else {
                    "skipped"
                };
                tags.push(format!("if {} ({runs})", compact(c)));
            }
            if s.retry_attempts > 1 {
                tags.push(format!("{} attempts", s.retry_attempts));
            }
            if let Some(t) = &s.timeout {
                tags.push(format!("timeout {t}"));
            }
            let tags = if tags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", tags.join("; "))
            };
            out.push_str(&format!(
                "  {} ({}){tags}\n    {}\n",
                s.id, s.uses, s.description
            ));
        }
        out
    }
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
