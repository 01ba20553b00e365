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
        verify(
            &reads(&source_client),
            &reads(&target_client),
            &VerifyOptions::default(),
        )
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
            &reads(&self.source_client),
            &reads(&self.target_client),
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
        &reads(&v5.source_client),
        &reads(&v5.target_client),
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
