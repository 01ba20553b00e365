//! Live latency: how long an event appended to the source takes to become
//! visible on the target while the replicator follows the source live.
//!
//! Each case starts fresh testkit servers and, for the replicator cases, a
//! running pipeline (`EsdbReader` following the source continuously →
//! `EsdbSink`) in source order (the default) and in stream order with
//! `partitionCount` 8. A timed appender then writes
//! events to the source at a steady trickle, one per append, and a
//! subscriber on the target's `$all` notes when each arrives. The latency of
//! an event is its arrival on the target minus the source's acknowledgement
//! of its append (matched by event id; both clocks are this process's).
//!
//! Every case runs once at the trickle alone and once under load: a
//! background writer appends to the source as fast as it can (one append in
//! flight) while the trickle is timed. The baseline cases subscribe to the
//! source itself, with no replicator: what the server and the client cost.
//! The baseline hides this process's own waits for a CPU (the server sends
//! the acknowledgement and the event together, and both are timed after the
//! same wake-up), while every replicator case pays the waits of three more
//! processes (replicator, target server, and this one): on a machine busy
//! with other work the replicator rows grow a tail the baseline does not
//! show. `STAGES=1` tells that apart from the replicator holding events.
//!
//! Servers, the replicator and the background writer are child processes
//! (this binary, re-executed), so nothing shares a runtime with the timed
//! appender and the subscriber.
//!
//! `cargo bench -p replicator-benches --bench latency`
//!
//! Environment:
//! - `EVENTS` (300; 30 in a debug build, which `cargo test --all-targets`
//!   runs as a smoke test): timed events per case;
//! - `RATE` (50): timed events per second;
//! - `ORDERS` ("source,stream"): the sink's orders;
//! - `PARTITIONS` ("8"): stream order's `partitionCount`s;
//! - `LOAD` ("0,1"): run without (0) and with (1) the background writer;
//! - `LOAD_BATCH` (1): events per append of the background writer;
//! - `STAGES` (0): with 1, the replicator also notes when each timed event
//!   leaves its reader, enters `Sink::write` and is acknowledged there, and a
//!   second table splits the latency into those stages, with how long the
//!   replicator's threads waited for a CPU meanwhile (Linux schedstat: a busy
//!   machine, not the replicator, holding events);
//! - `PRELOAD` (0): generated events (the testkit's workload) in the source
//!   before each case, which the replicator copies first;
//! - `APPENDER` (`nodelay`): `client` appends the timed events through the
//!   `eventstore` 4.0.0 client instead of a `TCP_NODELAY` gRPC client;
//! - `BINARY`: the path of a `replicator` binary to run (`replicator run` with
//!   a file checkpoint, `CHECKPOINT_AFTER` (1000)) instead of the pipeline;
//! - `USER_URLS` (0): with 1, the replicator's connection strings leave out
//!   the testkit's `discoveryInterval=0`, as a user's do.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use eventstore::{Client, StreamPosition, SubscribeToAllOptions, SubscriptionEvent};
use futures::StreamExt;
use replicator_benches::{
    append_request, env_list, env_names, env_num, nodelay_client, print_table, serve, ChildProcess,
    Proposed,
};
use replicator_core::memory::MemoryCheckpointStore;
use replicator_core::{
    Event, EventStream, HeadProbe, Pipeline, Reader, ReaderError, Sink, SinkError, StartFrom,
    WriteAck,
};
use replicator_esdb::{EsdbReader, EsdbReaderConfig, EsdbSink, EsdbSinkConfig, WriteOrder};
use replicator_testkit::proto::event_store::client as pb;
use replicator_testkit::{workload, ServerOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A moment on both clocks: this process's monotonic one for latencies, the
/// wall clock to compare with the replicator's stage log.
type At = (Instant, SystemTime);
type StreamsClient = pb::streams::streams_client::StreamsClient<tonic::transport::Channel>;

/// Streams of the timed events; the replicator's stage log notes only these.
const TIMED_PREFIX: &str = "latency-";

/// Microseconds since the Unix epoch: the clock the replicator's stage log
/// shares with this process.
fn wall_micros(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

async fn append(client: &mut StreamsClient, stream: &str, ids: &[Uuid]) -> Result<(), BoxError> {
    let messages = append_request(
        stream,
        ids.iter().map(|id| Proposed {
            id: *id,
            event_type: "LatencyProbe".to_owned(),
            content_type: "application/json",
            data: format!(r#"{{"id":"{id}"}}"#).into_bytes().into(),
            metadata: Default::default(),
        }),
    );
    let reply = client.append(futures::stream::iter(messages)).await?;
    match reply.into_inner().result {
        Some(pb::streams::append_resp::Result::Success(_)) => Ok(()),
        other => Err(format!("append to {stream} failed: {other:?}").into()),
    }
}

/// Every event that appears on `url`'s `$all` after the subscription is
/// confirmed, with when it arrived. The first message says it is confirmed.
fn subscribe(
    url: &str,
) -> Result<
    (
        mpsc::UnboundedReceiver<Arrival>,
        tokio::task::JoinHandle<()>,
    ),
    BoxError,
> {
    let client = Client::new(url.parse()?)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let options = SubscribeToAllOptions::default().position(StreamPosition::End);
        let mut subscription = client.subscribe_to_all(&options).await;
        loop {
            let arrival = match subscription.next_subscription_event().await {
                Ok(SubscriptionEvent::Confirmed(_)) => Arrival::Confirmed,
                Ok(SubscriptionEvent::EventAppeared(resolved)) => Arrival::Event {
                    id: resolved.get_original_event().id,
                    at: (Instant::now(), SystemTime::now()),
                },
                Ok(_) => continue,
                Err(error) => {
                    eprintln!("the subscriber's subscription failed: {error}");
                    return;
                }
            };
            if tx.send(arrival).is_err() {
                return;
            }
        }
    });
    Ok((rx, task))
}

enum Arrival {
    Confirmed,
    Event { id: Uuid, at: At },
}

/// How the timed events are appended.
#[derive(Clone)]
enum Appender {
    /// A raw gRPC client with `TCP_NODELAY`: acknowledged as soon as written.
    NoDelay(StreamsClient),
    /// The `eventstore` 4.0.0 client, as a Rust user's application appends
    /// (no `TCP_NODELAY`: each append waits for a delayed ACK first).
    Client(Client),
}

impl Appender {
    async fn new(url: &str) -> Result<Self, BoxError> {
        Ok(match std::env::var("APPENDER").as_deref() {
            Ok("client") => Appender::Client(Client::new(url.parse()?)?),
            _ => Appender::NoDelay(nodelay_client(url).await?),
        })
    }

    async fn append(&mut self, stream: &str, id: Uuid) -> Result<(), BoxError> {
        match self {
            Appender::NoDelay(client) => append(client, stream, &[id]).await,
            Appender::Client(client) => {
                let event =
                    eventstore::EventData::json("LatencyProbe", &serde_json::json!({ "id": id }))?
                        .id(id);
                let options = eventstore::AppendToStreamOptions::default();
                client.append_to_stream(stream, &options, event).await?;
                Ok(())
            }
        }
    }
}

/// Appends one event per id at its time (`period` apart from now, whether or
/// not the appends before it were acknowledged), sending back when each was
/// acknowledged.
async fn trickle(
    appender: Appender,
    ids: Vec<Uuid>,
    period: Duration,
    acks: mpsc::UnboundedSender<(Uuid, Result<At, BoxError>)>,
) {
    let started = tokio::time::Instant::now();
    for (i, id) in ids.into_iter().enumerate() {
        tokio::time::sleep_until(started + period * i as u32).await;
        let (mut appender, acks) = (appender.clone(), acks.clone());
        tokio::spawn(async move {
            let stream = format!("{TIMED_PREFIX}{}", i % 16);
            let acked = appender
                .append(&stream, id)
                .await
                .map(|()| (Instant::now(), SystemTime::now()));
            let _ = acks.send((id, acked));
        });
    }
}

/// One timed event: when its append was acknowledged and when it arrived.
struct Timed {
    id: Uuid,
    acked: At,
    arrived: Option<At>,
}

/// What one case measured.
struct Measured {
    timed: Vec<Timed>,
    /// Other events seen by the subscriber while the trickle ran.
    background: u64,
    elapsed: Duration,
}

/// Runs one case: the subscriber on `observed`, appends to `source`, with
/// the background writer when `load`.
async fn measure(
    source: &str,
    observed: &str,
    load: bool,
    events: u64,
    rate: u64,
) -> Result<Measured, BoxError> {
    let (mut arrivals, subscriber) = subscribe(observed)?;
    let _abort = AbortOnDrop(subscriber);
    match tokio::time::timeout(Duration::from_secs(30), arrivals.recv()).await {
        Ok(Some(Arrival::Confirmed)) => {}
        _ => return Err("the subscriber was not confirmed within 30 s".into()),
    }
    let mut appender = Appender::new(source).await?;

    // One event through the whole path first: the replicator is then
    // connected and following live.
    let warm_up = Uuid::new_v4();
    appender.append("warm-up", warm_up).await?;
    let seen = tokio::time::timeout(Duration::from_secs(600), async {
        while let Some(arrival) = arrivals.recv().await {
            if matches!(arrival, Arrival::Event { id, .. } if id == warm_up) {
                return true;
            }
        }
        false
    })
    .await;
    if seen != Ok(true) {
        return Err("the warm-up event did not arrive within 600 s".into());
    }

    let loader = if load {
        let batch = env_num("LOAD_BATCH", 1).max(1);
        Some(ChildProcess::answering(&["--load".into(), source.to_owned(), batch.to_string()])?.0)
    } else {
        None
    };

    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let ids: Vec<Uuid> = (0..events).map(|_| Uuid::new_v4()).collect();
    let timed_ids: std::collections::HashSet<Uuid> = ids.iter().copied().collect();
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let _appender = AbortOnDrop(tokio::spawn(trickle(appender, ids.clone(), period, ack_tx)));
    let mut acked = HashMap::new();
    let mut arrived: HashMap<Uuid, At> = HashMap::new();
    let mut background = 0;
    let mut elapsed = None;
    let mut deadline = None;
    while acked.len() < ids.len() || arrived.len() < ids.len() {
        tokio::select! {
            Some((id, ack)) = ack_rx.recv() => {
                acked.insert(id, ack?);
                if acked.len() == ids.len() {
                    elapsed = Some(started.elapsed());
                    // Whatever has not arrived 30 s after the last
                    // acknowledgement counts as missing.
                    deadline = Some(tokio::time::Instant::now() + Duration::from_secs(30));
                }
            }
            arrival = arrivals.recv() => match arrival {
                Some(Arrival::Event { id, at }) => {
                    if timed_ids.contains(&id) {
                        arrived.entry(id).or_insert(at);
                    } else if elapsed.is_none() {
                        background += 1;
                    }
                }
                Some(Arrival::Confirmed) => {}
                None => return Err("the subscriber stopped".into()),
            },
            () = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => break,
        }
    }
    drop(loader);
    let timed = ids
        .iter()
        .map(|id| Timed {
            id: *id,
            acked: acked[id],
            arrived: arrived.get(id).copied(),
        })
        .collect();
    Ok(Measured {
        timed,
        background,
        elapsed: elapsed.unwrap_or_else(|| started.elapsed()),
    })
}

/// Aborts a task when dropped: a case's helpers end with it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Signed milliseconds from `from` to `to`.
fn millis(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(from - to).as_secs_f64() * 1e3,
    }
}

