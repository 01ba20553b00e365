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
//!
//! A *replay region*: from the sink's start, and after every failed batch,
//! the target may hold a prefix of the records about to be sent, ending in
//! the middle of a run. A request of several records straddling that end is
//! refused (partly idempotent) while the requests behind it are written, so
//! until an answer lies past where the target's `$all` ended on entering the
//! region, every request carries one record ([`EsdbSink::replaying`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use eventstore::ExpectedRevision;
use futures::{FutureExt, StreamExt};
use replicator_core::{ErrorKind, Event, Position, SinkError, WriteAck};
use tracing::{debug, warn};

use super::run::{log_note, refusal, RunError};
use super::{EsdbSink, STREAMS_IN_FLIGHT};
use crate::cluster::within;
use crate::connection::{describe, error_kind};
use crate::plan::{
    replay_parts, sequence, Action, AppendRun, Done, Expected, Guess, Reply, Step, PROBE_REVISION,
};
use crate::wire::append::{BatchSession, PendingAppend};
use crate::wire::client::GrpcClient as Client;
use crate::wire::read::last_position;

/// Streams [`OrderState::known`] holds at most (about 100 bytes each): a
/// stream forgotten is resolved again on its next write, nothing more.
const MAX_KNOWN_STREAMS: usize = 100_000;

/// Batches one writer may have in flight at once
/// ([`replicator_core::Sink::pipelined_writes`]).
pub(super) const PIPELINED_BATCHES: usize = 4;

/// What the ordered writer knows of the target between batches.
#[derive(Debug, Default)]
pub(super) struct OrderState {
    /// Target streams sent to or resolved by this sink since it started:
    /// their next append's expected revision is certain.
    known: HashSet<String>,
    /// Tracked streams: the target revision after the requests sent so far
    /// (forgotten after a failure: then what the target confirmed counts).
    pending_next: HashMap<String, u64>,
    /// The replay horizon is passed (see the module docs).
    horizon_passed: bool,
    /// Where the target's `$all` ended when the sink (re)entered the replay
    /// region (`Some(None)`: empty); `None` until asked.
    replay_end: Option<Option<Position>>,
    /// The session the last batch was sent on.
    last_session: Option<std::sync::Weak<BatchSession>>,
}

/// The pipelined batches' turns: a batch takes its turn, in the order the
/// pipeline started the writes (a fair lock, taken at a write's first poll),
/// sends its requests, and gives the turn to the next batch while it waits
/// for its answers.
#[derive(Debug)]
pub(super) struct Turns {
    turn: tokio::sync::Mutex<()>,
    /// Batches that failed so far.
    failures: AtomicUsize,
    /// The next batch's ticket, given with its turn.
    next_ticket: AtomicU64,
    /// Tickets settled: every one below the first number, and those in the
    /// set (settled out of order).
    settled: tokio::sync::watch::Sender<(u64, BTreeSet<u64>)>,
}

impl Default for Turns {
    fn default() -> Self {
        Turns {
            turn: tokio::sync::Mutex::new(()),
            failures: AtomicUsize::new(0),
            next_ticket: AtomicU64::new(0),
            settled: tokio::sync::watch::Sender::new((0, BTreeSet::new())),
        }
    }
}

/// A batch's place in the order, given with its turn: its refusals are
/// settled after the earlier batches' (several settling one stream at once
/// would each find the others' records missing), and it counts as settled
/// when dropped.
struct Ticket<'t> {
    turns: &'t Turns,
    number: u64,
}

impl<'t> Ticket<'t> {
    /// The next ticket; taken while holding the turn.
    fn take(turns: &'t Turns) -> Self {
        Ticket {
            turns,
            number: turns.next_ticket.fetch_add(1, Ordering::SeqCst),
        }
    }

    /// Whether a batch before this one is not settled.
    fn after_unsettled(&self) -> bool {
        self.turns.settled.borrow().0 < self.number
    }

