//! `filters` and the `transform.originalMetadata` opt-in in the C# tool's
//! YAML, end to end: `replicator run` between two in-process servers.

use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    assert_fails_naming, assert_ok, command, gate_spent_or_ended, run_async, spawn_run, stderr,
    stdout, Clusters, Workdir,
};

/// Appends JSON events of these types to `stream` in one append, with
/// `metadata`; returns their ids.
async fn append(
    client: &eventstore::Client,
    stream: &str,
    types: &[&str],
    metadata: Option<Value>,
) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut events = Vec::new();
    for (n, event_type) in types.iter().enumerate() {
        let id = Uuid::new_v4();
        let mut event = eventstore::EventData::json(*event_type, &json!({ "n": n }))
            .unwrap()
            .id(id);
        if let Some(metadata) = &metadata {
            event = event.metadata_as_json(metadata).unwrap();
        }
        events.push(event);
        ids.push(id);
    }
    // One append: the events are one transaction, in order.
    client
        .append_to_stream(stream, &Default::default(), events)
        .await
        .unwrap();
    ids
}

async fn set_metadata(client: &eventstore::Client, stream: &str, metadata: Value) {
    let event = eventstore::EventData::json("$metadata", &metadata).unwrap();
    client
        .append_to_stream(format!("$${stream}"), &Default::default(), event)
        .await
        .unwrap();
}

/// A stream's events as `(id, type, metadata bytes)`; empty when it does not
/// exist (or reads as deleted).
async fn read(client: &eventstore::Client, stream: &str) -> Vec<(Uuid, String, Vec<u8>)> {
    let options = eventstore::ReadStreamOptions::default().max_count(1000);
    let Ok(mut events) = client.read_stream(stream, &options).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    loop {
        match events.next().await {
            Ok(Some(e)) => {
                let e = e.get_original_event();
                out.push((e.id, e.event_type.clone(), e.custom_metadata.to_vec()));
            }
            Ok(None) | Err(eventstore::Error::ResourceNotFound) => return out,
            Err(eventstore::Error::ResourceDeleted) => return out,
            Err(e) => panic!("reading {stream}: {e}"),
        }
    }
}

fn ids(events: &[(Uuid, String, Vec<u8>)]) -> Vec<Uuid> {
    events.iter().map(|e| e.0).collect()
}

/// Every event id in a server's `$all`.
async fn ids_in_all(client: &eventstore::Client) -> Vec<Uuid> {
    let options = eventstore::ReadAllOptions::default().max_count(100_000);
    let mut all = client.read_all(&options).await.unwrap();
    let mut ids = Vec::new();
    while let Some(e) = all.next().await.unwrap() {
        ids.push(e.get_original_event().id);
    }
    ids
}

