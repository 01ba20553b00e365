//! [`EsdbServer`]: the in-process server, its lifecycle (start, stop, restart on the
//! same port with the same data) and its fault injection handle.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tonic::codegen::Service as _;
use tonic::service::Routes;
use tracing::{debug, warn};

use crate::proto::gossip::gossip_server::GossipServer;
use crate::proto::server_features::server_features_server::ServerFeaturesServer;
use crate::proto::streams::streams_server::StreamsServer;
use crate::service::{FeaturesService, GossipService, StreamsService};
use crate::store::{Expected, Proposed, Store, WriteOutcome, BINARY, JSON};

/// Largest gRPC message the server accepts or sends: events over 1 MiB must pass, and
/// a batch of them too.
const DEFAULT_MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;
/// How long a closing connection may take to flush its last replies (the
/// `Unavailable` that ends each subscription) before it is cut.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// How an [`EsdbServer`] listens and behaves.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Port to listen on; `None` picks a free one.
    pub port: Option<u16>,
    /// Address to listen on and to advertise through gossip; default `127.0.0.1`.
    pub host: Option<String>,
    /// Delay added before every write (append, batch append, delete, tombstone) is
    /// answered, to simulate a remote cluster.
    pub append_latency: Duration,
    /// Delay added before every read or subscription starts answering.
    pub read_latency: Duration,
    /// Largest gRPC message accepted or sent; default 256 MiB.
    pub max_message_size: Option<usize>,
    /// Version reported by `ServerFeatures`; default `24.10.0`. Must be semver.
    pub server_version: Option<String>,
    /// Largest append accepted, in the real server's measure (data + custom
    /// metadata + 2 × event type length per event, summed over the append);
    /// default 1 MiB, the real server's `MaxAppendSize` default. Larger appends
    /// fail with `MaximumAppendSizeExceeded`.
    pub max_append_size: Option<usize>,
    /// Serve TLS with this certificate (see [`crate::security`]); `None`: plain
    /// HTTP/2, as an insecure node.
    pub tls: Option<crate::security::TestCertificates>,
    /// Require basic authentication with these users and apply the default access
    /// rules (see [`crate::security`]); `None`: every call is allowed.
    pub users: Option<Vec<crate::security::User>>,
}

/// State shared by the services, the listener and the fault handle.
pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    /// Length of the log, bumped after every write so subscriptions wake up.
    pub(crate) appended: watch::Sender<usize>,
    pub(crate) faults: Arc<FaultState>,
    pub(crate) options: ServerOptions,
    pub(crate) host: String,
    pub(crate) port: std::sync::atomic::AtomicU16,
    pub(crate) instance_id: uuid::Uuid,
    /// Append calls and batch-append requests answered so far.
    pub(crate) plain_appends: std::sync::atomic::AtomicU64,
    pub(crate) batch_requests: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Runs `f` on the store and wakes subscriptions if the log grew.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let (result, len) = {
            let mut store = self
                .store
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let result = f(&mut store);
            (result, store.len())
        };
        self.appended.send_if_modified(|current| {
            let grew = *current != len;
            *current = len;
            grew
        });
        result
    }

    /// Runs `f` on the store without writing.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        let store = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&store)
    }
}

/// Fault state: which connections are alive, pending injected failures, pause,
/// the write gate.
pub(crate) struct FaultState {
    generation: Mutex<CancellationToken>,
    fail_appends: AtomicUsize,
    paused: watch::Sender<bool>,
    /// Calls waiting for [`FaultHandle::resume`] now.
    held_by_pause: watch::Sender<usize>,
    gate: watch::Sender<WriteGate>,
    /// Batch-append calls the server is serving now.
    pub(crate) batch_calls: watch::Sender<usize>,
}

/// A write waiting at the gate, counted in [`WriteGate::held`] until it
/// leaves, whichever way.
struct Waiting<'g> {
    gate: &'g watch::Sender<WriteGate>,
    held: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.held {
            self.gate.send_modify(|gate| {
                gate.held -= 1;
                gate.dropped += 1;
            });
        }
    }
}

/// [`FaultHandle::hold_writes_after`]'s state.
#[derive(Clone, Copy, Debug, Default)]
struct WriteGate {
    /// Writes that may still pass; `None`: the gate is open.
    budget: Option<usize>,
    /// Writes waiting at the gate now.
    held: usize,
    /// Held writes that left the gate because the server dropped their
    /// connection, writing nothing: since the server started.
    dropped: usize,
}

