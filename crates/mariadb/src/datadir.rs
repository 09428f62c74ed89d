//! What is in a MariaDB datadir, file by file, and where each file is copied in which
//! phase of a backup: InnoDB tablespaces page by page, non-InnoDB table files under
//! BLOCK_DDL, Aria logs under BLOCK_COMMIT, and the rest not at all.

use crate::proof::{SourceProof, VerifiedSource};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The server settings a backup depends on (read from the server, written to the
/// manifest and backup-my.cnf so a server started on the copy matches).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerSettings {
    pub version: String,
    pub datadir: String,
    pub innodb_data_home_dir: String,
    pub innodb_data_file_path: String,
    pub innodb_undo_directory: String,
    pub innodb_undo_tablespaces: u32,
    pub innodb_log_group_home_dir: String,
    pub innodb_log_file_size: u64,
    pub innodb_page_size: u32,
    pub innodb_checksum_algorithm: String,
    pub innodb_compression_level: u32,
    pub aria_log_dir_path: String,
    pub log_bin_basename: String,
}

/// The variables read for [`ServerSettings`].
pub const SETTINGS_QUERY: &str = "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('version', 'datadir', \
    'innodb_data_home_dir', 'innodb_data_file_path', 'innodb_undo_directory', 'innodb_undo_tablespaces', \
    'innodb_log_group_home_dir', 'innodb_log_file_size', 'innodb_page_size', 'innodb_checksum_algorithm', \
    'innodb_compression_level', 'aria_log_dir_path', 'log_bin_basename')";

impl ServerSettings {
    /// The settings from the server's variables. The page size must be one InnoDB
    /// supports: it goes into backup-my.cnf, where a wrong one breaks every prepare.
    pub fn from_variables(v: &BTreeMap<String, String>) -> Result<Self, DatadirError> {
        let text = |k: &str| v.get(k).cloned().unwrap_or_default();
        let num = |k: &str| v.get(k).and_then(|s| s.parse().ok()).unwrap_or_default();
        let page_size = text("innodb_page_size");
        if !page_size
            .parse::<u32>()
            .is_ok_and(|n| n.is_power_of_two() && (4096..=65536).contains(&n))
        {
            return Err(DatadirError::Setting {
                name: "innodb_page_size",
                value: page_size,
                expected: "4096, 8192, 16384, 32768 or 65536",
            });
        }
        Ok(Self {
            version: text("version"),
            datadir: text("datadir"),
            innodb_data_home_dir: text("innodb_data_home_dir"),
            innodb_data_file_path: text("innodb_data_file_path"),
            innodb_undo_directory: text("innodb_undo_directory"),
            innodb_undo_tablespaces: num("innodb_undo_tablespaces") as u32,
            innodb_log_group_home_dir: text("innodb_log_group_home_dir"),
            innodb_log_file_size: num("innodb_log_file_size"),
            innodb_page_size: num("innodb_page_size") as u32,
            innodb_checksum_algorithm: text("innodb_checksum_algorithm"),
            innodb_compression_level: num("innodb_compression_level") as u32,
            aria_log_dir_path: text("aria_log_dir_path"),
            log_bin_basename: text("log_bin_basename"),
        })
    }

    /// A directory setting, resolved against the datadir (empty or `./` = the datadir).
    pub fn resolve_dir(&self, datadir: &Path, setting: &str) -> PathBuf {
        let s = setting.trim();
        if s.is_empty() || s == "." || s == "./" {
            datadir.to_path_buf()
        } else if Path::new(s).is_absolute() {
            PathBuf::from(s)
        } else {
            datadir.join(s)
        }
    }

    /// The system tablespace files from `innodb_data_file_path` (`ibdata1:12M:autoextend`).
    pub fn system_files(&self) -> Vec<String> {
        let spec = if self.innodb_data_file_path.is_empty() {
            "ibdata1:12M:autoextend"
        } else {
            &self.innodb_data_file_path
        };
        spec.split(';')
            .filter_map(|part| part.split(':').next())
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect()
    }
}

/// How a file is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FileClass {
    /// ibdata*: the system tablespace (page 0 of the first file has the format).
    SystemTablespace,
    /// undo001…: separate undo tablespaces.
    UndoTablespace,
    /// *.ibd: file-per-table tablespaces (and partitions).
    Tablespace,
    /// Non-InnoDB table and database files (frm, MyISAM, par, opt …), but Aria data.
    NonInnodb,
    /// Aria table files (.MAD/.MAI): Aria keeps writing under BLOCK_DDL.
    AriaData,
    /// aria_log.* and aria_log_control.
    AriaLog,
}

impl FileClass {
    pub fn is_innodb(self) -> bool {
        matches!(
            self,
            FileClass::SystemTablespace | FileClass::UndoTablespace | FileClass::Tablespace
        )
    }
}

/// Which files a copy step takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileSet {
    /// InnoDB tablespaces, page by page (under BLOCK_DDL).
    Innodb,
    /// Non-InnoDB table files (under BLOCK_DDL: FLUSH stopped MyISAM writes). Aria
    /// tables are copied too, as a first pass.
    NonInnodb,
    /// Aria tables and logs (under BLOCK_COMMIT: crash-safe Aria tables keep changing
    /// until then, and their logs must match them). Aria tables an earlier copy step
    /// took and that have not changed since are not copied again.
    Aria,
    /// Everything (for a cold copy of a stopped server).
    All,
}

