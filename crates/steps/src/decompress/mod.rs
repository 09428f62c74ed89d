//! `decompress`: the reverse of `compress`. Each stored object is decompressed into its
//! file while the object is hashed; the object must match its stored form and the data
//! the manifest's size and hash, or the backup is corrupt. The file is renamed into
//! place only once checked, then the object is removed; the manifest is written at the
//! end (also when a file fails, with the files done so far).
//!
//! Interruption: a plain file is always whole (renamed into place after its check, or
//! never touched), so a run finds each file in one of these states and carries on:
//! object only → decompress; object and file → decompress again (the object is what the
//! manifest records) or, when the manifest already says plain, remove the left-over
//! object; file only while the manifest says stored → hash it and take it over.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use stagehand_backup::codec::{
    check_codec, check_data, check_parallel, corrupt, default_parallel, io_at, lost, rates,
    read_manifest, remove_if_there, remove_stale_tmps, stored_path, sync_parent, tmp_path, Action,
    HashingReader, HashingWriter, Job, Outcome, StorageError, StoredReader, Work,
};
use stagehand_backup::entry::CopiedFile;
use stagehand_backup::manifest::Manifest;
use stagehand_engine::{ConfigError, StepContext, StepError, TypedStep};
use stagehand_host::digest::{algorithm_of, ContentHasher};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecompressConfig {
    /// A complete backup directory whose files are stored compressed; decompressed in
    /// place.
    pub dir: String,
    /// Files decompressed at once.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
}

/// What `decompress` publishes.
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct DecompressOutput {
    /// files decompressed by this run
    pub files: u64,
    /// compressed bytes read by this run
    pub bytes_in: u64,
    /// bytes of data written by this run
    pub bytes_out: u64,
    /// bytes_out / bytes_in (1 when nothing was decompressed)
    pub ratio: f64,
    /// wall time
    pub seconds: f64,
    /// data MB written per second
    pub mb_per_s: f64,
}

pub struct Decompress;

#[async_trait]
impl TypedStep for Decompress {
    type Config = DecompressConfig;
    type Output = DecompressOutput;
    const NAME: &'static str = "decompress";
    const SUMMARY: &'static str =
        "Decompresses the files of a compressed backup in place, checking every object and file against its manifest";

    fn check(cfg: &DecompressConfig) -> Result<(), ConfigError> {
        check_parallel(cfg.parallel)
    }

    fn describe(cfg: &DecompressConfig) -> String {
        format!(
            "decompresses every compressed file of the backup in {} ({} at once), checking each object and each file against the manifest, and records them as plain files",
            cfg.dir, cfg.parallel
        )
    }

    async fn run(cfg: &DecompressConfig, ctx: &StepContext) -> Result<DecompressOutput, StepError> {
        let dir = PathBuf::from(&cfg.dir);
        let mut manifest = read_manifest(&dir, "decompress")?;
        let t0 = Instant::now();
        let jobs = plan_decompress(&dir, &manifest)?;
        let tally = stagehand_backup::codec::convert_all(
            &dir,
            &mut manifest,
            jobs,
            cfg.parallel,
            ctx,
            "decompressed",
            decompress_job,
        )
        .await?;
        let seconds = t0.elapsed().as_secs_f64();
        tracing::info!(
            files = tally.files,
            bytes = tally.bytes_out,
            seconds,
            "backup decompressed"
        );
        // Read compressed, written plain: the ratio is data over stored bytes.
        let rates = rates(tally.bytes_out, tally.bytes_in, seconds);
        Ok(DecompressOutput {
            files: tally.files,
            bytes_in: tally.bytes_in,
            bytes_out: tally.bytes_out,
            ratio: rates.ratio,
            seconds: rates.seconds,
            mb_per_s: rates.mb_per_s,
        })
    }
}

