//! Into Kafka: the replicator's pipeline with the Kafka sink beside a bare
//! librdkafka producer sending the same records (same settings, all in
//! flight at once, then every delivery awaited), in the same run, against
//! the broker at `KAFKA_BOOTSTRAP` (`eval "$(scripts/start-kafka)"`).
//!
//! `cargo bench -p replicator-benches --bench kafka` (`KAFKA_BENCH_EVENTS`,
//! default 50,000; 200-byte JSON events over 100 streams of 4 categories).

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use replicator_benches::env_num;
use replicator_core::memory::{MemoryCheckpointStore, MemoryReader, MemorySource};
use replicator_core::{Event, Pipeline, PipelineConfig, Position};
use replicator_kafka::{KafkaSink, KafkaSinkConfig, DEFAULT_SETTINGS};
use tokio_util::sync::CancellationToken;

fn events(run: &str, count: u64) -> Vec<Event> {
    (0..count)
        .map(|i| {
            let stream = format!("bench{run}c{}-{}", i % 4, i % 100);
            let data = format!(r#"{{"i":{i},"pad":"{}"}}"#, "x".repeat(180));
            Event::new(stream, "Benched", data)
                .with_revision(i / 100)
                .with_position(Position::at(i * 100 + 100))
        })
        .collect()
}

async fn through_sink(bootstrap: &str, events: Vec<Event>) -> Duration {
    let source = MemorySource::new();
    for e in events {
        source.push(e);
    }
    let sink = KafkaSink::new(KafkaSinkConfig::new(
        format!("bootstrap.servers={bootstrap}").into(),
    ))
    .expect("a Kafka sink");
    let pipeline = Pipeline::builder(
        MemoryReader::new(source, false),
        sink,
        MemoryCheckpointStore::new(),
    )
    .config(PipelineConfig {
        buffer_size: 10_000,
        ..PipelineConfig::default()
    })
    .build();
    let started = Instant::now();
    let summary = pipeline
        .run(CancellationToken::new())
        .await
        .expect("the copy into Kafka");
    assert!(summary.completed);
    started.elapsed()
}

async fn bare(bootstrap: &str, events: &[Event]) -> Duration {
    let mut config = ClientConfig::new();
    for (k, v) in DEFAULT_SETTINGS {
        config.set(k, v);
    }
    let producer: FutureProducer = config
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("a producer");
    let started = Instant::now();
    // Other topics than the sink's, so that both start from empty ones.
    let topics: Vec<String> = events
        .iter()
        .map(|e| e.stream.split('-').next().unwrap_or_default().to_owned() + "bare")
        .collect();
    let mut deliveries = Vec::with_capacity(events.len());
    for (e, topic) in events.iter().zip(&topics) {
        let record = FutureRecord::to(topic).key(&e.stream).payload(&e.data[..]);
        deliveries.push(producer.send(record, rdkafka::util::Timeout::Never));
    }
    for d in futures::future::join_all(deliveries).await {
        d.expect("delivered");
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP")
        .expect("KAFKA_BOOTSTRAP: run `eval \"$(scripts/start-kafka)\"` first");
    let count = env_num("KAFKA_BENCH_EVENTS", 50_000);
    let run = std::process::id().to_string();
    let all = events(&run, count);
    let bare_time = bare(&bootstrap, &all).await;
    let sink_time = through_sink(&bootstrap, all).await;
    let rate = |d: Duration| count as f64 / d.as_secs_f64();
    println!("| into Kafka ({count} events, 200 B) | events/s | time |");
    println!("|---|---:|---:|");
    println!(
        "| bare librdkafka producer, all in flight | {:.0} | {:.2?} |",
        rate(bare_time),
        bare_time
    );
    println!(
        "| replicator pipeline + KafkaSink (headers, checkpoints) | {:.0} | {:.2?} |",
        rate(sink_time),
        sink_time
    );
}
