//! Exactly-once through transforms that drop events from the middle of
//! streams and rename streams (merging several into one): the sink in
//! `RevisionMode::Tracked`, the real pipeline, crashes at random points and
//! restarts from the stored checkpoint, target failures in the middle of a
//! pipeline of appends. The target must end with every kept event exactly
//! once, in source order per target stream, and with source order (the
//! default) in the source's `$all` order across streams. Some cases read the
//! source over TCP and write v5 transactions: each lands in one append.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventstore::{AppendToStreamOptions, EventData, ExpectedRevision, ReadAllOptions};
use futures::StreamExt;
use proptest::prelude::*;
use replicator_core::memory::MemoryCheckpointStore;
use replicator_core::{
    ChangeKind, Event, EventStream, HeadProbe, Pipeline, Reader, ReaderError, Sink as _,
    SkipReason, StartFrom, Transform, TransformError,
};
use replicator_esdb::{
    to_event_data, EsdbSink, EsdbSinkConfig, RevisionMode, TcpReader, TcpReaderConfig, WriteOrder,
};
use replicator_testkit::cluster::TestCluster;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::*;

/// A transform made of a closure: `None` drops the record, `Some(name)`
/// sends it to that target stream.
struct ClosureTransform<F>(F);

#[async_trait]
impl<F> Transform for ClosureTransform<F>
where
    F: Fn(&Event) -> Option<String> + Send + Sync + 'static,
{
    fn name(&self) -> String {
        "test transform".into()
    }

    async fn apply(&self, mut event: Event) -> Result<Event, TransformError> {
        match (self.0)(&event) {
            Some(stream) => event.stream = stream,
            None => event.kind = ChangeKind::Skip(SkipReason::Dropped),
        }
        Ok(event)
    }
}

/// Runs a transform on every record the inner reader hands on that is to be
/// written, as the pipeline's transform stage does, so this test depends on
/// nothing but the `Transform` contract.
struct Transformed {
    inner: Box<dyn Reader>,
    transform: Arc<dyn Transform>,
}

#[async_trait]
impl Reader for Transformed {
    async fn read(&mut self, from: StartFrom) -> Result<EventStream, ReaderError> {
        let transform = Arc::clone(&self.transform);
        let events = self.inner.read(from).await?;
        Ok(events
            .then(move |event| {
                let transform = Arc::clone(&transform);
                async move {
                    let event = event?;
                    if !event.kind.is_write() {
                        return Ok(event);
                    }
                    transform
                        .apply(event)
                        .await
                        .map_err(|e| ReaderError::permanent(e.to_string()))
                }
            })
            .boxed())
    }

    fn head_probe(&self) -> Option<Arc<dyn HeadProbe>> {
        self.inner.head_probe()
    }
}

