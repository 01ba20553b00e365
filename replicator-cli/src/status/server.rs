//! The HTTP server (axum): routes, binding, shutdown.

use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::json::{ApiStatus, HealthBody};
use super::{metrics, page, Status};

/// How long open connections may take to finish when the server stops.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A running status server.
pub(crate) struct StatusServer {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl StatusServer {
    /// Binds `listen` (`host:port`; port 0 picks a free one) and serves
    /// `status` until [`StatusServer::stop`]. Logs the bound address.
    ///
    /// # Errors
    /// When the address cannot be bound (in use, not local, unresolvable):
    /// the error names the key `replicator.http.listen` and the address.
    pub async fn start(listen: &str, status: Status) -> anyhow::Result<StatusServer> {
        let listener = TcpListener::bind(listen).await.with_context(|| {
            format!(
                "replicator.http.listen: cannot listen on {listen} (set another host:port, \
                 or an empty string to run without the status server)"
            )
        })?;
        let address = listener
            .local_addr()
            .with_context(|| format!("replicator.http.listen: no local address for {listen}"))?;
        info!(%address, "Status server listening on http://{address}");
        let stop = CancellationToken::new();
        let graceful = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router(status))
                .with_graceful_shutdown(graceful.cancelled_owned())
                .await;
            if let Err(error) = served {
                warn!(%error, "Status server stopped");
            }
        });
        Ok(StatusServer { stop, task })
    }

    /// Stops accepting, lets open requests finish for a moment, then ends.
    pub async fn stop(self) {
        self.stop.cancel();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(STOP_GRACE, self.task).await.is_err() {
            abort.abort();
        }
    }
}

fn router(status: Status) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/ping", get(ping))
        .route("/health", get(ready))
        .route("/health/ready", get(ready))
        .route("/health/live", get(live))
        .route("/metrics", get(prometheus))
        .route("/api/status", get(api_status))
        .with_state(status)
}

/// Responses describe the moment they were made: never cached.
fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn ping() -> &'static str {
    "Pong"
}

async fn ready(State(status): State<Status>) -> Response {
    let s = status.snapshot();
    let code = if s.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    no_store((code, Json(HealthBody::new(&s, false))).into_response())
}

async fn live(State(status): State<Status>) -> Response {
    let s = status.snapshot();
    let code = if s.live() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    no_store((code, Json(HealthBody::new(&s, true))).into_response())
}

async fn prometheus(State(status): State<Status>) -> Response {
    let body = metrics::render(&status.snapshot());
    no_store(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response())
}

async fn api_status(State(status): State<Status>) -> Response {
    let s = status.snapshot();
    no_store(Json(ApiStatus::new(&s)).into_response())
}

async fn status_page() -> Response {
    no_store(Html(page::HTML).into_response())
}
