//! A connection string to a client.

use eventstore::ClientSettings;

use crate::wire::client::GrpcClient;

use replicator_core::secret::{ConnectionString, Scrubber};

/// Why a connection string gives no client. No message shows a password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection string is empty or only whitespace.
    #[error("the connection string is empty")]
    Empty,
    /// The connection string does not parse. The parser's message is part of
    /// this one, since the reader and the sink show only this line.
    #[error("invalid connection string `{connection_string}`: {reason}")]
    Invalid {
        /// The connection string, its password replaced by `***`.
        connection_string: String,
        /// What the `eventstore` client's parser says, scrubbed: it quotes
        /// the whole string, password included.
        reason: String,
    },
    /// The settings parsed, but the client refused them.
    #[error("cannot create a client")]
    Client(#[source] eventstore::Error),
}

/// Parses a connection string (`esdb://…`, `esdb+discover://…`).
///
/// # Errors
/// [`ConnectError::Empty`] or [`ConnectError::Invalid`], naming the string
/// without its password.
pub fn settings(connection_string: &ConnectionString) -> Result<ClientSettings, ConnectError> {
    if connection_string.is_blank() {
        return Err(ConnectError::Empty);
    }
    connection_string
        .expose()
        .parse::<ClientSettings>()
        .map_err(|error| ConnectError::Invalid {
            connection_string: connection_string.to_string(),
            reason: Scrubber::of([connection_string]).scrub(&error.to_string()),
        })
}

/// A client of the cluster `connection_string` names. It connects on its
/// first request, so this needs no server (its requests need a tokio
/// runtime).
///
/// # Errors
/// As [`settings`], or [`ConnectError::Client`] when the client cannot be
/// created from them (TLS files that cannot be read).
pub fn client(connection_string: &ConnectionString) -> Result<GrpcClient, ConnectError> {
    client_from(settings(connection_string)?)
}

/// A client from settings parsed already (by [`settings`], or an `eventstore`
/// client's own).
///
/// # Errors
/// [`ConnectError::Client`] when TLS files the settings name cannot be read.
pub fn client_from(settings: ClientSettings) -> Result<GrpcClient, ConnectError> {
    GrpcClient::new(settings).map_err(ConnectError::Client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_connection_strings_are_named_without_their_password() {
        let err = settings(&"http://admin:secret@host".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin:***@host"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        // The parser quotes the whole string in its message.
        let err = settings(&"esdb://admin:r4w/p@ss?w0rd@h:2113?tls=false".into())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("p@ss"), "{err}");
        assert!(!err.contains("r4w"), "{err}");
        assert!(settings(&"  ".into())
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(settings(&"esdb://localhost:2113?tls=false".into()).is_ok());
    }
}
