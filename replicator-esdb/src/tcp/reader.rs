//! The [`TcpReader`]: `$all` of an EventStoreDB v5 node, page by page.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use prost::Message;
use replicator_core::health::{Component, HealthReporter};
use replicator_core::retry::Backoff;
use replicator_core::secret::ConnectionString;
use replicator_core::{
    ContentType, ErrorKind, Event, EventStream, HeadProbe, Position, Reader, ReaderError, StartFrom,
};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::connection::{command, Connection, TcpError};
use super::proto::{
    as_wire, position, read_all_result, EventRecord, ReadAllEvents, ReadAllEventsCompleted,
};
use super::settings::TcpSettings;
use crate::classify::classify;

/// The most records v5 serves in one `$all` page (`MaxPageSize`).
const MAX_PAGE: usize = 4096;
/// .NET ticks (100 ns) from 0001-01-01 to the Unix epoch.
const UNIX_EPOCH_TICKS: i64 = 621_355_968_000_000_000;

/// Configuration of a [`TcpReader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpReaderConfig {
    /// The .NET ClientAPI connection string of the source, e.g.
    /// `ConnectTo=tcp://admin:changeit@source:1113; HeartBeatTimeout=1500`
    /// (see `docs/tcp-protocol.md`).
    pub connection_string: ConnectionString,
    /// Records asked for per `$all` page (1 to 4096; the C# replicator's
    /// default is 1024).
    pub page_size: usize,
    /// `true`: keep following the source once caught up. `false`: end at the
    /// first empty page.
    pub run_continuously: bool,
    /// Once caught up, the longest wait after an empty page before asking
    /// again when the live subscription brings no news (500 ms by default).
    pub poll_interval: Duration,
}

