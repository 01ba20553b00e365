//! The real `eventstore` client against the in-process server, over real gRPC.
//!
//! With `ESDB_URL` set to a connection string, the same tests and assertions run
//! against that (real) cluster instead: that checks the in-process server behaves
//! like the real one on everything asserted here. Run them one at a time
//! (`-- --test-threads=1`) and leave out `faults_and_connections` and
//! `wire_errors`, which need the in-process server (`security` always starts
//! secure in-process servers of its own, `memory` `esdb-testkit` processes of its
//! own, `preload` and `persistent` in-process servers of their own); see `replicator_testkit::cluster`
//! and the README.

mod common;
mod errors_and_deletes;
mod faults_and_connections;
#[cfg(target_os = "linux")]
mod memory;
mod persistent;
mod preload;
mod reads_and_writes;
mod security;
mod subscriptions;
mod tcp;
mod wire_errors;
mod workload;
