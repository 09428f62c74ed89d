//! Which target directory each backup file goes to, by its name and class, as
//! mariadb-backup places them.

use super::*;
use stagehand_mariadb::datadir::{is_redo_log_name, is_undo_name};

/// Where each manifest file goes, and which are the backup's own.
pub(super) fn plan_files(
    from: &Path,
    manifest: &Manifest,
    targets: &Targets,
    data_directories: Option<&DataDirectories>,
) -> Result<(Vec<Item>, Vec<String>), CopyBackError> {
    let system = manifest.server.system_files();
    let remote = remote_places(manifest, data_directories)?;
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
        let isl_of = f
            .path
            .strip_suffix(".isl")
            .map(|stem| format!("{stem}.ibd"));
        // A DATA DIRECTORY tablespace goes where it is placed; its `.isl` says so, or
        // is left out when the table comes into the datadir.
        let (moved, text) = match (remote.get(&f.path), isl_of.and_then(|t| remote.get(&t))) {
            (Some(Some(abs)), _) => (Some(abs.clone()), None),
            (_, Some(None)) => {
                skipped.push(f.path.clone());
                continue;
            }
            (_, Some(Some(abs))) => (None, Some(abs.display().to_string())),
            _ => (None, None),
        };
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
            dest: moved.unwrap_or_else(|| dir.join(&f.path)),
            rel: f.path.clone(),
            size: f.size,
            hash: f.hash.clone(),
            log: placed == Place::Log,
            system: placed == Place::Home,
            text,
        });
    }
    Ok((items, skipped))
}

/// Each DATA DIRECTORY tablespace of the backup (`db/t.ibd`) → where it is restored:
/// `Some(absolute path)`, or `None` for the datadir (as an ordinary table).
fn remote_places(
    manifest: &Manifest,
    data_directories: Option<&DataDirectories>,
) -> Result<BTreeMap<String, Option<PathBuf>>, CopyBackError> {
    let mut out = BTreeMap::new();
    for f in &manifest.files {
        let Some(abs) = &f.remote else { continue };
        let table = f.path.clone();
        if !Path::new(abs).is_absolute() {
            return Err(CopyBackError::RemotePath {
                path: abs.clone(),
                table,
            });
        }
        let place = match data_directories {
            None => Some(normalize(Path::new(abs))),
            Some(DataDirectories::Datadir(_)) => None,
            Some(DataDirectories::Map(map)) => Some(mapped(Path::new(abs), map)?),
        };
        out.insert(table, place);
    }
    Ok(out)
}

/// `abs` with the longest matching prefix of `map` replaced (whole path components);
/// unchanged when none matches.
pub(super) fn mapped(abs: &Path, map: &BTreeMap<String, String>) -> Result<PathBuf, CopyBackError> {
    let best = map
        .iter()
        .filter_map(|(old, new)| Some((abs.strip_prefix(old).ok()?, old, new)))
        .max_by_key(|(_, old, _)| old.len());
    let Some((rest, _, new)) = best else {
        return Ok(normalize(abs));
    };
    if !Path::new(new).is_absolute() {
        return Err(CopyBackError::RemotePath {
            path: new.clone(),
            table: abs.display().to_string(),
        });
    }
    Ok(normalize(&Path::new(new).join(rest)))
}

/// A DATA DIRECTORY tablespace is never written over an existing file, nor into the
/// backup. (One a map puts inside a target directory is checked with it.)
pub(super) fn check_remote_free(
    items: &[Item],
    targets: &Targets,
    from: &Path,
) -> Result<(), CopyBackError> {
    for item in items {
        if item.dest.starts_with(from) {
            return Err(CopyBackError::Overlap {
                target: item.dest.display().to_string(),
                from: from.display().to_string(),
            });
        }
        let inside_targets = targets.dirs().iter().any(|d| item.dest.starts_with(d));
        if inside_targets || item.dest.symlink_metadata().is_err() {
            continue;
        }
        return Err(CopyBackError::RemoteExists {
            path: item.dest.display().to_string(),
            table: item.rel.clone(),
        });
    }
    Ok(())
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