impl TcpReaderConfig {
    /// Pages of 1024 records, running continuously, polling every 500 ms once
    /// caught up.
    pub fn new(connection_string: impl Into<ConnectionString>) -> Self {
        TcpReaderConfig {
            connection_string: connection_string.into(),
            page_size: 1024,
            run_continuously: true,
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// Reads `$all` of an EventStoreDB v5 node over the legacy TCP protocol, as
/// the C# replicator's `tcp` reader does: ReadAllEventsForward pages of
/// [`TcpReaderConfig::page_size`] records, links not resolved, each page
/// starting where the node said the last one ended.
///
/// Every record is classified with [`crate::classify()`] exactly as the gRPC
/// [`crate::EsdbReader`] classifies it, so links, system events, stream
/// metadata, soft deletes and tombstones reach the sink the same way.
/// Event ids arrive in .NET GUID byte order and are handed on as the UUIDs
/// the .NET client shows. A checkpoint ([`StartFrom::After`]) is exclusive, a
/// seed ([`StartFrom::At`]) inclusive; positions strictly increase.
///
/// # Live
/// Without `run_continuously` the stream ends at the first empty page.
/// Otherwise, once an empty page says the reader is caught up, it subscribes
/// to `$all` on the same connection and reads the next page as soon as the
/// subscription is confirmed or says an event appeared, and at the latest
/// after [`TcpReaderConfig::poll_interval`]. The subscription's events are
/// only that signal: every record still comes from a page, each from where
/// the last ended, so a late, lost or refused subscription costs latency,
/// never a gap or a repeat (reading again once it is confirmed covers what
/// was written before it started). While live, records travel twice (the
/// subscription and the page).
///
/// # Connection and outages
/// The connection authenticates when the connection string has credentials,
/// identifies as a version-1 client and answers the node's heartbeats. After
/// `HeartbeatInterval` (750 ms) without a frame it sends its own, and a node
/// that then stays silent for `HeartbeatTimeout` (1500 ms) is given up on;
/// each request has `OperationTimeout` (7 s). Those, a dropped connection
/// and NotHandled answers are transient: the reader reports them to its
/// [`HealthReporter`], waits with the workspace's [`Backoff`], reconnects and
/// resumes where the last page ended: no gap, no repeat. Wrong credentials,
/// access denied, a bad request or a read error end the stream with a
/// permanent error. A page over the 64 MiB frame limit halves the page size
/// (as the C# reader does).
pub struct TcpReader {
    settings: TcpSettings,
    config: TcpReaderConfig,
    health: HealthReporter,
    probe: Arc<TcpHeadProbe>,
}

impl fmt::Debug for TcpReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpReader")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TcpReader {
    /// Creates the reader. Nothing connects until [`Reader::read`] is polled
    /// or the head probe asked.
    ///
    /// # Errors
    /// A permanent [`ReaderError`] naming the setting when the connection
    /// string cannot be used, or when `page_size` is not within 1 to 4096.
    pub fn new(config: TcpReaderConfig) -> Result<Self, ReaderError> {
        let settings = TcpSettings::parse(&config.connection_string)
            .map_err(|e| ReaderError::permanent(format!("reader: {e}")))?;
        if !(1..=MAX_PAGE).contains(&config.page_size) {
            return Err(ReaderError::permanent(format!(
                "reader: pageSize must be within 1 to {MAX_PAGE}, not {}",
                config.page_size
            )));
        }
        Ok(TcpReader {
            probe: Arc::new(TcpHeadProbe {
                settings: settings.clone(),
                connection: Mutex::new(None),
            }),
            settings,
            config,
            health: HealthReporter::new(Component::Source),
        })
    }
}

#[async_trait]
impl Reader for TcpReader {
    async fn read(&mut self, from: StartFrom) -> Result<EventStream, ReaderError> {
        let (cursor, last, floor) = match from {
            StartFrom::Beginning => (Position::START, None, None),
            StartFrom::After(p) => (p, Some(p), None),
            StartFrom::At(p) => (p, None, Some(p)),
        };
        debug!(%from, "Reading the source $all over TCP");
        let state = ReadState {
            settings: self.settings.clone(),
            connection: None,
            page_size: self.config.page_size,
            run_continuously: self.config.run_continuously,
            poll_interval: self.config.poll_interval,
            health: self.health.clone(),
            failing: false,
            backoff: Backoff::default(),
            cursor,
            last,
            floor,
            pending: VecDeque::new(),
            open: Vec::new(),
            caught_up: false,
            done: false,
        };
        Ok(
            futures::stream::unfold(Box::new(state), |mut state| async move {
                let item = state.next().await?;
                Some((item, state))
            })
            .boxed(),
        )
    }

    fn report_health_to(&mut self, health: HealthReporter) {
        self.health = health;
    }

    fn head_probe(&self) -> Option<Arc<dyn HeadProbe>> {
        Some(Arc::clone(&self.probe) as Arc<dyn HeadProbe>)
    }
}

struct ReadState {
    settings: TcpSettings,
    connection: Option<Connection>,
    page_size: usize,
    run_continuously: bool,
    poll_interval: Duration,
    health: HealthReporter,
    failing: bool,
    backoff: Backoff,
    /// Where the next page starts (inclusive): the node's `next` position.
    cursor: Position,
    /// The last record handed on; records at or before it are dropped.
    last: Option<Position>,
    /// An inclusive start: records before it are dropped.
    floor: Option<Position>,
    /// Records ready to hand on.
    pending: VecDeque<Event>,
    /// The records of the last commit read, held until the commit is known
    /// to be whole (a later commit read, or the end of `$all`), so that its
    /// records are handed on together, marked [`Event::more_in_commit`].
    open: Vec<Event>,
    caught_up: bool,
    done: bool,
}

impl ReadState {
    async fn next(&mut self) -> Option<Result<Event, ReaderError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let outcome = match self.read_page().await {
                Ok(true) => Ok(()),
                Ok(false) if !self.run_continuously => {
                    info!(position = %shown(self.last), "Caught up with the source");
                    self.done = true;
                    Ok(())
                }
                Ok(false) => {
                    if !self.caught_up {
                        self.caught_up = true;
                        info!(position = %shown(self.last), "Caught up; polling the source");
                    }
                    let until = Instant::now() + self.poll_interval;
                    match self.connection.as_mut() {
                        Some(connection) => match connection.subscribe().await {
                            Ok(()) => connection.wait_for_news(until).await,
                            Err(error) => Err(error),
                        },
                        None => Ok(()),
                    }
                }
                Err(error) => Err(error),
            };
            if let Err(error) = outcome {
                if let Some(error) = self.failed(error).await {
                    return Some(Err(error));
                }
            }
        }
    }

