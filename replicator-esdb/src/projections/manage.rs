//! The calls that need the projection subsystem itself: statistics and
//! updates over gRPC (the `eventstore` client's `ProjectionClient`), and the
//! creation of a **stopped** projection over the node's HTTP API, the only
//! way to create one that never ran (gRPC Create always starts it).

use std::collections::HashMap;
use std::time::Duration;

use eventstore::ClientSettings;
use futures::TryStreamExt as _;

use super::{Definition, ProjectionsError, Statistics};
use crate::cluster::within;
use crate::wire::channel::{tls_config, WireChannel};

/// Why a projection could not be created or updated: one line for the
/// report (no password in it).
pub(super) type Refusal = String;

fn statistics_error(side: &'static str, error: eventstore::Error) -> ProjectionsError {
    match error {
        eventstore::Error::UnsupportedFeature => ProjectionsError::SubsystemNotRunning { side },
        eventstore::Error::AccessDenied => ProjectionsError::AccessDenied {
            side,
            what: "list the projections' statistics",
        },
        other => ProjectionsError::Statistics {
            side,
            source: other,
        },
    }
}

/// The statistics of every continuous projection of the cluster `settings`
/// names, by name.
///
/// # Errors
/// [`ProjectionsError::SubsystemNotRunning`] when the node does not serve
/// the Projections service, [`ProjectionsError::AccessDenied`], or the
/// client's error.
pub(super) async fn statistics(
    settings: &ClientSettings,
    side: &'static str,
    limit: Duration,
) -> Result<HashMap<String, Statistics>, ProjectionsError> {
    let client = eventstore::ProjectionClient::new(settings.clone());
    let list = async {
        let stream = client.list(&Default::default()).await?;
        stream.try_collect::<Vec<_>>().await
    };
    let all = within(limit, list)
        .await
        .map_err(|e| statistics_error(side, e))?;
    Ok(all
        .into_iter()
        .map(|s| {
            (
                s.name.clone(),
                Statistics {
                    status: s.status,
                    position: s.position,
                    last_checkpoint: s.last_checkpoint,
                    epoch: s.epoch,
                    version: s.version,
                    mode: s.mode,
                },
            )
        })
        .collect())
}

/// Updates the target's projection to `definition`'s query and emit
/// setting (gRPC Update: the projection keeps its run state).
pub(super) async fn update(
    settings: &ClientSettings,
    definition: &Definition,
    limit: Duration,
) -> Result<(), Refusal> {
    let client = eventstore::ProjectionClient::new(settings.clone());
    let options = eventstore::UpdateProjectionOptions::default().emit(definition.emit_enabled);
    within(
        limit,
        client.update(&definition.name, definition.query.clone(), &options),
    )
    .await
    .map_err(|error| match error {
        eventstore::Error::AccessDenied => {
            "the target refused the update (access denied: updating a projection needs an \
             admin in replicator.sink.connectionString)"
                .to_owned()
        }
        eventstore::Error::ResourceNotFound => "the projection is gone from the target".to_owned(),
        other => format!(
            "the target refused the update: {}",
            crate::connection::describe(&other)
        ),
    })
}

/// The node's HTTP API: where it is, and the client to call it with.
pub(super) struct HttpApi {
    client: reqwest::Client,
    base: reqwest::Url,
    authorization: Option<String>,
}

impl HttpApi {
    /// The HTTP API of the node the connection string leads to (its only
    /// host, or the gossip's choice), with its TLS settings and credentials.
    ///
    /// # Errors
    /// TLS files that cannot be read, or no node chosen.
    pub(super) async fn connect(
        settings: &ClientSettings,
        limit: Duration,
    ) -> Result<HttpApi, eventstore::Error> {
        let channel = within(limit, WireChannel::connect(settings, None)).await?;
        let base = reqwest::Url::parse(&channel.uri().to_string())
            .map_err(|e| eventstore::Error::InitializationError(e.to_string()))?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(settings)?)
            .timeout(limit)
            .build()
            .map_err(|e| eventstore::Error::InitializationError(e.to_string()))?;
        Ok(HttpApi {
            client,
            base,
            authorization: channel.authorization().map(str::to_owned),
        })
    }

    /// `POST /projections/continuous?name=…&type=JS&enabled=false&emit=…&trackemittedstreams=…`
    /// with the query as the body: the projection is created never started.
    pub(super) async fn create_stopped(&self, definition: &Definition) -> Result<(), Refusal> {
        let mut url = self
            .base
            .join("projections/continuous")
            .map_err(|e| e.to_string())?;
        let yes_no = |on: bool| if on { "yes" } else { "no" };
        url.query_pairs_mut()
            .append_pair("name", &definition.name)
            .append_pair("type", "JS")
            .append_pair("enabled", "false")
            .append_pair("emit", yes_no(definition.emit_enabled))
            .append_pair(
                "trackemittedstreams",
                yes_no(definition.track_emitted_streams),
            );
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/javascript")
            .body(definition.query.clone());
        if let Some(authorization) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("the target's HTTP API did not answer: {}", chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(match status.as_u16() {
            401 | 403 => "the target refused the credentials (HTTP 401): creating a projection \
                         needs an admin in replicator.sink.connectionString"
                .to_owned(),
            404 => "the target has no projections HTTP API (HTTP 404): is its projection \
                    subsystem running (--run-projections)?"
                .to_owned(),
            409 => {
                "a projection of that name appeared on the target meanwhile (HTTP 409)".to_owned()
            }
            _ => format!("the target answered HTTP {status}: {}", body.trim()),
        })
    }
}

/// A reqwest error with its causes (a refused connection says so only there).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
