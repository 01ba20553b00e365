//! A generated workload replicated with the real pipeline arrives exactly.

use replicator_core::memory::MemoryCheckpointStore;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_workload_is_replicated_exactly() {
    let source = source().await;
    let target = target().await;
    let written = populate(&client(&source.connection_string()), 1, 1_500).await;
    assert!(
        written.soft_deletes > 0
            && written.revivals > 0
            && written.tombstones > 0
            && written.metadata > 0,
        "the workload must exercise every kind of change: {written:?}"
    );

    let store = MemoryCheckpointStore::new();
    let summary = replicate(&source, &target, &store, 100).await;

    let want = snapshot(&client(&source.connection_string())).await;
    let got = snapshot(&client(&target.connection_string())).await;
    assert_replica(&want, &got);
    assert!(summary.completed);
    assert_eq!(summary.read as usize, want.total_records);
    assert!(summary.skipped > 0, "links and system events are skipped");

    // The checkpoint covers the whole source and names the target position
    // of the last write, for the cutover.
    let checkpoint = store.current().expect("a checkpoint is stored");
    assert_eq!(Some(checkpoint.source), want.last_position);
    assert_eq!(checkpoint.target, got.last_position);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_preserved_byte_for_byte() {
    let source = source().await;
    let target = target().await;
    let source_client = client(&source.connection_string());
    // Every payload kind `user_event` makes, in one stream, twice over.
    let events: Vec<_> = (0..48)
        .map(|i| replicator_esdb::to_event_data(&user_event("payloads", i, i)))
        .collect();
    source_client
        .append_to_stream("payloads", &Default::default(), events)
        .await
        .expect("append");

    replicate(&source, &target, &MemoryCheckpointStore::new(), 10).await;

    let want = snapshot(&source_client).await;
    let got = snapshot(&client(&target.connection_string())).await;
    assert_eq!(want.streams["payloads"].len(), 48);
    assert_replica(&want, &got);
    let empty = got.streams["payloads"]
        .iter()
        .filter(|r| r.data.is_empty() && r.is_json)
        .count();
    assert!(
        empty > 0,
        "empty JSON events must arrive as empty JSON events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_testkit_workload_passes_verify() {
    use replicator_esdb::verify::{verify, VerifyOptions};
    use replicator_testkit::workload::{generate, WorkloadSpec};

    let source = source().await;
    let target = target().await;
    // Every feature on, including events over 1 MiB (larger than one append's
    // byte cap) and links and system events that must not be copied.
    let summary = generate(
        &client(&source.connection_string()),
        &WorkloadSpec::new(11, 2_000),
    )
    .await
    .expect("workload");
    assert!(
        summary.large_events > 0 && summary.revived_streams > 0,
        "{summary:?}"
    );

    replicate(&source, &target, &MemoryCheckpointStore::new(), 100).await;

    let options = VerifyOptions {
        compare_revisions: true,
        ..VerifyOptions::default()
    };
    let report = verify(
        &reads(&source.connection_string()),
        &reads(&target.connection_string()),
        &options,
    )
    .await
    .expect("verify");
    assert!(report.is_identical(), "{report}");
    assert!(report.streams_compared > 0 && report.source_events > 0);
    // And our own, stricter comparison (metadata history, event ids, how
    // every stream reads).
    assert_replica(
        &snapshot(&client(&source.connection_string())).await,
        &snapshot(&client(&target.connection_string())).await,
    );
}
