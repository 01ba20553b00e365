//! The configuration: the C# Replicator's `appsettings.yaml`, read as it is.
//!
//! Users of the C# tool already have a YAML file with the root key `replicator`
//! and must not have to rewrite it. Loading goes through three steps:
//!
//! 1. The YAML is parsed into a [`serde_json::Value`] tree.
//! 2. That tree is normalised against [`SCHEMA`], the list of every key the C#
//!    tool knows: keys are matched case-insensitively (like .NET configuration)
//!    and renamed to their canonical spelling, `null` values count as absent,
//!    and quoted numbers and booleans are accepted. Then `REPLICATOR_…`
//!    environment variables override single keys.
//! 3. The tree is deserialized into the `raw` structs (`deny_unknown_fields`,
//!    with the key path of any error), then validated into [`Config`]. Every key
//!    we do not support, or do not know, is an error naming the key and saying
//!    why; nothing is silently ignored.

mod layering;
mod raw;
mod schema;
#[cfg(test)]
mod tests;
mod validation;

use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use replicator_core::secret::ConnectionString;
use replicator_esdb::WriteOrder;
pub use replicator_kafka::DeleteMode;
pub use replicator_transform::filter::FilterKind;
use serde_json::Value;

use layering::{apply_env, normalize};
use validation::build;

/// Where `--config` points when it is not given, like the C# tool.
pub const DEFAULT_CONFIG_PATH: &str = "./config/appsettings.yaml";

/// The number of concurrent writers when `sink.partitionCount` is not set.
///
/// The C# tool's default (one writer) is kept for now; a higher effective
/// default may be chosen later, which is why the field is optional.
pub const DEFAULT_PARTITION_COUNT: usize = 1;

/// The prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "REPLICATOR_";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML (the message carries the line and column).
    #[error("config file {} is not valid YAML: {message}", path.display())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// An environment override is malformed or names an unknown key.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// A key is unknown, unsupported, missing or has a bad value.
    #[error("{key}: {message}{}", origin.as_ref().map(|v| format!(" (set by environment variable {v})")).unwrap_or_default())]
    Key {
        /// The full key path, e.g. `replicator.sink.partitioner`.
        key: String,
        /// What is wrong with it, and why.
        message: String,
        /// The environment variable that set the key, when one did.
        origin: Option<String>,
    },
}

impl ConfigError {
    fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
            origin: None,
        }
    }
}

pub use schema::{Node, SCHEMA};

/// A validated configuration: what `replicator run` builds its parts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The source.
    pub reader: ReaderConfig,
    /// The target.
    pub sink: SinkConfig,
    /// The checkpoint store, its frequency and seeding.
    pub checkpoint: CheckpointConfig,
    /// `runContinuously`: follow the source live after catching up (`true`), or
    /// stop once caught up (`false`).
    pub run_continuously: bool,
    /// `restartOnFailure`: when the pipeline stops with an error, wait
    /// [`Config::restart_delay`] and run it again from the stored checkpoint.
    pub restart_on_failure: bool,
    /// `restartDelayInSeconds`.
    pub restart_delay: Duration,
    /// `reportMetricsFrequencyInSeconds`: the interval of the progress log.
    pub report_every: Duration,
    /// `http`: the status server.
    pub http: HttpConfig,
    /// `callTimeoutInSeconds`: the deadline of every remote call (append,
    /// read, checkpoint store, probes); a call that takes longer is a
    /// transient failure, reported and retried.
    pub call_timeout: Duration,
    /// `filters`: applied in this order, each record must pass them all.
    pub filters: Vec<FilterConfig>,
    /// `scavenge`: leave out what a scavenge of the source would remove.
    pub scavenge: bool,
    /// `transform`.
    pub transform: TransformConfig,
}

/// One entry of `replicator.filters`. Its patterns compile (checked when the
/// configuration is loaded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterConfig {
    /// `type`.
    pub kind: FilterKind,
    /// `include`: a record must match it (unanchored, case-sensitive).
    pub include: Option<String>,
    /// `exclude`: a record must not match it.
    pub exclude: Option<String>,
}

