//! Outages of the servers `replicator run` depends on, as an operator sees
//! them through the status server: the MongoDB checkpoint store is frozen
//! (SIGSTOP), the source is stopped, the target is stopped, and the target
//! is frozen (SIGSTOP on an out-of-process `esdb-testkit`, as a partition
//! without a reset looks), each while the run has events left to copy.
//! Each time `/health/ready` must turn 503 naming the component within the
//! call deadline plus `unhealthyAfterSeconds` plus a few seconds,
//! `/health/live` must stay 200, readiness must come back when the server
//! does, and the target must end up identical to the source. Plus the
//! start-up check of a file checkpoint path: a missing directory is
//! created, a path that cannot work stops the run in seconds before
//! anything is replicated.
//!
//! Where the copy is when an outage starts is decided by the test, not by
//! the machine's speed: the stopped servers are stopped while the
//! in-process target holds a write at its gate
//! ([`replicator_testkit::FaultHandle::hold_writes_after`]), so the run is a
//! known number of writes in; the frozen ones are frozen before the test
//! appends the events the run then has to copy through the outage. Waits
//! for the run to get somewhere are bounded generously, so that only a
//! stall misses them.
//!
//! Every outage test starts servers of its own (an in-process EventStoreDB
//! source and target whatever `ESDB_SOURCE_URL` and `ESDB_TARGET_URL` say,
//! a `secantusd-py` of its own found through `SECANTUSD_BIN`), so stopping
//! or freezing one disturbs no other test. Without
//! `SECANTUSD_BIN` (or `secantusd-py` on `PATH`) the MongoDB test fails
//! saying how to get it; it never skips.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use replicator_core::CheckpointStore as _;
use replicator_esdb::verify::{verify, VerifyOptions};
use replicator_testkit::support::mongo::SecantusServer;
use replicator_testkit::support::{client, last_position};
use replicator_testkit::{EsdbServer, FaultHandle};
use serde_json::Value;
use tokio::time::Instant;

use crate::status::{commit, Running};
use crate::{reads, run_async, stderr, Clusters, Workdir};

/// User events in the source of the tests that stop a server mid-copy.
const EVENTS: u64 = 24_000;
/// Bytes of data per event: with these, what a run stopped
/// [`WRITES_BEFORE_OUTAGE`] writes in can write before it needs the source
/// again stays far below [`EVENTS`] (those writes and the batches in
/// flight, 500 events at most each, the writer's queue of 500, its
/// reader-to-sink buffer of 1,000, and one 2 MiB HTTP/2 stream window,
/// about 2,000 such events: under 8,000 in all), so the stop lands mid-copy
/// however fast the copy.
const EVENT_SIZE: usize = 1024;
/// The in-process target lets the run make this many writes (batches of at
/// most 500 events) before it holds the next one: the run is mid-copy then,
/// whatever the machine's speed.
const WRITES_BEFORE_OUTAGE: usize = 4;
/// User events appended in each step of the frozen-server tests.
const STEP: u64 = 2_400;
/// User events of the tests without an outage.
const SMALL: u64 = 1_200;
/// Streams they are spread over.
const STREAMS: u64 = 24;
/// `replicator.callTimeoutInSeconds` of the runs.
const CALL_TIMEOUT: u64 = 2;
/// `replicator.http.unhealthyAfterSeconds` of the runs.
const THRESHOLD: u64 = 2;
/// What readiness may take beyond the call deadline and the threshold to
/// turn (probe intervals, publishing, a loaded machine).
const SLACK: u64 = 5;
/// Bound of the waits for the run to copy what it has to, report a state or
/// make a few retries: none takes long, only a stall misses this.
const STALL: u64 = 120;

/// How long readiness may take to come back once a server is: the reader
/// and the writers retry with a backoff that grows to
/// [`replicator_core::retry::DEFAULT_MAX`] (30 s; not configurable), so the
/// next attempt comes within that, plus a call. Twice that and [`STALL`]:
/// only a stall misses it.
fn back_within() -> u64 {
    2 * replicator_core::retry::DEFAULT_MAX.as_secs() + CALL_TIMEOUT + STALL
}

/// The run's settings: the short deadlines of these tests and `checkpoint`
/// lines (indented under `replicator.checkpoint`).
fn settings(checkpoint: &str) -> String {
    format!(
        "  callTimeoutInSeconds: {CALL_TIMEOUT}\n  http:\n    unhealthyAfterSeconds: {THRESHOLD}\n  checkpoint:\n    checkpointAfter: 500\n{checkpoint}"
    )
}