/// Jobs for a decompress run, largest file first.
fn plan_decompress(dir: &Path, m: &Manifest) -> Result<Vec<Job>, StepError> {
    let mut jobs = Vec::new();
    for (index, f) in m.files.iter().enumerate() {
        remove_stale_tmps(dir, f)?;
        check_codec(f).map_err(StorageError::into_step_error)?;
        let rel_zst = stored_path(f);
        let plain = dir.join(&f.path).is_file();
        let zst = dir.join(&rel_zst).is_file();
        let action = match (f.stored.is_some(), zst, plain) {
            (true, true, _) | (false, true, false) => Action::Convert,
            (true, false, true) => Action::Adopt,
            (false, true, true) => {
                // A compress run stopped before removing the original: the object is
                // not in the manifest and the file is whole.
                remove_if_there(&dir.join(&rel_zst))
                    .map_err(|e| io_at(&rel_zst)(e).into_step_error())?;
                continue;
            }
            (false, false, true) => continue,
            (_, false, false) => return Err(lost(f).into_step_error()),
        };
        jobs.push(Job { index, action });
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(m.files[j.index].size));
    Ok(jobs)
}

fn decompress_job(work: &Work, job: &Job) -> Result<Outcome, StorageError> {
    let f = &work.files[job.index];
    match job.action {
        Action::Convert => decompress_file(work, f),
        Action::Adopt => adopt_plain(work, f),
    }
}

