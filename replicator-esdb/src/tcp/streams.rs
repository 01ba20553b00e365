//! [`TcpSource`]: stream and `$all` reads of a v5 node, page by page, for
//! `verify`, `map-position` and the scavenge filter (through
//! [`ClusterRead`]).
//!
//! Requests: ReadStreamEventsForward/Backward (0xB2/0xB4, paged as
//! docs/tcp-protocol.md §4.3a) and ReadAllEventsForward/Backward (0xB6/0xB8,
//! §4.3, §4.3b), links not resolved, `require_master` false.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;

use futures::StreamExt as _;
use prost::Message as _;
use replicator_core::secret::ConnectionString;
use replicator_core::{ErrorKind, Position};

use super::connection::{command, Connection, Frame, TcpError};
use super::proto::{
    as_wire, position, read_all_result, read_stream_result, EventRecord, ReadAllEvents,
    ReadAllEventsCompleted, ReadStreamEvents, ReadStreamEventsCompleted,
};
use super::settings::{SettingsError, TcpSettings};
use crate::cluster::{AllFrom, ClusterRead, Direction, ReadError, Record, Records, StreamFrom};

/// The most records v5 serves in one page (`MaxPageSize`).
const MAX_PAGE: usize = 4096;
/// Records asked for in a read's first page: most reads of `map-position`
/// and the scavenge filter need a few records only.
const FIRST_PAGE: usize = 32;
/// The largest page asked for: each page doubles up to it while pages stay
/// small in bytes. A page over the 64 MiB frame limit halves it for the rest
/// of the read.
const PAGE: usize = 1024;
/// Bytes (data and metadata) a page should hold at most: a larger one halves
/// the next, so that a read of large events holds a few MiB at a time (verify
/// reads many streams at once), not up to the 64 MiB frame limit.
const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Idle connections kept for the next requests.
const IDLE: usize = 16;

/// Reads of a v5 node's streams and `$all` over the legacy TCP protocol,
/// configured by the .NET ClientAPI connection string the
/// [`TcpReader`](super::TcpReader) takes.
///
/// Each page is one request on a connection of a small pool: reads run side
/// by side on connections of their own, and a connection goes back to the
/// pool only after a complete answer. One kept while idle may have been
/// closed by the node (it closes connections that miss its heartbeats): a
/// transient failure on a kept connection is tried once more on a new one.
///
/// A stream read answers NoStream for a stream never written or
/// soft-deleted ([`ReadError::NotFound`]), StreamDeleted for a tombstoned
/// one ([`ReadError::Deleted`]), AccessDenied ([`ReadError::AccessDenied`]).
/// Stream reads carry no `$all` positions ([`Record::position`] is `None`).
pub struct TcpSource {
    settings: TcpSettings,
    idle: Mutex<Vec<Connection>>,
}

impl fmt::Debug for TcpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpSource")
            .field("target", &self.settings.target)
            .finish_non_exhaustive()
    }
}

