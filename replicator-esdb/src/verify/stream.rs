//! One stream compared on both sides: its deletion state, its metadata, then
//! its events in stream order.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;

use eventstore::Client;
use uuid::Uuid;

use super::metadata::{read_metadata, show_metadata, MetadataBody};
use super::report::{difference, StreamOutcome};
use super::side::Side;
use super::{
    Difference, DifferenceKind, Until, VerifiedEvent, VerifyError, VerifyOptions,
    TOMBSTONED_BY_UNTIL,
};
use crate::cluster::{SOURCE, TARGET};

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

pub(super) async fn compare_stream(
    source_client: &Client,
    target_client: &Client,
    name: &str,
    flags: u8,
    options: &VerifyOptions,
) -> Result<StreamOutcome, VerifyError> {
    let max = options.max_per_stream;
    let mut out = StreamOutcome::default();
    let (source, target, source_meta, target_meta) = futures::try_join!(
        Side::open(source_client, SOURCE, name, options),
        Side::open(target_client, TARGET, name, options),
        read_metadata(source_client, SOURCE, name, options),
        read_metadata(target_client, TARGET, name, options),
    )?;
    let (mut source, mut target) = (source, target);

    // Deletion: tombstones first.
    let tombstone_covered = flags & TOMBSTONED_BY_UNTIL != 0 || options.until == Until::End;
    let state = |t: bool| if t { "tombstoned" } else { "not tombstoned" }.to_owned();
    match (source.tombstoned, target.tombstoned) {
        (true, true) => return Ok(out),
        (true, false) if !tombstone_covered => {
            // Tombstoned on the source after `until`: nothing left to compare.
            out.changed_after_until = true;
            return Ok(out);
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
            return Ok(out);
        }
        (false, false) => {}
    }

    // Soft deletes and metadata. Target metadata equal to the source's latest
    // (newer than `until`) is in flight, not a difference.
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
        return Ok(out);
    }
    let in_flight = target_meta.latest.is_some() && target_meta.latest == source_meta.latest;
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
        return Ok(out);
    }
    if target_meta.latest != source_meta.latest_covered && !in_flight {
        out.push(
            max,
            difference(
                DifferenceKind::Metadata,
                None,
                "stream metadata",
                show_metadata(source_meta.latest_covered.as_ref()),
                show_metadata(target_meta.latest.as_ref()),
            ),
        );
    }

    // Events, in stream order.
    let progress = options.progress.as_deref();
    let mut recent: VecDeque<Uuid> = VecDeque::new();
    let mut recent_set: HashSet<Uuid> = HashSet::new();
    let remember = |id: Uuid, recent: &mut VecDeque<Uuid>, set: &mut HashSet<Uuid>| {
        if options.duplicate_window == 0 {
            return;
        }
        if recent.len() >= options.duplicate_window {
            if let Some(old) = recent.pop_front() {
                set.remove(&old);
            }
        }
        recent.push_back(id);
        set.insert(id);
    };
    let covered = |e: &VerifiedEvent| options.until.covers(e.position);
    let count_source = |out: &mut StreamOutcome, e: &VerifiedEvent| {
        out.source_events += 1;
        out.source_bytes += (e.data.len() + e.metadata.len()) as u64;
        if let Some(p) = progress {
            p.events_compared.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        let s = source.peek().await?.cloned();
        let t = target.peek().await?.cloned();
        match (s, t) {
            (None, None) => break,
            (Some(s), None) => {
                source.pop();
                if covered(&s) {
                    count_source(&mut out, &s);
                    out.push(
                        max,
                        difference(
                            DifferenceKind::Missing,
                            Some(s.revision),
                            "",
                            s.id.to_string(),
                            "none".to_owned(),
                        ),
                    );
                }
            }
            (None, Some(t)) => {
                target.pop();
                out.target_events += 1;
                out.push(max, extra_or_duplicate(&t, &recent_set));
            }
            (Some(s), Some(t)) if s.id == t.id => {
                source.pop();
                target.pop();
                if covered(&s) {
                    count_source(&mut out, &s);
                }
                out.target_events += 1;
                compare_events(&mut out, options, &s, &t);
                remember(s.id, &mut recent, &mut recent_set);
            }
            (Some(s), Some(t)) => {
                if recent_set.contains(&t.id) {
                    target.pop();
                    out.target_events += 1;
                    out.push(max, extra_or_duplicate(&t, &recent_set));
                } else if let Some(k) = source.find_ahead(t.id, options).await? {
                    // The source events before the target's are not on the target.
                    for _ in 0..k {
                        let missing = source.pop().expect("found ahead");
                        count_source(&mut out, &missing);
                        out.push(
                            max,
                            difference(
                                DifferenceKind::Missing,
                                Some(missing.revision),
                                "",
                                missing.id.to_string(),
                                "none".to_owned(),
                            ),
                        );
                    }
                } else if let Some(l) = target.find_ahead(s.id, options).await? {
                    for _ in 0..l {
                        let extra = target.pop().expect("found ahead");
                        out.target_events += 1;
                        out.push(max, extra_or_duplicate(&extra, &recent_set));
                    }
                } else if !covered(&s) {
                    // The source's event is in flight; the target's is unknown.
                    target.pop();
                    out.target_events += 1;
                    out.push(max, extra_or_duplicate(&t, &recent_set));
                } else {
                    source.pop();
                    target.pop();
                    count_source(&mut out, &s);
                    out.target_events += 1;
                    out.push(
                        max,
                        difference(
                            DifferenceKind::Content,
                            Some(s.revision),
                            "event id",
                            s.id.to_string(),
                            t.id.to_string(),
                        ),
                    );
                }
            }
        }
    }
    Ok(out)
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
