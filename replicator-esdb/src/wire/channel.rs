//! A gRPC channel to one node of an EventStoreDB / KurrentDB cluster, built
//! from the same parsed connection string the `eventstore` client takes.
//!
//! What it honours, as the client does: `tls`, `tlsVerifyCert`, `tlsCaFile`,
//! `userCertFile`/`userKeyFile`, credentials (basic authentication),
//! `connectionName`, `keepAliveInterval`/`keepAliveTimeout`, seeds or DNS
//! discovery with `nodePreference` (chosen from the cluster's gossip), and the
//! `requires-leader` header when the preference is the leader. Unlike the
//! client, it sets `TCP_NODELAY`.

use std::time::Duration;

use eventstore::{ClientSettings, Endpoint, NodePreference};
use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::Status;
use tracing::debug;

use super::proto::{node_state, ClusterInfo, Empty};
use super::token::BearerToken;

/// Whether `error` is a bearer token the server refused (see
/// [`WireChannel::error`]).
pub(crate) fn is_refused_token(error: &eventstore::Error) -> bool {
    matches!(
        error,
        eventstore::Error::Grpc {
            code: tonic::Code::Unauthenticated,
            ..
        }
    )
}

/// The HTTP/2 client every call goes through.
pub(crate) type Http =
    hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, tonic::body::BoxBody>;

/// The largest message the server may send: the client's limit (17 MiB), above
/// the largest event a server accepts (16 MiB).
pub(crate) const MAX_MESSAGE: usize = 17 * 1024 * 1024;

/// A channel to the node chosen for the calls.
#[derive(Clone)]
pub(crate) struct WireChannel {
    http: Http,
    uri: Uri,
    headers: MetadataMap,
    /// Sent instead of the basic credentials, read afresh for each call.
    token: Option<BearerToken>,
}

impl WireChannel {
    /// Builds the channel and chooses the node: `preferred` when given (the
    /// leader a `not-leader` answer named), the only host of a single-node
    /// connection string, or else the best member of the cluster's gossip for
    /// the connection string's `nodePreference`. Connects lazily, on the first
    /// call.
    ///
    /// # Errors
    /// [`eventstore::Error::InitializationError`] for TLS files that cannot be
    /// read (permanent); a server error when no seed answers gossip with a
    /// usable member (transient).
    pub(crate) async fn connect(
        settings: &ClientSettings,
        preferred: Option<Endpoint>,
    ) -> Result<Self, eventstore::Error> {
        let options = HiddenSettings::of(settings);
        let http = http_client(settings, &options)?;
        let headers = headers(settings, &options);
        let endpoint = match preferred {
            Some(endpoint) => endpoint,
            None if !settings.is_dns_discovery_enabled() && settings.hosts().len() == 1 => {
                settings.hosts()[0].clone()
            }
            None => choose_node(settings, &http, &headers).await?,
        };
        debug!(node = %format_args!("{}:{}", endpoint.host, endpoint.port), "Wire channel");
        Ok(WireChannel {
            uri: settings.to_uri(&endpoint),
            http,
            headers,
            token: None,
        })
    }

    /// The channel, its calls authenticated with `token` (when given)
    /// instead of the connection string's credentials.
    pub(crate) fn with_token(mut self, token: Option<BearerToken>) -> Self {
        self.token = token;
        self
    }

    /// A request carrying the connection's headers (credentials or bearer
    /// token, leader requirement, connection name).
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = request_with(&self.headers, message);
        if let Some(token) = &self.token {
            token.authorize(request.metadata_mut());
        }
        request
    }

    /// The client's error for a call's failed `status`, as
    /// [`eventstore::Error::from_grpc`] makes it, except that a refused
    /// bearer token is not "access denied" (permanent) but an
    /// `Unauthenticated` error saying so ([`is_refused_token`]): an expired
    /// token is renewed while the run retries.
    pub(crate) fn error(&self, status: Status) -> eventstore::Error {
        match &self.token {
            Some(token) if status.code() == tonic::Code::Unauthenticated => {
                eventstore::Error::Grpc {
                    code: tonic::Code::Unauthenticated,
                    message: token.refusal(),
                }
            }
            _ => eventstore::Error::from_grpc(status),
        }
    }

    /// The chosen node's base URI (`http(s)://host:port`): where its HTTP API
    /// answers too.
    pub(crate) fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The `authorization` value the channel's calls carry (the bearer
    /// token as last read, else the connection string's `Basic …`
    /// credentials), for the node's HTTP API.
    pub(crate) fn authorization(&self) -> Option<String> {
        let mut headers = self.headers.clone();
        if let Some(token) = &self.token {
            token.authorize(&mut headers);
        }
        headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    }

    /// A gRPC client on the channel, ready for a call.
    pub(crate) async fn grpc(&self) -> Result<tonic::client::Grpc<Http>, Status> {
        grpc_to(&self.http, self.uri.clone()).await
    }
}

