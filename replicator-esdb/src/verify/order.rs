//! The order check: does the target's `$all` hold the user events in the
//! source's `$all` order? See "Order" in the [verify module docs](super).
//!
//! The matching is a pure state machine, [`Matcher`], fed by [`check_order`]
//! from the two `$all` reads (and by plain iterators in its tests).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use replicator_core::{ChangeKind, Position};
use serde::Serialize;
use uuid::Uuid;

use super::{next_record, VerifiedEvent, VerifyError, VerifyOptions};
use crate::classify::classify;
use crate::cluster::{AllFrom, ClusterRead, Direction, Record, Records, SOURCE, TARGET};

/// A user event of an [`OrderDifference`], where each side's `$all` has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OrderedEvent {
    /// Its stream (on the target: after [`VerifyOptions::expect`]).
    pub stream: String,
    /// Its event id.
    pub id: Uuid,
    /// Its position in the source's `$all`.
    pub source_position: Position,
    /// Its position in the target's `$all`.
    pub target_position: Position,
}

/// The first pair of user events that the target's `$all` holds in another
/// order than the source's: the source has [`first`](Self::first) before
/// [`second`](Self::second), the target `second` before `first`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OrderDifference {
    /// The event the source has first.
    pub first: OrderedEvent,
    /// The event the target has first.
    pub second: OrderedEvent,
}

impl fmt::Display for OrderDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = (&self.first, &self.second);
        write!(
            f,
            "order differs: source has {} ({:?}, {}) before {} ({:?}, {}); \
             the target has {} at {} before {} at {}",
            a.id,
            a.stream,
            a.source_position,
            b.id,
            b.stream,
            b.source_position,
            b.id,
            b.target_position,
            a.id,
            a.target_position
        )
    }
}

/// What a [`Matcher`] wants next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<K, T> {
    /// The next event (or the end) of each side marked true, given with
    /// [`Matcher::push_source`] and [`Matcher::push_target`]; then step again.
    Need {
        /// Push the source's next event.
        source: bool,
        /// Push the target's next event.
        target: bool,
    },
    /// Finished: `None` when no pair was found in another order (one side
    /// ended; what is left of the other is only on that side), else the first
    /// pair. Step no more.
    Done(Option<Inversion<K, T>>),
}

/// A pair of keys in another order on the target: the source has `first`
/// before `second`, the target `second` before `first`. The values are each
/// side's (source, target).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Inversion<K, T> {
    pub first: (K, T, T),
    pub second: (K, T, T),
}

/// Matches two sequences of keys (event ids), each key on a side at most once,
/// for the first pair in another order, in bounded memory.
///
/// Each side is a queue holding at most `window` keys, its head the first not
/// yet decided. Equal heads match and leave. When the heads differ, both
/// windows are filled (up to `window`, or the side's end), and then:
/// - each head is in the other side's window: the source has its head before
///   the target's head, the target the other way round: that pair is the
///   first difference;
/// - only the source's head is in the target's window: the target's head is
///   not in the source's window, so it is extra (or further away than the
///   window): it leaves;
/// - only the target's head is in the source's window: the source's head is
///   missing (or further away): it leaves;
/// - neither: both leave.
///
/// A pair it reports is always in another order (with unique keys). With a
/// window at least as long as both sequences it finds a pair whenever the
/// keys both sides hold are in another order; with a shorter one, a key whose
/// partner is more than `window` keys away is taken as only on its side.
pub(crate) struct Matcher<K, T> {
    window: usize,
    source: Window<K, T>,
    target: Window<K, T>,
    matched: u64,
}

impl<K: Clone + Eq + Hash, T: Clone> Matcher<K, T> {
    /// A matcher holding at most `window` keys per side (at least one).
    pub fn new(window: usize) -> Self {
        Matcher {
            window: window.max(1),
            source: Window::default(),
            target: Window::default(),
            matched: 0,
        }
    }

    /// The source's next key with its value, `None` at its end.
    pub fn push_source(&mut self, item: Option<(K, T)>) {
        self.source.push(item);
    }

    /// The target's next key with its value, `None` at its end.
    pub fn push_target(&mut self, item: Option<(K, T)>) {
        self.target.push(item);
    }

    /// Keys found in the same place on both sides so far.
    pub fn matched(&self) -> u64 {
        self.matched
    }

