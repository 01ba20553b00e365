//! The v5 TCP reader on a "cluster" of testkit servers: discovery through
//! the HTTP gossip (`GossipSeeds`, `ClusterDns`, `discover://`), leader
//! changes mid-read (NotHandled NotMaster, a stopped leader), unreachable
//! seeds. Each server has a store of its own: what a follower holds is
//! written to it as to the leader, in the same order, so the positions are
//! the same, as replication keeps them on a real cluster.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use replicator_core::health::{Component, HealthReporter};
use replicator_core::{ErrorKind, Event, EventStream, Reader, StartFrom};
use replicator_esdb::{TcpReader, TcpReaderConfig};
use replicator_testkit::{EsdbServer, GossipMember, NodeState, PreloadEvent, Role, ServerOptions};

use crate::common::*;

async fn node() -> EsdbServer {
    logs();
    EsdbServer::start_with(ServerOptions {
        tcp_port: Some(0),
        gossip_port: Some(0),
        ..Default::default()
    })
    .await
    .expect("server")
}

/// Makes `nodes` one cluster led by `nodes[leader]`: every gossip lists them
/// (alive or not as `alive` says), the leader leads, the others follow it.
fn lead(nodes: &[&EsdbServer], leader: usize, alive: &[bool]) {
    let members: Vec<GossipMember> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let member = n.member(if i == leader {
                NodeState::Master
            } else {
                NodeState::Slave
            });
            if alive[i] {
                member
            } else {
                member.dead()
            }
        })
        .collect();
    for (i, n) in nodes.iter().enumerate() {
        n.set_gossip(members.clone());
        n.set_role(if i == leader {
            Role::Leader
        } else {
            Role::Follower {
                leader: Some(members[leader].clone()),
            }
        });
    }
}

