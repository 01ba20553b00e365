use super::memory::{ARENA_CHUNK, ARENA_LARGEST, SEGMENT};
use super::*;

fn event(id: u128) -> Proposed {
    Proposed {
        id: Uuid::from_u128(id),
        event_type: "t".to_owned(),
        content_type: JSON.to_owned(),
        data: Bytes::from_static(b"{}"),
        custom_metadata: Bytes::new(),
    }
}

fn success(outcome: &WriteOutcome) -> Option<u64> {
    match outcome {
        WriteOutcome::Success { current, .. } => *current,
        other => panic!("expected success, got {other:?}"),
    }
}

#[test]
fn positions_increase_with_gaps() {
    let mut store = Store::default();
    store.append("s", Expected::Any, vec![event(1), event(2)]);
    let a = store.log_slice(0, 1)[0].prepare_position;
    let b = store.log_slice(1, 1)[0].prepare_position;
    assert!(a > 0 && b > a + 1);
}

#[test]
fn repeated_append_is_idempotent() {
    let mut store = Store::default();
    let first = store.append("s", Expected::NoStream, vec![event(1), event(2)]);
    let again = store.append("s", Expected::NoStream, vec![event(1), event(2)]);
    assert_eq!(first, again);
    assert_eq!(store.len(), 2);
    let any = store.append("s", Expected::Any, vec![event(1), event(2)]);
    assert_eq!(success(&any), Some(1));
    assert_eq!(store.len(), 2);
}

#[test]
fn wrong_expected_revision_reports_current() {
    let mut store = Store::default();
    store.append("s", Expected::Any, vec![event(1)]);
    let outcome = store.append("s", Expected::Exact(5), vec![event(2)]);
    assert_eq!(
        outcome,
        WriteOutcome::WrongExpected {
            current: Some(0),
            expected: Expected::Exact(5)
        }
    );
}

#[test]
fn soft_delete_then_append_revives_with_continuing_revisions() {
    let mut store = Store::default();
    store.append("s", Expected::NoStream, vec![event(1), event(2)]);
    success(&store.soft_delete("s", Expected::Exact(1)));
    assert_eq!(store.readable("s"), Err(ReadFailure::NotFound));
    let revived = store.append("s", Expected::NoStream, vec![event(3)]);
    assert_eq!(success(&revived), Some(2));
    assert_eq!(store.readable("s"), Ok(2..3));
    assert_eq!(store.meta("s").unwrap().truncate_before, Some(2));
}

#[test]
fn tombstone_blocks_reads_and_writes() {
    let mut store = Store::default();
    store.append("s", Expected::Any, vec![event(1)]);
    success(&store.tombstone("s", Expected::Any));
    assert_eq!(store.readable("s"), Err(ReadFailure::Deleted));
    assert_eq!(
        store.append("s", Expected::Any, vec![event(2)]),
        WriteOutcome::StreamDeleted
    );
    assert_eq!(
        &*store.log_slice(0, 10).last().unwrap().event_type,
        "$streamDeleted"
    );
}

#[test]
fn positions_and_slices_find_every_record_past_the_first_segments() {
    let mut store = Store::default();
    let count = 3 * SEGMENT as u128 + 7;
    for id in 0..count {
        store.append(&format!("s{}", id % 5), Expected::Any, vec![event(id)]);
    }
    let all = store.log_slice(0, usize::MAX);
    assert_eq!(all.len(), count as usize);
    for (index, record) in all.iter().enumerate() {
        assert_eq!(record.id, Uuid::from_u128(index as u128));
        let p = record.prepare_position;
        assert_eq!(record.commit_position, p);
        assert_eq!(store.index_at_or_after(p, p), index);
        assert_eq!(store.index_after(p, p), index + 1);
        assert_eq!(store.index_at_or_after(p, p + 1), index + 1);
        assert_eq!(store.index_at_or_after(p + 1, 0), index + 1);
        assert_eq!(store.index_ending_after(p, p), index);
        let end = record.prepare_end;
        assert_eq!(store.index_ending_after(end, end), index + 1);
    }
    let across = store.log_slice(SEGMENT - 1, 3);
    let ids: Vec<_> = across.iter().map(|r| r.id.as_u128()).collect();
    assert_eq!(
        ids,
        [SEGMENT as u128 - 1, SEGMENT as u128, SEGMENT as u128 + 1]
    );
    assert!(store.log_slice(count as usize, 10).is_empty());
}

