//! A group's definition: where it reads, from where, with which settings; the
//! conversions from the wire (`Create`, `Update`), the strings `GetInfo` reports,
//! and the `$PersistentConfig` entry the definition is persisted as.

use fancy_regex::Regex;
use serde_json::{json, Value};
use tonic::Status;

use super::super::convert::stream_name;
use crate::proto::persistent_subscriptions::{create_req, update_req};
use crate::store::Record;

/// The strategies the real server registers (`SystemConsumerStrategies`).
pub(super) const STRATEGIES: [&str; 4] = [
    "DispatchToSingle",
    "RoundRobin",
    "Pinned",
    "PinnedByCorrelation",
];

/// A position in a group's source: a stream revision, or a `$all` position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pos {
    Revision(u64),
    Log { commit: u64, prepare: u64 },
}

impl Pos {
    /// What `GetInfo` and the checkpoint event carry: `"42"` or `"C:1/P:1"`.
    pub(super) fn text(self) -> String {
        match self {
            Pos::Revision(r) => r.to_string(),
            Pos::Log { commit, prepare } => format!("C:{commit}/P:{prepare}"),
        }
    }

    pub(super) fn parse(text: &str, all: bool) -> Option<Pos> {
        if !all {
            return text.trim().parse().ok().map(Pos::Revision);
        }
        let (c, p) = text.trim().split_once('/')?;
        Some(Pos::Log {
            commit: c.strip_prefix("C:")?.parse().ok()?,
            prepare: p.strip_prefix("P:")?.parse().ok()?,
        })
    }

    /// Where `record` sits in a group's source.
    pub(super) fn of(record: &Record, all: bool) -> Pos {
        if all {
            Pos::Log {
                commit: record.commit_position,
                prepare: record.prepare_position,
            }
        } else {
            Pos::Revision(record.revision)
        }
    }
}

/// Where a group starts when it has no checkpoint; inclusive. `-1` is "the
/// current end", resolved when the group loads (as the server's "from current").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Start {
    Revision(i64),
    Log { commit: i64, prepare: i64 },
}

impl Start {
    /// `start_from` as `GetInfo` reports it (`ToString()` of the server's
    /// start position types).
    pub(super) fn text(self) -> String {
        match self {
            Start::Revision(r) => r.to_string(),
            Start::Log { commit, prepare } => format!("C:{commit}/P:{prepare}"),
        }
    }

    fn parse(text: &str, all: bool) -> Option<Start> {
        if !all {
            return text.trim().parse().ok().map(Start::Revision);
        }
        let (c, p) = text.trim().split_once('/')?;
        Some(Start::Log {
            commit: c.strip_prefix("C:")?.parse().ok()?,
            prepare: p.strip_prefix("P:")?.parse().ok()?,
        })
    }
}

/// The filter of a `$all` group: a regex, else prefixes, on the stream id or the
/// event type.
#[derive(Clone, Debug)]
pub(super) struct GroupFilter {
    pub(super) on_stream: bool,
    pub(super) regex: String,
    pub(super) prefixes: Vec<String>,
    compiled: Option<Regex>,
}

impl GroupFilter {
    fn new(on_stream: bool, regex: String, prefixes: Vec<String>) -> Result<GroupFilter, String> {
        let compiled = if regex.is_empty() {
            None
        } else {
            Some(Regex::new(&regex).map_err(|e| format!("invalid filter regex: {e}"))?)
        };
        Ok(GroupFilter {
            on_stream,
            regex,
            prefixes,
            compiled,
        })
    }

    pub(super) fn matches(&self, record: &Record) -> bool {
        let subject: &str = if self.on_stream {
            &record.stream
        } else {
            &record.event_type
        };
        match &self.compiled {
            // .NET `Regex.IsMatch`: unanchored.
            Some(regex) => regex.is_match(subject).unwrap_or(false),
            None => {
                self.prefixes.is_empty() || self.prefixes.iter().any(|p| subject.starts_with(p))
            }
        }
    }

