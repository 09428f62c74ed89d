//! The restore itself: files copied (or moved) in parallel, each checked against the
//! manifest and synced, in the order that never leaves a startable half-restore; on
//! failure, the undo journal removes what was written and moves back what was moved.

use super::*;

/// The restore itself; on any error what it wrote is undone.
pub(super) fn restore(
    job: &Job,
    stop: &AtomicBool,
    counter: &ByteCounter,
) -> Result<(), StepError> {
    let written = Mutex::new(Vec::<Written>::new());
    let mut created = Vec::new();
    let result = restore_inner(job, stop, counter, &written, &mut created);
    let Err(e) = result else {
        return Ok(());
    };
    let written = written.into_inner().unwrap_or_else(|p| p.into_inner());
    let leftovers = undo(&written, &created);
    let what = match job.mode {
        Mode::Copy => "written",
        Mode::Move => "moved",
    };
    let mut err = if matches!(e, CopyBackError::Cancelled) {
        StepError::cancelled()
    } else {
        e.into_step_error()
    };
    if leftovers.is_empty() {
        err.message.push_str(&format!(
            "; the {} files {what} so far were undone: the target directories are as before",
            written.len()
        ));
    } else {
        let shown: Vec<String> = leftovers.iter().take(20).cloned().collect();
        err.message.push_str(&format!(
            "; {} files {what} by this step could not be undone:\n{}",
            leftovers.len(),
            shown.join("\n")
        ));
        err.hint = Some(format!(
            "empty {} (and the undo/log directories) before a retry: it holds a partial restore",
            job.targets.datadir.display()
        ));
    }
    if job.force {
        err.message
            .push_str(" (force had removed their earlier contents)");
    }
    Err(err)
}

pub(super) fn restore_inner(
    job: &Job,
    stop: &AtomicBool,
    counter: &ByteCounter,
    written: &Mutex<Vec<Written>>,
    created: &mut Vec<PathBuf>,
) -> Result<(), CopyBackError> {
    for dir in job.targets.dirs() {
        ensure_dir(dir, created)?;
    }
    for item in &job.items {
        if let Some(parent) = item.dest.parent() {
            ensure_dir(parent, created)?;
        }
    }
    // The system tablespace first, the redo log last (see the module comment).
    let (system, rest): (Vec<&Item>, Vec<&Item>) =
        job.items.iter().filter(|i| !i.log).partition(|i| i.system);
    let logs: Vec<&Item> = job.items.iter().filter(|i| i.log).collect();
    run_parallel(job, system, stop, counter, written)?;
    run_parallel(job, rest, stop, counter, written)?;
    sync_dirs(job, created)?;
    for item in logs {
        restore_log(job, item, stop, counter, written)?;
    }
    sync_dirs(job, created)?;
    finish_move(job, written)?;
    chown_dirs(job, created)
}

/// Creates `dir` and its missing ancestors, recording each one created.
pub(super) fn ensure_dir(dir: &Path, created: &mut Vec<PathBuf>) -> Result<(), CopyBackError> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    for d in missing.into_iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => created.push(d.to_path_buf()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(CopyBackError::io(d, e)),
        }
    }
    Ok(())
}

