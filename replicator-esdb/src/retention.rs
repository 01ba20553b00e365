//! What a scavenge of the source would remove, decided from stream metadata
//! alone: the pure part of the [`crate::ScavengeFilter`], free of I/O.
//!
//! A [`Catalog`] holds only the streams whose metadata limits what a
//! scavenge keeps (`$tb`, `$maxCount`, `$maxAge`, a soft delete) and the
//! tombstoned streams. A stream without such metadata has no entry, so the
//! memory used depends on those streams alone, never on how many streams the
//! source holds.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// The retention settings of one stream's metadata document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Retention {
    /// `$tb`: revisions below it are gone. `i64::MAX` is a soft delete.
    pub(crate) truncate_before: Option<u64>,
    /// `$maxCount`: only the last this many events are kept.
    pub(crate) max_count: Option<u64>,
    /// `$maxAge`: events older than this are gone.
    pub(crate) max_age: Option<Duration>,
}

impl Retention {
    /// Reads `$tb`, `$maxCount` and `$maxAge` (seconds) from a metadata
    /// document. A document that is not a JSON object, or a value that is not
    /// a non-negative integer, limits nothing: the server treats such metadata
    /// the same way.
    pub(crate) fn parse(data: &[u8]) -> Retention {
        #[derive(serde::Deserialize)]
        struct Document {
            #[serde(rename = "$tb")]
            tb: Option<serde_json::Value>,
            #[serde(rename = "$maxCount")]
            max_count: Option<serde_json::Value>,
            #[serde(rename = "$maxAge")]
            max_age: Option<serde_json::Value>,
        }
        let Ok(document) = serde_json::from_slice::<Document>(data) else {
            return Retention::default();
        };
        let number = |value: Option<serde_json::Value>| value.as_ref().and_then(|v| v.as_u64());
        Retention {
            truncate_before: number(document.tb),
            max_count: number(document.max_count),
            max_age: number(document.max_age).map(Duration::from_secs),
        }
    }

    fn limits_anything(&self) -> bool {
        self.truncate_before.is_some_and(|tb| tb > 0)
            || self.max_count.is_some()
            || self.max_age.is_some()
    }
}

/// What the catalog knows of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct StreamState {
    retention: Retention,
    tombstoned: bool,
    /// The stream's last event revision on the source, kept only for
    /// streams with `$maxCount`; `None` until read or seen.
    last_revision: Option<u64>,
}

/// Why an event is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removed {
    /// The stream is tombstoned.
    Tombstoned,
    /// The stream is soft-deleted (`$tb` = `i64::MAX`).
    SoftDeleted,
    /// Below the stream's `$tb`.
    TruncatedBefore,
    /// More than `$maxCount` events from the stream's last event.
    MaxCount,
    /// Older than `$maxAge`.
    MaxAge,
}

/// The decision on one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A scavenge would keep it.
    Keep,
    /// A scavenge would remove it.
    Remove(Removed),
    /// The stream has `$maxCount` and its last revision is unknown: read it
    /// from the source and tell [`Catalog::saw_last_revision`], then ask again.
    NeedLastRevision,
}

/// The streams whose metadata or deletion limits what a scavenge keeps.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    streams: HashMap<Box<str>, StreamState>,
}

impl Catalog {
    /// How many streams the catalog holds.
    pub(crate) fn len(&self) -> usize {
        self.streams.len()
    }

    /// `stream`'s metadata is now `data` (the latest metadata record of
    /// `$$stream`). Replaces what was known; a document that limits nothing
    /// drops the stream's entry unless the stream is tombstoned.
    pub(crate) fn set_metadata(&mut self, stream: &str, data: &[u8]) {
        let retention = Retention::parse(data);
        if !retention.limits_anything() {
            if let Some(state) = self.streams.get_mut(stream) {
                if state.tombstoned {
                    state.retention = retention;
                } else {
                    self.streams.remove(stream);
                }
            }
            return;
        }
        let state = self.streams.entry(stream.into()).or_default();
        state.retention = retention;
        if retention.max_count.is_none() {
            state.last_revision = None;
        }
    }

