//! Sizes, durations and times: how Cairn reads them from operators and prints them back.
//!
//! Every configuration file, policy and command-line option goes through these functions, so
//! `30m` means the same everywhere and a value is refused the same way everywhere.
//!
//! Invariants:
//! - Parsing never wraps around: a size or duration that would overflow (or a duration longer
//!   than [`MAX_DURATION`], which later becomes microseconds in `i64` arithmetic) is refused,
//!   never shortened. A huge grace period must never turn into "now".
//! - Every refusal quotes the input and shows an accepted example.
//! - Times are Unix microseconds (`i64`) inside Cairn and RFC 3339 UTC when printed; a time
//!   read without a zone is UTC.

use std::time::Duration;

/// The longest duration accepted: 100 years.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86400);

fn split_number(s: &str) -> (&str, &str) {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(split)
}

/// `"90s"`, `"30m"`, `"24h"`, `"7d"`, `"2w"` (a bare number is seconds) -> duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = split_number(s);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 30s, 5m, 24h, 7d)"))?;
    let mult: u64 = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return Err(format!("'{s}': unknown unit (use s, m, h, d or w)")),
    };
    match n.checked_mul(mult) {
        Some(secs) if secs <= MAX_DURATION.as_secs() => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "'{s}' is longer than 100 years: too long to be meant"
        )),
    }
}

/// A duration the way [`parse_duration`] reads it, in the largest unit that divides it
/// (`90s`, `30m`, `7d`); fractions of a second are dropped.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, secs) in [("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)] {
        if s >= secs && s.is_multiple_of(secs) {
            return format!("{}{unit}", s / secs);
        }
    }
    format!("{s}s")
}

/// `"8MiB"`, `"1G"`, `"4096"` -> bytes (binary units; `k`, `kb` and `kib` all mean 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (n, unit) = split_number(s);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 8MiB, 1GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("'{s}': unknown unit (use KiB, MiB, GiB or TiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large a size"))
}

/// Bytes in binary units with one decimal (`512 B`, `1.5 KiB`, `8.0 MiB`).
pub fn fmt_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Unix microseconds as an RFC 3339 UTC time (the number itself when out of range).
pub fn fmt_time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| us.to_string())
}

/// A timestamp -> Unix microseconds: RFC 3339, PostgreSQL's
/// `YYYY-MM-DD HH:MM:SS[.ffffff][+TZ]`, or a date and time without zone (UTC).
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_micros());
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = chrono::DateTime::parse_from_str(s, f) {
            return Ok(t.timestamp_micros());
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Ok(t.and_utc().timestamp_micros());
        }
    }
    Err(format!(
        "'{s}' is not a timestamp: use RFC 3339 (2026-11-23T10:15:00Z) or PostgreSQL's format \
         (2026-11-23 10:15:00.123456+00); times without a zone are UTC"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit_and_refuse_overflow() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration(" 5m ").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86400)
        );
        assert_eq!(
            parse_duration("36500d").unwrap(),
            MAX_DURATION,
            "exactly 100 years is accepted"
        );
        let e = parse_duration("36501d").unwrap_err();
        assert!(e.contains("longer than 100 years"), "{e}");
        assert!(parse_duration("18446744073709551615d").is_err());
        assert!(parse_duration("99999999999999999999").is_err());
        let e = parse_duration("5 fortnights").unwrap_err();
        assert!(e.contains("'5 fortnights': unknown unit"), "{e}");
        let e = parse_duration("soon").unwrap_err();
        assert!(e.contains("'soon' is not a duration (e.g. 30s"), "{e}");
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5m").is_err());
    }

    #[test]
    fn durations_print_the_way_they_are_read() {
        for s in ["90s", "30m", "1h", "36h", "6d", "2w", "0s", "61s"] {
            assert_eq!(fmt_duration(parse_duration(s).unwrap()), s);
        }
        assert_eq!(fmt_duration(parse_duration("7d").unwrap()), "1w");
        assert_eq!(fmt_duration(parse_duration("120m").unwrap()), "2h");
        assert_eq!(fmt_duration(Duration::from_secs(3600 * 24)), "1d");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1s");
    }

    #[test]
    fn sizes_parse_in_binary_units_and_refuse_overflow() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("7b").unwrap(), 7);
        assert_eq!(parse_size("2k").unwrap(), 2048);
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("8mb").unwrap(), 8 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("3TiB").unwrap(), 3 << 40);
        assert!(parse_size("99999999999999999GiB")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_size("lots").unwrap_err().contains("is not a size"));
    }

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(fmt_size(0), "0 B");
        assert_eq!(fmt_size(1023), "1023 B");
        assert_eq!(fmt_size(1024), "1.0 KiB");
        assert_eq!(fmt_size(1536), "1.5 KiB");
        assert_eq!(fmt_size(8 << 20), "8.0 MiB");
        assert_eq!(fmt_size(5 << 40), "5.0 TiB");
        assert_eq!(fmt_size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn times_read_every_accepted_form_and_print_rfc3339_utc() {
        let t = 1_795_428_900_123_456; // 2026-11-23T10:15:00.123456Z
        assert_eq!(fmt_time(t), "2026-11-23T10:15:00.123456Z");
        for s in [
            "2026-11-23T10:15:00.123456Z",
            "2026-11-23T15:45:00.123456+05:30",
            "2026-11-23 10:15:00.123456+00",
            "2026-11-23 07:15:00.123456-03",
            "2026-11-23 10:15:00.123456",
            "2026-11-23T10:15:00.123456",
        ] {
            assert_eq!(parse_time(s).unwrap(), t, "{s}");
        }
        let e = parse_time("yesterday").unwrap_err();
        assert!(e.contains("'yesterday' is not a timestamp"), "{e}");
        assert_eq!(fmt_time(i64::MAX), i64::MAX.to_string());
    }
}
