//! A stream's metadata on one side: the latest record, and the latest within
//! `until`.

use bytes::Bytes;
use replicator_core::ChangeKind;

use super::{settle, VerifyError, VerifyOptions};
use crate::classify::{classify, METADATA_EVENT_TYPE};
use crate::cluster::{next_within, ClusterRead, Direction, ReadError, StreamFrom, TARGET};

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

/// The metadata of `stream` on `side`. `covered` says which records of its
/// metadata stream `until` covers (on the target: all of them).
pub(super) async fn read_metadata<C: ClusterRead>(
    client: &C,
    side: &'static str,
    stream: &str,
    covered: impl Fn(u64) -> bool,
    options: &VerifyOptions,
) -> Result<Metadata, VerifyError> {
    let metastream = format!("$${stream}");
    let operation = || format!("reading the metadata of {stream:?}");
    let timeout = options.request_timeout;
    let mut metadata = Metadata::default();
    let mut records = client.stream_records(
        &metastream,
        StreamFrom::End,
        Direction::Backwards,
        METADATA_LOOKBACK,
    );
    loop {
        let next = match next_within(timeout, &mut records).await {
            Err(ReadError::NotFound | ReadError::Deleted) => return Ok(metadata),
            outcome => settle(side, operation, outcome)?,
        };
        let Some(record) = next else {
            return Ok(metadata);
        };
        if record.event_type != METADATA_EVENT_TYPE {
            continue;
        }
        let body = MetadataBody::parse(&record.data);
        if metadata.latest.is_none() {
            metadata.latest = Some(body.clone());
        }
        if side == TARGET || covered(record.revision) {
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
