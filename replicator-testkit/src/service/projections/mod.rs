//! The `Projections` service (`event_store.client.projections.Projections`)
//! and the projection part of the server's HTTP API, on definitions stored as
//! the real server stores them ([`registry`]).
//!
//! # What it is, and what it is not
//!
//! A **management** API: create, update, delete, statistics, enable,
//! disable/abort, reset, state, result and restart answer as KurrentDB does,
//! and every change is written to `$projections-{name}` and
//! `$projections-$all` as the server writes it. The testkit **runs no query**
//! (it has no JavaScript engine): a running projection reads nothing, emits
//! nothing, and its state and result stay `{}`. The five standard
//! projections (`$by_category`, `$stream_by_category`, `$streams`,
//! `$by_event_type`, `$by_correlation_id`) exist, stopped, without being
//! written to the store (a fresh server's `$all` stays empty, which the
//! workspace's tests count on); enabling or changing one writes it.
//! [`ServerOptions::no_projections`](crate::ServerOptions::no_projections)
//! turns the whole service off, as a node with `--run-projections=None`
//! (gRPC `Unimplemented`, the HTTP routes 404).
//!
//! # Facts it follows
//!
//! From KurrentDB's source (`src/Protos/Grpc/projections.proto`,
//! `KurrentDB.Projections.Management/Services/Grpc/ProjectionManagement.*.cs`,
//! `ManagedProjection.cs`, `ProjectionsController.cs`, at 44996ed05) and
//! kurrentdbclient 1.3.5, which the conformance suite drives:
//!
//! - **Create**: handler type `JS`; continuous and transient projections are
//!   named by the request, one-time ones get a new GUID name; emit only for
//!   continuous ones; `track_emitted_streams` without `emit_enabled` is
//!   refused with `Unknown`, "EmitEnabled must be set to true to track emitted
//!   streams." (the server throws `InvalidOperationException`); engine
//!   version 0 (unspecified, or any value below) and 1 are v1, 2 is v2 (which also refuses
//!   tracking); any other is `InvalidArgument`. **gRPC Create starts the
//!   projection** (the server posts it `enabled: true`); only the HTTP API
//!   creates one stopped.
//! - **Errors** as the current server answers (`ProjectionManagement.cs`
//!   `MapFailure`, KS ff13ff945; older servers said `Unknown`, "Envelope
//!   callback expected …", which the Python client maps too; this server
//!   gives the current answers only): an unknown name is `NotFound`,
//!   "Projection '{name}' not found"; a name clash `AlreadyExists`; a refused
//!   operation (`OperationFailed`) `FailedPrecondition`: deleting a standard
//!   projection ("We currently don't allow for the deletion of System
//!   Projections.") or one not stopped (our message).
//! - **Update** sets the query, and `emit_enabled` when sent
//!   (`no_emit_options` keeps it); the version goes up by one.
//! - **Disable** (`write_checkpoint: true`) and **Abort** (false) stop it;
//!   **Enable** starts it; **Reset** raises epoch and version; each writes a
//!   new `$ProjectionUpdated`.
//! - **Statistics**: one message per projection (by name, all, or by mode;
//!   no mode and no name is all); `mode` is `ProjectionMode.ToString()`
//!   (`Continuous`, `Transient`, `OneTime`); `status` `Running` or `Stopped`;
//!   a stopped projection reports epoch and version -1 and empty positions,
//!   as a never-started one does on the server; a running one its stored
//!   epoch and version, progress 100 and `position` the end of `$all` as
//!   `C:{commit}/P:{prepare}` (a TF position, how the server prints a
//!   `fromAll` projection's checkpoint tag). `lastCheckpoint` is empty.
//! - **Access**: with users configured, statistics, state and result need a
//!   user, every change an admin (`PermissionDenied`, "Access Denied");
//!   wrong credentials are `Unauthenticated`. The server's exact policy
//!   (its `$ops` role, anonymous listing) is simplified.
//! - **Stored definition** (`$ProjectionUpdated`, JSON): `HandlerType`,
//!   `Query`, `Mode` (the .NET enum number: Transient 0, OneTime 1,
//!   Continuous 4), `Enabled`, `Deleted`, `Deleting`, `SourceDefinition`,
//!   `EmitEnabled`, `CreateTempStreams`, `CheckpointsDisabled`,
//!   `TrackEmittedStreams`, `Epoch`, `Version`, `RunAs` (null here),
//!   `EngineVersion`. `$projections-$all` gets `$ProjectionCreated` (data:
//!   the name as text) and, on delete, `$ProjectionDeleted`; a delete also
//!   soft-deletes `$projections-{name}`.
//! - **HTTP** (same port, HTTP/1.1; see [`http`]): `POST
//!   /projections/{continuous|transient|onetime}?name=&type=JS&enabled=&emit=&trackemittedstreams=`
//!   with the query as the body, 201; `enabled`, `emit` and
//!   `trackemittedstreams` are on for `yes`/`true`/`1` (`IsOn`), `enabled`
//!   defaults to on, and tracking is silently off without emit (gRPC refuses
//!   instead). `GET /projection/{name}/query` (the query as text;
//!   `?config=yes`: JSON with the query and its settings), `GET
//!   /projection/{name}` and `/projection/{name}/statistics`. Basic
//!   authentication as on gRPC; a refused one is 401.

