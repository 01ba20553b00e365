//! Client (re)building and error classification shared by the
//! reader and the sink (connection strings, deadlines and the head of `$all`
//! are in [`crate::cluster`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventstore::ClientSettings;

use crate::wire::channel::WireChannel;
use crate::wire::client::GrpcClient as Client;
use crate::wire::token::BearerToken;
use replicator_core::ErrorKind;

pub(crate) use crate::wire::channel::is_refused_token;

/// Whether retrying an operation that failed with `error` can succeed.
///
/// Transient: the server unreachable, restarting, not the leader, a timeout,
/// a closed connection. Permanent: access denied or bad credentials, a request
/// the server rejects as malformed, a feature it lacks.
pub(crate) fn error_kind(error: &eventstore::Error) -> ErrorKind {
    use eventstore::Error as E;
    match error {
        // A bearer token refused once it was in use has expired: a renewed
        // one is read from its file at the next call (start-up checks make
        // a token refused from the start permanent).
        error if is_refused_token(error) => ErrorKind::Transient,
        E::ServerError(_)
        | E::NotLeaderException(_)
        | E::ConnectionClosed
        | E::GrpcConnectionError(_)
        | E::DeadlineExceeded
        | E::InternalClientError
        | E::IllegalStateError(_) => ErrorKind::Transient,
        E::Grpc { code, .. } if is_transient_code((*code).into()) => ErrorKind::Transient,
        E::AccessDenied
        | E::Grpc { .. }
        | E::InternalParsingError(_)
        | E::ResourceAlreadyExists
        | E::ResourceNotFound
        | E::ResourceDeleted
        | E::UnsupportedFeature
        | E::InitializationError(_)
        | E::WrongExpectedVersion { .. } => ErrorKind::Permanent,
        // The enum is not exhaustive across client versions: an error we do
        // not know is more likely a passing condition than a misconfiguration,
        // and a lasting one is reported unhealthy and logged while retried.
        #[allow(unreachable_patterns)]
        _ => ErrorKind::Transient,
    }
}

/// `error` for logs, health and error messages: the client's own text, with
/// the gRPC status it wraps shortened from tonic's debug dump (`status:
/// Unavailable, message: "…", details: [], metadata: MetadataMap { … }`) to
/// `Unavailable: …`.
pub(crate) fn describe(error: &eventstore::Error) -> String {
    if let eventstore::Error::Grpc { message, .. } = error {
        if is_refused_token(error) {
            return message.clone();
        }
    }
    let text = error.to_string();
    let Some(at) = text.find("status: ") else {
        return text;
    };
    let (before, status) = text.split_at(at);
    let status = &status["status: ".len()..];
    let code = status.split(',').next().unwrap_or_default().trim();
    let message = status.find("message: \"").and_then(|start| {
        let rest = &status[start + "message: \"".len()..];
        rest.rfind("\", details: ").map(|end| &rest[..end])
    });
    match message {
        Some(message) => format!("{before}{code}: {message}"),
        None => text,
    }
}

/// Whether the client should be thrown away and built again after `error`.
///
/// A client whose first connection attempt failed answers `ConnectionClosed`
/// forever, so a fresh one is the only way to recover from that. A request
/// that got no answer within its deadline may sit on a connection that is
/// gone without a reset (a frozen server, a partition): a new client opens a
/// new connection instead of waiting for HTTP/2 keepalive to notice.
pub(crate) fn needs_new_client(error: &eventstore::Error) -> bool {
    matches!(
        error,
        eventstore::Error::ConnectionClosed
            | eventstore::Error::GrpcConnectionError(_)
            | eventstore::Error::DeadlineExceeded
    )
}

/// The default deadline of one request (a read, a page of a read, an append,
/// the set-up of a subscription): a server that does not answer within it is
/// treated as unavailable. Shorter than the pipeline's call deadline (20 s by
/// default), so the error says which request hung.
///
/// The `eventstore` 4.0.0 client enforces no deadline itself: it sends a
/// `grpc-timeout` header (10 s on appends and tombstones, none on reads,
/// subscriptions and batch appends) that only the server acts on, and a
/// frozen server acts on nothing.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a raw gRPC status code means "try again later": cancelled (1),
/// unknown (2), deadline exceeded (4), resource exhausted (8), aborted (10),
/// internal (13), unavailable (14). Compared by number because the client does
/// not re-export tonic's `Code` type.
fn is_transient_code(code: i32) -> bool {
    matches!(code, 1 | 2 | 4 | 8 | 10 | 13 | 14)
}

/// A client built lazily (it needs a running tokio runtime) and rebuilt when it
/// cannot recover by itself.
pub(crate) struct ClientCell {
    settings: ClientSettings,
    token: Option<BearerToken>,
    /// Shared: every caller of a generation uses the same channel.
    current: Mutex<Option<(u64, Arc<Client>)>>,
}

impl ClientCell {
    pub(crate) fn new(settings: ClientSettings) -> Self {
        ClientCell {
            settings,
            token: None,
            current: Mutex::new(None),
        }
    }

    /// Every client and channel made from now on authenticates with `token`
    /// (when given) instead of the connection string's credentials.
    pub(crate) fn set_token(&mut self, token: Option<BearerToken>) {
        self.token = token;
        *self.current.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// A channel of its own (for a subscription or a batch-append session)
    /// to `preferred` or the node the settings choose, with the cell's
    /// credentials.
    pub(crate) async fn connect_wire(
        &self,
        preferred: Option<eventstore::Endpoint>,
    ) -> Result<WireChannel, eventstore::Error> {
        Ok(WireChannel::connect(&self.settings, preferred)
            .await?
            .with_token(self.token.clone()))
    }

    /// The current client and its generation, building one if needed.
    pub(crate) fn get(&self) -> Result<(u64, Arc<Client>), eventstore::Error> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((generation, client)) = current.as_ref() {
            return Ok((*generation, client.clone()));
        }
        let client =
            Arc::new(Client::new(self.settings.clone())?.with_bearer_token(self.token.clone()));
        let generation = next_generation();
        *current = Some((generation, client.clone()));
        Ok((generation, client))
    }

    /// Drops the client of `generation` so the next [`ClientCell::get`] builds
    /// a new one. A newer client built meanwhile by another task is kept.
    pub(crate) fn discard(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(current.as_ref(), Some((g, _)) if *g == generation) {
            *current = None;
        }
    }
}

fn next_generation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_statuses_are_described_without_the_debug_dump() {
        use eventstore::Error as E;
        let error = E::ServerError(
            "status: Unavailable, message: \"Server is shutting down\", details: [], \
             metadata: MetadataMap { headers: {} }"
                .into(),
        );
        assert_eq!(
            describe(&error),
            "Server-side error: Unavailable: Server is shutting down"
        );
        assert_eq!(describe(&E::DeadlineExceeded), "Deadline exceeded");
        assert_eq!(describe(&E::AccessDenied), "Access denied error");
    }

    #[test]
    fn outages_are_transient_and_access_problems_permanent() {
        use eventstore::Error as E;
        assert_eq!(error_kind(&E::ConnectionClosed), ErrorKind::Transient);
        assert_eq!(
            error_kind(&E::ServerError("unavailable".into())),
            ErrorKind::Transient
        );
        assert_eq!(error_kind(&E::DeadlineExceeded), ErrorKind::Transient);
        assert_eq!(error_kind(&E::AccessDenied), ErrorKind::Permanent);
        assert_eq!(error_kind(&E::UnsupportedFeature), ErrorKind::Permanent);
    }
}
