//! Metadata files of a mariadb-backup directory: renderers (pure functions
//! returning the exact text mariadb-backup 10.11 writes) and parsers for
//! what `--prepare` reads back.
//!
//! Sources (MariaDB 10.11.18): extra/mariabackup/xtrabackup.cc
//! (`xtrabackup_print_metadata`, `xtrabackup_read_metadata`),
//! backup_mysql.cc (`write_binlog_info`, `write_xtrabackup_info`,
//! `write_backup_config_file`, `make_local_paths`), backup_copy.h (names;
//! the `mariadb_backup_*` names come from MDEV-18931, first released in
//! 11.1).

use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupFileError {
    #[error("line {line}: expected `{key} = <value>`")]
    MissingKey { line: usize, key: &'static str },
    #[error("line {line}: `{key}` is not a number: {value:?}")]
    BadNumber {
        line: usize,
        key: &'static str,
        value: String,
    },
    #[error("unknown backup_type {0:?}")]
    BadBackupType(String),
    #[error("binlog info needs `file<TAB>position[<TAB>gtid]`, got {0:?}")]
    BadBinlogInfo(String),
}

/// Server version as (major, minor, patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

/// Which family of metadata file names a mariadb-backup version uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `xtrabackup_*`: everything before 11.1 (10.11 included).
    Xtrabackup,
    /// `mariadb_backup_*`: 11.1 and later.
    MariadbBackup,
}

pub fn naming(version: Version) -> Naming {
    if version >= Version(11, 1, 0) {
        Naming::MariadbBackup
    } else {
        Naming::Xtrabackup
    }
}

impl Naming {
    pub fn checkpoints(self) -> &'static str {
        match self {
            Naming::Xtrabackup => "xtrabackup_checkpoints",
            Naming::MariadbBackup => "mariadb_backup_checkpoints",
        }
    }

    pub fn info(self) -> &'static str {
        match self {
            Naming::Xtrabackup => "xtrabackup_info",
            Naming::MariadbBackup => "mariadb_backup_info",
        }
    }

    pub fn binlog_info(self) -> &'static str {
        match self {
            Naming::Xtrabackup => "xtrabackup_binlog_info",
            Naming::MariadbBackup => "mariadb_backup_binlog_info",
        }
    }

    pub fn galera_info(self) -> &'static str {
        match self {
            Naming::Xtrabackup => "xtrabackup_galera_info",
            Naming::MariadbBackup => "mariadb_backup_galera_info",
        }
    }

    pub fn slave_info(self) -> &'static str {
        match self {
            Naming::Xtrabackup => "xtrabackup_slave_info",
            Naming::MariadbBackup => "mariadb_backup_slave_info",
        }
    }
}

/// `backup-my.cnf` keeps its name in every version.
pub const BACKUP_MY_CNF: &str = "backup-my.cnf";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupType {
    /// A full backup not yet prepared.
    FullBackuped,
    Incremental,
    /// After `--prepare`.
    LogApplied,
}

impl BackupType {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::FullBackuped => "full-backuped",
            BackupType::Incremental => "incremental",
            BackupType::LogApplied => "log-applied",
        }
    }

    pub fn parse(s: &str) -> Result<Self, BackupFileError> {
        match s {
            "full-backuped" => Ok(BackupType::FullBackuped),
            "incremental" => Ok(BackupType::Incremental),
            "log-applied" => Ok(BackupType::LogApplied),
            other => Err(BackupFileError::BadBackupType(other.to_owned())),
        }
    }
}

/// Contents of `xtrabackup_checkpoints`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoints {
    pub backup_type: BackupType,
    /// 0 for a full backup; the base's to_lsn for an incremental one.
    pub from_lsn: u64,
    /// Latest server checkpoint LSN read at BLOCK_COMMIT (base of the next
    /// incremental).
    pub to_lsn: u64,
    /// LSN the redo log was copied up to.
    pub last_lsn: u64,
    /// Only true with `--binlog-info=LOCKLESS`.
    pub recover_binlog_info: bool,
}

/// Exact text of `xtrabackup_print_metadata`.
pub fn render_checkpoints(c: &Checkpoints) -> String {
    format!(
        "backup_type = {}\nfrom_lsn = {}\nto_lsn = {}\nlast_lsn = {}\nrecover_binlog_info = {}\n",
        c.backup_type.as_str(),
        c.from_lsn,
        c.to_lsn,
        c.last_lsn,
        u8::from(c.recover_binlog_info)
    )
}

