//! Embeds the pipeline in a service of your own: runs it in the background,
//! reports progress and health as it goes, and shuts it down gracefully with a
//! final checkpoint.
//!
//! The in-memory reader keeps following its source live; another task writes
//! to it meanwhile, as an application would write to the source cluster. Swap
//! in `replicator_esdb::EsdbReader` / `EsdbSink` and a store from
//! `replicator-checkpoint` for a real replication.
//!
//! `cargo run -p replicator-examples --example embed`

use std::time::Duration;

use replicator_core::memory::{MemoryCheckpointStore, MemoryReader, MemorySink, MemorySource};
use replicator_core::{Pipeline, PipelineConfig};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let source = MemorySource::new();
    let sink = MemorySink::new().with_partitions(4);
    let store = MemoryCheckpointStore::new();

    let pipeline = Pipeline::builder(
        MemoryReader::new(source.clone(), true),
        sink.clone(),
        store.clone(),
    )
    .config(PipelineConfig {
        checkpoint_after: 100,
        ..PipelineConfig::default()
    })
    .build();
    let mut progress = pipeline.progress();
    let cancel = CancellationToken::new();
    let replication = tokio::spawn(pipeline.run(cancel.clone()));

    // The application keeps writing to the source.
    let writer = {
        let source = source.clone();
        tokio::spawn(async move {
            for i in 0..1_000 {
                source.append_user_event(
                    &format!("account-{}", i % 10),
                    format!("{{\"i\":{i}}}").into_bytes(),
                );
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };
    writer.await?;

    // A readiness check would fail on `unhealthy_components(threshold)`; here
    // we print progress (published every 100 ms, not per event) until
    // everything written so far is replicated.
    let last = source.events().last().map(|e| e.position);
    while progress.borrow().processed != last {
        progress.changed().await?;
        let p = progress.borrow();
        println!(
            "written={} percent={:?} caught_up={} in_flight={} unhealthy={:?}",
            p.written,
            p.percent.map(|x| x.round()),
            p.caught_up,
            p.in_flight,
            p.unhealthy_components(Duration::from_secs(10)),
        );
    }

    // Graceful shutdown: drain in-flight writes, store a final checkpoint.
    cancel.cancel();
    let summary = replication.await??;
    println!(
        "replicated {} events into {} streams; checkpoint at {:?}",
        summary.written,
        sink.streams().len(),
        store.current().map(|c| c.source)
    );
    Ok(())
}
