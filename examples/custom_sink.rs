//! Replicates an in-memory source into a JSON-lines file with the custom sink
//! from this crate, then prints the file.
//!
//! `cargo run -p replicator-examples --example custom_sink`

use replicator_core::memory::{MemoryCheckpointStore, MemoryReader, MemorySource};
use replicator_core::Pipeline;
use replicator_examples::JsonLinesSink;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let source = MemorySource::new();
    for i in 0..5 {
        source.append_user_event("orders-1", format!("{{\"line\":{i}}}").into_bytes());
    }
    let path =
        std::env::temp_dir().join(format!("replicator-example-{}.jsonl", std::process::id()));
    let sink = JsonLinesSink::open(&path)?;
    let summary = Pipeline::builder(
        MemoryReader::new(source, false),
        sink,
        MemoryCheckpointStore::new(),
    )
    .build()
    .run(CancellationToken::new())
    .await?;
    println!("wrote {} events to {}", summary.written, path.display());
    print!("{}", std::fs::read_to_string(&path)?);
    std::fs::remove_file(&path)?;
    Ok(())
}