impl FaultState {
    fn new() -> Self {
        FaultState {
            generation: Mutex::new(CancellationToken::new()),
            fail_appends: AtomicUsize::new(0),
            paused: watch::Sender::new(false),
            held_by_pause: watch::Sender::new(0),
            gate: watch::Sender::new(WriteGate::default()),
            batch_calls: watch::Sender::new(0),
        }
    }

    /// Lets a write of `events` events (a deletion counts as one) through the
    /// gate, waiting while the gate holds writes. False when the connection is
    /// dropped meanwhile (nothing may then be written). A write of no events
    /// (a permission check) always passes and is not counted.
    pub(crate) async fn pass_gate(&self, events: usize, token: &CancellationToken) -> bool {
        if events == 0 {
            return true;
        }
        let mut changes = self.gate.subscribe();
        // Counted as held while it waits; a call dropped while waiting (its
        // client went away and the HTTP/2 server dropped it) leaves the
        // count too.
        let mut waiting = Waiting {
            gate: &self.gate,
            held: false,
        };
        loop {
            let mut passed = false;
            let was_held = waiting.held;
            self.gate.send_if_modified(|gate| {
                passed = match &mut gate.budget {
                    None => true,
                    Some(0) => false,
                    Some(budget) => {
                        *budget -= 1;
                        true
                    }
                };
                let spent = passed && gate.budget.is_some();
                // Arriving at the gate, or leaving it after a wait.
                let held_changed = passed == was_held;
                if passed && was_held {
                    gate.held -= 1;
                } else if !passed && !was_held {
                    gate.held += 1;
                }
                spent || held_changed
            });
            waiting.held = !passed;
            if passed {
                return true;
            }
            tokio::select! {
                changed = changes.changed() => {
                    // The sender lives as long as `self`, so this cannot fail.
                    let _ = changed;
                }
                () = token.cancelled() => {
                    waiting.held = false;
                    self.gate.send_modify(|gate| {
                        gate.held -= 1;
                        gate.dropped += 1;
                    });
                    return false;
                }
            }
        }
    }

    /// Token cancelled when the connections open now must be dropped.
    pub(crate) fn token(&self) -> CancellationToken {
        self.generation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn drop_all(&self) {
        let old = std::mem::replace(
            &mut *self
                .generation
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            CancellationToken::new(),
        );
        old.cancel();
    }

    /// Consumes one injected append failure, if any is pending.
    pub(crate) fn take_append_failure(&self) -> bool {
        self.fail_appends
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Waits while replies are paused, counted in
    /// [`FaultHandle::paused_calls`] meanwhile.
    pub(crate) async fn wait_unpaused(&self) {
        /// Uncounts a waiter however its wait ends: resumed, or given up by a
        /// caller whose connection is dropped.
        struct Waiting<'a>(&'a watch::Sender<usize>);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.send_modify(|n| *n -= 1);
            }
        }
        let mut paused = self.paused.subscribe();
        if !*paused.borrow_and_update() {
            return;
        }
        self.held_by_pause.send_modify(|n| *n += 1);
        let _waiting = Waiting(&self.held_by_pause);
        // The sender lives as long as `self`, so this cannot fail.
        let _ = paused.wait_for(|p| !*p).await;
    }
}

/// Injects faults into a running [`EsdbServer`]. Cheap to clone; usable from any task.
#[derive(Clone)]
pub struct FaultHandle {
    state: Arc<FaultState>,
}

impl std::fmt::Debug for FaultHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultHandle")
            .field(
                "pending_append_failures",
                &self.state.fail_appends.load(Ordering::SeqCst),
            )
            .field("paused", &*self.state.paused.borrow())
            .field("paused_calls", &*self.state.held_by_pause.borrow())
            .field("write_gate", &*self.state.gate.borrow())
            .finish()
    }
}

impl FaultHandle {
    /// Closes every open connection; open subscriptions end with `Unavailable` first.
    /// The server keeps accepting new connections.
    pub fn drop_connections(&self) {
        self.state.drop_all();
    }

    /// Makes the next `n` appends (plain or batch) fail with `Unavailable` without
    /// writing anything. A batch-append request so failed ends its whole call
    /// (every request after it on the call fails unwritten too), as when a
    /// real server loses leadership or its connection.
    pub fn fail_next_appends(&self, n: usize) {
        self.state.fail_appends.store(n, Ordering::SeqCst);
    }

    /// Holds every reply (including subscription events) until [`FaultHandle::resume`].
    pub fn pause(&self) {
        self.state.paused.send_replace(true);
    }

