//! Projection definitions, kept where the real server keeps them: one
//! `$ProjectionUpdated` event (JSON `PersistedState`) per change in
//! `$projections-{name}`, the names registered by `$ProjectionCreated` (and
//! withdrawn by `$ProjectionDeleted`) events in `$projections-$all`. Nothing
//! else holds them: every call reads them from the store, so they survive a
//! restart as the store does, and a replicated `$projections-*` stream shows
//! on the other server as it would on a real one.

use bytes::Bytes;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::store::{Expected, Proposed, Store, BINARY, JSON};

/// The registration stream (`ProjectionNamesBuilder.ProjectionsRegistrationStream`).
pub(crate) const REGISTRATION: &str = "$projections-$all";
/// The event type of a definition (`ProjectionEventTypes.ProjectionUpdated`).
pub(crate) const UPDATED: &str = "$ProjectionUpdated";
const CREATED: &str = "$ProjectionCreated";
const DELETED: &str = "$ProjectionDeleted";

/// The standard projections every node with projections has
/// (`ProjectionsSubsystem._standardProjections`).
pub(crate) const SYSTEM: [&str; 5] = [
    "$by_category",
    "$stream_by_category",
    "$streams",
    "$by_event_type",
    "$by_correlation_id",
];

/// The stream of a projection's definition.
pub(crate) fn definition_stream(name: &str) -> String {
    format!("$projections-{name}")
}

/// `ProjectionMode`, with the numbers the server's JSON carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Transient,
    OneTime,
    Continuous,
}

impl Mode {
    /// The number `PersistedState.Mode` holds (.NET enum value).
    fn number(self) -> i64 {
        match self {
            Mode::Transient => 0,
            Mode::OneTime => 1,
            Mode::Continuous => 4,
        }
    }

    fn from_number(n: i64) -> Option<Mode> {
        match n {
            0 => Some(Mode::Transient),
            1 => Some(Mode::OneTime),
            4 => Some(Mode::Continuous),
            _ => None,
        }
    }

    /// `ProjectionMode.ToString()`: what Statistics reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Transient => "Transient",
            Mode::OneTime => "OneTime",
            Mode::Continuous => "Continuous",
        }
    }
}

/// A projection's definition and whether it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Definition {
    pub name: String,
    pub mode: Mode,
    pub handler_type: String,
    pub query: String,
    pub enabled: bool,
    pub emit_enabled: bool,
    pub track_emitted_streams: bool,
    pub checkpoints_disabled: bool,
    pub epoch: i64,
    pub version: i64,
    pub engine_version: i32,
}

impl Definition {
    /// A new JS projection, stopped or running.
    pub(crate) fn new(name: String, mode: Mode, query: String, enabled: bool) -> Definition {
        Definition {
            name,
            mode,
            handler_type: "JS".to_owned(),
            query,
            enabled,
            emit_enabled: false,
            track_emitted_streams: false,
            checkpoints_disabled: mode != Mode::Continuous,
            epoch: 0,
            version: 0,
            engine_version: 1,
        }
    }

    /// A system projection as a fresh node has it: continuous, stopped.
    fn system(name: &str) -> Definition {
        Definition {
            handler_type: "native".to_owned(),
            ..Definition::new(name.to_owned(), Mode::Continuous, String::new(), false)
        }
    }

    /// Whether it is one of the standard projections (whose names start
    /// with `$`, as every internal one does).
    pub(crate) fn is_system(&self) -> bool {
        is_system(&self.name)
    }

    /// The `PersistedState` JSON (`ManagedProjection.BuildPersistedStateEvent`).
    pub(crate) fn persisted_state(&self) -> Value {
        json!({
            "HandlerType": self.handler_type,
            "Query": self.query,
            "Mode": self.mode.number(),
            "Enabled": self.enabled,
            "Deleted": false,
            "Deleting": false,
            "SourceDefinition": null,
            "EmitEnabled": self.emit_enabled,
            "CreateTempStreams": false,
            "CheckpointsDisabled": self.checkpoints_disabled,
            "TrackEmittedStreams": self.track_emitted_streams,
            "Epoch": self.epoch,
            "Version": self.version,
            "RunAs": null,
            "EngineVersion": self.engine_version,
        })
    }

    fn from_persisted(name: &str, state: &Value) -> Option<Definition> {
        let text = |key: &str| state.get(key).and_then(Value::as_str).map(str::to_owned);
        let flag = |key: &str| state.get(key).and_then(Value::as_bool).unwrap_or(false);
        let number = |key: &str| state.get(key).and_then(Value::as_i64);
        Some(Definition {
            name: name.to_owned(),
            mode: Mode::from_number(number("Mode")?)?,
            handler_type: text("HandlerType").unwrap_or_else(|| "JS".to_owned()),
            query: text("Query").unwrap_or_default(),
            enabled: flag("Enabled"),
            emit_enabled: flag("EmitEnabled"),
            track_emitted_streams: flag("TrackEmittedStreams"),
            checkpoints_disabled: flag("CheckpointsDisabled"),
            epoch: number("Epoch").unwrap_or(0),
            version: number("Version").unwrap_or(0),
            engine_version: number("EngineVersion")
                .and_then(|n| i32::try_from(n).ok())
                .unwrap_or(1),
        })
    }
}

/// Whether `name` is a standard projection's.
pub(crate) fn is_system(name: &str) -> bool {
    SYSTEM.contains(&name)
}

