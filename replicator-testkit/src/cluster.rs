//! [`TestCluster`]: the cluster a test runs against, either a fresh in-process
//! [`EsdbServer`] (the default) or a real EventStoreDB/KurrentDB cluster named by an
//! environment variable.
//!
//! Every test that talks to a server gets it with one call,
//! `TestCluster::from_env("ESDB_URL")` instead of `EsdbServer::start()`. With the
//! variable unset, nothing changes: the test starts its own in-process server. With it
//! set to a connection string, the same test and the same assertions run against that
//! cluster. Pointing the testkit's own server tests at a real server is how we check
//! that the in-process server behaves like the real one on everything the tests
//! assert; pointing the replication tests at real clusters checks the replicator
//! end to end.
//!
//! # Variables, and the tests that read them
//! - `ESDB_URL`: the testkit's server tests (`cargo test -p replicator-testkit --test
//!   server`), all but `faults_and_connections`, which needs the in-process server.
//! - `ESDB_SOURCE_URL` and `ESDB_TARGET_URL`: the source and the target cluster of
//!   the CLI's `replicator run` tests (`cargo test -p replicator-cli --test cli`: the
//!   full run, SIGTERM and `live::` tests; `demo::` is in-process by design,
//!   and the SIGKILL tests hold writes at the in-process target's write gate,
//!   so they need `ESDB_TARGET_URL` unset). Either may be set alone; the
//!   other side stays in-process.
//!
//! The value is a connection string as the `eventstore` client takes it, with TLS
//! settings and credentials in it, for example
//! `esdb://admin:changeit@localhost:2113?tls=false`. A variable that is set but empty
//! or unparsable is an error naming it, never a silent fallback to the in-process
//! server.
//!
//! # Requirements on a real cluster
//! - **Throwaway**: the tests write, delete and tombstone streams. Never point them at
//!   a cluster whose data matters.
//! - **Empty, for replication tests**: they copy the source's whole `$all` and compare
//!   every user stream of both clusters, so both must hold no user data when the test
//!   starts ([`TestCluster::check_empty`] fails the test otherwise), and each such test
//!   needs fresh clusters. A server with an in-memory database
//!   (`EVENTSTORE_MEM_DB=true`) is empty again after each restart. The testkit's own
//!   server tests instead name their streams with a prefix unique to the run (and
//!   compare workloads by that prefix), so they can run again and again against one
//!   persistent cluster.
//! - **Quiet**: no other writers, no projections (`EVENTSTORE_RUN_PROJECTIONS=None`),
//!   and one test at a time (`-- --test-threads=1`), because tests assert on what
//!   `$all` holds after their own writes.
//! - **The default maximum append size** (1 MiB): the testkit enforces it as the
//!   real server does, the tests assert it, and the workload's large events stay
//!   just under it.
//!
//! Tests that stop, restart or inject faults into their server can only run
//! in-process: [`TestCluster::server`] and the accessors built on it fail such a test
//! with a message naming the variable to unset. They fail; they are not skipped.
//!
//! ```no_run
//! # async fn demo() -> Result<(), replicator_testkit::TestkitError> {
//! use replicator_testkit::cluster::TestCluster;
//!
//! let cluster = TestCluster::from_env("ESDB_URL").await?;
//! let client = cluster.client();
//! let stream = format!("orders-{}", uuid::Uuid::new_v4().simple());
//! client
//!     .append_to_stream(stream, &Default::default(), eventstore::EventData::binary("E", "x".into()))
//!     .await
//!     .expect("append");
//! # Ok(()) }
//! ```

use eventstore::{Client, ClientSettings, ReadAllOptions};

use crate::{EsdbServer, FaultHandle, ServerOptions, TestkitError};

/// The cluster a test runs against: a fresh in-process [`EsdbServer`], or a real
/// cluster whose connection string an environment variable holds.
pub struct TestCluster {
    /// The variable that could have named an external cluster (named in messages).
    var: String,
    connection_string: String,
    client: Client,
    /// `None` for an external cluster.
    server: Option<EsdbServer>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection string is left out: it may carry a password.
        let mut debug = f.debug_struct("TestCluster");
        debug.field("var", &self.var);
        match &self.server {
            Some(server) => debug.field("in_process_port", &server.port()),
            None => debug.field("external", &true),
        };
        debug.finish_non_exhaustive()
    }
}

impl TestCluster {
    /// The cluster whose connection string the environment variable `var` holds, or,
    /// when `var` is unset, a fresh in-process server.
    ///
    /// Must be called inside a Tokio runtime (the in-process server and the client
    /// run on it).
    ///
    /// # Errors
    /// [`TestkitError::BadClusterUrl`] when `var` is set but empty, not Unicode, or not
    /// a connection string the client accepts; [`TestkitError::ServerStart`] when the
    /// in-process server cannot open its socket.
    pub async fn from_env(var: &str) -> Result<TestCluster, TestkitError> {
        Self::from_env_with(var, ServerOptions::default()).await
    }

