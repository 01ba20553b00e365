//! Scale: millions of events over many streams, or in one huge stream,
//! replicated between two testkit servers; the replicator's throughput, CPU
//! per event, and its memory sampled while it runs.
//!
//! `nice -n 10 cargo bench -p replicator-benches --bench scale`
//!
//! Environment (defaults in brackets):
//! - `SCALE_EVENTS` [1000000; 2000 in a debug build, which `cargo test
//!   --all-targets` runs as a smoke test]: user events in the source.
//! - `SCALE_STREAMS` [100000; 200 in a debug build]: streams of the `streams` case; event `i` goes to
//!   stream `i % SCALE_STREAMS` (round-robin), so the source's `$all`
//!   interleaves them.
//! - `SCALE_CASES` [streams,huge]: `streams`, and `huge` (every event in one
//!   stream).
//! - `SCALE_RUN` [1]: consecutive events of a stream per append when filling
//!   the `streams` case (1: every event of a source read batch is of another
//!   stream, the sink's hardest case). The `huge` case appends 500 at a time.
//! - `PARTITIONS` [1,8]: the replicator's `partitionCount`s.
//! - `SCALE_REVISIONS` [source]: the sink's revision mode, `source` or
//!   `tracked` (tracked keeps a per-stream cache of up to 100,000 streams).
//!
//! Events are 150-byte JSON bodies with 24 bytes of custom metadata. The
//! source is filled over gRPC batch appends (4 sessions, 512 requests in
//! flight each), not through the replicator; each replicator run writes to a
//! fresh target. The servers and each replicator run are child processes of
//! this binary, re-executed, so what is measured of a run is its own:
//!
//! - wall time from the pipeline's start to its end → events/s;
//! - CPU seconds (user + system, `/proc/self/stat` at the end of the run, so
//!   start-up included) → µs per event;
//! - RSS (`VmRSS`), sampled by the parent once a second on each progress line
//!   of the run (and by the run itself at its end): minimum and maximum once
//!   10 % of the events were written, and its value when 10 %, 20 %, … of
//!   them had been; the peak (`VmHWM`);
//! - the servers' RSS after loading and after the run (bytes per event of the
//!   testkit's store), and their CPU during the run.
//!
//! Each copy is then checked in full: the target's `$all` is read and every
//! event of the workload must be there exactly once, under its stream and
//! source revision, with its id, type and body (ids and bodies are derived
//! from the event's number).
//!
//! The default (1M events, 100k streams, both cases, partitionCount 1 and 8)
//! takes 3 min 12 s on 2 cores and fits a CI job (servers ~0.8 GB each).
//! The full scale run (about 31 minutes; each server held 6–8 GB with the
//! testkit store of 59bd651, about 3 GB since its lean store):
//! `SCALE_EVENTS=10000000 SCALE_STREAMS=1000000 nice -n 10 cargo bench -p replicator-benches --bench scale`
//!
//! Measured 2026-11-30 at 59bd651 on the 2-core development machine, shared
//! with other builds (wall times and events/s are noisy; CPU per event less):
//!
//! | events | case | partitionCount | events/s | replicator CPU µs/event | RSS from 10 % written | peak RSS |
//! |---|---|---|---|---|---|---|
//! | 10M | 1M streams | 1 | 23,376 | 23.0 | 22–28 MiB | 29 MiB |
//! | 10M | 1M streams | 8 | 30,040 | 22.9 | 51–72 MiB | 76 MiB |
//! | 10M | one stream | 1 | 48,137 | 10.2 | 17–19 MiB | 19 MiB |
//! | 10M | one stream | 8 | 51,890 | 10.5 | 18–19 MiB | 19 MiB |
//! | 1M | 100k streams | 1 | 23,517 | 23.6 | 21–28 MiB | 28 MiB |
//! | 1M | 100k streams | 8 | 23,097 | 24.1 | 56–71 MiB | 72 MiB |
//! | 1M | one stream | 1 | 54,423 | 10.2 | 18–19 MiB | 19 MiB |
//! | 1M | one stream | 8 | 61,321 | 10.2 | 17–18 MiB | 18 MiB |
//!
//! The replicator's RSS does not grow with events or streams: flat from 10 %
//! to 100 % of each run, and the same at 1M events over 100k streams as at
//! 10M over 1M. What partitionCount 8 added with many streams (~35 MiB) was
//! bounded: `EsdbSink::write` makes one boxed future per stream of a batch up
//! front (10 KB each then; 500 per batch when every event is of another
//! stream), though only 32 run at once (massif and heaptrack: 45 % of the
//! live heap with partitionCount 1, 69 % with 8). Since the sink boxes its
//! rare branches, that future is 1.5 KB; 1M events over 100k streams on an
//! idle machine after that change: partitionCount 1 37,267 events/s, 18.8 µs
//! per event, RSS 17–18 MiB; partitionCount 8 60,214 events/s, 17.5 µs, RSS
//! 28–31 MiB (was 56–71). The source server spends ~4.4 µs of CPU per event
//! in every case, the target 4.0 (one stream) to 13 (1M streams: one append
//! per event).
//!
//! `SCALE_REVISIONS=tracked` with more streams than the sink's tracked cache
//! (100,000; 1M events over 200k streams) did not scale at 59bd651: once the
//! cache had dropped half its streams, each batch of 500 took 12–13 s (about
//! 40 events/s) and the replicator's RSS grew steadily, from 81 to 139 MiB.
//! Each miss probed the target with an append at an impossible revision
//! through the shared batch-append session, which the `eventstore` client ends
//! on any refused append, so every append in flight on it was redone plainly.
//! The probe now goes as a plain append: the same run completes at 3,840
//! events/s with partitionCount 8 and RSS 37–54 MiB (idle machine). Still
//! slow, since each miss of the cache costs a probe and a search of the
//! stream's tail (111 µs of replicator CPU and 80 µs of target CPU per
//! event); a cache that forgets the least recently used stream instead of
//! half of them would cut the misses of such a workload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventstore::{Client, ReadAllOptions};
use futures::SinkExt;
use replicator_benches::{
    env_num, nodelay_client, peak_rss_mib, print_table, process_rss_mib, rate, serve, ChildProcess,
};
use replicator_core::memory::MemoryCheckpointStore;
use replicator_core::Pipeline;
use replicator_esdb::{EsdbReader, EsdbReaderConfig, EsdbSink, EsdbSinkConfig, RevisionMode};
use replicator_testkit::proto::event_store::client as pb;
use replicator_testkit::ServerOptions;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Linux reports process CPU times in these ticks per second.
const USER_HZ: f64 = 100.0;
const EVENT_TYPE: &str = "ScaleEvent";
const METADATA: &[u8] = br#"{"origin":"scale-bench"}"#;
const BODY_BYTES: usize = 150;
/// Batch-append sessions of the loader, and requests in flight on each.
const LOAD_SESSIONS: u64 = 4;
const LOAD_WINDOW: usize = 512;

