//! Where the files go: the target directories (from the config or the server's
//! options file), checks that they are free, apart from the backup and large enough,
//! and clearing them under `force`.

use super::*;

/// Explicit fields, then the defaults file, then the datadir; relative InnoDB
/// directories are relative to the datadir, as the server reads them.
pub(super) fn resolve_targets(cfg: &CopyBackConfig) -> Result<Targets, CopyBackError> {
    let defaults = match &cfg.defaults_file {
        Some(f) => read_server_options(Path::new(f)).map_err(|e| CopyBackError::Defaults {
            file: e.file,
            message: e.message,
        })?,
        None => BTreeMap::new(),
    };
    let pick = |explicit: &Option<String>, key: &str| {
        explicit
            .clone()
            .or_else(|| defaults.get(key).cloned())
            .filter(|v| !v.trim().is_empty())
    };
    let datadir = pick(&cfg.datadir, "datadir").ok_or(CopyBackError::NoDatadir)?;
    let datadir = absolute(Path::new(datadir.trim()))?;
    let under = |v: Option<String>| match v {
        None => datadir.clone(),
        Some(v) => normalize(&datadir.join(v.trim())),
    };
    Ok(Targets {
        undo: under(pick(&cfg.undo_dir, "innodb_undo_directory")),
        log: under(pick(&cfg.log_dir, "innodb_log_group_home_dir")),
        home: under(pick(&cfg.data_home_dir, "innodb_data_home_dir")),
        datadir,
    })
}

/// Restoring into the backup (or the backup into a target) would destroy it.
pub(super) fn check_overlap(from: &Path, targets: &Targets) -> Result<(), CopyBackError> {
    let from_real = fs::canonicalize(from).unwrap_or_else(|_| from.to_path_buf());
    for dir in targets.dirs() {
        let real = real_path(dir);
        if real.starts_with(&from_real) || from_real.starts_with(&real) {
            return Err(CopyBackError::Overlap {
                target: dir.display().to_string(),
                from: from.display().to_string(),
            });
        }
    }
    Ok(())
}

/// The canonical path of a directory that may not exist yet (its nearest existing
/// ancestor canonicalized).
pub(super) fn real_path(dir: &Path) -> PathBuf {
    let mut tail = Vec::new();
    let mut cur = dir.to_path_buf();
    loop {
        if let Ok(real) = fs::canonicalize(&cur) {
            return tail.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (cur.file_name().map(|n| n.to_os_string()), cur.parent()) {
            (Some(name), Some(parent)) => {
                tail.push(name);
                cur = parent.to_path_buf();
            }
            _ => return dir.to_path_buf(),
        }
    }
}

/// Without `force`, every target directory must be missing or empty.
pub(super) fn check_targets(targets: &Targets, force: bool) -> Result<(), CopyBackError> {
    if force {
        return Ok(());
    }
    for dir in targets.dirs() {
        let found = entries(dir)?;
        if !found.is_empty() {
            let mut shown: Vec<String> = found.iter().take(SHOWN_FILES).cloned().collect();
            if found.len() > SHOWN_FILES {
                shown.push(format!("and {} more", found.len() - SHOWN_FILES));
            }
            return Err(CopyBackError::NotEmpty {
                dir: dir.display().to_string(),
                found: format!("found {}", shown.join(", ")),
            });
        }
    }
    Ok(())
}

/// Files a running server keeps an fcntl write lock on: InnoDB's system tablespace and
/// Aria's control file.
pub(super) fn lock_files(targets: &Targets) -> Vec<PathBuf> {
    let mut files = vec![
        targets.datadir.join("ibdata1"),
        targets.home.join("ibdata1"),
        targets.datadir.join("aria_log_control"),
    ];
    files.dedup();
    files
}

/// Refuses targets a running server uses: removing or overwriting its files under it
/// destroys the live data (binlogs included) and the restore alike.
pub(super) fn check_not_in_use(targets: &Targets) -> Result<(), CopyBackError> {
    for file in lock_files(targets) {
        if let Some(pid) = lock_holder(&file)? {
            return Err(CopyBackError::InUse {
                dir: targets.datadir.display().to_string(),
                file: file.display().to_string(),
                pid,
            });
        }
    }
    Ok(())
}

/// The pid of another process holding a lock on `file` (F_GETLK); none when the file
/// is missing or unlocked. An OFD lock reports pid -1.
pub(super) fn lock_holder(file: &Path) -> Result<Option<i32>, CopyBackError> {
    use std::os::fd::AsRawFd;
    let f = match File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CopyBackError::io(file, e)),
    };
    // SAFETY: a zeroed flock is a valid value; the fd is open for the call.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut lock) };
    if rc != 0 {
        return Err(CopyBackError::io(file, std::io::Error::last_os_error()));
    }
    Ok((lock.l_type != libc::F_UNLCK as libc::c_short).then_some(lock.l_pid))
}

