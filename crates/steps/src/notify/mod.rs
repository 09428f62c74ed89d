//! `notify`: says how the run went, by email (SMTP: STARTTLS, implicit TLS or plain;
//! login; several recipients) and/or a webhook (JSON POST, or a Slack-compatible
//! message). Subject and body are templates over the run so far (`{{report.status}}`,
//! `{{report.failed_step.error}}`, `{{report.steps.ID.outputs.KEY}}` …), rendered by the
//! engine like any `with` value; without them the step writes a summary of the run with
//! the backup's figures (size, LSNs, GTID, lock hold times) found in the upstream steps.
//!
//! A notification that cannot be sent is retried when the cause is transient (4xx SMTP
//! replies, 5xx/408/429 HTTP, connection trouble, timeouts) and then reported as a
//! failed step that does not fail the run, unless `required: true`.

use crate::outputs::{CopyOutput, RedoTailOutput, SealOutput, StageLocksOutput};
use async_trait::async_trait;
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use stagehand_engine::report::{RunStatus, StepStatus};
use stagehand_engine::step::RunSnapshot;
use stagehand_engine::{ConfigError, StepContext, StepError, StepOutput, TypedStep};
use stagehand_host::http;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Email subject and webhook title, a template over the run so far:
    /// `{{report.plan}}`, `{{report.status}}`, `{{report.host}}`, `{{report.duration}}`,
    /// `{{report.failed_step.id}}` … Default: `[stagehand] PLAN STATUS on HOST`.
    pub subject: Option<String>,
    /// The message text, a template like `subject`. Default: a summary of the run
    /// (status, duration, the failed step and its error, backup size, LSNs, GTID, lock
    /// hold times, every step's status and time).
    pub body: Option<String>,
    /// Send an email.
    pub email: Option<EmailConfig>,
    /// POST to a webhook.
    pub webhook: Option<WebhookConfig>,
    /// When true, a notification that cannot be sent fails the run. By default the step
    /// is reported as failed and the run keeps its status.
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// SMTP server host name (also the name its TLS certificate must carry).
    pub host: String,
    /// Default: 587 with `starttls`, 465 with `tls`, 25 with `none`.
    pub port: Option<u16>,
    /// `starttls` (default: plain connection upgraded to TLS, refused without it), `tls`
    /// (TLS from the first byte, "SMTPS"), `none` (no encryption: only for a relay on
    /// this machine).
    #[serde(default)]
    pub tls: SmtpTls,
    /// PEM file of a CA (or self-signed certificate) to trust besides the usual roots.
    pub ca_file: Option<String>,
    /// Login (AUTH PLAIN/LOGIN); give the password from a secret.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Sender: `backup@example.com` or `Backups <backup@example.com>`.
    pub from: String,
    /// Recipients (at least one).
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    /// Longest wait for the server at each exchange.
    #[serde(
        default = "default_smtp_timeout",
        with = "stagehand_engine::model::duration_text"
    )]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    #[default]
    Starttls,
    Tls,
    None,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST (http or https). Slack-style URLs hold a token: give them from a
    /// secret.
    pub url: String,
    /// `json` (default): subject, text, status and the whole run report; `slack`: a
    /// Slack-compatible message (`text` and one coloured attachment), which Mattermost,
    /// Rocket.Chat and Discord's `/slack` endpoints accept too.
    #[serde(default)]
    pub format: WebhookFormat,
    /// Extra headers, e.g. `Authorization: "Bearer {{secrets.hook_token}}"`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Longest wait for the whole request.
    #[serde(
        default = "default_webhook_timeout",
        with = "stagehand_engine::model::duration_text"
    )]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

fn default_smtp_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
}

impl SmtpTls {
    fn default_port(self) -> u16 {
        match self {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        }
    }
    fn label(self) -> &'static str {
        match self {
            SmtpTls::Starttls => "STARTTLS",
            SmtpTls::Tls => "TLS",
            SmtpTls::None => "no encryption",
        }
    }
}

