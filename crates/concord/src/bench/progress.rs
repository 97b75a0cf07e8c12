//! A small progress bar on stderr, so a long run shows that it is alive and
//! how fast it goes. It draws only when stderr is a terminal, so scripts and
//! logs (and `--json` output on stdout) stay clean.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pace::{Goal, Schedule};

/// How often the bar is redrawn.
const TICK: Duration = Duration::from_millis(250);
/// Width of the bar itself, in characters.
const WIDTH: usize = 30;

/// A progress bar being drawn by a background task; [`ProgressBar::finish`] erases it.
pub struct ProgressBar {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressBar {
    /// Starts drawing the progress of `schedule` towards `goal`, if stderr is a
    /// terminal; `unit` names what is counted (`req`, `puts`).
    pub fn start(schedule: Arc<Schedule>, goal: Goal, unit: &'static str) -> Option<ProgressBar> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(TICK);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let (mut last_done, mut last_at) = (0, Instant::now());
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = &mut stopped => break,
                }
                let (done, now) = (schedule.completed(), Instant::now());
                let window = now.duration_since(last_at).as_secs_f64();
                let rate = if window > 0.0 { done.saturating_sub(last_done) as f64 / window } else { 0.0 };
                (last_done, last_at) = (done, now);
                let line = render(done, goal, schedule.start().elapsed(), rate, unit);
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{line}\x1b[K");
                let _ = err.flush();
            }
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        });
        Some(ProgressBar { stop, task })
    }

    /// Stops drawing and erases the bar.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Stops the bar, if there is one.
pub async fn finish(bar: Option<ProgressBar>) {
    if let Some(bar) = bar {
        bar.finish().await;
    }
}

/// One line of the progress bar: the bar, how far along (done/total, or
/// elapsed/duration), and the current rate.
pub fn render(done: u64, goal: Goal, elapsed: Duration, rate: f64, unit: &str) -> String {
    let (fraction, position) = match goal {
        Goal::Total(total) => {
            let fraction = if total == 0 { 1.0 } else { done as f64 / total as f64 };
            (fraction, format!("{done}/{total}"))
        }
        Goal::Duration(d) => {
            let fraction = if d.is_zero() { 1.0 } else { elapsed.as_secs_f64() / d.as_secs_f64() };
            (fraction, format!("{:.1}s/{:.1}s {done}", elapsed.as_secs_f64(), d.as_secs_f64()))
        }
    };
    let filled = ((fraction.clamp(0.0, 1.0) * WIDTH as f64) as usize).min(WIDTH);
    let bar: String = if filled == WIDTH {
        "=".repeat(WIDTH)
    } else {
        format!("{}>{}", "=".repeat(filled), " ".repeat(WIDTH - filled - 1))
    };
    format!("[{bar}] {:>3.0}% {position}  {rate:.0} {unit}/s", fraction.clamp(0.0, 1.0) * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_times() {
        let line = render(2500, Goal::Total(10_000), Duration::from_secs(1), 2500.4, "req");
        assert_eq!(line, format!("[{}>{}]  25% 2500/10000  2500 req/s", "=".repeat(7), " ".repeat(22)));
        let line = render(900, Goal::Duration(Duration::from_secs(10)), Duration::from_secs(3), 300.0, "puts");
        assert!(line.starts_with(&format!("[{}>", "=".repeat(9))), "{line}");
        assert!(line.ends_with("]  30% 3.0s/10.0s 900  300 puts/s"), "{line}");
    }

    #[test]
    fn renders_the_ends_without_overflowing() {
        let done = render(10, Goal::Total(10), Duration::ZERO, 0.0, "req");
        assert!(done.starts_with(&format!("[{}] 100%", "=".repeat(WIDTH))), "{done}");
        let over = render(0, Goal::Duration(Duration::from_secs(1)), Duration::from_secs(2), 0.0, "req");
        assert!(over.contains("100%"), "{over}");
        let start = render(0, Goal::Total(0), Duration::ZERO, 0.0, "req");
        assert!(start.contains("100% 0/0"), "{start}");
        let empty = render(0, Goal::Total(5), Duration::ZERO, 0.0, "req");
        assert!(empty.starts_with(&format!("[>{}]   0%", " ".repeat(WIDTH - 1))), "{empty}");
    }
}
