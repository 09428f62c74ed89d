//! Templates in plan values: `{{params.x}}`, `{{secrets.y}}`, `{{steps.ID.outputs.KEY}}`,
//! `{{env.HOME}}`, `{{run.id}}` and `{{date run.started_at "%Y%m%d"}}`, rendered by
//! handlebars right before a step runs.
//!
//! A value that is exactly one `{{path}}` takes the referenced value with its type (an
//! integer param stays an integer), so typed step fields can come from params and outputs.

use handlebars::template::{HelperTemplate, Parameter, TemplateElement};
use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};
use serde_json::Value;
use std::cell::OnceCell;

/// The roots a template may read.
pub const ROOTS: &[&str] = &["params", "secrets", "steps", "env", "run"];

/// One `{{ ... }}` in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    pub start: usize,
    pub end: usize,
    pub inner: String,
}

/// Finds the `{{ }}` expressions of a text (comments included, raw blocks not supported).
pub fn expressions(text: &str) -> Vec<Expr> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(rel) = text[from..].find("{{") {
        let start = from + rel;
        let triple = text[start..].starts_with("{{{");
        let (open, close) = if triple { (3, "}}}") } else { (2, "}}") };
        let Some(rel_end) = text[start + open..].find(close) else {
            break;
        };
        let end = start + open + rel_end + close.len();
        out.push(Expr {
            start,
            end,
            inner: text[start + open..start + open + rel_end]
                .trim()
                .to_string(),
        });
        from = end;
    }
    out
}

/// Dotted paths an expression reads from the known roots (`params.datadir`).
pub fn references(inner: &str) -> Vec<String> {
    references_under(inner, ROOTS)
}

/// The `{{report.*}}` references of an expression (the run so far, read by steps that
/// report on it, such as notify).
pub fn report_references(inner: &str) -> Vec<String> {
    references_under(inner, &["report"])
}

fn references_under(inner: &str, roots: &[&str]) -> Vec<String> {
    if inner.starts_with('!') {
        return Vec::new(); // a comment
    }
    let mut refs = Vec::new();
    let mut in_quote: Option<char> = None;
    let mut token = String::new();
    let flush = |token: &mut String, refs: &mut Vec<String>| {
        let t = token.trim_start_matches(['#', '/', '^', '~', '&', '>']);
        let root = t.split('.').next().unwrap_or("");
        if roots.contains(&root) {
            refs.push(t.to_string());
        }
        token.clear();
    };
    for ch in inner.chars() {
        match in_quote {
            Some(q) if ch == q => in_quote = None,
            Some(_) => {}
            None if ch == '"' || ch == '\'' => {
                flush(&mut token, &mut refs);
                in_quote = Some(ch);
            }
            None if ch.is_whitespace() || ch == '(' || ch == ')' || ch == '=' => {
                flush(&mut token, &mut refs)
            }
            None => token.push(ch),
        }
    }
    flush(&mut token, &mut refs);
    refs
}

/// Every reference in every string of a JSON value, with the path of the string.
pub fn references_in(value: &Value, path: &str, out: &mut Vec<(String, String)>) {
    collect_in(value, path, references, out)
}

/// Every `{{report.*}}` reference in a value, with the path of the string it is in.
pub fn report_references_in(value: &Value, path: &str, out: &mut Vec<(String, String)>) {
    collect_in(value, path, report_references, out)
}

