//! The official Python client, `kurrentdbclient` (pinned in
//! `replicator-testkit/conformance/python/requirements.txt`), and the scripts
//! beside the conformance suite that drive it: what the cross-client suite and
//! other crates' tests use to see the server as a Python consumer does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A Python that imports `kurrentdbclient` and `pytest`:
/// `KURRENTDB_CLIENT_PYTHON`, else `target/conformance-venv/bin/python` (where
/// `scripts/test` installs the pinned client).
///
/// # Panics
/// When that Python cannot import them, saying how to install them: a test
/// that needs the client fails without it, never skips.
pub fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/conformance-venv/bin/python");
    let candidate: PathBuf = std::env::var_os("KURRENTDB_CLIENT_PYTHON").map_or(venv, Into::into);
    let ok = Command::new(&candidate)
        .args(["-c", "import kurrentdbclient, pytest"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import kurrentdbclient and pytest: run scripts/test (it installs \
         replicator-testkit/conformance/python/requirements.txt into target/conformance-venv), \
         or set KURRENTDB_CLIENT_PYTHON to a python that has them",
        candidate.display()
    );
    candidate
}

/// A script of `replicator-testkit/conformance/python/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conformance/python")
        .join(name)
}

/// Runs `subscriptions_tool.py` with `args` (a sub-command and its arguments:
/// `create-stream`, `create-all`, `consume`, `next`, `info`, `list`; see the
/// script's help) and returns the JSON it printed, or, when it failed, the
/// `{"error": <exception class>, "message": …}` it printed instead.
///
/// ```no_run
/// # async fn demo(url: &str) {
/// use replicator_testkit::support::python;
///
/// python::subscriptions_tool(&["create-stream", url, "g1", "orders", "--from", "0"]).await;
/// let consumed = python::subscriptions_tool(&["consume", url, "g1", "--stream", "orders",
///     "--ack", "3", "--wait-checkpoint"]).await;
/// assert_eq!(consumed["checkpoint"], "2");
/// # }
/// ```
///
/// # Panics
/// When no Python with the client is found ([`python`]), or the script prints
/// no JSON.
pub async fn try_subscriptions_tool(args: &[&str]) -> Result<serde_json::Value, serde_json::Value> {
    let output = tokio::process::Command::new(python())
        .arg(script("subscriptions_tool.py"))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output()
        .await
        .expect("running subscriptions_tool.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "subscriptions_tool.py {args:?} printed no JSON ({e}; {}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    });
    if output.status.success() {
        Ok(value)
    } else {
        Err(value)
    }
}

/// [`try_subscriptions_tool`], for a call that must succeed.
///
/// # Panics
/// When the script fails, naming the arguments and its error.
pub async fn subscriptions_tool(args: &[&str]) -> serde_json::Value {
    try_subscriptions_tool(args)
        .await
        .unwrap_or_else(|error| panic!("subscriptions_tool.py {args:?} failed: {error}"))
}
