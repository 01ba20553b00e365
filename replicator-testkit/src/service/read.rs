//! Reads and subscriptions: of `$all` and of a stream, filtered or not.

use fancy_regex::Regex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use super::convert::{identifier, recorded, stream_name};
use super::status::{shutting_down, stream_deleted};
use super::streams::{send, unpaused, ReplySender, StreamsService};
use crate::proto::streams::{read_req, read_resp, ReadReq, ReadResp};
use crate::store::{ReadFailure, Record, Store};

/// Records taken from the store per lock: large enough to stream fast, small enough
/// that writers never wait long.
const CHUNK: usize = 256;
/// Filtered subscriptions send a checkpoint every `window × multiplier` events
/// considered; the window when the client asks for `count` (the server default).
const DEFAULT_FILTER_WINDOW: u32 = 32;

/// One event of a read: the record read, and what it resolves to when it is a link
/// and links are resolved.
struct Item {
    original: Record,
    resolved: Option<Record>,
    resolve: bool,
}

impl Item {
    fn new(store: &Store, original: Record, resolve_links: bool) -> Item {
        let resolve = resolve_links && original.is_link();
        let resolved = if resolve {
            store.resolve_link(&original)
        } else {
            None
        };
        Item {
            original,
            resolved,
            resolve,
        }
    }

    fn to_reply(&self, structured: bool) -> ReadResp {
        let (event, link) = if self.resolve {
            (
                self.resolved.as_ref().map(|r| recorded(r, structured)),
                Some(recorded(&self.original, structured)),
            )
        } else {
            (Some(recorded(&self.original, structured)), None)
        };
        ReadResp {
            content: Some(read_resp::Content::Event(read_resp::ReadEvent {
                event,
                link,
                position: Some(read_resp::read_event::Position::CommitPosition(
                    self.original.commit_position,
                )),
            })),
        }
    }
}

/// The reply stream of a read. A subscription must never end with OK (the client
/// then spins forever), so when its sender goes away without a final error, this
/// stream ends it with `Unavailable` itself.
pub(crate) struct ReplyStream<T> {
    pub(super) rx: mpsc::Receiver<Result<T, Status>>,
    pub(super) never_ok: bool,
    pub(super) finished: bool,
}

