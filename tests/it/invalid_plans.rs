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

/// Writes `text` as `<name>.yaml` in `dir`; returns its path as text.
fn temp_plan(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).expect("write plan");
    path.to_str().expect("utf-8 path").to_string()
}

#[test]
fn deep_nesting_is_refused_with_its_position_and_large_legal_plans_validate() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 180 KB of nested brackets (validation used to take seconds, growing with the
    // square of the depth, and then fail on something else).
    let depth = 90_000;
    let lists = temp_plan(
        dir.path(),
        "lists",
        &format!(
            "version: 1\nname: deep\nsteps:\n  - id: a\n    uses: exec\n    with: {{command: [echo], env: {}{}}}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        ),
    );
    let mappings = temp_plan(
        dir.path(),
        "mappings",
        &format!(
            "version: 1\nname: deep\nsteps:\n  - id: a\n    uses: exec\n    with: {}1{}\n",
            "{a: ".repeat(depth / 2),
            "}".repeat(depth / 2)
        ),
    );
    for plan in [&lists, &mappings] {
        let r = stagehand(&["validate", plan]);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(
            r.stderr.starts_with(&format!("{plan}:6:")),
            "the error points into line 6: {}",
            r.stderr
        );
        assert!(
            r.stderr
                .contains(": error: the plan nests lists and mappings more than 64 levels deep\n"),
            "{}",
            r.stderr
        );
    }

    // Close to the size bound, and legal: 900 chained steps of 1 KB each.
    let mut big = String::from("version: 1\nname: big\nsteps:\n");
    for i in 0..900 {
        let needs = if i == 0 {
            String::new()
        } else {
            format!("    needs: [s{}]\n", i - 1)
        };
        big.push_str(&format!(
            "  - id: s{i}\n    uses: exec\n{needs}    with: {{command: [echo, \"{}\"]}}\n",
            "x".repeat(950)
        ));
    }
    assert!(big.len() > 900_000 && big.len() < 1 << 20);
    let big = temp_plan(dir.path(), "big", &big);
    let r = stagehand(&["validate", &big]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, format!("{big}: ok\n"));

    let huge = temp_plan(
        dir.path(),
        "huge",
        &format!("version: 1\nname: huge\n# {}\n", "x".repeat(1 << 20)),
    );
    let r = stagehand(&["validate", &huge]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.starts_with(&format!(
            "{huge}:1:1: error: the plan is larger than 1 MiB ({} bytes or more)\n  hint: ",
            (1 << 20) + 25
        )),
        "{}",
        r.stderr
    );
}

#[test]
fn a_plan_name_that_leads_out_of_the_state_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("a/b/state");
    let plan = "tests/plans/invalid/bad_name.yaml";
    let r = stagehand(&["run", plan, "--state-dir", state.to_str().expect("utf-8")]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.starts_with(&format!(
            "{plan}:2:7: error: plan name `../../x` is not a valid name\n  hint: "
        )),
        "{}",
        r.stderr
    );
    // Nothing was written, inside the state directory or out of it.
    assert!(!dir.path().join("a").exists());
}

#[test]
fn what_fails_only_when_rendered_is_refused_by_validate_and_dry_run() {
    let plan = "tests/plans/invalid/unsupported_template.yaml";
    for args in [vec!["validate", plan], vec!["run", plan, "--dry-run"]] {
        let r = stagehand(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        for message in [
            "error: template includes partial `header`, and plans have no partials",
            "error: template calls unknown helper `upper`",
        ] {
            assert!(r.stderr.contains(message), "{args:?}: {}", r.stderr);
        }
    }
    let r = stagehand(&["validate", plan]);
    assert!(
        r.stderr
            .contains(&format!("{plan}:7:39: error: date: bad format `%Y%m%d-%Q`")),
        "{}",
        r.stderr
    );
}
