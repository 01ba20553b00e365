//! The scavenge filter against the test server: it keeps exactly the events a
//! read of the source still returns (the server applies `$tb`, `$maxCount`,
//! `$maxAge`, soft deletes and tombstones to reads as a scavenge would), knows
//! metadata written after the events it governs, follows metadata written
//! after it started, holds only streams with limiting metadata, survives a
//! source that is down during its start-up pass, and names a source user who
//! may not read `$all`. Two copies run through the real pipeline's transform
//! stage, one of them live.

use std::collections::BTreeMap;
use std::time::Duration;

use eventstore::{
    AppendToStreamOptions, Client, DeleteStreamOptions, EventData, TombstoneStreamOptions,
};
use futures::StreamExt;
use replicator_core::{ChangeKind, Event, Reader, SkipReason, StartFrom, Transform};
use replicator_esdb::ScavengeFilter;
use replicator_testkit::cluster::TestCluster;

use crate::common::*;

async fn append(client: &Client, stream: &str, count: usize) {
    let events: Vec<EventData> = (0..count)
        .map(|n| EventData::json("Happened", &serde_json::json!({ "n": n })).expect("json"))
        .collect();
    client
        .append_to_stream(stream, &AppendToStreamOptions::default(), events)
        .await
        .unwrap_or_else(|e| panic!("appending to {stream}: {e}"));
}

async fn set_metadata(client: &Client, stream: &str, metadata: serde_json::Value) {
    let event = EventData::json("$metadata", &metadata).expect("json");
    client
        .append_to_stream(
            format!("$${stream}"),
            &AppendToStreamOptions::default(),
            event,
        )
        .await
        .unwrap_or_else(|e| panic!("setting the metadata of {stream}: {e}"));
}

/// Reads the whole source once and passes every record the reader does not
/// skip itself through `filter`, as the pipeline does: up to
/// `filter.concurrency()` records at once, handed on in source order.
async fn filtered(source: &TestCluster, filter: &ScavengeFilter) -> Vec<Event> {
    let mut reader = reader(source, 100, false);
    let stream = reader.read(StartFrom::Beginning).await.expect("read");
    let events: Vec<Event> =
        tokio::time::timeout(PATIENCE, stream.map(|e| e.expect("event")).collect())
            .await
            .expect("the reader ends once caught up");
    futures::stream::iter(events)
        .map(|event| async move {
            if !event.kind.is_write() {
                return event;
            }
            let before = event.clone();
            let after = filter.apply(event).await.expect("apply");
            assert_eq!(
                (
                    after.id,
                    after.position,
                    after.revision,
                    &after.stream,
                    &after.data
                ),
                (
                    before.id,
                    before.position,
                    before.revision,
                    &before.stream,
                    &before.data
                ),
                "the filter changes nothing but the kind"
            );
            if before.kind != ChangeKind::Append {
                assert_eq!(
                    after.kind, before.kind,
                    "{} passes unchanged",
                    before.stream
                );
            }
            after
        })
        .buffered(filter.concurrency())
        .collect()
        .await
}

/// Revisions of each user stream's events the filter let through.
fn kept(events: &[Event]) -> BTreeMap<String, Vec<u64>> {
    let mut kept: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in events {
        match event.kind {
            ChangeKind::Append => kept
                .entry(event.stream.clone())
                .or_default()
                .push(event.revision),
            ChangeKind::Skip(SkipReason::Scavenged) => {
                kept.entry(event.stream.clone()).or_default();
            }
            _ => {}
        }
    }
    kept
}

