//! Pure planning of a sink batch: which appends and tombstones to issue, in
//! which order, and how a replay is recognised on the target. Kept free of I/O
//! so it can be tested exhaustively.

use replicator_core::{ChangeKind, Event, Position};
use uuid::Uuid;

/// Fixed per-event allowance (ids, type, protobuf framing) added to the payload
/// when capping an append's size.
const EVENT_OVERHEAD: usize = 128;

/// One operation on the target.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    /// Append these records, in order, to `stream` (a user stream, or a `$$`
    /// metadata stream: metadata and soft deletes are metadata records).
    Append {
        /// The stream records go to: the record's own stream.
        stream: &'a str,
        /// Records of `stream`, consecutive in source order.
        events: Vec<&'a Event>,
    },
    /// Tombstone the record's target stream.
    Tombstone(&'a Event),
}

/// The steps of one target stream, to apply strictly in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StreamPlan<'a> {
    /// The target stream every step affects.
    pub(crate) target_stream: &'a str,
    /// What to do, in source order.
    pub(crate) steps: Vec<Step<'a>>,
}

/// Splits a batch into per-target-stream plans.
///
/// Plans of different target streams are independent and may run
/// concurrently. Within one plan, consecutive records of the same stream are
/// merged into one append of at most `max_append_bytes` (but always at least
/// one record); metadata records and tombstones are steps of their own.
/// Skipped records produce nothing.
pub(crate) fn plan(batch: &[Event], max_append_bytes: usize) -> Vec<StreamPlan<'_>> {
    let mut plans: Vec<StreamPlan<'_>> = Vec::new();
    // Batches are a few thousand events at most and touch few streams, so a
    // linear lookup of the last plans beats hashing every event.
    for event in batch {
        if !event.kind.is_write() {
            continue;
        }
        let target = event.target_stream();
        let plan = match plans.iter().position(|p| p.target_stream == target) {
            Some(i) => &mut plans[i],
            None => {
                plans.push(StreamPlan {
                    target_stream: target,
                    steps: Vec::new(),
                });
                plans.last_mut().expect("just pushed")
            }
        };
        match event.kind {
            ChangeKind::Tombstone => plan.steps.push(Step::Tombstone(event)),
            ChangeKind::Append | ChangeKind::StreamMetadata | ChangeKind::SoftDelete => {
                // A metadata record goes alone: writing one can make the
                // server write a record of its own right after it (the `$tb`
                // that revives a soft-deleted stream), which would land in
                // the middle of a longer append.
                let alone = event.kind != ChangeKind::Append;
                if let Some(Step::Append { stream, events }) = plan.steps.last_mut() {
                    let bytes: usize = events.iter().map(|e| append_size(e)).sum();
                    if !alone
                        && events[0].kind == ChangeKind::Append
                        && *stream == event.stream
                        && bytes + append_size(event) <= max_append_bytes
                    {
                        events.push(event);
                        continue;
                    }
                }
                plan.steps.push(Step::Append {
                    stream: &event.stream,
                    events: vec![event],
                });
            }
            ChangeKind::Skip(_) => unreachable!("skipped above"),
        }
    }
    plans
}

fn append_size(event: &Event) -> usize {
    event.payload_len() + event.event_type.len() + EVENT_OVERHEAD
}

/// A record as the target holds it, for replay detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TargetRecord {
    /// Its revision in the target stream.
    pub(crate) revision: u64,
    /// Its event id.
    pub(crate) id: Uuid,
    /// Its event type.
    pub(crate) event_type: String,
    /// Its data.
    pub(crate) data: bytes::Bytes,
    /// Its position in the target `$all`.
    pub(crate) position: Position,
}

/// How much of an append run the target already holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Replay {
    /// The first `written` records are on the target already (visible, or
    /// hidden by truncation or a soft delete); append the rest after the
    /// target's current revision. `position` is the target position of the
    /// last one seen, when it was visible.
    Written {
        /// How many leading records are already written.
        written: usize,
        /// Target position of the last written record that could be read.
        position: Option<Position>,
    },
    /// The target holds another record where `events[index]` belongs.
    Diverged {
        /// Index in the run of the record that does not match.
        index: usize,
        /// What the target has there.
        found: Uuid,
    },
}