    /// `stream` is tombstoned: none of its events survive a scavenge.
    pub(crate) fn tombstone(&mut self, stream: &str) {
        self.streams.entry(stream.into()).or_default().tombstoned = true;
    }

    /// The source's last revision of `stream` is at least `last` (read
    /// backwards from the source, or an event seen passing). Kept only for
    /// streams with `$maxCount`.
    pub(crate) fn saw_last_revision(&mut self, stream: &str, last: u64) {
        if let Some(state) = self.streams.get_mut(stream) {
            if state.retention.max_count.is_some() {
                state.last_revision = Some(state.last_revision.map_or(last, |l| l.max(last)));
            }
        }
    }

    /// Whether a scavenge of the source would remove the event at `revision`
    /// of `stream`, created at `created`, judged at `now`.
    ///
    /// - tombstoned or soft-deleted stream: removed;
    /// - `revision < $tb`: removed;
    /// - `$maxCount` n: removed when `revision + n <= last`, i.e. when it is
    ///   not among the last n events, which a server keeps. (The C# tool
    ///   removed only `revision < last - n` and so kept n + 1.) The event
    ///   itself counts as seen: the last revision is at least its own;
    /// - `$maxAge`: removed when `created + maxAge < now`.
    pub(crate) fn verdict(
        &mut self,
        stream: &str,
        revision: u64,
        created: SystemTime,
        now: SystemTime,
    ) -> Verdict {
        let Some(state) = self.streams.get_mut(stream) else {
            return Verdict::Keep;
        };
        let retention = state.retention;
        if state.tombstoned {
            return Verdict::Remove(Removed::Tombstoned);
        }
        if let Some(tb) = retention.truncate_before {
            if tb == crate::SOFT_DELETE_TRUNCATE_BEFORE {
                return Verdict::Remove(Removed::SoftDeleted);
            }
            if revision < tb {
                return Verdict::Remove(Removed::TruncatedBefore);
            }
        }
        if let Some(max_age) = retention.max_age {
            if created.checked_add(max_age).is_some_and(|end| end < now) {
                return Verdict::Remove(Removed::MaxAge);
            }
        }
        if let Some(max_count) = retention.max_count {
            let Some(last) = state.last_revision else {
                return Verdict::NeedLastRevision;
            };
            let last = last.max(revision);
            state.last_revision = Some(last);
            if revision.saturating_add(max_count) <= last {
                return Verdict::Remove(Removed::MaxCount);
            }
        }
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOFT_DELETE: &[u8] = br#"{"$tb":9223372036854775807}"#;

    fn keep(catalog: &mut Catalog, stream: &str, revision: u64) -> Verdict {
        let now = SystemTime::now();
        catalog.verdict(stream, revision, now, now)
    }

    #[test]
    fn retention_is_read_from_the_documented_keys_and_nothing_else() {
        assert_eq!(
            Retention::parse(br#"{"$tb":3,"$maxCount":10,"$maxAge":60,"other":1}"#),
            Retention {
                truncate_before: Some(3),
                max_count: Some(10),
                max_age: Some(Duration::from_secs(60)),
            }
        );
        for nothing in [
            &b""[..],
            b"[1]",
            b"not json",
            br#"{"$acl":{"$r":"ops"}}"#,
            br#"{"$maxCount":"ten","$tb":-1}"#,
        ] {
            assert_eq!(Retention::parse(nothing), Retention::default());
        }
    }

    #[test]
    fn streams_without_limiting_metadata_take_no_memory() {
        let mut catalog = Catalog::default();
        let now = SystemTime::now();
        for i in 0..50_000 {
            let stream = format!("plain-{i}");
            // Events of streams the catalog never heard of, and metadata that
            // limits nothing (an ACL, custom keys, `$tb` 0).
            assert_eq!(catalog.verdict(&stream, 7, now, now), Verdict::Keep);
            catalog.saw_last_revision(&stream, 7);
            let metadata: &[u8] = match i % 3 {
                0 => br#"{"$acl":{"$r":"ops"}}"#,
                1 => br#"{"owner":"team-a"}"#,
                _ => br#"{"$tb":0}"#,
            };
            catalog.set_metadata(&stream, metadata);
        }
        assert_eq!(catalog.len(), 0);
        for i in 0..10 {
            catalog.set_metadata(&format!("limited-{i}"), br#"{"$maxCount":5}"#);
        }
        catalog.tombstone("gone");
        assert_eq!(catalog.len(), 11);
        // Metadata that stops limiting frees the entry again.
        catalog.set_metadata("limited-0", br#"{"owner":"team-a"}"#);
        assert_eq!(catalog.len(), 10);
    }

    #[test]
    fn truncate_before_removes_the_revisions_below_it() {
        let mut catalog = Catalog::default();
        catalog.set_metadata("s", br#"{"$tb":3}"#);
        assert_eq!(
            keep(&mut catalog, "s", 2),
            Verdict::Remove(Removed::TruncatedBefore)
        );
        assert_eq!(keep(&mut catalog, "s", 3), Verdict::Keep);
    }

    #[test]
    fn a_soft_delete_removes_everything_until_the_stream_is_recreated() {
        let mut catalog = Catalog::default();
        catalog.set_metadata("s", SOFT_DELETE);
        assert_eq!(
            keep(&mut catalog, "s", 100),
            Verdict::Remove(Removed::SoftDeleted)
        );
        // Recreating writes `$tb` = the first new revision.
        catalog.set_metadata("s", br#"{"$tb":4}"#);
        assert_eq!(
            keep(&mut catalog, "s", 3),
            Verdict::Remove(Removed::TruncatedBefore)
        );
        assert_eq!(keep(&mut catalog, "s", 4), Verdict::Keep);
    }

    #[test]
    fn a_tombstone_removes_everything_and_outlives_later_metadata() {
        let mut catalog = Catalog::default();
        catalog.tombstone("s");
        catalog.set_metadata("s", br#"{"owner":"x"}"#);
        assert_eq!(
            keep(&mut catalog, "s", 0),
            Verdict::Remove(Removed::Tombstoned)
        );
        assert_eq!(catalog.len(), 1);
    }

    #[test]
    fn max_count_keeps_the_last_n_events_as_a_server_does() {
        let mut catalog = Catalog::default();
        catalog.set_metadata("s", br#"{"$maxCount":3}"#);
        assert_eq!(keep(&mut catalog, "s", 0), Verdict::NeedLastRevision);
        catalog.saw_last_revision("s", 9);
        // The server keeps 7, 8, 9; the C# tool also kept 6.
        assert_eq!(
            keep(&mut catalog, "s", 6),
            Verdict::Remove(Removed::MaxCount)
        );
        assert_eq!(keep(&mut catalog, "s", 7), Verdict::Keep);
        assert_eq!(keep(&mut catalog, "s", 9), Verdict::Keep);
        // A later event moves the window: it is at least the last revision.
        assert_eq!(keep(&mut catalog, "s", 12), Verdict::Keep);
        assert_eq!(
            keep(&mut catalog, "s", 9),
            Verdict::Remove(Removed::MaxCount)
        );
        // A stale read does not move it back.
        catalog.saw_last_revision("s", 5);
        assert_eq!(
            keep(&mut catalog, "s", 9),
            Verdict::Remove(Removed::MaxCount)
        );
    }

    #[test]
    fn max_age_removes_events_older_than_it_at_the_time_of_judging() {
        let mut catalog = Catalog::default();
        catalog.set_metadata("s", br#"{"$maxAge":60}"#);
        let now = SystemTime::now();
        let old = now - Duration::from_secs(61);
        let young = now - Duration::from_secs(59);
        assert_eq!(
            catalog.verdict("s", 0, old, now),
            Verdict::Remove(Removed::MaxAge)
        );
        assert_eq!(catalog.verdict("s", 1, young, now), Verdict::Keep);
    }
}
