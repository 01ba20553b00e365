//! The end of a run: the final frontier, draining or abandoning the tasks,
//! and what their ends and the run's failure become.

use std::collections::HashMap;

use tokio::sync::watch;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::{timeout, Instant};
use tracing::warn;

use crate::error::PipelineError;
use crate::model::Position;
use crate::pipeline::checkpointer::Stored;
use crate::pipeline::RunSummary;

use super::dispatch::Dispatch;
use super::spawn::{ReaderEnd, TaskEnd, Tasks};
use super::Run;

impl Run {
    /// Hands the checkpointer the final frontier and closes its channel: it
    /// stores that and ends.
    fn last_frontier(&mut self, t: &mut Tasks) {
        self.send_frontier(t.frontier.as_ref(), true);
        drop(t.frontier.take());
    }

    /// Every writer has exited: stops the reader and the pollers, lets the
    /// checkpointer store the final frontier until the deadline, and says
    /// how the run ended.
    ///
    /// # Errors
    /// The first failure of the run, else of the tasks' ends.
    pub(super) async fn finish(
        &mut self,
        mut t: Tasks,
        d: Dispatch,
    ) -> Result<RunSummary, PipelineError> {
        t.stop_reading.cancel();
        if let Some(handle) = &t.head_poller {
            handle.abort();
        }
        t.idle_probe.abort();
        self.last_frontier(&mut t);
        let until = d.deadline.unwrap_or_else(|| Instant::now() + d.grace);
        let settled = self.settle(&mut t.set, &t.names, until, &t.stored).await;
        self.publish(&t.stored);
        // The checkpointer's channel starts with the loaded checkpoint, so
        // this is the last stored one or the loaded one.
        let stored = t.stored.borrow().checkpoint.clone();
        match d.failure.or(settled.err()) {
            Some(error) => {
                let last_processed = stored.as_ref().filter(|c| !c.seed).map(|c| c.source);
                Err(with_last_processed(error, last_processed))
            }
            None => Ok(RunSummary {
                read: self.stats.read,
                written: self.stats.written,
                skipped: self.stats.skipped,
                checkpoint: stored,
                completed: d.completed,
            }),
        }
    }

    /// The shutdown deadline passed: abandons the writes in flight and gives
    /// the checkpointer one call deadline to store what was acknowledged.
    /// Returns the first failure of the run, else of the tasks' ends, else
    /// [`PipelineError::ShutdownTimeout`].
    pub(super) async fn abandon(&mut self, mut t: Tasks, d: Dispatch) -> PipelineError {
        d.stop_writing.cancel();
        t.stop_reading.cancel();
        let in_flight = self.tracker.in_flight();
        warn!(
            in_flight,
            "Shutdown deadline passed; abandoning in-flight writes"
        );
        // Keep only the checkpointer: it gets one call deadline to store what
        // was acknowledged.
        self.last_frontier(&mut t);
        let until = Instant::now() + self.config.call_timeout;
        let stored = self.settle(&mut t.set, &t.names, until, &t.stored).await;
        self.publish(&t.stored);
        d.failure
            .or(stored.err())
            .unwrap_or(PipelineError::ShutdownTimeout { in_flight })
    }

    /// Waits for the remaining tasks (the checkpointer's final store above
    /// all) until `until`; the first failure among them is returned.
    async fn settle(
        &mut self,
        tasks: &mut JoinSet<TaskEnd>,
        names: &HashMap<Id, String>,
        until: Instant,
        stored: &watch::Receiver<Stored>,
    ) -> Result<(), PipelineError> {
        let mut first_error = None;
        loop {
            match timeout(
                until.saturating_duration_since(Instant::now()),
                tasks.join_next(),
            )
            .await
            {
                Ok(None) => break,
                Ok(Some(joined)) => {
                    if let Err(error) = self.on_task_end(joined, names) {
                        first_error.get_or_insert(error);
                    }
                }
                Err(_) => {
                    let unstored = self.processed - stored.borrow().processed;
                    warn!(unstored, "The final checkpoint could not be stored in time");
                    tasks.abort_all();
                    first_error.get_or_insert(PipelineError::ShutdownTimeout {
                        in_flight: self.tracker.in_flight(),
                    });
                    break;
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// What a task's end means: `Ok(Some(end))` for the reader, an error for
    /// a panic, a permanent store failure or an end nobody asked for.
    pub(super) fn on_task_end(
        &mut self,
        joined: Result<TaskEnd, JoinError>,
        names: &HashMap<Id, String>,
    ) -> Result<Option<ReaderEnd>, PipelineError> {
        match joined {
            Ok(TaskEnd::Reader(end)) => Ok(Some(end)),
            Ok(TaskEnd::Writer) => Ok(None),
            Ok(TaskEnd::Head | TaskEnd::Probe) => Ok(None),
            Ok(TaskEnd::Checkpointer(Ok(()))) => Ok(None),
            Ok(TaskEnd::Checkpointer(Err(error))) => Err(PipelineError::StoreCheckpoint(error)),
            Err(error) if error.is_cancelled() => Ok(None),
            Err(error) => {
                let task = names
                    .get(&error.id())
                    .cloned()
                    .unwrap_or_else(|| "a task".into());
                let reason = match error.try_into_panic() {
                    Ok(payload) => format!("panicked: {}", panic_message(&*payload)),
                    Err(error) => error.to_string(),
                };
                Err(PipelineError::TaskEnded { task, reason })
            }
        }
    }
}

/// `error` with the source position of the last stored checkpoint, for the
/// errors that carry one.
fn with_last_processed(error: PipelineError, last_processed: Option<Position>) -> PipelineError {
    match error {
        PipelineError::Reader { source, .. } => PipelineError::Reader {
            last_processed,
            source,
        },
        PipelineError::Sink { source, .. } => PipelineError::Sink {
            last_processed,
            source,
        },
        PipelineError::Transform {
            stream,
            revision,
            event_id,
            position,
            source,
            ..
        } => PipelineError::Transform {
            stream,
            revision,
            event_id,
            position,
            last_processed,
            source,
        },
        other => other,
    }
}

pub(super) fn is_reader(error: &PipelineError) -> bool {
    matches!(error, PipelineError::TaskEnded { task, .. } if task == "reader")
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