    /// Releases replies held by [`FaultHandle::pause`].
    pub fn resume(&self) {
        self.state.paused.send_replace(false);
    }

    /// How many calls wait for [`FaultHandle::resume`] now: requests that
    /// arrived while paused (held before they do anything), and live
    /// subscriptions holding their next events.
    pub fn paused_calls(&self) -> usize {
        *self.state.held_by_pause.borrow()
    }

    /// Returns once `n` or more calls wait for [`FaultHandle::resume`] (at
    /// once if they do): how a test knows that a request reached the server
    /// and is held, without waiting a while for a reply that does not come.
    pub async fn wait_for_paused_calls(&self, n: usize) {
        let mut waiting = self.state.held_by_pause.subscribe();
        // The sender lives as long as the state, so this cannot fail.
        let _ = waiting.wait_for(|waiting| *waiting >= n).await;
    }

    /// Lets the next `writes` writes through, then holds every further write
    /// before it writes anything, until [`FaultHandle::release_writes`]. A write
    /// is one append call, one batch-append batch (when its last request
    /// arrives), one delete or one tombstone; an append of no events (a
    /// permission check) is neither counted nor held.
    ///
    /// This is how a test decides where a copy is when it acts (a kill, a
    /// freeze), whatever the machine's speed: with the gate closed after `n`
    /// writes, the copier cannot finish, and exactly `n` writes are in the
    /// store once the budget is spent ([`FaultHandle::wait_for_gate_spent`])
    /// and a write waits ([`FaultHandle::held_writes`]). A held write whose
    /// connection the server drops ([`FaultHandle::drop_connections`], a
    /// stop) writes nothing, and counts in [`FaultHandle::dropped_writes`];
    /// so does a plain append whose client went away (the HTTP/2 server
    /// drops its call). A batch-append request whose client went away is
    /// written when released, as a real server commits a request it has
    /// received.
    pub fn hold_writes_after(&self, writes: usize) {
        self.state
            .gate
            .send_modify(|gate| gate.budget = Some(writes));
    }

    /// Opens the gate closed by [`FaultHandle::hold_writes_after`]: held
    /// writes go on, in the order they arrived at the server is not promised.
    pub fn release_writes(&self) {
        self.state.gate.send_modify(|gate| gate.budget = None);
    }

    /// How many writes are waiting at the gate now.
    pub fn held_writes(&self) -> usize {
        self.state.gate.borrow().held
    }

    /// Returns once the server serves no batch-append call (at once if it
    /// serves none): a client that went away (a killed process, a dropped
    /// sink) has had its call ended, and nothing it sent can be written any
    /// more. Tests that restart a writer wait for this, as an operator's
    /// restart comes after the old process's connection is gone.
    pub async fn wait_for_no_batch_calls(&self) {
        let mut calls = self.state.batch_calls.subscribe();
        // The sender lives as long as the state, so this cannot fail.
        let _ = calls.wait_for(|n| *n == 0).await;
    }

    /// How many writes the gate still lets through: `None` when it is open.
    pub fn gate_budget(&self) -> Option<usize> {
        self.state.gate.borrow().budget
    }

    /// Returns once the gate closed by [`FaultHandle::hold_writes_after`]
    /// has let through every write it allowed (at once if it has, or if the
    /// gate is open).
    pub async fn wait_for_gate_spent(&self) {
        let mut gate = self.state.gate.subscribe();
        // The sender lives as long as the state, so this cannot fail.
        let _ = gate
            .wait_for(|gate| gate.budget.is_none_or(|b| b == 0))
            .await;
    }

    /// Returns once `n` or more writes wait at the gate (at once if they do).
    pub async fn wait_for_held_writes(&self, n: usize) {
        let mut gate = self.state.gate.subscribe();
        // The sender lives as long as the state, so this cannot fail.
        let _ = gate.wait_for(|gate| gate.held >= n).await;
    }

    /// How many held writes have left the gate writing nothing because the
    /// server dropped their connection ([`FaultHandle::drop_connections`], a
    /// stop), since the server started.
    ///
    /// With the gate still closed, a client retries on a new connection and
    /// is held again, so [`FaultHandle::held_writes`] may never be seen at 0
    /// after a drop; waiting for this count to grow by the writes held before
    /// the drop tells when they are gone, so that
    /// [`FaultHandle::release_writes`] cannot let one of them through.
    pub fn dropped_writes(&self) -> usize {
        self.state.gate.borrow().dropped
    }

