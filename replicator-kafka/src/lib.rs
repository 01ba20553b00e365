//! The Kafka sink of replicator: every replicated event becomes a Kafka
//! record, as the C# Replicator's experimental Kafka sink configures it, with
//! headers, batching and the broker's acknowledgement before the checkpoint
//! moves.
//!
//! - **Where a record goes.** Without a router the topic is the stream's
//!   category (the stream name before its first `-`, the whole name when it
//!   has none) and the key is the stream name, so one stream's records keep
//!   their order in one partition. A [`JsRouter`] (`sink.router`) gives the
//!   topic and key instead.
//! - **What a record holds.** The value is the event's data, byte for byte;
//!   the record's timestamp is the event's creation time. Headers (see
//!   [`headers`]) carry the event type, id, stream, revision, source position,
//!   content type, creation time, the user metadata, and, opt-in, chosen
//!   top-level keys of JSON metadata.
//! - **What is not sent.** Stream metadata records, and deletions unless
//!   [`DeleteMode::Tombstone`] asks for a null-value record per key.
//! - **Acknowledgements.** [`Sink::write`] enqueues the whole batch (many
//!   records in flight, `acks=all`, the idempotent producer) and returns `Ok`
//!   only when the broker acknowledged every record of it, so the checkpoint
//!   never passes a record the broker does not hold.
//! - **Order.** Batches are enqueued in the order the pipeline starts them
//!   (a fair lock taken at the first poll), and the idempotent producer keeps
//!   the order of one partition across its own retries, so the records of one
//!   key are in the source's order.
//! - **Delivery: at least once.** A record whose write failed or timed out
//!   is not sent again while the producer still has it queued: a retried
//!   batch waits for those deliveries, so a broker outage adds no duplicates.
//!   A crash replays what was processed after the stored checkpoint (the
//!   pipeline's replay window); those records are sent again. A producer that
//!   has had nothing acknowledged for [`KafkaSinkConfig::stall_limit`] while
//!   records wait (a broker that came back without the producer's state, as
//!   an in-memory broker restarted) is replaced by a new one, and what it
//!   held is sent again.
//!
//! ```no_run
//! use replicator_kafka::{KafkaSink, KafkaSinkConfig};
//!
//! let sink = KafkaSink::new(KafkaSinkConfig::new(
//!     "bootstrap.servers=localhost:9092;linger.ms=10".into(),
//! ))?;
//! # Ok::<(), replicator_kafka::KafkaSinkError>(())
//! ```
#![warn(missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::future::{FutureExt as _, Shared};
use futures::stream::{self, StreamExt as _, TryStreamExt as _};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::ClientContext;
use replicator_core::secret::ConnectionString;
use replicator_core::{ChangeKind, ContentType, Event, Position, Sink, SinkError, WriteAck};
use replicator_transform::js::{JsRouter, Route};
use uuid::Uuid;

pub mod headers;

/// What the sink sends for a deleted stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeleteMode {
    /// Nothing, as the C# tool (the default).
    #[default]
    Skip,
    /// A record with a null value to the stream's topic and key (the
    /// router's, called with event type `$streamDeleted` and data `{}`), so a
    /// compacted topic forgets the stream. Hard and soft deletes alike.
    Tombstone,
}

/// The producer settings the sink sets unless the connection string does:
/// every in-sync replica acknowledges, the idempotent producer keeps order and
/// drops its own retries' duplicates, and a record is never given up while the
/// broker is away (the pipeline's deadline reports the outage instead).
pub const DEFAULT_SETTINGS: [(&str, &str); 4] = [
    ("acks", "all"),
    ("enable.idempotence", "true"),
    ("message.timeout.ms", "0"),
    ("linger.ms", "5"),
];