fn env_str(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// `events` events spread round-robin over `streams` streams: event `i` is
/// revision `i / streams` of stream `i % streams`, so both ways round are
/// arithmetic and nothing about the workload needs to be kept in memory.
#[derive(Debug, Clone, Copy)]
struct Workload {
    events: u64,
    streams: u64,
}

impl Workload {
    fn stream_name(stream: u64) -> String {
        format!("scale-{stream}")
    }

    fn stream_index(name: &str) -> Option<u64> {
        name.strip_prefix("scale-")?.parse().ok()
    }

    fn events_in(&self, stream: u64) -> u64 {
        self.events / self.streams + u64::from(stream < self.events % self.streams)
    }

    fn number(&self, stream: u64, revision: u64) -> Option<u64> {
        let i = revision.checked_mul(self.streams)?.checked_add(stream)?;
        (stream < self.streams && i < self.events).then_some(i)
    }

    fn id(i: u64) -> Uuid {
        Uuid::from_u64_pair(0x5ca1_e5ca_1e00_4000, 0x8000_0000_0000_0000 | i)
    }

    fn body(&self, i: u64) -> Vec<u8> {
        let (stream, revision) = (i % self.streams, i / self.streams);
        let mut body = format!(
            r#"{{"seq":{i},"stream":"scale-{stream}","revision":{revision},"amount":{}.{:02},"currency":"EUR","note":""#,
            i % 10_000,
            i % 100
        );
        while body.len() < BODY_BYTES - 2 {
            body.push('x');
        }
        body.push_str(r#""}"#);
        body.into_bytes()
    }
}

// ---------------------------------------------------------------------------
// Children: server, loader, replicator.

fn batch_request(
    workload: &Workload,
    stream: u64,
    revisions: std::ops::Range<u64>,
) -> pb::streams::BatchAppendReq {
    use pb::streams::batch_append_req::{
        options::ExpectedStreamPosition, Options, ProposedMessage,
    };
    let expected = match revisions.start {
        0 => ExpectedStreamPosition::NoStream(()),
        r => ExpectedStreamPosition::StreamPosition(r - 1),
    };
    let proposed_messages = revisions
        .map(|revision| {
            let i = revision * workload.streams + stream;
            let id = Workload::id(i).as_u64_pair();
            ProposedMessage {
                id: Some(pb::Uuid {
                    value: Some(pb::uuid::Value::Structured(pb::uuid::Structured {
                        most_significant_bits: id.0 as i64,
                        least_significant_bits: id.1 as i64,
                    })),
                }),
                metadata: [
                    ("type".to_owned(), EVENT_TYPE.to_owned()),
                    ("content-type".to_owned(), "application/json".to_owned()),
                ]
                .into(),
                custom_metadata: METADATA.to_vec().into(),
                data: workload.body(i).into(),
            }
        })
        .collect();
    pb::streams::BatchAppendReq {
        correlation_id: Some(pb::Uuid {
            value: Some(pb::uuid::Value::String(Uuid::new_v4().to_string())),
        }),
        options: Some(Options {
            stream_identifier: Some(pb::StreamIdentifier {
                stream_name: Workload::stream_name(stream).into_bytes().into(),
            }),
            expected_stream_position: Some(expected),
            deadline_option: None,
        }),
        proposed_messages,
        is_final: true,
    }
}

/// Fills the source: waves of `run` events of every stream in turn, each
/// append stating the revision it expects, a stream's appends always on the
/// same session (which the server applies in order).
async fn load(url: &str, workload: Workload, run: u64) -> Result<Duration, BoxError> {
    use pb::streams::batch_append_resp::Result as Outcome;
    let client = nodelay_client(url).await?;
    let mut sessions = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..LOAD_SESSIONS {
        let (tx, rx) = futures::channel::mpsc::channel(LOAD_WINDOW);
        let window = Arc::new(tokio::sync::Semaphore::new(LOAD_WINDOW));
        sessions.push((tx, window.clone()));
        let mut client = client.clone();
        answers.push(tokio::spawn(async move {
            let mut replies = client.batch_append(rx).await?.into_inner();
            while let Some(reply) = replies.message().await? {
                if let Some(Outcome::Error(status)) = reply.result {
                    return Err::<(), BoxError>(format!("append refused: {status:?}").into());
                }
                window.add_permits(1);
            }
            Ok(())
        }));
    }
    let started = Instant::now();
    let longest = workload.events_in(0);
    for wave in 0..longest.div_ceil(run) {
        for stream in 0..workload.streams {
            let end = workload.events_in(stream).min((wave + 1) * run);
            if wave * run >= end {
                continue;
            }
            let (tx, window) = &mut sessions[(stream % LOAD_SESSIONS) as usize];
            window.acquire().await?.forget();
            tx.send(batch_request(&workload, stream, wave * run..end))
                .await?;
        }
    }
    drop(sessions);
    for answer in answers {
        answer.await??;
    }
    Ok(started.elapsed())
}

/// CPU seconds (user, system) of a process so far.
fn cpu_seconds(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces; utime and stime
    // are the 14th and 15th fields of the line.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |n: usize| fields.get(n)?.parse::<f64>().ok();
    Some((ticks(11)? / USER_HZ, ticks(12)? / USER_HZ))
}

/// One replication in this (child) process: a progress line a second, then
/// `done written seconds user system peak_mib rss_mib`.
async fn replicate(
    source: &str,
    target: &str,
    partitions: usize,
    revisions: RevisionMode,
) -> Result<(), BoxError> {
    let reader = EsdbReader::new(EsdbReaderConfig {
        run_continuously: false,
        ..EsdbReaderConfig::new(source)
    })?;
    let sink = EsdbSink::new(EsdbSinkConfig {
        partition_count: partitions,
        revisions,
        ..EsdbSinkConfig::new(target)
    })?;
    let pipeline = Pipeline::builder(reader, sink, MemoryCheckpointStore::new()).build();
    let progress = pipeline.progress();
    let reporter = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let (read, written) = {
                let p = progress.borrow();
                (p.read, p.written)
            };
            println!("progress {written} {read}");
        }
    });
    let started = Instant::now();
    let summary = pipeline.run(CancellationToken::new()).await?;
    let elapsed = started.elapsed();
    reporter.abort();
    let (user, system) = cpu_seconds(std::process::id()).unwrap_or_default();
    println!(
        "done {} {} {user} {system} {} {}",
        summary.written,
        elapsed.as_secs_f64(),
        peak_rss_mib().unwrap_or(0.0),
        process_rss_mib(&std::process::id().to_string()).unwrap_or(0.0)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The parent.

#[derive(Debug, Default)]
struct Sample {
    written: u64,
    rss_mib: f64,
}

#[derive(Debug, Default)]
struct Run {
    written: u64,
    seconds: f64,
    cpu_seconds: f64,
    peak_mib: f64,
    samples: Vec<Sample>,
}

impl Run {
    /// RSS at the first sample at or past each tenth of `total`.
    fn by_tenths(&self, total: u64) -> Vec<String> {
        (1..=10)
            .map(|tenth| {
                self.samples
                    .iter()
                    .find(|s| s.written * 10 >= total * tenth)
                    .map_or("-".to_owned(), |s| format!("{:.0}", s.rss_mib))
            })
            .collect()
    }

    /// Lowest and highest RSS once a tenth of `total` was written: the
    /// steady state, past start-up.
    fn rss_range(&self, total: u64) -> (f64, f64) {
        self.samples
            .iter()
            .filter(|s| s.written * 10 >= total)
            .fold((f64::MAX, 0.0_f64), |(lo, hi), s| {
                (lo.min(s.rss_mib), hi.max(s.rss_mib))
            })
    }
}

fn run_replicator(
    source: &str,
    target: &str,
    partitions: u64,
    revisions: &str,
) -> Result<Run, BoxError> {
    let child = ChildProcess::spawn(&[
        "--replicate".into(),
        source.to_owned(),
        target.to_owned(),
        partitions.to_string(),
        revisions.to_owned(),
    ])?;
    let mut run = Run::default();
    loop {
        let line = child.line()?;
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("progress") => {
                let written = fields.next().ok_or("no count")?.parse()?;
                if let Some(rss_mib) = process_rss_mib(&child.pid().to_string()) {
                    run.samples.push(Sample { written, rss_mib });
                }
            }
            Some("done") => {
                run.written = fields.next().ok_or("no count")?.parse()?;
                run.seconds = fields.next().ok_or("no time")?.parse()?;
                let user: f64 = fields.next().ok_or("no cpu")?.parse()?;
                let system: f64 = fields.next().ok_or("no cpu")?.parse()?;
                run.cpu_seconds = user + system;
                run.peak_mib = fields.next().ok_or("no peak")?.parse()?;
                // The last sample, taken by the child itself: it exits next.
                let rss_mib = fields.next().ok_or("no rss")?.parse()?;
                run.samples.push(Sample {
                    written: run.written,
                    rss_mib,
                });
                return Ok(run);
            }
            _ => return Err(format!("unexpected line from the replicator: {line}").into()),
        }
    }
}