/// What `notify` publishes.
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct NotifyOutput {
    /// the subject that was sent
    pub subject: String,
    /// what was delivered: `email`, `webhook`
    pub channels: Vec<String>,
    /// email recipients (to and cc)
    pub recipients: u64,
    /// the webhook's HTTP status (0 without a webhook)
    pub webhook_status: u64,
}

pub struct Notify;

#[async_trait]
impl TypedStep for Notify {
    type Config = NotifyConfig;
    type Output = NotifyOutput;
    const NAME: &'static str = "notify";
    const SUMMARY: &'static str =
        "Sends how the run went by email (SMTP) and/or webhook (JSON, Slack-compatible)";

    fn check(cfg: &NotifyConfig) -> Result<(), ConfigError> {
        if cfg.email.is_none() && cfg.webhook.is_none() {
            return Err(config_error(
                "",
                "give `email`, `webhook` or both",
                Some("email: {host: smtp.example.com, from: backup@example.com, to: [dba@example.com]}"),
            ));
        }
        if let Some(e) = &cfg.email {
            if e.to.is_empty() {
                return Err(config_error("email.to", "`to` is empty", None));
            }
            // Values from secrets and outputs are samples while a plan is validated
            // (`secret`, ``) and placeholders in the dry-run (`<secrets.to>`): only what
            // looks like an address is checked here, the rest when the step runs.
            let addresses = std::iter::once(("email.from".to_string(), &e.from))
                .chain(
                    e.to.iter()
                        .enumerate()
                        .map(|(i, a)| (format!("email.to[{i}]"), a)),
                )
                .chain(
                    e.cc.iter()
                        .enumerate()
                        .map(|(i, a)| (format!("email.cc[{i}]"), a)),
                );
            for (path, a) in addresses {
                if a.contains('@') {
                    if let Err(e) = a.parse::<Mailbox>() {
                        return Err(config_error(
                            &path,
                            &format!("`{a}` is not an email address: {e}"),
                            None,
                        ));
                    }
                }
            }
            if e.password.is_some() && e.username.is_none() {
                return Err(config_error(
                    "email.password",
                    "`password` without `username`",
                    None,
                ));
            }
        }
        if let Some(w) = &cfg.webhook {
            let u = &w.url;
            // As for addresses: a sample or a placeholder has no scheme.
            let http = u.starts_with("http://") || u.starts_with("https://");
            if u.contains("://") && !http {
                return Err(config_error(
                    "webhook.url",
                    "the webhook URL must start with http:// or https://",
                    None,
                ));
            }
        }
        Ok(())
    }

    fn describe(cfg: &NotifyConfig) -> String {
        let mut what = Vec::new();
        if let Some(e) = &cfg.email {
            let mut rcpt: Vec<&str> = e.to.iter().map(String::as_str).collect();
            rcpt.extend(e.cc.iter().map(String::as_str));
            let login = e
                .username
                .as_ref()
                .map(|u| format!(", login as `{u}`"))
                .unwrap_or_default();
            what.push(format!(
                "emails {} through {}:{} ({}{login})",
                rcpt.join(", "),
                e.host,
                e.port.unwrap_or(e.tls.default_port()),
                e.tls.label()
            ));
        }
        if let Some(w) = &cfg.webhook {
            let kind = match w.format {
                WebhookFormat::Json => "the run report as JSON",
                WebhookFormat::Slack => "a Slack-compatible message",
            };
            what.push(format!("posts {kind} to {}", shown_url(&w.url)));
        }
        let fails = if cfg.required {
            "a failure to send fails the run"
        } else {
            "a failure to send does not fail the run"
        };
        format!("{}; {fails}", what.join(" and "))
    }

