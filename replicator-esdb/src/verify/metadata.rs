//! A stream's metadata on one side: the latest record, and the latest within
//! `until`.

use bytes::Bytes;
use eventstore::{Client, ReadStreamOptions, StreamPosition};
use futures::TryFutureExt as _;
use replicator_core::{ChangeKind, Position};

use super::{settle, VerifyError, VerifyOptions};
use crate::classify::{classify, METADATA_EVENT_TYPE};
use crate::cluster::{within, ClientPosition as _, RequestError, TARGET};

/// The latest stream metadata of a side: at the end, and the latest one
/// within `until` (they differ while metadata is in flight).
#[derive(Debug, Default)]
pub(super) struct Metadata {
    pub(super) latest: Option<MetadataBody>,
    pub(super) latest_covered: Option<MetadataBody>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum MetadataBody {
    Json(serde_json::Value),
    Raw(Bytes),
}

impl MetadataBody {
    fn parse(data: &Bytes) -> Self {
        match serde_json::from_slice(data) {
            Ok(value) => MetadataBody::Json(value),
            Err(_) => MetadataBody::Raw(data.clone()),
        }
    }

    pub(super) fn is_soft_delete(&self) -> bool {
        match self {
            MetadataBody::Json(value) => {
                let data = serde_json::to_vec(value).unwrap_or_default();
                classify("$$x", METADATA_EVENT_TYPE, &data) == ChangeKind::SoftDelete
            }
            MetadataBody::Raw(_) => false,
        }
    }
}

pub(super) fn show_metadata(metadata: Option<&MetadataBody>) -> String {
    match metadata {
        None => "none".to_owned(),
        Some(MetadataBody::Json(value)) => value.to_string(),
        Some(MetadataBody::Raw(bytes)) => format!("{} raw bytes", bytes.len()),
    }
}

/// Metadata records read backwards at most, looking for the latest one within `until`.
const METADATA_LOOKBACK: usize = 100;

pub(super) async fn read_metadata(
    client: &Client,
    side: &'static str,
    stream: &str,
    options: &VerifyOptions,
) -> Result<Metadata, VerifyError> {
    let metastream = format!("$${stream}");
    let read_options = ReadStreamOptions::default()
        .backwards()
        .position(StreamPosition::End)
        .max_count(METADATA_LOOKBACK);
    let operation = || format!("reading the metadata of {stream:?}");
    let timeout = options.request_timeout;
    let mut metadata = Metadata::default();
    let mut reader = match within(
        timeout,
        client
            .read_stream(metastream.as_str(), &read_options)
            .err_into(),
    )
    .await
    {
        Err(RequestError::Failed(
            eventstore::Error::ResourceNotFound | eventstore::Error::ResourceDeleted,
        )) => return Ok(metadata),
        outcome => settle(side, operation, outcome)?,
    };
    loop {
        let next = match within(timeout, reader.next().err_into()).await {
            Err(RequestError::Failed(
                eventstore::Error::ResourceNotFound | eventstore::Error::ResourceDeleted,
            )) => return Ok(metadata),
            outcome => settle(side, operation, outcome)?,
        };
        let Some(resolved) = next else {
            return Ok(metadata);
        };
        let record = resolved.get_original_event();
        if record.event_type != METADATA_EVENT_TYPE {
            continue;
        }
        let body = MetadataBody::parse(&record.data);
        let position = Position::from_client(record.position);
        if metadata.latest.is_none() {
            metadata.latest = Some(body.clone());
        }
        if side == TARGET || options.until.covers(position) {
            metadata.latest_covered = Some(body);
            return Ok(metadata);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_deletes_are_recognised_in_parsed_metadata() {
        let soft = MetadataBody::parse(&Bytes::from_static(br#"{"$tb":9223372036854775807}"#));
        assert!(soft.is_soft_delete());
        let plain = MetadataBody::parse(&Bytes::from_static(br#"{"$maxCount":3}"#));
        assert!(!plain.is_soft_delete());
        assert!(!MetadataBody::parse(&Bytes::from_static(b"\xff")).is_soft_delete());
    }
}
