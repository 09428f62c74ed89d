//! From YAML text to a [`Plan`], collecting every structural error instead of stopping at
//! the first one.

use crate::diag::{did_you_mean, one_of, At, Collector, Diagnostic};
use crate::model::*;
use crate::params::{coerce, describe_json};
use crate::source::{child_index, child_key, Pos, PositionIndex, MAX_DEPTH};
use serde_yaml::{Mapping, Value};
use std::time::Duration;

const PLAN_KEYS: &[&str] = &[
    "version",
    "name",
    "description",
    "params",
    "secrets",
    "connections",
    "defaults",
    "max_parallel",
    "fail_fast",
    "steps",
];
const PARAM_KEYS: &[&str] = &["type", "default", "required", "description"];
const SECRET_KEYS: &[&str] = &["env", "file", "optional", "description"];
const DEFAULTS_KEYS: &[&str] = &["retry", "timeout"];
const RETRY_KEYS: &[&str] = &["attempts", "backoff", "max_backoff", "jitter"];
const STEP_KEYS: &[&str] = &[
    "id",
    "uses",
    "name",
    "needs",
    "when",
    "with",
    "background",
    "until",
    "retry",
    "timeout",
    "continue_on_error",
    "if",
];

/// The outcome of parsing: a best-effort plan (bad parts left out), the file's position
/// index for later checks, and what was wrong.
pub struct Parsed {
    pub plan: Option<Plan>,
    pub index: PositionIndex,
    pub diagnostics: Vec<Diagnostic>,
}

/// The largest plan file read: a hand-written plan is a few KB, and the bound keeps a
/// generated or hostile file from holding validation (and a CI job) for long.
pub const MAX_PLAN_BYTES: usize = 1 << 20;

/// The most steps a plan may have (backup plans have a dozen or two).
pub const MAX_STEPS: usize = 1000;

/// Plan names become file names (run ids, journals): one portable path component.
pub const PLAN_NAME_PATTERN: &str = "^(?!.*\\.\\.)[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";

/// Parses plan text; `file` is the name used in diagnostics.
pub fn parse_plan(file: &str, text: &str) -> Parsed {
    if text.len() > MAX_PLAN_BYTES {
        return refused(file, Pos { line: 1, column: 1 }, too_large(text.len()));
    }
    let index = PositionIndex::build(text);
    if let Some(pos) = index.too_deep() {
        return refused(file, pos, too_deep());
    }
    let root: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let pos = e
                .location()
                .map(|l| Pos {
                    line: l.line(),
                    column: l.column(),
                })
                .unwrap_or(Pos { line: 1, column: 1 });
            let mut c = Collector::new(file, &index);
            c.push_at(
                "",
                pos,
                format!("YAML syntax error: {}", strip_location(&e.to_string())),
                Some("check indentation and quoting near this position".into()),
            );
            return Parsed {
                plan: None,
                diagnostics: c.finish(),
                index,
            };
        }
    };
    let mut c = Collector::new(file, &index);
    let plan = Walker { c: &mut c }.plan(file, &root);
    let diagnostics = c.finish();
    Parsed {
        plan,
        index,
        diagnostics,
    }
}

/// A plan refused before it is read further, with one diagnostic.
fn refused(file: &str, pos: Pos, (message, hint): (String, String)) -> Parsed {
    let index = PositionIndex::default();
    let mut c = Collector::new(file, &index);
    c.push_at("", pos, message, Some(hint));
    Parsed {
        plan: None,
        diagnostics: c.finish(),
        index,
    }
}

/// The message and hint for a plan over [`MAX_PLAN_BYTES`] (`size` may be a lower bound).
pub fn too_large(size: usize) -> (String, String) {
    (
        format!(
            "the plan is larger than {} MiB ({size} bytes or more)",
            MAX_PLAN_BYTES >> 20
        ),
        "a plan is a few KB of steps; split it, or check that this is the right file".into(),
    )
}

fn too_deep() -> (String, String) {
    (
        format!("the plan nests lists and mappings more than {MAX_DEPTH} levels deep"),
        "plans need a few levels; look for unbalanced brackets or runaway generated YAML here"
            .into(),
    )
}