    async fn run(cfg: &NotifyConfig, ctx: &StepContext) -> Result<NotifyOutput, StepError> {
        let facts = Facts::gather(ctx);
        let subject = match &cfg.subject {
            Some(s) => one_line(s),
            None => default_subject(&ctx.run),
        };
        let subject = ctx.redact(&subject);
        let body = match &cfg.body {
            Some(b) => b.clone(),
            None => default_body(&ctx.run, &facts),
        };
        let body = ctx.redact(&body);

        let mut channels = Vec::new();
        let mut errors = Vec::new();
        let mut retryable = false;
        let mut hint = None;
        let mut recipients = 0;
        let mut webhook_status = 0;
        if let Some(email) = &cfg.email {
            recipients = email.to.len() + email.cc.len();
            if delivered_before(ctx, "email") {
                channels.push("email");
            } else {
                let sent = tokio::select! {
                    biased;
                    _ = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
                    r = send_email(email, &subject, &body) => r,
                };
                match sent {
                    Ok(()) => {
                        mark_delivered(ctx, "email");
                        channels.push("email");
                        tracing::info!(step = %ctx.step_id, recipients, "notification emailed");
                    }
                    Err(e) => {
                        retryable |= e.retryable;
                        hint = hint.or(e.hint);
                        errors.push(format!("email: {}", e.message));
                    }
                }
            }
        }
        if let Some(hook) = &cfg.webhook {
            if delivered_before(ctx, "webhook") {
                channels.push("webhook");
            } else {
                let payload = webhook_payload(hook.format, &subject, &body, &ctx.run, &facts);
                // Serialized, then redacted as the journal is.
                let payload = ctx.redact(&payload.to_string());
                let sent = tokio::select! {
                    biased;
                    _ = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
                    r = post_webhook(hook, payload) => r,
                };
                match sent {
                    Ok(status) => {
                        webhook_status = status;
                        mark_delivered(ctx, "webhook");
                        channels.push("webhook");
                        tracing::info!(step = %ctx.step_id, status, "notification posted");
                    }
                    Err(e) => {
                        retryable |= e.retryable;
                        hint = hint.or(e.hint);
                        errors.push(format!("webhook: {}", e.message));
                    }
                }
            }
        }
        if !errors.is_empty() {
            let message = ctx.redact(&format!(
                "notification not sent: {}{}",
                errors.join("; "),
                if channels.is_empty() {
                    String::new()
                } else {
                    format!(" ({} sent)", channels.join(", "))
                }
            ));
            let mut err = if retryable {
                StepError::retryable(message)
            } else {
                StepError::fatal(message)
            };
            err.hint = hint;
            if !cfg.required {
                err = err.advisory();
                let h = err.hint.take();
                err.hint = Some(match h {
                    Some(h) => format!("{h}; this does not fail the run (`required: true` would)"),
                    None => "this does not fail the run (`required: true` would)".into(),
                });
            }
            return Err(err);
        }
        Ok(NotifyOutput {
            subject,
            channels: channels.into_iter().map(String::from).collect(),
            recipients: recipients as u64,
            webhook_status: webhook_status.into(),
        })
    }
}

fn config_error(path: &str, message: &str, hint: Option<&str>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
        hint: hint.map(String::from),
    }
}

/// A URL as the dry-run and messages show it: scheme, host and port; the path only
/// when it is a placeholder (`<secrets.hook>`).
fn shown_url(url: &str) -> String {
    if url.starts_with('<') || !url.contains("://") {
        url.to_string()
    } else {
        let o = http::origin(url);
        if url.len() > o.len() {
            format!("{o}/…")
        } else {
            o
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Channels already delivered by an earlier attempt of the same step, so a retry for
/// the webhook does not send the email again.
fn delivered() -> &'static Mutex<HashSet<String>> {
    static SENT: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    SENT.get_or_init(Default::default)
}

fn delivery_key(ctx: &StepContext, channel: &str) -> String {
    format!("{}/{}/{channel}", ctx.run_id, ctx.step_id)
}

fn delivered_before(ctx: &StepContext, channel: &str) -> bool {
    delivered()
        .lock()
        .map(|s| s.contains(&delivery_key(ctx, channel)))
        .unwrap_or(false)
}

fn mark_delivered(ctx: &StepContext, channel: &str) {
    if let Ok(mut s) = delivered().lock() {
        s.insert(delivery_key(ctx, channel));
    }
}

fn status_word(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "FAILED",
        RunStatus::Interrupted => "INTERRUPTED",
    }
}

pub fn default_subject(run: &RunSnapshot) -> String {
    format!(
        "[stagehand] {} {} on {}",
        run.plan,
        status_word(run.status),
        run.host
    )
}

/// The backup's figures, from the upstream steps that recorded them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Facts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_lsn: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redo_from_lsn: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redo_to_lsn: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binlog: Option<String>,
    /// Longest hold of each backup stage, in ms.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub holds_ms: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_blocked_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ddl_blocked_ms: Option<f64>,
}

