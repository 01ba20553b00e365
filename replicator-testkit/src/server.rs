//! [`EsdbServer`]: the in-process server, its lifecycle (start, stop, restart on the
//! same port with the same data), the listener and the connections. Its options
//! and state are in `shared`, its fault injection in `faults`, the gRPC services
//! in `service`, the legacy TCP protocol in `tcp`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::codegen::Service as _;
use tonic::service::Routes;
use tracing::{debug, warn};

use crate::faults::{FaultHandle, FaultState};
use crate::gossip::{ClusterView, GossipMember, NodeState, Role};
use crate::listen::{self, Io};
use crate::proto::gossip::gossip_server::GossipServer;
use crate::proto::persistent_subscriptions::persistent_subscriptions_server::PersistentSubscriptionsServer;
use crate::proto::projections::projections_server::ProjectionsServer;
use crate::proto::server_features::server_features_server::ServerFeaturesServer;
use crate::proto::streams::streams_server::StreamsServer;
use crate::service::{
    FeaturesService, GossipService, PersistentService, ProjectionsService, StreamsService,
};
use crate::shared::{ServerOptions, Shared};
use crate::store::{Expected, Proposed, Store, WriteOutcome, BINARY, JSON};

/// Largest gRPC message the server accepts or sends: events over 1 MiB must pass, and
/// a batch of them too.
const DEFAULT_MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;
/// How long a closing connection may take to flush its last replies (the
/// `Unavailable` that ends each subscription) before it is cut.
const CLOSE_GRACE: Duration = Duration::from_millis(500);
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
    /// The TCP-protocol listener, when the server has one.
    tcp_task: Option<JoinHandle<()>>,
    /// The HTTP gossip listener, when the server has one.
    gossip_task: Option<JoinHandle<()>>,
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
    /// Where the TCP-protocol service listens (kept across restarts).
    tcp_address: Option<SocketAddr>,
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
        let tcp_listener = match options.tcp_port {
            Some(tcp_port) => Some(bind(&host, tcp_port).await?),
            None => None,
        };
        let tcp_address = match &tcp_listener {
            Some(listener) => Some(listener.local_addr()?),
            None => None,
        };
        let gossip_listener = match options.gossip_port {
            Some(gossip_port) => Some(bind(&host, gossip_port).await?),
            None => None,
        };
        let gossip_address = match &gossip_listener {
            Some(listener) => Some(listener.local_addr()?),
            None => None,
        };
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
            tcp_address,
            gossip_address,
            view: Mutex::new(ClusterView::default()),
        });
        let server = EsdbServer {
            shared,
            running: Mutex::new(None),
            tcp_address,
        };
        server.spawn(listener, tcp_listener, gossip_listener);
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

    /// Where the legacy TCP-protocol service listens (kept across restarts);
    /// `None` unless [`ServerOptions::tcp_port`] was set.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use replicator_testkit::{EsdbServer, ServerOptions};
    ///
    /// let options = ServerOptions { tcp_port: Some(0), ..ServerOptions::default() };
    /// let server = EsdbServer::start_with(options).await?;
    /// let address = server.tcp_address().expect("asked for a TCP port");
    /// // node-eventstore-client: createConnection({}, `tcp://${address}`)
    /// println!("tcp://{address}");
    /// # Ok(()) }
    /// ```
    pub fn tcp_address(&self) -> Option<SocketAddr> {
        self.tcp_address
    }

    /// Where the HTTP gossip is served (kept across restarts); `None` unless
    /// [`ServerOptions::gossip_port`] was set. A .NET ClientAPI connection
    /// string reaches it as `GossipSeeds=ADDRESS`.
    pub fn gossip_address(&self) -> Option<SocketAddr> {
        self.shared.gossip_address
    }

    /// This server as a member of a v5 cluster's gossip, in `state`: its TCP
    /// endpoint (also as the secure one when it serves TLS), its gossip
    /// endpoint, alive. What [`EsdbServer::set_gossip`] and
    /// [`Role::Follower`] take.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use replicator_testkit::{EsdbServer, NodeState, Role, ServerOptions};
    ///
    /// let options = || ServerOptions { tcp_port: Some(0), gossip_port: Some(0), ..ServerOptions::default() };
    /// let (a, b) = (EsdbServer::start_with(options()).await?, EsdbServer::start_with(options()).await?);
    /// let members = vec![a.member(NodeState::Master), b.member(NodeState::Slave)];
    /// a.set_gossip(members.clone());
    /// b.set_gossip(members);
    /// b.set_role(Role::Follower { leader: Some(a.member(NodeState::Master)) });
    /// // GossipSeeds=<b.gossip_address()> leads a v5 client to a.
    /// # Ok(()) }
    /// ```
    pub fn member(&self, state: NodeState) -> GossipMember {
        self.shared.own_member().with_state(state)
    }

    /// The members `GET /gossip` lists from now on (until this is called, this
    /// server alone, as Master). Each server of a test "cluster" answers its
    /// own list: set the same on all of them, as gossip converges.
    pub fn set_gossip(&self, members: Vec<GossipMember>) {
        self.shared.view().members = Some(members);
    }

    /// Makes this server a leader (the default) or a follower for TCP
    /// requests that need the leader (see [`Role`]).
    pub fn set_role(&self, role: Role) {
        self.shared.view().role = role;
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

    /// How many records each write to `stream` carried, in the order written
    /// (an append, or a committed v5 transaction, is one write: the real log
    /// marks its first and last records). What a test checks to know whether
    /// a client kept records together in one append.
    pub fn writes_to(&self, stream: &str) -> Vec<usize> {
        self.shared.read(|store| store.write_sizes(stream))
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
            if let Some(task) = running.tcp_task {
                if let Err(error) = task.await {
                    warn!(%error, "TCP listener task failed");
                }
            }
            if let Some(task) = running.gossip_task {
                if let Err(error) = task.await {
                    warn!(%error, "Gossip listener task failed");
                }
            }
        }
    }

    /// Stops (if running) and serves again on the same port with the same data.
    ///
    /// # Errors
    /// When the port cannot be bound again (for example, another process took it).
    pub async fn restart(&self) -> std::io::Result<()> {
        self.stop().await;
        let listener = rebind(&self.shared.host, self.port()).await?;
        let tcp_listener = match self.tcp_address {
            Some(address) => Some(rebind(&self.shared.host, address.port()).await?),
            None => None,
        };
        let gossip_listener = match self.shared.gossip_address {
            Some(address) => Some(rebind(&self.shared.host, address.port()).await?),
            None => None,
        };
        self.spawn(listener, tcp_listener, gossip_listener);
        Ok(())
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn spawn(
        &self,
        listener: TcpListener,
        tcp_listener: Option<TcpListener>,
        gossip_listener: Option<TcpListener>,
    ) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&self.shared),
            stop.clone(),
        ));
        let tcp_task = tcp_listener.map(|listener| {
            tokio::spawn(crate::tcp::accept_loop(
                listener,
                Arc::clone(&self.shared),
                stop.clone(),
            ))
        });
        let gossip_task = gossip_listener.map(|listener| {
            tokio::spawn(crate::gossip::accept_loop(
                listener,
                Arc::clone(&self.shared),
                stop.clone(),
            ))
        });
        *self.lock_running() = Some(Running {
            stop,
            task,
            tcp_task,
            gossip_task,
        });
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

