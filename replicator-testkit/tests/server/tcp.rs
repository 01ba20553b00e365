//! The legacy TCP protocol service, frame by frame, with a minimal client written
//! here (independent of the server's framing code); the node-eventstore-client
//! suite in `tests/conformance.rs` covers the same service through a real client.
//! Always in-process servers of their own (the protocol's facts and sources are in
//! docs/tcp-protocol.md).

use std::time::Duration;

use eventstore::{
    EventData, Position, ReadAllOptions, ReadStreamOptions, StreamPosition, SubscribeToAllOptions,
};
use prost::Message;
use replicator_testkit::proto::tcp::{
    not_handled::{MasterInfo, NotHandledReason},
    read_all_events_completed::ReadAllResult,
    NewEvent, NotHandled, OperationResult, ReadAllEvents, ReadAllEventsCompleted, ReadEvent,
    ReadEventCompleted, StreamEventAppeared, SubscribeToStream, SubscriptionConfirmation,
    TransactionCommit, TransactionCommitCompleted, TransactionStart, TransactionStartCompleted,
    TransactionWrite, TransactionWriteCompleted, WriteEvents, WriteEventsCompleted,
};
use replicator_testkit::security::User;
use replicator_testkit::{EsdbServer, NodeState, Role, ServerOptions};
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
const TRANSACTION_START_COMPLETED: u8 = 0x85;
const TRANSACTION_WRITE: u8 = 0x86;
const TRANSACTION_WRITE_COMPLETED: u8 = 0x87;
const TRANSACTION_COMMIT: u8 = 0x88;
const TRANSACTION_COMMIT_COMPLETED: u8 = 0x89;
const READ_EVENT: u8 = 0xB0;
const READ_EVENT_COMPLETED: u8 = 0xB1;
const READ_ALL_FORWARD: u8 = 0xB6;
const READ_ALL_BACKWARD: u8 = 0xB8;
const SUBSCRIBE_TO_STREAM: u8 = 0xC0;
const SUBSCRIPTION_CONFIRMATION: u8 = 0xC1;
const STREAM_EVENT_APPEARED: u8 = 0xC2;
const BAD_REQUEST: u8 = 0xF0;
const NOT_HANDLED: u8 = 0xF1;
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

fn new_events(ids: &[uuid::Uuid]) -> Vec<NewEvent> {
    ids.iter()
        .map(|id| NewEvent {
            event_id: id.to_bytes_le().to_vec().into(),
            event_type: "T".to_owned(),
            data_content_type: 1,
            metadata_content_type: 0,
            data: b"{}".to_vec().into(),
            metadata: None,
        })
        .collect()
}

