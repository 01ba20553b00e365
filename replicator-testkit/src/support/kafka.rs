//! A Kafka-protocol broker and an independent consumer, for the Kafka sink's
//! tests and the CLI's.
//!
//! Most tests share the broker at `KAFKA_BOOTSTRAP` (started by
//! `scripts/start-kafka`: tansu, in memory), each with topics of its own;
//! tests that freeze a broker start a tansu of their own ([`TansuBroker`]),
//! found through `TANSU_BIN`. What the sink wrote is read back by
//! `kafka-python` (through `KAFKA_PYTHON`), not by the client the sink uses.
//! Without them the tests fail with a message saying how to get them: they
//! never skip.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;

use super::{free_port, listens_on};

const HOW_TO_START: &str = "run `eval \"$(scripts/start-kafka)\"` from the repository root \
                            (it installs tansu and kafka-python and exports KAFKA_BOOTSTRAP, \
                            TANSU_BIN and KAFKA_PYTHON), or set KAFKA_BOOTSTRAP to a Kafka broker \
                            and run `eval \"$(scripts/start-kafka --install-only)\"`";

/// The shared broker, `KAFKA_BOOTSTRAP` (`host:port`).
///
/// # Panics
/// When `KAFKA_BOOTSTRAP` is not set, saying how to start one.
pub fn bootstrap() -> String {
    match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(b) if !b.is_empty() => b,
        _ => {
            panic!("KAFKA_BOOTSTRAP is not set, so the Kafka tests have no broker: {HOW_TO_START}")
        }
    }
}

fn env_file(var: &str) -> PathBuf {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "{var}={} is not a file: {HOW_TO_START}",
                path.display()
            );
            path
        }
        None => panic!("{var} is not set: {HOW_TO_START}"),
    }
}

/// A name no other test or run uses: letters, digits and `_` only, so that it
/// can start a stream category and a topic name.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// A tansu broker of the test's own, in memory, on a port of its own; killed
/// when dropped.
pub struct TansuBroker {
    child: Child,
    port: u16,
    /// Its log (stderr), removed when it is dropped.
    log: PathBuf,
}

impl TansuBroker {
    /// Starts it and returns once the broker process itself listens.
    ///
    /// # Panics
    /// Without `TANSU_BIN`, or when it does not listen within 60 s.
    pub async fn start() -> TansuBroker {
        TansuBroker::start_on(free_port()).await
    }

    /// Kills it (SIGKILL), as a crashed host; returns its port for
    /// [`TansuBroker::start_on`]. Its records are gone with it (in memory).
    pub fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }

    /// Starts a new, empty broker on `port` (one from [`free_port`], e.g. a
    /// killed broker's).
    ///
    /// # Panics
    /// Without `TANSU_BIN`, or when it does not listen within 60 s.
    pub async fn start_on(port: u16) -> TansuBroker {
        let bin = env_file("TANSU_BIN");
        let url = format!("tcp://127.0.0.1:{port}");
        let log =
            std::env::temp_dir().join(format!("tansu-test-{}-{port}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).map_or_else(|_| Stdio::null(), Stdio::from);
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut broker = TansuBroker { child, port, log };
        let pid = broker.child.id();
        super::wait_for(
            "the tansu broker listening",
            Duration::from_secs(60),
            || {
                let exited = broker.child.try_wait().ok().flatten();
                async move {
                    assert!(exited.is_none(), "tansu exited at start-up: {exited:?}");
                    listens_on(pid, port).then_some(())
                }
            },
        )
        .await;
        broker
    }

    /// `127.0.0.1:port`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes the broker (SIGSTOP): connections stay open and nothing
    /// answers, as with a hung host.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen broker run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "cannot send {signal} to tansu {pid}");
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        // SIGKILL ends even a frozen (SIGSTOPped) broker.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// One record as kafka-python read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// Its key, `None` when null.
    pub key: Option<Vec<u8>>,
    /// Its value, `None` when null (a tombstone).
    pub value: Option<Vec<u8>>,
    /// Its headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Its timestamp (milliseconds).
    pub timestamp: i64,
}

impl KafkaRecord {
    /// The first header named `name`, as UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The key as UTF-8.
    pub fn key_str(&self) -> Option<String> {
        self.key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }
}

const CLIENT: &str = r#"
import base64, json, sys
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

command, bootstrap = sys.argv[1], sys.argv[2]
args = json.loads(sys.argv[3])
b64 = lambda v: None if v is None else base64.b64encode(v).decode()
if command == "create":
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
    admin.create_topics([NewTopic(t, p, 1) for t, p in args])
    admin.close()
elif command == "read":
    import time
    topics, at_least = args
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             request_timeout_ms=20000)
    partitions = []
    for topic in topics:
        found = consumer.partitions_for_topic(topic)
        if not found:
            continue
        partitions += [TopicPartition(topic, p) for p in sorted(found)]
    # tansu 0.6.0 answers ListOffsets(latest) with offsets below what a
    # partition holds, so the end offsets are a lower bound only: read until
    # they are passed, at least `at_least` records are read and a fetch of
    # every partition brings nothing more (everything was written before).
    seen = 0
    if partitions:
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=1000)
            for tp, messages in batch.items():
                for m in messages:
                    seen += 1
                    print(json.dumps({"topic": m.topic, "partition": m.partition,
                        "offset": m.offset, "key": b64(m.key), "value": b64(m.value),
                        "timestamp": m.timestamp,
                        "headers": [[k, b64(v)] for k, v in (m.headers or [])]}))
            passed = all(consumer.position(tp) >= end[tp] for tp in partitions)
            if not batch and passed and seen >= at_least:
                break
    consumer.close()
"#;

fn python(command: &str, bootstrap: &str, args: &serde_json::Value) -> String {
    let python = env_file("KAFKA_PYTHON");
    let out = Command::new(&python)
        .args(["-c", CLIENT, command, bootstrap, &args.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "kafka-python {command} {args} on {bootstrap} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Creates `topics` (name, partitions) with kafka-python's admin client.
///
/// # Panics
/// When the broker refuses.
pub fn create_topics(bootstrap: &str, topics: &[(&str, u32)]) {
    python("create", bootstrap, &serde_json::json!(topics));
}

/// Every record of `topics` (written before the call), read by kafka-python
/// (topics that do not exist are left out), in partition order then offset
/// order. It reads until the partitions' end offsets are passed, at least
/// `at_least` records are read (or two minutes went by: the caller then finds
/// records missing) and one more fetch brings nothing: tansu 0.6.0 reports
/// end offsets below what a partition holds.
///
/// # Panics
/// When the consumer fails.
pub fn read_topics(bootstrap: &str, topics: &[String], at_least: usize) -> Vec<KafkaRecord> {
    let out = python("read", bootstrap, &serde_json::json!([topics, at_least]));
    let decode = |v: &serde_json::Value| -> Option<Vec<u8>> {
        v.as_str().map(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .expect("base64 from the reader")
        })
    };
    let mut records: Vec<KafkaRecord> = out
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            KafkaRecord {
                topic: v["topic"].as_str().unwrap_or_default().to_owned(),
                partition: i32::try_from(v["partition"].as_i64().unwrap_or(-1)).unwrap_or(-1),
                offset: v["offset"].as_i64().unwrap_or(-1),
                key: decode(&v["key"]),
                value: decode(&v["value"]),
                timestamp: v["timestamp"].as_i64().unwrap_or(-1),
                headers: v["headers"]
                    .as_array()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (
                                    h[0].as_str().unwrap_or_default().to_owned(),
                                    decode(&h[1]).unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    records
        .sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    records
}
