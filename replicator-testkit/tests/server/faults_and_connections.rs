//! What only the in-process server can do: stop and restart, dropped connections,
//! injected append failures, pause, the write gate, latency options, gossip between in-process
//! servers, the `esdb-testkit` binary. Each test fails with a clear message when
//! `ESDB_URL` names a real cluster (skip this module then:
//! `--skip faults_and_connections`).

use std::io::BufRead as _;
use std::time::Duration;

use eventstore::{Error, RetryOptions, StreamPosition, SubscribeToAllOptions, SubscriptionEvent};
use replicator_testkit::cluster::require_in_process;
use replicator_testkit::support;
use replicator_testkit::{EsdbServer, ServerOptions};

use crate::common::{append_one, json_event, read_stream, Fixture, VAR};
use crate::subscriptions::{next, next_event};

#[tokio::test]
async fn subscription_survives_a_restart_and_data_is_kept() {
    let f = Fixture::new().await;
    let server = f.cluster.server();
    let client = &f.client;
    let port = server.port();
    append_one(client, "s", json_event("E", 0))
        .await
        .expect("append");
    let options = SubscribeToAllOptions::default()
        .position(StreamPosition::Start)
        .retry_options(
            RetryOptions::default()
                .retry_forever()
                .retry_delay(Duration::from_millis(100)),
        );
    let mut sub = client.subscribe_to_all(&options).await;
    assert_eq!(next_event(&mut sub).await.get_original_event().revision, 0);

    server.stop().await;
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the port is released while stopped"
    );
    server.restart().await.expect("restart");
    assert_eq!(server.port(), port);
    append_one(client, "s", json_event("E", 1))
        .await
        .expect("append after restart");
    // The client resubscribes after the last event it saw: no repeat of revision 0.
    assert_eq!(next_event(&mut sub).await.get_original_event().revision, 1);
    assert_eq!(read_stream(client, "s").await.expect("read").len(), 2);
}

#[tokio::test]
async fn stopping_ends_subscriptions_with_an_error_not_ok() {
    let f = Fixture::new().await;
    let server = f.cluster.server();
    let client = &f.client;
    let mut sub = client
        .subscribe_to_all(&SubscribeToAllOptions::default())
        .await;
    assert!(matches!(
        next(&mut sub).await,
        SubscriptionEvent::Confirmed(_)
    ));
    assert!(matches!(next(&mut sub).await, SubscriptionEvent::CaughtUp));
    server.faults().drop_connections();
    let outcome = tokio::time::timeout(Duration::from_secs(10), sub.next_subscription_event())
        .await
        .expect("the subscription ends promptly");
    assert!(
        outcome.is_err(),
        "subscription must end with an error, got {outcome:?}"
    );
    // The server still serves new calls.
    append_one(client, "s", json_event("E", 0))
        .await
        .expect("append after dropped connections");
}

#[tokio::test]
async fn injected_append_failures_and_pause() {
    let f = Fixture::new().await;
    let server = f.cluster.server();
    let client = &f.client;
    let faults = server.faults();
    faults.fail_next_appends(2);
    for _ in 0..2 {
        let error = append_one(client, "s", json_event("E", 0))
            .await
            .expect_err("injected failure");
        assert!(matches!(error, Error::ServerError(_)), "{error:?}");
    }
    append_one(client, "s", json_event("E", 0))
        .await
        .expect("third append succeeds");
    assert_eq!(
        read_stream(client, "s").await.expect("read").len(),
        1,
        "failed appends wrote nothing"
    );

    faults.pause();
    let paused_client = client.clone();
    let append =
        tokio::spawn(async move { append_one(&paused_client, "s", json_event("E", 1)).await });
    // The append reached the server and waits there: no reply while paused.
    tokio::time::timeout(Duration::from_secs(60), faults.wait_for_paused_calls(1))
        .await
        .expect("the append held by the pause");
    assert!(!append.is_finished(), "a reply while paused: {append:?}");
    faults.resume();
    append.await.expect("task").expect("append after resume");
    assert_eq!(faults.paused_calls(), 0);
    assert_eq!(
        read_stream(client, "s").await.expect("read").len(),
        2,
        "the held append was written once resumed"
    );
}

