//! What the `eventstore` client drops or skips but other clients read, checked on
//! the wire with the testkit's own generated gRPC client: the typed
//! `google.rpc.Status.details` of failed batch appends (code, message, type URL,
//! message), the `exception` headers of failed unary calls, and the
//! `last_stream_position` ending a stream read for clients that ask for it.
//! In-process only (plain HTTP/2 to the testkit); the Python conformance suite
//! checks the error details against a real server (`ESDB_URL`).

use prost::Message as _;
use replicator_testkit::proto::shared::{self, wrong_expected_version as wev};
use replicator_testkit::proto::streams::{
    batch_append_req, batch_append_resp, delete_req, read_req, read_resp,
    streams_client::StreamsClient, BatchAppendReq, BatchAppendResp, DeleteReq, ReadReq,
};
use replicator_testkit::EsdbServer;
use tonic::transport::Channel;

async fn connect(server: &EsdbServer) -> StreamsClient<Channel> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", server.port()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    StreamsClient::new(channel)
}

fn wire_uuid() -> shared::Uuid {
    shared::Uuid {
        value: Some(shared::uuid::Value::String(
            uuid::Uuid::new_v4().to_string(),
        )),
    }
}

fn stream_id(name: &str) -> shared::StreamIdentifier {
    shared::StreamIdentifier {
        stream_name: name.as_bytes().to_vec().into(),
    }
}

fn proposed(data_len: usize) -> batch_append_req::ProposedMessage {
    batch_append_req::ProposedMessage {
        id: Some(wire_uuid()),
        metadata: [
            ("type".to_owned(), "E".to_owned()),
            (
                "content-type".to_owned(),
                "application/octet-stream".to_owned(),
            ),
        ]
        .into(),
        custom_metadata: Default::default(),
        data: vec![1u8; data_len].into(),
    }
}

/// One batch append (one request per entry of `chunks`, the last final) and its
/// reply.
async fn batch_append(
    client: &mut StreamsClient<Channel>,
    stream: &str,
    expected: batch_append_req::options::ExpectedStreamPosition,
    chunks: Vec<Vec<batch_append_req::ProposedMessage>>,
) -> BatchAppendResp {
    let id = wire_uuid();
    let last = chunks.len() - 1;
    let requests: Vec<BatchAppendReq> = chunks
        .into_iter()
        .enumerate()
        .map(|(i, proposed_messages)| BatchAppendReq {
            correlation_id: Some(id.clone()),
            options: (i == 0).then(|| batch_append_req::Options {
                stream_identifier: Some(stream_id(stream)),
                expected_stream_position: Some(expected),
                deadline_option: None,
            }),
            proposed_messages,
            is_final: i == last,
        })
        .collect();
    let mut replies = client
        .batch_append(tokio_stream::iter(requests))
        .await
        .expect("batch append call")
        .into_inner();
    replies.message().await.expect("reply").expect("one reply")
}