fn collect_in(
    value: &Value,
    path: &str,
    refs_of: fn(&str) -> Vec<String>,
    out: &mut Vec<(String, String)>,
) {
    match value {
        Value::String(s) => {
            for e in expressions(s) {
                for r in refs_of(&e.inner) {
                    out.push((path.to_string(), r));
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_in(v, &crate::source::child_index(path, i), refs_of, out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                collect_in(v, &crate::source::child_key(path, k), refs_of, out);
            }
        }
        _ => {}
    }
}

/// Whether a whole string is one plain path expression: `{{ steps.a.outputs.b }}`.
fn pure_path(text: &str) -> Option<String> {
    let exprs = expressions(text);
    match exprs.as_slice() {
        [e] if e.start == 0 && e.end == text.len() => {
            let p = &e.inner;
            let plain = !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
            plain.then(|| p.clone())
        }
        _ => None,
    }
}

fn lookup<'v>(ctx: &'v Value, dotted: &str) -> Option<&'v Value> {
    dotted.split('.').try_fold(ctx, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// How expressions that read not-yet-known values are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything is known: strict rendering, a missing value is an error.
    Run,
    /// Type-checking with sample values: missing nested values render empty.
    Check,
    /// Dry-run display: only params are known; expressions reading steps, secrets, env
    /// or run show as `<steps.x...>`, so the output is the same wherever it is made.
    Display,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// A template validation refuses, with what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateProblem {
    pub message: String,
    pub hint: Option<String>,
}

/// Helpers a plan template may call: handlebars' own and `date`.
const HELPERS: &[&str] = &[
    "if", "unless", "each", "with", "lookup", "raw", "log", "eq", "ne", "gt", "gte", "lt", "lte",
    "and", "or", "not", "len", "date",
];

/// The first element of a compiled template that would fail when rendered.
fn first_unsupported(elements: &[TemplateElement]) -> Option<TemplateProblem> {
    elements.iter().find_map(|e| match e {
        TemplateElement::PartialExpression(d) | TemplateElement::PartialBlock(d) => {
            Some(TemplateProblem {
                message: format!(
                    "template includes partial `{}`, and plans have no partials",
                    d.name.as_name().unwrap_or("?")
                ),
                hint: Some(
                    "write the text out in place (`{{> name}}` is handlebars' include)".into(),
                ),
            })
        }
        TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
            Some(TemplateProblem {
                message: "template uses a decorator (`{{* ...}}`), which plans do not support"
                    .into(),
                hint: None,
            })
        }
        TemplateElement::Expression(h)
        | TemplateElement::HtmlExpression(h)
        | TemplateElement::HelperBlock(h) => helper_problem(h),
        _ => None,
    })
}

fn helper_problem(h: &HelperTemplate) -> Option<TemplateProblem> {
    let calls_helper = h.block || !h.params.is_empty() || !h.hash.is_empty();
    let name = h.name.as_name().unwrap_or_default();
    if calls_helper && matches!(h.name, Parameter::Name(_)) && !HELPERS.contains(&name) {
        return Some(TemplateProblem {
            message: format!("template calls unknown helper `{name}`"),
            hint: Some(
                crate::diag::did_you_mean(name, HELPERS.iter().copied())
                    .unwrap_or_else(|| crate::diag::one_of(HELPERS.iter().copied())),
            ),
        });
    }
    if name == "date" {
        if let Some(Parameter::Literal(Value::String(format))) = h.params.get(1) {
            if let Err(message) = strftime_items(format) {
                return Some(TemplateProblem {
                    message,
                    hint: Some(
                        "use strftime fields such as %Y %m %d %H %M %S (write %% for a %)".into(),
                    ),
                });
            }
        }
    }
    let nested = h
        .params
        .iter()
        .chain(h.hash.values())
        .find_map(|p| match p {
            Parameter::Subexpression(sub) => {
                first_unsupported(std::slice::from_ref(sub.element.as_ref()))
            }
            _ => None,
        });
    nested
        .or_else(|| {
            h.template
                .as_ref()
                .and_then(|t| first_unsupported(&t.elements))
        })
        .or_else(|| {
            h.inverse
                .as_ref()
                .and_then(|t| first_unsupported(&t.elements))
        })
}

/// A strftime format parsed for chrono, or why it cannot be used.
fn strftime_items(format: &str) -> Result<Vec<chrono::format::Item<'_>>, String> {
    let items: Vec<_> = chrono::format::StrftimeItems::new(format).collect();
    if items
        .iter()
        .any(|i| matches!(i, chrono::format::Item::Error))
    {
        return Err(format!("date: bad format `{format}`"));
    }
    Ok(items)
}

pub struct Renderer {
    strict: Handlebars<'static>,
    lenient: Handlebars<'static>,
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

impl Renderer {
    pub fn new() -> Self {
        Self {
            strict: registry(true),
            lenient: registry(false),
        }
    }

