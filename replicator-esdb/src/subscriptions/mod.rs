//! Persistent subscription groups re-created on the target, each starting
//! where its consumers stopped on the source (`replicator subscriptions`).
//!
//! # What is read
//! Every group of the source, from the PersistentSubscriptions service's
//! `List` ([`SubscriptionAdmin::groups`]): its stream (or `$all`), settings,
//! configured start and last checkpoint. `List` does not report a `$all`
//! group's filter; the server keeps it with the group's definition in the
//! `$persistentSubscriptionConfig` stream (event type `$PersistentConfig`,
//! `Entries[].Filter`), which [`read_filters`] reads (admin rights).
//!
//! # Where a group starts on the target ([`target_start`])
//! A group's checkpoint is the last event before the first one its consumers
//! had not acknowledged (the server writes it every `minCheckPointCount` to
//! `maxCheckPointCount` acknowledgements; a group resumes after it, so
//! events acknowledged since are delivered again, as on the source after a
//! restart). The target group starts at the first target event after the
//! checkpoint's event on the target:
//! - a stream group at checkpoint revision `n`: the target revision of the
//!   source's event `n` ([`map_revision`](crate::position_map::map_revision)) plus one;
//! - a `$all` group at checkpoint position `p`: the record after `p`'s
//!   record on the target ([`map_position`](crate::position_map::map_position), exact when the
//!   target was written in source order), or the end of the target's `$all`
//!   when `p`'s record is its last;
//! - a group without a checkpoint: its configured start mapped the same way
//!   (the start and the end stay the start and the end).
//!
//! # What is done ([`Step`])
//! A group missing on the target is created; one there with the same
//! settings and filter is left alone (a re-run changes nothing); one with
//! other settings is reported and left alone, or with `force` deleted and
//! created again. A group whose checkpoint the replicator has not yet passed
//! is not created (`NotReplicatedYet`): run the command again later.

mod admin;
mod definition;
mod proto;
mod start;

pub use admin::{AdminError, SubscriptionAdmin};
pub use definition::{read_filters, FilterError, Filters, CONFIG_STREAM};
pub use start::{plan, target_start, GroupPlan, PlanOptions, Step, TargetStart};

use replicator_core::Position;

/// What a group reads: one stream, or `$all`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupSource {
    /// A stream (revisions).
    Stream(String),
    /// `$all` (positions).
    All,
}

impl std::fmt::Display for GroupSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupSource::Stream(stream) => f.write_str(stream),
            GroupSource::All => f.write_str("$all"),
        }
    }
}

/// A place in a group's source: a stream revision or an `$all` position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupPosition {
    /// A stream revision.
    Revision(u64),
    /// An `$all` position.
    Position(Position),
}

impl std::fmt::Display for GroupPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupPosition::Revision(revision) => write!(f, "{revision}"),
            GroupPosition::Position(p) => write!(f, "C:{}/P:{}", p.commit, p.prepare),
        }
    }
}

/// Where a group starts reading when it has no checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The first event.
    Beginning,
    /// The end at the time the group is created.
    End,
    /// This revision or position, included.
    At(GroupPosition),
}

impl std::fmt::Display for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Start::Beginning => f.write_str("start"),
            Start::End => f.write_str("end"),
            Start::At(at) => write!(f, "{at}"),
        }
    }
}

/// A `$all` group's filter: which records it delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupFilter {
    /// What the expression is matched against.
    pub by: FilterBy,
    /// The expression.
    pub expression: FilterExpression,
}

/// What a filter matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterBy {
    /// The stream name.
    StreamName,
    /// The event type.
    EventType,
}

/// A filter's expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterExpression {
    /// A regular expression.
    Regex(String),
    /// Any of these prefixes.
    Prefixes(Vec<String>),
}

impl std::fmt::Display for GroupFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let by = match self.by {
            FilterBy::StreamName => "stream",
            FilterBy::EventType => "event type",
        };
        match &self.expression {
            FilterExpression::Regex(regex) => write!(f, "{by} ~ /{regex}/"),
            FilterExpression::Prefixes(prefixes) => write!(f, "{by} prefix {}", prefixes.join(",")),
        }
    }
}

/// A group's settings: everything a Create sends but the start and filter.
/// Copied as the source reports them, never defaulted: clients' defaults
/// differ.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GroupSettings {
    /// Links delivered as the events they point to.
    pub resolve_links: bool,
    /// Extra statistics kept.
    pub extra_statistics: bool,
    /// Retries before a message is parked.
    pub max_retry_count: i32,
    /// Acknowledgements before a checkpoint may be written.
    pub min_checkpoint_count: i32,
    /// Acknowledgements after which a checkpoint is written.
    pub max_checkpoint_count: i32,
    /// Consumers allowed at once (0: no limit).
    pub max_subscriber_count: i32,
    /// Live buffer size.
    pub live_buffer_size: i32,
    /// Events read per page.
    pub read_batch_size: i32,
    /// History buffer size.
    pub history_buffer_size: i32,
    /// Time a consumer has to acknowledge, in milliseconds (0: none).
    pub message_timeout_ms: i32,
    /// Time between checkpoints, in milliseconds.
    pub checkpoint_after_ms: i32,
    /// `DispatchToSingle`, `RoundRobin`, `Pinned`, `PinnedByCorrelation`.
    pub consumer_strategy: String,
}

/// A persistent subscription group as a cluster reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// What it reads.
    pub source: GroupSource,
    /// Its settings.
    pub settings: GroupSettings,
    /// Its filter (`$all` groups only; from the definition stream).
    pub filter: Option<GroupFilter>,
    /// Where it starts without a checkpoint.
    pub start: Start,
    /// The last checkpoint its consumers reached, if any.
    pub checkpoint: Option<GroupPosition>,
    /// The server's status text (`Live`, `Behind`, …).
    pub status: String,
}

impl Group {
    /// `stream::group`, how the server names a group.
    pub fn id(&self) -> String {
        format!("{}::{}", self.source, self.name)
    }
}
