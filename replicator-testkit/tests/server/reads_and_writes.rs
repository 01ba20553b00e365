//! Appends, batch appends, reads of streams and `$all`, positions, links, large events.

use eventstore::{
    AppendToStreamOptions, BatchAppendOptions, Error, ExpectedRevision, ReadAllOptions,
    StreamPosition,
};

use crate::common::{json_event, read_stream, Fixture};

#[tokio::test]
async fn append_then_read_stream_and_all() {
    let f = Fixture::new().await;
    let client = &f.client;
    let stream = f.stream("orders-1");
    let options = AppendToStreamOptions::default().expected_revision(ExpectedRevision::NoStream);
    let result = client
        .append_to_stream(
            stream.as_str(),
            &options,
            vec![json_event("Placed", 1), json_event("Paid", 2)],
        )
        .await
        .expect("append");
    assert_eq!(result.next_expected_version, 1);

    let events = read_stream(client, &stream).await.expect("read");
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

    let all = f.all().await;
    assert_eq!(all.len(), 2);
    assert!(all
        .iter()
        .all(|e| e.get_original_event().stream_id == stream));
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
    let f = Fixture::new().await;
    let client = &f.client;
    let stream = f.stream("s");
    for n in 0..5 {
        client
            .append_to_stream(
                stream.as_str(),
                &AppendToStreamOptions::default(),
                vec![json_event("E", n)],
            )
            .await
            .expect("append");
    }
    let all = f.all().await;
    let third = all[2].get_original_event().position;
    let mut reader = client
        .read_all(
            &ReadAllOptions::default()
                .position(StreamPosition::Position(third))
                .max_count(10),
        )
        .await
        .expect("read");
    let mut read = Vec::new();
    while let Some(e) = reader.next().await.expect("next") {
        let e = e.get_original_event();
        read.push((e.stream_id.clone(), e.revision));
    }
    let ours = |revisions: &[u64]| -> Vec<(String, u64)> {
        revisions.iter().map(|&r| (stream.clone(), r)).collect()
    };
    assert_eq!(read, ours(&[2, 3, 4]));

    let mut reader = client
        .read_all(
            &ReadAllOptions::default()
                .backwards()
                .position(StreamPosition::End)
                .max_count(2),
        )
        .await
        .expect("read");
    let mut read = Vec::new();
    while let Some(e) = reader.next().await.expect("next") {
        let e = e.get_original_event();
        read.push((e.stream_id.clone(), e.revision));
    }
    assert_eq!(read, ours(&[4, 3]));
}

#[tokio::test]
async fn batch_append_writes_and_reports_errors() {
    let f = Fixture::new().await;
    let stream = f.stream("b");
    let batch = f
        .client
        .batch_append(&BatchAppendOptions::default())
        .await
        .expect("batch client");
    let written = batch
        .append_to_stream(
            stream.as_str(),
            ExpectedRevision::NoStream,
            vec![json_event("E", 0), json_event("E", 1)],
        )
        .await
        .expect("batch append");
    assert_eq!(written.current_revision(), Some(1));
    assert!(written.current_position().is_some());
    let error = batch
        .append_to_stream(
            stream.as_str(),
            ExpectedRevision::NoStream,
            vec![json_event("E", 2)],
        )
        .await
        .expect_err("stream exists");
    // The real server's batch-append error for a wrong expected version:
    // `AlreadyExists`, message `WrongExpectedVersion` (the typed details, which
    // this client drops, are checked in `errors_and_deletes`).
    assert!(
        matches!(
            &error,
            Error::Grpc {
                code: tonic::Code::AlreadyExists,
                message,
            } if message == "WrongExpectedVersion"
        ),
        "{error:?}"
    );
    assert_eq!(
        read_stream(&f.client, &stream).await.expect("read").len(),
        2
    );
}

#[tokio::test]
async fn links_resolve_on_request() {
    let f = Fixture::new().await;
    let client = &f.client;
    let target = f.stream("target");
    let links = format!("$ce-{}", f.stream("links"));
    client
        .append_to_stream(
            target.as_str(),
            &AppendToStreamOptions::default(),
            vec![json_event("E", 0)],
        )
        .await
        .expect("append");
    let link = eventstore::EventData::binary("$>", format!("0@{target}").into());
    client
        .append_to_stream(
            links.as_str(),
            &AppendToStreamOptions::default(),
            vec![link],
        )
        .await
        .expect("append link");
    let options = eventstore::ReadStreamOptions::default()
        .resolve_link_tos()
        .max_count(10);
    let mut reader = client
        .read_stream(links.as_str(), &options)
        .await
        .expect("read");
    let resolved = reader.next().await.expect("next").expect("one event");
    assert_eq!(resolved.get_original_event().event_type, "$>");
    let event = resolved.event.as_ref().expect("resolved target");
    assert_eq!(
        (event.stream_id.as_str(), event.revision),
        (target.as_str(), 0)
    );
    let all = f.all().await;
    assert_eq!(all.len(), 2);
    assert!(
        all.iter().all(|e| e.link.is_none()),
        "$all without resolve_links returns the links themselves"
    );
}

#[tokio::test]
async fn large_events_round_trip() {
    let f = Fixture::new().await;
    let stream = f.stream("big");
    // The largest event a server with the default maximum append size (1 MiB:
    // data + metadata + 2 x the type's length) takes; one byte more fails.
    let data = bytes::Bytes::from(vec![7u8; 1024 * 1024 - 2 * "Big".len()]);
    f.client
        .append_to_stream(
            stream.as_str(),
            &AppendToStreamOptions::default(),
            vec![eventstore::EventData::binary("Big", data.clone())],
        )
        .await
        .expect("append 1 MiB");
    let events = read_stream(&f.client, &stream).await.expect("read");
    assert_eq!(events[0].get_original_event().data, data);

    let too_large = bytes::Bytes::from(vec![7u8; 1024 * 1024 - 2 * "Big".len() + 1]);
    let error = f
        .client
        .append_to_stream(
            stream.as_str(),
            &AppendToStreamOptions::default(),
            vec![eventstore::EventData::binary("Big", too_large)],
        )
        .await
        .expect_err("one byte over the maximum append size");
    assert!(
        matches!(
            &error,
            Error::Grpc { code: tonic::Code::InvalidArgument, message }
                if message == "Maximum Append Size of 1048576 Exceeded."
        ),
        "{error:?}"
    );
    assert_eq!(
        read_stream(&f.client, &stream).await.expect("read").len(),
        1
    );
}