#[tokio::test]
async fn the_write_gate_lets_n_writes_through_then_holds_the_rest_until_released() {
    let f = Fixture::new().await;
    let server = f.cluster.server();
    let client = &f.client;
    let faults = server.faults();
    faults.hold_writes_after(2);
    append_one(client, "a", json_event("E", 0))
        .await
        .expect("first write");
    append_one(client, "a", json_event("E", 1))
        .await
        .expect("second write");
    assert_eq!(faults.held_writes(), 0);

    // The third write waits at the gate, writing nothing; an empty append (a
    // permission check) passes.
    let held_client = client.clone();
    let held = tokio::spawn(async move { append_one(&held_client, "b", json_event("E", 2)).await });
    faults.wait_for_held_writes(1).await;
    assert_eq!(faults.held_writes(), 1);
    client
        .append_to_stream(
            "check",
            &Default::default(),
            Vec::<eventstore::EventData>::new(),
        )
        .await
        .expect("an append of no events passes a closed gate");
    assert!(
        read_stream(client, "b").await.is_err(),
        "the held write wrote nothing"
    );
    assert_eq!(read_stream(client, "a").await.expect("read").len(), 2);

    faults.release_writes();
    held.await.expect("task").expect("held write after release");
    assert_eq!(faults.held_writes(), 0);
    assert_eq!(read_stream(client, "b").await.expect("read").len(), 1);

    // A batch append's batch is a write too; a held one whose connection the
    // server drops writes nothing.
    faults.hold_writes_after(0);
    let batch_client = client.clone();
    let batch = tokio::spawn(async move {
        let batch = batch_client.batch_append(&Default::default()).await?;
        batch
            .append_to_stream(
                "c",
                eventstore::ExpectedRevision::Any,
                vec![json_event("E", 3)],
            )
            .await
    });
    faults.wait_for_held_writes(1).await;
    faults.drop_connections();
    batch
        .await
        .expect("task")
        .expect_err("a held batch whose connection dropped fails");
    tokio::time::timeout(Duration::from_secs(10), faults.wait_for_dropped_writes(1))
        .await
        .expect("the dropped write left the gate");
    faults.release_writes();
    assert!(
        read_stream(client, "c").await.is_err(),
        "nothing of the dropped batch was written"
    );
}

#[tokio::test]
async fn cluster_connection_string_discovers_through_gossip() {
    require_in_process(VAR);
    let server = EsdbServer::start().await.expect("server");
    let other = EsdbServer::start().await.expect("second server");
    // A seed that hangs up on every connection: discovery must move on to the live
    // one. (Kept bound so no other test's server can take its port meanwhile.)
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead_port = dead.local_addr().expect("address").port();
    let hang_up = tokio::spawn(async move {
        while let Ok((connection, _)) = dead.accept().await {
            drop(connection);
        }
    });
    let seeds = format!(
        "esdb://127.0.0.1:{dead_port},127.0.0.1:{}?tls=false&discoveryInterval=0",
        server.port()
    );
    let client = support::client(&seeds);
    append_one(&client, "c", json_event("E", 0))
        .await
        .expect("append through a cluster connection string");
    assert_eq!(read_stream(&client, "c").await.expect("read").len(), 1);
    // The other server saw nothing: gossip pointed the client at the first one.
    let direct = support::client(&other.connection_string());
    assert!(matches!(
        read_stream(&direct, "c").await,
        Err(Error::ResourceNotFound)
    ));
    hang_up.abort();
}

#[tokio::test]
async fn latency_options_delay_replies() {
    require_in_process(VAR);
    let server = EsdbServer::start_with(ServerOptions {
        append_latency: Duration::from_millis(200),
        ..ServerOptions::default()
    })
    .await
    .expect("server");
    let client = support::client(&server.connection_string());
    let started = std::time::Instant::now();
    append_one(&client, "s", json_event("E", 0))
        .await
        .expect("append");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the configured latency applies"
    );
}

#[tokio::test]
async fn binary_serves_a_client_from_another_process() {
    require_in_process(VAR);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_esdb-testkit"))
        .args(["--port", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn esdb-testkit");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .expect("reader task")
    .expect("connection string line");
    let result = async {
        let connection_string = line.trim();
        assert!(
            connection_string.starts_with("esdb://127.0.0.1:"),
            "{connection_string}"
        );
        let client = support::client(connection_string);
        append_one(&client, "remote", json_event("E", 0))
            .await
            .expect("append to the child");
        let options = eventstore::ReadAllOptions::default().max_count(usize::MAX);
        let mut reader = client.read_all(&options).await.expect("read $all");
        let mut all = Vec::new();
        while let Some(event) = reader.next().await.expect("read $all") {
            all.push(event);
        }
        assert_eq!(all.len(), 1);
    };
    let outcome = tokio::time::timeout(Duration::from_secs(30), result).await;
    let _ = child.kill();
    let _ = child.wait();
    outcome.expect("child answered in time");
}