/// `parallel` workers over the items, largest first; the first error stops the rest.
pub(super) fn run_parallel(
    job: &Job,
    mut items: Vec<&Item>,
    stop: &AtomicBool,
    counter: &ByteCounter,
    written: &Mutex<Vec<Written>>,
) -> Result<(), CopyBackError> {
    items.sort_by_key(|i| std::cmp::Reverse(i.size));
    let queue = Mutex::new(items.into_iter());
    let first_error: Mutex<Option<CopyBackError>> = Mutex::new(None);
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..job.parallel.max(1) {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let next = queue.lock().ok().and_then(|mut q| q.next());
                let Some(item) = next else { return };
                if let Err(e) = restore_file(job, item, &item.dest, stop, counter, written) {
                    failed.store(true, Ordering::Relaxed);
                    if let Ok(mut slot) = first_error.lock() {
                        slot.get_or_insert(e);
                    }
                    return;
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The redo log: copied under a temporary name, then renamed (or moved directly).
pub(super) fn restore_log(
    job: &Job,
    item: &Item,
    stop: &AtomicBool,
    counter: &ByteCounter,
    written: &Mutex<Vec<Written>>,
) -> Result<(), CopyBackError> {
    if job.mode == Mode::Move {
        return restore_file(job, item, &item.dest, stop, counter, written);
    }
    let mut tmp = item.dest.clone().into_os_string();
    tmp.push(LOG_TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    restore_file(job, item, &tmp, stop, counter, written)?;
    fs::rename(&tmp, &item.dest).map_err(|e| CopyBackError::io(&item.dest, e))?;
    if let Ok(mut w) = written.lock() {
        if let Some(last) = w
            .iter_mut()
            .rev()
            .find(|x| matches!(x, Written::Copied(p) if *p == tmp))
        {
            *last = Written::Copied(item.dest.clone());
        }
    }
    Ok(())
}

/// One file: moved by rename when it can be, else copied; checked either way.
pub(super) fn restore_file(
    job: &Job,
    item: &Item,
    dest: &Path,
    stop: &AtomicBool,
    counter: &ByteCounter,
    written: &Mutex<Vec<Written>>,
) -> Result<(), CopyBackError> {
    if let Some(text) = &item.text {
        return restore_text(job, item, text, dest, stop, counter, written);
    }
    if job.mode == Mode::Move {
        // Checked before it leaves the backup: a damaged file must not replace it.
        hash_check(item, stop, counter, None)?;
        match fs::rename(&item.src, dest) {
            Ok(()) => {
                record(
                    written,
                    Written::Renamed {
                        from: item.src.clone(),
                        to: dest.to_path_buf(),
                    },
                );
                sync_file(dest)?;
                return chown_file(job, dest);
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
            Err(e) => return Err(CopyBackError::io(dest, e)),
        }
    }
    let mode = fs::metadata(&item.src)
        .map_err(|e| CopyBackError::io(&item.src, e))?
        .permissions()
        .mode()
        & 0o7777;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dest)
        .map_err(|e| CopyBackError::io(dest, e))?;
    record(written, Written::Copied(dest.to_path_buf()));
    hash_check(item, stop, counter, Some(&mut out))?;
    out.sync_all().map_err(|e| CopyBackError::io(dest, e))?;
    chown_file(job, dest)
}

/// An `.isl` that names the new place of its table: the backup's file is checked, and
/// the text written instead (no trailing newline, as the server writes it).
fn restore_text(
    job: &Job,
    item: &Item,
    text: &str,
    dest: &Path,
    stop: &AtomicBool,
    counter: &ByteCounter,
    written: &Mutex<Vec<Written>>,
) -> Result<(), CopyBackError> {
    hash_check(item, stop, counter, None)?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(dest)
        .map_err(|e| CopyBackError::io(dest, e))?;
    record(written, Written::Copied(dest.to_path_buf()));
    out.write_all(text.as_bytes())
        .and_then(|()| out.sync_all())
        .map_err(|e| CopyBackError::io(dest, e))?;
    chown_file(job, dest)
}

pub(super) fn record(written: &Mutex<Vec<Written>>, w: Written) {
    if let Ok(mut list) = written.lock() {
        list.push(w);
    }
}

/// Reads the backup file (writing it to `out` when given) and compares its size and
/// hash with the manifest.
pub(super) fn hash_check(
    item: &Item,
    stop: &AtomicBool,
    counter: &ByteCounter,
    mut out: Option<&mut File>,
) -> Result<(), CopyBackError> {
    let mut src = File::open(&item.src).map_err(|e| CopyBackError::io(&item.src, e))?;
    let mut h = ContentHasher::like(&item.hash);
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(CopyBackError::Cancelled);
        }
        let n = src
            .read(&mut buf)
            .map_err(|e| CopyBackError::io(&item.src, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        if let Some(o) = out.as_deref_mut() {
            o.write_all(&buf[..n])
                .map_err(|e| CopyBackError::io(&item.dest, e))?;
        }
        size += n as u64;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
    let sha = h.finish();
    if size != item.size {
        return Err(CopyBackError::Damaged {
            path: item.rel.clone(),
            what: format!("{size} bytes, the manifest says {}", item.size),
        });
    }
    if sha != item.hash {
        return Err(CopyBackError::Damaged {
            path: item.rel.clone(),
            what: format!(
                "{} {sha}, the manifest says {}",
                algorithm_of(&item.hash),
                item.hash
            ),
        });
    }
    Ok(())
}

pub(super) fn sync_file(path: &Path) -> Result<(), CopyBackError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| CopyBackError::io(path, e))
}

pub(super) fn chown_file(job: &Job, path: &Path) -> Result<(), CopyBackError> {
    let Some(o) = job.owner else { return Ok(()) };
    chown_path(path, o.uid, o.gid).map_err(|e| CopyBackError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Directories get their entries durable: every directory a file went into, the
/// created ones and their parents.
pub(super) fn sync_dirs(job: &Job, created: &[PathBuf]) -> Result<(), CopyBackError> {
    let mut dirs: BTreeSet<PathBuf> = job
        .items
        .iter()
        .filter_map(|i| i.dest.parent().map(Path::to_path_buf))
        .collect();
    for c in created {
        dirs.insert(c.clone());
        dirs.extend(c.parent().map(Path::to_path_buf));
    }
    dirs.iter().try_for_each(|d| sync_file(d))
}

/// The target directories and every created one go to the owner too.
pub(super) fn chown_dirs(job: &Job, created: &[PathBuf]) -> Result<(), CopyBackError> {
    let mut dirs: BTreeSet<&Path> = job.targets.dirs().into_iter().collect();
    dirs.extend(created.iter().map(PathBuf::as_path));
    // Only directories inside a target: never an ancestor created above it.
    let targets = job.targets.dirs();
    for d in dirs {
        if targets.iter().any(|t| d.starts_with(t)) {
            chown_file(job, d)?;
        }
    }
    Ok(())
}

/// After a move: the backup's copies of cross-filesystem files go, and its manifest is
/// renamed so the directory is never taken for a complete backup again.
pub(super) fn finish_move(job: &Job, written: &Mutex<Vec<Written>>) -> Result<(), CopyBackError> {
    if job.mode != Mode::Move {
        return Ok(());
    }
    let renamed: BTreeSet<PathBuf> = written
        .lock()
        .map(|w| {
            w.iter()
                .filter_map(|x| match x {
                    Written::Renamed { from, .. } => Some(from.clone()),
                    Written::Copied(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let manifest = job.from.join(MANIFEST_FILE);
    fs::rename(&manifest, job.from.join(MOVED_MANIFEST))
        .map_err(|e| CopyBackError::io(&manifest, e))?;
    for item in &job.items {
        if !renamed.contains(&item.src) {
            if let Err(e) = fs::remove_file(&item.src) {
                // The restore is complete: a left-over backup file is only noise.
                tracing::warn!(file = %item.src.display(), error = %e, "cannot remove a moved file from the backup");
            }
        }
    }
    sync_file(&job.from)
}

/// Undoes a failed restore: moved files go back, copied ones and created directories
/// are removed. Returns what is left behind.
pub(super) fn undo(written: &[Written], created: &[PathBuf]) -> Vec<String> {
    let mut left = Vec::new();
    for w in written.iter().rev() {
        let r = match w {
            Written::Copied(p) => fs::remove_file(p).or_else(not_found_ok).map_err(|e| (p, e)),
            Written::Renamed { from, to } => fs::rename(to, from).map_err(|e| (to, e)),
        };
        if let Err((p, e)) = r {
            left.push(format!("{} ({e})", p.display()));
        }
    }
    for d in created.iter().rev() {
        if let Err(e) = fs::remove_dir(d) {
            left.push(format!("{}/ ({e})", d.display()));
        }
    }
    left
}

pub(super) fn not_found_ok(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}
