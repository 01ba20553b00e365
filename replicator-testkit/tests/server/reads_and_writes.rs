//! Appends, reads of streams and `$all`, positions.

use eventstore::{AppendToStreamOptions, ExpectedRevision, ReadAllOptions, StreamPosition};

use crate::common::{json_event, read_all, read_stream, server_and_client};

#[tokio::test]
async fn append_then_read_stream_and_all() {
    let (_server, client) = server_and_client().await;
    let options = AppendToStreamOptions::default().expected_revision(ExpectedRevision::NoStream);
    let result = client
        .append_to_stream(
            "orders-1",
            &options,
            vec![json_event("Placed", 1), json_event("Paid", 2)],
        )
        .await
        .expect("append");
    assert_eq!(result.next_expected_version, 1);

    let events = read_stream(&client, "orders-1").await.expect("read");
    let types: Vec<_> = events
        .iter()
        .map(|e| e.get_original_event().event_type.clone())
        .collect();
    assert_eq!(types, ["Placed", "Paid"]);
    let revisions: Vec<_> = events
        .iter()
        .map(|e| e.get_original_event().revision)
        .collect();
    assert_eq!(revisions, [0, 1]);
    assert!(events[0].get_original_event().is_json);

    let all = read_all(&client).await;
    assert_eq!(all.len(), 2);
    let p0 = all[0].get_original_event().position;
    let p1 = all[1].get_original_event().position;
    assert_eq!(p0.commit, p0.prepare);
    assert!(
        p1.commit > p0.commit + 1,
        "positions must advance by more than one: {p0:?} {p1:?}"
    );
    assert_eq!(result.position, p1);
}

#[tokio::test]
async fn read_all_from_position_is_inclusive_and_backwards_works() {
    let (_server, client) = server_and_client().await;
    for n in 0..5 {
        client
            .append_to_stream(
                "s",
                &AppendToStreamOptions::default(),
                vec![json_event("E", n)],
            )
            .await
            .expect("append");
    }
    let all = read_all(&client).await;
    let third = all[2].get_original_event().position;
    let mut reader = client
        .read_all(
            &ReadAllOptions::default()
                .position(StreamPosition::Position(third))
                .max_count(10),
        )
        .await
        .expect("read");
    let mut revisions = Vec::new();
    while let Some(e) = reader.next().await.expect("next") {
        revisions.push(e.get_original_event().revision);
    }
    assert_eq!(revisions, [2, 3, 4]);

    let mut reader = client
        .read_all(
            &ReadAllOptions::default()
                .backwards()
                .position(StreamPosition::End)
                .max_count(2),
        )
        .await
        .expect("read");
    let mut revisions = Vec::new();
    while let Some(e) = reader.next().await.expect("next") {
        revisions.push(e.get_original_event().revision);
    }
    assert_eq!(revisions, [4, 3]);
}
