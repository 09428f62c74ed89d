//! Checking a backup's files against its manifest: each file's size and hash, the
//! page checksums of InnoDB files (of the data, also when stored compressed) and that
//! no file is there that the manifest does not list, and the LSNs. `verify` and `prepare`
//! both run it.

use crate::codec::StoredReader;
use crate::entry::CopiedFile;
use crate::manifest::Manifest;
use stagehand_engine::StepError;
use stagehand_host::digest::{hash_file_like, ContentHasher};
use stagehand_innodb::page::{check_page_at, PageStatus, SpaceFormat};
use stagehand_mariadb::datadir::FileClass;
use std::io::Read;
use std::path::Path;

/// Checks a backup's files against its manifest: each file's size, hash and InnoDB
/// page checksums, and that no file is missing from it. `skip(path)` leaves a file out
/// (prepare's rerun skips the files an interrupted crash recovery already rewrote).
/// `prepare` runs the same check before it changes anything.
pub fn check_files(
    dir: &Path,
    m: &Manifest,
    cancel: &tokio_util::sync::CancellationToken,
    skip: &dyn Fn(&str) -> bool,
) -> Result<(u64, u64), StepError> {
    if let Some(f) = m.files.iter().find(|f| f.encrypted.is_some()) {
        let e = crate::codec::check_codec(f)
            .err()
            .map(|e| e.into_step_error());
        return Err(e.unwrap_or_else(|| StepError::fatal("encrypted")));
    }
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
                } else if sha != f.hash {
                    bad.push(format!("{}: its hash differs from the manifest", shown(f)));
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

/// The LSNs must be in order, and an unprepared backup's log must hold exactly the
/// bytes from the checkpoint to the last LSN.
pub fn check_lsns(dir: &Path, m: &Manifest) -> Result<(), StepError> {
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
        let expected = stagehand_innodb::redo::START_OFFSET + (l.last - l.checkpoint);
        if size != expected {
            return Err(StepError::fatal(format!(
                "ib_logfile0 holds {size} bytes; the LSNs say {expected}"
            )));
        }
    }
    Ok(())
}

/// Checks the encrypted objects of a backup as its repository holds them (a local
/// repository's backup folder), without the key: each object's size and hash (of the
/// encrypted bytes), and that nothing else is there. Returns the bytes hashed. The data
/// inside (page checksums) can be checked only once fetched with the key.
pub fn check_encrypted_objects(
    dir: &Path,
    m: &Manifest,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<u64, StepError> {
    let mut bytes = 0;
    let mut bad = Vec::new();
    for f in &m.files {
        if cancel.is_cancelled() {
            return Err(StepError::cancelled());
        }
        let Some(e) = &f.encrypted else {
            bad.push(format!("{}: not encrypted, in an encrypted backup", f.path));
            continue;
        };
        match hash_file_like(&dir.join(&e.path), &e.hash) {
            Err(err) => bad.push(format!("{}: {err}", e.path)),
            Ok((size, _)) if size != e.size => {
                bad.push(format!("{}: size {size}, manifest says {}", e.path, e.size))
            }
            Ok((_, sha)) if sha != e.hash => {
                bad.push(format!("{}: its hash differs from the manifest", e.path))
            }
            Ok((size, _)) => bytes += size,
        }
    }
    for extra in crate::manifest::unlisted_files(dir, &as_stored(&m.files)) {
        bad.push(format!("{extra}: not in the manifest"));
    }
    if bad.is_empty() {
        return Ok(bytes);
    }
    Err(StepError::fatal(format!(
        "{} problem(s) in the encrypted backup {}: {}",
        bad.len(),
        dir.display(),
        bad.iter().take(10).cloned().collect::<Vec<_>>().join("; ")
    ))
    .with_hint("the backup is damaged: do not restore it; take a new backup"))
}

/// How a file is named in errors: with its stored object when stored compressed.
pub fn shown(f: &CopiedFile) -> String {
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
            path: f
                .encrypted
                .as_ref()
                .map_or_else(|| f.local_path().to_string(), |e| e.path.clone()),
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
    crate::codec::check_codec(f).map_err(std::io::Error::other)?;
    Ok(match &f.stored {
        Some(s) => Data::Stored(Box::new(StoredReader::open(
            &dir.join(&s.path),
            ContentHasher::like(&s.hash),
        )?)),
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
/// object's size and hash (read to its end).
fn check_file(
    dir: &Path,
    f: &CopiedFile,
    pages: bool,
    system: Option<SpaceFormat>,
) -> std::io::Result<(u64, String, u64, Option<u64>)> {
    let mut data = open_data(dir, f)?;
    let result = hash_and_check(
        &mut data,
        ContentHasher::like(&f.hash),
        pages,
        f.class,
        system,
    )?;
    if let (Data::Stored(r), Some(s)) = (data, &f.stored) {
        let (size, sha) = r.finish()?;
        if size != s.size {
            return Err(std::io::Error::other(format!(
                "the stored object holds {size} bytes, the manifest says {}",
                s.size
            )));
        }
        if sha != s.hash {
            return Err(std::io::Error::other(
                "the stored object's hash differs from the manifest",
            ));
        }
    }
    Ok(result)
}

/// Hashes a file and, for tablespaces, checks each page; returns the first bad page.
fn hash_and_check(
    data: &mut impl Read,
    mut h: ContentHasher,
    pages: bool,
    class: FileClass,
    system: Option<SpaceFormat>,
) -> std::io::Result<(u64, String, u64, Option<u64>)> {
    // Page 0 gives the format: read it first, then hash it with the rest.
    let mut head = vec![0u8; 65536];
    let n = read_full(data, &mut head)?;
    head.truncate(n);
    let mut f = std::io::Cursor::new(&head).chain(data);
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
    Ok((size, h.finish(), page_no, corrupt))
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
