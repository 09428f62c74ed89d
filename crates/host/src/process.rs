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
