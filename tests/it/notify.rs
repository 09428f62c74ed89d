//! The `notify` step against real servers on loopback: an SMTP server (aiosmtpd) that
//! receives the email, an HTTP receiver for webhooks (a 5xx first, to show the retry),
//! a notify failure that does not fail a good run (and does with `required: true`), and
//! no secret in anything written or sent.

use crate::cli::stagehand_env;
use crate::servers::{free_port, HttpReceiver, SmtpOptions, SmtpServer};
use crate::support::{backup_params, files_in, run_plan, server_with, write_plan};
use serde_json::Value;

const FAILING_PLAN: &str = r#"version: 1
name: nightly
params:
  smtp_port: {type: integer, required: true}
secrets:
  smtp_password: {env: TEST_SMTP_PASSWORD}
steps:
  - id: dump
    uses: exec
    with: {command: [echo, "42 tables"]}
  - id: upload
    uses: exec
    needs: [dump]
    with: {shell: "echo 'bucket is full' >&2; exit 3"}
  - id: mail
    uses: notify
    needs: [upload]
    when: always
    with:
      subject: "[{{report.status}}] {{report.plan}}: {{report.failed_step.id}} failed"
      body: |
        Plan {{report.plan}} {{report.status}}.
        {{#if report.failed_step}}Failed step: {{report.failed_step.id}} ({{report.failed_step.uses}})
        Error: {{report.failed_step.error}}
        {{/if}}dump said: {{steps.dump.outputs.stdout}}
        {{#each report.steps}}- {{@key}}: {{this.status}}
        {{/each}}
      email:
        host: 127.0.0.1
        port: "{{params.smtp_port}}"
        tls: none
        username: stagehand
        password: "{{secrets.smtp_password}}"
        from: "Backups <backup@example.com>"
        to: [dba@example.com, oncall@example.com]
        cc: [audit@example.com]
"#;

#[test]
fn email_arrives_with_the_subject_and_body_rendered_over_the_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let password = "smtp-Pa55-Secret";
    let smtp = SmtpServer::with_login(dir.path(), password);
    let plan = write_plan(dir.path(), "nightly", FAILING_PLAN);
    let r = run_plan(
        dir.path(),
        &plan,
        &[format!("smtp_port={}", smtp.port)],
        &[("TEST_SMTP_PASSWORD", password)],
    );
    assert_eq!(r.code, 1, "the upload step fails the run: {}", r.stderr);
    assert_eq!(r.report["status"], "failed");
    assert_eq!(r.step("mail")["status"], "succeeded", "{}", r.stderr);
    assert_eq!(
        r.step("mail")["outputs"]["channels"],
        serde_json::json!(["email"])
    );
    assert_eq!(r.step("mail")["outputs"]["recipients"], 3);

    let mail = smtp.wait_for(1);
    assert_eq!(mail.len(), 1, "one email arrived");
    let m = &mail[0];
    assert_eq!(m["authenticated"], true);
    assert_eq!(m["login"], "stagehand");
    assert_eq!(m["mail_from"], "backup@example.com");
    assert_eq!(
        m["rcpt_tos"],
        serde_json::json!(["dba@example.com", "oncall@example.com", "audit@example.com"])
    );
    assert_eq!(m["content_type"], "text/plain");
    let shown = format!(
        "From: {}\nTo: {}\nCc: {}\nSubject: {}\n\n{}",
        m["from"].as_str().unwrap_or_default(),
        m["to"].as_str().unwrap_or_default(),
        m["cc"].as_str().unwrap_or_default(),
        m["subject"].as_str().unwrap_or_default(),
        m["body"].as_str().unwrap_or_default().replace("\r\n", "\n"),
    );
    insta::assert_snapshot!("notify_email_failed_run", shown);
    assert!(!m["raw"].as_str().unwrap_or_default().contains(password));
}

#[test]
fn the_default_email_summarises_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::open(dir.path());
    let plan = write_plan(
        dir.path(),
        "defaults",
        r#"version: 1
name: defaults
params:
  smtp_port: {type: integer, required: true}
steps:
  - id: work
    uses: exec
    with: {command: ["true"]}
  - id: mail
    uses: notify
    needs: [work]
    when: always
    with:
      email: {host: 127.0.0.1, port: "{{params.smtp_port}}", tls: none, from: backup@example.com, to: [dba@example.com]}
"#,
    );
    let r = run_plan(
        dir.path(),
        &plan,
        &[format!("smtp_port={}", smtp.port)],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mail = smtp.wait_for(1);
    assert_eq!(mail.len(), 1);
    let subject = mail[0]["subject"].as_str().unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    assert_eq!(subject, format!("[stagehand] defaults succeeded on {host}"));
    let run_id = r.report["run_id"].as_str().unwrap_or_default();
    let body = mail[0]["body"]
        .as_str()
        .unwrap_or_default()
        .replace("\r\n", "\n")
        .replace(run_id, "<run id>")
        .replace(
            r.report["started_at"].as_str().unwrap_or_default(),
            "<started>",
        )
        .replace(&host, "<host>")
        .replace(&plan.display().to_string(), "<plan file>");
    // Durations vary: the lines with them are checked by shape.
    let stable: Vec<String> = body
        .lines()
        .map(|l| match l.split_once(" after ") {
            Some((head, _)) if l.starts_with("Plan ") => format!("{head} after <duration>."),
            _ if l.trim_start().starts_with("work ") => {
                assert!(
                    l.trim_end().ends_with(" ms") || l.trim_end().ends_with(" s"),
                    "{l}"
                );
                "  work                 succeeded <time>".to_string()
            }
            _ => l.to_string(),
        })
        .collect();
    insta::assert_snapshot!("notify_email_default_body", stable.join("\n"));
}

#[test]
fn webhook_is_retried_after_a_5xx_and_gets_a_slack_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = HttpReceiver::start(&[503, 200]);
    let plan = write_plan(
        dir.path(),
        "hook",
        &format!(
            r#"version: 1
name: hooked
secrets:
  hook_token: {{env: TEST_HOOK_TOKEN}}
steps:
  - id: work
    uses: exec
    with: {{shell: "exit 4"}}
  - id: chat
    uses: notify
    needs: [work]
    when: always
    retry: {{attempts: 3, backoff: 200ms, jitter: false}}
    with:
      subject: "{{{{report.plan}}}} {{{{report.status}}}}: {{{{report.failed_step.id}}}} failed"
      body: "{{{{report.failed_step.error}}}}"
      webhook:
        url: "{}"
        format: slack
        headers: {{Authorization: "Bearer {{{{secrets.hook_token}}}}"}}
"#,
            hook.url("/services/T000/B000")
        ),
    );
    let token = "tok-9f8e7d6c5b4a";
    let r = run_plan(dir.path(), &plan, &[], &[("TEST_HOOK_TOKEN", token)]);
    assert_eq!(r.code, 1, "the work step fails the run");
    let chat = r.step("chat");
    assert_eq!(chat["status"], "succeeded", "{}", r.stderr);
    assert_eq!(chat["attempts"], 2, "one retry after the 503");
    assert_eq!(chat["outputs"]["webhook_status"], 200);
    let retries: Vec<Value> = r
        .journal()
        .into_iter()
        .filter(|e| e["event"] == "step_retry" && e["step"] == "chat")
        .collect();
    assert_eq!(retries.len(), 1);
    assert_eq!(
        retries[0]["error"],
        format!(
            "notification not sent: webhook: http://127.0.0.1:{}/… answered HTTP 503: try later",
            hook.port
        )
    );
    assert_eq!(retries[0]["delay_ms"], 200);

    let got = hook.requests();
    assert_eq!(got.len(), 2, "the 503 and the retry");
    for req in &got {
        assert_eq!(req.request_line, "POST /services/T000/B000 HTTP/1.1");
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(
            req.header("authorization"),
            Some(format!("Bearer {token}").as_str())
        );
    }
    assert_eq!(got[0].body, got[1].body, "the same message was sent again");
    let mut payload: Value = serde_json::from_str(&got[1].body).expect("JSON payload");
    let run_id = r.report["run_id"].as_str().unwrap_or_default().to_string();
    payload["attachments"][0]["footer"] = Value::String(
        payload["attachments"][0]["footer"]
            .as_str()
            .unwrap_or_default()
            .replace(&run_id, "<run id>"),
    );
    insta::assert_json_snapshot!("notify_slack_payload", payload);
}

#[test]
fn json_webhook_carries_the_report_and_a_failed_notify_does_not_fail_a_good_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = HttpReceiver::start(&[200]);
    let dead_port = free_port();
    let plan_text = |required: bool| {
        format!(
            r#"version: 1
name: good
steps:
  - id: work
    uses: exec
    with: {{command: [echo, done]}}
  - id: report
    uses: notify
    needs: [work]
    with:
      webhook: {{url: "{}"}}
  - id: mail
    uses: notify
    needs: [work]
    retry: {{attempts: 2, backoff: 100ms, jitter: false}}
    with:
      required: {required}
      email: {{host: 127.0.0.1, port: {dead_port}, tls: none, from: backup@example.com, to: [dba@example.com], timeout: 2s}}
"#,
            hook.url("/hook")
        )
    };
    let plan = write_plan(dir.path(), "good", &plan_text(false));
    let r = run_plan(dir.path(), &plan, &[], &[]);
    assert_eq!(r.code, 0, "an unsent notification does not fail the run");
    assert_eq!(r.report["status"], "succeeded");
    let mail = r.step("mail");
    assert_eq!(mail["status"], "failed");
    assert_eq!(mail["attempts"], 2, "connection refused is retried");
    let err = mail["error"].as_str().unwrap_or_default();
    assert!(
        err.starts_with(&format!(
            "notification not sent: email: 127.0.0.1:{dead_port}: "
        )),
        "{err}"
    );
    assert_eq!(
        mail["hint"],
        "this does not fail the run (`required: true` would)"
    );

    let got = hook.requests();
    assert_eq!(got.len(), 1);
    let payload: Value = serde_json::from_str(&got[0].body).expect("JSON payload");
    assert_eq!(payload["status"], "succeeded");
    assert_eq!(payload["plan"], "good");
    assert_eq!(payload["run_id"], r.report["run_id"]);
    assert_eq!(payload["report"]["steps"]["work"]["status"], "succeeded");
    assert_eq!(
        payload["report"]["steps"]["work"]["outputs"]["stdout"],
        "done"
    );
    assert_eq!(payload["report"]["steps"]["report"]["status"], "running");
    assert_eq!(payload["failed_step"], Value::Null);
    assert_eq!(
        payload["subject"],
        format!(
            "[stagehand] good succeeded on {}",
            payload["host"].as_str().unwrap_or("?")
        )
    );

    let plan = write_plan(dir.path(), "good", &plan_text(true));
    let r = run_plan(dir.path(), &plan, &[], &[]);
    assert_eq!(r.code, 1, "with required: true it fails the run");
    assert_eq!(r.report["status"], "failed");
    assert_eq!(r.step("mail")["hint"], Value::Null);
}

#[test]
fn no_secret_in_journal_report_notifications_or_dry_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let password = "Smtp-Secret-0451";
    let token = "hook-Token-7a7a7a";
    let smtp = SmtpServer::with_login(dir.path(), password);
    let hook = HttpReceiver::start(&[200]);
    // The plan tries to leak both: in the body, in a step's output, in the URL.
    let plan = write_plan(
        dir.path(),
        "leaky",
        &format!(
            r#"version: 1
name: leaky
params:
  smtp_port: {{type: integer, required: true}}
secrets:
  smtp_password: {{env: TEST_SMTP_PASSWORD}}
  hook_token: {{env: TEST_HOOK_TOKEN}}
steps:
  - id: echo
    uses: exec
    with: {{command: [echo, "password {{{{secrets.smtp_password}}}} token {{{{secrets.hook_token}}}}"]}}
  - id: tell
    uses: notify
    needs: [echo]
    with:
      subject: "pw {{{{secrets.smtp_password}}}}"
      body: "token {{{{secrets.hook_token}}}}; echo said {{{{steps.echo.outputs.stdout}}}}"
      email:
        host: 127.0.0.1
        port: "{{{{params.smtp_port}}}}"
        tls: none
        username: stagehand
        password: "{{{{secrets.smtp_password}}}}"
        from: backup@example.com
        to: [dba@example.com]
      webhook:
        url: "{}/{{{{secrets.hook_token}}}}"
        headers: {{X-Token: "{{{{secrets.hook_token}}}}"}}
"#,
            hook.url("/hook")
        ),
    );
    let env = [("TEST_SMTP_PASSWORD", password), ("TEST_HOOK_TOKEN", token)];
    let sets = [format!("smtp_port={}", smtp.port)];
    let r = run_plan(dir.path(), &plan, &sets, &env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.step("tell")["outputs"]["channels"],
        serde_json::json!(["email", "webhook"])
    );
    let mail = smtp.wait_for(1);
    assert_eq!(mail.len(), 1);
    assert_eq!(
        mail[0]["authenticated"], true,
        "the secret password logged in"
    );
    let got = hook.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].request_line,
        format!("POST /hook/{token} HTTP/1.1"),
        "the secret URL was used"
    );
    assert_eq!(
        got[0].header("x-token"),
        Some(token),
        "the secret header was sent"
    );

    let dry = stagehand_env(
        &[
            "run",
            plan.to_str().expect("utf-8"),
            "--dry-run",
            "--set",
            &sets[0],
        ],
        &env,
    );
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let dry_json = stagehand_env(
        &[
            "run",
            plan.to_str().expect("utf-8"),
            "--dry-run",
            "--json",
            "--set",
            &sets[0],
        ],
        &env,
    );
    let report_text =
        std::fs::read_to_string(r.run_dir().join("report.json")).expect("report.json");
    let mut written: Vec<(String, String)> = vec![
        ("journal".into(), r.journal_text.clone()),
        ("report.json".into(), report_text),
        ("run stdout".into(), r.stdout.clone()),
        ("run stderr".into(), r.stderr.clone()),
        ("dry-run".into(), dry.stdout + &dry.stderr),
        ("dry-run --json".into(), dry_json.stdout + &dry_json.stderr),
        ("webhook body".into(), got[0].body.clone()),
    ];
    for m in &mail {
        // The raw message and its decoded headers and body (a transfer encoding could
        // hide a secret from a grep of the raw text).
        written.push(("email".into(), m.to_string()));
    }
    // Everything else the run left in the state directory too.
    for f in files_in(&dir.path().join("state")) {
        written.push((
            f.display().to_string(),
            std::fs::read_to_string(&f).unwrap_or_default(),
        ));
    }
    for (what, text) in &written {
        assert!(
            !text.contains(password),
            "the SMTP password leaked into {what}"
        );
        assert!(
            !text.contains(token),
            "the webhook token leaked into {what}"
        );
    }
    assert_eq!(mail[0]["subject"], "pw ***");
    assert_eq!(
        mail[0]["body"].as_str().unwrap_or_default().trim_end(),
        "token ***; echo said password *** token ***"
    );
    let payload: Value = serde_json::from_str(&got[0].body).expect("JSON");
    assert_eq!(
        payload["text"],
        "token ***; echo said password *** token ***"
    );
}

