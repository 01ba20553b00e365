//! Shared helpers of the benchmark binaries: timing, peak memory, tables.
#![warn(missing_docs)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use replicator_testkit::proto::event_store::client as pb;

/// The error type of the bench helpers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A number from the environment variable `name`, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A comma-separated list of numbers from the environment variable `name`,
/// or `default`.
///
/// # Panics
/// An element that is not a number.
pub fn env_list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|v| v.trim().parse().expect("a comma-separated list of numbers"))
        .collect()
}

/// A child process of the running bench binary, re-executed with other
/// arguments (a server, a loader, a replicator run), so that what is measured
/// of it is its own. Its stdout lines arrive on a channel; it is killed when
/// dropped.
pub struct ChildProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl ChildProcess {
    /// Starts this binary with `args`.
    ///
    /// # Errors
    /// The binary cannot be started.
    pub fn spawn(args: &[String]) -> Result<Self, BoxError> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args(args);
        Self::from_command(command)
    }

    /// Starts `command` (another program), its stdout on the channel.
    ///
    /// # Errors
    /// It cannot be started.
    pub fn from_command(mut command: Command) -> Result<Self, BoxError> {
        let mut child = command.stdout(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ChildProcess { child, lines })
    }

    /// Starts this binary with `args` and waits for its first line (a
    /// server's connection string, a run's result).
    ///
    /// # Errors
    /// It cannot be started, or it ends without printing a line.
    pub fn answering(args: &[String]) -> Result<(Self, String), BoxError> {
        let child = Self::spawn(args)?;
        let line = child
            .line()
            .map_err(|_| format!("child {args:?} ended without answering"))?;
        Ok((child, line))
    }

    /// Its next stdout line, waiting for it.
    ///
    /// # Errors
    /// It ended without printing another line.
    pub fn line(&self) -> Result<String, BoxError> {
        self.lines
            .recv()
            .map(|line| line.trim().to_owned())
            .map_err(|_| format!("child {} ended without answering", self.pid()).into())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds it has used so far (0 when unknown).
    pub fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(&self.pid().to_string()).unwrap_or(0.0)
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of a `--serve` child: a testkit server with `options`, its
/// connection string as the first line (and with a TCP port, its
/// `HOST:PORT` as the second), serving until the parent kills it.
///
/// # Errors
/// The server cannot start.
pub async fn serve(options: replicator_testkit::ServerOptions) -> Result<(), BoxError> {
    let server = replicator_testkit::EsdbServer::start_with(options).await?;
    println!("{}", server.connection_string());
    if let Some(address) = server.tcp_address() {
        println!("{address}");
    }
    std::future::pending::<()>().await;
    Ok(())
}

/// A raw gRPC Streams client with `TCP_NODELAY`, like the .NET client, for an
/// `esdb://host:port…` connection string of a testkit server.
///
/// # Errors
/// The connection string has no port, or the server cannot be reached.
pub async fn nodelay_client(
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

/// An event to append with [`append_request`].
pub struct Proposed {
    /// The event id.
    pub id: uuid::Uuid,
    /// The event type.
    pub event_type: String,
    /// `application/json` or `application/octet-stream`.
    pub content_type: &'static str,
    /// The event's data.
    pub data: bytes::Bytes,
    /// The user's metadata.
    pub metadata: bytes::Bytes,
}

/// One append request (options, then one message per event) to `stream`
/// with any expected revision.
pub fn append_request(
    stream: &str,
    events: impl IntoIterator<Item = Proposed>,
) -> Vec<pb::streams::AppendReq> {
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
        messages.push(pb::streams::AppendReq {
            content: Some(Content::ProposedMessage(append_req::ProposedMessage {
                id: Some(pb::Uuid {
                    value: Some(pb::uuid::Value::String(event.id.to_string())),
                }),
                metadata: HashMap::from([
                    ("type".to_owned(), event.event_type),
                    ("content-type".to_owned(), event.content_type.to_owned()),
                ]),
                custom_metadata: event.metadata,
                data: event.data,
            })),
        });
    }
    messages
}

/// Fills a testkit server with `events` small JSON events (about 150 bytes
/// of data and 60 of metadata each) over `streams` streams (`small-0`, …):
/// appends of `per_append` consecutive events of one stream, the streams
/// taken in turn, 8 appends in flight. The source's `$all` thus interleaves
/// the streams as a busy system's does.
///
/// # Errors
/// The server cannot be reached or refuses an append.
pub async fn load_small_events(
    url: &str,
    events: usize,
    streams: usize,
    per_append: usize,
) -> Result<(), BoxError> {
    let client = nodelay_client(url).await?;
    let streams = streams.max(1);
    let per_append = per_append.max(1);
    let appends = events.div_ceil(per_append);
    futures::stream::iter(0..appends)
        .map(|append| {
            let mut client = client.clone();
            let first = append * per_append;
            let count = per_append.min(events - first);
            let stream = format!("small-{}", append % streams);
            let request = append_request(
                &stream,
                (first..first + count).map(|n| {
                    let data = format!(
                        r#"{{"orderId":"order-{n:010}","customer":"customer-{c:06}","amount":{a},"currency":"EUR","lines":[{{"sku":"sku-{s:05}","qty":{q}}}]}}"#,
                        c = n % 100_003,
                        a = n % 10_007,
                        s = n % 9_973,
                        q = n % 7 + 1
                    );
                    let metadata = format!(r#"{{"correlationId":"c-{n:012}","source":"bench"}}"#);
                    Proposed {
                        id: uuid::Uuid::new_v4(),
                        event_type: "OrderPlaced".to_owned(),
                        content_type: "application/json",
                        data: bytes::Bytes::from(data),
                        metadata: bytes::Bytes::from(metadata),
                    }
                }),
            );
            async move { client.append(futures::stream::iter(request)).await }
        })
        .buffer_unordered(8)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok(())
}

/// Peak resident memory of this process so far (`VmHWM`), in MiB, when the
/// platform reports it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time (user + system, all threads) this process has used so far, in
/// seconds, when the platform reports it (`/proc/self/stat`).
pub fn cpu_seconds() -> Option<f64> {
    process_cpu_seconds("self")
}

/// CPU time (user + system, all threads) of process `pid` (`"self"` for this
/// one) so far, in seconds. Resolution: one clock tick (10 ms).
pub fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its
    // closing parenthesis start at field 3, so utime (14) and stime (15) are
    // the 12th and 13th of them.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ, which /proc reports in, is 100 on every Linux architecture
    // Rust supports.
    Some(ticks as f64 / 100.0)
}

/// Resident memory of process `pid` now (`VmRSS`), in MiB.
pub fn process_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Events per second.
pub fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
}

/// Prints a Markdown table.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", headers.join(" | "));
    println!("|{}", "---|".repeat(headers.len()));
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
}

/// A comma-separated list of names from the environment variable `name`,
/// or from `default` when it is unset.
pub fn env_names(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_events_per_second() {
        assert_eq!(rate(500, Duration::from_millis(250)), 2000.0);
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let before = cpu_seconds().expect("/proc/self/stat");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_seconds().expect("/proc/self/stat") < before + 0.05
            && started.elapsed() < Duration::from_secs(10)
        {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(
            cpu_seconds().expect("/proc/self/stat") >= before + 0.05,
            "10 s of spinning did not show as 50 ms of CPU"
        );
        assert!(process_rss_mib("self").expect("/proc/self/status") > 0.0);
    }
}
