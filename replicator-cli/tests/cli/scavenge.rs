//! `scavenge: true` in the C# tool's YAML, end to end: `replicator run`
//! between two in-process servers leaves out what a scavenge of the source
//! would remove, and a second run after more writes adds exactly the new
//! events.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use super::{assert_ok, run_async, stderr, Clusters};

/// Appends `count` JSON events to `stream`; returns their ids.
async fn append(client: &eventstore::Client, stream: &str, count: usize) -> Vec<Uuid> {
    let events: Vec<_> = (0..count)
        .map(|n| ("Happened", json!({ "n": n })))
        .collect();
    super::append_json(client, stream, &events).await
}

async fn set_metadata(client: &eventstore::Client, stream: &str, metadata: serde_json::Value) {
    let event = eventstore::EventData::json("$metadata", &metadata).unwrap();
    client
        .append_to_stream(format!("$${stream}"), &Default::default(), event)
        .await
        .unwrap();
}

/// How a stream reads: its event ids, or why there are none.
#[derive(Debug, PartialEq, Eq)]
enum Reads {
    Events(Vec<Uuid>),
    NotFound,
    Deleted,
}

async fn reads(client: &eventstore::Client, stream: &str) -> Reads {
    let options = eventstore::ReadStreamOptions::default().max_count(1000);
    let mut events = match client.read_stream(stream, &options).await {
        Ok(events) => events,
        Err(eventstore::Error::ResourceNotFound) => return Reads::NotFound,
        Err(eventstore::Error::ResourceDeleted) => return Reads::Deleted,
        Err(e) => panic!("reading {stream}: {e}"),
    };
    let mut ids = Vec::new();
    loop {
        match events.next().await {
            Ok(Some(e)) => ids.push(e.get_original_event().id),
            Ok(None) => return Reads::Events(ids),
            Err(eventstore::Error::ResourceNotFound) => return Reads::NotFound,
            Err(eventstore::Error::ResourceDeleted) => return Reads::Deleted,
            Err(e) => panic!("reading {stream}: {e}"),
        }
    }
}

/// Every event id in the target's `$all`.
async fn ids_in_all(client: &eventstore::Client) -> Vec<Uuid> {
    let options = eventstore::ReadAllOptions::default().max_count(100_000);
    let mut all = client.read_all(&options).await.unwrap();
    let mut ids = Vec::new();
    while let Some(e) = all.next().await.unwrap() {
        ids.push(e.get_original_event().id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scavenge_true_copies_only_what_a_scavenge_of_the_source_keeps() {
    let c = Clusters::start().await;
    let source = &c.source_client;
    let plain = append(source, "plain", 3).await;
    // `$maxCount` written after the events it governs.
    let capped = append(source, "capped", 5).await;
    set_metadata(source, "capped", json!({"$maxCount": 2})).await;
    let soft_deleted = append(source, "soft-deleted", 2).await;
    source
        .delete_stream("soft-deleted", &Default::default())
        .await
        .unwrap();
    let tombstoned = append(source, "tombstoned", 2).await;
    source
        .tombstone_stream("tombstoned", &Default::default())
        .await
        .unwrap();
    let w = c.workdir("  scavenge: true\n  runContinuously: false\n  restartOnFailure: false\n");

    let o = run_async(&w, &["run"]).await;
    assert_ok(&o);
    let target = &c.target_client;
    assert_eq!(reads(target, "plain").await, Reads::Events(plain.clone()));
    assert_eq!(
        reads(target, "capped").await,
        Reads::Events(capped[3..].to_vec())
    );
    assert_eq!(reads(target, "soft-deleted").await, Reads::NotFound);
    assert_eq!(reads(target, "tombstoned").await, Reads::Deleted);
    // Left out, not merely hidden: the target never got them.
    let copied: HashSet<Uuid> = ids_in_all(target).await.into_iter().collect();
    for gone in capped[..3].iter().chain(&soft_deleted).chain(&tombstoned) {
        assert!(!copied.contains(gone), "{gone} was copied:\n{}", stderr(&o));
    }

    // A second run after more writes: the capped stream's window moves on
    // the target as on the source, and nothing is copied twice.
    let more = append(source, "capped", 2).await;
    let o = run_async(&w, &["run"]).await;
    assert_ok(&o);
    assert_eq!(reads(target, "capped").await, Reads::Events(more.clone()));
    assert_eq!(reads(target, "plain").await, Reads::Events(plain));
    let all = ids_in_all(target).await;
    let unique: HashSet<&Uuid> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "an event was copied twice");
    assert!(more.iter().all(|id| unique.contains(id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_cannot_be_read_during_the_scavenge_pass_turns_readiness_red() {
    // Nothing listens on the source's port: the start-up pass of the
    // scavenge filter cannot read its metadata and retries. Readiness must
    // say so (not "ready" while nothing moves), liveness must not (the
    // process works; a restart would not help).
    let closed = crate::ClosedPort::new();
    let port = closed.port;
    let c = Clusters::start().await;
    let w = c.workdir("  scavenge: true\n  http:\n    unhealthyAfterSeconds: 1\n");
    let config = w.path("config/appsettings.yaml");
    let yaml = std::fs::read_to_string(&config).unwrap().replacen(
        &c.source.connection_string(),
        &format!("esdb://127.0.0.1:{port}?tls=false"),
        1,
    );
    std::fs::write(&config, yaml).unwrap();

    let run = super::status::Running::start(&w, &[]).await;
    let body = replicator_testkit::support::wait_for(
        "readiness red naming the source",
        Duration::from_secs(60),
        || {
            let run = &run;
            async move {
                let (code, body) = run.get("/health/ready").await;
                (code == 503).then_some(body)
            }
        },
    )
    .await;
    assert!(
        body.contains("source") && body.contains("scavenge filter"),
        "{body}\n{}",
        run.log()
    );
    let (code, body) = run.get("/health/live").await;
    assert_eq!(code, 200, "{body}");
    run.stop().await;
}
