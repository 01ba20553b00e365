//! `replicator run` with `runContinuously: true` follows the source live:
//! events appended while it runs reach the target within a second.
//!
//! Timing here is a functional requirement (the "within a second"),
//! not a speed benchmark, so the test is built not to flake on a loaded
//! 2-core machine: every event must arrive (a generous deadline catches a
//! replicator that stopped following), and the one-second bound applies to
//! the median delay of several events, appended one at a time with idle gaps
//! between them, so a single scheduling hiccup cannot fail it while a
//! replicator that polls slowly or batches for seconds still does.

use std::process::Stdio;
use std::time::{Duration, Instant};

use replicator_testkit::workload;

use crate::{command, Clusters};

/// Events appended one by one while the replicator runs.
const LIVE_EVENTS: usize = 9;
/// The delay the issue requires, applied to the median.
const WITHIN: Duration = Duration::from_secs(1);
/// How long one event may take before the test gives up on it.
const GIVE_UP: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_appended_while_running_reach_the_target_within_a_second() {
    let c = Clusters::start().await;
    workload::generate(&c.source_client, &workload::WorkloadSpec::new(3, 300))
        .await
        .unwrap();
    let w = c.workdir("  checkpoint:\n    checkpointAfter: 1\n");
    let mut cmd = command(w.dir.path());
    cmd.arg("run")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(w.path("run.log")).unwrap());
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(w.path("run.log")).unwrap_or_default();

    // Caught up with the history first, so what follows is live.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !c.compare().await.is_identical() {
        assert!(
            Instant::now() < deadline,
            "history not replicated:\n{}",
            log()
        );
        assert!(child.try_wait().unwrap().is_none(), "run ended:\n{}", log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut delays = Vec::new();
    for i in 0..LIVE_EVENTS {
        // Idle first: the replicator must be woken by the new event, not find
        // it on a read it was doing anyway.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stream = format!("live-{i}");
        let id = uuid::Uuid::new_v4();
        let event = eventstore::EventData::binary("LiveEvent", vec![i as u8; 64].into()).id(id);
        let appended = Instant::now();
        c.source_client
            .append_to_stream(stream.as_str(), &Default::default(), event)
            .await
            .unwrap();
        loop {
            if let Some(found) = read_first(&c.target_client, &stream).await {
                assert_eq!(found, id, "{stream} holds another event");
                delays.push(appended.elapsed());
                break;
            }
            assert!(
                appended.elapsed() < GIVE_UP,
                "{stream} did not reach the target in {GIVE_UP:?}:\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "a continuous run must keep running:\n{}",
        log()
    );
    child.kill().await.unwrap();

    let report = c.compare().await;
    assert!(report.is_identical(), "{report}");
    delays.sort();
    let median = delays[delays.len() / 2];
    assert!(
        median < WITHIN,
        "median delay {median:?} (all, sorted: {delays:?}) is over {WITHIN:?}"
    );
    eprintln!("live delays, sorted: {delays:?}");
}

/// The id of the first event of `stream` on `client`, `None` while it has none.
async fn read_first(client: &eventstore::Client, stream: &str) -> Option<uuid::Uuid> {
    let options = eventstore::ReadStreamOptions::default().max_count(1);
    let mut read = client.read_stream(stream, &options).await.ok()?;
    match read.next().await {
        Ok(Some(event)) => Some(event.get_original_event().id),
        // Not there yet: the stream does not exist on the target.
        _ => None,
    }
}
