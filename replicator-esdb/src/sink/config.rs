//! The configuration of an [`EsdbSink`](super::EsdbSink): where the target
//! is, the order written in and how target revisions are found.

use std::fmt;

use replicator_core::secret::ConnectionString;

/// Configuration of an [`EsdbSink`](super::EsdbSink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsdbSinkConfig {
    /// Connection string of the target, e.g.
    /// `esdb://admin:changeit@target:2113?tls=false` (printed without its
    /// password).
    pub connection_string: ConnectionString,
    /// With [`WriteOrder::Stream`], how many batches may be written at once
    /// (at least 1): streams are hashed onto this many partitions; each
    /// stream keeps its order. With write latencies of a few milliseconds, 8
    /// to 32 keep a target busy. Not used with [`WriteOrder::Source`].
    pub partition_count: usize,
    /// How the target revision of each append is found: predicted from the
    /// source revision (the default), or tracked per target stream, which a
    /// transform that renames streams or drops events from the middle of a
    /// stream needs. See [`RevisionMode`].
    pub revisions: RevisionMode,
    /// Whether the target's `$all` keeps the source's order (the default),
    /// or only each stream's. See [`WriteOrder`].
    pub order: WriteOrder,
}

/// The order an [`EsdbSink`](super::EsdbSink) writes in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteOrder {
    /// The target's `$all` holds the records in the source's `$all` order:
    /// one writer
    /// ([`Sink::max_in_flight`](replicator_core::Sink::max_in_flight) is 1)
    /// sends each batch's appends in order on one batch-append call to the
    /// leader, many at once. A
    /// consumer's source position maps to the target position of the same
    /// event. [`EsdbSinkConfig::partition_count`] is not used.
    #[default]
    Source,
    /// Only each stream's order is kept: streams are hashed onto
    /// [`EsdbSinkConfig::partition_count`] writers, and the streams of a
    /// batch are appended concurrently, so records of different streams
    /// land in another interleaving than on the source. A consumer of
    /// `$all` or of a category sees cross-stream history in another order
    /// after the cutover.
    Stream,
}

impl fmt::Display for WriteOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WriteOrder::Source => "source",
            WriteOrder::Stream => "stream",
        })
    }
}

/// How an [`EsdbSink`](super::EsdbSink) knows the revision each append
/// expects, and so how it recognises a replay. See "Replays" on
/// [`EsdbSink`](super::EsdbSink).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RevisionMode {
    /// Target revision = source revision (for a stream the source lost the
    /// first events of, plus a renumbering offset). Right when every record
    /// keeps its stream and no event is left out from the middle of a stream:
    /// no transform, or only transforms whose
    /// [`keeps_revisions`](replicator_core::Transform::keeps_revisions) is
    /// true.
    #[default]
    FromSource,
    /// The sink tracks each target stream's last revision itself (learnt from
    /// its own appends and, on a miss, from the target) and recognises replays
    /// by event id in the target stream's tail. Needed when a transform drops
    /// events from the middle of a stream or renames (and so may merge)
    /// streams. `$$` metadata streams, which transforms do not rename, keep
    /// [`RevisionMode::FromSource`].
    Tracked,
}

impl EsdbSinkConfig {
    /// A configuration with the recommended 8 partitions.
    pub fn new(connection_string: impl Into<ConnectionString>) -> Self {
        EsdbSinkConfig {
            connection_string: connection_string.into(),
            partition_count: 8,
            revisions: RevisionMode::FromSource,
            order: WriteOrder::Source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_debug_output_hides_the_password() {
        let config = EsdbSinkConfig::new("esdb://admin:changeit@h:2113?tls=false");
        assert!(!format!("{config:?}").contains("changeit"));
    }
}
