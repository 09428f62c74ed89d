//! The binlog archive of a repository: segments of the server's binary log under
//! `binlogs/segments/`, each an object (`<seq>.binlog.zst`, `.zst.enc` when the
//! repository encrypts) and its metadata (`<seq>.json`), written after the object. A
//! segment without metadata is an interrupted upload and does not count. Positions
//! are opaque text here (the GTID positions of the server, canonical form): segments
//! chain when each one starts exactly where the one before ended.

use crate::crypt::{self, Key};
use crate::{Store, StoreError};
use serde::{Deserialize, Serialize};
use stagehand_host::digest::{algorithm_of, hash_bytes, ContentHasher};
use std::sync::Arc;

/// The folder of the archive, beside the backups' folders (never a backup id).
pub const BINLOGS_DIR: &str = "binlogs";
const SEGMENTS: &str = "binlogs/segments/";
const HEARTBEAT: &str = "binlogs/heartbeat.json";
const META_EXT: &str = ".json";
/// zstd level of segments: binlogs compress well at the default level.
const ZSTD_LEVEL: i32 = 3;

/// What the archive records about one segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub format: u32,
    /// 1, 2, 3…: the order of the archive.
    pub seq: u64,
    /// The object's key, relative to the repository root.
    pub object: String,
    /// Bytes of the object as stored (compressed, encrypted).
    pub stored_bytes: u64,
    /// Bytes of the segment (a binlog file) and their hash (`stagehand_host::digest`).
    pub size: u64,
    #[serde(alias = "sha256")]
    pub hash: String,
    /// The position before the first transaction and after the last one.
    pub start_state: String,
    pub end_state: String,
    pub first_gtid: String,
    pub last_gtid: String,
    /// Transactions in the segment.
    pub groups: u64,
    /// Event times of the first and last transaction, and the latest of all (times
    /// are not in commit order), in seconds since the epoch, UTC.
    pub first_time: u64,
    pub last_time: u64,
    pub max_time: u64,
    /// Times a domain's sequence number went up by more than one inside the segment.
    #[serde(default)]
    pub seq_jumps: u64,
    pub source: SegmentSource,
    /// The id of the key the object is encrypted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// When the archiver wrote it (RFC 3339, UTC).
    pub archived_at: String,
}

/// Where a segment's transactions came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentSource {
    pub server_id: u32,
    pub version: String,
    /// The server's binlog file.
    pub binlog_file: String,
}

impl SegmentMeta {
    pub const FORMAT: u32 = 1;

    /// The object key of segment `seq`.
    pub fn object_key(seq: u64, encrypted: bool) -> String {
        let enc = if encrypted { ".enc" } else { "" };
        format!("{SEGMENTS}{seq:010}.binlog.zst{enc}")
    }

    fn meta_key(seq: u64) -> String {
        format!("{SEGMENTS}{seq:010}{META_EXT}")
    }
}

/// A segment's object as stored (zstd, then encrypted with `key`), with the hash of
/// `plain`.
pub fn encode(
    plain: &[u8],
    object_key: &str,
    key: Option<&Key>,
) -> Result<(Vec<u8>, String), StoreError> {
    let sha = hash_bytes(plain);
    let compressed = zstd::encode_all(plain, ZSTD_LEVEL)
        .map_err(|e| StoreError::permanent(format!("compressing a binlog segment: {e}")))?;
    let object = match key {
        Some(k) => crypt::encrypt_bytes(k, object_key, &compressed)
            .map_err(|e| StoreError::permanent(format!("encrypting a binlog segment: {e}")))?,
        None => compressed,
    };
    Ok((object, sha))
}

/// The archiver's word that, at `at`, the archive held everything the server had
/// written: it rewrites this when the server says it is idle (and at the end of a
/// catch-up), so an archive that gets no new segment because nothing happens is
/// told apart from one whose archiver stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Seconds since the epoch, UTC.
    pub at: u64,
    /// The archive's end position then.
    pub end_state: String,
}

/// Segments whose start is not the end of the segment before.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gap {
    /// The segment before the gap, and where it ended.
    pub after_seq: u64,
    pub ended_at: String,
    /// The segment after it, and where it starts.
    pub next_seq: u64,
    pub starts_at: String,
}

/// What the archive holds, in order.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub segments: Vec<SegmentMeta>,
    /// Objects without metadata (interrupted uploads).
    pub orphans: Vec<String>,
}

