//! The C# tool's JavaScript transform (`transform.type: js`) and partitioner
//! (`sink.partitioner`), on QuickJS (through `rquickjs`).
//!
//! # The transform
//! The script defines a global `transform(original)`. `original` has
//! `Stream`, `EventType`, `Data` (the parsed JSON data), `Meta` (the parsed
//! JSON metadata, or `null` when there is none) and `Created` (a `Date`), and
//! the same in camelCase (`stream`, `eventType`, `data`, `meta`, `created`),
//! as the C# tool's engine accepted both. It returns `{Stream, EventType, Data,
//! Meta}` to write that instead, or `null`/`undefined` to leave the event out
//! (skipped as [`SkipReason::Dropped`], still checkpointed). The event id, the
//! content type, the position and the source revision are kept.
//!
//! - Only appended events go to the script. Stream metadata, soft deletes and
//!   tombstones pass unchanged (the C# tool gave metadata records to the
//!   script as `$metadata` events, after an empty-data filter had already
//!   dropped them).
//! - Events whose data, or whose non-empty metadata, is not JSON (binary
//!   events, malformed JSON, empty data) pass unchanged without calling the
//!   script: the script could not see them faithfully, and the C# tool
//!   stalled on them. They are counted ([`JsTransform::not_json`]) and logged
//!   (a warning at the 1st, 10th, 100th, … such event).
//! - A result that is not `null`/`undefined` must have a non-blank `Stream`
//!   and `EventType` (strings) and a `Data` that `JSON.stringify` can write;
//!   `Meta` `null` or missing writes no metadata. camelCase keys are accepted
//!   when the PascalCase key is missing. Anything else is a permanent error
//!   saying what is wrong (the C# tool silently dropped such events).
//! - A script that throws, or runs longer than the time limit (5 s by
//!   default), is a permanent error with the script's message and line; the
//!   pipeline adds the stream, revision and position and stops.
//! - `log.debug/info/warn/error(message, ...args)` write to our log (target
//!   `replicator::js`); `{Name}` holes in the message take the arguments in
//!   order, as in the C# tool's message templates.
//!
//! # The partitioner
//! The script defines `partition(event)`; `event` has `Stream`, `EventType`,
//! `Data`, `Meta` (and camelCase aliases). A string result is the partition
//! key; anything else (and metadata, deletes and non-JSON events, which are
//! not given to the script) means the default key, the stream name.
//!
//! # The router
//! The Kafka sink's `sink.router`: the script defines `route`, which is given
//! `(stream, eventType, data, metadata)` when it declares two or more
//! parameters (as the C# tool's documentation shows it) and otherwise one
//! object with `Stream`, `EventType`, `Data`, `Meta` and their camelCase
//! aliases (as the C# tool's code calls it). It returns `{topic,
//! partitionKey}`; `null`, `undefined` or a non-object means the default
//! route (as in the C# tool), and so do events whose data or metadata is not
//! JSON (not given to the script). A missing `partitionKey` means the stream
//! name; a blank or non-string `topic`, or a non-string key, is a permanent
//! error.
//!
//! # Concurrency
//! QuickJS runtimes cannot move between threads, so each engine lives on its
//! own thread and calls reach it through a channel. The transform runs
//! [`JsTransform::with_in_flight`] engines (each with the script loaded once,
//! at most [`MAX_ENGINES`]) so that many events are in the script at once;
//! the pipeline still hands them on in source order. Scripts should not keep
//! state between calls: each engine has its own globals.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use replicator_core::{ChangeKind, Event, Partitioner, SkipReason, Transform, TransformError};

mod engine;

use engine::{Entry, Input, Outcome, Pool};

/// The most engines [`JsTransform::with_in_flight`] starts: scripts are CPU
/// work, so more engines than cores only cost memory (a `transform.bufferSize`
/// of 1000 must not start 1000 threads).
pub const MAX_ENGINES: usize = 16;

/// How long one call of the script may run by default.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(5);

