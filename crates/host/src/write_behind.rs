//! Write-behind for large files written on a host that also runs a database: each window
//! of a file is handed to the disk as soon as it is written, and the writer waits for the
//! window before the previous one, so one writer never has more than about two windows of
//! dirty pages. Without it the kernel lets gigabytes pile up in the page cache and then
//! writes them out in one burst that the database's own log writes queue behind (InnoDB
//! commits and Aria writes stalled 100–180 ms when the burst started, measured with the
//! probe of `bench/ddl_stall_bench.py`), and the final fsync waits for all of it.
//!
//! Hints only: a failed `sync_file_range` leaves the data to the kernel's own writeback
//! and to the caller's fsync, which reports real write errors.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;

/// Bytes handed to the disk at a time.
pub const WINDOW: u64 = 8 << 20;

/// A file being written from its start, sequentially, with write-behind.
pub struct WriteBehind<'a> {
    file: &'a File,
    written: u64,
    /// Everything before this offset has been handed to the disk.
    started: u64,
    /// Everything before this offset is on the disk.
    waited: u64,
}

impl<'a> WriteBehind<'a> {
    pub fn new(file: &'a File) -> Self {
        WriteBehind {
            file,
            written: 0,
            started: 0,
            waited: 0,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes known to be on the disk (not counting what the caller's fsync will add).
    pub fn on_disk(&self) -> u64 {
        self.waited
    }

    /// Hands the rest to the disk without waiting: the caller's fsync then finds little
    /// left to do.
    pub fn finish(&mut self) {
        if self.written > self.started {
            sync_range(self.file, self.started, self.written, false);
            self.started = self.written;
        }
    }

    fn after_write(&mut self) {
        if self.written - self.started < WINDOW {
            return;
        }
        let previous = self.started;
        self.finish();
        if previous > self.waited {
            sync_range(self.file, self.waited, previous, true);
            self.waited = previous;
        }
    }
}

impl Write for WriteBehind<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&*self.file).write(buf)?;
        self.written += n as u64;
        self.after_write();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `sync_file_range(2)` (not in std): starts writeback of `[from, to)` and, with `wait`,
/// waits for it, including writeback already under way there.
fn sync_range(file: &File, from: u64, to: u64, wait: bool) {
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return;
    };
    // SAFETY: sync_file_range reads no memory; the descriptor is open for the call.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, flags);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn bytes_arrive_in_order_and_all_but_the_last_windows_are_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let data: Vec<u8> = (0..(3 * WINDOW + 12345)).map(|i| (i % 251) as u8).collect();
        let mut w = WriteBehind::new(&file);
        for chunk in data.chunks(1 << 20) {
            w.write_all(chunk).unwrap();
        }
        w.finish();
        assert_eq!(w.written(), data.len() as u64);
        // Windows end at 1, 2 and 3 WINDOWs (each write is 1 MiB); the copy waited for
        // all but the newest one.
        assert_eq!(w.on_disk(), 2 * WINDOW);
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert!(back == data, "the file differs from what was written");
    }
}