/// How the sink is configured.
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    /// The C# tool's `sink.connectionString`: librdkafka settings as
    /// `key=value` pairs separated by `;` (each split at its first `=`), with
    /// `bootstrap.servers` among them.
    pub connection_string: ConnectionString,
    /// The `route` script (`sink.router`); `None` for the default route.
    pub router: Option<Arc<JsRouter>>,
    /// What a deleted stream becomes.
    pub deletes: DeleteMode,
    /// Top-level keys of JSON metadata also sent as headers of their own (the
    /// key as the header's name; a string value as it is, any other as JSON).
    pub metadata_headers: Vec<String>,
    /// How long one write waits for the broker's acknowledgements before it
    /// fails as transient (naming the broker); keep it below the pipeline's
    /// call deadline.
    pub request_timeout: Duration,
    /// How long the producer may go without any acknowledgement while
    /// records wait before it is replaced by a new one (its records are sent
    /// again). Long enough to outlast an ordinary outage, which the producer
    /// rides out without duplicates.
    pub stall_limit: Duration,
}

impl KafkaSinkConfig {
    /// A configuration with the default route, deletions skipped, no
    /// metadata headers and a 10 s request timeout.
    pub fn new(connection_string: ConnectionString) -> Self {
        KafkaSinkConfig {
            connection_string,
            router: None,
            deletes: DeleteMode::Skip,
            metadata_headers: Vec::new(),
            request_timeout: Duration::from_secs(10),
            stall_limit: Duration::from_secs(60),
        }
    }
}

/// Why a [`KafkaSink`] cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    /// A `;`-separated part of the connection string has no `=`.
    #[error("sink.connectionString: {part:?} is not a key=value setting (settings are separated by `;`)")]
    NotASetting {
        /// The part, or `***` when it may hold a secret.
        part: String,
    },
    /// The connection string sets no `bootstrap.servers`.
    #[error("sink.connectionString: no bootstrap.servers (e.g. bootstrap.servers=kafka:9092)")]
    NoBootstrapServers,
    /// librdkafka refused a setting or could not create the producer.
    #[error("sink.connectionString: the Kafka producer cannot be created: {message}")]
    Producer {
        /// librdkafka's message (it names the setting).
        message: String,
    },
}

/// Splits the C# tool's connection string into librdkafka settings: on `;`,
/// each part at its first `=` (so a value may hold `=`), both sides trimmed;
/// empty parts are ignored.
///
/// # Errors
/// A part without `=`, or no `bootstrap.servers`.
pub fn parse_settings(connection_string: &str) -> Result<Vec<(String, String)>, KafkaSinkError> {
    let mut settings = Vec::new();
    for part in connection_string.split(';') {
        if part.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = part.split_once('=') else {
            return Err(KafkaSinkError::NotASetting {
                part: ConnectionString::from(part.trim()).redacted(),
            });
        };
        settings.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    if !settings
        .iter()
        .any(|(k, v)| k == "bootstrap.servers" && !v.is_empty())
    {
        return Err(KafkaSinkError::NoBootstrapServers);
    }
    Ok(settings)
}

/// The C# tool's default route: the topic is the stream's category, the
/// part before the first `-` (the whole name without one).
pub fn category(stream: &str) -> &str {
    stream
        .split_once('-')
        .map_or(stream, |(category, _)| category)
}

/// Whether Kafka accepts `topic` as a topic name: 1 to 249 characters among
/// ASCII letters, digits, `.`, `_` and `-`, and not `.` or `..`.
///
/// # Errors
/// What is wrong with it.
pub fn valid_topic(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() || topic == "." || topic == ".." {
        return Err("empty, `.` or `..`");
    }
    if topic.len() > 249 {
        return Err("longer than 249 characters");
    }
    if !topic
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("only ASCII letters, digits, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

/// librdkafka's log and errors into ours.
struct Context {
    brokers: String,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(target: "replicator::kafka", brokers = %self.brokers, facility = fac, "{log_message}")
            }
            // librdkafka's errors are mostly a broker it cannot reach, which
            // the target's health reports (and logs) already.
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "replicator::kafka", brokers = %self.brokers, facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "replicator::kafka", brokers = %self.brokers, facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "replicator::kafka", brokers = %self.brokers, facility = fac, "{log_message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Connection failures come here too; the writes that wait on the
        // broker report the outage to the pipeline, so this is a debug line.
        tracing::debug!(target: "replicator::kafka", brokers = %self.brokers, %error, "{reason}");
    }
}

type Delivery = Shared<Pin<Box<dyn Future<Output = Result<(), KafkaError>> + Send>>>;

/// A record's identity across retries of its batch.
type RecordId = (Position, Uuid);

/// The Kafka sink. See the [crate docs](crate).
pub struct KafkaSink {
    /// The current producer; replaced after a stall.
    producer: std::sync::RwLock<FutureProducer<Context>>,
    /// What a new producer is made from.
    client: ClientConfig,
    /// When a record was last acknowledged, or nothing was waiting.
    progress: Mutex<tokio::time::Instant>,
    stall_limit: Duration,
    brokers: String,
    router: Option<Arc<JsRouter>>,
    deletes: DeleteMode,
    metadata_headers: Vec<String>,
    request_timeout: Duration,
    /// Batches enqueue one at a time, in the order their writes were first
    /// polled (tokio's mutex is fair).
    turn: tokio::sync::Mutex<()>,
    /// Records enqueued by a write that did not see them all acknowledged
    /// (it failed or was dropped): a retry waits for these instead of sending
    /// them again. Emptied as writes succeed.
    pending: Mutex<HashMap<RecordId, Delivery>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("brokers", &self.brokers)
            .field("deletes", &self.deletes)
            .finish_non_exhaustive()
    }
}

