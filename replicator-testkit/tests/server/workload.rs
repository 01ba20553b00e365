//! The seeded generator writing through the client. (Comparing two servers it
//! filled is `replicator_esdb::verify`'s business: replicator-esdb's
//! `tests/esdb/workload_and_verify.rs`.)

use replicator_testkit::workload::{generate, WorkloadSpec};

use crate::common::Fixture;

/// `WorkloadSpec::new`, writing streams with `f`'s prefix.
fn spec(f: &Fixture, seed: u64, events: usize) -> WorkloadSpec {
    WorkloadSpec {
        stream_prefix: f.prefix().to_owned(),
        ..WorkloadSpec::new(seed, events)
    }
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
