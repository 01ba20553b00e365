//! The EventStoreDB [`Reader`]: one catch-up subscription to `$all`, then live.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventstore::{ClientSettings, Endpoint};
use futures::StreamExt;
use replicator_core::health::{short, Component, HealthReporter};
use replicator_core::retry::Backoff;
use replicator_core::secret::ConnectionString;
use replicator_core::{
    ErrorKind, Event, EventStream, HeadProbe, Position, Reader, ReaderError, StartFrom,
};
use tokio::time::{Instant, Sleep};
use tracing::{debug, info};

use crate::cluster::{self, head, within, AllFrom, Direction};
use crate::connection::{describe, error_kind, is_refused_token, ClientCell, REQUEST_TIMEOUT};
use crate::wire::channel::WireChannel;
use crate::wire::client::{GrpcClient, ReadOf};
use crate::wire::read::{AllSubscription, ReadItem};
use crate::wire::token::BearerToken;

/// Configuration of an [`EsdbReader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsdbReaderConfig {
    /// Connection string of the source, e.g.
    /// `esdb://admin:changeit@source:2113?tls=false` (printed without its
    /// password).
    pub connection_string: ConnectionString,
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
    pub fn new(connection_string: impl Into<ConnectionString>) -> Self {
        EsdbReaderConfig {
            connection_string: connection_string.into(),
            page_size: 1024,
            run_continuously: true,
        }
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
/// # Outages
/// When the source goes away (restart, dropped connection, leader change), the
/// reader waits with the workspace's [`Backoff`] (100 ms doubling to 30 s,
/// jittered), builds a new client and resumes strictly after the last record
/// it handed on: no gap, no repeat. Each failed attempt is reported to the
/// source's [`HealthReporter`] (see [`Reader::report_health_to`]), which logs
/// a lasting outage once, then once a minute; the first record or
/// confirmation after it reports the source healthy again. Only permanent
/// errors (access denied, a request the server rejects) end the stream with
/// an `Err`.
///
/// # Deadlines: a hung source is noticed
/// Every request has a deadline ([`EsdbReader::with_request_timeout`], 10 s by
/// default): a read, each page of it, the set-up of the subscription up to the
/// server's confirmation, a head probe. A live subscription may rightly stay
/// silent for hours, so it has no deadline; two things notice one that hangs:
/// - HTTP/2 keepalive on the subscription's channel (the `wire` module, set
///   from the connection string as the `eventstore` client sets its own): a
///   ping every `keepAliveInterval` (10 s) while a request is open, the
///   connection closed
///   when no answer comes within `keepAliveTimeout` (10 s). A frozen server or
///   a partition without a reset ends the subscription in about 20 s. The
///   connection string can raise both or turn them off (`-1`), not lower them.
/// - A watchdog of the reader's own: when the subscription has delivered
///   nothing for two request timeouts in a row, it asks the source for its
///   `$all` head on a separate connection. A source that does not answer, or
///   whose `$all` went on past what the subscription delivered at both checks,
///   means the subscription hung (a server that still answers pings but no
///   longer serves it): the reader reconnects and resumes.
///
/// # Head
/// [`Reader::head_probe`] gives the pipeline a probe that reads `$all`
/// backwards, one record, on a client of its own, so it never touches the
/// subscription's connection.
pub struct EsdbReader {
    settings: ClientSettings,
    token: Option<BearerToken>,
    config: EsdbReaderConfig,
    request_timeout: Duration,
    health: HealthReporter,
    probe: Arc<EsdbHeadProbe>,
}

impl fmt::Debug for EsdbReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsdbReader")
            .field("config", &self.config)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl EsdbReader {
    /// Creates the reader. Nothing connects until [`Reader::read`] is polled
    /// or its head probe is asked.
    ///
    /// # Errors
    /// A permanent [`ReaderError`] when the connection string does not parse
    /// or `page_size` is 0.
    pub fn new(config: EsdbReaderConfig) -> Result<Self, ReaderError> {
        let settings = cluster::settings(&config.connection_string)
            .map_err(|e| ReaderError::permanent(format!("reader: {e}")))?;
        if config.page_size == 0 {
            return Err(ReaderError::permanent(
                "reader: pageSize must be at least 1",
            ));
        }
        Ok(EsdbReader {
            probe: Arc::new(EsdbHeadProbe::new(settings.clone(), None, REQUEST_TIMEOUT)),
            settings,
            token: None,
            config,
            request_timeout: REQUEST_TIMEOUT,
            health: HealthReporter::new(Component::Source),
        })
    }

    /// Sets the deadline of each request to the source (10 s by default; at
    /// least 1 ms), which is also the quiet period after which the watchdog
    /// checks a silent subscription. See [`EsdbReader`].
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout.max(Duration::from_millis(1));
        self.probe = Arc::new(EsdbHeadProbe::new(
            self.settings.clone(),
            self.token.clone(),
            self.request_timeout,
        ));
        self
    }

    /// Authenticates every call to the source with `token` (when given),
    /// `authorization: Bearer`, instead of the connection string's
    /// credentials; a token file is read again whenever it changes. A token
    /// refused at start-up is a permanent error; refused later (expired), the
    /// source is reported unhealthy and the reader retries, with the file's
    /// new token once it is there.
    pub fn with_bearer_token(mut self, token: Option<BearerToken>) -> Self {
        self.token = token;
        self.probe = Arc::new(EsdbHeadProbe::new(
            self.settings.clone(),
            self.token.clone(),
            self.request_timeout,
        ));
        self
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
        let mut client = ClientCell::new(self.settings.clone());
        client.set_token(self.token.clone());
        let state = ReadState {
            client,
            wire: None,
            leader: None,
            page_size: self.config.page_size,
            run_continuously: self.config.run_continuously,
            request_timeout: self.request_timeout,
            health: self.health.clone(),
            failing: false,
            probe: Arc::clone(&self.probe),
            last,
            floor,
            pending: VecDeque::new(),
            phase: Phase::CatchUp,
            backoff: Backoff::default(),
            watchdog: Watchdog::new(self.request_timeout),
            end: None,
        };
        // The subscription lives inside the stream's state, so only dropping
        // the whole stream drops it: a caller cancelling one `next()` does not
        // (the client's own `next` is not cancel-safe).
        // Boxed, and the rare steps of `next` boxed inside it: the stream
        // moves its state and builds a `next` future for every record, so
        // both are kept small.
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

/// Asks the source where its `$all` ends: one record read backwards from the
/// end, on a client of its own, with a deadline.
struct EsdbHeadProbe {
    client: ClientCell,
    timeout: Duration,
    /// Whether the source ever answered: a bearer token refused before is
    /// refused from the start (permanent), after it has expired (transient).
    answered: std::sync::atomic::AtomicBool,
}

impl EsdbHeadProbe {
    fn new(settings: ClientSettings, token: Option<BearerToken>, timeout: Duration) -> Self {
        let mut client = ClientCell::new(settings);
        client.set_token(token);
        EsdbHeadProbe {
            client,
            timeout,
            answered: std::sync::atomic::AtomicBool::new(false),
        }
    }

    async fn ask(&self) -> Result<Option<Position>, eventstore::Error> {
        let (generation, client) = self.client.get()?;
        let answer = within(self.timeout, head(&client)).await;
        if answer.is_ok() {
            self.answered
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Err(error) = &answer {
            // Cheap (one connection per failed probe) and the only way out
            // of a client whose first connection failed.
            if error_kind(error) == ErrorKind::Transient {
                self.client.discard(generation);
            }
        }
        answer
    }
}

#[async_trait]
impl HeadProbe for EsdbHeadProbe {
    async fn head(&self) -> Result<Option<Position>, ReaderError> {
        self.ask().await.map_err(|error| {
            let message = match error {
                eventstore::Error::DeadlineExceeded => format!(
                    "the source did not say where its $all ends within {}",
                    short(self.timeout)
                ),
                _ => format!(
                    "asking the source where its $all ends failed: {}",
                    describe(&error)
                ),
            };
            let refused_from_the_start = is_refused_token(&error)
                && !self.answered.load(std::sync::atomic::Ordering::Relaxed);
            match error_kind(&error) {
                ErrorKind::Transient if !refused_from_the_start => ReaderError::transient(message),
                _ => ReaderError::permanent(message),
            }
            .with_source(error)
        })
    }
}

enum Phase {
    /// Setting up: the inclusive first read, the head position, the
    /// subscription.
    CatchUp,
    /// Catching up, then following `$all`, with a subscription; `confirmed`
    /// once the server has confirmed it (until then its set-up has a
    /// deadline).
    Live {
        subscription: Box<AllSubscription>,
        confirmed: bool,
        /// Generation of the client the subscription runs on.
        generation: u64,
    },
    /// Caught up (not running continuously) or failed permanently.
    Done,
}

/// Why an attempt to read failed.
enum Failure {
    /// The client's error (its own, or our deadline as `DeadlineExceeded`).
    Client {
        doing: &'static str,
        error: eventstore::Error,
    },
    /// The subscription delivered nothing while `$all` went on.
    Stalled {
        seen: Option<Position>,
        head: Position,
        quiet: Duration,
    },
}

impl Failure {
    fn client(doing: &'static str) -> impl Fn(eventstore::Error) -> Failure + Copy {
        move |error| Failure::Client { doing, error }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            Failure::Client { error, .. } => error_kind(error),
            Failure::Stalled { .. } => ErrorKind::Transient,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Client {
                doing,
                error: eventstore::Error::DeadlineExceeded,
            } => write!(f, "{doing}: no answer within the deadline"),
            Failure::Client { doing, error } => write!(f, "{doing}: {}", describe(error)),
            Failure::Stalled { seen, head, quiet } => write!(
                f,
                "the subscription delivered nothing for {} after {} while the source's $all \
                 goes on to {head}: resubscribing",
                short(*quiet),
                shown(*seen)
            ),
        }
    }
}

/// Notices a live subscription that hangs; see [`EsdbReader`].
struct Watchdog {
    quiet: Duration,
    /// Fires after each quiet period.
    timer: Pin<Box<Sleep>>,
    /// The last position the subscription delivered.
    seen: Option<Position>,
    /// [`Watchdog::seen`] when the timer last fired.
    seen_at_tick: Option<Position>,
    /// The head found past `seen` at the last check, if it was.
    suspect: bool,
}

impl Watchdog {
    fn new(quiet: Duration) -> Self {
        Watchdog {
            quiet,
            timer: Box::pin(tokio::time::sleep(quiet)),
            seen: None,
            seen_at_tick: None,
            suspect: false,
        }
    }

    /// A new subscription: watch it from now on.
    fn restart(&mut self) {
        self.seen_at_tick = self.seen;
        self.suspect = false;
        self.timer.as_mut().reset(Instant::now() + self.quiet);
    }

    fn saw(&mut self, position: Position) {
        self.seen = Some(position);
    }
}

struct ReadState {
    /// The client for everything but the subscription: pages, heads.
    client: ClientCell,
    /// The channel the subscription runs on, made when subscribing and
    /// dropped with the client after a failure.
    wire: Option<WireChannel>,
    /// The leader a `not-leader` answer named: the next channel goes there.
    leader: Option<Endpoint>,
    page_size: usize,
    run_continuously: bool,
    request_timeout: Duration,
    health: HealthReporter,
    /// Whether a failure was reported and no success since.
    failing: bool,
    probe: Arc<EsdbHeadProbe>,
    /// The last position handed on: everything up to it is done.
    last: Option<Position>,
    /// For an inclusive start: records before it are not handed on.
    floor: Option<Position>,
    /// Records read and not yet handed on, in order.
    pending: VecDeque<Event>,
    phase: Phase,
    backoff: Backoff,
    watchdog: Watchdog,
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
            let (generation, outcome) = match &mut self.phase {
                Phase::Done => return None,
                Phase::CatchUp => {
                    // Only here: a live subscription keeps its client, and
                    // asking for it per record would cost a lock each.
                    let (generation, client) = match self.client.get() {
                        Ok(client) => client,
                        Err(error) => {
                            let failure = Failure::client("creating the source client")(error);
                            match Box::pin(self.failed(0, failure)).await {
                                Some(error) => return Some(Err(error)),
                                None => continue,
                            }
                        }
                    };
                    let outcome = match Box::pin(self.catch_up(&client, generation)).await {
                        Ok(()) => {
                            if matches!(self.phase, Phase::Done) {
                                self.recovered();
                            }
                            Ok(())
                        }
                        Err(failure) => Err(failure),
                    };
                    (generation, outcome)
                }
                Phase::Live {
                    subscription,
                    confirmed,
                    generation,
                } => {
                    let generation = *generation;
                    let event = next_live(
                        subscription,
                        *confirmed,
                        &mut self.watchdog,
                        &self.probe,
                        self.request_timeout,
                    )
                    .await;
                    let outcome = match event {
                        Ok(event) => {
                            *confirmed = true;
                            self.on_subscription_event(event);
                            Ok(())
                        }
                        Err(failure) => Err(failure),
                    };
                    (generation, outcome)
                }
            };
            if let Err(failure) = outcome {
                if let Some(error) = Box::pin(self.failed(generation, failure)).await {
                    return Some(Err(error));
                }
            }
        }
    }

    fn on_subscription_event(&mut self, item: ReadItem) {
        self.recovered();
        match item {
            ReadItem::Event(event) => {
                self.watchdog.saw(event.position);
                self.accept(event);
                if self.reached_end() {
                    info!(position = %shown(self.last), "Caught up with the source");
                    self.phase = Phase::Done;
                }
            }
            ReadItem::CaughtUp => {
                info!(position = %shown(self.last), "Caught up; following the source live");
            }
            ReadItem::Confirmed(id) => {
                debug!(id = %id, after = %shown(self.last), "Subscribed to $all");
            }
            ReadItem::FellBehind => {
                debug!(position = %shown(self.last), "The subscription fell behind; catching up");
            }
            ReadItem::Checkpoint(_) | ReadItem::StreamNotFound | ReadItem::Other => {}
        }
    }

    /// Moves out of [`Phase::CatchUp`]: reads from an inclusive start first,
    /// ends when there is nothing to read without `run_continuously`, and
    /// otherwise subscribes strictly after the last record handed on.
    async fn catch_up(&mut self, client: &GrpcClient, generation: u64) -> Result<(), Failure> {
        if self.last.is_none() && self.floor.is_some() {
            self.read_page(client).await?;
        }
        if !self.run_continuously {
            if self.end.is_none() {
                let end = within(self.request_timeout, head(client))
                    .await
                    .map_err(Failure::client("reading where the source's $all ends"))?;
                self.end = Some(end);
            }
            if self.reached_end() {
                info!(position = %shown(self.last), "Caught up with the source");
                self.phase = Phase::Done;
                return Ok(());
            }
        }
        let start = Self::live_start(self.last, self.floor, client, self.request_timeout)
            .await
            .map_err(Failure::client("reading where the source's $all ends"))?;
        if let Some(after) = start {
            debug!(position = %shown(self.last), "Subscribing to $all");
            let subscription = Box::pin(self.subscribe(after)).await?;
            self.phase = Phase::Live {
                subscription: Box::new(subscription),
                confirmed: false,
                generation,
            };
            self.watchdog.restart();
        }
        // Otherwise records appeared at or after the inclusive start
        // meanwhile: the next round reads them first.
        Ok(())
    }

    /// Subscribes to `$all` strictly after `after` (from the start when
    /// `None`) on the wire channel, made first when there is none; both with
    /// the request deadline.
    async fn subscribe(&mut self, after: Option<Position>) -> Result<AllSubscription, Failure> {
        let channel = match &self.wire {
            Some(channel) => channel.clone(),
            None => {
                let channel = within(
                    self.request_timeout,
                    self.client.connect_wire(self.leader.take()),
                )
                .await
                .map_err(Failure::client("connecting to the source"))?;
                self.wire = Some(channel.clone());
                channel
            }
        };
        within(
            self.request_timeout,
            AllSubscription::start(&channel, after),
        )
        .await
        .map_err(Failure::client("subscribing to the source's $all"))
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

    /// Reads one page after `last` (or from `floor`, or the start), with a
    /// deadline on the request and on each record.
    async fn read_page(&mut self, client: &GrpcClient) -> Result<(), Failure> {
        let (from, requested) = match (self.last, self.floor) {
            // A read of `$all` is inclusive: ask for one more, the record at
            // `last` comes back and is dropped.
            (Some(last), _) => (AllFrom::Position(last), self.page_size.saturating_add(1)),
            (None, Some(floor)) => (AllFrom::Position(floor), self.page_size),
            (None, None) => (AllFrom::Start, self.page_size),
        };
        let failure = || Failure::client("reading a page of the source's $all");
        let mut stream = within(
            self.request_timeout,
            client.read(ReadOf::All(from), Direction::Forwards, requested, false),
        )
        .await
        .map_err(failure())?;
        let mut received = 0;
        while let Some(event) = within(self.request_timeout, stream.next())
            .await
            .map_err(failure())?
        {
            received += 1;
            self.accept(event);
        }
        self.recovered();
        debug!(received, requested, last = %shown(self.last), "Read a page of $all");
        Ok(())
    }

    /// Where the live subscription starts, strictly after `last` (`Some(None)`:
    /// from the start); `None` when records exist at or after the inclusive
    /// start and catching up must read them first.
    ///
    /// Takes no `&self`: the state holds a subscription, which is not `Sync`.
    async fn live_start(
        last: Option<Position>,
        floor: Option<Position>,
        client: &GrpcClient,
        timeout: Duration,
    ) -> Result<Option<Option<Position>>, eventstore::Error> {
        match (last, floor) {
            (Some(last), _) => Ok(Some(Some(last))),
            (None, None) => Ok(Some(None)),
            // Nothing at or after an inclusive start yet. A subscription from
            // a position is exclusive and would miss a record written exactly
            // there: start after the last record before it instead.
            (None, Some(floor)) => Ok(match within(timeout, head(client)).await? {
                None => Some(None),
                Some(last) if last >= floor => None,
                Some(last) => Some(Some(last)),
            }),
        }
    }

    /// Queues a record unless it is at or before the last one handed on (a
    /// reconnect or the inclusive read repeats it) or before the floor.
    fn accept(&mut self, event: Event) {
        if self.last.is_some_and(|last| event.position <= last)
            || self.floor.is_some_and(|floor| event.position < floor)
        {
            return;
        }
        self.last = Some(event.position);
        self.pending.push_back(event);
    }

    /// Reading works (again): tells the health reporter once, and starts the
    /// backoff over.
    fn recovered(&mut self) {
        if self.failing {
            self.failing = false;
            self.health.success();
        }
        self.backoff.reset();
    }

    /// Handles a failed attempt: a permanent error ends the stream (returned);
    /// a transient one is reported to the health reporter, drops the client,
    /// waits and goes back to catching up from `last`.
    async fn failed(&mut self, generation: u64, failure: Failure) -> Option<ReaderError> {
        if failure.kind() == ErrorKind::Permanent {
            self.phase = Phase::Done;
            let message = format!(
                "reading the source $all after {} failed: {failure}",
                shown(self.last)
            );
            let error = ReaderError::permanent(message);
            return Some(match failure {
                Failure::Client { error: source, .. } => error.with_source(source),
                Failure::Stalled { .. } => error,
            });
        }
        let delay = self.backoff.next_delay();
        // The reporter logs a lasting failure (first at WARN, then once a
        // minute); each attempt only at debug.
        debug!(
            %failure,
            attempt = self.backoff.attempts(),
            retry_in = ?delay,
            last = %shown(self.last),
            "Source unavailable; reconnecting"
        );
        self.health.failure(&format_args!(
            "{failure} (resuming after {})",
            shown(self.last)
        ));
        self.failing = true;
        // Dropping the subscription before the client ends the stream cleanly.
        self.phase = Phase::CatchUp;
        self.wire = None;
        if let Failure::Client {
            error: eventstore::Error::NotLeaderException(leader),
            ..
        } = &failure
        {
            self.leader = Some(leader.clone());
        }
        // A client whose first connection failed never recovers, and one whose
        // request hung may sit on a dead connection: always start afresh, it
        // costs one connection.
        self.client.discard(generation);
        tokio::time::sleep(delay).await;
        None
    }
}

/// The next event of a live subscription.
///
/// Until the server confirms the subscription, the wait has a deadline.
/// Afterwards silence is normal, and the [`Watchdog`] decides when it is not:
/// after each quiet period without a record it asks the probe for the head,
/// while still waiting for the subscription.
///
/// A free function over the parts it needs: the state holds the subscription,
/// which is not `Sync`, so no `&ReadState` may be held across an await.
async fn next_live(
    subscription: &mut AllSubscription,
    confirmed: bool,
    watchdog: &mut Watchdog,
    probe: &EsdbHeadProbe,
    timeout: Duration,
) -> Result<ReadItem, Failure> {
    if !confirmed {
        return within(timeout, subscription.next())
            .await
            .map_err(Failure::client("subscribing to the source's $all"));
    }
    let failure = Failure::client("following the source's $all");
    // Kept across the checks below: dropping it would drop the subscription.
    let next = subscription.next();
    tokio::pin!(next);
    loop {
        tokio::select! {
            biased;
            event = &mut next => return event.map_err(failure),
            () = watchdog.timer.as_mut() => {}
        }
        watchdog
            .timer
            .as_mut()
            .reset(Instant::now() + watchdog.quiet);
        if watchdog.seen != watchdog.seen_at_tick {
            watchdog.seen_at_tick = watchdog.seen;
            watchdog.suspect = false;
            continue;
        }
        // Quiet for a whole period: is the source idle, or the subscription
        // stuck?
        let head = tokio::select! {
            biased;
            event = &mut next => return event.map_err(failure),
            // Boxed: rare, and it would otherwise grow every record's future.
            head = Box::pin(probe.ask()) => head,
        };
        match head {
            Ok(Some(head)) if watchdog.seen.is_none_or(|seen| head > seen) => {
                if watchdog.suspect {
                    return Err(Failure::Stalled {
                        seen: watchdog.seen,
                        head,
                        quiet: watchdog.quiet * 2,
                    });
                }
                watchdog.suspect = true;
            }
            Ok(_) => watchdog.suspect = false,
            Err(error) => {
                return Err(Failure::Client {
                    doing: "asking where the source's $all ends while the subscription is silent",
                    error,
                })
            }
        }
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
    fn bad_configuration_is_named() {
        let mut config = EsdbReaderConfig::new("esdb://localhost:2113?tls=false");
        config.page_size = 0;
        let err = EsdbReader::new(config).unwrap_err();
        assert!(err.message().contains("pageSize"), "{err}");
        let err = EsdbReader::new(EsdbReaderConfig::new("")).unwrap_err();
        assert!(err.message().contains("empty"), "{err}");
    }
}
