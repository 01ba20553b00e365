//! One side of a stream, read lazily through a bounded look-ahead.

use std::collections::VecDeque;
use std::time::Duration;

use replicator_core::ChangeKind;
use uuid::Uuid;

use super::stream::Covered;
use super::{settle, Expect, VerifiedEvent, VerifyError, VerifyOptions};
use crate::classify::classify;
use crate::cluster::{next_within, ClusterRead, Direction, ReadError, Records, StreamFrom, SOURCE};

/// One side of a stream, read lazily with a bounded look-ahead.
pub(super) struct Side<'a> {
    side: &'static str,
    stream: &'a str,
    reader: Option<Records<'a, crate::cluster::Record>>,
    /// Each event with whether `until` covers it (always, on the target).
    buffer: VecDeque<(VerifiedEvent, bool)>,
    /// On the source: which records `until` covers.
    covered: Option<Covered>,
    buffered_bytes: usize,
    exhausted: bool,
    pub(super) tombstoned: bool,
    timeout: Duration,
    expect: Option<&'a Expect>,
}

impl<'a> Side<'a> {
    pub(super) async fn open<C: ClusterRead>(
        client: &'a C,
        side: &'static str,
        stream: &'a str,
        covered: Option<Covered>,
        options: &'a VerifyOptions,
    ) -> Result<Side<'a>, VerifyError> {
        let mut this = Side {
            side,
            stream,
            reader: Some(client.stream_records(
                stream,
                StreamFrom::Start,
                Direction::Forwards,
                usize::MAX,
            )),
            buffer: VecDeque::new(),
            covered,
            buffered_bytes: 0,
            exhausted: false,
            tombstoned: false,
            timeout: options.request_timeout,
            expect: if side == SOURCE {
                options.expect.as_ref()
            } else {
                None
            },
        };
        // The first page says whether the stream is there at all.
        this.fill(1).await?;
        Ok(this)
    }

    /// A missing stream reads as empty, a tombstoned one as tombstoned; any
    /// other error stops the comparison.
    fn end_with(&mut self, error: ReadError) -> Result<(), VerifyError> {
        self.reader = None;
        self.exhausted = true;
        match error {
            ReadError::NotFound => Ok(()),
            ReadError::Deleted => {
                self.tombstoned = true;
                Ok(())
            }
            error => settle(
                self.side,
                || format!("reading stream {:?}", self.stream),
                Err(error),
            ),
        }
    }

    /// Reads until `n` events are buffered, the page's bytes are reached, or
    /// the stream ends.
    async fn fill_to(&mut self, n: usize, max_bytes: usize) -> Result<(), VerifyError> {
        while self.buffer.len() < n && !self.exhausted {
            if !self.buffer.is_empty() && self.buffered_bytes >= max_bytes {
                return Ok(());
            }
            let Some(reader) = self.reader.as_mut() else {
                self.exhausted = true;
                break;
            };
            match next_within(self.timeout, reader).await {
                Ok(Some(record)) => {
                    if classify(&record.stream, &record.event_type, &record.data)
                        != ChangeKind::Append
                    {
                        continue;
                    }
                    // Before `expect`, which may renumber.
                    let covered = self.covered.is_none_or(|c| c.event(record.revision));
                    let event = VerifiedEvent {
                        stream: record.stream,
                        revision: record.revision,
                        position: record.position,
                        id: record.id,
                        event_type: record.event_type,
                        is_json: record.is_json,
                        data: record.data,
                        metadata: record.metadata,
                    };
                    let event = match self.expect {
                        Some(expect) => match expect(event) {
                            Some(event) => event,
                            None => continue,
                        },
                        None => event,
                    };
                    self.buffered_bytes += event.data.len() + event.metadata.len();
                    self.buffer.push_back((event, covered));
                }
                Ok(None) => {
                    self.exhausted = true;
                    self.reader = None;
                }
                Err(error) => self.end_with(error)?,
            }
        }
        Ok(())
    }

    async fn fill(&mut self, n: usize) -> Result<(), VerifyError> {
        self.fill_to(n, usize::MAX).await
    }

    pub(super) async fn peek(&mut self) -> Result<Option<&VerifiedEvent>, VerifyError> {
        self.fill(1).await?;
        Ok(self.buffer.front().map(|(event, _)| event))
    }

    /// Whether `until` covers the head (what [`Side::peek`] shows).
    pub(super) fn head_covered(&self) -> bool {
        self.buffer.front().is_some_and(|(_, covered)| *covered)
    }

    pub(super) fn pop(&mut self) -> Option<VerifiedEvent> {
        let (event, _) = self.buffer.pop_front()?;
        self.buffered_bytes -= event.data.len() + event.metadata.len();
        Some(event)
    }

    /// Where `id` is in the look-ahead (reading up to a page), if it is.
    pub(super) async fn find_ahead(
        &mut self,
        id: Uuid,
        options: &VerifyOptions,
    ) -> Result<Option<usize>, VerifyError> {
        self.fill_to(options.page_events.max(2), options.page_bytes)
            .await?;
        Ok(self.buffer.iter().position(|(e, _)| e.id == id))
    }
}
