//! The head of `$all`.

use eventstore::{Client, ReadAllOptions, StreamPosition};
use replicator_core::Position;

use super::ClientPosition;

/// The position of the last record in `$all`, `None` when it is empty.
///
/// No deadline of its own: callers that need one put it around this call.
///
/// # Errors
/// The client's, when the read fails.
pub async fn head(client: &Client) -> Result<Option<Position>, eventstore::Error> {
    let options = ReadAllOptions::default()
        .backwards()
        .position(StreamPosition::End)
        .max_count(1);
    let mut read = client.read_all(&options).await?;
    Ok(read
        .next()
        .await?
        .and_then(|resolved| resolved.link.or(resolved.event))
        .map(|record| Position::from_client(record.position)))
}
