//! Pacing: how many requests a run sends, until when, and how fast.
//!
//! All clients of a run draw their requests from one [`Schedule`], so
//! `--total`, `--duration` and `--rate` hold for the run as a whole, however
//! many clients share the work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When a run ends: after a number of requests (`--total`) or after a time (`--duration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Send this many requests in all.
    Total(u64),
    /// Keep sending until this much time has passed since the start.
    Duration(Duration),
}

/// The plan that every client of a run takes its requests from: request
/// numbers, the end of the run, and (with `--rate`) each request's time slot.
///
/// The rate cap is a shared slot schedule: request slots are `1/rate` apart,
/// and a request takes the next free slot, waiting for it if it is ahead.
/// Slots that passed while every client was busy are made up at full speed,
/// but only the last [`MAX_LAG`]'s worth (like etcd's benchmark, whose rate
/// limiter allows a burst of one second's requests), so jitter does not pull
/// the rate below the cap and a long stall is not followed by a long burst.
#[derive(Debug)]
pub struct Schedule {
    start: Instant,
    /// The number the next request gets.
    next_request: AtomicU64,
    /// Requests answered (successfully or not), for the progress bar.
    completed: AtomicU64,
    /// Nanoseconds after `start` of the next free slot (rate-capped runs only).
    next_slot_ns: AtomicU64,
    /// Nanoseconds between slots; 0 when the rate is not capped.
    interval_ns: u64,
    total: Option<u64>,
    deadline: Option<Instant>,
}

impl Schedule {
    /// A schedule that starts now, ends at `goal`, and sends at most `rate`
    /// requests per second (0 for no cap).
    pub fn new(goal: Goal, rate: f64) -> Self {
        let start = Instant::now();
        let (total, deadline) = match goal {
            Goal::Total(n) => (Some(n), None),
            Goal::Duration(d) => (None, Some(start + d)),
        };
        Schedule {
            start,
            next_request: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            next_slot_ns: AtomicU64::new(0),
            interval_ns: interval_ns(rate),
            total,
            deadline,
        }
    }

    /// When the run started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Takes the next request: its number, once its slot has come when the rate
    /// is capped; `None` when the run is over (the total is reached or the time is up).
    pub async fn take(&self) -> Option<u64> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        if self.total.is_some_and(|total| request >= total) {
            return None;
        }
        if self.interval_ns > 0 {
            let now_ns = self.start.elapsed().as_nanos() as u64;
            let mut current = self.next_slot_ns.load(Ordering::Relaxed);
            let slot_ns = loop {
                let (slot, next) = reserve(current, now_ns, self.interval_ns, MAX_LAG.as_nanos() as u64);
                match self
                    .next_slot_ns
                    .compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => break slot,
                    Err(actual) => current = actual,
                }
            };
            let at = self.start + Duration::from_nanos(slot_ns);
            if self.deadline.is_some_and(|deadline| at >= deadline) {
                return None;
            }
            tokio::time::sleep_until(at.into()).await;
        }
        if self.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return None;
        }
        Some(request)
    }

    /// Counts one request as answered.
    pub fn complete(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered so far.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }
}

/// Nanoseconds between requests at `rate` requests per second; 0 (no pacing)
/// for a rate of 0 or less.
pub fn interval_ns(rate: f64) -> u64 {
    if rate > 0.0 && rate.is_finite() {
        (1e9 / rate).round().max(1.0) as u64
    } else {
        0
    }
}

/// How far behind its slots a rate-capped run may fall and still catch up.
pub const MAX_LAG: Duration = Duration::from_secs(1);

/// Reserves one slot of a paced schedule whose next free slot is at
/// `next_free_ns`, at time `now_ns`: returns the reserved slot and the new
/// next free slot, one interval later. The reserved slot is the next free one,
/// but never more than `max_lag_ns` in the past (slots older than that are
/// dropped); one in the past means "go now".
pub fn reserve(next_free_ns: u64, now_ns: u64, interval_ns: u64, max_lag_ns: u64) -> (u64, u64) {
    let slot = next_free_ns.max(now_ns.saturating_sub(max_lag_ns));
    (slot, slot.saturating_add(interval_ns))
}

