//! The HTTP transform against a real local HTTP server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use replicator_core::{ChangeKind, ContentType, SkipReason, Transform};
use replicator_transform::http::HttpTransform;
use serde_json::{json, Value};
use tokio::sync::Barrier;

use crate::support::event;

#[derive(Clone)]
struct Service {
    requests: Arc<AtomicUsize>,
    failures_left: Arc<AtomicUsize>,
    barrier: Arc<Barrier>,
    bodies: Arc<std::sync::Mutex<Vec<Value>>>,
}

/// What the service does depends on the stream it is sent:
/// `drop-*` → 204; `fail-*` → 500 while failures are left; `wait-*` → waits
/// for as many concurrent requests as the barrier counts; `hang-*` → never
/// answers; `garbage-*` → 200 with a body that is not the C# shape;
/// `keepmeta-*` → no Metadata in the answer; others → renamed and rewritten.
async fn handle(State(service): State<Service>, Json(body): Json<Value>) -> Response {
    service.requests.fetch_add(1, Ordering::SeqCst);
    service.bodies.lock().unwrap().push(body.clone());
    let stream = body["StreamName"].as_str().unwrap_or_default().to_string();
    if stream.starts_with("drop-") {
        return StatusCode::NO_CONTENT.into_response();
    }
    if stream.starts_with("fail-")
        && service
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        return (StatusCode::INTERNAL_SERVER_ERROR, "try again later").into_response();
    }
    if stream.starts_with("wait-") {
        service.barrier.wait().await;
    }
    if stream.starts_with("hang-") {
        std::future::pending::<()>().await;
    }
    if stream.starts_with("garbage-") {
        return (StatusCode::OK, "<html>proxy page</html>").into_response();
    }
    let payload: Value = serde_json::from_str(body["Payload"].as_str().unwrap()).unwrap();
    let mut answer = json!({
        "EventType": format!("{}Http", body["EventType"].as_str().unwrap()),
        "StreamName": format!("http-{stream}"),
        "Payload": json!({"wrapped": payload}).to_string(),
    });
    if !stream.starts_with("keepmeta-") {
        answer["Metadata"] = json!(r#"{"via":"http"}"#);
    }
    Json(answer).into_response()
}

