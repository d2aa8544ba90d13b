//! Progress of a submit: on a terminal a bar per batch in flight and an overall bar (records
//! per second, time left); elsewhere (a log, a pipe) a plain line every few seconds; nothing
//! with `--quiet`. Only counts, batch ids and states are shown: never a record's content.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How often the plain line is printed.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// The progress of the whole file.
#[derive(Clone)]
pub struct Progress(Arc<Inner>);

struct Inner {
    total: u64,
    done: AtomicU64,
    start: Instant,
    bars: Option<(MultiProgress, ProgressBar)>,
    plain: bool,
}

impl Progress {
    /// Progress over `total` records; bars when stderr is a terminal, plain lines otherwise.
    pub fn new(total: u64, quiet: bool) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bars = (!quiet && terminal).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(total));
            overall.set_style(
                ProgressStyle::with_template(
                    "{prefix:>12} [{wide_bar}] {pos}/{len} records  {rate}  {eta} left",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                // Whole records per second: indicatif's own `{per_sec}` shows four decimals.
                .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} records/s", s.per_sec());
                })
                .progress_chars("=> "),
            );
            overall.set_prefix("all");
            overall.enable_steady_tick(Duration::from_millis(500));
            (multi, overall)
        });
        Progress(Arc::new(Inner {
            total,
            done: AtomicU64::new(0),
            start: Instant::now(),
            bars,
            plain: !quiet && !terminal,
        }))
    }

    /// Counts `n` records finished (signed or rejected).
    pub fn add(&self, n: u64) {
        self.0.done.fetch_add(n, Ordering::Relaxed);
        if let Some((_, overall)) = &self.0.bars {
            overall.inc(n);
        }
    }

    /// A bar for batch `index` of `records` records.
    pub fn batch(&self, index: usize, records: u64) -> BatchBar {
        let bar = self.0.bars.as_ref().map(|(multi, _)| {
            let bar = multi.insert_from_back(1, ProgressBar::new(records));
            bar.set_style(
                ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("batch {}", index + 1));
            bar.set_message("submitting");
            bar
        });
        BatchBar { progress: self.clone(), bar, counted: 0 }
    }

    /// Prints a line above the bars (or plain), e.g. a wait on a busy appliance.
    pub fn note(&self, line: &str) {
        match &self.0.bars {
            Some((multi, _)) => {
                let _ = multi.println(line);
            }
            None if self.0.plain => eprintln!("{line}"),
            None => {}
        }
    }

    /// Prints the plain line every few seconds until the returned task is aborted (nothing
    /// on a terminal, where the bars show it, or when quiet).
    pub fn spawn_plain(&self) -> Option<tokio::task::JoinHandle<()>> {
        if !self.0.plain {
            return None;
        }
        let p = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(PLAIN_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{}", p.plain_line());
            }
        }))
    }

    /// `batch: 12000/25000 records (48%), 1520/s, about 9 s left`.
    pub fn plain_line(&self) -> String {
        let done = self.0.done.load(Ordering::Relaxed);
        let secs = self.0.start.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let left = if rate > 0.0 {
            format!("about {} s left", ((self.0.total - done.min(self.0.total)) as f64 / rate).ceil())
        } else {
            "time left unknown".into()
        };
        format!(
            "batch: {done}/{} records ({}%), {rate:.0}/s, {left}",
            self.0.total,
            done * 100 / self.0.total.max(1)
        )
    }

    /// Removes the bars, leaving the terminal clean for the summary.
    pub fn finish(&self) {
        if let Some((multi, overall)) = &self.0.bars {
            overall.finish_and_clear();
            let _ = multi.clear();
        }
    }

    /// Records finished per second so far.
    pub fn rate(&self) -> f64 {
        self.0.done.load(Ordering::Relaxed) as f64 / self.0.start.elapsed().as_secs_f64().max(0.001)
    }
}

/// One batch's bar; its advances count toward the overall one.
pub struct BatchBar {
    progress: Progress,
    bar: Option<ProgressBar>,
    counted: u64,
}

impl BatchBar {
    /// The batch has `done` records finished and is in `state`.
    pub fn set(&mut self, done: u64, state: &str) {
        if done > self.counted {
            self.progress.add(done - self.counted);
            self.counted = done;
        }
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(state.to_owned());
        }
    }

    /// The overall progress this bar counts toward.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }
}

impl Drop for BatchBar {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
