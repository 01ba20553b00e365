//! `replicator run` into Kafka (`sink.protocol: kafka`), against a real
//! Kafka-protocol broker (tansu; the shared `KAFKA_BOOTSTRAP`, or one of the
//! test's own to freeze) and read back by kafka-python: the C# tool's
//! configuration as its docs show it, its router file, a broker frozen
//! (SIGSTOP) mid-copy, and the replicator killed (SIGKILL) while the broker
//! is frozen.
//!
//! Where the copy is when the broker freezes is decided by the test: every
//! event written so far is copied and checkpointed first, then the broker
//! freezes, then the test appends the events that have to go through the
//! outage. Nothing of those can be acknowledged until the thaw, so the
//! stored checkpoint stays at the end of the first step, whatever the
//! machine's speed.

use std::collections::HashMap;

use replicator_kafka::headers;
use replicator_testkit::support::client;
use replicator_testkit::support::kafka::{
    bootstrap, read_topics, unique, KafkaRecord, TansuBroker,
};
use replicator_testkit::EsdbServer;
use serde_json::Value;

use crate::status::Running;
use crate::{assert_ok, run_async, Workdir};

/// Streams per category.
const STREAMS: usize = 6;
/// User events appended in each step.
const STEP: usize = 600;
/// Bound of the waits: only a stall misses it.
const STALL: u64 = 120;

/// Three categories no other test uses.
fn categories() -> Vec<String> {
    ["orders", "customers", "payments"]
        .iter()
        .map(|c| unique(c))
        .collect()
}

/// Appends `STEP` JSON events numbered from `from`, spread over the
/// categories' streams, 50 per append; returns (id, stream) in order.
async fn append(
    source: &eventstore::Client,
    categories: &[String],
    from: usize,
) -> Vec<(uuid::Uuid, String)> {
    let mut written = Vec::new();
    for chunk in (from..from + STEP).collect::<Vec<_>>().chunks(50) {
        let first = chunk[0];
        let stream = format!(
            "{}-{}",
            categories[first / 50 % categories.len()],
            first / 150 % STREAMS
        );
        let events: Vec<eventstore::EventData> = chunk
            .iter()
            .map(|i| {
                let id = uuid::Uuid::new_v4();
                written.push((id, stream.clone()));
                eventstore::EventData::json("Happened", &serde_json::json!({ "n": i }))
                    .unwrap()
                    .id(id)
            })
            .collect();
        source
            .append_to_stream(stream.as_str(), &Default::default(), events)
            .await
            .unwrap();
    }
    written
}

/// A working directory with `yaml` as `config/appsettings.yaml`.
fn workdir(yaml: &str) -> Workdir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/appsettings.yaml"), yaml).unwrap();
    Workdir { dir }
}

/// Records by event id.
fn by_id(records: &[KafkaRecord]) -> HashMap<String, Vec<&KafkaRecord>> {
    let mut ids: HashMap<String, Vec<&KafkaRecord>> = HashMap::new();
    for r in records {
        ids.entry(r.header(headers::EVENT_ID).expect("an event id header"))
            .or_default()
            .push(r);
    }
    ids
}

/// Every event is there, in its category's topic, keyed by its stream;
/// returns how many records are duplicates.
fn assert_all_there(records: &[KafkaRecord], written: &[(uuid::Uuid, String)]) -> usize {
    let ids = by_id(records);
    for (id, stream) in written {
        let found = ids
            .get(&id.to_string())
            .unwrap_or_else(|| panic!("event {id} of {stream} is missing"));
        for r in found {
            assert_eq!(r.topic, stream.split('-').next().unwrap());
            assert_eq!(r.key_str().as_deref(), Some(stream.as_str()));
            assert_eq!(r.header(headers::STREAM).as_deref(), Some(stream.as_str()));
        }
    }
    assert_eq!(ids.len(), written.len(), "records of events never written");
    records.len() - written.len()
}

/// Each key's records: the first copy of each event comes in revision
/// order, one revision after the other from the first the topic holds (a
/// replayed event may come again later, never before its predecessors'
/// first copies).
fn assert_first_copies_in_order(records: &[KafkaRecord]) {
    let mut seen: HashMap<(String, Option<Vec<u8>>), u64> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for r in records {
        let id = r.header(headers::EVENT_ID).unwrap();
        if !ids.insert(id) {
            continue;
        }
        let revision: u64 = r.header(headers::REVISION).unwrap().parse().unwrap();
        let next = seen
            .entry((r.topic.clone(), r.key.clone()))
            .or_insert(revision);
        assert_eq!(
            revision,
            *next,
            "key {:?} of {}: first copy of revision {revision} where {} was due",
            r.key_str(),
            r.topic,
            *next
        );
        *next += 1;
    }
}

