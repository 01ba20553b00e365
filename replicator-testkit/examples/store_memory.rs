//! Resident memory of a testkit server holding many small events, appended through
//! the real client over gRPC, as a user's scale run would fill it.
//!
//! The server runs in a child process (this binary, re-executed with `serve`), so
//! its RSS is its own: the figure printed is the child's `VmRSS` after the load,
//! minus its `VmRSS` before it, per event.
//!
//! `cargo run --release -p replicator-testkit --example store_memory -- 200000/100 1000000/1000000 1000000/1`
//!
//! Each argument is `EVENTS/STREAMS`: events spread round-robin over that many
//! streams, appended in order of revision, up to 100 consecutive events of a
//! stream per append, 64 appends in flight on one batch-append session. Each event
//! carries 120 bytes of data and 40 bytes of custom metadata. `plain:EVENTS/STREAMS`
//! appends one event per plain `Append` call instead, 64 in flight;
//! `preload:EVENTS/STREAMS` puts the events into the server with
//! `EsdbServer::preload` (in the child, without gRPC).

use std::io::{BufRead, BufReader, Read as _};
use std::process::{Command, Stdio};
use std::time::Instant;

use eventstore::{AppendToStreamOptions, BatchAppendOptions, Client, EventData, ExpectedRevision};
use futures::StreamExt as _;
use replicator_testkit::{EsdbServer, PreloadEvent};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const DATA_LEN: usize = 120;
const METADATA_LEN: usize = 40;
const PER_APPEND: u64 = 100;
const IN_FLIGHT: usize = 64;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => return serve(),
        Some("serve-preload") => return serve_preload(&args[1..]),
        _ => {}
    }
    let cases = if args.is_empty() {
        vec!["200000/100".to_owned()]
    } else {
        args
    };
    println!(
        "| events | streams | appended by | payload B/event | RSS before MiB | RSS after MiB | B/event beyond payload | load s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for case in cases {
        let (how, sizes) = match case.split_once(':') {
            Some((how, sizes)) => (how, sizes),
            None => ("batch", case.as_str()),
        };
        let (events, streams) = sizes
            .split_once('/')
            .and_then(|(e, s)| Some((e.parse::<u64>().ok()?, s.parse::<u64>().ok()?)))
            .ok_or_else(|| format!("{case:?}: expected [batch:|plain:|preload:]EVENTS/STREAMS"))?;
        let streams = streams.clamp(1, events.max(1));
        if how == "preload" {
            let output = Command::new(std::env::current_exe()?)
                .args(["serve-preload", &events.to_string(), &streams.to_string()])
                .stderr(Stdio::inherit())
                .output()?;
            print!("{}", String::from_utf8_lossy(&output.stdout));
        } else {
            measure(events, streams, how == "plain")?;
        }
    }
    Ok(())
}

/// The child of a `preload:` case: preloads, then prints its own table row.
fn serve_preload(args: &[String]) -> Result<(), BoxError> {
    let number = |i: usize| -> Result<u64, BoxError> {
        Ok(args.get(i).ok_or("EVENTS STREAMS expected")?.parse()?)
    };
    let (events, streams) = (number(0)?, number(1)?);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let server = EsdbServer::start().await?;
        let pid = std::process::id();
        let before = rss_bytes(pid)?;
        let started = Instant::now();
        let per_stream = |s: u64| events / streams + u64::from(s < events % streams);
        for round in 0..events.div_ceil(streams).div_ceil(PER_APPEND) {
            for s in 0..streams {
                let from = round * PER_APPEND;
                let to = (from + PER_APPEND).min(per_stream(s));
                if from >= to {
                    continue;
                }
                let events = (from..to).map(|revision| PreloadEvent {
                    id: uuid::Uuid::new_v4(),
                    event_type: "Loaded".to_owned(),
                    is_json: false,
                    data: data(s, revision).into_bytes().into(),
                    custom_metadata: vec![b'm'; METADATA_LEN].into(),
                });
                server.preload(&format!("s-{s}"), events);
            }
        }
        let elapsed = started.elapsed();
        let after = rss_bytes(pid)?;
        print_row(events, streams, before, after, elapsed, "preload");
        Ok(())
    })
}