fn error_of(reply: BatchAppendResp) -> (tonic::Code, String, String, Vec<u8>) {
    match reply.result {
        Some(batch_append_resp::Result::Error(status)) => {
            let details = status.details.expect("typed details");
            (
                tonic::Code::from(status.code),
                status.message,
                details.type_url,
                details.value,
            )
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn failed_batch_appends_carry_typed_details() {
    use batch_append_req::options::ExpectedStreamPosition as E;
    let server = EsdbServer::start().await.expect("server");
    let mut client = connect(&server).await;

    let reply = batch_append(
        &mut client,
        "s",
        E::StreamPosition(4),
        vec![vec![proposed(1)]],
    )
    .await;
    let (code, message, url, value) = error_of(reply);
    assert_eq!(
        (code, message.as_str(), url.as_str()),
        (
            tonic::Code::AlreadyExists,
            "WrongExpectedVersion",
            "type.googleapis.com/event_store.client.WrongExpectedVersion"
        )
    );
    let detail = shared::WrongExpectedVersion::decode(value.as_slice()).expect("decode");
    assert_eq!(
        detail.current_stream_revision_option,
        Some(wev::CurrentStreamRevisionOption::CurrentNoStream(()))
    );
    assert_eq!(
        detail.expected_stream_position_option,
        Some(wev::ExpectedStreamPositionOption::ExpectedStreamPosition(4))
    );

    // Too large, over two requests of one batch: answered with the limit at the
    // request that crosses it; the final request is then ignored.
    let half = 600 * 1024;
    let reply = batch_append(
        &mut client,
        "big",
        E::Any(()),
        vec![
            vec![proposed(half)],
            vec![proposed(half)],
            vec![proposed(1)],
        ],
    )
    .await;
    let (code, message, url, value) = error_of(reply);
    assert_eq!(
        (code, message.as_str(), url.as_str()),
        (
            tonic::Code::InvalidArgument,
            "MaximumAppendSizeExceeded",
            "type.googleapis.com/event_store.client.MaximumAppendSizeExceeded"
        )
    );
    let detail = shared::MaximumAppendSizeExceeded::decode(value.as_slice()).expect("decode");
    assert_eq!(detail.max_append_size, 1024 * 1024);

    // Tombstoned.
    let reply = batch_append(&mut client, "t", E::NoStream(()), vec![vec![proposed(1)]]).await;
    assert!(matches!(
        reply.result,
        Some(batch_append_resp::Result::Success(_))
    ));
    server_tombstone(&server, "t").await;
    let reply = batch_append(&mut client, "t", E::Any(()), vec![vec![proposed(1)]]).await;
    let (code, message, url, value) = error_of(reply);
    assert_eq!(
        (code, message.as_str(), url.as_str()),
        (
            tonic::Code::NotFound,
            "StreamDeleted",
            "type.googleapis.com/event_store.client.StreamDeleted"
        )
    );
    let detail = shared::StreamDeleted::decode(value.as_slice()).expect("decode");
    assert_eq!(detail.stream_identifier, Some(stream_id("t")));
}

#[tokio::test]
async fn a_batch_whose_deadline_is_over_times_out_at_once() {
    use batch_append_req::options::ExpectedStreamPosition as E;
    let server = EsdbServer::start().await.expect("server");
    let mut client = connect(&server).await;
    let id = wire_uuid();
    let request = BatchAppendReq {
        correlation_id: Some(id.clone()),
        options: Some(batch_append_req::Options {
            stream_identifier: Some(stream_id("late")),
            expected_stream_position: Some(E::Any(())),
            deadline_option: Some(batch_append_req::options::DeadlineOption::Deadline(
                prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                },
            )),
        }),
        proposed_messages: vec![proposed(1)],
        is_final: true,
    };
    let reply = client
        .batch_append(tokio_stream::iter(vec![request]))
        .await
        .expect("call")
        .into_inner()
        .message()
        .await
        .expect("reply")
        .expect("one reply");
    assert_eq!(reply.correlation_id, Some(id));
    let (code, message, url, _) = error_of(reply);
    assert_eq!(
        (code, message.as_str(), url.as_str()),
        (
            tonic::Code::DeadlineExceeded,
            "Timeout",
            "type.googleapis.com/event_store.client.Timeout"
        )
    );
}

async fn server_tombstone(server: &EsdbServer, stream: &str) {
    let client = replicator_testkit::support::client(&server.connection_string());
    client
        .tombstone_stream(stream, &Default::default())
        .await
        .expect("tombstone");
}

#[tokio::test]
async fn failed_deletes_name_the_operation_and_carry_exception_headers() {
    let server = EsdbServer::start().await.expect("server");
    let mut client = connect(&server).await;
    let status = client
        .delete(DeleteReq {
            options: Some(delete_req::Options {
                stream_identifier: Some(stream_id("never")),
                expected_stream_revision: Some(
                    delete_req::options::ExpectedStreamRevision::Revision(3),
                ),
            }),
        })
        .await
        .expect_err("wrong expected version");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "Delete failed due to WrongExpectedVersion. Stream: never, Expected version: 3, Actual version: -1"
    );
    let header = |key: &str| {
        status
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(
        header("exception").as_deref(),
        Some("wrong-expected-version")
    );
    assert_eq!(header("stream-name").as_deref(), Some("never"));
    assert_eq!(header("expected-version").as_deref(), Some("3"));
    assert_eq!(header("actual-version").as_deref(), Some("-1"));
}

/// The contents of a forward count read of `stream` asking for `compatibility`.
async fn read_contents(
    client: &mut StreamsClient<Channel>,
    stream: &str,
    compatibility: u32,
) -> Vec<read_resp::Content> {
    use read_req::options::{self, stream_options::RevisionOption, CountOption, StreamOption};
    let request = ReadReq {
        options: Some(read_req::Options {
            stream_option: Some(StreamOption::Stream(options::StreamOptions {
                stream_identifier: Some(stream_id(stream)),
                revision_option: Some(RevisionOption::Start(())),
            })),
            read_direction: options::ReadDirection::Forwards as i32,
            resolve_links: false,
            count_option: Some(CountOption::Count(100)),
            filter_option: Some(options::FilterOption::NoFilter(())),
            uuid_option: Some(options::UuidOption {
                content: Some(options::uuid_option::Content::String(())),
            }),
            control_option: Some(options::ControlOption { compatibility }),
        }),
    };
    let mut replies = client.read(request).await.expect("read").into_inner();
    let mut contents = Vec::new();
    while let Some(reply) = replies.message().await.expect("reply") {
        contents.push(reply.content.expect("content"));
    }
    contents
}

#[tokio::test]
async fn a_stream_read_ends_with_the_last_revision_when_asked() {
    use batch_append_req::options::ExpectedStreamPosition as E;
    let server = EsdbServer::start().await.expect("server");
    let mut client = connect(&server).await;
    let reply = batch_append(
        &mut client,
        "s",
        E::NoStream(()),
        vec![vec![proposed(1), proposed(1), proposed(1)]],
    )
    .await;
    assert!(matches!(
        reply.result,
        Some(batch_append_resp::Result::Success(_))
    ));

    let asked = read_contents(&mut client, "s", 1).await;
    assert_eq!(asked.len(), 4, "{asked:?}");
    assert!(asked[..3]
        .iter()
        .all(|c| matches!(c, read_resp::Content::Event(_))));
    assert_eq!(asked[3], read_resp::Content::LastStreamPosition(2));

    let plain = read_contents(&mut client, "s", 0).await;
    assert_eq!(plain.len(), 3);
    assert!(plain
        .iter()
        .all(|c| matches!(c, read_resp::Content::Event(_))));

    // A missing stream is one `stream_not_found`, nothing after it.
    let missing = read_contents(&mut client, "missing", 1).await;
    assert!(
        matches!(missing.as_slice(), [read_resp::Content::StreamNotFound(_)]),
        "{missing:?}"
    );
}
