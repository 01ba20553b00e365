//! Cluster discovery as the v5 .NET ClientAPI does it (ES5
//! `src/EventStore.ClientAPI/Internal/ClusterDnsEndPointDiscoverer.cs`, its
//! "v5 compatibility" path; docs/tcp-protocol.md §6.4): ask the gossip
//! seeds (or every address of the cluster's DNS name) for
//! `GET /gossip?format=json`, and pick a node from the first answer that has
//! one: the leader first with the default `NodePreference` (Master), never a
//! dead, manager or shutting down node. Every connection discovers again, so
//! a leader that moved is found; the last gossip is remembered and its
//! members asked first next time, as the .NET client does.

use std::cmp::Reverse;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tracing::{debug, info};

use super::connection::TcpError;
use super::settings::Endpoint;

/// The .NET discoverer's pause between two attempts (`Thread.Sleep(500)`).
const ATTEMPT_PAUSE: Duration = Duration::from_millis(500);

/// Where the gossip is asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seeds {
    /// `GossipSeeds=host:port,…`: these HTTP endpoints.
    List(Vec<GossipSeed>),
    /// `ClusterDns=name` or `ConnectTo=discover://name:port`: every address
    /// the name resolves to, at `port` (`ExternalGossipPort`/`GossipPort`).
    Dns { name: String, port: u16 },
}

impl fmt::Display for Seeds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seeds::List(seeds) => {
                f.write_str("gossip seeds ")?;
                for (i, seed) in seeds.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{seed}")?;
                }
                Ok(())
            }
            Seeds::Dns { name, port } => write!(f, "cluster DNS {name} (gossip port {port})"),
        }
    }
}

/// One gossip endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GossipSeed {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `https://`: gossip over TLS.
    pub(crate) tls: bool,
}

impl fmt::Display for GossipSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https://" } else { "" };
        if self.host.contains(':') {
            write!(f, "{scheme}[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}{}:{}", self.host, self.port)
        }
    }
}

impl GossipSeed {
    fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}/gossip?format=json", self.port)
    }
}

/// `NodePreference` (ES5 `NodePreference.cs`; default Master).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodePreference {
    /// The leader first, then by state.
    Master,
    /// A follower, at random; else by state.
    Slave,
    /// Any node, at random.
    Random,
    /// A read-only replica, at random; else by state.
    ReadOnlyReplica,
}

impl NodePreference {
    /// The v5 names and the v20+ ones (`Leader`, `Follower`), any case.
    pub(crate) fn parse(text: &str) -> Option<NodePreference> {
        match text.trim().to_ascii_lowercase().as_str() {
            "master" | "leader" => Some(NodePreference::Master),
            "slave" | "follower" => Some(NodePreference::Slave),
            "random" => Some(NodePreference::Random),
            "readonlyreplica" => Some(NodePreference::ReadOnlyReplica),
            _ => None,
        }
    }
}

/// How to discover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClusterSettings {
    pub(crate) seeds: Seeds,
    /// `GossipTimeout`: each gossip request's deadline (1000 ms).
    pub(crate) gossip_timeout: Duration,
    /// `MaxDiscoverAttempts` (10), 500 ms apart.
    pub(crate) max_discover_attempts: u32,
    pub(crate) preference: NodePreference,
    /// `ValidateServer`, for `https://` seeds.
    pub(crate) validate_server: bool,
}

/// The TCP endpoints of the node chosen, or of a leader a NotHandled names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeEndpoints {
    pub(crate) tcp: Endpoint,
    pub(crate) secure_tcp: Option<Endpoint>,
}

impl NodeEndpoints {
    /// The secure endpoint over TLS when the node has one, else the plain
    /// one (`SecureTcpEndPoint ?? TcpEndPoint` in the .NET logic handler).
    pub(crate) fn choose(&self, tls: bool) -> Endpoint {
        match (&self.secure_tcp, tls) {
            (Some(secure), true) => secure.clone(),
            _ => self.tcp.clone(),
        }
    }

    fn holds(&self, endpoint: &Endpoint) -> bool {
        self.tcp == *endpoint || self.secure_tcp.as_ref() == Some(endpoint)
    }
}

/// Discovery, with what it remembers between connections.
#[derive(Debug)]
pub(crate) struct Discovery {
    settings: ClusterSettings,
    memory: Mutex<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    /// The members of the last gossip a node was chosen from (`_oldGossip`):
    /// asked first next time, then forgotten until a node is chosen again.
    gossip: Option<Vec<Member>>,
    /// The node chosen last: the next discovery happens because its
    /// connection ended, so it is not asked for gossip (`failedTcpEndPoint`).
    chosen: Option<NodeEndpoints>,
    client: Option<reqwest::Client>,
}

