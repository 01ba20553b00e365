//! The seeded generator writing through the client, and `compare` over two servers.

use eventstore::{AppendToStreamOptions, DeleteStreamOptions};
use replicator_testkit::compare::compare;
use replicator_testkit::workload::{generate, WorkloadSpec};

use crate::common::{json_event, read_all, server_and_client};

#[tokio::test]
async fn same_seed_gives_identical_servers_and_changes_are_reported() {
    let (_a, source) = server_and_client().await;
    let (_b, target) = server_and_client().await;
    let spec = WorkloadSpec {
        large_events: 1,
        ..WorkloadSpec::new(42, 600)
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

    let report = compare(&source, &target).await.expect("compare");
    assert!(report.is_identical(), "{report}");
    assert!(report.source_events > 0 && report.streams_compared > 10);

    // $all holds links, system events, metadata and a >1 MiB event.
    let all = read_all(&source).await;
    assert!(all
        .iter()
        .any(|e| e.get_original_event().event_type == "$>"));
    assert!(all
        .iter()
        .any(|e| e.get_original_event().data.len() > 1024 * 1024));

    // One more event on the target, and a deleted stream: both reported.
    let streams: Vec<String> = all
        .iter()
        .map(|e| e.get_original_event().stream_id.clone())
        .filter(|s| s.starts_with("order-"))
        .collect();
    target
        .append_to_stream(
            "brand-new",
            &AppendToStreamOptions::default(),
            vec![json_event("X", 1)],
        )
        .await
        .expect("append");
    let victim = streams.last().expect("an order stream").clone();
    let _ = target
        .delete_stream(victim.as_str(), &DeleteStreamOptions::default())
        .await;
    let report = compare(&source, &target).await.expect("compare");
    assert!(!report.is_identical());
    assert!(
        report.differences.iter().any(|d| d.stream == "brand-new"),
        "{report}"
    );
    assert!(
        report.differences.iter().any(|d| d.stream == victim),
        "{report}"
    );
}

#[tokio::test]
async fn different_seeds_differ() {
    let (_a, source) = server_and_client().await;
    let (_b, target) = server_and_client().await;
    generate(&source, &WorkloadSpec::new(1, 50))
        .await
        .expect("workload");
    generate(&target, &WorkloadSpec::new(2, 50))
        .await
        .expect("workload");
    let report = compare(&source, &target).await.expect("compare");
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
    let (_server, client) = server_and_client().await;
    let events = std::env::var("TESTKIT_BIG_WORKLOAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let started = std::time::Instant::now();
    let summary = generate(&client, &WorkloadSpec::new(9, events))
        .await
        .expect("workload");
    eprintln!(
        "generated {events} events in {:?}: {summary:?}",
        started.elapsed()
    );
    assert_eq!(summary.events_written, events);
    let user_events = read_all(&client)
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
