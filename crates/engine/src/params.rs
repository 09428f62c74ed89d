//! Typed plan parameters: checking defaults and `--set` values against their type.

use crate::model::{ParamType, Plan};
use serde_json::Value;
use std::collections::BTreeMap;

/// Checks a value from the plan (a default) against `ty`; returns its canonical form.
/// Paths, durations and sizes stay text as written, once checked.
pub fn coerce(ty: ParamType, value: &Value) -> Result<Value, String> {
    match (ty, value) {
        (ParamType::Integer, Value::Number(n)) if n.is_i64() => Ok(value.clone()),
        (ParamType::Boolean, Value::Bool(_)) => Ok(value.clone()),
        (ParamType::String | ParamType::Path, Value::String(_)) => Ok(value.clone()),
        (ParamType::Duration | ParamType::Size, Value::String(s)) => coerce_text(ty, s),
        (ParamType::Size, Value::Number(n)) if n.is_u64() => Ok(value.clone()),
        _ => Err(format!(
            "expected {} but found {}",
            ty.with_article(),
            describe_json(value)
        )),
    }
}

/// Parses a `--set name=value` text for a param of type `ty`.
pub fn coerce_text(ty: ParamType, text: &str) -> Result<Value, String> {
    match ty {
        ParamType::String => Ok(Value::String(text.to_string())),
        ParamType::Path => {
            if text.is_empty() {
                Err("a path cannot be empty".into())
            } else {
                Ok(Value::String(text.to_string()))
            }
        }
        ParamType::Integer => text
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("`{text}` is not an integer")),
        ParamType::Boolean => match text.trim() {
            "true" | "yes" | "on" | "1" => Ok(Value::Bool(true)),
            "false" | "no" | "off" | "0" => Ok(Value::Bool(false)),
            _ => Err(format!("`{text}` is not a boolean (true or false)")),
        },
        ParamType::Duration => humantime::parse_duration(text.trim())
            .map(|_| Value::String(text.trim().to_string()))
            .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. 30s, 5m, 2h")),
        ParamType::Size => text
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|_| Value::String(text.trim().to_string()))
            .map_err(|_| format!("`{text}` is not a size; write e.g. 512MiB, 10G")),
    }
}

/// A harmless value of the type, used to type-check templates when a required param has
/// no value yet (validation without `--set`).
pub fn sample(ty: ParamType) -> Value {
    match ty {
        ParamType::Integer => Value::from(0),
        ParamType::Boolean => Value::Bool(false),
        ParamType::Duration => Value::String("1s".into()),
        ParamType::Size => Value::String("1MiB".into()),
        ParamType::String | ParamType::Path => Value::String(String::new()),
    }
}

pub fn describe_json(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string \"{s}\""),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// A problem with the run's param values (not the plan file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("unknown param `{name}` in --set{}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Unknown { name: String, hint: Option<String> },
    #[error("--set {name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("missing required param `{name}`: pass it with --set {name}=...")]
    Missing { name: String },
    #[error("--set expects name=value, got `{0}`")]
    Syntax(String),
}

/// Resolves the run's params: `--set` values over defaults. With `allow_missing`
/// (validation), a required param without value gets a sample of its type.
pub fn resolve(
    plan: &Plan,
    sets: &[(String, String)],
    allow_missing: bool,
) -> Result<BTreeMap<String, Value>, Vec<ParamError>> {
    let mut errors = Vec::new();
    let mut values = BTreeMap::new();
    for (name, text) in sets {
        match plan.param(name) {
            None => errors.push(ParamError::Unknown {
                name: name.clone(),
                hint: crate::diag::did_you_mean(name, plan.params.iter().map(|p| p.name.as_str())),
            }),
            Some(spec) => match coerce_text(spec.ty, text) {
                Ok(v) => {
                    values.insert(name.clone(), v);
                }
                Err(reason) => errors.push(ParamError::Invalid {
                    name: name.clone(),
                    reason,
                }),
            },
        }
    }
    for spec in &plan.params {
        if values.contains_key(&spec.name) {
            continue;
        }
        match (&spec.default, spec.required || spec.default.is_none()) {
            (Some(d), _) => {
                values.insert(spec.name.clone(), d.clone());
            }
            (None, _) if allow_missing => {
                values.insert(spec.name.clone(), sample(spec.ty));
            }
            (None, _) => errors.push(ParamError::Missing {
                name: spec.name.clone(),
            }),
        }
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(errors)
    }
}

/// Splits `name=value`.
pub fn parse_set(text: &str) -> Result<(String, String), ParamError> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(ParamError::Syntax(text.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coerces_set_values() {
        assert_eq!(coerce_text(ParamType::Integer, "4"), Ok(Value::from(4)));
        assert_eq!(
            coerce_text(ParamType::Boolean, "false"),
            Ok(Value::Bool(false))
        );
        assert!(coerce_text(ParamType::Boolean, "maybe").is_err());
        assert!(coerce_text(ParamType::Duration, "2h").is_ok());
        assert!(coerce_text(ParamType::Duration, "2 parsecs").is_err());
        assert!(coerce_text(ParamType::Size, "512MiB").is_ok());
        assert!(coerce_text(ParamType::Size, "lots").is_err());
    }
}
