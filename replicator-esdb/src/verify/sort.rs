//! The external sort of the stream names: sorted runs spilled to anonymous
//! temporary files, merged and deduplicated.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{self, BufReader, BufWriter, Read as _, Seek as _, Write as _};

/// The stream names seen, sorted and deduplicated, in bounded memory: sorted
/// runs of at most `limit` names spill to anonymous temporary files and are
/// merged at the end.
pub(super) struct NameSet {
    limit: usize,
    current: BTreeMap<String, u8>,
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

    /// Adds `name` with `flags`; true when it is new to the current run (an
    /// estimate of new names once runs spilled, exact before).
    pub(super) fn insert(&mut self, name: String, flags: u8) -> io::Result<bool> {
        if let Some(existing) = self.current.get_mut(&name) {
            *existing |= flags;
            return Ok(false);
        }
        if self.current.len() >= self.limit {
            self.spill()?;
        }
        self.current.insert(name, flags);
        Ok(true)
    }

    fn spill(&mut self) -> io::Result<()> {
        let file = tempfile::tempfile()?;
        let mut writer = BufWriter::new(file);
        for (name, flags) in std::mem::take(&mut self.current) {
            writer.write_all(&(name.len() as u32).to_le_bytes())?;
            writer.write_all(name.as_bytes())?;
            writer.write_all(&[flags])?;
        }
        let mut file = writer.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        self.runs.push(file);
        Ok(())
    }

    /// Every name once, sorted, with the union of its flags.
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
            if let Some((name, flags)) = read_entry(run)? {
                heap.push(Reverse((name, index, flags)));
            }
        }
        Ok(SortedNames::Merge { runs, heap })
    }
}

fn read_entry(reader: &mut BufReader<std::fs::File>) -> io::Result<Option<(String, u8)>> {
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
    let name =
        String::from_utf8(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some((name, flags[0])))
}

pub(super) enum SortedNames {
    Memory(std::collections::btree_map::IntoIter<String, u8>),
    Merge {
        runs: Vec<BufReader<std::fs::File>>,
        heap: BinaryHeap<Reverse<(String, usize, u8)>>,
    },
}

impl Iterator for SortedNames {
    type Item = io::Result<(String, u8)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            SortedNames::Memory(entries) => entries.next().map(Ok),
            SortedNames::Merge { runs, heap } => {
                let Reverse((name, index, mut flags)) = heap.pop()?;
                let mut refill = vec![index];
                while let Some(Reverse((next, _, _))) = heap.peek() {
                    if *next != name {
                        break;
                    }
                    let Reverse((_, other, other_flags)) = heap.pop().expect("peeked");
                    flags |= other_flags;
                    refill.push(other);
                }
                for index in refill {
                    match read_entry(&mut runs[index]) {
                        Ok(Some((next, next_flags))) => {
                            heap.push(Reverse((next, index, next_flags)));
                        }
                        Ok(None) => {}
                        Err(e) => return Some(Err(e)),
                    }
                }
                Some(Ok((name, flags)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{ON_SOURCE, ON_TARGET};

    #[test]
    fn names_spill_to_sorted_runs_and_merge_once_each_with_all_flags() {
        let mut set = NameSet::new(3);
        let names = ["d", "a", "c", "b", "a", "e", "c", "f", "a", "g"];
        for (i, name) in names.iter().enumerate() {
            let flags = if i % 2 == 0 { ON_SOURCE } else { ON_TARGET };
            set.insert((*name).to_owned(), flags).unwrap();
        }
        assert!(set.runs.len() >= 2, "the test must spill");
        let merged: Vec<(String, u8)> = set.into_sorted().unwrap().map(Result::unwrap).collect();
        let want = [
            ("a", ON_SOURCE | ON_TARGET),
            ("b", ON_TARGET),
            ("c", ON_SOURCE),
            ("d", ON_SOURCE),
            ("e", ON_TARGET),
            ("f", ON_TARGET),
            ("g", ON_TARGET),
        ];
        let want: Vec<(String, u8)> = want.iter().map(|(n, f)| ((*n).to_owned(), *f)).collect();
        assert_eq!(merged, want);
    }

    #[test]
    fn names_stay_in_memory_below_the_limit() {
        let mut set = NameSet::new(10);
        assert!(set.insert("b".into(), ON_SOURCE).unwrap());
        assert!(!set.insert("b".into(), ON_TARGET).unwrap());
        assert!(set.insert("a\nnewline".into(), ON_TARGET).unwrap());
        assert!(set.runs.is_empty());
        let merged: Vec<(String, u8)> = set.into_sorted().unwrap().map(Result::unwrap).collect();
        assert_eq!(
            merged,
            vec![
                ("a\nnewline".to_owned(), ON_TARGET),
                ("b".to_owned(), ON_SOURCE | ON_TARGET)
            ]
        );
    }
}
