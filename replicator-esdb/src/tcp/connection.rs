//! One connection to a v5 node: framing (docs/tcp-protocol.md §1), the
//! handshake (Authenticate, IdentifyClient), heartbeats both ways and one
//! request at a time.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use replicator_core::health::short;
use replicator_core::ErrorKind;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout_at, Instant};
use tracing::info;
use uuid::Uuid;

use super::discovery::NodeEndpoints;
use super::proto::{IdentifyClient, MasterInfo, NotHandled, SubscribeToStream};
use super::settings::{Endpoint, Target, TcpSettings, Tls};
use crate::wire::channel::NoVerification;

/// Largest frame accepted (everything after the length prefix): the v5
/// framers' default.
pub(crate) const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Command, flags and correlation id.
const MANDATORY: usize = 18;
const FLAG_AUTHENTICATED: u8 = 0x01;
/// NotHandled reason NotMaster (KurrentDB: NotLeader).
const NOT_MASTER: i32 = 2;
/// Redirects to a leader one request may follow (the .NET client's
/// `MaxRetries` default), so that two nodes naming each other cannot hold a
/// request forever.
const MAX_REDIRECTS: usize = 10;

/// TcpCommand bytes (ES5 `TcpCommand.cs`).
pub(crate) mod command {
    pub(crate) const HEARTBEAT_REQUEST: u8 = 0x01;
    pub(crate) const HEARTBEAT_RESPONSE: u8 = 0x02;
    pub(crate) const READ_STREAM_FORWARD: u8 = 0xB2;
    pub(crate) const READ_STREAM_FORWARD_COMPLETED: u8 = 0xB3;
    pub(crate) const READ_STREAM_BACKWARD: u8 = 0xB4;
    pub(crate) const READ_STREAM_BACKWARD_COMPLETED: u8 = 0xB5;
    pub(crate) const READ_ALL_FORWARD: u8 = 0xB6;
    pub(crate) const READ_ALL_FORWARD_COMPLETED: u8 = 0xB7;
    pub(crate) const READ_ALL_BACKWARD: u8 = 0xB8;
    pub(crate) const READ_ALL_BACKWARD_COMPLETED: u8 = 0xB9;
    pub(crate) const SUBSCRIBE_TO_STREAM: u8 = 0xC0;
    pub(crate) const SUBSCRIPTION_CONFIRMATION: u8 = 0xC1;
    pub(crate) const STREAM_EVENT_APPEARED: u8 = 0xC2;
    pub(crate) const BAD_REQUEST: u8 = 0xF0;
    pub(crate) const NOT_HANDLED: u8 = 0xF1;
    pub(crate) const AUTHENTICATE: u8 = 0xF2;
    pub(crate) const AUTHENTICATED: u8 = 0xF3;
    pub(crate) const NOT_AUTHENTICATED: u8 = 0xF4;
    pub(crate) const IDENTIFY_CLIENT: u8 = 0xF5;
    pub(crate) const CLIENT_IDENTIFIED: u8 = 0xF6;
}

