//! The C# Replicator's event filters (`replicator.filters`).
//!
//! A filter has a type, `eventType` or `streamName`, and an `include` and/or
//! an `exclude` regular expression. A record passes when it matches
//! `include` (or there is none) and does not match `exclude` (or there is
//! none); a record that does not pass is skipped
//! ([`SkipReason::Filtered`]) and still checkpointed.
//!
//! Patterns are .NET-like, as C# users wrote them: lookaround and
//! backreferences work (through `fancy-regex`, which hands simple patterns to
//! the `regex` crate), matching is unanchored ("contains", .NET `IsMatch`)
//! and case-sensitive.
//!
//! Where the C# tool is broken we do better (see the README):
//! - a `streamName` filter applies to every change of a stream: its events,
//!   its metadata, its soft delete and its tombstone, matched on
//!   [`Event::target_stream`] (the `$$orders` metadata record goes with
//!   `orders`), so a stream that is left out is left out entirely and a
//!   stream that is kept keeps its metadata and deletes;
//! - an `eventType` filter applies to appended events only: the C# tool
//!   matched metadata records as event type `$metadata`, so an `eventType`
//!   include dropped every stream's metadata.

use std::fmt;

use async_trait::async_trait;
use fancy_regex::Regex;
use replicator_core::{ChangeKind, Event, SkipReason, Transform, TransformError};

/// What a filter matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind {
    /// `eventType`: the event type of appended events.
    EventType,
    /// `streamName`: the target stream of every change.
    StreamName,
}

impl FilterKind {
    /// Parses the C# value, `eventType` or `streamName` (any case, like .NET
    /// configuration binding).
    ///
    /// # Errors
    /// The value when it is neither.
    pub fn parse(value: &str) -> Result<FilterKind, String> {
        if value.eq_ignore_ascii_case("eventType") {
            Ok(FilterKind::EventType)
        } else if value.eq_ignore_ascii_case("streamName") {
            Ok(FilterKind::StreamName)
        } else {
            Err(format!(
                "{value:?} is not a filter type: use eventType or streamName"
            ))
        }
    }

    /// The C# spelling.
    pub fn name(self) -> &'static str {
        match self {
            FilterKind::EventType => "eventType",
            FilterKind::StreamName => "streamName",
        }
    }
}

impl fmt::Display for FilterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which pattern of a filter an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternField {
    /// `include`.
    Include,
    /// `exclude`.
    Exclude,
}

impl PatternField {
    /// The configuration key, `include` or `exclude`.
    pub fn key(self) -> &'static str {
        match self {
            PatternField::Include => "include",
            PatternField::Exclude => "exclude",
        }
    }
}

/// A pattern that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("{pattern:?} is not a valid regular expression: {source}")]
pub struct FilterError {
    /// `include` or `exclude`.
    pub field: PatternField,
    /// The pattern as given.
    pub pattern: String,
    /// The regex engine's message.
    #[source]
    pub source: Box<fancy_regex::Error>,
}

/// One `replicator.filters` entry, as a [`Transform`].
///
/// ```
/// use replicator_transform::filter::{Filter, FilterKind};
///
/// // Orders, but not the test streams, with a lookahead.
/// let f = Filter::new(FilterKind::StreamName, Some("^order"), Some("^order-(?=test)")).unwrap();
/// assert!(f.passes_value("order-42").unwrap());
/// assert!(!f.passes_value("order-test-1").unwrap());
/// assert!(!f.passes_value("customer-1").unwrap());
/// ```
#[derive(Debug, Clone)]
pub struct Filter {
    kind: FilterKind,
    include: Option<Regex>,
    exclude: Option<Regex>,
}

impl Filter {
    /// A filter of `kind`; an empty pattern counts as none.
    ///
    /// # Errors
    /// A [`FilterError`] naming the pattern that does not compile.
    pub fn new(
        kind: FilterKind,
        include: Option<&str>,
        exclude: Option<&str>,
    ) -> Result<Filter, FilterError> {
        let compile = |field: PatternField, pattern: Option<&str>| {
            pattern
                .filter(|p| !p.is_empty())
                .map(|p| {
                    Regex::new(p).map_err(|e| FilterError {
                        field,
                        pattern: p.to_owned(),
                        source: Box::new(e),
                    })
                })
                .transpose()
        };
        Ok(Filter {
            kind,
            include: compile(PatternField::Include, include)?,
            exclude: compile(PatternField::Exclude, exclude)?,
        })
    }

    /// What the filter matches on.
    pub fn kind(&self) -> FilterKind {
        self.kind
    }

