//! Compressed backups: a real hot backup of a throwaway server (`plans/full-backup.yaml`,
//! `--set prepare=false`), then small plans with `compress`, `verify` and `decompress`
//! through the CLI. Checked: the manifest's stored forms against the objects on disk,
//! the originals gone, a flipped byte of one object named by verify, the round trip back
//! to the sealed files, `prepare` on the decompressed directory, and a compress run
//! finishing what an interrupted one left.

use crate::cli::{stagehand, Run};
use crate::support::{report_of, unprepared_backup_args, write_plan};
use serde_json::Value;
use stagehand_backup::codec::StoredReader;
use stagehand_backup::entry::hash_file;
use stagehand_backup::entry::CopiedFile;
use stagehand_backup::manifest::{Manifest, MANIFEST_FILE};
use stagehand_testkit::TestServer;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A server with the binary log on (the backup records a GTID position) and some data:
/// InnoDB tables that compress well and less well, an Aria and a MyISAM table.
async fn server_with_data(name: &str, rows: u64) -> TestServer {
    let server = TestServer::builder()
        .name(name)
        .runtime_option("log-bin", Some("binlog"))
        .runtime_option("server-id", Some("1"))
        .start()
        .await;
    for sql in [
        "CREATE DATABASE app".to_string(),
        "CREATE TABLE app.big (id INT PRIMARY KEY, pad VARCHAR(4000) NOT NULL) ENGINE=InnoDB"
            .into(),
        format!(
            "INSERT INTO app.big SELECT seq, REPEAT(CHAR(65 + seq % 26), 4000) FROM app.seq_1_to_{rows}"
        ),
        "CREATE TABLE app.hashes (id INT PRIMARY KEY, h CHAR(64) NOT NULL) ENGINE=InnoDB".into(),
        format!("INSERT INTO app.hashes SELECT seq, SHA2(seq, 256) FROM app.seq_1_to_{}", rows * 4),
        "CREATE TABLE app.aria (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=Aria".into(),
        "INSERT INTO app.aria SELECT seq, MD5(seq) FROM app.seq_1_to_2000".into(),
        "CREATE TABLE app.isam (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=MyISAM".into(),
        "INSERT INTO app.isam SELECT seq, MD5(seq) FROM app.seq_1_to_2000".into(),
    ] {
        server.exec(&sql).await;
    }
    server
}

/// `plans/full-backup.yaml` into `<work>/backup`, verified, not prepared.
fn take_backup(server: &TestServer, work: &Path) -> PathBuf {
    let t0 = Instant::now();
    let (dir, args) = unprepared_backup_args(server, work);
    let r = stagehand(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 0, "backup failed:\n{}\n{}", r.stdout, r.stderr);
    eprintln!("backup taken in {:.1} s", t0.elapsed().as_secs_f64());
    dir
}

/// Writes a plan of `steps` (YAML, indented for the `steps:` list) with a `dir` param.
fn plan(work: &Path, name: &str, steps: &str) -> PathBuf {
    let text = format!(
        "version: 1\nname: {name}\nparams:\n  dir: {{type: path, required: true}}\nsteps:\n{steps}"
    );
    write_plan(work, name, &text)
}

fn run_plan(work: &Path, plan: &Path, dir: &Path) -> (Run, Value) {
    let t0 = Instant::now();
    let r = stagehand(&[
        "run",
        &plan.display().to_string(),
        "--set",
        &format!("dir={}", dir.display()),
        "--state-dir",
        &work.join("state").display().to_string(),
        "--json",
    ]);
    eprintln!(
        "{}: exit {} in {:.1} s",
        plan.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        r.code,
        t0.elapsed().as_secs_f64()
    );
    let report = report_of(&r.stdout);
    (r, report)
}

fn outputs<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .map_or(&Value::Null, |s| &s["outputs"])
}

struct Plans {
    compress_verify: PathBuf,
    compress: PathBuf,
    verify: PathBuf,
    decompress: PathBuf,
}

