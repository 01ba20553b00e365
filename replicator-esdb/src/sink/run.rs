//! The I/O of a stream plan: append runs (the decisions are the state
//! machine in `plan.rs`; this performs its appends and reads) and
//! tombstones.

use std::time::Duration;

use eventstore::{CurrentRevision, ExpectedRevision};
use replicator_core::{ChangeKind, Event, Position, SinkError};
use tracing::{debug, warn};

use super::{sink_error, EsdbSink, RevisionMode};
use crate::cluster::{within, AllFrom, Direction, StreamFrom};
use crate::plan::{
    shift_truncate_before, Action, AppendRun, Divergence, Done, Expected, Guess, Note, Reply, Step,
    TargetRecord,
};
use crate::wire::client::{GrpcClient as Client, ReadOf};

impl EsdbSink {
    pub(super) async fn write_stream_plan(
        &self,
        steps: &[Step<'_>],
    ) -> Result<Option<Position>, SinkError> {
        let mut highest = None;
        for step in steps {
            let position = match step {
                Step::Append { stream, events } => match self.shifted_metadata(events) {
                    Some(shifted) => self.append_run(stream, &[&shifted]).await?,
                    None => self.append_run(stream, events).await?,
                },
                Step::Tombstone(event) => Box::pin(self.tombstone(event)).await?,
            };
            highest = highest.max(position);
        }
        Ok(highest)
    }

    /// A stream-metadata record whose `$tb` must move because its stream is
    /// renumbered on the target ([`shift_truncate_before`]), with the moved
    /// value; `None` for anything else. Only [`RevisionMode::FromSource`]
    /// knows the offset, and only for a stream this sink renumbered (or found
    /// renumbered) since it started.
    pub(super) fn shifted_metadata(&self, events: &[&Event]) -> Option<Event> {
        let [event] = events else { return None };
        if event.kind != ChangeKind::StreamMetadata || self.revisions != RevisionMode::FromSource {
            return None;
        }
        let data = shift_truncate_before(&event.data, self.offset(event.target_stream()))?;
        debug!(
            stream = event.target_stream(),
            "Moving a renumbered stream's $tb to its target revisions"
        );
        Some(Event {
            data,
            ..(*event).clone()
        })
    }

    /// Appends records of one stream, recognising a replay.
    async fn append_run(
        &self,
        stream: &str,
        events: &[&Event],
    ) -> Result<Option<Position>, SinkError> {
        self.append_run_reporting(stream, events)
            .await
            .map(|(done, _)| done.position)
    }

    /// [`EsdbSink::append_run`], also saying whether anything was appended
    /// (not every record was on the target already).
    pub(super) async fn append_run_reporting(
        &self,
        stream: &str,
        events: &[&Event],
    ) -> Result<(Done, bool), SinkError> {
        let (generation, client) = self.client()?;
        let tracked = self.is_tracked(stream);
        let (guess, offset) = self.guess(stream, events, tracked);
        match self
            .append_run_with(generation, &client, stream, events, guess, tracked)
            .await
        {
            Ok((done, appended)) => {
                self.succeeded();
                self.learn(stream, events, done, tracked, offset);
                Ok((done, appended))
            }
            Err(error) => Err(self.run_error(generation, stream, error)),
        }
    }

    /// The [`SinkError`] for a failed run of `stream`.
    pub(super) fn run_error(
        &self,
        generation: u64,
        stream: &str,
        error: RunError<'_>,
    ) -> SinkError {
        match error {
            RunError::Client(error, event) => {
                self.failed(generation, &error);
                sink_error(error, &format!("appending to `{stream}`"), event)
            }
            RunError::Diverged(message) => {
                SinkError::permanent(format!("appending to `{stream}`: {message}"))
            }
            RunError::Unsettled(event) => SinkError::transient(format!(
                "appending to `{stream}` (event {}, source position {}): the target stream \
                 kept changing while its replayed records were checked; is something else \
                 writing to it?",
                event.id, event.position
            )),
        }
    }

    /// Performs the actions of an [`AppendRun`] (the decisions are in
    /// `plan.rs`; this is only the I/O). Also says whether anything was
    /// appended.
    async fn append_run_with<'e>(
        &self,
        generation: u64,
        client: &Client,
        stream: &str,
        events: &[&'e Event],
        guess: Guess,
        tracked: bool,
    ) -> Result<(Done, bool), RunError<'e>> {
        let mut run = AppendRun::new(events, guess, stream.starts_with("$$"));
        let mut action = run.start();
        loop {
            let reply = match action {
                Action::Append {
                    from,
                    expected,
                    note,
                } => {
                    log_note(stream, events[from], note, tracked);
                    match self
                        .append_events(generation, client, stream, expected.into(), &events[from..])
                        .await
                    {
                        Ok((position, last)) => Reply::Appended { position, last },
                        Err(e) => refusal(e).map_err(|e| RunError::Client(e, events[from]))?,
                    }
                }
                Action::Done(done) => {
                    if done.deleted {
                        debug!(
                            stream,
                            "Target stream is tombstoned: records already written"
                        );
                    }
                    return Ok((done, run.appended()));
                }
                action => self.settle_action(client, stream, action, &run).await?,
            };
            action = run.step(reply);
        }
    }

