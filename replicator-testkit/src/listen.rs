//! Accepting connections, plain or TLS, for both protocols the server speaks
//! (gRPC and the legacy TCP protocol) and v5's HTTP gossip: one loop, each connection served by
//! its protocol's own function.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::shared::Shared;

/// A connection's byte stream: a TCP socket or TLS over one.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Accepts connections on `listener` until `stop` is cancelled, each served
/// by `serve` (with the connection's cancellation token from the fault
/// state, which `drop_connections` cancels), over TLS when the server has a
/// certificate. On stop, the connections get `drain` to end, then are
/// aborted. `protocol` names the service in logs; `secure: false` serves
/// plain whatever the server's TLS (v5's HTTP gossip).
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    protocol: &'static str,
    secure: bool,
    drain: Duration,
    serve: F,
) where
    F: Fn(Box<dyn Io>, CancellationToken) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let certificate = shared.options.tls.as_ref().filter(|_| secure);
    let tls = match certificate.map(|c| c.server_config()) {
        Some(Ok(config)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        Some(Err(error)) => {
            warn!(%error, protocol, "Unusable TLS certificate; not serving");
            return;
        }
        None => None,
    };
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    debug!(%peer, protocol, "Connection accepted");
                    // Latency of small replies matters more than packet count here.
                    let _ = tcp.set_nodelay(true);
                    let token = shared.faults.token();
                    match tls.clone() {
                        None => {
                            connections.spawn(serve(Box::new(tcp), token));
                        }
                        Some(acceptor) => {
                            let serve = serve.clone();
                            connections.spawn(async move {
                                match acceptor.accept(tcp).await {
                                    Ok(stream) => serve(Box::new(stream), token).await,
                                    Err(error) => debug!(%peer, %error, "TLS handshake failed"),
                                }
                            });
                        }
                    }
                }
                Err(error) => {
                    warn!(%error, protocol, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(drain, drained).await.is_err() {
        connections.abort_all();
    }
}
