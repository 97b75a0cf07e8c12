//! A short history of request rates and latencies, sampled every second, for the dashboard's
//! live chart. It reads the same counters `/metrics` exports, so the two never disagree.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use serde::Serialize;
use tokio::sync::watch;

use super::grpc::HANDLING_SECONDS;
use crate::context::MemberContext;

/// How often a sample is taken.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How many samples are kept: five minutes.
const KEPT: usize = 300;
/// Percentiles are read over this many of the latest intervals, to smooth single seconds.
const PERCENTILE_WINDOW: usize = 5;

/// One second of a member's activity.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// When the sample was taken, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The store's revision then.
    pub revision: i64,
    /// Revisions per second: writes committed by the whole cluster, whoever served them.
    pub writes_per_sec: f64,
    /// Put, DeleteRange and Txn calls this member answered per second.
    pub puts_per_sec: f64,
    /// Range calls this member answered per second.
    pub ranges_per_sec: f64,
    /// The 99th percentile of this member's write-call latency over the last few seconds.
    pub put_p99_ms: Option<f64>,
    /// The 99th percentile of this member's Range latency over the last few seconds.
    pub range_p99_ms: Option<f64>,
    /// The store's file size.
    pub db_size: u64,
}

/// Cumulative counts read from the histograms at one instant.
#[derive(Clone, Default)]
struct Reading {
    writes: Buckets,
    ranges: Buckets,
}

/// A latency histogram's cumulative bucket counts (upper bound in seconds, count), and total.
#[derive(Clone, Default)]
struct Buckets {
    bounds: Vec<(f64, u64)>,
    total: u64,
}

impl Buckets {
    fn read(methods: &[(&str, &str)]) -> Buckets {
        let mut sum = Buckets::default();
        for family in HANDLING_SECONDS.collect() {
            for metric in family.get_metric() {
                let labels: Vec<(&str, &str)> = metric
                    .get_label()
                    .iter()
                    .map(|l| (l.get_name(), l.get_value()))
                    .collect();
                let label = |name: &str| labels.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).unwrap_or("");
                if !methods.contains(&(label("grpc_service"), label("grpc_method"))) {
                    continue;
                }
                let histogram = metric.get_histogram();
                sum.total += histogram.get_sample_count();
                for (i, bucket) in histogram.get_bucket().iter().enumerate() {
                    if sum.bounds.len() <= i {
                        sum.bounds.push((bucket.get_upper_bound(), 0));
                    }
                    sum.bounds[i].1 += bucket.get_cumulative_count();
                }
            }
        }
        sum
    }

    /// The calls counted here but not in `earlier`.
    fn since(&self, earlier: &Buckets) -> Buckets {
        let bounds = self
            .bounds
            .iter()
            .map(|&(le, n)| {
                (
                    le,
                    n - earlier.bounds.iter().find(|(b, _)| *b == le).map_or(0, |(_, m)| *m),
                )
            })
            .collect();
        Buckets {
            bounds,
            total: self.total - earlier.total,
        }
    }

    /// The upper bound of the bucket holding the `q` quantile, in milliseconds.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = (q * self.total as f64).ceil() as u64;
        let le = self
            .bounds
            .iter()
            .find(|(_, n)| *n >= rank)
            .map_or(f64::INFINITY, |(le, _)| *le);
        Some(if le.is_finite() {
            le * 1000.0
        } else {
            self.bounds.last().map_or(0.0, |(le, _)| le * 1000.0)
        })
    }
}

const WRITE_METHODS: [(&str, &str); 3] = [
    ("etcdserverpb.KV", "Put"),
    ("etcdserverpb.KV", "DeleteRange"),
    ("etcdserverpb.KV", "Txn"),
];
const RANGE_METHODS: [(&str, &str); 1] = [("etcdserverpb.KV", "Range")];

/// The last few minutes of samples, newest last.
#[derive(Default)]
pub struct RateHistory {
    samples: Mutex<VecDeque<Sample>>,
}

impl RateHistory {
    /// Every kept sample, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The newest sample, if one was taken.
    pub fn latest(&self) -> Option<Sample> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner()).back().cloned()
    }

    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }
}

/// Samples the member every second until `stop`, into `history`.
pub async fn sample(ctx: Arc<MemberContext>, history: Arc<RateHistory>, mut stop: watch::Receiver<bool>) {
    let mut readings: VecDeque<(Reading, i64, std::time::Instant)> = VecDeque::new();
    let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = std::time::Instant::now();
        let reading = Reading {
            writes: Buckets::read(&WRITE_METHODS),
            ranges: Buckets::read(&RANGE_METHODS),
        };
        let revision = ctx.store.current_revision();
        if let Some((previous, previous_revision, then)) = readings.back() {
            let seconds = now.duration_since(*then).as_secs_f64().max(1e-3);
            let (oldest, _, _) = readings.front().expect("not empty");
            history.push(Sample {
                unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                revision,
                writes_per_sec: (revision - previous_revision).max(0) as f64 / seconds,
                puts_per_sec: (reading.writes.total - previous.writes.total) as f64 / seconds,
                ranges_per_sec: (reading.ranges.total - previous.ranges.total) as f64 / seconds,
                put_p99_ms: reading.writes.since(&oldest.writes).quantile_ms(0.99),
                range_p99_ms: reading.ranges.since(&oldest.ranges).quantile_ms(0.99),
                db_size: ctx.store.db_size(),
            });
        }
        readings.push_back((reading, revision, now));
        if readings.len() > PERCENTILE_WINDOW {
            readings.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Buckets;

    #[test]
    fn quantile_is_the_bucket_holding_the_rank() {
        let b = Buckets {
            bounds: vec![(0.001, 90), (0.002, 99), (0.004, 100)],
            total: 100,
        };
        assert_eq!(b.quantile_ms(0.99), Some(2.0));
        assert_eq!(b.quantile_ms(1.0), Some(4.0));
        assert_eq!(b.quantile_ms(0.5), Some(1.0));
        let earlier = Buckets {
            bounds: vec![(0.001, 90), (0.002, 90), (0.004, 90)],
            total: 90,
        };
        assert_eq!(b.since(&earlier).quantile_ms(0.5), Some(2.0));
        assert_eq!(Buckets::default().quantile_ms(0.99), None);
    }
}
