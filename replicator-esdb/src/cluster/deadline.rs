//! The deadline of one request.

use std::future::Future;
use std::time::Duration;

/// A request that got no answer within its deadline. Neutral: each caller
/// turns it into its own error (`From<TimedOut>`), so one helper serves the
/// reader and the sink (for which it is the client's
/// [`eventstore::Error::DeadlineExceeded`]) and the reads of
/// [`ClusterRead`](super::ClusterRead) ([`ReadError::TimedOut`](super::ReadError::TimedOut),
/// which verify names with the side and the operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no answer within {limit:?}")]
pub struct TimedOut {
    /// The deadline that passed.
    pub limit: Duration,
}

/// A timeout is [`eventstore::Error::DeadlineExceeded`] to code that handles
/// client errors: it is transient and the client is rebuilt after it, as
/// after the client's own deadline.
impl From<TimedOut> for eventstore::Error {
    fn from(_: TimedOut) -> Self {
        eventstore::Error::DeadlineExceeded
    }
}

/// Runs `request`, turning "no answer within `limit`" into
/// `E::from(TimedOut)`. Dropping a request future of the client cancels the
/// request.
pub(crate) async fn within<T, E: From<TimedOut>>(
    limit: Duration,
    request: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::time::timeout(limit, request)
        .await
        .unwrap_or_else(|_| Err(TimedOut { limit }.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_without_an_answer_times_out_as_the_caller_says() {
        // Never answered, so the outcome does not depend on the limit.
        let limit = Duration::from_millis(1);
        let silent = std::future::pending::<Result<(), eventstore::Error>>();
        assert!(matches!(
            within(limit, silent).await,
            Err(eventstore::Error::DeadlineExceeded)
        ));
        let silent = std::future::pending::<Result<(), super::super::ReadError>>();
        assert!(matches!(
            within(limit, silent).await,
            Err(super::super::ReadError::TimedOut(TimedOut { limit: l })) if l == limit
        ));
        let answered = async { Ok::<_, super::super::ReadError>(7) };
        assert_eq!(within(limit, answered).await.unwrap(), 7);
    }
}
