//! The server's own log of DDL run since BACKUP STAGE START (`ddl.log` in the datadir,
//! started by START and closed at BLOCK_DDL): one tab-separated line per statement —
//! time, kind, engine, partitioned, db, table, table id, then the new engine,
//! partitioned, db, table and id. Names are in the server's file-name encoding.
//! It misses some file changes (TRUNCATE of MyISAM/Aria/CSV tables, DISCARD and IMPORT
//! TABLESPACE), so it is a cross-check, never the only detector.

use std::path::Path;

/// The log's file name in the datadir.
pub const DDL_LOG: &str = "ddl.log";

/// One logged statement (the fields stagehand reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DdlEntry {
    /// `CREATE`, `DROP`, `RENAME`, `ALTER`, `TRUNCATE`, `repair` …
    pub kind: String,
    pub engine: String,
    pub db: String,
    pub table: String,
    /// For ALTER … ENGINE= and RENAME: the engine after it (empty otherwise).
    pub new_engine: String,
    /// For RENAME (and ALTER … RENAME): the name after it (empty otherwise).
    pub new_db: String,
    pub new_table: String,
}

impl DdlEntry {
    /// Whether the statement touched an InnoDB table (before or after it).
    pub fn is_innodb(&self) -> bool {
        self.engine.eq_ignore_ascii_case("innodb") || self.new_engine.eq_ignore_ascii_case("innodb")
    }
}

/// The entries of the log's text; a line with too few fields is skipped.
pub fn parse(text: &str) -> Vec<DdlEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let field = |i: usize| f.get(i).map(|s| s.to_string());
            Some(DdlEntry {
                kind: field(1)?,
                engine: field(2)?,
                db: field(4)?,
                table: field(5)?,
                new_engine: field(7).unwrap_or_default(),
                new_db: field(9).unwrap_or_default(),
                new_table: field(10).unwrap_or_default(),
            })
        })
        .collect()
}

/// The log of the server whose datadir is `datadir`.
pub fn read(datadir: &Path) -> std::io::Result<Vec<DdlEntry>> {
    std::fs::read_to_string(datadir.join(DDL_LOG)).map(|t| parse(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_entries_and_innodb_ones_are_told_apart() {
        let text = "1733500000\tCREATE\tInnoDB\t0\td\tt\tid1\t\t0\t\t\t\n\
                    1733500001\tTRUNCATE\tMyISAM\t0\td\tm\tid2\t\t0\t\t\t\n\
                    1733500002\tALTER\tAria\t0\td\ta\tid3\tInnoDB\t0\td\ta\tid4\n\
                    short\tline\n";
        let entries = parse(text);
        assert_eq!(entries.len(), 3);
        assert_eq!(
            (
                entries[0].kind.as_str(),
                entries[0].db.as_str(),
                entries[0].table.as_str()
            ),
            ("CREATE", "d", "t")
        );
        assert_eq!(
            (entries[2].new_db.as_str(), entries[2].new_table.as_str()),
            ("d", "a")
        );
        let innodb: Vec<bool> = entries.iter().map(DdlEntry::is_innodb).collect();
        assert_eq!(innodb, [true, false, true]);
    }
}