#[test]
fn starttls_with_login_and_a_private_ca_and_a_loud_failure_without_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = crate::servers::self_signed_cert(dir.path());
    let password = "tls-Pa55";
    let smtp = SmtpServer::start(
        dir.path(),
        SmtpOptions {
            login: Some(("stagehand", password)),
            tls: Some((&cert, &key)),
        },
    );
    let plan_text = |ca: &str| {
        format!(
            r#"version: 1
name: tls
params:
  smtp_port: {{type: integer, required: true}}
secrets:
  smtp_password: {{env: TEST_SMTP_PASSWORD}}
steps:
  - id: mail
    uses: notify
    retry: {{attempts: 3, backoff: 100ms}}
    with:
      required: true
      subject: "over TLS"
      body: "hello"
      email:
        host: 127.0.0.1
        port: "{{{{params.smtp_port}}}}"
        tls: starttls
        {ca}
        username: stagehand
        password: "{{{{secrets.smtp_password}}}}"
        from: backup@example.com
        to: [dba@example.com]
"#
        )
    };
    let sets = [format!("smtp_port={}", smtp.port)];
    let env = [("TEST_SMTP_PASSWORD", password)];
    let plan = write_plan(
        dir.path(),
        "tls",
        &plan_text(&format!("ca_file: \"{}\"", cert.display())),
    );
    let r = run_plan(dir.path(), &plan, &sets, &env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mail = smtp.wait_for(1);
    assert_eq!(mail.len(), 1);
    assert_eq!(
        mail[0]["tls"], true,
        "the session was upgraded with STARTTLS"
    );
    assert_eq!(mail[0]["authenticated"], true, "and logged in over TLS");
    assert_eq!(mail[0]["subject"], "over TLS");

    // Without the CA the certificate is refused: a TLS error is not retried.
    let plan = write_plan(dir.path(), "tls", &plan_text(""));
    let r = run_plan(dir.path(), &plan, &sets, &env);
    assert_eq!(r.code, 1);
    let step = r.step("mail");
    assert_eq!(
        step["attempts"], 1,
        "a certificate problem is not retried: {step}"
    );
    let err = step["error"].as_str().unwrap_or_default();
    assert!(
        err.starts_with(&format!(
            "notification not sent: email: 127.0.0.1:{}: ",
            smtp.port
        )),
        "{err}"
    );
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(
        step["hint"]
            .as_str()
            .unwrap_or_default()
            .starts_with("STARTTLS failed"),
        "{step}"
    );
    assert_eq!(smtp.messages().len(), 1, "nothing more was delivered");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_backup_mails_its_size_lsns_and_lock_hold_times() {
    let server = server_with(
        "notify-backup",
        &[
            "CREATE DATABASE app",
            "CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB",
            "INSERT INTO app.t VALUES (1, 'one'), (2, 'two')",
        ],
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::open(dir.path());
    // The shipped backup plan with a notify step at its end.
    let shipped = std::fs::read_to_string(crate::cli::repo_root().join("plans/full-backup.yaml"))
        .expect("plan");
    let plan_text = format!(
        "{}\n  - id: tell\n    uses: notify\n    needs: [prepare]\n    when: always\n    with:\n      email: {{host: 127.0.0.1, port: {}, tls: none, from: backup@example.com, to: [dba@example.com]}}\n",
        shipped.trim_end(),
        smtp.port
    );
    let plan = write_plan(dir.path(), "backup-notify", &plan_text);
    let sets = backup_params(
        &server,
        &dir.path().join("backup"),
        &["user=root", "prepare=false"],
    );
    let r = run_plan(dir.path(), &plan, &sets, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.step("tell")["status"], "succeeded");
    let mail = smtp.wait_for(1);
    assert_eq!(mail.len(), 1);
    let body = mail[0]["body"]
        .as_str()
        .unwrap_or_default()
        .replace("\r\n", "\n");
    eprintln!("the email of a real backup:\n{body}");
    let seal = &r.step("seal")["outputs"];
    let redo = &r.step("redo")["outputs"];
    let bytes = seal["bytes"].as_u64().unwrap_or_default();
    let expected = [
        format!(
            "Backup size: {} ({bytes} bytes) in {} files",
            bytesize_iec(bytes),
            seal["files"]
        ),
        format!("Consistent at LSN: {}", seal["commit_lsn"]),
        format!(
            "Redo log copied: LSN {} to {}",
            redo["from_lsn"], redo["to_lsn"]
        ),
    ];
    for line in &expected {
        assert!(body.lines().any(|l| l == line), "`{line}` in:\n{body}");
    }
    let holds = body
        .lines()
        .find(|l| l.starts_with("Lock hold times: "))
        .unwrap_or_else(|| panic!("lock hold times in:\n{body}"));
    for stage in ["block_commit", "block_ddl", "flush", "start"] {
        assert!(holds.contains(&format!("{stage} ")), "{stage} in `{holds}`");
    }
    assert!(body.contains("Plan full-backup on "));
    assert!(body.contains(": succeeded after "));
    assert!(
        body.contains("\n  prepare              skipped\n"),
        "{body}"
    );
    assert!(
        body.contains("\n  tell                 running\n"),
        "{body}"
    );
}

/// bytesize's IEC text, as the default body shows sizes.
fn bytesize_iec(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

#[test]
fn the_documented_example_plans_validate() {
    let plans = crate::cli::plans_in("docs/examples");
    assert!(!plans.is_empty());
    for plan in plans {
        let file = crate::cli::relative(&plan);
        let r = crate::cli::stagehand(&["validate", &file]);
        assert_eq!(r.code, 0, "{file}: {}", r.stderr);
        let dry =
            crate::cli::stagehand(&["run", &file, "--dry-run", "--set", "target=/backups/b1"]);
        assert_eq!(dry.code, 0, "{file}: {}", dry.stderr);
    }
}