impl Facts {
    pub fn gather(ctx: &StepContext) -> Self {
        Self::from_upstream(&Published {
            seals: read_upstream(ctx),
            copies: read_upstream(ctx),
            redo: read_upstream(ctx),
            locks: read_upstream(ctx),
        })
    }

    /// From the outputs of the finished steps upstream. Zeros and empty texts are what a
    /// step that did not get that far publishes: they count as unknown.
    fn from_upstream(p: &Published) -> Self {
        let known = |v: u64| Some(v).filter(|v| *v > 0);
        let text = |v: &str| Some(v.to_string()).filter(|v| !v.is_empty());
        let mut f = Facts {
            bytes: p.seals.iter().rev().find_map(|s| known(s.bytes)),
            files: p.seals.iter().rev().find_map(|s| known(s.files)),
            commit_lsn: p
                .seals
                .iter()
                .rev()
                .find_map(|s| known(s.commit_lsn))
                .or_else(|| p.locks.iter().find_map(|l| known(l.lsn))),
            redo_from_lsn: p.redo.iter().rev().find_map(|r| known(r.from_lsn)),
            redo_to_lsn: p.redo.iter().rev().find_map(|r| known(r.to_lsn)),
            gtid: p
                .seals
                .iter()
                .rev()
                .find_map(|s| text(&s.gtid_binlog_pos))
                .or_else(|| p.locks.iter().find_map(|l| text(&l.gtid_binlog_pos))),
            binlog: p
                .locks
                .iter()
                .rev()
                .find(|l| !l.binlog_file.is_empty() && l.binlog_pos > 0)
                .map(|l| format!("{}:{}", l.binlog_file, l.binlog_pos)),
            ..Facts::default()
        };
        for (stage, ms) in p.locks.iter().flat_map(|l| l.holds_ms.iter()) {
            if let Some(ms) = ms.as_f64() {
                let e = f.holds_ms.entry(stage.clone()).or_insert(0.0);
                *e = e.max(ms);
            }
        }
        let blocked = p.seals.iter().map(|s| s.commit_blocked_ms);
        let blocked = blocked.chain(p.locks.iter().map(|l| l.commit_blocked_ms));
        f.commit_blocked_ms = blocked.filter(|v| *v > 0.0).reduce(f64::max);
        let ddl = p.seals.iter().map(|s| s.ddl_blocked_ms);
        let ddl = ddl.chain(p.locks.iter().map(|l| l.ddl_blocked_ms));
        f.ddl_blocked_ms = ddl.filter(|v| *v > 0.0).reduce(f64::max);
        if f.bytes.is_none() {
            let copied: u64 = p.copies.iter().map(|c| c.bytes).sum();
            let copied_files: u64 = p.copies.iter().map(|c| c.files).sum();
            f.bytes = known(copied);
            f.files = f.bytes.and(known(copied_files));
        }
        f
    }
}

/// The outputs notify reads off the upstream steps, in plan order.
#[derive(Default)]
struct Published {
    seals: Vec<SealOutput>,
    copies: Vec<CopyOutput>,
    redo: Vec<RedoTailOutput>,
    locks: Vec<StageLocksOutput>,
}

/// A notification still goes out when an upstream step's outputs cannot be read: it
/// then lacks that step's figures, and the log says why.
fn read_upstream<O: StepOutput>(ctx: &StepContext) -> Vec<O> {
    match ctx.upstream_outputs::<O>() {
        Ok(outputs) => outputs.into_iter().map(|(_, o)| o).collect(),
        Err(e) => {
            tracing::warn!(error = %e.message, "the notification leaves out these figures");
            Vec::new()
        }
    }
}

