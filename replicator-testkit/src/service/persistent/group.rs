//! A group's live state: what it has read from its source, what is in flight to
//! which consumer, acknowledgements, retries, parking, and the checkpoint.
//!
//! Every event read gets a sequence number; `window` holds the read events not
//! yet finished (acked, skipped or parked) from the lowest unfinished one on, and
//! `last_done` the position of the event just before it: the checkpoint the
//! server writes ("the event before the lowest un-acked, or the last known when
//! none is outstanding", `PersistentSubscription.TryMarkCheckpoint`). Events read
//! but not yet sent count as unfinished, so a checkpoint never passes an event no
//! consumer has had.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tonic::Status;
use uuid::Uuid;

use super::settings::{Definition, Pos, Source, Start};
use crate::proto::persistent_subscriptions::{read_resp, ReadResp, SubscriptionInfo};
use crate::store::{Expected, Proposed, Record, Store, WriteOutcome, JSON};

/// The server's event type of a checkpoint.
pub(super) const CHECKPOINT_TYPE: &str = "$SubscriptionCheckpoint";

/// `$persistentsubscription-{stream}::{group}-checkpoint`.
pub(super) fn checkpoint_stream(source: &str, group: &str) -> String {
    format!("$persistentsubscription-{source}::{group}-checkpoint")
}

/// `$persistentsubscription-{stream}::{group}-parked`.
pub(super) fn parked_stream(source: &str, group: &str) -> String {
    format!("$persistentsubscription-{source}::{group}-parked")
}

/// An event of the source as consumers get it: the record read and, for a link
/// when links are resolved, the event it points to.
#[derive(Clone, Debug)]
pub(super) struct Item {
    original: Record,
    resolved: Option<Record>,
    resolve: bool,
}

impl Item {
    pub(super) fn new(store: &Store, original: Record, resolve_links: bool) -> Item {
        let resolve = resolve_links && original.is_link();
        let resolved = resolve.then(|| store.resolve_link(&original)).flatten();
        Item {
            original,
            resolved,
            resolve,
        }
    }

    /// The id consumers acknowledge: the original event's, i.e. the link's when
    /// a link was delivered (`OutstandingMessage.EventId`).
    fn ack_id(&self) -> Uuid {
        self.original.id
    }

    fn reply(&self, retry_count: i32, structured: bool) -> ReadResp {
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
                count: Some(read_resp::read_event::Count::RetryCount(retry_count)),
            })),
        }
    }
}

fn recorded(record: &Record, structured: bool) -> read_resp::read_event::RecordedEvent {
    let metadata = HashMap::from([
        ("type".to_owned(), record.event_type.to_string()),
        ("content-type".to_owned(), record.content_type.to_string()),
        ("created".to_owned(), record.created_ticks.to_string()),
    ]);
    read_resp::read_event::RecordedEvent {
        id: Some(super::super::convert::uuid_to_wire(record.id, structured)),
        stream_identifier: Some(super::super::convert::identifier(&record.stream)),
        stream_revision: record.revision,
        prepare_position: record.prepare_position,
        commit_position: record.commit_position,
        metadata,
        custom_metadata: record.custom_metadata.clone(),
        data: record.data.clone(),
    }
}

/// A message waiting to be sent, or in flight.
#[derive(Clone, Debug)]
struct Message {
    /// Its place in the window; `None` for a replayed parked message (already
    /// finished as far as the checkpoint goes).
    seq: Option<u64>,
    item: Item,
    retry_count: i32,
}

#[derive(Debug)]
struct InFlight {
    message: Message,
    client: u64,
    deadline: Option<Instant>,
}

/// A connected consumer.
#[derive(Debug)]
pub(super) struct Client {
    pub(super) id: u64,
    tx: mpsc::Sender<Result<ReadResp, Status>>,
    slots: usize,
    in_flight: usize,
    structured: bool,
    from: String,
    username: String,
    connection_name: String,
    total_items: i64,
}