    /// Whether a stream name or event type passes.
    ///
    /// # Errors
    /// The regex engine's error when matching gives up (a pattern that
    /// backtracks beyond `fancy-regex`'s limit on this value).
    pub fn passes_value(&self, value: &str) -> Result<bool, Box<fancy_regex::Error>> {
        if let Some(include) = &self.include {
            if !include.is_match(value).map_err(Box::new)? {
                return Ok(false);
            }
        }
        if let Some(exclude) = &self.exclude {
            if exclude.is_match(value).map_err(Box::new)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether `event` passes. An `eventType` filter passes every change
    /// other than an append (metadata, deletes).
    ///
    /// # Errors
    /// As [`Filter::passes_value`].
    pub fn passes(&self, event: &Event) -> Result<bool, Box<fancy_regex::Error>> {
        match self.kind {
            FilterKind::StreamName => self.passes_value(event.target_stream()),
            FilterKind::EventType if event.kind == ChangeKind::Append => {
                self.passes_value(&event.event_type)
            }
            FilterKind::EventType => Ok(true),
        }
    }
}

#[async_trait]
impl Transform for Filter {
    fn name(&self) -> String {
        let mut name = format!("filter {}", self.kind);
        if let Some(include) = &self.include {
            name.push_str(&format!(" include {:?}", include.as_str()));
        }
        if let Some(exclude) = &self.exclude {
            name.push_str(&format!(" exclude {:?}", exclude.as_str()));
        }
        name
    }

    async fn apply(&self, mut event: Event) -> Result<Event, TransformError> {
        let value = match self.kind {
            FilterKind::StreamName => event.target_stream(),
            FilterKind::EventType => &event.event_type,
        };
        // Deterministic: retrying cannot help, and a stall is worse.
        let passes = self.passes(&event).map_err(|e| {
            TransformError::permanent(format!(
                "{} cannot match {value:?}: {e}",
                Transform::name(self)
            ))
        })?;
        if !passes {
            event.kind = ChangeKind::Skip(SkipReason::Filtered);
        }
        Ok(event)
    }

    /// Matching is cheap: one record at a time.
    fn concurrency(&self) -> usize {
        1
    }

    /// A stream filter leaves out whole streams (every change of them);
    /// an event type filter leaves out events from the middle of streams.
    fn keeps_revisions(&self) -> bool {
        self.kind == FilterKind::StreamName
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use replicator_core::Position;

    fn record(stream: &str, event_type: &str, kind: ChangeKind) -> Event {
        Event::new(stream, event_type, Bytes::new())
            .with_position(Position::at(1))
            .with_kind(kind)
    }

    async fn kind_after(f: &Filter, e: Event) -> ChangeKind {
        f.apply(e).await.unwrap().kind
    }

    #[tokio::test]
    async fn include_and_exclude_are_unanchored_case_sensitive_and_anded() {
        let f = Filter::new(FilterKind::EventType, Some("Order"), Some("Test$")).unwrap();
        let append = |t: &str| record("s", t, ChangeKind::Append);
        assert_eq!(
            kind_after(&f, append("OrderPlaced")).await,
            ChangeKind::Append
        );
        assert_eq!(
            kind_after(&f, append("BigOrderShipped")).await,
            ChangeKind::Append,
            "contains, not anchored"
        );
        assert_eq!(
            kind_after(&f, append("orderPlaced")).await,
            ChangeKind::Skip(SkipReason::Filtered),
            "case-sensitive"
        );
        assert_eq!(
            kind_after(&f, append("OrderTest")).await,
            ChangeKind::Skip(SkipReason::Filtered)
        );
    }

    #[test]
    fn lookaround_and_backreferences_compile_and_match() {
        let f = Filter::new(
            FilterKind::StreamName,
            Some(r"^(?!\$)(?<!x)\w+-(\d)\1"),
            None,
        )
        .unwrap();
        assert!(f.passes_value("orders-11").unwrap());
        assert!(!f.passes_value("orders-12").unwrap());
        let f = Filter::new(FilterKind::StreamName, None, Some(r"(?<=^test)-")).unwrap();
        assert!(!f.passes_value("test-1").unwrap());
        assert!(f.passes_value("prod-1").unwrap());
    }

    #[tokio::test]
    async fn a_stream_filter_applies_to_every_change_of_the_stream() {
        let f = Filter::new(FilterKind::StreamName, None, Some("^orders$")).unwrap();
        for kind in [
            ChangeKind::Append,
            ChangeKind::SoftDelete,
            ChangeKind::Tombstone,
        ] {
            assert_eq!(
                kind_after(&f, record("orders", "X", kind)).await,
                ChangeKind::Skip(SkipReason::Filtered),
                "{kind:?}"
            );
        }
        assert_eq!(
            kind_after(
                &f,
                record("$$orders", "$metadata", ChangeKind::StreamMetadata)
            )
            .await,
            ChangeKind::Skip(SkipReason::Filtered),
            "metadata goes with its stream"
        );
        assert_eq!(
            kind_after(
                &f,
                record("$$customers", "$metadata", ChangeKind::StreamMetadata)
            )
            .await,
            ChangeKind::StreamMetadata
        );
    }

    #[tokio::test]
    async fn an_event_type_filter_applies_to_appended_events_only() {
        let f = Filter::new(FilterKind::EventType, Some("^Order"), None).unwrap();
        assert_eq!(
            kind_after(
                &f,
                record("$$orders", "$metadata", ChangeKind::StreamMetadata)
            )
            .await,
            ChangeKind::StreamMetadata
        );
        assert_eq!(
            kind_after(
                &f,
                record("orders", "$streamDeleted", ChangeKind::SoftDelete)
            )
            .await,
            ChangeKind::SoftDelete
        );
        assert!(!f.keeps_revisions());
        assert!(Filter::new(FilterKind::StreamName, Some("a"), None)
            .unwrap()
            .keeps_revisions());
    }

    #[test]
    fn a_bad_pattern_names_the_field_and_the_pattern() {
        let err = Filter::new(FilterKind::EventType, Some("ok"), Some("(unclosed")).unwrap_err();
        assert_eq!(err.field, PatternField::Exclude);
        let msg = err.to_string();
        assert!(msg.contains("\"(unclosed\""), "{msg}");
        assert!(FilterKind::parse("eventtype").is_ok());
        let bad = FilterKind::parse("category").unwrap_err();
        assert!(
            bad.contains("category") && bad.contains("streamName"),
            "{bad}"
        );
    }
}
