//! Source order ([`WriteOrder::Source`]): a batch's steps written in the
//! source's `$all` order, many requests in flight on one batch-append call.
//!
//! What this rests on (ARCHITECTURE.md, "Source order", cites the server's
//! code): a leader writes the requests of one batch-append call in the order
//! they arrive; a refused request writes nothing and the call goes on; after a
//! cut connection or a timeout, what is written of the requests sent is a
//! prefix of them, in order. So the records are on the target in source order
//! as long as every request sent is certain to be written where it is sent,
//! or to be a replay of records already there. A request whose outcome could
//! be "append these somewhere else" (a stream the sink knows nothing about:
//! renumbered by the source's scavenging, merged by a rename, or partly
//! written by an earlier run with other request boundaries) is *resolved*
//! first, before anything of its batch is sent: the target is asked where the
//! stream ends and what it holds of the run (the same state machine as a
//! refused append, `plan.rs`), and the request is sent with what that found.
//!
//! Which streams need it: every stream the sink has not written or resolved
//! since it started, until the *replay horizon* is passed; after that, only
//! streams whose first record is not their source stream's first (a source
//! revision above 0: the target may have renumbered them) and tracked
//! streams. The horizon
//! is passed when a resolution finds that the target holds none of a run's
//! records: what the target holds of this replicator's writes is a prefix of
//! the source's order, so it holds nothing after that record either, and a
//! stream that starts after it cannot exist on the target yet.

use std::collections::{HashMap, HashSet};

use eventstore::{Client, ExpectedRevision};
use futures::{FutureExt, StreamExt};
use replicator_core::{ErrorKind, Event, Position, SinkError, WriteAck};
use tracing::{debug, warn};

use super::{log_note, refusal, EsdbSink, RunError, STREAMS_IN_FLIGHT};
use crate::connection::{describe, error_kind};
use crate::plan::{
    sequence, Action, AppendRun, Done, Expected, Guess, Reply, Step, PROBE_REVISION,
};
use crate::wire::append::{BatchSession, PendingAppend};

/// Streams [`OrderState::known`] holds at most (about 100 bytes each): a
/// stream forgotten is resolved again on its next write, nothing more.
const MAX_KNOWN_STREAMS: usize = 100_000;

/// What the ordered writer knows of the target between batches.
#[derive(Debug, Default)]
pub(super) struct OrderState {
    /// Target streams written or resolved by this sink since it started:
    /// their next append's expected revision is certain.
    known: HashSet<String>,
    /// The replay horizon is passed (see the module docs).
    horizon_passed: bool,
}

/// Where a resolved run goes.
enum Resolved {
    /// Every record is on the target already.
    Written(Done),
    /// Append the run from index `from` with `expected`: certain now.
    Send { from: usize, expected: Expected },
}

/// A request sent and not yet answered.
struct InFlight<'s, 'b> {
    step: usize,
    stream: &'b str,
    events: &'b [&'b Event],
    /// The target revision of `events[0]`.
    first: u64,
    answer: PendingAppend<'s>,
}

/// The answers of a batch's requests so far.
#[derive(Default)]
struct Outcome {
    position: Option<Position>,
    /// The first transient failure: the batch is written again.
    transient: Option<SinkError>,
    /// The first record of the request that failed so, until a later
    /// request is seen written.
    transient_at: Option<(uuid::Uuid, String)>,
    /// Steps refused: settled one by one afterwards.
    refused: Vec<usize>,
    /// The last step written as sent.
    last_written: Option<usize>,
}

