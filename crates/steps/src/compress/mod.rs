//! `compress`: replaces each file of a sealed backup by a zstd object `<path>.zst` and
//! records it in the manifest as the file's stored form. The data's size and hash
//! stay in the manifest, so `verify` and `decompress` check both the object and the data
//! it decompresses to.
//!
//! Also the pieces `decompress` and `verify` share: hashing readers and writers, the
//! stored-object reader, the worker pool and the errors.
//!
//! Interruption: each file goes `<dir>/.<name>.zst.tmp` → fsync → rename to `<path>.zst`
//! → fsync of the directory → removal of the original. The manifest is written once at
//! the end (also when a file fails, with the files done so far), not after each file: a
//! backup of thousands of tables would otherwise rewrite a large manifest thousands of
//! times. A run killed in between leaves files whose original is gone while the manifest
//! still lists them as plain; the next run finds each such `.zst`, decompresses it while
//! hashing and takes it over only when it holds exactly the manifest's data. An original
//! that is still there is always whole (only ever removed, never written), so it is
//! compressed again from scratch.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use stagehand_backup::codec::*;
use stagehand_backup::entry::CopiedFile;
use stagehand_backup::entry::StoredForm;
use stagehand_backup::manifest::Manifest;
use stagehand_engine::{ConfigError, StepContext, StepError, TypedStep};
use stagehand_host::digest::ContentHasher;
use std::fs::File;
use std::io::{self};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompressConfig {
    /// A complete backup directory (sealed by its `stagehand.json`); compressed in place.
    pub dir: String,
    /// zstd level, 1 (fastest) to 19 (smallest).
    #[serde(default = "default_level")]
    pub level: i32,
    /// zstd worker threads per file (default 1: the file is read while it is compressed);
    /// 0 compresses each file on its worker's own thread, which takes more CPU.
    #[serde(default = "default_threads")]
    pub threads: u32,
    /// Files compressed at once.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
}

fn default_level() -> i32 {
    3
}

fn default_threads() -> u32 {
    DEFAULT_ZSTD_THREADS
}

/// What `compress` publishes.
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct CompressOutput {
    /// files stored compressed by this run
    pub files: u64,
    /// files left as they are because compressing them did not make them smaller
    pub kept: u64,
    /// bytes of data read by this run
    pub bytes_in: u64,
    /// compressed bytes written by this run
    pub bytes_out: u64,
    /// bytes_in / bytes_out (1 when nothing was compressed)
    pub ratio: f64,
    /// bytes the whole backup takes now, as stored
    pub stored_bytes: u64,
    /// wall time
    pub seconds: f64,
    /// data MB compressed per second
    pub mb_per_s: f64,
}

pub struct Compress;

#[async_trait]
impl TypedStep for Compress {
    type Config = CompressConfig;
    type Output = CompressOutput;
    const NAME: &'static str = "compress";
    const SUMMARY: &'static str =
        "Compresses every file of a sealed backup with zstd, in place, and records the stored forms in its manifest";

    fn check(cfg: &CompressConfig) -> Result<(), ConfigError> {
        if !(1..=19).contains(&cfg.level) {
            return Err(ConfigError {
                path: "level".into(),
                message: format!("zstd level {} is out of range", cfg.level),
                hint: Some("use 1 (fastest) to 19 (smallest); 3 is the default".into()),
            });
        }
        check_parallel(cfg.parallel)
    }

    fn describe(cfg: &CompressConfig) -> String {
        let threads = match cfg.threads {
            0 => ", each on its worker's thread".to_string(),
            1 => ", 1 zstd thread per file".to_string(),
            n => format!(", {n} zstd threads per file"),
        };
        format!(
            "compresses every file of the backup in {} with zstd level {} ({} at once{threads}), replacing each by <file>.zst, and records the stored forms in its manifest",
            cfg.dir, cfg.level, cfg.parallel
        )
    }

