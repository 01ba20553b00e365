//! The checkpointer: its own task, so replication never waits on the store.
//!
//! The dispatcher publishes the frontier (everything up to it is processed)
//! on a `watch` channel; the checkpointer stores the latest one under the
//! policy (`checkpoint_after` records, or `checkpoint_interval` after unstored
//! progress appeared), retries failures itself with backoff and a deadline per
//! call, and reports the store's health. When the dispatcher drops the
//! channel, it makes a final store of the last frontier and ends.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, Instant};
use tracing::debug;

use super::PipelineConfig;
use crate::error::CheckpointError;
use crate::health::{short, HealthReporter};
use crate::model::{Checkpoint, Position};
use crate::traits::CheckpointStore;

/// The processed frontier, as the dispatcher publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Frontier {
    pub(super) source: Position,
    pub(super) target: Option<Position>,
    /// Records processed in this run up to `source`.
    pub(super) processed: u64,
}

/// What the checkpointer stored last, for the progress.
#[derive(Debug, Clone, Default)]
pub(super) struct Stored {
    pub(super) checkpoint: Option<Checkpoint>,
    /// [`Frontier::processed`] of the stored checkpoint.
    pub(super) processed: u64,
    pub(super) stores: u64,
}

pub(super) struct Checkpointer {
    pub(super) store: Arc<dyn CheckpointStore>,
    pub(super) config: PipelineConfig,
    pub(super) health: HealthReporter,
    pub(super) stored: watch::Sender<Stored>,
}

impl Checkpointer {
    /// Runs until `frontier`'s sender is dropped and the last frontier is
    /// stored.
    ///
    /// # Errors
    /// A permanent store error (transient ones are retried, for ever: the
    /// caller bounds the final store with its shutdown deadline).
    pub(super) async fn run(
        self,
        mut frontier: watch::Receiver<Option<Frontier>>,
    ) -> Result<(), CheckpointError> {
        let config = &self.config;
        let mut backoff = config.backoff();
        let mut stored_processed = 0u64;
        let mut unstored_since: Option<Instant> = None;
        let mut retry_at: Option<Instant> = None;
        let mut closed = false;
        loop {
            let current = *frontier.borrow_and_update();
            let now = Instant::now();
            let unstored = current.filter(|f| f.processed > stored_processed);
            if unstored.is_some() {
                unstored_since.get_or_insert(now);
            }
            if let Some(f) = unstored {
                let since = unstored_since.unwrap_or(now);
                let due = closed
                    || f.processed - stored_processed >= config.checkpoint_after
                    || now >= since + config.checkpoint_interval;
                if due && retry_at.is_none_or(|t| now >= t) {
                    match self.store_once(f).await {
                        Ok(()) => {
                            self.health.success();
                            backoff.reset();
                            retry_at = None;
                            stored_processed = f.processed;
                            unstored_since = None;
                            continue;
                        }
                        Err(error) if error.is_transient() => {
                            self.health.failure(&error);
                            retry_at = Some(Instant::now() + backoff.next_delay());
                        }
                        Err(error) => {
                            self.health.fatal(&error);
                            return Err(error);
                        }
                    }
                }
            } else if closed {
                return Ok(());
            }

            let wake = match (unstored.is_some(), retry_at, unstored_since) {
                (false, ..) => None,
                (true, Some(retry), _) => Some(retry),
                (true, None, Some(since)) => Some(since + config.checkpoint_interval),
                (true, None, None) => None,
            };
            tokio::select! {
                changed = frontier.changed(), if !closed => {
                    if changed.is_err() {
                        closed = true;
                    }
                }
                _ = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            }
        }
    }

    async fn store_once(&self, f: Frontier) -> Result<(), CheckpointError> {
        let checkpoint = Checkpoint::processed(f.source, f.target);
        match timeout(self.config.call_timeout, self.store.store(&checkpoint)).await {
            Ok(Ok(())) => {
                debug!(source = %f.source, "Checkpoint stored");
                self.stored.send_modify(|s| {
                    s.checkpoint = Some(checkpoint);
                    s.processed = f.processed;
                    s.stores += 1;
                });
                Ok(())
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(CheckpointError::transient(format!(
                "the checkpoint store did not answer within {} (storing {})",
                short(self.config.call_timeout),
                f.source
            ))),
        }
    }
}
