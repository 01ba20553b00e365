//! Expected revisions, idempotent appends, soft delete and revival, tombstones, stream
//! metadata, and the client errors each one maps to.

use eventstore::{
    AppendToStreamOptions, CurrentRevision, DeleteStreamOptions, Error, ExpectedRevision,
    ReadStreamOptions, StreamPosition, TombstoneStreamOptions,
};

use crate::common::{json_event, read_stream, Fixture};

fn expect(revision: ExpectedRevision) -> AppendToStreamOptions {
    AppendToStreamOptions::default().expected_revision(revision)
}

#[tokio::test]
async fn wrong_expected_version_reports_current_and_expected() {
    let f = Fixture::new().await;
    let client = &f.client;
    let s = f.stream("s");
    client
        .append_to_stream(
            s.as_str(),
            &expect(ExpectedRevision::NoStream),
            vec![json_event("E", 0)],
        )
        .await
        .expect("first append");
    let error = client
        .append_to_stream(
            s.as_str(),
            &expect(ExpectedRevision::Exact(7)),
            vec![json_event("E", 1)],
        )
        .await
        .expect_err("stale revision must fail");
    match error {
        Error::WrongExpectedVersion { current, expected } => {
            assert_eq!(current, CurrentRevision::Current(0));
            assert_eq!(expected, ExpectedRevision::Exact(7));
        }
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    }
    let error = client
        .append_to_stream(
            f.stream("missing"),
            &expect(ExpectedRevision::StreamExists),
            vec![json_event("E", 1)],
        )
        .await
        .expect_err("stream does not exist");
    assert!(matches!(
        error,
        Error::WrongExpectedVersion {
            current: CurrentRevision::NoStream,
            ..
        }
    ));
}

#[tokio::test]
async fn repeating_an_append_with_the_same_ids_is_idempotent() {
    let f = Fixture::new().await;
    let client = &f.client;
    let s = f.stream("s");
    let events = vec![
        json_event("E", 0).id(uuid::Uuid::new_v4()),
        json_event("E", 1).id(uuid::Uuid::new_v4()),
    ];
    let first = client
        .append_to_stream(
            s.as_str(),
            &expect(ExpectedRevision::NoStream),
            events.clone(),
        )
        .await
        .expect("append");
    let again = client
        .append_to_stream(
            s.as_str(),
            &expect(ExpectedRevision::NoStream),
            events.clone(),
        )
        .await
        .expect("idempotent repeat succeeds");
    assert_eq!(first.next_expected_version, again.next_expected_version);
    assert_eq!(first.position, again.position);
    let any = client
        .append_to_stream(s.as_str(), &expect(ExpectedRevision::Any), events)
        .await
        .expect("repeat with Any");
    assert_eq!(any.next_expected_version, 1);
    assert_eq!(read_stream(client, &s).await.expect("read").len(), 2);
}

#[tokio::test]
async fn missing_stream_is_not_found() {
    let f = Fixture::new().await;
    let client = &f.client;
    let error = read_stream(client, &f.stream("nothing-here"))
        .await
        .expect_err("not found");
    assert!(matches!(error, Error::ResourceNotFound), "{error:?}");
}