impl TcpSource {
    /// Reads through `connection_string` (`ConnectTo=tcp://…`, see
    /// docs/tcp-protocol.md §10). Nothing connects before the first read.
    ///
    /// # Errors
    /// A [`SettingsError`] naming the setting that cannot be used.
    pub fn new(connection_string: &ConnectionString) -> Result<Self, SettingsError> {
        Ok(TcpSource {
            settings: TcpSettings::parse(connection_string)?,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// One request on a pooled connection (or a new one), its answer.
    async fn request(
        &self,
        command: u8,
        body: Vec<u8>,
        expect: u8,
        what: &'static str,
    ) -> Result<(Frame, Option<String>), TcpError> {
        let kept = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let (mut connection, reused) = match kept {
            Some(connection) => (connection, true),
            None => (Connection::open(&self.settings).await?, false),
        };
        let frame = match connection
            .request(command, body.clone(), expect, what)
            .await
        {
            Ok(frame) => frame,
            Err(error) if reused && error.kind() == ErrorKind::Transient => {
                connection = Connection::open(&self.settings).await?;
                connection.request(command, body, expect, what).await?
            }
            Err(error) => return Err(error),
        };
        let user = connection.user();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE {
            idle.push(connection);
        }
        Ok((frame, user))
    }

    async fn stream_page(
        &self,
        stream: &str,
        from: i64,
        max: usize,
        direction: Direction,
    ) -> Result<ReadStreamEventsCompleted, ReadError> {
        let request = ReadStreamEvents {
            event_stream_id: stream.to_owned(),
            from_event_number: from,
            max_count: i32::try_from(max).unwrap_or(i32::MAX),
            resolve_link_tos: false,
            require_master: false,
        };
        let (send, expect, what) = match direction {
            Direction::Forwards => (
                command::READ_STREAM_FORWARD,
                command::READ_STREAM_FORWARD_COMPLETED,
                "ReadStreamEventsForward",
            ),
            Direction::Backwards => (
                command::READ_STREAM_BACKWARD,
                command::READ_STREAM_BACKWARD_COMPLETED,
                "ReadStreamEventsBackward",
            ),
        };
        let (frame, _) = self
            .request(send, request.encode_to_vec(), expect, what)
            .await?;
        let page = ReadStreamEventsCompleted::decode(frame.body)
            .map_err(|e| TcpError::Protocol(format!("an undecodable stream page: {e}")))?;
        match page.result {
            read_stream_result::SUCCESS => Ok(page),
            read_stream_result::NO_STREAM => Err(ReadError::NotFound),
            read_stream_result::STREAM_DELETED => Err(ReadError::Deleted),
            read_stream_result::ACCESS_DENIED => Err(ReadError::AccessDenied),
            read_stream_result::ERROR => {
                Err(TcpError::Server(page.error.unwrap_or_else(|| "(no text)".into())).into())
            }
            read_stream_result::NOT_MODIFIED => {
                Err(TcpError::Protocol("NotModified in answer to a stream read".into()).into())
            }
            other => Err(TcpError::Protocol(format!("stream read result {other}")).into()),
        }
    }

    async fn all_page(
        &self,
        (commit, prepare): (i64, i64),
        max: usize,
        direction: Direction,
    ) -> Result<ReadAllEventsCompleted, ReadError> {
        let request = ReadAllEvents {
            commit_position: commit,
            prepare_position: prepare,
            max_count: i32::try_from(max).unwrap_or(i32::MAX),
            resolve_link_tos: false,
            require_master: false,
        };
        let (send, expect, what) = match direction {
            Direction::Forwards => (
                command::READ_ALL_FORWARD,
                command::READ_ALL_FORWARD_COMPLETED,
                "ReadAllEventsForward",
            ),
            Direction::Backwards => (
                command::READ_ALL_BACKWARD,
                command::READ_ALL_BACKWARD_COMPLETED,
                "ReadAllEventsBackward",
            ),
        };
        let (frame, user) = self
            .request(send, request.encode_to_vec(), expect, what)
            .await?;
        let page = ReadAllEventsCompleted::decode(frame.body)
            .map_err(|e| TcpError::Protocol(format!("an undecodable $all page: {e}")))?;
        match page.result.unwrap_or(read_all_result::SUCCESS) {
            read_all_result::SUCCESS => Ok(page),
            read_all_result::ACCESS_DENIED => Err(TcpError::AccessDenied { user }.into()),
            read_all_result::ERROR => Err(TcpError::Server(
                page.error.clone().unwrap_or_else(|| "(no text)".into()),
            )
            .into()),
            other => Err(TcpError::Protocol(format!("$all read result {other}")).into()),
        }
    }
}

/// How many records a read asks for per page.
#[derive(Clone, Copy, Debug)]
struct PageSize {
    now: usize,
    cap: usize,
}

impl PageSize {
    fn new() -> Self {
        PageSize {
            now: FIRST_PAGE,
            cap: PAGE.min(MAX_PAGE),
        }
    }

    /// After a page of `bytes` was read: the next one is larger while pages
    /// stay under [`PAGE_BYTES`], smaller once they pass it.
    fn after(&mut self, bytes: usize) {
        if bytes > PAGE_BYTES {
            self.now = (self.now / 2).max(1);
        } else if bytes <= PAGE_BYTES / 2 {
            self.now = (self.now * 2).min(self.cap);
        }
    }
}

/// Halves the page size after a frame over the limit, for the rest of the
/// read; `false` when it is 1 already.
fn halved(page: &mut PageSize, error: &ReadError) -> bool {
    if matches!(error, ReadError::Tcp(TcpError::FrameTooLarge(_))) && page.now > 1 {
        page.now /= 2;
        page.cap = page.now;
        return true;
    }
    false
}

/// A stream read in progress.
struct StreamRead<'a> {
    source: &'a TcpSource,
    stream: &'a str,
    direction: Direction,
    /// The next page's start; `None` when the read is over.
    from: Option<i64>,
    left: usize,
    page: PageSize,
    buffer: VecDeque<Record>,
}

impl StreamRead<'_> {
    async fn next(&mut self) -> Option<Result<Record, ReadError>> {
        loop {
            if self.left == 0 {
                return None;
            }
            if let Some(record) = self.buffer.pop_front() {
                self.left -= 1;
                return Some(Ok(record));
            }
            let from = self.from?;
            let max = self.page.now.min(self.left);
            let page = match self
                .source
                .stream_page(self.stream, from, max, self.direction)
                .await
            {
                Ok(page) => {
                    self.page.after(stream_bytes(&page));
                    page
                }
                Err(error) if halved(&mut self.page, &error) => continue,
                Err(error) => {
                    self.from = None;
                    return Some(Err(error));
                }
            };
            for resolved in page.events {
                let Some(record) = resolved.link.or(resolved.event) else {
                    continue;
                };
                match record_of(record, None) {
                    Ok(record) => self.buffer.push_back(record),
                    Err(error) => {
                        self.from = None;
                        return Some(Err(error.into()));
                    }
                }
            }
            let next = page.next_event_number;
            self.from = if page.is_end_of_stream || next < 0 || Some(next) == self.from {
                None
            } else {
                Some(next)
            };
        }
    }
}

/// An `$all` read in progress.
struct AllRead<'a> {
    source: &'a TcpSource,
    direction: Direction,
    /// The next page's start; `None` when the read is over.
    cursor: Option<(i64, i64)>,
    /// A backward read's start: only records before it are handed on.
    before: Option<Position>,
    left: usize,
    page: PageSize,
    buffer: VecDeque<(Position, Record)>,
}

