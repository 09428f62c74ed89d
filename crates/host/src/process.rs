//! Child processes that die with stagehand, kill -9 included: a server or tool started
//! for one run must never outlive it unowned.

use std::io;
use tokio::process::{Child, Command};

/// Spawns `command` so that the child is SIGKILLed when this process dies, however
/// it dies (kill -9 included): the child asks for PR_SET_PDEATHSIG before exec.
///
/// The kernel sends that signal when the *thread* that forked exits, not the process,
/// and tokio's blocking threads (and a worker given up by `block_in_place`) do exit.
/// So every such child is forked by one thread that lives as long as the process.
pub async fn spawn_tied_to_process(mut command: Command) -> io::Result<Child> {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes two syscalls
    // (prctl, getppid) and builds an io::Error without allocating.
    unsafe {
        command.pre_exec(move || die_with_parent(parent));
    }
    let handle = tokio::runtime::Handle::current();
    let (reply, answer) = tokio::sync::oneshot::channel();
    spawner()
        .send(SpawnJob {
            command,
            handle,
            reply,
        })
        .map_err(|_| io::Error::other("the process spawner thread is gone"))?;
    answer
        .await
        .map_err(|_| io::Error::other("the process spawner thread is gone"))?
}

/// In the child, before exec: SIGKILL when the parent goes; if it went already
/// (between fork and prctl), give up instead of running unowned.
fn die_with_parent(parent: u32) -> io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe syscalls without pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::getppid() } as u32 != parent {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// A directory bound over another in a child's private mount namespace, and files that
/// must then be one file (same device and inode) as seen by the child.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivateMounts {
    /// (directory to show, where to show it)
    pub binds: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    /// (path, path) pairs that must name the same file once the binds are made.
    pub same_files: Vec<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Gives the child of `command` a mount namespace of its own (nothing it mounts is
/// seen outside) with `mounts.binds` made in it, and refuses to exec when a pair of
/// `mounts.same_files` is not one file there. Needs CAP_SYS_ADMIN.
pub fn with_private_mounts(command: &mut Command, mounts: &PrivateMounts) -> io::Result<()> {
    let c = |p: &std::path::Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"))
    };
    let binds = mounts
        .binds
        .iter()
        .map(|(from, onto)| Ok((c(from)?, c(onto)?)))
        .collect::<io::Result<Vec<_>>>()?;
    let same = mounts
        .same_files
        .iter()
        .map(|(a, b)| Ok((c(a)?, c(b)?)))
        .collect::<io::Result<Vec<_>>>()?;
    // SAFETY: the closure runs between fork and exec; it only makes syscalls (unshare,
    // mount, stat) on the CStrings built above, and allocates nothing.
    unsafe {
        command.pre_exec(move || enter_private_mounts(&binds, &same));
    }
    Ok(())
}

/// In the child, before exec: see [`with_private_mounts`].
fn enter_private_mounts(
    binds: &[(std::ffi::CString, std::ffi::CString)],
    same: &[(std::ffi::CString, std::ffi::CString)],
) -> io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc != 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: async-signal-safe syscalls on NUL-terminated strings that outlive them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        // Mounts below must not propagate back to the host (systemd makes / shared).
        check(libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        for (from, onto) in binds {
            check(libc::mount(
                from.as_ptr(),
                onto.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
        }
        for (a, b) in same {
            let mut sa: libc::stat = std::mem::zeroed();
            let mut sb: libc::stat = std::mem::zeroed();
            check(libc::stat(a.as_ptr(), &mut sa))?;
            check(libc::stat(b.as_ptr(), &mut sb))?;
            if sa.st_dev != sb.st_dev || sa.st_ino != sb.st_ino {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            }
        }
    }
    Ok(())
}

struct SpawnJob {
    command: Command,
    handle: tokio::runtime::Handle,
    reply: tokio::sync::oneshot::Sender<io::Result<Child>>,
}

/// The sender to the spawner thread; the thread never ends because this sender,
/// held in a static, is never dropped.
fn spawner() -> &'static std::sync::mpsc::Sender<SpawnJob> {
    static SPAWNER: std::sync::OnceLock<std::sync::mpsc::Sender<SpawnJob>> =
        std::sync::OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (send, jobs) = std::sync::mpsc::channel::<SpawnJob>();
        let started = std::thread::Builder::new()
            .name("stagehand-spawner".into())
            .spawn(move || {
                for mut job in jobs {
                    // tokio's child watcher belongs to the caller's runtime.
                    let _runtime = job.handle.enter();
                    let _ = job.reply.send(job.command.spawn());
                }
            });
        if let Err(e) = started {
            // The receiver went with the closure: every send fails and says so.
            tracing::error!(error = %e, "cannot start the process spawner thread");
        }
        send
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Inside, the bound directory shows the other one's files; outside nothing changes.
    #[test]
    fn a_private_bind_is_seen_by_the_child_only() {
        if unsafe { libc::geteuid() } != 0 {
            return; // needs CAP_SYS_ADMIN
        }
        let d = tempfile::tempdir().expect("tempdir");
        let (live, copy) = (d.path().join("live"), d.path().join("copy"));
        for (dir, text) in [(&live, "live"), (&copy, "copy")] {
            std::fs::create_dir_all(dir).expect("mkdir");
            std::fs::write(dir.join("t.ibd"), text).expect("write");
        }
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let run = |same: Vec<(std::path::PathBuf, std::path::PathBuf)>| {
            let mut cat = Command::new("sh");
            cat.stdout(std::process::Stdio::piped())
                .arg("-c")
                .arg(format!(
                    "cat {0} && echo changed > {0}",
                    live.join("t.ibd").display()
                ));
            let mounts = PrivateMounts {
                binds: vec![(copy.clone(), live.clone())],
                same_files: same,
            };
            with_private_mounts(&mut cat, &mounts).expect("mounts");
            runtime.block_on(async { spawn_tied_to_process(cat).await?.wait_with_output().await })
        };
        let out = run(vec![(live.join("t.ibd"), copy.join("t.ibd"))]).expect("run");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "copy");
        assert_eq!(
            std::fs::read_to_string(live.join("t.ibd")).expect("read"),
            "live"
        );
        assert_eq!(
            std::fs::read_to_string(copy.join("t.ibd")).expect("read"),
            "changed\n"
        );
        // Two different files: the child is not started.
        let other = run(vec![(live.join("t.ibd"), d.path().join("live"))]);
        assert!(other.is_err(), "{other:?}");
    }

    /// PR_SET_PDEATHSIG fires when the forking *thread* exits: a child asked for by a
    /// short-lived thread (a tokio blocking thread, say) must outlive that thread.
    #[test]
    fn a_tied_child_outlives_the_thread_that_asked_for_it() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let handle = runtime.handle().clone();
        let mut child = std::thread::spawn(move || {
            handle.block_on(async {
                let mut sleep = Command::new("sleep");
                sleep.arg("60").kill_on_drop(true);
                spawn_tied_to_process(sleep).await
            })
        })
        .join()
        .expect("the asking thread")
        .expect("spawn");
        let exited = runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(500), child.wait()).await
        });
        assert!(
            exited.is_err(),
            "the child died with the thread that asked for it: {exited:?}"
        );
        let _ = runtime.block_on(child.kill());
    }
}