/// Reads the target's `$all` and checks that every event of the workload is
/// there once, with its stream, revision, id, type and body.
async fn verify(target: &str, workload: Workload) -> Result<(), BoxError> {
    let client = Client::new(target.parse()?)?;
    let mut stream = client.read_all(&ReadAllOptions::default()).await?;
    let mut seen = vec![0_u64; workload.events.div_ceil(64) as usize];
    let mut found = 0_u64;
    while let Some(resolved) = stream.next().await? {
        let event = resolved.get_original_event();
        let Some(index) = Workload::stream_index(&event.stream_id) else {
            continue;
        };
        let i = workload
            .number(index, event.revision)
            .ok_or_else(|| format!("unexpected {}@{}", event.stream_id, event.revision))?;
        let (word, bit) = ((i / 64) as usize, 1_u64 << (i % 64));
        if seen[word] & bit != 0 {
            return Err(format!("{}@{} copied twice", event.stream_id, event.revision).into());
        }
        seen[word] |= bit;
        found += 1;
        if event.id != Workload::id(i)
            || event.event_type != EVENT_TYPE
            || event.data.as_ref() != workload.body(i).as_slice()
            || event.custom_metadata.as_ref() != METADATA
        {
            return Err(format!("{}@{} differs", event.stream_id, event.revision).into());
        }
    }
    if found != workload.events {
        return Err(format!("{found} of {} events on the target", workload.events).into());
    }
    Ok(())
}

