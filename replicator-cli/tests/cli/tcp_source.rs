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

/// A TCP source with an administrator, an in-process gRPC target, and clients
/// of both.
struct V5 {
    source: EsdbServer,
    target: EsdbServer,
    source_client: eventstore::Client,
    target_client: eventstore::Client,
}

impl V5 {
    async fn start() -> Self {
        let source = EsdbServer::start_with(ServerOptions {
            tcp_port: Some(0),
            users: Some(vec![User::admin()]),
            ..Default::default()
        })
        .await
        .unwrap();
        let target = EsdbServer::start().await.unwrap();
        let client = |text: String| eventstore::Client::new(text.parse().unwrap()).unwrap();
        V5 {
            source_client: client(source.connection_string_with(Some(("admin", "changeit")), None)),
            target_client: client(target.connection_string()),
            source,
            target,
        }
    }

    /// The node-eventstore-client workload (`conformance/node/workload.js`):
    /// each transaction's stream and ids.
    async fn write_workload(&self) -> Vec<(String, Vec<uuid::Uuid>)> {
        let address = self.source.tcp_address().unwrap();
        replicator_testkit::support::node::write_v5_workload(address, "admin", "changeit").await
    }

    /// A working directory replicating from the TCP source in pages of 3
    /// records (transactions straddle pages) until caught up.
    fn workdir(&self) -> Workdir {
        self.workdir_with(&format!(
            "ConnectTo=tcp://admin:changeit@{}; UseSslConnection=false",
            self.source.tcp_address().unwrap()
        ))
    }

    /// [`V5::workdir`] with the source's connection string `connection`.
    fn workdir_with(&self, connection: &str) -> Workdir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        let yaml = format!(
            "replicator:\n  reader:\n    connectionString: \"{connection}\"\n    protocol: tcp\n    \
             pageSize: 3\n  sink:\n    connectionString: \"{}\"\n  runContinuously: false\n  \
             checkpoint:\n    checkpointAfter: 7\n",
            self.target.connection_string()
        );
        std::fs::write(dir.path().join("config/appsettings.yaml"), yaml).unwrap();
        Workdir { dir }
    }

    /// The target is the source: every stream, and `$all` in the source's
    /// order; each transaction one write on the target as on the source.
    async fn assert_copied(&self, transactions: &[(String, Vec<uuid::Uuid>)]) {
        let report = verify(
            &self.source_client,
            &self.target_client,
            &VerifyOptions::default(),
        )
        .await
        .unwrap();
        assert!(report.is_identical(), "{report}");
        for (stream, ids) in transactions {
            assert_eq!(
                self.source.writes_to(stream),
                [ids.len()],
                "{stream} on the source"
            );
            assert_eq!(
                self.target.writes_to(stream),
                [ids.len()],
                "the transaction of {stream} must land in one append"
            );
            assert_eq!(
                &read_ids(&self.target_client, stream).await,
                ids,
                "{stream}"
            );
        }
    }
}

/// The ids of `stream`'s events.
async fn read_ids(client: &eventstore::Client, stream: &str) -> Vec<uuid::Uuid> {
    let mut read = client
        .read_stream(stream, &Default::default())
        .await
        .unwrap();
    let mut ids = Vec::new();
    loop {
        match read.next().await {
            Ok(Some(event)) => ids.push(event.get_original_event().id),
            Ok(None) | Err(eventstore::Error::ResourceNotFound) => return ids,
            Err(error) => panic!("reading {stream}: {error}"),
        }
    }
}

/// Issue 23's workload: written over TCP by an independent client
/// (node-eventstore-client), with explicit transactions interleaved with
/// appends, stream metadata and a soft delete, copied from the TCP source to
/// a gRPC target exactly and in the source's `$all` order, each transaction
/// in one append although pages of 3 records cut through them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_workload_with_transactions_is_copied_exactly_each_transaction_in_one_append() {
    let v5 = V5::start().await;
    let transactions = v5.write_workload().await;
    assert_eq!(transactions.len(), 4, "{transactions:?}");
    let w = v5.workdir();
    assert_ok(&run_async(&w, &["run"]).await);
    v5.assert_copied(&transactions).await;
}

