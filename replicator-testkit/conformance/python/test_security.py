"""TLS with a private CA and basic authentication through the Python client.

Always against an `esdb-testkit` started here with `--tls-ca-out` and `--user`
(the users of a real cluster are not known to this suite): the same answers are
asserted as a secure KurrentDB node gives (see `replicator_testkit::security`).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kurrentdbclient import KurrentDBClient, NewEvent, StreamState
from kurrentdbclient.exceptions import (
    AccessDeniedError,
    KurrentDBClientError,
    UnauthenticatedError,
)


@pytest.fixture(scope="module")
def secure_url(tmp_path_factory) -> Iterator[str]:
    """A TLS testkit with `admin:changeit` and the ordinary `reader:secret`; the
    connection string without credentials (it names the CA file)."""
    binary = os.environ.get("ESDB_TESTKIT_BIN", "").strip()
    if not binary:
        pytest.fail("set ESDB_TESTKIT_BIN to the esdb-testkit binary (scripts/test does)")
    ca = Path(tmp_path_factory.mktemp("tls")) / "ca.crt"
    server = subprocess.Popen(
        [
            binary,
            "--port", "0",
            "--tls-ca-out", str(ca),
            "--user", "admin:changeit:admin",
            "--user", "reader:secret",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().strip()
        assert "tls=true" in line and f"tlsCaFile={ca}" in line, line
        yield line
    finally:
        server.terminate()
        server.wait(timeout=10)


def client_as(url: str, credentials: str | None) -> KurrentDBClient:
    if credentials:
        url = url.replace("esdb://", f"esdb://{credentials}@", 1)
    return KurrentDBClient(url)


def test_the_admin_works_over_tls(secure_url):
    client = client_as(secure_url, "admin:changeit")
    stream = f"secure-{uuid.uuid4().hex}"
    client.append_to_stream(stream, events=NewEvent(type="E", data=b"{}"), current_version=StreamState.NO_STREAM)
    assert [e.type for e in client.get_stream(stream)] == ["E"]
    assert any(e.stream_name == stream for e in client.read_all(backwards=True, limit=5))
    client.close()


def test_a_wrong_password_is_unauthenticated(secure_url):
    client = client_as(secure_url, "admin:wrong")
    with pytest.raises(UnauthenticatedError):
        client.get_stream("anything")
    client.close()


def test_an_ordinary_user_may_not_read_all_nor_system_streams(secure_url):
    client = client_as(secure_url, "reader:secret")
    stream = f"secure-{uuid.uuid4().hex}"
    client.append_to_stream(stream, events=NewEvent(type="E", data=b"{}"), current_version=StreamState.NO_STREAM)
    assert len(client.get_stream(stream)) == 1
    with pytest.raises(AccessDeniedError):
        list(client.read_all(limit=1))
    with pytest.raises(AccessDeniedError):
        client.get_stream("$system")
    # A batch append: the typed `AccessDenied` detail.
    with pytest.raises(AccessDeniedError):
        client.append_to_stream(
            "$system", events=[NewEvent(type="E", data=b"{}")] * 2, current_version=StreamState.ANY
        )
    client.close()


def test_a_client_without_the_ca_cannot_connect(secure_url):
    url = secure_url.split("&tlsCaFile=")[0]
    with pytest.raises(KurrentDBClientError):
        client = client_as(url, "admin:changeit")
        client.get_stream("anything", timeout=5)
