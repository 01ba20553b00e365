//! Bearer tokens (KurrentDB's OAuth authentication) on every call of the
//! sink, the stream checkpoint store and the cluster reads, against the
//! in-process server's bearer-token checks: the token file is read again
//! when it changes, a token refused from the start is a permanent error
//! naming the file, one refused later (expired) a transient one that the next
//! call recovers from once the file holds an accepted token. No token ever
//! appears in an error.

use futures::StreamExt as _;
use replicator_core::{CheckpointStore, Event, Position, Sink};
use replicator_esdb::cluster::{self, head, BearerToken, ClusterRead, Direction, StreamFrom};
use replicator_esdb::{EsdbSink, EsdbSinkConfig, StreamCheckpointStore};
use replicator_testkit::security::{BearerTokens, User};
use replicator_testkit::{EsdbServer, ServerOptions};

const FIRST: &str = "first-t0ken-a1b2c3";
const SECOND: &str = "second-t0ken-d4e5f6";

/// A server that requires authentication and accepts `FIRST` for its admin;
/// its connection string carries no credentials.
async fn server(tokens: &BearerTokens) -> EsdbServer {
    tokens.accept(FIRST, User::admin());
    EsdbServer::start_with(ServerOptions {
        users: Some(vec![User::admin()]),
        bearer_tokens: Some(tokens.clone()),
        ..ServerOptions::default()
    })
    .await
    .expect("server")
}

fn events(stream: &str, from: u64, count: u64) -> Vec<Event> {
    (from..from + count)
        .map(|n| {
            Event::new(stream, "Counted", format!("{n}").into_bytes())
                .with_revision(n)
                .with_position(Position::at(100 + n))
        })
        .collect()
}

#[track_caller]
fn assert_no_token(text: &str) {
    for token in [FIRST, SECOND] {
        assert!(!text.contains(token), "a token reached a message: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_a_transient_error_until_the_file_holds_a_new_one() {
    let tokens = BearerTokens::new();
    let server = server(&tokens).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{FIRST}\n")).unwrap();
    let token = || Some(BearerToken::from_file(&file).expect("token file"));

    let sink = EsdbSink::new(EsdbSinkConfig::new(server.connection_string()))
        .unwrap()
        .with_bearer_token(token());
    sink.check().await.expect("the token is accepted");
    sink.write(&events("orders-1", 0, 3)).await.expect("write");
    let store = StreamCheckpointStore::new(server.connection_string(), "bearer")
        .unwrap()
        .with_bearer_token(token());
    store.check().await.expect("the store's token is accepted");
    let reads = cluster::client(&server.connection_string().into())
        .unwrap()
        .with_bearer_token(token());
    assert!(head(&reads).await.expect("head").is_some());

    // The token expires. The server checks a token as each call starts: the
    // sink's open batch-append call goes on until its connection is lost.
    tokens.revoke(FIRST);
    server.faults().drop_connections();
    let mut failures = Vec::new();
    // A write whose connection was just dropped may fail for that first; the
    // next call is refused for its token (a few attempts, not a wait).
    for _ in 0..5 {
        let error = sink
            .write(&events("orders-1", 3, 2))
            .await
            .expect_err("a revoked token");
        assert!(error.is_transient(), "{error}");
        let message = format!("{error} {error:?}");
        assert_no_token(&message);
        let refused = message.contains("bearer token was refused");
        failures.push(message);
        if refused {
            break;
        }
    }
    let message = failures.last().unwrap();
    assert!(
        message.contains("bearer token was refused"),
        "{failures:#?}"
    );
    assert!(message.contains(&file.display().to_string()), "{message}");
    let read = reads
        .stream_records("orders-1", StreamFrom::Start, Direction::Forwards, 10)
        .collect::<Vec<_>>()
        .await;
    let failure = read[0].as_ref().expect_err("a revoked token").to_string();
    assert!(failure.contains("bearer token was refused"), "{failure}");
    assert_no_token(&failure);

    // A new token in the file: the same sink, client and store go on.
    tokens.accept(SECOND, User::admin());
    std::fs::write(&file, SECOND).unwrap();
    sink.write(&events("orders-1", 3, 2))
        .await
        .expect("write with the new token");
    let revisions: Vec<u64> = reads
        .stream_records("orders-1", StreamFrom::Start, Direction::Forwards, 10)
        .map(|r| r.expect("read").revision)
        .collect()
        .await;
    assert_eq!(revisions, vec![0, 1, 2, 3, 4]);
    store
        .store(&replicator_core::Checkpoint::processed(
            Position::at(104),
            None,
        ))
        .await
        .expect("store with the new token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_from_the_start_is_a_permanent_error_naming_the_file() {
    let tokens = BearerTokens::new();
    let server = server(&tokens).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("target-token");
    std::fs::write(&file, SECOND).unwrap();
    let sink = EsdbSink::new(EsdbSinkConfig::new(server.connection_string()))
        .unwrap()
        .with_bearer_token(Some(BearerToken::from_file(&file).unwrap()));
    let error = sink.check().await.expect_err("never accepted");
    assert!(!error.is_transient(), "{error}");
    let message = format!("{error} {error:?}");
    assert!(message.contains("target"), "{message}");
    assert!(message.contains("bearer token was refused"), "{message}");
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert_no_token(&message);

    let store = StreamCheckpointStore::new(server.connection_string(), "bearer")
        .unwrap()
        .with_bearer_token(Some(BearerToken::from_file(&file).unwrap()));
    let error = store.check().await.expect_err("never accepted");
    assert!(!error.is_transient(), "{error}");
    assert!(
        error.to_string().contains("bearer token was refused"),
        "{error}"
    );
    assert_no_token(&format!("{error} {error:?}"));
}