    async fn run(cfg: &CompressConfig, ctx: &StepContext) -> Result<CompressOutput, StepError> {
        let dir = PathBuf::from(&cfg.dir);
        let mut manifest = read_manifest(&dir, "compress")?;
        let t0 = Instant::now();
        let jobs = plan_compress(&dir, &manifest)?;
        let (level, threads) = (cfg.level, cfg.threads);
        let tally = convert_all(
            &dir,
            &mut manifest,
            jobs,
            cfg.parallel,
            ctx,
            "compressed",
            move |work, job| compress_job(work, job, level, threads),
        )
        .await?;
        let seconds = t0.elapsed().as_secs_f64();
        tracing::info!(
            files = tally.files,
            bytes_in = tally.bytes_in,
            bytes_out = tally.bytes_out,
            seconds,
            "backup compressed"
        );
        let rates = rates(tally.bytes_in, tally.bytes_out, seconds);
        Ok(CompressOutput {
            files: tally.files,
            kept: tally.kept,
            bytes_in: tally.bytes_in,
            bytes_out: tally.bytes_out,
            ratio: rates.ratio,
            stored_bytes: manifest.stored_bytes(),
            seconds: rates.seconds,
            mb_per_s: rates.mb_per_s,
        })
    }
}

/// Jobs for a compress run, largest file first; an error for a file that is gone in
/// both forms.
fn plan_compress(dir: &Path, m: &Manifest) -> Result<Vec<Job>, StepError> {
    let mut jobs = Vec::new();
    for (index, f) in m.files.iter().enumerate() {
        remove_stale_tmps(dir, f)?;
        let plain = dir.join(&f.path).is_file();
        let zst = dir.join(stored_path(f)).is_file();
        let action = match (plain, zst, f.stored.is_some()) {
            // Whole (only ever removed, or renamed into place once checked): compress it
            // again, which also checks it against the manifest.
            (true, _, _) => Action::Convert,
            (false, true, true) => continue,
            (false, true, false) => Action::Adopt,
            (false, false, _) => return Err(lost(f).into_step_error()),
        };
        jobs.push(Job { index, action });
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(m.files[j.index].size));
    Ok(jobs)
}

fn compress_job(w: &Work, job: &Job, level: i32, threads: u32) -> Result<Outcome, StorageError> {
    let f = &w.files[job.index];
    match job.action {
        Action::Convert => compress_file(w, f, level, threads),
        Action::Adopt => adopt_stored(w, f),
    }
}