fn write(stream: &str, ids: &[uuid::Uuid]) -> Vec<u8> {
    WriteEvents {
        event_stream_id: stream.to_owned(),
        expected_version: -2,
        events: new_events(ids),
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

    // Per request: an unknown command, undecodable bodies.
    for (command, correlation) in [(0x77, 8), (TRANSACTION_START, 9), (READ_EVENT, 10)] {
        let body: &[u8] = if command == 0x77 { &[] } else { &[0xFF, 0xFF] };
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

/// Start, write and commit of an explicit transaction over `raw`.
struct Transactions<'a>(&'a mut Raw);

impl Transactions<'_> {
    async fn start(&mut self, correlation: u8, stream: &str, expected: i64) -> i64 {
        let request = TransactionStart {
            event_stream_id: stream.to_owned(),
            expected_version: expected,
            require_master: true,
        };
        let answer = self
            .0
            .call(
                TRANSACTION_START,
                correlation,
                None,
                &request.encode_to_vec(),
            )
            .await;
        assert_eq!(answer.command, TRANSACTION_START_COMPLETED);
        let started = TransactionStartCompleted::decode(&answer.body[..]).unwrap();
        assert_eq!(started.result, OperationResult::Success as i32);
        started.transaction_id
    }

    async fn write(&mut self, correlation: u8, id: i64, ids: &[uuid::Uuid]) -> i32 {
        let request = TransactionWrite {
            transaction_id: id,
            events: new_events(ids),
            require_master: true,
        };
        let answer = self
            .0
            .call(
                TRANSACTION_WRITE,
                correlation,
                None,
                &request.encode_to_vec(),
            )
            .await;
        assert_eq!(answer.command, TRANSACTION_WRITE_COMPLETED);
        let written = TransactionWriteCompleted::decode(&answer.body[..]).unwrap();
        assert_eq!(written.transaction_id, id);
        written.result
    }

    async fn commit(&mut self, correlation: u8, id: i64) -> TransactionCommitCompleted {
        let request = TransactionCommit {
            transaction_id: id,
            require_master: true,
        };
        let answer = self
            .0
            .call(
                TRANSACTION_COMMIT,
                correlation,
                None,
                &request.encode_to_vec(),
            )
            .await;
        assert_eq!(answer.command, TRANSACTION_COMMIT_COMPLETED);
        let committed = TransactionCommitCompleted::decode(&answer.body[..]).unwrap();
        assert_eq!(committed.transaction_id, id);
        committed
    }
}

/// (commit, prepare) of each event of a page, and the page's next position.
fn page_positions(answer: &Answer) -> (Vec<(i64, i64)>, (i64, i64)) {
    let page = ReadAllEventsCompleted::decode(&answer.body[..]).unwrap();
    assert_eq!(page.result, Some(ReadAllResult::Success as i32));
    let events = page
        .events
        .iter()
        .map(|e| (e.commit_position, e.prepare_position))
        .collect();
    (
        events,
        (page.next_commit_position, page.next_prepare_position),
    )
}

/// A transaction whose writes interleave with an ordinary append (as v5 lays
/// them out, docs/tcp-protocol.md §4.4): TransactionBegin at T, the first event's
/// prepare at Q1, the append at P, the other events' prepares at Q2 < Q3, the
/// commit at C. `$all`: P, then (C, Q1), (C, Q2), (C, Q3); pages resume inside the
/// transaction exactly, both ways; nothing of it is visible before the commit.
#[tokio::test]
async fn tcp_transactions_commit_with_v5_positions_and_pages_resume_inside_them() {
    let server = EsdbServer::start_with(ServerOptions {
        tcp_port: Some(0),
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    let mut raw = Raw::connect(&server).await;
    let mut watcher = Raw::connect(&server).await;
    let subscribe = SubscribeToStream {
        event_stream_id: String::new(),
        resolve_link_tos: false,
    };
    let confirmation = watcher
        .call(SUBSCRIBE_TO_STREAM, 1, None, &subscribe.encode_to_vec())
        .await;
    assert_eq!(confirmation.command, SUBSCRIPTION_CONFIRMATION);
    SubscriptionConfirmation::decode(&confirmation.body[..]).unwrap();

    let ids: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    let plain = uuid::Uuid::new_v4();
    let mut tx = Transactions(&mut raw);
    let id = tx.start(1, "tx", -1).await;
    assert!(id > 0, "the id is the TransactionBegin record's position");
    assert_eq!(tx.write(2, id, &ids[..1]).await, 0);
    let written =
        tx.0.call(WRITE_EVENTS, 3, None, &write("plain", &[plain]))
            .await;
    let written = WriteEventsCompleted::decode(&written.body[..]).unwrap();
    let p = written.commit_position.unwrap();
    assert_eq!(written.prepare_position, Some(p));
    assert_eq!(tx.write(4, id, &ids[1..]).await, 0);

    let pending =
        tx.0.call(READ_ALL_FORWARD, 5, None, &read_all(0, 0, 10))
            .await;
    assert_eq!(
        page_positions(&pending).0,
        vec![(p, p)],
        "pending: invisible"
    );

    let committed = tx.commit(6, id).await;
    assert_eq!(committed.result, OperationResult::Success as i32);
    assert_eq!(
        (committed.first_event_number, committed.last_event_number),
        (0, 2)
    );
    let c = committed.commit_position.unwrap();
    assert_eq!(committed.prepare_position, Some(c));
    assert!(c > p);

    let all = raw
        .call(READ_ALL_FORWARD, 7, None, &read_all(0, 0, 10))
        .await;
    let (events, end) = page_positions(&all);
    assert_eq!(events.len(), 4);
    assert_eq!(events[0], (p, p));
    let q: Vec<i64> = events[1..].iter().map(|&(_, prepare)| prepare).collect();
    assert!(events[1..].iter().all(|&(commit, _)| commit == c));
    assert!(id < q[0] && q[0] < p && p < q[1] && q[1] < q[2] && q[2] < c);
    let records = ReadAllEventsCompleted::decode(&all.body[..]).unwrap();
    let numbers: Vec<(String, i64)> = records
        .events
        .iter()
        .map(|e| {
            let record = e.event.as_ref().unwrap();
            (record.event_stream_id.clone(), record.event_number)
        })
        .collect();
    let tx_stream = |n| ("tx".to_owned(), n);
    assert_eq!(
        numbers,
        vec![
            ("plain".to_owned(), 0),
            tx_stream(0),
            tx_stream(1),
            tx_stream(2)
        ]
    );
    // After a transaction's event: (its commit, its end). The first event ends where
    // the next record of the log (the append) starts; the last where the next
    // prepare (TransactionEnd) starts, before the commit.
    assert_eq!(end.0, c);
    assert!(q[2] < end.1 && end.1 < c);

    // Forward pages of one event each resume exactly, inside the transaction too.
    let mut from = (0, 0);
    let mut paged = Vec::new();
    let mut nexts = Vec::new();
    for correlation in 10..20 {
        let answer = raw
            .call(
                READ_ALL_FORWARD,
                correlation,
                None,
                &read_all(from.0, from.1, 1),
            )
            .await;
        let (page, next) = page_positions(&answer);
        if page.is_empty() {
            assert_eq!(next, from, "an empty page keeps the position");
            break;
        }
        paged.extend(page);
        nexts.push(next);
        from = next;
    }
    assert_eq!(paged, events);
    // (P's end, 0) after the append: the first transaction event's commit is past it.
    assert_eq!(nexts[0].1, 0);
    assert_eq!(
        nexts[1],
        (c, p),
        "the first prepare ends where the append starts"
    );
    // Inclusive start, commit then prepare: (C, Q2) gives Q2; (C, Q2 + 1) gives Q3.
    let at = raw
        .call(READ_ALL_FORWARD, 20, None, &read_all(c, q[1], 1))
        .await;
    assert_eq!(page_positions(&at).0, vec![(c, q[1])]);
    let past = raw
        .call(READ_ALL_FORWARD, 21, None, &read_all(c, q[1] + 1, 1))
        .await;
    assert_eq!(page_positions(&past).0, vec![(c, q[2])]);

    // Backward pages of one event each: after a transaction's event, (C's end, its
    // own position); after the append, (P, P).
    let mut from = (-1, -1);
    let mut paged = Vec::new();
    let mut nexts = Vec::new();
    for correlation in 30..40 {
        let answer = raw
            .call(
                READ_ALL_BACKWARD,
                correlation,
                None,
                &read_all(from.0, from.1, 1),
            )
            .await;
        let (page, next) = page_positions(&answer);
        if page.is_empty() {
            break;
        }
        paged.extend(page);
        nexts.push(next);
        from = next;
    }
    paged.reverse();
    assert_eq!(paged, events);
    let c_end = nexts[0].0;
    assert!(c_end > c);
    assert_eq!(nexts[..3], [(c_end, q[2]), (c_end, q[1]), (c_end, q[0])]);
    assert_eq!(nexts[3], (p, p));

    // The live subscription saw the append, then the transaction at its commit.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let frame = watcher.recv().await.expect("an event");
        assert_eq!(frame.command, STREAM_EVENT_APPEARED);
        let event = StreamEventAppeared::decode(&frame.body[..]).unwrap().event;
        seen.push((event.commit_position, event.prepare_position));
    }
    assert_eq!(seen, events);
}

/// The outcomes of a commit other than success: an id that is not a pending
/// transaction (never started, or committed already), and an expected version
/// that no longer holds at the commit (v5 checks it then, not at the start).
#[tokio::test]
async fn tcp_transaction_commits_fail_for_unknown_ids_and_stale_expected_versions() {
    let server = EsdbServer::start_with(ServerOptions {
        tcp_port: Some(0),
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    let mut raw = Raw::connect(&server).await;
    let mut tx = Transactions(&mut raw);
    let invalid = OperationResult::InvalidTransaction as i32;
    assert_eq!(tx.write(1, 12_345, &[uuid::Uuid::new_v4()]).await, invalid);
    assert_eq!(tx.commit(2, 12_345).await.result, invalid);

    let id = tx.start(3, "stale", -1).await;
    assert_eq!(tx.write(4, id, &[uuid::Uuid::new_v4()]).await, 0);
    tx.0.call(
        WRITE_EVENTS,
        5,
        None,
        &write("stale", &[uuid::Uuid::new_v4()]),
    )
    .await;
    let stale = tx.commit(6, id).await;
    assert_eq!(stale.result, OperationResult::WrongExpectedVersion as i32);
    assert_eq!(stale.commit_position, None);
    assert_eq!(
        tx.commit(7, id).await.result,
        invalid,
        "the transaction is over"
    );
    assert_eq!(tx.write(8, id, &[uuid::Uuid::new_v4()]).await, invalid);

    let empty = tx.start(9, "empty", -2).await;
    let committed = tx.commit(10, empty).await;
    assert_eq!(committed.result, OperationResult::Success as i32);
    assert_eq!(
        (committed.first_event_number, committed.last_event_number),
        (0, -1)
    );
}

/// gRPC reads of a transaction's records: commit ≠ prepare, in (commit, prepare)
/// order, and a position inside the transaction is honoured by reads (inclusive),
/// backward reads and subscriptions (exclusive).
#[tokio::test]
async fn grpc_reads_carry_a_tcp_transaction_commit_and_prepare_positions() {
    let server = EsdbServer::start_with(ServerOptions {
        tcp_port: Some(0),
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    let mut raw = Raw::connect(&server).await;
    let ids: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    let mut tx = Transactions(&mut raw);
    let id = tx.start(1, "tx", -2).await;
    assert_eq!(tx.write(2, id, &ids[..1]).await, 0);
    tx.0.call(
        WRITE_EVENTS,
        3,
        None,
        &write("plain", &[uuid::Uuid::new_v4()]),
    )
    .await;
    assert_eq!(tx.write(4, id, &ids[1..]).await, 0);
    let c = tx.commit(5, id).await.commit_position.unwrap() as u64;

    let client = client(&server.connection_string());
    let read = |options: ReadAllOptions| {
        let client = client.clone();
        async move {
            let mut reader = client.read_all(&options).await.unwrap();
            let mut read = Vec::new();
            while let Some(event) = reader.next().await.unwrap() {
                let event = event.get_original_event();
                read.push((event.id, event.position));
            }
            read
        }
    };
    let all = read(ReadAllOptions::default().max_count(10)).await;
    assert_eq!(all.len(), 4);
    let ours: Vec<(uuid::Uuid, Position)> = all[1..].to_vec();
    assert_eq!(ours.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
    for (_, position) in &ours {
        assert_eq!(position.commit, c);
        assert!(position.prepare < c, "commit ≠ prepare");
    }
    let plain = all[0].1;
    assert_eq!(plain.commit, plain.prepare);
    assert!(ours[0].1.prepare < plain.prepare && plain.prepare < ours[1].1.prepare);

    let second = ours[1].1;
    let from_second = read(
        ReadAllOptions::default()
            .position(StreamPosition::Position(second))
            .max_count(10),
    )
    .await;
    assert_eq!(from_second, ours[1..]);
    let before_second = read(
        ReadAllOptions::default()
            .backwards()
            .position(StreamPosition::Position(second))
            .max_count(10),
    )
    .await;
    assert_eq!(before_second, vec![ours[0], all[0]]);

    let options = SubscribeToAllOptions::default().position(StreamPosition::Position(second));
    let mut sub = client.subscribe_to_all(&options).await;
    let event = sub.next().await.unwrap();
    let event = event.get_original_event();
    assert_eq!((event.id, event.position), ours[2]);
}

/// `GET path` over HTTP/1.1 on a connection of its own: the status line and
/// the body.
async fn http_get(address: std::net::SocketAddr, path: &str) -> (String, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("read");
        String::from_utf8(answer).expect("UTF-8")
    };
    let answer = tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("an answer in time");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

async fn gossip(server: &EsdbServer) -> serde_json::Value {
    let address = server.gossip_address().expect("the server serves gossip");
    let (status, body) = http_get(address, "/gossip?format=json").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    serde_json::from_str(&body).expect("JSON")
}

async fn node() -> EsdbServer {
    EsdbServer::start_with(ServerOptions {
        tcp_port: Some(0),
        gossip_port: Some(0),
        ..ServerOptions::default()
    })
    .await
    .expect("server")
}

/// A v5 node's HTTP gossip: the members as the test sets them, with the v5
/// field names and states as names.
#[tokio::test]
async fn gossip_lists_the_members_a_test_sets_with_v5_field_names() {
    let (a, b) = (node().await, node().await);
    let alone = gossip(&a).await;
    let members = alone["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{alone}");
    let me = &members[0];
    let tcp = a.tcp_address().unwrap();
    let http = a.gossip_address().unwrap();
    assert_eq!(me["state"], "Master");
    assert_eq!(me["isAlive"], true);
    assert_eq!(me["externalTcpIp"], tcp.ip().to_string());
    assert_eq!(me["externalTcpPort"], tcp.port());
    assert_eq!(me["externalSecureTcpPort"], 0);
    assert_eq!(me["externalHttpIp"], http.ip().to_string());
    assert_eq!(me["externalHttpPort"], http.port());
    for field in [
        "instanceId",
        "timeStamp",
        "internalTcpIp",
        "internalTcpPort",
        "internalSecureTcpPort",
        "internalHttpIp",
        "internalHttpPort",
        "lastCommitPosition",
        "writerCheckpoint",
        "chaserCheckpoint",
        "epochPosition",
        "epochNumber",
        "epochId",
        "nodePriority",
    ] {
        assert!(me.get(field).is_some(), "{field} missing from {me}");
    }
    assert_eq!(alone["serverPort"], http.port());

    a.set_gossip(vec![
        a.member(NodeState::Slave),
        b.member(NodeState::Master).dead(),
    ]);
    let both = gossip(&a).await;
    let members = both["members"].as_array().expect("members");
    assert_eq!(members.len(), 2, "{both}");
    assert_eq!(members[0]["state"], "Slave");
    assert_eq!(members[1]["state"], "Master");
    assert_eq!(members[1]["isAlive"], false);
    assert_eq!(
        members[1]["externalTcpPort"],
        b.tcp_address().unwrap().port()
    );

    let (status, _) = http_get(a.gossip_address().unwrap(), "/info").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    // A stopped node answers nothing, and serves again after a restart.
    a.stop().await;
    assert!(TcpStream::connect(a.gossip_address().unwrap())
        .await
        .is_err());
    a.restart().await.unwrap();
    assert_eq!(gossip(&a).await["members"].as_array().unwrap().len(), 2);
}

fn not_handled(answer: &Answer) -> (i32, Option<MasterInfo>) {
    assert_eq!(answer.command, NOT_HANDLED, "NotHandled expected");
    let body = NotHandled::decode(answer.body.as_slice()).expect("NotHandled");
    let info = body
        .additional_info
        .map(|info| MasterInfo::decode(info.as_ref()).expect("MasterInfo"));
    (body.reason, info)
}

/// A follower answers requests with `require_master` as v5 does: NotMaster
/// naming the leader, NotReady for reads while it knows none; the rest is
/// served.
#[tokio::test]
async fn tcp_followers_answer_not_master_naming_the_leader() {
    let (leader, follower) = (node().await, node().await);
    follower.set_role(Role::Follower {
        leader: Some(leader.member(NodeState::Master)),
    });
    let mut raw = Raw::connect(&follower).await;
    let answer = raw
        .call(READ_ALL_FORWARD, 1, None, &read_all(0, 0, 10))
        .await;
    let (reason, info) = not_handled(&answer);
    assert_eq!(reason, NotHandledReason::NotMaster as i32);
    let info = info.expect("the leader's endpoints");
    let tcp = leader.tcp_address().unwrap();
    assert_eq!(info.external_tcp_address, tcp.ip().to_string());
    assert_eq!(info.external_tcp_port, i32::from(tcp.port()));
    assert_eq!(
        info.external_http_port,
        i32::from(leader.gossip_address().unwrap().port())
    );
    assert_eq!(info.external_secure_tcp_port, None);
    let answer = raw
        .call(WRITE_EVENTS, 2, None, &write("s", &[uuid::Uuid::new_v4()]))
        .await;
    assert_eq!(not_handled(&answer).0, NotHandledReason::NotMaster as i32);

    // Without require_master a follower reads, and subscriptions are served.
    let mut lenient = ReadAllEvents::decode(read_all(0, 0, 10).as_slice()).unwrap();
    lenient.require_master = false;
    let answer = raw
        .call(READ_ALL_FORWARD, 3, None, &lenient.encode_to_vec())
        .await;
    assert_eq!(answer.command, READ_ALL_FORWARD + 1);
    let subscribe = SubscribeToStream {
        event_stream_id: String::new(),
        resolve_link_tos: false,
    };
    let answer = raw
        .call(SUBSCRIBE_TO_STREAM, 4, None, &subscribe.encode_to_vec())
        .await;
    assert_eq!(answer.command, SUBSCRIPTION_CONFIRMATION);

    // No leader known: reads are not ready, writes name this node.
    follower.set_role(Role::Follower { leader: None });
    let answer = raw
        .call(READ_ALL_FORWARD, 5, None, &read_all(0, 0, 10))
        .await;
    assert_eq!(
        not_handled(&answer),
        (NotHandledReason::NotReady as i32, None)
    );
    let answer = raw
        .call(WRITE_EVENTS, 6, None, &write("s", &[uuid::Uuid::new_v4()]))
        .await;
    let (reason, info) = not_handled(&answer);
    assert_eq!(reason, NotHandledReason::NotMaster as i32);
    assert_eq!(
        info.unwrap().external_tcp_port,
        i32::from(follower.tcp_address().unwrap().port())
    );

    // A leader again: served.
    follower.set_role(Role::Leader);
    let answer = raw
        .call(READ_ALL_FORWARD, 7, None, &read_all(0, 0, 10))
        .await;
    assert_eq!(answer.command, READ_ALL_FORWARD + 1);
}
