//! A v5 explicit transaction over the testkit's TCP service
//! (`ServerOptions::tcp_port`), for tests that need records whose commit and
//! prepare positions differ: gRPC appends never make them.

use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;
use replicator_core::{ContentType, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::proto::tcp::{
    NewEvent, TransactionCommit, TransactionCommitCompleted, TransactionStart,
    TransactionStartCompleted, TransactionWrite, TransactionWriteCompleted,
};

/// How long one request may wait for its answer.
const ANSWER: Duration = Duration::from_secs(60);

/// An open v5 transaction on one stream, on a connection of its own
/// (anonymous: the server must let anonymous users write). Its events stay
/// out of every read until [`TcpTransaction::commit`]; meanwhile other
/// writes may go on, and the transaction's events then sit in `$all` after
/// them, at (commit, their own prepare).
///
/// # Panics
/// Every method panics naming the request when the server refuses it or
/// does not answer within a minute: it is for tests.
pub struct TcpTransaction {
    connection: TcpStream,
    id: i64,
    correlation: u8,
}

impl TcpTransaction {
    /// TransactionStart on `stream` (any expected version).
    pub async fn start(address: SocketAddr, stream: &str) -> TcpTransaction {
        let connection = TcpStream::connect(address)
            .await
            .unwrap_or_else(|e| panic!("connecting to the TCP service at {address}: {e}"));
        let mut transaction = TcpTransaction {
            connection,
            id: 0,
            correlation: 0,
        };
        let start = TransactionStart {
            event_stream_id: stream.to_owned(),
            expected_version: -2,
            require_master: true,
        };
        let answer = transaction.call(0x84, &start.encode_to_vec()).await;
        let started = TransactionStartCompleted::decode(&answer[..]).expect("TransactionStart");
        assert_eq!(
            started.result, 0,
            "TransactionStart on {stream}: {started:?}"
        );
        transaction.id = started.transaction_id;
        transaction
    }

    /// TransactionWrite of JSON events with these ids (type `InTransaction`,
    /// data `{"id": "…"}`, metadata `{}`).
    pub async fn write(&mut self, ids: &[Uuid]) {
        let events: Vec<Event> = ids
            .iter()
            .map(|id| {
                Event::new("", "InTransaction", format!(r#"{{"id":"{id}"}}"#))
                    .with_id(*id)
                    .with_metadata("{}")
            })
            .collect();
        self.write_events(&events).await;
    }

    /// TransactionWrite of `events` as they are: id, type, data, user
    /// metadata and content type (their stream and positions are not sent).
    pub async fn write_events(&mut self, events: &[Event]) {
        let events = events
            .iter()
            .map(|event| NewEvent {
                event_id: event.id.to_bytes_le().to_vec().into(),
                event_type: event.event_type.clone(),
                data_content_type: i32::from(event.content_type == ContentType::Json),
                metadata_content_type: 1,
                data: event.data.clone(),
                metadata: Some(event.metadata.clone()),
            })
            .collect();
        let write = TransactionWrite {
            transaction_id: self.id,
            events,
            require_master: true,
        };
        let answer = self.call(0x86, &write.encode_to_vec()).await;
        let written = TransactionWriteCompleted::decode(&answer[..]).expect("TransactionWrite");
        assert_eq!(written.result, 0, "TransactionWrite: {written:?}");
    }

    /// TransactionCommit: the events enter the stream and `$all`.
    pub async fn commit(mut self) {
        let commit = TransactionCommit {
            transaction_id: self.id,
            require_master: true,
        };
        let answer = self.call(0x88, &commit.encode_to_vec()).await;
        let committed = TransactionCommitCompleted::decode(&answer[..]).expect("TransactionCommit");
        assert_eq!(committed.result, 0, "TransactionCommit: {committed:?}");
    }

    /// One request (docs/tcp-protocol.md §1.1: no credentials) and the body
    /// of its answer, the server's heartbeats answered meanwhile.
    async fn call(&mut self, command: u8, body: &[u8]) -> Vec<u8> {
        self.correlation += 1;
        let id = [self.correlation; 16];
        send(&mut self.connection, command, id, body).await;
        let connection = &mut self.connection;
        let answer = async move {
            loop {
                let mut prefix = [0; 4];
                connection.read_exact(&mut prefix).await.expect("an answer");
                let mut frame = vec![0; u32::from_le_bytes(prefix) as usize];
                connection
                    .read_exact(&mut frame)
                    .await
                    .expect("a whole frame");
                let correlation: [u8; 16] = frame[2..18].try_into().expect("a header");
                if frame[0] == 0x01 {
                    send(connection, 0x02, correlation, &[]).await;
                } else if correlation == id {
                    assert_eq!(frame[0], command + 1, "the Completed answer");
                    return frame[18..].to_vec();
                }
            }
        };
        tokio::time::timeout(ANSWER, answer)
            .await
            .unwrap_or_else(|_| panic!("no answer to command 0x{command:02X} within {ANSWER:?}"))
    }
}

async fn send(connection: &mut TcpStream, command: u8, id: [u8; 16], body: &[u8]) {
    let mut frame = vec![command, 0];
    frame.extend(id);
    frame.extend(body);
    let mut bytes = (frame.len() as u32).to_le_bytes().to_vec();
    bytes.extend(frame);
    connection.write_all(&bytes).await.expect("send");
}
