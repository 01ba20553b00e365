//! What the services, the listener and the fault handle share: the server's
//! options and its state (the store, the wake-up of subscriptions, the fault
//! state). A module of its own so that the server and the services both
//! depend on it, and not on each other.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::faults::FaultState;
use crate::gossip::{ClusterView, GossipMember, NodeState};
use crate::store::Store;

/// How an [`EsdbServer`](crate::EsdbServer) listens and behaves.
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
    /// rules (see [`crate::security`]); `None`: every call is allowed. The TCP
    /// service applies the same users and rules.
    pub users: Option<Vec<crate::security::User>>,
    /// Also accept `authorization: Bearer <token>` with these tokens (see
    /// [`crate::security::BearerTokens`]: a test keeps a clone to revoke one
    /// mid-run); `None`: a Bearer header is refused when authentication is on.
    /// gRPC only (the v5 TCP protocol has no tokens).
    pub bearer_tokens: Option<crate::security::BearerTokens>,
    /// Also serve the legacy TCP protocol of EventStoreDB v5 (the .NET
    /// `EventStore.ClientAPI`, `node-eventstore-client`) on this port, over the
    /// same store: `Some(0)` picks a free port, `None` (the default) serves gRPC
    /// only. TLS when [`ServerOptions::tls`] is set. The address is
    /// [`EsdbServer::tcp_address`](crate::EsdbServer::tcp_address); what the
    /// service answers is in `docs/tcp-protocol.md` and the README.
    pub tcp_port: Option<u16>,
    /// How long a TCP connection may be silent before the server sends its own
    /// HeartbeatRequest; default 2 s (v5's external TCP default).
    pub tcp_heartbeat_interval: Option<Duration>,
    /// How long the server then waits for any frame before it closes the
    /// connection; default 1 s (v5's).
    pub tcp_heartbeat_timeout: Option<Duration>,
    /// Also serve v5's HTTP gossip (`GET /gossip?format=json`) on this port
    /// (`Some(0)`: a free one), plain HTTP/1.1 whatever [`ServerOptions::tls`]
    /// says, as a v5 node's external HTTP port. It lists this node alone as
    /// Master until [`EsdbServer::set_gossip`](crate::EsdbServer::set_gossip)
    /// says otherwise. The address is
    /// [`EsdbServer::gossip_address`](crate::EsdbServer::gossip_address).
    pub gossip_port: Option<u16>,
    /// Serve no Projections service, as a node whose projection subsystem
    /// is off (`--run-projections=None`): its gRPC calls are `Unimplemented`,
    /// its HTTP routes 404, and `ServerFeatures` lists none of them.
    pub no_projections: bool,
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
    /// Where the TCP service and the gossip listen, when they do.
    pub(crate) tcp_address: Option<std::net::SocketAddr>,
    pub(crate) gossip_address: Option<std::net::SocketAddr>,
    /// The gossip's members and the node's role, as the test set them.
    pub(crate) view: Mutex<ClusterView>,
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

    pub(crate) fn view(&self) -> std::sync::MutexGuard<'_, ClusterView> {
        self.view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This node as a gossip member, Master: its TCP endpoint (also the
    /// secure one when it serves TLS, as its TCP port then does) and its
    /// gossip endpoint (the gRPC one when it serves no gossip).
    pub(crate) fn own_member(&self) -> GossipMember {
        let port = self.port.load(std::sync::atomic::Ordering::SeqCst);
        let grpc = self
            .host
            .parse()
            .map(|ip| std::net::SocketAddr::new(ip, port))
            .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        let tcp = self.tcp_address.unwrap_or(grpc);
        GossipMember {
            instance_id: self.instance_id,
            state: NodeState::Master,
            is_alive: true,
            tcp,
            secure_tcp: self.options.tls.as_ref().map(|_| tcp),
            http: self.gossip_address.unwrap_or(grpc),
        }
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
