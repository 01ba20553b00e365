//! The projection routes of the server's HTTP API, served on the gRPC port
//! over HTTP/1.1 as KurrentDB serves them on 2113 (`ProjectionsController.cs`):
//! what a tool needs to create a projection **stopped**, which gRPC cannot.

use std::collections::HashMap;
use std::sync::Arc;

use hyper::body::{Body as _, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::registry::{self, Definition, Failure, Mode};
use super::{check, details, Need};
use crate::security;
use crate::shared::Shared;

/// Largest query body accepted.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Whether `path` is one of the routes [`answer`] serves (no gRPC path
/// starts so: those start with the service's package).
pub(crate) fn is_projection_path(path: &str) -> bool {
    path.starts_with("/projections/") || path.starts_with("/projection/")
}

/// `IsOn` of the server's controller: `yes`, `true` or `1` (any case) is on,
/// anything else off, a missing value `default`.
fn is_on(query: &HashMap<String, String>, key: &str, default: bool) -> bool {
    query.get(key).map_or(default, |v| {
        matches!(v.to_ascii_lowercase().as_str(), "yes" | "true" | "1")
    })
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<String> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(body)
        .expect("a valid response")
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<String> {
    reply(status, "text/plain; charset=utf-8", body.into())
}

fn json_reply(status: StatusCode, body: &serde_json::Value) -> Response<String> {
    reply(status, "application/json; charset=utf-8", body.to_string())
}

fn failure(failure: Failure) -> Response<String> {
    match failure {
        Failure::NotFound(name) => text(
            StatusCode::NOT_FOUND,
            format!("Projection '{name}' not found"),
        ),
        Failure::Exists(name) => text(
            StatusCode::CONFLICT,
            format!("Conflict: projection '{name}' already exists"),
        ),
        Failure::Refused(reason) | Failure::Invalid(reason) => {
            text(StatusCode::BAD_REQUEST, reason)
        }
    }
}

/// 401 as the server's HTTP authentication answers it (also for a caller
/// who may not make the call: its HTTP API does not say 403).
fn unauthorized() -> Response<String> {
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header("www-authenticate", "X-Basic realm=\"ESDB\"")
        .body(String::new())
        .expect("a valid response")
}

fn query_of(request: &Request<Incoming>) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key.to_ascii_lowercase(), percent_decode(value))
        })
        .collect()
}

/// `%XX` and `+` decoding of a query value.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| char::from(b).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The request body, up to [`MAX_BODY`].
async fn body_of(body: Incoming) -> Result<Vec<u8>, Response<String>> {
    let mut body = std::pin::pin!(body);
    let mut bytes = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame =
            frame.map_err(|e| text(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
            if bytes.len() > MAX_BODY {
                return Err(text(StatusCode::PAYLOAD_TOO_LARGE, "query too large"));
            }
        }
    }
    Ok(bytes)
}

