//! Configuration → components → pipeline: everything `replicator run` does.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use replicator_checkpoint::{chaser, seed_if_empty, FileCheckpointStore, MongoCheckpointStore};
use replicator_core::secret::ConnectionString;
use replicator_core::{
    CheckpointStore, Partitioner, Pipeline, PipelineConfig, PipelineError, RunSummary, Sink,
    Transform,
};
use replicator_esdb::cluster::{BearerToken, GrpcClient, SourceClient};
use replicator_esdb::tcp::TcpSource;
use replicator_esdb::{
    EsdbReader, EsdbReaderConfig, EsdbSink, EsdbSinkConfig, RevisionMode, ScavengeFilter,
    StreamCheckpointStore, TcpReader, TcpReaderConfig, WriteOrder,
};
use replicator_kafka::{KafkaSink, KafkaSinkConfig};
use replicator_transform::filter::Filter;
use replicator_transform::http::HttpTransform;
use replicator_transform::js::{JsPartitioner, JsRouter, JsTransform};
use replicator_transform::original::OriginalMetadata;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{
    CheckpointConfig, Config, KafkaConfig, ReaderProtocol, SeederConfig, SinkProtocol, StoreConfig,
    TokenConfig, TransformConfig,
};
use crate::status::{Status, StatusServer};
use crate::time;
use replicator_core::Health;

/// Loads the configuration file, naming it in the error.
///
/// # Errors
/// When the file cannot be read or the configuration is invalid.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).with_context(|| format!("cannot load the configuration {}", path.display()))
}

/// Opens the configured checkpoint store for a one-shot command: as
/// [`open_store_within`] with the default call deadline.
///
/// # Errors
/// As [`open_store_within`].
pub(crate) async fn open_store(
    config: &CheckpointConfig,
) -> anyhow::Result<Arc<dyn CheckpointStore>> {
    open_store_within(config, DEFAULT_CALL_TIMEOUT).await
}

/// `callTimeoutInSeconds`' default, for commands that open a store alone.
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Opens the configured checkpoint store. The MongoDB store connects and reads
/// its document now, so bad credentials surface at start-up. Each request of
/// the stream store gets half of `call_timeout`, as the sink's do.
///
/// # Errors
/// When the MongoDB store cannot be reached or used, or the target's
/// connection string does not parse for the stream store.
pub(crate) async fn open_store_within(
    config: &CheckpointConfig,
    call_timeout: Duration,
) -> anyhow::Result<Arc<dyn CheckpointStore>> {
    Ok(match &config.store {
        StoreConfig::File { path } => Arc::new(FileCheckpointStore::new(path)),
        StoreConfig::Stream {
            connection_string,
            token,
            instance_id,
        } => Arc::new(
            StreamCheckpointStore::new(connection_string.clone(), instance_id)
                .with_context(|| format!("cannot open the checkpoint store ({})", config.store))?
                .with_request_timeout(call_timeout / 2)
                .with_bearer_token(bearer_token(token.as_ref(), "sink")?),
        ),
        StoreConfig::Mongo {
            connection_string,
            database,
            instance_id,
        } => Arc::new(
            MongoCheckpointStore::connect(connection_string.clone(), database, instance_id)
                .await
                .with_context(|| format!("cannot open the checkpoint store ({})", config.store))?,
        ),
    })
}

/// The bearer token `token` configures for `side` (`reader`, `sink`), read
/// now when it is a file: a file that cannot be read, or holds no token, is
/// an error naming the key and the file (never the token).
///
/// # Errors
/// As [`BearerToken::from_file`] and [`BearerToken::new`].
pub fn bearer_token(
    token: Option<&TokenConfig>,
    side: &str,
) -> anyhow::Result<Option<BearerToken>> {
    Ok(match token {
        None => None,
        Some(TokenConfig::Inline(token)) => {
            Some(BearerToken::new(token).with_context(|| format!("replicator.{side}.token"))?)
        }
        Some(TokenConfig::File(path)) => Some(
            BearerToken::from_file(path).with_context(|| format!("replicator.{side}.tokenFile"))?,
        ),
    })
}

