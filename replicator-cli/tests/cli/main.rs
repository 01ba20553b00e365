//! The `replicator` binary as a user runs it: configuration errors, the
//! `checkpoint show|delete|seed` commands on the file and MongoDB stores,
//! `run` against in-process servers (here, and killed mid-copy in
//! [`restart`], following the source live in [`live`], through its status
//! server in [`status`], through outages of the source, the target and the
//! checkpoint store in [`outages`], into Kafka in [`kafka`]), `projections`
//! re-created stopped on the target ([`projections`]), and `demo`.
//!
//! The `run` tests replicate between real clusters instead when
//! `ESDB_SOURCE_URL` and/or `ESDB_TARGET_URL` hold connection strings (see
//! [`Clusters`] and the README): each such test needs fresh, empty clusters.
//! Those that decide where a copy is with the in-process target's write gate
//! ([`restart`], the filter kill test) need `ESDB_TARGET_URL` unset. `demo`
//! always uses its own in-process servers, by design.

#[cfg(feature = "demo")]
mod checkpoint_stream;
mod demo;
mod deploy;
mod filters;
mod kafka;
mod live;
mod map_position;
mod order;
mod outages;
mod projections;
mod restart;
mod scavenge;
mod secrets;
mod security;
mod status;
mod subscriptions;
mod tcp_source;
mod transforms;
mod verify;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use replicator_esdb::verify::{verify, VerifyOptions, VerifyReport};
use replicator_testkit::cluster::TestCluster;
use replicator_testkit::support::last_position;
use tempfile::TempDir;

/// Appends JSON events `(type, data)` to `stream`, one append each; returns
/// their ids.
async fn append_json(
    client: &eventstore::Client,
    stream: &str,
    events: &[(&str, serde_json::Value)],
) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    for (event_type, data) in events {
        let id = uuid::Uuid::new_v4();
        let event = eventstore::EventData::json(*event_type, data)
            .unwrap()
            .id(id);
        client
            .append_to_stream(stream, &Default::default(), event)
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

/// A loopback port that refuses connections for as long as this lives: bound
/// but never listening, so no other server of a parallel test can take it
/// (a port merely freed can be handed out again at once).
struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    port: u16,
}

