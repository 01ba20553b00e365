//! The pipeline: reader → transforms → bounded buffer → partitioned, batching
//! writers → sink, with acknowledgements folded back into source order for the
//! checkpointer.
//!
//! ```text
//!  Reader ──► transforms ──► buffer (bounded) ──► dispatcher ──► partition 0 queue ──► writer 0 ──► Sink::write
//!                                                  │   ▲  ▲  ──► partition 1 queue ──► writer 1 ──► Sink::write
//!                                                  │   │  └──────── acknowledgements ◄─────┘
//!                                                  │   └── head poller ◄── HeadProbe::head (every head_interval)
//!                                                  ▼
//!                                   in-order tracker ──► frontier (watch) ──► checkpointer ──► CheckpointStore::store
//! ```
//!
//! Configured [`crate::Transform`]s run in the reader's task (`transform.rs`):
//! several records at once, handed on in source order with their original
//! positions, so nothing below them changes. The dispatcher chooses each
//! record's partition from its target stream, or a [`crate::Partitioner`]'s
//! key (a stream with records in flight stays where it is).
//!
//! Every record gets a sequence number as it is read (`tracker.rs`). Writers
//! (`writer.rs`) acknowledge whole batches; the tracker marks their sequence
//! numbers done and moves the frontier only over a contiguous run of done
//! records, so a stored checkpoint never passes a record still in flight,
//! whatever order the partitions finish in. The checkpointer
//! (`checkpointer.rs`) stores the frontier in its own task: replication never
//! waits on the checkpoint store.
//!
//! Every spawned task's end is observed: a panic, or an end nobody asked for,
//! fails the run naming the task. Every remote call has a deadline
//! ([`PipelineConfig::call_timeout`]). Health is reported per component
//! ([`crate::health`]).

mod checkpointer;
mod config;
mod dispatcher;
mod head;
mod parcel;
mod progress;
mod tracker;
mod transform;
mod writer;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::{PipelineBuilder, PipelineConfig};
pub use progress::{
    Histogram, PipelineState, Progress, SkipCounts, BATCH_SIZE_BUCKETS, LATENCY_BUCKETS,
    RATE_WINDOW,
};

use crate::error::{ErrorKind, PipelineError};
use crate::health::{short, Component, Health, HealthReporter};
use crate::model::{Checkpoint, StartFrom};
use crate::traits::{CheckpointStore, Reader, Sink};
use crate::transform::{Partitioner, Transform};

/// What a finished run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Records read.
    pub read: u64,
    /// Events written.
    pub written: u64,
    /// Records skipped.
    pub skipped: u64,
    /// The checkpoint stored last, if any was stored in this run.
    pub checkpoint: Option<Checkpoint>,
    /// Whether the reader ended by itself (caught up with `run_continuously`
    /// off) rather than by cancellation.
    pub completed: bool,
}

/// Replicates from a [`Reader`] to a [`Sink`], checkpointing into a
/// [`CheckpointStore`].
///
/// ```
/// use replicator_core::memory::{MemoryCheckpointStore, MemoryReader, MemorySink, MemorySource};
/// use replicator_core::Pipeline;
/// use tokio_util::sync::CancellationToken;
///
/// # tokio_test::block_on(async {
/// let source = MemorySource::new();
/// source.append_user_event("orders-1", b"{}".to_vec());
/// let sink = MemorySink::new();
/// let store = MemoryCheckpointStore::new();
/// let pipeline = Pipeline::builder(MemoryReader::new(source.clone(), false), sink.clone(), store.clone())
///     .checkpoint_after(100)
///     .build();
/// let summary = pipeline.run(CancellationToken::new()).await.unwrap();
/// assert_eq!(summary.written, 1);
/// assert_eq!(sink.stream("orders-1").len(), 1);
/// # });
/// ```
pub struct Pipeline {
    reader: Box<dyn Reader>,
    sink: Arc<dyn Sink>,
    store: Arc<dyn CheckpointStore>,
    config: PipelineConfig,
    progress: watch::Sender<Progress>,
    health: Health,
    transforms: Vec<Arc<dyn Transform>>,
    partitioner: Option<Arc<dyn Partitioner>>,
}

impl Pipeline {
    /// Starts building a pipeline from its three parts.
    pub fn builder(
        reader: impl Reader + 'static,
        sink: impl Sink,
        store: impl CheckpointStore + 'static,
    ) -> PipelineBuilder {
        PipelineBuilder {
            reader: Box::new(reader),
            sink: Arc::new(sink),
            store: Arc::new(store),
            config: PipelineConfig::default(),
            health: None,
            progress: None,
            transforms: Vec::new(),
            partitioner: None,
        }
    }