    /// Returns once [`FaultHandle::dropped_writes`] is `n` or more (at once if
    /// it is).
    pub async fn wait_for_dropped_writes(&self, n: usize) {
        let mut gate = self.state.gate.subscribe();
        // The sender lives as long as the state, so this cannot fail.
        let _ = gate.wait_for(|gate| gate.dropped >= n).await;
    }
}

/// An event for [`EsdbServer::preload`].
#[derive(Clone, Debug)]
pub struct PreloadEvent {
    /// The event's id.
    pub id: uuid::Uuid,
    /// The event's type.
    pub event_type: String,
    /// Content type `application/json` when true, else `application/octet-stream`.
    pub is_json: bool,
    /// The event's data.
    pub data: bytes::Bytes,
    /// The event's custom metadata; empty for none.
    pub custom_metadata: bytes::Bytes,
}

impl PreloadEvent {
    fn proposed(self) -> Proposed {
        Proposed {
            id: self.id,
            event_type: self.event_type,
            content_type: if self.is_json { JSON } else { BINARY }.to_owned(),
            data: self.data,
            custom_metadata: self.custom_metadata,
        }
    }
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// An EventStoreDB-protocol gRPC server running inside this process.
///
/// It keeps its data in memory across [`EsdbServer::stop`] and
/// [`EsdbServer::restart`]; dropping it stops it and discards the data.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// let server = replicator_testkit::EsdbServer::start().await?;
/// let settings = server.connection_string().parse::<eventstore::ClientSettings>().unwrap();
/// let client = eventstore::Client::new(settings).unwrap();
/// # Ok(()) }
/// ```
pub struct EsdbServer {
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for EsdbServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EsdbServer")
            .field("host", &self.shared.host)
            .field("port", &self.port())
            .finish_non_exhaustive()
    }
}

impl EsdbServer {
    /// Starts a server on `127.0.0.1` and a free port.
    ///
    /// # Errors
    /// When the listening socket cannot be opened.
    pub async fn start() -> std::io::Result<EsdbServer> {
        Self::start_with(ServerOptions::default()).await
    }

    /// Starts a server with `options`.
    ///
    /// # Errors
    /// When the listening socket cannot be opened (address in use, bad host…).
    pub async fn start_with(options: ServerOptions) -> std::io::Result<EsdbServer> {
        let host = options
            .host
            .clone()
            .unwrap_or_else(|| "127.0.0.1".to_owned());
        let listener = bind(&host, options.port.unwrap_or(0)).await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            appended: watch::Sender::new(0),
            faults: Arc::new(FaultState::new()),
            options,
            host,
            port: port.into(),
            instance_id: uuid::Uuid::new_v4(),
            plain_appends: Default::default(),
            batch_requests: Default::default(),
        });
        let server = EsdbServer {
            shared,
            running: Mutex::new(None),
        };
        server.spawn(listener);
        Ok(server)
    }

    /// `esdb://HOST:PORT?tls=false&discoveryInterval=0`, for `ClientSettings`
    /// (`tls=true` when the server serves TLS: add `tlsCaFile=` or credentials
    /// with [`EsdbServer::connection_string_with`]).
    pub fn connection_string(&self) -> String {
        format!(
            "esdb://{}:{}?tls={}&discoveryInterval=0",
            self.shared.host,
            self.port(),
            self.shared.options.tls.is_some()
        )
    }

    /// The connection string with `user:password@` and, for a TLS server,
    /// `tlsCaFile=ca_file`.
    pub fn connection_string_with(
        &self,
        credentials: Option<(&str, &str)>,
        ca_file: Option<&std::path::Path>,
    ) -> String {
        let user = credentials.map_or_else(String::new, |(u, p)| format!("{u}:{p}@"));
        let ca = ca_file.map_or_else(String::new, |f| format!("&tlsCaFile={}", f.display()));
        format!(
            "esdb://{user}{}:{}?tls={}&discoveryInterval=0{ca}",
            self.shared.host,
            self.port(),
            self.shared.options.tls.is_some()
        )
    }

    /// The port the server listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.shared.port.load(Ordering::SeqCst)
    }

    /// Appends `events` to `stream` straight into the store, without a client or
    /// gRPC: for benchmarks that need a server holding millions of events before
    /// they start. The rules are those of an append with expected revision "any"
    /// (revisions, `$all` positions, idempotency by event id, `$$stream` metadata,
    /// tombstones), and readers and subscriptions see the events as if a client had
    /// appended them. Works while the server is stopped too.
    ///
    /// Returns the revision of the stream's last event afterwards; `None` when the
    /// stream is tombstoned (then nothing is written) or still has no events.
    pub fn preload(
        &self,
        stream: &str,
        events: impl IntoIterator<Item = PreloadEvent>,
    ) -> Option<u64> {
        let events = events.into_iter().map(PreloadEvent::proposed).collect();
        match self
            .shared
            .write(|store| store.append(stream, Expected::Any, events))
        {
            WriteOutcome::Success { current, .. } => current,
            WriteOutcome::WrongExpected { .. } | WriteOutcome::StreamDeleted => None,
        }
    }

    /// How many plain append calls and how many batch-append requests the
    /// server has taken, successful or not: what a test checks to know which
    /// path a client's appends took.
    pub fn append_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.shared.plain_appends.load(Relaxed),
            self.shared.batch_requests.load(Relaxed),
        )
    }

    /// A handle to inject faults.
    pub fn faults(&self) -> FaultHandle {
        FaultHandle {
            state: Arc::clone(&self.shared.faults),
        }
    }

    /// Stops serving: open subscriptions end with `Unavailable`, connections close and
    /// the port is released. The data is kept for [`EsdbServer::restart`]. Does nothing
    /// if already stopped.
    pub async fn stop(&self) {
        let running = self.lock_running().take();
        if let Some(running) = running {
            self.shared.faults.drop_all();
            running.stop.cancel();
            if let Err(error) = running.task.await {
                warn!(%error, "Listener task failed");
            }
        }
    }

    /// Stops (if running) and serves again on the same port with the same data.
    ///
    /// # Errors
    /// When the port cannot be bound again (for example, another process took it).
    pub async fn restart(&self) -> std::io::Result<()> {
        self.stop().await;
        let mut attempts = 0;
        let listener = loop {
            match bind(&self.shared.host, self.port()).await {
                Ok(listener) => break listener,
                // The old socket can linger for a moment after close.
                Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => return Err(error),
            }
        };
        self.spawn(listener);
        Ok(())
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn spawn(&self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&self.shared),
            stop.clone(),
        ));
        *self.lock_running() = Some(Running { stop, task });
    }
}

