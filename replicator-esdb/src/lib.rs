//! EventStoreDB / KurrentDB reader and sink for replicator.
#![warn(missing_docs)]
