//! The failures as the real server answers them (see the [module docs](super)):
//! gRPC statuses with their headers, and the `google.rpc.Status` of a failed
//! batch append.

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::proto::google::rpc::Status as RpcStatus;
use crate::proto::streams::batch_append_resp;
use crate::store::Expected;

fn status_with(code: Code, message: String, pairs: &[(&'static str, String)]) -> Status {
    let mut metadata = MetadataMap::new();
    for (key, value) in pairs {
        // Values that are not visible ASCII (unicode stream names) cannot travel as
        // headers; the client never needs them.
        if let Ok(value) = MetadataValue::try_from(value.as_str()) {
            metadata.insert(*key, value);
        }
    }
    Status::with_metadata(code, message, metadata)
}

/// `message` packed as a `google.protobuf.Any` as .NET's `Any.Pack` does.
fn pack_detail(name: &str, message: &impl prost::Message) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/event_store.client.{name}"),
        value: message.encode_to_vec(),
    }
}

/// The error of one failed batch append, as the real server builds it: the
/// `google.rpc.Status` message is the detail's type name, the code depends on it.
pub(super) fn batch_error(
    code: Code,
    name: &str,
    detail: &impl prost::Message,
) -> batch_append_resp::Result {
    batch_append_resp::Result::Error(RpcStatus {
        code: code as i32,
        message: name.to_owned(),
        details: Some(pack_detail(name, detail)),
    })
}

pub(super) fn max_append_size_exceeded(max: usize) -> Status {
    status_with(
        Code::InvalidArgument,
        format!("Maximum Append Size of {max} Exceeded."),
        &[
            ("exception", "maximum-append-size-exceeded".to_owned()),
            ("maximum-append-size", max.to_string()),
        ],
    )
}

pub(super) fn access_denied() -> Status {
    status_with(
        Code::PermissionDenied,
        "Access Denied".to_owned(),
        &[("exception", "access-denied".to_owned())],
    )
}

pub(super) fn stream_deleted(stream: &str) -> Status {
    status_with(
        Code::FailedPrecondition,
        format!("Event stream '{stream}' is deleted."),
        &[
            ("exception", "stream-deleted".to_owned()),
            ("stream-name", stream.to_owned()),
        ],
    )
}

/// A failed delete or tombstone (`operation` is `Delete` for both on the real
/// server); the Python client parses this message.
pub(super) fn wrong_expected_status(
    operation: &str,
    stream: &str,
    current: Option<u64>,
    expected: Expected,
) -> Status {
    let current_text = current.map_or_else(|| "-1".to_owned(), |c| c.to_string());
    let expected_text = match expected {
        Expected::Any => "-2".to_owned(),
        Expected::NoStream => "-1".to_owned(),
        Expected::StreamExists => "-4".to_owned(),
        Expected::Exact(r) => r.to_string(),
    };
    status_with(
        Code::FailedPrecondition,
        format!(
            "{operation} failed due to WrongExpectedVersion. Stream: {stream}, Expected version: {expected_text}, Actual version: {current_text}"
        ),
        &[
            ("exception", "wrong-expected-version".to_owned()),
            ("stream-name", stream.to_owned()),
            ("expected-version", expected_text),
            ("actual-version", current_text),
        ],
    )
}

pub(super) fn injected_unavailable() -> Status {
    Status::unavailable("Server unavailable (injected fault)")
}

pub(super) fn shutting_down() -> Status {
    Status::unavailable("Server is shutting down or dropped the connection")
}
