//! The manifest's entry for one file of a backup: what was copied, its hash, where it
//! came from and how it is stored.

use serde::{Deserialize, Serialize};
use stagehand_engine::StepError;
use stagehand_mariadb::datadir::FileClass;
use std::path::Path;

/// What the manifest records of each copied file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CopiedFile {
    pub path: String,
    pub class: FileClass,
    pub size: u64,
    /// The data's hash (`stagehand_host::digest`: BLAKE3, or SHA-256 in manifests
    /// written before it, whose key was `sha256`).
    #[serde(alias = "sha256")]
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space_id: Option<u32>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pages: u64,
    /// Pages that failed their checksum at first and were read again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reread_pages: u64,
    /// Pages kept as read without a check (page-compressed legacy format, doublewrite
    /// area, a tablespace whose page 0 is not written yet).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unverified_pages: u64,
    /// The source file as it was when copied, to tell later whether it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceStamp>,
    /// How the file is stored when it is not stored as is (compressed): its object's
    /// path, codec, size and hash. `size` and `hash` above stay those of the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<StoredForm>,
    /// A tablespace of a table with DATA DIRECTORY: the absolute path it was copied
    /// from (its `.isl` names it), where `copy_back` puts it back by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// The object a repository holds for this file when its backup is encrypted (of the
    /// stored form when there is one): path, size and hash of the encrypted bytes.
    /// A fetch decrypts it back into the stored form (or the file) and drops this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<EncryptedObject>,
}

impl CopiedFile {
    /// Where the file is in a local backup directory: its stored form when it has one
    /// (compressed by `compress`, or by a streamed copy), else its own path.
    pub fn local_path(&self) -> &str {
        self.stored.as_ref().map_or(&self.path, |s| &s.path)
    }
}

/// An encrypted object in a repository (see `stagehand_repo::crypt`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EncryptedObject {
    /// Path of the object, relative to the backup (`ibdata1.zst.enc`).
    pub path: String,
    pub size: u64,
    #[serde(alias = "sha256")]
    pub hash: String,
}

/// How one file of a backup is stored when not as is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredForm {
    /// Path of the stored object, relative to the backup (`ibdata1.zst`).
    pub path: String,
    /// `zstd`.
    pub codec: String,
    pub size: u64,
    #[serde(alias = "sha256")]
    pub hash: String,
}

/// Identity and modification time of a source file at copy time.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceStamp {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    /// When the copy read it (ns since the epoch).
    pub copied_ns: i128,
}

impl SourceStamp {
    pub fn of(meta: &std::fs::Metadata, copied_ns: i128) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            copied_ns,
        }
    }

    /// Whether the file is certainly unchanged since this stamp: same inode, size and
    /// mtime, and it had not been modified for a second before it was copied (file
    /// times are coarse, so a write right after a recent one could keep the same mtime).
    pub fn still_matches(&self, meta: &std::fs::Metadata) -> bool {
        self.still_matches_stamp(&Self::of(meta, 0))
    }

    /// [`Self::still_matches`] against a stamp taken now (`copied_ns` is not read).
    pub fn still_matches_stamp(&self, now: &SourceStamp) -> bool {
        now.ino == self.ino
            && now.size == self.size
            && now.mtime_ns == self.mtime_ns
            && self.copied_ns - self.mtime_ns > 1_000_000_000
    }
}

pub fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The entry of a file kept as is (not an InnoDB tablespace): its size and hash.
pub fn hash_file(dir: &Path, rel: &str) -> Result<CopiedFile, StepError> {
    let path = dir.join(rel);
    let (size, hash) = stagehand_host::digest::hash_file(&path)
        .map_err(|e| StepError::fatal(format!("{}: {e}", path.display())))?;
    Ok(plain_entry(rel, size, hash))
}

/// The entry of a file kept as is, of known size and hash.
pub fn plain_entry(rel: &str, size: u64, hash: String) -> CopiedFile {
    CopiedFile {
        path: rel.to_string(),
        class: FileClass::NonInnodb,
        size,
        hash,
        space_id: None,
        pages: 0,
        reread_pages: 0,
        unverified_pages: 0,
        source: None,
        stored: None,
        remote: None,
        encrypted: None,
    }
}
