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

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use replicator_esdb::redact;
use serde_json::{Map, Value};

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

/// The kind of value a key holds, used to accept quoted scalars and to type
/// environment overrides (environment variables are always strings).
#[derive(Debug, Clone, Copy)]
pub enum Node {
    /// A string.
    Str,
    /// A non-negative whole number.
    Int,
    /// `true` or `false`.
    Bool,
    /// Anything (lists and free-form sections: kept as they are).
    Any,
    /// A section with these keys, spelled canonically.
    Map(&'static [(&'static str, Node)]),
}

const READER: &[(&str, Node)] = &[
    ("connectionString", Node::Str),
    ("protocol", Node::Str),
    ("pageSize", Node::Int),
    ("auth", Node::Any),
];
const SINK: &[(&str, Node)] = &[
    ("connectionString", Node::Str),
    ("protocol", Node::Str),
    ("partitionCount", Node::Int),
    ("partitioner", Node::Str),
    ("bufferSize", Node::Int),
    ("auth", Node::Any),
];
const TRANSFORM: &[(&str, Node)] = &[
    ("type", Node::Str),
    ("config", Node::Any),
    ("bufferSize", Node::Int),
];
const SEEDER: &[(&str, Node)] = &[("type", Node::Str), ("path", Node::Str)];
const CHECKPOINT: &[(&str, Node)] = &[
    ("type", Node::Str),
    ("path", Node::Str),
    ("checkpointAfter", Node::Int),
    // Ours: the idle flush interval (the C# tool has no such key).
    ("checkpointIntervalInSeconds", Node::Int),
    ("database", Node::Str),
    ("instanceId", Node::Str),
    ("seeder", Node::Map(SEEDER)),
];
const HTTP: &[(&str, Node)] = &[("listen", Node::Str), ("unhealthyAfterSeconds", Node::Int)];
const REPLICATOR: &[(&str, Node)] = &[
    ("reader", Node::Map(READER)),
    ("sink", Node::Map(SINK)),
    ("scavenge", Node::Bool),
    ("filters", Node::Any),
    ("transform", Node::Map(TRANSFORM)),
    ("checkpoint", Node::Map(CHECKPOINT)),
    ("runContinuously", Node::Bool),
    ("restartOnFailure", Node::Bool),
    ("restartDelayInSeconds", Node::Int),
    ("reportMetricsFrequencyInSeconds", Node::Int),
    // Ours, not the C# tool's: the status server and the call deadline.
    ("http", Node::Map(HTTP)),
    ("callTimeoutInSeconds", Node::Int),
];

/// Every key of the C# tool's configuration, supported or not, and our own
/// (`http`, `callTimeoutInSeconds`, `checkpoint.checkpointIntervalInSeconds`).
pub const SCHEMA: Node = Node::Map(&[("replicator", Node::Map(REPLICATOR))]);

/// The serde view of the file: every key the C# tool knows, spelled as in its
/// YAML. Validation turns it into [`Config`].
mod raw {
    use serde::Deserialize;
    use serde_json::Value;

    /// The file's root.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Root {
        /// Everything lives under `replicator`.
        pub replicator: Option<Replicator>,
    }

    /// The `replicator` section.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(super) struct Replicator {
        /// Where to read from.
        pub reader: Option<Reader>,
        /// Where to write to.
        pub sink: Option<Sink>,
        /// The C# scavenge filter (unsupported when `true`).
        pub scavenge: Option<bool>,
        /// The C# event filters (unsupported when not empty).
        pub filters: Option<Value>,
        /// The C# transform (only `default` is accepted).
        pub transform: Option<Transform>,
        /// Where progress is kept.
        pub checkpoint: Option<Checkpoint>,
        /// Follow the source live (`true`) or stop once caught up (`false`).
        pub run_continuously: Option<bool>,
        /// Restart the pipeline after it fails.
        pub restart_on_failure: Option<bool>,
        /// Seconds to wait before such a restart.
        pub restart_delay_in_seconds: Option<u64>,
        /// Seconds between progress log lines.
        pub report_metrics_frequency_in_seconds: Option<u64>,
        /// The status server.
        pub http: Option<Http>,
        /// Deadline of every remote call, in seconds.
        pub call_timeout_in_seconds: Option<u64>,
    }

    /// `replicator.http`.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(super) struct Http {
        /// `host:port` to listen on; empty turns the server off.
        pub listen: Option<String>,
        /// Seconds a component may fail before readiness turns 503.
        pub unhealthy_after_seconds: Option<u64>,
    }

    /// `replicator.reader`.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(super) struct Reader {
        /// The source cluster's connection string.
        pub connection_string: Option<String>,
        /// `grpc` (or absent); `tcp` is unsupported.
        pub protocol: Option<String>,
        /// Events per read request.
        pub page_size: Option<u64>,
        /// The C# tool's OAuth settings (unsupported).
        pub auth: Option<Value>,
    }

    /// `replicator.sink`.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(super) struct Sink {
        /// The target cluster's connection string.
        pub connection_string: Option<String>,
        /// `grpc` (or absent); `tcp` and `kafka` are unsupported.
        pub protocol: Option<String>,
        /// How many appends may be in flight at once.
        pub partition_count: Option<u64>,
        /// A JavaScript partitioner (unsupported).
        pub partitioner: Option<String>,
        /// Capacity of the buffer between reader and sink, in events.
        pub buffer_size: Option<u64>,
        /// The C# tool's OAuth settings (unsupported).
        pub auth: Option<Value>,
    }

    /// `replicator.transform`.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(super) struct Transform {
        /// `default`; `js` and `http` are unsupported.
        #[serde(rename = "type")]
        pub kind: Option<String>,
        /// Configuration of a `js` or `http` transform (unsupported).
        pub config: Option<Value>,
        /// Concurrency of a `js` or `http` transform (unsupported).
        pub buffer_size: Option<u64>,
    }

    /// `replicator.checkpoint`.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(super) struct Checkpoint {
        /// `file` or `mongo`.
        #[serde(rename = "type")]
        pub kind: Option<String>,
        /// The file, or the MongoDB connection string.
        pub path: Option<String>,
        /// Store a checkpoint after this many processed events.
        pub checkpoint_after: Option<u64>,
        /// Store unstored progress at the latest this many seconds after it
        /// was made.
        pub checkpoint_interval_in_seconds: Option<u64>,
        /// MongoDB database.
        pub database: Option<String>,
        /// MongoDB document id.
        pub instance_id: Option<String>,
        /// Where a first checkpoint comes from.
        pub seeder: Option<Seeder>,
    }

    /// `replicator.checkpoint.seeder`.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(super) struct Seeder {
        /// `none` or `chaser`.
        #[serde(rename = "type")]
        pub kind: Option<String>,
        /// The `chaser.chk` file.
        pub path: Option<String>,
    }
}

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
#[derive(Clone, PartialEq, Eq)]
pub struct ReaderConfig {
    /// `reader.connectionString`.
    pub connection_string: String,
    /// `reader.pageSize`: records of the first read at a seed (catch-up
    /// itself streams through one subscription).
    pub page_size: NonZeroUsize,
}

