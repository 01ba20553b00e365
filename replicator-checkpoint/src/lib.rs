//! File and MongoDB checkpoint stores and `chaser.chk` seeding for replicator.
//!
//! Both stores implement [`replicator_core::CheckpointStore`] and keep every
//! field of a [`Checkpoint`]: the source position (commit and prepare), the
//! target position, when it was taken and whether it is a seed. Both also read
//! what the C# replicator left behind, so its users keep their position.
//!
//! - [`FileCheckpointStore`]: a versioned JSON file, replaced atomically; its
//!   directory is created when missing.
//! - [`MongoCheckpointStore`]: one document per instance id in the `checkpoint`
//!   collection; each call is one attempt with a deadline of a few seconds
//!   (the pipeline retries).
//! - [`chaser::read_chaser`] and [`seed_if_empty`]: start a replication at a
//!   backup's `chaser.chk` position.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), replicator_core::CheckpointError> {
//! use replicator_checkpoint::{seed_if_empty, FileCheckpointStore};
//! use replicator_core::{Checkpoint, CheckpointStore, Position, StartFrom};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = FileCheckpointStore::new(dir.path().join("checkpoint"));
//! assert_eq!(store.load().await?, None);
//!
//! // A seed is stored only while the store is empty, and is inclusive.
//! assert!(seed_if_empty(&store, Position::at(1000)).await?);
//! let seeded = store.load().await?.unwrap();
//! assert_eq!(seeded.start_from(), StartFrom::At(Position::at(1000)));
//!
//! store.store(&Checkpoint::processed(Position::at(2000), None)).await?;
//! assert!(!seed_if_empty(&store, Position::at(1000)).await?);
//! assert_eq!(store.load().await?.unwrap().source, Position::at(2000));
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod chaser;
mod file;
mod mongo;

pub use file::FileCheckpointStore;
pub use mongo::MongoCheckpointStore;

use replicator_core::{Checkpoint, CheckpointError, CheckpointStore, Position};

/// Stores [`Checkpoint::seeded`]`(position)` when `store` holds no checkpoint.
///
/// A stored checkpoint always wins over a seed: seeding a store that already
/// has one would move the replication backwards (duplicates) or forwards (lost
/// events). Returns whether it seeded.
///
/// # Errors
/// When the store cannot be read or written; a corrupt stored checkpoint is an
/// error too, never a reason to seed over it.
pub async fn seed_if_empty(
    store: &dyn CheckpointStore,
    position: Position,
) -> Result<bool, CheckpointError> {
    if let Some(existing) = store.load().await? {
        tracing::info!(
            stored = %existing.source,
            seed = %position,
            "A checkpoint is already stored; not seeding"
        );
        return Ok(false);
    }
    store.store(&Checkpoint::seeded(position)).await?;
    tracing::info!(seed = %position, "Seeded the checkpoint store");
    Ok(true)
}
