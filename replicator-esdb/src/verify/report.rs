//! What [`verify`](super::verify) found: the differences of each stream and
//! the totals, as text and JSON.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::{OrderDifference, Until};

/// What differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DifferenceKind {
    /// A source event the target lacks.
    Missing,
    /// A target event no source event accounts for.
    Extra,
    /// A target event repeating one already matched in its stream.
    Duplicate,
    /// Same place, different event: id, type, content type, data, user
    /// metadata (or revision, when compared).
    Content,
    /// Different stream metadata.
    Metadata,
    /// Different deletion state (tombstoned, soft-deleted).
    Deletion,
}

impl DifferenceKind {
    /// The word the report uses.
    pub fn name(self) -> &'static str {
        match self {
            DifferenceKind::Missing => "missing",
            DifferenceKind::Extra => "extra",
            DifferenceKind::Duplicate => "duplicate",
            DifferenceKind::Content => "content",
            DifferenceKind::Metadata => "metadata",
            DifferenceKind::Deletion => "deletion",
        }
    }
}

impl fmt::Display for DifferenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One difference in a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// What differs.
    pub kind: DifferenceKind,
    /// The source revision where it shows (the target revision for extra and
    /// duplicate events); `None` for the stream as a whole.
    pub revision: Option<u64>,
    /// The field that differs, for `content`: `event id`, `event type`,
    /// `content type`, `data`, `metadata`, `revision`; empty otherwise.
    pub field: String,
    /// The source side, human-readable.
    pub source: String,
    /// The target side, human-readable.
    pub target: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        if let Some(revision) = self.revision {
            write!(f, " at revision {revision}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, " (source {}, target {})", self.source, self.target)
    }
}

/// The differences of one stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamDifferences {
    /// The stream.
    pub stream: String,
    /// The first revision that differs (`None` when the stream differs as a
    /// whole: metadata, deletion).
    pub first_revision: Option<u64>,
    /// All differences found in it.
    pub count: u64,
    /// The first
    /// [`VerifyOptions::max_per_stream`](super::VerifyOptions::max_per_stream)
    /// of them.
    pub differences: Vec<Difference>,
}

/// What [`verify`](super::verify) found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Up to where the source was required.
    pub until: Option<Until>,
    /// User streams compared.
    pub streams_compared: u64,
    /// Streams with differences.
    pub streams_differing: u64,
    /// Differences in total.
    pub differences: u64,
    /// Differences by kind.
    pub by_kind: BTreeMap<DifferenceKind, u64>,
    /// Source events compared (covered by `until`).
    pub source_events: u64,
    /// Bytes (data and user metadata) of the source events compared.
    pub source_bytes: u64,
    /// Target events compared.
    pub target_events: u64,
    /// Streams tombstoned or soft-deleted on the source after `until`, whose
    /// events could not be compared.
    pub streams_changed_after_until: u64,
    /// The first [`VerifyOptions::max_streams`](super::VerifyOptions::max_streams)
    /// differing streams, by name.
    pub streams: Vec<StreamDifferences>,
    /// How long the comparison took, in seconds.
    pub seconds: f64,
    /// Of which listing the streams (reading both `$all`).
    pub listing_seconds: f64,
    /// Whether the order of the user events in `$all` was checked
    /// ([`VerifyOptions::check_order`](super::VerifyOptions::check_order)).
    pub order_checked: bool,
    /// The first pair of user events the target's `$all` holds in another
    /// order than the source's, when checked.
    pub order: Option<OrderDifference>,
}

impl VerifyReport {
    /// No difference at all: none in the streams, none in the order.
    pub fn is_identical(&self) -> bool {
        self.differences == 0 && self.order.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for stream in &self.streams {
            write!(f, "stream {:?}: {} difference", stream.stream, stream.count)?;
            if stream.count != 1 {
                write!(f, "s")?;
            }
            if let Some(first) = stream.first_revision {
                write!(f, ", first at revision {first}")?;
            }
            writeln!(f)?;
            for difference in &stream.differences {
                writeln!(f, "  {difference}")?;
            }
            let shown = stream.differences.len() as u64;
            if stream.count > shown {
                writeln!(f, "  … and {} more", stream.count - shown)?;
            }
        }
        let shown = self.streams.len() as u64;
        if self.streams_differing > shown {
            writeln!(
                f,
                "… and {} more differing streams",
                self.streams_differing - shown
            )?;
        }
        if let Some(order) = &self.order {
            writeln!(f, "{order}")?;
        }
        write!(
            f,
            "{} streams, {} source events, {} target events compared",
            self.streams_compared, self.source_events, self.target_events
        )?;
        if self.is_identical() {
            write!(f, ": identical")?;
        } else {
            let mut found = Vec::new();
            if self.differences > 0 {
                let kinds: Vec<String> = self
                    .by_kind
                    .iter()
                    .map(|(kind, n)| format!("{n} {kind}"))
                    .collect();
                found.push(format!(
                    "{} differences in {} streams ({})",
                    self.differences,
                    self.streams_differing,
                    kinds.join(", ")
                ));
            }
            if self.order.is_some() {
                found.push("the order differs".to_owned());
            }
            write!(f, ": {}", found.join("; "))?;
        }
        if !self.order_checked {
            write!(f, "; order not checked")?;
        }
        if self.streams_changed_after_until > 0 {
            write!(
                f,
                "; {} streams deleted on the source after {} not compared",
                self.streams_changed_after_until,
                self.until.unwrap_or(Until::End)
            )?;
        }
        Ok(())
    }
}

