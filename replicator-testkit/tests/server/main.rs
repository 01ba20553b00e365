//! The real `eventstore` client against the in-process server, over real gRPC.

mod common;
mod errors_and_deletes;
mod faults_and_connections;
mod reads_and_writes;
mod subscriptions;
mod workload_and_compare;
