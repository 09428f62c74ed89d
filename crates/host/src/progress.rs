//! Progress of long byte-moving steps (copy, compress, upload, fetch): workers add to a
//! shared counter; a reporter shows how far the step is (bytes, rate, ETA) — as a bar
//! when stderr is a terminal, else as a log line every ten seconds.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often a running step logs how far it is when no progress bar is shown, unless
/// [`configure`] says otherwise.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// When to draw progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bars {
    /// On an interactive terminal, not in CI.
    Auto,
    Always,
    Never,
}

/// Counts bytes moved, for progress lines and bars. Shared by the workers of a step.
pub type ByteCounter = std::sync::Arc<std::sync::atomic::AtomicU64>;

static SETTINGS: OnceLock<(Bars, Duration)> = OnceLock::new();

/// Sets how progress is shown for the whole process (the CLI's `--progress` and
/// `--progress-every`); the first call wins.
pub fn configure(bars: Bars, log_every: Duration) {
    let _ = SETTINGS.set((bars, log_every.max(Duration::from_secs(1))));
}

fn settings() -> (Bars, Duration) {
    *SETTINGS.get_or_init(|| (Bars::Auto, LOG_EVERY))
}
/// How often a bar is redrawn.
const BAR_EVERY: Duration = Duration::from_millis(200);

/// A running progress report; stops when dropped.
pub struct Progress {
    counter: ByteCounter,
    reporter: tokio::task::JoinHandle<()>,
    bar: Option<ProgressBar>,
}

/// Bars only on an interactive terminal and never in CI, unless configured otherwise.
fn bars_wanted() -> bool {
    match settings().0 {
        Bars::Never => false,
        Bars::Always => true,
        Bars::Auto => std::io::stderr().is_terminal() && std::env::var_os("CI").is_none(),
    }
}

/// One set of bars for the whole process: steps running at once get a line each.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

impl Progress {
    /// Starts reporting `verb` ("copied", "uploaded"…) progress of `step` towards
    /// `total` bytes (0: unknown, as when a backup streams out while it is taken).
    pub fn start(step: &str, verb: &'static str, total: u64) -> Progress {
        let counter = ByteCounter::default();
        if bars_wanted() {
            let bar = bars().add(new_bar(step, verb, total));
            let reporter = tokio::spawn(draw_bar(bar.clone(), counter.clone()));
            return Progress {
                counter,
                reporter,
                bar: Some(bar),
            };
        }
        let reporter = tokio::spawn(log_progress(step.to_string(), verb, counter.clone(), total));
        Progress {
            counter,
            reporter,
            bar: None,
        }
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
        if let Some(bar) = self.bar.take() {
            bar.set_position(self.done());
            bar.finish();
            bars().remove(&bar);
        }
    }
}

fn new_bar(step: &str, verb: &str, total: u64) -> ProgressBar {
    let (bar, template) = if total > 0 {
        (
            ProgressBar::new(total),
            "{prefix:>14} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
    } else {
        (
            ProgressBar::no_length(),
            "{prefix:>14} {spinner} {bytes} {binary_bytes_per_sec}",
        )
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{step} {verb}"));
    bar
}

async fn draw_bar(bar: ProgressBar, done: ByteCounter) {
    loop {
        bar.set_position(done.load(Ordering::Relaxed));
        tokio::time::sleep(BAR_EVERY).await;
    }
}

async fn log_progress(step: String, verb: &'static str, done: ByteCounter, total: u64) {
    let t0 = Instant::now();
    loop {
        tokio::time::sleep(settings().1).await;
        let bytes = done.load(Ordering::Relaxed);
        tracing::info!(step = %step, "{}", progress_line(verb, bytes, total, t0.elapsed()));
    }
}

/// "copied 1.20 of 2.00 GB (60 %), 150 MB/s, about 5 s left" (or, with no known
/// total, "uploaded 1.20 GB, 150 MB/s").
pub fn progress_line(verb: &str, bytes: u64, total: u64, elapsed: Duration) -> String {
    let rate = bytes as f64 / elapsed.as_secs_f64().max(0.001);
    if total == 0 {
        return format!(
            "{verb} {:.2} GB, {:.0} MB/s",
            bytes as f64 / 1e9,
            rate / 1e6
        );
    }
    let eta = if rate > 0.0 {
        format!(
            "about {:.0} s left",
            total.saturating_sub(bytes) as f64 / rate
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_say_amount_rate_and_eta() {
        let line = progress_line(
            "copied",
            1_200_000_000,
            2_000_000_000,
            Duration::from_secs(8),
        );
        assert_eq!(
            line,
            "copied 1.20 of 2.00 GB (60 %), 150 MB/s, about 5 s left"
        );
        let line = progress_line("uploaded", 1_200_000_000, 0, Duration::from_secs(8));
        assert_eq!(line, "uploaded 1.20 GB, 150 MB/s");
    }
}
