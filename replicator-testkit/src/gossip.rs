//! What a v5 cluster shows its clients, for the discovery of the legacy TCP
//! reader: the HTTP gossip endpoint (`GET /gossip?format=json`, HTTP/1.1,
//! the v5 JSON field names) on a port of its own
//! ([`crate::ServerOptions::gossip_port`]), answering a member list the
//! test sets ([`crate::EsdbServer::set_gossip`]), and the node's role
//! ([`crate::EsdbServer::set_role`]): a follower answers TCP requests with
//! `require_master` as v5 does (NotHandled NotMaster naming the leader).
//!
//! A port of its own, not the gRPC one: a v5 node serves gossip on its
//! external HTTP port, apart from its TCP port, so a member's
//! `externalHttpPort` and `externalTcpPort` differ here too, and the gRPC
//! listener stays HTTP/2 only. Always plain HTTP, as v5's external HTTP,
//! whether or not the server serves TLS.
//!
//! Facts and sources: docs/tcp-protocol.md §6.4 and §8.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::listen::{self, Io};
use crate::shared::Shared;

/// A node state as v5 gossip names it (ES5 `src/EventStore.Core/Data/VNodeState.cs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Starting.
    Initializing,
    /// Not yet part of the cluster.
    Unknown,
    /// About to become a replica.
    PreReplica,
    /// Catching up with the master.
    CatchingUp,
    /// A clone (a replica beyond the cluster size).
    Clone,
    /// A follower.
    Slave,
    /// About to become the master.
    PreMaster,
    /// The leader.
    Master,
    /// A commercial manager node.
    Manager,
    /// Stopping.
    ShuttingDown,
    /// Stopped.
    Shutdown,
}

impl NodeState {
    /// The name the gossip JSON carries (a string, v5's `StringEnumConverter`).
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Initializing => "Initializing",
            NodeState::Unknown => "Unknown",
            NodeState::PreReplica => "PreReplica",
            NodeState::CatchingUp => "CatchingUp",
            NodeState::Clone => "Clone",
            NodeState::Slave => "Slave",
            NodeState::PreMaster => "PreMaster",
            NodeState::Master => "Master",
            NodeState::Manager => "Manager",
            NodeState::ShuttingDown => "ShuttingDown",
            NodeState::Shutdown => "Shutdown",
        }
    }
}

/// A member of the cluster as the gossip describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GossipMember {
    /// `instanceId`.
    pub instance_id: uuid::Uuid,
    /// `state`.
    pub state: NodeState,
    /// `isAlive`.
    pub is_alive: bool,
    /// `externalTcpIp`/`externalTcpPort`.
    pub tcp: SocketAddr,
    /// `externalSecureTcpPort` (same IP); `None`: 0, no secure port.
    pub secure_tcp: Option<SocketAddr>,
    /// `externalHttpIp`/`externalHttpPort`: where its gossip is served.
    pub http: SocketAddr,
}

impl GossipMember {
    /// The same member in another state.
    pub fn with_state(mut self, state: NodeState) -> GossipMember {
        self.state = state;
        self
    }

    /// The same member, dead (`isAlive: false`).
    pub fn dead(mut self) -> GossipMember {
        self.is_alive = false;
        self
    }
}

/// What a node is for requests that need the leader.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Serves everything (the default).
    #[default]
    Leader,
    /// A follower: TCP requests with `require_master = true` get NotHandled
    /// NotMaster naming `leader`'s endpoints; with no leader known, reads get
    /// NotReady and writes NotMaster naming this node, as v5's
    /// `ClusterVNodeController` answers. Requests without `require_master`
    /// are served from this node's own store (v5 forwards writes to the
    /// leader; the testkit does not). Subscriptions are served, as v5's
    /// followers serve them.
    Follower {
        /// The leader it names.
        leader: Option<GossipMember>,
    },
}

/// What the test set: the members the gossip lists (`None`: this node alone,
/// as Master) and the role.
#[derive(Debug, Default)]
pub(crate) struct ClusterView {
    pub(crate) members: Option<Vec<GossipMember>>,
    pub(crate) role: Role,
}