impl Drop for EsdbServer {
    fn drop(&mut self) {
        if let Some(running) = self.lock_running().take() {
            self.shared.faults.drop_all();
            running.stop.cancel();
        }
    }
}

async fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = match tokio::net::lookup_host((host, port)).await?.next() {
        Some(addr) => addr,
        None => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("host {host:?} resolves to no address"),
            ))
        }
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Restarting on the same port must not wait for TIME_WAIT sockets to expire.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn routes(shared: &Arc<Shared>) -> Routes {
    let max = shared
        .options
        .max_message_size
        .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE);
    let streams = StreamsServer::new(StreamsService::new(Arc::clone(shared)))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    Routes::new(streams)
        .add_service(ServerFeaturesServer::new(FeaturesService::new(Arc::clone(
            shared,
        ))))
        .add_service(GossipServer::new(GossipService::new(Arc::clone(shared))))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let routes = routes(&shared);
    let tls = match shared.options.tls.as_ref().map(|c| c.server_config()) {
        Some(Ok(config)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        Some(Err(error)) => {
            warn!(%error, "Unusable TLS certificate; not serving");
            return;
        }
        None => None,
    };
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    debug!(%peer, "Connection accepted");
                    // Latency of small replies matters more than packet count here.
                    let _ = tcp.set_nodelay(true);
                    let (routes, token) = (routes.clone(), shared.faults.token());
                    match tls.clone() {
                        None => {
                            connections.spawn(serve_connection(tcp, routes, token));
                        }
                        Some(acceptor) => {
                            connections.spawn(async move {
                                match acceptor.accept(tcp).await {
                                    Ok(stream) => serve_connection(stream, routes, token).await,
                                    Err(error) => debug!(%peer, %error, "TLS handshake failed"),
                                }
                            });
                        }
                    }
                }
                Err(error) => {
                    warn!(%error, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(CLOSE_GRACE * 4, drain).await.is_err() {
        connections.abort_all();
    }
}

async fn serve_connection<S>(io: S, routes: Routes, token: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .max_frame_size(Some(1024 * 1024))
        .max_send_buf_size(4 * 1024 * 1024);
    // tonic's router takes tonic bodies; hyper hands over its own.
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let mut routes = routes.clone();
            routes.call(request.map(tonic::body::boxed))
        });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(%error, "Connection ended with an error");
            }
        }
        () = token.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection.as_mut()).await;
        }
    }
}
