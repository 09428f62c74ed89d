//! What is in a MariaDB datadir, file by file, and where each file is copied in which
//! phase of a backup: InnoDB tablespaces page by page, non-InnoDB table files under
//! BLOCK_DDL, Aria logs under BLOCK_COMMIT, and the rest not at all.

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
    pub fn from_variables(v: &BTreeMap<String, String>) -> Self {
        let text = |k: &str| v.get(k).cloned().unwrap_or_default();
        let num = |k: &str| v.get(k).and_then(|s| s.parse().ok()).unwrap_or_default();
        Self {
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
        }
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
            })
        })
        .collect())
}

fn discover_database(dir: &Path, out: &mut Vec<SourceFile>) -> Result<(), DatadirError> {
    let db = file_name(dir);
    for entry in read_dir(dir)? {
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
                return Err(DatadirError::Unsupported(format!(
                    "{db}/{name}: tables with DATA DIRECTORY are not supported yet (their tablespace lives outside the datadir)"
                )))
            }
            "mad" | "mai" => FileClass::AriaData,
            e if NON_INNODB_EXT.contains(&e) => FileClass::NonInnodb,
            _ => continue,
        };
        out.push(SourceFile {
            abs: entry,
            rel: format!("{db}/{name}"),
            class,
        });
    }
    Ok(())
}

/// `undo001` … `undo127` (innodb_undo_tablespaces).
fn is_undo_name(name: &str) -> bool {
    name.len() == 7 && name.starts_with("undo") && name[4..].chars().all(|c| c.is_ascii_digit())
}

fn is_skipped_dir(name: &str) -> bool {
    name.starts_with('#') || name == "lost+found" || name.starts_with('.')
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

#[cfg(test)]
mod tests {
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
}