/// What a case does: the workload, the transform, the crashes.
#[derive(Debug, Clone)]
struct Case {
    /// Writes to the source: (source stream, what): 1–4 events appended, 0 a
    /// soft delete (when the stream exists and is not deleted), 5 or 6 stream
    /// metadata set (on a soft-deleted stream, the server adds a `$tb`).
    writes: Vec<(u8, u8)>,
    /// Source stream → target stream `dst-N` (several map to one: merged),
    /// or for 4 and 5 the stream's own name.
    renames: [u8; 6],
    /// One event in `drop_one_in` (chosen by its id, so the same one on
    /// every run, as a filter would) is dropped.
    drop_one_in: u8,
    checkpoint_after: u64,
    partitions: usize,
    batch: usize,
    /// For each crash, how many events written before the pipeline is
    /// dropped (a crash: no final checkpoint).
    crashes: Vec<u16>,
    /// Target failures in the middle of a pipeline of appends, each once the
    /// run has written that many events: the next append fails (with a
    /// batch append, its whole call), or every connection is cut.
    failures: Vec<(u16, bool)>,
    order: WriteOrder,
    /// Read the source over the legacy TCP protocol (`TcpReader`, pages of
    /// 7 records) and write [`Case::transactions`] too.
    tcp: bool,
    /// With `tcp`: v5 explicit transactions, each of 2–4 events, written to
    /// the stream of write `index % writes` right after it (a transaction's
    /// records share a commit position): each must land on the target in one
    /// append, whatever crashes, failures and drops.
    transactions: Vec<(usize, u8)>,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((0u8..6, 0u8..7), 25..60),
        prop::array::uniform6(0u8..6),
        2u8..5,
        prop_oneof![Just(1u64), 2u64..20, Just(1000u64)],
        1usize..4,
        1usize..12,
        prop::collection::vec(1u16..120, 1..4),
        prop::collection::vec((1u16..120, any::<bool>()), 0..3),
        prop_oneof![3 => Just(WriteOrder::Source), 1 => Just(WriteOrder::Stream)],
        // Last, so that the seeds of the regression file still make the
        // cases they were saved for.
        prop::bool::weighted(0.4),
        prop::collection::vec((0usize..60, 2u8..5), 1..5),
    )
        .prop_map(
            |(
                writes,
                renames,
                drop_one_in,
                checkpoint_after,
                partitions,
                batch,
                crashes,
                failures,
                order,
                tcp,
                transactions,
            )| Case {
                writes,
                renames,
                drop_one_in,
                checkpoint_after,
                partitions,
                batch,
                crashes,
                failures,
                order,
                tcp,
                transactions,
            },
        )
}

fn target_of(case: &Case, stream: &str) -> Option<String> {
    let n: usize = stream.strip_prefix("src-")?.parse().ok()?;
    Some(match case.renames[n] {
        4 | 5 => stream.to_owned(),
        k => format!("dst-{k}"),
    })
}

fn dropped(case: &Case, id: Uuid) -> bool {
    id.as_u128().is_multiple_of(u128::from(case.drop_one_in))
}

/// The source's TCP endpoint when the case reads over TCP and the source is
/// in process.
fn tcp_address(case: &Case, source: &TestCluster) -> Option<std::net::SocketAddr> {
    if !case.tcp || source.is_external() {
        return None;
    }
    source.server().tcp_address()
}

fn pipeline(
    case: &Case,
    source: &TestCluster,
    target: &TestCluster,
    store: &MemoryCheckpointStore,
) -> Pipeline {
    let rules = case.clone();
    let transform = ClosureTransform(move |event: &Event| {
        // Like an eventType filter: events only, never metadata.
        if event.kind == ChangeKind::Append && dropped(&rules, event.id) {
            None
        } else {
            Some(target_of(&rules, &event.stream).unwrap_or_else(|| event.stream.clone()))
        }
    });
    let inner: Box<dyn Reader> = match tcp_address(case, source) {
        Some(address) => Box::new(
            TcpReader::new(TcpReaderConfig {
                page_size: 7,
                run_continuously: false,
                ..TcpReaderConfig::new(format!("ConnectTo=tcp://{address}; UseSslConnection=false"))
            })
            .expect("TCP reader"),
        ),
        None => Box::new(reader(source, 7, false)),
    };
    let reader = Transformed {
        inner,
        transform: Arc::new(transform),
    };
    let sink = EsdbSink::new(EsdbSinkConfig {
        partition_count: case.partitions,
        revisions: RevisionMode::Tracked,
        order: case.order,
        ..EsdbSinkConfig::new(target.connection_string())
    })
    .expect("sink");
    Pipeline::builder(reader, sink, store.clone())
        .config(replicator_core::PipelineConfig {
            max_batch_events: case.batch,
            ..pipeline_config(case.checkpoint_after)
        })
        .build()
}

