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
    let dir = tempfile::Builder::new()
        .prefix(RUN_DIR_PREFIX)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in("/tmp")
        .map_err(|e| StepError::fatal(format!("cannot create a run directory in /tmp: {e}")))?;
    // Who started the servers run here: a later prepare tells a live run's server
    // (parent still this process) from one left behind (adopted by init).
    let starter = dir.path().join(STARTER_FILE);
    std::fs::write(&starter, std::process::id().to_string())
        .map_err(|e| StepError::fatal(format!("cannot write {}: {e}", starter.display())))?;
    Ok(dir)
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
    opts.mounts = remote_mounts(datadir, run_dir, binary.as_deref())?;
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

/// Where [`remote_mounts`] builds the trees it binds, inside the backup directory (hard
/// links need the same filesystem; a dot-folder is never part of the backup).
pub const REMOTE_LINKS_DIR: &str = ".stagehand-remote";

/// The DATA DIRECTORY trap: the redo log and the `.isl` files name a remote table's
/// tablespace by its absolute path, and `mariadbd` (crash recovery in NORMAL mode, then
/// purge and rollback) would open the *live* file there. So the server runs in a
/// private mount namespace where each DATA DIRECTORY root shows a tree of hard links to
/// the backup's own copies (`<dir>/.stagehand-remote/<n>/db/t.ibd` → `<dir>/db/t.ibd`),
/// checked to be the same inodes before exec. `None` when the backup has no such table.
pub fn remote_mounts(
    dir: &Path,
    run_dir: &Path,
    binary: Option<&Path>,
) -> Result<Option<stagehand_host::process::PrivateMounts>, StepError> {
    let remote = checked_remote(dir, &[dir, run_dir], binary)?;
    forget_remote_links(dir)?;
    if remote.is_empty() {
        return Ok(None);
    }
    let links = dir.join(REMOTE_LINKS_DIR);
    let mut mounts = stagehand_host::process::PrivateMounts::default();
    let mut roots: Vec<&Path> = Vec::new();
    for t in &remote {
        let n = match roots.iter().position(|r| *r == t.root) {
            Some(n) => n,
            None => {
                roots.push(&t.root);
                let from = links.join((roots.len() - 1).to_string());
                std::fs::create_dir_all(&from).map_err(|e| {
                    StepError::fatal(format!("cannot create {}: {e}", from.display()))
                })?;
                mounts.binds.push((from, t.root.clone()));
                roots.len() - 1
            }
        };
        let copy = dir.join(&t.rel);
        if !copy.exists() {
            // Nothing to show there: with the live file hidden, InnoDB finds none.
            tracing::warn!(table = %t.rel, "the backup has a .isl but no tablespace for it");
            continue;
        }
        let inside = t.abs.strip_prefix(&t.root).unwrap_or(Path::new(&t.rel));
        let link = links.join(n.to_string()).join(inside);
        let io = |e: std::io::Error| {
            StepError::fatal(format!(
                "cannot link {} to {}: {e}",
                copy.display(),
                link.display()
            ))
        };
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::hard_link(&copy, &link).map_err(io)?;
        mounts.same_files.push((t.abs.clone(), copy));
    }
    tracing::info!(
        roots = roots.len(),
        tables = remote.len(),
        "DATA DIRECTORY paths show the backup's copies to the server"
    );
    Ok(Some(mounts))
}

/// Refuses, before anything changes, a backup whose DATA DIRECTORY tables
/// [`remote_mounts`] could not hide from a server (not root, a root missing here or
/// holding the backup or `binary`).
pub fn check_remote_protection(dir: &Path, binary: Option<&Path>) -> Result<(), StepError> {
    checked_remote(dir, &[dir], binary).map(|_| ())
}

/// A DATA DIRECTORY tablespace of a backup: its path at the source, in the backup, and
/// the root bound over.
struct RemoteTable {
    abs: PathBuf,
    rel: String,
    root: PathBuf,
}

