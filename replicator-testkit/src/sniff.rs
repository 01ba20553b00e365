//! Which HTTP a connection speaks, from its first bytes: gRPC clients open
//! HTTP/2 with the connection preface (`PRI * HTTP/2.0…`, prior knowledge on
//! plain connections, and after ALPN `h2` on TLS ones); anything else is
//! HTTP/1.1 (the HTTP API, as curl or a browser calls it). The bytes read to
//! tell are handed back in front of the rest.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

/// The start of the HTTP/2 connection preface.
const PREFACE: &[u8] = b"PRI ";

/// A connection with bytes already read from it put back in front.
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

/// Reads enough of `io` to tell HTTP/2 (true) from HTTP/1.1.
///
/// # Errors
/// When the first read fails.
pub(crate) async fn sniff<S: AsyncRead + Unpin>(mut io: S) -> std::io::Result<(bool, Prefixed<S>)> {
    let mut prefix = Vec::with_capacity(PREFACE.len());
    let mut byte = [0u8; 1];
    // A byte at a time: at most four reads, once per connection.
    while prefix.len() < PREFACE.len() && PREFACE.starts_with(&prefix) {
        if io.read(&mut byte).await? == 0 {
            break;
        }
        prefix.push(byte[0]);
    }
    let http2 = prefix == PREFACE;
    Ok((
        http2,
        Prefixed {
            prefix,
            offset: 0,
            inner: io,
        },
    ))
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.offset < self.prefix.len() {
            let n = (self.prefix.len() - self.offset).min(buf.remaining());
            let start = self.offset;
            buf.put_slice(&self.prefix[start..start + n]);
            self.offset += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_preface_means_http2_and_every_byte_is_kept() {
        let (http2, mut io) = sniff(&b"PRI * HTTP/2.0\r\n"[..]).await.unwrap();
        assert!(http2);
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "PRI * HTTP/2.0\r\n");
        let (http2, mut io) = sniff(&b"POST /projections/x"[..]).await.unwrap();
        assert!(!http2);
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "POST /projections/x");
    }
}
