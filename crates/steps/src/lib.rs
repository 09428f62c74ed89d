//! stagehand's step kinds, one folder each (`uses: copy_back` is `src/copy_back/`) with
//! its typed config, its dry-run sentence, its run and its preflight. Kinds do not import
//! each other: what two kinds share lives in a library crate (`stagehand-mariadb`,
//! `stagehand-backup`, `stagehand-repo`, `stagehand-host`, `stagehand-innodb`), and the
//! outputs one kind reads from another are typed in `outputs.rs`.

mod binlog_archive;
mod binlog_replay;
mod compress;
mod copy;
mod copy_back;
mod decompress;
mod discard;
mod exec;
mod fetch;
mod notify;
mod outputs;
mod pitr_target;
mod prepare;
mod reconcile;
mod redo_tail;
mod rotate;
mod seal;
mod server;
mod sql;
mod stage_locks;
mod upload;
mod verify;

/// Fixtures the kinds' unit tests share (sealed backups, configs, contexts).
#[cfg(test)]
use compress::tests as test_support;

use stagehand_engine::resources::ConnectionProvider;
use stagehand_engine::{Registry, Typed};
use std::sync::Arc;

/// Every step kind this build knows.
pub fn registry() -> Registry {
    let mut r = Registry::default();
    r.register(Typed::<binlog_archive::BinlogArchiveKind>::default());
    r.register(Typed::<binlog_replay::BinlogReplay>::default());
    r.register(Typed::<compress::Compress>::default());
    r.register(Typed::<copy::Copy>::default());
    r.register(Typed::<copy_back::CopyBack>::default());
    r.register(Typed::<decompress::Decompress>::default());
    r.register(Typed::<discard::Discard>::default());
    r.register(Typed::<exec::Exec>::default());
    r.register(Typed::<fetch::Fetch>::default());
    r.register(Typed::<notify::Notify>::default());
    r.register(Typed::<pitr_target::PitrTarget>::default());
    r.register(Typed::<prepare::Prepare>::default());
    r.register(Typed::<reconcile::Reconcile>::default());
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
    Arc::new(stagehand_mariadb::session::MariaDbProvider)
}
