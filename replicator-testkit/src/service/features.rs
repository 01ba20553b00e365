//! The `ServerFeatures` and `Gossip` services.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::uuid_to_wire;
use crate::proto::gossip::{self, gossip_server::Gossip};
use crate::proto::server_features::{
    server_features_server::ServerFeatures, SupportedMethod, SupportedMethods,
};
use crate::shared::Shared;

/// Version reported when none is configured.
const DEFAULT_VERSION: &str = "24.10.0";

/// `event_store.client.server_features.ServerFeatures`.
pub(crate) struct FeaturesService {
    shared: Arc<Shared>,
}

impl FeaturesService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        FeaturesService { shared }
    }
}

#[tonic::async_trait]
impl ServerFeatures for FeaturesService {
    async fn get_supported_methods(
        &self,
        _request: Request<()>,
    ) -> Result<Response<SupportedMethods>, Status> {
        let method = |service: &str, name: &str| SupportedMethod {
            method_name: name.to_owned(),
            service_name: service.to_owned(),
            features: Vec::new(),
        };
        let streams = "event_store.client.streams.streams";
        let mut methods = vec![
            method(streams, "read"),
            method(streams, "append"),
            method(streams, "delete"),
            method(streams, "tombstone"),
            method(streams, "batchappend"),
            method("event_store.client.gossip.gossip", "read"),
            method(
                "event_store.client.server_features.serverfeatures",
                "getsupportedmethods",
            ),
        ];
        // As the real server: every PersistentSubscriptions method with the
        // features "stream" and "all" (`ServerFeatures.cs`).
        methods.extend(
            [
                "create",
                "update",
                "delete",
                "read",
                "getinfo",
                "replayparked",
                "list",
                "restartsubsystem",
            ]
            .map(|name| SupportedMethod {
                features: vec!["stream".to_owned(), "all".to_owned()],
                ..method(
                    "event_store.client.persistent_subscriptions.persistentsubscriptions",
                    name,
                )
            }),
        );
        if !self.shared.options.no_projections {
            methods.extend(super::projections::supported_methods());
        }
        let version = self
            .shared
            .options
            .server_version
            .clone()
            .unwrap_or_else(|| DEFAULT_VERSION.to_owned());
        Ok(Response::new(SupportedMethods {
            methods,
            event_store_server_version: version,
        }))
    }
}

/// `event_store.client.gossip.Gossip`: a one-member cluster whose only node, the
/// leader, is this server.
pub(crate) struct GossipService {
    shared: Arc<Shared>,
}

impl GossipService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        GossipService { shared }
    }
}

#[tonic::async_trait]
impl Gossip for GossipService {
    async fn read(&self, _request: Request<()>) -> Result<Response<gossip::ClusterInfo>, Status> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let member = gossip::MemberInfo {
            instance_id: Some(uuid_to_wire(self.shared.instance_id, true)),
            time_stamp: i64::try_from(now.as_nanos() / 100).unwrap_or(i64::MAX),
            state: gossip::member_info::VNodeState::Leader as i32,
            is_alive: true,
            http_end_point: Some(gossip::EndPoint {
                address: self.shared.host.clone(),
                port: u32::from(self.shared.port.load(std::sync::atomic::Ordering::SeqCst)),
            }),
        };
        Ok(Response::new(gossip::ClusterInfo {
            members: vec![member],
        }))
    }
}