/// Why talking to the node failed. [`TcpError::kind`] says whether trying
/// again may help. No variant holds the password.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// Connecting, reading or writing failed.
    #[error("{doing} {address} failed: {source}")]
    Io {
        /// What was being done.
        doing: &'static str,
        /// `host:port`.
        address: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The node closed the connection.
    #[error("the source closed the connection")]
    Closed,
    /// No answer to a request (or to connecting) within the operation timeout,
    /// though the connection carried heartbeats.
    #[error("the source did not answer {what} within {}", short(*.after))]
    Timeout {
        /// The request.
        what: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// The node sent nothing, not even a heartbeat, for the heartbeat
    /// interval plus the heartbeat timeout.
    #[error("the source sent nothing for {}, not even an answer to a heartbeat", short(*.after))]
    Silent {
        /// How long it was silent.
        after: Duration,
    },
    /// The node refused the credentials (or there were none and it wants some).
    #[error("the source refused the credentials of user {}: {reason}", user.as_deref().map_or_else(|| "(none given)".to_owned(), |u| format!("`{u}`")))]
    NotAuthenticated {
        /// The login, when one was given.
        user: Option<String>,
        /// The server's text.
        reason: String,
    },
    /// The user may not read `$all`.
    #[error("access to $all denied for user {}", user.as_deref().map_or_else(|| "(anonymous)".to_owned(), |u| format!("`{u}`")))]
    AccessDenied {
        /// The login, when one was given.
        user: Option<String>,
    },
    /// The node cannot serve the request now (not ready, too busy, not the
    /// leader and the request needs one).
    #[error("the source did not handle the request: {0}")]
    NotHandled(&'static str),
    /// Cluster discovery found no node to connect to.
    #[error(
        "cluster discovery through the {seeds} found no node to connect to in {attempts} \
         attempt(s): {problem}"
    )]
    Discovery {
        /// The gossip seeds or DNS name asked.
        seeds: String,
        /// `MaxDiscoverAttempts`.
        attempts: u32,
        /// What the last attempt met, per candidate.
        problem: String,
    },
    /// The node could not make sense of a request.
    #[error("the source rejected a request as a bad request: {0}")]
    BadRequest(String),
    /// The node answered a read with an error.
    #[error("the source answered with an error: {0}")]
    Server(String),
    /// The node sent a frame larger than 64 MiB (the v5 framers' limit): a
    /// page too large.
    #[error("the source sent a frame of {0} bytes, over the 64 MiB limit")]
    FrameTooLarge(usize),
    /// TLS cannot be set up as the connection string asks.
    #[error("TLS to the source cannot be set up: {0}")]
    Tls(String),
    /// An answer that does not follow the protocol.
    #[error("the source sent an answer that does not follow the protocol: {0}")]
    Protocol(String),
}

impl TcpError {
    /// Permanent: the configuration or the source's data must change
    /// (credentials, access, a request the server rejects). Transient: the
    /// connection or the node's state, worth a reconnect.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TcpError::NotAuthenticated { .. }
            | TcpError::AccessDenied { .. }
            | TcpError::BadRequest(_)
            | TcpError::Tls(_)
            | TcpError::Server(_) => ErrorKind::Permanent,
            TcpError::Io { .. }
            | TcpError::Closed
            | TcpError::Timeout { .. }
            | TcpError::Silent { .. }
            | TcpError::NotHandled(_)
            | TcpError::Discovery { .. }
            | TcpError::FrameTooLarge(_)
            | TcpError::Protocol(_) => ErrorKind::Transient,
        }
    }
}

/// A frame as received: credentials never come back from a server.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) command: u8,
    pub(crate) correlation: [u8; 16],
    pub(crate) body: Bytes,
}

/// A plain or TLS stream.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// An open, identified connection.
pub(crate) struct Connection {
    read: ReadHalf<Box<dyn Stream>>,
    write: WriteHalf<Box<dyn Stream>>,
    buffer: BytesMut,
    settings: TcpSettings,
    /// The node's endpoint.
    endpoint: Endpoint,
    address: String,
    /// The leader a NotHandled NotMaster named, taken by the request loop.
    redirect: Option<NodeEndpoints>,
    /// When a frame last arrived.
    heard: Instant,
    /// When our unanswered HeartbeatRequest went out.
    asked: Option<Instant>,
    /// Correlation id of our `$all` subscription while the node keeps it.
    subscription: Option<[u8; 16]>,
    /// The subscription confirmed, or said an event appeared, since
    /// [`Connection::wait_for_news`] last returned.
    news: bool,
}

