//! Restart, dropped connections, injected append failures, pause; batch append; gossip
//! and cluster connection strings; links; the `esdb-testkit` binary.

use std::io::BufRead as _;
use std::time::Duration;

use eventstore::{
    AppendToStreamOptions, BatchAppendOptions, Error, ExpectedRevision, RetryOptions,
    StreamPosition, SubscribeToAllOptions, SubscriptionEvent,
};
use replicator_testkit::{EsdbServer, ServerOptions};

use crate::common::{client_for, json_event, read_all, read_stream, server_and_client};
use crate::subscriptions::{next, next_event};

#[tokio::test]
async fn subscription_survives_a_restart_and_data_is_kept() {
    let (server, client) = server_and_client().await;
    let port = server.port();
    client
        .append_to_stream(
            "s",
            &AppendToStreamOptions::default(),
            vec![json_event("E", 0)],
        )
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
    client
        .append_to_stream(
            "s",
            &AppendToStreamOptions::default(),
            vec![json_event("E", 1)],
        )
        .await
        .expect("append after restart");
    // The client resubscribes after the last event it saw: no repeat of revision 0.
    assert_eq!(next_event(&mut sub).await.get_original_event().revision, 1);
    assert_eq!(read_stream(&client, "s").await.expect("read").len(), 2);
}

#[tokio::test]
async fn stopping_ends_subscriptions_with_an_error_not_ok() {
    let (server, client) = server_and_client().await;
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
    client
        .append_to_stream(
            "s",
            &AppendToStreamOptions::default(),
            vec![json_event("E", 0)],
        )
        .await
        .expect("append after dropped connections");
}

#[tokio::test]
async fn injected_append_failures_and_pause() {
    let (server, client) = server_and_client().await;
    let faults = server.faults();
    faults.fail_next_appends(2);
    for _ in 0..2 {
        let error = client
            .append_to_stream(
                "s",
                &AppendToStreamOptions::default(),
                vec![json_event("E", 0)],
            )
            .await
            .expect_err("injected failure");
        assert!(matches!(error, Error::ServerError(_)), "{error:?}");
    }
    client
        .append_to_stream(
            "s",
            &AppendToStreamOptions::default(),
            vec![json_event("E", 0)],
        )
        .await
        .expect("third append succeeds");
    assert_eq!(
        read_stream(&client, "s").await.expect("read").len(),
        1,
        "failed appends wrote nothing"
    );

    faults.pause();
    let paused_client = client.clone();
    let mut append = tokio::spawn(async move {
        paused_client
            .append_to_stream(
                "s",
                &AppendToStreamOptions::default(),
                vec![json_event("E", 1)],
            )
            .await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut append)
            .await
            .is_err(),
        "no reply while paused"
    );
    faults.resume();
    append.await.expect("task").expect("append after resume");
}

#[tokio::test]
async fn batch_append_writes_and_reports_errors() {
    let (_server, client) = server_and_client().await;
    let batch = client
        .batch_append(&BatchAppendOptions::default())
        .await
        .expect("batch client");
    let written = batch
        .append_to_stream(
            "b",
            ExpectedRevision::NoStream,
            vec![json_event("E", 0), json_event("E", 1)],
        )
        .await
        .expect("batch append");
    assert_eq!(written.current_revision(), Some(1));
    assert!(written.current_position().is_some());
    let error = batch
        .append_to_stream("b", ExpectedRevision::NoStream, vec![json_event("E", 2)])
        .await
        .expect_err("stream exists");
    assert!(
        matches!(
            error,
            Error::Grpc {
                code: tonic::Code::FailedPrecondition,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(read_stream(&client, "b").await.expect("read").len(), 2);
}

#[tokio::test]
async fn cluster_connection_string_discovers_through_gossip() {
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
    let client = client_for(&seeds);
    client
        .append_to_stream(
            "c",
            &AppendToStreamOptions::default(),
            vec![json_event("E", 0)],
        )
        .await
        .expect("append through a cluster connection string");
    assert_eq!(read_stream(&client, "c").await.expect("read").len(), 1);
    // The other server saw nothing: gossip pointed the client at the first one.
    let direct = client_for(&other.connection_string());
    assert!(matches!(
        read_stream(&direct, "c").await,
        Err(Error::ResourceNotFound)
    ));
    hang_up.abort();
}

#[tokio::test]
async fn links_resolve_on_request() {
    let (_server, client) = server_and_client().await;
    client
        .append_to_stream(
            "target",
            &AppendToStreamOptions::default(),
            vec![json_event("E", 0)],
        )
        .await
        .expect("append");
    let link = eventstore::EventData::binary("$>", bytes::Bytes::from_static(b"0@target"));
    client
        .append_to_stream("$ce-links", &AppendToStreamOptions::default(), vec![link])
        .await
        .expect("append link");
    let options = eventstore::ReadStreamOptions::default()
        .resolve_link_tos()
        .max_count(10);
    let mut reader = client
        .read_stream("$ce-links", &options)
        .await
        .expect("read");
    let resolved = reader.next().await.expect("next").expect("one event");
    assert_eq!(resolved.get_original_event().event_type, "$>");
    let event = resolved.event.as_ref().expect("resolved target");
    assert_eq!((event.stream_id.as_str(), event.revision), ("target", 0));
    let all = read_all(&client).await;
    assert!(
        all.iter().all(|e| e.link.is_none()),
        "$all without resolve_links returns the links themselves"
    );
}

#[tokio::test]
async fn large_events_round_trip() {
    let (_server, client) = server_and_client().await;
    let data = bytes::Bytes::from(vec![7u8; 3 * 1024 * 1024 / 2]);
    client
        .append_to_stream(
            "big",
            &AppendToStreamOptions::default(),
            vec![eventstore::EventData::binary("Big", data.clone())],
        )
        .await
        .expect("append 1.5 MiB");
    let events = read_stream(&client, "big").await.expect("read");
    assert_eq!(events[0].get_original_event().data, data);
}

#[tokio::test]
async fn latency_options_delay_replies() {
    let server = EsdbServer::start_with(ServerOptions {
        append_latency: Duration::from_millis(200),
        ..ServerOptions::default()
    })
    .await
    .expect("server");
    let client = client_for(&server.connection_string());
    let started = std::time::Instant::now();
    client
        .append_to_stream(
            "s",
            &AppendToStreamOptions::default(),
            vec![json_event("E", 0)],
        )
        .await
        .expect("append");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the configured latency applies"
    );
}

#[tokio::test]
async fn binary_serves_a_client_from_another_process() {
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
        let client = client_for(connection_string);
        client
            .append_to_stream(
                "remote",
                &AppendToStreamOptions::default(),
                vec![json_event("E", 0)],
            )
            .await
            .expect("append to the child");
        let all = read_all(&client).await;
        assert_eq!(all.len(), 1);
    };
    let outcome = tokio::time::timeout(Duration::from_secs(30), result).await;
    let _ = child.kill();
    let _ = child.wait();
    outcome.expect("child answered in time");
}
