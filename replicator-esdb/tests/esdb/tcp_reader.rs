//! The v5 TCP reader against the testkit's TCP service: it must hand on what
//! the gRPC reader hands on for the same server.

use std::time::{Duration, UNIX_EPOCH};

use futures::StreamExt;
use replicator_core::{ErrorKind, Event, EventStream, Position, Reader, StartFrom};
use replicator_esdb::{TcpReader, TcpReaderConfig};
use replicator_testkit::security::User;
use replicator_testkit::support::TcpTransaction;
use replicator_testkit::{EsdbServer, ServerOptions};

use crate::common::*;

async fn tcp_server(users: Option<Vec<User>>) -> EsdbServer {
    logs();
    EsdbServer::start_with(ServerOptions {
        tcp_port: Some(0),
        users,
        ..Default::default()
    })
    .await
    .expect("server")
}

fn connect_to(server: &EsdbServer, user_info: &str) -> String {
    let address = server.tcp_address().expect("the TCP service");
    format!("ConnectTo=tcp://{user_info}{address}; HeartBeatTimeout=1500; UseSslConnection=false")
}

fn tcp_reader(server: &EsdbServer, page_size: usize, run_continuously: bool) -> TcpReader {
    TcpReader::new(TcpReaderConfig {
        page_size,
        run_continuously,
        // Only the latency of live records depends on it.
        poll_interval: Duration::from_millis(20),
        ..TcpReaderConfig::new(connect_to(server, ""))
    })
    .expect("reader")
}

async fn collect(stream: EventStream) -> Vec<Event> {
    tokio::time::timeout(PATIENCE, stream.map(|e| e.expect("event")).collect())
        .await
        .expect("a reader that is not continuous ends once caught up")
}

async fn read_tcp(server: &EsdbServer, page_size: usize, from: StartFrom) -> Vec<Event> {
    let mut reader = tcp_reader(server, page_size, false);
    collect(reader.read(from).await.expect("read")).await
}

async fn read_grpc(server: &EsdbServer, from: StartFrom) -> Vec<Event> {
    let mut reader = replicator_esdb::EsdbReader::new(replicator_esdb::EsdbReaderConfig {
        connection_string: server.connection_string().into(),
        page_size: 100,
        run_continuously: false,
    })
    .expect("reader");
    collect(reader.read(from).await.expect("read")).await
}

fn grpc_client(server: &EsdbServer) -> eventstore::Client {
    eventstore::Client::new(server.connection_string().parse().expect("settings")).expect("client")
}