impl Connection {
    /// Connects to the node of `ConnectTo=tcp://`, or to the node cluster
    /// discovery chooses (its secure TCP endpoint over TLS), then
    /// authenticates when the settings carry credentials and identifies as a
    /// version-1 client, within the operation timeout.
    pub(crate) async fn open(settings: &TcpSettings) -> Result<Connection, TcpError> {
        let endpoint = match &settings.target {
            Target::Node(endpoint) => endpoint.clone(),
            Target::Cluster(discovery) => {
                discovery.discover().await?.choose(settings.tls.is_some())
            }
        };
        Self::open_to(settings, endpoint).await
    }

    /// [`Connection::open`] to `endpoint`.
    async fn open_to(settings: &TcpSettings, endpoint: Endpoint) -> Result<Connection, TcpError> {
        let address = endpoint.to_string();
        let deadline = Instant::now() + settings.operation_timeout;
        let stream = timeout_at(deadline, TcpStream::connect(&address))
            .await
            .map_err(|_| TcpError::Timeout {
                what: "a connection attempt",
                after: settings.operation_timeout,
            })?
            .map_err(|source| TcpError::Io {
                doing: "connecting to",
                address: address.clone(),
                source,
            })?;
        // One small request, one answer: never wait for a delayed ACK.
        let _ = stream.set_nodelay(true);
        let stream: Box<dyn Stream> = match &settings.tls {
            None => Box::new(stream),
            Some(tls) => {
                let (connector, name) = tls_connector(tls, &endpoint.host)?;
                let stream = timeout_at(deadline, connector.connect(name, stream))
                    .await
                    .map_err(|_| TcpError::Timeout {
                        what: "a TLS handshake",
                        after: settings.operation_timeout,
                    })?
                    .map_err(|source| TcpError::Io {
                        doing: "a TLS handshake with",
                        address: address.clone(),
                        source,
                    })?;
                Box::new(stream)
            }
        };
        let (read, write) = tokio::io::split(stream);
        let mut connection = Connection {
            read,
            write,
            buffer: BytesMut::with_capacity(64 * 1024),
            settings: settings.clone(),
            endpoint,
            address,
            redirect: None,
            heard: Instant::now(),
            asked: None,
            subscription: None,
            news: false,
        };
        if settings.credentials.is_some() {
            connection
                .request_here(
                    command::AUTHENTICATE,
                    &[],
                    command::AUTHENTICATED,
                    "Authenticate",
                )
                .await?;
        }
        let identify = IdentifyClient {
            version: 1,
            connection_name: Some(format!("replicator-{}", env!("CARGO_PKG_VERSION"))),
        };
        connection
            .request_here(
                command::IDENTIFY_CLIENT,
                &identify.encode_to_vec(),
                command::CLIENT_IDENTIFIED,
                "IdentifyClient",
            )
            .await?;
        Ok(connection)
    }

    /// Sends one request and waits for its answer (`expect`), answering
    /// heartbeats meanwhile. A NotHandled NotMaster naming a leader (the
    /// answer of a follower to a request with `require_master`) replaces
    /// this connection with one to that leader, where the request is sent
    /// again, as the .NET client's `ReconnectTo` does; the subscription, if
    /// any, is left behind with the old connection.
    ///
    /// # Errors
    /// See [`TcpError`]; NotAuthenticated, NotHandled (also a NotMaster
    /// naming this node, or after [`MAX_REDIRECTS`]) and BadRequest answers
    /// become errors.
    pub(crate) async fn request(
        &mut self,
        command: u8,
        body: Vec<u8>,
        expect: u8,
        what: &'static str,
    ) -> Result<Frame, TcpError> {
        let mut redirects = 0;
        loop {
            // Only this request's answer may redirect it.
            self.redirect = None;
            let outcome = self.request_here(command, &body, expect, what).await;
            let Some(leader) = self.redirect.take() else {
                return outcome;
            };
            let endpoint = leader.choose(self.settings.tls.is_some());
            if redirects == MAX_REDIRECTS || endpoint == self.endpoint {
                return outcome;
            }
            redirects += 1;
            info!(
                node = %self.endpoint,
                leader = %endpoint,
                "The source node is not the leader; reconnecting to the leader it names"
            );
            *self = Connection::open_to(&self.settings, endpoint).await?;
        }
    }

