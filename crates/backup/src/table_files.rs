//! Non-InnoDB table files copied while DDL could still run (under BACKUP STAGE START):
//! which of them must be copied again, and which leave the backup, once DDL is blocked.
//! Files are grouped per table (`db/t.frm`, `db/t.MYD`, `db/t#P#p0.MYI`, `db/t.par` …
//! are one group), and a table that changed is copied again whole: a backup must never
//! hold part of a table from before a DDL statement and part from after it (the way a
//! renamed Aria table loses its data files in mariadb-backup 10.11).

use crate::entry::{CopiedFile, SourceStamp};
use stagehand_mariadb::datadir::FileClass;
use std::collections::{BTreeMap, BTreeSet};

/// A table: its database directory and its name as files spell it (filename encoding).
pub type Table = (String, String);

/// A non-InnoDB file as it is now in the datadir.
#[derive(Debug, Clone)]
pub struct PresentFile {
    /// `db/t.MYD`
    pub rel: String,
    pub class: FileClass,
    /// Inode, size and mtime now (`copied_ns` unused).
    pub stamp: SourceStamp,
}

/// What to do with the copied non-InnoDB files.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TableDelta {
    /// The files of every changed table that exist now: copy them again.
    pub recopy: Vec<String>,
    /// Copied files whose table lost them (dropped, renamed away): out of the backup.
    pub removed: Vec<String>,
    /// The changed tables.
    pub tables: Vec<Table>,
}

/// Whether a file class is reconciled per table here (InnoDB tablespaces are
/// reconciled from the redo log's file operations; Aria logs are copied at BLOCK_COMMIT).
pub fn is_table_file(class: FileClass) -> bool {
    matches!(class, FileClass::NonInnodb | FileClass::AriaData)
}

/// The table a file belongs to: `db/t.frm`, `db/t#P#p0.MYD` → `(db, t)`; `db/db.opt`
/// → `(db, db)` (a table named like its database shares the group: it only copies more).
pub fn table_of(rel: &str) -> Option<Table> {
    let (db, name) = rel.split_once('/')?;
    let stem = name.split('.').next().unwrap_or(name);
    let table = ["#P#", "#p#"]
        .iter()
        .filter_map(|mark| stem.find(mark))
        .min()
        .map_or(stem, |at| &stem[..at]);
    Some((db.to_string(), table.to_string()))
}

/// Compares what was copied with what is there now. A table changed if it gained or
/// lost a file, if a non-Aria file is not certainly unchanged since its copy
/// ([`SourceStamp::still_matches_stamp`]), if an Aria file was replaced (another
/// inode: TRUNCATE, a rename over it), or if `forced` names it (the server's DDL log).
/// Aria files written in place are not a change here: the Aria pass under BLOCK_COMMIT
/// copies them again.
pub fn delta(
    copied: &BTreeMap<String, CopiedFile>,
    present: &[PresentFile],
    forced: &BTreeSet<Table>,
) -> TableDelta {
    let before = by_table(copied.values().filter(|f| is_table_file(f.class)), |f| {
        f.path.as_str()
    });
    let now = by_table(present.iter().filter(|f| is_table_file(f.class)), |f| {
        f.rel.as_str()
    });
    let tables: BTreeSet<&Table> = before.keys().chain(now.keys()).collect();
    let mut out = TableDelta::default();
    for table in tables {
        let was = before.get(table).map(Vec::as_slice).unwrap_or_default();
        let is = now.get(table).map(Vec::as_slice).unwrap_or_default();
        if !forced.contains(table) && unchanged(was, is) {
            continue;
        }
        out.tables.push(table.clone());
        out.recopy.extend(is.iter().map(|f| f.rel.clone()));
        out.removed.extend(
            was.iter()
                .filter(|c| !is.iter().any(|p| p.rel == c.path))
                .map(|c| c.path.clone()),
        );
    }
    out
}

fn unchanged(was: &[&CopiedFile], is: &[&PresentFile]) -> bool {
    was.len() == is.len()
        && is.iter().all(|p| {
            was.iter()
                .find(|c| c.path == p.rel)
                .and_then(|c| c.source)
                .is_some_and(|copied| match p.class {
                    FileClass::AriaData => copied.ino == p.stamp.ino,
                    _ => copied.still_matches_stamp(&p.stamp),
                })
        })
}

