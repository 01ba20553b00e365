//! The pipeline's own cost: in-memory source and sink, so nothing but the
//! reader task, dispatcher, partition writers, acknowledgement tracker and
//! checkpointer is measured. The EventStoreDB replication benchmark is
//! `replication`; this one shows how far above any network-bound rate the
//! pipeline's ceiling lies.
//!
//! `cargo bench -p replicator-benches --bench pipeline` (EVENTS=n to resize)

use std::time::Instant;

use replicator_benches::{peak_rss_mib, print_table, rate};
use replicator_core::memory::{MemoryCheckpointStore, MemoryReader, MemorySink, MemorySource};
use replicator_core::{Pipeline, PipelineConfig};
use tokio_util::sync::CancellationToken;

fn main() {
    let events: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let source = MemorySource::new();
    for i in 0..events {
        source.append_user_event(&format!("stream-{}", i % 1000), vec![b'x'; 200]);
    }
    let mut rows = Vec::new();
    for (partitions, batch, checkpoint_after) in [
        (1, 500, 1000),
        (4, 500, 1000),
        (8, 500, 1000),
        (8, 50, 1000),
        (4, 500, 1),
    ] {
        let sink = MemorySink::new().with_partitions(partitions);
        let store = MemoryCheckpointStore::new();
        let pipeline = Pipeline::builder(
            MemoryReader::new(source.clone(), false),
            sink,
            store.clone(),
        )
        .config(PipelineConfig {
            checkpoint_after,
            max_batch_events: batch,
            ..PipelineConfig::default()
        })
        .build();
        let started = Instant::now();
        let summary = runtime
            .block_on(pipeline.run(CancellationToken::new()))
            .expect("pipeline run");
        let elapsed = started.elapsed();
        assert_eq!(summary.written as usize, events);
        rows.push(vec![
            partitions.to_string(),
            batch.to_string(),
            checkpoint_after.to_string(),
            format!("{:.0}", rate(summary.written, elapsed)),
            store.history().len().to_string(),
        ]);
    }
    println!("pipeline overhead, {events} events of 200 bytes over 1000 streams, in-memory source/sink/store");
    print_table(
        &[
            "partitions",
            "max batch",
            "checkpointAfter",
            "events/s",
            "checkpoints",
        ],
        &rows,
    );
    if let Some(peak) = peak_rss_mib() {
        println!("peak RSS: {peak:.0} MiB (includes the in-memory source and target)");
    }
}