impl<T> tokio_stream::Stream for ReplyStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                self.finished = item.is_err();
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                self.finished = true;
                if self.never_ok {
                    Poll::Ready(Some(Err(shutting_down())))
                } else {
                    Poll::Ready(None)
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

struct Filter {
    on_stream: bool,
    regex: Option<Regex>,
    prefixes: Vec<String>,
    checkpoint_interval: u64,
}

impl Filter {
    fn from_wire(options: read_req::options::FilterOptions) -> Result<Filter, Status> {
        use read_req::options::filter_options::{Filter as Kind, Window};
        let (on_stream, expression) = match options.filter {
            Some(Kind::StreamIdentifier(e)) => (true, e),
            Some(Kind::EventType(e)) => (false, e),
            None => return Err(Status::invalid_argument("filter has no expression")),
        };
        let regex = if expression.regex.is_empty() {
            None
        } else {
            Some(Regex::new(&expression.regex).map_err(|error| {
                Status::invalid_argument(format!("invalid filter regex: {error}"))
            })?)
        };
        let window = match options.window {
            Some(Window::Max(max)) if max > 0 => max,
            _ => DEFAULT_FILTER_WINDOW,
        };
        let multiplier = options.checkpoint_interval_multiplier.max(1);
        Ok(Filter {
            on_stream,
            regex,
            prefixes: expression.prefix,
            checkpoint_interval: u64::from(window) * u64::from(multiplier),
        })
    }

    fn matches(&self, record: &Record) -> bool {
        let subject: &str = if self.on_stream {
            &record.stream
        } else {
            &record.event_type
        };
        if let Some(regex) = &self.regex {
            // .NET's `Regex.IsMatch`: unanchored. A match that exceeds the
            // backtracking limit counts as no match.
            return regex.is_match(subject).unwrap_or(false);
        }
        self.prefixes.is_empty()
            || self
                .prefixes
                .iter()
                .any(|p| subject.starts_with(p.as_str()))
    }
}

pub(super) enum Source {
    All(Option<read_req::options::all_options::AllOption>),
    Stream(
        String,
        Option<read_req::options::stream_options::RevisionOption>,
    ),
}

pub(super) struct ReadPlan {
    pub(super) source: Source,
    backwards: bool,
    resolve_links: bool,
    structured: bool,
    filter: Option<Filter>,
    /// `None` for a subscription.
    pub(super) count: Option<u64>,
    /// `control_option.compatibility`: 1 or more asks for `last_stream_position`
    /// at the end of a stream read.
    compatibility: u32,
}

impl ReadPlan {
    pub(super) fn from_wire(request: ReadReq) -> Result<ReadPlan, Status> {
        use read_req::options::{uuid_option, CountOption, FilterOption, StreamOption};
        let options = request
            .options
            .ok_or_else(|| Status::invalid_argument("read options are missing"))?;
        let backwards =
            options.read_direction == read_req::options::ReadDirection::Backwards as i32;
        let structured = matches!(
            options.uuid_option.and_then(|u| u.content),
            Some(uuid_option::Content::Structured(()))
        );
        let source = match options.stream_option {
            Some(StreamOption::All(all)) => Source::All(all.all_option),
            Some(StreamOption::Stream(stream)) => Source::Stream(
                stream_name(stream.stream_identifier)?,
                stream.revision_option,
            ),
            None => return Err(Status::invalid_argument("read has no stream option")),
        };
        let count = match options.count_option {
            Some(CountOption::Count(count)) => Some(count),
            Some(CountOption::Subscription(_)) => None,
            None => return Err(Status::invalid_argument("read has no count option")),
        };
        let filter = match options.filter_option {
            Some(FilterOption::Filter(filter)) => Some(Filter::from_wire(filter)?),
            _ => None,
        };
        if filter.is_some() && matches!(source, Source::Stream(..)) {
            return Err(Status::invalid_argument("filters apply to $all only"));
        }
        if count.is_none() && backwards {
            return Err(Status::invalid_argument("subscriptions read forwards only"));
        }
        Ok(ReadPlan {
            source,
            backwards,
            resolve_links: options.resolve_links,
            structured,
            filter,
            count,
            compatibility: options.control_option.map_or(0, |c| c.compatibility),
        })
    }
}

impl StreamsService {
    pub(super) async fn count_read(
        &self,
        plan: ReadPlan,
        tx: ReplySender<ReadResp>,
        token: CancellationToken,
    ) {
        use read_req::options::all_options::AllOption;
        use read_req::options::stream_options::RevisionOption;
        let mut remaining = plan.count.unwrap_or(0);
        match &plan.source {
            Source::All(option) => {
                let len = self.shared.read(Store::len);
                // Forwards from a position is inclusive; backwards from one is not.
                // Both compare (commit, prepare), the order of `$all`.
                let mut cursor = self.shared.read(|s| match option {
                    Some(AllOption::Position(p)) => {
                        s.index_at_or_after(p.commit_position, p.prepare_position)
                    }
                    Some(AllOption::End(())) => len,
                    Some(AllOption::Start(())) => 0,
                    None if plan.backwards => len,
                    None => 0,
                });
                while remaining > 0 {
                    let items: Vec<Item> = self.shared.read(|store| {
                        let records = if plan.backwards {
                            let from = cursor.saturating_sub(CHUNK);
                            let mut slice = store.log_slice(from, cursor - from);
                            slice.reverse();
                            cursor = from;
                            slice
                        } else {
                            let slice =
                                store.log_slice(cursor, CHUNK.min(len.saturating_sub(cursor)));
                            cursor += slice.len();
                            slice
                        };
                        records
                            .into_iter()
                            .filter(|r| plan.filter.as_ref().is_none_or(|f| f.matches(r)))
                            .map(|r| Item::new(store, r, plan.resolve_links))
                            .collect()
                    });
                    let exhausted = if plan.backwards {
                        cursor == 0
                    } else {
                        cursor >= len
                    };
                    for item in items {
                        if remaining == 0 {
                            break;
                        }
                        remaining -= 1;
                        if !send(&tx, &token, item.to_reply(plan.structured)).await {
                            return;
                        }
                    }
                    if exhausted {
                        break;
                    }
                }
            }
            Source::Stream(stream, option) => {
                let range = match self.shared.read(|s| s.readable(stream)) {
                    Ok(range) => range,
                    Err(ReadFailure::NotFound) => {
                        let reply = ReadResp {
                            content: Some(read_resp::Content::StreamNotFound(
                                read_resp::StreamNotFound {
                                    stream_identifier: Some(identifier(stream)),
                                },
                            )),
                        };
                        send(&tx, &token, reply).await;
                        return;
                    }
                    Err(ReadFailure::Deleted) => {
                        let _ = tx.send(Err(stream_deleted(stream))).await;
                        return;
                    }
                };
                // `next` is the next revision to send; backwards it counts down.
                let (mut next, end) = if plan.backwards {
                    let top = match option {
                        Some(RevisionOption::Revision(r)) => (*r).min(range.end - 1),
                        Some(RevisionOption::Start(())) => range.start,
                        _ => range.end - 1,
                    };
                    (top.saturating_add(1), range.start)
                } else {
                    let from = match option {
                        Some(RevisionOption::Revision(r)) => (*r).max(range.start),
                        Some(RevisionOption::End(())) => range.end,
                        _ => range.start,
                    };
                    (from, range.end)
                };
                while remaining > 0 {
                    let batch = remaining.min(CHUNK as u64);
                    let items: Vec<Item> = self.shared.read(|store| {
                        let records = if plan.backwards {
                            if next <= end || (next < range.start) {
                                return Vec::new();
                            }
                            let from = next.saturating_sub(batch).max(end);
                            let mut records = store.stream_records(stream, from..next);
                            records.reverse();
                            next = from;
                            records
                        } else {
                            if next >= end {
                                return Vec::new();
                            }
                            let to = next.saturating_add(batch).min(end);
                            let records = store.stream_records(stream, next..to);
                            next = to;
                            records
                        };
                        records
                            .into_iter()
                            .map(|r| Item::new(store, r, plan.resolve_links))
                            .collect()
                    });
                    if items.is_empty() {
                        break;
                    }
                    for item in items {
                        remaining = remaining.saturating_sub(1);
                        if !send(&tx, &token, item.to_reply(plan.structured)).await {
                            return;
                        }
                    }
                }
                // As the real server: the stream's last revision ends every
                // successful stream read of a client asking for it.
                if plan.compatibility >= 1 {
                    let reply = ReadResp {
                        content: Some(read_resp::Content::LastStreamPosition(range.end - 1)),
                    };
                    send(&tx, &token, reply).await;
                }
            }
        }
    }

    pub(super) async fn subscription(
        &self,
        plan: ReadPlan,
        tx: ReplySender<ReadResp>,
        token: CancellationToken,
    ) {
        use read_req::options::all_options::AllOption;
        use read_req::options::stream_options::RevisionOption;
        let confirmation = ReadResp {
            content: Some(read_resp::Content::Confirmation(
                read_resp::SubscriptionConfirmation {
                    subscription_id: Uuid::new_v4().to_string(),
                },
            )),
        };
        // A stream subscription's cursor is a revision, an `$all` one a log index.
        let mut cursor: u64 = match &plan.source {
            Source::All(option) => self.shared.read(|s| match option {
                Some(AllOption::Position(p)) => {
                    s.index_after(p.commit_position, p.prepare_position)
                }
                Some(AllOption::End(())) => s.len(),
                _ => 0,
            }) as u64,
            Source::Stream(stream, option) => {
                let start = self.shared.read(|s| match s.readable(stream) {
                    Err(ReadFailure::Deleted) => Err(()),
                    _ => Ok(match option {
                        Some(RevisionOption::Revision(r)) => r.saturating_add(1),
                        Some(RevisionOption::End(())) => {
                            s.last_revision(stream).map_or(0, |r| r + 1)
                        }
                        _ => 0,
                    }),
                });
                match start {
                    Ok(start) => start,
                    Err(()) => {
                        let _ = tx.send(Err(stream_deleted(stream))).await;
                        return;
                    }
                }
            }
        };
        if !send(&tx, &token, confirmation).await {
            return;
        }
        let mut appended = self.shared.appended.subscribe();
        let mut caught_up = false;
        let mut considered: u64 = 0;
        loop {
            if !unpaused(&self.shared, &token).await {
                let _ = tx.try_send(Err(shutting_down()));
                return;
            }
            appended.borrow_and_update();
            let chunk: Result<Vec<Item>, ()> = self.shared.read(|store| match &plan.source {
                Source::All(_) => {
                    let records = store.log_slice(cursor as usize, CHUNK);
                    cursor += records.len() as u64;
                    Ok(records
                        .into_iter()
                        .map(|r| Item::new(store, r, plan.resolve_links))
                        .collect())
                }
                Source::Stream(stream, _) => match store.readable(stream) {
                    Err(ReadFailure::Deleted) => Err(()),
                    Err(ReadFailure::NotFound) => Ok(Vec::new()),
                    Ok(range) => {
                        cursor = cursor.max(range.start);
                        let records = store.stream_records(stream, cursor..cursor + CHUNK as u64);
                        cursor += records.len() as u64;
                        Ok(records
                            .into_iter()
                            .map(|r| Item::new(store, r, plan.resolve_links))
                            .collect())
                    }
                },
            });
            let Ok(items) = chunk else {
                if let Source::Stream(stream, _) = &plan.source {
                    let _ = tx.send(Err(stream_deleted(stream))).await;
                }
                return;
            };
            if items.is_empty() {
                if !caught_up {
                    caught_up = true;
                    let reply = ReadResp {
                        content: Some(read_resp::Content::CaughtUp(read_resp::CaughtUp {})),
                    };
                    if !send(&tx, &token, reply).await {
                        return;
                    }
                }
                tokio::select! {
                    changed = appended.changed() => if changed.is_err() { return },
                    () = token.cancelled() => {
                        let _ = tx.try_send(Err(shutting_down()));
                        return;
                    }
                    () = tx.closed() => return,
                }
                continue;
            }
            for item in items {
                let wanted = plan
                    .filter
                    .as_ref()
                    .is_none_or(|f| f.matches(&item.original));
                if wanted && !send(&tx, &token, item.to_reply(plan.structured)).await {
                    return;
                }
                if let Some(filter) = &plan.filter {
                    considered += 1;
                    if considered.is_multiple_of(filter.checkpoint_interval) {
                        let reply = ReadResp {
                            content: Some(read_resp::Content::Checkpoint(read_resp::Checkpoint {
                                commit_position: item.original.commit_position,
                                prepare_position: item.original.prepare_position,
                            })),
                        };
                        if !send(&tx, &token, reply).await {
                            return;
                        }
                    }
                }
            }
        }
    }
}
