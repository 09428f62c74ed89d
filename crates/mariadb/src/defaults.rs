//! Reading a server's options files (my.cnf) as the server would: through
//! `my_print_defaults`, which knows `!include`, `!includedir` and option groups.

use crate::sandbox::binaries::find_binary;
use std::collections::BTreeMap;
use std::path::Path;

/// An options file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct DefaultsError {
    pub file: String,
    pub message: String,
}

/// The server's options (`[mysqld]` and its kin, as `my_print_defaults --mysqld` gives
/// them) from a my.cnf: the last one wins, names with `_`.
pub fn read_server_options(file: &Path) -> Result<BTreeMap<String, String>, DefaultsError> {
    let err = |message: String| DefaultsError {
        file: file.display().to_string(),
        message,
    };
    if !file.is_file() {
        return Err(err("no such file".into()));
    }
    let bin = find_binary("my_print_defaults")
        .or_else(|| find_binary("mariadb-print-defaults"))
        .ok_or_else(|| {
            err("my_print_defaults not found (apt-get install mariadb-client)".into())
        })?;
    let out = std::process::Command::new(&bin)
        .arg(format!("--defaults-file={}", file.display()))
        .arg("--mysqld")
        .output()
        .map_err(|e| err(format!("cannot run {}: {e}", bin.display())))?;
    if !out.status.success() {
        return Err(err(format!(
            "my_print_defaults failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_server_options(&String::from_utf8_lossy(&out.stdout)))
}

pub fn parse_server_options(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("--"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().replace('-', "_"), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_my_print_defaults() {
        let m = parse_server_options(
            "--datadir=/var/lib/mysql\n--innodb-undo-directory=undo\n--skip-log-bin\n--datadir=/srv/db\n",
        );
        assert_eq!(m.get("datadir").map(String::as_str), Some("/srv/db"));
        assert_eq!(
            m.get("innodb_undo_directory").map(String::as_str),
            Some("undo")
        );
    }
}