impl FileSet {
    pub fn includes(self, class: FileClass) -> bool {
        match self {
            FileSet::All => true,
            FileSet::Innodb => class.is_innodb(),
            FileSet::NonInnodb => matches!(class, FileClass::NonInnodb | FileClass::AriaData),
            FileSet::Aria => matches!(class, FileClass::AriaData | FileClass::AriaLog),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            FileSet::Innodb => "InnoDB tablespaces (page by page, checksums verified)",
            FileSet::NonInnodb => "non-InnoDB table files (frm, MyISAM, Aria, CSV, …)",
            FileSet::Aria => "Aria logs and the Aria tables changed since the first pass",
            FileSet::All => "every data file",
        }
    }
}

/// One file to copy.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub abs: PathBuf,
    /// Path inside the backup directory.
    pub rel: String,
    pub class: FileClass,
    /// A tablespace outside the datadir (DATA DIRECTORY): the absolute path its `.isl`
    /// names (the same as `abs`). It is copied as `rel` = `db/t.ibd`.
    pub remote: Option<PathBuf>,
}

/// Extensions of non-InnoDB files that belong in a backup (as mariadb-backup's list).
const NON_INNODB_EXT: &[&str] = &[
    "frm", "isl", "myd", "myi", "mad", "mai", "mrg", "trg", "trn", "arm", "arz", "csm", "csv",
    "opt", "par",
];

