//! What the C# tool's filters and transforms cost: the pipeline with an
//! in-memory source and sink (so only the pipeline and the transform are
//! measured), first as a plain copy, then with regex filters, a JavaScript
//! transform (QuickJS, one engine and `bufferSize` engines) and an HTTP
//! transform against a local HTTP server in this process (one request at a
//! time, as the C# tool, and several in flight), answering at once and then
//! after 2 ms, as a service across a network would (those rows copy a tenth
//! of the events). Each row's ratio is against the plain copy.
//!
//! `cargo bench -p replicator-benches --bench transforms` (EVENTS=n to
//! resize; `cargo test --all-targets` runs it in a debug build with few
//! events as a smoke test).

use std::sync::Arc;
use std::time::Instant;

use axum::routing::post;
use axum::{Json, Router};
use replicator_benches::{print_table, rate};
use replicator_core::memory::{MemoryCheckpointStore, MemoryReader, MemorySink, MemorySource};
use replicator_core::{Pipeline, PipelineConfig, Transform};
use replicator_transform::filter::{Filter, FilterKind};
use replicator_transform::http::HttpTransform;
use replicator_transform::js::JsTransform;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// A small transform of the kind users write: rename some event types, tag
/// the data, drop test events (none in this workload, so every row writes
/// every event).
const SCRIPT: &str = r#"
function transform(e) {
  if (e.Stream.startsWith("test-")) return null;
  const type = e.EventType === "OrderPlaced" ? "OrderPlacedV2" : e.EventType;
  return { Stream: e.Stream, EventType: type, Data: { ...e.Data, migrated: true }, Meta: e.Meta };
}
"#;

/// The HTTP service 2 ms away.
async fn slow_service(body: Json<Value>) -> Json<Value> {
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    service(body).await
}

/// The HTTP service: the same change as the script.
async fn service(Json(body): Json<Value>) -> Json<Value> {
    let mut data: Value = serde_json::from_str(body["Payload"].as_str().unwrap_or("{}"))
        .unwrap_or_else(|_| json!({}));
    data["migrated"] = json!(true);
    Json(json!({
        "EventType": body["EventType"],
        "StreamName": body["StreamName"],
        "Payload": data.to_string(),
        "Metadata": body["Metadata"],
    }))
}

fn main() {
    let events: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            2_000
        } else {
            50_000
        });
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let source = orders(events);
    let slow_events = (events / 10).max(100);
    let slow_source = orders(slow_events);
    let url = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bench HTTP server");
        let url = format!(
            "http://{}/transform",
            listener.local_addr().expect("address")
        );
        let app = Router::new()
            .route("/transform", post(service))
            .route("/slow", post(slow_service));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("bench HTTP server") });
        url
    });
    let script = std::env::temp_dir().join(format!("replicator-bench-{}.js", std::process::id()));
    std::fs::write(&script, SCRIPT).expect("bench script");

    type Make = Box<dyn Fn() -> Vec<Arc<dyn Transform>>>;
    let js = |engines: usize| -> Make {
        let script = script.clone();
        Box::new(move || {
            let t = JsTransform::from_file(&script)
                .and_then(|t| t.with_in_flight(engines))
                .expect("JS transform");
            vec![Arc::new(t) as Arc<dyn Transform>]
        })
    };
    let http = |in_flight: usize, path: &str| -> Make {
        let url = url.replace("/transform", path);
        Box::new(move || {
            vec![
                Arc::new(HttpTransform::new(&url, in_flight).expect("HTTP transform"))
                    as Arc<dyn Transform>,
            ]
        })
    };
    let rows_to_run: Vec<(&str, &MemorySource, Make)> = vec![
        ("plain copy", &source, Box::new(Vec::new)),
        (
            "regex filters (streamName with a lookahead, eventType)",
            &source,
            Box::new(filters),
        ),
        ("js transform, 1 engine", &source, js(1)),
        ("js transform, 4 engines", &source, js(4)),
        (
            "http transform, 1 in flight (the C# tool)",
            &source,
            http(1, "/transform"),
        ),
        (
            "http transform, 16 in flight",
            &source,
            http(16, "/transform"),
        ),
        (
            "http transform 2 ms away, 1 in flight (the C# tool)",
            &slow_source,
            http(1, "/slow"),
        ),
        (
            "http transform 2 ms away, 16 in flight",
            &slow_source,
            http(16, "/slow"),
        ),
        (
            "http transform 2 ms away, 64 in flight",
            &slow_source,
            http(64, "/slow"),
        ),
    ];

    let mut rows = Vec::new();
    let mut plain = None;
    for (name, source, make) in rows_to_run {
        let events = source.events().len();
        let pipeline = Pipeline::builder(
            MemoryReader::new(source.clone(), false),
            MemorySink::new().with_partitions(4),
            MemoryCheckpointStore::new(),
        )
        .config(PipelineConfig::default())
        .transforms(make())
        .build();
        let started = Instant::now();
        let summary = runtime
            .block_on(pipeline.run(CancellationToken::new()))
            .expect("pipeline run");
        let elapsed = started.elapsed();
        assert_eq!(
            summary.written as usize, events,
            "{name}: every event is written"
        );
        let per_second = rate(summary.written, elapsed);
        let base = *plain.get_or_insert(per_second);
        rows.push(vec![
            name.to_owned(),
            format!("{per_second:.0}"),
            format!("{:.3}", per_second / base),
        ]);
    }
    let _ = std::fs::remove_file(&script);
    println!(
        "transforms, {events} JSON events of about 200 bytes over 1000 streams, in-memory source and sink, 4 partitions{}",
        if cfg!(debug_assertions) { " (debug build: a smoke test, not a measure)" } else { "" }
    );
    print_table(&["transform", "events/s", "vs plain copy"], &rows);
    println!("(rows with a service 2 ms away copy {slow_events} events)");
}

/// A `streamName` filter with a .NET-style lookahead (fancy-regex's own
/// engine) and a plain `eventType` filter, both passing every event here.
fn filters() -> Vec<Arc<dyn Transform>> {
    let stream = Filter::new(
        FilterKind::StreamName,
        Some("^orders-"),
        Some("^orders-(?=test)"),
    )
    .expect("stream filter");
    let event_type = Filter::new(FilterKind::EventType, None, Some("^Test")).expect("type filter");
    vec![Arc::new(stream), Arc::new(event_type)]
}

/// `n` JSON order events over 1000 streams.
fn orders(n: usize) -> MemorySource {
    let source = MemorySource::new();
    for i in 0..n {
        let data = json!({
            "orderId": format!("order-{i}"),
            "customer": {"id": i % 977, "name": "Jane Doe"},
            "lines": [{"sku": "A-1", "quantity": 2, "price": 12.5}, {"sku": "B-7", "quantity": 1, "price": 99.0}],
            "total": 124.0,
        });
        source.append_user_event(
            &format!("orders-{}", i % 1000),
            data.to_string().into_bytes(),
        );
    }
    source
}