fn ms_text(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

/// The summary sent when the plan gives no `body`.
pub fn default_body(run: &RunSnapshot, facts: &Facts) -> String {
    let mut out = format!(
        "Plan {} on {}: {} after {}.\nRun {} (started {}, plan file {}).\n",
        run.plan,
        run.host,
        status_word(run.status),
        run.duration,
        run.id,
        run.started_at,
        run.plan_file
    );
    for f in &run.failed_steps {
        out.push_str(&format!("\nFailed step: {} ({})\n", f.id, f.uses));
        if let Some(e) = &f.error {
            out.push_str(&format!("  error: {e}\n"));
        }
        if let Some(h) = &f.hint {
            out.push_str(&format!("  hint: {h}\n"));
        }
    }
    let mut lines = Vec::new();
    if let Some(b) = facts.bytes {
        let files = facts
            .files
            .map(|n| format!(" in {n} files"))
            .unwrap_or_default();
        lines.push(format!(
            "Backup size: {} ({b} bytes){files}",
            bytesize::ByteSize::b(b).display().iec()
        ));
    }
    if let Some(l) = facts.commit_lsn {
        lines.push(format!("Consistent at LSN: {l}"));
    }
    if let (Some(a), Some(b)) = (facts.redo_from_lsn, facts.redo_to_lsn) {
        lines.push(format!("Redo log copied: LSN {a} to {b}"));
    }
    if let Some(g) = &facts.gtid {
        lines.push(format!("GTID position: {g}"));
    }
    if let Some(b) = &facts.binlog {
        lines.push(format!("Binlog position: {b}"));
    }
    if !facts.holds_ms.is_empty() {
        let holds: Vec<String> = facts
            .holds_ms
            .iter()
            .map(|(s, ms)| format!("{s} {}", ms_text(*ms)))
            .collect();
        lines.push(format!("Lock hold times: {}", holds.join(", ")));
    }
    if let Some(ms) = facts.commit_blocked_ms {
        lines.push(format!("Commits blocked for: {}", ms_text(ms)));
    }
    if let Some(ms) = facts.ddl_blocked_ms {
        lines.push(format!("DDL blocked for: {}", ms_text(ms)));
    }
    if !lines.is_empty() {
        out.push('\n');
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out.push_str("\nSteps:\n");
    for (id, s) in &run.steps {
        let status = s
            .get("status")
            .and_then(|v| serde_json::from_value::<StepStatus>(v.clone()).ok())
            .map(StepStatus::name)
            .unwrap_or("?");
        let took = s
            .get("duration_ms")
            .and_then(Value::as_u64)
            .map(|ms| format!(" {}", ms_text(ms as f64)))
            .unwrap_or_default();
        out.push_str(&format!("  {id:<20} {status}{took}\n"));
    }
    out
}

/// The webhook body: the whole report as JSON, or a Slack-compatible message.
pub fn webhook_payload(
    format: WebhookFormat,
    subject: &str,
    body: &str,
    run: &RunSnapshot,
    facts: &Facts,
) -> Value {
    match format {
        WebhookFormat::Json => json!({
            "subject": subject,
            "text": body,
            "plan": run.plan,
            "run_id": run.id,
            "host": run.host,
            "status": run.status,
            "duration_ms": run.duration_ms,
            "failed_step": run.failed_step.as_ref().map(|f| json!({"id": f.id, "uses": f.uses, "error": f.error, "hint": f.hint})),
            "backup": facts,
            "report": run,
        }),
        WebhookFormat::Slack => {
            let color = match run.status {
                RunStatus::Succeeded => "good",
                RunStatus::Failed => "danger",
                RunStatus::Interrupted => "warning",
            };
            let mut attachment = Map::new();
            attachment.insert("color".into(), json!(color));
            attachment.insert("text".into(), json!(body));
            attachment.insert(
                "footer".into(),
                json!(format!("stagehand · run {}", run.id)),
            );
            json!({"text": subject, "attachments": [attachment]})
        }
    }
}

fn mailbox(field: &str, text: &str) -> Result<Mailbox, StepError> {
    text.parse::<Mailbox>()
        .map_err(|e| StepError::fatal(format!("`{field}` is not an email address (`{text}`): {e}")))
}

async fn send_email(cfg: &EmailConfig, subject: &str, body: &str) -> Result<(), StepError> {
    let mut msg = Message::builder()
        .from(mailbox("from", &cfg.from)?)
        .subject(subject);
    for to in &cfg.to {
        msg = msg.to(mailbox("to", to)?);
    }
    for cc in &cfg.cc {
        msg = msg.cc(mailbox("cc", cc)?);
    }
    let msg = msg
        .header(ContentType::TEXT_PLAIN)
        .body(body.to_string())
        .map_err(|e| StepError::fatal(format!("cannot build the email: {e}")))?;

    let port = cfg.port.unwrap_or(cfg.tls.default_port());
    let tls = match cfg.tls {
        SmtpTls::None => Tls::None,
        mode => {
            let mut params = TlsParameters::builder(cfg.host.clone());
            if let Some(path) = &cfg.ca_file {
                let pem = tokio::fs::read(path).await.map_err(|e| {
                    StepError::fatal(format!("cannot read the CA file {path}: {e}"))
                })?;
                let cert = Certificate::from_pem(&pem).map_err(|e| {
                    StepError::fatal(format!("the CA file {path} is not a PEM certificate: {e}"))
                })?;
                params = params.add_root_certificate(cert);
            }
            let params = params
                .build_rustls()
                .map_err(|e| StepError::fatal(format!("TLS setup: {e}")))?;
            if mode == SmtpTls::Tls {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            }
        }
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.as_str())
        .port(port)
        .tls(tls)
        .timeout(Some(cfg.timeout));
    if let Some(user) = &cfg.username {
        transport = transport.credentials(Credentials::new(
            user.clone(),
            cfg.password.clone().unwrap_or_default(),
        ));
    }
    let transport = transport.build();
    let server = format!("{}:{port}", cfg.host);
    transport
        .send(msg)
        .await
        .map(|_| ())
        .map_err(|e| smtp_error(&server, cfg.tls, &e))
}

/// Transient SMTP replies (4xx), timeouts and connection trouble are retried; 5xx
/// replies, TLS (a refused certificate) and protocol errors are not.
fn smtp_error(server: &str, tls: SmtpTls, e: &lettre::transport::smtp::Error) -> StepError {
    let message = format!("{server}: {}", error_chain(e));
    if e.is_permanent() {
        let code = e.status().map(|c| c.to_string()).unwrap_or_default();
        let hint = if code.starts_with("53") {
            "the server refused the login: check `username` and the password secret"
        } else {
            "the server refused the message: check `from`, `to` and what the server allows"
        };
        StepError::fatal(message).with_hint(hint)
    } else if e.is_tls() || tls_failure(e) {
        StepError::fatal(message).with_hint(match tls {
            SmtpTls::Starttls => "STARTTLS failed: check the server's certificate (`ca_file` for a private CA) or use `tls: tls` for port 465",
            _ => "TLS failed: check the server's certificate (`ca_file` for a private CA) and that the port speaks TLS",
        })
    } else if e.is_client() || e.is_response() {
        StepError::fatal(message)
    } else {
        StepError::retryable(message)
    }
}

/// A TLS handshake failure (bad certificate, no common protocol) surfaces as an I/O
/// error of kind InvalidData under a connection error; refused or reset connections
/// and timeouts have other kinds.
fn tls_failure(e: &dyn std::error::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::InvalidData;
        }
        source = s.source();
    }
    false
}

