//! Test kit for the replicator: an in-process EventStoreDB-protocol gRPC server that
//! the real `eventstore` client talks to ([`EsdbServer`]; Streams, persistent
//! subscriptions as `docs/persistent-subscriptions.md` describes them), fault injection
//! ([`FaultHandle`]), a seeded workload generator ([`workload`]), and
//! [`cluster::TestCluster`], which lets every test run against a real cluster instead
//! when an environment variable names one, and what the workspace's tests share
//! besides ([`support`]: bounded waits, clients, the end of `$all`, and with the
//! `mongo` feature a MongoDB-protocol server of a test's own). To compare what two servers hold, use
//! `replicator_esdb::verify` (the testkit depends on `replicator-core` only).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use replicator_testkit::{workload, EsdbServer};
//!
//! let server = EsdbServer::start().await?;
//! let client = eventstore::Client::new(server.connection_string().parse()?)?;
//! let summary = workload::generate(&client, &workload::WorkloadSpec::new(7, 1_000)).await?;
//! println!("{} events in {} streams", summary.events_written, summary.streams);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod clock;
pub mod cluster;
mod error;
mod faults;
mod gossip;
mod listen;
#[allow(missing_docs)]
pub mod proto;
pub mod security;
mod server;
mod service;
mod shared;
mod sniff;
mod store;
pub mod support;
mod tcp;
pub mod workload;

pub use error::TestkitError;
pub use faults::FaultHandle;
pub use gossip::{GossipMember, NodeState, Role};
pub use server::{EsdbServer, PreloadEvent};
pub use shared::ServerOptions;
