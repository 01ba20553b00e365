//! The head of `$all`.

use replicator_core::Position;

use super::{AllFrom, Direction};
use crate::wire::client::{GrpcClient, ReadOf};

/// The position of the last record in `$all`, `None` when it is empty.
///
/// No deadline of its own: callers that need one put it around this call.
///
/// # Errors
/// The client's, when the read fails.
pub async fn head(client: &GrpcClient) -> Result<Option<Position>, eventstore::Error> {
    let mut read = client
        .read(ReadOf::All(AllFrom::End), Direction::Backwards, 1, false)
        .await?;
    Ok(read.next().await?.map(|record| record.position))
}
