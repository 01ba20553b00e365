//! Replication throughput between two EventStoreDB-protocol servers (the
//! testkit's), through the real client over gRPC, with a simulated append
//! latency on the target. In the same run, against the same servers:
//!
//! - **sequential**: the C# tool's strategy, one append call per event, one
//!   after the other, on a gRPC channel with `TCP_NODELAY` (as the C# tool's
//!   .NET client has). This is the 1.0× reference.
//! - **sequential, eventstore 4.0.0 client**: the same strategy through the
//!   Rust client, which does not set `TCP_NODELAY`: every single-event append
//!   waits for a delayed ACK (about 40 ms on Linux). Shown because any Rust
//!   tool built on that client meets it.
//! - **bare loader**: what the target absorbs: events already in memory,
//!   consecutive events of a stream in one append, 8 appends in flight,
//!   `TCP_NODELAY`, nothing read.
//! - **replicator**: our pipeline, `EsdbReader` → `EsdbSink`, in source order
//!   (the default: one ordered writer) and in stream order per
//!   `partitionCount`; each run is then compared with the source event by
//!   event, and in source order for the order of the target's `$all` too.
//! - **replicator, TCP source**: the same in source order, with the source
//!   read over the legacy TCP protocol (`TcpReader`, an EventStoreDB v5
//!   source; pages of 1024) from the same server.
//!
//! Servers, the workload generator and each replicator run are child
//! processes (this binary, re-executed), so the peak memory and the CPU time
//! printed for a replicator run are that run's own. Beside events/s, each
//! replicator row shows its **cost**: the replicator process's CPU time (user +
//! system, all threads) per event, the two servers' CPU per event in the same
//! run, and the replicator's peak RSS.
//!
//! Workloads (`WORKLOADS`, comma-separated, each replicated separately):
//! - `small`: EVENTS small JSON events over 100 streams, nothing else;
//! - `streams`: EVENTS small JSON events over 10,000 streams;
//! - `mixed`: the testkit workload: metadata, deletes, tombstones, links,
//!   system events and two events of 1 MiB among EVENTS user events.
//!
//! `cargo bench -p replicator-benches --bench replication`
//! Environment: EVENTS (20000), WORKLOADS ("small,mixed"), LATENCIES_MS
//! ("0,4"), ORDERS ("source,tcp,stream"; `tcp` is source order from the TCP
//! source; `read` adds the reader's ceiling: the same pipeline into an
//! in-memory sink), PARTITIONS ("1,8": stream order's
//! partitionCount rows), RUNS (1; each replicator row is then the median of
//! this many runs, the writers taking turns), SEQUENTIAL_SAMPLE (1000 events; 0 leaves the
//! sequential rows out). A debug build (`cargo test --all-targets` runs it as
//! a smoke test) defaults to 2000 `small` events and a sample of 100.
//!
//! `CALLGRIND_EVENTS=n` adds a count that a busy machine cannot blur: one run
//! of n `small` events with `partitionCount` 1 at 0 ms under
//! `valgrind --tool=callgrind`, printing the replicator's instructions per
//! event (the same binary and inputs give the same count within a few
//! percent: batch sizes still depend on timing). Profile recipe, for where
//! the time goes: start the servers as this bench does and run
//! `perf record -g -e cpu-clock <bench binary> --replicate SRC DST 1`, or
//! open the callgrind output file it names with `callgrind_annotate`.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eventstore::{AppendToStreamOptions, Client, ExpectedRevision};
use futures::{StreamExt, TryStreamExt};
use replicator_benches::{
    cpu_seconds, env_list, env_names, env_num, load_small_events, nodelay_client, peak_rss_mib,
    print_table, rate, serve, BoxError, ChildProcess, Proposed,
};
use replicator_core::memory::{MemoryCheckpointStore, MemorySink};
use replicator_core::{ChangeKind, ContentType, Event, Pipeline, Reader, StartFrom};
use replicator_esdb::verify::{verify, VerifyOptions};
use replicator_esdb::{
    to_event_data, EsdbReader, EsdbReaderConfig, EsdbSink, EsdbSinkConfig, TcpReader,
    TcpReaderConfig, WriteOrder,
};
use replicator_testkit::proto::event_store::client as pb;
use replicator_testkit::{workload, ServerOptions};
use tokio_util::sync::CancellationToken;

/// The workloads a source can be filled with; see the module docs.
const WORKLOADS: [&str; 3] = ["small", "streams", "mixed"];

