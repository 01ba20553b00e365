//! The `Streams` service: its calls, and what they all share (credentials,
//! the write delay, the pause and the dropped connections).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::append::{
    append_reply, append_size, deletion_position, expected_from_append, DEFAULT_MAX_APPEND_SIZE,
};
use super::batch::{CallCount, PendingBatch};
use super::convert::{proposed, stream_name};
use super::read::{ReadPlan, ReplyStream, Source};
use super::status::{access_denied, injected_unavailable, max_append_size_exceeded, shutting_down};
use crate::proto::streams::{
    append_req, delete_req, delete_resp, streams_server::Streams, tombstone_req, tombstone_resp,
    AppendReq, AppendResp, BatchAppendReq, BatchAppendResp, DeleteReq, DeleteResp, ReadReq,
    ReadResp, TombstoneReq, TombstoneResp,
};
use crate::security::{self, Access, Principal};
use crate::shared::Shared;
use crate::store::Expected;

/// Replies buffered per call before the sender waits for the client.
const CHANNEL: usize = 64;

pub(super) type ReplySender<T> = mpsc::Sender<Result<T, Status>>;

/// The `event_store.client.streams.Streams` service.
#[derive(Clone)]
pub(crate) struct StreamsService {
    pub(super) shared: Arc<Shared>,
}

impl StreamsService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        StreamsService { shared }
    }
}

/// Sends one reply unless the client went away or the connection is being dropped
/// (then the reply is an `Unavailable`, best effort). Returns whether to go on.
pub(super) async fn send<T>(tx: &ReplySender<T>, token: &CancellationToken, reply: T) -> bool {
    tokio::select! {
        sent = tx.send(Ok(reply)) => sent.is_ok(),
        () = token.cancelled() => {
            let _ = tx.try_send(Err(shutting_down()));
            false
        }
    }
}

/// Waits until replies are not paused; false if the connection is dropped meanwhile.
pub(super) async fn unpaused(shared: &Shared, token: &CancellationToken) -> bool {
    tokio::select! {
        () = shared.faults.wait_unpaused() => true,
        () = token.cancelled() => false,
    }
}

impl StreamsService {
    /// The caller of `metadata`'s request, or `Unauthenticated` for wrong
    /// credentials.
    fn principal(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        super::grpc_caller(&self.shared.options, metadata)
    }

    pub(super) fn max_append_size(&self) -> usize {
        self.shared
            .options
            .max_append_size
            .unwrap_or(DEFAULT_MAX_APPEND_SIZE)
    }

    async fn write_delay(&self) {
        let latency = self.shared.options.append_latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    async fn gate(&self) -> Result<CancellationToken, Status> {
        let token = self.shared.faults.token();
        if unpaused(&self.shared, &token).await {
            Ok(token)
        } else {
            Err(shutting_down())
        }
    }
}

macro_rules! deletion_expected {
    ($module:ident, $option:expr) => {{
        use $module::options::ExpectedStreamRevision as E;
        match $option {
            Some(E::Revision(r)) => Expected::Exact(r),
            Some(E::NoStream(())) => Expected::NoStream,
            Some(E::StreamExists(())) => Expected::StreamExists,
            Some(E::Any(())) | None => Expected::Any,
        }
    }};
}

#[tonic::async_trait]
impl Streams for StreamsService {
    type ReadStream = ReplyStream<ReadResp>;
    type BatchAppendStream = ReceiverStream<Result<BatchAppendResp, Status>>;

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<Self::ReadStream>, Status> {
        let token = self.gate().await?;
        let principal = self.principal(request.metadata())?;
        let plan = ReadPlan::from_wire(request.into_inner())?;
        let target = match &plan.source {
            Source::All(_) => "$all",
            Source::Stream(stream, _) => stream.as_str(),
        };
        if !security::allowed(&principal, target, Access::Read) {
            return Err(access_denied());
        }
        let latency = self.shared.options.read_latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let (tx, rx) = mpsc::channel(CHANNEL);
        let service = self.clone();
        let subscription = plan.count.is_none();
        tokio::spawn(async move {
            if plan.count.is_some() {
                service.count_read(plan, tx, token).await;
            } else {
                service.subscription(plan, tx, token).await;
            }
        });
        Ok(Response::new(ReplyStream {
            rx,
            never_ok: subscription,
            finished: false,
        }))
    }

