//! [`MapMode::Anchor`] (stream order): the anchor, then the rule that loses
//! nothing.

use std::collections::HashSet;

use replicator_core::Position;
use uuid::Uuid;

use super::walk::Walk;
use super::{and, appended, Anchor, MapMode, MapOptions, Mapping, Resume};
use crate::cluster::{AllFrom, ClusterRead, Direction, SOURCE, TARGET};
use crate::verify::{next_record, VerifyError};

/// [`MapMode::Anchor`]: the anchor, then [`conservative`].
pub(super) async fn anchored<S: ClusterRead, T: ClusterRead>(
    source: &S,
    target: &T,
    position: Position,
    walk: Walk,
    options: &MapOptions,
) -> Result<Mapping, VerifyError> {
    let passed_over = walk.passed_over.len();
    let Some(anchor) = walk.found else {
        return Ok(Mapping {
            source: position,
            target: None,
            resume: Resume::FromStart,
            mode: MapMode::Anchor,
            anchor: None,
            note: if passed_over == 0 {
                "before the first replicated event: resume from the start of the target's $all"
                    .to_owned()
            } else {
                format!(
                    "none of the {passed_over} events before it is readable on the target: \
                     resume from the start of the target's $all"
                )
            },
        });
    };
    let mut note = String::new();
    if passed_over > 0 {
        note = format!(
            "{passed_over} later events up to the position are no longer readable on the \
             target (deleted or truncated streams) and may be seen again"
        );
    }
    conservative(source, target, position, anchor, note, options).await
}

/// The rule that loses nothing: resume before the earliest target record of an event
/// not yet processed, when one precedes the anchor on the target.
async fn conservative<S: ClusterRead, T: ClusterRead>(
    source: &S,
    target: &T,
    position: Position,
    anchor: Anchor,
    note: String,
    options: &MapOptions,
) -> Result<Mapping, VerifyError> {
    let timeout = options.request_timeout;
    let operation = || format!("reading $all after {position}");
    let mut forward =
        source.all_records(AllFrom::Position(position), Direction::Forwards, usize::MAX);
    let mut unprocessed: HashSet<Uuid> = HashSet::new();
    let mut source_exhausted = false;
    while unprocessed.len() < options.window {
        let Some((here, record)) = next_record(SOURCE, operation, timeout, &mut forward).await?
        else {
            source_exhausted = true;
            break;
        };
        if here > position && appended(&record) {
            unprocessed.insert(record.id);
        }
    }
    drop(forward);
    if unprocessed.is_empty() && source_exhausted {
        // Processed everything the source holds, and all of it is replicated
        // (the position is within the checkpoint): the whole target is
        // processed, resume at its end and see nothing twice.
        let operation = || "reading the end of $all".to_owned();
        let mut end = target.all_records(AllFrom::End, Direction::Backwards, 1);
        let last = next_record(TARGET, operation, timeout, &mut end)
            .await?
            .map(|(last, _)| last);
        if let Some(last) = last {
            let at_end = format!(
                "the consumer has processed every user event of the source: resume at the end \
                 of the target's $all ({last}), nothing is seen twice{}",
                and(&note)
            );
            return Ok(Mapping {
                source: position,
                target: Some(last.max(anchor.target_position)),
                resume: Resume::After,
                mode: MapMode::Anchor,
                anchor: Some(anchor),
                note: at_end,
            });
        }
    }

    let operation = || format!("reading $all before {}", anchor.target_position);
    let mut backwards = target.all_records(
        AllFrom::Position(anchor.target_position),
        Direction::Backwards,
        usize::MAX,
    );
    // Records read since the earliest unprocessed one (processed ones among
    // them are seen twice), and the record before it (the resume point).
    let mut earliest: Option<(Position, usize)> = None;
    let mut resume_after: Option<Option<Position>> = None;
    let mut processed_since = 0usize;
    let mut read = 0usize;
    while read < options.window {
        let Some((here, record)) = next_record(TARGET, operation, timeout, &mut backwards).await?
        else {
            if earliest.is_some() && resume_after.is_none() {
                resume_after = Some(None);
            }
            break;
        };
        if here >= anchor.target_position {
            continue;
        }
        read += 1;
        if resume_after.is_none() && earliest.is_some() {
            resume_after = Some(Some(here));
        }
        if unprocessed.contains(&record.id) {
            earliest = Some((here, processed_since));
            resume_after = None;
        } else if appended(&record) {
            processed_since += 1;
        }
    }
    drop(backwards);
    let (target_position, resume, note) = match (earliest, resume_after) {
        (None, _) => (
            Some(anchor.target_position),
            Resume::After,
            format!(
                "after the anchor: no event after the position precedes it within {} target \
                 records; events of other streams written concurrently may sit after it and \
                 are then seen again{}",
                options.window,
                and(&note)
            ),
        ),
        (Some((at, repeated)), resume_after) => {
            let (target, resume) = match resume_after.flatten() {
                Some(p) => (Some(p), Resume::After),
                None => (None, Resume::FromStart),
            };
            (
                target,
                resume,
                format!(
                    "an unprocessed event sits at {at} on the target, before the anchor {} \
                     (streams written concurrently): resuming before it; {} processed events \
                     between are seen again{}",
                    anchor.target_position,
                    repeated + 1,
                    and(&note)
                ),
            )
        }
    };
    Ok(Mapping {
        source: position,
        target: target_position,
        resume,
        mode: MapMode::Anchor,
        anchor: Some(anchor),
        note,
    })
}
