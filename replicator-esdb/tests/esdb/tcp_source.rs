//! `verify` and `map-position` with a v5 source read over the legacy TCP
//! protocol ([`TcpSource`]): for the same store they answer what they answer
//! over gRPC, v5 transaction records (commit ≠ prepare) included, and a
//! difference is named over TCP as over gRPC.

use eventstore::{AppendToStreamOptions, Client, EventData};
use futures::StreamExt as _;
use replicator_core::memory::MemoryCheckpointStore;
use replicator_core::secret::ConnectionString;
use replicator_core::Position;
use replicator_esdb::cluster::{AllFrom, ClusterRead, Direction};
use replicator_esdb::position_map::{map_position, map_revision, MapOptions, Mapping};
use replicator_esdb::tcp::TcpSource;
use replicator_esdb::verify::{verify, DifferenceKind, Until, VerifyOptions, VerifyReport};
use replicator_esdb::WriteOrder;
use replicator_testkit::cluster::TestCluster;
use uuid::Uuid;

use crate::common::*;
use crate::tcp_reader::transaction_around_an_append;

fn tcp(cluster: &TestCluster) -> TcpSource {
    TcpSource::new(&ConnectionString::from(tcp_connection_string(cluster))).expect("settings")
}

/// The report without its timings, to compare two runs.
fn comparable(report: &VerifyReport) -> serde_json::Value {
    let mut value = serde_json::to_value(report).expect("a report serialises");
    let object = value.as_object_mut().expect("an object");
    object.remove("seconds");
    object.remove("listing_seconds");
    value
}

/// Every record of `client`'s `$all`: position, stream and id.
async fn all(client: &Client) -> Vec<(Position, String, Uuid)> {
    let options = eventstore::ReadAllOptions::default().max_count(usize::MAX);
    let mut reader = client.read_all(&options).await.expect("read_all");
    let mut records = Vec::new();
    while let Some(event) = reader.next().await.expect("next") {
        let record = event.get_original_event();
        records.push((
            Position {
                commit: record.position.commit,
                prepare: record.position.prepare,
            },
            record.stream_id.clone(),
            record.id,
        ));
    }
    records
}

/// Positions and ids of `$all` read backwards from `at` through [`ClusterRead`].
async fn backwards(reads: &impl ClusterRead, at: Position) -> Vec<(Position, Uuid)> {
    let mut records = reads.all_records(AllFrom::Position(at), Direction::Backwards, usize::MAX);
    let mut found = Vec::new();
    while let Some(item) = records.next().await {
        let (position, record) = item.expect("read");
        found.push((position, record.id));
    }
    found
}

async fn append(client: &Client, stream: &str, id: Uuid, data: &str) {
    let event = EventData::binary("Tested", data.as_bytes().to_vec().into()).id(id);
    client
        .append_to_stream(stream, &AppendToStreamOptions::default(), event)
        .await
        .expect("append");
}

