//! Finding the server's binaries (`mariadbd`, `mariadb-backup`): an explicit path, the
//! build chosen by `STAGEHAND_MARIADB_BIN`, `PATH`, then the usual install directories;
//! and asking a binary for its version.

use super::SandboxError;
use crate::version::parse_server_version;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

/// The environment variable naming a directory of server binaries (`mariadbd`,
/// `mariadb-install-db`, `mariadb-backup`) searched before `PATH` by [`find_binary`].
pub const SERVER_BIN_ENV: &str = "STAGEHAND_MARIADB_BIN";

/// Directories searched (after `PATH`) by [`find_binary`].
pub const FALLBACK_BIN_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/usr/local/mysql/bin"];

/// Looks for an executable `name` in `$STAGEHAND_MARIADB_BIN`, `PATH`, then in
/// [`FALLBACK_BIN_DIRS`].
/// A `name` containing `/` is checked as a path.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return is_executable(&path).then_some(path);
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    // A chosen server build (the tests' version matrix; a host with several series)
    // comes before PATH.
    let chosen = std::env::var_os(SERVER_BIN_ENV).map(PathBuf::from);
    chosen
        .into_iter()
        .chain(path_dirs)
        .chain(FALLBACK_BIN_DIRS.iter().map(PathBuf::from))
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub(super) fn resolve_explicit_binary(path: &Path) -> Result<PathBuf, SandboxError> {
    let found = if path.components().count() > 1 {
        is_executable(path).then(|| path.to_path_buf())
    } else {
        find_binary(&path.to_string_lossy())
    };
    found.ok_or_else(|| SandboxError::BinaryNotFound {
        name: path.display().to_string(),
    })
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs `<binary> --no-defaults --version` and returns the version number,
/// e.g. `10.11.19` for `mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu`.
pub async fn server_version(binary: impl AsRef<Path>) -> Result<String, SandboxError> {
    let binary = binary.as_ref();
    let output = Command::new(binary)
        .arg("--no-defaults")
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| SandboxError::io(format!("cannot run {} --version", binary.display()), e))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    // mariadbd prints its version on stdout, mariadb-backup on stderr.
    let errors = String::from_utf8_lossy(&output.stderr).into_owned();
    parse_server_version(&text)
        .or_else(|| parse_server_version(&errors))
        .ok_or_else(|| SandboxError::Version {
            binary: binary.to_path_buf(),
            output: if text.trim().is_empty() { errors } else { text },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh() {
        assert!(find_binary("sh").is_some());
        assert!(find_binary("definitely-not-a-binary-xyz").is_none());
        assert!(find_binary("/nonexistent/mariadbd").is_none());
    }
}
