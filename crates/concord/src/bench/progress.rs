//! A progress bar on stderr (indicatif), so a long run shows that it is alive
//! and how fast it goes. It draws only when stderr is a terminal, so scripts
//! and logs (and `--json` output on stdout) stay clean.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressDrawTarget, ProgressStyle};

use super::pace::{Goal, Schedule};

/// How often the bar is updated.
const TICK: Duration = Duration::from_millis(250);
/// The bar's layout for a total: the bar, the share done, requests done of the total, and
/// the rate in the message.
const TOTAL_TEMPLATE: &str = "[{bar:30}] {percent:>3}% {pos}/{len}  {msg}";
/// The bar's layout for a duration (the bar counts milliseconds): the rest is in the message.
const DURATION_TEMPLATE: &str = "[{bar:30}] {percent:>3}% {msg}";

/// A progress bar being updated by a background task; [`ProgressBar::finish`] erases it.
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
        let bar = indicatif::ProgressBar::with_draw_target(Some(length(goal)), ProgressDrawTarget::stderr());
        bar.set_style(style(goal).ok()?);
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
                let rate = if window > 0.0 {
                    done.saturating_sub(last_done) as f64 / window
                } else {
                    0.0
                };
                (last_done, last_at) = (done, now);
                let elapsed = schedule.start().elapsed();
                // The position first: what the template shows of it is then drawn with it.
                bar.set_position(progress(done, goal, elapsed));
                bar.set_message(message(done, goal, elapsed, rate, unit));
            }
            bar.finish_and_clear();
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

fn style(goal: Goal) -> Result<ProgressStyle, indicatif::style::TemplateError> {
    let template = match goal {
        Goal::Total(_) => TOTAL_TEMPLATE,
        Goal::Duration(_) => DURATION_TEMPLATE,
    };
    Ok(ProgressStyle::with_template(template)?.progress_chars("=> "))
}

/// The bar's length: requests for a total, milliseconds for a duration.
fn length(goal: Goal) -> u64 {
    match goal {
        Goal::Total(total) => total,
        Goal::Duration(d) => d.as_millis() as u64,
    }
}

/// The bar's position, in the units of [`length`] (never past the end).
fn progress(done: u64, goal: Goal, elapsed: Duration) -> u64 {
    match goal {
        Goal::Total(total) => done.min(total),
        Goal::Duration(d) => elapsed.min(d).as_millis() as u64,
    }
}

/// The message after the bar: the current rate, after (for a duration) the time
/// elapsed of it and the count (for a total, the template shows the count).
pub fn message(done: u64, goal: Goal, elapsed: Duration, rate: f64, unit: &str) -> String {
    match goal {
        Goal::Total(_) => format!("{rate:.0} {unit}/s"),
        Goal::Duration(d) => format!(
            "{:.1}s/{:.1}s {done}  {rate:.0} {unit}/s",
            elapsed.as_secs_f64(),
            d.as_secs_f64()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_counts_and_times() {
        assert_eq!(
            message(2500, Goal::Total(10_000), Duration::from_secs(1), 2500.4, "req"),
            "2500 req/s"
        );
        assert_eq!(
            message(
                900,
                Goal::Duration(Duration::from_secs(10)),
                Duration::from_secs(3),
                300.0,
                "puts"
            ),
            "3.0s/10.0s 900  300 puts/s"
        );
    }

    #[test]
    fn positions_stay_within_the_bar() {
        assert_eq!(length(Goal::Total(10)), 10);
        assert_eq!(progress(12, Goal::Total(10), Duration::ZERO), 10);
        let second = Goal::Duration(Duration::from_secs(1));
        assert_eq!(length(second), 1000);
        assert_eq!(progress(0, second, Duration::from_secs(2)), 1000);
        assert_eq!(progress(0, second, Duration::from_millis(250)), 250);
        assert!(style(Goal::Total(1)).is_ok() && style(second).is_ok());
    }
}
