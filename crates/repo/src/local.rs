//! A repository in a local (or NFS-mounted) directory. Objects are files; each is
//! written under a temporary name, synced and renamed, so a key never names a partial
//! file.

use crate::files::{blocking, open_for_resume};
use crate::{ByteCounter, ObjectInfo, Store, StoreError};
use async_trait::async_trait;
use stagehand_host::digest::{algorithm_of, ContentHasher};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// Suffix of objects being written; never listed, removed by
/// [`Store::abort_incomplete_uploads`].
const PARTIAL: &str = ".stagehand-partial";

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        if key.split('/').any(|c| c == ".." || c == ".") || key.starts_with('/') {
            return Err(StoreError::config(format!(
                "object key `{key}` leaves the repository"
            )));
        }
        Ok(self.root.join(key))
    }
}

/// Copies `src` to `dest` through a temporary file; returns size and hash (by `hash`)
/// of what was written.
fn write_durably(
    dest: &Path,
    mut src: impl Read,
    mut hash: ContentHasher,
    progress: &ByteCounter,
) -> Result<(u64, String), StoreError> {
    let dir = dest
        .parent()
        .ok_or_else(|| StoreError::config(format!("{}: no parent directory", dest.display())))?;
    stagehand_host::private_fs::create_private_dir_all(dir)
        .map_err(|e| StoreError::io(&dir.display().to_string(), e))?;
    let tmp = PathBuf::from(format!("{}{PARTIAL}", dest.display()));
    let shown = tmp.display().to_string();
    let mut out = stagehand_host::private_fs::create_private_file(&tmp)
        .map_err(|e| StoreError::io(&shown, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(|e| StoreError::io("read", e))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            StoreError::io(&shown, e)
        })?;
        hash.update(&buf[..n]);
        size += n as u64;
        progress.fetch_add(n as u64, Ordering::Relaxed);
    }
    out.sync_all().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        StoreError::io(&shown, e)
    })?;
    std::fs::rename(&tmp, dest).map_err(|e| StoreError::io(&dest.display().to_string(), e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(&dir.display().to_string(), e))?;
    Ok((size, hash.finish()))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectInfo>) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(&dir.display().to_string(), e)),
    };
    for e in entries {
        let e = e.map_err(|e| StoreError::io(&dir.display().to_string(), e))?;
        let p = e.path();
        let meta = e
            .metadata()
            .map_err(|e| StoreError::io(&p.display().to_string(), e))?;
        if meta.is_dir() {
            walk(root, &p, out)?;
        } else if !p.to_string_lossy().ends_with(PARTIAL) {
            let key = p
                .strip_prefix(root)
                .map(|r| r.to_string_lossy().replace('\\', "/"))
                .unwrap_or_default();
            out.push(ObjectInfo {
                key,
                size: meta.len(),
            });
        }
    }
    Ok(())
}