/// The target cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// `sink.connectionString`.
    pub connection_string: String,
    /// `sink.partitionCount` as given; see [`SinkConfig::partition_count`].
    pub partition_count: Option<NonZeroUsize>,
    /// `sink.bufferSize`: capacity of the buffer between reader and sink.
    pub buffer_size: NonZeroUsize,
}

impl SinkConfig {
    /// How many appends may be in flight at once: `sink.partitionCount`, or
    /// [`DEFAULT_PARTITION_COUNT`].
    pub fn partition_count(&self) -> usize {
        self.partition_count
            .map_or(DEFAULT_PARTITION_COUNT, NonZeroUsize::get)
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
#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// `type: file`.
    File {
        /// `checkpoint.path`.
        path: PathBuf,
    },
    /// `type: mongo`.
    Mongo {
        /// `checkpoint.path`: the connection string (may hold a password).
        connection_string: String,
        /// `checkpoint.database`.
        database: String,
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

// The Debug impls hide passwords in connection strings: configs get logged.
impl fmt::Debug for ReaderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReaderConfig")
            .field("connection_string", &redact(&self.connection_string))
            .field("page_size", &self.page_size)
            .finish()
    }
}

impl fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkConfig")
            .field("connection_string", &redact(&self.connection_string))
            .field("partition_count", &self.partition_count)
            .field("buffer_size", &self.buffer_size)
            .finish()
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::File { path } => f.debug_struct("File").field("path", path).finish(),
            StoreConfig::Mongo {
                connection_string,
                database,
                instance_id,
            } => f
                .debug_struct("Mongo")
                .field("connection_string", &redact(connection_string))
                .field("database", database)
                .field("instance_id", instance_id)
                .finish(),
        }
    }
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
                "mongo {}, database {database}, collection checkpoint, instance {instance_id}",
                redact(connection_string)
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

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Canonical key spelling, dropped nulls and typed scalars, per the schema.
/// Unknown keys are kept as they are: deserialization rejects them with their
/// path. The error is `(key path, message)`.
fn normalize(value: Value, node: Node, path: &str) -> Result<Value, (String, String)> {
    match (node, value) {
        (Node::Map(fields), Value::Object(map)) => {
            let mut out = Map::new();
            for (key, value) in map {
                if value.is_null() {
                    continue;
                }
                let (name, node) = match fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(&key)) {
                    Some(&(name, node)) => (name.to_owned(), node),
                    None => (key, Node::Any),
                };
                let full = join(path, &name);
                if out.contains_key(&name) {
                    return Err((full, "given twice (keys are case-insensitive)".into()));
                }
                let value = normalize(value, node, &full)?;
                out.insert(name, value);
            }
            Ok(Value::Object(out))
        }
        // An empty section (`reader:` with nothing under it) is an empty map.
        (Node::Map(_), Value::Null) => Ok(Value::Object(Map::new())),
        (Node::Map(_), other) => Err((
            path.to_owned(),
            format!("expected a section of keys, found {}", describe(&other)),
        )),
        (Node::Str | Node::Int | Node::Bool, Value::String(s)) => {
            scalar(&s, node).map_err(|m| (path.to_owned(), m))
        }
        (Node::Str, Value::Number(n)) => Ok(Value::String(n.to_string())),
        (Node::Str, Value::Bool(b)) => Ok(Value::String(b.to_string())),
        (_, other) => Ok(other),
    }
}

