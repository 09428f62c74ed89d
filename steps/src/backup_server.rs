//! Starting a private server on a backup directory: what `prepare` (crash recovery
//! applies the copied redo, then a slow shutdown) and `verify` (a test restore) share.
//! The server never touches the network, the grant tables or the host's /tmp.
//!
//! It runs with `--skip-grant-tables`, reachable only through a socket in a 0700
//! directory owned by the user running stagehand (the socket itself 0600): only that
//! user (and root) can connect, and they can read the backup's files anyway. The grant
//! tables stay off on purpose: `verify` runs CHECK TABLE and counts rows in every table
//! without knowing any password of the backup's accounts (a one-off `--init-file`
//! account would be written into the files being prepared), and the same option keeps
//! the backup's installed plugins, UDFs (`mysql.plugin`, `mysql.func`) and events from
//! being loaded or run while its files are being recovered.

use crate::sandbox::{SandboxOptions, SandboxServer};
use stagehand_engine::StepError;
use std::path::{Path, PathBuf};

/// The `[mysqld]` settings of a backup's `backup-my.cnf` that a server started on it
/// must share with the source (page size, system and undo tablespaces).
pub fn backup_my_cnf_options(dir: &Path) -> Result<Vec<(String, Option<String>)>, StepError> {
    let path = dir.join("backup-my.cnf");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| StepError::fatal(format!("cannot read {}: {e}", path.display())))?;
    const KEEP: &[&str] = &[
        "innodb_page_size",
        "innodb_data_file_path",
        "innodb_undo_tablespaces",
        "innodb_log_file_size",
        "innodb_compression_level",
    ];
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| KEEP.contains(&k.as_str()))
        .map(|(k, v)| (k, Some(v)))
        .collect())
}

/// A short private directory for the socket and logs (socket paths are limited to
/// 107 bytes, so not under the backup directory).
pub fn run_dir() -> Result<tempfile::TempDir, StepError> {
    use std::os::unix::fs::PermissionsExt;
    // Created 0700 (no chmod window): nobody else may reach the socket.
    tempfile::Builder::new()
        .prefix("stagehand-srv")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in("/tmp")
        .map_err(|e| StepError::fatal(format!("cannot create a run directory in /tmp: {e}")))
}

/// Starts `mariadbd` on `datadir` with the backup's settings; `memory` sizes the buffer
/// pool used for recovery.
pub async fn start_on(
    datadir: &Path,
    run_dir: &Path,
    memory: u64,
    binary: Option<PathBuf>,
) -> Result<SandboxServer, StepError> {
    let mut opts = SandboxOptions::new(datadir, run_dir)
        .skip_grant_tables(true)
        .options(backup_my_cnf_options(datadir)?)
        .option(
            "innodb_undo_directory",
            Some(&datadir.display().to_string()),
        )
        .option("innodb_buffer_pool_size", Some(&memory.to_string()))
        // A copy must not write binary logs or start replication of its own.
        .option("skip-log-bin", None)
        .start_timeout(std::time::Duration::from_secs(3600));
    if let Some(b) = binary {
        opts = opts.binary(b);
    }
    SandboxServer::start(opts).await.map_err(|e| {
        let tail = e.log_tail().map(|t| format!("\n{t}")).unwrap_or_default();
        StepError::fatal(format!(
            "the server did not start on {}: {e}{tail}",
            datadir.display()
        ))
    })
}

/// A sandbox `mariadbd` left running on `datadir` by an earlier run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftServer {
    pub pid: u32,
    /// Its parent: 1 (or a subreaper) when its stagehand is gone.
    pub parent: u32,
    /// Whether the parent is a live stagehand (a prepare running now).
    pub parent_is_stagehand: bool,
}

