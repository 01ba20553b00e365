//! The `PersistentSubscriptions` service: subscription groups kept by the
//! server, as KurrentDB keeps them. `settings` holds a group's definition and
//! its conversions, `group` its live state (in flight, acks, retries, parking,
//! the checkpoint), this module the calls, the registry of groups and the
//! task that drives each group's timers and live reads.
//!
//! What it follows, with the server sources (KurrentDB `src/`, read at commit
//! 44996ed05) is written down in `docs/persistent-subscriptions.md`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

use super::convert::{stream_name, uuid_from_wire};
use super::status::{access_denied, shutting_down};
use crate::proto::persistent_subscriptions::{
    self as wire, persistent_subscriptions_server::PersistentSubscriptions, read_req, read_resp,
    CreateReq, CreateResp, DeleteReq, DeleteResp, GetInfoReq, GetInfoResp, ListReq, ListResp,
    ReadReq, ReadResp, ReplayParkedReq, ReplayParkedResp, UpdateReq, UpdateResp,
};
use crate::security::{self, Access, Principal};
use crate::shared::Shared;
use crate::store::{Expected, Proposed, Store, JSON};

mod group;
mod settings;

use group::{Answer, Group, NackAction};
use settings::{Definition, Source};

/// The stream group definitions are persisted to, and their event type.
const CONFIG_STREAM: &str = "$persistentSubscriptionConfig";
const CONFIG_TYPE: &str = "$PersistentConfig";
/// How long a group's task sleeps at most: it also notices, this often, that
/// the server stopped.
const IDLE_TICK: Duration = Duration::from_millis(500);

type Key = (String, String);

/// A group and what its task waits on.
struct Cell {
    group: Mutex<Group>,
    wake: Arc<Notify>,
    /// Cancelled when the group is deleted, updated or restarted: its task and
    /// its consumers' calls end.
    retired: CancellationToken,
}

impl Cell {
    fn lock(&self) -> MutexGuard<'_, Group> {
        self.group
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The groups of one serving run of the server. Dropped when the server stops
/// serving (its routes go): then every group's task and consumer call ends, and
/// a restart loads the groups again from the store.
#[derive(Default)]
struct Registry(Mutex<BTreeMap<Key, Arc<Cell>>>);

impl Drop for Registry {
    fn drop(&mut self) {
        let groups = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
        for cell in groups.values() {
            cell.retired.cancel();
        }
    }
}

/// The `event_store.client.persistent_subscriptions.PersistentSubscriptions`
/// service. Built when the server starts serving: it loads the groups from the
/// configuration stream and their checkpoints, as the server does at start-up.
#[derive(Clone)]
pub(crate) struct PersistentService {
    shared: Arc<Shared>,
    /// Locked after the store (never the other way round), before a group.
    groups: Arc<Registry>,
}

impl PersistentService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let service = PersistentService {
            shared,
            groups: Arc::default(),
        };
        let definitions: Vec<Definition> = service.shared.read(|store| {
            group::last_event(store, CONFIG_STREAM)
                .filter(|r| &*r.event_type == CONFIG_TYPE)
                .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.data).ok())
                .and_then(|config| config.get("Entries").and_then(|e| e.as_array()).cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(Definition::from_entry)
                .collect()
        });
        service.shared.write(|store| {
            let mut groups = service.lock_groups();
            for definition in definitions {
                service.install(store, &mut groups, definition);
            }
        });
        service
    }

    fn lock_groups(&self) -> MutexGuard<'_, BTreeMap<Key, Arc<Cell>>> {
        self.groups
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Loads a group and starts its task.
    fn install(
        &self,
        store: &Store,
        groups: &mut BTreeMap<Key, Arc<Cell>>,
        definition: Definition,
    ) -> Arc<Cell> {
        let key = (
            definition.source.name().to_owned(),
            definition.group.clone(),
        );
        let cell = Arc::new(Cell {
            group: Mutex::new(Group::load(store, definition)),
            wake: Arc::new(Notify::new()),
            retired: CancellationToken::new(),
        });
        if let Some(old) = groups.insert(key, Arc::clone(&cell)) {
            old.retired.cancel();
        }
        tokio::spawn(drive(
            Arc::clone(&self.shared),
            Arc::downgrade(&cell),
            Arc::clone(&cell.wake),
            cell.retired.clone(),
        ));
        cell
    }

    fn find(&self, source: &str, group: &str) -> Result<Arc<Cell>, Status> {
        self.lock_groups()
            .get(&(source.to_owned(), group.to_owned()))
            .cloned()
            .ok_or_else(|| does_not_exist(group, source))
    }

    /// Writes every group's definition as one `$PersistentConfig` event, as
    /// the server does after each change.
    fn save_config(store: &mut Store, groups: &BTreeMap<Key, Arc<Cell>>, user: &str) {
        let entries: Vec<serde_json::Value> = groups
            .values()
            .map(|cell| cell.lock().definition.entry())
            .collect();
        let body = serde_json::json!({
            "Version": "2",
            "Updated": iso8601_now(),
            "UpdatedBy": user,
            "Entries": entries,
        });
        store.append(
            CONFIG_STREAM,
            Expected::Any,
            vec![Proposed {
                id: uuid::Uuid::new_v4(),
                event_type: CONFIG_TYPE.to_owned(),
                content_type: JSON.to_owned(),
                data: body.to_string().into(),
                custom_metadata: bytes::Bytes::new(),
            }],
        );
    }

    fn principal(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        super::grpc_caller(&self.shared.options, metadata)
    }

    /// Create, Update, Delete, ReplayParked and RestartSubsystem: `$admins`.
    fn require_admin(&self, metadata: &MetadataMap) -> Result<String, Status> {
        match self.principal(metadata)? {
            Principal::Unrestricted | Principal::User { admin: true } => Ok(user_name(metadata)),
            _ => Err(access_denied()),
        }
    }

    /// GetInfo and List: any authenticated user.
    fn require_user(&self, metadata: &MetadataMap) -> Result<(), Status> {
        match self.principal(metadata)? {
            Principal::Anonymous => Err(access_denied()),
            _ => Ok(()),
        }
    }
}