/// A string (from an environment variable or a quoted YAML scalar) as the kind
/// of value the schema expects.
fn scalar(s: &str, node: Node) -> Result<Value, String> {
    match node {
        Node::Int => s
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| format!("expected a whole number, found {s:?}")),
        Node::Bool => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("expected true or false, found {s:?}")),
        },
        // An empty environment variable unsets an optional section or list.
        Node::Any if s.is_empty() => Ok(Value::Null),
        Node::Str | Node::Any | Node::Map(_) => Ok(Value::String(s.to_owned())),
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a section",
    }
}

/// Applies `REPLICATOR_SECTION_KEY=value` overrides (`_` or `__` between
/// levels, names case-insensitive). Returns which variable set which key.
fn apply_env(
    tree: &mut Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut origins = BTreeMap::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.to_ascii_uppercase().starts_with(ENV_PREFIX))
        .collect();
    // Deterministic: the environment's order is not.
    vars.sort();
    for (var, value) in vars {
        let env_err = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        let segments: Vec<&str> = var[ENV_PREFIX.len()..]
            .split('_')
            .filter(|s| !s.is_empty())
            .collect();
        if segments.is_empty() {
            return Err(env_err("names no configuration key".into()));
        }
        // Resolve each segment against the schema, below `replicator`.
        let Node::Map(root) = SCHEMA else {
            unreachable!("the schema's root is a section")
        };
        let mut node = root[0].1;
        let mut names = vec!["replicator"];
        for (i, seg) in segments.iter().enumerate() {
            let Node::Map(fields) = node else {
                return Err(env_err(format!(
                    "{} has no key {seg:?} (it is not a section)",
                    names.join(".")
                )));
            };
            let Some(&(name, child)) = fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(seg))
            else {
                let known: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
                return Err(env_err(format!(
                    "{} has no key {seg:?}; known keys: {}",
                    names.join("."),
                    known.join(", ")
                )));
            };
            names.push(name);
            node = child;
            if matches!(node, Node::Any) && i + 1 < segments.len() {
                return Err(env_err(format!(
                    "{} cannot be set piecewise from the environment",
                    names.join(".")
                )));
            }
        }
        if let Node::Map(_) = node {
            return Err(env_err(format!(
                "{} is a section; name one of its keys",
                names.join(".")
            )));
        }
        let typed = scalar(&value, node).map_err(env_err)?;
        insert(tree, &names, typed);
        origins.insert(names.join("."), var.clone());
    }
    Ok(origins)
}

fn insert(tree: &mut Value, names: &[&str], value: Value) {
    let mut cur = tree;
    for name in &names[..names.len() - 1] {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let map = cur.as_object_mut().expect("made an object above");
        cur = map
            .entry((*name).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    let map = cur.as_object_mut().expect("made an object above");
    let last = names[names.len() - 1].to_owned();
    if value.is_null() {
        map.remove(&last);
    } else {
        map.insert(last, value);
    }
}

/// Deserializes the normalised tree and validates it.
fn build(tree: Value) -> Result<Config, ConfigError> {
    let root: raw::Root = serde_path_to_error::deserialize(tree).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::key(key, e.into_inner().to_string())
    })?;
    let Some(r) = root.replicator else {
        return Err(ConfigError::key(
            "replicator",
            "missing: the configuration must be under the root key `replicator`",
        ));
    };
    validate(r)
}

fn is_grpc(protocol: Option<&str>) -> Option<&str> {
    match protocol {
        None => None,
        Some(p) if p.eq_ignore_ascii_case("grpc") || p.is_empty() => None,
        Some(p) => Some(p),
    }
}

fn required(value: Option<String>, key: &str) -> Result<String, ConfigError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ConfigError::key(key, "required, but not set")),
    }
}