impl PartialEq for Discovery {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings
    }
}

impl Eq for Discovery {}

impl Discovery {
    pub(crate) fn new(settings: ClusterSettings) -> Discovery {
        Discovery {
            settings,
            memory: Mutex::new(Memory::default()),
        }
    }

    #[cfg(test)]
    pub(crate) fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The node to connect to: up to `MaxDiscoverAttempts` attempts, 500 ms
    /// apart, each asking the candidates in turn until one's gossip names a
    /// node.
    ///
    /// # Errors
    /// [`TcpError::Discovery`] (transient) naming the seeds and what the last
    /// attempt met.
    pub(crate) async fn discover(&self) -> Result<NodeEndpoints, TcpError> {
        let attempts = self.settings.max_discover_attempts;
        let mut problem = String::new();
        for attempt in 1..=attempts {
            match self.attempt().await {
                Ok(node) => {
                    info!(
                        attempt,
                        node = %node.tcp,
                        secure = ?node.secure_tcp.as_ref().map(ToString::to_string),
                        "Discovered the node to read from"
                    );
                    return Ok(node);
                }
                Err(found) => {
                    debug!(attempt, attempts, problem = %found, "Discovery attempt failed");
                    problem = found;
                }
            }
            if attempt < attempts {
                tokio::time::sleep(ATTEMPT_PAUSE).await;
            }
        }
        Err(TcpError::Discovery {
            seeds: self.settings.seeds.to_string(),
            attempts,
            problem,
        })
    }

    /// One attempt; the error says what each candidate answered.
    async fn attempt(&self) -> Result<NodeEndpoints, String> {
        let (old, failed, client) = {
            let mut memory = self.memory();
            let client = match &memory.client {
                Some(client) => client.clone(),
                None => {
                    let client = reqwest::Client::builder()
                        .timeout(self.settings.gossip_timeout)
                        .danger_accept_invalid_certs(!self.settings.validate_server)
                        .build()
                        .map_err(|e| format!("no HTTP client for the gossip: {e}"))?;
                    memory.client.insert(client).clone()
                }
            };
            (memory.gossip.take(), memory.chosen.clone(), client)
        };
        let candidates = match old {
            Some(members) => from_old_gossip(&members, failed.as_ref()),
            None => self.configured_seeds().await?,
        };
        if candidates.is_empty() {
            return Err("no gossip endpoint to ask".into());
        }
        let mut problems = Vec::new();
        for candidate in candidates {
            match gossip(&client, &candidate).await {
                Ok(members) if members.is_empty() => {
                    problems.push(format!("{candidate}: no members"));
                }
                Ok(members) => match best(&members, self.settings.preference) {
                    Some(node) => {
                        let mut memory = self.memory();
                        memory.gossip = Some(members);
                        memory.chosen = Some(node.clone());
                        return Ok(node);
                    }
                    None => problems.push(format!(
                        "{candidate}: no member to connect to ({})",
                        states(&members)
                    )),
                },
                Err(problem) => problems.push(format!("{candidate}: {problem}")),
            }
        }
        Err(problems.join("; "))
    }

    /// The seeds, in random order (v5.0.12 shuffles them), or every address
    /// of the DNS name with the gossip port.
    async fn configured_seeds(&self) -> Result<Vec<GossipSeed>, String> {
        match &self.settings.seeds {
            Seeds::List(seeds) => {
                let mut seeds = seeds.clone();
                fastrand::shuffle(&mut seeds);
                Ok(seeds)
            }
            Seeds::Dns { name, port } => {
                let addresses = tokio::net::lookup_host((name.as_str(), *port))
                    .await
                    .map_err(|e| format!("resolving the DNS name {name} failed: {e}"))?;
                let mut seeds: Vec<GossipSeed> = Vec::new();
                for address in addresses {
                    let seed = GossipSeed {
                        host: address.ip().to_string(),
                        port: *port,
                        tls: false,
                    };
                    if !seeds.contains(&seed) {
                        seeds.push(seed);
                    }
                }
                if seeds.is_empty() {
                    return Err(format!("the DNS name {name} resolved to no address"));
                }
                Ok(seeds)
            }
        }
    }
}

