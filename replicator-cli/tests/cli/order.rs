//! The target's `$all` in the source's order, judged by an independent
//! client: the official Python client (`kurrentdbclient`, from
//! `KURRENTDB_CLIENT_PYTHON` as `scripts/test` sets it) writes the source one
//! event at a time over interleaved streams, as an application would, and
//! reads both `$all`s. With default settings, with `partitionCount: 8` (a C#
//! configuration's key: not a reordering), and through a SIGKILL mid-copy,
//! the target holds the source's user events in the source's order: no
//! inversion.

use std::path::Path;

use crate::{assert_ok, run_async, Clusters, Workdir};

const EVENTS: usize = 1_200;
const STREAMS: usize = 44;

/// Runs the independent client with `args`; its standard output.
async fn independent_client(args: &[&str]) -> String {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/python/independent_client.py");
    let output = tokio::process::Command::new(replicator_testkit::support::python::python())
        .arg(script)
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "independent_client.py {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The user events of `$all` at `url`, in order, as the Python client reads them.
async fn user_events(url: &str) -> Vec<String> {
    independent_client(&["read", url])
        .await
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Neighbouring source events whose order the target reverses.
fn inversions(source: &[String], target: &[String]) -> usize {
    let at: std::collections::HashMap<&str, usize> = target
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    source
        .windows(2)
        .filter(
            |pair| match (at.get(pair[0].as_str()), at.get(pair[1].as_str())) {
                (Some(a), Some(b)) => a > b,
                _ => false,
            },
        )
        .count()
}

/// Fills a fresh source with the Python client's workload; the pair, the
/// source's user events and a working directory (partitionCount as given,
/// or none).
async fn prepared(partitions: Option<usize>) -> (Clusters, Vec<String>, Workdir) {
    let c = Clusters::start().await;
    let url = c.source.connection_string();
    independent_client(&[
        "write",
        &url,
        &EVENTS.to_string(),
        &STREAMS.to_string(),
        "7",
    ])
    .await;
    let source = user_events(&url).await;
    assert_eq!(source.len(), EVENTS, "the workload is in the source");
    let w = c.workdir("  runContinuously: false\n  checkpoint:\n    checkpointAfter: 50\n");
    match partitions {
        Some(p) => w.set_partitions(p),
        None => {
            let config = w.path("config/appsettings.yaml");
            let yaml = std::fs::read_to_string(&config).unwrap();
            std::fs::write(config, yaml.replace("    partitionCount: 4\n", "")).unwrap();
        }
    }
    (c, source, w)
}

async fn assert_same_order(c: &Clusters, source: &[String], what: &str) {
    let target = user_events(&c.target.connection_string()).await;
    assert_eq!(target.len(), source.len(), "{what}: every event, once");
    assert_eq!(inversions(source, &target), 0, "{what}: inversions");
    assert!(
        target == source,
        "{what}: the target's $all is the source's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_default_settings_the_targets_all_is_in_the_sources_order() {
    let (c, source, w) = prepared(None).await;
    assert_ok(&run_async(&w, &["run"]).await);
    assert_same_order(&c, &source, "default settings").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_partition_count_8_the_targets_all_is_in_the_sources_order() {
    let (c, source, w) = prepared(Some(8)).await;
    assert_ok(&run_async(&w, &["run"]).await);
    assert_same_order(&c, &source, "partitionCount 8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_sigkill_mid_copy_the_targets_all_is_in_the_sources_order() {
    let (c, source, w) = prepared(Some(8)).await;
    // Killed with 100 target writes done and the next held at the target:
    // a copy whose checkpoint lags what is written, with requests in flight.
    // (The first batch's streams, at most 44, are first asked where they
    // end, each by an append the target refuses: that leaves 56 appends at
    // least, of 1,200.)
    let mut child = c.start_held_run(&w, 100).await;
    child.kill().await.unwrap();
    let partial = user_events(&c.target.connection_string()).await;
    assert!(
        !partial.is_empty() && partial.len() < source.len(),
        "killed mid-copy: {} of {}",
        partial.len(),
        source.len()
    );
    c.release_target_writes();
    assert_ok(&run_async(&w, &["run"]).await);
    assert_same_order(&c, &source, "SIGKILL mid-copy").await;
}

#[test]
fn inversions_count_neighbours_the_target_reverses() {
    let ids = |s: &str| s.chars().map(String::from).collect::<Vec<_>>();
    assert_eq!(inversions(&ids("abcd"), &ids("abcd")), 0);
    assert_eq!(inversions(&ids("abcd"), &ids("bacd")), 1);
    assert_eq!(inversions(&ids("abcd"), &ids("dcba")), 3);
}