    /// Reads the page at the cursor; `false` when it was empty (caught up).
    ///
    /// A kept connection that fails transiently is replaced at once, once,
    /// without a report: while the pipeline holds the reader back
    /// (backpressure) nobody reads the connection, and the node closes a
    /// connection that misses its heartbeats. A new one that fails is a
    /// failure.
    async fn read_page(&mut self) -> Result<bool, TcpError> {
        let reused = self.connection.is_some();
        match self.read_page_once().await {
            Err(error)
                if reused
                    && error.kind() == ErrorKind::Transient
                    && !matches!(error, TcpError::FrameTooLarge(_)) =>
            {
                debug!(%error, "The kept connection to the source failed; reconnecting");
                self.connection = None;
                self.read_page_once().await
            }
            outcome => outcome,
        }
    }

    async fn read_page_once(&mut self) -> Result<bool, TcpError> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => self
                .connection
                .insert(Connection::open(&self.settings).await?),
        };
        let request = ReadAllEvents {
            commit_position: as_wire(self.cursor.commit),
            prepare_position: as_wire(self.cursor.prepare),
            max_count: i32::try_from(self.page_size).unwrap_or(i32::MAX),
            resolve_link_tos: false,
            require_master: connection.require_master(),
        };
        let frame = connection
            .request(
                command::READ_ALL_FORWARD,
                request.encode_to_vec(),
                command::READ_ALL_FORWARD_COMPLETED,
                "ReadAllEventsForward",
            )
            .await?;
        let page = ReadAllEventsCompleted::decode(frame.body)
            .map_err(|e| TcpError::Protocol(format!("an undecodable $all page: {e}")))?;
        check_result(&page, connection)?;
        let received = page.events.len();
        for resolved in page.events {
            let position = position(resolved.commit_position, resolved.prepare_position)?;
            // Links are not resolved: `event` is the record in $all, a link
            // record for a link (as the gRPC reader takes `link.or(event)`).
            let Some(record) = resolved.link.or(resolved.event) else {
                continue;
            };
            let event = to_event(record, position)?;
            self.accept(event);
        }
        // A commit is whole once a later one is read, or at the end of
        // `$all`: v5 makes a commit's records visible at once. A record that
        // is a commit of its own (commit = prepare) is whole when read.
        if received == 0
            || self
                .open
                .last()
                .is_some_and(|e| e.position.commit == e.position.prepare)
        {
            self.close_commit();
        }
        let next = position(page.next_commit_position, page.next_prepare_position)?;
        if received > 0 && next <= self.cursor {
            return Err(TcpError::Protocol(format!(
                "a page from {} ending at {next}",
                self.cursor
            )));
        }
        self.cursor = next;
        self.recovered();
        debug!(received, next = %next, last = %shown(self.last), "Read a page of $all");
        Ok(received > 0)
    }

    /// Takes a record unless it is at or before the last one taken or
    /// before the inclusive start. It joins the open commit when it shares
    /// its commit position; otherwise that commit is whole and handed on.
    fn accept(&mut self, event: Event) {
        if self.last.is_some_and(|last| event.position <= last)
            || self.floor.is_some_and(|floor| event.position < floor)
        {
            return;
        }
        self.last = Some(event.position);
        match self.open.last_mut() {
            Some(previous) if previous.position.commit == event.position.commit => {
                previous.more_in_commit = true;
            }
            _ => self.close_commit(),
        }
        self.open.push(event);
    }

    /// Hands the open commit's records on.
    fn close_commit(&mut self) {
        self.pending.extend(self.open.drain(..));
    }

    fn recovered(&mut self) {
        if self.failing {
            self.failing = false;
            self.health.success();
        }
        self.backoff.reset();
    }

    /// A permanent error ends the stream (returned); a transient one is
    /// reported, the connection dropped, and the next page read after a
    /// backoff from the same cursor.
    async fn failed(&mut self, error: TcpError) -> Option<ReaderError> {
        self.connection = None;
        if let TcpError::FrameTooLarge(bytes) = error {
            let halved = (self.page_size / 2).max(1);
            warn!(
                bytes,
                page_size = halved,
                "A page was too large; halving the page size"
            );
            if self.page_size > 1 {
                self.page_size = halved;
                return None;
            }
        }
        if error.kind() == ErrorKind::Permanent {
            self.done = true;
            return Some(
                ReaderError::permanent(format!(
                    "reading the source $all over TCP after {} failed: {error}",
                    shown(self.last)
                ))
                .with_source(error),
            );
        }
        let delay = self.backoff.next_delay();
        debug!(
            %error,
            attempt = self.backoff.attempts(),
            retry_in = ?delay,
            last = %shown(self.last),
            "Source unavailable; reconnecting"
        );
        self.health.failure(&format_args!(
            "{error} (resuming after {})",
            shown(self.last)
        ));
        self.failing = true;
        tokio::time::sleep(delay).await;
        None
    }
}

