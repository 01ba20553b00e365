//! `reader.protocol: tcp`: replicating from an EventStoreDB v5 source over the
//! legacy TCP protocol (the in-process server's TCP service) to a gRPC
//! target, judged by `replicator_esdb::verify` over gRPC on both sides; and
//! `verify`, `map-position` and the scavenge filter reading such a source.

use replicator_testkit::security::User;
use replicator_testkit::support::TcpTransaction;
use replicator_testkit::{EsdbServer, ServerOptions};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_source_is_replicated_and_a_second_run_resumes_after_the_checkpoint() {
    let source = EsdbServer::start_with(ServerOptions {
        tcp_port: Some(0),
        users: Some(vec![User::admin()]),
        ..Default::default()
    })
    .await
    .unwrap();
    let target = EsdbServer::start().await.unwrap();
    let client = |text: String| eventstore::Client::new(text.parse().unwrap()).unwrap();
    let source_client = client(source.connection_string_with(Some(("admin", "changeit")), None));
    let target_client = client(target.connection_string());
    let spec = replicator_testkit::workload::WorkloadSpec::new(23, 600);
    replicator_testkit::workload::generate(&source_client, &spec)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let yaml = format!(
        "replicator:\n  reader:\n    connectionString: \"ConnectTo=tcp://admin:changeit@{}; \
         HeartBeatTimeout=1500; UseSslConnection=false\"\n    protocol: tcp\n    pageSize: 64\n  \
         sink:\n    connectionString: \"{}\"\n  runContinuously: false\n  checkpoint:\n    \
         checkpointAfter: 50\n",
        source.tcp_address().unwrap(),
        target.connection_string()
    );
    std::fs::write(dir.path().join("config/appsettings.yaml"), yaml).unwrap();
    let w = Workdir { dir };

    let compare = || async {
        verify(&source_client, &target_client, &VerifyOptions::default())
            .await
            .unwrap()
    };
    let o = run_async(&w, &["run"]).await;
    assert_ok(&o);
    let output = format!("{}{}", stdout(&o), stderr(&o));
    assert!(!output.contains("changeit"), "{output}");
    let report = compare().await;
    assert!(report.is_identical(), "{report:?}");

    // More on the source: the second run starts after the stored checkpoint
    // and copies only those (a repeat would be a duplicate on the target).
    let more = append_json(
        &source_client,
        "after-first-run",
        &[
            ("A", serde_json::json!({"n": 1})),
            ("B", serde_json::json!({"n": 2})),
        ],
    )
    .await;
    assert_ok(&run_async(&w, &["run"]).await);
    let report = compare().await;
    assert!(report.is_identical(), "{report:?}");
    let mut read = target_client
        .read_stream("after-first-run", &Default::default())
        .await
        .unwrap();
    let mut ids = Vec::new();
    while let Some(event) = read.next().await.unwrap() {
        ids.push(event.get_original_event().id);
    }
    assert_eq!(ids, more);
}

