//! Configuration and wiring without a process: a C# Replicator
//! `appsettings.yaml` loaded through [`load_config`], as `replicator run`
//! loads it, and turned into the parts `replicator run` starts.

use std::path::Path;

use replicator_core::{Checkpoint, Position, Progress, Sink as _};

use super::*;

/// Writes `yaml` as `dir/appsettings.yaml` and loads it as `replicator run`
/// does.
fn load(dir: &Path, yaml: &str) -> anyhow::Result<Config> {
    let path = dir.join("appsettings.yaml");
    std::fs::write(&path, yaml).unwrap();
    load_config(&path)
}

/// A C# Replicator configuration (its keys, its spelling, its quoting), with
/// the checkpoint file in `dir` and `sink` lines added to the sink section.
fn csharp_config(dir: &Path, sink: &str) -> String {
    format!(
        r#"replicator:
  reader:
    connectionString: "esdb://admin:changeit@source:2113?tls=false"
    protocol: grpc
    pageSize: 1024
  sink:
    connectionString: "esdb://admin:changeit@target:2113?tls=false"
    protocol: grpc
{sink}
  scavenge: false
  filters:
    - type: streamName
      include: "^orders-"
    - type: eventType
      exclude: "^Debug"
  transform: null
  runContinuously: false
  checkpoint:
    type: file
    path: "{}"
    checkpointAfter: "100"
"#,
        dir.join("checkpoint").display()
    )
}

#[tokio::test]
async fn a_csharp_config_wires_its_store_filters_and_writers() {
    let dir = tempfile::tempdir().unwrap();
    let config = load(
        dir.path(),
        &csharp_config(dir.path(), "    partitionCount: 3\n    order: stream"),
    )
    .unwrap();

    // The checkpoint goes to the configured file: stored there, read back.
    let store = open_store(&config.checkpoint).await.unwrap();
    store
        .store(&Checkpoint::processed(Position::at(42), None))
        .await
        .unwrap();
    assert!(dir.path().join("checkpoint").is_file());
    let loaded = store.load().await.unwrap().unwrap();
    assert_eq!(loaded.source, Position::at(42));
    assert_eq!(config.checkpoint.checkpoint_after, 100);

    // The filters, in configuration order, are the pipeline's stages.
    let stages = build_stages(&config).unwrap();
    let names: Vec<String> = stages.transforms.iter().map(|t| t.name()).collect();
    assert_eq!(
        names,
        [
            r#"filter streamName include "^orders-""#,
            r#"filter eventType exclude "^Debug""#,
        ]
    );
    assert!(stages.scavenge.is_none() && stages.partitioner.is_none());

    // Stream order: one writer per partition.
    assert_eq!(build_sink(&config, &stages).unwrap().max_in_flight(), 3);

    // And the whole pipeline is built from it (nothing connects yet).
    let (progress, _) = watch::channel(Progress::default());
    build_pipeline(&config, store, &Health::default(), &progress, stages).unwrap();
}

#[tokio::test]
async fn source_order_writes_through_one_writer_whatever_the_partition_count() {
    let dir = tempfile::tempdir().unwrap();
    let config = load(
        dir.path(),
        &csharp_config(dir.path(), "    partitionCount: 3"),
    )
    .unwrap();
    let stages = build_stages(&config).unwrap();
    assert_eq!(build_sink(&config, &stages).unwrap().max_in_flight(), 1);
}

#[test]
fn a_bad_key_is_an_error_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (sink, key) in [
        ("    partitionCount: 0", "replicator.sink.partitionCount"),
        ("    partitionCont: 3", "replicator.sink.partitionCont"),
    ] {
        let error = load(dir.path(), &csharp_config(dir.path(), sink)).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("appsettings.yaml"), "{message}");
        assert!(message.contains(key), "{message}");
    }
}

#[tokio::test]
async fn a_transform_that_does_not_load_is_an_error_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("transform.js");
    std::fs::write(&script, "function transform(e) { return e;").unwrap();
    let yaml = csharp_config(dir.path(), "").replace(
        "  transform: null\n",
        &format!(
            "  transform:\n    type: js\n    config: {}\n",
            script.display()
        ),
    );
    let config = load(dir.path(), &yaml).unwrap();
    let error = build_stages(&config).err().unwrap();
    let message = format!("{error:#}");
    assert!(message.contains("replicator.transform.config"), "{message}");
}
