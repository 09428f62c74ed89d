//! `verify`: checks a backup directory against its manifest — every file's size and
//! SHA-256, every InnoDB page's checksum, the LSNs — and optionally restores it into a
//! scratch directory, starts a server on it, runs CHECK TABLE on every table and counts
//! rows.

use crate::backup_server;
use crate::datadir::FileClass;
use crate::innodb::page::{check_page_at, PageStatus, SpaceFormat};
use crate::manifest::Manifest;
use crate::sandbox::ShutdownMode;
use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use stagehand_engine::{
    output, OutputSpec, OutputType, Outputs, StepContext, StepError, TypedStep,
};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// The backup directory.
    pub target: String,
    /// Start a server on a scratch copy, CHECK TABLE every table and count rows.
    #[serde(default)]
    pub restore: bool,
    /// Where the scratch copy goes (default: the system temporary directory).
    pub scratch: Option<String>,
}

pub struct Verify;

#[async_trait]
impl TypedStep for Verify {
    type Config = VerifyConfig;
    const NAME: &'static str = "verify";
    const SUMMARY: &'static str = "Checks a backup: hashes, InnoDB page checksums, LSNs; optionally a test restore with CHECK TABLE";

    fn outputs() -> Vec<OutputSpec> {
        vec![
            output(
                "files",
                OutputType::Integer,
                "files checked against the manifest",
            ),
            output("bytes", OutputType::Integer, "bytes hashed"),
            output(
                "pages",
                OutputType::Integer,
                "InnoDB pages whose checksum was checked",
            ),
            output(
                "tables",
                OutputType::Integer,
                "tables that passed CHECK TABLE (test restore)",
            ),
            output(
                "rows",
                OutputType::Object,
                "row count per table (test restore)",
            ),
            output(
                "prepared",
                OutputType::Boolean,
                "whether the backup was prepared",
            ),
        ]
    }

    fn describe(cfg: &VerifyConfig) -> String {
        let restore = if cfg.restore {
            "; then restores a scratch copy, starts a server on it, runs CHECK TABLE on every table and counts rows"
        } else {
            ""
        };
        format!("checks every file of {} against its manifest (size, SHA-256), every InnoDB page checksum and the LSNs{restore}", cfg.target)
    }

    async fn run(cfg: &VerifyConfig, ctx: &StepContext) -> Result<Outputs, StepError> {
        let dir = PathBuf::from(&cfg.target);
        let manifest = Manifest::read(&dir).map_err(|e| StepError::fatal(e.to_string()))?;
        let (d, m) = (dir.clone(), manifest.clone());
        let cancel = ctx.cancel.clone();
        let (bytes, pages) = tokio::task::spawn_blocking(move || check_files(&d, &m, &cancel))
            .await
            .map_err(|e| StepError::fatal(format!("verify crashed: {e}")))??;
        check_lsns(&dir, &manifest)?;
        let mut out = Outputs::new();
        out.insert("files".into(), json!(manifest.files.len()));
        out.insert("bytes".into(), json!(bytes));
        out.insert("pages".into(), json!(pages));
        out.insert("prepared".into(), json!(manifest.prepared.is_some()));
        let (tables, rows) = if cfg.restore {
            test_restore(&dir, cfg.scratch.as_deref()).await?
        } else {
            (0, serde_json::Map::new())
        };
        out.insert("tables".into(), json!(tables));
        out.insert("rows".into(), Value::Object(rows));
        tracing::info!(
            files = manifest.files.len(),
            bytes,
            pages,
            tables,
            "backup verified"
        );
        Ok(out)
    }
}

fn check_files(
    dir: &Path,
    m: &Manifest,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(u64, u64), StepError> {
    let system_format = m
        .files
        .iter()
        .find(|f| f.class == FileClass::SystemTablespace)
        .and_then(|f| read_head(&dir.join(&f.path)))
        .and_then(|h| SpaceFormat::from_page0(&h).ok());
    let mut bytes = 0;
    let mut pages = 0;
    let mut bad = Vec::new();
    for f in &m.files {
        if cancel.is_cancelled() {
            return Err(StepError::cancelled());
        }
        let path = dir.join(&f.path);
        let check_pages = f.class.is_innodb();
        match hash_and_check(&path, check_pages, f.class, system_format) {
            Err(e) => bad.push(format!("{}: {e}", f.path)),
            Ok((size, sha, n, corrupt)) => {
                bytes += size;
                pages += n;
                if size != f.size {
                    bad.push(format!("{}: size {size}, manifest says {}", f.path, f.size));
                } else if sha != f.sha256 {
                    bad.push(format!("{}: SHA-256 differs from the manifest", f.path));
                }
                if let Some(p) = corrupt {
                    bad.push(format!("{}: page {p} fails its checksum", f.path));
                }
            }
        }
    }
    for extra in crate::manifest::unlisted_files(dir, &m.files) {
        bad.push(format!("{extra}: not in the manifest"));
    }
    if bad.is_empty() {
        Ok((bytes, pages))
    } else {
        Err(StepError::fatal(format!("{} problem(s) in {}: {}", bad.len(), dir.display(), bad.iter().take(10).cloned().collect::<Vec<_>>().join("; ")))
            .with_hint("the backup is damaged: do not restore it; take a new one (or fetch it again from its repository)"))
    }
}

fn read_head(path: &Path) -> Option<Vec<u8>> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut head = vec![0u8; 65536];
    let n = f.read(&mut head).ok()?;
    head.truncate(n);
    Some(head)
}

