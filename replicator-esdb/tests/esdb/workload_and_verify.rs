//! `replicator_esdb::verify` over two servers filled by the testkit's seeded
//! workload generator (these tests were the testkit's own, of its former
//! `compare` adapter over `verify`).
//!
//! The workload goes to the source cluster (in-process, or `ESDB_SOURCE_URL`)
//! and to a fresh in-process server: against a real cluster, verifying the
//! two checks that the in-process server stores the same workload the way the
//! real one does. The streams carry a prefix unique to the test and only those
//! are compared ([`VerifyOptions::stream_prefix`]).

use eventstore::{
    AppendToStreamOptions, Client, DeleteStreamOptions, EventData, ReadAllOptions, ResolvedEvent,
};
use replicator_esdb::verify::{verify, DifferenceKind, VerifyOptions, VerifyReport};
use replicator_testkit::workload::{generate, WorkloadSpec, LARGE_EVENT_SIZE};
use replicator_testkit::EsdbServer;
use uuid::Uuid;

use crate::common::{client, reads, source};

/// A fresh in-process server and its client.
async fn in_process() -> (EsdbServer, Client) {
    let server = EsdbServer::start().await.expect("server starts");
    let settings = server.connection_string().parse().expect("settings");
    let client = Client::new(settings).expect("client");
    (server, client)
}

/// A prefix unique to the test (`t1a2b3c4d-`).
fn new_prefix() -> String {
    format!("t{}-", &Uuid::new_v4().simple().to_string()[..8])
}

/// `verify`, over the streams starting with `prefix`.
async fn verify_prefix(prefix: &str, source: &str, target: &str) -> VerifyReport {
    let (source, target) = (&reads(source), &reads(target));
    let options = VerifyOptions {
        stream_prefix: prefix.to_owned(),
        ..VerifyOptions::default()
    };
    verify(source, target, &options).await.expect("verify")
}

/// `WorkloadSpec::new`, writing streams with `prefix`.
fn spec(prefix: &str, seed: u64, events: usize) -> WorkloadSpec {
    WorkloadSpec {
        stream_prefix: prefix.to_owned(),
        ..WorkloadSpec::new(seed, events)
    }
}

/// Everything in `client`'s `$all`, forwards.
async fn all(client: &Client) -> Vec<ResolvedEvent> {
    let options = ReadAllOptions::default().max_count(usize::MAX);
    let mut reader = client.read_all(&options).await.expect("read_all");
    let mut events = Vec::new();
    while let Some(event) = reader.next().await.expect("read_all next") {
        events.push(event);
    }
    events
}

fn json_event(event_type: &str, n: u64) -> EventData {
    EventData::json(event_type, &serde_json::json!({ "n": n })).expect("json")
}

