//! `replicator projections` between two in-process servers with
//! authentication on (the admin in both connection strings): the source's
//! user projections (one emitting and tracking its emitted streams, running;
//! one plain, disabled) created through the testkit's gRPC Projections
//! service; a dry run changes nothing; `--apply` creates them stopped with
//! their queries (read back over the target's HTTP API and Statistics); a
//! re-run finds them unchanged; a target projection with another query is
//! reported and left alone until `--force`. Always in-process: the test
//! drives the servers' Projections service with the testkit's own client.

use replicator_testkit::proto::projections::{
    create_req, disable_req, projections_client::ProjectionsClient, statistics_req,
    statistics_resp::Details, update_req, CreateReq, DisableReq, StatisticsReq, UpdateReq,
};
use replicator_testkit::security::{basic_authorization, TestCertificates, User};
use replicator_testkit::{EsdbServer, ServerOptions};
use serde_json::Value;

use crate::{assert_ok, run_async, stderr, stdout, Workdir};

const EMITTING: &str = "orders-by-customer";
const EMITTING_QUERY: &str =
    "fromCategory('order').when({Placed: function(s, e) { linkTo('customer-' + e.data.customer, e); }})";
const PLAIN: &str = "order-totals";
const PLAIN_QUERY: &str =
    "fromCategory('order').when({$init: function() { return {n: 0}; }, Placed: function(s) { s.n += 1; }})";

async fn server() -> EsdbServer {
    EsdbServer::start_with(ServerOptions {
        users: Some(vec![User::admin()]),
        ..ServerOptions::default()
    })
    .await
    .unwrap()
}

fn admin_url(server: &EsdbServer) -> String {
    server.connection_string_with(Some(("admin", "changeit")), None)
}

fn workdir(source: &str, target: &str) -> Workdir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let yaml = format!(
        "replicator:\n  reader:\n    connectionString: \"{source}\"\n  sink:\n    connectionString: \"{target}\"\n"
    );
    std::fs::write(dir.path().join("config/appsettings.yaml"), yaml).unwrap();
    Workdir { dir }
}

/// A request to `server`'s Projections service as the admin.
fn as_admin<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        basic_authorization("admin", "changeit").parse().unwrap(),
    );
    request
}

async fn grpc(server: &EsdbServer) -> ProjectionsClient<tonic::transport::Channel> {
    ProjectionsClient::connect(format!("http://127.0.0.1:{}", server.port()))
        .await
        .unwrap()
}

async fn create(server: &EsdbServer, name: &str, query: &str, emit: bool, track: bool) {
    let request = CreateReq {
        options: Some(create_req::Options {
            mode: Some(create_req::options::Mode::Continuous(
                create_req::options::Continuous {
                    name: name.to_owned(),
                    emit_enabled: emit,
                    track_emitted_streams: track,
                },
            )),
            query: query.to_owned(),
            engine_version: 0,
            properties: Default::default(),
        }),
    };
    grpc(server).await.create(as_admin(request)).await.unwrap();
}

async fn disable(server: &EsdbServer, name: &str) {
    let request = DisableReq {
        options: Some(disable_req::Options {
            name: name.to_owned(),
            write_checkpoint: true,
        }),
    };
    grpc(server).await.disable(as_admin(request)).await.unwrap();
}

async fn update_query(server: &EsdbServer, name: &str, query: &str) {
    let request = UpdateReq {
        options: Some(update_req::Options {
            name: name.to_owned(),
            query: query.to_owned(),
            emit_option: Some(update_req::options::EmitOption::NoEmitOptions(())),
            properties: Default::default(),
        }),
    };
    grpc(server).await.update(as_admin(request)).await.unwrap();
}

/// Statistics of `name`, `None` when the server does not know it.
async fn statistics(server: &EsdbServer, name: &str) -> Option<Details> {
    let request = StatisticsReq {
        options: Some(statistics_req::Options {
            mode: Some(statistics_req::options::Mode::Name(name.to_owned())),
        }),
    };
    match grpc(server).await.statistics(as_admin(request)).await {
        Ok(response) => {
            let mut stream = response.into_inner();
            stream.message().await.unwrap().and_then(|r| r.details)
        }
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => panic!("statistics of {name}: {status}"),
    }
}

/// `GET /projection/{name}/query?config=yes` on the HTTP API.
async fn http_config(server: &EsdbServer, name: &str) -> Option<Value> {
    let response = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/projection/{name}/query?config=yes",
            server.port()
        ))
        .header("authorization", basic_authorization("admin", "changeit"))
        .send()
        .await
        .unwrap();
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    assert!(response.status().is_success(), "{}", response.status());
    Some(response.json().await.unwrap())
}

/// How many records `server` holds in its projection streams (what a
/// change to a projection writes to).
async fn projection_records(server: &EsdbServer) -> usize {
    let client = eventstore::Client::new(admin_url(server).parse().unwrap()).unwrap();
    let mut read = client
        .read_all(&eventstore::ReadAllOptions::default().max_count(usize::MAX))
        .await
        .unwrap();
    let mut n = 0;
    while let Some(event) = read.next().await.unwrap() {
        n += usize::from(
            event
                .get_original_event()
                .stream_id
                .starts_with("$projections-"),
        );
    }
    n
}

