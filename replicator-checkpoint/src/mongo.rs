//! The checkpoint kept in a MongoDB document.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::{Error as MongoError, ErrorKind as MongoErrorKind, WriteFailure};
use mongodb::options::{Acknowledgment, ClientOptions, CollectionOptions, WriteConcern};
use mongodb::{Client, Collection};
use replicator_core::health::short;
use replicator_core::retry::Backoff;
use replicator_core::secret::{ConnectionString, Scrubber};
use replicator_core::{Checkpoint, CheckpointError, CheckpointStore, Position};
use tokio::time::Instant;

/// The collection every instance keeps its document in, as the C# replicator did.
pub const COLLECTION: &str = "checkpoint";

/// The document format version this replicator writes.
const FORMAT_VERSION: i64 = 1;

/// How long `load`, `store`, `delete` and `check` retry transient failures by
/// default: not at all. The pipeline retries with backoff and reports the
/// store's health; a store that retried inside would only hide the outage.
const DEFAULT_RETRY_BUDGET: Duration = Duration::ZERO;

/// How long [`MongoCheckpointStore::connect`] keeps trying to reach the
/// server: at start-up, and before `checkpoint show` or `delete`, a server
/// that is still starting is worth waiting for.
const CONNECT_RETRY_BUDGET: Duration = Duration::from_secs(60);

/// How long one attempt waits for a usable server, unless the connection string
/// says otherwise.
const DEFAULT_SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// What one attempt may take beyond server selection before it is abandoned.
/// The driver has no socket timeout: without this, an operation on a server
/// that stopped answering (frozen, or behind a partition without a reset)
/// would wait for ever on its pooled connection.
const ATTEMPT_MARGIN: Duration = Duration::from_secs(1);

/// The field [`CheckpointStore::check`] looks for; it never exists, so the
/// check's update matches nothing and changes nothing.
const WRITE_CHECK_FIELD: &str = "_replicator_write_check";

/// Server error codes that mean "the server is restarting, stepping down or
/// unreachable for now": retrying the same operation later can succeed.
const TRANSIENT_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
    64,    // WriteConcernFailed (timeout waiting for replication)
];

/// A checkpoint kept in MongoDB: one document per instance id in the
/// `checkpoint` collection of a database (`replicator` by default), so several
/// replicator instances can share a database without touching each other's
/// checkpoints.
///
/// The document this replicator writes carries a format version:
///
/// ```text
/// { _id: "<instance id>", version: 1,
///   source: { commit: <long>, prepare: <long> },
///   target: null | { commit: <long>, prepare: <long> },
///   taken_at: <date>, seed: <bool> }
/// ```
///
/// It also reads the document the C# replicator wrote,
/// `{ _id: "<instance id>", LogPosition: { EventNumber: <long>, EventPosition: <long> } }`,
/// so its users keep their place: replication starts again at the commit
/// `EventPosition` ([`Checkpoint::of_commit`]; the C# format has no time:
/// `taken_at` is then the Unix epoch).
///
/// Writes ask for a majority, journaled acknowledgement unless the connection
/// string sets a write concern. The password of the connection string never
/// appears in errors, logs or `Debug` output.
///
/// # Failures and deadlines
/// `load`, `store`, `delete` and `check` make **one attempt** by default,
/// bounded by the server selection timeout (5 s unless the connection string
/// sets `serverSelectionTimeoutMS`) plus a second: a server that is down,
/// frozen or partitioned away gives a transient error within a few seconds.
/// The pipeline retries those with backoff, reports the checkpoint store
/// unhealthy meanwhile and goes on replicating; retrying inside the store
/// would only stall it. [`MongoCheckpointStore::with_retry_budget`] makes the
/// calls retry transient failures with the workspace's
/// [`Backoff`] for a while, for callers without a retry loop of their own.
/// [`MongoCheckpointStore::connect`] keeps trying for up to a minute, so
/// start-up and one-shot commands wait for a server that is still starting.
///
/// # Start-up check
/// `check` proves that the store may write, without changing anything: an
/// update of this instance's document filtered on a field that never exists
/// (`_replicator_write_check`), with the store's write concern. The server
/// authorises it as a write and waits for the write concern, but it matches
/// nothing. A user without write permission gets a permanent error before
/// anything is replicated.
pub struct MongoCheckpointStore {
    collection: Collection<Document>,
    instance_id: String,
    /// Where the document lives, for messages: database, collection, id and
    /// the connection string without its password.
    location: String,
    /// Hides the password in the driver's messages.
    scrubber: Scrubber,
    retry_budget: Duration,
    /// The longest one attempt may take.
    attempt_timeout: Duration,
    /// See [`MongoCheckpointStore::retries`].
    retries: AtomicU64,
}

