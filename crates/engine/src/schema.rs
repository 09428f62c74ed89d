//! The JSON Schema of the plan format (editors use it through the
//! `# yaml-language-server: $schema=...` comment). Built from the step kinds' own config
//! schemas, so it never drifts from what validation accepts.

use crate::resources::ConnectionProvider;
use crate::step::Registry;
use serde_json::{json, Value};

pub fn plan_schema(registry: &Registry, provider: Option<&dyn ConnectionProvider>) -> Value {
    let duration = json!({"type": "string", "description": "a duration: 500ms, 30s, 5m, 2h"});
    let retry = json!({
        "type": "object", "additionalProperties": false,
        "properties": {
            "attempts": {"type": "integer", "minimum": 1, "description": "tries in all, the first included"},
            "backoff": duration, "max_backoff": duration,
            "jitter": {"type": "boolean"}
        }
    });
    let connection = provider
        .map(|p| p.schema())
        .unwrap_or_else(|| json!({"type": "object"}));
    let kinds: Vec<&str> = registry.names().collect();
    let per_kind: Vec<Value> = registry
        .kinds()
        .map(|k| {
            let mut with = k.config_schema();
            if let Value::Object(m) = &mut with {
                m.remove("$schema");
            }
            json!({
                "if": {"properties": {"uses": {"const": k.name()}}, "required": ["uses"]},
                "then": {"properties": {"with": with}}
            })
        })
        .collect();
    let step = json!({
        "type": "object", "additionalProperties": false, "required": ["id", "uses"],
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
            "uses": {"enum": kinds, "description": "the step kind (see `stagehand steps`)"},
            "name": {"type": "string"},
            "needs": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "when": {"enum": ["success", "failure", "always"], "default": "success"},
            "with": {"type": "object"},
            "background": {"type": "boolean", "description": "dependents start once it is ready; it runs until its `until` step finishes"},
            "until": {"type": "string"},
            "retry": retry,
            "timeout": duration,
            "continue_on_error": {"type": "boolean"},
            "if": {"oneOf": [{"type": "boolean"}, {"type": "string"}], "description": "false (or a template rendering to false, 0, no, off or empty) skips the step"}
        },
        "allOf": per_kind
    });
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://stagehand.dev/schemas/plan.schema.json",
        "title": "stagehand plan",
        "type": "object",
        "additionalProperties": false,
        "required": ["version", "name", "steps"],
        "properties": {
            "version": {"const": crate::model::PLAN_VERSION},
            "name": {
                "type": "string", "pattern": crate::parse::PLAN_NAME_PATTERN,
                "description": "names the plan's runs and their directories: 1 to 64 letters, digits, `.`, `_` or `-`, starting with a letter or digit, no `..`"
            },
            "description": {"type": "string"},
            "max_parallel": {"type": "integer", "minimum": 1, "default": 4},
            "fail_fast": {"type": "boolean", "default": true},
            "params": {
                "type": "object",
                "additionalProperties": {
                    "type": "object", "additionalProperties": false, "required": ["type"],
                    "properties": {
                        "type": {"enum": ["string", "integer", "boolean", "path", "duration", "size"]},
                        "default": {},
                        "required": {"type": "boolean"},
                        "description": {"type": "string"}
                    }
                }
            },
            "secrets": {
                "type": "object",
                "additionalProperties": {
                    "type": "object", "additionalProperties": false,
                    "properties": {
                        "env": {"type": "string"}, "file": {"type": "string"},
                        "optional": {"type": "boolean"}, "description": {"type": "string"}
                    },
                    "oneOf": [{"required": ["env"]}, {"required": ["file"]}]
                }
            },
            "connections": {"type": "object", "additionalProperties": connection},
            "defaults": {
                "type": "object", "additionalProperties": false,
                "properties": {"retry": retry, "timeout": duration}
            },
            "steps": {"type": "array", "minItems": 1, "items": step}
        }
    })
}