/// Binds `port` again after a stop, waiting out a socket that lingers.
async fn rebind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let mut attempts = 0;
    loop {
        match bind(host, port).await {
            Ok(listener) => return Ok(listener),
            // The old socket can linger for a moment after close.
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => return Err(error),
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
    let routes = Routes::new(streams)
        .add_service(ServerFeaturesServer::new(FeaturesService::new(Arc::clone(
            shared,
        ))))
        .add_service(GossipServer::new(GossipService::new(Arc::clone(shared))))
        .add_service(
            PersistentSubscriptionsServer::new(PersistentService::new(Arc::clone(shared)))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
    if shared.options.no_projections {
        return routes;
    }
    routes.add_service(ProjectionsServer::new(ProjectionsService::new(Arc::clone(
        shared,
    ))))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let routes = routes(&shared);
    let shared_http = Arc::clone(&shared);
    let serve = move |io: Box<dyn Io>, token| {
        serve_connection(io, routes.clone(), Arc::clone(&shared_http), token)
    };
    listen::accept_loop(listener, shared, stop, "gRPC", true, CLOSE_GRACE * 4, serve).await;
}

/// An HTTP API answer as the router's (a named function: a closure's error
/// type would be inferred with a lifetime of its own).
fn http_reply(
    response: hyper::Response<String>,
) -> Result<hyper::Response<tonic::body::BoxBody>, Box<dyn std::error::Error + Send + Sync>> {
    Ok(response.map(tonic::body::boxed))
}

/// Serves one connection: gRPC over HTTP/2, and the HTTP API's projection
/// routes over HTTP/1.1, on the same port as a real node serves both.
async fn serve_connection<S>(io: S, routes: Routes, shared: Arc<Shared>, token: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let sniffed = tokio::select! {
        sniffed = crate::sniff::sniff(io) => sniffed,
        // Stopped, or dropped by a fault, before the client said anything.
        () = token.cancelled() => return,
    };
    let (http2, io) = match sniffed {
        Ok(sniffed) => sniffed,
        Err(error) => {
            debug!(%error, "Connection ended before its first request");
            return;
        }
    };
    if !http2 {
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let shared = Arc::clone(&shared);
                async move {
                    let response = if crate::service::is_projection_path(request.uri().path()) {
                        crate::service::http_answer(shared, request).await
                    } else {
                        hyper::Response::builder()
                            .status(hyper::StatusCode::NOT_FOUND)
                            .body(String::new())
                            .expect("a valid response")
                    };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
        let connection =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    debug!(%error, "HTTP/1.1 connection ended with an error");
                }
            }
            () = token.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_GRACE, connection.as_mut()).await;
            }
        }
        return;
    }
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .max_frame_size(Some(1024 * 1024))
        .max_send_buf_size(4 * 1024 * 1024);
    // tonic's router takes tonic bodies; hyper hands over its own.
    // The HTTP API's routes answer over HTTP/2 too (a client that chose `h2`
    // by ALPN); everything else is gRPC.
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            use futures::future::{Either, FutureExt as _};
            // Either, not an async block awaiting the router: the router's
            // future inside another defeats the compiler's Send proof.
            if crate::service::is_projection_path(request.uri().path()) {
                let answer = crate::service::http_answer(Arc::clone(&shared), request);
                Either::Left(answer.map(http_reply))
            } else {
                let mut routes = routes.clone();
                Either::Right(routes.call(request.map(tonic::body::boxed)))
            }
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
