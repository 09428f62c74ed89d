//! MariaDB server handling: client sessions and the backup locks they hold (`session`),
//! the server's settings, data directory layout and identity (`datadir`), private
//! throwaway servers (`sandbox`) and which server binary may open a backup
//! (`backup_server`). Knows nothing about the backup directory's format, repositories
//! or plans (beyond the engine's step error and finding types).

pub mod backup_server;
pub mod binlog;
pub mod datadir;
pub mod ddl_log;
pub mod defaults;
pub mod gtid;
pub mod locks;
pub mod proof;
pub mod sandbox;
pub mod session;
pub mod version;
