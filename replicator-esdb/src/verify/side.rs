//! One side of a stream, read lazily through a bounded look-ahead.

use std::collections::VecDeque;
use std::time::Duration;

use eventstore::{Client, ReadStreamOptions};
use futures::TryFutureExt as _;
use replicator_core::{ChangeKind, Position};
use uuid::Uuid;

use super::{settle, Expect, VerifiedEvent, VerifyError, VerifyOptions};
use crate::classify::classify;
use crate::cluster::{within, ClientPosition as _, RequestError, SOURCE};
use crate::connection::describe;

/// One side of a stream, read lazily with a bounded look-ahead.
pub(super) struct Side<'a> {
    side: &'static str,
    stream: &'a str,
    reader: Option<eventstore::ReadStream>,
    buffer: VecDeque<VerifiedEvent>,
    buffered_bytes: usize,
    exhausted: bool,
    pub(super) tombstoned: bool,
    timeout: Duration,
    expect: Option<&'a Expect>,
}

impl<'a> Side<'a> {
    pub(super) async fn open(
        client: &Client,
        side: &'static str,
        stream: &'a str,
        options: &'a VerifyOptions,
    ) -> Result<Side<'a>, VerifyError> {
        let mut this = Side {
            side,
            stream,
            reader: None,
            buffer: VecDeque::new(),
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
        let read_options = ReadStreamOptions::default().max_count(usize::MAX);
        let opened = within(
            this.timeout,
            client.read_stream(stream, &read_options).err_into(),
        );
        match opened.await {
            Ok(reader) => this.reader = Some(reader),
            Err(RequestError::Failed(error)) => this.end_with(error)?,
            Err(timed_out) => {
                return settle(
                    side,
                    || format!("reading stream {stream:?}"),
                    Err(timed_out),
                )
            }
        }
        // The first page says whether the stream is there at all.
        this.fill(1).await?;
        Ok(this)
    }

    /// A missing stream reads as empty, a tombstoned one as tombstoned; any
    /// other error stops the comparison.
    fn end_with(&mut self, error: eventstore::Error) -> Result<(), VerifyError> {
        self.reader = None;
        self.exhausted = true;
        match error {
            eventstore::Error::ResourceNotFound => Ok(()),
            eventstore::Error::ResourceDeleted => {
                self.tombstoned = true;
                Ok(())
            }
            source => Err(VerifyError::Read {
                side: self.side,
                operation: format!("reading stream {:?}", self.stream),
                message: describe(&source),
                source,
            }),
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
            let next = match within(self.timeout, reader.next().err_into()).await {
                Ok(next) => Ok(next),
                Err(RequestError::Failed(error)) => Err(error),
                Err(timed_out) => {
                    return settle(
                        self.side,
                        || format!("reading stream {:?}", self.stream),
                        Err(timed_out),
                    )
                }
            };
            match next {
                Ok(Some(resolved)) => {
                    let record = resolved.get_original_event();
                    if classify(&record.stream_id, &record.event_type, &record.data)
                        != ChangeKind::Append
                    {
                        continue;
                    }
                    let event = VerifiedEvent {
                        stream: record.stream_id.clone(),
                        revision: record.revision,
                        position: Position::from_client(record.position),
                        id: record.id,
                        event_type: record.event_type.clone(),
                        is_json: record.is_json,
                        data: record.data.clone(),
                        metadata: record.custom_metadata.clone(),
                    };
                    let event = match self.expect {
                        Some(expect) => match expect(event) {
                            Some(event) => event,
                            None => continue,
                        },
                        None => event,
                    };
                    self.buffered_bytes += event.data.len() + event.metadata.len();
                    self.buffer.push_back(event);
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
        Ok(self.buffer.front())
    }

    pub(super) fn pop(&mut self) -> Option<VerifiedEvent> {
        let event = self.buffer.pop_front()?;
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
        Ok(self.buffer.iter().position(|e| e.id == id))
    }
}