    /// Like [`TestCluster::from_env`], starting the in-process server (when
    /// `var` is unset) with `options`, e.g. a simulated append latency. A real
    /// cluster is used as it is.
    ///
    /// # Errors
    /// As [`TestCluster::from_env`].
    pub async fn from_env_with(
        var: &str,
        options: ServerOptions,
    ) -> Result<TestCluster, TestkitError> {
        let bad = |reason: String| TestkitError::BadClusterUrl {
            var: var.to_owned(),
            reason,
        };
        let (connection_string, server) = match std::env::var(var) {
            Err(std::env::VarError::NotPresent) => {
                let server = EsdbServer::start_with(options)
                    .await
                    .map_err(TestkitError::ServerStart)?;
                (server.connection_string(), Some(server))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(bad("the value is not valid Unicode".to_owned()))
            }
            Ok(value) if value.trim().is_empty() => {
                return Err(bad(
                    "it is set but empty (unset it to use an in-process server)".to_owned(),
                ))
            }
            Ok(value) => (value.trim().to_owned(), None),
        };
        let settings: ClientSettings =
            connection_string.parse().map_err(|e| bad(format!("{e}")))?;
        let client = Client::new(settings).map_err(|e| bad(format!("{e}")))?;
        Ok(TestCluster {
            var: var.to_owned(),
            connection_string,
            client,
            server,
        })
    }

    /// [`TestCluster::from_env_with`], then [`TestCluster::check_empty`]: for
    /// tests that copy or compare a whole cluster.
    ///
    /// # Errors
    /// As those two.
    pub async fn empty_from_env_with(
        var: &str,
        options: ServerOptions,
    ) -> Result<TestCluster, TestkitError> {
        let cluster = Self::from_env_with(var, options).await?;
        cluster.check_empty().await?;
        Ok(cluster)
    }

    /// Whether this is a real cluster named by the environment variable.
    pub fn is_external(&self) -> bool {
        self.server.is_none()
    }

    /// The environment variable this cluster was looked up with.
    pub fn env_var(&self) -> &str {
        &self.var
    }

    /// The connection string, for `ClientSettings` or a replicator's configuration.
    pub fn connection_string(&self) -> String {
        self.connection_string.clone()
    }

    /// A client connected to the cluster (a clone of one shared client).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The in-process server, for stopping, restarting and fault injection.
    ///
    /// # Panics
    /// On an external cluster: a test that needs this cannot run against one, and
    /// fails saying so rather than skipping.
    #[track_caller]
    pub fn server(&self) -> &EsdbServer {
        match &self.server {
            Some(server) => server,
            None => panic!("{}", in_process_only_message(&self.var)),
        }
    }

    /// The in-process server's fault injection handle.
    ///
    /// # Panics
    /// On an external cluster, as [`TestCluster::server`].
    #[track_caller]
    pub fn faults(&self) -> FaultHandle {
        self.server().faults()
    }

    /// Stops the in-process server, keeping its data; see [`EsdbServer::stop`].
    ///
    /// # Panics
    /// On an external cluster, as [`TestCluster::server`].
    pub async fn stop(&self) {
        self.server().stop().await;
    }

    /// Restarts the in-process server on the same port; see [`EsdbServer::restart`].
    ///
    /// # Errors
    /// When the port cannot be bound again.
    ///
    /// # Panics
    /// On an external cluster, as [`TestCluster::server`].
    pub async fn restart(&self) -> std::io::Result<()> {
        self.server().restart().await
    }

    /// Checks that the cluster holds no user data: no event in a stream whose name
    /// does not start with `$`, and no metadata (`$$stream`) of such a stream. Tests
    /// that compare whole clusters call it first, so that leftovers of an earlier run
    /// fail them with a clear message instead of as differences.
    ///
    /// # Errors
    /// [`TestkitError::ClusterNotEmpty`] naming the first user stream found;
    /// [`TestkitError::Client`] when `$all` cannot be read (on a real cluster, the
    /// connection string needs credentials of a user allowed to read `$all`).
    pub async fn check_empty(&self) -> Result<(), TestkitError> {
        let reading =
            || TestkitError::client(format!("reading $all of the cluster in {}", self.var));
        let mut reader = self
            .client
            .read_all(&ReadAllOptions::default().max_count(usize::MAX))
            .await
            .map_err(reading())?;
        while let Some(event) = reader.next().await.map_err(reading())? {
            let stream = &event.get_original_event().stream_id;
            let user = stream.strip_prefix("$$").unwrap_or(stream);
            if !user.starts_with('$') {
                return Err(TestkitError::ClusterNotEmpty {
                    var: self.var.clone(),
                    stream: stream.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Fails the calling test when `var` names an external cluster: for tests of the
/// in-process server's own features (fault injection, options, its binary) that have
/// no counterpart on a real cluster.
///
/// # Panics
/// When `var` is set, with a message saying which variable to unset.
#[track_caller]
pub fn require_in_process(var: &str) {
    if std::env::var_os(var).is_some() {
        panic!("{}", in_process_only_message(var));
    }
}

fn in_process_only_message(var: &str) -> String {
    format!(
        "this test needs the in-process server (it stops, restarts or injects faults into \
         it, or tests one of its own features), but {var} names an external cluster: unset \
         {var} to run this test, or leave it out with --skip"
    )
}
