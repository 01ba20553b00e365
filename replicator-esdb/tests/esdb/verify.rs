//! `replicator_esdb::verify`'s order check against two servers: the same
//! events written in another cross-stream order name the first pair, with
//! both sides' positions; events on one side only are not order differences;
//! a replication in source order keeps the order.

use std::collections::HashMap;

use eventstore::{AppendToStreamOptions, Client, EventData, ReadAllOptions};
use replicator_core::memory::MemoryCheckpointStore;
use replicator_core::Position;
use replicator_esdb::verify::{verify, OrderedEvent, VerifyOptions};
use uuid::Uuid;

use crate::common::{client, populate, reads, replicate, source, target};

async fn append(client: &Client, stream: &str, id: Uuid) {
    let event = EventData::binary("Tested", id.to_string().into_bytes().into()).id(id);
    client
        .append_to_stream(stream, &AppendToStreamOptions::default(), event)
        .await
        .unwrap();
}

/// Where each event id is in a server's `$all`.
async fn positions(client: &Client) -> HashMap<Uuid, Position> {
    let options = ReadAllOptions::default().max_count(usize::MAX);
    let mut reader = client.read_all(&options).await.unwrap();
    let mut positions = HashMap::new();
    while let Some(event) = reader.next().await.unwrap() {
        let record = event.get_original_event();
        positions.insert(
            record.id,
            Position {
                commit: record.position.commit,
                prepare: record.position.prepare,
            },
        );
    }
    positions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_pair_in_another_order_is_named_with_both_positions() {
    let (source, target) = (source().await, target().await);
    let (s, t) = (
        client(&source.connection_string()),
        client(&target.connection_string()),
    );
    let (rs, rt) = (
        reads(&source.connection_string()),
        reads(&target.connection_string()),
    );
    let [a1, a2, b1, b2, only_source, only_target] = [(); 6].map(|()| Uuid::new_v4());
    // The source: a1 b1 (a missing one) a2 b2. The target: (an extra one)
    // a1 b1 b2 a2. Each stream holds its events in the same order on both.
    for (stream, id) in [
        ("order-a", a1),
        ("order-b", b1),
        ("gone", only_source),
        ("order-a", a2),
        ("order-b", b2),
    ] {
        append(&s, stream, id).await;
    }
    for (stream, id) in [
        ("extra", only_target),
        ("order-a", a1),
        ("order-b", b1),
        ("order-b", b2),
        ("order-a", a2),
    ] {
        append(&t, stream, id).await;
    }
    let (at_source, at_target) = (positions(&s).await, positions(&t).await);

    let report = verify(&rs, &rt, &VerifyOptions::default()).await.unwrap();
    assert!(report.order_checked);
    let order = report.order.as_ref().expect("an order difference");
    let event = |stream: &str, id: Uuid| OrderedEvent {
        stream: stream.to_owned(),
        id,
        source_position: at_source[&id],
        target_position: at_target[&id],
    };
    assert_eq!(order.first, event("order-a", a2), "{report}");
    assert_eq!(order.second, event("order-b", b2), "{report}");
    // The events on one side only are the stream comparison's: one missing
    // stream, one extra, no order difference.
    assert_eq!(report.differences, 2, "{report}");
    assert!(!report.is_identical());
    let text = report.to_string();
    assert!(
        text.contains(&format!(
            "order differs: source has {a2} (\"order-a\", {}) before {b2} (\"order-b\", {}); \
             the target has {b2} at {} before {a2} at {}",
            at_source[&a2], at_source[&b2], at_target[&b2], at_target[&a2]
        )),
        "{text}"
    );

    // Not checked: only the one-sided streams differ.
    let options = VerifyOptions {
        check_order: false,
        ..VerifyOptions::default()
    };
    let report = verify(&rs, &rt, &options).await.unwrap();
    assert!(!report.order_checked && report.order.is_none(), "{report}");
    assert!(report.to_string().contains("order not checked"), "{report}");

    // Without the one-sided streams and with a window of one event (no
    // look-ahead), the swapped pair is further apart than the window: taken
    // as missing and extra, not as an order difference.
    let options = VerifyOptions {
        stream_prefix: "order-".to_owned(),
        order_window: 1,
        ..VerifyOptions::default()
    };
    let report = verify(&rs, &rt, &options).await.unwrap();
    assert!(report.order_checked && report.order.is_none(), "{report}");
    let options = VerifyOptions {
        order_window: 2,
        ..options
    };
    let report = verify(&rs, &rt, &options).await.unwrap();
    assert!(report.order.is_some(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_in_source_order_keeps_the_order() {
    let (source, target) = (source().await, target().await);
    populate(&client(&source.connection_string()), 7, 600).await;
    let store = MemoryCheckpointStore::new();
    replicate(&source, &target, &store, 100).await;
    let report = verify(
        &reads(&source.connection_string()),
        &reads(&target.connection_string()),
        &VerifyOptions::default(),
    )
    .await
    .unwrap();
    assert!(report.order_checked, "{report}");
    assert!(report.is_identical(), "{report}");
    assert!(report.source_events > 100, "{report}");
}
