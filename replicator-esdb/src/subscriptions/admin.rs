//! The PersistentSubscriptions service of one cluster: list, create and
//! delete groups ([`SubscriptionAdmin`]), on the crate's own gRPC channel
//! (the `eventstore` 4.0.0 client cannot send a `$all` group's filter, nor
//! read a group's settings from servers that do not advertise the calls).

use std::time::Duration;

use http::uri::PathAndQuery;
use replicator_core::secret::ConnectionString;
use replicator_core::Position;
use tonic::codec::ProstCodec;

use super::proto::{
    AllOptions, CreateOptions, CreateReq, DeleteOptions, DeleteReq, Done, Expression,
    FilterOptions, ListOptions, ListReq, ListResp, Settings, StreamOptions, SubscriptionInfo,
};
use super::{
    FilterBy, FilterExpression, Group, GroupFilter, GroupPosition, GroupSettings, GroupSource,
    Start,
};
use crate::cluster::{settings, ConnectError};
use crate::wire::channel::WireChannel;
use crate::wire::proto::{AllPosition, Empty, StreamIdentifier};
use crate::wire::token::BearerToken;

const SERVICE: &str = "/event_store.client.persistent_subscriptions.PersistentSubscriptions";

/// Why a call to a cluster's PersistentSubscriptions service failed. Each
/// message names the side (`source` or `target`).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The connection string gives no channel.
    #[error("{side}: {source}")]
    Connect {
        /// `source` or `target`.
        side: &'static str,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// The channel could not be built (TLS files, no node answering gossip).
    #[error("{side}: cannot connect: {message}")]
    Channel {
        /// `source` or `target`.
        side: &'static str,
        /// The client's message.
        message: String,
    },
    /// The server answered the call with an error.
    #[error("{side}: {operation}: {code:?}: {message}{hint}")]
    Call {
        /// `source` or `target`.
        side: &'static str,
        /// What was asked (`creating group g of stream s`).
        operation: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
        /// What the code usually means, for people.
        hint: &'static str,
    },
    /// No answer within the deadline.
    #[error("{side}: {operation}: no answer within {timeout:?}")]
    TimedOut {
        /// `source` or `target`.
        side: &'static str,
        /// What was asked.
        operation: String,
        /// The deadline.
        timeout: Duration,
    },
    /// A group's report holds a value that cannot be read.
    #[error("{side}: group {group}: {field} {value:?} is not {expected}")]
    Unreadable {
        /// `source` or `target`.
        side: &'static str,
        /// `stream::group`.
        group: String,
        /// The field of the server's `SubscriptionInfo`.
        field: &'static str,
        /// Its value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

/// The PersistentSubscriptions service of one cluster.
#[derive(Clone)]
pub struct SubscriptionAdmin {
    channel: WireChannel,
    side: &'static str,
    timeout: Duration,
}

impl std::fmt::Debug for SubscriptionAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionAdmin")
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

impl SubscriptionAdmin {
    /// The service of the cluster `connection_string` names (its leader
    /// unless the string says otherwise), called `side` in every error;
    /// each call has `timeout`.
    ///
    /// # Errors
    /// [`AdminError::Connect`] or [`AdminError::Channel`].
    pub async fn connect(
        connection_string: &ConnectionString,
        token: Option<BearerToken>,
        side: &'static str,
        timeout: Duration,
    ) -> Result<Self, AdminError> {
        let settings =
            settings(connection_string).map_err(|source| AdminError::Connect { side, source })?;
        let channel = WireChannel::connect(&settings, None)
            .await
            .map_err(|error| AdminError::Channel {
                side,
                message: crate::connection::describe(&error),
            })?
            .with_token(token);
        Ok(SubscriptionAdmin {
            channel,
            side,
            timeout,
        })
    }

    /// Every group of the cluster, filters not filled in (see
    /// [`read_filters`](super::read_filters)), sorted by source and name.
    ///
    /// # Errors
    /// A failed call, or a report that cannot be read.
    pub async fn groups(&self) -> Result<Vec<Group>, AdminError> {
        let request = ListReq {
            options: Some(ListOptions {
                list_all_subscriptions: Some(Empty {}),
            }),
        };
        let answer: ListResp = self
            .unary(
                "listing the persistent subscription groups".to_owned(),
                "List",
                request,
            )
            .await?;
        let mut groups = answer
            .subscriptions
            .iter()
            .map(|info| group_of(self.side, info))
            .collect::<Result<Vec<_>, _>>()?;
        groups.sort_by(|a, b| (&a.source, &a.name).cmp(&(&b.source, &b.name)));
        Ok(groups)
    }

    /// Creates `group` (its settings and filter) starting at `start`.
    ///
    /// # Errors
    /// A failed call (`AlreadyExists` when the group exists).
    pub async fn create(&self, group: &Group, start: Start) -> Result<(), AdminError> {
        let options = match &group.source {
            GroupSource::Stream(stream) => CreateOptions {
                stream: Some(stream_options(stream, start)),
                ..CreateOptions::default()
            },
            GroupSource::All => CreateOptions {
                all: Some(all_options(start, group.filter.as_ref())),
                ..CreateOptions::default()
            },
        };
        let request = CreateReq {
            options: Some(CreateOptions {
                group_name: group.name.clone(),
                settings: Some(settings_of(&group.settings)),
                ..options
            }),
        };
        let operation = format!("creating group {}", group.id());
        let _: Done = self.unary(operation, "Create", request).await?;
        Ok(())
    }

    /// Deletes the group `name` of `source` (and with it its checkpoint).
    ///
    /// # Errors
    /// A failed call (`NotFound` when there is no such group).
    pub async fn delete(&self, source: &GroupSource, name: &str) -> Result<(), AdminError> {
        let options = match source {
            GroupSource::Stream(stream) => DeleteOptions {
                stream_identifier: Some(identifier(stream)),
                group_name: name.to_owned(),
                all: None,
            },
            GroupSource::All => DeleteOptions {
                stream_identifier: None,
                group_name: name.to_owned(),
                all: Some(Empty {}),
            },
        };
        let operation = format!("deleting group {source}::{name}");
        let _: Done = self
            .unary(
                operation,
                "Delete",
                DeleteReq {
                    options: Some(options),
                },
            )
            .await?;
        Ok(())
    }

    async fn unary<Req, Resp>(
        &self,
        operation: String,
        method: &str,
        message: Req,
    ) -> Result<Resp, AdminError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let side = self.side;
        let call = async {
            let mut grpc = self.channel.grpc().await?;
            let path = PathAndQuery::try_from(format!("{SERVICE}/{method}"))
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            let codec = ProstCodec::<Req, Resp>::default();
            grpc.unary(self.channel.request(message), path, codec)
                .await
                .map(tonic::Response::into_inner)
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(status)) => {
                let code = status.code();
                let mut message = status.message().to_owned();
                // A refused bearer token says so, naming its file.
                if let eventstore::Error::Grpc {
                    code: tonic::Code::Unauthenticated,
                    message: refusal,
                } = self.channel.error(status)
                {
                    message = refusal;
                }
                Err(AdminError::Call {
                    side,
                    operation,
                    code,
                    message,
                    hint: hint(code),
                })
            }
            Err(_) => Err(AdminError::TimedOut {
                side,
                operation,
                timeout: self.timeout,
            }),
        }
    }
}

