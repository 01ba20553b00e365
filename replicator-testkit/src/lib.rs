//! In-process EventStoreDB-protocol server, workload generator and conformance suites.
#![warn(missing_docs)]