impl fmt::Debug for MongoCheckpointStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoCheckpointStore")
            .field("location", &self.location)
            .field("retry_budget", &self.retry_budget)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("retries", &self.retries())
            .finish_non_exhaustive()
    }
}

impl MongoCheckpointStore {
    /// Connects to the MongoDB server of the connection string `url` and checks
    /// that the checkpoint of `instance_id` in `database` can be read.
    ///
    /// Start-up is where mistakes in the configuration should surface, so this
    /// reads the document once: a bad connection string, bad credentials or a
    /// missing permission is reported now rather than at the first checkpoint.
    /// What the document holds is checked by [`CheckpointStore::load`], so that
    /// a corrupt one can still be deleted.
    ///
    /// Transient failures are retried with backoff for up to a minute, with a
    /// warning on the first one.
    ///
    /// # Errors
    /// - Permanent: the connection string is malformed, the database or instance
    ///   id is empty, authentication fails or reading is not allowed.
    /// - Transient: the server stays unreachable for a minute.
    ///
    /// The messages never contain the password.
    pub async fn connect(
        url: impl Into<ConnectionString>,
        database: &str,
        instance_id: &str,
    ) -> Result<Self, CheckpointError> {
        let url = url.into();
        let redacted = url.to_string();
        let mut scrubber = Scrubber::of([&url]);
        if database.is_empty() {
            return Err(CheckpointError::permanent(
                "the MongoDB checkpoint database name is empty",
            ));
        }
        if instance_id.is_empty() {
            return Err(CheckpointError::permanent(
                "the MongoDB checkpoint instance id is empty",
            ));
        }
        let mut options = ClientOptions::parse(url.expose()).await.map_err(|error| {
            let detail = scrubber.scrub(&describe(&error));
            let message = format!("invalid MongoDB connection string {redacted}: {detail}");
            if is_transient(&error) {
                CheckpointError::transient(message)
            } else {
                CheckpointError::permanent(message)
            }
        })?;
        // The driver's own decoding, should it differ from ours.
        if let Some(password) = options.credential.as_ref().and_then(|c| c.password.clone()) {
            scrubber.add(password);
        }
        options
            .app_name
            .get_or_insert_with(|| "replicator".to_owned());
        let server_selection_timeout = *options
            .server_selection_timeout
            .get_or_insert(DEFAULT_SERVER_SELECTION_TIMEOUT);
        options
            .connect_timeout
            .get_or_insert(DEFAULT_SERVER_SELECTION_TIMEOUT);
        let client = Client::with_options(options.clone()).map_err(|error| {
            CheckpointError::permanent(format!(
                "cannot create a MongoDB client for {redacted}: {}",
                scrubber.scrub(&describe(&error))
            ))
        })?;
        // A checkpoint must survive a crash of the server too.
        let write_concern = options.write_concern.clone().unwrap_or_else(|| {
            WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .journal(true)
                .build()
        });
        let collection = client.database(database).collection_with_options(
            COLLECTION,
            CollectionOptions::builder()
                .write_concern(write_concern)
                .build(),
        );
        let store = MongoCheckpointStore {
            collection,
            instance_id: instance_id.to_owned(),
            location: format!("document {instance_id:?} of {database}.{COLLECTION} at {redacted}"),
            scrubber,
            retry_budget: DEFAULT_RETRY_BUDGET,
            attempt_timeout: server_selection_timeout.saturating_add(ATTEMPT_MARGIN),
            retries: AtomicU64::new(0),
        };
        // Only whether it can be read: a corrupt document is `load`'s error, and
        // must not stop `delete` from clearing it.
        let filter = doc! { "_id": &store.instance_id };
        store
            .retry_for(CONNECT_RETRY_BUDGET, "read the checkpoint", true, || {
                store
                    .collection
                    .find_one(filter.clone())
                    .projection(doc! { "_id": 1 })
                    .into_future()
            })
            .await?;
        store.retries.store(0, Ordering::SeqCst);
        Ok(store)
    }

