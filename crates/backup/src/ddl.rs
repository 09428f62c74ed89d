//! The tablespace file changes a backup copied under BACKUP STAGE START must replay on
//! its files before crash recovery: DDL that ran during the copy dropped, renamed or
//! rebuilt tablespaces whose files were already copied. The reconcile under BLOCK_DDL
//! records them (the manifest's `ddl` section) beside mariadb-backup's side files
//! (`db/t.del`, `db/t.ren` holding `db/t2`, `db/t.new`), and `prepare` applies them here
//! for either recovery engine: recovery cannot rename over a file that exists, nor
//! remove a stale copy (see ../shared/docs/innodb-source-notes.md §4.6).
//!
//! Order: every delete, then every rename in two phases (all sources parked first, so a
//! swap `a→b, b→a` works), then every new file over its final name. Each op first
//! checks that the file holds the tablespace the op names (page 0's space id), and the
//! progress is journalled, so an interrupted apply resumes where it stopped.

use serde::{Deserialize, Serialize};
use stagehand_innodb::file_ops::FileOps;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One change, with backup-relative paths (`db/t.ibd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FileChange {
    /// The tablespace was dropped: its copy leaves the backup.
    Delete { path: String, space_id: u32 },
    /// The tablespace was renamed: its copy moves to the new name.
    Rename {
        from: String,
        to: String,
        space_id: u32,
    },
    /// The tablespace was created or rebuilt: its copy `side` replaces `path`.
    New {
        path: String,
        side: String,
        space_id: u32,
    },
}

/// The reconcile's record, in the manifest: the file changes prepare applies, found in
/// the log up to `lsn` (taken under BLOCK_DDL).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DdlRecord {
    pub lsn: u64,
    pub changes: Vec<FileChange>,
}

/// mariadb-backup's marker files for the changes, so that `mariadb-backup --prepare`
/// run by hand on the backup applies them too: `db/t.del` (empty) for a delete,
/// `db/t.ren` holding the new `db/table` for a rename. A new file is its own marker
/// (`db/t.new`).
pub fn markers(changes: &[FileChange]) -> Vec<(String, String)> {
    changes
        .iter()
        .filter_map(|c| match c {
            FileChange::Delete { path, .. } => Some((side_path(path, "del"), String::new())),
            FileChange::Rename { from, to, .. } => Some((
                side_path(from, "ren"),
                to.strip_suffix(".ibd").unwrap_or(to).to_string(),
            )),
            FileChange::New { .. } => None,
        })
        .collect()
}

impl DdlRecord {
    /// Every backup-relative path the changes consume or produce: a prepare interrupted
    /// while applying them finds these moved, gone or new.
    pub fn paths(&self) -> BTreeSet<String> {
        let mut paths: BTreeSet<String> =
            markers(&self.changes).into_iter().map(|(p, _)| p).collect();
        for c in &self.changes {
            match c {
                FileChange::Delete { path, .. } => {
                    paths.insert(path.clone());
                }
                FileChange::Rename { from, to, .. } => {
                    paths.insert(from.clone());
                    paths.insert(to.clone());
                }
                FileChange::New { path, side, .. } => {
                    paths.insert(path.clone());
                    paths.insert(side.clone());
                }
            }
        }
        paths
    }
}

impl FileChange {
    /// The file the op consumes, and the space id it must hold.
    fn source(&self) -> (&str, u32) {
        match self {
            FileChange::Delete { path, space_id } => (path, *space_id),
            FileChange::Rename { from, space_id, .. } => (from, *space_id),
            FileChange::New { side, space_id, .. } => (side, *space_id),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds tablespace {found}, not {expected} as the backup's DDL record says")]
    WrongSpace {
        path: PathBuf,
        expected: u32,
        found: u32,
    },
    #[error("{path} is missing: the backup's DDL record needs it")]
    Missing { path: PathBuf },
    #[error("the journal {path} cannot be read: {message}")]
    Journal { path: PathBuf, message: String },
}

/// Where the apply keeps its journal and parked files, inside the backup directory.
pub const APPLY_DIR: &str = ".stagehand-prepare";

/// What has been done, step by step (indexes into the op list).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    deleted: BTreeSet<usize>,
    parked: BTreeSet<usize>,
    renamed: BTreeSet<usize>,
    placed: BTreeSet<usize>,
    /// Every op is done: a rerun (prepare killed before it recorded the apply) does
    /// nothing.
    finished: bool,
}

/// Applies `changes` to the backup in `dir`; returns how many ops it carried out now
/// (0 on a rerun after a finished apply). The journal stays until [`forget`], which the
/// caller runs once it has recorded the apply (in the manifest).
pub fn apply(dir: &Path, changes: &[FileChange]) -> Result<usize, ApplyError> {
    let work = dir.join(APPLY_DIR);
    let journal_path = work.join("applied.json");
    let mut journal = read_journal(&journal_path)?;
    if journal.finished {
        return Ok(0);
    }
    let mut done = 0;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ApplyError::Io { path, source }
    };
    std::fs::create_dir_all(work.join("ren")).map_err(io(&work))?;
    for (i, change) in changes.iter().enumerate() {
        if let FileChange::Delete { path, .. } = change {
            if journal.deleted.contains(&i) {
                continue;
            }
            // Gone already: removed just before a crash that kept the journal behind.
            if dir.join(path).exists() {
                check_space(dir, change)?;
                std::fs::remove_file(dir.join(path)).map_err(io(&dir.join(path)))?;
            }
            journal.deleted.insert(i);
            write_journal(&journal_path, &journal)?;
            done += 1;
        }
    }
    let renames: Vec<(usize, &str, &str)> = changes
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c {
            FileChange::Rename { from, to, .. } => Some((i, from.as_str(), to.as_str())),
            _ => None,
        })
        .collect();
    for &(i, from, _) in &renames {
        if journal.parked.contains(&i) {
            continue;
        }
        let parked = work.join("ren").join(i.to_string());
        // Parked already when the source is gone and its parked copy is there.
        let already = parked.exists() && !dir.join(from).exists();
        if !already {
            check_space(dir, &changes[i])?;
            std::fs::rename(dir.join(from), &parked).map_err(io(&dir.join(from)))?;
        }
        journal.parked.insert(i);
        write_journal(&journal_path, &journal)?;
    }
    for &(i, _, to) in &renames {
        if journal.renamed.contains(&i) {
            continue;
        }
        let target = dir.join(to);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let parked = work.join("ren").join(i.to_string());
        if parked.exists() {
            std::fs::rename(&parked, &target).map_err(io(&parked))?;
        } else {
            check_space(
                dir,
                &FileChange::Delete {
                    path: to.into(),
                    space_id: changes[i].source().1,
                },
            )?;
        }
        journal.renamed.insert(i);
        write_journal(&journal_path, &journal)?;
        done += 1;
    }
    for (i, change) in changes.iter().enumerate() {
        if let FileChange::New { path, side, .. } = change {
            if journal.placed.contains(&i) {
                continue;
            }
            if dir.join(side).exists() || !dir.join(path).exists() {
                check_space(dir, change)?;
                std::fs::rename(dir.join(side), dir.join(path)).map_err(io(&dir.join(side)))?;
            }
            journal.placed.insert(i);
            write_journal(&journal_path, &journal)?;
            done += 1;
        }
    }
    // The markers were for mariadb-backup run by hand: applied now, they must not be
    // applied again.
    for (marker, _) in markers(changes) {
        match std::fs::remove_file(dir.join(&marker)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ApplyError::Io {
                    path: dir.join(marker),
                    source: e,
                })
            }
            _ => {}
        }
    }
    journal.finished = true;
    write_journal(&journal_path, &journal)?;
    Ok(done)
}

/// Removes the apply's journal once the caller has recorded that the changes are in.
pub fn forget(dir: &Path) -> Result<(), ApplyError> {
    let work = dir.join(APPLY_DIR);
    match std::fs::remove_dir_all(&work) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ApplyError::Io {
            path: work,
            source: e,
        }),
        _ => Ok(()),
    }
}

/// The file an op consumes must be there and hold the tablespace it names; a page 0
/// not written yet (all zeros: a tablespace created just before its copy) passes, as
/// recovery builds it from the log.
fn check_space(dir: &Path, change: &FileChange) -> Result<(), ApplyError> {
    let (rel, expected) = change.source();
    let path = dir.join(rel);
    let found = match page0_space_id(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApplyError::Missing { path })
        }
        Err(source) => return Err(ApplyError::Io { path, source }),
        Ok(found) => found,
    };
    match found {
        Page0::Unwritten => Ok(()),
        Page0::Space(found) if found == expected => Ok(()),
        Page0::Space(found) => Err(ApplyError::WrongSpace {
            path,
            expected,
            found,
        }),
        Page0::Unreadable => Err(ApplyError::WrongSpace {
            path,
            expected,
            found: u32::MAX,
        }),
    }
}

/// What page 0 of a tablespace file says about its space id.
enum Page0 {
    /// All zeros: created, page 0 not written yet.
    Unwritten,
    Space(u32),
    Unreadable,
}

fn page0_space_id(path: &Path) -> std::io::Result<Page0> {
    let mut head = [0u8; 64];
    let f = std::fs::File::open(path)?;
    let n = std::os::unix::fs::FileExt::read_at(&f, &mut head, 0)?;
    let head = &head[..n];
    if head.iter().all(|b| *b == 0) {
        return Ok(Page0::Unwritten);
    }
    Ok(match stagehand_innodb::page::page_space_id(head) {
        Ok(id) => Page0::Space(id),
        Err(_) => Page0::Unreadable,
    })
}

/// A tablespace the log says was dropped but whose file is still in the datadir, under
/// the name it was copied from and with its space id: ALTER TABLE … DISCARD TABLESPACE
/// then IMPORT TABLESPACE, whose pages are written without the redo log. Neither the
/// copy nor the log holds them: such a backup cannot be made right. Returns that file.
pub fn imported_during_copy(datadir: &Path, changes: &[FileChange]) -> Option<String> {
    changes.iter().find_map(|c| match c {
        FileChange::Delete { path, space_id } => match page0_space_id(&datadir.join(path)) {
            Ok(Page0::Space(id)) if id == *space_id => Some(path.clone()),
            _ => None,
        },
        _ => None,
    })
}

fn read_journal(path: &Path) -> Result<Journal, ApplyError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ApplyError::Journal {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
        Err(source) => Err(ApplyError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Durable: a crash after a rename and before the journal says so would leave an op
/// that looks undone whose source is gone.
fn write_journal(path: &Path, journal: &Journal) -> Result<(), ApplyError> {
    let bytes = serde_json::to_vec(journal).map_err(|e| ApplyError::Journal {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    stagehand_host::atomic::write_atomic(
        path,
        &bytes,
        stagehand_host::atomic::AtomicOptions::durable(),
    )
    .map_err(|source| ApplyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A tablespace file the copy steps took: its backup-relative path and the space id its
/// page 0 gave (`None` when page 0 was not written yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedSpace {
    pub path: String,
    pub space_id: Option<u32>,
    /// The InnoDB LSNs between which the copy step ran, when it recorded them.
    pub copied_between: Option<(u64, u64)>,
    /// The absolute path it was copied from (DATA DIRECTORY): the log's name for it.
    pub remote: Option<String>,
}

impl CopiedSpace {
    /// The name the log gives the file: `./db/t.ibd`, or its absolute path.
    fn log_name(&self) -> String {
        self.remote.clone().unwrap_or_else(|| log_name(&self.path))
    }
}

/// The tablespaces of DATA DIRECTORY tables: the log names them by absolute path
/// (`/srv/fast/db/t.ibd`), the backup holds them as `db/t.ibd` (where their `.isl`
/// is). Built from the copied files and the `.isl` files found under BLOCK_DDL, so a
/// remote table created or renamed during the copy maps too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteNames(std::collections::BTreeMap<String, String>);

impl RemoteNames {
    /// `abs` (the `.isl` content) is held in the backup as `rel`.
    pub fn insert(&mut self, abs: &str, rel: &str) {
        self.0.insert(abs.to_string(), rel.to_string());
    }

    /// The backup path of a name from the log; `None` for an empty name (undo) or an
    /// absolute path no `.isl` names.
    fn backup_path(&self, log_name: &str) -> Option<String> {
        match log_name.strip_prefix("./") {
            Some(rel) => Some(rel.to_string()),
            None => self.0.get(log_name).cloned(),
        }
    }
}

/// A tablespace to copy again under BLOCK_DDL: its file `name` (backup-relative, as the
/// server names it now) copied to `to` in the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recopy {
    pub space_id: u32,
    pub name: String,
    pub to: String,
    /// Where the file is when it lies outside the datadir (DATA DIRECTORY).
    pub remote: Option<String>,
}

/// What the reconcile under BLOCK_DDL must do so that the backup's files are those of
/// the tablespaces the log describes at that point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DdlPlan {
    /// Files to copy now (each becomes the `side` of a [`FileChange::New`], or replaces
    /// an undo tablespace's copy in place).
    pub recopy: Vec<Recopy>,
    /// The changes prepare applies, in the manifest.
    pub changes: Vec<FileChange>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("tablespace {space_id} ({name}) lies outside the datadir (DATA DIRECTORY) and no .isl file in the datadir names it now: where it belongs in the backup cannot be told")]
    Remote { space_id: u32, name: String },
}

/// Decides, from the files copied and the log's file changes up to `at` (the LSN taken
/// under BLOCK_DDL), which tablespaces to copy again and which changes prepare must
/// apply. Keyed by space id, never by name: names pass between tablespaces (`ALTER …
/// FORCE`, a swap by renames, reused temporary names).
///
/// A tablespace created during the copy and not copied (or copied before its page 0 was
/// written) is copied again: plain recovery cannot build a rebuilt one from the log alone
/// (it would have to rename it onto a name whose file holds another tablespace).
pub fn plan(
    copied: &[CopiedSpace],
    ledger: &FileOps,
    at: u64,
    remote: &RemoteNames,
) -> Result<DdlPlan, PlanError> {
    let mut out = DdlPlan::default();
    let mut replaced: BTreeSet<String> = BTreeSet::new();
    let states = ledger.state_at(at);
    let owners: Vec<(&CopiedSpace, Option<u32>)> = copied
        .iter()
        .map(|c| (c, c.space_id.or_else(|| owner_when_copied(ledger, c, at))))
        .collect();
    for (&id, state) in &states {
        let copies: Vec<&CopiedSpace> = owners
            .iter()
            .filter(|(_, owner)| *owner == Some(id))
            .map(|(c, _)| *c)
            .collect();
        if !state.alive {
            for c in copies {
                out.changes.push(FileChange::Delete {
                    path: c.path.clone(),
                    space_id: id,
                });
            }
            continue;
        }
        let name = match remote.backup_path(&state.name) {
            Some(n) => n,
            // An undo tablespace (no name in the log): its one copy is taken again in place.
            None if state.name.is_empty() => {
                if state.rebuilt_lsn.is_some() {
                    for c in copies {
                        out.recopy.push(Recopy {
                            space_id: id,
                            name: c.path.clone(),
                            to: c.path.clone(),
                            remote: None,
                        });
                    }
                }
                continue;
            }
            None => {
                return Err(PlanError::Remote {
                    space_id: id,
                    name: state.name.clone(),
                })
            }
        };
        // A copy of this tablespace is good even if it was created during the copy (and
        // copied before its page 0 reached the disk): every page write since its
        // creation is in the copied log, which recovery applies. Only a tablespace
        // rebuilt in place (its pages initialised again under the same id) or not
        // copied at all is copied again.
        let rebuilt_in_place = state.created_lsn.is_none() && state.rebuilt_lsn.is_some();
        if rebuilt_in_place || copies.is_empty() {
            let side = side_path(&name, "new");
            for c in copies.iter().filter(|c| c.path != name) {
                out.changes.push(FileChange::Delete {
                    path: c.path.clone(),
                    space_id: id,
                });
            }
            out.recopy.push(Recopy {
                space_id: id,
                name: name.clone(),
                to: side.clone(),
                remote: (!state.name.starts_with("./")).then(|| state.name.clone()),
            });
            out.changes.push(FileChange::New {
                path: name.clone(),
                side,
                space_id: id,
            });
            replaced.insert(name);
        } else {
            // One copy is kept, under the name; any other copy of it (an early copy
            // taken while DDL went on) goes.
            let kept = copies.iter().find(|c| c.path == name).unwrap_or(&copies[0]);
            for c in copies.iter().filter(|c| c.path != kept.path) {
                out.changes.push(FileChange::Delete {
                    path: c.path.clone(),
                    space_id: id,
                });
            }
            if kept.path != name {
                out.changes.push(FileChange::Rename {
                    from: kept.path.clone(),
                    to: name,
                    space_id: id,
                });
            }
        }
    }
    // A file copied before its page 0 was written whose tablespace cannot be told (its
    // name passed between several): it goes unless a new copy replaces it.
    for (c, owner) in &owners {
        if owner.is_none() && names_several(ledger, &c.log_name(), at) {
            out.changes.push(FileChange::Delete {
                path: c.path.clone(),
                space_id: 0,
            });
        }
    }
    // A new file replaces whatever copy had its name: deleting that copy first is moot.
    out.changes
        .retain(|c| !matches!(c, FileChange::Delete { path, .. } if replaced.contains(path)));
    Ok(out)
}

/// Whose file a copy with no space id (page 0 not written yet) is: the tablespace that
/// had its name through the whole copy step, or else the one tablespace the log ever gave
/// that name to (up to `at`); `None` when that cannot be told.
fn owner_when_copied(ledger: &FileOps, c: &CopiedSpace, at: u64) -> Option<u32> {
    let name = c.log_name();
    if let Some((start, end)) = c.copied_between {
        let owner = ledger.name_owner_at(&name, start);
        if owner.is_some() && owner == ledger.name_owner_at(&name, end) {
            return owner;
        }
    }
    let ids = ids_naming(ledger, &name, at);
    (ids.len() == 1).then(|| ids.into_iter().next()).flatten()
}

fn names_several(ledger: &FileOps, name: &str, at: u64) -> bool {
    ids_naming(ledger, name, at).len() > 1
}

/// The tablespaces the log gave the name `name` (as the log spells it) up to `at`.
fn ids_naming(ledger: &FileOps, name: &str, at: u64) -> BTreeSet<u32> {
    ledger
        .events
        .iter()
        .filter(|e| e.lsn <= at && e.change.names(name))
        .map(|e| e.space_id)
        .collect()
}

fn log_name(path: &str) -> String {
    format!("./{path}")
}

/// mariadb-backup's side file for `db/t.ibd`: `db/t.new` (or `.del`, `.ren`).
pub fn side_path(path: &str, ext: &str) -> String {
    let stem = path.strip_suffix(".ibd").unwrap_or(path);
    format!("{stem}.{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file whose page 0 says tablespace `id` (FIL_PAGE_SPACE_ID at byte 34).
    fn tablespace(dir: &Path, rel: &str, id: u32) {
        let mut page = vec![0u8; 16384];
        page[34..38].copy_from_slice(&id.to_be_bytes());
        page[4..8].copy_from_slice(&0u32.to_be_bytes());
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, page).expect("write");
    }

    fn holds(dir: &Path, rel: &str) -> Option<u32> {
        let bytes = std::fs::read(dir.join(rel)).ok()?;
        stagehand_innodb::page::page_space_id(&bytes).ok()
    }

    fn rename(from: &str, to: &str, space_id: u32) -> FileChange {
        FileChange::Rename {
            from: from.into(),
            to: to.into(),
            space_id,
        }
    }

    #[test]
    fn deletes_then_a_swap_then_new_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path();
        tablespace(dir, "d/gone.ibd", 4);
        tablespace(dir, "d/a.ibd", 5);
        tablespace(dir, "d/b.ibd", 6);
        tablespace(dir, "d/t.ibd", 7);
        tablespace(dir, "d/t.new", 9);
        let changes = [
            FileChange::Delete {
                path: "d/gone.ibd".into(),
                space_id: 4,
            },
            rename("d/a.ibd", "d/b.ibd", 5),
            rename("d/b.ibd", "d/a.ibd", 6),
            FileChange::New {
                path: "d/t.ibd".into(),
                side: "d/t.new".into(),
                space_id: 9,
            },
        ];
        let marks = markers(&changes);
        assert_eq!(
            marks,
            [
                ("d/gone.del".to_string(), String::new()),
                ("d/a.ren".to_string(), "d/b".to_string()),
                ("d/b.ren".to_string(), "d/a".to_string()),
            ]
        );
        for (m, text) in &marks {
            std::fs::write(dir.join(m), text).expect("marker");
        }
        assert_eq!(apply(dir, &changes).expect("apply"), 4);
        assert!(
            marks.iter().all(|(m, _)| !dir.join(m).exists()),
            "markers removed"
        );
        assert!(!dir.join("d/gone.ibd").exists());
        assert_eq!(
            (holds(dir, "d/a.ibd"), holds(dir, "d/b.ibd")),
            (Some(6), Some(5))
        );
        assert_eq!(holds(dir, "d/t.ibd"), Some(9));
        assert!(!dir.join("d/t.new").exists());
        forget(dir).expect("forget");
        assert!(!dir.join(APPLY_DIR).exists());
    }

    #[test]
    fn a_file_holding_another_tablespace_is_refused_and_nothing_moves() {
        let d = tempfile::tempdir().expect("tempdir");
        tablespace(d.path(), "d/a.ibd", 5);
        let r = apply(d.path(), &[rename("d/a.ibd", "d/z.ibd", 8)]);
        assert!(
            matches!(
                r,
                Err(ApplyError::WrongSpace {
                    expected: 8,
                    found: 5,
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(holds(d.path(), "d/a.ibd"), Some(5));
    }

    #[test]
    fn an_interrupted_apply_resumes_from_its_journal() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path();
        tablespace(dir, "d/a.ibd", 5);
        tablespace(dir, "d/b.ibd", 6);
        let changes = [
            rename("d/a.ibd", "d/b.ibd", 5),
            rename("d/b.ibd", "d/a.ibd", 6),
        ];
        // As if killed after parking both sources and renaming the first.
        let work = dir.join(APPLY_DIR);
        std::fs::create_dir_all(work.join("ren")).expect("mkdir");
        std::fs::rename(dir.join("d/a.ibd"), work.join("ren/0")).expect("park");
        std::fs::rename(dir.join("d/b.ibd"), work.join("ren/1")).expect("park");
        std::fs::rename(work.join("ren/0"), dir.join("d/b.ibd")).expect("rename");
        let journal = Journal {
            parked: [0, 1].into(),
            renamed: [0].into(),
            ..Journal::default()
        };
        write_journal(&work.join("applied.json"), &journal).expect("journal");
        assert_eq!(apply(dir, &changes).expect("resume"), 1);
        assert_eq!(
            (holds(dir, "d/a.ibd"), holds(dir, "d/b.ibd")),
            (Some(6), Some(5))
        );
        assert_eq!(
            apply(dir, &changes).expect("again"),
            0,
            "a finished apply is done"
        );
    }

    #[test]
    fn a_crash_between_a_move_and_its_journal_entry_is_resumed() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path();
        tablespace(dir, "d/a.ibd", 5);
        tablespace(dir, "d/t.new", 9);
        let changes = [
            rename("d/a.ibd", "d/c.ibd", 5),
            FileChange::Delete {
                path: "d/gone.ibd".into(),
                space_id: 4,
            },
            FileChange::New {
                path: "d/t.ibd".into(),
                side: "d/t.new".into(),
                space_id: 9,
            },
        ];
        // The rename and the new file were done, the journal says nothing yet, and
        // `gone` was removed already.
        std::fs::rename(dir.join("d/a.ibd"), dir.join("d/c.ibd")).expect("rename");
        std::fs::rename(dir.join("d/t.new"), dir.join("d/t.ibd")).expect("new");
        std::fs::create_dir_all(dir.join(APPLY_DIR).join("ren")).expect("mkdir");
        let r = apply(dir, &changes);
        assert!(
            matches!(r, Err(ApplyError::Missing { .. })),
            "a rename whose source and parked copy are both gone is not guessed: {r:?}"
        );
        // With the parked copy in place it resumes.
        std::fs::rename(dir.join("d/c.ibd"), dir.join(APPLY_DIR).join("ren/0")).expect("park");
        apply(dir, &changes).expect("resume");
        assert_eq!(
            (holds(dir, "d/c.ibd"), holds(dir, "d/t.ibd")),
            (Some(5), Some(9))
        );
    }

    #[test]
    fn a_new_file_whose_page_0_is_not_written_yet_is_placed() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("d")).expect("mkdir");
        std::fs::write(d.path().join("d/n.new"), vec![0u8; 16384]).expect("write");
        let new = FileChange::New {
            path: "d/n.ibd".into(),
            side: "d/n.new".into(),
            space_id: 12,
        };
        assert_eq!(apply(d.path(), &[new]).expect("apply"), 1);
        assert!(d.path().join("d/n.ibd").exists());
    }

    mod planning {
        use super::super::*;
        use stagehand_innodb::redo::FileOp;

        fn ledger(events: &[(u64, FileOp<'static>)]) -> FileOps {
            FileOps::of_events(100, events)
        }

        fn copied(list: &[(&str, Option<u32>)]) -> Vec<CopiedSpace> {
            list.iter()
                .map(|(p, id)| CopiedSpace {
                    path: p.to_string(),
                    space_id: *id,
                    copied_between: None,
                    remote: None,
                })
                .collect()
        }

        fn create_op(space_id: u32, name: &'static str) -> FileOp<'static> {
            FileOp::Create {
                space_id,
                name: name.as_bytes(),
            }
        }

        fn delete_op(space_id: u32, name: &'static str) -> FileOp<'static> {
            FileOp::Delete {
                space_id,
                name: name.as_bytes(),
            }
        }

        fn rename_op(space_id: u32, from: &'static str, to: &'static str) -> FileOp<'static> {
            FileOp::Rename {
                space_id,
                from: from.as_bytes(),
                to: to.as_bytes(),
            }
        }

        #[test]
        fn a_rebuild_copies_the_new_tablespace_over_the_old_one() {
            // ALTER TABLE t FORCE after t was copied as tablespace 5.
            let l = ledger(&[
                (110, create_op(9, "./d/#sql-alter.ibd")),
                (110, FileOp::FirstPageInit { space_id: 9 }),
                (120, rename_op(5, "./d/t.ibd", "./d/#sql-ib5.ibd")),
                (120, rename_op(9, "./d/#sql-alter.ibd", "./d/t.ibd")),
                (130, delete_op(5, "./d/#sql-ib5.ibd")),
            ]);
            let p = plan(
                &copied(&[("d/t.ibd", Some(5)), ("d/u.ibd", Some(3))]),
                &l,
                140,
                &RemoteNames::default(),
            )
            .expect("plan");
            assert_eq!(
                p.recopy,
                [Recopy {
                    space_id: 9,
                    name: "d/t.ibd".into(),
                    to: "d/t.new".into(),
                    remote: None,
                }]
            );
            assert_eq!(
                p.changes,
                [FileChange::New {
                    path: "d/t.ibd".into(),
                    side: "d/t.new".into(),
                    space_id: 9
                }]
            );
            // At an LSN before the rebuild finished, the old copy stays and the temporary
            // tablespace is copied under its name then.
            let mid = plan(
                &copied(&[("d/t.ibd", Some(5))]),
                &l,
                115,
                &RemoteNames::default(),
            )
            .expect("plan");
            assert_eq!(mid.recopy[0].name, "d/#sql-alter.ibd");
            assert_eq!(mid.changes.len(), 1, "{mid:?}");
        }

        #[test]
        fn renames_drops_and_a_swap() {
            let l = ledger(&[
                (110, rename_op(1, "./d/a.ibd", "./d/x.ibd")),
                (110, rename_op(2, "./d/b.ibd", "./d/a.ibd")),
                (110, rename_op(1, "./d/x.ibd", "./d/b.ibd")),
                (120, rename_op(3, "./d/r.ibd", "./e/r2.ibd")),
                (130, delete_op(4, "./d/gone.ibd")),
            ]);
            let files = copied(&[
                ("d/a.ibd", Some(1)),
                ("d/b.ibd", Some(2)),
                ("d/r.ibd", Some(3)),
                ("d/gone.ibd", Some(4)),
            ]);
            let p = plan(&files, &l, 200, &RemoteNames::default()).expect("plan");
            assert!(p.recopy.is_empty(), "{p:?}");
            assert_eq!(
                p.changes,
                [
                    FileChange::Rename {
                        from: "d/a.ibd".into(),
                        to: "d/b.ibd".into(),
                        space_id: 1
                    },
                    FileChange::Rename {
                        from: "d/b.ibd".into(),
                        to: "d/a.ibd".into(),
                        space_id: 2
                    },
                    FileChange::Rename {
                        from: "d/r.ibd".into(),
                        to: "e/r2.ibd".into(),
                        space_id: 3
                    },
                    FileChange::Delete {
                        path: "d/gone.ibd".into(),
                        space_id: 4
                    },
                ]
            );
        }

        #[test]
        fn a_table_created_and_a_file_copied_before_its_page_0() {
            let l = ledger(&[
                (110, create_op(7, "./d/n.ibd")),
                (110, FileOp::FirstPageInit { space_id: 7 }),
                (112, create_op(8, "./d/tmp.ibd")),
                (130, delete_op(8, "./d/tmp.ibd")),
            ]);
            // n was copied before its page 0 reached the disk (the log rebuilds it);
            // tmp too, and it is gone.
            let files = copied(&[("d/n.ibd", None), ("d/tmp.ibd", None)]);
            let p = plan(&files, &l, 200, &RemoteNames::default()).expect("plan");
            assert!(p.recopy.is_empty(), "{p:?}");
            let gone = FileChange::Delete {
                path: "d/tmp.ibd".into(),
                space_id: 8,
            };
            assert_eq!(p.changes, [gone]);
        }

        #[test]
        fn a_table_created_and_copied_during_the_copy_is_kept_and_follows_its_renames() {
            let l = ledger(&[
                (110, create_op(7, "./d/n.ibd")),
                (110, FileOp::FirstPageInit { space_id: 7 }),
                (150, rename_op(7, "./d/n.ibd", "./d/m.ibd")),
            ]);
            let p = plan(
                &copied(&[("d/n.ibd", Some(7))]),
                &l,
                200,
                &RemoteNames::default(),
            )
            .expect("plan");
            assert!(p.recopy.is_empty(), "{p:?}");
            assert_eq!(
                p.changes,
                [FileChange::Rename {
                    from: "d/n.ibd".into(),
                    to: "d/m.ibd".into(),
                    space_id: 7
                }]
            );
        }

        #[test]
        fn a_swap_of_files_copied_before_their_page_0_follows_the_copy_time_names() {
            let l = ledger(&[
                (105, create_op(1, "./d/a.ibd")),
                (106, create_op(2, "./d/b.ibd")),
                (150, rename_op(1, "./d/a.ibd", "./d/x.ibd")),
                (150, rename_op(2, "./d/b.ibd", "./d/a.ibd")),
                (150, rename_op(1, "./d/x.ibd", "./d/b.ibd")),
            ]);
            let files: Vec<CopiedSpace> = ["d/a.ibd", "d/b.ibd"]
                .iter()
                .map(|p| CopiedSpace {
                    path: p.to_string(),
                    space_id: None,
                    copied_between: Some((120, 140)),
                    remote: None,
                })
                .collect();
            let p = plan(&files, &l, 200, &RemoteNames::default()).expect("plan");
            assert!(p.recopy.is_empty(), "{p:?}");
            assert_eq!(p.changes.len(), 2, "{p:?}");
            // Copied in a step that overlapped the swap: which file is which cannot be
            // told, so both are copied again.
            let during: Vec<CopiedSpace> = files
                .into_iter()
                .map(|c| CopiedSpace {
                    copied_between: Some((120, 160)),
                    ..c
                })
                .collect();
            let p = plan(&during, &l, 200, &RemoteNames::default()).expect("plan");
            assert_eq!(p.recopy.len(), 2, "{p:?}");
        }

        #[test]
        fn an_early_copy_is_renamed_over_the_stale_one_and_a_second_copy_goes() {
            let l = ledger(&[
                (110, create_op(9, "./d/#sql-alter.ibd")),
                (120, rename_op(5, "./d/t.ibd", "./d/#sql-ib5.ibd")),
                (120, rename_op(9, "./d/#sql-alter.ibd", "./d/t.ibd")),
                (130, delete_op(5, "./d/#sql-ib5.ibd")),
            ]);
            // t copied as 5, then 9 copied early by the catch-up pass (twice, as if a
            // swap moved a name under it).
            let files = copied(&[
                ("d/t.ibd", Some(5)),
                ("d/#sh-9.ibd", Some(9)),
                ("d/#sh-7.ibd", Some(9)),
            ]);
            let p = plan(&files, &l, 140, &RemoteNames::default()).expect("plan");
            assert!(p.recopy.is_empty(), "{p:?}");
            let del = |path: &str, space_id| FileChange::Delete {
                path: path.into(),
                space_id,
            };
            assert_eq!(
                p.changes,
                [
                    del("d/t.ibd", 5),
                    del("d/#sh-7.ibd", 9),
                    FileChange::Rename {
                        from: "d/#sh-9.ibd".into(),
                        to: "d/t.ibd".into(),
                        space_id: 9
                    },
                ]
            );
        }

        #[test]
        fn an_undo_truncation_recopies_in_place_and_a_remote_change_is_refused() {
            let l = ledger(&[
                (
                    110,
                    FileOp::TrimPages {
                        space_id: 1,
                        size: 640,
                    },
                ),
                (110, FileOp::FirstPageInit { space_id: 1 }),
            ]);
            let p = plan(
                &copied(&[("undo001", Some(1))]),
                &l,
                200,
                &RemoteNames::default(),
            )
            .expect("plan");
            assert_eq!(
                p.recopy,
                [Recopy {
                    space_id: 1,
                    name: "undo001".into(),
                    to: "undo001".into(),
                    remote: None,
                }]
            );
            assert!(p.changes.is_empty());
            let remote = ledger(&[(110, rename_op(6, "/srv/x/d/t.ibd", "/srv/x/d/u.ibd"))]);
            assert!(matches!(
                plan(&[], &remote, 200, &RemoteNames::default()),
                Err(PlanError::Remote { space_id: 6, .. })
            ));
            // Mapped through the `.isl` files: a rename is a rename in the backup.
            let mut names = RemoteNames::default();
            names.insert("/srv/x/d/u.ibd", "d/u.ibd");
            let t = [CopiedSpace {
                path: "d/t.ibd".into(),
                space_id: Some(6),
                copied_between: None,
                remote: Some("/srv/x/d/t.ibd".into()),
            }];
            let p = plan(&t, &remote, 200, &names).expect("plan");
            assert_eq!(
                p.changes,
                [FileChange::Rename {
                    from: "d/t.ibd".into(),
                    to: "d/u.ibd".into(),
                    space_id: 6
                }]
            );
        }

        #[test]
        fn a_remote_rebuild_is_copied_again_from_its_data_directory() {
            let l = ledger(&[
                (110, create_op(9, "/srv/x/d/#sql-alter.ibd")),
                (110, FileOp::FirstPageInit { space_id: 9 }),
                (120, rename_op(6, "/srv/x/d/t.ibd", "/srv/x/d/#sql-ib6.ibd")),
                (
                    120,
                    rename_op(9, "/srv/x/d/#sql-alter.ibd", "/srv/x/d/t.ibd"),
                ),
                (130, delete_op(6, "/srv/x/d/#sql-ib6.ibd")),
            ]);
            let mut names = RemoteNames::default();
            names.insert("/srv/x/d/t.ibd", "d/t.ibd");
            let t = [CopiedSpace {
                path: "d/t.ibd".into(),
                space_id: Some(6),
                copied_between: None,
                remote: Some("/srv/x/d/t.ibd".into()),
            }];
            let p = plan(&t, &l, 140, &names).expect("plan");
            assert_eq!(
                p.recopy,
                [Recopy {
                    space_id: 9,
                    name: "d/t.ibd".into(),
                    to: "d/t.new".into(),
                    remote: Some("/srv/x/d/t.ibd".into()),
                }]
            );
            assert_eq!(
                p.changes,
                [FileChange::New {
                    path: "d/t.ibd".into(),
                    side: "d/t.new".into(),
                    space_id: 9
                }]
            );
        }
    }
}
