//! The Kafka sink against a real Kafka-protocol broker (tansu: the shared
//! one at `KAFKA_BOOTSTRAP`, or one of the test's own to freeze), read back by
//! an independent consumer (kafka-python): topics, keys, values, headers,
//! order per key, nothing missing, nothing twice; a router file; deletions as
//! null-value records; a frozen broker failing writes by name and the retried
//! batch landing once. `eval "$(scripts/start-kafka)"` provides all of it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use replicator_core::memory::{MemoryCheckpointStore, MemoryReader, MemorySource};
use replicator_core::{
    ChangeKind, ContentType, Event, Pipeline, PipelineConfig, Position, Sink, SkipReason,
};
use replicator_kafka::{headers, DeleteMode, KafkaSink, KafkaSinkConfig, KafkaSinkError};
use replicator_testkit::support::kafka::{
    bootstrap, create_topics, read_topics, unique, KafkaRecord, TansuBroker,
};
use replicator_transform::js::JsRouter;
use tokio_util::sync::CancellationToken;

/// Streams per category in the workload.
const STREAMS: usize = 8;
/// User events of the workload.
const EVENTS: usize = 1_500;

/// A source log over `categories` (each `STREAMS` streams), events spread
/// over the streams by a fixed pseudo-random walk, JSON data and metadata
/// (every tenth event binary), plus what is never sent by default: a stream
/// metadata record, a tombstone and a system event.
fn workload(categories: &[String]) -> (MemorySource, Vec<Event>) {
    let source = MemorySource::new();
    let mut revisions: HashMap<String, u64> = HashMap::new();
    let mut position = 0u64;
    let mut next = |kind: ChangeKind, stream: String, event_type: &str, data: Vec<u8>| {
        position += 100;
        let revision = revisions.entry(stream.clone()).or_default();
        let mut event = Event::new(stream, event_type, data)
            .with_revision(*revision)
            .with_position(Position::at(position))
            .with_kind(kind);
        *revision += 1;
        if kind == ChangeKind::Append {
            event = event.with_metadata(format!(r#"{{"tenant":"t{}"}}"#, position % 3));
        }
        event
    };
    let mut state = 7u64;
    let mut user = Vec::new();
    for i in 0..EVENTS {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let category = &categories[(state >> 33) as usize % categories.len()];
        let stream = format!("{category}-{}", (state >> 40) as usize % STREAMS);
        if i == 700 {
            // Metadata of the first stream, then a tombstone of another.
            let meta = next(
                ChangeKind::StreamMetadata,
                format!("$${}-0", categories[0]),
                "$metadata",
                br#"{"$maxCount":5}"#.to_vec(),
            );
            source.push(meta);
            let gone = next(
                ChangeKind::Tombstone,
                format!("{}-gone", categories[0]),
                "$streamDeleted",
                Vec::new(),
            );
            source.push(gone);
            let system = next(
                ChangeKind::Skip(SkipReason::SystemEvent),
                "$stats".into(),
                "$statsCollected",
                b"{}".to_vec(),
            );
            source.push(system);
        }
        let mut event = if i % 10 == 9 {
            next(
                ChangeKind::Append,
                stream,
                "Blob",
                vec![0, 1, 2, 255, (i % 256) as u8],
            )
            .with_content_type(ContentType::Binary)
        } else {
            let data = format!(r#"{{"n":{i}}}"#).into_bytes();
            next(ChangeKind::Append, stream, "Happened", data)
        };
        event = event.with_id(uuid::Uuid::new_v4());
        source.push(event.clone());
        user.push(event);
    }
    (source, user)
}

/// Replicates `source` (to its end) through `sink`, checkpointing every 100.
async fn replicate(source: MemorySource, sink: KafkaSink) {
    let pipeline = Pipeline::builder(
        MemoryReader::new(source, false),
        sink,
        MemoryCheckpointStore::new(),
    )
    .config(PipelineConfig {
        checkpoint_after: 100,
        call_timeout: Duration::from_secs(20),
        ..PipelineConfig::default()
    })
    .build();
    let summary = tokio::time::timeout(
        Duration::from_secs(120),
        pipeline.run(CancellationToken::new()),
    )
    .await
    .expect("the copy into Kafka did not end within 120 s")
    .expect("the copy into Kafka failed");
    assert!(summary.completed, "{summary:?}");
}

fn sink(bootstrap: &str) -> KafkaSinkConfig {
    KafkaSinkConfig::new(format!("bootstrap.servers={bootstrap};client.id=replicator-test").into())
}

/// Every record of `topics`, each event id once per record.
fn by_id(records: &[KafkaRecord]) -> HashMap<String, Vec<&KafkaRecord>> {
    let mut ids: HashMap<String, Vec<&KafkaRecord>> = HashMap::new();
    for r in records {
        let id = r.header(headers::EVENT_ID).expect("an event id header");
        ids.entry(id).or_default().push(r);
    }
    ids
}

/// Checks that the records of each key are in source order: within a
/// partition by offset, revisions of one stream increase.
fn assert_order_per_key(records: &[KafkaRecord]) {
    /// (topic, key) → (partition, offset, revision, stream) of its last record.
    type Last = HashMap<(String, Option<Vec<u8>>), (i32, i64, u64, String)>;
    let mut last = Last::new();
    for r in records {
        let revision: u64 = r.header(headers::REVISION).unwrap().parse().unwrap();
        let stream = r.header(headers::STREAM).unwrap();
        let key = (r.topic.clone(), r.key.clone());
        if let Some((partition, offset, previous, previous_stream)) = last.get(&key) {
            assert_eq!(*partition, r.partition, "one key, one partition: {r:?}");
            assert!(*offset < r.offset);
            if *previous_stream == stream {
                assert!(
                    *previous < revision,
                    "key {:?} of {}: revision {revision} after {previous}",
                    r.key_str(),
                    r.topic
                );
            }
        }
        last.insert(key, (r.partition, r.offset, revision, stream));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_of_several_categories_lands_in_its_topics_once_with_keys_headers_and_order() {
    let broker = bootstrap();
    let categories: Vec<String> = ["orders", "customers", "payments"]
        .iter()
        .map(|c| unique(c))
        .collect();
    // Several partitions, so that order per key is a property of the keys.
    let topics: Vec<(&str, u32)> = categories.iter().map(|c| (c.as_str(), 3)).collect();
    create_topics(&broker, &topics);
    let (source, user) = workload(&categories);
    let mut config = sink(&broker);
    config.metadata_headers = vec!["tenant".into()];
    replicate(source, KafkaSink::new(config).unwrap()).await;

    let records = read_topics(&broker, &categories, EVENTS);
    assert_eq!(
        records.len(),
        EVENTS,
        "one record per user event, nothing else"
    );
    let ids = by_id(&records);
    for event in &user {
        let found = &ids[&event.id.to_string()];
        assert_eq!(
            found.len(),
            1,
            "event {} sent {} times",
            event.id,
            found.len()
        );
        let r = found[0];
        let category = event.stream.split('-').next().unwrap();
        assert_eq!(r.topic, category);
        assert_eq!(r.key_str().as_deref(), Some(event.stream.as_str()));
        assert_eq!(r.value.as_deref(), Some(&event.data[..]));
        assert_eq!(r.header(headers::EVENT_TYPE).unwrap(), event.event_type);
        assert_eq!(r.header(headers::STREAM).unwrap(), event.stream);
        assert_eq!(
            r.header(headers::REVISION).unwrap(),
            event.revision.to_string()
        );
        assert_eq!(
            r.header(headers::POSITION).unwrap(),
            format!("{}/{}", event.position.commit, event.position.prepare)
        );
        let content_type = match event.content_type {
            ContentType::Json => "application/json",
            ContentType::Binary => "application/octet-stream",
        };
        assert_eq!(r.header(headers::CONTENT_TYPE).unwrap(), content_type);
        assert_eq!(
            r.header(headers::METADATA).unwrap().as_bytes(),
            &event.metadata[..]
        );
        let tenant = format!("t{}", event.position.commit % 3);
        assert_eq!(r.header("tenant"), Some(tenant));
        assert!(r.header(headers::CREATED).unwrap().ends_with('Z'));
        let created = event
            .created
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        assert_eq!(r.timestamp, i64::try_from(created).unwrap());
    }
    assert_order_per_key(&records);
    let partitions: BTreeMap<i32, usize> = records.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.partition).or_default() += 1;
        m
    });
    assert!(
        partitions.len() > 1,
        "keys spread over partitions: {partitions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_file_chooses_the_topic_and_key() {
    let broker = bootstrap();
    let categories = vec![unique("alpha"), unique("beta")];
    let routed = unique("routed");
    create_topics(&broker, &[(&routed, 2)]);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("route.js");
    // The C# tool's documented form; binary events are not given to it and
    // take the default route.
    std::fs::write(
        &script,
        format!(
            "function route(stream, eventType, data, meta) {{\n  \
               return {{ topic: \"{routed}\", partitionKey: meta.tenant }};\n}}\n"
        ),
    )
    .unwrap();
    let (source, user) = workload(&categories);
    let mut config = sink(&broker);
    config.router = Some(std::sync::Arc::new(
        JsRouter::from_file(&script)
            .unwrap()
            .with_in_flight(4)
            .unwrap(),
    ));
    replicate(source, KafkaSink::new(config).unwrap()).await;

    let mut topics = categories.clone();
    topics.push(routed.clone());
    let records = read_topics(&broker, &topics, EVENTS);
    assert_eq!(records.len(), EVENTS);
    let ids = by_id(&records);
    for event in &user {
        let r = ids[&event.id.to_string()][0];
        if event.content_type == ContentType::Json {
            assert_eq!(r.topic, routed);
            assert_eq!(r.key_str(), Some(format!("t{}", event.position.commit % 3)));
        } else {
            assert_eq!(r.topic, event.stream.split('-').next().unwrap());
            assert_eq!(r.key_str().as_deref(), Some(event.stream.as_str()));
        }
    }
    // One key now holds several streams: each stream's records still in order.
    assert_order_per_key(&records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_streams_become_null_value_records_when_asked() {
    let broker = bootstrap();
    let category = unique("deleting");
    let source = MemorySource::new();
    let a = source.append_user_event(&format!("{category}-1"), br#"{"a":1}"#.to_vec());
    let tombstone = Event::new(format!("{category}-1"), "$streamDeleted", "")
        .with_position(Position::at(a.position.commit + 100))
        .with_kind(ChangeKind::Tombstone);
    source.push(tombstone.clone());
    let soft = Event::new(format!("$${category}-2"), "$metadata", "{}")
        .with_position(Position::at(a.position.commit + 200))
        .with_kind(ChangeKind::SoftDelete);
    source.push(soft);
    let mut config = sink(&broker);
    config.deletes = DeleteMode::Tombstone;
    replicate(source, KafkaSink::new(config).unwrap()).await;

    let mut records = read_topics(&broker, std::slice::from_ref(&category), 3);
    // In order per key (the partitions of an auto-created topic are the broker's choice).
    records.sort_by_key(|r| (r.key.clone(), r.offset));
    let shown: Vec<(Option<String>, bool)> = records
        .iter()
        .map(|r| (r.key_str(), r.value.is_some()))
        .collect();
    assert_eq!(
        shown,
        vec![
            (Some(format!("{category}-1")), true),
            (Some(format!("{category}-1")), false),
            (Some(format!("{category}-2")), false),
        ]
    );
    assert_eq!(
        records[1].header(headers::EVENT_TYPE).as_deref(),
        Some("$streamDeleted")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_fails_the_write_naming_it_and_the_retry_lands_each_record_once() {
    let broker = TansuBroker::start().await;
    let category = unique("frozen");
    create_topics(&broker.bootstrap(), &[(&category, 2)]);
    let mut config = sink(&broker.bootstrap());
    config.request_timeout = Duration::from_secs(2);
    let sink = KafkaSink::new(config).unwrap();
    sink.check().await.unwrap();
    let batch = |from: u64| -> Vec<Event> {
        (from..from + 200)
            .map(|i| {
                Event::new(
                    format!("{category}-{}", i % 5),
                    "E",
                    format!(r#"{{"i":{i}}}"#),
                )
                .with_revision(i / 5)
                .with_position(Position::at(i * 10 + 10))
            })
            .collect()
    };
    let first = batch(0);
    sink.write(&first).await.unwrap();

    broker.freeze();
    let second = batch(200);
    let err = sink.write(&second).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string().contains(&broker.bootstrap()),
        "the error names the broker: {err}"
    );
    broker.thaw();
    // The pipeline retries the same batch: what the producer still holds is
    // awaited, not sent again.
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match sink.write(&second).await {
                Ok(_) => break,
                Err(e) => assert!(e.is_transient(), "{e}"),
            }
        }
    })
    .await
    .expect("the retried write did not succeed within 120 s of the thaw");

    let records = read_topics(&broker.bootstrap(), std::slice::from_ref(&category), 400);
    let ids = by_id(&records);
    for event in first.iter().chain(&second) {
        let n = ids.get(&event.id.to_string()).map_or(0, Vec::len);
        assert_eq!(
            n, 1,
            "event {} of {} is there {n} times",
            event.id, event.stream
        );
    }
    assert_eq!(records.len(), 400);
    assert_order_per_key(&records);
}

#[tokio::test]
async fn bad_connection_strings_and_topics_are_errors_naming_what_is_wrong() {
    let err = KafkaSink::new(KafkaSinkConfig::new("localhost:9092".into())).unwrap_err();
    assert!(matches!(err, KafkaSinkError::NotASetting { .. }), "{err}");
    let err = KafkaSink::new(KafkaSinkConfig::new("linger.ms=5".into())).unwrap_err();
    assert!(matches!(err, KafkaSinkError::NoBootstrapServers), "{err}");
    let err = KafkaSink::new(KafkaSinkConfig::new(
        "bootstrap.servers=localhost:9092;no.such.setting=1".into(),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("no.such.setting"), "{err}");
    // A value may hold `=` (split at the first one).
    assert_eq!(
        replicator_kafka::parse_settings("bootstrap.servers=k:9092; sasl.jaas.config = a=b ;")
            .unwrap(),
        vec![
            ("bootstrap.servers".to_owned(), "k:9092".to_owned()),
            ("sasl.jaas.config".to_owned(), "a=b".to_owned()),
        ]
    );

    let sink = KafkaSink::new(sink(&bootstrap())).unwrap();
    let event = Event::new("kunden/ü-1", "E", "{}");
    let err = sink.write(&[event]).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(
        err.to_string().contains("kunden/ü-1") && err.to_string().contains("sink.router"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_back_without_the_producers_state_gets_the_records_from_a_new_producer() {
    let broker = TansuBroker::start().await;
    let category = unique("reborn");
    let mut config = sink(&broker.bootstrap());
    config.request_timeout = Duration::from_secs(1);
    config.stall_limit = Duration::from_secs(4);
    let sink = KafkaSink::new(config).unwrap();
    let batch = |from: u64| -> Vec<Event> {
        (from..from + 50)
            .map(|i| {
                Event::new(
                    format!("{category}-{}", i % 5),
                    "E",
                    format!(r#"{{"i":{i}}}"#),
                )
                .with_revision(i / 5)
                .with_position(Position::at(i * 10 + 10))
            })
            .collect()
    };
    let first = batch(0);
    // The first write also creates the topic: it may take more than a second.
    tokio::time::timeout(Duration::from_secs(60), async {
        while sink.write(&first).await.is_err() {}
    })
    .await
    .expect("the first write did not succeed within 60 s");
    // Killed, then a new empty broker at the same address: the idempotent
    // producer's id means nothing there, and it would wait forever.
    let port = broker.kill();
    let second = batch(50);
    assert!(sink.write(&second).await.unwrap_err().is_transient());
    let broker = TansuBroker::start_on(port).await;
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Err(e) = sink.write(&second).await {
            assert!(e.is_transient(), "{e}");
        }
    })
    .await
    .expect("the records did not reach the new broker within 120 s");
    let records = read_topics(&broker.bootstrap(), std::slice::from_ref(&category), 50);
    let ids = by_id(&records);
    for event in &second {
        assert_eq!(
            ids.get(&event.id.to_string()).map_or(0, Vec::len),
            1,
            "{}",
            event.id
        );
    }
    assert_order_per_key(&records);
}
