//! The pipeline's own cost: in-memory source and sink, so nothing but the
//! reader task, dispatcher, partition writers, acknowledgement tracker and
//! checkpointer is measured, first with an in-memory checkpoint store, then
//! with the real file and MongoDB stores at `checkpointAfter` 1 and 1000: the
//! checkpoint store is off the critical path when those rows stay close to
//! the in-memory ones. The EventStoreDB replication benchmark is
//! `replication`; this one shows how far above any network-bound rate the
//! pipeline's ceiling lies.
//!
//! `cargo bench -p replicator-benches --bench pipeline` (EVENTS=n to resize;
//! MONGODB_URL=mongodb://… adds the MongoDB rows, which are otherwise listed
//! as not measured)

use std::sync::Arc;
use std::time::Instant;

use replicator_benches::{peak_rss_mib, print_table, rate};
use replicator_checkpoint::{FileCheckpointStore, MongoCheckpointStore};
use replicator_core::memory::{MemoryCheckpointStore, MemoryReader, MemorySink, MemorySource};
use replicator_core::{CheckpointStore, Pipeline, PipelineConfig};
use tokio_util::sync::CancellationToken;

/// Which checkpoint store a row uses.
#[derive(Clone, Copy)]
enum Store {
    Memory,
    File,
    Mongo,
}

fn main() {
    let events: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        // `cargo test --all-targets` runs this in a debug build as a smoke
        // test: a tenth of the events is enough to prove it works.
        .unwrap_or(if cfg!(debug_assertions) {
            30_000
        } else {
            300_000
        });
    let mongo_url = std::env::var("MONGODB_URL").ok().filter(|u| !u.is_empty());
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let source = MemorySource::new();
    for i in 0..events {
        source.append_user_event(&format!("stream-{}", i % 1000), vec![b'x'; 200]);
    }
    let dir = tempfile_dir();
    let mut rows = Vec::new();
    let runs = [
        (Store::Memory, 1, 500, 1000),
        (Store::Memory, 4, 500, 1000),
        (Store::Memory, 8, 500, 1000),
        (Store::Memory, 8, 50, 1000),
        (Store::Memory, 4, 500, 1),
        (Store::File, 4, 500, 1000),
        (Store::File, 4, 500, 1),
        (Store::Mongo, 4, 500, 1000),
        (Store::Mongo, 4, 500, 1),
    ];
    for (n, (kind, partitions, batch, checkpoint_after)) in runs.into_iter().enumerate() {
        let (name, store): (&str, Arc<dyn CheckpointStore>) = match kind {
            Store::Memory => ("memory", Arc::new(MemoryCheckpointStore::new())),
            Store::File => (
                "file",
                Arc::new(FileCheckpointStore::new(
                    dir.join(format!("checkpoint-{n}")),
                )),
            ),
            Store::Mongo => match &mongo_url {
                Some(url) => (
                    "MongoDB",
                    Arc::new(
                        runtime
                            .block_on(MongoCheckpointStore::connect(
                                url,
                                "replicator_bench",
                                &format!("bench-{}-{n}", std::process::id()),
                            ))
                            .expect("MongoDB checkpoint store"),
                    ),
                ),
                None => {
                    rows.push(vec![
                        "MongoDB".into(),
                        partitions.to_string(),
                        batch.to_string(),
                        checkpoint_after.to_string(),
                        "not measured: MONGODB_URL not set".into(),
                        "-".into(),
                    ]);
                    continue;
                }
            },
        };
        let sink = MemorySink::new().with_partitions(partitions);
        let stores = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let pipeline = Pipeline::builder(
            MemoryReader::new(source.clone(), false),
            sink,
            Counting {
                inner: store,
                stores: stores.clone(),
            },
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
            name.to_owned(),
            partitions.to_string(),
            batch.to_string(),
            checkpoint_after.to_string(),
            format!("{:.0}", rate(summary.written, elapsed)),
            stores
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        ]);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("pipeline overhead, {events} events of 200 bytes over 1000 streams, in-memory source and sink");
    print_table(
        &[
            "checkpoint store",
            "partitions",
            "max batch",
            "checkpointAfter",
            "events/s",
            "checkpoints stored",
        ],
        &rows,
    );
    if let Some(peak) = peak_rss_mib() {
        println!("peak RSS: {peak:.0} MiB (includes the in-memory source and target)");
    }
}

/// A fresh directory for the file store's checkpoints.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("replicator-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    dir
}

/// Counts the stores that succeed.
struct Counting {
    inner: Arc<dyn CheckpointStore>,
    stores: Arc<std::sync::atomic::AtomicU64>,
}

#[async_trait::async_trait]
impl CheckpointStore for Counting {
    async fn load(
        &self,
    ) -> Result<Option<replicator_core::Checkpoint>, replicator_core::CheckpointError> {
        self.inner.load().await
    }
    async fn store(
        &self,
        checkpoint: &replicator_core::Checkpoint,
    ) -> Result<(), replicator_core::CheckpointError> {
        self.inner.store(checkpoint).await?;
        self.stores
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    async fn delete(&self) -> Result<(), replicator_core::CheckpointError> {
        self.inner.delete().await
    }
}
