//! Which target directory each backup file goes to, by its name and class, as
//! mariadb-backup places them.

use super::*;
use stagehand_mariadb::datadir::{is_redo_log_name, is_undo_name};

/// Where each manifest file goes, and which are the backup's own.
pub(super) fn plan_files(
    from: &Path,
    manifest: &Manifest,
    targets: &Targets,
) -> Result<(Vec<Item>, Vec<String>), CopyBackError> {
    let system = manifest.server.system_files();
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for f in &manifest.files {
        let bad = Path::new(&f.path)
            .components()
            .any(|c| !matches!(c, Component::Normal(_)));
        if bad || f.path.is_empty() {
            return Err(CopyBackError::BadPath {
                path: f.path.clone(),
            });
        }
        let placed = place(f, manifest, &system);
        let dir = match placed {
            Place::Skip => {
                skipped.push(f.path.clone());
                continue;
            }
            Place::Datadir => &targets.datadir,
            Place::Undo => &targets.undo,
            Place::Log => &targets.log,
            Place::Home => &targets.home,
        };
        items.push(Item {
            src: from.join(&f.path),
            dest: dir.join(&f.path),
            rel: f.path.clone(),
            size: f.size,
            sha256: f.sha256.clone(),
            log: placed == Place::Log,
            system: placed == Place::Home,
        });
    }
    Ok((items, skipped))
}

pub(super) fn place(f: &CopiedFile, manifest: &Manifest, system: &[String]) -> Place {
    use stagehand_mariadb::datadir::FileClass;
    let rel = f.path.as_str();
    let top = !rel.contains('/');
    let backup_own = rel == MANIFEST_FILE
        || rel.starts_with('.')
        || rel == "backup-my.cnf"
        || manifest.metadata_files.iter().any(|m| m == rel)
        || (top && (rel.starts_with("xtrabackup_") || rel.starts_with("mariadb_backup_")))
        // The temporary tablespace is recreated at every start.
        || rel == "ibtmp1";
    if backup_own {
        Place::Skip
    } else if top && (f.class == FileClass::UndoTablespace || is_undo_name(rel)) {
        Place::Undo
    } else if top && is_redo_log_name(rel) {
        Place::Log
    } else if top && (f.class == FileClass::SystemTablespace || system.iter().any(|s| s == rel)) {
        Place::Home
    } else {
        Place::Datadir
    }
}

/// InnoDB's own files in an undo/log/data home directory: what `force` may remove there.
pub(super) fn is_innodb_own(name: &str, system: &[String]) -> bool {
    is_undo_name(name)
        || is_redo_log_name(name)
        || name == "ibtmp1"
        || name.starts_with("ibdata")
        || system.iter().any(|s| s == name)
}