/// Names in a directory, sorted; none when it does not exist.
pub(super) fn entries(dir: &Path) -> Result<Vec<String>, CopyBackError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CopyBackError::io(dir, e)),
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// `force`: the separate InnoDB directories lose InnoDB's files, then the datadir
/// loses everything (an old datadir must not mix with the restored one).
pub(super) fn clear_targets(targets: &Targets, manifest: &Manifest) -> Result<(), CopyBackError> {
    let system = manifest.server.system_files();
    for dir in targets.dirs().into_iter().skip(1) {
        for name in entries(dir)? {
            if is_innodb_own(&name, &system) {
                remove_entry(&dir.join(name))?;
            }
        }
    }
    let datadir = &targets.datadir;
    let names = entries(datadir)?;
    if !names.is_empty() {
        tracing::warn!(dir = %datadir.display(), entries = names.len(), "force: removing the datadir's contents");
    }
    for name in names {
        remove_entry(&datadir.join(name))?;
    }
    Ok(())
}

/// Removes a file, a symlink (not its target) or a directory tree.
pub(super) fn remove_entry(path: &Path) -> Result<(), CopyBackError> {
    let meta = fs::symlink_metadata(path).map_err(|e| CopyBackError::io(path, e))?;
    let r = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    r.map_err(|e| CopyBackError::io(path, e))
}

/// Free space per filesystem for a copy (force clears first, so that is conservative).
pub(super) fn check_space(targets: &Targets, items: &[Item]) -> Result<(), CopyBackError> {
    let mut need: BTreeMap<PathBuf, u64> = BTreeMap::new();
    for dir in targets.dirs() {
        let probe = existing_ancestor(dir);
        let bytes: u64 = items
            .iter()
            .filter(|i| i.dest.starts_with(dir) && owner_dir(targets, &i.dest) == dir)
            .map(|i| i.size)
            .sum();
        *need.entry(probe).or_default() += bytes;
    }
    for (probe, needed) in need {
        if let Ok(available) = fs4::available_space(&probe) {
            if available < needed {
                return Err(CopyBackError::NoSpace {
                    dir: probe.display().to_string(),
                    available,
                    needed,
                });
            }
        }
    }
    Ok(())
}

/// The most specific target directory holding `dest`.
pub(super) fn owner_dir<'a>(targets: &'a Targets, dest: &Path) -> &'a Path {
    targets
        .dirs()
        .into_iter()
        .filter(|d| dest.starts_with(d))
        .max_by_key(|d| d.as_os_str().len())
        .unwrap_or(&targets.datadir)
}

pub(super) fn existing_ancestor(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

pub(super) fn absolute(p: &Path) -> Result<PathBuf, CopyBackError> {
    std::path::absolute(p)
        .map(|a| normalize(&a))
        .map_err(|e| CopyBackError::io(p, e))
}

/// Drops `.` and resolves `..` lexically (the paths may not exist yet).
pub(super) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