/// `replicator.transform`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformConfig {
    /// `type: default` (or none): events are copied byte for byte, unless
    /// `originalMetadata: true` adds the C# default transform's
    /// `$originalEventNumber`, `$originalPosition` and `$originalCreatedDate`.
    Default {
        /// `transform.originalMetadata`.
        original_metadata: bool,
    },
    /// `type: js`: the script `transform.config`.
    Js {
        /// `transform.config`.
        path: PathBuf,
        /// `transform.bufferSize`: events in the script at once.
        in_flight: NonZeroUsize,
    },
    /// `type: http`: one POST per event to `transform.config`.
    Http {
        /// `transform.config` (printed without its credentials).
        url: ConnectionString,
        /// `transform.bufferSize`: requests in flight at once.
        in_flight: NonZeroUsize,
    },
}

impl Default for TransformConfig {
    fn default() -> Self {
        TransformConfig::Default {
            original_metadata: false,
        }
    }
}

/// Where the status server listens when `http.listen` is not set: the port
/// of the C# tool's chart, compose files and docs.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:5000";

/// `replicator.http`: the status server (health, metrics, status page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// `http.listen`: `host:port`, or `None` when set to an empty string
    /// (no server). Port 0 picks a free port (logged at start-up).
    pub listen: Option<String>,
    /// `http.unhealthyAfterSeconds`: how long a component may fail before
    /// readiness reports 503.
    pub unhealthy_after: Duration,
}

/// The source cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderConfig {
    /// `reader.connectionString` (printed without its password): an
    /// `esdb://` URL for gRPC, a .NET ClientAPI string
    /// (`ConnectTo=tcp://…`) for TCP.
    pub connection_string: ConnectionString,
    /// `reader.protocol`.
    pub protocol: ReaderProtocol,
    /// `reader.pageSize`: with gRPC, records of the first read at a seed
    /// (catch-up itself streams through one subscription); with TCP, the
    /// records of every `$all` page (at most 4096).
    pub page_size: NonZeroUsize,
    /// `reader.token` or `reader.tokenFile` (gRPC only).
    pub token: Option<TokenConfig>,
}

/// A bearer token (KurrentDB's OAuth authentication), sent as
/// `authorization: Bearer` on every call of one side instead of the
/// connection string's credentials. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenConfig {
    /// `token`: the token itself.
    Inline(String),
    /// `tokenFile`: the file holding it, read again when it changes.
    File(PathBuf),
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenConfig::Inline(_) => f.write_str("Inline(***)"),
            TokenConfig::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// `reader.protocol`: how the source is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReaderProtocol {
    /// `grpc` (the default): EventStoreDB 20+ and KurrentDB.
    #[default]
    Grpc,
    /// `tcp`: the legacy TCP protocol of EventStoreDB v5 (and of later
    /// versions with external TCP enabled).
    Tcp,
}

/// `sink.protocol`: what the target is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SinkProtocol {
    /// `grpc` (the default): an EventStoreDB 20+ or KurrentDB cluster.
    #[default]
    Grpc,
    /// `kafka`: Kafka topics (`replicator-kafka`).
    Kafka,
}

/// The Kafka sink's settings (`sink.protocol: kafka`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `sink.router`: a JavaScript file whose `route` gives each event's
    /// topic and key; `None`: the stream's category and name.
    pub router: Option<PathBuf>,
    /// `sink.deletes`: `skip` (the default, as the C# tool) or `tombstone`
    /// (a null-value record per deleted stream).
    pub deletes: DeleteMode,
    /// `sink.metadataHeaders`: top-level keys of JSON metadata also sent as
    /// headers of their own.
    pub metadata_headers: Vec<String>,
}

/// The target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// `sink.protocol`.
    pub protocol: SinkProtocol,
    /// The Kafka sink's settings; `None` unless the protocol is `kafka`.
    pub kafka: Option<KafkaConfig>,
    /// `sink.connectionString` (printed without its password): an `esdb://`
    /// URL, or for Kafka librdkafka settings `bootstrap.servers=…;key=value`.
    pub connection_string: ConnectionString,
    /// `sink.token` or `sink.tokenFile` (gRPC only; the stream checkpoint
    /// store uses it too).
    pub token: Option<TokenConfig>,
    /// `sink.partitionCount` as given; see [`SinkConfig::partition_count`].
    pub partition_count: Option<NonZeroUsize>,
    /// `sink.order`: `source` (the default) keeps the source's `$all` order
    /// on the target through one ordered writer; `stream` keeps only each
    /// stream's, with `partitionCount` writers.
    pub order: WriteOrder,
    /// `sink.bufferSize`: capacity of the buffer between reader and sink.
    pub buffer_size: NonZeroUsize,
    /// `sink.partitioner`: a JavaScript file whose `partition(event)` keys
    /// the writers instead of the stream name.
    pub partitioner: Option<PathBuf>,
}

