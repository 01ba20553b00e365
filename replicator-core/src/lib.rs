//! The heart of replicator: the event model, the [`Reader`], [`Sink`] and
//! [`CheckpointStore`] traits, and the pipeline that joins them.
#![warn(missing_docs)]

pub mod error;
pub mod model;
pub mod traits;

pub use error::{BoxError, CheckpointError, ErrorKind, PipelineError, ReaderError, SinkError};
pub use model::{ChangeKind, Checkpoint, ContentType, Event, Position, SkipReason, StartFrom};
pub use traits::{CheckpointStore, EventStream, Reader, Sink, WriteAck};