/// The backup's DATA DIRECTORY tables (from its `.isl` files), each root checked: it
/// can be bound over and hides none of `dirs` or `binary`.
fn checked_remote(
    dir: &Path,
    dirs: &[&Path],
    binary: Option<&Path>,
) -> Result<Vec<RemoteTable>, StepError> {
    let remote =
        crate::datadir::remote_tablespaces(dir).map_err(|e| StepError::fatal(e.to_string()))?;
    if remote.is_empty() {
        return Ok(Vec::new());
    }
    let named = remote
        .iter()
        .map(|(abs, rel)| format!("{} → {}", rel, abs.display()))
        .collect::<Vec<_>>()
        .join(", ");
    let refuse = |why: String| {
        StepError::fatal(format!(
            "the backup has DATA DIRECTORY tables ({named}): {why}"
        ))
        .with_hint("prepare with engine: mariadb-backup (it never opens the live files), or run stagehand as root on a host where those directories exist")
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(refuse("a server started on it would open the live files at those paths, and hiding them needs a private mount namespace (root)".into()));
    }
    let mut out: Vec<RemoteTable> = Vec::new();
    for (abs, rel) in remote {
        let root = crate::datadir::remote_root(&abs)
            .ok_or_else(|| refuse(format!("{} is not below a directory", abs.display())))?;
        if !out.iter().any(|t| t.root == root) {
            check_remote_root(&root, dirs, binary).map_err(&refuse)?;
        }
        out.push(RemoteTable { abs, rel, root });
    }
    Ok(out)
}

/// A root that does not exist here cannot be bound over, and one that holds the
/// backup, the run directory or the server binary would hide them from the server.
fn check_remote_root(root: &Path, dirs: &[&Path], binary: Option<&Path>) -> Result<(), String> {
    let real = std::fs::canonicalize(root).map_err(|e| {
        format!(
            "its DATA DIRECTORY {} cannot be used on this host ({e})",
            root.display()
        )
    })?;
    let hidden = dirs
        .iter()
        .copied()
        .chain(binary)
        .map(real_path)
        .find(|p| p.starts_with(&real));
    match hidden {
        Some(p) => Err(format!(
            "its DATA DIRECTORY {} holds {}, which the server must see",
            root.display(),
            p.display()
        )),
        None => Ok(()),
    }
}

/// A path with its existing part resolved (symlinks, `..`): it may not exist yet.
fn real_path(p: &Path) -> PathBuf {
    let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    for ancestor in p.ancestors() {
        if let Ok(real) = std::fs::canonicalize(ancestor) {
            return real.join(p.strip_prefix(ancestor).unwrap_or(Path::new("")));
        }
    }
    p
}

/// Removes the trees [`remote_mounts`] built (once the server is gone).
pub fn forget_remote_links(dir: &Path) -> Result<(), StepError> {
    let links = dir.join(REMOTE_LINKS_DIR);
    match std::fs::remove_dir_all(&links) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StepError::fatal(format!(
            "cannot remove {}: {e}",
            links.display()
        ))),
        _ => Ok(()),
    }
}

/// A `mariadbd` running on a backup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftServer {
    pub pid: u32,
    pub parent: u32,
    /// Started by stagehand: the sandbox's arguments, its socket or pid file in a
    /// stagehand run directory ([`run_dir`]).
    pub ours: bool,
    /// Adopted by init or a subreaper: whoever started it is gone.
    pub orphaned: bool,
}

/// The prefix of [`run_dir`]'s name: how a sandbox server is recognised.
const RUN_DIR_PREFIX: &str = "stagehand-srv";

/// The servers running on `datadir`: processes whose program is mariadbd (or mysqld)
/// with `--datadir=` this directory, whoever started them. Found through /proc, so no
/// pid file is needed: the process is visible from the moment it exists.
pub fn servers_on(datadir: &Path) -> Vec<LeftServer> {
    let Ok(wanted) = std::fs::canonicalize(datadir) else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let ancestors = ancestors_of(me);
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let run_dir = server_on(pid, &wanted)?;
            let parent = stagehand_host::procfs::parent(pid)?;
            // An orphan goes to init, or to a subreaper: no longer the stagehand that
            // started it (recorded in its run directory; when not, as older versions
            // left them, the nearest subreaper above us that is not a stagehand).
            let orphaned = parent <= 1
                || match run_dir.as_deref().and_then(starter_of) {
                    Some(starter) => parent != starter,
                    None => ancestors.contains(&parent) && !is_stagehand(parent),
                };
            Some(LeftServer {
                pid,
                parent,
                ours: run_dir.is_some(),
                orphaned,
            })
        })
        .collect()
}