/// Median, p95, p99 and max of `values` (nearest rank), formatted.
fn percentiles(values: &mut [f64]) -> Vec<String> {
    if values.is_empty() {
        return vec!["-".into(); 4];
    }
    values.sort_by(f64::total_cmp);
    let rank =
        |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    [rank(0.5), rank(0.95), rank(0.99), values[values.len() - 1]]
        .iter()
        .map(|v| format!("{v:.1}"))
        .collect()
}

fn latency_row(case: &str, load: bool, measured: &Measured) -> Vec<String> {
    let mut latencies: Vec<f64> = measured
        .timed
        .iter()
        .filter_map(|t| t.arrived.map(|(at, _)| millis(t.acked.0, at)))
        .collect();
    let missing = measured.timed.len() - latencies.len();
    let mut row = vec![
        case.to_owned(),
        if load {
            format!(
                "{:.0} events/s",
                measured.background as f64 / measured.elapsed.as_secs_f64()
            )
        } else {
            "-".into()
        },
        format!("{}", latencies.len()),
    ];
    row.extend(percentiles(&mut latencies));
    row.push(missing.to_string());
    row
}

/// One stage of the replicator's stage log: when (wall-clock microseconds)
/// and the replicator's threads' total wait for a CPU until then.
#[derive(Clone, Copy)]
struct Mark {
    at: i64,
    run_delay: i64,
}