    /// Decides as far as the keys pushed allow.
    pub fn step(&mut self) -> Step<K, T> {
        loop {
            let need = |side: &Window<K, T>, n: usize| side.items.len() < n && !side.ended;
            if need(&self.source, 1) || need(&self.target, 1) {
                return Step::Need {
                    source: need(&self.source, 1),
                    target: need(&self.target, 1),
                };
            }
            let (Some((s, _)), Some((t, _))) =
                (self.source.items.front(), self.target.items.front())
            else {
                return Step::Done(None);
            };
            if s == t {
                self.source.pop();
                self.target.pop();
                self.matched += 1;
                continue;
            }
            if need(&self.source, self.window) || need(&self.target, self.window) {
                return Step::Need {
                    source: need(&self.source, self.window),
                    target: need(&self.target, self.window),
                };
            }
            match (self.target.holds(s), self.source.holds(t)) {
                (true, true) => {
                    let (s, s_at_source) = self.source.items.front().cloned().expect("a head");
                    let (t, t_at_target) = self.target.items.front().cloned().expect("a head");
                    let s_at_target = self.target.find(&s).expect("held").clone();
                    let t_at_source = self.source.find(&t).expect("held").clone();
                    return Step::Done(Some(Inversion {
                        first: (s, s_at_source, s_at_target),
                        second: (t, t_at_source, t_at_target),
                    }));
                }
                (true, false) => self.target.pop(),
                (false, true) => self.source.pop(),
                (false, false) => {
                    self.source.pop();
                    self.target.pop();
                }
            }
        }
    }
}

/// One side's look-ahead: the keys in order, and how often each is there.
struct Window<K, T> {
    items: VecDeque<(K, T)>,
    counts: HashMap<K, usize>,
    ended: bool,
}

impl<K, T> Default for Window<K, T> {
    fn default() -> Self {
        Window {
            items: VecDeque::new(),
            counts: HashMap::new(),
            ended: false,
        }
    }
}

impl<K: Clone + Eq + Hash, T> Window<K, T> {
    fn push(&mut self, item: Option<(K, T)>) {
        match item {
            Some((key, value)) => {
                *self.counts.entry(key.clone()).or_default() += 1;
                self.items.push_back((key, value));
            }
            None => self.ended = true,
        }
    }

    fn pop(&mut self) {
        let Some((key, _)) = self.items.pop_front() else {
            return;
        };
        if let Some(count) = self.counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&key);
            }
        }
    }

    fn holds(&self, key: &K) -> bool {
        self.counts.contains_key(key)
    }

    fn find(&self, key: &K) -> Option<&T> {
        self.items.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// A user event's identity in the order check: its stream (ids are unique
/// per stream, not always across streams) and id. Shared by the window's
/// queue and count map.
type Key = Arc<(String, Uuid)>;

/// Reads both `$all`s at once and returns the first pair of user events in
/// another order on the target; see "Order" in the [module docs](super).
///
/// # Errors
/// [`VerifyError`] when a read fails or times out.
pub(crate) async fn check_order<S: ClusterRead, T: ClusterRead>(
    source: &S,
    target: &T,
    options: &VerifyOptions,
) -> Result<Option<OrderDifference>, VerifyError> {
    let mut source = AllReader::open(source, SOURCE, options);
    let mut target = AllReader::open(target, TARGET, options);
    let mut matcher = Matcher::<Key, Position>::new(options.order_window);
    loop {
        match matcher.step() {
            Step::Need {
                source: need_source,
                target: need_target,
            } => {
                let (s, t) =
                    futures::try_join!(source.next_if(need_source), target.next_if(need_target))?;
                if need_source {
                    matcher.push_source(s);
                }
                if need_target {
                    matcher.push_target(t);
                }
            }
            Step::Done(found) => {
                tracing::debug!(matched = matcher.matched(), "Order checked");
                return Ok(found.map(|inversion| {
                    let event = |(key, at_source, at_target): (Key, Position, Position)| {
                        let (stream, id) = Arc::unwrap_or_clone(key);
                        OrderedEvent {
                            stream,
                            id,
                            source_position: at_source,
                            target_position: at_target,
                        }
                    };
                    OrderDifference {
                        first: event(inversion.first),
                        second: event(inversion.second),
                    }
                }));
            }
        }
    }
}

/// One side's `$all`, read forward as the user events the order check
/// compares.
struct AllReader<'a> {
    side: &'static str,
    reader: Option<Records<'a, (Position, Record)>>,
    options: &'a VerifyOptions,
}

