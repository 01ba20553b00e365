//! One TCP connection: the frames in, the frames out, who is calling,
//! heartbeats, and the requests handed to an ordered worker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::frame::{command, read_frame, Frame, FrameError, FLAG_TRUSTED_WRITE};
use super::ops;
use crate::proto::tcp::IdentifyClient;
use crate::security::{self, Principal};
use crate::shared::Shared;

/// Frames buffered per connection before the sender waits for the peer.
const CHANNEL: usize = 256;
/// v5's external TCP heartbeat interval and timeout (ES5 `Opts.cs`).
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(2_000);
const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(1_000);
/// How long a closing connection may take to send its last frames.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Who frames without credentials of their own run as (v5 `TcpConnectionManager`).
enum DefaultUser {
    /// No Authenticate yet: anonymous.
    None,
    /// Authenticate succeeded.
    Authenticated(Principal),
    /// Authenticate failed: v5 keeps the wrong login, so every later frame without
    /// credentials is refused with NotAuthenticated.
    Failed,
}

/// A request for the ordered worker, with its caller (or the subscription's
/// cancellation).
struct Work {
    frame: Frame,
    principal: Principal,
    subscription: Option<CancellationToken>,
}

/// Serves one connection until the peer closes it, it breaks the protocol, it
/// misses a heartbeat, or `token` is cancelled (server stop, dropped connections).
pub(super) async fn serve<S>(io: S, shared: Arc<Shared>, token: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let (out, mut outgoing) = mpsc::channel::<Frame>(CHANNEL);
    let writer_task = tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if writer.write_all(&frame.encode()).await.is_err() || writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let (frames_tx, mut frames) = mpsc::channel::<Result<Frame, FrameError>>(CHANNEL);
    let reader_task = tokio::spawn(async move {
        loop {
            let read = read_frame(&mut reader).await;
            let last = !matches!(read, Ok(Some(_)));
            let Some(read) = read.transpose() else { return };
            if frames_tx.send(read).await.is_err() || last {
                return;
            }
        }
    });
    let connection_token = token.child_token();
    let (work_tx, work_rx) = mpsc::channel::<Work>(CHANNEL);
    let worker = tokio::spawn(work(
        Arc::clone(&shared),
        work_rx,
        out.clone(),
        connection_token.clone(),
    ));

    let mut connection = Connection {
        shared,
        out,
        work: work_tx,
        default_user: DefaultUser::None,
        subscriptions: HashMap::new(),
        token: connection_token.clone(),
    };
    let interval = connection
        .shared
        .options
        .tcp_heartbeat_interval
        .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
    let timeout = connection
        .shared
        .options
        .tcp_heartbeat_timeout
        .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT);
    let mut last_received = Instant::now();
    // Set while the server's own HeartbeatRequest waits for any frame.
    let mut answer_due: Option<Instant> = None;
    loop {
        let wake = answer_due.unwrap_or(last_received + interval);
        tokio::select! {
            () = token.cancelled() => break,
            incoming = frames.recv() => match incoming {
                None | Some(Err(FrameError::Io(_))) => break,
                Some(Err(error)) => {
                    // Connection-fatal: BadRequest with a zero correlation id, then close.
                    connection.send(Frame::new(command::BAD_REQUEST, [0; 16], error.to_string())).await;
                    break;
                }
                Some(Ok(frame)) => {
                    last_received = Instant::now();
                    answer_due = None;
                    if !connection.handle(frame).await {
                        break;
                    }
                }
            },
            () = tokio::time::sleep_until(wake) => {
                if answer_due.is_some() {
                    debug!("TCP connection closed: heartbeat timeout");
                    break;
                }
                let request = Frame::new(
                    command::HEARTBEAT_REQUEST,
                    uuid::Uuid::new_v4().into_bytes(),
                    bytes::Bytes::new(),
                );
                connection.send(request).await;
                answer_due = Some(Instant::now() + timeout);
            }
        }
    }
    // Stop the worker and the subscriptions; once every sender is gone the writer
    // flushes what is queued (a final BadRequest) and closes the socket.
    connection_token.cancel();
    reader_task.abort();
    drop(connection);
    let _ = worker.await;
    if tokio::time::timeout(CLOSE_GRACE, writer_task)
        .await
        .is_err()
    {
        debug!("TCP connection closed before its last frames were sent");
    }
}

struct Connection {
    shared: Arc<Shared>,
    out: mpsc::Sender<Frame>,
    work: mpsc::Sender<Work>,
    default_user: DefaultUser,
    /// Live subscriptions by the correlation id of their SubscribeToStream.
    subscriptions: HashMap<[u8; 16], CancellationToken>,
    token: CancellationToken,
}

impl Connection {
    async fn send(&self, frame: Frame) {
        let _ = self.out.send(frame).await;
    }

    /// The caller of `frame`: its own credentials override the connection's
    /// (v5 `TcpConnectionManager.ProcessPackage`); `None` when they are wrong.
    fn principal(&self, frame: &Frame) -> Option<Principal> {
        let users = self.shared.options.users.as_deref();
        match (&frame.credentials, &self.default_user) {
            (Some((login, password)), _) => security::login(users, login, password).ok(),
            (None, DefaultUser::Authenticated(principal)) => Some(principal.clone()),
            (None, DefaultUser::Failed) => None,
            (None, DefaultUser::None) => security::principal(users, None).ok(),
        }
    }