/// Reads the replicator's stage log: per event id, its marks at each stage
/// (`R`ead, `W`rite started, `A`cknowledged).
fn read_stages(path: &Path) -> Result<HashMap<Uuid, [Option<Mark>; 3]>, BoxError> {
    let mut stages: HashMap<Uuid, [Option<Mark>; 3]> = HashMap::new();
    for line in std::fs::read_to_string(path)?.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [tag, id, at, run_delay] = fields[..] else {
            continue;
        };
        let slot = match tag {
            "R" => 0,
            "W" => 1,
            "A" => 2,
            _ => continue,
        };
        let mark = Mark {
            at: at.parse()?,
            run_delay: run_delay.parse()?,
        };
        // A retried write is noted again: keep the first time of each stage.
        stages.entry(id.parse()?).or_default()[slot].get_or_insert(mark);
    }
    Ok(stages)
}

fn stage_rows(case: &str, measured: &Measured, log: &Path) -> Result<Vec<Vec<String>>, BoxError> {
    let stages = read_stages(log)?;
    let names = [
        "source ack → reader",
        "reader → Sink::write",
        "Sink::write → its ack",
        "sink ack → target subscriber",
        "reader → Sink::write: replicator threads runnable, not running",
        "Sink::write → its ack: replicator threads runnable, not running",
    ];
    let mut spans: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for t in &measured.timed {
        let (Some((_, arrived)), Some(&[Some(read), Some(write), Some(ack)])) =
            (t.arrived, stages.get(&t.id))
        else {
            continue;
        };
        let points = [
            wall_micros(t.acked.1),
            read.at,
            write.at,
            ack.at,
            wall_micros(arrived),
        ];
        for (span, pair) in spans.iter_mut().zip(points.windows(2)) {
            span.push((pair[1] - pair[0]) as f64 / 1e3);
        }
        spans[4].push((write.run_delay - read.run_delay) as f64 / 1e3);
        spans[5].push((ack.run_delay - write.run_delay) as f64 / 1e3);
    }
    Ok(names
        .iter()
        .zip(spans.iter_mut())
        .map(|(name, span)| {
            let mut row = vec![case.to_owned(), (*name).to_owned()];
            row.extend(percentiles(span));
            row
        })
        .collect())
}