mod http;
mod registry;

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};

use crate::proto::projections::{
    create_req, projections_server::Projections, statistics_req, statistics_resp, update_req,
    CreateReq, CreateResp, DeleteReq, DeleteResp, DisableReq, DisableResp, EnableReq, EnableResp,
    ResetReq, ResetResp, ResultReq, ResultResp, StateReq, StateResp, StatisticsReq, StatisticsResp,
    UpdateReq, UpdateResp,
};
use crate::proto::server_features::SupportedMethod;
use crate::security::Principal;
use crate::shared::Shared;
use registry::{Definition, Failure, Mode};

pub(crate) use http::{answer as http_answer, is_projection_path};

/// The service's methods as the real server lists them in `ServerFeatures`
/// (`ServerFeatures.cs`): lower-cased, Create with the
/// `track_emitted_streams` feature.
pub(crate) fn supported_methods() -> Vec<SupportedMethod> {
    [
        "create",
        "update",
        "delete",
        "statistics",
        "disable",
        "enable",
        "reset",
        "state",
        "result",
        "restartsubsystem",
    ]
    .into_iter()
    .map(|name| SupportedMethod {
        method_name: name.to_owned(),
        service_name: "event_store.client.projections.projections".to_owned(),
        features: if name == "create" {
            vec!["track_emitted_streams".to_owned()]
        } else {
            Vec::new()
        },
    })
    .collect()
}

/// What a caller may do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Read statistics, state, result: any user.
    Read,
    /// Create, change, delete: an admin.
    Manage,
}

/// Whether `principal` may do what `need` says, as [`Status`] when not.
fn check(principal: &Principal, need: Need) -> Result<(), Status> {
    let allowed = match principal {
        Principal::Unrestricted | Principal::User { admin: true } => true,
        Principal::User { admin: false } => need == Need::Read,
        Principal::Anonymous => false,
    };
    if allowed {
        Ok(())
    } else {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("exception", "access-denied".parse().expect("ASCII"));
        Err(Status::with_metadata(
            Code::PermissionDenied,
            "Access Denied",
            metadata,
        ))
    }
}

fn status_of(failure: Failure) -> Status {
    match failure {
        Failure::NotFound(name) => Status::not_found(format!("Projection '{name}' not found")),
        Failure::Exists(name) => {
            Status::already_exists(format!("Conflict: projection '{name}' already exists"))
        }
        Failure::Refused(reason) => Status::failed_precondition(reason),
        Failure::Invalid(reason) => Status::unknown(reason),
    }
}

/// The statistics of one projection, as [`Projections::statistics`] sends
/// them (see the module docs for the values of a testkit projection).
pub(crate) fn details(definition: &Definition, end_of_all: u64) -> statistics_resp::Details {
    let running = definition.enabled;
    statistics_resp::Details {
        core_processing_time: 0,
        version: if running { definition.version } else { -1 },
        epoch: if running { definition.epoch } else { -1 },
        effective_name: definition.name.clone(),
        writes_in_progress: 0,
        reads_in_progress: 0,
        partitions_cached: 0,
        status: if running { "Running" } else { "Stopped" }.to_owned(),
        state_reason: String::new(),
        name: definition.name.clone(),
        mode: definition.mode.name().to_owned(),
        position: if running {
            format!("C:{end_of_all}/P:{end_of_all}")
        } else {
            String::new()
        },
        progress: if running { 100.0 } else { 0.0 },
        last_checkpoint: String::new(),
        events_processed_after_restart: 0,
        checkpoint_status: String::new(),
        buffered_events: 0,
        write_pending_events_before_checkpoint: 0,
        write_pending_events_after_checkpoint: 0,
    }
}

