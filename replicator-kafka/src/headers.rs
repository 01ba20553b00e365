//! The headers of every record: what a consumer needs to know of the event
//! without parsing its value.
//!
//! | header | value |
//! |---|---|
//! | `es-event-type` | the event type (`$streamDeleted` on a deletion record) |
//! | `es-event-id` | the event id (a UUID, hyphenated): deduplicate on it |
//! | `es-stream` | the source stream |
//! | `es-revision` | the event's revision in that stream |
//! | `es-position` | its source `$all` position, `commit/prepare` |
//! | `es-content-type` | `application/json` or `application/octet-stream` |
//! | `es-created` | when the source created it, RFC 3339 UTC |
//! | `es-metadata` | the user metadata as stored (absent when empty) |
//! | a chosen key | `sink.metadataHeaders`: that top-level key of JSON metadata (a string as it is, anything else as JSON; absent when the metadata lacks it) |

use replicator_core::Event;

/// The event type header.
pub const EVENT_TYPE: &str = "es-event-type";
/// The event id header.
pub const EVENT_ID: &str = "es-event-id";
/// The source stream header.
pub const STREAM: &str = "es-stream";
/// The revision header.
pub const REVISION: &str = "es-revision";
/// The source position header.
pub const POSITION: &str = "es-position";
/// The content type header.
pub const CONTENT_TYPE: &str = "es-content-type";
/// The creation time header.
pub const CREATED: &str = "es-created";
/// The user metadata header.
pub const METADATA: &str = "es-metadata";

/// The headers of `event`'s record, with `metadata_keys` taken from its
/// JSON metadata.
pub fn of(event: &Event, metadata_keys: &[String]) -> Vec<(String, Vec<u8>)> {
    let mut headers = vec![
        (EVENT_TYPE.to_owned(), event.event_type.as_bytes().to_vec()),
        (EVENT_ID.to_owned(), event.id.to_string().into_bytes()),
        (STREAM.to_owned(), event.stream.as_bytes().to_vec()),
        (REVISION.to_owned(), event.revision.to_string().into_bytes()),
        (
            POSITION.to_owned(),
            format!("{}/{}", event.position.commit, event.position.prepare).into_bytes(),
        ),
        (
            CONTENT_TYPE.to_owned(),
            crate::content_type_name(event.content_type)
                .as_bytes()
                .to_vec(),
        ),
        (CREATED.to_owned(), rfc3339(event.created).into_bytes()),
    ];
    if event.kind != replicator_core::ChangeKind::Append {
        // A deletion record: its type says what it is.
        headers[0].1 = b"$streamDeleted".to_vec();
    }
    if !event.metadata.is_empty() {
        headers.push((METADATA.to_owned(), event.metadata.to_vec()));
        if !metadata_keys.is_empty() {
            if let Ok(serde_json::Value::Object(map)) =
                serde_json::from_slice::<serde_json::Value>(&event.metadata)
            {
                for key in metadata_keys {
                    match map.get(key) {
                        Some(serde_json::Value::String(s)) => {
                            headers.push((key.clone(), s.as_bytes().to_vec()));
                        }
                        Some(other) => headers.push((key.clone(), other.to_string().into_bytes())),
                        None => {}
                    }
                }
            }
        }
    }
    headers
}

/// `at` as RFC 3339 UTC with milliseconds (what a consumer's date parser
/// reads; the calendar is the `time` crate's); a time before 1970 as
/// 1970-01-01.
fn rfc3339(at: std::time::SystemTime) -> String {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let t = time::OffsetDateTime::UNIX_EPOCH
        .checked_add(since.try_into().unwrap_or_default())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(format)
        .expect("a UTC time after 1970 with a four-digit year formats")
}

#[cfg(test)]
mod tests {
    use super::*;
    use replicator_core::Position;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn every_header_and_the_chosen_metadata_keys() {
        let event = Event::new("orders-1", "Placed", r#"{"n":1}"#)
            .with_revision(7)
            .with_position(Position {
                commit: 200,
                prepare: 100,
            })
            .with_metadata(r#"{"tenant":"acme","n":3,"other":true}"#)
            .with_created(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        let h = of(&event, &["tenant".into(), "n".into(), "absent".into()]);
        let get = |k: &str| {
            h.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(get(EVENT_TYPE).as_deref(), Some("Placed"));
        assert_eq!(get(EVENT_ID), Some(event.id.to_string()));
        assert_eq!(get(STREAM).as_deref(), Some("orders-1"));
        assert_eq!(get(REVISION).as_deref(), Some("7"));
        assert_eq!(get(POSITION).as_deref(), Some("200/100"));
        assert_eq!(get(CONTENT_TYPE).as_deref(), Some("application/json"));
        assert_eq!(get(CREATED).as_deref(), Some("2023-11-14T22:13:20.123Z"));
        assert_eq!(
            get(METADATA).as_deref(),
            Some(r#"{"tenant":"acme","n":3,"other":true}"#)
        );
        assert_eq!(get("tenant").as_deref(), Some("acme"));
        assert_eq!(get("n").as_deref(), Some("3"));
        assert_eq!(get("absent"), None);
        assert_eq!(get("other"), None);
    }
}