    /// Performs a read of an [`AppendRun`], or turns its end in failure into
    /// the error. `action` is neither an append nor done.
    pub(super) async fn settle_action<'e>(
        &self,
        client: &Client,
        stream: &str,
        action: Action,
        run: &AppendRun<'_, 'e>,
    ) -> Result<Reply, RunError<'e>> {
        match action {
            Action::Read { revision, count } => {
                let read = (StreamFrom::Revision(revision), Direction::Forwards, count);
                Box::pin(self.read_reply(client, stream, read, run.current_event())).await
            }
            Action::SearchTail => {
                let read = (StreamFrom::End, Direction::Backwards, self.search_depth);
                match Box::pin(self.read_reply(client, stream, read, run.current_event())).await? {
                    // Records hidden (soft-deleted, truncated by `$tb` or
                    // `$maxCount`): none readable although the stream has
                    // some, or none below the first readable one. `$all`
                    // still holds them, and a replay may be among them.
                    Reply::Records(mut records)
                        if records.iter().map(|r| r.revision).min() != Some(0)
                            && records.len() < self.search_depth =>
                    {
                        let hidden = Box::pin(self.search_all(client, stream))
                            .await
                            .map_err(|e| RunError::Client(e, run.current_event()))?;
                        if let Reply::Records(hidden) = hidden {
                            let readable: std::collections::HashSet<u64> =
                                records.iter().map(|r| r.revision).collect();
                            records.extend(
                                hidden
                                    .into_iter()
                                    .filter(|r| !readable.contains(&r.revision)),
                            );
                        }
                        Ok(Reply::Records(records))
                    }
                    reply => Ok(reply),
                }
            }
            Action::Diverged(Divergence {
                index,
                found,
                revision,
            }) => {
                let event = run.event(index);
                Err(RunError::Diverged(format!(
                    "the target holds event {found} at revision {revision} where source \
                     event {} (source revision {}, position {}) belongs: the target \
                     stream is not a replica of the source",
                    event.id, event.revision, event.position,
                )))
            }
            Action::Unsettled { index } => Err(RunError::Unsettled(run.event(index))),
            Action::Append { .. } | Action::Done(_) => {
                unreachable!("appends and ends are the caller's")
            }
        }
    }

    async fn read_reply<'e>(
        &self,
        client: &Client,
        stream: &str,
        read: (StreamFrom, Direction, usize),
        event: &'e Event,
    ) -> Result<Reply, RunError<'e>> {
        match read_records(client, stream, read, self.request_timeout).await {
            Ok(records) => Ok(Reply::Records(records)),
            Err(eventstore::Error::ResourceDeleted) => Ok(Reply::Deleted),
            Err(e) => Err(RunError::Client(e, event)),
        }
    }

    /// The records of `stream` among the target's last records in `$all`
    /// (as many as the search depth), hidden ones included.
    async fn search_all(&self, client: &Client, stream: &str) -> Result<Reply, eventstore::Error> {
        let read = client.read(
            ReadOf::All(AllFrom::End),
            Direction::Backwards,
            self.search_depth,
            false,
        );
        let mut reader = within(self.request_timeout, read).await?;
        let mut records = Vec::new();
        while let Some(record) = within(self.request_timeout, reader.next()).await? {
            if record.stream == stream {
                records.push(target_record(record));
            }
        }
        Ok(Reply::Records(records))
    }

    pub(super) async fn tombstone(&self, event: &Event) -> Result<Option<Position>, SinkError> {
        let stream = event.target_stream();
        let (generation, client) = self.client()?;
        if self.revisions == RevisionMode::Tracked {
            // Appends to it will say it is tombstoned; nothing to remember.
            self.tracked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(stream);
        }
        // On the batch-append session's channel when there is one: no
        // delayed ACK (`wire::tombstone`), and the same node.
        let session = self.batch_session(generation).await;
        let answer = match &session {
            Some(session) => {
                within(
                    self.request_timeout,
                    crate::wire::tombstone::tombstone(session.channel(), stream, None),
                )
                .await
            }
            None => within(self.request_timeout, client.tombstone(stream)).await,
        };
        match answer {
            Ok(position) => {
                self.succeeded();
                Ok(position)
            }
            Err(eventstore::Error::ResourceDeleted) => Ok(None),
            Err(error) => {
                self.failed(generation, &error);
                Err(sink_error(error, &format!("tombstoning `{stream}`"), event))
            }
        }
    }
}

