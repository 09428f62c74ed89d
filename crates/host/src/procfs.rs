//! What /proc/PID/stat says of a process: one reader for the state, parent and start
//! time that the claim marker, the sandbox reclaim and its waits rely on.

/// Field `n` after the command name of /proc/PID/stat (0 = state, 1 = ppid,
/// 19 = start time): `pid (comm) state ppid …`, where comm may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(n).map(str::to_owned)
}

/// The process state letter (`R`, `S`, `Z` …).
pub fn state(pid: u32) -> Option<String> {
    stat_field(pid, 0)
}

/// How many threads the process has (a zombie leader counts while its other threads
/// are still exiting, holding the process's open files).
pub fn threads(pid: u32) -> Option<u32> {
    stat_field(pid, 17)?.parse().ok()
}

/// The parent's pid.
pub fn parent(pid: u32) -> Option<u32> {
    stat_field(pid, 1)?.parse().ok()
}

/// Start time in clock ticks since boot: with the pid, names one process for good.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_field(pid, 19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert_eq!(parent(me), Some(std::os::unix::process::parent_id()));
        assert!(start_time(me).is_some());
        assert!(state(me).is_some());
        assert!(threads(me).is_some_and(|n| n >= 1));
        assert_eq!(parent(u32::MAX - 1), None);
    }
}
