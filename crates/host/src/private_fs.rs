//! Files and directories only their owner can read.
//!
//! A backup holds every row of the server and the password hashes of
//! `mysql.global_priv`; so do its spool, a fetched copy, a local repository and a
//! restored datadir. None of them may be readable by another local user, whatever umask
//! the caller runs with. Two layers keep them private:
//! - the CLI sets the process umask to 077 before anything else ([`restrict_umask`]), so
//!   no write path can forget it;
//! - the directories a run creates or claims as the root of what it writes are made
//!   0700 explicitly ([`create_private_dir_all`], [`make_private_dir`]): a private root
//!   hides everything below it, also when the library is used without the CLI.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the directories stagehand creates.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the files stagehand creates.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// The umask that gives both modes above.
pub const PRIVATE_UMASK: u32 = 0o077;

/// Makes every file and directory this process (and the servers it starts) creates
/// private to its user. Returns the umask it replaces.
pub fn restrict_umask() -> u32 {
    // SAFETY: umask(2) only swaps the process's file mode creation mask; it cannot
    // fail and touches no memory. The CLI calls it before starting any thread.
    let old = unsafe { libc::umask(PRIVATE_UMASK as libc::mode_t) };
    old as u32
}

/// Creates `dir` and its missing ancestors with mode 0700.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Creates `dir` if missing, and makes it 0700 either way (a directory a run has just
/// claimed as the root of a backup, a fetch or a repository).
pub fn make_private_dir(dir: &Path) -> io::Result<()> {
    create_private_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
}

/// Creates (or truncates) a file with mode 0600.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
}

/// Writes `data` to a new or truncated file of mode 0600.
pub fn write_private(path: &Path, data: impl AsRef<[u8]>) -> io::Result<()> {
    use std::io::Write;
    create_private_file(path)?.write_all(data.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("metadata").mode() & 0o777
    }

    #[test]
    fn created_directories_and_files_are_private_whatever_the_umask() {
        let d = tempfile::tempdir().expect("tempdir");
        let deep = d.path().join("a/b/c");
        create_private_dir_all(&deep).expect("mkdir");
        for dir in [d.path().join("a"), d.path().join("a/b"), deep.clone()] {
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        }
        let file = deep.join("f");
        write_private(&file, b"secret").expect("write");
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn an_existing_open_directory_is_made_private() {
        let d = tempfile::tempdir().expect("tempdir");
        let open = d.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        make_private_dir(&open).expect("make private");
        assert_eq!(mode(&open), 0o700);
    }
}
