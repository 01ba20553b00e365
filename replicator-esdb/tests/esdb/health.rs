//! Health, deadlines and start-up checks: the reader reports a source outage
//! and its end, notices a frozen source, probes the head without disturbing
//! its stream; the sink's check writes nothing and tells an unreachable
//! target (transient) apart; a frozen target fails a write within the
//! deadline.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use replicator_core::retry::Backoff;
use replicator_core::{
    Component, Event, EventStream, HealthReporter, Position, Reader, ReaderError, Sink, StartFrom,
};
use replicator_esdb::{EsdbReader, EsdbReaderConfig, EsdbSink, EsdbSinkConfig, WRITE_CHECK_STREAM};
use replicator_testkit::EsdbServer;
use tokio::task::JoinHandle;

use crate::common::*;
use crate::proxy::FreezingProxy;

/// What a reader handed on so far, collected by a task of its own.
struct Collected {
    positions: Arc<Mutex<Vec<Position>>>,
    task: JoinHandle<Option<ReaderError>>,
}

impl Collected {
    fn start(mut stream: EventStream) -> Collected {
        let positions = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let positions = Arc::clone(&positions);
            async move {
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(event) => positions.lock().unwrap().push(event.position),
                        Err(error) => return Some(error),
                    }
                }
                None
            }
        });
        Collected { positions, task }
    }

    fn positions(&self) -> Vec<Position> {
        self.positions.lock().unwrap().clone()
    }

    /// Whether the reader handed on exactly `want`, in order.
    async fn has(&self, want: &[Position]) -> bool {
        assert!(!self.task.is_finished(), "the reader's stream ended");
        self.positions() == want
    }
}

fn reader_at(connection_string: String, request_timeout: Duration) -> EsdbReader {
    EsdbReader::new(EsdbReaderConfig {
        connection_string: connection_string.into(),
        page_size: 50,
        run_continuously: true,
    })
    .expect("reader")
    .with_request_timeout(request_timeout)
}