/// `event_store.client.projections.Projections`.
pub(crate) struct ProjectionsService {
    shared: Arc<Shared>,
}

impl ProjectionsService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        ProjectionsService { shared }
    }

    /// The caller, checked for `need`.
    fn caller<T>(&self, request: &Request<T>, need: Need) -> Result<(), Status> {
        let principal = super::grpc_caller(&self.shared.options, request.metadata())?;
        check(&principal, need)
    }

    /// Changes the projection `name` with `change`.
    fn change(
        &self,
        name: &str,
        change: impl FnOnce(&mut Definition) -> Result<(), Failure>,
    ) -> Result<(), Status> {
        self.shared
            .write(|store| registry::change(store, name, change))
            .map_err(status_of)
    }

    fn empty_state(&self, name: &str) -> Result<prost_types::Value, Status> {
        self.shared
            .read(|store| registry::load(store, name))
            .ok_or_else(|| status_of(Failure::NotFound(name.to_owned())))?;
        // No query runs here: every state is the empty object.
        Ok(prost_types::Value {
            kind: Some(prost_types::value::Kind::StructValue(
                prost_types::Struct::default(),
            )),
        })
    }
}

/// The definition a create request asks for.
fn requested(options: create_req::Options) -> Result<Definition, Failure> {
    use create_req::options::Mode as Wire;
    // The server takes any value up to 0 as its default, v1.
    let engine_version = match options.engine_version {
        ..=1 => 1,
        2 => 2,
        other => {
            return Err(Failure::Invalid(format!(
                "unknown projection engine version {other}"
            )))
        }
    };
    let (mut definition, emit, track) = match options.mode {
        Some(Wire::Continuous(c)) => (
            Definition::new(c.name, Mode::Continuous, options.query, true),
            c.emit_enabled,
            c.track_emitted_streams,
        ),
        Some(Wire::Transient(t)) => (
            Definition::new(t.name, Mode::Transient, options.query, true),
            false,
            false,
        ),
        Some(Wire::OneTime(())) => (
            Definition::new(
                uuid::Uuid::new_v4().to_string(),
                Mode::OneTime,
                options.query,
                true,
            ),
            false,
            false,
        ),
        None => return Err(Failure::Invalid("the projection's mode is missing".into())),
    };
    if track && !emit {
        return Err(Failure::Invalid(
            "EmitEnabled must be set to true to track emitted streams.".into(),
        ));
    }
    if track && engine_version == 2 {
        return Err(Failure::Invalid(
            "Tracking emitted streams is not supported by engine v2.".into(),
        ));
    }
    if definition.name.is_empty() {
        return Err(Failure::Invalid("the projection's name is empty".into()));
    }
    definition.emit_enabled = emit;
    definition.track_emitted_streams = track;
    definition.engine_version = engine_version;
    Ok(definition)
}

fn missing() -> Status {
    Status::invalid_argument("the request's options are missing")
}

type StatisticsStream = futures::stream::Iter<std::vec::IntoIter<Result<StatisticsResp, Status>>>;

#[tonic::async_trait]
impl Projections for ProjectionsService {
    type StatisticsStream = StatisticsStream;

    async fn create(&self, request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        self.caller(&request, Need::Manage)?;
        let options = request.into_inner().options.ok_or_else(missing)?;
        let definition = requested(options).map_err(status_of)?;
        self.shared
            .write(|store| registry::create(store, &definition))
            .map_err(status_of)?;
        Ok(Response::new(CreateResp {}))
    }

