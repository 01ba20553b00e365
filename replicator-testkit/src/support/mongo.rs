//! Servers speaking the MongoDB wire protocol, for the checkpoint store's
//! tests and the CLI's (the `mongo` feature).
//!
//! Most tests share the server at `MONGODB_URL` (started by
//! `scripts/start-mongo`); tests that restart, freeze or secure a server
//! start a `secantusd-py` of their own ([`SecantusServer`]), found through
//! `SECANTUSD_BIN` or on `PATH`. When neither is there the tests fail with a
//! message saying how to get one: they never skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mongodb::bson::doc;

use super::{free_port, listens_on};

const HOW_TO_START: &str = "run `eval \"$(scripts/start-mongo)\"` from the repository root \
                            (it installs and starts secantusdb and exports MONGODB_URL and \
                            SECANTUSD_BIN), or set MONGODB_URL to a MongoDB server";

/// The shared test server, `MONGODB_URL`.
///
/// # Panics
/// When `MONGODB_URL` is not set, saying how to start one.
pub fn mongo_url() -> String {
    match std::env::var("MONGODB_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!("MONGODB_URL is not set, so the MongoDB tests have no server: {HOW_TO_START}"),
    }
}

/// A name no other test or run uses, usable as a database name.
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("rt_{prefix}_{}_{nanos}", std::process::id())
}

/// `SECANTUSD_BIN`, else `secantusd-py` on `PATH`.
fn secantusd_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SECANTUSD_BIN").filter(|bin| !bin.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "SECANTUSD_BIN={} is not a file: {HOW_TO_START}",
            bin.display()
        );
        return bin;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("secantusd-py"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test starts a server of its own, but secantusd-py is \
                 neither in SECANTUSD_BIN nor on PATH: {HOW_TO_START}"
            )
        })
}

/// Where a server keeps its data and log, kept across restarts.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    fn log(&self) -> PathBuf {
        self.dir.path().join("secantusd.log")
    }
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// A running `secantusd-py` of the test's own, on a port no other server of
/// the process was given ([`free_port`]), with storage of its own; killed
/// when dropped.
pub struct SecantusServer {
    child: Child,
    port: u16,
    auth: bool,
    home: Arc<Home>,
}

/// A server that was stopped, with its port and data kept for a restart.
pub struct StoppedServer {
    port: u16,
    auth: bool,
    home: Arc<Home>,
}

impl SecantusServer {
    /// Starts a new server with empty storage; returns once the server
    /// process itself listens on its port.
    ///
    /// # Panics
    /// When there is no `secantusd-py`, or it exits or does not listen
    /// within 60 s (with the end of its log).
    pub async fn start() -> SecantusServer {
        let home = Arc::new(Home {
            dir: tempfile::tempdir().expect("a temporary directory"),
        });
        spawn(free_port(), false, home).await
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its connection string, without credentials.
    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    /// Creates a user who may read and write the `replicator` database.
    ///
    /// # Panics
    /// When the server refuses.
    pub async fn create_user(&self, name: &str, password: &str) {
        self.create_user_with_role(name, password, "readWrite")
            .await;
    }

    /// Creates a user with `role` (`read`, `readWrite`…) on the `replicator`
    /// database.
    ///
    /// # Panics
    /// When the server refuses.
    pub async fn create_user_with_role(&self, name: &str, password: &str, role: &str) {
        let client = mongodb::Client::with_uri_str(self.url())
            .await
            .expect("a MongoDB client");
        client
            .database("admin")
            .run_command(doc! {
                "createUser": name,
                "pwd": password,
                "roles": [{ "role": role, "db": "replicator" }],
            })
            .await
            .expect("createUser");
    }

    /// Freezes the server (SIGSTOP): its port stays open and the kernel keeps
    /// accepting connections, but nothing answers, as with a hung host or a
    /// partition that drops packets without a reset.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "cannot send {signal} to secantusd-py {pid}"
        );
    }

    /// Restarts the server requiring authentication.
    pub async fn restart_with_auth(self) -> SecantusServer {
        let mut stopped = self.stop().await;
        stopped.auth = true;
        stopped.restart().await
    }

    /// Stops the server gracefully (SIGTERM), as an operator or orchestrator
    /// would.
    ///
    /// # Panics
    /// When it has not exited 30 s after the signal.
    pub async fn stop(mut self) -> StoppedServer {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .child
            .try_wait()
            .expect("wait for secantusd-py")
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "secantusd-py did not stop within 30 s of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        StoppedServer {
            port: self.port,
            auth: self.auth,
            home: Arc::clone(&self.home),
        }
    }
}

impl StoppedServer {
    /// Starts the server again on the same port with the same storage.
    pub async fn restart(self) -> SecantusServer {
        spawn(self.port, self.auth, self.home).await
    }
}

impl Drop for SecantusServer {
    fn drop(&mut self) {
        // Only the process this test started; it may have exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn(port: u16, auth: bool, home: Arc<Home>) -> SecantusServer {
    let bin = secantusd_bin();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.log())
        .expect("open the server's log");
    let mut command = Command::new(&bin);
    command
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--storage-path",
        ])
        .arg(home.storage())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the server's log"))
        .stderr(log);
    if auth {
        command.arg("--auth");
    }
    let child = command
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", bin.display()));
    let mut server = SecantusServer {
        child,
        port,
        auth,
        home,
    };
    wait_until_listening(&mut server, &bin).await;
    server
}

/// Until the server process itself holds the listening socket: a
/// connection succeeding proves only that someone listens on the port.
async fn wait_until_listening(server: &mut SecantusServer, bin: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", server.port)).is_ok()
            && listens_on(server.child.id(), server.port)
        {
            return;
        }
        if let Some(status) = server.child.try_wait().expect("wait for secantusd-py") {
            panic!(
                "{} exited ({status}) before listening on port {}:\n{}",
                bin.display(),
                server.port,
                server.home.log_tail()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} did not listen on port {} within 60 s:\n{}",
            bin.display(),
            server.port,
            server.home.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
