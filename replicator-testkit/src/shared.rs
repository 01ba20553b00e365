//! What the services, the listener and the fault handle share: the server's
//! options and its state (the store, the wake-up of subscriptions, the fault
//! state). A module of its own so that the server and the services both
//! depend on it, and not on each other.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::faults::FaultState;
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