/// Why a management call fails (each service turns it into its own answer).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No projection of that name.
    NotFound(String),
    /// A projection of that name exists (the server's `Conflict`).
    Exists(String),
    /// The server's `OperationFailed`: refused in the projection's state.
    Refused(String),
    /// The request itself is invalid (the server throws).
    Invalid(String),
}

/// The definition of `name`: its last `$ProjectionUpdated`, or for a
/// standard projection never changed, the stopped default.
pub(crate) fn load(store: &Store, name: &str) -> Option<Definition> {
    let stream = definition_stream(name);
    if let Ok(range) = store.readable(&stream) {
        let records = store.stream_records(&stream, range);
        if let Some(record) = records.iter().rev().find(|r| &*r.event_type == UPDATED) {
            let state: Value = serde_json::from_slice(&record.data).ok()?;
            return Definition::from_persisted(name, &state);
        }
    }
    is_system(name).then(|| Definition::system(name))
}

/// Every projection, the standard ones first, then the registered ones in
/// the order they were created.
pub(crate) fn all(store: &Store) -> Vec<Definition> {
    let mut names: Vec<String> = SYSTEM.iter().map(|&n| n.to_owned()).collect();
    if let Ok(range) = store.readable(REGISTRATION) {
        for record in store.stream_records(REGISTRATION, range) {
            let name = String::from_utf8_lossy(&record.data).into_owned();
            match &*record.event_type {
                CREATED if !names.contains(&name) => names.push(name),
                DELETED => names.retain(|n| *n != name),
                _ => {}
            }
        }
    }
    names.iter().filter_map(|name| load(store, name)).collect()
}

fn event(event_type: &str, content_type: &str, data: Vec<u8>) -> Proposed {
    Proposed {
        id: Uuid::new_v4(),
        event_type: event_type.to_owned(),
        content_type: content_type.to_owned(),
        data: Bytes::from(data),
        custom_metadata: Bytes::new(),
    }
}

/// Writes `definition` as its projection's current state.
pub(crate) fn save(store: &mut Store, definition: &Definition) {
    let data = definition.persisted_state().to_string().into_bytes();
    store.append(
        &definition_stream(&definition.name),
        Expected::Any,
        vec![event(UPDATED, JSON, data)],
    );
}

/// Registers and saves a new projection; [`Failure::Exists`] when the name
/// is taken.
pub(crate) fn create(store: &mut Store, definition: &Definition) -> Result<(), Failure> {
    if load(store, &definition.name).is_some() {
        return Err(Failure::Exists(definition.name.clone()));
    }
    // The name as plain UTF-8 text, as the server writes it.
    let data = definition.name.clone().into_bytes();
    store.append(
        REGISTRATION,
        Expected::Any,
        vec![event(CREATED, BINARY, data)],
    );
    save(store, definition);
    Ok(())
}

/// Changes the projection `name` with `change` and saves it.
pub(crate) fn change<T>(
    store: &mut Store,
    name: &str,
    change: impl FnOnce(&mut Definition) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let mut definition = load(store, name).ok_or_else(|| Failure::NotFound(name.to_owned()))?;
    let result = change(&mut definition)?;
    save(store, &definition);
    Ok(result)
}

/// Deletes the projection `name`: refused for a standard projection and for
/// one not stopped, as the server refuses them.
pub(crate) fn delete(store: &mut Store, name: &str) -> Result<(), Failure> {
    let definition = load(store, name).ok_or_else(|| Failure::NotFound(name.to_owned()))?;
    if definition.is_system() {
        return Err(Failure::Refused(
            "We currently don't allow for the deletion of System Projections.".to_owned(),
        ));
    }
    if definition.enabled {
        return Err(Failure::Refused(format!(
            "Projection '{name}' must be stopped before it is deleted"
        )));
    }
    let data = name.as_bytes().to_vec();
    store.append(
        REGISTRATION,
        Expected::Any,
        vec![event(DELETED, BINARY, data)],
    );
    store.soft_delete(&definition_stream(name), Expected::Any);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_survives_its_persisted_state() {
        let mut definition =
            Definition::new("orders".into(), Mode::Continuous, "fromAll()".into(), false);
        definition.emit_enabled = true;
        definition.track_emitted_streams = true;
        definition.version = 3;
        let state = definition.persisted_state();
        assert_eq!(state["Mode"], 4);
        assert_eq!(state["HandlerType"], "JS");
        assert_eq!(
            Definition::from_persisted("orders", &state),
            Some(definition)
        );
    }

    #[test]
    fn create_delete_and_the_registration_stream() {
        let mut store = Store::default();
        assert_eq!(all(&store).len(), SYSTEM.len());
        let d = Definition::new("p".into(), Mode::Continuous, "q".into(), true);
        create(&mut store, &d).unwrap();
        assert_eq!(create(&mut store, &d), Err(Failure::Exists("p".into())));
        assert!(matches!(delete(&mut store, "p"), Err(Failure::Refused(_))));
        change(&mut store, "p", |d| {
            d.enabled = false;
            Ok(())
        })
        .unwrap();
        delete(&mut store, "p").unwrap();
        assert_eq!(load(&store, "p"), None);
        assert_eq!(all(&store).len(), SYSTEM.len());
        assert!(matches!(
            delete(&mut store, "$streams"),
            Err(Failure::Refused(_))
        ));
        // A name can be used again after a delete.
        create(&mut store, &d).unwrap();
        assert_eq!(load(&store, "p").map(|d| d.query), Some("q".to_owned()));
    }
}