#[test]
fn payloads_read_back_as_written_whatever_their_size() {
    let mut store = Store::default();
    let sizes = [(0, 0), (3, 0), (0, 5), (200, 40), (ARENA_LARGEST + 1, 9)];
    for (n, &(data, metadata)) in sizes.iter().enumerate() {
        let proposed = Proposed {
            data: Bytes::from(vec![n as u8; data]),
            custom_metadata: Bytes::from(vec![!(n as u8); metadata]),
            ..event(n as u128)
        };
        store.append("s", Expected::Any, vec![proposed]);
    }
    // Enough small payloads to fill more than one arena chunk.
    let filler = ARENA_CHUNK / 100 + 1;
    for n in 0..filler {
        let proposed = Proposed {
            data: Bytes::from(vec![7; 100]),
            ..event(1_000 + n as u128)
        };
        store.append("f", Expected::Any, vec![proposed]);
    }
    let records = store.stream_records("s", 0..sizes.len() as u64);
    for (n, (record, &(data, metadata))) in records.iter().zip(&sizes).enumerate() {
        assert_eq!(record.data, vec![n as u8; data]);
        assert_eq!(record.custom_metadata, vec![!(n as u8); metadata]);
    }
    let filled = store.stream_records("f", 0..filler as u64);
    assert_eq!(filled.len(), filler);
    assert!(filled.iter().all(|r| r.data == [7; 100][..]));
    assert!(filled.iter().all(|r| r.custom_metadata.is_empty()));
}

#[test]
fn a_transaction_is_invisible_until_committed_then_ordered_by_commit_and_prepare() {
    let mut store = Store::default();
    let id = store.start_transaction("t", Expected::NoStream);
    assert!(store.write_transaction(id, vec![event(1)]));
    store.append("s", Expected::Any, vec![event(2)]);
    assert!(store.write_transaction(id, vec![event(3)]));
    assert_eq!(store.len(), 1);
    assert_eq!(store.readable("t"), Err(ReadFailure::NotFound));
    let TransactionOutcome::Done(WriteOutcome::Success {
        current: Some(1),
        position: Some(commit),
    }) = store.commit_transaction(id)
    else {
        panic!("the commit failed");
    };
    let all = store.log_slice(0, 10);
    let ids: Vec<_> = all.iter().map(|r| r.id.as_u128()).collect();
    assert_eq!(ids, [2, 1, 3]);
    let (append, first, second) = (&all[0], &all[1], &all[2]);
    assert_eq!(append.commit_position, append.prepare_position);
    assert!(id < first.prepare_position && first.prepare_position < append.prepare_position);
    assert!(append.prepare_position < second.prepare_position);
    assert!(second.prepare_end < commit);
    assert_eq!(
        (first.commit_position, second.commit_position),
        (commit, commit)
    );
    assert_eq!((first.revision, second.revision), (0, 1));
    assert_eq!(store.index_at_or_after(commit, 0), 1);
    assert_eq!(store.index_at_or_after(commit, first.prepare_end), 2);
    assert_eq!(store.index_after(commit, second.prepare_position), 3);
    assert_eq!(
        store.index_ending_after(second.commit_end, second.prepare_position),
        2
    );
    assert_eq!(
        store.commit_transaction(id),
        TransactionOutcome::Unknown,
        "a committed transaction is over"
    );
    assert!(!store.write_transaction(id, vec![event(4)]));
}

#[test]
fn a_transaction_checks_the_expected_version_at_commit() {
    let mut store = Store::default();
    let id = store.start_transaction("t", Expected::NoStream);
    assert!(store.write_transaction(id, vec![event(1)]));
    store.append("t", Expected::Any, vec![event(2)]);
    assert_eq!(
        store.commit_transaction(id),
        TransactionOutcome::Done(WriteOutcome::WrongExpected {
            current: Some(0),
            expected: Expected::NoStream
        })
    );
    assert_eq!(store.len(), 1);
}

#[test]
fn max_count_hides_old_events_from_stream_reads() {
    let mut store = Store::default();
    store.append("s", Expected::Any, vec![event(1), event(2), event(3)]);
    let meta = Proposed {
        data: Bytes::from_static(br#"{"$maxCount":2}"#),
        event_type: "$metadata".to_owned(),
        ..event(9)
    };
    store.append("$$s", Expected::Any, vec![meta]);
    assert_eq!(store.readable("s"), Ok(1..3));
}

#[test]
fn each_append_and_each_committed_transaction_is_one_write() {
    let mut store = Store::default();
    store.append("s", Expected::Any, vec![event(1), event(2), event(3)]);
    store.append("s", Expected::Any, vec![event(4)]);
    let id = store.start_transaction("s", Expected::Any);
    assert!(store.write_transaction(id, vec![event(5)]));
    store.append("other", Expected::Any, vec![event(6)]);
    assert!(store.write_transaction(id, vec![event(7)]));
    assert!(matches!(
        store.commit_transaction(id),
        TransactionOutcome::Done(WriteOutcome::Success { .. })
    ));
    store.append("s", Expected::Any, vec![event(8), event(9)]);
    success(&store.tombstone("s", Expected::Any));
    assert_eq!(store.write_sizes("s"), [3, 1, 2, 2, 1]);
    assert_eq!(store.write_sizes("other"), [1]);
    assert!(store.write_sizes("none").is_empty());
}
