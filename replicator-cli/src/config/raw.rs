//! The serde view of the file: every key the C# tool knows, spelled as in its
//! YAML. Validation turns it into [`super::Config`].

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
    /// The C# scavenge filter.
    pub scavenge: Option<bool>,
    /// The C# event filters.
    pub filters: Option<Vec<Filter>>,
    /// The C# transform.
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
    /// `grpc` (or absent), or `tcp` (EventStoreDB v5).
    pub protocol: Option<String>,
    /// Events per read request.
    pub page_size: Option<u64>,
    /// The C# tool's OAuth settings (unsupported).
    pub auth: Option<Value>,
    /// Ours: a bearer token for every call to the source.
    pub token: Option<String>,
    /// Ours: the file holding that token, read again when it changes.
    pub token_file: Option<String>,
}

/// `replicator.sink`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Sink {
    /// The target cluster's connection string.
    pub connection_string: Option<String>,
    /// `grpc` (or absent) or `kafka`; `tcp` is unsupported.
    pub protocol: Option<String>,
    /// How many appends may be in flight at once (stream order).
    pub partition_count: Option<u64>,
    /// Ours: `source` (the default) or `stream`.
    pub order: Option<String>,
    /// A JavaScript partitioner: the file.
    pub partitioner: Option<String>,
    /// Capacity of the buffer between reader and sink, in events.
    pub buffer_size: Option<u64>,
    /// The C# tool's OAuth settings (unsupported).
    pub auth: Option<Value>,
    /// Ours: a bearer token for every call to the target.
    pub token: Option<String>,
    /// Ours: the file holding that token, read again when it changes.
    pub token_file: Option<String>,
    /// Kafka: the JavaScript file whose `route` gives topic and key.
    pub router: Option<String>,
    /// Ours, Kafka: `skip` (the default) or `tombstone`.
    pub deletes: Option<String>,
    /// Ours, Kafka: top-level metadata keys sent as headers.
    pub metadata_headers: Option<Value>,
}

/// `replicator.transform`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Transform {
    /// `default`, `js` or `http`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The script of a `js` transform, the URL of an `http` one.
    pub config: Option<String>,
    /// Records in a `js` or `http` transform at once.
    pub buffer_size: Option<u64>,
    /// Ours: add the C# default transform's `$original…` metadata.
    pub original_metadata: Option<bool>,
}

/// One entry of `replicator.filters`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Filter {
    /// `eventType` or `streamName`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Records must match this regular expression.
    pub include: Option<String>,
    /// Records must not match this regular expression.
    pub exclude: Option<String>,
}

/// `replicator.checkpoint`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Checkpoint {
    /// `file`, `mongo` or `stream`.
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
    /// MongoDB document id, or the name of the target stream.
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