/// The JSON lines `map-position --json` prints for `positions` with the
/// configuration `config` (exit code 0).
async fn mapped(w: &Workdir, config: &str, positions: &[String]) -> Vec<serde_json::Value> {
    let mut args = vec!["map-position", "--config", config, "--json"];
    args.extend(positions.iter().map(String::as_str));
    let o = run_async(w, &args).await;
    assert_ok(&o);
    stdout(&o)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// `verify`, `map-position` and `replicator.scavenge` with `reader.protocol:
/// tcp`: they read the source over TCP and answer as with gRPC, a v5
/// transaction's records (commit ≠ prepare) included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_map_position_and_the_scavenge_filter_read_a_tcp_source() {
    let source = EsdbServer::start_with(ServerOptions {
        tcp_port: Some(0),
        ..Default::default()
    })
    .await
    .unwrap();
    let target = EsdbServer::start().await.unwrap();
    let client = |text: String| eventstore::Client::new(text.parse().unwrap()).unwrap();
    let source_client = client(source.connection_string());
    let target_client = client(target.connection_string());
    // No `$tb` (metadata, soft deletes then revivals) in the workload: the
    // sink renumbers a stream the scavenge filter cuts at its `$tb` and
    // writes the `$tb` unshifted (a known gap of the sink, see
    // replicator-esdb's scavenge tests), which verify would report.
    let spec = replicator_testkit::workload::WorkloadSpec {
        stream_metadata: false,
        soft_deletes: false,
        ..replicator_testkit::workload::WorkloadSpec::new(29, 300)
    };
    replicator_testkit::workload::generate(&source_client, &spec)
        .await
        .unwrap();
    // A v5 transaction around an ordinary append.
    let ids: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    let mut transaction = TcpTransaction::start(source.tcp_address().unwrap(), "txn").await;
    transaction.write(&ids[..1]).await;
    append_json(&source_client, "beside", &[("B", serde_json::json!({}))]).await;
    transaction.write(&ids[1..]).await;
    transaction.commit().await;
    // A stream a scavenge would cut to its last two events.
    let capped = append_json(
        &source_client,
        "capped",
        &[0, 1, 2, 3, 4].map(|n| ("C", serde_json::json!({ "n": n }))),
    )
    .await;
    let metadata = eventstore::StreamMetadata::builder().max_count(2).build();
    source_client
        .set_stream_metadata("capped", &Default::default(), &metadata)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let yaml = |reader: String, protocol: &str| {
        format!(
            "replicator:\n  reader:\n    connectionString: \"{reader}\"\n    protocol: {protocol}\n  \
             sink:\n    connectionString: \"{}\"\n  runContinuously: false\n  scavenge: true\n",
            target.connection_string()
        )
    };
    let tcp = format!(
        "ConnectTo=tcp://{}; UseSslConnection=false",
        source.tcp_address().unwrap()
    );
    std::fs::write(dir.path().join("config/appsettings.yaml"), yaml(tcp, "tcp")).unwrap();
    std::fs::write(
        dir.path().join("grpc.yaml"),
        yaml(source.connection_string(), "grpc"),
    )
    .unwrap();
    let w = Workdir { dir };
    assert_ok(&run_async(&w, &["run"]).await);

    // The scavenge filter read the metadata over TCP: the target has the two
    // events the source still reads.
    let mut read = target_client
        .read_stream("capped", &Default::default())
        .await
        .unwrap();
    let mut on_target = Vec::new();
    while let Some(event) = read.next().await.unwrap() {
        on_target.push(event.get_original_event().id);
    }
    assert_eq!(on_target, capped[3..]);

    // verify over TCP: identical (the scavenged events are not readable on
    // the source either), then a difference named.
    let o = run_async(&w, &["verify", "--json"]).await;
    assert_ok(&o);
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(report["identical"], true, "{report}");
    assert!(report["source_events"].as_u64().unwrap() > 250, "{report}");
    let extra = append_json(&target_client, "txn", &[("X", serde_json::json!({}))]).await;
    let o = run_async(&w, &["verify"]).await;
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("stream \"txn\": 1 difference"), "{out}");
    assert!(out.contains(&extra[0].to_string()), "{out}");
    let grpc = run_async(&w, &["verify", "--config", "grpc.yaml"]).await;
    let lines = |o: &std::process::Output| {
        stdout(o)
            .lines()
            .filter(|l| !l.starts_with("compared in"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(lines(&o), lines(&grpc), "over TCP as over gRPC");

    // map-position: the same answers as with the gRPC configuration, for
    // every record of the source (the transaction's among them).
    let mut all = source_client
        .read_all(&eventstore::ReadAllOptions::default().max_count(usize::MAX))
        .await
        .unwrap();
    let mut positions = Vec::new();
    while let Some(event) = all.next().await.unwrap() {
        let p = event.get_original_event().position;
        positions.push(format!("{}/{}", p.commit, p.prepare));
    }
    let inside = positions.len() / 2;
    let sample: Vec<String> = positions
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 == 0 || *i == inside)
        .map(|(_, p)| p.clone())
        .collect();
    let over_tcp = mapped(&w, "config/appsettings.yaml", &sample).await;
    assert_eq!(over_tcp, mapped(&w, "grpc.yaml", &sample).await);
    let transaction: Vec<String> = {
        let mut read = source_client
            .read_stream("txn", &Default::default())
            .await
            .unwrap();
        let mut found = Vec::new();
        while let Some(event) = read.next().await.unwrap() {
            let p = event.get_original_event().position;
            assert_ne!(p.commit, p.prepare, "a transaction's record");
            found.push(format!("{}/{}", p.commit, p.prepare));
        }
        found
    };
    let over_tcp = mapped(&w, "config/appsettings.yaml", &transaction).await;
    assert_eq!(over_tcp, mapped(&w, "grpc.yaml", &transaction).await);
    for (line, id) in over_tcp.iter().zip(&ids) {
        assert_eq!(line["event_id"], id.to_string(), "{line}");
        assert_eq!(line["resume"], "after", "{line}");
    }
}