fn csharp_config(source: &str, broker: &str, extra_sink: &str) -> String {
    // As the C# tool's docs show it (sinks.mdx), plus a source and stop once
    // caught up.
    format!(
        "replicator:\n  reader:\n    connectionString: \"{source}\"\n    protocol: grpc\n  \
         sink:\n    connectionString: bootstrap.servers={broker}\n    protocol: kafka\n    \
         partitionCount: 10\n{extra_sink}  runContinuously: false\n  checkpoint:\n    \
         path: ./checkpoint\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csharp_kafka_configuration_runs_unchanged_into_a_topic_per_category() {
    let broker = bootstrap();
    let source = EsdbServer::start().await.unwrap();
    let source_client = client(&source.connection_string());
    let categories = categories();
    let written = append(&source_client, &categories, 0).await;
    // A deleted stream: the C# tool sends nothing for it, nor do we by default.
    source_client
        .tombstone_stream(format!("{}-0", categories[0]), &Default::default())
        .await
        .unwrap();
    let w = workdir(&csharp_config(&source.connection_string(), &broker, ""));
    let o = run_async(&w, &["run"]).await;
    assert_ok(&o);

    let records = read_topics(&broker, &categories, written.len());
    assert_eq!(assert_all_there(&records, &written), 0, "no duplicates");
    assert!(records.iter().all(|r| r.value.is_some()));
    assert_first_copies_in_order(&records);
    let o = run_async(&w, &["verify"]).await;
    assert!(!o.status.success());
    assert!(
        crate::stderr(&o).contains("sink.protocol is kafka"),
        "{}",
        crate::stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csharp_router_file_as_documented_routes_every_event_a_filter_lets_through() {
    let broker = bootstrap();
    let source = EsdbServer::start().await.unwrap();
    let source_client = client(&source.connection_string());
    let categories = categories();
    let written = append(&source_client, &categories, 0).await;
    // Left out by the filter, in front of the sink as for any target.
    let ignored: Vec<eventstore::EventData> = (0..20)
        .map(|i| eventstore::EventData::json("Ignored", &serde_json::json!({ "i": i })).unwrap())
        .collect();
    source_client
        .append_to_stream(
            format!("{}-1", categories[1]).as_str(),
            &Default::default(),
            ignored,
        )
        .await
        .unwrap();
    let topic = unique("myTopic");
    let w = workdir(&csharp_config(
        &source.connection_string(),
        &broker,
        "    router: ./config/route.js\n",
    ));
    let config = w.path("config/appsettings.yaml");
    let yaml = std::fs::read_to_string(&config).unwrap()
        + "  filters:\n    - type: eventType\n      exclude: ^Ignored$\n";
    std::fs::write(&config, yaml).unwrap();
    // The example of the C# tool's docs, with a topic of this test's own.
    std::fs::write(
        w.path("config/route.js"),
        format!(
            "function route(stream, eventType, data, meta) {{\n    return {{\n        \
             topic: \"{topic}\",\n        partitionKey: stream\n    }}\n}}\n"
        ),
    )
    .unwrap();
    let o = run_async(&w, &["run"]).await;
    assert_ok(&o);

    let records = read_topics(&broker, std::slice::from_ref(&topic), written.len());
    let ids = by_id(&records);
    assert_eq!(
        records.len(),
        written.len(),
        "every event once, none of the filtered"
    );
    for (id, stream) in &written {
        let r = ids[&id.to_string()][0];
        assert_eq!(r.topic, topic);
        assert_eq!(r.key_str().as_deref(), Some(stream.as_str()));
    }
    assert_first_copies_in_order(&records);
}

/// A run with short deadlines, its status server on a free port.
fn outage_config(source: &str, broker: &str) -> String {
    format!(
        "replicator:\n  reader:\n    connectionString: \"{source}\"\n  sink:\n    \
         connectionString: bootstrap.servers={broker};client.id=replicator-test\n    \
         protocol: kafka\n  callTimeoutInSeconds: 2\n  http:\n    unhealthyAfterSeconds: 2\n  \
         checkpoint:\n    checkpointAfter: 100\n"
    )
}

fn written(s: &Value) -> u64 {
    s["events"]["written"].as_u64().unwrap_or(0)
}

/// Waits until `events` are written and checkpointed, caught up and ready.
async fn wait_copied(run: &Running, events: usize) -> Value {
    run.wait_status("copied, checkpointed, ready", STALL, |s| {
        written(s) == events as u64
            && s["caught_up"] == true
            && s["ready"] == true
            && s["checkpoint"]["unstored"] == 0
            && s["checkpoint"]["stored_in_this_run"].as_u64() >= Some(1)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_turns_readiness_red_naming_it_and_the_copy_resumes_without_duplicates() {
    let broker = TansuBroker::start().await;
    let source = EsdbServer::start().await.unwrap();
    let source_client = client(&source.connection_string());
    let categories = categories();
    let mut all = append(&source_client, &categories, 0).await;
    let w = workdir(&outage_config(
        &source.connection_string(),
        &broker.bootstrap(),
    ));
    let run = Running::start(&w, &[]).await;
    wait_copied(&run, STEP).await;

    broker.freeze();
    let frozen = tokio::time::Instant::now();
    all.extend(append(&source_client, &categories, STEP).await);
    let s = run
        .wait_status("not ready, the target failing", STALL, |s| {
            s["ready"] == false && s["components"]["target"]["healthy"] == false
        })
        .await;
    println!("readiness red {:.1?} into the freeze", frozen.elapsed());
    let (code, body) = run.json("/health/ready").await;
    assert_eq!(code, 503, "{body:#}");
    assert!(
        body["problems"].to_string().contains("target failing"),
        "{body:#}"
    );
    let error = s["components"]["target"]["error"].to_string();
    assert!(
        error.contains(&broker.bootstrap()),
        "the target's error names the broker: {s:#}"
    );
    assert_eq!(run.json("/health/live").await.0, 200);
    assert_eq!(written(&s), STEP as u64, "{s:#}");

    broker.thaw();
    run.wait_status("everything copied after the thaw", STALL * 2, |s| {
        written(s) == 2 * STEP as u64 && s["caught_up"] == true && s["ready"] == true
    })
    .await;
    run.stop().await;

    let records = read_topics(&broker.bootstrap(), &categories, all.len());
    let duplicates = assert_all_there(&records, &all);
    assert_eq!(
        duplicates, 0,
        "records the producer still held are awaited on a retry, not sent again"
    );
    assert_first_copies_in_order(&records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_the_broker_is_frozen_then_a_restart_loses_nothing_and_duplicates_stay_in_the_window(
) {
    let broker = TansuBroker::start().await;
    let source = EsdbServer::start().await.unwrap();
    let source_client = client(&source.connection_string());
    let categories = categories();
    let mut all = append(&source_client, &categories, 0).await;
    let w = workdir(&outage_config(
        &source.connection_string(),
        &broker.bootstrap(),
    ));
    let run = Running::start(&w, &[]).await;
    let copied = wait_copied(&run, STEP).await;
    let checkpoint = copied["checkpoint"]["position"].clone();

    // The second step is read, and its writes hang on the frozen broker: the
    // checkpoint cannot pass them. Then the process dies.
    broker.freeze();
    all.extend(append(&source_client, &categories, STEP).await);
    let s = run
        .wait_status("the second step read, its writes hanging", STALL, |s| {
            s["events"]["read"].as_u64() >= Some(2 * STEP as u64)
                && s["components"]["target"]["attempts"].as_u64() >= Some(1)
        })
        .await;
    assert_eq!(s["checkpoint"]["position"], checkpoint, "{s:#}");
    run.kill().await;
    broker.thaw();

    let run = Running::start(&w, &[]).await;
    run.wait_status("the rest copied after the restart", STALL * 2, |s| {
        written(s) == STEP as u64 && s["caught_up"] == true && s["ready"] == true
    })
    .await;
    run.stop().await;

    let records = read_topics(&broker.bootstrap(), &categories, all.len());
    let duplicates = assert_all_there(&records, &all);
    println!(
        "duplicates after SIGKILL with {STEP} records unacknowledged past the checkpoint: \
         {duplicates}"
    );
    assert!(
        duplicates <= STEP,
        "at most the records after the stored checkpoint come twice: {duplicates}"
    );
    assert_first_copies_in_order(&records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_broker_turns_readiness_red_naming_it_and_the_copy_resumes_when_one_returns() {
    let broker = TansuBroker::start().await;
    let bootstrap = broker.bootstrap();
    let source = EsdbServer::start().await.unwrap();
    let source_client = client(&source.connection_string());
    let categories = categories();
    append(&source_client, &categories, 0).await;
    let w = workdir(&outage_config(&source.connection_string(), &bootstrap));
    let run = Running::start(&w, &[]).await;
    wait_copied(&run, STEP).await;

    // Gone, records and all (tansu keeps them in memory), then more to copy.
    let port = broker.kill();
    let after = append(&source_client, &categories, STEP).await;
    let s = run
        .wait_status("not ready, the target failing", STALL, |s| {
            s["ready"] == false && s["components"]["target"]["healthy"] == false
        })
        .await;
    assert!(
        s["problems"].to_string().contains("target failing"),
        "{s:#}"
    );
    assert!(
        s["components"]["target"]["error"]
            .to_string()
            .contains(&bootstrap),
        "the target's error names the broker: {s:#}"
    );
    assert_eq!(run.json("/health/live").await.0, 200);

    // A broker at the same address: the records the producer held go there.
    let broker = TansuBroker::start_on(port).await;
    let s = run
        .wait_status("caught up and ready on the new broker", STALL * 2, |s| {
            s["caught_up"] == true && s["ready"] == true && s["in_flight"] == 0
        })
        .await;
    println!("restarts after the broker came back: {}", s["restarts"]);
    run.stop().await;
    let records = read_topics(&broker.bootstrap(), &categories, after.len());
    let duplicates = assert_all_there(&records, &after);
    println!("duplicates on the new broker: {duplicates}");
    assert_first_copies_in_order(&records);
}
