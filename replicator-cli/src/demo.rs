//! `replicator demo`: the whole job on one machine, with nothing installed.
//!
//! Two in-process EventStoreDB-protocol servers (the testkit's) stand in for
//! the source and target clusters. A generated workload goes to the source,
//! [`app::replicate`] — exactly what `replicator run` does — copies it with a
//! file checkpoint, and `replicator verify`'s engine
//! ([`replicator_esdb::verify`]) proves the target equal to the source, event
//! by event, a few streams at a time.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use replicator_esdb::cluster;
use replicator_esdb::verify::{self, Until, VerifyOptions};
use replicator_testkit::{workload, EsdbServer, ServerOptions};
use tokio_util::sync::CancellationToken;

use crate::app;
use crate::config::{Config, StoreConfig};
use crate::time;

/// Appends in flight at once in the demo. `run` defaults to 1 (the C#
/// replicator's behaviour); 8 shows what the sink does when allowed to.
const DEMO_PARTITIONS: usize = 8;

/// Streams the comparison compares at once, and connections per server:
/// comparing many small streams waits on request round trips, not CPU.
const COMPARE_CONCURRENCY: usize = 64;
const COMPARE_CONNECTIONS: usize = 4;

/// The words the report prints when the comparison finds no difference.
pub const IDENTICAL: &str = "the target is identical to the source";

/// `replicator demo` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// User events to generate on the source (stream metadata, deletes,
    /// tombstones, links and system events come on top).
    #[arg(long, default_value = "100000", value_name = "N")]
    events: NonZeroUsize,
    /// Seed of the workload generator: the same seed writes the same history.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// sink.partitionCount: appends in flight at once (the demo uses 8; a
    /// configured `run` defaults to 1).
    #[arg(long, default_value_t = NonZeroUsize::new(DEMO_PARTITIONS).expect("not zero"), value_name = "N")]
    partitions: NonZeroUsize,
    /// Delay the target adds before answering each write, to simulate a
    /// remote cluster.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    append_latency_ms: u64,
    /// Keep the checkpoint in this file (default: a temporary directory,
    /// removed at the end). It must not exist yet: the demo's servers start
    /// empty, so an old checkpoint would skip the whole workload.
    #[arg(long, value_name = "PATH")]
    checkpoint: Option<PathBuf>,
    /// Where the status server listens while the demo runs (`host:port`).
    /// The default takes a free port on the loopback interface, logged at
    /// start-up, so a demo never collides with a running replicator on the
    /// usual port 5000. An empty string: no status server.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "HOST:PORT")]
    listen: String,
}

