//! Access to a cluster, in one place: what every part of the crate (and the
//! CLI) needs to talk to EventStoreDB over gRPC.
//!
//! - [`client`] and [`settings`]: a connection string to a [`GrpcClient`]
//!   (the crate's own; the `eventstore` crate parses the connection string
//!   and names the errors), with a [`ConnectError`] that never shows the
//!   password.
//! - [`head`]: the position of the last record in `$all`.
//! - [`ClientPosition`]: our [`Position`](replicator_core::Position) to and
//!   from the client's.
//! - [`ClusterRead`]: stream and `$all` reads whatever the protocol (the
//!   gRPC client, or [`TcpSource`](crate::tcp::TcpSource) for a v5 source),
//!   which `verify`, `map-position` and the scavenge filter read through;
//!   [`SourceClient`] is either.
//! - `within`: the deadline of one request, with a neutral [`TimedOut`]
//!   error that each caller turns into its own.
//!
//! What to do about an error (retry, rebuild the client, how to show it)
//! stays in the crate's `connection` module, beside the client cell.

mod connect;
mod deadline;
mod head;
mod position;
mod reads;

pub use crate::wire::client::GrpcClient;
pub use crate::wire::token::{BearerToken, TokenError};
pub use connect::{client, client_from, settings, ConnectError};
pub(crate) use deadline::within;
pub use deadline::TimedOut;
pub use head::head;
pub use position::ClientPosition;
pub(crate) use reads::{next, next_within};
pub use reads::{
    AllFrom, ClusterRead, Direction, ReadError, Record, Records, SourceClient, StreamFrom,
};

/// The two clusters, as errors and reports name them.
pub(crate) const SOURCE: &str = "source";
/// See [`SOURCE`].
pub(crate) const TARGET: &str = "target";
