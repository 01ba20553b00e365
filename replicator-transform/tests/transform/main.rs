//! The transforms and partitioners of replicator-transform, one integration
//! binary: `cargo test -p replicator-transform --test transform`.

mod support;

mod http;
mod js;
