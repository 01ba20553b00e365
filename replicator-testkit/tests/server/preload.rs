//! `EsdbServer::preload`: events put straight into the store read, subscribe and
//! append as if a client had appended them. Always against an in-process server.

use bytes::Bytes;
use eventstore::{
    AppendToStreamOptions, EventData, ExpectedRevision, ReadStreamOptions, StreamPosition,
    SubscribeToStreamOptions,
};
use replicator_testkit::support;
use replicator_testkit::{EsdbServer, PreloadEvent};
use uuid::Uuid;

use crate::subscriptions::next_event;

fn event(n: u128) -> PreloadEvent {
    PreloadEvent {
        id: Uuid::from_u128(n),
        event_type: "Preloaded".to_owned(),
        is_json: true,
        data: Bytes::from(format!("{{\"n\":{n}}}")),
        custom_metadata: Bytes::from_static(b"meta"),
    }
}

#[tokio::test]
async fn preloaded_events_read_as_appended_ones() {
    let server = EsdbServer::start().await.expect("server");
    assert_eq!(server.preload("s", (1..=3).map(event)), Some(2));
    // Appending the same ids again is an idempotent repeat, as over gRPC.
    assert_eq!(server.preload("s", (1..=3).map(event)), Some(2));
    let client = support::client(&server.connection_string());
    let mut read = client
        .read_stream("s", &ReadStreamOptions::default())
        .await
        .expect("read");
    let mut seen = Vec::new();
    while let Some(resolved) = read.next().await.expect("next") {
        let recorded = resolved.get_original_event();
        seen.push((
            recorded.revision,
            recorded.id,
            recorded.event_type.clone(),
            recorded.is_json,
            recorded.data.clone(),
            recorded.custom_metadata.clone(),
        ));
    }
    let expected: Vec<_> = (1..=3u128)
        .map(|n| {
            let e = event(n);
            (
                n as u64 - 1,
                e.id,
                e.event_type,
                true,
                e.data,
                e.custom_metadata,
            )
        })
        .collect();
    assert_eq!(seen, expected);
    // A client's append continues the stream where the preload left it.
    let written = client
        .append_to_stream(
            "s",
            &AppendToStreamOptions::default().expected_revision(ExpectedRevision::Exact(2)),
            EventData::binary("Appended", Bytes::from_static(b"x")),
        )
        .await
        .expect("append after preload");
    assert_eq!(written.next_expected_version, 3);
}

#[tokio::test]
async fn a_live_subscription_sees_preloaded_events() {
    let server = EsdbServer::start().await.expect("server");
    let client = support::client(&server.connection_string());
    client
        .append_to_stream(
            "live",
            &AppendToStreamOptions::default(),
            EventData::binary("Appended", Bytes::from_static(b"x")),
        )
        .await
        .expect("append");
    let mut subscription = client
        .subscribe_to_stream(
            "live",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Start),
        )
        .await;
    let first = next_event(&mut subscription).await;
    assert_eq!(first.get_original_event().revision, 0);
    // The subscription has read all there was: only the preload can wake it.
    server.preload("live", [event(7)]);
    let second = next_event(&mut subscription).await;
    assert_eq!(second.get_original_event().id, Uuid::from_u128(7));
    assert_eq!(second.get_original_event().revision, 1);
}

#[tokio::test]
async fn a_tombstoned_stream_takes_no_preloaded_events() {
    let server = EsdbServer::start().await.expect("server");
    server.preload("gone", [event(1)]);
    let client = support::client(&server.connection_string());
    client
        .tombstone_stream("gone", &Default::default())
        .await
        .expect("tombstone");
    assert_eq!(server.preload("gone", [event(2)]), None);
}