    /// The server's `EventFilterDto` (`EventFilter.cs`).
    fn dto(&self) -> Value {
        let (kind, data) = if self.regex.is_empty() {
            ("prefix", self.prefixes.join(","))
        } else {
            ("regex", self.regex.clone())
        };
        json!({
            "Context": if self.on_stream { "streamid" } else { "eventtype" },
            "Type": kind,
            "Data": data,
            "IsAllStream": true,
        })
    }

    fn from_dto(dto: &Value) -> Option<GroupFilter> {
        let on_stream = dto.get("Context")?.as_str()? == "streamid";
        let data = dto.get("Data")?.as_str()?.to_owned();
        let filter = match dto.get("Type")?.as_str()? {
            "regex" => GroupFilter::new(on_stream, data, Vec::new()),
            _ => GroupFilter::new(
                on_stream,
                String::new(),
                data.split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
        };
        filter.ok()
    }
}

/// Where a group reads.
#[derive(Clone, Debug)]
pub(super) enum Source {
    Stream(String),
    All(Option<GroupFilter>),
}

impl Source {
    /// The stream name the server keys groups (and names their streams) by.
    pub(super) fn name(&self) -> &str {
        match self {
            Source::Stream(s) => s,
            Source::All(_) => "$all",
        }
    }

    pub(super) fn is_all(&self) -> bool {
        matches!(self, Source::All(_))
    }
}

/// A group's settings, as the server keeps them (after its conversions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Settings {
    pub(super) resolve_links: bool,
    pub(super) extra_statistics: bool,
    /// 0: messages never time out.
    pub(super) message_timeout_ms: i32,
    pub(super) max_retry_count: i32,
    pub(super) min_checkpoint_count: i32,
    pub(super) max_checkpoint_count: i32,
    /// 0: no limit.
    pub(super) max_subscriber_count: i32,
    pub(super) live_buffer_size: i32,
    pub(super) read_batch_size: i32,
    pub(super) history_buffer_size: i32,
    /// 0: the timer never fires (the server's `TimeSpan.MaxValue`).
    pub(super) checkpoint_after_ms: i32,
    pub(super) strategy: String,
    pub(super) start: Start,
}

/// A group: its source, name and settings.
#[derive(Clone, Debug)]
pub(super) struct Definition {
    pub(super) source: Source,
    pub(super) group: String,
    pub(super) settings: Settings,
}

/// A duration sent as milliseconds or as .NET ticks (100 ns), in milliseconds.
fn millis(ms: Option<i32>, ticks: Option<i64>) -> i32 {
    match (ms, ticks) {
        (Some(ms), _) => ms,
        (None, Some(ticks)) => i32::try_from(ticks / 10_000).unwrap_or(i32::MAX),
        (None, None) => 0,
    }
}

macro_rules! settings_from_wire {
    ($module:ident, $settings:expr, $strategy:expr, $start:expr) => {{
        use $module::settings::{CheckpointAfter, MessageTimeout};
        let s = $settings;
        let (timeout_ms, timeout_ticks) = match s.message_timeout {
            Some(MessageTimeout::MessageTimeoutMs(ms)) => (Some(ms), None),
            Some(MessageTimeout::MessageTimeoutTicks(t)) => (None, Some(t)),
            None => (None, None),
        };
        let (after_ms, after_ticks) = match s.checkpoint_after {
            Some(CheckpointAfter::CheckpointAfterMs(ms)) => (Some(ms), None),
            Some(CheckpointAfter::CheckpointAfterTicks(t)) => (None, Some(t)),
            None => (None, None),
        };
        Settings {
            resolve_links: s.resolve_links,
            extra_statistics: s.extra_statistics,
            message_timeout_ms: millis(timeout_ms, timeout_ticks),
            max_retry_count: s.max_retry_count,
            min_checkpoint_count: s.min_checkpoint_count,
            max_checkpoint_count: s.max_checkpoint_count,
            max_subscriber_count: s.max_subscriber_count,
            live_buffer_size: s.live_buffer_size,
            read_batch_size: s.read_batch_size,
            history_buffer_size: s.history_buffer_size,
            checkpoint_after_ms: millis(after_ms, after_ticks),
            strategy: $strategy,
            start: $start,
        }
    }};
}

