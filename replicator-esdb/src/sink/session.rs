//! The batch-append session every append of the sink goes through, and the
//! plain append it falls back to.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use eventstore::ExpectedRevision;
use replicator_core::{ErrorKind, Event, Position};
use tracing::{debug, warn};

use super::EsdbSink;
use crate::cluster::{within, ClientPosition as _};
use crate::connection::error_kind;
use crate::plan::PROBE_REVISION;
use crate::wire::append::BatchSession;
use crate::wire::client::{GrpcClient as Client, Proposed};

impl EsdbSink {
    /// Appends `events` to `stream` at `expected`.
    ///
    /// Goes through one batch-append session shared by every append of the
    /// sink, on a channel of the sink's own ([`crate::wire`]): requests on the
    /// open bidirectional batch-append stream are answered at once, and many
    /// appends share one request stream. A batch-append
    /// error carries no details (and ends the session), so on any error the
    /// session is dropped and the append is made again as a plain append, whose
    /// wrong-expected-version reply the replay logic needs. Replaying an append
    /// that did go through is safe: it is recognised by event ids. A batch
    /// append past its deadline is not tried again plainly: the target does
    /// not answer, and the write fails at once.
    pub(super) async fn append_events(
        &self,
        generation: u64,
        client: &Client,
        stream: &str,
        expected: ExpectedRevision,
        events: &[&Event],
    ) -> Result<(Option<Position>, Option<u64>), eventstore::Error> {
        // A probe is refused by design, and a refusal ends the shared
        // session, failing every append in flight on it: with many streams
        // unknown to `Tracked` mode, that made every batch start over.
        let probe = matches!(expected, ExpectedRevision::Exact(r) if r == PROBE_REVISION);
        let batch = match probe {
            true => None,
            false => self.batch_session(generation).await,
        };
        if let Some(batch) = batch {
            let result = within(self.request_timeout, batch.append(stream, expected, events)).await;
            match result {
                Ok(appended) => return Ok(appended),
                Err(error) => {
                    match &error {
                        eventstore::Error::UnsupportedFeature => {
                            warn!("The target does not offer batch append; using plain appends");
                            self.no_batch_append.store(true, Ordering::Relaxed);
                        }
                        eventstore::Error::NotLeaderException(leader) => {
                            *self.batch_leader.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(leader.clone());
                        }
                        _ => {}
                    }
                    debug!(%error, stream, "Batch append failed; appending plainly");
                    // A refusal (wrong expected version, deleted, too large)
                    // leaves our session usable; anything else may not.
                    if error_kind(&error) == ErrorKind::Transient
                        || matches!(
                            error,
                            eventstore::Error::UnsupportedFeature
                                | eventstore::Error::NotLeaderException(_)
                        )
                    {
                        self.drop_session(&batch);
                    }
                    if matches!(error, eventstore::Error::DeadlineExceeded) {
                        return Err(error);
                    }
                }
            }
        }
        Box::pin(within(
            self.request_timeout,
            append(client, stream, expected, events),
        ))
        .await
        .map(|(position, last)| (Some(position), Some(last)))
    }

    /// Forgets `session` if it is the current one, so the next append opens
    /// another.
    pub(super) fn drop_session(&self, session: &Arc<BatchSession>) {
        let mut current = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        if current
            .as_ref()
            .is_some_and(|(_, b)| Arc::ptr_eq(b, session))
        {
            *current = None;
        }
    }

    /// The shared batch-append session of the client of `generation`, opened
    /// when there is none; `None` when the target does not offer batch append
    /// or the session cannot be opened now (the plain append reports why).
    pub(super) async fn batch_session(&self, generation: u64) -> Option<Arc<BatchSession>> {
        if self.no_batch_append.load(Ordering::Relaxed) {
            return None;
        }
        if let Some((g, batch)) = self
            .batch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            // An ended call (refused, cut) fails every request: a new one
            // is opened instead, with the credentials of now.
            if *g == generation && !batch.has_ended() {
                return Some(batch.clone());
            }
        }
        Box::pin(self.open_batch_session(generation)).await
    }

    /// Opens a batch-append session (boxed by the caller: it is rare, and
    /// its state would otherwise grow every append's future, which is moved
    /// into a box for every stream of every batch).
    async fn open_batch_session(&self, generation: u64) -> Option<Arc<BatchSession>> {
        let leader = self
            .batch_leader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let channel = match within(self.request_timeout, self.client.connect_wire(leader)).await {
            Ok(channel) => channel,
            Err(error) => {
                debug!(%error, "Cannot open a batch-append session");
                return None;
            }
        };
        let batch = Arc::new(BatchSession::open(&channel));
        let mut current = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        match current.as_ref() {
            // Another append opened one meanwhile: share it.
            Some((g, existing)) if *g == generation => Some(existing.clone()),
            _ => {
                *current = Some((generation, batch.clone()));
                Some(batch)
            }
        }
    }
}

async fn append(
    client: &Client,
    stream: &str,
    expected: ExpectedRevision,
    events: &[&Event],
) -> Result<(Position, u64), eventstore::Error> {
    let data: Vec<Proposed> = events.iter().map(|e| Proposed::of(e)).collect();
    let result = client.append(stream, expected, data).await?;
    Ok((
        Position::from_client(result.position),
        result.next_expected_version,
    ))
}