/// A gossip member, with the fields discovery reads (ES5
/// `Messages/MemberInfoDto.cs`, camelCase JSON; state names as strings).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Member {
    state: String,
    is_alive: bool,
    #[serde(default)]
    external_tcp_ip: String,
    #[serde(default)]
    external_tcp_port: i64,
    #[serde(default)]
    external_secure_tcp_port: i64,
    #[serde(default)]
    external_http_ip: Option<String>,
    #[serde(default)]
    external_http_port: i64,
    /// v20.6+ name of the HTTP endpoint (the .NET client reads both).
    #[serde(default)]
    http_end_point_ip: Option<String>,
    #[serde(default)]
    http_end_point_port: i64,
}

#[derive(Deserialize)]
struct ClusterInfo {
    #[serde(default)]
    members: Vec<Member>,
}

/// `GET /gossip?format=json` within the gossip timeout.
async fn gossip(client: &reqwest::Client, seed: &GossipSeed) -> Result<Vec<Member>, String> {
    let response = client
        .get(seed.url())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("answered HTTP {status}"));
    }
    let body = response.bytes().await.map_err(|e| describe(&e))?;
    let info: ClusterInfo = serde_json::from_slice(&body)
        .map_err(|e| format!("answered gossip that cannot be read: {e}"))?;
    Ok(info.members)
}

/// A reqwest error with its causes (a refused connection says so only there).
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer within the gossip timeout".into();
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The members of the last gossip as gossip endpoints, without the node
/// whose connection failed; managers last, each group shuffled
/// (`GetGossipCandidatesFromOldGossip`, `ArrangeGossipCandidates`).
fn from_old_gossip(members: &[Member], failed: Option<&NodeEndpoints>) -> Vec<GossipSeed> {
    let mut nodes = Vec::new();
    let mut managers = Vec::new();
    for member in members {
        if failed.is_some_and(|failed| {
            failed.holds(&tcp(member)) || secure(member).is_some_and(|s| failed.holds(&s))
        }) {
            continue;
        }
        let (host, port) = match (&member.http_end_point_ip, member.http_end_point_port) {
            (Some(ip), port) if port != 0 => (ip.clone(), port),
            _ => (
                member.external_http_ip.clone().unwrap_or_default(),
                member.external_http_port,
            ),
        };
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if host.is_empty() || port == 0 {
            continue;
        }
        let seed = GossipSeed {
            host,
            port,
            tls: false,
        };
        if member.state.eq_ignore_ascii_case("Manager") {
            managers.push(seed);
        } else {
            nodes.push(seed);
        }
    }
    fastrand::shuffle(&mut nodes);
    fastrand::shuffle(&mut managers);
    nodes.extend(managers);
    nodes
}

fn tcp(member: &Member) -> Endpoint {
    Endpoint {
        host: member.external_tcp_ip.clone(),
        port: u16::try_from(member.external_tcp_port).unwrap_or(0),
    }
}

fn secure(member: &Member) -> Option<Endpoint> {
    u16::try_from(member.external_secure_tcp_port)
        .ok()
        .filter(|p| *p > 0)
        .map(|port| Endpoint {
            host: member.external_tcp_ip.clone(),
            port,
        })
}

/// The order the .NET discoverer sorts states in (`OrderByDescending(State)`
/// over the v5.0.12 client's `VNodeState`, which holds the v5 and v20 names),
/// `None` for the states never chosen (Manager, ShuttingDown, Shutdown) and
/// names it does not know. One deliberate difference: the read-only replica
/// states come last here, where that enum puts them above the leader.
fn rank(state: &str) -> Option<i32> {
    let rank = match state.to_ascii_lowercase().as_str() {
        "initializing" => 0,
        "unknown" => 1,
        "prereplica" => 2,
        "catchingup" => 3,
        "clone" => 4,
        "slave" => 5,
        "follower" => 6,
        "premaster" => 7,
        "preleader" => 8,
        "master" => 9,
        "leader" => 10,
        "readonlyleaderless" | "prereadonlyreplica" | "readonlyreplica" => -1,
        _ => return None,
    };
    Some(rank)
}

fn is_follower(state: &str) -> bool {
    state.eq_ignore_ascii_case("Slave") || state.eq_ignore_ascii_case("Follower")
}

fn is_read_only(state: &str) -> bool {
    rank(state) == Some(-1)
}