/// Runs the demo and prints its report on stdout. The exit code is a failure
/// when the target differs from the source or the run was interrupted.
///
/// # Errors
/// When a server cannot start, the workload cannot be written, replication
/// fails, or the checkpoint path is taken.
pub async fn run(args: Args, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    // Keeps the temporary directory (and the checkpoint in it) alive to the end.
    let (_tempdir, checkpoint) = match &args.checkpoint {
        Some(path) => {
            if path.exists() {
                bail!(
                    "--checkpoint {} already exists: the demo starts empty servers, so a stored \
                     checkpoint would skip the workload; delete it or choose another path",
                    path.display()
                );
            }
            (None, path.clone())
        }
        None => {
            let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
            let path = dir.path().join("checkpoint");
            (Some(dir), path)
        }
    };

    let source = EsdbServer::start()
        .await
        .context("cannot start the source server")?;
    let target = EsdbServer::start_with(ServerOptions {
        append_latency: Duration::from_millis(args.append_latency_ms),
        ..ServerOptions::default()
    })
    .await
    .context("cannot start the target server")?;
    let source_client = client(&source)?;
    let target_client = client(&target)?;
    println!("Demo: two in-process EventStoreDB-protocol servers");
    println!("  source:      {}", source.connection_string());
    println!(
        "  target:      {} (append latency {} ms)",
        target.connection_string(),
        args.append_latency_ms
    );

    println!(
        "Generating {} user events on the source (seed {})…",
        args.events, args.seed
    );
    let spec = workload::WorkloadSpec::new(args.seed, args.events.get());
    let started = Instant::now();
    // The testkit's generator writes through the `eventstore` client.
    let writer = eventstore::Client::new(
        source
            .connection_string()
            .parse()
            .context("the source's connection string")?,
    )
    .context("cannot create a client")?;
    let written = workload::generate(&writer, &spec)
        .await
        .context("cannot write the workload to the source")?;
    println!(
        "  generated:   {} user events in {} streams, {} stream metadata writes, {} soft \
         deletes, {} tombstones, {} links, {} system events, {} events over 1 MiB, in {}",
        written.events_written,
        written.streams,
        written.metadata_writes,
        written.soft_deletes,
        written.tombstones,
        written.links,
        written.system_events,
        written.large_events,
        time::short(started.elapsed())
    );

    let after_generating = peak_memory();

    let config = demo_config(&source, &target, &checkpoint, args.partitions, &args.listen)?;
    println!(
        "Replicating with {} partitions, checkpoint every {} events in {}…",
        args.partitions, config.checkpoint.checkpoint_after, config.checkpoint.store
    );
    let started = Instant::now();
    let summary = app::replicate(&config, cancel).await?;
    let elapsed = started.elapsed();
    let after_replicating = peak_memory();
    if !summary.completed {
        println!("Interrupted before the source was caught up; nothing compared.");
        return Ok(ExitCode::FAILURE);
    }
    let secs = elapsed.as_secs_f64().max(f64::EPSILON);
    println!(
        "  replicated:  read {} records, wrote {} events, skipped {} records in {}",
        summary.read,
        summary.written,
        summary.skipped,
        time::short(elapsed)
    );
    println!(
        "  throughput:  {:.0} events written/s, {:.0} records read/s",
        summary.written as f64 / secs,
        summary.read as f64 / secs
    );

    let stored = app::open_store(&config.checkpoint)
        .await?
        .load()
        .await
        .context("cannot read the final checkpoint")?;
    let source_end = cluster::head(&source_client)
        .await
        .context("cannot read the source's $all")?;
    let Some(stored) = stored else {
        bail!("no checkpoint was stored in {}", checkpoint.display());
    };
    println!(
        "  checkpoint:  source {}, target {}{}",
        stored.source,
        stored
            .target
            .map_or_else(|| "unknown".to_owned(), |t| t.to_string()),
        if Some(stored.source) == source_end {
            " (the source's last record)"
        } else {
            ""
        }
    );

    println!("Comparing the target with the source, stream by stream…");
    let started = Instant::now();
    let options = VerifyOptions {
        until: Until::End,
        concurrency: COMPARE_CONCURRENCY,
        check_order: config.sink.order == replicator_esdb::WriteOrder::Source,
        ..VerifyOptions::default()
    };
    let sources: Vec<_> = (0..COMPARE_CONNECTIONS)
        .map(|_| client(&source))
        .collect::<anyhow::Result<_>>()?;
    let targets: Vec<_> = std::iter::once(Ok(target_client))
        .chain((1..COMPARE_CONNECTIONS).map(|_| client(&target)))
        .collect::<anyhow::Result<_>>()?;
    let report = verify::verify_pooled(&sources, &targets, &options)
        .await
        .context("cannot compare the servers")?;
    let compared_in = time::short(started.elapsed());
    let caught_up = Some(stored.source) == source_end;
    let identical = report.is_identical();
    if identical {
        println!(
            "  compared:    {} streams, {} events in {compared_in} ({:.0} events/s): \
             {IDENTICAL} (ids, types, data, metadata, stream metadata, deletes{})",
            report.streams_compared,
            report.source_events,
            report.source_events as f64 / report.seconds.max(f64::EPSILON),
            if report.order_checked {
                ", $all order"
            } else {
                ""
            }
        );
    } else {
        println!("  compared in {compared_in}: THE TARGET DIFFERS FROM THE SOURCE:\n{report}");
    }
    if !caught_up {
        println!(
            "  THE CHECKPOINT IS NOT AT THE SOURCE'S LAST RECORD ({})",
            source_end.map_or_else(|| "none".to_owned(), |p| p.to_string())
        );
    }
    println!(
        "  peak memory: {} after generating, {} after replicating, {} after comparing \
         (VmHWM of this one process: both servers and their data, the replicator, and the \
         comparison, which holds a few streams at a time)",
        mib(after_generating),
        mib(after_replicating),
        mib(peak_memory())
    );
    Ok(if identical && caught_up {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The configuration `run` would load for these servers: the file's defaults
/// (parsed from a minimal file, so they stay the ones `run` uses) with the
/// demo's store, partitions and status server address. REPLICATOR_* variables
/// are ignored: the demo is the same everywhere.
fn demo_config(
    source: &EsdbServer,
    target: &EsdbServer,
    checkpoint: &Path,
    partitions: NonZeroUsize,
    listen: &str,
) -> anyhow::Result<Config> {
    let yaml = format!(
        "replicator:\n  reader:\n    connectionString: \"{}\"\n  sink:\n    connectionString: \"{}\"\n  \
         http:\n    listen: {}\n",
        source.connection_string(),
        target.connection_string(),
        serde_json::to_string(listen).context("the listen address")?
    );
    let mut config = Config::from_yaml(&yaml, Path::new("(demo)"), std::iter::empty())
        .context("the demo's configuration is invalid")?;
    config.sink.partition_count = Some(partitions);
    config.checkpoint.store = StoreConfig::File {
        path: checkpoint.to_owned(),
    };
    config.run_continuously = false;
    // A failure is the demo's result, not something to wait out.
    config.restart_on_failure = false;
    config.report_every = Duration::from_secs(2);
    Ok(config)
}

fn client(server: &EsdbServer) -> anyhow::Result<cluster::GrpcClient> {
    cluster::client(&server.connection_string().into()).context("cannot create a client")
}

/// The process's peak resident set size in KiB (`VmHWM`), on Linux.
fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "unknown (no /proc/self/status)".to_owned(),
        |kib| format!("{:.0} MiB", kib as f64 / 1024.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let kib = peak_memory().expect("VmHWM in /proc/self/status");
            // A running test process holds at least a megabyte.
            assert!(kib > 1024, "{kib} KiB");
        } else {
            assert_eq!(peak_memory(), None);
        }
    }
}