fn seeds(nodes: &[&EsdbServer]) -> String {
    nodes
        .iter()
        .map(|n| n.gossip_address().expect("gossip").to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn reader(text: String, page_size: usize, run_continuously: bool) -> TcpReader {
    TcpReader::new(TcpReaderConfig {
        page_size,
        run_continuously,
        poll_interval: Duration::from_millis(20),
        ..TcpReaderConfig::new(text)
    })
    .expect("reader")
}

async fn collect(stream: EventStream) -> Vec<Event> {
    tokio::time::timeout(PATIENCE, stream.map(|e| e.expect("event")).collect())
        .await
        .expect("a reader that is not continuous ends once caught up")
}

async fn read_grpc(server: &EsdbServer) -> Vec<Event> {
    let mut reader = replicator_esdb::EsdbReader::new(replicator_esdb::EsdbReaderConfig {
        connection_string: server.connection_string().into(),
        page_size: 500,
        run_continuously: false,
    })
    .expect("reader");
    collect(reader.read(StartFrom::Beginning).await.expect("read")).await
}

fn grpc_client(server: &EsdbServer) -> eventstore::Client {
    eventstore::Client::new(server.connection_string().parse().expect("settings")).expect("client")
}

/// What identifies a record in `$all`.
fn keys(events: &[Event]) -> Vec<(replicator_core::Position, uuid::Uuid, String, u64)> {
    events
        .iter()
        .map(|e| (e.position, e.id, e.stream.clone(), e.revision))
        .collect()
}

/// The same `count` events for every node, in `streams` streams.
fn batch(tag: &str, streams: usize, count: usize) -> Vec<(String, PreloadEvent)> {
    (0..count)
        .map(|i| {
            (
                format!("{tag}-{}", i % streams),
                PreloadEvent {
                    id: uuid::Uuid::new_v4(),
                    event_type: "Placed".into(),
                    is_json: true,
                    data: format!(r#"{{"n":{i}}}"#).into(),
                    custom_metadata: bytes::Bytes::new(),
                },
            )
        })
        .collect()
}

fn preload(nodes: &[&EsdbServer], events: &[(String, PreloadEvent)]) {
    for node in nodes {
        for (stream, event) in events {
            node.preload(stream, [event.clone()]);
        }
    }
}

async fn next(stream: &mut EventStream, what: &str) -> Event {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: a record in time"))
        .expect("the stream goes on")
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Seeds that are followers' gossip endpoints lead to the leader, whose
/// `$all` is read exactly; with `NodePreference=Slave`, to a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_seeds_lead_to_the_leader_of_three() {
    let (a, b, c) = (node().await, node().await, node().await);
    // Different records on each: reading the wrong node shows. The followers
    // keep the leader's role for TCP, so nothing but discovery sends the
    // reader to b.
    populate(&grpc_client(&a), 31, 40).await;
    populate(&grpc_client(&b), 32, 120).await;
    populate(&grpc_client(&c), 33, 60).await;
    let members = vec![
        a.member(NodeState::Slave),
        b.member(NodeState::Master),
        c.member(NodeState::Slave),
    ];
    for n in [&a, &b, &c] {
        n.set_gossip(members.clone());
    }
    let expected = read_grpc(&b).await;
    assert!(expected.len() > 120, "{} records", expected.len());
    let text = format!(
        "GossipSeeds={}; GossipTimeout=2000; DefaultUserCredentials=admin:changeit",
        seeds(&[&a, &c])
    );
    let mut leader = reader(text.clone(), 50, false);
    let read = collect(leader.read(StartFrom::Beginning).await.expect("read")).await;
    assert_eq!(keys(&read), keys(&expected), "the leader's $all, exactly");
    let head = leader.head_probe().unwrap().head().await.expect("head");
    assert_eq!(head, expected.last().map(|e| e.position));

    let followers = [keys(&read_grpc(&a).await), keys(&read_grpc(&c).await)];
    let mut follower = reader(format!("{text}; NodePreference=Slave"), 50, false);
    let read = collect(follower.read(StartFrom::Beginning).await.expect("read")).await;
    assert!(
        followers.contains(&keys(&read)),
        "a follower's $all ({} records)",
        read.len()
    );
}

/// The leader changes twice while the reader is in the middle of `$all`:
/// first the old one answers NotMaster naming the new one (the reader goes
/// there), then the new one stops (the reader discovers again and finds the
/// third). Nothing is missed, nothing repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_change_mid_read_loses_and_repeats_nothing() {
    let (a, b, c) = (node().await, node().await, node().await);
    let nodes = [&a, &b, &c];
    preload(&nodes, &batch("before", 7, 600));
    lead(&nodes, 0, &[true, true, true]);
    let mut reader = reader(
        format!("GossipSeeds={}; GossipTimeout=1000", seeds(&nodes)),
        20,
        true,
    );
    let health = HealthReporter::new(Component::Source);
    reader.report_health_to(health.clone());
    let mut stream = reader.read(StartFrom::Beginning).await.expect("read");
    let mut seen = Vec::new();
    while seen.len() < 200 {
        seen.push(next(&mut stream, "from a").await);
    }

    // b leads; a answers NotMaster naming b, while the gossip still names a
    // (it has not converged yet): only the NotMaster answer leads to b.
    // Records written now reach b and c only: the reader sees them only once
    // it has left a.
    let on_b_leader = Some(b.member(NodeState::Master));
    a.set_role(Role::Follower {
        leader: on_b_leader.clone(),
    });
    b.set_role(Role::Leader);
    c.set_role(Role::Follower {
        leader: on_b_leader,
    });
    let on_b: Vec<Event> = (0..30).map(|i| user_event("after-b", i, i)).collect();
    for node in [&b, &c] {
        let client = grpc_client(node);
        for event in &on_b {
            append_retrying(&client, "after-b", event).await;
        }
    }
    let on_b = read_grpc(&b).await.len();
    while seen.len() < on_b {
        seen.push(next(&mut stream, "from b").await);
    }

    // b stops; c leads. Records written now reach c only.
    b.stop().await;
    lead(&nodes, 2, &[true, false, true]);
    let client = grpc_client(&c);
    for i in 0..30 {
        append_retrying(&client, "after-c", &user_event("after-c", i, i)).await;
    }
    let expected = read_grpc(&c).await;
    while seen.len() < expected.len() {
        seen.push(next(&mut stream, "from c").await);
    }
    assert_eq!(keys(&seen), keys(&expected), "no gap, no repeat");
    eventually("the source healthy again", PATIENCE, || async {
        health.snapshot().healthy
    })
    .await;
}

/// `ClusterDns` and `discover://` with a name that resolves here: the
/// gossip port of a follower, whose gossip names the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_dns_and_discover_find_the_leader_through_a_local_name() {
    let (follower, leader) = (node().await, node().await);
    populate(&grpc_client(&follower), 34, 30).await;
    populate(&grpc_client(&leader), 35, 80).await;
    let members = vec![
        follower.member(NodeState::Slave),
        leader.member(NodeState::Master),
    ];
    follower.set_gossip(members.clone());
    leader.set_gossip(members);
    let expected = keys(&read_grpc(&leader).await);
    let port = follower.gossip_address().unwrap().port();
    for text in [
        format!("ClusterDns=localhost; ExternalGossipPort={port}"),
        format!("ClusterDns=localhost; GossipPort={port}; MaxDiscoverAttempts=2"),
        format!("ConnectTo=discover://admin:changeit@localhost:{port}"),
    ] {
        let mut reader = reader(text.clone(), 100, false);
        let read = collect(reader.read(StartFrom::Beginning).await.expect("read")).await;
        assert_eq!(keys(&read), expected, "{text}");
    }
}

/// Over TLS the reader connects to the member's secure TCP port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_secure_tcp_port_is_used() {
    logs();
    let certificates = replicator_testkit::security::TestCertificates::generate(&[]).unwrap();
    let server = EsdbServer::start_with(ServerOptions {
        tcp_port: Some(0),
        gossip_port: Some(0),
        tls: Some(certificates),
        ..Default::default()
    })
    .await
    .expect("server");
    for i in 0..20 {
        server.preload(
            "secure",
            [PreloadEvent {
                id: uuid::Uuid::new_v4(),
                event_type: "T".into(),
                is_json: true,
                data: format!(r#"{{"i":{i}}}"#).into(),
                custom_metadata: bytes::Bytes::new(),
            }],
        );
    }
    // The plain port a v5 node would have: here nothing listens there.
    let mut member = server.member(NodeState::Master);
    member.tcp = closed_port().await;
    server.set_gossip(vec![member]);
    let text = format!(
        "GossipSeeds={}; UseSslConnection=true; ValidateServer=false",
        server.gossip_address().unwrap()
    );
    let mut reader = reader(text, 100, false);
    let read = collect(reader.read(StartFrom::Beginning).await.expect("read")).await;
    assert_eq!(read.iter().filter(|e| e.stream == "secure").count(), 20);
}

/// A port nothing listens on (bound, then released).
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Seeds that refuse or never answer: a transient failure, reported with
/// the seeds named, after the attempts' bounded time; reading starts once a
/// node serves gossip there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_seeds_are_a_transient_failure_naming_them() {
    logs();
    let refused = closed_port().await;
    // Accepts, then says nothing: only the gossip timeout ends the wait.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let text =
        format!("GossipSeeds={refused},{silent_address}; GossipTimeout=200; MaxDiscoverAttempts=2");
    let mut reader = reader(text, 100, true);
    let health = HealthReporter::new(Component::Source);
    reader.report_health_to(health.clone());
    let mut stream = reader.read(StartFrom::Beginning).await.expect("read");
    let reading = tokio::spawn(async move {
        let first = stream.next().await;
        (first, stream)
    });
    eventually("the source reported failing", PATIENCE, || async {
        !health.snapshot().healthy
    })
    .await;
    let error = health.snapshot().last_error.unwrap_or_default();
    assert!(error.contains("discovery"), "{error}");
    assert!(error.contains(&refused.to_string()), "{error}");
    assert!(error.contains(&silent_address.to_string()), "{error}");
    assert!(!reading.is_finished(), "a transient failure: still trying");

    // A node at the refused seed: discovery finds it and reading starts.
    let server = EsdbServer::start_with(ServerOptions {
        tcp_port: Some(0),
        gossip_port: Some(refused.port()),
        ..Default::default()
    })
    .await
    .expect("a node on the freed port");
    populate(&grpc_client(&server), 36, 10).await;
    let (first, _stream) = tokio::time::timeout(PATIENCE, reading)
        .await
        .expect("reading starts")
        .unwrap();
    first.expect("a record").expect("no error");
    eventually("the source healthy again", PATIENCE, || async {
        health.snapshot().healthy
    })
    .await;
    holder.abort();
}

/// Bad cluster settings are start-up errors naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cluster_settings_are_errors_naming_the_key() {
    for (text, key) in [
        ("GossipSeeds=a", "`GossipSeeds`"),
        ("GossipSeeds=127.0.0.1:0", "`GossipSeeds`"),
        ("ClusterDns=es; GossipPort=0", "`GossipPort`"),
        ("ClusterDns=es; NodePreference=Closest", "`NodePreference`"),
    ] {
        let error = TcpReader::new(TcpReaderConfig::new(text)).expect_err("refused");
        assert_eq!(error.kind(), ErrorKind::Permanent);
        assert!(error.message().contains(key), "{text}: {error}");
    }
}