/// What a consumer's nack asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NackAction {
    Park,
    Retry,
    Skip,
    Stop,
}

/// What a consumer says about the events it got.
#[derive(Clone, Debug)]
pub(super) enum Answer {
    Ack(Vec<Uuid>),
    Nack(Vec<Uuid>, NackAction, String),
}

/// One group.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) definition: Definition,
    /// Next revision (stream) or log index (`$all`) to read.
    cursor: u64,
    buffer: VecDeque<Message>,
    retry: VecDeque<Message>,
    outstanding: HashMap<Uuid, InFlight>,
    window: BTreeMap<u64, (Pos, bool)>,
    next_seq: u64,
    last_done: Option<Pos>,
    last_checkpoint: Option<Pos>,
    finished_since_checkpoint: u64,
    checkpoint_timer: Instant,
    last_known: Option<Pos>,
    clients: Vec<Client>,
    next_client: u64,
    round_robin: usize,
    total_items: i64,
    measured: (Instant, i64),
    /// Whether the last fill reached the end of the source.
    live: bool,
}

impl Group {
    /// A group loading its state as the server does: after the checkpoint in
    /// its checkpoint stream when there is one (the first event after it), else
    /// at its start position (inclusive; `-1` is the current end).
    pub(super) fn load(store: &Store, definition: Definition) -> Group {
        let all = definition.source.is_all();
        let name = definition.source.name().to_owned();
        let checkpoint = last_event(store, &checkpoint_stream(&name, &definition.group))
            .filter(|r| {
                &*r.event_type == CHECKPOINT_TYPE || &*r.event_type == "SubscriptionCheckpoint"
            })
            .and_then(|r| serde_json::from_slice::<String>(&r.data).ok())
            .and_then(|text| Pos::parse(&text, all));
        let cursor = match (checkpoint, &definition.source) {
            (Some(Pos::Revision(r)), _) => r + 1,
            (Some(Pos::Log { commit, prepare }), _) => store.index_after(commit, prepare) as u64,
            (None, Source::Stream(stream)) => match definition.settings.start {
                Start::Revision(-1) => store.last_revision(stream).map_or(0, |r| r + 1),
                Start::Revision(r) => u64::try_from(r).unwrap_or(0),
                Start::Log { .. } => 0,
            },
            (None, Source::All(_)) => match definition.settings.start {
                Start::Log { commit: -1, .. } => store.len() as u64,
                Start::Log { commit, prepare } => store.index_at_or_after(
                    u64::try_from(commit).unwrap_or(0),
                    u64::try_from(prepare).unwrap_or(0),
                ) as u64,
                Start::Revision(_) => 0,
            },
        };
        let now = Instant::now();
        Group {
            definition,
            cursor,
            buffer: VecDeque::new(),
            retry: VecDeque::new(),
            outstanding: HashMap::new(),
            window: BTreeMap::new(),
            next_seq: 0,
            last_done: checkpoint,
            last_checkpoint: checkpoint,
            finished_since_checkpoint: 0,
            checkpoint_timer: now,
            last_known: checkpoint,
            clients: Vec::new(),
            next_client: 0,
            round_robin: 0,
            total_items: 0,
            measured: (now, 0),
            live: false,
        }
    }

    pub(super) fn subscription_id(&self) -> String {
        format!(
            "{}::{}",
            self.definition.source.name(),
            self.definition.group
        )
    }

    pub(super) fn is_full(&self) -> bool {
        let max = self.definition.settings.max_subscriber_count;
        max > 0 && self.clients.len() >= usize::try_from(max).unwrap_or(usize::MAX)
    }

