//! The progress of `concord snapshot save` on stderr: a spinner while the
//! member writes its snapshot, then a bar of the bytes received; on anything
//! but a terminal (logs, pipes) nothing until the summary line.
//!
//! A member writes the whole snapshot to its disk before the first byte is
//! sent, which takes a while on a big store: the spinner says so meanwhile,
//! and the summary tells the two phases apart.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::human_bytes;

/// The bar's layout while bytes arrive (short enough for an 80-column terminal).
const BYTES_TEMPLATE: &str =
    "snapshot [{bar:20}] {binary_bytes}/{binary_total_bytes} {percent}% {binary_bytes_per_sec}";
/// The spinner's layout while the member writes its snapshot.
const WAITING_TEMPLATE: &str = "snapshot {spinner} {msg} {elapsed}";

/// Progress of one `snapshot save`.
pub struct SaveProgress {
    /// The bar, on a terminal only.
    bar: Option<ProgressBar>,
    started: Instant,
    /// When the first bytes arrived.
    streaming: Option<Instant>,
}

impl SaveProgress {
    /// Starts showing that `endpoint` is writing its snapshot.
    pub fn new(endpoint: &str) -> SaveProgress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(WAITING_TEMPLATE) {
                bar.set_style(style);
            }
            bar.set_message(format!("waiting for {endpoint} to write its snapshot..."));
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        SaveProgress {
            bar,
            started: Instant::now(),
            streaming: None,
        }
    }

    /// `received` of `total` bytes have arrived.
    pub fn update(&mut self, received: u64, total: u64) {
        if self.streaming.is_none() {
            self.streaming = Some(Instant::now());
            if let Some(bar) = &self.bar {
                bar.disable_steady_tick();
                if let Ok(style) = bytes_style() {
                    bar.set_style(style);
                }
                bar.set_length(total);
                bar.reset_eta();
            }
        }
        if let Some(bar) = &self.bar {
            bar.set_position(received);
        }
    }

    /// Clears the bar, then prints the summary (on any stderr).
    pub fn finish(&mut self, received: u64, endpoint: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let now = Instant::now();
        let streaming = self.streaming.unwrap_or(now);
        let (prepare, transfer) = (
            (streaming - self.started).as_secs_f64(),
            (now - streaming).as_secs_f64(),
        );
        let rate = if transfer > 0.0 {
            received as f64 / transfer
        } else {
            0.0
        };
        eprintln!(
            "snapshot: received {} ({received} bytes) from {endpoint} in {:.2}s ({prepare:.2}s for the member to write it, {transfer:.2}s to transfer it at {}/s)",
            human_bytes(received),
            prepare + transfer,
            human_bytes(rate as u64)
        );
    }

    /// Leaves the bar where it got to, so an error message that follows starts on a line of its own.
    pub fn abandon(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}

fn bytes_style() -> Result<ProgressStyle, indicatif::style::TemplateError> {
    Ok(ProgressStyle::with_template(BYTES_TEMPLATE)?.progress_chars("=> "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        assert!(bytes_style().is_ok());
        assert!(ProgressStyle::with_template(WAITING_TEMPLATE).is_ok());
    }

    #[test]
    fn no_bar_off_a_terminal_and_the_summary_still_works() {
        // Tests run with stderr captured or redirected: no bar is drawn.
        let mut p = SaveProgress {
            bar: None,
            started: Instant::now(),
            streaming: None,
        };
        p.update(10, 20);
        p.update(20, 20);
        assert!(p.streaming.is_some());
        p.finish(20, "a:1");
    }
}
