//! The independent legacy TCP client, node-eventstore-client, run with
//! `node`: where its packages are, and the scripts in
//! `replicator-testkit/conformance/node/` that drive it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `node_modules` holding the pinned node-eventstore-client:
/// `NODE_EVENTSTORE_CLIENT_MODULES`, else `target/conformance-node/node_modules`
/// (where `scripts/test` installs it), checked to load with `node`.
///
/// # Panics
/// When `node` is not on `PATH` or cannot load the client from there, saying
/// how to install it: a test that needs the client fails without it, never
/// skips.
pub fn modules() -> PathBuf {
    let default =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/conformance-node/node_modules");
    let modules: PathBuf =
        std::env::var_os("NODE_EVENTSTORE_CLIENT_MODULES").map_or(default, Into::into);
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "`node` (20 or later) is needed for the node-eventstore-client TCP client and is not on \
         PATH: install Node.js, then run scripts/test"
    );
    let loads = Command::new("node")
        .args(["-e", "require('node-eventstore-client')"])
        .env("NODE_PATH", &modules)
        .output()
        .expect("running node");
    assert!(
        loads.status.success(),
        "node cannot load node-eventstore-client from {}: run scripts/test (it installs \
         replicator-testkit/conformance/node/package-lock.json into target/conformance-node), or \
         set NODE_EVENTSTORE_CLIENT_MODULES to a node_modules that has it\n{}",
        modules.display(),
        String::from_utf8_lossy(&loads.stderr)
    );
    modules
}

/// The script `name` of `replicator-testkit/conformance/node/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conformance/node")
        .join(name)
}

/// Runs `workload.js` against the TCP endpoint `address` as `user`:`password`:
/// appends, stream metadata, a soft delete and three explicit transactions
/// interleaved with the appends, written by node-eventstore-client. Returns
/// each transaction's stream and its event ids, in order.
///
/// # Panics
/// When the client is missing ([`modules`]) or the script fails, with its
/// output.
pub async fn write_v5_workload(
    address: std::net::SocketAddr,
    user: &str,
    password: &str,
) -> Vec<(String, Vec<uuid::Uuid>)> {
    let output = tokio::process::Command::new("node")
        .arg(script("workload.js"))
        .env("NODE_PATH", modules())
        .env("ES_TCP", format!("tcp://{address}"))
        .env("ES_ADMIN", format!("{user}:{password}"))
        .output()
        .await
        .expect("running node");
    assert!(
        output.status.success(),
        "workload.js failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("workload.js prints one JSON line");
    let transactions = summary["transactions"]
        .as_object()
        .expect("the transactions written");
    transactions
        .iter()
        .map(|(stream, ids)| {
            let ids = ids
                .as_array()
                .expect("a transaction's ids")
                .iter()
                .map(|id| {
                    id.as_str()
                        .and_then(|s| s.parse().ok())
                        .expect("an event id")
                })
                .collect();
            (stream.clone(), ids)
        })
        .collect()
}