async fn bench() -> Result<(), BoxError> {
    // `cargo test --all-targets` runs this in a debug build as a smoke test.
    let events = env_num("EVENTS", if cfg!(debug_assertions) { 30 } else { 300 });
    let rate = env_num("RATE", 50);
    let stages = env_num("STAGES", 0) == 1;
    let mut rows = Vec::new();
    let mut stage_table = Vec::new();
    for load in env_list("LOAD", "0,1") {
        let load = load == 1;
        let (source, source_url) = ChildProcess::answering(&["--serve".into()])?;
        preload(&source_url).await?;
        let measured = measure(&source_url, &source_url, load, events, rate).await?;
        rows.push(latency_row("source alone (baseline)", load, &measured));
        drop(source);

        let mut writers = Vec::new();
        for order in env_names("ORDERS", "source,stream") {
            match order.as_str() {
                "source" => writers.push((order, 1)),
                "stream" => writers.extend(
                    env_list("PARTITIONS", "8")
                        .into_iter()
                        .map(|p| (order.clone(), p)),
                ),
                other => return Err(format!("ORDERS: unknown order {other:?}").into()),
            }
        }
        for (order, partitions) in writers {
            let (_source, source_url) = ChildProcess::answering(&["--serve".into()])?;
            preload(&source_url).await?;
            let (_target, target_url) = ChildProcess::answering(&["--serve".into()])?;
            let log = stage_log_path(&order, partitions, load);
            let _ = std::fs::remove_file(&log);
            let mut args = vec![
                "--replicate".into(),
                source_url.clone(),
                target_url.clone(),
                order.clone(),
                partitions.to_string(),
            ];
            if stages {
                args.push(log.display().to_string());
            }
            let replicator = match std::env::var("BINARY") {
                Ok(binary) => run_binary(&binary, &source_url, &target_url, &order, partitions)?,
                Err(_) => ChildProcess::answering(&args)?.0,
            };
            let measured = measure(&source_url, &target_url, load, events, rate).await?;
            let case = match order.as_str() {
                "source" => "replicator, source order".to_owned(),
                _ => format!("replicator, stream order, partitionCount {partitions}"),
            };
            rows.push(latency_row(&case, load, &measured));
            drop(replicator);
            if stages {
                let label = format!("{case}{}", if load { ", under load" } else { "" });
                stage_table.extend(stage_rows(&label, &measured, &log)?);
                let _ = std::fs::remove_file(&log);
            }
        }
    }
    println!(
        "{events} timed events per case, {rate}/s, one per append; latency = arrival on the \
         observed $all − the source's append acknowledgement, in ms"
    );
    print_table(
        &[
            "case",
            "background writer (seen)",
            "arrived",
            "median",
            "p95",
            "p99",
            "max",
            "missing",
        ],
        &rows,
    );
    if stages {
        println!("\nwhere the time goes (ms; wall clocks of the bench and the replicator)");
        print_table(
            &["case", "stage", "median", "p95", "p99", "max"],
            &stage_table,
        );
    }
    Ok(())
}