impl<'a> AllReader<'a> {
    fn open<C: ClusterRead>(
        client: &'a C,
        side: &'static str,
        options: &'a VerifyOptions,
    ) -> AllReader<'a> {
        AllReader {
            side,
            reader: Some(client.all_records(AllFrom::Start, Direction::Forwards, usize::MAX)),
            options,
        }
    }

    async fn next_if(&mut self, wanted: bool) -> Result<Option<(Key, Position)>, VerifyError> {
        if wanted {
            self.next().await
        } else {
            Ok(None)
        }
    }

    /// The next user event (on the source: covered by `until`, as `expect`
    /// maps it), `None` at the end.
    async fn next(&mut self) -> Result<Option<(Key, Position)>, VerifyError> {
        let options = self.options;
        loop {
            let Some(reader) = self.reader.as_mut() else {
                return Ok(None);
            };
            let next = next_record(self.side, operation, options.request_timeout, reader);
            let Some((position, record)) = next.await? else {
                self.reader = None;
                return Ok(None);
            };
            if self.side == SOURCE && !options.until.covers(position) {
                self.reader = None;
                return Ok(None);
            }
            if classify(&record.stream, &record.event_type, &record.data) != ChangeKind::Append
                || !record.stream.starts_with(&options.stream_prefix)
            {
                continue;
            }
            let key = match (self.side, options.expect.as_ref()) {
                (SOURCE, Some(expect)) => {
                    let event = VerifiedEvent {
                        stream: record.stream,
                        revision: record.revision,
                        position: Some(position),
                        id: record.id,
                        event_type: record.event_type,
                        is_json: record.is_json,
                        data: record.data,
                        metadata: record.metadata,
                    };
                    match expect(event) {
                        Some(expected) => (expected.stream, expected.id),
                        None => continue,
                    }
                }
                _ => (record.stream, record.id),
            };
            return Ok(Some((Arc::new(key), position)));
        }
    }
}