/// Hashes a file and, for tablespaces, checks each page; returns the first bad page.
fn hash_and_check(
    path: &Path,
    pages: bool,
    class: FileClass,
    system: Option<SpaceFormat>,
) -> std::io::Result<(u64, String, u64, Option<u64>)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let fmt = if pages {
        match read_head(path).and_then(|head| SpaceFormat::from_page0(&head).ok()) {
            Some(f) => Some(f),
            None if class == FileClass::SystemTablespace => system,
            None => None,
        }
    } else {
        None
    };
    let page_size = fmt.map(|f| f.physical_size).unwrap_or(1 << 20);
    let mut buf = vec![0u8; page_size.max(1 << 20) / page_size * page_size];
    let (mut size, mut page_no, mut corrupt) = (0u64, 0u64, None);
    loop {
        let n = read_full(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
        if let Some(fmt) = &fmt {
            for page in buf[..n - n % page_size].chunks(page_size) {
                if corrupt.is_none()
                    && matches!(
                        check_page_at(page, page_no as u32, fmt),
                        Ok(PageStatus::Corrupt(_))
                    )
                {
                    corrupt = Some(page_no);
                }
                page_no += 1;
            }
        }
    }
    Ok((size, format!("{:x}", h.finalize()), page_no, corrupt))
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// The LSNs must be in order, and an unprepared backup's log must hold exactly the
/// bytes from the checkpoint to the last LSN.
fn check_lsns(dir: &Path, m: &Manifest) -> Result<(), StepError> {
    let l = &m.lsn;
    if !(l.checkpoint <= l.commit && l.commit <= l.last && l.checkpoint > 0) {
        return Err(StepError::fatal(format!(
            "LSNs out of order: checkpoint {} commit {} last {}",
            l.checkpoint, l.commit, l.last
        )));
    }
    if m.prepared.is_none() {
        let size = std::fs::metadata(dir.join("ib_logfile0"))
            .map(|m| m.len())
            .unwrap_or(0);
        let expected = crate::innodb::redo::START_OFFSET + (l.last - l.checkpoint);
        if size != expected {
            return Err(StepError::fatal(format!(
                "ib_logfile0 holds {size} bytes; the LSNs say {expected}"
            )));
        }
    }
    Ok(())
}

/// Copies the backup to a scratch directory, starts a server on it (recovery prepares
/// an unprepared copy), CHECK TABLE on every table, row counts; removes the copy.
async fn test_restore(
    dir: &Path,
    scratch: Option<&str>,
) -> Result<(usize, serde_json::Map<String, Value>), StepError> {
    let base = scratch
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let copy = tempfile::Builder::new()
        .prefix("stagehand-verify")
        .tempdir_in(&base)
        .map_err(|e| {
            StepError::fatal(format!(
                "cannot create a scratch directory in {}: {e}",
                base.display()
            ))
        })?;
    let data = copy.path().join("data");
    let (src, dst) = (dir.to_path_buf(), data.clone());
    tokio::task::spawn_blocking(move || copy_tree(&src, &dst))
        .await
        .map_err(|e| StepError::fatal(e.to_string()))??;
    let run = backup_server::run_dir()?;
    let server = backup_server::start_on(&data, run.path(), 256 << 20, None).await?;
    let result = check_tables(&server).await;
    let _ = server.shutdown(ShutdownMode::Fast).await;
    result
}

async fn check_tables(
    server: &crate::sandbox::SandboxServer,
) -> Result<(usize, serde_json::Map<String, Value>), StepError> {
    let mut conn = mysql_async::Conn::new(server.admin_opts())
        .await
        .map_err(|e| crate::mariadb::classify(&e))?;
    let tables: Vec<(String, String)> = conn
        .query("SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema', 'sys') ORDER BY 1, 2")
        .await
        .map_err(|e| crate::mariadb::classify(&e))?;
    let mut rows = serde_json::Map::new();
    let mut failed = Vec::new();
    for (db, t) in &tables {
        let name = format!("`{}`.`{}`", db.replace('`', "``"), t.replace('`', "``"));
        let result: Vec<(String, String, String, String)> = conn
            .query(format!("CHECK TABLE {name}"))
            .await
            .map_err(|e| crate::mariadb::classify(&e))?;
        let status = result
            .iter()
            .rev()
            .find(|r| r.2 == "status")
            .map(|r| r.3.clone())
            .unwrap_or_default();
        if status != "OK" && status != "Table is already up to date" {
            failed.push(format!(
                "{db}.{t}: {}",
                result
                    .iter()
                    .map(|r| r.3.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            continue;
        }
        let n: Option<u64> = conn
            .query_first(format!("SELECT COUNT(*) FROM {name}"))
            .await
            .map_err(|e| crate::mariadb::classify(&e))?;
        rows.insert(format!("{db}.{t}"), json!(n.unwrap_or(0)));
    }
    let _ = conn.disconnect().await;
    if failed.is_empty() {
        Ok((tables.len(), rows))
    } else {
        Err(StepError::fatal(format!(
            "CHECK TABLE failed on the restored copy: {}",
            failed.join("; ")
        )))
    }
}

pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), StepError> {
    std::fs::create_dir_all(dst)
        .map_err(|e| StepError::fatal(format!("{}: {e}", dst.display())))?;
    for e in std::fs::read_dir(src)
        .map_err(|e| StepError::fatal(format!("{}: {e}", src.display())))?
        .filter_map(|e| e.ok())
    {
        let (from, to) = (e.path(), dst.join(e.file_name()));
        if from.is_dir() {
            copy_tree(&from, &to)?;
        } else {
            std::fs::copy(&from, &to)
                .map_err(|e| StepError::fatal(format!("copying {}: {e}", from.display())))?;
        }
    }
    Ok(())
}