impl Listing {
    /// The places where the chain of positions breaks.
    pub fn gaps(&self) -> Vec<Gap> {
        self.segments
            .windows(2)
            .filter(|w| w[0].end_state != w[1].start_state)
            .map(|w| Gap {
                after_seq: w[0].seq,
                ended_at: w[0].end_state.clone(),
                next_seq: w[1].seq,
                starts_at: w[1].start_state.clone(),
            })
            .collect()
    }

    pub fn last(&self) -> Option<&SegmentMeta> {
        self.segments.last()
    }
}

/// The archive of a repository's store.
pub struct BinlogArchive {
    store: Arc<dyn Store>,
    url: String,
}

impl BinlogArchive {
    pub fn new(store: Arc<dyn Store>) -> Self {
        let url = store.location();
        BinlogArchive { store, url }
    }

    /// Opens a repository and lists its archive: what every step that reads or writes
    /// the archive starts with.
    pub async fn open_listed(
        cfg: &crate::RepoConfig,
    ) -> Result<(crate::Repository, BinlogArchive, Listing), StoreError> {
        let repo = crate::Repository::open(cfg).await?;
        let archive = BinlogArchive::new(repo.store().clone());
        let listing = archive.list().await?;
        Ok((repo, archive, listing))
    }

    /// Every segment with metadata, in order, and the objects without.
    pub async fn list(&self) -> Result<Listing, StoreError> {
        let objects = self.store.list(SEGMENTS).await?;
        let mut listing = Listing::default();
        let mut objects_seen = Vec::new();
        for o in &objects {
            if o.key.ends_with(META_EXT) {
                listing.segments.push(self.meta(&o.key).await?);
            } else {
                objects_seen.push(o.key.clone());
            }
        }
        listing.segments.sort_by_key(|m| m.seq);
        listing.orphans = objects_seen
            .into_iter()
            .filter(|k| !listing.segments.iter().any(|m| &m.object == k))
            .collect();
        Ok(listing)
    }