impl SinkConfig {
    /// How many writers `sink.order: stream` uses: `sink.partitionCount`,
    /// or [`DEFAULT_PARTITION_COUNT`]. Source order has one.
    pub fn partition_count(&self) -> usize {
        self.partition_count
            .map_or(DEFAULT_PARTITION_COUNT, NonZeroUsize::get)
    }

    /// How many writers write at once: one with source order or Kafka,
    /// [`SinkConfig::partition_count`] with stream order.
    pub fn writers(&self) -> usize {
        if self.protocol == SinkProtocol::Kafka {
            return 1;
        }
        match self.order {
            WriteOrder::Source => 1,
            WriteOrder::Stream => self.partition_count(),
        }
    }
}

/// Where the checkpoint is kept, how often, and how it is seeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// The store.
    pub store: StoreConfig,
    /// `checkpoint.checkpointAfter`: store after this many processed events.
    pub checkpoint_after: u64,
    /// `checkpoint.checkpointIntervalInSeconds`: unstored progress (an idle or
    /// trickling source) is stored at the latest this long after it was made.
    pub checkpoint_interval: Duration,
    /// `checkpoint.seeder`: `None` for `type: none`.
    pub seeder: Option<SeederConfig>,
}

/// `checkpoint.type` and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// `type: file`.
    File {
        /// `checkpoint.path`.
        path: PathBuf,
    },
    /// `type: mongo`.
    Mongo {
        /// `checkpoint.path`: the connection string (printed without its
        /// password).
        connection_string: ConnectionString,
        /// `checkpoint.database`.
        database: String,
        /// `checkpoint.instanceId`.
        instance_id: String,
    },
    /// `type: stream`: the `$replicator-checkpoint-<instanceId>` stream of the
    /// target.
    Stream {
        /// The target's: `sink.connectionString` (printed without its
        /// password).
        connection_string: ConnectionString,
        /// The target's bearer token, if any (`sink.token`, `sink.tokenFile`).
        token: Option<TokenConfig>,
        /// `checkpoint.instanceId`.
        instance_id: String,
    },
}

/// `checkpoint.seeder`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeederConfig {
    /// `type: chaser`: seed from a backup's `chaser.chk`.
    Chaser {
        /// `checkpoint.seeder.path`.
        path: PathBuf,
    },
}

impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::File { path } => write!(f, "file {}", path.display()),
            StoreConfig::Mongo {
                connection_string,
                database,
                instance_id,
            } => write!(
                f,
                "mongo {connection_string}, database {database}, collection checkpoint, instance {instance_id}",
            ),
            StoreConfig::Stream {
                connection_string,
                instance_id,
                ..
            } => write!(
                f,
                "stream {}{instance_id} on the target {connection_string}",
                replicator_esdb::CHECKPOINT_STREAM_PREFIX
            ),
        }
    }
}

impl Config {
    /// Reads, overrides from the process environment, and validates the file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, variable or key that is wrong.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        // `vars_os`: one non-UTF-8 variable elsewhere must not stop the program.
        let env = std::env::vars_os().map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        });
        Config::from_yaml(&text, path, env)
    }

    /// Parses `yaml` (read from `path`, named in errors), applies the
    /// `REPLICATOR_…` variables among `env`, and validates the result.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, variable or key that is wrong.
    pub fn from_yaml(
        yaml: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let parsed: Value = if yaml.trim().is_empty() {
            Value::Null
        } else {
            serde_saphyr::from_str(yaml).map_err(|e| ConfigError::Yaml {
                path: path.to_owned(),
                message: e.to_string(),
            })?
        };
        let mut tree =
            normalize(parsed, SCHEMA, "").map_err(|(key, message)| ConfigError::Key {
                key,
                message,
                origin: None,
            })?;
        let origins = apply_env(&mut tree, env)?;
        build(tree).map_err(|e| match e {
            ConfigError::Key {
                key,
                message,
                origin: None,
            } => {
                // Name the variable when the key (or the section holding it) came from one.
                let origin = origins
                    .iter()
                    .find(|(k, _)| key == **k || key.starts_with(&format!("{k}.")))
                    .map(|(_, var)| var.clone());
                ConfigError::Key {
                    key,
                    message,
                    origin,
                }
            }
            other => other,
        })
    }
}