/// Whether `name` is a valid plan name: letters, digits, `.`, `_`, `-`, starting with a
/// letter or digit, at most 64 characters, no `..` (see [`PLAN_NAME_PATTERN`]).
pub fn is_plan_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.contains("..")
}

/// serde_yaml appends " at line X column Y"; the diagnostic already says where.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Names of params, secrets, connections and step ids: safe in template paths.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

struct Walker<'c, 'a> {
    c: &'c mut Collector<'a>,
}

impl Walker<'_, '_> {
    fn plan(&mut self, file: &str, root: &Value) -> Option<Plan> {
        let map = self.mapping("", root)?;
        self.unknown_keys("", map, PLAN_KEYS, "plan");
        self.version(map);
        let name = self.plan_name(map);
        let defaults = self.defaults(map.get("defaults"));
        let steps = match map.get("steps") {
            Some(v) => self.steps(v, &defaults),
            None => {
                self.c.error(
                    "",
                    At::Value,
                    "the plan has no `steps`",
                    Some("add `steps:` with at least one step".into()),
                );
                Vec::new()
            }
        };
        Some(Plan {
            file: file.to_string(),
            name,
            description: self.opt_string("", map, "description"),
            params: self.params(map.get("params")),
            secrets: self.secrets(map.get("secrets")),
            connections: self.connections(map.get("connections")),
            defaults,
            max_parallel: self.opt_positive("", map, "max_parallel").unwrap_or(4) as usize,
            fail_fast: self.opt_bool("", map, "fail_fast").unwrap_or(true),
            steps,
        })
    }

    /// The plan's name, which names its runs' directories: refused unless it is one safe
    /// path component.
    fn plan_name(&mut self, map: &Mapping) -> String {
        let Some(name) = self.required_string("", map, "name") else {
            return String::new();
        };
        if !is_plan_name(&name) {
            self.c.error(
                "name",
                At::Value,
                format!("plan name `{name}` is not a valid name"),
                Some("use 1 to 64 letters, digits, `.`, `_` or `-`, starting with a letter or digit (it names the runs' directories, so no `/` or `..`)".into()),
            );
        }
        name
    }

    fn version(&mut self, map: &Mapping) {
        match map.get("version") {
            None => self.c.error(
                "",
                At::Value,
                "the plan has no `version`",
                Some(format!("add `version: {PLAN_VERSION}` at the top")),
            ),
            Some(Value::Number(n)) if n.as_u64() == Some(PLAN_VERSION) => {}
            Some(other) => self.c.error(
                "version",
                At::Value,
                format!(
                    "unsupported plan version {}",
                    serde_yaml::to_string(other).unwrap_or_default().trim()
                ),
                Some(format!("this stagehand reads `version: {PLAN_VERSION}`")),
            ),
        }
    }