    /// Sets how long `load`, `store`, `delete` and `check` keep retrying
    /// transient failures before they return a transient error. The default,
    /// zero, makes one attempt: right under the pipeline, which retries
    /// itself. A caller without a retry loop (a one-shot command) may want
    /// half a minute or so.
    pub fn with_retry_budget(mut self, budget: Duration) -> Self {
        self.retry_budget = budget;
        self
    }

    /// How many attempts of this store's calls have failed transiently and
    /// are (or were) being made again within the retry budget, since
    /// [`MongoCheckpointStore::connect`] returned (its own retries are not
    /// counted). Counted when the retry is decided, before its wait: a test
    /// uses it to know that an outage is being bridged by retries rather
    /// than by one slow attempt, without guessing how long an attempt takes.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::SeqCst)
    }

    /// The instance id: the `_id` of this store's document.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    fn error(&self, doing: &str, error: &MongoError) -> CheckpointError {
        let message = format!(
            "cannot {doing} ({}): {}",
            self.location,
            self.scrubber.scrub(&describe(error))
        );
        if is_transient(error) {
            CheckpointError::transient(message)
        } else {
            CheckpointError::permanent(message)
        }
    }

    /// Runs `attempt` under the store's retry budget; see [`Self::retry_for`].
    async fn retry<T, Fut>(
        &self,
        doing: &str,
        attempt: impl FnMut() -> Fut,
    ) -> Result<T, CheckpointError>
    where
        Fut: Future<Output = mongodb::error::Result<T>>,
    {
        self.retry_for(self.retry_budget, doing, false, attempt)
            .await
    }

    /// Runs `attempt`, each try bounded by the attempt timeout, until it
    /// succeeds, fails permanently, or transient failures have lasted
    /// `budget` (zero: one try). With `warn`, the first retry is logged as a
    /// warning (the others at debug); otherwise every retry is at debug, the
    /// caller reporting the failure.
    async fn retry_for<T, Fut>(
        &self,
        budget: Duration,
        doing: &str,
        warn: bool,
        mut attempt: impl FnMut() -> Fut,
    ) -> Result<T, CheckpointError>
    where
        Fut: Future<Output = mongodb::error::Result<T>>,
    {
        let deadline = Instant::now() + budget;
        let mut backoff = Backoff::default();
        loop {
            let error = match tokio::time::timeout(self.attempt_timeout, attempt()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => self.error(doing, &error),
                Err(_) => CheckpointError::transient(format!(
                    "cannot {doing} ({}): the server did not answer within {}",
                    self.location,
                    short(self.attempt_timeout)
                )),
            };
            let delay = backoff.next_delay();
            if !error.is_transient() || Instant::now() + delay > deadline {
                return Err(error);
            }
            self.retries.fetch_add(1, Ordering::SeqCst);
            if warn && backoff.attempts() == 1 {
                tracing::warn!(%error, "MongoDB checkpoint store unavailable; retrying for up to {}", short(budget));
            } else {
                tracing::debug!(%error, retry_in = ?delay, "MongoDB checkpoint store failed; retrying");
            }
            tokio::time::sleep(delay).await;
        }
    }

    fn corrupt(&self, problem: impl fmt::Display) -> CheckpointError {
        CheckpointError::permanent(format!(
            "the checkpoint {} {problem}; fix or delete the document to replicate from the \
             start (or from a seed) again",
            self.location
        ))
    }

    fn decode(&self, document: &Document) -> Result<Checkpoint, CheckpointError> {
        match document.get("version") {
            Some(Bson::Int32(1) | Bson::Int64(1)) => self.decode_v1(document),
            Some(version) => Err(self.corrupt(format_args!(
                "has format version {version}, but this replicator reads only version \
                 {FORMAT_VERSION} (was it written by a newer replicator?)"
            ))),
            None if document.contains_key("LogPosition") => self.decode_csharp(document),
            None => Err(self.corrupt("has neither a format version nor a C# LogPosition")),
        }
    }

    fn decode_v1(&self, document: &Document) -> Result<Checkpoint, CheckpointError> {
        let field = |name: &str| {
            document
                .get(name)
                .ok_or_else(|| self.corrupt(format_args!("has no {name:?} field")))
        };
        let source = decode_position(field("source")?)
            .map_err(|problem| self.corrupt(format_args!("has a bad \"source\": {problem}")))?;
        let target = match field("target")? {
            Bson::Null => None,
            other => Some(decode_position(other).map_err(|problem| {
                self.corrupt(format_args!("has a bad \"target\": {problem}"))
            })?),
        };
        let taken_at = match field("taken_at")? {
            Bson::DateTime(time) => time.to_system_time(),
            other => {
                return Err(self.corrupt(format_args!("has a bad \"taken_at\": {other}")));
            }
        };
        let seed = match field("seed")? {
            Bson::Boolean(seed) => *seed,
            other => return Err(self.corrupt(format_args!("has a bad \"seed\": {other}"))),
        };
        Ok(Checkpoint {
            source,
            target,
            taken_at,
            seed,
        })
    }

    /// The C# replicator's `LogPosition`: `EventPosition` is the commit position
    /// of the last event it processed; `EventNumber` is that event's number in
    /// its own stream and of no use here.
    fn decode_csharp(&self, document: &Document) -> Result<Checkpoint, CheckpointError> {
        let log_position = match document.get("LogPosition") {
            Some(Bson::Document(log_position)) => log_position,
            other => {
                return Err(self.corrupt(format_args!(
                    "has a C# LogPosition that is not a document: {other:?}"
                )))
            }
        };
        let commit = log_position
            .get("EventPosition")
            .ok_or_else(|| self.corrupt("has a C# LogPosition without EventPosition"))
            .and_then(|value| {
                to_u64(value).map_err(|problem| {
                    self.corrupt(format_args!(
                        "has a bad C# LogPosition.EventPosition: {problem}"
                    ))
                })
            })?;
        let mut checkpoint = Checkpoint::of_commit(commit);
        checkpoint.taken_at = SystemTime::UNIX_EPOCH;
        Ok(checkpoint)
    }

    fn encode(&self, checkpoint: &Checkpoint) -> Result<Document, CheckpointError> {
        let position = |p: Position| -> Result<Document, CheckpointError> {
            let part = |value: u64| {
                i64::try_from(value).map_err(|_| {
                    CheckpointError::permanent(format!(
                        "cannot store position {p} in the checkpoint {}: MongoDB integers \
                         stop at {}",
                        self.location,
                        i64::MAX
                    ))
                })
            };
            Ok(doc! { "commit": part(p.commit)?, "prepare": part(p.prepare)? })
        };
        let target = match checkpoint.target {
            Some(target) => Bson::Document(position(target)?),
            None => Bson::Null,
        };
        Ok(doc! {
            "_id": &self.instance_id,
            "version": FORMAT_VERSION,
            "source": position(checkpoint.source)?,
            "target": target,
            "taken_at": DateTime::from_system_time(checkpoint.taken_at),
            "seed": checkpoint.seed,
        })
    }
}

