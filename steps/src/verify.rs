//! `verify`: checks a backup directory against its manifest — every file's size and
//! SHA-256, every InnoDB page's checksum, the LSNs — and optionally restores it into a
//! scratch directory, starts a server on it, runs CHECK TABLE on every table and counts
//! rows. A file stored compressed is read through its decoder: the object's size and
//! SHA-256 are checked as well as the data's.

use crate::backup_server;
use crate::compress::StoredReader;
use crate::datadir::FileClass;
use crate::innodb::page::{check_page_at, PageStatus, SpaceFormat};
use crate::manifest::Manifest;
use crate::pagecopy::CopiedFile;
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
        let (bytes, pages) =
            tokio::task::spawn_blocking(move || check_files(&d, &m, &cancel, &|_| false))
                .await
                .map_err(|e| StepError::fatal(format!("verify crashed: {e}")))??;
        check_lsns(&dir, &manifest)?;
        let mut out = Outputs::new();
        out.insert("files".into(), json!(manifest.files.len()));
        out.insert("bytes".into(), json!(bytes));
        out.insert("pages".into(), json!(pages));
        out.insert("prepared".into(), json!(manifest.prepared.is_some()));
        let (tables, rows) = if cfg.restore {
            test_restore(&dir, &manifest, cfg.scratch.as_deref()).await?
        } else {
            (0, serde_json::Map::new())
        };
        out.insert("tables".into(), json!(tables));
        out.insert("rows".into(), Value::Object(rows));
        let files = manifest.files.len();
        record_verified(&dir, manifest, cfg.restore)?;
        tracing::info!(files, bytes, pages, tables, "backup verified");
        Ok(out)
    }
}

/// Notes in the manifest that the backup passed, and how deeply: `backups list` shows it
/// and `rotate` never deletes the newest verified backup.
fn record_verified(dir: &Path, mut manifest: Manifest, restored: bool) -> Result<(), StepError> {
    manifest.verified = Some(crate::manifest::Verified {
        at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        depth: if restored { "restore" } else { "pages" }.into(),
    });
    manifest
        .write(dir)
        .map_err(|e| StepError::fatal(format!("the backup is good, but {e}")))
}

/// Checks a backup's files against its manifest: each file's size, SHA-256 and InnoDB
/// page checksums, and that no file is missing from it. `skip(path)` leaves a file out
/// (prepare's rerun skips the files an interrupted crash recovery already rewrote).
/// `prepare` runs the same check before it changes anything.
pub fn check_files(
    dir: &Path,
    m: &Manifest,
    cancel: &tokio_util::sync::CancellationToken,
    skip: &dyn Fn(&str) -> bool,
) -> Result<(u64, u64), StepError> {
    let system_format = m
        .files
        .iter()
        .find(|f| f.class == FileClass::SystemTablespace)
        .and_then(|f| read_head(dir, f))
        .and_then(|h| SpaceFormat::from_page0(&h).ok());
    let mut bytes = 0;
    let mut pages = 0;
    let mut bad = Vec::new();
    for f in m.files.iter().filter(|f| !skip(&f.path)) {
        if cancel.is_cancelled() {
            return Err(StepError::cancelled());
        }
        let check_pages = f.class.is_innodb();
        match check_file(dir, f, check_pages, system_format) {
            Err(e) => bad.push(format!("{}: {e}", shown(f))),
            Ok((size, sha, n, corrupt)) => {
                bytes += size;
                pages += n;
                if size != f.size {
                    bad.push(format!(
                        "{}: size {size}, manifest says {}",
                        shown(f),
                        f.size
                    ));
                } else if sha != f.sha256 {
                    bad.push(format!("{}: SHA-256 differs from the manifest", shown(f)));
                }
                if let Some(p) = corrupt {
                    bad.push(format!("{}: page {p} fails its checksum", shown(f)));
                }
            }
        }
    }
    for extra in crate::manifest::unlisted_files(dir, &as_stored(&m.files))
        .into_iter()
        .filter(|p| !skip(p))
    {
        bad.push(format!("{extra}: not in the manifest"));
    }
    if bad.is_empty() {
        Ok((bytes, pages))
    } else {
        Err(StepError::fatal(format!("{} problem(s) in {}: {}", bad.len(), dir.display(), bad.iter().take(10).cloned().collect::<Vec<_>>().join("; ")))
            .with_hint("the backup is damaged: do not restore it; take a new backup (or fetch it again from its repository)"))
    }
}

