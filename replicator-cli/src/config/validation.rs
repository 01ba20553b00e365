//! Validation: the normalised tree deserialized into the raw structs, then
//! checked key by key into [`super::Config`], every error naming its key.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::raw;
use super::{
    CheckpointConfig, Config, ConfigError, DeleteMode, FilterConfig, FilterKind, HttpConfig,
    KafkaConfig, ReaderConfig, ReaderProtocol, SeederConfig, SinkConfig, SinkProtocol, StoreConfig,
    TokenConfig, TransformConfig, DEFAULT_HTTP_LISTEN,
};
use replicator_core::secret::ConnectionString;
use replicator_esdb::WriteOrder;
use replicator_transform::filter::Filter;

/// Deserializes the normalised tree and validates it.
pub(super) fn build(tree: Value) -> Result<Config, ConfigError> {
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
    let protocol = match reader.protocol.as_deref().map(str::trim) {
        None | Some("") => ReaderProtocol::Grpc,
        Some(p) if p.eq_ignore_ascii_case("grpc") => ReaderProtocol::Grpc,
        Some(p) if p.eq_ignore_ascii_case("tcp") => ReaderProtocol::Tcp,
        Some(p) => {
            return Err(ConfigError::key(
                "replicator.reader.protocol",
                format!("{p:?} is not a protocol: use grpc (the default) or tcp"),
            ))
        }
    };
    if is_set(&reader.auth) {
        return Err(ConfigError::key(
            "replicator.reader.auth",
            "not supported: put the credentials in reader.connectionString (user:password@host)",
        ));
    }
    let token = validate_token(reader.token, reader.token_file, "replicator.reader")?;
    if token.is_some() && protocol == ReaderProtocol::Tcp {
        return Err(ConfigError::key(
            "replicator.reader.token",
            "bearer tokens are for gRPC; reader.protocol is tcp (v5 has no OAuth)",
        ));
    }
    let reader = ReaderConfig {
        connection_string: required(
            reader.connection_string,
            "replicator.reader.connectionString",
        )?
        .into(),
        token,
        protocol,
        page_size: positive_usize(reader.page_size, 1024, "replicator.reader.pageSize")?,
    };
    if protocol == ReaderProtocol::Tcp && reader.page_size.get() > 4096 {
        return Err(ConfigError::key(
            "replicator.reader.pageSize",
            format!(
                "{} is too large for reader.protocol: tcp (at most 4096, the server's limit)",
                reader.page_size
            ),
        ));
    }

    let sink = validate_sink(r.sink.unwrap_or_default())?;

    let filters = validate_filters(r.filters.unwrap_or_default())?;
    let transform = validate_transform(r.transform.unwrap_or_default())?;

    let checkpoint = validate_checkpoint(
        r.checkpoint.unwrap_or_default(),
        &sink.connection_string,
        &sink.token,
    )?;
    if sink.protocol == SinkProtocol::Kafka
        && matches!(checkpoint.store, StoreConfig::Stream { .. })
    {
        return Err(ConfigError::key(
            "replicator.checkpoint.type",
            "stream keeps the checkpoint in the target cluster, and replicator.sink.protocol \
             is kafka: use file or mongo",
        ));
    }
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
        filters,
        scavenge: r.scavenge.unwrap_or(false),
        transform,
    })
}