/// What a read of each stream returns on the source now.
async fn readable(
    client: &Client,
    streams: impl Iterator<Item = &String>,
) -> BTreeMap<String, Vec<u64>> {
    let mut readable = BTreeMap::new();
    for stream in streams {
        let revisions = match read_stream(client, stream).await {
            Readable::Events(events) => events.into_iter().map(|(revision, _)| revision).collect(),
            Readable::NotFound | Readable::Deleted => Vec::new(),
        };
        readable.insert(stream.clone(), revisions);
    }
    readable
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_keeps_exactly_what_the_source_still_reads() {
    keeps_exactly_what_the_source_still_reads(false).await;
}

/// The same with a v5 source: the filter reads the metadata and the last
/// revisions over the legacy TCP protocol (`reader.protocol: tcp`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_the_filter_keeps_exactly_what_the_source_still_reads() {
    keeps_exactly_what_the_source_still_reads(true).await;
}

async fn keeps_exactly_what_the_source_still_reads(over_tcp: bool) {
    let source = if over_tcp {
        tcp_source().await
    } else {
        source().await
    };
    let client = client(&source.connection_string());
    // Streams without metadata, or with metadata that limits nothing.
    for i in 0..40 {
        append(&client, &format!("plain-{i}"), 2).await;
    }
    set_metadata(
        &client,
        "acl-only",
        serde_json::json!({"$acl": {"$r": "ops"}}),
    )
    .await;
    append(&client, "acl-only", 3).await;
    // `$maxCount` written after the events it governs, and before.
    append(&client, "capped", 6).await;
    set_metadata(&client, "capped", serde_json::json!({"$maxCount": 3})).await;
    append(&client, "capped", 4).await;
    set_metadata(&client, "capped-early", serde_json::json!({"$maxCount": 2})).await;
    append(&client, "capped-early", 5).await;
    // `$tb` after the events.
    append(&client, "truncated", 5).await;
    set_metadata(
        &client,
        "truncated",
        serde_json::json!({"$tb": 3, "owner": "x"}),
    )
    .await;
    // A limit lifted later: the old metadata record must not count.
    set_metadata(&client, "lifted", serde_json::json!({"$maxCount": 1})).await;
    append(&client, "lifted", 4).await;
    set_metadata(&client, "lifted", serde_json::json!({"owner": "x"})).await;
    // Deleted, tombstoned and recreated streams.
    append(&client, "soft-deleted", 3).await;
    client
        .delete_stream("soft-deleted", &DeleteStreamOptions::default())
        .await
        .expect("soft delete");
    append(&client, "tombstoned", 3).await;
    client
        .tombstone_stream("tombstoned", &TombstoneStreamOptions::default())
        .await
        .expect("tombstone");
    append(&client, "recreated", 3).await;
    client
        .delete_stream("recreated", &DeleteStreamOptions::default())
        .await
        .expect("soft delete");
    append(&client, "recreated", 2).await;
    // `$maxAge`: expired (the source no longer returns them), and young.
    append(&client, "expired", 2).await;
    set_metadata(&client, "expired", serde_json::json!({"$maxAge": 1})).await;
    append(&client, "young", 2).await;
    set_metadata(&client, "young", serde_json::json!({"$maxAge": 3600})).await;
    eventually("the source hides the expired events", PATIENCE, || async {
        matches!(read_stream(&client, "expired").await, Readable::Events(e) if e.is_empty())
    })
    .await;

    let filter = if over_tcp {
        ScavengeFilter::over_tcp(tcp_connection_string(&source))
    } else {
        ScavengeFilter::new(source.connection_string())
    }
    .expect("filter");
    filter.prepare().await.expect("prepare");
    let events = filtered(&source, &filter).await;
    let kept = kept(&events);
    let want = readable(&client, kept.keys()).await;
    assert_eq!(kept, want, "kept by the filter vs readable on the source");

    // The cases are really there, and decided as a server keeps them (the
    // C# tool kept one event more under `$maxCount`).
    assert_eq!(kept["capped"], [7, 8, 9]);
    assert_eq!(kept["capped-early"], [3, 4]);
    assert_eq!(kept["truncated"], [3, 4]);
    assert_eq!(kept["lifted"], [0, 1, 2, 3]);
    assert_eq!(kept["recreated"], [3, 4]);
    assert_eq!(kept["young"], [0, 1]);
    for gone in ["soft-deleted", "tombstoned", "expired"] {
        assert_eq!(kept[gone], Vec::<u64>::new(), "{gone}");
    }
    assert_eq!(kept["plain-7"], [0, 1]);
    assert_eq!(kept["acl-only"], [0, 1, 2]);
    // Metadata, soft deletes and tombstones all pass.
    for kind in [
        ChangeKind::StreamMetadata,
        ChangeKind::SoftDelete,
        ChangeKind::Tombstone,
    ] {
        assert!(events.iter().any(|e| e.kind == kind), "{kind:?} passes");
    }
    // Memory: only streams whose metadata limits something, or deleted ones
    // (capped, capped-early, truncated, soft-deleted, tombstoned, recreated,
    // expired, young), never the 40 plain ones, acl-only or lifted.
    assert_eq!(filter.tracked_streams(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_written_after_start_applies_to_later_events() {
    let source = source().await;
    let client = client(&source.connection_string());
    append(&client, "early", 2).await;
    let filter = ScavengeFilter::new(source.connection_string()).expect("filter");
    filter.prepare().await.expect("prepare");
    assert_eq!(filter.tracked_streams(), 0);

    // After the pass: new metadata, then events it governs, and a stream
    // soft-deleted before it is read.
    set_metadata(&client, "late", serde_json::json!({"$maxCount": 2})).await;
    append(&client, "late", 5).await;
    set_metadata(&client, "early", serde_json::json!({"$tb": 1})).await;
    append(&client, "early", 1).await;

    let first = kept(&filtered(&source, &filter).await);
    // `late`: its last revision is read once (4), so 3 and 4 are the last two.
    assert_eq!(first["late"], [3, 4]);
    // `early`: revision 0 passed before its `$tb` was written: the filter
    // judges an event by what is known when it passes, never afterwards.
    assert_eq!(first["early"], [0, 1, 2]);
    assert_eq!(filter.tracked_streams(), 2);
    // A second round over the same records (a replay from an older
    // checkpoint) now knows `early`'s `$tb`, as a scavenge run now would.
    let again = kept(&filtered(&source, &filter).await);
    assert_eq!(again["early"], [1, 2]);
    assert_eq!(again["late"], [3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_down_during_the_pass_is_a_transient_error_until_it_is_back() {
    let source = source().await;
    let client = client(&source.connection_string());
    append(&client, "capped", 4).await;
    set_metadata(&client, "capped", serde_json::json!({"$maxCount": 1})).await;
    let event = {
        let mut reader = reader(&source, 100, false);
        let mut stream = reader.read(StartFrom::Beginning).await.expect("read");
        stream.next().await.expect("an event").expect("event")
    };
    assert_eq!((event.stream.as_str(), event.revision), ("capped", 0));

    source.stop().await;
    let filter = ScavengeFilter::new(source.connection_string())
        .expect("filter")
        .with_request_timeout(Duration::from_millis(500));
    let error = filter
        .apply(event.clone())
        .await
        .expect_err("source is down");
    assert!(error.is_transient(), "{error}");
    assert!(
        error
            .message()
            .contains("still reading the source's stream metadata"),
        "{error}"
    );
    // Once the first attempt has failed, the answer says why at once.
    eventually("the filter reports the failed attempt", PATIENCE, || {
        let filter = &filter;
        let event = event.clone();
        async move {
            let error = filter.apply(event).await.expect_err("source is down");
            error.is_transient() && error.message().contains("the last attempt failed")
        }
    })
    .await;

    source.restart().await.expect("restart");
    let started = tokio::time::Instant::now();
    let judged = loop {
        match filter.apply(event.clone()).await {
            Ok(event) => break event.kind,
            Err(error) => assert!(error.is_transient(), "{error}"),
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the filter still fails after the source came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(judged, ChangeKind::Skip(SkipReason::Scavenged));
    assert_eq!(filter.tracked_streams(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_source_needs_no_metadata() {
    let source = source().await;
    let filter = ScavengeFilter::new(source.connection_string()).expect("filter");
    filter.prepare().await.expect("prepare");
    assert_eq!(filter.tracked_streams(), 0);
    // A stream that appears afterwards with a limit is followed from the
    // records passing through.
    let client = client(&source.connection_string());
    set_metadata(&client, "new", serde_json::json!({"$tb": 2})).await;
    append(&client, "new", 3).await;
    let after = kept(&filtered(&source, &filter).await);
    assert_eq!(after["new"], [2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scavenged_copy_holds_exactly_the_events_the_source_still_reads() {
    let source = source().await;
    let target = target().await;
    let client = client(&source.connection_string());
    append(&client, "plain", 2).await;
    append(&client, "capped", 6).await;
    set_metadata(&client, "capped", serde_json::json!({"$maxCount": 2})).await;
    append(&client, "truncated", 5).await;
    set_metadata(&client, "truncated", serde_json::json!({"$tb": 3})).await;
    append(&client, "soft-deleted", 3).await;
    client
        .delete_stream("soft-deleted", &DeleteStreamOptions::default())
        .await
        .expect("soft delete");
    append(&client, "tombstoned", 3).await;
    client
        .tombstone_stream("tombstoned", &TombstoneStreamOptions::default())
        .await
        .expect("tombstone");
    append(&client, "recreated", 3).await;
    client
        .delete_stream("recreated", &DeleteStreamOptions::default())
        .await
        .expect("soft delete");
    append(&client, "recreated", 2).await;

    let filter = ScavengeFilter::new(source.connection_string()).expect("filter");
    filter.prepare().await.expect("prepare");
    let store = replicator_core::memory::MemoryCheckpointStore::default();
    let pipeline =
        replicator_core::Pipeline::builder(reader(&source, 100, false), sink(&target, 4), store)
            .config(pipeline_config(10))
            .transform(filter)
            .build();
    let progress = pipeline.progress();
    tokio::time::timeout(
        PATIENCE,
        pipeline.run(tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("in time")
    .expect("replication");
    // capped 4, truncated 3, soft-deleted 3, tombstoned 3, recreated 3.
    assert_eq!(progress.borrow().skipped_by_reason.scavenged, 16);

    let target_client = crate::common::client(&target.connection_string());
    let ids = |readable: Readable| match readable {
        Readable::Events(events) => Ok(events.into_iter().map(|(_, id)| id).collect::<Vec<_>>()),
        Readable::NotFound => Err("not found"),
        Readable::Deleted => Err("deleted"),
    };
    for stream in ["plain", "capped", "soft-deleted", "tombstoned"] {
        assert_eq!(
            ids(read_stream(&target_client, stream).await),
            ids(read_stream(&client, stream).await),
            "`{stream}` reads on the target as on the source"
        );
    }
    // Streams whose `$tb` cut their first events: the events the source still
    // returns are each on the target once, and nothing else of the stream.
    // KNOWN GAP (the sink's, not the filter's): the sink renumbers such a
    // stream from 0 on an empty target but writes the source's `$tb`
    // unshifted, so a read of the target stream hides them. A source
    // scavenged for real meets the same gap without this filter.
    let mut on_target: BTreeMap<uuid::Uuid, (String, usize)> = BTreeMap::new();
    for (stream, records) in snapshot(&target_client).await.streams {
        for id in records.into_iter().filter_map(|r| r.id) {
            on_target.entry(id).or_insert((stream.clone(), 0)).1 += 1;
        }
    }
    for stream in ["truncated", "recreated"] {
        let want = ids(read_stream(&client, stream).await).expect("readable on the source");
        assert_eq!(want.len(), 2, "{stream}");
        let copied: Vec<uuid::Uuid> = on_target
            .iter()
            .filter(|(_, (s, _))| s == stream)
            .map(|(id, (_, count))| {
                assert_eq!(*count, 1, "{id} of `{stream}` is on the target once");
                *id
            })
            .collect();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        assert_eq!(
            copied, want_sorted,
            "`{stream}` on the target holds what the source reads"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_user_who_may_not_read_all_is_a_permanent_error_saying_so() {
    use replicator_testkit::security::User;
    let server = replicator_testkit::EsdbServer::start_with(replicator_testkit::ServerOptions {
        users: Some(vec![User::admin(), User::new("ops", "secret")]),
        ..Default::default()
    })
    .await
    .expect("server");
    let filter = ScavengeFilter::new(server.connection_string_with(Some(("ops", "secret")), None))
        .expect("filter");
    let error = tokio::time::timeout(PATIENCE, filter.prepare())
        .await
        .expect("a refusal is not retried for ever")
        .expect_err("ops may not read $all");
    assert!(!error.is_transient(), "{error}");
    assert!(error.message().contains("access denied"), "{error}");
    assert!(error.message().contains("read $all"), "{error}");
    assert!(!error.message().contains("secret"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_a_source_user_who_may_not_read_all_is_a_permanent_error_saying_so() {
    use replicator_testkit::security::User;
    let server = replicator_testkit::EsdbServer::start_with(replicator_testkit::ServerOptions {
        users: Some(vec![User::admin(), User::new("ops", "secret")]),
        tcp_port: Some(0),
        ..Default::default()
    })
    .await
    .expect("server");
    let address = server.tcp_address().expect("the TCP service");
    let filter = ScavengeFilter::over_tcp(format!(
        "ConnectTo=tcp://ops:secret@{address}; UseSslConnection=false"
    ))
    .expect("filter");
    let error = tokio::time::timeout(PATIENCE, filter.prepare())
        .await
        .expect("a refusal is not retried for ever")
        .expect_err("ops may not read $all");
    assert!(!error.is_transient(), "{error}");
    assert!(error.message().contains("access denied"), "{error}");
    assert!(error.message().contains("read $all"), "{error}");
    assert!(!error.message().contains("secret"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_with_new_metadata_is_scavenged_as_it_arrives() {
    let source = source().await;
    let target = target().await;
    let client = client(&source.connection_string());
    let target_client = crate::common::client(&target.connection_string());
    append(&client, "before", 1).await;
    let filter = ScavengeFilter::new(source.connection_string()).expect("filter");
    filter.prepare().await.expect("prepare");
    let store = replicator_core::memory::MemoryCheckpointStore::default();
    let pipeline =
        replicator_core::Pipeline::builder(reader(&source, 100, true), sink(&target, 4), store)
            .config(pipeline_config(1))
            .transform(filter)
            .build();
    let progress = pipeline.progress();
    let cancel = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(pipeline.run(cancel.clone()));
    eventually("the copy catches up", PATIENCE, || async {
        matches!(read_stream(&target_client, "before").await, Readable::Events(e) if e.len() == 1)
    })
    .await;

    // Live: a new stream's `$maxCount` and three events in one append, all
    // after the pass ended.
    set_metadata(&client, "live", serde_json::json!({"$maxCount": 1})).await;
    append(&client, "live", 3).await;
    let Readable::Events(on_source) = read_stream(&client, "live").await else {
        panic!("live reads on the source");
    };
    let last = on_source.last().expect("an event").1;
    eventually(
        "the live stream's last event is copied",
        PATIENCE,
        || async {
            // Renumbered on the target: compare ids.
            matches!(read_stream(&target_client, "live").await,
            Readable::Events(e) if e.iter().map(|(_, id)| *id).eq([last]))
        },
    )
    .await;
    cancel.cancel();
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("stops")
        .expect("no panic")
        .expect("no error");
    // Left out, not merely hidden by the target's `$maxCount`.
    let copied = snapshot(&target_client).await.streams["live"].len();
    assert_eq!(copied, 1, "only the last event of `live` is on the target");
    assert_eq!(progress.borrow().skipped_by_reason.scavenged, 2);
}