/// Why a JavaScript file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JsError {
    /// The file cannot be read.
    #[error("cannot read the JavaScript file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The script does not compile, or throws while loading.
    #[error("the JavaScript file {} does not load: {message}", path.display())]
    Script {
        /// The file.
        path: PathBuf,
        /// The engine's message, with the line.
        message: String,
    },
    /// The script does not define the function the tool calls.
    #[error(
        "the JavaScript file {} defines no global function `{function}` (found: {found})",
        path.display()
    )]
    NoFunction {
        /// The file.
        path: PathBuf,
        /// `transform` or `partition`.
        function: &'static str,
        /// What `typeof` said instead.
        found: String,
    },
    /// The engine could not be started.
    #[error("cannot run the JavaScript file {}: {message}", path.display())]
    Engine {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// The C# tool's `transform.type: js`: a script's `transform(original)`
/// changes or drops each appended event. See the [module docs](self).
pub struct JsTransform {
    pool: Pool,
    path: PathBuf,
    not_json: AtomicU64,
}

impl JsTransform {
    /// Loads the script in one engine.
    ///
    /// # Errors
    /// [`JsError`] naming the file: unreadable, a syntax error (with its line),
    /// an error thrown while loading, or no `transform` function.
    pub fn from_file(path: &Path) -> Result<JsTransform, JsError> {
        Ok(JsTransform {
            pool: Pool::start(path, Entry::Transform, DEFAULT_TIME_LIMIT)?,
            path: path.to_path_buf(),
            not_json: AtomicU64::new(0),
        })
    }

    /// Runs `n` engines (at least 1, at most [`MAX_ENGINES`]), so that up to
    /// that many events are in the script at once
    /// ([`Transform::concurrency`]). The C# tool's `transform.bufferSize` is
    /// the natural value.
    ///
    /// # Errors
    /// [`JsError`] if an engine cannot be started.
    pub fn with_in_flight(mut self, n: usize) -> Result<JsTransform, JsError> {
        self.pool.grow_to(n.clamp(1, MAX_ENGINES))?;
        Ok(self)
    }

    /// How long one call may run before it is stopped (a permanent error);
    /// [`DEFAULT_TIME_LIMIT`] unless set. Keep it below the pipeline's call
    /// timeout, which would otherwise retry the call first.
    #[must_use]
    pub fn with_time_limit(self, limit: Duration) -> JsTransform {
        self.pool.set_time_limit(limit);
        self
    }

    /// How many events passed unchanged because their data or metadata is
    /// not JSON.
    pub fn not_json(&self) -> u64 {
        self.not_json.load(Ordering::Relaxed)
    }

    fn passed_not_json(&self, event: &Event) {
        let count = self.not_json.fetch_add(1, Ordering::Relaxed) + 1;
        // A warning at 1, 10, 100, ...: visible without flooding the log.
        let mut power = 1;
        while power < count {
            power *= 10;
        }
        if power == count {
            tracing::warn!(
                script = %self.path.display(),
                stream = %event.stream,
                revision = event.revision,
                passed_unchanged = count,
                "JavaScript transform: an event whose data or metadata is not JSON passes unchanged, \
                 without calling transform()"
            );
        } else {
            tracing::debug!(
                script = %self.path.display(),
                stream = %event.stream,
                revision = event.revision,
                "JavaScript transform: not JSON, passed unchanged"
            );
        }
    }
}

fn input_of(event: &Event) -> Input {
    Input {
        stream: event.stream.clone(),
        event_type: event.event_type.clone(),
        data: event.data.clone(),
        metadata: event.metadata.clone(),
        created: event.created,
    }
}

#[async_trait]
impl Transform for JsTransform {
    fn name(&self) -> String {
        format!("js transform {}", self.path.display())
    }

    async fn apply(&self, event: Event) -> Result<Event, TransformError> {
        if event.kind != ChangeKind::Append {
            return Ok(event);
        }
        match self.pool.call(input_of(&event)).await {
            Ok(Outcome::NotJson) => {
                self.passed_not_json(&event);
                Ok(event)
            }
            Ok(Outcome::Dropped) => Ok(Event {
                kind: ChangeKind::Skip(SkipReason::Dropped),
                ..event
            }),
            Ok(Outcome::Replaced {
                stream,
                event_type,
                data,
                metadata,
            }) => Ok(Event {
                stream,
                event_type,
                data: Bytes::from(data),
                metadata: metadata.map(Bytes::from).unwrap_or_default(),
                ..event
            }),
            Ok(Outcome::Key(_) | Outcome::Route(_)) => Err(TransformError::permanent(
                "the JavaScript transform got a partition key or route (a bug)",
            )),
            Err(message) => Err(TransformError::permanent(format!(
                "{}: {message}",
                self.path.display()
            ))),
        }
    }

    fn concurrency(&self) -> usize {
        self.pool.size()
    }

    fn keeps_revisions(&self) -> bool {
        false
    }
}

/// The C# tool's `sink.partitioner`: a script's `partition(event)` gives the
/// partition key. See the [module docs](self).
pub struct JsPartitioner {
    pool: Pool,
    path: PathBuf,
}

impl JsPartitioner {
    /// Loads the script in one engine.
    ///
    /// # Errors
    /// [`JsError`] naming the file: unreadable, a syntax error (with its line),
    /// an error thrown while loading, or no `partition` function.
    pub fn from_file(path: &Path) -> Result<JsPartitioner, JsError> {
        Ok(JsPartitioner {
            pool: Pool::start(path, Entry::Partition, DEFAULT_TIME_LIMIT)?,
            path: path.to_path_buf(),
        })
    }

    /// How long one call may run before it is stopped (a permanent error).
    #[must_use]
    pub fn with_time_limit(self, limit: Duration) -> JsPartitioner {
        self.pool.set_time_limit(limit);
        self
    }
}

impl Partitioner for JsPartitioner {
    fn key(&self, event: &Event) -> Result<Option<String>, TransformError> {
        if event.kind != ChangeKind::Append {
            return Ok(None);
        }
        match self.pool.call_blocking(input_of(event)) {
            Ok(Outcome::Key(key)) => Ok(key),
            Ok(_) => Ok(None),
            Err(message) => Err(TransformError::permanent(format!(
                "partitioner {}: {message}",
                self.path.display()
            ))),
        }
    }
}

/// Where the Kafka sink's router sends an event: [`JsRouter::route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The topic.
    pub topic: String,
    /// The record key; `None` when the script gave none (the sink then uses
    /// the stream name).
    pub key: Option<String>,
}

