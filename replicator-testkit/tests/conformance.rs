//! The cross-client conformance suite: `conformance/python`, the testkit's
//! scenarios driven through the official Python client (`kurrentdbclient`,
//! pinned in `conformance/python/requirements.txt`) against the `esdb-testkit`
//! binary, or against the cluster in `ESDB_URL` when it is set.
//!
//! The Python comes from `KURRENTDB_CLIENT_PYTHON` (set by `scripts/test`, which
//! installs the pinned client into `target/conformance-venv`), else that
//! environment. Without a Python that imports the client the test fails, naming
//! what to run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn python() -> PathBuf {
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

#[test]
fn python_client_conformance_suite_passes() {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/python");
    let output = Command::new(python())
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