/// One record to send.
struct Planned<'a> {
    event: &'a Event,
    topic: String,
    key: String,
    value: Option<&'a [u8]>,
}

impl KafkaSink {
    /// Creates the producer (it connects in the background; [`Sink::check`]
    /// waits for the broker).
    ///
    /// # Errors
    /// A malformed connection string or a setting librdkafka refuses, named.
    pub fn new(config: KafkaSinkConfig) -> Result<KafkaSink, KafkaSinkError> {
        let settings = parse_settings(config.connection_string.expose())?;
        let brokers = settings
            .iter()
            .find(|(k, _)| k == "bootstrap.servers")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let mut client = ClientConfig::new();
        for (key, value) in DEFAULT_SETTINGS {
            client.set(key, value);
        }
        for (key, value) in &settings {
            client.set(key, value);
        }
        let scrubber = replicator_core::secret::Scrubber::of([&config.connection_string]);
        let producer = create(&client, &brokers).map_err(|e| KafkaSinkError::Producer {
            message: scrubber.scrub(&e.to_string()),
        })?;
        Ok(KafkaSink {
            producer: std::sync::RwLock::new(producer),
            client,
            progress: Mutex::new(tokio::time::Instant::now()),
            stall_limit: config.stall_limit,
            brokers,
            router: config.router,
            deletes: config.deletes,
            metadata_headers: config.metadata_headers,
            request_timeout: config.request_timeout,
            turn: tokio::sync::Mutex::new(()),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// The `bootstrap.servers` it produces to.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Where `event` goes, or `None` when nothing is sent for it.
    async fn plan<'a>(&self, event: &'a Event) -> Result<Option<Planned<'a>>, SinkError> {
        let (routed, value) = match event.kind {
            ChangeKind::Append => (event.clone(), Some(&event.data[..])),
            ChangeKind::Tombstone | ChangeKind::SoftDelete
                if self.deletes == DeleteMode::Tombstone =>
            {
                // The router sees a deletion as an event of its own type.
                let stream = event.target_stream().to_owned();
                (Event::new(stream, "$streamDeleted", "{}"), None)
            }
            _ => return Ok(None),
        };
        let route = match &self.router {
            Some(router) => router.route(&routed).await.map_err(|e| {
                SinkError::permanent(format!(
                    "routing event {} of `{}` (revision {}, source position {}): {}",
                    event.id,
                    event.stream,
                    event.revision,
                    event.position,
                    e.message()
                ))
            })?,
            None => None,
        };
        let Route { topic, key } = route.unwrap_or_else(|| Route {
            topic: category(&routed.stream).to_owned(),
            key: None,
        });
        if let Err(why) = valid_topic(&topic) {
            return Err(SinkError::permanent(format!(
                "event {} of `{}` (revision {}, source position {}) routes to topic {topic:?},                  which is not a Kafka topic name: {why}; a sink.router can choose another",
                event.id, event.stream, event.revision, event.position
            )));
        }
        Ok(Some(Planned {
            event,
            topic,
            key: key.unwrap_or_else(|| routed.stream.clone()),
            value,
        }))
    }

    /// Hands one record to the producer, waiting while its queue is full.
    async fn enqueue(&self, planned: &Planned<'_>) -> Result<Delivery, SinkError> {
        let headers = headers::of(planned.event, &self.metadata_headers);
        let mut record = FutureRecord::<str, [u8]>::to(&planned.topic)
            .key(&planned.key)
            .headers(to_owned_headers(&headers));
        if let Some(value) = planned.value {
            record = record.payload(value);
        }
        if let Ok(created) = planned.event.created.duration_since(SystemTime::UNIX_EPOCH) {
            record = record.timestamp(i64::try_from(created.as_millis()).unwrap_or(i64::MAX));
        }
        loop {
            match self.producer().send_result(record) {
                Ok(delivery) => {
                    let delivery: Pin<Box<dyn Future<Output = _> + Send>> =
                        Box::pin(delivery.map(|outcome| match outcome {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err((error, _))) => Err(error),
                            Err(_) => Err(KafkaError::Canceled),
                        }));
                    return Ok(delivery.shared());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    // The producer's queue drains as the broker acknowledges.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(self.failed(planned, &error)),
            }
        }
    }

    fn failed(&self, planned: &Planned<'_>, error: &KafkaError) -> SinkError {
        let e = planned.event;
        let message = format!(
            "Kafka broker(s) {}: record of event {} of `{}` (revision {}, source position {}) \
             to topic `{}`, key `{}`: {error}",
            self.brokers, e.id, e.stream, e.revision, e.position, planned.topic, planned.key
        );
        if is_permanent(error) {
            SinkError::permanent(message)
        } else {
            SinkError::transient(message)
        }
    }

    fn producer(&self) -> FutureProducer<Context> {
        self.producer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn progressed(&self) {
        *self
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tokio::time::Instant::now();
    }

    /// After a timed-out write: when nothing was acknowledged for the stall
    /// limit, a new producer replaces the current one and the records it
    /// held are forgotten, so that the retries send them again.
    fn replace_if_stalled(&self) {
        let since = self
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed();
        if since < self.stall_limit {
            return;
        }
        let fresh = match create(&self.client, &self.brokers) {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::warn!(brokers = %self.brokers, %error, "Cannot create a new Kafka producer");
                return;
            }
        };
        let old = std::mem::replace(
            &mut *self
                .producer
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            fresh,
        );
        let held = std::mem::take(&mut *self.pending()).len();
        self.progressed();
        tracing::warn!(
            brokers = %self.brokers,
            stalled = ?since,
            held,
            "Kafka producer had nothing acknowledged for the stall limit; replaced by a new \
             one, which sends the records it held again (a consumer may see them twice)"
        );
        // Dropping a producer purges its queue and waits up to 500 ms.
        tokio::task::spawn_blocking(move || drop(old));
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<RecordId, Delivery>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn create(client: &ClientConfig, brokers: &str) -> KafkaResult<FutureProducer<Context>> {
    client.create_with_context(Context {
        brokers: brokers.to_owned(),
    })
}

fn to_owned_headers(headers: &[(String, Vec<u8>)]) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v),
            })
        },
    )
}

