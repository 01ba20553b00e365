//! Printing times: instants as RFC 3339 (the calendar is the `time` crate's),
//! durations as `replicator_core::health::short`.

use std::time::SystemTime;

use time::macros::format_description;
use time::OffsetDateTime;

/// `t` as RFC 3339 in UTC, to the second (`2024-02-29T13:05:09Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let nanos = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).ok(),
        Err(before) => i128::try_from(before.duration().as_nanos())
            .ok()
            .map(|n| -n),
    };
    let seconds = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    nanos
        .and_then(|n| OffsetDateTime::from_unix_timestamp_nanos(n).ok())
        .and_then(|t| t.format(seconds).ok())
        .unwrap_or_else(|| format!("{t:?} (outside the calendar's range)"))
}

pub use replicator_core::health::short;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00Z");
        // 2024-02-29 (a leap day) 13:05:09 UTC.
        assert_eq!(rfc3339(at(1_709_211_909)), "2024-02-29T13:05:09Z");
        // 2000-03-01, after the century leap day.
        assert_eq!(rfc3339(at(951_868_800)), "2000-03-01T00:00:00Z");
        assert_eq!(rfc3339(at(1_767_225_600)), "2026-01-01T00:00:00Z");
        // Before the epoch, to the second below.
        let before = SystemTime::UNIX_EPOCH - Duration::from_millis(500);
        assert_eq!(rfc3339(before), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn short_durations() {
        assert_eq!(short(Duration::from_millis(850)), "850ms");
        assert_eq!(short(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(short(Duration::from_secs(245)), "4m05s");
        assert_eq!(short(Duration::from_secs(3 * 3600 + 7 * 60)), "3h07m");
    }
}
