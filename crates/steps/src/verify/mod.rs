//! `verify`: checks a backup directory against its manifest — every file's size and
//! hash, every InnoDB page's checksum, the LSNs — and optionally restores it into a
//! scratch directory, starts a server on it, runs CHECK TABLE on every table and counts
//! rows. A file stored compressed is read through its decoder: the object's size and
//! hashes are checked as well as the data's.

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use stagehand_backup::check::{check_files, check_lsns, shown};
use stagehand_backup::codec::StoredReader;
use stagehand_backup::manifest::{CheckReceipt, Manifest};
use stagehand_engine::{StepContext, StepError, TypedStep};
use stagehand_mariadb::backup_server;
use stagehand_mariadb::sandbox::ShutdownMode;
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

/// What `verify` publishes.
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct VerifyOutput {
    /// files checked against the manifest
    pub files: u64,
    /// bytes hashed
    pub bytes: u64,
    /// InnoDB pages whose checksum was checked
    pub pages: u64,
    /// tables that passed CHECK TABLE (test restore)
    pub tables: u64,
    /// row count per table (test restore)
    pub rows: serde_json::Map<String, serde_json::Value>,
    /// whether the backup was prepared
    pub prepared: bool,
    /// the backup is encrypted (a repository's copy, no key here): only its objects'
    /// sizes and hashes were checked, not the data inside
    pub hashes_only: bool,
}

pub struct Verify;

#[async_trait]
impl TypedStep for Verify {
    type Config = VerifyConfig;
    type Output = VerifyOutput;
    const NAME: &'static str = "verify";
    const SUMMARY: &'static str = "Checks a backup: hashes, InnoDB page checksums, LSNs; optionally a test restore with CHECK TABLE";

    fn describe(cfg: &VerifyConfig) -> String {
        let restore = if cfg.restore {
            "; then restores a scratch copy, starts a server on it, runs CHECK TABLE on every table and counts rows"
        } else {
            ""
        };
        format!("checks every file of {} against its manifest (size, hash), every InnoDB page checksum and the LSNs{restore}", cfg.target)
    }

    async fn run(cfg: &VerifyConfig, ctx: &StepContext) -> Result<VerifyOutput, StepError> {
        let dir = PathBuf::from(&cfg.target);
        let manifest = Manifest::read_local(&dir).map_err(|e| StepError::fatal(e.to_string()))?;
        if manifest.files.iter().any(|f| f.encrypted.is_some()) {
            return verify_encrypted(cfg, &dir, manifest, ctx).await;
        }
        // Taken before the check: a file changed while it is read no longer matches it.
        let receipt = CheckReceipt::take(&dir, &manifest, &ctx.run_id, "verify");
        let (d, m) = (dir.clone(), manifest.clone());
        let cancel = ctx.cancel.clone();
        let (bytes, pages) =
            tokio::task::spawn_blocking(move || check_files(&d, &m, &cancel, &|_| false))
                .await
                .map_err(|e| StepError::fatal(format!("verify crashed: {e}")))??;
        check_lsns(&dir, &manifest)?;
        let (tables, rows) = if cfg.restore {
            test_restore(&dir, &manifest, cfg.scratch.as_deref()).await?
        } else {
            (0, serde_json::Map::new())
        };
        let files = manifest.files.len();
        let out = VerifyOutput {
            files: files as u64,
            bytes,
            pages,
            tables: tables as u64,
            rows,
            prepared: manifest.prepared.is_some(),
            hashes_only: false,
        };
        record_verified(
            &dir,
            manifest,
            if cfg.restore { "restore" } else { "pages" },
            Some(receipt),
        )?;
        tracing::info!(files, bytes, pages, tables, "backup verified");
        Ok(out)
    }
}

/// Notes in the manifest that the backup passed, and how deeply: `backups list` shows it
/// and `rotate` never deletes the newest verified backup.
fn record_verified(
    dir: &Path,
    mut manifest: Manifest,
    depth: &str,
    receipt: Option<CheckReceipt>,
) -> Result<(), StepError> {
    manifest.checked = receipt;
    manifest.verified = Some(stagehand_backup::manifest::Verified {
        at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        depth: depth.into(),
    });
    manifest
        .write(dir)
        .map_err(|e| StepError::fatal(format!("the backup is good, but {e}")))
}