impl EsdbSink {
    /// Writes `batch` so that its records are on the target in its order.
    pub(super) async fn write_in_order(&self, batch: &[Event]) -> Result<WriteAck, SinkError> {
        let steps = sequence(batch, self.max_append_bytes);
        if steps.is_empty() {
            return Ok(WriteAck::default());
        }
        let (generation, client) = self.client()?;
        let mut resolved = self.resolve_uncertain(generation, &client, &steps).await?;
        let session = self.batch_session(generation).await;
        let Some(session) = session else {
            // No batch append (an old server, or none can be opened now):
            // one append at a time, which keeps the order too.
            return self.write_one_by_one(&steps).await;
        };

        let mut outcome = Outcome::default();
        let mut in_flight: Vec<InFlight<'_, '_>> = Vec::new();
        // Tracked streams: the target revision after the steps sent so far.
        let mut next: HashMap<&str, u64> = HashMap::new();
        for (index, step) in steps.iter().enumerate() {
            let (stream, events) = match step {
                Step::Append { stream, events } => (*stream, events.as_slice()),
                Step::Tombstone(event) => {
                    // Another call: no order with the batch-append call's
                    // requests, so those are answered first.
                    self.settle(&mut in_flight, &mut outcome).await;
                    if outcome.transient.is_some() {
                        break;
                    }
                    self.settle_refused(&steps, &mut outcome).await?;
                    let position = Box::pin(self.tombstone(event)).await?;
                    outcome.position = outcome.position.max(position);
                    outcome.last_written = Some(index);
                    self.forget_known(event.target_stream());
                    continue;
                }
            };
            if self.shifted_metadata(events).is_some() {
                // A renumbered stream's metadata, its `$tb` moved: rare, so
                // alone, after what is in flight.
                self.settle(&mut in_flight, &mut outcome).await;
                if outcome.transient.is_some() {
                    break;
                }
                self.settle_refused(&steps, &mut outcome).await?;
                let position = self.write_stream_plan(std::slice::from_ref(step)).await?;
                outcome.position = outcome.position.max(position);
                outcome.last_written = Some(index);
                continue;
            }
            let (from, expected) = match resolved.remove(&index) {
                Some(Resolved::Written(done)) => {
                    outcome.position = outcome.position.max(done.position);
                    self.learn(
                        stream,
                        events,
                        done,
                        self.is_tracked(stream),
                        self.offset(stream),
                    );
                    continue;
                }
                Some(Resolved::Send { from, expected }) => {
                    if !self.is_tracked(stream) {
                        // Later runs of the stream in this batch go after
                        // this one: their guesses need its offset now.
                        let at = expected.next_revision() as i64;
                        self.remember_offset(stream, at - events[from].revision as i64);
                    }
                    (from, expected)
                }
                None => (0, self.certain_expected(stream, events, &next)),
            };
            if self.is_tracked(stream) {
                let first = expected.next_revision();
                next.insert(stream, first + (events.len() - from) as u64);
            }
            match session.send(stream, expected.into(), &events[from..]) {
                Ok(answer) => in_flight.push(InFlight {
                    step: index,
                    stream,
                    events: &events[from..],
                    first: expected.next_revision(),
                    answer,
                }),
                Err(error) => {
                    outcome.transient =
                        Some(self.session_error(generation, &session, error, events[from]));
                    break;
                }
            }
        }
        self.settle(&mut in_flight, &mut outcome).await;
        if let Some(error) = outcome.transient {
            self.drop_session(&session);
            return Err(error);
        }
        self.settle_refused(&steps, &mut outcome).await?;
        Ok(WriteAck {
            target_position: outcome.position,
        })
    }

