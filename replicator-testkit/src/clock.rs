//! UTC timestamps as the server's JSON writes them (the calendar is the
//! `time` crate's).

use std::time::SystemTime;

use time::macros::format_description;
use time::OffsetDateTime;

/// `at` as `2026-12-07T21:40:19.1234567Z`, with `decimals` (at most 9)
/// digits of the second; a time before 1970 as 1970-01-01.
pub(crate) fn utc(at: SystemTime, decimals: u32) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let t = OffsetDateTime::UNIX_EPOCH
        .checked_add(since.try_into().unwrap_or_default())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let seconds = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let decimals = decimals.min(9);
    let fraction = t.nanosecond() / 10u32.pow(9 - decimals);
    format!(
        "{}.{fraction:0width$}Z",
        t.format(seconds)
            .expect("a UTC time after 1970 with a four-digit year formats"),
        width = decimals as usize
    )
}