/// An error and its sources as one line, without the repeats some layers add
/// (`Connection error: Connection error: …`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    let joined = parts.join(": ");
    let mut out: Vec<&str> = Vec::new();
    for seg in joined.split(": ") {
        if out.last() != Some(&seg) {
            out.push(seg);
        }
    }
    out.join(": ")
}

/// POSTs the payload; returns the HTTP status when it is a 2xx.
async fn post_webhook(cfg: &WebhookConfig, payload: String) -> Result<u16, StepError> {
    let url = cfg.url.clone();
    let headers: Vec<(String, String)> = cfg
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let timeout = cfg.timeout;
    let shown = shown_url(&cfg.url);
    let sent = tokio::task::spawn_blocking(move || {
        http::send(
            http::Method::Post,
            &url,
            "application/json",
            &headers,
            payload.as_bytes(),
            timeout,
        )
    })
    .await
    .map_err(|e| StepError::fatal(format!("the webhook task failed: {e}")))?;
    match sent {
        Ok(r) if r.is_success() => Ok(r.status),
        Ok(r) => {
            let body = one_line(&r.body);
            let body: String = body.chars().take(200).collect();
            let message = format!("{shown} answered HTTP {}: {body}", r.status);
            Err(if r.is_transient() {
                StepError::retryable(message)
            } else {
                StepError::fatal(message).with_hint(
                    "check the webhook URL and its token; the server refused the request",
                )
            })
        }
        Err(e) if e.is_transient() => Err(StepError::retryable(e.to_string())),
        Err(e) => Err(StepError::fatal(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_come_from_seal_locks_and_redo() {
        let seal = SealOutput {
            bytes: 1048576,
            files: 12,
            commit_lsn: 4242,
            gtid_binlog_pos: "0-1-7".into(),
            commit_blocked_ms: 35.5,
            ddl_blocked_ms: 2135.5,
            ..SealOutput::default()
        };
        let holds = json!({"block_ddl": 2100.0, "block_commit": 35.5});
        let locks = StageLocksOutput {
            holds_ms: holds.as_object().cloned().unwrap_or_default(),
            lsn: 4242,
            binlog_file: "bin.000001".into(),
            binlog_pos: 328,
            gtid_binlog_pos: "0-1-7".into(),
            ..StageLocksOutput::default()
        };
        let redo = RedoTailOutput {
            from_lsn: 4000,
            to_lsn: 4242,
            ..RedoTailOutput::default()
        };
        let f = Facts::from_upstream(&Published {
            seals: vec![seal],
            redo: vec![redo],
            locks: vec![locks],
            ..Published::default()
        });
        assert_eq!(f.bytes, Some(1048576));
        assert_eq!(f.files, Some(12));
        assert_eq!(f.commit_lsn, Some(4242));
        assert_eq!(f.gtid.as_deref(), Some("0-1-7"));
        assert_eq!(f.binlog.as_deref(), Some("bin.000001:328"));
        assert_eq!(f.redo_from_lsn, Some(4000));
        assert_eq!(f.holds_ms.get("block_ddl"), Some(&2100.0));
        assert_eq!(f.commit_blocked_ms, Some(35.5));
        assert_eq!(f.ddl_blocked_ms, Some(2135.5));
    }

    #[test]
    fn config_needs_a_channel_and_valid_addresses() {
        let cfg = |v: Value| serde_json::from_value::<NotifyConfig>(v).map_err(|e| e.to_string());
        let none = cfg(json!({})).map(|c| Notify::check(&c).is_err());
        assert_eq!(none, Ok(true));
        let bad = cfg(json!({"email": {"host": "h", "from": "two@at@signs", "to": ["a@b.c"]}}))
            .map(|c| Notify::check(&c).map_err(|e| e.path));
        assert_eq!(bad, Ok(Err("email.from".to_string())));
        let ok = cfg(json!({"email": {"host": "h", "from": "Backups <b@x.org>", "to": ["a@b.c", "secret", ""]}, "webhook": {"url": "https://x/y"}}))
            .map(|c| Notify::check(&c).is_ok());
        assert_eq!(ok, Ok(true));
    }

    #[test]
    fn shown_urls_hide_tokens() {
        assert_eq!(
            shown_url("https://hooks.slack.com/services/T/B/tok"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(shown_url("<secrets.hook>"), "<secrets.hook>");
    }
}