/// The node to connect to (`TryDetermineBestNode`): alive members in a state
/// that may be chosen, by state (the leader first), then reordered by the
/// preference.
fn best(members: &[Member], preference: NodePreference) -> Option<NodeEndpoints> {
    let mut nodes: Vec<(i32, &Member)> = members
        .iter()
        .filter(|m| m.is_alive)
        .filter_map(|m| rank(&m.state).map(|r| (r, m)))
        .filter(|(_, m)| !m.external_tcp_ip.is_empty() && tcp(m).port != 0)
        .collect();
    // Stable: members of one state keep the gossip's order.
    nodes.sort_by_key(|(rank, _)| Reverse(*rank));
    let mut prefer = |wanted: &dyn Fn(&str) -> bool| {
        nodes.sort_by_key(|(_, m)| !wanted(&m.state));
        let count = nodes.iter().filter(|(_, m)| wanted(&m.state)).count();
        fastrand::shuffle(&mut nodes[..count]);
    };
    match preference {
        NodePreference::Master => {}
        NodePreference::Random => prefer(&|_| true),
        NodePreference::Slave => prefer(&is_follower),
        NodePreference::ReadOnlyReplica => prefer(&is_read_only),
    }
    nodes.first().map(|(_, m)| NodeEndpoints {
        tcp: tcp(m),
        secure_tcp: secure(m),
    })
}

/// The members' states, for an error.
fn states(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| {
            format!(
                "{}:{} {}{}",
                m.external_tcp_ip,
                m.external_tcp_port,
                m.state,
                if m.is_alive { "" } else { " dead" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(state: &str, alive: bool, port: i64) -> Member {
        Member {
            state: state.into(),
            is_alive: alive,
            external_tcp_ip: "10.0.0.1".into(),
            external_tcp_port: port,
            external_secure_tcp_port: 0,
            external_http_ip: Some("10.0.0.1".into()),
            external_http_port: 2113,
            http_end_point_ip: None,
            http_end_point_port: 0,
        }
    }

    #[test]
    fn the_leader_is_chosen_and_never_a_dead_manager_or_stopping_node() {
        let members = [
            member("Slave", true, 1),
            member("Master", false, 2),
            member("Manager", true, 3),
            member("ShuttingDown", true, 4),
            member("PreMaster", true, 5),
            member("Master", true, 6),
        ];
        let node = best(&members, NodePreference::Master).unwrap();
        assert_eq!(node.tcp.port, 6);
        // Without a live leader: the next state down.
        let node = best(&members[..5], NodePreference::Master).unwrap();
        assert_eq!(node.tcp.port, 5);
        let node = best(&members[..4], NodePreference::Master).unwrap();
        assert_eq!(node.tcp.port, 1);
        assert_eq!(best(&members[1..4], NodePreference::Master), None);
        // A follower when preferred; the leader when there is none.
        let node = best(&members, NodePreference::Slave).unwrap();
        assert_eq!(node.tcp.port, 1);
        let node = best(&members[4..], NodePreference::Slave).unwrap();
        assert_eq!(node.tcp.port, 6);
    }

    #[test]
    fn the_secure_endpoint_is_used_over_tls() {
        let mut leader = member("Master", true, 1113);
        leader.external_secure_tcp_port = 1115;
        let node = best(&[leader], NodePreference::Master).unwrap();
        assert_eq!(node.choose(true).port, 1115);
        assert_eq!(node.choose(false).port, 1113);
        let plain = best(&[member("Master", true, 1113)], NodePreference::Master).unwrap();
        assert_eq!(plain.choose(true).port, 1113);
    }

    #[test]
    fn v5_gossip_json_is_read() {
        let json = r#"{"members":[{"instanceId":"6ab1e3f5-0000-0000-0000-000000000000",
            "timeStamp":"2026-12-07T21:00:00.0000000Z","state":"Master","isAlive":true,
            "internalTcpIp":"10.0.0.2","internalTcpPort":1112,"internalSecureTcpPort":0,
            "externalTcpIp":"10.0.0.2","externalTcpPort":1113,"externalSecureTcpPort":1115,
            "internalHttpIp":"10.0.0.2","internalHttpPort":2112,"externalHttpIp":"10.0.0.2",
            "externalHttpPort":2113,"lastCommitPosition":1,"writerCheckpoint":2,
            "chaserCheckpoint":2,"epochPosition":0,"epochNumber":0,
            "epochId":"00000000-0000-0000-0000-000000000000","nodePriority":0}],
            "serverIp":"10.0.0.2","serverPort":2113}"#;
        let info: ClusterInfo = serde_json::from_str(json).unwrap();
        let node = best(&info.members, NodePreference::Master).unwrap();
        assert_eq!(node.tcp.to_string(), "10.0.0.2:1113");
        assert_eq!(node.secure_tcp.unwrap().to_string(), "10.0.0.2:1115");
        let seeds = from_old_gossip(&info.members, None);
        assert_eq!(seeds[0].url(), "http://10.0.0.2:2113/gossip?format=json");
        let failed = best(&info.members, NodePreference::Master);
        assert!(from_old_gossip(&info.members, failed.as_ref()).is_empty());
    }
}