/// Fills the server at `url` with `events` user events of workload `name`.
async fn generate(url: &str, events: usize, name: &str) -> Result<String, BoxError> {
    match name {
        "small" => load_small_events(url, events, 100, 10).await?,
        "streams" => load_small_events(url, events, 10_000, 2).await?,
        "mixed" => {
            let spec = workload::WorkloadSpec::new(42, events);
            return Ok(format!(
                "{:?}",
                workload::generate(&client(url)?, &spec).await?
            ));
        }
        other => return Err(format!("unknown workload {other:?}").into()),
    }
    Ok(format!("{events} small JSON events"))
}

/// A testkit server child with `append_latency_ms`, and its connection string.
fn server(append_latency_ms: u64) -> Result<(ChildProcess, String), BoxError> {
    ChildProcess::answering(&["--serve".into(), append_latency_ms.to_string()])
}

/// A source: a testkit server child serving the legacy TCP protocol too; its
/// connection string and the .NET connection string of its TCP endpoint.
fn source_server() -> Result<(ChildProcess, String, String), BoxError> {
    let (child, url) = ChildProcess::answering(&["--serve".into(), "0".into(), "tcp".into()])?;
    let tcp = format!("ConnectTo=tcp://{}; UseSslConnection=false", child.line()?);
    Ok((child, url, tcp))
}

fn client(url: &str) -> Result<Client, BoxError> {
    Ok(Client::new(url.parse()?)?)
}

fn append_request(stream: &str, events: &[&Event]) -> Vec<pb::streams::AppendReq> {
    replicator_benches::append_request(
        stream,
        events.iter().map(|event| Proposed {
            id: event.id,
            event_type: event.event_type.clone(),
            content_type: match event.content_type {
                ContentType::Json => "application/json",
                ContentType::Binary => "application/octet-stream",
            },
            data: event.data.clone(),
            metadata: event.metadata.clone(),
        }),
    )
}

/// Every record of the source, classified as the replicator sees it.
async fn read_source(url: &str) -> Result<Vec<Event>, BoxError> {
    let mut reader = EsdbReader::new(EsdbReaderConfig {
        run_continuously: false,
        ..EsdbReaderConfig::new(url)
    })?;
    Ok(reader
        .read(StartFrom::Beginning)
        .await?
        .try_collect()
        .await?)
}

fn user_appends(records: &[Event]) -> Vec<&Event> {
    records
        .iter()
        .filter(|e| e.kind == ChangeKind::Append)
        .collect()
}

/// The C# tool's strategy on a `TCP_NODELAY` channel.
async fn sequential_nodelay(
    records: &[Event],
    target: &str,
    sample: usize,
) -> Result<(u64, Duration), BoxError> {
    let mut client = nodelay_client(target).await?;
    let appends: Vec<&Event> = user_appends(records).into_iter().take(sample).collect();
    let started = Instant::now();
    for event in &appends {
        let request = futures::stream::iter(append_request(&event.stream, &[event]));
        client.append(request).await?;
    }
    Ok((appends.len() as u64, started.elapsed()))
}

/// The same strategy through the eventstore 4.0.0 client.
async fn sequential_client(
    records: &[Event],
    target: &str,
    sample: usize,
) -> Result<(u64, Duration), BoxError> {
    let client = client(target)?;
    let appends: Vec<&Event> = user_appends(records).into_iter().take(sample).collect();
    let options = AppendToStreamOptions::default().expected_revision(ExpectedRevision::Any);
    let started = Instant::now();
    for event in &appends {
        client
            .append_to_stream(event.stream.as_str(), &options, to_event_data(event))
            .await?;
    }
    Ok((appends.len() as u64, started.elapsed()))
}