/// A source with the dense workload and a v5 transaction (its first record
/// before an ordinary append, the others after it, all committed after it),
/// copied to a target by the pipeline. Returns the transaction's ids.
async fn replicated_pair() -> (TestCluster, TestCluster, Vec<Uuid>) {
    let (source, target) = (tcp_source().await, target().await);
    let client = client(&source.connection_string());
    populate(&client, 31, 120).await;
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    transaction_around_an_append(source.server(), "txn", "beside-txn", &ids).await;
    populate(&client, 32, 40).await;
    replicate(&source, &target, &MemoryCheckpointStore::new(), 50).await;
    (source, target, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_over_tcp_reports_what_verify_over_grpc_reports() {
    let (source, target_cluster, ids) = replicated_pair().await;
    let (grpc, tcp, target) = (
        reads(&source.connection_string()),
        tcp(&source),
        reads(&target_cluster.connection_string()),
    );
    let records = all(&client(&source.connection_string())).await;
    let in_transaction = records
        .iter()
        .find(|(_, _, id)| *id == ids[1])
        .expect("the transaction's second record")
        .0;
    assert_ne!(in_transaction.commit, in_transaction.prepare);
    let replicated_end = records.last().expect("records").0;

    // An identical copy, to the end and up to a bound inside the transaction.
    for until in [Until::End, Until::Including(in_transaction)] {
        let options = VerifyOptions {
            until,
            ..VerifyOptions::default()
        };
        let over_tcp = verify(&tcp, &target, &options).await.expect("verify");
        let over_grpc = verify(&grpc, &target, &options).await.expect("verify");
        assert!(over_tcp.is_identical(), "{until}: {over_tcp}");
        assert!(over_tcp.source_events > 100, "{over_tcp}");
        assert_eq!(comparable(&over_tcp), comparable(&over_grpc), "{until}");
    }

    // Differences: a second transaction the target lacks, an event the
    // target has that the source never had, one changed.
    let late: Vec<Uuid> = (0..2).map(|_| Uuid::new_v4()).collect();
    transaction_around_an_append(source.server(), "txn-late", "beside-late", &late).await;
    let extra = Uuid::new_v4();
    let (source_client, target_client) = (
        client(&source.connection_string()),
        client(&target_cluster.connection_string()),
    );
    append(&target_client, "txn", extra, "extra").await;
    let changed = Uuid::new_v4();
    append(&source_client, "changed", changed, "on the source").await;
    append(&target_client, "changed", changed, "on the target").await;

    let options = VerifyOptions {
        until: Until::End,
        ..VerifyOptions::default()
    };
    let over_tcp = verify(&tcp, &target, &options).await.expect("verify");
    let over_grpc = verify(&grpc, &target, &options).await.expect("verify");
    assert_eq!(comparable(&over_tcp), comparable(&over_grpc));
    let differences = |stream: &str| {
        over_tcp
            .streams
            .iter()
            .find(|s| s.stream == stream)
            .map(|s| s.differences.clone())
            .unwrap_or_default()
    };
    let missing: Vec<String> = differences("txn-late")
        .iter()
        .map(|d| {
            assert_eq!(d.kind, DifferenceKind::Missing, "{d}");
            d.source.clone()
        })
        .collect();
    assert_eq!(missing, [late[0].to_string(), late[1].to_string()]);
    let extra_found = differences("txn");
    assert_eq!(extra_found.len(), 1, "{over_tcp}");
    assert_eq!(extra_found[0].kind, DifferenceKind::Extra);
    assert!(extra_found[0].target.contains(&extra.to_string()));
    let content = differences("changed");
    assert_eq!(content.len(), 1, "{over_tcp}");
    assert_eq!(
        (content[0].kind, content[0].field.as_str()),
        (DifferenceKind::Content, "data")
    );
    assert_eq!(
        differences("beside-late")
            .iter()
            .map(|d| d.kind)
            .collect::<Vec<_>>(),
        [DifferenceKind::Missing]
    );
    assert_eq!(over_tcp.differences, 5, "{over_tcp}");

    // Up to the end of the first copy, the late transaction is not due yet
    // (the stream read gives no positions: coverage comes from the listing).
    let options = VerifyOptions {
        until: Until::Including(replicated_end),
        ..VerifyOptions::default()
    };
    let over_tcp = verify(&tcp, &target, &options).await.expect("verify");
    let over_grpc = verify(&grpc, &target, &options).await.expect("verify");
    assert_eq!(comparable(&over_tcp), comparable(&over_grpc));
    assert!(
        over_tcp.streams.iter().all(|s| s.stream != "txn-late"),
        "{over_tcp}"
    );
    assert!(
        over_tcp.streams.iter().any(|s| s.stream == "txn"),
        "{over_tcp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_position_over_tcp_answers_what_it_answers_over_grpc() {
    let (source, target, ids) = replicated_pair().await;
    let (grpc, tcp, target) = (
        reads(&source.connection_string()),
        tcp(&source),
        reads(&target.connection_string()),
    );
    let records = all(&client(&source.connection_string())).await;
    let mut mapped = 0;
    for order in [WriteOrder::Source, WriteOrder::Stream] {
        let options = MapOptions {
            order,
            ..MapOptions::default()
        };
        // Every eighth record (each mapping costs a few round trips), and
        // every record of the transaction and around it.
        let sampled = records
            .iter()
            .enumerate()
            .filter(|(i, (_, stream, _))| i % 8 == 0 || stream == "txn" || stream == "beside-txn");
        for (_, (position, _, _)) in sampled {
            let over_tcp: Mapping = map_position(&tcp, &target, *position, &options)
                .await
                .expect("map");
            let over_grpc = map_position(&grpc, &target, *position, &options)
                .await
                .expect("map");
            assert_eq!(over_tcp, over_grpc, "{order:?} at {position}");
            mapped += 1;
        }
    }
    assert!(mapped > 80, "{mapped} positions");

    // Inside the transaction, each record maps exactly to its own copy, and
    // so does a position just after it, before the next (whose walk back
    // starts with a backward read from inside the transaction: v5 answers
    // such a read without the transaction's records, which TcpSource reads
    // forwards instead).
    let options = MapOptions::default();
    for id in &ids {
        let (position, _, _) = records.iter().find(|(_, _, i)| i == id).expect("in $all");
        let just_after = Position {
            commit: position.commit,
            prepare: position.prepare + 1,
        };
        for at in [*position, just_after] {
            let mapping = map_position(&tcp, &target, at, &options)
                .await
                .expect("map");
            assert_eq!(
                mapping,
                map_position(&grpc, &target, at, &options)
                    .await
                    .expect("map")
            );
            let anchor = mapping.anchor.expect("an anchor");
            assert_eq!(
                (
                    anchor.event_id,
                    anchor.source_position,
                    anchor.stream.as_str()
                ),
                (*id, *position, "txn"),
                "mapping {at}"
            );
            assert_eq!(
                backwards(&tcp, at).await,
                backwards(&grpc, at).await,
                "$all read backwards from {at}"
            );
        }
    }
    for revision in 0..3 {
        let over_tcp = map_revision(&tcp, &target, "txn", revision, &options)
            .await
            .expect("map");
        let over_grpc = map_revision(&grpc, &target, "txn", revision, &options)
            .await
            .expect("map");
        assert_eq!(over_tcp, over_grpc);
        assert_eq!(over_tcp.event_id, Some(ids[revision as usize]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_user_who_may_not_read_all_is_an_error_naming_the_side_and_the_user() {
    use replicator_testkit::security::User;
    let source = replicator_testkit::EsdbServer::start_with(replicator_testkit::ServerOptions {
        users: Some(vec![User::admin(), User::new("ops", "secret")]),
        tcp_port: Some(0),
        ..Default::default()
    })
    .await
    .expect("server");
    let target = target().await;
    let address = source.tcp_address().expect("the TCP service");
    let tcp = TcpSource::new(&ConnectionString::from(format!(
        "ConnectTo=tcp://ops:secret@{address}; UseSslConnection=false"
    )))
    .expect("settings");
    let error = verify(
        &tcp,
        &reads(&target.connection_string()),
        &VerifyOptions::default(),
    )
    .await
    .expect_err("ops may not read $all");
    let text = error.to_string();
    assert!(text.starts_with("source: reading $all"), "{text}");
    assert!(
        text.contains("access to $all denied for user `ops`"),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
    let error = map_position(
        &tcp,
        &reads(&target.connection_string()),
        Position::at(0),
        &MapOptions::default(),
    )
    .await
    .expect_err("ops may not read $all");
    assert!(error.to_string().contains("`ops`"), "{error}");
}