/// 120 bytes of JSON-looking data.
fn data(stream: u64, revision: u64) -> String {
    let mut data = format!("{{\"stream\":{stream},\"revision\":{revision},\"pad\":\"");
    data.extend(std::iter::repeat_n('x', DATA_LEN - 2 - data.len()));
    data.push_str("\"}");
    data
}

fn print_row(
    events: u64,
    streams: u64,
    before: u64,
    after: u64,
    elapsed: std::time::Duration,
    how: &str,
) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let payload = (DATA_LEN + METADATA_LEN) as u64;
    let per_event = after.saturating_sub(before) as f64 / events as f64;
    println!(
        "| {events} | {streams} | {how} | {payload} | {:.1} | {:.1} | {:.0} | {:.1} |",
        mib(before),
        mib(after),
        per_event - payload as f64,
        elapsed.as_secs_f64()
    );
}

/// The child: serves until its stdin closes.
fn serve() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let server = EsdbServer::start().await?;
        println!("{}", server.connection_string());
        let mut rest = Vec::new();
        tokio::task::spawn_blocking(move || std::io::stdin().read_to_end(&mut rest)).await??;
        server.stop().await;
        Ok(())
    })
}

fn rss_bytes(pid: u32) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or("no VmRSS")?
        .parse()?;
    Ok(kib * 1024)
}

fn measure(events: u64, streams: u64, plain: bool) -> Result<(), BoxError> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut url = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut url)?;
    let pid = child.id();
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let client = Client::new(url.trim().parse()?)?;
        // One event first, so connection set-up is part of the baseline.
        load(&client, 1, 1, "warm-up").await?;
        let before = rss_bytes(pid)?;
        let started = Instant::now();
        if plain {
            load_plain(&client, events, streams).await?;
        } else {
            load(&client, events, streams, "s").await?;
        }
        let elapsed = started.elapsed();
        let after = rss_bytes(pid)?;
        Ok::<_, BoxError>((before, after, elapsed))
    });
    drop(child.stdin.take());
    child.wait()?;
    let (before, after, elapsed) = result?;
    let how = if plain {
        "Append, 1 event each"
    } else {
        "BatchAppend"
    };
    print_row(events, streams, before, after, elapsed, how);
    Ok(())
}

/// Appends `events` events round-robin over `streams` streams, one event per
/// plain `Append` call (expected revision any), as a tool copying event by event
/// does.
async fn load_plain(client: &Client, events: u64, streams: u64) -> Result<(), BoxError> {
    let mut results = futures::stream::iter(0..events)
        .map(|n| {
            let (s, revision) = (n % streams, n / streams);
            let event = EventData::binary("Loaded", data(s, revision).into_bytes().into())
                .id(uuid::Uuid::new_v4())
                .metadata(vec![b'm'; METADATA_LEN].into());
            let options = AppendToStreamOptions::default();
            async move {
                client
                    .append_to_stream(format!("s-{s}"), &options, event)
                    .await
            }
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}

/// Appends `events` events round-robin over `streams` streams named `{prefix}-{n}`.
async fn load(client: &Client, events: u64, streams: u64, prefix: &str) -> Result<(), BoxError> {
    let batch = client.batch_append(&BatchAppendOptions::default()).await?;
    let per_stream = |s: u64| events / streams + u64::from(s < events % streams);
    // Appends ordered by revision first, so the log interleaves the streams as a
    // live system's would.
    let appends = (0..events.div_ceil(streams).div_ceil(PER_APPEND)).flat_map(|round| {
        (0..streams).filter_map(move |s| {
            let from = round * PER_APPEND;
            let to = (from + PER_APPEND).min(per_stream(s));
            (from < to).then_some((s, from, to))
        })
    });
    let mut results = futures::stream::iter(appends)
        .map(|(s, from, to)| {
            let batch = &batch;
            async move {
                let expected = if from == 0 {
                    ExpectedRevision::NoStream
                } else {
                    ExpectedRevision::Exact(from - 1)
                };
                let events = (from..to).map(|revision| {
                    EventData::binary("Loaded", data(s, revision).into_bytes().into())
                        .id(uuid::Uuid::new_v4())
                        .metadata(vec![b'm'; METADATA_LEN].into())
                });
                batch
                    .append_to_stream(format!("{prefix}-{s}"), expected, events.collect())
                    .await
            }
        })
        .buffered(IN_FLIGHT);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}
