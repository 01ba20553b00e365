//! The cross-client conformance suites:
//!
//! - `conformance/python`: the testkit's gRPC scenarios driven through the
//!   official Python client (`kurrentdbclient`, pinned in
//!   `conformance/python/requirements.txt`) against the `esdb-testkit` binary, or
//!   against the cluster in `ESDB_URL` when it is set. The Python comes from
//!   `KURRENTDB_CLIENT_PYTHON` (set by `scripts/test`, which installs the pinned
//!   client into `target/conformance-venv`), else that environment.
//! - `conformance/node`: the legacy TCP protocol driven through
//!   `node-eventstore-client` (pinned, with its lockfile, in
//!   `conformance/node/package.json`) against an in-process server with a TCP
//!   port. The packages come from `NODE_EVENTSTORE_CLIENT_MODULES` (a
//!   `node_modules` directory; set by `scripts/test`, which installs them into
//!   `target/conformance-node`), else that directory.
//!
//! Without the client (or `node`) a test fails, naming what to run; it never
//! skips.

use std::path::Path;
use std::process::Command;

use replicator_testkit::security::{TestCertificates, User};
use replicator_testkit::{EsdbServer, ServerOptions};

#[test]
fn python_client_conformance_suite_passes() {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/python");
    let output = Command::new(replicator_testkit::support::python::python())
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--no-header",
            "-rfE",
        ])
        .arg(&suite)
        .env("ESDB_TESTKIT_BIN", env!("CARGO_BIN_EXE_esdb-testkit"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("running pytest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python conformance suite failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // The summary line names only passes: nothing skipped, nothing expected to fail.
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.contains(" passed") && !summary.contains("skipped") && !summary.contains("xfail"),
        "unexpected pytest summary: {summary}"
    );
}

/// Runs the node suite against a fresh in-process server with a TCP port (TLS
/// with `tls`) and checks that every test passed.
async fn run_node_suite(tls: Option<TestCertificates>) {
    let modules = replicator_testkit::support::node::modules();
    let over_tls = tls.is_some();
    let server = EsdbServer::start_with(ServerOptions {
        tcp_port: Some(0),
        users: Some(vec![User::admin(), User::new("reader", "secret")]),
        tls,
        ..ServerOptions::default()
    })
    .await
    .expect("starting the in-process server");
    let address = server.tcp_address().expect("a TCP port");
    let suite = replicator_testkit::support::node::script("suite.js");
    let output = tokio::process::Command::new("node")
        .args(["--test", "--test-reporter=tap"])
        .arg(&suite)
        .env("NODE_PATH", &modules)
        .env("ES_TCP", format!("tcp://{address}"))
        .env("ES_ADMIN", "admin:changeit")
        .env("ES_USER", "reader:secret")
        .env("ES_TLS", if over_tls { "1" } else { "0" })
        .output()
        .await
        .expect("running node --test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the node-eventstore-client TCP suite (TLS: {over_tls}) failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // Only passes: nothing failed, skipped, cancelled or left to do.
    let count = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# {name} ")))
            .and_then(|n| n.trim().parse::<u32>().ok())
    };
    assert!(
        count("pass").is_some_and(|n| n > 0),
        "no test passed:\n{stdout}"
    );
    for name in ["fail", "cancelled", "skipped", "todo"] {
        assert_eq!(count(name), Some(0), "{name} in the TAP summary:\n{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_tcp_conformance_suite_passes() {
    run_node_suite(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_tcp_conformance_suite_passes_over_tls() {
    let certificates = TestCertificates::generate(&[]).expect("test certificates");
    run_node_suite(Some(certificates)).await;
}
