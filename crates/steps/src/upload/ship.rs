//! Shipping one file of a backup to a repository: as it is, or compressed with zstd on
//! the way (through a scratch file beside the backup, removed once uploaded), and with
//! a key, encrypted after compression (`stagehand_repo::crypt`, through a scratch file).

use super::CompressOnUpload;
use stagehand_backup::codec::{HashingReader, HashingWriter};
use stagehand_backup::entry::CopiedFile;
use stagehand_backup::entry::{EncryptedObject, StoredForm};
use stagehand_backup::manifest::{Encryption, Manifest};
use stagehand_host::digest::{algorithm_of, ContentHasher};
use stagehand_repo::crypt::{self, Key};
use stagehand_repo::{ByteCounter, Repository, Store, StoreError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What was uploaded for one file of the backup.
#[derive(Debug, Clone)]
struct Shipped {
    /// Hash of the data, as the copy recorded it.
    hash: String,
    stored: Option<StoredForm>,
    encrypted: Option<EncryptedObject>,
}

/// Uploads files of one backup and remembers what went, so the manifest can say how
/// each file is stored.
#[derive(Clone)]
pub struct Shipper {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    dir: PathBuf,
    id: String,
    compress: Option<CompressOnUpload>,
    key: Option<Arc<Key>>,
    counter: ByteCounter,
    remove_local: bool,
    scratch: tempfile::TempDir,
    /// Files compressed or encrypted at once (the step's `parallel`). The upload of a
    /// file does not hold one: while some files wait on the network, others are encoded.
    encoders: tokio::sync::Semaphore,
    shipped: Mutex<HashMap<String, Shipped>>,
    /// One upload at a time per path: a file copied again (a reconcile, the Aria pass)
    /// is announced again, and its uploads must reach the key in the order announced.
    per_path: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Shipper {
    /// A shipper of the backup in `dir` as `id`, encoding `parallel` files at once; with
    /// `remove_local`, each local file is deleted once uploaded (streaming); with a key,
    /// every object is encrypted.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        dir: &Path,
        id: &str,
        compress: Option<CompressOnUpload>,
        key: Option<Arc<Key>>,
        counter: ByteCounter,
        remove_local: bool,
        parallel: usize,
    ) -> Result<Self, StoreError> {
        // Scratch for compressed files: beside the backup (same filesystem, and not
        // inside it, where seal would see unlisted files).
        let parent = dir.parent().unwrap_or(Path::new("/tmp"));
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::io(&parent.display().to_string(), e))?;
        let scratch = tempfile::Builder::new()
            .prefix(".stagehand-upload-")
            .tempdir_in(parent)
            .map_err(|e| StoreError::io(&parent.display().to_string(), e))?;
        Ok(Shipper {
            inner: Arc::new(Inner {
                store,
                dir: dir.to_path_buf(),
                id: id.to_string(),
                compress,
                key,
                counter,
                remove_local,
                scratch,
                encoders: tokio::sync::Semaphore::new(parallel.max(1)),
                shipped: Mutex::new(HashMap::new()),
                per_path: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn shipped(&self) -> std::sync::MutexGuard<'_, HashMap<String, Shipped>> {
        self.inner.shipped.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path_turn(&self, path: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self
            .inner
            .per_path
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        turns.entry(path.to_string()).or_default().clone()
    }

    /// Whether this version of the file (same hash) is already in the repository.
    pub fn has_shipped(&self, f: &CopiedFile) -> bool {
        self.shipped()
            .get(&f.path)
            .is_some_and(|s| s.hash == f.hash)
    }

    /// Uploads one file. A `Mismatch` error means the local file is not the data the
    /// record describes (it changed since): ship it again from a newer record.
    pub async fn ship(&self, f: &CopiedFile) -> Result<(), StoreError> {
        let turn = self.path_turn(&f.path);
        let _one_at_a_time = turn.lock().await;
        let inner = &self.inner;
        let local = inner.dir.join(&f.path);
        // What is on disk: the stored form when a copy wrote the file compressed.
        let on_disk = inner.dir.join(f.local_path());
        let stamp = stamp_of(&on_disk);
        let (stored, encrypted) = match &inner.key {
            Some(key) => self.ship_encrypted(f, key).await?,
            None => (self.ship_clear(f, &local).await?, None),
        };
        self.shipped().insert(
            f.path.clone(),
            Shipped {
                hash: f.hash.clone(),
                stored,
                encrypted,
            },
        );
        // Remove the local copy unless it was rewritten meanwhile (a later copy pass).
        if inner.remove_local && stamp.is_some() && stamp_of(&on_disk) == stamp {
            let _ = std::fs::remove_file(&on_disk);
        }
        Ok(())
    }

    /// Ships a file unencrypted: its stored form, compressed now, or as it is.
    async fn ship_clear(
        &self,
        f: &CopiedFile,
        local: &Path,
    ) -> Result<Option<StoredForm>, StoreError> {
        let inner = &self.inner;
        Ok(match (&f.stored, &inner.compress) {
            (Some(stored), _) => {
                self.put(
                    &stored.path,
                    &inner.dir.join(&stored.path),
                    stored.size,
                    &stored.hash,
                )
                .await?;
                Some(stored.clone())
            }
            (None, Some(c)) => {
                let (stored, tmp) = self.compress_to_scratch(f, c).await?;
                let put = self
                    .put(&stored.path, &tmp, stored.size, &stored.hash)
                    .await;
                let _ = std::fs::remove_file(&tmp);
                put?;
                Some(stored)
            }
            (None, None) => {
                self.put(&f.path, local, f.size, &f.hash).await?;
                None
            }
        })
    }

    /// Ships a file encrypted: its stored form (compressed by a step, or now) or the
    /// file itself goes through the cipher into a scratch file, then up.
    async fn ship_encrypted(
        &self,
        f: &CopiedFile,
        key: &Arc<Key>,
    ) -> Result<(Option<StoredForm>, Option<EncryptedObject>), StoreError> {
        let inner = &self.inner;
        let (stored, src, compressed) = match (&f.stored, &inner.compress) {
            (Some(s), _) => (Some(s.clone()), inner.dir.join(&s.path), None),
            (None, Some(c)) => {
                let (s, tmp) = self.compress_to_scratch(f, c).await?;
                (Some(s), tmp.clone(), Some(tmp))
            }
            (None, None) => (None, inner.dir.join(&f.path), None),
        };
        let (rel, size, recorded) = match &stored {
            Some(s) => (s.path.clone(), s.size, s.hash.clone()),
            None => (f.path.clone(), f.size, f.hash.clone()),
        };
        let object = format!("{rel}{}", crypt::SUFFIX);
        let dest = self.scratch_path(&object);
        let (k, o, d) = (key.clone(), object.clone(), dest.clone());
        let r = recorded.clone();
        let encoder = self.encoder_turn().await?;
        let sealed = tokio::task::spawn_blocking(move || encrypt_file(&k, &o, &src, &r, &d))
            .await
            .map_err(|e| StoreError::permanent(format!("an encryption task crashed: {e}")))?;
        drop(encoder);
        if let Some(tmp) = compressed {
            let _ = std::fs::remove_file(tmp);
        }
        let result = match sealed {
            Ok((n, sha, _, _)) if n != size || sha != recorded => Err(StoreError::mismatch(format!(
                "{rel}: changed since it was copied ({n} bytes, {} {sha}; recorded {size} bytes, {recorded})",
                algorithm_of(&recorded)
            ))),
            Ok((_, _, out_size, out_sha)) => self
                .put(&object, &dest, out_size, &out_sha)
                .await
                .map(|()| EncryptedObject {
                    path: object.clone(),
                    size: out_size,
                    hash: out_sha,
                }),
            // A file gone since announced stays NotFound: shipped at the end, if listed.
            Err(crypt::CryptError::Io { path, source }) => Err(StoreError::io(&path, source)),
            Err(e) => Err(StoreError::permanent(e.to_string())),
        };
        let _ = std::fs::remove_file(&dest);
        Ok((stored, Some(result?)))
    }

    /// Waits for one of the `parallel` encoding turns.
    async fn encoder_turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        self.inner
            .encoders
            .acquire()
            .await
            .map_err(|_| StoreError::permanent("the upload's encoders are closed"))
    }

    /// A scratch file for the object at `path`.
    fn scratch_path(&self, path: &str) -> PathBuf {
        self.inner.scratch.path().join(path.replace('/', "%2F"))
    }

    async fn put(&self, path: &str, local: &Path, size: u64, hash: &str) -> Result<(), StoreError> {
        let key = Repository::object_key(&self.inner.id, path);
        self.inner
            .store
            .put_file(&key, local, size, hash, &self.inner.counter)
            .await
    }

    /// Compresses a file into a scratch file; its stored form and the scratch file.
    async fn compress_to_scratch(
        &self,
        f: &CopiedFile,
        c: &CompressOnUpload,
    ) -> Result<(StoredForm, PathBuf), StoreError> {
        let src = self.inner.dir.join(&f.path);
        let stored_path = format!("{}.zst", f.path);
        let tmp = self.scratch_path(&stored_path);
        let (level, threads, dest) = (c.level, c.threads, tmp.clone());
        let recorded = f.hash.clone();
        let encoder = self.encoder_turn().await?;
        let sizes = tokio::task::spawn_blocking(move || {
            compress_to(&src, &recorded, &dest, level, threads)
        })
        .await
        .map_err(|e| StoreError::permanent(format!("a compression task crashed: {e}")))?
        .map_err(|e| StoreError::io(&format!("compressing {}", f.path), e));
        drop(encoder);
        let (in_size, in_sha, out_size, out_sha) = match sizes {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if in_size != f.size || in_sha != f.hash {
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError::mismatch(format!(
                "{}: changed since it was copied ({in_size} bytes, {} {in_sha}; recorded {} bytes, {})",
                f.path,
                algorithm_of(&f.hash),
                f.size,
                f.hash
            )));
        }
        let stored = StoredForm {
            path: stored_path,
            codec: "zstd".into(),
            size: out_size,
            hash: out_sha,
        };
        Ok((stored, tmp))
    }

    /// `manifest` with every file's stored form as shipped; an error if a file was not
    /// shipped (in this version).
    pub fn stored_manifest(&self, manifest: &Manifest) -> Result<Manifest, StoreError> {
        let shipped = self.shipped();
        let mut out = manifest.clone();
        for f in &mut out.files {
            match shipped.get(&f.path) {
                Some(s) if s.hash == f.hash => {
                    f.stored = s.stored.clone();
                    f.encrypted = s.encrypted.clone();
                }
                _ => {
                    return Err(StoreError::mismatch(format!(
                        "{} was not uploaded in the version the manifest lists",
                        f.path
                    )))
                }
            }
        }
        out.encryption = self.inner.key.as_ref().map(|k| Encryption {
            scheme: crypt::SCHEME.into(),
            key_id: k.id(),
        });
        Ok(out)
    }
}

/// Files shipped at once for a step with `parallel`: twice as many as are encoded at
/// once, so that the cores keep compressing while uploads wait on the network. Their
/// part buffers share the repository's `buffer_memory`, and at most this many compressed
/// files wait in the scratch directory.
pub fn files_in_flight(parallel: usize) -> usize {
    parallel.max(1) * 2
}

/// Size and modification time, to tell whether a file was rewritten.
fn stamp_of(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Encrypts `src` (recorded with hash `recorded`) into `dest` as the object `object`;
/// sizes and hashes of both (the input's in the algorithm of `recorded`).
fn encrypt_file(
    key: &Key,
    object: &str,
    src: &Path,
    recorded: &str,
    dest: &Path,
) -> Result<(u64, String, u64, String), crypt::CryptError> {
    let io = |source| crypt::CryptError::Io {
        path: object.to_string(),
        source,
    };
    let mut input = HashingReader::new(
        std::fs::File::open(src).map_err(io)?,
        ContentHasher::like(recorded),
    );
    let mut out = HashingWriter::new(
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(dest).map_err(io)?),
        ContentHasher::new(),
    );
    crypt::encrypt(key, object, &mut input, &mut out)?;
    let (writer, out_size, out_sha) = out.finish();
    writer.into_inner().map_err(|e| io(e.into_error()))?;
    let (in_size, in_sha) = input.digest();
    Ok((in_size, in_sha, out_size, out_sha))
}

/// Compresses `src` (recorded with hash `recorded`) into `dest`; sizes and hashes of
/// both (the input's in the algorithm of `recorded`).
fn compress_to(
    src: &Path,
    recorded: &str,
    dest: &Path,
    level: i32,
    threads: u32,
) -> std::io::Result<(u64, String, u64, String)> {
    let hashed = HashingReader::new(std::fs::File::open(src)?, ContentHasher::like(recorded));
    let mut input = std::io::BufReader::with_capacity(1 << 20, hashed);
    let out = HashingWriter::new(
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(dest)?),
        ContentHasher::new(),
    );
    let mut encoder = stagehand_backup::codec::zstd_encoder(out, level, threads)?;
    std::io::copy(&mut input, &mut encoder)?;
    let (writer, out_size, out_sha) = encoder.finish()?.finish();
    writer.into_inner().map_err(|e| e.into_error())?;
    let (in_size, in_sha) = input.into_inner().digest();
    Ok((in_size, in_sha, out_size, out_sha))
}
