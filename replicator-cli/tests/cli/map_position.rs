//! `replicator map-position` on replicated workloads.
//!
//! With the default `sink.order: source` the mapping is exact: at 100 random
//! positions of a live pair (the replicator following the source while it is
//! written), a consumer resuming on the target after the mapped position gets
//! exactly the user events the source holds after its position, in the same
//! order.
//!
//! With `sink.order: stream`, a consumer that stopped at a random source
//! position and resumes on the target after the mapped position sees every
//! event it had not processed, with partitionCount 1 and 8. Not asserted
//! there: "with partitionCount 1 none twice". The sink appends the streams of
//! one batch concurrently, so even one partition interleaves streams
//! differently on the target (this test found it: an event after the
//! consumer's position sat before the anchor on the target). Resuming before
//! such an event delivers again the processed events written after it; the
//! count is printed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventstore::{AppendToStreamOptions, Client, EventData, ReadAllOptions};
use replicator_core::{ChangeKind, Position};
use replicator_testkit::workload::{generate, Rng, WorkloadSpec};
use serde_json::Value;
use uuid::Uuid;

use crate::{assert_ok, run_async, spawn_run, stdout, Clusters, Workdir};

/// A record of `$all`: a user event (one the replicator appends), or another.
struct Record {
    position: Position,
    id: Uuid,
    stream: String,
    kind: ChangeKind,
    user_event: bool,
}

async fn all(client: &Client) -> Vec<Record> {
    let mut read = client
        .read_all(&ReadAllOptions::default().max_count(usize::MAX))
        .await
        .unwrap();
    let mut records = Vec::new();
    while let Some(event) = read.next().await.unwrap() {
        let e = event.get_original_event();
        let kind = replicator_esdb::classify(&e.stream_id, &e.event_type, &e.data);
        records.push(Record {
            position: Position {
                commit: e.position.commit,
                prepare: e.position.prepare,
            },
            id: e.id,
            stream: e.stream_id.clone(),
            kind,
            user_event: kind == ChangeKind::Append,
        });
    }
    records
}

fn position_of(value: &Value) -> Option<Position> {
    (!value.is_null()).then(|| Position {
        commit: value["commit"].as_u64().unwrap(),
        prepare: value["prepare"].as_u64().unwrap(),
    })
}

/// The JSON lines of `map-position --json` at `positions` (exit code 0).
async fn map_json(w: &Workdir, extra: &[&str], positions: &[Position]) -> Vec<Value> {
    let args: Vec<String> = positions
        .iter()
        .map(|p| format!("{}/{}", p.commit, p.prepare))
        .collect();
    let mut argv = vec!["map-position", "--json"];
    argv.extend_from_slice(extra);
    argv.extend(args.iter().map(String::as_str));
    let o = run_async(w, &argv).await;
    assert_ok(&o);
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), positions.len(), "{}", stdout(&o));
    for (line, position) in lines.iter().zip(positions) {
        assert_eq!(position_of(&line["source"]), Some(*position), "{line}");
    }
    lines
}