    fn params(&mut self, value: Option<&Value>) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        for (name, path, v) in self.named_entries("params", value) {
            let Some(map) = self.mapping(&path, v) else {
                continue;
            };
            self.unknown_keys(&path, map, PARAM_KEYS, "param");
            let ty = match self.required_string(&path, map, "type") {
                Some(t) => match ParamType::parse(&t) {
                    Some(ty) => ty,
                    None => {
                        self.c.error(
                            &child_key(&path, "type"),
                            At::Value,
                            format!("unknown param type `{t}`"),
                            Some(one_of(ParamType::ALL.iter().map(|(n, _)| *n))),
                        );
                        continue;
                    }
                },
                None => continue,
            };
            let default = map.get("default").and_then(|d| {
                let dpath = child_key(&path, "default");
                let json = self.json_of(&dpath, d)?;
                match coerce(ty, &json) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.c.error(
                            &dpath,
                            At::Value,
                            format!("bad default for param `{name}`: {e}"),
                            None,
                        );
                        None
                    }
                }
            });
            out.push(ParamSpec {
                required: self.opt_bool(&path, map, "required").unwrap_or(false),
                description: self.opt_string(&path, map, "description"),
                name,
                ty,
                default,
                path,
            });
        }
        out
    }

    fn secrets(&mut self, value: Option<&Value>) -> Vec<SecretSpec> {
        let mut out = Vec::new();
        for (name, path, v) in self.named_entries("secrets", value) {
            let Some(map) = self.mapping(&path, v) else {
                continue;
            };
            self.unknown_keys(&path, map, SECRET_KEYS, "secret");
            let env = self.opt_string(&path, map, "env");
            let file = self.opt_string(&path, map, "file");
            let source = match (env, file) {
                (Some(e), None) => SecretSource::Env(e),
                (None, Some(f)) => SecretSource::File(f),
                _ => {
                    self.c.error(
                        &path,
                        At::Value,
                        format!("secret `{name}` needs exactly one source"),
                        Some("write {env: VAR_NAME} or {file: /path/to/file}".into()),
                    );
                    continue;
                }
            };
            out.push(SecretSpec {
                optional: self.opt_bool(&path, map, "optional").unwrap_or(false),
                name,
                source,
                path,
            });
        }
        out
    }

    fn connections(&mut self, value: Option<&Value>) -> Vec<ConnectionSpec> {
        let mut out = Vec::new();
        for (name, path, v) in self.named_entries("connections", value) {
            if self.mapping(&path, v).is_none() {
                continue;
            }
            if let Some(config) = self.json_of(&path, v) {
                out.push(ConnectionSpec { name, config, path });
            }
        }
        out
    }

    fn defaults(&mut self, value: Option<&Value>) -> StepDefaults {
        let mut d = StepDefaults::default();
        let Some(map) = value.and_then(|v| self.mapping("defaults", v)) else {
            return d;
        };
        self.unknown_keys("defaults", map, DEFAULTS_KEYS, "defaults");
        if let Some(r) = map.get("retry") {
            d.retry = self.retry("defaults.retry", r, &RetryPolicy::default());
        }
        d.timeout = self.opt_duration("defaults", map, "timeout");
        d
    }

    fn retry(&mut self, path: &str, value: &Value, base: &RetryPolicy) -> RetryPolicy {
        let mut r = base.clone();
        let Some(map) = self.mapping(path, value) else {
            return r;
        };
        self.unknown_keys(path, map, RETRY_KEYS, "retry");
        if let Some(a) = self.opt_positive(path, map, "attempts") {
            r.attempts = a.min(1000) as u32;
        }
        if let Some(b) = self.opt_duration(path, map, "backoff") {
            r.backoff = b;
        }
        if let Some(m) = self.opt_duration(path, map, "max_backoff") {
            r.max_backoff = m;
        }
        if let Some(j) = self.opt_bool(path, map, "jitter") {
            r.jitter = j;
        }
        r
    }

    fn steps(&mut self, value: &Value, defaults: &StepDefaults) -> Vec<StepSpec> {
        let Value::Sequence(items) = value else {
            self.c.error(
                "steps",
                At::Value,
                format!("`steps` must be a list, found {}", kind_of(value)),
                Some("write each step as `- id: ...`".into()),
            );
            return Vec::new();
        };
        if items.len() > MAX_STEPS {
            // Dependencies are checked between every pair of steps: the bound keeps
            // validation quick whatever the file holds.
            self.c.error(
                &child_index("steps", MAX_STEPS),
                At::Value,
                format!(
                    "the plan has {} steps; at most {MAX_STEPS} are allowed",
                    items.len()
                ),
                Some("split the work into several plans".into()),
            );
            return Vec::new();
        }
        items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| self.step(&child_index("steps", i), v, defaults))
            .collect()
    }

    fn step(&mut self, path: &str, value: &Value, defaults: &StepDefaults) -> Option<StepSpec> {
        let map = self.mapping(path, value)?;
        self.unknown_keys(path, map, STEP_KEYS, "step");
        let id = self.required_string(path, map, "id")?;
        if !is_identifier(&id) {
            self.c.error(
                &child_key(path, "id"),
                At::Value,
                format!("step id `{id}` is not a valid name"),
                Some("use letters, digits and _ (templates read it as steps.ID)".into()),
            );
        }
        let uses = self.required_string(path, map, "uses")?;
        let when = match self.opt_string(path, map, "when") {
            None => When::Success,
            Some(w) => match When::ALL.iter().find(|(n, _)| *n == w) {
                Some((_, when)) => *when,
                None => {
                    self.c.error(
                        &child_key(path, "when"),
                        At::Value,
                        format!("unknown `when: {w}`"),
                        Some(one_of(When::ALL.iter().map(|(n, _)| *n))),
                    );
                    When::Success
                }
            },
        };
        let with = match map.get("with") {
            None | Some(Value::Null) => serde_json::Value::Object(Default::default()),
            Some(v) => {
                let wpath = child_key(path, "with");
                self.mapping(&wpath, v)?;
                self.json_of(&wpath, v)?
            }
        };
        // A step's retry fields override the plan's defaults one by one.
        let retry = match map.get("retry") {
            None => defaults.retry.clone(),
            Some(r) => self.retry(&child_key(path, "retry"), r, &defaults.retry),
        };
        Some(StepSpec {
            name: self.opt_string(path, map, "name"),
            needs: self.string_list(path, map, "needs"),
            background: self.opt_bool(path, map, "background").unwrap_or(false),
            until: self.opt_string(path, map, "until"),
            timeout: self.opt_duration(path, map, "timeout").or(defaults.timeout),
            continue_on_error: self
                .opt_bool(path, map, "continue_on_error")
                .unwrap_or(false),
            condition: self.condition(path, map),
            id,
            uses,
            when,
            with,
            retry,
            path: path.to_string(),
        })
    }

    /// `if:` takes a boolean or a template string.
    fn condition(&mut self, path: &str, map: &Mapping) -> Option<serde_json::Value> {
        match map.get("if")? {
            Value::Bool(b) => Some(serde_json::Value::Bool(*b)),
            Value::String(s) => Some(serde_json::Value::String(s.clone())),
            other => {
                self.type_error(
                    path,
                    "if",
                    "true, false or a template such as \"{{params.prepare}}\"",
                    other,
                );
                None
            }
        }
    }

    // ---- small typed readers; each reports its own error and returns None ----

    fn mapping<'v>(&mut self, path: &str, value: &'v Value) -> Option<&'v Mapping> {
        match value {
            Value::Mapping(m) => Some(m),
            other => {
                let what = if path.is_empty() { "the plan" } else { path };
                self.c.error(
                    path,
                    At::Value,
                    format!("{what} must be a mapping, found {}", kind_of(other)),
                    None,
                );
                None
            }
        }
    }

    /// Entries of a name → mapping section (params, secrets, connections).
    fn named_entries<'v>(
        &mut self,
        section: &str,
        value: Option<&'v Value>,
    ) -> Vec<(String, String, &'v Value)> {
        let Some(value) = value else {
            return Vec::new();
        };
        if matches!(value, Value::Null) {
            return Vec::new();
        }
        let Some(map) = self.mapping(section, value) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in map {
            let Some(name) = k.as_str() else {
                self.c.error(
                    section,
                    At::Value,
                    format!("names in `{section}` must be text"),
                    None,
                );
                continue;
            };
            let path = child_key(section, name);
            if !is_identifier(name) {
                self.c.error(
                    &path,
                    At::Key,
                    format!("`{name}` is not a valid name in `{section}`"),
                    Some("use letters, digits and _".into()),
                );
                continue;
            }
            out.push((name.to_string(), path, v));
        }
        out
    }

    fn unknown_keys(&mut self, path: &str, map: &Mapping, allowed: &[&str], what: &str) {
        for key in map.keys() {
            let Some(k) = key.as_str() else {
                self.c.error(
                    path,
                    At::Value,
                    format!("keys of a {what} must be text"),
                    None,
                );
                continue;
            };
            if !allowed.contains(&k) {
                let hint = did_you_mean(k, allowed.iter().copied())
                    .unwrap_or_else(|| one_of(allowed.iter().copied()));
                self.c.error(
                    &child_key(path, k),
                    At::Key,
                    format!("unknown field `{k}` in {what}"),
                    Some(hint),
                );
            }
        }
    }

    fn required_string(&mut self, path: &str, map: &Mapping, key: &str) -> Option<String> {
        if map.get(key).is_none() {
            self.c.error(
                path,
                At::Value,
                format!("missing required field `{key}`"),
                None,
            );
            return None;
        }
        self.opt_string(path, map, key)
    }

    fn opt_string(&mut self, path: &str, map: &Mapping, key: &str) -> Option<String> {
        match map.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            other => {
                self.type_error(path, key, "text", other);
                None
            }
        }
    }

    fn opt_bool(&mut self, path: &str, map: &Mapping, key: &str) -> Option<bool> {
        match map.get(key)? {
            Value::Bool(b) => Some(*b),
            other => {
                self.type_error(path, key, "true or false", other);
                None
            }
        }
    }

    fn opt_positive(&mut self, path: &str, map: &Mapping, key: &str) -> Option<u64> {
        match map.get(key)? {
            Value::Number(n) if n.as_u64().is_some_and(|v| v > 0) => n.as_u64(),
            other => {
                self.type_error(path, key, "a positive integer", other);
                None
            }
        }
    }

    fn opt_duration(&mut self, path: &str, map: &Mapping, key: &str) -> Option<Duration> {
        let text = self.opt_string(path, map, key)?;
        match humantime::parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.c.error(
                    &child_key(path, key),
                    At::Value,
                    format!("`{text}` is not a duration: {e}"),
                    Some("write e.g. 500ms, 30s, 5m, 2h".into()),
                );
                None
            }
        }
    }

    fn string_list(&mut self, path: &str, map: &Mapping, key: &str) -> Vec<String> {
        match map.get(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Sequence(items)) => {
                let lpath = child_key(path, key);
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(s) => out.push(s.to_string()),
                        None => self.c.error(
                            &child_index(&lpath, i),
                            At::Value,
                            format!("`{key}` entries must be step ids, found {}", kind_of(item)),
                            None,
                        ),
                    }
                }
                out
            }
            Some(other) => {
                self.type_error(path, key, "a list of step ids", other);
                Vec::new()
            }
        }
    }

    fn type_error(&mut self, path: &str, key: &str, expected: &str, found: &Value) {
        self.c.error(
            &child_key(path, key),
            At::Value,
            format!("`{key}` must be {expected}, found {}", kind_of(found)),
            None,
        );
    }

    fn json_of(&mut self, path: &str, value: &Value) -> Option<serde_json::Value> {
        match serde_json::to_value(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.c.error(
                    path,
                    At::Value,
                    format!("unsupported YAML value: {e}"),
                    Some("use plain mappings, lists and scalars (no tags, text keys)".into()),
                );
                None
            }
        }
    }
}

