//! The PersistentSubscriptions service through the real `eventstore` client
//! (which uses gRPC only because the server advertises the service in
//! ServerFeatures; otherwise it would try the HTTP API the testkit does not
//! serve), and what the server persists: group definitions in
//! `$persistentSubscriptionConfig`, checkpoints in their own streams, both read
//! again after a restart. In-process servers of their own (restarts, users).

use std::time::Duration;

use eventstore::{
    Client, DeletePersistentSubscriptionOptions, Error, EventData,
    GetPersistentSubscriptionInfoOptions, ListPersistentSubscriptionsOptions,
    PersistentSubscriptionOptions, PersistentSubscriptionToAllOptions, ReadStreamOptions,
    StreamPosition, SubscribeToPersistentSubscriptionOptions, SubscriptionFilter,
    SystemConsumerStrategy,
};
use replicator_testkit::security::User;
use replicator_testkit::support::{self, python};
use replicator_testkit::{EsdbServer, ServerOptions};

const WAIT: Duration = Duration::from_secs(20);

async fn append(client: &Client, stream: &str, count: usize) {
    let events: Vec<EventData> = (0..count)
        .map(|n| EventData::json("Happened", &serde_json::json!({ "n": n })).expect("json"))
        .collect();
    client
        .append_to_stream(stream, &Default::default(), events)
        .await
        .expect("append");
}

/// The last event of `stream`, as (type, JSON data).
async fn last_event(client: &Client, stream: &str) -> Option<(String, serde_json::Value)> {
    let options = ReadStreamOptions::default()
        .position(StreamPosition::End)
        .backwards()
        .max_count(1);
    let mut read = client.read_stream(stream, &options).await.ok()?;
    let event = read.next().await.ok()??;
    let recorded = event.get_original_event();
    Some((
        recorded.event_type.clone(),
        serde_json::from_slice(&recorded.data).expect("JSON data"),
    ))
}

