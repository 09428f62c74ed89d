//! `stagehand backups list|show REPO`: what a repository holds, read from the backups'
//! manifests.

use super::{EXIT_FAILED, EXIT_OK};
use clap::{Args as ClapArgs, Subcommand};
use serde_json::json;
use stagehand_backup::manifest::Manifest;
use stagehand_repo::{BackupEntry, RepoConfig, Repository};

/// Where the repository is: its URL plus the S3 settings a plan would give. Keys come
/// from STAGEHAND_S3_ACCESS_KEY_ID / STAGEHAND_S3_SECRET_ACCESS_KEY (as the shipped
/// plans' secrets) or the usual AWS chain (AWS_ACCESS_KEY_ID, profiles, roles), never
/// from flags (they would show in `ps`).
#[derive(ClapArgs, Debug, Clone)]
pub struct RepoArgs {
    /// `/path`, `file:///path` or `s3://bucket/prefix`.
    pub repository: String,
    /// S3 endpoint of a non-AWS service (MinIO, Ceph RGW, Garage…).
    #[arg(long, env = "STAGEHAND_S3_ENDPOINT")]
    pub endpoint: Option<String>,
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// Path-style addressing, which most self-hosted S3 services need.
    #[arg(long)]
    pub path_style: bool,
}

impl RepoArgs {
    pub(super) fn config(&self) -> RepoConfig {
        let mut cfg = RepoConfig::at(&self.repository);
        cfg.endpoint = self.endpoint.clone();
        cfg.region = self.region.clone();
        cfg.path_style = self.path_style;
        // The same variables the shipped plans read their S3 secrets from; else the
        // AWS chain.
        cfg.access_key_id = std::env::var("STAGEHAND_S3_ACCESS_KEY_ID").ok();
        cfg.secret_access_key = std::env::var("STAGEHAND_S3_SECRET_ACCESS_KEY").ok();
        cfg
    }
}

#[derive(Subcommand, Debug)]
pub enum BackupsCommand {
    /// List the backups of a repository, oldest first (incomplete ones say why).
    List {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show one backup's manifest: files, LSNs, GTID, lock hold times.
    Show {
        #[command(flatten)]
        repo: RepoArgs,
        /// The backup's id, or `latest`.
        id: String,
        /// The manifest as stored.
        #[arg(long)]
        json: bool,
    },
}

pub fn dispatch(command: BackupsCommand) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        match command {
            BackupsCommand::List { repo, json } => list(&repo.config(), json).await,
            BackupsCommand::Show { repo, id, json } => show(&repo.config(), &id, json).await,
        }
    })
}

