//! One [`super::Pipeline::run`]: the dispatcher loop and the tasks it
//! watches over (reader, writers, checkpointer, head poller).
//!
//! One file per concern: this one holds the run's state (`Run`) and
//! `Run::drive`; `spawn.rs` starts the tasks, `dispatch.rs` is the loop (its
//! state in `Dispatch`, one handler per `select!` branch), `bookkeeping.rs`
//! keeps the source order, the frontier, the stall check and the published
//! progress, and `finish.rs` ends the run and maps the tasks' ends to errors.

mod bookkeeping;
mod dispatch;
mod finish;
mod spawn;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::progress::Meters;
use super::tracker::Tracker;
use super::transform::Partitions;
use super::{PipelineConfig, PipelineState, Progress, RunSummary};
use crate::error::PipelineError;
use crate::health::{Component, Health, HealthReporter};
use crate::model::{Checkpoint, Position, StartFrom};
use crate::traits::{CheckpointStore, EventStream, HeadProbe, Sink};
use crate::transform::{Partitioner, Transform};

use dispatch::{Dispatch, LoopEnd};

/// What [`Run::new`] is built from.
pub(super) struct Parts {
    pub(super) sink: Arc<dyn Sink>,
    pub(super) store: Arc<dyn CheckpointStore>,
    pub(super) config: PipelineConfig,
    pub(super) progress: watch::Sender<Progress>,
    pub(super) health: Health,
    pub(super) probe: Option<Arc<dyn HeadProbe>>,
    pub(super) probe_health: HealthReporter,
    pub(super) loaded: Option<Checkpoint>,
    pub(super) from: StartFrom,
    pub(super) transforms: Vec<Arc<dyn Transform>>,
    pub(super) partitioner: Option<Arc<dyn Partitioner>>,
}

/// The state of one [`super::Pipeline::run`].
pub(super) struct Run {
    sink: Arc<dyn Sink>,
    store: Arc<dyn CheckpointStore>,
    config: PipelineConfig,
    progress: watch::Sender<Progress>,
    health: Health,
    probe: Option<Arc<dyn HeadProbe>>,
    probe_health: HealthReporter,
    /// Reports a reader that delivers nothing while the source has more.
    stall_health: HealthReporter,
    /// Reports the checks of an idle target.
    idle_target_health: HealthReporter,
    tracker: Tracker,
    /// Frontier of processed records and the target position that goes with it.
    frontier: Option<Position>,
    target: Option<Position>,
    /// Records processed in this run.
    processed: u64,
    /// [`Run::processed`] when the frontier was last handed to the checkpointer.
    frontier_sent: u64,
    last_read: Option<Position>,
    last_read_at: Instant,
    /// The first position the reader may hand on, and whether it is inclusive.
    lower_bound: Option<(Position, bool)>,
    retrying: Vec<Option<(u32, String)>>,
    stats: Progress,
    /// Rates, lag and the distance to the source head.
    meters: Meters,
    loaded: Option<Checkpoint>,
    transforms: Vec<Arc<dyn Transform>>,
    /// One reporter per transform, merged into the `transform` component.
    transform_health: Vec<HealthReporter>,
    partitions: Partitions,
}

impl Run {
    pub(super) fn new(parts: Parts) -> Self {
        let lower_bound = match parts.from {
            StartFrom::Beginning => None,
            StartFrom::After(p) => Some((p, false)),
            StartFrom::At(p) => Some((p, true)),
        };
        let stored = parts.loaded.as_ref().filter(|c| !c.seed).map(|c| c.source);
        let partitions = parts.sink.max_in_flight().max(1);
        let mut stats = Progress {
            state: PipelineState::Running,
            stored: parts.loaded.clone(),
            ..Progress::default()
        };
        stats.processed = stored;
        Run {
            sink: parts.sink,
            store: parts.store,
            config: parts.config,
            progress: parts.progress,
            health: parts.health,
            probe: parts.probe,
            probe_health: parts.probe_health,
            stall_health: HealthReporter::labelled(Component::Source, "Source reader (stalled)"),
            idle_target_health: HealthReporter::labelled(Component::Target, "Target (idle check)"),
            tracker: Tracker::default(),
            frontier: stored,
            target: parts.loaded.as_ref().and_then(|c| c.target),
            processed: 0,
            frontier_sent: 0,
            last_read: None,
            last_read_at: Instant::now(),
            lower_bound,
            retrying: vec![None; partitions],
            stats,
            meters: Meters::default(),
            loaded: parts.loaded,
            transform_health: parts
                .transforms
                .iter()
                .map(|_| HealthReporter::labelled(Component::Transform, "Transform"))
                .collect(),
            transforms: parts.transforms,
            partitions: Partitions::new(partitions, parts.partitioner),
        }
    }

    pub(super) async fn drive(
        &mut self,
        stream: EventStream,
        cancel: CancellationToken,
    ) -> Result<RunSummary, PipelineError> {
        let mut dispatch = Dispatch::new(self.config.shutdown_deadline);
        let mut tasks = self.spawn(stream, &cancel, &dispatch.stop_writing);
        self.publish(&tasks.stored);
        match self.dispatch(&mut tasks, &mut dispatch, &cancel).await? {
            LoopEnd::Drained => self.finish(tasks, dispatch).await,
            LoopEnd::DeadlinePassed => Err(self.abandon(tasks, dispatch).await),
        }
    }
}