/// The enum name of a deprecated `named_consumer_strategy` value, as .NET's
/// `ToString()` gives it (an unknown number prints as the number).
fn enum_strategy(value: i32) -> String {
    match value {
        0 => "DispatchToSingle".to_owned(),
        1 => "RoundRobin".to_owned(),
        2 => "Pinned".to_owned(),
        other => other.to_string(),
    }
}

fn stream_start(revision: u64) -> Start {
    Start::Revision(i64::try_from(revision).unwrap_or(i64::MAX))
}

fn log_start(commit: u64, prepare: u64) -> Start {
    Start::Log {
        commit: i64::try_from(commit).unwrap_or(i64::MAX),
        prepare: i64::try_from(prepare).unwrap_or(i64::MAX),
    }
}

/// A `Create` request as a definition (`PersistentSubscriptions.Create.cs`).
pub(super) fn from_create(options: create_req::Options) -> Result<Definition, Status> {
    use create_req::all_options::{filter_options::Filter, AllOption, FilterOption};
    use create_req::options::StreamOption;
    use create_req::stream_options::RevisionOption;
    let settings = options.settings.unwrap_or_default();
    let strategy = if settings.consumer_strategy.is_empty() {
        #[allow(deprecated)]
        enum_strategy(settings.named_consumer_strategy)
    } else {
        settings.consumer_strategy.clone()
    };
    let (source, start) = match options.stream_option {
        Some(StreamOption::Stream(stream)) => {
            let name = stream_name(stream.stream_identifier)?;
            let start = match stream.revision_option {
                Some(RevisionOption::Revision(r)) => stream_start(r),
                Some(RevisionOption::End(())) => Start::Revision(-1),
                Some(RevisionOption::Start(())) | None => Start::Revision(0),
            };
            (Source::Stream(name), start)
        }
        Some(StreamOption::All(all)) => {
            let start = match all.all_option {
                Some(AllOption::Position(p)) => log_start(p.commit_position, p.prepare_position),
                Some(AllOption::End(())) => Start::Log {
                    commit: -1,
                    prepare: -1,
                },
                Some(AllOption::Start(())) | None => Start::Log {
                    commit: 0,
                    prepare: 0,
                },
            };
            // The window and checkpoint multiplier are not passed on by the
            // server's Create handler: only the expression matters.
            let filter = match all.filter_option {
                Some(FilterOption::Filter(f)) => {
                    let (on_stream, expression) = match f.filter {
                        Some(Filter::StreamIdentifier(e)) => (true, e),
                        Some(Filter::EventType(e)) => (false, e),
                        None => return Err(Status::invalid_argument("filter has no expression")),
                    };
                    Some(
                        GroupFilter::new(on_stream, expression.regex, expression.prefix)
                            .map_err(Status::invalid_argument)?,
                    )
                }
                Some(FilterOption::NoFilter(())) | None => None,
            };
            (Source::All(filter), start)
        }
        None => {
            // The deprecated form: the stream in the options, the revision in
            // the settings.
            #[allow(deprecated)]
            let (identifier, revision) = (options.stream_identifier, settings.revision);
            let name = stream_name(identifier)?;
            (Source::Stream(name), stream_start(revision))
        }
    };
    Ok(Definition {
        source,
        group: options.group_name,
        settings: settings_from_wire!(create_req, settings, strategy, start),
    })
}