/// The task of one group: pumps it when a consumer or the log changes and when
/// a timer (message timeout, checkpoint) is due; ends when the group is retired
/// or the server that held it is gone.
async fn drive(
    shared: Arc<Shared>,
    cell: Weak<Cell>,
    wake: Arc<Notify>,
    retired: CancellationToken,
) {
    let mut appended = shared.appended.subscribe();
    loop {
        let Some(strong) = cell.upgrade() else { return };
        if retired.is_cancelled() {
            return;
        }
        appended.borrow_and_update();
        let now = Instant::now();
        let deadline = shared.write(|store| {
            let mut group = strong.lock();
            group.pump(store, now);
            group.next_deadline()
        });
        drop(strong);
        let sleep = deadline.map_or(IDLE_TICK, |d| {
            d.saturating_duration_since(now).min(IDLE_TICK)
        });
        tokio::select! {
            changed = appended.changed() => if changed.is_err() { return },
            () = wake.notified() => {}
            () = tokio::time::sleep(sleep) => {}
            () = retired.cancelled() => return,
        }
    }
}

#[tonic::async_trait]
impl PersistentSubscriptions for PersistentService {
    async fn create(&self, request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        let user = self.require_admin(request.metadata())?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("create options are missing"))?;
        let definition = settings::from_create(options)?;
        let (source, group) = (
            definition.source.name().to_owned(),
            definition.group.clone(),
        );
        if matches!(&definition.source, Source::Stream(s) if s == "$all") {
            return Err(failed(
                &group,
                &source,
                "Persistent subscriptions to $all are only supported over gRPC through gRPC clients",
            ));
        }
        self.shared.write(|store| {
            let mut groups = self.lock_groups();
            if groups.contains_key(&(source.clone(), group.clone())) {
                return Err(exists(&group, &source));
            }
            if !settings::STRATEGIES.contains(&definition.settings.strategy.as_str()) {
                let reason = format!(
                    "Consumer strategy {} does not exist.",
                    definition.settings.strategy
                );
                return Err(failed(&group, &source, &reason));
            }
            if let Some(reason) =
                settings::invalid_start(definition.settings.start, store.end_position())
            {
                return Err(failed(&group, &source, &reason));
            }
            self.install(store, &mut groups, definition);
            Self::save_config(store, &groups, &user);
            Ok(())
        })?;
        Ok(Response::new(CreateResp {}))
    }

    async fn update(&self, request: Request<UpdateReq>) -> Result<Response<UpdateResp>, Status> {
        let user = self.require_admin(request.metadata())?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("update options are missing"))?;
        let mut definition = settings::from_update(options)?;
        let (source, group) = (
            definition.source.name().to_owned(),
            definition.group.clone(),
        );
        self.shared.write(|store| {
            let mut groups = self.lock_groups();
            let Some(old) = groups.get(&(source.clone(), group.clone())).cloned() else {
                return Err(does_not_exist(&group, &source));
            };
            if !settings::STRATEGIES.contains(&definition.settings.strategy.as_str()) {
                let reason = format!(
                    "Consumer strategy {} does not exist.",
                    definition.settings.strategy
                );
                return Err(failed(&group, &source, &reason));
            }
            if let Some(reason) =
                settings::invalid_start(definition.settings.start, store.end_position())
            {
                return Err(failed(&group, &source, &reason));
            }
            {
                let mut old_group = old.lock();
                // Update cannot change a `$all` group's filter.
                if let Source::All(filter) = &old_group.definition.source {
                    definition.source = Source::All(filter.clone());
                }
                old_group.drop_clients(&dropped(&group, &source));
            }
            // A new group on the same key: the checkpoint stream is kept, so an
            // existing checkpoint wins over the new start.
            self.install(store, &mut groups, definition);
            Self::save_config(store, &groups, &user);
            Ok(())
        })?;
        Ok(Response::new(UpdateResp {}))
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        use wire::delete_req::options::StreamOption;
        let user = self.require_admin(request.metadata())?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("delete options are missing"))?;
        let source = match options.stream_option {
            Some(StreamOption::StreamIdentifier(id)) => stream_name(Some(id))?,
            Some(StreamOption::All(())) => "$all".to_owned(),
            None => return Err(Status::invalid_argument("delete names no stream")),
        };
        let group = options.group_name;
        self.shared.write(|store| {
            let mut groups = self.lock_groups();
            let Some(cell) = groups.remove(&(source.clone(), group.clone())) else {
                return Err(does_not_exist(&group, &source));
            };
            cell.lock().drop_clients(&dropped(&group, &source));
            cell.retired.cancel();
            for stream in [
                group::checkpoint_stream(&source, &group),
                group::parked_stream(&source, &group),
            ] {
                if store.last_revision(&stream).is_some() {
                    store.soft_delete(&stream, Expected::Any);
                }
            }
            Self::save_config(store, &groups, &user);
            Ok(())
        })?;
        Ok(Response::new(DeleteResp {}))
    }

    type ReadStream = ReceiverStream<Result<ReadResp, Status>>;

    async fn read(
        &self,
        request: Request<Streaming<ReadReq>>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        use read_req::options::{uuid_option, StreamOption};
        let token = self.shared.faults.token();
        let principal = self.principal(request.metadata())?;
        let connection_name = request
            .metadata()
            .get("connection-name")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("<unknown>")
            .to_owned();
        let username = user_name(request.metadata());
        let from = request
            .remote_addr()
            .map_or_else(String::new, |a| a.to_string());
        let mut requests = request.into_inner();
        let Some(read_req::Content::Options(options)) =
            requests.message().await?.and_then(|m| m.content)
        else {
            return Err(Status::invalid_argument(
                "the first message of a persistent subscription read must be its options",
            ));
        };
        let source = match options.stream_option {
            Some(StreamOption::StreamIdentifier(id)) => stream_name(Some(id))?,
            Some(StreamOption::All(())) => "$all".to_owned(),
            None => return Err(Status::invalid_argument("read names no stream")),
        };
        let group = options.group_name;
        if !security::allowed(&principal, &source, Access::Read) {
            return Err(access_denied());
        }
        let structured = !matches!(
            options.uuid_option.and_then(|u| u.content),
            Some(uuid_option::Content::String(()))
        );
        let slots = usize::try_from(options.buffer_size.max(1)).unwrap_or(1);
        let cell = self.find(&source, &group)?;
        let (tx, rx) = mpsc::channel(slots + 2);
        let client = {
            let mut g = cell.lock();
            if g.is_full() {
                return Err(max_subscribers(&group, &source));
            }
            let confirmation = ReadResp {
                content: Some(read_resp::Content::SubscriptionConfirmation(
                    read_resp::SubscriptionConfirmation {
                        subscription_id: g.subscription_id(),
                    },
                )),
            };
            tx.try_send(Ok(confirmation))
                .map_err(|_| Status::internal("the reply channel is full"))?;
            g.connect(
                tx.clone(),
                slots,
                structured,
                from,
                username,
                connection_name,
            )
        };
        cell.wake.notify_one();
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = requests.message() => next,
                    () = token.cancelled() => {
                        let _ = tx.try_send(Err(shutting_down()));
                        break;
                    }
                    () = cell.retired.cancelled() => break,
                    () = tx.closed() => break,
                };
                let answer = match next.ok().flatten().and_then(|m| m.content) {
                    Some(read_req::Content::Ack(ack)) => Answer::Ack(ids(ack.ids)),
                    Some(read_req::Content::Nack(nack)) => {
                        use read_req::nack::Action;
                        let action = match Action::try_from(nack.action) {
                            Ok(Action::Park) => NackAction::Park,
                            Ok(Action::Skip) => NackAction::Skip,
                            Ok(Action::Stop) => NackAction::Stop,
                            Ok(Action::Retry | Action::Unknown) | Err(_) => NackAction::Retry,
                        };
                        Answer::Nack(ids(nack.ids), action, nack.reason)
                    }
                    Some(read_req::Content::Options(_)) => continue,
                    None => break,
                };
                let stop = shared.write(|store| cell.lock().answer(store, answer));
                cell.wake.notify_one();
                if stop {
                    let g = cell.lock();
                    let (source, group) = (
                        g.definition.source.name().to_owned(),
                        g.definition.group.clone(),
                    );
                    drop(g);
                    let _ = tx.try_send(Err(dropped(&group, &source)));
                    break;
                }
            }
            shared.write(|store| cell.lock().disconnect(store, client));
            cell.wake.notify_one();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_info(
        &self,
        request: Request<GetInfoReq>,
    ) -> Result<Response<GetInfoResp>, Status> {
        use wire::get_info_req::options::StreamOption;
        self.require_user(request.metadata())?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("get info options are missing"))?;
        let source = match options.stream_option {
            Some(StreamOption::StreamIdentifier(id)) => stream_name(Some(id))?,
            Some(StreamOption::All(())) => "$all".to_owned(),
            None => return Err(Status::invalid_argument("get info names no stream")),
        };
        let cell = self.find(&source, &options.group_name)?;
        let info = self
            .shared
            .read(|store| cell.lock().info(store, Instant::now()));
        Ok(Response::new(GetInfoResp {
            subscription_info: Some(info),
        }))
    }

    async fn replay_parked(
        &self,
        request: Request<ReplayParkedReq>,
    ) -> Result<Response<ReplayParkedResp>, Status> {
        use wire::replay_parked_req::options::{StopAtOption, StreamOption};
        self.require_admin(request.metadata())?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("replay parked options are missing"))?;
        let source = match options.stream_option {
            Some(StreamOption::StreamIdentifier(id)) => stream_name(Some(id))?,
            Some(StreamOption::All(())) => "$all".to_owned(),
            None => return Err(Status::invalid_argument("replay parked names no stream")),
        };
        let stop_at = match options.stop_at_option {
            Some(StopAtOption::StopAt(n)) if n >= 0 => Some(n.unsigned_abs()),
            _ => None,
        };
        let cell = self.find(&source, &options.group_name)?;
        self.shared
            .write(|store| cell.lock().replay_parked(store, stop_at));
        cell.wake.notify_one();
        Ok(Response::new(ReplayParkedResp {}))
    }

    async fn list(&self, request: Request<ListReq>) -> Result<Response<ListResp>, Status> {
        use wire::list_req::options::ListOption;
        use wire::list_req::stream_option::StreamOption;
        self.require_user(request.metadata())?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("list options are missing"))?;
        let only = match options.list_option {
            Some(ListOption::ListForStream(s)) => Some(match s.stream_option {
                Some(StreamOption::Stream(id)) => stream_name(Some(id))?,
                Some(StreamOption::All(())) => "$all".to_owned(),
                None => return Err(Status::invalid_argument("list names no stream")),
            }),
            Some(ListOption::ListAllSubscriptions(())) | None => None,
        };
        let cells: Vec<Arc<Cell>> = self
            .lock_groups()
            .iter()
            .filter(|((source, _), _)| only.as_ref().is_none_or(|o| o == source))
            .map(|(_, cell)| Arc::clone(cell))
            .collect();
        if let Some(stream) = &only {
            if cells.is_empty() {
                // The server answers a stream without groups with NotFound.
                return Err(does_not_exist("", stream));
            }
        }
        let now = Instant::now();
        let subscriptions = self.shared.read(|store| {
            cells
                .iter()
                .map(|cell| cell.lock().info(store, now))
                .collect()
        });
        Ok(Response::new(ListResp { subscriptions }))
    }

    async fn restart_subsystem(&self, request: Request<()>) -> Result<Response<()>, Status> {
        self.require_admin(request.metadata())?;
        // As a restart: every consumer is dropped and every group reloads from
        // its definition and checkpoint.
        self.shared.write(|store| {
            let mut groups = self.lock_groups();
            let definitions: Vec<Definition> = groups
                .values()
                .map(|cell| {
                    let mut g = cell.lock();
                    let (source, group) = (
                        g.definition.source.name().to_owned(),
                        g.definition.group.clone(),
                    );
                    g.drop_clients(&dropped(&group, &source));
                    g.definition.clone()
                })
                .collect();
            for definition in definitions {
                self.install(store, &mut groups, definition);
            }
        });
        Ok(Response::new(()))
    }
}