/// Appends `count` events to `stream` straight to the server (not through a
/// proxy).
async fn append_some(client: &eventstore::Client, stream: &str, count: u64) {
    for i in 0..count {
        append_retrying(client, stream, &user_event(stream, i, i)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_health_turns_unhealthy_while_the_source_is_stopped_and_back_with_no_loss() {
    let source = source().await;
    let source_client = client(&source.connection_string());
    populate(&source_client, 3, 200).await;

    let health = HealthReporter::new(Component::Source);
    let mut reader = reader(&source, 50, true);
    reader.report_health_to(health.clone());
    let collected = Collected::start(reader.read(StartFrom::Beginning).await.expect("read"));
    let want = all_positions(&source_client).await;
    eventually("the reader to catch up", PATIENCE, || collected.has(&want)).await;
    assert!(health.snapshot().healthy);

    source.stop().await;
    eventually("the source reported unhealthy", PATIENCE, || async {
        !health.snapshot().healthy
    })
    .await;
    let failing = health.snapshot();
    eprintln!("while stopped: {failing:?}");
    assert!(
        failing
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("resuming after")),
        "{failing:?}"
    );
    // The reader keeps retrying, with backoff: three failed attempts in this
    // failure, so two waits between them.
    eventually("three failed attempts", PATIENCE, || async {
        health.snapshot().attempts >= 3
    })
    .await;
    let later = health.snapshot();
    eprintln!("later: {later:?}");
    assert!(!later.healthy, "{later:?}");
    assert!(
        later.for_how_long >= least_backoff(later.attempts),
        "retries must back off, not spin: {} attempts within {:?} of the first; \
         the reader's backoff waits at least {:?} between them: {later:?}",
        later.attempts,
        later.for_how_long,
        least_backoff(later.attempts)
    );

    source.restart().await.expect("source restarts");
    append_some(&source_client, "after-restart", 25).await;
    let want = all_positions(&source_client).await;
    eventually("everything, once, after the restart", PATIENCE, || {
        collected.has(&want)
    })
    .await;
    eventually("the source reported healthy again", PATIENCE, || async {
        health.snapshot().healthy
    })
    .await;
    collected.task.abort();
}

/// The shortest time the reader's [`Backoff`] (the workspace default) can
/// take between the first and the last of `attempts` failed attempts: each
/// wait is at least half its step. A failure's `for_how_long` runs from its
/// first attempt, so it is at least this however slow the machine is;
/// retrying without waiting would make it microseconds.
fn least_backoff(attempts: u64) -> Duration {
    let mut backoff = Backoff::default();
    (1..attempts)
        .map(|_| {
            let least = backoff.step() / 2;
            backoff.next_delay();
            least
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_source_is_noticed_within_the_deadline_and_reading_resumes_after_it_thaws() {
    let source = source().await;
    let source_client = client(&source.connection_string());
    populate(&source_client, 4, 150).await;
    let proxy = FreezingProxy::in_front_of(&source).await;

    let health = HealthReporter::new(Component::Source);
    let mut reader = reader_at(proxy.connection_string(), Duration::from_secs(1));
    reader.report_health_to(health.clone());
    let collected = Collected::start(reader.read(StartFrom::Beginning).await.expect("read"));
    let want = all_positions(&source_client).await;
    eventually("the reader to catch up", PATIENCE, || collected.has(&want)).await;

    proxy.freeze();
    // Written while the source looks frozen to the reader.
    append_some(&source_client, "while-frozen", 10).await;
    let took = eventually(
        "a frozen source reported unhealthy",
        // The watchdog: a quiet second, then a probe with a 1 s deadline.
        Duration::from_secs(8),
        || async { !health.snapshot().healthy },
    )
    .await;
    eprintln!(
        "frozen source noticed after {took:?}: {:?}",
        health.snapshot().last_error
    );

    proxy.thaw();
    append_some(&source_client, "after-thaw", 10).await;
    let want = all_positions(&source_client).await;
    eventually("everything, once, after the thaw", PATIENCE, || {
        collected.has(&want)
    })
    .await;
    eventually(
        "the source reported healthy again",
        Duration::from_secs(10),
        || async { health.snapshot().healthy },
    )
    .await;
    collected.task.abort();
}

/// The client's HTTP/2 keepalive alone (a ping every 10 s while a request is
/// open, 10 s to answer) ends a subscription to a frozen source: with request
/// deadlines too long for the reader's watchdog to act, the failure still
/// comes within about 20 s. This is what bounds a hung subscription even
/// without the watchdog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_keepalive_alone_ends_a_subscription_to_a_frozen_source() {
    let source = source().await;
    let source_client = client(&source.connection_string());
    populate(&source_client, 5, 20).await;
    let proxy = FreezingProxy::in_front_of(&source).await;

    let health = HealthReporter::new(Component::Source);
    let mut reader = reader_at(proxy.connection_string(), Duration::from_secs(300));
    reader.report_health_to(health.clone());
    let collected = Collected::start(reader.read(StartFrom::Beginning).await.expect("read"));
    let want = all_positions(&source_client).await;
    eventually("the reader to catch up", PATIENCE, || collected.has(&want)).await;

    proxy.freeze();
    let took = eventually(
        "keepalive to end the frozen subscription",
        Duration::from_secs(35),
        || async { !health.snapshot().healthy },
    )
    .await;
    eprintln!(
        "keepalive ended the subscription after {took:?}: {:?}",
        health.snapshot().last_error
    );
    assert!(
        took >= Duration::from_secs(5),
        "failed after {took:?}: something other than keepalive noticed"
    );
    proxy.thaw();
    append_some(&source_client, "after-thaw", 5).await;
    let want = all_positions(&source_client).await;
    eventually("everything, once, after the thaw", PATIENCE, || {
        collected.has(&want)
    })
    .await;
    collected.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_probe_finds_the_last_record_without_disturbing_the_stream() {
    // An empty `$all` exists only in-process: a real server writes records of
    // its own at start-up.
    let server = EsdbServer::start().await.expect("server");
    let reader = EsdbReader::new(EsdbReaderConfig::new(server.connection_string()))
        .expect("reader")
        .with_request_timeout(Duration::from_secs(2));
    let probe = reader.head_probe().expect("the reader has a head probe");
    assert_eq!(probe.head().await.expect("head of an empty $all"), None);

    let source = source().await;
    let source_client = client(&source.connection_string());
    populate(&source_client, 6, 120).await;
    let mut reader = reader_at(source.connection_string(), Duration::from_secs(2));
    let probe = reader.head_probe().expect("head probe");
    let all = all_positions(&source_client).await;
    assert_eq!(probe.head().await.expect("head"), all.last().copied());

    // Probing while the reader streams, many times, changes nothing it reads.
    let collected = Collected::start(reader.read(StartFrom::Beginning).await.expect("read"));
    for round in 0..20u64 {
        let stream = format!("probed-{}", round % 3);
        append_retrying(&source_client, &stream, &user_event(&stream, round, round)).await;
        let head = probe.head().await.expect("head").expect("records");
        assert!(head >= *all.last().unwrap());
    }
    let want = all_positions(&source_client).await;
    eventually("everything, once, while probed", PATIENCE, || {
        collected.has(&want)
    })
    .await;
    assert_eq!(probe.head().await.expect("head"), want.last().copied());

    // A stopped source: a transient error, within the deadline.
    source.stop().await;
    let started = std::time::Instant::now();
    let error = probe.head().await.expect_err("the source is down");
    eprintln!("stopped -> {error}");
    assert!(error.is_transient(), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    collected.task.abort();
}

fn sink_at(connection_string: String, request_timeout: Duration) -> EsdbSink {
    EsdbSink::new(EsdbSinkConfig {
        connection_string: connection_string.into(),
        partition_count: 2,
        revisions: Default::default(),
        order: Default::default(),
    })
    .expect("sink")
    .with_request_timeout(request_timeout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_check_writes_nothing_and_an_unreachable_target_is_transient() {
    let target = target().await;
    let target_client = client(&target.connection_string());
    let sink = sink_at(target.connection_string(), Duration::from_secs(2));
    let before = all_positions(&target_client).await;
    sink.check()
        .await
        .expect("a reachable target passes the check");
    sink.check().await.expect("and again");
    assert_eq!(
        all_positions(&target_client).await,
        before,
        "the check wrote"
    );
    assert!(
        matches!(
            read_stream(&target_client, WRITE_CHECK_STREAM).await,
            Readable::NotFound
        ),
        "the check created its stream"
    );

    target.stop().await;
    let started = std::time::Instant::now();
    let error = sink.check().await.expect_err("the target is down");
    eprintln!("stopped -> {error}");
    assert!(error.is_transient(), "{error}");
    assert!(error.message().contains(WRITE_CHECK_STREAM), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // The same sink recovers once the target is back (its client is rebuilt).
    target.restart().await.expect("target restarts");
    eventually(
        "the check to pass again",
        Duration::from_secs(10),
        || async { sink.check().await.is_ok() },
    )
    .await;

    // Nothing listening at all.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = sink_at(
        format!("esdb://127.0.0.1:{port}?tls=false&discoveryInterval=0"),
        Duration::from_secs(2),
    );
    let error = nowhere.check().await.expect_err("nothing listens there");
    eprintln!("nowhere -> {error}");
    assert!(error.is_transient(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_target_fails_a_write_within_the_deadline_and_the_retry_succeeds() {
    let target = target().await;
    let target_client = client(&target.connection_string());
    let proxy = FreezingProxy::in_front_of(&target).await;
    let sink = sink_at(proxy.connection_string(), Duration::from_secs(1));
    let events: Vec<Event> = (0..6)
        .map(|i| {
            let mut event = user_event("frozen-target", i, i);
            event.revision = i;
            event.position = Position::at(1_000 + i * 100);
            event
        })
        .collect();
    sink.write(&events[..3]).await.expect("first batch");

    proxy.freeze();
    let started = std::time::Instant::now();
    let error = sink
        .write(&events[3..])
        .await
        .expect_err("the target is frozen");
    let took = started.elapsed();
    eprintln!("frozen, after {took:?} -> {error}");
    assert!(error.is_transient(), "{error}");
    assert!(error.message().contains("frozen-target"), "{error}");
    assert!(took < Duration::from_secs(5), "the write took {took:?}");

    proxy.thaw();
    eventually(
        "a retried write to succeed",
        Duration::from_secs(15),
        || async { sink.write(&events[3..]).await.is_ok() },
    )
    .await;
    match read_stream(&target_client, "frozen-target").await {
        Readable::Events(records) => {
            let ids: Vec<_> = records.iter().map(|(_, id)| *id).collect();
            let want: Vec<_> = events.iter().map(|e| e.id).collect();
            assert_eq!(ids, want, "each event once, in order");
        }
        other => panic!("frozen-target: {other:?}"),
    }
}