    async fn update(&self, request: Request<UpdateReq>) -> Result<Response<UpdateResp>, Status> {
        self.caller(&request, Need::Manage)?;
        let options = request.into_inner().options.ok_or_else(missing)?;
        self.change(&options.name, |d| {
            d.query = options.query;
            if let Some(update_req::options::EmitOption::EmitEnabled(emit)) = options.emit_option {
                d.emit_enabled = emit;
                d.track_emitted_streams &= emit;
            }
            d.version += 1;
            Ok(())
        })?;
        Ok(Response::new(UpdateResp {}))
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        self.caller(&request, Need::Manage)?;
        let options = request.into_inner().options.ok_or_else(missing)?;
        // Emitted, state and checkpoint streams: a testkit projection has none.
        self.shared
            .write(|store| registry::delete(store, &options.name))
            .map_err(status_of)?;
        Ok(Response::new(DeleteResp {}))
    }

    async fn statistics(
        &self,
        request: Request<StatisticsReq>,
    ) -> Result<Response<Self::StatisticsStream>, Status> {
        use statistics_req::options::Mode as Wire;
        self.caller(&request, Need::Read)?;
        let mode = request.into_inner().options.and_then(|o| o.mode);
        let (definitions, end) = self
            .shared
            .read(|store| (registry::all(store), store.end_position()));
        let chosen: Vec<Definition> = match mode {
            Some(Wire::Name(name)) if !name.is_empty() => {
                let found: Vec<_> = definitions.into_iter().filter(|d| d.name == name).collect();
                if found.is_empty() {
                    return Err(status_of(Failure::NotFound(name)));
                }
                found
            }
            Some(Wire::Transient(())) => only(definitions, Mode::Transient),
            Some(Wire::Continuous(())) => only(definitions, Mode::Continuous),
            Some(Wire::OneTime(())) => only(definitions, Mode::OneTime),
            Some(Wire::All(()) | Wire::Name(_)) | None => definitions,
        };
        let replies: Vec<_> = chosen
            .iter()
            .map(|d| {
                Ok(StatisticsResp {
                    details: Some(details(d, end)),
                })
            })
            .collect();
        Ok(Response::new(futures::stream::iter(replies)))
    }

    async fn disable(&self, request: Request<DisableReq>) -> Result<Response<DisableResp>, Status> {
        self.caller(&request, Need::Manage)?;
        let options = request.into_inner().options.ok_or_else(missing)?;
        // Disable (write_checkpoint) and Abort differ in the checkpoint a
        // running query writes: there is none here.
        self.change(&options.name, |d| {
            d.enabled = false;
            Ok(())
        })?;
        Ok(Response::new(DisableResp {}))
    }

    async fn enable(&self, request: Request<EnableReq>) -> Result<Response<EnableResp>, Status> {
        self.caller(&request, Need::Manage)?;
        let options = request.into_inner().options.ok_or_else(missing)?;
        self.change(&options.name, |d| {
            d.enabled = true;
            Ok(())
        })?;
        Ok(Response::new(EnableResp {}))
    }

    async fn reset(&self, request: Request<ResetReq>) -> Result<Response<ResetResp>, Status> {
        self.caller(&request, Need::Manage)?;
        let options = request.into_inner().options.ok_or_else(missing)?;
        self.change(&options.name, |d| {
            d.epoch += 1;
            d.version += 1;
            Ok(())
        })?;
        Ok(Response::new(ResetResp {}))
    }

    async fn state(&self, request: Request<StateReq>) -> Result<Response<StateResp>, Status> {
        self.caller(&request, Need::Read)?;
        let options = request.into_inner().options.ok_or_else(missing)?;
        let state = self.empty_state(&options.name)?;
        Ok(Response::new(StateResp { state: Some(state) }))
    }

    async fn result(&self, request: Request<ResultReq>) -> Result<Response<ResultResp>, Status> {
        self.caller(&request, Need::Read)?;
        let options = request.into_inner().options.ok_or_else(missing)?;
        let result = self.empty_state(&options.name)?;
        Ok(Response::new(ResultResp {
            result: Some(result),
        }))
    }

    async fn restart_subsystem(&self, request: Request<()>) -> Result<Response<()>, Status> {
        // Nothing runs, so there is nothing to restart.
        self.caller(&request, Need::Manage)?;
        Ok(Response::new(()))
    }
}

fn only(definitions: Vec<Definition>, mode: Mode) -> Vec<Definition> {
    definitions.into_iter().filter(|d| d.mode == mode).collect()
}