/// Clients of the configured source and target, for the commands that read
/// both clusters themselves (`verify`, `map-position`): the source over the
/// protocol `reader.protocol` names (gRPC, or TCP for a v5 source), the
/// target over gRPC.
///
/// # Errors
/// When a connection string does not parse (named, password hidden).
pub fn clients(config: &Config) -> anyhow::Result<(SourceClient, GrpcClient)> {
    if config.sink.protocol == SinkProtocol::Kafka {
        anyhow::bail!(
            "this command reads the target cluster, and replicator.sink.protocol is kafka: it \
             compares and maps EventStoreDB/KurrentDB targets only"
        );
    }
    let client = |key: &str, connection_string: &ConnectionString, token: Option<&TokenConfig>| {
        anyhow::Ok(
            replicator_esdb::cluster::client(connection_string)
                .with_context(|| format!("no client for replicator.{key}.connectionString"))?
                .with_bearer_token(bearer_token(token, key)?),
        )
    };
    let source = match config.reader.protocol {
        ReaderProtocol::Grpc => SourceClient::Grpc(client(
            "reader",
            &config.reader.connection_string,
            config.reader.token.as_ref(),
        )?),
        ReaderProtocol::Tcp => SourceClient::Tcp(
            TcpSource::new(&config.reader.connection_string)
                .context("no client for replicator.reader.connectionString")?,
        ),
    };
    Ok((
        source,
        client(
            "sink",
            &config.sink.connection_string,
            config.sink.token.as_ref(),
        )?,
    ))
}

/// Seeds the store from the configured seeder when it holds no checkpoint.
///
/// # Errors
/// When the chaser file is missing or malformed, or the store fails.
async fn seed(store: &dyn CheckpointStore, seeder: Option<&SeederConfig>) -> anyhow::Result<()> {
    let Some(SeederConfig::Chaser { path }) = seeder else {
        return Ok(());
    };
    // Read the chaser even when a checkpoint is stored: a configured seed that
    // cannot be read is a mistake worth stopping for either way.
    let position = chaser::read_chaser(path)
        .with_context(|| format!("cannot seed from checkpoint.seeder.path {}", path.display()))?;
    if seed_if_empty(store, position).await? {
        info!(seed = %position, chaser = %path.display(), "Seeded the checkpoint from the chaser file");
    }
    Ok(())
}

/// The transforms of a pipeline, in the C# tool's order, and its partitioner.
struct Stages {
    transforms: Vec<Arc<dyn Transform>>,
    /// Also among `transforms`: its start-up pass is awaited before the run.
    scavenge: Option<Arc<ScavengeFilter>>,
    partitioner: Option<Arc<dyn Partitioner>>,
}

/// Builds the configured stages in the C# tool's order: the filters in
/// configuration order, then the scavenge filter, then the transform
/// (`js`, `http`, or the default's `$original…` metadata when opted in).
///
/// # Errors
/// A script that does not load, a URL that does not parse, a source
/// connection string the scavenge filter cannot use; each names its key.
fn build_stages(config: &Config) -> anyhow::Result<Stages> {
    let mut transforms: Vec<Arc<dyn Transform>> = Vec::new();
    for (i, f) in config.filters.iter().enumerate() {
        // Checked when the configuration was loaded; named again in case.
        let filter = Filter::new(f.kind, f.include.as_deref(), f.exclude.as_deref())
            .with_context(|| format!("replicator.filters[{i}]"))?;
        transforms.push(Arc::new(filter));
    }
    let scavenge = if config.scavenge {
        let connection_string = config.reader.connection_string.clone();
        let token = bearer_token(config.reader.token.as_ref(), "reader")?;
        let filter = match config.reader.protocol {
            ReaderProtocol::Grpc => {
                ScavengeFilter::new(connection_string).map(|filter| filter.with_bearer_token(token))
            }
            ReaderProtocol::Tcp => ScavengeFilter::over_tcp(connection_string),
        };
        let filter = Arc::new(
            filter.context("replicator.scavenge: cannot read the source's stream metadata")?,
        );
        transforms.push(filter.clone());
        Some(filter)
    } else {
        None
    };
    match &config.transform {
        TransformConfig::Default {
            original_metadata: false,
        } => {}
        TransformConfig::Default {
            original_metadata: true,
        } => transforms.push(Arc::new(OriginalMetadata::default())),
        // A script or request gets half the pipeline's call deadline, so it
        // is stopped (a script: a permanent error naming it) or fails
        // (a request: retried) before the pipeline gives up on the call.
        TransformConfig::Js { path, in_flight } => transforms.push(Arc::new(
            JsTransform::from_file(path)
                .and_then(|t| t.with_in_flight(in_flight.get()))
                .context("replicator.transform.config")?
                .with_time_limit(config.call_timeout / 2),
        )),
        TransformConfig::Http { url, in_flight } => transforms.push(Arc::new(
            HttpTransform::with_timeout(url.clone(), in_flight.get(), config.call_timeout / 2)
                .context("replicator.transform.config")?,
        )),
    }
    let partitioner = match &config.sink.partitioner {
        Some(path) => Some(Arc::new(
            JsPartitioner::from_file(path)
                .context("replicator.sink.partitioner")?
                .with_time_limit(config.call_timeout / 2),
        ) as Arc<dyn Partitioner>),
        None => None,
    };
    Ok(Stages {
        transforms,
        scavenge,
        partitioner,
    })
}