/// Accepts gossip connections until `stop` is cancelled.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let serving = Arc::clone(&shared);
    let serve = move |io: Box<dyn Io>, token| serve(io, Arc::clone(&serving), token);
    listen::accept_loop(
        listener,
        shared,
        stop,
        "HTTP gossip",
        false,
        Duration::from_millis(500),
        serve,
    )
    .await;
}

async fn serve(io: Box<dyn Io>, shared: Arc<Shared>, token: CancellationToken) {
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let answer = answer(&shared, &request);
            async move { Ok::<_, std::convert::Infallible>(answer) }
        });
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(%error, "Gossip connection ended with an error");
            }
        }
        () = token.cancelled() => connection.as_mut().graceful_shutdown(),
    }
}

/// `GET /gossip` (any query: v5 picks the codec from `format=json` or the
/// Accept header, and JSON is the only one served here); anything else 404.
fn answer<B>(shared: &Shared, request: &hyper::Request<B>) -> hyper::Response<String> {
    let response = hyper::Response::builder();
    if request.uri().path() != "/gossip" {
        return response
            .status(hyper::StatusCode::NOT_FOUND)
            .body(String::new())
            .expect("a valid response");
    }
    if request.method() != hyper::Method::GET {
        return response
            .status(hyper::StatusCode::METHOD_NOT_ALLOWED)
            .body(String::new())
            .expect("a valid response");
    }
    response
        .header(
            hyper::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )
        .body(cluster_info(shared).to_string())
        .expect("a valid response")
}

/// The v5 `ClusterInfoDto` (ES5 `src/EventStore.Core/Messages/ClusterInfoDto.cs`,
/// `MemberInfoDto.cs`; camelCase, states as names). The testkit has no
/// internal interface: the internal endpoints repeat the external ones.
fn cluster_info(shared: &Shared) -> Value {
    let own = shared.own_member();
    let members = shared
        .view()
        .members
        .clone()
        .unwrap_or_else(|| vec![own.clone()]);
    let (last_commit, writer) = shared.read(|store| {
        let last = store
            .len()
            .checked_sub(1)
            .and_then(|i| store.log_slice(i, 1).pop())
            .map_or(-1, |r| i64::try_from(r.commit_position).unwrap_or(i64::MAX));
        (
            last,
            i64::try_from(store.end_position()).unwrap_or(i64::MAX),
        )
    });
    let now = timestamp(SystemTime::now());
    let members: Vec<Value> = members
        .iter()
        .map(|m| {
            let (commit, checkpoint) = if m.instance_id == own.instance_id {
                (last_commit, writer)
            } else {
                (0, 0)
            };
            json!({
                "instanceId": m.instance_id,
                "timeStamp": now,
                "state": m.state.name(),
                "isAlive": m.is_alive,
                "internalTcpIp": m.tcp.ip().to_string(),
                "internalTcpPort": m.tcp.port(),
                "internalSecureTcpPort": m.secure_tcp.map_or(0, |s| s.port()),
                "externalTcpIp": m.tcp.ip().to_string(),
                "externalTcpPort": m.tcp.port(),
                "externalSecureTcpPort": m.secure_tcp.map_or(0, |s| s.port()),
                "internalHttpIp": m.http.ip().to_string(),
                "internalHttpPort": m.http.port(),
                "externalHttpIp": m.http.ip().to_string(),
                "externalHttpPort": m.http.port(),
                "lastCommitPosition": commit,
                "writerCheckpoint": checkpoint,
                "chaserCheckpoint": checkpoint,
                "epochPosition": 0,
                "epochNumber": 0,
                "epochId": uuid::Uuid::nil(),
                "nodePriority": 0,
            })
        })
        .collect();
    json!({
        "members": members,
        "serverIp": own.http.ip().to_string(),
        "serverPort": own.http.port(),
    })
}

/// `2026-12-07T21:40:19.1234567Z`, as Newtonsoft writes a UTC `DateTime`.
fn timestamp(at: SystemTime) -> String {
    crate::clock::utc(at, 7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_dotnet_round_trip_utc() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_796_679_619_123_456_700);
        assert_eq!(timestamp(at), "2026-12-07T21:40:19.1234567Z");
        assert_eq!(
            timestamp(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.0000000Z"
        );
    }
}