    /// Adds a consumer with `slots` in-flight messages; returns its id.
    pub(super) fn connect(
        &mut self,
        tx: mpsc::Sender<Result<ReadResp, Status>>,
        slots: usize,
        structured: bool,
        from: String,
        username: String,
        connection_name: String,
    ) -> u64 {
        self.next_client += 1;
        let id = self.next_client;
        self.clients.push(Client {
            id,
            tx,
            slots,
            in_flight: 0,
            structured,
            from,
            username,
            connection_name,
            total_items: 0,
        });
        id
    }

    /// Removes a consumer; what it had in flight is sent again (to anyone),
    /// with its retry count up, or parked once retried too often.
    pub(super) fn disconnect(&mut self, store: &mut Store, client: u64) {
        self.clients.retain(|c| c.id != client);
        let mut lost: Vec<InFlight> = Vec::new();
        let ids: Vec<Uuid> = self
            .outstanding
            .iter()
            .filter(|(_, f)| f.client == client)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            lost.extend(self.outstanding.remove(&id));
        }
        lost.sort_by_key(|f| f.message.seq);
        for flight in lost.into_iter().rev() {
            self.retry_or_park(store, flight.message, "Client disconnected", true);
        }
    }

    /// Applies a consumer's acks or nacks (of messages in flight to any of the
    /// group's consumers: the server matches ids, not connections). Returns
    /// whether the consumer asked to stop.
    pub(super) fn answer(&mut self, store: &mut Store, answer: Answer) -> bool {
        let (ids, action, reason) = match answer {
            Answer::Ack(ids) => (ids, None, String::new()),
            Answer::Nack(ids, action, reason) => (ids, Some(action), reason),
        };
        for id in ids {
            let Some(flight) = self.outstanding.remove(&id) else {
                continue;
            };
            if let Some(c) = self.clients.iter_mut().find(|c| c.id == flight.client) {
                c.in_flight = c.in_flight.saturating_sub(1);
            }
            match action {
                None | Some(NackAction::Skip) => self.finish(flight.message.seq),
                Some(NackAction::Park) => self.park(store, flight.message, &reason),
                Some(NackAction::Retry) => {
                    self.retry_or_park(store, flight.message, &reason, false);
                }
                Some(NackAction::Stop) => {
                    self.retry_or_park(store, flight.message, &reason, false);
                }
            }
        }
        action == Some(NackAction::Stop)
    }

    fn finish(&mut self, seq: Option<u64>) {
        let Some(seq) = seq else { return };
        if let Some(entry) = self.window.get_mut(&seq) {
            entry.1 = true;
            self.finished_since_checkpoint += 1;
        }
        while let Some(entry) = self.window.first_entry() {
            if !entry.get().1 {
                break;
            }
            let (pos, _) = entry.remove();
            self.last_done = Some(pos);
        }
    }

    /// Retries `message` with its retry count up, unless it was retried
    /// `max_retry_count` times already: then it is parked
    /// (`ActionTakenForRetriedMessage`).
    fn retry_or_park(&mut self, store: &mut Store, message: Message, reason: &str, front: bool) {
        if message.retry_count >= self.definition.settings.max_retry_count {
            self.park(store, message, reason);
            return;
        }
        let message = Message {
            retry_count: message.retry_count + 1,
            ..message
        };
        if front {
            self.retry.push_front(message);
        } else {
            self.retry.push_back(message);
        }
    }

    /// Writes a link to the message's (original) event to the parked stream,
    /// and counts the message as finished.
    fn park(&mut self, store: &mut Store, message: Message, reason: &str) {
        let record = &message.item.original;
        let metadata = serde_json::json!({
            "reason": reason,
            "added": record_ticks_now(),
        });
        let link = Proposed {
            id: Uuid::new_v4(),
            event_type: "$>".to_owned(),
            content_type: crate::store::BINARY.to_owned(),
            data: Bytes::from(format!("{}@{}", record.revision, record.stream)),
            custom_metadata: Bytes::from(metadata.to_string()),
        };
        let parked = parked_stream(self.definition.source.name(), &self.definition.group);
        store.append(&parked, Expected::Any, vec![link]);
        self.finish(message.seq);
    }

    /// Puts up to `stop_at` parked messages back in the retry queue and moves
    /// the parked stream's start past them.
    pub(super) fn replay_parked(&mut self, store: &mut Store, stop_at: Option<u64>) {
        let parked = parked_stream(self.definition.source.name(), &self.definition.group);
        let Ok(range) = store.readable(&parked) else {
            return;
        };
        let end = match stop_at {
            Some(n) => range.start.saturating_add(n).min(range.end),
            None => range.end,
        };
        for link in store.stream_records(&parked, range.start..end) {
            if let Some(original) = store.resolve_link(&link) {
                let item = Item::new(store, original, self.definition.settings.resolve_links);
                self.retry.push_back(Message {
                    seq: None,
                    item,
                    retry_count: 0,
                });
            }
        }
        if end > range.start {
            write_metadata(store, &parked, serde_json::json!({ "$tb": end }));
        }
    }

    /// Sends what can be sent, times out what waited too long, reads more from
    /// the source and writes the checkpoint when it is due. `now` drives the
    /// timers.
    pub(super) fn pump(&mut self, store: &mut Store, now: Instant) {
        let gone: Vec<u64> = self
            .clients
            .iter()
            .filter(|c| c.tx.is_closed())
            .map(|c| c.id)
            .collect();
        for client in gone {
            self.disconnect(store, client);
        }
        self.expire(store, now);
        loop {
            let read = self.fill(store);
            if !self.dispatch(now) || !read {
                break;
            }
        }
        self.maybe_checkpoint(store, now);
    }

    fn expire(&mut self, store: &mut Store, now: Instant) {
        let expired: Vec<Uuid> = self
            .outstanding
            .iter()
            .filter(|(_, f)| f.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        let mut messages: Vec<Message> = Vec::new();
        for id in expired {
            if let Some(flight) = self.outstanding.remove(&id) {
                if let Some(c) = self.clients.iter_mut().find(|c| c.id == flight.client) {
                    c.in_flight = c.in_flight.saturating_sub(1);
                }
                messages.push(flight.message);
            }
        }
        messages.sort_by_key(|m| m.seq);
        for message in messages {
            self.retry_or_park(store, message, "Message timed out", false);
        }
    }

    /// Reads from the source until the buffer holds a history buffer's worth,
    /// in read batches; returns whether it read anything.
    fn fill(&mut self, store: &Store) -> bool {
        let mut any = false;
        let settings = &self.definition.settings;
        let capacity = usize::try_from(settings.history_buffer_size.max(1)).unwrap_or(1);
        let batch = usize::try_from(settings.read_batch_size.max(1)).unwrap_or(1);
        let resolve = settings.resolve_links;
        let all = self.definition.source.is_all();
        while self.buffer.len() < capacity {
            let (records, read) = match &self.definition.source {
                Source::Stream(stream) => match store.readable(stream) {
                    Ok(range) => {
                        self.cursor = self.cursor.max(range.start);
                        let records =
                            store.stream_records(stream, self.cursor..self.cursor + batch as u64);
                        let n = records.len() as u64;
                        (records, n)
                    }
                    Err(_) => (Vec::new(), 0),
                },
                Source::All(filter) => {
                    let records =
                        store.log_slice(usize::try_from(self.cursor).unwrap_or(usize::MAX), batch);
                    let n = records.len() as u64;
                    // Only the group's filter decides: the server reads `$all`
                    // unfiltered (system events included) for a group without
                    // one (`PersistentSubscriptionStreamReader.cs`); clients
                    // exclude system events with a filter of their own.
                    let wanted = records
                        .into_iter()
                        .filter(|r| filter.as_ref().is_none_or(|f| f.matches(r)))
                        .collect();
                    (wanted, n)
                }
            };
            if read == 0 {
                self.live = true;
                return any;
            }
            any = true;
            self.cursor += read;
            for record in records {
                let pos = Pos::of(&record, all);
                let seq = self.next_seq;
                self.next_seq += 1;
                self.window.insert(seq, (pos, false));
                self.last_known = Some(pos);
                let item = Item::new(store, record, resolve);
                self.buffer.push_back(Message {
                    seq: Some(seq),
                    item,
                    retry_count: 0,
                });
            }
        }
        self.live = false;
        any
    }

    /// Sends the next messages to consumers with free slots; returns whether
    /// the buffer emptied (more may be read).
    fn dispatch(&mut self, now: Instant) -> bool {
        loop {
            let from_retry = !self.retry.is_empty();
            let Some(message) = (if from_retry {
                self.retry.front()
            } else {
                self.buffer.front()
            }) else {
                return true;
            };
            let item = message.item.clone();
            let Some(index) = self.pick(&item) else {
                return false;
            };
            let message = if from_retry {
                self.retry.pop_front()
            } else {
                self.buffer.pop_front()
            }
            .expect("the front message exists");
            let client = &mut self.clients[index];
            let reply = message.item.reply(message.retry_count, client.structured);
            if client.tx.try_send(Ok(reply)).is_err() {
                // Gone, or its channel full: the message waits for the next turn.
                if from_retry {
                    self.retry.push_front(message);
                } else {
                    self.buffer.push_front(message);
                }
                return false;
            }
            client.in_flight += 1;
            client.total_items += 1;
            self.total_items += 1;
            let timeout = self.definition.settings.message_timeout_ms;
            let deadline = (timeout > 0)
                .then(|| now + Duration::from_millis(u64::try_from(timeout).unwrap_or(0)));
            let client = client.id;
            self.outstanding.insert(
                message.item.ack_id(),
                InFlight {
                    message,
                    client,
                    deadline,
                },
            );
        }
    }

    /// The consumer the strategy gives `item` to, if one has a free slot.
    fn pick(&mut self, item: &Item) -> Option<usize> {
        let n = self.clients.len();
        if n == 0 {
            return None;
        }
        // A slot, and room in its reply channel (one place kept for the error
        // that may end the call): a consumer that stopped reading must not
        // hold up the others once its messages timed out.
        let free = |c: &Client| c.in_flight < c.slots && c.tx.capacity() > 1;
        match self.definition.settings.strategy.as_str() {
            "RoundRobin" => {
                let found = (0..n)
                    .map(|i| (self.round_robin + i) % n)
                    .find(|&i| free(&self.clients[i]))?;
                self.round_robin = (found + 1) % n;
                Some(found)
            }
            "Pinned" | "PinnedByCorrelation" => {
                // Simplified: the same stream (or correlation id) always goes to
                // the same consumer while the set of consumers is unchanged.
                let key = if self.definition.settings.strategy == "PinnedByCorrelation" {
                    correlation_id(&item.original)
                        .unwrap_or_else(|| item.original.stream.to_string())
                } else {
                    item.original.stream.to_string()
                };
                let index = (fnv(key.as_bytes()) % n as u64) as usize;
                free(&self.clients[index]).then_some(index)
            }
            // DispatchToSingle: the first consumer until its slots are used up.
            _ => self.clients.iter().position(free),
        }
    }

    fn maybe_checkpoint(&mut self, store: &mut Store, now: Instant) {
        let Some(candidate) = self.last_done else {
            return;
        };
        if self.last_checkpoint == Some(candidate) {
            return;
        }
        let s = &self.definition.settings;
        let finished = self.finished_since_checkpoint;
        let min = u64::try_from(s.min_checkpoint_count.max(0)).unwrap_or(0);
        let max = u64::try_from(s.max_checkpoint_count.max(0)).unwrap_or(0);
        let timer_due = s.checkpoint_after_ms > 0
            && now.duration_since(self.checkpoint_timer)
                >= Duration::from_millis(u64::try_from(s.checkpoint_after_ms).unwrap_or(0));
        if timer_due {
            self.checkpoint_timer = now;
        }
        if !((timer_due && finished >= min) || finished >= max) {
            return;
        }
        let stream = checkpoint_stream(self.definition.source.name(), &self.definition.group);
        if store.last_revision(&stream).is_none() {
            write_metadata(
                store,
                &stream,
                serde_json::json!({
                    "$maxCount": 2,
                    "$acl": {"$r": "$admins", "$w": "$admins", "$d": "$admins", "$mw": "$admins", "$mr": "$all"},
                }),
            );
        }
        let event = Proposed {
            id: Uuid::new_v4(),
            event_type: CHECKPOINT_TYPE.to_owned(),
            content_type: JSON.to_owned(),
            data: Bytes::from(serde_json::Value::String(candidate.text()).to_string()),
            custom_metadata: Bytes::new(),
        };
        if let WriteOutcome::Success { .. } = store.append(&stream, Expected::Any, vec![event]) {
            self.last_checkpoint = Some(candidate);
            self.finished_since_checkpoint = 0;
            self.checkpoint_timer = now;
        }
    }

    /// Ends every consumer's call with `status` (the group is deleted).
    pub(super) fn drop_clients(&mut self, status: &Status) {
        for client in self.clients.drain(..) {
            let _ = client.tx.try_send(Err(status.clone()));
        }
    }

    /// The earliest moment a timer (message timeout, checkpoint) needs a pump.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let timeout = self.outstanding.values().filter_map(|f| f.deadline).min();
        let s = &self.definition.settings;
        let checkpoint = (s.checkpoint_after_ms > 0 && self.last_done != self.last_checkpoint)
            .then(|| {
                self.checkpoint_timer
                    + Duration::from_millis(u64::try_from(s.checkpoint_after_ms).unwrap_or(0))
            });
        [timeout, checkpoint].into_iter().flatten().min()
    }

    /// What `GetInfo` and `List` report (`PersistentSubscriptionStats`).
    pub(super) fn info(&mut self, store: &Store, now: Instant) -> SubscriptionInfo {
        use crate::proto::persistent_subscriptions::subscription_info::ConnectionInfo;
        let (since, total_then) = self.measured;
        let elapsed = now.duration_since(since).as_secs_f64();
        let count_since = self.total_items - total_then;
        let average = if elapsed > 0.0 {
            (count_since as f64 / elapsed) as i32
        } else {
            0
        };
        self.measured = (now, self.total_items);
        let s = &self.definition.settings;
        let parked = parked_stream(self.definition.source.name(), &self.definition.group);
        let parked_count = store
            .readable(&parked)
            .map_or(0, |r| i64::try_from(r.end - r.start).unwrap_or(i64::MAX));
        let in_flight = i32::try_from(self.outstanding.len()).unwrap_or(i32::MAX);
        let connections = self
            .clients
            .iter()
            .map(|c| ConnectionInfo {
                from: c.from.clone(),
                username: c.username.clone(),
                average_items_per_second: 0,
                total_items: c.total_items,
                count_since_last_measurement: 0,
                observed_measurements: Vec::new(),
                available_slots: i32::try_from(c.slots.saturating_sub(c.in_flight))
                    .unwrap_or(i32::MAX),
                in_flight_messages: i32::try_from(c.in_flight).unwrap_or(i32::MAX),
                connection_name: c.connection_name.clone(),
            })
            .collect();
        let buffered = i32::try_from(self.buffer.len()).unwrap_or(i32::MAX);
        SubscriptionInfo {
            event_source: self.definition.source.name().to_owned(),
            group_name: self.definition.group.clone(),
            status: if self.live { "Live" } else { "Behind" }.to_owned(),
            connections,
            average_per_second: average,
            total_items: self.total_items,
            count_since_last_measurement: count_since,
            last_checkpointed_event_position: self
                .last_checkpoint
                .map(Pos::text)
                .unwrap_or_default(),
            last_known_event_position: self.last_known.map(Pos::text).unwrap_or_default(),
            resolve_link_tos: s.resolve_links,
            start_from: s.start.text(),
            message_timeout_milliseconds: s.message_timeout_ms,
            extra_statistics: s.extra_statistics,
            max_retry_count: s.max_retry_count,
            live_buffer_size: s.live_buffer_size,
            buffer_size: s.history_buffer_size,
            read_batch_size: s.read_batch_size,
            check_point_after_milliseconds: s.checkpoint_after_ms,
            min_check_point_count: s.min_checkpoint_count,
            max_check_point_count: s.max_checkpoint_count,
            read_buffer_count: if self.live { 0 } else { buffered },
            live_buffer_count: if self.live { i64::from(buffered) } else { 0 },
            retry_buffer_count: i32::try_from(self.retry.len()).unwrap_or(i32::MAX),
            total_in_flight_messages: in_flight,
            outstanding_messages_count: in_flight,
            named_consumer_strategy: s.strategy.clone(),
            max_subscriber_count: s.max_subscriber_count,
            parked_message_count: parked_count,
        }
    }
}

