//! Pure readers and writers of the MariaDB 10.11 InnoDB on-disk formats that a
//! hot physical copier needs: tablespace pages (`page`), the 10.8+ redo log
//! (`redo`), the ledger of tablespace file operations found in the log
//! (`file_ops`) and the metadata files of a mariadb-backup directory
//! (`backup_files`). Nothing here does I/O except `redo::BackupLogWriter`,
//! which writes to any `std::io::Write`.
//!
//! All integers in InnoDB structures are big-endian (`mach_write_to_N` in
//! storage/innobase/include/mach0data.inl).

pub mod backup_files;
pub mod file_ops;
pub mod page;
pub mod redo;

mod bytes;
