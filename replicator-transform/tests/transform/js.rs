//! The JavaScript transform and partitioner with the C# tool's semantics.

use bytes::Bytes;
use replicator_core::{ChangeKind, ContentType, Partitioner, SkipReason, Transform};
use replicator_transform::js::{JsError, JsPartitioner, JsRouter, JsTransform, Route};

use crate::support::{capture_log, captured_log, event, script};

const RENAME: &str = r#"
function transform(original) {
  if (original.EventType === "Ignored") return null;
  if (original.EventType === "Gone") return undefined;
  return {
    Stream: `copy-${original.Stream}`,
    EventType: original.EventType + "V2",
    Data: { ...original.Data, seen: original.data.n * 2 },
    Meta: original.Meta === null ? null : { ...original.Meta, by: "js" },
  };
}
"#;

#[tokio::test]
async fn renames_rewrites_and_keeps_id_position_revision_and_content_type() {
    let s = script("rename.js", RENAME);
    let t = JsTransform::from_file(&s.path).unwrap();
    let original = event("orders-1", 7, "Placed", r#"{"n": 21}"#, r#"{"corr": "c1"}"#);
    let out = t.apply(original.clone()).await.unwrap();
    assert_eq!(out.stream, "copy-orders-1");
    assert_eq!(out.event_type, "PlacedV2");
    assert_eq!(out.data, Bytes::from_static(br#"{"n":21,"seen":42}"#));
    assert_eq!(
        out.metadata,
        Bytes::from_static(br#"{"corr":"c1","by":"js"}"#)
    );
    assert_eq!(out.kind, ChangeKind::Append);
    assert_eq!(
        (
            out.id,
            out.position,
            out.revision,
            out.content_type,
            out.created
        ),
        (
            original.id,
            original.position,
            original.revision,
            original.content_type,
            original.created
        )
    );
    assert!(!t.keeps_revisions());
}

#[tokio::test]
async fn null_and_undefined_drop_the_event_and_no_metadata_is_null() {
    let s = script("rename.js", RENAME);
    let t = JsTransform::from_file(&s.path).unwrap();
    for kind in ["Ignored", "Gone"] {
        let out = t.apply(event("s", 0, kind, "{}", "")).await.unwrap();
        assert_eq!(out.kind, ChangeKind::Skip(SkipReason::Dropped), "{kind}");
    }
    // Empty metadata reaches the script as null and null writes no metadata.
    let out = t
        .apply(event("s", 1, "Kept", r#"{"n":1}"#, ""))
        .await
        .unwrap();
    assert_eq!(out.metadata, Bytes::new());
}

#[tokio::test]
async fn the_script_sees_created_and_both_spellings() {
    let s = script(
        "fields.js",
        r#"
function transform(o) {
  return { Stream: o.stream, EventType: o.eventType,
           Data: { created: o.Created.toISOString(), same: o.created.getTime() === o.Created.getTime(),
                   meta: o.meta, camel: o.data === o.Data }, Meta: o.Meta };
}"#,
    );
    let t = JsTransform::from_file(&s.path).unwrap();
    let out = t
        .apply(event("s", 0, "T", "[1,2]", r#"{"a":1}"#))
        .await
        .unwrap();
    let data: serde_json::Value = serde_json::from_slice(&out.data).unwrap();
    assert_eq!(
        data,
        serde_json::json!({"created": "2020-09-13T12:26:40.123Z", "same": true, "meta": {"a": 1}, "camel": true})
    );
}

#[tokio::test]
async fn metadata_deletes_and_tombstones_are_not_given_to_the_script() {
    // A script that drops everything: records it never sees pass unchanged.
    let s = script("drop.js", "function transform(e) { return null; }");
    let t = JsTransform::from_file(&s.path).unwrap();
    for kind in [
        ChangeKind::StreamMetadata,
        ChangeKind::SoftDelete,
        ChangeKind::Tombstone,
    ] {
        let mut e = event("$$orders-1", 0, "$metadata", r#"{"$maxCount":3}"#, "");
        e.kind = kind;
        assert_eq!(t.apply(e.clone()).await.unwrap(), e);
    }
}

#[tokio::test]
async fn events_that_are_not_json_pass_unchanged_without_the_script_and_are_counted() {
    capture_log();
    let s = script(
        "throws.js",
        "function transform(e) { throw new Error('must not be called'); }",
    );
    let t = JsTransform::from_file(&s.path).unwrap();
    let mut binary = event("protobuf-stream-1", 3, "Proto", "", "");
    binary.data = Bytes::from_static(&[0xff, 0x00, 0x12]);
    binary.content_type = ContentType::Binary;
    let unparsable = event("s", 0, "T", "{not json", "");
    let empty = event("s", 1, "T", "", "");
    let bad_meta = event("s", 2, "T", "{}", "meta: not json");
    for e in [binary, unparsable, empty, bad_meta] {
        assert_eq!(t.apply(e.clone()).await.unwrap(), e);
    }
    assert_eq!(t.not_json(), 4);
    assert!(
        captured_log().contains("protobuf-stream-1"),
        "the first one is logged as a warning naming its stream"
    );
}

#[tokio::test]
async fn a_script_that_throws_is_a_permanent_error_with_its_message_and_line() {
    let s = script(
        "throws.js",
        "function transform(e) {\n  if (e.Data.bad) {\n    throw new Error(\"bad order \" + e.Data.id);\n  }\n  return e;\n}\n",
    );
    let t = JsTransform::from_file(&s.path).unwrap();
    let err = t
        .apply(event("s", 0, "T", r#"{"bad":true,"id":9}"#, ""))
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    let message = err.message();
    assert!(message.contains("Error: bad order 9"), "{message}");
    assert!(message.contains("line 3"), "{message}");
    assert!(message.contains("throws.js"), "{message}");

    // A TypeError from the engine names its line too.
    let s = script(
        "typeerror.js",
        "function transform(e) {\n  return e.Data.missing.field;\n}\n",
    );
    let t = JsTransform::from_file(&s.path).unwrap();
    let err = t.apply(event("s", 0, "T", "{}", "")).await.unwrap_err();
    assert!(err.message().contains("TypeError"), "{}", err.message());
    assert!(err.message().contains("line 2"), "{}", err.message());
}

#[tokio::test]
async fn a_thrown_value_that_is_not_an_error_is_shown() {
    let s = script("value.js", "function transform(e) { throw { code: 42 }; }");
    let t = JsTransform::from_file(&s.path).unwrap();
    let err = t.apply(event("s", 0, "T", "{}", "")).await.unwrap_err();
    assert!(!err.is_transient());
    assert!(
        err.message().contains(r#"threw {"code":42}"#),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn malformed_results_are_permanent_errors_saying_what_is_wrong() {
    let cases = [
        (
            "return { Stream: '', EventType: 'T', Data: {} };",
            "no Stream",
        ),
        (
            "return { Stream: 's', EventType: 42, Data: {} };",
            "no EventType",
        ),
        ("return { Stream: 's', EventType: 'T' };", "no Data"),
        ("return 'x';", "returned a string"),
    ];
    for (body, expected) in cases {
        let s = script("bad.js", &format!("function transform(e) {{ {body} }}"));
        let t = JsTransform::from_file(&s.path).unwrap();
        let err = t.apply(event("s", 0, "T", "{}", "")).await.unwrap_err();
        assert!(!err.is_transient());
        assert!(
            err.message().contains(expected),
            "{body}: {}",
            err.message()
        );
    }
}

#[tokio::test]
async fn es2020_features_work() {
    let s = script(
        "modern.js",
        r#"
const tag = (x) => x?.deep?.value ?? "none";
class Renamer { constructor(p) { this.p = p; } name(s) { return `${this.p}-${s}`; } }
const r = new Renamer("v2");
function transform({ Stream, EventType, Data, Meta }) {
  const { a, ...rest } = Data;
  const doubled = [1, 2, 3].map((n) => n * 2).flatMap((n) => [n]);
  const entries = Object.fromEntries(Object.entries(rest).map(([k, v]) => [k.toUpperCase(), v]));
  return { Stream: r.name(Stream), EventType, Data: { ...entries, tag: tag(Data), doubled, big: String(2n ** 64n), all: [..."ab"] }, Meta };
}"#,
    );
    let t = JsTransform::from_file(&s.path).unwrap();
    let out = t
        .apply(event(
            "s",
            0,
            "T",
            r#"{"a":1,"b":2,"deep":{"value":"v"}}"#,
            "",
        ))
        .await
        .unwrap();
    assert_eq!(out.stream, "v2-s");
    let data: serde_json::Value = serde_json::from_slice(&out.data).unwrap();
    assert_eq!(
        data,
        serde_json::json!({"B": 2, "DEEP": {"value": "v"}, "tag": "v", "doubled": [2, 4, 6],
                           "big": "18446744073709551616", "all": ["a", "b"]})
    );
}

#[tokio::test]
async fn log_writes_to_our_log_with_the_csharp_templates() {
    capture_log();
    let s = script(
        "log.js",
        r#"
log.info("loaded marker-{Where}", "at-load");
function transform(e) {
  log.debug("debug-marker {S}", e.Stream);
  log.warn("warn-marker {S} {N}", e.Stream, e.Data.n);
  log.error("error-marker", { n: e.Data.n });
  return e;
}"#,
    );
    let t = JsTransform::from_file(&s.path).unwrap();
    t.apply(event("logged-stream", 0, "T", r#"{"n":5}"#, ""))
        .await
        .unwrap();
    let log = captured_log();
    for expected in [
        "INFO replicator::js: loaded marker-at-load",
        "DEBUG replicator::js: debug-marker logged-stream",
        "WARN replicator::js: warn-marker logged-stream 5",
        r#"ERROR replicator::js: error-marker {"n":5}"#,
    ] {
        assert!(log.contains(expected), "{expected} not in:\n{log}");
    }
}

#[tokio::test]
async fn bad_files_are_clear_errors_naming_the_file() {
    let missing = std::path::Path::new("/nonexistent/transform.js");
    let err = JsTransform::from_file(missing).err().unwrap();
    assert!(matches!(err, JsError::Read { .. }));
    assert!(
        err.to_string().contains("/nonexistent/transform.js"),
        "{err}"
    );

    let s = script(
        "syntax.js",
        "function transform(e) {\n  return {\n    Stream: ,\n  };\n}\n",
    );
    let err = JsTransform::from_file(&s.path).err().unwrap();
    let text = err.to_string();
    assert!(matches!(err, JsError::Script { .. }), "{text}");
    assert!(
        text.contains("syntax.js") && text.contains("SyntaxError"),
        "{text}"
    );
    assert!(text.contains("line 3"), "{text}");

    let s = script("nofn.js", "const transform = 3;\n");
    let err = JsTransform::from_file(&s.path).err().unwrap();
    assert!(
        matches!(
            err,
            JsError::NoFunction {
                function: "transform",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("nofn.js"), "{err}");

    // The partitioner needs partition(), not transform().
    let s = script("t.js", "function transform(e) { return e; }");
    let err = JsPartitioner::from_file(&s.path).err().unwrap();
    assert!(
        matches!(
            err,
            JsError::NoFunction {
                function: "partition",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_script_that_never_returns_is_stopped_with_a_permanent_error() {
    let s = script("loop.js", "function transform(e) { for (;;) {} }");
    let t = JsTransform::from_file(&s.path)
        .unwrap()
        .with_time_limit(std::time::Duration::from_millis(500));
    let err = t.apply(event("s", 0, "T", "{}", "")).await.unwrap_err();
    assert!(!err.is_transient());
    assert!(
        err.message().contains("ran longer than"),
        "{}",
        err.message()
    );
    // The engine is usable again afterwards.
    let s2 = script(
        "ok.js",
        "function transform(e) { return e.Data.stop ? e : (() => { for (;;) {} })(); }",
    );
    let t = JsTransform::from_file(&s2.path)
        .unwrap()
        .with_time_limit(std::time::Duration::from_millis(500));
    assert!(t.apply(event("s", 0, "T", "{}", "")).await.is_err());
    let ok = t
        .apply(event("s", 1, "T", r#"{"stop":true}"#, ""))
        .await
        .unwrap();
    assert_eq!(ok.revision, 1);
}

#[tokio::test]
async fn several_engines_serve_calls_at_once() {
    let s = script(
        "slow.js",
        "function transform(e) { const end = Date.now() + 20; while (Date.now() < end) {} return { ...e, Data: { n: e.Data.n } }; }",
    );
    let t = std::sync::Arc::new(
        JsTransform::from_file(&s.path)
            .unwrap()
            .with_in_flight(4)
            .unwrap(),
    );
    assert_eq!(t.concurrency(), 4);
    let calls: Vec<_> = (0..8)
        .map(|n| {
            let t = t.clone();
            tokio::spawn(async move {
                t.apply(event("s", n, "T", &format!(r#"{{"n":{n}}}"#), ""))
                    .await
            })
        })
        .collect();
    for (n, call) in calls.into_iter().enumerate() {
        let out = call.await.unwrap().unwrap();
        assert_eq!(out.data, Bytes::from(format!(r#"{{"n":{n}}}"#)));
    }
    // A C#-sized bufferSize does not start a thread per slot.
    let big = JsTransform::from_file(&s.path)
        .unwrap()
        .with_in_flight(1000)
        .unwrap();
    assert_eq!(big.concurrency(), replicator_transform::js::MAX_ENGINES);
}

#[test]
fn the_partitioner_gives_the_scripts_key_or_none() {
    let s = script(
        "partition.js",
        r#"
function partition(event) {
  if (event.EventType === "NoKey") return 42;
  return event.Data.tenant ?? undefined;
}"#,
    );
    let p = JsPartitioner::from_file(&s.path).unwrap();
    let keyed = event("orders-1", 0, "Placed", r#"{"tenant":"acme"}"#, "");
    assert_eq!(p.key(&keyed).unwrap().as_deref(), Some("acme"));
    assert_eq!(
        p.key(&event("orders-1", 1, "NoKey", "{}", "")).unwrap(),
        None
    );
    assert_eq!(
        p.key(&event("orders-1", 2, "Placed", "{}", "")).unwrap(),
        None
    );
    assert_eq!(
        p.key(&event("orders-1", 3, "Placed", "not json", ""))
            .unwrap(),
        None
    );
    let mut meta = keyed.clone();
    meta.kind = ChangeKind::StreamMetadata;
    assert_eq!(p.key(&meta).unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partitioner_works_from_inside_the_runtime_and_reports_script_errors() {
    let s = script(
        "partition.js",
        "function partition(e) {\n  return e.Data.x.y;\n}\n",
    );
    let p = JsPartitioner::from_file(&s.path).unwrap();
    let err = p.key(&event("s", 0, "T", "{}", "")).unwrap_err();
    assert!(!err.is_transient());
    assert!(
        err.message().contains("TypeError") && err.message().contains("line 2"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn the_router_takes_the_documented_four_arguments_or_one_object() {
    // The C# tool's docs declare four parameters; its code passes one object.
    let four = script(
        "route4.js",
        r#"
function route(stream, eventType, data, meta) {
  if (eventType === "Default") return null;
  if (eventType === "NoKey") return { topic: "t-" + data.n };
  return { topic: "all-" + stream.split("-")[0], partitionKey: meta.tenant };
}"#,
    );
    let r = JsRouter::from_file(&four.path).unwrap();
    let route = |topic: &str, key: Option<&str>| {
        Some(Route {
            topic: topic.into(),
            key: key.map(Into::into),
        })
    };
    let e = event(
        "orders-1",
        0,
        "Placed",
        r#"{"n":1}"#,
        r#"{"tenant":"acme"}"#,
    );
    assert_eq!(
        r.route(&e).await.unwrap(),
        route("all-orders", Some("acme"))
    );
    let e = event("orders-1", 1, "NoKey", r#"{"n":2}"#, "");
    assert_eq!(r.route(&e).await.unwrap(), route("t-2", None));
    let e = event("orders-1", 2, "Default", "{}", "");
    assert_eq!(r.route(&e).await.unwrap(), None);
    // Not JSON: the script cannot see it, so the default route.
    let e = event("orders-1", 3, "Placed", "not json", "");
    assert_eq!(r.route(&e).await.unwrap(), None);

    let one = script(
        "route1.js",
        "function route(e) { return { topic: e.EventType, partitionKey: e.Stream + '/' + e.data.n }; }",
    );
    let r = JsRouter::from_file(&one.path).unwrap();
    let e = event("orders-1", 0, "Placed", r#"{"n":7}"#, "");
    assert_eq!(
        r.route(&e).await.unwrap(),
        route("Placed", Some("orders-1/7"))
    );
}

#[tokio::test]
async fn a_route_without_a_topic_is_an_error_naming_the_file() {
    let s = script(
        "bad-route.js",
        "function route(e) { return { partitionKey: 'k' }; }",
    );
    let r = JsRouter::from_file(&s.path).unwrap();
    let err = r.route(&event("s-1", 0, "T", "{}", "")).await.unwrap_err();
    assert!(!err.is_transient());
    assert!(
        err.message().contains("bad-route.js") && err.message().contains("no topic"),
        "{}",
        err.message()
    );
    let none = script("no-route.js", "function partition(e) { return 'x'; }");
    let err = JsRouter::from_file(&none.path).err().unwrap();
    assert!(
        matches!(
            err,
            JsError::NoFunction {
                function: "route",
                ..
            }
        ),
        "{err}"
    );
}