impl AllRead<'_> {
    async fn next(&mut self) -> Option<Result<(Position, Record), ReadError>> {
        loop {
            if self.left == 0 {
                return None;
            }
            if let Some(item) = self.buffer.pop_front() {
                self.left -= 1;
                return Some(Ok(item));
            }
            let cursor = self.cursor?;
            match self.read_page(cursor).await {
                Ok(bytes) => self.page.after(bytes),
                Err(error) if halved(&mut self.page, &error) => continue,
                Err(error) => {
                    self.cursor = None;
                    return Some(Err(error));
                }
            }
        }
    }

    /// Reads the page at `cursor`; returns its bytes.
    async fn read_page(&mut self, cursor: (i64, i64)) -> Result<usize, ReadError> {
        let max = self.page.now.min(self.left);
        let page = self.source.all_page(cursor, max, self.direction).await?;
        let received = page.events.len();
        let bytes = all_bytes(&page);
        for resolved in page.events {
            let position = position(resolved.commit_position, resolved.prepare_position)?;
            if self.before.is_some_and(|before| position >= before) {
                continue;
            }
            let Some(record) = resolved.link.or(resolved.event) else {
                continue;
            };
            self.buffer
                .push_back((position, record_of(record, Some(position))?));
        }
        let next = (page.next_commit_position, page.next_prepare_position);
        // An empty page is the end; a page that does not move on would be
        // read forever.
        self.cursor = (received > 0 && next != cursor).then_some(next);
        Ok(bytes)
    }
}

impl TcpSource {
    /// The records of the transaction holding `at` that come before it in
    /// `$all` ((`at.commit`, q) with q < `at.prepare`), newest first.
    ///
    /// A v5 backward read from a position inside a transaction returns none
    /// of that transaction's records (their commit record ends after the
    /// position, docs §4.3b), where a gRPC backward read returns those before
    /// it: they are read forwards from (commit, 0) instead.
    async fn earlier_in_transaction(
        &self,
        at: Position,
        page: &mut PageSize,
    ) -> Result<Vec<(Position, Record)>, ReadError> {
        let mut found = Vec::new();
        let mut cursor = (as_wire(at.commit), 0);
        loop {
            let read = self.all_page(cursor, page.now, Direction::Forwards).await;
            let read = match read {
                Ok(read) => {
                    page.after(all_bytes(&read));
                    read
                }
                Err(error) if halved(page, &error) => continue,
                Err(error) => return Err(error),
            };
            if read.events.is_empty() {
                break;
            }
            for resolved in read.events {
                let position = position(resolved.commit_position, resolved.prepare_position)?;
                if position >= at || position.commit != at.commit {
                    found.reverse();
                    return Ok(found);
                }
                if let Some(record) = resolved.link.or(resolved.event) {
                    found.push((position, record_of(record, Some(position))?));
                }
            }
            let next = (read.next_commit_position, read.next_prepare_position);
            if next == cursor {
                break;
            }
            cursor = next;
        }
        found.reverse();
        Ok(found)
    }
}

