//! Semantic checks of a parsed plan: step kinds, needs and cycles, background/until,
//! template references, connections, and each step's typed config. All problems are
//! collected, each with its position.

use crate::diag::{did_you_mean, one_of, At, Collector, Diagnostic};
use crate::graph::StepGraph;
use crate::model::{Plan, StepSpec};
use crate::params;
use crate::parse::{parse_plan, Parsed};
use crate::resources::ConnectionProvider;
use crate::source::{child_key, PositionIndex};
use crate::step::{render_and_build, BuildError, DirectoryUse, Registry};
use crate::template::{self, Mode, Renderer};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// A plan that passed validation, with what the executor and dry-run need.
pub struct Loaded {
    pub plan: Plan,
    pub index: PositionIndex,
    pub graph: StepGraph,
    /// For each step, the indexes of every step it depends on.
    pub ancestors: Vec<BTreeSet<usize>>,
    /// What validation warns about (the plan is valid): print them.
    pub warnings: Vec<Diagnostic>,
}

impl Loaded {
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.plan.steps.iter().position(|s| s.id == id)
    }

    /// Whether `step` must wait for `need` to *finish*, rather than only to be ready.
    /// A background need is done waiting on at its ready signal, except for steps that
    /// come after its `until` step (those see its final outputs).
    pub fn waits_for_completion(&self, step: usize, need: usize) -> bool {
        let n = &self.plan.steps[need];
        if !n.background {
            return true;
        }
        match n.until.as_deref().and_then(|u| self.step_index(u)) {
            Some(u) => u != step && self.ancestors[step].contains(&u),
            None => true,
        }
    }
}

/// What validation needs besides the plan: the registry and the connection provider.
pub struct Checker<'a> {
    pub registry: &'a Registry,
    pub provider: Option<&'a dyn ConnectionProvider>,
}

