//! Every bad plan reports all its problems with file:line:column, and exits 2.

use crate::cli::{plans_in, relative, stagehand};

#[test]
fn each_invalid_plan_reports_positions_and_exits_2() {
    let plans = plans_in("tests/plans/invalid");
    assert!(plans.len() >= 8, "the invalid-plan corpus is there");
    for plan in plans {
        let file = relative(&plan);
        let name = plan
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plan")
            .to_string();
        // `run` checks required params too; validate does not need them.
        let r = if name == "missing_param" {
            stagehand(&["run", &file, "--dry-run"])
        } else {
            stagehand(&["validate", &file])
        };
        assert_eq!(r.code, 2, "{file} exits 2; stderr:\n{}", r.stderr);
        let errors: Vec<&str> = r
            .stderr
            .lines()
            .filter(|l| l.contains(": error: "))
            .collect();
        assert!(!errors.is_empty(), "{file} reports errors");
        for line in &errors {
            let rest = line
                .strip_prefix(&format!("{file}:"))
                .unwrap_or_else(|| panic!("`{line}` starts with the file name"));
            let mut parts = rest.splitn(3, ':');
            let line_no: usize = parts
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("line number in `{line}`"));
            let col: usize = parts
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("column in `{line}`"));
            assert!(line_no >= 1 && col >= 1);
        }
        insta::assert_snapshot!(format!("invalid_{name}"), r.stderr);
    }
}

#[test]
fn unknown_set_param_is_a_usage_error() {
    let r = stagehand(&[
        "run",
        "tests/plans/invalid/missing_param.yaml",
        "--dry-run",
        "--set",
        "target=/b",
        "--set",
        "paralel=3",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("unknown param `paralel`"), "{}", r.stderr);
    assert!(
        r.stderr.contains("did you mean `parallel`?"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_arguments_exit_2_and_missing_file_is_reported() {
    assert_eq!(stagehand(&["run"]).code, 2);
    assert_eq!(stagehand(&["no-such-command"]).code, 2);
    let r = stagehand(&["validate", "tests/plans/invalid/does-not-exist.yaml"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("cannot read the plan"), "{}", r.stderr);
}

#[test]
fn garbage_never_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inputs = [
        "", "---", "[]", "42", "version: 1", "version: 1\nname: x\nsteps: {}", "version: 1\nname: x\nsteps: [1, [2]]",
        "version: 1\nname: x\nsteps:\n  - {id: a, uses: exec, with: [1]}", "&a [*a]", "version: 1\nname: x\nsteps:\n  - {id: a, uses: exec, with: {command: [echo, '{{#each}}']}}",
        "\u{0}\u{1}", "version: 1\nname: x\nparams: {p: {type: integer, default: 99999999999999999999999}}\nsteps: []",
    ];
    for (i, text) in inputs.iter().enumerate() {
        let path = dir.path().join(format!("g{i}.yaml"));
        std::fs::write(&path, text).expect("write");
        let r = stagehand(&["validate", path.to_str().expect("utf-8 path")]);
        assert_eq!(r.code, 2, "input {text:?} is invalid: {}", r.stderr);
        assert!(
            !r.stderr.contains("panicked"),
            "input {text:?} panicked: {}",
            r.stderr
        );
    }
}
