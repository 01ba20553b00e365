//! What a record read from the source `$all` means for the target, and its
//! conversion into the pipeline's [`Event`].

use std::time::SystemTime;

use replicator_core::{ChangeKind, ContentType, Event, Position, SkipReason};

use crate::cluster::ClientPosition as _;

/// Event type of a stream-metadata record (in the `$$stream` metadata stream).
pub const METADATA_EVENT_TYPE: &str = "$metadata";
/// Event type of a tombstone record, written by a hard delete.
pub const TOMBSTONE_EVENT_TYPE: &str = "$streamDeleted";
/// Event type of a link event.
pub const LINK_EVENT_TYPE: &str = "$>";
/// The `$tb` (truncate before) value the server writes for a soft delete:
/// `i64::MAX`, "truncate everything".
pub const SOFT_DELETE_TRUNCATE_BEFORE: u64 = i64::MAX as u64;

/// Decides what a source record means for the target, from its stream, event
/// type and data alone.
///
/// The rules, in order:
/// - a link event (`$>`) is skipped: the event it points at is replicated on
///   its own;
/// - a `$metadata` record of `$$stream` is the stream's metadata; when its `$tb`
///   is [`SOFT_DELETE_TRUNCATE_BEFORE`] it is a soft delete (that is how the
///   server records one). Metadata of `$`-prefixed system streams
///   (`$$$settings`…) is skipped, as are other records in a `$$` stream;
/// - any other record of a `$`-prefixed stream is skipped;
/// - a `$streamDeleted` record is a tombstone;
/// - any other `$`-prefixed event type is skipped;
/// - everything else is appended, whatever its data (empty data is valid).
pub fn classify(stream: &str, event_type: &str, data: &[u8]) -> ChangeKind {
    if event_type == LINK_EVENT_TYPE {
        return ChangeKind::Skip(SkipReason::Link);
    }
    if let Some(target) = stream.strip_prefix("$$") {
        if target.is_empty() || target.starts_with('$') {
            return ChangeKind::Skip(SkipReason::SystemStream);
        }
        if event_type != METADATA_EVENT_TYPE {
            return ChangeKind::Skip(SkipReason::SystemEvent);
        }
        return if is_soft_delete(data) {
            ChangeKind::SoftDelete
        } else {
            ChangeKind::StreamMetadata
        };
    }
    if stream.starts_with('$') {
        return ChangeKind::Skip(SkipReason::SystemStream);
    }
    if event_type == TOMBSTONE_EVENT_TYPE {
        return ChangeKind::Tombstone;
    }
    if event_type.starts_with('$') {
        return ChangeKind::Skip(SkipReason::SystemEvent);
    }
    ChangeKind::Append
}

/// Whether a metadata document marks its stream as soft-deleted: a JSON object
/// whose `$tb` is `i64::MAX`. Other properties may sit beside it (the server
/// keeps the stream's existing metadata when it soft-deletes).
fn is_soft_delete(data: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct TruncateBefore {
        #[serde(rename = "$tb")]
        tb: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<TruncateBefore>(data) {
        Ok(TruncateBefore { tb: Some(tb) }) => tb.as_u64() == Some(SOFT_DELETE_TRUNCATE_BEFORE),
        _ => false,
    }
}

/// Converts a record read from the source into an [`Event`], classifying it.
///
/// The record's own position is used, never the subscription's or the read's.
pub fn to_event(record: eventstore::RecordedEvent) -> Event {
    let kind = classify(&record.stream_id, &record.event_type, &record.data);
    Event {
        id: record.id,
        kind,
        revision: record.revision,
        content_type: if record.is_json {
            ContentType::Json
        } else {
            ContentType::Binary
        },
        created: SystemTime::from(record.created),
        position: Position::from_client(record.position),
        stream: record.stream_id,
        event_type: record.event_type,
        data: record.data,
        metadata: record.custom_metadata,
        more_in_commit: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_events_are_appended_whatever_their_data() {
        assert_eq!(
            classify("orders-1", "OrderPlaced", b"{}"),
            ChangeKind::Append
        );
        assert_eq!(classify("orders-1", "OrderPlaced", b""), ChangeKind::Append);
        assert_eq!(classify("orders-1", "x", b"\xff\x00"), ChangeKind::Append);
    }

    #[test]
    fn metadata_records_set_metadata_and_a_max_truncate_before_is_a_soft_delete() {
        assert_eq!(
            classify("$$orders-1", "$metadata", br#"{"$maxCount":10}"#),
            ChangeKind::StreamMetadata
        );
        assert_eq!(
            classify("$$orders-1", "$metadata", br#"{"$tb":9223372036854775807}"#),
            ChangeKind::SoftDelete
        );
        assert_eq!(
            classify(
                "$$orders-1",
                "$metadata",
                br#"{"$maxAge":60, "$tb": 9223372036854775807, "custom":1}"#
            ),
            ChangeKind::SoftDelete
        );
        // The server writes `$tb` = next revision when a soft-deleted stream is
        // appended to again: that revives it, it is plain metadata.
        assert_eq!(
            classify("$$orders-1", "$metadata", br#"{"$tb":3}"#),
            ChangeKind::StreamMetadata
        );
        // Unusual metadata must not derail classification.
        assert_eq!(
            classify("$$orders-1", "$metadata", b""),
            ChangeKind::StreamMetadata
        );
        assert_eq!(
            classify("$$orders-1", "$metadata", br#"{"$tb":"soon"}"#),
            ChangeKind::StreamMetadata
        );
        assert_eq!(
            classify("$$orders-1", "$metadata", b"[1,2]"),
            ChangeKind::StreamMetadata
        );
    }

    #[test]
    fn tombstones_are_recognised() {
        assert_eq!(
            classify("orders-1", "$streamDeleted", b""),
            ChangeKind::Tombstone
        );
    }

    #[test]
    fn system_streams_system_events_and_links_are_skipped() {
        assert_eq!(
            classify("$stats-127.0.0.1:2113", "$statsCollected", b"{}"),
            ChangeKind::Skip(SkipReason::SystemStream)
        );
        assert_eq!(
            classify("$ce-orders", "OrderPlaced", b"{}"),
            ChangeKind::Skip(SkipReason::SystemStream)
        );
        assert_eq!(
            classify("$$$settings", "$metadata", b"{}"),
            ChangeKind::Skip(SkipReason::SystemStream)
        );
        assert_eq!(
            classify("$$orders-1", "SomethingElse", b"{}"),
            ChangeKind::Skip(SkipReason::SystemEvent)
        );
        assert_eq!(
            classify("orders-1", "$>", b"0@orders-2"),
            ChangeKind::Skip(SkipReason::Link)
        );
        assert_eq!(
            classify("$ce-orders", "$>", b"0@orders-2"),
            ChangeKind::Skip(SkipReason::Link)
        );
        assert_eq!(
            classify("orders-1", "$scavengeStarted", b"{}"),
            ChangeKind::Skip(SkipReason::SystemEvent)
        );
        assert_eq!(
            classify("$streamDeletedElsewhere", "$streamDeleted", b""),
            ChangeKind::Skip(SkipReason::SystemStream)
        );
    }
}