fn hint(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Unimplemented => {
            " (the server does not serve persistent subscriptions over gRPC: a v20+ server is \
             needed)"
        }
        tonic::Code::PermissionDenied => " (the user needs the $admins or $ops group)",
        tonic::Code::Unauthenticated => " (check the connection string's credentials)",
        _ => "",
    }
}

fn identifier(stream: &str) -> StreamIdentifier {
    StreamIdentifier {
        stream_name: stream.as_bytes().to_vec(),
    }
}

fn stream_options(stream: &str, start: Start) -> StreamOptions {
    let mut options = StreamOptions {
        stream_identifier: Some(identifier(stream)),
        ..StreamOptions::default()
    };
    match start {
        Start::Beginning => options.start = Some(Empty {}),
        Start::End => options.end = Some(Empty {}),
        Start::At(GroupPosition::Revision(revision)) => options.revision = Some(revision),
        // A stream group's report never holds a position; the start planned
        // for it is a revision (see `start.rs`).
        Start::At(GroupPosition::Position(_)) => options.start = Some(Empty {}),
    }
    options
}

fn all_options(start: Start, filter: Option<&GroupFilter>) -> AllOptions {
    let mut options = AllOptions::default();
    match start {
        Start::Beginning | Start::At(GroupPosition::Revision(_)) => options.start = Some(Empty {}),
        Start::End => options.end = Some(Empty {}),
        Start::At(GroupPosition::Position(p)) => {
            options.position = Some(AllPosition {
                commit_position: p.commit,
                prepare_position: p.prepare,
            });
        }
    }
    match filter {
        None => options.no_filter = Some(Empty {}),
        Some(filter) => {
            let expression = match &filter.expression {
                FilterExpression::Regex(regex) => Expression {
                    regex: regex.clone(),
                    prefix: Vec::new(),
                },
                FilterExpression::Prefixes(prefixes) => Expression {
                    regex: String::new(),
                    prefix: prefixes.clone(),
                },
            };
            let mut filter_options = FilterOptions {
                // The server's Create ignores the window; clients send one.
                max: Some(32),
                checkpoint_interval_multiplier: 1,
                ..FilterOptions::default()
            };
            match filter.by {
                FilterBy::StreamName => filter_options.stream_identifier = Some(expression),
                FilterBy::EventType => filter_options.event_type = Some(expression),
            }
            options.filter = Some(filter_options);
        }
    }
    options
}

