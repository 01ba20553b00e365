//! The external sort of the stream names: sorted runs spilled to anonymous
//! temporary files, merged and deduplicated.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{self, BufReader, BufWriter, Read as _, Seek as _, Write as _};

/// What the listing found of a stream name: where it was seen (flags), and
/// on the source the last revisions within `until` of its events and of its
/// metadata stream's records (which records `until` covers, also where a
/// stream read gives no positions: v5 TCP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Listed {
    pub(super) flags: u8,
    pub(super) events_until: Option<u64>,
    pub(super) metadata_until: Option<u64>,
}

impl Listed {
    /// Both findings together: flags united, the later revisions.
    fn merge(&mut self, other: Listed) {
        self.flags |= other.flags;
        self.events_until = self.events_until.max(other.events_until);
        self.metadata_until = self.metadata_until.max(other.metadata_until);
    }
}

/// A revision in a run file: `u64::MAX` for none (no stream reaches it).
fn revision_bytes(revision: Option<u64>) -> [u8; 8] {
    revision.unwrap_or(u64::MAX).to_le_bytes()
}

fn revision_from(bytes: [u8; 8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes)).filter(|&r| r != u64::MAX)
}

/// The stream names seen, sorted and deduplicated, in bounded memory: sorted
/// runs of at most `limit` names spill to anonymous temporary files and are
/// merged at the end.
pub(super) struct NameSet {
    limit: usize,
    current: BTreeMap<String, Listed>,
    runs: Vec<std::fs::File>,
}

impl NameSet {
    pub(super) fn new(limit: usize) -> Self {
        NameSet {
            limit,
            current: BTreeMap::new(),
            runs: Vec::new(),
        }
    }

    /// Adds `name` with what was found of it; true when it is new to the
    /// current run (an estimate of new names once runs spilled, exact before).
    pub(super) fn insert(&mut self, name: String, listed: Listed) -> io::Result<bool> {
        if let Some(existing) = self.current.get_mut(&name) {
            existing.merge(listed);
            return Ok(false);
        }
        if self.current.len() >= self.limit {
            self.spill()?;
        }
        self.current.insert(name, listed);
        Ok(true)
    }

    fn spill(&mut self) -> io::Result<()> {
        let file = tempfile::tempfile()?;
        let mut writer = BufWriter::new(file);
        for (name, listed) in std::mem::take(&mut self.current) {
            writer.write_all(&(name.len() as u32).to_le_bytes())?;
            writer.write_all(name.as_bytes())?;
            writer.write_all(&[listed.flags])?;
            writer.write_all(&revision_bytes(listed.events_until))?;
            writer.write_all(&revision_bytes(listed.metadata_until))?;
        }
        let mut file = writer.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        self.runs.push(file);
        Ok(())
    }

    /// Every name once, sorted, with what was found of it in every run.
    pub(super) fn into_sorted(mut self) -> io::Result<SortedNames> {
        if self.runs.is_empty() {
            return Ok(SortedNames::Memory(self.current.into_iter()));
        }
        if !self.current.is_empty() {
            self.spill()?;
        }
        let mut runs: Vec<BufReader<std::fs::File>> =
            self.runs.into_iter().map(BufReader::new).collect();
        let mut heap = BinaryHeap::new();
        for (index, run) in runs.iter_mut().enumerate() {
            if let Some((name, listed)) = read_entry(run)? {
                heap.push(Reverse((name, index, Entry(listed))));
            }
        }
        Ok(SortedNames::Merge { runs, heap })
    }
}

fn read_entry(reader: &mut BufReader<std::fs::File>) -> io::Result<Option<(String, Listed)>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut name = vec![0u8; u32::from_le_bytes(len) as usize];
    reader.read_exact(&mut name)?;
    let mut flags = [0u8; 1];
    reader.read_exact(&mut flags)?;
    let mut events_until = [0u8; 8];
    reader.read_exact(&mut events_until)?;
    let mut metadata_until = [0u8; 8];
    reader.read_exact(&mut metadata_until)?;
    let name =
        String::from_utf8(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let listed = Listed {
        flags: flags[0],
        events_until: revision_from(events_until),
        metadata_until: revision_from(metadata_until),
    };
    Ok(Some((name, listed)))
}