/// Builds the pipeline's parts from the configuration. Every pipeline of a
/// run reports through the same `health` and `progress`, so the status
/// server follows one of each across restarts.
///
/// # Errors
/// When a connection string cannot be parsed.
fn build_pipeline(
    config: &Config,
    store: Arc<dyn CheckpointStore>,
    health: &Health,
    progress: &watch::Sender<replicator_core::Progress>,
    stages: Stages,
) -> anyhow::Result<Pipeline> {
    let sink = build_sink(config, &stages)?;
    let context = "cannot create the reader (replicator.reader)";
    let builder = match config.reader.protocol {
        ReaderProtocol::Grpc => {
            let reader = EsdbReader::new(EsdbReaderConfig {
                connection_string: config.reader.connection_string.clone(),
                page_size: config.reader.page_size.get(),
                run_continuously: config.run_continuously,
            })
            .context(context)?
            // Half the pipeline's call deadline per request: a call may make
            // several requests, and a hung one should fail with an error
            // saying which.
            .with_request_timeout(config.call_timeout / 2)
            .with_bearer_token(bearer_token(config.reader.token.as_ref(), "reader")?);
            Pipeline::builder(reader, sink, store)
        }
        ReaderProtocol::Tcp => {
            // Its deadlines come from the connection string
            // (OperationTimeout, HeartbeatTimeout), as for the C# tool.
            let reader = TcpReader::new(TcpReaderConfig {
                page_size: config.reader.page_size.get(),
                run_continuously: config.run_continuously,
                ..TcpReaderConfig::new(config.reader.connection_string.clone())
            })
            .context(context)?;
            Pipeline::builder(reader, sink, store)
        }
    };
    let mut builder = builder
        .config(PipelineConfig {
            checkpoint_after: config.checkpoint.checkpoint_after,
            checkpoint_interval: config.checkpoint.checkpoint_interval,
            buffer_size: config.sink.buffer_size.get(),
            call_timeout: config.call_timeout,
            ..PipelineConfig::default()
        })
        .health(health.clone())
        .progress_sender(progress.clone())
        .transforms(stages.transforms);
    // One writer with source order: nothing to partition.
    if let Some(partitioner) = stages.partitioner {
        if config.sink.order == WriteOrder::Stream {
            builder = builder.partitioner(partitioner);
        }
    }
    Ok(builder.build())
}

/// Builds the sink: Kafka for `sink.protocol: kafka`; otherwise the
/// EventStoreDB sink with as many writers as `sink.partitionCount` with
/// stream order, one with source order, and target revisions following the
/// source's unless one of `stages` renames streams or leaves out events.
///
/// # Errors
/// When the connection string cannot be parsed, or the router not loaded.
fn build_sink(config: &Config, stages: &Stages) -> anyhow::Result<Arc<dyn Sink>> {
    if let Some(kafka) = &config.sink.kafka {
        return Ok(Arc::new(build_kafka_sink(config, kafka)?));
    }
    Ok(Arc::new(
        EsdbSink::new(EsdbSinkConfig {
            connection_string: config.sink.connection_string.clone(),
            partition_count: config.sink.partition_count(),
            // Target revisions follow source revisions unless a transform
            // renames streams or leaves out events from the middle of one.
            revisions: if stages.transforms.iter().all(|t| t.keeps_revisions()) {
                RevisionMode::FromSource
            } else {
                RevisionMode::Tracked
            },
            order: config.sink.order,
        })
        .context("cannot create the sink (replicator.sink)")?
        .with_request_timeout(config.call_timeout / 2)
        .with_bearer_token(bearer_token(config.sink.token.as_ref(), "sink")?),
    ))
}