/// Fills the source with `PRELOAD` generated events (the testkit's
/// workload), which the replicator copies before the timed events.
async fn preload(url: &str) -> Result<(), BoxError> {
    let events = env_num("PRELOAD", 0);
    if events > 0 {
        let client = Client::new(url.parse()?)?;
        workload::generate(&client, &workload::WorkloadSpec::new(42, events as usize)).await?;
    }
    Ok(())
}

/// `replicator run` with a file checkpoint, as a user configures it.
fn run_binary(
    binary: &str,
    source: &str,
    target: &str,
    order: &str,
    partitions: u64,
) -> Result<ChildProcess, BoxError> {
    let dir = std::env::temp_dir().join(format!("replicator-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(dir.join("checkpoint"));
    let config = dir.join("appsettings.yaml");
    std::fs::write(
        &config,
        format!(
            "replicator:\n  reader:\n    connectionString: {}\n  sink:\n    connectionString: {}\n    \
             order: {order}\n    partitionCount: {partitions}\n  checkpoint:\n    type: file\n    path: {}\n    \
             checkpointAfter: {}\n",
            user_url(source),
            user_url(target),
            dir.join("checkpoint").display(),
            env_num("CHECKPOINT_AFTER", 1000),
        ),
    )?;
    // It prints no answer: the warm-up event tells when it replicates.
    let mut command = Command::new(binary);
    command.args(["run", "--config"]).arg(&config);
    ChildProcess::from_command(command)
}

/// A connection string as a user writes it (`USER_URLS=1`): without the
/// testkit's `discoveryInterval=0`.
fn user_url(url: &str) -> String {
    if env_num("USER_URLS", 0) == 1 {
        url.replace("&discoveryInterval=0", "")
    } else {
        url.to_owned()
    }
}

fn stage_log_path(order: &str, partitions: u64, load: bool) -> PathBuf {
    std::env::temp_dir().join(format!(
        "replicator-latency-{}-{order}-{partitions}-{load}.log",
        std::process::id()
    ))
}

/// Notes when each timed event passes a stage of the replicator.
struct StageLog(Mutex<std::fs::File>);

impl StageLog {
    fn note(&self, tag: char, events: &[Event]) {
        let at = wall_micros(SystemTime::now());
        let mut lines = String::new();
        let mut run_delay = None;
        for event in events.iter().filter(|e| e.stream.starts_with(TIMED_PREFIX)) {
            let run_delay = *run_delay.get_or_insert_with(run_delay_micros);
            lines.push_str(&format!("{tag} {} {at} {run_delay}\n", event.id));
        }
        if !lines.is_empty() {
            let mut file = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let _ = file.write_all(lines.as_bytes());
        }
    }
}

/// How long this process's threads have been runnable without running
/// (waiting for a CPU), summed over its threads, in microseconds: tells a
/// machine too busy to run the replicator from the replicator holding events.
fn run_delay_micros() -> i64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().nth(1)?.parse::<i64>().ok())
        .sum::<i64>()
        / 1000
}