    /// Everything validation can know about a template before the run: its syntax, and
    /// what would only fail when it renders (partials, unknown helpers, `date` formats).
    pub fn check_template(&self, text: &str) -> Result<(), TemplateProblem> {
        let template = handlebars::Template::compile(text).map_err(|e| TemplateProblem {
            message: format!("template syntax error: {}", e.reason()),
            hint: None,
        })?;
        match first_unsupported(&template.elements) {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Renders every string inside `value`; a string that is one `{{path}}` takes the
    /// referenced value with its type.
    pub fn render_value(
        &self,
        value: &Value,
        ctx: &Value,
        mode: Mode,
    ) -> Result<Value, TemplateError> {
        self.render_tree(value, ctx, mode, true)
    }

    /// Like [`render_value`](Self::render_value) but every template renders as text.
    pub fn render_value_as_text(
        &self,
        value: &Value,
        ctx: &Value,
        mode: Mode,
    ) -> Result<Value, TemplateError> {
        self.render_tree(value, ctx, mode, false)
    }

    fn render_tree(
        &self,
        value: &Value,
        ctx: &Value,
        mode: Mode,
        typed: bool,
    ) -> Result<Value, TemplateError> {
        // handlebars copies the data it renders with: once per value, not per string,
        // so rendering stays linear in the plan's size.
        let shared = OnceCell::new();
        self.render_node(
            value,
            &Data {
                ctx,
                shared: &shared,
            },
            mode,
            typed,
        )
    }

    fn render_node(
        &self,
        value: &Value,
        data: &Data,
        mode: Mode,
        typed: bool,
    ) -> Result<Value, TemplateError> {
        Ok(match value {
            Value::String(s) => {
                let v = self.render_text(s, data, mode)?;
                match (typed, v) {
                    (false, Value::String(s)) => Value::String(s),
                    (false, Value::Null) => Value::String(String::new()),
                    (false, other) if !other.is_object() && !other.is_array() => {
                        Value::String(other.to_string())
                    }
                    (_, other) => other,
                }
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.render_node(v, data, mode, typed))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => {
                let mut out = serde_json::Map::new();
                for (k, v) in map {
                    out.insert(k.clone(), self.render_node(v, data, mode, typed)?);
                }
                Value::Object(out)
            }
            other => other.clone(),
        })
    }

    pub fn render_str(&self, text: &str, ctx: &Value, mode: Mode) -> Result<Value, TemplateError> {
        let shared = OnceCell::new();
        self.render_text(
            text,
            &Data {
                ctx,
                shared: &shared,
            },
            mode,
        )
    }

    fn render_text(&self, text: &str, data: &Data, mode: Mode) -> Result<Value, TemplateError> {
        if !text.contains("{{") {
            return Ok(Value::String(text.to_string()));
        }
        let text = if mode == Mode::Display {
            let shown = placeholders(text);
            if !shown.contains("{{") {
                return Ok(Value::String(shown));
            }
            shown
        } else {
            text.to_string()
        };
        if let Some(path) = pure_path(&text) {
            match (lookup(data.ctx, &path), mode) {
                (Some(v), _) => return Ok(v.clone()),
                (None, Mode::Run) => {
                    return Err(TemplateError(format!("`{path}` has no value in this run")))
                }
                (None, _) => return Ok(Value::String(String::new())),
            }
        }
        let hb = if mode == Mode::Run {
            &self.strict
        } else {
            &self.lenient
        };
        let context = data.shared.get_or_init(|| Context::from(data.ctx.clone()));
        hb.render_template_with_context(&text, context)
            .map(Value::String)
            .map_err(|e| TemplateError(render_error_text(&e)))
    }
}

/// The template data, as JSON and (made on first use) as handlebars' context.
struct Data<'a> {
    ctx: &'a Value,
    shared: &'a OnceCell<Context>,
}

/// Replaces expressions that read anything but params with `<...>` text.
fn placeholders(text: &str) -> String {
    let mut out = String::new();
    let mut last = 0;
    for e in expressions(text) {
        let unresolved = references(&e.inner)
            .iter()
            .any(|r| !r.starts_with("params."));
        out.push_str(&text[last..e.start]);
        if unresolved {
            out.push('<');
            out.push_str(&e.inner);
            out.push('>');
        } else {
            out.push_str(&text[e.start..e.end]);
        }
        last = e.end;
    }
    out.push_str(&text[last..]);
    out
}

fn render_error_text(e: &handlebars::RenderError) -> String {
    match e.reason() {
        RenderErrorReason::MissingVariable(Some(path)) => {
            format!("`{path}` has no value in this run")
        }
        RenderErrorReason::TemplateError(t) => format!("template syntax error: {}", t.reason()),
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

fn registry(strict: bool) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(strict);
    // Plans render shell arguments, SQL and paths, never HTML.
    hb.register_escape_fn(handlebars::no_escape);
    hb.register_helper("date", Box::new(date_helper));
    hb
}

/// `{{date run.started_at "%Y%m%d-%H%M%S"}}`: formats an RFC 3339 time with strftime.
fn date_helper(
    h: &Helper,
    _: &Handlebars,
    _: &Context,
    _: &mut RenderContext,
    out: &mut dyn Output,
) -> HelperResult {
    let time = h.param(0).and_then(|p| p.value().as_str()).ok_or_else(|| {
        RenderErrorReason::Other("date: the first argument must be a time".into())
    })?;
    let format = h
        .param(1)
        .and_then(|p| p.value().as_str())
        .unwrap_or("%Y-%m-%dT%H:%M:%SZ");
    let parsed = chrono::DateTime::parse_from_rfc3339(time).map_err(|e| {
        RenderErrorReason::Other(format!("date: `{time}` is not an RFC 3339 time: {e}"))
    })?;
    let items = strftime_items(format).map_err(RenderErrorReason::Other)?;
    let utc = parsed.with_timezone(&chrono::Utc);
    out.write(&utc.format_with_items(items.into_iter()).to_string())?;
    Ok(())
}

/// Whether a rendered `if:` value lets its step run: false, "false", "0", "no", "off"
/// and "" do not.
pub fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::Null => false,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "" | "false" | "0" | "no" | "off"
        ),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_references() {
        assert_eq!(
            references(r#"date run.started_at "%Y params.x""#),
            vec!["run.started_at".to_string()]
        );
        assert_eq!(references("steps.a.outputs.b"), vec!["steps.a.outputs.b"]);
        assert!(references("! a comment params.x").is_empty());
    }

    #[test]
    fn pure_paths_keep_their_type() {
        let r = Renderer::new();
        let ctx =
            json!({"params": {"n": 4, "dir": "/d"}, "run": {"started_at": "2026-11-21T10:00:00Z"}});
        assert_eq!(
            r.render_str("{{params.n}}", &ctx, Mode::Run).unwrap(),
            json!(4)
        );
        assert_eq!(
            r.render_str("{{ params.dir }}/x", &ctx, Mode::Run).unwrap(),
            json!("/d/x")
        );
        assert_eq!(
            r.render_str(r#"b-{{date run.started_at "%Y%m%d"}}"#, &ctx, Mode::Run)
                .unwrap(),
            json!("b-20261121")
        );
        assert!(r.render_str("{{params.nope}}", &ctx, Mode::Run).is_err());
        assert!(r.render_str("x {{params.nope}}", &ctx, Mode::Run).is_err());
        assert!(r
            .render_str(r#"{{date run.started_at "%Q"}}"#, &ctx, Mode::Run)
            .is_err());
    }

    #[test]
    fn validation_refuses_what_would_fail_when_rendered() {
        let r = Renderer::new();
        let problem = |t: &str| r.check_template(t).err().map(|p| p.message);
        assert_eq!(problem(r#"b-{{date run.started_at "%Y%m%d"}}"#), None);
        assert_eq!(problem("{{#if params.x}}a{{else}}b{{/if}}"), None);
        assert_eq!(
            problem("x {{> header}}"),
            Some("template includes partial `header`, and plans have no partials".into())
        );
        assert_eq!(
            problem(r#"{{date run.started_at "%Q"}}"#),
            Some("date: bad format `%Q`".into())
        );
        assert_eq!(
            problem(r#"{{#if params.x}}{{date run.started_at "%"}}{{/if}}"#),
            Some("date: bad format `%`".into())
        );
        assert_eq!(
            problem("{{upper params.x}}"),
            Some("template calls unknown helper `upper`".into())
        );
    }

    #[test]
    fn display_shows_placeholders() {
        let r = Renderer::new();
        let ctx = json!({"params": {"dir": "/d"}});
        assert_eq!(
            r.render_str(
                "{{params.dir}}/{{steps.a.outputs.b}} {{secrets.pw}}",
                &ctx,
                Mode::Display
            )
            .unwrap(),
            json!("/d/<steps.a.outputs.b> <secrets.pw>")
        );
    }
}