/// The Kafka sink, with its router loaded; a write waits half the call
/// deadline for the broker's acknowledgements, so that it fails naming the
/// broker before the pipeline gives up on the call.
///
/// # Errors
/// A connection string librdkafka refuses, a router that does not load.
fn build_kafka_sink(config: &Config, kafka: &KafkaConfig) -> anyhow::Result<KafkaSink> {
    let router = match &kafka.router {
        Some(path) => Some(Arc::new(
            JsRouter::from_file(path)
                .and_then(|r| r.with_in_flight(4))
                .context("replicator.sink.router")?
                .with_time_limit(config.call_timeout / 2),
        )),
        None => None,
    };
    KafkaSink::new(KafkaSinkConfig {
        router,
        deletes: kafka.deletes,
        metadata_headers: kafka.metadata_headers.clone(),
        request_timeout: config.call_timeout / 2,
        // Five call deadlines, at least 30 s, without any acknowledgement
        // while records wait: the producer is stuck (a broker back without
        // its state), not riding out an outage.
        stall_limit: (config.call_timeout * 5).max(Duration::from_secs(30)),
        ..KafkaSinkConfig::new(config.sink.connection_string.clone())
    })
    .context("cannot create the Kafka sink (replicator.sink)")
}

/// `replicator run`: replicates until the source is caught up (with
/// `runContinuously: false`) or `cancel` fires. With `restartOnFailure` a
/// failed pipeline is rebuilt and resumed from the stored checkpoint after
/// `restartDelayInSeconds`. Returns what the last pipeline run did.
///
/// # Errors
/// When the store cannot be opened or seeded, a component cannot be built, or
/// the pipeline fails and `restartOnFailure` is off.
pub async fn replicate(config: &Config, cancel: CancellationToken) -> anyhow::Result<RunSummary> {
    info!(
        source = %config.reader.connection_string,
        target = %config.sink.connection_string,
        checkpoint = %config.checkpoint.store,
        checkpoint_after = config.checkpoint.checkpoint_after,
        checkpoint_interval = ?config.checkpoint.checkpoint_interval,
        order = %config.sink.order,
        writers = config.sink.writers(),
        buffer = config.sink.buffer_size.get(),
        run_continuously = config.run_continuously,
        filters = config.filters.len(),
        scavenge = config.scavenge,
        transform = ?config.transform,
        partitioner = ?config.sink.partitioner,
        "Starting replicator"
    );
    if config.sink.protocol == SinkProtocol::Kafka {
        if config.sink.partition_count.is_some() {
            info!(
                "Kafka: one ordered writer with many records in flight keeps each key's order, \
                 so sink.partitionCount is not used (Kafka partitions are the topics'; the \
                 record key chooses one)"
            );
        }
    } else if config.sink.order == WriteOrder::Source
        && (config.sink.partition_count.is_some() || config.sink.partitioner.is_some())
    {
        info!(
            "Source order: the target's $all keeps the source's order through one ordered \
             writer, so sink.partitionCount and sink.partitioner are not used (set \
             sink.order: stream for concurrent per-stream writers, which reorder streams \
             against each other)"
        );
    }
    // One health and one progress channel for every pipeline of this run:
    // the status server serves them from before the first pipeline on.
    let health = Health::default();
    let (progress, progress_rx) = watch::channel(replicator_core::Progress::default());
    let status = Status::new(progress_rx, config);
    let server = match &config.http.listen {
        Some(listen) => Some(StatusServer::start(listen, status.clone()).await?),
        None => None,
    };
    let result = run_pipelines(config, cancel, &health, &progress, &status).await;
    if let Some(server) = server {
        server.stop().await;
    }
    result
}