/// Parses a duration the way Go's `time.ParseDuration` (and so etcd's tools)
/// spells one, e.g. `30s`, `1m30s`, `500ms`, `1.5h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<f64>() {
        return nanos(secs * 1e9, text);
    }
    let mut total_ns = 0.0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("bad duration {text:?}: expected a number at {rest:?}"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            unit => {
                return Err(format!(
                    "bad duration {text:?}: unknown unit {unit:?} (use ns, us, ms, s, m, h)"
                ))
            }
        };
        rest = &rest[unit_len..];
        total_ns += number * scale;
    }
    nanos(total_ns, text)
}

/// `ns` nanoseconds, rounded, as a duration; an error for a negative or huge `ns`.
fn nanos(ns: f64, text: &str) -> Result<Duration, String> {
    if !(0.0..1.8e19).contains(&ns) {
        return Err(format!("bad duration {text:?}"));
    }
    Ok(Duration::from_nanos(ns.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_follow_the_rate() {
        assert_eq!(interval_ns(0.0), 0);
        assert_eq!(interval_ns(-5.0), 0);
        assert_eq!(interval_ns(f64::INFINITY), 0);
        assert_eq!(interval_ns(1.0), 1_000_000_000);
        assert_eq!(interval_ns(1000.0), 1_000_000);
        assert_eq!(interval_ns(3.0), 333_333_333);
        // Absurd rates still leave a 1 ns gap rather than none.
        assert_eq!(interval_ns(1e12), 1);
    }

    #[test]
    fn slots_are_one_interval_apart() {
        // Clients asking faster than the rate: slots line up 10 ns apart.
        let mut next = 0;
        let mut slots = Vec::new();
        for _ in 0..4 {
            let (slot, n) = reserve(next, 0, 10, 100);
            slots.push(slot);
            next = n;
        }
        assert_eq!(slots, vec![0, 10, 20, 30]);
        assert_eq!(next, 40);
        // A request early for its slot waits for it.
        assert_eq!(reserve(1_010, 1_005, 10, 100), (1_010, 1_020));
        assert_eq!(reserve(u64::MAX - 1, 0, 10, 100), (u64::MAX - 1, u64::MAX));
    }

    #[test]
    fn a_run_behind_catches_up_by_at_most_the_lag() {
        // Slightly behind (within the lag): the missed slot is still taken,
        // so it goes at once and the schedule keeps its pace.
        assert_eq!(reserve(40, 75, 10, 100), (40, 50));
        // Far behind after a stall: slots older than the lag are dropped.
        assert_eq!(reserve(40, 1_000, 10, 100), (900, 910));
        // Then at most lag / interval requests go at once before pacing resumes.
        let (mut next, mut at_once) = (40, 0);
        loop {
            let (slot, n) = reserve(next, 1_000, 10, 100);
            next = n;
            if slot > 1_000 {
                break;
            }
            at_once += 1;
        }
        assert_eq!(at_once, 11);
        // No lag allowed: a late request goes now and pacing starts from there.
        assert_eq!(reserve(40, 1_000, 10, 0), (1_000, 1_010));
    }

    #[test]
    fn n_requests_at_a_rate_span_n_minus_one_intervals() {
        // 100 requests at 50/s, all asked for at once, take 1.98 s of slots.
        let interval = interval_ns(50.0);
        let mut next = 0;
        let mut last = 0;
        for _ in 0..100 {
            (last, next) = reserve(next, 0, interval, MAX_LAG.as_nanos() as u64);
        }
        assert_eq!(last, 99 * 20_000_000);
    }

    #[tokio::test]
    async fn schedule_stops_at_the_total() {
        let s = Schedule::new(Goal::Total(3), 0.0);
        let mut taken = Vec::new();
        while let Some(i) = s.take().await {
            taken.push(i);
            s.complete();
        }
        assert_eq!(taken, vec![0, 1, 2]);
        assert_eq!(s.completed(), 3);
        assert_eq!(s.take().await, None);
    }

    #[tokio::test]
    async fn schedule_stops_at_the_deadline_and_keeps_the_rate() {
        // 100/s for 0.2 s: slots at 0, 10, ..., 190 ms, so about 20 requests.
        let s = Schedule::new(Goal::Duration(Duration::from_millis(200)), 100.0);
        let mut n = 0;
        while s.take().await.is_some() {
            n += 1;
        }
        assert!((15..=21).contains(&n), "{n}");
        assert!(s.start().elapsed() >= Duration::from_millis(180));
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration(" 3s "), Ok(Duration::from_secs(3)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
