//! The C# Replicator's default transform, as an opt-in
//! (`replicator.transform.originalMetadata: true`): each appended event's
//! metadata gets where the event came from.
//!
//! | key | value |
//! |---|---|
//! | `$originalEventNumber` | the source revision (a JSON integer) |
//! | `$originalPosition` | the source commit position (a JSON integer, uint64) |
//! | `$originalCreatedDate` | the source's creation time, ISO-8601 with offset as .NET writes a `DateTimeOffset`: `2022-02-28T16:24:40.06+00:00` (fraction to 100 ns, trailing zeros dropped) |
//!
//! Metadata that is a JSON object gets the three keys (added at the end, the
//! rest of the document byte for byte; an existing key of the same name is
//! replaced). Empty metadata becomes a new object with them. Metadata that is
//! not a JSON object (binary, text, a JSON array or scalar) is left unchanged:
//! the event is still replicated (the C# tool stalled on it), a warning is
//! logged for the first such event and every one is counted
//! ([`OriginalMetadata::not_an_object`]). Metadata records, deletes and
//! tombstones are not events and pass unchanged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use replicator_core::{ChangeKind, Event, Transform, TransformError};
use serde_json::{Map, Value};
use tracing::warn;

/// The metadata key of the source revision.
pub const ORIGINAL_EVENT_NUMBER: &str = "$originalEventNumber";
/// The metadata key of the source commit position.
pub const ORIGINAL_POSITION: &str = "$originalPosition";
/// The metadata key of the source creation time.
pub const ORIGINAL_CREATED_DATE: &str = "$originalCreatedDate";

/// Adds the C# default transform's `$original…` keys to events' metadata.
///
/// ```
/// # tokio_test::block_on(async {
/// use replicator_core::Transform;
/// use replicator_transform::original::OriginalMetadata;
/// # let event = replicator_transform::original::example_event();
/// let out = OriginalMetadata::default().apply(event).await.unwrap();
/// assert_eq!(
///     &out.metadata[..],
///     br#"{"user":"a","$originalEventNumber":7,"$originalPosition":1234,"$originalCreatedDate":"2022-02-28T16:24:40.06+00:00"}"#
/// );
/// # });
/// ```
#[derive(Debug, Default)]
pub struct OriginalMetadata {
    not_an_object: AtomicU64,
}