fn row<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no row for {name}:\n{out}"))
}

fn columns(row: &str) -> Vec<&str> {
    row.split_whitespace().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_are_recreated_stopped_once_and_differences_wait_for_force() {
    let (source, target) = (server().await, server().await);
    create(&source, EMITTING, EMITTING_QUERY, true, true).await;
    create(&source, PLAIN, PLAIN_QUERY, false, false).await;
    disable(&source, PLAIN).await;
    let w = workdir(&admin_url(&source), &admin_url(&target));
    let before = projection_records(&target).await;

    // Dry run: the plan, and nothing on the target.
    let o = run_async(&w, &["projections"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    let emitting = row(&out, EMITTING);
    assert!(
        emitting.contains("Continuous") && emitting.contains("Running"),
        "{out}"
    );
    assert_eq!(
        columns(emitting)[2..4],
        ["yes", "yes"],
        "emit and track: {out}"
    );
    assert!(emitting.contains("create (stopped)"), "{out}");
    let plain = row(&out, PLAIN);
    assert!(plain.contains("Stopped"), "{out}");
    assert_eq!(columns(plain)[2..4], ["no", "no"], "emit and track: {out}");
    assert!(row(&out, "$by_category").contains("left alone"), "{out}");
    assert!(out.contains("Dry run: nothing was changed"), "{out}");
    assert_eq!(projection_records(&target).await, before);
    assert!(statistics(&target, EMITTING).await.is_none());

    // The same plan for machines.
    let o = run_async(&w, &["projections", "--json"]).await;
    assert_ok(&o);
    let plan: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let entry = |name: &str| {
        plan["projections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {plan}"))
            .clone()
    };
    let e = entry(EMITTING);
    assert_eq!(e["query"], EMITTING_QUERY);
    assert_eq!(e["emitEnabled"], true);
    assert_eq!(e["trackEmittedStreams"], true);
    assert_eq!(e["source"]["status"], "Running");
    assert_eq!(e["action"], "create");
    assert_eq!(entry(PLAIN)["sourceEnabled"], false);
    assert_eq!(entry("$streams")["action"], "left alone");

    // Apply: created stopped, with their queries and settings.
    let o = run_async(&w, &["projections", "--apply"]).await;
    assert_ok(&o);
    assert!(
        row(&stdout(&o), EMITTING).contains("created (stopped)"),
        "{}",
        stdout(&o)
    );
    for (name, query, emit) in [
        (EMITTING, EMITTING_QUERY, true),
        (PLAIN, PLAIN_QUERY, false),
    ] {
        let config = http_config(&target, name).await.expect("created");
        assert_eq!(config["query"], query);
        assert_eq!(config["emitEnabled"], emit);
        assert_eq!(config["trackEmittedStreams"], emit);
        let stats = statistics(&target, name).await.unwrap();
        assert_eq!(stats.status, "Stopped", "{name}");
        assert_eq!(stats.mode, "Continuous");
    }
    // The source is as it was.
    assert_eq!(
        statistics(&source, EMITTING).await.unwrap().status,
        "Running"
    );

    // Again: unchanged, and nothing written.
    let written = projection_records(&target).await;
    let o = run_async(&w, &["projections", "--apply"]).await;
    assert_ok(&o);
    for name in [EMITTING, PLAIN] {
        assert!(
            row(&stdout(&o), name).contains("unchanged"),
            "{}",
            stdout(&o)
        );
    }
    assert_eq!(projection_records(&target).await, written);

    // A target projection with another query: reported, left alone.
    update_query(&target, PLAIN, "fromAll()").await;
    for args in [&["projections"][..], &["projections", "--apply"]] {
        let o = run_async(&w, args).await;
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stdout(&o));
        assert!(
            row(&stdout(&o), PLAIN).contains("DIFFERS: query"),
            "{}",
            stdout(&o)
        );
        assert_eq!(
            http_config(&target, PLAIN).await.unwrap()["query"],
            "fromAll()"
        );
    }
    // Forced: updated to the source's query, still stopped.
    let o = run_async(&w, &["projections", "--apply", "--force"]).await;
    assert_ok(&o);
    assert!(
        row(&stdout(&o), PLAIN).contains("updated"),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        http_config(&target, PLAIN).await.unwrap()["query"],
        PLAIN_QUERY
    );
    assert_eq!(statistics(&target, PLAIN).await.unwrap().status, "Stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_target_credentials_are_named_with_the_side() {
    let (source, target) = (server().await, server().await);
    create(&source, PLAIN, PLAIN_QUERY, false, false).await;
    let wrong = target.connection_string_with(Some(("admin", "nope-s3cret")), None);
    let w = workdir(&admin_url(&source), &wrong);
    let o = run_async(&w, &["projections", "--apply"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("on the target") && err.contains("access denied"),
        "{err}"
    );
    assert!(!err.contains("nope-s3cret"), "no password in errors: {err}");
    assert!(statistics(&target, PLAIN).await.is_none());
}

/// Over TLS (a private CA in `tlsCaFile`), as production clusters serve:
/// the definitions read over gRPC, the creation over the HTTP API on the
/// same TLS port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_are_created_over_tls() {
    let certificates = TestCertificates::generate(&[]).expect("certificates");
    let dir = tempfile::tempdir().unwrap();
    let ca = certificates.write_ca(dir.path()).expect("CA file");
    let secure = || ServerOptions {
        users: Some(vec![User::admin()]),
        tls: Some(certificates.clone()),
        ..ServerOptions::default()
    };
    let source = EsdbServer::start_with(secure()).await.unwrap();
    let target = EsdbServer::start_with(secure()).await.unwrap();
    // The source's projection written as the server stores it (the test's
    // gRPC client speaks no TLS): its registration and its definition.
    let client = eventstore::Client::new(
        source
            .connection_string_with(Some(("admin", "changeit")), Some(&ca))
            .parse()
            .unwrap(),
    )
    .unwrap();
    let state = serde_json::json!({
        "HandlerType": "JS", "Query": PLAIN_QUERY, "Mode": 4, "Enabled": true,
        "EmitEnabled": false, "TrackEmittedStreams": false, "CheckpointsDisabled": false,
        "Epoch": 0, "Version": 0, "EngineVersion": 1,
    });
    client
        .append_to_stream(
            "$projections-$all",
            &Default::default(),
            eventstore::EventData::binary("$ProjectionCreated", PLAIN.as_bytes().to_vec().into()),
        )
        .await
        .unwrap();
    client
        .append_to_stream(
            format!("$projections-{PLAIN}"),
            &Default::default(),
            eventstore::EventData::json("$ProjectionUpdated", &state).unwrap(),
        )
        .await
        .unwrap();
    let url =
        |server: &EsdbServer| server.connection_string_with(Some(("admin", "changeit")), Some(&ca));
    let w = workdir(&url(&source), &url(&target));
    let o = run_async(&w, &["projections", "--apply"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    let plain = row(&out, PLAIN);
    assert!(
        plain.contains("Running") && plain.contains("created (stopped)"),
        "{out}"
    );
    // Read back through the target's own stream, over TLS.
    let target_client = eventstore::Client::new(url(&target).parse().unwrap()).unwrap();
    let mut read = target_client
        .read_stream(
            format!("$projections-{PLAIN}"),
            &eventstore::ReadStreamOptions::default()
                .position(eventstore::StreamPosition::End)
                .backwards(),
        )
        .await
        .unwrap();
    let last = read
        .next()
        .await
        .unwrap()
        .expect("a definition on the target");
    let stored: Value = last.get_original_event().as_json().unwrap();
    assert_eq!(stored["Query"], PLAIN_QUERY);
    assert_eq!(stored["Enabled"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_without_projections_is_named() {
    let source = server().await;
    create(&source, PLAIN, PLAIN_QUERY, false, false).await;
    let target = EsdbServer::start_with(ServerOptions {
        users: Some(vec![User::admin()]),
        no_projections: true,
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    let w = workdir(&admin_url(&source), &admin_url(&target));
    let o = run_async(&w, &["projections", "--apply"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("projection subsystem is not running on the target"),
        "{err}"
    );
}

/// A v5 source read over TCP: the definitions come from its
/// `$projections-*` streams (v5 has no gRPC, so no statistics: the status
/// column says whether the definition is enabled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_source_over_tcp_gives_its_definitions() {
    let source = EsdbServer::start_with(ServerOptions {
        users: Some(vec![User::admin()]),
        tcp_port: Some(0),
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    create(&source, EMITTING, EMITTING_QUERY, true, false).await;
    let target = server().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let yaml = format!(
        "replicator:\n  reader:\n    connectionString: \"ConnectTo=tcp://admin:changeit@{}; \
         UseSslConnection=false\"\n    protocol: tcp\n  sink:\n    connectionString: \"{}\"\n",
        source.tcp_address().unwrap(),
        admin_url(&target)
    );
    std::fs::write(dir.path().join("config/appsettings.yaml"), yaml).unwrap();
    let w = Workdir { dir };
    let o = run_async(&w, &["projections", "--apply"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    let emitting = row(&out, EMITTING);
    assert!(
        emitting.contains("enabled") && emitting.contains("created (stopped)"),
        "{out}"
    );
    assert_eq!(
        columns(emitting)[2..4],
        ["yes", "no"],
        "emit and track: {out}"
    );
    let config = http_config(&target, EMITTING).await.expect("created");
    assert_eq!(config["query"], EMITTING_QUERY);
    assert_eq!(config["emitEnabled"], true);
    assert_eq!(
        statistics(&target, EMITTING).await.unwrap().status,
        "Stopped"
    );
}