/// Sandbox servers running on `datadir`: processes whose executable is mariadbd (or
/// mysqld) started as the sandbox starts them (`--no-defaults` first, then
/// `--datadir=` this directory). Found through /proc, so no pid file is needed: the
/// process is visible from the moment it exists.
pub fn servers_on(datadir: &Path) -> Vec<LeftServer> {
    let Ok(wanted) = std::fs::canonicalize(datadir) else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && is_sandbox_on(pid, &wanted))
        .filter_map(|pid| {
            let parent = parent_of(pid)?;
            Some(LeftServer {
                pid,
                parent,
                parent_is_stagehand: parent > 1 && same_program_as_me(parent),
            })
        })
        .collect()
}

fn is_sandbox_on(pid: u32, datadir: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let is_server = |arg: &&[u8]| {
        let name = arg.rsplit(|b| *b == b'/').next().unwrap_or_default();
        name.starts_with(b"mariadbd") || name.starts_with(b"mysqld")
    };
    // The program is the first argument, or a later one when a loader runs it
    // (`ld-linux.so --library-path … mariadbd`, as a server build outside the
    // system's libraries is started).
    let Some(program) = args.iter().take(4).position(is_server) else {
        return false;
    };
    if args.get(program + 1) != Some(&b"--no-defaults".as_slice()) {
        return false;
    }
    args.iter().any(|a| {
        a.strip_prefix(b"--datadir=")
            .and_then(|d| std::fs::canonicalize(String::from_utf8_lossy(d).as_ref()).ok())
            .is_some_and(|d| d == datadir)
    })
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

fn same_program_as_me(pid: u32) -> bool {
    let exe = |p: &str| std::fs::read_link(format!("/proc/{p}/exe")).ok();
    matches!((exe(&pid.to_string()), exe("self")), (Some(a), Some(b)) if a == b)
}

/// Kills a sandbox server an interrupted run left on `datadir` (it would hold the
/// files' locks: "Can't lock aria control file"), and waits until it is gone. A server
/// whose stagehand is still running is another prepare at work: an error.
pub async fn reclaim_left_servers(datadir: &Path) -> Result<(), StepError> {
    for left in servers_on(datadir) {
        if left.parent_is_stagehand {
            return Err(StepError::fatal(format!(
                "another stagehand (pid {}) is running a server (pid {}) on {}",
                left.parent,
                left.pid,
                datadir.display()
            ))
            .with_hint("wait for that run to finish, or stop it, then run prepare again"));
        }
        tracing::warn!(pid = left.pid, parent = left.parent, datadir = %datadir.display(), "killing a server an interrupted run left on the backup");
        // SAFETY: kill(2) with a pid read from /proc and a constant signal.
        if unsafe { libc::kill(left.pid as libc::pid_t, libc::SIGKILL) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(StepError::fatal(format!(
                    "cannot stop the server (pid {}) left running on {}: {e}",
                    left.pid,
                    datadir.display()
                ))
                .with_hint("stop that mariadbd by hand (it may belong to another user), then run prepare again"));
            }
        }
        wait_gone(left.pid, datadir).await?;
    }
    Ok(())
}

/// Waits until `pid` has exited (a zombie has released its files).
async fn wait_gone(pid: u32, datadir: &Path) -> Result<(), StepError> {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(30);
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let after = &s[s.rfind(')')? + 1..];
                after.split_whitespace().next().map(str::to_owned)
            });
        match state.as_deref() {
            None | Some("Z") | Some("X") => return Ok(()),
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    Err(StepError::fatal(format!(
        "the server (pid {pid}) left running on {} did not exit within {WAIT:?} of SIGKILL",
        datadir.display()
    )))
}