pub(super) enum SortedNames {
    Memory(std::collections::btree_map::IntoIter<String, Listed>),
    Merge {
        runs: Vec<BufReader<std::fs::File>>,
        heap: BinaryHeap<Reverse<(String, usize, Entry)>>,
    },
}

/// A run's entry in the merge heap: ordered by name and run alone.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry(Listed);

impl PartialEq for Entry {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl Iterator for SortedNames {
    type Item = io::Result<(String, Listed)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            SortedNames::Memory(entries) => entries.next().map(Ok),
            SortedNames::Merge { runs, heap } => {
                let Reverse((name, index, Entry(mut listed))) = heap.pop()?;
                let mut refill = vec![index];
                while let Some(Reverse((next, _, _))) = heap.peek() {
                    if *next != name {
                        break;
                    }
                    let Reverse((_, other, Entry(other_listed))) = heap.pop().expect("peeked");
                    listed.merge(other_listed);
                    refill.push(other);
                }
                for index in refill {
                    match read_entry(&mut runs[index]) {
                        Ok(Some((next, next_listed))) => {
                            heap.push(Reverse((next, index, Entry(next_listed))));
                        }
                        Ok(None) => {}
                        Err(e) => return Some(Err(e)),
                    }
                }
                Some(Ok((name, listed)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{ON_SOURCE, ON_TARGET};

    fn listed(flags: u8, events_until: Option<u64>) -> Listed {
        Listed {
            flags,
            events_until,
            metadata_until: events_until.map(|r| r + 100),
        }
    }

    #[test]
    fn names_spill_to_sorted_runs_and_merge_once_each_with_all_flags() {
        let mut set = NameSet::new(3);
        let names = ["d", "a", "c", "b", "a", "e", "c", "f", "a", "g"];
        for (i, name) in names.iter().enumerate() {
            let entry = if i % 2 == 0 {
                listed(ON_SOURCE, Some(i as u64))
            } else {
                listed(ON_TARGET, None)
            };
            set.insert((*name).to_owned(), entry).unwrap();
        }
        assert!(set.runs.len() >= 2, "the test must spill");
        let merged: Vec<(String, Listed)> =
            set.into_sorted().unwrap().map(Result::unwrap).collect();
        // "a" was seen at 1 (target), 4 and 8 (source): the latest revision.
        let want = [
            ("a", listed(ON_SOURCE | ON_TARGET, Some(8))),
            ("b", listed(ON_TARGET, None)),
            ("c", listed(ON_SOURCE, Some(6))),
            ("d", listed(ON_SOURCE, Some(0))),
            ("e", listed(ON_TARGET, None)),
            ("f", listed(ON_TARGET, None)),
            ("g", listed(ON_TARGET, None)),
        ];
        let want: Vec<(String, Listed)> = want.iter().map(|(n, l)| ((*n).to_owned(), *l)).collect();
        assert_eq!(merged, want);
    }

    #[test]
    fn names_stay_in_memory_below_the_limit() {
        let mut set = NameSet::new(10);
        assert!(set.insert("b".into(), listed(ON_SOURCE, Some(3))).unwrap());
        assert!(!set.insert("b".into(), listed(ON_TARGET, None)).unwrap());
        assert!(set
            .insert("a\nnewline".into(), listed(ON_TARGET, None))
            .unwrap());
        assert!(set.runs.is_empty());
        let merged: Vec<(String, Listed)> =
            set.into_sorted().unwrap().map(Result::unwrap).collect();
        assert_eq!(
            merged,
            vec![
                ("a\nnewline".to_owned(), listed(ON_TARGET, None)),
                ("b".to_owned(), listed(ON_SOURCE | ON_TARGET, Some(3)))
            ]
        );
    }
}
