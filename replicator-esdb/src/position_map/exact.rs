//! [`MapMode::Exact`] (source order): the records passed over on the walk
//! back searched for in the target's `$all` after the one found.

use std::collections::HashMap;

use replicator_core::Position;
use uuid::Uuid;

use super::walk::{Unlocated, Walk};
use super::{Anchor, MapMode, MapOptions, Mapping, Resume};
use crate::classify::{classify, TOMBSTONE_EVENT_TYPE};
use crate::cluster::{AllFrom, ClusterRead, Direction, TARGET};
use crate::verify::{next_record, VerifyError};

/// Why [`search_after`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Every record searched for was found.
    AllFound,
    /// At a replicated record that is none of them: it follows the position.
    Later,
    /// At the end of the target's `$all`.
    End,
    /// After `window` records.
    Window,
}

/// The records searched for, in source order, and how a target record is
/// recognised as one of them.
struct Sought<'a> {
    records: &'a [Unlocated],
    by_id: HashMap<Uuid, usize>,
    /// The first not found or passed yet.
    next: usize,
}

/// What a target record is to [`Sought`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// The copy of this sought record.
    Replica(usize),
    /// Not replicated from the source (a system record of the target's own).
    Other,
    /// A replicated record that is not sought: it comes after the position.
    Later,
}

impl<'a> Sought<'a> {
    fn new(records: &'a [Unlocated]) -> Self {
        let mut by_id = HashMap::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            by_id.entry(r.id).or_insert(i);
        }
        Sought {
            records,
            by_id,
            next: 0,
        }
    }

    fn done(&self) -> bool {
        self.next == self.records.len()
    }

    /// Recognises a target record: by id, or (for `$`-typed records, whose id
    /// the target server may have chosen) a tombstone by its stream, another
    /// by stream, type and data. Records sought are passed in order: one
    /// found moves past those before it (not on the target).
    fn see(&mut self, id: Uuid, stream: &str, event_type: &str, data: &[u8]) -> Seen {
        let by_id = self.by_id.get(&id).copied().filter(|&i| i >= self.next);
        let found = by_id.or_else(|| {
            if !event_type.starts_with('$') {
                return None;
            }
            self.records[self.next..]
                .iter()
                .position(|r| {
                    r.event_type == event_type
                        && r.stream == stream
                        && (event_type == TOMBSTONE_EVENT_TYPE || r.data == data)
                })
                .map(|i| self.next + i)
        });
        match found {
            Some(i) => {
                self.next = i + 1;
                Seen::Replica(i)
            }
            None if classify(stream, event_type, data).is_write() => Seen::Later,
            None => Seen::Other,
        }
    }
}

/// What [`search_after`] found.
struct Search {
    /// The last record found, as an anchor.
    last: Option<Anchor>,
    /// How many were found.
    found: usize,
    stop: Stop,
}

/// Searches the target's `$all` after `after` (from its start for `None`)
/// for the records `sought`: with source order they sit there, before the
/// first replicated record that follows the position.
async fn search_after<T: ClusterRead>(
    target: &T,
    after: Option<Position>,
    sought: &[Unlocated],
    options: &MapOptions,
) -> Result<Search, VerifyError> {
    let timeout = options.request_timeout;
    let operation = || match after {
        Some(p) => format!("reading $all after {p}"),
        None => "reading $all from the start".to_owned(),
    };
    let from = after.map_or(AllFrom::Start, AllFrom::Position);
    let mut reader = target.all_records(from, Direction::Forwards, usize::MAX);
    let mut sought = Sought::new(sought);
    let mut search = Search {
        last: None,
        found: 0,
        stop: Stop::AllFound,
    };
    let mut read = 0usize;
    search.stop = loop {
        if sought.done() {
            break Stop::AllFound;
        }
        let Some((here, r)) = next_record(TARGET, operation, timeout, &mut reader).await? else {
            break Stop::End;
        };
        if after.is_some_and(|a| here <= a) {
            continue;
        }
        if read == options.window {
            break Stop::Window;
        }
        read += 1;
        match sought.see(r.id, &r.stream, &r.event_type, &r.data) {
            Seen::Replica(i) => {
                let u = &sought.records[i];
                search.found += 1;
                search.last = Some(Anchor {
                    stream: u.stream.clone(),
                    revision: u.revision,
                    target_revision: r.revision,
                    event_id: u.id,
                    source_position: u.position,
                    target_position: here,
                });
            }
            Seen::Other => {}
            Seen::Later => break Stop::Later,
        }
    };
    Ok(search)
}