/// What a channel built from `settings` would fail on at once: TLS files
/// that cannot be read.
///
/// # Errors
/// [`eventstore::Error::InitializationError`], naming the file.
pub(crate) fn check(settings: &ClientSettings) -> Result<(), eventstore::Error> {
    tls_config(settings).map(drop)
}

/// The deadline the `eventstore` client puts on a request that is not a
/// read (`grpc-timeout`, which only the server acts on): the connection
/// string's `defaultDeadline`, else 10 s.
pub(crate) fn server_deadline(settings: &ClientSettings) -> Duration {
    match HiddenSettings::of(settings).default_deadline {
        Some(ms) if ms < i64::MAX as u64 => Duration::from_millis(ms),
        _ => Duration::from_secs(10),
    }
}

fn request_with<T>(headers: &MetadataMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = headers.clone();
    request
}

async fn grpc_to(http: &Http, uri: Uri) -> Result<tonic::client::Grpc<Http>, Status> {
    let mut grpc =
        tonic::client::Grpc::with_origin(http.clone(), uri).max_decoding_message_size(MAX_MESSAGE);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("the connection is not ready: {e}")))?;
    Ok(grpc)
}

/// Settings the client parses but has no accessor for, read from its
/// serialised form (durations in milliseconds).
#[derive(serde::Deserialize, Default)]
struct HiddenSettings {
    keep_alive_interval: Option<u64>,
    keep_alive_timeout: Option<u64>,
    default_deadline: Option<u64>,
    connection_name: Option<String>,
    /// The connection string's credentials (their login and password have
    /// no accessor either; serialised as bytes).
    default_user_name: Option<RawCredentials>,
}

#[derive(serde::Deserialize)]
struct RawCredentials {
    login: Vec<u8>,
    password: Vec<u8>,
}

impl HiddenSettings {
    fn of(settings: &ClientSettings) -> Self {
        serde_json::to_value(settings)
            .ok()
            .and_then(|value| serde_json::from_value(value).ok())
            .unwrap_or_default()
    }

    /// A keepalive duration, `None` when turned off (`-1` is stored as
    /// `u64::MAX` milliseconds).
    fn duration(millis: Option<u64>, default: Duration) -> Option<Duration> {
        match millis {
            None => Some(default),
            Some(ms) if ms >= i64::MAX as u64 => None,
            Some(ms) => Some(Duration::from_millis(ms)),
        }
    }
}

fn http_client(
    settings: &ClientSettings,
    options: &HiddenSettings,
) -> Result<Http, eventstore::Error> {
    let tls = tls_config(settings)?;
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http2()
        .wrap_connector(tcp);
    let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    builder.timer(TokioTimer::new()).http2_only(true);
    let interval = HiddenSettings::duration(options.keep_alive_interval, Duration::from_secs(10));
    if let Some(interval) = interval {
        builder.http2_keep_alive_interval(interval);
        if let Some(timeout) =
            HiddenSettings::duration(options.keep_alive_timeout, Duration::from_secs(10))
        {
            builder.http2_keep_alive_timeout(timeout);
        }
    }
    Ok(builder.build(connector))
}

