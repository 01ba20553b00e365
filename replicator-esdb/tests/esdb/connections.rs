//! The reader's subscription and the sink's batch appends run on a channel of
//! their own (`replicator_esdb`'s `wire` module), built from the connection
//! string as the `eventstore` client builds its own: these tests copy a
//! workload through the connection-string forms that channel must honour,
//! and check that the appends went through batch-append requests (a broken
//! session would fall back to plain appends and still copy everything).

use replicator_core::memory::MemoryCheckpointStore;
use replicator_core::Pipeline;
use replicator_esdb::{EsdbReader, EsdbReaderConfig, EsdbSink, EsdbSinkConfig};
use replicator_testkit::security::TestCertificates;
use replicator_testkit::{EsdbServer, ServerOptions};
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// Copies the source to `target` through the given connection strings, checks
/// the copy and that (nearly) every append was a batch-append request.
async fn copy_through(source_url: &str, target: &EsdbServer, target_url: &str) {
    let source_client = eventstore::Client::new(source_url.parse().unwrap()).unwrap();
    let target_client = eventstore::Client::new(target_url.parse().unwrap()).unwrap();
    populate(&source_client, 11, 200).await;
    let reader = EsdbReader::new(EsdbReaderConfig {
        connection_string: source_url.into(),
        page_size: 100,
        run_continuously: false,
    })
    .expect("reader");
    let sink = EsdbSink::new(EsdbSinkConfig {
        connection_string: target_url.into(),
        partition_count: 4,
        revisions: Default::default(),
        order: Default::default(),
    })
    .expect("sink");
    let before = target.append_counts();
    let pipeline = Pipeline::builder(reader, sink, MemoryCheckpointStore::new())
        .config(pipeline_config(1000))
        .build();
    tokio::time::timeout(PATIENCE, pipeline.run(CancellationToken::new()))
        .await
        .expect("replication did not finish in time")
        .expect("replication failed");
    assert_replica(
        &snapshot(&source_client).await,
        &snapshot(&target_client).await,
    );
    let (plain, batch) = target.append_counts();
    let (plain, batch) = (plain - before.0, batch - before.1);
    // Metadata, deletes and refused appends go plainly; the events in batches.
    assert!(
        batch > 0 && plain < batch,
        "{batch} batch-append requests and {plain} plain appends: the batch session did not work"
    );
}

fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_connection_strings_find_the_node_through_gossip() {
    logs();
    let source = EsdbServer::start().await.unwrap();
    let target = EsdbServer::start().await.unwrap();
    // DNS discovery on the source; on the target a seed list whose first
    // seed is down, with the leader preferred.
    let source_url = format!(
        "esdb+discover://127.0.0.1:{}?tls=false&discoveryInterval=0",
        source.port()
    );
    let target_url = format!(
        "esdb://127.0.0.1:{},127.0.0.1:{}?tls=false&discoveryInterval=0&nodePreference=leader",
        dead_port(),
        target.port()
    );
    copy_through(&source_url, &target, &target_url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_certificate_verification_and_with_credentials_copies() {
    logs();
    let secure = || async {
        let options = ServerOptions {
            tls: Some(TestCertificates::generate(&[]).unwrap()),
            users: Some(vec![replicator_testkit::security::User::admin()]),
            ..ServerOptions::default()
        };
        EsdbServer::start_with(options).await.unwrap()
    };
    let (source, target) = (secure().await, secure().await);
    // No CA file: the certificate is not checked.
    let url = |server: &EsdbServer| {
        format!(
            "esdb://admin:changeit@127.0.0.1:{}?tls=true&tlsVerifyCert=false&discoveryInterval=0",
            server.port()
        )
    };
    copy_through(&url(&source), &target, &url(&target)).await;
}