/// A working directory replicating from `source` to `target` with
/// [`settings`].
fn workdir(source: &str, target: &str, checkpoint: &str) -> Workdir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let yaml = format!(
        "replicator:\n  reader:\n    connectionString: \"{source}\"\n  sink:\n    connectionString: \"{target}\"\n{}",
        settings(checkpoint)
    );
    std::fs::write(dir.path().join("config/appsettings.yaml"), yaml).unwrap();
    Workdir { dir }
}

/// An in-process source and target, and clients of both. Always in
/// process, whatever `ESDB_SOURCE_URL` and `ESDB_TARGET_URL` say: these
/// tests stop them and hold the target's writes.
struct Servers {
    source: EsdbServer,
    target: EsdbServer,
    source_client: eventstore::Client,
    target_client: eventstore::Client,
}

impl Servers {
    async fn start() -> Self {
        let source = EsdbServer::start().await.unwrap();
        let target = EsdbServer::start().await.unwrap();
        Servers {
            source_client: client(&source.connection_string()),
            target_client: client(&target.connection_string()),
            source,
            target,
        }
    }

    fn workdir(&self, checkpoint: &str) -> Workdir {
        workdir(
            &self.source.connection_string(),
            &self.target.connection_string(),
            checkpoint,
        )
    }
}

/// Binary events numbered by `range`, each with a new id and
/// [`EVENT_SIZE`] bytes of data.
fn events(range: std::ops::Range<u64>) -> Vec<eventstore::EventData> {
    range
        .map(|i| {
            let mut data = vec![0; EVENT_SIZE];
            data[..8].copy_from_slice(&i.to_le_bytes());
            eventstore::EventData::binary("Counted", data.into()).id(uuid::Uuid::new_v4())
        })
        .collect()
}

/// Appends `count` user events over [`STREAMS`] streams (after what they
/// hold), 500 per append, the streams side by side.
async fn write_events(client: &eventstore::Client, count: u64) {
    let per_stream = count / STREAMS;
    let mut appends = tokio::task::JoinSet::new();
    for stream in 0..STREAMS {
        let client = client.clone();
        appends.spawn(async move {
            let mut i = 0;
            while i < per_stream {
                let n = (per_stream - i).min(500);
                client
                    .append_to_stream(
                        format!("outage-{stream}"),
                        &Default::default(),
                        events(i..i + n),
                    )
                    .await
                    .unwrap();
                i += n;
            }
        });
    }
    while let Some(done) = appends.join_next().await {
        done.unwrap();
    }
}

/// Asserts the target holds exactly the source's user streams: every event
/// once, at the same revision (a lost event or a duplicate shows).
async fn assert_identical(source: &eventstore::Client, target: &eventstore::Client, events: u64) {
    let options = VerifyOptions {
        compare_revisions: true,
        ..VerifyOptions::default()
    };
    let report = verify(&reads(source), &reads(target), &options)
        .await
        .unwrap();
    assert!(report.is_identical(), "{report}");
    assert_eq!(report.source_events, events, "{report}");
}

fn written(s: &Value) -> u64 {
    s["events"]["written"].as_u64().unwrap_or(0)
}