/// The C# tool's Kafka `sink.router`: a script's `route(...)` gives each
/// event's topic and key. See the [module docs](self).
pub struct JsRouter {
    pool: Pool,
    path: PathBuf,
}

impl std::fmt::Debug for JsRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsRouter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl JsRouter {
    /// Loads the script in one engine.
    ///
    /// # Errors
    /// [`JsError`] naming the file: unreadable, a syntax error (with its line),
    /// an error thrown while loading, or no `route` function.
    pub fn from_file(path: &Path) -> Result<JsRouter, JsError> {
        Ok(JsRouter {
            pool: Pool::start(path, Entry::Route, DEFAULT_TIME_LIMIT)?,
            path: path.to_path_buf(),
        })
    }

    /// Runs `n` engines (at least 1, at most [`MAX_ENGINES`]), so that a
    /// batch's events are routed `n` at a time.
    ///
    /// # Errors
    /// [`JsError`] if an engine cannot be started.
    pub fn with_in_flight(mut self, n: usize) -> Result<JsRouter, JsError> {
        self.pool.grow_to(n.clamp(1, MAX_ENGINES))?;
        Ok(self)
    }

    /// How long one call may run before it is stopped (a permanent error).
    #[must_use]
    pub fn with_time_limit(self, limit: Duration) -> JsRouter {
        self.pool.set_time_limit(limit);
        self
    }

    /// How many engines route at once.
    pub fn concurrency(&self) -> usize {
        self.pool.size()
    }

    /// The script's route for `event`, or `None` for the default route (the
    /// script returned none, or the event is not JSON).
    ///
    /// # Errors
    /// A permanent [`TransformError`] naming the file: the script threw, ran
    /// too long, or returned a route without a topic.
    pub async fn route(&self, event: &Event) -> Result<Option<Route>, TransformError> {
        match self.pool.call(input_of(event)).await {
            Ok(Outcome::Route(Some((topic, key)))) => Ok(Some(Route { topic, key })),
            Ok(_) => Ok(None),
            Err(message) => Err(TransformError::permanent(format!(
                "router {}: {message}",
                self.path.display()
            ))),
        }
    }
}
