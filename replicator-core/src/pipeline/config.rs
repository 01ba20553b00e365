//! [`PipelineConfig`] and [`PipelineBuilder`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Pipeline, Progress};
use crate::health::Health;
use crate::traits::{CheckpointStore, Reader, Sink};
use crate::transform::{Partitioner, Transform};

/// Tunables of a [`Pipeline`]. The defaults suit a replication between two
/// EventStoreDB clusters.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Store a checkpoint after this many processed (written or skipped) events.
    /// 1 stores after every acknowledgement. Must be at least 1.
    pub checkpoint_after: u64,
    /// Unstored progress is stored at the latest this long after it was made,
    /// so a quiet or trickling source does not leave the checkpoint behind.
    pub checkpoint_interval: Duration,
    /// How many events may be read ahead of the writers (the bounded buffer
    /// between reader and sink). The reader waits when it is full.
    pub buffer_size: usize,
    /// Most events in one [`Sink::write`] call.
    pub max_batch_events: usize,
    /// Most payload bytes (data plus metadata) in one [`Sink::write`] call; a
    /// single larger event still goes alone.
    pub max_batch_bytes: usize,
    /// First wait before retrying a transient sink or checkpoint error; the
    /// wait doubles (with jitter) on each attempt up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest wait between retries.
    pub retry_max: Duration,
    /// Deadline of every call to a remote part: a [`Sink::write`], a
    /// [`CheckpointStore::store`], a head probe, a start-up check. A call that
    /// takes longer counts as a transient failure and is retried, so a hung
    /// peer is reported and never waited on forever. Also how long the reader
    /// may deliver nothing while the source has more before the source is
    /// reported unhealthy.
    pub call_timeout: Duration,
    /// How often the source's head is probed (for the gap, percent, ETA, lag
    /// and the detection of a stalled reader).
    pub head_interval: Duration,
    /// While nothing has been written for this long (an idle source), the
    /// target is checked with [`Sink::check`] at this interval, so a target
    /// that goes away is reported before the next write needs it.
    pub idle_probe_interval: Duration,
    /// Progress is published at most this often (and on every change of
    /// state), not per event.
    pub publish_interval: Duration,
    /// On cancellation, how long in-flight writes may take to finish before
    /// they are abandoned (and replayed next run).
    pub shutdown_deadline: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            checkpoint_after: 1000,
            checkpoint_interval: Duration::from_secs(1),
            buffer_size: 1000,
            max_batch_events: 500,
            max_batch_bytes: 4 * 1024 * 1024,
            retry_initial: crate::retry::DEFAULT_INITIAL,
            retry_max: crate::retry::DEFAULT_MAX,
            call_timeout: Duration::from_secs(20),
            head_interval: Duration::from_secs(2),
            idle_probe_interval: Duration::from_secs(10),
            publish_interval: Duration::from_millis(100),
            shutdown_deadline: Duration::from_secs(30),
        }
    }
}

impl PipelineConfig {
    pub(crate) fn backoff(&self) -> crate::retry::Backoff {
        crate::retry::Backoff::new(self.retry_initial, self.retry_max)
    }
}

/// Builds a [`Pipeline`].
pub struct PipelineBuilder {
    pub(super) reader: Box<dyn Reader>,
    pub(super) sink: Arc<dyn Sink>,
    pub(super) store: Arc<dyn CheckpointStore>,
    pub(super) config: PipelineConfig,
    pub(super) health: Option<Health>,
    pub(super) progress: Option<watch::Sender<Progress>>,
    pub(super) transforms: Vec<Arc<dyn Transform>>,
    pub(super) partitioner: Option<Arc<dyn Partitioner>>,
}

impl PipelineBuilder {
    /// Replaces every tunable at once.
    pub fn config(mut self, config: PipelineConfig) -> Self {
        self.config = config;
        self
    }

    /// See [`PipelineConfig::checkpoint_after`].
    pub fn checkpoint_after(mut self, events: u64) -> Self {
        self.config.checkpoint_after = events;
        self
    }

    /// See [`PipelineConfig::buffer_size`].
    pub fn buffer_size(mut self, events: usize) -> Self {
        self.config.buffer_size = events;
        self
    }

    /// Reports component health through these reporters instead of new
    /// ones, so that a failure outlives a restart of the pipeline (its
    /// "since" stays true).
    pub fn health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// Publishes progress on this channel instead of a new one, so that an
    /// observer (a status server) follows one channel across restarts.
    pub fn progress_sender(mut self, progress: watch::Sender<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Adds a transform after those added before: every record to be written
    /// goes through the transforms in the order they were added (see
    /// [`Transform`]).
    pub fn transform(mut self, transform: impl Transform) -> Self {
        self.transforms.push(Arc::new(transform));
        self
    }

    /// Adds these transforms after those added before, in order.
    pub fn transforms(mut self, transforms: impl IntoIterator<Item = Arc<dyn Transform>>) -> Self {
        self.transforms.extend(transforms);
        self
    }

    /// Chooses each record's writer by this partitioner's key instead of the
    /// target stream (see [`Partitioner`]).
    pub fn partitioner(mut self, partitioner: Arc<dyn Partitioner>) -> Self {
        self.partitioner = Some(partitioner);
        self
    }

    /// Builds the pipeline. Zero sizes are raised to 1.
    pub fn build(self) -> Pipeline {
        let mut config = self.config;
        config.checkpoint_after = config.checkpoint_after.max(1);
        config.buffer_size = config.buffer_size.max(1);
        config.max_batch_events = config.max_batch_events.max(1);
        config.max_batch_bytes = config.max_batch_bytes.max(1);
        config.call_timeout = config.call_timeout.max(Duration::from_millis(1));
        config.head_interval = config.head_interval.max(Duration::from_millis(10));
        config.idle_probe_interval = config.idle_probe_interval.max(Duration::from_millis(10));
        let progress = self
            .progress
            .unwrap_or_else(|| watch::channel(Progress::default()).0);
        Pipeline {
            reader: self.reader,
            sink: self.sink,
            store: self.store,
            config,
            progress,
            health: self.health.unwrap_or_default(),
            transforms: self.transforms,
            partitioner: self.partitioner,
        }
    }
}
