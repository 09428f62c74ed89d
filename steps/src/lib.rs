//! stagehand's step kinds and the MariaDB connection provider. Each step kind lives in
//! one module with its typed config, its dry-run sentence and its run.

pub mod backup_server;
pub mod compress;
pub mod copy;
pub mod copy_back;
pub mod datadir;
pub mod decompress;
pub mod discard;
pub mod exec;
pub mod fetch;
pub mod http;
pub mod innodb;
pub mod manifest;
pub mod mariadb;
pub mod notify;
pub mod pagecopy;
pub mod prepare;
pub mod private_fs;
pub mod procfs;
pub mod progress;
pub mod redo_tail;
pub mod repo;
pub mod rotate;
pub mod sandbox;
pub mod seal;
pub mod server;
pub mod spool;
pub mod sql;
pub mod stage_locks;
#[cfg(feature = "testkit")]
pub mod testkit;
#[cfg(feature = "testkit")]
pub mod testkit_s3;
pub mod upload;
pub mod verify;

use stagehand_engine::resources::ConnectionProvider;
use stagehand_engine::{Registry, Typed};
use std::sync::Arc;

/// Every step kind this build knows.
pub fn registry() -> Registry {
    let mut r = Registry::default();
    r.register(Typed::<compress::Compress>::default());
    r.register(Typed::<copy::Copy>::default());
    r.register(Typed::<copy_back::CopyBack>::default());
    r.register(Typed::<decompress::Decompress>::default());
    r.register(Typed::<discard::Discard>::default());
    r.register(Typed::<exec::Exec>::default());
    r.register(Typed::<fetch::Fetch>::default());
    r.register(Typed::<notify::Notify>::default());
    r.register(Typed::<prepare::Prepare>::default());
    r.register(Typed::<redo_tail::RedoTail>::default());
    r.register(Typed::<rotate::Rotate>::default());
    r.register(Typed::<seal::Seal>::default());
    r.register(Typed::<server::Server>::default());
    r.register(Typed::<sql::Sql>::default());
    r.register(Typed::<stage_locks::StageLocks>::default());
    r.register(Typed::<upload::Upload>::default());
    r.register(Typed::<verify::Verify>::default());
    r
}

/// The provider that opens the plans' `connections:` (MariaDB sessions).
pub fn connection_provider() -> Arc<dyn ConnectionProvider> {
    Arc::new(mariadb::MariaDbProvider)
}