async fn start(failures: usize, concurrent: usize) -> (String, Service) {
    let service = Service {
        requests: Arc::default(),
        failures_left: Arc::new(AtomicUsize::new(failures)),
        barrier: Arc::new(Barrier::new(concurrent)),
        bodies: Arc::default(),
    };
    let app = Router::new()
        .route("/transform", post(handle))
        .with_state(service.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/transform", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, service)
}

#[tokio::test]
async fn replaces_stream_type_data_and_metadata_keeping_the_rest() {
    let (url, service) = start(0, 1).await;
    let t = HttpTransform::new(&url, 1).unwrap();
    let original = event("orders-1", 4, "Placed", r#"{"n":1}"#, r#"{"corr":"c"}"#);
    let out = t.apply(original.clone()).await.unwrap();
    assert_eq!(out.stream, "http-orders-1");
    assert_eq!(out.event_type, "PlacedHttp");
    assert_eq!(out.data, Bytes::from_static(br#"{"wrapped":{"n":1}}"#));
    assert_eq!(out.metadata, Bytes::from_static(br#"{"via":"http"}"#));
    assert_eq!(out.kind, ChangeKind::Append);
    assert_eq!(
        (out.id, out.position, out.revision, out.content_type),
        (
            original.id,
            original.position,
            original.revision,
            original.content_type
        )
    );
    // The C# body: data and metadata as strings.
    let body = service.bodies.lock().unwrap()[0].clone();
    assert_eq!(
        body,
        json!({"EventType": "Placed", "StreamName": "orders-1", "Payload": r#"{"n":1}"#, "Metadata": r#"{"corr":"c"}"#})
    );
    assert!(!t.keeps_revisions());
}

#[tokio::test]
async fn an_answer_without_metadata_keeps_the_events_and_empty_metadata_is_sent_as_null() {
    let (url, service) = start(0, 1).await;
    let t = HttpTransform::new(&url, 1).unwrap();
    let out = t
        .apply(event("keepmeta-1", 0, "T", "{}", r#"{"m":1}"#))
        .await
        .unwrap();
    assert_eq!(out.metadata, Bytes::from_static(br#"{"m":1}"#));
    t.apply(event("keepmeta-2", 0, "T", "{}", ""))
        .await
        .unwrap();
    assert_eq!(service.bodies.lock().unwrap()[1]["Metadata"], Value::Null);
}

#[tokio::test]
async fn no_content_drops_the_event() {
    let (url, _service) = start(0, 1).await;
    let t = HttpTransform::new(&url, 1).unwrap();
    let out = t.apply(event("drop-1", 0, "T", "{}", "")).await.unwrap();
    assert_eq!(out.kind, ChangeKind::Skip(SkipReason::Dropped));
    assert_eq!(out.stream, "drop-1");
}

#[tokio::test]
async fn a_server_error_is_transient_and_the_retry_succeeds() {
    let (url, service) = start(1, 1).await;
    let t = HttpTransform::new(&url, 1).unwrap();
    let e = event("fail-1", 0, "T", r#"{"n":2}"#, "");
    let err = t.apply(e.clone()).await.unwrap_err();
    assert!(err.is_transient());
    assert!(
        err.message().contains("500") && err.message().contains("try again later"),
        "{}",
        err.message()
    );
    let out = t.apply(e).await.unwrap();
    assert_eq!(out.stream, "http-fail-1");
    assert_eq!(service.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connection_refused_and_timeouts_are_transient() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t = HttpTransform::new(format!("http://127.0.0.1:{port}/t"), 1).unwrap();
    let err = t.apply(event("s", 0, "T", "{}", "")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        err.message().contains(&port.to_string()),
        "{}",
        err.message()
    );

    let (url, _service) = start(0, 1).await;
    let t = HttpTransform::with_timeout(&url, 1, Duration::from_millis(200)).unwrap();
    let err = t
        .apply(event("hang-1", 0, "T", "{}", ""))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
}

#[tokio::test]
async fn an_answer_that_is_not_the_csharp_shape_is_a_permanent_error() {
    let (url, _service) = start(0, 1).await;
    let t = HttpTransform::new(&url, 1).unwrap();
    let err = t
        .apply(event("garbage-1", 0, "T", "{}", ""))
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    assert!(err.message().contains("proxy page"), "{}", err.message());
}

#[tokio::test]
async fn binary_events_pass_unchanged_without_a_request() {
    let (url, service) = start(0, 1).await;
    let t = HttpTransform::new(&url, 1).unwrap();
    let mut e = event("s", 0, "Proto", "", "");
    e.data = Bytes::from_static(&[0xc3, 0x28, 0x00]);
    e.content_type = ContentType::Binary;
    assert_eq!(t.apply(e.clone()).await.unwrap(), e);
    assert_eq!(t.not_text(), 1);
    assert_eq!(service.requests.load(Ordering::SeqCst), 0);
    let mut meta = event("$$s", 0, "$metadata", "{}", "");
    meta.kind = ChangeKind::StreamMetadata;
    assert_eq!(t.apply(meta.clone()).await.unwrap(), meta);
    assert_eq!(service.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn several_requests_are_in_flight_at_once() {
    // The server answers only once 4 requests wait together: a transform that
    // sent them one at a time would time out here.
    let (url, service) = start(0, 4).await;
    let t = Arc::new(HttpTransform::new(&url, 4).unwrap());
    assert_eq!(t.concurrency(), 4);
    let calls: Vec<_> = (0..4u64)
        .map(|n| {
            let t = t.clone();
            tokio::spawn(async move {
                t.apply(event(
                    &format!("wait-{n}"),
                    n,
                    "T",
                    &format!(r#"{{"n":{n}}}"#),
                    "",
                ))
                .await
            })
        })
        .collect();
    let results = tokio::time::timeout(Duration::from_secs(10), futures_join(calls))
        .await
        .expect("4 requests were not in flight at once");
    for (n, out) in results.into_iter().enumerate() {
        let out = out.unwrap();
        assert_eq!(out.stream, format!("http-wait-{n}"));
        assert_eq!(out.revision, n as u64);
    }
    assert_eq!(service.requests.load(Ordering::SeqCst), 4);
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[test]
fn a_url_that_is_not_http_is_refused() {
    let err = HttpTransform::new("ftp://example.com/x", 1).err().unwrap();
    assert!(err.to_string().contains("ftp://example.com/x"), "{err}");
    assert!(HttpTransform::new("not a url", 1).is_err());
}
