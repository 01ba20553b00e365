//! A custom [`Sink`] written against the replicator traits: it appends every
//! replicated change to a JSON-lines file.
//!
//! It shows what the [`Sink`] contract asks of a sink:
//! - `Ok` only once the batch is durable (the file is synced);
//! - replays are recognised: the file remembers the last source position it
//!   holds, and a change at or before it is acknowledged without being written
//!   again, so a restart from an older checkpoint leaves the file as it was;
//! - I/O errors are reported as transient (the pipeline retries the batch) and
//!   a change that cannot be encoded as permanent.
#![warn(missing_docs)]

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use base64::Engine;
use replicator_core::{ChangeKind, ContentType, Event, Position, Sink, SinkError, WriteAck};
use serde::{Deserialize, Serialize};

/// One line of the file.
#[derive(Debug, Serialize, Deserialize)]
pub struct Line {
    /// Source position, `[commit, prepare]`.
    pub position: [u64; 2],
    /// Target stream.
    pub stream: String,
    /// What kind of change: `append`, `metadata`, `delete`, `tombstone`.
    pub change: String,
    /// Event id.
    pub id: String,
    /// Event type.
    pub event_type: String,
    /// `true` when `data` is JSON.
    pub json: bool,
    /// Data, base64.
    pub data: String,
    /// User metadata, base64.
    pub metadata: String,
}

/// Appends each change as one JSON line to a file.
pub struct JsonLinesSink {
    path: PathBuf,
    state: Mutex<(File, Option<Position>)>,
}

impl JsonLinesSink {
    /// Opens (or creates) the file and finds the last position it holds.
    ///
    /// # Errors
    /// When the file cannot be opened or its last line is not one of ours.
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut last = None;
        if path.exists() {
            for line in BufReader::new(File::open(&path)?).lines() {
                let line: Line = serde_json::from_str(&line?).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: not a replicator JSON-lines file: {e}", path.display()),
                    )
                })?;
                last = Some(Position {
                    commit: line.position[0],
                    prepare: line.position[1],
                });
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(JsonLinesSink {
            path,
            state: Mutex::new((file, last)),
        })
    }

    fn line(event: &Event) -> Line {
        let b64 = base64::engine::general_purpose::STANDARD;
        Line {
            position: [event.position.commit, event.position.prepare],
            stream: event.target_stream().to_owned(),
            change: match event.kind {
                ChangeKind::Append => "append",
                ChangeKind::StreamMetadata => "metadata",
                ChangeKind::SoftDelete => "delete",
                ChangeKind::Tombstone => "tombstone",
                ChangeKind::Skip(_) => "skip",
            }
            .to_owned(),
            id: event.id.to_string(),
            event_type: event.event_type.clone(),
            json: event.content_type == ContentType::Json,
            data: b64.encode(&event.data),
            metadata: b64.encode(&event.metadata),
        }
    }
}

#[async_trait]
impl Sink for JsonLinesSink {
    async fn write(&self, batch: &[Event]) -> Result<WriteAck, SinkError> {
        // One partition (the default `max_in_flight`), so batches arrive in
        // source order and "at or before the last position" identifies replays.
        let mut state = self
            .state
            .lock()
            .map_err(|_| SinkError::permanent("sink poisoned"))?;
        let (file, last) = &mut *state;
        let mut buffer = Vec::new();
        let mut newest = *last;
        for event in batch.iter().filter(|e| Some(e.position) > *last) {
            serde_json::to_writer(&mut buffer, &Self::line(event)).map_err(|e| {
                SinkError::permanent(format!(
                    "cannot encode {} at {}",
                    event.stream, event.position
                ))
                .with_source(e)
            })?;
            buffer.push(b'\n');
            newest = Some(event.position);
        }
        let io = |e: std::io::Error| {
            SinkError::transient(format!("writing {}", self.path.display())).with_source(e)
        };
        file.write_all(&buffer).map_err(io)?;
        file.sync_data().map_err(io)?;
        *last = newest;
        Ok(WriteAck::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replicator_core::memory::{MemoryCheckpointStore, MemoryReader, MemorySource};
    use replicator_core::{Checkpoint, CheckpointStore, Pipeline};
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn a_replay_from_an_old_checkpoint_does_not_duplicate_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let source = MemorySource::new();
        for i in 0..20 {
            source.append_user_event(
                &format!("orders-{}", i % 3),
                format!("{{\"i\":{i}}}").into_bytes(),
            );
        }
        let store = MemoryCheckpointStore::new();
        let run = |store: MemoryCheckpointStore| {
            let sink = JsonLinesSink::open(&path).unwrap();
            Pipeline::builder(MemoryReader::new(source.clone(), false), sink, store)
                .build()
                .run(CancellationToken::new())
        };
        run(store.clone()).await.unwrap();
        // Roll the checkpoint back, as after a crash before the last store.
        let events = source.events();
        store
            .store(&Checkpoint::processed(events[4].position, None))
            .await
            .unwrap();
        run(store).await.unwrap();
        let lines = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = lines
            .lines()
            .map(|l| serde_json::from_str::<Line>(l).unwrap().id)
            .collect();
        let want: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, want);
    }
}
