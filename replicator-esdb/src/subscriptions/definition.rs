//! The groups' filters, from the server's own record of its groups: the
//! last `$PersistentConfig` event of `$persistentSubscriptionConfig`, whose
//! `Entries[]` hold each group's `Stream`, `Group` and `Filter`
//! (`{Context: streamid|eventtype, Type: regex|prefix, Data}`, prefixes
//! comma-joined; KurrentDB `PersistentSubscriptionConfig.cs`,
//! `EventFilter.cs`). `List` does not report filters.

use std::collections::HashMap;

use serde::Deserialize;

use super::{FilterBy, FilterExpression, Group, GroupFilter, GroupSource};
use crate::cluster::{next_within, ClusterRead, Direction, ReadError, StreamFrom};

/// The stream the server records its groups in.
pub const CONFIG_STREAM: &str = "$persistentSubscriptionConfig";

/// Why a group's filter is not known.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The definition stream could not be read.
    #[error("source: reading {CONFIG_STREAM} (the groups' filters; admin rights needed): {0}")]
    Read(#[source] ReadError),
    /// Its last event is not the JSON the server writes.
    #[error("source: the last event of {CONFIG_STREAM} is not a group list: {0}")]
    Json(#[source] serde_json::Error),
    /// A `$all` group is missing from it: its filter is unknown, and creating
    /// it unfiltered would deliver events its consumers never asked for.
    #[error("source: group {group} is not in {CONFIG_STREAM}, so its filter is unknown")]
    Missing {
        /// `$all::group`.
        group: String,
    },
    /// A filter of a kind this tool does not create.
    #[error("source: group {group} has a filter of type {kind:?} on {context:?}, which cannot be re-created (regex or prefix on streamid or eventtype)")]
    Unsupported {
        /// `$all::group`.
        group: String,
        /// The filter's `Type`.
        kind: String,
        /// The filter's `Context`.
        context: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Config {
    #[serde(default)]
    entries: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    stream: String,
    group: String,
    #[serde(default)]
    filter: Option<FilterDto>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FilterDto {
    context: String,
    #[serde(rename = "Type")]
    kind: String,
    data: String,
}

/// The filters of a cluster's groups, by `stream::group`.
#[derive(Debug, Default)]
pub struct Filters {
    by_group: HashMap<String, Option<FilterDto>>,
}

impl std::fmt::Debug for FilterDto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.context, self.kind, self.data)
    }
}

impl Filters {
    /// Reads `text`, the data of a `$PersistentConfig` event.
    ///
    /// # Errors
    /// [`FilterError::Json`].
    pub fn parse(text: &[u8]) -> Result<Self, FilterError> {
        let config: Config = serde_json::from_slice(text).map_err(FilterError::Json)?;
        let by_group = config
            .entries
            .into_iter()
            .map(|e| (format!("{}::{}", e.stream, e.group), e.filter))
            .collect();
        Ok(Filters { by_group })
    }

    /// `group`'s filter: `None` for a stream group and an unfiltered `$all`
    /// group.
    ///
    /// # Errors
    /// [`FilterError::Missing`] for a `$all` group not recorded,
    /// [`FilterError::Unsupported`] for a filter of another kind.
    pub fn of(&self, group: &Group) -> Result<Option<GroupFilter>, FilterError> {
        if group.source != GroupSource::All {
            return Ok(None);
        }
        let id = group.id();
        let Some(entry) = self.by_group.get(&id) else {
            return Err(FilterError::Missing { group: id });
        };
        let Some(dto) = entry else { return Ok(None) };
        let unsupported = || FilterError::Unsupported {
            group: id.clone(),
            kind: dto.kind.clone(),
            context: dto.context.clone(),
        };
        let by = match dto.context.to_ascii_lowercase().as_str() {
            "streamid" => FilterBy::StreamName,
            "eventtype" => FilterBy::EventType,
            _ => return Err(unsupported()),
        };
        let expression = match dto.kind.to_ascii_lowercase().as_str() {
            "regex" => FilterExpression::Regex(dto.data.clone()),
            "prefix" => FilterExpression::Prefixes(
                dto.data
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            _ => return Err(unsupported()),
        };
        Ok(Some(GroupFilter { by, expression }))
    }
}

/// Reads the filters recorded on `cluster` (the last event of
/// [`CONFIG_STREAM`]; none when the stream does not exist).
///
/// # Errors
/// [`FilterError::Read`] or [`FilterError::Json`].
pub async fn read_filters<C: ClusterRead>(
    cluster: &C,
    timeout: std::time::Duration,
) -> Result<Filters, FilterError> {
    let mut records =
        cluster.stream_records(CONFIG_STREAM, StreamFrom::End, Direction::Backwards, 1);
    match next_within(timeout, &mut records).await {
        Ok(Some(record)) => Filters::parse(&record.data),
        Ok(None) | Err(ReadError::NotFound) => Ok(Filters::default()),
        Err(error) => Err(FilterError::Read(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscriptions::{GroupSettings, Start};

    fn group(source: GroupSource, name: &str) -> Group {
        Group {
            name: name.to_owned(),
            source,
            settings: GroupSettings {
                resolve_links: false,
                extra_statistics: false,
                max_retry_count: 10,
                min_checkpoint_count: 10,
                max_checkpoint_count: 1000,
                max_subscriber_count: 0,
                live_buffer_size: 500,
                read_batch_size: 20,
                history_buffer_size: 500,
                message_timeout_ms: 30_000,
                checkpoint_after_ms: 2_000,
                consumer_strategy: "RoundRobin".to_owned(),
            },
            filter: None,
            start: Start::Beginning,
            checkpoint: None,
            status: String::new(),
        }
    }

    #[test]
    fn each_all_groups_filter_is_read_from_the_servers_record() {
        let text = br#"{"Version":"2","Entries":[
            {"Stream":"$all","Group":"orders","Filter":{"Context":"EventType","Type":"Prefix","Data":"Order,Invoice","IsAllStream":true}},
            {"Stream":"$all","Group":"all","Filter":null},
            {"Stream":"$all","Group":"rx","Filter":{"Context":"StreamId","Type":"Regex","Data":"^acc-"}},
            {"Stream":"s","Group":"g"}]}"#;
        let filters = Filters::parse(text).unwrap();
        let prefixes = filters
            .of(&group(GroupSource::All, "orders"))
            .unwrap()
            .unwrap();
        assert_eq!(prefixes.by, FilterBy::EventType);
        assert_eq!(
            prefixes.expression,
            FilterExpression::Prefixes(vec!["Order".into(), "Invoice".into()])
        );
        assert_eq!(filters.of(&group(GroupSource::All, "all")).unwrap(), None);
        let regex = filters.of(&group(GroupSource::All, "rx")).unwrap().unwrap();
        assert_eq!(regex.expression, FilterExpression::Regex("^acc-".into()));
        assert_eq!(
            filters
                .of(&group(GroupSource::Stream("s".into()), "g"))
                .unwrap(),
            None
        );
    }

    #[test]
    fn an_all_group_missing_from_the_record_is_an_error_not_an_unfiltered_group() {
        let filters = Filters::parse(br#"{"Entries":[]}"#).unwrap();
        let error = filters
            .of(&group(GroupSource::All, "x"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("$all::x is not in $persistentSubscriptionConfig"),
            "{error}"
        );
    }
}
