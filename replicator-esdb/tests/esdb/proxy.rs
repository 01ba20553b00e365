//! A TCP proxy in front of a test server that can freeze: while frozen it
//! moves no byte either way but keeps every connection open and accepts new
//! ones, which is what a client sees of a SIGSTOP-ed server or a network
//! partition that drops packets without a reset. The in-process server runs
//! in the test's own process, so it cannot be SIGSTOP-ed itself.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

pub struct FreezingProxy {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl FreezingProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = watch::Sender::new(false);
        let task = tokio::spawn(accept(listener, upstream, frozen.subscribe()));
        FreezingProxy { addr, frozen, task }
    }

    /// In front of the in-process server of `cluster`.
    pub async fn in_front_of(cluster: &replicator_testkit::cluster::TestCluster) -> FreezingProxy {
        let port = cluster.server().port();
        Self::start(SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    /// The connection string of the server, through the proxy.
    pub fn connection_string(&self) -> String {
        format!(
            "esdb://127.0.0.1:{}?tls=false&discoveryInterval=0",
            self.addr.port()
        )
    }

    /// Stops moving bytes; connections stay open.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Moves bytes again, including those held while frozen.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        // The accept task owns the connections' tasks: aborting it ends them.
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, frozen: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let frozen = frozen.clone();
        connections.spawn(async move {
            let mut held = frozen.clone();
            // A frozen server's kernel still accepts: so does the proxy, but it
            // reaches the server only once thawed.
            if held.wait_for(|f| !*f).await.is_err() {
                return;
            }
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                pipe(client_read, server_write, frozen.clone()),
                pipe(server_read, client_write, frozen),
            );
        });
        // Reap finished connections.
        while connections.try_join_next().is_some() {}
    }
}

async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // Frozen meanwhile: stop reading (a read is cancel-safe).
            _ = frozen.wait_for(|f| *f) => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
