"""The Projections service through the official Python client (`kurrentdbclient`),
and the HTTP API's create-stopped route: the management calls a tool re-creating
projections makes, with the answers the current KurrentDB gives (see
`replicator_testkit`'s `service::projections` docs). The testkit runs no query,
so no test here depends on a projection's output.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.parse
import urllib.request
import uuid

import pytest
from kurrentdbclient import KurrentDBClient
from kurrentdbclient.exceptions import (
    AlreadyExistsError,
    FailedPreconditionError,
    KurrentDBClientError,
    NotFoundError,
    OperationFailedError,
)

QUERY = "fromAll().when({$init: function() { return {count: 0}; }, $any: function(s, e) { s.count += 1; }})"
OTHER = "fromStream('x').when({$any: function(s, e) { return s; }})"


@pytest.fixture
def name() -> str:
    """A projection name no other test (or earlier run) uses."""
    return f"conformance-{uuid.uuid4().hex[:12]}"


def stop_and_delete(client: KurrentDBClient, name: str) -> None:
    client.disable_projection(name)
    client.delete_projection(name)


def test_create_then_statistics_say_running_continuous(client, name):
    client.create_projection(name=name, query=QUERY)
    stats = client.get_projection_statistics(name)
    assert stats.name == name
    assert stats.effective_name == name
    assert stats.mode == "Continuous"
    # gRPC Create starts the projection: there is no stopped flag over gRPC.
    assert stats.status.startswith("Running"), stats.status
    assert isinstance(stats.epoch, int) and isinstance(stats.version, int)
    assert isinstance(stats.position, str) and isinstance(stats.last_checkpoint, str)
    stop_and_delete(client, name)


def test_listing_gives_one_entry_per_projection_with_the_system_ones(client, name):
    client.create_projection(name=name, query=QUERY, emit_enabled=True, track_emitted_streams=True)
    everything = client.list_all_projection_statistics()
    names = [s.name for s in everything]
    assert names.count(name) == 1
    for system in ("$by_category", "$stream_by_category", "$streams", "$by_event_type", "$by_correlation_id"):
        assert system in names, names
    continuous = client.list_continuous_projection_statistics()
    assert name in [s.name for s in continuous]
    assert all(s.mode == "Continuous" for s in continuous)
    stop_and_delete(client, name)


def test_state_of_a_projection_is_a_json_object(client, name):
    client.create_projection(name=name, query=QUERY)
    state = client.get_projection_state(name)
    assert isinstance(state.value, dict)
    stop_and_delete(client, name)


def test_disable_abort_enable_change_the_status(client, name):
    client.create_projection(name=name, query=QUERY)
    client.disable_projection(name)
    assert client.get_projection_statistics(name).status.startswith("Stopped")
    client.enable_projection(name)
    assert client.get_projection_statistics(name).status.startswith("Running")
    client.abort_projection(name)
    assert not client.get_projection_statistics(name).status.startswith("Running")
    client.enable_projection(name)
    client.reset_projection(name)
    stop_and_delete(client, name)


def test_update_keeps_the_projection_and_a_missing_one_is_not_found(client, name):
    client.create_projection(name=name, query=QUERY)
    client.update_projection(name, query=OTHER, emit_enabled=True)
    assert client.get_projection_statistics(name).name == name
    with pytest.raises(NotFoundError):
        client.update_projection(f"{name}-missing", query=OTHER)
    stop_and_delete(client, name)


def test_a_name_clash_is_already_exists(client, name):
    client.create_projection(name=name, query=QUERY)
    with pytest.raises(AlreadyExistsError):
        client.create_projection(name=name, query=OTHER)
    stop_and_delete(client, name)


def test_tracking_emitted_streams_needs_emit(client, name):
    with pytest.raises(KurrentDBClientError):
        client.create_projection(name=name, query=QUERY, emit_enabled=False, track_emitted_streams=True)
    with pytest.raises(NotFoundError):
        client.get_projection_statistics(name)


def test_unknown_projections_are_not_found(client, name):
    with pytest.raises(NotFoundError):
        client.get_projection_statistics(name)
    with pytest.raises(NotFoundError):
        client.get_projection_state(name)
    with pytest.raises(NotFoundError):
        client.enable_projection(name)
    with pytest.raises(NotFoundError):
        client.delete_projection(name)


def test_delete_rules(client, name):
    client.create_projection(name=name, query=QUERY)
    # A running projection is not deleted; nor is a system one.
    with pytest.raises((FailedPreconditionError, OperationFailedError)):
        client.delete_projection(name)
    with pytest.raises((FailedPreconditionError, OperationFailedError)):
        client.delete_projection("$by_category")
    client.disable_projection(name)
    client.delete_projection(name)
    with pytest.raises(NotFoundError):
        client.get_projection_statistics(name)
    # The name is free again.
    client.create_projection(name=name, query=OTHER)
    stop_and_delete(client, name)


def test_restart_subsystem_is_answered(client):
    client.restart_projections_subsystem()


def http_base(connection_string: str) -> tuple[str, dict[str, str], ssl.SSLContext | None]:
    """The HTTP API's base URL, headers and TLS context of a connection string."""
    parsed = urllib.parse.urlparse(connection_string)
    params = dict(urllib.parse.parse_qsl(parsed.query))
    tls = params.get("tls", "true").lower() != "false"
    host = parsed.hostname
    port = parsed.port or 2113
    headers = {}
    if parsed.username:
        pair = f"{urllib.parse.unquote(parsed.username)}:{urllib.parse.unquote(parsed.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    context = None
    if tls:
        context = ssl.create_default_context(cafile=params.get("tlsCaFile"))
    return f"{'https' if tls else 'http'}://{host}:{port}", headers, context


def test_http_creates_a_projection_stopped(client, connection_string, name):
    base, headers, context = http_base(connection_string)
    query = urllib.parse.urlencode(
        {"name": name, "type": "JS", "enabled": "false", "emit": "true", "trackemittedstreams": "true"}
    )
    request = urllib.request.Request(
        f"{base}/projections/continuous?{query}",
        data=QUERY.encode(),
        method="POST",
        headers={**headers, "Content-Type": "application/javascript"},
    )
    with urllib.request.urlopen(request, context=context) as response:
        assert response.status == 201
    stats = client.get_projection_statistics(name)
    assert stats.status.startswith("Stopped"), stats.status
    assert stats.mode == "Continuous"
    request = urllib.request.Request(f"{base}/projection/{name}/query?config=yes", headers=headers)
    with urllib.request.urlopen(request, context=context) as response:
        config = json.loads(response.read())
    assert config["query"] == QUERY
    assert config["emitEnabled"] is True
    assert config["trackEmittedStreams"] is True
    # The same name again is a conflict.
    request = urllib.request.Request(
        f"{base}/projections/continuous?{query}", data=QUERY.encode(), method="POST", headers=headers
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=context)
    assert refused.value.code == 409
    client.delete_projection(name)