/// What a refused append tells an [`AppendRun`]; other errors are returned.
pub(super) fn refusal(error: eventstore::Error) -> Result<Reply, eventstore::Error> {
    match error {
        eventstore::Error::ResourceDeleted => Ok(Reply::Deleted),
        eventstore::Error::WrongExpectedVersion { current, .. } => Ok(Reply::WrongExpected {
            current: match current {
                CurrentRevision::Current(n) => Some(n),
                CurrentRevision::NoStream => None,
            },
        }),
        error => Err(error),
    }
}

impl From<Expected> for ExpectedRevision {
    fn from(expected: Expected) -> Self {
        match expected {
            Expected::NoStream => ExpectedRevision::NoStream,
            Expected::Exact(n) => ExpectedRevision::Exact(n),
        }
    }
}

/// Why an append run failed.
pub(super) enum RunError<'e> {
    /// The client failed on this event's run.
    Client(eventstore::Error, &'e Event),
    /// The target holds other records where the source's belong.
    Diverged(String),
    /// The target stream kept changing while the sink worked out what it
    /// already holds (someone else writes to it): worth a retry.
    Unsettled(&'e Event),
}

pub(super) fn log_note(stream: &str, event: &Event, note: Option<Note>, tracked: bool) {
    match note {
        None => {}
        Some(Note::Replayed { written }) => {
            debug!(stream, written, "Replay: appending the rest");
        }
        // Tracked streams have no revisions to keep; metadata streams keep
        // one record by default, so on a scavenged source this is routine.
        Some(Note::Renumbered { guessed, target }) if tracked || stream.starts_with("$$") => {
            debug!(
                stream,
                guessed,
                target_revision = target,
                "Appending after the target stream's last revision"
            );
        }
        Some(Note::Renumbered { target, .. }) => {
            warn!(
                stream,
                source_revision = event.revision,
                target_revision = target,
                "Source revisions do not start where the target stream ends (events \
                 removed by scavenging on the source?): appending after the target's last \
                 revision"
            );
        }
    }
}

/// Reads `stream` with `options`, with a deadline on the request and on each
/// record (not on the whole read: a long read that keeps moving is fine).
async fn read_records(
    client: &Client,
    stream: &str,
    (from, direction, max): (StreamFrom, Direction, usize),
    timeout: Duration,
) -> Result<Vec<TargetRecord>, eventstore::Error> {
    let mut records = Vec::new();
    let read = client.read(ReadOf::Stream(stream, from), direction, max, false);
    let mut reader = match within(timeout, read).await {
        Ok(reader) => reader,
        Err(eventstore::Error::ResourceNotFound) => return Ok(records),
        Err(e) => return Err(e),
    };
    loop {
        match within(timeout, reader.next()).await {
            Ok(Some(record)) => records.push(target_record(record)),
            Ok(None) => return Ok(records),
            Err(eventstore::Error::ResourceNotFound) => return Ok(records),
            Err(e) => return Err(e),
        }
    }
}

/// A record read back from the target, as the plan compares it.
fn target_record(record: Event) -> TargetRecord {
    TargetRecord {
        revision: record.revision,
        id: record.id,
        event_type: record.event_type,
        data: record.data,
        position: record.position,
    }
}
