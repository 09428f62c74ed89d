//! A watchdog over the `stagehand` processes a test binary starts: one that runs longer
//! than any test needs is hung. It is then stopped with a dump of its threads (gdb, when
//! installed) and of its /proc state on stderr, so the test fails with evidence instead
//! of holding the whole suite until CI's time limit.

use std::path::Path;
use std::sync::Once;
use std::time::Duration;

/// The longest a `stagehand` process started by a test may run. The slowest test's
/// longest run takes about two minutes on a loaded 2-core machine.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);

/// Starts the watchdog once per test process (idempotent). The deadline can be changed
/// with `STAGEHAND_TEST_PROCESS_DEADLINE_SECS`.
pub fn ensure_started() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let deadline = std::env::var("STAGEHAND_TEST_PROCESS_DEADLINE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_DEADLINE);
        let _ = std::thread::Builder::new()
            .name("stagehand-watchdog".into())
            .spawn(move || watch(deadline));
    });
}

fn watch(deadline: Duration) {
    let me = std::process::id();
    let ticks_per_second = clock_ticks_per_second();
    loop {
        std::thread::sleep(Duration::from_secs(5));
        for pid in hung_stagehands(me, deadline, ticks_per_second) {
            eprintln!(
                "\n=== watchdog: stagehand pid {pid} has run longer than {}s; its state, then SIGKILL ===\n{}",
                deadline.as_secs(),
                describe(pid)
            );
            // SAFETY: kill(2) with a positive pid of our own descendant reads no memory.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Descendants of `root` named `stagehand` that have run longer than `deadline`.
fn hung_stagehands(root: u32, deadline: Duration, ticks_per_second: u64) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let uptime = system_uptime().unwrap_or(0.0);
    let mut hung = Vec::new();
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let Some(stat) = Stat::read(pid) else {
            continue;
        };
        if stat.comm != "stagehand" || !descends_from(pid, root) {
            continue;
        }
        let ran = uptime - stat.start_ticks as f64 / ticks_per_second as f64;
        if ran > deadline.as_secs_f64() {
            hung.push(pid);
        }
    }
    hung
}

fn descends_from(mut pid: i32, root: u32) -> bool {
    for _ in 0..64 {
        match Stat::read(pid) {
            Some(s) if s.ppid == root as i32 => return true,
            Some(s) if s.ppid > 1 => pid = s.ppid,
            _ => return false,
        }
    }
    false
}

/// The fields of /proc/PID/stat the watchdog needs.
struct Stat {
    comm: String,
    ppid: i32,
    start_ticks: u64,
}

impl Stat {
    fn read(pid: i32) -> Option<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let comm = text[open + 1..close].to_string();
        // After "comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime cutime cstime priority nice threads itrealvalue starttime.
        let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
        Some(Stat {
            comm,
            ppid: rest.get(1)?.parse().ok()?,
            start_ticks: rest.get(19)?.parse().ok()?,
        })
    }
}

fn system_uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf reads no memory we own.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Its command line, each thread's kernel wait channel and, with gdb, every thread's
/// stack.
fn describe(pid: i32) -> String {
    let mut out = String::new();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    out.push_str(&format!(
        "command: {}\n",
        String::from_utf8_lossy(&cmdline).replace('\0', " ")
    ));
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.filter_map(|t| t.ok()) {
            let dir = task.path();
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            out.push_str(&format!(
                "thread {} {}: wchan {}\n",
                task.file_name().to_string_lossy(),
                read("comm"),
                read("wchan")
            ));
        }
    }
    if Path::new("/usr/bin/gdb").exists() {
        let bt = std::process::Command::new("/usr/bin/gdb")
            .args([
                "-p",
                &pid.to_string(),
                "-batch",
                "-ex",
                "thread apply all bt",
            ])
            .output();
        match bt {
            Ok(o) => out.push_str(&String::from_utf8_lossy(&o.stdout)),
            Err(e) => out.push_str(&format!("gdb failed: {e}\n")),
        }
    } else {
        out.push_str("(install gdb for the threads' stacks)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_stagehand_child_past_its_deadline_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("stagehand");
        std::fs::copy("/bin/sleep", &fake).expect("copy sleep");
        let mut child = std::process::Command::new(&fake)
            .arg("30")
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(1200));
        let ticks = clock_ticks_per_second();
        let me = std::process::id();
        let pid = child.id() as i32;
        let late = hung_stagehands(me, Duration::from_millis(100), ticks);
        let early = hung_stagehands(me, Duration::from_secs(3600), ticks);
        let description = describe(pid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(late.contains(&pid), "{late:?} should hold {pid}");
        assert!(!early.contains(&pid), "{early:?} should not hold {pid}");
        assert!(description.contains("stagehand 30"), "{description}");
    }
}
