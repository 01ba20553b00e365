//! One stream compared on both sides, in steps: its deletion state
//! (tombstones, then soft deletes), its metadata, then its events in stream
//! order. A step that finds the stream deleted on either side ends the
//! comparison of that stream.

use std::collections::{HashSet, VecDeque};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

use uuid::Uuid;

use super::metadata::{read_metadata, show_metadata, Metadata, MetadataBody};
use super::report::{difference, StreamOutcome};
use super::side::Side;
use super::sort::Listed;
use super::{
    Difference, DifferenceKind, Until, VerifiedEvent, VerifyError, VerifyOptions,
    TOMBSTONED_BY_UNTIL,
};
use crate::cluster::{ClusterRead, SOURCE, TARGET};

/// Which of a stream's source records `until` covers: those the listing saw
/// in the source's `$all` within it, by revision (a stream's revisions grow
/// with its `$all` positions). By revision rather than position, because
/// the v5 TCP protocol's stream reads carry no positions.
#[derive(Clone, Copy, Debug)]
pub(super) struct Covered {
    /// `until` is the source's end: every record.
    all: bool,
    listed: Listed,
}

impl Covered {
    fn new(options: &VerifyOptions, listed: Listed) -> Self {
        Covered {
            all: options.until == Until::End,
            listed,
        }
    }

    /// The stream's event at `revision`.
    pub(super) fn event(&self, revision: u64) -> bool {
        self.all || self.listed.events_until.is_some_and(|r| revision <= r)
    }

    /// Its metadata stream's record at `revision`.
    fn metadata(&self, revision: u64) -> bool {
        self.all || self.listed.metadata_until.is_some_and(|r| revision <= r)
    }
}

/// Compares the stream `name` (with what the listing found of it) on both
/// sides.
pub(super) async fn compare_stream<S: ClusterRead, T: ClusterRead>(
    source_client: &S,
    target_client: &T,
    name: &str,
    listed: Listed,
    options: &VerifyOptions,
) -> Result<StreamOutcome, VerifyError> {
    let mut out = StreamOutcome::default();
    let covered = Covered::new(options, listed);
    let (source, target, source_meta, target_meta) = futures::try_join!(
        Side::open(source_client, SOURCE, name, Some(covered), options),
        Side::open(target_client, TARGET, name, None, options),
        read_metadata(
            source_client,
            SOURCE,
            name,
            |r| covered.metadata(r),
            options
        ),
        read_metadata(target_client, TARGET, name, |_| true, options),
    )?;
    let (mut source, mut target) = (source, target);
    let flags = listed.flags;
    if compare_tombstones(&mut out, options, flags, &source, &target).is_break() {
        return Ok(out);
    }
    if compare_soft_deletes(&mut out, options, &source_meta, &target_meta).is_break() {
        return Ok(out);
    }
    compare_stream_metadata(&mut out, options, &source_meta, &target_meta);
    EventComparison::new(&mut out, options)
        .run(&mut source, &mut target)
        .await?;
    Ok(out)
}

/// Deletion, tombstones first: a stream tombstoned on either side is compared
/// no further.
fn compare_tombstones(
    out: &mut StreamOutcome,
    options: &VerifyOptions,
    flags: u8,
    source: &Side<'_>,
    target: &Side<'_>,
) -> ControlFlow<()> {
    let max = options.max_per_stream;
    let tombstone_covered = flags & TOMBSTONED_BY_UNTIL != 0 || options.until == Until::End;
    let state = |t: bool| if t { "tombstoned" } else { "not tombstoned" }.to_owned();
    match (source.tombstoned, target.tombstoned) {
        (true, true) => ControlFlow::Break(()),
        (true, false) if !tombstone_covered => {
            // Tombstoned on the source after `until`: nothing left to compare.
            out.changed_after_until = true;
            ControlFlow::Break(())
        }
        (true, false) | (false, true) => {
            out.push(
                max,
                difference(
                    DifferenceKind::Deletion,
                    None,
                    "",
                    state(source.tombstoned),
                    state(target.tombstoned),
                ),
            );
            ControlFlow::Break(())
        }
        (false, false) => ControlFlow::Continue(()),
    }
}

/// Whether the target's metadata is the source's latest, newer than `until`:
/// in flight, not a difference.
fn metadata_in_flight(source_meta: &Metadata, target_meta: &Metadata) -> bool {
    target_meta.latest.is_some() && target_meta.latest == source_meta.latest
}

