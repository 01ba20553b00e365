//! Integration tests of the EventStoreDB reader and sink against the
//! in-process test server, through the real `eventstore` client.

mod bearer;
mod checkpoint_stream;
mod common;
mod connections;
mod exactly_once;
mod fidelity;
mod health;
mod outages;
mod proxy;
mod reader;
mod replay;
mod scavenge;
mod tcp_cluster;
mod tcp_reader;
mod tcp_source;
mod verify;
mod workload_and_verify;