/// Parse like `xtrabackup_read_metadata`: keys in fixed order, whitespace
/// around `=` free (fscanf), backup_type/from_lsn/to_lsn required,
/// last_lsn (default 0) and recover_binlog_info (default false) optional.
pub fn parse_checkpoints(text: &str) -> Result<Checkpoints, BackupFileError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let backup_type = BackupType::parse(required(&mut lines, "backup_type")?.1)?;
    let from_lsn = number(required(&mut lines, "from_lsn")?, "from_lsn")?;
    let to_lsn = number(required(&mut lines, "to_lsn")?, "to_lsn")?;
    let mut rest = lines.peekable();
    let last_lsn = match rest
        .peek()
        .and_then(|&(n, l)| value_of(l, "last_lsn").map(|v| (n + 1, v)))
    {
        Some(found) => {
            rest.next();
            number(found, "last_lsn")?
        }
        None => 0,
    };
    let recover_binlog_info = rest
        .next()
        .and_then(|(_, l)| value_of(l, "recover_binlog_info"))
        .is_some_and(|v| v == "1");
    Ok(Checkpoints {
        backup_type,
        from_lsn,
        to_lsn,
        last_lsn,
        recover_binlog_info,
    })
}

fn value_of<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix(key)?;
    let value = rest.trim_start().strip_prefix('=')?.trim();
    // fscanf("%29s") reads one word.
    value.split_whitespace().next()
}

fn required<'a>(
    lines: &mut impl Iterator<Item = (usize, &'a str)>,
    key: &'static str,
) -> Result<(usize, &'a str), BackupFileError> {
    let (n, line) = lines
        .next()
        .ok_or(BackupFileError::MissingKey { line: 0, key })?;
    value_of(line, key)
        .map(|v| (n + 1, v))
        .ok_or(BackupFileError::MissingKey { line: n + 1, key })
}

fn number((line, value): (usize, &str), key: &'static str) -> Result<u64, BackupFileError> {
    value.parse().map_err(|_| BackupFileError::BadNumber {
        line,
        key,
        value: value.to_owned(),
    })
}

/// Binlog coordinates from `SHOW MASTER STATUS` under BLOCK_COMMIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogInfo {
    pub file: String,
    pub position: u64,
    /// `gtid_current_pos`; `None` only for servers without GTID support.
    pub gtid: Option<String>,
}

/// `xtrabackup_binlog_info`: one TAB-separated line.
pub fn render_binlog_info(b: &BinlogInfo) -> String {
    match &b.gtid {
        Some(g) => format!("{}\t{}\t{}\n", b.file, b.position, g),
        None => format!("{}\t{}\n", b.file, b.position),
    }
}

pub fn parse_binlog_info(text: &str) -> Result<BinlogInfo, BackupFileError> {
    let line = text.lines().next().unwrap_or("");
    let bad = || BackupFileError::BadBinlogInfo(line.to_owned());
    let mut parts = line.split('\t');
    let file = parts.next().filter(|f| !f.is_empty()).ok_or_else(bad)?;
    let position = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let gtid = parts.next().map(str::to_owned);
    Ok(BinlogInfo {
        file: file.to_owned(),
        position,
        gtid,
    })
}

/// `binlog_pos` value of xtrabackup_info (`write_binlog_info`).
pub fn binlog_pos_text(b: &BinlogInfo) -> String {
    match &b.gtid {
        Some(g) => format!(
            "filename '{}', position '{}', GTID of the last change '{}'",
            b.file, b.position, g
        ),
        None => format!("filename '{}', position '{}'", b.file, b.position),
    }
}

/// Fields of `xtrabackup_info` (informational; --prepare ignores it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XtrabackupInfo {
    /// `SELECT UUID()` on the server.
    pub uuid: String,
    /// `--history` name, usually empty.
    pub name: String,
    pub tool_name: String,
    /// Arguments, passwords masked.
    pub tool_command: String,
    /// e.g. "10.11.19-MariaDB" (also written as ibbackup_version).
    pub tool_version: String,
    /// `SELECT VERSION()`.
    pub server_version: String,
    /// Local time, `%Y-%m-%d %H:%M:%S`.
    pub start_time: String,
    pub end_time: String,
    /// Seconds the backup locks were held.
    pub lock_time: i64,
    pub binlog: Option<BinlogInfo>,
    pub innodb_from_lsn: u64,
    pub innodb_to_lsn: u64,
    pub partial: bool,
    pub incremental: bool,
    /// "file" or "mbstream".
    pub format: String,
    pub compressed: bool,
}