/// What comparing one stream found.
#[derive(Debug, Default)]
pub(super) struct StreamOutcome {
    pub(super) source_events: u64,
    pub(super) source_bytes: u64,
    pub(super) target_events: u64,
    pub(super) changed_after_until: bool,
    pub(super) count: u64,
    pub(super) first_revision: Option<u64>,
    pub(super) by_kind: BTreeMap<DifferenceKind, u64>,
    pub(super) differences: Vec<Difference>,
}

impl StreamOutcome {
    pub(super) fn push(&mut self, max: usize, difference: Difference) {
        self.count += 1;
        *self.by_kind.entry(difference.kind).or_default() += 1;
        if let Some(revision) = difference.revision {
            self.first_revision = Some(self.first_revision.map_or(revision, |r| r.min(revision)));
        }
        if self.differences.len() < max {
            self.differences.push(difference);
        }
    }
}

pub(super) fn difference(
    kind: DifferenceKind,
    revision: Option<u64>,
    field: &str,
    source: String,
    target: String,
) -> Difference {
    Difference {
        kind,
        revision,
        field: field.to_owned(),
        source,
        target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::OrderedEvent;
    use replicator_core::Position;
    use uuid::Uuid;

    #[test]
    fn the_report_names_each_stream_and_the_totals() {
        let mut outcome = StreamOutcome::default();
        for revision in [5, 3, 9] {
            outcome.push(
                2,
                difference(
                    DifferenceKind::Missing,
                    Some(revision),
                    "",
                    "x".into(),
                    "none".into(),
                ),
            );
        }
        assert_eq!(outcome.first_revision, Some(3));
        assert_eq!(outcome.differences.len(), 2);
        let report = VerifyReport {
            until: Some(Until::End),
            streams_compared: 4,
            streams_differing: 1,
            differences: outcome.count,
            by_kind: outcome.by_kind.clone(),
            streams: vec![StreamDifferences {
                stream: "orders-1".into(),
                first_revision: outcome.first_revision,
                count: outcome.count,
                differences: outcome.differences,
            }],
            ..VerifyReport::default()
        };
        let text = report.to_string();
        assert!(
            text.contains("stream \"orders-1\": 3 differences, first at revision 3"),
            "{text}"
        );
        assert!(text.contains("missing at revision 5"), "{text}");
        assert!(text.contains("… and 1 more"), "{text}");
        assert!(
            text.contains("3 differences in 1 streams (3 missing)"),
            "{text}"
        );
        assert!(!report.is_identical());
    }

    #[test]
    fn an_order_difference_alone_makes_the_report_differ_and_is_named() {
        let event = |stream: &str, id: u128, source: u64, target: u64| OrderedEvent {
            stream: stream.into(),
            id: Uuid::from_u128(id),
            source_position: Position::at(source),
            target_position: Position::at(target),
        };
        let mut report = VerifyReport {
            streams_compared: 2,
            order_checked: true,
            order: Some(OrderDifference {
                first: event("a", 1, 100, 900),
                second: event("b", 2, 200, 800),
            }),
            ..VerifyReport::default()
        };
        assert!(!report.is_identical());
        let text = report.to_string();
        assert!(text.starts_with("order differs: source has "), "{text}");
        assert!(text.ends_with("compared: the order differs"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["order"]["first"]["stream"], "a", "{json}");
        assert_eq!(
            json["order"]["second"]["target_position"]["commit"], 800,
            "{json}"
        );

        report.order = None;
        assert!(report.is_identical());
        assert!(report.to_string().ends_with(": identical"));
        report.order_checked = false;
        assert!(
            report
                .to_string()
                .ends_with(": identical; order not checked"),
            "{report}"
        );
    }
}