    /// Waits until every batch before this one is settled.
    async fn wait_for_earlier(&self) {
        let mut settled = self.turns.settled.subscribe();
        // The sender lives as long as the sink, so this cannot fail.
        let _ = settled.wait_for(|(below, _)| *below >= self.number).await;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let number = self.number;
        self.turns.settled.send_modify(|(below, out_of_order)| {
            out_of_order.insert(number);
            while out_of_order.remove(below) {
                *below += 1;
            }
        });
    }
}

/// What a batch that failed, or was dropped unfinished, leaves behind.
struct Failed<'s, 'b> {
    sink: &'s EsdbSink,
    batch: &'b [Event],
    armed: bool,
}

impl Drop for Failed<'_, '_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // What an earlier attempt taught about these streams may be ahead
        // of the target now (tracked revisions of requests answered before
        // the failure): the retry asks again.
        self.sink.forget_tracked(self.batch);
        let mut order = self.sink.order();
        order.pending_next.clear();
        // What the target holds of the requests sent is a prefix of them, of
        // unknown length: the retry is in a replay region again.
        order.horizon_passed = false;
        order.replay_end = None;
        drop(order);
        // The batches started before this failure was seen and not yet sent
        // must not pass it: they fail too, and the pipeline writes them
        // again after this one.
        self.sink.turns.failures.fetch_add(1, Ordering::SeqCst);
    }
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
    ///
    /// Several calls may be in flight ([`PIPELINED_BATCHES`]): each takes
    /// its turn at its first poll, in the order the pipeline started them,
    /// sends its requests, and lets the next one send while it waits for its
    /// answers.
    pub(super) async fn write_in_order(&self, batch: &[Event]) -> Result<WriteAck, SinkError> {
        // Taken at the first poll, with the turn's place in the queue.
        let failures = self.turns.failures.load(Ordering::SeqCst);
        // A failure, or the write dropped unfinished (its deadline passed).
        let mut failed = Failed {
            sink: self,
            batch,
            armed: true,
        };
        let result = self.write_in_turn(batch, failures).await;
        failed.armed = result.is_err();
        result
    }

    async fn write_in_turn(&self, batch: &[Event], failures: usize) -> Result<WriteAck, SinkError> {
        let turn = self.turns.turn.lock().await;
        if self.turns.failures.load(Ordering::SeqCst) != failures {
            return Err(SinkError::transient(format!(
                "appending to `{}`: an earlier batch failed; written again after it",
                batch[0].target_stream()
            )));
        }
        let steps = sequence(batch, self.max_append_bytes);
        if steps.is_empty() {
            return Ok(WriteAck::default());
        }
        let ticket = Ticket::take(&self.turns);
        let (generation, client) = self.client()?;
        let session = self.batch_session(generation).await;
        if ticket.after_unsettled() && !self.same_session(session.as_ref()) {
            // An earlier batch was sent on a call that has ended since, and
            // its outcome is not known yet: this one must not pass it.
            return Err(SinkError::transient(format!(
                "appending to `{}`: the batch-append call of an earlier batch ended before \
                 it was answered; written again after it",
                batch[0].target_stream()
            )));
        }
        let Some(session) = session else {
            // No batch append (an old server, or none can be opened now):
            // one append at a time, which keeps the order too (each refusal
            // is settled before the next append).
            ticket.wait_for_earlier().await;
            return self.write_one_by_one(&steps).await;
        };
        let replaying = self.replaying(generation, &session, batch).await?;
        let mut resolved = self.resolve_uncertain(generation, &client, &steps).await?;
        self.order().last_session = Some(Arc::downgrade(&session));

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
                    ticket.wait_for_earlier().await;
                    self.settle_refused(&steps, &mut outcome).await?;
                    let position = Box::pin(self.tombstone(event)).await?;
                    outcome.position = outcome.position.max(position);
                    outcome.last_written = Some(index);
                    self.forget_known(event.target_stream());
                    continue;
                }
            };
            // A renumbered stream's metadata has its `$tb` moved (rare):
            // written alone, below.
            let shifted = self.shifted_metadata(events).is_some();
            let planned = match resolved.remove(&index) {
                _ if shifted => None,
                Some(Resolved::Written(done)) => {
                    outcome.position = outcome.position.max(done.position);
                    let tracked = self.is_tracked(stream);
                    if tracked {
                        // The stream's later runs in this batch go after
                        // what the target holds.
                        if let Some(last) = done.last_revision.filter(|_| !done.deleted) {
                            next.insert(stream, last + 1);
                        }
                    }
                    self.learn(stream, events, done, tracked, self.offset(stream));
                    continue;
                }
                Some(Resolved::Send { from, expected }) => {
                    if !self.is_tracked(stream) {
                        // Later runs of the stream in this batch go after
                        // this one: their guesses need its offset now.
                        let at = expected.next_revision() as i64;
                        self.remember_offset(stream, at - events[from].revision as i64);
                    }
                    Some((from, expected))
                }
                None => self
                    .certain_expected(stream, events, &next)
                    .map(|expected| (0, expected)),
            };
            let Some((from, expected)) = planned else {
                // Not certain here (a renumbered stream's metadata, its `$tb`
                // moved; a tracked stream found deleted earlier in the
                // batch): rare, so alone, after what is in flight, with the
                // replay logic.
                self.settle(&mut in_flight, &mut outcome).await;
                if outcome.transient.is_some() {
                    break;
                }
                ticket.wait_for_earlier().await;
                self.settle_refused(&steps, &mut outcome).await?;
                let position = self.write_stream_plan(std::slice::from_ref(step)).await?;
                outcome.position = outcome.position.max(position);
                outcome.last_written = Some(index);
                // A tracked stream's later runs go after what this wrote.
                self.order().pending_next.remove(stream);
                match self.tracked_next(stream) {
                    Some(after) => next.insert(stream, after),
                    None => next.remove(stream),
                };
                continue;
            };
            // In a replay region a request of several records could straddle
            // the end of what the target holds: refused (the server's
            // `CommitDecision.CorruptedIdempotency`) while later requests are
            // written. One record per request cannot; nor can one commit per
            // request, since a commit is always written whole.
            let parts: Vec<&[&Event]> = if replaying {
                replay_parts(&events[from..], self.max_append_bytes)
            } else {
                vec![&events[from..]]
            };
            let tracked = self.is_tracked(stream);
            let mut expected = expected;
            let mut broken = false;
            for part in parts {
                let after = expected.next_revision() + part.len() as u64;
                if tracked {
                    next.insert(stream, after);
                    self.order().pending_next.insert(stream.to_owned(), after);
                } else {
                    self.remember_known(stream);
                }
                match session.send(stream, expected.into(), part) {
                    Ok(answer) => in_flight.push(InFlight {
                        step: index,
                        stream,
                        events: part,
                        first: expected.next_revision(),
                        answer,
                    }),
                    Err(error) => {
                        outcome.transient =
                            Some(self.session_error(generation, &session, error, part[0]));
                        broken = true;
                        break;
                    }
                }
                expected = Expected::before(after);
            }
            if broken {
                break;
            }
        }
        // The next batch may send now; this one waits for its answers.
        drop(turn);
        self.settle(&mut in_flight, &mut outcome).await;
        if let Some(error) = outcome.transient {
            self.drop_session(&session);
            return Err(error);
        }
        if !outcome.refused.is_empty() {
            ticket.wait_for_earlier().await;
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
                    self.past_replay_end(position);
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

    /// The expected revision of a run of a stream whose state is certain;
    /// `None` for a tracked stream whose revision is not known here.
    fn certain_expected(
        &self,
        stream: &str,
        events: &[&Event],
        next: &HashMap<&str, u64>,
    ) -> Option<Expected> {
        if self.is_tracked(stream) {
            // A later run of a stream whose first run in this batch was
            // sent or found written: `next` has it.
            return next.get(stream).map(|&n| Expected::before(n));
        }
        let (guess, _) = self.guess(stream, events, false);
        match guess {
            Guess::At(revision) => Some(Expected::before(revision)),
            _ => unreachable!("a stream of source revisions always has a guess"),
        }
    }

    /// The expected revision of a run when it is certain without asking the
    /// target (see the module docs), read in one go: what makes it certain
    /// can change under a batch waiting for its answers.
    fn certain(&self, stream: &str, events: &[&Event]) -> Option<Expected> {
        if self.is_tracked(stream) {
            let pending = self.order().pending_next.get(stream).copied();
            return pending
                .or_else(|| self.tracked_next(stream))
                .map(Expected::before);
        }
        let order = self.order();
        let certain = order.known.contains(stream)
            || (order.horizon_passed && events[0].revision == 0 && self.offset(stream) == 0);
        drop(order);
        if !certain {
            return None;
        }
        self.certain_expected(stream, events, &HashMap::new())
    }

    /// Whether the batch is in a replay region: the records the target may
    /// hold already from an earlier run or a failed attempt are not all
    /// behind. Entering one, the sink asks where the target's `$all` ends:
    /// the first answer after that position is a record written now, and
    /// what follows it in the source's order cannot be on the target.
    async fn replaying(
        &self,
        generation: u64,
        session: &BatchSession,
        batch: &[Event],
    ) -> Result<bool, SinkError> {
        let known = {
            let order = self.order();
            order
                .horizon_passed
                .then_some(false)
                .or(order.replay_end.map(|_| true))
        };
        if let Some(replaying) = known {
            return Ok(replaying);
        }
        // On the session's channel: no delayed ACK.
        let end = within(self.request_timeout, last_position(session.channel()))
            .await
            .map_err(|error| {
                self.failed(generation, &error);
                super::sink_error(error, "reading where the target's $all ends", &batch[0])
            })?;
        let mut order = self.order();
        order.replay_end = Some(end);
        if end.is_none() {
            // An empty target holds nothing to replay.
            order.horizon_passed = true;
        }
        Ok(!order.horizon_passed)
    }

    /// Notes an answer's position: past the replay region's end, the
    /// horizon is passed.
    fn past_replay_end(&self, position: Option<Position>) {
        let mut order = self.order();
        if let (Some(Some(end)), Some(at)) = (order.replay_end, position) {
            if at > end {
                order.horizon_passed = true;
            }
        }
    }

    fn order(&self) -> std::sync::MutexGuard<'_, OrderState> {
        self.order_state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `session` is the one the last batch was sent on.
    fn same_session(&self, session: Option<&Arc<BatchSession>>) -> bool {
        let last = self.order().last_session.as_ref().and_then(|w| w.upgrade());
        match (session, last) {
            (Some(session), Some(last)) => Arc::ptr_eq(session, &last),
            _ => false,
        }
    }

    fn remember_known(&self, stream: &str) {
        let mut order = self.order();
        if order.known.contains(stream) {
            return;
        }
        if order.known.len() >= MAX_KNOWN_STREAMS {
            order.known.clear();
        }
        order.known.insert(stream.to_owned());
    }

    fn forget_known(&self, stream: &str) {
        let mut order = self.order();
        order.known.remove(stream);
        order.pending_next.remove(stream);
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
        // First runs whose expected revision is certain, fixed now.
        let mut certain = HashMap::new();
        for (index, step) in steps.iter().enumerate() {
            let Step::Append { stream, events } = step else {
                continue;
            };
            if !seen.insert(stream) {
                continue;
            }
            match self.certain(stream, events) {
                Some(expected) => {
                    certain.insert(index, Resolved::Send { from: 0, expected });
                }
                None => uncertain.push((index, *stream, events.as_slice())),
            }
        }
        if uncertain.is_empty() {
            return Ok(certain);
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
        let mut resolved = certain;
        let mut failure = None;
        for (index, stream, result) in results {
            match result {
                Ok(r) => {
                    if matches!(r, Resolved::Send { from: 0, .. }) {
                        self.order().horizon_passed = true;
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