/// Replicates `spec` with `sink.order: stream` and `partitions`, maps
/// `samples` random source positions, and checks what a consumer resuming on
/// the target would see.
async fn resume_at_random_positions(partitions: usize, spec: WorkloadSpec, samples: usize) {
    let c = Clusters::start().await;
    generate(&c.source_client, &spec).await.unwrap();
    let w = c.workdir_with(
        "",
        "    order: stream\n",
        "  runContinuously: false\n  checkpoint:\n    checkpointAfter: 50\n",
    );
    w.set_partitions(partitions);
    assert_ok(&run_async(&w, &["run"]).await);

    let source = all(&c.source_client).await;
    let target = all(&c.target_client).await;
    let mut rng = Rng(spec.seed ^ partitions as u64);
    let mut picked: Vec<Position> = (0..samples)
        .map(|_| source[rng.between(0, source.len() as u64 - 1) as usize].position)
        .collect();
    // And a consumer that processed everything: the cutover case.
    let last = source.last().unwrap().position;
    picked.push(last);
    let lines = map_json(&w, &[], &picked).await;

    let mut twice_total = 0;
    for (line, position) in lines.iter().zip(&picked) {
        assert_eq!(line["mode"], "anchor", "{line}");
        assert_ne!(line["resume"], "not_replicated_yet", "{line}");
        let resume_after = position_of(&line["target"]);
        if line["resume"] == "after" {
            assert!(resume_after.is_some(), "{line}");
        }
        // What a subscription from the mapped position delivers: strictly after it.
        let delivered: HashSet<Uuid> = target
            .iter()
            .filter(|r| r.user_event && resume_after.is_none_or(|t| r.position > t))
            .map(|r| r.id)
            .collect();
        let unprocessed = source
            .iter()
            .filter(|r| r.user_event && r.position > *position);
        for r in unprocessed {
            assert!(
                delivered.contains(&r.id),
                "event {} at {} comes after the consumer's {position}, yet resuming after \
                 {resume_after:?} on the target does not deliver it: {line}",
                r.id,
                r.position
            );
        }
        let twice = source
            .iter()
            .filter(|r| r.user_event && r.position <= *position && delivered.contains(&r.id))
            .count();
        twice_total += twice;
        if *position == last {
            assert_eq!(
                twice, 0,
                "a consumer at the source's end sees nothing again: {line}"
            );
        }
    }
    eprintln!(
        "partitionCount {partitions}: {samples} positions mapped, {twice_total} events \
         delivered again in total"
    );

    // A position past what has been replicated is refused, exit code 1.
    let late = c
        .source_client
        .append_to_stream(
            "map-late",
            &AppendToStreamOptions::default(),
            EventData::binary("Late", vec![1].into()),
        )
        .await
        .unwrap()
        .position;
    let o = run_async(
        &w,
        &[
            "map-position",
            "--json",
            &format!("{}/{}", late.commit, late.prepare),
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let line: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(line["resume"], "not_replicated_yet", "{line}");
    assert!(line["target"].is_null());
    assert!(line["note"].as_str().unwrap().contains("beyond"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stream_order_and_one_partition_a_consumer_loses_nothing() {
    // Nothing deleted or truncated: every anchor is readable on the target.
    let spec = WorkloadSpec {
        stream_metadata: false,
        soft_deletes: false,
        tombstones: false,
        large_events: 0,
        ..WorkloadSpec::new(21, 600)
    };
    resume_at_random_positions(1, spec, 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stream_order_and_eight_partitions_a_consumer_loses_nothing() {
    let spec = WorkloadSpec {
        large_events: 0,
        ..WorkloadSpec::new(22, 600)
    };
    resume_at_random_positions(8, spec, 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_revisions_map_an_early_position_resumes_at_the_start_bad_input_is_named() {
    let c = Clusters::start().await;
    // A system record first: a consumer stopped there had nothing to process.
    let system = c
        .source_client
        .append_to_stream(
            "$map-system",
            &AppendToStreamOptions::default(),
            EventData::binary("$stats", vec![0].into()),
        )
        .await
        .unwrap()
        .position;
    let system = Position {
        commit: system.commit,
        prepare: system.prepare,
    };
    for i in 0..5u8 {
        c.source_client
            .append_to_stream(
                "map-orders",
                &AppendToStreamOptions::default(),
                EventData::binary("Placed", vec![i].into()),
            )
            .await
            .unwrap();
    }
    let w = c.workdir("  runContinuously: false\n");
    assert_ok(&run_async(&w, &["run"]).await);
    let o = run_async(
        &w,
        &["map-position", "--json", "--stream", "map-orders", "3", "9"],
    )
    .await;
    assert_ok(&o);
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["target_revision"], 3, "{}", stdout(&o));
    assert_eq!(lines[0]["stream"], "map-orders");
    // Past the stream's end: its last event.
    assert_eq!(lines[1]["target_revision"], 4, "{}", stdout(&o));

    let o = run_async(&w, &["map-position", "--json", &system.to_string()]).await;
    assert_ok(&o);
    let line: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(line["resume"], "from_start", "{line}");
    assert_eq!(line["mode"], "exact", "{line}");
    assert!(line["target"].is_null(), "{line}");
    assert!(
        line["note"]
            .as_str()
            .unwrap()
            .contains("before the first replicated record"),
        "{line}"
    );
    // The same with the anchor rules, asked for with --order.
    let line = &map_json(&w, &["--order", "stream"], &[system]).await[0];
    assert_eq!(line["resume"], "from_start", "{line}");
    assert_eq!(line["mode"], "anchor", "{line}");
    assert!(
        line["note"]
            .as_str()
            .unwrap()
            .contains("before the first replicated event"),
        "{line}"
    );

    let o = run_async(&w, &["map-position", "12/x"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        crate::stderr(&o).contains("`12/x` is not a position"),
        "{}",
        crate::stderr(&o)
    );
    let o = run_async(&w, &["map-position"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(crate::stderr(&o).contains("no position given"));
}

/// The source position `replicator checkpoint show` prints, `None` before
/// the first store.
async fn stored_checkpoint(w: &Workdir) -> Option<Position> {
    let o = run_async(w, &["checkpoint", "show"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    let line = out.lines().find(|l| l.starts_with("source:"))?;
    let position = line
        .trim_start_matches("source:")
        .split_whitespace()
        .next()?;
    Some(printed_position(position))
}

/// `C:commit/P:prepare`, as the replicator prints positions.
fn printed_position(text: &str) -> Position {
    let (commit, prepare) = text.split_once('/').unwrap();
    Position {
        commit: commit.trim_start_matches("C:").parse().unwrap(),
        prepare: prepare.trim_start_matches("P:").parse().unwrap(),
    }
}

/// Waits (bounded) until the stored checkpoint is at the source's last record.
async fn wait_until_caught_up(c: &Clusters, w: &Workdir, run: &mut tokio::process::Child) {
    let end = c.source_end_position().await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if stored_checkpoint(w).await == Some(end) {
            return;
        }
        let log = || std::fs::read_to_string(w.path("run.log")).unwrap_or_default();
        assert!(
            run.try_wait().unwrap().is_none(),
            "the run ended:\n{}",
            log()
        );
        assert!(
            Instant::now() < deadline,
            "the checkpoint did not reach the source's end {end}:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With the default source order, `map-position` is exact: at 100 random
/// positions of a live pair, resuming on the target after the mapped position
/// delivers exactly the user events the source holds after the position, in
/// the source's order. Half the positions are mapped while the source is
/// being written and the replicator follows it (each at or before the stored
/// checkpoint at that moment, so it is replicated: no timing decides what is
/// on the target), half after it caught up with those writes; the resumed
/// consumers are checked once everything is replicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_source_order_a_consumer_resumes_exactly_at_100_random_positions_of_a_live_pair() {
    let c = Clusters::start().await;
    // Interleaved streams (32 appends in flight), metadata, soft deletes,
    // tombstones, links and system events.
    let spec = WorkloadSpec {
        large_events: 0,
        ..WorkloadSpec::new(41, 800)
    };
    generate(&c.source_client, &spec).await.unwrap();
    let w = c.workdir("  checkpoint:\n    checkpointAfter: 1\n");
    let mut run = spawn_run(&w, Some(&w.path("run.log")));
    wait_until_caught_up(&c, &w, &mut run).await;

    // The source keeps being written (one small workload after another)
    // until the first half is mapped.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let client = c.source_client.clone();
        let writing = Arc::clone(&writing);
        async move {
            let mut round = 0u64;
            while writing.load(Ordering::Relaxed) || round == 0 {
                let more = WorkloadSpec {
                    large_events: 0,
                    stream_prefix: format!("more{round}-"),
                    ..WorkloadSpec::new(100 + round, 60)
                };
                generate(&client, &more).await.unwrap();
                round += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            round
        }
    });

    // Every other position is a hard one: a record the replicator does not
    // append as an event (links, system events, metadata, deletes), or an
    // event of a stream with metadata or deleted, which its target stream may
    // no longer return.
    let mut rng = Rng(41);
    let mut pick = |records: &[Record], until: Position, n: usize| -> Vec<Position> {
        let touched: HashSet<&str> = records
            .iter()
            .filter_map(|r| match r.kind {
                ChangeKind::StreamMetadata | ChangeKind::SoftDelete => r.stream.strip_prefix("$$"),
                ChangeKind::Tombstone => Some(r.stream.as_str()),
                _ => None,
            })
            .collect();
        let replicated: Vec<&Record> = records.iter().filter(|r| r.position <= until).collect();
        let hard: Vec<&Record> = replicated
            .iter()
            .copied()
            .filter(|r| !r.user_event || touched.contains(r.stream.as_str()))
            .collect();
        (0..n)
            .map(|i| {
                let from = if i % 2 == 0 { &replicated } else { &hard };
                from[rng.between(0, from.len() as u64 - 1) as usize].position
            })
            .collect()
    };
    let checkpoint = stored_checkpoint(&w).await.unwrap();
    let source_now = all(&c.source_client).await;
    let mut picked = pick(&source_now, checkpoint, 50);
    picked.push(source_now[0].position);
    let mut lines = map_json(&w, &[], &picked).await;
    let mapped_live = picked.len();
    let source_moved = c.source_end_position().await > checkpoint;
    writing.store(false, Ordering::Relaxed);
    let rounds = writer.await.unwrap();
    wait_until_caught_up(&c, &w, &mut run).await;

    let source_now = all(&c.source_client).await;
    let end = source_now.last().unwrap().position;
    let mut later = pick(&source_now, end, 50);
    // A consumer that processed everything: the cutover case.
    later.push(end);
    lines.extend(map_json(&w, &[], &later).await);
    picked.extend(later);
    run.kill().await.unwrap();

    let source = all(&c.source_client).await;
    let target = all(&c.target_client).await;
    let user_ids = |records: &[Record], after: Option<Position>| -> Vec<Uuid> {
        records
            .iter()
            .filter(|r| r.user_event && after.is_none_or(|a| r.position > a))
            .map(|r| r.id)
            .collect()
    };
    for (line, position) in lines.iter().zip(&picked) {
        assert_eq!(line["mode"], "exact", "{line}");
        let resume_after = position_of(&line["target"]);
        match line["resume"].as_str().unwrap() {
            "after" => assert!(resume_after.is_some(), "{line}"),
            "from_start" => assert!(resume_after.is_none(), "{line}"),
            other => panic!("{other}: {line}"),
        }
        let expected = user_ids(&source, Some(*position));
        let delivered = user_ids(&target, resume_after);
        if delivered != expected {
            let first = expected
                .iter()
                .zip(&delivered)
                .position(|(a, b)| a != b)
                .unwrap_or(expected.len().min(delivered.len()));
            panic!(
                "a consumer at source {position} resuming after target {resume_after:?} gets \
                 {} user events, the source has {} after the position; first difference at \
                 #{first}: delivered {:?}, expected {:?}\n{line}",
                delivered.len(),
                expected.len(),
                delivered.get(first),
                expected.get(first)
            );
        }
    }
    eprintln!(
        "source order: {} positions mapped exactly, {mapped_live} of them while the source \
         was written ({rounds} rounds of writes; the source moved past the checkpoint \
         meanwhile: {source_moved})",
        picked.len()
    );

    // The lines for people say which mapping it is.
    let last_user_event = source.iter().rev().find(|r| r.user_event).unwrap();
    let o = run_async(&w, &["map-position", &last_user_event.position.to_string()]).await;
    assert_ok(&o);
    assert!(
        stdout(&o).contains("Exact (order: source)"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("exact: the same record on the target"),
        "{}",
        stdout(&o)
    );
}

/// A stream of links that each cluster's own projections write (`$ce-…`):
/// its links have ids of their own on each side and need not be at the same
/// revisions, so a revision maps to the target link to the same event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_of_a_link_stream_maps_to_the_target_link_to_the_same_event() {
    let c = Clusters::start().await;
    for (stream, n) in [("orders-1", 3u8), ("orders-2", 3)] {
        for i in 0..n {
            c.source_client
                .append_to_stream(
                    stream,
                    &AppendToStreamOptions::default(),
                    EventData::binary("Placed", vec![i].into()),
                )
                .await
                .unwrap();
        }
    }
    let link = |data: &str| EventData::binary("$>", data.as_bytes().to_vec().into());
    // The source's category projection linked the events in one order…
    let source_links = [
        "0@orders-1",
        "0@orders-2",
        "1@orders-1",
        "1@orders-2",
        "2@orders-1",
    ];
    for data in source_links {
        c.source_client
            .append_to_stream("$ce-orders", &AppendToStreamOptions::default(), link(data))
            .await
            .unwrap();
    }
    let w = c.workdir("  runContinuously: false\n");
    assert_ok(&run_async(&w, &["run"]).await);
    // …the target's (started later, say) in another, with one link more.
    let target_links = [
        "0@orders-2",
        "0@orders-1",
        "1@orders-2",
        "1@orders-1",
        "2@orders-2",
        "2@orders-1",
    ];
    for data in target_links {
        c.target_client
            .append_to_stream("$ce-orders", &AppendToStreamOptions::default(), link(data))
            .await
            .unwrap();
    }
    let o = run_async(
        &w,
        &[
            "map-position",
            "--json",
            "--stream",
            "$ce-orders",
            "0",
            "3",
            "4",
        ],
    )
    .await;
    assert_ok(&o);
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let targets: Vec<&Value> = lines.iter().map(|l| &l["target_revision"]).collect();
    // Source 0 (0@orders-1) is target 1; 3 (1@orders-2) is 2; 4 (2@orders-1) is 5.
    assert_eq!(
        targets,
        [&Value::from(1), &Value::from(2), &Value::from(5)],
        "{}",
        stdout(&o)
    );
    assert!(
        lines[2]["note"].as_str().unwrap().contains("2@orders-1"),
        "{}",
        lines[2]
    );
}
