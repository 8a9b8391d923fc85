//! Time as the gateway keeps it: UTC nanoseconds inside, RFC 3339 for machines, the site's time zone
//! for people.

use chrono::TimeZone;

/// Now as UTC nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// RFC 3339 in UTC with milliseconds, as the API answers.
pub fn fmt_ns(ts: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ts).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Local time in `tz` for people: `2026-12-01 08:30:05 CST`.
pub fn fmt_local(ts: i64, tz: chrono_tz::Tz) -> String {
    tz.from_utc_datetime(&chrono::DateTime::from_timestamp_nanos(ts).naive_utc())
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_and_local() {
        let ts = 1_764_577_805_000_000_000; // 2025-12-01T08:30:05Z
        assert_eq!(fmt_ns(ts), "2025-12-01T08:30:05.000Z");
        assert_eq!(fmt_local(ts, chrono_tz::Asia::Shanghai), "2025-12-01 16:30:05 CST");
    }
}
