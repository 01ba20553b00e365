//! `replicator map-position` on a replicated workload: a consumer that stopped
//! at a random source position and resumes on the target after the mapped
//! position sees every event it had not processed, with partitionCount 1 and 8.
//!
//! Not asserted: "with partitionCount 1 none twice". The sink appends the
//! streams of one batch concurrently, so even one partition interleaves
//! streams differently on the target (this test found it: an event after the
//! consumer's position sat before the anchor on the target). Resuming before
//! such an event delivers again the processed events written after it; the
//! count is printed.

use std::collections::HashSet;

use eventstore::{AppendToStreamOptions, Client, EventData, ReadAllOptions};
use replicator_core::{ChangeKind, Position};
use replicator_testkit::workload::{generate, Rng, WorkloadSpec};
use serde_json::Value;
use uuid::Uuid;

use crate::{assert_ok, run_async, stdout, Clusters};

/// A user event of `$all` (one the replicator appends), or another record.
struct Record {
    position: Position,
    id: Uuid,
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
        records.push(Record {
            position: Position {
                commit: e.position.commit,
                prepare: e.position.prepare,
            },
            id: e.id,
            user_event: replicator_esdb::classify(&e.stream_id, &e.event_type, &e.data)
                == ChangeKind::Append,
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

/// Replicates `spec` with `partitions`, maps `samples` random source
/// positions, and checks what a consumer resuming on the target would see.
async fn resume_at_random_positions(partitions: usize, spec: WorkloadSpec, samples: usize) {
    let c = Clusters::start().await;
    generate(&c.source_client, &spec).await.unwrap();
    let w = c.workdir_with(
        "",
        "",
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
    let args: Vec<String> = picked
        .iter()
        .map(|p| format!("{}/{}", p.commit, p.prepare))
        .collect();
    let mut argv = vec!["map-position", "--json"];
    argv.extend(args.iter().map(String::as_str));
    let o = run_async(&w, &argv).await;
    assert_ok(&o);
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), picked.len(), "{}", stdout(&o));

    let mut twice_total = 0;
    for (line, position) in lines.iter().zip(&picked) {
        assert_eq!(position_of(&line["source"]), Some(*position), "{line}");
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
async fn with_one_partition_a_consumer_loses_nothing() {
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
async fn with_eight_partitions_a_consumer_loses_nothing() {
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

    let o = run_async(
        &w,
        &[
            "map-position",
            "--json",
            &format!("{}/{}", system.commit, system.prepare),
        ],
    )
    .await;
    assert_ok(&o);
    let line: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(line["resume"], "from_start", "{line}");
    assert!(line["target"].is_null(), "{line}");
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