/// Everything the pipeline copies; `created` to the second, as the gRPC
/// reader keeps it.
fn assert_same(tcp: &[Event], grpc: &[Event], what: &str) {
    assert_eq!(tcp.len(), grpc.len(), "{what}: how many records");
    for (t, g) in tcp.iter().zip(grpc) {
        let seconds = |e: &Event| e.created.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(
            (
                t.id,
                &t.stream,
                t.revision,
                &t.event_type,
                &t.data,
                &t.metadata,
                t.content_type,
                t.position,
                t.kind,
                seconds(t)
            ),
            (
                g.id,
                &g.stream,
                g.revision,
                &g.event_type,
                &g.data,
                &g.metadata,
                g.content_type,
                g.position,
                g.kind,
                seconds(g)
            ),
            "{what}: the record at {}",
            g.position
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_hands_on_what_grpc_hands_on() {
    let server = tcp_server(None).await;
    populate(&grpc_client(&server), 11, 300).await;
    let grpc = read_grpc(&server, StartFrom::Beginning).await;
    assert!(grpc.len() > 300, "a workload of {} records", grpc.len());
    for page_size in [1, 7, 1024] {
        let tcp = read_tcp(&server, page_size, StartFrom::Beginning).await;
        assert_same(&tcp, &grpc, &format!("page size {page_size}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_resumes_exactly_after_it_and_a_seed_at_it() {
    let server = tcp_server(None).await;
    populate(&grpc_client(&server), 12, 100).await;
    let all = read_tcp(&server, 1024, StartFrom::Beginning).await;
    let positions: Vec<Position> = all.iter().map(|e| e.position).collect();
    for k in [0, 1, positions.len() / 2, positions.len() - 1] {
        let p = positions[k];
        let after = read_tcp(&server, 10, StartFrom::After(p)).await;
        assert_eq!(
            after.iter().map(|e| e.position).collect::<Vec<_>>(),
            positions[k + 1..],
            "After({p}) must start with the record after {p}"
        );
        assert_same(
            &after,
            &read_grpc(&server, StartFrom::After(p)).await,
            "after",
        );
        let at = read_tcp(&server, 10, StartFrom::At(p)).await;
        assert_eq!(
            at.iter().map(|e| e.position).collect::<Vec<_>>(),
            positions[k..],
            "At({p}) must start with the record at {p}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_records_arrive_at_once_also_across_a_dropped_connection() {
    let server = tcp_server(None).await;
    let client = grpc_client(&server);
    populate(&client, 13, 60).await;
    let before = read_grpc(&server, StartFrom::Beginning).await;

    // Polling alone would wait an hour: live records must come through the
    // subscription's news.
    let mut reader = TcpReader::new(TcpReaderConfig {
        page_size: 16,
        poll_interval: Duration::from_secs(3600),
        ..TcpReaderConfig::new(connect_to(&server, ""))
    })
    .expect("reader");
    let mut stream = reader.read(StartFrom::Beginning).await.expect("read");
    let mut seen = Vec::new();
    while seen.len() < before.len() {
        let event = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("catching up")
            .expect("open")
            .expect("no error");
        seen.push(event);
    }
    // Written while the reader polls; then its connection is cut and more
    // is written.
    for i in 0..5 {
        append_retrying(&client, "live-1", &user_event("live-1", i, i)).await;
    }
    server.faults().drop_connections();
    for i in 0..5 {
        append_retrying(&client, "live-2", &user_event("live-2", i, 100 + i)).await;
    }
    let all = read_grpc(&server, StartFrom::Beginning).await;
    while seen.len() < all.len() {
        let event = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("the live records arrive")
            .expect("open")
            .expect("no error");
        seen.push(event);
    }
    assert_same(&seen, &all, "caught up, then live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_permanent_and_names_the_user_not_the_password() {
    let server = tcp_server(Some(vec![User::admin()])).await;
    let mut reader = TcpReader::new(TcpReaderConfig::new(connect_to(
        &server,
        "admin:not-the-password@",
    )))
    .expect("reader");
    let mut stream = reader.read(StartFrom::Beginning).await.expect("read");
    let error = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("an answer")
        .expect("an item")
        .expect_err("refused");
    assert_eq!(error.kind(), ErrorKind::Permanent, "{error}");
    let text = format!("{error} {error:?}");
    assert!(text.contains("`admin`"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
    assert!(stream.next().await.is_none(), "the stream ends");

    // The right one reads.
    let mut reader = TcpReader::new(TcpReaderConfig {
        run_continuously: false,
        ..TcpReaderConfig::new(connect_to(&server, "admin:changeit@"))
    })
    .expect("reader");
    collect(reader.read(StartFrom::Beginning).await.expect("read")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_setting_is_an_error_naming_it() {
    let server = tcp_server(None).await;
    let text = format!("{}; Colour=blue", connect_to(&server, "admin:changeit@"));
    let error = TcpReader::new(TcpReaderConfig::new(text)).expect_err("refused");
    assert_eq!(error.kind(), ErrorKind::Permanent);
    assert!(error.message().contains("`Colour`"), "{error}");
    assert!(!error.message().contains("changeit"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_probe_says_where_all_ends() {
    let server = tcp_server(None).await;
    populate(&grpc_client(&server), 14, 40).await;
    let all = read_grpc(&server, StartFrom::Beginning).await;
    let reader = tcp_reader(&server, 10, false);
    let head = reader
        .head_probe()
        .expect("a probe")
        .head()
        .await
        .expect("head");
    assert_eq!(head, all.last().map(|e| e.position));

    // The probe keeps its connection between asks; one closed meanwhile (as
    // the node closes idle connections that miss its heartbeats) is
    // replaced, not reported as a failure.
    server.faults().drop_connections();
    append_retrying(
        &grpc_client(&server),
        "after-probe",
        &user_event("after-probe", 0, 0),
    )
    .await;
    let all = read_grpc(&server, StartFrom::Beginning).await;
    let head = reader.head_probe().unwrap().head().await.expect("head");
    assert_eq!(head, all.last().map(|e| e.position));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_it_hands_on_what_grpc_hands_on() {
    logs();
    let certificates = replicator_testkit::security::TestCertificates::generate(&[]).unwrap();
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &certificates.ca_pem).unwrap();
    let server = EsdbServer::start_with(ServerOptions {
        tcp_port: Some(0),
        tls: Some(certificates),
        ..Default::default()
    })
    .await
    .expect("server");
    let grpc_text = server.connection_string_with(None, Some(ca.path()));
    let client = eventstore::Client::new(grpc_text.parse().unwrap()).unwrap();
    populate(&client, 15, 80).await;
    let mut grpc = replicator_esdb::EsdbReader::new(replicator_esdb::EsdbReaderConfig {
        connection_string: grpc_text.into(),
        page_size: 100,
        run_continuously: false,
    })
    .expect("reader");
    let grpc = collect(grpc.read(StartFrom::Beginning).await.expect("read")).await;
    // The test CA is in no platform store: the certificate is not validated.
    let text = format!(
        "ConnectTo=tcp://{}; UseSslConnection=true; ValidateServer=false",
        server.tcp_address().unwrap()
    );
    let mut tcp = TcpReader::new(TcpReaderConfig {
        run_continuously: false,
        page_size: 25,
        ..TcpReaderConfig::new(text)
    })
    .expect("reader");
    let tcp = collect(tcp.read(StartFrom::Beginning).await.expect("read")).await;
    assert!(!grpc.is_empty());
    assert_same(&tcp, &grpc, "over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_while_held_back_is_replaced_without_a_failure() {
    let server = tcp_server(None).await;
    populate(&grpc_client(&server), 16, 40).await;
    let all = read_grpc(&server, StartFrom::Beginning).await;
    let mut reader = tcp_reader(&server, 5, false);
    let health =
        replicator_core::health::HealthReporter::new(replicator_core::health::Component::Source);
    reader.report_health_to(health.clone());
    let mut stream = reader.read(StartFrom::Beginning).await.expect("read");
    let mut seen = Vec::new();
    while let Some(event) = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("records")
    {
        seen.push(event.expect("no error"));
        // The pipeline holding the reader back: its connection goes unread,
        // and the node closes it (here: cut deterministically).
        if seen.len() % 5 == 0 {
            server.faults().drop_connections();
        }
    }
    assert_same(&seen, &all, "across cut connections");
    assert_eq!(
        health.snapshot().failures_total,
        0,
        "{:?}",
        health.snapshot()
    );
}

/// Writes `ids` to `stream` in one v5 explicit transaction over the TCP service,
/// with an ordinary gRPC append to `beside` between its first event and the
/// others, as v5 lays them out: the first prepare before the append, the others
/// after it, all committed after it.
pub(crate) async fn transaction_around_an_append(
    server: &EsdbServer,
    stream: &str,
    beside: &str,
    ids: &[uuid::Uuid],
) {
    let address = server.tcp_address().expect("the TCP service");
    let mut transaction = TcpTransaction::start(address, stream).await;
    transaction.write(&ids[..1]).await;
    let event = eventstore::EventData::json("Beside", &serde_json::json!({})).expect("json");
    grpc_client(server)
        .append_to_stream(beside, &Default::default(), event)
        .await
        .expect("append");
    transaction.write(&ids[1..]).await;
    transaction.commit().await;
}

/// v5 explicit transactions put records with commit ≠ prepare in `$all` (issue
/// 23): the TCP reader hands on what the gRPC reader does for them, and a
/// checkpoint inside a transaction (its commit, the prepare of its second record)
/// resumes exactly at the next record, at any page size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_records_read_as_grpc_reads_them_and_resume_inside_the_transaction() {
    let server = tcp_server(None).await;
    let client = grpc_client(&server);
    populate(&client, 14, 20).await;
    let ids: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    transaction_around_an_append(&server, "txn", "beside-txn", &ids).await;
    populate(&client, 15, 10).await;

    let grpc = read_grpc(&server, StartFrom::Beginning).await;
    let ours: Vec<&Event> = grpc.iter().filter(|e| &*e.stream == "txn").collect();
    assert_eq!(ours.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    let commit = ours[0].position.commit;
    assert!(ours
        .iter()
        .all(|e| e.position.commit == commit && e.position.prepare < commit));
    for page_size in [1, 2, 1024] {
        let tcp = read_tcp(&server, page_size, StartFrom::Beginning).await;
        assert_same(&tcp, &grpc, &format!("page size {page_size}"));
        // The transaction is one commit: every record but its last says the
        // next is of the same commit, so the pipeline keeps them in one
        // append; no other record does.
        let marked: Vec<uuid::Uuid> = tcp
            .iter()
            .filter(|e| e.more_in_commit)
            .map(|e| e.id)
            .collect();
        assert_eq!(marked, ids[..2], "page size {page_size}");
    }

    let positions: Vec<Position> = grpc.iter().map(|e| e.position).collect();
    let inside = ours[1].position;
    let k = positions.iter().position(|&p| p == inside).unwrap();
    for page_size in [1, 2, 1024] {
        let after = read_tcp(&server, page_size, StartFrom::After(inside)).await;
        assert_eq!(
            after.iter().map(|e| e.position).collect::<Vec<_>>(),
            positions[k + 1..],
            "After({inside}), page size {page_size}: from the transaction's third record on"
        );
        assert_eq!(after[0].id, ids[2]);
        assert!(!after[0].more_in_commit, "the transaction's last record");
        let at = read_tcp(&server, page_size, StartFrom::At(inside)).await;
        assert_eq!(at.first().map(|e| e.id), Some(ids[1]), "At({inside})");
    }
    assert_same(
        &read_tcp(&server, 2, StartFrom::After(inside)).await,
        &read_grpc(&server, StartFrom::After(inside)).await,
        "after a checkpoint inside the transaction",
    );
}
