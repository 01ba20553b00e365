//! What the run keeps count of: the source order, the processed frontier and
//! its hand-over to the checkpointer, the stall check, the published progress.

use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::PipelineError;
use crate::health::{merge, short, HealthReporter};
use crate::model::{Event, Position};
use crate::pipeline::checkpointer::{Frontier, Stored};
use crate::pipeline::PipelineState;

use super::Run;

impl Run {
    /// Hands the frontier to the checkpointer when `checkpoint_after` records
    /// passed since the last hand-over, or when `now` and it moved at all.
    pub(super) fn send_frontier(
        &mut self,
        tx: Option<&watch::Sender<Option<Frontier>>>,
        now: bool,
    ) {
        let Some(tx) = tx else { return };
        let moved = self.processed - self.frontier_sent;
        if moved == 0 || !(now || moved >= self.config.checkpoint_after) {
            return;
        }
        if let Some(source) = self.frontier {
            tx.send_replace(Some(Frontier {
                source,
                target: self.target,
                processed: self.processed,
            }));
            self.frontier_sent = self.processed;
        }
    }

    /// Reports the source unhealthy when it has records after the last one
    /// read but the reader delivered nothing for a call deadline while the
    /// pipeline was waiting for it.
    pub(super) fn check_stall(&mut self, waiting_for_reader: bool) {
        let Some(head) = self.stats.source_head else {
            self.stall_health.success();
            return;
        };
        let behind = match self.last_read.or(self.lower_bound.map(|(p, _)| p)) {
            None => true,
            Some(last) => head > last,
        };
        let quiet = self.last_read_at.elapsed();
        if behind && waiting_for_reader && quiet >= self.config.call_timeout {
            let after = self
                .last_read
                .map_or("the start".to_owned(), |p| p.to_string());
            self.stall_health.failure(&format!(
                "the source's $all goes on to {head}, but the reader has delivered nothing after {after} for {}",
                short(quiet)
            ));
        } else if !behind || quiet < self.config.call_timeout {
            self.stall_health.success();
        }
    }

    pub(super) fn check_order(&mut self, event: &Event) -> Result<(), PipelineError> {
        let previous = self.last_read.or(self.lower_bound.map(|(p, _)| p));
        let inclusive = self.last_read.is_none() && self.lower_bound.is_some_and(|(_, i)| i);
        if let Some(previous) = previous {
            let in_order = if inclusive {
                event.position >= previous
            } else {
                event.position > previous
            };
            if !in_order {
                return Err(PipelineError::OutOfOrder {
                    previous,
                    position: event.position,
                });
            }
        }
        self.last_read = Some(event.position);
        self.last_read_at = Instant::now();
        self.stats.last_read = Some(event.position);
        Ok(())
    }

    pub(super) fn on_written(&mut self, seqs: &[u64], target: Option<Position>) {
        for &seq in seqs {
            self.tracker.complete(seq);
        }
        self.stats.written += seqs.len() as u64;
        if target > self.target {
            self.target = target;
        }
        self.on_processed();
    }

    pub(super) fn on_processed(&mut self) {
        let (count, last) = self.tracker.advance();
        if let Some(slot) = last {
            self.frontier = Some(slot.position);
            self.stats.processed_created = Some(slot.created);
            self.processed += count;
        }
    }

    pub(super) fn publish(&mut self, stored: &watch::Receiver<Stored>) {
        let now = Instant::now();
        let stats = &mut self.stats;
        stats.heartbeat = now;
        stats.in_flight = self.tracker.in_flight();
        stats.processed = self.frontier;
        stats.target = self.target;
        {
            let stored = stored.borrow();
            if stored.stores > 0 {
                stats.stored.clone_from(&stored.checkpoint);
            }
            stats.checkpoints_stored = stored.stores;
            stats.unstored = self.processed - stored.processed;
        }
        let start = self.lower_bound.map_or(0, |(p, _)| p.commit);
        self.meters.measure(stats, now, self.processed, start);
        if matches!(
            stats.state,
            PipelineState::Running | PipelineState::Retrying { .. }
        ) {
            stats.state = match self.retrying.iter().flatten().max_by_key(|r| r.0) {
                Some((attempts, error)) => PipelineState::Retrying {
                    attempts: *attempts,
                    error: error.clone(),
                },
                None => PipelineState::Running,
            };
        }
        stats.components = self.health.snapshot();
        stats.components.target = merge(&[
            stats.components.target.clone(),
            self.idle_target_health.snapshot(),
        ]);
        stats.components.source = merge(&[
            stats.components.source.clone(),
            self.probe_health.snapshot(),
            self.stall_health.snapshot(),
        ]);
        let mut transform = vec![stats.components.transform.clone()];
        transform.extend(self.transform_health.iter().map(HealthReporter::snapshot));
        stats.components.transform = merge(&transform);
        let stats = &self.stats;
        self.progress.send_modify(|p| p.clone_from(stats));
    }
}
