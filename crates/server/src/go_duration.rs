//! Go's duration syntax (`time.ParseDuration`), which etcd's flags and options use: `1m30s`,
//! `500ms`, `1h`, `2.5s`, `1.5h`, `0`, units `ns`, `us` (`µs`, `μs`), `ms`, `s`, `m`, `h`.
//!
//! Operators copy etcd command lines and `--auth-token ...,ttl=...` options verbatim, so a value
//! etcd takes must mean the same here, and one etcd refuses is refused. This is a port of Go's
//! algorithm (integer nanoseconds, fractions scaled as Go scales them, the same overflow
//! limits), not an approximation: general-purpose crates such as `humantime` accept other forms
//! (`1 day`, `5min`, spaces) and refuse `.5s`, which Go takes.

use std::time::Duration;

/// The largest duration Go can hold: `1<<63 - 1` nanoseconds.
const MAX_NANOS: u64 = (1 << 63) - 1;

/// Parses a Go duration that must not be negative (every etcd duration flag is a length of
/// time); the error reads as Go's (`time: invalid duration "x"`).
pub fn parse(text: &str) -> Result<Duration, String> {
    match parse_signed(text)? {
        (false, d) => Ok(d),
        (true, d) if d.is_zero() => Ok(d),
        (true, _) => Err(format!("time: negative duration {text:?}")),
    }
}

/// Parses a Go duration, sign apart: `(negative, magnitude)`. Exactly Go's grammar,
/// `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, or a lone `0`.
pub fn parse_signed(text: &str) -> Result<(bool, Duration), String> {
    let invalid = || format!("time: invalid duration {text:?}");
    let mut s = text;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok((negative, Duration::ZERO));
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(invalid());
        }
        let (whole, rest) = leading_int(s).ok_or_else(invalid)?;
        let had_whole = rest.len() != s.len();
        s = rest;
        let (mut fraction, mut scale, mut had_fraction) = (0u64, 1f64, false);
        if let Some(rest) = s.strip_prefix('.') {
            let (f, sc, after) = leading_fraction(rest);
            had_fraction = after.len() != rest.len();
            (fraction, scale, s) = (f, sc, after);
        }
        if !had_whole && !had_fraction {
            return Err(invalid());
        }
        let unit_len = s.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {text:?}"));
        }
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        let nanos_per_unit: u64 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            _ => return Err(format!("time: unknown unit {unit:?} in duration {text:?}")),
        };
        if whole > (1u64 << 63) / nanos_per_unit {
            return Err(invalid());
        }
        let mut v = whole * nanos_per_unit;
        if fraction > 0 {
            // As Go: float64 keeps a fraction of an hour exact to the nanosecond.
            v += (fraction as f64 * (nanos_per_unit as f64 / scale)) as u64;
            if v > 1 << 63 {
                return Err(invalid());
            }
        }
        total = total.checked_add(v).filter(|t| *t <= 1 << 63).ok_or_else(invalid)?;
    }
    if !negative && total > MAX_NANOS {
        return Err(invalid());
    }
    Ok((negative, Duration::from_nanos(total)))
}

/// Go's `leadingInt`: the leading digits of `s` as a number, `None` past `1<<63`.
fn leading_int(s: &str) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let mut x: u64 = 0;
    for c in s[..end].bytes() {
        if x > (1 << 63) / 10 {
            return None;
        }
        x = x * 10 + u64::from(c - b'0');
        if x > 1 << 63 {
            return None;
        }
    }
    Some((x, &s[end..]))
}