    async fn meta(&self, key: &str) -> Result<SegmentMeta, StoreError> {
        let shown = format!("{}/{key}", self.url);
        let bytes = self
            .store
            .get_bytes(key)
            .await?
            .ok_or_else(|| StoreError::not_found(format!("{shown}: gone while listing")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::mismatch(format!("{shown}: not segment metadata: {e}")))
    }

    /// Stores a segment: the object, then its metadata (which makes it count).
    pub async fn put(&self, meta: &SegmentMeta, object: Vec<u8>) -> Result<(), StoreError> {
        self.store.put_bytes(&meta.object, object).await?;
        let json = serde_json::to_vec_pretty(meta)
            .map_err(|e| StoreError::permanent(format!("segment metadata: {e}")))?;
        self.store
            .put_bytes(&SegmentMeta::meta_key(meta.seq), json)
            .await
    }

    /// Reads a segment's object as stored.
    pub async fn get(&self, meta: &SegmentMeta) -> Result<Vec<u8>, StoreError> {
        self.store.get_bytes(&meta.object).await?.ok_or_else(|| {
            StoreError::not_found(format!(
                "{}/{}: segment {} is listed but its object is missing",
                self.url, meta.object, meta.seq
            ))
        })
    }

    /// Reads a segment back as the binlog file it was: decrypted, decompressed and
    /// checked against its hash.
    pub async fn read(&self, meta: &SegmentMeta, key: Option<&Key>) -> Result<Vec<u8>, StoreError> {
        let shown = format!("{}/{}", self.url, meta.object);
        let stored = self.get(meta).await?;
        let compressed = match (key, &meta.key_id) {
            (Some(k), Some(_)) => crypt::decrypt_bytes(k, &meta.object, &stored)
                .map_err(|e| StoreError::mismatch(format!("{shown}: {e}")))?,
            (None, Some(id)) => {
                return Err(StoreError::config(format!(
                    "{shown} is encrypted (key id {id}): give the repository's encryption key"
                )))
            }
            (_, None) => stored,
        };
        let plain = zstd::decode_all(compressed.as_slice())
            .map_err(|e| StoreError::mismatch(format!("{shown}: not a zstd object: {e}")))?;
        let mut hasher = ContentHasher::like(&meta.hash);
        hasher.update(&plain);
        let sha = hasher.finish();
        if plain.len() as u64 != meta.size || sha != meta.hash {
            return Err(StoreError::mismatch(format!(
                "{shown}: corrupt: {} bytes with {} {sha}, the metadata says {} bytes with {}",
                plain.len(),
                algorithm_of(&meta.hash),
                meta.size,
                meta.hash
            )));
        }
        Ok(plain)
    }

    /// Records that the archive is complete up to now, at `end_state`.
    pub async fn put_heartbeat(&self, beat: &Heartbeat) -> Result<(), StoreError> {
        let json = serde_json::to_vec(beat)
            .map_err(|e| StoreError::permanent(format!("heartbeat: {e}")))?;
        self.store.put_bytes(HEARTBEAT, json).await
    }

    /// The last heartbeat, if any (a damaged one counts as none).
    pub async fn heartbeat(&self) -> Result<Option<Heartbeat>, StoreError> {
        Ok(self
            .store
            .get_bytes(HEARTBEAT)
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Until when the archive is known to hold every transaction: the latest of the
    /// last heartbeat (when it is about the archive's current end) and the last
    /// archived transaction's time. `None` for an empty archive.
    pub fn complete_until(listing: &Listing, beat: Option<&Heartbeat>) -> Option<u64> {
        let last = listing.last()?;
        let beat_at = beat
            .filter(|b| b.end_state == last.end_state)
            .map_or(0, |b| b.at);
        Some(beat_at.max(last.max_time))
    }

    /// Deletes a segment: its metadata first (it stops counting), then its object.
    pub async fn delete(&self, meta: &SegmentMeta) -> Result<(), StoreError> {
        self.store
            .delete(&[SegmentMeta::meta_key(meta.seq)])
            .await?;
        self.store.delete(std::slice::from_ref(&meta.object)).await
    }

    /// Deletes objects without metadata (what an interrupted upload left).
    pub async fn delete_orphans(&self, listing: &Listing) -> Result<(), StoreError> {
        if listing.orphans.is_empty() {
            return Ok(());
        }
        tracing::info!(
            objects = listing.orphans.len(),
            "deleting segments of interrupted uploads"
        );
        self.store.delete(&listing.orphans).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::LocalStore;

    fn meta(seq: u64, start: &str, end: &str) -> SegmentMeta {
        SegmentMeta {
            format: SegmentMeta::FORMAT,
            seq,
            object: SegmentMeta::object_key(seq, false),
            stored_bytes: 3,
            size: 3,
            hash: String::new(),
            start_state: start.into(),
            end_state: end.into(),
            first_gtid: String::new(),
            last_gtid: String::new(),
            groups: 1,
            first_time: 0,
            last_time: 0,
            max_time: 0,
            seq_jumps: 0,
            source: SegmentSource {
                server_id: 1,
                version: "10.11".into(),
                binlog_file: "binlog.000001".into(),
            },
            key_id: None,
            archived_at: String::new(),
        }
    }

    #[tokio::test]
    async fn segments_list_in_order_with_gaps_and_interrupted_uploads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = BinlogArchive::new(Arc::new(LocalStore::new(dir.path())));
        archive
            .put(&meta(2, "0-1-5", "0-1-9"), b"two".to_vec())
            .await
            .expect("put");
        archive
            .put(&meta(1, "", "0-1-5"), b"one".to_vec())
            .await
            .expect("put");
        archive
            .put(&meta(3, "0-1-10", "0-1-12"), b"three".to_vec())
            .await
            .expect("put");
        archive
            .store
            .put_bytes(&SegmentMeta::object_key(4, false), b"torn".to_vec())
            .await
            .expect("orphan");
        let listing = archive.list().await.expect("list");
        let seqs: Vec<u64> = listing.segments.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(listing.orphans, [SegmentMeta::object_key(4, false)]);
        let gaps = listing.gaps();
        assert_eq!(gaps.len(), 1);
        assert_eq!((gaps[0].after_seq, gaps[0].ended_at.as_str()), (2, "0-1-9"));
        assert_eq!(
            archive.get(&listing.segments[0]).await.expect("get"),
            b"one"
        );
        archive.delete_orphans(&listing).await.expect("delete");
        assert!(archive.list().await.expect("list").orphans.is_empty());
    }

    #[tokio::test]
    async fn the_archive_folder_is_never_a_backup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path()));
        let archive = BinlogArchive::new(store.clone());
        archive
            .put(&meta(1, "", "0-1-5"), b"one".to_vec())
            .await
            .expect("put");
        store
            .put_bytes("20261207T000000Z/ibdata1", b"data".to_vec())
            .await
            .expect("a backup's object");
        let ids: Vec<String> = crate::Repository::from_store(store)
            .backups()
            .await
            .expect("backups")
            .into_iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(ids, ["20261207T000000Z"]);
        assert!(crate::check_backup_id(BINLOGS_DIR).is_err());
    }
}