/// Soft deletes: a stream soft-deleted on the source after `until`, or on
/// one side only (metadata in flight aside), is compared no further.
fn compare_soft_deletes(
    out: &mut StreamOutcome,
    options: &VerifyOptions,
    source_meta: &Metadata,
    target_meta: &Metadata,
) -> ControlFlow<()> {
    let max = options.max_per_stream;
    let source_soft = source_meta
        .latest_covered
        .as_ref()
        .is_some_and(MetadataBody::is_soft_delete);
    let source_soft_now = source_meta
        .latest
        .as_ref()
        .is_some_and(MetadataBody::is_soft_delete);
    let target_soft = target_meta
        .latest
        .as_ref()
        .is_some_and(MetadataBody::is_soft_delete);
    if source_soft_now && !source_soft {
        // Soft-deleted on the source after `until`: its events no longer read.
        out.changed_after_until = true;
        return ControlFlow::Break(());
    }
    let in_flight = metadata_in_flight(source_meta, target_meta);
    if source_soft != target_soft && !in_flight {
        let state = |s: bool| {
            if s {
                "soft-deleted"
            } else {
                "not soft-deleted"
            }
            .to_owned()
        };
        out.push(
            max,
            difference(
                DifferenceKind::Deletion,
                None,
                "",
                state(source_soft),
                state(target_soft),
            ),
        );
        return ControlFlow::Break(());
    }
    ControlFlow::Continue(())
}

/// Stream metadata: the target's latest against the source's latest within
/// `until` (metadata in flight aside).
fn compare_stream_metadata(
    out: &mut StreamOutcome,
    options: &VerifyOptions,
    source_meta: &Metadata,
    target_meta: &Metadata,
) {
    let in_flight = metadata_in_flight(source_meta, target_meta);
    if target_meta.latest != source_meta.latest_covered && !in_flight {
        out.push(
            options.max_per_stream,
            difference(
                DifferenceKind::Metadata,
                None,
                "stream metadata",
                show_metadata(source_meta.latest_covered.as_ref()),
                show_metadata(target_meta.latest.as_ref()),
            ),
        );
    }
}

/// The events of both sides, in stream order: matched by id, with a page of
/// look-ahead per side telling a missing event from an extra one.
struct EventComparison<'o> {
    out: &'o mut StreamOutcome,
    options: &'o VerifyOptions,
    /// The last matched ids, oldest first (at most
    /// [`VerifyOptions::duplicate_window`]), and the same as a set: a target
    /// event repeating one of them is a duplicate.
    recent: VecDeque<Uuid>,
    recent_set: HashSet<Uuid>,
}

impl<'o> EventComparison<'o> {
    fn new(out: &'o mut StreamOutcome, options: &'o VerifyOptions) -> Self {
        EventComparison {
            out,
            options,
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
        }
    }