#[async_trait]
impl CheckpointStore for MongoCheckpointStore {
    async fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let filter = doc! { "_id": &self.instance_id };
        let document = self
            .retry("load the checkpoint", || {
                self.collection.find_one(filter.clone()).into_future()
            })
            .await?;
        document.map(|document| self.decode(&document)).transpose()
    }

    async fn store(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let filter = doc! { "_id": &self.instance_id };
        let document = self.encode(checkpoint)?;
        self.retry("store the checkpoint", || {
            self.collection
                .replace_one(filter.clone(), document.clone())
                .upsert(true)
                .into_future()
        })
        .await?;
        Ok(())
    }

    async fn delete(&self) -> Result<(), CheckpointError> {
        let filter = doc! { "_id": &self.instance_id };
        self.retry("delete the checkpoint", || {
            self.collection.delete_one(filter.clone()).into_future()
        })
        .await?;
        Ok(())
    }

    /// An update that matches nothing: authorised and acknowledged as a write,
    /// with the store's write concern, but changing nothing (see
    /// [`MongoCheckpointStore`]).
    async fn check(&self) -> Result<(), CheckpointError> {
        let filter = doc! { "_id": &self.instance_id, WRITE_CHECK_FIELD: { "$exists": true } };
        let update = doc! { "$unset": { WRITE_CHECK_FIELD: "" } };
        self.retry(
            "write to the checkpoint collection (a check that changes nothing)",
            || {
                self.collection
                    .update_one(filter.clone(), update.clone())
                    .into_future()
            },
        )
        .await?;
        Ok(())
    }
}