/// [`MapMode::Exact`]: the last replicated record at or before the position,
/// on the target.
pub(super) async fn exact<T: ClusterRead>(
    target: &T,
    position: Position,
    walk: Walk,
    options: &MapOptions,
) -> Result<Mapping, VerifyError> {
    let Walk {
        found,
        passed_over,
        gave_up,
    } = walk;
    let (anchor, missing, uncertain) = if passed_over.is_empty() {
        (found, 0, false)
    } else {
        let after = found.as_ref().map(|a| a.target_position);
        let search = search_after(target, after, &passed_over, options).await?;
        let missing = passed_over.len() - search.found;
        // Not found within the window: they may be after it. A walk that gave
        // up did not look at older records, which may be on the target.
        let uncertain = (search.stop == Stop::Window && missing > 0)
            || (gave_up && search.last.is_none() && search.stop != Stop::End);
        (search.last.or(found), missing, uncertain)
    };
    let guarantee = if uncertain {
        format!(
            "nothing is missed, but {missing} replicated records up to the position were not \
             found on the target (neither in their streams nor within {} records of $all) and \
             may be seen again",
            options.window
        )
    } else if missing > 0 {
        format!(
            "nothing is seen twice and nothing is missed ({missing} replicated records up to \
             the position are not in the target's $all: left out by a filter or a transform, \
             or scavenged there)"
        )
    } else {
        "nothing is seen twice and nothing is missed".to_owned()
    };
    let Some(anchor) = anchor else {
        let note = if passed_over.is_empty() {
            format!(
                "exact: before the first replicated record: resume from the start of the \
                 target's $all; {guarantee}"
            )
        } else {
            format!(
                "exact: no replicated record up to the position is on the target: resume from \
                 the start of the target's $all; {guarantee}"
            )
        };
        return Ok(Mapping {
            source: position,
            target: None,
            resume: Resume::FromStart,
            mode: MapMode::Exact,
            anchor: None,
            note,
        });
    };
    let note = if anchor.source_position == position {
        format!("exact: the same record on the target; resuming after it, {guarantee}")
    } else {
        format!(
            "exact: the last replicated record at or before the position (at {}), the same \
             record on the target; resuming after it, {guarantee}",
            anchor.source_position
        )
    };
    Ok(Mapping {
        source: position,
        target: Some(anchor.target_position),
        resume: Resume::After,
        mode: MapMode::Exact,
        anchor: Some(anchor),
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::METADATA_EVENT_TYPE as METADATA;
    use bytes::Bytes;

    fn record(stream: &str, event_type: &str, data: &[u8], at: u64) -> Unlocated {
        Unlocated {
            id: Uuid::new_v4(),
            stream: stream.to_owned(),
            revision: 0,
            event_type: event_type.to_owned(),
            data: Bytes::copy_from_slice(data),
            position: Position::at(at),
        }
    }

    #[test]
    fn sought_records_are_found_by_id_in_order_passing_over_absent_ones() {
        let records = [
            record("a", "Placed", b"", 1),
            record("b", "Placed", b"", 2),
            record("c", "Placed", b"", 3),
        ];
        let mut sought = Sought::new(&records);
        // The target's own records are passed by.
        assert_eq!(
            sought.see(Uuid::new_v4(), "$stats-1", "$statsCollected", b"{}"),
            Seen::Other
        );
        // "a" is not on the target: "b" is found, and "a" is passed.
        assert_eq!(
            sought.see(records[1].id, "b", "Placed", b""),
            Seen::Replica(1)
        );
        assert!(!sought.done());
        // Seen again (out of order): not a replica of something sought.
        assert_eq!(sought.see(records[0].id, "a", "Placed", b""), Seen::Later);
        assert_eq!(
            sought.see(records[2].id, "c-renamed", "Placed", b""),
            Seen::Replica(2)
        );
        assert!(sought.done());
    }

    #[test]
    fn a_user_record_not_sought_comes_after_the_position() {
        let records = [record("a", "Placed", b"", 1)];
        let mut sought = Sought::new(&records);
        assert_eq!(sought.see(Uuid::new_v4(), "a", "Placed", b""), Seen::Later);
        assert_eq!(
            sought.see(Uuid::new_v4(), "$$a", METADATA, b"{\"$maxCount\":3}"),
            Seen::Later
        );
        assert_eq!(sought.next, 0);
    }

    #[test]
    fn records_the_server_writes_itself_are_found_by_content() {
        let records = [
            record("a", TOMBSTONE_EVENT_TYPE, b"", 1),
            record("$$b", METADATA, b"{\"$tb\":4}", 2),
        ];
        let mut sought = Sought::new(&records);
        // A tombstone of another stream, then metadata with other data: not these.
        assert_eq!(
            sought.see(Uuid::new_v4(), "z", TOMBSTONE_EVENT_TYPE, b""),
            Seen::Later
        );
        assert_eq!(
            sought.see(Uuid::new_v4(), "$$b", METADATA, b"{\"$tb\":5}"),
            Seen::Later
        );
        // The target's own tombstone of "a" (other id, whatever its data).
        assert_eq!(
            sought.see(Uuid::new_v4(), "a", TOMBSTONE_EVENT_TYPE, b"x"),
            Seen::Replica(0)
        );
        assert_eq!(
            sought.see(Uuid::new_v4(), "$$b", METADATA, b"{\"$tb\":4}"),
            Seen::Replica(1)
        );
        assert!(sought.done());
    }
}
