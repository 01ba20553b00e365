"""Fixtures of the cross-client conformance suite.

The server is the `esdb-testkit` binary named by `ESDB_TESTKIT_BIN` (started once
per session on a free port), or the cluster whose connection string is in
`ESDB_URL` (then nothing is started, and every test writes to streams of its
own, so a persistent cluster can be used again). Neither set is an error, never
a skip.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from kurrentdbclient import KurrentDBClient


@pytest.fixture(scope="session")
def connection_string() -> Iterator[str]:
    url = os.environ.get("ESDB_URL", "").strip()
    if url:
        yield url
        return
    binary = os.environ.get("ESDB_TESTKIT_BIN", "").strip()
    if not binary:
        pytest.fail(
            "set ESDB_TESTKIT_BIN to the esdb-testkit binary (scripts/test and "
            "`cargo test -p replicator-testkit --test conformance` do), or ESDB_URL "
            "to a cluster's connection string"
        )
    server = subprocess.Popen(
        [binary, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().strip()
        if not line.startswith("esdb://"):
            pytest.fail(f"esdb-testkit printed {line!r} instead of a connection string")
        yield line
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def client(connection_string: str) -> Iterator[KurrentDBClient]:
    c = KurrentDBClient(connection_string)
    yield c
    c.close()


@pytest.fixture
def prefix() -> str:
    """A stream-name prefix no other test (or earlier run) uses."""
    return f"conformance-{uuid.uuid4().hex[:12]}-"
