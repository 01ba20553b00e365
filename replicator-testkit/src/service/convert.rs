//! Conversions between the wire messages and the store's records.

use std::collections::HashMap;

use bytes::Bytes;
use tonic::Status;
use uuid::Uuid;

use crate::proto::shared::{self, StreamIdentifier};
use crate::proto::streams::read_resp;
use crate::store::{Proposed, Record};

pub(super) fn uuid_from_wire(uuid: Option<shared::Uuid>) -> Result<Uuid, Status> {
    use shared::uuid::Value;
    match uuid.and_then(|u| u.value) {
        Some(Value::Structured(s)) => {
            let high = u128::from(s.most_significant_bits as u64);
            let low = u128::from(s.least_significant_bits as u64);
            Ok(Uuid::from_u128((high << 64) | low))
        }
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| Status::invalid_argument(format!("event id {s:?} is not a UUID"))),
        None => Err(Status::invalid_argument("event id is missing")),
    }
}

pub(super) fn uuid_to_wire(uuid: Uuid, structured: bool) -> shared::Uuid {
    use shared::uuid::{Structured, Value};
    let value = if structured {
        let bits = uuid.as_u128();
        Value::Structured(Structured {
            most_significant_bits: (bits >> 64) as u64 as i64,
            least_significant_bits: bits as u64 as i64,
        })
    } else {
        Value::String(uuid.hyphenated().to_string())
    };
    shared::Uuid { value: Some(value) }
}

pub(super) fn stream_name(identifier: Option<StreamIdentifier>) -> Result<String, Status> {
    let identifier =
        identifier.ok_or_else(|| Status::invalid_argument("stream identifier is missing"))?;
    String::from_utf8(identifier.stream_name.to_vec())
        .map_err(|_| Status::invalid_argument("stream name is not UTF-8"))
}

pub(super) fn identifier(stream: &str) -> StreamIdentifier {
    StreamIdentifier {
        stream_name: Bytes::copy_from_slice(stream.as_bytes()),
    }
}

pub(super) fn proposed(
    id: Option<shared::Uuid>,
    metadata: HashMap<String, String>,
    custom_metadata: Bytes,
    data: Bytes,
) -> Result<Proposed, Status> {
    let id = uuid_from_wire(id)?;
    let required = |key: &str| {
        metadata.get(key).cloned().ok_or_else(|| {
            Status::invalid_argument(format!("required metadata property {key:?} is missing"))
        })
    };
    Ok(Proposed {
        id,
        event_type: required("type")?,
        content_type: required("content-type")?,
        data,
        custom_metadata,
    })
}

pub(super) fn recorded(record: &Record, structured: bool) -> read_resp::read_event::RecordedEvent {
    let metadata = HashMap::from([
        ("type".to_owned(), record.event_type.to_string()),
        ("content-type".to_owned(), record.content_type.to_string()),
        ("created".to_owned(), record.created_ticks.to_string()),
    ]);
    read_resp::read_event::RecordedEvent {
        id: Some(uuid_to_wire(record.id, structured)),
        stream_identifier: Some(identifier(&record.stream)),
        stream_revision: record.revision,
        prepare_position: record.prepare_position,
        commit_position: record.commit_position,
        metadata,
        custom_metadata: record.custom_metadata.clone(),
        data: record.data.clone(),
    }
}
