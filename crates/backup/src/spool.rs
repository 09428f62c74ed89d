//! Streaming a backup out while it is being taken: when a following `upload` has marked
//! the directory (`streaming_marker`), the copy steps announce each file they finish in a
//! ledger inside the backup directory (`.stagehand/ready/<step>.jsonl`,
//! one `CopiedFile` per line); a following `upload` reads the ledgers, ships each file
//! (compressed) and deletes the local copy. A copy given `max_spool` waits before
//! starting a file while the files it announced and that are still on disk exceed it,
//! which bounds the scratch space a streamed backup needs.
//!
//! The ledger is a file rather than an in-memory channel so a follower needs nothing
//! but the directory, and what was announced can be inspected after a failure.
//!
//! The marker holds what the follower asks of the copies (`SpoolRequest`): when it
//! compresses and deletes what it ships, the copies write InnoDB files compressed
//! (`<path>.zst`, recorded as the file's stored form) as they copy them. The bytes then
//! reach the spool once, compressed, and the follower ships them as they are, instead of
//! reading the whole copy back from disk to compress it.

use crate::codec::ZstdSettings;
use crate::entry::CopiedFile;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

fn ready_dir(target: &Path) -> PathBuf {
    crate::dir::BackupDir::new(target).ready()
}

/// Marks a backup directory whose files leave as they are finished (so seal does not
/// expect them to stay on disk).
pub fn streaming_marker(target: &Path) -> PathBuf {
    crate::dir::BackupDir::new(target).streaming_marker()
}

pub fn is_streaming(target: &Path) -> bool {
    streaming_marker(target).exists()
}

/// What a following upload asks of the copies that feed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolRequest {
    /// Write InnoDB files compressed, with these settings.
    pub compress: Option<ZstdSettings>,
}

/// Marks `target` as streamed: its files leave as they are finished.
pub fn mark_streaming(target: &Path, request: &SpoolRequest) -> std::io::Result<()> {
    let marker = streaming_marker(target);
    if let Some(dir) = marker.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let body = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    std::fs::write(marker, body)
}

/// The follower's request when `target` is streamed (an empty or unreadable marker, as
/// older runs wrote, asks for nothing); None when it is not.
pub fn streaming_request(target: &Path) -> Option<SpoolRequest> {
    let body = std::fs::read(streaming_marker(target)).ok()?;
    Some(serde_json::from_slice(&body).unwrap_or_default())
}

/// Appends one finished file to the step's ledger.
pub fn announce(target: &Path, step: &str, file: &CopiedFile) -> std::io::Result<()> {
    let dir = ready_dir(target);
    std::fs::create_dir_all(&dir)?;
    let mut line = serde_json::to_vec(file).map_err(std::io::Error::other)?;
    line.push(b'\n');
    // One write of a whole line with O_APPEND: readers never see half a line from a
    // complete write, and they ignore a trailing partial one.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{step}.jsonl")))?
        .write_all(&line)
}

/// Reads the ledgers of a directory incrementally.
#[derive(Default)]
pub struct LedgerReader {
    offsets: HashMap<PathBuf, u64>,
}

impl LedgerReader {
    /// The files announced since the last call (a ledger missing is not an error: seal
    /// removes them when it finishes).
    pub fn poll(&mut self, target: &Path) -> Vec<CopiedFile> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(ready_dir(target)) else {
            return out;
        };
        let mut ledgers: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        ledgers.sort();
        for ledger in ledgers {
            let offset = self.offsets.entry(ledger.clone()).or_default();
            let Ok(mut f) = std::fs::File::open(&ledger) else {
                continue;
            };
            if f.seek(SeekFrom::Start(*offset)).is_err() {
                continue;
            }
            let mut reader = std::io::BufReader::new(f);
            let mut line = String::new();
            while let Ok(n) = reader.read_line(&mut line) {
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                *offset += n as u64;
                if let Ok(file) = serde_json::from_str::<CopiedFile>(&line) {
                    out.push(file);
                }
                line.clear();
            }
        }
        out
    }
}

/// Bounds the bytes a copy step has announced and that are still on disk.
pub struct SpoolGate {
    limit: u64,
    target: PathBuf,
    held: Mutex<Vec<(String, u64)>>,
}

impl SpoolGate {
    pub fn new(target: &Path, limit: u64) -> Self {
        SpoolGate {
            limit,
            target: target.to_path_buf(),
            held: Mutex::new(Vec::new()),
        }
    }

    /// Records a file the copy finished.
    pub fn add(&self, path: &str, size: u64) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((path.to_string(), size));
    }

    /// Waits until `next` more bytes fit (always lets a file through when nothing is
    /// held, so a file larger than the limit still goes). False when cancelled.
    pub fn wait_for_room(&self, next: u64, cancel: &AtomicBool) -> bool {
        let mut waited = false;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return false;
            }
            let held = self.held_bytes();
            if held == 0 || held + next <= self.limit {
                if waited {
                    tracing::debug!(held, "spool has room again");
                }
                return true;
            }
            if !waited {
                tracing::debug!(
                    held,
                    limit = self.limit,
                    "spool full: waiting for the upload"
                );
                waited = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn held_bytes(&self) -> u64 {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|(path, _)| self.target.join(path).exists());
        held.iter().map(|(_, size)| size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_carries_the_followers_request_and_an_empty_one_asks_for_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(streaming_request(dir.path()), None, "not streamed");
        let request = SpoolRequest {
            compress: Some(ZstdSettings {
                level: 3,
                threads: 1,
            }),
        };
        mark_streaming(dir.path(), &request).expect("mark");
        assert!(is_streaming(dir.path()));
        assert_eq!(streaming_request(dir.path()), Some(request));
        // The marker of a run of an older build is empty.
        std::fs::write(streaming_marker(dir.path()), b"").expect("write");
        assert_eq!(streaming_request(dir.path()), Some(SpoolRequest::default()));
    }
}