fn operation() -> String {
    "reading $all to check its order".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Drives a [`Matcher`] with two sequences of keys, each valued by its
    /// index on its side.
    fn first_inversion(
        source: &[u32],
        target: &[u32],
        window: usize,
    ) -> Option<Inversion<u32, usize>> {
        let mut source = source.iter().copied().enumerate().map(|(i, k)| (k, i));
        let mut target = target.iter().copied().enumerate().map(|(i, k)| (k, i));
        let mut matcher = Matcher::new(window);
        loop {
            match matcher.step() {
                Step::Need {
                    source: s,
                    target: t,
                } => {
                    assert!(s || t, "a need names a side");
                    if s {
                        matcher.push_source(source.next());
                    }
                    if t {
                        matcher.push_target(target.next());
                    }
                    let held = matcher.source.items.len().max(matcher.target.items.len());
                    assert!(held <= window.max(1), "{held} keys held, window {window}");
                }
                Step::Done(found) => return found,
            }
        }
    }

    /// The pair as (first key, second key).
    fn pair(source: &[u32], target: &[u32], window: usize) -> Option<(u32, u32)> {
        first_inversion(source, target, window).map(|i| (i.first.0, i.second.0))
    }

    #[test]
    fn the_same_order_has_no_difference() {
        let keys: Vec<u32> = (0..50).collect();
        assert_eq!(pair(&keys, &keys, 4), None);
        assert_eq!(pair(&[], &[], 4), None);
    }

    #[test]
    fn one_swap_is_the_pair_with_both_sides_places() {
        let inversion = first_inversion(&[1, 2, 3, 4, 5], &[1, 2, 4, 3, 5], 10).unwrap();
        // The source has 3 (its index 2) before 4 (index 3); the target has 4
        // (index 2) before 3 (index 3).
        assert_eq!(
            inversion,
            Inversion {
                first: (3, 2, 3),
                second: (4, 3, 2),
            }
        );
    }

    #[test]
    fn events_missing_on_the_target_are_no_difference() {
        assert_eq!(pair(&[1, 2, 3, 4, 5], &[1, 3, 5], 2), None);
        assert_eq!(pair(&[1, 2, 3], &[], 2), None);
    }

    #[test]
    fn extra_events_on_the_target_are_no_difference() {
        assert_eq!(pair(&[1, 3, 5], &[1, 2, 3, 4, 5, 6], 2), None);
        assert_eq!(pair(&[], &[7, 8], 2), None);
    }

    #[test]
    fn events_scavenged_on_the_source_are_no_difference() {
        // The target got 2..=6 before the source scavenged them; an order
        // difference after them is still found.
        let source = [1, 7, 8, 9, 10];
        let target = [1, 2, 3, 4, 5, 6, 7, 9, 8, 10];
        assert_eq!(pair(&source, &target[..8], 8), None);
        assert_eq!(pair(&source, &target, 8), Some((8, 9)));
    }

    #[test]
    fn missing_extra_and_swapped_together_name_the_swapped_pair() {
        let source = [1, 2, 3, 4, 5, 6];
        let target = [1, 20, 4, 3, 21, 6];
        assert_eq!(pair(&source, &target, 3), Some((3, 4)));
    }

    #[test]
    fn a_pair_further_apart_than_the_window_is_taken_as_missing_and_extra() {
        // 1 moved to the end of the target: 9 keys apart.
        let source: Vec<u32> = (1..=10).collect();
        let mut target: Vec<u32> = (2..=10).collect();
        target.push(1);
        assert_eq!(pair(&source, &target, 10), Some((1, 2)));
        assert_eq!(pair(&source, &target, 4), None);
    }

    #[test]
    fn a_duplicate_on_the_target_is_no_difference() {
        assert_eq!(pair(&[1, 2, 3], &[1, 2, 1, 3], 4), None);
    }

    #[test]
    fn the_report_names_both_events_and_both_places() {
        let event = |stream: &str, id: u128, source: u64, target: u64| OrderedEvent {
            stream: stream.into(),
            id: Uuid::from_u128(id),
            source_position: Position::at(source),
            target_position: Position::at(target),
        };
        let difference = OrderDifference {
            first: event("a", 1, 100, 900),
            second: event("b", 2, 200, 800),
        };
        assert_eq!(
            difference.to_string(),
            "order differs: source has 00000000-0000-0000-0000-000000000001 (\"a\", \
             C:100/P:100) before 00000000-0000-0000-0000-000000000002 (\"b\", C:200/P:200); \
             the target has 00000000-0000-0000-0000-000000000002 at C:800/P:800 before \
             00000000-0000-0000-0000-000000000001 at C:900/P:900"
        );
    }

    /// Whether the keys both sides hold are in the same order.
    fn common_order_differs(source: &[u32], target: &[u32]) -> bool {
        let common = |a: &[u32], b: &[u32]| -> Vec<u32> {
            a.iter().copied().filter(|k| b.contains(k)).collect()
        };
        common(source, target) != common(target, source)
    }

    /// A source of `n` unique keys, and a target built from it: some keys
    /// dropped (missing, scavenged), extras (keys ≥ 1000) inserted, and some
    /// adjacent keys swapped.
    fn pair_of_sides() -> impl Strategy<Value = (Vec<u32>, Vec<u32>)> {
        (0usize..40)
            .prop_flat_map(|n| {
                (
                    Just(n),
                    proptest::collection::vec(proptest::bool::weighted(0.2), n),
                    proptest::collection::vec(0usize..=n, 0..5),
                    proptest::collection::vec(0usize..n.max(1), 0..3),
                )
            })
            .prop_map(|(n, dropped, extras, swaps)| {
                let source: Vec<u32> = (0..n as u32).collect();
                let mut target: Vec<u32> = source
                    .iter()
                    .copied()
                    .filter(|k| !dropped[*k as usize])
                    .collect();
                for (i, at) in extras.into_iter().enumerate() {
                    target.insert(at.min(target.len()), 1000 + i as u32);
                }
                for at in swaps {
                    if at + 1 < target.len() {
                        target.swap(at, at + 1);
                    }
                }
                (source, target)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A reported pair is always in another order; with a window longer
        /// than both sides, a pair is reported exactly when the keys both hold
        /// are in another order; the same order is never reported, whatever
        /// the window.
        #[test]
        fn reported_pairs_are_real_and_none_is_missed_within_the_window(
            (source, target) in pair_of_sides(),
            window in 1usize..8,
        ) {
            let differs = common_order_differs(&source, &target);
            let index = |side: &[u32], k: u32| side.iter().position(|x| *x == k).unwrap();
            for w in [window, source.len() + target.len() + 1] {
                match first_inversion(&source, &target, w) {
                    Some(Inversion { first: (a, a_s, a_t), second: (b, b_s, b_t) }) => {
                        prop_assert!(differs);
                        prop_assert_eq!((a_s, a_t), (index(&source, a), index(&target, a)));
                        prop_assert_eq!((b_s, b_t), (index(&source, b), index(&target, b)));
                        prop_assert!(a_s < b_s && b_t < a_t, "{a}, {b} not inverted");
                    }
                    None => prop_assert!(
                        !differs || w <= source.len() + target.len(),
                        "an inversion missed with a window of {w}"
                    ),
                }
            }
        }
    }
}
