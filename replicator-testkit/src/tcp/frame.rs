//! Framing of the legacy TCP protocol (docs/tcp-protocol.md §1): a 4-byte
//! little-endian length, then command, flags, a 16-byte correlation id, optional
//! credentials and the protobuf body. The same layout both ways.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest frame (everything after the length prefix): the v5 framer's default.
pub(crate) const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Command, flags and correlation id.
const MANDATORY: usize = 18;
/// Flag: login and password follow the correlation id.
pub(crate) const FLAG_AUTHENTICATED: u8 = 0x01;
/// Flag: internal trusted write, refused on the external interface.
pub(crate) const FLAG_TRUSTED_WRITE: u8 = 0x02;

/// The command bytes this server reads or writes (ES5 `TcpCommand.cs`).
pub(crate) mod command {
    pub(crate) const HEARTBEAT_REQUEST: u8 = 0x01;
    pub(crate) const HEARTBEAT_RESPONSE: u8 = 0x02;
    pub(crate) const PING: u8 = 0x03;
    pub(crate) const PONG: u8 = 0x04;
    pub(crate) const WRITE_EVENTS: u8 = 0x82;
    pub(crate) const WRITE_EVENTS_COMPLETED: u8 = 0x83;
    pub(crate) const TRANSACTION_START: u8 = 0x84;
    pub(crate) const TRANSACTION_START_COMPLETED: u8 = 0x85;
    pub(crate) const TRANSACTION_WRITE: u8 = 0x86;
    pub(crate) const TRANSACTION_WRITE_COMPLETED: u8 = 0x87;
    pub(crate) const TRANSACTION_COMMIT: u8 = 0x88;
    pub(crate) const TRANSACTION_COMMIT_COMPLETED: u8 = 0x89;
    pub(crate) const DELETE_STREAM: u8 = 0x8A;
    pub(crate) const DELETE_STREAM_COMPLETED: u8 = 0x8B;
    pub(crate) const READ_EVENT: u8 = 0xB0;
    pub(crate) const READ_EVENT_COMPLETED: u8 = 0xB1;
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
    pub(crate) const UNSUBSCRIBE_FROM_STREAM: u8 = 0xC3;
    pub(crate) const SUBSCRIPTION_DROPPED: u8 = 0xC4;
    pub(crate) const BAD_REQUEST: u8 = 0xF0;
    pub(crate) const NOT_HANDLED: u8 = 0xF1;
    pub(crate) const AUTHENTICATE: u8 = 0xF2;
    pub(crate) const AUTHENTICATED: u8 = 0xF3;
    pub(crate) const NOT_AUTHENTICATED: u8 = 0xF4;
    pub(crate) const IDENTIFY_CLIENT: u8 = 0xF5;
    pub(crate) const CLIENT_IDENTIFIED: u8 = 0xF6;

    /// The v5 name of `command`, for error texts.
    pub(crate) fn name(command: u8) -> String {
        let name = match command {
            TRANSACTION_START => "TransactionStart",
            TRANSACTION_WRITE => "TransactionWrite",
            TRANSACTION_COMMIT => "TransactionCommit",
            WRITE_EVENTS => "WriteEvents",
            DELETE_STREAM => "DeleteStream",
            READ_EVENT => "ReadEvent",
            READ_STREAM_FORWARD => "ReadStreamEventsForward",
            READ_STREAM_BACKWARD => "ReadStreamEventsBackward",
            READ_ALL_FORWARD => "ReadAllEventsForward",
            READ_ALL_BACKWARD => "ReadAllEventsBackward",
            SUBSCRIBE_TO_STREAM => "SubscribeToStream",
            IDENTIFY_CLIENT => "IdentifyClient",
            other => return format!("0x{other:02X}"),
        };
        name.to_owned()
    }
}

/// One frame (a `TcpPackage` in the server's source).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) command: u8,
    pub(crate) flags: u8,
    /// Opaque: echoed unchanged in every answer.
    pub(crate) correlation: [u8; 16],
    /// Login and password, when flags has [`FLAG_AUTHENTICATED`].
    pub(crate) credentials: Option<(String, String)>,
    pub(crate) body: Bytes,
}

/// A frame the server cannot read: it answers BadRequest with a zero
/// correlation id and closes the connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The length prefix is out of bounds (the v5 framer's wording).
    #[error(
        "Invalid TCP frame received. Error: Package size is out of bounds: {0} (max: {MAX_FRAME})."
    )]
    Size(i64),
    /// The header cannot be parsed (the v5 wording, with our reason).
    #[error("Received bad network package. Error: {0}")]
    Header(&'static str),
    /// The connection failed or closed in the middle of a frame.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
}

impl Frame {
    /// An answer to `request`: same correlation id, no credentials.
    pub(crate) fn reply(request: &Frame, command: u8, body: impl Into<Bytes>) -> Frame {
        Frame::new(command, request.correlation, body)
    }