/// Streams a file through zstd into its `.zst` (see the module comment for the order
/// of the writes); keeps the file as is when that is not smaller.
fn compress_file(
    w: &Work,
    f: &CopiedFile,
    level: i32,
    threads: u32,
) -> Result<Outcome, StorageError> {
    let rel_zst = format!("{}.zst", f.path);
    let (src, dst) = (w.dir.join(&f.path), w.dir.join(&rel_zst));
    let tmp = tmp_path(&w.dir, &rel_zst);
    let written = encode(w, f, &src, &tmp, level, threads);
    let (size, hash) = match written {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let at = io_at(&rel_zst);
    if size >= f.size {
        // Not smaller (tiny or incompressible): stored as is, and no object is left.
        std::fs::remove_file(&tmp).map_err(&at)?;
        remove_if_there(&dst).map_err(&at)?;
        return Ok(Outcome {
            stored: None,
            kept: true,
            bytes_in: f.size,
            bytes_out: f.size,
        });
    }
    std::fs::rename(&tmp, &dst).map_err(&at)?;
    // The rename must be durable before the original goes.
    sync_parent(&dst).map_err(&at)?;
    std::fs::remove_file(&src).map_err(io_at(&f.path))?;
    sync_parent(&src).map_err(io_at(&f.path))?;
    Ok(Outcome {
        stored: Some(StoredForm {
            path: rel_zst.clone(),
            codec: CODEC.into(),
            size,
            hash,
        }),
        kept: false,
        bytes_in: f.size,
        bytes_out: size,
    })
}

/// Writes the compressed form of `src` to `tmp` (synced); checks the input against
/// the manifest; the output's size and hash.
fn encode(
    w: &Work,
    f: &CopiedFile,
    src: &Path,
    tmp: &Path,
    level: i32,
    threads: u32,
) -> Result<(u64, String), StorageError> {
    let at_src = io_at(&f.path);
    let at_tmp = |e: io::Error| StorageError::Io {
        path: tmp.display().to_string(),
        source: e,
    };
    let mut input = HashingReader::new(
        File::open(src).map_err(&at_src)?,
        ContentHasher::like(&f.hash),
    );
    let out = HashingWriter::new(File::create(tmp).map_err(at_tmp)?, ContentHasher::new());
    let mut enc = zstd_encoder(out, level, threads).map_err(at_tmp)?;
    enc.include_checksum(true).map_err(at_tmp)?;
    w.pump(&at_src, at_tmp).run(&mut input, &mut enc)?;
    let (file, size, sha) = enc.finish().map_err(at_tmp)?.finish();
    check_data(f, input.digest(), |what| StorageError::Changed {
        path: f.path.clone(),
        what,
    })?;
    file.sync_all().map_err(at_tmp)?;
    Ok((size, sha))
}

/// A `.zst` left by an interrupted run whose original is gone: taken over when it
/// decompresses to exactly the manifest's data.
fn adopt_stored(w: &Work, f: &CopiedFile) -> Result<Outcome, StorageError> {
    let rel = stored_path(f);
    let at = io_at(&rel);
    let mut r = StoredReader::open(&w.dir.join(&rel), ContentHasher::new()).map_err(&at)?;
    let mut data = HashingWriter::new(io::sink(), ContentHasher::like(&f.hash));
    w.pump(|e| corrupt(&rel, e), &at).run(&mut r, &mut data)?;
    let (size, hash) = r.finish().map_err(&at)?;
    let (_, n, sha) = data.finish();
    check_data(f, (n, sha), |what| StorageError::Corrupt {
        path: rel.clone(),
        what: format!(
            "its original is gone and it does not hold it ({what} differs from the manifest)"
        ),
    })?;
    tracing::info!(file = %f.path, "took over the compressed form an interrupted run left");
    Ok(Outcome {
        stored: Some(StoredForm {
            path: rel.clone(),
            codec: CODEC.into(),
            size,
            hash,
        }),
        kept: false,
        bytes_in: 0,
        bytes_out: 0,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use stagehand_backup::manifest::{Binlog, Locks, Lsns, RedoFacts};
    use stagehand_engine::resources::Connections;
    use stagehand_host::digest::hash_bytes;
    use stagehand_mariadb::datadir::FileClass;
    use std::collections::BTreeMap;

    /// A sealed backup of `files` (path, content) in `dir`.
    pub(crate) fn backup(dir: &Path, files: &[(&str, Vec<u8>)]) -> Manifest {
        let mut entries = Vec::new();
        for (path, data) in files {
            let p = dir.join(path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(&p, data).expect("write");
            let mut f = stagehand_backup::entry::hash_file(dir, path).expect("hash");
            f.class = FileClass::NonInnodb;
            entries.push(f);
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let m = Manifest {
            format: stagehand_backup::manifest::MANIFEST_FORMAT,
            tool: "test".into(),
            complete: true,
            run_id: "r".into(),
            started_at: String::new(),
            finished_at: String::new(),
            server: Default::default(),
            lsn: Lsns::default(),
            binlog: Binlog::default(),
            locks: Locks::default(),
            redo: RedoFacts::default(),
            copies: Vec::new(),
            files: entries,
            ddl: None,
            preparing: false,
            prepared: None,
            metadata_files: Vec::new(),
            backup_type: "full".into(),
            base: None,
            plan: String::new(),
            host: String::new(),
            verified: None,
            checked: None,
            encryption: None,
        };
        m.write(dir).expect("manifest");
        m
    }

    /// Text that compresses, `n` bytes.
    pub(crate) fn text(n: usize) -> Vec<u8> {
        (0..n).map(|i| b"stagehand backup "[i % 17]).collect()
    }

    /// Bytes that do not compress.
    pub(crate) fn noise(n: usize) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(7);
        (0..n).map(|_| rng.u8(..)).collect()
    }

    pub(crate) fn ctx() -> StepContext {
        StepContext::detached("test", Connections::new(None, BTreeMap::new()))
    }

    pub(crate) fn cfg(dir: &Path) -> CompressConfig {
        CompressConfig {
            dir: dir.display().to_string(),
            level: 3,
            threads: 0,
            parallel: 2,
        }
    }

    fn sample(dir: &Path) -> Manifest {
        backup(
            dir,
            &[
                ("ibdata1", text(3 << 20)),
                ("db/t.frm", text(900)),
                ("db/db.opt", b"x".to_vec()),
                ("db/noise.MAD", noise(64 << 10)),
            ],
        )
    }

    #[tokio::test]
    async fn compresses_files_and_records_their_stored_forms() {
        let d = tempfile::tempdir().expect("tempdir");
        let before = sample(d.path());
        let out = Compress::run(&cfg(d.path()), &ctx())
            .await
            .expect("compress");
        let m = Manifest::read(d.path()).expect("manifest");
        for (f, b) in m.files.iter().zip(&before.files) {
            assert_eq!((&f.hash, f.size), (&b.hash, b.size), "data facts kept");
            match &f.stored {
                Some(s) => {
                    assert!(!d.path().join(&f.path).exists(), "{} removed", f.path);
                    let bytes = std::fs::read(d.path().join(&s.path)).expect("object");
                    assert_eq!(bytes.len() as u64, s.size);
                    assert_eq!(hash_bytes(&bytes), s.hash);
                    assert_eq!(s.codec, "zstd");
                    let data = zstd::decode_all(bytes.as_slice()).expect("zstd");
                    assert_eq!(hash_bytes(&data), f.hash);
                }
                None => assert!(d.path().join(&f.path).exists()),
            }
        }
        let stored: Vec<&str> = m
            .files
            .iter()
            .filter(|f| f.stored.is_some())
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(
            stored,
            ["db/t.frm", "ibdata1"],
            "tiny and random files stay"
        );
        assert!(out.ratio > 5.0, "{out:?}");
        assert_eq!((out.files, out.kept), (2, 2));
        assert!(stagehand_backup::manifest::unlisted_files(d.path(), &[])
            .iter()
            .all(|f| !f.ends_with(".tmp")));
        // Run again: nothing to do.
        let again = Compress::run(&cfg(d.path()), &ctx()).await.expect("again");
        assert_eq!(
            (again.files, again.kept),
            (0, 2),
            "only the files kept as is are tried again"
        );
        assert_eq!(Manifest::read(d.path()).expect("manifest").files, m.files);
    }

    #[tokio::test]
    async fn a_file_changed_since_the_seal_is_named() {
        let d = tempfile::tempdir().expect("tempdir");
        sample(d.path());
        std::fs::write(d.path().join("db/t.frm"), text(901)).expect("write");
        // One at a time: ibdata1 (the largest) is done before t.frm fails.
        let mut c = cfg(d.path());
        c.parallel = 1;
        let e = Compress::run(&c, &ctx()).await.expect_err("changed file");
        assert!(e.message.contains("db/t.frm"), "{}", e.message);
        assert!(
            e.message.contains("changed since it was sealed"),
            "{}",
            e.message
        );
        assert!(d.path().join("db/t.frm").exists(), "the original stays");
        assert!(!d.path().join("db/t.frm.zst").exists());
        assert!(!d.path().join("db/.t.frm.zst.tmp").exists());
        // The other files were done and recorded.
        let m = Manifest::read(d.path()).expect("manifest");
        assert!(m
            .files
            .iter()
            .any(|f| f.path == "ibdata1" && f.stored.is_some()));
    }

    #[tokio::test]
    async fn an_interrupted_run_is_finished_without_losing_a_file() {
        let d = tempfile::tempdir().expect("tempdir");
        sample(d.path());
        let sealed = std::fs::read(d.path().join("stagehand.json")).expect("manifest");
        Compress::run(&cfg(d.path()), &ctx())
            .await
            .expect("compress");
        // Back to a killed run's state: the manifest of the sealed backup, ibdata1 done
        // (original gone), db/t.frm mid-way (original and a stale temporary file).
        std::fs::write(d.path().join("stagehand.json"), &sealed).expect("write");
        std::fs::remove_file(d.path().join("db/t.frm.zst")).expect("rm");
        std::fs::write(d.path().join("db/t.frm"), text(900)).expect("write");
        std::fs::write(d.path().join("db/.t.frm.zst.tmp"), b"partial").expect("write");
        let out = Compress::run(&cfg(d.path()), &ctx()).await.expect("resume");
        assert_eq!(
            (out.files, out.kept),
            (2, 2),
            "ibdata1.zst taken over, t.frm compressed, the two kept files tried again"
        );
        let m = Manifest::read(d.path()).expect("manifest");
        assert!(m
            .files
            .iter()
            .all(|f| f.path.ends_with(".opt") || f.path.ends_with(".MAD") || f.stored.is_some()));
        assert!(!d.path().join("db/.t.frm.zst.tmp").exists());
        assert_eq!(
            stagehand_backup::manifest::unlisted_files(d.path(), &listed(&m)),
            Vec::<String>::new()
        );
        // A `.zst` that does not hold the data is not taken over.
        std::fs::write(d.path().join("stagehand.json"), &sealed).expect("write");
        std::fs::write(
            d.path().join("ibdata1.zst"),
            zstd::encode_all(&b"other"[..], 3).expect("zstd"),
        )
        .expect("write");
        let e = Compress::run(&cfg(d.path()), &ctx())
            .await
            .expect_err("wrong object");
        assert!(e.message.contains("ibdata1.zst"), "{}", e.message);
    }

    /// The manifest's paths as stored.
    pub(crate) fn listed(m: &Manifest) -> Vec<CopiedFile> {
        m.files
            .iter()
            .map(|f| CopiedFile {
                path: f.stored.as_ref().map_or(f.path.clone(), |s| s.path.clone()),
                ..f.clone()
            })
            .collect()
    }

    #[test]
    fn levels_outside_1_to_19_are_refused() {
        let mut c = cfg(Path::new("/x"));
        assert!(Compress::check(&c).is_ok());
        c.level = 20;
        assert_eq!(Compress::check(&c).map_err(|e| e.path), Err("level".into()));
        c.level = 0;
        assert!(Compress::check(&c).is_err());
        c.level = 19;
        c.parallel = 0;
        assert_eq!(
            Compress::check(&c).map_err(|e| e.path),
            Err("parallel".into())
        );
    }

    #[tokio::test]
    async fn multithreaded_zstd_gives_the_same_data() {
        let d = tempfile::tempdir().expect("tempdir");
        let before = sample(d.path());
        let mut c = cfg(d.path());
        c.threads = 2;
        c.level = 1;
        Compress::run(&c, &ctx()).await.expect("compress");
        let m = Manifest::read(d.path()).expect("manifest");
        let f = &m.files[m
            .files
            .iter()
            .position(|f| f.path == "ibdata1")
            .expect("ibdata1")];
        let s = f.stored.as_ref().expect("stored");
        let data =
            zstd::decode_all(File::open(d.path().join(&s.path)).expect("open")).expect("zstd");
        assert_eq!(
            data.len() as u64,
            before
                .files
                .iter()
                .find(|f| f.path == "ibdata1")
                .map_or(0, |f| f.size)
        );
    }
}