fn validate_sink(sink: raw::Sink) -> Result<SinkConfig, ConfigError> {
    let protocol = match is_grpc(sink.protocol.as_deref()).map(str::trim) {
        None => SinkProtocol::Grpc,
        Some(p) if p.eq_ignore_ascii_case("kafka") => SinkProtocol::Kafka,
        Some(p) => {
            return Err(ConfigError::key(
                "replicator.sink.protocol",
                format!(
                    "{p:?} is not supported: use grpc (the default: EventStoreDB/KurrentDB) \
                     or kafka; the TCP writer is not supported"
                ),
            ))
        }
    };
    if is_set(&sink.auth) {
        return Err(ConfigError::key(
            "replicator.sink.auth",
            "not supported: put the credentials in sink.connectionString (user:password@host)",
        ));
    }
    let connection_string = required(sink.connection_string, "replicator.sink.connectionString")?;
    let token = validate_token(sink.token, sink.token_file, "replicator.sink")?;
    if token.is_some() && protocol == SinkProtocol::Kafka {
        return Err(ConfigError::key(
            "replicator.sink.token",
            "bearer tokens are for an EventStoreDB/KurrentDB target; sink.protocol is kafka",
        ));
    }
    let router = sink
        .router
        .filter(|p| !p.trim().is_empty())
        .map(PathBuf::from);
    let kafka = match protocol {
        SinkProtocol::Grpc => {
            for (set, key) in [
                (router.is_some(), "replicator.sink.router"),
                (sink.deletes.is_some(), "replicator.sink.deletes"),
                (
                    is_set(&sink.metadata_headers),
                    "replicator.sink.metadataHeaders",
                ),
            ] {
                if set {
                    return Err(ConfigError::key(
                        key,
                        "only applies to sink.protocol kafka, but the protocol is grpc",
                    ));
                }
            }
            None
        }
        SinkProtocol::Kafka => {
            replicator_kafka::parse_settings(&connection_string).map_err(|e| {
                ConfigError::key(
                    "replicator.sink.connectionString",
                    format!(
                        "{} (for sink.protocol kafka: librdkafka settings as key=value pairs \
                         separated by `;`, e.g. bootstrap.servers=kafka:9092;linger.ms=10)",
                        error_chain(&e).trim_start_matches("sink.connectionString: ")
                    ),
                )
            })?;
            if sink.order.as_deref().is_some_and(|o| !o.trim().is_empty()) {
                return Err(ConfigError::key(
                    "replicator.sink.order",
                    "does not apply to sink.protocol kafka: the Kafka sink keeps the source's \
                     order per record key through one writer",
                ));
            }
            if sink
                .partitioner
                .as_deref()
                .is_some_and(|p| !p.trim().is_empty())
            {
                return Err(ConfigError::key(
                    "replicator.sink.partitioner",
                    "does not apply to sink.protocol kafka: use sink.router to choose each \
                     event's topic and key",
                ));
            }
            let deletes = match sink.deletes.as_deref().map(str::trim) {
                None | Some("") => DeleteMode::Skip,
                Some(d) if d.eq_ignore_ascii_case("skip") => DeleteMode::Skip,
                Some(d) if d.eq_ignore_ascii_case("tombstone") => DeleteMode::Tombstone,
                Some(d) => {
                    return Err(ConfigError::key(
                        "replicator.sink.deletes",
                        format!(
                            "{d:?} is not a choice: skip (the default: deleted streams send \
                             nothing) or tombstone (a null-value record per deleted stream)"
                        ),
                    ))
                }
            };
            let metadata_headers = match sink.metadata_headers {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(s)) => s
                    .split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect(),
                Some(Value::Array(keys)) => keys
                    .into_iter()
                    .enumerate()
                    .map(|(i, k)| match k {
                        Value::String(k) if !k.trim().is_empty() => Ok(k),
                        other => Err(ConfigError::key(
                            format!("replicator.sink.metadataHeaders[{i}]"),
                            format!("{other} is not a metadata key (a non-empty string)"),
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                Some(other) => {
                    return Err(ConfigError::key(
                        "replicator.sink.metadataHeaders",
                        format!("{other} is not a list of metadata keys"),
                    ))
                }
            };
            Some(KafkaConfig {
                router: router.clone(),
                deletes,
                metadata_headers,
            })
        }
    };
    Ok(SinkConfig {
        protocol,
        kafka,
        connection_string: connection_string.into(),
        token,
        partition_count: match sink.partition_count {
            None => None,
            v => Some(positive_usize(v, 1, "replicator.sink.partitionCount")?),
        },
        order: match sink.order.as_deref().map(str::trim) {
            None | Some("") => WriteOrder::Source,
            Some(v) if v.eq_ignore_ascii_case("source") => WriteOrder::Source,
            Some(v) if v.eq_ignore_ascii_case("stream") => WriteOrder::Stream,
            Some(v) => {
                return Err(ConfigError::key(
                    "replicator.sink.order",
                    format!(
                        "{v:?} is not an order: `source` (the default: the target's $all in \
                         the source's order) or `stream` (only each stream's order, written \
                         by partitionCount concurrent writers)"
                    ),
                ))
            }
        },
        buffer_size: positive_usize(sink.buffer_size, 1000, "replicator.sink.bufferSize")?,
        partitioner: sink
            .partitioner
            .filter(|p| !p.trim().is_empty())
            .map(PathBuf::from),
    })
}

fn validate_filters(filters: Vec<raw::Filter>) -> Result<Vec<FilterConfig>, ConfigError> {
    filters
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let key = |field: &str| format!("replicator.filters[{i}].{field}");
            let kind = match f.kind.as_deref().map(str::trim) {
                None | Some("") => {
                    return Err(ConfigError::key(
                        key("type"),
                        "required: eventType or streamName",
                    ))
                }
                Some(k) => FilterKind::parse(k).map_err(|m| ConfigError::key(key("type"), m))?,
            };
            let include = f.include.filter(|p| !p.is_empty());
            let exclude = f.exclude.filter(|p| !p.is_empty());
            // Compiled now so that a bad pattern stops the start, naming it.
            Filter::new(kind, include.as_deref(), exclude.as_deref())
                .map_err(|e| ConfigError::key(key(e.field.key()), error_chain(&e)))?;
            Ok(FilterConfig {
                kind,
                include,
                exclude,
            })
        })
        .collect()
}

/// An error with its causes, `a: b`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn validate_transform(t: raw::Transform) -> Result<TransformConfig, ConfigError> {
    let kind = t.kind.as_deref().map(str::trim).unwrap_or("");
    let config = t.config.filter(|c| !c.trim().is_empty());
    let in_flight = || positive_usize(t.buffer_size, 1, "replicator.transform.bufferSize");
    let original_metadata = t.original_metadata.unwrap_or(false);
    if kind.is_empty() || kind.eq_ignore_ascii_case("default") {
        if config.is_some() {
            return Err(ConfigError::key(
                "replicator.transform.config",
                "set, but transform.type is default: it names the script of a js transform \
                 or the URL of an http one",
            ));
        }
        if t.buffer_size.is_some() {
            return Err(ConfigError::key(
                "replicator.transform.bufferSize",
                "set, but transform.type is default: it sizes js and http transforms",
            ));
        }
        return Ok(TransformConfig::Default { original_metadata });
    }
    if original_metadata {
        return Err(ConfigError::key(
            "replicator.transform.originalMetadata",
            format!(
                "only applies to transform.type default, but the type is {kind}: a {kind} \
                 transform writes the metadata it wants"
            ),
        ));
    }
    let required = |what: &str| {
        ConfigError::key(
            "replicator.transform.config",
            format!("required for transform.type {kind}: {what}"),
        )
    };
    if kind.eq_ignore_ascii_case("js") {
        let path = config.ok_or_else(|| required("the JavaScript file"))?;
        Ok(TransformConfig::Js {
            path: PathBuf::from(path),
            in_flight: in_flight()?,
        })
    } else if kind.eq_ignore_ascii_case("http") {
        let url = config.ok_or_else(|| required("the URL to POST each event to"))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::key(
                "replicator.transform.config",
                format!(
                    "{:?} is not an http:// or https:// URL",
                    ConnectionString::from(&url)
                ),
            ));
        }
        Ok(TransformConfig::Http {
            url: url.into(),
            in_flight: in_flight()?,
        })
    } else {
        Err(ConfigError::key(
            "replicator.transform.type",
            format!("{kind:?} is not a transform: use default, js or http"),
        ))
    }
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