/// Answers one HTTP request to a projection route.
pub(crate) async fn answer(shared: Arc<Shared>, request: Request<Incoming>) -> Response<String> {
    if shared.options.no_projections {
        return text(StatusCode::NOT_FOUND, "projections are not running");
    }
    let header = request
        .headers()
        .get("authorization")
        .map(hyper::header::HeaderValue::as_bytes);
    let Ok(principal) = security::principal_with(
        shared.options.users.as_deref(),
        shared.options.bearer_tokens.as_ref(),
        header,
    ) else {
        return unauthorized();
    };
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let query = query_of(&request);
    match (request.method().clone(), segments.as_slice()) {
        (Method::POST, ["projections", mode]) => {
            if check(&principal, Need::Manage).is_err() {
                return unauthorized();
            }
            let mode = match *mode {
                "continuous" => Mode::Continuous,
                "transient" => Mode::Transient,
                "onetime" => Mode::OneTime,
                other => {
                    return text(
                        StatusCode::NOT_FOUND,
                        format!("no route /projections/{other}"),
                    )
                }
            };
            let body = match body_of(request.into_body()).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            create(&shared, mode, &query, body)
        }
        (Method::GET, ["projection", name, rest @ ..]) => {
            if check(&principal, Need::Read).is_err() {
                return unauthorized();
            }
            let name = percent_decode(name);
            let (definition, end) =
                shared.read(|store| (registry::load(store, &name), store.end_position()));
            let Some(definition) = definition else {
                return failure(Failure::NotFound(name));
            };
            match rest {
                ["query"] if is_on(&query, "config", false) => {
                    json_reply(StatusCode::OK, &config(&definition))
                }
                ["query"] => text(StatusCode::OK, definition.query),
                [] => json_reply(StatusCode::OK, &statistics(&definition, end)),
                ["statistics"] => json_reply(
                    StatusCode::OK,
                    &json!({ "projections": [statistics(&definition, end)] }),
                ),
                _ => text(StatusCode::NOT_FOUND, format!("no route {path}")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, format!("no route {path}")),
    }
}

/// `POST /projections/{mode}`: the projection created never started when
/// `enabled` is off.
fn create(
    shared: &Shared,
    mode: Mode,
    query: &HashMap<String, String>,
    body: Vec<u8>,
) -> Response<String> {
    let handler = query.get("type").map_or("JS", String::as_str);
    if !handler.eq_ignore_ascii_case("js") {
        return text(
            StatusCode::BAD_REQUEST,
            format!("projection type {handler:?} is not supported here (JS only)"),
        );
    }
    let name = match (mode, query.get("name").filter(|n| !n.is_empty())) {
        (Mode::OneTime, None) => uuid::Uuid::new_v4().to_string(),
        (_, Some(name)) => name.clone(),
        (_, None) => return text(StatusCode::BAD_REQUEST, "the `name` parameter is missing"),
    };
    let Ok(source) = String::from_utf8(body) else {
        return text(StatusCode::BAD_REQUEST, "the query is not UTF-8");
    };
    let enabled = is_on(query, "enabled", true);
    let mut definition = Definition::new(name.clone(), mode, source, enabled);
    if mode == Mode::Continuous {
        definition.emit_enabled = is_on(query, "emit", false);
        // Silently off without emit: the controller's rule (gRPC refuses).
        definition.track_emitted_streams =
            definition.emit_enabled && is_on(query, "trackemittedstreams", false);
    }
    match shared.write(|store| registry::create(store, &definition)) {
        Ok(()) => {
            let location = format!(
                "http://{}:{}/projection/{name}",
                shared.host,
                shared.port.load(std::sync::atomic::Ordering::SeqCst)
            );
            Response::builder()
                .status(StatusCode::CREATED)
                .header("location", location)
                .header("content-type", "application/json; charset=utf-8")
                .body(json!({ "name": name }).to_string())
                .expect("a valid response")
        }
        Err(error) => failure(error),
    }
}

/// `GET /projection/{name}/query?config=yes`: the query and the settings
/// a re-creation needs.
fn config(definition: &Definition) -> serde_json::Value {
    json!({
        "name": definition.name,
        "query": definition.query,
        "type": definition.handler_type,
        "mode": definition.mode.name(),
        "emitEnabled": definition.emit_enabled,
        "trackEmittedStreams": definition.track_emitted_streams,
        "checkpointsDisabled": definition.checkpoints_disabled,
        "enabled": definition.enabled,
    })
}

fn statistics(definition: &Definition, end: u64) -> serde_json::Value {
    let d = details(definition, end);
    json!({
        "name": d.name,
        "effectiveName": d.effective_name,
        "status": d.status,
        "stateReason": d.state_reason,
        "mode": d.mode,
        "epoch": d.epoch,
        "version": d.version,
        "position": d.position,
        "lastCheckpoint": d.last_checkpoint,
        "progress": d.progress,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%24by"), "$by");
        assert_eq!(percent_decode("50%"), "50%");
    }
}