/// An `Update` request as a definition; its source's filter is taken from the
/// existing group by the caller (`Update` cannot change it).
pub(super) fn from_update(options: update_req::Options) -> Result<Definition, Status> {
    use update_req::all_options::AllOption;
    use update_req::options::StreamOption;
    use update_req::stream_options::RevisionOption;
    let settings = options.settings.unwrap_or_default();
    // Update has no strategy string: always the enum's name.
    let strategy = enum_strategy(settings.named_consumer_strategy);
    let (source, start) = match options.stream_option {
        Some(StreamOption::Stream(stream)) => {
            let name = stream_name(stream.stream_identifier)?;
            let start = match stream.revision_option {
                Some(RevisionOption::Revision(r)) => stream_start(r),
                Some(RevisionOption::End(())) => Start::Revision(-1),
                Some(RevisionOption::Start(())) | None => Start::Revision(0),
            };
            (Source::Stream(name), start)
        }
        Some(StreamOption::All(all)) => {
            let start = match all.all_option {
                Some(AllOption::Position(p)) => log_start(p.commit_position, p.prepare_position),
                Some(AllOption::End(())) => Start::Log {
                    commit: -1,
                    prepare: -1,
                },
                Some(AllOption::Start(())) | None => Start::Log {
                    commit: 0,
                    prepare: 0,
                },
            };
            (Source::All(None), start)
        }
        None => {
            #[allow(deprecated)]
            let (identifier, revision) = (options.stream_identifier, settings.revision);
            let name = stream_name(identifier)?;
            (Source::Stream(name), stream_start(revision))
        }
    };
    Ok(Definition {
        source,
        group: options.group_name,
        settings: settings_from_wire!(update_req, settings, strategy, start),
    })
}

/// Why the server refuses a start position (`ValidateStartFrom`), given the
/// end of the log (the last indexed position).
pub(super) fn invalid_start(start: Start, log_end: u64) -> Option<String> {
    match start {
        Start::Revision(r) if r < -1 => Some(format!(
            "Invalid Start From position: {r} (the event number must be -1 or more)"
        )),
        Start::Revision(_) => None,
        Start::Log { commit, prepare } => {
            if (commit == -1) != (prepare == -1) || commit < -1 || prepare < -1 {
                Some(format!(
                    "Invalid Start From position: C:{commit}/P:{prepare} (both positions must be -1, or both 0 or more)"
                ))
            } else if prepare > commit {
                Some(format!(
                    "Invalid Start From position: C:{commit}/P:{prepare} (the prepare position is after the commit position)"
                ))
            } else if commit > i64::try_from(log_end).unwrap_or(i64::MAX) {
                Some(format!(
                    "Invalid Start From position: C:{commit}/P:{prepare} (after the end of the log, {log_end})"
                ))
            } else {
                None
            }
        }
    }
}

impl Definition {
    /// The definition as an entry of the `$PersistentConfig` event
    /// (`PersistentSubscriptionConfig.cs`): durations as whole milliseconds,
    /// `StartFrom` the obsolete long (a stream's revision, a `$all` group's
    /// commit position), `StartPosition` the start as `GetInfo` reports it.
    pub(super) fn entry(&self) -> Value {
        let s = &self.settings;
        let start_from = match s.start {
            Start::Revision(r) => r,
            Start::Log { commit, .. } => commit,
        };
        json!({
            "Stream": self.source.name(),
            "Group": self.group,
            "Filter": match &self.source {
                Source::All(Some(filter)) => filter.dto(),
                _ => Value::Null,
            },
            "ResolveLinkTos": s.resolve_links,
            "ExtraStatistics": s.extra_statistics,
            "MessageTimeout": s.message_timeout_ms,
            "StartFrom": start_from,
            "StartPosition": s.start.text(),
            "LiveBufferSize": s.live_buffer_size,
            "HistoryBufferSize": s.history_buffer_size,
            "MaxRetryCount": s.max_retry_count,
            "ReadBatchSize": s.read_batch_size,
            "PreferRoundRobin": s.strategy == "RoundRobin",
            "CheckPointAfter": s.checkpoint_after_ms,
            "MinCheckPointCount": s.min_checkpoint_count,
            "MaxCheckPointCount": s.max_checkpoint_count,
            "MaxSubscriberCount": s.max_subscriber_count,
            "NamedConsumerStrategy": s.strategy,
        })
    }