    async fn append(
        &self,
        request: Request<Streaming<AppendReq>>,
    ) -> Result<Response<AppendResp>, Status> {
        let token = self.gate().await?;
        self.shared
            .plain_appends
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let principal = self.principal(request.metadata())?;
        let mut messages = request.into_inner();
        let Some(first) = messages.message().await? else {
            return Err(Status::invalid_argument("append without options"));
        };
        let Some(append_req::Content::Options(options)) = first.content else {
            return Err(Status::invalid_argument("append must start with options"));
        };
        let stream = stream_name(options.stream_identifier)?;
        if !security::allowed(&principal, &stream, Access::Write) {
            return Err(access_denied());
        }
        let expected = expected_from_append(options.expected_stream_revision);
        let max_append_size = self.max_append_size();
        let mut events = Vec::new();
        let mut size = 0;
        while let Some(message) = messages.message().await? {
            match message.content {
                Some(append_req::Content::ProposedMessage(m)) => {
                    let event = proposed(m.id, m.metadata, m.custom_metadata, m.data)?;
                    size += append_size(&event);
                    if size > max_append_size {
                        return Err(max_append_size_exceeded(max_append_size));
                    }
                    events.push(event);
                }
                _ => return Err(Status::invalid_argument("options sent twice in one append")),
            }
        }
        self.write_delay().await;
        if !unpaused(&self.shared, &token).await
            || !self.shared.faults.pass_gate(events.len(), &token).await
        {
            return Err(shutting_down());
        }
        if self.shared.faults.take_append_failure() {
            return Err(injected_unavailable());
        }
        let outcome = self
            .shared
            .write(|store| store.append(&stream, expected, events));
        append_reply(outcome, &stream).map(Response::new)
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        let token = self.gate().await?;
        let principal = self.principal(request.metadata())?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("delete options are missing"))?;
        let stream = stream_name(options.stream_identifier)?;
        if !security::allowed(&principal, &stream, Access::Write) {
            return Err(access_denied());
        }
        let expected = deletion_expected!(delete_req, options.expected_stream_revision);
        self.write_delay().await;
        if !unpaused(&self.shared, &token).await || !self.shared.faults.pass_gate(1, &token).await {
            return Err(shutting_down());
        }
        let outcome = self
            .shared
            .write(|store| store.soft_delete(&stream, expected));
        let position = deletion_position(outcome, &stream)?;
        Ok(Response::new(DeleteResp {
            position_option: Some(match position {
                Some(p) => delete_resp::PositionOption::Position(delete_resp::Position {
                    commit_position: p,
                    prepare_position: p,
                }),
                None => delete_resp::PositionOption::NoPosition(()),
            }),
        }))
    }

    async fn tombstone(
        &self,
        request: Request<TombstoneReq>,
    ) -> Result<Response<TombstoneResp>, Status> {
        let token = self.gate().await?;
        let principal = self.principal(request.metadata())?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("tombstone options are missing"))?;
        let stream = stream_name(options.stream_identifier)?;
        if !security::allowed(&principal, &stream, Access::Write) {
            return Err(access_denied());
        }
        let expected = deletion_expected!(tombstone_req, options.expected_stream_revision);
        self.write_delay().await;
        if !unpaused(&self.shared, &token).await || !self.shared.faults.pass_gate(1, &token).await {
            return Err(shutting_down());
        }
        let outcome = self
            .shared
            .write(|store| store.tombstone(&stream, expected));
        let position = deletion_position(outcome, &stream)?;
        Ok(Response::new(TombstoneResp {
            position_option: Some(match position {
                Some(p) => tombstone_resp::PositionOption::Position(tombstone_resp::Position {
                    commit_position: p,
                    prepare_position: p,
                }),
                None => tombstone_resp::PositionOption::NoPosition(()),
            }),
        }))
    }

    async fn batch_append(
        &self,
        request: Request<Streaming<BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        let token = self.gate().await?;
        let principal = self.principal(request.metadata())?;
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(CHANNEL);
        let service = self.clone();
        let calls = self.shared.faults.batch_calls.clone();
        calls.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            // Counted until the call ends, however it ends.
            let _call = CallCount(calls);
            let mut pending: HashMap<Uuid, PendingBatch> = HashMap::new();
            loop {
                let next = tokio::select! {
                    next = requests.message() => next,
                    () = token.cancelled() => {
                        let _ = tx.try_send(Err(shutting_down()));
                        return;
                    }
                };
                let request = match next {
                    Ok(Some(request)) => request,
                    Ok(None) => return,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                service
                    .shared
                    .batch_requests
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let reply = match service
                    .batch_step(&mut pending, request, &principal, &token)
                    .await
                {
                    Ok(Some(reply)) => reply,
                    Ok(None) => continue,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                // Requests on one batch-append stream are pipelined, as on a
                // real server: each is applied in arrival order at once and
                // answered `append_latency` later, without holding up the
                // requests behind it.
                let latency = service.shared.options.append_latency;
                if latency.is_zero() {
                    if !send(&tx, &token, reply).await {
                        return;
                    }
                } else {
                    let (tx, token) = (tx.clone(), token.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(latency).await;
                        send(&tx, &token, reply).await;
                    });
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