fn settings_of(s: &GroupSettings) -> Settings {
    Settings {
        resolve_links: s.resolve_links,
        extra_statistics: s.extra_statistics,
        max_retry_count: s.max_retry_count,
        min_checkpoint_count: s.min_checkpoint_count,
        max_checkpoint_count: s.max_checkpoint_count,
        max_subscriber_count: s.max_subscriber_count,
        live_buffer_size: s.live_buffer_size,
        read_batch_size: s.read_batch_size,
        history_buffer_size: s.history_buffer_size,
        // Servers that read only the enum get the nearest named strategy;
        // current ones read the string.
        named_consumer_strategy: match s.consumer_strategy.as_str() {
            "RoundRobin" => 1,
            "Pinned" | "PinnedByCorrelation" => 2,
            _ => 0,
        },
        message_timeout_ms: Some(s.message_timeout_ms),
        checkpoint_after_ms: Some(s.checkpoint_after_ms),
        consumer_strategy: s.consumer_strategy.clone(),
    }
}

/// A group from the server's report of it.
fn group_of(side: &'static str, info: &SubscriptionInfo) -> Result<Group, AdminError> {
    let source = if info.event_source == "$all" {
        GroupSource::All
    } else {
        GroupSource::Stream(info.event_source.clone())
    };
    let id = format!("{}::{}", info.event_source, info.group_name);
    let unreadable =
        |field: &'static str, value: &str, expected: &'static str| AdminError::Unreadable {
            side,
            group: id.clone(),
            field,
            value: value.to_owned(),
            expected,
        };
    let start = match (&source, info.start_from.trim()) {
        (GroupSource::Stream(_), "-1") | (GroupSource::All, "C:-1/P:-1") => Start::End,
        (GroupSource::Stream(_), "0" | "") | (GroupSource::All, "C:0/P:0" | "") => Start::Beginning,
        (_, text) => Start::At(
            position_in(&source, text)
                .ok_or_else(|| unreadable("start_from", text, expected(&source)))?,
        ),
    };
    let checkpoint = match info.last_checkpointed_event_position.trim() {
        "" => None,
        text => Some(position_in(&source, text).ok_or_else(|| {
            unreadable("last_checkpointed_event_position", text, expected(&source))
        })?),
    };
    Ok(Group {
        name: info.group_name.clone(),
        source,
        settings: GroupSettings {
            resolve_links: info.resolve_link_tos,
            extra_statistics: info.extra_statistics,
            max_retry_count: info.max_retry_count,
            min_checkpoint_count: info.min_check_point_count,
            max_checkpoint_count: info.max_check_point_count,
            max_subscriber_count: info.max_subscriber_count,
            live_buffer_size: info.live_buffer_size,
            read_batch_size: info.read_batch_size,
            history_buffer_size: info.buffer_size,
            message_timeout_ms: info.message_timeout_milliseconds,
            checkpoint_after_ms: info.check_point_after_milliseconds,
            consumer_strategy: info.named_consumer_strategy.clone(),
        },
        filter: None,
        start,
        checkpoint,
        status: info.status.clone(),
    })
}