    /// Settles the requests the target refused, one after the other, with
    /// the replay logic: written when sent only if something was in the way,
    /// a replay (nothing is appended then) or another writer.
    async fn settle_refused(
        &self,
        steps: &[Step<'_>],
        outcome: &mut Outcome,
    ) -> Result<(), SinkError> {
        for index in std::mem::take(&mut outcome.refused) {
            let Step::Append { stream, events } = &steps[index] else {
                unreachable!("only appends are refused")
            };
            let (done, appended) = self.append_run_reporting(stream, events).await?;
            outcome.position = outcome.position.max(done.position);
            if appended && outcome.last_written.is_some_and(|last| last > index) {
                warn!(
                    stream,
                    event = %events[0].id,
                    position = %events[0].position,
                    "The target refused an append because it held part of it already, and \
                     later records were written meanwhile: these records are after them in \
                     the target's $all (did an earlier run write this target in stream order, \
                     or does something else write to it?)"
                );
            }
        }
        Ok(())
    }

    /// Waits for the answers of the requests in flight, in order, each at
    /// most the request timeout from now: they were sent together, and a
    /// frozen target must not cost one timeout per request.
    async fn settle(&self, in_flight: &mut Vec<InFlight<'_, '_>>, outcome: &mut Outcome) {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        for sent in in_flight.drain(..) {
            let answer = tokio::time::timeout_at(deadline, sent.answer.answer())
                .await
                .unwrap_or(Err(eventstore::Error::DeadlineExceeded));
            match answer {
                Ok((position, _)) => {
                    if let Some((failed, error)) = &outcome.transient_at {
                        // A server refuses a request for a passing reason
                        // (not ready during a leader change) and writes the
                        // ones after it: the failed one will come after them.
                        warn!(
                            stream = sent.stream,
                            written = %sent.events[0].id,
                            refused = %failed,
                            %error,
                            "The target refused an append for a passing reason and wrote a \
                             later one: on the target, the refused records will follow it (a \
                             leader change?); `replicator verify` reports the first pair"
                        );
                        outcome.transient_at = None;
                    }
                    outcome.position = outcome.position.max(position);
                    outcome.last_written = Some(sent.step);
                    self.succeeded();
                    // Not the stream's last revision from the answer: a
                    // server adds a `$tb` record of its own after metadata
                    // written to a soft-deleted stream.
                    let last = sent.first + sent.events.len() as u64 - 1;
                    self.confirm(sent.stream, sent.events, position, last);
                }
                Err(error) if error_kind(&error) == ErrorKind::Transient => {
                    if outcome.transient.is_none() {
                        outcome.transient_at = Some((sent.events[0].id, describe(&error)));
                        outcome.transient = Some(super::sink_error(
                            error,
                            &format!("appending to `{}`", sent.stream),
                            sent.events[0],
                        ));
                    }
                }
                Err(error) => {
                    debug!(%error, stream = sent.stream, "Ordered append refused; settling it");
                    outcome.refused.push(sent.step);
                }
            }
        }
    }

    /// What an append written as sent taught: the stream is known.
    fn confirm(&self, stream: &str, events: &[&Event], position: Option<Position>, last: u64) {
        let tracked = self.is_tracked(stream);
        let done = Done {
            position,
            last_revision: Some(last),
            deleted: false,
        };
        self.learn(stream, events, done, tracked, self.offset(stream));
        if !tracked {
            self.remember_known(stream);
        }
    }

    /// The expected revision of a run of a stream whose state is certain.
    fn certain_expected(
        &self,
        stream: &str,
        events: &[&Event],
        next: &HashMap<&str, u64>,
    ) -> Expected {
        if self.is_tracked(stream) {
            let last = next
                .get(stream)
                .map(|&n| n.checked_sub(1))
                .unwrap_or_else(|| {
                    self.tracked
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(stream)
                        .copied()
                });
            return match last {
                Some(last) => Expected::Exact(last),
                None => Expected::NoStream,
            };
        }
        let (guess, _) = self.guess(stream, events, false);
        match guess {
            Guess::At(revision) => Expected::before(revision),
            _ => unreachable!("a stream of source revisions always has a guess"),
        }
    }

    /// Whether a run's expected revision is certain without asking the
    /// target (see the module docs).
    fn is_certain(&self, stream: &str, events: &[&Event]) -> bool {
        if self.is_tracked(stream) {
            return self
                .tracked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(stream);
        }
        let order = self.order_state.lock().unwrap_or_else(|e| e.into_inner());
        order.known.contains(stream)
            || (order.horizon_passed && events[0].revision == 0 && self.offset(stream) == 0)
    }

    fn remember_known(&self, stream: &str) {
        let mut order = self.order_state.lock().unwrap_or_else(|e| e.into_inner());
        if order.known.contains(stream) {
            return;
        }
        if order.known.len() >= MAX_KNOWN_STREAMS {
            order.known.clear();
        }
        order.known.insert(stream.to_owned());
    }

    fn forget_known(&self, stream: &str) {
        let mut order = self.order_state.lock().unwrap_or_else(|e| e.into_inner());
        order.known.remove(stream);
    }

    /// Resolves the first run of each stream of `steps` whose expected
    /// revision is not certain, several at once; by step index.
    async fn resolve_uncertain(
        &self,
        generation: u64,
        client: &Client,
        steps: &[Step<'_>],
    ) -> Result<HashMap<usize, Resolved>, SinkError> {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut uncertain = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            let Step::Append { stream, events } = step else {
                continue;
            };
            if seen.insert(stream) && !self.is_certain(stream, events) {
                uncertain.push((index, *stream, events.as_slice()));
            }
        }
        if uncertain.is_empty() {
            return Ok(HashMap::new());
        }
        // Boxed up front: a closure inside the stream combinators trips the
        // compiler's `Send` inference for the trait's boxed future.
        let resolutions: Vec<_> = uncertain
            .into_iter()
            .map(|(index, stream, events)| {
                self.resolve(generation, client, stream, events)
                    .map(move |result| (index, stream, result))
                    .boxed()
            })
            .collect();
        let results: Vec<_> = futures::stream::iter(resolutions)
            .buffer_unordered(STREAMS_IN_FLIGHT)
            .collect()
            .await;
        let mut resolved = HashMap::new();
        let mut failure = None;
        for (index, stream, result) in results {
            match result {
                Ok(r) => {
                    if matches!(r, Resolved::Send { from: 0, .. }) {
                        self.order_state
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .horizon_passed = true;
                    }
                    resolved.insert(index, r);
                }
                Err(error) => {
                    let error = self.run_error(generation, stream, error);
                    let replace = match &failure {
                        None => true,
                        Some(previous) => {
                            SinkError::is_transient(previous) && !error.is_transient()
                        }
                    };
                    if replace {
                        failure = Some(error);
                    }
                }
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(resolved),
        }
    }

    /// Works out where a run goes without writing it: the target is asked
    /// where the stream ends (an append stating a revision no stream has,
    /// refused by design), and what it holds of the run, until the run's
    /// [`AppendRun`] wants an append the target's state says will succeed.
    async fn resolve<'e>(
        &self,
        generation: u64,
        client: &Client,
        stream: &str,
        events: &[&'e Event],
    ) -> Result<Resolved, RunError<'e>> {
        let tracked = self.is_tracked(stream);
        let (guess, _) = self.guess(stream, events, tracked);
        let mut run = AppendRun::new(events, guess, stream.starts_with("$$"));
        let mut action = run.start();
        // The stream's last revision as the target last said (`Some(None)`:
        // no such stream).
        let mut current: Option<Option<u64>> = None;
        loop {
            let reply = match action {
                Action::Append {
                    from,
                    expected,
                    note,
                } => {
                    let probe = expected == Expected::Exact(PROBE_REVISION);
                    if !probe && current.is_some_and(|c| expected.matches(c)) {
                        log_note(stream, events[from], note, tracked);
                        return Ok(Resolved::Send { from, expected });
                    }
                    let asked = self
                        .append_events(
                            generation,
                            client,
                            stream,
                            ExpectedRevision::Exact(PROBE_REVISION),
                            &events[from..],
                        )
                        .await;
                    match asked {
                        Ok(_) => {
                            return Err(RunError::Client(
                                eventstore::Error::ServerError(
                                    "the target accepted an append at a revision no stream has"
                                        .to_owned(),
                                ),
                                events[from],
                            ))
                        }
                        Err(error) => match refusal(error) {
                            Ok(Reply::WrongExpected { current: now }) => {
                                current = Some(now);
                                if !probe && expected.matches(now) {
                                    log_note(stream, events[from], note, tracked);
                                    return Ok(Resolved::Send { from, expected });
                                }
                                Reply::WrongExpected { current: now }
                            }
                            Ok(reply) => reply,
                            Err(error) => return Err(RunError::Client(error, events[from])),
                        },
                    }
                }
                Action::Done(done) => {
                    self.succeeded();
                    return Ok(Resolved::Written(done));
                }
                action => self.settle_action(client, stream, action, &run).await?,
            };
            action = run.step(reply);
        }
    }

    /// The batch's steps one after the other, each waiting for the last.
    async fn write_one_by_one(&self, steps: &[Step<'_>]) -> Result<WriteAck, SinkError> {
        let mut target_position = None;
        for step in steps {
            let position = self.write_stream_plan(std::slice::from_ref(step)).await?;
            target_position = target_position.max(position);
        }
        Ok(WriteAck { target_position })
    }

    /// The error of a session that cannot take a request; the session is
    /// dropped so the retry opens a new one.
    fn session_error(
        &self,
        generation: u64,
        session: &std::sync::Arc<BatchSession>,
        error: eventstore::Error,
        event: &Event,
    ) -> SinkError {
        self.drop_session(session);
        self.failed(generation, &error);
        super::sink_error(error, &format!("appending to `{}`", event.stream), event)
    }
}
