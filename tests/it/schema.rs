//! The checked-in JSON Schema equals what `stagehand schema` prints, and shipped plans
//! validate.

use crate::cli::{plans_in, relative, repo_root, stagehand};

#[test]
fn checked_in_schema_matches_the_binary() {
    let r = stagehand(&["schema"]);
    assert_eq!(r.code, 0);
    let checked_in = std::fs::read_to_string(repo_root().join("schemas/plan.schema.json"))
        .expect("schemas/plan.schema.json exists");
    assert_eq!(
        checked_in.trim_end(),
        r.stdout.trim_end(),
        "schemas/plan.schema.json is stale: run `cargo run -q -- schema > schemas/plan.schema.json`"
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("schema is JSON");
    assert!(v["properties"]["steps"].is_object());
}

#[test]
fn shipped_plans_validate() {
    let plans = plans_in("plans");
    assert!(!plans.is_empty());
    let files: Vec<String> = plans.iter().map(|p| relative(p)).collect();
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    let r = stagehand(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for f in &files {
        assert!(r.stdout.contains(&format!("{f}: ok")), "{}", r.stdout);
    }
}

#[test]
fn steps_lists_every_kind_with_fields() {
    let r = stagehand(&["steps"]);
    assert_eq!(r.code, 0);
    for kind in ["exec", "sql"] {
        assert!(r.stdout.contains(&format!("{kind}: ")), "{}", r.stdout);
    }
    assert!(r.stdout.contains("connection (required)"), "{}", r.stdout);
    assert_eq!(stagehand(&["steps", "nope"]).code, 2);
}

#[test]
fn graph_prints_mermaid_and_dot() {
    let plan = relative(&plans_in("plans")[0]);
    let m = stagehand(&["graph", &plan]);
    assert_eq!(m.code, 0);
    assert!(m.stdout.starts_with("flowchart TD"));
    let d = stagehand(&["graph", &plan, "--format", "dot"]);
    assert!(d.stdout.starts_with("digraph"));
}
