//! Replacing a file so that a reader sees the old file or the whole new one, never half
//! of it: write a temporary file beside it, then rename it over the old one.

use std::io::Write;
use std::path::{Path, PathBuf};

/// How a [`write_atomic`] is made: whether it survives a power cut, and the file's mode.
#[derive(Debug, Clone, Copy)]
pub struct AtomicOptions {
    sync: bool,
    mode: Option<u32>,
}

impl AtomicOptions {
    /// Synced before and after the rename (file and directory): the write survives a
    /// crash of the machine. For manifests and anything a later run trusts.
    pub fn durable() -> Self {
        Self {
            sync: true,
            mode: None,
        }
    }
    /// Not synced: for files written while the server is blocked, where a crash loses
    /// the whole run anyway and every millisecond counts.
    pub fn unsynced() -> Self {
        Self {
            sync: false,
            mode: None,
        }
    }
    /// Sets the new file's permission bits whatever the process umask.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }
}

/// `<dir>/.<name>.tmp`: hidden, and never matching a reader's `*.json` or `*.prom`.
fn tmp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `bytes` to `path` through a temporary file and a rename; on failure the
/// temporary file is removed (a full disk leaves nothing half-written behind).
pub fn write_atomic(path: &Path, bytes: &[u8], opts: AtomicOptions) -> std::io::Result<()> {
    let tmp = tmp_beside(path);
    let result = write_then_rename(&tmp, path, bytes, opts);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_then_rename(
    tmp: &Path,
    path: &Path,
    bytes: &[u8],
    opts: AtomicOptions,
) -> std::io::Result<()> {
    let mut f = std::fs::File::create(tmp)?;
    if let Some(mode) = opts.mode {
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    }
    f.write_all(bytes)?;
    if opts.sync {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(tmp, path)?;
    if opts.sync {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.json");
        write_atomic(&p, b"one", AtomicOptions::durable()).unwrap();
        write_atomic(&p, b"two", AtomicOptions::unsynced().mode(0o644)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing-dir").join("m.json");
        assert!(write_atomic(&p, b"x", AtomicOptions::durable()).is_err());
        assert!(!p.exists());
    }
}