impl ClosedPort {
    fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("a loopback port");
        let port = socket.local_addr().expect("its address").port();
        ClosedPort {
            _socket: socket,
            port,
        }
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_replicator");

/// A directory holding a config file, as a user's working directory would.
struct Workdir {
    dir: TempDir,
}

impl Workdir {
    /// A directory with `config/appsettings.yaml` holding `replicator:` plus
    /// `extra` (indented YAML lines under `replicator`).
    fn with_config(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        let yaml = format!(
            "replicator:\n  reader:\n    connectionString: \"esdb://admin:changeit@source:2113?tls=false\"\n    protocol: grpc\n  sink:\n    connectionString: \"esdb://target:2113?tls=false\"\n{extra}"
        );
        std::fs::write(dir.path().join("config/appsettings.yaml"), yaml).unwrap();
        Workdir { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Sets `sink.partitionCount` in a config written by [`Clusters::workdir`]
    /// (which writes 4).
    fn set_partitions(&self, partitions: usize) {
        let config = self.path("config/appsettings.yaml");
        let yaml = std::fs::read_to_string(&config).unwrap();
        assert!(yaml.contains("partitionCount: 4"), "{yaml}");
        let yaml = yaml.replace(
            "partitionCount: 4",
            &format!("partitionCount: {partitions}"),
        );
        std::fs::write(config, yaml).unwrap();
    }

    /// Runs the binary in this directory; see [`command`].
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = command(self.dir.path());
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

/// The binary, run in `dir` (so the default `--config` and the default
/// `./checkpoint` apply), without inherited REPLICATOR_* variables.
/// The replicator's own gRPC client of the cluster `client` reaches, for
/// `verify`.
fn reads(client: &eventstore::Client) -> replicator_esdb::cluster::GrpcClient {
    replicator_esdb::cluster::client_from(client.settings().clone()).expect("a client")
}

fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    for (key, _) in std::env::vars_os() {
        if key
            .to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("REPLICATOR_")
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "warn");
    // Not the default 0.0.0.0:5000: tests run side by side, each with its own
    // status server on a free port.
    cmd.env("REPLICATOR_HTTP_LISTEN", "127.0.0.1:0");
    cmd
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

#[track_caller]
fn assert_fails_naming(o: &Output, words: &[&str]) {
    assert!(
        !o.status.success(),
        "expected failure, got success\nstdout:\n{}",
        stdout(o)
    );
    let err = stderr(o);
    for w in words {
        assert!(err.contains(w), "stderr should name {w:?}:\n{err}");
    }
}

fn write_chaser(path: &Path, position: i64) {
    std::fs::write(path, position.to_le_bytes()).unwrap();
}

#[test]
fn run_rejects_each_unsupported_key_by_name() {
    for (extra, key, word) in [
        (
            "  transform:\n    type: python\n",
            "replicator.transform.type",
            "python",
        ),
        (
            "  transform:\n    type: js\n",
            "replicator.transform.config",
            "required",
        ),
    ] {
        let w = Workdir::with_config(extra);
        let o = w.run(&["run"], &[]);
        assert_fails_naming(&o, &[key, word]);
    }
    // A protocol we do not speak, in the file given with --config.
    let w = Workdir::with_config("");
    let yaml = std::fs::read_to_string(w.path("config/appsettings.yaml"))
        .unwrap()
        .replace("protocol: grpc", "protocol: udp");
    std::fs::write(w.path("mine.yaml"), yaml).unwrap();
    let o = w.run(&["run", "--config", "mine.yaml"], &[]);
    assert_fails_naming(&o, &["replicator.reader.protocol", "udp", "mine.yaml"]);
    // A gRPC URL given to the TCP reader: the form it wants is named, the
    // password is not shown.
    let w = Workdir::with_config("");
    let yaml = std::fs::read_to_string(w.path("config/appsettings.yaml"))
        .unwrap()
        .replace("protocol: grpc", "protocol: tcp");
    std::fs::write(w.path("config/appsettings.yaml"), yaml).unwrap();
    let o = w.run(&["run"], &[]);
    assert_fails_naming(&o, &["replicator.reader", "ConnectTo=tcp://"]);
    assert!(!stderr(&o).contains("changeit"), "{}", stderr(&o));
}

#[test]
fn run_rejects_an_unknown_key_by_its_full_path() {
    let w = Workdir::with_config("  checkpoint:\n    checkpointEvery: 10\n");
    let o = w.run(&["run"], &[]);
    assert_fails_naming(&o, &["replicator.checkpoint.checkpointEvery", "unknown"]);
}

#[test]
fn an_unsupported_value_from_the_environment_names_the_variable() {
    let w = Workdir::with_config("");
    let o = w.run(&["run"], &[("REPLICATOR_SINK_PROTOCOL", "amqp")]);
    assert_fails_naming(
        &o,
        &["replicator.sink.protocol", "REPLICATOR_SINK_PROTOCOL"],
    );
    let o = w.run(&["run"], &[("REPLICATOR_SINK_PARTITIONS", "4")]);
    assert_fails_naming(&o, &["REPLICATOR_SINK_PARTITIONS"]);
}

#[test]
fn a_missing_or_broken_config_file_is_named() {
    let w = Workdir::with_config("");
    let o = w.run(&["run", "--config", "nowhere.yaml"], &[]);
    assert_fails_naming(&o, &["nowhere.yaml"]);
    std::fs::write(w.path("broken.yaml"), "replicator:\n  reader: [x\n").unwrap();
    let o = w.run(&["checkpoint", "show", "--config", "broken.yaml"], &[]);
    assert_fails_naming(&o, &["broken.yaml", "line 2"]);
}

#[test]
fn show_prints_a_csharp_checkpoint_file() {
    let w = Workdir::with_config("");
    std::fs::write(w.path("checkpoint"), "4321,987654").unwrap();
    let o = w.run(&["checkpoint", "show"], &[]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("file ./checkpoint"), "{out}");
    assert!(out.contains("C# replicator"), "{out}");
    // The commit again from its first record: the C# tool may have stopped
    // inside a v5 transaction.
    assert!(
        out.contains("source:   C:987654/P:0 (commit 987654, prepare 0)"),
        "{out}"
    );
    assert!(out.contains("resumes:  AT (inclusive)"), "{out}");
    assert!(
        out.contains("seed:     no (a commit position only"),
        "{out}"
    );
    assert!(out.contains("target:   unknown"), "{out}");
}

#[test]
fn show_reads_the_configured_path_and_says_when_nothing_is_stored() {
    let w = Workdir::with_config("  checkpoint:\n    path: ./state/pos\n");
    let o = w.run(&["checkpoint", "show"], &[]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("no checkpoint stored"),
        "{}",
        stdout(&o)
    );

    std::fs::create_dir(w.path("state")).unwrap();
    std::fs::write(w.path("state/pos"), "1,555").unwrap();
    let o = w.run(&["checkpoint", "show"], &[]);
    assert_ok(&o);
    assert!(stdout(&o).contains("C:555/P:0"), "{}", stdout(&o));

    // An environment override moves the store.
    std::fs::write(w.path("elsewhere"), "1,777").unwrap();
    let o = w.run(
        &["checkpoint", "show"],
        &[("REPLICATOR_CHECKPOINT_PATH", "./elsewhere")],
    );
    assert_ok(&o);
    assert!(stdout(&o).contains("C:777/P:0"), "{}", stdout(&o));
}

#[test]
fn show_fails_on_a_corrupt_checkpoint_naming_the_file() {
    let w = Workdir::with_config("");
    std::fs::write(w.path("checkpoint"), "garbage").unwrap();
    let o = w.run(&["checkpoint", "show"], &[]);
    assert_fails_naming(&o, &["checkpoint"]);
    assert!(stderr(&o).contains("garbage"), "{}", stderr(&o));
}

#[test]
fn delete_removes_the_checkpoint() {
    let w = Workdir::with_config("");
    std::fs::write(w.path("checkpoint"), "4321,987654").unwrap();
    let o = w.run(&["checkpoint", "delete"], &[]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("C:987654/P:0 (a C# replicator's commit position)"),
        "{}",
        stdout(&o)
    );
    assert!(!w.path("checkpoint").exists());
    let o = w.run(&["checkpoint", "show"], &[]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("no checkpoint stored"),
        "{}",
        stdout(&o)
    );
    // Deleting again is not an error.
    let o = w.run(&["checkpoint", "delete"], &[]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("no checkpoint was stored"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn seed_then_show_shows_the_seed() {
    let w = Workdir::with_config("");
    write_chaser(&w.path("chaser.chk"), 123_456);
    let o = w.run(&["checkpoint", "seed", "--chaser", "chaser.chk"], &[]);
    assert_ok(&o);
    let o = w.run(&["checkpoint", "show"], &[]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("source:   C:123456/P:123456"), "{out}");
    assert!(out.contains("resumes:  AT (inclusive)"), "{out}");
    assert!(out.contains("seed:     yes"), "{out}");
    assert!(!out.contains("C# replicator"), "{out}");
}

#[test]
fn seed_refuses_to_replace_a_stored_checkpoint_unless_forced() {
    let w = Workdir::with_config("");
    std::fs::write(w.path("checkpoint"), "7,9000").unwrap();
    write_chaser(&w.path("chaser.chk"), 500);
    let o = w.run(&["checkpoint", "seed", "--chaser", "chaser.chk"], &[]);
    assert_fails_naming(&o, &["already stored", "C:9000/P:0"]);
    let o = w.run(&["checkpoint", "show"], &[]);
    assert!(stdout(&o).contains("C:9000/P:0"), "{}", stdout(&o));

    let o = w.run(
        &["checkpoint", "seed", "--chaser", "chaser.chk", "--force"],
        &[],
    );
    assert_ok(&o);
    let o = w.run(&["checkpoint", "show"], &[]);
    let out = stdout(&o);
    assert!(out.contains("source:   C:500/P:500"), "{out}");
    assert!(out.contains("seed:     yes"), "{out}");
}

#[test]
fn a_bad_chaser_file_is_an_error_naming_it() {
    let w = Workdir::with_config("");
    let o = w.run(&["checkpoint", "seed", "--chaser", "missing.chk"], &[]);
    assert_fails_naming(&o, &["missing.chk"]);

    std::fs::write(w.path("short.chk"), [1, 2, 3]).unwrap();
    let o = w.run(&["checkpoint", "seed", "--chaser", "short.chk"], &[]);
    assert_fails_naming(&o, &["short.chk", "8 bytes"]);

    write_chaser(&w.path("negative.chk"), -1);
    let o = w.run(&["checkpoint", "seed", "--chaser", "negative.chk"], &[]);
    assert_fails_naming(&o, &["negative.chk", "negative"]);

    // Nothing was seeded by any of them.
    assert!(!w.path("checkpoint").exists());
}

#[test]
fn run_with_a_bad_configured_chaser_fails_before_replicating() {
    let w = Workdir::with_config(
        "  checkpoint:\n    seeder:\n      type: chaser\n      path: ./backup/chaser.chk\n",
    );
    let o = w.run(&["run"], &[]);
    assert_fails_naming(&o, &["backup/chaser.chk", "does not exist"]);
    assert!(!w.path("checkpoint").exists());
}

/// The MongoDB store through the CLI. `scripts/test` starts a server and sets
/// MONGODB_URL; without it this test fails rather than skips.
#[test]
fn mongo_store_seed_show_delete() {
    let url = std::env::var("MONGODB_URL").expect(
        "MONGODB_URL is not set: run scripts/test, or start a MongoDB-compatible server \
         (scripts/start-mongo) and export MONGODB_URL",
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let database = format!("cli_test_{}_{nanos}", std::process::id());
    let w = Workdir::with_config(&format!(
        "  checkpoint:\n    type: mongo\n    path: \"{url}\"\n    database: {database}\n    instanceId: cli-a\n"
    ));
    write_chaser(&w.path("chaser.chk"), 4242);

    let o = w.run(&["checkpoint", "show"], &[]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("no checkpoint stored"), "{out}");
    assert!(out.contains(&database) && out.contains("cli-a"), "{out}");

    assert_ok(&w.run(&["checkpoint", "seed", "--chaser", "chaser.chk"], &[]));
    let o = w.run(&["checkpoint", "show"], &[]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("source:   C:4242/P:4242"), "{out}");
    assert!(out.contains("seed:     yes"), "{out}");

    // Another instance id in the same database sees nothing.
    let o = w.run(
        &["checkpoint", "show"],
        &[("REPLICATOR_CHECKPOINT_INSTANCEID", "cli-b")],
    );
    assert_ok(&o);
    assert!(
        stdout(&o).contains("no checkpoint stored"),
        "{}",
        stdout(&o)
    );

    let o = w.run(&["checkpoint", "seed", "--chaser", "chaser.chk"], &[]);
    assert_fails_naming(&o, &["already stored"]);

    assert_ok(&w.run(&["checkpoint", "delete"], &[]));
    let o = w.run(&["checkpoint", "show"], &[]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("no checkpoint stored"),
        "{}",
        stdout(&o)
    );
}

/// The source and target clusters and a working directory whose config
/// replicates from the first to the second: fresh in-process servers, or the
/// real clusters in `ESDB_SOURCE_URL` and `ESDB_TARGET_URL` (each may be set
/// alone; see `replicator_testkit::cluster`). Real clusters must be empty and
/// throwaway: the tests copy the whole source and compare every user stream.
struct Clusters {
    source: TestCluster,
    target: TestCluster,
    source_client: eventstore::Client,
    target_client: eventstore::Client,
}

impl Clusters {
    async fn start() -> Self {
        Self::start_with(Duration::ZERO).await
    }

    /// With an in-process target, make each of its appends take
    /// `target_append_latency` (a real target is used as it is).
    async fn start_with(target_append_latency: Duration) -> Self {
        let mut clusters = Vec::new();
        for (var, append_latency) in [
            ("ESDB_SOURCE_URL", Duration::ZERO),
            ("ESDB_TARGET_URL", target_append_latency),
        ] {
            let options = replicator_testkit::ServerOptions {
                append_latency,
                ..Default::default()
            };
            let cluster = TestCluster::empty_from_env_with(var, options)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            clusters.push(cluster);
        }
        let target = clusters.pop().expect("two clusters");
        let source = clusters.pop().expect("two clusters");
        Clusters {
            source_client: source.client(),
            target_client: target.client(),
            source,
            target,
        }
    }

    fn workdir(&self, extra: &str) -> Workdir {
        self.workdir_with("", "", extra)
    }

    /// Like [`Clusters::workdir`], with `reader` and `sink` lines (indented
    /// under those sections) added.
    fn workdir_with(&self, reader: &str, sink: &str, extra: &str) -> Workdir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        let yaml = format!(
            "replicator:\n  reader:\n    connectionString: \"{}\"\n{reader}  sink:\n    connectionString: \"{}\"\n    partitionCount: 4\n{sink}{extra}",
            self.source.connection_string(),
            self.target.connection_string()
        );
        std::fs::write(dir.path().join("config/appsettings.yaml"), yaml).unwrap();
        Workdir { dir }
    }

    async fn compare(&self) -> VerifyReport {
        verify(
            &reads(&self.source_client),
            &reads(&self.target_client),
            &VerifyOptions::default(),
        )
        .await
        .unwrap()
    }

    /// Starts `replicator run` in `w` with the in-process target holding every
    /// write after its first `writes` (`FaultHandle::hold_writes_after`), and
    /// returns the child once a write waits at the target: from then on the
    /// run is mid-copy, exactly `writes` writes in, whatever the machine's
    /// speed, until the test calls `release_target_writes`. Panics (naming the
    /// cause) when the run ends or nothing waits within two minutes (only a
    /// stall, or a workload that fits in `writes` writes).
    async fn start_held_run(&self, w: &Workdir, writes: usize) -> tokio::process::Child {
        let faults = self.target.faults();
        faults.hold_writes_after(writes);
        let mut child = spawn_run(w, None);
        tokio::select! {
            () = faults.wait_for_held_writes(1) => {}
            status = child.wait() => panic!(
                "the run ended ({status:?}) before its write {} reached the target: \
                 the workload fits in {writes} writes",
                writes + 1
            ),
            () = tokio::time::sleep(Duration::from_secs(120)) => {
                panic!("no write reached the target's gate within 120 s")
            }
        }
        child
    }

    /// Opens the target's gate closed by [`Clusters::start_held_run`].
    fn release_target_writes(&self) {
        self.target.faults().release_writes();
    }

    /// The last position in the source's `$all`, as `show` prints it.
    async fn source_end(&self) -> String {
        self.source_end_position().await.to_string()
    }

    /// The last position in the source's `$all`.
    async fn source_end_position(&self) -> replicator_core::Position {
        last_position(&self.source_client)
            .await
            .expect("the source is empty")
    }
}

/// Returns once the in-process target's gate let through the writes
/// [`replicator_testkit::FaultHandle::hold_writes_after`] allowed, or the
/// run's exit status if it ends first.
async fn gate_spent_or_ended(
    faults: &replicator_testkit::FaultHandle,
    child: &mut tokio::process::Child,
) -> Option<std::process::ExitStatus> {
    tokio::select! {
        () = faults.wait_for_gate_spent() => None,
        status = child.wait() => Some(status.unwrap()),
    }
}

/// Starts `replicator run` in `w`, killed when the handle is dropped; with
/// `log`, its standard error goes there and its standard output nowhere.
fn spawn_run(w: &Workdir, log: Option<&std::path::Path>) -> tokio::process::Child {
    let mut cmd = command(w.dir.path());
    cmd.arg("run");
    if let Some(log) = log {
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
    }
    tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Runs the binary without blocking the runtime that serves the clusters.
async fn run_async(w: &Workdir, args: &[&str]) -> Output {
    let mut cmd = command(w.dir.path());
    cmd.args(args);
    tokio::process::Command::from(cmd).output().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_replicates_a_workload_and_a_second_run_adds_nothing() {
    let c = Clusters::start().await;
    let spec = replicator_testkit::workload::WorkloadSpec::new(11, 1_500);
    replicator_testkit::workload::generate(&c.source_client, &spec)
        .await
        .unwrap();
    let w = c.workdir("  runContinuously: false\n  checkpoint:\n    checkpointAfter: 100\n");

    let o = run_async(&w, &["run"]).await;
    assert_ok(&o);
    let report = c.compare().await;
    assert!(report.is_identical(), "{report}");
    // Deleted and tombstoned streams are not comparable; most events are.
    assert!(report.source_events > 1_000, "{report:?}");

    let o = run_async(&w, &["checkpoint", "show"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains(&format!("source:   {} ", c.source_end().await)),
        "the checkpoint should be at the source's last record:\n{out}"
    );
    assert!(!out.contains("target:   unknown"), "{out}");

    // Resuming from the checkpoint finds nothing new and duplicates nothing.
    let o = run_async(&w, &["run"]).await;
    assert_ok(&o);
    let again = c.compare().await;
    assert!(again.is_identical(), "{again}");
    assert_eq!(again.target_events, report.target_events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_continuous_run_with_a_final_checkpoint() {
    let c = Clusters::start().await;
    let spec = replicator_testkit::workload::WorkloadSpec::new(5, 300);
    replicator_testkit::workload::generate(&c.source_client, &spec)
        .await
        .unwrap();
    // checkpointAfter far beyond the workload and an idle flush far beyond
    // the test: only the final checkpoint, on SIGTERM, can cover the last
    // record.
    let w = c.workdir(
        "  checkpoint:\n    checkpointAfter: 1000000\n    checkpointIntervalInSeconds: 3600\n",
    );
    let mut cmd = command(w.dir.path());
    cmd.arg("run").stderr(std::process::Stdio::piped());
    let mut child = tokio::process::Command::from(cmd).spawn().unwrap();

    // Wait (bounded, so a hang fails instead of blocking) until replicated.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if c.compare().await.is_identical() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not replicated: {}",
            c.compare().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "a continuous run must keep running once caught up"
    );

    // Replicated, yet no checkpoint covers the last record: what the final
    // store does below is its own doing.
    let end = format!("source:   {} ", c.source_end().await);
    let before = run_async(&w, &["checkpoint", "show"]).await;
    assert!(
        !stdout(&before).contains(&end),
        "stored before SIGTERM, so the final store is not what is tested:\n{}",
        stdout(&before)
    );

    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().await.unwrap();
    assert_ok(&o);

    let o = run_async(&w, &["checkpoint", "show"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains(&end),
        "the final checkpoint should be at the source's last record:\n{out}"
    );
}

#[test]
fn run_stops_on_a_corrupt_checkpoint_instead_of_restarting() {
    // restartOnFailure is on by default; a corrupt checkpoint must still stop
    // the program (restarting cannot fix it, and starting over would duplicate).
    let w = Workdir::with_config("");
    std::fs::write(w.path("checkpoint"), "not a checkpoint").unwrap();
    let o = w.run(&["run"], &[]);
    assert_fails_naming(&o, &["checkpoint", "not a checkpoint"]);
}

/// A backup restored on the target holds everything before the chaser
/// position; `run` with a chaser seeder must start AT that position: the event
/// there is the first not in the backup and arrives, the one before it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaser_seed_replicates_the_event_at_its_position_and_nothing_before() {
    let c = Clusters::start().await;
    let mut written = Vec::new();
    for i in 0..12u32 {
        let id = uuid::Uuid::new_v4();
        let event =
            eventstore::EventData::binary("Numbered", i.to_le_bytes().to_vec().into()).id(id);
        let result = c
            .source_client
            .append_to_stream("chaser-orders", &Default::default(), event)
            .await
            .unwrap();
        written.push((id, result.position.commit));
    }
    let seed_at = 7;
    let w = c.workdir("");
    let chaser = w.path("chaser.chk");
    write_chaser(&chaser, written[seed_at].1 as i64);
    let yaml = std::fs::read_to_string(w.path("config/appsettings.yaml")).unwrap();
    std::fs::write(
        w.path("config/appsettings.yaml"),
        format!(
            "{yaml}  runContinuously: false\n  checkpoint:\n    seeder:\n      type: chaser\n      path: \"{}\"\n",
            chaser.display()
        ),
    )
    .unwrap();

    let o = run_async(&w, &["run"]).await;
    assert_ok(&o);
    let options = eventstore::ReadStreamOptions::default().max_count(100);
    let mut read = c
        .target_client
        .read_stream("chaser-orders", &options)
        .await
        .unwrap();
    let mut ids = Vec::new();
    while let Some(event) = read.next().await.unwrap() {
        ids.push(event.get_original_event().id);
    }
    let want: Vec<uuid::Uuid> = written[seed_at..].iter().map(|w| w.0).collect();
    assert_eq!(
        ids, want,
        "from the event at the chaser position on, each once"
    );
    assert!(
        !ids.contains(&written[seed_at - 1].0),
        "the event before the chaser position is in the backup"
    );
}
