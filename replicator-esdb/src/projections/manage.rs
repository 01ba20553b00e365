//! The calls that need the projection subsystem itself: statistics and
//! updates over gRPC (on the crate's own channel, so a bearer token goes
//! with them; the messages in `proto.rs`), and the
//! creation of a **stopped** projection over the node's HTTP API, the only
//! way to create one that never ran (gRPC Create always starts it).

use std::collections::HashMap;
use std::time::Duration;

use eventstore::ClientSettings;
use http::uri::PathAndQuery;
use tonic::codec::ProstCodec;

use super::proto::{StatisticsReq, StatisticsResp, UpdateReq, UpdateResp};
use super::{Definition, ProjectionsError, Statistics};
use crate::cluster::within;
use crate::wire::channel::{tls_config, WireChannel};
use crate::wire::token::BearerToken;

const SERVICE: &str = "/event_store.client.projections.Projections";

/// A channel to the node `settings` leads to, its calls carrying `token`
/// when given.
async fn channel(
    settings: &ClientSettings,
    token: Option<&BearerToken>,
) -> Result<WireChannel, eventstore::Error> {
    Ok(WireChannel::connect(settings, None)
        .await?
        .with_token(token.cloned()))
}

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
    token: Option<&BearerToken>,
    side: &'static str,
    limit: Duration,
) -> Result<HashMap<String, Statistics>, ProjectionsError> {
    let list = async {
        let channel = channel(settings, token).await?;
        let mut grpc = channel.grpc().await.map_err(|s| channel.error(s))?;
        let path =
            PathAndQuery::from_static("/event_store.client.projections.Projections/Statistics");
        let codec = ProstCodec::<StatisticsReq, StatisticsResp>::default();
        let mut answers = grpc
            .server_streaming(channel.request(StatisticsReq::all()), path, codec)
            .await
            .map_err(|s| channel.error(s))?
            .into_inner();
        let mut all = Vec::new();
        while let Some(answer) = answers.message().await.map_err(|s| channel.error(s))? {
            all.extend(answer.details);
        }
        Ok::<_, eventstore::Error>(all)
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
    token: Option<&BearerToken>,
    definition: &Definition,
    limit: Duration,
) -> Result<(), Refusal> {
    let call = async {
        let channel = channel(settings, token).await?;
        let mut grpc = channel.grpc().await.map_err(|s| channel.error(s))?;
        let path = PathAndQuery::try_from(format!("{SERVICE}/Update"))
            .map_err(|e| eventstore::Error::InitializationError(e.to_string()))?;
        let codec = ProstCodec::<UpdateReq, UpdateResp>::default();
        let request = UpdateReq::new(&definition.name, &definition.query, definition.emit_enabled);
        grpc.unary(channel.request(request), path, codec)
            .await
            .map_err(|s| channel.error(s))?;
        Ok::<_, eventstore::Error>(())
    };
    within(limit, call).await.map_err(|error| match error {
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
        token: Option<&BearerToken>,
        limit: Duration,
    ) -> Result<HttpApi, eventstore::Error> {
        let channel = within(limit, channel(settings, token)).await?;
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
            authorization: channel.authorization(),
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
        let response = request.send().await.map_err(|e| {
            format!(
                "the target's HTTP API did not answer: {}",
                replicator_core::error::error_chain(&e)
            )
        })?;
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