    /// Compares the heads of both sides until both end.
    async fn run(
        mut self,
        source: &mut Side<'_>,
        target: &mut Side<'_>,
    ) -> Result<(), VerifyError> {
        loop {
            let s = source.peek().await?.cloned();
            let t = target.peek().await?.cloned();
            let covered = source.head_covered();
            match (s, t) {
                (None, None) => break,
                (Some(s), None) => {
                    source.pop();
                    if covered {
                        self.missing(&s);
                    }
                }
                (None, Some(t)) => {
                    target.pop();
                    self.extra(&t);
                }
                (Some(s), Some(t)) if s.id == t.id => {
                    source.pop();
                    target.pop();
                    self.matched(&s, &t, covered);
                }
                (Some(s), Some(t)) => {
                    self.differing_heads(source, target, &s, &t, covered)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Heads with different ids: a repeat of a matched target event, source
    /// events missing before the target's head, extra target events before
    /// the source's, the target's head beside a source event in flight, or
    /// else one event in place of another.
    async fn differing_heads(
        &mut self,
        source: &mut Side<'_>,
        target: &mut Side<'_>,
        s: &VerifiedEvent,
        t: &VerifiedEvent,
        s_covered: bool,
    ) -> Result<(), VerifyError> {
        if self.recent_set.contains(&t.id) {
            target.pop();
            self.extra(t);
        } else if let Some(k) = source.find_ahead(t.id, self.options).await? {
            // The source events before the target's are not on the target.
            for _ in 0..k {
                let missing = source.pop().expect("found ahead");
                self.missing(&missing);
            }
        } else if let Some(l) = target.find_ahead(s.id, self.options).await? {
            for _ in 0..l {
                let extra = target.pop().expect("found ahead");
                self.extra(&extra);
            }
        } else if !s_covered {
            // The source's event is in flight; the target's is unknown.
            target.pop();
            self.extra(t);
        } else {
            source.pop();
            target.pop();
            self.count_source(s);
            self.out.target_events += 1;
            self.out.push(
                self.options.max_per_stream,
                difference(
                    DifferenceKind::Content,
                    Some(s.revision),
                    "event id",
                    s.id.to_string(),
                    t.id.to_string(),
                ),
            );
        }
        Ok(())
    }

    /// The same event on both sides: its content compared.
    fn matched(&mut self, s: &VerifiedEvent, t: &VerifiedEvent, s_covered: bool) {
        if s_covered {
            self.count_source(s);
        }
        self.out.target_events += 1;
        compare_events(self.out, self.options, s, t);
        self.remember(s.id);
    }

    /// A source event the target lacks.
    fn missing(&mut self, s: &VerifiedEvent) {
        self.count_source(s);
        self.out.push(
            self.options.max_per_stream,
            difference(
                DifferenceKind::Missing,
                Some(s.revision),
                "",
                s.id.to_string(),
                "none".to_owned(),
            ),
        );
    }

    /// A target event no source event accounts for (or a duplicate).
    fn extra(&mut self, t: &VerifiedEvent) {
        self.out.target_events += 1;
        self.out.push(
            self.options.max_per_stream,
            extra_or_duplicate(t, &self.recent_set),
        );
    }

    fn count_source(&mut self, e: &VerifiedEvent) {
        self.out.source_events += 1;
        self.out.source_bytes += (e.data.len() + e.metadata.len()) as u64;
        if let Some(p) = self.options.progress.as_deref() {
            p.events_compared.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn remember(&mut self, id: Uuid) {
        let window = self.options.duplicate_window;
        if window == 0 {
            return;
        }
        if self.recent.len() >= window {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
        self.recent.push_back(id);
        self.recent_set.insert(id);
    }
}

fn extra_or_duplicate(t: &VerifiedEvent, recent: &HashSet<Uuid>) -> Difference {
    let kind = if recent.contains(&t.id) {
        DifferenceKind::Duplicate
    } else {
        DifferenceKind::Extra
    };
    difference(
        kind,
        Some(t.revision),
        "",
        "none".to_owned(),
        format!("{} {}", t.id, t.event_type),
    )
}

fn compare_events(
    out: &mut StreamOutcome,
    options: &VerifyOptions,
    s: &VerifiedEvent,
    t: &VerifiedEvent,
) {
    let max = options.max_per_stream;
    let revision = Some(s.revision);
    let mut content = |field: &str, a: String, b: String| {
        out.push(
            max,
            difference(DifferenceKind::Content, revision, field, a, b),
        );
    };
    if options.compare_revisions && s.revision != t.revision {
        content("revision", s.revision.to_string(), t.revision.to_string());
    }
    if s.event_type != t.event_type {
        content("event type", s.event_type.clone(), t.event_type.clone());
    }
    if s.is_json != t.is_json {
        content(
            "content type",
            content_type(s.is_json),
            content_type(t.is_json),
        );
    }
    if s.data != t.data {
        content("data", describe_bytes(&s.data), describe_bytes(&t.data));
    }
    if s.metadata != t.metadata {
        content(
            "metadata",
            describe_bytes(&s.metadata),
            describe_bytes(&t.metadata),
        );
    }
}

fn describe_bytes(bytes: &[u8]) -> String {
    const SHOWN: usize = 60;
    match std::str::from_utf8(bytes) {
        Ok(text) if text.len() <= SHOWN => format!("{text:?}"),
        Ok(text) => {
            let cut = (0..=SHOWN)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            format!("{:?}… ({} bytes)", &text[..cut], bytes.len())
        }
        Err(_) => format!("{} binary bytes", bytes.len()),
    }
}

fn content_type(is_json: bool) -> String {
    if is_json {
        "application/json"
    } else {
        "application/octet-stream"
    }
    .to_owned()
}