/// The last event of `stream`, if it can be read.
pub(super) fn last_event(store: &Store, stream: &str) -> Option<Record> {
    let range = store.readable(stream).ok()?;
    store.stream_records(stream, range.end - 1..range.end).pop()
}

fn write_metadata(store: &mut Store, stream: &str, body: serde_json::Value) {
    let event = Proposed {
        id: Uuid::new_v4(),
        event_type: "$metadata".to_owned(),
        content_type: JSON.to_owned(),
        data: Bytes::from(body.to_string()),
        custom_metadata: Bytes::new(),
    };
    store.append(&format!("$${stream}"), Expected::Any, vec![event]);
}

fn record_ticks_now() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_nanos() / 100).unwrap_or(i64::MAX)
}

/// `$correlationId` of an event's JSON metadata.
fn correlation_id(record: &Record) -> Option<String> {
    let meta: serde_json::Value = serde_json::from_slice(&record.custom_metadata).ok()?;
    meta.get("$correlationId")?.as_str().map(str::to_owned)
}

/// FNV-1a: a stable hash, so pinning does not change between runs.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::super::settings::Settings;
    use super::*;

    fn definition(max_retry_count: i32) -> Definition {
        Definition {
            source: Source::Stream("orders".to_owned()),
            group: "g".to_owned(),
            settings: Settings {
                resolve_links: false,
                extra_statistics: false,
                message_timeout_ms: 1_000,
                max_retry_count,
                min_checkpoint_count: 1,
                // A checkpoint after every finished event, without the timer.
                max_checkpoint_count: 1,
                max_subscriber_count: 0,
                live_buffer_size: 10,
                read_batch_size: 2,
                history_buffer_size: 10,
                checkpoint_after_ms: 0,
                strategy: "DispatchToSingle".to_owned(),
                start: Start::Revision(0),
            },
        }
    }

    fn store_with(events: usize) -> (Store, Vec<Uuid>) {
        let mut store = Store::default();
        let proposed: Vec<Proposed> = (0..events)
            .map(|n| Proposed {
                id: Uuid::new_v4(),
                event_type: "Happened".to_owned(),
                content_type: JSON.to_owned(),
                data: Bytes::from(format!("{{\"n\":{n}}}")),
                custom_metadata: Bytes::new(),
            })
            .collect();
        let ids = proposed.iter().map(|p| p.id).collect();
        store.append("orders", Expected::Any, proposed);
        (store, ids)
    }

    fn checkpoint(store: &Store) -> Option<String> {
        last_event(store, &checkpoint_stream("orders", "g"))
            .map(|r| serde_json::from_slice::<String>(&r.data).expect("a JSON string"))
    }

    fn connect(group: &mut Group, slots: usize) -> mpsc::Receiver<Result<ReadResp, Status>> {
        let (tx, rx) = mpsc::channel(slots + 2);
        group.connect(
            tx,
            slots,
            false,
            String::new(),
            String::new(),
            String::new(),
        );
        rx
    }

    fn received(rx: &mut mpsc::Receiver<Result<ReadResp, Status>>) -> Vec<(u64, i32)> {
        let mut out = Vec::new();
        while let Ok(Ok(reply)) = rx.try_recv() {
            if let Some(read_resp::Content::Event(event)) = reply.content {
                let revision = event.event.expect("an event").stream_revision;
                let Some(read_resp::read_event::Count::RetryCount(retries)) = event.count else {
                    panic!("no retry count");
                };
                out.push((revision, retries));
            }
        }
        out
    }

    #[test]
    fn the_checkpoint_is_the_event_before_the_lowest_unacknowledged_one() {
        let (mut store, ids) = store_with(5);
        let mut group = Group::load(&store, definition(10));
        let mut rx = connect(&mut group, 10);
        let now = Instant::now();
        group.pump(&mut store, now);
        assert_eq!(received(&mut rx).len(), 5);
        group.answer(&mut store, Answer::Ack(vec![ids[0], ids[1], ids[3]]));
        group.pump(&mut store, now);
        assert_eq!(
            checkpoint(&store).as_deref(),
            Some("1"),
            "revision 2 is still unacked"
        );
        group.answer(&mut store, Answer::Ack(vec![ids[2]]));
        group.pump(&mut store, now);
        assert_eq!(checkpoint(&store).as_deref(), Some("3"));
        group.answer(&mut store, Answer::Ack(vec![ids[4]]));
        group.pump(&mut store, now);
        assert_eq!(
            checkpoint(&store).as_deref(),
            Some("4"),
            "nothing outstanding: the last event"
        );

        // Loaded again, the group resumes after the checkpoint.
        store.append(
            "orders",
            Expected::Any,
            vec![Proposed {
                id: Uuid::new_v4(),
                event_type: "Happened".to_owned(),
                content_type: JSON.to_owned(),
                data: Bytes::from_static(b"{}"),
                custom_metadata: Bytes::new(),
            }],
        );
        let mut again = Group::load(&store, definition(10));
        let mut rx = connect(&mut again, 10);
        again.pump(&mut store, now);
        assert_eq!(received(&mut rx), [(5, 0)]);
    }

    #[test]
    fn a_timed_out_message_is_retried_then_parked_and_buffer_size_bounds_in_flight() {
        let (mut store, _) = store_with(3);
        let mut group = Group::load(&store, definition(1));
        let mut rx = connect(&mut group, 2);
        let start = Instant::now();
        group.pump(&mut store, start);
        assert_eq!(
            received(&mut rx),
            [(0, 0), (1, 0)],
            "two slots: two in flight"
        );
        // Past the message timeout: both are sent again, retry count 1.
        let later = start + Duration::from_millis(1_001);
        group.pump(&mut store, later);
        assert_eq!(received(&mut rx), [(0, 1), (1, 1)]);
        // Again: retried once already (max 1), so parked; the third event goes out.
        group.pump(&mut store, later + Duration::from_millis(1_001));
        assert_eq!(received(&mut rx), [(2, 0)]);
        let parked = parked_stream("orders", "g");
        let links: Vec<String> = store
            .stream_records(&parked, 0..10)
            .iter()
            .map(|r| String::from_utf8(r.data.to_vec()).expect("text"))
            .collect();
        assert_eq!(links, ["0@orders", "1@orders"]);
        assert_eq!(
            checkpoint(&store).as_deref(),
            Some("1"),
            "parked events count as finished"
        );
    }
}