impl Checker<'_> {
    /// Parses and validates plan text with the run's `--set` values. With
    /// `allow_missing` (plain validation), required params without a value are checked
    /// with a sample of their type; otherwise they are errors.
    pub fn load_text(
        &self,
        file: &str,
        text: &str,
        sets: &[(String, String)],
        allow_missing: bool,
    ) -> Result<(Loaded, BTreeMap<String, Value>), Vec<Diagnostic>> {
        let Parsed {
            plan,
            index,
            diagnostics,
        } = parse_plan(file, text);
        let Some(plan) = plan else {
            return Err(diagnostics);
        };
        let (params, param_errors) = match params::resolve(&plan, sets, allow_missing) {
            Ok(p) => (p, Vec::new()),
            Err(errors) => (
                params::resolve(&plan, &[], true).unwrap_or_default(),
                errors,
            ),
        };
        let mut c = Collector::new(file, &index);
        c.items = diagnostics;
        let graph = StepGraph::build(&plan);
        let cyclic = self.check_structure(&plan, &graph, &mut c);
        // Ancestry is a graph walk, well defined with cycles too, so every other check
        // still runs and all problems are reported together.
        let ancestors: Vec<BTreeSet<usize>> =
            (0..plan.steps.len()).map(|i| graph.ancestors(i)).collect();
        let mut loaded = Loaded {
            plan,
            index: index.clone(),
            graph,
            ancestors,
            warnings: Vec::new(),
        };
        if !cyclic {
            self.check_background(&loaded, &mut c);
        }
        self.check_templates(&loaded, &mut c);
        self.check_configs(&loaded, &params, &mut c);
        // Param values are checked only once the file itself is sound.
        if !c.has_errors() {
            for e in &param_errors {
                param_diagnostic(&loaded.plan, e, &mut c);
            }
        }
        self.check_command_line_secrets(&loaded, &mut c);
        let items = c.finish();
        if items.iter().any(Diagnostic::is_error) {
            Err(items)
        } else {
            loaded.warnings = items;
            Ok((loaded, params))
        }
    }

    /// Warns about secrets written into a process's command line, which every local
    /// user can read (`ps`, /proc/PID/cmdline). Names the place, never a value.
    fn check_command_line_secrets(&self, l: &Loaded, c: &mut Collector) {
        for s in &l.plan.steps {
            let Some(kind) = self.registry.get(&s.uses) else {
                continue;
            };
            for field in kind.command_line_fields() {
                let Some(value) = s.with.get(*field) else {
                    continue;
                };
                let fpath = child_key(&child_key(&s.path, "with"), field);
                let mut refs = Vec::new();
                template::references_in(value, &fpath, &mut refs);
                for (path, r) in refs {
                    // An undeclared secret is an error reported by the reference check.
                    let Some(secret) = r
                        .strip_prefix("secrets.")
                        .filter(|name| l.plan.secret(name).is_some())
                    else {
                        continue;
                    };
                    let shown = path
                        .strip_prefix(&format!("{}.with.", s.path))
                        .unwrap_or(&path);
                    c.warn(
                        &path,
                        At::Value,
                        format!(
                            "step `{}` passes secret `{secret}` on the command line ({shown}): every local user can read it with `ps`",
                            s.id
                        ),
                        Some("pass it in `env:` (e.g. MYSQL_PWD for the mariadb client) or on stdin, and let the program read it from there".into()),
                    );
                }
            }
        }
    }

    /// Unique ids, known kinds, known needs, no cycles. Returns whether a cycle exists.
    fn check_structure(&self, plan: &Plan, graph: &StepGraph, c: &mut Collector) -> bool {
        let mut seen: HashMap<&str, &StepSpec> = HashMap::new();
        for s in &plan.steps {
            if let Some(first) = seen.insert(&s.id, s) {
                c.error(
                    &child_key(&s.path, "id"),
                    At::Value,
                    format!("duplicate step id `{}`", s.id),
                    Some(format!("the first step with this id is at {}", first.path)),
                );
            }
            if self.registry.get(&s.uses).is_none() {
                let hint = did_you_mean(&s.uses, self.registry.names())
                    .unwrap_or_else(|| one_of(self.registry.names()));
                c.error(
                    &child_key(&s.path, "uses"),
                    At::Value,
                    format!("unknown step kind `{}`", s.uses),
                    Some(format!("{hint} (see `stagehand steps`)")),
                );
            }
            for (i, need) in s.needs.iter().enumerate() {
                let npath = format!("{}.needs[{i}]", s.path);
                if need == &s.id {
                    c.error(
                        &npath,
                        At::Value,
                        format!("step `{need}` needs itself"),
                        None,
                    );
                } else if plan.step(need).is_none() {
                    let hint = did_you_mean(need, plan.steps.iter().map(|s| s.id.as_str()))
                        .unwrap_or_else(|| "needs lists ids of other steps".into());
                    c.error(
                        &npath,
                        At::Value,
                        format!("`needs` names unknown step `{need}`"),
                        Some(hint),
                    );
                }
            }
        }
        let cycles = graph.cycles();
        for cycle in &cycles {
            let names: Vec<&str> = cycle.iter().map(|i| plan.steps[*i].id.as_str()).collect();
            let Some(first) = cycle.first().map(|i| &plan.steps[*i]) else {
                continue;
            };
            let shown = format!("{} → {}", names.join(" → "), names[0]);
            c.error(
                &format!("{}.needs", first.path),
                At::Value,
                format!("cycle in `needs`: {shown}"),
                Some(
                    "a step cannot depend on itself through other steps; remove one of these needs"
                        .into(),
                ),
            );
        }
        !cycles.is_empty()
    }

    fn check_background(&self, l: &Loaded, c: &mut Collector) {
        for (i, s) in l.plan.steps.iter().enumerate() {
            let kind = self.registry.get(&s.uses);
            if s.background && kind.is_some_and(|k| !k.supports_background()) {
                c.error(
                    &child_key(&s.path, "background"),
                    At::Value,
                    format!("step kind `{}` cannot run in the background", s.uses),
                    None,
                );
            }
            let Some(until) = &s.until else {
                continue;
            };
            let upath = child_key(&s.path, "until");
            if !s.background {
                c.error(
                    &upath,
                    At::Key,
                    "`until` only applies to `background: true` steps",
                    None,
                );
                continue;
            }
            match l.step_index(until) {
                None => c.error(&upath, At::Value, format!("`until` names unknown step `{until}`"), None),
                Some(u) if u == i || !l.ancestors[u].contains(&i) => c.error(
                    &upath,
                    At::Value,
                    format!("`until: {until}` must come after `{}`", s.id),
                    Some(format!("`{until}` has to need `{}` (directly or through other steps), or it could finish before this step starts", s.id)),
                ),
                Some(_) => {}
            }
        }
    }

    fn check_templates(&self, l: &Loaded, c: &mut Collector) {
        let renderer = Renderer::new();
        let known = Known::of(&l.plan);
        for conn in &l.plan.connections {
            let mut refs = Vec::new();
            template::references_in(&conn.config, &conn.path, &mut refs);
            self.check_strings(&renderer, &conn.config, &conn.path, c);
            for (path, r) in refs {
                if r.starts_with("steps.") {
                    c.error(
                        &path,
                        At::Value,
                        format!("connections cannot read step outputs (`{r}`)"),
                        Some(
                            "connections are opened before steps run; use params, secrets or env"
                                .into(),
                        ),
                    );
                } else {
                    self.check_reference(l, &known, None, &path, &r, c);
                }
            }
        }
        for (i, s) in l.plan.steps.iter().enumerate() {
            let wpath = child_key(&s.path, "with");
            self.check_strings(&renderer, &s.with, &wpath, c);
            let mut refs = Vec::new();
            template::references_in(&s.with, &wpath, &mut refs);
            if let Some(cond) = &s.condition {
                let ipath = child_key(&s.path, "if");
                self.check_strings(&renderer, cond, &ipath, c);
                template::references_in(cond, &ipath, &mut refs);
            }
            for (path, r) in refs {
                self.check_reference(l, &known, Some(i), &path, &r, c);
            }
            let mut report_refs = Vec::new();
            template::report_references_in(&s.with, &wpath, &mut report_refs);
            for (path, r) in report_refs {
                self.check_report_reference(l, &path, &r, c);
            }
        }
    }

    /// One `{{report.…}}` reference: a field of the run snapshot, and for
    /// `report.steps.ID.outputs.KEY` a step of the plan with that output. (Any step: the
    /// report is the run so far, so no upstream rule; a step not run yet reads as empty.)
    fn check_report_reference(&self, l: &Loaded, path: &str, r: &str, c: &mut Collector) {
        const FIELDS: &[&str] = &[
            "id",
            "plan",
            "plan_file",
            "host",
            "started_at",
            "duration_ms",
            "duration",
            "status",
            "failed_step",
            "failed_steps",
            "steps",
        ];
        let parts: Vec<&str> = r.split('.').collect();
        match parts.as_slice() {
            ["report"] => {}
            ["report", "steps", id, rest @ ..] => {
                let Some(src) = l.step_index(id) else {
                    let hint = did_you_mean(id, l.plan.steps.iter().map(|s| s.id.as_str()));
                    c.error(
                        path,
                        At::Value,
                        format!("`{r}` names no step of the plan"),
                        hint,
                    );
                    return;
                };
                let kind = &l.plan.steps[src].uses;
                if let (["outputs", key, ..], Some(k)) = (rest, self.registry.get(kind)) {
                    let outs = k.outputs();
                    if !outs.iter().any(|o| o.name == *key) {
                        let hint = did_you_mean(key, outs.iter().map(|o| o.name.as_str()))
                            .unwrap_or_else(|| one_of(outs.iter().map(|o| o.name.as_str())));
                        c.error(
                            path,
                            At::Value,
                            format!("step `{id}` ({kind}) has no output `{key}`"),
                            Some(hint),
                        );
                    }
                }
            }
            ["report", field, ..] if FIELDS.contains(field) => {}
            ["report", field, ..] => {
                let hint = did_you_mean(field, FIELDS.iter().copied())
                    .unwrap_or_else(|| one_of(FIELDS.iter().copied()));
                c.error(
                    path,
                    At::Value,
                    format!("the run report has no field `{field}`"),
                    Some(hint),
                );
            }
            _ => {}
        }
    }

    fn check_strings(&self, renderer: &Renderer, value: &Value, path: &str, c: &mut Collector) {
        match value {
            Value::String(s) if s.contains("{{") => {
                if let Err(e) = renderer.check_template(s) {
                    c.error(path, At::Value, e.message, e.hint);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.check_strings(renderer, v, &crate::source::child_index(path, i), c);
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    self.check_strings(renderer, v, &child_key(path, k), c);
                }
            }
            _ => {}
        }
    }

    /// One `{{root.a.b}}` reference, read by step `reader` (None: a connection).
    fn check_reference(
        &self,
        l: &Loaded,
        known: &Known,
        reader: Option<usize>,
        path: &str,
        r: &str,
        c: &mut Collector,
    ) {
        let parts: Vec<&str> = r.split('.').collect();
        let plan = &l.plan;
        match parts.as_slice() {
            ["params", name, ..] => {
                if !known.params.contains(name) {
                    let hint = did_you_mean(name, plan.params.iter().map(|p| p.name.as_str()))
                        .unwrap_or_else(|| "declare it under `params:`".into());
                    c.error(path, At::Value, format!("template reads unknown param `{name}`"), Some(hint));
                }
            }
            ["secrets", name] => {
                if !known.secrets.contains(name) {
                    let hint = did_you_mean(name, plan.secrets.iter().map(|s| s.name.as_str()))
                        .unwrap_or_else(|| "declare it under `secrets:`".into());
                    c.error(path, At::Value, format!("template reads unknown secret `{name}`"), Some(hint));
                }
            }
            ["env", _] => {}
            ["run", field] if ["id", "started_at", "plan"].contains(field) => {}
            ["steps", id, "outputs", key, ..] => self.check_output_ref(l, reader, path, id, key, c),
            _ => c.error(
                path,
                At::Value,
                format!("template reference `{r}` is not one the plan can read"),
                Some("use params.NAME, secrets.NAME, env.NAME, run.id, run.started_at, run.plan or steps.ID.outputs.KEY".into()),
            ),
        }
    }

    fn check_output_ref(
        &self,
        l: &Loaded,
        reader: Option<usize>,
        path: &str,
        id: &str,
        key: &str,
        c: &mut Collector,
    ) {
        let plan = &l.plan;
        let Some(src) = l.step_index(id) else {
            let hint = did_you_mean(id, plan.steps.iter().map(|s| s.id.as_str()));
            c.error(
                path,
                At::Value,
                format!("template reads outputs of unknown step `{id}`"),
                hint,
            );
            return;
        };
        if let Some(kind) = self.registry.get(&plan.steps[src].uses) {
            let outs = kind.outputs();
            if !outs.iter().any(|o| o.name == key) {
                let hint = did_you_mean(key, outs.iter().map(|o| o.name.as_str()))
                    .unwrap_or_else(|| one_of(outs.iter().map(|o| o.name.as_str())));
                c.error(
                    path,
                    At::Value,
                    format!(
                        "step `{id}` ({}) has no output `{key}`",
                        plan.steps[src].uses
                    ),
                    Some(hint),
                );
            }
        }
        let Some(reader) = reader else { return };
        let reader_id = &plan.steps[reader].id;
        if !l.ancestors[reader].contains(&src) {
            c.error(
                path,
                At::Value,
                format!("step `{reader_id}` reads outputs of `{id}`, which is not upstream of it"),
                Some(format!(
                    "add `{id}` to the `needs` of `{reader_id}` (directly or through another step)"
                )),
            );
        } else if !l.waits_for_completion(reader, src) {
            c.error(
                path,
                At::Value,
                format!("step `{reader_id}` reads outputs of background step `{id}` before it has finished"),
                Some(format!("only steps after `{}` see its outputs", plan.steps[src].until.as_deref().unwrap_or("its until step"))),
            );
        }
    }

    /// Renders each config with sample values and builds it, so type errors show now.
    fn check_configs(&self, l: &Loaded, params: &BTreeMap<String, Value>, c: &mut Collector) {
        let ctx = sample_context(&l.plan, params, self.registry);
        let renderer = Renderer::new();
        let connection_names: Vec<&str> =
            l.plan.connections.iter().map(|c| c.name.as_str()).collect();
        for conn in &l.plan.connections {
            let Some(provider) = self.provider else {
                continue;
            };
            // A render error here was reported by check_templates.
            if let Ok(rendered) = renderer.render_value(&conn.config, &ctx, Mode::Check) {
                if let Err(e) = provider.check(&rendered) {
                    let path = join(&conn.path, &e.path);
                    let hint = e.hint.clone().or_else(|| unknown_field_hint(&e.message));
                    c.error(
                        &path,
                        at_for(&e.message),
                        format!("connection `{}`: {}", conn.name, e.message),
                        hint,
                    );
                }
            }
        }
        let mut directories = Vec::new();
        for (i, s) in l.plan.steps.iter().enumerate() {
            let Some(kind) = self.registry.get(&s.uses) else {
                continue;
            };
            let wpath = child_key(&s.path, "with");
            match render_and_build(kind.as_ref(), &renderer, &s.with, &ctx, Mode::Check) {
                // Template syntax errors were reported by check_templates.
                Err(BuildError::Template(_)) => {}
                Ok((_, action)) => {
                    directories.extend(action.directories().into_iter().map(|d| (i, d)));
                    for name in action.connections() {
                        if !connection_names.contains(&name.as_str()) {
                            let hint = did_you_mean(&name, connection_names.iter().copied())
                                .unwrap_or_else(|| "declare it under `connections:`".into());
                            c.error(
                                &child_key(&wpath, "connection"),
                                At::Value,
                                format!("unknown connection `{name}`"),
                                Some(hint),
                            );
                        }
                    }
                }
                Err(BuildError::Config(e)) => {
                    let path = join(&wpath, &e.path);
                    let hint = e
                        .hint
                        .clone()
                        .or_else(|| unknown_field_hint(&e.message))
                        .or_else(|| {
                            Some(format!(
                                "see the fields of `{}` with `stagehand steps {}`",
                                s.uses, s.uses
                            ))
                        });
                    c.error(
                        &path,
                        at_for(&e.message),
                        format!("step `{}` ({}): {}", s.id, s.uses, e.message),
                        hint,
                    );
                }
            }
        }
        check_followed_directories(l, &directories, c);
    }
}

