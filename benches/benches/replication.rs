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
//! - **replicator**: our pipeline, `EsdbReader` → `EsdbSink`, per
//!   `partitionCount`; each run is then compared with the source event by event.
//!
//! Servers, the workload generator and each replicator run are child
//! processes (this binary, re-executed), so the peak memory printed for a
//! replicator run is that run's own.
//!
//! `cargo bench -p replicator-benches --bench replication`
//! Environment: EVENTS (20000), LATENCIES_MS ("0,4"), PARTITIONS ("1,8"),
//! SEQUENTIAL_SAMPLE (1000 events).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventstore::{AppendToStreamOptions, Client, ExpectedRevision};
use futures::{StreamExt, TryStreamExt};
use replicator_benches::{peak_rss_mib, print_table, rate};
use replicator_core::memory::MemoryCheckpointStore;
use replicator_core::{ChangeKind, ContentType, Event, Pipeline, Reader, StartFrom};
use replicator_esdb::{to_event_data, EsdbReader, EsdbReaderConfig, EsdbSink, EsdbSinkConfig};
use replicator_testkit::proto::event_store::client as pb;
use replicator_testkit::{compare, workload, EsdbServer, ServerOptions};
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn env_list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|v| v.trim().parse().expect("a comma-separated list of numbers"))
        .collect()
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A child process of this binary; its first stdout line is its answer.
struct ChildProcess {
    child: Child,
    first_line: String,
}

impl ChildProcess {
    fn spawn(args: &[String]) -> Result<Self, BoxError> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()?;
        let mut first_line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut first_line)?;
        if first_line.is_empty() {
            return Err(format!("child {args:?} printed nothing: {:?}", child.wait()?).into());
        }
        Ok(ChildProcess {
            child,
            first_line: first_line.trim().to_owned(),
        })
    }

    fn server(append_latency_ms: u64) -> Result<Self, BoxError> {
        Self::spawn(&["--serve".into(), append_latency_ms.to_string()])
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(url: &str) -> Result<Client, BoxError> {
    Ok(Client::new(url.parse()?)?)
}

/// A raw gRPC Streams client with `TCP_NODELAY`, like the .NET client.
async fn nodelay_client(
    url: &str,
) -> Result<pb::streams::streams_client::StreamsClient<tonic::transport::Channel>, BoxError> {
    let port = url
        .trim_start_matches("esdb://")
        .split(['/', '?'])
        .next()
        .and_then(|h| h.rsplit(':').next())
        .ok_or("no port in the connection string")?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(pb::streams::streams_client::StreamsClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20))
}