/// Every record of the user streams and their `$$` metadata streams, in
/// order, as `$all` holds them: ids for user streams, for metadata streams
/// the document without `$tb` (the server writes `$tb` records of its own,
/// with its own ids and revisions).
async fn streams_of(server: &TestCluster) -> BTreeMap<String, Vec<String>> {
    let client = client(&server.connection_string());
    let mut read = client
        .read_all(&ReadAllOptions::default().max_count(usize::MAX))
        .await
        .expect("read $all");
    let mut streams: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while let Some(resolved) = read.next().await.expect("read $all") {
        let record = resolved.get_original_event();
        let user = !record.stream_id.starts_with('$');
        let metadata = record
            .stream_id
            .strip_prefix("$$")
            .is_some_and(|s| !s.starts_with('$'));
        let entry = if user {
            record.id.to_string()
        } else if metadata {
            let mut document: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&record.data).expect("metadata is JSON");
            document.remove("$tb");
            serde_json::Value::Object(document).to_string()
        } else {
            continue;
        };
        streams
            .entry(record.stream_id.clone())
            .or_default()
            .push(entry);
    }
    streams
}

/// The ids of the user events in `$all`, in its order.
async fn user_events_in_all(server: &TestCluster) -> Vec<Uuid> {
    let client = client(&server.connection_string());
    let mut read = client
        .read_all(&ReadAllOptions::default().max_count(usize::MAX))
        .await
        .expect("read $all");
    let mut ids = Vec::new();
    while let Some(resolved) = read.next().await.expect("read $all") {
        let record = resolved.get_original_event();
        if !record.stream_id.starts_with('$') && !record.event_type.starts_with('$') {
            ids.push(record.id);
        }
    }
    ids
}