/// A step that announces files into a directory another step follows must start after
/// the follower is running, or the follower never hears of its files (and, with a spool
/// limit, the writer waits for uploads that never come).
fn check_followed_directories(l: &Loaded, uses: &[(usize, DirectoryUse)], c: &mut Collector) {
    let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    for (follower, dir) in uses.iter().filter_map(|(i, u)| match u {
        DirectoryUse::Follows(d) => Some((*i, d)),
        DirectoryUse::Announces(_) => None,
    }) {
        for (writer, _) in uses.iter().filter(|(i, u)| {
            *i != follower && matches!(u, DirectoryUse::Announces(d) if same(d, dir))
        }) {
            if l.ancestors[*writer].contains(&follower) {
                continue;
            }
            let (w, f) = (&l.plan.steps[*writer], &l.plan.steps[follower]);
            c.error(
                &w.path,
                At::Key,
                format!(
                    "step `{}` writes into {dir}, which `{}` streams, but may start before `{}` is running: its files would never be shipped",
                    w.id, f.id, f.id
                ),
                Some(format!(
                    "make `{}` need `{}` (directly or through another step)",
                    w.id, f.id
                )),
            );
        }
    }
}

/// Declared names, looked up once per template reference: a plan may hold thousands.
struct Known<'p> {
    params: HashSet<&'p str>,
    secrets: HashSet<&'p str>,
}