fn append_request(stream: &str, events: &[&Event]) -> Vec<pb::streams::AppendReq> {
    use pb::streams::append_req::{self, options::ExpectedStreamRevision, Content};
    let mut messages = vec![pb::streams::AppendReq {
        content: Some(Content::Options(append_req::Options {
            stream_identifier: Some(pb::StreamIdentifier {
                stream_name: stream.as_bytes().to_vec().into(),
            }),
            expected_stream_revision: Some(ExpectedStreamRevision::Any(())),
        })),
    }];
    for event in events {
        let content_type = match event.content_type {
            ContentType::Json => "application/json",
            ContentType::Binary => "application/octet-stream",
        };
        messages.push(pb::streams::AppendReq {
            content: Some(Content::ProposedMessage(append_req::ProposedMessage {
                id: Some(pb::Uuid {
                    value: Some(pb::uuid::Value::String(event.id.to_string())),
                }),
                metadata: HashMap::from([
                    ("type".to_owned(), event.event_type.clone()),
                    ("content-type".to_owned(), content_type.to_owned()),
                ]),
                custom_metadata: event.metadata.clone(),
                data: event.data.clone(),
            })),
        });
    }
    messages
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
async fn replicate(source: &str, target: &str, partitions: usize) -> Result<String, BoxError> {
    let reader = EsdbReader::new(EsdbReaderConfig {
        run_continuously: false,
        ..EsdbReaderConfig::new(source)
    })?;
    let sink = EsdbSink::new(EsdbSinkConfig {
        partition_count: partitions,
        ..EsdbSinkConfig::new(target)
    })?;
    let started = Instant::now();
    let summary = Pipeline::builder(reader, sink, MemoryCheckpointStore::new())
        .build()
        .run(CancellationToken::new())
        .await?;
    let elapsed = started.elapsed();
    Ok(format!(
        "{} {} {}",
        summary.written,
        elapsed.as_secs_f64(),
        peak_rss_mib().unwrap_or(0.0)
    ))
}

fn row(
    latency: u64,
    writer: &str,
    events: u64,
    elapsed: Duration,
    reference: f64,
    peak: &str,
) -> Vec<String> {
    let r = rate(events, elapsed);
    vec![
        format!("{latency} ms"),
        writer.to_owned(),
        events.to_string(),
        format!("{r:.0}"),
        format!("{:.1}×", r / reference),
        peak.to_owned(),
    ]
}

async fn bench() -> Result<(), BoxError> {
    let events = env_num("EVENTS", 20_000) as usize;
    let sample = env_num("SEQUENTIAL_SAMPLE", 1_000) as usize;
    let source = ChildProcess::server(0)?;
    let generated = ChildProcess::spawn(&[
        "--generate".into(),
        source.first_line.clone(),
        events.to_string(),
    ])?;
    println!("source: {}", generated.first_line);
    drop(generated);
    let records = read_source(&source.first_line).await?;
    println!(
        "{} records in the source $all, {} user events to append\n",
        records.len(),
        user_appends(&records).len()
    );

    let mut rows = Vec::new();
    for latency in env_list("LATENCIES_MS", "0,4") {
        let target = ChildProcess::server(latency)?;
        let (n, elapsed) = sequential_nodelay(&records, &target.first_line, sample).await?;
        let reference = rate(n, elapsed);
        rows.push(row(
            latency,
            "sequential, 1 event per append (C# tool's strategy)",
            n,
            elapsed,
            reference,
            "-",
        ));
        drop(target);

        let target = ChildProcess::server(latency)?;
        let (n, elapsed) = sequential_client(&records, &target.first_line, sample.min(200)).await?;
        rows.push(row(
            latency,
            "sequential, eventstore 4.0.0 client (no TCP_NODELAY)",
            n,
            elapsed,
            reference,
            "-",
        ));
        drop(target);

        let target = ChildProcess::server(latency)?;
        let (n, elapsed) = bare_loader(&records, &target.first_line).await?;
        rows.push(row(
            latency,
            "bare loader (preloaded, 500/append, 8 in flight)",
            n,
            elapsed,
            reference,
            "-",
        ));
        drop(target);

        for partitions in env_list("PARTITIONS", "1,8") {
            let target = ChildProcess::server(latency)?;
            let run = ChildProcess::spawn(&[
                "--replicate".into(),
                source.first_line.clone(),
                target.first_line.clone(),
                partitions.to_string(),
            ])?;
            let mut parts = run.first_line.split_whitespace();
            let written: u64 = parts.next().ok_or("no count")?.parse()?;
            let seconds: f64 = parts.next().ok_or("no time")?.parse()?;
            let peak: f64 = parts.next().ok_or("no memory")?.parse()?;
            drop(run);
            let report =
                compare::compare(&client(&source.first_line)?, &client(&target.first_line)?)
                    .await?;
            assert!(
                report.is_identical(),
                "replication not exact: {:?}",
                report.differences
            );
            rows.push(row(
                latency,
                &format!("replicator, partitionCount {partitions}"),
                written,
                Duration::from_secs_f64(seconds),
                reference,
                &format!("{peak:.0} MiB"),
            ));
        }
    }
    println!("{events} generated user events (testkit workload, seed 42); the sequential rows time the first {sample} (200 for the eventstore client)");
    print_table(
        &[
            "target append latency",
            "writer",
            "events",
            "events/s",
            "vs sequential",
            "peak RSS",
        ],
        &rows,
    );
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.first().map(String::as_str) {
        Some("--serve") => runtime.block_on(async {
            let latency = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            let server = EsdbServer::start_with(ServerOptions {
                append_latency: Duration::from_millis(latency),
                ..ServerOptions::default()
            })
            .await?;
            println!("{}", server.connection_string());
            // Serve until the parent kills this process.
            std::future::pending::<()>().await;
            Ok(())
        }),
        Some("--generate") => runtime.block_on(async {
            let (url, events) = (&args[1], args[2].parse()?);
            let summary =
                workload::generate(&client(url)?, &workload::WorkloadSpec::new(42, events)).await?;
            println!("{summary:?}");
            Ok(())
        }),
        Some("--replicate") => runtime.block_on(async {
            let line = replicate(&args[1], &args[2], args[3].parse()?).await?;
            println!("{line}");
            Ok(())
        }),
        // cargo bench passes `--bench`; anything else runs the benchmark.
        _ => runtime.block_on(bench()),
    }
}
