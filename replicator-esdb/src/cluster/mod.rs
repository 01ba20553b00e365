//! Access to a cluster, in one place: what every part of the crate (and the
//! CLI) needs to talk to EventStoreDB through the `eventstore` client.
//!
//! - [`client`] and [`settings`]: a connection string to a client, with a
//!   [`ConnectError`] that never shows the password.
//! - [`head`]: the position of the last record in `$all`.
//! - [`ClientPosition`]: our [`Position`](replicator_core::Position) to and
//!   from the client's.
//! - `within`: the deadline of one request, with a neutral [`TimedOut`]
//!   error that each caller turns into its own.
//!
//! What to do about an error (retry, rebuild the client, how to show it)
//! stays in the crate's `connection` module, beside the client cell.

mod connect;
mod deadline;
mod head;
mod position;

pub use connect::{client, settings, ConnectError};
pub use deadline::TimedOut;
pub(crate) use deadline::{within, RequestError};
pub use head::head;
pub use position::ClientPosition;

/// The two clusters, as errors and reports name them.
pub(crate) const SOURCE: &str = "source";
/// See [`SOURCE`].
pub(crate) const TARGET: &str = "target";
