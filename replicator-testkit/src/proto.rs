//! Code generated from `proto/` by `build.rs`; module nesting mirrors the protobuf
//! packages because the generated code refers to other packages by relative path.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod event_store {
    pub mod client {
        tonic::include_proto!("event_store.client");

        pub mod streams {
            tonic::include_proto!("event_store.client.streams");
        }
        pub mod persistent_subscriptions {
            tonic::include_proto!("event_store.client.persistent_subscriptions");
        }
        pub mod server_features {
            tonic::include_proto!("event_store.client.server_features");
        }
        pub mod gossip {
            tonic::include_proto!("event_store.client.gossip");
        }
        pub mod projections {
            tonic::include_proto!("event_store.client.projections");
        }
        /// The legacy TCP protocol's messages (`proto/tcp.proto`, proto2).
        pub mod messages {
            tonic::include_proto!("event_store.client.messages");
        }
    }
}

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub use event_store::client as shared;
/// The legacy TCP protocol's messages, as the TCP service (`ServerOptions::tcp_port`) speaks them.
pub use event_store::client::messages as tcp;
pub use event_store::client::{
    gossip, persistent_subscriptions, projections, server_features, streams,
};
