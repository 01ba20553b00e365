//! Replays (restarts from old checkpoints, partly written batches, retried
//! failures) leave the target exactly as one clean run would.

use replicator_core::memory::MemoryCheckpointStore;
use replicator_core::{ChangeKind, CheckpointStore, Event, Position, Sink};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_from_old_checkpoints_changes_nothing_on_the_target() {
    let source = source().await;
    let target = target().await;
    populate(&client(&source.connection_string()), 2, 800).await;
    let store = MemoryCheckpointStore::new();
    replicate(&source, &target, &store, 25).await;
    let want = snapshot(&client(&source.connection_string())).await;
    let before = snapshot(&client(&target.connection_string())).await;
    assert_replica(&want, &before);

    let history = store.history();
    assert!(
        history.len() > 4,
        "checkpoint_after 25 stores many checkpoints"
    );
    // From nothing (the beginning), and from checkpoints early, halfway and late.
    let restarts = [
        None,
        Some(history[0].clone()),
        Some(history[history.len() / 2].clone()),
        Some(history[history.len() - 2].clone()),
    ];
    for checkpoint in restarts {
        let old = MemoryCheckpointStore::new();
        if let Some(checkpoint) = &checkpoint {
            old.store(checkpoint).await.unwrap();
        }
        replicate(&source, &target, &old, 25).await;
        let after = snapshot(&client(&target.connection_string())).await;
        assert_eq!(
            before.total_records,
            after.total_records,
            "restarting from {:?} wrote records again",
            checkpoint.map(|c| c.source)
        );
        assert_replica(&want, &after);
    }
}

fn numbered(stream: &str, revisions: std::ops::Range<u64>) -> Vec<Event> {
    revisions
        .map(|r| {
            user_event(stream, r, r)
                .with_revision(r)
                .with_position(Position::at(1_000 + r))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_written_batch_is_completed_without_duplicates() {
    let target = target().await;
    let sink = sink(&target, 4);
    let events = numbered("orders", 0..10);
    let first_ack = sink.write(&events[..4]).await.expect("first part");
    // A crash after part of the batch: the whole batch comes again.
    let ack = sink.write(&events).await.expect("replayed batch");
    assert!(ack.target_position > first_ack.target_position);

    let records = snapshot(&client(&target.connection_string())).await.streams["orders"].clone();
    let ids: Vec<_> = records.iter().map(|r| r.id.unwrap()).collect();
    let want: Vec<_> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids, want);
    let revisions: Vec<_> = records.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, (0..10).collect::<Vec<_>>());

    // An older batch replayed in full is a no-op that reports where it lies.
    let ack = sink.write(&events[2..6]).await.expect("old batch");
    assert!(ack.target_position.is_some());
    assert_eq!(
        snapshot(&client(&target.connection_string())).await.streams["orders"],
        records
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_tombstones_and_writes_to_tombstoned_streams_succeed() {
    let target = target().await;
    let sink = sink(&target, 1);
    let mut events = numbered("gone", 0..3);
    events.push(Event {
        event_type: "$streamDeleted".into(),
        revision: i64::MAX as u64,
        kind: ChangeKind::Tombstone,
        position: Position::at(5_000),
        ..user_event("gone", 0, 0)
    });
    sink.write(&events).await.expect("first run");
    sink.write(&events)
        .await
        .expect("replay onto a tombstoned stream");
    assert_eq!(
        read_stream(&client(&target.connection_string()), "gone").await,
        Readable::Deleted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_is_not_a_replica_is_a_permanent_error_naming_stream_and_event() {
    let target = target().await;
    let sink = sink(&target, 1);
    sink.write(&numbered("clash", 0..2)).await.unwrap();
    // Other events claiming the same revisions: not a replay.
    let strangers = numbered("clash", 0..3);
    let error = sink.write(&strangers).await.expect_err("must not write");
    assert!(!error.is_transient(), "{error}");
    let message = error.to_string();
    assert!(message.contains("`clash`"), "{message}");
    assert!(message.contains(&strangers[0].id.to_string()), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_append_failures_are_transient_and_retried_to_an_exact_copy() {
    let source = source().await;
    let target = target().await;
    populate(&client(&source.connection_string()), 3, 400).await;

    let direct = sink(&target, 1);
    // Two: however many requests a write makes (a batch append and a plain
    // one after it, or a question about the stream first), the first write
    // fails and a retry, as the pipeline makes, gets through.
    target.faults().fail_next_appends(2);
    let probe = numbered("probe", 0..1);
    let error = direct
        .write(&probe)
        .await
        .expect_err("the injected failure");
    assert!(error.is_transient(), "{error}");
    assert!(error.to_string().contains("`probe`"), "{error}");
    let mut retries = 0;
    while let Err(error) = direct.write(&probe).await {
        assert!(error.is_transient(), "{error}");
        retries += 1;
        assert!(
            retries < 3,
            "two injected failures, {retries} failed retries"
        );
    }
    assert_eq!(
        snapshot(&client(&target.connection_string())).await.streams["probe"].len(),
        1,
        "written once"
    );

    target.faults().fail_next_appends(25);
    replicate(&source, &target, &MemoryCheckpointStore::new(), 50).await;
    let want = snapshot(&client(&source.connection_string())).await;
    let mut got = snapshot(&client(&target.connection_string())).await;
    got.streams.remove("probe");
    got.readable.remove("probe");
    assert_replica(&want, &got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_first_events_the_source_lost_is_renumbered_and_replays_stay_exact() {
    let target = target().await;
    // The source scavenged revisions 0..5 of this stream: $all starts at 5.
    let events = numbered("scavenged", 5..11);
    let first = sink(&target, 1);
    first.write(&events[..4]).await.expect("renumbered write");
    first.write(&events[..4]).await.expect("replay, same sink");
    // A restarted replicator (no memory of the renumbering) replays and
    // continues.
    let restarted = sink(&target, 1);
    restarted
        .write(&events[2..4])
        .await
        .expect("replay after restart");
    restarted.write(&events).await.expect("replay and continue");

    let records = snapshot(&client(&target.connection_string())).await.streams["scavenged"].clone();
    let ids: Vec<_> = records.iter().map(|r| r.id.unwrap()).collect();
    assert_eq!(ids, events.iter().map(|e| e.id).collect::<Vec<_>>());
    let revisions: Vec<_> = records.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, (0..6).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renumbered_streams_truncate_before_keeps_hiding_what_the_source_hides() {
    let target = target().await;
    // The source lost revisions 0..5 of this stream, then truncated it
    // before revision 7: a source read returns revisions 7..11.
    let events = numbered("truncated", 5..11);
    let metadata = Event::new(
        "$$truncated",
        "$metadata",
        bytes::Bytes::from_static(br#"{"$tb":7,"owner":"ops"}"#),
    )
    .with_kind(ChangeKind::StreamMetadata)
    .with_position(Position::at(2_000));
    let mut batch = events.clone();
    batch.push(metadata.clone());
    sink(&target, 1).write(&batch).await.expect("write");
    // A replay of the metadata (same sink) is recognised, not written again.
    let same = sink(&target, 1);
    same.write(&batch).await.expect("replay");

    let client = client(&target.connection_string());
    let records = snapshot(&client).await.streams["$$truncated"].clone();
    assert_eq!(records.len(), 1, "the metadata record is written once");
    let document: serde_json::Value = serde_json::from_slice(&records[0].data).unwrap();
    assert_eq!(
        document,
        serde_json::json!({"$tb": 2, "owner": "ops"}),
        "$tb 7 in source revisions is 2 in the target's (revisions 5.. are 0.. there)"
    );
}
