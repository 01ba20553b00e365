//! The C# tool's HTTP transform (`transform.type: http`, `transform.config:
//! <url>`).
//!
//! Each appended event is POSTed to the URL as JSON, in the C# tool's shape:
//! `{"EventType": …, "StreamName": …, "Payload": "<data>", "Metadata":
//! "<metadata>" | null}`. `Payload` and `Metadata` are the UTF-8 text of the
//! data and metadata (not parsed JSON), `Metadata` is `null` when the event has
//! none.
//!
//! - `204 No Content` leaves the event out ([`SkipReason::Dropped`], still
//!   checkpointed).
//! - Another `2xx` answers with the same shape: the event is written with the
//!   answer's `StreamName`, `EventType` and `Payload`, and its `Metadata` when
//!   the answer has one (otherwise the event's own). The event id, content
//!   type, position and source revision are kept. An answer that is not that
//!   JSON, or has a blank `StreamName` or `EventType`, is a permanent error.
//! - Any other status, a connection error or a request that takes longer than
//!   the timeout ([`DEFAULT_TIMEOUT`]) is a transient error: the pipeline
//!   retries the event with backoff and reports the `transform` component
//!   unhealthy meanwhile (the C# tool retried 10 times, then stalled).
//! - Only appended events are sent; stream metadata, deletes and tombstones
//!   pass unchanged. Events whose data or metadata is not UTF-8 (binary
//!   payloads, which the C# tool mangled into replacement characters) pass
//!   unchanged without a request, counted by [`HttpTransform::not_text`] and
//!   logged.
//! - Several requests are in flight at once ([`Transform::concurrency`], the
//!   C# tool's open issue #17); the pipeline hands results on in source order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use replicator_core::secret::{ConnectionString, Scrubber};
use replicator_core::{ChangeKind, Event, SkipReason, Transform, TransformError};
use serde::{Deserialize, Serialize};

/// How long one request may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an HTTP transform cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL does not parse or is not `http`/`https`.
    #[error("the HTTP transform URL `{url}` is not an http(s) URL: {reason}")]
    Url {
        /// The URL as configured, credentials hidden.
        url: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client cannot be built.
    #[error("cannot build the HTTP client of the HTTP transform")]
    Client(#[source] reqwest::Error),
}

/// The C# tool's body, both ways.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HttpEvent<'a> {
    event_type: std::borrow::Cow<'a, str>,
    stream_name: std::borrow::Cow<'a, str>,
    payload: std::borrow::Cow<'a, str>,
    #[serde(default)]
    metadata: Option<std::borrow::Cow<'a, str>>,
}

/// The C# tool's `transform.type: http`. See the [module docs](self).
pub struct HttpTransform {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL for logs and messages, credentials hidden.
    shown: String,
    /// Hides the URL's credentials in the HTTP client's errors.
    scrubber: Scrubber,
    in_flight: usize,
    not_text: AtomicU64,
}

impl HttpTransform {
    /// A transform POSTing to `url` with up to `in_flight` requests at once
    /// (at least 1) and the [`DEFAULT_TIMEOUT`] per request. Logs, errors and
    /// [`Transform::name`] show the URL without its credentials.
    ///
    /// # Errors
    /// [`HttpError`] for a URL that is not http(s).
    pub fn new(
        url: impl Into<ConnectionString>,
        in_flight: usize,
    ) -> Result<HttpTransform, HttpError> {
        HttpTransform::with_timeout(url, in_flight, DEFAULT_TIMEOUT)
    }

    /// Like [`HttpTransform::new`] with another per-request timeout.
    ///
    /// # Errors
    /// [`HttpError`] for a URL that is not http(s).
    pub fn with_timeout(
        url: impl Into<ConnectionString>,
        in_flight: usize,
        timeout: Duration,
    ) -> Result<HttpTransform, HttpError> {
        let url = url.into();
        let shown = url.to_string();
        let bad = |reason: String| HttpError::Url {
            url: shown.clone(),
            reason,
        };
        let parsed = reqwest::Url::parse(url.expose()).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad(format!("the scheme is `{}`", parsed.scheme())));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(in_flight.max(1))
            .build()
            .map_err(HttpError::Client)?;
        Ok(HttpTransform {
            client,
            url: parsed,
            shown,
            scrubber: Scrubber::of([&url]),
            in_flight: in_flight.max(1),
            not_text: AtomicU64::new(0),
        })
    }

    /// How many events passed unchanged because their data or metadata is
    /// not UTF-8 text.
    pub fn not_text(&self) -> u64 {
        self.not_text.load(Ordering::Relaxed)
    }

    fn passed_not_text(&self, event: &Event) {
        let count = self.not_text.fetch_add(1, Ordering::Relaxed) + 1;
        let mut power = 1;
        while power < count {
            power *= 10;
        }
        if power == count {
            tracing::warn!(
                url = %self.shown,
                stream = %event.stream,
                revision = event.revision,
                passed_unchanged = count,
                "HTTP transform: an event whose data or metadata is not UTF-8 passes unchanged, \
                 without a request"
            );
        }
    }
}

