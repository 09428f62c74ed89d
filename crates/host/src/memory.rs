//! How this process's memory allocator behaves.

/// Every allocation of 1 MiB or more gets its own mapping, returned to the system when
/// it is freed. glibc otherwise raises its mmap threshold after each large free, so the
/// upload part buffers (16 MiB) end up in per-thread heaps that keep their pages: a
/// streamed backup at parallel 4 peaked at 184–255 MiB with glibc's default and at
/// 158 MiB with this (docs/BENCHMARKS.md, issue 15). Call before any thread starts.
pub fn return_large_buffers_to_the_system() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt(3) only changes an allocator setting; it is called before any
    // other thread exists, and its result (0 when refused) needs no handling.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
