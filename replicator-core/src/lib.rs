//! The heart of replicator: the event model, the [`Reader`], [`Sink`] and
//! [`CheckpointStore`] traits, and the [`Pipeline`] that joins them.
//!
//! A replication is a [`Pipeline`] built from a reader of the source, a sink
//! for the target and a checkpoint store; see [`Pipeline`] for a runnable
//! example with the in-memory parts of [`memory`].
//!
//! # Features
//! - `conformance`: the module `conformance`, the contract every
//!   [`CheckpointStore`] must keep as a test suite (`check_store`), for the
//!   tests of a custom store: turn it on in the store crate's
//!   `[dev-dependencies]`.
#![warn(missing_docs)]

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
pub mod health;
pub mod memory;
pub mod model;
pub mod pipeline;
pub mod retry;
pub mod secret;
pub mod traits;
pub mod transform;

pub use error::{
    BoxError, CheckpointError, ErrorKind, PipelineError, ReaderError, SinkError, TransformError,
};
pub use health::{Component, ComponentHealth, ComponentsHealth, Health, HealthReporter};
pub use model::{
    ChangeKind, Checkpoint, ContentType, Event, ParsePositionError, Position, SkipReason, StartFrom,
};
pub use pipeline::{
    Pipeline, PipelineBuilder, PipelineConfig, PipelineState, Progress, RunSummary,
};
pub use secret::ConnectionString;
pub use traits::{CheckpointStore, EventStream, HeadProbe, Reader, Sink, WriteAck};
pub use transform::{Partitioner, Transform};