#[derive(Debug, thiserror::Error)]
pub enum DatadirError {
    #[error("cannot list {path}: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("the server reports {name} = `{value}`, expected {expected}")]
    Setting {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// Lists the files of a datadir with the class of each.
pub fn discover(
    datadir: &Path,
    settings: &ServerSettings,
) -> Result<Vec<SourceFile>, DatadirError> {
    let mut out = Vec::new();
    let home = settings.resolve_dir(datadir, &settings.innodb_data_home_dir);
    for name in settings.system_files() {
        let abs = home.join(&name);
        if abs.exists() {
            out.push(SourceFile {
                abs,
                rel: name,
                class: FileClass::SystemTablespace,
                remote: None,
            });
        }
    }
    let undo_dir = settings.resolve_dir(datadir, &settings.innodb_undo_directory);
    for entry in read_dir(&undo_dir)? {
        let name = file_name(&entry);
        if is_undo_name(&name) {
            out.push(SourceFile {
                abs: entry,
                rel: name,
                class: FileClass::UndoTablespace,
                remote: None,
            });
        }
    }
    out.extend(aria_logs(datadir, settings)?);
    for entry in read_dir(datadir)? {
        if entry.is_dir() && !is_skipped_dir(&file_name(&entry)) {
            discover_database(&entry, &mut out)?;
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out.dedup_by(|a, b| a.rel == b.rel);
    Ok(out)
}

/// aria_log_control and aria_log.* in the Aria log directory.
pub fn aria_logs(
    datadir: &Path,
    settings: &ServerSettings,
) -> Result<Vec<SourceFile>, DatadirError> {
    let aria_dir = settings.resolve_dir(datadir, &settings.aria_log_dir_path);
    Ok(read_dir(&aria_dir)?
        .into_iter()
        .filter_map(|entry| {
            let name = file_name(&entry);
            (name == "aria_log_control" || name.starts_with("aria_log.")).then_some(SourceFile {
                abs: entry,
                rel: name,
                class: FileClass::AriaLog,
                remote: None,
            })
        })
        .collect())
}

fn discover_database(dir: &Path, out: &mut Vec<SourceFile>) -> Result<(), DatadirError> {
    let db = file_name(dir);
    for entry in database_entries(dir)? {
        let name = file_name(&entry);
        // Temporary files of a running ALTER (#sql-…) are never part of a backup.
        if !entry.is_file() || name.starts_with("#sql") {
            continue;
        }
        let ext = name
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        let class = match ext.as_str() {
            "ibd" => FileClass::Tablespace,
            "isl" => {
                if let Some(remote) = remote_tablespace(&db, &name, &entry)? {
                    out.push(remote);
                }
                FileClass::NonInnodb
            }
            "mad" | "mai" => FileClass::AriaData,
            e if NON_INNODB_EXT.contains(&e) => FileClass::NonInnodb,
            _ => continue,
        };
        out.push(SourceFile {
            abs: entry,
            rel: format!("{db}/{name}"),
            class,
            remote: None,
        });
    }
    Ok(())
}

/// The tablespace a `db/t.isl` points at (DATA DIRECTORY): copied from the absolute
/// path it holds to `db/t.ibd`, where mariadb-backup puts it too. `None` when the
/// `.isl` is gone (the table was dropped since the listing).
fn remote_tablespace(db: &str, name: &str, isl: &Path) -> Result<Option<SourceFile>, DatadirError> {
    let Some(abs) = read_isl(isl)? else {
        return Ok(None);
    };
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    Ok(Some(SourceFile {
        abs: abs.clone(),
        rel: format!("{db}/{stem}.ibd"),
        class: FileClass::Tablespace,
        remote: Some(abs),
    }))
}

/// The absolute path an `.isl` file holds (the server writes it without a newline; a
/// trailing one written by hand is trimmed). `None` when the file is gone.
pub fn read_isl(isl: &Path) -> Result<Option<PathBuf>, DatadirError> {
    let text = match std::fs::read_to_string(isl) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DatadirError::List {
                path: isl.to_path_buf(),
                source,
            })
        }
    };
    let path = text.strip_suffix('\n').unwrap_or(&text);
    let path = path.strip_suffix('\r').unwrap_or(path);
    if !Path::new(path).is_absolute() {
        return Err(DatadirError::Unsupported(format!(
            "{}: holds `{path}`, not the absolute path of a tablespace",
            isl.display()
        )));
    }
    Ok(Some(PathBuf::from(path)))
}

/// The tablespaces of a datadir's DATA DIRECTORY tables, from their `.isl` files:
/// (absolute path, backup path `db/t.ibd`).
pub fn remote_tablespaces(datadir: &Path) -> Result<Vec<(PathBuf, String)>, DatadirError> {
    let mut out = Vec::new();
    for db in read_dir(datadir)? {
        let db_name = file_name(&db);
        if !db.is_dir() || is_skipped_dir(&db_name) {
            continue;
        }
        for isl in database_entries(&db)? {
            let name = file_name(&isl);
            if !name.ends_with(".isl") || name.starts_with("#sql") {
                continue;
            }
            if let Some(f) = remote_tablespace(&db_name, &name, &isl)? {
                out.push((f.abs, f.rel));
            }
        }
    }
    Ok(out)
}

/// The DATA DIRECTORY roots of a datadir's tables: `/srv/fast` for a table whose
/// `.isl` says `/srv/fast/db/t.ibd` (InnoDB puts the file in a folder named after the
/// database).
pub fn remote_roots(datadir: &Path) -> Result<Vec<PathBuf>, DatadirError> {
    let mut roots = Vec::new();
    for (abs, _) in remote_tablespaces(datadir)? {
        if let Some(root) = remote_root(&abs) {
            if !roots.contains(&root) {
                roots.push(root);
            }
        }
    }
    Ok(roots)
}

/// `/srv/fast/db/t.ibd` → `/srv/fast`.
pub fn remote_root(ibd: &Path) -> Option<PathBuf> {
    ibd.parent()?.parent().map(Path::to_path_buf)
}

/// `undo001` … `undo127` (innodb_undo_tablespaces).
pub fn is_undo_name(name: &str) -> bool {
    name.len() == 7 && name.starts_with("undo") && name[4..].chars().all(|c| c.is_ascii_digit())
}

/// `ib_logfile0` (and the numbered files of servers before 10.5).
pub fn is_redo_log_name(name: &str) -> bool {
    name.strip_prefix("ib_logfile")
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

fn is_skipped_dir(name: &str) -> bool {
    name.starts_with('#') || name == "lost+found" || name.starts_with('.')
}

/// The entries of a database directory; none when it was dropped since the datadir was
/// listed (DDL runs while the files are copied under BACKUP STAGE START).
fn database_entries(dir: &Path) -> Result<Vec<PathBuf>, DatadirError> {
    match read_dir(dir) {
        Err(DatadirError::List { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(Vec::new())
        }
        other => other,
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, DatadirError> {
    let rd = std::fs::read_dir(dir).map_err(|source| DatadirError::List {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Why a step's `datadir` or backup target does not fit the server its connection
/// reaches. Checked before anything is copied.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("the server on {endpoint} has datadir {server}, but datadir is {given}: they are not the same server")]
    OtherServer {
        endpoint: String,
        server: String,
        given: String,
    },
    #[error("{given} does not hold the files the server on {endpoint} has open: {why}")]
    NotTheServersFiles {
        endpoint: String,
        given: String,
        why: String,
    },
    #[error("{path} is not the redo log of the server on {endpoint}: {why}")]
    OtherRedoLog {
        endpoint: String,
        path: String,
        why: String,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the state of the server on {endpoint}: {message}")]
    Server { endpoint: String, message: String },
    #[error("the backup target {target} is inside the server's {what} {dir}: the server would see the backup's files as its own")]
    TargetInside {
        target: String,
        what: &'static str,
        dir: String,
    },
    #[error("the backup target {target} contains the server's {what} {dir}")]
    TargetContains {
        target: String,
        what: &'static str,
        dir: String,
    },
    #[error("the backup target {target} cannot be a directory: {file} is not one")]
    TargetNotDirectory { target: String, file: String },
}

impl PlacementError {
    /// What to do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            PlacementError::NotTheServersFiles { .. } => {
                "`datadir` must be the directory the server has open (a copy or an old directory at its path is not): give the directory the server's files are in"
            }
            PlacementError::OtherServer { .. } | PlacementError::OtherRedoLog { .. } => {
                "`socket`/`host` and `datadir` must name the same server: the locks are taken on the first while the files of the second are copied"
            }
            PlacementError::Io { .. } => {
                "`datadir` must be the server's datadir as this machine sees it, readable by this user"
            }
            PlacementError::Server { .. } => "check the connection and the server's error log",
            PlacementError::TargetInside { .. }
            | PlacementError::TargetContains { .. }
            | PlacementError::TargetNotDirectory { .. } => {
                "give the backup a directory of its own, outside the server's datadir, undo, redo log and Aria log directories"
            }
        }
    }

    pub fn into_step_error(self) -> stagehand_engine::StepError {
        let hint = self.hint();
        stagehand_engine::StepError::fatal(self.to_string()).with_hint(hint)
    }
}

/// Checks, before anything is copied, that `datadir` is the datadir of the server the
/// session reaches, and that `target` lies apart from every directory of that server.
pub async fn check_backup_source(
    session: &crate::session::Session,
    settings: &ServerSettings,
    datadir: &Path,
    target: &Path,
) -> Result<SourceProof, PlacementError> {
    let proof = check_same_server(session, settings, datadir).await?;
    check_target(settings, datadir, target)?;
    Ok(proof)
}

/// `datadir` is the server's. Over a socket, the server's process must have the redo log
/// under `datadir` open (a stale copy at the server's path has the same name but other
/// files). Otherwise, or when its open files cannot be read, its `@@datadir` must be the
/// same directory (device and inode: symlinks and bind mounts name it differently). In
/// every case the redo log under `datadir` must have the server's checkpoint. Done once
/// per session and directory.
pub async fn check_same_server(
    session: &crate::session::Session,
    settings: &ServerSettings,
    datadir: &Path,
) -> Result<SourceProof, PlacementError> {
    let given = file_id(datadir)?;
    let verified = || {
        session
            .verified_datadir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    };
    if let Some(v) = verified().as_ref().filter(|v| v.datadir == given) {
        return Ok(v.proof.clone());
    }
    let log = redo_log_path(settings, datadir);
    let open = match &session.socket {
        Some(socket) => server_open_files(socket, &log, datadir)?,
        None => OpenFiles::Unknown(None),
    };
    if open != OpenFiles::Open {
        check_datadir_variable(session, settings, datadir, given)?;
    }
    if let OpenFiles::Others(why) = open {
        return Err(PlacementError::NotTheServersFiles {
            endpoint: session.endpoint.clone(),
            given: datadir.display().to_string(),
            why,
        });
    }
    check_redo_log_is_the_servers(session, settings, datadir).await?;
    let proof = match open {
        OpenFiles::Unknown(unproven) => SourceProof::PathAndCheckpoint { unproven },
        _ => SourceProof::OpenFiles { log },
    };
    *verified() = Some(VerifiedSource {
        datadir: given,
        proof: proof.clone(),
    });
    Ok(proof)
}

/// The server's `@@datadir` must be the directory `given` names.
fn check_datadir_variable(
    session: &crate::session::Session,
    settings: &ServerSettings,
    datadir: &Path,
    given: (u64, u64),
) -> Result<(), PlacementError> {
    match file_id(Path::new(&settings.datadir)) {
        Ok(server) if server != given => Err(PlacementError::OtherServer {
            endpoint: session.endpoint.clone(),
            server: settings.datadir.clone(),
            given: datadir.display().to_string(),
        }),
        Ok(_) => Ok(()),
        // The server's path does not exist here (a container): the redo log decides.
        Err(e) => {
            tracing::debug!(server_datadir = %settings.datadir, error = %e, "the server's datadir path is not visible here");
            Ok(())
        }
    }
}

/// `ib_logfile0` under `datadir`, where the redo copy reads it.
fn redo_log_path(settings: &ServerSettings, datadir: &Path) -> PathBuf {
    settings
        .resolve_dir(datadir, &settings.innodb_log_group_home_dir)
        .join("ib_logfile0")
}

/// What the server's process has open, compared with the redo log under `datadir`.
#[derive(Debug, PartialEq, Eq)]
enum OpenFiles {
    /// It has this very file open, and runs in `datadir`.
    Open,
    /// It has other files: why they are not these.
    Others(String),
    /// Cannot tell (why; `None` over TCP).
    Unknown(Option<String>),
}

/// Which redo log the process listening on `socket` has open: `log` (and its working
/// directory, where mariadbd runs, is `datadir`), another one, or cannot tell.
fn server_open_files(
    socket: &Path,
    log: &Path,
    datadir: &Path,
) -> Result<OpenFiles, PlacementError> {
    let pid = match peer_pid(socket) {
        Ok(pid) => pid,
        Err(why) => return Ok(OpenFiles::Unknown(Some(why))),
    };
    let want = file_id(log)?;
    let fd_dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let entries = match std::fs::read_dir(&fd_dir) {
        Ok(e) => e,
        Err(e) => {
            return Ok(OpenFiles::Unknown(Some(format!(
                "cannot read {} ({e}): run stagehand as root or as the server's user to tie the path to the server's open files",
                fd_dir.display()
            ))))
        }
    };
    let mut other_logs = Vec::new();
    for fd in entries.filter_map(Result::ok).map(|e| e.path()) {
        if file_id(&fd).is_ok_and(|id| id == want) {
            return Ok(working_directory_is(pid, datadir));
        }
        if let Ok(open) = std::fs::read_link(&fd) {
            if open.to_string_lossy().contains("/ib_logfile0") {
                other_logs.push(open.display().to_string());
            }
        }
    }
    Ok(if other_logs.is_empty() {
        // A proxy or a socket-activating service listens, not mariadbd itself.
        OpenFiles::Unknown(Some(format!(
            "the process listening on the socket (pid {pid}) has no redo log open"
        )))
    } else {
        OpenFiles::Others(format!(
            "the server (pid {pid}) has {} open, not {}",
            other_logs.join(", "),
            log.display()
        ))
    })
}

/// mariadbd runs in its datadir: with a redo log outside it, the log alone does not
/// tie `datadir` to the server.
fn working_directory_is(pid: i32, datadir: &Path) -> OpenFiles {
    let cwd = PathBuf::from(format!("/proc/{pid}/cwd"));
    match (file_id(&cwd), file_id(datadir)) {
        (Ok(a), Ok(b)) if a != b => OpenFiles::Others(format!(
            "the server (pid {pid}) has its redo log open but runs in {}, not in it",
            std::fs::read_link(&cwd)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "another directory".into())
        )),
        _ => OpenFiles::Open,
    }
}

/// The pid of the process listening on a Unix socket (SO_PEERCRED).
fn peer_pid(socket: &Path) -> Result<i32, String> {
    use std::os::fd::AsRawFd;
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot connect to {} to find the server's process: {e}",
            socket.display()
        )
    })?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` live across the call and `len` is the size of `cred`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(format!(
            "cannot ask {} for the server's process: {}",
            socket.display(),
            std::io::Error::last_os_error()
        ));
    }
    if cred.pid <= 0 {
        return Err("the server's process is not visible from here (another pid namespace)".into());
    }
    Ok(cred.pid)
}

/// How often the redo comparison is tried: a checkpoint written between the reads can
/// make one try inconclusive.
const REDO_IDENTITY_TRIES: u32 = 3;

/// The checkpoint in `ib_logfile0` must be the server's: its last checkpoint (read
/// between two reads of the file's header) lies between the file's older checkpoint
/// before and its newest checkpoint after, and no checkpoint is beyond the server's LSN.
async fn check_redo_log_is_the_servers(
    session: &crate::session::Session,
    settings: &ServerSettings,
    datadir: &Path,
) -> Result<(), PlacementError> {
    let path = redo_log_path(settings, datadir);
    let mut why = String::new();
    for attempt in 0..REDO_IDENTITY_TRIES {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let before = read_checkpoints(&path, &session.endpoint)?;
        let (current, last) = server_lsns(session).await?;
        let after = read_checkpoints(&path, &session.endpoint)?;
        match redo_mismatch(&before, &after, current, last) {
            None => return Ok(()),
            Some(w) => why = w,
        }
    }
    Err(PlacementError::OtherRedoLog {
        endpoint: session.endpoint.clone(),
        path: path.display().to_string(),
        why,
    })
}

/// The valid checkpoint LSNs in a log file's header, oldest first.
fn read_checkpoints(path: &Path, endpoint: &str) -> Result<Vec<u64>, PlacementError> {
    use stagehand_innodb::redo::{LogFileHeader, START_OFFSET};
    use std::os::unix::fs::FileExt;
    let io = |source| PlacementError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut head = vec![0u8; START_OFFSET as usize];
    file.read_exact_at(&mut head, 0).map_err(io)?;
    let header = LogFileHeader::parse(&head).map_err(|e| PlacementError::OtherRedoLog {
        endpoint: endpoint.to_string(),
        path: path.display().to_string(),
        why: format!("not a MariaDB 10.8+ redo log ({e})"),
    })?;
    let mut lsns: Vec<u64> = [header.checkpoint_1, header.checkpoint_2]
        .into_iter()
        .flatten()
        .map(|c| c.checkpoint_lsn)
        .collect();
    lsns.sort_unstable();
    Ok(lsns)
}

/// `Innodb_lsn_current` and `Innodb_lsn_last_checkpoint`.
async fn server_lsns(session: &crate::session::Session) -> Result<(u64, u64), PlacementError> {
    let values = crate::session::session_values(
        session,
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('Innodb_lsn_current', 'Innodb_lsn_last_checkpoint')",
    )
    .await
    .map_err(|e| PlacementError::Server {
        endpoint: session.endpoint.clone(),
        message: e.message,
    })?;
    let get = |k: &str| values.get(k).and_then(|v| v.parse::<u64>().ok());
    match (get("innodb_lsn_current"), get("innodb_lsn_last_checkpoint")) {
        (Some(current), Some(last)) => Ok((current, last)),
        _ => Err(PlacementError::Server {
            endpoint: session.endpoint.clone(),
            message: "it did not report Innodb_lsn_current and Innodb_lsn_last_checkpoint".into(),
        }),
    }
}

/// Why the checkpoints read from a file (before and after) cannot be those of a server
/// at LSN `current` whose last checkpoint is `last`; `None` when they can.
fn redo_mismatch(before: &[u64], after: &[u64], current: u64, last: u64) -> Option<String> {
    let (Some(&oldest), Some(&newest_before), Some(&newest)) =
        (before.first(), before.last(), after.last())
    else {
        return Some("it holds no valid checkpoint".into());
    };
    if newest_before > current {
        return Some(format!(
            "its checkpoint LSN {newest_before} is beyond the server's current LSN {current}"
        ));
    }
    if !(oldest..=newest).contains(&last) {
        return Some(format!(
            "its checkpoints (LSN {}) are not the server's last checkpoint (LSN {last})",
            after
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    None
}

/// Device and inode: the identity of a file whatever path names it.
fn file_id(path: &Path) -> Result<(u64, u64), PlacementError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| (m.dev(), m.ino()))
        .map_err(|source| PlacementError::Io {
            path: path.display().to_string(),
            source,
        })
}

/// The backup target must not be inside a directory the server owns (it would appear
/// as a database, or be read as undo or log files), nor contain one.
pub fn check_target(
    settings: &ServerSettings,
    datadir: &Path,
    target: &Path,
) -> Result<(), PlacementError> {
    let place = target_place(target)?;
    let server_datadir = Path::new(&settings.datadir);
    let mut dirs = vec![
        ("datadir", datadir.to_path_buf()),
        ("datadir", server_datadir.to_path_buf()),
        (
            "InnoDB data home directory",
            settings.resolve_dir(datadir, &settings.innodb_data_home_dir),
        ),
        (
            "undo directory",
            settings.resolve_dir(datadir, &settings.innodb_undo_directory),
        ),
        (
            "redo log directory",
            settings.resolve_dir(datadir, &settings.innodb_log_group_home_dir),
        ),
        (
            "Aria log directory",
            settings.resolve_dir(datadir, &settings.aria_log_dir_path),
        ),
    ];
    // A target inside a DATA DIRECTORY would receive the files of a table created there.
    // An unreadable datadir is reported by the copy itself.
    for root in remote_roots(datadir).unwrap_or_default() {
        dirs.push(("DATA DIRECTORY", root));
    }
    for (what, dir) in dirs {
        // A directory that does not exist here holds nothing the target could clash with.
        let Ok(dir_chain) = ancestry(&dir) else {
            continue;
        };
        let clash = |inside: bool| {
            let (target, dir) = (target.display().to_string(), dir.display().to_string());
            if inside {
                PlacementError::TargetInside { target, what, dir }
            } else {
                PlacementError::TargetContains { target, what, dir }
            }
        };
        if place.chain.contains(&dir_chain[0]) {
            return Err(clash(true));
        }
        if place.exists && dir_chain.contains(&place.chain[0]) {
            return Err(clash(false));
        }
    }
    Ok(())
}

/// Where a target will be created: the (device, inode) of the directory it will be in
/// (or that it is) and of each of its parents, and whether it exists already.
struct TargetPlace {
    chain: Vec<(u64, u64)>,
    exists: bool,
}

/// Device and inode rather than paths: a bind mount or a symlink names a directory by
/// another path, and `..` of a bind mount's root is the mount point's parent, as the
/// kernel will see it when the target is created.
fn target_place(target: &Path) -> Result<TargetPlace, PlacementError> {
    let absolute = std::path::absolute(target).map_err(|source| PlacementError::Io {
        path: target.display().to_string(),
        source,
    })?;
    let (existing, missing) = nearest_existing(&absolute);
    // `a/../b` below the existing part: lexical (`a` will be created, so `..` is here).
    let mut anchor = existing;
    let mut names: Vec<&std::ffi::OsStr> = Vec::new();
    for part in missing.components() {
        match part {
            std::path::Component::ParentDir if names.pop().is_none() => anchor.push(".."),
            std::path::Component::Normal(p) => names.push(p),
            _ => {}
        }
    }
    let (existing, missing) = nearest_existing(&names.iter().fold(anchor, |p, n| p.join(n)));
    if !existing.is_dir() {
        return Err(PlacementError::TargetNotDirectory {
            target: target.display().to_string(),
            file: existing.display().to_string(),
        });
    }
    Ok(TargetPlace {
        chain: ancestry(&existing)?,
        exists: missing.as_os_str().is_empty(),
    })
}

/// The (device, inode) of a directory and of each of its parents up to `/`, following
/// `..` as the kernel does.
fn ancestry(dir: &Path) -> Result<Vec<(u64, u64)>, PlacementError> {
    let mut chain = vec![file_id(dir)?];
    let mut up = dir.join("..");
    while let Ok(id) = file_id(&up) {
        if chain.contains(&id) {
            break;
        }
        chain.push(id);
        up.push("..");
    }
    Ok(chain)
}

/// The longest existing prefix of an absolute path, and the rest.
fn nearest_existing(path: &Path) -> (PathBuf, PathBuf) {
    for ancestor in path.ancestors() {
        if ancestor.symlink_metadata().is_ok() {
            let rest = path.strip_prefix(ancestor).unwrap_or(Path::new(""));
            return (ancestor.to_path_buf(), rest.to_path_buf());
        }
    }
    (PathBuf::from("/"), path.to_path_buf())
}

/// The preflight's word that `datadir` and the connection name the same server (the
/// same text from every step, so it is shown once), and how that is known: a warning
/// when the server's open files could not be looked at over its socket.
pub fn same_server_finding(
    datadir: &str,
    session: &crate::session::Session,
    proof: &SourceProof,
) -> stagehand_engine::step::Finding {
    let head = format!(
        "{datadir} is the datadir of the server on {}",
        session.endpoint
    );
    let tail = "and the target lies outside its directories";
    match proof {
        SourceProof::OpenFiles { log } => stagehand_engine::step::Finding::ok(format!(
            "{head} (same files (the server has {} open), its redo log has the server's checkpoint), {tail}",
            log.display()
        )),
        SourceProof::PathAndCheckpoint { unproven: None } => stagehand_engine::step::Finding::ok(format!(
            "{head} (same directory, its redo log has the server's checkpoint), {tail}"
        )),
        SourceProof::PathAndCheckpoint { unproven: Some(why) } => stagehand_engine::step::Finding::warn(format!(
            "{head} by its path and checkpoint only (same directory, its redo log has the server's checkpoint), {tail}; whether the server has these files open was not checked ({why}): a stale copy at the server's path would pass"
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_page_size_innodb_does_not_support_is_refused_not_written_as_zero() {
        let vars = |size: &str| -> BTreeMap<String, String> {
            [("innodb_page_size".to_string(), size.to_string())].into()
        };
        assert_eq!(
            ServerSettings::from_variables(&vars("16384"))
                .map(|s| s.innodb_page_size)
                .ok(),
            Some(16384)
        );
        for bad in ["", "abc", "0", "1000", "131072"] {
            let err = ServerSettings::from_variables(&vars(bad))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("innodb_page_size"), "{bad:?}: {err}");
        }
    }

    use super::*;

    #[test]
    fn classifies_a_datadir() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path();
        for f in [
            "ibdata1",
            "ib_logfile0",
            "undo001",
            "undo002",
            "aria_log.00000001",
            "aria_log_control",
            "binlog.000001",
            "mysqld.pid",
            "ib_buffer_pool",
        ] {
            std::fs::write(root.join(f), b"x").expect("write");
        }
        std::fs::create_dir_all(root.join("app")).expect("mkdir");
        for f in [
            "t.ibd",
            "t.frm",
            "a.MAD",
            "a.MAI",
            "m.MYD",
            "m.MYI",
            "db.opt",
            "#sql-1.ibd",
            "p#P#p0.ibd",
            "p.par",
        ] {
            std::fs::write(root.join("app").join(f), b"x").expect("write");
        }
        let files = discover(root, &ServerSettings::default()).expect("discover");
        let got: Vec<(String, FileClass)> =
            files.iter().map(|f| (f.rel.clone(), f.class)).collect();
        assert_eq!(
            got,
            vec![
                ("app/a.MAD".into(), FileClass::AriaData),
                ("app/a.MAI".into(), FileClass::AriaData),
                ("app/db.opt".into(), FileClass::NonInnodb),
                ("app/m.MYD".into(), FileClass::NonInnodb),
                ("app/m.MYI".into(), FileClass::NonInnodb),
                ("app/p#P#p0.ibd".into(), FileClass::Tablespace),
                ("app/p.par".into(), FileClass::NonInnodb),
                ("app/t.frm".into(), FileClass::NonInnodb),
                ("app/t.ibd".into(), FileClass::Tablespace),
                ("aria_log.00000001".into(), FileClass::AriaLog),
                ("aria_log_control".into(), FileClass::AriaLog),
                ("ibdata1".into(), FileClass::SystemTablespace),
                ("undo001".into(), FileClass::UndoTablespace),
                ("undo002".into(), FileClass::UndoTablespace),
            ]
        );
    }

    #[test]
    fn a_data_directory_table_is_copied_from_where_its_isl_points() {
        let d = tempfile::tempdir().expect("tempdir");
        let (datadir, fast) = (d.path().join("data"), d.path().join("fast"));
        std::fs::create_dir_all(datadir.join("app")).expect("mkdir");
        std::fs::create_dir_all(fast.join("app")).expect("mkdir");
        for (table, newline) in [("r", ""), ("p#P#p0", "\n")] {
            let ibd = fast.join(format!("app/{table}.ibd"));
            std::fs::write(&ibd, b"x").expect("write");
            let isl = format!("{}{newline}", ibd.display());
            std::fs::write(datadir.join(format!("app/{table}.isl")), isl).expect("write");
        }
        let files = discover(&datadir, &ServerSettings::default()).expect("discover");
        let got: Vec<(&str, FileClass, Option<PathBuf>)> = files
            .iter()
            .map(|f| (f.rel.as_str(), f.class, f.remote.clone()))
            .collect();
        let remote = |t: &str| Some(fast.join(format!("app/{t}.ibd")));
        assert_eq!(
            got,
            vec![
                ("app/p#P#p0.ibd", FileClass::Tablespace, remote("p#P#p0")),
                ("app/p#P#p0.isl", FileClass::NonInnodb, None),
                ("app/r.ibd", FileClass::Tablespace, remote("r")),
                ("app/r.isl", FileClass::NonInnodb, None),
            ]
        );
        assert_eq!(remote_roots(&datadir).expect("roots"), vec![fast.clone()]);
        let settings = settings_for(&datadir);
        assert!(matches!(
            check_target(&settings, &datadir, &fast.join("backup")),
            Err(PlacementError::TargetInside {
                what: "DATA DIRECTORY",
                ..
            })
        ));
    }

    fn settings_for(datadir: &Path) -> ServerSettings {
        ServerSettings {
            datadir: format!("{}/", datadir.display()),
            ..Default::default()
        }
    }

    #[test]
    fn target_inside_or_around_the_datadir_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let datadir = d.path().join("data");
        std::fs::create_dir_all(datadir.join("mysql")).expect("mkdir");
        let settings = settings_for(&datadir);
        let inside = check_target(&settings, &datadir, &datadir.join("backup1"));
        assert!(
            matches!(
                inside,
                Err(PlacementError::TargetInside {
                    what: "datadir",
                    ..
                })
            ),
            "{inside:?}"
        );
        let sneaky = d.path().join("elsewhere/../data/b");
        assert!(matches!(
            check_target(&settings, &datadir, &sneaky),
            Err(PlacementError::TargetInside { .. })
        ));
        assert!(matches!(
            check_target(&settings, &datadir, d.path()),
            Err(PlacementError::TargetContains { .. })
        ));
        check_target(&settings, &datadir, &d.path().join("backups/b1")).expect("apart is fine");
    }

    #[test]
    fn target_inside_a_symlinked_datadir_or_its_log_directory_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let datadir = d.path().join("data");
        let logs = d.path().join("redo");
        std::fs::create_dir_all(&datadir).expect("mkdir");
        std::fs::create_dir_all(&logs).expect("mkdir");
        std::os::unix::fs::symlink(&datadir, d.path().join("link")).expect("symlink");
        let settings = ServerSettings {
            innodb_log_group_home_dir: logs.display().to_string(),
            ..settings_for(&datadir)
        };
        assert!(matches!(
            check_target(&settings, &datadir, &d.path().join("link/b")),
            Err(PlacementError::TargetInside {
                what: "datadir",
                ..
            })
        ));
        assert!(matches!(
            check_target(&settings, &datadir, &logs.join("b")),
            Err(PlacementError::TargetInside {
                what: "redo log directory",
                ..
            })
        ));
    }

    #[test]
    fn a_target_that_is_a_file_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let datadir = d.path().join("data");
        std::fs::create_dir_all(&datadir).expect("mkdir");
        let file = d.path().join("a-file");
        std::fs::write(&file, b"x").expect("write");
        for target in [file.clone(), file.join("below")] {
            let r = check_target(&settings_for(&datadir), &datadir, &target);
            assert!(
                matches!(r, Err(PlacementError::TargetNotDirectory { .. })),
                "{r:?}"
            );
        }
    }

    #[test]
    fn redo_checkpoints_must_be_the_servers() {
        // The server's last checkpoint between the file's older slot and newest slot.
        assert_eq!(redo_mismatch(&[100, 200], &[200, 300], 400, 200), None);
        assert_eq!(redo_mismatch(&[100, 200], &[300, 400], 500, 300), None);
        // Another server's log: its checkpoints are elsewhere.
        assert!(redo_mismatch(&[44404], &[44404], 90000, 50000).is_some());
        assert!(redo_mismatch(&[900_000], &[900_000], 50_000, 40_000)
            .is_some_and(|w| w.contains("beyond")));
        assert!(redo_mismatch(&[], &[], 1, 1).is_some());
    }

    #[test]
    fn the_process_behind_a_socket_must_hold_this_log_and_run_in_its_datadir() {
        let d = tempfile::tempdir().expect("tempdir");
        let socket = d.path().join("s.sock");
        // This test process listens: its open files are what is looked at.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("listen");
        let (real, copy) = (d.path().join("real"), d.path().join("copy"));
        for dir in [&real, &copy] {
            std::fs::create_dir_all(dir).expect("mkdir");
            std::fs::write(dir.join("ib_logfile0"), b"log").expect("write");
        }
        let _held = std::fs::File::open(real.join("ib_logfile0")).expect("open");
        let other = server_open_files(&socket, &copy.join("ib_logfile0"), &copy);
        let held = real.join("ib_logfile0").display().to_string();
        assert!(
            matches!(&other, Ok(OpenFiles::Others(w)) if w.contains(&held)),
            "{other:?}"
        );
        // The very file open, but the process runs elsewhere (not in `real`).
        let elsewhere = server_open_files(&socket, &real.join("ib_logfile0"), &real);
        assert!(
            matches!(&elsewhere, Ok(OpenFiles::Others(w)) if w.contains("runs in")),
            "{elsewhere:?}"
        );
    }
}