/// The TLS configuration the connection string asks for (CA file, client
/// certificate, verification), without ALPN.
pub(crate) fn tls_config(
    settings: &ClientSettings,
) -> Result<rustls::ClientConfig, eventstore::Error> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let bad = |what: &str, file: &str, e: &dyn std::fmt::Display| {
        eventstore::Error::InitializationError(format!("cannot read {what} `{file}`: {e}"))
    };
    let mut roots = rustls::RootCertStore::empty();
    match settings.tls_ca_file() {
        Some(file) => {
            for cert in
                CertificateDer::pem_file_iter(file).map_err(|e| bad("tlsCaFile", file, &e))?
            {
                let cert = cert.map_err(|e| bad("tlsCaFile", file, &e))?;
                roots.add(cert).map_err(|e| bad("tlsCaFile", file, &e))?;
            }
        }
        None if settings.is_secure_mode_enabled() => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // A platform certificate rustls cannot use is skipped, as
                // the platform's own TLS would.
                let _ = roots.add(cert);
            }
        }
        None => {}
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| eventstore::Error::InitializationError(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match settings.user_certificate() {
        Some((cert_file, key_file)) => {
            let chain = CertificateDer::pem_file_iter(cert_file)
                .map_err(|e| bad("userCertFile", cert_file, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("userCertFile", cert_file, &e))?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|e| bad("userKeyFile", key_file, &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("userCertFile", cert_file, &e))?
        }
        None => builder.with_no_client_auth(),
    };
    if settings.is_secure_mode_enabled() && !settings.is_tls_certificate_verification_enabled() {
        config
            .dangerous()
            .set_certificate_verifier(std::sync::Arc::new(NoVerification(provider)));
    }
    Ok(config)
}

/// `tlsVerifyCert=false` (and the TCP reader's `ValidateServer=false`): any
/// certificate is accepted (its signatures are
/// still checked with the provider's algorithms).
#[derive(Debug)]
pub(crate) struct NoVerification(pub(crate) std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn headers(settings: &ClientSettings, options: &HiddenSettings) -> MetadataMap {
    use base64::Engine;
    let mut headers = MetadataMap::new();
    if let Some(credentials) = &options.default_user_name {
        let login = String::from_utf8_lossy(&credentials.login);
        let password = String::from_utf8_lossy(&credentials.password);
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{login}:{password}"));
        if let Ok(value) = MetadataValue::try_from(format!("Basic {token}")) {
            headers.insert("authorization", value);
        }
    }
    if settings.node_preference() == NodePreference::Leader {
        headers.insert("requires-leader", MetadataValue::from_static("true"));
    }
    if let Some(name) = &options.connection_name {
        if let Ok(value) = MetadataValue::try_from(name.as_str()) {
            headers.insert("connection-name", value);
        }
    }
    headers
}

/// Asks the seeds (or the DNS name) for the cluster's gossip, in random order,
/// and takes the best member of the first answer.
async fn choose_node(
    settings: &ClientSettings,
    http: &Http,
    headers: &MetadataMap,
) -> Result<Endpoint, eventstore::Error> {
    let mut seeds = settings.hosts().clone();
    fastrand::shuffle(&mut seeds);
    let mut last_problem = String::from("no seed given");
    for seed in seeds {
        let members = tokio::time::timeout(
            settings.gossip_timeout().max(Duration::from_secs(1)),
            gossip(http, settings.to_uri(&seed), headers),
        )
        .await
        .map_err(|_| "no answer in time".to_owned())
        .and_then(|answer| {
            answer.map_err(|status| format!("{:?}: {}", status.code(), status.message()))
        });
        match members {
            Ok(cluster) => match best_member(settings.node_preference(), &cluster) {
                Some(endpoint) => {
                    debug!(seed = %format_args!("{}:{}", seed.host, seed.port),
                        node = %format_args!("{}:{}", endpoint.host, endpoint.port),
                        "Chose a node from the cluster's gossip");
                    return Ok(endpoint);
                }
                None => {
                    last_problem = format!(
                        "{}:{} lists no live member to connect to",
                        seed.host, seed.port
                    )
                }
            },
            Err(problem) => {
                last_problem = format!("gossip from {}:{} failed: {problem}", seed.host, seed.port)
            }
        }
    }
    Err(eventstore::Error::ServerError(format!(
        "no node of the cluster to connect to ({last_problem})"
    )))
}

async fn gossip(http: &Http, uri: Uri, headers: &MetadataMap) -> Result<ClusterInfo, Status> {
    let mut grpc = grpc_to(http, uri).await?;
    let request = request_with(headers, Empty {});
    let path = http::uri::PathAndQuery::from_static("/event_store.client.gossip.Gossip/Read");
    let codec = tonic::codec::ProstCodec::<Empty, ClusterInfo>::default();
    Ok(grpc.unary(request, path, codec).await?.into_inner())
}

/// The member to connect to: alive, not a manager or shutting down, of the
/// preferred kind when there is one (random among equals).
fn best_member(preference: NodePreference, cluster: &ClusterInfo) -> Option<Endpoint> {
    let usable: Vec<_> = cluster
        .members
        .iter()
        .filter(|m| m.is_alive)
        .filter(|m| {
            !matches!(
                m.state,
                node_state::MANAGER | node_state::SHUTTING_DOWN | node_state::SHUTDOWN
            )
        })
        .filter_map(|m| m.http_end_point.as_ref().map(|e| (m.state, e)))
        .collect();
    let preferred = |state: i32| match preference {
        NodePreference::Leader => state == node_state::LEADER,
        NodePreference::Follower => state == node_state::FOLLOWER,
        NodePreference::ReadOnlyReplica => matches!(
            state,
            node_state::READ_ONLY_REPLICA
                | node_state::READ_ONLY_LEADERLESS
                | node_state::PRE_READ_ONLY_REPLICA
        ),
        _ => true,
    };
    let best: Vec<_> = usable.iter().filter(|(s, _)| preferred(*s)).collect();
    let pool: Vec<_> = if best.is_empty() {
        usable.iter().collect()
    } else {
        best
    };
    if pool.is_empty() {
        return None;
    }
    let (_, endpoint) = pool[fastrand::usize(..pool.len())];
    Some(Endpoint {
        host: endpoint.address.clone(),
        port: endpoint.port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::proto::{EndPoint, MemberInfo};

    fn member(state: i32, alive: bool, port: u32) -> MemberInfo {
        MemberInfo {
            state,
            is_alive: alive,
            http_end_point: Some(EndPoint {
                address: "node".into(),
                port,
            }),
        }
    }

    #[test]
    fn the_preferred_live_member_is_chosen_and_any_live_one_otherwise() {
        let cluster = ClusterInfo {
            members: vec![
                member(node_state::LEADER, false, 1),
                member(node_state::FOLLOWER, true, 2),
                member(node_state::LEADER, true, 3),
                member(node_state::MANAGER, true, 4),
            ],
        };
        for _ in 0..20 {
            let leader = best_member(NodePreference::Leader, &cluster).unwrap();
            assert_eq!(leader.port, 3);
            let follower = best_member(NodePreference::Follower, &cluster).unwrap();
            assert_eq!(follower.port, 2);
            // No read-only replica: any usable member, never the manager
            // or the dead leader.
            let any = best_member(NodePreference::ReadOnlyReplica, &cluster).unwrap();
            assert!([2, 3].contains(&any.port), "{}", any.port);
        }
        let dead = ClusterInfo {
            members: vec![member(node_state::LEADER, false, 1)],
        };
        assert!(best_member(NodePreference::Leader, &dead).is_none());
    }

    #[test]
    fn hidden_settings_are_read_from_the_connection_string() {
        let settings: ClientSettings =
            "esdb://u:p@h:1?tls=false&keepAliveInterval=20000&keepAliveTimeout=-1&connectionName=rep"
                .parse()
                .unwrap();
        let hidden = HiddenSettings::of(&settings);
        assert_eq!(
            HiddenSettings::duration(hidden.keep_alive_interval, Duration::ZERO),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            HiddenSettings::duration(hidden.keep_alive_timeout, Duration::ZERO),
            None
        );
        let headers = headers(&settings, &hidden);
        assert_eq!(headers.get("connection-name").unwrap(), "rep");
        // "u:p" in base64.
        assert_eq!(headers.get("authorization").unwrap(), "Basic dTpw");
    }
}