/// Starts `replicator run` in `w` with the target's gate closed after
/// [`WRITES_BEFORE_OUTAGE`] writes, and returns once a write waits at it:
/// the run is mid-copy, exactly that many writes in, until the test opens
/// the gate again.
async fn start_held(w: &Workdir, target: &FaultHandle) -> Running {
    target.hold_writes_after(WRITES_BEFORE_OUTAGE);
    let run = Running::start(w, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(STALL);
    // Polled: several writes may reach the gate together, and a wait for
    // exactly one held write could miss its moment.
    while target.held_writes() == 0 {
        assert!(
            Instant::now() < deadline,
            "no write reached the target's gate within {STALL}s: {:#}\nlog:\n{}",
            run.status().await,
            run.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run
}

/// Waits until the run has copied `events` and stored a checkpoint at its
/// end, and is caught up and ready: the state before a frozen server.
async fn wait_copied(run: &Running, events: u64) -> Value {
    run.wait_status(
        "the events so far copied and checkpointed, ready",
        STALL,
        |s| {
            written(s) == events
                && s["caught_up"] == true
                && s["ready"] == true
                && s["checkpoint"]["stored_in_this_run"].as_u64() >= Some(1)
                && s["checkpoint"]["unstored"] == 0
        },
    )
    .await
}

/// Polls `/health/ready` until it answers 503 with `component` failing,
/// failing the test `within` after `since`. `/health/live` must answer 200
/// all along. Returns the readiness body.
async fn wait_unready(run: &Running, component: &str, since: Instant, within: Duration) -> Value {
    loop {
        let (code, body) = run.json("/health/ready").await;
        let (live, live_body) = run.json("/health/live").await;
        assert_eq!(
            live, 200,
            "an outage of the {component} is no reason to restart the replicator: {live_body:#}"
        );
        if code == 503 {
            let took = since.elapsed();
            assert_eq!(body["status"], "unhealthy", "{body:#}");
            assert_eq!(body["components"][component]["healthy"], false, "{body:#}");
            assert!(
                body["components"][component]["error"].is_string(),
                "the {component}'s error should be shown: {body:#}"
            );
            let problems = body["problems"].to_string();
            assert!(
                problems.contains(&format!("{component} failing")),
                "the problems should name the {component}: {body:#}"
            );
            println!("/health/ready turned 503 naming {component} after {took:.1?}");
            return body;
        }
        assert_eq!(code, 200, "{body:#}");
        assert!(
            since.elapsed() < within,
            "/health/ready still 200 {within:?} into the {component}'s outage: {body:#}\nlog:\n{}",
            run.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// While the `component`'s outage lasts: polls `/api/status` until `done`
/// holds (failing after [`STALL`]), and on every poll checks what an
/// operator sees: not ready, the component named among the problems, still
/// live.
async fn hold_unready(
    run: &Running,
    component: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let secs = STALL;
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = run.status().await;
        assert_eq!(s["live"], true, "{s:#}");
        assert_eq!(s["ready"], false, "the {component} is still down: {s:#}");
        assert!(
            s["problems"]
                .to_string()
                .contains(&format!("{component} failing")),
            "{s:#}"
        );
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs}s; last status:\n{s:#}\nlog:\n{}",
            run.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The source out since `since` (`how`: stopped, frozen) while the run is
/// mid-copy: readiness turns 503 naming the source (the target and the
/// checkpoint store still healthy); the reader hands on what it had read
/// ahead, then has nothing more, and the copy stops short of the end.
async fn source_out(run: &Running, since: Instant, how: &str) {
    let body = wait_unready(run, "source", since, unready_within()).await;
    for component in ["target", "checkpoint"] {
        assert_eq!(body["components"][component]["healthy"], true, "{body:#}");
    }
    let s = hold_unready(
        run,
        "source",
        "the reader without anything more to hand on",
        |s| s["in_flight"] == 0 && attempts(s, "source") >= 3,
    )
    .await;
    assert!(written(&s) < EVENTS, "{s:#}");
    assert_eq!(s["caught_up"], false, "{s:#}");
    println!(
        "{} of {EVENTS} events written while the source was {how} ({:.1?})",
        written(&s),
        since.elapsed()
    );
}

fn attempts(s: &Value, component: &str) -> u64 {
    s["components"][component]["attempts"].as_u64().unwrap_or(0)
}

/// The deadline of readiness to turn 503 once a call to a component hangs or
/// fails: the call deadline, the threshold, and some slack.
fn unready_within() -> Duration {
    Duration::from_secs(CALL_TIMEOUT + THRESHOLD + SLACK)
}

/// Polls `/health/ready` until it answers 200, failing after `secs`.
async fn wait_ready(run: &Running, what: &str, secs: u64) -> Value {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    loop {
        let (code, body) = run.json("/health/ready").await;
        if code == 200 {
            println!("{what}: ready again after {:.1?}", started.elapsed());
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: /health/ready not 200 within {secs}s: {body:#}\nlog:\n{}",
            run.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until all `events` are written and the run is caught up and
/// ready, with no pipeline restart on the way.
async fn wait_complete(run: &Running, events: u64) -> Value {
    let s = run
        .wait_status("every event written, caught up and ready", STALL, |s| {
            written(s) == events && s["caught_up"] == true && s["ready"] == true
        })
        .await;
    assert_eq!(
        s["restarts"], 0,
        "an outage is retried, not a reason to restart: {s:#}"
    );
    assert_eq!(s["percent"], 100.0, "{s:#}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_mongo_checkpoint_store_does_not_stop_the_copy_and_is_reported() {
    let started = Instant::now();
    let mongo = SecantusServer::start().await;
    let c = Servers::start().await;
    write_events(&c.source_client, STEP).await;
    let w = c.workdir(&format!(
        "    type: mongo\n    path: \"{}\"\n    database: outages\n",
        mongo.url()
    ));
    let run = Running::start(&w, &[]).await;
    let before = wait_copied(&run, STEP).await;
    let stored = before["checkpoint"]["position"].clone();

    // Frozen, then more to copy: the next checkpoint hangs.
    mongo.freeze();
    let frozen = Instant::now();
    write_events(&c.source_client, STEP).await;
    let body = wait_unready(&run, "checkpoint", frozen, unready_within()).await;
    assert_eq!(body["components"]["source"]["healthy"], true, "{body:#}");
    assert_eq!(body["components"]["target"]["healthy"], true, "{body:#}");

    // Replication goes on while the store hangs: events appended after
    // the store was reported are written all the same, while the stored
    // checkpoint stays behind and says how much a crash would replay.
    write_events(&c.source_client, STEP).await;
    let s = hold_unready(
        &run,
        "checkpoint",
        "events appended after the store froze written while it is frozen",
        |s| written(s) == 3 * STEP && attempts(s, "checkpoint") >= 2,
    )
    .await;
    assert_eq!(s["checkpoint"]["position"], stored, "{s:#}");
    assert!(
        s["checkpoint"]["unstored"].as_u64() >= Some(2 * STEP),
        "{s:#}"
    );
    println!(
        "{} events written while the store was frozen, {:.1?}",
        2 * STEP,
        frozen.elapsed()
    );

    mongo.thaw();
    wait_ready(&run, "the store thawed", back_within()).await;
    let s = run
        .wait_status(
            "a checkpoint stored after the store came back",
            STALL,
            |s| s["checkpoint"]["position"] != stored,
        )
        .await;
    assert_eq!(s["components"]["checkpoint"]["healthy"], true, "{s:#}");

    // The copy goes on after the store came back, and the stored
    // checkpoint catches up with it.
    write_events(&c.source_client, STEP).await;
    let end = last_position(&c.source_client).await.unwrap();
    wait_complete(&run, 4 * STEP).await;
    let s = run
        .wait_status(
            "the stored checkpoint at the processed position",
            STALL,
            |s| s["checkpoint"]["position"] == s["processed"] && s["checkpoint"]["unstored"] == 0,
        )
        .await;
    assert_eq!(
        commit(&s["checkpoint"]["position"]),
        Some(end.commit),
        "{s:#}"
    );
    run.stop().await;
    assert_identical(&c.source_client, &c.target_client, 4 * STEP).await;

    // And that is what the store holds.
    let o = run_async(&w, &["checkpoint", "show"]).await;
    let out = crate::stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains(&format!("source:   {end} ")), "{out}");
    println!("took {:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_source_is_reported_and_the_copy_resumes_when_it_returns() {
    let started = Instant::now();
    let c = Servers::start().await;
    write_events(&c.source_client, EVENTS).await;
    let w = c.workdir("");
    let gate = c.target.faults();
    let run = start_held(&w, &gate).await;

    // Stopped while the run is a few writes in; then the target takes what
    // the run has read.
    c.source.stop().await;
    let stopped = Instant::now();
    gate.release_writes();
    source_out(&run, stopped, "stopped").await;

    c.source.restart().await.unwrap();
    wait_ready(&run, "the source restarted", back_within()).await;
    wait_complete(&run, EVENTS).await;
    run.stop().await;
    assert_identical(&c.source_client, &c.target_client, EVENTS).await;
    println!("took {:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_target_is_reported_and_the_copy_resumes_when_it_returns() {
    let started = Instant::now();
    let c = Servers::start().await;
    write_events(&c.source_client, EVENTS).await;
    let w = c.workdir("");
    let gate = c.target.faults();
    let run = start_held(&w, &gate).await;

    // Stopped with a write held: that one is dropped unwritten. The gate
    // is opened for when the target is back.
    c.target.stop().await;
    let stopped = Instant::now();
    gate.release_writes();
    let body = wait_unready(&run, "target", stopped, unready_within()).await;
    assert_eq!(body["components"]["source"]["healthy"], true, "{body:#}");
    let s = hold_unready(
        &run,
        "target",
        "writes retried while the target is down",
        |s| s["state"] == "retrying" && attempts(s, "target") >= 3,
    )
    .await;
    // The target took no more than its first writes (500 events at most
    // each).
    assert!(written(&s) <= WRITES_BEFORE_OUTAGE as u64 * 500, "{s:#}");
    assert!(s["state_error"].is_string(), "{s:#}");
    println!(
        "{} of {EVENTS} events written when the target stopped",
        written(&s)
    );

    c.target.restart().await.unwrap();
    wait_ready(&run, "the target restarted", back_within()).await;
    wait_complete(&run, EVENTS).await;
    run.stop().await;
    assert_identical(&c.source_client, &c.target_client, EVENTS).await;
    println!("took {:.1?}", started.elapsed());
}

/// The checkpoint kept in the target (`checkpoint.type: stream`), and the
/// target frozen: what the run goes on processing (here records of a source
/// system stream, skipped and checkpointed, so no target write is pending)
/// cannot be checkpointed, and the `checkpoint` component, naming its
/// stream, turns readiness 503; thawed, the checkpoint catches up. No file
/// is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_target_holding_the_checkpoint_is_reported_as_the_checkpoint_failing() {
    let c = Servers::start().await;
    write_events(&c.source_client, SMALL).await;
    let w = c.workdir("    type: stream\n    instanceId: frozen\n");
    let run = Running::start(&w, &[]).await;
    let before = wait_copied(&run, SMALL).await;
    let stored = before["checkpoint"]["position"].clone();

    let faults = c.target.faults();
    faults.pause();
    let frozen = Instant::now();
    c.source_client
        .append_to_stream("$skipped-by-the-copy", &Default::default(), events(0..10))
        .await
        .unwrap();
    let body = wait_unready(&run, "checkpoint", frozen, unready_within()).await;
    let error = body["components"]["checkpoint"]["error"].to_string();
    assert!(error.contains("$replicator-checkpoint-frozen"), "{body:#}");
    assert!(
        error.contains("127.0.0.1"),
        "the cluster should be named: {body:#}"
    );
    let s = hold_unready(
        &run,
        "checkpoint",
        "checkpoint stores retried while the target is frozen",
        |s| attempts(s, "checkpoint") >= 2,
    )
    .await;
    assert_eq!(s["checkpoint"]["position"], stored, "{s:#}");
    assert_eq!(written(&s), SMALL, "{s:#}");

    faults.resume();
    wait_ready(&run, "the target thawed", back_within()).await;
    let s = run
        .wait_status(
            "the checkpoint stored at the processed position",
            STALL,
            |s| {
                s["checkpoint"]["position"] == s["processed"]
                    && s["checkpoint"]["unstored"] == 0
                    && s["checkpoint"]["position"] != stored
            },
        )
        .await;
    assert_eq!(s["components"]["checkpoint"]["healthy"], true, "{s:#}");
    run.stop().await;

    let end = last_position(&c.source_client).await.unwrap();
    let checkpoint =
        replicator_esdb::StreamCheckpointStore::new(c.target.connection_string(), "frozen")
            .unwrap()
            .load()
            .await
            .unwrap()
            .expect("a checkpoint in the target");
    assert_eq!(checkpoint.source, end);
    assert!(!w.path("checkpoint").exists(), "no checkpoint file");
    assert_identical(&c.source_client, &c.target_client, SMALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_target_is_reported_within_the_call_deadline_and_the_copy_resumes() {
    let started = Instant::now();
    let source = EsdbServer::start().await.unwrap();
    let source_client = client(&source.connection_string());
    let target = OutOfProcessEsdb::start().await;
    let target_client = client(&target.connection_string);
    write_events(&source_client, STEP).await;
    let w = workdir(&source.connection_string(), &target.connection_string, "");
    let run = Running::start(&w, &[]).await;
    wait_copied(&run, STEP).await;

    // Frozen, then more to copy: no write of it can be answered until the
    // target thaws. (The gate of an in-process target would be out of reach
    // here.)
    target.freeze();
    let frozen = Instant::now();
    write_events(&source_client, STEP).await;
    let body = wait_unready(&run, "target", frozen, unready_within()).await;
    assert_eq!(body["components"]["source"]["healthy"], true, "{body:#}");
    // Each write hangs until the call deadline, then is sent again: three
    // rounds, all of them applied once the target wakes up (the target must
    // still hold each event once).
    let s = hold_unready(
        &run,
        "target",
        "hung writes retried while the target is frozen",
        |s| s["state"] == "retrying" && attempts(s, "target") >= 3,
    )
    .await;
    assert_eq!(written(&s), STEP, "{s:#}");
    println!("target frozen for {:.1?}", frozen.elapsed());

    target.thaw();
    wait_ready(&run, "the target thawed", back_within()).await;
    wait_complete(&run, 2 * STEP).await;
    run.stop().await;
    assert_identical(&source_client, &target_client, 2 * STEP).await;
    println!("took {:.1?}", started.elapsed());
}

/// An EventStoreDB v5 source read over TCP (`reader.protocol: tcp`) frozen
/// mid-copy, as a partition without a reset looks: the reader's heartbeats
/// go unanswered, readiness turns 503 naming the source, the copy stops short
/// of the end; thawed, it resumes and the target ends up identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_tcp_source_is_reported_and_the_copy_resumes_when_it_thaws() {
    let started = Instant::now();
    let (source, tcp) = OutOfProcessEsdb::start_with_tcp().await;
    let source_client = client(&source.connection_string);
    let target = EsdbServer::start().await.unwrap();
    let target_client = client(&target.connection_string());
    write_events(&source_client, EVENTS).await;
    let address = tcp.trim_start_matches("tcp://");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let yaml = format!(
        "replicator:\n  reader:\n    connectionString: \"ConnectTo=tcp://{address}; \
         UseSslConnection=false; HeartBeatTimeout=1000\"\n    protocol: tcp\n  sink:\n    \
         connectionString: \"{}\"\n{}",
        target.connection_string(),
        settings("")
    );
    std::fs::write(dir.path().join("config/appsettings.yaml"), yaml).unwrap();
    let w = Workdir { dir };
    let gate = target.faults();
    let run = start_held(&w, &gate).await;

    // Frozen while the run is a few writes in; then the target takes what
    // the run has read.
    source.freeze();
    let frozen = Instant::now();
    gate.release_writes();
    source_out(&run, frozen, "frozen").await;

    source.thaw();
    wait_ready(&run, "the source thawed", back_within()).await;
    wait_complete(&run, EVENTS).await;
    run.stop().await;
    assert_identical(&source_client, &target_client, EVENTS).await;
    println!("took {:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_file_under_a_missing_directory_is_created() {
    let c = Clusters::start().await;
    write_events(&c.source_client, SMALL).await;
    let w =
        c.workdir("  runContinuously: false\n  checkpoint:\n    path: ./state/sub/checkpoint\n");
    let o = run_async(&w, &["run"]).await;
    crate::assert_ok(&o);
    assert_identical(&c.source_client, &c.target_client, SMALL).await;
    let o = run_async(&w, &["checkpoint", "show"]).await;
    crate::assert_ok(&o);
    let out = crate::stdout(&o);
    assert!(
        out.contains(&format!("source:   {} ", c.source_end().await)),
        "{out}"
    );
    assert!(w.path("state/sub/checkpoint").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_path_that_cannot_work_stops_the_run_before_replicating() {
    let c = Clusters::start().await;
    write_events(&c.source_client, SMALL).await;
    let w = c.workdir("  restartOnFailure: true\n  checkpoint:\n    path: ./blocker/checkpoint\n");
    // The checkpoint's directory is a regular file: no directory can be
    // made there, whatever the permissions.
    std::fs::write(w.path("blocker"), "not a directory").unwrap();
    let started = Instant::now();
    let o = tokio::time::timeout(Duration::from_secs(20), run_async(&w, &["run"]))
        .await
        .expect("replicator run should stop at start-up, not retry or restart");
    let took = started.elapsed();
    crate::assert_fails_naming(&o, &["blocker/checkpoint"]);
    assert!(took < Duration::from_secs(10), "took {took:?}");
    println!(
        "exited with {:?} after {took:.1?}: {}",
        o.status,
        stderr(&o)
    );
    c.target
        .check_empty()
        .await
        .expect("nothing may be replicated when the checkpoint cannot be stored");
}

/// Sends `signal` (`-STOP`, `-CONT`) to the process `pid` this test started.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "cannot send {signal} to {pid}");
}

/// An `esdb-testkit` process serving an empty in-memory server: a target
/// that can be frozen without freezing the test. Killed when dropped.
struct OutOfProcessEsdb {
    process: ServerProcess,
    connection_string: String,
}

impl OutOfProcessEsdb {
    async fn start() -> Self {
        Self::start_with(&[]).await.0
    }

    /// With the legacy TCP service too: also its `tcp://HOST:PORT`.
    async fn start_with_tcp() -> (Self, String) {
        let (server, mut lines) = Self::start_with(&["--tcp-port", "0"]).await;
        let tcp = lines.pop().expect("the TCP endpoint");
        assert!(tcp.starts_with("tcp://"), "esdb-testkit printed {tcp:?}");
        (server, tcp)
    }

    /// Starts `esdb-testkit --port 0` with `args`; returns it and the lines
    /// it printed after the connection string (one per extra endpoint).
    async fn start_with(args: &[&str]) -> (Self, Vec<String>) {
        let mut child = Command::new(esdb_testkit_bin())
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start esdb-testkit");
        let stdout = child.stdout.take().unwrap();
        let expected = 1 + args.iter().filter(|a| a.ends_with("-port")).count();
        let lines = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::task::spawn_blocking(move || {
                let mut stdout = std::io::BufReader::new(stdout);
                let mut lines = Vec::new();
                for _ in 0..expected {
                    let mut line = String::new();
                    stdout.read_line(&mut line)?;
                    lines.push(line.trim().to_owned());
                }
                std::io::Result::Ok(lines)
            }),
        )
        .await
        .expect("esdb-testkit printed no connection string within 30s")
        .unwrap()
        .unwrap();
        let mut lines = lines.into_iter();
        let connection_string = lines.next().unwrap_or_default();
        assert!(
            connection_string.starts_with("esdb://"),
            "esdb-testkit printed {connection_string:?}"
        );
        (
            OutOfProcessEsdb {
                process: ServerProcess(child),
                connection_string,
            },
            lines.collect(),
        )
    }

    /// SIGSTOP: connections stay open and the kernel keeps accepting new
    /// ones, but nothing answers.
    fn freeze(&self) {
        self.process.freeze();
    }

    fn thaw(&self) {
        self.process.thaw();
    }
}

/// A server process of a test: frozen with SIGSTOP, thawed with SIGCONT,
/// killed when dropped.
struct ServerProcess(Child);

impl ServerProcess {
    fn freeze(&self) {
        signal(self.0.id(), "-STOP");
    }

    fn thaw(&self) {
        signal(self.0.id(), "-CONT");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `esdb-testkit` binary of this build (another package's binary, which
/// Cargo names only to that package's tests). `cargo test --workspace`
/// builds it next to `replicator`; when it is missing or older than a source
/// file it was built from (its dep-info says which), it is built here, once.
fn esdb_testkit_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(crate::BIN).parent().unwrap();
        let bin = dir.join(format!("esdb-testkit{}", std::env::consts::EXE_SUFFIX));
        if !is_fresh(&bin, &dir.join("esdb-testkit.d")) {
            build_esdb_testkit(dir);
        }
        assert!(bin.is_file(), "no {} after building it", bin.display());
        bin
    })
    .clone()
}

/// Whether `bin` exists and is newer than every file its dep-info lists.
fn is_fresh(bin: &Path, dep_info: &Path) -> bool {
    let (Ok(built), Ok(deps)) = (
        std::fs::metadata(bin).and_then(|m| m.modified()),
        std::fs::read_to_string(dep_info),
    ) else {
        return false;
    };
    let Some((_, files)) = deps.lines().next().and_then(|l| l.split_once(": ")) else {
        return false;
    };
    // Paths are separated by spaces; a space inside one is escaped.
    let files = files.replace("\\ ", "\0");
    files.split_whitespace().all(|file| {
        std::fs::metadata(file.replace('\0', " "))
            .and_then(|m| m.modified())
            .is_ok_and(|modified| modified <= built)
    })
}

/// `cargo build --bin esdb-testkit` into the profile directory `dir`
/// (`target/debug`, `target/release`…), as the running Cargo would.
fn build_esdb_testkit(dir: &Path) {
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let target_dir = dir.parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let o = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--quiet",
            "--workspace",
            "--bin",
            "esdb-testkit",
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .expect("cannot run cargo");
    assert!(
        o.status.success(),
        "cargo build --bin esdb-testkit failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The target's bearer token (`sink.tokenFile`, KurrentDB's OAuth) revoked
/// mid-run, as an expired one: the copy is held at the target's gate, the
/// token revoked and the target's connections dropped, so the next calls
/// start with a refused token. Readiness turns 503 naming the target, with
/// the refusal and the file (never the token); a new token written to the
/// file is picked up without a restart and the copy completes exactly. The
/// checkpoint is kept in the target (`checkpoint.type: stream`): its store
/// uses the same token. No token reaches the log, `/api/status`,
/// `/health/ready`, `/metrics` or the status page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_token_revoked_mid_run_is_reported_and_a_new_one_in_the_file_is_used() {
    use replicator_esdb::cluster::{self, BearerToken};
    use replicator_testkit::security::{BearerTokens, User};
    use replicator_testkit::ServerOptions;

    const FIRST: &str = "t0ken-first-9f8e7d6c";
    const SECOND: &str = "t0ken-second-5b4a3928";
    let no_token = |what: &str, text: &str| {
        for token in [FIRST, SECOND] {
            assert!(!text.contains(token), "a token reached {what}:\n{text}");
        }
    };

    let started = Instant::now();
    let source = EsdbServer::start().await.unwrap();
    let tokens = BearerTokens::new();
    tokens.accept(FIRST, User::admin());
    let target = EsdbServer::start_with(ServerOptions {
        users: Some(vec![User::admin()]),
        bearer_tokens: Some(tokens.clone()),
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    let source_client = client(&source.connection_string());
    write_events(&source_client, EVENTS).await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let token_file = dir.path().join("target-token");
    std::fs::write(&token_file, format!("{FIRST}\n")).unwrap();
    // No credentials in the target's connection string: the token is all.
    let yaml = format!(
        "replicator:\n  reader:\n    connectionString: \"{}\"\n  sink:\n    connectionString: \"{}\"\n    tokenFile: \"{}\"\n{}",
        source.connection_string(),
        target.connection_string(),
        token_file.display(),
        settings("    type: stream\n")
    );
    std::fs::write(dir.path().join("config/appsettings.yaml"), yaml).unwrap();
    let w = Workdir { dir };
    let gate = target.faults();
    let run = start_held(&w, &gate).await;

    // The token expires with a write held. The server checks a token as each
    // call starts: the open calls' connections are dropped (the held writes
    // with them, unwritten), so every call from now on starts refused.
    tokens.revoke(FIRST);
    let held = gate.held_writes();
    gate.drop_connections();
    let revoked = Instant::now();
    gate.wait_for_dropped_writes(held).await;
    gate.release_writes();
    let body = wait_unready(&run, "target", revoked, unready_within()).await;
    let error = body["components"]["target"]["error"].to_string();
    assert!(error.contains("bearer token was refused"), "{body:#}");
    assert!(
        error.contains(&token_file.display().to_string()),
        "the target's error should name the token file: {body:#}"
    );
    assert_eq!(body["components"]["source"]["healthy"], true, "{body:#}");
    let s = hold_unready(
        &run,
        "target",
        "writes retried while the target refuses the token",
        |s| s["state"] == "retrying" && attempts(s, "target") >= 2,
    )
    .await;
    assert!(written(&s) < EVENTS, "{s:#}");
    no_token("/api/status", &s.to_string());
    no_token("/health/ready", &body.to_string());

    // A renewed token in the file, accepted by the target: picked up by the
    // next attempt, no restart.
    tokens.accept(SECOND, User::admin());
    std::fs::write(&token_file, SECOND).unwrap();
    wait_ready(&run, "a new token in the file", back_within()).await;
    wait_complete(&run, EVENTS).await;
    let (_, page) = run.get("/").await;
    let (_, metrics) = run.get("/metrics").await;
    let status = run.status().await.to_string();
    let log = run.log();
    run.stop().await;
    for (what, text) in [
        ("the status page", &page),
        ("/metrics", &metrics),
        ("/api/status", &status),
        ("the log", &log),
    ] {
        no_token(what, text);
    }
    // The first failure logged may be the dropped connection; the recovery
    // line names the last error, the refusal the status showed above.
    assert!(
        log.contains("bearer token was refused"),
        "the log should say why the target failed:\n{log}"
    );
    // The checkpoint in the target, read with the token of the file.
    let shown = crate::command(w.dir.path())
        .args(["checkpoint", "show"])
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", stderr(&shown));
    no_token(
        "`checkpoint show`",
        &format!("{}{}", crate::stdout(&shown), stderr(&shown)),
    );

    // The copy is exact (read with the new token, as the replicator did).
    let target_reads = cluster::client(&target.connection_string().into())
        .unwrap()
        .with_bearer_token(Some(BearerToken::new(SECOND).unwrap()));
    let options = VerifyOptions {
        compare_revisions: true,
        ..VerifyOptions::default()
    };
    let report = verify(&reads(&source_client), &target_reads, &options)
        .await
        .unwrap();
    assert!(report.is_identical(), "{report}");
    assert_eq!(report.source_events, EVENTS, "{report}");
    println!("took {:.1?}", started.elapsed());
}