    /// A live view of the progress, updated as the pipeline runs.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The health reporters of the source, target and checkpoint store.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Runs until the reader ends, `cancel` fires, or a permanent error.
    ///
    /// First checks its parts ([`CheckpointStore::check`], [`Sink::check`],
    /// the source's head probe): a permanent failure stops the run before
    /// anything is read; a transient one is retried while the component is
    /// reported unhealthy. Then resumes after the stored checkpoint (or at a
    /// stored seed), or from the beginning when none is stored. On
    /// cancellation it stops reading, lets in-flight writes finish within
    /// [`PipelineConfig::shutdown_deadline`] and stores a final checkpoint.
    /// Dropping the future instead stops at once without a final checkpoint
    /// (like a crash: the next run replays from the last stored checkpoint).
    ///
    /// # Errors
    /// [`PipelineError`]: a part failed its start-up check, the checkpoint
    /// cannot be loaded or stored, the reader or sink failed permanently, a
    /// task panicked, or the shutdown deadline passed. Progress up to the last
    /// acknowledged event is stored before a reader or sink error is returned.
    pub async fn run(self, cancel: CancellationToken) -> Result<RunSummary, PipelineError> {
        let Pipeline {
            mut reader,
            sink,
            store,
            config,
            progress,
            health,
            transforms,
            partitioner,
        } = self;
        progress.send_modify(|p| {
            *p = Progress {
                components: health.snapshot(),
                ..Progress::default()
            }
        });
        let result = start_and_drive(
            &mut reader,
            Parts {
                sink,
                store,
                config,
                health,
                transforms,
                partitioner,
            },
            &progress,
            &cancel,
        )
        .await;
        progress.send_modify(|p| {
            p.state = match &result {
                Ok(_) => PipelineState::Stopped,
                Err(e) => PipelineState::Failed(crate::error::error_chain(e)),
            }
        });
        result
    }
}

/// The parts of a run besides the reader.
struct Parts {
    sink: Arc<dyn Sink>,
    store: Arc<dyn CheckpointStore>,
    config: PipelineConfig,
    health: Health,
    transforms: Vec<Arc<dyn Transform>>,
    partitioner: Option<Arc<dyn Partitioner>>,
}

async fn start_and_drive(
    reader: &mut Box<dyn Reader>,
    parts: Parts,
    progress: &watch::Sender<Progress>,
    cancel: &CancellationToken,
) -> Result<RunSummary, PipelineError> {
    let Parts {
        sink,
        store,
        config,
        health,
        transforms,
        partitioner,
    } = parts;
    reader.report_health_to(health.source.clone());
    let probe = reader.head_probe();
    let probe_health = HealthReporter::labelled(Component::Source, "Source head probe");
    let refused = |component: Component| {
        move |error: Box<dyn std::error::Error + Send + Sync>| PipelineError::Check {
            component,
            source: error,
        }
    };
    let checks = async {
        check(
            &config,
            &health.checkpoint,
            progress,
            "checkpoint store",
            || store.check(),
        )
        .await
        .map_err(|e| refused(Component::Checkpoint)(e.into()))?;
        let loaded = check(
            &config,
            &health.checkpoint,
            progress,
            "checkpoint store",
            || store.load(),
        )
        .await
        .map_err(PipelineError::LoadCheckpoint)?;
        check(&config, &health.target, progress, "target", || sink.check())
            .await
            .map_err(|e| refused(Component::Target)(e.into()))?;
        if let Some(probe) = &probe {
            check(&config, &probe_health, progress, "source", || probe.head())
                .await
                .map_err(|e| refused(Component::Source)(e.into()))?;
        }
        Ok::<_, PipelineError>(loaded)
    };
    let loaded = tokio::select! {
        loaded = checks => loaded?,
        () = cancel.cancelled() => return Ok(RunSummary::default()),
    };
    let from = loaded
        .as_ref()
        .map_or(StartFrom::Beginning, Checkpoint::start_from);
    info!(%from, "Starting replication");
    let stream = match reader.read(from).await {
        Ok(stream) => stream,
        Err(source) => {
            return Err(PipelineError::Reader {
                last_processed: loaded.map(|c| c.source),
                source,
            });
        }
    };
    let mut run = dispatcher::Run::new(dispatcher::Parts {
        sink,
        store,
        config,
        progress: progress.clone(),
        health,
        probe,
        probe_health,
        loaded,
        from,
        transforms,
        partitioner,
    });
    run.drive(stream, cancel.clone()).await
}

/// A start-up call, with the call deadline: permanent errors end it,
/// transient ones (and timeouts) are reported and retried with backoff.
async fn check<T, E, F, Fut>(
    config: &PipelineConfig,
    health: &HealthReporter,
    progress: &watch::Sender<Progress>,
    what: &str,
    mut call: F,
) -> Result<T, E>
where
    E: std::fmt::Display + TransientOrNot,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = config.backoff();
    loop {
        let outcome = match timeout(config.call_timeout, call()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(E::transient_error(format!(
                "the {what} did not answer within {} at start-up",
                short(config.call_timeout)
            ))),
        };
        match outcome {
            Ok(value) => {
                health.success();
                return Ok(value);
            }
            Err(error) if error.kind() == ErrorKind::Transient => {
                health.failure(&error);
                progress.send_modify(|p| {
                    p.components
                        .of_mut(health.component())
                        .clone_from(&health.snapshot());
                    p.heartbeat = tokio::time::Instant::now();
                });
                backoff.wait().await;
            }
            Err(error) => {
                health.fatal(&error);
                return Err(error);
            }
        }
    }
}

/// The error kinds of the component errors, for [`check`].
trait TransientOrNot: Sized {
    fn kind(&self) -> ErrorKind;
    fn transient_error(message: String) -> Self;
}

macro_rules! transient_or_not {
    ($($t:ty),*) => {$(
        impl TransientOrNot for $t {
            fn kind(&self) -> ErrorKind {
                <$t>::kind(self)
            }
            fn transient_error(message: String) -> Self {
                <$t>::transient(message)
            }
        }
    )*};
}
transient_or_not!(
    crate::error::ReaderError,
    crate::error::SinkError,
    crate::error::CheckpointError
);