const FILTERS: &str = r#"  runContinuously: false
  checkpoint:
    checkpointAfter: 3
  filters:
    - type: streamName
      include: "^(orders|test)-"
    - type: streamName
      exclude: "^test-(?=orders)"
    - type: eventType
      include: "^Order(?!Test)"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_leave_out_streams_with_their_metadata_and_deletes_and_event_types_only_from_events(
) {
    let c = Clusters::start().await;
    let s = &c.source_client;
    // Kept stream: the event type filter leaves out OrderTest (a lookahead),
    // but not the stream's metadata (the C# tool dropped it: `$metadata`).
    let orders = append(
        s,
        "orders-1",
        &["OrderPlaced", "OrderTest", "OrderShipped"],
        None,
    )
    .await;
    set_metadata(s, "orders-1", json!({ "owner": "sales" })).await;
    // Kept stream, soft-deleted: its delete is replicated.
    let deleted = append(s, "orders-2", &["OrderPlaced"], None).await;
    s.delete_stream("orders-2", &Default::default())
        .await
        .unwrap();
    // Left out by the lookahead stream filter: events, metadata, tombstone.
    append(s, "test-orders-1", &["OrderPlaced"], None).await;
    set_metadata(s, "test-orders-1", json!({ "owner": "qa" })).await;
    s.tombstone_stream("test-orders-1", &Default::default())
        .await
        .unwrap();
    // Kept stream name (test- but not test-orders), one type left out.
    let users = append(s, "test-users-1", &["OrderPlaced", "UserCreated"], None).await;
    // Left out by the include.
    append(s, "customer-1", &["OrderPlaced"], None).await;

    let w = c.workdir(FILTERS);
    let o = run_async(&w, &["run"]).await;
    assert_ok(&o);

    let t = &c.target_client;
    assert_eq!(ids(&read(t, "orders-1").await), vec![orders[0], orders[2]]);
    let meta = read(t, "$$orders-1").await;
    assert_eq!(meta.len(), 1, "the kept stream's metadata is replicated");
    assert_eq!(ids(&read(t, "test-users-1").await), vec![users[0]]);
    assert!(read(t, "customer-1").await.is_empty());
    assert!(read(t, "test-orders-1").await.is_empty());
    assert!(
        read(t, "$$test-orders-1").await.is_empty(),
        "a filtered stream's metadata goes with it"
    );
    // The filtered stream's tombstone was not replicated: it can be written.
    append(t, "test-orders-1", &["Probe"], None).await;
    // The kept stream's soft delete was: its event is in $all but the stream
    // reads as deleted.
    assert!(ids_in_all(t).await.contains(&deleted[0]));
    assert!(read(t, "orders-2").await.is_empty());
    assert!(!read(t, "$$orders-2").await.is_empty());

    // Skipped records are checkpointed: the checkpoint is at the source's
    // last record, customer-1's event, which was filtered.
    let o = run_async(&w, &["checkpoint", "show"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains(&format!("source:   {} ", c.source_end().await)),
        "{out}"
    );
    // A second run finds nothing to read.
    let mut cmd = command(w.dir.path());
    cmd.arg("run").env("RUST_LOG", "info");
    let o = tokio::process::Command::from(cmd).output().await.unwrap();
    assert_ok(&o);
    let log = format!("{}{}", stdout(&o), stderr(&o));
    let stopped = log
        .lines()
        .find(|l| l.contains("Replicator stopped"))
        .unwrap_or_else(|| panic!("no summary line:\n{log}"));
    assert!(stopped.contains("read=0"), "{stopped}");
}

#[test]
fn a_bad_filter_pattern_stops_the_start_naming_the_key_and_the_pattern() {
    let w = Workdir::with_config(
        "  filters:\n    - type: eventType\n      include: Order\n    - type: streamName\n      exclude: '(?<=test'\n",
    );
    let o = w.run(&["run"], &[]);
    assert_fails_naming(&o, &["replicator.filters[1].exclude", "(?<=test"]);
    let o = w.run(
        &["run"],
        &[
            ("REPLICATOR_FILTERS_0_TYPE", "category"),
            ("REPLICATOR_FILTERS_0_INCLUDE", "x"),
        ],
    );
    assert_fails_naming(
        &o,
        &[
            "replicator.filters[0].type",
            "category",
            "REPLICATOR_FILTERS_0_TYPE",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_metadata_adds_the_csharp_default_transform_keys_when_opted_in() {
    let c = Clusters::start().await;
    let s = &c.source_client;
    append(
        s,
        "orders-1",
        &["OrderPlaced"],
        Some(json!({ "user": "a" })),
    )
    .await;
    append(s, "orders-1", &["OrderShipped"], None).await;
    let source = read(s, "orders-1").await;
    let w = c.workdir(
        "  runContinuously: false\n  transform:\n    type: default\n    originalMetadata: true\n",
    );
    let o = run_async(&w, &["run"]).await;
    assert_ok(&o);

    let target = read(&c.target_client, "orders-1").await;
    assert_eq!(ids(&target), ids(&source));
    let options = eventstore::ReadStreamOptions::default().max_count(10);
    let mut positions = Vec::new();
    let mut read_source = s.read_stream("orders-1", &options).await.unwrap();
    while let Some(e) = read_source.next().await.unwrap() {
        positions.push(e.get_original_event().position.commit);
    }
    for (n, (_, _, metadata)) in target.iter().enumerate() {
        let m: Value = serde_json::from_slice(metadata).unwrap();
        assert_eq!(m["$originalEventNumber"], n as u64, "{m}");
        assert_eq!(m["$originalPosition"], positions[n], "{m}");
        let date = m["$originalCreatedDate"].as_str().unwrap();
        assert!(
            date.len() >= 25 && date.ends_with("+00:00") && date.as_bytes()[10] == b'T',
            "{date}"
        );
    }
    let first: Value = serde_json::from_slice(&target[0].2).unwrap();
    assert_eq!(first["user"], "a", "the event's own metadata is kept");

    // Off by default: byte for byte.
    let c = Clusters::start().await;
    append(
        &c.source_client,
        "orders-1",
        &["OrderPlaced"],
        Some(json!({ "user": "a" })),
    )
    .await;
    let w = c.workdir("  runContinuously: false\n");
    assert_ok(&run_async(&w, &["run"]).await);
    let target = read(&c.target_client, "orders-1").await;
    let m: Value = serde_json::from_slice(&target[0].2).unwrap();
    assert_eq!(m, json!({ "user": "a" }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_an_event_type_filter_killed_mid_copy_and_restarted_writes_each_kept_event_once_in_order(
) {
    let c = Clusters::start().await;
    const STREAMS: usize = 8;
    const ROUNDS: usize = 30;
    let mut kept: Vec<Vec<Uuid>> = vec![Vec::new(); STREAMS];
    // Streams interleave in $all, and every third event of each is left out
    // from the middle of its stream (the CLI then has the sink track target
    // revisions). A first run copies what there is and stores a checkpoint;
    // then the streams go on, and a run is killed mid-copy. The restart
    // replays from that checkpoint, in the middle of every stream: nothing
    // may be written twice or lost.
    rounds(&c.source_client, ROUNDS, &mut kept).await;
    let w = c.workdir(
        "  runContinuously: false\n  restartOnFailure: false\n  checkpoint:\n    checkpointAfter: 1\n  filters:\n    - type: eventType\n      exclude: \"Test$\"\n",
    );
    assert_ok(&run_async(&w, &["run"]).await);
    let first = ids_in_all(&c.target_client).await.len();
    assert_eq!(
        first,
        STREAMS * ROUNDS * 2,
        "the first run copies what there is"
    );

    rounds(&c.source_client, ROUNDS, &mut kept).await;
    // Then a run whose target writes go through one at a time, killed
    // after the first that adds events: it is mid-copy whatever the machine
    // (each stream has new events, so the copy needs an append to each),
    // and has written past the stored checkpoint. (Its first writes may
    // write nothing: the sink asks the target where each known stream ends
    // with an append the target refuses.)
    let gate = c.target.faults();
    gate.hold_writes_after(0);
    let mut child = spawn_run(&w, None);
    let mut writes = 0;
    let partial = loop {
        assert!(
            writes < 100,
            "none of {writes} target writes of the run added events"
        );
        gate.hold_writes_after(1);
        let ended = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            gate_spent_or_ended(&gate, &mut child),
        )
        .await
        .unwrap_or_else(|_| panic!("the run made no write {} within 120 s", writes + 1));
        if let Some(status) = ended {
            panic!(
                "the run ended ({status:?}) after {writes} target writes: the copy needs one \
                 to each of {STREAMS} streams"
            );
        }
        writes += 1;
        let now = ids_in_all(&c.target_client).await.len();
        if now > first {
            break now;
        }
    };
    child.kill().await.unwrap();
    assert!(
        partial < STREAMS * ROUNDS * 4,
        "killed mid-copy, after {writes} writes: {partial}"
    );
    gate.release_writes();

    let o = run_async(&w, &["run"]).await;
    assert_ok(&o);
    for (k, want) in kept.iter().enumerate() {
        let stream = format!("orders-{k}");
        assert_eq!(
            &ids(&read(&c.target_client, &stream).await),
            want,
            "{stream}: each kept event once, in order"
        );
    }
}

/// Appends `rounds` rounds to the streams `orders-0…`: in each, three
/// events to every stream, the second of which the filter leaves out;
/// records the ids of the others in `kept`.
async fn rounds(client: &eventstore::Client, rounds: usize, kept: &mut [Vec<Uuid>]) {
    for _ in 0..rounds {
        // The streams of a round concurrently (the source's appends take a
        // while each), in any order among themselves.
        let mut appends = tokio::task::JoinSet::new();
        for k in 0..kept.len() {
            let client = client.clone();
            appends.spawn(async move {
                let stream = format!("orders-{k}");
                let types = ["OrderPlaced", "OrderTest", "OrderShipped"];
                (k, append(&client, &stream, &types, None).await)
            });
        }
        while let Some(done) = appends.join_next().await {
            let (k, ids) = done.unwrap();
            kept[k].push(ids[0]);
            kept[k].push(ids[2]);
        }
    }
}