/// SIGKILL while a transaction is on its way to the target: the target's
/// gate holds the run's first write, which is the whole transaction of
/// `txn-first` (the first records of the source's `$all`) or nothing of it.
/// The killed run's write is committed after the kill (a server commits a
/// request it has received), and the next run recognises it as written:
/// the target ends up exact, the transaction one append, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_with_a_transaction_in_flight_leaves_it_whole_and_once() {
    let v5 = V5::start().await;
    let transactions = v5.write_workload().await;
    let w = v5.workdir();
    let faults = v5.target.faults();
    faults.hold_writes_after(0);
    let mut child = spawn_run(&w, None);
    tokio::select! {
        () = faults.wait_for_held_writes(1) => {}
        status = child.wait() => panic!("the run ended ({status:?}) before its first write"),
    }
    // Held: nothing of the transaction is on the target yet, not a part.
    assert!(read_ids(&v5.target_client, "txn-first").await.is_empty());
    child.kill().await.unwrap();
    faults.release_writes();
    faults.wait_for_no_batch_calls().await;
    assert_eq!(
        v5.target.writes_to("txn-first"),
        [3],
        "the held write was the whole transaction"
    );

    assert_ok(&run_async(&w, &["run"]).await);
    v5.assert_copied(&transactions).await;
}

/// The C# replicator's checkpoint file holds only a commit position. Left
/// inside a transaction (its first record copied, `"0,C"` stored), the run
/// starts again at that commit's first record: the rest of the transaction
/// is copied and the first not twice (the C# tool resumes after `C:C/P:C`,
/// which skips the transaction's other records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csharp_checkpoint_inside_a_transaction_resumes_at_its_commit() {
    let v5 = V5::start().await;
    let transactions = v5.write_workload().await;
    // What the C# tool had written: every user record of $all up to the
    // first of txn-a's transaction (records before it included), in order.
    let (_, txn_a) = transactions
        .iter()
        .find(|(stream, _)| stream == "txn-a")
        .unwrap();
    let mut all = v5
        .source_client
        .read_all(&Default::default())
        .await
        .unwrap();
    let mut commit = None;
    while let Some(resolved) = all.next().await.unwrap() {
        let Some(record) = resolved.link.or(resolved.event) else {
            continue;
        };
        let event = replicator_esdb::to_event(record);
        if !event.kind.is_write() {
            continue;
        }
        // Metadata records (a soft delete too) go to their `$$` stream as
        // they are, every byte kept.
        v5.target_client
            .append_to_stream(
                event.stream.clone(),
                &Default::default(),
                replicator_esdb::to_event_data(&event),
            )
            .await
            .unwrap();
        if event.id == txn_a[0] {
            commit = Some(event.position.commit);
            break;
        }
    }
    let commit = commit.expect("txn-a in $all");
    let w = v5.workdir();
    std::fs::write(w.dir.path().join("checkpoint"), format!("0,{commit}")).unwrap();

    assert_ok(&run_async(&w, &["run"]).await);
    let report = verify(
        &v5.source_client,
        &v5.target_client,
        &VerifyOptions::default(),
    )
    .await
    .unwrap();
    assert!(report.is_identical(), "{report}");
    assert_eq!(&read_ids(&v5.target_client, "txn-a").await, txn_a);
}

/// Start-up errors of a TCP source name what is wrong and never show the
/// password: wrong credentials name the user, an unsupported
/// connection-string setting names the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_an_unknown_setting_stops_the_run_naming_it() {
    let v5 = V5::start().await;
    v5.write_workload().await;
    let address = v5.source.tcp_address().unwrap();
    for (connection, names) in [
        (
            format!("ConnectTo=tcp://admin:not-the-password@{address}; UseSslConnection=false"),
            &["refused the credentials", "`admin`"][..],
        ),
        (
            format!("ConnectTo=tcp://admin:not-the-password@{address}; Bogus=1"),
            &["`Bogus`"][..],
        ),
    ] {
        let o = run_async(&v5.workdir_with(&connection), &["run"]).await;
        let output = format!("{}{}", stdout(&o), stderr(&o));
        assert!(!o.status.success(), "{output}");
        for name in names {
            assert!(output.contains(name), "{name} in:\n{output}");
        }
        assert!(!output.contains("not-the-password"), "{output}");
        assert!(read_ids(&v5.target_client, "txn-first").await.is_empty());
    }
}
