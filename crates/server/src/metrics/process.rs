//! The `process_*` metrics every Prometheus client exports, read from `/proc/self` at scrape
//! time (Linux only; elsewhere they stay absent).

use std::sync::LazyLock;

use prometheus::{register_counter, register_int_gauge, Counter, IntGauge};

static RESIDENT_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("process_resident_memory_bytes", "Resident memory size in bytes.")
        .expect("metric registered once")
});
static VIRTUAL_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("process_virtual_memory_bytes", "Virtual memory size in bytes.")
        .expect("metric registered once")
});
static OPEN_FDS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("process_open_fds", "Number of open file descriptors.").expect("metric registered once")
});
static CPU_SECONDS: LazyLock<Counter> = LazyLock::new(|| {
    register_counter!(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds."
    )
    .expect("metric registered once")
});

/// Linux's USER_HZ: the unit of the CPU times in `/proc/self/stat`, 100 on every platform Rust
/// supports.
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads the process's memory, descriptors and CPU time.
pub fn refresh() {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            let kib = |rest: &str| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .map(|k| k * 1024)
            };
            if let Some(v) = line.strip_prefix("VmRSS:").and_then(kib) {
                RESIDENT_BYTES.set(v);
            } else if let Some(v) = line.strip_prefix("VmSize:").and_then(kib) {
                VIRTUAL_BYTES.set(v);
            }
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        OPEN_FDS.set(fds.count() as i64);
    }
    if let Some(seconds) = cpu_seconds() {
        let delta = seconds - CPU_SECONDS.get();
        if delta > 0.0 {
            CPU_SECONDS.inc_by(delta);
        }
    }
}

/// User plus system time, from fields 14 and 15 of `/proc/self/stat` (counted after the
/// parenthesised command name, which may itself hold spaces).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((user + system) / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        super::refresh();
        assert!(super::RESIDENT_BYTES.get() > 0);
        assert!(super::cpu_seconds().is_some());
    }
}