fn kind_of(value: &Value) -> String {
    match serde_json::to_value(value) {
        Ok(json) => describe_json(&json),
        Err(_) => "a tagged value".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only_error(text: &str) -> Diagnostic {
        let parsed = parse_plan("p.yaml", text);
        assert!(parsed.plan.is_none(), "the plan is refused");
        match parsed.diagnostics.as_slice() {
            [d] => d.clone(),
            other => panic!("one diagnostic expected, got {other:?}"),
        }
    }

    #[test]
    fn plans_too_deep_or_too_large_are_refused_with_a_position() {
        let deep = format!(
            "version: 1\nname: d\nsteps: {}{}\n",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        let d = only_error(&deep);
        assert_eq!((d.line, d.column), (3, 7 + MAX_DEPTH));
        assert_eq!(
            d.message,
            "the plan nests lists and mappings more than 64 levels deep"
        );
        let block = (0..=MAX_DEPTH).fold(String::new(), |text, level| {
            format!("{text}{}a:\n", " ".repeat(level))
        });
        let d = only_error(&block);
        assert_eq!(d.line, MAX_DEPTH + 1);

        let large = format!("version: 1\nname: l\n# {}\n", "x".repeat(MAX_PLAN_BYTES));
        let d = only_error(&large);
        assert_eq!((d.line, d.column), (1, 1));
        assert_eq!(
            d.message,
            format!(
                "the plan is larger than 1 MiB ({} bytes or more)",
                large.len()
            )
        );
    }

    #[test]
    fn plan_names_are_one_safe_path_component() {
        for good in [
            "nightly",
            "full-backup",
            "db1.nightly_2",
            "9",
            &"a".repeat(64),
        ] {
            assert!(is_plan_name(good), "{good}");
        }
        for bad in [
            "",
            "../../x",
            "..",
            ".hidden",
            "a/b",
            "a..b",
            "-x",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(!is_plan_name(bad), "{bad:?}");
        }
        let parsed = parse_plan("p.yaml", "version: 1\nname: \"../../x\"\nsteps: []\n");
        let d = &parsed.diagnostics[0];
        assert_eq!((d.line, d.column), (2, 7));
        assert_eq!(d.message, "plan name `../../x` is not a valid name");
        assert!(d
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("no `/` or `..`")));
    }
}