/// The server binary (`mariadbd` or `mariadb-backup`) that prepares or test-restores a
/// backup made by a server of version `source`: `explicit`, else `name` found in
/// `$STAGEHAND_MARIADB_BIN`, `PATH`, /usr/sbin, /usr/bin. Refused unless it is of the
/// backup's own series (major.minor): each series may change the redo, undo and system
/// table formats, MariaDB supports preparing a backup only with its own version's
/// tools, and a newer server would upgrade the files in place.
pub async fn binary_for_backup(
    name: &str,
    explicit: Option<PathBuf>,
    source: &str,
) -> Result<PathBuf, StepError> {
    let binary = match &explicit {
        Some(path) => crate::sandbox::find_binary(&path.to_string_lossy()),
        None => crate::sandbox::find_binary(name),
    }
    .ok_or_else(|| {
        let shown = explicit
            .as_ref()
            .map_or(name.to_string(), |p| p.display().to_string());
        StepError::fatal(format!(
            "{shown} not found (searched $STAGEHAND_MARIADB_BIN, PATH, /usr/sbin, /usr/bin)"
        ))
        .with_hint(install_hint(source))
    })?;
    let found = crate::sandbox::server_version(&binary)
        .await
        .map_err(|e| StepError::fatal(e.to_string()))?;
    match series_mismatch(source, &found) {
        None => Ok(binary),
        Some(why) => Err(StepError::fatal(format!("{}: {why}", binary.display()))
            .with_hint(install_hint(source))),
    }
}

/// Why a binary of version `found` must not prepare a backup of `source`, if it must not.
pub fn series_mismatch(source: &str, found: &str) -> Option<String> {
    let parse = crate::mariadb::ServerVersion::parse;
    match (parse(source), parse(found)) {
        (Some(s), Some(f)) if s.same_series(&f) => None,
        (Some(s), Some(f)) => Some(format!(
            "the backup was made by MariaDB {s} and this binary is MariaDB {f}: a backup is prepared only by a server of its own series ({}.{})",
            s.major, s.minor
        )),
        (None, _) => Some(format!("cannot tell which server made the backup (version `{source}`)")),
        (_, None) => Some(format!("cannot tell the binary's version (`{found}`)")),
    }
}

/// `--check`'s answer to "can this host prepare a backup of a server of version
/// `source`?" (a warning when not: the backup may be prepared on another host).
pub async fn can_prepare_here(source: &str) -> stagehand_engine::step::Finding {
    use stagehand_engine::step::Finding;
    match binary_for_backup("mariadbd", None, source).await {
        Ok(b) => Finding::ok(format!(
            "this host can prepare a backup of it ({} is of the same series)",
            b.display()
        )),
        Err(e) => Finding::warn(format!(
            "this host cannot prepare a backup of it: {} ({})",
            e.message,
            e.hint.unwrap_or_default()
        )),
    }
}

fn install_hint(source: &str) -> String {
    let series = crate::mariadb::ServerVersion::parse(source)
        .map_or("the backup's".to_string(), |v| {
            format!("{}.{}", v.major, v.minor)
        });
    format!(
        "install MariaDB {series}'s server and mariadb-backup on this host and point `binary:` or STAGEHAND_MARIADB_BIN (a directory) at them, or prepare the backup on a host that has them"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_is_prepared_only_by_its_own_series() {
        let (b10, b11) = ("10.11.19-MariaDB-0+deb12u1", "11.8.9-MariaDB-0+deb13u1");
        assert_eq!(series_mismatch(b10, "10.11.6"), None, "patch releases mix");
        assert_eq!(series_mismatch(b11, "11.8.3"), None);
        let why = series_mismatch(b11, "10.11.19").expect("older series refused");
        assert!(
            why.contains("MariaDB 11.8.9") && why.contains("10.11.19") && why.contains("(11.8)"),
            "{why}"
        );
        assert!(
            series_mismatch(b10, "11.8.9").is_some(),
            "newer series refused"
        );
        assert!(series_mismatch(b10, "11.4.5").is_some());
        assert!(
            series_mismatch("", "10.11.19").is_some(),
            "unknown source refused"
        );
        assert!(install_hint(b11).contains("MariaDB 11.8"));
    }
}