fn check_result(page: &ReadAllEventsCompleted, connection: &Connection) -> Result<(), TcpError> {
    match page.result.unwrap_or(read_all_result::SUCCESS) {
        read_all_result::SUCCESS | read_all_result::NOT_MODIFIED => Ok(()),
        read_all_result::ACCESS_DENIED => Err(TcpError::AccessDenied {
            user: connection.user(),
        }),
        read_all_result::ERROR => Err(TcpError::Server(
            page.error.clone().unwrap_or_else(|| "(no text)".into()),
        )),
        other => Err(TcpError::Protocol(format!("read result {other}"))),
    }
}

/// A record of a `$all` page as an [`Event`], classified as the gRPC reader
/// classifies it.
fn to_event(record: EventRecord, position: Position) -> Result<Event, TcpError> {
    let id = record.id()?;
    let revision = record.revision()?;
    let kind = classify(&record.event_stream_id, &record.event_type, &record.data);
    Ok(Event {
        id,
        kind,
        revision,
        content_type: if record.data_content_type == 1 {
            ContentType::Json
        } else {
            ContentType::Binary
        },
        created: created(record.created, record.created_epoch),
        position,
        stream: record.event_stream_id,
        event_type: record.event_type,
        data: record.data,
        metadata: record.metadata.unwrap_or_default(),
        more_in_commit: false,
    })
}

/// When the event was created: `created` (.NET `DateTime.ToBinary()`, 100 ns
/// ticks) when its kind is UTC or unspecified, else `created_epoch`
/// (milliseconds), else the epoch.
fn created(binary: Option<i64>, epoch_ms: Option<i64>) -> SystemTime {
    const KIND_MASK: i64 = 0b11 << 62;
    const KIND_UTC: i64 = 0b01 << 62;
    if let Some(binary) = binary.filter(|b| b & KIND_MASK == KIND_UTC || b & KIND_MASK == 0) {
        let ticks = (binary & !KIND_MASK) - UNIX_EPOCH_TICKS;
        if let Ok(ticks) = u64::try_from(ticks) {
            return SystemTime::UNIX_EPOCH
                + Duration::from_secs(ticks / 10_000_000)
                + Duration::from_nanos(ticks % 10_000_000 * 100);
        }
    }
    match epoch_ms.and_then(|ms| u64::try_from(ms).ok()) {
        Some(ms) => SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
        None => SystemTime::UNIX_EPOCH,
    }
}