/// An encrypted backup as its repository holds it (a local repository's folder): no
/// key here, so only the encrypted objects' sizes and hashes are checked, and the step
/// says so. Its data (pages, LSNs, a test restore) is checked once fetched with the key.
async fn verify_encrypted(
    cfg: &VerifyConfig,
    dir: &Path,
    manifest: Manifest,
    ctx: &StepContext,
) -> Result<VerifyOutput, StepError> {
    let key_id = manifest
        .encryption
        .as_ref()
        .map(|e| e.key_id.clone())
        .unwrap_or_default();
    if cfg.restore {
        return Err(StepError::fatal(format!(
            "{} is an encrypted backup (key {key_id}): a test restore needs its data",
            dir.display()
        ))
        .with_hint(
            "fetch it with its key first (plans/restore.yaml), then verify the fetched copy",
        ));
    }
    let (d, m, cancel) = (dir.to_path_buf(), manifest.clone(), ctx.cancel.clone());
    let bytes = tokio::task::spawn_blocking(move || {
        stagehand_backup::check::check_encrypted_objects(&d, &m, &cancel)
    })
    .await
    .map_err(|e| StepError::fatal(format!("verify crashed: {e}")))??;
    tracing::warn!(
        key_id = %key_id,
        "{} is encrypted (key {key_id}): only the sizes and hashes of its encrypted objects were checked; page checksums and LSNs need the key (fetch it, then verify the copy)",
        dir.display()
    );
    let out = VerifyOutput {
        files: manifest.files.len() as u64,
        bytes,
        prepared: manifest.prepared.is_some(),
        hashes_only: true,
        ..Default::default()
    };
    record_verified(dir, manifest, "hashes", None)?;
    Ok(out)
}

/// Copies the backup to a scratch directory (decompressed), starts a server on it
/// (recovery prepares an unprepared copy), CHECK TABLE on every table, row counts;
/// removes the copy.
async fn test_restore(
    dir: &Path,
    m: &Manifest,
    scratch: Option<&str>,
) -> Result<(usize, serde_json::Map<String, Value>), StepError> {
    // Before the copy: a server of another series cannot test this backup.
    let binary = backup_server::binary_for_backup("mariadbd", None, &m.server.version).await?;
    let base = scratch
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    // A copy of every table and of the password hashes: private to our user.
    let copy = tempfile::Builder::new()
        .prefix("stagehand-verify")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(&base)
        .map_err(|e| {
            StepError::fatal(format!(
                "cannot create a scratch directory in {}: {e}",
                base.display()
            ))
        })?;
    let data = copy.path().join("data");
    let (src, dst, m) = (dir.to_path_buf(), data.clone(), m.clone());
    tokio::task::spawn_blocking(move || {
        copy_tree(&src, &dst)
            .and_then(|()| unpack(&src, &m, &dst))
            .and_then(|()| apply_ddl(&dst, &m))
    })
    .await
    .map_err(|e| StepError::fatal(e.to_string()))??;
    let run = backup_server::run_dir()?;
    let server = backup_server::start_on(&data, run.path(), 256 << 20, Some(binary)).await?;
    let result = check_tables(&server).await;
    let _ = server.shutdown(ShutdownMode::Fast).await;
    result
}

/// An unprepared backup whose copy ran under START carries the file changes of DDL run
/// meanwhile: the scratch copy gets them before a server starts on it, as `prepare`
/// does. A prepared backup has them already.
fn apply_ddl(dst: &Path, m: &Manifest) -> Result<(), StepError> {
    let Some(ddl) = m.ddl.as_ref().filter(|_| m.prepared.is_none()) else {
        return Ok(());
    };
    let failed =
        |e: stagehand_backup::ddl::ApplyError| StepError::fatal(format!("the scratch copy: {e}"));
    stagehand_backup::ddl::apply(dst, &ddl.changes).map_err(failed)?;
    stagehand_backup::ddl::forget(dst).map_err(failed)
}