async fn list(cfg: &RepoConfig, as_json: bool) -> anyhow::Result<i32> {
    let repo = match Repository::open(cfg).await {
        Ok(r) => r,
        Err(e) => return Ok(fail(&e.message)),
    };
    let backups = match repo.backups().await {
        Ok(b) => b,
        Err(e) => return Ok(fail(&e.message)),
    };
    let archive = match super::binlogs::Archive::read_from(&repo).await {
        Ok(a) => a,
        Err(e) => return Ok(fail(&e)),
    };
    if as_json {
        let rows: Vec<_> = backups
            .iter()
            .map(|b| {
                let mut row = entry_json(b);
                if let (Some(m), serde_json::Value::Object(o)) = (&b.manifest, &mut row) {
                    let reach = archive.reach(&m.binlog.gtid_binlog_pos);
                    o.insert("pitr".into(), reach.to_json());
                }
                row
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(EXIT_OK);
    }
    if backups.is_empty() {
        outln!("no backups in {}", repo.url());
        return Ok(EXIT_OK);
    }
    outln!(
        "{:<18} {:<5} {:<20} {:>10} {:>24} {:<18} {:<8} {:<20} PLAN",
        "ID",
        "TYPE",
        "STARTED",
        "SIZE",
        "LSN (checkpoint→commit)",
        "GTID",
        "VERIFIED",
        "PITR UP TO"
    );
    for b in &backups {
        let reach = b
            .manifest
            .as_ref()
            .map(|m| archive.reach(&m.binlog.gtid_binlog_pos).shown())
            .unwrap_or_default();
        outln!("{}", entry_line(b, &reach));
    }
    Ok(EXIT_OK)
}

fn entry_line(b: &BackupEntry, pitr: &str) -> String {
    let size = bytesize::ByteSize(b.stored_bytes).to_string();
    match &b.manifest {
        Some(m) => format!(
            "{:<18} {:<5} {:<20} {:>10} {:>24} {:<18} {:<8} {:<20} {}",
            b.id,
            m.backup_type,
            short_time(&m.started_at),
            size,
            format!("{}→{}", m.lsn.checkpoint, m.lsn.commit),
            m.binlog.gtid_binlog_pos,
            verified(m),
            pitr,
            m.plan
        ),
        None => format!(
            "{:<18} {:<5} {:<20} {:>10} INCOMPLETE: {}",
            b.id,
            "-",
            "-",
            size,
            b.problem.as_deref().unwrap_or("no manifest")
        ),
    }
}

fn short_time(rfc3339: &str) -> String {
    chrono_like(rfc3339).unwrap_or_else(|| rfc3339.to_string())
}

/// `2026-11-21T10:15:00.123+00:00` → `2026-11-21 10:15:00Z`.
fn chrono_like(t: &str) -> Option<String> {
    let (date, rest) = t.split_once('T')?;
    Some(format!("{date} {}Z", rest.get(..8)?))
}

fn verified(m: &Manifest) -> String {
    m.verified
        .as_ref()
        .map(|v| v.depth.clone())
        .unwrap_or_else(|| "no".into())
}

fn entry_json(b: &BackupEntry) -> serde_json::Value {
    match &b.manifest {
        Some(m) => json!({
            "id": b.id,
            "complete": true,
            "type": m.backup_type,
            "started_at": m.started_at,
            "finished_at": m.finished_at,
            "stored_bytes": b.stored_bytes,
            "data_bytes": m.data_bytes(),
            "lsn": m.lsn,
            "gtid_binlog_pos": m.binlog.gtid_binlog_pos,
            "binlog": {"file": m.binlog.file, "position": m.binlog.position},
            "verified": m.verified,
            "prepared": m.prepared.is_some(),
            "plan": m.plan,
            "host": m.host,
            "run_id": m.run_id,
            "base": m.base,
            "encryption": m.encryption,
        }),
        None => json!({
            "id": b.id,
            "complete": false,
            "stored_bytes": b.stored_bytes,
            "problem": b.problem,
        }),
    }
}

async fn show(cfg: &RepoConfig, id: &str, as_json: bool) -> anyhow::Result<i32> {
    let repo = match Repository::open(cfg).await {
        Ok(r) => r,
        Err(e) => return Ok(fail(&e.message)),
    };
    let id = match stagehand_repo::checks::resolve_id(&repo, id).await {
        Ok(id) => id,
        Err(e) => return Ok(fail(&e.message)),
    };
    let m = match repo.manifest(&id).await {
        Ok(m) => m,
        Err(e) => return Ok(fail(&e.message)),
    };
    if as_json {
        outln!("{}", String::from_utf8_lossy(&m.to_vec()));
        return Ok(EXIT_OK);
    }
    out!("{}", describe_manifest(&id, repo.url(), &m));
    Ok(EXIT_OK)
}

/// The manifest for people.
pub fn describe_manifest(id: &str, url: &str, m: &Manifest) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: String| s.push_str(&format!("{k:<18} {v}\n"));
    line("backup", format!("{id} in {url}"));
    line("type", m.backup_type.clone());
    line(
        "plan",
        format!("{} (run {}) on {}", m.plan, m.run_id, m.host),
    );
    line("started", m.started_at.clone());
    line("finished", m.finished_at.clone());
    line("server", m.server.version.clone());
    line(
        "size",
        format!(
            "{} stored, {} of data, {} files",
            bytesize::ByteSize(m.stored_bytes()),
            bytesize::ByteSize(m.data_bytes()),
            m.files.len()
        ),
    );
    line(
        "lsn",
        format!(
            "checkpoint {} → commit {} (redo copied to {})",
            m.lsn.checkpoint, m.lsn.commit, m.lsn.last
        ),
    );
    line("binlog", format!("{}:{}", m.binlog.file, m.binlog.position));
    line("gtid_binlog_pos", m.binlog.gtid_binlog_pos.clone());
    line(
        "locks",
        format!(
            "{} — commits blocked {:.1} ms, DDL blocked {:.1} ms; holds {}",
            m.locks.method,
            m.locks.commit_blocked_ms,
            m.locks.ddl_blocked_ms,
            serde_json::Value::Object(m.locks.holds_ms.clone())
        ),
    );
    line(
        "compressed",
        if m.files.iter().any(|f| f.stored.is_some()) {
            "zstd".into()
        } else {
            "no".into()
        },
    );
    line(
        "encrypted",
        match &m.encryption {
            Some(e) => format!(
                "{} with key {} (restore needs that key)",
                e.scheme, e.key_id
            ),
            None => "no".into(),
        },
    );
    line(
        "prepared",
        m.prepared
            .as_ref()
            .map(|p| format!("by {} at {}", p.engine, p.at))
            .unwrap_or_else(|| "no".into()),
    );
    line("verified", verified(m));
    s
}

pub(super) fn fail(message: &str) -> i32 {
    eprintln!("error: {message}");
    EXIT_FAILED
}