fn by_table<'a, T>(
    files: impl Iterator<Item = &'a T>,
    rel: impl Fn(&T) -> &str,
) -> BTreeMap<Table, Vec<&'a T>>
where
    T: 'a,
{
    let mut out: BTreeMap<Table, Vec<&T>> = BTreeMap::new();
    for f in files {
        if let Some(table) = table_of(rel(f)) {
            out.entry(table).or_default().push(f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i128 = 1_000_000_000;

    fn stamp(ino: u64, size: u64, mtime_s: i128) -> SourceStamp {
        SourceStamp {
            ino,
            size,
            mtime_ns: mtime_s * SECOND,
            copied_ns: 0,
        }
    }

    /// Copied at t=100 s, from a file last written at `mtime_s`.
    fn copied(rel: &str, class: FileClass, ino: u64, mtime_s: i128) -> (String, CopiedFile) {
        let f = CopiedFile {
            path: rel.into(),
            class,
            size: 10,
            hash: String::new(),
            space_id: None,
            pages: 0,
            reread_pages: 0,
            unverified_pages: 0,
            source: Some(SourceStamp {
                copied_ns: 100 * SECOND,
                ..stamp(ino, 10, mtime_s)
            }),
            stored: None,
            remote: None,
            encrypted: None,
        };
        (rel.into(), f)
    }

    fn present(rel: &str, class: FileClass, ino: u64, mtime_s: i128) -> PresentFile {
        PresentFile {
            rel: rel.into(),
            class,
            stamp: stamp(ino, 10, mtime_s),
        }
    }

    fn t(db: &str, table: &str) -> Table {
        (db.into(), table.into())
    }

    #[test]
    fn files_group_by_table_across_partitions() {
        assert_eq!(table_of("d/t.frm"), Some(t("d", "t")));
        assert_eq!(table_of("d/t#P#p0.MYD"), Some(t("d", "t")));
        assert_eq!(table_of("d/t#P#p0#SP#s1.MYI"), Some(t("d", "t")));
        assert_eq!(table_of("d/db.opt"), Some(t("d", "db")));
        assert_eq!(table_of("d/a@0020b.frm"), Some(t("d", "a@0020b")));
        assert_eq!(table_of("ibdata1"), None);
    }

    #[test]
    fn an_unchanged_table_stays_and_a_written_one_is_copied_again_whole() {
        let nin = FileClass::NonInnodb;
        let copied: BTreeMap<_, _> = [
            copied("d/keep.frm", nin, 1, 50),
            copied("d/keep.MYD", nin, 2, 50),
            copied("d/m.frm", nin, 3, 50),
            copied("d/m.MYD", nin, 4, 50),
            copied("d/m.MYI", nin, 5, 50),
        ]
        .into();
        let now = [
            present("d/keep.frm", nin, 1, 50),
            present("d/keep.MYD", nin, 2, 50),
            present("d/m.frm", nin, 3, 50),
            present("d/m.MYD", nin, 4, 120), // written after its copy
            present("d/m.MYI", nin, 5, 50),
        ];
        let d = delta(&copied, &now, &BTreeSet::new());
        assert_eq!(d.tables, [t("d", "m")]);
        assert_eq!(d.recopy, ["d/m.frm", "d/m.MYD", "d/m.MYI"]);
        assert!(d.removed.is_empty());
    }

    #[test]
    fn a_file_written_just_before_its_copy_is_copied_again() {
        // Written 0.5 s before the copy read it: a later write could keep its mtime.
        let (rel, mut f) = copied("d/m.MYD", FileClass::NonInnodb, 4, 0);
        f.source = Some(SourceStamp {
            copied_ns: 100 * SECOND,
            mtime_ns: 100 * SECOND - SECOND / 2,
            ..stamp(4, 10, 0)
        });
        let copied: BTreeMap<_, _> = [(rel, f)].into();
        let mut now = present("d/m.MYD", FileClass::NonInnodb, 4, 0);
        now.stamp.mtime_ns = 100 * SECOND - SECOND / 2;
        let d = delta(&copied, &[now], &BTreeSet::new());
        assert_eq!(d.recopy, ["d/m.MYD"]);
    }

    #[test]
    fn a_renamed_table_leaves_its_old_files_and_comes_whole_under_its_new_name() {
        let (nin, aria) = (FileClass::NonInnodb, FileClass::AriaData);
        let copied: BTreeMap<_, _> = [
            copied("d/a.frm", nin, 1, 50),
            copied("d/a.MAI", aria, 2, 99),
            copied("d/a.MAD", aria, 3, 99),
            copied("d/gone.frm", nin, 4, 50),
            copied("d/gone.MYD", nin, 5, 50),
        ]
        .into();
        // RENAME TABLE a TO b (same inodes), DROP TABLE gone.
        let now = [
            present("d/b.frm", nin, 1, 50),
            present("d/b.MAI", aria, 2, 99),
            present("d/b.MAD", aria, 3, 99),
        ];
        let d = delta(&copied, &now, &BTreeSet::new());
        assert_eq!(d.tables, [t("d", "a"), t("d", "b"), t("d", "gone")]);
        assert_eq!(d.recopy, ["d/b.frm", "d/b.MAI", "d/b.MAD"]);
        assert_eq!(
            d.removed,
            ["d/a.MAD", "d/a.MAI", "d/a.frm", "d/gone.MYD", "d/gone.frm"]
        );
    }

    #[test]
    fn aria_written_in_place_waits_for_block_commit_but_a_replaced_file_does_not() {
        let (nin, aria) = (FileClass::NonInnodb, FileClass::AriaData);
        let copied: BTreeMap<_, _> = [
            copied("d/w.frm", nin, 1, 50),
            copied("d/w.MAD", aria, 2, 99),
            copied("d/tr.frm", nin, 3, 50),
            copied("d/tr.MAD", aria, 4, 50),
        ]
        .into();
        let now = [
            present("d/w.frm", nin, 1, 50),
            present("d/w.MAD", aria, 2, 150), // rows written: same file
            present("d/tr.frm", nin, 3, 50),
            present("d/tr.MAD", aria, 9, 150), // TRUNCATE: a new file
        ];
        let d = delta(&copied, &now, &BTreeSet::new());
        assert_eq!(d.tables, [t("d", "tr")]);
    }

    #[test]
    fn a_table_the_ddl_log_names_is_copied_again_even_with_the_same_stamps() {
        let nin = FileClass::NonInnodb;
        let copied: BTreeMap<_, _> = [copied("d/c.frm", nin, 1, 50)].into();
        let now = [present("d/c.frm", nin, 1, 50)];
        let forced = [t("d", "c")].into();
        assert_eq!(delta(&copied, &now, &forced).recopy, ["d/c.frm"]);
    }

    #[test]
    fn innodb_tablespaces_are_left_to_the_redo_ledger() {
        let copied: BTreeMap<_, _> = [copied("d/i.ibd", FileClass::Tablespace, 1, 50)].into();
        let d = delta(&copied, &[], &BTreeSet::new());
        assert_eq!(d, TableDelta::default());
    }
}