async fn check_tables(
    server: &stagehand_mariadb::sandbox::SandboxServer,
) -> Result<(usize, serde_json::Map<String, Value>), StepError> {
    let mut conn = mysql_async::Conn::new(server.admin_opts())
        .await
        .map_err(|e| stagehand_mariadb::session::classify(&e))?;
    let tables: Vec<(String, String)> = conn
        .query("SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema', 'sys') ORDER BY 1, 2")
        .await
        .map_err(|e| stagehand_mariadb::session::classify(&e))?;
    let mut rows = serde_json::Map::new();
    let mut failed = Vec::new();
    for (db, t) in &tables {
        let name = format!("`{}`.`{}`", db.replace('`', "``"), t.replace('`', "``"));
        let result: Vec<(String, String, String, String)> = conn
            .query(format!("CHECK TABLE {name}"))
            .await
            .map_err(|e| stagehand_mariadb::session::classify(&e))?;
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
            .map_err(|e| stagehand_mariadb::session::classify(&e))?;
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

/// Replaces the stored objects copied to `dst` by their data, decompressed from `src`.
fn unpack(src: &Path, m: &Manifest, dst: &Path) -> Result<(), StepError> {
    for f in &m.files {
        let Some(s) = &f.stored else { continue };
        let err = |e: std::io::Error| StepError::fatal(format!("{}: {e}", shown(f)));
        let hasher = stagehand_host::digest::ContentHasher::like(&s.hash);
        let mut r = StoredReader::open(&src.join(&s.path), hasher).map_err(err)?;
        let mut out = std::fs::File::create(dst.join(&f.path)).map_err(err)?;
        std::io::copy(&mut r, &mut out).map_err(err)?;
        std::fs::remove_file(dst.join(&s.path)).map_err(err)?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Compress;
    use crate::test_support::{backup, cfg, ctx, text};
    use stagehand_engine::TypedStep;

    #[tokio::test]
    async fn a_compressed_backup_is_checked_through_its_objects() {
        let d = tempfile::tempdir().expect("tempdir");
        backup(
            d.path(),
            &[("ibdata1", text(1 << 20)), ("db/t.frm", text(5000))],
        );
        Compress::run(&cfg(d.path()), &ctx())
            .await
            .expect("compress");
        let m = Manifest::read(d.path()).expect("manifest");
        let none = tokio_util::sync::CancellationToken::new();
        let (bytes, _) = check_files(d.path(), &m, &none, &|_| false).expect("verifies");
        assert_eq!(bytes, m.data_bytes());

        // A flipped byte in an object is named.
        let obj = d.path().join("db/t.frm.zst");
        let mut b = std::fs::read(&obj).expect("read");
        let mid = b.len() / 2;
        b[mid] ^= 1;
        std::fs::write(&obj, &b).expect("write");
        let e = check_files(d.path(), &m, &none, &|_| false).expect_err("damaged");
        assert!(e.message.contains("db/t.frm.zst"), "{}", e.message);
        b[mid] ^= 1;
        std::fs::write(&obj, &b).expect("write");

        // Bytes appended after the frame: the object's hash catches them.
        b.extend_from_slice(b"tail");
        std::fs::write(&obj, &b).expect("write");
        let e = check_files(d.path(), &m, &none, &|_| false).expect_err("appended");
        assert!(e.message.contains("db/t.frm.zst"), "{}", e.message);

        // The original left beside its object is not in the manifest.
        b.truncate(b.len() - 4);
        std::fs::write(&obj, &b).expect("write");
        std::fs::write(d.path().join("ibdata1"), text(1 << 20)).expect("write");
        let e = check_files(d.path(), &m, &none, &|_| false).expect_err("stray original");
        assert!(
            e.message.contains("ibdata1: not in the manifest"),
            "{}",
            e.message
        );
    }
}