    pub(crate) fn new(command: u8, correlation: [u8; 16], body: impl Into<Bytes>) -> Frame {
        Frame {
            command,
            flags: 0,
            correlation,
            credentials: None,
            body: body.into(),
        }
    }

    /// The frame with its length prefix, ready to write.
    pub(crate) fn encode(&self) -> Bytes {
        let credentials = self
            .credentials
            .as_ref()
            .map_or(0, |(l, p)| 2 + l.len() + p.len());
        let len = MANDATORY + credentials + self.body.len();
        let mut out = BytesMut::with_capacity(4 + len);
        out.put_u32_le(u32::try_from(len).expect("frames stay under 4 GiB"));
        out.put_u8(self.command);
        let flags = if self.credentials.is_some() {
            self.flags | FLAG_AUTHENTICATED
        } else {
            self.flags
        };
        out.put_u8(flags);
        out.put_slice(&self.correlation);
        if let Some((login, password)) = &self.credentials {
            for part in [login, password] {
                out.put_u8(u8::try_from(part.len()).expect("credentials are at most 255 bytes"));
                out.put_slice(part.as_bytes());
            }
        }
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Parses the bytes after the length prefix.
    pub(crate) fn parse(mut data: Bytes) -> Result<Frame, FrameError> {
        if data.len() < MANDATORY {
            return Err(FrameError::Header("the package is shorter than its header"));
        }
        let command = data[0];
        let flags = data[1];
        let mut correlation = [0; 16];
        correlation.copy_from_slice(&data[2..MANDATORY]);
        let mut rest = data.split_off(MANDATORY);
        let credentials = if flags & FLAG_AUTHENTICATED != 0 {
            // Up to 255 bytes each, as v5 (docs/tcp-protocol.md §1.3); unlike v5,
            // an empty password followed by an empty body is accepted.
            let mut take = |what: &'static str| -> Result<String, FrameError> {
                let Some(&len) = rest.first() else {
                    return Err(FrameError::Header(what));
                };
                let len = usize::from(len);
                if rest.len() < 1 + len {
                    return Err(FrameError::Header(what));
                }
                let bytes = rest.slice(1..1 + len);
                rest = rest.split_off(1 + len);
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| FrameError::Header("credentials are not UTF-8"))
            };
            let login = take("Login length is too big, it doesn't fit into TcpPackage.")?;
            let password = take("Password length is too big, it doesn't fit into TcpPackage.")?;
            Some((login, password))
        } else {
            None
        };
        Ok(Frame {
            command,
            flags,
            correlation,
            credentials,
            body: rest,
        })
    }
}

/// Reads one frame; `Ok(None)` when the peer closed the connection between frames.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Frame>, FrameError> {
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let len = i32::from_le_bytes(prefix);
    let Ok(size) = usize::try_from(len) else {
        return Err(FrameError::Size(len.into()));
    };
    if size == 0 || size > MAX_FRAME {
        return Err(FrameError::Size(len.into()));
    }
    let mut data = vec![0; size];
    reader.read_exact(&mut data).await?;
    Frame::parse(Bytes::from(data)).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_and_without_credentials() {
        let mut frame = Frame::new(command::PING, [7; 16], Bytes::from_static(b"body"));
        assert_eq!(Frame::parse(frame.encode().slice(4..)).unwrap(), frame);
        frame.credentials = Some(("admin".to_owned(), "x".repeat(255)));
        frame.flags = FLAG_AUTHENTICATED;
        let encoded = frame.encode();
        assert_eq!(
            u32::from_le_bytes(encoded[..4].try_into().unwrap()) as usize,
            encoded.len() - 4
        );
        assert_eq!(Frame::parse(encoded.slice(4..)).unwrap(), frame);
    }

    #[test]
    fn empty_password_and_body_are_accepted() {
        let mut frame = Frame::new(command::AUTHENTICATE, [1; 16], Bytes::new());
        frame.flags = FLAG_AUTHENTICATED;
        frame.credentials = Some(("admin".to_owned(), String::new()));
        assert_eq!(Frame::parse(frame.encode().slice(4..)).unwrap(), frame);
    }

    #[test]
    fn short_headers_and_truncated_credentials_are_errors() {
        assert!(matches!(
            Frame::parse(Bytes::from_static(&[0x03; 17])),
            Err(FrameError::Header(_))
        ));
        let mut data = vec![command::PING, FLAG_AUTHENTICATED];
        data.extend([0; 16]);
        data.extend([5, b'a', b'b']);
        assert!(matches!(
            Frame::parse(Bytes::from(data)),
            Err(FrameError::Header(_))
        ));
    }

    #[tokio::test]
    async fn length_prefixes_out_of_bounds_are_refused() {
        for len in [0i32, -1, (MAX_FRAME + 1) as i32] {
            let bytes = len.to_le_bytes();
            let error = read_frame(&mut &bytes[..]).await.unwrap_err();
            assert!(matches!(error, FrameError::Size(n) if n == i64::from(len)));
        }
        let closed: &[u8] = &[];
        assert!(read_frame(&mut &closed[..]).await.unwrap().is_none());
    }
}