impl ClusterRead for TcpSource {
    fn stream_records<'a>(
        &'a self,
        stream: &'a str,
        from: StreamFrom,
        direction: Direction,
        max: usize,
    ) -> Records<'a, Record> {
        let from = match (from, direction) {
            (StreamFrom::Start, _) => Some(0),
            (StreamFrom::End, Direction::Backwards) => Some(-1),
            // Nothing follows the last event.
            (StreamFrom::End, Direction::Forwards) => None,
            (StreamFrom::Revision(r), _) => Some(i64::try_from(r).unwrap_or(i64::MAX)),
        };
        let read = StreamRead {
            source: self,
            stream,
            direction,
            from,
            left: max,
            page: PageSize::new(),
            buffer: VecDeque::new(),
        };
        futures::stream::unfold(read, |mut read| async move {
            let item = read.next().await?;
            Some((item, read))
        })
        .boxed()
    }

    fn all_records(
        &self,
        from: AllFrom,
        direction: Direction,
        max: usize,
    ) -> Records<'_, (Position, Record)> {
        let (cursor, before) = match (from, direction) {
            (AllFrom::Start, Direction::Forwards) => (Some((0, 0)), None),
            (AllFrom::Start, Direction::Backwards) | (AllFrom::End, Direction::Forwards) => {
                (None, None)
            }
            (AllFrom::End, Direction::Backwards) => (Some((-1, -1)), None),
            (AllFrom::Position(p), Direction::Forwards) => {
                (Some((as_wire(p.commit), as_wire(p.prepare))), None)
            }
            (AllFrom::Position(p), Direction::Backwards) => {
                (Some((as_wire(p.commit), as_wire(p.prepare))), Some(p))
            }
        };
        let read = AllRead {
            source: self,
            direction,
            cursor,
            before,
            left: max,
            page: PageSize::new(),
            buffer: VecDeque::new(),
        };
        let inside_transaction = before.filter(|p| p.commit != p.prepare);
        futures::stream::unfold(
            (read, inside_transaction),
            |(mut read, inside_transaction)| async move {
                if let Some(at) = inside_transaction {
                    match read.source.earlier_in_transaction(at, &mut read.page).await {
                        Ok(earlier) => read.buffer.extend(earlier),
                        Err(error) => {
                            read.cursor = None;
                            return Some((Err(error), (read, None)));
                        }
                    }
                }
                let item = read.next().await?;
                Some((item, (read, None)))
            },
        )
        .boxed()
    }
}

/// Bytes of a record's data and metadata.
fn record_bytes(record: Option<&EventRecord>) -> usize {
    record.map_or(0, |r| {
        r.data.len() + r.metadata.as_ref().map_or(0, bytes::Bytes::len)
    })
}

fn stream_bytes(page: &ReadStreamEventsCompleted) -> usize {
    page.events
        .iter()
        .map(|e| record_bytes(e.event.as_ref()) + record_bytes(e.link.as_ref()))
        .sum()
}

fn all_bytes(page: &ReadAllEventsCompleted) -> usize {
    page.events
        .iter()
        .map(|e| record_bytes(e.event.as_ref()) + record_bytes(e.link.as_ref()))
        .sum()
}

/// A record as the node sent it: the id from .NET GUID byte order (§4.9),
/// JSON when `data_content_type` is 1.
fn record_of(record: EventRecord, position: Option<Position>) -> Result<Record, TcpError> {
    let id = record.id()?;
    let revision = record.revision()?;
    Ok(Record {
        stream: record.event_stream_id,
        revision,
        id,
        event_type: record.event_type,
        is_json: record.data_content_type == 1,
        data: record.data,
        metadata: record.metadata.unwrap_or_default(),
        position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_grow_while_small_and_shrink_when_large_in_bytes() {
        let mut page = PageSize::new();
        for _ in 0..10 {
            page.after(1024);
        }
        assert_eq!(page.now, PAGE);
        // Large events: the next pages halve until one holds under the bound.
        page.after(PAGE_BYTES * 8);
        assert_eq!(page.now, PAGE / 2);
        page.after(PAGE_BYTES);
        assert_eq!(page.now, PAGE / 2, "between half the bound and the bound");
        for _ in 0..20 {
            page.after(PAGE_BYTES + 1);
        }
        assert_eq!(page.now, 1, "never below one record");
        // A frame over the limit caps the rest of the read.
        let mut page = PageSize::new();
        let too_large = ReadError::Tcp(TcpError::FrameTooLarge(MAX_FRAME_FOR_TESTS));
        assert!(halved(&mut page, &too_large));
        page.after(0);
        assert_eq!(page.now, FIRST_PAGE / 2);
    }

    const MAX_FRAME_FOR_TESTS: usize = 64 * 1024 * 1024 + 1;

    #[test]
    fn records_take_dotnet_ids_and_json_from_the_content_type() {
        let record = crate::tcp::proto::sample_record();
        let record = record_of(record, None).unwrap();
        assert_eq!(
            record.id.to_string(),
            "3cd53ad8-54d3-4f4a-b116-1f09957af330"
        );
        assert!(record.is_json);
        assert_eq!((record.revision, record.position), (3, None));
    }
}