fn decode_position(value: &Bson) -> Result<Position, String> {
    let Bson::Document(document) = value else {
        return Err(format!("{value} is not a document"));
    };
    let part = |name: &str| {
        document
            .get(name)
            .ok_or_else(|| format!("no {name:?}"))
            .and_then(|value| to_u64(value).map_err(|problem| format!("{name:?}: {problem}")))
    };
    Ok(Position {
        commit: part("commit")?,
        prepare: part("prepare")?,
    })
}

/// A non-negative integer, however the writer's driver typed it.
fn to_u64(value: &Bson) -> Result<u64, String> {
    let out_of_range = || format!("{value} is not a non-negative integer");
    match value {
        Bson::Int32(n) => u64::try_from(*n).map_err(|_| out_of_range()),
        Bson::Int64(n) => u64::try_from(*n).map_err(|_| out_of_range()),
        // Exactly representable whole numbers only.
        Bson::Double(n) if *n >= 0.0 && n.fract() == 0.0 && *n < 9_007_199_254_740_992.0 => {
            Ok(*n as u64)
        }
        _ => Err(out_of_range()),
    }
}

/// The driver's description of what went wrong, without its debug dump of
/// labels and raw server responses.
fn describe(error: &MongoError) -> String {
    error.kind.to_string()
}

/// Whether retrying the same operation later can succeed.
fn is_transient(error: &MongoError) -> bool {
    if error.contains_label("RetryableWriteError")
        || error.contains_label("TransientTransactionError")
    {
        return true;
    }
    match &*error.kind {
        MongoErrorKind::Io(_)
        | MongoErrorKind::ConnectionPoolCleared { .. }
        | MongoErrorKind::ServerSelection { .. }
        | MongoErrorKind::DnsResolve { .. } => true,
        MongoErrorKind::Command(command) => TRANSIENT_CODES.contains(&command.code),
        MongoErrorKind::Write(WriteFailure::WriteConcernError(concern)) => {
            TRANSIENT_CODES.contains(&concern.code)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_integers_however_they_were_typed() {
        assert_eq!(to_u64(&Bson::Int32(7)), Ok(7));
        assert_eq!(to_u64(&Bson::Int64(1 << 40)), Ok(1 << 40));
        assert_eq!(to_u64(&Bson::Double(12.0)), Ok(12));
        assert!(to_u64(&Bson::Double(1.5)).is_err());
        assert!(to_u64(&Bson::Int64(-1)).is_err());
        assert!(to_u64(&Bson::String("1".into())).is_err());
        // 2^53 may be a rounded 2^53 + 1: only smaller doubles are exact.
        assert_eq!(
            to_u64(&Bson::Double(9_007_199_254_740_991.0)),
            Ok(9_007_199_254_740_991)
        );
        assert!(to_u64(&Bson::Double(9_007_199_254_740_992.0)).is_err());
    }
}
