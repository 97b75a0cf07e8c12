//! What a run found: latencies in an HDR histogram, and the summary printed
//! for people (text, like etcd's benchmark) or for scripts (one JSON object).

use crate::text::json_string;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Significant decimal digits the histograms keep: values are exact to 0.1%.
const SIGFIGS: u8 = 3;

/// Latencies of one kind of operation.
///
/// They go into an HDR histogram (microseconds, 3 significant digits) rather
/// than a list, so a long `--duration` run needs the same small, bounded
/// memory as a short one and clients' results merge cheaply. The fastest and
/// slowest are also kept exactly.
#[derive(Debug, Clone)]
pub struct Latencies {
    hist: Histogram<u64>,
    min: Duration,
    max: Duration,
}

/// The slowest latency a fresh histogram covers without growing: 1 s, in microseconds. Growing
/// copies the whole histogram, which, done by every client as its latencies climb during a run,
/// cost the load generator a few percent of its CPU.
const INITIAL_RANGE_US: u64 = 1_000_000;

impl Default for Latencies {
    fn default() -> Self {
        let mut hist = Histogram::new_with_max(INITIAL_RANGE_US, SIGFIGS)
            .expect("3 significant digits up to 1 s is a valid histogram precision");
        // Auto-resizing: it grows to cover a slower value when one comes.
        hist.auto(true);
        Latencies {
            hist,
            min: Duration::MAX,
            max: Duration::ZERO,
        }
    }
}

impl Latencies {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // `record` grows the histogram as needed (`saturating_record` would not).
        if self.hist.record(us).is_err() {
            self.hist.saturating_record(us);
        }
        self.min = self.min.min(latency);
        self.max = self.max.max(latency);
    }

    /// Adds every latency of `other` to these.
    pub fn merge(&mut self, other: &Latencies) {
        if other.count() == 0 {
            return;
        }
        // Both auto-resize, so adding cannot run out of range.
        let _ = self.hist.add(&other.hist);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The fastest latency; zero if none.
    pub fn min(&self) -> Duration {
        if self.count() == 0 {
            Duration::ZERO
        } else {
            self.min
        }
    }

    /// The slowest latency; zero if none.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The mean latency; zero if none.
    pub fn mean(&self) -> Duration {
        Duration::from_secs_f64(self.hist.mean().max(0.0) / 1e6)
    }

    /// The standard deviation of the latencies; zero if none.
    pub fn stddev(&self) -> Duration {
        if self.count() == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.hist.stdev().max(0.0) / 1e6)
    }

    /// The `p`-th percentile (0 < p <= 100) by nearest rank, to the histogram's
    /// precision; zero if none.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.count() == 0 {
            return Duration::ZERO;
        }
        // The small epsilon keeps float error from bumping an exact rank
        // (0.999 * 1000 is 999.0000000000001) up by one.
        let quantile = (p / 100.0 - 1e-12).clamp(1e-12, 1.0);
        let us = self.hist.value_at_quantile(quantile);
        Duration::from_micros(us).clamp(self.min(), self.max())
    }

    /// etcd benchmark's "Response time histogram": `n` buckets evenly spaced
    /// from the fastest to the slowest latency, plus one whose bound is the slowest;
    /// each counts the latencies above the previous bound, up to its own.
    pub fn buckets(&self, n: usize) -> Vec<Bucket> {
        if self.count() == 0 || n == 0 {
            return Vec::new();
        }
        let (min, max) = (self.min(), self.max());
        let step = (max - min) / n as u32;
        let mut buckets: Vec<Bucket> = (0..n)
            .map(|i| Bucket {
                upper: min + step * i as u32,
                count: 0,
            })
            .collect();
        buckets.push(Bucket { upper: max, count: 0 });
        for value in self.hist.iter_recorded() {
            let latency = Duration::from_micros(self.hist.lowest_equivalent(value.value_iterated_to())).clamp(min, max);
            let i = buckets.iter().position(|b| latency <= b.upper).unwrap_or(n);
            buckets[i].count += value.count_at_value();
        }
        buckets
    }
}

/// One bucket of the response time histogram: latencies up to `upper`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// The bucket's upper bound (inclusive).
    pub upper: Duration,
    /// Latencies in the bucket.
    pub count: u64,
}