fn bench(runtime: &tokio::runtime::Runtime) -> Result<(), BoxError> {
    // `cargo test --all-targets` runs this in a debug build as a smoke test:
    // small enough for the CI, the same code paths.
    let smoke = cfg!(debug_assertions);
    let events = env_num("SCALE_EVENTS", if smoke { 2_000 } else { 1_000_000 });
    let many = env_num("SCALE_STREAMS", if smoke { 200 } else { 100_000 }).max(1);
    let run_length = env_num("SCALE_RUN", 1).max(1);
    let revisions = env_str("SCALE_REVISIONS", "source");
    let partitions: Vec<u64> = env_str("PARTITIONS", "1,8")
        .split(',')
        .map(|p| {
            p.trim()
                .parse()
                .expect("PARTITIONS: comma-separated numbers")
        })
        .collect();
    let mut rows = Vec::new();
    for case in env_str("SCALE_CASES", "streams,huge").split(',') {
        let (workload, run) = match case.trim() {
            "streams" => (
                Workload {
                    events,
                    streams: many,
                },
                run_length,
            ),
            "huge" => (Workload { events, streams: 1 }, 500),
            other => return Err(format!("SCALE_CASES: unknown case {other}").into()),
        };
        let (source, source_url) = ChildProcess::answering(&["--serve".into()])?;
        let idle = process_rss_mib(&source.pid().to_string()).unwrap_or(0.0);
        let loader = ChildProcess::spawn(&[
            "--load".into(),
            source_url.clone(),
            workload.events.to_string(),
            workload.streams.to_string(),
            run.to_string(),
        ])?;
        let load_seconds: f64 = loader.line()?.parse()?;
        drop(loader);
        let loaded = process_rss_mib(&source.pid().to_string()).unwrap_or(0.0);
        println!(
            "{case}: {} events over {} streams loaded in {load_seconds:.1} s ({:.0} events/s); \
             source RSS {idle:.0} → {loaded:.0} MiB ({:.0} bytes per event)",
            workload.events,
            workload.streams,
            workload.events as f64 / load_seconds,
            (loaded - idle) * 1024.0 * 1024.0 / workload.events as f64,
        );
        for &p in &partitions {
            let (target, target_url) = ChildProcess::answering(&["--serve".into()])?;
            let cpu = |pid| cpu_seconds(pid).map_or(0.0, |(u, s)| u + s);
            let (source_cpu, target_cpu) = (cpu(source.pid()), cpu(target.pid()));
            let run = run_replicator(&source_url, &target_url, p, &revisions)?;
            let (source_cpu, target_cpu) = (
                cpu(source.pid()) - source_cpu,
                cpu(target.pid()) - target_cpu,
            );
            let target_rss = process_rss_mib(&target.pid().to_string()).unwrap_or(0.0);
            let checked = Instant::now();
            runtime.block_on(verify(&target_url, workload))?;
            let (lo, hi) = run.rss_range(workload.events);
            let per_event = |seconds: f64| seconds * 1e6 / run.written.max(1) as f64;
            println!(
                "  partitionCount {p}: {} written in {:.1} s; replicator CPU {:.1} s; \
                 RSS from 10 % written min {lo:.0} max {hi:.0}, peak {:.0} MiB; RSS (MiB) at 10 %…100 % written: {}; \
                 source CPU {source_cpu:.1} s, target CPU {target_cpu:.1} s, target RSS {target_rss:.0} MiB; \
                 target checked in full in {:.1} s",
                run.written,
                run.seconds,
                run.cpu_seconds,
                run.peak_mib,
                run.by_tenths(workload.events).join(" "),
                checked.elapsed().as_secs_f64(),
            );
            rows.push(vec![
                case.to_owned(),
                workload.streams.to_string(),
                p.to_string(),
                run.written.to_string(),
                format!(
                    "{:.0}",
                    rate(run.written, Duration::from_secs_f64(run.seconds))
                ),
                format!("{:.2}", per_event(run.cpu_seconds)),
                format!("{lo:.0}–{hi:.0}"),
                format!("{:.0}", run.peak_mib),
                format!(
                    "{:.2} / {:.2}",
                    per_event(source_cpu),
                    per_event(target_cpu)
                ),
                format!("{loaded:.0} / {target_rss:.0}"),
            ]);
        }
    }
    println!("\nrevisions: {revisions}; every copy checked in full");
    print_table(
        &[
            "case",
            "streams",
            "partitionCount",
            "events",
            "events/s",
            "replicator CPU µs/event",
            "RSS from 10 % written (MiB)",
            "peak RSS (MiB)",
            "source / target CPU µs/event",
            "source / target RSS (MiB)",
        ],
        &rows,
    );
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.first().map(String::as_str) {
        Some("--serve") => runtime.block_on(serve(ServerOptions::default())),
        Some("--load") => runtime.block_on(async {
            let workload = Workload {
                events: args[2].parse()?,
                streams: args[3].parse()?,
            };
            let elapsed = load(&args[1], workload, args[4].parse()?).await?;
            println!("{}", elapsed.as_secs_f64());
            Ok(())
        }),
        Some("--replicate") => runtime.block_on(async {
            let revisions = match args[4].as_str() {
                "tracked" => RevisionMode::Tracked,
                _ => RevisionMode::FromSource,
            };
            replicate(&args[1], &args[2], args[3].parse()?, revisions).await
        }),
        // cargo bench passes `--bench`; anything else runs the benchmark.
        _ => bench(&runtime),
    }
}
