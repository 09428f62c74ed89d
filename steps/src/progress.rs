//! Progress of long byte-moving steps (copy, compress, upload, fetch): workers add to a
//! shared counter; a reporter says how far the step is (bytes, rate, ETA).

use crate::repo::ByteCounter;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often a running step logs how far it is when no progress bar is shown.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// A running progress report; stops when dropped or finished.
pub struct Progress {
    counter: ByteCounter,
    reporter: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts reporting `verb` ("copied", "uploaded"…) progress of `step` towards
    /// `total` bytes.
    pub fn start(step: &str, verb: &'static str, total: u64) -> Progress {
        let counter = ByteCounter::default();
        let reporter = tokio::spawn(log_progress(step.to_string(), verb, counter.clone(), total));
        Progress { counter, reporter }
    }

    /// The counter workers add their bytes to.
    pub fn counter(&self) -> ByteCounter {
        self.counter.clone()
    }

    pub fn done(&self) -> u64 {
        self.counter.load(Ordering::Relaxed)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.reporter.abort();
    }
}

async fn log_progress(step: String, verb: &'static str, done: ByteCounter, total: u64) {
    let t0 = Instant::now();
    loop {
        tokio::time::sleep(LOG_EVERY).await;
        let bytes = done.load(Ordering::Relaxed);
        tracing::info!(step = %step, "{}", progress_line(verb, bytes, total, t0.elapsed()));
    }
}

/// "copied 1.20 of 2.00 GB (60 %), 150 MB/s, about 5 s left".
pub fn progress_line(verb: &str, bytes: u64, total: u64, elapsed: Duration) -> String {
    let rate = bytes as f64 / elapsed.as_secs_f64().max(0.001);
    let eta = if rate > 0.0 {
        format!("about {:.0} s left", total.saturating_sub(bytes) as f64 / rate)
    } else {
        "no estimate yet".to_string()
    };
    format!(
        "{verb} {:.2} of {:.2} GB ({:.0} %), {:.0} MB/s, {eta}",
        bytes as f64 / 1e9,
        total as f64 / 1e9,
        100.0 * bytes as f64 / (total.max(1)) as f64,
        rate / 1e6,
    )
}
