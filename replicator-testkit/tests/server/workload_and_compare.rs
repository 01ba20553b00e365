//! The seeded generator writing through the client, and `compare` over two servers.
//!
//! The workload goes to the cluster under test (in-process, or `ESDB_URL`) and to a
//! fresh in-process server: against a real cluster, comparing the two checks that
//! the in-process server stores the same workload the way the real one does. The
//! streams carry the fixture's prefix and only those are compared, so a cluster
//! holding other data (earlier runs) does not disturb the comparison.

use eventstore::{AppendToStreamOptions, Client, DeleteStreamOptions};
use replicator_testkit::compare::{compare_with, CompareOptions, CompareReport};
use replicator_testkit::workload::{generate, WorkloadSpec};
use replicator_testkit::EsdbServer;

use crate::common::{client_for, json_event, Fixture};

/// A fresh in-process server and its client.
async fn in_process() -> (EsdbServer, Client) {
    let server = EsdbServer::start().await.expect("server starts");
    let client = client_for(&server.connection_string());
    (server, client)
}

/// `compare`, over the streams of `f`'s run.
async fn compare(f: &Fixture, source: &Client, target: &Client) -> CompareReport {
    let options = CompareOptions {
        stream_prefix: f.prefix().to_owned(),
        ..CompareOptions::default()
    };
    compare_with(source, target, &options)
        .await
        .expect("compare")
}

/// `WorkloadSpec::new`, writing streams with `f`'s prefix.
fn spec(f: &Fixture, seed: u64, events: usize) -> WorkloadSpec {
    WorkloadSpec {
        stream_prefix: f.prefix().to_owned(),
        ..WorkloadSpec::new(seed, events)
    }
}

#[tokio::test]
async fn same_seed_gives_identical_servers_and_changes_are_reported() {
    let f = Fixture::new().await;
    let source = f.client.clone();
    let (_b, target) = in_process().await;
    let spec = WorkloadSpec {
        large_events: 1,
        ..spec(&f, 42, 600)
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

    let report = compare(&f, &source, &target).await;
    assert!(report.is_identical(), "{report}");
    assert!(report.source_events > 0 && report.streams_compared > 10);

    // $all holds links, system events, metadata and a large event.
    let all = f.all().await;
    assert!(all
        .iter()
        .any(|e| e.get_original_event().event_type == "$>"));
    assert!(all.iter().any(
        |e| e.get_original_event().data.len() == replicator_testkit::workload::LARGE_EVENT_SIZE
    ));

    // One more event on the target, and a deleted stream: both reported.
    let streams: Vec<String> = all
        .iter()
        .map(|e| e.get_original_event().stream_id.clone())
        .filter(|s| s.starts_with(&f.stream("order-")))
        .collect();
    let brand_new = f.stream("brand-new");
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
    let report = compare(&f, &source, &target).await;
    assert!(!report.is_identical());
    assert!(
        report.differences.iter().any(|d| d.stream == brand_new),
        "{report}"
    );
    assert!(
        report.differences.iter().any(|d| d.stream == victim),
        "{report}"
    );
}

#[tokio::test]
async fn compare_checks_the_all_order_unless_told_not_to() {
    let f = Fixture::new().await;
    let (_b, target) = in_process().await;
    let (a, b) = (f.stream("order-a"), f.stream("order-b"));
    let (first, second) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let append = |client: Client, stream: String, id: uuid::Uuid| async move {
        client
            .append_to_stream(
                stream,
                &AppendToStreamOptions::default(),
                json_event("X", 1).id(id),
            )
            .await
            .expect("append");
    };
    append(f.client.clone(), a.clone(), first).await;
    append(f.client.clone(), b.clone(), second).await;
    append(target.clone(), b.clone(), second).await;
    append(target.clone(), a.clone(), first).await;

    let report = compare(&f, &f.client, &target).await;
    assert!(!report.is_identical(), "{report}");
    let order = report.order.as_ref().expect("an order difference");
    assert_eq!(
        (order.first.id, order.second.id),
        (first, second),
        "{report}"
    );
    assert_eq!((&order.first.stream, &order.second.stream), (&a, &b));
    assert_eq!(report.difference_count, 1, "{report}");
    assert_eq!(report.differences[0].field, "order", "{report}");

    let options = CompareOptions {
        stream_prefix: f.prefix().to_owned(),
        check_order: false,
        ..CompareOptions::default()
    };
    let report = compare_with(&f.client, &target, &options)
        .await
        .expect("compare");
    assert!(report.is_identical(), "{report}");
}

#[tokio::test]
async fn different_seeds_differ() {
    let f = Fixture::new().await;
    let (_b, target) = in_process().await;
    generate(&f.client, &spec(&f, 1, 50))
        .await
        .expect("workload");
    generate(&target, &spec(&f, 2, 50)).await.expect("workload");
    let report = compare(&f, &f.client, &target).await;
    assert!(!report.is_identical());
    let fields = ["event id", "event count", "deleted"];
    assert!(
        report
            .differences
            .iter()
            .any(|d| fields.contains(&d.field.as_str())),
        "{report}"
    );
}

#[tokio::test]
async fn generator_writes_a_large_workload_exactly() {
    let f = Fixture::new().await;
    let events = std::env::var("TESTKIT_BIG_WORKLOAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let started = std::time::Instant::now();
    let summary = generate(&f.client, &spec(&f, 9, events))
        .await
        .expect("workload");
    eprintln!(
        "generated {events} events in {:?}: {summary:?}",
        started.elapsed()
    );
    assert_eq!(summary.events_written, events);
    let user_events = f
        .all()
        .await
        .iter()
        .filter(|e| {
            let e = e.get_original_event();
            !e.stream_id.starts_with('$') && !e.event_type.starts_with('$')
        })
        .count();
    assert_eq!(
        user_events, events,
        "every user event is in $all exactly once"
    );
}