/// How a file is named in errors: with its stored object when stored compressed.
fn shown(f: &CopiedFile) -> String {
    match &f.stored {
        Some(s) => format!("{} (stored as {})", f.path, s.path),
        None => f.path.clone(),
    }
}

/// The manifest's entries under the paths they are stored at.
fn as_stored(files: &[CopiedFile]) -> Vec<CopiedFile> {
    files
        .iter()
        .map(|f| CopiedFile {
            path: f.stored.as_ref().map_or(f.path.clone(), |s| s.path.clone()),
            ..f.clone()
        })
        .collect()
}

/// The data of a backup file: the file itself, or its stored object decompressed.
enum Data {
    Plain(std::fs::File),
    Stored(Box<StoredReader>),
}

impl Read for Data {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Data::Plain(f) => f.read(buf),
            Data::Stored(r) => r.read(buf),
        }
    }
}

fn open_data(dir: &Path, f: &CopiedFile) -> std::io::Result<Data> {
    crate::compress::check_codec(f).map_err(std::io::Error::other)?;
    Ok(match &f.stored {
        Some(s) => Data::Stored(Box::new(StoredReader::open(&dir.join(&s.path))?)),
        None => Data::Plain(std::fs::File::open(dir.join(&f.path))?),
    })
}

/// The first 64 KiB of a file's data (page 0 and what follows).
fn read_head(dir: &Path, f: &CopiedFile) -> Option<Vec<u8>> {
    let mut head = vec![0u8; 65536];
    let n = read_full(&mut open_data(dir, f).ok()?, &mut head).ok()?;
    head.truncate(n);
    Some(head)
}

/// Hashes a file's data and checks its pages, and for a stored object also the
/// object's size and SHA-256 (read to its end).
fn check_file(
    dir: &Path,
    f: &CopiedFile,
    pages: bool,
    system: Option<SpaceFormat>,
) -> std::io::Result<(u64, String, u64, Option<u64>)> {
    let mut data = open_data(dir, f)?;
    let result = hash_and_check(&mut data, pages, f.class, system)?;
    if let (Data::Stored(r), Some(s)) = (data, &f.stored) {
        let (size, sha) = r.finish()?;
        if size != s.size {
            return Err(std::io::Error::other(format!(
                "the stored object holds {size} bytes, the manifest says {}",
                s.size
            )));
        }
        if sha != s.sha256 {
            return Err(std::io::Error::other(
                "the stored object's SHA-256 differs from the manifest",
            ));
        }
    }
    Ok(result)
}

/// Hashes a file and, for tablespaces, checks each page; returns the first bad page.
fn hash_and_check(
    data: &mut impl Read,
    pages: bool,
    class: FileClass,
    system: Option<SpaceFormat>,
) -> std::io::Result<(u64, String, u64, Option<u64>)> {
    // Page 0 gives the format: read it first, then hash it with the rest.
    let mut head = vec![0u8; 65536];
    let n = read_full(data, &mut head)?;
    head.truncate(n);
    let mut f = std::io::Cursor::new(&head).chain(data);
    let mut h = Sha256::new();
    let fmt = if pages {
        match SpaceFormat::from_page0(&head).ok() {
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

fn read_full(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
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
        // A compressed log's data size was checked against the manifest's already.
        let log = m.files.iter().find(|f| f.path == "ib_logfile0");
        let size = match log {
            Some(f) if f.stored.is_some() => f.size,
            _ => std::fs::metadata(dir.join("ib_logfile0"))
                .map(|m| m.len())
                .unwrap_or(0),
        };
        let expected = crate::innodb::redo::START_OFFSET + (l.last - l.checkpoint);
        if size != expected {
            return Err(StepError::fatal(format!(
                "ib_logfile0 holds {size} bytes; the LSNs say {expected}"
            )));
        }
    }
    Ok(())
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
        copy_tree(&src, &dst).and_then(|()| unpack(&src, &m, &dst))
    })
    .await
    .map_err(|e| StepError::fatal(e.to_string()))??;
    let run = backup_server::run_dir()?;
    let server = backup_server::start_on(&data, run.path(), 256 << 20, Some(binary)).await?;
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

/// Replaces the stored objects copied to `dst` by their data, decompressed from `src`.
fn unpack(src: &Path, m: &Manifest, dst: &Path) -> Result<(), StepError> {
    for f in &m.files {
        let Some(s) = &f.stored else { continue };
        let err = |e: std::io::Error| StepError::fatal(format!("{}: {e}", shown(f)));
        let mut r = StoredReader::open(&src.join(&s.path)).map_err(err)?;
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
    use crate::compress::tests::{backup, cfg, ctx, text};
    use crate::compress::Compress;
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