/// Exact text of `write_xtrabackup_info`.
pub fn render_xtrabackup_info(i: &XtrabackupInfo) -> String {
    let yn = |b: bool| if b { "Y" } else { "N" };
    let binlog_pos = i.binlog.as_ref().map(binlog_pos_text).unwrap_or_default();
    let mut s = String::new();
    let fields: [(&str, &str); 11] = [
        ("uuid", &i.uuid),
        ("name", &i.name),
        ("tool_name", &i.tool_name),
        ("tool_command", &i.tool_command),
        ("tool_version", &i.tool_version),
        ("ibbackup_version", &i.tool_version),
        ("server_version", &i.server_version),
        ("start_time", &i.start_time),
        ("end_time", &i.end_time),
        ("lock_time", &i.lock_time.to_string()),
        ("binlog_pos", &binlog_pos),
    ];
    for (k, v) in fields {
        let _ = writeln!(s, "{k} = {v}");
    }
    let _ = writeln!(s, "innodb_from_lsn = {}", i.innodb_from_lsn);
    let _ = writeln!(s, "innodb_to_lsn = {}", i.innodb_to_lsn);
    let _ = writeln!(s, "partial = {}", yn(i.partial));
    let _ = writeln!(s, "incremental = {}", yn(i.incremental));
    let _ = writeln!(s, "format = {}", i.format);
    let compressed = if i.compressed { "compressed" } else { "N" };
    let _ = writeln!(s, "compressed = {compressed}");
    s
}

/// Settings `backup-my.cnf` carries for the prepare instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupMyCnf {
    /// mariadb-backup writes its *own* option value (default "crc32"), not
    /// the server's; prepare only uses it for files it creates.
    pub checksum_algorithm: String,
    /// Server's innodb_data_file_path; directories are stripped on render.
    pub data_file_path: String,
    pub log_file_size: u64,
    pub page_size: u32,
    pub undo_directory: String,
    pub undo_tablespaces: u32,
    pub compression_level: u32,
    pub buffer_pool_filename: Option<String>,
    /// Encryption plugin lines (`encryption_plugin_get_config`), each ending
    /// in a newline; empty when no encryption plugin is loaded.
    pub encryption_config: String,
}

/// Exact text of `write_backup_config_file`.
pub fn render_backup_my_cnf(c: &BackupMyCnf) -> String {
    let mut s = String::from(
        "# This options file was generated by innobackupex.\n\n# The server\n[mysqld]\n",
    );
    let _ = writeln!(s, "innodb_checksum_algorithm={}", c.checksum_algorithm);
    let _ = writeln!(
        s,
        "innodb_data_file_path={}",
        local_data_file_path(&c.data_file_path)
    );
    let _ = writeln!(s, "innodb_log_file_size={}", c.log_file_size);
    let _ = writeln!(s, "innodb_page_size={}", c.page_size);
    let _ = writeln!(s, "innodb_undo_directory={}", c.undo_directory);
    let _ = writeln!(s, "innodb_undo_tablespaces={}", c.undo_tablespaces);
    let _ = writeln!(s, "innodb_compression_level={}", c.compression_level);
    // "%s%s\n": an empty line when no buffer pool file name is set.
    if let Some(f) = &c.buffer_pool_filename {
        s.push_str("innodb_buffer_pool_filename=");
        s.push_str(f);
    }
    s.push('\n');
    s.push_str(&c.encryption_config);
    s.push('\n');
    s
}

/// `make_local_paths`: keep only the file name of each `;`-separated data
/// file spec (the backup holds the files in its own directory).
pub fn local_data_file_path(path: &str) -> String {
    if !path.contains('/') {
        return path.to_owned();
    }
    path.split(';')
        .filter(|t| !t.is_empty())
        .map(|t| t.rsplit_once('/').map_or(t, |(_, name)| name))
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naming_switches_at_11_1() {
        assert_eq!(naming(Version(10, 11, 19)), Naming::Xtrabackup);
        assert_eq!(naming(Version(11, 0, 6)), Naming::Xtrabackup);
        assert_eq!(naming(Version(11, 1, 0)), Naming::MariadbBackup);
        assert_eq!(
            naming(Version(11, 4, 2)).checkpoints(),
            "mariadb_backup_checkpoints"
        );
    }

    #[test]
    fn checkpoints_round_trip_and_tolerance() {
        let c = Checkpoints {
            backup_type: BackupType::FullBackuped,
            from_lsn: 0,
            to_lsn: 44420,
            last_lsn: 3_587_126,
            recover_binlog_info: false,
        };
        let text = render_checkpoints(&c);
        assert_eq!(parse_checkpoints(&text), Ok(c));
        let loose = "backup_type=log-applied\nfrom_lsn =0\nto_lsn= 5\n";
        let p = parse_checkpoints(loose).expect("fscanf-style spacing");
        assert_eq!(
            (p.backup_type, p.to_lsn, p.last_lsn),
            (BackupType::LogApplied, 5, 0)
        );
        assert!(matches!(
            parse_checkpoints("from_lsn = 0\n"),
            Err(BackupFileError::MissingKey {
                key: "backup_type",
                ..
            })
        ));
    }

    #[test]
    fn data_file_path_is_localised() {
        assert_eq!(
            local_data_file_path("ibdata1:12M:autoextend"),
            "ibdata1:12M:autoextend"
        );
        assert_eq!(
            local_data_file_path("/a/ibdata1:10M;/b/c/ibdata2:10M:autoextend"),
            "ibdata1:10M;ibdata2:10M:autoextend"
        );
    }
}
