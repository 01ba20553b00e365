//! The fourth extension point: changing or dropping records between the reader
//! and the sink (filters, the scavenge filter, JavaScript and HTTP transforms),
//! and choosing which writer a record goes through (partitioners).
//!
//! A [`Transform`] sees every record the reader hands on, in source order, and
//! returns it changed, unchanged, or marked as skipped
//! ([`ChangeKind::Skip`](crate::ChangeKind::Skip)): a skipped record is not
//! written but still advances the checkpoint, like a system event. The
//! pipeline runs the configured transforms one after the other on each record
//! and may run several records through them at once
//! ([`Transform::concurrency`]), but hands them on in source order, so the
//! checkpoint and each stream's order are exactly as without transforms.

use async_trait::async_trait;

use crate::error::TransformError;
use crate::model::Event;

/// Changes, keeps or drops records on their way to the sink.
///
/// # Contract
/// - [`Transform::apply`] gets one record and returns what the sink should
///   receive instead: the record itself, a changed copy (another stream, type,
///   data or metadata), or the record with its kind set to
///   [`ChangeKind::Skip`](crate::ChangeKind::Skip) to leave it out. Keep the
///   event id, the position and the source revision: the checkpoint is taken
///   from the position, and the sink recognises replays by id.
/// - Records that are already skipped (system events, links, or dropped by an
///   earlier transform) are not passed to `apply`.
/// - A transform that renames streams or leaves out events from the middle of
///   a stream must say so ([`Transform::keeps_revisions`]): the sink can then
///   no longer predict target revisions from source revisions and tracks them
///   itself.
/// - Errors: a [`TransformError`] that is transient (an HTTP service that is
///   down) is retried with backoff, the record held meanwhile and the
///   `transform` component reported failing; a permanent one (a script that
///   throws) stops the run after storing the checkpoint of everything before
///   the record. Its message names what failed; the pipeline adds the stream,
///   revision and position.
/// - Deadlines: each call gets [`crate::PipelineConfig::call_timeout`]; one
///   that takes longer is retried as a transient failure.
#[async_trait]
pub trait Transform: Send + Sync + 'static {
    /// What the transform does, for logs and errors: `filter eventType`,
    /// `js transform /etc/replicator/transform.js`, ….
    fn name(&self) -> String;

    /// Transforms one record.
    ///
    /// # Errors
    /// A [`TransformError`] saying whether retrying can help.
    async fn apply(&self, event: Event) -> Result<Event, TransformError>;

    /// How many records may be in [`Transform::apply`] at once (at least 1).
    /// Results are still handed on in source order.
    fn concurrency(&self) -> usize {
        1
    }

    /// Whether every record keeps its stream and no event is left out from
    /// the middle of a stream, so that target revisions still equal source
    /// revisions. Leaving out whole streams, or a stream's first events (as a
    /// scavenge would), keeps them. The default says no.
    fn keeps_revisions(&self) -> bool {
        false
    }
}

/// Chooses the partition (the writer) a record goes through.
///
/// Records with the same key go through the same writer, in source order. The
/// default key is [`Event::target_stream`]. A key that groups several streams
/// keeps their relative order on the target. When a partitioner gives the
/// records of one stream different keys, the pipeline still keeps the stream's
/// order: a stream with records in flight stays on its partition until they
/// are written.
pub trait Partitioner: Send + Sync + 'static {
    /// The partition key of `event`; `None` means the default key (the target
    /// stream).
    ///
    /// # Errors
    /// A permanent [`TransformError`] (a script that throws) stops the run.
    fn key(&self, event: &Event) -> Result<Option<String>, TransformError>;
}