#[tokio::test]
async fn soft_delete_hides_the_stream_until_an_append_revives_it() {
    let f = Fixture::new().await;
    let client = &f.client;
    let s = f.stream("s");
    client
        .append_to_stream(
            s.as_str(),
            &expect(ExpectedRevision::NoStream),
            vec![json_event("E", 0), json_event("E", 1)],
        )
        .await
        .expect("append");
    let error = client
        .delete_stream(
            s.as_str(),
            &DeleteStreamOptions::default().expected_revision(ExpectedRevision::Exact(5)),
        )
        .await
        .expect_err("wrong revision on delete");
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
    client
        .delete_stream(
            s.as_str(),
            &DeleteStreamOptions::default().expected_revision(ExpectedRevision::Exact(1)),
        )
        .await
        .expect("delete");
    assert!(matches!(
        read_stream(client, &s).await,
        Err(Error::ResourceNotFound)
    ));
    // The metadata stream says `$tb` = i64::MAX.
    let meta = read_stream(client, &format!("$${s}"))
        .await
        .expect("metastream");
    let body: serde_json::Value =
        serde_json::from_slice(&meta[0].get_original_event().data).expect("json");
    assert_eq!(body, serde_json::json!({ "$tb": i64::MAX }));

    let revived = client
        .append_to_stream(
            s.as_str(),
            &expect(ExpectedRevision::NoStream),
            vec![json_event("E", 2)],
        )
        .await
        .expect("append revives");
    assert_eq!(revived.next_expected_version, 2, "revisions continue");
    let events = read_stream(client, &s).await.expect("read revived");
    let revisions: Vec<_> = events
        .iter()
        .map(|e| e.get_original_event().revision)
        .collect();
    assert_eq!(revisions, [2]);
}

#[tokio::test]
async fn tombstone_is_visible_in_all_and_blocks_the_stream() {
    let f = Fixture::new().await;
    let client = &f.client;
    let s = f.stream("s");
    client
        .append_to_stream(
            s.as_str(),
            &AppendToStreamOptions::default(),
            vec![json_event("E", 0)],
        )
        .await
        .expect("append");
    client
        .tombstone_stream(s.as_str(), &TombstoneStreamOptions::default())
        .await
        .expect("tombstone");
    let all = f.all().await;
    let last = all.last().expect("events").get_original_event();
    assert_eq!(
        (last.stream_id.as_str(), last.event_type.as_str()),
        (s.as_str(), "$streamDeleted")
    );
    assert_eq!(last.revision, i64::MAX as u64);
    assert!(matches!(
        read_stream(client, &s).await,
        Err(Error::ResourceDeleted)
    ));
    let error = client
        .append_to_stream(
            s.as_str(),
            &AppendToStreamOptions::default(),
            vec![json_event("E", 1)],
        )
        .await
        .expect_err("append to tombstoned");
    assert!(matches!(error, Error::ResourceDeleted), "{error:?}");
    let error = client
        .tombstone_stream(s.as_str(), &TombstoneStreamOptions::default())
        .await
        .expect_err("second tombstone");
    assert!(matches!(error, Error::ResourceDeleted), "{error:?}");
}

#[tokio::test]
async fn stream_metadata_round_trips_and_max_count_truncates_reads() {
    let f = Fixture::new().await;
    let client = &f.client;
    let s = f.stream("s");
    let events: Vec<_> = (0..5).map(|n| json_event("E", n)).collect();
    client
        .append_to_stream(s.as_str(), &AppendToStreamOptions::default(), events)
        .await
        .expect("append");
    let metadata = eventstore::StreamMetadata::builder()
        .max_count(2)
        .insert_custom_property("owner", "team-a")
        .build();
    client
        .set_stream_metadata(s.as_str(), &Default::default(), &metadata)
        .await
        .expect("set metadata");
    let read = client
        .get_stream_metadata(s.as_str(), &Default::default())
        .await
        .expect("get metadata");
    let eventstore::StreamMetadataResult::Success(found) = read else {
        panic!("metadata expected, got {read:?}");
    };
    assert_eq!(found.metadata().max_count, Some(2));
    let revisions: Vec<_> = read_stream(client, &s)
        .await
        .expect("read")
        .iter()
        .map(|e| e.get_original_event().revision)
        .collect();
    assert_eq!(revisions, [3, 4]);
    // Backwards from the end, one event: the newest.
    let mut reader = client
        .read_stream(
            s.as_str(),
            &ReadStreamOptions::default()
                .backwards()
                .position(StreamPosition::End)
                .max_count(1),
        )
        .await
        .expect("read");
    let newest = reader.next().await.expect("next").expect("an event");
    assert_eq!(newest.get_original_event().revision, 4);
}