fn plans(work: &Path) -> Plans {
    let compress = "  - id: compress\n    uses: compress\n    with: {dir: \"{{params.dir}}\", level: 3, parallel: 2}\n";
    Plans {
        compress_verify: plan(
            work,
            "compress-verify",
            &format!("{compress}  - id: verify\n    uses: verify\n    needs: [compress]\n    with: {{target: \"{{{{params.dir}}}}\", restore: true}}\n"),
        ),
        compress: plan(work, "compress", compress),
        verify: plan(
            work,
            "verify",
            "  - id: verify\n    uses: verify\n    with: {target: \"{{params.dir}}\"}\n",
        ),
        decompress: plan(
            work,
            "decompress",
            "  - id: decompress\n    uses: decompress\n    with: {dir: \"{{params.dir}}\", parallel: 2}\n",
        ),
    }
}

/// Asserts every stored form matches its object on disk and the original is gone, and
/// the data facts are the sealed ones; the number of files stored compressed.
fn assert_stored_forms(dir: &Path, sealed: &Manifest) -> usize {
    let m = Manifest::read(dir).expect("the manifest after compress");
    assert_eq!(m.files.len(), sealed.files.len());
    let mut stored = 0;
    for (f, s) in m.files.iter().zip(&sealed.files) {
        assert_eq!((&f.path, f.size, &f.hash), (&s.path, s.size, &s.hash));
        let Some(form) = &f.stored else {
            assert!(dir.join(&f.path).is_file(), "{} kept as is", f.path);
            continue;
        };
        stored += 1;
        assert_eq!(form.codec, "zstd");
        assert_eq!(form.path, format!("{}.zst", f.path));
        let on_disk = hash_file(dir, &form.path).expect("hash the object");
        assert_eq!(
            (on_disk.size, &on_disk.hash),
            (form.size, &form.hash),
            "{}",
            form.path
        );
        assert!(
            !dir.join(&f.path).exists(),
            "{}: the original is gone",
            f.path
        );
    }
    stored
}

/// Asserts the directory holds exactly the sealed files, plain, with their hashes.
fn assert_sealed_files(dir: &Path, sealed: &Manifest) {
    let m = Manifest::read(dir).expect("the manifest after decompress");
    assert_eq!(
        m.files, sealed.files,
        "the manifest is the sealed one again"
    );
    for f in &sealed.files {
        let h = hash_file(dir, &f.path).expect("hash");
        assert_eq!((h.size, &h.hash), (f.size, &f.hash), "{}", f.path);
        assert!(!dir.join(format!("{}.zst", f.path)).exists());
    }
}