impl OriginalMetadata {
    /// Events whose metadata was not a JSON object and was left unchanged.
    pub fn not_an_object(&self) -> u64 {
        self.not_an_object.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Transform for OriginalMetadata {
    fn name(&self) -> String {
        "original metadata".into()
    }

    async fn apply(&self, mut event: Event) -> Result<Event, TransformError> {
        if event.kind != ChangeKind::Append {
            return Ok(event);
        }
        match with_original(&event) {
            Some(metadata) => event.metadata = metadata,
            None => {
                if self.not_an_object.fetch_add(1, Ordering::Relaxed) == 0 {
                    warn!(
                        stream = %event.stream,
                        revision = event.revision,
                        position = %event.position,
                        "Event metadata is not a JSON object: replicated without the $original keys \
                         (this warning is logged once; later ones are counted)"
                    );
                }
            }
        }
        Ok(event)
    }

    fn concurrency(&self) -> usize {
        1
    }

    /// Streams and events stay as they are.
    fn keeps_revisions(&self) -> bool {
        true
    }
}

/// The event's metadata with the three keys, or `None` when it is not a JSON
/// object.
fn with_original(event: &Event) -> Option<Bytes> {
    let fields = [
        (ORIGINAL_EVENT_NUMBER, Value::from(event.revision)),
        (ORIGINAL_POSITION, Value::from(event.position.commit)),
        (
            ORIGINAL_CREATED_DATE,
            Value::from(dotnet_date(event.created)),
        ),
    ];
    let text = std::str::from_utf8(&event.metadata).ok()?.trim();
    if text.is_empty() {
        let map: Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        return Some(Bytes::from(Value::Object(map).to_string()));
    }
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    if fields.iter().any(|(k, _)| map.contains_key(*k)) {
        // Replicated before (or written by hand): replace the keys.
        for (k, v) in fields {
            map.insert(k.to_owned(), v);
        }
        return Some(Bytes::from(Value::Object(map).to_string()));
    }
    // Append to the document as written: the user's keys keep their order
    // and spelling.
    let body = text.strip_suffix('}')?.trim_end();
    let mut out = String::with_capacity(text.len() + 120);
    out.push_str(body);
    if !map.is_empty() {
        out.push(',');
    }
    let added: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
        .collect();
    out.push_str(&added.join(","));
    out.push('}');
    Some(Bytes::from(out))
}

/// `t` as .NET's System.Text.Json writes a UTC `DateTimeOffset`:
/// `2022-02-28T16:24:40.06+00:00`.
pub fn dotnet_date(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let seconds =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let mut out = t
        .format(seconds)
        .expect("a UTC time with a four-digit year formats");
    // .NET keeps 100 ns ticks and drops trailing zeros.
    let ticks = t.nanosecond() / 100;
    if ticks > 0 {
        let fraction = format!("{ticks:07}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push_str("+00:00");
    out
}

/// An event for the examples: revision 7 at commit position 1234, created
/// 2022-02-28T16:24:40.06Z, metadata `{"user":"a"}`.
#[doc(hidden)]
pub fn example_event() -> Event {
    Event::new("orders-1", "OrderPlaced", Bytes::from_static(b"{}"))
        .with_id(uuid::Uuid::nil())
        .with_revision(7)
        .with_metadata(Bytes::from_static(br#"{"user":"a"}"#))
        .with_created(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_646_065_480_060))
        .with_position(replicator_core::Position {
            commit: 1234,
            prepare: 1200,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn metadata_after(metadata: &[u8]) -> (Bytes, u64) {
        let t = OriginalMetadata::default();
        let mut e = example_event();
        e.metadata = Bytes::copy_from_slice(metadata);
        let out = t.apply(e).await.unwrap();
        (out.metadata, t.not_an_object())
    }

    #[tokio::test]
    async fn empty_metadata_becomes_an_object_with_the_three_keys() {
        let (m, _) = metadata_after(b"").await;
        let v: Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v[ORIGINAL_EVENT_NUMBER], 7);
        assert_eq!(v[ORIGINAL_POSITION], 1234);
        assert_eq!(v[ORIGINAL_CREATED_DATE], "2022-02-28T16:24:40.06+00:00");
    }

    #[tokio::test]
    async fn existing_keys_are_replaced_and_an_empty_object_gets_no_stray_comma() {
        let (m, _) = metadata_after(br#"{"$originalEventNumber": 1, "x": [1]}"#).await;
        let v: Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v[ORIGINAL_EVENT_NUMBER], 7);
        assert_eq!(v["x"][0], 1);
        let (m, _) = metadata_after(b" { } ").await;
        assert!(serde_json::from_slice::<Value>(&m).is_ok(), "{m:?}");
    }

    #[tokio::test]
    async fn metadata_that_is_not_an_object_is_kept_and_counted() {
        for bad in [&b"[1,2]"[..], b"\"text\"", b"not json", b"\xff\x00"] {
            let (m, count) = metadata_after(bad).await;
            assert_eq!(&m[..], bad);
            assert_eq!(count, 1);
        }
    }

    #[tokio::test]
    async fn other_changes_pass_unchanged() {
        let t = OriginalMetadata::default();
        let mut e = example_event();
        e.kind = ChangeKind::StreamMetadata;
        let out = t.apply(e.clone()).await.unwrap();
        assert_eq!(out, e);
    }

    #[test]
    fn dates_are_written_as_dotnet_writes_them() {
        let at = |ms: u64, ns: u32| {
            SystemTime::UNIX_EPOCH + Duration::from_millis(ms) + Duration::from_nanos(ns.into())
        };
        assert_eq!(
            dotnet_date(at(1_646_065_480_000, 0)),
            "2022-02-28T16:24:40+00:00"
        );
        assert_eq!(
            dotnet_date(at(1_646_065_480_000, 1_234_500)),
            "2022-02-28T16:24:40.0012345+00:00"
        );
        assert_eq!(
            dotnet_date(at(1_646_065_480_000, 99)),
            "2022-02-28T16:24:40+00:00",
            "below a tick"
        );
    }
}
