//! What `fetch` with `decompress: true` does with an object while it downloads. The
//! bytes are hashed as they arrive (the object's record), decrypted when the backup is
//! encrypted (the stored form's record), decompressed (the data's record) and written
//! to a temporary file beside the file. That file is synced and renamed into place
//! only when all of them match the manifest. No compressed or encrypted copy ever
//! reaches the disk, and nothing is read twice.

use stagehand_backup::codec::{sync_parent, tmp_path, HashingReader, HashingWriter};
use stagehand_backup::entry::CopiedFile;
use stagehand_host::digest::{algorithm_of, ContentHasher};
use stagehand_repo::crypt::{self, Key};
use stagehand_repo::StoreError;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Read and write size of the pipeline.
const BUF: usize = 1 << 20;

/// One file to unpack: where its data goes and the records each form must match.
#[derive(Debug, Clone)]
pub(super) struct Unpack {
    /// The object the repository holds (path, size, hash).
    pub object: (String, u64, String),
    /// The file's data as the manifest records it.
    pub file: CopiedFile,
}

impl Unpack {
    pub fn new(object: (String, u64, String), file: CopiedFile) -> Self {
        Self { object, file }
    }

    /// Where the data goes in `dir`.
    pub fn dest(&self, dir: &Path) -> PathBuf {
        dir.join(&self.file.path)
    }
}

/// The blocking half: reads the object from `input` (the download) until its end and
/// writes the file. `failed` is set before `input` is dropped on an error, so the
/// download can tell that its write failed because of this side.
pub(super) fn unpack(
    input: impl Read,
    key: Option<&Key>,
    dir: &Path,
    job: &Unpack,
    failed: &AtomicBool,
) -> Result<(), StoreError> {
    let tmp = tmp_path(dir, &job.file.path);
    let result = unpack_into(input, key, job, &tmp).and_then(|()| {
        let dest = job.dest(dir);
        std::fs::rename(&tmp, &dest).map_err(|e| StoreError::io(&dest.display().to_string(), e))?;
        sync_parent(&dest).map_err(|e| StoreError::io(&dest.display().to_string(), e))
    });
    if result.is_err() {
        failed.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes the checked and synced data of the object into `tmp`.
fn unpack_into(
    input: impl Read,
    key: Option<&Key>,
    job: &Unpack,
    tmp: &Path,
) -> Result<(), StoreError> {
    let f = &job.file;
    let (object, object_size, object_hash) = &job.object;
    let at_tmp = |e: io::Error| StoreError::io(&tmp.display().to_string(), e);
    if let Some(parent) = tmp.parent() {
        std::fs::create_dir_all(parent).map_err(at_tmp)?;
    }
    let data = HashingWriter::new(
        BufWriter::with_capacity(BUF, File::create(tmp).map_err(at_tmp)?),
        ContentHasher::like(&f.hash),
    );
    let mut sink = match &f.stored {
        Some(_) => DataSink::Zstd(zstd::stream::write::Decoder::new(data).map_err(at_tmp)?),
        None => DataSink::Plain(data),
    };
    let mut reader = HashingReader::new(input, ContentHasher::like(object_hash));
    let bad = |what: String| {
        StoreError::mismatch(format!("{object} is corrupt in the repository: {what}"))
    };
    // A local failure (disk full…) carries an OS error; anything else is the data's.
    let failed = |e: io::Error| match e.raw_os_error() {
        Some(_) => at_tmp(e),
        None => bad(e.to_string()),
    };
    match (&f.encrypted, key) {
        (Some(_), Some(key)) => {
            // The decrypted bytes are the stored form (or the data when not compressed).
            let (stored_size, stored_hash) = stored_record(f);
            let mut stored = HashingWriter::new(&mut sink, ContentHasher::like(stored_hash));
            crypt::decrypt(key, object, &mut reader, &mut stored).map_err(|e| match e {
                crypt::CryptError::Io { source, .. } => failed(source),
                e => bad(e.to_string()),
            })?;
            let (_, n, hash) = stored.finish();
            check(n, &hash, stored_size, stored_hash, "decrypted").map_err(&bad)?;
        }
        (Some(_), None) => {
            return Err(StoreError::config(format!(
                "{object}: encrypted, and no key"
            )))
        }
        (None, _) => {
            pump(&mut reader, &mut sink).map_err(failed)?;
        }
    }
    // The rest of the body (none, for a well-formed object) still counts in its hash.
    io::copy(&mut reader, &mut io::sink()).map_err(failed)?;
    let (n, hash) = reader.digest();
    check(n, &hash, *object_size, object_hash, "downloaded").map_err(&bad)?;
    let (file, n, hash) = sink.finish().map_err(failed)?;
    check(
        n,
        &hash,
        f.size,
        &f.hash,
        &format!("decompressed into {}", f.path),
    )
    .map_err(&bad)?;
    file.sync_all().map_err(at_tmp)
}

/// Size and hash of what decrypting the object gives.
fn stored_record(f: &CopiedFile) -> (u64, &str) {
    match &f.stored {
        Some(s) => (s.size, s.hash.as_str()),
        None => (f.size, f.hash.as_str()),
    }
}

/// A description of the difference, or nothing when size and hash match.
fn check(size: u64, hash: &str, want_size: u64, want: &str, what: &str) -> Result<(), String> {
    if size != want_size {
        return Err(format!(
            "{what}: {size} bytes, the manifest says {want_size}"
        ));
    }
    if hash != want {
        return Err(format!(
            "{what}: its {} differs from the manifest's",
            algorithm_of(want)
        ));
    }
    Ok(())
}

/// Copies with a large buffer (`io::copy` moves 8 KiB at a time).
fn pump(from: &mut impl Read, to: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

type DataWriter = HashingWriter<BufWriter<File>>;

/// Where the stored form goes: straight into the file, or through the decoder.
enum DataSink {
    Plain(DataWriter),
    Zstd(zstd::stream::write::Decoder<'static, DataWriter>),
}

impl DataSink {
    /// Ends the data: the file, bytes written and their hash.
    fn finish(self) -> io::Result<(File, u64, String)> {
        let data = match self {
            DataSink::Plain(w) => w,
            DataSink::Zstd(mut d) => {
                d.flush()?;
                d.into_inner()
            }
        };
        let (buffered, n, hash) = data.finish();
        let file = buffered.into_inner().map_err(|e| e.into_error())?;
        Ok((file, n, hash))
    }
}

impl Write for DataSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            DataSink::Plain(w) => w.write(buf),
            DataSink::Zstd(d) => d.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            DataSink::Plain(w) => w.flush(),
            DataSink::Zstd(d) => d.flush(),
        }
    }
}
