//! The checkpoint kept in a stream of the target (`checkpoint.type: stream`)
//! against the in-process server: the store contract
//! ([`check_store`]), one writer per stream, never backwards, `$maxCount`,
//! the start-up check, a frozen or stopped target as a transient error
//! within the request deadline, and a reader of the target as a source
//! skipping the checkpoint stream.

use std::time::{Duration, SystemTime};

use eventstore::{ReadStreamOptions, StreamMetadataResult};
use replicator_core::conformance::check_store;
use replicator_core::{Checkpoint, CheckpointStore, Position};
use replicator_esdb::{StreamCheckpointStore, CHECKPOINT_MAX_COUNT, CHECKPOINT_STREAM_PREFIX};
use replicator_testkit::security::User;
use replicator_testkit::support::client;
use replicator_testkit::{EsdbServer, ServerOptions};

/// The request deadline of the outage tests: short, so they are quick; a
/// frozen server never answers, so the outcome does not depend on it.
const DEADLINE: Duration = Duration::from_millis(500);

fn at(commit: u64) -> Checkpoint {
    Checkpoint {
        source: Position::at(commit),
        target: Some(Position::at(commit / 2)),
        taken_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_767_225_600_000 + commit),
        seed: false,
    }
}

fn store(server: &EsdbServer, instance: &str) -> StreamCheckpointStore {
    StreamCheckpointStore::new(server.connection_string(), instance).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_store_keeps_the_checkpoint_store_contract() {
    let server = EsdbServer::start().await.unwrap();
    let connection_string = server.connection_string();
    check_store(move |instance: String| {
        let store = StreamCheckpointStore::new(connection_string.clone(), &instance).unwrap();
        async move { store }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_is_per_instance_capped_and_readable_by_anyone() {
    let server = EsdbServer::start().await.unwrap();
    let blue = store(&server, "blue");
    blue.check().await.unwrap();
    blue.store(&at(1_000)).await.unwrap();
    blue.store(&at(2_000)).await.unwrap();

    let stream = format!("{CHECKPOINT_STREAM_PREFIX}blue");
    assert_eq!(blue.stream(), stream);
    let target = client(&server.connection_string());
    let metadata = target
        .get_stream_metadata(stream.as_str(), &ReadStreamOptions::default())
        .await
        .unwrap();
    let StreamMetadataResult::Success(metadata) = metadata else {
        panic!("no metadata on {stream}: {metadata:?}");
    };
    assert_eq!(metadata.metadata().max_count, Some(CHECKPOINT_MAX_COUNT));

    // The last event is the file store's format, readable by an operator.
    let mut read = target
        .read_stream(
            stream.as_str(),
            &ReadStreamOptions::default()
                .backwards()
                .position(eventstore::StreamPosition::End)
                .max_count(1),
        )
        .await
        .unwrap();
    let last = read.next().await.unwrap().unwrap();
    let json: serde_json::Value = last.get_original_event().as_json().unwrap();
    assert_eq!(json["version"], 1, "{json}");
    assert_eq!(json["source"]["commit"], 2_000, "{json}");
    assert_eq!(json["seed"], false, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_of_one_instance_is_an_error_never_an_interleaving() {
    let server = EsdbServer::start().await.unwrap();
    let first = store(&server, "shared");
    assert_eq!(first.load().await.unwrap(), None);
    first.store(&at(1_000)).await.unwrap();

    // Another process with the same instance id, further on.
    let second = store(&server, "shared");
    second.store(&at(5_000)).await.unwrap();

    let error = first.store(&at(2_000)).await.unwrap_err();
    assert!(!error.is_transient(), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("$replicator-checkpoint-shared"),
        "{message}"
    );
    assert!(message.contains("another replicator"), "{message}");
    assert_eq!(
        second.load().await.unwrap().unwrap().source,
        Position::at(5_000)
    );

    // Having read it again, the first may not move it backwards either.
    assert_eq!(
        first.load().await.unwrap().unwrap().source,
        Position::at(5_000)
    );
    let error = first.store(&at(3_000)).await.unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert!(error.to_string().contains("backwards"), "{error}");
    assert_eq!(
        first.load().await.unwrap().unwrap().source,
        Position::at(5_000)
    );
    // Forwards is fine.
    first.store(&at(6_000)).await.unwrap();
    assert_eq!(
        second.load().await.unwrap().unwrap().source,
        Position::at(6_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_may_not_write_system_streams_fails_the_check_naming_the_stream() {
    let server = EsdbServer::start_with(ServerOptions {
        users: Some(vec![User::admin(), User::new("ops", "s3cr3t-pw")]),
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    let url = format!("esdb://ops:s3cr3t-pw@127.0.0.1:{}?tls=false", server.port());
    let store = StreamCheckpointStore::new(url, "default").unwrap();
    let error = store.check().await.unwrap_err();
    assert!(!error.is_transient(), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("$replicator-checkpoint-default"),
        "{message}"
    );
    assert!(message.contains("ops:***@127.0.0.1"), "{message}");
    assert!(!message.contains("s3cr3t-pw"), "{message}");
    assert!(message.contains("`$` streams"), "{message}");

    let admin = format!(
        "esdb://admin:changeit@127.0.0.1:{}?tls=false",
        server.port()
    );
    StreamCheckpointStore::new(admin, "default")
        .unwrap()
        .check()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_or_stopped_target_is_a_transient_error_within_the_deadline() {
    let server = EsdbServer::start().await.unwrap();
    let store = store(&server, "outage").with_request_timeout(DEADLINE);
    store.store(&at(1_000)).await.unwrap();

    let faults = server.faults();
    faults.pause();
    for error in [
        store.store(&at(2_000)).await.unwrap_err(),
        store.load().await.unwrap_err(),
        store.check().await.unwrap_err(),
    ] {
        assert!(error.is_transient(), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("$replicator-checkpoint-outage"),
            "{message}"
        );
        assert!(message.contains("no answer within"), "{message}");
    }
    faults.resume();
    // The store that timed out may or may not have landed: read again, then
    // go on.
    store.store(&at(3_000)).await.unwrap();
    assert_eq!(
        store.load().await.unwrap().unwrap().source,
        Position::at(3_000)
    );

    server.stop().await;
    let error = store.store(&at(4_000)).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    server.restart().await.unwrap();
    store.store(&at(4_000)).await.unwrap();
    assert_eq!(
        store.load().await.unwrap().unwrap().source,
        Position::at(4_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_the_target_as_a_source_skips_the_checkpoint_stream() {
    use futures::StreamExt as _;
    use replicator_core::{ChangeKind, Reader as _, StartFrom};
    use replicator_esdb::{EsdbReader, EsdbReaderConfig};

    let server = EsdbServer::start().await.unwrap();
    let store = store(&server, "next-hop");
    store.store(&at(1_000)).await.unwrap();
    client(&server.connection_string())
        .append_to_stream(
            "orders-1",
            &Default::default(),
            eventstore::EventData::binary("Placed", vec![1].into()),
        )
        .await
        .unwrap();
    store.store(&at(2_000)).await.unwrap();

    let mut reader = EsdbReader::new(EsdbReaderConfig {
        run_continuously: false,
        ..EsdbReaderConfig::new(server.connection_string())
    })
    .unwrap();
    let records: Vec<_> = reader
        .read(StartFrom::Beginning)
        .await
        .unwrap()
        .map(|record| record.unwrap())
        .collect()
        .await;
    let copied: Vec<_> = records
        .iter()
        .filter(|r| !matches!(r.kind, ChangeKind::Skip(_)))
        .map(|r| r.stream.as_str())
        .collect();
    assert_eq!(copied, ["orders-1"], "{records:#?}");
    // The checkpoint events and their metadata were read, and skipped.
    assert!(
        records
            .iter()
            .filter(|r| r.stream.contains(CHECKPOINT_STREAM_PREFIX))
            .count()
            >= 3,
        "{records:#?}"
    );
}