/// Go's `leadingFraction`: the leading digits of `s` after a point, with their scale; digits
/// past what 63 bits hold are consumed without adding precision.
fn leading_fraction(s: &str) -> (u64, f64, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (mut x, mut scale, mut overflow) = (0u64, 1f64, false);
    for c in s[..end].bytes() {
        if overflow {
            continue;
        }
        if x > MAX_NANOS / 10 {
            overflow = true;
            continue;
        }
        let y = x * 10 + u64::from(c - b'0');
        if y > 1 << 63 {
            overflow = true;
            continue;
        }
        x = y;
        scale *= 10.0;
    }
    (x, scale, &s[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Duration {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// Cases from Go's own `time` tests (parseDurationTests).
    #[test]
    fn parses_what_go_parses() {
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("5s"), Duration::from_secs(5));
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("1478s"), Duration::from_secs(1478));
        assert_eq!(ok("+5s"), Duration::from_secs(5));
        assert_eq!(ok("-0"), Duration::ZERO);
        assert_eq!(ok("5.0s"), Duration::from_secs(5));
        assert_eq!(ok("5.6s"), Duration::from_millis(5600));
        assert_eq!(ok("5.s"), Duration::from_secs(5));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1.0s"), Duration::from_secs(1));
        assert_eq!(ok("1.00s"), Duration::from_secs(1));
        assert_eq!(ok("1.004s"), Duration::from_millis(1004));
        assert_eq!(ok("1.0040s"), Duration::from_millis(1004));
        assert_eq!(ok("100.00100s"), Duration::from_millis(100_001));
        assert_eq!(ok("10ns"), Duration::from_nanos(10));
        assert_eq!(ok("11us"), Duration::from_micros(11));
        assert_eq!(ok("12µs"), Duration::from_micros(12));
        assert_eq!(ok("12μs"), Duration::from_micros(12));
        assert_eq!(ok("13ms"), Duration::from_millis(13));
        assert_eq!(ok("14s"), Duration::from_secs(14));
        assert_eq!(ok("15m"), Duration::from_secs(15 * 60));
        assert_eq!(ok("16h"), Duration::from_secs(16 * 3600));
        assert_eq!(ok("3h30m"), Duration::from_secs(3 * 3600 + 30 * 60));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("10.5s4m"), Duration::from_millis(4 * 60_000 + 10_500));
        assert_eq!(ok("1h1m1s1ms1us1ns"), Duration::from_nanos(3_661_001_001_001));
        assert_eq!(ok("39h9m14.425s"), Duration::from_millis(140_954_425));
        assert_eq!(ok("52763797000ns"), Duration::from_nanos(52_763_797_000));
        assert_eq!(ok("0.3333333333333333333h"), Duration::from_secs(20 * 60));
        assert_eq!(ok("9007199254740993ns"), Duration::from_nanos(9_007_199_254_740_993));
        assert_eq!(ok("9223372036854775807ns"), Duration::from_nanos(MAX_NANOS));
        assert_eq!(ok("9223372036854775.807us"), Duration::from_nanos(MAX_NANOS));
        assert_eq!(ok("9223372036s854ms775us807ns"), Duration::from_nanos(MAX_NANOS));
        assert_eq!(ok("0.100000000000000000000h"), Duration::from_secs(6 * 60));
        assert_eq!(ok("0.830103483285477580700h"), Duration::from_nanos(2_988_372_539_827));
        assert_eq!(
            parse_signed("-9223372036854775808ns"),
            Ok((true, Duration::from_nanos(1 << 63)))
        );
        assert_eq!(parse_signed("-1m30s"), Ok((true, Duration::from_secs(90))));
    }

    #[test]
    fn refuses_what_go_refuses() {
        for bad in [
            "",
            "3",
            "-",
            "s",
            ".",
            "-.",
            ".s",
            "+.s",
            "1d",
            "\u{85}\u{85}",
            "\u{FFFD}",
            "9223372036854775810ns",
            "9223372036854775808ns",
            "9223372036854775.808us",
            "9223372036854ms775us808ns",
            "1.5",
            "5 s",
            "5S",
            "3000000h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            parse("1x"),
            Err(r#"time: unknown unit "x" in duration "1x""#.to_string())
        );
        assert_eq!(parse("5"), Err(r#"time: missing unit in duration "5""#.to_string()));
        assert!(parse("-5s").is_err(), "negative lengths of time are refused");
    }
}
