//! The backup directory: its manifest and file entries (`manifest`), the page copier
//! that produces those entries (`pagecopy`, reading each file a window ahead: `readahead`) and the spool a streamed backup shares with
//! its uploader (`spool`), and the tablespace file changes a backup replays before
//! recovery (`ddl`), and the non-InnoDB tables copied again after DDL (`table_files`). Knows nothing about repositories, S3 or plans.

pub mod check;
pub mod codec;
pub mod ddl;
pub mod dir;
pub mod entry;
pub mod manifest;
pub mod pagecopy;
pub mod readahead;
pub mod source;
pub mod spool;
pub mod table_files;
