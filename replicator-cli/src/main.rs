//! The `replicator` binary.
mod config;

fn main() {}