impl<'p> Known<'p> {
    fn of(plan: &'p Plan) -> Self {
        Self {
            params: plan.params.iter().map(|p| p.name.as_str()).collect(),
            secrets: plan.secrets.iter().map(|s| s.name.as_str()).collect(),
        }
    }
}

/// A `--set` or missing-param problem, pointed at the param's declaration.
fn param_diagnostic(plan: &Plan, e: &params::ParamError, c: &mut Collector) {
    use params::ParamError as P;
    let (path, at) = match e {
        P::Missing { name } | P::Invalid { name, .. } => match plan.param(name) {
            Some(p) => (p.path.clone(), At::Key),
            None => ("params".to_string(), At::Key),
        },
        P::Unknown { .. } | P::Syntax(_) => ("params".to_string(), At::Key),
    };
    c.error(&path, at, e.to_string(), None);
}

fn join(base: &str, rel: &str) -> String {
    if rel.is_empty() {
        base.to_string()
    } else if rel.starts_with('[') {
        format!("{base}{rel}")
    } else {
        format!("{base}.{rel}")
    }
}

/// serde says "unknown field `x`, expected one of `a`, `b`": suggest the closest.
fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (name, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    did_you_mean(name, expected)
}

/// Unknown-field errors point at the key; the others at the value.
fn at_for(message: &str) -> At {
    if message.starts_with("unknown field") {
        At::Key
    } else {
        At::Value
    }
}

/// Template context for type-checking: real params, sample secrets and outputs.
pub fn sample_context(plan: &Plan, params: &BTreeMap<String, Value>, registry: &Registry) -> Value {
    let secrets: serde_json::Map<String, Value> = plan
        .secrets
        .iter()
        .map(|s| (s.name.clone(), Value::String("secret".into())))
        .collect();
    let mut steps = serde_json::Map::new();
    for s in &plan.steps {
        let outputs: serde_json::Map<String, Value> = registry
            .get(&s.uses)
            .map(|k| {
                k.outputs()
                    .into_iter()
                    .map(|o| (o.name.to_string(), o.ty.sample()))
                    .collect()
            })
            .unwrap_or_default();
        steps.insert(s.id.clone(), json!({ "outputs": outputs }));
    }
    json!({
        "params": params,
        "secrets": secrets,
        "steps": steps,
        "env": env_map(),
        "run": {"id": "dry-run", "started_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "plan": plan.name},
    })
}

pub fn env_map() -> serde_json::Map<String, Value> {
    std::env::vars()
        .map(|(k, v)| (k, Value::String(v)))
        .collect()
}