    /// [`Connection::request`] on this connection only.
    async fn request_here(
        &mut self,
        command: u8,
        body: &[u8],
        expect: u8,
        what: &'static str,
    ) -> Result<Frame, TcpError> {
        let correlation = Uuid::new_v4().to_bytes_le();
        // Credentials travel only in Authenticate: the node keeps them as the
        // connection's default user (docs §1.3).
        let authenticate = command == command::AUTHENTICATE;
        self.send(command, correlation, authenticate, body).await?;
        let deadline = Instant::now() + self.settings.operation_timeout;
        loop {
            let Some(frame) = self.receive(deadline).await? else {
                return Err(TcpError::Timeout {
                    what,
                    after: self.settings.operation_timeout,
                });
            };
            if frame.command == command::BAD_REQUEST && frame.correlation == [0; 16] {
                // Connection-wide: the node closes the connection after it.
                return Err(TcpError::BadRequest(text(&frame.body)));
            }
            if frame.correlation != correlation {
                self.on_other(&frame);
                continue;
            }
            return match frame.command {
                c if c == expect => Ok(frame),
                command::NOT_AUTHENTICATED => Err(TcpError::NotAuthenticated {
                    user: self.settings.credentials.as_ref().map(|c| c.login.clone()),
                    reason: text(&frame.body),
                }),
                command::NOT_HANDLED => {
                    let answer = NotHandled::decode(frame.body).ok();
                    let reason = answer.as_ref().map_or(-1, |n| n.reason);
                    if reason == NOT_MASTER {
                        self.redirect = answer
                            .and_then(|n| n.additional_info)
                            .and_then(|info| MasterInfo::decode(info).ok())
                            .and_then(|info| leader(&info));
                    }
                    Err(TcpError::NotHandled(match reason {
                        0 => "the node is not ready",
                        1 => "the node is too busy",
                        2 => "the node is not the leader",
                        3 => "the node is read-only",
                        _ => "for an unknown reason",
                    }))
                }
                command::BAD_REQUEST => Err(TcpError::BadRequest(text(&frame.body))),
                other => Err(TcpError::Protocol(format!(
                    "command 0x{other:02X} in answer to {what}"
                ))),
            };
        }
    }

    /// Subscribes to `$all` (live only, links not resolved), unless a
    /// subscription is open. Its events are only news: a sign to read the
    /// next page. Not waited for; see [`Connection::wait_for_news`].
    pub(crate) async fn subscribe(&mut self) -> Result<(), TcpError> {
        if self.subscription.is_some() {
            return Ok(());
        }
        let correlation = Uuid::new_v4().to_bytes_le();
        let body = SubscribeToStream {
            event_stream_id: String::new(),
            resolve_link_tos: false,
        }
        .encode_to_vec();
        self.send(command::SUBSCRIBE_TO_STREAM, correlation, false, &body)
            .await?;
        self.subscription = Some(correlation);
        Ok(())
    }

    /// Waits until the subscription has news (it was confirmed, or an event
    /// appeared, also while a request was answered) or until `until`,
    /// answering heartbeats meanwhile.
    pub(crate) async fn wait_for_news(&mut self, until: Instant) -> Result<(), TcpError> {
        while !self.news {
            match self.receive(until).await? {
                Some(frame) => self.on_other(&frame),
                None => break,
            }
        }
        self.news = false;
        Ok(())
    }

    /// A frame that answers none of the requests waited for: the
    /// subscription's, or a late answer to an abandoned request (ignored).
    fn on_other(&mut self, frame: &Frame) {
        if Some(frame.correlation) != self.subscription {
            return;
        }
        match frame.command {
            command::SUBSCRIPTION_CONFIRMATION | command::STREAM_EVENT_APPEARED => {
                self.news = true;
            }
            // Dropped (access denied, unsubscribed), refused or not handled:
            // reading goes on by polling alone.
            _ => self.subscription = None,
        }
    }