/// XORs one byte of a file.
fn flip(path: &Path, at: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.read_exact(&mut b).expect("read");
    b[0] ^= 0x20;
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&b).expect("write");
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_backup_verifies_flags_a_flipped_byte_and_decompresses_to_the_sealed_files() {
    let server = server_with_data("compress-roundtrip", 6000).await;
    let work = tempfile::tempdir().expect("tempdir");
    let dir = take_backup(&server, work.path());
    let sealed = Manifest::read(&dir).expect("sealed manifest");
    let p = plans(work.path());

    // compress, then verify with a test restore of the compressed backup.
    let (r, report) = run_plan(work.path(), &p.compress_verify, &dir);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let c = outputs(&report, "compress");
    eprintln!(
        "compress: {} files, {} -> {} bytes, ratio {}, {} s, {} MB/s; verify restored {} tables",
        c["files"],
        c["bytes_in"],
        c["bytes_out"],
        c["ratio"],
        c["seconds"],
        c["mb_per_s"],
        outputs(&report, "verify")["tables"]
    );
    assert_eq!(c["bytes_in"].as_u64(), Some(sealed.data_bytes()));
    assert!(c["ratio"].as_f64().unwrap_or(0.0) > 2.0, "{c}");
    assert!(outputs(&report, "verify")["tables"].as_u64().unwrap_or(0) >= 4);
    let stored = assert_stored_forms(&dir, &sealed);
    let m = Manifest::read(&dir).expect("manifest");
    for must in ["ibdata1", "ib_logfile0", "app/big.ibd", "app/hashes.ibd"] {
        let f = m.files.iter().find(|f| f.path == must).expect(must);
        assert!(f.stored.is_some(), "{must} is stored compressed");
    }
    assert!(stored as u64 >= c["files"].as_u64().unwrap_or(u64::MAX));
    assert_eq!(m.stored_bytes(), c["stored_bytes"].as_u64().unwrap_or(0));

    // One flipped byte in one object: verify fails and names it.
    let victim = dir.join("app/hashes.ibd.zst");
    let mid = std::fs::metadata(&victim).expect("object").len() / 2;
    flip(&victim, mid);
    let (r, report) = run_plan(work.path(), &p.verify, &dir);
    assert_eq!(r.code, 1, "verify fails:\n{}\n{}", r.stdout, r.stderr);
    eprintln!(
        "verify of the damaged backup: {}",
        report["steps"][0]["error"]
    );
    assert!(
        r.stdout.contains("app/hashes.ibd.zst") || r.stderr.contains("app/hashes.ibd.zst"),
        "the error names the object:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    flip(&victim, mid);
    let (r, _) = run_plan(work.path(), &p.verify, &dir);
    assert_eq!(
        r.code, 0,
        "verify passes again:\n{}\n{}",
        r.stdout, r.stderr
    );

    // Back to the sealed files.
    let (r, report) = run_plan(work.path(), &p.decompress, &dir);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let d = outputs(&report, "decompress");
    eprintln!(
        "decompress: {} files, {} -> {} bytes, {} s, {} MB/s",
        d["files"], d["bytes_in"], d["bytes_out"], d["seconds"], d["mb_per_s"]
    );
    assert_eq!(d["files"].as_u64(), Some(stored as u64));
    assert_sealed_files(&dir, &sealed);

    // And the decompressed directory prepares.
    let r = stagehand(&[
        "run",
        "plans/prepare.yaml",
        "--set",
        &format!("target={}", dir.display()),
        "--state-dir",
        &work.path().join("state").display().to_string(),
        "--json",
    ]);
    assert_eq!(r.code, 0, "prepare:\n{}\n{}", r.stdout, r.stderr);
    let prepared = Manifest::read(&dir).expect("prepared manifest");
    assert!(prepared.prepared.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_compress_is_finished_by_running_it_again() {
    let server = server_with_data("compress-resume", 1500).await;
    let work = tempfile::tempdir().expect("tempdir");
    let dir = take_backup(&server, work.path());
    let sealed_text = std::fs::read(dir.join(MANIFEST_FILE)).expect("manifest");
    let sealed = Manifest::read(&dir).expect("sealed manifest");
    let p = plans(work.path());
    let (r, _) = run_plan(work.path(), &p.compress, &dir);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let done = Manifest::read(&dir).expect("manifest");
    let stored: Vec<&CopiedFile> = done.files.iter().filter(|f| f.stored.is_some()).collect();
    assert!(
        stored.len() >= 6,
        "{} files stored compressed",
        stored.len()
    );

    // A killed run's state: the manifest still the sealed one, and the files in every
    // state a run goes through — not started (original, a partial temporary file),
    // compressed but the original not yet removed (both), and finished (object only).
    std::fs::write(dir.join(MANIFEST_FILE), &sealed_text).expect("write manifest");
    for (i, f) in stored.iter().enumerate() {
        let obj = dir.join(format!("{}.zst", f.path));
        match i % 3 {
            0 => {
                unpack(&obj, &dir.join(&f.path));
                std::fs::remove_file(&obj).expect("rm object");
                std::fs::write(tmp_of(&obj), b"partial zstd frame").expect("write tmp");
            }
            1 => unpack(&obj, &dir.join(&f.path)),
            _ => {}
        }
    }
    let (r, _) = run_plan(work.path(), &p.verify, &dir);
    assert_eq!(r.code, 1, "the half-done directory does not verify");

    let (r, report) = run_plan(work.path(), &p.compress, &dir);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    eprintln!("compress run again: {}", outputs(&report, "compress"));
    assert_eq!(assert_stored_forms(&dir, &sealed), stored.len());
    assert_eq!(Manifest::read(&dir).expect("manifest").files, done.files);
    let (r, _) = run_plan(work.path(), &p.verify, &dir);
    assert_eq!(r.code, 0, "verify:\n{}\n{}", r.stdout, r.stderr);
    let (r, _) = run_plan(work.path(), &p.decompress, &dir);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_sealed_files(&dir, &sealed);
}

/// `dir/.name.tmp` of a path, as the steps name their temporary files.
fn tmp_of(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{}.tmp", name.unwrap_or_default()))
}

/// Decompresses an object into a file.
fn unpack(obj: &Path, to: &Path) {
    let hasher = stagehand_host::digest::ContentHasher::new();
    let mut r = StoredReader::open(obj, hasher).expect("open object");
    let mut out = std::fs::File::create(to).expect("create");
    std::io::copy(&mut r, &mut out).expect("decompress");
}