async fn run_case(case: Case) -> Result<(), TestCaseError> {
    let source = if case.tcp {
        TestCluster::empty_from_env_with(
            "ESDB_SOURCE_URL",
            replicator_testkit::ServerOptions {
                tcp_port: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    } else {
        source().await
    };
    // A source named by ESDB_SOURCE_URL has no TCP port of ours.
    let tcp = tcp_address(&case, &source);
    let target = target().await;
    let writer = client(&source.connection_string());
    // Each transaction's target stream and kept ids.
    let mut transactions: Vec<(String, Vec<String>)> = Vec::new();
    let any = AppendToStreamOptions::default().expected_revision(ExpectedRevision::Any);
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut existing = std::collections::HashSet::new();
    let mut deleted = std::collections::HashSet::new();
    for (i, &(stream, what)) in case.writes.iter().enumerate() {
        let name = format!("src-{stream}");
        match what {
            0 if existing.contains(&name) && !deleted.contains(&name) => {
                writer
                    .delete_stream(name.as_str(), &Default::default())
                    .await
                    .expect("source soft delete");
                deleted.insert(name.clone());
            }
            5 | 6 => {
                let body = serde_json::json!({ "owner": format!("team-{i}") });
                let event = EventData::json("$metadata", &body).expect("json");
                writer
                    .append_to_stream(format!("$${name}"), &any, event)
                    .await
                    .expect("source metadata");
            }
            _ => {
                let events: Vec<Event> = (0..what.max(1))
                    .map(|n| user_event(&name, u64::from(n) + i as u64, i as u64))
                    .collect();
                for event in &events {
                    if !dropped(&case, event.id) {
                        want.entry(target_of(&case, &name).expect("renamed"))
                            .or_default()
                            .push(event.id.to_string());
                    }
                }
                let data: Vec<_> = events.iter().map(to_event_data).collect();
                writer
                    .append_to_stream(name.as_str(), &any, data)
                    .await
                    .expect("source append");
                existing.insert(name.clone());
                deleted.remove(&name);
            }
        }
        let Some(address) = tcp else { continue };
        for &(index, size) in &case.transactions {
            if index % case.writes.len() != i {
                continue;
            }
            let events: Vec<Event> = (0..u64::from(size))
                .map(|n| user_event(&name, n + i as u64, 1_000 + i as u64 * 10 + n))
                .collect();
            tcp_transaction(address, &name, &events).await;
            let dst = target_of(&case, &name).expect("renamed");
            let kept: Vec<String> = events
                .iter()
                .filter(|e| !dropped(&case, e.id))
                .map(|e| e.id.to_string())
                .collect();
            want.entry(dst.clone()).or_default().extend(kept.clone());
            transactions.push((dst, kept));
            // A commit revives a soft-deleted stream, as an append does.
            existing.insert(name.clone());
            deleted.remove(&name);
        }
    }
    // Metadata streams are copied as they are (transforms do not rename them).
    for (stream, records) in streams_of(&source).await {
        if stream.starts_with("$$") {
            want.insert(stream, records);
        }
    }

    let store = MemoryCheckpointStore::new();
    for &crash_after in &case.crashes {
        // Crash once this run has written `crash_after` events (or the run
        // ended first): the future is dropped mid-flight, no final
        // checkpoint is stored.
        let pipeline = pipeline(&case, &source, &target, &store);
        let mut progress = pipeline.progress();
        let faults = target.faults();
        let mut failures = tokio::task::JoinSet::new();
        for &(after, cut) in &case.failures {
            let (mut progress, faults) = (pipeline.progress(), faults.clone());
            failures.spawn(async move {
                if progress
                    .wait_for(|p| p.written >= u64::from(after))
                    .await
                    .is_ok()
                {
                    if cut {
                        faults.drop_connections();
                    } else {
                        faults.fail_next_appends(1);
                    }
                }
            });
        }
        let run = pipeline.run(CancellationToken::new());
        let crash = async {
            progress
                .wait_for(|p| p.written >= u64::from(crash_after))
                .await
                .ok();
        };
        tokio::select! {
            result = run => { result.expect("a run before the crash"); }
            () = crash => {}
        }
        failures.abort_all();
        faults.fail_next_appends(0);
        // As an operator's restart: the crashed run's connection is gone
        // (its batch-append call reset) before the next run starts, so
        // nothing it sent is written after the next run's writes.
        tokio::time::timeout(PATIENCE, faults.wait_for_no_batch_calls())
            .await
            .expect("the crashed run's batch-append call did not end");
    }
    let last = pipeline(&case, &source, &target, &store);
    tokio::time::timeout(PATIENCE, last.run(CancellationToken::new()))
        .await
        .expect("the last run did not finish in time")
        .expect("the last run failed");

    let got = streams_of(&target).await;
    for (stream, records) in &want {
        let held = got.get(stream).map_or(&[][..], Vec::as_slice);
        let distinct = held.iter().collect::<std::collections::HashSet<_>>().len();
        prop_assert!(
            held == records.as_slice(),
            "{stream}: want {} records, target holds {} ({} distinct)\nwant {records:?}\ngot  {held:?}",
            records.len(),
            held.len(),
            distinct
        );
    }
    prop_assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    if !target.is_external() {
        // Each transaction in one write on the target (the log's write
        // boundaries): whatever crashed or failed, never a part of one.
        for (stream, kept) in &transactions {
            let ids = got.get(stream).map_or(&[][..], Vec::as_slice);
            let sizes = target.server().writes_to(stream);
            let write_of = |id: &String| {
                let at = ids.iter().position(|held| held == id)?;
                let mut end = 0;
                sizes.iter().position(|size| {
                    end += size;
                    at < end
                })
            };
            let writes: std::collections::BTreeSet<_> = kept.iter().map(write_of).collect();
            prop_assert!(
                writes.len() <= 1,
                "a transaction of {stream} split between writes {writes:?} (writes {sizes:?})"
            );
        }
    }
    if case.order == WriteOrder::Source {
        // Across streams too: the target's `$all` holds the kept events in
        // the source's `$all` order.
        let kept: Vec<Uuid> = user_events_in_all(&source)
            .await
            .into_iter()
            .filter(|id| !dropped(&case, *id))
            .collect();
        let held = user_events_in_all(&target).await;
        prop_assert!(
            held == kept,
            "the target's $all order differs from the source's at index {:?}\nsource {kept:?}\ntarget {held:?}",
            held.iter().zip(&kept).position(|(a, b)| a != b)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10,
        max_shrink_iters: 8,
        ..ProptestConfig::default()
    })]

    #[test]
    fn drops_renames_merges_and_crashes_leave_every_kept_event_once_in_order(case in cases()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(300), run_case(case)).await })
            .expect("the case did not finish in time")?;
    }
}