    /// `RequireMaster`, for the requests' `require_master`.
    pub(crate) fn require_master(&self) -> bool {
        self.settings.require_master
    }

    /// The login of the credentials, for error texts.
    pub(crate) fn user(&self) -> Option<String> {
        self.settings.credentials.as_ref().map(|c| c.login.clone())
    }

    /// The next frame that is not a heartbeat, or `None` at `deadline`.
    /// Answers the node's heartbeats; after `heartbeat_interval` without a
    /// frame sends its own, and fails when nothing comes within
    /// `heartbeat_timeout` of that.
    async fn receive(&mut self, deadline: Instant) -> Result<Option<Frame>, TcpError> {
        loop {
            if let Some(frame) = self.parse()? {
                self.heard = Instant::now();
                self.asked = None;
                match frame.command {
                    command::HEARTBEAT_REQUEST => {
                        self.send(command::HEARTBEAT_RESPONSE, frame.correlation, false, &[])
                            .await?;
                        continue;
                    }
                    command::HEARTBEAT_RESPONSE => continue,
                    _ => return Ok(Some(frame)),
                }
            }
            let alarm = match self.asked {
                Some(asked) => asked + self.settings.heartbeat_timeout,
                None => self.heard + self.settings.heartbeat_interval,
            };
            let wake = alarm.min(deadline);
            tokio::select! {
                // `read_buf` is cancel-safe: a frame cut by the timer stays in
                // the buffer.
                read = self.read.read_buf(&mut self.buffer) => {
                    match read {
                        Ok(0) => return Err(TcpError::Closed),
                        Ok(_) => {}
                        Err(source) => return Err(TcpError::Io {
                            doing: "reading from",
                            address: self.address.clone(),
                            source,
                        }),
                    }
                }
                () = sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= alarm {
                        if self.asked.is_some() {
                            return Err(TcpError::Silent {
                                after: self.settings.heartbeat_interval
                                    + self.settings.heartbeat_timeout,
                            });
                        }
                        self.asked = Some(now);
                        let correlation = Uuid::new_v4().to_bytes_le();
                        self.send(command::HEARTBEAT_REQUEST, correlation, false, &[]).await?;
                    }
                    if now >= deadline {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Takes one whole frame off the buffer, if there is one.
    fn parse(&mut self) -> Result<Option<Frame>, TcpError> {
        if self.buffer.len() < 4 {
            return Ok(None);
        }
        let length = i32::from_le_bytes(self.buffer[..4].try_into().expect("4 bytes"));
        let length = usize::try_from(length)
            .map_err(|_| TcpError::Protocol(format!("a frame length of {length}")))?;
        if length > MAX_FRAME {
            return Err(TcpError::FrameTooLarge(length));
        }
        if length < MANDATORY {
            return Err(TcpError::Protocol(format!(
                "a frame of {length} bytes, shorter than its header"
            )));
        }
        if self.buffer.len() < 4 + length {
            self.buffer.reserve(4 + length - self.buffer.len());
            return Ok(None);
        }
        self.buffer.advance(4);
        let mut frame = self.buffer.split_to(length).freeze();
        let command = frame.get_u8();
        let flags = frame.get_u8();
        let mut correlation = [0; 16];
        frame.copy_to_slice(&mut correlation);
        if flags & FLAG_AUTHENTICATED != 0 {
            // Servers do not send credentials; skip them if one does.
            for _ in 0..2 {
                if !frame.has_remaining() {
                    return Err(TcpError::Protocol("a cut credentials header".into()));
                }
                let n = usize::from(frame.get_u8());
                if frame.remaining() < n {
                    return Err(TcpError::Protocol("a cut credentials header".into()));
                }
                frame.advance(n);
            }
        }
        Ok(Some(Frame {
            command,
            correlation,
            body: frame,
        }))
    }

    async fn send(
        &mut self,
        command: u8,
        correlation: [u8; 16],
        authenticate: bool,
        body: &[u8],
    ) -> Result<(), TcpError> {
        let credentials = self.settings.credentials.as_ref().filter(|_| authenticate);
        let auth_len = credentials.map_or(0, |c| 2 + c.login.len() + c.password.len());
        let length = MANDATORY + auth_len + body.len();
        let mut frame = BytesMut::with_capacity(4 + length);
        frame.put_i32_le(i32::try_from(length).expect("requests are small"));
        frame.put_u8(command);
        frame.put_u8(if credentials.is_some() {
            FLAG_AUTHENTICATED
        } else {
            0
        });
        frame.put_slice(&correlation);
        if let Some(c) = credentials {
            // At most 127 bytes each: checked when the settings were parsed.
            frame.put_u8(c.login.len() as u8);
            frame.put_slice(c.login.as_bytes());
            frame.put_u8(c.password.len() as u8);
            frame.put_slice(c.password.as_bytes());
        }
        frame.put_slice(body);
        self.write
            .write_all(&frame)
            .await
            .map_err(|source| TcpError::Io {
                doing: "writing to",
                address: self.address.clone(),
                source,
            })
    }
}

/// The TLS connector and the name the node's certificate must carry:
/// `ValidateServer=true` checks it against the platform's roots, `false`
/// accepts any certificate (v5's default).
fn tls_connector(
    tls: &Tls,
    node_host: &str,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), TcpError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if tls.validate {
        for cert in rustls_native_certs::load_native_certs().certs {
            // One the platform has but rustls cannot use is skipped.
            let _ = roots.add(cert);
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TcpError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !tls.validate {
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(NoVerification(provider)));
    }
    let host = tls.target_host.as_deref().unwrap_or(node_host);
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| TcpError::Tls(format!("`{host}` is not a host name for TLS")))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

/// The leader's endpoints a NotMaster answer names; `None` when it names no
/// usable TCP endpoint.
fn leader(info: &MasterInfo) -> Option<NodeEndpoints> {
    let endpoint = |host: &str, port: i32| {
        let port = u16::try_from(port).ok().filter(|p| *p > 0)?;
        (!host.is_empty()).then(|| Endpoint {
            host: host.to_owned(),
            port,
        })
    };
    Some(NodeEndpoints {
        tcp: endpoint(&info.external_tcp_address, info.external_tcp_port)?,
        secure_tcp: match (
            &info.external_secure_tcp_address,
            info.external_secure_tcp_port,
        ) {
            (Some(host), Some(port)) => endpoint(host, port),
            _ => None,
        },
    })
}

/// A server's UTF-8 text (BadRequest, NotAuthenticated), repaired if need be.
fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use replicator_core::secret::ConnectionString;
    use tokio::net::TcpListener;

    /// A node that accepts and then says nothing at all: the connection
    /// fails after the heartbeat interval plus timeout, as a transient error.
    #[tokio::test]
    async fn a_silent_node_is_a_transient_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut sink = Vec::new();
            // Reads (and so keeps the connection open) until we give up.
            let _ = socket.read_to_end(&mut sink).await;
        });
        let settings = TcpSettings::parse(&ConnectionString::from(format!(
            "ConnectTo=tcp://127.0.0.1:{port}; HeartbeatInterval=20; HeartbeatTimeout=30; \
             OperationTimeout=600000"
        )))
        .unwrap();
        let error = match Connection::open(&settings).await {
            Err(error) => error,
            Ok(_) => panic!("a silent node cannot identify us"),
        };
        assert!(matches!(error, TcpError::Silent { .. }), "{error}");
        assert_eq!(error.kind(), ErrorKind::Transient);
        silent.abort();
    }
}