fn positive(value: Option<u64>, default: u64, key: &str) -> Result<u64, ConfigError> {
    match value {
        Some(0) => Err(ConfigError::key(key, "must be at least 1")),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

fn positive_usize(
    value: Option<u64>,
    default: u64,
    key: &str,
) -> Result<NonZeroUsize, ConfigError> {
    let v = positive(value, default, key)?;
    usize::try_from(v)
        .ok()
        .and_then(NonZeroUsize::new)
        .ok_or_else(|| ConfigError::key(key, format!("{v} is too large")))
}

fn is_set(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

fn validate(r: raw::Replicator) -> Result<Config, ConfigError> {
    let reader = r.reader.unwrap_or_default();
    if let Some(p) = is_grpc(reader.protocol.as_deref()) {
        return Err(ConfigError::key(
            "replicator.reader.protocol",
            format!(
                "{p:?} is not supported: only `grpc` is (the legacy TCP protocol is not); \
                 remove the key or set it to grpc"
            ),
        ));
    }
    if is_set(&reader.auth) {
        return Err(ConfigError::key(
            "replicator.reader.auth",
            "not supported: put the credentials in reader.connectionString (user:password@host)",
        ));
    }
    let reader = ReaderConfig {
        connection_string: required(
            reader.connection_string,
            "replicator.reader.connectionString",
        )?,
        page_size: positive_usize(reader.page_size, 1024, "replicator.reader.pageSize")?,
    };

    let sink = r.sink.unwrap_or_default();
    if let Some(p) = is_grpc(sink.protocol.as_deref()) {
        return Err(ConfigError::key(
            "replicator.sink.protocol",
            format!(
                "{p:?} is not supported: only `grpc` (EventStoreDB/KurrentDB) is; \
                 the TCP and Kafka writers are not"
            ),
        ));
    }
    if sink.partitioner.as_deref().is_some_and(|p| !p.is_empty()) {
        return Err(ConfigError::key(
            "replicator.sink.partitioner",
            "not supported: JavaScript partitioners are not; events are spread over \
             sink.partitionCount writers by stream name, keeping each stream in order",
        ));
    }
    if is_set(&sink.auth) {
        return Err(ConfigError::key(
            "replicator.sink.auth",
            "not supported: put the credentials in sink.connectionString (user:password@host)",
        ));
    }
    let sink = SinkConfig {
        connection_string: required(sink.connection_string, "replicator.sink.connectionString")?,
        partition_count: match sink.partition_count {
            None => None,
            v => Some(positive_usize(v, 1, "replicator.sink.partitionCount")?),
        },
        buffer_size: positive_usize(sink.buffer_size, 1000, "replicator.sink.bufferSize")?,
    };

    if r.scavenge == Some(true) {
        return Err(ConfigError::key(
            "replicator.scavenge",
            "`true` is not supported: the scavenge filter is not implemented; every event \
             still in the source is replicated. Set it to false or remove it",
        ));
    }
    if is_set(&r.filters) {
        return Err(ConfigError::key(
            "replicator.filters",
            "not supported: event filters are not implemented; every event is replicated. \
             Remove the filters (or leave the list empty)",
        ));
    }
    if let Some(t) = r.transform {
        match t.kind.as_deref() {
            None | Some("") => {}
            Some(k) if k.eq_ignore_ascii_case("default") => {}
            Some(k) => {
                return Err(ConfigError::key(
                    "replicator.transform.type",
                    format!(
                        "{k:?} is not supported: only `default` is (js and http transforms \
                         are not); events are copied unchanged"
                    ),
                ))
            }
        }
        if is_set(&t.config) {
            return Err(ConfigError::key(
                "replicator.transform.config",
                "not supported: it configures js and http transforms, which are not supported",
            ));
        }
        if t.buffer_size.is_some() {
            return Err(ConfigError::key(
                "replicator.transform.bufferSize",
                "not supported: it sizes js and http transforms, which are not supported",
            ));
        }
    }

    let checkpoint = validate_checkpoint(r.checkpoint.unwrap_or_default())?;
    let http = validate_http(r.http.unwrap_or_default())?;

    Ok(Config {
        reader,
        sink,
        checkpoint,
        run_continuously: r.run_continuously.unwrap_or(true),
        restart_on_failure: r.restart_on_failure.unwrap_or(true),
        restart_delay: Duration::from_secs(r.restart_delay_in_seconds.unwrap_or(5)),
        report_every: Duration::from_secs(positive(
            r.report_metrics_frequency_in_seconds,
            5,
            "replicator.reportMetricsFrequencyInSeconds",
        )?),
        http,
        call_timeout: Duration::from_secs(positive(
            r.call_timeout_in_seconds,
            20,
            "replicator.callTimeoutInSeconds",
        )?),
    })
}

fn validate_http(h: raw::Http) -> Result<HttpConfig, ConfigError> {
    let listen = match h.listen {
        None => Some(DEFAULT_HTTP_LISTEN.to_owned()),
        Some(l) if l.trim().is_empty() => None,
        Some(l) => {
            let l = l.trim().to_owned();
            // host:port, [v6]:port or v4:port; the host is resolved when bound.
            let port_ok = l
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok || l.contains("://") {
                return Err(ConfigError::key(
                    "replicator.http.listen",
                    format!(
                        "{l:?} is not an address to listen on: use host:port (e.g. \
                         0.0.0.0:5000 or 127.0.0.1:9000), or an empty string for no server"
                    ),
                ));
            }
            Some(l)
        }
    };
    Ok(HttpConfig {
        listen,
        unhealthy_after: Duration::from_secs(h.unhealthy_after_seconds.unwrap_or(10)),
    })
}

fn validate_checkpoint(c: raw::Checkpoint) -> Result<CheckpointConfig, ConfigError> {
    let kind = c.kind.as_deref().unwrap_or("file");
    let store = if kind.eq_ignore_ascii_case("file") {
        for (set, key) in [
            (c.database.is_some(), "replicator.checkpoint.database"),
            (c.instance_id.is_some(), "replicator.checkpoint.instanceId"),
        ] {
            if set {
                return Err(ConfigError::key(
                    key,
                    "only applies to checkpoint.type mongo, but the type is file",
                ));
            }
        }
        StoreConfig::File {
            path: PathBuf::from(
                c.path
                    .filter(|p| !p.trim().is_empty())
                    .unwrap_or_else(|| "./checkpoint".to_owned()),
            ),
        }
    } else if kind.eq_ignore_ascii_case("mongo") {
        let connection_string = required(c.path, "replicator.checkpoint.path").map_err(|_| {
            ConfigError::key(
                "replicator.checkpoint.path",
                "required for checkpoint.type mongo: the MongoDB connection string",
            )
        })?;
        if !connection_string.starts_with("mongodb://")
            && !connection_string.starts_with("mongodb+srv://")
        {
            return Err(ConfigError::key(
                "replicator.checkpoint.path",
                "for checkpoint.type mongo it must be a MongoDB connection string \
                 (mongodb://… or mongodb+srv://…)",
            ));
        }
        StoreConfig::Mongo {
            connection_string,
            database: non_empty(c.database, "replicator", "replicator.checkpoint.database")?,
            instance_id: non_empty(c.instance_id, "default", "replicator.checkpoint.instanceId")?,
        }
    } else {
        return Err(ConfigError::key(
            "replicator.checkpoint.type",
            format!("{kind:?} is not a checkpoint store: use file or mongo"),
        ));
    };

    let seeder = match c.seeder {
        None => None,
        Some(s) => {
            let kind = s.kind.as_deref().unwrap_or("none");
            if kind.eq_ignore_ascii_case("none") {
                if s.path.as_deref().is_some_and(|p| !p.is_empty()) {
                    return Err(ConfigError::key(
                        "replicator.checkpoint.seeder.path",
                        "set, but checkpoint.seeder.type is none: set the type to chaser \
                         to seed from this file, or remove the path",
                    ));
                }
                None
            } else if kind.eq_ignore_ascii_case("chaser") {
                let path = required(s.path, "replicator.checkpoint.seeder.path").map_err(|_| {
                    ConfigError::key(
                        "replicator.checkpoint.seeder.path",
                        "required for seeder type chaser: the backup's chaser.chk file",
                    )
                })?;
                Some(SeederConfig::Chaser {
                    path: PathBuf::from(path),
                })
            } else {
                return Err(ConfigError::key(
                    "replicator.checkpoint.seeder.type",
                    format!("{kind:?} is not a seeder: use none or chaser"),
                ));
            }
        }
    };

    Ok(CheckpointConfig {
        store,
        checkpoint_after: positive(
            c.checkpoint_after,
            1000,
            "replicator.checkpoint.checkpointAfter",
        )?,
        checkpoint_interval: Duration::from_secs(positive(
            c.checkpoint_interval_in_seconds,
            1,
            "replicator.checkpoint.checkpointIntervalInSeconds",
        )?),
        seeder,
    })
}

fn non_empty(value: Option<String>, default: &str, key: &str) -> Result<String, ConfigError> {
    match value {
        None => Ok(default.to_owned()),
        Some(v) if v.trim().is_empty() => Err(ConfigError::key(key, "must not be empty")),
        Some(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
replicator:
  reader:
    connectionString: "esdb://admin:changeit@source:2113?tls=false"
    protocol: "grpc"
    pageSize: 2048
  sink:
    connectionString: "esdb://target:2113?tls=false"
    partitionCount: 10
    protocol: grpc
    bufferSize: 500
  scavenge: false
  filters: []
  transform: null
  runContinuously: false
  restartOnFailure: false
  restartDelayInSeconds: 7
  reportMetricsFrequencyInSeconds: 3
  callTimeoutInSeconds: 15
  http:
    listen: "127.0.0.1:9000"
    unhealthyAfterSeconds: 30
  checkpoint:
    type: file
    path: "/data/checkpoint"
    checkpointAfter: 1
    checkpointIntervalInSeconds: 30
    seeder:
      type: chaser
      path: /backup/chaser.chk
"#;

    const MINIMAL: &str = "
replicator:
  reader:
    connectionString: esdb://source:2113
  sink:
    connectionString: esdb://target:2113
";

    fn load_env(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_yaml(
            yaml,
            Path::new("test.yaml"),
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        load_env(yaml, &[])
    }

    /// The error's key path and full message.
    fn key_err(yaml: &str) -> (String, String) {
        match load(yaml) {
            Err(e @ ConfigError::Key { .. }) => {
                let ConfigError::Key { ref key, .. } = e else {
                    unreachable!()
                };
                (key.clone(), e.to_string())
            }
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    fn with(extra: &str) -> String {
        format!("{MINIMAL}{extra}")
    }

    #[test]
    fn reads_every_supported_key() {
        let c = load(GOOD).unwrap();
        assert_eq!(
            c.reader.connection_string,
            "esdb://admin:changeit@source:2113?tls=false"
        );
        assert_eq!(c.reader.page_size.get(), 2048);
        assert_eq!(c.sink.connection_string, "esdb://target:2113?tls=false");
        assert_eq!(c.sink.partition_count(), 10);
        assert_eq!(c.sink.buffer_size.get(), 500);
        assert!(!c.run_continuously);
        assert!(!c.restart_on_failure);
        assert_eq!(c.restart_delay, Duration::from_secs(7));
        assert_eq!(c.report_every, Duration::from_secs(3));
        assert_eq!(c.call_timeout, Duration::from_secs(15));
        assert_eq!(
            c.http,
            HttpConfig {
                listen: Some("127.0.0.1:9000".into()),
                unhealthy_after: Duration::from_secs(30),
            }
        );
        assert_eq!(
            c.checkpoint,
            CheckpointConfig {
                store: StoreConfig::File {
                    path: "/data/checkpoint".into()
                },
                checkpoint_after: 1,
                checkpoint_interval: Duration::from_secs(30),
                seeder: Some(SeederConfig::Chaser {
                    path: "/backup/chaser.chk".into()
                }),
            }
        );
    }

    #[test]
    fn defaults_match_the_csharp_tool() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.reader.page_size.get(), 1024);
        assert_eq!(c.sink.partition_count, None);
        assert_eq!(c.sink.partition_count(), DEFAULT_PARTITION_COUNT);
        assert_eq!(c.sink.buffer_size.get(), 1000);
        assert!(c.run_continuously);
        assert!(c.restart_on_failure);
        assert_eq!(c.restart_delay, Duration::from_secs(5));
        assert_eq!(c.report_every, Duration::from_secs(5));
        assert_eq!(c.call_timeout, Duration::from_secs(20));
        assert_eq!(c.http.listen.as_deref(), Some("0.0.0.0:5000"));
        assert_eq!(c.http.unhealthy_after, Duration::from_secs(10));
        assert_eq!(
            c.checkpoint,
            CheckpointConfig {
                store: StoreConfig::File {
                    path: "./checkpoint".into()
                },
                checkpoint_after: 1000,
                checkpoint_interval: Duration::from_secs(1),
                seeder: None,
            }
        );
    }

    #[test]
    fn mongo_store_with_defaults_and_explicit_settings() {
        let c = load(&with(
            "  checkpoint:\n    type: mongo\n    path: mongodb://u:p@mongo:27017\n",
        ))
        .unwrap();
        assert_eq!(
            c.checkpoint.store,
            StoreConfig::Mongo {
                connection_string: "mongodb://u:p@mongo:27017".into(),
                database: "replicator".into(),
                instance_id: "default".into(),
            }
        );
        let c = load(&with(
            "  checkpoint:\n    type: mongo\n    path: mongodb://mongo\n    database: other\n    instanceId: two\n",
        ))
        .unwrap();
        assert_eq!(
            c.checkpoint.store,
            StoreConfig::Mongo {
                connection_string: "mongodb://mongo".into(),
                database: "other".into(),
                instance_id: "two".into(),
            }
        );
    }

    #[test]
    fn mongo_needs_a_connection_string() {
        let (key, msg) = key_err(&with("  checkpoint:\n    type: mongo\n"));
        assert_eq!(key, "replicator.checkpoint.path");
        assert!(msg.contains("MongoDB connection string"), "{msg}");
        let (key, _) = key_err(&with(
            "  checkpoint:\n    type: mongo\n    path: ./checkpoint\n",
        ));
        assert_eq!(key, "replicator.checkpoint.path");
    }

    #[test]
    fn mongo_only_keys_are_rejected_for_the_file_store() {
        let (key, msg) = key_err(&with("  checkpoint:\n    database: x\n"));
        assert_eq!(key, "replicator.checkpoint.database");
        assert!(msg.contains("mongo"), "{msg}");
    }

    #[test]
    fn keys_match_case_insensitively_like_dotnet() {
        let c = load(
            "Replicator:\n  Reader:\n    ConnectionString: esdb://a\n  SINK:\n    connectionstring: esdb://b\n    PartitionCount: 3\n",
        )
        .unwrap();
        assert_eq!(c.reader.connection_string, "esdb://a");
        assert_eq!(c.sink.partition_count(), 3);
    }

    #[test]
    fn the_same_key_in_two_spellings_is_an_error() {
        let (key, _) = key_err(&with("  RunContinuously: true\n  runContinuously: false\n"));
        assert_eq!(key, "replicator.runContinuously");
    }

    #[test]
    fn quoted_numbers_and_booleans_are_accepted() {
        let c = load(&with(
            "  runContinuously: \"False\"\n  checkpoint:\n    checkpointAfter: \"10\"\n",
        ))
        .unwrap();
        assert!(!c.run_continuously);
        assert_eq!(c.checkpoint.checkpoint_after, 10);
    }

    #[test]
    fn each_unsupported_key_is_an_error_naming_it() {
        let cases = [
            ("  reader:\n    connectionString: esdb://a\n    protocol: tcp\n  sink:\n    connectionString: esdb://b\n",
             "replicator.reader.protocol", "tcp"),
            ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n    protocol: kafka\n",
             "replicator.sink.protocol", "kafka"),
            ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n    protocol: tcp\n",
             "replicator.sink.protocol", "tcp"),
            ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n    partitioner: ./p.js\n",
             "replicator.sink.partitioner", "JavaScript"),
            ("  reader:\n    connectionString: esdb://a\n    auth:\n      type: oauthClientCredentials\n  sink:\n    connectionString: esdb://b\n",
             "replicator.reader.auth", "credentials"),
            ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n  scavenge: true\n",
             "replicator.scavenge", "scavenge"),
            ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n  filters:\n    - type: eventType\n      include: '^Order'\n",
             "replicator.filters", "filters"),
            ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n  transform:\n    type: js\n    config: ./t.js\n",
             "replicator.transform.type", "js"),
            ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n  transform:\n    type: http\n",
             "replicator.transform.type", "http"),
            ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n  transform:\n    config: x\n",
             "replicator.transform.config", "not supported"),
            ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n  checkpoint:\n    type: redis\n",
             "replicator.checkpoint.type", "redis"),
            ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n  checkpoint:\n    seeder:\n      type: file\n",
             "replicator.checkpoint.seeder.type", "file"),
        ];
        for (body, want_key, want_word) in cases {
            let (key, msg) = key_err(&format!("replicator:\n{body}"));
            assert_eq!(key, want_key, "for:\n{body}");
            assert!(msg.contains(want_key), "{msg}");
            assert!(msg.contains(want_word), "{msg} should mention {want_word}");
        }
    }

    #[test]
    fn the_default_transform_and_empty_unsupported_keys_are_accepted() {
        // As the C# Helm chart writes them.
        let c = load(&with(
            "  scavenge: false\n  filters: []\n  transform:\n    type: default\n",
        ));
        assert!(c.is_ok(), "{c:?}");
        let c = load(
            "replicator:\n  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n    partitioner:\n  transform: null\n",
        );
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_full_path() {
        let (key, msg) = key_err(
            &with("  sink:\n    connectionString: esdb://b\n    foo: 1\n")
                .replace("  sink:\n    connectionString: esdb://target:2113\n", ""),
        );
        assert_eq!(key, "replicator.sink.foo");
        assert!(msg.contains("foo"), "{msg}");

        let (key, _) = key_err(&with("  checkpoint:\n    seeder:\n      kind: chaser\n"));
        assert_eq!(key, "replicator.checkpoint.seeder.kind");

        let (key, _) = key_err(&with("  bogus: true\n"));
        assert_eq!(key, "replicator.bogus");

        let (key, _) = key_err(&format!("{MINIMAL}Logging:\n  level: info\n"));
        assert_eq!(key, "Logging");
    }

    #[test]
    fn missing_required_keys_are_named() {
        let (key, msg) = key_err("replicator:\n  sink:\n    connectionString: esdb://b\n");
        assert_eq!(key, "replicator.reader.connectionString");
        assert!(msg.contains("required"), "{msg}");
        let (key, _) = key_err("replicator:\n  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString:\n");
        assert_eq!(key, "replicator.sink.connectionString");
        let (key, _) = key_err("other: 1\n");
        assert_eq!(key, "other");
        let (key, _) = key_err("");
        assert_eq!(key, "replicator");
    }

    #[test]
    fn bad_values_are_named() {
        let (key, msg) = key_err(&with("  checkpoint:\n    checkpointAfter: 0\n"));
        assert_eq!(key, "replicator.checkpoint.checkpointAfter");
        let (key, _) = key_err(&with("  checkpoint:\n    checkpointIntervalInSeconds: 0\n"));
        assert_eq!(key, "replicator.checkpoint.checkpointIntervalInSeconds");
        assert!(msg.contains("at least 1"), "{msg}");
        let (key, _) = key_err(&with("  runContinuously: maybe\n"));
        assert_eq!(key, "replicator.runContinuously");
        let (key, _) = key_err(&with("  restartDelayInSeconds: -1\n"));
        assert_eq!(key, "replicator.restartDelayInSeconds");
        let (key, _) = key_err(&with("  checkpoint: ./checkpoint\n"));
        assert_eq!(key, "replicator.checkpoint");
        let (key, msg) = key_err(&with("  checkpoint:\n    seeder:\n      type: chaser\n"));
        assert_eq!(key, "replicator.checkpoint.seeder.path");
        assert!(msg.contains("chaser.chk"), "{msg}");
    }

    #[test]
    fn the_status_server_is_configured_by_http_keys_and_the_environment() {
        let c = load(&with("  HTTP:\n    Listen: \"[::1]:0\"\n")).unwrap();
        assert_eq!(c.http.listen.as_deref(), Some("[::1]:0"));
        let c = load(&with("  http:\n    listen: \"\"\n")).unwrap();
        assert_eq!(c.http.listen, None, "an empty string turns the server off");
        let c = load_env(
            MINIMAL,
            &[
                ("REPLICATOR_HTTP_LISTEN", "127.0.0.1:9000"),
                ("REPLICATOR_HTTP_UNHEALTHYAFTERSECONDS", "3"),
                ("REPLICATOR_CALLTIMEOUTINSECONDS", "7"),
            ],
        )
        .unwrap();
        assert_eq!(c.http.listen.as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(c.http.unhealthy_after, Duration::from_secs(3));
        assert_eq!(c.call_timeout, Duration::from_secs(7));
        let c = load_env(MINIMAL, &[("REPLICATOR_HTTP_LISTEN", "")]).unwrap();
        assert_eq!(c.http.listen, None);
    }

    #[test]
    fn bad_status_server_settings_are_named() {
        for listen in [
            "5000",
            "localhost",
            "http://0.0.0.0:5000",
            "0.0.0.0:http",
            ":5000",
        ] {
            let (key, msg) = key_err(&with(&format!("  http:\n    listen: \"{listen}\"\n")));
            assert_eq!(key, "replicator.http.listen", "{listen}");
            assert!(msg.contains("host:port"), "{msg}");
        }
        let (key, _) = key_err(&with("  http:\n    unhealthyAfterSeconds: soon\n"));
        assert_eq!(key, "replicator.http.unhealthyAfterSeconds");
        let (key, msg) = key_err(&with("  callTimeoutInSeconds: 0\n"));
        assert_eq!(key, "replicator.callTimeoutInSeconds");
        assert!(msg.contains("at least 1"), "{msg}");
        let err = load_env(MINIMAL, &[("REPLICATOR_HTTP_LISTEN", "nowhere")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("replicator.http.listen"), "{msg}");
        assert!(msg.contains("REPLICATOR_HTTP_LISTEN"), "{msg}");
    }

    #[test]
    fn bad_yaml_names_the_file_and_line() {
        let err = load("replicator:\n  reader: [unclosed\n").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Yaml { .. }), "{err:?}");
        assert!(msg.contains("test.yaml"), "{msg}");
        assert!(
            msg.contains("line 2") || msg.contains(":2:") || msg.contains("2:"),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Config::load(Path::new("/nonexistent/appsettings.yaml")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/appsettings.yaml"),
            "{err}"
        );
    }

    #[test]
    fn environment_overrides_keys_case_insensitively() {
        let c = load_env(
            MINIMAL,
            &[
                ("REPLICATOR_SINK_PARTITIONCOUNT", "4"),
                ("REPLICATOR_READER_CONNECTIONSTRING", "esdb://other:2113"),
                ("REPLICATOR__CHECKPOINT__CHECKPOINTAFTER", "25"),
                ("REPLICATOR_CHECKPOINT_CHECKPOINTINTERVALINSECONDS", "600"),
                ("replicator_runcontinuously", "false"),
                ("REPLICATOR_CHECKPOINT_SEEDER_TYPE", "chaser"),
                ("REPLICATOR_CHECKPOINT_SEEDER_PATH", "/b/chaser.chk"),
                ("PATH", "/usr/bin"),
            ],
        )
        .unwrap();
        assert_eq!(c.sink.partition_count(), 4);
        assert_eq!(c.reader.connection_string, "esdb://other:2113");
        assert_eq!(c.checkpoint.checkpoint_after, 25);
        assert_eq!(c.checkpoint.checkpoint_interval, Duration::from_secs(600));
        assert!(!c.run_continuously);
        assert_eq!(
            c.checkpoint.seeder,
            Some(SeederConfig::Chaser {
                path: "/b/chaser.chk".into()
            })
        );
    }

    #[test]
    fn environment_can_supply_required_keys() {
        let c = load_env(
            "replicator: {}\n",
            &[
                ("REPLICATOR_READER_CONNECTIONSTRING", "esdb://a"),
                ("REPLICATOR_SINK_CONNECTIONSTRING", "esdb://b"),
            ],
        )
        .unwrap();
        assert_eq!(c.sink.connection_string, "esdb://b");
    }

    #[test]
    fn environment_errors_name_the_variable() {
        for (var, value, word) in [
            ("REPLICATOR_SINK_FOO", "1", "replicator.sink has no key"),
            ("REPLICATOR_SINK_PARTITIONCOUNT", "many", "whole number"),
            ("REPLICATOR_SINK", "x", "section"),
            ("REPLICATOR_FILTERS_0_TYPE", "eventType", "piecewise"),
            ("REPLICATOR_", "x", "no configuration key"),
        ] {
            let err = load_env(MINIMAL, &[(var, value)]).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ConfigError::Env { .. }), "{err:?}");
            assert!(msg.contains(var), "{msg}");
            assert!(msg.contains(word), "{msg} should mention {word}");
        }
    }

    #[test]
    fn an_unsupported_value_from_the_environment_names_the_variable() {
        let err = load_env(MINIMAL, &[("REPLICATOR_SINK_PROTOCOL", "kafka")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("replicator.sink.protocol"), "{msg}");
        assert!(msg.contains("REPLICATOR_SINK_PROTOCOL"), "{msg}");
    }

    #[test]
    fn passwords_are_hidden_in_the_debug_output() {
        let c = load(GOOD).unwrap();
        assert!(!format!("{c:?}").contains("changeit"));
    }

    #[test]
    fn the_schema_lists_every_key_the_structs_accept() {
        // Every schema leaf set at once deserializes: the schema and the raw
        // structs agree (deny_unknown_fields would reject a schema-only key).
        fn fill(node: Node) -> Value {
            match node {
                Node::Str => Value::from("x"),
                Node::Int => Value::from(1),
                Node::Bool => Value::from(false),
                Node::Any => Value::Null,
                Node::Map(fields) => Value::Object(
                    fields
                        .iter()
                        .map(|(k, n)| ((*k).to_owned(), fill(*n)))
                        .collect(),
                ),
            }
        }
        let tree = fill(SCHEMA);
        let root: Result<raw::Root, _> = serde_path_to_error::deserialize(tree);
        assert!(
            root.is_ok(),
            "{:?}",
            root.err().map(|e| e.path().to_string())
        );
    }
}