/// `Some(run directory)` when `pid` is a server on `datadir`: the run directory when
/// stagehand's sandbox started it (`--no-defaults` first, its socket or pid file in a
/// run directory), else `None`.
fn server_on(pid: u32, datadir: &Path) -> Option<Option<PathBuf>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let is_server = |arg: &String| {
        let name = arg.rsplit('/').next().unwrap_or_default();
        name.starts_with("mariadbd") || name.starts_with("mysqld")
    };
    // The program is the first argument, or a later one when a loader runs it
    // (`ld-linux.so --library-path … mariadbd`, as a server build outside the
    // system's libraries is started).
    let program = args.iter().take(4).position(is_server)?;
    let on_datadir = args.iter().any(|a| {
        a.strip_prefix("--datadir=")
            .and_then(|d| std::fs::canonicalize(d).ok())
            .is_some_and(|d| d == datadir)
    });
    if !on_datadir {
        return None;
    }
    let run_dir = |value: &str| {
        let dir = Path::new(value).parent()?;
        let name = dir.file_name()?.to_str()?;
        name.starts_with(RUN_DIR_PREFIX).then(|| dir.to_path_buf())
    };
    let signed = args.iter().find_map(|a| {
        a.strip_prefix("--socket=")
            .or_else(|| a.strip_prefix("--pid-file="))
            .and_then(run_dir)
    });
    let sandbox = args.get(program + 1).map(String::as_str) == Some("--no-defaults");
    Some(signed.filter(|_| sandbox))
}

/// The file in a run directory that names the stagehand process that made it.
const STARTER_FILE: &str = "stagehand.pid";

