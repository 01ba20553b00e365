//! Errors of the traits and the pipeline.

use std::error::Error as StdError;
use std::fmt;

use crate::model::Position;

/// A boxed error, the `source()` of the errors below.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Whether retrying the same operation can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server is restarting, unreachable, overloaded, or a timeout: retrying
    /// the same operation later can succeed.
    Transient,
    /// Bad credentials, access denied, a rejected or malformed request: retrying
    /// cannot help; the operator must act.
    Permanent,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
        })
    }
}

macro_rules! component_error {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, thiserror::Error)]
        #[error("{kind} {} error: {message}", $what)]
        pub struct $name {
            kind: ErrorKind,
            message: String,
            #[source]
            source: Option<BoxError>,
        }

        impl $name {
            /// An error that retrying may cure.
            pub fn transient(message: impl Into<String>) -> Self {
                Self { kind: ErrorKind::Transient, message: message.into(), source: None }
            }

            /// An error that retrying cannot cure.
            pub fn permanent(message: impl Into<String>) -> Self {
                Self { kind: ErrorKind::Permanent, message: message.into(), source: None }
            }

            /// Attaches the underlying error.
            pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
                self.source = Some(source.into());
                self
            }

            /// Whether retrying may cure it.
            pub fn kind(&self) -> ErrorKind {
                self.kind
            }

            /// Whether retrying may cure it.
            pub fn is_transient(&self) -> bool {
                self.kind == ErrorKind::Transient
            }

            /// What went wrong, without the source chain.
            pub fn message(&self) -> &str {
                &self.message
            }
        }
    };
}

component_error!(
    /// An error of a [`crate::Reader`].
    ReaderError,
    "reader"
);
component_error!(
    /// An error of a [`crate::Sink`]. The message names the stream and event
    /// that failed where it can.
    SinkError,
    "sink"
);
component_error!(
    /// An error of a [`crate::Transform`] or [`crate::Partitioner`]. The
    /// message says what failed (the script's message and line, the HTTP
    /// status); the pipeline adds the record's stream, revision and position.
    TransformError,
    "transform"
);
component_error!(
    /// An error of a [`crate::CheckpointStore`]. The message names the file,
    /// database or document involved.
    CheckpointError,
    "checkpoint store"
);

/// Why a pipeline run ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The checkpoint store could not be read at start-up: nothing was replicated.
    #[error("cannot load the checkpoint")]
    LoadCheckpoint(#[source] CheckpointError),
    /// The reader failed permanently.
    #[error("reading the source failed after position {last_processed:?}")]
    Reader {
        /// The last source position that was processed and checkpointed.
        last_processed: Option<Position>,
        /// The reader's error.
        #[source]
        source: ReaderError,
    },
    /// The sink failed permanently.
    #[error("writing to the sink failed; the checkpoint is at {last_processed:?}")]
    Sink {
        /// The last source position that was processed and checkpointed.
        last_processed: Option<Position>,
        /// The sink's error.
        #[source]
        source: SinkError,
    },
    /// A transform or the partitioner failed permanently on a record; nothing
    /// from that record on was written.
    #[error(
        "transforming event {event_id} of `{stream}` (revision {revision}, source position \
         {position}) failed; the checkpoint is at {last_processed:?}"
    )]
    Transform {
        /// The stream the record was read from.
        stream: String,
        /// Its revision there.
        revision: u64,
        /// Its event id.
        event_id: uuid::Uuid,
        /// Its position in the source `$all`.
        position: Position,
        /// The last source position that was processed and checkpointed.
        last_processed: Option<Position>,
        /// The transform's error (boxed: it would make every `Result` of the
        /// pipeline as large as this variant).
        #[source]
        source: Box<TransformError>,
    },
    /// The checkpoint store failed permanently.
    #[error("storing the checkpoint failed")]
    StoreCheckpoint(#[source] CheckpointError),
    /// The reader handed on an event at or before one it had already handed on.
    #[error("the reader went backwards: {position} after {previous}")]
    OutOfOrder {
        /// The previous event's position.
        previous: Position,
        /// The offending event's position.
        position: Position,
    },
    /// A part failed its start-up check permanently (a checkpoint file that
    /// cannot be written, a target refusing the credentials, …): nothing was
    /// replicated. Retrying the same configuration cannot help.
    #[error("the {component} cannot work as configured")]
    Check {
        /// Which part.
        component: crate::health::Component,
        /// Its error.
        #[source]
        source: BoxError,
    },
    /// A task of the pipeline (the reader, a writer, the checkpointer, the head
    /// poller) panicked or ended when nobody asked it to. What was
    /// acknowledged is checkpointed.
    #[error("the pipeline's {task} {reason}")]
    TaskEnded {
        /// Which task: `reader`, `writer 3`, `checkpointer`, ….
        task: String,
        /// `panicked: …` or what else ended it.
        reason: String,
    },
    /// Shutdown did not finish draining within the deadline. The stored
    /// checkpoint covers what was acknowledged; the rest is replayed next run.
    #[error("shutdown deadline passed with {in_flight} events still in flight")]
    ShutdownTimeout {
        /// Events read but not acknowledged when the deadline passed.
        in_flight: usize,
    },
}

/// An error with its causes, `a: b: c`: for progress, health and messages
/// that show one line (a cause often says what the error does not).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
