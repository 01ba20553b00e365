//! `transform.type: js|http` and `sink.partitioner` in the C# tool's YAML,
//! end to end: `replicator run` between two in-process servers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{append_json as append, assert_ok, run_async, stderr, stdout, Clusters};

/// A stream's events as `(id, type, data)`; empty when it does not exist.
async fn read(client: &eventstore::Client, stream: &str) -> Vec<(Uuid, String, Value)> {
    let options = eventstore::ReadStreamOptions::default().max_count(1000);
    let mut out = Vec::new();
    let Ok(mut events) = client.read_stream(stream, &options).await else {
        return out;
    };
    loop {
        match events.next().await {
            Ok(Some(e)) => {
                let e = e.get_original_event();
                out.push((
                    e.id,
                    e.event_type.clone(),
                    serde_json::from_slice(&e.data).unwrap_or(Value::Null),
                ));
            }
            Ok(None) | Err(eventstore::Error::ResourceNotFound) => return out,
            Err(e) => panic!("reading {stream}: {e}"),
        }
    }
}

fn write(w: &super::Workdir, name: &str, text: &str) {
    std::fs::write(w.path(name), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_transform_renames_streams_and_drops_events_once_each() {
    let c = Clusters::start().await;
    let orders = append(
        &c.source_client,
        "orders-1",
        &[
            ("Placed", json!({"n": 1})),
            ("TestEvent", json!({"n": 2})),
            ("Shipped", json!({"n": 3})),
        ],
    )
    .await;
    let users = append(
        &c.source_client,
        "users-1",
        &[("Registered", json!({"name": "ann"}))],
    )
    .await;
    let w = c.workdir(
        "  runContinuously: false\n  transform:\n    type: js\n    config: ./transform.js\n    bufferSize: 4\n",
    );
    write(
        &w,
        "transform.js",
        r#"
function transform(original) {
  if (original.EventType.startsWith("Test")) return null;
  const stream = original.Stream.replace(/^orders-/, "sales-");
  return { Stream: stream, EventType: original.EventType, Data: { ...original.Data, copied: true }, Meta: original.Meta };
}
"#,
    );
    let o = run_async(&w, &["run"]).await;
    assert_ok(&o);

    let sales = read(&c.target_client, "sales-1").await;
    assert_eq!(
        sales,
        vec![
            (
                orders[0],
                "Placed".to_string(),
                json!({"n": 1, "copied": true})
            ),
            (
                orders[2],
                "Shipped".to_string(),
                json!({"n": 3, "copied": true})
            ),
        ]
    );
    assert!(
        read(&c.target_client, "orders-1").await.is_empty(),
        "the source stream name is not written"
    );
    assert_eq!(
        read(&c.target_client, "users-1").await,
        vec![(
            users[0],
            "Registered".to_string(),
            json!({"name": "ann", "copied": true})
        )]
    );
    // The dropped event is checkpointed: the checkpoint is at the source's end.
    let show = run_async(&w, &["checkpoint", "show"]).await;
    assert!(
        stdout(&show).contains(&format!("source:   {} ", c.source_end().await)),
        "{}",
        stdout(&show)
    );

    // More events, a second run: each event once.
    let more = append(&c.source_client, "orders-1", &[("Paid", json!({"n": 4}))]).await;
    assert_ok(&run_async(&w, &["run"]).await);
    let sales = read(&c.target_client, "sales-1").await;
    let ids: Vec<Uuid> = sales.iter().map(|e| e.0).collect();
    assert_eq!(ids, vec![orders[0], orders[2], more[0]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_script_that_throws_stops_the_run_naming_the_event_and_the_line() {
    let c = Clusters::start().await;
    let events: Vec<(&str, Value)> = (0..5).map(|n| ("Numbered", json!({"n": n}))).collect();
    let ids = append(&c.source_client, "numbers-1", &events).await;
    let w = c.workdir(
        "  runContinuously: false\n  restartOnFailure: false\n  transform:\n    type: js\n    config: ./transform.js\n",
    );
    write(
        &w,
        "transform.js",
        "function transform(e) {\n  if (e.Data.n === 2) {\n    throw new Error(\"cannot handle n=\" + e.Data.n);\n  }\n  return e;\n}\n",
    );
    let o = run_async(&w, &["run"]).await;
    assert!(!o.status.success(), "the run must fail:\n{}", stderr(&o));
    let err = stderr(&o);
    for expected in [
        "cannot handle n=2",
        "line 3",
        "transform.js",
        "numbers-1",
        "revision 2",
    ] {
        assert!(
            err.contains(expected),
            "stderr should name {expected:?}:\n{err}"
        );
    }
    let written: Vec<Uuid> = read(&c.target_client, "numbers-1")
        .await
        .iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        written,
        ids[..2].to_vec(),
        "nothing from the failing event on is written"
    );
}

/// The HTTP service of the C# tool's contract: renames to `http-<stream>`,
/// drops `Drop` events with 204, fails the first request with 503.
async fn service(failures: Arc<AtomicUsize>, Json(body): Json<Value>) -> Response {
    if failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if body["EventType"] == "Drop" {
        return StatusCode::NO_CONTENT.into_response();
    }
    let data: Value = serde_json::from_str(body["Payload"].as_str().unwrap()).unwrap();
    Json(json!({
        "EventType": body["EventType"],
        "StreamName": format!("http-{}", body["StreamName"].as_str().unwrap()),
        "Payload": json!({"via": "http", "was": data}).to_string(),
        "Metadata": null,
    }))
    .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_transform_replaces_and_drops_and_survives_a_failing_service() {
    let c = Clusters::start().await;
    let ids = append(
        &c.source_client,
        "items-1",
        &[
            ("Added", json!({"n": 1})),
            ("Drop", json!({"n": 2})),
            ("Added", json!({"n": 3})),
        ],
    )
    .await;
    let failures = Arc::new(AtomicUsize::new(1));
    let app = Router::new().route(
        "/transform",
        post({
            let failures = failures.clone();
            move |body| service(failures.clone(), body)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/transform", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let w = c.workdir(&format!(
        "  runContinuously: false\n  transform:\n    type: http\n    config: \"{url}\"\n    bufferSize: 8\n"
    ));
    let o = run_async(&w, &["run"]).await;
    assert_ok(&o);
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "the failing request was made"
    );
    assert_eq!(
        read(&c.target_client, "http-items-1").await,
        vec![
            (
                ids[0],
                "Added".to_string(),
                json!({"via": "http", "was": {"n": 1}})
            ),
            (
                ids[2],
                "Added".to_string(),
                json!({"via": "http", "was": {"n": 3}})
            ),
        ]
    );
    assert!(read(&c.target_client, "items-1").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_partitioner_is_called_and_every_event_arrives_in_order() {
    let c = Clusters::start().await;
    let mut expected = Vec::new();
    for stream in ["acme-orders", "acme-users", "globex-orders"] {
        let events: Vec<(&str, Value)> = (0..3)
            .map(|n| {
                (
                    "Numbered",
                    json!({"tenant": stream.split('-').next().unwrap(), "n": n}),
                )
            })
            .collect();
        expected.push((stream, append(&c.source_client, stream, &events).await));
    }
    // A partitioner keys stream order's concurrent writers; source order
    // has one writer and does not call it.
    let w = c.workdir_with(
        "",
        "    order: stream\n    partitioner: ./partition.js\n",
        "  runContinuously: false\n",
    );
    write(
        &w,
        "partition.js",
        r#"
function partition(event) {
  log.warn("partition-key {Stream} {Tenant}", event.Stream, event.Data.tenant);
  return event.Data.tenant;
}
"#,
    );
    let o = run_async(&w, &["run"]).await;
    assert_ok(&o);
    let err = stderr(&o);
    assert!(err.contains("partition-key acme-users acme"), "{err}");
    assert!(err.contains("partition-key globex-orders globex"), "{err}");
    for (stream, ids) in expected {
        let written: Vec<Uuid> = read(&c.target_client, stream)
            .await
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(written, ids, "{stream}");
    }
}
