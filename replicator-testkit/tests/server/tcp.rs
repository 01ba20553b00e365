//! The legacy TCP protocol service, frame by frame, with a minimal client written
//! here (independent of the server's framing code); the node-eventstore-client
//! suite in `tests/conformance.rs` covers the same service through a real client.
//! Always in-process servers of their own (the protocol's facts and sources are in
//! docs/tcp-protocol.md).

use std::time::Duration;

use eventstore::{EventData, ReadStreamOptions};
use prost::Message;
use replicator_testkit::proto::tcp::{
    read_all_events_completed::ReadAllResult, NewEvent, OperationResult, ReadAllEvents,
    ReadAllEventsCompleted, ReadEvent, ReadEventCompleted, WriteEvents, WriteEventsCompleted,
};
use replicator_testkit::security::User;
use replicator_testkit::{EsdbServer, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use replicator_testkit::support::client;

/// An upper bound for an answer that should come at once: a hung server fails
/// the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(20);

const HEARTBEAT_REQUEST: u8 = 0x01;
const HEARTBEAT_RESPONSE: u8 = 0x02;
const PING: u8 = 0x03;
const PONG: u8 = 0x04;
const WRITE_EVENTS: u8 = 0x82;
const WRITE_EVENTS_COMPLETED: u8 = 0x83;
const TRANSACTION_START: u8 = 0x84;
const READ_EVENT: u8 = 0xB0;
const READ_EVENT_COMPLETED: u8 = 0xB1;
const READ_ALL_FORWARD: u8 = 0xB6;
const READ_ALL_BACKWARD: u8 = 0xB8;
const BAD_REQUEST: u8 = 0xF0;
const AUTHENTICATE: u8 = 0xF2;
const AUTHENTICATED: u8 = 0xF3;
const NOT_AUTHENTICATED: u8 = 0xF4;

struct Answer {
    command: u8,
    correlation: [u8; 16],
    body: Vec<u8>,
}

struct Raw(TcpStream);

impl Raw {
    async fn connect(server: &EsdbServer) -> Raw {
        let address = server.tcp_address().expect("the server has a TCP port");
        Raw(TcpStream::connect(address).await.expect("connect"))
    }

    async fn send(
        &mut self,
        command: u8,
        correlation: u8,
        credentials: Option<(&str, &str)>,
        body: &[u8],
    ) {
        let mut frame = vec![command, u8::from(credentials.is_some())];
        frame.extend([correlation; 16]);
        if let Some((login, password)) = credentials {
            for part in [login, password] {
                frame.push(part.len() as u8);
                frame.extend(part.as_bytes());
            }
        }
        frame.extend(body);
        let mut bytes = (frame.len() as u32).to_le_bytes().to_vec();
        bytes.extend(frame);
        self.0.write_all(&bytes).await.expect("send");
    }

    /// The next frame, `None` when the server closed the connection.
    async fn recv(&mut self) -> Option<Answer> {
        let read = async {
            let mut prefix = [0; 4];
            if self.0.read_exact(&mut prefix).await.is_err() {
                return None;
            }
            let mut data = vec![0; u32::from_le_bytes(prefix) as usize];
            self.0.read_exact(&mut data).await.expect("a whole frame");
            assert_eq!(data[1], 0, "server frames carry no flags");
            Some(Answer {
                command: data[0],
                correlation: data[2..18].try_into().unwrap(),
                body: data[18..].to_vec(),
            })
        };
        tokio::time::timeout(PATIENCE, read)
            .await
            .expect("an answer in time")
    }

    async fn call(
        &mut self,
        command: u8,
        correlation: u8,
        credentials: Option<(&str, &str)>,
        body: &[u8],
    ) -> Answer {
        self.send(command, correlation, credentials, body).await;
        let answer = self
            .recv()
            .await
            .expect("an answer, not a closed connection");
        assert_eq!(
            answer.correlation, [correlation; 16],
            "answers echo the correlation id"
        );
        answer
    }
}

async fn secure_tcp_server(heartbeat: Option<(Duration, Duration)>) -> EsdbServer {
    EsdbServer::start_with(ServerOptions {
        tcp_port: Some(0),
        users: Some(vec![User::admin()]),
        tcp_heartbeat_interval: heartbeat.map(|(interval, _)| interval),
        tcp_heartbeat_timeout: heartbeat.map(|(_, timeout)| timeout),
        ..ServerOptions::default()
    })
    .await
    .expect("server")
}

fn write(stream: &str, ids: &[uuid::Uuid]) -> Vec<u8> {
    WriteEvents {
        event_stream_id: stream.to_owned(),
        expected_version: -2,
        events: ids
            .iter()
            .map(|id| NewEvent {
                event_id: id.to_bytes_le().to_vec().into(),
                event_type: "T".to_owned(),
                data_content_type: 1,
                metadata_content_type: 0,
                data: b"{}".to_vec().into(),
                metadata: None,
            })
            .collect(),
        require_master: true,
    }
    .encode_to_vec()
}

const ADMIN: Option<(&str, &str)> = Some(("admin", "changeit"));

#[tokio::test]
async fn tcp_authentication_ping_heartbeats_and_bad_requests() {
    let server = secure_tcp_server(None).await;
    let mut raw = Raw::connect(&server).await;

    let refused = raw
        .call(AUTHENTICATE, 1, Some(("admin", "wrong")), &[])
        .await;
    assert_eq!(
        (refused.command, &refused.body[..]),
        (NOT_AUTHENTICATED, &b"Unauthorized"[..])
    );
    // v5 keeps the wrong login: frames without credentials are refused…
    let body = write("tcp-auth", &[uuid::Uuid::new_v4()]);
    let refused = raw.call(WRITE_EVENTS, 2, None, &body).await;
    assert_eq!(
        (refused.command, &refused.body[..]),
        (NOT_AUTHENTICATED, &b"Not Authenticated"[..])
    );
    // …while a frame's own credentials override the connection's.
    let written = raw.call(WRITE_EVENTS, 3, ADMIN, &body).await;
    assert_eq!(written.command, WRITE_EVENTS_COMPLETED);
    let completed = WriteEventsCompleted::decode(&written.body[..]).unwrap();
    assert_eq!(completed.result, OperationResult::Success as i32);
    assert_eq!(
        (completed.first_event_number, completed.last_event_number),
        (0, 0)
    );
    let accepted = raw.call(AUTHENTICATE, 4, ADMIN, &[]).await;
    assert_eq!(accepted.command, AUTHENTICATED);
    let again = raw
        .call(
            WRITE_EVENTS,
            5,
            None,
            &write("tcp-auth", &[uuid::Uuid::new_v4()]),
        )
        .await;
    let completed = WriteEventsCompleted::decode(&again.body[..]).unwrap();
    assert_eq!((completed.result, completed.last_event_number), (0, 1));

    let pong = raw.call(PING, 6, None, b"echo").await;
    assert_eq!((pong.command, &pong.body[..]), (PONG, &b"echo"[..]));
    let heartbeat = raw.call(HEARTBEAT_REQUEST, 7, None, &[]).await;
    assert_eq!(
        (heartbeat.command, heartbeat.body.len()),
        (HEARTBEAT_RESPONSE, 0)
    );

    // Per request: an unknown command, a transaction, an undecodable body.
    for (command, correlation) in [(0x77, 8), (TRANSACTION_START, 9), (READ_EVENT, 10)] {
        let body: &[u8] = if command == READ_EVENT {
            &[0xFF, 0xFF]
        } else {
            &[]
        };
        let bad = raw.call(command, correlation, None, body).await;
        assert_eq!(bad.command, BAD_REQUEST);
        let text = String::from_utf8(bad.body).unwrap();
        assert!(
            text.starts_with("Could not unwrap network package for command"),
            "{text}"
        );
    }
    assert_eq!(
        raw.call(PING, 11, None, b"").await.command,
        PONG,
        "still open"
    );

    // Connection-wide: a frame over 64 MiB → BadRequest with a zero id, then close.
    raw.0
        .write_all(&(64 * 1024 * 1024 + 1u32).to_le_bytes())
        .await
        .unwrap();
    let fatal = raw.recv().await.expect("a BadRequest before the close");
    assert_eq!((fatal.command, fatal.correlation), (BAD_REQUEST, [0; 16]));
    assert!(String::from_utf8(fatal.body)
        .unwrap()
        .contains("Package size is out of bounds: 67108865"));
    assert!(
        raw.recv().await.is_none(),
        "the server closes the connection"
    );
}

#[tokio::test]
async fn tcp_server_heartbeats_keep_answering_peers_and_drop_silent_ones() {
    // A short interval so that requests come quickly; a long timeout so that a
    // slow machine answering late does not look like a silent peer.
    let server =
        secure_tcp_server(Some((Duration::from_millis(100), Duration::from_secs(5)))).await;
    let mut raw = Raw::connect(&server).await;
    for _ in 0..3 {
        let request = raw.recv().await.expect("a heartbeat request, not a close");
        assert_eq!(request.command, HEARTBEAT_REQUEST);
        raw.send(HEARTBEAT_RESPONSE, request.correlation[0], None, &[])
            .await;
        // Our answer reuses the first byte only; the server accepts any frame.
    }
    // Now silent: the next request goes unanswered and the server closes.
    assert_eq!(raw.recv().await.map(|a| a.command), Some(HEARTBEAT_REQUEST));
    assert!(raw.recv().await.is_none(), "a silent connection is closed");
}

#[tokio::test]
async fn tcp_and_grpc_share_the_store_with_ids_in_dotnet_order() {
    let server = EsdbServer::start_with(ServerOptions {
        tcp_port: Some(0),
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    let client = client(&server.connection_string());
    let id = uuid::Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap();
    let event = EventData::json("T", &serde_json::json!({"a": 1}))
        .unwrap()
        .id(id);
    client
        .append_to_stream("shared", &Default::default(), event)
        .await
        .unwrap();

    let mut raw = Raw::connect(&server).await;
    let request = ReadEvent {
        event_stream_id: "shared".to_owned(),
        event_number: 0,
        resolve_link_tos: false,
        require_master: true,
    };
    let answer = raw
        .call(READ_EVENT, 1, None, &request.encode_to_vec())
        .await;
    assert_eq!(answer.command, READ_EVENT_COMPLETED);
    let read = ReadEventCompleted::decode(&answer.body[..]).unwrap();
    let record = read.event.event.expect("the event");
    assert_eq!(
        &record.event_id[..],
        &[
            0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff
        ]
    );
    assert_eq!(
        (record.data_content_type, record.metadata_content_type),
        (1, 1)
    );
    let epoch = record.created_epoch.expect("created_epoch");
    let created = record.created.expect("created");
    assert_eq!(created >> 62, 1, "created is a UTC DateTime.ToBinary()");
    let ticks = created & !(3 << 62);
    assert_eq!((ticks - 621_355_968_000_000_000) / 10_000, epoch);

    // Written through TCP, read through gRPC: the same id.
    let second = uuid::Uuid::new_v4();
    let written = raw
        .call(WRITE_EVENTS, 2, None, &write("shared", &[second]))
        .await;
    assert_eq!(
        WriteEventsCompleted::decode(&written.body[..])
            .unwrap()
            .last_event_number,
        1
    );
    let mut stream = client
        .read_stream(
            "shared",
            &ReadStreamOptions::default().position(eventstore::StreamPosition::Position(1)),
        )
        .await
        .unwrap();
    let event = stream.next().await.unwrap().expect("the TCP-written event");
    assert_eq!(event.get_original_event().id, second);
}

fn read_all(commit: i64, prepare: i64, max_count: i32) -> Vec<u8> {
    ReadAllEvents {
        commit_position: commit,
        prepare_position: prepare,
        max_count,
        resolve_link_tos: false,
        require_master: true,
    }
    .encode_to_vec()
}

#[tokio::test]
async fn tcp_all_pages_follow_v5_positions() {
    let server = EsdbServer::start_with(ServerOptions {
        tcp_port: Some(0),
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    let mut raw = Raw::connect(&server).await;
    let ids = [
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    ];
    raw.call(WRITE_EVENTS, 1, None, &write("paged", &ids)).await;
    let page = |answer: Answer| ReadAllEventsCompleted::decode(&answer.body[..]).unwrap();
    let positions = |p: &ReadAllEventsCompleted| -> Vec<i64> {
        p.events
            .iter()
            .map(|e| {
                assert_eq!(e.commit_position, e.prepare_position, "commit-alike");
                e.commit_position
            })
            .collect()
    };

    let first = page(
        raw.call(READ_ALL_FORWARD, 2, None, &read_all(0, 0, 2))
            .await,
    );
    let p = positions(&first);
    assert_eq!(p.len(), 2);
    // After a commit-alike event: (its end, 0), the next event's own position.
    let second = page(
        raw.call(
            READ_ALL_FORWARD,
            3,
            None,
            &read_all(first.next_commit_position, first.next_prepare_position, 2),
        )
        .await,
    );
    assert_eq!(first.next_prepare_position, 0);
    let p3 = positions(&second);
    assert_eq!(p3.len(), 1);
    assert_eq!(first.next_commit_position, p3[0]);
    let end = page(
        raw.call(
            READ_ALL_FORWARD,
            4,
            None,
            &read_all(second.next_commit_position, 0, 2),
        )
        .await,
    );
    assert!(end.events.is_empty(), "an empty page is the end of $all");
    assert_eq!(
        (end.next_commit_position, end.next_prepare_position),
        (second.next_commit_position, 0)
    );
    // The start is inclusive, commit first: (P, P+1) skips the event at P.
    let skip = page(
        raw.call(READ_ALL_FORWARD, 5, None, &read_all(p[1], p[1] + 1, 5))
            .await,
    );
    assert_eq!(positions(&skip), p3);
    let head = page(
        raw.call(READ_ALL_FORWARD, 6, None, &read_all(-1, -1, 5))
            .await,
    );
    assert!(head.events.is_empty());

    let newest = page(
        raw.call(READ_ALL_BACKWARD, 7, None, &read_all(-1, -1, 2))
            .await,
    );
    assert_eq!(positions(&newest), vec![p3[0], p[1]]);
    assert_eq!(
        (newest.next_commit_position, newest.next_prepare_position),
        (p[1], p[1])
    );
    let oldest = page(
        raw.call(READ_ALL_BACKWARD, 8, None, &read_all(p[1], p[1], 2))
            .await,
    );
    assert_eq!(positions(&oldest), vec![p[0]]);

    let invalid = page(
        raw.call(READ_ALL_FORWARD, 9, None, &read_all(-5, 0, 2))
            .await,
    );
    assert_eq!(invalid.result, Some(ReadAllResult::Error as i32));
    assert_eq!(invalid.error.as_deref(), Some("Invalid position."));
    let too_big = page(
        raw.call(READ_ALL_FORWARD, 10, None, &read_all(0, 0, 4097))
            .await,
    );
    assert_eq!(too_big.result, Some(ReadAllResult::Error as i32));
}

#[tokio::test]
async fn tcp_connections_end_with_dropped_connections_and_the_port_survives_restarts() {
    let server = secure_tcp_server(None).await;
    let address = server.tcp_address();
    let mut raw = Raw::connect(&server).await;
    let body = write("kept", &[uuid::Uuid::new_v4()]);
    assert_eq!(
        raw.call(WRITE_EVENTS, 1, ADMIN, &body).await.command,
        WRITE_EVENTS_COMPLETED
    );
    server.faults().drop_connections();
    assert!(
        raw.recv().await.is_none(),
        "dropped connections close TCP ones too"
    );

    server.restart().await.expect("restart");
    assert_eq!(server.tcp_address(), address);
    let mut raw = Raw::connect(&server).await;
    let request = ReadEvent {
        event_stream_id: "kept".to_owned(),
        event_number: -1,
        resolve_link_tos: false,
        require_master: true,
    };
    let answer = raw
        .call(READ_EVENT, 2, ADMIN, &request.encode_to_vec())
        .await;
    let read = ReadEventCompleted::decode(&answer.body[..]).unwrap();
    assert_eq!(
        read.result, 0,
        "the event written before the restart is there"
    );
}