/// Asks the node where its `$all` ends: one record read backwards from the
/// end, on a connection of its own, kept between asks.
struct TcpHeadProbe {
    settings: TcpSettings,
    connection: Mutex<Option<Connection>>,
}

impl TcpHeadProbe {
    /// Asks on the kept connection; when that fails transiently, once more on
    /// a new one (a kept connection may have been closed while idle: the
    /// node closes connections that do not answer its heartbeats).
    async fn ask(&self) -> Result<Option<Position>, TcpError> {
        let mut slot = self.connection.lock().await;
        let mut retried = false;
        loop {
            let reused = slot.is_some();
            let connection = match &mut *slot {
                Some(connection) => connection,
                None => slot.insert(Connection::open(&self.settings).await?),
            };
            match Self::ask_on(connection).await {
                Ok(head) => return Ok(head),
                Err(error) => {
                    *slot = None;
                    if reused && !retried && error.kind() == ErrorKind::Transient {
                        retried = true;
                        continue;
                    }
                    return Err(error);
                }
            }
        }
    }

    async fn ask_on(connection: &mut Connection) -> Result<Option<Position>, TcpError> {
        let request = ReadAllEvents {
            commit_position: -1,
            prepare_position: -1,
            max_count: 1,
            resolve_link_tos: false,
            require_master: connection.require_master(),
        };
        let frame = connection
            .request(
                command::READ_ALL_BACKWARD,
                request.encode_to_vec(),
                command::READ_ALL_BACKWARD_COMPLETED,
                "ReadAllEventsBackward",
            )
            .await?;
        let page = ReadAllEventsCompleted::decode(frame.body)
            .map_err(|e| TcpError::Protocol(format!("an undecodable $all page: {e}")))?;
        check_result(&page, connection)?;
        page.events
            .first()
            .map(|e| position(e.commit_position, e.prepare_position))
            .transpose()
    }
}

#[async_trait]
impl HeadProbe for TcpHeadProbe {
    async fn head(&self) -> Result<Option<Position>, ReaderError> {
        self.ask().await.map_err(|error| {
            let message = format!("asking the source where its $all ends failed: {error}");
            match error.kind() {
                ErrorKind::Transient => ReaderError::transient(message),
                ErrorKind::Permanent => ReaderError::permanent(message),
            }
            .with_source(error)
        })
    }
}

/// A position for the logs: `C:…/P:…`, or `none`.
fn shown(position: Option<Position>) -> String {
    position.map_or_else(|| "none".to_owned(), |p| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_is_read_from_dotnet_ticks_or_milliseconds() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_700);
        let ticks = 17_000_000_001_234_567 + UNIX_EPOCH_TICKS;
        assert_eq!(created(Some(ticks | (1 << 62)), None), at);
        assert_eq!(created(Some(ticks), Some(1)), at);
        // A local-time kind is not trusted: the milliseconds are.
        assert_eq!(
            created(Some(ticks | (0b10 << 62)), Some(1_700_000_000_123)),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
        assert_eq!(created(None, None), SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn ids_are_read_in_dotnet_order() {
        let record = crate::tcp::proto::sample_record();
        let event = to_event(record, Position::at(7)).unwrap();
        assert_eq!(event.id.to_string(), "3cd53ad8-54d3-4f4a-b116-1f09957af330");
        assert_eq!(event.content_type, ContentType::Json);
        assert_eq!(event.revision, 3);
    }

    #[test]
    fn bad_configuration_is_named() {
        let mut config = TcpReaderConfig::new("ConnectTo=tcp://localhost:1113");
        config.page_size = 4097;
        let err = TcpReader::new(config).unwrap_err();
        assert!(err.message().contains("pageSize"), "{err}");
        let err = TcpReader::new(TcpReaderConfig::new("ConnectTo=tcp://h:1; Foo=1")).unwrap_err();
        assert!(err.message().contains("`Foo`"), "{err}");
    }
}