/// The stagehand that made `run_dir` (and started the server whose files are in it).
fn starter_of(run_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(run_dir.join(STARTER_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `pid`'s parent, its parent, … up to (not including) init.
fn ancestors_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut p = pid;
    while let Some(parent) =
        stagehand_host::procfs::parent(p).filter(|&q| q > 1 && !out.contains(&q))
    {
        out.push(parent);
        p = parent;
    }
    out
}

/// Whether `pid` runs a stagehand (this binary, or one named stagehand elsewhere).
fn is_stagehand(pid: u32) -> bool {
    let exe = |p: &str| std::fs::read_link(format!("/proc/{p}/exe")).ok();
    let named = |e: &Path| {
        e.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("stagehand"))
    };
    match (exe(&pid.to_string()), exe("self")) {
        (Some(a), Some(b)) => a == b || named(&a),
        _ => false,
    }
}

/// Why prepare must not touch a server running on `datadir`, if it must not: one
/// stagehand did not start, or one whose parent (a stagehand at work) is alive.
fn not_reclaimable(left: &LeftServer, datadir: &Path) -> Option<StepError> {
    let dir = datadir.display();
    if !left.ours {
        return Some(StepError::fatal(format!(
            "a mariadbd that stagehand did not start (pid {}, parent {}) is running on {dir}: prepare would change the files under it, and it is not stagehand's to stop",
            left.pid, left.parent
        ))
        .with_hint("nothing was killed or changed: find out who runs that server, stop it, then run prepare again"));
    }
    if !left.orphaned {
        return Some(StepError::fatal(format!(
            "a stagehand server (pid {}) is running on {dir}, and the process that started it (pid {}) is still running: another prepare or verify is at work",
            left.pid, left.parent
        ))
        .with_hint("nothing was killed or changed: wait for that run to finish (or stop it), then run prepare again"));
    }
    None
}

/// Kills the sandbox servers an interrupted stagehand left on `datadir` (they would
/// hold the files' locks: "Can't lock aria control file") and waits until they are
/// gone; `Ok(true)` when there were any. Any other server on it (someone else's, or
/// one whose stagehand is still at work) is an error, and then nothing is killed.
pub async fn reclaim_left_servers(datadir: &Path) -> Result<bool, StepError> {
    let left = servers_on(datadir);
    if let Some(e) = left.iter().find_map(|l| not_reclaimable(l, datadir)) {
        return Err(e);
    }
    for left in &left {
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
    Ok(!left.is_empty())
}

/// Waits until `pid` has exited and released its files: gone, or a zombie whose other
/// threads are gone too (the leader turns zombie while mariadbd's other threads still
/// exit with the files open, and the new server would find the Aria control file
/// locked).
async fn wait_gone(pid: u32, datadir: &Path) -> Result<(), StepError> {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(30);
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        let alone = || stagehand_host::procfs::threads(pid).is_none_or(|n| n <= 1);
        match stagehand_host::procfs::state(pid).as_deref() {
            None => return Ok(()),
            Some("Z") | Some("X") if alone() => return Ok(()),
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
        Some(path) => crate::sandbox::binaries::find_binary(&path.to_string_lossy()),
        None => crate::sandbox::binaries::find_binary(name),
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
    let found = crate::sandbox::binaries::server_version(&binary)
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
    let parse = crate::version::ServerVersion::parse;
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
    let series = crate::version::ServerVersion::parse(source)
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

    /// A backup `dir/backup` whose `d/t.isl` names `dir/fast/d/t.ibd`.
    fn backup_with_remote_table(dir: &Path) -> (PathBuf, PathBuf) {
        let (backup, fast) = (dir.join("backup"), dir.join("fast"));
        std::fs::create_dir_all(backup.join("d")).expect("mkdir");
        std::fs::create_dir_all(fast.join("d")).expect("mkdir");
        std::fs::write(fast.join("d/t.ibd"), b"live").expect("write");
        std::fs::write(backup.join("d/t.ibd"), b"copy").expect("write");
        let isl = fast.join("d/t.ibd").display().to_string();
        std::fs::write(backup.join("d/t.isl"), isl).expect("write");
        (backup, fast)
    }

    #[test]
    fn remote_tables_are_shown_as_the_backups_copies_or_refused() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().expect("tempdir");
        let (backup, fast) = backup_with_remote_table(d.path());
        let run = d.path().join("run");
        let ino = |p: &Path| std::fs::metadata(p).map(|m| m.ino()).ok();
        if crate::sandbox::accounts::is_root() {
            let mounts = remote_mounts(&backup, &run, None)
                .expect("mounts")
                .expect("a remote table");
            let links = backup.join(REMOTE_LINKS_DIR).join("0");
            assert_eq!(mounts.binds, vec![(links.clone(), fast.clone())]);
            assert_eq!(
                mounts.same_files,
                vec![(fast.join("d/t.ibd"), backup.join("d/t.ibd"))]
            );
            assert_eq!(ino(&links.join("d/t.ibd")), ino(&backup.join("d/t.ibd")));
            forget_remote_links(&backup).expect("forget");
            assert!(!backup.join(REMOTE_LINKS_DIR).exists());
            // A DATA DIRECTORY that holds the run directory would hide it.
            let e = remote_mounts(&backup, &fast.join("run"), None).expect_err("refused");
            assert!(e.message.contains("which the server must see"), "{e:?}");
            // One that does not exist here cannot be bound over.
            std::fs::remove_dir_all(&fast).expect("rm");
            let e = remote_mounts(&backup, &run, None).expect_err("refused");
            assert!(e.message.contains("cannot be used on this host"), "{e:?}");
        } else {
            let e = remote_mounts(&backup, &run, None).expect_err("refused without root");
            assert!(e.message.contains("d/t.ibd"), "{e:?}");
        }
        let plain = d.path().join("plain");
        std::fs::create_dir_all(plain.join("d")).expect("mkdir");
        assert_eq!(remote_mounts(&plain, &run, None).expect("none"), None);
    }
}