fn ids(ids: Vec<crate::proto::shared::Uuid>) -> Vec<uuid::Uuid> {
    ids.into_iter()
        .filter_map(|id| uuid_from_wire(Some(id)).ok())
        .collect()
}

/// The login of a basic `authorization` header (for `UpdatedBy` and the
/// connection list); empty without one.
fn user_name(metadata: &MetadataMap) -> String {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|d| d.split_once(':').map(|(name, _)| name.to_owned()))
        .unwrap_or_default()
}

fn status_with(code: Code, message: String, exception: &str, group: &str, stream: &str) -> Status {
    let mut metadata = MetadataMap::new();
    for (key, value) in [
        ("exception", exception),
        ("stream-name", stream),
        ("group-name", group),
    ] {
        // Values that cannot travel as headers (unicode names) are left out.
        if let Ok(value) = MetadataValue::try_from(value) {
            metadata.insert(key, value);
        }
    }
    Status::with_metadata(code, message, metadata)
}

fn exists(group: &str, stream: &str) -> Status {
    status_with(
        Code::AlreadyExists,
        format!("Subscription group {group} on stream {stream} exists."),
        "persistent-subscription-exists",
        group,
        stream,
    )
}

fn does_not_exist(group: &str, stream: &str) -> Status {
    status_with(
        Code::NotFound,
        format!("Subscription group {group} on stream {stream} does not exist."),
        "persistent-subscription-does-not-exist",
        group,
        stream,
    )
}

