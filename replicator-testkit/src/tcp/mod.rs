//! The legacy TCP protocol of EventStoreDB v5 (the protocol of the .NET
//! `EventStore.ClientAPI`, `node-eventstore-client` and `eventstore` ≤ 0.8), served
//! on a port of its own ([`crate::ServerOptions::tcp_port`]) over the same store as
//! the gRPC services: an event written through one is read through the other.
//! TLS when the server has a certificate ([`crate::ServerOptions::tls`]), as v20+
//! nodes serve external TCP; plain otherwise, as v5's default port.
//!
//! The protocol facts, with their sources, are in `docs/tcp-protocol.md`. What this
//! service answers:
//!
//! - **Connection**: HeartbeatRequest → HeartbeatResponse (same correlation id);
//!   after `tcp_heartbeat_interval` (default 2 s, v5's) without a frame the server
//!   sends its own HeartbeatRequest and closes the connection when nothing arrives
//!   within `tcp_heartbeat_timeout` (default 1 s). Ping → Pong (same body).
//!   IdentifyClient → ClientIdentified. Authenticate → Authenticated, or
//!   NotAuthenticated `Unauthorized` (then every later frame without credentials
//!   gets NotAuthenticated `Not Authenticated`, as v5), or `No user credentials
//!   provided.`. Credentials in a frame's header override the connection's for that
//!   frame. Users and access rules are those of [`crate::security`]; without users
//!   everything is allowed.
//! - **Errors**: a length prefix ≤ 0 or over 64 MiB, or a header that cannot be
//!   parsed → BadRequest with a zero correlation id, then the connection closes; the
//!   TrustedWrite flag → BadRequest and close; a body that cannot be decoded or an
//!   unknown command → BadRequest `Could not unwrap network package for command …`,
//!   and the connection stays open. Missing `required` fields decode as their
//!   defaults (proto3 clients leave them out).
//! - **Writes**: WriteEvents → WriteEventsCompleted (Success with first/last event
//!   numbers and prepare = commit = the last event's position; WrongExpectedVersion
//!   with `current_version`; StreamDeleted; AccessDenied). DeleteStream (soft, or
//!   `hard_delete`) → DeleteStreamCompleted with the same results.
//! - **Transactions** (v5's explicit ones): TransactionStart → the id (the position
//!   of its TransactionBegin record), or AccessDenied; TransactionWrite → Success,
//!   the events taking log positions but staying invisible; TransactionCommit →
//!   Success with first/last event numbers and prepare = commit = the commit
//!   record's position, WrongExpectedVersion (checked at the commit), StreamDeleted.
//!   An id that is not a pending transaction → InvalidTransaction.
//! - **Reads**: ReadEvent (-1: the last event), ReadStreamEventsForward/Backward and
//!   ReadAllEventsForward/Backward, paged as v5 pages them (at most 4096 per page).
//!   An ordinary write's events are "commit-alike" (commit = prepare = their log
//!   position); a transaction's carry its commit position and their own, and
//!   pages resume inside a transaction as v5's do.
//! - **Subscriptions**: SubscribeToStream (a stream, or `""` for `$all`) →
//!   SubscriptionConfirmation, then StreamEventAppeared for every later event;
//!   UnsubscribeFromStream → SubscriptionDropped(Unsubscribed); refused access →
//!   SubscriptionDropped(AccessDenied).
//!
//! - **Followers**: with [`crate::EsdbServer::set_role`] `Role::Follower`, requests
//!   with `require_master` get NotHandled NotMaster naming the leader (NotReady for
//!   reads while no leader is known), as v5's `ClusterVNodeController` answers.
//!
//! The fault injection of [`crate::FaultHandle`] applies to TCP only through
//! `drop_connections` (and stopping the server); `append_latency` and
//! `read_latency` apply.

use std::sync::Arc;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::listen::{self, Io};
use crate::shared::Shared;

mod connection;
mod frame;
mod ops;

/// Accepts TCP-protocol connections until `stop` is cancelled.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let serving = Arc::clone(&shared);
    let serve = move |io: Box<dyn Io>, token| connection::serve(io, Arc::clone(&serving), token);
    listen::accept_loop(
        listener,
        shared,
        stop,
        "TCP",
        true,
        Duration::from_secs(2),
        serve,
    )
    .await;
}