/// Opens the store, seeds it, and runs pipelines until one ends for good.
async fn run_pipelines(
    config: &Config,
    cancel: CancellationToken,
    health: &Health,
    progress: &watch::Sender<replicator_core::Progress>,
    status: &Status,
) -> anyhow::Result<RunSummary> {
    let store = open_store_within(&config.checkpoint, config.call_timeout).await?;
    seed(&*store, config.checkpoint.seeder.as_ref()).await?;
    loop {
        let stages = build_stages(config)?;
        if let Some(scavenge) = &stages.scavenge {
            info!("Scavenge filter: reading the source's stream metadata and deletes before replicating");
            // The pass reads the source: its failures are the source's (so
            // readiness turns red while it cannot read), and the status
            // server must see the process turning while it waits (liveness).
            scavenge.report_health_to(health.source.clone());
            let prepare = scavenge.prepare();
            tokio::pin!(prepare);
            let mut beat = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    ready = &mut prepare => {
                        ready.context("replicator.scavenge: cannot read the source's stream metadata")?;
                        break;
                    }
                    _ = beat.tick() => progress.send_modify(|p| {
                        p.heartbeat = tokio::time::Instant::now();
                        p.components = health.snapshot();
                    }),
                    () = cancel.cancelled() => return Ok(RunSummary::default()),
                }
            }
        }
        let pipeline = build_pipeline(config, store.clone(), health, progress, stages)?;
        status.started();
        let ended = CancellationToken::new();
        let reporter = tokio::spawn(crate::report::report_progress(
            pipeline.progress(),
            config.report_every,
            ended.clone(),
        ));
        let result = pipeline.run(cancel.clone()).await;
        // The reporter prints a last line and ends.
        ended.cancel();
        let _ = reporter.await;
        match result {
            Ok(summary) => {
                info!(
                    read = summary.read,
                    written = summary.written,
                    skipped = summary.skipped,
                    checkpoint = %summary.checkpoint.as_ref().map_or("none stored".into(), |c| c.source.to_string()),
                    caught_up = summary.completed,
                    "Replicator stopped"
                );
                return Ok(summary);
            }
            Err(e) if config.restart_on_failure && !cancel.is_cancelled() && may_heal(&e) => {
                let e = anyhow::Error::new(e);
                error!(error = format!("{e:#}"), delay = %time::short(config.restart_delay),
                    "Replication failed; restarting from the stored checkpoint (restartOnFailure)");
                status.restarting();
                tokio::select! {
                    () = tokio::time::sleep(config.restart_delay) => {}
                    () = cancel.cancelled() => return Err(e.context("replication failed")),
                }
            }
            Err(e) => return Err(anyhow::Error::new(e).context("replication failed")),
        }
    }
}

/// Whether running the pipeline again may get past `error` (`restartOnFailure`).
///
/// The reader and sink retry transient errors themselves, so what reaches here
/// is mostly permanent; a restart still helps when the operator fixes the cause
/// (permissions, a full disk) while we wait. A checkpoint that cannot be parsed,
/// a part that failed its start-up check (a configuration that cannot work
/// must fail in seconds, not loop), a panicking task or a reader that goes
/// backwards cannot heal that way.
fn may_heal(error: &PipelineError) -> bool {
    match error {
        PipelineError::LoadCheckpoint(e) => e.is_transient(),
        PipelineError::OutOfOrder { .. }
        | PipelineError::Check { .. }
        | PipelineError::TaskEnded { .. } => false,
        _ => true,
    }
}

/// A token cancelled by the first SIGINT or SIGTERM. A second one exits at
/// once (code 130) without waiting for the drain.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::spawn(async move {
        for first in [true, false] {
            #[cfg(unix)]
            let name = tokio::select! {
                r = tokio::signal::ctrl_c() => { if r.is_err() { return; } "SIGINT" }
                r = term.recv() => { if r.is_none() { return; } "SIGTERM" }
            };
            #[cfg(not(unix))]
            let name = {
                if tokio::signal::ctrl_c().await.is_err() {
                    return;
                }
                "Ctrl-C"
            };
            if first {
                info!(signal = name, "Stopping: draining in-flight writes and storing the checkpoint (signal again to stop at once)");
                token.cancel();
            } else {
                warn!(
                    signal = name,
                    "Stopping at once; the next run replays from the last stored checkpoint"
                );
                std::process::exit(130);
            }
        }
    });
    Ok(cancel)
}

#[cfg(test)]
mod tests;