/// Compares a run of records (meant for target revisions `first_target..`)
/// with what the target holds from `first_target` on (`target`, as read
/// forwards with at most `events.len()` records) and its current last
/// revision (`last`, `None` when the stream does not exist).
///
/// A revision the target has (`<= last`) but did not return is hidden by
/// truncation (`$tb`, `$maxCount`) or a soft delete: it is taken as written,
/// because the target's metadata mirrors the source's. A metadata record with
/// the same type and data counts as written even under another id: a server
/// writes such a record itself when a soft-deleted stream is appended to.
pub(crate) fn match_replay(
    events: &[&Event],
    first_target: u64,
    target: &[TargetRecord],
    last: Option<u64>,
    is_metadata_stream: bool,
) -> Replay {
    let mut position = None;
    for (index, event) in events.iter().enumerate() {
        let revision = first_target + index as u64;
        if last.is_none_or(|last| revision > last) {
            return Replay::Written {
                written: index,
                position,
            };
        }
        match target.iter().find(|r| r.revision == revision) {
            Some(record)
                if record.id == event.id
                    || (is_metadata_stream
                        && record.event_type == event.event_type
                        && record.data == event.data) =>
            {
                position = Some(record.position);
            }
            Some(record) => {
                return Replay::Diverged {
                    index,
                    found: record.id,
                }
            }
            None => {}
        }
    }
    Replay::Written {
        written: events.len(),
        position,
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use bytes::Bytes;
    use replicator_core::{ContentType, SkipReason};

    use super::*;

    fn event(stream: &str, revision: u64, kind: ChangeKind, data: &[u8]) -> Event {
        Event {
            id: Uuid::new_v4(),
            stream: stream.to_owned(),
            revision,
            event_type: match kind {
                ChangeKind::StreamMetadata | ChangeKind::SoftDelete => "$metadata".into(),
                ChangeKind::Tombstone => "$streamDeleted".into(),
                _ => "Happened".into(),
            },
            data: Bytes::copy_from_slice(data),
            metadata: Bytes::new(),
            content_type: ContentType::Json,
            created: SystemTime::UNIX_EPOCH,
            position: Position::at(revision),
            kind,
        }
    }

    fn ids(step: &Step<'_>) -> Vec<Uuid> {
        match step {
            Step::Append { events, .. } => events.iter().map(|e| e.id).collect(),
            Step::Tombstone(e) => vec![e.id],
        }
    }

    #[test]
    fn consecutive_records_of_a_stream_become_one_append_per_stream() {
        let batch = vec![
            event("a", 0, ChangeKind::Append, b"1"),
            event("b", 0, ChangeKind::Append, b"2"),
            event("a", 1, ChangeKind::Append, b"3"),
            event("$stats", 9, ChangeKind::Skip(SkipReason::SystemStream), b""),
            event("b", 1, ChangeKind::Append, b"4"),
            event("a", 2, ChangeKind::Append, b""),
        ];
        let plans = plan(&batch, 1 << 20);
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0].target_stream, "a");
        assert_eq!(plans[0].steps.len(), 1);
        assert_eq!(
            ids(&plans[0].steps[0]),
            vec![batch[0].id, batch[2].id, batch[5].id]
        );
        assert_eq!(plans[1].target_stream, "b");
        assert_eq!(ids(&plans[1].steps[0]), vec![batch[1].id, batch[4].id]);
    }

    #[test]
    fn metadata_deletes_and_tombstones_keep_their_place_in_the_stream() {
        let batch = vec![
            event("a", 0, ChangeKind::Append, b"1"),
            event("$$a", 0, ChangeKind::StreamMetadata, br#"{"$maxCount":3}"#),
            event("a", 1, ChangeKind::Append, b"2"),
            event(
                "$$a",
                1,
                ChangeKind::SoftDelete,
                br#"{"$tb":9223372036854775807}"#,
            ),
            event("$$a", 2, ChangeKind::StreamMetadata, br#"{"$tb":2}"#),
            event("a", 2, ChangeKind::Append, b"3"),
            event("a", i64::MAX as u64, ChangeKind::Tombstone, b""),
        ];
        let plans = plan(&batch, 1 << 20);
        assert_eq!(plans.len(), 1, "all of them affect stream a");
        let steps = &plans[0].steps;
        let streams: Vec<_> = steps
            .iter()
            .map(|s| match s {
                Step::Append { stream, .. } => *stream,
                Step::Tombstone(_) => "tombstone",
            })
            .collect();
        assert_eq!(streams, ["a", "$$a", "a", "$$a", "$$a", "a", "tombstone"]);
        assert!(steps[..6].iter().all(|s| ids(s).len() == 1));
    }

    #[test]
    fn appends_are_capped_in_bytes_but_hold_at_least_one_record() {
        let big = vec![7u8; 600];
        let batch: Vec<Event> = (0..5)
            .map(|r| event("a", r, ChangeKind::Append, &big))
            .collect();
        let plans = plan(&batch, 1_500);
        let sizes: Vec<usize> = plans[0].steps.iter().map(|s| ids(s).len()).collect();
        assert_eq!(sizes, [2, 2, 1]);

        let plans = plan(&batch, 10);
        assert_eq!(plans[0].steps.len(), 5, "an oversized record still goes");
    }

    fn record(event: &Event, revision: u64) -> TargetRecord {
        TargetRecord {
            revision,
            id: event.id,
            event_type: event.event_type.clone(),
            data: event.data.clone(),
            position: Position::at(1000 + revision),
        }
    }

    #[test]
    fn a_replay_is_recognised_by_event_ids_at_matching_revisions() {
        let batch: Vec<Event> = (3..7)
            .map(|r| event("a", r, ChangeKind::Append, b"{}"))
            .collect();
        let run: Vec<&Event> = batch.iter().collect();

        // Target holds the first two of the run: append the other two.
        let target = vec![record(&batch[0], 3), record(&batch[1], 4)];
        assert_eq!(
            match_replay(&run, 3, &target, Some(4), false),
            Replay::Written {
                written: 2,
                position: Some(Position::at(1004))
            }
        );

        // Target holds all of it and more.
        let target: Vec<_> = batch
            .iter()
            .enumerate()
            .map(|(i, e)| record(e, 3 + i as u64))
            .collect();
        assert_eq!(
            match_replay(&run, 3, &target, Some(20), false),
            Replay::Written {
                written: 4,
                position: Some(Position::at(1006))
            }
        );

        // Target holds something else at revision 4.
        let stranger = event("a", 4, ChangeKind::Append, b"{}");
        let target = vec![record(&batch[0], 3), record(&stranger, 4)];
        assert_eq!(
            match_replay(&run, 3, &target, Some(4), false),
            Replay::Diverged {
                index: 1,
                found: stranger.id
            }
        );

        // Target stream missing: nothing written.
        assert_eq!(
            match_replay(&run, 3, &[], None, false),
            Replay::Written {
                written: 0,
                position: None
            }
        );
    }

    #[test]
    fn hidden_revisions_count_as_written() {
        let batch: Vec<Event> = (0..3)
            .map(|r| event("a", r, ChangeKind::Append, b"{}"))
            .collect();
        let run: Vec<&Event> = batch.iter().collect();
        // Soft-deleted then revived at revision 2: revisions 0 and 1 are hidden.
        let target = vec![record(&batch[2], 2)];
        assert_eq!(
            match_replay(&run, 0, &target, Some(2), false),
            Replay::Written {
                written: 3,
                position: Some(Position::at(1002))
            }
        );
        // Soft-deleted, nothing readable.
        assert_eq!(
            match_replay(&run, 0, &[], Some(1), false),
            Replay::Written {
                written: 2,
                position: None
            }
        );
    }

    #[test]
    fn a_server_written_metadata_record_with_the_same_content_counts_as_written() {
        let ours = event("$$a", 2, ChangeKind::StreamMetadata, br#"{"$tb":2}"#);
        let mut theirs = record(&ours, 2);
        theirs.id = Uuid::new_v4();
        assert_eq!(
            match_replay(&[&ours], 2, std::slice::from_ref(&theirs), Some(2), true),
            Replay::Written {
                written: 1,
                position: Some(Position::at(1002))
            }
        );
        // Not in a user stream: ids decide there.
        assert_eq!(
            match_replay(&[&ours], 2, &[theirs.clone()], Some(2), false),
            Replay::Diverged {
                index: 0,
                found: theirs.id
            }
        );
    }
}
