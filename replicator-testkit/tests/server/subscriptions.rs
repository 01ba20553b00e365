//! Catch-up subscriptions: confirmation, catch-up strictly after the start, caught-up,
//! live events, filters with checkpoints.

use std::time::Duration;

use eventstore::{
    AppendToStreamOptions, Client, StreamPosition, SubscribeToAllOptions, SubscribeToStreamOptions,
    Subscription, SubscriptionEvent, SubscriptionFilter,
};

use crate::common::{append_one, json_event, Fixture};

/// Next subscription message, failing the test instead of hanging.
pub async fn next(sub: &mut Subscription) -> SubscriptionEvent {
    tokio::time::timeout(Duration::from_secs(10), sub.next_subscription_event())
        .await
        .expect("subscription message within 10 s")
        .expect("subscription message")
}

/// Next event, skipping other messages.
pub async fn next_event(sub: &mut Subscription) -> eventstore::ResolvedEvent {
    loop {
        if let SubscriptionEvent::EventAppeared(e) = next(sub).await {
            return e;
        }
    }
}

async fn append(client: &Client, stream: &str, n: u64) {
    append_one(client, stream, json_event("E", n))
        .await
        .expect("append");
}

#[tokio::test]
async fn all_subscription_from_position_catches_up_then_goes_live() {
    let f = Fixture::new().await;
    let client = &f.client;
    let a = f.stream("a");
    for n in 0..3 {
        append(client, &a, n).await;
    }
    let all = f.all().await;
    let first = all[0].get_original_event().position;

    let options = SubscribeToAllOptions::default().position(StreamPosition::Position(first));
    let mut sub = client.subscribe_to_all(&options).await;
    assert!(matches!(
        next(&mut sub).await,
        SubscriptionEvent::Confirmed(_)
    ));
    // Strictly after the start position: revisions 1 and 2, not 0.
    let mut seen = Vec::new();
    loop {
        match next(&mut sub).await {
            SubscriptionEvent::EventAppeared(e) => seen.push(e.get_original_event().revision),
            SubscriptionEvent::CaughtUp => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, [1, 2]);
    append(client, &a, 3).await;
    assert_eq!(next_event(&mut sub).await.get_original_event().revision, 3);
}

#[tokio::test]
async fn stream_subscription_sees_only_its_stream() {
    let f = Fixture::new().await;
    let client = &f.client;
    let (x, y) = (f.stream("x"), f.stream("y"));
    append(client, &x, 0).await;
    append(client, &y, 0).await;
    let mut sub = client
        .subscribe_to_stream(
            x.as_str(),
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Start),
        )
        .await;
    let first = next_event(&mut sub).await;
    let first = first.get_original_event();
    assert_eq!((first.stream_id.as_str(), first.revision), (x.as_str(), 0));
    append(client, &y, 1).await;
    append(client, &x, 1).await;
    let second = next_event(&mut sub).await;
    let second = second.get_original_event();
    assert_eq!(
        (second.stream_id.as_str(), second.revision),
        (x.as_str(), 1)
    );
}

#[tokio::test]
async fn filtered_subscription_sends_matches_and_checkpoints() {
    let f = Fixture::new().await;
    let client = &f.client;
    let (keep, drop) = (f.stream("keep-1"), f.stream("drop-1"));
    for n in 0..40 {
        let stream = if n % 10 == 0 { &keep } else { &drop };
        append(client, stream, n).await;
    }
    let filter = SubscriptionFilter::on_stream_name()
        .add_prefix(f.stream("keep-"))
        .max(8);
    // From where the test began: on a fresh server, the start of $all.
    let mut sub = client
        .subscribe_to_all(
            &SubscribeToAllOptions::default()
                .position(f.start())
                .filter(filter),
        )
        .await;
    let mut events = Vec::new();
    let mut checkpoints = 0;
    loop {
        match next(&mut sub).await {
            SubscriptionEvent::EventAppeared(e) => {
                events.push(e.get_original_event().stream_id.clone())
            }
            SubscriptionEvent::Checkpoint(_) => checkpoints += 1,
            SubscriptionEvent::CaughtUp => break,
            _ => {}
        }
    }
    assert_eq!(events, [keep.as_str(); 4]);
    assert_eq!(checkpoints, 5, "one checkpoint per 8 events considered");

    let by_type = SubscriptionFilter::on_event_type().regex("^Sp[a-z]+$");
    let mut sub = client
        .subscribe_to_all(
            &SubscribeToAllOptions::default()
                .position(StreamPosition::End)
                .filter(by_type),
        )
        .await;
    assert!(matches!(
        next(&mut sub).await,
        SubscriptionEvent::Confirmed(_)
    ));
    client
        .append_to_stream(
            f.stream("z"),
            &AppendToStreamOptions::default(),
            vec![json_event("Other", 1), json_event("Special", 2)],
        )
        .await
        .expect("append");
    let e = next_event(&mut sub).await;
    assert_eq!(e.get_original_event().event_type, "Special");
}