/// Errors retrying cannot cure: the record or topic is refused, the producer
/// is unusable (a fatal idempotence error: `restartOnFailure` makes a new one).
fn is_permanent(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::InvalidTopic
                | C::InvalidRecord
                | C::Fatal
                | C::InvalidConfig
                | C::UnsupportedForMessageFormat
                | C::PolicyViolation
        )
    )
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&self, batch: &[Event]) -> Result<WriteAck, SinkError> {
        // Taken at the first poll, in the writer's batch order.
        let turn = self.turn.lock().await;
        if self.pending().is_empty() {
            // Nothing waits: a quiet spell is no stall.
            self.progressed();
        }
        let concurrency = self.router.as_ref().map_or(1, |r| r.concurrency());
        let plans: Vec<_> = batch.iter().map(|e| self.plan(e)).collect();
        let planned: Vec<Planned<'_>> = stream::iter(plans)
            .buffered(concurrency)
            .try_filter_map(|p| async move { Ok(p) })
            .try_collect()
            .await?;
        let mut waits = Vec::with_capacity(planned.len());
        for p in &planned {
            let id = (p.event.position, p.event.id);
            let earlier = self.pending().get(&id).cloned();
            let delivery = match earlier {
                Some(delivery) => delivery,
                None => {
                    let delivery = self.enqueue(p).await?;
                    self.pending().insert(id, delivery.clone());
                    delivery
                }
            };
            waits.push(delivery);
        }
        drop(turn);

        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut failure: Option<SinkError> = None;
        let mut acknowledged = 0usize;
        for (p, delivery) in planned.iter().zip(waits) {
            let id = (p.event.position, p.event.id);
            match tokio::time::timeout_at(deadline, delivery).await {
                Ok(Ok(())) => {
                    acknowledged += 1;
                    self.progressed();
                }
                Ok(Err(error)) => {
                    // Sent again on the retry.
                    self.pending().remove(&id);
                    if failure.as_ref().is_none_or(SinkError::is_transient) {
                        let error = self.failed(p, &error);
                        if failure.is_none() || !error.is_transient() {
                            failure = Some(error);
                        }
                    }
                }
                Err(_) => {
                    if failure.is_none() {
                        failure = Some(SinkError::transient(format!(
                            "Kafka broker(s) {} did not acknowledge records within {:?} \
                             (first: event {} of `{}`, source position {}, to topic `{}`); \
                             they stay queued in the producer and are not sent again",
                            self.brokers,
                            self.request_timeout,
                            p.event.id,
                            p.event.stream,
                            p.event.position,
                            p.topic
                        )));
                    }
                }
            }
        }
        match failure {
            None => {
                let mut pending = self.pending();
                for p in &planned {
                    pending.remove(&(p.event.position, p.event.id));
                }
                Ok(WriteAck::default())
            }
            Some(error) => {
                tracing::debug!(acknowledged, of = planned.len(), %error, "Kafka write incomplete");
                if acknowledged < planned.len() {
                    self.replace_if_stalled();
                }
                Err(error)
            }
        }
    }

    fn max_in_flight(&self) -> usize {
        // One writer: a router may give records of many streams one key, so
        // only one ordered writer keeps every key's order.
        1
    }

    fn pipelined_writes(&self) -> usize {
        4
    }

    async fn check(&self) -> Result<(), SinkError> {
        let producer = self.producer();
        let timeout = self.request_timeout;
        let brokers = self.brokers.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .map(drop)
                .map_err(|e| {
                    SinkError::transient(format!(
                        "Kafka broker(s) {brokers} did not answer a metadata request: {e}"
                    ))
                })
        })
        .await
        .map_err(|e| SinkError::permanent(format!("the Kafka check task failed: {e}")))?
    }
}

/// The content type's name, as EventStoreDB names it.
pub(crate) fn content_type_name(content_type: ContentType) -> &'static str {
    match content_type {
        ContentType::Json => "application/json",
        ContentType::Binary => "application/octet-stream",
    }
}
