//! The EventStoreDB [`Reader`]: pages through `$all`, then follows it live.

use std::collections::VecDeque;
use std::fmt;

use async_trait::async_trait;
use eventstore::{
    ClientSettings, ReadAllOptions, ResolvedEvent, StreamPosition, SubscribeToAllOptions,
    Subscription, SubscriptionEvent,
};
use futures::StreamExt;
use replicator_core::{ErrorKind, Event, EventStream, Position, Reader, ReaderError, StartFrom};
use tracing::{debug, info, warn};

use crate::classify::to_event;
use crate::connection::{backoff, error_kind, parse_settings, redact, ClientCell};

/// Configuration of an [`EsdbReader`].
#[derive(Clone, PartialEq, Eq)]
pub struct EsdbReaderConfig {
    /// Connection string of the source, e.g.
    /// `esdb://admin:changeit@source:2113?tls=false`.
    pub connection_string: String,
    /// How many records the first read asks for when starting at a seed
    /// (inclusive; at least 1). Catch-up itself streams through one
    /// subscription.
    pub page_size: usize,
    /// `true`: follow the source live once caught up. `false`: end the stream
    /// once caught up.
    pub run_continuously: bool,
}

impl EsdbReaderConfig {
    /// A configuration with pages of 1024 records (the C# replicator's
    /// default), running continuously.
    pub fn new(connection_string: impl Into<String>) -> Self {
        EsdbReaderConfig {
            connection_string: connection_string.into(),
            page_size: 1024,
            run_continuously: true,
        }
    }
}

impl fmt::Debug for EsdbReaderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsdbReaderConfig")
            .field("connection_string", &redact(&self.connection_string))
            .field("page_size", &self.page_size)
            .field("run_continuously", &self.run_continuously)
            .finish()
    }
}

/// Reads an EventStoreDB / KurrentDB source's `$all`.
///
/// Catches up and then follows the source with one catch-up subscription to
/// `$all`: no polling, and no request per page. (With the `eventstore` 4.0.0
/// client every request costs a delayed-ACK round of about 40 ms on Linux, as
/// the client does not set `TCP_NODELAY`; a subscription streams catch-up at
/// the server's pace instead.) An inclusive start ([`StartFrom::At`]) first
/// reads up to [`EsdbReaderConfig::page_size`] records from that position,
/// since a subscription from a position is exclusive. Without
/// `run_continuously` the stream ends at the `$all` head read when catch-up
/// begins. Every record is handed on, classified by [`crate::classify()`];
/// positions strictly increase.
///
/// When the source goes away (restart, dropped connection, leader change), the
/// reader logs a warning, waits with exponential backoff (100 ms to 5 s),
/// builds a new client and resumes strictly after the last record it handed
/// on: no gap, no repeat. Only permanent errors (access denied, a request the
/// server rejects) end the stream with an `Err`.
pub struct EsdbReader {
    settings: ClientSettings,
    config: EsdbReaderConfig,
}

impl fmt::Debug for EsdbReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsdbReader")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EsdbReader {
    /// Creates the reader. Nothing connects until [`Reader::read`] is polled.
    ///
    /// # Errors
    /// A permanent [`ReaderError`] when the connection string does not parse
    /// or `page_size` is 0.
    pub fn new(config: EsdbReaderConfig) -> Result<Self, ReaderError> {
        let settings = parse_settings(&config.connection_string)
            .map_err(|e| ReaderError::permanent(format!("reader: {e}")))?;
        if config.page_size == 0 {
            return Err(ReaderError::permanent(
                "reader: pageSize must be at least 1",
            ));
        }
        Ok(EsdbReader { settings, config })
    }
}

#[async_trait]
impl Reader for EsdbReader {
    async fn read(&mut self, from: StartFrom) -> Result<EventStream, ReaderError> {
        let (last, floor) = match from {
            StartFrom::Beginning => (None, None),
            StartFrom::After(position) => (Some(position), None),
            StartFrom::At(position) => (None, Some(position)),
        };
        debug!(%from, "Reading the source $all");
        let state = ReadState {
            client: ClientCell::new(self.settings.clone()),
            page_size: self.config.page_size,
            run_continuously: self.config.run_continuously,
            last,
            floor,
            pending: VecDeque::new(),
            phase: Phase::CatchUp,
            failures: 0,
            end: None,
        };
        // The subscription lives inside the stream's state, so only dropping
        // the whole stream drops it: a caller cancelling one `next()` does not
        // (the client's own `next` is not cancel-safe).
        Ok(futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })
        .boxed())
    }
}