fn expected(source: &GroupSource) -> &'static str {
    match source {
        GroupSource::Stream(_) => "a stream revision",
        GroupSource::All => "an $all position C:commit/P:prepare",
    }
}

fn position_in(source: &GroupSource, text: &str) -> Option<GroupPosition> {
    match source {
        GroupSource::Stream(_) => text.parse().ok().map(GroupPosition::Revision),
        GroupSource::All => text
            .starts_with("C:")
            .then(|| text.parse::<Position>().ok())
            .flatten()
            .map(GroupPosition::Position),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(source: &str, start_from: &str, checkpoint: &str) -> SubscriptionInfo {
        SubscriptionInfo {
            event_source: source.to_owned(),
            group_name: "g".to_owned(),
            start_from: start_from.to_owned(),
            last_checkpointed_event_position: checkpoint.to_owned(),
            named_consumer_strategy: "RoundRobin".to_owned(),
            ..SubscriptionInfo::default()
        }
    }

    #[test]
    fn the_servers_start_and_checkpoint_texts_are_read_for_both_kinds_of_group() {
        let g = group_of("source", &info("orders", "-1", "41")).unwrap();
        assert_eq!(
            (g.start, g.checkpoint),
            (Start::End, Some(GroupPosition::Revision(41)))
        );
        let g = group_of("source", &info("orders", "7", "")).unwrap();
        assert_eq!(
            (g.start, g.checkpoint),
            (Start::At(GroupPosition::Revision(7)), None)
        );
        let g = group_of("source", &info("$all", "C:0/P:0", "C:120/P:110")).unwrap();
        let p = Position {
            commit: 120,
            prepare: 110,
        };
        assert_eq!(
            (g.start, g.checkpoint),
            (Start::Beginning, Some(GroupPosition::Position(p)))
        );
        assert_eq!(g.id(), "$all::g");
    }

    #[test]
    fn an_unreadable_report_names_the_side_group_and_field() {
        let error = group_of("source", &info("$all", "12", ""))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("source: group $all::g: start_from \"12\""),
            "{error}"
        );
        let error = group_of("target", &info("s", "0", "x"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("target: group s::g: last_checkpointed_event_position"),
            "{error}"
        );
    }

    #[test]
    fn a_filtered_all_group_is_created_with_its_expression_and_a_stream_group_at_its_revision() {
        let filter = GroupFilter {
            by: FilterBy::EventType,
            expression: FilterExpression::Prefixes(vec!["Order".into()]),
        };
        let options = all_options(Start::End, Some(&filter));
        let sent = options.filter.unwrap();
        assert_eq!(sent.event_type.unwrap().prefix, vec!["Order".to_owned()]);
        assert!(options.end.is_some() && options.no_filter.is_none());
        let options = stream_options("s", Start::At(GroupPosition::Revision(5)));
        assert_eq!(options.revision, Some(5));
    }
}