/// Decompresses one object into its file: temporary file, checks, fsync, rename, then
/// the object goes.
fn decompress_file(work: &Work, f: &CopiedFile) -> Result<Outcome, StorageError> {
    let rel_zst = stored_path(f);
    let (src, dst) = (work.dir.join(&rel_zst), work.dir.join(&f.path));
    let tmp = tmp_path(&work.dir, &f.path);
    let stored_size = match decode(work, f, &src, &tmp) {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let at = io_at(&f.path);
    std::fs::rename(&tmp, &dst).map_err(&at)?;
    // The file must be durable before the object goes.
    sync_parent(&dst).map_err(&at)?;
    std::fs::remove_file(&src).map_err(io_at(&rel_zst))?;
    sync_parent(&src).map_err(io_at(&rel_zst))?;
    Ok(Outcome {
        stored: None,
        kept: false,
        bytes_in: stored_size,
        bytes_out: f.size,
    })
}

/// Writes the data of `src` to `tmp` (synced) and checks the object and the data; the
/// object's size.
fn decode(work: &Work, f: &CopiedFile, src: &Path, tmp: &Path) -> Result<u64, StorageError> {
    let rel_zst = stored_path(f);
    let at_zst = io_at(&rel_zst);
    let at_tmp = |e: io::Error| StorageError::Io {
        path: tmp.display().to_string(),
        source: e,
    };
    let object_hasher = f
        .stored
        .as_ref()
        .map_or_else(ContentHasher::new, |s| ContentHasher::like(&s.hash));
    let mut r = StoredReader::open(src, object_hasher).map_err(&at_zst)?;
    let data_hasher = ContentHasher::like(&f.hash);
    let mut w = HashingWriter::new(File::create(tmp).map_err(at_tmp)?, data_hasher);
    work.pump(|e| corrupt(&rel_zst, e), at_tmp)
        .run(&mut r, &mut w)?;
    let (size, hash) = r.finish().map_err(|e| corrupt(&rel_zst, e))?;
    if let Some(s) = &f.stored {
        if (size, &hash) != (s.size, &s.hash) {
            return Err(StorageError::Corrupt {
                path: rel_zst.clone(),
                what: format!(
                    "the stored object ({size} bytes) differs from the manifest's ({} bytes, {} {})",
                    s.size,
                    algorithm_of(&s.hash),
                    if hash == s.hash { "equal" } else { "different" }
                ),
            });
        }
    }
    let (file, n, sha) = w.finish();
    check_data(f, (n, sha), |what| StorageError::Corrupt {
        path: f.path.clone(),
        what: format!("decompressed from {rel_zst}, {what} differs from the manifest"),
    })?;
    file.sync_all().map_err(at_tmp)?;
    Ok(size)
}

/// A file a killed run renamed into place (its object already gone): kept when it
/// holds the manifest's data.
fn adopt_plain(work: &Work, f: &CopiedFile) -> Result<Outcome, StorageError> {
    let at = io_at(&f.path);
    let mut r = HashingReader::new(
        File::open(work.dir.join(&f.path)).map_err(&at)?,
        ContentHasher::like(&f.hash),
    );
    let mut sink = io::sink();
    work.pump(&at, &at).run(&mut r, &mut sink)?;
    check_data(f, r.digest(), |what| StorageError::Corrupt {
        path: f.path.clone(),
        what: format!("its stored object is gone and {what} differs from the manifest"),
    })?;
    Ok(Outcome {
        stored: None,
        kept: false,
        bytes_in: 0,
        bytes_out: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Compress;
    use crate::test_support::{backup, cfg, ctx, listed, noise, text};

    fn dcfg(dir: &Path) -> DecompressConfig {
        DecompressConfig {
            dir: dir.display().to_string(),
            parallel: 2,
        }
    }

    fn sample(dir: &Path) -> Manifest {
        backup(
            dir,
            &[
                ("ibdata1", text(2 << 20)),
                ("db/t.ibd", text(300 << 10)),
                ("db/db.opt", b"x".to_vec()),
                ("db/noise.MAD", noise(10 << 10)),
            ],
        )
    }

    #[tokio::test]
    async fn round_trip_gives_back_the_sealed_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let sealed = sample(d.path());
        Compress::run(&cfg(d.path()), &ctx())
            .await
            .expect("compress");
        let out = Decompress::run(&dcfg(d.path()), &ctx())
            .await
            .expect("decompress");
        assert_eq!(out.files, 2);
        let m = Manifest::read(d.path()).expect("manifest");
        assert_eq!(m.files, sealed.files, "back to the sealed manifest");
        for f in &m.files {
            let again = stagehand_backup::entry::hash_file(d.path(), &f.path).expect("hash");
            assert_eq!(again.hash, f.hash, "{}", f.path);
        }
        assert!(stagehand_backup::manifest::unlisted_files(d.path(), &m.files).is_empty());
        // Nothing left to do.
        let again = Decompress::run(&dcfg(d.path()), &ctx())
            .await
            .expect("again");
        assert_eq!(again.files, 0);
    }

    /// Rewrites a sealed backup's manifest as stagehand wrote them before BLAKE3:
    /// SHA-256 hashes under the key `sha256`.
    fn record_as_before_blake3(dir: &Path) {
        let mut m = Manifest::read(dir).expect("manifest");
        for f in &mut m.files {
            let file = std::fs::File::open(dir.join(&f.path)).expect("open");
            let sha256 = stagehand_host::digest::hash_reader(file, ContentHasher::sha256());
            f.hash = sha256.expect("hash").1;
        }
        m.write(dir).expect("write");
        let path = dir.join(stagehand_backup::manifest::MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replace("\"hash\":", "\"sha256\":")).expect("write");
    }

    #[tokio::test]
    async fn a_backup_recorded_with_sha256_still_compresses_checks_and_decompresses() {
        let d = tempfile::tempdir().expect("tempdir");
        sample(d.path());
        record_as_before_blake3(d.path());
        let old = Manifest::read(d.path()).expect("an old manifest reads");
        assert!(
            old.files.iter().all(|f| f.hash.len() == 64),
            "SHA-256 records"
        );
        Compress::run(&cfg(d.path()), &ctx())
            .await
            .expect("compress an old backup");
        let cancel = tokio_util::sync::CancellationToken::new();
        let m = Manifest::read(d.path()).expect("manifest");
        stagehand_backup::check::check_files(d.path(), &m, &cancel, &|_| false)
            .expect("the old backup checks");
        Decompress::run(&dcfg(d.path()), &ctx())
            .await
            .expect("decompress");
        let m = Manifest::read(d.path()).expect("manifest");
        assert_eq!(m.files, old.files, "back to the old records");
        // A changed byte is still caught under an old record.
        let ibdata = d.path().join("ibdata1");
        let mut bytes = std::fs::read(&ibdata).expect("read");
        bytes[1000] ^= 1;
        std::fs::write(&ibdata, bytes).expect("write");
        let err = stagehand_backup::check::check_files(d.path(), &m, &cancel, &|_| false)
            .expect_err("a changed file");
        assert!(
            err.message.contains("ibdata1: its hash differs"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn a_damaged_object_is_named_and_its_file_not_written() {
        let d = tempfile::tempdir().expect("tempdir");
        sample(d.path());
        Compress::run(&cfg(d.path()), &ctx())
            .await
            .expect("compress");
        let obj = d.path().join("db/t.ibd.zst");
        let mut bytes = std::fs::read(&obj).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&obj, &bytes).expect("write");
        let e = Decompress::run(&dcfg(d.path()), &ctx())
            .await
            .expect_err("corrupt");
        assert!(e.message.contains("db/t.ibd.zst"), "{}", e.message);
        assert!(e.message.contains("corrupt"), "{}", e.message);
        assert!(!d.path().join("db/t.ibd").exists());
        assert!(!d.path().join("db/.t.ibd.tmp").exists());
        let m = Manifest::read(d.path()).expect("manifest");
        let t = m
            .files
            .iter()
            .find(|f| f.path == "db/t.ibd")
            .expect("t.ibd");
        assert!(t.stored.is_some(), "still recorded as stored");
    }

    #[tokio::test]
    async fn an_interrupted_run_is_finished() {
        let d = tempfile::tempdir().expect("tempdir");
        let sealed = sample(d.path());
        Compress::run(&cfg(d.path()), &ctx())
            .await
            .expect("compress");
        let compressed = std::fs::read(d.path().join("stagehand.json")).expect("manifest");
        let t_zst = std::fs::read(d.path().join("db/t.ibd.zst")).expect("object");
        Decompress::run(&dcfg(d.path()), &ctx())
            .await
            .expect("decompress");
        // A killed run's state: the compressed manifest; ibdata1 done (object gone),
        // t.ibd renamed into place but its object still there, a stale temporary file.
        std::fs::write(d.path().join("stagehand.json"), &compressed).expect("write");
        std::fs::write(d.path().join("db/t.ibd.zst"), &t_zst).expect("write");
        std::fs::write(d.path().join(".ibdata1.tmp"), b"partial").expect("write");
        let out = Decompress::run(&dcfg(d.path()), &ctx())
            .await
            .expect("resume");
        assert_eq!(out.files, 2);
        let m = Manifest::read(d.path()).expect("manifest");
        assert_eq!(m.files, sealed.files);
        assert!(stagehand_backup::manifest::unlisted_files(d.path(), &listed(&m)).is_empty());
        // A compress run left both forms while the manifest says plain: the object goes.
        std::fs::write(d.path().join("db/t.ibd.zst"), b"left over").expect("write");
        Decompress::run(&dcfg(d.path()), &ctx())
            .await
            .expect("cleanup");
        assert!(!d.path().join("db/t.ibd.zst").exists());
    }

    #[tokio::test]
    async fn an_unknown_codec_is_refused_before_anything_is_touched() {
        let d = tempfile::tempdir().expect("tempdir");
        sample(d.path());
        Compress::run(&cfg(d.path()), &ctx())
            .await
            .expect("compress");
        let mut m = Manifest::read(d.path()).expect("manifest");
        for f in m.files.iter_mut().filter(|f| f.path == "db/t.ibd") {
            if let Some(s) = f.stored.as_mut() {
                s.codec = "lz4".into();
            }
        }
        m.write(d.path()).expect("write");
        let e = Decompress::run(&dcfg(d.path()), &ctx())
            .await
            .expect_err("codec");
        assert!(
            e.message.contains("db/t.ibd") && e.message.contains("lz4"),
            "{}",
            e.message
        );
        assert!(d.path().join("ibdata1.zst").exists(), "nothing touched");
    }

    #[tokio::test]
    async fn a_file_gone_in_both_forms_is_named() {
        let d = tempfile::tempdir().expect("tempdir");
        sample(d.path());
        Compress::run(&cfg(d.path()), &ctx())
            .await
            .expect("compress");
        std::fs::remove_file(d.path().join("db/t.ibd.zst")).expect("rm");
        let e = Decompress::run(&dcfg(d.path()), &ctx())
            .await
            .expect_err("lost");
        assert!(e.message.contains("db/t.ibd"), "{}", e.message);
        assert!(d.path().join("ibdata1.zst").exists(), "nothing touched");
    }
}
