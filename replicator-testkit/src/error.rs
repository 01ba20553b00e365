//! Errors of the workload generator, the comparison and the test cluster set-up.

/// What can go wrong while generating a workload, comparing servers or setting up a
/// [`crate::cluster::TestCluster`].
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// The workload specification cannot be generated.
    #[error("invalid workload spec: {0}")]
    InvalidSpec(String),
    /// The `eventstore` client failed during `operation`.
    #[error("{operation} failed")]
    Client {
        /// What was being done, with the stream when there is one.
        operation: String,
        /// The client's error.
        #[source]
        source: eventstore::Error,
    },
    /// An environment variable meant to name a test cluster does not hold a usable
    /// connection string.
    #[error("{var} does not hold a usable EventStoreDB connection string: {reason}")]
    BadClusterUrl {
        /// The variable.
        var: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// Test certificates could not be made or written.
    #[error("{0}")]
    Security(String),
    /// The in-process test server could not start.
    #[error("the in-process test server did not start")]
    ServerStart(#[source] std::io::Error),
    /// A test that compares whole clusters found user data in one.
    #[error(
        "the cluster in {var} already holds user data (stream {stream:?}); this test compares \
         whole clusters and needs an empty, throwaway one (for example a server restarted \
         with EVENTSTORE_MEM_DB=true)"
    )]
    ClusterNotEmpty {
        /// The variable naming the cluster.
        var: String,
        /// The first user stream found.
        stream: String,
    },
}

impl TestkitError {
    pub(crate) fn client(operation: impl Into<String>) -> impl FnOnce(eventstore::Error) -> Self {
        let operation = operation.into();
        move |source| TestkitError::Client { operation, source }
    }
}