fn failed(group: &str, stream: &str, reason: &str) -> Status {
    let mut status = status_with(
        Code::Internal,
        format!("Subscription group {group} on stream {stream} failed: '{reason}'"),
        "persistent-subscription-failed",
        group,
        stream,
    );
    if let Ok(value) = MetadataValue::try_from(reason) {
        status.metadata_mut().insert("reason", value);
    }
    status
}

fn max_subscribers(group: &str, stream: &str) -> Status {
    status_with(
        Code::FailedPrecondition,
        format!("Maximum subscriptions reached for subscription group {group} on stream {stream}."),
        "maximum-subscribers-reached",
        group,
        stream,
    )
}

fn dropped(group: &str, stream: &str) -> Status {
    status_with(
        Code::Cancelled,
        format!("Subscription group {group} on stream {stream} was dropped."),
        "persistent-subscription-dropped",
        group,
        stream,
    )
}

/// Now as `2026-12-08T00:41:53.123Z` (the server's `DateTime` in JSON).
fn iso8601_now() -> String {
    crate::clock::utc(std::time::SystemTime::now(), 3)
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_prints_as_an_iso_8601_utc_time() {
        let now = super::iso8601_now();
        assert_eq!(now.len(), 24, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
        let year: u32 = now[..4].parse().expect("a year");
        assert!(year >= 2024, "{now}");
    }
}