/// `target` is the sink's connection string: `type: stream` keeps the
/// checkpoint there.
/// `token` or `tokenFile` of `section` (one at most; blank is unset).
fn validate_token(
    token: Option<String>,
    file: Option<String>,
    section: &str,
) -> Result<Option<TokenConfig>, ConfigError> {
    let token = token.filter(|t| !t.trim().is_empty());
    let file = file.filter(|f| !f.trim().is_empty());
    match (token, file) {
        (Some(_), Some(_)) => Err(ConfigError::key(
            format!("{section}.token"),
            format!("set either {section}.token or {section}.tokenFile, not both"),
        )),
        (Some(token), None) => Ok(Some(TokenConfig::Inline(token.trim().to_owned()))),
        (None, Some(file)) => Ok(Some(TokenConfig::File(PathBuf::from(file.trim())))),
        (None, None) => Ok(None),
    }
}

fn validate_checkpoint(
    c: raw::Checkpoint,
    target: &ConnectionString,
    target_token: &Option<TokenConfig>,
) -> Result<CheckpointConfig, ConfigError> {
    let kind = c.kind.as_deref().unwrap_or("file");
    let store = if kind.eq_ignore_ascii_case("file") {
        for (set, key, applies) in [
            (
                c.database.is_some(),
                "replicator.checkpoint.database",
                "mongo",
            ),
            (
                c.instance_id.is_some(),
                "replicator.checkpoint.instanceId",
                "mongo or stream",
            ),
        ] {
            if set {
                return Err(ConfigError::key(
                    key,
                    format!("only applies to checkpoint.type {applies}, but the type is file"),
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
            connection_string: connection_string.into(),
            database: non_empty(c.database, "replicator", "replicator.checkpoint.database")?,
            instance_id: non_empty(c.instance_id, "default", "replicator.checkpoint.instanceId")?,
        }
    } else if kind.eq_ignore_ascii_case("stream") {
        if c.path.as_deref().is_some_and(|p| !p.trim().is_empty()) {
            return Err(ConfigError::key(
                "replicator.checkpoint.path",
                "does not apply to checkpoint.type stream: the checkpoint is kept in a stream \
                 of the target (replicator.sink.connectionString); remove the path",
            ));
        }
        if c.database.is_some() {
            return Err(ConfigError::key(
                "replicator.checkpoint.database",
                "only applies to checkpoint.type mongo, but the type is stream",
            ));
        }
        StoreConfig::Stream {
            connection_string: target.clone(),
            token: target_token.clone(),
            instance_id: non_empty(c.instance_id, "default", "replicator.checkpoint.instanceId")?,
        }
    } else {
        return Err(ConfigError::key(
            "replicator.checkpoint.type",
            format!("{kind:?} is not a checkpoint store: use file, mongo or stream"),
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