#[async_trait]
impl Store for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn put_file(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        hash: &str,
        progress: &ByteCounter,
    ) -> Result<(), StoreError> {
        let dest = self.path_of(key)?;
        let src = path.to_path_buf();
        let expected = hash.to_string();
        let progress = progress.clone();
        blocking(move || {
            let input = std::fs::File::open(&src)
                .map_err(|e| StoreError::io(&src.display().to_string(), e))?;
            let (n, hash) = write_durably(&dest, input, ContentHasher::like(&expected), &progress)?;
            if n != size || hash != expected {
                let _ = std::fs::remove_file(&dest);
                return Err(StoreError::mismatch(format!(
                    "{}: wrote {n} bytes with {} {hash}, expected {size} bytes with {expected} (did the file change?)",
                    dest.display(),
                    algorithm_of(&expected)
                )));
            }
            Ok(())
        })
        .await
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let dest = self.path_of(key)?;
        blocking(move || {
            write_durably(
                &dest,
                bytes.as_slice(),
                ContentHasher::new(),
                &ByteCounter::default(),
            )
            .map(|_| ())
        })
        .await
    }

    async fn get_to_file(
        &self,
        key: &str,
        path: &Path,
        offset: u64,
        progress: &ByteCounter,
    ) -> Result<u64, StoreError> {
        let src = self.path_of(key)?;
        let dest = path.to_path_buf();
        let progress = progress.clone();
        blocking(move || {
            let shown = src.display().to_string();
            let mut input = std::fs::File::open(&src).map_err(|e| StoreError::io(&shown, e))?;
            input
                .seek(SeekFrom::Start(offset))
                .map_err(|e| StoreError::io(&shown, e))?;
            let dshown = dest.display().to_string();
            let mut out = open_for_resume(&dest, offset)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut size = offset;
            loop {
                let n = input
                    .read(&mut buf)
                    .map_err(|e| StoreError::io(&shown, e))?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])
                    .map_err(|e| StoreError::io(&dshown, e))?;
                size += n as u64;
                progress.fetch_add(n as u64, Ordering::Relaxed);
            }
            out.sync_all().map_err(|e| StoreError::io(&dshown, e))?;
            Ok(size)
        })
        .await
    }

    async fn get_to_writer(
        &self,
        key: &str,
        sink: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
        progress: &ByteCounter,
    ) -> Result<u64, StoreError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let src = self.path_of(key)?;
        let shown = src.display().to_string();
        let mut input = tokio::fs::File::open(&src)
            .await
            .map_err(|e| StoreError::io(&shown, e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = input
                .read(&mut buf)
                .await
                .map_err(|e| StoreError::io(&shown, e))?;
            if n == 0 {
                break;
            }
            sink.write_all(&buf[..n]).await.map_err(|e| {
                StoreError::permanent(format!("writing what was read from {shown}: {e}"))
            })?;
            size += n as u64;
            progress.fetch_add(n as u64, Ordering::Relaxed);
        }
        sink.flush().await.map_err(|e| {
            StoreError::permanent(format!("writing what was read from {shown}: {e}"))
        })?;
        Ok(size)
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let src = self.path_of(key)?;
        blocking(move || match std::fs::read(&src) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(&src.display().to_string(), e)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            let mut out = Vec::new();
            // Walk only the folder the prefix is in.
            let start = match prefix.rfind('/') {
                Some(i) => root.join(&prefix[..i]),
                None => root.clone(),
            };
            walk(&root, &start, &mut out)?;
            out.retain(|o| o.key.starts_with(&prefix));
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.path_of(prefix.trim_end_matches('/'))?;
        blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(StoreError::io(&dir.display().to_string(), e)),
            };
            let mut out: Vec<String> = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        let paths = keys
            .iter()
            .map(|k| self.path_of(k))
            .collect::<Result<Vec<_>, _>>()?;
        let root = self.root.clone();
        blocking(move || {
            for p in &paths {
                match std::fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io(&p.display().to_string(), e)),
                }
                // Empty folders go too (a deleted backup leaves no trace).
                let mut d = p.parent();
                while let Some(dir) = d {
                    if dir == root || std::fs::remove_dir(dir).is_err() {
                        break;
                    }
                    d = dir.parent();
                }
            }
            Ok(())
        })
        .await
    }

    async fn abort_incomplete_uploads(&self, prefix: &str) -> Result<u64, StoreError> {
        let root = self.root.clone();
        let start = self.path_of(prefix.trim_end_matches('/'))?;
        blocking(move || {
            let mut n = 0;
            let mut stack = vec![start];
            while let Some(d) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&d) else {
                    continue;
                };
                for e in entries.filter_map(|e| e.ok()) {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.to_string_lossy().ends_with(PARTIAL)
                        && std::fs::remove_file(&p).is_ok()
                    {
                        n += 1;
                    }
                }
            }
            let _ = root;
            Ok(n)
        })
        .await
    }
}
