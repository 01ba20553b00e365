//! Memory the server holds per event. A scale run fills a source and a target
//! server with millions of small events on one machine, so an event may cost at
//! most [`BUDGET`] bytes beyond its payload, whether it sits in one of many streams
//! or in one huge stream.
//!
//! Measured as a user would see it: the resident memory of an `esdb-testkit`
//! process (always one of its own, whatever `ESDB_URL` says) before and after
//! appending through the real client.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use eventstore::{BatchAppendOptions, Client, EventData, ExpectedRevision};
use futures::StreamExt as _;
use replicator_testkit::support;

/// Bytes an event may hold beyond its data and custom metadata.
const BUDGET: u64 = 500;
const DATA_LEN: usize = 120;
const METADATA_LEN: usize = 40;
/// Enough that the store's growth dwarfs what a process holds for its connections.
const EVENTS: u64 = 40_000;

/// An `esdb-testkit` child process, killed when dropped.
struct ServerProcess {
    child: Child,
    url: String,
}

impl ServerProcess {
    fn start() -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_esdb-testkit"))
            .args(["--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("esdb-testkit starts");
        let mut url = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut url)
            .expect("esdb-testkit prints its connection string");
        ServerProcess {
            child,
            url: url.trim().to_owned(),
        }
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in kB");
        kib * 1024
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Appends `events` small events spread evenly over `streams` streams named
/// `{prefix}{n}`, revision by revision, as a live system interleaves them.
async fn append(client: &Client, events: u64, streams: u64, prefix: &str) {
    const PER_APPEND: u64 = 100;
    let batch = client
        .batch_append(&BatchAppendOptions::default())
        .await
        .expect("batch append session");
    let per_stream = events / streams;
    let appends = (0..per_stream.div_ceil(PER_APPEND)).flat_map(|round| {
        let from = round * PER_APPEND;
        let to = (from + PER_APPEND).min(per_stream);
        (0..streams).map(move |s| (s, from, to))
    });
    let mut results = futures::stream::iter(appends)
        .map(|(s, from, to)| {
            let batch = &batch;
            let expected = match from {
                0 => ExpectedRevision::NoStream,
                _ => ExpectedRevision::Exact(from - 1),
            };
            let events = (from..to)
                .map(|_| {
                    EventData::binary("Small", vec![b'd'; DATA_LEN].into())
                        .id(uuid::Uuid::new_v4())
                        .metadata(vec![b'm'; METADATA_LEN].into())
                })
                .collect();
            batch.append_to_stream(format!("{prefix}{s}"), expected, events)
        })
        .buffered(64);
    while let Some(result) = results.next().await {
        result.expect("append");
    }
}

/// Bytes a fresh server's resident memory grows by per event appended, beyond the
/// events' payload.
async fn held_per_event(streams: u64) -> u64 {
    let server = ServerProcess::start();
    let client = support::client(&server.url);
    // Connection buffers and the server's first allocations are not the events'.
    append(&client, 1_000, 100, "warm-up-").await;
    let before = server.rss_bytes();
    append(&client, EVENTS, streams, "s-").await;
    let grown = server.rss_bytes().saturating_sub(before);
    (grown / EVENTS).saturating_sub((DATA_LEN + METADATA_LEN) as u64)
}

#[tokio::test]
async fn an_event_in_one_of_many_streams_holds_at_most_500_bytes_beyond_its_payload() {
    let held = held_per_event(EVENTS).await;
    assert!(
        held <= BUDGET,
        "{held} bytes per event beyond its payload, with one event per stream"
    );
}

#[tokio::test]
async fn an_event_of_one_huge_stream_holds_at_most_500_bytes_beyond_its_payload() {
    let held = held_per_event(1).await;
    assert!(
        held <= BUDGET,
        "{held} bytes per event beyond its payload, all in one stream"
    );
}
