//! The non-InnoDB half of a reconcile pass: tables (frm, MyISAM, Aria, CSV, …) whose
//! files changed since they were copied under START are copied again whole; the files
//! of tables dropped or renamed away leave the backup (`backup::table_files`).

use stagehand_backup::dir::merged_files;
use stagehand_backup::dir::CopyPart;
use stagehand_backup::entry::{CopiedFile, SourceStamp};
use stagehand_backup::pagecopy::{copy_file, CopyError};
use stagehand_backup::table_files::{self, PresentFile, Table};
use stagehand_engine::StepError;
use stagehand_mariadb::datadir::{discover, ServerSettings, SourceFile};
use std::collections::BTreeSet;
use std::path::Path;

/// What the pass did to the non-InnoDB tables.
#[derive(Debug, Default)]
pub struct TablesReconciled {
    pub copied: Vec<CopiedFile>,
    pub removed: Vec<String>,
    pub tables: usize,
}

/// Compares the copied non-InnoDB files with the datadir now and copies again every
/// table that changed. `final_pass`: DDL and non-transactional writes are blocked, so
/// the server's DDL log adds the tables it names, and a file that cannot be found is an
/// error; under START a file that vanished is left to the pass under BLOCK_DDL.
pub fn reconcile_tables(
    from: &Path,
    to: &Path,
    parts: &[CopyPart],
    settings: &ServerSettings,
    cancel: &tokio_util::sync::CancellationToken,
    final_pass: bool,
) -> Result<TablesReconciled, StepError> {
    let present = present_files(from, settings)?;
    let forced = if final_pass {
        tables_in_ddl_log(from)
    } else {
        BTreeSet::new()
    };
    let delta = table_files::delta(&merged_files(parts), &present, &forced);
    let class_of: std::collections::HashMap<&str, _> =
        present.iter().map(|p| (p.rel.as_str(), p.class)).collect();
    let opts = super::copy_options();
    let mut scratch = Vec::new();
    let mut copied = Vec::new();
    for rel in &delta.recopy {
        if cancel.is_cancelled() {
            return Err(StepError::cancelled());
        }
        let Some(&class) = class_of.get(rel.as_str()) else {
            continue;
        };
        let src = SourceFile {
            abs: from.join(rel),
            rel: rel.clone(),
            class,
            remote: None,
        };
        match copy_file(&src, to, &opts, &mut scratch) {
            Ok(c) => copied.push(c),
            Err(CopyError::Io { source, .. })
                if !final_pass && source.kind() == std::io::ErrorKind::NotFound =>
            {
                tracing::info!(file = %rel, "gone before it could be copied again; left to the pass under BLOCK_DDL");
                let _ = std::fs::remove_file(to.join(rel));
            }
            Err(e) => {
                return Err(StepError::fatal(format!(
                    "copying {} again: {e}",
                    src.abs.display()
                )))
            }
        }
    }
    for rel in &delta.removed {
        match std::fs::remove_file(to.join(rel)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StepError::fatal(format!(
                    "cannot remove {} from the backup: {e}",
                    to.join(rel).display()
                )))
            }
            _ => {}
        }
    }
    if !delta.tables.is_empty() {
        tracing::info!(
            tables = delta.tables.len(),
            copied = copied.len(),
            removed = delta.removed.len(),
            "non-InnoDB tables changed since their copy were copied again"
        );
    }
    Ok(TablesReconciled {
        copied,
        removed: delta.removed,
        tables: delta.tables.len(),
    })
}

/// The datadir's non-InnoDB table files now, with their stamps.
fn present_files(from: &Path, settings: &ServerSettings) -> Result<Vec<PresentFile>, StepError> {
    let files = discover(from, settings).map_err(|e| StepError::fatal(e.to_string()))?;
    Ok(files
        .into_iter()
        .filter(|f| table_files::is_table_file(f.class))
        .filter_map(|f| {
            // Gone between the listing and the stat: absent, like a dropped table.
            let meta = std::fs::metadata(&f.abs).ok()?;
            Some(PresentFile {
                rel: f.rel,
                class: f.class,
                stamp: SourceStamp::of(&meta, 0),
            })
        })
        .collect())
}

/// Every table the server's DDL log names (before and after a rename): a statement
/// that rewrote a file within one mtime tick of its copy still gets the table copied
/// again. The log is a cross-check only (it misses TRUNCATE of MyISAM and Aria tables,
/// which the file comparison sees), so an unreadable log is a warning.
fn tables_in_ddl_log(from: &Path) -> BTreeSet<Table> {
    match stagehand_mariadb::ddl_log::read(from) {
        Ok(entries) => entries
            .into_iter()
            .flat_map(|e| [(e.db, e.table), (e.new_db, e.new_table)])
            .filter(|(db, table)| !db.is_empty() && !table.is_empty())
            .collect(),
        Err(e) => {
            tracing::warn!(
                "cannot read the server's DDL log in {} ({e}); non-InnoDB tables are compared by their files only",
                from.display()
            );
            BTreeSet::new()
        }
    }
}