struct StagedReader {
    inner: EsdbReader,
    log: Arc<StageLog>,
}

#[async_trait]
impl Reader for StagedReader {
    async fn read(&mut self, from: StartFrom) -> Result<EventStream, ReaderError> {
        let log = self.log.clone();
        let stream = self.inner.read(from).await?;
        Ok(stream
            .inspect(move |item| {
                if let Ok(event) = item {
                    log.note('R', std::slice::from_ref(event));
                }
            })
            .boxed())
    }

    fn report_health_to(&mut self, health: replicator_core::health::HealthReporter) {
        self.inner.report_health_to(health);
    }

    fn head_probe(&self) -> Option<Arc<dyn HeadProbe>> {
        self.inner.head_probe()
    }
}

struct StagedSink {
    inner: EsdbSink,
    log: Arc<StageLog>,
}

#[async_trait]
impl Sink for StagedSink {
    async fn write(&self, batch: &[Event]) -> Result<WriteAck, SinkError> {
        self.log.note('W', batch);
        let ack = self.inner.write(batch).await?;
        self.log.note('A', batch);
        Ok(ack)
    }

    fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight()
    }

    async fn check(&self) -> Result<(), SinkError> {
        self.inner.check().await
    }
}

/// The replicator, following `source` live until killed; with a stage log
/// when `log` is given.
async fn replicate(
    source: &str,
    target: &str,
    order: WriteOrder,
    partitions: usize,
    log: Option<&str>,
) -> Result<(), BoxError> {
    let reader = EsdbReader::new(EsdbReaderConfig {
        run_continuously: true,
        ..EsdbReaderConfig::new(user_url(source))
    })?;
    let sink = EsdbSink::new(EsdbSinkConfig {
        partition_count: partitions,
        order,
        ..EsdbSinkConfig::new(user_url(target))
    })?;
    let store = MemoryCheckpointStore::new();
    let pipeline = match log {
        Some(path) => {
            let log = Arc::new(StageLog(Mutex::new(std::fs::File::create(path)?)));
            Pipeline::builder(
                StagedReader {
                    inner: reader,
                    log: log.clone(),
                },
                StagedSink { inner: sink, log },
                store,
            )
        }
        None => Pipeline::builder(reader, sink, store),
    }
    .build();
    println!("replicating");
    pipeline.run(CancellationToken::new()).await?;
    Err("the replicator stopped".into())
}

/// Appends to `source` as fast as one append in flight allows, until killed.
async fn load(source: &str, batch: usize) -> Result<(), BoxError> {
    let mut client = nodelay_client(source).await?;
    let mut n: u64 = 0;
    loop {
        let ids: Vec<Uuid> = (0..batch).map(|_| Uuid::new_v4()).collect();
        append(&mut client, &format!("load-{}", n % 100), &ids).await?;
        if n == 0 {
            println!("loading");
        }
        n += 1;
    }
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.first().map(String::as_str) {
        Some("--serve") => runtime.block_on(serve(ServerOptions::default())),
        Some("--replicate") => runtime.block_on(replicate(
            &args[1],
            &args[2],
            match args[3].as_str() {
                "source" => WriteOrder::Source,
                _ => WriteOrder::Stream,
            },
            args[4].parse()?,
            args.get(5).map(String::as_str),
        )),
        Some("--load") => runtime.block_on(load(&args[1], args[2].parse()?)),
        // cargo bench passes `--bench`; anything else runs the benchmark.
        _ => runtime.block_on(bench()),
    }
}
