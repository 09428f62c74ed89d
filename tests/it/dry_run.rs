//! The dry-run connects nowhere and writes nothing, and its JSON is stable.

use crate::cli::{plans_in, relative, stagehand};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;

/// Values for the params the shipped plans share; a plan with another required param
/// makes this test fail, so it gets a value here.
fn sets_for(plan_text: &str, socket: &str, port: u16) -> Vec<String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(plan_text).expect("plan parses");
    let mut sets = Vec::new();
    let Some(params) = doc.get("params").and_then(|p| p.as_mapping()) else {
        return sets;
    };
    for (name, spec) in params {
        let name = name.as_str().unwrap_or_default();
        let value = match name {
            "socket" => socket.to_string(),
            "host" => "127.0.0.1".to_string(),
            "port" => port.to_string(),
            "user" => "backup".to_string(),
            "datadir" => "/var/lib/mysql".to_string(),
            "target" => "/backups/dry-run".to_string(),
            "repo" => "/backups/repo".to_string(),
            "backup_id" => "nightly-20261121".to_string(),
            "repository" => "s3://backups/db1".to_string(),
            // The listener that must see no connection stands in for the S3 endpoint.
            "endpoint" => format!("http://127.0.0.1:{port}"),
            "workdir" => "/var/tmp/restore".to_string(),
            "to" => "2026-12-07T10:15:00Z".to_string(),
            _ if spec.get("required").and_then(|r| r.as_bool()) == Some(true) => {
                panic!("give the required param `{name}` a value in dry_run.rs")
            }
            _ => continue,
        };
        sets.push(format!("{name}={value}"));
    }
    sets
}

#[test]
fn dry_run_of_every_shipped_plan_connects_nowhere_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("listener.sock");
    let unix = UnixListener::bind(&socket_path).expect("bind unix socket");
    unix.set_nonblocking(true).expect("nonblocking");
    let tcp = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    tcp.set_nonblocking(true).expect("nonblocking");
    let port = tcp.local_addr().expect("addr").port();
    let socket = socket_path.to_str().expect("utf-8").to_string();
    let state_dir = dir.path().join("state");

    for plan in plans_in("plans") {
        let file = relative(&plan);
        let text = std::fs::read_to_string(&plan).expect("read plan");
        let sets = sets_for(&text, &socket, port);
        for json in [false, true] {
            let mut args = vec![
                "run",
                file.as_str(),
                "--dry-run",
                "--state-dir",
                state_dir.to_str().expect("utf-8"),
            ];
            if json {
                args.push("--json");
            }
            for s in &sets {
                args.extend(["--set", s.as_str()]);
            }
            let r = stagehand(&args);
            assert_eq!(r.code, 0, "{file}: {}", r.stderr);
            let stable = r
                .stdout
                .replace(&socket, "<socket>")
                .replace(&port.to_string(), "<port>");
            let name = plan
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("plan")
                .to_string();
            if json {
                let v: serde_json::Value =
                    serde_json::from_str(&r.stdout).expect("dry-run JSON parses");
                assert!(v["waves"].as_array().is_some_and(|w| !w.is_empty()));
                insta::assert_snapshot!(format!("dry_run_json_{name}"), stable);
            } else {
                insta::assert_snapshot!(format!("dry_run_text_{name}"), stable);
            }
        }
    }
    assert!(
        unix.accept().is_err(),
        "a dry-run connected to the Unix socket"
    );
    assert!(tcp.accept().is_err(), "a dry-run connected to the TCP port");
    assert!(
        !state_dir.exists(),
        "a dry-run wrote to the state directory"
    );
}

#[test]
fn dry_run_never_shows_secret_values() {
    let r = crate::cli::stagehand_env(
        &["run", "plans/server-check.yaml", "--dry-run", "--json"],
        &[("STAGEHAND_DB_PASSWORD", "hunter2-secret-value")],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("hunter2-secret-value"));
    assert!(!r.stderr.contains("hunter2-secret-value"));
    assert!(r.stdout.contains("<secrets.db_password>"), "{}", r.stdout);
}
