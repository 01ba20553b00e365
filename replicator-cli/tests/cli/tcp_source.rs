//! `reader.protocol: tcp`: replicating from an EventStoreDB v5 source over the
//! legacy TCP protocol (the in-process server's TCP service) to a gRPC
//! target, judged by `replicator_esdb::verify` over gRPC on both sides.

use replicator_testkit::security::User;
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