/// The first characters of a body, for error messages.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

#[async_trait]
impl Transform for HttpTransform {
    fn name(&self) -> String {
        format!("http transform {}", self.shown)
    }

    async fn apply(&self, event: Event) -> Result<Event, TransformError> {
        if event.kind != ChangeKind::Append {
            return Ok(event);
        }
        let (Ok(payload), Ok(metadata)) = (
            std::str::from_utf8(&event.data),
            std::str::from_utf8(&event.metadata),
        ) else {
            self.passed_not_text(&event);
            return Ok(event);
        };
        let body = HttpEvent {
            event_type: event.event_type.as_str().into(),
            stream_name: event.stream.as_str().into(),
            payload: payload.into(),
            metadata: (!metadata.is_empty()).then_some(metadata.into()),
        };
        let response = self
            .client
            .post(self.url.clone())
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                let e = e.without_url();
                let error = self.scrubber.scrub(&e.to_string());
                TransformError::transient(format!("POST {} failed: {error}", self.shown))
                    .with_source(e)
            })?;
        let status = response.status();
        let answer = response.bytes().await.map_err(|e| {
            let e = e.without_url();
            TransformError::transient(format!(
                "reading the answer of POST {} ({status}) failed: {}",
                self.shown,
                self.scrubber.scrub(&e.to_string())
            ))
            .with_source(e)
        })?;
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(Event {
                kind: ChangeKind::Skip(SkipReason::Dropped),
                ..event
            });
        }
        if !status.is_success() {
            return Err(TransformError::transient(format!(
                "POST {} answered {status}: {}",
                self.shown,
                excerpt(&answer)
            )));
        }
        let replaced: HttpEvent<'_> = serde_json::from_slice(&answer).map_err(|e| {
            TransformError::permanent(format!(
                "POST {} answered {status} with a body that is not {{\"EventType\", \
                 \"StreamName\", \"Payload\", \"Metadata\"}} JSON ({e}): {}",
                self.shown,
                excerpt(&answer)
            ))
        })?;
        if replaced.stream_name.trim().is_empty() || replaced.event_type.trim().is_empty() {
            return Err(TransformError::permanent(format!(
                "POST {} answered {status} with a blank StreamName or EventType: {}",
                self.shown,
                excerpt(&answer)
            )));
        }
        Ok(Event {
            stream: replaced.stream_name.into_owned(),
            event_type: replaced.event_type.into_owned(),
            data: Bytes::from(replaced.payload.into_owned()),
            metadata: match replaced.metadata {
                Some(metadata) => Bytes::from(metadata.into_owned()),
                None => event.metadata.clone(),
            },
            ..event
        })
    }

    fn concurrency(&self) -> usize {
        self.in_flight
    }

    fn keeps_revisions(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_the_csharp_keys_and_null_metadata() {
        let body = HttpEvent {
            event_type: "Placed".into(),
            stream_name: "orders-1".into(),
            payload: r#"{"n":1}"#.into(),
            metadata: None,
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"EventType": "Placed", "StreamName": "orders-1", "Payload": "{\"n\":1}", "Metadata": null})
        );
        // An answer without Metadata reads as None (keep the event's own).
        let answer: HttpEvent<'_> =
            serde_json::from_str(r#"{"EventType":"T","StreamName":"s","Payload":"{}"}"#).unwrap();
        assert!(answer.metadata.is_none());
    }

    #[test]
    fn an_excerpt_is_cut_at_200_characters() {
        let long = "é".repeat(300);
        let cut = excerpt(long.as_bytes());
        assert_eq!(cut.chars().count(), 201);
        assert!(cut.ends_with('…'));
        assert_eq!(excerpt(b"short"), "short");
    }
}