/// The user streams named in `report`'s differences.
fn differing_streams(report: &VerifyReport) -> Vec<&str> {
    report.streams.iter().map(|s| s.stream.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_gives_identical_servers_and_changes_are_reported() {
    let cluster = source().await;
    let source = client(&cluster.connection_string());
    let prefix = new_prefix();
    let (_b, target) = in_process().await;
    let spec = WorkloadSpec {
        large_events: 1,
        ..spec(&prefix, 42, 600)
    };
    let summary_a = generate(&source, &spec).await.expect("workload on source");
    let summary_b = generate(&target, &spec).await.expect("workload on target");
    assert_eq!(summary_a.events_written, 600);
    assert!(
        summary_a.soft_deletes > 0 && summary_a.tombstones > 0 && summary_a.metadata_writes > 0
    );
    assert!(summary_a.links > 0 && summary_a.system_events > 0 && summary_a.large_events == 1);
    assert_eq!(
        (
            summary_a.events_written,
            summary_a.streams,
            summary_a.tombstones
        ),
        (
            summary_b.events_written,
            summary_b.streams,
            summary_b.tombstones
        )
    );

    let report = verify_prefix(
        &prefix,
        &cluster.connection_string(),
        &_b.connection_string(),
    )
    .await;
    assert!(report.is_identical(), "{report}");
    assert!(report.source_events > 0 && report.streams_compared > 10);

    // $all holds links, system events, metadata and a large event.
    let all = all(&source).await;
    assert!(all
        .iter()
        .any(|e| e.get_original_event().event_type == "$>"));
    assert!(all
        .iter()
        .any(|e| e.get_original_event().data.len() == LARGE_EVENT_SIZE));

    // One more event on the target, and a deleted stream: both reported.
    let streams: Vec<String> = all
        .iter()
        .map(|e| e.get_original_event().stream_id.clone())
        .filter(|s| s.starts_with(&format!("{prefix}order-")))
        .collect();
    let brand_new = format!("{prefix}brand-new");
    target
        .append_to_stream(
            brand_new.as_str(),
            &AppendToStreamOptions::default(),
            vec![json_event("X", 1)],
        )
        .await
        .expect("append");
    let victim = streams.last().expect("an order stream").clone();
    let _ = target
        .delete_stream(victim.as_str(), &DeleteStreamOptions::default())
        .await;
    let report = verify_prefix(
        &prefix,
        &cluster.connection_string(),
        &_b.connection_string(),
    )
    .await;
    assert!(!report.is_identical());
    assert!(
        differing_streams(&report).contains(&brand_new.as_str()),
        "{report}"
    );
    assert!(
        differing_streams(&report).contains(&victim.as_str()),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_the_all_order_unless_told_not_to() {
    let cluster = source().await;
    let source = client(&cluster.connection_string());
    let prefix = new_prefix();
    let (_b, target) = in_process().await;
    let (a, b) = (format!("{prefix}order-a"), format!("{prefix}order-b"));
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let append = |client: Client, stream: String, id: Uuid| async move {
        client
            .append_to_stream(
                stream,
                &AppendToStreamOptions::default(),
                json_event("X", 1).id(id),
            )
            .await
            .expect("append");
    };
    append(source.clone(), a.clone(), first).await;
    append(source.clone(), b.clone(), second).await;
    append(target.clone(), b.clone(), second).await;
    append(target.clone(), a.clone(), first).await;

    let report = verify_prefix(
        &prefix,
        &cluster.connection_string(),
        &_b.connection_string(),
    )
    .await;
    assert!(!report.is_identical(), "{report}");
    let order = report.order.as_ref().expect("an order difference");
    assert_eq!(
        (order.first.id, order.second.id),
        (first, second),
        "{report}"
    );
    assert_eq!((&order.first.stream, &order.second.stream), (&a, &b));
    // The order is the only difference: every stream holds the same events.
    assert_eq!(report.differences, 0, "{report}");

    let options = VerifyOptions {
        stream_prefix: prefix.clone(),
        check_order: false,
        ..VerifyOptions::default()
    };
    let report = verify(
        &reads(&cluster.connection_string()),
        &reads(&_b.connection_string()),
        &options,
    )
    .await
    .expect("verify");
    assert!(report.is_identical(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_seeds_differ() {
    let cluster = source().await;
    let source = client(&cluster.connection_string());
    let prefix = new_prefix();
    let (_b, target) = in_process().await;
    generate(&source, &spec(&prefix, 1, 50))
        .await
        .expect("workload");
    generate(&target, &spec(&prefix, 2, 50))
        .await
        .expect("workload");
    let report = verify_prefix(
        &prefix,
        &cluster.connection_string(),
        &_b.connection_string(),
    )
    .await;
    assert!(!report.is_identical());
    // Other events (a different event id, or one side only) or another
    // deletion state.
    assert!(
        report.streams.iter().flat_map(|s| &s.differences).any(|d| {
            matches!(
                d.kind,
                DifferenceKind::Missing | DifferenceKind::Extra | DifferenceKind::Deletion
            ) || d.field == "event id"
        }),
        "{report}"
    );
}
