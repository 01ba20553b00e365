//! Errors of the workload generator and the comparison.

/// What can go wrong while generating a workload or comparing servers.
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
}

impl TestkitError {
    pub(crate) fn client(operation: impl Into<String>) -> impl FnOnce(eventstore::Error) -> Self {
        let operation = operation.into();
        move |source| TestkitError::Client { operation, source }
    }
}
