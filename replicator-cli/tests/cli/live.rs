//! `replicator run` with `runContinuously: true` follows the source live:
//! events appended once it has caught up reach the target, each once, while
//! the run goes on; nothing is read twice and nothing restarts.
//!
//! What is asserted is behaviour, never speed: each event is appended while
//! the run is idle (everything before it written, nothing in flight), and
//! must then arrive with nothing else happening; a bound so generous that
//! only a stall misses it fails a replicator that stopped following. How
//! fast an event arrives is measured by `benches/benches/latency.rs`.

use std::time::Duration;

use replicator_testkit::workload;
use serde_json::Value;

use crate::status::Running;
use crate::Clusters;

/// Events appended one by one while the replicator runs.
const LIVE_EVENTS: u64 = 9;
/// How long the run may take to catch up, or an event to arrive: only a
/// stall misses it.
const STALL: u64 = 120;

fn count(s: &Value, what: &str) -> u64 {
    s["events"][what].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_appended_after_catching_up_reach_the_target_once_while_the_run_goes_on() {
    let c = Clusters::start().await;
    workload::generate(&c.source_client, &workload::WorkloadSpec::new(3, 300))
        .await
        .unwrap();
    let end = c.source_end_position().await;
    let w = c.workdir("  checkpoint:\n    checkpointAfter: 1\n");
    let run = Running::start(&w, &[]).await;

    // Caught up with the history first, so what follows is live.
    let caught_up = run
        .wait_status("the history replicated", STALL, |s| {
            s["caught_up"] == true
                && s["in_flight"] == 0
                && crate::status::commit(&s["processed"]) >= Some(end.commit)
        })
        .await;
    let history = c.compare().await;
    assert!(history.is_identical(), "{history}");
    let (read, written) = (count(&caught_up, "read"), count(&caught_up, "written"));

    for i in 0..LIVE_EVENTS {
        let stream = format!("live-{i}");
        let options = eventstore::SubscribeToStreamOptions::default()
            .start_from(eventstore::StreamPosition::Start);
        let mut arrivals = c
            .target_client
            .subscribe_to_stream(stream.as_str(), &options)
            .await;
        let id = uuid::Uuid::new_v4();
        let event = eventstore::EventData::binary("LiveEvent", vec![i as u8; 64].into()).id(id);
        c.source_client
            .append_to_stream(stream.as_str(), &Default::default(), event)
            .await
            .unwrap();
        let Ok(arrived) = tokio::time::timeout(Duration::from_secs(STALL), arrivals.next()).await
        else {
            panic!(
                "{stream} did not reach the target in {STALL}s: {:#}\nlog:\n{}",
                run.status().await,
                run.log()
            )
        };
        let arrived = arrived.unwrap();
        assert_eq!(arrived.get_original_event().id, id, "{stream}");

        // Idle again before the next one: this one written, nothing in
        // flight, the reader having read it and nothing else (no re-read
        // of what it had).
        let s = run
            .wait_status("the live event written, nothing in flight", STALL, |s| {
                count(s, "written") == written + i + 1 && s["in_flight"] == 0
            })
            .await;
        assert_eq!(count(&s, "read"), read + i + 1, "{s:#}");
        assert_eq!(s["state"], "running", "{s:#}");
        assert_eq!(s["restarts"], 0, "{s:#}");
    }

    // A continuous run keeps running, and stops cleanly when told to.
    let s = run.status().await;
    assert_eq!(s["live"], true, "{s:#}");
    run.stop().await;
    let report = c.compare().await;
    assert!(report.is_identical(), "{report}");
    assert_eq!(
        report.source_events,
        history.source_events + LIVE_EVENTS,
        "{report}"
    );
}