async fn stream_info(
    client: &Client,
    stream: &str,
    group: &str,
) -> eventstore::PersistentSubscriptionInfo<u64> {
    client
        .get_persistent_subscription_info(
            stream,
            group,
            &GetPersistentSubscriptionInfoOptions::default(),
        )
        .await
        .expect("get info")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_manages_groups_over_grpc_with_their_settings() {
    let server = EsdbServer::start().await.expect("server");
    let client = support::client(&server.connection_string());
    let options = PersistentSubscriptionOptions::default()
        .start_from(StreamPosition::Position(2))
        .message_timeout(Duration::from_millis(4_500))
        .checkpoint_after(Duration::from_millis(750))
        .checkpoint_lower_bound(3)
        .checkpoint_upper_bound(33)
        .max_retry_count(4)
        .max_subscriber_count(2)
        .consumer_strategy_name(SystemConsumerStrategy::DispatchToSingle);
    client
        .create_persistent_subscription("orders", "g1", &options)
        .await
        .expect("create over gRPC");
    let info = stream_info(&client, "orders", "g1").await;
    let settings = info.settings.expect("settings");
    assert_eq!(
        (info.event_source.as_str(), info.group_name.as_str()),
        ("orders", "g1")
    );
    assert_eq!(settings.start_from, StreamPosition::Position(2));
    assert_eq!(settings.message_timeout, Duration::from_millis(4_500));
    assert_eq!(settings.checkpoint_after, Duration::from_millis(750));
    assert_eq!(
        (
            settings.checkpoint_lower_bound,
            settings.checkpoint_upper_bound
        ),
        (3, 33)
    );
    assert_eq!(
        (settings.max_retry_count, settings.max_subscriber_count),
        (4, 2)
    );
    assert_eq!(
        settings.consumer_strategy_name,
        SystemConsumerStrategy::DispatchToSingle
    );

    let error = client
        .create_persistent_subscription("orders", "g1", &options)
        .await
        .expect_err("a second create");
    assert!(matches!(error, Error::ResourceAlreadyExists), "{error:?}");

    let all = PersistentSubscriptionToAllOptions::default().start_from(StreamPosition::Start);
    client
        .create_persistent_subscription_to_all("g2", &all)
        .await
        .expect("create a $all group");
    let listed = client
        .list_all_persistent_subscriptions(&ListPersistentSubscriptionsOptions::default())
        .await
        .expect("list");
    let mut names: Vec<(String, String)> = listed
        .into_iter()
        .map(|i| (i.event_source, i.group_name))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("$all".to_owned(), "g2".to_owned()),
            ("orders".to_owned(), "g1".to_owned())
        ]
    );

    client
        .delete_persistent_subscription(
            "orders",
            "g1",
            &DeletePersistentSubscriptionOptions::default(),
        )
        .await
        .expect("delete");
    let error = client
        .get_persistent_subscription_info(
            "orders",
            "g1",
            &GetPersistentSubscriptionInfoOptions::default(),
        )
        .await
        .expect_err("info of a deleted group");
    assert!(matches!(error, Error::ResourceNotFound), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_rewrites_the_group_definitions_in_the_config_stream() {
    let server = EsdbServer::start().await.expect("server");
    let client = support::client(&server.connection_string());
    client
        .create_persistent_subscription(
            "orders",
            "g1",
            &PersistentSubscriptionOptions::default()
                .start_from(StreamPosition::Start)
                .message_timeout(Duration::from_secs(12))
                .checkpoint_after(Duration::from_secs(3)),
        )
        .await
        .expect("create");
    let filter = SubscriptionFilter::on_stream_name()
        .add_prefix("orders-")
        .add_prefix("users-");
    client
        .create_persistent_subscription_to_all(
            "filtered",
            &PersistentSubscriptionToAllOptions::default()
                .start_from(StreamPosition::End)
                .filter(filter),
        )
        .await
        .expect("create filtered");

    let (kind, config) = last_event(&client, "$persistentSubscriptionConfig")
        .await
        .expect("a config event");
    assert_eq!(kind, "$PersistentConfig");
    assert_eq!(config["Version"], "2");
    let entries = config["Entries"].as_array().expect("entries");
    let entry = |group: &str| {
        entries
            .iter()
            .find(|e| e["Group"] == group)
            .unwrap_or_else(|| panic!("no entry for {group}: {config}"))
    };
    let stream = entry("g1");
    assert_eq!(stream["Stream"], "orders");
    assert_eq!(stream["MessageTimeout"], 12_000);
    assert_eq!(stream["CheckPointAfter"], 3_000);
    assert_eq!(stream["StartPosition"], "0");
    assert!(stream["Filter"].is_null());
    let all = entry("filtered");
    assert_eq!(all["Stream"], "$all");
    assert_eq!(all["StartPosition"], "C:-1/P:-1");
    assert_eq!(
        all["Filter"],
        serde_json::json!({"Context": "streamid", "Type": "prefix", "Data": "orders-,users-", "IsAllStream": true})
    );

    client
        .delete_persistent_subscription(
            "orders",
            "g1",
            &DeletePersistentSubscriptionOptions::default(),
        )
        .await
        .expect("delete");
    let (_, config) = last_event(&client, "$persistentSubscriptionConfig")
        .await
        .expect("a config event");
    let groups: Vec<&str> = config["Entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["Group"].as_str())
        .collect();
    assert_eq!(groups, ["filtered"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_stored_as_the_server_stores_them_and_a_restart_resumes_after_them() {
    let server = EsdbServer::start_with(ServerOptions {
        port: Some(support::free_port()),
        ..ServerOptions::default()
    })
    .await
    .expect("server");
    let client = support::client(&server.connection_string());
    append(&client, "orders", 6).await;
    client
        .create_persistent_subscription(
            "orders",
            "g1",
            &PersistentSubscriptionOptions::default()
                .start_from(StreamPosition::Start)
                .checkpoint_lower_bound(1)
                .checkpoint_after(Duration::from_millis(100)),
        )
        .await
        .expect("create");
    let mut sub = client
        .subscribe_to_persistent_subscription(
            "orders",
            "g1",
            &SubscribeToPersistentSubscriptionOptions::default(),
        )
        .await
        .expect("subscribe");
    for revision in 0..3 {
        let event = sub.next().await.expect("an event");
        assert_eq!(event.get_original_event().revision, revision);
        sub.ack(event).await.expect("ack");
    }
    let checkpoint = "$persistentsubscription-orders::g1-checkpoint";
    support::eventually("the checkpoint at revision 2", WAIT, || async {
        last_event(&client, checkpoint).await
            == Some(("$SubscriptionCheckpoint".to_owned(), serde_json::json!("2")))
    })
    .await;
    let (_, meta) = last_event(&client, &format!("$${checkpoint}"))
        .await
        .expect("metadata");
    assert_eq!(meta["$maxCount"], 2);
    assert_eq!(
        stream_info(&client, "orders", "g1")
            .await
            .stats
            .last_checkpointed_event_revision,
        Some(2)
    );
    drop(sub);

    server.restart().await.expect("restart");
    let client = support::client(&server.connection_string());
    let info = stream_info(&client, "orders", "g1").await;
    assert_eq!(
        info.stats.last_checkpointed_event_revision,
        Some(2),
        "the group and its checkpoint are loaded again"
    );
    let mut sub = client
        .subscribe_to_persistent_subscription(
            "orders",
            "g1",
            &SubscribeToPersistentSubscriptionOptions::default(),
        )
        .await
        .expect("subscribe after the restart");
    let event = sub.next().await.expect("an event");
    assert_eq!(
        event.get_original_event().revision,
        3,
        "resumes at the first event after the checkpoint"
    );

    client
        .delete_persistent_subscription(
            "orders",
            "g1",
            &DeletePersistentSubscriptionOptions::default(),
        )
        .await
        .expect("delete");
    assert_eq!(
        last_event(&client, checkpoint).await,
        None,
        "delete removes the checkpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_size_bounds_what_a_consumer_has_in_flight_and_dispatch_to_single_fills_one_first() {
    let server = EsdbServer::start().await.expect("server");
    let client = support::client(&server.connection_string());
    append(&client, "orders", 5).await;
    client
        .create_persistent_subscription(
            "orders",
            "g1",
            &PersistentSubscriptionOptions::default()
                .start_from(StreamPosition::Start)
                .consumer_strategy_name(SystemConsumerStrategy::DispatchToSingle),
        )
        .await
        .expect("create");
    let subscribe = |size| {
        let client = client.clone();
        async move {
            client
                .subscribe_to_persistent_subscription(
                    "orders",
                    "g1",
                    &SubscribeToPersistentSubscriptionOptions::default().buffer_size(size),
                )
                .await
                .expect("subscribe")
        }
    };
    let mut first = subscribe(3).await;
    support::eventually("3 events in flight to the first consumer", WAIT, || async {
        let info = stream_info(&client, "orders", "g1").await;
        info.stats.total_in_flight_messages == 3
            && info
                .connections
                .first()
                .is_some_and(|c| c.available_slots == 0)
    })
    .await;
    let _second = subscribe(10).await;
    // Two events left for the second consumer: its share is all of them, the
    // first one's stays at its buffer size.
    support::eventually("the other two to the second consumer", WAIT, || async {
        let info = stream_info(&client, "orders", "g1").await;
        let in_flight: Vec<usize> = info
            .connections
            .iter()
            .map(|c| c.in_flight_messages)
            .collect();
        in_flight == [3, 2]
    })
    .await;
    let event = first.next().await.expect("an event");
    assert_eq!(event.get_original_event().revision, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_starts_and_users_without_rights_are_refused() {
    let server = EsdbServer::start_with(ServerOptions {
        users: Some(vec![User::admin(), User::new("reader", "secret")]),
        ..ServerOptions::default()
    })
    .await
    .expect("server");
    let admin = support::client(&server.connection_string_with(Some(("admin", "changeit")), None));
    append(&admin, "orders", 1).await;
    let beyond = eventstore::Position {
        commit: 1 << 40,
        prepare: 1 << 40,
    };
    let error = admin
        .create_persistent_subscription_to_all(
            "late",
            &PersistentSubscriptionToAllOptions::default()
                .start_from(StreamPosition::Position(beyond)),
        )
        .await
        .expect_err("a start after the end of the log");
    // The client keeps an Internal status as its text.
    match error {
        Error::ServerError(message) => {
            assert!(message.contains("status: Internal"), "{message}");
            assert!(message.contains("Invalid Start From position"), "{message}");
        }
        other => panic!("expected Internal, got {other:?}"),
    }

    let reader = support::client(&server.connection_string_with(Some(("reader", "secret")), None));
    let error = reader
        .create_persistent_subscription("orders", "g1", &PersistentSubscriptionOptions::default())
        .await
        .expect_err("an ordinary user creating a group");
    assert!(matches!(error, Error::AccessDenied), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_tool_creates_consumes_and_waits_for_the_checkpoint() {
    let server = EsdbServer::start().await.expect("server");
    let url = server.connection_string();
    let client = support::client(&url);
    append(&client, "orders", 5).await;
    let created = python::subscriptions_tool(&[
        "create-stream",
        &url,
        "g1",
        "orders",
        "--from",
        "1",
        "--min-checkpoint",
        "1",
        "--checkpoint-after",
        "0.1",
    ])
    .await;
    assert_eq!(created["start_from"], "1");
    let consumed = python::subscriptions_tool(&[
        "consume",
        &url,
        "g1",
        "--stream",
        "orders",
        "--ack",
        "2",
        "--wait-checkpoint",
    ])
    .await;
    let revisions: Vec<u64> = consumed["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["revision"].as_u64().expect("a revision"))
        .collect();
    assert_eq!(revisions, [1, 2]);
    assert_eq!(consumed["checkpoint"], "2");
    let info = python::subscriptions_tool(&["info", &url, "g1", "--stream", "orders"]).await;
    assert_eq!(info["last_checkpointed_event_position"], "2");
    let missing = python::try_subscriptions_tool(&["info", &url, "nope", "--stream", "orders"])
        .await
        .expect_err("a missing group");
    assert_eq!(missing["error"], "NotFoundError");
}