/// What the target absorbs: preloaded, batched per stream, 8 in flight.
async fn bare_loader(records: &[Event], target: &str) -> Result<(u64, Duration), BoxError> {
    let client = nodelay_client(target).await?;
    let mut by_stream: Vec<(String, Vec<&Event>)> = Vec::new();
    let mut index = HashMap::new();
    for event in user_appends(records) {
        let slot = *index.entry(event.stream.clone()).or_insert_with(|| {
            by_stream.push((event.stream.clone(), Vec::new()));
            by_stream.len() - 1
        });
        by_stream[slot].1.push(event);
    }
    let mut requests = Vec::new();
    let mut total = 0;
    for (stream, events) in &by_stream {
        for chunk in append_chunks(events) {
            total += chunk.len();
            requests.push(append_request(stream, chunk));
        }
    }
    let started = Instant::now();
    futures::stream::iter(requests)
        .map(|request| {
            let mut client = client.clone();
            async move { client.append(futures::stream::iter(request)).await }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
    Ok((total as u64, started.elapsed()))
}

/// Splits one stream's events into appends of at most 500 events and under
/// a server's default maximum append size (1 MiB, counted as data, metadata
/// and twice the type), each holding at least one event.
fn append_chunks<'a>(events: &'a [&'a Event]) -> Vec<&'a [&'a Event]> {
    const MAX_BYTES: usize = 1024 * 1024 - 64 * 1024;
    let size = |e: &Event| e.data.len() + e.metadata.len() + 2 * e.event_type.len();
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, event) in events.iter().enumerate() {
        let n = size(event);
        if i > start && (i - start == 500 || bytes + n > MAX_BYTES) {
            chunks.push(&events[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += n;
    }
    if start < events.len() {
        chunks.push(&events[start..]);
    }
    chunks
}

/// One replication with the pipeline, in this (child) process.
async fn replicate(
    reader: Box<dyn Reader>,
    target: &str,
    order: Option<WriteOrder>,
    partitions: usize,
) -> Result<String, BoxError> {
    let config = replicator_core::PipelineConfig {
        max_batch_events: env_num("BATCH", 500) as usize,
        ..Default::default()
    };
    let started = Instant::now();
    let summary = match order {
        Some(order) => {
            let sink = EsdbSink::new(EsdbSinkConfig {
                partition_count: partitions,
                order,
                ..EsdbSinkConfig::new(target)
            })?;
            Pipeline::builder(reader, sink, MemoryCheckpointStore::new())
                .config(config)
                .build()
                .run(CancellationToken::new())
                .await?
        }
        // The reader's ceiling: the same pipeline into memory.
        None => {
            Pipeline::builder(reader, MemorySink::new(), MemoryCheckpointStore::new())
                .config(config)
                .build()
                .run(CancellationToken::new())
                .await?
        }
    };
    let elapsed = started.elapsed();
    Ok(format!(
        "{} {} {} {}",
        summary.written,
        elapsed.as_secs_f64(),
        peak_rss_mib().unwrap_or(0.0),
        cpu_seconds().unwrap_or(0.0),
    ))
}

/// One replicator run of `order` (`read`: into memory) from the source at
/// `source_url` into a fresh target, checked against the source (and for
/// source order, in `$all` order); the run and the servers' CPU seconds
/// during it.
async fn replicate_once(
    source: &ChildProcess,
    source_url: &str,
    read_from: &str,
    latency: u64,
    order: &str,
    partitions: u64,
) -> Result<(ReplicatorRun, f64), BoxError> {
    let (target, target_url) = server(latency)?;
    let servers_before = source.cpu_seconds() + target.cpu_seconds();
    let (child, line) = ChildProcess::answering(&[
        "--replicate".into(),
        read_from.to_owned(),
        target_url.clone(),
        order.to_owned(),
        partitions.to_string(),
    ])?;
    let run = ReplicatorRun::parse(&line)?;
    drop(child);
    let servers = source.cpu_seconds() + target.cpu_seconds() - servers_before;
    if order != "read" {
        let options = VerifyOptions {
            check_order: order == "source" || order == "tcp",
            ..VerifyOptions::default()
        };
        let reads = |url: &str| replicator_esdb::cluster::client(&url.into());
        let report = verify(&reads(source_url)?, &reads(&target_url)?, &options).await?;
        assert!(report.is_identical(), "replication not exact: {report}");
    }
    Ok((run, servers))
}

/// What one replicator child reported.
struct ReplicatorRun {
    written: u64,
    elapsed: Duration,
    peak_rss_mib: f64,
    cpu_seconds: f64,
}

impl ReplicatorRun {
    fn parse(line: &str) -> Result<Self, BoxError> {
        let mut parts = line.split_whitespace();
        let mut next = |what: &str| parts.next().ok_or(format!("no {what} in {line:?}"));
        Ok(ReplicatorRun {
            written: next("count")?.parse()?,
            elapsed: Duration::from_secs_f64(next("time")?.parse()?),
            peak_rss_mib: next("memory")?.parse()?,
            cpu_seconds: next("CPU time")?.parse()?,
        })
    }
}

/// Microseconds of CPU per event.
fn per_event_us(cpu_seconds: f64, events: u64) -> String {
    format!("{:.1}", cpu_seconds * 1e6 / events.max(1) as f64)
}

/// The replicator's instructions per event under callgrind: runs of `events`
/// and of twice as many `small` events (fresh servers each), so that the
/// start-up (building clients, loading TLS roots) cancels out.
fn callgrind(events: usize) -> Result<Option<String>, BoxError> {
    if events == 0 {
        return Ok(None);
    }
    let (small, small_out) = callgrind_run(events)?;
    let (large, large_out) = callgrind_run(2 * events)?;
    let per_event = large.saturating_sub(small) / events as u64;
    Ok(Some(format!(
        "callgrind: {small} instructions for {events} events, {large} for {}: {per_event} \
         instructions per event beyond start-up (small workload, source order, 0 ms; \
         `callgrind_annotate {}` and `{}` show where)",
        2 * events,
        small_out.display(),
        large_out.display()
    )))
}

/// One replication of a fresh `small` source of `events` under callgrind:
/// the replicator's total instructions and the output file.
fn callgrind_run(events: usize) -> Result<(u64, std::path::PathBuf), BoxError> {
    let (_source, source_url) = server(0)?;
    ChildProcess::answering(&[
        "--generate".into(),
        source_url.clone(),
        events.to_string(),
        "small".into(),
    ])?;
    let (_target, target_url) = server(0)?;
    let out = std::env::temp_dir().join(format!(
        "replicator-callgrind.{}.{events}",
        std::process::id()
    ));
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(std::env::current_exe()?)
        .args(["--replicate", &source_url, &target_url, "source", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("valgrind (Debian package valgrind): {e}"))?;
    if !status.status.success() {
        return Err(format!("the replicator under callgrind failed: {:?}", status.status).into());
    }
    let run = ReplicatorRun::parse(String::from_utf8_lossy(&status.stdout).trim())?;
    if run.written != events as u64 {
        return Err(format!("callgrind run wrote {} of {events} events", run.written).into());
    }
    let text = std::fs::read_to_string(&out)?;
    let instructions = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .ok_or("no summary line in the callgrind output")?
        .split_whitespace()
        .next()
        .ok_or("an empty summary line")?
        .parse()?;
    Ok((instructions, out))
}

/// One row of the table; `cost` holds the replicator's columns.
struct Row {
    workload: String,
    latency: u64,
    writer: String,
    events: u64,
    elapsed: Duration,
    cost: Option<(String, String, String)>,
}

fn cells(row: &Row, sequential: Option<f64>, bare: Option<f64>) -> Vec<String> {
    let r = rate(row.events, row.elapsed);
    let vs = |reference: Option<f64>| reference.map_or("-".into(), |x| format!("{:.1}×", r / x));
    let (cpu, servers, peak) = row
        .cost
        .clone()
        .unwrap_or(("-".into(), "-".into(), "-".into()));
    vec![
        row.workload.clone(),
        format!("{} ms", row.latency),
        row.writer.clone(),
        row.events.to_string(),
        format!("{r:.0}"),
        vs(sequential),
        vs(bare),
        cpu,
        servers,
        peak,
    ]
}

async fn bench() -> Result<(), BoxError> {
    // `cargo test --all-targets` runs this in a debug build as a smoke test.
    let smoke = cfg!(debug_assertions);
    let events = env_num("EVENTS", if smoke { 2_000 } else { 20_000 }) as usize;
    let sample = env_num("SEQUENTIAL_SAMPLE", if smoke { 100 } else { 1_000 }) as usize;
    let runs = env_num("RUNS", 1).max(1);
    let workloads = env_names("WORKLOADS", if smoke { "small" } else { "small,mixed" });
    if let Some(unknown) = workloads.iter().find(|w| !WORKLOADS.contains(&w.as_str())) {
        return Err(format!("WORKLOADS: unknown workload {unknown:?} ({WORKLOADS:?})").into());
    }
    let mut table = Vec::new();
    for name in &workloads {
        let (source, source_url, source_tcp) = source_server()?;
        let (_, generated) = ChildProcess::answering(&[
            "--generate".into(),
            source_url.clone(),
            events.to_string(),
            name.clone(),
        ])?;
        println!("{name}: {generated}");
        let records = read_source(&source_url).await?;
        println!(
            "{name}: {} records in the source $all, {} user events to append",
            records.len(),
            user_appends(&records).len()
        );
        for latency in env_list("LATENCIES_MS", "0,4") {
            let mut rows = Vec::new();
            let row = |writer: &str, (events, elapsed): (u64, Duration)| Row {
                workload: name.clone(),
                latency,
                writer: writer.to_owned(),
                events,
                elapsed,
                cost: None,
            };
            let mut sequential = None;
            if sample > 0 {
                let (target, target_url) = server(latency)?;
                let measured = sequential_nodelay(&records, &target_url, sample).await?;
                sequential = Some(rate(measured.0, measured.1));
                rows.push(row(
                    "sequential, 1 event per append (C# tool's strategy)",
                    measured,
                ));
                drop(target);

                let (target, target_url) = server(latency)?;
                let measured = sequential_client(&records, &target_url, sample.min(200)).await?;
                rows.push(row(
                    "sequential, eventstore 4.0.0 client (no TCP_NODELAY)",
                    measured,
                ));
                drop(target);
            }

            let (target, target_url) = server(latency)?;
            let measured = bare_loader(&records, &target_url).await?;
            let bare = Some(rate(measured.0, measured.1));
            rows.push(row(
                "bare loader (preloaded, 500/append, 8 in flight)",
                measured,
            ));
            drop(target);

            // Source order has one writer; stream order one per partition.
            let mut writers = Vec::new();
            for order in env_names("ORDERS", "source,tcp,stream") {
                match order.as_str() {
                    "source" | "tcp" | "read" => writers.push((order, 1)),
                    "stream" => writers.extend(
                        env_list("PARTITIONS", "1,8")
                            .into_iter()
                            .map(|p| (order.clone(), p)),
                    ),
                    other => return Err(format!("ORDERS: unknown order {other:?}").into()),
                }
            }
            // Each writer's runs take turns with the other writers', so a
            // machine that gets busier or quieter meanwhile shifts them all.
            let mut results: Vec<Vec<(ReplicatorRun, f64)>> =
                writers.iter().map(|_| Vec::new()).collect();
            for _ in 0..runs {
                for ((order, partitions), results) in writers.iter().zip(&mut results) {
                    let from = if order == "tcp" {
                        &source_tcp
                    } else {
                        &source_url
                    };
                    results.push(
                        replicate_once(&source, &source_url, from, latency, order, *partitions)
                            .await?,
                    );
                }
            }
            for ((order, partitions), mut results) in writers.into_iter().zip(results) {
                // The median run by time (the upper one of two middles).
                results.sort_by_key(|(run, _)| run.elapsed);
                let (run, servers) = results.swap_remove(results.len() / 2);
                rows.push(Row {
                    cost: Some((
                        per_event_us(run.cpu_seconds, run.written),
                        per_event_us(servers, run.written),
                        format!("{:.0} MiB", run.peak_rss_mib),
                    )),
                    ..row(
                        &match order.as_str() {
                            "source" => "replicator, source order".to_owned(),
                            "tcp" => "replicator, source order, TCP source (v5)".to_owned(),
                            "read" => "reader alone (pipeline into memory)".to_owned(),
                            _ => format!("replicator, stream order, partitionCount {partitions}"),
                        },
                        (run.written, run.elapsed),
                    )
                });
            }
            table.extend(rows.iter().map(|r| cells(r, sequential, bare)));
        }
    }
    println!();
    println!(
        "{events} user events per workload (small, streams: the bench's loader; mixed: the \
         testkit generator, seed 42); the sequential rows time the first {sample} ({} for the \
         eventstore client). CPU: the replicator process's user + system time per event \
         written, start-up included; servers: the source's and the target's together, during \
         the same run.",
        sample.min(200)
    );
    print_table(
        &[
            "workload",
            "target append latency",
            "writer",
            "events",
            "events/s",
            "vs sequential",
            "vs bare loader",
            "replicator CPU µs/event",
            "servers CPU µs/event",
            "replicator peak RSS",
        ],
        &table,
    );
    if let Some(line) = callgrind(env_num("CALLGRIND_EVENTS", 0) as usize)? {
        println!("{line}");
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.first().map(String::as_str) {
        Some("--serve") => {
            let latency = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            runtime.block_on(serve(ServerOptions {
                append_latency: Duration::from_millis(latency),
                tcp_port: (args.get(2).map(String::as_str) == Some("tcp")).then_some(0),
                ..ServerOptions::default()
            }))
        }
        Some("--generate") => runtime.block_on(async {
            println!("{}", generate(&args[1], args[2].parse()?, &args[3]).await?);
            Ok(())
        }),
        Some("--replicate") => runtime.block_on(async {
            let order = match args[3].as_str() {
                "source" | "tcp" => Some(WriteOrder::Source),
                "read" => None,
                _ => Some(WriteOrder::Stream),
            };
            let reader: Box<dyn Reader> = if args[3] == "tcp" {
                Box::new(TcpReader::new(TcpReaderConfig {
                    run_continuously: false,
                    ..TcpReaderConfig::new(args[1].as_str())
                })?)
            } else {
                Box::new(EsdbReader::new(EsdbReaderConfig {
                    run_continuously: false,
                    ..EsdbReaderConfig::new(&args[1])
                })?)
            };
            let line = replicate(reader, &args[2], order, args[4].parse()?).await?;
            println!("{line}");
            Ok(())
        }),
        // cargo bench passes `--bench`; anything else runs the benchmark.
        _ => runtime.block_on(bench()),
    }
}