    /// Answers or dispatches one frame; false when the connection must close.
    async fn handle(&mut self, frame: Frame) -> bool {
        if frame.flags & FLAG_TRUSTED_WRITE != 0 {
            let text = "Trusted writes aren't accepted over the external TCP interface";
            self.send(Frame::reply(&frame, command::BAD_REQUEST, text))
                .await;
            return false;
        }
        match frame.command {
            command::HEARTBEAT_REQUEST => {
                let answer = Frame::reply(&frame, command::HEARTBEAT_RESPONSE, bytes::Bytes::new());
                self.send(answer).await;
            }
            command::HEARTBEAT_RESPONSE => {}
            command::PING => {
                let pong = Frame::reply(&frame, command::PONG, frame.body.clone());
                self.send(pong).await;
            }
            command::IDENTIFY_CLIENT => {
                // v5 only logs an IdentifyClient it cannot parse, and answers nothing.
                match IdentifyClient::decode(frame.body.clone()) {
                    Ok(_) => {
                        let answer =
                            Frame::reply(&frame, command::CLIENT_IDENTIFIED, bytes::Bytes::new());
                        self.send(answer).await;
                    }
                    Err(error) => debug!(%error, "Unreadable IdentifyClient ignored"),
                }
            }
            command::AUTHENTICATE => self.authenticate(&frame).await,
            command::BAD_REQUEST => {
                debug!(text = %String::from_utf8_lossy(&frame.body), "BadRequest from a TCP client");
            }
            command::UNSUBSCRIBE_FROM_STREAM => {
                if let Some(subscription) = self.subscriptions.remove(&frame.correlation) {
                    subscription.cancel();
                }
            }
            command::WRITE_EVENTS
            | command::TRANSACTION_START
            | command::TRANSACTION_WRITE
            | command::TRANSACTION_COMMIT
            | command::DELETE_STREAM
            | command::READ_EVENT
            | command::READ_STREAM_FORWARD
            | command::READ_STREAM_BACKWARD
            | command::READ_ALL_FORWARD
            | command::READ_ALL_BACKWARD
            | command::SUBSCRIBE_TO_STREAM => {
                let Some(principal) = self.principal(&frame) else {
                    let refusal =
                        Frame::reply(&frame, command::NOT_AUTHENTICATED, "Not Authenticated");
                    self.send(refusal).await;
                    return true;
                };
                if let Some(refusal) = ops::not_handled(&self.shared, &frame) {
                    self.send(refusal).await;
                    return true;
                }
                let subscription = (frame.command == command::SUBSCRIBE_TO_STREAM).then(|| {
                    let token = self.token.child_token();
                    self.subscriptions.insert(frame.correlation, token.clone());
                    token
                });
                let work = Work {
                    frame,
                    principal,
                    subscription,
                };
                if self.work.send(work).await.is_err() {
                    return false;
                }
            }
            _ => self.send(ops::unwrap_failed(&frame, "")).await,
        }
        true
    }

    /// Authenticate: the login becomes the connection's default user; v5 keeps
    /// it even when wrong (docs/tcp-protocol.md §4.1).
    async fn authenticate(&mut self, frame: &Frame) {
        let Some((login, password)) = &frame.credentials else {
            let refusal = Frame::reply(
                frame,
                command::NOT_AUTHENTICATED,
                "No user credentials provided.",
            );
            self.send(refusal).await;
            return;
        };
        let users = self.shared.options.users.as_deref();
        let answer = match security::login(users, login, password) {
            Ok(principal) => {
                self.default_user = DefaultUser::Authenticated(principal);
                Frame::reply(frame, command::AUTHENTICATED, bytes::Bytes::new())
            }
            Err(_) => {
                self.default_user = DefaultUser::Failed;
                Frame::reply(frame, command::NOT_AUTHENTICATED, "Unauthorized")
            }
        };
        self.send(answer).await;
    }
}

/// Runs the store requests of one connection in the order they arrived, as v5's
/// single writer queue keeps one connection's writes in order.
async fn work(
    shared: Arc<Shared>,
    mut requests: mpsc::Receiver<Work>,
    out: mpsc::Sender<Frame>,
    token: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            () = token.cancelled() => return,
            request = requests.recv() => match request {
                Some(request) => request,
                None => return,
            },
        };
        let Work {
            frame,
            principal,
            subscription,
        } = request;
        let answer = match frame.command {
            command::WRITE_EVENTS => ops::write_events(&shared, &principal, &frame).await,
            command::TRANSACTION_START => ops::transaction_start(&shared, &principal, &frame).await,
            command::TRANSACTION_WRITE => ops::transaction_write(&shared, &frame).await,
            command::TRANSACTION_COMMIT => ops::transaction_commit(&shared, &frame).await,
            command::DELETE_STREAM => ops::delete_stream(&shared, &principal, &frame).await,
            command::READ_EVENT => ops::read_event(&shared, &principal, &frame).await,
            command::READ_STREAM_FORWARD => {
                ops::read_stream(&shared, &principal, &frame, true).await
            }
            command::READ_STREAM_BACKWARD => {
                ops::read_stream(&shared, &principal, &frame, false).await
            }
            command::READ_ALL_FORWARD => ops::read_all(&shared, &principal, &frame, true).await,
            command::READ_ALL_BACKWARD => ops::read_all(&shared, &principal, &frame, false).await,
            _ => {
                let token = subscription.unwrap_or_else(|| token.child_token());
                ops::subscribe(&shared, &principal, &frame, &out, token).await;
                continue;
            }
        };
        if out.send(answer).await.is_err() {
            return;
        }
    }
}