enum Phase {
    /// Setting up: the inclusive first read, the head position, the
    /// subscription.
    CatchUp,
    /// Catching up, then following `$all`, with a subscription.
    Live(Box<Subscription>),
    /// Caught up (not running continuously) or failed permanently.
    Done,
}

struct ReadState {
    client: ClientCell,
    page_size: usize,
    run_continuously: bool,
    /// The last position handed on: everything up to it is done.
    last: Option<Position>,
    /// For an inclusive start: records before it are not handed on.
    floor: Option<Position>,
    /// Records read and not yet handed on, in order.
    pending: VecDeque<Event>,
    phase: Phase,
    /// Consecutive failures, for the backoff.
    failures: u32,
    /// Without `run_continuously`: the `$all` head when catching up began
    /// (`Some(None)`: `$all` was empty); reading ends there.
    end: Option<Option<Position>>,
}

impl ReadState {
    async fn next(&mut self) -> Option<Result<Event, ReaderError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if matches!(self.phase, Phase::Done) {
                return None;
            }
            let (generation, client) = match self.client.get() {
                Ok(client) => client,
                Err(error) => match self.failed(0, error).await {
                    Some(error) => return Some(Err(error)),
                    None => continue,
                },
            };
            match &mut self.phase {
                Phase::Done => return None,
                Phase::CatchUp => match self.catch_up(&client).await {
                    Ok(()) => self.failures = 0,
                    Err(error) => {
                        if let Some(error) = self.failed(generation, error).await {
                            return Some(Err(error));
                        }
                    }
                },
                Phase::Live(subscription) => match subscription.next_subscription_event().await {
                    Ok(SubscriptionEvent::EventAppeared(resolved)) => {
                        self.failures = 0;
                        self.accept(resolved);
                        if self.reached_end() {
                            info!(position = %shown(self.last), "Caught up with the source");
                            self.phase = Phase::Done;
                        }
                    }
                    Ok(SubscriptionEvent::CaughtUp) => {
                        info!(position = %shown(self.last), "Caught up; following the source live");
                    }
                    Ok(other) => debug!(?other, "Subscription notice"),
                    Err(error) => {
                        if let Some(error) = self.failed(generation, error).await {
                            return Some(Err(error));
                        }
                    }
                },
            }
        }
    }

    /// Moves out of [`Phase::CatchUp`]: reads from an inclusive start first,
    /// ends when there is nothing to read without `run_continuously`, and
    /// otherwise subscribes strictly after the last record handed on.
    async fn catch_up(&mut self, client: &eventstore::Client) -> Result<(), eventstore::Error> {
        if self.last.is_none() && self.floor.is_some() {
            self.read_page(client).await?;
        }
        if !self.run_continuously {
            if self.end.is_none() {
                self.end = Some(head(client).await?);
            }
            if self.reached_end() {
                info!(position = %shown(self.last), "Caught up with the source");
                self.phase = Phase::Done;
                return Ok(());
            }
        }
        if let Some(from) = Self::live_start(self.last, self.floor, client).await? {
            debug!(position = %shown(self.last), "Subscribing to $all");
            let options = SubscribeToAllOptions::default().position(from);
            let subscription = client.subscribe_to_all(&options).await;
            self.phase = Phase::Live(Box::new(subscription));
        }
        // Otherwise records appeared at or after the inclusive start
        // meanwhile: the next round reads them first.
        Ok(())
    }

    /// Whether reading is over: not running continuously and the head of
    /// `$all` seen when catching up began has been handed on.
    fn reached_end(&self) -> bool {
        match self.end {
            Some(None) => true,
            Some(Some(end)) => self.last.is_some_and(|last| last >= end),
            None => false,
        }
    }

    /// Reads one page after `last` (or from `floor`, or the start).
    async fn read_page(&mut self, client: &eventstore::Client) -> Result<(), eventstore::Error> {
        let (from, requested) = match (self.last, self.floor) {
            // `read_all` is inclusive: ask for one more, the record at `last`
            // comes back and is dropped.
            (Some(last), _) => (
                StreamPosition::Position(to_client(last)),
                self.page_size.saturating_add(1),
            ),
            (None, Some(floor)) => (StreamPosition::Position(to_client(floor)), self.page_size),
            (None, None) => (StreamPosition::Start, self.page_size),
        };
        let options = ReadAllOptions::default()
            .forwards()
            .position(from)
            .max_count(requested);
        let mut stream = client.read_all(&options).await?;
        let mut received = 0;
        while let Some(resolved) = stream.next().await? {
            received += 1;
            self.accept(resolved);
        }
        debug!(received, requested, last = %shown(self.last), "Read a page of $all");
        Ok(())
    }

    /// Where the live subscription starts, strictly after `last`; `None` when
    /// records exist at or after the inclusive start and catching up must
    /// read them first.
    ///
    /// Takes no `&self`: the state holds a subscription, which is not `Sync`.
    async fn live_start(
        last: Option<Position>,
        floor: Option<Position>,
        client: &eventstore::Client,
    ) -> Result<Option<StreamPosition<eventstore::Position>>, eventstore::Error> {
        match (last, floor) {
            (Some(last), _) => Ok(Some(StreamPosition::Position(to_client(last)))),
            (None, None) => Ok(Some(StreamPosition::Start)),
            // Nothing at or after an inclusive start yet. A subscription from
            // a position is exclusive and would miss a record written exactly
            // there: start after the last record before it instead.
            (None, Some(floor)) => Ok(match head(client).await? {
                None => Some(StreamPosition::Start),
                Some(last) if last >= floor => None,
                Some(last) => Some(StreamPosition::Position(to_client(last))),
            }),
        }
    }

    /// Queues a record unless it is at or before the last one handed on (a
    /// reconnect or the inclusive read repeats it) or before the floor.
    fn accept(&mut self, resolved: ResolvedEvent) {
        let Some(record) = resolved.link.or(resolved.event) else {
            return;
        };
        let event = to_event(record);
        if self.last.is_some_and(|last| event.position <= last)
            || self.floor.is_some_and(|floor| event.position < floor)
        {
            return;
        }
        self.last = Some(event.position);
        self.pending.push_back(event);
    }

    /// Handles a failed call: a permanent error ends the stream (returned); a
    /// transient one drops the client, waits and goes back to catching up
    /// from `last`.
    async fn failed(&mut self, generation: u64, error: eventstore::Error) -> Option<ReaderError> {
        if error_kind(&error) == ErrorKind::Permanent {
            self.phase = Phase::Done;
            return Some(
                ReaderError::permanent(format!(
                    "reading the source $all after {} failed: {error}",
                    shown(self.last)
                ))
                .with_source(error),
            );
        }
        let delay = backoff(self.failures);
        self.failures = self.failures.saturating_add(1);
        warn!(
            %error,
            attempt = self.failures,
            retry_in = ?delay,
            last = %shown(self.last),
            "Source unavailable; reconnecting"
        );
        // Dropping the subscription before the client ends the stream cleanly.
        self.phase = Phase::CatchUp;
        // A client whose first connection failed never recovers: always start
        // afresh, it costs one connection.
        self.client.discard(generation);
        tokio::time::sleep(delay).await;
        None
    }
}

/// A position for the logs: `C:…/P:…`, or `none`.
fn shown(position: Option<Position>) -> String {
    position.map_or_else(|| "none".to_owned(), |p| p.to_string())
}

/// The position of the last record in `$all`, if any.
async fn head(client: &eventstore::Client) -> Result<Option<Position>, eventstore::Error> {
    let options = ReadAllOptions::default()
        .backwards()
        .position(StreamPosition::End)
        .max_count(1);
    let mut read = client.read_all(&options).await?;
    Ok(read
        .next()
        .await?
        .and_then(|resolved| resolved.link.or(resolved.event))
        .map(|record| Position {
            commit: record.position.commit,
            prepare: record.position.prepare,
        }))
}

fn to_client(position: Position) -> eventstore::Position {
    eventstore::Position {
        commit: position.commit,
        prepare: position.prepare,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configuration_is_named() {
        let mut config = EsdbReaderConfig::new("esdb://localhost:2113?tls=false");
        config.page_size = 0;
        let err = EsdbReader::new(config).unwrap_err();
        assert!(err.message().contains("pageSize"), "{err}");
        let err = EsdbReader::new(EsdbReaderConfig::new("")).unwrap_err();
        assert!(err.message().contains("empty"), "{err}");
    }
}
