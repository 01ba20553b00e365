//! What the workspace's tests share beyond the server: waiting for a
//! condition, a client from a connection string, the end of `$all`, a v5
//! transaction over the TCP service ([`TcpTransaction`]), the independent
//! TCP client ([`node`]), the official Python client and its persistent
//! subscription tool ([`python`]), (with the `mongo` feature) a MongoDB-protocol
//! server of a test's own, and a Kafka-protocol broker and an independent
//! consumer ([`kafka`]).
//!
//! Every wait here is bounded: a condition not met by its deadline fails the
//! test naming what it waited for, so a stall fails instead of hanging, and
//! the deadlines are generous so that only a stall misses them.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use replicator_testkit::{support, EsdbServer};
//!
//! let server = EsdbServer::start().await.unwrap();
//! let client = support::client(&server.connection_string());
//! support::eventually("an empty $all", Duration::from_secs(10), || async {
//!     support::last_position(&client).await.is_none()
//! })
//! .await;
//! # }
//! ```

pub mod kafka;
#[cfg(feature = "mongo")]
pub mod mongo;
pub mod node;
pub mod python;
mod tcp;

pub use tcp::TcpTransaction;

use std::future::Future;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::Duration;

use eventstore::{Client, ClientSettings, ReadAllOptions, StreamPosition};
use replicator_core::Position;

/// How long the waits sleep between two polls.
const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it holds; returns how long that took.
///
/// # Panics
/// When `check` does not hold within `within`, naming `what`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = tokio::time::Instant::now();
    wait_for(what, within, || {
        let done = check();
        async move { done.await.then_some(()) }
    })
    .await;
    started.elapsed()
}

/// Polls `probe` until it returns something, and returns that.
///
/// # Panics
/// When `probe` returns nothing within `within`, naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A new client of the server or cluster at `connection_string`.
///
/// # Panics
/// When the connection string does not parse, naming it.
pub fn client(connection_string: &str) -> Client {
    let settings: ClientSettings = connection_string
        .parse()
        .unwrap_or_else(|e| panic!("bad connection string {connection_string}: {e}"));
    Client::new(settings).expect("client")
}

/// The position of the last record of `$all`, `None` while it is empty.
///
/// # Panics
/// When the read fails.
pub async fn last_position(client: &Client) -> Option<Position> {
    let options = ReadAllOptions::default()
        .position(StreamPosition::End)
        .backwards()
        .max_count(1);
    let mut reader = client
        .read_all(&options)
        .await
        .expect("read $all backwards");
    let last = reader.next().await.expect("read $all backwards")?;
    let p = last.get_original_event().position;
    Some(Position {
        commit: p.commit,
        prepare: p.prepare,
    })
}

/// A local port no other caller in this process was given.
///
/// The kernel hands out a port again once it is free, and a stopped server's
/// port is free until its restart: without the record, a test starting a
/// server meanwhile could be given that port, and the restart would find it
/// taken. So every server a test restarts on its port takes its port here.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind a local port")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Whether process `pid` itself holds the socket listening on `port` (Linux
/// `/proc`): a connection succeeding proves only that *someone* listens
/// there, perhaps a process the port was free for a moment before.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let local = format!(":{port:04X}");
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    // local_address, state 0A (LISTEN), inode
                    (fields.len() > 9 && fields[1].ends_with(&local) && fields[3] == "0A")
                        .then(|| format!("socket:[{}]", fields[9]))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| {
            inodes
                .iter()
                .any(|inode| target.as_os_str() == inode.as_str())
        })
}