    /// A definition from an entry written by [`Definition::entry`]; `None` for
    /// an entry it cannot read.
    pub(super) fn from_entry(entry: &Value) -> Option<Definition> {
        let text = |key: &str| entry.get(key).and_then(Value::as_str);
        let int = |key: &str| {
            entry
                .get(key)
                .and_then(Value::as_i64)
                .and_then(|v| i32::try_from(v).ok())
                .unwrap_or(0)
        };
        let flag = |key: &str| entry.get(key).and_then(Value::as_bool).unwrap_or(false);
        let stream = text("Stream")?;
        let all = stream == "$all";
        let source = if all {
            Source::All(entry.get("Filter").and_then(GroupFilter::from_dto))
        } else {
            Source::Stream(stream.to_owned())
        };
        let start = match text("StartPosition").and_then(|t| Start::parse(t, all)) {
            Some(start) => start,
            None if all => return None,
            None => Start::Revision(entry.get("StartFrom").and_then(Value::as_i64)?),
        };
        let strategy = match text("NamedConsumerStrategy") {
            Some(s) if !s.is_empty() => s.to_owned(),
            _ if flag("PreferRoundRobin") => "RoundRobin".to_owned(),
            _ => "DispatchToSingle".to_owned(),
        };
        Some(Definition {
            source,
            group: text("Group")?.to_owned(),
            settings: Settings {
                resolve_links: flag("ResolveLinkTos"),
                extra_statistics: flag("ExtraStatistics"),
                message_timeout_ms: int("MessageTimeout"),
                max_retry_count: int("MaxRetryCount"),
                min_checkpoint_count: int("MinCheckPointCount"),
                max_checkpoint_count: int("MaxCheckPointCount"),
                max_subscriber_count: int("MaxSubscriberCount"),
                live_buffer_size: int("LiveBufferSize"),
                read_batch_size: int("ReadBatchSize"),
                history_buffer_size: int("HistoryBufferSize"),
                checkpoint_after_ms: int("CheckPointAfter"),
                strategy,
                start,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(source: Source, start: Start) -> Definition {
        Definition {
            source,
            group: "g".to_owned(),
            settings: Settings {
                resolve_links: true,
                extra_statistics: false,
                message_timeout_ms: 30_000,
                max_retry_count: 10,
                min_checkpoint_count: 10,
                max_checkpoint_count: 1000,
                max_subscriber_count: 5,
                live_buffer_size: 500,
                read_batch_size: 200,
                history_buffer_size: 500,
                checkpoint_after_ms: 2000,
                strategy: "RoundRobin".to_owned(),
                start,
            },
        }
    }

    #[test]
    fn a_config_entry_reads_back_as_the_same_definition() {
        let filter = GroupFilter::new(false, String::new(), vec!["a".into(), "b".into()]).unwrap();
        for original in [
            definition(Source::Stream("orders".into()), Start::Revision(-1)),
            definition(
                Source::All(Some(filter)),
                Start::Log {
                    commit: 4096,
                    prepare: 4096,
                },
            ),
        ] {
            let entry = original.entry();
            let back = Definition::from_entry(&entry).expect("readable entry");
            assert_eq!(back.settings, original.settings);
            assert_eq!(back.source.name(), original.source.name());
            assert_eq!(back.entry(), entry);
        }
    }

    #[test]
    fn start_positions_are_checked_as_the_server_checks_them() {
        let log = |commit, prepare| Start::Log { commit, prepare };
        assert!(invalid_start(log(-1, -1), 100).is_none());
        assert!(invalid_start(log(0, 0), 100).is_none());
        assert!(invalid_start(log(100, 100), 100).is_none());
        for bad in [log(50, 60), log(101, 101), log(-1, 0)] {
            let reason = invalid_start(bad, 100).expect("refused");
            assert!(
                reason.starts_with("Invalid Start From position"),
                "{reason}"
            );
        }
        assert!(invalid_start(Start::Revision(-1), 0).is_none());
    }

    #[test]
    fn positions_print_and_parse_as_get_info_reports_them() {
        let p = Pos::Log {
            commit: 12,
            prepare: 10,
        };
        assert_eq!(p.text(), "C:12/P:10");
        assert_eq!(Pos::parse("C:12/P:10", true), Some(p));
        assert_eq!(Pos::parse("42", false), Some(Pos::Revision(42)));
        assert_eq!(
            Start::Log {
                commit: -1,
                prepare: -1
            }
            .text(),
            "C:-1/P:-1"
        );
    }
}