/// The result of a run (or of one part of it): counts, duration, throughput
/// and the latency distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The workload's name (`put`, `range-l`, `txn-mixed`, ...), or the part's (`read`, `put`, ...).
    pub workload: String,
    /// What one counted operation is: `requests`, `events`, `keepalives`, `puts`.
    pub unit: &'static str,
    /// Operations attempted.
    pub total: u64,
    /// Operations that succeeded.
    pub ok: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Wall time from the first request to the last answer.
    pub duration: Duration,
    /// Successful operations per second of `duration`.
    pub requests_per_sec: f64,
    /// Fastest successful operation.
    pub min: Duration,
    /// Mean latency.
    pub mean: Duration,
    /// Standard deviation of the latencies.
    pub stddev: Duration,
    /// Median latency of the successful operations.
    pub p50: Duration,
    /// 90th percentile latency.
    pub p90: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// 99.9th percentile latency.
    pub p999: Duration,
    /// Slowest successful operation.
    pub max: Duration,
    /// The response time histogram (etcd benchmark's 10 + 1 linear buckets).
    pub buckets: Vec<Bucket>,
    /// Failed operations by error (gRPC code and message), most frequent first.
    pub error_kinds: Vec<(String, u64)>,
    /// For reads: successful reads that found no key (the key space was not loaded).
    pub not_found: Option<u64>,
    /// Other counts a workload reports, e.g. how many watchers a watch run had.
    pub counters: Vec<(&'static str, u64)>,
    /// Summaries of parts of the run: txn-mixed's reads and writes, the puts
    /// behind a watch run's events.
    pub parts: Vec<Summary>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Summary {
    /// Summarises a run from the latencies of its successful operations, its
    /// failures counted by error, and its wall time.
    pub fn new(workload: &str, latencies: &Latencies, errors: BTreeMap<String, u64>, duration: Duration) -> Self {
        let ok = latencies.count();
        let error_count: u64 = errors.values().sum();
        let mut error_kinds: Vec<(String, u64)> = errors.into_iter().collect();
        error_kinds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let secs = duration.as_secs_f64();
        Summary {
            workload: workload.to_string(),
            unit: "requests",
            total: ok + error_count,
            ok,
            errors: error_count,
            duration,
            requests_per_sec: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            min: latencies.min(),
            mean: latencies.mean(),
            stddev: latencies.stddev(),
            p50: latencies.percentile(50.0),
            p90: latencies.percentile(90.0),
            p99: latencies.percentile(99.0),
            p999: latencies.percentile(99.9),
            max: latencies.max(),
            buckets: latencies.buckets(10),
            error_kinds,
            not_found: None,
            counters: Vec::new(),
            parts: Vec::new(),
        }
    }

    /// The same summary, counting `unit`s rather than requests.
    pub fn with_unit(mut self, unit: &'static str) -> Self {
        self.unit = unit;
        self
    }

    /// The summary for people, in the spirit of etcd's benchmark report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Summary ({}):", self.workload);
        let unit = self.unit;
        let _ = writeln!(
            s,
            "  Total:        {} {unit} ({} ok, {} errors)",
            self.total, self.ok, self.errors
        );
        let _ = writeln!(s, "  Duration:     {:.4} s", self.duration.as_secs_f64());
        let rate_label = format!("{}/sec:", capitalise(unit));
        let _ = writeln!(s, "  {rate_label:<13} {:.1}", self.requests_per_sec);
        let _ = writeln!(
            s,
            "  Latency (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max)
        );
        let _ = writeln!(
            s,
            "  Fastest {:.3} ms, average {:.3} ms, stddev {:.3} ms",
            ms(self.min),
            ms(self.mean),
            ms(self.stddev)
        );
        if let Some(n) = self.not_found {
            let _ = writeln!(s, "  Not found:    {n} reads found no key");
        }
        for (name, value) in &self.counters {
            let _ = writeln!(s, "  {name}: {value}");
        }
        if !self.error_kinds.is_empty() {
            let _ = writeln!(s, "  Errors:");
            for (kind, count) in self.error_kinds.iter().take(10) {
                let _ = writeln!(s, "    {count:>8}  {kind}");
            }
            if self.error_kinds.len() > 10 {
                let _ = writeln!(s, "    ... and {} more kinds", self.error_kinds.len() - 10);
            }
        }
        if !self.buckets.is_empty() {
            let _ = writeln!(s, "  Response time histogram (ms):");
            let most = self.buckets.iter().map(|b| b.count).max().unwrap_or(0).max(1);
            for b in &self.buckets {
                let bar = "∎".repeat((b.count * 40 / most) as usize);
                let _ = writeln!(s, "    {:>10.3} [{}]\t|{bar}", ms(b.upper), b.count);
            }
        }
        for part in &self.parts {
            s.push('\n');
            s.push_str(&part.to_text());
        }
        s
    }

    /// The summary as one JSON object (one line). The first fields, through
    /// `max_ms`, are the ones `bench/compare.sh` and older scripts read.
    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        let _ = write!(
            s,
            "\"workload\":{},\"total\":{},\"ok\":{},\"errors\":{},\"duration_s\":{:.6},\
             \"requests_per_sec\":{:.3},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\
             \"p999_ms\":{:.3},\"max_ms\":{:.3},\"min_ms\":{:.3},\"mean_ms\":{:.3},\"stddev_ms\":{:.3},\
             \"unit\":{}",
            json_string(&self.workload),
            self.total,
            self.ok,
            self.errors,
            self.duration.as_secs_f64(),
            self.requests_per_sec,
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            ms(self.min),
            ms(self.mean),
            ms(self.stddev),
            json_string(self.unit),
        );
        if let Some(n) = self.not_found {
            let _ = write!(s, ",\"not_found\":{n}");
        }
        for (name, value) in &self.counters {
            let _ = write!(s, ",{}:{value}", json_string(name));
        }
        s.push_str(",\"histogram\":[");
        for (i, b) in self.buckets.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{{\"le_ms\":{:.3},\"count\":{}}}", ms(b.upper), b.count);
        }
        s.push(']');
        if !self.parts.is_empty() {
            s.push_str(",\"parts\":{");
            for (i, part) in self.parts.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                let _ = write!(s, "{}:{}", json_string(&part.workload), part.to_json());
            }
            s.push('}');
        }
        s.push_str(",\"error_kinds\":{");
        for (i, (kind, count)) in self.error_kinds.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{}:{count}", json_string(kind));
        }
        s.push_str("}}");
        s
    }
}

fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// What one client (or one watch stream) saw of one kind of operation.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Latencies of the successful operations.
    pub latencies: Latencies,
    /// Failed operations by error.
    pub errors: BTreeMap<String, u64>,
    /// Successful reads that found no key.
    pub not_found: u64,
}

impl Tally {
    /// Counts one failure under `kind`.
    pub fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    /// Counts `n` failures under `kind`.
    pub fn errors(&mut self, kind: impl Into<String>, n: u64) {
        if n > 0 {
            *self.errors.entry(kind.into()).or_default() += n;
        }
    }

    /// Adds another client's tally to this one.
    pub fn merge(&mut self, other: &Tally) {
        self.latencies.merge(&other.latencies);
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
        self.not_found += other.not_found;
    }

    /// The summary of this tally over `duration`.
    pub fn summary(&self, workload: &str, duration: Duration) -> Summary {
        Summary::new(workload, &self.latencies, self.errors.clone(), duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latencies(values: impl IntoIterator<Item = Duration>) -> Latencies {
        let mut l = Latencies::default();
        for v in values {
            l.record(v);
        }
        l
    }

    /// `actual` is `expected` to the histograms' precision (0.1%).
    #[track_caller]
    fn close(actual: Duration, expected: Duration) {
        let (a, e) = (actual.as_secs_f64(), expected.as_secs_f64());
        assert!((a - e).abs() <= e * 0.001 + 1e-6, "{actual:?} is not {expected:?}");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let lat = latencies((1..=1000).map(Duration::from_millis));
        close(lat.percentile(50.0), Duration::from_millis(500));
        close(lat.percentile(90.0), Duration::from_millis(900));
        close(lat.percentile(99.0), Duration::from_millis(990));
        close(lat.percentile(99.9), Duration::from_millis(999));
        assert_eq!(lat.percentile(100.0), Duration::from_millis(1000));
        assert_eq!(Latencies::default().percentile(99.0), Duration::ZERO);
        let one = latencies([Duration::from_millis(3)]);
        assert_eq!(one.percentile(50.0), Duration::from_millis(3));
        assert_eq!(one.percentile(99.9), Duration::from_millis(3));
    }

    #[test]
    fn small_latencies_are_exact_and_min_max_always() {
        // Below 2048 us the histogram has 1 us resolution.
        let lat = latencies((1..=100).map(|i| Duration::from_micros(i * 10)));
        assert_eq!(lat.percentile(50.0), Duration::from_micros(500));
        assert_eq!(lat.percentile(99.0), Duration::from_micros(990));
        let lat = latencies([Duration::from_nanos(123_456_789), Duration::from_nanos(1_500)]);
        assert_eq!(lat.max(), Duration::from_nanos(123_456_789));
        assert_eq!(lat.min(), Duration::from_nanos(1_500));
        // A percentile never goes past the exact extremes.
        assert_eq!(lat.percentile(100.0), Duration::from_nanos(123_456_789));
        assert_eq!(lat.percentile(1.0), Duration::from_nanos(1_500));
    }

    #[test]
    fn merged_histograms_equal_one_histogram() {
        let all = latencies((1..=2000).map(Duration::from_micros));
        let mut a = latencies((1..=1000).map(Duration::from_micros));
        let b = latencies((1001..=2000).map(Duration::from_micros));
        a.merge(&b);
        a.merge(&Latencies::default());
        assert_eq!(a.count(), 2000);
        for p in [50.0, 90.0, 99.0, 99.9] {
            assert_eq!(a.percentile(p), all.percentile(p));
        }
        assert_eq!(
            (a.min(), a.max()),
            (Duration::from_micros(1), Duration::from_micros(2000))
        );
        close(a.mean(), Duration::from_micros(1000) + Duration::from_nanos(500));
    }

    #[test]
    fn buckets_span_fastest_to_slowest_like_etcds() {
        let lat = latencies((1..=100).map(|i| Duration::from_micros(i * 10)));
        let buckets = lat.buckets(10);
        assert_eq!(buckets.len(), 11);
        assert_eq!(buckets[0].upper, Duration::from_micros(10));
        assert_eq!(buckets[10].upper, Duration::from_micros(1000));
        // 10..1000 us in 99 us steps: 10 | 11..109 | 110..208 | ...
        assert_eq!(buckets[0].count, 1);
        assert_eq!(
            buckets[1],
            Bucket {
                upper: Duration::from_micros(109),
                count: 9
            }
        );
        assert_eq!(buckets.iter().map(|b| b.count).sum::<u64>(), 100);
        assert!(Latencies::default().buckets(10).is_empty());
        // All the same latency: everything lands in the first bucket.
        let same = latencies([Duration::from_micros(7); 5]);
        assert_eq!(same.buckets(10)[0].count, 5);
    }

    #[test]
    fn summary_sorts_counts_and_rates() {
        let lat = latencies((1..=100).rev().map(Duration::from_millis));
        let mut errors = BTreeMap::new();
        errors.insert("Unavailable: no leader".to_string(), 3);
        errors.insert("DeadlineExceeded: timeout".to_string(), 7);
        let s = Summary::new("put", &lat, errors, Duration::from_secs(2));
        assert_eq!((s.total, s.ok, s.errors), (110, 100, 10));
        assert_eq!(s.requests_per_sec, 50.0);
        close(s.p50, Duration::from_millis(50));
        close(s.p99, Duration::from_millis(99));
        assert_eq!(s.p999, Duration::from_millis(100));
        assert_eq!(s.max, Duration::from_millis(100));
        assert_eq!(s.min, Duration::from_millis(1));
        assert_eq!(s.error_kinds[0], ("DeadlineExceeded: timeout".to_string(), 7));
        let text = s.to_text();
        assert!(text.contains("110 requests (100 ok, 10 errors)"), "{text}");
        assert!(text.contains("Requests/sec: 50.0"), "{text}");
        assert!(text.contains("p99 99.0"), "{text}");
        assert!(text.contains("Response time histogram"), "{text}");
    }

    #[test]
    fn summary_of_nothing_is_zeroes() {
        let s = Summary::new("put", &Latencies::default(), BTreeMap::new(), Duration::ZERO);
        assert_eq!(
            (s.total, s.requests_per_sec, s.max, s.min),
            (0, 0.0, Duration::ZERO, Duration::ZERO)
        );
        assert!(s.buckets.is_empty());
        assert!(s.to_json().contains("\"histogram\":[]"));
    }

    #[test]
    fn json_has_every_field_and_escapes() {
        let mut errors = BTreeMap::new();
        errors.insert("Unknown: say \"hi\"\n".to_string(), 1);
        let mut s = Summary::new(
            "range-l",
            &latencies([Duration::from_micros(1500)]),
            errors,
            Duration::from_secs(1),
        );
        s.not_found = Some(0);
        let json = s.to_json();
        assert_eq!(
            json,
            "{\"workload\":\"range-l\",\"total\":2,\"ok\":1,\"errors\":1,\"duration_s\":1.000000,\
             \"requests_per_sec\":1.000,\"p50_ms\":1.500,\"p90_ms\":1.500,\"p99_ms\":1.500,\
             \"p999_ms\":1.500,\"max_ms\":1.500,\"min_ms\":1.500,\"mean_ms\":1.500,\"stddev_ms\":0.000,\
             \"unit\":\"requests\",\"not_found\":0,\
             \"histogram\":[{\"le_ms\":1.500,\"count\":1}\
             ,{\"le_ms\":1.500,\"count\":0},{\"le_ms\":1.500,\"count\":0},{\"le_ms\":1.500,\"count\":0}\
             ,{\"le_ms\":1.500,\"count\":0},{\"le_ms\":1.500,\"count\":0},{\"le_ms\":1.500,\"count\":0}\
             ,{\"le_ms\":1.500,\"count\":0},{\"le_ms\":1.500,\"count\":0},{\"le_ms\":1.500,\"count\":0}\
             ,{\"le_ms\":1.500,\"count\":0}],\
             \"error_kinds\":{\"Unknown: say \\\"hi\\\"\\n\":1}}"
        );
    }

    #[test]
    fn json_nests_parts_after_the_top_level_fields() {
        let mut read = Tally::default();
        read.latencies.record(Duration::from_millis(1));
        read.not_found = 1;
        let mut write = Tally::default();
        write.latencies.record(Duration::from_millis(4));
        write.error("Unavailable: x");
        let mut all = read.clone();
        all.merge(&write);
        assert_eq!((all.latencies.count(), all.not_found, all.errors.len()), (2, 1, 1));
        let mut s = all.summary("txn-mixed", Duration::from_secs(1));
        s.counters.push(("watchers", 3));
        s.parts = vec![
            read.summary("read", Duration::from_secs(1)),
            write.summary("write", Duration::from_secs(1)),
        ];
        let json = s.to_json();
        assert!(
            json.starts_with("{\"workload\":\"txn-mixed\",\"total\":3,\"ok\":2,\"errors\":1,"),
            "{json}"
        );
        // Top-level p99 comes before any part's, so "first match" readers get the run's.
        let first_p99 = json.find("\"p99_ms\":").unwrap();
        assert!(first_p99 < json.find("\"parts\"").unwrap());
        assert!(json.contains(",\"watchers\":3,"), "{json}");
        assert!(json.contains("\"parts\":{\"read\":{\"workload\":\"read\","), "{json}");
        assert!(
            json.contains("\"write\":{\"workload\":\"write\",\"total\":2,\"ok\":1,\"errors\":1,"),
            "{json}"
        );
        assert!(json.ends_with("\"error_kinds\":{\"Unavailable: x\":1}}"), "{json}");
        assert_eq!(json.matches('{').count(), json.matches('}').count());
        let text = s.to_text();
        assert!(
            text.contains("Summary (read):") && text.contains("Summary (write):"),
            "{text}"
        );
        assert!(text.contains("watchers: 3"), "{text}");
        let events = s.with_unit("events").to_text();
        assert!(
            events.contains("3 events (2 ok, 1 errors)") && events.contains("Events/sec:"),
            "{events}"
        );
    }
}