/// Metadata set on a soft-deleted stream makes a server add a `$tb` record
/// pointing after the stream's last revision, on the source and on the
/// target alike. With events left out of the stream, the two point at
/// different revisions: the source's copy is recognised as the target's own
/// record (not a divergence), and a replay changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_on_a_soft_deleted_stream_with_events_left_out_is_written_once() {
    let target = target().await;
    let sink = EsdbSink::new(EsdbSinkConfig {
        revisions: RevisionMode::Tracked,
        ..EsdbSinkConfig::new(target.connection_string())
    })
    .expect("sink");
    let mut position = 0;
    let mut record = |stream: &str, revision: u64, kind: ChangeKind, data: &str| {
        position += 100;
        let event_type = match kind {
            ChangeKind::Append => "Happened",
            _ => "$metadata",
        };
        Event::new(
            stream,
            event_type,
            bytes::Bytes::copy_from_slice(data.as_bytes()),
        )
        .with_revision(revision)
        .with_kind(kind)
        .with_position(replicator_core::Position::at(position))
    };
    // Source revisions 0 and 2 of `x` were left out: the target holds 1 and 3
    // at revisions 0 and 1.
    let batch = vec![
        record("x", 1, ChangeKind::Append, "{}"),
        record("x", 3, ChangeKind::Append, "{}"),
        record(
            "$$x",
            0,
            ChangeKind::SoftDelete,
            r#"{"$tb":9223372036854775807}"#,
        ),
        record("$$x", 1, ChangeKind::StreamMetadata, r#"{"owner":"team"}"#),
        // Written by the source server itself: after the source's revision 3.
        record(
            "$$x",
            2,
            ChangeKind::StreamMetadata,
            r#"{"$tb":4,"owner":"team"}"#,
        ),
    ];
    sink.write(&batch).await.expect("first write");
    sink.write(&batch).await.expect("replay");
    let metadata = snapshot(&client(&target.connection_string())).await.streams["$$x"].clone();
    let bodies: Vec<_> = metadata
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect();
    // The target's own `$tb` points after its own last revision (1).
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    assert!(bodies[2].contains(r#""$tb":2"#), "{bodies:?}");
}

/// After a restart (nothing remembered), a replay of events whose target
/// stream was soft-deleted after them, within the replay window: the target
/// hides them from stream reads, and would accept them again as a new
/// stream. The sink asks the target where the stream ends instead, finds
/// them in `$all` and writes nothing twice; the revival after the replay
/// goes after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_onto_a_stream_soft_deleted_since_is_not_written_twice() {
    let target = target().await;
    let tracked = || {
        EsdbSink::new(EsdbSinkConfig {
            revisions: RevisionMode::Tracked,
            ..EsdbSinkConfig::new(target.connection_string())
        })
        .expect("sink")
    };
    let event = |revision: u64, position: u64| {
        user_event("y", revision, revision)
            .with_revision(revision)
            .with_position(replicator_core::Position::at(position))
    };
    // Source revision 0 was left out by a filter.
    let events = vec![event(1, 100), event(2, 200)];
    let delete = Event::new("$$y", "$metadata", r#"{"$tb":9223372036854775807}"#)
        .with_kind(ChangeKind::SoftDelete)
        .with_position(replicator_core::Position::at(300));
    let mut batch = events.clone();
    batch.push(delete);
    tracked().write(&batch).await.expect("first run");
    assert_eq!(
        read_stream(&client(&target.connection_string()), "y").await,
        Readable::NotFound
    );

    // A restarted replicator replays the window after a checkpoint past the
    // first event, then the stream is revived.
    let restarted = tracked();
    restarted.write(&batch[1..]).await.expect("replay");
    let revival = event(3, 400);
    restarted
        .write(std::slice::from_ref(&revival))
        .await
        .expect("revival");
    let held: Vec<Uuid> = snapshot(&client(&target.connection_string())).await.streams["y"]
        .iter()
        .map(|r| r.id.expect("an event"))
        .collect();
    assert_eq!(held, [events[0].id, events[1].id, revival.id]);
}
