//! Reading a cluster's projection definitions from the streams the server
//! keeps them in: the names from `$projections-$all` (`$ProjectionCreated`,
//! withdrawn by `$ProjectionDeleted`), each definition from the last
//! `$ProjectionUpdated` of `$projections-{name}`. Plain stream reads, so they
//! work over gRPC and over the v5 TCP protocol alike ([`ClusterRead`]); the
//! gRPC API has no call that returns a query.

use std::time::Duration;

use serde_json::Value;

use super::{Definition, Mode, ProjectionsError};
use crate::cluster::{next_within, ClusterRead, Direction, ReadError, StreamFrom};

/// The registration stream.
pub const REGISTRATION_STREAM: &str = "$projections-$all";
/// The event type of a stored definition.
pub const UPDATED_EVENT_TYPE: &str = "$ProjectionUpdated";
const CREATED: &str = "$ProjectionCreated";
const DELETED: &str = "$ProjectionDeleted";

/// The stream holding the definition of the projection `name`.
pub fn definition_stream(name: &str) -> String {
    format!("$projections-{name}")
}

/// Every projection registered on the cluster `reader` reads (`side` names
/// it in errors), in registration order, each with its current definition.
/// A cluster that never ran the projection subsystem has none.
///
/// # Errors
/// A read that fails or gets no answer within `limit` (access denied means
/// the connection string's user is not an admin); a definition that does
/// not parse.
pub(super) async fn definitions(
    reader: &dyn ClusterRead,
    side: &'static str,
    limit: Duration,
) -> Result<Vec<Definition>, ProjectionsError> {
    let failed = |stream: &str, source: ReadError| ProjectionsError::Read {
        side,
        stream: stream.to_owned(),
        source,
    };
    let mut names: Vec<String> = Vec::new();
    let mut records = reader.stream_records(
        REGISTRATION_STREAM,
        StreamFrom::Start,
        Direction::Forwards,
        usize::MAX,
    );
    loop {
        match next_within(limit, &mut records).await {
            Ok(Some(record)) => {
                let name = String::from_utf8_lossy(&record.data).trim().to_owned();
                match record.event_type.as_str() {
                    CREATED if !name.is_empty() && !names.contains(&name) => names.push(name),
                    DELETED => names.retain(|n| *n != name),
                    _ => {}
                }
            }
            Ok(None) | Err(ReadError::NotFound) => break,
            Err(error) => return Err(failed(REGISTRATION_STREAM, error)),
        }
    }
    drop(records);
    let mut definitions = Vec::with_capacity(names.len());
    for name in names {
        let stream = definition_stream(&name);
        let mut records =
            reader.stream_records(&stream, StreamFrom::End, Direction::Backwards, usize::MAX);
        loop {
            match next_within(limit, &mut records).await {
                Ok(Some(record)) if record.event_type == UPDATED_EVENT_TYPE => {
                    let state: Value = serde_json::from_slice(&record.data).map_err(|e| {
                        ProjectionsError::BadDefinition {
                            side,
                            name: name.clone(),
                            reason: format!("{stream} holds no JSON: {e}"),
                        }
                    })?;
                    definitions.push(parse(&name, &state).map_err(|reason| {
                        ProjectionsError::BadDefinition {
                            side,
                            name: name.clone(),
                            reason,
                        }
                    })?);
                    break;
                }
                Ok(Some(_)) => {}
                // Registered but gone (deleted, or its stream scavenged):
                // nothing to re-create.
                Ok(None) | Err(ReadError::NotFound | ReadError::Deleted) => break,
                Err(error) => return Err(failed(&stream, error)),
            }
        }
    }
    Ok(definitions)
}

/// A key of the server's `PersistedState` (PascalCase), or the same key
/// camel-cased, as some writers store it.
fn key<'a>(state: &'a Value, name: &str) -> Option<&'a Value> {
    state.get(name).or_else(|| {
        let mut camel = name.to_owned();
        camel[..1].make_ascii_lowercase();
        state.get(&camel)
    })
}

/// The definition in a `$ProjectionUpdated` event's JSON.
pub(super) fn parse(name: &str, state: &Value) -> Result<Definition, String> {
    let flag = |k: &str| key(state, k).and_then(Value::as_bool).unwrap_or(false);
    let query = key(state, "Query")
        .and_then(Value::as_str)
        .ok_or("it has no `Query`")?
        .to_owned();
    let mode = match key(state, "Mode") {
        Some(Value::Number(n)) => Mode::from_number(n.as_i64().unwrap_or(-1)),
        Some(Value::String(s)) => match s.parse::<i64>() {
            Ok(n) => Mode::from_number(n),
            Err(_) => Mode::from_name(s),
        },
        _ => return Err("it has no `Mode`".to_owned()),
    };
    Ok(Definition {
        name: name.to_owned(),
        mode,
        handler_type: key(state, "HandlerType")
            .and_then(Value::as_str)
            .unwrap_or("JS")
            .to_owned(),
        query,
        enabled: flag("Enabled"),
        emit_enabled: flag("EmitEnabled"),
        track_emitted_streams: flag("TrackEmittedStreams"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_servers_persisted_state_is_read_by_its_keys() {
        let state = json!({
            "HandlerType": "JS", "Query": "fromAll()", "Mode": 4, "Enabled": false,
            "EmitEnabled": true, "TrackEmittedStreams": null, "Epoch": -1, "Version": 1,
        });
        let d = parse("p", &state).unwrap();
        assert_eq!(d.mode, Mode::Continuous);
        assert!(d.emit_enabled && !d.track_emitted_streams && !d.enabled);
        assert_eq!(d.query, "fromAll()");
        // Older writers: the mode as a numeric string or a name, camelCase keys.
        let old = json!({"query": "q", "mode": "1", "enabled": true});
        assert_eq!(parse("o", &old).unwrap().mode, Mode::OneTime);
        let named = json!({"Query": "q", "Mode": "Continuous"});
        assert_eq!(parse("n", &named).unwrap().mode, Mode::Continuous);
        let odd = json!({"Query": "q", "Mode": 3});
        assert_eq!(parse("x", &odd).unwrap().mode, Mode::Other("3".into()));
        assert!(parse("x", &json!({"Mode": 4}))
            .unwrap_err()
            .contains("Query"));
    }
}
